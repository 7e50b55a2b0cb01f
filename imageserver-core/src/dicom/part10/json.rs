//! The DICOM JSON model (PS3.18 §F.2) of a Part 10 file's data set,
//! bulk data replaced by URIs: what series metadata stores per instance.
//!
//! Each object holds the instance's data set without the file meta group
//! (group 0002), group length elements (gggg,0000) and anything after a
//! top-level Pixel Data (only trailing padding and signatures may follow
//! it): keys are tags as eight uppercase hex digits in ascending order,
//! values `{"vr": VR}` plus, when not empty, one of
//! - `"Value"`: strings (trimmed of padding; an empty value of several is
//!   `null`), numbers (IS and DS as JSON numbers when they parse, else as
//!   the string), person names as `{"Alphabetic", "Ideographic",
//!   "Phonetic"}` objects, tags as `"GGGGEEEE"`, or the items of a
//!   sequence;
//! - `"InlineBinary"`: base64 of an OB/OD/OF/OL/OV/OW/UN value of at most
//!   [`BULK_DATA_THRESHOLD`] bytes, as stored (little endian);
//! - `"BulkDataURI"`: for Pixel Data (7FE0,0010), Float and Double Float
//!   Pixel Data (7FE0,0008/0009) whatever their size, and larger binary
//!   values. Their bytes are never read into memory: a top-level Pixel
//!   Data ends the parse, other values are skipped as a stream.
//!
//! A bulk data URI is relative to the DICOMweb service root:
//! `studies/{study}/series/{series}/instances/{sop}/bulk/{path}`, where
//! `{path}` is the attribute's tag (`7FE00010`) at the top level, and for
//! an attribute inside a sequence the sequence's tag, the item's index
//! (from 0) and the tag, joined by `/` (`00880200/0/7FE00010`), at every
//! level. A later DICOMweb server resolves it by walking the stored file.
//!
//! The data set is read as a stream of tokens (dicom-parser's lazy reader),
//! in any transfer syntax dicom-rs parses (Deflated inflated on the fly);
//! strings are decoded with the data set's Specific Character Set.

use std::io::Read;

use base64::Engine;
use dicom_core::header::{DataElementHeader, HasLength, Length};
use dicom_core::{PrimitiveValue, Tag, VR};
use dicom_encoding::transfer_syntax::{Codec, TransferSyntaxIndex};
use dicom_parser::dataset::lazy_read::LazyDataSetReader;
use dicom_parser::dataset::LazyDataToken;
use dicom_parser::{DynStatefulDecoder, StatefulDecode};
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Serialize, Serializer};
use serde_json::Value;

use crate::model::Uid;

/// Binary values (OB, OD, OF, OL, OV, OW, UN) longer than this many bytes
/// are replaced by a `BulkDataURI`; shorter ones are inlined in base64.
pub const BULK_DATA_THRESHOLD: u32 = 1024;

/// Deepest nesting of sequences followed.
const MAX_DEPTH: usize = 32;

const PIXEL_DATA: Tag = Tag(0x7FE0, 0x0010);
const FLOAT_PIXEL_DATA: Tag = Tag(0x7FE0, 0x0008);
const DOUBLE_FLOAT_PIXEL_DATA: Tag = Tag(0x7FE0, 0x0009);
const INSTANCE_NUMBER: Tag = Tag(0x0020, 0x0013);

