//! Study operations: delete, edit, reprocess and send a study, check a
//! study's integrity (index against files), and write and read its series
//! metadata (`metadata.rs`).
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

mod files;
mod metadata;
mod rewrite;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::Arc;

use crate::db::studies::{
    index_text, json_strings, AttributeChange, AuditEntry, EditRecord, EditStatus,
    EditableAttribute, FileFacts, JsonObject, StudyRecord, StudyStore,
};
use crate::db::{self, Database};
use crate::dicom::scu::{self, Destination, Outgoing, ScuOptions, Tally};
use crate::model::{AeTitle, DeviceSpec, Filesystem, FilesystemId, StoredInstance, Uid};
use crate::services::devices::SendLimits;
use crate::services::Partition;
use crate::storage::{self, InstanceKey, PendingSync, SeriesKey, StorageBackend};

use crate::storage::{StoredObject, StudyObject};
pub use metadata::{MetadataReport, BULK_DATA_THRESHOLD};
use rewrite::Target;

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
    /// Another edit of the study is pending (it must be finished first:
    /// run it again with the same values).
    #[error(
        "edit {} of study {} by {} is pending ({}); run it again with the same values to finish it",
        .0.id, .0.study_uid, .0.actor, describe_changes(&.0.changes)
    )]
    EditPending(Box<EditRecord>),
    /// The requested edit is not valid.
    #[error("invalid edit: {0}")]
    InvalidEdit(String),
    /// A stored file cannot be edited or read.
    #[error("instance {sop_instance_uid}: {reason}")]
    File {
        /// The instance.
        sop_instance_uid: Uid,
        /// What is wrong.
        reason: String,
    },
    /// The partition does not know the destination AE title.
    #[error("partition {partition} has no device {ae_title}")]
    UnknownDevice {
        /// The partition's AE title.
        partition: String,
        /// The destination asked for.
        ae_title: String,
    },
    /// The device already has as many associations from this process as
    /// its `max_outgoing_associations` allows: try again later.
    #[error("device {ae_title} already has {limit} association(s) from this process (its limit)")]
    DeviceBusy {
        /// The device.
        ae_title: String,
        /// Its limit.
        limit: u32,
    },
    /// The study lives on a filesystem the index does not list.
    #[error("filesystem {0:?} is unknown to the index")]
    UnknownFilesystem(FilesystemId),
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

/// What [`Studies::delete`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeleteOutcome {
    /// The study's rows and files were deleted.
    Deleted(DeleteReport),
    /// The rows were already gone (an earlier run was interrupted); the
    /// remaining files were deleted.
    Finished(DeleteReport),
    /// Nothing of the study is left (never there, or deleted before).
    Absent,
}

/// The numbers of a deletion.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeleteReport {
    /// Instance rows removed.
    pub instances: u64,
    /// Series rows removed.
    pub series: u64,
    /// Bytes of the removed instances.
    pub bytes: u64,
    /// Files deleted (instances, duplicates, leftovers, series metadata).
    pub files_deleted: u64,
}

/// One attribute and the value an edit gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EditValue {
    /// The attribute.
    pub attribute: EditableAttribute,
    /// The new value ("" empties it).
    pub value: String,
}

impl std::fmt::Display for EditValue {
    /// `Keyword=value`, what [`EditValue::parse`] reads.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}={}", self.attribute.keyword(), self.value)
    }
}

