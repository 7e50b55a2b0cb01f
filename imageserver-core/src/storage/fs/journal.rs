//! [`FsStorage`]'s deferred persistence and its journal of open batches
//! ([`DeferredSync`]).
//!
//! A journal is a file `<root>/.tmp/HOST-PID-N.journal` (`N`: the group
//! committer's number in its process), made once at its first write with
//! [`JOURNAL_PREALLOCATED`] bytes and then rewritten in place and
//! `fdatasync`ed per batch, so that a batch's journal write changes no
//! metadata. Whose journal it is — and so whether its process is gone — is
//! in its name, as for temporary files.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::temp::{host_tag, of_dead_process};
use super::{io_error, remove_durably, sync_dir, FsStorage, FsWriter};
use crate::model::Filesystem;
use crate::storage::{layout, DeferredSync, Error, InstanceKey, ObjectWriter, PendingSync};

/// Bytes a journal file is made with, so that rewriting a batch's entries
/// in place changes no metadata and its `fdatasync` is a data write only.
const JOURNAL_PREALLOCATED: usize = 64 * 1024;

/// The suffix of open-batch journal files in `.tmp` (`HOST-PID-N.journal`).
const JOURNAL_SUFFIX: &str = ".journal";

/// The open-batch journals written through one backend, open, by root and
/// journal number.
#[derive(Debug, Default)]
pub(super) struct OpenJournals(Mutex<HashMap<(PathBuf, u64), (PathBuf, File)>>);

impl OpenJournals {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(PathBuf, u64), (PathBuf, File)>> {
        // A poisoned map only means a panic elsewhere; the map is still valid.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Creates this process's journal `journal` on `root`, preallocated and
/// durable (its directory entry too, or recovery could not find it).
fn create_journal(root: &Path, journal: u64) -> Result<(PathBuf, File), Error> {
    let dir = root.join(layout::TEMP_DIR);
    if !dir.is_dir() {
        fs::create_dir_all(&dir).map_err(|e| io_error("creating directory", &dir, root, e))?;
        sync_dir(root)?;
    }
    let path = dir.join(format!(
        "{}-{}-{journal}{JOURNAL_SUFFIX}",
        host_tag(),
        std::process::id()
    ));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .map_err(|e| io_error("creating", &path, root, e))?;
    (&file)
        .write_all(&[0u8; JOURNAL_PREALLOCATED])
        .and_then(|()| file.sync_all())
        .map_err(|e| io_error("writing", &path, root, e))?;
    sync_dir(&dir)?;
    Ok((path, file))
}

impl DeferredSync for FsStorage {
    fn persist_deferred(
        &self,
        writer: Box<dyn ObjectWriter>,
        key: &InstanceKey,
    ) -> Result<PendingSync, Error> {
        let relative = layout::instance_path(key);
        let ours: &dyn std::any::Any = writer.as_ref();
        if !ours.is::<FsWriter>() {
            // Not a file of ours (a wrapper's writer): nothing to defer.
            return writer.persist(key);
        }
        let writer: Box<dyn std::any::Any> = writer;
        match writer.downcast::<FsWriter>() {
            Ok(writer) => writer.persist_with(&relative, true),
            Err(_) => unreachable!("the writer's type was checked"),
        }
    }

    fn place(&self, pending: &mut PendingSync) -> Result<(), Error> {
        pending.place_files()
    }

    fn write_journal(
        &self,
        filesystem: &Filesystem,
        journal: u64,
        contents: &[u8],
    ) -> Result<(), Error> {
        use std::os::unix::fs::FileExt;
        let root = &filesystem.spec.path;
        let mut journals = self.inner.journals.lock();
        let id = (root.clone(), journal);
        if !journals.contains_key(&id) {
            let opened = create_journal(root, journal)?;
            journals.insert(id.clone(), opened);
        }
        let (path, file) = &journals[&id];
        file.write_all_at(contents, 0)
            .and_then(|()| file.sync_data())
            .map_err(|e| io_error("writing", path, root, e))
    }

