//! `reprocess_study`: rebuild a study's rows from its files.

use super::{or_retry, step, AuditPayload, BuiltinDeps};
use crate::model::work::WorkItem;
use crate::workqueue::{ProcessContext, Processor, StepResult};

/// Rebuilds the item's study's index rows from its files
/// ([`crate::services::studies::Studies::reprocess`]; a rerun rebuilds the
/// same rows).
#[derive(Debug, Clone)]
pub struct ReprocessStudy {
    deps: BuiltinDeps,
}

impl ReprocessStudy {
    /// The processor.
    pub fn new(deps: BuiltinDeps) -> ReprocessStudy {
        ReprocessStudy { deps }
    }
}

impl Processor for ReprocessStudy {
    fn process(&self, item: &WorkItem, ctx: &ProcessContext<'_>) -> StepResult {
        let (partition, study, audit) = step!(self.deps.study_item::<AuditPayload>(item));
        // The service logs what the rebuild did.
        let reprocessed = self.deps.studies.reprocess(partition, study, audit.actor());
        step!(or_retry(reprocessed, ctx));
        StepResult::Done
    }
}
