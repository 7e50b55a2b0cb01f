//! The flat response encoder: a match's identifier written straight into
//! bytes, without building a data set per match.
//!
//! A [`Plan`] is made once per query: the response's elements in tag order,
//! each with its VR and where its value comes from. Per match, the
//! character set is chosen exactly as the data set path chooses it
//! ([`response_character_set`]), and every element is written with the
//! bytes dicom-object would write: Implicit or Explicit VR Little Endian
//! headers (a 4-byte length after two reserved bytes for the VRs PS3.5
//! 7.1.2 gives one), values of even length (UI padded with NUL, other text
//! with a space), text of the default repertoire with `?` for what it
//! cannot hold, other text in the response's character set, empty elements
//! of length zero (an empty sequence: undefined length and its delimiter).
//!
//! It declines (and [`super::encode_response`] takes the data set path)
//! when the output might differ or the case is rare: a transfer syntax
//! other than Implicit or Explicit VR Little Endian (deflated, big endian,
//! encapsulated), a character set echoed from the request in which ASCII
//! may not be itself, a key whose dictionary VR is not text, a value too
//! long for a 16-bit length, a character the chosen set cannot hold. The
//! unit tests encode many matches both ways and compare the bytes.

use super::charset::{dictionary_vr, response_character_set, uses_character_set};
use super::{Attribute, Match, ParsedQuery, Requested, Tag, VR};
use dicom_dictionary_std::tags;

const IMPLICIT_VR_LITTLE_ENDIAN: &str = "1.2.840.10008.1.2";
const EXPLICIT_VR_LITTLE_ENDIAN: &str = "1.2.840.10008.1.2.1";
/// The length of a sequence ended by its delimiter.
const UNDEFINED_LENGTH: usize = 0xFFFF_FFFF;
/// (FFFE,E0DD) with a zero length, little endian.
const SEQUENCE_DELIMITER: [u8; 8] = [0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0];

/// Where a response element's value comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// Specific Character Set (0008,0005), present only when one is chosen.
    CharacterSet,
    /// QueryRetrieveLevel (0008,0052).
    Level,
    /// The match's value of the attribute (empty when it has none).
    Matched(Attribute),
    /// Our AE title.
    RetrieveAeTitle,
    /// Always zero-length.
    Empty,
}

/// One response element.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Planned {
    tag: Tag,
    vr: VR,
    source: Source,
}

/// The elements of every response of one query, in tag order, and what
/// decides the character set.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(super) struct Plan {
    elements: Vec<Planned>,
    /// The attributes whose values (when present) decide the character set:
    /// those of a VR that uses it.
    charset_attributes: Vec<Attribute>,
    /// The character set when every such value is ASCII (the request's,
    /// when the writer can encode in it).
    ascii_charset: Option<String>,
    /// ASCII is written as itself in `ascii_charset`.
    ascii_transparent: bool,
    /// Every element can be written flat.
    supported: bool,
}

/// Character sets whose encoder writes ASCII as ASCII (dicom-encoding's
/// names for them). ISO 2022 sets with escapes and the Japanese single-byte
/// set (yen sign at 5C) are left to the data set path.
fn ascii_transparent(code: &str) -> bool {
    let code = code.trim_end();
    let code = code.strip_prefix("ISO 2022 IR ").map_or_else(
        || code.replace('_', " "),
        |number| format!("ISO IR {number}"),
    );
    matches!(
        code.as_str(),
        "Default"
            | "ISO IR 6"
            | "ISO IR 100"
            | "ISO IR 101"
            | "ISO IR 109"
            | "ISO IR 110"
            | "ISO IR 126"
            | "ISO IR 127"
            | "ISO IR 138"
            | "ISO IR 144"
            | "ISO IR 148"
            | "ISO IR 192"
    )
}

/// VRs whose values the flat path writes (text the writer encodes itself).
fn text_vr(vr: VR) -> bool {
    matches!(
        vr,
        VR::AE
            | VR::AS
            | VR::CS
            | VR::DA
            | VR::DS
            | VR::DT
            | VR::IS
            | VR::TM
            | VR::UI
            | VR::SH
            | VR::LO
            | VR::ST
            | VR::LT
            | VR::PN
            | VR::UC
            | VR::UT
    )
}

