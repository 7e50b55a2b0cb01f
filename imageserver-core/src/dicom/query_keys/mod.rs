//! C-FIND identifiers: request data set → [`Query`], [`Match`] → response
//! data set. Pure: no IO, no index.
//!
//! # Requests ([`parse_identifier`])
//!
//! The identifier is read in the presentation context's transfer syntax;
//! Specific Character Set (0008,0005) in it governs the decoding of text
//! (dicom-object switches decoders when it reads that element). Its
//! structure is checked first, because dicom-object allocates whatever
//! length an element header claims and recurses once per nested sequence:
//! every element and item must lie within the bytes, sequences nest at most
//! 16 deep, a deflated identifier inflates to at most 4 MiB; otherwise C000.
//!
//! - QueryRetrieveLevel (0008,0052) is required and must name a level of
//!   the model (Study Root has no PATIENT level); otherwise A900.
//! - Every element whose tag the index knows ([`Attribute::ALL`]) becomes a
//!   [`Key`] (PS3.4 C.2.2.2): zero length (or only `*`) → universal; a
//!   backslash-separated value → list; `*`/`?` in a text or PN value →
//!   wildcard; `lo-hi`, `lo-`, `-hi` on DA/TM → range (`-` alone →
//!   universal); anything else → single value. Wildcards are not applied to
//!   UI, DA, TM and IS (PS3.4 C.2.2.2.4): a UI or IS value containing them is
//!   a single value (that matches nothing), a DA or TM value must be a valid
//!   date/time (or range of them) or the query fails with C000. Wildcards
//!   inside a multi-valued key are refused (C000) rather than matched
//!   literally. Date and time ranges are matched independently, unless
//!   the SCU negotiated combined date-time matching (SOP class extended
//!   negotiation, [`ParseOptions::combined_date_time`]): then a date range
//!   and its paired time are one range ([`combine_date_time`], PS3.4
//!   C.2.2.2.5).
//!   A value on a count attribute (NumberOf…) cannot be matched: it is
//!   returned as if universal and the query answers "pending, optional keys
//!   not supported" (FF01).
//! - Baseline hierarchical search (PS3.4 C.4.1.2.1, C.4.1.3.1): the unique
//!   key of every level above the query level must be present with a single
//!   value (Patient Root: PatientID; both roots: StudyInstanceUID above
//!   SERIES, SeriesInstanceUID above IMAGE); a known attribute of a level
//!   below the query level is an error. Both give A900 with the offending
//!   tag. One leniency, as other archives have it: Modality (0008,0060) in
//!   a STUDY-level query is read as ModalitiesInStudy and answered under
//!   the tag asked.
//! - Elements the index does not know (sequences, private and other
//!   attributes) are remembered and returned zero-length in every response;
//!   their presence makes pendings FF01. Only the first
//!   [`ParseOptions::max_echoed_unsupported`] are returned: an identifier of
//!   100,000 of them would otherwise make every response as large as the
//!   request. Sequence matching is not supported.
//!   Retrieve AE Title (0008,0054) is answered with our AE title.
//!
//! # Responses ([`encode_response`])
//!
//! QueryRetrieveLevel, every requested key with the matched value (VR from
//! the standard dictionary), the unique keys of the query level and the
//! levels above, unsupported keys empty, Retrieve AE Title when asked.
//! Specific Character Set: all values ASCII → the request's value is echoed
//! when we can encode in it (else the element is omitted); otherwise
//! "ISO_IR 100" when the request asked for Latin-1 and every value fits in
//! it, else "ISO_IR 192" (UTF-8). The writer encodes the text in that
//! character set because it meets (0008,0005) first. A deflated response of
//! odd length gets its trailing NUL (PS3.5 A.5), which the writer omits.
//! Implicit and Explicit VR Little Endian responses are written flat,
//! straight from the match's values into bytes by a plan made once per
//! query; the data set path writes the rest and is the reference a test
//! compares the flat bytes with.

use std::borrow::Cow;
use std::fmt;
use std::io::Read;

use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry};
use dicom_core::value::{DataSetSequence, PrimitiveValue, Value};
use dicom_core::{DataElement, Tag, VR};
use dicom_dictionary_std::{tags, StandardDataDictionary};
use dicom_encoding::transfer_syntax::Codec;
use dicom_encoding::{Endianness, TransferSyntax};
use dicom_object::mem::InMemElement;
use dicom_object::InMemDicomObject;
use dicom_transfer_syntax_registry::{TransferSyntaxIndex, TransferSyntaxRegistry};

