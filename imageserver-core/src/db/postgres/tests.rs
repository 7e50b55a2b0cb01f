//! PostgreSQL-specific tests, and the shared conformance suite on a real
//! PostgreSQL (15): every test creates its own database `it_<random>` on the
//! server `IMAGESERVER_PG_URL` names and drops it at the end.
//!
//! `scripts/test.sh` starts a throwaway cluster and sets the variable.
//! Without it the tests fail, unless a developer sets `IMAGESERVER_SKIP_PG=1`
//! explicitly: nothing skips silently.

use std::ops::ControlFlow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::{AssertSqlSafe, PgConnection, Row};

use super::{create_database, drop_database, PgIndex, PgOptions, SCHEMA_VERSION};
use crate::db::conformance::{self, Nearline, StudySummaries, StudySummary};
use crate::db::fixtures::{mixed_batches, record, setup, Xorshift};
use crate::db::rows::Columns;
use crate::db::{Error, IndexStore, QueryStore};
use crate::model::query::{Level, Query, Root};
use crate::model::{InsertOutcome, PartitionId, Uid};
// What the comparisons with SQLite need.
#[cfg(feature = "sqlite")]
use crate::{
    db::fixtures::uid,
    db::sqlite::SqliteIndex,
    model::query::{Attribute, Key, Matcher},
    model::AeTitle,
};

/// A database of its own for one test, dropped at the end (the other
/// PostgreSQL test modules use it too).
pub(super) struct TestDb {
    server: String,
    name: String,
    url: String,
}

impl TestDb {
    /// Creates `it_<random>`; `None` only when the developer set
    /// `IMAGESERVER_SKIP_PG=1`.
    pub(super) fn new() -> Option<TestDb> {
        let Ok(server) = std::env::var("IMAGESERVER_PG_URL") else {
            if std::env::var("IMAGESERVER_SKIP_PG").as_deref() == Ok("1") {
                eprintln!("note: IMAGESERVER_SKIP_PG=1: PostgreSQL test not run");
                return None;
            }
            panic!(
                "IMAGESERVER_PG_URL is not set: run the tests through scripts/test.sh, which \
                 starts PostgreSQL (or set IMAGESERVER_SKIP_PG=1 to leave the PostgreSQL tests out)"
            );
        };
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let name = format!(
            "it_{}_{}_{}",
            std::process::id(),
            nanos,
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let url = create_database(&server, &name).expect("create the test database");
        Some(TestDb { server, name, url })
    }

    pub(super) fn connect(&self) -> PgIndex {
        PgIndex::connect(&self.url).expect("connect")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Err(e) = drop_database(&self.server, &self.name) {
            eprintln!("cannot drop test database {}: {e}", self.name);
        }
    }
}

impl PgIndex {
    /// Runs a statement returning one BIGINT (tests only).
    fn scalar(&self, sql: &str) -> i64 {
        self.value(sql)
    }

    /// Runs a statement returning one text value (tests only).
    fn text(&self, sql: &str) -> String {
        self.value(sql)
    }

    /// Runs a statement returning one value of type `T`.
    fn value<T>(&self, sql: &str) -> T
    where
        T: for<'r> sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres> + Send + Unpin,
    {
        let sql = sql.to_string();
        self.read("test query", async |conn: &mut PgConnection| {
            sqlx::query_scalar(AssertSqlSafe(sql.clone()))
                .fetch_one(&mut *conn)
                .await
        })
        .expect("test query")
    }

