//! Engine tests on SQLite with toy processors: outcomes, caps, locks and
//! shutdown. The integration suite (`tests/it/workqueue.rs`) runs the
//! larger ones on both backends and across processes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::*;
use crate::db::fixtures::{self, uid};
use crate::db::sqlite::SqliteIndex;
use crate::db::IndexStore;
use crate::model::{PartitionId, Uid};

/// How long an outcome may take before the test fails (never a measured
/// duration).
const BOUND: Duration = Duration::from_secs(60);

struct Fixture {
    _dir: tempfile::TempDir,
    index: Arc<SqliteIndex>,
    partition: PartitionId,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let index = Arc::new(SqliteIndex::open(&dir.path().join("index.db")).expect("open"));
    let partition = index
        .ensure_partition(&fixtures::partition_spec("ENGINE"))
        .expect("partition");
    Fixture {
        _dir: dir,
        index,
        partition,
    }
}

impl Fixture {
    fn store(&self) -> Arc<dyn WorkStore> {
        self.index.clone()
    }

    fn study(&self, study: &str) -> Uid {
        let fs = self
            .index
            .ensure_filesystem(&fixtures::fs_spec("/engine"))
            .expect("filesystem");
        let location = fixtures::location(fs, "ENGINE", "20240101", study);
        let record = fixtures::bare_record(self.partition, location, 1);
        self.index.insert_instances(&[record]).expect("study");
        uid(study)
    }

    fn item(&self, kind: &WorkKind) -> NewWorkItem {
        NewWorkItem::new(kind.clone(), self.partition)
    }

    /// Waits until no item of `kind` is waiting or running.
    fn wait_settled(&self, kind: &WorkKind) {
        let deadline = Instant::now() + BOUND;
        loop {
            let open = self
                .index
                .list(&WorkFilter {
                    kinds: vec![kind.clone()],
                    statuses: vec![
                        WorkStatus::Idle,
                        WorkStatus::Pending,
                        WorkStatus::InProgress,
                    ],
                    ..WorkFilter::default()
                })
                .expect("list");
            if open.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} items of {kind} still open: {open:?}",
                open.len()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn statuses(&self, kind: &WorkKind) -> HashMap<WorkItemId, WorkItem> {
        self.index
            .list(&WorkFilter {
                kinds: vec![kind.clone()],
                ..WorkFilter::default()
            })
            .expect("list")
            .into_iter()
            .map(|item| (item.id, item))
            .collect()
    }
}

fn config(threads: usize) -> EngineConfig {
    EngineConfig {
        threads,
        high_priority_threads: 0,
        memory_heavy_threads: threads,
        lease: Duration::from_secs(30),
        poll: Duration::from_millis(200),
        ..EngineConfig::default()
    }
}

fn kind(name: &str) -> WorkKind {
    WorkKind::new(name).expect("kind")
}

#[test]
fn every_item_runs_exactly_once() {
    let f = fixture();
    let noop = kind("noop");
    let runs: Arc<Mutex<HashMap<WorkItemId, u32>>> = Arc::default();
    let mut registry = Registry::new();
    {
        let runs = runs.clone();
        registry.register(
            noop.clone(),
            KindProperties::new(),
            move |item: &WorkItem, _: &ProcessContext<'_>| {
                *runs.lock().unwrap().entry(item.id).or_default() += 1;
                StepResult::Done
            },
        );
    }
    let engine = Engine::start(f.store(), registry, config(4)).expect("start");
    let queue = engine.handle();
    let ids: Vec<WorkItemId> = (0..200)
        .map(|_| queue.enqueue(f.item(&noop)).expect("enqueue"))
        .collect();
    f.wait_settled(&noop);
    let report = engine.shutdown(BOUND);
    assert_eq!(report, ShutdownReport::default());
    let runs = runs.lock().unwrap();
    assert_eq!(runs.len(), ids.len());
    assert!(runs.values().all(|&n| n == 1), "{runs:?}");
    let items = f.statuses(&noop);
    assert!(items
        .values()
        .all(|i| i.status == WorkStatus::Completed && i.attempt == 1));
}

