//! The index: the database seam.
//!
//! [`IndexStore`] is the narrow trait the services call; it speaks
//! [`crate::model`] values and never exposes SQL, rows or connections.
//! Backends sit beside it: [`sqlite`] (rusqlite, the embedded default).
//! A PostgreSQL backend implements the same trait.
//!
//! Every write method is one transaction: [`IndexStore::insert_instances`]
//! takes a whole batch so the ingest group committer pays one commit for many
//! instances. Transient contention (SQLite busy, serialization failures) is
//! retried inside the backend and never reaches callers.

pub mod archive;
mod matching;
pub mod nodes;
mod planner;
#[cfg(feature = "postgres")]
pub mod postgres;
mod rows;
mod sql;
#[cfg(feature = "sqlite")]
pub mod sqlite;
pub mod studies;
pub mod work;

#[cfg(test)]
pub(crate) mod conformance;
#[cfg(test)]
pub(crate) mod fixtures;

use std::ops::ControlFlow;

use crate::model::query::{Match, Query};
use crate::model::work::{NewWorkItem, Timestamp, WorkKind, WorkPriority, WorkUid};
use crate::model::{
    AeTitle, DeviceSpec, DuplicateRecord, Filesystem, FilesystemId, FilesystemSpec, IndexCounts,
    InsertOutcome, InstanceRecord, PartitionId, PartitionSpec, PatientAttrs, ReconcileEntry,
    StoredInstance, StudyDeletions, StudyLocation, Uid,
};