/// Why a file has no DICOM JSON model.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JsonError {
    /// Preamble, magic or meta group refused.
    #[error(transparent)]
    Meta(#[from] super::MetaError),
    /// The transfer syntax is not one dicom-rs knows.
    #[error("unknown transfer syntax {0}")]
    UnknownTransferSyntax(String),
    /// The transfer syntax is known but its data sets cannot be read.
    #[error("transfer syntax {0} cannot be read")]
    UnreadableTransferSyntax(String),
    /// Sequences nest deeper than the encoder follows.
    #[error("sequences nest deeper than {limit} levels")]
    TooDeep {
        /// The limit.
        limit: usize,
    },
    /// The data set's structure is not what the encoder expects here.
    #[error("{0}")]
    Malformed(String),
    /// The parser failed; `context` says at what.
    #[error("{context}")]
    Parse {
        /// What was being read.
        context: String,
        /// The parser's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

fn parse_error(
    context: impl Into<String>,
) -> impl FnOnce(Box<dyn std::error::Error + Send + Sync>) -> JsonError {
    let context = context.into();
    move |source| JsonError::Parse { context, source }
}

/// The bulk data URI of an instance, up to `/bulk`.
#[derive(Debug, Clone)]
pub(crate) struct BulkPrefix(String);

impl BulkPrefix {
    /// `studies/{study}/series/{series}/instances/{sop}/bulk`.
    pub(crate) fn new(study: &Uid, series: &Uid, sop: &Uid) -> BulkPrefix {
        BulkPrefix(format!(
            "studies/{study}/series/{series}/instances/{sop}/bulk"
        ))
    }

    fn uri(&self, path: &[String], tag: Tag) -> String {
        let mut uri = self.0.clone();
        for segment in path {
            uri.push('/');
            uri.push_str(segment);
        }
        uri.push('/');
        uri.push_str(&tag_text(tag));
        uri
    }
}

fn tag_text(tag: Tag) -> String {
    format!("{:04X}{:04X}", tag.group(), tag.element())
}

/// One data set in the DICOM JSON model.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Object(Vec<(Tag, Attribute)>);

/// One attribute: its VR and value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Attribute {
    vr: VR,
    value: AttributeValue,
}

#[derive(Debug, Clone, PartialEq)]
enum AttributeValue {
    Empty,
    Values(Vec<Value>),
    Items(Vec<Object>),
    Inline(String),
    Bulk(String),
}

impl Object {
    fn push(&mut self, tag: Tag, vr: VR, value: AttributeValue) {
        self.0.push((tag, Attribute { vr, value }));
    }

    /// Sorts by tag (files are already in order) and keeps the first of
    /// repeated tags, so that the keys are unique and ascending.
    fn finish(mut self) -> Object {
        self.0.sort_by_key(|(tag, _)| *tag);
        self.0.dedup_by_key(|(tag, _)| *tag);
        self
    }

    pub(crate) fn instance_number(&self) -> Option<i64> {
        match self.0.iter().find(|(t, _)| *t == INSTANCE_NUMBER) {
            Some((
                _,
                Attribute {
                    value: AttributeValue::Values(values),
                    ..
                },
            )) => values.first().and_then(Value::as_i64),
            _ => None,
        }
    }
}

impl Serialize for Object {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (tag, attribute) in &self.0 {
            map.serialize_entry(&tag_text(*tag), attribute)?;
        }
        map.end()
    }
}

impl Serialize for Attribute {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("vr", self.vr.to_string())?;
        match &self.value {
            AttributeValue::Empty => {}
            AttributeValue::Values(values) => map.serialize_entry("Value", values)?,
            AttributeValue::Items(items) => map.serialize_entry("Value", &Items(items))?,
            AttributeValue::Inline(base64) => map.serialize_entry("InlineBinary", base64)?,
            AttributeValue::Bulk(uri) => map.serialize_entry("BulkDataURI", uri)?,
        }
        map.end()
    }
}

struct Items<'a>(&'a [Object]);

impl Serialize for Items<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.0.len()))?;
        for item in self.0 {
            seq.serialize_element(item)?;
        }
        seq.end()
    }
}

/// Encodes the data set of a Part 10 stream (preamble, `DICM`, meta group,
/// data set) as a DICOM JSON object, bulk data replaced by URIs under
/// `bulk`. The reason is returned when the stream is not a parsable Part
/// 10 file.
pub(crate) fn encode_instance(
    mut reader: impl Read,
    bulk: &BulkPrefix,
) -> Result<Object, JsonError> {
    let meta = super::read_file_meta(&mut reader)?;
    let ts_uid = meta.transfer_syntax();
    let ts = TransferSyntaxRegistry
        .get(ts_uid)
        .ok_or_else(|| JsonError::UnknownTransferSyntax(ts_uid.to_string()))?;
    let source: Box<dyn Read + '_> = match ts.codec() {
        Codec::Dataset(Some(adapter)) => adapter.adapt_reader(Box::new(reader)),
        Codec::Dataset(None) => {
            return Err(JsonError::UnreadableTransferSyntax(ts_uid.to_string()));
        }
        _ => Box::new(reader),
    };
    let decoder = DynStatefulDecoder::new_with_ts(source, ts, 0)
        .map_err(|e| parse_error(format!("transfer syntax {ts_uid}"))(e.into()))?;
    let mut tokens = LazyDataSetReader::new(decoder);
    let mut encoder = Encoder {
        bulk,
        path: Vec::new(),
    };
    encoder.data_set(&mut tokens, 0).map(Object::finish)
}

