//! C-MOVE and C-GET: movescu → storescp, getscu, and pynetdicom for pending
//! counts, C-CANCEL and role selection. Every delivered instance is checked
//! byte for byte (data set) against the file that was stored.

#[path = "support/retrieve_peers.rs"]
mod retrieve_peers;

use std::path::Path;
use std::time::Duration;

use crate::support::corpus::{generate_corpus, CorpusShape, Instance, Rng, CT_IMAGE_STORAGE};
use crate::support::dcmtk;
use crate::support::server::{down_port, free_port, test_dir, Server};
use retrieve_peers::{
    assert_received, dataset_bytes, device_toml, getscu, movescu, py_retrieve, secondary_capture,
    StoreScp, SECONDARY_CAPTURE,
};

/// 3 studies (one patient each) × 2 series × 3 instances; odd series 128×128.
const SHAPE: CorpusShape = CorpusShape {
    studies: 3,
    series_per_study: 2,
    instances_per_series: 3,
    small: (32, 32),
    large: (128, 128),
};

const EXPLICIT: &str = "1.2.840.10008.1.2.1";
const IMPLICIT: &str = "1.2.840.10008.1.2";

/// Stores `paths` into the server with storescu and checks it acknowledged all.
fn load(server: &Server, paths: &[&Path], n: usize) {
    let storescu = dcmtk::store(
        server.addr(),
        server.ae_title(),
        paths,
        &[],
        Duration::from_secs(120),
    );
    assert!(storescu.success(), "storescu failed:\n{storescu}");
    assert_eq!(
        dcmtk::acknowledged_files(&storescu.text()).len(),
        n,
        "storescu did not store every file:\n{storescu}"
    );
}

/// The corpus' studies in order, each with its instances.
fn studies(corpus: &[Instance]) -> Vec<Vec<&Instance>> {
    let mut studies: Vec<Vec<&Instance>> = Vec::new();
    for instance in corpus {
        match studies.last_mut() {
            Some(study) if study[0].study_uid == instance.study_uid => study.push(instance),
            _ => studies.push(vec![instance]),
        }
    }
    studies
}

fn key(name: &str, value: &str) -> String {
    format!("{name}={value}")
}

