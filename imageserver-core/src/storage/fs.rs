//! The filesystem backend: local disks and NAS mounts.
//!
//! The durable-write recipe (garage's, batched): write to a temporary file
//! under `<root>/.tmp`, `fdatasync` it, rename it into place, then fsync the
//! directory that received the entry, and the parents of any directory
//! created on the way. Directory syncs are deferred to
//! [`StorageBackend::sync`] so that one sync covers many instances.
//!
//! A directory created by one writer may be used by another writer whose
//! batch is synced first; [`FsStorage`] therefore remembers directories whose
//! own entry is not yet durable, and every write that lands below one of them
//! also syncs its parent.
//!
//! Deferred persistence (rename before the data sync) and the group
//! commit's journal of open batches that makes it safe are
//! [`DeferredSync`], in `fs/journal.rs`.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

mod journal;
mod listing;
mod place;
mod spares;
mod temp;
mod writer;

use listing::{list_study_folder, sorted_folders};
use temp::{temp_name, PART_SUFFIX};
use writer::FsWriter;

use super::{
    layout, DeferredSync, Error, InstanceKey, ObjectWriter, PendingSync, SeriesKey, StorageBackend,
    StudyObject, SweepReport, Usage,
};
use crate::model::{Filesystem, StudyLocation, Uid};

/// Write buffer per open instance: large enough that 4 KiB PDUs do not cost
/// one syscall each, small enough to keep memory per association low.
const WRITE_BUFFER: usize = 256 * 1024;

/// Storage on directories of the local machine (local disk or a NAS mount).
#[derive(Debug, Default, Clone)]
pub struct FsStorage {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Directories we created whose entry in their parent is not yet
    /// durable, each with the number it was made under (a folder removed and
    /// made again is a new one).
    unsynced_dirs: Mutex<HashMap<PathBuf, u64>>,
    /// Distinguishes temporary files and folders made by one process.
    counter: AtomicU64,
    /// The open-batch journals written through this backend.
    journals: journal::OpenJournals,
    /// Temporary files made ahead of need.
    spares: spares::Spares,
    /// Offers no [`DeferredSync`] (a wrapper that does not pass it on).
    #[cfg(test)]
    without_deferral: bool,
}

impl FsStorage {
    /// A backend with no state beyond the filesystems passed to each call.
    pub fn new() -> FsStorage {
        FsStorage::default()
    }

    /// A backend whose [`StorageBackend::deferred`] is `None`, as a wrapper
    /// that does not pass it on (its `persist_deferred` still works).
    #[cfg(all(test, feature = "sqlite"))]
    pub(crate) fn without_deferral() -> FsStorage {
        FsStorage {
            inner: Arc::new(Inner {
                without_deferral: true,
                ..Inner::default()
            }),
        }
    }

    fn temp_path(&self, root: &Path) -> PathBuf {
        let n = self.inner.counter.fetch_add(1, Ordering::Relaxed);
        root.join(layout::TEMP_DIR).join(temp_name(n, PART_SUFFIX))
    }

    /// Creates `dir` and any missing ancestors below `root`, recording each
    /// created directory as not yet durable.
    fn create_dirs(&self, root: &Path, dir: &Path) -> Result<(), Error> {
        let mut missing = Vec::new();
        let mut cursor = dir;
        while cursor != root && !cursor.is_dir() {
            missing.push(cursor.to_path_buf());
            match cursor.parent() {
                Some(parent) => cursor = parent,
                None => break,
            }
        }
        for created in missing.into_iter().rev() {
            // Made and remembered in one step: a writer that finds the
            // directory must find it remembered too, or its pending set
            // lacks the parent and its instance can be acknowledged while
            // the folder's entry is not durable.
            let mut unsynced = self.lock_unsynced();
            match fs::create_dir(&created) {
                Ok(()) => {
                    let made = self.inner.counter.fetch_add(1, Ordering::Relaxed);
                    unsynced.insert(created, made);
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io_error("creating directory", &created, root, e)),
            }
        }
        Ok(())
    }

    /// Removes `dir` if it is empty, forgetting it in the same step (so that
    /// a writer making it again is remembered). Whether it was removed.
    fn remove_dir_if_empty(&self, dir: &Path) -> bool {
        let mut unsynced = self.lock_unsynced();
        let removed = fs::remove_dir(dir).is_ok();
        if removed {
            unsynced.remove(dir);
        }
        removed
    }

