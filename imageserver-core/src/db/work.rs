//! The WorkQueue's store: work items in the database, claimed under leases.
//!
//! [`WorkStore`] is what the engine ([`crate::workqueue`]) and the operator
//! commands call; both backends implement it with the same semantics, which
//! the `conformance` suite checks on each.
//!
//! # Claiming
//!
//! An item is **claimable** when its kind is among the requested ones and
//! either it is Idle or Pending and its scheduled time has come, or it is In
//! Progress and its lease has expired (a **takeover**: its holder died or
//! lost contact). Claiming sets it In Progress under a lease (processor id,
//! expiry) and increments its `attempt`: the attempt is the claim's fencing
//! token. [`WorkStore::renew_lease`], [`WorkStore::complete`],
//! [`WorkStore::fail`], [`WorkStore::postpone`] and [`WorkStore::release`]
//! take the [`Lease`] and are refused with [`WorkError::LeaseLost`] once the
//! attempt is no longer the item's current one, so a slow holder whose item
//! was taken over cannot overwrite the new holder's outcome. A takeover
//! counts as a failure (`failure_count + 1`, with a description), so an
//! item that crashes its process every time ends Failed instead of looping.
//!
//! **Per-study locks.** Each claim records how the item locks its study
//! ([`StudyLock`]). A write item is claimable only while no other item on its
//! study is In Progress under a valid lease; a read item only while no write
//! item is. The lock is derived from the leases themselves, so a dead node's
//! lock disappears with its lease. The check and the claim are one atomic
//! step: on SQLite inside one `BEGIN IMMEDIATE` transaction, on PostgreSQL
//! under a transaction-scoped advisory lock per study (taken in ascending
//! study order, so claimers never deadlock), with the candidate rows locked
//! `FOR UPDATE SKIP LOCKED`.
//!
//! Candidates are taken by priority (Stat first), then scheduled time, then
//! key. A claim takes at most `limit` items, at most `max_normal` of them
//! below High priority and at most `max_memory_heavy` of memory-heavy kinds:
//! the engine's thread caps.

#[cfg(test)]
pub(crate) mod conformance;

use std::time::Duration;

use crate::db;
use crate::db::rows::Columns;
use crate::model::work::{
    Enqueued, Lease, NewWorkItem, StudyLock, StudyStorageId, Timestamp, WorkFilter, WorkItem,
    WorkItemId, WorkKind, WorkPriority, WorkStatus, WorkStudy,
};

/// Failures of the work store: the database's, and the refusals of the
/// work-item state machine.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkError {
    /// The database failed.
    #[error(transparent)]
    Db(#[from] db::Error),
    /// No item has this key.
    #[error("work item {id} does not exist")]
    NotFound {
        /// The key asked for.
        id: WorkItemId,
    },
    /// The item's status does not allow the operation.
    #[error("work item {id} is {status}: {reason}")]
    IllegalTransition {
        /// The item.
        id: WorkItemId,
        /// Its current status.
        status: WorkStatus,
        /// Why the operation is refused, e.g. "only failed items can be retried".
        reason: &'static str,
    },
    /// The lease is no longer the item's current claim: it was taken over
    /// (a newer attempt), finished, released or deleted.
    #[error(
        "work item {} attempt {} no longer holds its lease ({current})",
        lease.item,
        lease.attempt
    )]
    LeaseLost {
        /// The lease presented.
        lease: Lease,
        /// What the item is now, for the log.
        current: String,
    },
    /// The study an item names is not stored in its partition.
    #[error("study {study_uid} is not stored in partition {partition}")]
    UnknownStudy {
        /// The partition key.
        partition: i64,
        /// The study.
        study_uid: String,
    },
    /// The new item is malformed.
    #[error("invalid work item: {0}")]
    Invalid(String),
}

/// One kind a claimer can run, with the properties the store needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimKind {
    /// The kind.
    pub kind: WorkKind,
    /// How its items lock their study.
    pub study_lock: StudyLock,
    /// Counts against `max_memory_heavy`.
    pub memory_heavy: bool,
}

