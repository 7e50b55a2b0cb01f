//! SQLite-specific tests, and the shared conformance suite on SQLite.

use std::collections::BTreeSet;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rusqlite::Connection;

use super::query::SqliteDialect;
use super::{Options, SqliteIndex, SCHEMA_VERSION};
use crate::db::conformance::{self, Nearline, StudySummaries, StudySummary};
use crate::db::fixtures::{mixed_batches, record, setup, uid};
use crate::db::planner;
use crate::db::{Error, IndexStore, QueryStore};
use crate::model::query::{Attribute, Key, Level, Matcher, Query, Root};
use crate::model::{
    AeTitle, FilesystemId, FolderName, IndexCounts, InsertOutcome, InstanceAttrs, InstanceRecord,
    PartitionId, PatientAttrs, SeriesAttrs, StudyAttrs, StudyLocation, Uid,
};

impl StudySummaries for SqliteIndex {
    fn study_summary(&self, partition: PartitionId, study_uid: &Uid) -> Option<StudySummary> {
        self.read("probing a study", |conn| {
            use rusqlite::OptionalExtension;
            conn.query_row(
                "SELECT num_series, num_instances, size_bytes, modalities_in_study,
                        sop_classes_in_study
                 FROM study WHERE partition_id = ?1 AND study_uid = ?2",
                rusqlite::params![partition.0, study_uid.as_str()],
                |r| {
                    Ok(StudySummary {
                        num_series: super::get_u64(r, 0)?,
                        num_instances: super::get_u64(r, 1)?,
                        size_bytes: super::get_u64(r, 2)?,
                        modalities_in_study: r.get(3)?,
                        sop_classes_in_study: r.get(4)?,
                    })
                },
            )
            .optional()
        })
        .expect("probe")
    }
}

impl Nearline for SqliteIndex {
    fn take_offline(&self, partition: PartitionId, study_uid: &Uid) {
        let conn = self.writer.lock().expect("writer");
        let changed = conn
            .execute(
                "UPDATE study_storage SET filesystem_id = NULL, state = 'nearline'
                 WHERE partition_id = ?1 AND study_uid = ?2",
                rusqlite::params![partition.0, study_uid.as_str()],
            )
            .expect("take offline");
        assert_eq!(changed, 1, "study {study_uid} exists");
    }
}

fn temp_db() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("index.sqlite");
    (dir, path)
}

