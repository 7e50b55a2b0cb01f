//! The backend-agnostic checks of [`ArchiveStore`]: both backends run
//! [`run_all`] on a fresh database.

use crate::db::archive::ArchiveEntry;
use crate::db::fixtures::{self, uid, Scope};
use crate::db::Database;

/// Runs every check.
pub(crate) fn run_all(store: &dyn Database) {
    root_markers(store);
    archive_purge_restore(store);
}

fn root_markers(db: &dyn Database) {
    assert_eq!(db.archive_root_marker("/archive", "m1").unwrap(), "m1");
    assert_eq!(
        db.archive_root_marker("/archive", "m2").unwrap(),
        "m1",
        "the first marker recorded stays"
    );
    assert_eq!(db.archive_root_marker("/other", "m2").unwrap(), "m2");
}

/// A study is a candidate until a pack holds its content; purged only as
/// packed; restored only while nearline and as packed; the entry is kept
/// until forgotten.
fn archive_purge_restore(db: &dyn Database) {
    let f = Scope::new(
        db,
        fixtures::partition_spec("AR_CYCLE"),
        fixtures::fs_spec("/studies/AR_CYCLE"),
    );
    let other = db
        .ensure_filesystem(&fixtures::fs_spec("/studies/AR_CYCLE_2"))
        .unwrap();
    let study = uid("1.31.1");
    let records = [f.bare_record("1.31.1", 1), f.bare_record("1.31.1", 2)];
    db.insert_instances(&records).unwrap();
    let bytes: u64 = records.iter().map(|r| r.instance.file_size).sum();
    let far_future = i64::MAX / 2;
    // Quiet since long ago: not yet; quiet now: a candidate.
    assert!(db
        .archive_candidates(f.partition, 0, 10)
        .unwrap()
        .is_empty());
    let found = db.archive_candidates(f.partition, far_future, 10).unwrap();
    assert_eq!(found, vec![(f.partition, study.clone(), bytes)]);
    assert!(db.purge_candidates(f.fs, 10).unwrap().is_empty());
    assert_eq!(db.archive_entry(f.partition, &study).unwrap(), None);
    let listed = db.online_studies(0, 10_000).unwrap();
    let (key, _, _) = listed
        .iter()
        .find(|(_, p, u)| *p == f.partition && *u == study)
        .expect("an online study is listed")
        .clone();
    assert!(db
        .online_studies(key, 10_000)
        .unwrap()
        .iter()
        .all(|(k, _, _)| *k > key));

    let mut entry = ArchiveEntry {
        partition: f.partition,
        study_uid: study.clone(),
        path: "/archive/AR/1.31.1.tar".into(),
        date_folder: records[0].location.date_folder.clone(),
        size_bytes: 4096,
        digest: "ab".repeat(32),
        instances: 1,
        instance_bytes: bytes,
        archived_at_ms: 17,
    };
    // A pack of other content does not count.
    db.record_archive(&entry).unwrap();
    assert_eq!(
        db.archive_candidates(f.partition, far_future, 10)
            .unwrap()
            .len(),
        1
    );
    assert!(db.purge_candidates(f.fs, 10).unwrap().is_empty());
    assert!(!db
        .switch_to_nearline(f.partition, &study, f.fs, 1, bytes)
        .unwrap());
    entry.instances = 2;
    db.record_archive(&entry).unwrap();
    assert_eq!(
        db.archive_entry(f.partition, &study).unwrap(),
        Some(entry.clone())
    );
    assert!(db
        .archive_candidates(f.partition, far_future, 10)
        .unwrap()
        .is_empty());
    assert_eq!(
        db.purge_candidates(f.fs, 10).unwrap(),
        vec![(f.partition, study.clone(), bytes)]
    );
    // Purged from the wrong filesystem: no; from its own: nearline.
    assert!(!db
        .switch_to_nearline(f.partition, &study, other, 2, bytes)
        .unwrap());
    assert!(db
        .switch_to_nearline(f.partition, &study, f.fs, 2, bytes)
        .unwrap());
    assert_eq!(db.study_location(f.partition, &study).unwrap(), None);
    let record = db.study(f.partition, &study).unwrap().expect("rows kept");
    assert_eq!(record.location, None);
    assert_eq!(record.num_instances, 2);
    assert!(db.purge_candidates(f.fs, 10).unwrap().is_empty());
    assert!(db
        .archive_candidates(f.partition, far_future, 10)
        .unwrap()
        .is_empty());
    assert!(!db
        .switch_to_nearline(f.partition, &study, f.fs, 2, bytes)
        .unwrap());

    // Restored only as packed, only once.
    assert!(!db
        .switch_from_nearline(f.partition, &study, other, "20250102", 2, bytes + 1)
        .unwrap());
    assert!(db
        .switch_from_nearline(f.partition, &study, other, "20250102", 2, bytes)
        .unwrap());
    let location = db
        .study_location(f.partition, &study)
        .unwrap()
        .expect("online");
    assert_eq!(location.filesystem, other);
    assert_eq!(location.date_folder, "20250102");
    assert!(!db
        .switch_from_nearline(f.partition, &study, f.fs, "20250102", 2, bytes)
        .unwrap());
    assert!(db.forget_archive(f.partition, &study).unwrap());
    assert!(!db.forget_archive(f.partition, &study).unwrap());
    assert_eq!(db.archive_entry(f.partition, &study).unwrap(), None);
}
