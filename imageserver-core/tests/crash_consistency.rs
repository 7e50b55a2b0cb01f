//! Crash consistency of ingest: the ordering behind "a C-STORE success is
//! sent only when the file data is fsync'd, its directory entry durable and
//! its index row committed".
//!
//! A kill -9 keeps the page cache, so it cannot tell a missing fsync from a
//! present one. [`CrashStorage`] wraps [`FsStorage`] and models what a power
//! loss keeps:
//! - a directory holds, durably, the entries it had when it was last
//!   fsync'd ([`StorageBackend::sync`] of a [`PendingSync`] naming it, read
//!   through [`PendingSync::dirs`]); the storage roots start empty and
//!   durable. Renames and new folders wait while a sync lists and fsyncs,
//!   so its snapshot is exactly what the fsyncs cover (and races between a
//!   sync and concurrent renames inside `FsStorage` are not exercised);
//! - a file's bytes are durable when it was persisted through a writer
//!   (persist fsyncs the data) or moved by `move_instance`; any other file
//!   a synced directory holds comes back empty;
//! - the trait's deletes are durable on return (it documents them so).
//!
//! At a chosen moment ([`Moment`]) the process "dies": every later storage
//! or index call fails. The test then drops everything, applies the loss
//! ([`CrashStorage::apply_crash`]: unsynced entries vanish, replaced or
//! deleted durable files come back with their durable bytes), reopens the
//! index and checks every acknowledged instance. The SQLite index itself is
//! trusted (WAL, `synchronous=FULL`): a committed transaction survives.

// The simulated crash reopens a SQLite index.
#![cfg(feature = "sqlite")]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsString;
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Instant;

use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_object::InMemDicomObject;
use dicom_transfer_syntax_registry::entries::EXPLICIT_VR_LITTLE_ENDIAN;

use imageserver_core::db::sqlite::SqliteIndex;
use imageserver_core::db::studies::EditRecord;
use imageserver_core::db::{self, FollowUp, IndexStore};
use imageserver_core::model::{
    AeTitle, DeviceSpec, DuplicatePolicy, DuplicateRecord, Filesystem, FilesystemId,
    FilesystemSpec, FolderName, IndexCounts, InsertOutcome, InstanceRecord, PartitionId,
    PartitionSpec, PatientAttrs, ReconcileEntry, StoredInstance, StudyDeletions, StudyLocation,
    Tier, Uid,
};
use imageserver_core::services::{Ingest, IngestError, Partition, StoreRequest};
use imageserver_core::storage::fs::FsStorage;
use imageserver_core::storage::{
    self, layout, InstanceKey, ObjectWriter, PendingSync, SeriesKey, StorageBackend, StudyObject,
    Usage,
};

// ---------------------------------------------------------------------------
// The crash plan

/// When the simulated process dies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Moment {
    /// Right after the nth persist renamed its file into place, before any
    /// sync of it (the persist never returns).
    AfterRename(usize),
    /// After the nth directory sync, before the index commit that follows it.
    AfterDirSync(usize),
    /// After the nth index commit, before the committer answers (no
    /// response goes out for that batch).
    AfterCommit(usize),
    /// After the nth `finish` returned Ok (the response was sent).
    AfterAck(usize),
    /// Only when the test says so.
    Manual,
}

/// The crash switch shared by the storage, the index and the test.
#[derive(Debug)]
struct Crash {
    moment: Moment,
    crashed: AtomicBool,
    what: Mutex<Option<String>>,
    renames: AtomicUsize,
    syncs: AtomicUsize,
    commits: AtomicUsize,
    acks: AtomicUsize,
}

#[derive(Debug, Clone, Copy)]
enum Event {
    Rename,
    DirSync,
    Commit,
    Ack,
}

impl Crash {
    fn new(moment: Moment) -> Arc<Crash> {
        Arc::new(Crash {
            moment,
            crashed: AtomicBool::new(false),
            what: Mutex::new(None),
            renames: AtomicUsize::new(0),
            syncs: AtomicUsize::new(0),
            commits: AtomicUsize::new(0),
            acks: AtomicUsize::new(0),
        })
    }

    fn crashed(&self) -> bool {
        self.crashed.load(Ordering::SeqCst)
    }

    /// The process dies now; the first description wins.
    fn crash(&self, what: String) {
        let mut slot = lock(&self.what);
        if !self.crashed.swap(true, Ordering::SeqCst) {
            *slot = Some(what);
        }
    }

    fn description(&self) -> String {
        lock(&self.what)
            .clone()
            .unwrap_or_else(|| "no crash".into())
    }

    /// Fails once the process is dead.
    fn alive(&self) -> io::Result<()> {
        if self.crashed() {
            Err(io::Error::other("simulated crash: the process is gone"))
        } else {
            Ok(())
        }
    }

    /// Counts an event; crashes when it is the planned one. Returns whether
    /// it did.
    fn count(&self, event: Event, detail: impl FnOnce() -> String) -> bool {
        let counter = match event {
            Event::Rename => &self.renames,
            Event::DirSync => &self.syncs,
            Event::Commit => &self.commits,
            Event::Ack => &self.acks,
        };
        let nth = counter.fetch_add(1, Ordering::SeqCst) + 1;
        let planned = match (event, self.moment) {
            (Event::Rename, Moment::AfterRename(n))
            | (Event::DirSync, Moment::AfterDirSync(n))
            | (Event::Commit, Moment::AfterCommit(n))
            | (Event::Ack, Moment::AfterAck(n)) => n,
            _ => return false,
        };
        if nth == planned && !self.crashed() {
            self.crash(format!("{:?}: {}", self.moment, detail()));
            return true;
        }
        false
    }

