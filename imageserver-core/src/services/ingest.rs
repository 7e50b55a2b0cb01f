//! Ingest: from a stream of data set bytes to a durable, indexed instance.
//!
//! [`Ingest::begin`] opens an [`IngestWriter`] on the chosen filesystem and
//! writes the Part 10 preamble and file meta group; the caller streams the
//! received data set bytes into it verbatim; [`Ingest::finish`] checks the
//! data set, reads its header (only up to Pixel Data), validates every UID,
//! places the file, and waits for the group commit. Only an `Ok` from
//! `finish` may become a C-STORE success.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::sync::{Arc, Mutex, RwLock};

use dicom_core::Tag;
use dicom_dictionary_std::tags;
use dicom_object::{DefaultDicomObject, OpenFileOptions};

use super::commit::{CommitError, GroupCommitter, StudyProcessHook};
pub use super::partition::Partition;
use crate::db::studies::{EditStatus, EditableAttribute};
use crate::db::{self, IndexStore, IngestLookup, PendingLookup};
use crate::dicom::part10::header::{self, HeaderError, InvalidUid};
use crate::dicom::part10::walker::WalkError;
use crate::dicom::part10::DataSetWalker;
use crate::model::error_chain;
use crate::model::{
    same_text, study_date_folder, DuplicatePolicy, DuplicateRecord, Filesystem, FilesystemId,
    InsertOutcome, InstanceRecord, PartitionId, PatientAttrs, PatientIdentity, ReconcileEntry,
    StudyLocation, Uid,
};
use crate::storage::{
    self, InstanceKey, LowestTierMostRoom, ObjectWriter, Placement, StorageBackend,
};

/// Our Implementation Class UID (PS3.7 D.3.3.2), written to every file meta.
pub const IMPLEMENTATION_CLASS_UID: &str = "2.25.28222852552463158573786484331843668477";
/// Our Implementation Version Name.
pub const IMPLEMENTATION_VERSION_NAME: &str = "IMAGESERVER_01";

/// Bytes of each file kept in memory to parse the header from, without
/// reading the file back. Headers larger than this are read back from disk:
/// at most [`IngestLimits::max_header_bytes`] of them, the walker's bound.
const HEADER_PREFIX: usize = 128 * 1024;
/// Pixel data bytes still to come, once the header is whole, from which
/// ingest reads the index while they arrive ([`IngestWriter::write_data`]):
/// below it the rest comes within a round trip anyway, and a read begun on
/// another thread only adds the hand-over.
const EARLY_LOOKUP_BYTES: u64 = 64 * 1024;
/// Study locations remembered between instances before the cache is reset.
const LOCATION_CACHE: usize = 16 * 1024;
/// Bytes written between two checks of the receiving filesystem's free
/// space while a data set streams in (one `statvfs` each).
pub const FREE_SPACE_CHECK_BYTES: u64 = 64 << 20;

/// Bounds on what one stored instance may cost the archive, checked while
/// its data set streams in, so that a store beyond one fails at once: its
/// temporary file is removed and the rest of its data set is received
/// into nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IngestLimits {
    /// Largest stored file (preamble, meta and data set), in bytes; a
    /// larger one fails with [`IngestError::TooLarge`].
    pub max_instance_bytes: u64,
    /// Most data set bytes before Pixel Data (every byte of a data set
    /// without it): the part the header parse reads into memory. Beyond
    /// it a store fails with [`IngestError::HeaderTooLarge`].
    pub max_header_bytes: u64,
    /// Free bytes the receiving filesystem must keep: checked when a
    /// store begins (placement) and every [`FREE_SPACE_CHECK_BYTES`]
    /// while it streams; below it the store fails with
    /// [`IngestError::LowSpace`].
    pub min_free_bytes: u64,
}

impl Default for IngestLimits {
    /// 4 GiB per instance: above the largest objects modalities produce
    /// (breast tomosynthesis, enhanced multi-frame and whole-slide levels
    /// stay within a few GiB) and the most a deflated data set may inflate
    /// to; 64 MiB before Pixel Data: headers are kilobytes, enhanced
    /// multi-frame functional groups a few MiB; 256 MiB free.
    fn default() -> IngestLimits {
        IngestLimits {
            max_instance_bytes: 4 << 30,
            max_header_bytes: 64 << 20,
            min_free_bytes: 256 << 20,
        }
    }
}

/// What a caller knows about an instance before its data set arrives (from
/// the C-STORE command and the presentation context, or a file's meta).
#[derive(Debug, Clone, Copy)]
pub struct StoreRequest<'a> {
    /// The partition it is stored into.
    pub partition: &'a Partition,
    /// Affected SOP Class UID of the command.
    pub sop_class_uid: &'a str,
    /// Affected SOP Instance UID of the command.
    pub sop_instance_uid: &'a str,
    /// The transfer syntax the data set is encoded in.
    pub transfer_syntax_uid: &'a str,
    /// The sending AE title (`None` for imports).
    pub source_ae: Option<&'a str>,
    /// Whether the sender may replace a stored instance of the same SOP
    /// Instance UID (its device's `allow_replace`). Without it, a partition
    /// whose policy is `accept_latest` keeps the stored instance and
    /// acknowledges, as under `send_success`.
    pub may_replace: bool,
}

