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
//!   literally. Date and time ranges are matched independently: combined
//!   date-time matching needs extended negotiation, which we do not offer.
//!   A value on a count attribute (NumberOf…) cannot be matched: it is
//!   returned as if universal and the query answers "pending, optional keys
//!   not supported" (FF01).
//! - Baseline hierarchical search (PS3.4 C.4.1.2.1, C.4.1.3.1): the unique
//!   key of every level above the query level must be present with a single
//!   value (Patient Root: PatientID; both roots: StudyInstanceUID above
//!   SERIES, SeriesInstanceUID above IMAGE); a known attribute of a level
//!   below the query level is an error. Both give A900 with the offending
//!   tag.
//! - Elements the index does not know (sequences, private and other
//!   attributes) are remembered and returned zero-length in every response;
//!   their presence makes pendings FF01. Sequence matching is not supported.
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
use crate::model::error_chain;
use crate::model::query::{
    Attribute, Key, Kind, Level, Match, Matcher, Query, Root, MAX_LIST_VALUES,
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
}

/// A parsed C-FIND identifier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedQuery {
    /// The query for the index.
    pub query: Query,
    requested: Vec<Requested>,
    specific_character_set: Option<String>,
    retrieve_ae_title: String,
    /// A count attribute came with a value we could not match on.
    ignored_matching: bool,
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

/// A response data set could not be written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot encode the C-FIND response: {0}")]
pub struct EncodeError(String);

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
        .element_opt(tags::SPECIFIC_CHARACTER_SET)
        .ok()
        .flatten()
        .and_then(|e| e.value().to_multi_str().ok().map(|v| v.join("\\")))
        .map(|v| v.trim_matches([' ', '\0']).to_string())
        .filter(|v| !v.is_empty());

    let level_value = object
        .element_opt(tags::QUERY_RETRIEVE_LEVEL)
        .ok()
        .flatten()
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
            requested.push(Requested::Unsupported(tag, element.header().vr));
            continue;
        };
        if attribute.level_in(root) > level {
            return Err(QueryKeyError::BelowLevel { attribute, level });
        }
        let values = element_values(element);
        let (matcher, ignored) = matcher_for(attribute, &values)?;
        ignored_matching |= ignored;
        keys.push(Key { attribute, matcher });
        requested.push(Requested::Attribute(attribute));
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

    Ok(ParsedQuery {
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
    })
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
    .map_err(QueryKeyError::Undecodable)?;
    InMemDicomObject::read_dataset_with_ts(bytes, ts)
        .map_err(|e| QueryKeyError::Undecodable(error_chain(&e)))
}

const IMPLICIT_VR_LITTLE_ENDIAN: &str = "1.2.840.10008.1.2";
const EXPLICIT_VR_LITTLE_ENDIAN: &str = "1.2.840.10008.1.2.1";
const UNDEFINED: u32 = 0xFFFF_FFFF;
const ITEM: (u16, u16) = (0xFFFE, 0xE000);
const ITEM_END: (u16, u16) = (0xFFFE, 0xE00D);
const SEQUENCE_END: (u16, u16) = (0xFFFE, 0xE0DD);

/// Checks that every element and item of an encoded data set lies within
/// the bytes and that sequences nest at most [`MAX_NESTING`] deep.
struct Walker<'a> {
    bytes: &'a [u8],
    pos: usize,
    explicit: bool,
    big_endian: bool,
}

