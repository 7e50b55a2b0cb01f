//! `migrate_study`: a study's files to another filesystem (tier).

use super::{or_retry, step, BuiltinDeps};
use crate::model::requests::MigratePayload;
use crate::model::work::WorkItem;
use crate::model::FilesystemId;
use crate::workqueue::{ProcessContext, Processor, StepResult};

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

impl MigrateStudy {
    /// For a study on `tier`: the enabled, writable filesystem of the next
    /// tier down (lowest key first); `None` when the study is elsewhere (or
    /// nearline) or no lower tier exists.
    fn next_tier(
        &self,
        partition: &crate::services::Partition,
        study: &crate::model::Uid,
        tier: u8,
    ) -> Result<Option<i64>, StepResult> {
        let transient = |e: crate::db::Error| {
            StepResult::RetryAfter(
                std::time::Duration::from_secs(30),
                crate::model::error_chain(&e),
            )
        };
        let Some(location) = self
            .deps
            .db
            .study_location(partition.id, study)
            .map_err(transient)?
        else {
            return Ok(None);
        };
        let filesystems = self.deps.db.filesystems().map_err(transient)?;
        let here = filesystems.iter().find(|fs| fs.id == location.filesystem);
        if here.is_none_or(|fs| fs.spec.tier.0 != tier) {
            return Ok(None);
        }
        let target = filesystems
            .iter()
            .filter(|fs| fs.spec.tier.0 > tier && fs.enabled && !fs.spec.read_only)
            .min_by_key(|fs| (fs.spec.tier, fs.id));
        if target.is_none() {
            tracing::warn!(study_uid = %study, tier, "tier retention: no lower tier to migrate to");
        }
        Ok(target.map(|fs| fs.id.0))
    }
}

impl Processor for MigrateStudy {
    fn process(&self, item: &WorkItem, ctx: &ProcessContext<'_>) -> StepResult {
        let (partition, study, payload) = step!(self.deps.study_item::<MigratePayload>(item));
        let to = match (payload.to, payload.off_tier) {
            (Some(to), _) => to,
            (None, Some(tier)) => match step!(self.next_tier(partition, study, tier)) {
                Some(to) => to,
                None => return StepResult::Done,
            },
            (None, None) => {
                return StepResult::Fail(
                    "a migrate_study item must name its target (\"to\" or \"off_tier\")".into(),
                )
            }
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
