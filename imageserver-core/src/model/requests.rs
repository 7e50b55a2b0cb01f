//! Study operations asked of the work queue, and the payloads their work
//! items carry: the contract between who enqueues (operator commands, the
//! admin API, the scheduled services, an embedding product) and the
//! processors that run them ([`crate::processors`]). It sits in the model so
//! that the enqueuers need not reach up to the processors.
//!
//! A [`StudyRequest`] becomes the [`NewWorkItem`] of the built-in kind that
//! runs it, with the payload that kind reads; callers never write payload
//! JSON themselves.

use serde::{Deserialize, Serialize};

use super::work::{NewWorkItem, WorkKind, WorkUid};
use super::{FilesystemId, PartitionId, Uid};

/// The actor recorded in audit entries when a payload names none.
pub const DEFAULT_ACTOR: &str = "workqueue";

/// Payload of delete, edit and reprocess items: who asked and why.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct AuditPayload {
    /// Who asked (audit records).
    pub actor: Option<String>,
    /// Why.
    pub reason: Option<String>,
    /// Edit only: `Keyword=value` changes.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

impl AuditPayload {
    /// The actor, or [`DEFAULT_ACTOR`].
    pub fn actor(&self) -> &str {
        self.actor.as_deref().unwrap_or(DEFAULT_ACTOR)
    }

    /// The reason, or "".
    pub fn reason(&self) -> &str {
        self.reason.as_deref().unwrap_or("")
    }

    /// As JSON text.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("serialisable")
    }
}

/// The payload of a `migrate_study` item.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigratePayload {
    /// The target filesystem's key.
    pub to: Option<i64>,
    /// Without `to`: migrate the study if it is on this tier, to the
    /// next tier down (a `tier1_retention` rule); otherwise nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub off_tier: Option<u8>,
}

impl MigratePayload {
    /// The payload as JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| "{}".to_string())
    }
}

/// The payload of a `purge_study` item.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PurgePayload {
    /// An `online_retention` rule's item: purge only once the study's
    /// current pack is this many days old (archiving it first when it has
    /// none). None: purge now (an operator's or the watermark service's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_days: Option<u32>,
}

impl PurgePayload {
    /// The payload as JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| "{}".to_string())
    }
}

/// Payload of `move_study` and `auto_route` items.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct SendPayload {
    /// The device's AE title (a device of the item's partition).
    pub destination: String,
    /// The rule that asked for it (auto-route).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// Failures of the items this one continues (a partial failure hands
    /// what failed to a new item; the count carries over so the kind's
    /// failure limit still holds).
    #[serde(skip_serializing_if = "is_zero")]
    pub previous_failures: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl SendPayload {
    /// A send to `destination`.
    pub fn to(destination: &str) -> SendPayload {
        SendPayload {
            destination: destination.to_string(),
            ..SendPayload::default()
        }
    }

    /// As JSON text.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("serialisable")
    }
}

/// One study operation for the work queue.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StudyRequest {
    /// Delete the study (rows with an audit record, then files).
    Delete {
        /// Who asks (the audit record).
        actor: String,
        /// Why.
        reason: String,
    },
    /// Change patient/study attributes in the index and every file.
    Edit {
        /// Who asks.
        actor: String,
        /// Why.
        reason: String,
        /// `Keyword=value` changes, as
        /// [`crate::services::studies::EditValue::parse`] reads them.
        values: Vec<String>,
    },
    /// Rebuild the study's rows from its files.
    Reprocess {
        /// Who asks.
        actor: String,
    },
    /// Move the study's files to another filesystem (tier).
    Migrate {
        /// The target filesystem's key.
        to: FilesystemId,
    },
    /// Pack the study into the archive (HSM).
    Archive,
    /// Make the archived study nearline (its online files removed).
    Purge,
    /// Bring the nearline study back online from its pack.
    Restore,
    /// Re-encode the study's images losslessly (RLE Lossless).
    Compress,
    /// Send the study (or some of its instances) to a device with C-STORE.
    Send {
        /// The device's AE title.
        destination: String,
        /// The instances (none: the whole study).
        instances: Vec<WorkUid>,
    },
}