/// VRs with a 16-bit length in Explicit VR (PS3.5 7.1.2).
fn short_length(vr: VR) -> bool {
    matches!(
        vr,
        VR::AE
            | VR::AS
            | VR::AT
            | VR::CS
            | VR::DA
            | VR::DS
            | VR::DT
            | VR::FL
            | VR::FD
            | VR::IS
            | VR::LO
            | VR::LT
            | VR::PN
            | VR::SH
            | VR::SL
            | VR::SS
            | VR::ST
            | VR::TM
            | VR::UI
            | VR::UL
            | VR::US
    )
}

impl Plan {
    /// The plan of `parsed`'s responses.
    pub(super) fn new(parsed: &ParsedQuery) -> Plan {
        let attributes = parsed.response_attributes();
        let mut elements = vec![
            Planned {
                tag: tags::SPECIFIC_CHARACTER_SET,
                vr: VR::CS,
                source: Source::CharacterSet,
            },
            Planned {
                tag: tags::QUERY_RETRIEVE_LEVEL,
                vr: VR::CS,
                source: Source::Level,
            },
        ];
        let mut charset_attributes = Vec::new();
        for attribute in &attributes {
            let (group, element) = attribute.tag();
            let tag = Tag(group, element);
            let vr = dictionary_vr(tag);
            if uses_character_set(vr) {
                charset_attributes.push(*attribute);
            }
            elements.push(Planned {
                tag,
                vr,
                source: Source::Matched(*attribute),
            });
        }
        for requested in &parsed.requested {
            let planned = match requested {
                Requested::RetrieveAeTitle => Planned {
                    tag: tags::RETRIEVE_AE_TITLE,
                    vr: VR::AE,
                    source: Source::RetrieveAeTitle,
                },
                Requested::Unsupported(tag, vr) => Planned {
                    tag: *tag,
                    vr: *vr,
                    source: Source::Empty,
                },
                Requested::ModalityAsModalitiesInStudy => Planned {
                    tag: tags::MODALITY,
                    vr: VR::CS,
                    source: Source::Matched(Attribute::ModalitiesInStudy),
                },
                Requested::Attribute(_) => continue,
            };
            elements.push(planned);
        }
        // In tag order; a later element replaces an earlier one of the same
        // tag, as `InMemDicomObject::put` does.
        elements.reverse();
        elements.sort_by_key(|e| e.tag);
        elements.dedup_by_key(|e| e.tag);
        let supported = elements.iter().all(|e| match e.source {
            Source::Matched(_) | Source::RetrieveAeTitle => text_vr(e.vr),
            Source::CharacterSet | Source::Level | Source::Empty => true,
        });
        let ascii_charset = response_character_set(parsed.specific_character_set(), &[]);
        Plan {
            elements,
            charset_attributes,
            ascii_transparent: ascii_charset.as_deref().is_none_or(ascii_transparent),
            ascii_charset,
            supported,
        }
    }
}

/// How the text of character-set VRs is written in one response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Text {
    /// Every such value is ASCII.
    Ascii,
    /// ISO_IR 100.
    Latin1,
    /// ISO_IR 192.
    Utf8,
}

