//! The contract of [`StorageBackend`] as a suite any implementation can be
//! run against: [`FsStorage`](super::fs::FsStorage) runs it in its tests, and
//! an embedder runs it on a backend of its own before plugging it in with
//! [`ServerBuilder::storage`](crate::server::ServerBuilder::storage).
//!
//! It checks what the trait documents, through the trait alone: bytes
//! written, persisted and synced read back the same; a dropped writer
//! leaves nothing; persisting replaces an instance and keeping aside never
//! does; deletes are idempotent; series metadata is written, read, listed
//! and deleted; a study lists its objects with their sizes, sorted by
//! their [`layout`] path, and a filesystem its studies in layout order;
//! emptied folders go and the rest stays; an
//! instance moves between filesystems; a missing instance is
//! [`Error::NotFound`]; usage is consistent; an identity marker is written
//! once and read back (the suite leaves it in `other`'s root).
//!
//! [`run_deferred`] checks a backend that offers [`DeferredSync`]: a
//! deferred persist is in place only once placed and reads back once
//! synced, one dropped unplaced leaves nothing, a writer the
//! backend did not make is persisted eagerly, and the journal of open
//! batches is rewritten, never an orphan while its process lives, found
//! only for a process of this host that is gone, removed and closed.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use super::{
    layout, DeferredSync, Error, InstanceKey, ObjectWriter, PendingSync, SeriesKey, StorageBackend,
    StoredObject, StudyObject,
};
use crate::model::{Filesystem, FolderName, StudyLocation, Uid};

/// Runs every check of the suite against `storage`, on `filesystem` and,
/// for [`StorageBackend::move_instance`], from there to `other`.
///
/// The suite writes and deletes objects under both filesystems (studies of
/// a partition folder named `CONFORMANCE`, each removed again by the check
/// that made it): their roots must be empty directories the caller owns,
/// and their ids must differ. It panics with a message naming the first
/// violation (`storage conformance: ...`); it returns when the backend
/// keeps the whole contract.
pub fn run(storage: &dyn StorageBackend, filesystem: &Filesystem, other: &Filesystem) {
    check(
        filesystem.id != other.id,
        format_args!("the two filesystems must have distinct ids"),
    );
    let suite = Suite {
        storage,
        filesystem,
        started: SystemTime::now(),
    };
    suite.written_objects_read_back();
    suite.a_dropped_writer_leaves_nothing();
    suite.a_sweep_keeps_a_live_writer();
    suite.persist_replaces_the_instance();
    suite.kept_aside_copies_never_replace_the_instance();
    suite.deletes_are_idempotent();
    suite.series_metadata_is_written_read_listed_and_deleted();
    suite.a_study_lists_its_objects_sorted();
    suite.a_filesystem_lists_its_studies_sorted();
    suite.only_empty_folders_are_removed();
    suite.usage_is_consistent();
    suite.instances_move_between_filesystems(other);
    suite.the_marker_is_written_once(other);
}

/// Whose journal [`run_deferred`] asks its caller to leave on a
/// filesystem: only the backend knows how a journal names its process, and
/// the suite cannot make a process die.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Planted {
    /// A journal as a process of this host leaves it when it dies (a crash).
    DeadProcess,
    /// A journal of a process of another host (which may be alive).
    OtherHost,
}

/// Runs the checks of [`DeferredSync`] against `storage` on `filesystem`
/// (an empty directory the caller owns, as for [`run`]); `plant` leaves a
/// journal of another process with the given contents there, as that
/// process would have written it. Panics like [`run`]; a backend whose
/// [`StorageBackend::deferred`] is `None` fails it.
pub fn run_deferred(
    storage: &dyn StorageBackend,
    filesystem: &Filesystem,
    plant: &dyn Fn(&Filesystem, Planted, &[u8]),
) {
    let Some(deferred) = storage.deferred() else {
        panic!("storage conformance: run_deferred needs a backend that offers DeferredSync");
    };
    let suite = Suite {
        storage,
        filesystem,
        started: SystemTime::now(),
    };
    suite.a_deferred_persist_reads_back_once_synced(deferred);
    suite.a_foreign_writer_is_persisted_eagerly(deferred);
    suite.journals_are_found_only_for_a_dead_process(deferred, plant);
}

/// A writer the backend did not make: it passes everything on to one the
/// backend did, so only its type is foreign.
struct ForeignWriter(Box<dyn ObjectWriter>);

impl Write for ForeignWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

impl ObjectWriter for ForeignWriter {
    fn len(&self) -> u64 {
        self.0.len()
    }

    fn read_back(&mut self) -> Result<Box<dyn Read + '_>, Error> {
        self.0.read_back()
    }

    fn persist(self: Box<Self>, key: &InstanceKey) -> Result<PendingSync, Error> {
        self.0.persist(key)
    }

    fn persist_aside(
        self: Box<Self>,
        key: &InstanceKey,
        variant: u64,
    ) -> Result<PendingSync, Error> {
        self.0.persist_aside(key, variant)
    }

    fn persist_series_metadata(self: Box<Self>, key: &SeriesKey) -> Result<PendingSync, Error> {
        self.0.persist_series_metadata(key)
    }
}

