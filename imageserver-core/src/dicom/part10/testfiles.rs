//! Part 10 files and data set bytes for the tests of `part10` and of the
//! services that read stored files: objects written with their meta group,
//! raw Explicit VR Little Endian elements, and deflated data sets.

use std::io::Write;

use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_object::meta::FileMetaTableBuilder;
use dicom_object::InMemDicomObject;

/// A text element of `object`s.
pub(crate) fn text(tag: Tag, vr: VR, value: &str) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, vr, PrimitiveValue::from(value))
}

/// An object of text elements: (tag, VR, value).
pub(crate) fn texts(elements: &[(Tag, VR, &str)]) -> InMemDicomObject {
    InMemDicomObject::from_element_iter(
        elements
            .iter()
            .map(|&(tag, vr, value)| text(tag, vr, value)),
    )
}

/// `object` as a Part 10 file in transfer syntax `ts` (the meta group's
/// SOP class and instance taken from the object).
pub(crate) fn part10(object: InMemDicomObject, ts: &str) -> Vec<u8> {
    let file = object
        .with_meta(FileMetaTableBuilder::new().transfer_syntax(ts))
        .unwrap();
    let mut bytes = Vec::new();
    file.write_all(&mut bytes).unwrap();
    bytes
}

/// One Explicit VR Little Endian element: tag, VR, its 2- or 4-byte
/// length, value.
pub(crate) fn explicit(tag: (u16, u16), vr: &[u8; 2], value: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&tag.0.to_le_bytes());
    out.extend_from_slice(&tag.1.to_le_bytes());
    out.extend_from_slice(vr);
    if super::walker::SHORT_VRS.contains(&vr) {
        out.extend_from_slice(&(value.len() as u16).to_le_bytes());
    } else {
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    }
    out.extend_from_slice(value);
    out
}

/// `bytes` deflated (raw DEFLATE, as the Deflated transfer syntax has it).
pub(crate) fn deflate(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}
