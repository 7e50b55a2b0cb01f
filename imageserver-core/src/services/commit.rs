//! Group commit: many writers, one directory sync and one transaction.
//!
//! Every association thread writes its own file (that part runs in
//! parallel), then hands the index record and what is left to make durable
//! to [`GroupCommitter`]. One committer thread takes everything that queued
//! up while it was busy and commits all records in one index transaction.
//!
//! A file persisted deferred (neither synced nor renamed yet) takes two
//! rounds of flushes. First a helper thread (the placer) writes and syncs
//! the batch's entries to the journal of open batches (`services::journal`,
//! which start-up recovery reads after a crash) and renames the batch's
//! files into place: a file at its path is never there before its journal
//! entry is durable. Meanwhile the committer runs the batch's index
//! statements; the transaction waits before its COMMIT until the files are
//! journaled and placed ([`IndexStore::insert_instances_when`]), so no row
//! is durable before its journal entry. Then, at once, each writer syncs
//! its file's data on its own thread, the placer syncs the batch's
//! directories and the index commits. The data sync waits for the rename so
//! that the filesystem-journal commit it forces (ext4, XFS) carries the
//! rename too, and the directory sync beside it has little left to do;
//! synced before the rename, the file's data was one commit and its
//! directory entry another, one after the other. An index row may be
//! durable before its file is whole; the journal covers that window. Every
//! writer is answered only when its file's data, the batch's directory
//! entries and its index row are all durable. A batch with an eagerly
//! persisted file (already synced: a replacement, a move) syncs its
//! directories before its transaction, as that needs no journal. So is a
//! deferred file whose backend offers no journal
//! ([`crate::storage::StorageBackend::deferred`] is `None`): its data is
//! synced before it is queued, so deferral without a journal degrades to
//! the eager order, never to a row durable before its file.
//! Under load the batch grows by itself; with one writer it is a batch of one.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam::channel::{self, Receiver, Sender};

use crate::db::{FollowUp, IndexStore};
use crate::fault::COMMIT as FAULT;
use crate::model::error_chain;
use crate::model::work::{Timestamp, WorkKind, WorkPriority};
use crate::model::{Filesystem, FilesystemId, InsertOutcome, InstanceRecord};
use crate::services::journal;
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
    /// The directories to sync (and, when `deferred` is `None`, nothing
    /// else: the file was synced before its rename).
    dirs: PendingSync,
    /// The committer's side of a deferred file's hand-over.
    deferred: Option<DeferredFile>,
    reply: Sender<Result<InsertOutcome, CommitError>>,
}

/// A deferred file between its writer and the committer.
struct DeferredFile {
    /// Told once the file is in place (its journal entry durable): the
    /// writer syncs its data only then.
    placed: Sender<Result<(), CommitError>>,
    /// The outcome of the writer's own sync of its data.
    synced: Receiver<Result<(), CommitError>>,
}

