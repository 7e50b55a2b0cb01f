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
    /// An identifying attribute is longer than its VR allows (PS3.5 Table
    /// 6.2-1): cutting it would merge it with another identity.
    #[error("{attribute} is {length} characters long; its VR allows {max}")]
    TooLong {
        /// Which attribute.
        attribute: &'static str,
        /// Its length in characters.
        length: usize,
        /// The VR's maximum.
        max: usize,
    },
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
///
/// Reads with `get`, never `element_opt`: dicom-object makes an absent
/// attribute an error first, which captures a backtrace unconditionally
/// (`Backtrace::force_capture`) — a few percent of the server's CPU at
/// ingest, where most optional attributes are absent.
pub(crate) fn text(header: &DefaultDicomObject, tag: Tag) -> Option<String> {
    let element = header.get(tag)?;
    let value = element.to_str().ok()?;
    let trimmed = value.trim_matches(|c: char| c == ' ' || c == '\0');
    (!trimmed.is_empty()).then(|| trimmed.to_string())
}

fn int(header: &DefaultDicomObject, tag: Tag) -> Option<i32> {
    header.get(tag)?.to_int::<i32>().ok()
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

/// Maximum value lengths of PS3.5 Table 6.2-1, in characters (TM as
/// dicom-rs allows it: 16, for the fractional forms).
mod max_len {
    pub const AE_SH_CS: usize = 16;
    pub const LO: usize = 64;
    pub const PN_GROUP: usize = 64;
    pub const DA: usize = 8;
    pub const TM: usize = 16;
}

/// An identifying value (PatientID, IssuerOfPatientID): refused when longer
/// than `max`, never cut.
fn identifier(
    value: Option<String>,
    attribute: &'static str,
    max: usize,
) -> Result<Option<String>, HeaderError> {
    match value {
        Some(v) if v.chars().count() > max => Err(HeaderError::TooLong {
            attribute,
            length: v.chars().count(),
            max,
        }),
        other => Ok(other),
    }
}

/// The indexed copy of a descriptive value: each of its values (`\`
/// separated) cut to `max` characters, at most `max * 4` characters in all
/// (the file keeps the value as received).
fn clipped(value: Option<String>, max: usize) -> Option<String> {
    let value = value?;
    let within = |v: &str| v.chars().count() <= max;
    let total = max * 4;
    if value.split('\\').all(within) && value.chars().count() <= total {
        return Some(value);
    }
    let mut out = String::new();
    for (i, part) in value.split('\\').enumerate() {
        let part: String = part.chars().take(max).collect();
        if out.chars().count() + part.chars().count() + usize::from(i > 0) > total {
            break;
        }
        if i > 0 {
            out.push('\\');
        }
        out.push_str(&part);
    }
    let out = out.trim_end_matches([' ', '\\']).to_string();
    (!out.is_empty()).then_some(out)
}

/// The indexed copy of a person name: each component group (`=`) cut to
/// 64 characters.
fn person_name(value: Option<String>) -> Option<String> {
    let value = value?;
    if value
        .split('=')
        .all(|g| g.chars().count() <= max_len::PN_GROUP)
    {
        return clipped(Some(value), max_len::PN_GROUP * 3);
    }
    let groups: Vec<String> = value
        .split('=')
        .take(3)
        .map(|g| g.chars().take(max_len::PN_GROUP).collect())
        .collect();
    clipped(Some(groups.join("=")), max_len::PN_GROUP * 3)
}

/// A date or time: a longer value is not one, and is indexed as absent (a
/// cut date would match the wrong studies).
fn temporal(value: Option<String>, max: usize) -> Option<String> {
    value.filter(|v| v.chars().count() <= max)
}

/// The index record of an instance, from its header and `facts`. Indexed
/// attributes are held to their VR's maximum length (PS3.5 Table 6.2-1):
/// an over-long PatientID or IssuerOfPatientID is refused
/// ([`HeaderError::TooLong`]); other text is cut in the index only, and an
/// over-long date or time indexed as absent.
pub(crate) fn instance_record(
    header: &DefaultDicomObject,
    facts: RecordFacts,
) -> Result<InstanceRecord, HeaderError> {
    let lo = |tag| clipped(text(header, tag), max_len::LO);
    let sh = |tag| clipped(text(header, tag), max_len::AE_SH_CS);
    let pn = |tag| person_name(text(header, tag));
    let da = |tag| temporal(text(header, tag), max_len::DA);
    let tm = |tag| temporal(text(header, tag), max_len::TM);
    Ok(InstanceRecord {
        partition: facts.partition,
        location: facts.location,
        patient: PatientAttrs {
            patient_id: identifier(text(header, tags::PATIENT_ID), "PatientID", max_len::LO)?
                .unwrap_or_default(),
            issuer_of_patient_id: identifier(
                text(header, tags::ISSUER_OF_PATIENT_ID),
                "IssuerOfPatientID",
                max_len::LO,
            )?,
            patient_name: pn(tags::PATIENT_NAME),
            birth_date: da(tags::PATIENT_BIRTH_DATE),
            sex: sh(tags::PATIENT_SEX),
        },
        study: StudyAttrs {
            study_uid: required_uid(header, tags::STUDY_INSTANCE_UID, "Study Instance UID")?,
            study_date: da(tags::STUDY_DATE),
            study_time: tm(tags::STUDY_TIME),
            accession_number: sh(tags::ACCESSION_NUMBER),
            study_id: sh(tags::STUDY_ID),
            study_description: lo(tags::STUDY_DESCRIPTION),
            referring_physician_name: pn(tags::REFERRING_PHYSICIAN_NAME),
            specific_character_set: sh(tags::SPECIFIC_CHARACTER_SET),
        },
        series: SeriesAttrs {
            series_uid: required_uid(header, tags::SERIES_INSTANCE_UID, "Series Instance UID")?,
            modality: sh(tags::MODALITY),
            series_number: int(header, tags::SERIES_NUMBER),
            series_description: lo(tags::SERIES_DESCRIPTION),
            body_part_examined: sh(tags::BODY_PART_EXAMINED),
            series_date: da(tags::SERIES_DATE),
            series_time: tm(tags::SERIES_TIME),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_past_their_vr_length_are_refused_not_cut() {
        let ok = "A".repeat(64);
        assert_eq!(
            identifier(Some(ok.clone()), "PatientID", max_len::LO).unwrap(),
            Some(ok)
        );
        let long = "Ä".repeat(65);
        assert!(matches!(
            identifier(Some(long), "PatientID", max_len::LO),
            Err(HeaderError::TooLong {
                attribute: "PatientID",
                length: 65,
                max: 64
            })
        ));
    }

    #[test]
    fn descriptive_values_are_cut_per_value_in_the_index() {
        assert_eq!(clipped(Some("CT".into()), 16).as_deref(), Some("CT"));
        assert_eq!(
            clipped(Some("x".repeat(3000)), max_len::LO),
            Some("x".repeat(64))
        );
        // Multi-valued: each value cut, at most four values' worth.
        let many = vec!["ISO_IR 100"; 100].join("\\");
        let cut = clipped(Some(many), 16).unwrap();
        assert!(cut.chars().count() <= 64, "{cut}");
        assert!(cut.split('\\').all(|v| v == "ISO_IR 100"), "{cut}");
        let names = format!("{}={}", "A".repeat(100), "B".repeat(10));
        assert_eq!(
            person_name(Some(names)),
            Some(format!("{}={}", "A".repeat(64), "B".repeat(10)))
        );
        assert_eq!(temporal(Some("2024-01-01".into()), max_len::DA), None);
        assert_eq!(
            temporal(Some("20240101".into()), max_len::DA).as_deref(),
            Some("20240101")
        );
        assert_eq!(
            temporal(Some("120000.123456".into()), max_len::TM).as_deref(),
            Some("120000.123456")
        );
    }
}