impl Walker<'_> {
    fn take<const N: usize>(&mut self, limit: usize) -> Result<[u8; N], String> {
        let end = self.pos + N;
        if end > limit {
            return Err(format!("truncated at byte {}", self.pos));
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

    fn tag(&mut self, limit: usize) -> Result<(u16, u16), String> {
        let group = self.take::<2>(limit)?;
        let element = self.take::<2>(limit)?;
        Ok((self.u16(group), self.u16(element)))
    }

    /// A value of `len` bytes must end by `limit`; returns its end.
    fn value_end(&self, len: u32, limit: usize) -> Result<usize, String> {
        let end = self.pos.saturating_add(len as usize);
        if end > limit {
            return Err(format!(
                "a length of {len} at byte {} exceeds the data",
                self.pos
            ));
        }
        Ok(end)
    }

    /// Elements up to `end` (defined length), or up to an item delimiter
    /// (`None`: an item of undefined length).
    fn elements(&mut self, end: Option<usize>, depth: usize) -> Result<(), String> {
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
                return Err(format!("unexpected ({:04X},{:04X})", tag.0, tag.1));
            }
            let (vr, len) = if self.explicit {
                let vr = VR::from_binary(self.take::<2>(limit)?)
                    .ok_or_else(|| format!("bad VR at byte {}", self.pos - 2))?;
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
                (dictionary_vr(Tag(tag.0, tag.1)), self.u32(len))
            };
            if len == UNDEFINED {
                if self.explicit && vr != VR::SQ {
                    return Err(format!("undefined length on {vr:?}"));
                }
                self.sequence(None, depth + 1)?;
            } else {
                let value_end = self.value_end(len, limit)?;
                if vr == VR::SQ {
                    self.sequence(Some(value_end), depth + 1)?;
                } else {
                    self.pos = value_end;
                }
            }
        }
    }

    /// Items up to `end`, or up to a sequence delimiter (`None`).
    fn sequence(&mut self, end: Option<usize>, depth: usize) -> Result<(), String> {
        if depth > MAX_NESTING {
            return Err(format!("sequences nested deeper than {MAX_NESTING}"));
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
                _ => {
                    return Err(format!(
                        "unexpected ({:04X},{:04X}) in a sequence",
                        tag.0, tag.1
                    ))
                }
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

fn has_wildcard(value: &str) -> bool {
    value.contains(['*', '?'])
}

/// The matcher of one key; the flag says a value was ignored (count
/// attributes are return-only).
fn matcher_for(attribute: Attribute, values: &[String]) -> Result<(Matcher, bool), QueryKeyError> {
    let bad = |value: &str, reason: &'static str| QueryKeyError::BadValue {
        attribute,
        value: value.chars().take(32).collect(),
        reason,
    };
    let kind = attribute.kind();
    let non_empty: Vec<&String> = values.iter().filter(|v| !v.is_empty()).collect();
    if non_empty.is_empty() {
        return Ok((Matcher::Universal, false));
    }
    if kind == Kind::Count {
        return Ok((Matcher::Universal, true));
    }
    if non_empty.len() > MAX_LIST_VALUES {
        return Err(bad(non_empty[0], "a list of more than 4096 values"));
    }
    const _: () = assert!(MAX_LIST_VALUES == 4096, "keep the message above in step");
    if non_empty.len() > 1 {
        for value in &non_empty {
            match kind {
                Kind::Text | Kind::PersonName if has_wildcard(value) => {
                    return Err(bad(value, "wildcard in a list"));
                }
                Kind::Date => check_date(value).map_err(|r| bad(value, r))?,
                Kind::Time => check_time(value).map_err(|r| bad(value, r))?,
                Kind::Integer => check_integer(value).map_err(|r| bad(value, r))?,
                _ => {}
            }
        }
        let list = non_empty.into_iter().cloned().collect();
        return Ok((Matcher::List(list), false));
    }
    let value = non_empty[0].as_str();
    // `*` alone is universal matching (PS3.4 C.2.2.2.4), for every VR:
    // unlike a wildcard it also matches entities without a value.
    if value.chars().all(|c| c == '*') {
        return Ok((Matcher::Universal, false));
    }
    let matcher = match kind {
        Kind::Text | Kind::PersonName if has_wildcard(value) => Matcher::Wildcard(value.into()),
        Kind::Text | Kind::PersonName | Kind::Uid => Matcher::Single(value.into()),
        Kind::Integer => {
            check_integer(value).map_err(|r| bad(value, r))?;
            Matcher::Single(value.into())
        }
        Kind::Date | Kind::Time => {
            let check = if kind == Kind::Date {
                check_date
            } else {
                check_time
            };
            match value.split_once('-') {
                None => {
                    check(value).map_err(|r| bad(value, r))?;
                    Matcher::Single(value.into())
                }
                Some((from, to)) => {
                    let (from, to) = (trim(from), trim(to));
                    if from.is_empty() && to.is_empty() {
                        Matcher::Universal
                    } else {
                        let bound = |b: &str| -> Result<Option<String>, QueryKeyError> {
                            if b.is_empty() {
                                return Ok(None);
                            }
                            check(b).map_err(|r| bad(value, r))?;
                            Ok(Some(b.to_string()))
                        };
                        Matcher::Range {
                            from: bound(from)?,
                            to: bound(to)?,
                        }
                    }
                }
            }
        }
        Kind::Count => unreachable!("count attributes returned above"),
    };
    Ok((matcher, false))
}

/// DA: `YYYYMMDD` with a plausible month and day.
fn check_date(value: &str) -> Result<(), &'static str> {
    let digits = value.len() == 8 && value.bytes().all(|b| b.is_ascii_digit());
    if !digits {
        return Err("not a date YYYYMMDD or range");
    }
    let month: u32 = value[4..6].parse().unwrap_or(0);
    let day: u32 = value[6..8].parse().unwrap_or(0);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return Err("not a valid date");
    }
    Ok(())
}

/// TM: `HH[MM[SS[.F{1,6}]]]`.
fn check_time(value: &str) -> Result<(), &'static str> {
    const BAD: &str = "not a time HHMMSS.FFFFFF or range";
    let (whole, fraction) = match value.split_once('.') {
        Some((whole, fraction)) => (whole, Some(fraction)),
        None => (value, None),
    };
    if !matches!(whole.len(), 2 | 4 | 6) || !whole.bytes().all(|b| b.is_ascii_digit()) {
        return Err(BAD);
    }
    if let Some(fraction) = fraction {
        let ok = whole.len() == 6
            && (1..=6).contains(&fraction.len())
            && fraction.bytes().all(|b| b.is_ascii_digit());
        if !ok {
            return Err(BAD);
        }
    }
    let part = |i: usize| whole.get(i..i + 2).map(|p| p.parse::<u32>().unwrap_or(99));
    let in_range = part(0).is_none_or(|h| h < 24)
        && part(2).is_none_or(|m| m < 60)
        && part(4).is_none_or(|s| s < 61);
    if !in_range {
        return Err("not a valid time");
    }
    Ok(())
}

/// IS: an optionally signed integer.
fn check_integer(value: &str) -> Result<(), &'static str> {
    let digits = value.strip_prefix(['+', '-']).unwrap_or(value);
    if digits.is_empty() || digits.len() > 11 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err("not an integer");
    }
    Ok(())
}

/// Whether text of this VR is encoded in the Specific Character Set (the
/// others always use the default repertoire).
fn uses_character_set(vr: VR) -> bool {
    matches!(
        vr,
        VR::SH | VR::LO | VR::ST | VR::LT | VR::PN | VR::UC | VR::UT
    )
}

