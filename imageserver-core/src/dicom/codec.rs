//! Lossless pixel data codecs: the archive's compression (RLE Lossless,
//! PS3.5 Annex G) and the decoding the storage SCU needs when a peer
//! accepts only uncompressed data sets.
//!
//! **Why RLE Lossless.** The dicom-rs 0.10 transfer-syntax registry can
//! *encode* JPEG-LS only through CharLS (a C++ library built with CMake:
//! neither is part of this build, and a C++ toolchain in every build of the
//! archive is a cost out of proportion), and JPEG XL lossless in pure Rust,
//! which DCMTK 3.6.7 and most deployed viewers cannot decode, so every send
//! would have to decompress. RLE Lossless is decoded by everything: DCMTK
//! (`dcmdrle`, and its storage SCPs), pydicom's own decoder, the registry's
//! pure-Rust decoder (enabled here, no new dependency). The registry has no
//! RLE *encoder*, so [`compress_rle`] is ours (PackBits per row and byte
//! plane, as PS3.5 G.3 specifies), and everything it writes is decoded
//! again by the registry's decoder — an implementation that is not ours —
//! and compared with the original pixels before it is used
//! ([`verify_recoded`]). Its ratio is modest (about 1.5–2.5:1 on CT and MR
//! where JPEG-LS reaches about 2.5–3.5:1); a JPEG-LS encoder plugs in here
//! once its build cost is acceptable.
//!
//! Scope: monochrome images (one sample per pixel) of 8 or 16 bits
//! allocated, stored in Explicit or Implicit VR Little Endian. Everything
//! else is left as it is ([`Skip`]). The data set is re-encoded by
//! dicom-object (Explicit VR Little Endian with encapsulated Pixel Data); a
//! recoded file is accepted only when its data set, Pixel Data aside,
//! equals the original's element for element.

use std::borrow::Cow;
use std::io::Read;

use dicom_core::value::{PixelFragmentSequence, PrimitiveValue, Value};
use dicom_core::{DataElement, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_encoding::TransferSyntaxIndex;
use dicom_object::file::ReadPreamble;
use dicom_object::{DefaultDicomObject, InMemDicomObject, OpenFileOptions};
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;

/// RLE Lossless.
pub const RLE_LOSSLESS: &str = "1.2.840.10008.1.2.5";
/// Explicit VR Little Endian.
const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";
/// Implicit VR Little Endian.
const IMPLICIT_LE: &str = "1.2.840.10008.1.2";

/// Why a codec operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The file does not parse.
    #[error("cannot parse the file")]
    Parse(#[source] Box<dicom_object::ReadError>),
    /// Reading the stored file failed.
    #[error("cannot read the stored file")]
    Read(#[source] std::io::Error),
    /// Writing the recoded file failed.
    #[error("cannot write the recoded file")]
    Write(#[source] Box<dicom_object::WriteError>),
    /// Decoding the pixel data failed.
    #[error("cannot decode the pixel data ({transfer_syntax}): {reason}")]
    Decode {
        /// The transfer syntax.
        transfer_syntax: String,
        /// The decoder's reason.
        reason: String,
    },
    /// The registry has no decoder for the transfer syntax.
    #[error("no decoder for transfer syntax {0}")]
    NoDecoder(String),
    /// The recoded file is not the original image.
    #[error("the recoded file differs from the original: {0}")]
    Mismatch(String),
}

/// Why an instance is left as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skip {
    /// Stored in a transfer syntax that is not native little endian
    /// (already compressed, deflated, big endian).
    NotNative(String),
    /// No Pixel Data.
    NoPixelData,
    /// An image this codec does not take (colour, 1 or 32 bits, short
    /// pixel data): the reason.
    Unsupported(String),
}

impl std::fmt::Display for Skip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Skip::NotNative(ts) => write!(f, "stored in {ts}, not native little endian"),
            Skip::NoPixelData => f.write_str("no pixel data"),
            Skip::Unsupported(reason) => f.write_str(reason),
        }
    }
}

