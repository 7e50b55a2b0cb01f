//! Integrity against other callers: who may replace a stored instance
//! (the `allow_replace` device permission under `accept_latest`), and the
//! reconcile queue that holds an instance whose patient identity conflicts
//! with its stored study until a person accepts, merges or rejects it.

#[path = "support/find_scu.rs"]
#[allow(dead_code, clippy::duplicate_mod)]
mod find_scu;

use std::path::{Path, PathBuf};
use std::time::Duration;

use dicom_dictionary_std::tags;

use crate::support::cli::cli_ok;
use crate::support::corpus::{self, write_instance, Instance, InstanceSpec};
use crate::support::dcmtk;
use crate::support::server::{test_dir, Server};
use find_scu::{findscu, Model};

const TIMEOUT: Duration = Duration::from_secs(60);

/// An instance of `study`/`series` with this patient and pixel seed.
fn instance(
    dir: &Path,
    sop: &str,
    (study, series): (&str, &str),
    (patient_id, patient_name): (&str, &str),
    pixel_seed: u64,
) -> Instance {
    write_instance(
        &dir.join(format!("{sop}.{pixel_seed}.dcm")),
        &InstanceSpec {
            pixel_seed,
            patient_id: patient_id.into(),
            patient_name: patient_name.into(),
            study_date: "20240301".into(),
            study_uid: study.into(),
            series_uid: series.into(),
            sop_instance_uid: sop.into(),
            series_number: 1,
            instance_number: 1,
            rows: 16,
            columns: 16,
        },
    )
}

/// Stores `instance` calling as `calling_ae`; asserts it was acknowledged
/// with Success.
fn store_as(server: &Server, calling_ae: &str, instance: &Instance) {
    let out = dcmtk::store(
        server.addr(),
        server.ae_title(),
        &[&instance.path],
        &["-aet", calling_ae],
        TIMEOUT,
    );
    assert!(out.success(), "{out}");
    assert_eq!(dcmtk::acknowledged_files(&out.text()).len(), 1, "{out}");
}

fn stored_path(server: &Server, instance: &Instance) -> PathBuf {
    server.archive().expected_path(
        &instance.study_date,
        &instance.study_uid,
        &instance.series_uid,
        &instance.sop_instance_uid,
    )
}

/// The data set bytes of a Part 10 file.
fn data_set(path: &Path) -> Vec<u8> {
    let bytes = std::fs::read(path).expect("read a Part 10 file");
    bytes[corpus::dataset_offset(path) as usize..].to_vec()
}

#[test]
fn only_a_device_allowed_to_replace_replaces_a_stored_instance() {
    let dir = test_dir("replace-permission");
    let server = Server::builder(dir.path())
        .dicom_setting("duplicate_policy", "\"accept_latest\"")
        .setting(
            "devices",
            r#"[{ ae_title = "REPLACER", host = "127.0.0.1", port = 104, allow_replace = true },
                { ae_title = "MODALITY", host = "127.0.0.1", port = 104 }]"#,
        )
        .start();
    let uids = (
        "1.2.826.0.1.3680043.9.7433.50.1",
        "1.2.826.0.1.3680043.9.7433.50.1.1",
    );
    let sop = "1.2.826.0.1.3680043.9.7433.50.1.1.1";
    let patient = ("REPL-1", "REPLACE^ME");
    let first = instance(dir.path(), sop, uids, patient, 1);
    let second = instance(dir.path(), sop, uids, patient, 2);
    assert_ne!(data_set(&first.path), data_set(&second.path));
    store_as(&server, "MODALITY", &first);
    let path = stored_path(&server, &first);
    let original = std::fs::read(&path).expect("the stored file");
    let row = server.archive().index().instance(sop).expect("indexed");

    // An unknown caller and a known device without the permission: Success,
    // the stored bytes and row unchanged.
    for caller in ["INTRUDER", "MODALITY"] {
        store_as(&server, caller, &second);
        assert_eq!(
            std::fs::read(&path).expect("the stored file"),
            original,
            "{caller} replaced the stored instance"
        );
        assert_eq!(
            server.archive().index().instance(sop).expect("indexed"),
            row,
            "{caller} changed the row"
        );
    }

    // The device allowed to replace does.
    store_as(&server, "REPLACER", &second);
    assert_eq!(data_set(&path), data_set(&second.path), "not replaced");
    let replaced = server.archive().index().instance(sop).expect("indexed");
    assert_eq!(
        replaced.digest,
        blake3::hash(&std::fs::read(&path).unwrap())
            .to_hex()
            .to_string(),
        "the row does not describe the new file"
    );
    assert_eq!(server.archive().index().counts().instances, 1);
    let leftovers: Vec<_> = crate::support::files_under(&server.archive().fs1())
        .into_iter()
        .filter(|p| p.to_string_lossy().contains(".dup"))
        .collect();
    assert!(leftovers.is_empty(), "copies left aside: {leftovers:?}");
}

/// The SOP Instance UIDs C-FIND finds in a series, sorted.
fn find_images(server: &Server, work: &Path, (study, series): (&str, &str)) -> Vec<String> {
    let out = findscu(
        server.addr(),
        server.ae_title(),
        Model::Study,
        &[
            "QueryRetrieveLevel=IMAGE",
            &format!("StudyInstanceUID={study}"),
            &format!("SeriesInstanceUID={series}"),
            "SOPInstanceUID",
        ],
        &[],
        work,
    );
    let mut found: Vec<String> = out
        .column(tags::SOP_INSTANCE_UID)
        .into_iter()
        .flatten()
        .collect();
    found.sort();
    found
}