/// Handle to the committer thread; cloning shares it. The thread ends when
/// the last handle is dropped, after committing what is queued.
#[derive(Clone)]
pub struct GroupCommitter {
    sender: Sender<Request>,
    storage: Arc<dyn StorageBackend>,
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
        let committer_storage = storage.clone();
        let handle = std::thread::Builder::new()
            .name("group-commit".into())
            .spawn(move || run(receiver, index, committer_storage, study_process))
            .expect("spawning the group-commit thread");
        GroupCommitter {
            sender,
            storage,
            _thread: Arc::new(ThreadGuard(Some(handle))),
        }
    }

    /// Queues one record whose file is persisted and waits until it is durable
    /// and indexed. A deferred file's data is synced here, on the caller's
    /// thread once the committer has journaled and placed it, while it syncs
    /// directories and commits.
    pub fn commit(
        &self,
        record: InstanceRecord,
        mut pending: PendingSync,
    ) -> Result<InsertOutcome, CommitError> {
        let (reply, answer) = channel::bounded(1);
        if (pending.has_files() || pending.has_placings()) && self.storage.deferred().is_none() {
            // Deferred by a writer whose backend offers us no journal (a
            // wrapper that did not pass `deferred` on): no row may be
            // durable before its file, so the file is synced and placed
            // (and its directories synced) first, as an eager persist is.
            self.storage
                .sync(std::mem::take(&mut pending))
                .map_err(|e| CommitError::Storage(error_chain(&e)))?;
        }
        let files = pending.take_files();
        let (deferred, writer_side) = if files.has_files() {
            let (synced, synced_rx) = channel::bounded(1);
            let (placed, placed_rx) = channel::bounded(1);
            let deferred = DeferredFile {
                placed,
                synced: synced_rx,
            };
            (Some(deferred), Some((synced, placed_rx)))
        } else {
            (None, None)
        };
        self.sender
            .send(Request {
                record,
                dirs: pending,
                deferred,
                reply,
            })
            .map_err(|_| CommitError::Stopped)?;
        if let Some((file_synced, placed)) = writer_side {
            FAULT.pass("queued");
            // The data is synced once the file is in place, so that the
            // one filesystem-journal commit its sync forces carries the
            // rename too and the batch's directory sync finds little left.
            let synced = placed
                .recv()
                .unwrap_or(Err(CommitError::Stopped))
                .and_then(|()| {
                    self.storage
                        .sync(files)
                        .map_err(|e| CommitError::Storage(error_chain(&e)))
                });
            let _ = file_synced.send(synced);
        }
        answer.recv().map_err(|_| CommitError::Stopped)?
    }
}

/// What a committed batch schedules, in its own index transaction: one
/// StudyProcess item per distinct study, due `delay` after the batch
/// (appending to the study's waiting item moves it later, so it runs once
/// the study has been quiet that long, and at most a tenth of `delay`, at
/// most [`MAX_SLACK`], later: the item moves once per that slack, not on
/// every batch). See [`crate::db::FollowUp`].
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

/// The longest a StudyProcess item runs after its study's quiet period.
pub const MAX_SLACK: Duration = Duration::from_secs(5);