impl EditValue {
    /// Parses `Keyword=value` (e.g. `PatientName=DOE^JANE`).
    pub fn parse(text: &str) -> Result<EditValue, StudyError> {
        let Some((keyword, value)) = text.split_once('=') else {
            return Err(StudyError::InvalidEdit(format!(
                "{text:?}: expected Keyword=value, e.g. PatientName=DOE^JANE"
            )));
        };
        let attribute = EditableAttribute::from_keyword(keyword.trim()).ok_or_else(|| {
            StudyError::InvalidEdit(format!(
                "{keyword:?} cannot be edited; editable: {}",
                EditableAttribute::ALL
                    .iter()
                    .map(|a| a.keyword())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?;
        Ok(EditValue {
            attribute,
            value: value.trim().to_string(),
        })
    }
}

/// What [`Studies::edit`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EditOutcome {
    /// The edit is complete (now, or resumed from an interrupted run).
    Edited {
        /// The completed edit (history entry).
        edit: EditRecord,
        /// Files rewritten by this run.
        files_rewritten: u64,
        /// Files that already held the new values (an earlier run).
        files_already_edited: u64,
        /// Other studies of the same patient: patient-level changes also
        /// show in their query answers (their files are not rewritten).
        other_studies_of_patient: u64,
    },
    /// The index already holds these values and no edit is pending.
    Unchanged,
}

/// What [`Studies::reprocess`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReprocessReport {
    /// Instance rows before.
    pub removed_instances: u64,
    /// Instance rows now (one per usable file).
    pub indexed_instances: u64,
    /// Files not indexed, with the reason.
    pub skipped: Vec<(PathBuf, String)>,
}

/// One disagreement between the index and the files of a study.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// Indexed, but its file is missing.
    MissingFile {
        /// The series.
        series_uid: Uid,
        /// The instance.
        sop_instance_uid: Uid,
    },
    /// A file of the study folder no row of the study names.
    ExtraFile {
        /// The series folder.
        series_uid: Uid,
        /// The instance its name says.
        sop_instance_uid: Uid,
    },
    /// The file's size differs from the index's.
    SizeMismatch {
        /// The instance.
        sop_instance_uid: Uid,
        /// The index's size.
        indexed: u64,
        /// The file's size.
        actual: u64,
    },
    /// The file's digest differs from the index's.
    DigestMismatch {
        /// The instance.
        sop_instance_uid: Uid,
        /// The index's digest.
        indexed: String,
        /// The file's digest.
        actual: String,
    },
    /// The file could not be read.
    Unreadable {
        /// The instance.
        sop_instance_uid: Uid,
        /// Why.
        reason: String,
    },
}

impl Finding {
    /// Whether rebuilding the study's rows from its files (reprocess)
    /// resolves it.
    pub fn needs_reprocess(&self) -> bool {
        !matches!(self, Finding::Unreadable { .. })
    }
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Finding::MissingFile {
                series_uid,
                sop_instance_uid,
            } => write!(f, "missing file: {sop_instance_uid} (series {series_uid})"),
            Finding::ExtraFile {
                series_uid,
                sop_instance_uid,
            } => write!(
                f,
                "file not in the index: {sop_instance_uid} (series {series_uid})"
            ),
            Finding::SizeMismatch {
                sop_instance_uid,
                indexed,
                actual,
            } => write!(
                f,
                "size mismatch: {sop_instance_uid}: index {indexed} bytes, file {actual} bytes"
            ),
            Finding::DigestMismatch {
                sop_instance_uid,
                indexed,
                actual,
            } => write!(
                f,
                "digest mismatch: {sop_instance_uid}: index {indexed}, file {actual}"
            ),
            Finding::Unreadable {
                sop_instance_uid,
                reason,
            } => write!(f, "unreadable: {sop_instance_uid}: {reason}"),
        }
    }
}

/// What [`Studies::check_integrity`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IntegrityReport {
    /// Instances the index lists.
    pub indexed: u64,
    /// Instance files in the study folder.
    pub files: u64,
    /// The disagreements.
    pub findings: Vec<Finding>,
}

impl IntegrityReport {
    /// Whether index and files agree.
    pub fn is_clean(&self) -> bool {
        self.findings.is_empty()
    }

    /// Whether a reprocess would fix something (StudyProcess schedules one).
    pub fn needs_reprocess(&self) -> bool {
        self.findings.iter().any(Finding::needs_reprocess)
    }
}

/// What [`Studies::send`] did, per instance.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SendReport {
    /// The destination, `AE@host:port`.
    pub destination: String,
    /// Stored with status success.
    pub delivered: Vec<Uid>,
    /// Stored with a warning status (not retried).
    pub warnings: Vec<(Uid, String)>,
    /// Not stored, with the reason: what a retry sends again.
    pub failed: Vec<(Uid, String)>,
    /// Asked for, but not an instance of the study (not retried).
    pub missing: Vec<Uid>,
}

impl SendReport {
    /// The UIDs to send again.
    pub fn failed_uids(&self) -> Vec<Uid> {
        self.failed.iter().map(|(uid, _)| uid.clone()).collect()
    }

    /// Whether every instance asked for arrived.
    pub fn is_complete(&self) -> bool {
        self.failed.is_empty() && self.missing.is_empty()
    }
}

/// The study operations over an index and a storage backend. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Studies {
    db: Arc<dyn Database>,
    storage: Arc<dyn StorageBackend>,
    sends: SendLimits,
}