/// The response of `found` written flat, or `None` when the data set path
/// must write it (see the module documentation).
pub(super) fn encode(
    parsed: &ParsedQuery,
    found: &Match,
    transfer_syntax_uid: &str,
) -> Option<Vec<u8>> {
    let plan = &parsed.plan;
    if !plan.supported {
        return None;
    }
    let explicit = match transfer_syntax_uid.trim_end_matches(['\0', ' ']) {
        IMPLICIT_VR_LITTLE_ENDIAN => false,
        EXPLICIT_VR_LITTLE_ENDIAN => true,
        _ => return None,
    };
    let all_ascii = plan
        .charset_attributes
        .iter()
        .filter_map(|a| found.get(*a))
        .all(str::is_ascii);
    let chosen;
    let (charset, text) = if all_ascii {
        if !plan.ascii_transparent {
            return None;
        }
        (plan.ascii_charset.as_deref(), Text::Ascii)
    } else {
        let texts: Vec<&str> = plan
            .charset_attributes
            .iter()
            .filter_map(|a| found.get(*a))
            .collect();
        chosen = response_character_set(parsed.specific_character_set(), &texts)?;
        let text = match chosen.as_str() {
            "ISO_IR 100" => Text::Latin1,
            "ISO_IR 192" => Text::Utf8,
            _ => return None,
        };
        (Some(chosen.as_str()), text)
    };

    let mut out = Writer {
        bytes: Vec::with_capacity(64 + 48 * plan.elements.len()),
        explicit,
    };
    for element in &plan.elements {
        let value = match element.source {
            Source::CharacterSet => match charset {
                Some(cs) => Some(cs),
                None => continue,
            },
            Source::Level => Some(parsed.query.level.code()),
            Source::Matched(attribute) => found.get(attribute),
            Source::RetrieveAeTitle => Some(parsed.retrieve_ae_title.as_str()),
            Source::Empty => None,
        };
        match value {
            Some(value) => out.text(element.tag, element.vr, value, text)?,
            // An empty sequence is written with an undefined length and its
            // delimiter, as dicom-object writes it.
            None if element.vr == VR::SQ => {
                out.header(element.tag, VR::SQ, UNDEFINED_LENGTH)?;
                out.bytes.extend_from_slice(&SEQUENCE_DELIMITER);
            }
            None => out.header(element.tag, element.vr, 0)?,
        }
    }
    Some(out.bytes)
}

/// Little-endian element writer.
struct Writer {
    bytes: Vec<u8>,
    explicit: bool,
}

impl Writer {
    /// An element header with a value length of `len`; `None` when the
    /// length does not fit the header.
    /// An SQ given [`UNDEFINED_LENGTH`] has it.
    fn header(&mut self, tag: Tag, vr: VR, len: usize) -> Option<()> {
        self.bytes.extend_from_slice(&tag.group().to_le_bytes());
        self.bytes.extend_from_slice(&tag.element().to_le_bytes());
        if self.explicit {
            self.bytes.extend_from_slice(&vr.to_bytes());
            if short_length(vr) {
                let len = u16::try_from(len).ok()?;
                self.bytes.extend_from_slice(&len.to_le_bytes());
                return Some(());
            }
            self.bytes.extend_from_slice(&[0, 0]);
        }
        let len = u32::try_from(len)
            .ok()
            .filter(|l| *l != u32::MAX || vr == VR::SQ)?;
        self.bytes.extend_from_slice(&len.to_le_bytes());
        Some(())
    }

    /// A text element: the value's bytes, padded to an even length.
    fn text(&mut self, tag: Tag, vr: VR, value: &str, text: Text) -> Option<()> {
        let charset = uses_character_set(vr);
        let len = if !charset || text == Text::Latin1 {
            // One byte per character.
            if value.is_ascii() {
                value.len()
            } else {
                value.chars().count()
            }
        } else {
            value.len()
        };
        let padded = len + len % 2;
        self.header(tag, vr, padded)?;
        if value.is_ascii() {
            self.bytes.extend_from_slice(value.as_bytes());
        } else if !charset {
            // The default repertoire: what it cannot hold becomes `?`.
            self.bytes.extend(
                value
                    .chars()
                    .map(|c| if c.is_ascii() { c as u8 } else { b'?' }),
            );
        } else {
            match text {
                // Only ASCII was seen when the character set was chosen.
                Text::Ascii => return None,
                Text::Utf8 => self.bytes.extend_from_slice(value.as_bytes()),
                Text::Latin1 => {
                    for c in value.chars() {
                        self.bytes.push(u8::try_from(u32::from(c)).ok()?);
                    }
                }
            }
        }
        if len % 2 == 1 {
            self.bytes.push(if vr == VR::UI { 0 } else { b' ' });
        }
        Some(())
    }
}