    fn execute(&self, sql: &str) {
        let sql = sql.to_string();
        self.read("test statement", async |conn: &mut PgConnection| {
            sqlx::raw_sql(AssertSqlSafe(sql.clone()))
                .execute(&mut *conn)
                .await
        })
        .expect("test statement");
    }
}

/// TLS to the server. The test command's cluster takes TLS only
/// (`scripts/pg.sh start DIR --ssl`) and its URL asks for `verify-full`:
/// every connection is encrypted, a server whose certificate another CA
/// signed is refused before anything is sent, and the server refuses a
/// client that does not encrypt.
#[test]
fn connections_are_encrypted_and_the_server_verified() {
    let Some(db) = TestDb::new() else { return };
    let verified = db.url.contains("sslmode=verify-full");
    if std::env::var("CI").as_deref() == Ok("true") {
        assert!(
            verified,
            "CI runs PostgreSQL with TLS only (scripts/pg.sh start DIR --ssl): {}",
            db.url
        );
    }
    if !verified {
        eprintln!("note: IMAGESERVER_PG_URL does not ask for verify-full: TLS not checked here");
        return;
    }
    let index = db.connect();
    assert_eq!(
        index.scalar("SELECT COUNT(*) FROM pg_stat_ssl WHERE pid = pg_backend_pid() AND ssl"),
        1,
        "the connection is encrypted"
    );
    let plain = db.url.replace("sslmode=verify-full", "sslmode=disable");
    match PgIndex::connect(&plain) {
        Err(Error::Open { .. }) => {}
        other => panic!("a plain-text connection must be refused, got {other:?}"),
    }
    // The server's own certificate as the only trusted root: its issuer,
    // the test CA, is then unknown.
    let wrong_root = db.url.replace("/ca.crt", "/server.crt");
    assert_ne!(wrong_root, db.url, "the URL names scripts/pg.sh's ca.crt");
    match PgIndex::connect(&wrong_root) {
        Err(Error::Open { source, .. }) => {
            let chain = crate::model::error_chain(&*source);
            assert!(
                chain.to_lowercase().contains("certificate") || chain.contains("UnknownIssuer"),
                "{chain}"
            );
        }
        other => panic!("an unverifiable server must be refused, got {other:?}"),
    }
}

impl StudySummaries for PgIndex {
    fn study_summary(&self, partition: PartitionId, study_uid: &Uid) -> Option<StudySummary> {
        self.read("probing a study", async |conn: &mut PgConnection| {
            let row = sqlx::query(
                "SELECT num_series, num_instances, size_bytes, modalities_in_study,
                        sop_classes_in_study
                 FROM study WHERE partition_id = $1 AND study_uid = $2",
            )
            .bind(partition.0)
            .bind(study_uid.as_str())
            .fetch_optional(&mut *conn)
            .await?;
            row.map(|r| {
                Ok(StudySummary {
                    num_series: r.count("num_series")?,
                    num_instances: r.count("num_instances")?,
                    size_bytes: r.count("size_bytes")?,
                    modalities_in_study: r.try_get("modalities_in_study")?,
                    sop_classes_in_study: r.try_get("sop_classes_in_study")?,
                })
            })
            .transpose()
        })
        .expect("probe")
    }
}

impl Nearline for PgIndex {
    fn take_offline(&self, partition: PartitionId, study_uid: &Uid) {
        let changed = self
            .read("taking a study offline", async |conn: &mut PgConnection| {
                sqlx::query(
                    "UPDATE study_storage SET filesystem_id = NULL, state = 'nearline'
                     WHERE partition_id = $1 AND study_uid = $2",
                )
                .bind(partition.0)
                .bind(study_uid.as_str())
                .execute(&mut *conn)
                .await
            })
            .expect("take offline")
            .rows_affected();
        assert_eq!(changed, 1, "study {study_uid} exists");
    }
}

/// Checks every maintained counter and summary against a recount of the rows.
fn verify_counters(index: &PgIndex) {
    let checks = [
        (
            "series counters",
            "SELECT COUNT(*) FROM series s WHERE num_instances = 0
             OR num_instances != (SELECT COUNT(*) FROM instance WHERE series_fk = s.id)",
        ),
        (
            "study counters",
            "SELECT COUNT(*) FROM study st WHERE num_instances = 0
             OR num_series != (SELECT COUNT(*) FROM series WHERE study_fk = st.id)
             OR num_instances != (SELECT COUNT(*) FROM instance i JOIN series s ON s.id = i.series_fk
                                  WHERE s.study_fk = st.id)
             OR size_bytes != (SELECT COALESCE(SUM(i.file_size), 0) FROM instance i
                               JOIN series s ON s.id = i.series_fk WHERE s.study_fk = st.id)",
        ),
        (
            "patient counters",
            "SELECT COUNT(*) FROM patient p WHERE num_studies = 0
             OR num_studies != (SELECT COUNT(*) FROM study WHERE patient_fk = p.id)
             OR num_series != (SELECT COUNT(*) FROM series s JOIN study st ON st.id = s.study_fk
                               WHERE st.patient_fk = p.id)
             OR num_instances != (SELECT COUNT(*) FROM instance i JOIN series s ON s.id = i.series_fk
                                  JOIN study st ON st.id = s.study_fk WHERE st.patient_fk = p.id)",
        ),
        (
            "instance partitions",
            "SELECT COUNT(*) FROM instance i JOIN series s ON s.id = i.series_fk
             JOIN study st ON st.id = s.study_fk WHERE st.partition_id != i.partition_id",
        ),
        (
            "modalities in study",
            "SELECT COUNT(*) FROM study st WHERE modalities_in_study != COALESCE(
                 (SELECT string_agg(DISTINCT modality, '\\' ORDER BY modality) FROM series
                  WHERE study_fk = st.id), '')",
        ),
        (
            "SOP classes in study",
            "SELECT COUNT(*) FROM study st WHERE sop_classes_in_study != COALESCE(
                 (SELECT string_agg(DISTINCT i.sop_class_uid, '\\' ORDER BY i.sop_class_uid)
                  FROM instance i JOIN series s ON s.id = i.series_fk WHERE s.study_fk = st.id), '')",
        ),
    ];
    for (what, sql) in checks {
        assert_eq!(index.scalar(sql), 0, "{what}");
    }
}

#[test]
fn conformance_suite() {
    let Some(db) = TestDb::new() else { return };
    let index = db.connect();
    conformance::run_all(&index);
    conformance::run_summaries(&index, &index);
    verify_counters(&index);
}

#[test]
fn query_conformance_suite() {
    let Some(db) = TestDb::new() else { return };
    let index = db.connect();
    conformance::run_query_suite(&index, &index);
}

