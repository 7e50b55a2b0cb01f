//! The guard every request passes (who it is, whether they may, the CSRF
//! token of a change), the `Authorization` header's credentials, and the
//! login and logout handlers.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use serde_json::json;

use super::session::csrf_checked;
use super::{is_loopback, Identity};
use crate::audit::{
    event::types, Action as AuditAction, AuditEvent, EventKind, Outcome, Participant,
};
use crate::config::{DicomWebAuth, Role};
use crate::web::{blocking, Failure, Shared};

/// The realm a Basic challenge names.
const CHALLENGE: &str = "Basic realm=\"imageserver\", charset=\"UTF-8\"";

/// What an `Authorization` header carries.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Credentials {
    /// No header.
    Absent,
    /// `Basic` name and password.
    Basic(String, String),
    /// `Bearer` token (a session's value).
    Bearer(String),
    /// A header that is neither.
    Unreadable,
}

pub(super) fn credentials(headers: &HeaderMap) -> Credentials {
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

/// The 429 answer of a throttled login.
pub(super) fn too_many(surface: Surface) -> Response {
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
pub(super) fn challenge(reason: &str) -> Response {
    let mut response = refuse(Surface::DicomWeb, StatusCode::UNAUTHORIZED, reason);
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static(CHALLENGE),
    );
    response
}

/// Who a DICOMweb request comes from: its `Authorization` (Basic or
/// Bearer), else its session; Err is the answer to give instead.
pub(super) async fn dicomweb_caller(
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
pub(super) enum Surface {
    /// `/api/...` (JSON answers).
    Api,
    /// The pages.
    Pages,
    /// `/dicom-web/...`, `/wado`.
    DicomWeb,
    /// Open: `/metrics`, the login form and call, the API's description.
    Open,
}

pub(super) fn surface(path: &str) -> Surface {
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

pub(super) fn refuse(surface: Surface, status: StatusCode, reason: &str) -> Response {
    match surface {
        Surface::Api => (status, axum::Json(json!({ "error": reason }))).into_response(),
        _ => Failure::new(status, reason).into_response(),
    }
}

pub(super) fn is_change(method: &Method) -> bool {
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
