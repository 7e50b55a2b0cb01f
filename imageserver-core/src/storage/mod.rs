//! The file seam: where instance bytes live.
//!
//! [`StorageBackend`] writes, reads, moves and deletes stored instances on
//! the filesystems the index knows. Callers name an instance by
//! [`InstanceKey`] (validated UIDs and a study location); only
//! [`layout`] turns that into a relative path, and only the backend joins it
//! to a root. The DICOM layer never sees either.
//!
//! Writes are streamed and made durable in two steps so that many writers
//! can share one directory sync (group commit):
//! 1. [`StorageBackend::begin_write`] gives an [`ObjectWriter`] over a
//!    temporary file on the destination filesystem;
//! 2. [`ObjectWriter::persist`] fsyncs the file and renames it into place,
//!    returning a [`PendingSync`]: the directories whose entries are not yet
//!    durable;
//! 3. [`StorageBackend::sync`] makes a batch of those durable (each distinct
//!    directory once).
//!
//! A backend may also offer [`DeferredSync`] ([`StorageBackend::deferred`]):
//! [`DeferredSync::persist_deferred`] leaves the file's data sync and its
//! rename to the caller, so that the data sync runs beside the group
//! commit's journal of its open batch ([`DeferredSync::write_journal`]),
//! and the directory syncs beside the index commit, once the journal is
//! durable and the files are in place ([`DeferredSync::place`]); start-up
//! recovery reads the journal back. The two come as one object, so nothing
//! can defer without a journal.
//!
//! Only after step 3 may anyone be told the instance is stored.
//!
//! Series metadata (derived data, see [`layout::METADATA_DIR`]) is written
//! the same way ([`ObjectWriter::persist_series_metadata`]) and read, listed
//! and deleted by [`SeriesKey`].
//!
//! A filesystem's studies are listed ([`StorageBackend::list_studies`]),
//! a study's objects too ([`StorageBackend::list_study`]) and its
//! emptied folders removed ([`StorageBackend::remove_empty_study_folders`])
//! through the trait as well: the study operations (delete, reprocess,
//! integrity check) never read a directory themselves.
//!
//! Which filesystem a new study goes to is a [`Placement`]'s decision
//! ([`placement`]).
//!
//! [`conformance::run`] checks a backend against this contract: the
//! filesystem backend runs it in its tests, an embedder on its own backend.

pub mod conformance;
pub mod fs;
pub mod layout;
pub mod placement;

pub use placement::{LowestTierMostRoom, Placement};

use std::io::{Read, Write};
use std::ops::ControlFlow;
use std::path::PathBuf;

use crate::model::{Filesystem, StudyLocation, Uid};

/// Errors of storage backends.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The filesystem is full (ENOSPC or quota): retrying elsewhere or later may work.
    #[error("filesystem {root} is full")]
    Full {
        /// The filesystem root.
        root: PathBuf,
        /// The underlying failure.
        #[source]
        source: std::io::Error,
    },
    /// The stored object does not exist.
    #[error("{what} does not exist")]
    NotFound {
        /// What was looked for.
        what: String,
    },
    /// Any other IO failure.
    #[error("storage failure while {operation} {path}")]
    Io {
        /// What was being done.
        operation: &'static str,
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying failure.
        #[source]
        source: std::io::Error,
    },
}

/// Names one stored instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceKey {
    /// The study's location (filesystem, partition folder, date folder, study).
    pub location: StudyLocation,
    /// The series.
    pub series_uid: Uid,
    /// The instance.
    pub sop_instance_uid: Uid,
}

/// Names the metadata file of one series of a study.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeriesKey {
    /// The study's location.
    pub location: StudyLocation,
    /// The series.
    pub series_uid: Uid,
}

/// An instance-like file of a study, as [`StorageBackend::list_study`]
/// finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredObject {
    /// The series it is filed under.
    pub series_uid: Uid,
    /// The SOP instance it is named after.
    pub sop_instance_uid: Uid,
    /// Its size in bytes.
    pub size: u64,
    /// Its modification time (ms since the Unix epoch).
    pub modified_ms: i64,
}

/// One object of a study's storage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StudyObject {
    /// An instance file.
    Instance(StoredObject),
    /// A duplicate kept aside beside an instance, with its variant.
    Aside(StoredObject, u64),
    /// A series' metadata file (derived data, never an instance).
    Metadata {
        /// The series it describes.
        series_uid: Uid,
        /// Its modification time (ms since the Unix epoch).
        modified_ms: i64,
    },
    /// Anything else: not ours to interpret; where it is, for reports.
    Stray(PathBuf),
}