/// Panics with the suite's prefix unless `ok`.
#[track_caller]
fn check(ok: bool, violation: std::fmt::Arguments<'_>) {
    if !ok {
        panic!("storage conformance: {violation}");
    }
}

/// The value of a call the contract says succeeds.
#[track_caller]
fn succeeds<T>(call: &str, result: Result<T, Error>) -> T {
    match result {
        Ok(value) => value,
        Err(error) => panic!("storage conformance: {call} failed: {error} ({error:?})"),
    }
}

fn uid(text: &str) -> Uid {
    Uid::parse(text).expect("the suite's UIDs are valid")
}

/// A study of the suite's own partition folder on `filesystem`.
fn study(filesystem: &Filesystem, study_uid: &str) -> StudyLocation {
    StudyLocation {
        filesystem: filesystem.id,
        partition_folder: FolderName::parse("CONFORMANCE").expect("a valid folder name"),
        date_folder: "20240101".to_string(),
        study_uid: uid(study_uid),
    }
}

fn instance(location: &StudyLocation, series_uid: &str, sop_instance_uid: &str) -> InstanceKey {
    InstanceKey {
        location: location.clone(),
        series_uid: uid(series_uid),
        sop_instance_uid: uid(sop_instance_uid),
    }
}

fn series(location: &StudyLocation, series_uid: &str) -> SeriesKey {
    SeriesKey {
        location: location.clone(),
        series_uid: uid(series_uid),
    }
}

