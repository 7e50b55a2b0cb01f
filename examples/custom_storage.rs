//! Plugging an embedder's own storage backend into the archive: a product
//! implements [`StorageBackend`] (here an accounting layer over the
//! filesystem backend that counts, per filesystem, the bytes persisted and
//! the objects deleted, as a quota or billing feature would), checks it
//! with the library's conformance suite, and hands it to the builder.
//!
//! ```text
//! cargo run --example custom_storage
//! ```
//!
//! Everything lives in a temporary directory: the suite runs on two
//! filesystems of its own, then an archive (SQLite index) listens on a free
//! loopback port, DCMTK's `storescu` stores one instance made with
//! `dump2dcm`, and the example checks that the backend's counters saw
//! exactly the bytes indexed. It exits non-zero when any check fails.

use std::collections::HashMap;
use std::error::Error;
use std::io::{self, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use imageserver_core::config::Config;
use imageserver_core::model::{Filesystem, FilesystemId, FilesystemSpec, StudyLocation, Tier, Uid};
use imageserver_core::server::{Server, ServerBuilder};
use imageserver_core::storage::fs::FsStorage;
use imageserver_core::storage::{
    self, InstanceKey, ObjectWriter, PendingSync, SeriesKey, StorageBackend, StudyObject, Usage,
};

/// What one filesystem has seen, as gross flows: a replaced file's bytes
/// are not taken off, and a delete counts only when there was something
/// to delete.
#[derive(Debug, Default)]
struct Counters {
    persisted_bytes: AtomicU64,
    persisted_objects: AtomicU64,
    deleted_objects: AtomicU64,
}

impl Counters {
    fn persisted(&self, bytes: u64) {
        self.persisted_bytes.fetch_add(bytes, Ordering::Relaxed);
        self.persisted_objects.fetch_add(1, Ordering::Relaxed);
    }

    fn deleted(&self, objects: u64) {
        self.deleted_objects.fetch_add(objects, Ordering::Relaxed);
    }
}

/// A snapshot of one filesystem's [`Counters`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Totals {
    persisted_bytes: u64,
    persisted_objects: u64,
    deleted_objects: u64,
}

/// The product's backend: the filesystem backend does the IO, this layer
/// counts what was persisted and deleted on each filesystem.
#[derive(Debug, Default)]
struct AccountingStorage {
    inner: FsStorage,
    counters: Mutex<HashMap<FilesystemId, Arc<Counters>>>,
}

impl AccountingStorage {
    fn counters(&self, filesystem: FilesystemId) -> Arc<Counters> {
        let mut counters = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        counters.entry(filesystem).or_default().clone()
    }

    /// What `filesystem` has seen so far.
    fn totals(&self, filesystem: FilesystemId) -> Totals {
        let counters = self.counters(filesystem);
        Totals {
            persisted_bytes: counters.persisted_bytes.load(Ordering::Relaxed),
            persisted_objects: counters.persisted_objects.load(Ordering::Relaxed),
            deleted_objects: counters.deleted_objects.load(Ordering::Relaxed),
        }
    }
}

impl StorageBackend for AccountingStorage {
    fn begin_write(
        &self,
        filesystem: &Filesystem,
    ) -> Result<Box<dyn ObjectWriter>, storage::Error> {
        Ok(Box::new(AccountingWriter {
            inner: self.inner.begin_write(filesystem)?,
            counters: self.counters(filesystem.id),
        }))
    }

    fn sync(&self, pending: PendingSync) -> Result<(), storage::Error> {
        self.inner.sync(pending)
    }

    fn open(
        &self,
        filesystem: &Filesystem,
        key: &InstanceKey,
    ) -> Result<Box<dyn Read + Send>, storage::Error> {
        self.inner.open(filesystem, key)
    }

    fn exists(&self, filesystem: &Filesystem, key: &InstanceKey) -> Result<bool, storage::Error> {
        self.inner.exists(filesystem, key)
    }