/// A recoded Part 10 file.
#[derive(Debug, Clone)]
pub struct Recoded {
    /// The whole file (preamble, meta group, data set).
    pub bytes: Vec<u8>,
    /// Its transfer syntax.
    pub transfer_syntax: &'static str,
    /// Frames encoded.
    pub frames: u32,
}

/// Reads a stored Part 10 file (preamble included) whole.
fn parse(bytes: &[u8]) -> Result<DefaultDicomObject, CodecError> {
    let body = bytes.get(128..).unwrap_or_default();
    OpenFileOptions::new()
        .read_preamble(ReadPreamble::Never)
        .from_reader(body)
        .map_err(|e| CodecError::Parse(Box::new(e)))
}

fn write(object: &DefaultDicomObject) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::new();
    object
        .write_all(&mut out)
        .map_err(|e| CodecError::Write(Box::new(e)))?;
    Ok(out)
}

fn ts_of(object: &DefaultDicomObject) -> &str {
    object.meta().transfer_syntax().trim_end_matches('\0')
}

fn uint(object: &InMemDicomObject, tag: Tag) -> Option<u32> {
    object
        .element(tag)
        .ok()
        .and_then(|e| e.value().to_int::<u32>().ok())
}

/// The geometry of a monochrome image.
struct Geometry {
    rows: usize,
    cols: usize,
    bytes_per_sample: usize,
    frames: usize,
}

impl Geometry {
    fn frame_len(&self) -> usize {
        self.rows * self.cols * self.bytes_per_sample
    }
}

fn geometry(object: &InMemDicomObject) -> Result<Geometry, Skip> {
    let rows = uint(object, tags::ROWS).unwrap_or(0) as usize;
    let cols = uint(object, tags::COLUMNS).unwrap_or(0) as usize;
    let samples = uint(object, tags::SAMPLES_PER_PIXEL).unwrap_or(1);
    let bits = uint(object, tags::BITS_ALLOCATED).unwrap_or(0);
    let frames = object
        .element(tags::NUMBER_OF_FRAMES)
        .ok()
        .and_then(|e| e.to_str().ok())
        .map_or(Some(1), |text| text.trim().parse::<usize>().ok())
        .unwrap_or(0);
    if rows == 0 || cols == 0 || frames == 0 {
        return Err(Skip::Unsupported(
            "rows, columns or number of frames missing".into(),
        ));
    }
    if samples != 1 {
        return Err(Skip::Unsupported(format!(
            "{samples} samples per pixel (monochrome only)"
        )));
    }
    if bits != 8 && bits != 16 {
        return Err(Skip::Unsupported(format!(
            "{bits} bits allocated (8 or 16 only)"
        )));
    }
    Ok(Geometry {
        rows,
        cols,
        bytes_per_sample: bits as usize / 8,
        frames,
    })
}

/// A native Pixel Data value as little-endian bytes.
fn native_bytes(value: &PrimitiveValue) -> Cow<'_, [u8]> {
    match value {
        PrimitiveValue::U16(v) => Cow::Owned(v.iter().flat_map(|s| s.to_le_bytes()).collect()),
        PrimitiveValue::I16(v) => Cow::Owned(v.iter().flat_map(|s| s.to_le_bytes()).collect()),
        other => other.to_bytes(),
    }
}

