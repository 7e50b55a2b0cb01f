//! The built-in scheduled services.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::ScheduledService;
use crate::config::ArchiveSettings;
use crate::db::Database;
use crate::model::error_chain;
use crate::model::work::{NewWorkItem, WorkKind};
use crate::processors::{AuditPayload, StudyRequest};
use crate::services::import;
use crate::services::studies::{DigestCheck, Studies, StudyError};
use crate::services::{Ingest, Partition};
use crate::storage::StorageBackend;
use crate::tiering::Watermarks;
use crate::workqueue::WorkQueue;

/// Most studies one archive scan queues per partition.
const ARCHIVE_SCAN_BATCH: u64 = 200;

/// Studies the integrity scan lists per page, and most per run.
const INTEGRITY_PAGE: u64 = 500;
const INTEGRITY_MAX_STUDIES: usize = 100_000;

/// A file in a drop folder younger than this may still be being copied in.
const SETTLE: Duration = Duration::from_secs(2);

/// Most files one folder import takes.
const IMPORT_MAX_FILES: usize = 10_000;

/// The watermark check: filesystems measured; archived studies on one at
/// or above its high watermark purged, others migrated to the next tier,
/// until it is projected under its low watermark (`tiering::watermark`).
#[derive(Debug)]
pub struct WatermarkCheck {
    /// The index.
    pub db: Arc<dyn Database>,
    /// The storage.
    pub storage: Arc<dyn StorageBackend>,
    /// Where the items go and how many per round.
    pub watermarks: Watermarks,
    /// How often.
    pub interval: Option<Duration>,
}

impl ScheduledService for WatermarkCheck {
    fn name(&self) -> &'static str {
        "watermark"
    }

    fn description(&self) -> &'static str {
        "purge archived studies, then migrate others, off filesystems above their high watermark"
    }

    fn interval(&self) -> Option<Duration> {
        self.interval
    }

    fn run(&self) -> Result<Vec<String>, String> {
        let reports = crate::tiering::refresh(&*self.db, self.storage.as_ref(), None, false)
            .map_err(|e| error_chain(&e))?;
        let mut lines: Vec<String> = reports
            .iter()
            .map(|r| {
                format!(
                    "filesystem {} (tier {}): {}",
                    r.filesystem.spec.path.display(),
                    r.filesystem.spec.tier.0,
                    r.used_percent()
                        .map_or("not measured".to_string(), |u| format!("{u:.1}% used"))
                )
            })
            .collect();
        let planned = self.watermarks.run(&reports);
        let purges = planned.iter().filter(|p| p.to.is_none()).count();
        lines.push(format!(
            "queued {purges} purges and {} migrations",
            planned.len() - purges
        ));
        Ok(lines)
    }
}

/// The archive scan: every study of an archived partition quiet for
/// `[archive] after_quiet_hours` whose current content no pack holds gets
/// an `archive_study` item (a study a rule deletes is left alone).
#[derive(Debug)]
pub struct ArchiveScan {
    /// The index.
    pub db: Arc<dyn Database>,
    /// Where the items go.
    pub queue: WorkQueue,
    /// The partitions.
    pub partitions: Vec<Partition>,
    /// `[archive]`.
    pub settings: ArchiveSettings,
    /// How often.
    pub interval: Option<Duration>,
}

impl ScheduledService for ArchiveScan {
    fn name(&self) -> &'static str {
        "archive-scan"
    }

    fn description(&self) -> &'static str {
        "queue archive_study for the studies quiet for [archive] after_quiet_hours"
    }

    fn interval(&self) -> Option<Duration> {
        self.settings.root.as_ref().and(self.interval)
    }

    fn run(&self) -> Result<Vec<String>, String> {
        if self.settings.root.is_none() {
            return Ok(vec!["no archive is configured ([archive] path)".into()]);
        }
        let quiet_before = crate::db::studies::now_ms()
            - i64::try_from(self.settings.after_quiet.as_millis()).unwrap_or(i64::MAX);
        let mut lines = Vec::new();
        for partition in &self.partitions {
            if !self.settings.archives(partition.ae_title.as_str()) {
                continue;
            }
            let candidates = self
                .db
                .archive_candidates(partition.id, quiet_before, ARCHIVE_SCAN_BATCH)
                .map_err(|e| error_chain(&e))?;
            let mut queued = 0;
            for (_, study_uid, _) in candidates {
                match self
                    .queue
                    .enqueue(StudyRequest::Archive.work_item(partition.id, study_uid.clone()))
                {
                    Ok(_) => queued += 1,
                    Err(e) => lines.push(format!(
                        "cannot queue the archive of {study_uid}: {}",
                        error_chain(&e)
                    )),
                }
            }
            lines.push(format!(
                "partition {}: queued {queued} studies for archiving",
                partition.ae_title
            ));
        }
        Ok(lines)
    }
}

