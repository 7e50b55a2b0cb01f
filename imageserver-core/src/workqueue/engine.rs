//! The engine: a claimer thread, a pool of worker threads and a
//! housekeeper (lease renewal, purge), connected with crossbeam channels.
//!
//! ```text
//!  WorkQueue::enqueue ─wake─┐        LISTEN (PostgreSQL) ─wake─┐
//!                           ▼                                  ▼
//!                      claimer ── WorkStore::claim (leases) ── jobs ──► workers (N)
//!                         ▲                                              │
//!                         └──────────── Done / WakeAt events ────────────┘
//!  housekeeper: renews every running lease at lease/3; purges old completed items
//! ```
//!
//! The claimer claims only as many items as there are free workers (and
//! free high-priority and memory-heavy slots), so an item is never claimed
//! and then left waiting in a queue while its lease runs. It claims again
//! when woken: by an enqueue through a [`WorkQueue`] handle, by another
//! process (PostgreSQL NOTIFY), by a timer (an item retried or postponed by
//! this engine, or enqueued for later), by a worker finishing while more
//! work may be waiting, and at the latest every `poll` interval (other
//! processes on SQLite, expired leases of dead nodes).

use std::collections::{BinaryHeap, HashMap};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam::channel::{self, Receiver, RecvTimeoutError, Sender};

use super::registry::Registration;
use super::{ProcessContext, Registry, StepResult};
use crate::db::work::{ClaimKind, ClaimRequest, FailureAction, WorkError, WorkStore, WorkWatch};
use crate::model::work::{
    Enqueued, Lease, NewWorkItem, Timestamp, WorkFilter, WorkItem, WorkItemId, WorkPriority,
    WorkStatus,
};
use crate::model::Uid;

/// How an engine runs.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineConfig {
    /// Worker threads: items running at once.
    pub threads: usize,
    /// Of those, how many only High and Stat items may use: normal items
    /// run on at most `threads - high_priority_threads`, so urgent work
    /// starts even when the queue is full of routine work.
    pub high_priority_threads: usize,
    /// Most memory-heavy items running at once.
    pub memory_heavy_threads: usize,
    /// How long a claim holds without renewal; renewed every third of it.
    /// A dead engine's items are taken over this long after its last renewal.
    pub lease: Duration,
    /// The longest the claimer sleeps without looking for work.
    pub poll: Duration,
    /// Completed items are removed this long after they finished.
    pub keep_completed: Duration,
    /// This engine's identity in `processor_id` (unique per engine).
    pub processor_id: String,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            threads: 10,
            high_priority_threads: 2,
            memory_heavy_threads: 4,
            lease: Duration::from_secs(60),
            poll: Duration::from_secs(5),
            keep_completed: Duration::from_secs(24 * 3600),
            processor_id: default_processor_id(),
        }
    }
}

/// `host:pid:n`, unique per engine of a cluster.
pub fn default_processor_id() -> String {
    static SEQUENCE: AtomicU64 = AtomicU64::new(1);
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string());
    format!(
        "{host}:{}:{}",
        std::process::id(),
        SEQUENCE.fetch_add(1, Ordering::Relaxed)
    )
}

/// Why an engine could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration is unusable.
    #[error("invalid work queue configuration: {0}")]
    Config(String),
    /// A thread could not be started.
    #[error("cannot start a work queue thread")]
    Spawn(#[source] std::io::Error),
    /// The store refused (subscribing to notifications).
    #[error(transparent)]
    Store(#[from] WorkError),
}

/// What a shutdown left behind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Claimed items given back before they started.
    pub released: usize,
    /// Items still running when the grace period ended: their leases were
    /// no longer renewed, so they are taken over once they expire (and
    /// their own outcome, if they ever finish, is refused).
    pub abandoned: usize,
}