#[test]
fn movescu_to_storescp_at_every_level() {
    let dir = test_dir("move-levels");
    let corpus_dir = dir.path().join("corpus");
    let corpus = generate_corpus(&corpus_dir, 31, SHAPE);
    let dest = StoreScp::start("DEST", &dir.path().join("dest"), false);
    let server = Server::builder(dir.path())
        .setting("devices", format!("[{}]", dest.device()))
        .start();
    load(&server, &[&corpus_dir], corpus.len());
    let studies = studies(&corpus);
    let all: Vec<&Instance> = corpus.iter().collect();

    // (what, patient root, keys, expected instances)
    let series_1_1: Vec<&Instance> = studies[1]
        .iter()
        .copied()
        .filter(|i| i.series_uid == studies[1][3].series_uid)
        .collect();
    let images: Vec<&Instance> = vec![studies[2][0], studies[2][2]];
    let all_studies = studies
        .iter()
        .map(|s| s[0].study_uid.as_str())
        .collect::<Vec<_>>()
        .join("\\");
    let cases: Vec<(&str, bool, Vec<String>, Vec<&Instance>)> = vec![
        (
            "study level",
            false,
            vec![
                key("QueryRetrieveLevel", "STUDY"),
                key("StudyInstanceUID", &studies[0][0].study_uid),
            ],
            studies[0].clone(),
        ),
        (
            "series level",
            false,
            vec![
                key("QueryRetrieveLevel", "SERIES"),
                key("StudyInstanceUID", &studies[1][0].study_uid),
                key("SeriesInstanceUID", &series_1_1[0].series_uid),
            ],
            series_1_1.clone(),
        ),
        (
            "image level, two of a series",
            false,
            vec![
                key("QueryRetrieveLevel", "IMAGE"),
                key("StudyInstanceUID", &studies[2][0].study_uid),
                key("SeriesInstanceUID", &studies[2][0].series_uid),
                key(
                    "SOPInstanceUID",
                    &format!(
                        "{}\\{}",
                        images[0].sop_instance_uid, images[1].sop_instance_uid
                    ),
                ),
            ],
            images.clone(),
        ),
        (
            "patient root, patient level",
            true,
            // generate_corpus: one patient per study, PID<seed>-<study index>
            vec![
                key("QueryRetrieveLevel", "PATIENT"),
                key("PatientID", "PID31-1"),
            ],
            studies[1].clone(),
        ),
        (
            "every study in one UID list",
            false,
            vec![
                key("QueryRetrieveLevel", "STUDY"),
                key("StudyInstanceUID", &all_studies),
            ],
            all.clone(),
        ),
        (
            "no match",
            false,
            vec![
                key("QueryRetrieveLevel", "STUDY"),
                key("StudyInstanceUID", "1.2.3.4.5.6.7"),
            ],
            Vec::new(),
        ),
    ];
    for (what, patient_root, keys, expected) in cases {
        dest.clear();
        let run = movescu(
            server.addr(),
            server.ae_title(),
            "DEST",
            patient_root,
            &keys,
        );
        assert!(run.tool.success(), "{what}: movescu failed:\n{}", run.tool);
        assert_eq!(
            run.status,
            Some(0x0000),
            "{what}: final status:\n{}",
            run.tool
        );
        assert_eq!(
            run.completed,
            Some(expected.len() as u16),
            "{what}:\n{}",
            run.tool
        );
        assert_eq!(run.failed, Some(0), "{what}");
        assert_eq!(run.warning, Some(0), "{what}");
        assert_eq!(
            run.pending,
            expected.len(),
            "{what}: one pending per sub-operation"
        );
        assert_received(&dest.received(), &expected, what);
    }

    // An unknown destination, and the caller itself (registered as an
    // unknown device without a port, or not at all): A801, nothing sent.
    for destination in ["NOWHERE", dcmtk::CALLING_AE] {
        dest.clear();
        let run = movescu(
            server.addr(),
            server.ae_title(),
            destination,
            false,
            &[
                key("QueryRetrieveLevel", "STUDY"),
                key("StudyInstanceUID", &studies[0][0].study_uid),
            ],
        );
        assert_eq!(run.status, Some(0xA801), "{destination}:\n{}", run.tool);
        assert_eq!(run.pending, 0);
        assert!(dest.received().is_empty());
    }

    // An identifier without its unique key: A900.
    let run = movescu(
        server.addr(),
        server.ae_title(),
        "DEST",
        false,
        &[
            key("QueryRetrieveLevel", "SERIES"),
            key("StudyInstanceUID", &studies[0][0].study_uid),
        ],
    );
    assert_eq!(
        run.status,
        Some(0xA900),
        "missing SeriesInstanceUID:\n{}",
        run.tool
    );
    assert!(dest.received().is_empty());
}

#[test]
fn moves_to_unreachable_destinations_fail_every_sub_operation() {
    let dir = test_dir("move-unreachable");
    let corpus_dir = dir.path().join("corpus");
    let corpus = generate_corpus(&corpus_dir, 32, CorpusShape::uniform(1, 1, 4, (16, 16)));
    let refuser = StoreScp::start("REFUSER", &dir.path().join("refuser"), true);
    let closed_port = down_port();
    let server = Server::builder(dir.path())
        .setting(
            "devices",
            format!(
                "[{}, {}]",
                refuser.device(),
                device_toml("CLOSED", closed_port)
            ),
        )
        .start();
    load(&server, &[&corpus_dir], corpus.len());
    let mut uids: Vec<String> = corpus.iter().map(|i| i.sop_instance_uid.clone()).collect();
    uids.sort();

    for destination in ["REFUSER", "CLOSED"] {
        let run = movescu(
            server.addr(),
            server.ae_title(),
            destination,
            false,
            &[
                key("QueryRetrieveLevel", "STUDY"),
                key("StudyInstanceUID", &corpus[0].study_uid),
            ],
        );
        assert_eq!(run.status, Some(0xA702), "{destination}:\n{}", run.tool);
        assert_eq!(run.completed, Some(0), "{destination}");
        assert_eq!(run.failed, Some(4), "{destination}");
        let mut failed = run.failed_uids.clone();
        failed.sort();
        assert_eq!(failed, uids, "{destination}: FailedSOPInstanceUIDList");
    }
    assert!(refuser.received().is_empty());
}

