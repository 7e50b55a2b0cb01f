//! `delete_study`: files and rows, with an audit record.

use super::{or_retry, step, AuditPayload, BuiltinDeps};
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
        let (partition, study, audit) = step!(self.deps.study_item::<AuditPayload>(item));
        let deleted = self
            .deps
            .studies
            .delete(partition, study, audit.actor(), audit.reason());
        let outcome = step!(or_retry(deleted, ctx));
        tracing::info!(study_uid = %study, ?outcome, "study deleted");
        StepResult::Done
    }
}