impl StudyRequest {
    /// The kind of work item that runs this request.
    pub fn kind(&self) -> WorkKind {
        match self {
            StudyRequest::Delete { .. } => WorkKind::DELETE_STUDY,
            StudyRequest::Edit { .. } => WorkKind::EDIT_STUDY,
            StudyRequest::Reprocess { .. } => WorkKind::REPROCESS_STUDY,
            StudyRequest::Send { .. } => WorkKind::MOVE_STUDY,
            StudyRequest::Migrate { .. } => WorkKind::MIGRATE_STUDY,
            StudyRequest::Archive => WorkKind::ARCHIVE_STUDY,
            StudyRequest::Purge => WorkKind::PURGE_STUDY,
            StudyRequest::Restore => WorkKind::RESTORE_STUDY,
            StudyRequest::Compress => WorkKind::COMPRESS_STUDY,
        }
    }

    /// The work item for `study` in `partition`.
    pub fn work_item(&self, partition: PartitionId, study: Uid) -> NewWorkItem {
        let item = NewWorkItem::new(self.kind(), partition).study(study);
        match self {
            StudyRequest::Delete { actor, reason } => item.payload(
                AuditPayload {
                    actor: Some(actor.clone()),
                    reason: Some(reason.clone()),
                    values: Vec::new(),
                }
                .to_json(),
            ),
            StudyRequest::Edit {
                actor,
                reason,
                values,
            } => item.payload(
                AuditPayload {
                    actor: Some(actor.clone()),
                    reason: Some(reason.clone()),
                    values: values.clone(),
                }
                .to_json(),
            ),
            StudyRequest::Reprocess { actor } => item.payload(
                AuditPayload {
                    actor: Some(actor.clone()),
                    ..AuditPayload::default()
                }
                .to_json(),
            ),
            StudyRequest::Send {
                destination,
                instances,
            } => item
                .payload(SendPayload::to(destination).to_json())
                .uids(instances.clone()),
            StudyRequest::Compress => item,
            StudyRequest::Migrate { to } => item.payload(
                MigratePayload {
                    to: Some(to.0),
                    off_tier: None,
                }
                .to_json(),
            ),
            StudyRequest::Archive | StudyRequest::Purge | StudyRequest::Restore => item,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uid(text: &str) -> Uid {
        Uid::parse(text).unwrap()
    }

    /// Each request is read back by the processor of its kind as it was
    /// asked: the payload round-trips through the payload types.
    #[test]
    fn requests_become_the_payloads_their_processors_read() {
        let study = uid("1.2.3");
        let edit = StudyRequest::Edit {
            actor: "alice".into(),
            reason: "typo".into(),
            values: vec!["PatientName=DOE^JANE".into()],
        }
        .work_item(PartitionId(1), study.clone());
        assert_eq!(edit.kind, WorkKind::EDIT_STUDY);
        assert_eq!(edit.study_uid.as_ref(), Some(&study));
        let payload: AuditPayload = serde_json::from_str(&edit.payload).unwrap();
        assert_eq!(payload.actor(), "alice");
        assert_eq!(payload.reason(), "typo");
        assert_eq!(payload.values, vec!["PatientName=DOE^JANE".to_string()]);

        let instance = WorkUid::new(uid("1.2.3.4"), uid("1.2.3.4.5"));
        let send = StudyRequest::Send {
            destination: "PEER".into(),
            instances: vec![instance.clone()],
        }
        .work_item(PartitionId(1), study);
        assert_eq!(send.kind, WorkKind::MOVE_STUDY);
        assert_eq!(send.uids, vec![instance]);
        let payload: SendPayload = serde_json::from_str(&send.payload).unwrap();
        assert_eq!(payload.destination, "PEER");
    }

    #[test]
    fn payloads_round_trip_and_default() {
        let p = AuditPayload {
            actor: Some("alice".into()),
            reason: Some("duplicate".into()),
            values: vec!["PatientName=DOE^JANE".into()],
        };
        let back: AuditPayload = serde_json::from_str(&p.to_json()).unwrap();
        assert_eq!(back, p);
        let empty: AuditPayload = serde_json::from_str("{}").unwrap();
        assert_eq!(empty.actor(), DEFAULT_ACTOR);
        let send: SendPayload = serde_json::from_str(r#"{"destination":"DEST"}"#).unwrap();
        assert_eq!(send.destination, "DEST");
    }
}
