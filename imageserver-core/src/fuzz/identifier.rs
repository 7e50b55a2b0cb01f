//! C-FIND identifier parsing ([`parse_identifier`]): any bytes in any
//! transfer syntax give a query or an error, within a bound proportional
//! to the identifier (inflated, for the Deflated syntax, whose inflation is
//! capped at 4 MiB).

use proptest::prelude::*;

use super::dataset::{data_set, deflate, deflated_run, encode, inflated_len, value, Node, Syntax};
use super::mutate::{arbitrary_bytes, mutated, Encoded};
use super::{check, run_case, Bound, MIB};
use crate::dicom::query_keys::{parse_identifier, ParseOptions};
use crate::model::query::Root;
use crate::model::PartitionId;

const IMPLICIT_LE: &str = "1.2.840.10008.1.2";
const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";
const EXPLICIT_BE: &str = "1.2.840.10008.1.2.2";
const DEFLATED: &str = "1.2.840.10008.1.2.1.99";

/// The cap of `read_identifier`'s inflation, plus the byte that detects it.
const INFLATE_CAP: u64 = (4 << 20) + 1;

/// One C-FIND request: its identifier and how it is read.
#[derive(Debug, Clone)]
struct Request {
    ts: String,
    root: Root,
    bytes: Vec<u8>,
}

/// A query-shaped data set: usually a QueryRetrieveLevel and the unique
/// keys of the levels above, then any elements.
fn identifier(syntax: Syntax) -> BoxedStrategy<Encoded> {
    let level = prop_oneof![
        4 => prop::sample::select(&["PATIENT", "STUDY", "SERIES", "IMAGE"][..])
            .prop_map(|s| s.as_bytes().to_vec()),
        1 => value(),
    ];
    let unique = |tag: (u16, u16), vr: &'static [u8; 2]| {
        prop::option::weighted(
            0.7,
            prop_oneof![
                3 => Just(b"1.2.3.4".to_vec()),
                1 => value(),
            ]
            .prop_map(move |value| Node::Value {
                tag,
                vr: *vr,
                value,
            }),
        )
    };
    (
        prop::option::weighted(0.9, level),
        unique((0x0010, 0x0020), b"LO"),
        unique((0x0020, 0x000D), b"UI"),
        unique((0x0020, 0x000E), b"UI"),
        data_set(syntax),
    )
        .prop_map(move |(level, patient, study, series, mut elements)| {
            if let Some(mut value) = level {
                if value.len() % 2 == 1 {
                    value.push(b' ');
                }
                elements.push(Node::Value {
                    tag: (0x0008, 0x0052),
                    vr: *b"CS",
                    value,
                });
            }
            elements.extend([patient, study, series].into_iter().flatten());
            elements.sort_by_key(|n| match n {
                Node::Value { tag, .. } | Node::Sequence { tag, .. } => *tag,
                Node::Fragments(_) => (0x7FE0, 0x0010),
            });
            encode(&elements, syntax)
        })
        .boxed()
}

fn plain(ts: &'static str, syntax: Syntax) -> BoxedStrategy<(String, Vec<u8>)> {
    prop_oneof![
        4 => mutated(identifier(syntax)),
        1 => arbitrary_bytes(),
    ]
    .prop_map(move |bytes| (ts.to_string(), bytes))
    .boxed()
}

fn deflated() -> BoxedStrategy<(String, Vec<u8>)> {
    let syntax = Syntax::EXPLICIT_LE;
    prop_oneof![
        3 => (mutated(identifier(syntax)), 0u32..=9).prop_map(|(b, l)| deflate(&b, l)),
        2 => mutated((identifier(syntax), 0u32..=9).prop_map(|(e, l)| Encoded {
            bytes: deflate(&e.bytes, l),
            fields: Vec::new(),
        })),
        // Past the inflation cap, from a few kilobytes.
        1 => prop::sample::select(&[4usize << 20, (4 << 20) + 1, 5 << 20][..])
            .prop_map(|n| deflated_run(n, 0)),
        1 => arbitrary_bytes(),
    ]
    .prop_map(|bytes| (DEFLATED.to_string(), bytes))
    .boxed()
}

fn request() -> BoxedStrategy<Request> {
    (
        prop_oneof![
            3 => plain(IMPLICIT_LE, Syntax::IMPLICIT_LE),
            3 => plain(EXPLICIT_LE, Syntax::EXPLICIT_LE),
            1 => plain(EXPLICIT_BE, Syntax::EXPLICIT_BE),
            2 => deflated(),
            // Encapsulated, unknown and malformed syntaxes are refused.
            1 => (
                prop_oneof![
                    Just("1.2.840.10008.1.2.4.50".to_string()),
                    Just("1.2.840.10008.1.2\0".to_string()),
                    "[0-9.\0 ]{0,70}",
                ],
                arbitrary_bytes()
            ),
        ],
        prop_oneof![Just(Root::Patient), Just(Root::Study)],
    )
        .prop_map(|((ts, bytes), root)| Request { ts, root, bytes })
        .boxed()
}

#[test]
fn identifier_parsing_never_panics_hangs_or_overallocates() {
    let parsed = std::sync::atomic::AtomicU32::new(0);
    check("identifier", 8000, request(), |request| {
        let len = if request.ts == DEFLATED {
            inflated_len(&request.bytes, INFLATE_CAP).max(request.bytes.len() as u64) as usize
        } else {
            request.bytes.len()
        };
        let bound = Bound {
            per_byte: 16,
            len,
            // dicom-object reads through a 1 MiB buffer.
            fixed: 4 * MIB,
        };
        let ok = run_case(bound, move || {
            let options = ParseOptions {
                pn_case_insensitive: true,
                limit: Some(10),
                retrieve_ae_title: "IMAGESERVER",
                max_echoed_unsupported: 64,
                combined_date_time: false,
            };
            parse_identifier(
                &request.bytes,
                &request.ts,
                request.root,
                PartitionId(1),
                &options,
            )
            .is_ok()
        })?;
        if ok {
            parsed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(())
    });
    eprintln!(
        "fuzz identifier: {} identifiers parsed into queries",
        parsed.into_inner()
    );
}
