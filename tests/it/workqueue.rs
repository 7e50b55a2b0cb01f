//! The WorkQueue on the selected backend (`IMAGESERVER_IT_BACKEND`):
//! engines in this process with toy processors, engines in separate
//! processes (`imageserver workqueue run-test-engine`), kill -9 and
//! takeover, and the operator CLI on real items.
//!
//! Outcomes are asserted, never durations: the bounds below only stop a
//! test that would otherwise hang.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use imageserver_core::db::postgres::PgIndex;
use imageserver_core::db::sqlite::SqliteIndex;
use imageserver_core::db::work::{ClaimKind, ClaimRequest, FailureAction};
use imageserver_core::db::Database;
use imageserver_core::model::{
    AeTitle, DuplicatePolicy, FilesystemSpec, FolderName, InstanceAttrs, InstanceRecord,
    PartitionId, PartitionSpec, PatientAttrs, SeriesAttrs, StudyAttrs, StudyLocation, Tier, Uid,
};
use imageserver_core::workqueue::{
    Engine, EngineConfig, KindProperties, NewWorkItem, ProcessContext, Registry, RetryPolicy,
    StepResult, StudyLock, WorkError, WorkFilter, WorkItem, WorkItemId, WorkKind, WorkPriority,
    WorkStatus, WorkStore,
};

use crate::support::server::{test_dir, Archive, BINARY};

/// The longest any awaited outcome may take.
const BOUND: Duration = Duration::from_secs(120);

/// An archive's database opened in this process, with a partition.
struct Setup {
    dir: tempfile::TempDir,
    archive: Archive,
    db: Arc<dyn Database>,
    partition: PartitionId,
}