/// Why an instance was not stored. The Storage SCP maps each to a C-STORE
/// status of PS3.4 B.2.3 (`scp::store::status_of`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IngestError {
    /// A UID (in the command or the data set) is not a valid UID.
    #[error(transparent)]
    InvalidUid(#[from] InvalidUid),
    /// A required attribute is missing from the data set.
    #[error("the data set has no {0}")]
    MissingAttribute(&'static str),
    /// An identifying attribute is longer than its VR allows.
    #[error("{attribute} is {length} characters long; its VR allows {max}")]
    TooLong {
        /// Which attribute (its keyword).
        attribute: &'static str,
        /// Its length in characters.
        length: usize,
        /// The VR's maximum.
        max: usize,
    },
    /// The data set is incomplete or structurally broken.
    #[error("the data set is incomplete or malformed")]
    Malformed(#[source] WalkError),
    /// The data set could not be parsed.
    #[error("the data set cannot be parsed: {0}")]
    Unparseable(String),
    /// The data set's SOP Class or Instance UID differs from the command's.
    #[error("{attribute} of the data set ({dataset}) differs from the command ({command})")]
    Mismatch {
        /// Which attribute.
        attribute: &'static str,
        /// The value in the command.
        command: String,
        /// The value in the data set.
        dataset: String,
    },
    /// No writable filesystem has room.
    #[error("no writable filesystem has room for new instances")]
    NoFilesystem,
    /// Writing the file failed.
    #[error("storage failure")]
    Storage(#[from] storage::Error),
    /// Indexing failed.
    #[error("index failure")]
    Index(#[source] db::Error),
    /// The durable commit failed.
    #[error("commit failed")]
    Commit(#[source] CommitError),
    /// The instance's study is nearline and could not be restored.
    #[error("the study is nearline and could not be restored")]
    Restore(#[source] Box<crate::services::studies::StudyError>),
    /// The SOP instance is already stored and the partition rejects duplicates.
    #[error("SOP instance {0} is already stored and duplicates are rejected")]
    Duplicate(Uid),
    /// The instance is larger than [`IngestLimits::max_instance_bytes`].
    #[error("the instance exceeds the largest accepted ({limit} bytes)")]
    TooLarge {
        /// The limit, in bytes of the stored file.
        limit: u64,
    },
    /// The elements before Pixel Data exceed [`IngestLimits::max_header_bytes`].
    #[error("the elements before Pixel Data exceed the {limit} bytes accepted")]
    HeaderTooLarge {
        /// The limit, in data set bytes.
        limit: u64,
    },
    /// The receiving filesystem fell below [`IngestLimits::min_free_bytes`]
    /// while the data set streamed in.
    #[error("filesystem {root} has {available} bytes free, below the {required} it must keep")]
    LowSpace {
        /// The filesystem root.
        root: std::path::PathBuf,
        /// Bytes available when measured.
        available: u64,
        /// Bytes it must keep free.
        required: u64,
    },
    /// The study's filesystem may not be written now (its identity marker
    /// is missing: an unmounted share, an empty folder where it should be).
    #[error("filesystem {root} is not written to: {reason}")]
    Refused {
        /// The filesystem root.
        root: std::path::PathBuf,
        /// Why.
        reason: String,
    },
    /// The instance's study is being deleted, or was deleted while the
    /// instance was stored: nothing was kept; sent again, it starts the
    /// study anew.
    #[error("study {0} is being deleted")]
    StudyDeleted(Uid),
}

impl From<HeaderError> for IngestError {
    fn from(error: HeaderError) -> IngestError {
        match error {
            HeaderError::Missing(attribute) => IngestError::MissingAttribute(attribute),
            HeaderError::InvalidUid(invalid) => IngestError::InvalidUid(invalid),
            HeaderError::TooLong {
                attribute,
                length,
                max,
            } => IngestError::TooLong {
                attribute,
                length,
                max,
            },
        }
    }
}

/// What a successful ingest did with the instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// A new instance, indexed.
    Inserted,
    /// It replaced the stored instance of the same UID (accept latest).
    Replaced,
    /// Byte-identical to the stored one: acknowledged, nothing changed.
    Identical,
    /// A duplicate dropped with a success answer (send-success policy).
    DuplicateIgnored,
    /// A duplicate kept aside for a person (compare policy).
    DuplicateKeptAside,
    /// Its patient identity conflicts with the stored study it names: kept
    /// aside in the reconcile queue for a person, the study unchanged.
    HeldForReconcile,
}

impl Stored {
    /// A short stable name (metrics labels, logs).
    pub fn name(self) -> &'static str {
        match self {
            Stored::Inserted => "inserted",
            Stored::Replaced => "replaced",
            Stored::Identical => "identical",
            Stored::DuplicateIgnored => "duplicate_ignored",
            Stored::DuplicateKeptAside => "duplicate_kept_aside",
            Stored::HeldForReconcile => "held_for_reconcile",
        }
    }
}

impl IngestError {
    /// A short stable name of the failure's class (metrics labels):
    /// `rejected_duplicate`, `refused_resources` (space, size), `failed`
    /// (storage, index) or `refused_data` (the instance itself).
    pub fn outcome_name(&self) -> &'static str {
        match self {
            IngestError::Duplicate(_) => "rejected_duplicate",
            IngestError::LowSpace { .. }
            | IngestError::NoFilesystem
            | IngestError::TooLarge { .. }
            | IngestError::StudyDeleted(_) => "refused_resources",
            IngestError::Storage(_) | IngestError::Index(_) | IngestError::Commit(_) => "failed",
            _ => "refused_data",
        }
    }
}

/// What a successful ingest did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreOutcome {
    /// What happened to the instance.
    pub outcome: Stored,
    /// The study it belongs to.
    pub study_uid: Uid,
    /// The series it belongs to.
    pub series_uid: Uid,
    /// Bytes of the stored file.
    pub file_size: u64,
    /// Its Patient ID (empty when absent), for the audit trail.
    pub patient_id: String,
}

/// The ingest service. Cheap to clone; shared by every association.
#[derive(Debug, Clone)]
pub struct Ingest {
    inner: Arc<Inner>,
    limits: IngestLimits,
    /// Brings a nearline study online before an instance of it is stored.
    restorer: Option<crate::services::studies::Restorer>,
}

#[derive(Debug)]
struct Inner {
    index: Arc<dyn IndexStore>,
    storage: Arc<dyn StorageBackend>,
    committer: GroupCommitter,
    filesystems: RwLock<Vec<Filesystem>>,
    locations: Mutex<HashMap<(PartitionId, Uid), StudyLocation>>,
    placement: Arc<dyn Placement>,
}

impl Ingest {
    /// Builds the service and starts its group committer. New studies go to
    /// the writable filesystem of the lowest tier with the most room, never
    /// below `min_free_bytes` free.
    pub fn new(
        index: Arc<dyn IndexStore>,
        storage: Arc<dyn StorageBackend>,
        min_free_bytes: u64,
    ) -> Result<Ingest, db::Error> {
        Ingest::with_study_process(index, storage, min_free_bytes, None)
    }

    /// The same service (sharing its committer and caches) with other
    /// limits on each store.
    pub fn with_limits(mut self, limits: IngestLimits) -> Ingest {
        self.limits = limits;
        self
    }

    /// The same service, restoring a nearline study (through `restorer`)
    /// before an instance of it is stored: the instance joins the study's
    /// restored files instead of starting a second location.
    pub fn with_restorer(mut self, restorer: crate::services::studies::Restorer) -> Ingest {
        self.restorer = Some(restorer);
        self
    }

    /// The limits each store is held to.
    pub fn limits(&self) -> IngestLimits {
        self.limits
    }

    /// As [`Ingest::new`], and each group commit schedules, in its own index
    /// transaction, one StudyProcess item per distinct study of the batch
    /// (or appends to the study's waiting one), due once the study has been
    /// quiet for the hook's delay.
    pub fn with_study_process(
        index: Arc<dyn IndexStore>,
        storage: Arc<dyn StorageBackend>,
        min_free_bytes: u64,
        study_process: Option<StudyProcessHook>,
    ) -> Result<Ingest, db::Error> {
        let placement = Arc::new(LowestTierMostRoom { min_free_bytes });
        let ingest = Ingest::with_placement(index, storage, placement, study_process)?;
        let limits = IngestLimits {
            min_free_bytes,
            ..ingest.limits
        };
        Ok(ingest.with_limits(limits))
    }

    /// As [`Ingest::with_study_process`], with the [`Placement`] that
    /// decides which filesystem new studies go to, and the default
    /// [`IngestLimits`] (see [`Ingest::with_limits`]).
    pub fn with_placement(
        index: Arc<dyn IndexStore>,
        storage: Arc<dyn StorageBackend>,
        placement: Arc<dyn Placement>,
        study_process: Option<StudyProcessHook>,
    ) -> Result<Ingest, db::Error> {
        let filesystems = index.filesystems()?;
        let committer = GroupCommitter::start(index.clone(), storage.clone(), study_process);
        Ok(Ingest {
            inner: Arc::new(Inner {
                index,
                storage,
                committer,
                filesystems: RwLock::new(filesystems),
                locations: Mutex::new(HashMap::new()),
                placement,
            }),
            limits: IngestLimits::default(),
            restorer: None,
        })
    }

    /// Re-reads the filesystem list from the index.
    pub fn refresh_filesystems(&self) -> Result<(), db::Error> {
        let filesystems = self.inner.index.filesystems()?;
        *self
            .inner
            .filesystems
            .write()
            .unwrap_or_else(|p| p.into_inner()) = filesystems;
        Ok(())
    }

    /// The index this service writes to.
    pub fn index(&self) -> &Arc<dyn IndexStore> {
        &self.inner.index
    }

    /// Opens a writer for one instance and writes its file meta group.
    pub fn begin(&self, request: StoreRequest<'_>) -> Result<IngestWriter, IngestError> {
        let sop_class_uid = parse_uid("SOP Class UID", request.sop_class_uid)?;
        let sop_instance_uid = parse_uid("SOP Instance UID", request.sop_instance_uid)?;
        let transfer_syntax_uid = parse_uid("Transfer Syntax UID", request.transfer_syntax_uid)?;
        let filesystem = self.choose_filesystem()?;
        let object = self.inner.storage.begin_write(&filesystem)?;
        let mut writer = IngestWriter {
            object,
            filesystem,
            hasher: blake3::Hasher::new(),
            prefix: Vec::with_capacity(4096),
            walker: Some(
                DataSetWalker::for_transfer_syntax(transfer_syntax_uid.as_str())
                    .with_header_limit(self.limits.max_header_bytes),
            ),
            written: 0,
            failure: None,
            storage: self.inner.storage.clone(),
            placement: self.inner.placement.clone(),
            limits: self.limits,
            next_space_check: FREE_SPACE_CHECK_BYTES,
            partition: request.partition.clone(),
            sop_class_uid,
            sop_instance_uid,
            transfer_syntax_uid,
            source_ae: request.source_ae.map(str::to_string),
            may_replace: request.may_replace,
            index: self.inner.index.clone(),
            early: Early::NotYet,
        };
        let meta = file_meta(&writer, request.source_ae)?;
        writer.put(&[0u8; 128]);
        writer.put(&meta);
        if let Some(error) = writer.failure.take() {
            return Err(error);
        }
        Ok(writer)
    }

    /// Checks, places and commits an instance whose data set has been
    /// written completely. On `Ok` the instance is durable and queryable.
    pub fn finish(&self, mut writer: IngestWriter) -> Result<StoreOutcome, IngestError> {
        if let Some(error) = writer.failure.take() {
            return Err(error);
        }
        if let Some(walker) = writer.walker.take() {
            walker.finish().map_err(IngestError::Malformed)?;
        }
        let (header, early) = match std::mem::replace(&mut writer.early, Early::Done(None)) {
            Early::Done(Some(early)) => (early.header, Some(early.lookup)),
            _ => (writer.parse_header()?, None),
        };
        let mut record = self.record_for(&writer, &header)?;
        let mut key = InstanceKey {
            location: record.location.clone(),
            series_uid: record.series.series_uid.clone(),
            sop_instance_uid: record.instance.sop_instance_uid.clone(),
        };
        // Read before the file is placed, in one index call (one round trip
        // on PostgreSQL): the study's deletions, checked again in the
        // commit (a deletion of the study in between may remove the file),
        // the stored instance and the study's patient.
        let lookup = || {
            self.inner
                .index
                .ingest_lookup(
                    record.partition,
                    &key.location.study_uid,
                    &key.sop_instance_uid,
                )
                .map_err(IngestError::Index)
        };
        // An early read asked for this header's study and the command's SOP
        // Instance UID, which `record_for` checked against the header.
        let mut looked_up = match early {
            Some(early) => early.wait().or_else(|error| {
                tracing::debug!(error = %error_chain(&error), "the early index read failed, reading again");
                lookup()
            })?,
            None => lookup()?,
        };
        if let (None, Some(restorer)) = (looked_up.deletions.filesystem, &self.restorer) {
            // A nearline study is restored first; the location is then
            // followed below as after a migration.
            if restorer
                .ensure_online(&writer.partition, &key.location.study_uid, &mut || {})
                .map_err(|e| IngestError::Restore(Box::new(e)))?
            {
                looked_up = lookup()?;
            }
        }
        let IngestLookup {
            deletions,
            existing,
            study_patient,
        } = looked_up;
        let file_size = record.instance.file_size;
        let early = |outcome| StoreOutcome {
            outcome,
            study_uid: record.study.study_uid.clone(),
            series_uid: record.series.series_uid.clone(),
            file_size,
            patient_id: record.patient.patient_id.clone(),
        };
        if let Some(existing) = &existing {
            if existing.digest == record.instance.digest {
                return Ok(early(Stored::Identical));
            }
            match writer.partition.duplicate_policy {
                DuplicatePolicy::SendSuccess => return Ok(early(Stored::DuplicateIgnored)),
                DuplicatePolicy::AcceptLatest if !writer.may_replace => {
                    tracing::info!(
                        sop_instance_uid = %key.sop_instance_uid,
                        source_ae = writer.source_ae.as_deref().unwrap_or(""),
                        "duplicate SOP instance kept as stored: the caller may not replace"
                    );
                    return Ok(early(Stored::DuplicateIgnored));
                }
                DuplicatePolicy::Reject => {
                    return Err(IngestError::Duplicate(key.sop_instance_uid.clone()))
                }
                DuplicatePolicy::Compare => {
                    self.keep_aside(writer, &record, &key)?;
                    return Ok(early(Stored::DuplicateKeptAside));
                }
                DuplicatePolicy::AcceptLatest => {}
            }
        }
        if self.conflicts_with_study(&record, study_patient)? {
            self.hold_for_reconcile(writer, &record, &key)?;
            return Ok(early(Stored::HeldForReconcile));
        }
        if deletions.deleting {
            return Err(IngestError::StudyDeleted(key.location.study_uid.clone()));
        }
        if deletions
            .filesystem
            .is_some_and(|fs| fs != key.location.filesystem)
        {
            // A migration moved the study since its location was cached:
            // follow it.
            self.inner
                .locations
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&(record.partition, key.location.study_uid.clone()));
            let location = self.location(
                &writer.partition,
                &key.location.study_uid,
                record.study.study_date.as_deref(),
                writer.filesystem.id,
            )?;
            record.location = location.clone();
            key.location = location;
        }
        record.deletions_seen = Some(deletions.count);
        let study_uid = record.study.study_uid.clone();
        let series_uid = record.series.series_uid.clone();
        let patient_id = record.patient.patient_id.clone();
        let writer_partition = record.partition;
        let outcome = match &existing {
            None => self.commit_new(writer, record, &key, true)?,
            Some(old) => self.commit_replacement(writer, record, &key, old)?,
        };
        let outcome = match outcome {
            InsertOutcome::Inserted => Stored::Inserted,
            InsertOutcome::Replaced => Stored::Replaced,
            InsertOutcome::StudyDeleted => {
                self.remove_refused(writer_partition, &key);
                return Err(IngestError::StudyDeleted(study_uid));
            }
        };
        Ok(StoreOutcome {
            outcome,
            study_uid,
            series_uid,
            file_size,
            patient_id,
        })
    }

    /// Places a new instance at its path and commits its row. `deferred`
    /// (when the storage offers it): the group commit overlaps its data
    /// sync with the batch's journal, and renames it into place once the
    /// journal is durable, before the directory syncs and transaction
    /// (nothing was acknowledged at that path, so recovery may remove what
    /// is not whole).
    fn commit_new(
        &self,
        writer: IngestWriter,
        record: InstanceRecord,
        key: &InstanceKey,
        deferred: bool,
    ) -> Result<InsertOutcome, IngestError> {
        if let Some(reason) = self.inner.placement.refusal(key.location.filesystem) {
            let root = self.filesystem(key.location.filesystem)?.spec.path;
            return Err(IngestError::Refused { root, reason });
        }
        let study_filesystem = key.location.filesystem;
        let file_size = record.instance.file_size;
        let pending = if key.location.filesystem == writer.filesystem.id {
            match self.inner.storage.deferred().filter(|_| deferred) {
                Some(deferral) => deferral.persist_deferred(writer.object, key)?,
                None => writer.object.persist(key)?,
            }
        } else {
            // The study already lives on another filesystem: keep it whole.
            let target = self.filesystem(key.location.filesystem)?;
            let mut staged = key.clone();
            staged.location.filesystem = writer.filesystem.id;
            let pending = writer.object.persist(&staged)?;
            self.inner.storage.sync(pending)?;
            self.inner
                .storage
                .move_instance(&writer.filesystem, &target, &staged, key)?;
            storage::PendingSync::default()
        };
        let outcome = self
            .inner
            .committer
            .commit(record, pending)
            .map_err(IngestError::Commit)?;
        if outcome == InsertOutcome::Inserted {
            self.inner.placement.stored(study_filesystem, file_size);
        }
        Ok(outcome)
    }

    /// Replaces a stored instance (accept latest, a caller allowed to). At
    /// the stored file's own path, the new copy is written under a name of
    /// its own, its row committed, and only then does it take the stored
    /// file's place: until the commit the acknowledged file and its row are
    /// untouched, so a failed commit or a crash keeps them. See
    /// ARCHITECTURE.md, invariants.
    fn commit_replacement(
        &self,
        writer: IngestWriter,
        record: InstanceRecord,
        key: &InstanceKey,
        old: &crate::model::StoredInstance,
    ) -> Result<InsertOutcome, IngestError> {
        let old_key = InstanceKey {
            location: old.location.clone(),
            series_uid: old.series_uid.clone(),
            sop_instance_uid: old.sop_instance_uid.clone(),
        };
        if old_key != *key {
            // Another study or series: the new path holds nothing to lose,
            // and the old file goes once the new row is committed.
            let outcome = self.commit_new(writer, record, key, false)?;
            if outcome != InsertOutcome::StudyDeleted {
                self.remove_replaced(old, key);
            }
            return Ok(outcome);
        }
        let outcome = if key.location.filesystem == writer.filesystem.id {
            let filesystem = writer.filesystem.clone();
            let variant = next_variant();
            let pending = writer.object.persist_aside(key, variant)?;
            let committed = self.inner.committer.commit(record, pending);
            let outcome = match committed {
                Ok(outcome) => outcome,
                Err(error) => {
                    if let Err(e) = self.inner.storage.delete_aside(&filesystem, key, variant) {
                        tracing::warn!(sop_instance_uid = %key.sop_instance_uid, error = %e, "cannot remove the uncommitted replacement");
                    }
                    return Err(IngestError::Commit(error));
                }
            };
            if outcome == InsertOutcome::StudyDeleted {
                // Refused: the new copy goes, the stored file is the study's
                // deletion's to remove.
                if let Err(e) = self.inner.storage.delete_aside(&filesystem, key, variant) {
                    tracing::warn!(sop_instance_uid = %key.sop_instance_uid, error = %e, "cannot remove a refused replacement");
                }
                return Ok(outcome);
            }
            // The row describes the new copy from here on; a failure or a
            // crash before this rename leaves the stored file under it until
            // the study's StudyProcess finds the mismatch and reprocesses.
            self.inner
                .storage
                .replace_with_aside(&filesystem, key, variant)?;
            outcome
        } else {
            // The study lives on another filesystem: the new copy waits on
            // the receiving one (where the study has no files) and is moved
            // over the stored file once committed.
            let target = self.filesystem(key.location.filesystem)?;
            let mut staged = key.clone();
            staged.location.filesystem = writer.filesystem.id;
            let receiving = writer.filesystem.clone();
            let pending = writer.object.persist(&staged)?;
            let outcome = match self.inner.committer.commit(record, pending) {
                Ok(outcome) => outcome,
                Err(error) => {
                    if let Err(e) = self.inner.storage.delete(&receiving, &staged) {
                        tracing::warn!(sop_instance_uid = %key.sop_instance_uid, error = %e, "cannot remove the uncommitted replacement");
                    }
                    return Err(IngestError::Commit(error));
                }
            };
            if outcome == InsertOutcome::StudyDeleted {
                if let Err(e) = self.inner.storage.delete(&receiving, &staged) {
                    tracing::warn!(sop_instance_uid = %key.sop_instance_uid, error = %e, "cannot remove a refused replacement");
                }
                return Ok(outcome);
            }
            self.inner
                .storage
                .move_instance(&receiving, &target, &staged, key)?;
            outcome
        };
        Ok(outcome)
    }

    /// Whether the instance's patient identity conflicts with the stored
    /// study it names. An instance of a study edited since it was sent
    /// carries the values an edit replaced: those are mapped through the
    /// study's completed edits first (StudyProcess applies the edits to it
    /// later), so a late arrival is no conflict.
    fn conflicts_with_study(
        &self,
        record: &InstanceRecord,
        stored: Option<PatientAttrs>,
    ) -> Result<bool, IngestError> {
        let index = &self.inner.index;
        let Some(stored) = stored else {
            return Ok(false);
        };
        let stored = PatientIdentity::of(&stored);
        let mut incoming = PatientIdentity::of(&record.patient);
        if incoming.same_as(&stored) {
            return Ok(false);
        }
        let edits = index
            .study_edits(record.partition, &record.study.study_uid)
            .map_err(IngestError::Index)?;
        for edit in edits.iter().filter(|e| e.status == EditStatus::Completed) {
            for change in &edit.changes {
                let value = match change.attribute {
                    EditableAttribute::PatientId => {
                        if same_text(Some(&incoming.patient_id), change.old_value.as_deref()) {
                            incoming.patient_id = change.new_value.clone();
                        }
                        continue;
                    }
                    EditableAttribute::IssuerOfPatientId => &mut incoming.issuer_of_patient_id,
                    EditableAttribute::PatientName => &mut incoming.patient_name,
                    EditableAttribute::PatientBirthDate => &mut incoming.birth_date,
                    _ => continue,
                };
                if same_text(value.as_deref(), change.old_value.as_deref()) {
                    *value = Some(change.new_value.clone());
                }
            }
        }
        Ok(!incoming.same_as(&stored))
    }

    /// Keeps an instance whose patient identity conflicts with its study
    /// aside and records it in the reconcile queue.
    fn hold_for_reconcile(
        &self,
        writer: IngestWriter,
        record: &InstanceRecord,
        key: &InstanceKey,
    ) -> Result<(), IngestError> {
        let mut aside_key = key.clone();
        aside_key.location.filesystem = writer.filesystem.id;
        let variant = next_variant();
        let pending = writer.object.persist_aside(&aside_key, variant)?;
        self.inner.storage.sync(pending)?;
        let entry = ReconcileEntry {
            id: 0,
            partition: record.partition,
            sop_instance_uid: key.sop_instance_uid.clone(),
            sop_class_uid: record.instance.sop_class_uid.clone(),
            transfer_syntax_uid: record.instance.transfer_syntax_uid.clone(),
            location: aside_key.location.clone(),
            series_uid: key.series_uid.clone(),
            variant,
            file_size: record.instance.file_size,
            digest: record.instance.digest.clone(),
            source_ae: record.instance.source_ae.clone(),
            received_at_ms: crate::db::studies::now_ms(),
            identity: PatientIdentity::of(&record.patient),
        };
        let id = self
            .inner
            .index
            .hold_for_reconcile(&entry)
            .map_err(IngestError::Index)?;
        tracing::warn!(
            reconcile = id,
            sop_instance_uid = %key.sop_instance_uid,
            study_uid = %key.location.study_uid,
            "patient identity conflicts with the stored study: instance held for reconciliation"
        );
        Ok(())
    }

    /// Persists a duplicate beside the stored instance and records it.
    fn keep_aside(
        &self,
        writer: IngestWriter,
        record: &InstanceRecord,
        key: &InstanceKey,
    ) -> Result<(), IngestError> {
        if key.location.filesystem != writer.filesystem.id {
            // Rare: the study lives on another filesystem than the one the
            // temporary file was written to; keep the copy with the study's.
            tracing::warn!(sop_instance_uid = %key.sop_instance_uid, "duplicate kept aside on the receiving filesystem");
        }
        let mut aside_key = key.clone();
        aside_key.location.filesystem = writer.filesystem.id;
        let received_at_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        let variant = next_variant();
        let pending = writer.object.persist_aside(&aside_key, variant)?;
        self.inner.storage.sync(pending)?;
        self.inner
            .index
            .record_duplicate(&DuplicateRecord {
                partition: record.partition,
                sop_instance_uid: key.sop_instance_uid.clone(),
                location: aside_key.location.clone(),
                series_uid: key.series_uid.clone(),
                variant,
                file_size: record.instance.file_size,
                digest: record.instance.digest.clone(),
                source_ae: record.instance.source_ae.clone(),
                received_at_ms,
            })
            .map_err(IngestError::Index)?;
        tracing::warn!(
            sop_instance_uid = %key.sop_instance_uid,
            study_uid = %key.location.study_uid,
            "duplicate SOP instance kept aside for reconciliation"
        );
        Ok(())
    }

    /// After the commit refused the instance (its study was deleted): removes
    /// its file, unless a row names that path meanwhile (the same instance
    /// stored again and acknowledged: the file is that store's).
    fn remove_refused(&self, partition: PartitionId, key: &InstanceKey) {
        let indexed = self
            .inner
            .index
            .instance(partition, &key.sop_instance_uid)
            .map(|found| {
                found.is_some_and(|stored| {
                    stored.location == key.location && stored.series_uid == key.series_uid
                })
            });
        let result = match indexed {
            Ok(true) => return,
            Ok(false) => self
                .filesystem(key.location.filesystem)
                .map_err(|e| error_chain(&e))
                .and_then(|fs| {
                    self.inner
                        .storage
                        .delete(&fs, key)
                        .map_err(|e| error_chain(&e))
                }),
            Err(e) => Err(error_chain(&e)),
        };
        if let Err(error) = result {
            tracing::warn!(sop_instance_uid = %key.sop_instance_uid, %error, "cannot remove the file of an instance whose study was deleted");
        }
    }

    /// After a replacement is durable and indexed: removes the old file when
    /// it was at another path (the instance moved study or series).
    fn remove_replaced(&self, old: &crate::model::StoredInstance, new_key: &InstanceKey) {
        let old_key = InstanceKey {
            location: old.location.clone(),
            series_uid: old.series_uid.clone(),
            sop_instance_uid: old.sop_instance_uid.clone(),
        };
        if old_key == *new_key {
            return;
        }
        let result = self
            .filesystem(old_key.location.filesystem)
            .map_err(|e| e.to_string())
            .and_then(|fs| {
                self.inner
                    .storage
                    .delete(&fs, &old_key)
                    .map_err(|e| e.to_string())
            });
        if let Err(error) = result {
            tracing::warn!(sop_instance_uid = %old_key.sop_instance_uid, %error, "cannot remove the replaced file");
        }
    }

    fn choose_filesystem(&self) -> Result<Filesystem, IngestError> {
        let filesystems = self
            .inner
            .filesystems
            .read()
            .unwrap_or_else(|p| p.into_inner());
        self.inner
            .placement
            .place(&filesystems, self.inner.storage.as_ref())
            .ok_or(IngestError::NoFilesystem)
    }

    fn filesystem(&self, id: FilesystemId) -> Result<Filesystem, IngestError> {
        let known = self
            .inner
            .filesystems
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|fs| fs.id == id)
            .cloned();
        match known {
            Some(fs) => Ok(fs),
            None => {
                self.refresh_filesystems().map_err(IngestError::Index)?;
                self.inner
                    .filesystems
                    .read()
                    .unwrap_or_else(|p| p.into_inner())
                    .iter()
                    .find(|fs| fs.id == id)
                    .cloned()
                    .ok_or(IngestError::NoFilesystem)
            }
        }
    }

    /// The study's location: remembered, indexed, or new on `filesystem`.
    fn location(
        &self,
        partition: &Partition,
        study_uid: &Uid,
        study_date: Option<&str>,
        filesystem: FilesystemId,
    ) -> Result<StudyLocation, IngestError> {
        let cache_key = (partition.id, study_uid.clone());
        let cache = || {
            self.inner
                .locations
                .lock()
                .unwrap_or_else(|p| p.into_inner())
        };
        if let Some(location) = cache().get(&cache_key) {
            return Ok(location.clone());
        }
        // Not under the cache lock: a claim may wait for the index writer,
        // and other associations' lookups must not wait with it. Claiming a
        // new study's location in the index makes every association and
        // every process (cluster nodes, an import) agree on it before any
        // file is placed.
        let location = match self
            .inner
            .index
            .study_location(partition.id, study_uid)
            .map_err(IngestError::Index)?
        {
            Some(location) => location,
            None => self
                .inner
                .index
                .claim_study_location(
                    partition.id,
                    &StudyLocation {
                        filesystem,
                        partition_folder: partition.folder.clone(),
                        date_folder: study_date_folder(study_date),
                        study_uid: study_uid.clone(),
                    },
                )
                .map_err(IngestError::Index)?,
        };
        let mut cache = cache();
        if cache.len() >= LOCATION_CACHE {
            cache.clear();
        }
        cache.insert(cache_key, location.clone());
        Ok(location)
    }

    fn record_for(
        &self,
        writer: &IngestWriter,
        header: &DefaultDicomObject,
    ) -> Result<InstanceRecord, IngestError> {
        let sop_class = required_uid(header, tags::SOP_CLASS_UID, "SOP Class UID")?;
        let sop_instance = required_uid(header, tags::SOP_INSTANCE_UID, "SOP Instance UID")?;
        if sop_class != writer.sop_class_uid {
            return Err(IngestError::Mismatch {
                attribute: "SOP Class UID",
                command: writer.sop_class_uid.to_string(),
                dataset: sop_class.to_string(),
            });
        }
        if sop_instance != writer.sop_instance_uid {
            return Err(IngestError::Mismatch {
                attribute: "SOP Instance UID",
                command: writer.sop_instance_uid.to_string(),
                dataset: sop_instance.to_string(),
            });
        }
        let study_uid = required_uid(header, tags::STUDY_INSTANCE_UID, "Study Instance UID")?;
        required_uid(header, tags::SERIES_INSTANCE_UID, "Series Instance UID")?;
        let study_date = header::text(header, tags::STUDY_DATE);
        let location = self.location(
            &writer.partition,
            &study_uid,
            study_date.as_deref(),
            writer.filesystem.id,
        )?;
        let facts = header::RecordFacts {
            partition: writer.partition.id,
            location,
            transfer_syntax_uid: writer.transfer_syntax_uid.clone(),
            file_size: writer.written,
            digest: writer.hasher.clone().finalize().to_hex().to_string(),
            source_ae: writer.source_ae.clone(),
        };
        Ok(header::instance_record(header, facts)?)
    }
}