/// Space on a filesystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// Total bytes: used and still available to us (blocks a volume keeps
    /// for root not counted, as `df` reports).
    pub total_bytes: u64,
    /// Bytes available to us.
    pub available_bytes: u64,
}

impl Usage {
    /// Used percentage, 0–100.
    pub fn used_percent(&self) -> f64 {
        if self.total_bytes == 0 {
            return 100.0;
        }
        100.0 * (self.total_bytes - self.available_bytes.min(self.total_bytes)) as f64
            / self.total_bytes as f64
    }
}

/// What a persisted write left to make durable: directory entries that a
/// [`ObjectWriter::persist`] created or changed and, after
/// [`DeferredSync::persist_deferred`], the file's own data and its placing
/// (the rename into place, [`DeferredSync::place`]). Opaque: hand it back
/// to [`StorageBackend::sync`], which does all of it, in a safe order.
#[derive(Debug, Default)]
pub struct PendingSync {
    pub(crate) dirs: Vec<PathBuf>,
    /// Files persisted deferred whose data is not yet synced.
    pub(crate) files: Vec<std::fs::File>,
    /// Files persisted deferred not yet renamed into place.
    pub(crate) placings: Vec<Box<dyn Placing>>,
}

/// A deferred file's rename into place, still to do (a backend's own).
pub(crate) trait Placing: Send + std::fmt::Debug {
    /// Renames the file into place; the directories whose entries that
    /// created or changed. Dropped unplaced, the file is discarded.
    fn place(self: Box<Self>) -> Result<Vec<PathBuf>, Error>;
}

impl PendingSync {
    /// Merges another pending set into this one.
    pub fn merge(&mut self, other: PendingSync) {
        self.dirs.extend(other.dirs);
        self.files.extend(other.files);
        self.placings.extend(other.placings);
    }

    /// Whether nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.dirs.is_empty() && self.files.is_empty() && self.placings.is_empty()
    }

    /// The directories a sync of this value fsyncs (repeats possible). Read
    /// only: for a backend that wraps another and must know which entries
    /// become durable (the crash-consistency test's simulated storage).
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// Whether file data is pending (a deferred persist).
    pub fn has_files(&self) -> bool {
        !self.files.is_empty()
    }

    /// Whether files are still to be put in place (a deferred persist).
    pub fn has_placings(&self) -> bool {
        !self.placings.is_empty()
    }

    /// Splits off the pending file data: the returned value syncs only the
    /// files, `self` keeps the directories and the placings. Both may be
    /// synced at once, on different threads.
    pub fn take_files(&mut self) -> PendingSync {
        PendingSync {
            files: std::mem::take(&mut self.files),
            ..PendingSync::default()
        }
    }

    /// Puts every pending file in place, adding the directories that made
    /// entries in: how [`DeferredSync::place`] and a backend's
    /// [`StorageBackend::sync`] do it. Stops at the first failure; the
    /// files not placed are discarded.
    pub(crate) fn place_files(&mut self) -> Result<(), Error> {
        for placing in std::mem::take(&mut self.placings) {
            self.dirs.extend(placing.place()?);
        }
        Ok(())
    }
}

/// A streamed write of one object to a temporary location. Dropping it
/// without [`persist`](ObjectWriter::persist) discards the temporary file.
///
/// `Any`: a backend's [`DeferredSync::persist_deferred`] recognises its own
/// writers (and persists any other eagerly).
pub trait ObjectWriter: Write + Send + std::any::Any {
    /// Bytes written so far.
    fn len(&self) -> u64;

    /// Whether nothing has been written.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A reader over everything written so far, from the start (used to parse
    /// a header that did not fit the caller's in-memory prefix).
    fn read_back(&mut self) -> Result<Box<dyn Read + '_>, Error>;

    /// Makes the file's data durable (fsync) and renames it to `key`,
    /// replacing any file already there. The directory entries are durable
    /// only after [`StorageBackend::sync`] of the returned value.
    fn persist(self: Box<Self>, key: &InstanceKey) -> Result<PendingSync, Error>;

    /// Like [`persist`](ObjectWriter::persist), but to a kept-aside name
    /// beside `key` (a duplicate awaiting reconciliation), never replacing
    /// the instance itself.
    fn persist_aside(
        self: Box<Self>,
        key: &InstanceKey,
        variant: u64,
    ) -> Result<PendingSync, Error>;

    /// Like [`persist`](ObjectWriter::persist), but as the metadata file of
    /// a series (replacing the one there).
    fn persist_series_metadata(self: Box<Self>, key: &SeriesKey) -> Result<PendingSync, Error>;
}

