//! Study operations: delete, edit, reprocess and send a study, check a
//! study's integrity (index against files), write and read its series
//! metadata (`metadata.rs`), and rebuild a filesystem's rows from its files
//! (`reinventory.rs`).
//!
//! These are plain, blocking service functions over the index
//! ([`crate::db::Database`], through its [`StudyStore`] part) and the
//! storage backend. They are written to become the bodies of the work
//! queue's processors (DeleteStudy, EditStudy, ReprocessStudy, MoveStudy /
//! AutoRoute, StudyProcess): each may be interrupted at any point (crash,
//! kill -9, lost lease) and called again with the same arguments, and then
//! finishes the job without duplicating or losing instances, with its index
//! effects applied exactly once.
//!
//! ## Crash-safety order
//!
//! - **Delete**: (1) one transaction removes the rows, writes the audit
//!   record and leaves a tombstone (the study storage row in state
//!   `deleting`, which still says where the files are); (2) the files go
//!   (the instances and duplicates the rows named, then any file of the
//!   study folder older than the tombstone that no row names); (3) the
//!   tombstone goes. Rows first: a crash never leaves a row pointing at a
//!   missing file. A crash after (1) leaves files without rows; the retry
//!   finds the tombstone and does (2) and (3). The series metadata files
//!   (`.metadata/`) go with the files in (2).
//! - **Edit**: (1) the target values are recorded (a pending edit, with
//!   the old values, who and why); (2) per instance, a new file is written
//!   beside the old (only the edited attributes differ, Pixel Data copied
//!   byte for byte), fsync'd, parsed back, and renamed over the old one;
//!   files that already hold the targets are recognised by their content
//!   and left alone; (3) the directories are synced; (4) one transaction
//!   updates the patient/study rows, the instances' sizes and digests,
//!   completes the edit and writes the audit record. A retry resumes the
//!   pending edit. Between (2) and (4) index and files disagree only on the
//!   edited attributes (and sizes/digests) of files already swapped.
//!   The series metadata is deleted before (2) and written again after (4),
//!   in the same operation: an interruption leaves the study without
//!   metadata, never with the old values; a retry that finds the edit
//!   complete writes it if it is missing.
//! - **Reprocess**: the files are read (nothing is written), then one
//!   transaction replaces the study's rows by the rebuilt set, then the
//!   series metadata is rewritten for the rebuilt rows (a retry rebuilds
//!   the same rows and rewrites it).
//! - **Series metadata** (written by StudyProcess, edit and reprocess):
//!   derived data in the study folder, rebuilt from the files whenever it
//!   is written; every operation that walks a study folder (reprocess,
//!   integrity check, delete's sweep) knows it is not an instance.
//! - **Send**: read-only; the outcome lists the UIDs that failed, which is
//!   what a retry sends again.

mod archive;
mod check;
mod compress;
mod delete;
mod edit;
mod files;
mod metadata;
mod migrate;
mod purge;
mod reconcile;
mod reinventory;
mod reprocess;
mod restore;
mod send;

pub use archive::{ArchiveReport, Hsm, ARCHIVE_FAULT_PAUSE_ENV};
pub use check::{DigestCheck, Finding, IntegrityReport};
pub use compress::{CompressionReport, COMPRESS_FAULT_PAUSE_ENV};
pub use delete::{DeleteOutcome, DeleteReport};
pub use edit::{EditError, EditOutcome, EditValue, EditValueError};
pub use purge::PurgeReport;
pub use reconcile::{Decision, Reconcile, ReconcileCase};
pub use reinventory::{ReinventoriedStudy, ReinventoryOutcome, ReinventoryReport};
pub use reprocess::ReprocessReport;
pub use restore::{RestoreReport, Restorer};
pub use send::SendReport;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Read;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::Arc;

use crate::audit::{
    Action as AuditAction, AuditEvent, Auditor, EventKind, Outcome as AuditOutcome, Participant,
    ParticipantObject, Role,
};
use crate::db::studies::{
    index_text, json_strings, AttributeChange, AuditEntry, EditRecord, EditStatus,
    EditableAttribute, FileFacts, JsonObject, StudyRecord, StudyStore,
};
use crate::db::{self, Database};
use crate::dicom::scu::{ClientTls, Destination, Outgoing, ScuOptions, Tally};
use crate::model::{
    AeTitle, DeviceSpec, Filesystem, FilesystemId, PartitionId, PatientAttrs, StoredInstance,
    StudyLocation, Uid,
};
use crate::services::devices::SendLimits;
use crate::services::partition::Partition;
use crate::storage::{self, InstanceKey, PendingSync, SeriesKey, StorageBackend};

use crate::dicom::part10::splice;
use crate::storage::{StoredObject, StudyObject};
pub use metadata::{MetadataReport, BULK_DATA_THRESHOLD};
pub use migrate::{MigrationReport, FAULT_PAUSE_ENV};
use splice::Target;

