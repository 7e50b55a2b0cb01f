//! Series metadata (DICOM JSON, bulk data stripped) through a running
//! server, on the selected backend: StudyProcess writes one file per series
//! once a study is quiet; pydicom reads every object back and finds the
//! stored files' attributes, Pixel Data only as a BulkDataURI; the library
//! reader serves the same bytes; reprocess and the integrity check ignore
//! the files and a reprocess rewrites them identically; an edit leaves no
//! old value in them; import does not take them for instances; delete
//! removes them with the study.
//!
//! Outcomes are asserted; the bounds only stop a test that would hang.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use imageserver_core::config::Config;
use imageserver_core::model::Uid;
use imageserver_core::server::{open_index, ServerBuilder};
use imageserver_core::services::studies::{Studies, StudyError};
use imageserver_core::services::Partition;

use crate::support::cli::{self, cli_ok, load, BOUND};
use crate::support::corpus::{self, generate_corpus, CorpusShape, Instance};
use crate::support::server::{test_dir, Archive, Server, SERVER_AE};
use crate::support::{dcmtk, files_under};

/// The pydicom checker of one series metadata file.
const CHECK_METADATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/py/check_metadata.py");

/// Waits until every study of `studies` has a completed study_process item
/// and none is left pending or running.
fn wait_study_process(root: &Path, archive: &Archive, studies: &BTreeSet<&str>) {
    let deadline = Instant::now() + BOUND;
    loop {
        let items: Vec<serde_json::Value> = cli_ok(
            root,
            archive,
            &["workqueue", "list", "--type", "study_process", "--json"],
        )
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
        let done: BTreeSet<&str> = items
            .iter()
            .filter(|i| i["status"] == "completed")
            .filter_map(|i| i["study_uid"].as_str())
            .collect();
        if items.iter().all(|i| i["status"] == "completed") && &done == studies {
            return;
        }
        assert!(Instant::now() < deadline, "study_process items: {items:#?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The stored file of an instance.
fn stored(archive: &Archive, instance: &Instance) -> PathBuf {
    archive.expected_path(
        &instance.study_date,
        &instance.study_uid,
        &instance.series_uid,
        &instance.sop_instance_uid,
    )
}

/// The study folder of an instance's study.
fn study_dir(archive: &Archive, instance: &Instance) -> PathBuf {
    stored(archive, instance)
        .parent()
        .and_then(Path::parent)
        .expect("the study folder")
        .to_path_buf()
}

/// The metadata file of a series.
fn metadata_path(archive: &Archive, instance: &Instance) -> PathBuf {
    study_dir(archive, instance)
        .join(".metadata")
        .join(format!("{}.json", instance.series_uid))
}

/// The corpus by study, then series.
fn by_series(corpus: &[Instance]) -> BTreeMap<&str, BTreeMap<&str, Vec<&Instance>>> {
    let mut studies: BTreeMap<&str, BTreeMap<&str, Vec<&Instance>>> = BTreeMap::new();
    for instance in corpus {
        studies
            .entry(&instance.study_uid)
            .or_default()
            .entry(&instance.series_uid)
            .or_default()
            .push(instance);
    }
    studies
}

/// The `Value` of a top-level attribute of every object of a metadata file.
fn column<'a>(objects: &'a [serde_json::Value], tag: &str) -> Vec<&'a serde_json::Value> {
    objects.iter().map(|o| &o[tag]["Value"][0]).collect()
}

/// Checks one series' metadata file against the corpus and, with pydicom,
/// against the stored files; returns the objects.
fn check_series(archive: &Archive, series: &[&Instance]) -> Vec<serde_json::Value> {
    let path = metadata_path(archive, series[0]);
    let bytes = std::fs::read(&path)
        .unwrap_or_else(|e| panic!("read the metadata file {}: {e}", path.display()));
    let json: serde_json::Value = serde_json::from_slice(&bytes).expect("the metadata is JSON");
    let objects = json.as_array().expect("a JSON array").clone();
    assert_eq!(objects.len(), series.len(), "{}", path.display());
    let sops: BTreeSet<&str> = column(&objects, "00080018")
        .into_iter()
        .filter_map(|v| v.as_str())
        .collect();
    let expected: BTreeSet<&str> = series.iter().map(|i| i.sop_instance_uid.as_str()).collect();
    assert_eq!(sops, expected, "SOP Instance UIDs in {}", path.display());
    let numbers: Vec<i64> = column(&objects, "00200013")
        .into_iter()
        .filter_map(|v| v.as_i64())
        .collect();
    assert_eq!(numbers, (1..=series.len() as i64).collect::<Vec<_>>());

    let mut command = Command::new("python3");
    command.arg(CHECK_METADATA).arg(&path);
    for instance in series {
        command.arg(stored(archive, instance));
    }
    let output = dcmtk::run(command, BOUND);
    let report: serde_json::Value = serde_json::from_str(&output.stdout)
        .unwrap_or_else(|e| panic!("check_metadata.py printed no JSON ({e}):\n{output}"));
    assert!(
        output.success() && report["errors"].as_array().is_some_and(Vec::is_empty),
        "pydicom disagrees with {}:\n{output}",
        path.display(),
    );
    assert_eq!(report["instances"], series.len());
    let uris: BTreeSet<&str> = report["bulk_uris"]
        .as_array()
        .expect("bulk_uris")
        .iter()
        .filter_map(|u| u.as_str())
        .collect();
    let expected: BTreeSet<String> = series
        .iter()
        .map(|i| {
            format!(
                "studies/{}/series/{}/instances/{}/bulk/7FE00010",
                i.study_uid, i.series_uid, i.sop_instance_uid
            )
        })
        .collect();
    assert_eq!(
        uris,
        expected.iter().map(String::as_str).collect(),
        "{}",
        path.display()
    );
    objects
}

/// The study operations in this process, on the server's index and files.
fn open_studies(root: &Path, archive: &Archive) -> (Studies, Partition) {
    let mut toml = format!("data_dir = {:?}\n", archive.data_dir());
    if let Some(url) = archive.db_url() {
        toml.push_str(&format!("db = {url:?}\n"));
    }
    let path = root.join("in-process.toml");
    std::fs::write(&path, toml).expect("write the config");
    let settings = Config::from_file(&path).unwrap().validate().unwrap();
    let db = open_index(&settings.db_url).expect("open the index");
    let opened = ServerBuilder::new(settings)
        .index(db.clone())
        .open()
        .expect("open the archive");
    let partition = opened.default_partition().partition.clone();
    assert_eq!(partition.ae_title.as_str(), SERVER_AE);
    (Studies::new(db, opened.storage().clone()), partition)
}

fn uid(text: &str) -> Uid {
    Uid::parse(text).unwrap()
}

#[test]
fn study_process_writes_series_metadata_that_follows_edits_and_goes_with_delete() {
    let dir = test_dir("metadata");
    let corpus_dir = dir.path().join("corpus");
    // Pixel Data of 512 bytes (below the inline threshold: bulk anyway) and
    // of 3200 bytes.
    let shape = CorpusShape {
        studies: 2,
        series_per_study: 3,
        instances_per_series: 2,
        small: (16, 16),
        large: (40, 40),
    };
    let corpus = generate_corpus(&corpus_dir, 801, shape);
    let server = Server::builder(dir.path())
        .setting(
            "workqueue",
            "{ study_process_delay_secs = 1, poll_secs = 1 }",
        )
        .start();
    load(&server, &corpus_dir, corpus.len());
    let archive = server.archive();
    let studies = by_series(&corpus);
    wait_study_process(dir.path(), archive, &studies.keys().copied().collect());

    // One file per series, nothing else in the folder; pydicom agrees.
    for series in studies.values() {
        let first = series.values().next().unwrap()[0];
        let metadata_dir = study_dir(archive, first).join(".metadata");
        let files: BTreeSet<PathBuf> = files_under(&metadata_dir).into_iter().collect();
        let expected: BTreeSet<PathBuf> = series
            .values()
            .map(|instances| metadata_path(archive, instances[0]))
            .collect();
        assert_eq!(files, expected);
        for instances in series.values() {
            let objects = check_series(archive, instances);
            let names = column(&objects, "00100010");
            assert!(
                names.iter().all(|n| n["Alphabetic"]
                    .as_str()
                    .is_some_and(|n| n.starts_with("TEST^PATIENT") && n.ends_with("^SEED801"))),
                "{names:?}"
            );
        }
    }

    // The library reader serves the file's bytes; an unknown series has none.
    let (ops, partition) = open_studies(dir.path(), archive);
    let study = corpus[0].study_uid.clone();
    let first_series = &studies[study.as_str()];
    let before: BTreeMap<&str, Vec<u8>> = first_series
        .iter()
        .map(|(series_uid, instances)| {
            let bytes = std::fs::read(metadata_path(archive, instances[0])).unwrap();
            let served = ops
                .series_metadata(&partition, &uid(&study), &uid(series_uid))
                .unwrap();
            assert_eq!(served.as_deref(), Some(&bytes[..]), "{series_uid}");
            (*series_uid, bytes)
        })
        .collect();
    assert_eq!(
        ops.series_metadata(&partition, &uid(&study), &uid("1.2.3.4.5"))
            .unwrap(),
        None
    );

    // The integrity check and reprocess do not take the files for
    // instances; reprocess rewrites them, byte for byte the same.
    let check = cli_ok(dir.path(), archive, &["study", "check", &study]);
    assert!(
        !check.contains(".metadata") && !check.contains("not in the index"),
        "{check}"
    );
    let reprocess = cli_ok(dir.path(), archive, &["study", "reprocess", &study]);
    assert!(!reprocess.contains("skipped"), "{reprocess}");
    for (series_uid, bytes) in &before {
        let instances = &first_series[series_uid];
        assert_eq!(
            &std::fs::read(metadata_path(archive, instances[0])).unwrap(),
            bytes,
            "metadata of {series_uid} after reprocess"
        );
    }

    // Import does not take them for instances either.
    let incoming = dir.path().join("incoming");
    let copy = cp_r(&study_dir(archive, &corpus[0]), &incoming);
    assert!(copy.success(), "{copy}");
    let import = cli_ok(
        dir.path(),
        archive,
        &[
            "import",
            "--quiet",
            "--aet",
            SERVER_AE,
            incoming.to_str().unwrap(),
        ],
    );
    cli::assert_import_summary(&import, 0, 6, 0);

    // An edit rewrites the metadata: the old name is nowhere in it.
    cli_ok(
        dir.path(),
        archive,
        &["study", "edit", &study, "--set", "PatientName=EDITED^AFTER"],
    );
    for (series_uid, instances) in first_series {
        let path = metadata_path(archive, instances[0]);
        let text = std::fs::read_to_string(&path).expect("metadata after the edit");
        assert!(!text.contains("TEST^PATIENT"), "{series_uid}: {text}");
        let objects = check_series(archive, instances);
        for name in column(&objects, "00100010") {
            assert_eq!(name["Alphabetic"], "EDITED^AFTER", "{series_uid}");
        }
    }

    // Delete takes the metadata with the study; the other study keeps its.
    let folder = study_dir(archive, &corpus[0]);
    assert!(folder.join(".metadata").is_dir());
    cli_ok(
        dir.path(),
        archive,
        &["study", "delete", &study, "--reason", "metadata test"],
    );
    assert!(!folder.exists(), "left: {:?}", files_under(&folder));
    assert!(matches!(
        ops.series_metadata(&partition, &uid(&study), &uid(&corpus[0].series_uid)),
        Err(StudyError::UnknownStudy { .. })
    ));
    let other = corpus.iter().find(|i| i.study_uid != study).unwrap();
    let other_series = &studies[other.study_uid.as_str()];
    for instances in other_series.values() {
        check_series(archive, instances);
    }

    // A reprocess that finds no instance file left removes the metadata:
    // nothing may describe instances that are gone.
    let other_folder = study_dir(archive, other);
    for instances in other_series.values() {
        for instance in instances {
            std::fs::remove_file(stored(archive, instance)).unwrap();
        }
    }
    cli_ok(
        dir.path(),
        archive,
        &["study", "reprocess", &other.study_uid, "--now"],
    );
    let left: Vec<PathBuf> = files_under(&other_folder)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    assert!(left.is_empty(), "metadata left: {left:?}");
}

/// `cp -r FROM TO`.
fn cp_r(from: &Path, to: &Path) -> dcmtk::ToolOutput {
    let mut command = Command::new("cp");
    command.arg("-r").arg(from).arg(to);
    dcmtk::run(command, Duration::from_secs(60))
}

/// An instance arriving later rewrites the metadata of its own series only:
/// the other series' files are left as they were (StudyProcess does not
/// read a large study whole again for every batch of arrivals).
#[test]
fn a_later_arrival_rewrites_only_its_series_metadata() {
    let dir = test_dir("metadata-later");
    let corpus_dir = dir.path().join("corpus");
    let seed = 802;
    let corpus = generate_corpus(&corpus_dir, seed, CorpusShape::uniform(1, 2, 2, (16, 16)));
    let server = Server::builder(dir.path())
        .setting(
            "workqueue",
            "{ study_process_delay_secs = 1, poll_secs = 1 }",
        )
        .start();
    load(&server, &corpus_dir, corpus.len());
    let archive = server.archive();
    let study = corpus[0].study_uid.as_str();
    wait_study_process(dir.path(), archive, &BTreeSet::from([study]));
    let (first, second) = (&corpus[0], &corpus[2]);
    assert_ne!(first.series_uid, second.series_uid);
    let modified = |instance: &Instance| {
        std::fs::metadata(metadata_path(archive, instance))
            .and_then(|m| m.modified())
            .expect("the series has a metadata file")
    };
    let (first_before, second_before) = (modified(first), modified(second));
    let second_bytes = std::fs::read(metadata_path(archive, second)).unwrap();

    // A third instance of the first series.
    let late = corpus::write_instance(
        &dir.path().join("late.dcm"),
        &corpus::InstanceSpec {
            pixel_seed: 7,
            patient_id: format!("PID{seed}-0"),
            patient_name: format!("TEST^PATIENT0^SEED{seed}"),
            study_date: first.study_date.clone(),
            study_uid: study.to_string(),
            series_uid: first.series_uid.clone(),
            sop_instance_uid: format!("{}.3", first.series_uid),
            series_number: 1,
            instance_number: 3,
            rows: 16,
            columns: 16,
        },
    );
    let storescu = dcmtk::store(server.addr(), server.ae_title(), &[&late.path], &[], BOUND);
    assert!(storescu.success(), "{storescu}");
    let deadline = Instant::now() + BOUND;
    while modified(first) == first_before {
        assert!(
            Instant::now() < deadline,
            "the first series' metadata was not rewritten"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    wait_study_process(dir.path(), archive, &BTreeSet::from([study]));

    let mut first_series: Vec<&Instance> = corpus
        .iter()
        .filter(|i| i.series_uid == first.series_uid)
        .collect();
    first_series.push(&late);
    check_series(archive, &first_series);
    assert_eq!(
        modified(second),
        second_before,
        "the other series was rewritten"
    );
    assert_eq!(
        std::fs::read(metadata_path(archive, second)).unwrap(),
        second_bytes
    );
}