/// A claim: who claims, for how long, what, and how many.
#[derive(Debug, Clone)]
pub struct ClaimRequest<'a> {
    /// The claimer's identity, stored as the items' `processor_id`.
    pub processor_id: &'a str,
    /// How long the lease holds unless renewed.
    pub lease: Duration,
    /// The kinds to consider; items of other kinds are never claimed.
    pub kinds: &'a [ClaimKind],
    /// Most items to claim.
    pub limit: usize,
    /// Most items below [`WorkPriority::High`] among them.
    pub max_normal: usize,
    /// Most items of memory-heavy kinds among them.
    pub max_memory_heavy: usize,
}

/// What happens to an item whose attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureAction {
    /// Pending again, this long from now (by the store's clock).
    RetryAfter(Duration),
    /// Failed: it stays until a person retries or deletes it.
    Permanent,
}

/// Keeps a cross-process wake-up subscription alive (PostgreSQL
/// LISTEN/NOTIFY); dropping it stops the subscription.
pub struct WorkWatch(#[allow(dead_code)] Box<dyn Send>);

impl WorkWatch {
    /// Wraps whatever keeps the subscription running; it is dropped to stop.
    pub fn new(guard: impl Send + 'static) -> WorkWatch {
        WorkWatch(Box::new(guard))
    }
}

impl std::fmt::Debug for WorkWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WorkWatch")
    }
}

/// The work queue's persistent state. Implementations are `Send + Sync`
/// and block the calling thread (never call from an async executor).
pub trait WorkStore: Send + Sync + std::fmt::Debug {
    /// Creates an item. `priority` None is Medium, `scheduled_at` None is
    /// now; the study, when named, must be stored in the partition.
    fn enqueue(&self, item: &NewWorkItem) -> Result<WorkItemId, WorkError>;

    /// Adds `item.uids` to the waiting (Idle or Pending) item of the same
    /// partition, kind and study, if there is one, moving its scheduled and
    /// expiry times to the later of both and its priority to the higher
    /// (instances already listed are not repeated); otherwise creates the
    /// item. What StudyProcess needs while a study's instances keep
    /// arriving: one item per quiet period, not one per instance.
    fn enqueue_or_append(&self, item: &NewWorkItem) -> Result<Enqueued, WorkError>;

