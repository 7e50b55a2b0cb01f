//! A parsed Part 10 header as the index sees it: the one mapping from a
//! file's attributes to an [`InstanceRecord`], shared by ingest (C-STORE,
//! import) and reprocess.

use dicom_core::Tag;
use dicom_dictionary_std::tags;
use dicom_object::DefaultDicomObject;

use crate::model::{
    InstanceAttrs, InstanceRecord, PartitionId, PatientAttrs, SeriesAttrs, StudyAttrs,
    StudyLocation, Uid, UidError,
};

/// Why a header cannot become an index record.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HeaderError {
    /// A required attribute is absent or empty.
    #[error("no {0}")]
    Missing(&'static str),
    /// A UID attribute holds something that is not a UID.
    #[error(transparent)]
    InvalidUid(#[from] InvalidUid),
}

/// A UID attribute (in a header or a command) that holds something that is
/// not a UID.
#[derive(Debug, thiserror::Error)]
#[error("invalid {attribute} {value:?}")]
pub struct InvalidUid {
    /// Which attribute.
    pub attribute: &'static str,
    /// The offending value (truncated).
    pub value: String,
    /// What is wrong with it.
    #[source]
    pub source: UidError,
}

/// What the header does not say about an instance: where its file lies
/// and what was written.
#[derive(Debug, Clone)]
pub(crate) struct RecordFacts {
    /// The partition it belongs to.
    pub partition: PartitionId,
    /// Its study's placement.
    pub location: StudyLocation,
    /// The transfer syntax of its data set.
    pub transfer_syntax_uid: Uid,
    /// Size of the whole file.
    pub file_size: u64,
    /// BLAKE3 of the whole file, lowercase hex.
    pub digest: String,
    /// The AE that sent it, when known.
    pub source_ae: Option<String>,
}

/// A trimmed, non-empty string value of a root-level attribute.
pub(crate) fn text(header: &DefaultDicomObject, tag: Tag) -> Option<String> {
    let element = header.element_opt(tag).ok().flatten()?;
    let value = element.to_str().ok()?;
    let trimmed = value.trim_matches(|c: char| c == ' ' || c == '\0');
    (!trimmed.is_empty()).then(|| trimmed.to_string())
}

fn int(header: &DefaultDicomObject, tag: Tag) -> Option<i32> {
    header.element_opt(tag).ok().flatten()?.to_int::<i32>().ok()
}

/// A UID value, checked (`attribute` names it in errors).
pub(crate) fn parse_uid(attribute: &'static str, value: &str) -> Result<Uid, HeaderError> {
    Uid::parse(value).map_err(|source| {
        HeaderError::from(InvalidUid {
            attribute,
            value: value.chars().take(80).collect(),
            source,
        })
    })
}

/// A required UID attribute of the header.
pub(crate) fn required_uid(
    header: &DefaultDicomObject,
    tag: Tag,
    attribute: &'static str,
) -> Result<Uid, HeaderError> {
    let value = text(header, tag).ok_or(HeaderError::Missing(attribute))?;
    parse_uid(attribute, &value)
}

/// The index record of an instance, from its header and `facts`.
pub(crate) fn instance_record(
    header: &DefaultDicomObject,
    facts: RecordFacts,
) -> Result<InstanceRecord, HeaderError> {
    Ok(InstanceRecord {
        partition: facts.partition,
        location: facts.location,
        patient: PatientAttrs {
            patient_id: text(header, tags::PATIENT_ID).unwrap_or_default(),
            issuer_of_patient_id: text(header, tags::ISSUER_OF_PATIENT_ID),
            patient_name: text(header, tags::PATIENT_NAME),
            birth_date: text(header, tags::PATIENT_BIRTH_DATE),
            sex: text(header, tags::PATIENT_SEX),
        },
        study: StudyAttrs {
            study_uid: required_uid(header, tags::STUDY_INSTANCE_UID, "Study Instance UID")?,
            study_date: text(header, tags::STUDY_DATE),
            study_time: text(header, tags::STUDY_TIME),
            accession_number: text(header, tags::ACCESSION_NUMBER),
            study_id: text(header, tags::STUDY_ID),
            study_description: text(header, tags::STUDY_DESCRIPTION),
            referring_physician_name: text(header, tags::REFERRING_PHYSICIAN_NAME),
            specific_character_set: text(header, tags::SPECIFIC_CHARACTER_SET),
        },
        series: SeriesAttrs {
            series_uid: required_uid(header, tags::SERIES_INSTANCE_UID, "Series Instance UID")?,
            modality: text(header, tags::MODALITY),
            series_number: int(header, tags::SERIES_NUMBER),
            series_description: text(header, tags::SERIES_DESCRIPTION),
            body_part_examined: text(header, tags::BODY_PART_EXAMINED),
            series_date: text(header, tags::SERIES_DATE),
            series_time: text(header, tags::SERIES_TIME),
        },
        instance: InstanceAttrs {
            sop_instance_uid: required_uid(header, tags::SOP_INSTANCE_UID, "SOP Instance UID")?,
            sop_class_uid: required_uid(header, tags::SOP_CLASS_UID, "SOP Class UID")?,
            instance_number: int(header, tags::INSTANCE_NUMBER),
            transfer_syntax_uid: facts.transfer_syntax_uid,
            file_size: facts.file_size,
            digest: facts.digest,
            source_ae: facts.source_ae,
        },
        deletions_seen: None,
    })
}

/// The facts a stored file's own meta group gives (transfer syntax, source
/// AE), with where it lies and its size and digest.
pub(crate) fn stored_file_facts(
    header: &DefaultDicomObject,
    partition: PartitionId,
    location: &StudyLocation,
    file_size: u64,
    digest: String,
) -> Result<RecordFacts, HeaderError> {
    let meta = header.meta();
    let source_ae = meta
        .source_application_entity_title()
        .map(|ae| ae.trim_matches([' ', '\0']).to_string())
        .filter(|ae| !ae.is_empty());
    Ok(RecordFacts {
        partition,
        location: location.clone(),
        transfer_syntax_uid: parse_uid("Transfer Syntax UID", meta.transfer_syntax())?,
        file_size,
        digest,
        source_ae,
    })
}