struct Encoder<'a> {
    bulk: &'a BulkPrefix,
    /// Sequence tags and item indices down to the current data set.
    path: Vec<String>,
}

/// The lazy reader's tokens, decoder and all.
type Tokens<S> = LazyDataSetReader<S>;

fn token_error(e: impl std::error::Error + Send + Sync + 'static) -> JsonError {
    parse_error("cannot parse the data set")(Box::new(e))
}

impl Encoder<'_> {
    /// A data set: the whole top level (`depth` 0, up to the end of the
    /// stream or Pixel Data), or an item up to its end.
    fn data_set<S: StatefulDecode>(
        &mut self,
        tokens: &mut Tokens<S>,
        depth: usize,
    ) -> Result<Object, JsonError> {
        if depth > MAX_DEPTH {
            return Err(JsonError::TooDeep { limit: MAX_DEPTH });
        }
        let mut object = Object::default();
        loop {
            let token = match tokens.advance() {
                None if depth == 0 => return Ok(object),
                None => {
                    return Err(JsonError::Malformed(
                        "the data set ends inside a sequence item".to_string(),
                    ))
                }
                Some(token) => token.map_err(token_error)?,
            };
            match token {
                LazyDataToken::ElementHeader(header) => {
                    if depth == 0 && header.tag == PIXEL_DATA {
                        // Nothing but padding and signatures follows it.
                        object.push(
                            header.tag,
                            header.vr,
                            AttributeValue::Bulk(self.bulk.uri(&self.path, header.tag)),
                        );
                        return Ok(object);
                    }
                    self.element(tokens, header, &mut object)?;
                }
                LazyDataToken::SequenceStart { tag, .. } => {
                    let items = self.sequence(tokens, tag, depth)?;
                    let value = if items.is_empty() {
                        AttributeValue::Empty
                    } else {
                        AttributeValue::Items(items)
                    };
                    object.push(tag, VR::SQ, value);
                }
                LazyDataToken::PixelSequenceStart => {
                    // Encapsulated Pixel Data (7FE0,0010) OB.
                    if depth == 0 {
                        object.push(
                            PIXEL_DATA,
                            VR::OB,
                            AttributeValue::Bulk(self.bulk.uri(&self.path, PIXEL_DATA)),
                        );
                        return Ok(object);
                    }
                    skip_fragments(tokens)?;
                    object.push(
                        PIXEL_DATA,
                        VR::OB,
                        AttributeValue::Bulk(self.bulk.uri(&self.path, PIXEL_DATA)),
                    );
                }
                LazyDataToken::ItemEnd if depth > 0 => return Ok(object),
                other => {
                    return Err(JsonError::Malformed(format!(
                        "unexpected {:?} in a data set",
                        other.into_repr()
                    )))
                }
            }
        }
    }

    /// The items of a sequence, up to its end.
    fn sequence<S: StatefulDecode>(
        &mut self,
        tokens: &mut Tokens<S>,
        tag: Tag,
        depth: usize,
    ) -> Result<Vec<Object>, JsonError> {
        let mut items = Vec::new();
        loop {
            let token = tokens
                .advance()
                .ok_or_else(|| {
                    JsonError::Malformed("the data set ends inside a sequence".to_string())
                })?
                .map_err(token_error)?;
            match token {
                LazyDataToken::ItemStart { .. } => {
                    self.path.push(tag_text(tag));
                    self.path.push(items.len().to_string());
                    let item = self.data_set(tokens, depth + 1);
                    self.path.truncate(self.path.len() - 2);
                    items.push(item?.finish());
                }
                LazyDataToken::SequenceEnd => return Ok(items),
                other => {
                    return Err(JsonError::Malformed(format!(
                        "unexpected {:?} in a sequence",
                        other.into_repr()
                    )))
                }
            }
        }
    }

    /// A primitive element whose header was just read: its value token
    /// follows.
    fn element<S: StatefulDecode>(
        &mut self,
        tokens: &mut Tokens<S>,
        header: DataElementHeader,
        object: &mut Object,
    ) -> Result<(), JsonError> {
        let token = tokens
            .advance()
            .ok_or_else(|| {
                JsonError::Malformed(format!(
                    "the data set ends before the value of {}",
                    header.tag
                ))
            })?
            .map_err(token_error)?;
        if !matches!(token, LazyDataToken::LazyValue { .. }) {
            return Err(JsonError::Malformed(format!(
                "expected the value of {}, found {:?}",
                header.tag,
                token.into_repr()
            )));
        }
        let (tag, vr) = (header.tag, header.vr);
        let value_error = |e: dicom_parser::dataset::Error| {
            parse_error(format!("cannot read the value of {tag}"))(Box::new(e))
        };
        let skip_error = |e: dicom_parser::stateful::decode::Error| {
            parse_error(format!("cannot read past the value of {tag}"))(Box::new(e))
        };
        let binary = matches!(
            vr,
            VR::OB | VR::OD | VR::OF | VR::OL | VR::OV | VR::OW | VR::UN
        );
        let is_bulk = matches!(tag, PIXEL_DATA | FLOAT_PIXEL_DATA | DOUBLE_FLOAT_PIXEL_DATA)
            || (binary && header.length() > Length(BULK_DATA_THRESHOLD));
        if tag.element() == 0x0000 {
            // Group lengths are not part of the model.
            return token.skip().map_err(skip_error);
        }
        if is_bulk {
            token.skip().map_err(skip_error)?;
            object.push(
                tag,
                vr,
                AttributeValue::Bulk(self.bulk.uri(&self.path, tag)),
            );
            return Ok(());
        }
        let value = if binary {
            let mut bytes = Vec::new();
            token.read_value_into(&mut bytes).map_err(value_error)?;
            if bytes.is_empty() {
                AttributeValue::Empty
            } else {
                AttributeValue::Inline(base64::engine::general_purpose::STANDARD.encode(bytes))
            }
        } else {
            let value = token.into_value().map_err(value_error)?;
            json_values(vr, &value)
        };
        object.push(tag, vr, value);
        Ok(())
    }
}

