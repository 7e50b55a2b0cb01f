//! `/api/studies`: search, details, and the study operations (delete,
//! edit, send, reprocess), each enqueued as a work item whose id is
//! answered (202).

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{body, change, run, Answer, ApiError};
use crate::services::admin::{StudyOperation, StudySearch};
use crate::web::auth::Identity;
use crate::web::Shared;

/// The query parameters that are not attribute keys.
const PAGING: &[&str] = &["limit", "offset", "partition"];

/// `GET /api/studies?PatientName=DOE*&StudyDate=20200101-&limit=50&offset=0`:
/// any patient or study attribute keyword with a C-FIND value.
pub(super) async fn search(
    State(s): State<Shared>,
    Query(params): Query<Vec<(String, String)>>,
) -> Answer {
    let found = run(&s, move |a| {
        let value = |key: &str| {
            params
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
        };
        let number = |key: &str| -> Result<u64, crate::services::admin::AdminError> {
            value(key).map_or(Ok(0), |v| {
                v.parse().map_err(|_| {
                    crate::services::admin::AdminError::Invalid(format!("{key}: a whole number"))
                })
            })
        };
        let search = StudySearch {
            keys: params
                .iter()
                .filter(|(k, _)| !PAGING.contains(&k.as_str()))
                .cloned()
                .collect(),
            limit: number("limit")?,
            offset: number("offset")?,
        };
        a.search_studies(value("partition").as_deref(), &search)
    })
    .await?;
    Ok(Json(json!(found)))
}

#[derive(Debug, Deserialize)]
pub(super) struct InPartition {
    partition: Option<String>,
}

/// `GET /api/studies/{study}`: attributes, series, instances, location,
/// edits, audit log and work items.
pub(super) async fn one(
    State(s): State<Shared>,
    Path(study): Path<String>,
    Query(q): Query<InPartition>,
) -> Answer {
    let found = run(&s, move |a| a.study(q.partition.as_deref(), &study)).await?;
    Ok(Json(found))
}

async fn operate(
    s: Shared,
    identity: Identity,
    study: String,
    partition: Option<String>,
    operation: StudyOperation,
    details: Value,
) -> Result<Response, ApiError> {
    let actor = identity.actor();
    let action = operation.action();
    let (uid, p) = (study.clone(), partition.clone());
    let id = change(
        &s,
        &identity,
        action,
        partition,
        Some(study),
        details,
        move |a| a.study_operation(p.as_deref(), &uid, &operation, &actor),
    )
    .await?;
    Ok((StatusCode::ACCEPTED, Json(json!({ "work_item": id }))).into_response())
}

fn text(value: &Value, key: &str) -> String {
    value[key].as_str().unwrap_or_default().to_string()
}

fn texts(value: &Value, key: &str) -> Result<Vec<String>, ApiError> {
    match &value[key] {
        Value::Null => Ok(Vec::new()),
        Value::Array(items) => items
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| ApiError::bad_request(format!("{key}: a list of strings")))
            })
            .collect(),
        _ => Err(ApiError::bad_request(format!("{key}: a list of strings"))),
    }
}

/// `DELETE /api/studies/{study}` with `{"reason": "..."}`.
pub(super) async fn delete(
    State(s): State<Shared>,
    Extension(identity): Extension<Identity>,
    Path(study): Path<String>,
    Query(q): Query<InPartition>,
    bytes: Bytes,
) -> Result<Response, ApiError> {
    let value = body(&bytes)?;
    let reason = text(&value, "reason");
    let details = json!({ "reason": reason });
    operate(
        s,
        identity,
        study,
        q.partition,
        StudyOperation::Delete { reason },
        details,
    )
    .await
}

/// `POST /api/studies/{study}/edit` with `{"values": {"PatientName": "DOE^J"}, "reason": "..."}`.
pub(super) async fn edit(
    State(s): State<Shared>,
    Extension(identity): Extension<Identity>,
    Path(study): Path<String>,
    Query(q): Query<InPartition>,
    bytes: Bytes,
) -> Result<Response, ApiError> {
    let value = body(&bytes)?;
    let values: Vec<String> = match &value["values"] {
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| match v {
                Value::String(v) => Ok(format!("{k}={v}")),
                _ => Err(ApiError::bad_request("values: keyword to string")),
            })
            .collect::<Result<_, _>>()?,
        _ => {
            return Err(ApiError::bad_request(
                "values: an object of keyword to value",
            ))
        }
    };
    let reason = text(&value, "reason");
    let details = json!({ "values": value["values"], "reason": reason });
    operate(
        s,
        identity,
        study,
        q.partition,
        StudyOperation::Edit { values, reason },
        details,
    )
    .await
}

/// `POST /api/studies/{study}/send` with `{"destination": "AE", "instances": [...]}`.
pub(super) async fn send(
    State(s): State<Shared>,
    Extension(identity): Extension<Identity>,
    Path(study): Path<String>,
    Query(q): Query<InPartition>,
    bytes: Bytes,
) -> Result<Response, ApiError> {
    let value = body(&bytes)?;
    let destination = text(&value, "destination");
    let instances = texts(&value, "instances")?;
    let details = json!({ "destination": destination, "instances": instances.len() });
    operate(
        s,
        identity,
        study,
        q.partition,
        StudyOperation::Send {
            destination,
            instances,
        },
        details,
    )
    .await
}

/// `POST /api/studies/{study}/reprocess`.
pub(super) async fn reprocess(
    State(s): State<Shared>,
    Extension(identity): Extension<Identity>,
    Path(study): Path<String>,
    Query(q): Query<InPartition>,
) -> Result<Response, ApiError> {
    operate(
        s,
        identity,
        study,
        q.partition,
        StudyOperation::Reprocess,
        json!({}),
    )
    .await
}