    /// How many of each event happened (before the crash, and after it for
    /// calls already under way).
    fn tally(&self) -> String {
        format!(
            "{} renames, {} directory syncs, {} commits, {} responses",
            self.renames.load(Ordering::SeqCst),
            self.syncs.load(Ordering::SeqCst),
            self.commits.load(Ordering::SeqCst),
            self.acks.load(Ordering::SeqCst)
        )
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

fn crashed_storage(path: &Path) -> storage::Error {
    storage::Error::Io {
        operation: "simulating a crash at",
        path: path.to_path_buf(),
        source: io::Error::other("the process is gone"),
    }
}

// ---------------------------------------------------------------------------
// The storage that knows what is durable

/// A directory's durable entries.
type Entries = BTreeMap<OsString, Node>;

#[derive(Debug, Clone, PartialEq)]
enum Node {
    Dir,
    /// A file and the bytes a crash leaves in it.
    File(Arc<Vec<u8>>),
}

#[derive(Debug, Default)]
struct Model {
    /// Per directory: its entries as of its last sync.
    durable: HashMap<PathBuf, Entries>,
    /// Files whose data was fsync'd before they got their name.
    fsynced: HashSet<PathBuf>,
}

impl Model {
    /// A durable removal of `path` from its directory.
    fn forget(&mut self, path: &Path) {
        if let (Some(dir), Some(name)) = (path.parent(), path.file_name()) {
            if let Some(entries) = self.durable.get_mut(dir) {
                entries.remove(name);
            }
        }
    }

    /// Makes `path` and every directory above it durable (a durable move).
    fn settle_path(&mut self, roots: &[PathBuf], path: &Path, content: Arc<Vec<u8>>) {
        let Some(root) = roots.iter().find(|r| path.starts_with(r)) else {
            return;
        };
        let mut dir = root.clone();
        let parts: Vec<_> = path.strip_prefix(root).unwrap().components().collect();
        for (i, part) in parts.iter().enumerate() {
            let name = part.as_os_str().to_os_string();
            let last = i + 1 == parts.len();
            let node = if last {
                Node::File(content.clone())
            } else {
                Node::Dir
            };
            let entries = self.durable.entry(dir.clone()).or_default();
            entries.insert(name.clone(), node);
            dir.push(name);
        }
    }
}

#[derive(Debug)]
struct Shared {
    inner: FsStorage,
    roots: Vec<PathBuf>,
    model: Mutex<Model>,
    /// Held shared by whatever changes directory entries (persists,
    /// deletes, moves) and exclusively by a sync across its snapshot and
    /// fsyncs, so that the snapshot is exactly what the fsyncs cover.
    namespace: RwLock<()>,
    crash: Arc<Crash>,
}

/// [`FsStorage`] with a model of what a power loss would keep.
#[derive(Debug, Clone)]
struct CrashStorage(Arc<Shared>);

impl CrashStorage {
    /// Over empty storage roots (durable as they are).
    fn new(roots: &[PathBuf], crash: Arc<Crash>) -> CrashStorage {
        let mut model = Model::default();
        for root in roots {
            assert!(
                fs::read_dir(root).unwrap().next().is_none(),
                "{} is not empty",
                root.display()
            );
            model.durable.insert(root.clone(), Entries::new());
        }
        CrashStorage(Arc::new(Shared {
            inner: FsStorage::new(),
            roots: roots.to_vec(),
            model: Mutex::new(model),
            namespace: RwLock::new(()),
            crash,
        }))
    }

    fn alive(&self, path: &Path) -> Result<(), storage::Error> {
        self.0.crash.alive().map_err(|_| crashed_storage(path))
    }

    /// The entries of `dir` as an fsync started now would make durable.
    fn snapshot(&self, dir: &Path) -> io::Result<Entries> {
        let mut entries = Entries::new();
        let listing = match fs::read_dir(dir) {
            Ok(listing) => listing,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(entries),
            Err(e) => return Err(e),
        };
        for entry in listing {
            let entry = entry?;
            let node = if entry.file_type()?.is_dir() {
                Node::Dir
            } else {
                let path = entry.path();
                let fsynced = lock(&self.0.model).fsynced.contains(&path);
                if fsynced {
                    match fs::read(&path) {
                        Ok(bytes) => Node::File(Arc::new(bytes)),
                        // Replaced or removed since the listing: not ours to keep.
                        Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                        Err(e) => return Err(e),
                    }
                } else {
                    Node::File(Arc::new(Vec::new()))
                }
            };
            entries.insert(entry.file_name(), node);
        }
        Ok(entries)
    }

    /// The bytes a crash now would leave at `path`, or the first entry on
    /// the way that would not survive.
    fn durable_file(&self, path: &Path) -> Result<Arc<Vec<u8>>, String> {
        let root = self
            .0
            .roots
            .iter()
            .find(|r| path.starts_with(r))
            .ok_or("not on a storage root")?;
        let model = lock(&self.0.model);
        let parts: Vec<_> = path.strip_prefix(root).unwrap().components().collect();
        let mut dir = root.clone();
        for (i, part) in parts.iter().enumerate() {
            let last = i + 1 == parts.len();
            let node = model
                .durable
                .get(&dir)
                .and_then(|entries| entries.get(part.as_os_str()));
            match (node, last) {
                (Some(Node::Dir), false) => dir.push(part),
                (Some(Node::File(bytes)), true) => return Ok(bytes.clone()),
                _ => {
                    return Err(format!(
                        "the entry {:?} of {} is not durable",
                        part.as_os_str(),
                        dir.display()
                    ))
                }
            }
        }
        Err("no file name".into())
    }

    /// Makes the real directories what the model says survived. Returns
    /// what changed, one line each.
    fn apply_crash(&self) -> Vec<String> {
        assert!(self.0.crash.crashed(), "apply_crash before a crash");
        let model = lock(&self.0.model);
        let mut changes = Vec::new();
        for root in &self.0.roots {
            restore(root, &model.durable, &mut changes).expect("applying the crash");
        }
        changes
    }

    fn after_delete(&self, path: &Path) {
        lock(&self.0.model).forget(path);
    }

    /// Changes to directory entries run under this (a sync waits for them).
    fn changing(&self) -> std::sync::RwLockReadGuard<'_, ()> {
        self.0.namespace.read().unwrap_or_else(|p| p.into_inner())
    }
}

fn restore(
    dir: &Path,
    durable: &HashMap<PathBuf, Entries>,
    changes: &mut Vec<String>,
) -> io::Result<()> {
    let empty = Entries::new();
    let wanted = durable.get(dir).unwrap_or(&empty);
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if !wanted.contains_key(&entry.file_name()) {
            let path = entry.path();
            if entry.file_type()?.is_dir() {
                fs::remove_dir_all(&path)?;
            } else {
                fs::remove_file(&path)?;
            }
            changes.push(format!("lost {}", path.display()));
        }
    }
    for (name, node) in wanted {
        let path = dir.join(name);
        match node {
            Node::Dir => {
                if !path.is_dir() {
                    if path.exists() {
                        fs::remove_file(&path)?;
                    }
                    fs::create_dir(&path)?;
                    changes.push(format!("restored folder {}", path.display()));
                }
                restore(&path, durable, changes)?;
            }
            Node::File(bytes) => {
                if path.is_dir() {
                    fs::remove_dir_all(&path)?;
                }
                if fs::read(&path).ok().as_deref() != Some(bytes.as_slice()) {
                    fs::write(&path, bytes.as_slice())?;
                    changes.push(format!("restored {}", path.display()));
                }
            }
        }
    }
    Ok(())
}