/// Skips the fragments of an encapsulated Pixel Data, up to its end.
fn skip_fragments<S: StatefulDecode>(tokens: &mut Tokens<S>) -> Result<(), JsonError> {
    loop {
        let token = tokens
            .advance()
            .ok_or_else(|| JsonError::Malformed("the data set ends inside Pixel Data".to_string()))?
            .map_err(token_error)?;
        match token {
            LazyDataToken::SequenceEnd => return Ok(()),
            LazyDataToken::ItemStart { .. } | LazyDataToken::ItemEnd => {}
            value @ LazyDataToken::LazyItemValue { .. } => value
                .skip()
                .map_err(|e| parse_error("cannot read a Pixel Data fragment")(Box::new(e)))?,
            other => {
                return Err(JsonError::Malformed(format!(
                    "unexpected {:?} in Pixel Data",
                    other.into_repr()
                )))
            }
        }
    }
}

/// Whether a VR's values have insignificant leading spaces too (PS3.5
/// §6.2); the texts (LT, ST, UT, UC, UR) and PN only trailing ones.
fn trims_leading(vr: VR) -> bool {
    !matches!(vr, VR::LT | VR::ST | VR::UT | VR::UC | VR::UR | VR::PN)
}

fn trimmed(vr: VR, text: &str) -> String {
    let text = text.trim_end_matches([' ', '\0']);
    if trims_leading(vr) {
        text.trim_start_matches(' ').to_string()
    } else {
        text.to_string()
    }
}

/// A non-empty primitive value in the JSON model (`Empty` when every
/// component is empty).
fn json_values(vr: VR, value: &PrimitiveValue) -> AttributeValue {
    let values: Vec<Value> = match vr {
        VR::AT => match value {
            PrimitiveValue::Tags(tags) => tags.iter().map(|t| Value::from(tag_text(*t))).collect(),
            other => strings(vr, other),
        },
        VR::PN => strings(vr, value)
            .into_iter()
            .map(|v| match v {
                Value::String(name) => person_name(&name),
                other => other,
            })
            .collect(),
        VR::IS | VR::DS => strings(vr, value)
            .into_iter()
            .map(|v| match v {
                Value::String(text) => number_text(&text).unwrap_or(Value::String(text)),
                other => other,
            })
            .collect(),
        VR::US | VR::SS | VR::UL | VR::SL | VR::UV | VR::SV | VR::FL | VR::FD => numbers(value)
            .unwrap_or_else(|| {
                strings(vr, value)
                    .into_iter()
                    .map(|v| match v {
                        Value::String(text) => number_text(&text).unwrap_or(Value::String(text)),
                        other => other,
                    })
                    .collect()
            }),
        _ => strings(vr, value),
    };
    if values.iter().all(Value::is_null) {
        AttributeValue::Empty
    } else {
        AttributeValue::Values(values)
    }
}

