//! Group commit: many writers, one directory sync and one transaction.
//!
//! Every association thread fsyncs and renames its own file (that part runs
//! in parallel), then hands the index record and its pending directory
//! entries to [`GroupCommitter`]. One committer thread takes everything that
//! queued up while it was busy, syncs each distinct directory once, commits
//! all records in one index transaction, and only then answers each writer.
//! Under load the batch grows by itself; with one writer it is a batch of one.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam::channel::{self, Receiver, Sender};

use crate::db::work::WorkStore;
use crate::db::IndexStore;
use crate::model::work::{NewWorkItem, Timestamp, WorkKind, WorkUid};
use crate::model::{InsertOutcome, InstanceRecord, PartitionId, Uid};
use crate::storage::{PendingSync, StorageBackend};

/// Most records committed in one transaction.
const MAX_BATCH: usize = 512;

/// Why a group commit failed (every record of the batch gets the same).
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum CommitError {
    /// Directory entries could not be made durable.
    #[error("cannot make directory entries durable: {0}")]
    Storage(String),
    /// The index transaction failed.
    #[error("index commit failed: {0}")]
    Index(String),
    /// The index is out of space.
    #[error("index is out of space: {0}")]
    IndexFull(String),
    /// The committer has stopped (server shutting down).
    #[error("the committer has stopped")]
    Stopped,
}

struct Request {
    record: InstanceRecord,
    pending: PendingSync,
    reply: Sender<Result<InsertOutcome, CommitError>>,
}

/// Handle to the committer thread; cloning shares it. The thread ends when
/// the last handle is dropped, after committing what is queued.
#[derive(Clone)]
pub struct GroupCommitter {
    sender: Sender<Request>,
    _thread: Arc<ThreadGuard>,
}

impl std::fmt::Debug for GroupCommitter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCommitter")
            .field("queued", &self.sender.len())
            .finish()
    }
}

struct ThreadGuard(Option<JoinHandle<()>>);

impl Drop for ThreadGuard {
    fn drop(&mut self) {
        // Fields drop in declaration order: the last handle's `sender` is
        // already gone, so the thread drains the queue, sees the channel
        // closed and ends; joining waits for the final commit.
        if let Some(handle) = self.0.take() {
            let _ = handle.join();
        }
    }
}

impl GroupCommitter {
    /// Starts the committer thread; with a hook, each committed batch
    /// enqueues StudyProcess work for its studies.
    pub fn start(
        index: Arc<dyn IndexStore>,
        storage: Arc<dyn StorageBackend>,
        study_process: Option<StudyProcessHook>,
    ) -> GroupCommitter {
        let (sender, receiver) = channel::unbounded::<Request>();
        let handle = std::thread::Builder::new()
            .name("group-commit".into())
            .spawn(move || run(receiver, index, storage, study_process))
            .expect("spawning the group-commit thread");
        GroupCommitter {
            sender,
            _thread: Arc::new(ThreadGuard(Some(handle))),
        }
    }

    /// Queues one record whose file is persisted and waits until it is durable
    /// and indexed.
    pub fn commit(
        &self,
        record: InstanceRecord,
        pending: PendingSync,
    ) -> Result<InsertOutcome, CommitError> {
        let (reply, answer) = channel::bounded(1);
        self.sender
            .send(Request {
                record,
                pending,
                reply,
            })
            .map_err(|_| CommitError::Stopped)?;
        answer.recv().map_err(|_| CommitError::Stopped)?
    }
}

/// What a committed batch schedules: one StudyProcess item per distinct
/// study, due `delay` after the batch (appending to the study's waiting
/// item moves it later, so it runs once the study has been quiet).
#[derive(Debug, Clone)]
pub struct StudyProcessHook {
    /// Where the items go.
    pub work: Arc<dyn WorkStore>,
    /// How long a study must be quiet.
    pub delay: Duration,
}

impl StudyProcessHook {
    /// Starts the scheduler thread the committer hands committed records to.
    /// Scheduling is off the commit path: the next batch never waits for
    /// it, and studies that arrive within one window are merged into one
    /// `enqueue_or_append` each. Failures are logged: the instances are
    /// durable already and their C-STOREs succeeded.
    fn spawn(self) -> Option<(Sender<Scheduled>, JoinHandle<()>)> {
        let (sender, receiver) = channel::unbounded::<Scheduled>();
        match std::thread::Builder::new()
            .name("study-process-scheduler".into())
            .spawn(move || self.run(receiver))
        {
            Ok(handle) => Some((sender, handle)),
            Err(error) => {
                tracing::error!(%error, "cannot start the study-process scheduler");
                None
            }
        }
    }