    fn lock_unsynced(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, u64>> {
        // A poisoned set only means a panic elsewhere; the set is still valid.
        self.inner
            .unsynced_dirs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl StorageBackend for FsStorage {
    fn deferred(&self) -> Option<&dyn DeferredSync> {
        #[cfg(test)]
        if self.inner.without_deferral {
            return None;
        }
        Some(self)
    }

    fn begin_write(&self, filesystem: &Filesystem) -> Result<Box<dyn ObjectWriter>, Error> {
        let root = filesystem.spec.path.clone();
        let temp_dir = root.join(layout::TEMP_DIR);
        let temp_path = self.temp_path(&root);
        let file = match self.inner.spares.take(&temp_dir, &temp_path) {
            Some(file) => file,
            None => {
                if !temp_dir.is_dir() {
                    fs::create_dir_all(&temp_dir)
                        .map_err(|e| io_error("creating directory", &temp_dir, &root, e))?;
                }
                OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&temp_path)
                    .map_err(|e| io_error("creating", &temp_path, &root, e))?
            }
        };
        Ok(Box::new(FsWriter {
            storage: self.clone(),
            root,
            temp_path,
            file: Some(BufWriter::with_capacity(WRITE_BUFFER, file)),
            len: 0,
            writeback_from: 0,
        }))
    }

    fn sync(&self, mut pending: PendingSync) -> Result<(), Error> {
        for file in &pending.files {
            file.sync_data().map_err(|e| Error::Io {
                operation: "syncing",
                path: PathBuf::from("a deferred instance file"),
                source: e,
            })?;
        }
        // Deferred files not placed yet: their data is durable now, so
        // this is the eager order.
        pending.place_files()?;
        let mut dirs = Vec::new();
        let mut seen = HashSet::new();
        for dir in &pending.dirs {
            if seen.insert(dir.as_path()) {
                dirs.push(dir.as_path());
            }
        }
        // The entries *in* a synced directory are durable: its children that
        // we created no longer need their parent synced. Only those made
        // before the fsyncs start: one made while they run may not be
        // covered, and stays remembered.
        let settled: Vec<(PathBuf, u64)> = self
            .lock_unsynced()
            .iter()
            .filter(|(created, _)| created.parent().is_some_and(|p| seen.contains(p)))
            .map(|(created, made)| (created.clone(), *made))
            .collect();
        for dir in dirs {
            sync_dir(dir)?;
        }
        let mut unsynced = self.lock_unsynced();
        for (created, made) in settled {
            if unsynced.get(&created) == Some(&made) {
                unsynced.remove(&created);
            }
        }
        Ok(())
    }

    fn open(
        &self,
        filesystem: &Filesystem,
        key: &InstanceKey,
    ) -> Result<Box<dyn Read + Send>, Error> {
        let path = filesystem.spec.path.join(layout::instance_path(key));
        match File::open(&path) {
            Ok(file) => Ok(Box::new(io::BufReader::with_capacity(WRITE_BUFFER, file))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(Error::NotFound {
                what: path.display().to_string(),
            }),
            Err(e) => Err(io_error("opening", &path, &filesystem.spec.path, e)),
        }
    }

    fn exists(&self, filesystem: &Filesystem, key: &InstanceKey) -> Result<bool, Error> {
        let path = filesystem.spec.path.join(layout::instance_path(key));
        match fs::metadata(&path) {
            Ok(meta) => Ok(meta.is_file()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_error("inspecting", &path, &filesystem.spec.path, e)),
        }
    }

    fn delete(&self, filesystem: &Filesystem, key: &InstanceKey) -> Result<(), Error> {
        let path = filesystem.spec.path.join(layout::instance_path(key));
        remove_durably(&path, &filesystem.spec.path)
    }

    fn move_instance(
        &self,
        from: &Filesystem,
        to: &Filesystem,
        key: &InstanceKey,
        to_key: &InstanceKey,
    ) -> Result<u64, Error> {
        let source_path = from.spec.path.join(layout::instance_path(key));
        let mut source = self.open(from, key)?;
        let mut writer = self.begin_write(to)?;
        let copied = io::copy(&mut source, &mut writer)
            .map_err(|e| io_error("copying", &source_path, &to.spec.path, e))?;
        let expected = fs::metadata(&source_path)
            .map_err(|e| io_error("inspecting", &source_path, &from.spec.path, e))?
            .len();
        if copied != expected {
            return Err(Error::Io {
                operation: "verifying the copy of",
                path: source_path,
                source: io::Error::other(format!("copied {copied} of {expected} bytes")),
            });
        }
        let pending = writer.persist(to_key)?;
        self.sync(pending)?;
        self.delete(from, key)?;
        Ok(copied)
    }

    fn read_series_metadata(
        &self,
        filesystem: &Filesystem,
        key: &SeriesKey,
    ) -> Result<Option<Vec<u8>>, Error> {
        let path = filesystem.spec.path.join(layout::series_metadata_path(key));
        match fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_error("reading", &path, &filesystem.spec.path, e)),
        }
    }

    fn series_with_metadata(
        &self,
        filesystem: &Filesystem,
        location: &StudyLocation,
    ) -> Result<Vec<Uid>, Error> {
        let root = &filesystem.spec.path;
        let dir = root.join(layout::metadata_dir(location));
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_error("listing", &dir, root, e)),
        };
        let mut series = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| io_error("listing", &dir, root, e))?;
            let name = entry.file_name();
            let uid = name
                .to_str()
                .and_then(|n| n.strip_suffix(".json"))
                .and_then(|n| Uid::parse(n).ok());
            if let Some(uid) = uid {
                series.push(uid);
            }
        }
        series.sort();
        Ok(series)
    }

    fn delete_series_metadata(
        &self,
        filesystem: &Filesystem,
        key: &SeriesKey,
    ) -> Result<(), Error> {
        let root = &filesystem.spec.path;
        let path = root.join(layout::series_metadata_path(key));
        remove_durably(&path, root)
    }

    fn delete_study_metadata(
        &self,
        filesystem: &Filesystem,
        location: &StudyLocation,
    ) -> Result<u64, Error> {
        let root = &filesystem.spec.path;
        let dir = root.join(layout::metadata_dir(location));
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(io_error("listing", &dir, root, e)),
        };
        let mut deleted = 0;
        for entry in entries {
            let path = entry
                .map_err(|e| io_error("listing", &dir, root, e))?
                .path();
            if !path.is_file() {
                continue;
            }
            match fs::remove_file(&path) {
                Ok(()) => deleted += 1,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_error("deleting", &path, root, e)),
            }
        }
        sync_dir(&dir)?;
        // The folder is ours alone; one that is not empty now holds
        // something we did not put there, and keeps it.
        if self.remove_dir_if_empty(&dir) {
            if let Some(study) = dir.parent() {
                sync_dir(study)?;
            }
        }
        Ok(deleted)
    }

    fn list_study(
        &self,
        filesystem: &Filesystem,
        location: &StudyLocation,
    ) -> Result<Vec<StudyObject>, Error> {
        let root = &filesystem.spec.path;
        let folder = root.join(layout::study_dir(location));
        list_study_folder(&folder).map_err(|e| io_error("listing", &folder, root, e))
    }

    fn list_studies(
        &self,
        filesystem: &Filesystem,
        visit: &mut dyn FnMut(StudyLocation) -> ControlFlow<()>,
    ) -> Result<(), Error> {
        let root = &filesystem.spec.path;
        let listing =
            |dir: &Path| sorted_folders(dir).map_err(|e| io_error("listing", dir, root, e));
        for (partition, partition_dir) in listing(root)? {
            for (date, date_dir) in listing(&partition_dir)? {
                for (study, _) in listing(&date_dir)? {
                    let Some(location) =
                        layout::study_location_of(filesystem.id, &partition, &date, &study)
                    else {
                        continue;
                    };
                    if visit(location).is_break() {
                        return Ok(());
                    }
                }
            }
        }
        Ok(())
    }

    fn delete_aside(
        &self,
        filesystem: &Filesystem,
        key: &InstanceKey,
        variant: u64,
    ) -> Result<(), Error> {
        let root = &filesystem.spec.path;
        let path = root.join(layout::aside_path(key, variant));
        remove_durably(&path, root)
    }

    fn open_aside(
        &self,
        filesystem: &Filesystem,
        key: &InstanceKey,
        variant: u64,
    ) -> Result<Box<dyn Read + Send>, Error> {
        let path = filesystem.spec.path.join(layout::aside_path(key, variant));
        match File::open(&path) {
            Ok(file) => Ok(Box::new(io::BufReader::with_capacity(WRITE_BUFFER, file))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(Error::NotFound {
                what: path.display().to_string(),
            }),
            Err(e) => Err(io_error("opening", &path, &filesystem.spec.path, e)),
        }
    }

    fn replace_with_aside(
        &self,
        filesystem: &Filesystem,
        key: &InstanceKey,
        variant: u64,
    ) -> Result<(), Error> {
        let root = &filesystem.spec.path;
        let aside = root.join(layout::aside_path(key, variant));
        let target = root.join(layout::instance_path(key));
        match fs::rename(&aside, &target) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(Error::NotFound {
                    what: aside.display().to_string(),
                })
            }
            Err(e) => return Err(io_error("renaming into", &target, root, e)),
        }
        // Both names are in the series folder: one directory sync.
        match target.parent() {
            Some(parent) => sync_dir(parent),
            None => Ok(()),
        }
    }

    fn remove_empty_study_folders(
        &self,
        filesystem: &Filesystem,
        location: &StudyLocation,
    ) -> Result<(), Error> {
        let folder = filesystem.spec.path.join(layout::study_dir(location));
        // A folder that is not empty keeps what is left (stray files, newer
        // arrivals): remove_dir refuses it.
        if let Ok(series_dirs) = fs::read_dir(&folder) {
            for series_dir in series_dirs.flatten() {
                self.remove_dir_if_empty(&series_dir.path());
            }
        }
        if self.remove_dir_if_empty(&folder) {
            if let Some(parent) = folder.parent() {
                sync_dir(parent)?;
            }
        }
        Ok(())
    }

    fn describe(&self, filesystem: &Filesystem, key: &InstanceKey) -> PathBuf {
        filesystem.spec.path.join(layout::instance_path(key))
    }

    fn sweep_temporary(
        &self,
        filesystem: &Filesystem,
        stale_after: std::time::Duration,
    ) -> Result<SweepReport, Error> {
        temp::sweep(&filesystem.spec.path, stale_after)
    }

    fn read_marker(&self, filesystem: &Filesystem) -> Result<Option<String>, Error> {
        let root = &filesystem.spec.path;
        let path = root.join(layout::MARKER_FILE);
        match fs::read(&path) {
            Ok(bytes) => Ok(Some(String::from_utf8_lossy(&bytes).trim().to_string())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_error("reading", &path, root, e)),
        }
    }

    fn write_marker(&self, filesystem: &Filesystem, marker: &str) -> Result<(), Error> {
        let root = &filesystem.spec.path;
        fs::create_dir_all(root).map_err(|e| io_error("creating directory", root, root, e))?;
        let path = root.join(layout::MARKER_FILE);
        let temp = root.join(format!(
            "{}.{}.new",
            layout::MARKER_FILE,
            std::process::id()
        ));
        let mut file = File::create(&temp).map_err(|e| io_error("creating", &temp, root, e))?;
        file.write_all(format!("{marker}\n").as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|e| io_error("writing", &temp, root, e))?;
        drop(file);
        // A hard link, not a rename: it fails when a marker is there.
        let linked = fs::hard_link(&temp, &path);
        let _ = fs::remove_file(&temp);
        linked.map_err(|e| io_error("creating", &path, root, e))?;
        sync_dir(root)
    }

    fn usage(&self, filesystem: &Filesystem) -> Result<Usage, Error> {
        statvfs(&filesystem.spec.path)
            .map_err(|e| io_error("measuring", &filesystem.spec.path, &filesystem.spec.path, e))
    }
}