impl Studies {
    /// The operations over `db` and `storage`.
    pub fn new(db: Arc<dyn Database>, storage: Arc<dyn StorageBackend>) -> Studies {
        Studies {
            db,
            storage,
            sends: SendLimits::default(),
        }
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

    // ------------------------------------------------------------- delete

    /// Deletes a study: rows (with an audit record of `actor` and `reason`),
    /// then files, then the tombstone (see the module documentation).
    /// Idempotent: a retry after an interruption finishes the files; a
    /// study with nothing left is [`DeleteOutcome::Absent`].
    pub fn delete(
        &self,
        partition: &Partition,
        study_uid: &Uid,
        actor: &str,
        reason: &str,
    ) -> Result<DeleteOutcome, StudyError> {
        let audit = AuditEntry::now(
            actor,
            "study.delete",
            partition.id,
            study_uid,
            JsonObject::new().string("reason", Some(reason)).finish(),
        );
        let deleted = match self
            .store()
            .delete_study_rows(partition.id, study_uid, &audit)?
        {
            Some(deleted) => deleted,
            None => {
                let Some(tombstone) = self.store().deleting_study(partition.id, study_uid)? else {
                    return Ok(DeleteOutcome::Absent);
                };
                let filesystem = self.filesystem(tombstone.location.filesystem)?;
                let files_deleted = self.sweep(
                    partition,
                    &filesystem,
                    &tombstone.location,
                    tombstone.since_ms,
                )?;
                self.store().finish_study_delete(partition.id, study_uid)?;
                tracing::info!(study_uid = %study_uid, files_deleted, "finished an interrupted study deletion");
                return Ok(DeleteOutcome::Finished(DeleteReport {
                    files_deleted,
                    ..DeleteReport::default()
                }));
            }
        };
        let filesystem = self.filesystem(deleted.location.filesystem)?;
        let mut files_deleted = 0;
        for instance in &deleted.instances {
            self.storage.delete(&filesystem, &key_of(instance))?;
            files_deleted += 1;
        }
        for duplicate in &deleted.duplicates {
            let fs = self.filesystem(duplicate.location.filesystem)?;
            let key = InstanceKey {
                location: duplicate.location.clone(),
                series_uid: duplicate.series_uid.clone(),
                sop_instance_uid: duplicate.sop_instance_uid.clone(),
            };
            self.storage.delete_aside(&fs, &key, duplicate.variant)?;
            files_deleted += 1;
        }
        files_deleted += self.sweep(partition, &filesystem, &deleted.location, deleted.since_ms)?;
        self.store().finish_study_delete(partition.id, study_uid)?;
        tracing::info!(
            study_uid = %study_uid,
            instances = deleted.instances.len(),
            files_deleted,
            actor,
            "study deleted"
        );
        Ok(DeleteOutcome::Deleted(DeleteReport {
            instances: deleted.instances.len() as u64,
            series: deleted.num_series,
            bytes: deleted.size_bytes,
            files_deleted,
        }))
    }

    /// Deletes the files of a (deleted) study folder that no row names and
    /// that are older than `since_ms`, then the empty series folders and the
    /// study folder. Returns the files deleted.
    fn sweep(
        &self,
        partition: &Partition,
        filesystem: &Filesystem,
        location: &crate::model::StudyLocation,
        since_ms: i64,
    ) -> Result<u64, StudyError> {
        let objects = self.storage.list_study(filesystem, location)?;
        let mut deleted = 0;
        for object in objects {
            let (file, variant) = match object {
                StudyObject::Instance(file) => (file, None),
                StudyObject::Aside(file, variant) => (file, Some(variant)),
                // Derived from the deleted rows' files (a newer one is of a
                // study that arrived again since).
                StudyObject::Metadata {
                    series_uid,
                    modified_ms,
                } => {
                    if modified_ms <= since_ms {
                        let key = SeriesKey {
                            location: location.clone(),
                            series_uid,
                        };
                        self.storage.delete_series_metadata(filesystem, &key)?;
                        deleted += 1;
                    }
                    continue;
                }
                StudyObject::Stray(_) => continue,
            };
            // Newer files belong to instances that arrived after the rows
            // went; an indexed one is someone's instance.
            if file.modified_ms > since_ms || self.indexed_here(partition, location, &file)? {
                continue;
            }
            let key = InstanceKey {
                location: location.clone(),
                series_uid: file.series_uid,
                sop_instance_uid: file.sop_instance_uid,
            };
            match variant {
                None => self.storage.delete(filesystem, &key)?,
                Some(variant) => self.storage.delete_aside(filesystem, &key, variant)?,
            }
            deleted += 1;
        }
        // Empty series folders (and the metadata folder), then the study
        // folder: what is not empty keeps what is left (stray files, newer
        // arrivals).
        self.storage
            .remove_empty_study_folders(filesystem, location)?;
        Ok(deleted)
    }

    fn indexed_here(
        &self,
        partition: &Partition,
        location: &crate::model::StudyLocation,
        file: &StoredObject,
    ) -> Result<bool, StudyError> {
        Ok(self
            .db
            .instance(partition.id, &file.sop_instance_uid)?
            .is_some_and(|stored| {
                stored.location == *location && stored.series_uid == file.series_uid
            }))
    }

    // --------------------------------------------------------------- edit

    /// Edits patient/study attributes of a study in every file and in the
    /// index, keeping history (see the module documentation for the order).
    /// A pending edit of the study with the same values is resumed; one
    /// with other values is [`StudyError::EditPending`].
    pub fn edit(
        &self,
        partition: &Partition,
        study_uid: &Uid,
        values: &[EditValue],
        actor: &str,
        reason: &str,
    ) -> Result<EditOutcome, StudyError> {
        let targets = validate_values(values)?;
        let edit = match self.store().pending_edit(partition.id, study_uid)? {
            Some(pending) if same_targets(&pending, &targets) => pending,
            Some(pending) => return Err(StudyError::EditPending(Box::new(pending))),
            None => {
                let record = self.online_study(partition, study_uid)?;
                let changes: Vec<AttributeChange> = targets
                    .iter()
                    .map(|t| AttributeChange {
                        attribute: t.attribute,
                        old_value: t.attribute.value_in(&record).map(str::to_string),
                        new_value: t.value.clone(),
                    })
                    .collect();
                if changes
                    .iter()
                    .all(|c| c.old_value.as_deref() == index_text(&c.new_value))
                    && self.files_hold(partition, study_uid, &targets)?
                {
                    // An earlier run may have completed the edit and been
                    // interrupted before writing the metadata again.
                    if !self.has_series_metadata(partition, study_uid)? {
                        self.write_series_metadata(partition, study_uid)?;
                    }
                    return Ok(EditOutcome::Unchanged);
                }
                // Every file must be able to take the values before anything
                // is recorded or written.
                let filesystem = self.filesystem(
                    record
                        .location
                        .as_ref()
                        .map(|l| l.filesystem)
                        .ok_or_else(|| StudyError::Nearline(study_uid.clone()))?,
                )?;
                for instance in self.store().study_instances(partition.id, study_uid)? {
                    let mut source = self.storage.open(&filesystem, &key_of(&instance))?;
                    let head = rewrite::read_head(&mut source)
                        .and_then(|head| rewrite::check(&head, &targets).map(|()| head))
                        .map_err(|reason| StudyError::File {
                            sop_instance_uid: instance.sop_instance_uid.clone(),
                            reason,
                        })?;
                    drop(head);
                }
                let edit =
                    self.store()
                        .begin_edit(partition.id, study_uid, &changes, actor, reason)?;
                if !same_targets(&edit, &targets) {
                    return Err(StudyError::EditPending(Box::new(edit)));
                }
                edit
            }
        };

        // No metadata with old values survives an interruption from here on.
        self.drop_series_metadata(partition, study_uid)?;
        let record = self.online_study(partition, study_uid)?;
        let location = record.location.clone().expect("online");
        let filesystem = self.filesystem(location.filesystem)?;
        let mut facts = Vec::new();
        let mut pending = PendingSync::default();
        let (mut rewritten, mut already) = (0u64, 0u64);
        for instance in self.store().study_instances(partition.id, study_uid)? {
            let key = key_of(&instance);
            let file_error = |reason: String| StudyError::File {
                sop_instance_uid: instance.sop_instance_uid.clone(),
                reason,
            };
            let mut source = files::HashingReader::new(self.storage.open(&filesystem, &key)?);
            let head = rewrite::read_head(&mut source).map_err(file_error)?;
            if rewrite::holds(&head.header, &targets) {
                let (file_size, digest) = source.finish().map_err(|e| file_error(e.to_string()))?;
                facts.push(FileFacts {
                    sop_instance_uid: instance.sop_instance_uid.clone(),
                    file_size,
                    digest,
                });
                already += 1;
                continue;
            }
            let mut writer = self.storage.begin_write(&filesystem)?;
            let (file_size, digest) =
                rewrite::write_edited(&head, &targets, &mut source, &mut writer)
                    .map_err(file_error)?;
            drop(source);
            {
                let mut back = writer.read_back()?;
                let header = rewrite::verify(&mut back, &targets).map_err(file_error)?;
                let sop = files::text(&header, dicom_dictionary_std::tags::SOP_INSTANCE_UID);
                if sop.as_deref() != Some(instance.sop_instance_uid.as_str()) {
                    return Err(file_error(
                        "the edited file names another SOP instance".to_string(),
                    ));
                }
            }
            pending.merge(writer.persist(&key)?);
            facts.push(FileFacts {
                sop_instance_uid: instance.sop_instance_uid.clone(),
                file_size,
                digest,
            });
            rewritten += 1;
        }
        // Every rename durable before the index says so.
        self.storage.sync(pending)?;
        let changes_json = {
            let mut json = String::from("[");
            for (i, c) in edit.changes.iter().enumerate() {
                if i > 0 {
                    json.push(',');
                }
                json.push_str(
                    &JsonObject::new()
                        .string("attribute", Some(c.attribute.keyword()))
                        .string("old", c.old_value.as_deref())
                        .string("new", Some(&c.new_value))
                        .finish(),
                );
            }
            json.push(']');
            json
        };
        let audit = AuditEntry::now(
            actor,
            "study.edit",
            partition.id,
            study_uid,
            JsonObject::new()
                .int("edit", i128::from(edit.id))
                .string("reason", Some(&edit.reason))
                .raw("changes", &changes_json)
                .int("instances", facts.len() as i128)
                .finish(),
        );
        self.store().complete_edit(&edit, &facts, &audit)?;
        let completed = self
            .store()
            .edit_history(partition.id, study_uid)?
            .into_iter()
            .find(|e| e.id == edit.id)
            .unwrap_or(edit);
        let other_studies_of_patient = self
            .store()
            .study(partition.id, study_uid)?
            .map(|r| r.patient_num_studies.saturating_sub(1))
            .unwrap_or(0);
        self.write_series_metadata(partition, study_uid)?;
        tracing::info!(
            study_uid = %study_uid,
            edit = completed.id,
            rewritten,
            already,
            actor,
            "study edited"
        );
        Ok(EditOutcome::Edited {
            edit: completed,
            files_rewritten: rewritten,
            files_already_edited: already,
            other_studies_of_patient,
        })
    }

    /// Whether every file of the study already carries `targets` (the
    /// index may agree with an edit while a file received after it does
    /// not).
    fn files_hold(
        &self,
        partition: &Partition,
        study_uid: &Uid,
        targets: &[Target],
    ) -> Result<bool, StudyError> {
        let instances = self.store().study_instances(partition.id, study_uid)?;
        self.first_not_holding(&instances, targets)
            .map(|found| found.is_none())
    }

    /// The first of `instances` whose file does not carry `targets`.
    fn first_not_holding<'a>(
        &self,
        instances: &'a [StoredInstance],
        targets: &[Target],
    ) -> Result<Option<&'a StoredInstance>, StudyError> {
        let mut filesystems: BTreeMap<FilesystemId, Filesystem> = BTreeMap::new();
        for instance in instances {
            let id = instance.location.filesystem;
            let filesystem = match filesystems.entry(id) {
                std::collections::btree_map::Entry::Occupied(known) => known.into_mut(),
                std::collections::btree_map::Entry::Vacant(new) => new.insert(self.filesystem(id)?),
            };
            let mut source = self.storage.open(filesystem, &key_of(instance))?;
            let head = rewrite::read_head(&mut source).map_err(|reason| StudyError::File {
                sop_instance_uid: instance.sop_instance_uid.clone(),
                reason,
            })?;
            if !rewrite::holds(&head.header, targets) {
                return Ok(Some(instance));
            }
        }
        Ok(None)
    }

    /// The values of the study's completed edits (the latest value of each
    /// attribute), when one of the `arrived` instances does not carry
    /// them: an instance received after an edit, or while it ran, keeps the
    /// values its sender gave it (and its arrival may have put them back in
    /// the index rows). Applying the values again with [`Studies::edit`]
    /// brings files and rows in line. `None`: the study has no completed
    /// edit, or every arrived instance still in the study carries its values.
    pub fn edits_missing_from(
        &self,
        partition: &Partition,
        study_uid: &Uid,
        arrived: &[Uid],
    ) -> Result<Option<Vec<EditValue>>, StudyError> {
        if arrived.is_empty() {
            return Ok(None);
        }
        let mut latest: BTreeMap<EditableAttribute, String> = BTreeMap::new();
        for edit in self.store().edit_history(partition.id, study_uid)? {
            if edit.status == EditStatus::Completed {
                for change in edit.changes {
                    latest.insert(change.attribute, change.new_value);
                }
            }
        }
        if latest.is_empty() {
            return Ok(None);
        }
        let values: Vec<EditValue> = latest
            .into_iter()
            .map(|(attribute, value)| EditValue { attribute, value })
            .collect();
        let targets = validate_values(&values)?;
        let mut instances = Vec::new();
        for sop in arrived {
            match self.db.instance(partition.id, sop)? {
                Some(stored) if stored.location.study_uid == *study_uid => instances.push(stored),
                // Deleted or moved on since: nothing to bring in line.
                _ => {}
            }
        }
        Ok(self
            .first_not_holding(&instances, &targets)?
            .map(|_| values))
    }

    // ---------------------------------------------------------- reprocess

    /// Rebuilds a study's rows from its files: every `<series>/<sop>.dcm`
    /// of the study folder whose header names this study, that series and
    /// that instance is indexed with its size and digest; other files are
    /// skipped and reported. The old rows are replaced in one transaction.
    pub fn reprocess(
        &self,
        partition: &Partition,
        study_uid: &Uid,
        actor: &str,
    ) -> Result<ReprocessReport, StudyError> {
        if self
            .store()
            .deleting_study(partition.id, study_uid)?
            .is_some()
        {
            return Err(StudyError::BeingDeleted(study_uid.clone()));
        }
        let location = self
            .db
            .study_location(partition.id, study_uid)?
            .ok_or_else(|| Self::unknown(partition, study_uid))?;
        let filesystem = self.filesystem(location.filesystem)?;
        let objects = self.storage.list_study(&filesystem, &location)?;
        let mut report = ReprocessReport::default();
        let mut records = Vec::new();
        for object in objects {
            let file = match object {
                StudyObject::Instance(file) => file,
                StudyObject::Aside(..) | StudyObject::Metadata { .. } => continue,
                StudyObject::Stray(path) => {
                    report
                        .skipped
                        .push((path, "not an instance file name".to_string()));
                    continue;
                }
            };
            match self.rebuild_record(partition, &location, &filesystem, &file)? {
                Ok(record) => records.push(record),
                Err(reason) => {
                    let key = InstanceKey {
                        location: location.clone(),
                        series_uid: file.series_uid,
                        sop_instance_uid: file.sop_instance_uid,
                    };
                    report
                        .skipped
                        .push((self.storage.describe(&filesystem, &key), reason));
                }
            }
        }
        let audit = AuditEntry::now(
            actor,
            "study.reprocess",
            partition.id,
            study_uid,
            JsonObject::new()
                .int("instances", records.len() as i128)
                .int("skipped", report.skipped.len() as i128)
                .finish(),
        );
        let outcome = self
            .store()
            .replace_study_rows(partition.id, study_uid, &records, &audit)?;
        report.removed_instances = outcome.removed_instances;
        report.indexed_instances = outcome.inserted_instances;
        tracing::info!(
            study_uid = %study_uid,
            before = outcome.removed_instances,
            after = outcome.inserted_instances,
            skipped = report.skipped.len(),
            "study reprocessed"
        );
        // The series metadata follows the rebuilt rows.
        match self.write_series_metadata(partition, study_uid) {
            Ok(_) => {}
            // No instance row left: no study to describe, and nothing may
            // describe the instances that are gone.
            Err(StudyError::UnknownStudy { .. } | StudyError::Nearline(_)) => {
                self.storage.delete_study_metadata(&filesystem, &location)?;
            }
            Err(e) => return Err(e),
        }
        Ok(report)
    }

    /// The record of one file, or why it is not indexed.
    fn rebuild_record(
        &self,
        partition: &Partition,
        location: &crate::model::StudyLocation,
        filesystem: &Filesystem,
        file: &StoredObject,
    ) -> Result<Result<crate::model::InstanceRecord, String>, StudyError> {
        let key = InstanceKey {
            location: location.clone(),
            series_uid: file.series_uid.clone(),
            sop_instance_uid: file.sop_instance_uid.clone(),
        };
        let open = || {
            self.storage
                .open(filesystem, &key)
                .map_err(|e| format!("cannot open the file: {e}"))
        };
        let (header, size, digest) = match files::read_header_and_digest(open) {
            Ok(parsed) => parsed,
            Err(reason) => return Ok(Err(reason)),
        };
        let record = match files::record_from_header(partition.id, location, &header, size, digest)
        {
            Ok(record) => record,
            Err(reason) => return Ok(Err(reason)),
        };
        if record.study.study_uid != location.study_uid
            || record.series.series_uid != file.series_uid
            || record.instance.sop_instance_uid != file.sop_instance_uid
        {
            return Ok(Err(format!(
                "its header names study {}, series {}, instance {}: not where it is",
                record.study.study_uid, record.series.series_uid, record.instance.sop_instance_uid
            )));
        }
        // An instance indexed in another study stays there.
        if let Some(stored) = self.db.instance(partition.id, &file.sop_instance_uid)? {
            if stored.location.study_uid != location.study_uid {
                return Ok(Err(format!(
                    "instance {} is indexed in study {}",
                    file.sop_instance_uid, stored.location.study_uid
                )));
            }
        }
        Ok(Ok(record))
    }

    // ---------------------------------------------------------- integrity

    /// Compares the index with the study folder: missing files, files no
    /// row names, sizes and the BLAKE3 digests of the files `digests`
    /// selects. Reads files, writes nothing.
    pub fn check_integrity(
        &self,
        partition: &Partition,
        study_uid: &Uid,
        digests: DigestCheck<'_>,
    ) -> Result<IntegrityReport, StudyError> {
        let record = self.online_study(partition, study_uid)?;
        let location = record.location.clone().expect("online");
        let filesystem = self.filesystem(location.filesystem)?;
        let indexed = self.store().study_instances(partition.id, study_uid)?;
        let mut on_disk: BTreeMap<Uid, StoredObject> = BTreeMap::new();
        for object in self.storage.list_study(&filesystem, &location)? {
            if let StudyObject::Instance(file) = object {
                on_disk.insert(file.sop_instance_uid.clone(), file);
            }
        }
        let mut report = IntegrityReport {
            indexed: indexed.len() as u64,
            files: on_disk.len() as u64,
            findings: Vec::new(),
        };
        for instance in &indexed {
            let sop = &instance.sop_instance_uid;
            let Some(file) = on_disk
                .remove(sop)
                .filter(|f| f.series_uid == instance.series_uid)
            else {
                report.findings.push(Finding::MissingFile {
                    series_uid: instance.series_uid.clone(),
                    sop_instance_uid: sop.clone(),
                });
                continue;
            };
            if file.size != instance.file_size {
                report.findings.push(Finding::SizeMismatch {
                    sop_instance_uid: sop.clone(),
                    indexed: instance.file_size,
                    actual: file.size,
                });
                continue;
            }
            if digests.covers(sop) {
                let digest = self
                    .storage
                    .open(&filesystem, &key_of(instance))
                    .map_err(|e| e.to_string())
                    .and_then(|reader| files::digest(reader).map_err(|e| e.to_string()));
                match digest {
                    Ok((_, digest)) if digest == instance.digest => {}
                    Ok((_, digest)) => report.findings.push(Finding::DigestMismatch {
                        sop_instance_uid: sop.clone(),
                        indexed: instance.digest.clone(),
                        actual: digest,
                    }),
                    Err(reason) => report.findings.push(Finding::Unreadable {
                        sop_instance_uid: sop.clone(),
                        reason,
                    }),
                }
            }
        }
        for (sop, file) in on_disk {
            report.findings.push(Finding::ExtraFile {
                series_uid: file.series_uid,
                sop_instance_uid: sop,
            });
        }
        Ok(report)
    }

    // --------------------------------------------------------------- send

    /// The device of `partition` called `ae_title`, usable as a destination.
    pub fn destination(
        &self,
        partition: &Partition,
        ae_title: &str,
    ) -> Result<DeviceSpec, StudyError> {
        let unknown = || StudyError::UnknownDevice {
            partition: partition.ae_title.to_string(),
            ae_title: ae_title.to_string(),
        };
        let wanted = AeTitle::parse(ae_title).map_err(|_| unknown())?;
        self.db
            .devices(partition.id)?
            .into_iter()
            .find(|d| d.ae_title == wanted && d.port != 0)
            .ok_or_else(unknown)
    }

    /// Sends every instance of a study (or only `only`) to `device` with
    /// the storage SCU, one outcome per instance. Partial failure is not an
    /// error: [`SendReport::failed_uids`] is what a retry sends again; a
    /// destination that cannot be reached fails every instance. Refused
    /// with [`StudyError::DeviceBusy`], before anything is read or sent,
    /// while the device has all the associations its limit allows.
    pub fn send(
        &self,
        partition: &Partition,
        study_uid: &Uid,
        device: &DeviceSpec,
        only: Option<&[Uid]>,
        options: &ScuOptions,
        actor: &str,
    ) -> Result<SendReport, StudyError> {
        let _permit = self
            .sends
            .try_acquire(partition.id, device)
            .ok_or_else(|| StudyError::DeviceBusy {
                ae_title: device.ae_title.to_string(),
                limit: device.max_outgoing_associations,
            })?;
        let record = self.online_study(partition, study_uid)?;
        let location = record.location.clone().expect("online");
        let filesystem = self.filesystem(location.filesystem)?;
        let mut instances = self.store().study_instances(partition.id, study_uid)?;
        let mut report = SendReport {
            destination: format!("{}@{}:{}", device.ae_title, device.host, device.port),
            ..SendReport::default()
        };
        if let Some(only) = only {
            let wanted: BTreeSet<&Uid> = only.iter().collect();
            let present: BTreeSet<&Uid> = instances.iter().map(|i| &i.sop_instance_uid).collect();
            report.missing = wanted
                .iter()
                .filter(|uid| !present.contains(**uid))
                .map(|uid| (*uid).clone())
                .collect();
            instances.retain(|i| wanted.contains(&i.sop_instance_uid));
        }
        let items: Vec<OutgoingInstance<'_>> = instances
            .into_iter()
            .map(|stored| OutgoingInstance {
                stored,
                filesystem: &filesystem,
                storage: &*self.storage,
            })
            .collect();
        let destination = Destination {
            ae_title: device.ae_title.to_string(),
            host: device.host.clone(),
            port: device.port,
        };
        let mut answered: BTreeSet<Uid> = BTreeSet::new();
        let result = scu::send(&destination, options, &items, &mut |item, outcome| {
            let uid = item.stored.sop_instance_uid.clone();
            answered.insert(uid.clone());
            match (outcome.tally(), outcome) {
                (Tally::Completed, _) => report.delivered.push(uid),
                (Tally::Warning, outcome) => report.warnings.push((uid, outcome.describe())),
                (Tally::Failed, outcome) => report.failed.push((uid, outcome.describe())),
            }
            ControlFlow::Continue(())
        });
        match result {
            Ok(_) => {
                // Whatever the SCU did not report (it stopped) failed.
                for item in &items {
                    if !answered.contains(&item.stored.sop_instance_uid) {
                        report.failed.push((
                            item.stored.sop_instance_uid.clone(),
                            "not attempted".to_string(),
                        ));
                    }
                }
            }
            Err(error) => {
                let reason = error.to_string();
                for item in &items {
                    if !answered.contains(&item.stored.sop_instance_uid) {
                        report
                            .failed
                            .push((item.stored.sop_instance_uid.clone(), reason.clone()));
                    }
                }
            }
        }
        let audit = AuditEntry::now(
            actor,
            "study.send",
            partition.id,
            study_uid,
            JsonObject::new()
                .string("destination", Some(&report.destination))
                .int("delivered", report.delivered.len() as i128)
                .int("warnings", report.warnings.len() as i128)
                .raw(
                    "failed",
                    &json_strings(report.failed.iter().map(|(uid, _)| uid.as_str())),
                )
                .finish(),
        );
        self.store().record_audit(&audit)?;
        tracing::info!(
            study_uid = %study_uid,
            destination = %report.destination,
            delivered = report.delivered.len(),
            warnings = report.warnings.len(),
            failed = report.failed.len(),
            "study sent"
        );
        Ok(report)
    }
}