impl StorageBackend for CrashStorage {
    fn begin_write(
        &self,
        filesystem: &Filesystem,
    ) -> Result<Box<dyn ObjectWriter>, storage::Error> {
        let root = filesystem.spec.path.clone();
        self.alive(&root)?;
        let inner = self.0.inner.begin_write(filesystem)?;
        Ok(Box::new(CrashWriter {
            inner,
            storage: self.clone(),
            root,
        }))
    }

    fn sync(&self, pending: PendingSync) -> Result<(), storage::Error> {
        let mut dirs: Vec<PathBuf> = pending.dirs().to_vec();
        dirs.sort();
        dirs.dedup();
        let first = dirs.first().cloned().unwrap_or_default();
        self.alive(&first)?;
        let exclusive = self.0.namespace.write().unwrap_or_else(|p| p.into_inner());
        let mut snapshots = Vec::with_capacity(dirs.len());
        for dir in dirs {
            let snapshot = self.snapshot(&dir).map_err(|e| storage::Error::Io {
                operation: "listing",
                path: dir.clone(),
                source: e,
            })?;
            snapshots.push((dir, snapshot));
        }
        self.0.inner.sync(pending)?;
        // Recorded before any change can follow the fsyncs.
        lock(&self.0.model).durable.extend(snapshots);
        drop(exclusive);
        if self.0.crash.count(Event::DirSync, || {
            format!("directory sync of {}", first.display())
        }) {
            return Err(crashed_storage(&first));
        }
        Ok(())
    }

    fn open(
        &self,
        filesystem: &Filesystem,
        key: &InstanceKey,
    ) -> Result<Box<dyn Read + Send>, storage::Error> {
        self.alive(&filesystem.spec.path)?;
        self.0.inner.open(filesystem, key)
    }

    fn exists(&self, filesystem: &Filesystem, key: &InstanceKey) -> Result<bool, storage::Error> {
        self.alive(&filesystem.spec.path)?;
        self.0.inner.exists(filesystem, key)
    }

    fn delete(&self, filesystem: &Filesystem, key: &InstanceKey) -> Result<(), storage::Error> {
        let path = self.0.inner.describe(filesystem, key);
        self.alive(&path)?;
        let _changing = self.changing();
        self.0.inner.delete(filesystem, key)?;
        self.after_delete(&path);
        Ok(())
    }

    fn move_instance(
        &self,
        from: &Filesystem,
        to: &Filesystem,
        key: &InstanceKey,
        to_key: &InstanceKey,
    ) -> Result<u64, storage::Error> {
        let source = self.0.inner.describe(from, key);
        let target = self.0.inner.describe(to, to_key);
        self.alive(&source)?;
        let _changing = self.changing();
        let moved = self.0.inner.move_instance(from, to, key, to_key)?;
        let bytes = fs::read(&target).map_err(|e| storage::Error::Io {
            operation: "reading",
            path: target.clone(),
            source: e,
        })?;
        let mut model = lock(&self.0.model);
        model.fsynced.insert(target.clone());
        model.settle_path(&self.0.roots, &target, Arc::new(bytes));
        model.forget(&source);
        Ok(moved)
    }

    fn read_series_metadata(
        &self,
        filesystem: &Filesystem,
        key: &SeriesKey,
    ) -> Result<Option<Vec<u8>>, storage::Error> {
        self.alive(&filesystem.spec.path)?;
        self.0.inner.read_series_metadata(filesystem, key)
    }

    fn series_with_metadata(
        &self,
        filesystem: &Filesystem,
        location: &StudyLocation,
    ) -> Result<Vec<Uid>, storage::Error> {
        self.alive(&filesystem.spec.path)?;
        self.0.inner.series_with_metadata(filesystem, location)
    }

    fn delete_series_metadata(
        &self,
        filesystem: &Filesystem,
        key: &SeriesKey,
    ) -> Result<(), storage::Error> {
        let path = filesystem.spec.path.join(layout::series_metadata_path(key));
        self.alive(&path)?;
        let _changing = self.changing();
        self.0.inner.delete_series_metadata(filesystem, key)?;
        self.after_delete(&path);
        Ok(())
    }

    fn delete_study_metadata(
        &self,
        filesystem: &Filesystem,
        location: &StudyLocation,
    ) -> Result<u64, storage::Error> {
        let dir = filesystem.spec.path.join(layout::metadata_dir(location));
        self.alive(&dir)?;
        let _changing = self.changing();
        let deleted = self.0.inner.delete_study_metadata(filesystem, location)?;
        let mut model = lock(&self.0.model);
        model.durable.insert(dir.clone(), Entries::new());
        if !dir.exists() {
            model.forget(&dir);
        }
        Ok(deleted)
    }

    fn list_study(
        &self,
        filesystem: &Filesystem,
        location: &StudyLocation,
    ) -> Result<Vec<StudyObject>, storage::Error> {
        self.alive(&filesystem.spec.path)?;
        self.0.inner.list_study(filesystem, location)
    }

    fn list_studies(
        &self,
        filesystem: &Filesystem,
        visit: &mut dyn FnMut(StudyLocation) -> std::ops::ControlFlow<()>,
    ) -> Result<(), storage::Error> {
        self.alive(&filesystem.spec.path)?;
        self.0.inner.list_studies(filesystem, visit)
    }

    fn delete_aside(
        &self,
        filesystem: &Filesystem,
        key: &InstanceKey,
        variant: u64,
    ) -> Result<(), storage::Error> {
        let path = filesystem.spec.path.join(layout::aside_path(key, variant));
        self.alive(&path)?;
        let _changing = self.changing();
        self.0.inner.delete_aside(filesystem, key, variant)?;
        self.after_delete(&path);
        Ok(())
    }

