//! `/api/devices`: a partition's known AEs (list, read, create or change,
//! delete) and a C-ECHO to one.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{body, change, run, Answer, ApiError};
use crate::services::admin::DeviceChange;
use crate::web::auth::Identity;
use crate::web::Shared;

#[derive(Debug, Deserialize)]
pub(super) struct InPartition {
    partition: Option<String>,
}

/// `GET /api/devices`.
pub(super) async fn list(State(s): State<Shared>, Query(q): Query<InPartition>) -> Answer {
    let list = run(&s, move |a| a.devices(q.partition.as_deref())).await?;
    Ok(Json(json!(list)))
}

/// `GET /api/devices/{ae}`.
pub(super) async fn one(
    State(s): State<Shared>,
    Path(ae): Path<String>,
    Query(q): Query<InPartition>,
) -> Answer {
    let found = run(&s, move |a| a.device(q.partition.as_deref(), &ae)).await?;
    Ok(Json(found))
}

fn flag(value: &Value, key: &str, default: bool) -> Result<bool, ApiError> {
    match &value[key] {
        Value::Null => Ok(default),
        Value::Bool(b) => Ok(*b),
        _ => Err(ApiError::bad_request(format!(
            "{key} must be true or false"
        ))),
    }
}

fn number(value: &Value, key: &str) -> Result<u64, ApiError> {
    match &value[key] {
        Value::Null => Ok(0),
        v => v
            .as_u64()
            .ok_or_else(|| ApiError::bad_request(format!("{key} must be a whole number"))),
    }
}

/// `PUT /api/devices/{ae}`: creates or changes the device (201 when new).
pub(super) async fn put(
    State(s): State<Shared>,
    Extension(identity): Extension<Identity>,
    Path(ae): Path<String>,
    Query(q): Query<InPartition>,
    bytes: Bytes,
) -> Result<Response, ApiError> {
    let value = body(&bytes)?;
    let port = number(&value, "port")?;
    let device = DeviceChange {
        host: value["host"].as_str().unwrap_or_default().to_string(),
        port: u16::try_from(port).map_err(|_| ApiError::bad_request("port must be 1-65535"))?,
        allow_store: flag(&value, "allow_store", true)?,
        allow_query: flag(&value, "allow_query", true)?,
        allow_retrieve: flag(&value, "allow_retrieve", true)?,
        allow_replace: flag(&value, "allow_replace", false)?,
        max_associations: u32::try_from(number(&value, "max_associations")?)
            .map_err(|_| ApiError::bad_request("max_associations is too large"))?,
        max_outgoing_associations: u32::try_from(number(&value, "max_outgoing_associations")?)
            .map_err(|_| ApiError::bad_request("max_outgoing_associations is too large"))?,
    };
    let partition = q.partition.clone();
    let name = ae.clone();
    let created = change(
        &s,
        &identity,
        "admin.device.put",
        q.partition.clone(),
        None,
        json!({ "ae_title": ae, "device": value }),
        move |a| a.put_device(partition.as_deref(), &name, &device),
    )
    .await?;
    let found = run(&s, move |a| a.device(q.partition.as_deref(), &ae)).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(found)).into_response())
}

/// `DELETE /api/devices/{ae}`.
pub(super) async fn delete(
    State(s): State<Shared>,
    Extension(identity): Extension<Identity>,
    Path(ae): Path<String>,
    Query(q): Query<InPartition>,
) -> Answer {
    let name = ae.clone();
    let partition = q.partition.clone();
    change(
        &s,
        &identity,
        "admin.device.delete",
        q.partition,
        None,
        json!({ "ae_title": ae }),
        move |a| a.delete_device(partition.as_deref(), &name),
    )
    .await?;
    Ok(Json(json!({ "deleted": ae })))
}

/// `POST /api/devices/{ae}/echo`: C-ECHO as the partition's AE title.
pub(super) async fn echo(
    State(s): State<Shared>,
    Extension(identity): Extension<Identity>,
    Path(ae): Path<String>,
    Query(q): Query<InPartition>,
) -> Answer {
    let name = ae.clone();
    let partition = q.partition.clone();
    let outcome = change(
        &s,
        &identity,
        "admin.device.echo",
        q.partition,
        None,
        json!({ "ae_title": ae }),
        move |a| a.echo(partition.as_deref(), &name),
    )
    .await?;
    Ok(Json(outcome))
}