/// Errors of the index backends.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The database could not be opened or reached.
    #[error("cannot open the index database {url}")]
    Open {
        /// The URL or path that was tried.
        url: String,
        /// The underlying failure.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A schema migration failed.
    #[error("schema migration to version {version} failed")]
    Migrate {
        /// The version being applied.
        version: u32,
        /// The underlying failure.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The database holds a newer schema than this build understands.
    #[error("the index schema is version {found}, newer than this build's {supported}")]
    SchemaTooNew {
        /// Version found in the database.
        found: u32,
        /// Newest version this build knows.
        supported: u32,
    },
    /// The database is full or out of disk space: retrying later may work.
    #[error("the index database is out of space")]
    Full(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// Any other database failure (IO, constraint, corrupt file).
    #[error("index database failure while {operation}")]
    Backend {
        /// What was being done.
        operation: &'static str,
        /// The underlying failure.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A row that must exist does not.
    #[error("{what} not found in the index")]
    NotFound {
        /// A description of the missing row.
        what: String,
    },
    /// The operation needs the index to itself, and a server or another
    /// command has it open: stop them and try again.
    #[error("the index {path} is in use by a running server or command")]
    InUse {
        /// The index file.
        path: std::path::PathBuf,
    },
    /// The caller called the commit off
    /// ([`IndexStore::insert_instances_when`]): nothing was committed.
    #[error("the commit was called off by its caller")]
    CommitCalledOff,
}

/// The index of partitions, filesystems, devices, study locations and the
/// Patient → Study → Series → Instance hierarchy.
///
/// Implementations are `Send + Sync` and do their own connection handling;
/// calls block the calling thread (never call from an async executor thread).
pub trait IndexStore: Send + Sync + std::fmt::Debug {
    /// Creates the partition if its AE title is new, updates folder and
    /// description otherwise, and returns its key.
    fn ensure_partition(&self, spec: &PartitionSpec) -> Result<PartitionId, Error>;

    /// The partition answering to `ae_title`, if any.
    fn partition(&self, ae_title: &crate::model::AeTitle) -> Result<Option<PartitionId>, Error>;

    /// Creates the filesystem if its path is new, updates its properties
    /// otherwise, and returns its key.
    fn ensure_filesystem(&self, spec: &FilesystemSpec) -> Result<FilesystemId, Error>;

    /// All filesystems, ordered by tier then key.
    fn filesystems(&self) -> Result<Vec<Filesystem>, Error>;

    /// Creates the filesystem unless its path is known (the configuration
    /// seeds the index; the index is the truth afterwards): a row already
    /// there is never changed. Returns the row as the index holds it and
    /// whether this call created it.
    fn seed_filesystem(&self, spec: &FilesystemSpec) -> Result<(Filesystem, bool), Error>;

    /// Sets what an operator may change of filesystem `filesystem.id`: its
    /// whole spec and `enabled` (never its marker). [`Error::NotFound`]
    /// when there is no such filesystem.
    fn update_filesystem(&self, filesystem: &Filesystem) -> Result<(), Error>;

    /// Records the identity marker of a filesystem unless it has one;
    /// returns the marker the index holds afterwards (the first recorded
    /// wins).
    fn record_filesystem_marker(&self, id: FilesystemId, marker: &str) -> Result<String, Error>;

    /// The bytes of the studies each filesystem holds, as the index counts
    /// them (the sum of their instance files); filesystems holding none are
    /// absent.
    fn filesystem_held_bytes(&self) -> Result<Vec<(FilesystemId, u64)>, Error>;

    /// Creates or updates a known remote AE of a partition.
    fn ensure_device(&self, partition: PartitionId, spec: &DeviceSpec) -> Result<(), Error>;

    /// Registers a caller as a device of a partition unless a device of its
    /// AE title exists, and only while the partition has fewer than
    /// `max_devices` devices. An existing row (an administrator's, or
    /// another node's registration) is never changed. Returns the device as
    /// stored; None when the cap kept it out.
    fn register_device(
        &self,
        partition: PartitionId,
        spec: &DeviceSpec,
        max_devices: u64,
    ) -> Result<Option<DeviceSpec>, Error>;

    /// One device of a partition.
    fn device(
        &self,
        partition: PartitionId,
        ae_title: &AeTitle,
    ) -> Result<Option<DeviceSpec>, Error>;

    /// Removes a device of a partition; returns whether it was there
    /// (the partition's policy for unknown callers applies to it again).
    fn delete_device(&self, partition: PartitionId, ae_title: &AeTitle) -> Result<bool, Error>;

    /// The devices of a partition, ordered by AE title.
    fn devices(&self, partition: PartitionId) -> Result<Vec<DeviceSpec>, Error>;

    /// Where a study of a partition lives, if it has arrived before.
    fn study_location(
        &self,
        partition: PartitionId,
        study_uid: &Uid,
    ) -> Result<Option<StudyLocation>, Error>;

    /// The study's location, claiming `proposed` for it when it has none
    /// (no row, or a nearline one): the first claim wins atomically, so
    /// processes receiving instances of a new study at once (cluster nodes,
    /// an import beside the server) agree on its folder before any file is
    /// placed. The claim need not be durable: the batch that indexes the
    /// study's first instance writes the same row durably.
    fn claim_study_location(
        &self,
        partition: PartitionId,
        proposed: &StudyLocation,
    ) -> Result<StudyLocation, Error>;

    /// Whether the study is being deleted and how many times it has been:
    /// ingest reads it before placing a file and keeps the count in
    /// [`InstanceRecord::deletions_seen`].
    fn study_deletions(
        &self,
        partition: PartitionId,
        study_uid: &Uid,
    ) -> Result<StudyDeletions, Error>;

    /// What ingest reads before placing a file, in one call: the study's
    /// deletions ([`IndexStore::study_deletions`]), the stored instance of
    /// the SOP Instance UID ([`IndexStore::instance`]) and the patient of
    /// the stored study ([`IndexStore::study_patient`]). A backend whose
    /// every call is a network round trip answers it with one statement.
    fn ingest_lookup(
        &self,
        partition: PartitionId,
        study_uid: &Uid,
        sop_instance_uid: &Uid,
    ) -> Result<IngestLookup, Error> {
        Ok(IngestLookup {
            deletions: self.study_deletions(partition, study_uid)?,
            existing: self.instance(partition, sop_instance_uid)?,
            study_patient: self.study_patient(partition, study_uid)?,
        })
    }

    /// [`IndexStore::ingest_lookup`], begun now and answered by
    /// [`PendingLookup::wait`]: ingest begins it once an instance's header
    /// is whole while much of its pixel data is still to arrive, so that a
    /// backend whose every call is a network round trip answers while the
    /// bytes come in. The default reads at once, on the calling thread.
    fn begin_ingest_lookup(
        &self,
        partition: PartitionId,
        study_uid: &Uid,
        sop_instance_uid: &Uid,
    ) -> PendingLookup {
        let answer = self.ingest_lookup(partition, study_uid, sop_instance_uid);
        PendingLookup::new(move || answer)
    }

    /// Indexes a batch of instances in **one** transaction: creates or
    /// updates the patient, study, series and study-storage rows, inserts or
    /// replaces each instance row, and keeps the related counts right (a
    /// replaced instance is not counted twice). Returns one outcome per
    /// record, in order. All or nothing: on error nothing of the batch is
    /// committed.
    ///
    /// A record whose study is being deleted, or has been deleted since its
    /// [`InstanceRecord::deletions_seen`], is checked in the transaction and
    /// not indexed ([`InsertOutcome::StudyDeleted`]): a deletion's file
    /// work may have removed its file, and a deletion under way would.
    fn insert_instances(&self, batch: &[InstanceRecord]) -> Result<Vec<InsertOutcome>, Error> {
        self.insert_instances_then(batch, None)
    }

    /// [`IndexStore::insert_instances`], and in the **same** transaction the
    /// follow-up work of the batch, if any (see [`FollowUp`]): the batch's
    /// rows and the work they schedule commit together or not at all, so a
    /// crash can never leave an acknowledged instance whose study will not
    /// be processed.
    fn insert_instances_then(
        &self,
        batch: &[InstanceRecord],
        follow_up: Option<&FollowUp>,
    ) -> Result<Vec<InsertOutcome>, Error>;

    /// [`IndexStore::insert_instances_then`], whose transaction commits only
    /// once `ready` says so: it is called after the batch's statements have
    /// run, just before COMMIT (again before each retried COMMIT), and may
    /// block. `false` rolls the transaction back:
    /// [`Error::CommitCalledOff`]. The group commit runs the batch's
    /// statements while its journal of open batches is being synced, and
    /// lets the rows commit only once that journal is durable.
    ///
    /// The default asks `ready` first, then runs
    /// [`IndexStore::insert_instances_then`]: correct, without the overlap.
    fn insert_instances_when(
        &self,
        batch: &[InstanceRecord],
        follow_up: Option<&FollowUp>,
        ready: &dyn Fn() -> bool,
    ) -> Result<Vec<InsertOutcome>, Error> {
        if !ready() {
            return Err(Error::CommitCalledOff);
        }
        self.insert_instances_then(batch, follow_up)
    }

    /// Looks up one instance of a partition by SOP Instance UID (none while
    /// its study is nearline: it has no file to read).
    fn instance(
        &self,
        partition: PartitionId,
        sop_instance_uid: &Uid,
    ) -> Result<Option<StoredInstance>, Error>;

    /// Row counts of a partition.
    fn counts(&self, partition: PartitionId) -> Result<IndexCounts, Error>;

    /// Records an instance kept aside under the `compare` duplicate policy.
    fn record_duplicate(&self, duplicate: &DuplicateRecord) -> Result<(), Error>;

    /// The kept-aside duplicates of a partition, oldest first.
    fn duplicates(&self, partition: PartitionId) -> Result<Vec<DuplicateRecord>, Error>;

    /// The patient attributes of a stored study (its patient row), if the
    /// index has the study.
    fn study_patient(
        &self,
        partition: PartitionId,
        study_uid: &Uid,
    ) -> Result<Option<PatientAttrs>, Error>;

    /// Every edit of a study, oldest first (as
    /// [`studies::StudyStore::edit_history`]).
    fn study_edits(
        &self,
        partition: PartitionId,
        study_uid: &Uid,
    ) -> Result<Vec<studies::EditRecord>, Error>;

    /// Records an instance held for reconciliation (its file is already
    /// kept aside durably); returns the entry's key.
    fn hold_for_reconcile(&self, entry: &ReconcileEntry) -> Result<i64, Error>;

    /// Removes the instance row of `file.sop_instance_uid` in `partition`,
    /// in one transaction, but only while it names exactly `file` (study
    /// location, series, size and digest): a later row for the same UID
    /// (an acknowledged replacement) stays. The counts are kept right as a
    /// deletion keeps them (series, study — its size, modalities and SOP
    /// classes — and patient), and a series, study or patient left without
    /// instances goes (the study's storage row, its location claim, stays).
    /// Whether a row was removed. How crash recovery removes the row of a
    /// file that was never whole (`services::journal`).
    fn remove_instance_row(
        &self,
        partition: PartitionId,
        file: &InstanceFile,
    ) -> Result<bool, Error>;
}

/// An instance file as an index row names it: what
/// [`IndexStore::remove_instance_row`] checks the row against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceFile {
    /// The study's location.
    pub location: StudyLocation,
    /// The series.
    pub series_uid: Uid,
    /// The instance.
    pub sop_instance_uid: Uid,
    /// The file's size in bytes.
    pub file_size: u64,
    /// The file's BLAKE3 digest, lowercase hex.
    pub digest: String,
}

/// The answer of [`IndexStore::ingest_lookup`].
#[derive(Debug, Clone, PartialEq)]
pub struct IngestLookup {
    /// The study's deletions.
    pub deletions: StudyDeletions,
    /// The stored instance with the SOP Instance UID (none while nearline).
    pub existing: Option<StoredInstance>,
    /// The patient of the stored study, if the index has the study.
    pub study_patient: Option<PatientAttrs>,
}

/// An [`IndexStore::ingest_lookup`] under way
/// ([`IndexStore::begin_ingest_lookup`]).
pub struct PendingLookup(Box<dyn FnOnce() -> Result<IngestLookup, Error> + Send>);

impl PendingLookup {
    /// A lookup `answer` gives when waited for.
    pub fn new(answer: impl FnOnce() -> Result<IngestLookup, Error> + Send + 'static) -> Self {
        PendingLookup(Box::new(answer))
    }

    /// Waits for the answer. An error says only that this attempt failed:
    /// the caller may read again with [`IndexStore::ingest_lookup`].
    pub fn wait(self) -> Result<IngestLookup, Error> {
        (self.0)()
    }
}

impl std::fmt::Debug for PendingLookup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PendingLookup")
    }
}

