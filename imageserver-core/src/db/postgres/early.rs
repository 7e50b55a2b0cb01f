//! Early ingest look-ups ([`IndexStore::begin_ingest_lookup`]): one
//! long-lived helper thread per [`PgIndex`] runs them, driving the index's
//! current-thread runtime while the association receives the rest of its
//! instance. A look-up still queued when its answer is wanted (the helper
//! busy with another) is run by the waiter itself, so none waits behind
//! another's round trip. Without a helper (it could not be started) every
//! look-up runs when waited for.
//!
//! [`IndexStore::begin_ingest_lookup`]: crate::db::IndexStore::begin_ingest_lookup
//! [`PgIndex`]: super::PgIndex

use std::sync::{Arc, Mutex};

use crate::db::{Error, IngestLookup, PendingLookup};

/// A look-up, taken by whoever runs it first: the helper or the waiter.
type Shared<F> = Arc<Mutex<Option<F>>>;

type Job = Box<dyn FnOnce() + Send>;

/// The helper thread's queue, started by the first look-up; the thread
/// ends once this is dropped and its queue is empty.
#[derive(Default)]
pub(super) struct EarlyLookups {
    helper: Mutex<Helper>,
}

#[derive(Default)]
enum Helper {
    #[default]
    NotStarted,
    Running(crossbeam::channel::Sender<Job>),
    Failed,
}

impl EarlyLookups {
    /// Queues `look_up` for the helper; its answer is given when waited
    /// for.
    pub(super) fn begin<F>(&self, operation: &'static str, look_up: F) -> PendingLookup
    where
        F: FnOnce() -> Result<IngestLookup, Error> + Send + 'static,
    {
        let look_up: Shared<F> = Arc::new(Mutex::new(Some(look_up)));
        let (answer, answered) = crossbeam::channel::bounded(1);
        let queued = look_up.clone();
        let job: Job = Box::new(move || {
            if let Some(look_up) = take(&queued) {
                let _ = answer.send(look_up());
            }
        });
        // Without a helper the waiter runs it.
        self.queue(job);
        PendingLookup::new(move || {
            // Not started yet (or no helper): run it here.
            if let Some(look_up) = take(&look_up) {
                return look_up();
            }
            answered.recv().map_err(|disconnected| Error::Backend {
                operation,
                source: Box::new(disconnected),
            })?
        })
    }

    /// Hands `job` to the helper, starting it if needed; drops it when
    /// there is none (its waiter runs the look-up).
    fn queue(&self, job: Job) {
        let mut helper = self.helper.lock().unwrap_or_else(|p| p.into_inner());
        if matches!(*helper, Helper::NotStarted) {
            let (jobs, queue) = crossbeam::channel::unbounded::<Job>();
            let started = std::thread::Builder::new()
                .name("pg-early-lookup".into())
                .spawn(move || {
                    for job in queue {
                        job();
                    }
                });
            *helper = match started {
                Ok(_) => Helper::Running(jobs),
                Err(error) => {
                    tracing::warn!(error = %error, "no thread for early index look-ups: they run when waited for");
                    Helper::Failed
                }
            };
        }
        if let Helper::Running(jobs) = &*helper {
            let _ = jobs.send(job);
        }
    }
}

fn take<F>(shared: &Shared<F>) -> Option<F> {
    shared.lock().unwrap_or_else(|p| p.into_inner()).take()
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::Duration;

    use super::*;
    use crate::model::StudyDeletions;

    fn answer(count: u64) -> Result<IngestLookup, Error> {
        Ok(IngestLookup {
            deletions: StudyDeletions {
                count,
                ..StudyDeletions::default()
            },
            existing: None,
            study_patient: None,
        })
    }

    fn thread_name() -> String {
        std::thread::current()
            .name()
            .unwrap_or_default()
            .to_string()
    }

    /// A look-up runs on the helper while the caller does something else,
    /// and its answer is the one waited for.
    #[test]
    fn the_helper_runs_a_look_up_before_it_is_waited_for() {
        let early = EarlyLookups::default();
        let (ran_on, ran) = mpsc::channel();
        let pending = early.begin("test", move || {
            ran_on.send(thread_name()).expect("report");
            answer(7)
        });
        let name = ran
            .recv_timeout(Duration::from_secs(10))
            .expect("the helper ran it before anyone waited");
        assert_eq!(name, "pg-early-lookup");
        assert_eq!(pending.wait().expect("answer").deletions.count, 7);
    }

    /// A look-up queued behind a busy helper is run by its waiter, not
    /// after the helper's current one.
    #[test]
    fn a_waiter_runs_its_look_up_when_the_helper_is_busy() {
        let early = EarlyLookups::default();
        let (holding, held) = mpsc::channel();
        let (release, released) = mpsc::channel::<()>();
        let busy = early.begin("test", move || {
            holding.send(()).expect("signal");
            released.recv().expect("release");
            answer(1)
        });
        held.recv_timeout(Duration::from_secs(10))
            .expect("the helper took the first look-up");
        let second = early.begin("test", || {
            assert_ne!(thread_name(), "pg-early-lookup");
            answer(2)
        });
        assert_eq!(second.wait().expect("answer").deletions.count, 2);
        release.send(()).expect("release");
        assert_eq!(busy.wait().expect("answer").deletions.count, 1);
    }
}
