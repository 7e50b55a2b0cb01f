//! A study delete racing ingest, interleaved deterministically: nothing a
//! store acknowledged may disappear.
//!
//! The interleavings are fixed by a storage wrapper that runs a hook at one
//! point of the other operation:
//! - the ingest's group commit writes the journal of its open batch and puts
//!   the new file in place while its index transaction has run its
//!   statements and waits to commit: a whole delete of the study starts
//!   once the file is placed (`place` hook of the ingest's storage), on a
//!   thread of its own — it has to wait for that transaction, which holds
//!   the study's locks (the index's write lock on SQLite), so a delete run
//!   inside the hook would wait for the commit that waits for the hook;
//! - the delete has deleted the study's rows (its row list read) and starts
//!   on the files: the same instance is stored again in between (`delete`
//!   hook of the delete's storage).
//!
//! Either the store is refused (study being deleted, nothing kept) or it is
//! acknowledged, and then its row and its file are there after the delete.
#![cfg(feature = "sqlite")]

use std::io::Read;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_object::InMemDicomObject;
use dicom_transfer_syntax_registry::entries::EXPLICIT_VR_LITTLE_ENDIAN;

use imageserver_core::db::sqlite::SqliteIndex;
use imageserver_core::db::IndexStore;
use imageserver_core::model::{
    AeTitle, DuplicatePolicy, Filesystem, FilesystemSpec, FolderName, PartitionSpec, StudyLocation,
    Tier, Uid,
};
use imageserver_core::services::studies::{DeleteOutcome, Studies};
use imageserver_core::services::{Ingest, IngestError, Partition, StoreRequest};
use imageserver_core::storage::fs::FsStorage;
use imageserver_core::storage::{
    self, DeferredSync, InstanceKey, ObjectWriter, PendingSync, SeriesKey, StorageBackend,
    StudyObject, SweepReport, Usage,
};

const SECONDARY_CAPTURE: &str = "1.2.840.10008.5.1.4.1.1.7";
const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";
const STUDY: &str = "1.2.826.0.1.3680043.10.1.1";
const SERIES: &str = "1.2.826.0.1.3680043.10.1.1.1";

type Hook = Box<dyn FnOnce() + Send>;

/// `FsStorage` with one-shot hooks: after the next placing of deferred
/// files (the last step before a group commit's index transaction), before
/// the next `delete`. It passes `FsStorage`'s deferral on (and with it the journal,
/// which it hooks): without `deferred` its stores would persist eagerly and
/// the first interleaving would not be the one under test.
#[derive(Default)]
struct Hooked {
    inner: FsStorage,
    after_place: Mutex<Option<Hook>>,
    before_delete: Mutex<Option<Hook>>,
}

impl std::fmt::Debug for Hooked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Hooked")
    }
}

fn run(slot: &Mutex<Option<Hook>>) {
    let hook = slot.lock().unwrap().take();
    if let Some(hook) = hook {
        hook();
    }
}

/// Deferral and the journal passed on together, with the hook after each
/// placing.
impl DeferredSync for Hooked {
    fn persist_deferred(
        &self,
        writer: Box<dyn ObjectWriter>,
        key: &InstanceKey,
    ) -> Result<PendingSync, storage::Error> {
        self.inner.persist_deferred(writer, key)
    }
    fn place(&self, pending: &mut PendingSync) -> Result<(), storage::Error> {
        self.inner.place(pending)?;
        run(&self.after_place);
        Ok(())
    }
    fn write_journal(
        &self,
        filesystem: &Filesystem,
        journal: u64,
        contents: &[u8],
    ) -> Result<(), storage::Error> {
        self.inner.write_journal(filesystem, journal, contents)
    }
    fn orphan_journals(
        &self,
        filesystem: &Filesystem,
    ) -> Result<Vec<(String, Vec<u8>)>, storage::Error> {
        self.inner.orphan_journals(filesystem)
    }
    fn remove_journal(&self, filesystem: &Filesystem, name: &str) -> Result<(), storage::Error> {
        self.inner.remove_journal(filesystem, name)
    }
    fn close_journals(&self, journal: u64) {
        self.inner.close_journals(journal)
    }
}

impl StorageBackend for Hooked {
    fn begin_write(
        &self,
        filesystem: &Filesystem,
    ) -> Result<Box<dyn ObjectWriter>, storage::Error> {
        self.inner.begin_write(filesystem)
    }
    fn sync(&self, pending: PendingSync) -> Result<(), storage::Error> {
        self.inner.sync(pending)
    }
    fn deferred(&self) -> Option<&dyn DeferredSync> {
        Some(self)
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
        run(&self.before_delete);
        self.inner.delete(filesystem, key)
    }
    fn move_instance(
        &self,
        from: &Filesystem,
        to: &Filesystem,
        key: &InstanceKey,
        to_key: &InstanceKey,
    ) -> Result<u64, storage::Error> {
        self.inner.move_instance(from, to, key, to_key)
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
        self.inner.delete_series_metadata(filesystem, key)
    }
    fn delete_study_metadata(
        &self,
        filesystem: &Filesystem,
        location: &StudyLocation,
    ) -> Result<u64, storage::Error> {
        self.inner.delete_study_metadata(filesystem, location)
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
        self.inner.delete_aside(filesystem, key, variant)
    }
    fn open_aside(
        &self,
        filesystem: &Filesystem,
        key: &InstanceKey,
        variant: u64,
    ) -> Result<Box<dyn std::io::Read + Send>, storage::Error> {
        self.inner.open_aside(filesystem, key, variant)
    }
    fn replace_with_aside(
        &self,
        filesystem: &Filesystem,
        key: &InstanceKey,
        variant: u64,
    ) -> Result<(), storage::Error> {
        self.inner.replace_with_aside(filesystem, key, variant)
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
        stale_after: std::time::Duration,
    ) -> Result<SweepReport, storage::Error> {
        self.inner.sweep_temporary(filesystem, stale_after)
    }
}