    fn open_aside(
        &self,
        filesystem: &Filesystem,
        key: &InstanceKey,
        variant: u64,
    ) -> Result<Box<dyn Read + Send>, storage::Error> {
        self.alive(&filesystem.spec.path)?;
        self.0.inner.open_aside(filesystem, key, variant)
    }

    fn replace_with_aside(
        &self,
        filesystem: &Filesystem,
        key: &InstanceKey,
        variant: u64,
    ) -> Result<(), storage::Error> {
        let aside = filesystem.spec.path.join(layout::aside_path(key, variant));
        let target = self.0.inner.describe(filesystem, key);
        self.alive(&target)?;
        let _changing = self.changing();
        self.0.inner.replace_with_aside(filesystem, key, variant)?;
        // Durable on return: the copy's bytes (fsync'd when it was
        // persisted aside) under the instance's name, the aside name gone.
        let bytes = fs::read(&target).map_err(|e| storage::Error::Io {
            operation: "reading",
            path: target.clone(),
            source: e,
        })?;
        let mut model = lock(&self.0.model);
        model.forget(&aside);
        model.fsynced.insert(target.clone());
        model.settle_path(&self.0.roots, &target, Arc::new(bytes));
        Ok(())
    }

    fn remove_empty_study_folders(
        &self,
        filesystem: &Filesystem,
        location: &StudyLocation,
    ) -> Result<(), storage::Error> {
        let folder = filesystem.spec.path.join(layout::study_dir(location));
        self.alive(&folder)?;
        let _changing = self.changing();
        self.0
            .inner
            .remove_empty_study_folders(filesystem, location)?;
        // Only the study folder's own removal is synced (its parent); an
        // emptied series folder may come back, empty.
        if !folder.exists() {
            self.after_delete(&folder);
        }
        Ok(())
    }

    fn describe(&self, filesystem: &Filesystem, key: &InstanceKey) -> PathBuf {
        self.0.inner.describe(filesystem, key)
    }

    fn usage(&self, filesystem: &Filesystem) -> Result<Usage, storage::Error> {
        self.alive(&filesystem.spec.path)?;
        self.0.inner.usage(filesystem)
    }

    fn read_marker(&self, filesystem: &Filesystem) -> Result<Option<String>, storage::Error> {
        self.alive(&filesystem.spec.path)?;
        self.0.inner.read_marker(filesystem)
    }

    fn write_marker(&self, filesystem: &Filesystem, marker: &str) -> Result<(), storage::Error> {
        self.alive(&filesystem.spec.path)?;
        self.0.inner.write_marker(filesystem, marker)
    }

    fn sweep_temporary(
        &self,
        filesystem: &Filesystem,
        stale_after: std::time::Duration,
    ) -> Result<storage::SweepReport, storage::Error> {
        self.alive(&filesystem.spec.path)?;
        self.0.inner.sweep_temporary(filesystem, stale_after)
    }
}

/// An [`FsStorage`] writer that dies with the process.
struct CrashWriter {
    inner: Box<dyn ObjectWriter>,
    storage: CrashStorage,
    root: PathBuf,
}

impl Write for CrashWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.storage.0.crash.alive()?;
        self.inner.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.storage.0.crash.alive()?;
        self.inner.flush()
    }
}

impl CrashWriter {
    /// Persists to `relative` through `persist`, then crashes if planned.
    fn persist_as(
        self,
        relative: PathBuf,
        persist: impl FnOnce(Box<dyn ObjectWriter>) -> Result<PendingSync, storage::Error>,
    ) -> Result<PendingSync, storage::Error> {
        let CrashWriter {
            inner,
            storage,
            root,
        } = self;
        let path = root.join(relative);
        storage.alive(&path)?;
        // persist fsyncs the data before the rename gives it this name.
        lock(&storage.0.model).fsynced.insert(path.clone());
        let pending = {
            let _changing = storage.changing();
            persist(inner)?
        };
        if storage
            .0
            .crash
            .count(Event::Rename, || format!("rename to {}", path.display()))
        {
            return Err(crashed_storage(&path));
        }
        Ok(pending)
    }
}

impl ObjectWriter for CrashWriter {
    fn len(&self) -> u64 {
        self.inner.len()
    }

    fn read_back(&mut self) -> Result<Box<dyn Read + '_>, storage::Error> {
        self.storage.alive(&self.root)?;
        self.inner.read_back()
    }

    fn persist(self: Box<Self>, key: &InstanceKey) -> Result<PendingSync, storage::Error> {
        (*self).persist_as(layout::instance_path(key), |w| w.persist(key))
    }

    fn persist_aside(
        self: Box<Self>,
        key: &InstanceKey,
        variant: u64,
    ) -> Result<PendingSync, storage::Error> {
        (*self).persist_as(layout::aside_path(key, variant), |w| {
            w.persist_aside(key, variant)
        })
    }

    fn persist_series_metadata(
        self: Box<Self>,
        key: &SeriesKey,
    ) -> Result<PendingSync, storage::Error> {
        (*self).persist_as(layout::series_metadata_path(key), |w| {
            w.persist_series_metadata(key)
        })
    }
}

// ---------------------------------------------------------------------------
// The index, dying with the process

/// [`SqliteIndex`] behind the crash switch: nothing reaches it after the
/// crash, and a planned crash can follow a commit.
#[derive(Debug)]
struct CrashIndex {
    inner: Arc<SqliteIndex>,
    crash: Arc<Crash>,
}

impl CrashIndex {
    fn alive(&self) -> Result<(), db::Error> {
        self.crash.alive().map_err(|e| db::Error::Backend {
            operation: "simulating a crash",
            source: Box::new(e),
        })
    }
}

impl IndexStore for CrashIndex {
    fn ensure_partition(&self, spec: &PartitionSpec) -> Result<PartitionId, db::Error> {
        self.alive()?;
        self.inner.ensure_partition(spec)
    }

    fn partition(&self, ae_title: &AeTitle) -> Result<Option<PartitionId>, db::Error> {
        self.alive()?;
        self.inner.partition(ae_title)
    }

    fn ensure_filesystem(&self, spec: &FilesystemSpec) -> Result<FilesystemId, db::Error> {
        self.alive()?;
        self.inner.ensure_filesystem(spec)
    }

    fn filesystems(&self) -> Result<Vec<Filesystem>, db::Error> {
        self.alive()?;
        self.inner.filesystems()
    }

