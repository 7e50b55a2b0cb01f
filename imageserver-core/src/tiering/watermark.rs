//! The watermark service: a filesystem used at or above its high watermark
//! has its least recently accessed studies migrated to the next tier until
//! its projected usage is below its low watermark.
//!
//! It runs after every refresh of the filesystems ([`super::Monitor`],
//! every `filesystem_refresh_secs`), so a filesystem that crossed its high
//! watermark with a commit is seen within one interval. It only enqueues
//! `migrate_study` items, at most `migration_batch` per filesystem and
//! round, counting the studies already queued: the work queue's engine does
//! the copying, beside ingest, never in its way.

use crate::db::{self, Database};
use crate::model::{FilesystemId, PartitionId, Uid};

use super::FilesystemReport;

/// One migration the watermarks call for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedMigration {
    /// The study's partition.
    pub partition: PartitionId,
    /// The study.
    pub study_uid: Uid,
    /// Where it goes; `None`: nowhere, it is purged (archived already, its
    /// pack holds its current content: it becomes nearline).
    pub to: Option<FilesystemId>,
    /// Its bytes.
    pub bytes: u64,
}

/// The migrations that bring every filesystem at or above its high
/// watermark under its low one (projected: the studies already queued
/// count as gone), at most `batch` per filesystem. The target is the
/// enabled, writable, unrefused filesystem of the next tier down that is
/// below its own high watermark, the one with the most room.
pub fn plan(
    db: &dyn Database,
    reports: &[FilesystemReport],
    batch: u64,
) -> Result<Vec<PlannedMigration>, db::Error> {
    plan_noting(db, reports, batch, &mut |_| {})
}

/// [`plan`], telling `stuck` of each filesystem above its high watermark
/// that has no lower tier to migrate to (the caller logs it once).
pub(super) fn plan_noting(
    db: &dyn Database,
    reports: &[FilesystemReport],
    batch: u64,
    stuck: &mut dyn FnMut(&FilesystemReport),
) -> Result<Vec<PlannedMigration>, db::Error> {
    let mut planned = Vec::new();
    for report in reports {
        let fs = &report.filesystem;
        let Some(usage) = report.usage else { continue };
        if usage.used_percent() < fs.spec.high_watermark {
            continue;
        }
        let used = usage.total_bytes.saturating_sub(usage.available_bytes);
        let goal = (usage.total_bytes as f64 * fs.spec.low_watermark / 100.0) as u64;
        let (queued, candidates) = db.migration_candidates(fs.id, batch)?;
        let mut projected = used.saturating_sub(queued);
        // Archived studies first: their pack is a copy already, so purging
        // them frees the space without writing anywhere.
        let mut purged = std::collections::BTreeSet::new();
        for (partition, study_uid, bytes) in db.purge_candidates(fs.id, batch)? {
            if projected < goal {
                break;
            }
            projected = projected.saturating_sub(bytes);
            purged.insert((partition, study_uid.clone()));
            planned.push(PlannedMigration {
                partition,
                study_uid,
                to: None,
                bytes,
            });
        }
        if projected < goal {
            continue;
        }
        let target = reports
            .iter()
            .filter(|r| r.filesystem.spec.tier > fs.spec.tier)
            .filter(|r| r.filesystem.enabled && !r.filesystem.spec.read_only)
            .filter(|r| r.marker.refusal().is_none())
            .filter(|r| {
                r.usage
                    .is_some_and(|u| u.used_percent() < r.filesystem.spec.high_watermark)
            })
            .min_by_key(|r| {
                (
                    r.filesystem.spec.tier,
                    std::cmp::Reverse(r.usage.map_or(0, |u| u.available_bytes)),
                )
            });
        let Some(target) = target else {
            stuck(report);
            continue;
        };
        for (partition, study_uid, bytes) in candidates {
            if projected < goal {
                break;
            }
            if purged.contains(&(partition, study_uid.clone())) {
                continue;
            }
            projected = projected.saturating_sub(bytes);
            planned.push(PlannedMigration {
                partition,
                study_uid,
                to: Some(target.filesystem.id),
                bytes,
            });
        }
    }
    Ok(planned)
}