/// Work an index batch schedules in its own transaction: for each distinct
/// study of the batch, the batch's instances of that study are appended to
/// the study's waiting (Idle or Pending) item of `kind`, or a new item is
/// created ([`work::WorkStore::enqueue_or_append`] semantics). The item
/// runs no earlier than `due` (moving later, never earlier), so once the
/// study has been quiet until then, and at most `slack` after the latest
/// batch's `due`: an item is moved only when a batch's `due` passes its
/// schedule, and then `slack` beyond it, so a study arriving batch after
/// batch moves its item once per `slack`, not on every batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FollowUp {
    /// The kind of the items (StudyProcess for ingest).
    pub kind: WorkKind,
    /// Their priority.
    pub priority: WorkPriority,
    /// When they become due, at the earliest.
    pub due: Timestamp,
    /// How much later than `due` they may be scheduled
    /// ([`NewWorkItem::slack`]).
    pub slack: std::time::Duration,
}

impl FollowUp {
    /// The items `batch` schedules: one per distinct study.
    pub(crate) fn items_for<'a>(
        &self,
        batch: impl IntoIterator<Item = &'a InstanceRecord>,
    ) -> Vec<NewWorkItem> {
        let mut studies: std::collections::BTreeMap<(PartitionId, &Uid), Vec<WorkUid>> =
            std::collections::BTreeMap::new();
        for record in batch {
            studies
                .entry((record.partition, &record.study.study_uid))
                .or_default()
                .push(WorkUid::new(
                    record.series.series_uid.clone(),
                    record.instance.sop_instance_uid.clone(),
                ));
        }
        studies
            .into_iter()
            .map(|((partition, study), uids)| {
                NewWorkItem::new(self.kind.clone(), partition)
                    .study(study.clone())
                    .priority(self.priority)
                    .scheduled_at(self.due)
                    .slack(self.slack)
                    .uids(uids)
            })
            .collect()
    }
}