    fn seed_filesystem(&self, spec: &FilesystemSpec) -> Result<(Filesystem, bool), db::Error> {
        self.alive()?;
        self.inner.seed_filesystem(spec)
    }

    fn update_filesystem(&self, filesystem: &Filesystem) -> Result<(), db::Error> {
        self.alive()?;
        self.inner.update_filesystem(filesystem)
    }

    fn record_filesystem_marker(
        &self,
        id: imageserver_core::model::FilesystemId,
        marker: &str,
    ) -> Result<String, db::Error> {
        self.alive()?;
        self.inner.record_filesystem_marker(id, marker)
    }

    fn filesystem_held_bytes(
        &self,
    ) -> Result<Vec<(imageserver_core::model::FilesystemId, u64)>, db::Error> {
        self.alive()?;
        self.inner.filesystem_held_bytes()
    }

    fn ensure_device(&self, partition: PartitionId, spec: &DeviceSpec) -> Result<(), db::Error> {
        self.alive()?;
        self.inner.ensure_device(partition, spec)
    }

    fn register_device(
        &self,
        partition: PartitionId,
        spec: &DeviceSpec,
        max_devices: u64,
    ) -> Result<Option<DeviceSpec>, db::Error> {
        self.alive()?;
        self.inner.register_device(partition, spec, max_devices)
    }

    fn device(
        &self,
        partition: PartitionId,
        ae_title: &AeTitle,
    ) -> Result<Option<DeviceSpec>, db::Error> {
        self.alive()?;
        self.inner.device(partition, ae_title)
    }

    fn delete_device(&self, partition: PartitionId, ae_title: &AeTitle) -> Result<bool, db::Error> {
        self.alive()?;
        self.inner.delete_device(partition, ae_title)
    }

    fn devices(&self, partition: PartitionId) -> Result<Vec<DeviceSpec>, db::Error> {
        self.alive()?;
        self.inner.devices(partition)
    }

    fn study_location(
        &self,
        partition: PartitionId,
        study_uid: &Uid,
    ) -> Result<Option<StudyLocation>, db::Error> {
        self.alive()?;
        self.inner.study_location(partition, study_uid)
    }

    fn claim_study_location(
        &self,
        partition: PartitionId,
        proposed: &StudyLocation,
    ) -> Result<StudyLocation, db::Error> {
        self.alive()?;
        self.inner.claim_study_location(partition, proposed)
    }

    fn study_deletions(
        &self,
        partition: PartitionId,
        study_uid: &Uid,
    ) -> Result<StudyDeletions, db::Error> {
        self.alive()?;
        self.inner.study_deletions(partition, study_uid)
    }

    fn insert_instances_then(
        &self,
        batch: &[InstanceRecord],
        follow_up: Option<&FollowUp>,
    ) -> Result<Vec<InsertOutcome>, db::Error> {
        self.alive()?;
        let outcomes = self.inner.insert_instances_then(batch, follow_up)?;
        if self.crash.count(Event::Commit, || {
            format!("index commit of {} instance(s)", batch.len())
        }) {
            self.alive()?;
        }
        Ok(outcomes)
    }

    fn instance(
        &self,
        partition: PartitionId,
        sop_instance_uid: &Uid,
    ) -> Result<Option<StoredInstance>, db::Error> {
        self.alive()?;
        self.inner.instance(partition, sop_instance_uid)
    }

    fn counts(&self, partition: PartitionId) -> Result<IndexCounts, db::Error> {
        self.alive()?;
        self.inner.counts(partition)
    }

    fn record_duplicate(&self, duplicate: &DuplicateRecord) -> Result<(), db::Error> {
        self.alive()?;
        self.inner.record_duplicate(duplicate)
    }

    fn duplicates(&self, partition: PartitionId) -> Result<Vec<DuplicateRecord>, db::Error> {
        self.alive()?;
        self.inner.duplicates(partition)
    }

    fn study_patient(
        &self,
        partition: PartitionId,
        study_uid: &Uid,
    ) -> Result<Option<PatientAttrs>, db::Error> {
        self.alive()?;
        self.inner.study_patient(partition, study_uid)
    }

    fn study_edits(
        &self,
        partition: PartitionId,
        study_uid: &Uid,
    ) -> Result<Vec<EditRecord>, db::Error> {
        self.alive()?;
        self.inner.study_edits(partition, study_uid)
    }

    fn hold_for_reconcile(&self, entry: &ReconcileEntry) -> Result<i64, db::Error> {
        self.alive()?;
        self.inner.hold_for_reconcile(entry)
    }

    fn remove_instance_row(
        &self,
        partition: PartitionId,
        file: &db::InstanceFile,
    ) -> Result<bool, db::Error> {
        self.alive()?;
        self.inner.remove_instance_row(partition, file)
    }
}

// ---------------------------------------------------------------------------
// Data sets and the workload

const UID_ROOT: &str = "1.2.826.0.1.3680043.9.7433";
const SECONDARY_CAPTURE: &str = "1.2.840.10008.5.1.4.1.1.7";
const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";

/// A small valid data set (Explicit VR Little Endian, no meta group).
fn data_set(study: &str, series: &str, sop: &str, version: u32) -> Vec<u8> {
    let text = |tag: (u16, u16), vr: VR, value: &str| {
        DataElement::new(Tag(tag.0, tag.1), vr, PrimitiveValue::from(value))
    };
    let pixels: Vec<u8> = (0..1024u32)
        .map(|i| (i.wrapping_mul(31) ^ version) as u8)
        .collect();
    let object = InMemDicomObject::from_element_iter([
        text((0x0008, 0x0016), VR::UI, SECONDARY_CAPTURE),
        text((0x0008, 0x0018), VR::UI, sop),
        text((0x0008, 0x0020), VR::DA, "20240315"),
        text((0x0008, 0x0060), VR::CS, "OT"),
        text((0x0008, 0x103E), VR::LO, &format!("version {version}")),
        text((0x0010, 0x0020), VR::LO, "CRASH-1"),
        text((0x0020, 0x000D), VR::UI, study),
        text((0x0020, 0x000E), VR::UI, series),
        text((0x0020, 0x0013), VR::IS, &version.to_string()),
        DataElement::new(Tag(0x7FE0, 0x0010), VR::OB, PrimitiveValue::from(pixels)),
    ]);
    let mut bytes = Vec::new();
    object
        .write_dataset_with_ts(&mut bytes, &EXPLICIT_VR_LITTLE_ENDIAN.erased())
        .expect("encoding a data set");
    bytes
}