/// Compresses a stored Part 10 file with RLE Lossless, or says why not.
/// The result is not yet verified: [`verify_recoded`] it.
pub fn compress_rle(original: &[u8]) -> Result<Result<Recoded, Skip>, CodecError> {
    let mut object = parse(original)?;
    let ts = ts_of(&object).to_string();
    if ts != EXPLICIT_LE && ts != IMPLICIT_LE {
        return Ok(Err(Skip::NotNative(ts)));
    }
    let Ok(pixels) = object.element(tags::PIXEL_DATA) else {
        return Ok(Err(Skip::NoPixelData));
    };
    let geometry = match geometry(&object) {
        Ok(g) => g,
        Err(skip) => return Ok(Err(skip)),
    };
    let Value::Primitive(value) = pixels.value() else {
        return Ok(Err(Skip::Unsupported(
            "pixel data is not a native value".into(),
        )));
    };
    let data = native_bytes(value);
    let frame_len = geometry.frame_len();
    if data.len() < frame_len * geometry.frames {
        return Ok(Err(Skip::Unsupported(format!(
            "pixel data has {} bytes, {} frames of {frame_len} need more",
            data.len(),
            geometry.frames
        ))));
    }
    let mut fragments = Vec::with_capacity(geometry.frames);
    let mut offsets = Vec::with_capacity(geometry.frames);
    let mut offset = 0u32;
    for frame in data.chunks_exact(frame_len).take(geometry.frames) {
        let fragment = encode_frame(frame, &geometry);
        offsets.push(offset);
        offset = offset.saturating_add(fragment.len() as u32 + 8);
        fragments.push(fragment);
    }
    object.put(DataElement::new(
        tags::PIXEL_DATA,
        VR::OB,
        Value::PixelSequence(PixelFragmentSequence::new(offsets, fragments)),
    ));
    object.update_meta(|meta| meta.transfer_syntax = RLE_LOSSLESS.to_string());
    Ok(Ok(Recoded {
        bytes: write(&object)?,
        transfer_syntax: RLE_LOSSLESS,
        frames: geometry.frames as u32,
    }))
}

/// One frame as an RLE fragment: the 64-byte header, then one segment per
/// byte plane (most significant first), each row PackBits-encoded on its
/// own and each segment padded to an even length.
fn encode_frame(frame: &[u8], g: &Geometry) -> Vec<u8> {
    let mut out = vec![0u8; 64];
    out[0..4].copy_from_slice(&(g.bytes_per_sample as u32).to_le_bytes());
    let mut plane_row = Vec::with_capacity(g.cols);
    for segment in 0..g.bytes_per_sample {
        let header_at = 4 + 4 * segment;
        let start = (out.len() as u32).to_le_bytes();
        out[header_at..header_at + 4].copy_from_slice(&start);
        let byte = g.bytes_per_sample - 1 - segment;
        for row in frame.chunks_exact(g.cols * g.bytes_per_sample) {
            plane_row.clear();
            plane_row.extend(row.iter().skip(byte).step_by(g.bytes_per_sample));
            packbits(&plane_row, &mut out);
        }
        if out.len() % 2 == 1 {
            out.push(0);
        }
    }
    out
}

/// PackBits (PS3.5 G.3.1): runs of 2–128 equal bytes as `257 - n` and the
/// byte, other bytes as literals of 1–128 after `n - 1`.
fn packbits(row: &[u8], out: &mut Vec<u8>) {
    let n = row.len();
    let mut i = 0;
    while i < n {
        let mut run = 1;
        while i + run < n && run < 128 && row[i + run] == row[i] {
            run += 1;
        }
        if run >= 2 {
            out.push((257 - run) as u8);
            out.push(row[i]);
            i += run;
            continue;
        }
        let start = i;
        while i < n && i - start < 128 {
            if i + 2 < n && row[i] == row[i + 1] && row[i] == row[i + 2] {
                break;
            }
            i += 1;
        }
        out.push((i - start - 1) as u8);
        out.extend_from_slice(&row[start..i]);
    }
}

/// Whether the registry decodes `transfer_syntax` to native pixels.
pub fn can_decode(transfer_syntax: &str) -> bool {
    transfer_syntax == RLE_LOSSLESS
}

