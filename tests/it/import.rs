//! `imageserver import` of a folder with a bad file in it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::support::cli::assert_import_summary;
use crate::support::corpus::{
    generate_corpus, single_instance, write_instance, CorpusShape, Instance, InstanceSpec, Rng,
};
use crate::support::dcmtk::{self, ToolOutput};
use crate::support::server::{test_dir, Archive, BINARY, SERVER_AE};
use crate::support::{archived_files, assert_archived, entries_under};

/// Runs `imageserver import --data DATA [--db URL] --aet IMAGESERVER PATH`
/// (bounded).
fn import(archive: &Archive, path: &Path) -> ToolOutput {
    let mut command = Command::new(BINARY);
    command
        .args(["import", "--quiet"])
        .arg("--data")
        .arg(archive.data_dir())
        .args(archive.db_args())
        .args(["--aet", SERVER_AE])
        .arg(path)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1");
    dcmtk::run(command, Duration::from_secs(180))
}

/// Copies the corpus files and one non-DICOM file into `incoming`; returns
/// the bad file's path.
fn fill_incoming(incoming: &Path, corpus: &[Instance]) -> std::path::PathBuf {
    for (instance_idx, instance) in corpus.iter().enumerate() {
        let sub = incoming.join(format!("batch{}", instance_idx % 3));
        std::fs::create_dir_all(&sub).expect("create an incoming folder");
        std::fs::copy(&instance.path, sub.join(format!("{instance_idx}.dcm")))
            .expect("copy an instance");
    }
    let garbage = incoming.join("batch0").join("garbage.dcm");
    std::fs::write(&garbage, b"this is not a DICOM file\n".repeat(40)).expect("write garbage");
    garbage
}

#[test]
fn import_indexes_a_folder_and_leaves_the_bad_file_in_place() {
    let dir = test_dir("import");
    let corpus = generate_corpus(
        &dir.path().join("corpus"),
        5,
        CorpusShape::uniform(2, 2, 3, (64, 64)),
    );
    let data = dir.path().join("data");
    let archive = Archive::new(&data, SERVER_AE);

    let incoming = dir.path().join("incoming");
    let garbage = fill_incoming(&incoming, &corpus);
    let first = import(&archive, &incoming);

    assert!(!first.timed_out(), "import hung:\n{first}");
    assert_eq!(
        first.status.and_then(|s| s.code()),
        Some(1),
        "exit code with a rejected file:\n{first}"
    );
    let summary = first.text();
    assert_import_summary(&summary, corpus.len(), 0, 1);
    assert!(
        summary.contains("garbage.dcm"),
        "the rejected file is not named:\n{first}"
    );
    assert!(garbage.is_file(), "the rejected file was not left in place");

    let index = archive.index();
    for instance in &corpus {
        assert_archived(&archive, &index, instance, None);
    }
    assert_eq!(index.counts().instances, corpus.len() as u64);
    assert_eq!(archived_files(&archive).len(), corpus.len());

    // The same files again, from a fresh copy: all already present.
    let incoming_again = dir.path().join("incoming-again");
    fill_incoming(&incoming_again, &corpus);
    let second = import(&archive, &incoming_again);

    assert_eq!(second.status.and_then(|s| s.code()), Some(1), "{second}");
    let summary = second.text();
    assert_import_summary(&summary, 0, corpus.len(), 1);
    assert_eq!(archive.index().counts().instances, corpus.len() as u64);
    assert_eq!(archived_files(&archive).len(), corpus.len());
}

#[test]
fn import_of_only_good_files_exits_zero() {
    let dir = test_dir("import-clean");
    let corpus = generate_corpus(
        &dir.path().join("corpus"),
        6,
        CorpusShape::uniform(1, 1, 4, (32, 32)),
    );
    let data = dir.path().join("data");
    let archive = Archive::new(&data, SERVER_AE);

    let output = import(&archive, &dir.path().join("corpus"));

    assert!(output.success(), "import failed:\n{output}");
    assert_import_summary(&output.text(), 4, 0, 0);
    let index = archive.index();
    for instance in &corpus {
        assert_archived(&archive, &index, instance, None);
    }
}

#[test]
fn import_rejects_a_path_trick_in_a_uid_and_writes_nothing_for_it() {
    let dir = test_dir("import-hostile");
    let incoming = dir.path().join("incoming");
    std::fs::create_dir_all(&incoming).expect("create the incoming folder");
    let good = single_instance(&incoming.join("good.dcm"), 21, 32, 32);
    let mut rng = Rng::new(22);
    let hostile_path = incoming.join("hostile.dcm");
    write_instance(
        &hostile_path,
        &InstanceSpec {
            pixel_seed: 1,
            patient_id: "HOSTILE".to_string(),
            patient_name: "HOSTILE^FILE".to_string(),
            study_date: "20240101".to_string(),
            study_uid: "1.2.3/../../../../x".to_string(),
            series_uid: rng.uid(),
            sop_instance_uid: rng.uid(),
            series_number: 1,
            instance_number: 1,
            rows: 8,
            columns: 8,
        },
    );
    let data = dir.path().join("data");
    let archive = Archive::new(&data, SERVER_AE);
    // Where the trick points, counted from the study folder up: inside the
    // data directory, beside it, or beside the test directory.
    let before = entries_under(dir.path());
    let beside = dir.path().parent().expect("a parent").join("x");
    let existed_beside = beside.exists();

    let output = import(&archive, &incoming);

    assert_eq!(output.status.and_then(|s| s.code()), Some(1), "{output}");
    assert_import_summary(&output.text(), 1, 0, 1);
    assert!(
        hostile_path.is_file(),
        "the rejected file was not left in place"
    );
    assert_archived(&archive, &archive.index(), &good, None);
    assert_eq!(archived_files(&archive).len(), 1);
    // Everything the import created (files and folders) is the archive's:
    // under the data directory, and nothing named after the trick.
    let created: Vec<PathBuf> = entries_under(dir.path())
        .difference(&before)
        .cloned()
        .collect();
    for path in &created {
        assert!(
            path.starts_with(&data),
            "the import created {} outside the data directory",
            path.display()
        );
        assert!(
            !path.components().any(|c| c.as_os_str() == "x"),
            "a path trick created {}",
            path.display()
        );
    }
    assert!(
        existed_beside || !beside.exists(),
        "a path trick created {}",
        beside.display()
    );
}
