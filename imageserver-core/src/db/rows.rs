//! Rows to model values, once for both backends.
//!
//! A backend's row type implements [`Columns`] (typed reads by column
//! name, and the backend's own decode error); the mappers below turn the
//! columns the shared statements of [`crate::db::sql`] select into model
//! records, and the counter deltas both ingests fold a batch into. What a
//! backend does differently (placeholders, locking, bulk statements) stays
//! in the backend; what a row *means* lives here.

use std::collections::BTreeSet;

use crate::db::studies::{
    AttributeChange, AuditEntry, DeletedStudy, EditRecord, EditStatus, EditableAttribute,
    StudyRecord,
};
use crate::db::{Error, IngestLookup};
use crate::model::{
    AeTitle, DeviceSpec, DuplicateRecord, Filesystem, FilesystemId, FilesystemSpec, FolderName,
    IndexCounts, InstanceRecord, PartitionId, PatientAttrs, PatientIdentity, ReconcileEntry,
    StoredInstance, StudyAttrs, StudyDeletions, StudyLocation, Tier, Uid,
};

/// The boxed cause of a value the model refuses.
pub(crate) type Cause = Box<dyn std::error::Error + Send + Sync>;

/// Typed reads of a result row by column name.
pub(crate) trait Columns {
    /// The backend's row error.
    type Error;

    /// An integer column (SQLite INTEGER, PostgreSQL BIGINT).
    fn int(&self, column: &str) -> Result<i64, Self::Error>;
    /// A nullable integer column.
    fn opt_int(&self, column: &str) -> Result<Option<i64>, Self::Error>;
    /// A small integer column (PostgreSQL INTEGER).
    fn int32(&self, column: &str) -> Result<i32, Self::Error>;
    /// A floating point column.
    fn real(&self, column: &str) -> Result<f64, Self::Error>;
    /// A boolean column.
    fn flag(&self, column: &str) -> Result<bool, Self::Error>;
    /// A text column.
    fn text(&self, column: &str) -> Result<String, Self::Error>;
    /// A nullable text column.
    fn opt_text(&self, column: &str) -> Result<Option<String>, Self::Error>;
    /// The error for a stored value the model refuses.
    fn invalid(&self, column: &str, cause: Cause) -> Self::Error;

    /// A non-negative integer column as `u64`.
    fn count(&self, column: &str) -> Result<u64, Self::Error> {
        let value = self.int(column)?;
        u64::try_from(value).map_err(|e| self.invalid(column, Box::new(e)))
    }

    /// A text column validated by `parse`.
    fn parsed<T, E>(&self, column: &str, parse: fn(&str) -> Result<T, E>) -> Result<T, Self::Error>
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        let text = self.text(column)?;
        parse(&text).map_err(|e| self.invalid(column, Box::new(e)))
    }

    /// A UID column.
    fn uid(&self, column: &str) -> Result<Uid, Self::Error> {
        self.parsed(column, Uid::parse)
    }

    /// A small integer column narrowed to `T`.
    fn narrow<T: TryFrom<i64>>(&self, column: &str) -> Result<T, Self::Error>
    where
        T::Error: std::error::Error + Send + Sync + 'static,
    {
        let value = i64::from(self.int32(column)?);
        T::try_from(value).map_err(|e| self.invalid(column, Box::new(e)))
    }
}

/// A refused value as a [`Cause`].
fn cause(message: String) -> Cause {
    message.into()
}

/// The columns `filesystem_id, folder, date_folder, study_uid`. A NULL
/// filesystem (a nearline study without online copy) is an error.
pub(crate) fn location<R: Columns>(r: &R) -> Result<StudyLocation, R::Error> {
    Ok(StudyLocation {
        filesystem: FilesystemId(r.int("filesystem_id")?),
        partition_folder: r.parsed("folder", FolderName::parse)?,
        date_folder: r.text("date_folder")?,
        study_uid: r.uid("study_uid")?,
    })
}

/// The columns of [`crate::db::sql::INSTANCE_COLUMNS`].
pub(crate) fn stored_instance<R: Columns>(r: &R) -> Result<StoredInstance, R::Error> {
    Ok(StoredInstance {
        location: location(r)?,
        series_uid: r.uid("series_uid")?,
        sop_instance_uid: r.uid("sop_instance_uid")?,
        sop_class_uid: r.uid("sop_class_uid")?,
        transfer_syntax_uid: r.uid("transfer_syntax_uid")?,
        file_size: r.count("file_size")?,
        digest: r.text("digest")?,
    })
}