/// Where a re-sent instance goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resend {
    /// Into the other series of its study: a new path, the old file
    /// deleted after the commit.
    OtherSeries,
    /// Into the same series: the new file is renamed over the old one.
    SameSeries,
}

#[derive(Debug, Clone, Copy)]
struct Workload {
    threads: usize,
    sends_per_thread: usize,
    /// Every this many sends, a thread re-sends its previous instance with
    /// new content (accept-latest replaces it).
    resend_every: usize,
    resend: Resend,
    /// New instances per study (new studies mean new folders mid-run).
    per_study: usize,
}

const LOAD: Workload = Workload {
    threads: 4,
    sends_per_thread: 12,
    resend_every: 4,
    resend: Resend::OtherSeries,
    per_study: 10,
};

/// One version of an instance as sent, and whether `finish` returned Ok.
#[derive(Debug, Clone)]
struct Version {
    data_set: Vec<u8>,
    acked: bool,
}

/// Everything sent for one SOP instance, in order (one thread sends it).
#[derive(Debug, Clone, Default)]
struct History {
    versions: Vec<Version>,
}

struct Fixture {
    _dirs: Vec<tempfile::TempDir>,
    db_path: PathBuf,
    roots: Vec<PathBuf>,
    partition: Partition,
}

fn fixture() -> Fixture {
    let db_dir = tempfile::tempdir().unwrap();
    let fs_dir = tempfile::tempdir().unwrap();
    let db_path = db_dir.path().join("index.db");
    let index = SqliteIndex::open(&db_path).unwrap();
    index
        .ensure_filesystem(&FilesystemSpec {
            path: fs_dir.path().to_path_buf(),
            tier: Tier(1),
            high_watermark: 99.0,
            low_watermark: 98.0,
            read_only: false,
            write_only: false,
            description: "crash test".into(),
            capacity_mb: None,
        })
        .unwrap();
    let ae_title = AeTitle::parse("CRASHTEST").unwrap();
    let folder = FolderName::parse("CRASH").unwrap();
    let id = index
        .ensure_partition(&PartitionSpec {
            ae_title: ae_title.clone(),
            folder: folder.clone(),
            description: String::new(),
            port: 0,
            accept_unknown_devices: true,
            duplicate_policy: DuplicatePolicy::AcceptLatest,
            pn_case_insensitive: true,
        })
        .unwrap();
    Fixture {
        roots: vec![fs_dir.path().to_path_buf()],
        _dirs: vec![db_dir, fs_dir],
        db_path,
        partition: Partition {
            id,
            ae_title,
            folder,
            duplicate_policy: DuplicatePolicy::AcceptLatest,
        },
    }
}

fn send(
    ingest: &Ingest,
    partition: &Partition,
    sop: &str,
    data_set: &[u8],
) -> Result<(), IngestError> {
    let mut writer = ingest.begin(StoreRequest {
        partition,
        sop_class_uid: SECONDARY_CAPTURE,
        sop_instance_uid: sop,
        transfer_syntax_uid: EXPLICIT_LE,
        source_ae: Some("MODALITY"),
        may_replace: true,
    })?;
    for chunk in data_set.chunks(700) {
        writer.write_data(chunk);
    }
    ingest.finish(writer).map(|_| ())
}

/// One send of a thread's script.
#[derive(Debug, Clone)]
struct Step {
    sop: String,
    study: String,
    /// 1 or 2: the series of the study.
    series: usize,
    version: u32,
}

impl Step {
    fn data_set(&self) -> Vec<u8> {
        let series = format!("{}.{}", self.study, self.series);
        data_set(&self.study, &series, &self.sop, self.version)
    }
}

/// What one thread sends, step by step: new instances (a new study every
/// `per_study` of them, across threads) and, every `resend_every` steps, a
/// new version of its previous instance.
fn script(
    load: Workload,
    thread: usize,
    next_instance: &AtomicUsize,
) -> impl FnMut(usize) -> Step + '_ {
    let mut last: Option<Step> = None;
    move |step| {
        let resend = step % load.resend_every == load.resend_every - 1;
        match (last.as_mut(), resend) {
            (Some(previous), true) => {
                previous.version += 1;
                if load.resend == Resend::OtherSeries {
                    previous.series = 3 - previous.series;
                }
                previous.clone()
            }
            _ => {
                let k = next_instance.fetch_add(1, Ordering::SeqCst);
                let new = Step {
                    sop: format!("{UID_ROOT}.2.{}.{}", thread + 1, step + 1),
                    study: format!("{UID_ROOT}.1.{}", k / load.per_study + 1),
                    series: k % 2 + 1,
                    version: 1,
                };
                last = Some(new.clone());
                new
            }
        }
    }
}

/// The outcome of one crash run, for the summary line.
struct RunReport {
    crash: String,
    sent: usize,
    acked: usize,
    changes: usize,
}

