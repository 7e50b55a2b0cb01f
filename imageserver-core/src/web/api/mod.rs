//! The admin API: JSON under `/api`, described by `web/openapi.json`
//! (served at `/api/openapi.json`), over [`crate::services::admin`].
//!
//! One file per resource: `system` (session, partitions, filesystems,
//! rules, audit log, nodes), `devices`, `work` (the work queue),
//! `studies`. Reads answer any user; changes need the admin role and the
//! session's CSRF token (the guard, `web::auth`), and each is recorded in
//! the audit log (`admin.*`, actor `http:<user>`) before it is answered.

mod devices;
mod studies;
mod system;
mod work;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use super::auth::Identity;
use super::{blocking, Failure, Shared};
use crate::audit::{
    event::types, Action, AuditEvent, EventKind, Outcome, Participant, ParticipantObject,
};
use crate::services::admin::{Admin, AdminError};

/// The API's description (OpenAPI 3).
pub(crate) const OPENAPI: &str = include_str!("../openapi.json");

/// An API failure: status and `{"error": reason}`.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    reason: String,
}

impl From<AdminError> for ApiError {
    fn from(error: AdminError) -> ApiError {
        let status = match &error {
            AdminError::NotFound(_) => StatusCode::NOT_FOUND,
            AdminError::Invalid(_) => StatusCode::BAD_REQUEST,
            AdminError::Conflict(_) => StatusCode::CONFLICT,
            _ => {
                tracing::warn!(error = %crate::model::error_chain(&error), "admin API request failed");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        ApiError {
            status,
            reason: error.to_string(),
        }
    }
}

impl From<Failure> for ApiError {
    fn from(failure: Failure) -> ApiError {
        ApiError {
            status: failure.status,
            reason: failure.reason,
        }
    }
}

impl ApiError {
    /// Its status and reason.
    pub(crate) fn parts(self) -> (StatusCode, String) {
        (self.status, self.reason)
    }

    fn bad_request(reason: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            reason: reason.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.reason }))).into_response()
    }
}

type Answer = Result<Json<Value>, ApiError>;

/// Runs an admin use case off the executor.
pub(crate) async fn run<T: Send + 'static>(
    services: &Shared,
    work: impl FnOnce(&Admin) -> Result<T, AdminError> + Send + 'static,
) -> Result<T, ApiError> {
    let admin = services.admin.clone();
    let result = blocking(move || Ok(work(&admin))).await?;
    Ok(result?)
}

/// Runs a change, then records it in the audit log (who, what, on what);
/// answers the change's result.
pub(crate) async fn change<T: Send + 'static>(
    services: &Shared,
    identity: &Identity,
    action: &'static str,
    partition: Option<String>,
    study_uid: Option<String>,
    details: Value,
    work: impl FnOnce(&Admin) -> Result<T, AdminError> + Send + 'static,
) -> Result<T, ApiError> {
    let actor = identity.actor();
    let auditor = services.auditor.clone();
    run(services, move |admin| {
        let result = work(admin)?;
        admin.record(
            &actor,
            action,
            partition.as_deref(),
            study_uid.as_deref(),
            &details,
        )?;
        if let Some(event) = atna_event(action, &actor, study_uid.as_deref(), &details) {
            auditor.record(event);
        }
        Ok(result)
    })
    .await
}

