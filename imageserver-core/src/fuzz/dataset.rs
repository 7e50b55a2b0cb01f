//! A generator of encoded data sets (identifiers, received data sets): a
//! tree of elements, sequences with defined or undefined lengths,
//! encapsulated pixel data, in any of the three uncompressed encodings,
//! with the places of every length field for the mutations.

use proptest::collection::vec;
use proptest::prelude::*;

use super::mutate::Encoded;

/// One element of a generated data set.
#[derive(Debug, Clone)]
pub(super) enum Node {
    /// A primitive element.
    Value {
        tag: (u16, u16),
        vr: [u8; 2],
        value: Vec<u8>,
    },
    /// A sequence of items.
    Sequence {
        tag: (u16, u16),
        items: Vec<Item>,
        undefined: bool,
    },
    /// Encapsulated Pixel Data: an offset table and fragments.
    Fragments(Vec<Vec<u8>>),
}

/// One item of a sequence.
#[derive(Debug, Clone)]
pub(super) struct Item {
    elements: Vec<Node>,
    undefined: bool,
}

/// How a data set is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Syntax {
    /// Explicit VR (else Implicit VR Little Endian).
    pub explicit: bool,
    /// Big endian (Explicit VR Big Endian, retired).
    pub big_endian: bool,
}

impl Syntax {
    pub const IMPLICIT_LE: Syntax = Syntax {
        explicit: false,
        big_endian: false,
    };
    pub const EXPLICIT_LE: Syntax = Syntax {
        explicit: true,
        big_endian: false,
    };
    pub const EXPLICIT_BE: Syntax = Syntax {
        explicit: true,
        big_endian: true,
    };
}

/// Explicit-VR headers with a 2-byte length (PS3.5 Table 7.1-2).
const SHORT_VRS: [&[u8; 2]; 21] = [
    b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT", b"PN",
    b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US",
];

/// Query keys and other elements with their dictionary VR (none is a
/// sequence, so Implicit VR reads them as values too).
pub(super) const KEYS: &[((u16, u16), &[u8; 2])] = &[
    ((0x0008, 0x0005), b"CS"), // SpecificCharacterSet
    ((0x0008, 0x0016), b"UI"), // SOPClassUID
    ((0x0008, 0x0018), b"UI"), // SOPInstanceUID
    ((0x0008, 0x0020), b"DA"), // StudyDate
    ((0x0008, 0x0030), b"TM"), // StudyTime
    ((0x0008, 0x0050), b"SH"), // AccessionNumber
    ((0x0008, 0x0052), b"CS"), // QueryRetrieveLevel
    ((0x0008, 0x0054), b"AE"), // RetrieveAETitle
    ((0x0008, 0x0060), b"CS"), // Modality
    ((0x0008, 0x0061), b"CS"), // ModalitiesInStudy
    ((0x0008, 0x0090), b"PN"), // ReferringPhysicianName
    ((0x0008, 0x1030), b"LO"), // StudyDescription
    ((0x0009, 0x0010), b"LO"), // a private creator
    ((0x0010, 0x0010), b"PN"), // PatientName
    ((0x0010, 0x0020), b"LO"), // PatientID
    ((0x0010, 0x0030), b"DA"), // PatientBirthDate
    ((0x0010, 0x0040), b"CS"), // PatientSex
    ((0x0020, 0x000D), b"UI"), // StudyInstanceUID
    ((0x0020, 0x000E), b"UI"), // SeriesInstanceUID
    ((0x0020, 0x0010), b"SH"), // StudyID
    ((0x0020, 0x0011), b"IS"), // SeriesNumber
    ((0x0020, 0x0013), b"IS"), // InstanceNumber
    ((0x0020, 0x1208), b"IS"), // NumberOfStudyRelatedInstances
    ((0x0028, 0x0010), b"US"), // Rows
    ((0x0028, 0x0030), b"DS"), // PixelSpacing
    ((0x0029, 0x1010), b"OB"), // a private binary value
    ((0x0040, 0xA124), b"UI"), // UID
];

/// Sequences of the standard dictionary (Implicit VR follows them only
/// when the dictionary says SQ).
const SEQUENCES: &[(u16, u16)] = &[
    (0x0008, 0x1110), // ReferencedStudySequence
    (0x0008, 0x1115), // ReferencedSeriesSequence
    (0x0008, 0x1140), // ReferencedImageSequence
    (0x0040, 0x0275), // RequestAttributesSequence
];

/// Values a query or an object carries, and some that break them.
const TEXTS: &[&str] = &[
    "",
    "PATIENT",
    "STUDY",
    "SERIES",
    "IMAGE",
    "FRAME",
    "*",
    "?",
    "DOE^JOHN",
    "DOE*",
    "D?E*",
    "A\\B\\C",
    "*\\X",
    "1.2.840.10008.5.1.4.1.1.2",
    "1.2.3.4.5.6",
    "1.2.*",
    "20240101",
    "20240101-20241231",
    "-20241231",
    "20240101-",
    "-",
    "2024",
    "120000",
    "120000-130000",
    "12:00",
    "99999999",
    "ISO_IR 100",
    "ISO_IR 192",
    "ISO 2022 IR 87",
    "\\ISO 2022 IR 100",
    "GB18030",
    "CT",
    "CT\\MR",
    "12",
    "-1",
    "2147483648",
    "IMAGESERVER",
];

