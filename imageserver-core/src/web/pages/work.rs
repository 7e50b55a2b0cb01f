//! `/work`: the work queue with live status (the table is fetched again
//! every few seconds by a small script) and retry and delete buttons.

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Extension;
use serde::Deserialize;
use serde_json::json;

use super::{csrf_field, esc, failed, page, show, url};
use crate::config::Role;
use crate::services::admin::WorkListing;
use crate::web::api::{change, run};
use crate::web::auth::Identity;
use crate::web::Shared;

/// Items shown.
const SHOWN: usize = 200;

#[derive(Debug, Deserialize)]
pub(super) struct Filter {
    status: Option<String>,
    study: Option<String>,
    /// `1`: the table alone (what the refresh script fetches).
    fragment: Option<String>,
}

const STATUSES: &[&str] = &["", "failed", "pending", "in_progress", "idle", "completed"];

/// The refresh script: the table is replaced by a fresh copy every 3 s.
const REFRESH: &str = "<script>\
(function(){var t=document.getElementById('queue');if(!t)return;\
function tick(){var u=new URL(location.href);u.searchParams.set('fragment','1');\
fetch(u,{credentials:'same-origin'}).then(function(r){return r.ok?r.text():null})\
.then(function(h){if(h!==null){document.getElementById('queue').outerHTML=h;}})\
.catch(function(){});}setInterval(tick,3000);})();</script>";

fn queue_table(items: &[serde_json::Value], identity: &Identity, back: &str) -> String {
    let mut out = String::from("<div class=\"scroll\" id=\"queue\"><table><thead><tr><th>ID</th><th>Type</th><th>Status</th><th>Priority</th><th>Failures</th><th class=\"hide-narrow\">Scheduled</th><th>Study</th><th>Last failure</th><th></th></tr></thead><tbody>");
    if items.is_empty() {
        out.push_str("<tr><td colspan=\"9\">No work items.</td></tr>");
    }
    let csrf = csrf_field(identity);
    for item in items {
        let id = item["id"].as_i64().unwrap_or_default();
        let status = item["status"].as_str().unwrap_or_default();
        let study = item["study_uid"].as_str().unwrap_or_default();
        let mut buttons = String::new();
        if identity.role == Role::Admin {
            if status == "failed" {
                buttons.push_str(&format!(
                    "<form class=\"inline\" method=\"post\" action=\"/work/{id}/retry\">{csrf}<input type=\"hidden\" name=\"back\" value=\"{}\"><button class=\"retry\">Retry</button></form> ",
                    esc(back)
                ));
            }
            if status != "in_progress" {
                buttons.push_str(&format!(
                    "<form class=\"inline\" method=\"post\" action=\"/work/{id}/delete\">{csrf}<input type=\"hidden\" name=\"back\" value=\"{}\"><button class=\"quiet\">Delete</button></form>",
                    esc(back)
                ));
            }
        }
        out.push_str(&format!(
            "<tr data-id=\"{id}\" data-status=\"{st}\"><td>{id}</td><td>{kind}</td><td><span class=\"status {st}\">{st}</span></td><td>{prio}</td><td>{fails}</td><td class=\"hide-narrow\">{sched}</td><td>{study}</td><td class=\"wrap\">{why}</td><td>{buttons}</td></tr>",
            st = esc(status),
            kind = show(&item["type"]),
            prio = show(&item["priority"]),
            fails = show(&item["failure_count"]),
            sched = show(&item["scheduled_at"]["utc"]),
            study = if study.is_empty() {
                String::new()
            } else {
                format!(
                    "<a href=\"/studies/{}\"><code>{}</code></a>",
                    esc(&url(study)),
                    esc(study)
                )
            },
            why = show(&item["failure_description"]),
        ));
    }
    out.push_str("</tbody></table></div>");
    out
}