/// A handle to the work queue: enqueue with the kinds' defaults and wake
/// the local engine at once; operator actions. Cheap to clone.
#[derive(Clone)]
pub struct WorkQueue {
    store: Arc<dyn WorkStore>,
    registry: Registry,
    wake: Sender<()>,
    events: Sender<Event>,
}

impl std::fmt::Debug for WorkQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkQueue")
            .field("store", &self.store)
            .field("registry", &self.registry)
            .finish_non_exhaustive()
    }
}

impl WorkQueue {
    /// A handle without a local engine (operator tools, ingest-only nodes):
    /// items are run by whichever engine shares the store.
    pub fn detached(store: Arc<dyn WorkStore>, registry: Registry) -> WorkQueue {
        let (wake, _) = channel::bounded(1);
        let (events, _) = channel::unbounded();
        WorkQueue {
            store,
            registry,
            wake,
            events,
        }
    }

    /// The store behind it.
    pub fn store(&self) -> &Arc<dyn WorkStore> {
        &self.store
    }

    /// Creates an item; a missing priority or schedule comes from its
    /// kind's properties (the schedule is now plus the processing delay).
    pub fn enqueue(&self, item: NewWorkItem) -> Result<WorkItemId, WorkError> {
        let item = self.with_defaults(item);
        let id = self.store.enqueue(&item)?;
        self.wake_for(item.scheduled_at);
        Ok(id)
    }

    /// Adds instances to the waiting item of the same kind and study, or
    /// creates it (see [`WorkStore::enqueue_or_append`]); with the kind's
    /// processing delay this runs once the study has been quiet that long.
    pub fn enqueue_or_append(&self, item: NewWorkItem) -> Result<Enqueued, WorkError> {
        let item = self.with_defaults(item);
        let enqueued = self.store.enqueue_or_append(&item)?;
        self.wake_for(item.scheduled_at);
        Ok(enqueued)
    }

    /// Operator: a Failed item runs again.
    pub fn retry(&self, id: WorkItemId) -> Result<(), WorkError> {
        self.store.retry(id)?;
        self.wake_for(None);
        Ok(())
    }

    /// Operator: removes an item that is not running.
    pub fn delete(&self, id: WorkItemId) -> Result<(), WorkError> {
        self.store.delete(id)
    }

    /// Operator: a waiting item becomes due at `at` (later: postponed;
    /// sooner: run earlier).
    pub fn reschedule(&self, id: WorkItemId, at: Timestamp) -> Result<(), WorkError> {
        self.store.reschedule(id, at)?;
        self.wake_for(Some(at));
        Ok(())
    }

    /// Operator: changes an item's priority.
    pub fn reprioritise(&self, id: WorkItemId, priority: WorkPriority) -> Result<(), WorkError> {
        self.store.reprioritise(id, priority)
    }

    /// Waits until an item has completed or failed and returns it as it
    /// ended. The store is read every `poll`; `on_poll` sees the item each
    /// time (to report progress). An item deleted meanwhile is
    /// [`WorkError::NotFound`]. Works from any process that shares the
    /// store: the engine that runs the item need not be this one.
    pub fn wait(
        &self,
        id: WorkItemId,
        poll: Duration,
        on_poll: &mut dyn FnMut(&WorkItem),
    ) -> Result<WorkItem, WorkError> {
        loop {
            let item = self.store.get(id)?.ok_or(WorkError::NotFound { id })?;
            on_poll(&item);
            if matches!(item.status, WorkStatus::Completed | WorkStatus::Failed) {
                return Ok(item);
            }
            std::thread::sleep(poll);
        }
    }

    /// One item with its instances.
    pub fn get(&self, id: WorkItemId) -> Result<Option<WorkItem>, WorkError> {
        self.store.get(id)
    }

    /// The items a filter selects.
    pub fn list(&self, filter: &WorkFilter) -> Result<Vec<WorkItem>, WorkError> {
        self.store.list(filter)
    }

