//! Bulk data and frames of a stored Part 10 file, streamed: what the
//! `BulkDataURI`s of [`super::json`] name, and single frames of Pixel
//! Data, written to a caller's sink as they are read (never the whole
//! value in memory).
//!
//! A [`BulkPath`] is the part of a bulk data URI after `/bulk/`: a tag
//! (`7FE00010`) at the top level, or sequence tag, item index and tag
//! (`00880200/0/7FE00010`) at every level, as [`super::json`] forms them.
//! A primitive value's bytes are written as stored; encapsulated Pixel
//! Data is written as its fragments' bytes, the Basic Offset Table left
//! out.
//!
//! Frames ([`write_frame`], numbered from 1) of native Pixel Data are
//! slices of `Rows × Columns × SamplesPerPixel × BitsAllocated / 8` bytes
//! (bit-packed 1-bit data is refused); of encapsulated Pixel Data, the
//! fragments that make up the frame: all of them for a single frame, one
//! fragment per frame when the Basic Offset Table is empty, else the
//! fragments between the frame's offsets.

use std::io::{Read, Write};

use dicom_core::header::HasLength;
use dicom_core::Tag;
use dicom_encoding::transfer_syntax::{Codec, TransferSyntaxIndex};
use dicom_parser::dataset::lazy_read::LazyDataSetReader;
use dicom_parser::dataset::LazyDataToken;
use dicom_parser::{DynStatefulDecoder, StatefulDecode};
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;

const PIXEL_DATA: Tag = Tag(0x7FE0, 0x0010);
/// Deepest nesting of sequences followed.
const MAX_DEPTH: usize = 32;

/// Why a bulk value or frame could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BulkError {
    /// Preamble, magic or meta group refused.
    #[error(transparent)]
    Meta(#[from] super::MetaError),
    /// The transfer syntax is not one dicom-rs reads.
    #[error("transfer syntax {0} cannot be read")]
    TransferSyntax(String),
    /// No such attribute, item or frame in the file.
    #[error("{0}")]
    NotFound(String),
    /// The pixel data cannot be cut into frames.
    #[error("{0}")]
    Unsupported(String),
    /// The data set is not what the reader expects here.
    #[error("{0}")]
    Malformed(String),
    /// The sink refused bytes (the client went away) or the file failed.
    #[error("cannot read or pass on the value")]
    Io(#[source] Box<dyn std::error::Error + Send + Sync>),
}

fn parse_failure(e: impl std::error::Error + Send + Sync + 'static) -> BulkError {
    BulkError::Io(Box::new(e))
}

/// Where a bulk value sits in a data set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BulkPath {
    /// Sequences and item indices (from 0) down to the value's data set.
    pub items: Vec<(Tag, usize)>,
    /// The attribute.
    pub tag: Tag,
}

fn parse_tag(text: &str) -> Option<Tag> {
    if text.len() != 8 {
        return None;
    }
    let group = u16::from_str_radix(&text[..4], 16).ok()?;
    let element = u16::from_str_radix(&text[4..], 16).ok()?;
    Some(Tag(group, element))
}

impl BulkPath {
    /// Parses `7FE00010` or `00880200/0/7FE00010` (at most 32 levels).
    pub fn parse(text: &str) -> Option<BulkPath> {
        let parts: Vec<&str> = text.trim_matches('/').split('/').collect();
        if parts.len() % 2 != 1 || parts.len() > 2 * MAX_DEPTH + 1 {
            return None;
        }
        let mut items = Vec::new();
        for pair in parts[..parts.len() - 1].chunks(2) {
            items.push((parse_tag(pair[0])?, pair[1].parse().ok()?));
        }
        Some(BulkPath {
            items,
            tag: parse_tag(parts[parts.len() - 1])?,
        })
    }
}

/// What a frame request learned about the image.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FrameInfo {
    /// Whether Pixel Data is encapsulated (compressed).
    pub encapsulated: bool,
    /// Number of Frames (1 when absent).
    pub frames: u32,
}

type Decoder<'a> = DynStatefulDecoder<Box<dyn Read + 'a>>;
type Tokens<'a> = LazyDataSetReader<Decoder<'a>>;
/// A token whose value (if any) is still to be read.
type Token<'r, 'a> = LazyDataToken<&'r mut Decoder<'a>>;