/// Which files [`Studies::check_integrity`] hashes (every file is listed and
/// its size compared either way).
#[derive(Debug, Clone, Copy)]
pub enum DigestCheck<'a> {
    /// None: sizes only.
    None,
    /// Every file of the study.
    All,
    /// Only these instances (the ones that just arrived).
    Only(&'a BTreeSet<Uid>),
}

impl DigestCheck<'_> {
    fn covers(&self, sop_instance_uid: &Uid) -> bool {
        match self {
            DigestCheck::None => false,
            DigestCheck::All => true,
            DigestCheck::Only(uids) => uids.contains(sop_instance_uid),
        }
    }
}

/// A stored instance as the storage SCU sends it.
struct OutgoingInstance<'a> {
    stored: StoredInstance,
    filesystem: &'a Filesystem,
    storage: &'a dyn StorageBackend,
}

impl Outgoing for OutgoingInstance<'_> {
    fn sop_class_uid(&self) -> &str {
        self.stored.sop_class_uid.as_str()
    }

    fn sop_instance_uid(&self) -> &str {
        self.stored.sop_instance_uid.as_str()
    }

    fn transfer_syntax_uid(&self) -> &str {
        self.stored.transfer_syntax_uid.as_str()
    }

    fn file_size(&self) -> Option<u64> {
        Some(self.stored.file_size)
    }

    fn open(&self) -> Result<Box<dyn Read + Send + '_>, Box<dyn std::error::Error + Send + Sync>> {
        Ok(self.storage.open(self.filesystem, &key_of(&self.stored))?)
    }
}