/// A value: a typical text (padded to even length), printable text, or
/// arbitrary bytes.
pub(super) fn value() -> BoxedStrategy<Vec<u8>> {
    prop_oneof![
        4 => prop::sample::select(TEXTS).prop_map(|s| pad(s.as_bytes().to_vec())),
        2 => "[ -~]{0,24}".prop_map(|s| pad(s.into_bytes())),
        1 => "\\PC{0,8}".prop_map(|s| pad(s.into_bytes())),
        2 => vec(any::<u8>(), 0..24),
    ]
    .boxed()
}

fn pad(mut v: Vec<u8>) -> Vec<u8> {
    if v.len() % 2 == 1 {
        v.push(b' ');
    }
    v
}

/// Every VR code of PS3.5.
const VRS: [[u8; 2]; 33] = [
    *b"AE", *b"AS", *b"AT", *b"CS", *b"DA", *b"DS", *b"DT", *b"FL", *b"FD", *b"IS", *b"LO", *b"LT",
    *b"PN", *b"SH", *b"SL", *b"SS", *b"ST", *b"TM", *b"UI", *b"UL", *b"US", *b"OB", *b"OW", *b"OF",
    *b"OD", *b"OL", *b"OV", *b"UN", *b"UT", *b"UC", *b"UR", *b"SV", *b"UV",
];

/// Any VR code, known or not.
fn vr() -> impl Strategy<Value = [u8; 2]> {
    prop_oneof![9 => prop::sample::select(&VRS[..]), 1 => any::<[u8; 2]>()]
}

/// A primitive element: a known key with its VR, or (Explicit VR only) any
/// non-delimiter tag with any VR.
fn value_node(syntax: Syntax) -> BoxedStrategy<Node> {
    let known = (prop::sample::select(KEYS), value())
        .prop_map(|((tag, vr), value)| Node::Value {
            tag,
            vr: *vr,
            value,
        })
        .boxed();
    if !syntax.explicit {
        return known;
    }
    let any_tag = ((0u16..0xFFFE, any::<u16>()), vr(), value())
        .prop_map(|(tag, vr, value)| Node::Value { tag, vr, value })
        .boxed();
    prop_oneof![3 => known, 1 => any_tag].boxed()
}

fn item(inner: impl Strategy<Value = Node>) -> impl Strategy<Value = Item> {
    (vec(inner, 0..4), any::<bool>()).prop_map(|(elements, undefined)| Item {
        elements,
        undefined,
    })
}

/// An element, a sequence nesting at most a few levels.
fn node(syntax: Syntax) -> BoxedStrategy<Node> {
    value_node(syntax)
        .prop_recursive(4, 24, 3, |inner| {
            (
                prop::sample::select(SEQUENCES),
                vec(item(inner), 0..3),
                any::<bool>(),
            )
                .prop_map(|(tag, items, undefined)| Node::Sequence {
                    tag,
                    items,
                    undefined,
                })
        })
        .boxed()
}

/// `depth` sequences each holding one item, around `inner`: nesting far
/// beyond what the parsers accept.
fn nest(depth: usize, undefined: bool, inner: Vec<Node>) -> Vec<Node> {
    let mut elements = inner;
    for _ in 0..depth {
        elements = vec![Node::Sequence {
            tag: (0x0008, 0x1140),
            items: vec![Item {
                elements,
                undefined,
            }],
            undefined,
        }];
    }
    elements
}

/// A data set: elements in tag order, sometimes wrapped in deep nesting,
/// sometimes ending with encapsulated pixel data (Explicit VR).
pub(super) fn data_set(syntax: Syntax) -> BoxedStrategy<Vec<Node>> {
    let fragments = if syntax.explicit {
        prop::option::weighted(0.2, vec(vec(any::<u8>(), 0..8).prop_map(pad), 0..3)).boxed()
    } else {
        Just(None).boxed()
    };
    (
        vec(node(syntax), 0..8),
        prop::option::weighted(0.25, (0usize..80, any::<bool>())),
        fragments,
    )
        .prop_map(|(mut elements, deep, fragments)| {
            elements.sort_by_key(|n| match n {
                Node::Value { tag, .. } | Node::Sequence { tag, .. } => *tag,
                Node::Fragments(_) => (0x7FE0, 0x0010),
            });
            if let Some((depth, undefined)) = deep {
                let inner = elements.split_off(elements.len() / 2);
                elements.extend(nest(depth, undefined, inner));
            }
            if let Some(fragments) = fragments {
                elements.push(Node::Fragments(fragments));
            }
            elements
        })
        .boxed()
}

/// Encodes a data set, recording every length field.
pub(super) fn encode(elements: &[Node], syntax: Syntax) -> Encoded {
    let mut out = Encoded::default();
    for node in elements {
        out.append(encode_node(node, syntax));
    }
    out
}

