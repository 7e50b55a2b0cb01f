//! The HSM archive: a study packed, purged to nearline (C-FIND still finds
//! it), restored by the C-MOVE that names it (pending responses meanwhile)
//! and by a patient-level C-MOVE of its patient, and delivered
//! byte-identical; a new instance for a nearline study
//! restores it first; kill -9 in the middle of archive, purge and restore
//! leaves exactly one good copy as the study's location.

#[path = "support/retrieve_peers.rs"]
#[allow(dead_code, clippy::duplicate_mod)]
mod retrieve_peers;

#[path = "support/find_scu.rs"]
#[allow(dead_code, clippy::duplicate_mod)]
mod find_scu;

use std::path::{Path, PathBuf};

use crate::support::cli::{cli, cli_ok, wait_log, wait_work_items, BOUND};
use crate::support::corpus::{generate_corpus, CorpusShape, Instance};
use crate::support::dcmtk;
use crate::support::lifecycle::{instance_files, store_all};
use crate::support::server::{test_dir, Server, ServerBuilder};
use crate::support::{files_under, received_by_uid};
use find_scu::{findscu, Model};
use retrieve_peers::{assert_received, getscu, movescu, StoreScp};

const FAULT_ENV: &str = "IMAGESERVER_FAULT_PAUSE_ARCHIVE_AT";

/// The packs under the archive root.
fn packs(root: &Path) -> Vec<PathBuf> {
    files_under(root)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "tar"))
        .collect()
}

/// A server with an archive root (`<dir>/archive`); `devices` as TOML.
fn archive_server(dir: &Path, devices: Option<String>) -> Server {
    archive_server_builder(dir, devices).start()
}

/// [`archive_server`]'s builder, to add settings.
fn archive_server_builder(dir: &Path, devices: Option<String>) -> ServerBuilder {
    let archive = dir.join("archive");
    let mut builder = Server::builder(dir)
        .setting(
            "archive",
            format!(
                "{{ path = {:?}, after_quiet_hours = 0.0 }}",
                archive.display().to_string()
            ),
        )
        .setting("services", "{ archive_scan_secs = 0 }")
        .setting(
            "workqueue",
            "{ lease_secs = 2, poll_secs = 1, study_process_delay_secs = 1 }",
        );
    if let Some(devices) = devices {
        builder = builder.setting("devices", devices);
    }
    builder
}

/// The study's instances are retrieved by C-GET, byte-identical.
fn assert_get(dir: &Path, server: &Server, uid: &str, expected: &[Instance], what: &str) {
    let out_dir = dir.join(format!("get-{what}"));
    let run = getscu(
        server.addr(),
        server.ae_title(),
        &[
            "QueryRetrieveLevel=STUDY".to_string(),
            format!("StudyInstanceUID={uid}"),
        ],
        &out_dir,
    );
    assert_eq!(run.status, Some(0), "{what}: C-GET:\n{}", run.tool);
    let expected: Vec<&Instance> = expected.iter().collect();
    assert_received(&received_by_uid(&out_dir), &expected, what);
}

