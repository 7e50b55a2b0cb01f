//! The admin pages: server-rendered HTML, no build step, no framework;
//! one small script refreshes the work queue. Every value is escaped by
//! [`esc`] where it is written. They show what the admin API answers
//! (the same [`crate::services::admin`] calls), and their forms post
//! with the session's CSRF token to routes here that record the change
//! in the audit log as the API does.
//!
//! - `studies`: search with paging and thumbnails; a study's details;
//! - `work`: the work queue with live status and retry;
//! - `system`: filesystems with usage bars, devices with C-ECHO, login.

mod studies;
mod system;
mod work;

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::Value;

use super::api::ApiError;
use super::auth::Identity;
use super::Shared;

/// Escapes text for HTML element content and quoted attribute values.
pub(crate) fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Percent-encodes text for a URL path segment or query value.
pub(crate) fn url(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// A JSON value as display text (escaped): strings bare, null empty.
pub(crate) fn show(value: &Value) -> String {
    esc(&match value {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    })
}

const CSS: &str = include_str!("admin.css");

/// A whole page: navigation, who is logged in, the body.
pub(crate) fn page(title: &str, identity: Option<&Identity>, body: &str) -> Response {
    let (user, csrf) = match identity {
        Some(id) => (
            format!(
                "<span class=\"who\">{} ({})</span><form method=\"post\" action=\"/logout\" class=\"inline\">{}<button>Log out</button></form>",
                esc(&id.name),
                esc(id.role.as_str()),
                csrf_field(id)
            ),
            esc(&id.csrf),
        ),
        None => (String::new(), String::new()),
    };
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<meta name=\"csrf-token\" content=\"{csrf}\">\
<title>{title} · imageserver</title><link rel=\"stylesheet\" href=\"/static/admin.css\"></head>\
<body><header><nav><a class=\"brand\" href=\"/\">imageserver</a>\
<a href=\"/\">Studies</a><a href=\"/work\">Work queue</a><a href=\"/filesystems\">Filesystems</a>\
<a href=\"/devices\">Devices</a></nav><div class=\"user\">{user}</div></header>\
<main><h1>{title}</h1>{body}</main></body></html>",
        title = esc(title),
    );
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        html,
    )
        .into_response()
}

/// The hidden form field carrying the session's CSRF token.
pub(crate) fn csrf_field(identity: &Identity) -> String {
    format!(
        "<input type=\"hidden\" name=\"csrf\" value=\"{}\">",
        esc(&identity.csrf)
    )
}

/// An API failure shown as a page.
pub(crate) fn failed(identity: Option<&Identity>, error: ApiError) -> Response {
    let (status, reason) = error.parts();
    let mut response = page(
        "Error",
        identity,
        &format!("<p class=\"error\">{}</p>", esc(&reason)),
    );
    *response.status_mut() = if status.is_client_error() || status.is_server_error() {
        status
    } else {
        StatusCode::INTERNAL_SERVER_ERROR
    };
    response
}

async fn stylesheet() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=3600"),
        ],
        CSS,
    )
        .into_response()
}

/// The pages' routes.
pub(crate) fn router() -> Router<Shared> {
    Router::new()
        .route("/", get(studies::search))
        .route("/studies/{study}", get(studies::details))
        .route("/studies/{study}/operation", post(studies::operate))
        .route("/work", get(work::queue))
        .route("/work/{id}/retry", post(work::retry))
        .route("/work/{id}/delete", post(work::delete))
        .route("/filesystems", get(system::filesystems))
        .route("/devices", get(system::devices))
        .route("/devices/{ae}/echo", post(system::echo))
        .route("/login", get(system::login_form).post(super::auth::login))
        .route("/logout", post(super::auth::logout))
        .route("/static/admin.css", get(stylesheet))
}

#[cfg(test)]
mod tests {
    #[test]
    fn values_are_escaped_for_text_and_attributes() {
        assert_eq!(
            super::esc(r#"<img src=x onerror="a('b')">&"#),
            "&lt;img src=x onerror=&quot;a(&#39;b&#39;)&quot;&gt;&amp;"
        );
        assert_eq!(super::url("A B/&?"), "A+B%2F%26%3F");
    }
}