/// The integrity scan: every online study's files against the index —
/// sizes always, BLAKE3 digests for a rotating slice of studies each run.
/// Findings are reported; files the index lacks queue a reprocess (which
/// adds their rows); missing, resized or changed files are left for a
/// person (`study check`, `study reprocess`), since rebuilding rows from
/// the disk would erase what the index still knows.
#[derive(Debug)]
pub struct IntegrityScan {
    /// The index.
    pub db: Arc<dyn Database>,
    /// The study operations.
    pub studies: Studies,
    /// Where repairs go.
    pub queue: WorkQueue,
    /// The partitions.
    pub partitions: Vec<Partition>,
    /// Studies whose digests each run checks.
    pub digest_studies: u64,
    /// A study whose newest file is younger than this may still be
    /// receiving instances: left for a later run (`integrity_settle_secs`).
    pub settle: Duration,
    /// How often.
    pub interval: Option<Duration>,
    /// Where the digest rotation resumes (a study storage key).
    pub cursor: AtomicI64,
}

impl ScheduledService for IntegrityScan {
    fn name(&self) -> &'static str {
        "integrity-scan"
    }

    fn description(&self) -> &'static str {
        "compare files with the index: sizes always, digests on a slow rotation; queue repairs"
    }

    fn interval(&self) -> Option<Duration> {
        self.interval
    }

    fn run(&self) -> Result<Vec<String>, String> {
        let mut lines = Vec::new();
        let (mut after, mut checked, mut hashed, mut repairs) = (0, 0usize, 0u64, 0usize);
        let mut deferred = 0usize;
        let mut reported = 0usize;
        let resume = self.cursor.load(Ordering::Relaxed);
        let mut last_hashed = resume;
        while checked < INTEGRITY_MAX_STUDIES {
            let page = self
                .db
                .online_studies(after, INTEGRITY_PAGE)
                .map_err(|e| error_chain(&e))?;
            let Some((last, _, _)) = page.last() else {
                break;
            };
            after = *last;
            for (key, partition_id, study_uid) in page {
                let Some(partition) = self.partitions.iter().find(|p| p.id == partition_id) else {
                    continue;
                };
                checked += 1;
                let digests = if key > resume && hashed < self.digest_studies {
                    hashed += 1;
                    last_hashed = key;
                    DigestCheck::All
                } else {
                    DigestCheck::None
                };
                let report = match self.studies.check_integrity(partition, &study_uid, digests) {
                    Ok(report) => report,
                    Err(StudyError::Nearline(_) | StudyError::UnknownStudy { .. }) => continue,
                    Err(e) => {
                        lines.push(format!(
                            "study {study_uid}: cannot check: {}",
                            error_chain(&e)
                        ));
                        continue;
                    }
                };
                // A study with a file younger than the settling time may be
                // receiving instances: a file is durable before its row is
                // committed, and a reprocess racing ingest would rebuild the
                // rows from a listing older than the commits. Checked again
                // on a later run.
                let settling = report.newest_file_ms.is_some_and(|newest| {
                    crate::db::studies::now_ms().saturating_sub(newest)
                        < i64::try_from(self.settle.as_millis()).unwrap_or(i64::MAX)
                });
                if settling {
                    if !report.is_clean() {
                        deferred += 1;
                    }
                    continue;
                }
                for finding in &report.findings {
                    lines.push(format!("study {study_uid}: {finding}"));
                }
                if !report.is_clean() && !report.repaired_unattended() {
                    tracing::warn!(
                        study_uid = %study_uid,
                        findings = report.findings.len(),
                        "integrity scan: the study's files disagree with the index; \
                         see `imageserver study check`, repair with `imageserver study reprocess`"
                    );
                    reported += 1;
                }
                if report.repaired_unattended() {
                    let item = NewWorkItem::new(WorkKind::REPROCESS_STUDY, partition.id)
                        .study(study_uid.clone())
                        .payload(
                            AuditPayload {
                                actor: Some("integrity-scan".into()),
                                ..AuditPayload::default()
                            }
                            .to_json(),
                        );
                    match self.queue.enqueue_or_append(item) {
                        Ok(_) => repairs += 1,
                        Err(e) => lines.push(format!(
                            "study {study_uid}: cannot queue a reprocess: {}",
                            error_chain(&e)
                        )),
                    }
                }
            }
        }
        // The rotation starts over once it reached the last study.
        let next = if hashed < self.digest_studies {
            0
        } else {
            last_hashed
        };
        self.cursor.store(next, Ordering::Relaxed);
        lines.push(format!(
            "checked {checked} studies (digests of {hashed}), queued {repairs} reprocess items; \
             {reported} with findings for a person; {deferred} with findings left for a later \
             run (a file younger than {} s)",
            self.settle.as_secs()
        ));
        Ok(lines)
    }
}

