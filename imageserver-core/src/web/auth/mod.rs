//! Who calls, and what they may do: the admin API and pages, and DICOMweb.
//!
//! - **Users** come from `[[http.users]]` (argon2 password hashes, role
//!   `admin` or `read_only`), or from a reverse proxy's header
//!   (`[http] trusted_user_header`, believed only from `trusted_proxies`).
//!   With no users configured, the admin API and pages answer only callers
//!   on loopback, as the user `local` (admin).
//! - **Sessions** are signed cookies (`imageserver_session`: name, expiry,
//!   nonce and a keyed BLAKE3 MAC; HttpOnly, SameSite=Strict), so any node
//!   holding the same `session_secret` accepts them; without one, a random
//!   key per process.
//! - **CSRF**: every change needs the session's token (derived from its
//!   nonce) in an `X-CSRF-Token` header or a form's `csrf` field; a
//!   read-only user changes nothing. Refusals of both are audited.
//! - **DICOMweb** reads follow `[http] dicomweb_auth`: open on loopback
//!   (the default), authenticated, or open. Besides the session cookie,
//!   DICOMweb (and `/wado`, `/viewer`) take the same users' HTTP Basic
//!   credentials (what dicomweb-client and other archives send; a refusal
//!   says `WWW-Authenticate: Basic`) and `Authorization: Bearer` with the
//!   `token` `POST /api/login` answers. A verified Basic credential is
//!   remembered for a minute (keyed by a keyed hash of name and password),
//!   so argon2 does not run on every request.
//! - **Failed logins** (form, API, Basic) are counted per user and per
//!   address: after 5 in a minute, further attempts get 429 until the
//!   minute has passed.
//! - The session cookie is `Secure` when `[http] secure_cookies` is set or
//!   a trusted proxy says the request came over HTTPS
//!   (`X-Forwarded-Proto: https`).
//!
//! Its parts: `session` (signed cookies, bearer tokens, CSRF), `password`
//! (argon2 and the cache of verified Basic credentials), `throttle`
//! (failed logins counted per user and address) and `guard` (the
//! middleware every request passes, the login and logout handlers).

mod guard;
mod password;
mod session;
mod throttle;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use argon2::password_hash::rand_core::{OsRng, RngCore};

use super::WebError;
use crate::config::{DicomWebAuth, HttpSettings, Role, User};

pub(crate) use guard::{guard, login, logout};

/// The session cookie's name.
pub(crate) const COOKIE: &str = "imageserver_session";
/// The user of loopback callers while no users are configured.
pub(crate) const LOCAL_USER: &str = "local";

/// Hashes a password as `[[http.users]] password_hash` expects (argon2id,
/// random salt, PHC string).
pub fn hash_password(password: &str) -> Result<String, WebError> {
    crate::config::hash_passcode(password.as_bytes()).map_err(WebError::Password)
}

/// The access settings in force.
#[derive(Debug)]
pub(crate) struct Access {
    users: Vec<User>,
    header: Option<String>,
    proxies: Vec<IpAddr>,
    secret: [u8; 32],
    lifetime: Duration,
    dicomweb: DicomWebAuth,
    /// Verified against for unknown names, so that a wrong name costs what
    /// a wrong password does (made at the first such login: every server
    /// start would pay for it otherwise).
    dummy_hash: std::sync::OnceLock<String>,
    /// Session cookies are always `Secure`.
    secure_cookies: bool,
    /// Verified Basic credentials (keyed hash of name and password) → the
    /// user's name and until when the verification holds.
    remembered: Mutex<HashMap<[u8; 32], (String, Instant)>>,
    /// Failed logins by `user:NAME` and `ip:ADDRESS`: count and the start
    /// of their window.
    failures: Mutex<HashMap<String, (u32, Instant)>>,
}

#[derive(Debug, Clone)]
pub(crate) struct Identity {
    /// The user's name.
    pub name: String,
    /// What the user may do.
    pub role: Role,
    /// The session's CSRF token.
    pub csrf: String,
    /// A cookie to set (a session begun by this request).
    cookie: Option<String>,
}

