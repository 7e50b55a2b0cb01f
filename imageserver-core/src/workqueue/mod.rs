//! The WorkQueue engine: background work stored in the database, claimed
//! under leases and run on a pool of threads.
//!
//! **Architecture invariant:** the engine does not know what DICOM is. It
//! claims items, holds and renews their leases, enforces per-study
//! read/write locks (through the store), retries with backoff, and hands
//! each item to the [`Processor`] its [`WorkKind`] is registered with in a
//! [`Registry`]. What an item *does* lives in the processors, so an
//! embedding product adds a work type with one trait implementation and
//! one registry call (see `examples/custom_processor.rs`).
//!
//! - [`Engine::start`] runs a claimer thread, `threads` workers and a
//!   housekeeper (lease renewal at a third of the lease, purge of old
//!   completed items); [`Engine::shutdown`] stops claiming, gives back
//!   unstarted claims, lets running items finish within a grace period.
//! - [`WorkQueue`] is the cheap handle services enqueue through: it applies
//!   the kind's default priority and processing delay and wakes the local
//!   engine at once; other processes are woken by PostgreSQL NOTIFY, or
//!   find the item at their next poll (SQLite).
//! - A processor returns a [`StepResult`]: done, retry after a delay (with
//!   the kind's [`RetryPolicy`] backoff and failure limit), postpone, or
//!   fail. A panic fails the item with the panic message; other items go
//!   on. Failed items stay until a person retries or deletes them.
//! - Every item runs inside a `work_item` tracing span with the fields
//!   `work_item`, `kind`, `study_uid` and `attempt`.
//!
//! Invariant 3 (a work item runs on at most one node at a time) rests on
//! the lease: a claim holds until it expires, the engine renews it while
//! the item runs, and a takeover after expiry bumps the attempt so that the
//! old holder's outcome is refused. Processors must be idempotent: an item
//! whose holder died runs again.

mod engine;
mod kind;
mod processor;
mod registry;

pub use engine::{default_processor_id, Engine, EngineConfig, Error, ShutdownReport, WorkQueue};
pub use kind::{KindOverride, KindProperties, RetryPolicy};
pub use processor::{ProcessContext, Processor, StepResult};
pub use registry::Registry;

pub use crate::db::work::{WorkError, WorkStore};
pub use crate::model::work::{
    Enqueued, Lease, NewWorkItem, StudyLock, Timestamp, WorkFilter, WorkItem, WorkItemId, WorkKind,
    WorkPriority, WorkStatus, WorkUid,
};

#[cfg(all(test, feature = "sqlite"))]
mod tests;
