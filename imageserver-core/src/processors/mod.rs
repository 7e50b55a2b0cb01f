//! The archive's built-in work item processors: what the WorkQueue engine
//! runs for the kinds of [`WorkKind`]'s constants.
//!
//! Each processor is a thin adapter from a work item (its study, its JSON
//! payload, its instance list) to a study operation of
//! [`crate::services::studies::Studies`]; the engine stays DICOM-free.
//! [`register_builtin`] registers them all; the composition root
//! ([`crate::server::ServerBuilder`]) calls it, and an embedding product may
//! replace any of them afterwards by registering the kind again.
//!
//! | kind | payload | study lock |
//! |---|---|---|
//! | `delete_study` | `{"actor", "reason"}` | write |
//! | `edit_study` | `{"values": ["Keyword=value"…], "actor", "reason"}` | write |
//! | `reprocess_study` | `{"actor"}` | write |
//! | `move_study` | `{"destination": AE}`; instance UIDs: a subset (none: all) | read |
//! | `auto_route` | `{"destination": AE, "rule": name}`; as `move_study` | read |
//! | `study_process` | none; instance UIDs: what arrived | read |
//! | `migrate_study` | `{"to": filesystem id}` | write |
//! | `archive_study` | none | read |
//! | `purge_study` | `{"after_days": N}` (an `online_retention` rule's: once the pack is N days old); archives first when the pack is missing or stale | write |
//! | `restore_study` | none | write |
//! | `compress_study` | none | write |
//!
//! All payload fields are optional but `destination`.

mod archive_study;
mod auto_route;
mod compress_study;
mod delete_study;
mod edit_study;
mod migrate_study;
mod move_study;
mod reprocess_study;
mod study_process;

use std::sync::Arc;
use std::time::Duration;

pub use archive_study::{ArchiveStudy, PurgeStudy, RestoreStudy};
pub use auto_route::AutoRoute;
pub use compress_study::CompressStudy;
pub use delete_study::DeleteStudy;
pub use edit_study::EditStudy;
pub use migrate_study::MigrateStudy;
pub use move_study::MoveStudy;
pub use reprocess_study::ReprocessStudy;
pub use study_process::StudyProcess;
// The payloads and requests live in the model (enqueuers use them without
// reaching up here); re-exported where processors were always read from.
pub use crate::model::requests::{
    AuditPayload, MigratePayload, PurgePayload, SendPayload, StudyRequest, DEFAULT_ACTOR,
};

use crate::db::Database;
use crate::model::work::{StudyLock, WorkItem, WorkKind, WorkPriority};
use crate::model::Uid;
use crate::rules::RuleSet;
use crate::services::studies::{Studies, StudyError};
use crate::services::Partition;
use crate::workqueue::{KindProperties, ProcessContext, Registry, RetryPolicy, StepResult};

/// How long a send waits when its device is at its association limit.
const DEVICE_BUSY_POSTPONE: Duration = Duration::from_secs(2);

/// What the built-in processors need from the archive.
#[derive(Debug, Clone)]
pub struct BuiltinDeps {
    /// The study operations.
    pub studies: Studies,
    /// The index (rules facts, instance lists).
    pub db: Arc<dyn Database>,
    /// The archive's partitions.
    pub partitions: Vec<Partition>,
    /// The rules StudyProcess applies (None: no rules).
    pub rules: Option<Arc<RuleSet>>,
}

impl BuiltinDeps {
    /// The partition of an item.
    pub(crate) fn partition(&self, item: &WorkItem) -> Result<&Partition, StepResult> {
        self.partitions
            .iter()
            .find(|p| p.id == item.partition)
            .ok_or_else(|| {
                StepResult::Fail(format!(
                    "partition {:?} is not served by this archive",
                    item.partition
                ))
            })
    }

    /// What an item bound to a study names: its partition, its study and
    /// its payload (a failure when any is missing or invalid).
    pub(crate) fn study_item<'a, P: serde::de::DeserializeOwned + Default>(
        &'a self,
        item: &'a WorkItem,
    ) -> Result<(&'a Partition, &'a Uid, P), StepResult> {
        Ok((self.partition(item)?, study_uid(item)?, payload(item)?))
    }
}

/// The retry policy of sends: a destination may be down for a while.
pub fn send_retry_policy() -> RetryPolicy {
    RetryPolicy {
        max_failures: 10,
        failure_delay: Duration::from_secs(10),
        backoff: 2.0,
        max_delay: Duration::from_secs(30 * 60),
    }
}