/// The string components, trimmed; empty ones as `null`.
fn strings(vr: VR, value: &PrimitiveValue) -> Vec<Value> {
    let texts: Vec<String> = match value {
        PrimitiveValue::Empty => Vec::new(),
        // Texts are single values: a backslash is a character.
        PrimitiveValue::Str(text) => vec![text.clone()],
        other => other.to_multi_str().into_owned(),
    };
    texts
        .iter()
        .map(|t| trimmed(vr, t))
        .map(|t| {
            if t.is_empty() {
                Value::Null
            } else {
                Value::String(t)
            }
        })
        .collect()
}

/// `Alphabetic=Ideographic=Phonetic` as the JSON model's object.
fn person_name(name: &str) -> Value {
    let mut object = serde_json::Map::new();
    for (key, group) in ["Alphabetic", "Ideographic", "Phonetic"]
        .into_iter()
        .zip(name.split('='))
    {
        let group = group.trim_end_matches(' ');
        if !group.is_empty() {
            object.insert(key.to_string(), Value::from(group));
        }
    }
    if object.is_empty() {
        Value::Null
    } else {
        Value::Object(object)
    }
}

/// An IS/DS (or misencoded binary number) text as a JSON number: an
/// integer when it is one, else a finite float.
fn number_text(text: &str) -> Option<Value> {
    let text = text.trim();
    if let Ok(integer) = text.strip_prefix('+').unwrap_or(text).parse::<i64>() {
        return Some(Value::from(integer));
    }
    let float: f64 = text.parse().ok()?;
    serde_json::Number::from_f64(float).map(Value::Number)
}