    fn with_defaults(&self, mut item: NewWorkItem) -> NewWorkItem {
        if let Some(properties) = self.registry.properties(&item.kind) {
            item.priority.get_or_insert(properties.priority);
            if item.scheduled_at.is_none() && !properties.processing_delay.is_zero() {
                item.scheduled_at = Some(Timestamp::now().after(properties.processing_delay));
            }
        }
        item
    }

    /// Wakes the local engine at `at` (now, if past): for items scheduled
    /// by other means than this handle, such as the StudyProcess items an
    /// ingest batch schedules in its index transaction.
    pub fn wake_at(&self, at: Timestamp) {
        self.wake_for(Some(at));
    }

    /// Wakes the local claimer now, or sets a timer for a later schedule.
    fn wake_for(&self, at: Option<Timestamp>) {
        let now = Timestamp::now();
        match at {
            Some(at) if at > now => {
                let _ = self
                    .events
                    .send(Event::WakeAt(Instant::now() + at.since(now)));
            }
            _ => {
                let _ = self.wake.try_send(());
            }
        }
    }
}

/// What the claimer hears besides wake-ups.
enum Event {
    /// A worker finished an item.
    Done { study_bound: bool },
    /// Look for work at this time.
    WakeAt(Instant),
    /// Shut down.
    Stop,
}

/// A claimed item on its way to a worker.
struct Job {
    item: WorkItem,
    registration: Registration,
    cancelled: Arc<AtomicBool>,
}

/// An item a worker runs.
struct Active {
    lease: Lease,
    cancelled: Arc<AtomicBool>,
    normal: bool,
    heavy: bool,
}

#[derive(Default)]
struct Running {
    items: HashMap<WorkItemId, Active>,
    normal: usize,
    heavy: usize,
}

/// State every engine thread shares.
struct Shared {
    store: Arc<dyn WorkStore>,
    registry: Registry,
    config: EngineConfig,
    claim_kinds: Vec<ClaimKind>,
    stopping: AtomicBool,
    running: Mutex<Running>,
    released: AtomicUsize,
    events: Sender<Event>,
    /// Handed to processors, so that work can enqueue follow-up work.
    queue: WorkQueue,
}

