//! `delete_study`: files and rows, with an audit record.

use super::{on_error, payload, step, study_uid, AuditPayload, BuiltinDeps};
use crate::model::work::WorkItem;
use crate::workqueue::{ProcessContext, Processor, StepResult};

/// Deletes the item's study ([`crate::services::studies::Studies::delete`],
/// idempotent: a rerun finishes the files; a study already gone is done).
#[derive(Debug, Clone)]
pub struct DeleteStudy {
    deps: BuiltinDeps,
}

impl DeleteStudy {
    /// The processor.
    pub fn new(deps: BuiltinDeps) -> DeleteStudy {
        DeleteStudy { deps }
    }
}

impl Processor for DeleteStudy {
    fn process(&self, item: &WorkItem, ctx: &ProcessContext<'_>) -> StepResult {
        let partition = step!(self.deps.partition(item));
        let study = step!(study_uid(item));
        let audit: AuditPayload = step!(payload(item));
        match self
            .deps
            .studies
            .delete(partition, study, audit.actor(), audit.reason())
        {
            Ok(outcome) => {
                tracing::info!(study_uid = %study, ?outcome, "study deleted");
                StepResult::Done
            }
            Err(error) => on_error(&error, ctx.properties().retry.failure_delay),
        }
    }
}