    fn delete(&self, filesystem: &Filesystem, key: &InstanceKey) -> Result<(), storage::Error> {
        let existed = self.inner.exists(filesystem, key)?;
        self.inner.delete(filesystem, key)?;
        self.counters(filesystem.id).deleted(u64::from(existed));
        Ok(())
    }

    fn move_instance(
        &self,
        from: &Filesystem,
        to: &Filesystem,
        key: &InstanceKey,
        to_key: &InstanceKey,
    ) -> Result<u64, storage::Error> {
        let moved = self.inner.move_instance(from, to, key, to_key)?;
        self.counters(to.id).persisted(moved);
        self.counters(from.id).deleted(1);
        Ok(moved)
    }

    fn read_series_metadata(
        &self,
        filesystem: &Filesystem,
        key: &SeriesKey,
    ) -> Result<Option<Vec<u8>>, storage::Error> {
        self.inner.read_series_metadata(filesystem, key)
    }

    fn series_with_metadata(
        &self,
        filesystem: &Filesystem,
        location: &StudyLocation,
    ) -> Result<Vec<Uid>, storage::Error> {
        self.inner.series_with_metadata(filesystem, location)
    }

    fn delete_series_metadata(
        &self,
        filesystem: &Filesystem,
        key: &SeriesKey,
    ) -> Result<(), storage::Error> {
        let existed = self
            .inner
            .series_with_metadata(filesystem, &key.location)?
            .contains(&key.series_uid);
        self.inner.delete_series_metadata(filesystem, key)?;
        self.counters(filesystem.id).deleted(u64::from(existed));
        Ok(())
    }

    fn delete_study_metadata(
        &self,
        filesystem: &Filesystem,
        location: &StudyLocation,
    ) -> Result<u64, storage::Error> {
        let deleted = self.inner.delete_study_metadata(filesystem, location)?;
        self.counters(filesystem.id).deleted(deleted);
        Ok(deleted)
    }

    fn list_study(
        &self,
        filesystem: &Filesystem,
        location: &StudyLocation,
    ) -> Result<Vec<StudyObject>, storage::Error> {
        self.inner.list_study(filesystem, location)
    }

    fn list_studies(
        &self,
        filesystem: &Filesystem,
        visit: &mut dyn FnMut(StudyLocation) -> std::ops::ControlFlow<()>,
    ) -> Result<(), storage::Error> {
        self.inner.list_studies(filesystem, visit)
    }

    fn delete_aside(
        &self,
        filesystem: &Filesystem,
        key: &InstanceKey,
        variant: u64,
    ) -> Result<(), storage::Error> {
        // Kept-aside copies are rare: a listing of the study is cheap enough.
        let existed = self
            .inner
            .list_study(filesystem, &key.location)?
            .iter()
            .any(|object| {
                matches!(object, StudyObject::Aside(file, v) if *v == variant
                    && file.series_uid == key.series_uid
                    && file.sop_instance_uid == key.sop_instance_uid)
            });
        self.inner.delete_aside(filesystem, key, variant)?;
        self.counters(filesystem.id).deleted(u64::from(existed));
        Ok(())
    }

    fn open_aside(
        &self,
        filesystem: &Filesystem,
        key: &InstanceKey,
        variant: u64,
    ) -> Result<Box<dyn Read + Send>, storage::Error> {
        self.inner.open_aside(filesystem, key, variant)
    }

    fn replace_with_aside(
        &self,
        filesystem: &Filesystem,
        key: &InstanceKey,
        variant: u64,
    ) -> Result<(), storage::Error> {
        // The copy was counted when it was persisted aside; the instance it
        // replaces, if there was one, is gone.
        let existed = self.inner.exists(filesystem, key)?;
        self.inner.replace_with_aside(filesystem, key, variant)?;
        self.counters(filesystem.id).deleted(u64::from(existed));
        Ok(())
    }