fn open<'a>(mut reader: impl Read + 'a) -> Result<Tokens<'a>, BulkError> {
    let meta = super::read_file_meta(&mut reader)?;
    let ts_uid = meta.transfer_syntax().to_string();
    let ts = TransferSyntaxRegistry
        .get(&ts_uid)
        .ok_or_else(|| BulkError::TransferSyntax(ts_uid.clone()))?;
    let source: Box<dyn Read + 'a> = match ts.codec() {
        Codec::Dataset(Some(adapter)) => adapter.adapt_reader(Box::new(reader)),
        Codec::Dataset(None) => return Err(BulkError::TransferSyntax(ts_uid)),
        _ => Box::new(reader),
    };
    let decoder = DynStatefulDecoder::new_with_ts(source, ts, 0)
        .map_err(|e| BulkError::Malformed(format!("transfer syntax {ts_uid}: {e}")))?;
    Ok(LazyDataSetReader::new(decoder))
}

fn next<'a, 'r>(tokens: &'r mut Tokens<'a>) -> Result<Option<Token<'r, 'a>>, BulkError> {
    match tokens.advance() {
        None => Ok(None),
        Some(token) => token.map(Some).map_err(parse_failure),
    }
}

/// Skips the rest of a sequence (or of encapsulated Pixel Data) whose
/// start was just read.
fn skip_sequence(tokens: &mut Tokens<'_>) -> Result<(), BulkError> {
    let mut depth = 1usize;
    while depth > 0 {
        let token = next(tokens)?
            .ok_or_else(|| BulkError::Malformed("the data set ends inside a sequence".into()))?;
        match token {
            LazyDataToken::SequenceStart { .. } | LazyDataToken::PixelSequenceStart => depth += 1,
            LazyDataToken::SequenceEnd => depth -= 1,
            value @ (LazyDataToken::LazyValue { .. } | LazyDataToken::LazyItemValue { .. }) => {
                value.skip().map_err(parse_failure)?
            }
            _ => {}
        }
        if depth > MAX_DEPTH {
            return Err(BulkError::Malformed("sequences nest too deep".into()));
        }
    }
    Ok(())
}

/// Writes the value at `path` of the Part 10 stream `reader` to `out`.
pub fn write_bulk(
    reader: impl Read,
    path: &BulkPath,
    out: &mut dyn Write,
) -> Result<(), BulkError> {
    let mut tokens = open(reader)?;
    // How far down the path the reader is: items entered so far.
    let mut level = 0usize;
    // Sequences (of the path) being searched: the item index reached.
    let mut item_index: Option<usize> = None;
    let not_found = || BulkError::NotFound(format!("no bulk value at {path:?}"));
    loop {
        let Some(token) = next(&mut tokens)? else {
            return Err(not_found());
        };
        match token {
            LazyDataToken::ElementHeader(header)
                if level == path.items.len() && header.tag == path.tag =>
            {
                let value = next(&mut tokens)?.ok_or_else(not_found)?;
                return value.read_value_into(&mut *out).map_err(parse_failure);
            }
            LazyDataToken::PixelSequenceStart
                if level == path.items.len() && path.tag == PIXEL_DATA =>
            {
                return write_fragments(&mut tokens, out);
            }
            LazyDataToken::ElementHeader(_) => {
                if let Some(value) = next(&mut tokens)? {
                    value.skip().map_err(parse_failure)?;
                }
            }
            LazyDataToken::SequenceStart { tag, .. }
                if level < path.items.len()
                    && path.items[level].0 == tag
                    && item_index.is_none() =>
            {
                item_index = Some(0);
            }
            LazyDataToken::ItemStart { .. } if item_index.is_some() => {
                let index = item_index.unwrap_or(0);
                if index == path.items[level].1 {
                    level += 1;
                    item_index = None;
                } else {
                    item_index = Some(index + 1);
                    // Skip this item: up to its end at this depth.
                    skip_item(&mut tokens)?;
                }
            }
            LazyDataToken::SequenceEnd if item_index.is_some() => return Err(not_found()),
            LazyDataToken::SequenceStart { .. } | LazyDataToken::PixelSequenceStart => {
                skip_sequence(&mut tokens)?
            }
            LazyDataToken::ItemEnd => return Err(not_found()),
            _ => {}
        }
    }
}