#[test]
fn schema_is_versioned_and_migrations_run_once() {
    let Some(db) = TestDb::new() else { return };
    // Nodes starting together: one migrates, the others wait and find it done.
    std::thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| drop(db.connect()));
        }
    });
    let index = db.connect();
    assert_eq!(
        index.scalar("SELECT COUNT(*) FROM schema_version"),
        i64::try_from(super::MIGRATIONS.len()).unwrap(),
        "each migration applied once"
    );
    assert_eq!(
        index.scalar("SELECT max(version)::BIGINT FROM schema_version"),
        i64::from(SCHEMA_VERSION)
    );
    // Text columns are C-collated: code-point order, ASCII-only lower().
    assert_eq!(
        index.scalar(
            "SELECT COUNT(*) FROM information_schema.columns
             WHERE table_schema = 'public' AND data_type = 'text'
               AND table_name <> 'schema_version' AND collation_name IS DISTINCT FROM 'C'"
        ),
        0
    );
    let (partition, fs) = setup(&index, "KEEP");
    index
        .insert_instances(&[record(partition, fs, 1, 1, 1, 1)])
        .expect("insert");
    drop(index);
    let index = db.connect();
    assert_eq!(index.counts(partition).expect("counts").instances, 1);

    index.execute("INSERT INTO schema_version VALUES (99, 0)");
    drop(index);
    match PgIndex::connect(&db.url) {
        Err(Error::SchemaTooNew { found, supported }) => {
            assert_eq!((found, supported), (99, SCHEMA_VERSION));
        }
        other => panic!("expected SchemaTooNew, got {other:?}"),
    }
}

/// Two tablespaces of the test's own, dropped (after the test's database)
/// when it goes.
struct Tablespaces {
    server: String,
    names: Vec<String>,
    dirs: Vec<std::path::PathBuf>,
}

impl Tablespaces {
    /// Creates `{base}_work` and `{base}_index` in directories beside the
    /// server's data directory, owned by the server's user.
    fn create(index: &PgIndex, server: &str, base: &str) -> Tablespaces {
        use std::os::unix::fs::MetadataExt;
        let data = std::path::PathBuf::from(index.text("SHOW data_directory"));
        let owner = std::fs::metadata(&data)
            .expect("the server's data directory")
            .uid();
        let mut spaces = Tablespaces {
            server: server.to_string(),
            names: Vec::new(),
            dirs: Vec::new(),
        };
        for role in ["work", "index"] {
            let name = format!("{base}_{role}");
            let dir = data.with_file_name(format!("tablespace_{name}"));
            std::fs::create_dir_all(&dir).expect("tablespace directory");
            std::os::unix::fs::chown(&dir, Some(owner), None).expect("chown to the server's user");
            super::admin::admin(server, &name, "creating a tablespace", |name| {
                format!("CREATE TABLESPACE \"{name}\" LOCATION '{}'", dir.display())
            })
            .expect("CREATE TABLESPACE");
            spaces.names.push(name);
            spaces.dirs.push(dir);
        }
        spaces
    }
}