/// Storage of instance files on the filesystems of the index.
pub trait StorageBackend: Send + Sync + std::fmt::Debug {
    /// Starts writing a new object on `filesystem`.
    fn begin_write(&self, filesystem: &Filesystem) -> Result<Box<dyn ObjectWriter>, Error>;

    /// Makes what persisted writes left pending durable: the data of each
    /// deferred file, and each distinct directory once.
    fn sync(&self, pending: PendingSync) -> Result<(), Error>;

    /// Deferred persistence and its journal, when this backend offers them
    /// (`None`, the default: every write is persisted eagerly). A backend
    /// that wraps another must pass this on to offer it: one that does not
    /// is safe, only slower (see [`DeferredSync`]).
    fn deferred(&self) -> Option<&dyn DeferredSync> {
        None
    }

    /// Opens a stored instance for streaming reads. A missing instance is
    /// [`Error::NotFound`].
    fn open(
        &self,
        filesystem: &Filesystem,
        key: &InstanceKey,
    ) -> Result<Box<dyn Read + Send>, Error>;

    /// Whether the stored instance exists.
    fn exists(&self, filesystem: &Filesystem, key: &InstanceKey) -> Result<bool, Error>;

    /// Deletes a stored instance (durably); a missing file is not an error.
    fn delete(&self, filesystem: &Filesystem, key: &InstanceKey) -> Result<(), Error>;

    /// Copies an instance to another filesystem durably, verifies the copy's
    /// size, then deletes the source. Returns the bytes moved.
    fn move_instance(
        &self,
        from: &Filesystem,
        to: &Filesystem,
        key: &InstanceKey,
        to_key: &InstanceKey,
    ) -> Result<u64, Error>;

    /// The bytes of a series' metadata file, `None` when it has none.
    fn read_series_metadata(
        &self,
        filesystem: &Filesystem,
        key: &SeriesKey,
    ) -> Result<Option<Vec<u8>>, Error>;

    /// The series of a study that have a metadata file, sorted.
    fn series_with_metadata(
        &self,
        filesystem: &Filesystem,
        location: &StudyLocation,
    ) -> Result<Vec<Uid>, Error>;

    /// Deletes a series' metadata file (durably); a missing file is not an
    /// error.
    fn delete_series_metadata(&self, filesystem: &Filesystem, key: &SeriesKey)
        -> Result<(), Error>;

    /// Deletes every metadata file of a study and its metadata folder
    /// (durably). Returns the files deleted.
    fn delete_study_metadata(
        &self,
        filesystem: &Filesystem,
        location: &StudyLocation,
    ) -> Result<u64, Error>;

    /// Every object of a study's storage (none when it has none), sorted
    /// by its [`layout`] path: the metadata files first, then each series'
    /// files by name.
    fn list_study(
        &self,
        filesystem: &Filesystem,
        location: &StudyLocation,
    ) -> Result<Vec<StudyObject>, Error>;

    /// Every study folder on the filesystem, as locations on it, handed to
    /// `visit` in the order of their [`layout`] paths (partition folder,
    /// date folder, study). What is not a study folder of the layout
    /// (temporary objects, the identity marker, names that are no folder
    /// name, date or UID) is passed over; a folder may be empty. `visit`
    /// may stop the walk. What a study holds is [`Self::list_study`]'s
    /// answer: how reinventory finds a filesystem's studies.
    fn list_studies(
        &self,
        filesystem: &Filesystem,
        visit: &mut dyn FnMut(StudyLocation) -> ControlFlow<()>,
    ) -> Result<(), Error>;

    /// Deletes a kept-aside duplicate (durably); a missing file is not an
    /// error.
    fn delete_aside(
        &self,
        filesystem: &Filesystem,
        key: &InstanceKey,
        variant: u64,
    ) -> Result<(), Error>;

    /// Opens a kept-aside copy for streaming reads. A missing copy is
    /// [`Error::NotFound`].
    fn open_aside(
        &self,
        filesystem: &Filesystem,
        key: &InstanceKey,
        variant: u64,
    ) -> Result<Box<dyn Read + Send>, Error>;

    /// Puts a kept-aside copy in the instance's place, replacing the file
    /// there, durably on return (the rename and its directory entry): how a
    /// replacement written aside takes over once its index row is
    /// committed. A missing copy is [`Error::NotFound`] and leaves the
    /// instance as it was.
    fn replace_with_aside(
        &self,
        filesystem: &Filesystem,
        key: &InstanceKey,
        variant: u64,
    ) -> Result<(), Error>;

    /// Removes what of a study's storage is empty (series folders, the
    /// metadata folder, the study folder itself), durably. Anything still
    /// there keeps its place; a study with no storage at all is not an
    /// error.
    fn remove_empty_study_folders(
        &self,
        filesystem: &Filesystem,
        location: &StudyLocation,
    ) -> Result<(), Error>;

