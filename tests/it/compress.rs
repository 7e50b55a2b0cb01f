//! Lossless compression (`compress_study`, RLE Lossless) and sends to
//! peers that take only uncompressed data sets: a CT study with phantom
//! pixels (body, lungs, vertebra and noise, as the benchmark corpus
//! generator draws them) is compressed; DCMTK's `dcmdrle` decodes a stored
//! file to the original pixels; C-MOVE to a DCMTK `storescp` (which accepts
//! only uncompressed syntaxes by default) and C-GET by pynetdicom proposing
//! only Implicit VR LE deliver the original pixels, and so do WADO-RS
//! instance, series and frames retrieves (dicomweb-client) asking for an
//! uncompressed syntax or none; kill -9 at each step
//! of a compression leaves every instance one good file the index
//! describes.

#[path = "support/retrieve_peers.rs"]
#[allow(dead_code, clippy::duplicate_mod)]
mod retrieve_peers;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use dicom_core::value::PrimitiveValue;
use dicom_core::{DataElement, VR};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;

use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::support::cli::{cli, cli_ok, command, wait_log, wait_work_items, Resume, BOUND};
use crate::support::corpus::{dataset_offset, generate_corpus, CorpusShape, Instance, Rng};
use crate::support::dcmtk;
use crate::support::lifecycle::{instance_files, store_all, stored_path};
use crate::support::server::{test_dir, Server};
use retrieve_peers::{movescu, py_retrieve, StoreScp};

const RLE: &str = "1.2.840.10008.1.2.5";
const CT: &str = "1.2.840.10008.5.1.4.1.1.2";
const FAULT_ENV: &str = "IMAGESERVER_FAULT_PAUSE_COMPRESSION_AT";
const RESUME_ENV: &str = "IMAGESERVER_FAULT_RESUME_FILE";
const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";
const IMPLICIT_LE: &str = "1.2.840.10008.1.2";
/// The dicomweb-client script retrieving the compressed series.
const WADO_DECODED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/py/wado_decoded.py");

/// A CT slice as `gen_corpus.py --pixels pattern` draws it: air, an
/// elliptic body, two lungs, a vertebra (stored = HU + 1024, 12 bits),
/// plus noise (a sum of uniforms, sigma about 12).
fn phantom(rows: u16, cols: u16, seed: u64) -> Vec<u16> {
    let mut rng = Rng::new(seed);
    let (rows, cols) = (rows as usize, cols as usize);
    let mut out = Vec::with_capacity(rows * cols);
    for r in 0..rows {
        for c in 0..cols {
            let y = -1.0 + 2.0 * r as f64 / (rows - 1) as f64;
            let x = -1.0 + 2.0 * c as f64 / (cols - 1) as f64;
            let inside = |cx: f64, cy: f64, ax: f64, ay: f64| {
                ((x - cx) / ax).powi(2) + ((y - cy) / ay).powi(2) <= 1.0
            };
            let mut v = 24.0;
            if inside(0.0, 0.0, 0.81, 0.63) {
                v = 1064.0;
            }
            if inside(-0.38, -0.05, 0.25, 0.4) || inside(0.38, -0.05, 0.25, 0.4) {
                v = 224.0;
            }
            if inside(0.0, 0.4, 0.08, 0.08) {
                v = 1724.0;
            }
            let noise: f64 = (0..4)
                .map(|_| (rng.next_u64() % 1000) as f64 / 1000.0)
                .sum();
            out.push((v + (noise - 2.0) * 20.0).clamp(0.0, 4095.0) as u16);
        }
    }
    out
}

/// Rewrites a corpus instance's pixels with [`phantom`].
fn with_phantom(instance: &mut Instance, seed: u64) {
    let mut object = dicom_object::open_file(&instance.path).expect("open");
    let rows = object.element(tags::ROWS).unwrap().to_int::<u16>().unwrap();
    let cols = object
        .element(tags::COLUMNS)
        .unwrap()
        .to_int::<u16>()
        .unwrap();
    object.put(DataElement::new(
        tags::PIXEL_DATA,
        VR::OW,
        PrimitiveValue::U16(phantom(rows, cols, seed).into()),
    ));
    object.write_to_file(&instance.path).expect("write");
    instance.file_size = std::fs::metadata(&instance.path).unwrap().len();
}