    fn remove_empty_study_folders(
        &self,
        filesystem: &Filesystem,
        location: &StudyLocation,
    ) -> Result<(), storage::Error> {
        self.inner.remove_empty_study_folders(filesystem, location)
    }

    fn describe(&self, filesystem: &Filesystem, key: &InstanceKey) -> PathBuf {
        self.inner.describe(filesystem, key)
    }

    fn usage(&self, filesystem: &Filesystem) -> Result<Usage, storage::Error> {
        self.inner.usage(filesystem)
    }

    fn read_marker(&self, filesystem: &Filesystem) -> Result<Option<String>, storage::Error> {
        self.inner.read_marker(filesystem)
    }

    fn write_marker(&self, filesystem: &Filesystem, marker: &str) -> Result<(), storage::Error> {
        self.inner.write_marker(filesystem, marker)
    }

    fn sweep_temporary(
        &self,
        filesystem: &Filesystem,
        stale_after: Duration,
    ) -> Result<storage::SweepReport, storage::Error> {
        self.inner.sweep_temporary(filesystem, stale_after)
    }
}

/// The filesystem backend's writer, counted when it persists.
struct AccountingWriter {
    inner: Box<dyn ObjectWriter>,
    counters: Arc<Counters>,
}

impl Write for AccountingWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf)
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.inner.write_all(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl ObjectWriter for AccountingWriter {
    fn len(&self) -> u64 {
        self.inner.len()
    }

    fn read_back(&mut self) -> Result<Box<dyn Read + '_>, storage::Error> {
        self.inner.read_back()
    }

    fn persist(self: Box<Self>, key: &InstanceKey) -> Result<PendingSync, storage::Error> {
        let len = self.inner.len();
        let pending = self.inner.persist(key)?;
        self.counters.persisted(len);
        Ok(pending)
    }

    fn persist_aside(
        self: Box<Self>,
        key: &InstanceKey,
        variant: u64,
    ) -> Result<PendingSync, storage::Error> {
        let len = self.inner.len();
        let pending = self.inner.persist_aside(key, variant)?;
        self.counters.persisted(len);
        Ok(pending)
    }

    fn persist_series_metadata(
        self: Box<Self>,
        key: &SeriesKey,
    ) -> Result<PendingSync, storage::Error> {
        let len = self.inner.len();
        let pending = self.inner.persist_series_metadata(key)?;
        self.counters.persisted(len);
        Ok(pending)
    }
}

/// The instance the example stores, as `dump2dcm` input (the one
/// `scripts/examples.sh` stores into the deployment examples).
const INSTANCE_DUMP: &str = include_str!("instance.dump");

/// The SOP Instance UID the dump gives its instance.
fn sop_instance_uid() -> Result<Uid, Box<dyn Error>> {
    let value = INSTANCE_DUMP
        .lines()
        .find_map(|line| line.strip_prefix("(0008,0018) UI [")?.strip_suffix(']'))
        .ok_or("the dump has no SOP Instance UID")?;
    Ok(Uid::parse(value)?)
}

/// Fails the example with `message` unless `ok`.
fn ensure(ok: bool, message: impl FnOnce() -> String) -> Result<(), Box<dyn Error>> {
    if ok {
        Ok(())
    } else {
        Err(message().into())
    }
}

/// A tier-1 filesystem at `root` (created), as the suite needs them.
fn filesystem(id: i64, root: PathBuf) -> io::Result<Filesystem> {
    std::fs::create_dir_all(&root)?;
    Ok(Filesystem {
        id: FilesystemId(id),
        spec: FilesystemSpec {
            path: root,
            tier: Tier(1),
            high_watermark: 90.0,
            low_watermark: 80.0,
            read_only: false,
            write_only: false,
            description: format!("conformance filesystem {id}"),
            capacity_mb: None,
        },
        enabled: true,
        marker: None,
    })
}