/// A running engine. Dropping it shuts it down (waiting up to 30 s for
/// running items); [`Engine::shutdown`] chooses the grace period.
pub struct Engine {
    handle: WorkQueue,
    shared: Arc<Shared>,
    claimer: Option<JoinHandle<()>>,
    workers: Vec<JoinHandle<()>>,
    worker_exits: Receiver<()>,
    housekeeper: Option<(Sender<()>, JoinHandle<()>)>,
    watch: Option<WorkWatch>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("config", &self.shared.config)
            .field("registry", &self.shared.registry)
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// Starts the threads; they claim the registry's kinds from `store`.
    pub fn start(
        store: Arc<dyn WorkStore>,
        registry: Registry,
        config: EngineConfig,
    ) -> Result<Engine, Error> {
        if config.threads == 0 {
            return Err(Error::Config("threads must be at least 1".into()));
        }
        if config.high_priority_threads >= config.threads {
            return Err(Error::Config(format!(
                "high_priority_threads ({}) must be below threads ({})",
                config.high_priority_threads, config.threads
            )));
        }
        if config.memory_heavy_threads == 0 {
            return Err(Error::Config(
                "memory_heavy_threads must be at least 1".into(),
            ));
        }
        if config.lease < Duration::from_millis(30) || config.poll.is_zero() {
            return Err(Error::Config(
                "the lease must be at least 30 ms and the poll interval above zero".into(),
            ));
        }
        let claim_kinds = registry
            .iter()
            .map(|(kind, registration)| ClaimKind {
                kind: kind.clone(),
                study_lock: registration.properties.study_lock,
                memory_heavy: registration.properties.memory_heavy,
            })
            .collect();
        let (wake_tx, wake_rx) = channel::bounded::<()>(1);
        let (events_tx, events_rx) = channel::unbounded::<Event>();
        let (jobs_tx, jobs_rx) = channel::unbounded::<Job>();
        let (exits_tx, exits_rx) = channel::unbounded::<()>();
        // Subscribed before any thread runs, so that a refusal leaves
        // nothing behind.
        let watch = {
            let wake = wake_tx.clone();
            store.watch(Box::new(move || {
                let _ = wake.try_send(());
            }))?
        };
        let handle = WorkQueue {
            store: store.clone(),
            registry: registry.clone(),
            wake: wake_tx,
            events: events_tx.clone(),
        };
        let shared = Arc::new(Shared {
            store: store.clone(),
            registry: registry.clone(),
            config,
            claim_kinds,
            stopping: AtomicBool::new(false),
            running: Mutex::new(Running::default()),
            released: AtomicUsize::new(0),
            events: events_tx,
            queue: handle.clone(),
        });
        let spawn = |name: String, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name)
                .spawn(f)
                .map_err(Error::Spawn)
        };
        let mut workers = Vec::with_capacity(shared.config.threads);
        for n in 0..shared.config.threads {
            let shared = shared.clone();
            let jobs = jobs_rx.clone();
            let exits = exits_tx.clone();
            workers.push(spawn(
                format!("imageserver-work-{n}"),
                Box::new(move || run_worker(&shared, &jobs, &exits)),
            )?);
        }
        drop(jobs_rx);
        let (stop_tx, stop_rx) = channel::bounded::<()>(1);
        let housekeeper = {
            let shared = shared.clone();
            spawn(
                "imageserver-work-leases".into(),
                Box::new(move || run_housekeeper(&shared, &stop_rx)),
            )?
        };
        let claimer = {
            let shared = shared.clone();
            let wake = wake_rx;
            spawn(
                "imageserver-work-claim".into(),
                Box::new(move || run_claimer(&shared, &events_rx, &wake, jobs_tx)),
            )?
        };
        tracing::info!(
            processor_id = %shared.config.processor_id,
            threads = shared.config.threads,
            kinds = ?registry.kinds().map(|k| k.as_str()).collect::<Vec<_>>(),
            notifications = watch.is_some(),
            "work queue engine started"
        );
        Ok(Engine {
            handle,
            shared,
            claimer: Some(claimer),
            workers,
            worker_exits: exits_rx,
            housekeeper: Some((stop_tx, housekeeper)),
            watch,
        })
    }

    /// A handle that enqueues and wakes this engine.
    pub fn handle(&self) -> WorkQueue {
        self.handle.clone()
    }

    /// The engine's identity (`processor_id` of the items it claims).
    pub fn processor_id(&self) -> &str {
        &self.shared.config.processor_id
    }

    /// How many items are running now.
    pub fn running(&self) -> usize {
        self.shared.lock().items.len()
    }

    /// Stops claiming, gives back claimed items that have not started, lets
    /// running items finish for at most `grace`, then stops renewing leases.
    pub fn shutdown(mut self, grace: Duration) -> ShutdownReport {
        self.stop(grace)
    }

    fn stop(&mut self, grace: Duration) -> ShutdownReport {
        let Some(claimer) = self.claimer.take() else {
            return ShutdownReport::default();
        };
        self.shared.stopping.store(true, Ordering::SeqCst);
        let _ = self.shared.events.send(Event::Stop);
        let _ = claimer.join();
        // The claimer's end closed the job channel: idle workers exit, busy
        // ones after their item.
        let deadline = Instant::now() + grace;
        let mut exited = 0;
        while exited < self.workers.len() {
            match self.worker_exits.recv_deadline(deadline) {
                Ok(()) => exited += 1,
                Err(_) => break,
            }
        }
        let abandoned = {
            let running = self.shared.lock();
            for active in running.items.values() {
                active.cancelled.store(true, Ordering::SeqCst);
            }
            running.items.len()
        };
        if let Some((stop, housekeeper)) = self.housekeeper.take() {
            drop(stop);
            let _ = housekeeper.join();
        }
        if exited == self.workers.len() {
            for worker in self.workers.drain(..) {
                let _ = worker.join();
            }
        } else {
            // Stuck processors keep their threads; nothing waits for them.
            tracing::warn!(
                abandoned,
                "work items still running after the shutdown grace period; their leases will expire"
            );
            self.workers.clear();
        }
        self.watch = None;
        let report = ShutdownReport {
            released: self.shared.released.load(Ordering::SeqCst),
            abandoned,
        };
        tracing::info!(
            released = report.released,
            abandoned = report.abandoned,
            "work queue engine stopped"
        );
        report
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(30));
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Running> {
        self.running.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Claims for the free slots and hands the items to the workers;
    /// returns whether a cap was reached (more work may be waiting).
    fn claim_round(&self, jobs: &Sender<Job>) -> Result<bool, WorkError> {
        let config = &self.config;
        let (limit, max_normal, max_heavy) = {
            let running = self.lock();
            (
                config.threads.saturating_sub(running.items.len()),
                (config.threads - config.high_priority_threads).saturating_sub(running.normal),
                config.memory_heavy_threads.saturating_sub(running.heavy),
            )
        };
        if limit == 0 || self.claim_kinds.is_empty() {
            return Ok(limit == 0);
        }
        let items = self.store.claim(&ClaimRequest {
            processor_id: &config.processor_id,
            lease: config.lease,
            kinds: &self.claim_kinds,
            limit,
            max_normal,
            max_memory_heavy: max_heavy,
        })?;
        let (total, mut normal, mut heavy) = (items.len(), 0, 0);
        for item in items {
            let Some(registration) = self.registry.get(&item.kind).cloned() else {
                // Cannot happen: only registered kinds are claimed.
                let _ = self.store.release(item.lease());
                continue;
            };
            let active = Active {
                lease: item.lease(),
                cancelled: Arc::new(AtomicBool::new(false)),
                normal: !item.priority.is_high(),
                heavy: registration.properties.memory_heavy,
            };
            normal += usize::from(active.normal);
            heavy += usize::from(active.heavy);
            let cancelled = active.cancelled.clone();
            {
                let mut running = self.lock();
                running.normal += usize::from(active.normal);
                running.heavy += usize::from(active.heavy);
                running.items.insert(item.id, active);
            }
            let job = Job {
                item,
                registration,
                cancelled,
            };
            if let Err(unsent) = jobs.send(job) {
                // No worker left (cannot happen before shutdown).
                let job = unsent.into_inner();
                let _ = self.store.release(job.item.lease());
                self.finish(job.item.id);
            }
        }
        Ok(total == limit
            || (max_normal < limit && normal == max_normal)
            || (max_heavy < limit && heavy == max_heavy))
    }

    fn finish(&self, id: WorkItemId) {
        let mut running = self.lock();
        if let Some(active) = running.items.remove(&id) {
            running.normal -= usize::from(active.normal);
            running.heavy -= usize::from(active.heavy);
        }
    }

    /// Runs one item and records its outcome.
    fn run(&self, job: &Job) {
        let item = &job.item;
        let properties = &job.registration.properties;
        let lease = item.lease();
        let span = tracing::info_span!(
            "work_item",
            work_item = item.id.0,
            kind = item.kind.as_str(),
            study_uid = item.study_uid().map(Uid::as_str).unwrap_or(""),
            attempt = item.attempt
        );
        let _entered = span.enter();
        if let Some(expires_at) = item.expires_at {
            if Timestamp::now() > expires_at {
                let reason = format!("expired at {expires_at} before it could run");
                self.settle("failing an expired item", || {
                    self.store.fail(lease, &reason, FailureAction::Permanent)
                });
                return;
            }
        }
        if properties.retry.gives_up(item.failure_count) {
            // Taken over too often (its runs keep dying with their process).
            let reason = format!(
                "gave up after {} failures; last: {}",
                item.failure_count,
                item.failure_description.as_deref().unwrap_or("unknown")
            );
            tracing::warn!(%reason, "work item failed");
            self.settle("failing an item", || {
                self.store.fail(lease, &reason, FailureAction::Permanent)
            });
            return;
        }
        let context = ProcessContext {
            lease,
            processor_id: &self.config.processor_id,
            properties,
            cancelled: &job.cancelled,
            queue: &self.queue,
        };
        let started = Instant::now();
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            job.registration.processor.process(item, &context)
        }));
        let elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        match outcome {
            Ok(StepResult::Done) => {
                tracing::debug!(elapsed_ms, "work item completed");
                self.settle("completing an item", || self.store.complete(lease));
            }
            Ok(StepResult::RetryAfter(wanted, reason)) => {
                let failures = item.failure_count.saturating_add(1);
                if properties.retry.gives_up(failures) {
                    let reason = format!("{reason} (gave up after {failures} failures)");
                    tracing::warn!(%reason, elapsed_ms, "work item failed");
                    self.settle("failing an item", || {
                        self.store.fail(lease, &reason, FailureAction::Permanent)
                    });
                } else {
                    let delay = wanted.max(properties.retry.delay(failures));
                    tracing::info!(%reason, failures, retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX), "work item will be retried");
                    self.settle("scheduling a retry", || {
                        self.store
                            .fail(lease, &reason, FailureAction::RetryAfter(delay))
                    });
                    let _ = self.events.send(Event::WakeAt(Instant::now() + delay));
                }
            }
            Ok(StepResult::PostponeUntil(until)) => {
                tracing::debug!(%until, "work item postponed");
                self.settle("postponing an item", || self.store.postpone(lease, until));
                let _ = self.events.send(Event::WakeAt(
                    Instant::now() + until.since(Timestamp::now()),
                ));
            }
            Ok(StepResult::Fail(reason)) => {
                tracing::warn!(%reason, elapsed_ms, "work item failed");
                self.settle("failing an item", || {
                    self.store.fail(lease, &reason, FailureAction::Permanent)
                });
            }
            Err(panic) => {
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a non-text panic payload".to_string());
                let reason = format!("the processor panicked: {message}");
                tracing::error!(%reason, elapsed_ms, "work item failed");
                self.settle("failing an item", || {
                    self.store.fail(lease, &reason, FailureAction::Permanent)
                });
            }
        }
    }

    /// Records an outcome, retrying database failures a few times (the
    /// lease is still being renewed meanwhile). A lost lease means another
    /// engine owns the item now: our outcome is dropped.
    fn settle(&self, operation: &str, mut record: impl FnMut() -> Result<(), WorkError>) {
        let mut delay = Duration::from_millis(100);
        for attempt in 1..=5 {
            match record() {
                Ok(()) => return,
                Err(e @ WorkError::LeaseLost { .. }) => {
                    tracing::warn!(error = %e, operation, "outcome discarded: the lease was lost");
                    return;
                }
                Err(e) if attempt < 5 => {
                    tracing::warn!(error = %e, operation, attempt, "cannot record a work outcome, retrying");
                    std::thread::sleep(delay);
                    delay *= 2;
                }
                Err(e) => {
                    tracing::error!(error = %e, operation, "cannot record a work outcome; the item runs again once its lease expires");
                }
            }
        }
    }
}