/// Why a study operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StudyError {
    /// The partition has no such study.
    #[error("no study {study_uid} in partition {partition}")]
    UnknownStudy {
        /// The partition's AE title.
        partition: String,
        /// The study.
        study_uid: Uid,
    },
    /// The study has no online copy (nearline).
    #[error("study {0} has no online copy")]
    Nearline(Uid),
    /// The study is being deleted.
    #[error("study {0} is being deleted")]
    BeingDeleted(Uid),
    /// The target filesystem's root lacks the identity marker the index
    /// recorded (an unmounted share): nothing is written there.
    #[error("filesystem {path} lacks its identity marker (not mounted?)")]
    FilesystemRefused {
        /// The root.
        path: PathBuf,
    },
    /// Instances kept arriving while the study was migrated or
    /// reprocessed: try again.
    #[error("study {0} kept changing (instances arriving) while it was migrated or reprocessed")]
    Busy(Uid),
    /// A migrated copy differs from the index's digest after it was written.
    #[error("the copy of instance {0} differs from its indexed digest")]
    CopyMismatch(Uid),
    /// Another edit of the study is pending (it must be finished first:
    /// run it again with the same values).
    #[error(
        "edit {} of study {} by {} is pending ({}); run it again with the same values to finish it",
        .0.id, .0.study_uid, .0.actor, describe_changes(&.0.changes)
    )]
    EditPending(Box<EditRecord>),
    /// The requested edit is not valid.
    #[error("invalid edit")]
    InvalidEdit(#[source] EditError),
    /// A stored file cannot be edited or read.
    #[error("instance {sop_instance_uid}")]
    File {
        /// The instance.
        sop_instance_uid: Uid,
        /// What is wrong.
        #[source]
        source: Box<splice::SpliceError>,
    },
    /// A held instance could not be stored (reconcile accept or merge).
    #[error("instance {sop_instance_uid} could not be stored")]
    Store {
        /// The instance.
        sop_instance_uid: Uid,
        /// Why ingest refused it.
        #[source]
        source: Box<crate::services::IngestError>,
    },
    /// A held instance's identity still conflicts with its study (the
    /// study changed meanwhile): it stays held.
    #[error("instance {sop_instance_uid} still conflicts with its study (changed meanwhile?)")]
    StillConflicts {
        /// The instance.
        sop_instance_uid: Uid,
    },
    /// The partition does not know the destination AE title.
    #[error("partition {partition} has no device {ae_title}")]
    UnknownDevice {
        /// The partition's AE title.
        partition: String,
        /// The destination asked for.
        ae_title: String,
    },
    /// The device already has as many associations from the archive (every
    /// node of a cluster together) as its `max_outgoing_associations`
    /// allows: try again later.
    #[error("device {ae_title} already has {limit} association(s) from the archive (its limit)")]
    DeviceBusy {
        /// The device.
        ae_title: String,
        /// Its limit.
        limit: u32,
    },
    /// The reconcile queue has no such entry (decided already?).
    #[error("no reconcile entry {0}")]
    UnknownReconcileEntry(i64),
    /// The study lives on a filesystem the index does not list.
    #[error("filesystem {0:?} is unknown to the index")]
    UnknownFilesystem(FilesystemId),
    /// No archive root is configured (`[archive] path`).
    #[error("no archive is configured ([archive] path)")]
    NoArchive,
    /// The study has no pack (archive it first).
    #[error("study {0} is not archived")]
    NotArchived(Uid),
    /// The study's pack does not hold its current content (instances
    /// arrived after it was packed): archive it again first.
    #[error("study {0} changed since it was archived")]
    StaleArchive(Uid),
    /// As many restores as allowed run already: try again shortly.
    #[error("the restore of study {0} waits for a restore slot")]
    RestoreBusy(Uid),
    /// A restore a caller waited for failed or took too long.
    #[error("study {study_uid} could not be restored: {reason}")]
    RestoreFailed {
        /// The study.
        study_uid: Uid,
        /// Why.
        reason: String,
    },
    /// No writable filesystem can take a restored study.
    #[error("no writable filesystem has room for the study")]
    NoRoom,
    /// An archive pack could not be written or read.
    #[error("archive failure")]
    Archive(#[from] crate::archive::ArchiveError),
    /// The index failed.
    #[error("index failure")]
    Index(#[from] db::Error),
    /// The storage failed.
    #[error("storage failure")]
    Storage(#[from] storage::Error),
    /// A study folder could not be read or changed.
    #[error("cannot {operation} {path}")]
    Io {
        /// What was being done.
        operation: &'static str,
        /// The file or folder.
        path: PathBuf,
        /// The underlying failure.
        #[source]
        source: std::io::Error,
    },
}

fn describe_changes(changes: &[AttributeChange]) -> String {
    changes
        .iter()
        .map(|c| format!("{}={}", c.attribute, c.new_value))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The study operations over an index and a storage backend. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Studies {
    db: Arc<dyn Database>,
    storage: Arc<dyn StorageBackend>,
    sends: SendLimits,
    auditor: Auditor,
    /// Devices reached over TLS: (partition, AE title) → TLS.
    device_tls: Arc<HashMap<(PartitionId, String), ClientTls>>,
    hsm: archive::Hsm,
}

impl Studies {
    /// The operations over `db` and `storage`.
    pub fn new(db: Arc<dyn Database>, storage: Arc<dyn StorageBackend>) -> Studies {
        Studies {
            sends: SendLimits::in_index(db.clone()),
            db,
            storage,
            auditor: Auditor::disabled(),
            device_tls: Arc::default(),
            hsm: archive::Hsm::default(),
        }
    }

    /// The same operations, sends to the devices in `device_tls` over TLS.
    pub fn with_device_tls(
        mut self,
        device_tls: Arc<HashMap<(PartitionId, String), ClientTls>>,
    ) -> Studies {
        self.device_tls = device_tls;
        self
    }

    /// The TLS configuration for sends to `ae_title` of `partition`, when
    /// the device is reached over TLS.
    pub(crate) fn device_tls(&self, partition: PartitionId, ae_title: &str) -> Option<ClientTls> {
        self.device_tls
            .get(&(partition, ae_title.trim().to_string()))
            .cloned()
    }

    /// The same operations, each recorded in the audit trail: delete as
    /// DICOM Study Deleted, edit and reprocess as DICOM Instances Accessed
    /// (and an edit of patient attributes as Patient Record too).
    pub fn with_auditor(mut self, auditor: Auditor) -> Studies {
        self.auditor = auditor;
        self
    }

    /// Records a study operation's audit event: `actor` asked for it, the
    /// study (and its patient, when known) is what it was about.
    fn audit_study(
        &self,
        kind: EventKind,
        action: AuditAction,
        partition: &Partition,
        study_uid: &Uid,
        actor: &str,
        patient: Option<&PatientAttrs>,
    ) {
        if !self.auditor.is_enabled() {
            return;
        }
        let mut event = AuditEvent::new(kind, action, AuditOutcome::Success)
            .participant(Participant::user(actor, true))
            .participant(Participant::ae(
                partition.ae_title.as_str(),
                false,
                None,
                Role::Application,
            ))
            .in_partition(partition.id)
            .object(ParticipantObject::Study {
                uid: study_uid.as_str().to_string(),
                sop_classes: Default::default(),
            });
        if let Some(patient) = patient.filter(|p| !p.patient_id.is_empty()) {
            event = event.object(ParticipantObject::Patient {
                id: patient.patient_id.clone(),
                name: patient.patient_name.clone(),
            });
        }
        self.auditor.record(event);
    }

    /// The study's patient, read for the audit trail only when it records.
    fn patient_for_audit(&self, partition: &Partition, study_uid: &Uid) -> Option<PatientAttrs> {
        if !self.auditor.is_enabled() {
            return None;
        }
        self.store()
            .study(partition.id, study_uid)
            .ok()
            .flatten()
            .map(|r| r.patient)
    }

    fn store(&self) -> &dyn StudyStore {
        &*self.db
    }

    fn filesystem(&self, id: FilesystemId) -> Result<Filesystem, StudyError> {
        self.db
            .filesystems()?
            .into_iter()
            .find(|fs| fs.id == id)
            .ok_or(StudyError::UnknownFilesystem(id))
    }

    fn unknown(partition: &Partition, study_uid: &Uid) -> StudyError {
        StudyError::UnknownStudy {
            partition: partition.ae_title.to_string(),
            study_uid: study_uid.clone(),
        }
    }

    /// The study's record, which must exist and be online.
    fn online_study(
        &self,
        partition: &Partition,
        study_uid: &Uid,
    ) -> Result<StudyRecord, StudyError> {
        let record = self
            .store()
            .study(partition.id, study_uid)?
            .ok_or_else(|| Self::unknown(partition, study_uid))?;
        if record.location.is_none() {
            return Err(StudyError::Nearline(study_uid.clone()));
        }
        Ok(record)
    }

    /// Where the files of a study, which must exist and be online, lie:
    /// its location and that filesystem.
    fn online_files(
        &self,
        partition: &Partition,
        study_uid: &Uid,
    ) -> Result<(StudyLocation, Filesystem), StudyError> {
        let record = self.online_study(partition, study_uid)?;
        let location = record.location.expect("online");
        let filesystem = self.filesystem(location.filesystem)?;
        Ok((location, filesystem))
    }
}

fn key_of(stored: &StoredInstance) -> InstanceKey {
    InstanceKey {
        location: stored.location.clone(),
        series_uid: stored.series_uid.clone(),
        sop_instance_uid: stored.sop_instance_uid.clone(),
    }
}
