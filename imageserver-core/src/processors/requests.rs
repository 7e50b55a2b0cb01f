//! Study operations asked of the work queue: what an operator command, an
//! admin API or an embedding product enqueues so that the operation runs
//! on an engine, under the study's lock, with retries.
//!
//! A [`StudyRequest`] becomes the [`NewWorkItem`] of the built-in kind that
//! runs it, with the payload that kind reads; callers never write payload
//! JSON themselves.

use super::{AuditPayload, MigratePayload, SendPayload};
use crate::model::work::{NewWorkItem, WorkKind, WorkUid};
use crate::model::{PartitionId, Uid};

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
        to: crate::model::FilesystemId,
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
}