    fn run(self, receiver: Receiver<Scheduled>) {
        let mut pending: BTreeMap<(PartitionId, Uid), Vec<WorkUid>> = BTreeMap::new();
        loop {
            let received = if pending.is_empty() {
                receiver.recv().map_err(|_| true)
            } else {
                receiver
                    .recv_timeout(SCHEDULE_WINDOW)
                    .map_err(|e| e.is_disconnected())
            };
            match received {
                Ok(entries) => {
                    for (partition, study_uid, uid) in entries {
                        pending.entry((partition, study_uid)).or_default().push(uid);
                    }
                    continue;
                }
                Err(disconnected) => {
                    self.flush(&mut pending);
                    if disconnected {
                        return;
                    }
                }
            }
        }
    }

    fn flush(&self, pending: &mut BTreeMap<(PartitionId, Uid), Vec<WorkUid>>) {
        let due = Timestamp::now().after(self.delay);
        for ((partition, study_uid), uids) in std::mem::take(pending) {
            let item = NewWorkItem::new(WorkKind::STUDY_PROCESS, partition)
                .study(study_uid.clone())
                .scheduled_at(due)
                .uids(uids);
            if let Err(error) = self.work.enqueue_or_append(&item) {
                tracing::error!(
                    study_uid = %study_uid,
                    error = %error_chain(&error),
                    "cannot schedule study processing"
                );
            }
        }
    }
}

/// Committed instances handed to the study-process scheduler.
type Scheduled = Vec<(PartitionId, Uid, WorkUid)>;

/// How long the scheduler gathers committed instances before enqueueing.
const SCHEDULE_WINDOW: Duration = Duration::from_millis(500);

fn run(
    receiver: Receiver<Request>,
    index: Arc<dyn IndexStore>,
    storage: Arc<dyn StorageBackend>,
    study_process: Option<StudyProcessHook>,
) {
    let scheduler = study_process.and_then(StudyProcessHook::spawn);
    while let Ok(first) = receiver.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match receiver.try_recv() {
                Ok(request) => batch.push(request),
                Err(_) => break,
            }
        }
        let started = std::time::Instant::now();
        let mut pending = PendingSync::default();
        let mut records = Vec::with_capacity(batch.len());
        let mut replies = Vec::with_capacity(batch.len());
        for request in batch {
            pending.merge(request.pending);
            records.push(request.record);
            replies.push(request.reply);
        }
        let result = storage
            .sync(pending)
            .map_err(|e| CommitError::Storage(error_chain(&e)))
            .and_then(|()| {
                index.insert_instances(&records).map_err(|e| match e {
                    crate::db::Error::Full(_) => CommitError::IndexFull(error_chain(&e)),
                    other => CommitError::Index(error_chain(&other)),
                })
            });
        tracing::debug!(
            batch = records.len(),
            elapsed_us = started.elapsed().as_micros() as u64,
            ok = result.is_ok(),
            "group commit"
        );
        match result {
            Ok(outcomes) => {
                for (reply, outcome) in replies.into_iter().zip(outcomes) {
                    let _ = reply.send(Ok(outcome));
                }
                // After answering: the writers do not wait for it, and
                // what queued meanwhile joins the next (larger) batch.
                if let Some((scheduler, _)) = &scheduler {
                    let entries = records
                        .iter()
                        .map(|r| {
                            (
                                r.partition,
                                r.study.study_uid.clone(),
                                WorkUid::new(
                                    r.series.series_uid.clone(),
                                    r.instance.sop_instance_uid.clone(),
                                ),
                            )
                        })
                        .collect();
                    let _ = scheduler.send(entries);
                }
            }
            Err(error) => {
                tracing::error!(batch = records.len(), %error, "group commit failed");
                for reply in replies {
                    let _ = reply.send(Err(error.clone()));
                }
            }
        }
    }
    // The queue is drained: let the scheduler enqueue what it gathered.
    if let Some((sender, handle)) = scheduler {
        drop(sender);
        let _ = handle.join();
    }
}

/// An error and its sources on one line.
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
