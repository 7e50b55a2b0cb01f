//! `/filesystems` (usage bars against the watermarks), `/devices` (with a
//! C-ECHO button) and `/login`.

use axum::extract::{Path, Query, State};
use axum::response::Response;
use axum::Extension;
use serde::Deserialize;
use serde_json::json;

use super::{csrf_field, esc, failed, page, show, url};
use crate::config::Role;
use crate::web::api::{change, run};
use crate::web::auth::Identity;
use crate::web::Shared;

fn mib(bytes: &serde_json::Value) -> String {
    bytes.as_u64().map_or_else(
        || "?".to_string(),
        |b| format!("{:.1} MiB", b as f64 / 1_048_576.0),
    )
}

/// `GET /filesystems`.
pub(super) async fn filesystems(
    State(s): State<Shared>,
    Extension(identity): Extension<Identity>,
) -> Response {
    let list = match run(&s, |a| a.filesystems()).await {
        Ok(list) => list,
        Err(e) => return failed(Some(&identity), e),
    };
    let mut body = String::from("<div class=\"scroll\"><table id=\"filesystems\"><thead><tr><th>ID</th><th>Tier</th><th>Path</th><th>State</th><th>Usage</th><th>Used</th><th class=\"hide-narrow\">Capacity</th><th class=\"hide-narrow\">Held by studies</th></tr></thead><tbody>");
    for fs in &list {
        let used = fs["used_percent"].as_f64();
        let high = fs["high_watermark"].as_f64().unwrap_or(100.0);
        let low = fs["low_watermark"].as_f64().unwrap_or(100.0);
        let used_bytes = match (fs["total_bytes"].as_u64(), fs["available_bytes"].as_u64()) {
            (Some(t), Some(a)) => json!(t.saturating_sub(a)),
            _ => serde_json::Value::Null,
        };
        let mut state = vec![if fs["enabled"].as_bool() == Some(true) {
            "on"
        } else {
            "off"
        }];
        if fs["read_only"].as_bool() == Some(true) {
            state.push("read-only");
        }
        if fs["write_only"].as_bool() == Some(true) {
            state.push("write-only");
        }
        let refused = fs["refused"]
            .as_str()
            .map(|r| format!(" (refused: {})", esc(r)))
            .unwrap_or_default();
        body.push_str(&format!(
            "<tr><td>{id}</td><td>{tier}</td><td><code>{path}</code></td><td>{state}{refused}</td>\
<td><div class=\"bar\" title=\"used {pct}; low {low}%, high {high}%\"><div class=\"used{hot}\" style=\"width:{w:.1}%\"></div>\
<div class=\"mark low\" style=\"left:{low:.1}%\"></div><div class=\"mark\" style=\"left:{high:.1}%\"></div></div></td>\
<td>{pct}</td><td class=\"hide-narrow\">{used} of {total}</td><td class=\"hide-narrow\">{held}</td></tr>",
            id = show(&fs["id"]),
            tier = show(&fs["tier"]),
            path = show(&fs["path"]),
            state = esc(&state.join(", ")),
            pct = used.map_or("?".to_string(), |u| format!("{u:.1}%")),
            hot = if used.is_some_and(|u| u >= high) { " high" } else { "" },
            w = used.unwrap_or(0.0).clamp(0.0, 100.0),
            low = low.clamp(0.0, 100.0),
            high = high.clamp(0.0, 100.0),
            used = mib(&used_bytes),
            total = mib(&fs["total_bytes"]),
            held = mib(&fs["held_bytes"]),
        ));
    }
    body.push_str("</tbody></table></div><p class=\"note\">The bar is the space used; the marks are the low (grey) and high (black) watermarks.</p>");
    page("Filesystems", Some(&identity), &body)
}

#[derive(Debug, Deserialize)]
pub(super) struct Echoed {
    echo: Option<String>,
    ok: Option<String>,
    detail: Option<String>,
}