use crate::dicom::dimse::Status;
use crate::dicom::part10::walker::value_unit;
use crate::model::error_chain;
use crate::model::query::{
    Attribute, DateTimeBound, Key, Kind, Level, Match, Matcher, Query, Root, MAX_LIST_VALUES,
};
use crate::model::PartitionId;

/// What a request is parsed with besides its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParseOptions<'a> {
    /// PN keys match case-insensitively (the partition's setting).
    pub pn_case_insensitive: bool,
    /// The query's [`Query::limit`].
    pub limit: Option<u64>,
    /// Our AE title, answered in Retrieve AE Title (0008,0054).
    pub retrieve_ae_title: &'a str,
    /// Most elements the index does not know that every response returns
    /// (zero-length, the first in tag order); the rest are left out. Any
    /// of them makes pendings FF01 all the same.
    pub max_echoed_unsupported: usize,
    /// The SCU negotiated combined date-time matching (PS3.4 C.2.2.2.5)
    /// for the SOP class: date and time range keys match as one range
    /// ([`combine_date_time`]).
    pub combined_date_time: bool,
}

/// One element of every response, in the request's (tag) order.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Requested {
    /// A key the index answers.
    Attribute(Attribute),
    /// Retrieve AE Title (0008,0054).
    RetrieveAeTitle,
    /// An element the index does not know: returned zero-length.
    Unsupported(Tag, VR),
    /// Modality (0008,0060) in a study-level query, read as
    /// ModalitiesInStudy and answered with its value under the tag asked.
    ModalityAsModalitiesInStudy,
}

/// A parsed C-FIND identifier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedQuery {
    /// The query for the index.
    pub query: Query,
    requested: Vec<Requested>,
    specific_character_set: Option<String>,
    retrieve_ae_title: String,
    /// A count attribute came with a value we could not match on, or an
    /// unsupported key was left out of the responses.
    ignored_matching: bool,
    /// How every response is written without a data set (`flat::Plan`).
    plan: flat::Plan,
}

impl ParsedQuery {
    /// The elements of the request the index does not know, returned
    /// zero-length in every response.
    pub fn unsupported(&self) -> Vec<Tag> {
        self.requested
            .iter()
            .filter_map(|r| match r {
                Requested::Unsupported(tag, _) => Some(*tag),
                _ => None,
            })
            .collect()
    }

    /// Whether some optional key was not supported for existence or
    /// matching: pending responses then carry FF01 instead of FF00.
    pub fn optional_keys_unsupported(&self) -> bool {
        self.ignored_matching
            || self
                .requested
                .iter()
                .any(|r| matches!(r, Requested::Unsupported(..)))
    }

    /// The request's Specific Character Set (values joined with `\`), if any.
    pub fn specific_character_set(&self) -> Option<&str> {
        self.specific_character_set.as_deref()
    }

    /// The attributes of every response (requested keys, then the unique
    /// keys of the query level and the levels above not requested).
    fn response_attributes(&self) -> Vec<Attribute> {
        let mut attributes: Vec<Attribute> = self
            .requested
            .iter()
            .filter_map(|r| match r {
                Requested::Attribute(a) => Some(*a),
                _ => None,
            })
            .collect();
        for level in levels(self.query.root) {
            if *level > self.query.level {
                break;
            }
            let unique = Attribute::unique_key(*level);
            if !attributes.contains(&unique) {
                attributes.push(unique);
            }
        }
        attributes
    }
}