/// The columns of [`crate::db::sql::DUPLICATE_COLUMNS`].
pub(crate) fn duplicate<R: Columns>(
    r: &R,
    partition: PartitionId,
) -> Result<DuplicateRecord, R::Error> {
    Ok(DuplicateRecord {
        partition,
        location: location(r)?,
        sop_instance_uid: r.uid("sop_instance_uid")?,
        series_uid: r.uid("series_uid")?,
        variant: r.count("variant")?,
        file_size: r.count("file_size")?,
        digest: r.text("digest")?,
        source_ae: r.opt_text("source_ae")?,
        received_at_ms: r.int("received_at")?,
    })
}

/// A row of [`crate::db::sql::RECONCILE_ENTRIES`].
pub(crate) fn reconcile_entry<R: Columns>(
    r: &R,
    partition: PartitionId,
) -> Result<ReconcileEntry, R::Error> {
    Ok(ReconcileEntry {
        id: r.int("id")?,
        partition,
        location: location(r)?,
        sop_instance_uid: r.uid("sop_instance_uid")?,
        sop_class_uid: r.uid("sop_class_uid")?,
        transfer_syntax_uid: r.uid("transfer_syntax_uid")?,
        series_uid: r.uid("series_uid")?,
        variant: r.count("variant")?,
        file_size: r.count("file_size")?,
        digest: r.text("digest")?,
        source_ae: r.opt_text("source_ae")?,
        received_at_ms: r.int("received_at")?,
        identity: PatientIdentity {
            patient_id: r.text("patient_id")?,
            issuer_of_patient_id: r.opt_text("issuer_of_patient_id")?,
            patient_name: r.opt_text("patient_name")?,
            birth_date: r.opt_text("birth_date")?,
        },
    })
}

/// A row of [`crate::db::sql::FILESYSTEMS`].
pub(crate) fn filesystem<R: Columns>(r: &R) -> Result<Filesystem, R::Error> {
    Ok(Filesystem {
        id: FilesystemId(r.int("id")?),
        spec: FilesystemSpec {
            path: std::path::PathBuf::from(r.text("path")?),
            tier: Tier(r.narrow("tier")?),
            high_watermark: r.real("high_watermark")?,
            low_watermark: r.real("low_watermark")?,
            read_only: r.flag("read_only")?,
            write_only: r.flag("write_only")?,
            description: r.text("description")?,
            capacity_mb: r
                .opt_int("capacity_mb")?
                .map(|mb| u64::try_from(mb).map_err(|e| r.invalid("capacity_mb", Box::new(e))))
                .transpose()?,
        },
        enabled: r.flag("enabled")?,
        marker: r.opt_text("marker")?,
    })
}

/// A row of [`crate::db::sql::DEVICES`].
pub(crate) fn device<R: Columns>(r: &R) -> Result<DeviceSpec, R::Error> {
    let limit = |column: &str| {
        let value = r.int(column)?;
        u32::try_from(value).map_err(|e| r.invalid(column, Box::new(e)))
    };
    Ok(DeviceSpec {
        ae_title: r.parsed("ae_title", AeTitle::parse)?,
        host: r.text("host")?,
        port: r.narrow("port")?,
        allow_store: r.flag("allow_store")?,
        allow_query: r.flag("allow_query")?,
        allow_retrieve: r.flag("allow_retrieve")?,
        allow_replace: r.flag("allow_replace")?,
        max_associations: limit("max_associations")?,
        max_outgoing_associations: limit("max_outgoing_associations")?,
    })
}

/// A row of [`crate::db::sql::COUNTS`].
pub(crate) fn counts<R: Columns>(r: &R) -> Result<IndexCounts, R::Error> {
    Ok(IndexCounts {
        patients: r.count("patients")?,
        studies: r.count("studies")?,
        series: r.count("series")?,
        instances: r.count("instances")?,
    })
}

/// The columns `issuer_of_patient_id` (empty: none), `patient_name`,
/// `birth_date` and `sex` of the patient whose ID is `patient_id`.
fn patient_attrs<R: Columns>(r: &R, patient_id: String) -> Result<PatientAttrs, R::Error> {
    let issuer = r.text("issuer_of_patient_id")?;
    Ok(PatientAttrs {
        patient_id,
        issuer_of_patient_id: (!issuer.is_empty()).then_some(issuer),
        patient_name: r.opt_text("patient_name")?,
        birth_date: r.opt_text("birth_date")?,
        sex: r.opt_text("sex")?,
    })
}

