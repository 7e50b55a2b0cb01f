//! Reprocess a study: its rows rebuilt from its files.

use super::*;

/// What [`Studies::reprocess`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReprocessReport {
    /// Instance rows before.
    pub removed_instances: u64,
    /// Instance rows now (one per usable file).
    pub indexed_instances: u64,
    /// Files not indexed, with the reason.
    pub skipped: Vec<(PathBuf, String)>,
}

impl Studies {
    // ---------------------------------------------------------- reprocess

    /// Rebuilds a study's rows from its files: every `<series>/<sop>.dcm`
    /// of the study folder whose header names this study, that series and
    /// that instance is indexed with its size and digest; other files are
    /// skipped and reported. The old rows are replaced in one transaction.
    pub fn reprocess(
        &self,
        partition: &Partition,
        study_uid: &Uid,
        actor: &str,
    ) -> Result<ReprocessReport, StudyError> {
        if self
            .store()
            .deleting_study(partition.id, study_uid)?
            .is_some()
        {
            return Err(StudyError::BeingDeleted(study_uid.clone()));
        }
        let location = self
            .db
            .study_location(partition.id, study_uid)?
            .ok_or_else(|| Self::unknown(partition, study_uid))?;
        let filesystem = self.filesystem(location.filesystem)?;
        let objects = self.storage.list_study(&filesystem, &location)?;
        let mut report = ReprocessReport::default();
        let mut records = Vec::new();
        for object in objects {
            let file = match object {
                StudyObject::Instance(file) => file,
                StudyObject::Aside(..) | StudyObject::Metadata { .. } => continue,
                StudyObject::Stray(path) => {
                    report
                        .skipped
                        .push((path, "not an instance file name".to_string()));
                    continue;
                }
            };
            match self.rebuild_record(partition, &location, &filesystem, &file)? {
                Ok(record) => records.push(record),
                Err(reason) => {
                    let key = InstanceKey {
                        location: location.clone(),
                        series_uid: file.series_uid,
                        sop_instance_uid: file.sop_instance_uid,
                    };
                    report
                        .skipped
                        .push((self.storage.describe(&filesystem, &key), reason));
                }
            }
        }
        let audit = AuditEntry::now(
            actor,
            "study.reprocess",
            partition.id,
            study_uid,
            JsonObject::new()
                .int("instances", records.len() as i128)
                .int("skipped", report.skipped.len() as i128)
                .finish(),
        );
        let outcome = self
            .store()
            .replace_study_rows(partition.id, study_uid, &records, &audit)?;
        report.removed_instances = outcome.removed_instances;
        report.indexed_instances = outcome.inserted_instances;
        tracing::info!(
            study_uid = %study_uid,
            before = outcome.removed_instances,
            after = outcome.inserted_instances,
            skipped = report.skipped.len(),
            "study reprocessed"
        );
        // The series metadata follows the rebuilt rows.
        match self.write_series_metadata(partition, study_uid) {
            Ok(_) => {}
            // No instance row left: no study to describe, and nothing may
            // describe the instances that are gone.
            Err(StudyError::UnknownStudy { .. } | StudyError::Nearline(_)) => {
                self.storage.delete_study_metadata(&filesystem, &location)?;
            }
            Err(e) => return Err(e),
        }
        Ok(report)
    }

    /// The record of one file, or why it is not indexed.
    fn rebuild_record(
        &self,
        partition: &Partition,
        location: &crate::model::StudyLocation,
        filesystem: &Filesystem,
        file: &StoredObject,
    ) -> Result<Result<crate::model::InstanceRecord, String>, StudyError> {
        let key = InstanceKey {
            location: location.clone(),
            series_uid: file.series_uid.clone(),
            sop_instance_uid: file.sop_instance_uid.clone(),
        };
        let open = || {
            self.storage
                .open(filesystem, &key)
                .map_err(|e| format!("cannot open the file: {e}"))
        };
        let (header, size, digest) = match files::read_header_and_digest(open) {
            Ok(parsed) => parsed,
            Err(reason) => return Ok(Err(reason)),
        };
        let record = match files::record_from_header(partition.id, location, &header, size, digest)
        {
            Ok(record) => record,
            Err(reason) => return Ok(Err(reason)),
        };
        if record.study.study_uid != location.study_uid
            || record.series.series_uid != file.series_uid
            || record.instance.sop_instance_uid != file.sop_instance_uid
        {
            return Ok(Err(format!(
                "its header names study {}, series {}, instance {}: not where it is",
                record.study.study_uid, record.series.series_uid, record.instance.sop_instance_uid
            )));
        }
        // An instance indexed in another study stays there.
        if let Some(stored) = self.db.instance(partition.id, &file.sop_instance_uid)? {
            if stored.location.study_uid != location.study_uid {
                return Ok(Err(format!(
                    "instance {} is indexed in study {}",
                    file.sop_instance_uid, stored.location.study_uid
                )));
            }
        }
        Ok(Ok(record))
    }
}
