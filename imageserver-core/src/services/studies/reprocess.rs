//! Reprocess a study: its rows rebuilt from its files.
//!
//! Ingest takes no study lock, so instances may be committed while the
//! files are listed and read. Ingest makes a file durable at its path before
//! it commits the row, so the study's
//! [`RowFence`](crate::db::studies::RowFence), read *before* the
//! listing, separates the rows the listing accounts for from those it may
//! have missed: the replacement is refused (nothing changes) when the study
//! holds a row above the fence, and the study is listed again. No
//! acknowledged instance loses its row, and ingest pays nothing for it.

use super::*;
use crate::dicom::part10;
use crate::model::error_chain;

/// Listings before giving up for now (instances kept arriving).
const ROUNDS: usize = 3;

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

/// Why a file of the study is not indexed by reprocess.
#[derive(Debug, thiserror::Error)]
enum Unusable {
    /// It cannot be read or its header parsed.
    #[error(transparent)]
    File(files::FileError),
    /// Its header cannot become a record.
    #[error(transparent)]
    Header(part10::header::HeaderError),
    /// Its header names another study, series or instance than its place.
    #[error(
        "its header names study {study}, series {series}, instance {instance}: not where it is"
    )]
    Misplaced {
        /// The study it names.
        study: Uid,
        /// The series it names.
        series: Uid,
        /// The instance it names.
        instance: Uid,
    },
    /// The instance is indexed in another study, and stays there.
    #[error("instance {instance} is indexed in study {study}")]
    IndexedElsewhere {
        /// The instance.
        instance: Uid,
        /// The study it is indexed in.
        study: Uid,
    },
}

/// A study's records as read from its files.
struct Rebuilt {
    location: crate::model::StudyLocation,
    filesystem: Filesystem,
    records: Vec<crate::model::InstanceRecord>,
    report: ReprocessReport,
}

impl Studies {
    // ---------------------------------------------------------- reprocess

    /// Rebuilds a study's rows from its files: every `<series>/<sop>.dcm`
    /// of the study folder whose header names this study, that series and
    /// that instance is indexed with its size and digest; other files are
    /// skipped and reported. The old rows are replaced in one transaction,
    /// unless instances were committed since the listing began (then the
    /// study is listed again; [`StudyError::Busy`] after three listings).
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
        for _ in 0..ROUNDS {
            // Before the listing: every row at or below it names a file the
            // listing sees (or a file that is really gone).
            let fence = self.store().study_row_fence(partition.id, study_uid)?;
            let Rebuilt {
                location,
                filesystem,
                records,
                mut report,
            } = self.rebuild_records(partition, study_uid)?;
            crate::fault::REPROCESS.pass("listed");
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
            let Some(outcome) = self.store().replace_study_rows(
                partition.id,
                study_uid,
                &records,
                fence,
                &audit,
            )?
            else {
                tracing::info!(%study_uid, "instances arrived while the study was reprocessed: listing again");
                continue;
            };
            report.removed_instances = outcome.removed_instances;
            report.indexed_instances = outcome.inserted_instances;
            return self.reprocessed(partition, study_uid, actor, &location, &filesystem, report);
        }
        Err(StudyError::Busy(study_uid.clone()))
    }

    /// The records of the study's usable files, and the report of the
    /// others.
    fn rebuild_records(
        &self,
        partition: &Partition,
        study_uid: &Uid,
    ) -> Result<Rebuilt, StudyError> {
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
                    report.skipped.push((
                        self.storage.describe(&filesystem, &key),
                        error_chain(&reason),
                    ));
                }
            }
        }
        Ok(Rebuilt {
            location,
            filesystem,
            records,
            report,
        })
    }

    /// After the rows were replaced: the audit event, the log line and the
    /// series metadata.
    fn reprocessed(
        &self,
        partition: &Partition,
        study_uid: &Uid,
        actor: &str,
        location: &crate::model::StudyLocation,
        filesystem: &Filesystem,
        report: ReprocessReport,
    ) -> Result<ReprocessReport, StudyError> {
        let patient = self.patient_for_audit(partition, study_uid);
        self.audit_study(
            crate::audit::EventKind::InstancesAccessed,
            crate::audit::Action::Update,
            partition,
            study_uid,
            actor,
            patient.as_ref(),
        );
        tracing::info!(
            study_uid = %study_uid,
            before = report.removed_instances,
            after = report.indexed_instances,
            skipped = report.skipped.len(),
            "study reprocessed"
        );
        // The series metadata follows the rebuilt rows.
        match self.write_series_metadata(partition, study_uid) {
            Ok(_) => {}
            // No instance row left: no study to describe, and nothing may
            // describe the instances that are gone.
            Err(StudyError::UnknownStudy { .. } | StudyError::Nearline(_)) => {
                self.storage.delete_study_metadata(filesystem, location)?;
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
    ) -> Result<Result<crate::model::InstanceRecord, Unusable>, StudyError> {
        let key = InstanceKey {
            location: location.clone(),
            series_uid: file.series_uid.clone(),
            sop_instance_uid: file.sop_instance_uid.clone(),
        };
        let open = || self.storage.open(filesystem, &key);
        let (header, size, digest) = match files::read_header_and_digest(open) {
            Ok(parsed) => parsed,
            Err(error) => return Ok(Err(Unusable::File(error))),
        };
        let record =
            match part10::header::stored_file_facts(&header, partition.id, location, size, digest)
                .and_then(|facts| part10::header::instance_record(&header, facts))
            {
                Ok(record) => record,
                Err(error) => return Ok(Err(Unusable::Header(error))),
            };
        if record.study.study_uid != location.study_uid
            || record.series.series_uid != file.series_uid
            || record.instance.sop_instance_uid != file.sop_instance_uid
        {
            return Ok(Err(Unusable::Misplaced {
                study: record.study.study_uid,
                series: record.series.series_uid,
                instance: record.instance.sop_instance_uid,
            }));
        }
        // An instance indexed in another study stays there.
        if let Some(stored) = self.db.instance(partition.id, &file.sop_instance_uid)? {
            if stored.location.study_uid != location.study_uid {
                return Ok(Err(Unusable::IndexedElsewhere {
                    instance: file.sop_instance_uid.clone(),
                    study: stored.location.study_uid,
                }));
            }
        }
        Ok(Ok(record))
    }
}
