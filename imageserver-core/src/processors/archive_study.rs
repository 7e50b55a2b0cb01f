//! `archive_study`, `purge_study` and `restore_study`: the HSM archive's
//! work items (see `services/studies/{archive,purge,restore}.rs`).

use std::time::Duration;

use super::{on_error, or_retry, step, BuiltinDeps};
use crate::model::requests::PurgePayload;
use crate::model::work::{Timestamp, WorkItem};
use crate::rules::Action;
use crate::services::studies::StudyError;
use crate::workqueue::{ProcessContext, Processor, StepResult};

/// The payload of archive and restore items: none (an empty object is
/// accepted).
#[derive(Debug, Default, serde::Deserialize)]
struct NoPayload {}

/// How long a restore waits for a slot when the limit is reached.
const RESTORE_SLOT_WAIT: Duration = Duration::from_secs(1);

/// Packs the item's study into the archive root and records it
/// ([`crate::services::studies::Studies::archive`]); a study a rule will
/// delete now is not archived, a nearline or unknown one is done. Holds
/// the study's read lock: the study stays readable.
#[derive(Debug, Clone)]
pub struct ArchiveStudy {
    deps: BuiltinDeps,
}

impl ArchiveStudy {
    /// The processor.
    pub fn new(deps: BuiltinDeps) -> ArchiveStudy {
        ArchiveStudy { deps }
    }

    /// Whether the partition's rules delete the study now.
    fn deleted_by_rule(
        &self,
        partition: &crate::services::Partition,
        study: &crate::model::Uid,
    ) -> bool {
        let Some(rules) = &self.deps.rules else {
            return false;
        };
        let Ok(Some(facts)) =
            crate::rules::dry_run::study_facts(&*self.deps.db, &*self.deps.db, partition.id, study)
        else {
            return false;
        };
        let evaluation = rules.evaluate(&partition.ae_title, &facts, Timestamp::now().as_millis());
        evaluation
            .actions()
            .into_iter()
            .any(|(_, planned)| matches!(planned.action, Action::Delete { .. }) && planned.due_now)
    }
}

impl Processor for ArchiveStudy {
    fn process(&self, item: &WorkItem, ctx: &ProcessContext<'_>) -> StepResult {
        let (partition, study, NoPayload {}) = step!(self.deps.study_item::<NoPayload>(item));
        if self.deleted_by_rule(partition, study) {
            tracing::info!(study_uid = %study, "not archived: a rule deletes it");
            return StepResult::Done;
        }
        match self.deps.studies.archive(partition, study) {
            Ok(report) => {
                tracing::info!(study_uid = %study, pack = %report.path.display(), bytes = report.pack_bytes, written = report.written, "archive_study done");
                StepResult::Done
            }
            Err(StudyError::Nearline(_) | StudyError::UnknownStudy { .. }) => StepResult::Done,
            Err(error) => on_error(&error, ctx.properties().retry.failure_delay),
        }
    }
}

/// Purges the item's archived study to nearline
/// ([`crate::services::studies::Studies::purge`]); a study whose pack is
/// missing or older than its content is archived first. An
/// `online_retention` rule's item ([`PurgePayload::after_days`]) purges
/// only once the current pack is that old: until then it postpones itself
/// to the pack's `archived_at` plus the days (and a study it had to
/// archive is not purged at once, unless the days are 0). Holds the
/// study's write lock.
#[derive(Debug, Clone)]
pub struct PurgeStudy {
    deps: BuiltinDeps,
}

impl PurgeStudy {
    /// The processor.
    pub fn new(deps: BuiltinDeps) -> PurgeStudy {
        PurgeStudy { deps }
    }

    /// When a rule's purge is due: the study's current pack's
    /// `archived_at` plus `hold` (the study is archived first when its pack
    /// is missing or stale).
    fn retention_due(
        &self,
        partition: &crate::services::Partition,
        study: &crate::model::Uid,
        hold: Duration,
        ctx: &ProcessContext<'_>,
    ) -> Result<Timestamp, StepResult> {
        let studies = &self.deps.studies;
        let entry = match studies.current_archive(partition, study) {
            Err(StudyError::NotArchived(_) | StudyError::StaleArchive(_)) => {
                let report = or_retry(studies.archive(partition, study), ctx)?;
                tracing::info!(study_uid = %study, pack = %report.path.display(), "archived for online retention");
                studies.current_archive(partition, study)
            }
            other => other,
        };
        match entry {
            Ok(entry) => Ok(Timestamp::from_millis(entry.archived_at_ms).after(hold)),
            // Deleted while the item waited: nothing to purge.
            Err(StudyError::UnknownStudy { .. }) => Err(StepResult::Done),
            Err(error) => Err(on_error(&error, ctx.properties().retry.failure_delay)),
        }
    }
}

/// A day.
const DAY: Duration = Duration::from_secs(24 * 60 * 60);

impl Processor for PurgeStudy {
    fn process(&self, item: &WorkItem, ctx: &ProcessContext<'_>) -> StepResult {
        let (partition, study, payload) = step!(self.deps.study_item::<PurgePayload>(item));
        let studies = &self.deps.studies;
        let hold = payload.after_days.map(|days| DAY * days);
        if let Some(hold) = hold {
            let due = step!(self.retention_due(partition, study, hold, ctx));
            if Timestamp::now() < due {
                tracing::info!(study_uid = %study, %due, "online retention: purge postponed until the pack is old enough");
                return StepResult::PostponeUntil(due);
            }
        }
        let report = match studies.purge(partition, study) {
            // Instances arrived since the check: run again, which archives
            // them and counts the retention from that pack.
            Err(StudyError::NotArchived(_) | StudyError::StaleArchive(_)) if hold.is_some() => {
                return StepResult::PostponeUntil(Timestamp::now());
            }
            Err(StudyError::NotArchived(_) | StudyError::StaleArchive(_)) => {
                step!(or_retry(studies.archive(partition, study), ctx));
                studies.purge(partition, study)
            }
            other => other,
        };
        let report = step!(or_retry(report, ctx));
        tracing::info!(study_uid = %study, switched = report.switched, removed = report.removed, bytes = report.bytes, "purge_study done");
        StepResult::Done
    }
}

/// Restores the item's nearline study from its pack
/// ([`crate::services::studies::Studies::restore`]); waits for a slot
/// when the configured number of restores run. Holds the study's write
/// lock.
#[derive(Debug, Clone)]
pub struct RestoreStudy {
    deps: BuiltinDeps,
}

impl RestoreStudy {
    /// The processor.
    pub fn new(deps: BuiltinDeps) -> RestoreStudy {
        RestoreStudy { deps }
    }
}

impl Processor for RestoreStudy {
    fn process(&self, item: &WorkItem, ctx: &ProcessContext<'_>) -> StepResult {
        let (partition, study, NoPayload {}) = step!(self.deps.study_item::<NoPayload>(item));
        match self.deps.studies.restore(partition, study) {
            Ok(report) => {
                tracing::info!(study_uid = %study, switched = report.switched, files = report.written, bytes = report.bytes, "restore_study done");
                StepResult::Done
            }
            Err(StudyError::RestoreBusy(_)) => {
                StepResult::PostponeUntil(Timestamp::now().after(RESTORE_SLOT_WAIT))
            }
            Err(error) => on_error(&error, ctx.properties().retry.failure_delay),
        }
    }
}
