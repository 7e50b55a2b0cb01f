//! The structural walker ([`DataSetWalker`]), plain and deflated: fed in
//! arbitrary chunks, it ends with a verdict, in constant memory (it never
//! buffers a value; a deflated stream goes through its fixed buffer and its
//! inflation cap is never allocated). And it is the guard in front of
//! dicom-object's parser: a data set it accepts parses within a bound
//! proportional to its length, without a panic and without exhausting an
//! association thread's stack.

use dicom_object::InMemDicomObject;
use dicom_transfer_syntax_registry::{TransferSyntaxIndex, TransferSyntaxRegistry};
use proptest::collection::vec;
use proptest::prelude::*;

use super::dataset::{data_set, deflate, deflated_run, encode, Syntax};
use super::mutate::{arbitrary_bytes, mutated, Encoded};
use super::{check, run_case, Bound, KIB, MIB};
use crate::dicom::part10::DataSetWalker;

const IMPLICIT_LE: &str = "1.2.840.10008.1.2";
const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";
const EXPLICIT_BE: &str = "1.2.840.10008.1.2.2";
const DEFLATED: &str = "1.2.840.10008.1.2.1.99";
const JPEG_BASELINE: &str = "1.2.840.10008.1.2.4.50";

/// What the walker holds whatever its input: its context stack, the
/// inflater with its 64 KiB buffer, an error message.
const WALKER_BOUND: Bound = Bound {
    per_byte: 0,
    len: 0,
    fixed: 512 * KIB,
};

/// One case: a transfer syntax, the data set as received, and the sizes of
/// the pieces it arrives in (cycled).
#[derive(Debug, Clone)]
struct Received {
    ts: &'static str,
    bytes: Vec<u8>,
    chunks: Vec<usize>,
}

fn chunks() -> impl Strategy<Value = Vec<usize>> {
    vec(prop_oneof![1usize..16, 1usize..70_000], 1..4)
}

fn plain(ts: &'static str, syntax: Syntax) -> BoxedStrategy<(&'static str, Vec<u8>)> {
    prop_oneof![
        3 => mutated(data_set(syntax).prop_map(move |d| encode(&d, syntax))),
        1 => arbitrary_bytes(),
    ]
    .prop_map(move |bytes| (ts, bytes))
    .boxed()
}

/// Deflated inputs: valid streams of mutated data sets, mutated streams of
/// valid data sets, long runs that inflate far beyond their size, and
/// arbitrary bytes.
fn deflated() -> BoxedStrategy<(&'static str, Vec<u8>)> {
    let syntax = Syntax::EXPLICIT_LE;
    let valid = || data_set(syntax).prop_map(move |d| encode(&d, syntax));
    prop_oneof![
        3 => (mutated(valid()), 0u32..=9).prop_map(|(b, level)| deflate(&b, level)),
        2 => mutated((valid(), 0u32..=9).prop_map(|(e, level)| Encoded {
            bytes: deflate(&e.bytes, level),
            fields: Vec::new(),
        })),
        // Zeros read as (0000,0000) elements of an unknown VR: a long walk.
        1 => (
            prop::sample::select(&[12usize << 10, 1 << 20, (1 << 20) + 1][..]),
            prop::sample::select(&[0u8, 2, 0xFE][..]),
        )
            .prop_map(|(n, b)| deflated_run(n, b)),
        1 => arbitrary_bytes(),
    ]
    .prop_map(|bytes| (DEFLATED, bytes))
    .boxed()
}

fn received() -> BoxedStrategy<Received> {
    (
        prop_oneof![
            plain(IMPLICIT_LE, Syntax::IMPLICIT_LE),
            plain(EXPLICIT_LE, Syntax::EXPLICIT_LE),
            plain(EXPLICIT_BE, Syntax::EXPLICIT_BE),
            plain(JPEG_BASELINE, Syntax::EXPLICIT_LE),
            deflated(),
        ],
        chunks(),
    )
        .prop_map(|((ts, bytes), chunks)| Received { ts, bytes, chunks })
        .boxed()
}

fn walk(input: &Received) -> Result<(), String> {
    let mut walker = DataSetWalker::for_transfer_syntax(input.ts);
    let mut rest = &input.bytes[..];
    for size in input.chunks.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (piece, after) = rest.split_at((*size).min(rest.len()));
        walker.feed(piece);
        rest = after;
    }
    walker.finish().map_err(|e| e.to_string())
}

/// The data set the header parser reads: the input, inflated when deflated.
fn parseable(input: &Received) -> (Vec<u8>, &'static str) {
    if input.ts == DEFLATED {
        use std::io::Read;
        let mut out = Vec::new();
        flate2::read::DeflateDecoder::new(&input.bytes[..])
            .read_to_end(&mut out)
            .expect("the walker accepted this deflate stream");
        (out, EXPLICIT_LE)
    } else {
        (input.bytes.clone(), input.ts)
    }
}

#[test]
fn walker_never_panics_hangs_or_buffers() {
    let accepted = std::sync::atomic::AtomicU32::new(0);
    check("walker", 8000, received(), |input| {
        let case = input.clone();
        let verdict = run_case(WALKER_BOUND, move || walk(&case))?;
        if verdict.is_err() {
            return Ok(());
        }
        accepted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // Accepted: dicom-object's parser reads it within a bound, on an
        // association thread's stack, without a panic.
        let (bytes, ts) = parseable(&input);
        let bound = Bound {
            per_byte: 16,
            len: bytes.len(),
            // dicom-object reads through a 1 MiB buffer.
            fixed: 4 * MIB,
        };
        run_case(bound, move || {
            let ts = TransferSyntaxRegistry.get(ts).expect("a registered syntax");
            InMemDicomObject::read_dataset_with_ts(&bytes[..], ts).is_ok()
        })?;
        Ok(())
    });
    eprintln!(
        "fuzz walker: {} inputs accepted and parsed",
        accepted.into_inner()
    );
}