/// Every frame's native little-endian bytes (`frames × rows × columns ×
/// bytes per sample`), decoded by the registry when encapsulated.
fn native_frames(object: &DefaultDicomObject) -> Result<Vec<u8>, CodecError> {
    let ts = ts_of(object).to_string();
    let geometry = geometry(object).map_err(|skip| CodecError::Decode {
        transfer_syntax: ts.clone(),
        reason: skip.to_string(),
    })?;
    let wanted = geometry.frame_len() * geometry.frames;
    let pixels = object
        .element(tags::PIXEL_DATA)
        .map_err(|_| CodecError::Decode {
            transfer_syntax: ts.clone(),
            reason: "no pixel data".into(),
        })?;
    match pixels.value() {
        Value::Primitive(value) => {
            let mut bytes = native_bytes(value).into_owned();
            if bytes.len() < wanted {
                return Err(CodecError::Decode {
                    transfer_syntax: ts,
                    reason: format!("{} bytes of pixel data, {wanted} expected", bytes.len()),
                });
            }
            bytes.truncate(wanted);
            Ok(bytes)
        }
        _ => {
            let reader = TransferSyntaxRegistry
                .get(&ts)
                .and_then(|t| t.pixel_data_reader())
                .ok_or_else(|| CodecError::NoDecoder(ts.clone()))?;
            let mut out = Vec::with_capacity(wanted);
            reader
                .decode(object, &mut out)
                .map_err(|e| CodecError::Decode {
                    transfer_syntax: ts.clone(),
                    reason: e.to_string(),
                })?;
            if out.len() != wanted {
                return Err(CodecError::Decode {
                    transfer_syntax: ts,
                    reason: format!("decoded {} bytes, {wanted} expected", out.len()),
                });
            }
            Ok(out)
        }
    }
}

/// Checks a recoded file against its original: it parses, its SOP
/// Instance UID (meta and data set) is the original's, every element but
/// Pixel Data is equal, and every frame decodes (by the registry's
/// decoder) to the original's bytes.
pub fn verify_recoded(original: &[u8], recoded: &[u8]) -> Result<(), CodecError> {
    let before = parse(original)?;
    let after = parse(recoded)?;
    if before.meta().media_storage_sop_instance_uid()
        != after.meta().media_storage_sop_instance_uid()
    {
        return Err(CodecError::Mismatch(
            "media storage SOP instance UID".into(),
        ));
    }
    let mut others = 0usize;
    for element in before.iter() {
        if element.header().tag == tags::PIXEL_DATA {
            continue;
        }
        others += 1;
        match after.element(element.header().tag) {
            Ok(other) if other.value() == element.value() => {}
            _ => {
                return Err(CodecError::Mismatch(format!(
                    "element {} differs",
                    element.header().tag
                )))
            }
        }
    }
    if after.iter().count() != others + 1 {
        return Err(CodecError::Mismatch("the element count differs".into()));
    }
    let (a, b) = (native_frames(&before)?, native_frames(&after)?);
    if a != b {
        let at = a.iter().zip(&b).position(|(x, y)| x != y).unwrap_or(0);
        return Err(CodecError::Mismatch(format!(
            "pixel data differs (first at byte {at})"
        )));
    }
    Ok(())
}

/// Checks that `bytes` is a recoded file of instance `sop_instance_uid`:
/// it parses, is stored in a transfer syntax [`can_decode`] takes, names
/// that instance, and every frame decodes. What a rerun of an interrupted
/// compression asks of a file the index does not describe yet.
pub fn check_recoded(bytes: &[u8], sop_instance_uid: &str) -> Result<(), CodecError> {
    let object = parse(bytes)?;
    let ts = ts_of(&object);
    if !can_decode(ts) {
        return Err(CodecError::Mismatch(format!(
            "stored in {ts}, not a recoded file"
        )));
    }
    let meta_uid = object.meta().media_storage_sop_instance_uid();
    let uid = object.element(tags::SOP_INSTANCE_UID).ok().and_then(|e| {
        e.to_str()
            .ok()
            .map(|t| t.trim_end_matches(['\0', ' ']).to_string())
    });
    if meta_uid.trim_end_matches(['\0', ' ']) != sop_instance_uid
        || uid.as_deref() != Some(sop_instance_uid)
    {
        return Err(CodecError::Mismatch(format!(
            "not instance {sop_instance_uid}"
        )));
    }
    native_frames(&object).map(drop)
}