#[test]
fn panics_fail_their_item_and_retries_back_off_until_done() {
    let f = fixture();
    let flaky = kind("flaky");
    let tries: Arc<Mutex<HashMap<WorkItemId, u32>>> = Arc::default();
    let mut registry = Registry::new();
    {
        let tries = tries.clone();
        registry.register(
            flaky.clone(),
            KindProperties::new().retry(RetryPolicy {
                max_failures: 5,
                failure_delay: Duration::from_millis(20),
                backoff: 2.0,
                max_delay: Duration::from_millis(200),
            }),
            move |item: &WorkItem, ctx: &ProcessContext<'_>| {
                let n = {
                    let mut tries = tries.lock().unwrap();
                    let n = tries.entry(item.id).or_default();
                    *n += 1;
                    *n
                };
                assert_eq!(ctx.attempt(), n, "each run is a new attempt");
                match item.payload.as_str() {
                    r#"{"do":"panic"}"# => panic!("boom in item {}", item.id),
                    r#"{"do":"fail"}"# => StepResult::Fail("bad input".into()),
                    r#"{"do":"flaky"}"# if n < 3 => {
                        StepResult::RetryAfter(Duration::ZERO, format!("try {n} failed"))
                    }
                    r#"{"do":"never"}"# => StepResult::RetryAfter(Duration::ZERO, "down".into()),
                    _ => StepResult::Done,
                }
            },
        );
    }
    let engine = Engine::start(f.store(), registry, config(3)).expect("start");
    let queue = engine.handle();
    let enqueue = |what: &str| {
        queue
            .enqueue(f.item(&flaky).payload(format!(r#"{{"do":"{what}"}}"#)))
            .expect("enqueue")
    };
    let panics = enqueue("panic");
    let fails = enqueue("fail");
    let recovers = enqueue("flaky");
    let gives_up = enqueue("never");
    let fine: Vec<WorkItemId> = (0..20).map(|_| enqueue("ok")).collect();
    f.wait_settled(&flaky);
    drop(engine);
    let items = f.statuses(&flaky);
    let panicked = &items[&panics];
    assert_eq!(panicked.status, WorkStatus::Failed);
    let description = panicked.failure_description.as_deref().unwrap_or("");
    assert!(
        description.contains("panicked") && description.contains("boom in item"),
        "{description}"
    );
    assert_eq!(items[&fails].status, WorkStatus::Failed);
    assert_eq!(
        items[&fails].failure_description.as_deref(),
        Some("bad input")
    );
    let recovered = &items[&recovers];
    assert_eq!(
        (recovered.status, recovered.failure_count, recovered.attempt),
        (WorkStatus::Completed, 2, 3)
    );
    let gave_up = &items[&gives_up];
    assert_eq!(
        (gave_up.status, gave_up.failure_count),
        (WorkStatus::Failed, 5)
    );
    assert!(gave_up
        .failure_description
        .as_deref()
        .unwrap_or("")
        .contains("gave up after 5 failures"));
    for id in fine {
        assert_eq!(items[&id].status, WorkStatus::Completed);
    }
}

#[test]
fn a_study_under_a_write_item_runs_one_item_at_a_time() {
    let f = fixture();
    let write = kind("study_write");
    let read = kind("study_read");
    let studies = [f.study("1.7.1"), f.study("1.7.2")];
    // Per study: writers and readers running now, the most ever together.
    type Studies = Arc<Mutex<HashMap<String, (usize, usize, usize)>>>;
    let state: Studies = Arc::default();
    let processor = |state: Studies, writer: bool| {
        move |item: &WorkItem, _: &ProcessContext<'_>| {
            let study = item.study_uid().expect("bound").to_string();
            {
                let mut state = state.lock().unwrap();
                let (writers, readers, _) = state.entry(study.clone()).or_default();
                if writer {
                    assert_eq!((*writers, *readers), (0, 0), "a writer ran beside others");
                    *writers += 1;
                } else {
                    assert_eq!(*writers, 0, "a reader ran beside a writer");
                    *readers += 1;
                }
                let entry = state.get_mut(&study).expect("entry");
                entry.2 = entry.2.max(entry.0 + entry.1);
            }
            std::thread::sleep(Duration::from_millis(2));
            let mut state = state.lock().unwrap();
            let (writers, readers, _) = state.get_mut(&study).expect("entry");
            if writer {
                *writers -= 1;
            } else {
                *readers -= 1;
            }
            StepResult::Done
        }
    };
    let mut registry = Registry::new();
    registry.register(
        write.clone(),
        KindProperties::new().study_lock(StudyLock::Write),
        processor(state.clone(), true),
    );
    registry.register(
        read.clone(),
        KindProperties::new().study_lock(StudyLock::Read),
        processor(state.clone(), false),
    );
    let engine = Engine::start(f.store(), registry, config(6)).expect("start");
    let queue = engine.handle();
    for n in 0..60 {
        let study = studies[n % 2].clone();
        let kind = if n % 3 == 0 { &write } else { &read };
        queue.enqueue(f.item(kind).study(study)).expect("enqueue");
    }
    f.wait_settled(&write);
    f.wait_settled(&read);
    drop(engine);
    for kind in [&write, &read] {
        assert!(f
            .statuses(kind)
            .values()
            .all(|i| i.status == WorkStatus::Completed));
    }
}

#[test]
fn urgent_items_keep_their_threads_and_heavy_items_their_cap() {
    let f = fixture();
    let routine = kind("routine");
    let urgent = kind("urgent");
    let heavy = kind("heavy");
    // Routine items wait until the urgent one has run: if routine work
    // could take every thread, the urgent item would never start.
    let urgent_ran = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut registry = Registry::new();
    {
        let urgent_ran = urgent_ran.clone();
        registry.register(
            routine.clone(),
            KindProperties::new(),
            move |_: &WorkItem, _: &ProcessContext<'_>| {
                let deadline = Instant::now() + BOUND;
                while !urgent_ran.load(Ordering::SeqCst) {
                    if Instant::now() > deadline {
                        return StepResult::Fail("the urgent item never ran".into());
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
                StepResult::Done
            },
        );
    }
    {
        let urgent_ran = urgent_ran.clone();
        registry.register(
            urgent.clone(),
            KindProperties::new().priority(WorkPriority::Stat),
            move |_: &WorkItem, _: &ProcessContext<'_>| {
                urgent_ran.store(true, Ordering::SeqCst);
                StepResult::Done
            },
        );
    }
    let (in_heavy, max_heavy) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    {
        let (in_heavy, max_heavy) = (in_heavy.clone(), max_heavy.clone());
        registry.register(
            heavy.clone(),
            KindProperties::new().memory_heavy(true),
            move |_: &WorkItem, _: &ProcessContext<'_>| {
                let now = in_heavy.fetch_add(1, Ordering::SeqCst) + 1;
                max_heavy.fetch_max(now, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(3));
                in_heavy.fetch_sub(1, Ordering::SeqCst);
                StepResult::Done
            },
        );
    }
    let engine = Engine::start(
        f.store(),
        registry,
        EngineConfig {
            threads: 4,
            high_priority_threads: 1,
            memory_heavy_threads: 1,
            ..config(4)
        },
    )
    .expect("start");
    let queue = engine.handle();
    for _ in 0..6 {
        queue.enqueue(f.item(&routine)).expect("routine");
    }
    // Routine work now holds the three normal threads.
    let deadline = Instant::now() + BOUND;
    while engine.running() < 3 {
        assert!(Instant::now() < deadline, "routine work never started");
        std::thread::sleep(Duration::from_millis(5));
    }
    queue.enqueue(f.item(&urgent)).expect("urgent");
    f.wait_settled(&urgent);
    f.wait_settled(&routine);
    for _ in 0..12 {
        queue.enqueue(f.item(&heavy)).expect("heavy");
    }
    f.wait_settled(&heavy);
    drop(engine);
    for kind in [&routine, &urgent, &heavy] {
        assert!(f
            .statuses(kind)
            .values()
            .all(|i| i.status == WorkStatus::Completed));
    }
    assert_eq!(max_heavy.load(Ordering::SeqCst), 1);
}