/// Ingests `load` under `moment`, crashes, recovers and checks. Panics with
/// every violation found.
fn crash_run(moment: Moment, load: Workload) -> RunReport {
    let fixture = fixture();
    let crash = Crash::new(moment);
    let sqlite = Arc::new(SqliteIndex::open(&fixture.db_path).unwrap());
    let index: Arc<dyn IndexStore> = Arc::new(CrashIndex {
        inner: sqlite.clone(),
        crash: crash.clone(),
    });
    let storage = CrashStorage::new(&fixture.roots, crash.clone());
    let ingest = Ingest::new(index, Arc::new(storage.clone()), 0).unwrap();
    let next_instance = AtomicUsize::new(0);
    let histories: Mutex<HashMap<String, History>> = Mutex::new(HashMap::new());
    let violations: Mutex<Vec<String>> = Mutex::new(Vec::new());

    std::thread::scope(|scope| {
        for thread in 0..load.threads {
            let (ingest, crash, storage, sqlite) = (&ingest, &crash, &storage, &sqlite);
            let (histories, violations, partition) = (&histories, &violations, &fixture.partition);
            let next_instance = &next_instance;
            scope.spawn(move || {
                let mut script = script(load, thread, next_instance);
                for step in 0..load.sends_per_thread {
                    if crash.crashed() {
                        break;
                    }
                    let next = script(step);
                    let (sop, data_set) = (next.sop.clone(), next.data_set());
                    let acked = send(ingest, partition, &sop, &data_set).is_ok();
                    if acked {
                        // At the moment of the response the instance must
                        // already survive a crash.
                        if let Some(problem) =
                            durable_at_ack(storage, sqlite, partition.id, &sop, &data_set)
                        {
                            lock(violations).push(problem);
                        }
                    }
                    lock(histories)
                        .entry(sop.clone())
                        .or_default()
                        .versions
                        .push(Version { data_set, acked });
                    if acked {
                        crash.count(Event::Ack, || format!("response for {sop}"));
                    }
                }
            });
        }
    });
    assert!(
        crash.crashed(),
        "{moment:?} was never reached ({}): the workload is too small for it, or \
         the step never happens",
        crash.tally()
    );
    // Everything of the dead process goes: the committer thread is joined
    // and the index closed before the loss is applied.
    drop(ingest);
    drop(sqlite);
    let changes = storage.apply_crash();
    drop(storage);

    let index = Arc::new(SqliteIndex::open(&fixture.db_path).unwrap());
    let histories = histories.into_inner().unwrap();
    let mut violations = violations.into_inner().unwrap();
    violations.extend(check_recovered(&index, &fixture, &histories, false));

    // The archive keeps working on what the crash left: every instance
    // sent again is stored, over whatever the crash left of it.
    if violations.is_empty() {
        let ingest = Ingest::new(index.clone(), Arc::new(FsStorage::new()), 0).unwrap();
        for (sop, history) in &histories {
            let last = &history.versions.last().unwrap().data_set;
            if let Err(e) = send(&ingest, &fixture.partition, sop, last) {
                violations.push(format!(
                    "{sop}: cannot be stored again after the crash: {e:?}"
                ));
            }
        }
        drop(ingest);
        violations.extend(check_recovered(&index, &fixture, &histories, true));
    }

    let sent = histories.values().map(|h| h.versions.len()).sum();
    let acked = histories
        .values()
        .flat_map(|h| &h.versions)
        .filter(|v| v.acked)
        .count();
    let report = RunReport {
        crash: crash.description(),
        sent,
        acked,
        changes: changes.len(),
    };
    if !violations.is_empty() {
        panic!(
            "crash at {}: {} sent, {} acknowledged; {} violation(s):\n  {}\nwhat the crash discarded:\n  {}",
            report.crash,
            report.sent,
            report.acked,
            violations.len(),
            violations.join("\n  "),
            changes.join("\n  ")
        );
    }
    report
}

/// Whether an acknowledged instance is durable in the model; a problem
/// description when it is not.
fn durable_at_ack(
    storage: &CrashStorage,
    index: &SqliteIndex,
    partition: PartitionId,
    sop: &str,
    data_set: &[u8],
) -> Option<String> {
    let uid = Uid::parse(sop).unwrap();
    let row = match index.instance(partition, &uid) {
        Ok(Some(row)) => row,
        Ok(None) => return Some(format!("{sop}: acknowledged while not in the index")),
        Err(e) => return Some(format!("{sop}: index lookup failed: {e}")),
    };
    let path = path_of(&storage.0.roots[..], &row);
    match storage.durable_file(&path) {
        Err(why) => Some(format!(
            "{sop}: acknowledged while {} would not survive a crash ({why})",
            path.display()
        )),
        Ok(bytes) if !bytes.ends_with(data_set) => Some(format!(
            "{sop}: acknowledged while a crash would leave other bytes at {}",
            path.display()
        )),
        Ok(_) => None,
    }
}

fn path_of(roots: &[PathBuf], row: &StoredInstance) -> PathBuf {
    let key = InstanceKey {
        location: row.location.clone(),
        series_uid: row.series_uid.clone(),
        sop_instance_uid: row.sop_instance_uid.clone(),
    };
    // One filesystem per fixture: its id is 1.
    assert_eq!(row.location.filesystem, FilesystemId(1));
    roots[0].join(layout::instance_path(&key))
}

/// The invariants after a restart: every acknowledged instance indexed,
/// every indexed instance's file present with the indexed size and digest
/// and holding the last acknowledged version or a later one (`final_`:
/// exactly the last version sent), and no row for anything never sent.
fn check_recovered(
    index: &SqliteIndex,
    fixture: &Fixture,
    histories: &HashMap<String, History>,
    final_: bool,
) -> Vec<String> {
    let mut violations = Vec::new();
    let filesystems = index.filesystems().unwrap();
    let storage = FsStorage::new();
    let mut rows = 0;
    let mut sops: Vec<_> = histories.keys().collect();
    sops.sort();
    for sop in sops {
        let history = &histories[sop];
        let uid = Uid::parse(sop).unwrap();
        let last_acked = history.versions.iter().rposition(|v| v.acked);
        let row = index.instance(fixture.partition.id, &uid).unwrap();
        let Some(row) = row else {
            if last_acked.is_some() || final_ {
                let what = if final_ {
                    "stored again"
                } else {
                    "acknowledged"
                };
                violations.push(format!("{sop}: {what}, but not in the index"));
            }
            continue;
        };
        rows += 1;
        let filesystem = filesystems
            .iter()
            .find(|f| f.id == row.location.filesystem)
            .unwrap();
        let key = InstanceKey {
            location: row.location.clone(),
            series_uid: row.series_uid.clone(),
            sop_instance_uid: row.sop_instance_uid.clone(),
        };
        let path = storage.describe(filesystem, &key);
        let mut bytes = Vec::new();
        if let Err(e) = storage.open(filesystem, &key).and_then(|mut r| {
            r.read_to_end(&mut bytes).map_err(|e| storage::Error::Io {
                operation: "reading",
                path: path.clone(),
                source: e,
            })
        }) {
            violations.push(format!(
                "{sop}: indexed ({} bytes) but its file is missing: {e}",
                row.file_size
            ));
            continue;
        }
        let digest = blake3::hash(&bytes).to_hex().to_string();
        if bytes.len() as u64 != row.file_size || digest != row.digest {
            violations.push(format!(
                "{sop}: the file at {} ({} bytes, digest {}) is not the indexed one ({} bytes, digest {})",
                path.display(),
                bytes.len(),
                &digest[..12],
                row.file_size,
                &row.digest[..12.min(row.digest.len())]
            ));
        }
        let from = match (final_, last_acked) {
            (true, _) => history.versions.len() - 1,
            (false, Some(i)) => i,
            (false, None) => 0,
        };
        let held = history
            .versions
            .iter()
            .rposition(|v| bytes.ends_with(&v.data_set));
        match held {
            Some(i) if i >= from => {}
            Some(i) => violations.push(format!(
                "{sop}: the file holds version {} of {}, older than version {} (acknowledged or stored again)",
                i + 1,
                history.versions.len(),
                from + 1
            )),
            None => violations.push(format!("{sop}: the file holds no version that was sent")),
        }
    }
    let counted = index.counts(fixture.partition.id).unwrap().instances;
    if counted != rows {
        violations.push(format!(
            "the index counts {counted} instances, {rows} of them sent"
        ));
    }
    violations
}