/// Decodes a stored file whose transfer syntax [`can_decode`] into a Part
/// 10 file in `to` (Explicit or Implicit VR Little Endian) with native
/// Pixel Data: what a peer that accepts only uncompressed data sets gets.
pub fn decode_to_native(stored: &[u8], to: &str) -> Result<Vec<u8>, CodecError> {
    let mut object = parse(stored)?;
    let target = TransferSyntaxRegistry
        .get(to)
        .filter(|_| to == EXPLICIT_LE || to == IMPLICIT_LE)
        .ok_or_else(|| CodecError::NoDecoder(to.to_string()))?;
    let pixels = native_frames(&object)?;
    let value = if uint(&object, tags::BITS_ALLOCATED) == Some(16) {
        let samples: Vec<u16> = pixels
            .chunks_exact(2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
            .collect();
        DataElement::new(
            tags::PIXEL_DATA,
            VR::OW,
            PrimitiveValue::U16(samples.into()),
        )
    } else {
        let mut pixels = pixels;
        if pixels.len() % 2 == 1 {
            pixels.push(0);
        }
        DataElement::new(tags::PIXEL_DATA, VR::OB, PrimitiveValue::U8(pixels.into()))
    };
    object.put(value);
    object.update_meta(|meta| meta.set_transfer_syntax(target));
    write(&object)
}

/// A stored file decoded for a peer ([`decode_to_native`] into `to`) as
/// the data set stream the storage SCU and C-GET send. `file_size` is the
/// indexed size the stored file must have. The reason on failure.
pub(crate) fn decoded_data_set(
    file: &mut dyn Read,
    file_size: Option<u64>,
    to: &str,
) -> Result<super::part10::DataSetReader<'static>, String> {
    let limit = file_size.unwrap_or(u64::MAX);
    let mut stored = Vec::new();
    file.take(limit.saturating_add(1))
        .read_to_end(&mut stored)
        .map_err(|e| format!("cannot read the stored instance: {e}"))?;
    if file_size.is_some_and(|size| size != stored.len() as u64) {
        return Err(format!(
            "the stored file has {} bytes, the index says {limit}",
            stored.len()
        ));
    }
    let native = decode_to_native(&stored, to)
        .map_err(|e| format!("cannot decode the stored instance for the peer: {e}"))?;
    drop(stored);
    let len = native.len() as u64;
    super::part10::DataSetReader::new(Box::new(std::io::Cursor::new(native)), Some(len))
        .map_err(|e| format!("the decoded instance is not a Part 10 file: {e}"))
}

/// The transfer syntax to decode `stored` into for a peer that accepted
/// `accepted` (for the instance's SOP class): Explicit VR Little Endian,
/// else Implicit; `None` when `stored` cannot be decoded or the peer takes
/// neither.
pub fn fallback_for<'a>(stored: &str, accepted: &[&'a str]) -> Option<&'a str> {
    if !can_decode(stored) {
        return None;
    }
    [EXPLICIT_LE, IMPLICIT_LE]
        .into_iter()
        .find_map(|want| accepted.iter().copied().find(|a| *a == want))
}

#[cfg(test)]
mod tests {
    use super::*;
    use dicom_object::meta::FileMetaTableBuilder;

