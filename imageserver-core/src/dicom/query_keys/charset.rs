//! How a response's texts are written: the VR of each attribute in the
//! standard dictionary, whether that VR's text follows the Specific
//! Character Set, and the Specific Character Set a response takes. Both
//! encoders (the data set one in `response.rs`, the flat one in `flat.rs`)
//! ask here.

use super::*;

/// Whether text of this VR is encoded in the Specific Character Set (the
/// others always use the default repertoire).
pub(super) fn uses_character_set(vr: VR) -> bool {
    matches!(
        vr,
        VR::SH | VR::LO | VR::ST | VR::LT | VR::PN | VR::UC | VR::UT
    )
}

/// The VR of an attribute in the standard dictionary.
pub(super) fn dictionary_vr(tag: Tag) -> VR {
    StandardDataDictionary
        .by_tag(tag)
        .map(|entry| entry.vr().relaxed())
        .unwrap_or(VR::UN)
}

/// The Specific Character Set of a response holding `texts`.
pub(super) fn response_character_set(request: Option<&str>, texts: &[&str]) -> Option<String> {
    if texts.iter().all(|t| t.is_ascii()) {
        // The request's own value when we can write it; ASCII is valid in
        // every character set, and without one in the default repertoire.
        return request
            .filter(|cs| dicom_encoding::text::SpecificCharacterSet::from_code(cs).is_some())
            .map(str::to_string);
    }
    let asked_latin1 = request.is_some_and(|cs| {
        cs.split('\\')
            .any(|v| matches!(trim(v), "ISO_IR 100" | "ISO 2022 IR 100"))
    });
    let latin1 = texts
        .iter()
        .all(|t| t.chars().all(|c| u32::from(c) <= 0xFF));
    Some(if asked_latin1 && latin1 {
        "ISO_IR 100".to_string()
    } else {
        "ISO_IR 192".to_string()
    })
}