/// Runs `program` with `args`; fails unless it exits 0.
fn run_tool(program: &str, args: &[&str]) -> Result<(), Box<dyn Error>> {
    let status = Command::new(program).args(args).status()?;
    ensure(status.success(), || format!("{program} {args:?}: {status}"))
}

fn path_arg(path: &Path) -> Result<&str, Box<dyn Error>> {
    path.to_str()
        .ok_or_else(|| format!("{} is not UTF-8", path.display()).into())
}

/// Stores the example's instance into `server` with storescu and checks
/// that `backend` counted exactly the bytes the index holds for it.
fn store_one_instance(
    dir: &Path,
    server: &Server,
    backend: &AccountingStorage,
) -> Result<(), Box<dyn Error>> {
    let sop_instance_uid = sop_instance_uid()?;
    let (dump, file) = (dir.join("instance.dump"), dir.join("instance.dcm"));
    std::fs::write(&dump, INSTANCE_DUMP)?;
    run_tool(
        "/usr/bin/dump2dcm",
        &["-q", "-g", "+te", path_arg(&dump)?, path_arg(&file)?],
    )?;
    let partition = &server.archive().default_partition().partition;
    let (called, port) = (
        partition.ae_title.to_string(),
        server.local_addr().port().to_string(),
    );
    // Every wait bounded, so that a hung server fails the example.
    let timeouts = ["-to", "10", "-ta", "10", "-td", "30"];
    let mut args = vec!["-aet", "CUSTOMSTORAGE", "-aec", &called];
    args.extend(timeouts);
    args.extend(["127.0.0.1", &port, path_arg(&file)?]);
    run_tool("/usr/bin/storescu", &args)?;

    let stored = server
        .archive()
        .index()
        .instance(partition.id, &sop_instance_uid)?
        .ok_or("storescu succeeded but the instance is not indexed")?;
    let seen = backend.totals(stored.location.filesystem);
    ensure(
        seen.persisted_objects == 1 && seen.persisted_bytes == stored.file_size,
        || {
            format!(
                "the backend counted {seen:?}, but one file of {} bytes was stored",
                stored.file_size
            )
        },
    )?;
    println!(
        "stored {sop_instance_uid} through AE {} on {}: the backend counted {} bytes in {} object",
        partition.ae_title,
        server.local_addr(),
        seen.persisted_bytes,
        seen.persisted_objects
    );
    Ok(())
}

fn main() -> Result<(), Box<dyn Error>> {
    let dir = tempfile::tempdir()?;

    // (a) The contract, on a backend of its own and two empty filesystems.
    let checked = AccountingStorage::default();
    let one = filesystem(1, dir.path().join("conformance-1"))?;
    let two = filesystem(2, dir.path().join("conformance-2"))?;
    storage::conformance::run(&checked, &one, &two);
    let (seen_one, seen_two) = (checked.totals(one.id), checked.totals(two.id));
    ensure(
        seen_one.persisted_objects > 0
            && seen_one.deleted_objects > 0
            && seen_two.persisted_bytes > 0,
        || format!("the suite ran but the counters missed it: {seen_one:?}, {seen_two:?}"),
    )?;
    println!("storage conformance suite passed; counted {seen_one:?} and {seen_two:?}");

    // (b) An archive on a fresh instance of the backend, on a free loopback
    // port.
    let config = Config {
        data_dir: dir.path().join("data"),
        ..Config::default()
    };
    let backend = Arc::new(AccountingStorage::default());
    let archive = ServerBuilder::new(config.validate()?)
        .storage(backend.clone())
        .open()?;
    let server = Server::start_on(archive, vec![TcpListener::bind("127.0.0.1:0")?])?;

    // (c) One instance over DICOM; the counters must hold exactly its bytes.
    let stored = store_one_instance(dir.path(), &server, &backend);

    // (d) A clean stop, whatever the checks said.
    server.shutdown(Duration::from_secs(5));
    stored?;
    println!("custom storage example: all checks passed");
    Ok(())
}