/// `GET /devices`.
pub(super) async fn devices(
    State(s): State<Shared>,
    Extension(identity): Extension<Identity>,
    Query(q): Query<Echoed>,
) -> Response {
    let list = match run(&s, |a| a.devices(None)).await {
        Ok(list) => list,
        Err(e) => return failed(Some(&identity), e),
    };
    let mut body = String::new();
    if let Some(ae) = &q.echo {
        let ok = q.ok.as_deref() == Some("1");
        body.push_str(&format!(
            "<p class=\"{}\" id=\"echo-result\">C-ECHO {}: {}</p>",
            if ok { "note" } else { "error" },
            esc(ae),
            esc(q
                .detail
                .as_deref()
                .unwrap_or(if ok { "success" } else { "failed" }))
        ));
    }
    body.push_str("<div class=\"scroll\"><table id=\"devices\"><thead><tr><th>AE title</th><th>Host</th><th>Port</th><th>Store</th><th>Query</th><th>Retrieve</th><th></th></tr></thead><tbody>");
    let yes = |v: &serde_json::Value| {
        if v.as_bool() == Some(true) {
            "yes"
        } else {
            "no"
        }
    };
    for d in &list {
        let ae = d["ae_title"].as_str().unwrap_or_default();
        let button = if identity.role == Role::Admin && d["port"].as_u64().unwrap_or(0) > 0 {
            format!(
                "<form class=\"inline\" method=\"post\" action=\"/devices/{}/echo\">{}<button class=\"echo\">C-ECHO</button></form>",
                esc(&url(ae)),
                csrf_field(&identity)
            )
        } else {
            String::new()
        };
        body.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(ae),
            show(&d["host"]),
            show(&d["port"]),
            yes(&d["allow_store"]),
            yes(&d["allow_query"]),
            yes(&d["allow_retrieve"]),
            button
        ));
    }
    if list.is_empty() {
        body.push_str("<tr><td colspan=\"7\">No devices.</td></tr>");
    }
    body.push_str("</tbody></table></div><p class=\"note\">Devices are added and changed through the API (<code>PUT /api/devices/{ae}</code>) or the configuration.</p>");
    page("Devices", Some(&identity), &body)
}

/// `POST /devices/{ae}/echo`: C-ECHO, then back to the list with the outcome.
pub(super) async fn echo(
    State(s): State<Shared>,
    Extension(identity): Extension<Identity>,
    Path(ae): Path<String>,
) -> Response {
    let name = ae.clone();
    match change(
        &s,
        &identity,
        "admin.device.echo",
        None,
        None,
        json!({ "ae_title": ae, "from": "pages" }),
        move |a| a.echo(None, &name),
    )
    .await
    {
        Ok(outcome) => {
            let ok = outcome["ok"].as_bool() == Some(true);
            let detail = if ok {
                format!("success in {} ms", outcome["elapsed_ms"])
            } else {
                outcome["error"]
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| format!("status {}", outcome["status"]))
            };
            axum::response::Redirect::to(&format!(
                "/devices?echo={}&ok={}&detail={}",
                url(&ae),
                u8::from(ok),
                url(&detail)
            ))
            .into_response_ok()
        }
        Err(e) => failed(Some(&identity), e),
    }
}

trait IntoResponseOk {
    fn into_response_ok(self) -> Response;
}

impl<T: axum::response::IntoResponse> IntoResponseOk for T {
    fn into_response_ok(self) -> Response {
        self.into_response()
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct LoginQuery {
    next: Option<String>,
    failed: Option<String>,
}

/// `GET /login`.
pub(super) async fn login_form(Query(q): Query<LoginQuery>) -> Response {
    let next = q
        .next
        .filter(|n| n.starts_with('/') && !n.starts_with("//"))
        .unwrap_or_else(|| "/".to_string());
    let body = format!(
        "{}<form class=\"login\" method=\"post\" action=\"/login\">\
<label>Name<input name=\"name\" autocomplete=\"username\" required autofocus></label>\
<label>Password<input name=\"password\" type=\"password\" autocomplete=\"current-password\" required></label>\
<input type=\"hidden\" name=\"next\" value=\"{}\"><button>Log in</button></form>",
        if q.failed.is_some() {
            "<p class=\"error\">Wrong name or password.</p>"
        } else {
            ""
        },
        esc(&next)
    );
    page("Log in", None, &body)
}
