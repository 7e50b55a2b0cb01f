//! Migration: a study's files to another filesystem (another tier), never
//! losing the only copy.
//!
//! The order, each step safe to crash after and to run again:
//! 1. copy every instance file (and the series metadata) to the target,
//!    each file fsync'd by its persist, then the directories synced; a
//!    copy a crashed run left there is kept when its digest is right;
//! 2. re-read every copy and compare its BLAKE3 with the index's digest;
//! 3. switch the study's location in **one** index transaction, only if
//!    the study still has exactly the instances copied (an instance that
//!    arrived meanwhile sends the migration round again);
//! 4. remove the source: every instance file the index names that is
//!    present (by size) at the study's location, and the metadata. A copy
//!    on any filesystem other than the study's location is a migration's
//!    leftover, found and removed the same way by a rerun.
//!
//! Until step 3 commits, the index names the source, which is complete;
//! after it, the target, which was verified. An instance committed at the
//! source after the switch (ingest read the old location just before) is
//! copied over by step 4 instead of being removed.

use super::*;

/// Names a fault-injection point of the migration: when the environment
/// variable [`FAULT_PAUSE_ENV`] equals a step's name (`copied-one`,
/// `copied`, `switched`, `removed-one`), the migration logs and pauses
/// there for ten minutes, so that a test can kill -9 the process at that
/// step. Never set in production.
pub const FAULT_PAUSE_ENV: &str = crate::fault::MIGRATION_ENV;

/// Rounds of copy-and-switch before giving up for now (new instances kept
/// arriving).
const ROUNDS: usize = 3;

fn fault_point(step: &str) {
    crate::fault::MIGRATION.pass(step);
}

/// What a migration did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigrationReport {
    /// Instance files copied to the target (a rerun skips verified copies).
    pub copied: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Whether this run switched the location (false: an earlier run did).
    pub switched: bool,
    /// Source files removed.
    pub removed: u64,
}

impl Studies {
    /// Migrates a study to filesystem `to` (see the module). Idempotent:
    /// a study already there only has its leftovers removed. Take the
    /// study's write lock (the `migrate_study` work item does).
    pub fn migrate(
        &self,
        partition: &Partition,
        study_uid: &Uid,
        to: FilesystemId,
    ) -> Result<MigrationReport, StudyError> {
        let target = self.filesystem(to)?;
        // Never into a root that is not the filesystem it was.
        if let Some(expected) = &target.marker {
            if self.storage.read_marker(&target)?.as_ref() != Some(expected) {
                return Err(StudyError::FilesystemRefused {
                    path: target.spec.path.clone(),
                });
            }
        }
        let mut report = MigrationReport::default();
        for _ in 0..ROUNDS {
            let (location, source) = self.online_files(partition, study_uid)?;
            if location.filesystem == to {
                report.removed += self.remove_leftovers(partition, study_uid, &location)?;
                return Ok(report);
            }
            let instances = self.store().study_instances(partition.id, study_uid)?;
            let mut target_location = location.clone();
            target_location.filesystem = to;
            self.copy_study(&source, &target, &instances, &target_location, &mut report)?;
            fault_point("copied");
            let bytes = instances.iter().map(|i| i.file_size).sum();
            if self.store().switch_study_location(
                partition.id,
                study_uid,
                source.id,
                to,
                instances.len() as u64,
                bytes,
            )? {
                report.switched = true;
                tracing::info!(%study_uid, from = %source.spec.path.display(), to = %target.spec.path.display(), instances = instances.len(), "study location switched");
                fault_point("switched");
                report.removed += self.remove_leftovers(partition, study_uid, &target_location)?;
                return Ok(report);
            }
            tracing::info!(%study_uid, "the study changed while it was copied: copying again");
        }
        Err(StudyError::Busy(study_uid.clone()))
    }

