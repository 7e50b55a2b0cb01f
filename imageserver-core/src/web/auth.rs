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

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use argon2::password_hash::rand_core::{OsRng, RngCore};
use argon2::password_hash::{PasswordHash, PasswordVerifier};
use argon2::Argon2;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use serde_json::json;

use super::{blocking, Failure, Shared, WebError};
use crate::audit::{
    event::types, Action as AuditAction, AuditEvent, EventKind, Outcome, Participant,
};
use crate::config::{DicomWebAuth, HttpSettings, Role, User};

/// The session cookie's name.
pub(crate) const COOKIE: &str = "imageserver_session";
/// Largest form body the guard reads to find its CSRF token.
const MAX_FORM_BYTES: usize = 64 * 1024;
/// The user of loopback callers while no users are configured.
pub(crate) const LOCAL_USER: &str = "local";
/// How long a verified Basic credential is believed without argon2.
const BASIC_REMEMBERED: Duration = Duration::from_secs(60);
/// Most Basic credentials remembered at once (all forgotten beyond).
const BASIC_REMEMBERED_MAX: usize = 1024;
/// Failed logins allowed per user and per address within `FAILURE_WINDOW`.
const MAX_FAILURES: u32 = 5;
/// The window failed logins are counted in.
const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Most users and addresses whose failures are counted at once.
const FAILURES_MAX_KEYS: usize = 10_000;
/// The realm a Basic challenge names.
const CHALLENGE: &str = "Basic realm=\"imageserver\", charset=\"UTF-8\"";

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

/// What an `Authorization` header carries.
#[derive(Debug, PartialEq, Eq)]
enum Credentials {
    /// No header.
    Absent,
    /// `Basic` name and password.
    Basic(String, String),
    /// `Bearer` token (a session's value).
    Bearer(String),
    /// A header that is neither.
    Unreadable,
}

fn credentials(headers: &HeaderMap) -> Credentials {
    use base64::Engine as _;
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Credentials::Absent;
    };
    let Some((scheme, rest)) = value.to_str().ok().and_then(|v| v.trim().split_once(' ')) else {
        return Credentials::Unreadable;
    };
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return Credentials::Bearer(rest.to_string());
    }
    if !scheme.eq_ignore_ascii_case("basic") {
        return Credentials::Unreadable;
    }
    base64::engine::general_purpose::STANDARD
        .decode(rest)
        .ok()
        .and_then(|raw| String::from_utf8(raw).ok())
        .and_then(|text| {
            text.split_once(':')
                .map(|(n, p)| Credentials::Basic(n.to_string(), p.to_string()))
        })
        .unwrap_or(Credentials::Unreadable)
}