/// Why an identifier cannot be answered. [`QueryKeyError::status`] maps each
/// to its C-FIND failure status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum QueryKeyError {
    /// The presentation context's transfer syntax is not one we can decode.
    #[error("unsupported transfer syntax {0}")]
    TransferSyntax(String),
    /// The identifier is not a readable data set.
    #[error("undecodable identifier: {0}")]
    Undecodable(String),
    /// QueryRetrieveLevel (0008,0052) is absent or empty.
    #[error("QueryRetrieveLevel (0008,0052) missing")]
    MissingLevel,
    /// QueryRetrieveLevel names no level of the model.
    #[error("QueryRetrieveLevel {value:?} invalid for {root}")]
    BadLevel {
        /// The value received.
        value: String,
        /// The information model.
        root: RootName,
    },
    /// A unique key of a level above the query level is absent or not a
    /// single value.
    #[error("{} needs a single value at {} level", .attribute.keyword(), .level.code())]
    UniqueKeyRequired {
        /// The unique key.
        attribute: Attribute,
        /// The query level.
        level: Level,
    },
    /// A key of a level below the query level.
    #[error("{} is below the {} level", .attribute.keyword(), .level.code())]
    BelowLevel {
        /// The key.
        attribute: Attribute,
        /// The query level.
        level: Level,
    },
    /// A key value we cannot match as given.
    #[error("{} {value:?}: {reason}", .attribute.keyword())]
    BadValue {
        /// The key.
        attribute: Attribute,
        /// The value (truncated).
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// The name of an information model, for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RootName(pub Root);

impl fmt::Display for RootName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.0 {
            Root::Patient => "Patient Root",
            Root::Study => "Study Root",
        })
    }
}

impl QueryKeyError {
    /// The C-FIND status (PS3.4 C.4.1.1.4): A900 "identifier does not match
    /// SOP class" when the identifier breaks the information model (level,
    /// hierarchy); C000 "unable to process" when it cannot be decoded or a
    /// value cannot be matched.
    pub fn status(&self) -> Status {
        match self {
            QueryKeyError::MissingLevel
            | QueryKeyError::BadLevel { .. }
            | QueryKeyError::UniqueKeyRequired { .. }
            | QueryKeyError::BelowLevel { .. } => Status::IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS,
            QueryKeyError::TransferSyntax(_)
            | QueryKeyError::Undecodable(_)
            | QueryKeyError::BadValue { .. } => Status::UNABLE_TO_PROCESS,
        }
    }

    /// The tag for OffendingElement (0000,0901), as `(group << 16) | element`.
    pub fn offending_element(&self) -> Option<u32> {
        let tag = |(group, element): (u16, u16)| (u32::from(group) << 16) | u32::from(element);
        match self {
            QueryKeyError::MissingLevel | QueryKeyError::BadLevel { .. } => {
                Some(tag((0x0008, 0x0052)))
            }
            QueryKeyError::UniqueKeyRequired { attribute, .. }
            | QueryKeyError::BelowLevel { attribute, .. }
            | QueryKeyError::BadValue { attribute, .. } => Some(tag(attribute.tag())),
            QueryKeyError::TransferSyntax(_) | QueryKeyError::Undecodable(_) => None,
        }
    }
}

/// The levels of a model, top first.
fn levels(root: Root) -> &'static [Level] {
    match root {
        Root::Patient => &[Level::Patient, Level::Study, Level::Series, Level::Image],
        Root::Study => &[Level::Study, Level::Series, Level::Image],
    }
}

/// A registered transfer syntax by UID (padding ignored).
fn transfer_syntax(uid: &str) -> Option<&'static TransferSyntax> {
    TransferSyntaxRegistry.get(uid.trim_end_matches(['\0', ' ']))
}

