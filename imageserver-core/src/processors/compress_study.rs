//! `compress_study`: a study's images re-encoded losslessly.

use super::{or_retry, step, BuiltinDeps};
use crate::model::work::WorkItem;
use crate::workqueue::{ProcessContext, Processor, StepResult};

/// Compresses the item's study
/// ([`crate::services::studies::Studies::compress`]: each file recoded,
/// verified by decoding against the original, swapped, recorded per batch;
/// a rerun after a crash records what was swapped and goes on). Holds the
/// study's write lock. No payload.
#[derive(Debug, Clone)]
pub struct CompressStudy {
    deps: BuiltinDeps,
}

impl CompressStudy {
    /// The processor.
    pub fn new(deps: BuiltinDeps) -> CompressStudy {
        CompressStudy { deps }
    }
}

impl Processor for CompressStudy {
    fn process(&self, item: &WorkItem, ctx: &ProcessContext<'_>) -> StepResult {
        let partition = step!(self.deps.partition(item));
        let study = step!(super::study_uid(item));
        let report = step!(or_retry(self.deps.studies.compress(partition, study), ctx));
        tracing::info!(
            study_uid = %study,
            compressed = report.compressed + report.resumed,
            saved = report.saved(),
            "compress_study done"
        );
        StepResult::Done
    }
}
