//! `edit_study`: change patient/study attributes in the index and files.

use super::{or_retry, step, AuditPayload, BuiltinDeps};
use crate::model::work::WorkItem;
use crate::services::studies::EditValue;
use crate::workqueue::{ProcessContext, Processor, StepResult};

/// Edits the item's study ([`crate::services::studies::Studies::edit`]; a
/// rerun resumes the pending edit with the same values).
#[derive(Debug, Clone)]
pub struct EditStudy {
    deps: BuiltinDeps,
}

impl EditStudy {
    /// The processor.
    pub fn new(deps: BuiltinDeps) -> EditStudy {
        EditStudy { deps }
    }
}

impl Processor for EditStudy {
    fn process(&self, item: &WorkItem, ctx: &ProcessContext<'_>) -> StepResult {
        let (partition, study, audit) = step!(self.deps.study_item::<AuditPayload>(item));
        if audit.values.is_empty() {
            return StepResult::Fail("an edit_study item needs \"values\"".to_string());
        }
        let values = step!(audit
            .values
            .iter()
            .map(|v| EditValue::parse(v))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| StepResult::Fail(e.to_string())));
        let edited =
            self.deps
                .studies
                .edit(partition, study, &values, audit.actor(), audit.reason());
        let outcome = step!(or_retry(edited, ctx));
        tracing::info!(study_uid = %study, ?outcome, "study edited");
        StepResult::Done
    }
}
