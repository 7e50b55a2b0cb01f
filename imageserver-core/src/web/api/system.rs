//! `/api/session`, `/api/partitions`, `/api/filesystems`, `/api/rules`,
//! `/api/audit`, `/api/nodes`, and the API's description.

use axum::extract::{Query, State};
use axum::http::header;
use axum::response::IntoResponse;
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::json;

use super::{run, Answer, OPENAPI};
use crate::web::auth::Identity;
use crate::web::Shared;

/// `GET /api/openapi.json`.
pub(super) async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI)
}

/// `GET /api/session`: who you are and the CSRF token your changes carry.
pub(super) async fn session(Extension(identity): Extension<Identity>) -> Answer {
    Ok(Json(json!({
        "name": identity.name,
        "role": identity.role.as_str(),
        "csrf": identity.csrf,
    })))
}

/// `GET /api/partitions`.
pub(super) async fn partitions(State(s): State<Shared>) -> Answer {
    let list = run(&s, |a| Ok(a.partitions())).await?;
    Ok(Json(json!(list)))
}

/// `GET /api/filesystems`.
pub(super) async fn filesystems(State(s): State<Shared>) -> Answer {
    let list = run(&s, |a| a.filesystems()).await?;
    Ok(Json(json!(list)))
}

/// `GET /api/rules`.
pub(super) async fn rules(State(s): State<Shared>) -> Answer {
    let list = run(&s, |a| Ok(a.rules())).await?;
    Ok(Json(json!(list)))
}

#[derive(Debug, Deserialize)]
pub(super) struct DryRun {
    study: String,
    partition: Option<String>,
}

/// `GET /api/rules/dry-run?study=UID`.
pub(super) async fn rules_dry_run(State(s): State<Shared>, Query(q): Query<DryRun>) -> Answer {
    let found = run(&s, move |a| {
        a.rules_dry_run(q.partition.as_deref(), &q.study)
    })
    .await?;
    Ok(Json(found))
}

#[derive(Debug, Deserialize)]
pub(super) struct AuditQuery {
    since_ms: Option<i64>,
    action: Option<String>,
    study: Option<String>,
    limit: Option<u64>,
}

/// `GET /api/audit`.
pub(super) async fn audit(State(s): State<Shared>, Query(q): Query<AuditQuery>) -> Answer {
    let list = run(&s, move |a| {
        a.audit(
            q.since_ms,
            q.action.as_deref(),
            q.study.as_deref(),
            q.limit.unwrap_or(0),
        )
    })
    .await?;
    Ok(Json(json!(list)))
}

/// `GET /api/nodes`.
pub(super) async fn nodes(State(s): State<Shared>) -> Answer {
    let list = run(&s, |a| a.nodes()).await?;
    Ok(Json(json!(list)))
}