#[test]
fn getscu_receives_a_study_byte_identical() {
    let dir = test_dir("get-getscu");
    let corpus_dir = dir.path().join("corpus");
    let corpus = generate_corpus(&corpus_dir, 33, SHAPE);
    let server = Server::start(dir.path());
    load(&server, &[&corpus_dir], corpus.len());
    let studies = studies(&corpus);

    let out = dir.path().join("got");
    let run = getscu(
        server.addr(),
        server.ae_title(),
        &[
            key("QueryRetrieveLevel", "STUDY"),
            key("StudyInstanceUID", &studies[1][0].study_uid),
        ],
        &out,
    );
    assert!(run.tool.success(), "getscu failed:\n{}", run.tool);
    assert_eq!(run.status, Some(0x0000), "{}", run.tool);
    assert_eq!(run.completed, Some(6), "{}", run.tool);
    assert_eq!(run.failed, Some(0));
    let received = crate::support::received_by_uid(&out);
    assert_received(&received, &studies[1], "C-GET study");
}

#[test]
fn pending_counts_and_cancel_of_a_move() {
    let dir = test_dir("move-pending-cancel");
    let corpus_dir = dir.path().join("corpus");
    let corpus = generate_corpus(&corpus_dir, 34, CorpusShape::uniform(2, 2, 10, (16, 16)));
    let dest = StoreScp::start("DEST", &dir.path().join("dest"), false);
    let py_port = free_port();
    let server = Server::builder(dir.path())
        .setting(
            "devices",
            format!("[{}, {}]", dest.device(), device_toml("PYDEST", py_port)),
        )
        .start();
    load(&server, &[&corpus_dir], corpus.len());
    let study_list = format!("{}\\{}", corpus[0].study_uid, corpus[39].study_uid);
    let total = corpus.len() as u16;

    // Pending responses: remaining falls by one, completed rises by one.
    let run = py_retrieve(
        server.addr(),
        server.ae_title(),
        "move",
        &[
            "--dest".into(),
            "DEST".into(),
            "--key".into(),
            key("QueryRetrieveLevel", "STUDY"),
            "--key".into(),
            key("StudyInstanceUID", &study_list),
        ],
    );
    let pending = run.pending();
    assert_eq!(pending.len(), corpus.len(), "{}", run.tool);
    for (n, response) in pending.iter().enumerate() {
        let done = n as u16 + 1;
        assert_eq!(response.remaining, Some(total - done), "pending {done}");
        assert_eq!(response.completed, Some(done), "pending {done}");
        assert_eq!((response.failed, response.warning), (Some(0), Some(0)));
    }
    let last = run.last();
    assert_eq!(last.status, 0x0000);
    assert_eq!(
        (last.completed, last.failed, last.warning),
        (Some(total), Some(0), Some(0))
    );
    assert_eq!(last.remaining, None, "no remaining count in a success");
    let all: Vec<&Instance> = corpus.iter().collect();
    assert_received(&dest.received(), &all, "pynetdicom C-MOVE");

    // C-CANCEL after the third pending response: the destination holds the
    // fourth store until the cancel is on its way, so it arrives while most
    // sub-operations remain (the exact count depends on when it lands).
    let received = dir.path().join("pydest");
    let run = py_retrieve(
        server.addr(),
        server.ae_title(),
        "move",
        &[
            "--dest".into(),
            "PYDEST".into(),
            "--scp-port".into(),
            py_port.to_string(),
            "--scp-class".into(),
            CT_IMAGE_STORAGE.into(),
            "--out".into(),
            received.display().to_string(),
            "--cancel-after".into(),
            "3".into(),
            "--key".into(),
            key("QueryRetrieveLevel", "STUDY"),
            "--key".into(),
            key("StudyInstanceUID", &study_list),
        ],
    );
    let last = run.last();
    assert_eq!(
        last.status, 0xFE00,
        "final status after C-CANCEL:\n{}",
        run.tool
    );
    let completed = last.completed.expect("completed count");
    assert!(
        (4..total).contains(&completed),
        "{completed} sub-operations before the cancel took effect:\n{}",
        run.tool
    );
    assert_eq!(
        last.remaining,
        Some(total - completed),
        "remaining after cancel"
    );
    assert_eq!(last.failed, Some(0));
    assert_eq!(run.stored.len(), usize::from(completed), "{}", run.tool);
    // The script's C-MOVE has message id 9.
    let originator = format!("{} 9", dcmtk::CALLING_AE);
    assert_eq!(
        run.originators,
        vec![originator; run.stored.len()],
        "move originator"
    );
    assert!(run.stored.len() < corpus.len());
    for uid in &run.stored {
        let source = corpus
            .iter()
            .find(|i| &i.sop_instance_uid == uid)
            .expect("a corpus instance");
        let bytes = std::fs::read(received.join(format!("{uid}.ds"))).expect("received data set");
        assert!(bytes == dataset_bytes(&source.path), "data set of {uid}");
    }
}