/// A variant name for a copy kept aside (a duplicate, a held instance, a
/// replacement awaiting its commit): the time in microseconds, made unique
/// within this process, so two copies of one instance never share a name.
fn next_variant() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0);
    let mut last = LAST.load(Ordering::Relaxed);
    loop {
        let next = now.max(last + 1);
        match LAST.compare_exchange_weak(last, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return next,
            Err(seen) => last = seen,
        }
    }
}

/// A streamed write of one instance's data set. Writes never fail: the
/// first failure (an IO error, a limit of [`IngestLimits`] crossed, a
/// structural fault) is remembered and reported by [`Ingest::finish`], so
/// a receiver can keep draining the network until the message ends. From
/// that failure on the temporary file is gone and later bytes are dropped.
pub struct IngestWriter {
    object: Box<dyn ObjectWriter>,
    filesystem: Filesystem,
    hasher: blake3::Hasher,
    /// The file from its `DICM` magic on, up to [`HEADER_PREFIX`] bytes.
    prefix: Vec<u8>,
    walker: Option<DataSetWalker>,
    written: u64,
    failure: Option<IngestError>,
    storage: Arc<dyn StorageBackend>,
    placement: Arc<dyn Placement>,
    limits: IngestLimits,
    /// File size at which free space is measured next.
    next_space_check: u64,
    partition: Partition,
    sop_class_uid: Uid,
    sop_instance_uid: Uid,
    transfer_syntax_uid: Uid,
    source_ae: Option<String>,
    may_replace: bool,
    index: Arc<dyn IndexStore>,
    early: Early,
}

