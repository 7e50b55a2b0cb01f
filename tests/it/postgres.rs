//! PostgreSQL only: the database going away under load, and `migrate-db`
//! from a small (SQLite) deployment. Every test here is named `pg_…`; the
//! SQLite pass of `scripts/test.sh` leaves them out (`--skip postgres::pg_`)
//! and the PostgreSQL pass runs them.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use dicom_dictionary_std::tags;
use imageserver_core::db::postgres;

use crate::support::assert_archived;
use crate::support::corpus::{self, generate_corpus, CorpusShape, Instance};
use crate::support::dcmtk::{self, CALLING_AE};
use crate::support::server::{pg_server_url, test_dir, PgDatabase, Server, BINARY};

// The find tests' findscu wrapper, shared by path as `find.rs` does (it is
// private to that module).
#[path = "support/find_scu.rs"]
#[allow(dead_code, clippy::duplicate_mod)]
mod find_scu;

use find_scu::{findscu, Model};

/// `scripts/pg.sh`, which starts and stops throwaway clusters.
const PG_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/pg.sh");

/// A dedicated throwaway cluster (so that stopping it disturbs no other
/// test); stopped and removed on drop, also when the test fails.
struct Cluster {
    dir: PathBuf,
    url: String,
    _tmp: tempfile::TempDir,
}

impl Cluster {
    fn start() -> Cluster {
        let tmp = tempfile::Builder::new()
            .prefix("imageserver-it-pg-")
            .tempdir()
            .expect("create the cluster directory");
        let dir = tmp.path().to_path_buf();
        let output = pg_script("start", &dir);
        let url = String::from_utf8_lossy(&output.stdout)
            .lines()
            .last()
            .unwrap_or_default()
            .trim()
            .to_string();
        assert!(
            url.starts_with("postgres://"),
            "pg.sh start printed {url:?}"
        );
        Cluster {
            dir,
            url,
            _tmp: tmp,
        }
    }

    /// Fast shutdown: every connection is closed by the server.
    fn down(&self) {
        pg_script("down", &self.dir);
    }

    fn up(&self) {
        pg_script("up", &self.dir);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(PG_SCRIPT)
            .arg("stop")
            .arg(&self.dir)
            .output();
    }
}