    /// Steps 1 and 2: every instance and metadata file at the target,
    /// durable and verified against the index's digests.
    fn copy_study(
        &self,
        source: &Filesystem,
        target: &Filesystem,
        instances: &[StoredInstance],
        target_location: &StudyLocation,
        report: &mut MigrationReport,
    ) -> Result<(), StudyError> {
        let mut pending = PendingSync::default();
        for instance in instances {
            let from = key_of(instance);
            let to = InstanceKey {
                location: target_location.clone(),
                ..from.clone()
            };
            if self.verified(target, &to, instance)? {
                continue;
            }
            let mut reader = self.storage.open(source, &from)?;
            let mut writer = self.storage.begin_write(target)?;
            std::io::copy(&mut reader, &mut writer).map_err(|source| StudyError::Io {
                operation: "copy",
                path: self.storage.describe(target, &to),
                source,
            })?;
            pending.merge(writer.persist(&to)?);
            report.copied += 1;
            report.bytes += instance.file_size;
            if report.copied == 1 {
                fault_point("copied-one");
            }
        }
        let location = StudyLocation {
            filesystem: source.id,
            ..target_location.clone()
        };
        for series_uid in self.storage.series_with_metadata(source, &location)? {
            let from = SeriesKey {
                location: location.clone(),
                series_uid: series_uid.clone(),
            };
            let Some(bytes) = self.storage.read_series_metadata(source, &from)? else {
                continue;
            };
            let mut writer = self.storage.begin_write(target)?;
            writer.write_all(&bytes).map_err(|source| StudyError::Io {
                operation: "copy metadata",
                path: PathBuf::from(series_uid.as_str()),
                source,
            })?;
            pending.merge(writer.persist_series_metadata(&SeriesKey {
                location: target_location.clone(),
                series_uid,
            })?);
        }
        self.storage.sync(pending)?;
        for instance in instances {
            let to = InstanceKey {
                location: target_location.clone(),
                ..key_of(instance)
            };
            if !self.verified(target, &to, instance)? {
                return Err(StudyError::CopyMismatch(instance.sop_instance_uid.clone()));
            }
        }
        Ok(())
    }

    /// Whether the file at `key` on `filesystem` is the indexed instance
    /// (size and BLAKE3).
    fn verified(
        &self,
        filesystem: &Filesystem,
        key: &InstanceKey,
        instance: &StoredInstance,
    ) -> Result<bool, StudyError> {
        let reader = match self.storage.open(filesystem, key) {
            Ok(reader) => reader,
            Err(storage::Error::NotFound { .. }) => return Ok(false),
            Err(e) => return Err(e.into()),
        };
        let (size, digest) = files::digest(reader).map_err(|source| StudyError::Io {
            operation: "verify",
            path: self.storage.describe(filesystem, key),
            source,
        })?;
        Ok(size == instance.file_size && digest == instance.digest)
    }

    /// Step 4: the study's files on every filesystem but its location's.
    /// An instance file whose copy at the location is missing is copied
    /// there first (ingest placed it at the old location around the
    /// switch); files no row names (strays, kept-aside duplicates, which
    /// their own rows place) stay. Returns the files removed.
    fn remove_leftovers(
        &self,
        partition: &Partition,
        study_uid: &Uid,
        location: &StudyLocation,
    ) -> Result<u64, StudyError> {
        let home = self.filesystem(location.filesystem)?;
        let indexed: BTreeMap<Uid, StoredInstance> = self
            .store()
            .study_instances(partition.id, study_uid)?
            .into_iter()
            .map(|i| (i.sop_instance_uid.clone(), i))
            .collect();
        let mut removed = 0;
        for other in self.db.filesystems()? {
            if other.id == location.filesystem {
                continue;
            }
            let old = StudyLocation {
                filesystem: other.id,
                ..location.clone()
            };
            let objects = match self.storage.list_study(&other, &old) {
                Ok(objects) => objects,
                // Unmounted or unreadable: a later run finds them.
                Err(e) => {
                    tracing::warn!(filesystem = %other.spec.path.display(), error = %crate::model::error_chain(&e), "cannot look for a migrated study's leftovers");
                    continue;
                }
            };
            if objects.is_empty() {
                continue;
            }
            let mut metadata = false;
            for object in objects {
                let file = match object {
                    StudyObject::Instance(file) => file,
                    StudyObject::Metadata { .. } => {
                        metadata = true;
                        continue;
                    }
                    StudyObject::Aside(..) | StudyObject::Stray(_) => continue,
                };
                let Some(instance) = indexed.get(&file.sop_instance_uid) else {
                    continue;
                };
                let at_home = key_of(instance);
                let left = InstanceKey {
                    location: old.clone(),
                    ..at_home.clone()
                };
                if !self.verified(&home, &at_home, instance)? {
                    // Only here: bring it home before the source goes.
                    if !self.verified(&other, &left, instance)? {
                        continue;
                    }
                    let mut reader = self.storage.open(&other, &left)?;
                    let mut writer = self.storage.begin_write(&home)?;
                    std::io::copy(&mut reader, &mut writer).map_err(|source| StudyError::Io {
                        operation: "copy",
                        path: self.storage.describe(&home, &at_home),
                        source,
                    })?;
                    self.storage.sync(writer.persist(&at_home)?)?;
                    tracing::info!(sop_instance_uid = %instance.sop_instance_uid, "an instance stored at the study's old location joined it");
                }
                self.storage.delete(&other, &left)?;
                removed += 1;
                if removed == 1 {
                    fault_point("removed-one");
                }
            }
            if metadata {
                self.storage.delete_study_metadata(&other, &old)?;
            }
            self.storage.remove_empty_study_folders(&other, &old)?;
        }
        Ok(removed)
    }
}