    /// Where an instance is, for an operator's report (never for access).
    fn describe(&self, filesystem: &Filesystem, key: &InstanceKey) -> PathBuf;

    /// Space on a filesystem.
    fn usage(&self, filesystem: &Filesystem) -> Result<Usage, Error>;

    /// The identity marker in the filesystem's root, `None` when there is
    /// none (also when the root itself is missing: an unmounted share).
    fn read_marker(&self, filesystem: &Filesystem) -> Result<Option<String>, Error>;

    /// Writes the identity marker into the filesystem's root (creating the
    /// root), durably on return. A marker already there is never
    /// overwritten: that is an error, and the caller reads it instead.
    fn write_marker(&self, filesystem: &Filesystem, marker: &str) -> Result<(), Error>;

    /// Removes the temporary objects that no writer will finish: those
    /// left by a process of this host that is gone (a crash), and, from any
    /// host, those untouched for `stale_after` (a dead cluster node; a live
    /// writer touches its object with every PDU, and its association ends
    /// at the idle timeout). A writer still running keeps its object.
    fn sweep_temporary(
        &self,
        filesystem: &Filesystem,
        stale_after: std::time::Duration,
    ) -> Result<SweepReport, Error>;
}

/// Deferred persistence, and the journal of open batches that makes it
/// safe, as one capability of a backend ([`StorageBackend::deferred`]).
///
/// A file persisted deferred may be renamed into place before its data is
/// durable, so after a crash an index row may name a file that is not
/// whole; the group commit therefore journals every open batch, and
/// start-up recovery reads the journals a dead process left. Both halves
/// are one object with no defaults: a backend (or a wrapper around one)
/// either offers deferral together with a journal that works, or offers
/// neither, and then ingest persists eagerly and the group commit syncs
/// any deferred file before its row is indexed. Nothing can defer without
/// a journal.
pub trait DeferredSync: Send + Sync {
    /// Like [`ObjectWriter::persist`], but neither syncs the file's data
    /// nor renames it into place: the returned value holds both, so that the
    /// caller journals the file ([`DeferredSync::write_journal`]), renames
    /// it ([`DeferredSync::place`]) once the journal is durable, so that a
    /// file at `key` that may not be whole after a crash is always
    /// journaled, and syncs its data ([`PendingSync::take_files`], then
    /// [`StorageBackend::sync`]) while it commits the index (the group
    /// commit syncs after the rename; either order is safe).
    /// [`StorageBackend::sync`] of the whole value does all of it, data
    /// first. A writer this backend did not make is persisted eagerly.
    fn persist_deferred(
        &self,
        writer: Box<dyn ObjectWriter>,
        key: &InstanceKey,
    ) -> Result<PendingSync, Error>;

    /// Renames the files `pending` holds from
    /// [`persist_deferred`](DeferredSync::persist_deferred) into place
    /// (their data may not be synced yet), adding to it the directories to
    /// sync. The files not placed after a failure are discarded.
    ///
    /// The group commit calls it on its placer thread while the batch's
    /// index transaction is open and waits for it
    /// ([`crate::db::IndexStore::insert_instances_when`]): it must never
    /// wait for the index (a write would wait for that transaction).
    fn place(&self, pending: &mut PendingSync) -> Result<(), Error>;

    /// Durably replaces the open-batch journal of `journal` (a number
    /// unique in this process: one per group committer) on `filesystem`
    /// with `contents` (the group commit writes it before its index
    /// transaction begins; see `services::commit`).
    fn write_journal(
        &self,
        filesystem: &Filesystem,
        journal: u64,
        contents: &[u8],
    ) -> Result<(), Error>;

    /// The journals on `filesystem` left by processes of this host that are
    /// gone (a crash), each with its name and contents, sorted by name.
    /// This process's journals and another host's are never returned: their
    /// process may be alive.
    fn orphan_journals(&self, filesystem: &Filesystem) -> Result<Vec<(String, Vec<u8>)>, Error>;

    /// Removes a journal [`orphan_journals`](DeferredSync::orphan_journals)
    /// returned, durably; a name that is no journal's is
    /// [`Error::NotFound`].
    fn remove_journal(&self, filesystem: &Filesystem, name: &str) -> Result<(), Error>;

    /// Removes the journals of `journal` on every filesystem (its
    /// committer stopped: nothing is open).
    fn close_journals(&self, journal: u64);
}

/// What [`StorageBackend::sweep_temporary`] removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Temporary objects removed.
    pub removed: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Temporary objects kept: a writer may still finish them.
    pub kept: u64,
}