/// Skips an item whose start was just read, up to its end.
fn skip_item(tokens: &mut Tokens<'_>) -> Result<(), BulkError> {
    loop {
        let token = next(tokens)?
            .ok_or_else(|| BulkError::Malformed("the data set ends inside an item".into()))?;
        match token {
            LazyDataToken::ItemEnd => return Ok(()),
            LazyDataToken::SequenceStart { .. } | LazyDataToken::PixelSequenceStart => {
                skip_sequence(tokens)?
            }
            value @ LazyDataToken::LazyValue { .. } => value.skip().map_err(parse_failure)?,
            _ => {}
        }
    }
}

/// The fragments of encapsulated Pixel Data whose start was just read,
/// written one after the other (the offset table left out).
fn write_fragments(tokens: &mut Tokens<'_>, out: &mut dyn Write) -> Result<(), BulkError> {
    // Items begun: the first is the offset table (whose value token an
    // empty table does not have).
    let mut items = 0u32;
    loop {
        let token = next(tokens)?
            .ok_or_else(|| BulkError::Malformed("the data set ends inside Pixel Data".into()))?;
        match token {
            LazyDataToken::SequenceEnd => return Ok(()),
            value @ LazyDataToken::LazyItemValue { .. } => {
                if items <= 1 {
                    value.skip().map_err(parse_failure)?;
                } else {
                    value.read_value_into(&mut *out).map_err(parse_failure)?;
                }
            }
            LazyDataToken::ItemStart { .. } => items += 1,
            LazyDataToken::ItemEnd => {}
            other => {
                return Err(BulkError::Malformed(format!(
                    "unexpected {:?} in Pixel Data",
                    other.into_repr()
                )))
            }
        }
    }
}

fn number(value: Token<'_, '_>) -> Result<u64, BulkError> {
    let value = value.into_value().map_err(parse_failure)?;
    value
        .to_int::<u64>()
        .map_err(|e| BulkError::Malformed(format!("an image attribute is not a number: {e}")))
}

/// Writes frame `frame` (from 1) of the top-level Pixel Data to `out`.
pub fn write_frame(
    reader: impl Read,
    frame: u32,
    out: &mut dyn Write,
) -> Result<FrameInfo, BulkError> {
    if frame == 0 {
        return Err(BulkError::NotFound("frames are numbered from 1".into()));
    }
    let mut tokens = open(reader)?;
    let (mut rows, mut columns, mut samples, mut bits) = (0u64, 0u64, 1u64, 0u64);
    let mut frames = 1u64;
    loop {
        let Some(token) = next(&mut tokens)? else {
            return Err(BulkError::NotFound("the instance has no Pixel Data".into()));
        };
        match token {
            LazyDataToken::ElementHeader(header) => {
                let value = next(&mut tokens)?
                    .ok_or_else(|| BulkError::Malformed("a value is missing".into()))?;
                match (header.tag.group(), header.tag.element()) {
                    (0x0028, 0x0010) => rows = number(value)?,
                    (0x0028, 0x0011) => columns = number(value)?,
                    (0x0028, 0x0002) => samples = number(value)?,
                    (0x0028, 0x0100) => bits = number(value)?,
                    (0x0028, 0x0008) => frames = number(value)?.max(1),
                    (0x7FE0, 0x0010) => {
                        if u64::from(frame) > frames {
                            return Err(BulkError::NotFound(format!("frame {frame} of {frames}")));
                        }
                        if bits % 8 != 0 || bits == 0 {
                            return Err(BulkError::Unsupported(format!(
                                "frames of {bits}-bit pixel data are not cut out"
                            )));
                        }
                        let size = rows * columns * samples * (bits / 8);
                        let length = header.length().get().map(u64::from).unwrap_or(0);
                        let start = size * u64::from(frame - 1);
                        if size == 0 || start + size > length || size > u64::from(u32::MAX) {
                            return Err(BulkError::Malformed(format!(
                                "Pixel Data of {length} bytes does not hold frame {frame} of {size} bytes"
                            )));
                        }
                        let LazyDataToken::LazyValue { decoder, .. } = value else {
                            return Err(BulkError::Malformed("Pixel Data has no value".into()));
                        };
                        let mut skip = start;
                        while skip > 0 {
                            let step = skip.min(u64::from(u32::MAX)) as u32;
                            decoder.skip_bytes(step).map_err(parse_failure)?;
                            skip -= u64::from(step);
                        }
                        decoder
                            .read_to(size as u32, &mut *out)
                            .map_err(parse_failure)?;
                        return Ok(FrameInfo {
                            encapsulated: false,
                            frames: frames as u32,
                        });
                    }
                    _ => value.skip().map_err(parse_failure)?,
                }
            }
            LazyDataToken::PixelSequenceStart => {
                if u64::from(frame) > frames {
                    return Err(BulkError::NotFound(format!("frame {frame} of {frames}")));
                }
                write_encapsulated_frame(&mut tokens, frame, frames as u32, out)?;
                return Ok(FrameInfo {
                    encapsulated: true,
                    frames: frames as u32,
                });
            }
            LazyDataToken::SequenceStart { .. } => skip_sequence(&mut tokens)?,
            _ => {}
        }
    }
}