/// Parses a C-FIND identifier encoded in `transfer_syntax` into a query of
/// `partition` in the `root` model. See the module documentation for the
/// rules.
pub fn parse_identifier(
    bytes: &[u8],
    transfer_syntax_uid: &str,
    root: Root,
    partition: PartitionId,
    options: &ParseOptions<'_>,
) -> Result<ParsedQuery, QueryKeyError> {
    let object = read_identifier(bytes, transfer_syntax_uid)?;

    let specific_character_set = object
        .get(tags::SPECIFIC_CHARACTER_SET)
        .and_then(|e| e.value().to_multi_str().ok().map(|v| v.join("\\")))
        .map(|v| v.trim_matches([' ', '\0']).to_string())
        .filter(|v| !v.is_empty());

    let level_value = object
        .get(tags::QUERY_RETRIEVE_LEVEL)
        .and_then(|e| e.to_str().ok().map(|v| trim(&v).to_string()))
        .filter(|v| !v.is_empty())
        .ok_or(QueryKeyError::MissingLevel)?;
    let level = Level::from_code(&level_value)
        .filter(|level| levels(root).contains(level))
        .ok_or_else(|| QueryKeyError::BadLevel {
            value: level_value.chars().take(16).collect(),
            root: RootName(root),
        })?;

    let mut keys = Vec::new();
    let mut requested = Vec::new();
    let mut ignored_matching = false;
    let mut unsupported = 0usize;
    for element in object.iter() {
        let tag = element.header().tag;
        if tag.element() == 0x0000
            || tag == tags::SPECIFIC_CHARACTER_SET
            || tag == tags::QUERY_RETRIEVE_LEVEL
        {
            continue;
        }
        if tag == tags::RETRIEVE_AE_TITLE {
            requested.push(Requested::RetrieveAeTitle);
            continue;
        }
        let Some(attribute) = Attribute::from_tag((tag.group(), tag.element())) else {
            if unsupported < options.max_echoed_unsupported {
                requested.push(Requested::Unsupported(tag, element.header().vr));
            } else {
                ignored_matching = true;
            }
            unsupported += 1;
            continue;
        };
        let values = element_values(element);
        if attribute == Attribute::Modality && level == Level::Study {
            // As other archives do: a study-level Modality key is the
            // study's modalities (PS3.4 has it at SERIES level only).
            let (matcher, _) = parse_matcher(Attribute::ModalitiesInStudy, &values)?;
            keys.push(Key {
                attribute: Attribute::ModalitiesInStudy,
                matcher,
            });
            requested.push(Requested::ModalityAsModalitiesInStudy);
            continue;
        }
        if attribute.level_in(root) > level {
            return Err(QueryKeyError::BelowLevel { attribute, level });
        }
        let (matcher, ignored) = parse_matcher(attribute, &values)?;
        ignored_matching |= ignored;
        keys.push(Key { attribute, matcher });
        requested.push(Requested::Attribute(attribute));
    }
    if options.combined_date_time {
        combine_date_time(&mut keys);
    }

    for above in levels(root).iter().filter(|l| **l < level) {
        let unique = Attribute::unique_key(*above);
        let single = keys
            .iter()
            .any(|k| k.attribute == unique && matches!(k.matcher, Matcher::Single(_)));
        if !single {
            return Err(QueryKeyError::UniqueKeyRequired {
                attribute: unique,
                level,
            });
        }
    }

    let mut parsed = ParsedQuery {
        query: Query {
            partition,
            root,
            level,
            keys,
            pn_case_insensitive: options.pn_case_insensitive,
            limit: options.limit,
            offset: 0,
        },
        requested,
        specific_character_set,
        retrieve_ae_title: options.retrieve_ae_title.to_string(),
        ignored_matching,
        plan: flat::Plan::default(),
    };
    parsed.plan = flat::Plan::new(&parsed);
    Ok(parsed)
}

/// Largest inflated identifier of the Deflated transfer syntax.
const MAX_INFLATED_LEN: u64 = 4 << 20;
/// Deepest sequence nesting accepted in an identifier.
const MAX_NESTING: usize = 16;

/// Decodes a query/retrieve identifier, after checking its structure:
/// dicom-object allocates (and zero-fills) whatever length an element header
/// claims, and recurses once per nested sequence, so a 9-byte identifier
/// claiming a 2 GiB value costs 2 GiB, and 20 000 nested sequences (320 KB)
/// overflow the association thread's stack, aborting the process. Deflated
/// identifiers are inflated first (bounded). Every failure is C000.
pub fn read_identifier(
    bytes: &[u8],
    transfer_syntax_uid: &str,
) -> Result<InMemDicomObject, QueryKeyError> {
    let ts = transfer_syntax(transfer_syntax_uid)
        .ok_or_else(|| QueryKeyError::TransferSyntax(transfer_syntax_uid.to_string()))?;
    let inflated;
    let (bytes, ts) = match ts.codec() {
        Codec::Dataset(Some(adapter)) => {
            let mut reader = adapter
                .adapt_reader(Box::new(bytes))
                .take(MAX_INFLATED_LEN + 1);
            let mut buffer = Vec::new();
            reader
                .read_to_end(&mut buffer)
                .map_err(|e| QueryKeyError::Undecodable(format!("cannot inflate: {e}")))?;
            if buffer.len() as u64 > MAX_INFLATED_LEN {
                return Err(QueryKeyError::Undecodable(format!(
                    "inflates to more than {MAX_INFLATED_LEN} bytes"
                )));
            }
            inflated = buffer;
            let explicit_le = transfer_syntax(EXPLICIT_VR_LITTLE_ENDIAN)
                .ok_or_else(|| QueryKeyError::TransferSyntax(EXPLICIT_VR_LITTLE_ENDIAN.into()))?;
            (&inflated[..], explicit_le)
        }
        Codec::None => (bytes, ts),
        _ => {
            return Err(QueryKeyError::TransferSyntax(
                transfer_syntax_uid.to_string(),
            ))
        }
    };
    let explicit = ts.uid() != IMPLICIT_VR_LITTLE_ENDIAN;
    let big_endian = ts.endianness() == Endianness::Big;
    Walker {
        bytes,
        pos: 0,
        explicit,
        big_endian,
    }
    .elements(Some(bytes.len()), 0)
    .map_err(|fault| QueryKeyError::Undecodable(fault.to_string()))?;
    InMemDicomObject::read_dataset_with_ts(bytes, ts)
        .map_err(|e| QueryKeyError::Undecodable(error_chain(&e)))
}

