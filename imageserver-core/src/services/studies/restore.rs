//! Restore: a nearline study brought back online from its pack.
//!
//! The order, each step safe to crash after and to run again:
//! 1. a writable filesystem is chosen: one a crashed restore of the study
//!    left files on, else the one placement picks;
//! 2. the pack is read in one pass (its own digest checked at the end);
//!    each instance not already present and verified there is written
//!    through the storage seam, then the directories are synced;
//! 3. every file is re-read and compared with its manifest digest;
//! 4. one index transaction puts the study on that filesystem, only if it
//!    is still nearline and holds exactly what the pack holds;
//! 5. copies a crashed run left on any other filesystem are removed.
//!
//! Until 4 commits the study is nearline and its pack complete; after it,
//! its files are verified. The pack stays: an unchanged study can be
//! purged again without packing it again.

use std::sync::OnceLock;
use std::time::Duration;

use super::archive::fault_point;
use super::*;
use crate::archive::{self, ArchiveError};
use crate::workqueue::WorkQueue;

/// What a restore did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RestoreReport {
    /// Whether this run brought the study online (false: it was online).
    pub switched: bool,
    /// Instance files written.
    pub written: u64,
    /// Their bytes.
    pub bytes: u64,
    /// The filesystem it is on.
    pub filesystem: Option<FilesystemId>,
}

impl Studies {
    /// Whether the study is nearline (known, no online copy).
    pub fn is_nearline(&self, partition: &Partition, study_uid: &Uid) -> Result<bool, StudyError> {
        Ok(self
            .store()
            .study(partition.id, study_uid)?
            .is_some_and(|r| r.location.is_none()))
    }

    /// Restores a nearline study (see the module); an online study is left
    /// alone. At most the configured number of restores run at once in
    /// this process and, with [`Hsm::in_index`], in every process sharing
    /// the index ([`StudyError::RestoreBusy`] otherwise). Take the
    /// study's write lock (the `restore_study` item does).
    pub fn restore(
        &self,
        partition: &Partition,
        study_uid: &Uid,
    ) -> Result<RestoreReport, StudyError> {
        let record = self
            .store()
            .study(partition.id, study_uid)?
            .ok_or_else(|| Self::unknown(partition, study_uid))?;
        if let Some(location) = record.location {
            return Ok(RestoreReport {
                filesystem: Some(location.filesystem),
                ..RestoreReport::default()
            });
        }
        let _slot = self
            .hsm
            .restores
            .take()
            .ok_or_else(|| StudyError::RestoreBusy(study_uid.clone()))?;
        let entry = self.current_pack(
            partition,
            study_uid,
            record.num_instances,
            record.size_bytes,
        )?;
        let pack = std::path::Path::new(&entry.path);
        let target = self.restore_target(partition, study_uid, &entry.date_folder)?;
        let location = StudyLocation {
            filesystem: target.id,
            partition_folder: partition.folder.clone(),
            date_folder: entry.date_folder.clone(),
            study_uid: study_uid.clone(),
        };
        let key = |e: &archive::ManifestEntry| -> Result<InstanceKey, StudyError> {
            let parse = |text: &str| {
                Uid::parse(text).map_err(|e| ArchiveError::Damaged {
                    path: pack.to_path_buf(),
                    reason: format!("manifest UID {text:?}: {e}"),
                })
            };
            Ok(InstanceKey {
                location: location.clone(),
                series_uid: parse(&e.series_uid)?,
                sop_instance_uid: parse(&e.sop_instance_uid)?,
            })
        };
        let mut report = RestoreReport {
            filesystem: Some(target.id),
            ..RestoreReport::default()
        };
        let mut pending = PendingSync::default();
        let mut failure: Option<StudyError> = None;
        let unpacked =
            archive::unpack(pack, (entry.size_bytes, &entry.digest), &mut |e, reader| {
                let result = (|| -> Result<(), StudyError> {
                    let key = key(e)?;
                    if self.matches(&target, &key, e.file_size, &e.digest)? {
                        return Ok(());
                    }
                    let mut writer = self.storage.begin_write(&target)?;
                    std::io::copy(reader, &mut writer).map_err(|source| StudyError::Io {
                        operation: "restore",
                        path: self.storage.describe(&target, &key),
                        source,
                    })?;
                    pending.merge(writer.persist(&key)?);
                    report.written += 1;
                    report.bytes += e.file_size;
                    if report.written == 1 {
                        fault_point("restore-unpacked-one");
                    }
                    Ok(())
                })();
                result.map_err(|error| {
                    let text = crate::model::error_chain(&error);
                    failure = Some(error);
                    ArchiveError::Damaged {
                        path: pack.to_path_buf(),
                        reason: text,
                    }
                })
            });
        let manifest = match (unpacked, failure) {
            (_, Some(error)) => return Err(error),
            (result, None) => result?,
        };
        self.storage.sync(pending)?;
        for e in &manifest.instances {
            if !self.matches(&target, &key(e)?, e.file_size, &e.digest)? {
                return Err(StudyError::CopyMismatch(key(e)?.sop_instance_uid));
            }
        }
        fault_point("restore-verified");
        if !self.db.switch_from_nearline(
            partition.id,
            study_uid,
            target.id,
            &entry.date_folder,
            entry.instances,
            entry.instance_bytes,
        )? {
            return Err(StudyError::Busy(study_uid.clone()));
        }
        report.switched = true;
        tracing::info!(%study_uid, filesystem = %target.spec.path.display(), files = report.written, "study restored from its pack");
        fault_point("restore-switched");
        self.remove_packed_files(partition, study_uid, &manifest, Some(target.id), None)?;
        Ok(report)
    }