impl Drop for Tablespaces {
    fn drop(&mut self) {
        for name in &self.names {
            let dropped = super::admin::admin(&self.server, name, "dropping a tablespace", |n| {
                format!("DROP TABLESPACE IF EXISTS \"{n}\"")
            });
            if let Err(e) = dropped {
                eprintln!("cannot drop tablespace {name}: {e}");
            }
        }
        for dir in &self.dirs {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// `[database] work_queue_tablespace` and `index_tablespace`: at connect
/// the work-queue tables and every index move to their tablespaces, the
/// other tables stay, and the index keeps working.
#[test]
fn work_queue_tables_and_indexes_move_to_their_tablespaces() {
    // Declared before the database, so dropped after it (a tablespace in
    // use cannot be dropped).
    let spaces;
    let Some(db) = TestDb::new() else { return };
    spaces = Tablespaces::create(&db.connect(), &db.server, &db.name);
    let (work, index_space) = (&spaces.names[0], &spaces.names[1]);
    let separator = if db.url.contains('?') { '&' } else { '?' };
    let url = format!(
        "{}{separator}work_tablespace={work}&index_tablespace={index_space}",
        db.url
    );
    let index = PgIndex::connect(&url).expect("connect with tablespaces");
    let in_space = |kind: &str, space: &str| {
        index.scalar(&format!(
            "SELECT COUNT(*) FROM pg_{kind} WHERE schemaname = current_schema() \
             AND tablespace = '{space}'"
        ))
    };
    assert_eq!(
        in_space("tables", work),
        super::tablespaces::WORK_TABLES.len() as i64,
        "every work-queue table"
    );
    assert_eq!(
        index.scalar(
            "SELECT COUNT(*) FROM pg_tables WHERE schemaname = current_schema() \
             AND tablename = 'instance' AND tablespace IS NULL"
        ),
        1,
        "the other tables stay in the default tablespace"
    );
    let indexes =
        index.scalar("SELECT COUNT(*) FROM pg_indexes WHERE schemaname = current_schema()");
    assert!(indexes > 10, "the schema has its indexes ({indexes})");
    assert_eq!(in_space("indexes", index_space), indexes, "every index");
    // The index works where it now lives, and a second connect has nothing
    // left to move.
    let (partition, fs) = setup(&index, "TABLESPACES");
    let batch = &mixed_batches(partition, fs)[0];
    index.insert_instances(batch).expect("insert");
    let rows = index.scalar("SELECT COUNT(*) FROM instance");
    assert!(rows > 0, "rows were written after the move");
    drop(index);
    let again = PgIndex::connect(&url).expect("connect again");
    assert_eq!(again.scalar("SELECT COUNT(*) FROM instance"), rows);
}

#[test]
fn url_options_are_read_and_removed() {
    let (url, options) = PgOptions::from_url(
        "postgres://u:secret@h:5/db?pool_size=3&sslmode=disable&connect_timeout_secs=2&statement_timeout_secs=0&query_pool_size=2",
    )
    .expect("parse");
    assert_eq!(url, "postgres://u:secret@h:5/db?sslmode=disable");
    assert_eq!(options.pool_size, 3);
    assert_eq!(options.query_pool_size, 2);
    assert_eq!(options.connect_timeout, Duration::from_secs(2));
    assert_eq!(options.statement_timeout, None);
    assert!(PgOptions::from_url("postgres://h/db?pool_size=0").is_err());
    assert_eq!(
        crate::db::redact_url("postgres://u:secret@h:5/db"),
        "postgres://u:***@h:5/db"
    );
    assert_eq!(
        super::database_url("postgres://u@h:5/postgres?sslmode=disable", "x"),
        "postgres://u@h:5/x?sslmode=disable"
    );
}

#[test]
fn unreachable_database_fails_fast() {
    // A port nothing listens on (bound, then released).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let start = Instant::now();
    let result = PgIndex::connect(&format!(
        "postgres://postgres@127.0.0.1:{port}/x?connect_timeout_secs=1"
    ));
    assert!(matches!(result, Err(Error::Open { .. })), "{result:?}");
    assert!(start.elapsed() < Duration::from_secs(20));
}

/// Only a connection's own failure is worth a second try on another one:
/// not a timed-out call (its time is spent), a closed pool or a pool that
/// had no connection to give.
#[test]
fn only_lost_connections_are_retried() {
    use std::io::{Error as IoError, ErrorKind};
    let lost = |e: sqlx::Error| super::lost_connection(&e);
    assert!(lost(sqlx::Error::Io(IoError::from(
        ErrorKind::ConnectionReset
    ))));
    assert!(lost(sqlx::Error::Io(IoError::from(
        ErrorKind::UnexpectedEof
    ))));
    assert!(lost(sqlx::Error::Io(IoError::from(ErrorKind::BrokenPipe))));
    assert!(!lost(sqlx::Error::Io(IoError::from(ErrorKind::TimedOut))));
    assert!(!lost(sqlx::Error::PoolClosed));
    assert!(!lost(sqlx::Error::PoolTimedOut));
    assert!(!lost(sqlx::Error::RowNotFound));
}

/// A write-pool call that ends well keeps its connection for the next one
/// instead of returning it to the pool (which pings it, a round trip), but
/// never while that would leave a caller waiting in the pool: with one
/// connection, it goes back.
#[test]
fn a_connection_is_kept_for_the_next_call_unless_the_pool_needs_it() {
    let Some(db) = TestDb::new() else { return };
    let index = db.connect();
    let (partition, fs) = setup(&index, "KEPT");
    let pid = index.scalar("SELECT pg_backend_pid()::bigint");
    index
        .insert_instances(&[record(partition, fs, 1, 1, 1, 1)])
        .expect("insert");
    assert_eq!(
        index.scalar("SELECT pg_backend_pid()::bigint"),
        pid,
        "the next calls use the kept connection"
    );
    {
        // Dropped inside the runtime: a pooled connection's drop spawns its return.
        let _runtime = index.runtime.enter();
        assert_eq!(index.kept.drain().len(), 1, "the connection was not kept");
    }

    let single = PgIndex::connect(&format!(
        "{}{}pool_size=1",
        db.url,
        if db.url.contains('?') { '&' } else { '?' }
    ))
    .expect("connect");
    single.scalar("SELECT 1::bigint");
    let _runtime = single.runtime.enter();
    assert!(
        single.kept.drain().is_empty(),
        "the only connection was kept"
    );
}

/// Connections the server drops (a restart, an administrator) are replaced
/// by the pool: the next calls work without a new `PgIndex`.
#[test]
fn dropped_connections_are_replaced() {
    let Some(db) = TestDb::new() else { return };
    let index = db.connect();
    let (partition, fs) = setup(&index, "RECONNECT");
    let mut sop = 0;
    for round in 0..3 {
        let batch: Vec<_> = (0..20)
            .map(|_| {
                sop += 1;
                record(partition, fs, 1, round, 1, sop)
            })
            .collect();
        index.insert_instances(&batch).expect("insert");
        // Every other session on this database is terminated.
        let killer = PgIndex::connect(&db.url).expect("second handle");
        let killed = killer.scalar(&format!(
            "SELECT COUNT(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity
              WHERE datname = '{}' AND pid <> pg_backend_pid()) t",
            db.name
        ));
        assert!(killed >= 1, "round {round}: no session was terminated");
    }
    assert_eq!(index.counts(partition).expect("counts").instances, 60);
    verify_counters(&index);
}

#[test]
fn mixed_workload_keeps_counters_exact() {
    let Some(db) = TestDb::new() else { return };
    let index = db.connect();
    let (partition, fs) = setup(&index, "MIXED");
    let mut total = 0;
    for batch in mixed_batches(partition, fs) {
        total += index.insert_instances(&batch).expect("batch").len();
    }
    assert_eq!(total, 2000);
    verify_counters(&index);
    let counts = index.counts(partition).expect("counts");
    let rows = index.scalar("SELECT COUNT(*) FROM instance");
    assert_eq!(counts.instances, u64::try_from(rows).expect("count"));
}

/// Appending instances to a study's waiting item finds those it lists
/// through the index, whatever the table's statistics: on a queue never
/// analyzed, the cached plan of a NOT EXISTS check read the whole
/// `work_queue_uid` table at every append, so each batch of a burst was
/// slower than the one before. Counted on the write pool (the plans ingest
/// uses), in one transaction: no sequential scan of the table, and an
/// instance listed already is listed once.
#[test]
fn appending_to_a_waiting_item_never_reads_the_whole_queue() {
    use crate::model::work::{NewWorkItem, WorkKind, WorkUid};
    const SEQ_SCANS: &str =
        "SELECT seq_scan FROM pg_stat_xact_user_tables WHERE relname = 'work_queue_uid'";
    let Some(db) = TestDb::new() else { return };
    let index = db.connect();
    let (partition, fs) = setup(&index, "APPEND");
    index
        .insert_instances(&[record(partition, fs, 0, 1, 0, 1)])
        .expect("a study");
    let study = index.scalar("SELECT id FROM study_storage");
    let series = Uid::parse("1.2.3.4").expect("uid");
    let sop = |n: u32| Uid::parse(&format!("1.2.3.4.{n}")).expect("uid");
    let (scans, listed) = index
        .write("appending in a test", async |conn: &mut PgConnection| {
            // The view also shows what earlier transactions of this backend
            // counted and PostgreSQL has not yet flushed (at most once a
            // second, between transactions): only the difference is ours.
            let before: i64 = sqlx::query_scalar(SEQ_SCANS).fetch_one(&mut *conn).await?;
            for round in 0..40u32 {
                // Each round lists ten instances again and adds fifty.
                let uids = (round * 50..round * 50 + 50)
                    .chain(round.saturating_sub(1) * 50..round.saturating_sub(1) * 50 + 10)
                    .map(|n| WorkUid::new(series.clone(), sop(n)));
                let item = NewWorkItem::new(WorkKind::STUDY_PROCESS, partition).uids(uids);
                super::work::append_in(conn, &item, Some(study)).await?;
            }
            let scans: i64 = sqlx::query_scalar::<_, i64>(SEQ_SCANS)
                .fetch_one(&mut *conn)
                .await?
                - before;
            let listed: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM work_queue_uid")
                .fetch_one(&mut *conn)
                .await?;
            Ok((scans, listed))
        })
        .expect("appends");
    assert_eq!(listed, 40 * 50, "every instance listed once");
    assert_eq!(scans, 0, "appends read the whole queue {scans} times");
}

/// The same generator on SQLite and PostgreSQL ends with the same counts and
/// the same C-FIND answers: one semantics, two backends.
#[test]
#[cfg(feature = "sqlite")]
fn same_batches_same_answers_as_sqlite() {
    let Some(db) = TestDb::new() else { return };
    let pg = db.connect();
    let dir = tempfile::tempdir().expect("tempdir");
    let sqlite = SqliteIndex::open(&dir.path().join("index.db")).expect("sqlite");
    let mut rng = Xorshift::new(0x9e37_79b9_7f4a_7c15);
    let mut next = |n: u32| rng.below(n);
    let (pg_partition, pg_fs) = setup(&pg, "SAME");
    let (sqlite_partition, sqlite_fs) = setup(&sqlite, "SAME");
    assert_eq!((pg_partition, pg_fs), (sqlite_partition, sqlite_fs));
    for _ in 0..20 {
        let batch: Vec<_> = (0..40)
            .map(|_| {
                let study = next(10);
                let patient = if next(8) == 0 { next(4) } else { study % 4 };
                record(pg_partition, pg_fs, patient, study, next(3), next(200))
            })
            .collect();
        assert_eq!(
            pg.insert_instances(&batch).expect("pg"),
            sqlite.insert_instances(&batch).expect("sqlite")
        );
    }
    assert_eq!(
        pg.counts(pg_partition).expect("pg"),
        sqlite.counts(sqlite_partition).expect("sqlite")
    );
    for level in [Level::Patient, Level::Study, Level::Series, Level::Image] {
        let query = Query {
            partition: pg_partition,
            root: Root::Patient,
            level,
            keys: vec![
                Key {
                    attribute: Attribute::PatientName,
                    matcher: Matcher::Wildcard("doe*".to_string()),
                },
                Key {
                    attribute: Attribute::NumberOfPatientRelatedInstances,
                    matcher: Matcher::Universal,
                },
            ],
            pn_case_insensitive: true,
            limit: None,
            offset: 0,
        };
        let collect = |store: &dyn QueryStore| {
            let mut out = Vec::new();
            store
                .find(&query, &mut |m| {
                    out.push(m);
                    ControlFlow::Continue(())
                })
                .expect("find");
            out
        };
        assert_eq!(collect(&pg), collect(&sqlite), "{level:?}");
        let instances = |store: &dyn QueryStore| {
            let mut out = Vec::new();
            store
                .find_instances(&query, &mut |i| {
                    out.push(i);
                    ControlFlow::Continue(())
                })
                .expect("find_instances");
            out
        };
        assert_eq!(instances(&pg), instances(&sqlite), "{level:?}");
    }
}

/// Batches that only add are indexed in one statement; a batch that
/// replaces, moves a study to another patient or changes a series' modality
/// falls back to the general way. Either way the rows, counters and
/// summaries are those SQLite writes.
#[test]
#[cfg(feature = "sqlite")]
fn one_statement_batches_match_the_general_way() {
    let Some(db) = TestDb::new() else { return };
    let pg = db.connect();
    let dir = tempfile::tempdir().expect("tempdir");
    let sqlite = SqliteIndex::open(&dir.path().join("index.db")).expect("sqlite");
    let (partition, fs) = setup(&pg, "ONE");
    assert_eq!(setup(&sqlite, "ONE"), (partition, fs));
    let rec = |p, st, se, sop| record(partition, fs, p, st, se, sop);
    let with_modality = |mut r: crate::model::InstanceRecord, modality: Option<&str>| {
        r.series.modality = modality.map(str::to_string);
        r
    };
    let mut renamed = rec(0, 1, 0, 21);
    renamed.patient.patient_name = Some("DOE^JANE".to_string());
    renamed.study.study_description = None;
    // (batch, how it is indexed: Some(true) in one statement, Some(false)
    // tried and fell back, None the general way from the start)
    let batches = [
        (vec![rec(0, 1, 0, 1), rec(0, 1, 0, 2)], Some(true)),
        (vec![rec(0, 1, 0, 3)], Some(true)),
        // A new series, modality and SOP class in an existing study.
        (vec![rec(0, 1, 1, 7)], Some(true)),
        // Three new studies of two new patients.
        (
            vec![rec(1, 2, 0, 8), rec(2, 3, 2, 9), rec(1, 4, 3, 10)],
            Some(true),
        ),
        // A series without modality, then one given.
        (vec![with_modality(rec(0, 1, 2, 11), None)], Some(true)),
        (
            vec![with_modality(rec(0, 1, 2, 12), Some("KO"))],
            Some(true),
        ),
        // Sent again: replaced.
        (vec![rec(0, 1, 0, 1)], Some(false)),
        // Study 2 now of patient 3.
        (vec![rec(3, 2, 0, 13)], Some(false)),
        // Series 1.2 changes modality.
        (
            vec![with_modality(rec(0, 1, 2, 14), Some("SR"))],
            Some(false),
        ),
        // One SOP Instance UID twice.
        (vec![rec(0, 1, 0, 20), rec(0, 1, 0, 20)], None),
        // New demographics, an attribute absent.
        (vec![renamed], Some(true)),
        // Adds and replaces at once.
        (vec![rec(0, 5, 0, 30), rec(0, 1, 0, 2)], Some(false)),
    ];
    let mut expected = (0, 0);
    for (i, (batch, way)) in batches.iter().enumerate() {
        assert_eq!(
            pg.insert_instances(batch).expect("pg"),
            sqlite.insert_instances(batch).expect("sqlite"),
            "batch {i}"
        );
        match way {
            Some(true) => expected.0 += 1,
            Some(false) => expected.1 += 1,
            None => {}
        }
        assert_eq!(pg.one_statement_batches(), expected, "batch {i}");
        // After every batch, not only at the end: a later general-way batch
        // rebuilds a summary, which would hide one the one-statement way
        // got wrong.
        for st in 1..=5 {
            let study = uid(&format!("1.2.826.0.1.3680043.2.{st}"));
            assert_eq!(
                pg.study_summary(partition, &study),
                sqlite.study_summary(partition, &study),
                "batch {i}, study {st}"
            );
            assert_eq!(
                crate::db::studies::StudyStore::study(&pg, partition, &study)
                    .expect("pg")
                    .map(|s| (s.patient, s.study)),
                crate::db::studies::StudyStore::study(&sqlite, partition, &study)
                    .expect("sqlite")
                    .map(|s| (s.patient, s.study)),
                "batch {i}, study {st}"
            );
        }
    }
    verify_counters(&pg);
    assert_eq!(
        pg.counts(partition).expect("pg"),
        sqlite.counts(partition).expect("sqlite")
    );
}

/// Two nodes add the same new study (with different series), then the same
/// new series, at once: the
/// second node's statement read the rows as absent, then waited for the
/// first node's locks and found them there. It must fall back to the
/// general way, not count the study or series a second time.
#[test]
fn one_statement_batch_that_met_a_concurrent_writer_falls_back() {
    let Some(db) = TestDb::new() else { return };
    let (first, second) = (db.connect(), db.connect());
    let (partition, fs) = setup(&first, "RACE");
    let rec = |st, se, sop| record(partition, fs, 0, st, se, sop);
    // Study 1 exists before the second round, whose series is new.
    first.insert_instances(&[rec(1, 0, 1)]).expect("study 1");
    for (round, (st, se, other_se)) in [(7, 0, 1), (1, 1, 1)].into_iter().enumerate() {
        let (held_tx, held) = std::sync::mpsc::channel();
        let (release, release_rx) = std::sync::mpsc::channel::<()>();
        std::thread::scope(|scope| {
            let (node, rec) = (&first, &rec);
            let holder = scope.spawn(move || {
                node.insert_instances_when(&[rec(st, se, 100 + round as u32)], None, &|| {
                    held_tx.send(()).expect("signal");
                    release_rx.recv().is_ok()
                })
                .expect("first node")
            });
            held.recv().expect("first node holds its locks");
            let waiter = scope.spawn(|| {
                second
                    .insert_instances(&[rec(st, other_se, 200 + round as u32)])
                    .expect("second node")
            });
            // The second node's statement has its snapshot and waits.
            let start = Instant::now();
            while first.scalar(
                "SELECT COUNT(*) FROM pg_stat_activity
                 WHERE datname = current_database() AND wait_event_type = 'Lock'",
            ) == 0
            {
                assert!(start.elapsed() < Duration::from_secs(10), "no waiter");
                std::thread::sleep(Duration::from_millis(5));
            }
            release.send(()).expect("release");
            assert_eq!(holder.join().expect("holder"), [InsertOutcome::Inserted]);
            assert_eq!(waiter.join().expect("waiter"), [InsertOutcome::Inserted]);
        });
        assert_eq!(second.one_statement_batches(), (0, round as u64 + 1));
        verify_counters(&first);
    }
}

/// Several nodes (handles with their own pools) index overlapping batches at
/// once: no deadlock reaches the caller and every counter is exact.
#[test]
fn concurrent_nodes_do_not_deadlock_or_double_count() {
    let Some(db) = TestDb::new() else { return };
    let first = db.connect();
    let (partition, fs) = setup(&first, "NODES");
    drop(first);
    let nodes: Vec<Arc<PgIndex>> = (0..3).map(|_| Arc::new(db.connect())).collect();
    std::thread::scope(|scope| {
        for (node_idx, node) in nodes.iter().enumerate() {
            scope.spawn(move || {
                let mut rng = Xorshift::new(0x1234_5678_u64 + node_idx as u64 * 7919);
                let mut next = |n: u32| rng.below(n);
                for _ in 0..15 {
                    // Overlapping studies, patients and SOP Instance UIDs,
                    // in a different order on every node.
                    let batch: Vec<_> = (0..40)
                        .map(|_| {
                            let study = next(8);
                            record(partition, fs, study % 3, study, next(3), next(300))
                        })
                        .collect();
                    node.insert_instances(&batch).expect("concurrent batch");
                }
            });
        }
    });
    let index = &nodes[0];
    verify_counters(index);
    let rows = index.scalar("SELECT COUNT(*) FROM instance");
    assert_eq!(
        index.counts(partition).expect("counts").instances,
        u64::try_from(rows).expect("count")
    );
}

#[test]
fn nearline_study_takes_the_location_of_new_arrivals() {
    let Some(db) = TestDb::new() else { return };
    let index = db.connect();
    let (partition, fs) = setup(&index, "NEARLINE");
    let first = record(partition, fs, 1, 1, 1, 1);
    index
        .insert_instances(std::slice::from_ref(&first))
        .expect("first");
    index.take_offline(partition, &first.study.study_uid);
    assert_eq!(
        index
            .study_location(partition, &first.study.study_uid)
            .expect("lookup"),
        None
    );
    let mut second = record(partition, fs, 1, 1, 1, 2);
    second.location.date_folder = "20250101".to_string();
    index
        .insert_instances(std::slice::from_ref(&second))
        .expect("second");
    let location = index
        .study_location(partition, &first.study.study_uid)
        .expect("lookup")
        .expect("online again");
    assert_eq!(location.date_folder, "20250101");
}

#[test]
fn nul_characters_are_dropped_not_fatal() {
    let Some(db) = TestDb::new() else { return };
    let index = db.connect();
    let (partition, fs) = setup(&index, "NUL");
    let mut bad = record(partition, fs, 1, 1, 1, 1);
    bad.patient.patient_name = Some("DOE\0^JOHN".to_string());
    bad.study.study_description = Some("A\0B".to_string());
    assert_eq!(
        index.insert_instances(&[bad]).expect("insert"),
        [InsertOutcome::Inserted]
    );
    assert_eq!(
        index.scalar("SELECT COUNT(*) FROM patient WHERE patient_name = 'DOE^JOHN'"),
        1
    );
}

/// Copying a SQLite index: every table, counts and a sample verified, the
/// SQLite file unchanged, C-FIND answers equal; a non-empty target refused.
#[test]
#[cfg(feature = "sqlite")]
fn copy_from_sqlite_keeps_everything() {
    let Some(db) = TestDb::new() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("index.db");
    {
        let sqlite = SqliteIndex::open(&path).expect("sqlite");
        let (partition, fs) = setup(&sqlite, "COPY");
        let batch: Vec<_> = (0..300)
            .map(|n| record(partition, fs, n % 7, n % 23, n % 3, n))
            .collect();
        sqlite.insert_instances(&batch).expect("insert");
        sqlite
            .ensure_device(
                partition,
                &crate::model::DeviceSpec {
                    ae_title: AeTitle::parse("MODALITY").expect("ae"),
                    host: "10.0.0.1".to_string(),
                    port: 104,
                    allow_store: true,
                    allow_query: false,
                    allow_retrieve: true,
                    allow_replace: false,
                    max_associations: 2,
                    max_outgoing_associations: 1,
                },
            )
            .expect("device");
    }
    let before = std::fs::read(&path).expect("read");
    let report = super::copy_from_sqlite(&path, &db.url).expect("copy");
    assert_eq!(
        std::fs::read(&path).expect("read"),
        before,
        "SQLite file changed"
    );
    let rows = |table: &str| {
        report
            .tables
            .iter()
            .find(|t| t.table == table)
            .map(|t| t.rows)
            .expect("table reported")
    };
    assert_eq!(rows("instance"), 300);
    assert_eq!(rows("device"), 1);
    assert_eq!(rows("reconcile"), 0);
    assert_eq!(report.tables.len(), 18);

    let sqlite = SqliteIndex::open(&path).expect("sqlite");
    let pg = db.connect();
    let partition = pg
        .partition(&AeTitle::parse("COPY").expect("ae"))
        .expect("lookup")
        .expect("copied");
    assert_eq!(
        pg.counts(partition).expect("pg"),
        sqlite.counts(partition).expect("sqlite")
    );
    assert_eq!(
        pg.devices(partition).expect("pg"),
        sqlite.devices(partition).expect("sqlite")
    );
    assert_eq!(
        pg.filesystems().expect("pg"),
        sqlite.filesystems().expect("sqlite")
    );
    for sop in [0, 1, 150, 299] {
        let sop = uid(&format!("1.2.826.0.1.3680043.3.{sop}"));
        assert_eq!(
            pg.instance(partition, &sop).expect("pg"),
            sqlite.instance(partition, &sop).expect("sqlite")
        );
    }
    // New rows get fresh keys after the copied ones.
    let (_, fs) = setup(&pg, "COPY");
    pg.insert_instances(&[record(partition, fs, 99, 99, 1, 10_000)])
        .expect("insert after copy");
    verify_counters(&pg);

    // Open, the SQLite index is in use and a copy is refused outright.
    assert!(matches!(
        super::copy_from_sqlite(&path, &db.url),
        Err(Error::InUse { .. })
    ));
    drop(sqlite);
    match super::copy_from_sqlite(&path, &db.url) {
        Err(Error::Backend { source, .. }) => {
            assert!(source.to_string().contains("not empty"), "{source}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// Queries take connections from a pool of their own: with every query
/// connection held by a query whose reader has stalled, ingest's lookups
/// still run, and another query fails after the connect timeout instead
/// of waiting for the stalled one.
#[test]
fn queries_have_their_own_pool() {
    let Some(db) = TestDb::new() else { return };
    let index = Arc::new(
        PgIndex::connect(&format!(
            "{}{}pool_size=1&query_pool_size=1&connect_timeout_secs=1",
            db.url,
            if db.url.contains('?') { '&' } else { '?' }
        ))
        .expect("connect"),
    );
    let (partition, fs) = setup(index.as_ref(), "POOLS");
    let batch: Vec<_> = (0..20).map(|i| record(partition, fs, 1, 1, 1, i)).collect();
    index.insert_instances(&batch).expect("insert");
    let query = Query {
        partition,
        root: Root::Study,
        level: Level::Image,
        keys: vec![],
        pn_case_insensitive: true,
        limit: None,
        offset: 0,
    };

    let (holding_tx, holding) = std::sync::mpsc::channel();
    let (release, released) = std::sync::mpsc::channel::<()>();
    let stalled = {
        let index = index.clone();
        let query = query.clone();
        std::thread::spawn(move || {
            index.find(&query, &mut |_| {
                holding_tx.send(()).expect("signal");
                released.recv().expect("release");
                ControlFlow::Break(())
            })
        })
    };
    holding
        .recv()
        .expect("the first query holds its connection");
    let present = index.instance(partition, &batch[0].instance.sop_instance_uid);
    assert!(matches!(present, Ok(Some(_))), "{present:?}");
    let started = Instant::now();
    let second = index.find(&query, &mut |_| ControlFlow::Continue(()));
    assert!(matches!(second, Err(Error::Backend { .. })), "{second:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    release.send(()).expect("release");
    stalled.join().expect("join").expect("the stalled query");
    let mut n = 0;
    index
        .find(&query, &mut |_| {
            n += 1;
            ControlFlow::Continue(())
        })
        .expect("a query once the pool is free");
    assert_eq!(n, 20);
}