/// Who a request comes from.
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

    fn mac(&self, text: &str) -> String {
        blake3::keyed_hash(&self.secret, text.as_bytes()).to_hex()[..32].to_string()
    }

    fn csrf_of(&self, nonce: &str) -> String {
        self.mac(&format!("csrf:{nonce}"))
    }

    /// Whether a session cookie set in answer to this request is marked
    /// `Secure`: always when configured, else when a trusted proxy says the
    /// request came over HTTPS.
    fn secure(&self, headers: &HeaderMap, peer: Option<SocketAddr>) -> bool {
        self.secure_cookies
            || (peer.is_some_and(|p| self.proxies.contains(&p.ip()))
                && headers
                    .get("x-forwarded-proto")
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| v.trim().eq_ignore_ascii_case("https")))
    }

    /// A new session for `name`: its cookie, CSRF token and value (the
    /// bearer token).
    fn begin(&self, name: &str, secure: bool) -> (String, String, String) {
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
    fn role_of(&self, name: &str, peer: Option<SocketAddr>) -> Option<Role> {
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
    fn session(&self, headers: &HeaderMap) -> Option<(String, String)> {
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
    fn session_of(&self, value: &str) -> Option<(String, String)> {
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

    /// Checks a name and password (argon2, slow by design: call it off the
    /// executor); the user's role when they match.
    fn verify(&self, name: &str, password: &str) -> Option<Role> {
        let user = self.users.iter().find(|u| u.name == name);
        let hash = match user.and_then(|u| u.password_hash.as_deref()) {
            Some(hash) => hash,
            None => self
                .dummy_hash
                .get_or_init(|| hash_password("not a password of anyone").unwrap_or_default()),
        };
        let parsed = PasswordHash::new(hash).ok()?;
        let matched = Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok();
        match user {
            Some(u) if matched && u.password_hash.is_some() => Some(u.role),
            _ => None,
        }
    }

    fn credentials_key(&self, name: &str, password: &str) -> [u8; 32] {
        let mut hasher = blake3::Hasher::new_keyed(&self.secret);
        hasher.update(b"basic\0");
        hasher.update(name.as_bytes());
        hasher.update(b"\0");
        hasher.update(password.as_bytes());
        *hasher.finalize().as_bytes()
    }

    /// The role of a Basic credential verified less than a minute ago.
    fn remembered(&self, name: &str, password: &str) -> Option<Role> {
        let key = self.credentials_key(name, password);
        let mut remembered = self
            .remembered
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match remembered.get(&key) {
            Some((held, until)) if *until > Instant::now() && held == name => {
                self.users.iter().find(|u| u.name == name).map(|u| u.role)
            }
            Some(_) => {
                remembered.remove(&key);
                None
            }
            None => None,
        }
    }

    /// Checks a Basic credential: remembered, else argon2 (slow: call it
    /// off the executor), remembered when it matches.
    fn verify_basic(&self, name: &str, password: &str) -> Option<Role> {
        if let Some(role) = self.remembered(name, password) {
            return Some(role);
        }
        let role = self.verify(name, password)?;
        let key = self.credentials_key(name, password);
        let mut remembered = self
            .remembered
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if remembered.len() >= BASIC_REMEMBERED_MAX {
            let now = Instant::now();
            remembered.retain(|_, (_, until)| *until > now);
            if remembered.len() >= BASIC_REMEMBERED_MAX {
                remembered.clear();
            }
        }
        remembered.insert(key, (name.to_string(), Instant::now() + BASIC_REMEMBERED));
        Some(role)
    }

    /// What failed logins are counted against: the user, and the caller's
    /// address unless it is a trusted proxy (every user behind it shares
    /// its address).
    fn failure_keys(&self, name: &str, peer: Option<SocketAddr>) -> Vec<String> {
        let mut keys = vec![format!("user:{name}")];
        if let Some(peer) = peer.filter(|p| !self.proxies.contains(&p.ip())) {
            keys.push(format!("ip:{}", peer.ip()));
        }
        keys
    }

    /// Whether `name` or `peer` failed to log in too often within the
    /// last minute.
    fn throttled(&self, name: &str, peer: Option<SocketAddr>) -> bool {
        let failures = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
        self.failure_keys(name, peer).iter().any(|key| {
            failures.get(key).is_some_and(|(count, since)| {
                *count >= MAX_FAILURES && since.elapsed() < FAILURE_WINDOW
            })
        })
    }

    /// Counts a failed login of `name` from `peer`.
    fn failed(&self, name: &str, peer: Option<SocketAddr>) {
        let mut failures = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
        if failures.len() >= FAILURES_MAX_KEYS {
            failures.retain(|_, (_, since)| since.elapsed() < FAILURE_WINDOW);
            if failures.len() >= FAILURES_MAX_KEYS {
                failures.clear();
            }
        }
        for key in self.failure_keys(name, peer) {
            let entry = failures.entry(key).or_insert((0, Instant::now()));
            if entry.1.elapsed() >= FAILURE_WINDOW {
                *entry = (0, Instant::now());
            }
            entry.0 = entry.0.saturating_add(1);
        }
    }

    /// Forgets the failures of `name` after a successful login.
    fn succeeded(&self, name: &str) {
        self.failures
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&format!("user:{name}"));
    }
}

/// The 429 answer of a throttled login.
fn too_many(surface: Surface) -> Response {
    let mut response = refuse(
        surface,
        StatusCode::TOO_MANY_REQUESTS,
        "too many failed logins: try again in a minute",
    );
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("60"));
    response
}

/// The 401 answer of DICOMweb, with its Basic challenge.
fn challenge(reason: &str) -> Response {
    let mut response = refuse(Surface::DicomWeb, StatusCode::UNAUTHORIZED, reason);
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static(CHALLENGE),
    );
    response
}

