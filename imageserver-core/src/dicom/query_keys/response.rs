//! Matches → C-FIND response identifiers, in the right Specific Character
//! Set.

use super::charset::{dictionary_vr, response_character_set, uses_character_set};
use super::*;

/// A response data set could not be written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot encode the C-FIND response: {0}")]
pub struct EncodeError(String);

/// A text element with `value` split into its values where the VR allows
/// several.
fn text_element(tag: Tag, vr: VR, value: &str) -> DataElement<InMemDicomObject> {
    let value = if uses_character_set(vr) {
        Cow::Borrowed(value)
    } else {
        // Default-repertoire VRs cannot carry other characters.
        Cow::Owned(
            value
                .chars()
                .map(|c| if c.is_ascii() { c } else { '?' })
                .collect(),
        )
    };
    let single_valued = matches!(vr, VR::LT | VR::ST | VR::UT | VR::UR);
    let primitive = if single_valued || !value.contains('\\') {
        PrimitiveValue::from(value.into_owned())
    } else {
        PrimitiveValue::Strs(value.split('\\').map(str::to_string).collect())
    };
    DataElement::new(tag, vr, primitive)
}

pub(super) fn empty_element(tag: Tag, vr: VR) -> DataElement<InMemDicomObject> {
    if vr == VR::SQ {
        DataElement::new(
            tag,
            VR::SQ,
            Value::from(DataSetSequence::<InMemDicomObject>::empty()),
        )
    } else {
        DataElement::new(tag, vr, PrimitiveValue::Empty)
    }
}

/// Encodes the response identifier of one match in `transfer_syntax_uid`.
/// See the module documentation for its content. Written flat (straight
/// into bytes) when it can be, else through a data set.
pub fn encode_response(
    parsed: &ParsedQuery,
    found: &Match,
    transfer_syntax_uid: &str,
) -> Result<Vec<u8>, EncodeError> {
    match super::flat::encode(parsed, found, transfer_syntax_uid) {
        Some(bytes) => Ok(bytes),
        None => encode_dataset(parsed, found, transfer_syntax_uid),
    }
}

/// [`encode_response`] through an `InMemDicomObject`: every case, and the
/// reference the flat encoder is tested against.
pub(super) fn encode_dataset(
    parsed: &ParsedQuery,
    found: &Match,
    transfer_syntax_uid: &str,
) -> Result<Vec<u8>, EncodeError> {
    let ts = transfer_syntax(transfer_syntax_uid)
        .ok_or_else(|| EncodeError(format!("unsupported transfer syntax {transfer_syntax_uid}")))?;
    let attributes = parsed.response_attributes();
    let values: Vec<(Attribute, VR, Option<&str>)> = attributes
        .iter()
        .map(|a| {
            let (group, element) = a.tag();
            (*a, dictionary_vr(Tag(group, element)), found.get(*a))
        })
        .collect();
    let texts: Vec<&str> = values
        .iter()
        .filter(|(_, vr, _)| uses_character_set(*vr))
        .filter_map(|(_, _, v)| *v)
        .collect();
    let character_set = response_character_set(parsed.specific_character_set(), &texts);

    let mut object = InMemDicomObject::new_empty();
    if let Some(cs) = &character_set {
        object.put(text_element(tags::SPECIFIC_CHARACTER_SET, VR::CS, cs));
    }
    object.put(text_element(
        tags::QUERY_RETRIEVE_LEVEL,
        VR::CS,
        parsed.query.level.code(),
    ));
    for (attribute, vr, value) in values {
        let (group, element) = attribute.tag();
        let tag = Tag(group, element);
        object.put(match value {
            Some(value) => text_element(tag, vr, value),
            None => empty_element(tag, vr),
        });
    }
    for requested in &parsed.requested {
        let _replaced = match requested {
            Requested::RetrieveAeTitle => object.put(text_element(
                tags::RETRIEVE_AE_TITLE,
                VR::AE,
                &parsed.retrieve_ae_title,
            )),
            Requested::Unsupported(tag, vr) => object.put(empty_element(*tag, *vr)),
            Requested::ModalityAsModalitiesInStudy => {
                object.put(match found.get(Attribute::ModalitiesInStudy) {
                    Some(value) => text_element(tags::MODALITY, VR::CS, value),
                    None => empty_element(tags::MODALITY, VR::CS),
                })
            }
            Requested::Attribute(_) => None,
        };
    }
    let mut bytes = Vec::with_capacity(512);
    object
        .write_dataset_with_ts(&mut bytes, ts)
        .map_err(|e| EncodeError(error_chain(&e)))?;
    // PS3.5 A.5: an odd deflated stream gets one trailing NUL (the writer
    // does not add it, and DCMTK refuses an odd fragment).
    if bytes.len() % 2 == 1 && matches!(ts.codec(), Codec::Dataset(Some(_))) {
        bytes.push(0);
    }
    Ok(bytes)
}
