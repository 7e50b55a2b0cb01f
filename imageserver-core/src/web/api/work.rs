//! `/api/work-items`: the work queue (list with filters, one item, retry,
//! delete, reprioritise, postpone).

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::json;

use super::{body, change, run, Answer, ApiError};
use crate::services::admin::WorkListing;
use crate::web::auth::Identity;
use crate::web::Shared;

#[derive(Debug, Deserialize)]
pub(super) struct Filter {
    status: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    study: Option<String>,
    limit: Option<usize>,
}

fn split(text: Option<String>) -> Vec<String> {
    text.map(|t| t.split(',').map(|s| s.trim().to_string()).collect())
        .unwrap_or_default()
}

/// `GET /api/work-items?status=failed,pending&type=move_study&study=UID&limit=N`.
pub(super) async fn list(State(s): State<Shared>, Query(q): Query<Filter>) -> Answer {
    let listing = WorkListing {
        statuses: split(q.status),
        kinds: split(q.kind),
        study_uid: q.study,
        limit: q.limit.unwrap_or(0),
    };
    let list = run(&s, move |a| a.work_items(&listing)).await?;
    Ok(Json(json!(list)))
}

/// `GET /api/work-items/{id}`.
pub(super) async fn one(State(s): State<Shared>, Path(id): Path<i64>) -> Answer {
    let item = run(&s, move |a| a.work_item(id)).await?;
    Ok(Json(item))
}

/// `POST /api/work-items/{id}/retry`: a failed item is pending again.
pub(super) async fn retry(
    State(s): State<Shared>,
    Extension(identity): Extension<Identity>,
    Path(id): Path<i64>,
) -> Answer {
    change(
        &s,
        &identity,
        "admin.work.retry",
        None,
        None,
        json!({ "id": id }),
        move |a| a.retry_work_item(id),
    )
    .await?;
    let item = run(&s, move |a| a.work_item(id)).await?;
    Ok(Json(item))
}

/// `DELETE /api/work-items/{id}`.
pub(super) async fn delete(
    State(s): State<Shared>,
    Extension(identity): Extension<Identity>,
    Path(id): Path<i64>,
) -> Answer {
    change(
        &s,
        &identity,
        "admin.work.delete",
        None,
        None,
        json!({ "id": id }),
        move |a| a.delete_work_item(id),
    )
    .await?;
    Ok(Json(json!({ "deleted": id })))
}

/// `POST /api/work-items/{id}/priority` with `{"priority": "high"}`.
pub(super) async fn reprioritise(
    State(s): State<Shared>,
    Extension(identity): Extension<Identity>,
    Path(id): Path<i64>,
    bytes: Bytes,
) -> Answer {
    let value = body(&bytes)?;
    let priority = value["priority"]
        .as_str()
        .ok_or_else(|| ApiError::bad_request("priority: low, medium, high or stat"))?
        .to_string();
    change(
        &s,
        &identity,
        "admin.work.reprioritise",
        None,
        None,
        json!({ "id": id, "priority": priority }),
        move |a| a.reprioritise_work_item(id, &priority),
    )
    .await?;
    let item = run(&s, move |a| a.work_item(id)).await?;
    Ok(Json(item))
}

/// `POST /api/work-items/{id}/postpone` with `{"seconds": 3600}`.
pub(super) async fn postpone(
    State(s): State<Shared>,
    Extension(identity): Extension<Identity>,
    Path(id): Path<i64>,
    bytes: Bytes,
) -> Answer {
    let value = body(&bytes)?;
    let seconds = value["seconds"]
        .as_u64()
        .ok_or_else(|| ApiError::bad_request("seconds: a whole number"))?;
    change(
        &s,
        &identity,
        "admin.work.postpone",
        None,
        None,
        json!({ "id": id, "seconds": seconds }),
        move |a| a.postpone_work_item(id, seconds),
    )
    .await?;
    let item = run(&s, move |a| a.work_item(id)).await?;
    Ok(Json(item))
}
