//! `migrate_study`: a study's files to another filesystem (tier).

use serde::{Deserialize, Serialize};

use super::{or_retry, step, BuiltinDeps};
use crate::model::work::WorkItem;
use crate::model::FilesystemId;
use crate::workqueue::{ProcessContext, Processor, StepResult};

/// The payload of a `migrate_study` item.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigratePayload {
    /// The target filesystem's key (required).
    pub to: Option<i64>,
}

impl MigratePayload {
    /// The payload as JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| "{}".to_string())
    }
}

/// Migrates the item's study to the payload's filesystem
/// ([`crate::services::studies::Studies::migrate`]: copy, fsync, verify,
/// switch in one transaction, remove the source; a rerun after a crash
/// finishes what was left). Holds the study's write lock.
#[derive(Debug, Clone)]
pub struct MigrateStudy {
    deps: BuiltinDeps,
}

impl MigrateStudy {
    /// The processor.
    pub fn new(deps: BuiltinDeps) -> MigrateStudy {
        MigrateStudy { deps }
    }
}

impl Processor for MigrateStudy {
    fn process(&self, item: &WorkItem, ctx: &ProcessContext<'_>) -> StepResult {
        let (partition, study, payload) = step!(self.deps.study_item::<MigratePayload>(item));
        let Some(to) = payload.to else {
            return StepResult::Fail("a migrate_study item must name its target (\"to\")".into());
        };
        let report = step!(or_retry(
            self.deps
                .studies
                .migrate(partition, study, FilesystemId(to)),
            ctx
        ));
        tracing::info!(
            study_uid = %study,
            copied = report.copied,
            bytes = report.bytes,
            switched = report.switched,
            removed = report.removed,
            "study migrated"
        );
        StepResult::Done
    }
}