/// A small valid data set of `STUDY`/`SERIES` (Explicit VR Little Endian).
fn data_set(sop: &str, version: u8) -> Vec<u8> {
    let text = |tag: (u16, u16), vr: VR, value: &str| {
        DataElement::new(Tag(tag.0, tag.1), vr, PrimitiveValue::from(value))
    };
    let object = InMemDicomObject::from_element_iter([
        text((0x0008, 0x0016), VR::UI, SECONDARY_CAPTURE),
        text((0x0008, 0x0018), VR::UI, sop),
        text((0x0008, 0x0020), VR::DA, "20240315"),
        text((0x0008, 0x0060), VR::CS, "OT"),
        text((0x0010, 0x0020), VR::LO, "RACE-1"),
        text((0x0020, 0x000D), VR::UI, STUDY),
        text((0x0020, 0x000E), VR::UI, SERIES),
        DataElement::new(
            Tag(0x7FE0, 0x0010),
            VR::OB,
            PrimitiveValue::from(vec![version; 256]),
        ),
    ]);
    let mut bytes = Vec::new();
    object
        .write_dataset_with_ts(&mut bytes, &EXPLICIT_VR_LITTLE_ENDIAN.erased())
        .expect("encoding a data set");
    bytes
}

struct Fixture {
    _dirs: (tempfile::TempDir, tempfile::TempDir),
    index: Arc<SqliteIndex>,
    partition: Partition,
    filesystem: Filesystem,
}

fn fixture() -> Fixture {
    let db_dir = tempfile::tempdir().unwrap();
    let fs_dir = tempfile::tempdir().unwrap();
    let index = Arc::new(SqliteIndex::open(&db_dir.path().join("index.db")).unwrap());
    let fs_id = index
        .ensure_filesystem(&FilesystemSpec {
            path: fs_dir.path().to_path_buf(),
            tier: Tier(1),
            high_watermark: 99.0,
            low_watermark: 98.0,
            read_only: false,
            write_only: false,
            description: "delete race".into(),
            capacity_mb: None,
        })
        .unwrap();
    let filesystem = index
        .filesystems()
        .unwrap()
        .into_iter()
        .find(|fs| fs.id == fs_id)
        .unwrap();
    let ae_title = AeTitle::parse("RACETEST").unwrap();
    let folder = FolderName::parse("RACE").unwrap();
    let id = index
        .ensure_partition(&PartitionSpec {
            ae_title: ae_title.clone(),
            folder: folder.clone(),
            description: String::new(),
            port: 0,
            accept_unknown_devices: true,
            duplicate_policy: DuplicatePolicy::SendSuccess,
            pn_case_insensitive: true,
        })
        .unwrap();
    Fixture {
        _dirs: (db_dir, fs_dir),
        index,
        partition: Partition {
            id,
            ae_title,
            folder,
            duplicate_policy: DuplicatePolicy::SendSuccess,
        },
        filesystem,
    }
}

fn store(
    ingest: &Ingest,
    partition: &Partition,
    sop: &str,
    version: u8,
) -> Result<(), IngestError> {
    let mut writer = ingest.begin(StoreRequest {
        partition,
        sop_class_uid: SECONDARY_CAPTURE,
        sop_instance_uid: sop,
        transfer_syntax_uid: EXPLICIT_LE,
        source_ae: Some("MODALITY"),
        may_replace: false,
    })?;
    writer.write_data(&data_set(sop, version));
    ingest.finish(writer).map(|_| ())
}

impl Fixture {
    /// Whether `sop` is indexed, and whether the file its row names exists.
    fn indexed_and_present(&self, sop: &str) -> (bool, bool) {
        let uid = Uid::parse(sop).unwrap();
        match self.index.instance(self.partition.id, &uid).unwrap() {
            None => (false, false),
            Some(row) => {
                let key = InstanceKey {
                    location: row.location.clone(),
                    series_uid: row.series_uid.clone(),
                    sop_instance_uid: row.sop_instance_uid.clone(),
                };
                (
                    true,
                    FsStorage::new().exists(&self.filesystem, &key).unwrap(),
                )
            }
        }
    }

