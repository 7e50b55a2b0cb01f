//! Series metadata: per series of a study, one file holding the DICOM JSON
//! model (PS3.18 §F.2) of every instance, bulk data stripped. It is what a
//! DICOMweb WADO-RS *series metadata* request answers
//! (`GET studies/{study}/series/{series}/metadata`), precomputed by
//! StudyProcess so that answering never opens an image file.
//!
//! ## The file
//!
//! `<study folder>/.metadata/<series uid>.json` (see
//! [`crate::storage::layout::METADATA_DIR`]): a JSON array with one object
//! per instance (sorted by Instance Number, then SOP Instance UID), written
//! durably through the storage backend (temporary file, fsync, rename,
//! directory fsync). Rewriting is idempotent (same files, same bytes).
//!
//! Each object is the instance's DICOM JSON model, encoded by
//! [`crate::dicom::part10::json`] (its module documentation says what it
//! holds and how bulk data URIs are formed).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;

use super::{key_of, Studies, StudyError};
use crate::dicom::part10::json::{encode_instance, BulkPrefix};
use crate::model::error_chain;
use crate::model::{StoredInstance, Uid};
use crate::services::Partition;
use crate::storage::{self, layout, PendingSync, SeriesKey};

pub use crate::dicom::part10::json::BULK_DATA_THRESHOLD;

/// What [`Studies::write_series_metadata`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetadataReport {
    /// Series metadata files written.
    pub series: u64,
    /// Instances in them.
    pub instances: u64,
    /// Bytes written.
    pub bytes: u64,
    /// Instances left out (their file could not be parsed), with the
    /// reason; a series none of whose files parse gets no file.
    pub skipped: Vec<(Uid, String)>,
    /// Series whose file was deleted: no longer in the study (or none of
    /// their files parse).
    pub removed: Vec<Uid>,
}

impl Studies {
    /// Writes the metadata file of every series of a study (see the module
    /// documentation) from its stored files, replacing the ones there, and
    /// deletes the files of series the study no longer has. Idempotent.
    ///
    /// Errors: [`StudyError::UnknownStudy`], [`StudyError::Nearline`]; index
    /// and storage failures (transient: run it again). A file that does
    /// not parse is not an error: it is reported in
    /// [`MetadataReport::skipped`].
    pub fn write_series_metadata(
        &self,
        partition: &Partition,
        study_uid: &Uid,
    ) -> Result<MetadataReport, StudyError> {
        self.update_series_metadata(partition, study_uid, None)
    }