impl Identity {
    /// The audit log's actor.
    pub fn actor(&self) -> String {
        format!("http:{}", self.name)
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Equal strings, compared in time independent of where they differ.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

fn is_loopback(peer: Option<SocketAddr>) -> bool {
    peer.is_some_and(|p| p.ip().is_loopback())
}

impl Access {
    /// The access the settings describe (a random session key unless one
    /// is configured).
    pub(crate) fn new(settings: &HttpSettings) -> Result<Access, WebError> {
        let secret = match &settings.session_secret {
            Some(text) => *blake3::hash(text.as_bytes()).as_bytes(),
            None => {
                let mut key = [0u8; 32];
                OsRng
                    .try_fill_bytes(&mut key)
                    .map_err(|e| WebError::Password(e.to_string()))?;
                key
            }
        };
        if settings.users.is_empty() && settings.trusted_user_header.is_none() {
            tracing::info!(
                "no [[http.users]] configured: the admin API and pages answer only callers on loopback"
            );
        } else if settings.session_secret.is_none() {
            tracing::info!(
                "sessions are signed with a random key: they end when this process stops \
                 (set [http] session_secret, the same on every node of a cluster)"
            );
        }
        Ok(Access {
            users: settings.users.clone(),
            header: settings.trusted_user_header.clone(),
            proxies: settings.trusted_proxies.clone(),
            secret,
            lifetime: settings.session_lifetime,
            dicomweb: settings.dicomweb_auth,
            dummy_hash: std::sync::OnceLock::new(),
            secure_cookies: settings.secure_cookies,
            remembered: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
        })
    }

    /// Whether the admin surface is limited to loopback (no users).
    fn loopback_only(&self) -> bool {
        self.users.is_empty() && self.header.is_none()
    }
}

#[cfg(test)]
mod tests {
    use axum::http::{header, HeaderMap, HeaderValue};

    use super::guard::{credentials, Credentials};
    use super::throttle::MAX_FAILURES;
    use super::*;
    use crate::config::Config;

    fn access(toml: &str) -> Access {
        let settings = Config::from_toml(toml).unwrap().validate().unwrap();
        Access::new(&settings.http).unwrap()
    }

    fn with_cookie(cookie: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        let value = cookie.split(';').next().unwrap();
        headers.insert(header::COOKIE, HeaderValue::from_str(value).unwrap());
        headers
    }

    fn remote() -> Option<SocketAddr> {
        Some("192.0.2.7:5000".parse().unwrap())
    }

    #[test]
    fn a_session_is_signed_and_bound_to_its_user() {
        let hash = hash_password("correct horse").unwrap();
        let a = access(&format!(
            "[[http.users]]\nname = \"ann\"\npassword_hash = \"{hash}\"\nrole = \"admin\"\n"
        ));
        assert_eq!(a.verify("ann", "correct horse"), Some(Role::Admin));
        assert_eq!(a.verify("ann", "wrong"), None);
        assert_eq!(a.verify("bob", "correct horse"), None);
        let (cookie, csrf, _) = a.begin("ann", false);
        let id = a
            .identify(&with_cookie(&cookie), remote())
            .expect("the session");
        assert_eq!(
            (id.name.as_str(), id.role, id.csrf.as_str()),
            ("ann", Role::Admin, csrf.as_str())
        );
        // Another user's name in the same cookie breaks its MAC.
        let forged = cookie.replacen("ann:", "bob:", 1);
        assert!(a.identify(&with_cookie(&forged), remote()).is_none());
        // Another process's key (no shared secret) does not accept it.
        let other = access(&format!(
            "[[http.users]]\nname = \"ann\"\npassword_hash = \"{hash}\"\n"
        ));
        assert!(other.identify(&with_cookie(&cookie), remote()).is_none());
    }

    #[test]
    fn a_shared_secret_lets_every_node_accept_the_session() {
        let config = "[http]\nsession_secret = \"0123456789abcdef0123456789abcdef\"\n\
                      trusted_user_header = \"X-Remote-User\"\ntrusted_proxies = [\"192.0.2.1\"]\n";
        let (one, two) = (access(config), access(config));
        let (cookie, csrf, _) = one.begin("carol", false);
        let id = two
            .identify(&with_cookie(&cookie), remote())
            .expect("accepted");
        assert_eq!((id.role, id.csrf), (Role::ReadOnly, csrf));
    }

    #[test]
    fn the_proxy_header_counts_only_from_the_proxy() {
        let a = access(
            "[http]\ntrusted_user_header = \"X-Remote-User\"\ntrusted_proxies = [\"192.0.2.1\"]\n",
        );
        let mut headers = HeaderMap::new();
        headers.insert("x-remote-user", HeaderValue::from_static("dave"));
        let proxy = Some("192.0.2.1:4000".parse().unwrap());
        assert_eq!(
            a.identify(&headers, proxy).map(|i| i.name),
            Some("dave".into())
        );
        assert!(a.identify(&headers, remote()).is_none());
    }

    #[test]
    fn without_users_only_loopback_is_let_in() {
        let a = access("");
        let loopback = Some("127.0.0.1:4000".parse().unwrap());
        let id = a.identify(&HeaderMap::new(), loopback).expect("loopback");
        assert_eq!((id.name.as_str(), id.role), (LOCAL_USER, Role::Admin));
        assert!(id.cookie.is_some(), "a session is begun for its CSRF token");
        assert!(a.identify(&HeaderMap::new(), remote()).is_none());
    }

    #[test]
    fn basic_and_bearer_credentials_are_read() {
        let mut headers = HeaderMap::new();
        assert_eq!(credentials(&headers), Credentials::Absent);
        // "ann:pass:word" (the password may hold colons).
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic YW5uOnBhc3M6d29yZA=="),
        );
        assert_eq!(
            credentials(&headers),
            Credentials::Basic("ann".into(), "pass:word".into())
        );
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("bearer x:y"),
        );
        assert_eq!(credentials(&headers), Credentials::Bearer("x:y".into()));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic !!"));
        assert_eq!(credentials(&headers), Credentials::Unreadable);
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Digest a=b"),
        );
        assert_eq!(credentials(&headers), Credentials::Unreadable);
    }

    #[test]
    fn a_verified_basic_credential_is_remembered_only_as_given() {
        let hash = hash_password("correct horse").unwrap();
        let a = access(&format!(
            "[[http.users]]\nname = \"ann\"\npassword_hash = \"{hash}\"\n"
        ));
        assert_eq!(a.remembered("ann", "correct horse"), None);
        assert_eq!(a.verify_basic("ann", "wrong"), None);
        assert_eq!(a.remembered("ann", "wrong"), None, "failures are not kept");
        assert_eq!(a.verify_basic("ann", "correct horse"), Some(Role::ReadOnly));
        assert_eq!(a.remembered("ann", "correct horse"), Some(Role::ReadOnly));
        assert_eq!(a.remembered("ann", "correct hors"), None);
        assert_eq!(a.remembered("bob", "correct horse"), None);
        // The session token is the bearer token.
        let (_, csrf, token) = a.begin("ann", false);
        assert_eq!(a.session_of(&token), Some(("ann".into(), csrf)));
        assert_eq!(a.session_of(&token.replacen("ann", "bob", 1)), None);
    }

    #[test]
    fn five_failures_in_a_minute_throttle_the_user_and_the_address() {
        let a = access("");
        let here = remote();
        let elsewhere = Some("192.0.2.8:5000".parse().unwrap());
        for _ in 0..MAX_FAILURES - 1 {
            a.failed("ann", here);
        }
        assert!(!a.throttled("ann", here));
        a.failed("ann", here);
        assert!(a.throttled("ann", here));
        assert!(a.throttled("ann", elsewhere), "per user");
        assert!(a.throttled("bob", here), "per address");
        assert!(!a.throttled("bob", elsewhere));
        a.succeeded("ann");
        assert!(!a.throttled("ann", elsewhere));
        assert!(a.throttled("ann", here), "the address stays throttled");
    }

    #[test]
    fn the_cookie_is_secure_when_configured_or_behind_an_https_proxy() {
        let (cookie, _, _) = access("[http]\nsecure_cookies = true\n").begin("ann", true);
        assert!(cookie.ends_with("; Secure"), "{cookie}");
        let a = access(
            "[http]\ntrusted_user_header = \"X-Remote-User\"\ntrusted_proxies = [\"192.0.2.1\"]\n",
        );
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        let proxy = Some("192.0.2.1:4000".parse().unwrap());
        assert!(a.secure(&headers, proxy));
        assert!(
            !a.secure(&headers, remote()),
            "only a trusted proxy says so"
        );
        assert!(!a.secure(&HeaderMap::new(), proxy));
        let (cookie, _, _) = a.begin("ann", false);
        assert!(!cookie.contains("Secure"), "{cookie}");
    }
}
