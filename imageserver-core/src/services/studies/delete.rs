//! Delete a study: rows, audit and tombstone first, then the files, then
//! the tombstone (see the crash-safety order of the parent module).

use super::*;

/// What [`Studies::delete`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeleteOutcome {
    /// The study's rows and files were deleted.
    Deleted(DeleteReport),
    /// The rows were already gone (an earlier run was interrupted); the
    /// remaining files were deleted.
    Finished(DeleteReport),
    /// Nothing of the study is left (never there, or deleted before).
    Absent,
}

/// The numbers of a deletion.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeleteReport {
    /// Instance rows removed.
    pub instances: u64,
    /// Series rows removed.
    pub series: u64,
    /// Bytes of the removed instances.
    pub bytes: u64,
    /// Files deleted (instances, duplicates, leftovers, series metadata).
    pub files_deleted: u64,
}

impl Studies {
    // ------------------------------------------------------------- delete

    /// Deletes a study: rows (with an audit record of `actor` and `reason`),
    /// then files, then the tombstone (see the module documentation).
    /// Idempotent: a retry after an interruption finishes the files; a
    /// study with nothing left is [`DeleteOutcome::Absent`].
    pub fn delete(
        &self,
        partition: &Partition,
        study_uid: &Uid,
        actor: &str,
        reason: &str,
    ) -> Result<DeleteOutcome, StudyError> {
        let audit = AuditEntry::now(
            actor,
            "study.delete",
            partition.id,
            study_uid,
            JsonObject::new().string("reason", Some(reason)).finish(),
        );
        // A nearline study is brought back first: delete then runs on its
        // files as on any study's, and its pack goes after them.
        if self.is_nearline(partition, study_uid)? {
            self.restore(partition, study_uid)?;
        }
        let patient = self.patient_for_audit(partition, study_uid);
        let deleted = match self
            .store()
            .delete_study_rows(partition.id, study_uid, &audit)?
        {
            Some(deleted) => deleted,
            None => {
                let Some(tombstone) = self.store().deleting_study(partition.id, study_uid)? else {
                    // A pack a crash left after the rows and files went.
                    self.forget_pack(partition, study_uid)?;
                    return Ok(DeleteOutcome::Absent);
                };
                let filesystem = self.filesystem(tombstone.location.filesystem)?;
                let files_deleted = self.sweep(
                    partition,
                    &filesystem,
                    &tombstone.location,
                    tombstone.since_ms,
                )?;
                self.store().finish_study_delete(partition.id, study_uid)?;
                self.forget_pack(partition, study_uid)?;
                tracing::info!(study_uid = %study_uid, files_deleted, "finished an interrupted study deletion");
                return Ok(DeleteOutcome::Finished(DeleteReport {
                    files_deleted,
                    ..DeleteReport::default()
                }));
            }
        };
        let filesystem = self.filesystem(deleted.location.filesystem)?;
        let mut files_deleted = 0;
        for instance in &deleted.instances {
            self.storage.delete(&filesystem, &key_of(instance))?;
            files_deleted += 1;
        }
        for duplicate in &deleted.duplicates {
            let fs = self.filesystem(duplicate.location.filesystem)?;
            let key = InstanceKey {
                location: duplicate.location.clone(),
                series_uid: duplicate.series_uid.clone(),
                sop_instance_uid: duplicate.sop_instance_uid.clone(),
            };
            self.storage.delete_aside(&fs, &key, duplicate.variant)?;
            files_deleted += 1;
        }
        files_deleted += self.sweep(partition, &filesystem, &deleted.location, deleted.since_ms)?;
        self.store().finish_study_delete(partition.id, study_uid)?;
        self.forget_pack(partition, study_uid)?;
        self.audit_study(
            crate::audit::EventKind::StudyDeleted,
            crate::audit::Action::Delete,
            partition,
            study_uid,
            actor,
            patient.as_ref(),
        );
        tracing::info!(
            study_uid = %study_uid,
            instances = deleted.instances.len(),
            files_deleted,
            actor,
            "study deleted"
        );
        Ok(DeleteOutcome::Deleted(DeleteReport {
            instances: deleted.instances.len() as u64,
            series: deleted.num_series,
            bytes: deleted.size_bytes,
            files_deleted,
        }))
    }

    /// Deletes the files of a (deleted) study folder that no row names and
    /// that are older than `since_ms`, then the empty series folders and the
    /// study folder. Returns the files deleted.
    fn sweep(
        &self,
        partition: &Partition,
        filesystem: &Filesystem,
        location: &crate::model::StudyLocation,
        since_ms: i64,
    ) -> Result<u64, StudyError> {
        let objects = self.storage.list_study(filesystem, location)?;
        let mut deleted = 0;
        for object in objects {
            let (file, variant) = match object {
                StudyObject::Instance(file) => (file, None),
                StudyObject::Aside(file, variant) => (file, Some(variant)),
                // Derived from the deleted rows' files (a newer one is of a
                // study that arrived again since).
                StudyObject::Metadata {
                    series_uid,
                    modified_ms,
                } => {
                    if modified_ms <= since_ms {
                        let key = SeriesKey {
                            location: location.clone(),
                            series_uid,
                        };
                        self.storage.delete_series_metadata(filesystem, &key)?;
                        deleted += 1;
                    }
                    continue;
                }
                StudyObject::Stray(_) => continue,
            };
            // Newer files belong to instances that arrived after the rows
            // went; an indexed one is someone's instance.
            if file.modified_ms > since_ms || self.indexed_here(partition, location, &file)? {
                continue;
            }
            let key = InstanceKey {
                location: location.clone(),
                series_uid: file.series_uid,
                sop_instance_uid: file.sop_instance_uid,
            };
            match variant {
                None => self.storage.delete(filesystem, &key)?,
                Some(variant) => self.storage.delete_aside(filesystem, &key, variant)?,
            }
            deleted += 1;
        }
        // Empty series folders (and the metadata folder), then the study
        // folder: what is not empty keeps what is left (stray files, newer
        // arrivals).
        self.storage
            .remove_empty_study_folders(filesystem, location)?;
        Ok(deleted)
    }

    fn indexed_here(
        &self,
        partition: &Partition,
        location: &crate::model::StudyLocation,
        file: &StoredObject,
    ) -> Result<bool, StudyError> {
        Ok(self
            .db
            .instance(partition.id, &file.sop_instance_uid)?
            .is_some_and(|stored| {
                stored.location == *location && stored.series_uid == file.series_uid
            }))
    }
}