    fn image(bits: u16, rows: u16, cols: u16, frames: u32, ts: &str) -> (Vec<u8>, Vec<u8>) {
        let mut obj = InMemDicomObject::new_empty();
        let sop = "1.2.3.4.5.6";
        obj.put(DataElement::new(
            tags::SOP_CLASS_UID,
            VR::UI,
            PrimitiveValue::from("1.2.840.10008.5.1.4.1.1.2"),
        ));
        obj.put(DataElement::new(
            tags::SOP_INSTANCE_UID,
            VR::UI,
            PrimitiveValue::from(sop),
        ));
        obj.put(DataElement::new(
            tags::PATIENT_NAME,
            VR::PN,
            PrimitiveValue::from("DOE^JOHN"),
        ));
        obj.put(DataElement::new(
            tags::SAMPLES_PER_PIXEL,
            VR::US,
            PrimitiveValue::from(1u16),
        ));
        obj.put(DataElement::new(
            tags::PHOTOMETRIC_INTERPRETATION,
            VR::CS,
            PrimitiveValue::from("MONOCHROME2"),
        ));
        obj.put(DataElement::new(
            tags::ROWS,
            VR::US,
            PrimitiveValue::from(rows),
        ));
        obj.put(DataElement::new(
            tags::COLUMNS,
            VR::US,
            PrimitiveValue::from(cols),
        ));
        obj.put(DataElement::new(
            tags::BITS_ALLOCATED,
            VR::US,
            PrimitiveValue::from(bits),
        ));
        obj.put(DataElement::new(
            tags::BITS_STORED,
            VR::US,
            PrimitiveValue::from(bits),
        ));
        obj.put(DataElement::new(
            tags::HIGH_BIT,
            VR::US,
            PrimitiveValue::from(bits - 1),
        ));
        obj.put(DataElement::new(
            tags::PIXEL_REPRESENTATION,
            VR::US,
            PrimitiveValue::from(0u16),
        ));
        if frames > 1 {
            obj.put(DataElement::new(
                tags::NUMBER_OF_FRAMES,
                VR::IS,
                PrimitiveValue::from(frames.to_string()),
            ));
        }
        let n = rows as usize * cols as usize * frames as usize;
        // Smooth areas, runs, noise and edges: every PackBits case.
        let mut state = 7u32;
        let samples: Vec<u16> = (0..n)
            .map(|i| {
                state = state.wrapping_mul(1_103_515_245).wrapping_add(12345);
                let x = i % cols as usize;
                match (i / cols as usize) % 4 {
                    0 => 0,
                    1 => (x as u16 / 3) * 40,
                    2 => (state >> 16) as u16,
                    _ => {
                        if x.is_multiple_of(2) {
                            1000
                        } else {
                            (state >> 20) as u16
                        }
                    }
                }
            })
            .collect();
        let raw: Vec<u8> = if bits == 16 {
            samples.iter().flat_map(|s| s.to_le_bytes()).collect()
        } else {
            samples.iter().map(|s| *s as u8).collect()
        };
        if bits == 16 {
            obj.put(DataElement::new(
                tags::PIXEL_DATA,
                VR::OW,
                PrimitiveValue::U16(samples.into()),
            ));
        } else {
            let mut padded = raw.clone();
            if padded.len() % 2 == 1 {
                padded.push(0);
            }
            obj.put(DataElement::new(
                tags::PIXEL_DATA,
                VR::OB,
                PrimitiveValue::U8(padded.into()),
            ));
        }
        let file = obj
            .with_meta(
                FileMetaTableBuilder::new()
                    .transfer_syntax(ts)
                    .media_storage_sop_class_uid("1.2.840.10008.5.1.4.1.1.2")
                    .media_storage_sop_instance_uid(sop),
            )
            .unwrap();
        (write(&file).unwrap(), raw)
    }