fn pg_script(command: &str, dir: &Path) -> std::process::Output {
    let output = Command::new("bash")
        .arg(PG_SCRIPT)
        .arg(command)
        .arg(dir)
        .output()
        .expect("run scripts/pg.sh");
    assert!(
        output.status.success(),
        "pg.sh {command} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// When a store was sent, relative to the outage.
const BEFORE: u8 = 0;
const DOWN: u8 = 1;
const AFTER: u8 = 2;

#[derive(Debug)]
struct Sent {
    instance: Instance,
    /// The phase when the store started and when its answer came.
    phases: (u8, u8),
    acknowledged: bool,
    log: String,
}

/// Waits (bounded) until `done` holds; fails the test with `what` if not.
fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The database stops under a store load and comes back: stores fail with
/// A700 while it is down (never Success), queries fail with a failure
/// status instead of hanging, the server reconnects by itself, and every
/// acknowledged instance is indexed with its file.
#[test]
fn pg_database_outage_under_load() {
    let dir = test_dir("pg-outage");
    let cluster = Cluster::start();
    let db_url = postgres::create_database(&cluster.url, "outage").expect("create database");
    let server = Server::builder(dir.path())
        .db_url(&db_url)
        .setting(
            "database",
            "{ connect_timeout_secs = 2, statement_timeout_secs = 10 }",
        )
        .start();
    let corpus = generate_corpus(
        &dir.path().join("corpus"),
        31,
        CorpusShape::uniform(4, 2, 50, (32, 32)),
    );
    let addr = server.addr();
    let called_ae = server.ae_title().to_string();
    let phase = AtomicU8::new(BEFORE);
    let stop = AtomicBool::new(false);
    let next = AtomicUsize::new(0);
    let sent: Mutex<Vec<Sent>> = Mutex::new(Vec::new());
    let count =
        |f: &dyn Fn(&Sent) -> bool| sent.lock().expect("lock").iter().filter(|s| f(s)).count();

    std::thread::scope(|scope| {
        for _ in 0..2 {
            scope.spawn(|| {
                while !stop.load(Ordering::SeqCst) {
                    let Some(instance) = corpus.get(next.fetch_add(1, Ordering::SeqCst)) else {
                        break;
                    };
                    let started = phase.load(Ordering::SeqCst);
                    let storescu = dcmtk::store(
                        addr,
                        &called_ae,
                        &[&instance.path],
                        &[],
                        Duration::from_secs(60),
                    );
                    let log = storescu.text();
                    let acknowledged =
                        storescu.success() && dcmtk::acknowledged_files(&log).len() == 1;
                    sent.lock().expect("lock").push(Sent {
                        instance: instance.clone(),
                        phases: (started, phase.load(Ordering::SeqCst)),
                        acknowledged,
                        log,
                    });
                }
            });
        }

        wait_for("30 acknowledged stores", Duration::from_secs(120), || {
            count(&|s| s.acknowledged) >= 30
        });
        cluster.down();
        phase.store(DOWN, Ordering::SeqCst);
        wait_for(
            "3 stores failing while down",
            Duration::from_secs(120),
            || count(&|s| s.phases == (DOWN, DOWN) && !s.acknowledged) >= 3,
        );

        // A query while the database is down: a failure status, not a hang.
        let started = Instant::now();
        let find = findscu(
            addr,
            &called_ae,
            Model::Study,
            &["QueryRetrieveLevel=STUDY", "StudyInstanceUID"],
            &[],
            &dir.path().join("find-down"),
        );
        let status = find.final_status();
        assert!(
            status.is_some_and(|s| s & 0xF000 == 0xA000 || s & 0xF000 == 0xC000),
            "C-FIND while the database is down ended with {status:04x?}:\n{find}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "C-FIND took {:?}",
            started.elapsed()
        );

        cluster.up();
        phase.store(AFTER, Ordering::SeqCst);
        wait_for(
            "10 acknowledged stores after the restart",
            Duration::from_secs(120),
            || count(&|s| s.phases.0 == AFTER && s.acknowledged) >= 10,
        );
        stop.store(true, Ordering::SeqCst);
    });

    let sent = sent.into_inner().expect("lock");
    let failed_down: Vec<&Sent> = sent
        .iter()
        .filter(|s| s.phases == (DOWN, DOWN) && !s.acknowledged)
        .collect();
    eprintln!(
        "pg outage: {} sent, {} acknowledged, {} failed while down",
        sent.len(),
        sent.iter().filter(|s| s.acknowledged).count(),
        failed_down.len()
    );
    for failure in &failed_down {
        assert!(
            failure
                .log
                .contains("Received Store Response (Refused: OutOfResources)"),
            "a store failed while the database was down, but not with A700:\n{}",
            failure.log
        );
    }
    // Every Success is durable: indexed, with its file.
    let index = server.archive().index();
    let mut acknowledged = BTreeSet::new();
    for store in sent.iter().filter(|s| s.acknowledged) {
        assert_archived(server.archive(), &index, &store.instance, Some(CALLING_AE));
        acknowledged.insert(store.instance.sop_instance_uid.clone());
    }
    assert!(index.counts().instances >= acknowledged.len() as u64);
    // Whatever else is indexed is whole too.
    for instance in &corpus {
        if let Some(stored) = index.instance(&instance.sop_instance_uid) {
            let path = server.archive().expected_path(
                &instance.study_date,
                &instance.study_uid,
                &instance.series_uid,
                &instance.sop_instance_uid,
            );
            assert_eq!(
                stored.digest,
                corpus::blake3_hex(&path),
                "{}",
                path.display()
            );
        }
    }
    // Queries work again, on the same server process.
    let find = findscu(
        addr,
        server.ae_title(),
        Model::Study,
        &["QueryRetrieveLevel=STUDY", "StudyInstanceUID"],
        &[],
        &dir.path().join("find-up"),
    );
    assert_eq!(find.final_status(), Some(0), "{find}");
    assert_eq!(
        find.responses.len() as u64,
        index.counts().studies,
        "{find}"
    );
    drop(index);
    drop(server);
    drop(cluster);
}

/// Runs `imageserver migrate-db --data DATA --to URL` (bounded).
fn migrate_db(data: &Path, to: &str) -> dcmtk::ToolOutput {
    let mut command = Command::new(BINARY);
    command
        .arg("migrate-db")
        .arg("--data")
        .arg(data)
        .args(["--to", to])
        .env("NO_COLOR", "1");
    dcmtk::run(command, Duration::from_secs(180))
}

/// A small deployment stores a corpus; `migrate-db` copies its index into
/// PostgreSQL without touching the SQLite file; the server on PostgreSQL
/// answers C-FIND and instance lookups exactly as before.
#[test]
fn pg_migrate_db_from_a_small_deployment() {
    let dir = test_dir("pg-migrate");
    let data = dir.path().join("data");
    let sqlite_url = format!("sqlite:{}", data.join("index.db").display());
    let corpus = generate_corpus(
        &dir.path().join("corpus"),
        41,
        CorpusShape::uniform(3, 2, 4, (32, 32)),
    );
    let mut small = Server::builder(dir.path()).db_url(&sqlite_url).start();
    let stored = dcmtk::store(
        small.addr(),
        small.ae_title(),
        &[&dir.path().join("corpus")],
        &[],
        Duration::from_secs(120),
    );
    assert!(stored.success(), "{stored}");
    let query = |server: &Server, name: &str| {
        findscu(
            server.addr(),
            server.ae_title(),
            Model::Study,
            &[
                "QueryRetrieveLevel=STUDY",
                "StudyInstanceUID",
                "PatientName",
                "PatientID",
                "StudyDate",
                "ModalitiesInStudy",
                "NumberOfStudyRelatedSeries",
                "NumberOfStudyRelatedInstances",
            ],
            &[],
            &dir.path().join(name),
        )
    };
    let before = query(&small, "find-sqlite");
    assert_eq!(before.final_status(), Some(0), "{before}");
    assert_eq!(before.responses.len(), 3, "{before}");
    // While the server has the index open, migrate-db refuses to copy it:
    // the copy would miss what the server writes meanwhile.
    let busy = PgDatabase::create(&pg_server_url());
    let refused = migrate_db(&data, busy.url());
    assert!(
        !refused.success() && refused.text().contains("in use by a running server"),
        "{refused}"
    );
    let sqlite_archive = small.archive().clone();
    assert_eq!(small.sigterm().code(), Some(0));

    let sqlite_file = data.join("index.db");
    let bytes_before = std::fs::read(&sqlite_file).expect("read the SQLite index");
    let target = PgDatabase::create(&pg_server_url());
    let migrated = migrate_db(&data, target.url());
    assert!(migrated.success(), "{migrated}");
    let summary = migrated.text();
    let n = corpus.len().to_string();
    assert!(
        summary.lines().any(|line| line.split_whitespace().eq([
            "instance",
            n.as_str(),
            n.as_str()
        ])),
        "{summary}"
    );
    assert!(summary.contains("was not modified"), "{summary}");
    assert_eq!(
        std::fs::read(&sqlite_file).expect("read the SQLite index"),
        bytes_before,
        "migrate-db changed the SQLite file"
    );

    // The medium deployment: same data directory, index on PostgreSQL.
    let medium = Server::builder(dir.path()).db_url(target.url()).start();
    let after = query(&medium, "find-pg");
    assert_eq!(after.final_status(), Some(0), "{after}");
    for tag in [
        tags::STUDY_INSTANCE_UID,
        tags::PATIENT_NAME,
        tags::PATIENT_ID,
        tags::STUDY_DATE,
        tags::MODALITIES_IN_STUDY,
        tags::NUMBER_OF_STUDY_RELATED_SERIES,
        tags::NUMBER_OF_STUDY_RELATED_INSTANCES,
    ] {
        assert_eq!(after.column(tag), before.column(tag), "{tag}");
    }
    let pg_index = medium.archive().index();
    let sqlite_index = sqlite_archive.index();
    assert_eq!(pg_index.counts(), sqlite_index.counts());
    for instance in &corpus {
        assert_eq!(
            pg_index.instance(&instance.sop_instance_uid),
            sqlite_index.instance(&instance.sop_instance_uid)
        );
        assert_archived(medium.archive(), &pg_index, instance, Some(CALLING_AE));
    }
    // New instances go on where the copy left off.
    let extra = corpus::single_instance(&dir.path().join("extra.dcm"), 42, 16, 16);
    let stored = dcmtk::store(
        medium.addr(),
        medium.ae_title(),
        &[&extra.path],
        &[],
        Duration::from_secs(60),
    );
    assert!(stored.success(), "{stored}");
    assert_eq!(pg_index.counts().instances, corpus.len() as u64 + 1);

    // A second copy into the now non-empty database is refused (this test's
    // own handle on the SQLite index closed first: it counts as a user).
    drop(sqlite_index);
    let again = migrate_db(&data, target.url());
    assert!(!again.success(), "{again}");
    assert!(again.text().contains("not empty"), "{again}");
}

/// The index URL's password never reaches the log: the server names its
/// index when it is ready, with the password masked. (The throwaway
/// cluster trusts local connections, so any password is accepted.)
#[test]
fn pg_the_index_password_is_never_logged() {
    let dir = test_dir("pg-password");
    let database = PgDatabase::create(&pg_server_url());
    let secret = "n0t-l0gged-s3cret";
    let url = database.url().replacen('@', &format!(":{secret}@"), 1);
    assert!(url.contains(secret), "{url}");
    let mut server = Server::builder(dir.path()).db_url(&url).start();
    let echo = dcmtk::echo(server.addr(), server.ae_title(), Duration::from_secs(10));
    assert!(echo.success(), "{echo}");
    assert_eq!(server.sigterm().code(), Some(0));
    let log = std::fs::read_to_string(dir.path().join("server.log")).expect("the server log");
    assert!(log.contains("imageserver ready"), "{log}");
    assert!(log.contains(":***@"), "the index is named, masked: {log}");
    assert!(!log.contains(secret), "the password was logged:\n{log}");
}