fn run_all(moments: &[Moment], load: Workload) {
    for &moment in moments {
        let started = Instant::now();
        let report = crash_run(moment, load);
        eprintln!(
            "crash at {}: {} sent, {} acknowledged, {} entries discarded or restored; ok in {:?}",
            report.crash,
            report.sent,
            report.acked,
            report.changes,
            started.elapsed()
        );
    }
}

// ---------------------------------------------------------------------------
// The tests

#[test]
fn crash_right_after_a_rename_loses_no_acknowledged_instance() {
    run_all(
        &[
            Moment::AfterRename(1),
            Moment::AfterRename(6),
            Moment::AfterRename(17),
            Moment::AfterRename(33),
        ],
        LOAD,
    );
}

#[test]
fn crash_between_directory_sync_and_commit_loses_no_acknowledged_instance() {
    run_all(
        &[
            Moment::AfterDirSync(1),
            Moment::AfterDirSync(3),
            Moment::AfterDirSync(6),
            Moment::AfterDirSync(9),
        ],
        LOAD,
    );
}

#[test]
fn crash_between_commit_and_response_loses_no_acknowledged_instance() {
    run_all(
        &[
            Moment::AfterCommit(1),
            Moment::AfterCommit(4),
            Moment::AfterCommit(8),
            Moment::AfterAck(1),
            Moment::AfterAck(9),
            Moment::AfterAck(25),
        ],
        LOAD,
    );
}

/// Accept-latest over the same path: the new version is written under a
/// name of its own and takes the acknowledged file's place only once its
/// row is committed, so a crash between the sync and the commit leaves the
/// acknowledged version and its row as they were.
#[test]
fn crash_before_the_commit_of_a_replacement_keeps_the_acknowledged_instance() {
    let load = Workload {
        threads: 1,
        sends_per_thread: 2,
        resend_every: 2,
        resend: Resend::SameSeries,
        per_study: 10,
    };
    run_all(&[Moment::AfterDirSync(2)], load);
}

/// The model itself: what was synced survives, the rest goes.
#[test]
fn the_simulated_crash_discards_what_was_not_made_durable() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let crash = Crash::new(Moment::Manual);
    let storage = CrashStorage::new(std::slice::from_ref(&root), crash.clone());
    let filesystem = Filesystem {
        id: FilesystemId(1),
        spec: FilesystemSpec {
            path: root.clone(),
            tier: Tier(1),
            high_watermark: 99.0,
            low_watermark: 98.0,
            read_only: false,
            write_only: false,
            description: String::new(),
            capacity_mb: None,
        },
        enabled: true,
        marker: None,
    };
    let key = |study: &str, series: &str, sop: &str| InstanceKey {
        location: StudyLocation {
            filesystem: FilesystemId(1),
            partition_folder: FolderName::parse("P").unwrap(),
            date_folder: "20240101".into(),
            study_uid: Uid::parse(study).unwrap(),
        },
        series_uid: Uid::parse(series).unwrap(),
        sop_instance_uid: Uid::parse(sop).unwrap(),
    };
    let write = |key: &InstanceKey, bytes: &[u8]| {
        let mut writer = storage.begin_write(&filesystem).unwrap();
        writer.write_all(bytes).unwrap();
        writer.persist(key).unwrap()
    };
    let path = |key: &InstanceKey| storage.describe(&filesystem, key);

    let kept = key("1.1", "1.1.1", "1.1.1.1");
    let replaced = key("1.1", "1.1.1", "1.1.1.2");
    let unsynced = key("1.1", "1.1.1", "1.1.1.3");
    let new_series = key("1.1", "1.1.2", "1.1.2.1");
    let new_study = key("1.2", "1.2.1", "1.2.1.1");
    let deleted = key("1.1", "1.1.1", "1.1.1.4");

    let mut pending = write(&kept, b"kept");
    pending.merge(write(&replaced, b"old"));
    pending.merge(write(&deleted, b"deleted"));
    storage.sync(pending).unwrap();
    assert_eq!(
        storage.durable_file(&path(&kept)).unwrap().as_slice(),
        b"kept"
    );
    let _ = write(&replaced, b"new");
    let _ = write(&unsynced, b"unsynced");
    let _ = write(&new_study, b"new study");
    storage.sync(write(&new_series, b"new series")).unwrap();
    storage.delete(&filesystem, &deleted).unwrap();
    assert_eq!(
        storage.durable_file(&path(&replaced)).unwrap().as_slice(),
        b"old"
    );
    assert!(storage.durable_file(&path(&unsynced)).is_err());

    crash.crash("by hand".into());
    assert!(
        storage.begin_write(&filesystem).is_err(),
        "the process is gone"
    );
    let changes = storage.apply_crash();
    assert_eq!(fs::read(path(&kept)).unwrap(), b"kept");
    assert_eq!(fs::read(path(&replaced)).unwrap(), b"old", "{changes:?}");
    assert_eq!(fs::read(path(&new_series)).unwrap(), b"new series");
    assert!(!path(&unsynced).exists(), "{changes:?}");
    assert!(!path(&deleted).exists(), "{changes:?}");
    let study_dir = root.join(layout::study_dir(&new_study.location));
    assert!(
        !study_dir.exists(),
        "a new study folder never synced: {changes:?}"
    );
    let temp = root.join(layout::TEMP_DIR);
    assert!(
        !temp.exists() || fs::read_dir(&temp).unwrap().next().is_none(),
        "temporary files are not kept: {changes:?}"
    );
}