fn key_of(stored: &StoredInstance) -> InstanceKey {
    InstanceKey {
        location: stored.location.clone(),
        series_uid: stored.series_uid.clone(),
        sop_instance_uid: stored.sop_instance_uid.clone(),
    }
}

/// Checks the requested values (one per attribute, each valid for its VR)
/// and returns them as rewrite targets in tag order.
fn validate_values(values: &[EditValue]) -> Result<Vec<Target>, StudyError> {
    if values.is_empty() {
        return Err(StudyError::InvalidEdit(
            "nothing to change: give at least one Keyword=value".to_string(),
        ));
    }
    let mut seen = BTreeSet::new();
    let mut targets = Vec::new();
    for v in values {
        if !seen.insert(v.attribute) {
            return Err(StudyError::InvalidEdit(format!(
                "{} is given twice",
                v.attribute
            )));
        }
        let value = v.value.trim_matches([' ', '\0']);
        check_value(v.attribute, value).map_err(|reason| {
            StudyError::InvalidEdit(format!("{}={value:?}: {reason}", v.attribute))
        })?;
        targets.push(Target {
            attribute: v.attribute,
            value: value.to_string(),
        });
    }
    targets.sort_by_key(|t| t.attribute.tag());
    Ok(targets)
}

/// PS3.5 6.2 value rules of the editable VRs (single values only).
fn check_value(attribute: EditableAttribute, value: &str) -> Result<(), String> {
    if value.contains('\\') {
        return Err("a single value is expected (no backslash)".to_string());
    }
    if value.chars().any(|c| c.is_control()) {
        return Err("control characters are not allowed".to_string());
    }
    let chars = value.chars().count();
    let (ok, rule) = match attribute.vr() {
        "DA" => (
            value.is_empty() || value.len() == 8 && value.bytes().all(|b| b.is_ascii_digit()),
            "a date is YYYYMMDD",
        ),
        "TM" => {
            let (hms, fraction) = value.split_once('.').unwrap_or((value, ""));
            (
                value.is_empty()
                    || (matches!(hms.len(), 2 | 4 | 6)
                        && hms.bytes().all(|b| b.is_ascii_digit())
                        && fraction.len() <= 6
                        && fraction.bytes().all(|b| b.is_ascii_digit())
                        && (fraction.is_empty() || hms.len() == 6)),
                "a time is HH, HHMM, HHMMSS or HHMMSS.FFFFFF",
            )
        }
        "CS" => (
            chars <= 16
                && value.bytes().all(|b| {
                    b.is_ascii_uppercase() || b.is_ascii_digit() || b == b' ' || b == b'_'
                }),
            "a code string is at most 16 of A-Z 0-9 space _",
        ),
        "SH" => (chars <= 16, "at most 16 characters"),
        "LO" => (chars <= 64, "at most 64 characters"),
        "PN" => (
            value.split('=').count() <= 3 && value.split('=').all(|g| g.chars().count() <= 64),
            "a person name has at most 3 groups of 64 characters",
        ),
        _ => (true, ""),
    };
    if ok {
        Ok(())
    } else {
        Err(rule.to_string())
    }
}