/// The fragments of frame `frame` of encapsulated Pixel Data whose start
/// was just read.
fn write_encapsulated_frame(
    tokens: &mut Tokens<'_>,
    frame: u32,
    frames: u32,
    out: &mut dyn Write,
) -> Result<(), BulkError> {
    let mut offsets: Option<Vec<u64>> = None;
    // Bytes of fragment items (headers included) passed so far.
    let mut position = 0u64;
    let mut index = 0u32;
    let mut written = false;
    // Items begun: the first is the offset table.
    let mut items = 0u32;
    loop {
        let token = next(tokens)?
            .ok_or_else(|| BulkError::Malformed("the data set ends inside Pixel Data".into()))?;
        match token {
            LazyDataToken::SequenceEnd => {
                return if written {
                    Ok(())
                } else {
                    Err(BulkError::NotFound(format!("no fragment of frame {frame}")))
                };
            }
            LazyDataToken::ItemStart { .. } => {
                items += 1;
                if items >= 2 && offsets.is_none() {
                    // The offset table was empty (no value token).
                    offsets = Some(Vec::new());
                }
            }
            LazyDataToken::LazyItemValue { len, decoder } => {
                let Some(table) = offsets.as_ref().filter(|_| items >= 2) else {
                    let mut bytes = Vec::new();
                    decoder
                        .read_to_vec(len, &mut bytes)
                        .map_err(parse_failure)?;
                    let table: Vec<u64> = bytes
                        .chunks_exact(4)
                        .map(|c| u64::from(u32::from_le_bytes([c[0], c[1], c[2], c[3]])))
                        .collect();
                    offsets = Some(table);
                    continue;
                };
                let wanted = if frames == 1 {
                    true
                } else if table.is_empty() {
                    index == frame - 1
                } else {
                    let start = table.get(frame as usize - 1).copied().unwrap_or(u64::MAX);
                    let end = table.get(frame as usize).copied().unwrap_or(u64::MAX);
                    position >= start && position < end
                };
                if wanted {
                    decoder.read_to(len, &mut *out).map_err(parse_failure)?;
                    written = true;
                } else {
                    decoder.skip_bytes(len).map_err(parse_failure)?;
                }
                position += 8 + u64::from(len);
                index += 1;
            }
            LazyDataToken::ItemEnd => {}
            other => {
                return Err(BulkError::Malformed(format!(
                    "unexpected {:?} in Pixel Data",
                    other.into_repr()
                )))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dicom::part10::testfiles::{part10, texts};
    use dicom_core::value::{PixelFragmentSequence, Value};
    use dicom_core::{DataElement, PrimitiveValue, VR};
    use dicom_object::InMemDicomObject;

    const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";
    const JPEG_BASELINE: &str = "1.2.840.10008.1.2.4.50";

    /// An image object: 2 × 2, 8 bits, `frames` frames, then `pixels`.
    fn image(frames: u32, pixels: DataElement<InMemDicomObject>) -> InMemDicomObject {
        let mut object = texts(&[
            (Tag(0x0008, 0x0016), VR::UI, "1.2.840.10008.5.1.4.1.1.7"),
            (Tag(0x0008, 0x0018), VR::UI, "1.2.3.4"),
            (Tag(0x0028, 0x0008), VR::IS, &frames.to_string()),
        ]);
        for (element, value) in [(0x0002, 1u16), (0x0010, 2), (0x0011, 2), (0x0100, 8)] {
            object.put(DataElement::new(
                Tag(0x0028, element),
                VR::US,
                PrimitiveValue::from(value),
            ));
        }
        object.put(pixels);
        object
    }

    fn frame(file: &[u8], n: u32) -> Result<Vec<u8>, BulkError> {
        let mut out = Vec::new();
        write_frame(file, n, &mut out)?;
        Ok(out)
    }

    #[test]
    fn native_frames_are_slices_of_pixel_data() {
        let pixels: Vec<u8> = (0..12).collect();
        let file = part10(
            image(
                3,
                DataElement::new(PIXEL_DATA, VR::OB, PrimitiveValue::from(pixels.clone())),
            ),
            EXPLICIT_LE,
        );
        assert_eq!(frame(&file, 1).unwrap(), pixels[0..4]);
        assert_eq!(frame(&file, 3).unwrap(), pixels[8..12]);
        assert!(matches!(frame(&file, 4), Err(BulkError::NotFound(_))));
        let mut all = Vec::new();
        write_bulk(&file[..], &BulkPath::parse("7FE00010").unwrap(), &mut all).unwrap();
        assert_eq!(all, pixels);
    }

    #[test]
    fn encapsulated_frames_follow_the_offset_table_or_one_fragment_each() {
        let fragments = vec![vec![1u8; 6], vec![2u8; 4], vec![3u8; 8]];
        let encapsulated = |table: Vec<u32>, fragments: Vec<Vec<u8>>| {
            DataElement::new(
                PIXEL_DATA,
                VR::OB,
                Value::PixelSequence(PixelFragmentSequence::new(table, fragments)),
            )
        };
        // No offset table: fragment n is frame n.
        let file = part10(
            image(3, encapsulated(vec![], fragments.clone())),
            JPEG_BASELINE,
        );
        assert_eq!(frame(&file, 2).unwrap(), fragments[1]);
        // An offset table: frame 1 is the first two fragments.
        let table = vec![0, (8 + 6) + (8 + 4)];
        let file = part10(
            image(2, encapsulated(table, fragments.clone())),
            JPEG_BASELINE,
        );
        assert_eq!(
            frame(&file, 1).unwrap(),
            [&fragments[0][..], &fragments[1][..]].concat()
        );
        assert_eq!(frame(&file, 2).unwrap(), fragments[2]);
        // The bulk value of encapsulated Pixel Data: every fragment.
        let mut all = Vec::new();
        write_bulk(&file[..], &BulkPath::parse("7FE00010").unwrap(), &mut all).unwrap();
        assert_eq!(all, fragments.concat());
    }

    #[test]
    fn bulk_values_inside_sequences_are_found_by_item() {
        let item = |bytes: Vec<u8>| {
            InMemDicomObject::from_element_iter([DataElement::new(
                Tag(0x0042, 0x0011),
                VR::OB,
                PrimitiveValue::from(bytes),
            )])
        };
        let mut object = texts(&[
            (Tag(0x0008, 0x0016), VR::UI, "1.2.840.10008.5.1.4.1.1.104.1"),
            (Tag(0x0008, 0x0018), VR::UI, "1.2.3.5"),
        ]);
        object.put(DataElement::new(
            Tag(0x0040, 0x0275),
            VR::SQ,
            Value::from(dicom_core::value::DataSetSequence::from(vec![
                item(vec![7u8; 2000]),
                item(vec![9u8; 3000]),
            ])),
        ));
        let file = part10(object, EXPLICIT_LE);
        let mut out = Vec::new();
        let path = BulkPath::parse("00400275/1/00420011").unwrap();
        write_bulk(&file[..], &path, &mut out).unwrap();
        assert_eq!(out, vec![9u8; 3000]);
        let missing = BulkPath::parse("00400275/2/00420011").unwrap();
        assert!(matches!(
            write_bulk(&file[..], &missing, &mut Vec::new()),
            Err(BulkError::NotFound(_))
        ));
    }

    #[test]
    fn bulk_paths_parse() {
        assert_eq!(
            BulkPath::parse("7FE00010"),
            Some(BulkPath {
                items: vec![],
                tag: Tag(0x7FE0, 0x0010)
            })
        );
        assert_eq!(
            BulkPath::parse("00880200/1/7fe00010"),
            Some(BulkPath {
                items: vec![(Tag(0x0088, 0x0200), 1)],
                tag: Tag(0x7FE0, 0x0010)
            })
        );
        assert_eq!(BulkPath::parse("00880200/x/7FE00010"), None);
        assert_eq!(BulkPath::parse("00880200/7FE00010"), None);
        assert_eq!(BulkPath::parse(""), None);
    }
}