    fn orphan_journals(&self, filesystem: &Filesystem) -> Result<Vec<(String, Vec<u8>)>, Error> {
        let root = &filesystem.spec.path;
        let dir = root.join(layout::TEMP_DIR);
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_error("listing", &dir, root, e)),
        };
        let mut found = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| io_error("listing", &dir, root, e))?;
            let path = entry.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            let Some(stem) = name.strip_suffix(JOURNAL_SUFFIX) else {
                continue;
            };
            // Only a dead process of this host: another host's process
            // may be alive however long its journal has been quiet.
            if !of_dead_process(stem) {
                continue;
            }
            let contents = fs::read(&path).map_err(|e| io_error("reading", &path, root, e))?;
            found.push((name.to_string(), contents));
        }
        found.sort();
        Ok(found)
    }

    fn remove_journal(&self, filesystem: &Filesystem, name: &str) -> Result<(), Error> {
        let root = &filesystem.spec.path;
        if !name.ends_with(JOURNAL_SUFFIX) || name.contains('/') {
            return Err(Error::NotFound {
                what: format!("journal {name}"),
            });
        }
        remove_durably(&root.join(layout::TEMP_DIR).join(name), root)
    }

    fn close_journals(&self, journal: u64) {
        let closed: Vec<_> = {
            let mut journals = self.inner.journals.lock();
            let ids: Vec<_> = journals
                .keys()
                .filter(|(_, n)| *n == journal)
                .cloned()
                .collect();
            ids.into_iter()
                .filter_map(|id| journals.remove(&id).map(|open| (id.0, open)))
                .collect()
        };
        for (root, (path, file)) in closed {
            drop(file);
            if let Err(e) = remove_durably(&path, &root) {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove the open-batch journal");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::super::tests::{filesystem, key};
    use super::*;
    use crate::storage::conformance::Planted;
    use crate::storage::StorageBackend;

    /// A deferred persist leaves the rename to `place` and the data sync
    /// to `sync`; a large write starts writeback on the way. A deferred
    /// file never placed is discarded.
    #[test]
    fn a_deferred_persist_is_in_place_before_its_sync() {
        let dir = tempfile::tempdir().unwrap();
        let fs = filesystem(dir.path());
        let storage = FsStorage::new();
        let mut writer = storage.begin_write(&fs).unwrap();
        let big = vec![7u8; 9 * 1024 * 1024];
        writer.write_all(&big).unwrap();
        let k = key("1.2.3", "1.2.3.9");
        let mut pending = storage.persist_deferred(writer, &k).unwrap();
        assert!(pending.has_files() && pending.has_placings());
        assert!(!storage.exists(&fs, &k).unwrap(), "in place before `place`");
        let files = pending.take_files();
        assert!(!pending.has_files() && files.has_files() && !files.has_placings());
        storage.place(&mut pending).unwrap();
        assert!(storage.exists(&fs, &k).unwrap(), "placed before the sync");
        assert!(files.dirs().is_empty() && !pending.dirs().is_empty());
        storage.sync(files).unwrap();
        storage.sync(pending).unwrap();
        let mut back = Vec::new();
        storage
            .open(&fs, &k)
            .unwrap()
            .read_to_end(&mut back)
            .unwrap();
        assert!(back == big);
        assert!(storage.lock_unsynced().is_empty());

        let mut writer = storage.begin_write(&fs).unwrap();
        writer.write_all(b"never placed").unwrap();
        let k = key("1.2.3", "1.2.3.10");
        drop(storage.persist_deferred(writer, &k).unwrap());
        assert!(!storage.exists(&fs, &k).unwrap());
        assert!(super::super::tests::writers_files(dir.path()).is_empty());
    }

    /// A deferred file never replaces a file already at its path before
    /// its data is durable (a stored instance a concurrent store of the
    /// same SOP instance placed, perhaps acknowledged: a crash before the
    /// new file's sync would leave neither whole): the rename that must not
    /// replace leaves an occupied target and the new file alone, and the
    /// placement then syncs the new file and replaces the stored one.
    #[test]
    fn a_deferred_file_replaces_a_stored_one_only_once_synced() {
        use super::super::place::{rename_no_replace, NoReplace};
        let dir = tempfile::tempdir().unwrap();
        let fs = filesystem(dir.path());
        let storage = FsStorage::new();
        let k = key("1.2.3", "1.2.3.11");
        let store = |contents: &[u8]| {
            let mut writer = storage.begin_write(&fs).unwrap();
            writer.write_all(contents).unwrap();
            let mut pending = storage.persist_deferred(writer, &k).unwrap();
            let files = pending.take_files();
            storage.place(&mut pending).unwrap();
            storage.sync(files).unwrap();
            storage.sync(pending).unwrap();
        };
        store(b"stored first");
        let target = storage.describe(&fs, &k);
        let probe = dir.path().join("probe");
        fs::write(&probe, b"second").unwrap();
        assert!(matches!(
            rename_no_replace(&probe, &target).unwrap(),
            NoReplace::Occupied
        ));
        assert_eq!(fs::read(&target).unwrap(), b"stored first");
        assert_eq!(fs::read(&probe).unwrap(), b"second");
        let free = target.with_file_name("free.dcm");
        assert!(matches!(
            rename_no_replace(&probe, &free).unwrap(),
            NoReplace::Renamed
        ));
        assert_eq!(fs::read(&free).unwrap(), b"second");
        fs::remove_file(&free).unwrap();
        store(b"stored second");
        assert_eq!(fs::read(&target).unwrap(), b"stored second");
        assert!(super::super::tests::writers_files(dir.path())
            .iter()
            .all(|name| name.ends_with(".journal")));
    }

    /// The journal's file: made preallocated, rewritten in place, gone
    /// once closed; another process's stays.
    #[test]
    fn a_journal_is_one_preallocated_file_rewritten_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let fs = filesystem(dir.path());
        let storage = FsStorage::new();
        storage
            .write_journal(&fs, 5, b"first batch, longer")
            .unwrap();
        storage.write_journal(&fs, 5, b"second").unwrap();
        let temp = dir.path().join(layout::TEMP_DIR);
        let own = temp.join(format!("{}-{}-5.journal", host_tag(), std::process::id()));
        let bytes = std::fs::read(&own).unwrap();
        assert!(bytes.starts_with(b"second"));
        assert_eq!(bytes.len(), JOURNAL_PREALLOCATED);
        std::fs::write(temp.join("other.host-42-0.journal"), b"alive?").unwrap();
        storage.close_journals(5);
        assert!(!own.exists());
        assert!(temp.join("other.host-42-0.journal").exists());
    }

    #[test]
    fn keeps_the_deferred_sync_contract() {
        let dir = tempfile::tempdir().unwrap();
        let storage = FsStorage::new();
        let plant = |fs: &Filesystem, whose: Planted, contents: &[u8]| {
            let name = match whose {
                // A process id no process has: beyond Linux's pid_max.
                Planted::DeadProcess => format!("{}-{}-0.journal", host_tag(), 1u64 << 23),
                Planted::OtherHost => "other.host-42-0.journal".to_string(),
            };
            let temp = fs.spec.path.join(layout::TEMP_DIR);
            std::fs::create_dir_all(&temp).unwrap();
            std::fs::write(temp.join(name), contents).unwrap();
        };
        crate::storage::conformance::run_deferred(&storage, &filesystem(dir.path()), &plant);
        // Every directory the suite created was synced or removed.
        assert!(storage.lock_unsynced().is_empty());
    }
}