/// The folder import: Part 10 files dropped into `<folder>/<AE title>/`
/// are imported into that partition through ingest (the same checks and
/// durability as a C-STORE) and removed once indexed; a file that is
/// refused is moved to `<folder>/failed/<AE title>/…` with a `.reason`
/// file beside it, never deleted.
#[derive(Debug)]
pub struct FolderImport {
    /// The drop folder.
    pub folder: PathBuf,
    /// Ingest.
    pub ingest: Ingest,
    /// The partitions.
    pub partitions: Vec<Partition>,
    /// How often.
    pub interval: Option<Duration>,
}

/// The folder refused files are moved to, under the drop folder.
pub const FAILED_FOLDER: &str = "failed";

impl FolderImport {
    fn set_aside(
        &self,
        partition: &Partition,
        from: &Path,
        relative: &Path,
        reason: &str,
    ) -> Result<PathBuf, String> {
        let to = self
            .folder
            .join(FAILED_FOLDER)
            .join(partition.ae_title.as_str())
            .join(relative);
        let dir = to.parent().unwrap_or(&self.folder);
        std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        let mut reason_path = to.clone().into_os_string();
        reason_path.push(".reason");
        std::fs::write(&reason_path, format!("{reason}\n"))
            .map_err(|e| format!("write {}: {e}", PathBuf::from(&reason_path).display()))?;
        std::fs::rename(from, &to)
            .map_err(|e| format!("move {} to {}: {e}", from.display(), to.display()))?;
        Ok(to)
    }
}

impl ScheduledService for FolderImport {
    fn name(&self) -> &'static str {
        "folder-import"
    }

    fn description(&self) -> &'static str {
        "import the files dropped into <import_folder>/<AE title>/; set refused ones aside in failed/"
    }

    fn interval(&self) -> Option<Duration> {
        self.interval
    }

    fn run(&self) -> Result<Vec<String>, String> {
        let mut lines = Vec::new();
        let mut taken = 0;
        for partition in &self.partitions {
            let drop = self.folder.join(partition.ae_title.as_str());
            if !drop.is_dir() {
                continue;
            }
            let files = import::collect_files(std::slice::from_ref(&drop))
                .map_err(|e| format!("list {}: {e}", drop.display()))?;
            let settled: Vec<PathBuf> = files
                .into_iter()
                .filter(|f| {
                    std::fs::metadata(f)
                        .and_then(|m| m.modified())
                        .is_ok_and(|t| {
                            SystemTime::now().duration_since(t).unwrap_or_default() >= SETTLE
                        })
                })
                .take(IMPORT_MAX_FILES - taken)
                .collect();
            taken += settled.len();
            let (mut imported, mut present, mut failed) = (0, 0, 0);
            for file in &settled {
                let relative = file.strip_prefix(&drop).unwrap_or(file).to_path_buf();
                let summary = import::import_files(
                    &self.ingest,
                    partition,
                    std::slice::from_ref(file),
                    &mut |_, _| {},
                );
                if let Some((_, reason)) = summary.rejected.first() {
                    failed += 1;
                    match self.set_aside(partition, file, &relative, reason) {
                        Ok(to) => lines.push(format!(
                            "{}: refused ({reason}); set aside as {}",
                            relative.display(),
                            to.display()
                        )),
                        Err(e) => {
                            lines.push(format!("{}: refused ({reason}); {e}", relative.display()))
                        }
                    }
                    continue;
                }
                if summary.imported > 0 {
                    imported += 1;
                } else {
                    present += 1;
                }
                // Indexed (or already held): the drop copy goes.
                if let Err(e) = std::fs::remove_file(file) {
                    lines.push(format!(
                        "{}: imported, but cannot remove it: {e}",
                        relative.display()
                    ));
                }
            }
            lines.push(format!(
                "partition {}: {imported} imported, {present} already held, {failed} set aside",
                partition.ae_title
            ));
        }
        Ok(lines)
    }
}