/// The PatientID and PatientName C-FIND gives a study.
fn find_patient(server: &Server, work: &Path, study: &str) -> (String, String) {
    let out = findscu(
        server.addr(),
        server.ae_title(),
        Model::Study,
        &[
            "QueryRetrieveLevel=STUDY",
            &format!("StudyInstanceUID={study}"),
            "PatientID",
            "PatientName",
        ],
        &[],
        work,
    );
    let ids = out.column(tags::PATIENT_ID);
    let names = out.column(tags::PATIENT_NAME);
    assert_eq!(ids.len(), 1, "one study expected");
    (
        ids[0].clone().unwrap_or_default(),
        names[0].clone().unwrap_or_default(),
    )
}

/// The reconcile queue as `imageserver reconcile list --json` prints it.
fn queue(dir: &Path, server: &Server) -> Vec<serde_json::Value> {
    cli_ok(dir, server.archive(), &["reconcile", "list", "--json"])
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect()
}

fn held_files(server: &Server) -> usize {
    crate::support::files_under(&server.archive().fs1())
        .into_iter()
        .filter(|p| p.to_string_lossy().contains(".dup"))
        .count()
}

#[test]
fn a_conflicting_patient_identity_is_held_until_a_person_decides() {
    let dir = test_dir("reconcile");
    let work = dir.path().join("find");
    let server = Server::start(dir.path());
    let study = "1.2.826.0.1.3680043.9.7433.51.1";
    let uids = (study, "1.2.826.0.1.3680043.9.7433.51.1.1");
    let sop = |n: u32| format!("1.2.826.0.1.3680043.9.7433.51.1.1.{n}");
    let stored_patient = ("PID-A", "PATIENT^ALPHA");
    let other_patient = ("PID-B", "PATIENT^BRAVO");
    let a = instance(dir.path(), &sop(1), uids, stored_patient, 1);
    store_as(&server, "MODALITY", &a);

    // A new instance of the study naming another patient: Success, held,
    // the study unchanged.
    let b = instance(dir.path(), &sop(2), uids, other_patient, 2);
    store_as(&server, "MODALITY", &b);
    assert_eq!(find_images(&server, &work, uids), [sop(1)]);
    assert_eq!(
        find_patient(&server, &work, study),
        ("PID-A".into(), "PATIENT^ALPHA".into())
    );
    let held = queue(dir.path(), &server);
    assert_eq!(held.len(), 1, "{held:?}");
    assert_eq!(held[0]["sop_instance_uid"], sop(2));
    assert_eq!(held[0]["patient_id"], "PID-B");
    assert_eq!(held_files(&server), 1);
    let id = held[0]["id"].to_string();
    let shown = cli_ok(dir.path(), server.archive(), &["reconcile", "show", &id]);
    assert!(
        shown.contains("PatientID=PID-B") && shown.contains("PatientID=PID-A"),
        "both identities: {shown}"
    );

    // Reject: the held file goes, nothing else changes.
    cli_ok(dir.path(), server.archive(), &["reconcile", "reject", &id]);
    assert!(queue(dir.path(), &server).is_empty());
    assert_eq!(held_files(&server), 0);
    assert_eq!(find_images(&server, &work, uids), [sop(1)]);

    // Merge: the instance takes the study's patient and is stored.
    let c = instance(dir.path(), &sop(3), uids, other_patient, 3);
    store_as(&server, "MODALITY", &c);
    let id = queue(dir.path(), &server)[0]["id"].to_string();
    cli_ok(dir.path(), server.archive(), &["reconcile", "merge", &id]);
    assert!(queue(dir.path(), &server).is_empty());
    assert_eq!(held_files(&server), 0);
    assert_eq!(find_images(&server, &work, uids), [sop(1), sop(3)]);
    assert_eq!(
        find_patient(&server, &work, study),
        ("PID-A".into(), "PATIENT^ALPHA".into())
    );
    let merged = dcmtk::dump(&stored_path(&server, &c));
    assert!(merged.stdout.contains("[PID-A]"), "{}", merged.stdout);
    assert!(!merged.stdout.contains("PID-B"), "{}", merged.stdout);

    // Accept: the study moves to the instance's patient (an edit, with its
    // history), and the instance is stored.
    let d = instance(dir.path(), &sop(4), uids, other_patient, 4);
    store_as(&server, "MODALITY", &d);
    let id = queue(dir.path(), &server)[0]["id"].to_string();
    cli_ok(dir.path(), server.archive(), &["reconcile", "accept", &id]);
    assert!(queue(dir.path(), &server).is_empty());
    assert_eq!(held_files(&server), 0);
    assert_eq!(find_images(&server, &work, uids), [sop(1), sop(3), sop(4)]);
    assert_eq!(
        find_patient(&server, &work, study),
        ("PID-B".into(), "PATIENT^BRAVO".into())
    );
    for instance in [&a, &c, &d] {
        let dump = dcmtk::dump(&stored_path(&server, instance));
        assert!(dump.stdout.contains("[PID-B]"), "{}", dump.stdout);
    }
    let history = cli_ok(dir.path(), server.archive(), &["study", "history", study]);
    assert!(
        history.contains("PatientID") && history.contains("reconcile"),
        "the accept is in the study's history: {history}"
    );
}