/// Removes a file and makes its removal durable (its folder synced); a
/// missing file is not an error.
fn remove_durably(path: &Path, root: &Path) -> Result<(), Error> {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_error("deleting", path, root, e)),
    }
    if let Some(parent) = path.parent() {
        sync_dir(parent)?;
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<(), Error> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error("syncing directory", dir, dir, e))
}

fn is_full(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(code) if code == libc::ENOSPC || code == libc::EDQUOT)
}

fn io_error(operation: &'static str, path: &Path, root: &Path, source: io::Error) -> Error {
    if is_full(&source) {
        Error::Full {
            root: root.to_path_buf(),
            source,
        }
    } else {
        Error::Io {
            operation,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// `path` as the C string a libc call takes.
fn c_path(path: &Path) -> io::Result<std::ffi::CString> {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path holds a NUL byte"))
}

fn statvfs(path: &Path) -> io::Result<Usage> {
    let c_path = c_path(path)?;
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: c_path is a valid NUL-terminated string and stat a valid out pointer.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let fragment = stat.f_frsize as u64;
    // The blocks a volume reserves for root are neither ours nor used: as
    // df does, the total is what is used plus what we may still use, so
    // that an empty volume does not start above its high watermark.
    let used = (stat.f_blocks as u64).saturating_sub(stat.f_bfree as u64);
    Ok(Usage {
        total_bytes: (used + stat.f_bavail as u64) * fragment,
        available_bytes: stat.f_bavail as u64 * fragment,
    })
}

#[cfg(test)]
mod tests {
    use super::temp::host_tag;
    use super::*;
    use crate::db::fixtures;
    use crate::model::{FilesystemId, Uid};

    /// What writers left in `root`'s temporary folder: every entry but the
    /// spares made ahead of need.
    pub(super) fn writers_files(root: &Path) -> Vec<String> {
        fs::read_dir(root.join(layout::TEMP_DIR))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|name| !name.ends_with(super::temp::SPARE_SUFFIX))
            .collect()
    }

    pub(super) fn filesystem(root: &Path) -> Filesystem {
        Filesystem {
            id: FilesystemId(1),
            spec: fixtures::fs_spec(root),
            enabled: true,
            marker: None,
        }
    }

    pub(super) fn key(study: &str, sop: &str) -> InstanceKey {
        InstanceKey {
            location: fixtures::location(FilesystemId(1), "P", "20240101", study),
            series_uid: Uid::parse("1.9").unwrap(),
            sop_instance_uid: Uid::parse(sop).unwrap(),
        }
    }

    #[test]
    fn write_persist_sync_read_delete() {
        let dir = tempfile::tempdir().unwrap();
        let fs = filesystem(dir.path());
        let storage = FsStorage::new();
        let mut writer = storage.begin_write(&fs).unwrap();
        writer.write_all(b"hello ").unwrap();
        writer.write_all(b"world").unwrap();
        let mut back = String::new();
        writer
            .read_back()
            .unwrap()
            .read_to_string(&mut back)
            .unwrap();
        assert_eq!(back, "hello world");
        let k = key("1.2.3", "1.2.3.4");
        let pending = writer.persist(&k).unwrap();
        // New directories: the study folder chain must be synced up to the root.
        assert!(pending.dirs.contains(&dir.path().to_path_buf()));
        storage.sync(pending).unwrap();
        assert!(storage.lock_unsynced().is_empty());

        let mut text = String::new();
        storage
            .open(&fs, &k)
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();
        assert_eq!(text, "hello world");
        assert!(storage.exists(&fs, &k).unwrap());

        // A second instance in the same (now durable) series syncs only its folder.
        let mut writer = storage.begin_write(&fs).unwrap();
        writer.write_all(b"x").unwrap();
        let pending = writer.persist(&key("1.2.3", "1.2.3.5")).unwrap();
        assert_eq!(pending.dirs.len(), 1);
        storage.sync(pending).unwrap();

        storage.delete(&fs, &k).unwrap();
        assert!(!storage.exists(&fs, &k).unwrap());
        storage.delete(&fs, &k).unwrap();
        assert!(writers_files(dir.path()).is_empty());
    }

    #[test]
    fn series_metadata_is_written_listed_read_and_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let fs = filesystem(dir.path());
        let storage = FsStorage::new();
        let location = key("1.2.3", "1.2.3.4").location;
        let series = |uid: &str| SeriesKey {
            location: location.clone(),
            series_uid: Uid::parse(uid).unwrap(),
        };
        assert_eq!(
            storage.read_series_metadata(&fs, &series("1.9")).unwrap(),
            None
        );
        assert!(storage
            .series_with_metadata(&fs, &location)
            .unwrap()
            .is_empty());
        for (uid, text) in [("1.9", "[1]"), ("1.8", "[2]"), ("1.9", "[3]")] {
            let mut writer = storage.begin_write(&fs).unwrap();
            writer.write_all(text.as_bytes()).unwrap();
            let pending = writer.persist_series_metadata(&series(uid)).unwrap();
            storage.sync(pending).unwrap();
        }
        assert!(storage.lock_unsynced().is_empty());
        let metadata_dir = dir.path().join(layout::metadata_dir(&location));
        assert!(metadata_dir.join("1.9.json").is_file());
        // Something else in the folder is not a series' metadata.
        fs::write(metadata_dir.join("notes.txt"), b"x").unwrap();
        assert_eq!(
            storage.series_with_metadata(&fs, &location).unwrap(),
            [Uid::parse("1.8").unwrap(), Uid::parse("1.9").unwrap()]
        );
        assert_eq!(
            storage.read_series_metadata(&fs, &series("1.9")).unwrap(),
            Some(b"[3]".to_vec())
        );
        storage.delete_series_metadata(&fs, &series("1.8")).unwrap();
        storage.delete_series_metadata(&fs, &series("1.8")).unwrap();
        assert_eq!(
            storage.series_with_metadata(&fs, &location).unwrap(),
            [Uid::parse("1.9").unwrap()]
        );
        assert_eq!(storage.delete_study_metadata(&fs, &location).unwrap(), 2);
        assert!(!metadata_dir.exists());
        assert_eq!(storage.delete_study_metadata(&fs, &location).unwrap(), 0);
    }

    /// At start, what a dead process of this host left is removed at once
    /// (its spares too), another host's only once stale; a live writer's
    /// is kept, and so are this process's spares.
    #[test]
    fn sweeping_removes_only_what_no_writer_will_finish() {
        let dir = tempfile::tempdir().unwrap();
        let fs_ = filesystem(dir.path());
        let storage = FsStorage::new();
        let live = storage.begin_write(&fs_).unwrap();
        let temp = dir.path().join(layout::TEMP_DIR);
        // A process id no process has: beyond Linux's pid_max.
        let dead = format!("{}-{}-0-1.part", host_tag(), 1u64 << 23);
        let dead_spare = format!("{}-{}-s0-1.spare", host_tag(), 1u64 << 23);
        let own = format!("{}-{}-7-1.part", host_tag(), std::process::id());
        let fresh_elsewhere = "other.host-42-0-1.part";
        let stale_elsewhere = "other.host-43-0-1.part";
        for (name, bytes) in [
            (&dead[..], 5),
            (&dead_spare[..], 0),
            (&own[..], 6),
            (fresh_elsewhere, 7),
            (stale_elsewhere, 8),
            ("not-a-temporary.json", 9),
        ] {
            std::fs::write(temp.join(name), vec![0u8; bytes]).unwrap();
        }
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(7200);
        File::options()
            .write(true)
            .open(temp.join(stale_elsewhere))
            .unwrap()
            .set_modified(old)
            .unwrap();
        let report = storage
            .sweep_temporary(&fs_, std::time::Duration::from_secs(3600))
            .unwrap();
        let mut left = writers_files(dir.path());
        left.sort();
        assert_eq!(report.removed, 3, "{left:?}");
        assert_eq!(report.bytes, 5 + 8);
        assert!(!left.contains(&dead) && !left.iter().any(|n| n == stale_elsewhere));
        assert!(!temp.join(&dead_spare).exists());
        for kept in [&own[..], fresh_elsewhere, "not-a-temporary.json"] {
            assert!(
                left.iter().any(|n| n == kept),
                "{kept} was removed: {left:?}"
            );
        }
        assert_eq!(
            left.len(),
            4,
            "the live writer's file is kept too: {left:?}"
        );
        drop(live);
    }

    #[test]
    fn dropped_writer_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let fs = filesystem(dir.path());
        let storage = FsStorage::new();
        let mut writer = storage.begin_write(&fs).unwrap();
        writer.write_all(&[0u8; 1000]).unwrap();
        drop(writer);
        assert!(writers_files(dir.path()).is_empty());
    }

    #[test]
    fn a_directory_created_by_an_unsynced_write_is_synced_by_later_writes() {
        let dir = tempfile::tempdir().unwrap();
        let fs = filesystem(dir.path());
        let storage = FsStorage::new();
        let mut first = storage.begin_write(&fs).unwrap();
        first.write_all(b"a").unwrap();
        let first_pending = first.persist(&key("1.2.3", "1.1")).unwrap();
        let mut second = storage.begin_write(&fs).unwrap();
        second.write_all(b"b").unwrap();
        let second_pending = second.persist(&key("1.2.3", "1.2")).unwrap();
        // The second write reuses directories the first created; until the
        // first batch is synced, the second must sync their parents too.
        assert_eq!(second_pending.dirs.len(), first_pending.dirs.len());
        storage.sync(second_pending).unwrap();
        storage.sync(first_pending).unwrap();
    }

    #[test]
    fn keeps_the_storage_contract() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let mut other = filesystem(b.path());
        other.id = FilesystemId(2);
        let storage = FsStorage::new();
        crate::storage::conformance::run(&storage, &filesystem(a.path()), &other);
        // Every directory the suite created was synced or removed.
        assert!(storage.lock_unsynced().is_empty());
    }

    #[test]
    fn studies_are_listed_by_kind_and_their_empty_folders_removed() {
        let dir = tempfile::tempdir().unwrap();
        let fs = filesystem(dir.path());
        let storage = FsStorage::new();
        let k = key("1.2.3", "1.2.3.4");
        let location = &k.location;
        let study = dir.path().join(layout::study_dir(location));
        let series = study.join("1.9");
        std::fs::create_dir_all(&series).unwrap();
        std::fs::write(series.join("1.2.3.4.dcm"), b"x").unwrap();
        std::fs::write(series.join("1.2.3.4.dup17.dcm"), b"yy").unwrap();
        std::fs::write(series.join("1.2.3.4.dcm.bak"), b"z").unwrap();
        std::fs::write(series.join("not-a-uid.dcm"), b"z").unwrap();
        std::fs::create_dir_all(study.join("junk")).unwrap();
        let metadata = study.join(layout::METADATA_DIR);
        std::fs::create_dir_all(&metadata).unwrap();
        std::fs::write(metadata.join("1.9.json"), b"[]").unwrap();
        std::fs::write(metadata.join("1.9.json.tmp"), b"[").unwrap();

        let objects = storage.list_study(&fs, location).unwrap();
        let instances: Vec<_> = objects
            .iter()
            .filter_map(|o| match o {
                StudyObject::Instance(f) => {
                    Some((f.series_uid.as_str(), f.sop_instance_uid.as_str(), f.size))
                }
                _ => None,
            })
            .collect();
        assert_eq!(instances, [("1.9", "1.2.3.4", 1)]);
        assert!(objects
            .iter()
            .any(|o| matches!(o, StudyObject::Aside(f, 17) if f.size == 2)));
        assert!(objects.iter().any(
            |o| matches!(o, StudyObject::Metadata { series_uid, .. } if series_uid.as_str() == "1.9")
        ));
        let strays: Vec<_> = objects
            .iter()
            .filter_map(|o| match o {
                StudyObject::Stray(path) => Some(path.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(
            strays,
            [
                metadata.join("1.9.json.tmp"),
                series.join("1.2.3.4.dcm.bak"),
                series.join("not-a-uid.dcm"),
                study.join("junk"),
            ]
        );
        assert_eq!(storage.describe(&fs, &k), series.join("1.2.3.4.dcm"));

        // Nothing is removed while something is left in a folder.
        storage.delete_aside(&fs, &k, 17).unwrap();
        storage.delete_aside(&fs, &k, 17).unwrap();
        assert!(!series.join("1.2.3.4.dup17.dcm").exists());
        storage.remove_empty_study_folders(&fs, location).unwrap();
        assert!(series.join("1.2.3.4.dcm").exists());
        assert!(!study.join("junk").exists(), "the empty folder goes");
        for name in ["1.2.3.4.dcm", "1.2.3.4.dcm.bak", "not-a-uid.dcm"] {
            std::fs::remove_file(series.join(name)).unwrap();
        }
        // Every file of the metadata folder, the stray one too.
        assert_eq!(storage.delete_study_metadata(&fs, location).unwrap(), 2);
        storage.remove_empty_study_folders(&fs, location).unwrap();
        assert!(!study.exists(), "the emptied study folder goes");
        assert!(storage.list_study(&fs, location).unwrap().is_empty());
    }
}