/// The header parsed, and the index read begun, while the pixel data of a
/// large instance still arrives (see [`EARLY_LOOKUP_BYTES`]).
enum Early {
    /// The header is not known whole yet.
    NotYet,
    /// Begun, or not worth beginning: [`Ingest::finish`] parses and reads.
    Done(Option<Box<EarlyLookup>>),
}

/// What [`Early::Done`] holds when the read was begun: the parsed header
/// and the read of its study.
struct EarlyLookup {
    header: DefaultDicomObject,
    lookup: PendingLookup,
}

impl std::fmt::Debug for IngestWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IngestWriter")
            .field("sop_instance_uid", &self.sop_instance_uid)
            .field("written", &self.written)
            .finish()
    }
}

impl IngestWriter {
    /// Appends data set bytes (received verbatim).
    pub fn write_data(&mut self, bytes: &[u8]) {
        if self.failure.is_some() {
            return;
        }
        let size = self.written.saturating_add(bytes.len() as u64);
        if size > self.limits.max_instance_bytes {
            return self.fail(IngestError::TooLarge {
                limit: self.limits.max_instance_bytes,
            });
        }
        if let Some(walker) = self.walker.as_mut() {
            walker.feed(bytes);
            // A fault is final: nothing after it is worth a byte of disk.
            match walker.error() {
                None => {}
                Some(WalkError::HeaderTooLarge { limit }) => {
                    let limit = *limit;
                    return self.fail(IngestError::HeaderTooLarge { limit });
                }
                Some(fault) => {
                    let fault = fault.clone();
                    return self.fail(IngestError::Malformed(fault));
                }
            }
        }
        self.put(bytes);
        if matches!(self.early, Early::NotYet) && self.failure.is_none() {
            self.begin_lookup();
        }
        if self.failure.is_none() && self.written >= self.next_space_check {
            self.next_space_check = self.written.saturating_add(FREE_SPACE_CHECK_BYTES);
            self.check_free_space();
        }
    }