/// `GET /work?status=failed&study=UID`.
pub(super) async fn queue(
    State(s): State<Shared>,
    Extension(identity): Extension<Identity>,
    Query(q): Query<Filter>,
) -> Response {
    // By default everything not completed (completed items pile up until
    // they are purged, and the listing is oldest first).
    let statuses = match q.status.as_deref().filter(|s| !s.is_empty()) {
        Some(status) => vec![status.to_string()],
        None => ["idle", "pending", "in_progress", "failed"]
            .map(String::from)
            .to_vec(),
    };
    let listing = WorkListing {
        statuses,
        kinds: Vec::new(),
        study_uid: q.study.clone(),
        limit: crate::services::admin::MAX_LIST,
    };
    let items = match run(&s, move |a| a.work_items(&listing)).await {
        Ok(items) => items,
        Err(e) => return failed(Some(&identity), e),
    };
    // Newest first, at most SHOWN.
    let items: Vec<_> = items.into_iter().rev().take(SHOWN).collect();
    let back = {
        let mut q2 = Vec::new();
        if let Some(st) = q.status.as_deref().filter(|s| !s.is_empty()) {
            q2.push(format!("status={}", url(st)));
        }
        if let Some(study) = q.study.as_deref().filter(|s| !s.is_empty()) {
            q2.push(format!("study={}", url(study)));
        }
        format!("/work?{}", q2.join("&"))
    };
    let table = queue_table(&items, &identity, &back);
    if q.fragment.as_deref() == Some("1") {
        return (
            [
                (axum::http::header::CONTENT_TYPE, "text/html; charset=utf-8"),
                (axum::http::header::CACHE_CONTROL, "no-store"),
            ],
            table,
        )
            .into_response();
    }
    let mut body = String::from("<form class=\"search\" method=\"get\" action=\"/work\"><label>Status<select name=\"status\">");
    for st in STATUSES {
        body.push_str(&format!(
            "<option value=\"{v}\"{sel}>{label}</option>",
            v = esc(st),
            sel = if q.status.as_deref().unwrap_or("") == *st {
                " selected"
            } else {
                ""
            },
            label = if st.is_empty() { "not completed" } else { st },
        ));
    }
    body.push_str(&format!(
        "</select></label><label>Study UID<input name=\"study\" value=\"{}\"></label><button>Filter</button></form>",
        esc(q.study.as_deref().unwrap_or(""))
    ));
    body.push_str("<p class=\"note\">Newest first; refreshed every 3 seconds.</p>");
    body.push_str(&table);
    body.push_str(REFRESH);
    page("Work queue", Some(&identity), &body)
}

fn back_of(body: &[u8]) -> String {
    form_urlencoded::parse(body)
        .find(|(k, _)| k == "back")
        .map(|(_, v)| v.into_owned())
        .filter(|v| v.starts_with("/work"))
        .unwrap_or_else(|| "/work".to_string())
}

/// `POST /work/{id}/retry`.
pub(super) async fn retry(
    State(s): State<Shared>,
    Extension(identity): Extension<Identity>,
    Path(id): Path<i64>,
    body: axum::body::Bytes,
) -> Response {
    match change(
        &s,
        &identity,
        "admin.work.retry",
        None,
        None,
        json!({ "id": id, "from": "pages" }),
        move |a| a.retry_work_item(id),
    )
    .await
    {
        Ok(()) => Redirect::to(&back_of(&body)).into_response(),
        Err(e) => failed(Some(&identity), e),
    }
}

/// `POST /work/{id}/delete`.
pub(super) async fn delete(
    State(s): State<Shared>,
    Extension(identity): Extension<Identity>,
    Path(id): Path<i64>,
    body: axum::body::Bytes,
) -> Response {
    match change(
        &s,
        &identity,
        "admin.work.delete",
        None,
        None,
        json!({ "id": id, "from": "pages" }),
        move |a| a.delete_work_item(id),
    )
    .await
    {
        Ok(()) => Redirect::to(&back_of(&body)).into_response(),
        Err(e) => failed(Some(&identity), e),
    }
}
