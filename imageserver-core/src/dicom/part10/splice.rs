//! Rewriting some top-level attributes of groups up to 0020 of a Part 10
//! file (a study edit's patient/study attributes), and nothing else.
//!
//! The file is read as a stream: preamble, `DICM` and the file meta group
//! are kept as they are; the data set's top-level elements of groups up to
//! 0020 (where every editable attribute lives) are read into memory with
//! their byte spans; everything after them (the rest of the header, Pixel
//! Data) is copied byte for byte. In the head, the spans of the edited
//! attributes are replaced by newly encoded elements (or new elements are
//! inserted in tag order), every other element keeps its exact bytes, and
//! the group length elements of edited groups, when a file has them, are
//! corrected. Re-encoding the whole header with dicom-object would also
//! normalise elements nobody asked to change (sequence lengths, padding,
//! private VRs), so dicom-object only reads the values (old and, after the
//! rewrite, new: every rewritten file is parsed back before it replaces the
//! old one).
//!
//! Explicit and Implicit VR Little Endian data sets, and the encapsulated
//! syntaxes (whose header is Explicit VR Little Endian), are supported;
//! Deflated and Big Endian data sets are refused.

use std::io::{self, Read, Write};

use dicom_core::Tag;
use dicom_dictionary_std::tags;
use dicom_encoding::text::{SpecificCharacterSet, TextCodec};
use dicom_object::DefaultDicomObject;

use super::MetaError;

/// Value representations whose explicit-VR header has a 4-byte length.
const LONG_VRS: [&[u8; 2]; 13] = [
    b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV",
];
const UNDEFINED: u32 = 0xFFFF_FFFF;
/// The head (groups up to 0020) is read into memory up to this size.
const MAX_HEAD: usize = 64 * 1024 * 1024;
/// Deepest nesting of sequences followed in the head.
const MAX_DEPTH: usize = 32;
/// The last group the head holds.
const LAST_GROUP: u16 = 0x0020;

/// A top-level attribute of groups up to 0020 with a short (2-byte length)
/// text VR: what an edit may change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Attribute {
    /// The tag as (group, element).
    pub tag: (u16, u16),
    /// The value representation, as its two-letter code.
    pub vr: &'static str,
    /// The keyword, for messages.
    pub keyword: &'static str,
}

impl std::fmt::Display for Attribute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.keyword)
    }
}

/// One attribute and the value it must have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    /// The attribute.
    pub attribute: Attribute,
    /// Its value, without padding ("" empties it).
    pub value: String,
}

/// A top-level element of the head: its tag and byte span.
#[derive(Debug, Clone, Copy)]
struct Span {
    tag: (u16, u16),
    start: usize,
    header_len: usize,
    end: usize,
}

/// The head of a file as read.
pub(crate) struct Head {
    /// Preamble, magic and file meta group, verbatim.
    prefix: Vec<u8>,
    explicit_vr: bool,
    /// The data set's top-level elements of groups up to 0020, verbatim.
    region: Vec<u8>,
    spans: Vec<Span>,
    /// The first bytes after the region already read (the tag of the first
    /// element of a later group), to be written before the rest.
    carry: Vec<u8>,
    /// The parsed header (meta and head elements): the current values.
    pub header: DefaultDicomObject,
}

impl Head {
    /// Bytes of the preamble, magic and file meta group: where the data
    /// set starts in the file [`write_edited`] writes.
    pub(crate) fn prefix_len(&self) -> usize {
        self.prefix.len()
    }
}

impl std::fmt::Debug for Head {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Head")
            .field("region", &self.region.len())
            .field("spans", &self.spans.len())
            .finish()
    }
}

