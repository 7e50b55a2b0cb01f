//! Sessions: signed cookies (and the same value as a bearer token), who a
//! request comes from, and its CSRF token.

use std::net::SocketAddr;

use argon2::password_hash::rand_core::{OsRng, RngCore};
use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderMap};

use super::{is_loopback, now_secs, same, Access, Identity, COOKIE, LOCAL_USER};
use crate::config::Role;

/// Largest form body the guard reads to find its CSRF token.
const MAX_FORM_BYTES: usize = 64 * 1024;

impl Access {
    pub(super) fn mac(&self, text: &str) -> String {
        blake3::keyed_hash(&self.secret, text.as_bytes()).to_hex()[..32].to_string()
    }

    pub(super) fn csrf_of(&self, nonce: &str) -> String {
        self.mac(&format!("csrf:{nonce}"))
    }

    /// Whether a session cookie set in answer to this request is marked
    /// `Secure`: always when configured, else when a trusted proxy says the
    /// request came over HTTPS.
    pub(super) fn secure(&self, headers: &HeaderMap, peer: Option<SocketAddr>) -> bool {
        self.secure_cookies
            || (peer.is_some_and(|p| self.proxies.contains(&p.ip()))
                && headers
                    .get("x-forwarded-proto")
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| v.trim().eq_ignore_ascii_case("https")))
    }

    /// A new session for `name`: its cookie, CSRF token and value (the
    /// bearer token).
    pub(super) fn begin(&self, name: &str, secure: bool) -> (String, String, String) {
        let mut nonce = [0u8; 16];
        OsRng.fill_bytes(&mut nonce);
        let nonce: String = nonce.iter().map(|b| format!("{b:02x}")).collect();
        let expires = now_secs() + self.lifetime.as_secs();
        let payload = format!("{name}:{expires}:{nonce}");
        let value = format!("{payload}:{}", self.mac(&payload));
        let cookie = format!(
            "{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
            self.lifetime.as_secs(),
            if secure { "; Secure" } else { "" }
        );
        (cookie, self.csrf_of(&nonce), value)
    }

    /// The role of `name`, if it may have a session at all.
    pub(super) fn role_of(&self, name: &str, peer: Option<SocketAddr>) -> Option<Role> {
        if let Some(user) = self.users.iter().find(|u| u.name == name) {
            return Some(user.role);
        }
        if self.header.is_some() && name != LOCAL_USER {
            return Some(Role::ReadOnly);
        }
        (self.loopback_only() && name == LOCAL_USER && is_loopback(peer)).then_some(Role::Admin)
    }

    /// The session a cookie holds: (name, CSRF token), when its MAC is
    /// right and it has not expired.
    pub(super) fn session(&self, headers: &HeaderMap) -> Option<(String, String)> {
        let value = headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|c| c.trim().split_once('='))
            .find(|(k, _)| *k == COOKIE)
            .map(|(_, v)| v.to_string())?;
        self.session_of(&value)
    }

    /// The session a cookie's value (or bearer token) holds.
    pub(super) fn session_of(&self, value: &str) -> Option<(String, String)> {
        let (payload, mac) = value.rsplit_once(':')?;
        if !same(&self.mac(payload), mac) {
            return None;
        }
        let mut parts = payload.split(':');
        let (name, expires, nonce) = (parts.next()?, parts.next()?, parts.next()?);
        if expires.parse::<u64>().ok()? < now_secs() {
            return None;
        }
        Some((name.to_string(), self.csrf_of(nonce)))
    }

    /// Who the request comes from, if anyone known.
    pub(crate) fn identify(
        &self,
        headers: &HeaderMap,
        peer: Option<SocketAddr>,
    ) -> Option<Identity> {
        let session = self.session(headers);
        let secure = self.secure(headers, peer);
        let with_session = |name: String, role: Role| -> Identity {
            match &session {
                Some((held, csrf)) if *held == name => Identity {
                    name,
                    role,
                    csrf: csrf.clone(),
                    cookie: None,
                },
                _ => {
                    let (cookie, csrf, _) = self.begin(&name, secure);
                    Identity {
                        name,
                        role,
                        csrf,
                        cookie: Some(cookie),
                    }
                }
            }
        };
        if let (Some(header), Some(peer)) = (&self.header, peer) {
            if self.proxies.contains(&peer.ip()) {
                if let Some(name) = headers
                    .get(header.as_str())
                    .and_then(|v| v.to_str().ok())
                    .map(str::trim)
                    .filter(|n| !n.is_empty() && !n.contains(':'))
                {
                    let role = self.role_of(name, Some(peer))?;
                    return Some(with_session(name.to_string(), role));
                }
            }
        }
        if let Some((name, _)) = &session {
            let role = self.role_of(name, peer)?;
            return Some(with_session(name.clone(), role));
        }
        if self.loopback_only() && is_loopback(peer) {
            return Some(with_session(LOCAL_USER.to_string(), Role::Admin));
        }
        None
    }
}

/// Whether the request carries the token (header, or a form's `csrf`
/// field), and the request to pass on (None: a form too large to read).
pub(super) async fn csrf_checked(request: Request, token: &str) -> (bool, Option<Request>) {
    if let Some(given) = request
        .headers()
        .get("x-csrf-token")
        .and_then(|v| v.to_str().ok())
    {
        let ok = same(given, token);
        return (ok, Some(request));
    }
    let is_form = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("application/x-www-form-urlencoded"));
    if !is_form {
        return (false, Some(request));
    }
    let (parts, body) = request.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, MAX_FORM_BYTES).await else {
        return (false, None);
    };
    let ok = form_urlencoded::parse(&bytes).any(|(k, v)| k == "csrf" && same(&v, token));
    (ok, Some(Request::from_parts(parts, Body::from(bytes))))
}