/// The VR of an attribute in the standard dictionary.
fn dictionary_vr(tag: Tag) -> VR {
    StandardDataDictionary
        .by_tag(tag)
        .map(|entry| entry.vr().relaxed())
        .unwrap_or(VR::UN)
}

/// The Specific Character Set of a response holding `texts`.
fn response_character_set(request: Option<&str>, texts: &[&str]) -> Option<String> {
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

fn empty_element(tag: Tag, vr: VR) -> DataElement<InMemDicomObject> {
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
/// See the module documentation for its content.
pub fn encode_response(
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

#[cfg(test)]
mod tests {
    use super::*;
    use dicom_dictionary_std::uids;

    const EXPLICIT_LE: &str = uids::EXPLICIT_VR_LITTLE_ENDIAN;
    const IMPLICIT_LE: &str = uids::IMPLICIT_VR_LITTLE_ENDIAN;
    const DEFLATED: &str = uids::DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN;
    /// Explicit VR Big Endian (retired, still negotiable).
    const EXPLICIT_BE: &str = "1.2.840.10008.1.2.2";
    const PARTITION: PartitionId = PartitionId(7);
    const OUR_AE: &str = "IMAGESERVER";
    const STUDY_UID: &str = "1.2.3";
    const SERIES_UID: &str = "1.2.3.4";

    fn tag_of(attribute: Attribute) -> Tag {
        let (group, element) = attribute.tag();
        Tag(group, element)
    }

    /// An identifier holding `elements` (VR, value; `SQ` gives an empty
    /// sequence), encoded in `ts`.
    fn identifier(ts: &str, elements: &[(Tag, VR, &str)]) -> Vec<u8> {
        let mut object = InMemDicomObject::new_empty();
        for &(tag, vr, value) in elements {
            object.put(if value.is_empty() {
                empty_element(tag, vr)
            } else {
                DataElement::new(tag, vr, PrimitiveValue::from(value))
            });
        }
        let mut bytes = Vec::new();
        object
            .write_dataset_with_ts(&mut bytes, transfer_syntax(ts).unwrap())
            .unwrap();
        bytes
    }

    fn options() -> ParseOptions<'static> {
        ParseOptions {
            pn_case_insensitive: true,
            limit: Some(11),
            retrieve_ae_title: OUR_AE,
        }
    }

    /// Parses an Explicit VR LE identifier at `level` in `root` holding
    /// `elements` besides QueryRetrieveLevel.
    fn parse(
        root: Root,
        level: &str,
        elements: &[(Tag, VR, &str)],
    ) -> Result<ParsedQuery, QueryKeyError> {
        let mut all = vec![(tags::QUERY_RETRIEVE_LEVEL, VR::CS, level)];
        all.extend_from_slice(elements);
        parse_identifier(
            &identifier(EXPLICIT_LE, &all),
            EXPLICIT_LE,
            root,
            PARTITION,
            &options(),
        )
    }

    /// The matcher `value` gives `attribute` in a Study Root query at the
    /// attribute's level (with the unique keys above it), and whether the
    /// value was ignored.
    fn matcher(attribute: Attribute, value: &str) -> Result<(Matcher, bool), QueryKeyError> {
        let vr = dictionary_vr(tag_of(attribute));
        let level = attribute.level_in(Root::Study);
        let mut elements = Vec::new();
        if level >= Level::Series && attribute != Attribute::StudyInstanceUid {
            elements.push((tag_of(Attribute::StudyInstanceUid), VR::UI, STUDY_UID));
        }
        if level >= Level::Image && attribute != Attribute::SeriesInstanceUid {
            elements.push((tag_of(Attribute::SeriesInstanceUid), VR::UI, SERIES_UID));
        }
        elements.push((tag_of(attribute), vr, value));
        elements.sort_by_key(|e| e.0);
        let parsed = parse(Root::Study, level.code(), &elements)?;
        let key = parsed
            .query
            .keys
            .iter()
            .find(|k| k.attribute == attribute)
            .expect("the key is in the query");
        Ok((key.matcher.clone(), parsed.optional_keys_unsupported()))
    }

    fn single(v: &str) -> Matcher {
        Matcher::Single(v.to_string())
    }

    fn wildcard(v: &str) -> Matcher {
        Matcher::Wildcard(v.to_string())
    }

    fn list(values: &[&str]) -> Matcher {
        Matcher::List(values.iter().map(|v| v.to_string()).collect())
    }

    fn range(from: Option<&str>, to: Option<&str>) -> Matcher {
        Matcher::Range {
            from: from.map(str::to_string),
            to: to.map(str::to_string),
        }
    }

    #[test]
    fn matcher_forms_per_vr() {
        use Attribute as A;
        use Matcher::Universal;
        // (attribute, request value, expected matcher or None for C000)
        let cases: Vec<(Attribute, &str, Option<Matcher>)> = vec![
            // PN
            (A::PatientName, "", Some(Universal)),
            (A::PatientName, "*", Some(Universal)),
            (A::PatientName, "**", Some(Universal)),
            (A::PatientName, "Doe^John", Some(single("Doe^John"))),
            (A::PatientName, "  Doe^John ", Some(single("Doe^John"))),
            (A::PatientName, "Doe*", Some(wildcard("Doe*"))),
            (A::PatientName, "D?e^*n", Some(wildcard("D?e^*n"))),
            (A::PatientName, "Doe\\Roe", Some(list(&["Doe", "Roe"]))),
            (A::PatientName, "Doe*\\Roe", None),
            // LO, SH, CS
            (A::PatientId, "PID1", Some(single("PID1"))),
            (A::PatientId, "PID*", Some(wildcard("PID*"))),
            (A::AccessionNumber, "A?C", Some(wildcard("A?C"))),
            (A::PatientSex, "F\\M", Some(list(&["F", "M"]))),
            (A::ModalitiesInStudy, "CT", Some(single("CT"))),
            (A::ModalitiesInStudy, "CT\\MR", Some(list(&["CT", "MR"]))),
            (A::ModalitiesInStudy, "C*", Some(wildcard("C*"))),
            (A::ModalitiesInStudy, "CT\\", Some(single("CT"))),
            // DA
            (A::StudyDate, "20200131", Some(single("20200131"))),
            (
                A::StudyDate,
                "20200101-20201231",
                Some(range(Some("20200101"), Some("20201231"))),
            ),
            (
                A::StudyDate,
                "20200101-",
                Some(range(Some("20200101"), None)),
            ),
            (
                A::StudyDate,
                "-20201231",
                Some(range(None, Some("20201231"))),
            ),
            (A::StudyDate, "-", Some(Universal)),
            (A::StudyDate, "*", Some(Universal)),
            (
                A::StudyDate,
                "20200101\\20200102",
                Some(list(&["20200101", "20200102"])),
            ),
            (A::StudyDate, "2020*", None),
            (A::StudyDate, "2020-01-01", None),
            (A::StudyDate, "20201301", None),
            (A::PatientBirthDate, "19700101", Some(single("19700101"))),
            (
                A::SeriesDate,
                "-20000101",
                Some(range(None, Some("20000101"))),
            ),
            // TM
            (A::StudyTime, "1015", Some(single("1015"))),
            (A::StudyTime, "101500.123", Some(single("101500.123"))),
            (
                A::StudyTime,
                "080000-120000",
                Some(range(Some("080000"), Some("120000"))),
            ),
            (A::StudyTime, "08-", Some(range(Some("08"), None))),
            (A::SeriesTime, "-0930", Some(range(None, Some("0930")))),
            (A::StudyTime, "25", None),
            (A::StudyTime, "1015.5", None),
            (A::StudyTime, "10:15", None),
            // UI: no wildcards, lists
            (A::StudyInstanceUid, "1.2.3", Some(single("1.2.3"))),
            (
                A::StudyInstanceUid,
                "1.2.3\\1.2.4",
                Some(list(&["1.2.3", "1.2.4"])),
            ),
            (A::StudyInstanceUid, "1.2.*", Some(single("1.2.*"))),
            (A::StudyInstanceUid, "*", Some(Universal)),
            (
                A::SopClassUid,
                "1.2.840.10008.5.1.4.1.1.2",
                Some(single("1.2.840.10008.5.1.4.1.1.2")),
            ),
            (
                A::SopClassesInStudy,
                "1.2\\1.3",
                Some(list(&["1.2", "1.3"])),
            ),
            // IS
            (A::SeriesNumber, "3", Some(single("3"))),
            (A::InstanceNumber, "-2", Some(single("-2"))),
            (A::SeriesNumber, "1\\2", Some(list(&["1", "2"]))),
            (A::SeriesNumber, "x", None),
            (A::SeriesNumber, "1*", None),
            // Counts: return only
            (A::NumberOfStudyRelatedInstances, "", Some(Universal)),
            (A::NumberOfSeriesRelatedInstances, "5", Some(Universal)),
        ];
        for (attribute, value, expected) in cases {
            let got = matcher(attribute, value);
            match (expected, got) {
                (Some(expected), Ok((matcher, _))) => {
                    assert_eq!(matcher, expected, "{} {value:?}", attribute.keyword())
                }
                (None, Err(error)) => {
                    assert_eq!(
                        error.status(),
                        Status::UNABLE_TO_PROCESS,
                        "{} {value:?}: {error}",
                        attribute.keyword()
                    );
                    assert_eq!(
                        error.offending_element(),
                        Some((u32::from(attribute.tag().0) << 16) | u32::from(attribute.tag().1))
                    );
                }
                (expected, got) => panic!(
                    "{} {value:?}: expected {expected:?}, got {got:?}",
                    attribute.keyword()
                ),
            }
        }
        // A value on a count is ignored and warned about (FF01).
        assert!(
            matcher(Attribute::NumberOfStudyRelatedSeries, "2")
                .unwrap()
                .1
        );
        assert!(
            !matcher(Attribute::NumberOfStudyRelatedSeries, "")
                .unwrap()
                .1
        );
        assert!(!matcher(Attribute::PatientName, "A*").unwrap().1);

        // Lists are capped: 4096 values match, one more is C000.
        let uids = |n: usize| {
            (0..n)
                .map(|i| format!("1.2.{i}"))
                .collect::<Vec<_>>()
                .join("\\")
        };
        let (longest, _) = matcher(Attribute::SopInstanceUid, &uids(MAX_LIST_VALUES)).unwrap();
        assert!(matches!(longest, Matcher::List(values) if values.len() == MAX_LIST_VALUES));
        let error = matcher(Attribute::SopInstanceUid, &uids(MAX_LIST_VALUES + 1)).unwrap_err();
        assert_eq!(error.status(), Status::UNABLE_TO_PROCESS);
        assert!(error.to_string().contains("more than 4096"), "{error}");
    }

    #[test]
    fn hierarchy_rules() {
        use Attribute as A;
        let pid = (tag_of(A::PatientId), VR::LO, "PID1");
        let pid_wild = (tag_of(A::PatientId), VR::LO, "PID*");
        let pname = (tag_of(A::PatientName), VR::PN, "Doe*");
        let study = (tag_of(A::StudyInstanceUid), VR::UI, STUDY_UID);
        let studies = (tag_of(A::StudyInstanceUid), VR::UI, "1.2.3\\1.2.5");
        let series = (tag_of(A::SeriesInstanceUid), VR::UI, SERIES_UID);
        let seriess = (tag_of(A::SeriesInstanceUid), VR::UI, "1.2.3.4\\1.2.3.5");
        let sops = (tag_of(A::SopInstanceUid), VR::UI, "1.2.3.4.5\\1.2.3.4.6");
        let modality = (tag_of(A::Modality), VR::CS, "CT");
        let sop_class = (tag_of(A::SopClassUid), VR::UI, "");
        let a900 = Some(Status::IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS);
        type Case<'a> = (
            Root,
            &'a str,
            Vec<(Tag, VR, &'a str)>,
            Option<Status>,
            Option<Attribute>,
        );
        let cases: Vec<Case> = vec![
            // Patient Root
            (Root::Patient, "PATIENT", vec![pname], None, None),
            (Root::Patient, "PATIENT", vec![pid_wild], None, None),
            (Root::Patient, "STUDY", vec![], a900, Some(A::PatientId)),
            (
                Root::Patient,
                "STUDY",
                vec![pid_wild],
                a900,
                Some(A::PatientId),
            ),
            (Root::Patient, "STUDY", vec![pid], None, None),
            (
                Root::Patient,
                "STUDY",
                vec![pname, pid, studies],
                None,
                None,
            ),
            (
                Root::Patient,
                "SERIES",
                vec![pid],
                a900,
                Some(A::StudyInstanceUid),
            ),
            (
                Root::Patient,
                "SERIES",
                vec![pid, studies],
                a900,
                Some(A::StudyInstanceUid),
            ),
            (
                Root::Patient,
                "SERIES",
                vec![pid, study, seriess],
                None,
                None,
            ),
            (
                Root::Patient,
                "IMAGE",
                vec![pid, study],
                a900,
                Some(A::SeriesInstanceUid),
            ),
            (
                Root::Patient,
                "IMAGE",
                vec![pid, study, seriess],
                a900,
                Some(A::SeriesInstanceUid),
            ),
            (
                Root::Patient,
                "IMAGE",
                vec![study, series],
                a900,
                Some(A::PatientId),
            ),
            (
                Root::Patient,
                "IMAGE",
                vec![sop_class, pid, study, series, sops],
                None,
                None,
            ),
            (
                Root::Patient,
                "PATIENT",
                vec![study],
                a900,
                Some(A::StudyInstanceUid),
            ),
            (
                Root::Patient,
                "STUDY",
                vec![modality, pid],
                a900,
                Some(A::Modality),
            ),
            // Study Root
            (Root::Study, "PATIENT", vec![pid], a900, None),
            (Root::Study, "STUDY", vec![], None, None),
            (
                Root::Study,
                "STUDY",
                vec![pname, pid_wild, studies],
                None,
                None,
            ),
            (
                Root::Study,
                "STUDY",
                vec![modality],
                a900,
                Some(A::Modality),
            ),
            (
                Root::Study,
                "STUDY",
                vec![sop_class],
                a900,
                Some(A::SopClassUid),
            ),
            (
                Root::Study,
                "SERIES",
                vec![],
                a900,
                Some(A::StudyInstanceUid),
            ),
            (
                Root::Study,
                "SERIES",
                vec![studies],
                a900,
                Some(A::StudyInstanceUid),
            ),
            (
                Root::Study,
                "SERIES",
                vec![pname, study, modality],
                None,
                None,
            ),
            (
                Root::Study,
                "IMAGE",
                vec![study],
                a900,
                Some(A::SeriesInstanceUid),
            ),
            (Root::Study, "IMAGE", vec![study, series, sops], None, None),
            (Root::Study, "SERIES ", vec![study], None, None),
            (Root::Study, "", vec![study], a900, None),
            (Root::Study, "FRAME", vec![study], a900, None),
            (Root::Study, "study", vec![], a900, None),
        ];
        for (root, level, mut elements, status, offending) in cases {
            elements.sort_by_key(|e| e.0);
            let result = parse(root, level, &elements);
            let what = format!("{root:?} {level:?} {elements:?}");
            match (status, result) {
                (None, Ok(parsed)) => {
                    assert_eq!(parsed.query.level.code(), level.trim(), "{what}");
                    assert_eq!(parsed.query.root, root);
                    assert_eq!(parsed.query.partition, PARTITION);
                    assert!(parsed.query.pn_case_insensitive);
                    assert_eq!(parsed.query.limit, Some(11));
                    assert_eq!(parsed.query.keys.len(), elements.len(), "{what}");
                }
                (Some(status), Err(error)) => {
                    assert_eq!(error.status(), status, "{what}: {error}");
                    let tag = offending
                        .map(|a| (u32::from(a.tag().0) << 16) | u32::from(a.tag().1))
                        .unwrap_or(0x0008_0052);
                    assert_eq!(error.offending_element(), Some(tag), "{what}: {error}");
                    assert!(error.to_string().len() <= 64, "{error}");
                }
                (status, result) => panic!("{what}: expected {status:?}, got {result:?}"),
            }
        }
        // No QueryRetrieveLevel at all.
        let bytes = identifier(EXPLICIT_LE, &[study]);
        let error =
            parse_identifier(&bytes, EXPLICIT_LE, Root::Study, PARTITION, &options()).unwrap_err();
        assert_eq!(error, QueryKeyError::MissingLevel);
        assert_eq!(error.status(), Status::IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS);
        // Garbage and unknown transfer syntaxes: unable to process.
        let error = parse_identifier(
            &[0x08, 0x00, 0x52, 0x00, 0xFF, 0xFF, 0xFF, 0x7F, 1],
            IMPLICIT_LE,
            Root::Study,
            PARTITION,
            &options(),
        )
        .unwrap_err();
        assert_eq!(error.status(), Status::UNABLE_TO_PROCESS, "{error}");
        let error =
            parse_identifier(&bytes, "1.2.3.4.5", Root::Study, PARTITION, &options()).unwrap_err();
        assert_eq!(error, QueryKeyError::TransferSyntax("1.2.3.4.5".into()));
        assert_eq!(error.status(), Status::UNABLE_TO_PROCESS);
    }

    #[test]
    fn hostile_identifiers_are_refused_before_decoding() {
        // (0008,0052) QueryRetrieveLevel "STUDY " in Implicit VR LE.
        let level = || -> Vec<u8> {
            let mut b = vec![0x08, 0x00, 0x52, 0x00, 6, 0, 0, 0];
            b.extend(b"STUDY ");
            b
        };
        // (0010,0010) claiming 2 GiB - 1, then one byte.
        let mut implicit_huge = level();
        implicit_huge.extend([0x10, 0x00, 0x10, 0x00, 0xFF, 0xFF, 0xFF, 0x7F, 1]);
        let mut explicit_huge = Vec::new();
        explicit_huge.extend([0x08, 0x00, 0x52, 0x00, b'C', b'S', 6, 0]);
        explicit_huge.extend(b"STUDY ");
        explicit_huge.extend([
            0x09, 0x00, 0x10, 0x10, b'U', b'N', 0, 0, 0xFF, 0xFF, 0xFF, 0x7F,
        ]);
        let mut big_huge = vec![0x00, 0x08, 0x00, 0x52, b'C', b'S', 0, 6];
        big_huge.extend(b"STUDY ");
        big_huge.extend([0x00, 0x10, 0x00, 0x10, b'P', b'N', 0xFF, 0xF0]);
        // A sequence whose item claims more than the sequence holds.
        let mut item_too_long = level();
        item_too_long.extend([0x08, 0x00, 0x10, 0x11, 16, 0, 0, 0]);
        item_too_long.extend([0xFE, 0xFF, 0x00, 0xE0, 0xFF, 0xFF, 0xFF, 0x00]);
        item_too_long.extend([0; 8]);
        // Sequences of undefined length nested `depth` deep.
        let nested = |depth: usize| {
            let mut b = level();
            for _ in 0..depth {
                b.extend([0x08, 0x00, 0x10, 0x11, 0xFF, 0xFF, 0xFF, 0xFF]);
                b.extend([0xFE, 0xFF, 0x00, 0xE0, 0xFF, 0xFF, 0xFF, 0xFF]);
            }
            for _ in 0..depth {
                b.extend([0xFE, 0xFF, 0x0D, 0xE0, 0, 0, 0, 0]);
                b.extend([0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]);
            }
            b
        };
        let mut truncated = level();
        truncated.extend([0x10, 0x00, 0x10]);
        // Deflated: a small stream inflating to 5 MiB.
        let mut bomb = Vec::new();
        {
            let Codec::Dataset(Some(adapter)) = transfer_syntax(DEFLATED).unwrap().codec() else {
                panic!("deflate is built in");
            };
            let mut writer = adapter.adapt_writer(Box::new(&mut bomb));
            std::io::Write::write_all(&mut writer, &vec![0u8; 5 << 20]).unwrap();
        }
        assert!(bomb.len() < 64 << 10);

        // (bytes, transfer syntax, expected error text or None for success)
        let cases: Vec<(Vec<u8>, &str, Option<&str>)> = vec![
            (implicit_huge, IMPLICIT_LE, Some("exceeds the data")),
            (explicit_huge, EXPLICIT_LE, Some("exceeds the data")),
            (big_huge, EXPLICIT_BE, Some("exceeds the data")),
            (item_too_long, IMPLICIT_LE, Some("exceeds the data")),
            (truncated, IMPLICIT_LE, Some("truncated")),
            (nested(3), IMPLICIT_LE, None),
            (nested(MAX_NESTING), IMPLICIT_LE, None),
            (nested(MAX_NESTING + 1), IMPLICIT_LE, Some("nested deeper")),
            (nested(100_000), IMPLICIT_LE, Some("nested deeper")),
            (bomb, DEFLATED, Some("inflates to more than")),
        ];
        for (bytes, ts, expected) in cases {
            let result = parse_identifier(&bytes, ts, Root::Study, PARTITION, &options());
            match (expected, result) {
                (None, Ok(parsed)) => {
                    assert_eq!(parsed.unsupported(), vec![Tag(0x0008, 0x1110)]);
                }
                (Some(text), Err(error)) => {
                    assert_eq!(error.status(), Status::UNABLE_TO_PROCESS, "{error}");
                    assert!(error.to_string().contains(text), "{error}");
                }
                (expected, result) => panic!("{ts}: expected {expected:?}, got {result:?}"),
            }
        }
    }

    /// Reads a response back.
    fn read(bytes: &[u8], ts: &str) -> InMemDicomObject {
        InMemDicomObject::read_dataset_with_ts(bytes, transfer_syntax(ts).unwrap()).unwrap()
    }

    fn text(object: &InMemDicomObject, tag: Tag) -> Option<String> {
        object.element_opt(tag).unwrap().map(|e| {
            e.to_str()
                .unwrap()
                .trim_end_matches([' ', '\0'])
                .to_string()
        })
    }

    #[test]
    fn unsupported_keys_are_returned_empty() {
        let instance_availability = Tag(0x0008, 0x0056);
        let referenced_studies = Tag(0x0008, 0x1110);
        let private = Tag(0x0009, 0x1001);
        let elements = [
            (instance_availability, VR::CS, ""),
            (tags::RETRIEVE_AE_TITLE, VR::AE, ""),
            (referenced_studies, VR::SQ, ""),
            (Tag(0x0009, 0x0010), VR::LO, "ACME"),
            (private, VR::LO, "x"),
            (tag_of(Attribute::PatientName), VR::PN, ""),
            (tag_of(Attribute::StudyInstanceUid), VR::UI, STUDY_UID),
        ];
        for ts in [EXPLICIT_LE, IMPLICIT_LE] {
            let mut all = vec![(tags::QUERY_RETRIEVE_LEVEL, VR::CS, "SERIES")];
            all.extend_from_slice(&elements);
            let parsed = parse_identifier(
                &identifier(ts, &all),
                ts,
                Root::Study,
                PARTITION,
                &options(),
            )
            .unwrap();
            assert_eq!(
                parsed.unsupported(),
                vec![
                    instance_availability,
                    referenced_studies,
                    Tag(0x0009, 0x0010),
                    private
                ],
                "{ts}"
            );
            assert!(parsed.optional_keys_unsupported());
            assert_eq!(parsed.query.keys.len(), 2);

            let found = Match {
                values: vec![
                    (Attribute::PatientName, Some("Doe^John".into())),
                    (Attribute::StudyInstanceUid, Some(STUDY_UID.into())),
                    (Attribute::SeriesInstanceUid, Some(SERIES_UID.into())),
                ],
            };
            let response = read(&encode_response(&parsed, &found, ts).unwrap(), ts);
            assert_eq!(
                text(&response, tags::QUERY_RETRIEVE_LEVEL).unwrap(),
                "SERIES"
            );
            assert_eq!(text(&response, tags::RETRIEVE_AE_TITLE).unwrap(), OUR_AE);
            assert_eq!(
                text(&response, tag_of(Attribute::PatientName)).unwrap(),
                "Doe^John"
            );
            // The series UID was not asked for: it is the level's unique key.
            assert_eq!(
                text(&response, tag_of(Attribute::SeriesInstanceUid)).unwrap(),
                SERIES_UID
            );
            for tag in parsed.unsupported() {
                let element = response.element(tag).unwrap();
                match element.items() {
                    // An empty sequence (its length may be undefined).
                    Some(items) => assert!(items.is_empty(), "{tag} in {ts}"),
                    None => assert_eq!(element.header().len.0, 0, "{tag} in {ts}"),
                }
            }
            if ts == EXPLICIT_LE {
                assert_eq!(response.element(referenced_studies).unwrap().vr(), VR::SQ);
            }
            assert!(response
                .element_opt(tags::SPECIFIC_CHARACTER_SET)
                .unwrap()
                .is_none());
            assert!(response
                .element_opt(tag_of(Attribute::PatientId))
                .unwrap()
                .is_none());
        }
    }

    #[test]
    fn responses_round_trip_in_every_transfer_syntax() {
        use Attribute as A;
        let elements = [
            (tag_of(A::StudyDate), VR::DA, "20200101-"),
            (tag_of(A::StudyTime), VR::TM, ""),
            (tag_of(A::AccessionNumber), VR::SH, ""),
            (tag_of(A::ModalitiesInStudy), VR::CS, "CT\\MR"),
            (tag_of(A::SopClassesInStudy), VR::UI, ""),
            (tag_of(A::ReferringPhysicianName), VR::PN, ""),
            (tag_of(A::PatientName), VR::PN, ""),
            (tag_of(A::PatientId), VR::LO, ""),
            (tag_of(A::PatientBirthDate), VR::DA, ""),
            (tag_of(A::NumberOfPatientRelatedStudies), VR::IS, ""),
            (tag_of(A::StudyInstanceUid), VR::UI, ""),
            (tag_of(A::NumberOfStudyRelatedSeries), VR::IS, ""),
            (tag_of(A::NumberOfStudyRelatedInstances), VR::IS, ""),
        ];
        let found = Match {
            values: vec![
                (A::StudyDate, Some("20200105".into())),
                (A::StudyTime, Some("101500".into())),
                (A::AccessionNumber, None),
                (A::ModalitiesInStudy, Some("CT\\MR".into())),
                (
                    A::SopClassesInStudy,
                    Some("1.2.840.10008.5.1.4.1.1.2".into()),
                ),
                (A::ReferringPhysicianName, None),
                (A::PatientName, Some("Doe^John".into())),
                (A::PatientId, Some("PID1".into())),
                (A::PatientBirthDate, Some("19700101".into())),
                (A::NumberOfPatientRelatedStudies, Some("2".into())),
                (A::StudyInstanceUid, Some("1.2.345".into())),
                (A::NumberOfStudyRelatedSeries, Some("3".into())),
                (A::NumberOfStudyRelatedInstances, Some("12".into())),
            ],
        };
        for ts in [EXPLICIT_LE, IMPLICIT_LE, DEFLATED, EXPLICIT_BE] {
            let mut all = vec![(tags::QUERY_RETRIEVE_LEVEL, VR::CS, "STUDY")];
            all.extend_from_slice(&elements);
            all.sort_by_key(|e| e.0);
            let bytes = identifier(ts, &all);
            let parsed = parse_identifier(&bytes, ts, Root::Study, PARTITION, &options()).unwrap();
            assert!(!parsed.optional_keys_unsupported());
            assert_eq!(parsed.query.keys.len(), elements.len());
            let encoded = encode_response(&parsed, &found, ts).unwrap();
            assert_eq!(encoded.len() % 2, 0, "{ts}: odd length {}", encoded.len());
            let response = read(&encoded, ts);
            // Exactly the requested keys and the level.
            let mut expected: Vec<Tag> = elements.iter().map(|e| e.0).collect();
            expected.push(tags::QUERY_RETRIEVE_LEVEL);
            expected.sort();
            let got: Vec<Tag> = response.iter().map(|e| e.header().tag).collect();
            assert_eq!(got, expected, "{ts}");
            for (attribute, value) in &found.values {
                let element = response.element(tag_of(*attribute)).unwrap();
                assert_eq!(element.vr(), dictionary_vr(tag_of(*attribute)), "{ts}");
                match value {
                    Some(value) => {
                        let values = element.value().to_multi_str().unwrap().join("\\");
                        assert_eq!(values.trim_end_matches([' ', '\0']), value, "{ts}");
                    }
                    None => assert_eq!(element.header().len.0, 0, "{ts}"),
                }
            }
            let modalities = response.element(tag_of(A::ModalitiesInStudy)).unwrap();
            assert_eq!(modalities.value().multiplicity(), 2);
        }
    }

    #[test]
    fn character_sets() {
        let name = tag_of(Attribute::PatientName);
        // (request charset, request name, expected matcher value, stored
        // name, expected response charset, expected name bytes)
        type Case<'a> = (
            Option<&'a str>,
            &'a str,
            &'a str,
            &'a str,
            Option<&'a str>,
            &'a [u8],
        );
        let cases: &[Case] = &[
            (
                Some("ISO_IR 100"),
                "Müller*",
                "Müller*",
                "Müller^Hans",
                Some("ISO_IR 100"),
                b"M\xFCller^Hans",
            ),
            (
                Some("ISO_IR 192"),
                "Müller*",
                "Müller*",
                "Müller^Hans",
                Some("ISO_IR 192"),
                "Müller^Hans".as_bytes(),
            ),
            (
                None,
                "M*",
                "M*",
                "Müller^Hans",
                Some("ISO_IR 192"),
                "Müller^Hans".as_bytes(),
            ),
            // Not in Latin-1: UTF-8 whatever the request asked for.
            (
                Some("ISO_IR 100"),
                "Z*",
                "Z*",
                "Żółć^Jan",
                Some("ISO_IR 192"),
                "Żółć^Jan".as_bytes(),
            ),
            // ASCII: the request's character set is echoed, or none.
            (
                Some("ISO_IR 100"),
                "Doe*",
                "Doe*",
                "Doe^John",
                Some("ISO_IR 100"),
                b"Doe^John",
            ),
            (
                Some("ISO_IR 192"),
                "Doe*",
                "Doe*",
                "Doe^John",
                Some("ISO_IR 192"),
                b"Doe^John",
            ),
            (None, "Doe*", "Doe*", "Doe^John", None, b"Doe^John"),
            // A request in an ISO 2022 Latin-1 that dicom-encoding can read.
            (
                Some("ISO 2022 IR 100"),
                "Mü*",
                "Mü*",
                "Müller^Hans",
                Some("ISO_IR 100"),
                b"M\xFCller^Hans",
            ),
        ];
        for &(request_cs, request_name, matched, stored, response_cs, name_bytes) in cases {
            for ts in [EXPLICIT_LE, IMPLICIT_LE] {
                let what = format!("{request_cs:?} {request_name} {stored} {ts}");
                let mut elements = vec![(tags::QUERY_RETRIEVE_LEVEL, VR::CS, "STUDY")];
                if let Some(cs) = request_cs {
                    elements.insert(0, (tags::SPECIFIC_CHARACTER_SET, VR::CS, cs));
                }
                elements.push((name, VR::PN, request_name));
                let bytes = identifier(ts, &elements);
                if request_cs == Some("ISO_IR 100") && request_name.contains('ü') {
                    // The request really is Latin-1 on the wire.
                    assert!(bytes.windows(2).any(|w| w == b"M\xFC"), "{what}");
                }
                let parsed =
                    parse_identifier(&bytes, ts, Root::Study, PARTITION, &options()).unwrap();
                assert_eq!(parsed.specific_character_set(), request_cs, "{what}");
                assert_eq!(parsed.query.keys[0].matcher, wildcard(matched), "{what}");
                let found = Match {
                    values: vec![
                        (Attribute::PatientName, Some(stored.into())),
                        (Attribute::StudyInstanceUid, Some(STUDY_UID.into())),
                    ],
                };
                let encoded = encode_response(&parsed, &found, ts).unwrap();
                assert!(
                    encoded.windows(name_bytes.len()).any(|w| w == name_bytes),
                    "{what}: name bytes not found in {encoded:X?}"
                );
                let response = read(&encoded, ts);
                assert_eq!(
                    text(&response, tags::SPECIFIC_CHARACTER_SET).as_deref(),
                    response_cs,
                    "{what}"
                );
                assert_eq!(text(&response, name).unwrap(), stored, "{what}");
            }
        }
        assert_eq!(response_character_set(Some("ISO_IR 999"), &["Doe"]), None);
        assert_eq!(
            response_character_set(Some("\\ISO 2022 IR 100"), &["Müller"]).as_deref(),
            Some("ISO_IR 100")
        );
    }
}