#[test]
fn shutdown_gives_back_unstarted_claims_and_new_items_wait_for_their_time() {
    let f = fixture();
    let later = kind("later");
    let runs = Arc::new(AtomicUsize::new(0));
    let mut registry = Registry::new();
    {
        let runs = runs.clone();
        registry.register(
            later.clone(),
            KindProperties::new().processing_delay(Duration::from_secs(3600)),
            move |_: &WorkItem, _: &ProcessContext<'_>| {
                runs.fetch_add(1, Ordering::SeqCst);
                StepResult::Done
            },
        );
    }
    let engine = Engine::start(f.store(), registry, config(2)).expect("start");
    let id = engine.handle().enqueue(f.item(&later)).expect("enqueue");
    let item = f.index.get(id).expect("get").expect("item");
    assert!(item.scheduled_at > Timestamp::now().after(Duration::from_secs(3000)));
    let report = engine.shutdown(Duration::from_secs(5));
    assert_eq!(report, ShutdownReport::default());
    assert_eq!(runs.load(Ordering::SeqCst), 0);
    assert_eq!(
        f.index.get(id).expect("get").expect("item").status,
        WorkStatus::Pending
    );
    // Misconfigurations are refused.
    for bad in [
        EngineConfig {
            threads: 0,
            ..config(1)
        },
        EngineConfig {
            high_priority_threads: 2,
            ..config(2)
        },
        EngineConfig {
            memory_heavy_threads: 0,
            ..config(2)
        },
    ] {
        assert!(matches!(
            Engine::start(f.store(), Registry::new(), bad),
            Err(Error::Config(_))
        ));
    }
}

#[test]
fn processors_enqueue_follow_up_work() {
    let f = fixture();
    let first = kind("first_step");
    let second = kind("second_step");
    let seen = Arc::new(AtomicUsize::new(0));
    let mut registry = Registry::new();
    {
        let second = second.clone();
        registry.register(
            first.clone(),
            KindProperties::new(),
            move |item: &WorkItem, ctx: &ProcessContext<'_>| {
                let follow_up = NewWorkItem::new(second.clone(), item.partition)
                    .payload(format!("{{\"after\":{}}}", item.id));
                match ctx.work_queue().enqueue(follow_up) {
                    Ok(_) => StepResult::Done,
                    Err(e) => StepResult::RetryAfter(Duration::ZERO, e.to_string()),
                }
            },
        );
    }
    {
        let seen = seen.clone();
        registry.register(
            second.clone(),
            KindProperties::new(),
            move |_: &WorkItem, _: &ProcessContext<'_>| {
                seen.fetch_add(1, Ordering::SeqCst);
                StepResult::Done
            },
        );
    }
    let engine = Engine::start(f.store(), registry, config(2)).expect("start");
    for _ in 0..5 {
        engine.handle().enqueue(f.item(&first)).expect("enqueue");
    }
    f.wait_settled(&first);
    f.wait_settled(&second);
    drop(engine);
    assert_eq!(seen.load(Ordering::SeqCst), 5);
    assert_eq!(f.statuses(&second).len(), 5);
}