    /// As [`Studies::write_series_metadata`], but rewrites only the series
    /// in `changed` (those that received instances) and the series that
    /// have no file yet; `None` rewrites them all. What StudyProcess runs
    /// after arrivals, so that a large study is not read again whole for
    /// every batch of new instances.
    pub fn update_series_metadata(
        &self,
        partition: &Partition,
        study_uid: &Uid,
        changed: Option<&BTreeSet<Uid>>,
    ) -> Result<MetadataReport, StudyError> {
        let (location, filesystem) = self.online_files(partition, study_uid)?;
        let mut series: BTreeMap<Uid, Vec<StoredInstance>> = BTreeMap::new();
        for instance in self.store().study_instances(partition.id, study_uid)? {
            series
                .entry(instance.series_uid.clone())
                .or_default()
                .push(instance);
        }
        let mut report = MetadataReport::default();
        let mut pending = PendingSync::default();
        let mut written = Vec::new();
        let existing: BTreeSet<Uid> = match changed {
            Some(_) => self
                .storage
                .series_with_metadata(&filesystem, &location)?
                .into_iter()
                .collect(),
            None => BTreeSet::new(),
        };
        for (series_uid, instances) in &series {
            if changed.is_some_and(|c| !c.contains(series_uid)) && existing.contains(series_uid) {
                // Unchanged and written before: kept as it is.
                written.push(series_uid.clone());
                continue;
            }
            let mut objects = Vec::with_capacity(instances.len());
            for instance in instances {
                let bulk = BulkPrefix::new(study_uid, series_uid, &instance.sop_instance_uid);
                let reader = match self.storage.open(&filesystem, &key_of(instance)) {
                    Ok(reader) => reader,
                    Err(storage::Error::NotFound { what }) => {
                        report.skipped.push((
                            instance.sop_instance_uid.clone(),
                            format!("{what} does not exist"),
                        ));
                        continue;
                    }
                    Err(e) => return Err(e.into()),
                };
                match encode_instance(reader, &bulk) {
                    Ok(object) => {
                        let number = object.instance_number();
                        objects.push((number, instance.sop_instance_uid.clone(), object));
                    }
                    Err(error) => report
                        .skipped
                        .push((instance.sop_instance_uid.clone(), error_chain(&error))),
                }
            }
            if objects.is_empty() {
                continue;
            }
            objects.sort_by(|a, b| (a.0.is_none(), a.0, &a.1).cmp(&(b.0.is_none(), b.0, &b.1)));
            let key = SeriesKey {
                location: location.clone(),
                series_uid: series_uid.clone(),
            };
            let mut writer = self.storage.begin_write(&filesystem)?;
            let io_error = |source: std::io::Error| StudyError::Io {
                operation: "write",
                path: layout::series_metadata_path(&key),
                source,
            };
            {
                let mut out = std::io::BufWriter::new(&mut writer);
                out.write_all(b"[").map_err(io_error)?;
                for (i, (_, _, object)) in objects.iter().enumerate() {
                    if i > 0 {
                        out.write_all(b",").map_err(io_error)?;
                    }
                    serde_json::to_writer(&mut out, object)
                        .map_err(|e| io_error(std::io::Error::other(e)))?;
                }
                out.write_all(b"]").map_err(io_error)?;
                out.flush().map_err(io_error)?;
            }
            report.bytes += writer.len();
            pending.merge(writer.persist_series_metadata(&key)?);
            report.series += 1;
            report.instances += objects.len() as u64;
            written.push(series_uid.clone());
        }
        self.storage.sync(pending)?;
        for stale in self.storage.series_with_metadata(&filesystem, &location)? {
            if !written.contains(&stale) {
                let key = SeriesKey {
                    location: location.clone(),
                    series_uid: stale.clone(),
                };
                self.storage.delete_series_metadata(&filesystem, &key)?;
                report.removed.push(stale);
            }
        }
        if report.skipped.is_empty() {
            tracing::info!(
                study_uid = %study_uid,
                series = report.series,
                instances = report.instances,
                bytes = report.bytes,
                removed = report.removed.len(),
                "series metadata written"
            );
        } else {
            tracing::warn!(
                study_uid = %study_uid,
                series = report.series,
                instances = report.instances,
                skipped = report.skipped.len(),
                first = %format!("{}: {}", report.skipped[0].0, report.skipped[0].1),
                "series metadata written without the instances whose file does not parse"
            );
        }
        Ok(report)
    }

    /// The bytes of a series' metadata file (a DICOM JSON array, see the
    /// module documentation): what the DICOMweb series metadata endpoint
    /// will serve. `None` when the series has none (not written yet, or no
    /// such series in the study).
    ///
    /// Errors: [`StudyError::UnknownStudy`], [`StudyError::Nearline`], index
    /// and storage failures.
    pub fn series_metadata(
        &self,
        partition: &Partition,
        study_uid: &Uid,
        series_uid: &Uid,
    ) -> Result<Option<Vec<u8>>, StudyError> {
        let (location, filesystem) = self.online_files(partition, study_uid)?;
        let key = SeriesKey {
            location,
            series_uid: series_uid.clone(),
        };
        Ok(self.storage.read_series_metadata(&filesystem, &key)?)
    }

    /// Deletes a study's series metadata before its files change (edit):
    /// an interruption then leaves no metadata rather than stale metadata.
    pub(super) fn drop_series_metadata(
        &self,
        partition: &Partition,
        study_uid: &Uid,
    ) -> Result<u64, StudyError> {
        let (location, filesystem) = self.online_files(partition, study_uid)?;
        Ok(self.storage.delete_study_metadata(&filesystem, &location)?)
    }

    /// Whether any series of the study has a metadata file.
    pub(super) fn has_series_metadata(
        &self,
        partition: &Partition,
        study_uid: &Uid,
    ) -> Result<bool, StudyError> {
        let (location, filesystem) = self.online_files(partition, study_uid)?;
        Ok(!self
            .storage
            .series_with_metadata(&filesystem, &location)?
            .is_empty())
    }
}