    /// Once the header is whole and at least [`EARLY_LOOKUP_BYTES`] of the
    /// value under way (pixel data, or a fragment of it) are still to
    /// come: parses the header and begins the index read that
    /// [`Ingest::finish`] would make, so that its round trip overlaps the
    /// rest of the transfer. Both happen at most once; a header that does
    /// not parse here is left to `finish`, which reports it.
    fn begin_lookup(&mut self) {
        let Some(left) = self.walker.as_ref().and_then(DataSetWalker::past_header) else {
            return;
        };
        if left < EARLY_LOOKUP_BYTES {
            return;
        }
        let early = self.parse_prefix().ok().and_then(|header| {
            let study_uid =
                header::required_uid(&header, tags::STUDY_INSTANCE_UID, "Study Instance UID")
                    .ok()?;
            let lookup = self.index.begin_ingest_lookup(
                self.partition.id,
                &study_uid,
                &self.sop_instance_uid,
            );
            Some(Box::new(EarlyLookup { header, lookup }))
        });
        self.early = Early::Done(early);
    }

    /// Fails the store: the temporary file is removed at once and later
    /// bytes are dropped.
    fn fail(&mut self, failure: IngestError) {
        self.object = Box::new(Discarded);
        self.walker = None;
        self.prefix = Vec::new();
        self.failure = Some(failure);
    }

