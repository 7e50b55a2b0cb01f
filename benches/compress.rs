//! Lossless compression (storage lifecycle issue): throughput (MB/s of
//! stored file bytes) and ratio of the RLE Lossless codec `compress_study`
//! uses, on corpora of Part 10 files, one run per corpus:
//!
//! - **encode**: `dicom::codec::compress_rle` (parse, PackBits per row and
//!   byte plane, write the recoded file);
//! - **verify**: `dicom::codec::verify_recoded` (both files parsed, every
//!   frame decoded by the dicom-rs registry and compared, every other
//!   element compared) — what compression pays before a file is swapped;
//! - **ratio**: stored bytes before / after, over the files that shrank
//!   (a file that would grow is left as it is, and counted at 1:1).
//!
//! In memory, one thread: file IO and fsync are what migration's figures
//! measure. Corpora come from `../shared/bench/gen_corpus.py`; use its
//! default `--pixels pattern` (a body/lung/spine phantom plus Gaussian
//! noise): synthetic images compress differently from patients' (the
//! noise is white, real noise is correlated and real images have more
//! flat background), and `--pixels random` (uniform 12-bit noise) does not
//! compress at all.
//!
//! ```text
//! python3 ../shared/bench/gen_corpus.py --out /tmp/ct --modality CT --studies 2 --series-per-study 1 --instances-per-series 25
//! python3 ../shared/bench/gen_corpus.py --out /tmp/mr --modality MR --studies 2 --series-per-study 1 --instances-per-series 25 --rows 256 --cols 256
//! cargo bench --bench compress -- --corpus /tmp/ct --corpus /tmp/mr
//! ```
//!
//! Without `--bench` (as `cargo test --benches` runs it) a smoke run on a
//! few phantom images made here checks it all works.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use dicom_core::value::PrimitiveValue;
use dicom_core::{DataElement, VR};
use dicom_dictionary_std::tags;
use dicom_object::meta::FileMetaTableBuilder;
use dicom_object::InMemDicomObject;
use imageserver_core::dicom::codec;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

const USAGE: &str = "\
usage: cargo bench --bench compress -- --corpus DIR [--corpus DIR …]
  --corpus DIR   a directory of Part 10 files (*.dcm, searched recursively), one run each";

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            files_under(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "dcm") {
            out.push(path);
        }
    }
    Ok(())
}

#[derive(Default)]
struct Tally {
    files: usize,
    shrunk: usize,
    bytes_before: u64,
    bytes_after: u64,
    encode: Duration,
    verify: Duration,
}

fn run(name: &str, files: &[Vec<u8>]) -> Result<Tally> {
    let mut t = Tally::default();
    for original in files {
        t.files += 1;
        t.bytes_before += original.len() as u64;
        let start = Instant::now();
        let recoded = codec::compress_rle(original)?;
        t.encode += start.elapsed();
        let Ok(recoded) = recoded else {
            t.bytes_after += original.len() as u64;
            continue;
        };
        let start = Instant::now();
        codec::verify_recoded(original, &recoded.bytes)?;
        t.verify += start.elapsed();
        if recoded.bytes.len() < original.len() {
            t.shrunk += 1;
            t.bytes_after += recoded.bytes.len() as u64;
        } else {
            t.bytes_after += original.len() as u64;
        }
    }
    let mb = t.bytes_before as f64 / 1e6;
    println!(
        "{name}: {} files, {:.1} MB; encode {:.1} MB/s, verify {:.1} MB/s, encode+verify {:.1} MB/s; \
         ratio {:.2}:1 ({} of {} files shrank; {:.1} MB saved)",
        t.files,
        mb,
        mb / t.encode.as_secs_f64().max(1e-9),
        mb / t.verify.as_secs_f64().max(1e-9),
        mb / (t.encode + t.verify).as_secs_f64().max(1e-9),
        t.bytes_before as f64 / t.bytes_after.max(1) as f64,
        t.shrunk,
        t.files,
        (t.bytes_before - t.bytes_after) as f64 / 1e6
    );
    Ok(t)
}

/// A small phantom image (body, noise) for the smoke run.
fn phantom_file(seed: u64, size: u16) -> Result<Vec<u8>> {
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
    let n = size as usize;
    let pixels: Vec<u16> = (0..n * n)
        .map(|i| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let (r, c) = (
                (i / n) as f64 / n as f64 - 0.5,
                (i % n) as f64 / n as f64 - 0.5,
            );
            let base = if r * r + c * c < 0.16 { 1064 } else { 24 };
            base + ((state >> 60) as u16)
        })
        .collect();
    let sop = format!("1.2.826.0.1.3680043.2.1125.{seed}");
    let us = |tag, v: u16| DataElement::new(tag, VR::US, PrimitiveValue::from(v));
    let mut obj = InMemDicomObject::from_element_iter([
        DataElement::new(
            tags::SOP_CLASS_UID,
            VR::UI,
            PrimitiveValue::from("1.2.840.10008.5.1.4.1.1.2"),
        ),
        DataElement::new(
            tags::SOP_INSTANCE_UID,
            VR::UI,
            PrimitiveValue::from(sop.as_str()),
        ),
        us(tags::SAMPLES_PER_PIXEL, 1),
        DataElement::new(
            tags::PHOTOMETRIC_INTERPRETATION,
            VR::CS,
            PrimitiveValue::from("MONOCHROME2"),
        ),
        us(tags::ROWS, size),
        us(tags::COLUMNS, size),
        us(tags::BITS_ALLOCATED, 16),
        us(tags::BITS_STORED, 12),
        us(tags::HIGH_BIT, 11),
        us(tags::PIXEL_REPRESENTATION, 0),
    ]);
    obj.put(DataElement::new(
        tags::PIXEL_DATA,
        VR::OW,
        PrimitiveValue::U16(pixels.into()),
    ));
    let file = obj.with_meta(
        FileMetaTableBuilder::new()
            .transfer_syntax("1.2.840.10008.1.2.1")
            .media_storage_sop_class_uid("1.2.840.10008.5.1.4.1.1.2")
            .media_storage_sop_instance_uid(sop),
    )?;
    let mut out = Vec::new();
    file.write_all(&mut out)?;
    Ok(out)
}

fn main() -> Result<()> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let bench = args.iter().any(|a| a == "--bench");
    args.retain(|a| a != "--bench");
    let mut corpora = Vec::new();
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--corpus" => corpora.push(PathBuf::from(it.next().ok_or(USAGE)?)),
            "--help" | "-h" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => return Err(format!("unknown argument {other:?}\n{USAGE}").into()),
        }
    }
    if corpora.is_empty() {
        if bench {
            return Err(format!("no corpus given\n{USAGE}").into());
        }
        // Smoke: a few phantoms, which must shrink.
        let files = (0..3)
            .map(|i| phantom_file(i, 64))
            .collect::<Result<Vec<_>>>()?;
        let tally = run("smoke (64x64 phantoms)", &files)?;
        assert_eq!(tally.shrunk, files.len(), "the phantoms did not compress");
        return Ok(());
    }
    for corpus in corpora {
        let mut paths = Vec::new();
        files_under(&corpus, &mut paths)?;
        paths.sort();
        let files = paths
            .iter()
            .map(std::fs::read)
            .collect::<std::io::Result<Vec<_>>>()?;
        run(&corpus.display().to_string(), &files)?;
    }
    Ok(())
}