/// Who a DICOMweb request comes from: its `Authorization` (Basic or
/// Bearer), else its session; Err is the answer to give instead.
async fn dicomweb_caller(
    services: &Shared,
    headers: &HeaderMap,
    peer: Option<SocketAddr>,
) -> Result<(String, Role), Response> {
    let access = &services.access;
    match credentials(headers) {
        Credentials::Absent => access
            .identify(headers, peer)
            .map(|id| (id.name, id.role))
            .ok_or_else(|| challenge("log in first (/login), or send HTTP Basic credentials")),
        Credentials::Unreadable => Err(challenge(
            "unreadable Authorization header (expected Basic or Bearer)",
        )),
        Credentials::Bearer(token) => access
            .session_of(&token)
            .and_then(|(name, _)| access.role_of(&name, peer).map(|role| (name, role)))
            .ok_or_else(|| challenge("the bearer token is not valid (expired?)")),
        Credentials::Basic(name, password) => {
            if let Some(role) = access.remembered(&name, &password) {
                return Ok((name, role));
            }
            if access.throttled(&name, peer) {
                return Err(too_many(Surface::DicomWeb));
            }
            let shared = services.clone();
            let checked = name.clone();
            let role = blocking(move || Ok(shared.access.verify_basic(&checked, &password)))
                .await
                .ok()
                .flatten();
            match role {
                Some(role) => {
                    access.succeeded(&name);
                    Ok((name, role))
                }
                None => {
                    access.failed(&name, peer);
                    tracing::info!(user = %name, "HTTP Basic credentials refused");
                    Err(challenge("wrong name or password"))
                }
            }
        }
    }
}

/// Where a request goes, for the guard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Surface {
    /// `/api/...` (JSON answers).
    Api,
    /// The pages.
    Pages,
    /// `/dicom-web/...`, `/wado`.
    DicomWeb,
    /// Open: `/metrics`, the login form and call, the API's description.
    Open,
}

fn surface(path: &str) -> Surface {
    match path {
        "/metrics" | "/api/openapi.json" | "/static/admin.css" => Surface::Open,
        "/login" | "/api/login" => Surface::Open,
        _ if path.starts_with("/api/") || path == "/api" => Surface::Api,
        // The viewer's files are read as DICOMweb is.
        _ if path.starts_with("/dicom-web") || path == "/wado" || path.starts_with("/viewer") => {
            Surface::DicomWeb
        }
        _ => Surface::Pages,
    }
}

fn refuse(surface: Surface, status: StatusCode, reason: &str) -> Response {
    match surface {
        Surface::Api => (status, axum::Json(json!({ "error": reason }))).into_response(),
        _ => Failure::new(status, reason).into_response(),
    }
}