    /// Fails the store if the receiving filesystem keeps less than it must.
    fn check_free_space(&mut self) {
        match self
            .placement
            .usage(&self.filesystem, self.storage.as_ref())
        {
            Ok(usage) if usage.available_bytes < self.limits.min_free_bytes => {
                self.fail(IngestError::LowSpace {
                    root: self.filesystem.spec.path.clone(),
                    available: usage.available_bytes,
                    required: self.limits.min_free_bytes,
                })
            }
            Ok(_) => {}
            // Unmeasurable now: the next check, or ENOSPC, decides.
            Err(error) => tracing::warn!(
                filesystem = %self.filesystem.spec.path.display(),
                error = %error_chain(&error),
                "cannot measure free space"
            ),
        }
    }

    /// Bytes of the file so far (preamble and meta included).
    pub fn len(&self) -> u64 {
        self.written
    }

    /// Whether nothing has been written (never true after `begin`).
    pub fn is_empty(&self) -> bool {
        self.written == 0
    }

    fn put(&mut self, bytes: &[u8]) {
        if self.failure.is_some() {
            return;
        }
        if let Err(source) = self.object.write_all(bytes) {
            let path = self.filesystem.spec.path.clone();
            let full = matches!(source.raw_os_error(), Some(code) if code == libc::ENOSPC || code == libc::EDQUOT);
            let error = if full {
                storage::Error::Full { root: path, source }
            } else {
                storage::Error::Io {
                    operation: "writing",
                    path,
                    source,
                }
            };
            self.fail(IngestError::Storage(error));
            return;
        }
        self.hasher.update(bytes);
        let skip_preamble = 128u64.saturating_sub(self.written) as usize;
        if self.prefix.len() < HEADER_PREFIX && bytes.len() > skip_preamble {
            let wanted = HEADER_PREFIX - self.prefix.len();
            let piece = &bytes[skip_preamble..];
            self.prefix
                .extend_from_slice(&piece[..piece.len().min(wanted)]);
        }
        self.written += bytes.len() as u64;
    }