/// Logs a committed index batch: its size, how many records replaced an
/// instance, how long it took since `start`.
pub(crate) fn log_batch(outcomes: &[InsertOutcome], start: std::time::Instant) {
    let count = |kind: InsertOutcome| outcomes.iter().filter(|o| **o == kind).count();
    tracing::debug!(
        size = outcomes.len(),
        replaced = count(InsertOutcome::Replaced),
        refused_study_deleted = count(InsertOutcome::StudyDeleted),
        elapsed_us = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX),
        "index batch committed"
    );
}

/// Queries against the index (C-FIND, retrieve, DICOMweb QIDO): matching per
/// PS3.4 C.2.2.2, answered from the index alone, never from files.
///
/// Results stream to a sink (push style): the sink returns
/// `ControlFlow::Break(())` to stop early (C-CANCEL, result caps), and the
/// backend stops reading at once.
pub trait QueryStore: Send + Sync + std::fmt::Debug {
    /// Streams the entities at `query.level` that match every key, in a
    /// stable order (by patient, study date and time, series number,
    /// instance number, then key), each with the values of the query's keys
    /// and the unique keys of its level and the levels above.
    fn find(
        &self,
        query: &Query,
        sink: &mut dyn FnMut(Match) -> ControlFlow<()>,
    ) -> Result<(), Error>;