/// A CT study of phantom slices.
fn study(dir: &Path, seed: u64, instances: usize, size: u16) -> Vec<Instance> {
    let mut corpus = generate_corpus(
        dir,
        seed,
        CorpusShape::uniform(1, 1, instances, (size, size)),
    );
    for (i, instance) in corpus.iter_mut().enumerate() {
        with_phantom(instance, seed * 1000 + i as u64);
    }
    corpus
}

/// Pixel Data of a data set as little-endian bytes (native only).
fn native_pixels(object: &InMemDicomObject) -> Vec<u8> {
    match object
        .element(tags::PIXEL_DATA)
        .expect("pixel data")
        .value()
    {
        dicom_core::DicomValue::Primitive(PrimitiveValue::U16(v)) => {
            v.iter().flat_map(|s| s.to_le_bytes()).collect()
        }
        dicom_core::DicomValue::Primitive(other) => other.to_bytes().into_owned(),
        _ => panic!("encapsulated pixel data where native was expected"),
    }
}

fn file_pixels(path: &Path) -> (String, Vec<u8>) {
    let object = dicom_object::open_file(path).expect("open a received file");
    let ts = object
        .meta()
        .transfer_syntax()
        .trim_end_matches('\0')
        .to_string();
    (ts, native_pixels(&object))
}

/// The original pixels by SOP Instance UID.
fn originals(corpus: &[Instance]) -> BTreeMap<String, Vec<u8>> {
    corpus
        .iter()
        .map(|i| (i.sop_instance_uid.clone(), file_pixels(&i.path).1))
        .collect()
}