/// Checks every maintained counter and summary against a recount of the rows.
fn verify_counters(path: &Path) {
    let conn = Connection::open(path).expect("open");
    let bad = |sql: &str| -> i64 { conn.query_row(sql, [], |r| r.get(0)).expect(sql) };
    assert_eq!(
        bad("SELECT COUNT(*) FROM series s WHERE num_instances = 0
             OR num_instances != (SELECT COUNT(*) FROM instance WHERE series_fk = s.id)"),
        0,
        "series counters"
    );
    assert_eq!(
        bad("SELECT COUNT(*) FROM study st WHERE num_instances = 0
             OR num_series != (SELECT COUNT(*) FROM series WHERE study_fk = st.id)
             OR num_instances != (SELECT COUNT(*) FROM instance i JOIN series s ON s.id = i.series_fk
                                  WHERE s.study_fk = st.id)
             OR size_bytes != (SELECT COALESCE(SUM(i.file_size), 0) FROM instance i
                               JOIN series s ON s.id = i.series_fk WHERE s.study_fk = st.id)"),
        0,
        "study counters"
    );
    assert_eq!(
        bad("SELECT COUNT(*) FROM patient p WHERE num_studies = 0
             OR num_studies != (SELECT COUNT(*) FROM study WHERE patient_fk = p.id)
             OR num_series != (SELECT COUNT(*) FROM series s JOIN study st ON st.id = s.study_fk
                               WHERE st.patient_fk = p.id)
             OR num_instances != (SELECT COUNT(*) FROM instance i JOIN series s ON s.id = i.series_fk
                                  JOIN study st ON st.id = s.study_fk WHERE st.patient_fk = p.id)"),
        0,
        "patient counters"
    );
    assert_eq!(
        bad(
            "SELECT COUNT(*) FROM instance i JOIN series s ON s.id = i.series_fk
             JOIN study st ON st.id = s.study_fk WHERE st.partition_id != i.partition_id"
        ),
        0,
        "instance partitions"
    );
    let mut stmt = conn
        .prepare("SELECT id, modalities_in_study, sop_classes_in_study FROM study")
        .expect("prepare");
    let studies: Vec<(i64, String, String)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows");
    let distinct = |sql: &str, id: i64| -> String {
        let mut stmt = conn.prepare(sql).expect("prepare");
        let set: BTreeSet<String> = stmt
            .query_map([id], |r| r.get::<_, Option<String>>(0))
            .expect("query")
            .filter_map(|v| v.expect("row"))
            .collect();
        set.into_iter().collect::<Vec<_>>().join("\\")
    };
    for (id, modalities, classes) in studies {
        assert_eq!(
            modalities,
            distinct("SELECT modality FROM series WHERE study_fk = ?1", id)
        );
        assert_eq!(
            classes,
            distinct(
                "SELECT sop_class_uid FROM instance i JOIN series s ON s.id = i.series_fk
                 WHERE s.study_fk = ?1",
                id
            )
        );
    }
    let fk: Vec<String> = conn
        .prepare("PRAGMA foreign_key_check")
        .expect("prepare")
        .query_map([], |r| r.get::<_, String>(0))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows");
    assert!(fk.is_empty(), "foreign key violations in {fk:?}");
}

fn user_version(path: &Path) -> u32 {
    Connection::open(path)
        .expect("open")
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .expect("user_version")
}

#[test]
fn conformance_suite() {
    let (_dir, path) = temp_db();
    let index = SqliteIndex::open(&path).expect("open");
    conformance::run_all(&index);
    conformance::run_summaries(&index, &index);
    verify_counters(&path);
}

#[test]
fn query_conformance_suite() {
    let (_dir, path) = temp_db();
    let index = SqliteIndex::open(&path).expect("open");
    conformance::run_query_suite(&index, &index);
}

/// The study-level shapes of the C-FIND target (PatientID, AccessionNumber,
/// StudyDate range, PatientName prefix, ModalitiesInStudy) and the
/// hierarchical lower levels use indexes, with no statistics, sampled ones
/// (what `PRAGMA optimize` leaves) and full ones: no full scan of a table,
/// (a list's `json_each` is scanned, not a table), and the date-ordered
/// shapes need no sort of the whole result.
#[test]
fn query_plans_use_indexes() {
    let (_dir, path) = temp_db();
    let index = SqliteIndex::open(&path).expect("open");
    let (partition, fs) = setup(&index, "PLANS");
    index
        .insert_instances(&bench_records(partition, fs, 0..40))
        .expect("insert");
    let key = |attribute, matcher| Key { attribute, matcher };
    let single = |attribute, value: &str| key(attribute, Matcher::Single(value.to_string()));
    let study = |keys: &[Key]| bench_query(partition, keys, Some(100));
    let lower = |level, keys: Vec<Key>| Query {
        partition,
        root: Root::Study,
        level,
        keys,
        pn_case_insensitive: true,
        limit: None,
        offset: 0,
    };
    let mut case_sensitive = study(&[single(Attribute::PatientName, "DOE1^GIVEN3")]);
    case_sensitive.pn_case_insensitive = false;
    // (shape, query, index and constraint the plan must show, ordered by the index)
    let shapes: Vec<(&str, Query, &str, bool)> = vec![
        (
            "PatientID",
            study(&[single(Attribute::PatientId, "PID000007")]),
            "sqlite_autoindex_patient_1 (partition_id=? AND patient_id=?)",
            false,
        ),
        (
            "AccessionNumber",
            study(&[single(Attribute::AccessionNumber, "ACC00000001")]),
            "study_accession_idx (partition_id=? AND accession_number=?)",
            false,
        ),
        (
            "StudyDate range",
            study(&[key(
                Attribute::StudyDate,
                Matcher::Range {
                    from: Some("20170101".into()),
                    to: Some("20220101".into()),
                },
            )]),
            "study_date_idx (partition_id=? AND study_date>? AND study_date<?)",
            true,
        ),
        (
            "StudyDate open range",
            study(&[key(
                Attribute::StudyDate,
                Matcher::Range {
                    from: Some("20170101".into()),
                    to: None,
                },
            )]),
            "study_date_idx (partition_id=? AND study_date>?)",
            true,
        ),
        (
            "PatientName prefix",
            study(&[key(
                Attribute::PatientName,
                Matcher::Wildcard("DOE*".into()),
            )]),
            "patient_name_idx (partition_id=? AND patient_name>? AND patient_name<?)",
            false,
        ),
        (
            "PatientName non-ASCII prefix",
            study(&[key(
                Attribute::PatientName,
                Matcher::Wildcard("müller*".into()),
            )]),
            "patient_name_idx (partition_id=? AND patient_name>? AND patient_name<?)",
            false,
        ),
        (
            "PatientName case-sensitive",
            case_sensitive,
            "patient_name_idx (partition_id=? AND patient_name=?)",
            false,
        ),
        (
            "ModalitiesInStudy",
            study(&[single(Attribute::ModalitiesInStudy, "CT")]),
            "study_date_idx (partition_id=?)",
            true,
        ),
        (
            "ModalitiesInStudy list",
            study(&[key(
                Attribute::ModalitiesInStudy,
                Matcher::List(vec!["CT".into(), "MR".into()]),
            )]),
            "study_date_idx (partition_id=?)",
            true,
        ),
        (
            "all studies",
            study(&[]),
            "study_date_idx (partition_id=?)",
            true,
        ),
        (
            "StudyInstanceUID list",
            study(&[key(
                Attribute::StudyInstanceUid,
                Matcher::List(vec![
                    "1.2.826.0.1.3680043.10.3".into(),
                    "1.2.826.0.1.3680043.10.5".into(),
                ]),
            )]),
            "sqlite_autoindex_study_1 (partition_id=? AND study_uid=?)",
            false,
        ),
        (
            "PatientID prefix",
            study(&[key(
                Attribute::PatientId,
                Matcher::Wildcard("PID00001*".into()),
            )]),
            "sqlite_autoindex_patient_1 (partition_id=? AND patient_id>? AND patient_id<?)",
            false,
        ),
        (
            "series of a study",
            lower(
                Level::Series,
                vec![single(
                    Attribute::StudyInstanceUid,
                    "1.2.826.0.1.3680043.10.3",
                )],
            ),
            "sqlite_autoindex_study_1 (partition_id=? AND study_uid=?)",
            false,
        ),
        (
            "images of a series",
            lower(
                Level::Image,
                vec![
                    single(Attribute::StudyInstanceUid, "1.2.826.0.1.3680043.10.3"),
                    single(Attribute::SeriesInstanceUid, "1.2.826.0.1.3680043.10.3.1"),
                ],
            ),
            "instance_series_idx (series_fk=?)",
            false,
        ),
        (
            "image by SOP Instance UID",
            lower(
                Level::Image,
                vec![single(
                    Attribute::SopInstanceUid,
                    "1.2.826.0.1.3680043.11.3.7",
                )],
            ),
            "sqlite_autoindex_instance_1 (partition_id=? AND sop_instance_uid=?)",
            false,
        ),
    ];
    let conn = Connection::open(&path).expect("open");
    for statistics in [
        "DROP TABLE IF EXISTS sqlite_stat1; DROP TABLE IF EXISTS sqlite_stat4;",
        "PRAGMA analysis_limit = 400; ANALYZE;",
        "PRAGMA analysis_limit = 0; ANALYZE;",
    ] {
        conn.execute_batch(statistics).expect("statistics");
        let conn = Connection::open(&path).expect("reopen with these statistics");
        for (shape, query, expected, ordered) in &shapes {
            let plan = explain(&conn, query);
            assert!(plan.contains(expected), "{shape} ({statistics}): {plan}");
            assert!(
                !plan
                    .split("; ")
                    .any(|step| step.starts_with("SCAN") && !step.starts_with("SCAN json_each")),
                "{shape} ({statistics}) scans: {plan}"
            );
            if *ordered {
                assert!(
                    !plan.contains("TEMP B-TREE FOR ORDER BY"),
                    "{shape} ({statistics}) sorts: {plan}"
                );
            }
            // And the statement runs.
            index_find_count(&index, query);
        }
        // The retrieve lists: the per-entity statements and a study UID.
        for level in [Level::Patient, Level::Study, Level::Series] {
            let sql = planner::instances_below::<SqliteDialect>(level);
            let plan = plan_of(&conn, &sql, &[rusqlite::types::Value::Integer(1)]);
            assert!(!plan.contains("SCAN"), "{level:?} ({statistics}): {plan}");
        }
        let by_uid = lower(
            Level::Study,
            vec![single(
                Attribute::StudyInstanceUid,
                "1.2.826.0.1.3680043.10.3",
            )],
        );
        let sql = planner::retrieve_entities::<SqliteDialect>(&by_uid);
        let plan = plan_of(&conn, &sql.text, &sql.params);
        assert!(
            plan.contains("sqlite_autoindex_study_1 (partition_id=? AND study_uid=?)"),
            "retrieve a study ({statistics}): {plan}"
        );
    }
}

fn index_find_count(index: &SqliteIndex, query: &Query) -> usize {
    let mut n = 0;
    index
        .find(query, &mut |_| {
            n += 1;
            ControlFlow::Continue(())
        })
        .expect("find");
    n
}

#[test]
fn pragmas_and_schema() {
    let (_dir, path) = temp_db();
    let index = SqliteIndex::open(&path).expect("open");
    {
        let conn = index.writer.lock().expect("writer");
        let get = |pragma: &str| -> String {
            conn.query_row(&format!("PRAGMA {pragma}"), [], |r| {
                r.get::<_, rusqlite::types::Value>(0)
            })
            .map(|v| match v {
                rusqlite::types::Value::Integer(i) => i.to_string(),
                rusqlite::types::Value::Text(t) => t,
                other => format!("{other:?}"),
            })
            .expect(pragma)
        };
        assert_eq!(get("journal_mode"), "wal");
        assert_eq!(get("synchronous"), "2", "FULL");
        assert_eq!(get("foreign_keys"), "1");
        assert_eq!(get("busy_timeout"), "5000");
    }
    assert_eq!(user_version(&path), SCHEMA_VERSION);
    let conn = Connection::open(&path).expect("open");
    let tables: BTreeSet<String> = conn
        .prepare("SELECT name FROM sqlite_schema WHERE type = 'table'")
        .expect("prepare")
        .query_map([], |r| r.get(0))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows");
    for table in [
        "partition",
        "filesystem",
        "device",
        "patient",
        "study_storage",
        "study",
        "series",
        "instance",
        "work_queue",
        "work_queue_uid",
        "audit_log",
        "service_lock",
    ] {
        assert!(tables.contains(table), "missing table {table}");
    }
    // The lookups C-FIND depends on use indexes.
    let plan = |sql: &str| -> String {
        conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .expect("plan")
            .query_map([], |r| r.get::<_, String>(3))
            .expect("query")
            .collect::<Result<Vec<_>, _>>()
            .expect("rows")
            .join("; ")
    };
    for (sql, index) in [
        ("SELECT id FROM patient WHERE partition_id = 1 AND patient_id = 'X'", "sqlite_autoindex_patient_1"),
        (
            "SELECT id FROM patient WHERE partition_id = 1 AND patient_name LIKE 'DOE%'",
            "patient_name_idx",
        ),
        (
            "SELECT id FROM study WHERE partition_id = 1 AND study_date BETWEEN '20240101' AND '20240131'",
            "study_date_idx",
        ),
        ("SELECT id FROM study WHERE partition_id = 1 AND accession_number = 'A1'", "study_accession_idx"),
        ("SELECT id FROM study WHERE patient_fk = 3", "study_patient_idx"),
        ("SELECT id FROM series WHERE study_fk = 3", "sqlite_autoindex_series_1"),
        ("SELECT id FROM series WHERE series_uid = '1.2'", "series_uid_idx"),
        ("SELECT study_fk FROM series WHERE modality = 'CT'", "series_modality_idx"),
        ("SELECT id FROM instance WHERE series_fk = 3", "instance_series_idx"),
    ] {
        let plan = plan(sql);
        assert!(plan.contains(index), "{sql}: {plan}");
    }
}

#[test]
fn reopen_keeps_data_and_version() {
    let (_dir, path) = temp_db();
    let (partition, fs) = {
        let index = SqliteIndex::open(&path).expect("open");
        let (partition, fs) = setup(&index, "REOPEN");
        index
            .insert_instances(&[
                record(partition, fs, 1, 1, 1, 1),
                record(partition, fs, 1, 1, 2, 2),
            ])
            .expect("insert");
        (partition, fs)
    };
    let index = SqliteIndex::open(&path).expect("reopen");
    assert_eq!(user_version(&path), SCHEMA_VERSION);
    assert_eq!(
        index
            .partition(&AeTitle::parse("REOPEN").expect("ae"))
            .expect("lookup"),
        Some(partition)
    );
    assert_eq!(index.counts(partition).expect("counts").instances, 2);
    assert_eq!(
        setup(&index, "REOPEN"),
        (partition, fs),
        "upserts keep their keys"
    );
    assert!(index
        .instance(partition, &uid("1.2.826.0.1.3680043.3.2"))
        .expect("lookup")
        .is_some());
}

#[test]
fn newer_schema_is_refused() {
    let (_dir, path) = temp_db();
    drop(SqliteIndex::open(&path).expect("open"));
    Connection::open(&path)
        .expect("open")
        .pragma_update(None, "user_version", SCHEMA_VERSION + 1)
        .expect("bump");
    match SqliteIndex::open(&path) {
        Err(Error::SchemaTooNew { found, supported }) => {
            assert_eq!((found, supported), (SCHEMA_VERSION + 1, SCHEMA_VERSION));
        }
        other => panic!("expected SchemaTooNew, got {other:?}"),
    }
}

#[test]
fn unopenable_path_is_an_open_error() {
    let (dir, _) = temp_db();
    let path = dir.path().join("missing-dir").join("index.sqlite");
    assert!(matches!(SqliteIndex::open(&path), Err(Error::Open { .. })));
}

#[test]
fn two_handles_on_one_file_both_write() {
    let (_dir, path) = temp_db();
    let a = Arc::new(SqliteIndex::open(&path).expect("open a"));
    let b = Arc::new(SqliteIndex::open(&path).expect("open b"));
    let (partition, fs) = setup(a.as_ref(), "SHARED");
    let threads: Vec<_> = [a.clone(), b.clone()]
        .into_iter()
        .enumerate()
        .map(|(n, index)| {
            std::thread::spawn(move || {
                let n = u32::try_from(n).expect("small");
                for batch in 0..20u32 {
                    let records: Vec<_> = (0..25u32)
                        .map(|i| {
                            let sop = n * 100_000 + batch * 100 + i;
                            // Both handles also write to one shared study.
                            record(
                                partition,
                                fs,
                                1,
                                if i % 2 == 0 { 7 } else { 10 + n },
                                i % 3,
                                sop,
                            )
                        })
                        .collect();
                    index.insert_instances(&records).expect("insert");
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("writer thread");
    }
    assert_eq!(
        a.counts(partition).expect("counts"),
        b.counts(partition).expect("counts")
    );
    assert_eq!(a.counts(partition).expect("counts").instances, 2 * 20 * 25);
    assert_eq!(a.counts(partition).expect("counts").studies, 3);
    verify_counters(&path);
}

#[test]
fn a_nearline_study_takes_the_location_of_new_arrivals() {
    let (_dir, path) = temp_db();
    let index = SqliteIndex::open(&path).expect("open");
    let (partition, fs) = setup(&index, "NEARLINE");
    index
        .insert_instances(&[record(partition, fs, 1, 1, 1, 1)])
        .expect("first");
    let study = record(partition, fs, 1, 1, 1, 1).study.study_uid;
    Connection::open(&path)
        .expect("open")
        .execute(
            "UPDATE study_storage SET filesystem_id = NULL, state = 'nearline'",
            [],
        )
        .expect("purge");
    assert_eq!(
        index.study_location(partition, &study).expect("lookup"),
        None
    );
    let mut arrival = record(partition, fs, 1, 1, 1, 2);
    arrival.location.date_folder = "20991231".to_string();
    index.insert_instances(&[arrival]).expect("arrival");
    let location = index
        .study_location(partition, &study)
        .expect("lookup")
        .expect("online");
    assert_eq!(
        (location.filesystem, location.date_folder.as_str()),
        (fs, "20991231")
    );
}

#[test]
fn concurrent_first_opens_migrate_once() {
    let (_dir, path) = temp_db();
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let path = path.clone();
            std::thread::spawn(move || SqliteIndex::open(&path).map(drop))
        })
        .collect();
    for handle in handles {
        handle.join().expect("thread").expect("open");
    }
    assert_eq!(user_version(&path), SCHEMA_VERSION);
}

/// Holds the write lock from another connection for `hold`.
fn hold_write_lock(path: &Path, hold: Duration) -> std::thread::JoinHandle<()> {
    let conn = Connection::open(path).expect("open");
    conn.execute_batch("BEGIN IMMEDIATE; INSERT INTO service_lock VALUES ('test', 'x', 0);")
        .expect("lock");
    std::thread::spawn(move || {
        std::thread::sleep(hold);
        conn.execute_batch("ROLLBACK").expect("release");
    })
}

#[test]
fn busy_database_is_retried() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let (_dir, path) = temp_db();
    let options = Options {
        busy_timeout: Duration::from_millis(20),
        retry_for: Duration::from_secs(30),
        readers: 2,
        ..Options::default()
    };
    let index = Arc::new(SqliteIndex::open_with(&path, options).expect("open"));
    let (partition, fs) = setup(&*index, "BUSY");
    // Another connection holds the write lock until told to let go.
    let conn = Connection::open(&path).expect("open");
    conn.execute_batch("BEGIN IMMEDIATE; INSERT INTO service_lock VALUES ('test', 'x', 0);")
        .expect("lock");
    let released = Arc::new(AtomicBool::new(false));
    // Reads do not wait for the writer: this one returns while it holds.
    assert_eq!(
        index.counts(partition).expect("counts"),
        IndexCounts::default()
    );
    assert!(!released.load(Ordering::SeqCst));
    // A write waits (retrying) until the lock is released, then succeeds.
    let writer = {
        let index = index.clone();
        let released = released.clone();
        std::thread::spawn(move || {
            let outcome = index.insert_instances(&[record(partition, fs, 1, 1, 1, 1)]);
            (outcome, released.load(Ordering::SeqCst))
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    assert!(!writer.is_finished(), "the write did not wait for the lock");
    released.store(true, Ordering::SeqCst);
    conn.execute_batch("ROLLBACK").expect("release");
    let (outcome, after_release) = writer.join().expect("writer");
    assert_eq!(outcome.expect("retried"), [InsertOutcome::Inserted]);
    assert!(
        after_release,
        "the write finished before the lock was released"
    );
}

#[test]
fn busy_database_gives_up_after_the_retry_window() {
    let (_dir, path) = temp_db();
    let options = Options {
        busy_timeout: Duration::from_millis(20),
        retry_for: Duration::from_millis(200),
        readers: 2,
        ..Options::default()
    };
    let index = SqliteIndex::open_with(&path, options).expect("open");
    let (partition, fs) = setup(&index, "BUSY");
    let holder = hold_write_lock(&path, Duration::from_millis(1500));
    let result = index.insert_instances(&[record(partition, fs, 1, 1, 1, 1)]);
    assert!(matches!(result, Err(Error::Backend { .. })), "{result:?}");
    holder.join().expect("holder");
    assert!(index
        .insert_instances(&[record(partition, fs, 1, 1, 1, 1)])
        .is_ok());
}

#[test]
fn full_database_maps_to_full() {
    let (_dir, path) = temp_db();
    let index = SqliteIndex::open(&path).expect("open");
    let (partition, fs) = setup(&index, "FULL");
    {
        let conn = index.writer.lock().expect("writer");
        let pages: i64 = conn
            .query_row("PRAGMA page_count", [], |r| r.get(0))
            .expect("pages");
        conn.execute_batch(&format!("PRAGMA max_page_count = {}", pages + 1))
            .expect("limit");
    }
    let batch: Vec<_> = (0..500)
        .map(|i| record(partition, fs, i, i, 1, i))
        .collect();
    let result = index.insert_instances(&batch);
    assert!(matches!(result, Err(Error::Full(_))), "{result:?}");
    assert_eq!(
        index.counts(partition).expect("counts"),
        IndexCounts::default()
    );
}

#[test]
fn lookups_do_not_wait_for_the_writer() {
    let (_dir, path) = temp_db();
    let index = SqliteIndex::open(&path).expect("open");
    let (partition, _) = setup(&index, "READERS");
    let _writer = index.writer.lock().expect("writer");
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let index = &index;
            move || index.counts(partition).expect("counts")
        })
        .collect();
    std::thread::scope(|s| {
        let handles: Vec<_> = threads.into_iter().map(|t| s.spawn(t)).collect();
        for handle in handles {
            assert_eq!(handle.join().expect("reader"), IndexCounts::default());
        }
    });
    assert!(index.readers.lock().open <= 4);
}

#[test]
fn mixed_workload_keeps_counters_exact() {
    let (_dir, path) = temp_db();
    let index = SqliteIndex::open(&path).expect("open");
    let (partition, fs) = setup(&index, "MIXED");
    let mut total = 0;
    for batch in mixed_batches(partition, fs) {
        total += index.insert_instances(&batch).expect("batch").len();
    }
    assert_eq!(total, 2000);
    verify_counters(&path);
    let counts = index.counts(partition).expect("counts");
    let conn = Connection::open(&path).expect("open");
    let rows: i64 = conn
        .query_row("SELECT COUNT(*) FROM instance", [], |r| r.get(0))
        .expect("count");
    assert_eq!(counts.instances, u64::try_from(rows).expect("count"));
}

/// A synthetic archive for the query benchmark: study `s` of `studies`, 100
/// instances in 2–4 series, 2.5 studies per patient, ~27 studies a day over
/// ten years, modalities CT, MR, CT+SR, US, CR.
fn bench_records(
    partition: PartitionId,
    fs: FilesystemId,
    studies: std::ops::Range<u32>,
) -> Vec<InstanceRecord> {
    const SURNAMES: [&str; 12] = [
        "SMITH", "JONES", "MULLER", "GARCIA", "MARTIN", "BERNARD", "ROSSI", "DUPONT", "SCHMIDT",
        "NGUYEN", "KOWALSKI", "DOE",
    ];
    let mut records = Vec::with_capacity(studies.len() * 100);
    for s in studies {
        let patient = s * 7 % 40_000;
        let day = s * 37 % 3650;
        let (y, m, d) = (2015 + day / 365, 1 + day % 365 / 31 % 12, 1 + day % 28);
        let (modalities, series): (&[&str], u32) = match s % 10 {
            0..=3 => (&["CT"], 2),
            4..=6 => (&["MR"], 4),
            7 => (&["CT", "SR"], 2),
            8 => (&["US"], 2),
            _ => (&["CR"], 2),
        };
        let study_uid = uid(&format!("1.2.826.0.1.3680043.10.{s}"));
        for n in 0..100u32 {
            let se = n % series;
            let modality = modalities[usize::try_from(se).expect("small") % modalities.len()];
            records.push(InstanceRecord {
                partition,
                location: StudyLocation {
                    filesystem: fs,
                    partition_folder: FolderName::parse("BENCH").expect("folder"),
                    date_folder: format!("{y:04}{m:02}{d:02}"),
                    study_uid: study_uid.clone(),
                },
                patient: PatientAttrs {
                    patient_id: format!("PID{patient:06}"),
                    issuer_of_patient_id: None,
                    patient_name: Some(format!(
                        "{}{}^GIVEN{}",
                        SURNAMES[patient as usize % SURNAMES.len()],
                        patient / 12,
                        patient % 50
                    )),
                    birth_date: Some(format!("19{:02}0101", patient % 100)),
                    sex: Some(if patient % 2 == 0 { "F" } else { "M" }.to_string()),
                },
                study: StudyAttrs {
                    study_uid: study_uid.clone(),
                    study_date: Some(format!("{y:04}{m:02}{d:02}")),
                    study_time: Some(format!("{:02}{:02}{:02}", s % 24, s % 60, s % 59)),
                    accession_number: Some(format!("ACC{s:08}")),
                    study_id: Some(s.to_string()),
                    study_description: Some("BENCH STUDY".to_string()),
                    referring_physician_name: Some("REF^DR".to_string()),
                    specific_character_set: None,
                },
                series: SeriesAttrs {
                    series_uid: uid(&format!("1.2.826.0.1.3680043.10.{s}.{se}")),
                    modality: Some(modality.to_string()),
                    series_number: Some(i32::try_from(se + 1).expect("small")),
                    series_description: None,
                    body_part_examined: None,
                    series_date: None,
                    series_time: None,
                },
                instance: InstanceAttrs {
                    sop_instance_uid: uid(&format!("1.2.826.0.1.3680043.11.{s}.{n}")),
                    sop_class_uid: uid("1.2.840.10008.5.1.4.1.1.2"),
                    instance_number: Some(i32::try_from(n / series + 1).expect("small")),
                    transfer_syntax_uid: uid("1.2.840.10008.1.2.1"),
                    file_size: 500_000,
                    digest: format!("{s:032x}{n:032x}"),
                    source_ae: Some("BENCH".to_string()),
                },
                deletions_seen: None,
            });
        }
    }
    records
}

fn bench_query(partition: PartitionId, keys: &[Key], limit: Option<u64>) -> Query {
    let mut all: Vec<Key> = keys.to_vec();
    for attribute in [
        Attribute::StudyInstanceUid,
        Attribute::PatientName,
        Attribute::PatientId,
        Attribute::StudyDate,
        Attribute::StudyTime,
        Attribute::AccessionNumber,
        Attribute::StudyDescription,
        Attribute::ModalitiesInStudy,
        Attribute::NumberOfStudyRelatedInstances,
    ] {
        if !all.iter().any(|k| k.attribute == attribute) {
            all.push(Key {
                attribute,
                matcher: Matcher::Universal,
            });
        }
    }
    Query {
        partition,
        root: Root::Study,
        level: Level::Study,
        keys: all,
        pn_case_insensitive: true,
        limit,
        offset: 0,
    }
}

/// The query plan of a query's statement, one line.
fn explain(conn: &Connection, query: &Query) -> String {
    let plan = planner::find::<SqliteDialect>(query);
    plan_of(conn, &plan.sql.text, &plan.sql.params)
}

/// The query plan of a statement with these values bound, one line.
fn plan_of(conn: &Connection, sql: &str, params: &[rusqlite::types::Value]) -> String {
    let mut stmt = conn
        .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
        .expect("plan");
    let rows = stmt
        .query_map(rusqlite::params_from_iter(params), |r| {
            r.get::<_, String>(3)
        })
        .expect("query");
    rows.collect::<Result<Vec<_>, _>>()
        .expect("rows")
        .join("; ")
}

#[test]
fn queries_have_their_own_bounded_pool_and_a_deadline() {
    let (_dir, path) = temp_db();
    let options = Options {
        readers: 1,
        query_readers: 1,
        pool_wait: Duration::from_millis(300),
        ..Options::default()
    };
    let index = SqliteIndex::open_with(&path, options).expect("open");
    let (partition, fs) = setup(&index, "POOLS");
    let batch: Vec<_> = (0..2_000)
        .map(|i| record(partition, fs, i % 50, i % 200, i % 400, i))
        .collect();
    index.insert_instances(&batch).expect("insert");
    let query = bench_query(partition, &[], None);

    // While a query holds the only query connection, ingest's lookups
    // still get theirs, and a second query fails after the pool wait
    // instead of waiting for the first one to finish.
    let mut inner = None;
    let started = Instant::now();
    index
        .find(&query, &mut |_| {
            let present = index.instance(partition, &batch[0].instance.sop_instance_uid);
            assert!(matches!(present, Ok(Some(_))), "{present:?}");
            inner = Some(index.find(&query, &mut |_| ControlFlow::Break(())));
            ControlFlow::Break(())
        })
        .expect("the outer query");
    let inner = inner.expect("the sink ran");
    assert!(matches!(&inner, Err(Error::Backend { .. })), "{inner:?}");
    assert!(started.elapsed() < Duration::from_secs(5));

    // A query that runs past its deadline is interrupted, and the
    // connection serves the next query with a fresh deadline.
    let mut slow = index;
    slow.options.query_timeout = Duration::ZERO;
    let image = Query {
        level: Level::Image,
        keys: vec![Key {
            attribute: Attribute::SopInstanceUid,
            matcher: Matcher::Universal,
        }],
        ..query.clone()
    };
    let interrupted = slow.find(&image, &mut |_| ControlFlow::Continue(()));
    match interrupted {
        Err(Error::Backend { source, .. }) => {
            assert!(source.to_string().contains("interrupted"), "{source}")
        }
        other => panic!("expected an interrupted query, got {other:?}"),
    }
    slow.options.query_timeout = Duration::from_secs(60);
    let mut n = 0;
    slow.find(&image, &mut |_| {
        n += 1;
        ControlFlow::Continue(())
    })
    .expect("a query within its deadline");
    assert_eq!(n, 2_000);
}