    /// Step 1: a filesystem holding files of an interrupted restore of the
    /// study, else placement's choice among the writable ones.
    fn restore_target(
        &self,
        partition: &Partition,
        study_uid: &Uid,
        date_folder: &str,
    ) -> Result<Filesystem, StudyError> {
        let filesystems = self.db.filesystems()?;
        let writable = |fs: &&Filesystem| {
            fs.enabled
                && !fs.spec.read_only
                && self.hsm.placement.refusal(fs.id).is_none()
                && fs.marker.as_ref().is_none_or(|expected| {
                    self.storage.read_marker(fs).ok().flatten().as_ref() == Some(expected)
                })
        };
        for fs in filesystems.iter().filter(writable) {
            let location = StudyLocation {
                filesystem: fs.id,
                partition_folder: partition.folder.clone(),
                date_folder: date_folder.to_string(),
                study_uid: study_uid.clone(),
            };
            if self.storage.list_study(fs, &location).is_ok_and(|objects| {
                objects
                    .iter()
                    .any(|o| matches!(o, StudyObject::Instance(_)))
            }) {
                return Ok(fs.clone());
            }
        }
        let candidates: Vec<Filesystem> = filesystems.iter().filter(writable).cloned().collect();
        self.hsm
            .placement
            .place(&candidates, self.storage.as_ref())
            .ok_or(StudyError::NoRoom)
    }

    /// Whether the file at `key` has this size and BLAKE3.
    fn matches(
        &self,
        filesystem: &Filesystem,
        key: &InstanceKey,
        size: u64,
        digest: &str,
    ) -> Result<bool, StudyError> {
        let reader = match self.storage.open(filesystem, key) {
            Ok(reader) => reader,
            Err(storage::Error::NotFound { .. }) => return Ok(false),
            Err(e) => return Err(e.into()),
        };
        let (found_size, found) = files::digest(reader).map_err(|source| StudyError::Io {
            operation: "verify",
            path: self.storage.describe(filesystem, key),
            source,
        })?;
        Ok(found_size == size && found == digest)
    }
}

/// How often a waiting caller re-reads a restore's work item.
const RESTORE_POLL: Duration = Duration::from_millis(200);

/// Brings nearline studies online for a caller that needs their files now
/// (a C-MOVE or C-GET, a C-STORE of another instance): through a
/// `restore_study` item on the server's engine (under the study's write
/// lock, within the restore limit), waited for; in a process without an
/// engine, by restoring in place. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Restorer {
    studies: Studies,
    queue: Arc<OnceLock<WorkQueue>>,
    timeout: Duration,
}

impl Restorer {
    /// Restores with `studies`, through the engine once `queue` is set,
    /// waiting at most `timeout` for each study.
    pub fn new(studies: Studies, queue: Arc<OnceLock<WorkQueue>>, timeout: Duration) -> Restorer {
        Restorer {
            studies,
            queue,
            timeout,
        }
    }

    /// Brings the study online if it is nearline: true when it was
    /// restored, false when it was online (or unknown). `on_wait` is
    /// called every poll while the restore runs (a retrieve sends pending
    /// responses from it).
    pub fn ensure_online(
        &self,
        partition: &Partition,
        study_uid: &Uid,
        on_wait: &mut dyn FnMut(),
    ) -> Result<bool, StudyError> {
        if !self.studies.is_nearline(partition, study_uid)? {
            return Ok(false);
        }
        tracing::info!(%study_uid, "the study is nearline: restoring it first");
        let Some(queue) = self.queue.get() else {
            return self
                .studies
                .restore(partition, study_uid)
                .map(|r| r.switched);
        };
        let item = crate::model::requests::StudyRequest::Restore
            .work_item(partition.id, study_uid.clone());
        let id = queue.enqueue(item).map_err(|e| StudyError::RestoreFailed {
            study_uid: study_uid.clone(),
            reason: crate::model::error_chain(&e),
        })?;
        let deadline = std::time::Instant::now() + self.timeout;
        let failed = |reason: String| StudyError::RestoreFailed {
            study_uid: study_uid.clone(),
            reason,
        };
        loop {
            let item = queue
                .get(id)
                .map_err(|e| failed(crate::model::error_chain(&e)))?
                .ok_or_else(|| failed(format!("work item {id} was deleted")))?;
            match item.status {
                crate::model::work::WorkStatus::Completed => {
                    return Ok(!self.studies.is_nearline(partition, study_uid)?)
                }
                crate::model::work::WorkStatus::Failed => {
                    return Err(failed(item.failure_description.unwrap_or_default()))
                }
                _ => {}
            }
            if std::time::Instant::now() >= deadline {
                return Err(failed(format!(
                    "not restored within {} s (work item {id} goes on)",
                    self.timeout.as_secs()
                )));
            }
            on_wait();
            std::thread::sleep(RESTORE_POLL);
        }
    }
}