fn put_tag(out: &mut Encoded, (group, element): (u16, u16), syntax: Syntax) {
    if syntax.big_endian {
        out.bytes.extend_from_slice(&group.to_be_bytes());
        out.bytes.extend_from_slice(&element.to_be_bytes());
    } else {
        out.bytes.extend_from_slice(&group.to_le_bytes());
        out.bytes.extend_from_slice(&element.to_le_bytes());
    }
}

/// An element header: tag, VR when explicit, length of the right width.
fn put_header(out: &mut Encoded, tag: (u16, u16), vr: [u8; 2], len: u32, syntax: Syntax) {
    put_tag(out, tag, syntax);
    if !syntax.explicit {
        out.put_len(len, 4, syntax.big_endian);
    } else if SHORT_VRS.contains(&&vr) {
        out.bytes.extend_from_slice(&vr);
        out.put_len(len, 2, syntax.big_endian);
    } else {
        out.bytes.extend_from_slice(&vr);
        out.bytes.extend_from_slice(&[0, 0]);
        out.put_len(len, 4, syntax.big_endian);
    }
}

/// An item or delimiter header: tag and a 4-byte length.
fn put_item(out: &mut Encoded, tag: (u16, u16), len: u32, syntax: Syntax) {
    put_tag(out, tag, syntax);
    out.put_len(len, 4, syntax.big_endian);
}

const UNDEFINED: u32 = 0xFFFF_FFFF;
const ITEM: (u16, u16) = (0xFFFE, 0xE000);
const ITEM_END: (u16, u16) = (0xFFFE, 0xE00D);
const SEQUENCE_END: (u16, u16) = (0xFFFE, 0xE0DD);

fn encode_node(node: &Node, syntax: Syntax) -> Encoded {
    let mut out = Encoded::default();
    match node {
        Node::Value { tag, vr, value } => {
            // A short VR cannot say more than 0xFFFF: the value is cut.
            let value = if syntax.explicit && SHORT_VRS.contains(&vr) {
                &value[..value.len().min(0xFFFE)]
            } else {
                &value[..]
            };
            put_header(&mut out, *tag, *vr, value.len() as u32, syntax);
            out.bytes.extend_from_slice(value);
        }
        Node::Sequence {
            tag,
            items,
            undefined,
        } => {
            let mut body = Encoded::default();
            for item in items {
                let mut elements = Encoded::default();
                for element in &item.elements {
                    elements.append(encode_node(element, syntax));
                }
                if item.undefined {
                    put_item(&mut body, ITEM, UNDEFINED, syntax);
                    body.append(elements);
                    put_item(&mut body, ITEM_END, 0, syntax);
                } else {
                    put_item(&mut body, ITEM, elements.bytes.len() as u32, syntax);
                    body.append(elements);
                }
            }
            if *undefined {
                put_header(&mut out, *tag, *b"SQ", UNDEFINED, syntax);
                out.append(body);
                put_item(&mut out, SEQUENCE_END, 0, syntax);
            } else {
                put_header(&mut out, *tag, *b"SQ", body.bytes.len() as u32, syntax);
                out.append(body);
            }
        }
        Node::Fragments(fragments) => {
            put_header(&mut out, (0x7FE0, 0x0010), *b"OB", UNDEFINED, syntax);
            put_item(&mut out, ITEM, 0, syntax);
            for fragment in fragments {
                put_item(&mut out, ITEM, fragment.len() as u32, syntax);
                out.bytes.extend_from_slice(fragment);
            }
            put_item(&mut out, SEQUENCE_END, 0, syntax);
        }
    }
    out
}

/// Deflates `bytes` (raw deflate, as the Deflated transfer syntax has it).
pub(super) fn deflate(bytes: &[u8], level: u32) -> Vec<u8> {
    use std::io::Write;
    let mut encoder =
        flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::new(level));
    encoder.write_all(bytes).expect("deflating into memory");
    encoder.finish().expect("deflating into memory")
}

/// How many bytes a raw deflate stream inflates to before it ends, breaks
/// or reaches `cap`: what a bounded reader of it holds at most.
pub(super) fn inflated_len(bytes: &[u8], cap: u64) -> u64 {
    use std::io::Read;
    let mut reader = flate2::read::DeflateDecoder::new(bytes).take(cap);
    let mut sink = [0u8; 8192];
    let mut total = 0u64;
    while let Ok(n) = reader.read(&mut sink) {
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    total
}

/// `n` copies of `byte`, deflated: inflates far beyond its size. Cached, as
/// deflating megabytes in a debug build takes a while.
pub(super) fn deflated_run(n: usize, byte: u8) -> Vec<u8> {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    type Cache = Mutex<HashMap<(usize, u8), Vec<u8>>>;
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(hit) = cache
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&(n, byte))
    {
        return hit.clone();
    }
    let bytes = deflate(&vec![byte; n], 9);
    cache
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert((n, byte), bytes.clone());
    bytes
}