fn is_change(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// The guard every request passes: who it is, whether they may, and (for
/// changes) the CSRF token.
pub(crate) async fn guard(
    State(services): State<Shared>,
    request: Request,
    next: Next,
) -> Response {
    let access = &services.access;
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let surface = surface(&path);
    if surface == Surface::Open {
        if matches!(path.as_str(), "/login" | "/api/login")
            && access.loopback_only()
            && !is_loopback(peer)
        {
            return refuse(
                Surface::Api,
                StatusCode::FORBIDDEN,
                "no users are configured: the admin pages answer only on loopback",
            );
        }
        return next.run(request).await;
    }
    if surface == Surface::DicomWeb {
        let open = match access.dicomweb {
            DicomWebAuth::Open => true,
            DicomWebAuth::OpenOnLoopback => is_loopback(peer),
            DicomWebAuth::Authenticated => false,
        };
        if open {
            return next.run(request).await;
        }
        return match dicomweb_caller(&services, request.headers(), peer).await {
            Err(refusal) => refusal,
            Ok((_, role)) if is_change(&method) && role != Role::Admin => refuse(
                surface,
                StatusCode::FORBIDDEN,
                "a read-only user cannot store",
            ),
            Ok(_) => next.run(request).await,
        };
    }
    let identity = access.identify(request.headers(), peer);
    if access.loopback_only() && !is_loopback(peer) {
        return refuse(
            surface,
            StatusCode::FORBIDDEN,
            "no [[http.users]] are configured: the admin API and pages answer only callers on loopback",
        );
    }
    let Some(identity) = identity else {
        return match surface {
            Surface::Pages if !is_change(&method) => {
                let next_page = request
                    .uri()
                    .path_and_query()
                    .map_or("/".to_string(), |p| p.as_str().to_string());
                let target = format!(
                    "/login?next={}",
                    form_urlencoded::byte_serialize(next_page.as_bytes()).collect::<String>()
                );
                Redirect::to(&target).into_response()
            }
            _ => refuse(surface, StatusCode::UNAUTHORIZED, "log in first"),
        };
    };
    let mut request = request;
    if is_change(&method) {
        if identity.role != Role::Admin {
            audit_refusal(&services, &identity, &method, &path, "read-only user").await;
            return refuse(
                surface,
                StatusCode::FORBIDDEN,
                "a read-only user cannot change anything",
            );
        }
        let (checked, rebuilt) = csrf_checked(request, &identity.csrf).await;
        request = match rebuilt {
            Some(r) => r,
            None => return refuse(surface, StatusCode::BAD_REQUEST, "the form is too large"),
        };
        if !checked {
            audit_refusal(
                &services,
                &identity,
                &method,
                &path,
                "missing or wrong CSRF token",
            )
            .await;
            return refuse(
                surface,
                StatusCode::FORBIDDEN,
                "missing or wrong CSRF token (X-CSRF-Token header or csrf form field)",
            );
        }
    }
    let cookie = identity.cookie.clone();
    request.extensions_mut().insert(identity);
    let mut response = next.run(request).await;
    if let Some(cookie) = cookie.and_then(|c| HeaderValue::from_str(&c).ok()) {
        response.headers_mut().append(header::SET_COOKIE, cookie);
    }
    response
}

/// Whether the request carries the token (header, or a form's `csrf`
/// field), and the request to pass on (None: a form too large to read).
async fn csrf_checked(request: Request, token: &str) -> (bool, Option<Request>) {
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

async fn audit_refusal(
    services: &Shared,
    identity: &Identity,
    method: &Method,
    path: &str,
    why: &str,
) {
    let admin = services.admin.clone();
    let actor = identity.actor();
    let details = json!({ "method": method.as_str(), "path": path, "refused": why });
    services.auditor.record(
        AuditEvent::new(
            EventKind::SecurityAlert,
            AuditAction::Execute,
            Outcome::MinorFailure,
        )
        .type_code(types::RESTRICTED_FUNCTION)
        .participant(Participant::user(&actor, true))
        .described(format!("{} {path} refused: {why}", method.as_str())),
    );
    let _ = blocking(move || {
        admin
            .record(&actor, "admin.refused", None, None, &details)
            .map_err(|e| Failure::internal("cannot record the refusal", &e))
    })
    .await;
}

/// `POST /login` (form: name, password, next) and `POST /api/login`
/// (JSON: name, password): a session cookie when they match.
pub(crate) async fn login(
    State(services): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let peer = Some(peer);
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("application/json"));
    let (name, password, next_page) = if is_json {
        let value: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        (
            value["name"].as_str().unwrap_or_default().to_string(),
            value["password"].as_str().unwrap_or_default().to_string(),
            None,
        )
    } else {
        let mut fields = (String::new(), String::new(), Some("/".to_string()));
        for (k, v) in form_urlencoded::parse(&body) {
            match &*k {
                "name" => fields.0 = v.into_owned(),
                "password" => fields.1 = v.into_owned(),
                "next" if v.starts_with('/') && !v.starts_with("//") => {
                    fields.2 = Some(v.into_owned())
                }
                _ => {}
            }
        }
        fields
    };
    if services.access.throttled(&name, peer) {
        tracing::info!(user = %name, "HTTP login throttled");
        return too_many(if is_json {
            Surface::Api
        } else {
            Surface::Pages
        });
    }
    let shared = services.clone();
    let checked_name = name.clone();
    let role = blocking(move || Ok(shared.access.verify(&checked_name, &password)))
        .await
        .ok()
        .flatten();
    let Some(role) = role else {
        services.access.failed(&name, peer);
        tracing::info!(user = %name, "HTTP login refused");
        return match next_page {
            None => refuse(
                Surface::Api,
                StatusCode::UNAUTHORIZED,
                "wrong name or password",
            ),
            Some(next_page) => Redirect::to(&format!(
                "/login?failed=1&next={}",
                form_urlencoded::byte_serialize(next_page.as_bytes()).collect::<String>()
            ))
            .into_response(),
        };
    };
    tracing::info!(user = %name, role = role.as_str(), "HTTP login");
    services.access.succeeded(&name);
    let secure = services.access.secure(&headers, peer);
    let (cookie, csrf, token) = services.access.begin(&name, secure);
    let mut response = match next_page {
        None => {
            axum::Json(json!({ "name": name, "role": role.as_str(), "csrf": csrf, "token": token }))
                .into_response()
        }
        Some(next_page) => Redirect::to(&next_page).into_response(),
    };
    if let Ok(cookie) = HeaderValue::from_str(&cookie) {
        response.headers_mut().append(header::SET_COOKIE, cookie);
    }
    response
}

/// `POST /logout`: the cookie is cleared (a copied cookie stays valid
/// until it expires: sessions are stateless).
pub(crate) async fn logout() -> Response {
    let mut response = Redirect::to("/login").into_response();
    response.headers_mut().append(
        header::SET_COOKIE,
        HeaderValue::from_static(
            "imageserver_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0",
        ),
    );
    response
}

#[cfg(test)]
mod tests {
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