fn same_targets(edit: &EditRecord, targets: &[Target]) -> bool {
    let recorded: BTreeSet<(EditableAttribute, &str)> = edit
        .changes
        .iter()
        .map(|c| (c.attribute, c.new_value.as_str()))
        .collect();
    let wanted: BTreeSet<(EditableAttribute, &str)> = targets
        .iter()
        .map(|t| (t.attribute, t.value.as_str()))
        .collect();
    recorded == wanted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_values_are_parsed_and_checked() {
        let v = EditValue::parse("PatientName=DOE^JANE").unwrap();
        assert_eq!(v.attribute, EditableAttribute::PatientName);
        assert_eq!(v.value, "DOE^JANE");
        assert!(EditValue::parse("Modality=CT").is_err());
        assert!(EditValue::parse("PatientName").is_err());
        let cases = [
            ("StudyDate=20240101", true),
            ("StudyDate=2024-01-01", false),
            ("StudyDate=", true),
            ("StudyTime=1015", true),
            ("StudyTime=101500.123", true),
            ("StudyTime=10150", false),
            ("PatientSex=F", true),
            ("PatientSex=female", false),
            ("AccessionNumber=12345678901234567", false),
            ("StudyDescription=A\\B", false),
            ("PatientName=DOE^JANE", true),
        ];
        for (text, ok) in cases {
            let value = EditValue::parse(text).unwrap();
            assert_eq!(validate_values(&[value]).is_ok(), ok, "{text}");
        }
        let twice = [
            EditValue::parse("PatientName=A").unwrap(),
            EditValue::parse("PatientName=B").unwrap(),
        ];
        assert!(validate_values(&twice).is_err());
        assert!(validate_values(&[]).is_err());
        let sorted = validate_values(&[
            EditValue::parse("PatientName=A").unwrap(),
            EditValue::parse("StudyDescription=B").unwrap(),
        ])
        .unwrap();
        assert_eq!(sorted[0].attribute, EditableAttribute::StudyDescription);
    }
}