const IMPLICIT_VR_LITTLE_ENDIAN: &str = "1.2.840.10008.1.2";
const EXPLICIT_VR_LITTLE_ENDIAN: &str = "1.2.840.10008.1.2.1";
const UNDEFINED: u32 = 0xFFFF_FFFF;
const ITEM: (u16, u16) = (0xFFFE, 0xE000);
const ITEM_END: (u16, u16) = (0xFFFE, 0xE00D);
const SEQUENCE_END: (u16, u16) = (0xFFFE, 0xE0DD);

/// What the identifier walker found wrong, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum Fault {
    #[error("truncated at byte {0}")]
    Truncated(usize),
    #[error("a length of {len} at byte {at} exceeds the data")]
    LengthBeyondData { len: u32, at: usize },
    #[error("unexpected ({:04X},{:04X})", .0.0, .0.1)]
    UnexpectedDelimiter((u16, u16)),
    #[error("bad VR at byte {0}")]
    BadVr(usize),
    #[error("undefined length on {0:?}")]
    UndefinedLength(VR),
    #[error("sequences nested deeper than {0}")]
    TooDeep(usize),
    #[error("unexpected ({:04X},{:04X}) in a sequence", .0.0, .0.1)]
    NotAnItem((u16, u16)),
    #[error("a value of {len} bytes at byte {at} is not a whole number of {unit}-byte values")]
    PartialValue { len: u32, at: usize, unit: u32 },
}

/// Checks that every element and item of an encoded data set lies within
/// the bytes and that sequences nest at most [`MAX_NESTING`] deep.
struct Walker<'a> {
    bytes: &'a [u8],
    pos: usize,
    explicit: bool,
    big_endian: bool,
}

