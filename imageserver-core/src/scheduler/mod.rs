//! Scheduled services: periodic work that runs on exactly one node of a
//! deployment at a time (`imageserver service list|run`).
//!
//! Each [`ScheduledService`] has a name and an interval. Two named leases
//! in the index ([`crate::db::nodes::NodeStore::take_lease`]) keep a
//! cluster's nodes from running it twice:
//! - `service:<name>` is held while a run lasts (renewed every third of
//!   [`RUN_LEASE`] by a helper thread), so a second node — or an operator's
//!   `service run` — never runs it at the same time; a holder that dies
//!   mid-run loses it once it expires, and the next node takes over;
//! - `service:<name>:next` is taken for the interval when a scheduled run
//!   starts, so the service runs once per interval in the whole cluster,
//!   on whichever node's scheduler sees it due first.
//!
//! The services themselves (`services.rs`) only enqueue work items or read
//! and report: what they start runs on the work queue, under its study
//! locks.

mod services;

pub use services::{ArchiveScan, FolderImport, IntegrityScan, WatermarkCheck};

use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::db::nodes::NodeStore;
use crate::model::error_chain;

/// How long a run's lease lasts without renewal.
pub const RUN_LEASE: Duration = Duration::from_secs(60);

/// How often the scheduler looks for due services.
const TICK: Duration = Duration::from_secs(1);

/// One periodic service.
pub trait ScheduledService: Send + Sync + std::fmt::Debug {
    /// Its stable name (`service run NAME`).
    fn name(&self) -> &'static str;
    /// What it does, one line.
    fn description(&self) -> &'static str;
    /// How often it runs; None: only on request.
    fn interval(&self) -> Option<Duration>;
    /// One run: what it found and did, one line each (also logged), or why
    /// it could not run.
    fn run(&self) -> Result<Vec<String>, String>;
}

/// The outcome of [`run_once`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunOutcome {
    /// It ran: its report lines.
    Ran(Vec<String>),
    /// Another holder runs it now.
    Held(String),
    /// It failed.
    Failed(String),
}

fn run_lease(name: &str) -> String {
    format!("service:{name}")
}

fn next_lease(name: &str) -> String {
    format!("service:{name}:next")
}

/// Runs `service` once as `holder` under its run lease (renewed while it
/// runs, released after), unless another holder runs it now.
pub fn run_once(
    service: &dyn ScheduledService,
    leases: &dyn NodeStore,
    holder: &str,
) -> RunOutcome {
    let lease = run_lease(service.name());
    match leases.take_lease(&lease, holder, RUN_LEASE) {
        Ok(true) => {}
        Ok(false) => {
            let by = leases
                .lease_holder(&lease)
                .ok()
                .flatten()
                .unwrap_or_default();
            return RunOutcome::Held(by);
        }
        Err(e) => return RunOutcome::Failed(error_chain(&e)),
    }
    let (done, finished) = mpsc::channel::<()>();
    let result = std::thread::scope(|scope| {
        let lease = &lease;
        scope.spawn(move || loop {
            match finished.recv_timeout(RUN_LEASE / 3) {
                Err(RecvTimeoutError::Timeout) => {
                    if !matches!(leases.take_lease(lease, holder, RUN_LEASE), Ok(true)) {
                        tracing::warn!(service = service.name(), "lost the service's run lease");
                    }
                }
                _ => return,
            }
        });
        let result = service.run();
        drop(done);
        result
    });
    if let Err(e) = leases.release_lease(&lease, holder) {
        tracing::warn!(service = service.name(), error = %error_chain(&e), "cannot release the service's run lease");
    }
    match result {
        Ok(lines) => {
            for line in &lines {
                tracing::info!(service = service.name(), "{line}");
            }
            RunOutcome::Ran(lines)
        }
        Err(reason) => {
            tracing::warn!(service = service.name(), %reason, "scheduled service failed");
            RunOutcome::Failed(reason)
        }
    }
}

/// Whether a scheduled run of `service` is due and now this holder's: the
/// interval lease was free and is taken.
fn due(service: &dyn ScheduledService, leases: &dyn NodeStore, holder: &str) -> bool {
    let Some(interval) = service.interval() else {
        return false;
    };
    let next = next_lease(service.name());
    match leases.lease_holder(&next) {
        Ok(None) => matches!(leases.take_lease(&next, holder, interval), Ok(true)),
        Ok(Some(_)) => false,
        Err(e) => {
            tracing::warn!(service = service.name(), error = %error_chain(&e), "cannot read the service's lease");
            false
        }
    }
}

/// The thread that runs the due services, one at a time. Stops when
/// dropped (after the run in progress).
#[derive(Debug)]
pub struct Scheduler {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Scheduler {
    /// Starts running `services` as `holder` (the node id).
    pub fn start(
        services: Vec<Arc<dyn ScheduledService>>,
        leases: Arc<dyn NodeStore>,
        holder: String,
    ) -> std::io::Result<Scheduler> {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("scheduler".into())
            .spawn(move || loop {
                match stopped.recv_timeout(TICK) {
                    Err(RecvTimeoutError::Timeout) => {}
                    Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
                }
                for service in &services {
                    if due(service.as_ref(), leases.as_ref(), &holder) {
                        if let RunOutcome::Held(by) =
                            run_once(service.as_ref(), leases.as_ref(), &holder)
                        {
                            tracing::debug!(service = service.name(), holder = %by, "running elsewhere");
                        }
                    }
                }
            })?;
        Ok(Scheduler {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(all(test, feature = "sqlite"))]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::db::sqlite::SqliteIndex;

    #[derive(Debug, Default)]
    struct Counting(AtomicUsize);

    impl ScheduledService for Counting {
        fn name(&self) -> &'static str {
            "counting"
        }
        fn description(&self) -> &'static str {
            "counts its runs"
        }
        fn interval(&self) -> Option<Duration> {
            Some(Duration::from_secs(3600))
        }
        fn run(&self) -> Result<Vec<String>, String> {
            let n = self.0.fetch_add(1, Ordering::SeqCst) + 1;
            Ok(vec![format!("run {n}")])
        }
    }

    /// Two nodes: the first to see it due runs it once per interval; a run
    /// lease held by a live holder keeps the other out; an expired one
    /// (a dead holder) is taken over.
    #[test]
    fn one_node_runs_a_service_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let index = SqliteIndex::open(&dir.path().join("index.db")).unwrap();
        let service = Counting::default();
        assert!(due(&service, &index, "node-a"));
        assert!(!due(&service, &index, "node-b"), "once per interval");
        assert!(!due(&service, &index, "node-a"), "not again for its holder");
        assert_eq!(
            run_once(&service, &index, "node-a"),
            RunOutcome::Ran(vec!["run 1".into()])
        );
        // node-b holds the run lease (it runs now): node-a is kept out.
        assert!(index
            .take_lease("service:counting", "node-b", Duration::from_millis(50))
            .unwrap());
        assert_eq!(
            run_once(&service, &index, "node-a"),
            RunOutcome::Held("node-b".into())
        );
        // node-b died: its lease expires and node-a takes over.
        std::thread::sleep(Duration::from_millis(80));
        assert_eq!(
            run_once(&service, &index, "node-a"),
            RunOutcome::Ran(vec!["run 2".into()])
        );
        assert_eq!(index.lease_holder("service:counting").unwrap(), None);
    }
}