#[test]
fn get_with_role_selection_and_a_transfer_syntax_mismatch() {
    let dir = test_dir("get-roles");
    let corpus_dir = dir.path().join("corpus");
    let corpus = generate_corpus(&corpus_dir, 35, CorpusShape::uniform(1, 1, 4, (16, 16)));
    // A Secondary Capture in the same study, also Explicit VR Little Endian.
    let mut rng = Rng::new(3500);
    let sc = secondary_capture(
        &dir.path().join("sc.dcm"),
        &corpus[0],
        ("PID35-0", "TEST^PATIENT0^SEED35"),
        &rng.uid(),
        &rng.uid(),
    );
    let server = Server::start(dir.path());
    load(&server, &[&corpus_dir, &sc.path], corpus.len() + 1);
    let keys = [
        "--key".to_string(),
        key("QueryRetrieveLevel", "STUDY"),
        "--key".to_string(),
        key("StudyInstanceUID", &corpus[0].study_uid),
    ];
    let mut ct_uids: Vec<String> = corpus.iter().map(|i| i.sop_instance_uid.clone()).collect();
    ct_uids.sort();

    // CT only as Implicit VR LE (stored Explicit: not sent), SC as stored.
    let out = dir.path().join("got");
    let mut args = vec![
        "--context".to_string(),
        format!("{CT_IMAGE_STORAGE}={IMPLICIT}"),
        "--context".to_string(),
        format!("{SECONDARY_CAPTURE}={EXPLICIT}"),
        "--out".to_string(),
        out.display().to_string(),
    ];
    args.extend(keys.iter().cloned());
    let run = py_retrieve(server.addr(), server.ae_title(), "get", &args);
    let last = run.last();
    assert_eq!(last.status, 0xB000, "{}", run.tool);
    assert_eq!(
        (last.completed, last.failed, last.warning),
        (Some(1), Some(4), Some(0)),
        "{}",
        run.tool
    );
    assert_eq!(run.pending().len(), 5, "one pending per sub-operation");
    let mut failed = run.failed_uids.clone();
    failed.sort();
    assert_eq!(failed, ct_uids, "FailedSOPInstanceUIDList");
    assert_eq!(run.stored, vec![sc.sop_instance_uid.clone()]);
    let bytes = std::fs::read(out.join(format!("{}.ds", sc.sop_instance_uid))).expect("SC");
    assert!(bytes == dataset_bytes(&sc.path), "the SC data set differs");

    // Without the SCP role nothing can be sent: every sub-operation fails.
    let mut args = vec![
        "--context".to_string(),
        format!("{CT_IMAGE_STORAGE}={EXPLICIT}"),
        "--context".to_string(),
        format!("{SECONDARY_CAPTURE}={EXPLICIT}"),
        "--no-role".to_string(),
    ];
    args.extend(keys.iter().cloned());
    let run = py_retrieve(server.addr(), server.ae_title(), "get", &args);
    let last = run.last();
    assert_eq!(last.status, 0xA702, "{}", run.tool);
    assert_eq!((last.completed, last.failed), (Some(0), Some(5)));
    assert!(run.stored.is_empty());
    assert_eq!(run.failed_uids.len(), 5);

    // Both classes in their stored syntax: everything arrives.
    let out = dir.path().join("got-all");
    let mut args = vec![
        "--context".to_string(),
        format!("{CT_IMAGE_STORAGE}={EXPLICIT}"),
        "--context".to_string(),
        format!("{SECONDARY_CAPTURE}={EXPLICIT},{IMPLICIT}"),
        "--out".to_string(),
        out.display().to_string(),
    ];
    args.extend(keys.iter().cloned());
    let run = py_retrieve(server.addr(), server.ae_title(), "get", &args);
    let last = run.last();
    assert_eq!(last.status, 0x0000, "{}", run.tool);
    assert_eq!((last.completed, last.failed), (Some(5), Some(0)));
    for instance in corpus.iter().chain([&sc]) {
        let uid = &instance.sop_instance_uid;
        let bytes = std::fs::read(out.join(format!("{uid}.ds"))).expect("received data set");
        assert!(bytes == dataset_bytes(&instance.path), "data set of {uid}");
    }
}