/// Registers the built-in kinds. `study_process_delay` is how long a study
/// must be quiet before StudyProcess runs.
pub fn register_builtin(registry: &mut Registry, deps: BuiltinDeps, study_process_delay: Duration) {
    let write = KindProperties::new().study_lock(StudyLock::Write);
    let read = KindProperties::new().study_lock(StudyLock::Read);
    registry
        .register(
            WorkKind::DELETE_STUDY,
            write.clone(),
            DeleteStudy::new(deps.clone()),
        )
        .register(
            WorkKind::EDIT_STUDY,
            write.clone().priority(WorkPriority::High),
            EditStudy::new(deps.clone()),
        )
        .register(
            WorkKind::REPROCESS_STUDY,
            write.clone().memory_heavy(true),
            ReprocessStudy::new(deps.clone()),
        )
        .register(
            WorkKind::MIGRATE_STUDY,
            write.clone(),
            MigrateStudy::new(deps.clone()),
        )
        .register(
            WorkKind::PURGE_STUDY,
            write.clone(),
            PurgeStudy::new(deps.clone()),
        )
        .register(
            WorkKind::RESTORE_STUDY,
            write.clone().priority(WorkPriority::High),
            RestoreStudy::new(deps.clone()),
        )
        .register(
            WorkKind::ARCHIVE_STUDY,
            read.clone().priority(WorkPriority::Low),
            ArchiveStudy::new(deps.clone()),
        )
        .register(
            WorkKind::COMPRESS_STUDY,
            write.memory_heavy(true),
            CompressStudy::new(deps.clone()),
        )
        .register(
            WorkKind::MOVE_STUDY,
            read.clone()
                .priority(WorkPriority::High)
                .retry(send_retry_policy()),
            MoveStudy::new(deps.clone(), WorkKind::MOVE_STUDY),
        )
        .register(
            WorkKind::AUTO_ROUTE,
            read.clone().retry(send_retry_policy()),
            AutoRoute::new(deps.clone()),
        )
        .register(
            WorkKind::STUDY_PROCESS,
            read.processing_delay(study_process_delay),
            StudyProcess::new(deps),
        );
}

/// The outcome of a failed study operation: permanent for what a retry
/// cannot change, transient otherwise.
pub(crate) fn on_error(error: &StudyError, retry_after: Duration) -> StepResult {
    let text = crate::model::error_chain(error);
    match error {
        // Not a failure: the item waits for an association to the device.
        StudyError::DeviceBusy { ae_title, .. } => {
            tracing::debug!(device = %ae_title, "device at its send limit; postponing");
            StepResult::PostponeUntil(
                crate::model::work::Timestamp::now().after(DEVICE_BUSY_POSTPONE),
            )
        }
        StudyError::UnknownStudy { .. }
        | StudyError::Nearline(_)
        | StudyError::NoArchive
        | StudyError::NotArchived(_)
        | StudyError::StaleArchive(_)
        | StudyError::EditPending(_)
        | StudyError::InvalidEdit(_)
        | StudyError::UnknownDevice { .. } => StepResult::Fail(text),
        _ => StepResult::RetryAfter(retry_after, text),
    }
}

/// A study operation's value, or what [`on_error`] makes of its error
/// with the kind's failure delay.
pub(crate) fn or_retry<T>(
    result: Result<T, StudyError>,
    ctx: &ProcessContext<'_>,
) -> Result<T, StepResult> {
    result.map_err(|error| on_error(&error, ctx.properties().retry.failure_delay))
}

/// Parses an item's JSON payload (`{}` or empty when none).
pub(crate) fn payload<T: serde::de::DeserializeOwned + Default>(
    item: &WorkItem,
) -> Result<T, StepResult> {
    let text = item.payload.trim();
    if text.is_empty() {
        return Ok(T::default());
    }
    serde_json::from_str(text)
        .map_err(|e| StepResult::Fail(format!("invalid {} payload: {e}", item.kind)))
}

/// The study an item is bound to.
pub(crate) fn study_uid(item: &WorkItem) -> Result<&Uid, StepResult> {
    item.study_uid()
        .ok_or_else(|| StepResult::Fail(format!("a {} item must name a study", item.kind)))
}

/// `?` for processors: the early return is the step result.
macro_rules! step {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(step) => return step,
        }
    };
}
pub(crate) use step;