fn run_worker(shared: &Shared, jobs: &Receiver<Job>, exits: &Sender<()>) {
    for job in jobs.iter() {
        let study_bound = job.item.study.is_some();
        if shared.stopping.load(Ordering::SeqCst) {
            let lease = job.item.lease();
            match shared.store.release(lease) {
                Ok(()) => {
                    shared.released.fetch_add(1, Ordering::SeqCst);
                }
                Err(e) => {
                    tracing::warn!(error = %e, work_item = lease.item.0, "cannot release a work item at shutdown; its lease will expire")
                }
            }
        } else {
            shared.run(&job);
        }
        shared.finish(job.item.id);
        let _ = shared.events.send(Event::Done { study_bound });
    }
    let _ = exits.send(());
}

fn run_claimer(shared: &Shared, events: &Receiver<Event>, wake: &Receiver<()>, jobs: Sender<Job>) {
    let mut timers: BinaryHeap<std::cmp::Reverse<Instant>> = BinaryHeap::new();
    let mut want = true;
    let mut capped = false;
    let mut next_poll = Instant::now();
    let mut failing = false;
    loop {
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        if want {
            want = false;
            next_poll = Instant::now() + shared.config.poll;
            match shared.claim_round(&jobs) {
                Ok(more) => {
                    capped = more;
                    if failing {
                        tracing::info!("claiming work again");
                        failing = false;
                    }
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %e, "cannot claim work; retrying");
                        failing = true;
                    }
                    next_poll = Instant::now() + shared.config.poll.min(Duration::from_secs(1));
                }
            }
        }
        let now = Instant::now();
        while timers.peek().is_some_and(|t| t.0 <= now) {
            timers.pop();
            want = true;
        }
        if want {
            continue;
        }
        let deadline = timers.peek().map_or(next_poll, |t| t.0.min(next_poll));
        let mut incoming = Vec::new();
        crossbeam::select! {
            recv(events) -> event => match event {
                Ok(event) => incoming.push(event),
                Err(_) => return,
            },
            recv(wake) -> _ => want = true,
            default(deadline.saturating_duration_since(now)) => want = true,
        }
        // Take whatever else queued up, so that one claim serves it all.
        incoming.extend(events.try_iter());
        if wake.try_recv().is_ok() {
            want = true;
        }
        for event in incoming {
            match event {
                Event::Done { study_bound } => want |= capped || study_bound,
                Event::WakeAt(at) => {
                    if timers.len() < 4096 {
                        timers.push(std::cmp::Reverse(at));
                    }
                }
                Event::Stop => return,
            }
        }
    }
}