impl Setup {
    fn new(name: &str) -> Setup {
        let dir = test_dir(name);
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).expect("create the data directory");
        let archive = Archive::new(&data, "WQ");
        let db: Arc<dyn Database> = match archive.db_url() {
            Some(url) => Arc::new(PgIndex::connect(url).expect("connect")),
            None => Arc::new(SqliteIndex::open(&data.join("index.db")).expect("open")),
        };
        let partition = db
            .ensure_partition(&PartitionSpec {
                ae_title: AeTitle::parse("WQ").expect("AE"),
                folder: FolderName::parse("WQ").expect("folder"),
                description: String::new(),
                port: 0,
                accept_unknown_devices: true,
                duplicate_policy: DuplicatePolicy::default(),
                pn_case_insensitive: true,
            })
            .expect("partition");
        Setup {
            dir,
            archive,
            db,
            partition,
        }
    }

    fn store(&self) -> Arc<dyn WorkStore> {
        self.db.clone()
    }

    /// Stores one instance of `study` so that items can be bound to it.
    fn study(&self, study: &str) -> Uid {
        let uid = |v: &str| Uid::parse(v).expect("uid");
        let fs = self
            .db
            .ensure_filesystem(&FilesystemSpec {
                path: self.dir.path().join("data/fs1"),
                tier: Tier(1),
                high_watermark: 90.0,
                low_watermark: 80.0,
                read_only: false,
                write_only: false,
                description: String::new(),
                capacity_mb: None,
            })
            .expect("filesystem");
        let record = InstanceRecord {
            partition: self.partition,
            location: StudyLocation {
                filesystem: fs,
                partition_folder: FolderName::parse("WQ").expect("folder"),
                date_folder: "20240101".into(),
                study_uid: uid(study),
            },
            patient: PatientAttrs {
                patient_id: "P".into(),
                ..PatientAttrs::default()
            },
            study: StudyAttrs {
                study_uid: uid(study),
                study_date: None,
                study_time: None,
                accession_number: None,
                study_id: None,
                study_description: None,
                referring_physician_name: None,
                specific_character_set: None,
            },
            series: SeriesAttrs {
                series_uid: uid(&format!("{study}.1")),
                modality: None,
                series_number: None,
                series_description: None,
                body_part_examined: None,
                series_date: None,
                series_time: None,
            },
            instance: InstanceAttrs {
                sop_instance_uid: uid(&format!("{study}.1.1")),
                sop_class_uid: uid("1.2.840.10008.5.1.4.1.1.7"),
                instance_number: None,
                transfer_syntax_uid: uid("1.2.840.10008.1.2.1"),
                file_size: 1,
                digest: "00".repeat(32),
                source_ae: None,
            },
            deletions_seen: None,
        };
        self.db.insert_instances(&[record]).expect("store a study");
        uid(study)
    }

    fn item(&self, kind: &str) -> NewWorkItem {
        NewWorkItem::new(WorkKind::new(kind).expect("kind"), self.partition)
    }

    fn get(&self, id: WorkItemId) -> WorkItem {
        self.db.get(id).expect("get").expect("the item exists")
    }

    fn items(&self, kind: &str) -> BTreeMap<WorkItemId, WorkItem> {
        self.db
            .list(&WorkFilter {
                kinds: vec![WorkKind::new(kind).expect("kind")],
                ..WorkFilter::default()
            })
            .expect("list")
            .into_iter()
            .map(|item| (item.id, item))
            .collect()
    }

    /// Waits until no item of `kind` is waiting or running.
    fn wait_settled(&self, kind: &str) {
        wait_until(&format!("the {kind} items to settle"), || {
            self.db
                .list(&WorkFilter {
                    kinds: vec![WorkKind::new(kind).expect("kind")],
                    statuses: vec![
                        WorkStatus::Idle,
                        WorkStatus::Pending,
                        WorkStatus::InProgress,
                    ],
                    limit: Some(1),
                    ..WorkFilter::default()
                })
                .expect("list")
                .is_empty()
        });
    }

    /// `imageserver workqueue ARGS… --data … [--db …]`.
    fn cli(&self, args: &[&str]) -> Output {
        Command::new(BINARY)
            .arg("workqueue")
            .args(args)
            .arg("--data")
            .arg(self.archive.data_dir())
            .args(self.archive.db_args())
            .env("IMAGESERVER_LOG", "warn")
            .output()
            .expect("run imageserver workqueue")
    }

    /// Starts `imageserver workqueue run-test-engine` on this database.
    fn spawn_engine(&self, spans: &Path, extra: &[&str]) -> TestEngine {
        let log = self.dir.path().join(format!(
            "engine-{}.log",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        let child = Command::new(BINARY)
            .args(["workqueue", "run-test-engine", "--spans"])
            .arg(spans)
            .args(extra)
            .arg("--data")
            .arg(self.archive.data_dir())
            .args(self.archive.db_args())
            .env("IMAGESERVER_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).expect("engine log"))
            .stderr(
                std::fs::OpenOptions::new()
                    .append(true)
                    .open(&log)
                    .expect("engine log"),
            )
            .spawn()
            .expect("spawn the test engine");
        TestEngine {
            child: Some(child),
            log,
        }
    }
}

/// A `run-test-engine` process; killed when dropped, its log printed when
/// the test fails.
struct TestEngine {
    child: Option<Child>,
    log: PathBuf,
}

impl TestEngine {
    fn kill_9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("SIGKILL the engine");
            child.wait().expect("reap the engine");
        }
    }

    /// SIGTERM, and a clean exit within the bound.
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = libc::pid_t::try_from(child.id()).expect("pid");
        // SAFETY: kill(2) on our own child has no memory effects.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        let deadline = Instant::now() + BOUND;
        loop {
            if let Some(status) = child.try_wait().expect("poll the engine") {
                assert!(status.success(), "the test engine exited with {status}");
                return;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the test engine did not stop");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for TestEngine {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "===== {} =====\n{}",
                self.log.display(),
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + BOUND;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn engine_config(threads: usize) -> EngineConfig {
    EngineConfig {
        threads,
        high_priority_threads: 0,
        memory_heavy_threads: threads,
        lease: Duration::from_secs(30),
        poll: Duration::from_millis(500),
        ..EngineConfig::default()
    }
}

/// One line of a `--spans` file.
#[derive(Debug, Clone, PartialEq)]
struct Span {
    item: i64,
    attempt: u32,
    pid: u32,
    start: u128,
    end: Option<u128>,
    study: String,
}

/// Reads the spans: one per run, `end` None when the run never finished.
fn read_spans(path: &Path) -> Vec<Span> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut runs: Vec<Span> = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        let parse = |i: usize| f[i].parse::<u128>().expect("number");
        match f[0] {
            "start" => runs.push(Span {
                item: f[1].parse().expect("item"),
                attempt: f[2].parse().expect("attempt"),
                pid: f[3].parse().expect("pid"),
                start: parse(4),
                end: None,
                study: f[5].to_string(),
            }),
            "end" => {
                let (item, attempt, pid): (i64, u32, u32) = (
                    f[1].parse().expect("item"),
                    f[2].parse().expect("attempt"),
                    f[3].parse().expect("pid"),
                );
                let run = runs
                    .iter_mut()
                    .find(|r| r.item == item && r.attempt == attempt && r.pid == pid)
                    .unwrap_or_else(|| panic!("end without start: {line}"));
                run.end = Some(parse(5));
            }
            other => panic!("unexpected span line {other:?}"),
        }
    }
    runs
}

/// Asserts that no two finished runs sharing a key overlap in time.
fn assert_disjoint(runs: &[&Span], what: &str) {
    let mut sorted: Vec<&&Span> = runs.iter().collect();
    sorted.sort_by_key(|r| r.start);
    for pair in sorted.windows(2) {
        let end = pair[0].end.expect("finished run");
        assert!(
            end <= pair[1].start,
            "{what}: runs overlap: {:?} and {:?}",
            pair[0],
            pair[1]
        );
    }
}

#[test]
fn thousand_items_run_exactly_once_on_ten_threads() {
    let setup = Setup::new("wq-thousand");
    let runs: Arc<Mutex<HashMap<WorkItemId, u32>>> = Arc::default();
    let mut registry = Registry::new();
    {
        let runs = runs.clone();
        registry.register(
            WorkKind::new("noop").expect("kind"),
            KindProperties::new(),
            move |item: &WorkItem, _: &ProcessContext<'_>| {
                *runs.lock().unwrap().entry(item.id).or_default() += 1;
                StepResult::Done
            },
        );
    }
    let ids: Vec<WorkItemId> = (0..1000)
        .map(|_| setup.db.enqueue(&setup.item("noop")).expect("enqueue"))
        .collect();
    let engine = Engine::start(setup.store(), registry, engine_config(10)).expect("start");
    setup.wait_settled("noop");
    engine.shutdown(BOUND);
    let runs = runs.lock().unwrap();
    assert_eq!(runs.len(), ids.len(), "every item ran");
    let repeated: Vec<_> = runs.iter().filter(|(_, &n)| n != 1).collect();
    assert!(
        repeated.is_empty(),
        "items run more than once: {repeated:?}"
    );
    let items = setup.items("noop");
    assert_eq!(items.len(), 1000);
    for item in items.values() {
        assert_eq!(
            (item.status, item.attempt, item.failure_count),
            (WorkStatus::Completed, 1, 0),
            "{item:?}"
        );
    }
}