#[test]
fn archived_purged_study_is_found_and_restored_by_c_move_and_by_a_new_instance() {
    let dir = test_dir("archive-cycle");
    let scp = StoreScp::start("ARCHDEST", &dir.path().join("scp"), false);
    let corpus = generate_corpus(
        &dir.path().join("corpus"),
        91,
        CorpusShape::uniform(1, 2, 2, (32, 32)),
    );
    let (study, late) = corpus.split_at(corpus.len() - 1);
    let server = archive_server(dir.path(), Some(format!("[{}]", scp.device())));
    let fs1 = server.archive().fs1();
    let archive_root = dir.path().join("archive");
    store_all(&server, study);
    let uid = &study[0].study_uid;

    let out = cli_ok(dir.path(), server.archive(), &["study", "archive", uid]);
    assert!(out.contains("archive_study"), "{out}");
    assert_eq!(packs(&archive_root).len(), 1, "one pack per study");
    assert!(archive_root.join(".imageserver-archive").exists(), "marker");
    cli_ok(dir.path(), server.archive(), &["study", "purge", uid]);
    assert!(
        instance_files(&fs1).is_empty(),
        "online files left: {:#?}",
        instance_files(&fs1)
    );
    assert!(server
        .archive()
        .index()
        .instance(&study[0].sop_instance_uid)
        .is_none());

    // C-FIND still finds the nearline study.
    let found = findscu(
        server.addr(),
        server.ae_title(),
        Model::Study,
        &[
            "QueryRetrieveLevel=STUDY",
            &format!("StudyInstanceUID={uid}"),
            "NumberOfStudyRelatedInstances=",
        ],
        &[],
        &dir.path().join("find"),
    );
    assert_eq!(found.responses.len(), 1, "{}", found.tool);

    // C-MOVE restores it, then delivers every instance byte-identical.
    let run = movescu(
        server.addr(),
        server.ae_title(),
        &scp.ae_title,
        false,
        &[
            "QueryRetrieveLevel=STUDY".to_string(),
            format!("StudyInstanceUID={uid}"),
        ],
    );
    assert_eq!(run.status, Some(0), "C-MOVE:\n{}", run.tool);
    assert_eq!(run.completed, Some(study.len() as u16), "{}", run.tool);
    let expected: Vec<&Instance> = study.iter().collect();
    assert_received(&scp.received(), &expected, "C-MOVE of a nearline study");
    assert_eq!(instance_files(&fs1).len(), study.len(), "online again");
    let check = cli(dir.path(), server.archive(), &["study", "check", uid]);
    assert!(check.success(), "integrity after restore:\n{check}");

    // Purged again (the pack still holds it), then a new instance arrives:
    // the study is restored first and the instance joins it.
    cli_ok(dir.path(), server.archive(), &["study", "purge", uid]);
    assert!(instance_files(&fs1).is_empty());
    let out = dcmtk::store(
        server.addr(),
        server.ae_title(),
        &[&late[0].path],
        &[],
        BOUND,
    );
    assert_eq!(dcmtk::store_responses(&out.text()), ["Success"], "{out}");
    assert_eq!(
        instance_files(&fs1).len(),
        corpus.len(),
        "restored, then stored"
    );
    let check = cli(dir.path(), server.archive(), &["study", "check", uid]);
    assert!(
        check.success(),
        "integrity after the new instance:\n{check}"
    );
    assert_get(dir.path(), &server, uid, &corpus, "after the new instance");

    // Purged again: a patient-level C-MOVE (Patient Root, PatientID only)
    // restores it and delivers every instance byte-identical.
    cli_ok(dir.path(), server.archive(), &["study", "purge", uid]);
    assert!(instance_files(&fs1).is_empty());
    let patient_id = dicom_object::open_file(&corpus[0].path)
        .expect("open a corpus file")
        .element(dicom_dictionary_std::tags::PATIENT_ID)
        .expect("PatientID")
        .to_str()
        .expect("text")
        .trim()
        .to_string();
    scp.clear();
    let run = movescu(
        server.addr(),
        server.ae_title(),
        &scp.ae_title,
        true,
        &[
            "QueryRetrieveLevel=PATIENT".to_string(),
            format!("PatientID={patient_id}"),
        ],
    );
    assert_eq!(run.status, Some(0), "patient C-MOVE:\n{}", run.tool);
    assert_eq!(run.completed, Some(corpus.len() as u16), "{}", run.tool);
    let expected: Vec<&Instance> = corpus.iter().collect();
    assert_received(
        &scp.received(),
        &expected,
        "patient-level C-MOVE of a nearline study",
    );
    assert_eq!(instance_files(&fs1).len(), corpus.len(), "online again");

    // Deleted while nearline: restored, deleted, and its pack goes too.
    cli_ok(dir.path(), server.archive(), &["study", "archive", uid]);
    cli_ok(dir.path(), server.archive(), &["study", "purge", uid]);
    cli_ok(
        dir.path(),
        server.archive(),
        &["study", "delete", uid, "--reason", "test"],
    );
    assert!(
        instance_files(&fs1).is_empty(),
        "{:#?}",
        instance_files(&fs1)
    );
    assert!(
        packs(&archive_root).is_empty(),
        "{:#?}",
        packs(&archive_root)
    );
    assert_eq!(server.archive().index().counts().instances, 0);
}