    /// Parses the file's meta and data set up to Pixel Data.
    fn parse_header(&mut self) -> Result<DefaultDicomObject, IngestError> {
        match self.parse_prefix() {
            Ok(object) => return Ok(object),
            Err(error) if self.written <= 128 + self.prefix.len() as u64 => {
                return Err(IngestError::Unparseable(error_chain(&error)));
            }
            Err(_) => {}
        }
        let mut reader = self.object.read_back()?;
        let mut preamble = [0u8; 128];
        reader
            .read_exact(&mut preamble)
            .map_err(|e| IngestError::Unparseable(e.to_string()))?;
        header_options()
            .from_reader(reader)
            .map_err(|e| IngestError::Unparseable(error_chain(&e)))
    }

    /// Parses the meta and data set up to Pixel Data from the in-memory
    /// prefix alone.
    fn parse_prefix(&self) -> Result<DefaultDicomObject, dicom_object::ReadError> {
        header_options().from_reader(&self.prefix[..])
    }
}

/// How a stored file's header is parsed: up to Pixel Data.
fn header_options() -> OpenFileOptions {
    OpenFileOptions::new().read_until(tags::PIXEL_DATA)
}

/// What a failed store writes to: its temporary file is gone, and every
/// use of it is an error (a failed writer's object is never persisted:
/// [`Ingest::finish`] returns its failure first).
struct Discarded;