    /// Every instance file under the filesystem (not the temporary ones).
    fn files(&self) -> Vec<PathBuf> {
        fn walk(dir: &std::path::Path, out: &mut Vec<PathBuf>) {
            for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let path = entry.path();
                if path.is_dir() {
                    walk(&path, out);
                } else if path.extension().is_some_and(|e| e == "dcm") {
                    out.push(path);
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.filesystem.spec.path, &mut out);
        out
    }
}

/// A whole delete starts between the rename of a new instance's file and
/// its index commit: its sweep must not take the file (not yet indexed)
/// of a store that is then acknowledged with a row. The delete waits for
/// the open index transaction, so it deletes the new instance too once
/// the store is acknowledged, or the store is refused: never a row
/// without its file.
#[test]
fn a_delete_between_rename_and_commit_never_leaves_an_acknowledged_row_without_file() {
    let f = fixture();
    let storage = Arc::new(Hooked::default());
    let ingest = Ingest::new(f.index.clone(), storage.clone(), 0).unwrap();
    let studies = Arc::new(Studies::new(f.index.clone(), Arc::new(FsStorage::new())));
    store(&ingest, &f.partition, "1.2.826.0.1.3680043.10.1.1.1.1", 1).expect("first store");

    let (partition, uid) = (f.partition.clone(), Uid::parse(STUDY).unwrap());
    let deleting = Arc::new(Mutex::new(None));
    let (studies2, deleting2) = (studies.clone(), deleting.clone());
    *storage.after_place.lock().unwrap() = Some(Box::new(move || {
        let delete = std::thread::spawn(move || studies2.delete(&partition, &uid, "test", "race"));
        *deleting2.lock().unwrap() = Some(delete);
    }));
    let second = "1.2.826.0.1.3680043.10.1.1.1.2";
    let result = store(&ingest, &f.partition, second, 2);
    // At every moment, the delete running or not: a row has its file (the
    // delete removes rows before their files).
    let (indexed, present) = f.indexed_and_present(second);
    assert!(
        !indexed || present,
        "a row without its file as the store returned"
    );
    let delete = deleting
        .lock()
        .unwrap()
        .take()
        .expect("the delete started inside the commit");
    let outcome = delete.join().expect("the delete thread").expect("delete");
    assert!(matches!(outcome, DeleteOutcome::Deleted(_)), "{outcome:?}");
    let (indexed, present) = f.indexed_and_present(second);
    assert_eq!(
        indexed, present,
        "never a row without its file, nor a file without its row"
    );
    match result {
        // Acknowledged, and then deleted with its study.
        Ok(()) => assert_eq!(
            (indexed, f.files()),
            (false, Vec::<PathBuf>::new()),
            "the delete that came after the store took it"
        ),
        Err(IngestError::StudyDeleted(study)) => {
            assert_eq!(study.as_str(), STUDY);
            assert!(!indexed, "a refused instance is not indexed");
            assert_eq!(
                f.files(),
                Vec::<PathBuf>::new(),
                "nothing of the study is left"
            );
        }
        Err(other) => panic!("unexpected failure: {other:?}"),
    }
    // Sent again after the delete: a new study.
    store(&ingest, &f.partition, second, 2).expect("stored again");
    assert_eq!(f.indexed_and_present(second), (true, true));
}

/// The same instance is stored again after the delete has read and deleted
/// the study's rows and before it deletes their files: the delete must not
/// remove an acknowledged instance's file.
#[test]
fn an_instance_stored_while_its_study_is_deleted_is_refused_not_lost() {
    let f = fixture();
    let ingest = Arc::new(Ingest::new(f.index.clone(), Arc::new(FsStorage::new()), 0).unwrap());
    let storage = Arc::new(Hooked::default());
    let studies = Studies::new(f.index.clone(), storage.clone());
    let sop = "1.2.826.0.1.3680043.10.1.1.1.1";
    store(&ingest, &f.partition, sop, 1).expect("first store");

    let result = Arc::new(Mutex::new(None));
    let (ingest2, partition, result2) = (ingest.clone(), f.partition.clone(), result.clone());
    *storage.before_delete.lock().unwrap() = Some(Box::new(move || {
        *result2.lock().unwrap() = Some(store(&ingest2, &partition, sop, 1));
    }));
    let outcome = studies
        .delete(&f.partition, &Uid::parse(STUDY).unwrap(), "test", "race")
        .expect("delete");
    assert!(matches!(outcome, DeleteOutcome::Deleted(_)), "{outcome:?}");
    let result = result
        .lock()
        .unwrap()
        .take()
        .expect("the store ran inside the delete");
    let (indexed, present) = f.indexed_and_present(sop);
    match result {
        Ok(()) => assert!(
            indexed && present,
            "acknowledged: indexed {indexed}, file {present}"
        ),
        Err(IngestError::StudyDeleted(_)) => {
            assert!(!indexed, "a refused instance is not indexed");
            assert_eq!(
                f.files(),
                Vec::<PathBuf>::new(),
                "nothing of the study is left"
            );
        }
        Err(other) => panic!("unexpected failure: {other:?}"),
    }
    // After the delete the study can arrive again.
    store(&ingest, &f.partition, sop, 1).expect("stored again");
    assert_eq!(f.indexed_and_present(sop), (true, true));
}