    /// Streams every stored instance below the entities `query` matches (for
    /// C-MOVE, C-GET and WADO), ordered by study, series, instance number.
    /// Instances of studies without an online copy (`study_storage`
    /// `filesystem_id` NULL: nearline) are skipped: there is no file to send.
    /// `query.limit` and `query.offset` cap and page matches, not instances:
    /// they are ignored.
    fn find_instances(
        &self,
        query: &Query,
        sink: &mut dyn FnMut(StoredInstance) -> ControlFlow<()>,
    ) -> Result<(), Error>;
}

/// Everything an archive needs from its database: the index, its queries,
/// the work queue, the study operations and the cluster's nodes.
/// Implemented for every type that implements them all.
pub trait Database:
    IndexStore
    + QueryStore
    + work::WorkStore
    + studies::StudyStore
    + nodes::NodeStore
    + archive::ArchiveStore
{
}

impl<
        T: IndexStore
            + QueryStore
            + work::WorkStore
            + studies::StudyStore
            + nodes::NodeStore
            + archive::ArchiveStore
            + ?Sized,
    > Database for T
{
}

/// An index URL fit for logs and messages: the password of a
/// `scheme://user:password@host/...` URL replaced by `***`; anything else
/// as it is.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (authority, path) = match rest.find('/') {
        Some(at) => rest.split_at(at),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        Some((user_info, host)) => {
            let user = user_info.split(':').next().unwrap_or("");
            let hidden = if user_info.contains(':') { ":***" } else { "" };
            format!("{scheme}://{user}{hidden}@{host}{path}")
        }
        None => url.to_string(),
    }
}

/// Which records of a batch the commit refuses because of their study's
/// deletions (see [`IndexStore::insert_instances_then`]); both backends
/// decide with it inside their transaction.
#[derive(Debug)]
pub(crate) struct Admission {
    refused: Vec<bool>,
}

impl Admission {
    /// The distinct studies of `batch`, whose deletions the backend reads.
    pub(crate) fn studies(batch: &[InstanceRecord]) -> Vec<(PartitionId, &Uid)> {
        let mut studies: Vec<(PartitionId, &Uid)> = batch
            .iter()
            .map(|r| (r.partition, &r.study.study_uid))
            .collect();
        studies.sort();
        studies.dedup();
        studies
    }

    /// Decides per record from its study's `deletions` (a study missing
    /// from the map has none).
    pub(crate) fn decide(
        batch: &[InstanceRecord],
        deletions: &std::collections::HashMap<(PartitionId, &Uid), StudyDeletions>,
    ) -> Admission {
        let refused = batch
            .iter()
            .map(|r| {
                let study = deletions
                    .get(&(r.partition, &r.study.study_uid))
                    .copied()
                    .unwrap_or_default();
                study.deleting
                    || r.deletions_seen.is_some_and(|seen| study.count > seen)
                    // Placed before a migration moved the study.
                    || study.filesystem.is_some_and(|fs| fs != r.location.filesystem)
            })
            .collect();
        Admission { refused }
    }

    /// Whether any record is refused.
    pub(crate) fn any_refused(&self) -> bool {
        self.refused.iter().any(|r| *r)
    }

    /// The records to index: `batch` itself unless some are refused.
    pub(crate) fn kept<'a>(
        &self,
        batch: &'a [InstanceRecord],
    ) -> std::borrow::Cow<'a, [InstanceRecord]> {
        if !self.any_refused() {
            return std::borrow::Cow::Borrowed(batch);
        }
        std::borrow::Cow::Owned(
            batch
                .iter()
                .zip(&self.refused)
                .filter(|(_, refused)| !**refused)
                .map(|(r, _)| r.clone())
                .collect(),
        )
    }

    /// One outcome per record of the batch, from the outcomes of the kept
    /// records (in order).
    pub(crate) fn outcomes(&self, kept: Vec<InsertOutcome>) -> Vec<InsertOutcome> {
        let mut kept = kept.into_iter();
        self.refused
            .iter()
            .map(|refused| {
                if *refused {
                    InsertOutcome::StudyDeleted
                } else {
                    kept.next().unwrap_or(InsertOutcome::StudyDeleted)
                }
            })
            .collect()
    }
}