    /// Claims up to `request.limit` claimable items atomically (see the
    /// module docs), with their instance lists.
    fn claim(&self, request: &ClaimRequest<'_>) -> Result<Vec<WorkItem>, WorkError>;

    /// Extends the lease to `duration` from now; returns the new expiry.
    fn renew_lease(&self, lease: Lease, duration: Duration) -> Result<Timestamp, WorkError>;

    /// Marks the item Completed and ends the lease.
    fn complete(&self, lease: Lease) -> Result<(), WorkError>;

    /// Records a failed attempt: `failure_count + 1`, the description, and
    /// Pending at a later time or Failed.
    fn fail(&self, lease: Lease, description: &str, action: FailureAction)
        -> Result<(), WorkError>;

    /// Pending again from `until`, without counting a failure.
    fn postpone(&self, lease: Lease, until: Timestamp) -> Result<(), WorkError>;

    /// Gives the claim back unstarted (shutdown): Pending, due now, without
    /// counting a failure.
    fn release(&self, lease: Lease) -> Result<(), WorkError>;

    /// Operator: a Failed item becomes Pending, due now; its failure count
    /// and last description are kept.
    fn retry(&self, id: WorkItemId) -> Result<(), WorkError>;

    /// Operator: removes an item and its instance list. Refused while it
    /// runs under a valid lease.
    fn delete(&self, id: WorkItemId) -> Result<(), WorkError>;

    /// Operator: a waiting (Idle or Pending) item becomes due at `at`,
    /// later (postpone) or sooner; refused for items running, failed or
    /// completed.
    fn reschedule(&self, id: WorkItemId, at: Timestamp) -> Result<(), WorkError>;

    /// Operator: changes an item's priority (refused once Completed).
    fn reprioritise(&self, id: WorkItemId, priority: WorkPriority) -> Result<(), WorkError>;

    /// The items a filter selects, by key, without their instance lists.
    fn list(&self, filter: &WorkFilter) -> Result<Vec<WorkItem>, WorkError>;

    /// One item with its instance list.
    fn get(&self, id: WorkItemId) -> Result<Option<WorkItem>, WorkError>;

    /// Removes Completed items last changed before `before`; returns how many.
    fn purge_completed(&self, before: Timestamp) -> Result<u64, WorkError>;

    /// Subscribes to "new work" signals from other processes: `wake` is
    /// called (from another thread) after an item is enqueued, retried,
    /// released or finished anywhere. None: this backend cannot, and
    /// engines poll.
    fn watch(&self, wake: Box<dyn Fn() + Send + Sync>) -> Result<Option<WorkWatch>, WorkError> {
        let _ = wake;
        Ok(None)
    }
}

/// Why [`WorkStore::reschedule`] refuses an item.
pub(crate) const RESCHEDULE_REFUSED: &str =
    "only waiting (idle or pending) items can be rescheduled; retry a failed one";

/// Checks what a store accepts before it writes anything.
pub(crate) fn validate(item: &NewWorkItem) -> Result<(), WorkError> {
    if !matches!(item.status, WorkStatus::Pending | WorkStatus::Idle) {
        return Err(WorkError::Invalid(format!(
            "a new item is pending or idle, not {}",
            item.status
        )));
    }
    if serde_json::from_str::<serde::de::IgnoredAny>(&item.payload).is_err() {
        return Err(WorkError::Invalid(format!(
            "the payload is not JSON: {:?}",
            item.payload.chars().take(80).collect::<String>()
        )));
    }
    Ok(())
}

/// The description stored when a lease is taken over.
pub(crate) fn takeover_description(previous: Option<&str>, attempt: i64) -> String {
    format!(
        "the lease of attempt {attempt} (processor {}) expired: taken over",
        previous.unwrap_or("unknown")
    )
}

/// Why a lease check failed, for [`WorkError::LeaseLost`] and
/// [`WorkError::NotFound`], from the item's current state (None: deleted).
pub(crate) fn lease_lost(lease: Lease, current: Option<(WorkStatus, i64)>) -> WorkError {
    let current = match current {
        None => "the item was deleted".to_string(),
        Some((status, attempt)) if attempt != i64::from(lease.attempt) => {
            format!("it is {status} under attempt {attempt}")
        }
        Some((status, _)) => format!("it is {status}"),
    };
    WorkError::LeaseLost { lease, current }
}

/// The refusal of an operator transition, from the item's current status.
pub(crate) fn refused(
    id: WorkItemId,
    status: Option<WorkStatus>,
    reason: &'static str,
) -> WorkError {
    match status {
        None => WorkError::NotFound { id },
        Some(status) => WorkError::IllegalTransition { id, status, reason },
    }
}

/// A claimable item as both backends' candidate statements list it
/// (`id, study_storage_id, type, priority, scheduled_time, status,
/// processor_id, attempt`).
#[derive(Debug)]
pub(crate) struct Candidate {
    /// The item's key.
    pub(crate) id: i64,
    /// Its study storage row, if it is bound to a study.
    pub(crate) study: Option<i64>,
    /// Its kind's name.
    pub(crate) kind: String,
    /// Its priority rank.
    pub(crate) priority: i64,
    /// When it is due (ms since the Unix epoch).
    pub(crate) scheduled: i64,
    /// Whether another processor's lease on it has expired (a takeover).
    pub(crate) in_progress: bool,
    /// The processor that held it last.
    pub(crate) processor_id: Option<String>,
    /// Its attempt counter.
    pub(crate) attempt: i64,
}

impl Candidate {
    /// A row of a candidate statement.
    pub(crate) fn from_row<R: Columns>(r: &R) -> Result<Candidate, R::Error> {
        Ok(Candidate {
            id: r.int("id")?,
            study: r.opt_int("study_storage_id")?,
            kind: r.text("type")?,
            priority: r.int("priority")?,
            scheduled: r.int("scheduled_time")?,
            in_progress: r.text("status")? == "in_progress",
            processor_id: r.opt_text("processor_id")?,
            attempt: r.int("attempt")?,
        })
    }
}

/// The candidates a claim takes, in claim order (priority, then due time,
/// then key): within the request's limit and caps, and per study either one
/// writer or only readers (counting the candidates taken before).
pub(crate) fn choose_claims<'k>(
    mut candidates: Vec<Candidate>,
    kinds: &std::collections::HashMap<&str, &'k ClaimKind>,
    request: &ClaimRequest<'_>,
) -> Vec<(Candidate, &'k ClaimKind)> {
    candidates.sort_by_key(|c| (-c.priority, c.scheduled, c.id));
    let mut chosen: Vec<(Candidate, &ClaimKind)> = Vec::new();
    let (mut normal, mut heavy) = (0usize, 0usize);
    // Studies taken so far: true when a writer holds one.
    let mut studies: std::collections::HashMap<i64, bool> = std::collections::HashMap::new();
    for c in candidates {
        if chosen.len() >= request.limit {
            break;
        }
        let Some(kind) = kinds.get(c.kind.as_str()).copied() else {
            continue;
        };
        let high = WorkPriority::from_rank(c.priority).is_high();
        if (!high && normal >= request.max_normal)
            || (kind.memory_heavy && heavy >= request.max_memory_heavy)
        {
            continue;
        }
        let write = kind.study_lock == StudyLock::Write;
        if let Some(study) = c.study {
            if matches!(studies.get(&study), Some(&writer) if writer || write) {
                continue;
            }
            studies.insert(study, write);
        }
        normal += usize::from(!high);
        heavy += usize::from(kind.memory_heavy);
        chosen.push((c, kind));
    }
    chosen
}