#[test]
fn panics_and_errors_fail_only_their_item_and_retries_complete() {
    let setup = Setup::new("wq-failures");
    let mut registry = Registry::new();
    registry.register(
        WorkKind::new("toy").expect("kind"),
        KindProperties::new().retry(RetryPolicy {
            max_failures: 4,
            failure_delay: Duration::from_millis(50),
            backoff: 2.0,
            max_delay: Duration::from_secs(1),
        }),
        |item: &WorkItem, ctx: &ProcessContext<'_>| match item.payload.as_str() {
            r#""panic""# => panic!("toy processor exploded on item {}", item.id),
            r#""error""# => StepResult::Fail("the toy input is unreadable".into()),
            r#""flaky""# if ctx.attempt() < 3 => StepResult::RetryAfter(
                Duration::from_millis(10),
                format!("destination down (attempt {})", ctx.attempt()),
            ),
            _ => StepResult::Done,
        },
    );
    let engine = Engine::start(setup.store(), registry, engine_config(4)).expect("start");
    let queue = engine.handle();
    let enqueue = |payload: &str| {
        queue
            .enqueue(setup.item("toy").payload(payload))
            .expect("enqueue")
    };
    let panics = enqueue(r#""panic""#);
    let errors = enqueue(r#""error""#);
    let flaky = enqueue(r#""flaky""#);
    let fine: Vec<WorkItemId> = (0..30).map(|_| enqueue(r#""ok""#)).collect();
    setup.wait_settled("toy");
    engine.shutdown(BOUND);

    let panicked = setup.get(panics);
    assert_eq!(panicked.status, WorkStatus::Failed);
    let description = panicked.failure_description.unwrap_or_default();
    assert!(
        description.contains("panicked") && description.contains("toy processor exploded"),
        "{description}"
    );
    let errored = setup.get(errors);
    assert_eq!(errored.status, WorkStatus::Failed);
    assert_eq!(
        errored.failure_description.as_deref(),
        Some("the toy input is unreadable")
    );
    let retried = setup.get(flaky);
    assert_eq!(
        (retried.status, retried.attempt, retried.failure_count),
        (WorkStatus::Completed, 3, 2),
        "retried twice with backoff, then done"
    );
    assert_eq!(
        retried.failure_description.as_deref(),
        Some("destination down (attempt 2)")
    );
    for id in fine {
        assert_eq!(setup.get(id).status, WorkStatus::Completed);
    }
    // Failed items stay until a person acts.
    let failed = setup
        .db
        .list(&WorkFilter {
            statuses: vec![WorkStatus::Failed],
            ..WorkFilter::default()
        })
        .expect("list");
    let failed: Vec<WorkItemId> = failed.iter().map(|i| i.id).collect();
    assert_eq!(failed, [panics, errors]);
}

#[test]
fn a_study_under_a_write_item_is_never_processed_by_two_items_at_once() {
    let setup = Setup::new("wq-study-lock");
    let studies: Vec<Uid> = (1..=3).map(|n| setup.study(&format!("1.5.{n}"))).collect();
    // (study, writer, start, end) of every run.
    type Runs = Arc<Mutex<Vec<(String, bool, Instant, Instant)>>>;
    let spans: Runs = Arc::default();
    let processor = |writer: bool| {
        let spans = spans.clone();
        move |item: &WorkItem, _: &ProcessContext<'_>| {
            let start = Instant::now();
            std::thread::sleep(Duration::from_millis(3));
            spans.lock().unwrap().push((
                item.study_uid().expect("bound").to_string(),
                writer,
                start,
                Instant::now(),
            ));
            StepResult::Done
        }
    };
    let mut registry = Registry::new();
    registry.register(
        WorkKind::new("writer").expect("kind"),
        KindProperties::new().study_lock(StudyLock::Write),
        processor(true),
    );
    registry.register(
        WorkKind::new("reader").expect("kind"),
        KindProperties::new().study_lock(StudyLock::Read),
        processor(false),
    );
    for n in 0..90 {
        let kind = if n % 3 == 0 { "writer" } else { "reader" };
        setup
            .db
            .enqueue(&setup.item(kind).study(studies[n % 3].clone()))
            .expect("enqueue");
    }
    let engine = Engine::start(setup.store(), registry, engine_config(8)).expect("start");
    setup.wait_settled("writer");
    setup.wait_settled("reader");
    engine.shutdown(BOUND);
    let spans = spans.lock().unwrap();
    assert_eq!(spans.len(), 90);
    for (i, a) in spans.iter().enumerate() {
        for b in &spans[i + 1..] {
            let overlap = a.2 < b.3 && b.2 < a.3;
            assert!(
                !(a.0 == b.0 && (a.1 || b.1) && overlap),
                "study {} ran a writer beside another item",
                a.0
            );
        }
    }
}

#[test]
fn two_engine_processes_never_run_one_item_or_one_study_twice_at_once() {
    let setup = Setup::new("wq-two-processes");
    let studies: Vec<Uid> = (1..=8).map(|n| setup.study(&format!("1.6.{n}"))).collect();
    // Eight gates come first in the queue and wait for a file: an engine
    // runs at most four items at once, so the gates are only all running
    // once both processes are up and claiming. The rest is released after:
    // about 2.8 s of work, so that one engine alone would need twice as long
    // as both, far beyond the other's poll interval.
    let go = setup.dir.path().join("go");
    let gate_payload = format!(r#"{{"wait_for":{:?}}}"#, go.display().to_string());
    let mut gates = std::collections::BTreeSet::new();
    for _ in 0..8 {
        let item = setup.item("test_write").payload(gate_payload.clone());
        gates.insert(setup.db.enqueue(&item).expect("enqueue").0);
    }
    let mut ids = Vec::new();
    for n in 0..160 {
        let item = setup
            .item("test_write")
            .study(studies[n % studies.len()].clone())
            .payload(r#"{"sleep_ms":15}"#);
        ids.push(setup.db.enqueue(&item).expect("enqueue"));
    }
    for _ in 0..80 {
        let item = setup.item("test_write").payload(r#"{"sleep_ms":5}"#);
        ids.push(setup.db.enqueue(&item).expect("enqueue"));
    }
    let spans = setup.dir.path().join("spans.txt");
    let args = ["--threads", "4", "--poll-ms", "200"];
    let mut first = setup.spawn_engine(&spans, &args);
    let mut second = setup.spawn_engine(&spans, &args);
    wait_until("both engines to run the gates", || {
        read_spans(&spans)
            .iter()
            .filter(|r| gates.contains(&r.item))
            .count()
            == gates.len()
    });
    std::fs::write(&go, b"go").expect("open the gates");
    setup.wait_settled("test_write");
    first.stop();
    second.stop();

    let all_runs = read_spans(&spans);
    let items = setup.items("test_write");
    for id in gates
        .iter()
        .map(|&g| WorkItemId(g))
        .chain(ids.iter().copied())
    {
        assert_eq!(items[&id].status, WorkStatus::Completed, "{:?}", items[&id]);
    }
    let gate_pids: std::collections::BTreeSet<u32> = all_runs
        .iter()
        .filter(|r| gates.contains(&r.item))
        .map(|r| r.pid)
        .collect();
    assert_eq!(gate_pids.len(), 2, "the gates ran in both processes");
    let runs: Vec<Span> = all_runs
        .into_iter()
        .filter(|r| !gates.contains(&r.item))
        .collect();
    // Nothing crashed, so every item ran exactly once...
    let mut per_item: BTreeMap<i64, Vec<&Span>> = BTreeMap::new();
    for run in &runs {
        assert!(run.end.is_some(), "unfinished run {run:?}");
        per_item.entry(run.item).or_default().push(run);
    }
    assert_eq!(per_item.len(), ids.len());
    for (item, runs) in &per_item {
        assert_eq!(runs.len(), 1, "item {item} ran {} times", runs.len());
    }
    // ...and a study's writers never overlapped, whichever process ran them.
    let mut per_study: BTreeMap<&str, Vec<&Span>> = BTreeMap::new();
    for run in runs.iter().filter(|r| r.study != "-") {
        per_study.entry(run.study.as_str()).or_default().push(run);
    }
    assert_eq!(per_study.len(), studies.len());
    for (study, runs) in &per_study {
        assert_disjoint(runs, &format!("study {study}"));
    }
    // Both processes ran the released items. How many studies had writers
    // in both is up to the scheduler (usually most, sometimes none on a
    // loaded machine), so it is reported, not asserted: the exclusion above
    // is checked over every run, whichever process made it.
    let pids: std::collections::BTreeSet<u32> = runs.iter().map(|r| r.pid).collect();
    assert_eq!(pids, gate_pids, "the processes that ran the released items");
    let shared = per_study
        .values()
        .filter(|runs| {
            let by: std::collections::BTreeSet<u32> = runs.iter().map(|r| r.pid).collect();
            by.len() == 2
        })
        .count();
    eprintln!(
        "two engines: {} runs by {} processes; {shared} of {} studies written by both",
        runs.len(),
        pids.len(),
        per_study.len()
    );
}

#[test]
fn kill_9_mid_item_is_taken_over_once_the_lease_expires() {
    let setup = Setup::new("wq-kill");
    let study = setup.study("1.8.1");
    let go = setup.dir.path().join("go");
    let payload = format!(r#"{{"wait_for":{:?}}}"#, go.display().to_string());
    let id = setup
        .db
        .enqueue(&setup.item("test_write").study(study).payload(payload))
        .expect("enqueue");
    let spans = setup.dir.path().join("spans.txt");

    // The first engine claims the item and hangs in it; then it dies.
    let mut first = setup.spawn_engine(
        &spans,
        &[
            "--hang",
            "--threads",
            "1",
            "--lease-ms",
            "3000",
            "--poll-ms",
            "200",
        ],
    );
    wait_until("the first engine to start the item", || {
        read_spans(&spans).iter().any(|r| r.item == id.0)
    });
    first.kill_9();
    let dead_attempt = read_spans(&spans)
        .iter()
        .map(|r| r.attempt)
        .max()
        .expect("a run");
    let stale = setup.get(id).lease();
    assert_eq!(setup.get(id).status, WorkStatus::InProgress);
    assert_eq!(stale.attempt, dead_attempt);

    // The restarted engine takes it over once the lease has expired.
    let mut second = setup.spawn_engine(&spans, &["--threads", "2", "--poll-ms", "200"]);
    wait_until("the takeover", || {
        read_spans(&spans).iter().any(|r| r.attempt > dead_attempt)
    });
    let running = setup.get(id);
    assert_eq!(running.status, WorkStatus::InProgress);
    assert_eq!(running.attempt, dead_attempt + 1);
    assert_eq!(running.failure_count, 1, "the takeover counts as a failure");
    // The dead attempt's lease is fenced out.
    for result in [
        setup.db.complete(stale),
        setup.db.renew_lease(stale, BOUND).map(drop),
        setup.db.fail(stale, "late", FailureAction::Permanent),
    ] {
        assert!(
            matches!(result, Err(WorkError::LeaseLost { .. })),
            "{result:?}"
        );
    }
    std::fs::write(&go, b"go").expect("release the item");
    setup.wait_settled("test_write");
    second.stop();

    let done = setup.get(id);
    assert_eq!(done.status, WorkStatus::Completed);
    assert_eq!(done.attempt, dead_attempt + 1);
    let description = done.failure_description.unwrap_or_default();
    assert!(description.contains("taken over"), "{description}");
    let runs = read_spans(&spans);
    let finished: Vec<&Span> = runs.iter().filter(|r| r.end.is_some()).collect();
    assert_eq!(finished.len(), 1, "one finished run: {runs:?}");
    assert_eq!(finished[0].attempt, dead_attempt + 1);
}

#[test]
fn cli_lists_shows_and_steers_real_items() {
    let setup = Setup::new("wq-cli");
    let study = setup.study("1.4.1");
    let kinds = [ClaimKind {
        kind: WorkKind::new("cli_kind").expect("kind"),
        study_lock: StudyLock::Write,
        memory_heavy: false,
    }];
    let claim_one = || {
        setup
            .db
            .claim(&ClaimRequest {
                processor_id: "it-node",
                lease: Duration::from_secs(300),
                kinds: &kinds,
                limit: 1,
                max_normal: 1,
                max_memory_heavy: 1,
            })
            .expect("claim")
            .pop()
            .expect("an item")
    };
    // One of each: failed, completed, running, pending.
    let failed = setup
        .db
        .enqueue(&setup.item("cli_kind").study(study.clone()))
        .expect("enqueue");
    let lease = claim_one().lease();
    setup
        .db
        .fail(
            lease,
            "peer refused the association",
            FailureAction::Permanent,
        )
        .expect("fail");
    let completed = setup.db.enqueue(&setup.item("cli_kind")).expect("enqueue");
    setup.db.complete(claim_one().lease()).expect("complete");
    let running = setup.db.enqueue(&setup.item("cli_kind")).expect("enqueue");
    assert_eq!(claim_one().id, running);
    let pending = setup
        .db
        .enqueue(&setup.item("cli_kind").payload(r#"{"device":"PACS2"}"#))
        .expect("enqueue");

    let stdout = |o: &Output| String::from_utf8_lossy(&o.stdout).into_owned();
    let stderr = |o: &Output| String::from_utf8_lossy(&o.stderr).into_owned();
    let ok = |o: Output| {
        assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
        stdout(&o)
    };
    let refused = |o: Output, needle: &str| {
        assert_eq!(o.status.code(), Some(1), "{}{}", stdout(&o), stderr(&o));
        assert!(
            stderr(&o).contains(needle),
            "{:?} lacks {needle:?}",
            stderr(&o)
        );
    };

    // list: all, by status, by type, as JSON.
    let table = ok(setup.cli(&["list"]));
    for id in [failed, completed, running, pending] {
        assert!(
            table
                .lines()
                .any(|l| l.trim_start().starts_with(&format!("{id} "))),
            "{id} missing from\n{table}"
        );
    }
    assert!(table.lines().any(|l| l.trim() == "4 item(s)"), "{table}");
    let json = ok(setup.cli(&["list", "--status", "failed", "--json"]));
    let lines: Vec<serde_json::Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    assert_eq!(lines.len(), 1, "{json}");
    assert_eq!(lines[0]["id"], failed.0);
    assert_eq!(lines[0]["status"], "failed");
    assert_eq!(lines[0]["study_uid"], "1.4.1");
    assert_eq!(
        lines[0]["failure_description"],
        "peer refused the association"
    );
    let json = ok(setup.cli(&[
        "list",
        "--status",
        "pending,in_progress",
        "--type",
        "cli_kind",
        "--json",
    ]));
    let listed: Vec<i64> = json
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).expect("JSON")["id"]
                .as_i64()
                .expect("id")
        })
        .collect();
    assert_eq!(listed, [running.0, pending.0]);
    let none = ok(setup.cli(&["list", "--type", "other_kind"]));
    assert!(none.lines().any(|l| l.trim() == "0 item(s)"), "{none}");

    // show: text and JSON.
    let shown = ok(setup.cli(&["show", &failed.to_string()]));
    assert!(shown.contains("status        failed"), "{shown}");
    assert!(shown.contains("peer refused the association"), "{shown}");
    let shown: serde_json::Value =
        serde_json::from_str(&ok(setup.cli(&["show", &pending.to_string(), "--json"])))
            .expect("JSON");
    assert_eq!(shown["payload"]["device"], "PACS2");
    assert_eq!(shown["priority"], "medium");

    // retry: only failed items; the failure count stays.
    ok(setup.cli(&["retry", &failed.to_string()]));
    let retried = setup.get(failed);
    assert_eq!(
        (retried.status, retried.failure_count),
        (WorkStatus::Pending, 1)
    );
    refused(
        setup.cli(&["retry", &completed.to_string()]),
        "is completed: only failed items can be retried",
    );

    // reprioritise.
    ok(setup.cli(&["reprioritise", &pending.to_string(), "stat"]));
    assert_eq!(setup.get(pending).priority, WorkPriority::Stat);
    refused(
        setup.cli(&["reprioritise", &completed.to_string(), "high"]),
        "is completed",
    );
    let bad = setup.cli(&["reprioritise", &pending.to_string(), "urgent"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(stderr(&bad).contains("unknown priority"));

    // reschedule (alias postpone): waiting items only.
    let out = ok(setup.cli(&[
        "postpone",
        &pending.to_string(),
        "--at",
        "2030-01-02 03:04:05",
    ]));
    assert!(out.contains("2030-01-02T03:04:05"), "{out}");
    assert_eq!(
        setup.get(pending).scheduled_at.as_millis(),
        1_893_553_445_000
    );
    let before = imageserver_core::workqueue::Timestamp::now().as_millis();
    ok(setup.cli(&["reschedule", &pending.to_string(), "--in", "2h"]));
    let due = setup.get(pending).scheduled_at.as_millis() - before;
    assert!((7_200_000..7_260_000).contains(&due), "{due}");
    ok(setup.cli(&["reschedule", &pending.to_string(), "--now"]));
    assert!(setup.get(pending).scheduled_at.as_millis() <= before + 60_000);
    refused(
        setup.cli(&["reschedule", &completed.to_string(), "--now"]),
        "only waiting (idle or pending) items can be rescheduled",
    );
    for bad in [["--in", "2 weeks"], ["--at", "2030-13-01 00:00"]] {
        let out = setup.cli(&["reschedule", &pending.to_string(), bad[0], bad[1]]);
        assert_eq!(out.status.code(), Some(2), "{bad:?}");
    }
    let neither = setup.cli(&["reschedule", &pending.to_string()]);
    assert_eq!(neither.status.code(), Some(2));

    // delete: not while running under a valid lease.
    refused(
        setup.cli(&["delete", &running.to_string()]),
        "running under a valid lease",
    );
    ok(setup.cli(&["delete", &completed.to_string()]));
    assert!(setup.db.get(completed).expect("get").is_none());

    // Unknown ids everywhere.
    for args in [
        vec!["show", "999999"],
        vec!["retry", "999999"],
        vec!["delete", "999999"],
        vec!["reprioritise", "999999", "low"],
        vec!["reschedule", "999999", "--now"],
    ] {
        refused(setup.cli(&args), "work item 999999 does not exist");
    }
}
