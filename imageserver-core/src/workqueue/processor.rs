//! What an item does: the [`Processor`] trait and what it returns.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::{KindProperties, WorkQueue};
use crate::model::work::{Lease, Timestamp, WorkItem};

/// Runs the items of one kind. Called on a worker thread with the claimed
/// item (its instance list loaded); returns what should happen next.
///
/// Processors must be **idempotent**: an item may run again after a crash
/// or a lost lease (invariant 3), so a second run must not duplicate what
/// the first one did. A panic is caught: the item fails with the panic's
/// message and the other items go on.
pub trait Processor: Send + Sync {
    /// Processes one item.
    fn process(&self, item: &WorkItem, ctx: &ProcessContext<'_>) -> StepResult;
}

impl<F> Processor for F
where
    F: Fn(&WorkItem, &ProcessContext<'_>) -> StepResult + Send + Sync,
{
    fn process(&self, item: &WorkItem, ctx: &ProcessContext<'_>) -> StepResult {
        self(item, ctx)
    }
}

/// What happens to an item after its processor returned.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StepResult {
    /// Finished: the item is Completed.
    Done,
    /// A transient failure (a peer down, a file busy): counted, and tried
    /// again after at least this long (the kind's backoff may wait longer),
    /// or Failed once the kind's failure limit is reached.
    RetryAfter(Duration, String),
    /// Not now, and not a failure: Pending again from this time.
    PostponeUntil(Timestamp),
    /// A permanent failure: Failed, until a person retries or deletes it.
    Fail(String),
}

/// What a processor knows about the claim it runs under.
#[derive(Debug)]
pub struct ProcessContext<'a> {
    pub(super) lease: Lease,
    pub(super) processor_id: &'a str,
    pub(super) properties: &'a KindProperties,
    pub(super) cancelled: &'a AtomicBool,
    pub(super) queue: &'a WorkQueue,
}

impl ProcessContext<'_> {
    /// The claim: the item and its attempt number (the fencing token).
    pub fn lease(&self) -> Lease {
        self.lease
    }

    /// The attempt number (1 on the first run, higher after retries and
    /// takeovers).
    pub fn attempt(&self) -> u32 {
        self.lease.attempt
    }

    /// The engine's identity (the item's `processor_id`).
    pub fn processor_id(&self) -> &str {
        self.processor_id
    }

    /// The properties of the item's kind.
    pub fn properties(&self) -> &KindProperties {
        self.properties
    }

    /// The work queue, to enqueue follow-up work (a StudyProcess that finds
    /// a mismatch schedules a ReprocessStudy); it wakes this engine.
    pub fn work_queue(&self) -> &WorkQueue {
        self.queue
    }

    /// True once the lease was lost (taken over by another engine) or the
    /// engine gave up waiting for this item at shutdown: a long processor
    /// should stop at its next safe point; its outcome will be discarded.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }
}
