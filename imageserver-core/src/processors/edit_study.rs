//! `edit_study`: change patient/study attributes in the index and files.

use super::{on_error, payload, step, study_uid, AuditPayload, BuiltinDeps};
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
        let partition = step!(self.deps.partition(item));
        let study = step!(study_uid(item));
        let audit: AuditPayload = step!(payload(item));
        if audit.values.is_empty() {
            return StepResult::Fail("an edit_study item needs \"values\"".to_string());
        }
        let values = step!(audit
            .values
            .iter()
            .map(|v| EditValue::parse(v))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| StepResult::Fail(e.to_string())));
        match self
            .deps
            .studies
            .edit(partition, study, &values, audit.actor(), audit.reason())
        {
            Ok(outcome) => {
                tracing::info!(study_uid = %study, ?outcome, "study edited");
                StepResult::Done
            }
            Err(error) => on_error(&error, ctx.properties().retry.failure_delay),
        }
    }
}