/// The `status` column of a work item row.
pub(crate) fn status_from_row<R: Columns>(r: &R) -> Result<WorkStatus, R::Error> {
    let status = r.text("status")?;
    WorkStatus::parse(&status).ok_or_else(|| {
        r.invalid(
            "status",
            format!("unknown work item status {status:?}").into(),
        )
    })
}

/// A row of the backends' item statements (`id, partition_id,
/// study_storage_id, study_uid, type, status, priority, scheduled_time,
/// expiration_time, failure_count, failure_description, processor_id,
/// lease_expires_at, attempt, payload, created_at, updated_at, uid_count`),
/// without its instances.
pub(crate) fn item_from_row<R: Columns>(r: &R) -> Result<WorkItem, R::Error> {
    let study = match r.opt_int("study_storage_id")? {
        Some(storage) => Some(WorkStudy {
            storage: StudyStorageId(storage),
            study_uid: r.uid("study_uid")?,
        }),
        None => None,
    };
    let to_u32 = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
    let at = |column: &str| Ok(r.opt_int(column)?.map(Timestamp::from_millis));
    Ok(WorkItem {
        id: WorkItemId(r.int("id")?),
        partition: crate::model::PartitionId(r.int("partition_id")?),
        study,
        kind: r.parsed("type", WorkKind::new)?,
        status: status_from_row(r)?,
        priority: WorkPriority::from_rank(r.int("priority")?),
        scheduled_at: Timestamp::from_millis(r.int("scheduled_time")?),
        expires_at: at("expiration_time")?,
        failure_count: to_u32(r.count("failure_count")?),
        failure_description: r.opt_text("failure_description")?,
        processor_id: r.opt_text("processor_id")?,
        lease_expires_at: at("lease_expires_at")?,
        attempt: to_u32(r.count("attempt")?),
        payload: r.text("payload")?,
        uids: Vec::new(),
        uid_count: r.count("uid_count")?,
        created_at: Timestamp::from_millis(r.int("created_at")?),
        updated_at: Timestamp::from_millis(r.int("updated_at")?),
    })
}

/// A duration in whole milliseconds (saturating).
pub(crate) fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// The refusal of an item bound to a study the index does not hold.
pub(crate) fn unknown_study(item: &NewWorkItem) -> WorkError {
    WorkError::UnknownStudy {
        partition: item.partition.0,
        study_uid: item
            .study_uid
            .as_ref()
            .map(|u| u.as_str().to_string())
            .unwrap_or_default(),
    }
}