/// Binary numbers as JSON numbers (non-finite floats as the strings
/// `"NaN"`, `"Infinity"`, `"-Infinity"`); `None` for a value that is not
/// binary numbers.
fn numbers(value: &PrimitiveValue) -> Option<Vec<Value>> {
    fn float(x: f64) -> Value {
        match serde_json::Number::from_f64(x) {
            Some(n) => Value::Number(n),
            None if x.is_nan() => Value::from("NaN"),
            None if x > 0.0 => Value::from("Infinity"),
            None => Value::from("-Infinity"),
        }
    }
    Some(match value {
        PrimitiveValue::U8(v) => v.iter().map(|&x| Value::from(x)).collect(),
        PrimitiveValue::U16(v) => v.iter().map(|&x| Value::from(x)).collect(),
        PrimitiveValue::I16(v) => v.iter().map(|&x| Value::from(x)).collect(),
        PrimitiveValue::U32(v) => v.iter().map(|&x| Value::from(x)).collect(),
        PrimitiveValue::I32(v) => v.iter().map(|&x| Value::from(x)).collect(),
        PrimitiveValue::U64(v) => v.iter().map(|&x| Value::from(x)).collect(),
        PrimitiveValue::I64(v) => v.iter().map(|&x| Value::from(x)).collect(),
        // The shortest text of the f32 (0.1, not 0.10000000149011612).
        PrimitiveValue::F32(v) => v
            .iter()
            .map(|&x| float(x.to_string().parse().unwrap_or(f64::from(x))))
            .collect(),
        PrimitiveValue::F64(v) => v.iter().map(|&x| float(x)).collect(),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::super::testfiles::{part10, text};
    use super::*;
    use dicom_core::value::{DataSetSequence, PixelFragmentSequence};
    use dicom_core::{DataElement, DicomValue};
    use dicom_dictionary_std::{tags, uids};
    use dicom_object::InMemDicomObject;
    use serde_json::json;

    fn uid(text: &str) -> Uid {
        Uid::parse(text).unwrap()
    }

    fn prefix() -> BulkPrefix {
        BulkPrefix::new(&uid("1.2"), &uid("1.2.3"), &uid("1.2.3.4"))
    }

    fn encode(bytes: &[u8]) -> Value {
        let object = encode_instance(bytes, &prefix()).unwrap();
        serde_json::to_value(&object).unwrap()
    }

    /// A data set with one attribute of every kind the model distinguishes.
    fn sample() -> InMemDicomObject {
        let item = |description: &str| {
            InMemDicomObject::from_element_iter([
                text(tags::CODE_MEANING, VR::LO, description),
                DataElement::new(
                    tags::REFERENCED_FRAME_NUMBER,
                    VR::IS,
                    PrimitiveValue::from("1\\2"),
                ),
            ])
        };
        let nested = InMemDicomObject::from_element_iter([
            DataElement::new(
                tags::CONCEPT_NAME_CODE_SEQUENCE,
                VR::SQ,
                DataSetSequence::from(vec![item("inner")]),
            ),
            DataElement::new(tags::ROWS, VR::US, PrimitiveValue::from(8_u16)),
            // OW: what an implicit VR reader takes it for, too.
            DataElement::new(
                tags::PIXEL_DATA,
                VR::OW,
                PrimitiveValue::U16(vec![7_u16; 32].into()),
            ),
        ]);
        InMemDicomObject::from_element_iter([
            text(tags::SPECIFIC_CHARACTER_SET, VR::CS, "ISO_IR 192"),
            text(tags::IMAGE_TYPE, VR::CS, "ORIGINAL\\PRIMARY\\\\AXIAL"),
            text(tags::SOP_CLASS_UID, VR::UI, uids::CT_IMAGE_STORAGE),
            text(tags::SOP_INSTANCE_UID, VR::UI, "1.2.3.4"),
            text(tags::STUDY_DATE, VR::DA, "20240131"),
            text(tags::ACCESSION_NUMBER, VR::SH, ""),
            text(tags::REFERRING_PHYSICIAN_NAME, VR::PN, ""),
            text(
                tags::PATIENT_NAME,
                VR::PN,
                "Müller^Jürgen=ミュラー^ユルゲン",
            ),
            text(tags::OTHER_PATIENT_NAMES, VR::PN, "DOE^JOHN\\ROE^RICHARD"),
            text(tags::PATIENT_COMMENTS, VR::LT, "  leading\\kept  "),
            text(tags::SERIES_NUMBER, VR::IS, " 3 "),
            text(tags::INSTANCE_NUMBER, VR::IS, "12"),
            text(tags::SLICE_THICKNESS, VR::DS, "1.25"),
            text(tags::RESCALE_INTERCEPT, VR::DS, "-1024"),
            text(tags::IMAGE_POSITION_PATIENT, VR::DS, "-125\\-130.5\\2E2"),
            DataElement::new(tags::ROWS, VR::US, PrimitiveValue::from(512_u16)),
            DataElement::new(
                tags::SMALLEST_IMAGE_PIXEL_VALUE,
                VR::SS,
                PrimitiveValue::from(-2000_i16),
            ),
            DataElement::new(
                tags::SIMPLE_FRAME_LIST,
                VR::UL,
                PrimitiveValue::U32([1, 4_000_000_000][..].into()),
            ),
            DataElement::new(
                tags::RECOMMENDED_DISPLAY_FRAME_RATE_IN_FLOAT,
                VR::FL,
                PrimitiveValue::F32([0.1_f32][..].into()),
            ),
            DataElement::new(
                tags::REAL_WORLD_VALUE_FIRST_VALUE_MAPPED,
                VR::FD,
                PrimitiveValue::F64([2.5, f64::NAN][..].into()),
            ),
            DataElement::new(
                tags::FRAME_INCREMENT_POINTER,
                VR::AT,
                PrimitiveValue::Tags([tags::FRAME_TIME, Tag(0x0018, 0x1065)][..].into()),
            ),
            DataElement::new(
                tags::ICON_IMAGE_SEQUENCE,
                VR::SQ,
                DataSetSequence::from(vec![nested]),
            ),
            DataElement::new(
                tags::REFERENCED_IMAGE_SEQUENCE,
                VR::SQ,
                DataSetSequence::<InMemDicomObject>::empty(),
            ),
            DataElement::new(
                Tag(0x0009, 0x0010),
                VR::LO,
                PrimitiveValue::from("ACME 1.0"),
            ),
            DataElement::new(
                Tag(0x0009, 0x1001),
                VR::OB,
                PrimitiveValue::from(vec![0_u8, 1, 2, 3]),
            ),
            DataElement::new(
                Tag(0x0009, 0x1002),
                VR::OB,
                PrimitiveValue::from(vec![9_u8; BULK_DATA_THRESHOLD as usize + 2]),
            ),
            DataElement::new(
                Tag(0x0009, 0x1003),
                VR::OB,
                PrimitiveValue::from(vec![5_u8; BULK_DATA_THRESHOLD as usize]),
            ),
            DataElement::new(Tag(0x0009, 0x1004), VR::OW, PrimitiveValue::Empty),
            DataElement::new(
                tags::PIXEL_DATA,
                VR::OW,
                PrimitiveValue::U16(vec![1_u16; 16].into()),
            ),
            // Trailing padding after Pixel Data: never in the model.
            DataElement::new(
                tags::DATA_SET_TRAILING_PADDING,
                VR::OB,
                PrimitiveValue::from(vec![0_u8; 4]),
            ),
        ])
    }

    #[test]
    fn every_vr_is_encoded_as_ps3_18_says() {
        let json = encode(&part10(sample(), uids::EXPLICIT_VR_LITTLE_ENDIAN));
        let bulk = "studies/1.2/series/1.2.3/instances/1.2.3.4/bulk";
        assert_eq!(
            json["00080005"],
            json!({"vr": "CS", "Value": ["ISO_IR 192"]})
        );
        // Multi-valued strings; an empty component is null.
        assert_eq!(
            json["00080008"],
            json!({"vr": "CS", "Value": ["ORIGINAL", "PRIMARY", null, "AXIAL"]})
        );
        assert_eq!(json["00080018"], json!({"vr": "UI", "Value": ["1.2.3.4"]}));
        assert_eq!(json["00080020"], json!({"vr": "DA", "Value": ["20240131"]}));
        // Empty values: the VR alone.
        assert_eq!(json["00080050"], json!({"vr": "SH"}));
        assert_eq!(json["00080090"], json!({"vr": "PN"}));
        assert_eq!(json["00081140"], json!({"vr": "SQ"}));
        assert_eq!(json["00091004"], json!({"vr": "OW"}));
        // Person names, in their groups, decoded with the character set.
        assert_eq!(
            json["00100010"],
            json!({"vr": "PN", "Value": [{"Alphabetic": "Müller^Jürgen", "Ideographic": "ミュラー^ユルゲン"}]})
        );
        assert_eq!(
            json["00101001"],
            json!({"vr": "PN", "Value": [{"Alphabetic": "DOE^JOHN"}, {"Alphabetic": "ROE^RICHARD"}]})
        );
        // A text is one value: the backslash and leading spaces are kept.
        assert_eq!(
            json["00104000"],
            json!({"vr": "LT", "Value": ["  leading\\kept"]})
        );
        // IS and DS as numbers.
        assert_eq!(json["00200011"], json!({"vr": "IS", "Value": [3]}));
        assert_eq!(json["00200013"], json!({"vr": "IS", "Value": [12]}));
        assert_eq!(json["00180050"], json!({"vr": "DS", "Value": [1.25]}));
        assert_eq!(json["00281052"], json!({"vr": "DS", "Value": [-1024]}));
        assert_eq!(
            json["00200032"],
            json!({"vr": "DS", "Value": [-125, -130.5, 200.0]})
        );
        // Binary numbers.
        assert_eq!(json["00280010"], json!({"vr": "US", "Value": [512]}));
        assert_eq!(json["00280106"], json!({"vr": "SS", "Value": [-2000]}));
        assert_eq!(
            json["00081161"],
            json!({"vr": "UL", "Value": [1, 4_000_000_000_u32]})
        );
        assert_eq!(json["00089459"], json!({"vr": "FL", "Value": [0.1]}));
        assert_eq!(json["00409216"], json!({"vr": "FD", "Value": [2.5, "NaN"]}));
        assert_eq!(
            json["00280009"],
            json!({"vr": "AT", "Value": ["00181063", "00181065"]})
        );
        // Nested sequences; bulk data inside them is addressed by its path.
        assert_eq!(
            json["00880200"],
            json!({"vr": "SQ", "Value": [{
                "0040A043": {"vr": "SQ", "Value": [{
                    "00081160": {"vr": "IS", "Value": [1, 2]},
                    "00080104": {"vr": "LO", "Value": ["inner"]},
                }]},
                "00280010": {"vr": "US", "Value": [8]},
                "7FE00010": {"vr": "OW", "BulkDataURI": format!("{bulk}/00880200/0/7FE00010")},
            }]})
        );
        // Private attributes; binary values inline up to the threshold.
        assert_eq!(json["00090010"], json!({"vr": "LO", "Value": ["ACME 1.0"]}));
        assert_eq!(
            json["00091001"],
            json!({"vr": "OB", "InlineBinary": "AAECAw=="})
        );
        assert_eq!(
            json["00091002"],
            json!({"vr": "OB", "BulkDataURI": format!("{bulk}/00091002")})
        );
        assert_eq!(
            json["00091003"]["InlineBinary"].as_str().unwrap().len(),
            1368
        );
        assert_eq!(
            json["7FE00010"],
            json!({"vr": "OW", "BulkDataURI": format!("{bulk}/7FE00010")})
        );
        assert!(json.get("FFFCFFFC").is_none(), "{json:#}");
        // Nothing of the meta group, nothing more than those.
        assert!(json
            .as_object()
            .unwrap()
            .keys()
            .all(|k| !k.starts_with("0002")));
        assert_eq!(json.as_object().unwrap().len(), 29, "{json:#}");
    }

    #[test]
    fn keys_are_in_tag_order_and_vr_comes_first() {
        let bytes = part10(sample(), uids::EXPLICIT_VR_LITTLE_ENDIAN);
        let object = encode_instance(&bytes[..], &prefix()).unwrap();
        let text = serde_json::to_string(&object).unwrap();
        assert!(
            text.starts_with(r#"{"00080005":{"vr":"CS","Value":["ISO_IR 192"]}"#),
            "{text}"
        );
        let keys: Vec<&Tag> = object.0.iter().map(|(t, _)| t).collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(object.instance_number(), Some(12));
        // Deterministic: the same file gives the same bytes.
        let again = encode_instance(&bytes[..], &prefix()).unwrap();
        assert_eq!(serde_json::to_string(&again).unwrap(), text);
    }

    #[test]
    fn implicit_vr_and_deflated_data_sets_give_the_same_model() {
        let explicit = encode(&part10(sample(), uids::EXPLICIT_VR_LITTLE_ENDIAN));
        for ts in [
            uids::IMPLICIT_VR_LITTLE_ENDIAN,
            uids::DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
        ] {
            let other = encode(&part10(sample(), ts));
            for key in ["00100010", "00200032", "00880200", "00280010", "7FE00010"] {
                assert_eq!(other[key], explicit[key], "{ts} {key}");
            }
        }
        // Implicit VR: a private attribute has no known VR, UN it is.
        let implicit = encode(&part10(sample(), uids::IMPLICIT_VR_LITTLE_ENDIAN));
        assert_eq!(
            implicit["00091001"],
            json!({"vr": "UN", "InlineBinary": "AAECAw=="})
        );
    }

    #[test]
    fn encapsulated_pixel_data_is_bulk_and_never_parsed() {
        let mut object = sample();
        object.put(DataElement::new(
            tags::PIXEL_DATA,
            VR::OB,
            DicomValue::PixelSequence(PixelFragmentSequence::new(
                vec![],
                vec![vec![1_u8; 4000], vec![2_u8; 10]],
            )),
        ));
        let mut bytes = part10(object, uids::JPEG_BASELINE8_BIT);
        let json = encode(&bytes);
        assert_eq!(
            json["7FE00010"],
            json!({"vr": "OB", "BulkDataURI": "studies/1.2/series/1.2.3/instances/1.2.3.4/bulk/7FE00010"})
        );
        assert_eq!(json["00200013"], json!({"vr": "IS", "Value": [12]}));
        // Parsing stops at Pixel Data: garbage after it does not matter.
        let at = bytes.len() - 3000;
        bytes[at..].fill(0xFF);
        assert_eq!(encode(&bytes), json);
    }

    #[test]
    fn broken_files_are_refused_with_a_reason() {
        let good = part10(sample(), uids::EXPLICIT_VR_LITTLE_ENDIAN);
        let mut no_magic = good.clone();
        no_magic[128] = b'X';
        assert!(matches!(
            encode_instance(&no_magic[..], &prefix()),
            Err(JsonError::Meta(super::super::MetaError::NoMagic))
        ));
        // Cut inside the icon sequence.
        let cut = good
            .windows(4)
            .position(|w| w == [0x88, 0x00, 0x00, 0x02])
            .unwrap()
            + 30;
        let error = encode_instance(&good[..cut], &prefix()).unwrap_err();
        let error = crate::model::error_chain(&error);
        assert!(error.contains("data set"), "{error}");
        assert!(encode_instance(&good[..100], &prefix()).is_err());
    }
}