    #[test]
    fn rle_round_trips_through_the_registry_decoder() {
        for (bits, rows, cols, frames, ts) in [
            (16, 17, 300, 1, EXPLICIT_LE),
            (16, 8, 8, 3, IMPLICIT_LE),
            (8, 5, 131, 2, EXPLICIT_LE),
            (8, 3, 3, 1, IMPLICIT_LE),
        ] {
            let (file, raw) = image(bits, rows, cols, frames, ts);
            let recoded = compress_rle(&file).unwrap().unwrap();
            assert_eq!(recoded.frames, frames);
            verify_recoded(&file, &recoded.bytes).unwrap();
            let decoded = parse(&recoded.bytes).unwrap();
            assert_eq!(
                native_frames(&decoded).unwrap(),
                raw,
                "{bits} bits {rows}x{cols}x{frames}"
            );
            // Sent to a peer that takes only uncompressed data sets.
            for to in [EXPLICIT_LE, IMPLICIT_LE] {
                let native = decode_to_native(&recoded.bytes, to).unwrap();
                let back = parse(&native).unwrap();
                assert_eq!(ts_of(&back), to);
                assert_eq!(native_frames(&back).unwrap(), raw);
                assert!(compress_rle(&native).unwrap().is_ok());
            }
            // Already compressed: left alone.
            assert_eq!(
                compress_rle(&recoded.bytes).unwrap().unwrap_err(),
                Skip::NotNative(RLE_LOSSLESS.into())
            );
        }
    }

    #[test]
    fn packbits_handles_every_run_shape() {
        let decode = |mut data: &[u8]| {
            let mut out = Vec::new();
            while let [control, rest @ ..] = data {
                let c = *control as i8;
                if c >= 0 {
                    let n = c as usize + 1;
                    out.extend_from_slice(&rest[..n]);
                    data = &rest[n..];
                } else {
                    assert_ne!(c, -128);
                    out.extend(std::iter::repeat_n(rest[0], (1 - c as isize) as usize));
                    data = &rest[1..];
                }
            }
            out
        };
        let cases: Vec<Vec<u8>> = vec![
            vec![],
            vec![1],
            vec![1, 1],
            vec![1, 2],
            vec![5; 300],
            (0..=255).chain(0..=255).collect(),
            [vec![1, 2, 3], vec![9; 129], vec![4, 4, 5]].concat(),
        ];
        for row in cases {
            let mut out = Vec::new();
            packbits(&row, &mut out);
            assert_eq!(decode(&out), row);
        }
    }

    #[test]
    fn a_recoded_file_with_other_pixels_or_elements_is_refused() {
        let (file, _) = image(16, 4, 4, 1, EXPLICIT_LE);
        let recoded = compress_rle(&file).unwrap().unwrap();
        let mut object = parse(&recoded.bytes).unwrap();
        object.put(DataElement::new(
            tags::PATIENT_NAME,
            VR::PN,
            PrimitiveValue::from("DOE^JANE"),
        ));
        assert!(matches!(
            verify_recoded(&file, &write(&object).unwrap()),
            Err(CodecError::Mismatch(_))
        ));
        let (other, _) = image(16, 4, 4, 1, EXPLICIT_LE);
        let mut other_obj = parse(&other).unwrap();
        other_obj.put(DataElement::new(
            tags::PIXEL_DATA,
            VR::OW,
            PrimitiveValue::U16(vec![7u16; 16].into()),
        ));
        let other_rle = compress_rle(&write(&other_obj).unwrap()).unwrap().unwrap();
        assert!(matches!(
            verify_recoded(&file, &other_rle.bytes),
            Err(CodecError::Mismatch(_))
        ));
    }

    #[test]
    fn fallbacks_prefer_explicit_little_endian() {
        assert_eq!(
            fallback_for(RLE_LOSSLESS, &[IMPLICIT_LE, EXPLICIT_LE]),
            Some(EXPLICIT_LE)
        );
        assert_eq!(
            fallback_for(RLE_LOSSLESS, &[IMPLICIT_LE]),
            Some(IMPLICIT_LE)
        );
        assert_eq!(
            fallback_for(RLE_LOSSLESS, &["1.2.840.10008.1.2.4.80"]),
            None
        );
        assert_eq!(fallback_for("1.2.840.10008.1.2.4.80", &[EXPLICIT_LE]), None);
    }
}