/// A row of [`crate::db::sql::INGEST_LOOKUP`].
pub(crate) fn ingest_lookup<R: Columns>(r: &R) -> Result<IngestLookup, R::Error> {
    let existing = match r.opt_text("sop_instance_uid")? {
        Some(_) => Some(stored_instance(r)?),
        None => None,
    };
    let study_patient = match r.opt_text("patient_id")? {
        Some(patient_id) => Some(patient_attrs(r, patient_id)?),
        None => None,
    };
    Ok(IngestLookup {
        deletions: StudyDeletions {
            deleting: r.flag("deleting")?,
            count: r.count("deletions")?,
            filesystem: r.opt_int("filesystem")?.map(FilesystemId),
        },
        existing,
        study_patient,
    })
}

/// A row of [`crate::db::sql::STUDY`]: the location only when the study
/// has an online copy.
pub(crate) fn study<R: Columns>(r: &R, partition: PartitionId) -> Result<StudyRecord, R::Error> {
    let location = match r.opt_int("filesystem_id")? {
        Some(_) => Some(location(r)?),
        None => None,
    };
    Ok(StudyRecord {
        partition,
        location,
        patient: patient_attrs(r, r.text("patient_id")?)?,
        study: StudyAttrs {
            study_uid: r.uid("study_uid")?,
            study_date: r.opt_text("study_date")?,
            study_time: r.opt_text("study_time")?,
            accession_number: r.opt_text("accession_number")?,
            study_id: r.opt_text("study_id")?,
            study_description: r.opt_text("study_description")?,
            referring_physician_name: r.opt_text("referring_physician_name")?,
            specific_character_set: r.opt_text("specific_character_set")?,
        },
        modalities_in_study: r.text("modalities_in_study")?,
        num_series: r.count("num_series")?,
        num_instances: r.count("num_instances")?,
        size_bytes: r.count("size_bytes")?,
        patient_num_studies: r.count("num_studies")?,
        received_at_ms: r.int("received_at")?,
        updated_at_ms: r.int("updated_at")?,
    })
}

/// A row of [`crate::db::sql::EDITS`], without its changes.
pub(crate) fn edit<R: Columns>(
    r: &R,
    partition: PartitionId,
    study_uid: &Uid,
) -> Result<EditRecord, R::Error> {
    let status = r.text("status")?;
    Ok(EditRecord {
        id: r.int("id")?,
        partition,
        study_uid: study_uid.clone(),
        actor: r.text("actor")?,
        reason: r.text("reason")?,
        status: EditStatus::parse(&status)
            .ok_or_else(|| r.invalid("status", cause(format!("unknown edit status {status:?}"))))?,
        requested_at_ms: r.int("requested_at")?,
        completed_at_ms: r.opt_int("completed_at")?,
        changes: Vec::new(),
    })
}

/// A row of [`crate::db::sql::EDIT_CHANGES`].
pub(crate) fn change<R: Columns>(r: &R) -> Result<AttributeChange, R::Error> {
    let keyword = r.text("attribute")?;
    Ok(AttributeChange {
        attribute: EditableAttribute::from_keyword(&keyword).ok_or_else(|| {
            r.invalid(
                "attribute",
                cause(format!("unknown edited attribute {keyword:?}")),
            )
        })?,
        old_value: r.opt_text("old_value")?,
        new_value: r.text("new_value")?,
    })
}

/// Puts an edit's changes in the tag order of [`EditableAttribute::ALL`].
pub(crate) fn sort_changes(changes: &mut [AttributeChange]) {
    changes.sort_by_key(|c| {
        EditableAttribute::ALL
            .iter()
            .position(|a| *a == c.attribute)
    });
}

/// A row of [`crate::db::sql::AUDIT_LOG`].
pub(crate) fn audit<R: Columns>(
    r: &R,
    partition: PartitionId,
    study_uid: &Uid,
) -> Result<AuditEntry, R::Error> {
    Ok(AuditEntry {
        at_ms: r.int("at")?,
        actor: r.text("actor")?,
        action: r.text("action")?,
        partition: Some(partition),
        study_uid: Some(study_uid.clone()),
        details: r.opt_text("details")?.unwrap_or_default(),
    })
}

