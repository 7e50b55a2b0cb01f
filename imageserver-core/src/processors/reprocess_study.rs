//! `reprocess_study`: rebuild a study's rows from its files.

use super::{on_error, payload, step, study_uid, AuditPayload, BuiltinDeps};
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
        let partition = step!(self.deps.partition(item));
        let study = step!(study_uid(item));
        let audit: AuditPayload = step!(payload(item));
        match self.deps.studies.reprocess(partition, study, audit.actor()) {
            Ok(report) => {
                tracing::info!(
                    study_uid = %study,
                    removed = report.removed_instances,
                    indexed = report.indexed_instances,
                    skipped = report.skipped.len(),
                    "study reprocessed"
                );
                StepResult::Done
            }
            Err(error) => on_error(&error, ctx.properties().retry.failure_delay),
        }
    }
}