impl Walker<'_> {
    fn take<const N: usize>(&mut self, limit: usize) -> Result<[u8; N], Fault> {
        let end = self.pos + N;
        if end > limit {
            return Err(Fault::Truncated(self.pos));
        }
        let mut out = [0u8; N];
        out.copy_from_slice(&self.bytes[self.pos..end]);
        self.pos = end;
        Ok(out)
    }

    fn u16(&self, b: [u8; 2]) -> u16 {
        if self.big_endian {
            u16::from_be_bytes(b)
        } else {
            u16::from_le_bytes(b)
        }
    }

    fn u32(&self, b: [u8; 4]) -> u32 {
        if self.big_endian {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        }
    }

    fn tag(&mut self, limit: usize) -> Result<(u16, u16), Fault> {
        let group = self.take::<2>(limit)?;
        let element = self.take::<2>(limit)?;
        Ok((self.u16(group), self.u16(element)))
    }

    /// A value of `len` bytes must end by `limit`; returns its end.
    fn value_end(&self, len: u32, limit: usize) -> Result<usize, Fault> {
        let end = self.pos.saturating_add(len as usize);
        if end > limit {
            return Err(Fault::LengthBeyondData { len, at: self.pos });
        }
        Ok(end)
    }

    /// Elements up to `end` (defined length), or up to an item delimiter
    /// (`None`: an item of undefined length).
    fn elements(&mut self, end: Option<usize>, depth: usize) -> Result<(), Fault> {
        let limit = end.unwrap_or(self.bytes.len());
        loop {
            if end == Some(self.pos) {
                return Ok(());
            }
            let tag = self.tag(limit)?;
            if tag.0 == 0xFFFE {
                let len = self.take::<4>(limit)?;
                if tag == ITEM_END && end.is_none() && self.u32(len) == 0 {
                    return Ok(());
                }
                return Err(Fault::UnexpectedDelimiter(tag));
            }
            let (vr, len) = if self.explicit {
                let vr =
                    VR::from_binary(self.take::<2>(limit)?).ok_or(Fault::BadVr(self.pos - 2))?;
                let long = matches!(
                    vr,
                    VR::OB
                        | VR::OD
                        | VR::OF
                        | VR::OL
                        | VR::OV
                        | VR::OW
                        | VR::SQ
                        | VR::UC
                        | VR::UN
                        | VR::UR
                        | VR::UT
                        | VR::SV
                        | VR::UV
                );
                if long {
                    self.take::<2>(limit)?;
                    let len = self.take::<4>(limit)?;
                    (vr, self.u32(len))
                } else {
                    let len = self.take::<2>(limit)?;
                    (vr, u32::from(self.u16(len)))
                }
            } else {
                let len = self.take::<4>(limit)?;
                // As dicom-parser reads Implicit VR: OW for Pixel Data and
                // Overlay Data, else the dictionary's VR.
                let vr = if tag == (0x7FE0, 0x0010) || (tag.0 >> 8 == 0x60 && tag.1 == 0x3000) {
                    VR::OW
                } else {
                    dictionary_vr(Tag(tag.0, tag.1))
                };
                (vr, self.u32(len))
            };
            if len == UNDEFINED {
                if self.explicit && vr != VR::SQ {
                    return Err(Fault::UndefinedLength(vr));
                }
                self.sequence(None, depth + 1)?;
            } else {
                let value_end = self.value_end(len, limit)?;
                if vr == VR::SQ {
                    self.sequence(Some(value_end), depth + 1)?;
                } else {
                    // dicom-parser loses step with a partial binary value.
                    let unit = value_unit(vr);
                    if len % unit != 0 {
                        return Err(Fault::PartialValue {
                            len,
                            at: self.pos,
                            unit,
                        });
                    }
                    self.pos = value_end;
                }
            }
        }
    }

    /// Items up to `end`, or up to a sequence delimiter (`None`).
    fn sequence(&mut self, end: Option<usize>, depth: usize) -> Result<(), Fault> {
        if depth > MAX_NESTING {
            return Err(Fault::TooDeep(MAX_NESTING));
        }
        let limit = end.unwrap_or(self.bytes.len());
        loop {
            if end == Some(self.pos) {
                return Ok(());
            }
            let tag = self.tag(limit)?;
            let len = self.take::<4>(limit)?;
            let len = self.u32(len);
            match tag {
                ITEM if len == UNDEFINED => self.elements(None, depth)?,
                ITEM => {
                    let item_end = self.value_end(len, limit)?;
                    self.elements(Some(item_end), depth)?;
                }
                SEQUENCE_END if end.is_none() && len == 0 => return Ok(()),
                _ => return Err(Fault::NotAnItem(tag)),
            }
        }
    }
}

/// The values of a request element, each trimmed of padding; empty when the
/// element is zero-length (or holds no text, e.g. a sequence).
fn element_values(element: &InMemElement) -> Vec<String> {
    let Value::Primitive(primitive) = element.value() else {
        return Vec::new();
    };
    let strings: Cow<'_, [String]> = primitive.to_multi_str();
    // One value per backslash-separated part (a reader may keep a joined
    // string as one value).
    let values: Vec<String> = strings
        .iter()
        .flat_map(|s| s.split('\\'))
        .map(|s| trim(s).to_string())
        .collect();
    if values.iter().all(String::is_empty) {
        Vec::new()
    } else {
        values
    }
}

fn trim(value: &str) -> &str {
    value.trim_matches([' ', '\0'])
}

mod charset;
mod flat;
mod matching;
mod response;
#[cfg(test)]
mod tests;

use charset::dictionary_vr;
pub use matching::{combine_date_time, parse_matcher};
pub use response::{encode_response, EncodeError};