impl Discarded {
    fn error() -> storage::Error {
        storage::Error::NotFound {
            what: "the discarded temporary file of a failed store".into(),
        }
    }
}

impl Write for Discarded {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        Err(io::Error::other(Discarded::error()))
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl ObjectWriter for Discarded {
    fn len(&self) -> u64 {
        0
    }

    fn read_back(&mut self) -> Result<Box<dyn Read + '_>, storage::Error> {
        Err(Discarded::error())
    }

    fn persist(self: Box<Self>, _: &InstanceKey) -> Result<storage::PendingSync, storage::Error> {
        Err(Discarded::error())
    }

    fn persist_aside(
        self: Box<Self>,
        _: &InstanceKey,
        _: u64,
    ) -> Result<storage::PendingSync, storage::Error> {
        Err(Discarded::error())
    }

    fn persist_series_metadata(
        self: Box<Self>,
        _: &storage::SeriesKey,
    ) -> Result<storage::PendingSync, storage::Error> {
        Err(Discarded::error())
    }
}

impl Write for IngestWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_data(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn file_meta(writer: &IngestWriter, source_ae: Option<&str>) -> Result<Vec<u8>, IngestError> {
    let mut builder = dicom_object::meta::FileMetaTableBuilder::new()
        .media_storage_sop_class_uid(writer.sop_class_uid.as_str())
        .media_storage_sop_instance_uid(writer.sop_instance_uid.as_str())
        .transfer_syntax(writer.transfer_syntax_uid.as_str())
        .implementation_class_uid(IMPLEMENTATION_CLASS_UID)
        .implementation_version_name(IMPLEMENTATION_VERSION_NAME);
    if let Some(ae) = source_ae.filter(|ae| !ae.trim().is_empty()) {
        builder = builder.source_application_entity_title(ae.trim());
    }
    let meta = builder
        .build()
        .map_err(|e| IngestError::Unparseable(error_chain(&e)))?;
    let mut bytes = b"DICM".to_vec();
    meta.write(&mut bytes)
        .map_err(|e| IngestError::Unparseable(error_chain(&e)))?;
    Ok(bytes)
}

fn parse_uid(attribute: &'static str, value: &str) -> Result<Uid, IngestError> {
    Ok(header::parse_uid(attribute, value)?)
}

fn required_uid(
    header: &DefaultDicomObject,
    tag: Tag,
    attribute: &'static str,
) -> Result<Uid, IngestError> {
    Ok(header::required_uid(header, tag, attribute)?)
}