/// An audit entry of any partition and study (`audit_entries`).
pub(crate) fn audit_entry<R: Columns>(r: &R) -> Result<AuditEntry, R::Error> {
    let study_uid = match r.opt_text("study_uid")? {
        Some(text) => Some(Uid::parse(&text).map_err(|e| r.invalid("study_uid", Box::new(e)))?),
        None => None,
    };
    Ok(AuditEntry {
        at_ms: r.int("at")?,
        actor: r.text("actor")?,
        action: r.text("action")?,
        partition: r.opt_int("partition_id")?.map(PartitionId),
        study_uid,
        details: r.opt_text("details")?.unwrap_or_default(),
    })
}

/// Refuses records of another partition or study than the one whose rows
/// [`crate::db::studies::StudyStore::replace_study_rows`] replaces.
pub(crate) fn check_replacement(
    partition: PartitionId,
    study_uid: &Uid,
    records: &[InstanceRecord],
) -> Result<(), Error> {
    match records
        .iter()
        .find(|r| r.partition != partition || r.study.study_uid != *study_uid)
    {
        Some(other) => Err(Error::Backend {
            operation: "replacing a study's rows",
            source: format!(
                "instance {} belongs to study {}, not {study_uid}",
                other.instance.sop_instance_uid, other.study.study_uid
            )
            .into(),
        }),
        None => Ok(()),
    }
}

/// A filesystem path as the index stores it (UTF-8), or the error of
/// `operation`.
pub(crate) fn fs_path<'a>(
    spec: &'a FilesystemSpec,
    operation: &'static str,
) -> Result<&'a str, Error> {
    spec.path.to_str().ok_or_else(|| Error::Backend {
        operation,
        source: format!("filesystem path {} is not valid UTF-8", spec.path.display()).into(),
    })
}

/// A filesystem's capacity as the index stores it (a signed 64-bit
/// integer), or the error of `operation`.
pub(crate) fn capacity(
    spec: &FilesystemSpec,
    operation: &'static str,
) -> Result<Option<i64>, Error> {
    spec.capacity_mb
        .map(|mb| {
            i64::try_from(mb).map_err(|e| Error::Backend {
                operation,
                source: Box::new(e),
            })
        })
        .transpose()
}

/// Why a pending edit cannot be completed: what is missing.
#[derive(Debug, thiserror::Error)]
pub(crate) enum EditGone {
    /// The edit is no longer pending (completed or abandoned).
    #[error("pending edit {0}")]
    Edit(i64),
    /// The study's rows are gone.
    #[error("study {0}")]
    Study(Uid),
}

impl From<EditGone> for Error {
    fn from(gone: EditGone) -> Error {
        Error::NotFound {
            what: gone.to_string(),
        }
    }
}

/// What an ingest batch adds to a study's counters (`num_series`,
/// `num_instances`, `size_bytes`), folded before they are written.
#[derive(Default, Clone, Copy)]
pub(crate) struct StudyDelta {
    pub(crate) series: i64,
    pub(crate) instances: i64,
    pub(crate) size: i64,
}

/// What an ingest batch adds to a patient's counters (`num_studies`,
/// `num_series`, `num_instances`).
#[derive(Default, Clone, Copy)]
pub(crate) struct PatientDelta {
    pub(crate) studies: i64,
    pub(crate) series: i64,
    pub(crate) instances: i64,
}

/// Joins distinct values with `\` in sorted order (a multi-valued column
/// such as `modalities_in_study`).
pub(crate) fn joined(values: &BTreeSet<String>) -> String {
    values
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join("\\")
}

/// The distinct values of a `\`-joined column.
pub(crate) fn split(values: &str) -> BTreeSet<String> {
    values
        .split('\\')
        .filter(|v| !v.is_empty())
        .map(str::to_string)
        .collect()
}

/// What [`crate::db::studies::StudyStore::delete_study_rows`] reports: the
/// removed rows of a study with `num_series` series, deleted at `now`.
pub(crate) fn deleted_study(
    location: StudyLocation,
    num_series: u64,
    instances: Vec<StoredInstance>,
    duplicates: Vec<DuplicateRecord>,
    now: i64,
) -> DeletedStudy {
    DeletedStudy {
        location,
        size_bytes: instances.iter().map(|i| i.file_size).sum(),
        num_series,
        instances,
        duplicates,
        since_ms: now,
    }
}

/// The audit entry of a deletion at `now` (the tombstone's time is its
/// `at`).
pub(crate) fn delete_audit(audit: &AuditEntry, now: i64) -> AuditEntry {
    AuditEntry {
        at_ms: now,
        action: "study.delete".to_string(),
        ..audit.clone()
    }
}