/// Why a file cannot be edited, or its edit failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpliceError {
    /// Reading the file failed.
    #[error("cannot read the file")]
    Read(#[source] io::Error),
    /// Preamble, magic or meta group refused.
    #[error(transparent)]
    Meta(#[from] MetaError),
    /// The elements of groups up to 0020 exceed [`MAX_HEAD`] bytes.
    #[error("the header before group 0021 is larger than {MAX_HEAD} bytes")]
    HeadTooLarge,
    /// A transfer syntax the splice does not rewrite (Big Endian,
    /// Deflated).
    #[error("{0} files cannot be edited")]
    Unsupported(&'static str),
    /// The data set ends inside an element header.
    #[error("the data set ends inside an element header")]
    Truncated,
    /// An item or delimiter tag at the top level of the data set.
    #[error("an item or delimiter at the top level of the data set")]
    ItemAtTopLevel,
    /// Sequences nested deeper than [`MAX_DEPTH`].
    #[error("sequences nested deeper than {MAX_DEPTH} levels")]
    TooDeep,
    /// A tag other than an item or delimiter inside a sequence.
    #[error("unexpected ({:04X},{:04X}) inside a sequence", .0 .0, .0 .1)]
    InsideSequence((u16, u16)),
    /// The header parser refused the head.
    #[error("cannot parse the header")]
    Parse(#[source] dicom_object::ReadError),
    /// A value the file's (single) character set cannot represent.
    #[error("{attribute} {value:?} cannot be written in the file's character set {charset}")]
    NotInCharset {
        /// The attribute's keyword.
        attribute: &'static str,
        /// The value asked for.
        value: String,
        /// The file's character set.
        charset: String,
        /// The encoder's refusal.
        #[source]
        source: Box<dicom_encoding::text::EncodeTextError>,
    },
    /// A non-ASCII value for a file in the default repertoire or with code
    /// extensions (an edit does not change the character set).
    #[error(
        "{attribute} {value:?} has non-ASCII characters, but the file's character set is \
         {charset} (the character set is not changed by an edit)"
    )]
    NonAscii {
        /// The attribute's keyword.
        attribute: &'static str,
        /// The value asked for.
        value: String,
        /// The file's character set (or the default repertoire).
        charset: String,
    },
    /// The encoded value does not fit a 2-byte length.
    #[error("{attribute} is too long ({len} bytes)")]
    TooLong {
        /// The attribute's keyword.
        attribute: &'static str,
        /// Its encoded length.
        len: usize,
    },
    /// A corrected group length does not fit 32 bits.
    #[error("group {0:04X} length out of range")]
    GroupLength(u16),
    /// Writing the edited file failed.
    #[error("cannot write the edited file")]
    Write(#[source] io::Error),
    /// Copying the rest of the original failed.
    #[error("cannot copy the rest of the file")]
    Copy(#[source] io::Error),
    /// The edited file does not parse back.
    #[error("the edited file does not parse")]
    EditedUnparsable(#[source] dicom_object::ReadError),
    /// The edited file does not hold the new values.
    #[error("the edited file does not hold the new values")]
    EditedWithoutValues,
    /// The edited file names another SOP instance than the original.
    #[error("the edited file names another SOP instance")]
    EditedOtherInstance,
}

/// Reads `n` bytes, appending them to `into`.
fn take(reader: &mut dyn Read, into: &mut Vec<u8>, n: usize) -> Result<(), SpliceError> {
    if into.len() + n > MAX_HEAD {
        return Err(SpliceError::HeadTooLarge);
    }
    let start = into.len();
    into.resize(start + n, 0);
    reader
        .read_exact(&mut into[start..])
        .map_err(SpliceError::Read)
}

fn u16_at(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([bytes[at], bytes[at + 1]])
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

/// Reads the head of a Part 10 stream; the stream is left right after it.
pub(crate) fn read_head(reader: &mut dyn Read) -> Result<Head, SpliceError> {
    let mut prefix = Vec::with_capacity(512);
    take(reader, &mut prefix, 132)?;
    if &prefix[128..132] != b"DICM" {
        return Err(MetaError::NoMagic.into());
    }
    // (0002,0000) UL, explicit VR little endian: tag, "UL", 2-byte length, value.
    take(reader, &mut prefix, 12)?;
    if (u16_at(&prefix, 132), u16_at(&prefix, 134)) != (0x0002, 0x0000) {
        return Err(MetaError::NoGroupLength.into());
    }
    let meta_len = u32_at(&prefix, 140) as usize;
    take(reader, &mut prefix, meta_len)?;
    let meta =
        dicom_object::meta::FileMetaTable::from_reader(&prefix[128..]).map_err(MetaError::Parse)?;
    let explicit_vr = match meta.transfer_syntax() {
        "1.2.840.10008.1.2" => false,
        "1.2.840.10008.1.2.2" => return Err(SpliceError::Unsupported("Explicit VR Big Endian")),
        "1.2.840.10008.1.2.1.99" | "1.2.840.10008.1.2.4.95" => {
            return Err(SpliceError::Unsupported("deflated"))
        }
        _ => true,
    };

    let mut region = Vec::with_capacity(4096);
    let mut spans = Vec::new();
    let mut carry = Vec::new();
    loop {
        let start = region.len();
        let mut tag = [0u8; 4];
        match read_full(reader, &mut tag).map_err(SpliceError::Read)? {
            0 => break,
            4 => {}
            _ => return Err(SpliceError::Truncated),
        }
        let group = u16::from_le_bytes([tag[0], tag[1]]);
        let element = u16::from_le_bytes([tag[2], tag[3]]);
        if group > LAST_GROUP {
            carry.extend_from_slice(&tag);
            break;
        }
        if group == 0xFFFE {
            return Err(SpliceError::ItemAtTopLevel);
        }
        region.extend_from_slice(&tag);
        let header_len = element_rest(reader, &mut region, explicit_vr, 0)?;
        spans.push(Span {
            tag: (group, element),
            start,
            header_len,
            end: region.len(),
        });
    }
    let header =
        super::parse_header((&prefix[..]).chain(&region[..])).map_err(SpliceError::Parse)?;
    Ok(Head {
        prefix,
        explicit_vr,
        region,
        spans,
        carry,
        header,
    })
}

/// Reads as many bytes as fit (fewer only at the end of the stream).
fn read_full(reader: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Reads the rest of an element whose 4-byte tag is already in `out`:
/// VR and length, then its value (following undefined-length sequences).
/// Returns the header length (tag included).
fn element_rest(
    reader: &mut dyn Read,
    out: &mut Vec<u8>,
    explicit_vr: bool,
    depth: usize,
) -> Result<usize, SpliceError> {
    let at = out.len();
    let (length, header_len, vr) = if explicit_vr {
        take(reader, out, 4)?;
        let vr = [out[at], out[at + 1]];
        if LONG_VRS.contains(&&vr) {
            take(reader, out, 4)?;
            (u32_at(out, at + 4), 12, Some(vr))
        } else {
            (u32::from(u16_at(out, at + 2)), 8, Some(vr))
        }
    } else {
        take(reader, out, 4)?;
        (u32_at(out, at), 8, None)
    };
    if length == UNDEFINED {
        // A sequence (or UN of undefined length, whose content is encoded
        // as Implicit VR Little Endian).
        let nested_explicit = explicit_vr && vr != Some(*b"UN");
        sequence(reader, out, nested_explicit, depth + 1)?;
    } else {
        take(reader, out, length as usize)?;
    }
    Ok(header_len)
}

/// Reads the items of an undefined-length sequence up to its delimiter.
fn sequence(
    reader: &mut dyn Read,
    out: &mut Vec<u8>,
    explicit_vr: bool,
    depth: usize,
) -> Result<(), SpliceError> {
    if depth > MAX_DEPTH {
        return Err(SpliceError::TooDeep);
    }
    loop {
        let at = out.len();
        take(reader, out, 8)?;
        let tag = (u16_at(out, at), u16_at(out, at + 2));
        let length = u32_at(out, at + 4);
        match tag {
            (0xFFFE, 0xE0DD) => return Ok(()),
            (0xFFFE, 0xE000) if length == UNDEFINED => loop {
                let at = out.len();
                take(reader, out, 4)?;
                if (u16_at(out, at), u16_at(out, at + 2)) == (0xFFFE, 0xE00D) {
                    take(reader, out, 4)?;
                    break;
                }
                element_rest(reader, out, explicit_vr, depth)?;
            },
            (0xFFFE, 0xE000) => take(reader, out, length as usize)?,
            other => return Err(SpliceError::InsideSequence(other)),
        }
    }
}

/// A root-level value as the file holds it (decoded, padding trimmed);
/// `None` when absent.
pub(crate) fn current_value(header: &DefaultDicomObject, attribute: Attribute) -> Option<String> {
    let (group, element) = attribute.tag;
    let element = header.get(Tag(group, element))?;
    let value = element.to_str().ok()?;
    Some(value.trim_matches([' ', '\0']).to_string())
}

/// Whether the file already holds every target value.
pub(crate) fn holds(header: &DefaultDicomObject, targets: &[Target]) -> bool {
    targets.iter().all(|t| {
        let want = t.value.trim_matches([' ', '\0']);
        match current_value(header, t.attribute) {
            Some(value) => value == want,
            None => want.is_empty(),
        }
    })
}

/// The file's character set, for encoding new values.
fn charset_of(header: &DefaultDicomObject) -> Option<String> {
    let element = header.get(tags::SPECIFIC_CHARACTER_SET)?;
    let value = element.to_str().ok()?;
    let value = value.trim_matches([' ', '\0']).to_string();
    (!value.is_empty()).then_some(value)
}

/// Encodes a value in the file's character set: anything for a single
/// known character set, ASCII only for the default repertoire and for
/// code extensions.
pub(crate) fn encode_value(
    header: &DefaultDicomObject,
    target: &Target,
) -> Result<Vec<u8>, SpliceError> {
    let value = target.value.trim_matches([' ', '\0']);
    if value.is_ascii() {
        return Ok(value.as_bytes().to_vec());
    }
    let charset = charset_of(header);
    let codec = charset
        .as_deref()
        .filter(|code| !code.contains('\\'))
        .and_then(SpecificCharacterSet::from_code)
        .filter(|codec| codec != &SpecificCharacterSet::ISO_IR_6);
    match codec {
        Some(codec) => codec
            .encode(value)
            .map_err(|source| SpliceError::NotInCharset {
                attribute: target.attribute.keyword,
                value: value.to_string(),
                charset: charset.unwrap_or_else(|| "ISO_IR 6".to_string()),
                source: Box::new(source),
            }),
        None => Err(SpliceError::NonAscii {
            attribute: target.attribute.keyword,
            value: value.to_string(),
            charset: charset.unwrap_or_else(|| "the default repertoire (ISO_IR 6)".to_string()),
        }),
    }
}

/// Checks that a file can take the targets (every value encodable).
pub(crate) fn check(head: &Head, targets: &[Target]) -> Result<(), SpliceError> {
    for target in targets {
        encode_value(&head.header, target)?;
    }
    Ok(())
}

fn encode_element(
    explicit_vr: bool,
    attribute: Attribute,
    mut value: Vec<u8>,
) -> Result<Vec<u8>, SpliceError> {
    if value.len() % 2 == 1 {
        value.push(b' ');
    }
    let (group, element) = attribute.tag;
    let mut out = Vec::with_capacity(value.len() + 8);
    out.extend_from_slice(&group.to_le_bytes());
    out.extend_from_slice(&element.to_le_bytes());
    if explicit_vr {
        out.extend_from_slice(attribute.vr.as_bytes());
        let len = u16::try_from(value.len()).map_err(|_| SpliceError::TooLong {
            attribute: attribute.keyword,
            len: value.len(),
        })?;
        out.extend_from_slice(&len.to_le_bytes());
    } else {
        out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    }
    out.extend_from_slice(&value);
    Ok(out)
}

/// The head's data set elements with the targets applied: (new region
/// bytes). Elements other than the targets keep their bytes; group lengths
/// of changed groups are corrected.
fn new_region(head: &Head, targets: &[Target]) -> Result<Vec<u8>, SpliceError> {
    let mut replacements: Vec<((u16, u16), Vec<u8>)> = Vec::new();
    for target in targets {
        let present = head.spans.iter().any(|s| s.tag == target.attribute.tag);
        if !present && target.value.trim_matches([' ', '\0']).is_empty() {
            continue;
        }
        let value = encode_value(&head.header, target)?;
        replacements.push((
            target.attribute.tag,
            encode_element(head.explicit_vr, target.attribute, value)?,
        ));
    }
    replacements.sort_by_key(|(tag, _)| *tag);

    // Per group: the change in length.
    let mut delta: std::collections::BTreeMap<u16, i64> = Default::default();
    for (tag, bytes) in &replacements {
        let old = head
            .spans
            .iter()
            .find(|s| s.tag == *tag)
            .map(|s| (s.end - s.start) as i64)
            .unwrap_or(0);
        *delta.entry(tag.0).or_default() += bytes.len() as i64 - old;
    }

    let mut out = Vec::with_capacity(head.region.len() + 256);
    let mut pending = replacements.iter().peekable();
    for span in &head.spans {
        while let Some((tag, bytes)) = pending.peek() {
            if *tag < span.tag {
                out.extend_from_slice(bytes);
                pending.next();
            } else {
                break;
            }
        }
        if let Some((tag, bytes)) = pending.peek() {
            if *tag == span.tag {
                out.extend_from_slice(bytes);
                pending.next();
                continue;
            }
        }
        let bytes = &head.region[span.start..span.end];
        let group_delta = delta.get(&span.tag.0).copied().unwrap_or(0);
        if span.tag.1 == 0x0000 && group_delta != 0 && span.end - span.start == span.header_len + 4
        {
            let old = i64::from(u32_at(bytes, span.header_len));
            let new = u32::try_from(old + group_delta)
                .map_err(|_| SpliceError::GroupLength(span.tag.0))?;
            out.extend_from_slice(&bytes[..span.header_len]);
            out.extend_from_slice(&new.to_le_bytes());
        } else {
            out.extend_from_slice(bytes);
        }
    }
    for (_, bytes) in pending {
        out.extend_from_slice(bytes);
    }
    Ok(out)
}

/// A writer that hashes (BLAKE3) and counts what passes through it.
struct HashingWriter<W> {
    inner: W,
    hasher: blake3::Hasher,
    len: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Writes the edited file: the prefix, the rewritten head, then the rest
/// of `source` byte for byte. Returns (size, digest) of what was written.
pub(crate) fn write_edited(
    head: &Head,
    targets: &[Target],
    source: &mut dyn Read,
    out: &mut dyn Write,
) -> Result<(u64, String), SpliceError> {
    let region = new_region(head, targets)?;
    let mut writer = HashingWriter {
        inner: out,
        hasher: blake3::Hasher::new(),
        len: 0,
    };
    let write_err = SpliceError::Write;
    writer.write_all(&head.prefix).map_err(write_err)?;
    writer.write_all(&region).map_err(write_err)?;
    writer.write_all(&head.carry).map_err(write_err)?;
    io::copy(source, &mut writer).map_err(SpliceError::Copy)?;
    writer.flush().map_err(write_err)?;
    Ok((writer.len, writer.hasher.finalize().to_hex().to_string()))
}

/// Parses a written file back (up to Pixel Data) and checks that it holds
/// the targets and is still the SOP instance `sop_instance_uid`.
pub(crate) fn verify(
    reader: &mut dyn Read,
    targets: &[Target],
    sop_instance_uid: &str,
) -> Result<(), SpliceError> {
    let header = super::parse_header(reader).map_err(SpliceError::EditedUnparsable)?;
    if !holds(&header, targets) {
        return Err(SpliceError::EditedWithoutValues);
    }
    if super::header::text(&header, tags::SOP_INSTANCE_UID).as_deref() != Some(sop_instance_uid) {
        return Err(SpliceError::EditedOtherInstance);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::testfiles::{part10, text, texts};
    use super::*;
    use dicom_core::{DataElement, VR};
    use dicom_object::InMemDicomObject;

    fn file(ts: &str, charset: Option<&str>) -> Vec<u8> {
        let mut object = texts(&[
            (tags::SOP_CLASS_UID, VR::UI, "1.2.840.10008.5.1.4.1.1.7"),
            (tags::SOP_INSTANCE_UID, VR::UI, "1.2.3.4"),
            (tags::STUDY_DATE, VR::DA, "20240101"),
            (tags::PATIENT_NAME, VR::PN, "OLD^NAME"),
            (tags::PATIENT_ID, VR::LO, "PID1"),
            (tags::STUDY_INSTANCE_UID, VR::UI, "1.2.3"),
            (tags::SERIES_INSTANCE_UID, VR::UI, "1.2.3.1"),
            (tags::SERIES_NUMBER, VR::IS, "1"),
            (tags::MODALITY, VR::CS, "OT"),
        ]);
        if let Some(charset) = charset {
            object.put(text(tags::SPECIFIC_CHARACTER_SET, VR::CS, charset));
        }
        // A sequence of undefined length in group 0008.
        object.put(DataElement::new(
            tags::REFERENCED_IMAGE_SEQUENCE,
            VR::SQ,
            dicom_core::value::DataSetSequence::new(
                vec![InMemDicomObject::from_element_iter([text(
                    tags::REFERENCED_SOP_INSTANCE_UID,
                    VR::UI,
                    "1.2.3.9",
                )])],
                dicom_core::Length::UNDEFINED,
            ),
        ));
        object.put(text(Tag(0x0028, 0x0010), VR::US, "2"));
        let mut bytes = part10(object, ts);
        // Pixel data, verbatim tail.
        bytes.extend_from_slice(&[0xE0, 0x7F, 0x10, 0x00]);
        if ts == "1.2.840.10008.1.2" {
            bytes.extend_from_slice(&4u32.to_le_bytes());
        } else {
            bytes.extend_from_slice(b"OW\0\0");
            bytes.extend_from_slice(&4u32.to_le_bytes());
        }
        bytes.extend_from_slice(&[1, 2, 3, 4]);
        bytes
    }

    fn edit(bytes: &[u8], targets: &[Target]) -> Result<Vec<u8>, SpliceError> {
        let mut reader = bytes;
        let head = read_head(&mut reader)?;
        check(&head, targets)?;
        let mut out = Vec::new();
        write_edited(&head, targets, &mut reader, &mut out)?;
        verify(&mut &out[..], targets, "1.2.3.4")?;
        Ok(out)
    }

    const fn attribute(tag: (u16, u16), vr: &'static str, keyword: &'static str) -> Attribute {
        Attribute { tag, vr, keyword }
    }

    const PATIENT_NAME: Attribute = attribute((0x0010, 0x0010), "PN", "PatientName");
    const STUDY_DESCRIPTION: Attribute = attribute((0x0008, 0x1030), "LO", "StudyDescription");
    const ACCESSION_NUMBER: Attribute = attribute((0x0008, 0x0050), "SH", "AccessionNumber");
    const PATIENT_ID: Attribute = attribute((0x0010, 0x0020), "LO", "PatientID");
    const REFERRING_PHYSICIAN_NAME: Attribute =
        attribute((0x0008, 0x0090), "PN", "ReferringPhysicianName");
    const PATIENT_SEX: Attribute = attribute((0x0010, 0x0040), "CS", "PatientSex");

    fn target(attribute: Attribute, value: &str) -> Target {
        Target {
            attribute,
            value: value.to_string(),
        }
    }

    #[test]
    fn only_the_edited_attributes_change() {
        for ts in ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"] {
            let original = file(ts, None);
            let targets = [
                target(PATIENT_NAME, "DOE^JANE"),
                target(STUDY_DESCRIPTION, "EDITED"),
                target(ACCESSION_NUMBER, ""),
            ];
            let edited = edit(&original, &targets).unwrap();
            let mut reader = &edited[..];
            let head = read_head(&mut reader).unwrap();
            assert!(holds(&head.header, &targets));
            // The tail (pixel data) is byte-identical.
            assert_eq!(
                &edited[edited.len() - 16..],
                &original[original.len() - 16..]
            );
            // Every other element keeps its bytes: removing the edited ones
            // from both gives the same bytes.
            let mut original_reader = &original[..];
            let before = read_head(&mut original_reader).unwrap();
            let strip = |head: &Head| -> Vec<u8> {
                head.spans
                    .iter()
                    .filter(|s| ![(0x0010, 0x0010), (0x0008, 0x1030)].contains(&s.tag))
                    .flat_map(|s| head.region[s.start..s.end].to_vec())
                    .collect()
            };
            assert_eq!(strip(&before), strip(&head), "{ts}");
            assert_eq!(
                current_value(&head.header, PATIENT_ID).as_deref(),
                Some("PID1")
            );
            // Editing again to the same values is recognised.
            assert!(holds(&head.header, &targets));
        }
    }

    #[test]
    fn group_lengths_follow_the_edit() {
        // A group length element for group 0010 built by hand.
        let original = file("1.2.840.10008.1.2.1", None);
        let mut reader = &original[..];
        let mut head = read_head(&mut reader).unwrap();
        let group_10: usize = head
            .spans
            .iter()
            .filter(|s| s.tag.0 == 0x0010)
            .map(|s| s.end - s.start)
            .sum();
        let first = head.spans.iter().position(|s| s.tag.0 == 0x0010).unwrap();
        let at = head.spans[first].start;
        let mut element = vec![0x10, 0x00, 0x00, 0x00, b'U', b'L', 4, 0];
        element.extend_from_slice(&(group_10 as u32).to_le_bytes());
        head.region.splice(at..at, element.clone());
        for span in head.spans.iter_mut().skip(first) {
            span.start += 12;
            span.end += 12;
        }
        head.spans.insert(
            first,
            Span {
                tag: (0x0010, 0x0000),
                start: at,
                header_len: 8,
                end: at + 12,
            },
        );
        let targets = [target(PATIENT_NAME, "A^MUCH^LONGER^NAME")];
        let region = new_region(&head, &targets).unwrap();
        let new_len = u32_at(&region, at + 8) as usize;
        let grown = "A^MUCH^LONGER^NAME".len() - "OLD^NAME".len();
        assert_eq!(new_len, group_10 + grown);
    }

    #[test]
    fn character_sets_are_respected() {
        let ascii = file("1.2.840.10008.1.2.1", None);
        let err = edit(&ascii, &[target(PATIENT_NAME, "MÜLLER^JO")]).unwrap_err();
        assert!(matches!(err, SpliceError::NonAscii { .. }), "{err:?}");
        assert!(err.to_string().contains("non-ASCII"), "{err}");
        let latin1 = file("1.2.840.10008.1.2.1", Some("ISO_IR 100"));
        let edited = edit(&latin1, &[target(PATIENT_NAME, "MÜLLER^JO")]).unwrap();
        assert!(edited.windows(2).any(|w| w == [b'M', 0xDC]));
        let utf8 = file("1.2.840.10008.1.2.1", Some("ISO_IR 192"));
        edit(&utf8, &[target(PATIENT_NAME, "王^小明")]).unwrap();
    }

    #[test]
    fn absent_attributes_are_inserted_in_tag_order() {
        let original = file("1.2.840.10008.1.2.1", None);
        let targets = [
            target(REFERRING_PHYSICIAN_NAME, "WHO^DR"),
            target(PATIENT_SEX, "F"),
        ];
        let edited = edit(&original, &targets).unwrap();
        let mut reader = &edited[..];
        let head = read_head(&mut reader).unwrap();
        let tags: Vec<(u16, u16)> = head.spans.iter().map(|s| s.tag).collect();
        let mut sorted = tags.clone();
        sorted.sort();
        assert_eq!(tags, sorted);
        assert!(holds(&head.header, &targets));
    }

    #[test]
    fn unsupported_files_are_refused() {
        assert!(matches!(
            read_head(&mut &b"not dicom"[..]),
            Err(SpliceError::Read(_))
        ));
        // The meta names another transfer syntax (its element and group
        // lengths kept right): refused before the data set is read.
        let named = |syntax: &[u8]| {
            let mut bytes = file("1.2.840.10008.1.2.1", None);
            let ts = b"1.2.840.10008.1.2.1\0";
            let at = bytes.windows(ts.len()).position(|w| w == ts).unwrap();
            let mut value = syntax.to_vec();
            if value.len() % 2 == 1 {
                value.push(0);
            }
            let grown = value.len() as u32 - ts.len() as u32;
            bytes.splice(at..at + ts.len(), value.iter().copied());
            bytes[at - 2..at].copy_from_slice(&(value.len() as u16).to_le_bytes());
            let group = u32_at(&bytes, 140) + grown;
            bytes[140..144].copy_from_slice(&group.to_le_bytes());
            bytes
        };
        for (syntax, refused) in [
            (&b"1.2.840.10008.1.2.1.99"[..], "deflated"),
            (b"1.2.840.10008.1.2.4.95", "deflated"),
            (b"1.2.840.10008.1.2.2", "Explicit VR Big Endian"),
        ] {
            let err = read_head(&mut &named(syntax)[..]).unwrap_err();
            assert!(
                matches!(err, SpliceError::Unsupported(name) if name == refused),
                "{err:?}"
            );
        }
    }
}