/// Bytes that differ from one position and one object to the next.
fn payload(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Where an object of the listing sits in the layout (the listing's order).
fn layout_path(location: &StudyLocation, object: &StudyObject) -> PathBuf {
    let key = |file: &StoredObject| InstanceKey {
        location: location.clone(),
        series_uid: file.series_uid.clone(),
        sop_instance_uid: file.sop_instance_uid.clone(),
    };
    match object {
        StudyObject::Instance(file) => layout::instance_path(&key(file)),
        StudyObject::Aside(file, variant) => layout::aside_path(&key(file), *variant),
        StudyObject::Metadata { series_uid, .. } => layout::series_metadata_path(&SeriesKey {
            location: location.clone(),
            series_uid: series_uid.clone(),
        }),
        StudyObject::Stray(path) => path.clone(),
    }
}

/// What the suite compares of a listing: each object without its time.
#[derive(Debug, PartialEq, Eq)]
enum Listed {
    Instance(String, String, u64),
    Aside(String, String, u64, u64),
    Metadata(String),
    Stray(PathBuf),
}

impl Listed {
    fn of(object: &StudyObject) -> Listed {
        let names = |f: &StoredObject| {
            (
                f.series_uid.as_str().to_string(),
                f.sop_instance_uid.as_str().to_string(),
            )
        };
        match object {
            StudyObject::Instance(f) => {
                let (series, sop) = names(f);
                Listed::Instance(series, sop, f.size)
            }
            StudyObject::Aside(f, variant) => {
                let (series, sop) = names(f);
                Listed::Aside(series, sop, f.size, *variant)
            }
            StudyObject::Metadata { series_uid, .. } => {
                Listed::Metadata(series_uid.as_str().to_string())
            }
            StudyObject::Stray(path) => Listed::Stray(path.clone()),
        }
    }

    fn instance(key: &InstanceKey, size: usize) -> Listed {
        Listed::Instance(
            key.series_uid.as_str().to_string(),
            key.sop_instance_uid.as_str().to_string(),
            size as u64,
        )
    }

    fn aside(key: &InstanceKey, size: usize, variant: u64) -> Listed {
        Listed::Aside(
            key.series_uid.as_str().to_string(),
            key.sop_instance_uid.as_str().to_string(),
            size as u64,
            variant,
        )
    }

    fn metadata(series_uid: &str) -> Listed {
        Listed::Metadata(series_uid.to_string())
    }
}

struct Suite<'a> {
    storage: &'a dyn StorageBackend,
    filesystem: &'a Filesystem,
    /// When the run began: listed modification times are near it.
    started: SystemTime,
}

impl Suite<'_> {
    /// A writer on `filesystem` holding `bytes`, its length checked.
    fn writer_on(&self, filesystem: &Filesystem, bytes: &[u8]) -> Box<dyn ObjectWriter> {
        let mut writer = succeeds("begin_write", self.storage.begin_write(filesystem));
        check(
            writer.is_empty(),
            format_args!("a new writer is not empty (len {})", writer.len()),
        );
        // In two parts: a writer takes any number of writes.
        let (head, tail) = bytes.split_at(bytes.len() / 2);
        for part in [head, tail] {
            writer.write_all(part).unwrap_or_else(|e| {
                panic!(
                    "storage conformance: writing {} bytes failed: {e}",
                    part.len()
                )
            });
        }
        check(
            writer.len() == bytes.len() as u64,
            format_args!(
                "a writer holding {} bytes reports len {}",
                bytes.len(),
                writer.len()
            ),
        );
        writer
    }

    fn writer(&self, bytes: &[u8]) -> Box<dyn ObjectWriter> {
        self.writer_on(self.filesystem, bytes)
    }

    fn sync(&self, pending: PendingSync) {
        succeeds("sync", self.storage.sync(pending));
    }

    /// Writes, persists and syncs an instance on `filesystem`.
    fn store_on(&self, filesystem: &Filesystem, key: &InstanceKey, bytes: &[u8]) {
        let pending = succeeds("persist", self.writer_on(filesystem, bytes).persist(key));
        self.sync(pending);
    }

    fn store(&self, key: &InstanceKey, bytes: &[u8]) {
        self.store_on(self.filesystem, key, bytes);
    }

    fn store_aside(&self, key: &InstanceKey, variant: u64, bytes: &[u8]) {
        let pending = succeeds(
            "persist_aside",
            self.writer(bytes).persist_aside(key, variant),
        );
        self.sync(pending);
    }

    fn store_metadata(&self, key: &SeriesKey, bytes: &[u8]) {
        let pending = succeeds(
            "persist_series_metadata",
            self.writer(bytes).persist_series_metadata(key),
        );
        self.sync(pending);
    }

    /// Checks that the instance opens and reads back as `expected`.
    #[track_caller]
    fn assert_reads_on(
        &self,
        filesystem: &Filesystem,
        key: &InstanceKey,
        expected: &[u8],
        context: &str,
    ) {
        let mut reader = succeeds("open", self.storage.open(filesystem, key));
        let mut read = Vec::new();
        if let Err(e) = reader.read_to_end(&mut read) {
            panic!("storage conformance: {context}: reading the instance failed: {e}");
        }
        check(
            read == expected,
            format_args!(
                "{context}: open of instance {} read {} bytes that are not the {} expected",
                key.sop_instance_uid,
                read.len(),
                expected.len()
            ),
        );
    }

    #[track_caller]
    fn assert_reads(&self, key: &InstanceKey, expected: &[u8], context: &str) {
        self.assert_reads_on(self.filesystem, key, expected, context);
    }

    fn exists_on(&self, filesystem: &Filesystem, key: &InstanceKey) -> bool {
        succeeds("exists", self.storage.exists(filesystem, key))
    }

    fn exists(&self, key: &InstanceKey) -> bool {
        self.exists_on(self.filesystem, key)
    }

    fn assert_not_found(&self, key: &InstanceKey, context: &str) {
        match self.storage.open(self.filesystem, key) {
            Err(Error::NotFound { .. }) => {}
            Err(other) => panic!(
                "storage conformance: open of a missing instance ({context}) must be \
                 Error::NotFound, got {other} ({other:?})"
            ),
            Ok(_) => {
                panic!("storage conformance: open of a missing instance ({context}) succeeded")
            }
        }
    }

    /// The study's listing, checked to be sorted by layout path and to carry
    /// plausible modification times.
    fn list_on(&self, filesystem: &Filesystem, location: &StudyLocation) -> Vec<Listed> {
        let objects = succeeds("list_study", self.storage.list_study(filesystem, location));
        let paths: Vec<PathBuf> = objects.iter().map(|o| layout_path(location, o)).collect();
        check(
            paths.windows(2).all(|pair| pair[0] < pair[1]),
            format_args!("list_study is not sorted by layout path: {paths:?}"),
        );
        let earliest = self.started - Duration::from_secs(24 * 3600);
        let latest = SystemTime::now() + Duration::from_secs(24 * 3600);
        let ms = |time: SystemTime| {
            time.duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0)
        };
        for object in &objects {
            let modified_ms = match object {
                StudyObject::Instance(f) | StudyObject::Aside(f, _) => f.modified_ms,
                StudyObject::Metadata { modified_ms, .. } => *modified_ms,
                StudyObject::Stray(_) => continue,
            };
            check(
                (ms(earliest)..=ms(latest)).contains(&modified_ms),
                format_args!(
                    "list_study gives {object:?} a modification time ({modified_ms} ms) \
                     more than a day away from now"
                ),
            );
        }
        objects.iter().map(Listed::of).collect()
    }

    fn list(&self, location: &StudyLocation) -> Vec<Listed> {
        self.list_on(self.filesystem, location)
    }

    #[track_caller]
    fn assert_listing_on(
        &self,
        filesystem: &Filesystem,
        location: &StudyLocation,
        expected: &[Listed],
        context: &str,
    ) {
        let listed = self.list_on(filesystem, location);
        check(
            listed == expected,
            format_args!("{context}: list_study gave {listed:?}, expected {expected:?}"),
        );
    }

    #[track_caller]
    fn assert_listing(&self, location: &StudyLocation, expected: &[Listed], context: &str) {
        self.assert_listing_on(self.filesystem, location, expected, context);
    }

    /// Deletes everything a study lists and removes its folders; checks
    /// that it then lists nothing.
    fn clear_on(&self, filesystem: &Filesystem, location: &StudyLocation) {
        let storage = self.storage;
        for object in succeeds("list_study", storage.list_study(filesystem, location)) {
            let key = |file: &StoredObject| InstanceKey {
                location: location.clone(),
                series_uid: file.series_uid.clone(),
                sop_instance_uid: file.sop_instance_uid.clone(),
            };
            match &object {
                StudyObject::Instance(file) => {
                    succeeds("delete", storage.delete(filesystem, &key(file)));
                }
                StudyObject::Aside(file, variant) => {
                    succeeds(
                        "delete_aside",
                        storage.delete_aside(filesystem, &key(file), *variant),
                    );
                }
                StudyObject::Metadata { .. } => {
                    succeeds(
                        "delete_study_metadata",
                        storage.delete_study_metadata(filesystem, location),
                    );
                }
                StudyObject::Stray(path) => panic!(
                    "storage conformance: list_study found {} in a study the suite wrote \
                     through the trait alone",
                    path.display()
                ),
            }
        }
        succeeds(
            "remove_empty_study_folders",
            storage.remove_empty_study_folders(filesystem, location),
        );
        let left = self.list_on(filesystem, location);
        check(
            left.is_empty(),
            format_args!("a study whose objects were all deleted still lists {left:?}"),
        );
    }

    fn clear(&self, location: &StudyLocation) {
        self.clear_on(self.filesystem, location);
    }

    /// write → persist → sync → open gives back the same bytes, also when
    /// several writes share one sync.
    /// A deferred persist puts nothing in place until `place` (its data
    /// still to sync then), and it reads back whole once synced; `sync`
    /// alone places it too; one dropped unplaced leaves nothing.
    fn a_deferred_persist_reads_back_once_synced(&self, deferred: &dyn DeferredSync) {
        let location = study(self.filesystem, "1.999.20");
        let key = instance(&location, "1.999.20.1", "1.999.20.1.1");
        let bytes = payload(20, 300 * 1024 + 3);
        let mut pending = succeeds(
            "persist_deferred",
            deferred.persist_deferred(self.writer(&bytes), &key),
        );
        check(
            !self.exists(&key),
            format_args!("a deferred persist is in place before `place`"),
        );
        let files = pending.take_files();
        succeeds("place", deferred.place(&mut pending));
        check(
            self.exists(&key),
            format_args!("a placed deferred persist is not in place"),
        );
        self.sync(files);
        self.sync(pending);
        self.assert_reads(&key, &bytes, "after a deferred persist and its sync");
        let other = instance(&location, "1.999.20.1", "1.999.20.1.2");
        let pending = succeeds(
            "persist_deferred",
            deferred.persist_deferred(self.writer(&bytes), &other),
        );
        self.sync(pending);
        self.assert_reads(&other, &bytes, "after a deferred persist synced whole");
        succeeds("delete", self.storage.delete(self.filesystem, &other));
        let dropped = instance(&location, "1.999.20.1", "1.999.20.1.3");
        drop(succeeds(
            "persist_deferred",
            deferred.persist_deferred(self.writer(&bytes), &dropped),
        ));
        check(
            !self.exists(&dropped),
            format_args!("a deferred persist dropped unplaced is in place"),
        );
        succeeds("delete", self.storage.delete(self.filesystem, &key));
        succeeds(
            "remove_empty_study_folders",
            self.storage
                .remove_empty_study_folders(self.filesystem, &location),
        );
    }

    /// A writer of another type (a wrapper's) is persisted eagerly: its
    /// data is durable before the call returns, nothing is left to sync
    /// but directories.
    fn a_foreign_writer_is_persisted_eagerly(&self, deferred: &dyn DeferredSync) {
        let location = study(self.filesystem, "1.999.21");
        let key = instance(&location, "1.999.21.1", "1.999.21.1.1");
        let bytes = payload(21, 4096);
        let foreign = Box::new(ForeignWriter(self.writer(&bytes)));
        let pending = succeeds("persist_deferred", deferred.persist_deferred(foreign, &key));
        check(
            !pending.has_files(),
            format_args!("a writer the backend did not make was persisted deferred"),
        );
        self.sync(pending);
        self.assert_reads(&key, &bytes, "after a foreign writer's deferred persist");
        succeeds("delete", self.storage.delete(self.filesystem, &key));
        succeeds(
            "remove_empty_study_folders",
            self.storage
                .remove_empty_study_folders(self.filesystem, &location),
        );
    }

    /// This process's journal is rewritten and never an orphan; a dead
    /// process's is, with its contents, until removed; another host's never.
    fn journals_are_found_only_for_a_dead_process(
        &self,
        deferred: &dyn DeferredSync,
        plant: &dyn Fn(&Filesystem, Planted, &[u8]),
    ) {
        let fs = self.filesystem;
        let orphans = |when: &str| succeeds(when, deferred.orphan_journals(fs));
        check(
            orphans("orphan_journals").is_empty(),
            format_args!("an empty filesystem has orphan journals"),
        );
        succeeds(
            "write_journal",
            deferred.write_journal(fs, 7, b"a first batch, the longer"),
        );
        succeeds(
            "write_journal",
            deferred.write_journal(fs, 7, b"the second"),
        );
        succeeds("write_journal", deferred.write_journal(fs, 8, b"another"));
        check(
            orphans("orphan_journals").is_empty(),
            format_args!("a journal of this (live) process is an orphan"),
        );
        plant(fs, Planted::OtherHost, b"another host's batch");
        check(
            orphans("orphan_journals").is_empty(),
            format_args!("another host's journal is an orphan (its process may be alive)"),
        );
        plant(fs, Planted::DeadProcess, b"a dead process's batch");
        let found = orphans("orphan_journals");
        check(
            found.len() == 1 && found[0].1 == b"a dead process's batch",
            format_args!(
                "a dead process's journal is not the one orphan, with its contents: {:?}",
                found
                    .iter()
                    .map(|(name, bytes)| (name, String::from_utf8_lossy(bytes)))
                    .collect::<Vec<_>>()
            ),
        );
        let name = found[0].0.clone();
        check(
            orphans("orphan_journals") == found,
            format_args!("reading the orphans removed or changed them"),
        );
        succeeds("remove_journal", deferred.remove_journal(fs, &name));
        check(
            orphans("orphan_journals").is_empty(),
            format_args!("a removed journal is still an orphan"),
        );
        succeeds(
            "remove_journal of one already removed",
            deferred.remove_journal(fs, &name),
        );
        check(
            matches!(
                deferred.remove_journal(fs, "../not-a-journal"),
                Err(Error::NotFound { .. })
            ),
            format_args!("removing a name that is no journal's is not Error::NotFound"),
        );
        deferred.close_journals(7);
        deferred.close_journals(8);
        deferred.close_journals(9);
        // Closed, a number is written again from scratch.
        succeeds("write_journal", deferred.write_journal(fs, 7, b"reopened"));
        deferred.close_journals(7);
        check(
            orphans("orphan_journals").is_empty(),
            format_args!("closing journals made orphans"),
        );
    }

    fn written_objects_read_back(&self) {
        let location = study(self.filesystem, "1.999.1");
        let key = instance(&location, "1.999.1.1", "1.999.1.1.1");
        check(
            !self.exists(&key),
            format_args!("exists is true before anything was written"),
        );
        // Larger than any sensible write buffer, so that read_back must
        // see what a buffer still holds.
        let bytes = payload(1, 300 * 1024 + 7);
        let mut writer = self.writer(&bytes);
        let mut back = Vec::new();
        succeeds("read_back", writer.read_back())
            .read_to_end(&mut back)
            .unwrap_or_else(|e| panic!("storage conformance: reading back failed: {e}"));
        check(
            back == bytes,
            format_args!(
                "read_back gave {} bytes that differ from the {} written",
                back.len(),
                bytes.len()
            ),
        );
        let pending = succeeds("persist", writer.persist(&key));
        self.sync(pending);
        check(
            self.exists(&key),
            format_args!("exists is false for a persisted and synced instance"),
        );
        self.assert_reads(&key, &bytes, "written, persisted and synced");

        // Group commit: two writes, their pending sets merged, one sync.
        let second = instance(&location, "1.999.1.1", "1.999.1.1.2");
        let third = instance(&location, "1.999.1.2", "1.999.1.2.1");
        let mut pending = succeeds("persist", self.writer(b"second").persist(&second));
        pending.merge(succeeds("persist", self.writer(b"third").persist(&third)));
        self.sync(pending);
        self.sync(PendingSync::default());
        for (key, bytes) in [(&second, b"second".as_slice()), (&third, b"third")] {
            self.assert_reads(key, bytes, "persisted together, synced once");
        }
        self.assert_listing(
            &location,
            &[
                Listed::instance(&key, bytes.len()),
                Listed::instance(&second, 6),
                Listed::instance(&third, 5),
            ],
            "three instances written",
        );
        self.clear(&location);
    }

    /// A writer dropped without persisting leaves no object behind.
    fn a_dropped_writer_leaves_nothing(&self) {
        let location = study(self.filesystem, "1.999.2");
        let key = instance(&location, "1.999.2.1", "1.999.2.1.1");
        drop(self.writer(&payload(2, 4096)));
        self.assert_listing(&location, &[], "after a dropped writer");
        self.store(&key, b"kept");
        drop(self.writer(&payload(3, 4096)));
        self.assert_listing(
            &location,
            &[Listed::instance(&key, 4)],
            "one instance persisted beside a dropped writer",
        );
        self.clear(&location);
    }

    /// Sweeping temporary objects never takes one a live writer of this
    /// process will still persist.
    fn a_sweep_keeps_a_live_writer(&self) {
        let location = study(self.filesystem, "1.999.9");
        let key = instance(&location, "1.999.9.1", "1.999.9.1.1");
        let writer = self.writer(&payload(9, 300 * 1024));
        let report = succeeds(
            "sweep_temporary",
            self.storage
                .sweep_temporary(self.filesystem, std::time::Duration::from_secs(3600)),
        );
        check(
            report.removed == 0,
            format_args!("a sweep removed {} live temporary objects", report.removed),
        );
        let pending = succeeds("persist after a sweep", writer.persist(&key));
        self.sync(pending);
        self.assert_reads(
            &key,
            &payload(9, 300 * 1024),
            "an instance written across a sweep",
        );
        self.clear(&location);
    }

    /// Persisting to an instance's key replaces the instance.
    fn persist_replaces_the_instance(&self) {
        let location = study(self.filesystem, "1.999.3");
        let key = instance(&location, "1.999.3.1", "1.999.3.1.1");
        self.store(&key, b"first version");
        self.store(&key, b"the second, longer version");
        self.assert_reads(
            &key,
            b"the second, longer version",
            "persist over an existing instance must replace it",
        );
        self.assert_listing(
            &location,
            &[Listed::instance(&key, 26)],
            "an instance persisted twice",
        );
        self.clear(&location);
    }

    /// Kept-aside copies sit beside the instance with their variant and
    /// never replace it; deleting them is idempotent.
    fn kept_aside_copies_never_replace_the_instance(&self) {
        let location = study(self.filesystem, "1.999.4");
        let key = instance(&location, "1.999.4.1", "1.999.4.1.1");
        self.store(&key, b"the instance");
        self.store_aside(&key, 2, b"duplicate two");
        self.store_aside(&key, 7, b"duplicate seven!");
        self.assert_reads(
            &key,
            b"the instance",
            "persist_aside must never replace the instance",
        );
        // A copy kept aside for an instance that is not there is no instance.
        let lone = instance(&location, "1.999.4.1", "1.999.4.1.2");
        self.store_aside(&lone, 1, b"lone");
        check(
            !self.exists(&lone),
            format_args!("exists is true for an instance that has only a kept-aside copy"),
        );
        self.assert_not_found(&lone, "only a kept-aside copy exists");
        self.assert_listing(
            &location,
            &[
                Listed::instance(&key, 12),
                Listed::aside(&key, 13, 2),
                Listed::aside(&key, 16, 7),
                Listed::aside(&lone, 4, 1),
            ],
            "an instance with two kept-aside copies, and a lone copy",
        );
        let mut aside = Vec::new();
        if let Err(e) = succeeds(
            "open_aside",
            self.storage.open_aside(self.filesystem, &key, 7),
        )
        .read_to_end(&mut aside)
        {
            panic!("storage conformance: reading a kept-aside copy failed: {e}");
        }
        check(
            aside == b"duplicate seven!",
            format_args!(
                "open_aside read {} bytes that are not the copy",
                aside.len()
            ),
        );
        check(
            matches!(
                self.storage.open_aside(self.filesystem, &key, 99),
                Err(Error::NotFound { .. })
            ),
            format_args!("open_aside of a variant never written is not NotFound"),
        );
        for _ in 0..2 {
            succeeds(
                "delete_aside",
                self.storage.delete_aside(self.filesystem, &key, 2),
            );
        }
        succeeds(
            "delete_aside of a variant never written",
            self.storage.delete_aside(self.filesystem, &key, 99),
        );
        self.assert_listing(
            &location,
            &[
                Listed::instance(&key, 12),
                Listed::aside(&key, 16, 7),
                Listed::aside(&lone, 4, 1),
            ],
            "after delete_aside of variant 2",
        );
        self.assert_reads(
            &key,
            b"the instance",
            "delete_aside must leave the instance",
        );
        // A copy put in the instance's place replaces it and is no longer
        // kept aside; a missing copy changes nothing.
        check(
            matches!(
                self.storage.replace_with_aside(self.filesystem, &key, 2),
                Err(Error::NotFound { .. })
            ),
            format_args!("replace_with_aside of a deleted copy is not NotFound"),
        );
        self.assert_reads(
            &key,
            b"the instance",
            "a failed replace_with_aside must leave the instance",
        );
        succeeds(
            "replace_with_aside",
            self.storage.replace_with_aside(self.filesystem, &key, 7),
        );
        self.assert_reads(
            &key,
            b"duplicate seven!",
            "replace_with_aside must put the copy in the instance's place",
        );
        self.assert_listing(
            &location,
            &[Listed::instance(&key, 16), Listed::aside(&lone, 4, 1)],
            "after replace_with_aside of variant 7",
        );
        self.clear(&location);
    }

    /// Deleting removes the instance; deleting what is missing is no error;
    /// opening what is missing is `Error::NotFound`.
    fn deletes_are_idempotent(&self) {
        let location = study(self.filesystem, "1.999.5");
        let key = instance(&location, "1.999.5.1", "1.999.5.1.1");
        let sibling = instance(&location, "1.999.5.1", "1.999.5.1.2");
        self.assert_not_found(&key, "a study never written");
        self.store(&key, b"to be deleted");
        self.store(&sibling, b"stays");
        self.assert_not_found(
            &instance(&location, "1.999.5.1", "1.999.5.1.3"),
            "a series holding other instances",
        );
        for _ in 0..2 {
            succeeds("delete", self.storage.delete(self.filesystem, &key));
            check(
                !self.exists(&key),
                format_args!("exists is true after delete"),
            );
            self.assert_not_found(&key, "deleted");
        }
        let unknown = study(self.filesystem, "1.999.5.404");
        succeeds(
            "delete in a study never written",
            self.storage.delete(
                self.filesystem,
                &instance(&unknown, "1.999.5.404.1", "1.999.5.404.1.1"),
            ),
        );
        self.assert_reads(&sibling, b"stays", "delete must leave the other instances");
        self.assert_listing(
            &location,
            &[Listed::instance(&sibling, 5)],
            "one of two instances deleted",
        );
        self.clear(&location);
    }

    /// Series metadata: persisted (replacing), read, listed per series and
    /// in the study's listing, deleted one by one or per study.
    fn series_metadata_is_written_read_listed_and_deleted(&self) {
        let storage = self.storage;
        let fs = self.filesystem;
        let location = study(fs, "1.999.6");
        let (first, second) = (
            series(&location, "1.999.6.2"),
            series(&location, "1.999.6.3"),
        );
        let read = |key: &SeriesKey| {
            succeeds(
                "read_series_metadata",
                storage.read_series_metadata(fs, key),
            )
        };
        let listed = || {
            succeeds(
                "series_with_metadata",
                storage.series_with_metadata(fs, &location),
            )
        };
        check(
            read(&first).is_none() && listed().is_empty(),
            format_args!("a study never written has series metadata"),
        );
        let key = instance(&location, "1.999.6.2", "1.999.6.2.1");
        self.store(&key, b"an instance");
        self.store_metadata(&second, b"[\"second\"]");
        self.store_metadata(&first, b"[\"first\"]");
        self.store_metadata(&second, b"[\"second, again\"]");
        check(
            read(&first).as_deref() == Some(b"[\"first\"]".as_slice())
                && read(&second).as_deref() == Some(b"[\"second, again\"]".as_slice()),
            format_args!("read_series_metadata does not give the last bytes persisted"),
        );
        check(
            listed() == [first.series_uid.clone(), second.series_uid.clone()],
            format_args!(
                "series_with_metadata gave {:?}, expected the two series sorted",
                listed()
            ),
        );
        self.assert_listing(
            &location,
            &[
                Listed::metadata("1.999.6.2"),
                Listed::metadata("1.999.6.3"),
                Listed::instance(&key, 11),
            ],
            "an instance and the metadata of two series",
        );
        for _ in 0..2 {
            succeeds(
                "delete_series_metadata",
                storage.delete_series_metadata(fs, &first),
            );
        }
        check(
            read(&first).is_none() && listed() == [second.series_uid.clone()],
            format_args!("delete_series_metadata left {:?}", listed()),
        );
        let count = succeeds(
            "delete_study_metadata",
            storage.delete_study_metadata(fs, &location),
        );
        check(
            count == 1,
            format_args!("delete_study_metadata deleted {count} files, expected 1"),
        );
        check(
            read(&second).is_none() && listed().is_empty(),
            format_args!("delete_study_metadata left {:?}", listed()),
        );
        let again = succeeds(
            "delete_study_metadata",
            storage.delete_study_metadata(fs, &location),
        );
        check(
            again == 0,
            format_args!("a second delete_study_metadata deleted {again} files"),
        );
        let unknown = study(fs, "1.999.6.404");
        succeeds(
            "delete_series_metadata in a study never written",
            storage.delete_series_metadata(fs, &series(&unknown, "1.999.6.404.1")),
        );
        let none = succeeds(
            "delete_study_metadata of a study never written",
            storage.delete_study_metadata(fs, &unknown),
        );
        check(
            none == 0,
            format_args!("delete_study_metadata of a study never written deleted {none} files"),
        );
        self.assert_listing(
            &location,
            &[Listed::instance(&key, 11)],
            "series metadata deleted (the instance stays)",
        );
        self.clear(&location);
    }

    /// A study lists its own objects only, with their sizes, sorted; an
    /// unknown study lists nothing.
    fn a_study_lists_its_objects_sorted(&self) {
        let location = study(self.filesystem, "1.999.7");
        self.assert_listing(&location, &[], "a study never written");
        let a1 = instance(&location, "1.999.7.1", "1.999.7.1.1");
        let a2 = instance(&location, "1.999.7.1", "1.999.7.1.2");
        let b1 = instance(&location, "1.999.7.2", "1.999.7.2.1");
        // Written out of order.
        self.store(&b1, &payload(7, 30));
        self.store(&a2, &payload(8, 20));
        self.store_metadata(&series(&location, "1.999.7.2"), b"[]");
        self.store_aside(&a1, 4, &payload(9, 40));
        self.store(&a1, &payload(10, 10));
        // A neighbour in the same partition and date folder.
        let neighbour = study(self.filesystem, "1.999.7.9");
        let other = instance(&neighbour, "1.999.7.9.1", "1.999.7.9.1.1");
        self.store(&other, b"elsewhere");
        self.assert_listing(
            &location,
            &[
                Listed::metadata("1.999.7.2"),
                Listed::instance(&a1, 10),
                Listed::aside(&a1, 40, 4),
                Listed::instance(&a2, 20),
                Listed::instance(&b1, 30),
            ],
            "a study of two series",
        );
        self.assert_listing(
            &neighbour,
            &[Listed::instance(&other, 9)],
            "a neighbouring study",
        );
        self.clear(&location);
        self.clear(&neighbour);
    }

    /// `list_studies` hands over every study folder, in layout order,
    /// stops when asked, and no longer names a study whose folders went.
    fn a_filesystem_lists_its_studies_sorted(&self) {
        let listed = |stop_after: usize| {
            let mut found = Vec::new();
            succeeds(
                "list_studies",
                self.storage.list_studies(self.filesystem, &mut |location| {
                    if location.study_uid.as_str().starts_with("1.999.12.") {
                        found.push(location);
                    }
                    if found.len() >= stop_after {
                        std::ops::ControlFlow::Break(())
                    } else {
                        std::ops::ControlFlow::Continue(())
                    }
                }),
            );
            found
        };
        check(
            listed(usize::MAX).is_empty(),
            format_args!("list_studies names studies never written"),
        );
        let later = study(self.filesystem, "1.999.12.2");
        let first = study(self.filesystem, "1.999.12.1");
        let mut earlier = study(self.filesystem, "1.999.12.3");
        earlier.date_folder = "20231231".to_string();
        // Written out of order.
        for location in [&later, &earlier, &first] {
            self.store(&instance(location, "1.999.12.9", "1.999.12.9.1"), b"x");
        }
        let expected = vec![earlier.clone(), first.clone(), later.clone()];
        let found = listed(usize::MAX);
        check(
            found == expected,
            format_args!("list_studies gave {found:?}, expected {expected:?} (layout order)"),
        );
        let found = listed(1);
        check(
            found == expected[..1],
            format_args!("list_studies went on after the visitor stopped: {found:?}"),
        );
        for location in &expected {
            self.clear(location);
        }
        let found = listed(usize::MAX);
        check(
            found.is_empty(),
            format_args!("list_studies names cleared studies: {found:?}"),
        );
    }

    /// `remove_empty_study_folders` keeps whatever is left and makes an
    /// emptied study list as empty; the study can be written again.
    fn only_empty_folders_are_removed(&self) {
        let storage = self.storage;
        let fs = self.filesystem;
        let location = study(fs, "1.999.8");
        succeeds(
            "remove_empty_study_folders of a study never written",
            storage.remove_empty_study_folders(fs, &location),
        );
        let key = instance(&location, "1.999.8.1", "1.999.8.1.1");
        let gone = instance(&location, "1.999.8.2", "1.999.8.2.1");
        self.store(&key, b"stays");
        self.store_aside(&key, 1, b"aside");
        self.store(&gone, b"goes");
        self.store_metadata(&series(&location, "1.999.8.1"), b"[]");
        succeeds("delete", storage.delete(fs, &gone));
        let before = self.list(&location);
        succeeds(
            "remove_empty_study_folders",
            storage.remove_empty_study_folders(fs, &location),
        );
        self.assert_listing(
            &location,
            &before,
            "remove_empty_study_folders on a study in use",
        );
        self.assert_reads(
            &key,
            b"stays",
            "remove_empty_study_folders on a study in use",
        );
        // clear() deletes everything, removes the folders and checks that
        // the study lists as empty; then it takes new objects again.
        self.clear(&location);
        succeeds(
            "remove_empty_study_folders of an emptied study, again",
            storage.remove_empty_study_folders(fs, &location),
        );
        self.store(&key, b"back again");
        self.assert_reads(
            &key,
            b"back again",
            "written after the study's folders were removed",
        );
        self.clear(&location);
    }

    /// Space: the total is at least what is available.
    fn usage_is_consistent(&self) {
        let usage = succeeds("usage", self.storage.usage(self.filesystem));
        check(
            usage.total_bytes >= usage.available_bytes,
            format_args!("usage reports {usage:?}: more available than in total"),
        );
        let used = usage.used_percent();
        check(
            (0.0..=100.0).contains(&used),
            format_args!("usage reports {used}% used"),
        );
    }

    /// A root without a marker reads `None`; a written marker reads back,
    /// and a second one is refused without replacing it.
    fn the_marker_is_written_once(&self, other: &Filesystem) {
        let before = succeeds("read_marker", self.storage.read_marker(other));
        check(
            before.is_none(),
            format_args!("a fresh root reads marker {before:?}"),
        );
        succeeds(
            "write_marker",
            self.storage.write_marker(other, "conformance-1"),
        );
        let first = succeeds("read_marker", self.storage.read_marker(other));
        check(
            first.as_deref() == Some("conformance-1"),
            format_args!("the written marker reads back as {first:?}"),
        );
        check(
            self.storage.write_marker(other, "conformance-2").is_err(),
            format_args!("a second marker was written over the first"),
        );
        let still = succeeds("read_marker", self.storage.read_marker(other));
        check(
            still.as_deref() == Some("conformance-1"),
            format_args!("after a refused second marker the root reads {still:?}"),
        );
    }

    /// `move_instance` copies to the other filesystem under the new key,
    /// returns the bytes moved and removes the source.
    fn instances_move_between_filesystems(&self, other: &Filesystem) {
        let from = study(self.filesystem, "1.999.9");
        let mut to = study(other, "1.999.9");
        to.date_folder = "20240202".to_string();
        let key = instance(&from, "1.999.9.1", "1.999.9.1.1");
        let to_key = instance(&to, "1.999.9.1", "1.999.9.1.1");
        let bytes = payload(11, 70 * 1024);
        self.store(&key, &bytes);
        let moved = succeeds(
            "move_instance",
            self.storage
                .move_instance(self.filesystem, other, &key, &to_key),
        );
        check(
            moved == bytes.len() as u64,
            format_args!("move_instance moved {moved} bytes of {}", bytes.len()),
        );
        check(
            !self.exists(&key),
            format_args!("the source of move_instance still exists"),
        );
        self.assert_not_found(&key, "moved away");
        check(
            self.exists_on(other, &to_key),
            format_args!("the moved instance does not exist on the other filesystem"),
        );
        self.assert_reads_on(other, &to_key, &bytes, "moved to the other filesystem");
        self.assert_listing(&from, &[], "the study moved away");
        self.assert_listing_on(
            other,
            &to,
            &[Listed::instance(&to_key, bytes.len())],
            "the study moved to the other filesystem",
        );
        self.clear(&from);
        self.clear_on(other, &to);
    }
}