impl StudyProcessHook {
    /// The follow-up of a batch committed now.
    fn follow_up(&self) -> FollowUp {
        FollowUp {
            kind: WorkKind::STUDY_PROCESS,
            priority: self.priority,
            due: Timestamp::now().after(self.delay),
            slack: (self.delay / 10).min(MAX_SLACK),
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
    let placer = Placer::start(storage.clone());
    let mut journals = Journals {
        number: JOURNAL_NUMBERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        ..Journals::default()
    };
    while let Ok(first) = receiver.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match receiver.try_recv() {
                Ok(request) => batch.push(request),
                Err(_) => break,
            }
        }
        let started = std::time::Instant::now();
        let mut dirs = PendingSync::default();
        let mut records = Vec::with_capacity(batch.len());
        let mut replies = Vec::with_capacity(batch.len());
        let mut file_waits = Vec::with_capacity(batch.len());
        let mut placed = Vec::new();
        let mut eager = false;
        for request in batch {
            eager |= request.deferred.is_none() && !request.dirs.is_empty();
            dirs.merge(request.dirs);
            records.push(request.record);
            replies.push(request.reply);
            file_waits.push(request.deferred.map(|file| {
                placed.push(file.placed);
                file.synced
            }));
        }
        let follow_up = study_process.as_ref().map(StudyProcessHook::follow_up);
        let deferred: Vec<&InstanceRecord> = records
            .iter()
            .zip(&file_waits)
            .filter(|(_, wait)| wait.is_some())
            .map(|(record, _)| record)
            .collect();
        // The placer journals the deferred files, puts them in place once
        // their journal entries are durable (a file at its path that may
        // not be whole is always journaled), tells their writers to sync
        // their data, and syncs the batch's directories; meanwhile the
        // index runs the batch's statements and commits once the files
        // are journaled and placed.
        let (placed_tx, placed_rx) = channel::bounded(1);
        let (dirs_tx, dirs_rx) = channel::bounded(1);
        placer.start_job(PlaceJob {
            frames: journals.frames(index.as_ref(), &deferred),
            number: journals.number,
            dirs,
            writers: placed,
            placed: placed_tx,
            synced: dirs_tx,
        });
        let placed = std::cell::OnceCell::new();
        let placed = || {
            placed
                .get_or_init(|| placed_rx.recv().unwrap_or(Err(CommitError::Stopped)))
                .clone()
        };
        let dirs_synced = || dirs_rx.recv().unwrap_or(Err(CommitError::Stopped));
        let mut committed_unsynced = false;
        let result = if eager {
            // An eagerly persisted file needs no journal, so nothing may be
            // indexed before its directory entry is durable.
            placed()
                .and_then(|()| dirs_synced())
                .and_then(|()| index_batch(index.as_ref(), &records, follow_up.as_ref(), &|| true))
        } else {
            let indexed = index_batch(index.as_ref(), &records, follow_up.as_ref(), &|| {
                placed().is_ok()
            });
            FAULT.pass("indexed");
            // Waited for even when the index failed: the files are placed
            // and the directories synced before the next batch reuses the
            // journal.
            let placed = placed();
            let dirs_synced = dirs_synced();
            match (placed, indexed, dirs_synced) {
                // Nothing committed: the files were not journaled.
                (Err(error), _, _) => Err(error),
                (Ok(()), Ok(outcomes), Ok(())) => Ok(outcomes),
                // The rows committed may name directory entries that are
                // not durable: their writers fail, and the journal keeps
                // them for the next start. A record the index refused was
                // never committed: its own outcome stands (a study deleted
                // meanwhile, whose folder the delete removed before the
                // sync reached it, is refused as such, not as a storage
                // failure).
                (Ok(()), Ok(outcomes), Err(error)) => {
                    committed_unsynced = true;
                    Ok(outcomes
                        .into_iter()
                        .map(|outcome| match outcome {
                            Ok(InsertOutcome::StudyDeleted) | Err(_) => outcome,
                            Ok(_) => Err(error.clone()),
                        })
                        .collect())
                }
                (Ok(()), Err(error), _) => Err(error),
            }
        };
        if committed_unsynced {
            for record in &deferred {
                journals.keep(record);
            }
        }
        // Every deferred file's own sync, whatever the index said: the
        // journal is overwritten by the next batch only once all are known.
        let result = result.map(|outcomes| {
            outcomes
                .into_iter()
                .zip(&file_waits)
                .map(|(outcome, wait)| match (outcome, wait) {
                    (Ok(outcome), Some(wait)) => wait
                        .recv()
                        .unwrap_or(Err(CommitError::Stopped))
                        .map(|()| outcome),
                    (outcome, _) => outcome,
                })
                .collect::<Vec<_>>()
        });
        if result.is_err() {
            for wait in file_waits.iter().flatten() {
                let _ = wait.recv();
            }
        }
        // A row committed whose file could not be made durable stays in the
        // journal until the next start checks it.
        if let Ok(outcomes) = &result {
            for (record, outcome) in records.iter().zip(outcomes) {
                if matches!(outcome, Err(CommitError::Storage(_))) {
                    journals.keep(record);
                }
            }
        }
        FAULT.pass("synced");
        tracing::debug!(
            batch = records.len(),
            deferred = deferred.len(),
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
                    // The latest the batch's items may be scheduled.
                    let due = follow_up.due.after(follow_up.slack).as_millis();
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
    // Nothing is open: the journals go, unless they keep a failed entry.
    if let (true, Some(journal)) = (journals.kept.is_empty(), storage.deferred()) {
        journal.close_journals(journals.number);
    }
}

/// Renames a batch's deferred files into place (adding their directories
/// to `pending`).
fn place(storage: &dyn StorageBackend, pending: &mut PendingSync) -> Result<(), CommitError> {
    if !pending.has_placings() {
        return Ok(());
    }
    let journal = storage.deferred().ok_or_else(|| {
        CommitError::Storage("a deferred file, and the storage keeps no journal".into())
    })?;
    journal
        .place(pending)
        .map_err(|e| CommitError::Storage(error_chain(&e)))
}

/// What the placer does for one batch.
struct PlaceJob {
    /// The journal of open batches to write on each filesystem (framed),
    /// or why it could not be made (nothing is then placed).
    frames: Result<Vec<(Filesystem, Vec<u8>)>, CommitError>,
    /// The committer's journal number.
    number: u64,
    /// The files to place and the directories to sync.
    dirs: PendingSync,
    /// The writers of the deferred files, told once their files are placed.
    writers: Vec<Sender<Result<(), CommitError>>>,
    /// The committer, told once every file is journaled and placed.
    placed: Sender<Result<(), CommitError>>,
    /// The committer, told once the directories are synced.
    synced: Sender<Result<(), CommitError>>,
}

/// A batch's journal, placements and directory syncs, on a thread of their
/// own while the committer runs the batch's index statements.
struct Placer {
    sender: Option<Sender<PlaceJob>>,
    thread: Option<JoinHandle<()>>,
}

impl Placer {
    fn start(storage: Arc<dyn StorageBackend>) -> Placer {
        let (sender, receiver) = channel::unbounded::<PlaceJob>();
        let thread = std::thread::Builder::new()
            .name("group-commit-sync".into())
            .spawn(move || {
                for job in receiver {
                    run_place_job(storage.as_ref(), job);
                }
            })
            .expect("spawning the group-commit sync thread");
        Placer {
            sender: Some(sender),
            thread: Some(thread),
        }
    }

    /// Hands `job` to the thread (its channels report the outcome; they
    /// are dropped, so read as stopped, if the thread is gone).
    fn start_job(&self, job: PlaceJob) {
        if let Some(sender) = &self.sender {
            let _ = sender.send(job);
        }
    }
}

fn run_place_job(storage: &dyn StorageBackend, mut job: PlaceJob) {
    FAULT.pass("journaling");
    let placed = job
        .frames
        .and_then(|frames| write_journals(storage, &frames, job.number))
        .and_then(|()| place(storage, &mut job.dirs));
    // The writers sync their data now, while the index commits.
    for writer in job.writers {
        let _ = writer.send(placed.clone());
    }
    FAULT.pass("journaled");
    let _ = job.placed.send(placed.clone());
    let synced = placed.and_then(|()| {
        if job.dirs.is_empty() {
            return Ok(());
        }
        storage
            .sync(job.dirs)
            .map_err(|e| CommitError::Storage(error_chain(&e)))
    });
    let _ = job.synced.send(synced);
}

/// Writes and syncs a batch's journals of open batches.
fn write_journals(
    storage: &dyn StorageBackend,
    frames: &[(Filesystem, Vec<u8>)],
    number: u64,
) -> Result<(), CommitError> {
    if frames.is_empty() {
        return Ok(());
    }
    // `commit` synced the files of a backend without a journal: a deferred
    // record here always has one.
    let journal = storage.deferred().ok_or_else(|| {
        CommitError::Storage("a deferred file, and the storage keeps no journal".into())
    })?;
    for (filesystem, frame) in frames {
        journal
            .write_journal(filesystem, number, frame)
            .map_err(|e| CommitError::Storage(error_chain(&e)))?;
    }
    Ok(())
}

impl Drop for Placer {
    fn drop(&mut self) {
        self.sender.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Numbers the committers of this process, so each has journals of its own.
static JOURNAL_NUMBERS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The committer's journals of open batches, one per filesystem (see
/// `services::journal`).
#[derive(Default)]
struct Journals {
    /// This committer's journal number (one per committer in a process).
    number: u64,
    /// Filesystems by id, as the index knows them (reread on a miss).
    filesystems: HashMap<FilesystemId, Filesystem>,
    /// Entries of committed rows whose files could not be made durable:
    /// written with every batch, so they stay until the next start.
    kept: HashMap<FilesystemId, Vec<u8>>,
}

impl Journals {
    /// The journal of the batch's deferred records on each of their
    /// filesystems, framed (with the entries kept from earlier batches).
    fn frames(
        &mut self,
        index: &dyn IndexStore,
        deferred: &[&InstanceRecord],
    ) -> Result<Vec<(Filesystem, Vec<u8>)>, CommitError> {
        if deferred.is_empty() {
            return Ok(Vec::new());
        }
        let mut bodies: HashMap<FilesystemId, Vec<u8>> = HashMap::new();
        for record in deferred {
            let filesystem = record.location.filesystem;
            let body = bodies
                .entry(filesystem)
                .or_insert_with(|| self.kept.get(&filesystem).cloned().unwrap_or_default());
            journal::push_entry(body, record);
        }
        bodies
            .into_iter()
            .map(|(id, body)| Ok((self.filesystem(index, id)?, journal::frame(&body))))
            .collect()
    }

    /// Keeps a record's entry in every later journal.
    fn keep(&mut self, record: &InstanceRecord) {
        let body = self.kept.entry(record.location.filesystem).or_default();
        journal::push_entry(body, record);
    }

    fn filesystem(
        &mut self,
        index: &dyn IndexStore,
        id: FilesystemId,
    ) -> Result<Filesystem, CommitError> {
        if !self.filesystems.contains_key(&id) {
            let known = index
                .filesystems()
                .map_err(|e| CommitError::Index(error_chain(&e)))?;
            self.filesystems = known.into_iter().map(|f| (f.id, f)).collect();
        }
        self.filesystems
            .get(&id)
            .cloned()
            .ok_or_else(|| CommitError::Storage(format!("filesystem {} is unknown", id.0)))
    }
}

fn commit_error(error: crate::db::Error) -> CommitError {
    match error {
        // The files were not placed: the committer reports why.
        crate::db::Error::CommitCalledOff => {
            CommitError::Storage("the batch's files could not be placed".into())
        }
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
    ready: &dyn Fn() -> bool,
) -> Result<Vec<Result<InsertOutcome, CommitError>>, CommitError> {
    let error = match index.insert_instances_when(records, follow_up, ready) {
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
                .insert_instances_when(std::slice::from_ref(record), follow_up, ready)
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

    /// A deferred file whose backend offers no journal (a wrapper that did
    /// not pass `deferred` on) is synced and placed before its record is
    /// queued: committed, in place, and no journal is needed or written.
    #[test]
    fn a_deferred_file_without_a_journal_is_committed_eagerly() {
        use crate::storage::fs::FsStorage;
        use crate::storage::{DeferredSync, InstanceKey};
        use std::io::Write;

        let dir = tempfile::tempdir().unwrap();
        let index = SqliteIndex::open(&dir.path().join("index.db")).unwrap();
        let root = dir.path().join("fs");
        let (mut record, fs_id) = {
            let scope = Scope::new(&index, partition_spec("NO_JOURNAL"), fs_spec(&root));
            (scope.bare_record("1.9.30.1", 1), scope.fs)
        };
        let filesystem = index
            .filesystems()
            .unwrap()
            .into_iter()
            .find(|f| f.id == fs_id)
            .unwrap();
        let storage = FsStorage::without_deferral();
        let mut writer = storage.begin_write(&filesystem).unwrap();
        writer.write_all(b"five!").unwrap();
        record.instance.file_size = 5;
        let key = InstanceKey {
            location: record.location.clone(),
            series_uid: record.series.series_uid.clone(),
            sop_instance_uid: record.instance.sop_instance_uid.clone(),
        };
        let pending = storage.persist_deferred(writer, &key).unwrap();
        assert!(pending.has_files() && pending.has_placings());
        let committer = GroupCommitter::start(Arc::new(index), Arc::new(storage.clone()), None);
        assert_eq!(
            committer.commit(record, pending).unwrap(),
            InsertOutcome::Inserted
        );
        assert!(storage.exists(&filesystem, &key).unwrap());
        drop(committer);
        let journals: Vec<_> = std::fs::read_dir(root.join(crate::storage::layout::TEMP_DIR))
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".journal"))
            .collect();
        assert!(journals.is_empty(), "{journals:?}");
    }

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
        let outcomes =
            index_batch(&index, &batch, None, &|| true).expect("retried record by record");
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
        assert!(index_batch(&index, &batch[1..2], None, &|| true).is_err());
    }
}