#[test]
fn a_compressed_study_decodes_to_its_pixels_and_is_sent_uncompressed() {
    let dir = test_dir("compress");
    let corpus = study(&dir.path().join("corpus"), 91, 5, 128);
    let original = originals(&corpus);
    let dest = StoreScp::start("PLAIN", &dir.path().join("dest"), false);
    let server = Server::builder(dir.path())
        .setting("devices", format!("[{}]", dest.device()))
        .start();
    store_all(&server, &corpus);
    let uid = &corpus[0].study_uid;
    let index = server.archive().index();
    let before: u64 = corpus
        .iter()
        .map(|i| {
            index
                .instance(&i.sop_instance_uid)
                .expect("indexed")
                .file_size
        })
        .sum();

    // Compressed through the server's work queue; the CLI reports the space saved.
    let out = cli_ok(dir.path(), server.archive(), &["study", "compress", uid]);
    let saved_line = out
        .lines()
        .find(|l| l.contains("saved"))
        .unwrap_or_else(|| panic!("no saving reported:\n{out}"));
    let mut after = 0;
    for instance in &corpus {
        let row = index.instance(&instance.sop_instance_uid).expect("indexed");
        assert_eq!(
            row.transfer_syntax_uid.as_str(),
            RLE,
            "{}",
            instance.sop_instance_uid
        );
        let path = stored_path(&server.archive().fs1(), &instance.sop_instance_uid);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), row.file_size);
        after += row.file_size;
    }
    assert!(after < before, "{after} >= {before}");
    assert!(
        saved_line.contains(&format!("({} saved)", before - after)),
        "{saved_line}"
    );
    let check = cli(dir.path(), server.archive(), &["study", "check", uid]);
    assert!(
        check.success(),
        "integrity check after compression:\n{check}"
    );

    // DCMTK decodes the stored RLE file to the original pixels.
    let stored = stored_path(&server.archive().fs1(), &corpus[0].sop_instance_uid);
    let decoded = dir.path().join("decoded.dcm");
    let run = dcmtk::run(
        {
            let mut c = dcmtk::command("/usr/bin/dcmdrle");
            c.arg(&stored).arg(&decoded);
            c
        },
        BOUND,
    );
    assert!(run.success(), "dcmdrle:\n{run}");
    let (ts, pixels) = file_pixels(&decoded);
    assert_ne!(ts, RLE);
    assert!(
        pixels == original[&corpus[0].sop_instance_uid],
        "dcmdrle decoded other pixels"
    );

    // C-MOVE to a storescp that accepts only uncompressed syntaxes.
    let moved = movescu(
        server.addr(),
        server.ae_title(),
        &dest.ae_title,
        false,
        &[
            "QueryRetrieveLevel=STUDY".to_string(),
            format!("StudyInstanceUID={uid}"),
        ],
    );
    assert_eq!(moved.status, Some(0x0000), "C-MOVE:\n{}", moved.tool);
    let received = dest.received();
    assert_eq!(received.len(), corpus.len(), "{}", dest.log_text());
    for (sop, path) in &received {
        let (ts, pixels) = file_pixels(path);
        assert_ne!(ts, RLE, "{sop} arrived compressed");
        assert!(
            pixels == original[sop],
            "{sop}: C-MOVE delivered other pixels"
        );
    }

    // C-GET by pynetdicom proposing only Implicit VR LE for CT.
    let get_dir = dir.path().join("get");
    let run = py_retrieve(
        server.addr(),
        server.ae_title(),
        "get",
        &[
            "--key".into(),
            "QueryRetrieveLevel=STUDY".into(),
            "--key".into(),
            format!("StudyInstanceUID={uid}"),
            "--context".into(),
            format!("{CT}=1.2.840.10008.1.2"),
            "--out".into(),
            get_dir.display().to_string(),
        ],
    );
    assert_eq!(run.last().status, 0x0000, "C-GET:\n{}", run.tool);
    assert_eq!(run.stored.len(), corpus.len(), "{}", run.tool);
    let implicit = dicom_transfer_syntax_registry_implicit();
    for sop in &run.stored {
        let raw = std::fs::read(get_dir.join(format!("{sop}.ds"))).expect("received");
        let object = InMemDicomObject::read_dataset_with_ts(raw.as_slice(), implicit)
            .expect("an Implicit VR LE data set");
        assert!(
            native_pixels(&object) == original[sop],
            "{sop}: C-GET delivered other pixels"
        );
    }

    // WADO-RS by dicomweb-client: instance, series and frames asked in an
    // uncompressed syntax (or none: PS3.18's default) arrive decoded.
    let wado_dir = dir.path().join("wado");
    let mut command = std::process::Command::new("python3");
    command
        .arg(WADO_DECODED)
        .arg(format!("{}/dicom-web", server.http_url()))
        .arg(uid)
        .arg(&corpus[0].series_uid)
        .arg(&wado_dir)
        .args(corpus.iter().map(|i| i.sop_instance_uid.as_str()));
    let out = dcmtk::run(command, BOUND);
    assert!(out.success(), "the dicomweb-client script failed:\n{out}");
    let found: serde_json::Value = serde_json::from_str(
        out.text()
            .lines()
            .rev()
            .find(|l| l.starts_with('{'))
            .unwrap_or("{}"),
    )
    .unwrap_or_else(|e| panic!("no JSON from the script ({e}):\n{out}"));
    let first = &corpus[0].sop_instance_uid;
    for (label, syntax, sops) in [
        ("instance-explicit", Some(EXPLICIT_LE), vec![first]),
        ("instance-implicit", Some(IMPLICIT_LE), vec![first]),
        ("instance-default", Some(EXPLICIT_LE), vec![first]),
        (
            "series-default",
            Some(EXPLICIT_LE),
            corpus.iter().map(|i| &i.sop_instance_uid).collect(),
        ),
        (
            "series-explicit",
            Some(EXPLICIT_LE),
            corpus.iter().map(|i| &i.sop_instance_uid).collect(),
        ),
        ("frames-explicit", None, vec![first]),
        ("frames-default", None, vec![first]),
    ] {
        for sop in sops {
            assert_eq!(
                found[label][sop].as_str(),
                syntax,
                "{label} {sop}: transfer syntax answered ({found})"
            );
            let pixels = std::fs::read(wado_dir.join(format!("{label}-{sop}.raw")))
                .unwrap_or_else(|e| panic!("{label} {sop}: {e} ({found})"));
            assert!(
                pixels == original[sop.as_str()],
                "{label} {sop}: WADO-RS delivered other pixels"
            );
        }
    }
    assert_eq!(
        found["stored_syntax"], RLE,
        "transfer-syntax=* answers the stored file"
    );
    assert_eq!(found["jpeg_status"], 406, "nothing is encoded to JPEG");

    // Again: nothing left to compress, nothing changes.
    let rows: Vec<String> = corpus
        .iter()
        .map(|i| index.instance(&i.sop_instance_uid).unwrap().digest)
        .collect();
    cli_ok(dir.path(), server.archive(), &["study", "compress", uid]);
    let again: Vec<String> = corpus
        .iter()
        .map(|i| index.instance(&i.sop_instance_uid).unwrap().digest)
        .collect();
    assert_eq!(rows, again);
}