fn run_housekeeper(shared: &Shared, stop: &Receiver<()>) {
    let period = (shared.config.lease / 3).max(Duration::from_millis(10));
    let purge_every = Duration::from_secs(600);
    let mut next_purge = Instant::now() + Duration::from_secs(60);
    loop {
        match stop.recv_timeout(period) {
            Err(RecvTimeoutError::Timeout) => {}
            _ => return,
        }
        let leases: Vec<(Lease, Arc<AtomicBool>)> = shared
            .lock()
            .items
            .values()
            .filter(|a| !a.cancelled.load(Ordering::Relaxed))
            .map(|a| (a.lease, a.cancelled.clone()))
            .collect();
        for (lease, cancelled) in leases {
            match shared.store.renew_lease(lease, shared.config.lease) {
                Ok(_) => {}
                Err(e @ WorkError::LeaseLost { .. }) => {
                    tracing::warn!(error = %e, work_item = lease.item.0, "lease lost while running; the item's outcome will be discarded");
                    cancelled.store(true, Ordering::SeqCst);
                }
                Err(e) => {
                    tracing::warn!(error = %e, work_item = lease.item.0, "cannot renew a work lease");
                }
            }
        }
        if Instant::now() >= next_purge {
            next_purge = Instant::now() + purge_every;
            let before = Timestamp::from_millis(Timestamp::now().as_millis().saturating_sub(
                i64::try_from(shared.config.keep_completed.as_millis()).unwrap_or(i64::MAX),
            ));
            match shared.store.purge_completed(before) {
                Ok(0) => {}
                Ok(removed) => tracing::debug!(removed, "completed work items purged"),
                Err(e) => tracing::warn!(error = %e, "cannot purge completed work items"),
            }
        }
    }
}
