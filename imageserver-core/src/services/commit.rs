//! Group commit: many writers, one directory sync and one transaction.
//!
//! Every association thread fsyncs and renames its own file (that part runs
//! in parallel), then hands the index record and its pending directory
//! entries to [`GroupCommitter`]. One committer thread takes everything that
//! queued up while it was busy, syncs each distinct directory once, commits
//! all records in one index transaction, and only then answers each writer.
//! Under load the batch grows by itself; with one writer it is a batch of one.

use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam::channel::{self, Receiver, Sender};

use crate::db::{FollowUp, IndexStore};
use crate::model::error_chain;
use crate::model::work::{Timestamp, WorkKind, WorkPriority};
use crate::model::{InsertOutcome, InstanceRecord};
use crate::storage::{PendingSync, StorageBackend};
use crate::workqueue::WorkQueue;

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
    /// schedules StudyProcess work for its studies in its own transaction.
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

/// What a committed batch schedules, in its own index transaction: one
/// StudyProcess item per distinct study, due `delay` after the batch
/// (appending to the study's waiting item moves it later, so it runs once
/// the study has been quiet that long). See [`crate::db::FollowUp`].
#[derive(Debug, Clone)]
pub struct StudyProcessHook {
    /// How long a study must be quiet.
    pub delay: Duration,
    /// The items' priority.
    pub priority: WorkPriority,
    /// The local engine, woken when the items fall due (set once it runs;
    /// until then, or without one, engines find the items by polling).
    pub wake: Arc<OnceLock<WorkQueue>>,
}

impl StudyProcessHook {
    /// The follow-up of a batch committed now.
    fn follow_up(&self) -> FollowUp {
        FollowUp {
            kind: WorkKind::STUDY_PROCESS,
            priority: self.priority,
            due: Timestamp::now().after(self.delay),
        }
    }
}

/// Wake-ups for scheduled items are rounded up to this step, so that a
/// busy ingest sets one engine timer per step, not one per batch.
const WAKE_STEP_MS: i64 = 100;

fn run(
    receiver: Receiver<Request>,
    index: Arc<dyn IndexStore>,
    storage: Arc<dyn StorageBackend>,
    study_process: Option<StudyProcessHook>,
) {
    let mut last_wake: Option<Timestamp> = None;
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
        let follow_up = study_process.as_ref().map(StudyProcessHook::follow_up);
        let result = storage
            .sync(pending)
            .map_err(|e| CommitError::Storage(error_chain(&e)))
            .and_then(|()| index_batch(index.as_ref(), &records, follow_up.as_ref()));
        tracing::debug!(
            batch = records.len(),
            elapsed_us = started.elapsed().as_micros() as u64,
            ok = result.is_ok(),
            "group commit"
        );
        match result {
            Ok(outcomes) => {
                for (reply, outcome) in replies.into_iter().zip(outcomes) {
                    let _ = reply.send(outcome);
                }
                if let (Some(hook), Some(follow_up)) = (&study_process, &follow_up) {
                    let due = follow_up.due.as_millis();
                    let step = (due + WAKE_STEP_MS - 1) / WAKE_STEP_MS * WAKE_STEP_MS;
                    let wake_at = Timestamp::from_millis(step);
                    if last_wake != Some(wake_at) {
                        if let Some(queue) = hook.wake.get() {
                            queue.wake_at(wake_at);
                            last_wake = Some(wake_at);
                        }
                    }
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
}

fn commit_error(error: crate::db::Error) -> CommitError {
    match error {
        crate::db::Error::Full(_) => CommitError::IndexFull(error_chain(&error)),
        other => CommitError::Index(error_chain(&other)),
    }
}

/// Indexes a batch in one transaction. When the index refuses it, every
/// record is committed on its own, so one record the database refuses (a
/// value past one of its limits that ingest's checks missed) fails alone.
/// `Err` only when the whole batch failed and no record can go alone (the
/// index is full, or the batch is one record).
fn index_batch(
    index: &dyn IndexStore,
    records: &[InstanceRecord],
    follow_up: Option<&FollowUp>,
) -> Result<Vec<Result<InsertOutcome, CommitError>>, CommitError> {
    let error = match index.insert_instances_then(records, follow_up) {
        Ok(outcomes) => return Ok(outcomes.into_iter().map(Ok).collect()),
        Err(error) => commit_error(error),
    };
    if records.len() == 1 || !matches!(error, CommitError::Index(_)) {
        return Err(error);
    }
    tracing::warn!(batch = records.len(), %error, "group commit failed; committing its records one by one");
    let mut failed = 0usize;
    let outcomes: Vec<_> = records
        .iter()
        .map(|record| {
            let one = index
                .insert_instances_then(std::slice::from_ref(record), follow_up)
                .map_err(commit_error)
                .and_then(|outcomes| {
                    outcomes
                        .into_iter()
                        .next()
                        .ok_or_else(|| CommitError::Index("no outcome for the record".into()))
                });
            if let Err(error) = &one {
                failed += 1;
                tracing::error!(sop_instance_uid = %record.instance.sop_instance_uid, %error, "index commit of one record failed");
            }
            one
        })
        .collect();
    tracing::info!(
        batch = records.len(),
        failed,
        "group commit retried record by record"
    );
    Ok(outcomes)
}

#[cfg(all(test, feature = "sqlite"))]
mod tests {
    use super::*;
    use crate::db::fixtures::{fs_spec, partition_spec, uid, Scope};
    use crate::db::sqlite::SqliteIndex;
    use crate::model::FilesystemId;

    /// A batch with one record the database refuses (a filesystem it does
    /// not know: a foreign key no ingest check looks at) commits the others.
    #[test]
    fn one_refused_record_fails_alone() {
        let dir = tempfile::tempdir().unwrap();
        let index = SqliteIndex::open(&dir.path().join("index.db")).unwrap();
        let scope = Scope::new(
            &index,
            partition_spec("COMMIT_ONE"),
            fs_spec("/data/commit"),
        );
        let partition = scope.partition;
        let mut bad = scope.bare_record("1.9.20.2", 1);
        bad.location.filesystem = FilesystemId(i64::MAX - 7);
        let batch = [
            scope.bare_record("1.9.20.1", 1),
            bad,
            scope.bare_record("1.9.20.1", 2),
            scope.bare_record("1.9.20.3", 1),
        ];
        assert!(
            index.insert_instances(&batch).is_err(),
            "the database refuses the batch as a whole"
        );
        let outcomes = index_batch(&index, &batch, None).expect("retried record by record");
        assert!(
            matches!(outcomes[0], Ok(InsertOutcome::Inserted)),
            "{outcomes:?}"
        );
        assert!(
            matches!(outcomes[1], Err(CommitError::Index(_))),
            "{outcomes:?}"
        );
        assert!(
            matches!(outcomes[2], Ok(InsertOutcome::Inserted)),
            "{outcomes:?}"
        );
        assert!(
            matches!(outcomes[3], Ok(InsertOutcome::Inserted)),
            "{outcomes:?}"
        );
        for (sop, indexed) in [
            ("1.9.20.1.1.1", true),
            ("1.9.20.2.1.1", false),
            ("1.9.20.1.1.2", true),
            ("1.9.20.3.1.1", true),
        ] {
            assert_eq!(
                index.instance(partition, &uid(sop)).unwrap().is_some(),
                indexed,
                "{sop}"
            );
        }
        // A batch of one that fails is that record's failure.
        assert!(index_batch(&index, &batch[1..2], None).is_err());
    }
}