/// Implicit VR Little Endian as dicom-object reads data sets.
fn dicom_transfer_syntax_registry_implicit() -> &'static dicom_encoding::TransferSyntax {
    use dicom_encoding::TransferSyntaxIndex;
    dicom_transfer_syntax_registry::TransferSyntaxRegistry
        .get("1.2.840.10008.1.2")
        .expect("implicit VR LE")
}

/// Kill -9 at each step of a compression (one server, a study per step),
/// restart: the retried item finishes; every instance is one file, in RLE,
/// that the index describes (size, digest: `study check`), with the
/// original pixels.
#[test]
fn a_compression_killed_at_any_step_leaves_one_good_file_per_instance() {
    let dir = test_dir("compress-kill");
    let mut server = Server::builder(dir.path())
        .setting("workqueue", "{ lease_secs = 2, poll_secs = 1 }")
        .start();
    // 20 instances: more than one batch of 16, so "recorded" is mid-study.
    let steps = [("written-one", 92), ("swapped-one", 93), ("recorded", 94)];
    let mut studies = Vec::new();
    for (step, seed) in steps {
        let corpus = study(&dir.path().join(step), seed, 20, 32);
        store_all(&server, &corpus);
        studies.push((step, corpus));
    }
    for (round, (step, corpus)) in studies.iter().enumerate() {
        let uid = &corpus[0].study_uid;
        assert!(server.sigterm().success());
        server.set_env(FAULT_ENV, Some(step));
        server.restart();
        cli_ok(
            dir.path(),
            server.archive(),
            &["study", "compress", uid, "--queue"],
        );
        wait_log(
            dir.path(),
            &format!("fault injection: the compression pauses here step=\"{step}\""),
        );
        server.kill_9();
        server.set_env(FAULT_ENV, None);
        server.restart();
        wait_work_items(
            dir.path(),
            server.archive(),
            "compress_study",
            "the compression",
            |items| items.len() == round + 1 && items.iter().all(|i| i["status"] == "completed"),
        );
        let index = server.archive().index();
        let original = originals(corpus);
        for instance in corpus {
            let row = index.instance(&instance.sop_instance_uid).expect("indexed");
            assert_eq!(row.transfer_syntax_uid.as_str(), RLE, "{step}");
            let path = stored_path(&server.archive().fs1(), &instance.sop_instance_uid);
            let decoded = dir.path().join(format!("{step}.dcm"));
            let run = dcmtk::run(
                {
                    let mut c = dcmtk::command("/usr/bin/dcmdrle");
                    c.arg(&path).arg(&decoded);
                    c
                },
                BOUND,
            );
            assert!(run.success(), "{step}: dcmdrle:\n{run}");
            assert!(
                file_pixels(&decoded).1 == original[&instance.sop_instance_uid],
                "{step}: {} lost its pixels",
                instance.sop_instance_uid
            );
        }
        let check = cli(dir.path(), server.archive(), &["study", "check", uid]);
        assert!(check.success(), "{step}: integrity check:\n{check}");
        let files: Vec<PathBuf> = instance_files(&server.archive().fs1())
            .into_iter()
            .filter(|p| p.to_string_lossy().contains(uid.as_str()))
            .collect();
        assert_eq!(files.len(), corpus.len(), "{step}: {files:#?}");
    }
}