/// The ATNA message (PS3.15 A.5.3) an admin change is also sent as: a
/// device changed is a Security Alert of type Network Configuration, a
/// work item changed one of type Software Configuration, a study
/// operation requested is DICOM Instances Accessed (the work item that
/// carries it out sends its own event too: Study Deleted for a delete).
/// None for what changes nothing (a C-ECHO).
pub(crate) fn atna_event(
    action: &str,
    actor: &str,
    study_uid: Option<&str>,
    details: &Value,
) -> Option<AuditEvent> {
    let (kind, verb, type_code) = match action {
        "admin.device.put" => (
            EventKind::SecurityAlert,
            Action::Update,
            Some(types::NETWORK_CONFIGURATION),
        ),
        "admin.device.delete" => (
            EventKind::SecurityAlert,
            Action::Delete,
            Some(types::NETWORK_CONFIGURATION),
        ),
        "admin.work.delete" => (
            EventKind::SecurityAlert,
            Action::Delete,
            Some(types::SOFTWARE_CONFIGURATION),
        ),
        "admin.work.retry" | "admin.work.reprioritise" | "admin.work.postpone" => (
            EventKind::SecurityAlert,
            Action::Update,
            Some(types::SOFTWARE_CONFIGURATION),
        ),
        "admin.study.delete" => (EventKind::InstancesAccessed, Action::Delete, None),
        "admin.study.edit" => (EventKind::InstancesAccessed, Action::Update, None),
        "admin.study.reprocess" | "admin.study.send" => {
            (EventKind::InstancesAccessed, Action::Execute, None)
        }
        _ => return None,
    };
    let mut event = AuditEvent::new(kind, verb, Outcome::Success)
        .participant(Participant::user(actor, true))
        .described(format!("{action} {details}"));
    if let Some(code) = type_code {
        event = event.type_code(code);
    }
    if let Some(uid) = study_uid {
        event = event.object(ParticipantObject::Study {
            uid: uid.to_string(),
            sop_classes: Default::default(),
        });
    }
    Some(event)
}

/// A JSON body, or a 400 saying why not.
fn body(bytes: &[u8]) -> Result<Value, ApiError> {
    if bytes.is_empty() {
        return Ok(json!({}));
    }
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request(format!("the body is not JSON: {e}")))
}

/// The routes under `/api`.
pub(crate) fn router() -> Router<Shared> {
    Router::new()
        .route("/openapi.json", get(system::openapi))
        .route("/login", post(super::auth::login))
        .route("/session", get(system::session))
        .route("/partitions", get(system::partitions))
        .route("/filesystems", get(system::filesystems))
        .route("/rules", get(system::rules))
        .route("/rules/dry-run", get(system::rules_dry_run))
        .route("/audit", get(system::audit))
        .route("/nodes", get(system::nodes))
        .route("/devices", get(devices::list))
        .route(
            "/devices/{ae}",
            get(devices::one).put(devices::put).delete(devices::delete),
        )
        .route("/devices/{ae}/echo", post(devices::echo))
        .route("/work-items", get(work::list))
        .route("/work-items/{id}", get(work::one).delete(work::delete))
        .route("/work-items/{id}/retry", post(work::retry))
        .route("/work-items/{id}/priority", post(work::reprioritise))
        .route("/work-items/{id}/postpone", post(work::postpone))
        .route("/studies", get(studies::search))
        .route(
            "/studies/{study}",
            get(studies::one).delete(studies::delete),
        )
        .route("/studies/{study}/edit", post(studies::edit))
        .route("/studies/{study}/send", post(studies::send))
        .route("/studies/{study}/reprocess", post(studies::reprocess))
        .fallback(|| async {
            ApiError {
                status: StatusCode::NOT_FOUND,
                reason: "no such API resource (see /api/openapi.json)".into(),
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_changes_become_atna_events() {
        let event = atna_event("admin.device.put", "http:ann", None, &json!({"ae": "X"}))
            .expect("an event");
        assert_eq!(
            (
                event.kind,
                event.action,
                event.type_code.as_ref().map(|c| c.code)
            ),
            (
                EventKind::SecurityAlert,
                Action::Update,
                Some(types::NETWORK_CONFIGURATION.code)
            )
        );
        assert_eq!(event.actor(), "http:ann");
        let event =
            atna_event("admin.study.delete", "http:ann", Some("1.2.3"), &json!({})).expect("one");
        assert_eq!(
            (event.kind, event.action),
            (EventKind::InstancesAccessed, Action::Delete)
        );
        assert_eq!(event.study_uid(), Some("1.2.3"));
        assert!(atna_event("admin.device.echo", "http:ann", None, &json!({})).is_none());
    }
}