/// `online_retention` counts from the archiving: with 0 days a study is
/// archived and purged at once; with 30 days it is archived, stays online,
/// and its `purge_study` item waits until the pack is 30 days old.
#[test]
fn online_retention_purges_n_days_after_archiving() {
    const DAYS: i64 = 30;
    let dir = test_dir("archive-retention");
    let corpus = generate_corpus(
        &dir.path().join("corpus"),
        96,
        CorpusShape::uniform(2, 1, 2, (16, 16)),
    );
    let (now_study, later_study) = corpus.split_at(2);
    let (now_uid, later_uid) = (&now_study[0].study_uid, &later_study[0].study_uid);
    assert_ne!(now_uid, later_uid);
    std::fs::write(
        dir.path().join("rules.toml"),
        format!(
            r#"version = 1

[[rule]]
name = "purge-when-archived"
when = {{ attribute = "StudyInstanceUID", equals = "{now_uid}" }}
actions = [{{ type = "online_retention", after_days = 0 }}]

[[rule]]
name = "purge-a-month-after-archiving"
when = {{ attribute = "StudyInstanceUID", equals = "{later_uid}" }}
actions = [{{ type = "online_retention", after_days = {DAYS} }}]
"#
        ),
    )
    .expect("write the rules");
    let server = archive_server_builder(dir.path(), None)
        .setting("rules_file", r#""rules.toml""#)
        .start();
    let fs1 = server.archive().fs1();
    store_all(&server, &corpus);
    let index = server.archive().index();
    let of = |items: &[serde_json::Value], uid: &str| -> Vec<serde_json::Value> {
        items
            .iter()
            .filter(|i| i["study_uid"] == uid)
            .cloned()
            .collect()
    };
    // The 30-day item is due 30 days after arrival (the earliest the pack
    // can be that old); made due now, as if that time had passed, it
    // archives the study and waits 30 days from the pack.
    let items = wait_work_items(
        dir.path(),
        server.archive(),
        "purge_study",
        "online retention queued",
        |items| {
            let now = of(items, now_uid);
            !now.is_empty()
                && now.iter().all(|i| i["status"] == "completed")
                && !of(items, later_uid).is_empty()
        },
    );
    assert!(index.archive_entry(later_uid).is_none(), "not archived yet");
    for item in of(&items, later_uid) {
        cli_ok(
            dir.path(),
            server.archive(),
            &["workqueue", "reschedule", &item["id"].to_string(), "--now"],
        );
    }
    let items = wait_work_items(
        dir.path(),
        server.archive(),
        "purge_study",
        "online retention postponed",
        |items| {
            let later = of(items, later_uid);
            // (Purged at once: the assertions below say so.)
            later.iter().any(|i| i["status"] == "completed")
                || index.archive_entry(later_uid).is_some_and(|entry| {
                    later.iter().all(|i| {
                        i["status"] == "pending"
                            && i["scheduled_at"]["ms"].as_i64() > Some(entry.archived_at_ms)
                    })
                })
        },
    );
    // 0 days: archived, then purged (nearline).
    assert!(index.archive_entry(now_uid).is_some(), "archived first");
    assert!(index.instance(&now_study[0].sop_instance_uid).is_none());
    // 30 days: archived but online, its item due 30 days after the pack.
    let entry = index.archive_entry(later_uid).expect("archived");
    for instance in later_study {
        assert!(index.instance(&instance.sop_instance_uid).is_some());
    }
    assert_eq!(instance_files(&fs1).len(), later_study.len(), "online");
    for item in of(&items, later_uid) {
        assert_eq!(
            item["scheduled_at"]["ms"].as_i64(),
            Some(entry.archived_at_ms + DAYS * 24 * 60 * 60 * 1000),
            "{item:#}"
        );
    }
    assert_get(dir.path(), &server, later_uid, later_study, "retention");
}

/// One operation killed at `step`, finished after a restart: exactly one
/// good copy is the study's location, nothing lost.
fn killed_at(step: &str, seed: u64) {
    let dir = test_dir(&format!("archive-{step}"));
    let corpus = generate_corpus(
        &dir.path().join("corpus"),
        seed,
        CorpusShape::uniform(1, 1, 3, (32, 32)),
    );
    let mut server = archive_server(dir.path(), None);
    let fs1 = server.archive().fs1();
    store_all(&server, &corpus);
    let uid = &corpus[0].study_uid;
    let (kind, before, operation) = match step {
        "archive-packed" => ("archive_study", &[][..], "archive"),
        "purge-switched" | "purge-removed-one" => ("purge_study", &["archive"][..], "purge"),
        _ => ("restore_study", &["archive", "purge"][..], "restore"),
    };
    for operation in before {
        cli_ok(dir.path(), server.archive(), &["study", operation, uid]);
    }
    assert!(server.sigterm().success());
    server.set_env(FAULT_ENV, Some(step));
    server.restart();
    cli_ok(
        dir.path(),
        server.archive(),
        &["study", operation, uid, "--queue"],
    );
    wait_log(
        dir.path(),
        &format!("fault injection: the archive operation pauses here step=\"{step}\""),
    );
    server.kill_9();
    server.set_env(FAULT_ENV, None);
    server.restart();
    wait_work_items(dir.path(), server.archive(), kind, step, |items| {
        !items.is_empty() && items.iter().all(|i| i["status"] == "completed")
    });
    let online = server
        .archive()
        .index()
        .instance(&corpus[0].sop_instance_uid)
        .is_some();
    match operation {
        "purge" => {
            assert!(!online, "{step}: not nearline");
            assert!(instance_files(&fs1).is_empty(), "{step}: files left");
        }
        _ => {
            assert!(online, "{step}: not online");
            assert_eq!(instance_files(&fs1).len(), corpus.len(), "{step}");
            let check = cli(dir.path(), server.archive(), &["study", "check", uid]);
            assert!(check.success(), "{step}: integrity:\n{check}");
        }
    }
    // An archive killed before its record is written again; then the
    // study can be purged. Whatever the step, a retrieve gets it all.
    if operation == "archive" {
        cli_ok(dir.path(), server.archive(), &["study", "purge", uid]);
        assert!(instance_files(&fs1).is_empty());
    }
    assert_get(dir.path(), &server, uid, &corpus, step);
    assert_eq!(packs(&dir.path().join("archive")).len(), 1, "{step}");
}

#[test]
fn an_archive_killed_before_its_record_is_done_again() {
    killed_at("archive-packed", 92);
}

#[test]
fn a_purge_killed_after_its_switch_removes_the_files() {
    killed_at("purge-switched", 93);
}

#[test]
fn a_restore_killed_mid_unpack_finishes_with_one_location() {
    killed_at("restore-unpacked-one", 94);
}

#[test]
fn a_restore_killed_before_its_switch_finishes_with_one_location() {
    killed_at("restore-verified", 95);
}