/// A replacement (`accept_latest`) stored while its instance is being
/// recoded is kept: the compression, paused after recoding the older
/// version (`written-one`), finds the row changed when it switches and
/// drops its recode; the stored file is the replacement as it was sent.
#[test]
fn a_replacement_stored_during_a_compression_is_kept() {
    let dir = test_dir("compress-replace");
    let server = Server::builder(dir.path())
        .dicom_setting("duplicate_policy", r#""accept_latest""#)
        .setting(
            "devices",
            format!(
                r#"[{{ ae_title = "{}", host = "127.0.0.1", port = 104, allow_replace = true }}]"#,
                dcmtk::CALLING_AE
            ),
        )
        .start();
    let corpus = study(&dir.path().join("corpus"), 96, 1, 32);
    store_all(&server, &corpus);
    let original = &corpus[0];
    // The replacement: the same UIDs, other pixels.
    let mut replacement = original.clone();
    replacement.path = dir.path().join("replacement.dcm");
    std::fs::copy(&original.path, &replacement.path).expect("copy");
    with_phantom(&mut replacement, 4242);
    assert_ne!(file_pixels(&replacement.path), file_pixels(&original.path));

    let resume = Resume(dir.path().join("resume"));
    let stderr = dir.path().join("compress.err");
    let mut compress = command(
        dir.path(),
        server.archive(),
        &["study", "compress", "--now", &original.study_uid],
    );
    compress
        .env("IMAGESERVER_LOG", "info")
        .env(FAULT_ENV, "written-one")
        .env(RESUME_ENV, &resume.0)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&stderr).expect("create the log"));
    let child = compress.spawn().expect("spawn imageserver study compress");
    let deadline = Instant::now() + BOUND;
    while !std::fs::read_to_string(&stderr)
        .unwrap_or_default()
        .contains("the compression pauses here")
    {
        assert!(
            Instant::now() < deadline,
            "the compression never reached its pause:\n{}",
            std::fs::read_to_string(&stderr).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // While the recode of the older version waits to be switched.
    let out = dcmtk::store(
        server.addr(),
        server.ae_title(),
        &[&replacement.path],
        &[],
        BOUND,
    );
    assert_eq!(dcmtk::store_responses(&out.text()), ["Success"], "{out}");
    drop(resume);
    let output = dcmtk::wait_with_timeout(child, BOUND);
    let log = std::fs::read_to_string(&stderr).unwrap_or_default();
    assert!(output.success(), "study compress:\n{output}\n{log}");

    let stored = stored_path(&server.archive().fs1(), &original.sop_instance_uid);
    let dataset = |path: &Path| {
        let bytes = std::fs::read(path).expect("read");
        bytes[dataset_offset(path) as usize..].to_vec()
    };
    assert!(
        dataset(&stored) == dataset(&replacement.path),
        "the stored instance is not the replacement as it was sent"
    );
    let row = server
        .archive()
        .index()
        .instance(&original.sop_instance_uid)
        .expect("indexed");
    assert_eq!(
        row.digest,
        blake3::hash(&std::fs::read(&stored).unwrap())
            .to_hex()
            .to_string()
    );
    let check = cli(
        dir.path(),
        server.archive(),
        &["study", "check", &original.study_uid],
    );
    assert!(check.success(), "integrity:\n{check}");
    assert!(output.stdout.contains("1 replaced meanwhile"), "{output}");
}

/// A rule's `compress` action: StudyProcess queues `compress_study` for
/// the quiet study (due at once with `after_days = 0`), which compresses it.
#[test]
fn a_compress_rule_compresses_a_quiet_study() {
    let dir = test_dir("compress-rule");
    std::fs::write(
        dir.path().join("rules.toml"),
        r#"
version = 1

[[rule]]
name = "pack-ct"
when = { attribute = "ModalitiesInStudy", contains = "CT" }
actions = [{ type = "compress", after_days = 0 }]
"#,
    )
    .unwrap();
    let server = Server::builder(dir.path())
        .setting("rules_file", r#""rules.toml""#)
        .setting(
            "workqueue",
            "{ study_process_delay_secs = 1, poll_secs = 1 }",
        )
        .start();
    let corpus = study(&dir.path().join("corpus"), 95, 3, 64);
    store_all(&server, &corpus);
    wait_work_items(
        dir.path(),
        server.archive(),
        "compress_study",
        "the rule's compression",
        |items| !items.is_empty() && items.iter().all(|i| i["status"] == "completed"),
    );
    let index = server.archive().index();
    for instance in &corpus {
        let row = index.instance(&instance.sop_instance_uid).expect("indexed");
        assert_eq!(row.transfer_syntax_uid.as_str(), RLE);
    }
}
