//! `migrate_study` never loses the only copy: kill -9 at each step of a
//! migration (the library's fault-injection point pauses there), restart,
//! and the study has exactly one complete location, nothing left on the
//! other filesystem, every instance retrievable byte-identical; an
//! instance arriving afterwards follows the study.

#[path = "support/retrieve_peers.rs"]
#[allow(dead_code, clippy::duplicate_mod)]
mod retrieve_peers;

use crate::support::cli::{cli, cli_ok, wait_log, wait_work_items, BOUND};
use crate::support::corpus::{generate_corpus, same_dataset, CorpusShape, Instance};
use crate::support::dcmtk;
use crate::support::lifecycle::{filesystem_id, instance_files, store_all, stored_at, two_tiers};
use crate::support::received_by_uid;
use crate::support::server::test_dir;
use retrieve_peers::{assert_received, getscu};

const FAULT_ENV: &str = "IMAGESERVER_FAULT_PAUSE_MIGRATION_AT";

/// One migration killed at `step`, then finished after a restart.
fn killed_at(step: &str, seed: u64) {
    let dir = test_dir(&format!("migrate-{step}"));
    let corpus_dir = dir.path().join("corpus");
    let corpus = generate_corpus(&corpus_dir, seed, CorpusShape::uniform(1, 2, 4, (64, 64)));
    let (study, late) = corpus.split_at(corpus.len() - 1);
    let (builder, t1, t2) = two_tiers(dir.path());
    let mut server = builder
        .setting("workqueue", "{ lease_secs = 2, poll_secs = 1 }")
        .start();
    store_all(&server, study);
    assert_eq!(instance_files(&t1).len(), study.len());
    let t2_id = filesystem_id(dir.path(), &server, &t2);

    // Armed: the migration pauses at `step`; kill -9 it there.
    assert!(server.sigterm().success());
    server.set_env(FAULT_ENV, Some(step));
    server.restart();
    let uid = &study[0].study_uid;
    cli_ok(
        dir.path(),
        server.archive(),
        &[
            "study",
            "migrate",
            uid,
            "--to",
            &t2.display().to_string(),
            "--queue",
        ],
    );
    wait_log(
        dir.path(),
        &format!("fault injection: the migration pauses here step=\"{step}\""),
    );
    server.kill_9();
    server.set_env(FAULT_ENV, None);
    server.restart();
    wait_work_items(
        dir.path(),
        server.archive(),
        "migrate_study",
        "the migration",
        |items| !items.is_empty() && items.iter().all(|i| i["status"] == "completed"),
    );

    // Exactly one location, complete, and nothing left behind.
    let index = server.archive().index();
    for instance in study {
        let row = index.instance(&instance.sop_instance_uid).expect("indexed");
        assert_eq!(row.location.filesystem.0, t2_id, "{step}: not switched");
        let file = stored_at(&t2, &instance.sop_instance_uid)
            .unwrap_or_else(|| panic!("{step}: missing on t2"));
        assert!(
            same_dataset(&file, &instance.path),
            "{step}: {} differs",
            file.display()
        );
    }
    assert_eq!(
        instance_files(&t2).len(),
        study.len(),
        "{step}: {:#?}",
        instance_files(&t2)
    );
    assert!(
        instance_files(&t1).is_empty(),
        "{step}: left on t1: {:#?}",
        instance_files(&t1)
    );
    let check = cli(dir.path(), server.archive(), &["study", "check", uid]);
    assert!(check.success(), "{step}: integrity check:\n{check}");

    // Retrieved byte-identical from its new home.
    let out_dir = dir.path().join("get");
    let run = getscu(
        server.addr(),
        server.ae_title(),
        &[
            "QueryRetrieveLevel=STUDY".to_string(),
            format!("StudyInstanceUID={uid}"),
        ],
        &out_dir,
    );
    assert_eq!(run.status, Some(0), "{step}: C-GET:\n{}", run.tool);
    let expected: Vec<&Instance> = study.iter().collect();
    assert_received(&received_by_uid(&out_dir), &expected, step);

    // A later instance follows the study to its new filesystem.
    let out = dcmtk::store(
        server.addr(),
        server.ae_title(),
        &[&late[0].path],
        &[],
        BOUND,
    );
    assert_eq!(dcmtk::acknowledged_files(&out.text()).len(), 1, "{out}");
    assert!(
        stored_at(&t2, &late[0].sop_instance_uid).is_some(),
        "{step}: the late instance is not with its study"
    );
    assert!(instance_files(&t1).is_empty());
}

#[test]
fn a_migration_killed_mid_copy_finishes_with_one_location() {
    killed_at("copied-one", 81);
}

#[test]
fn a_migration_killed_before_its_switch_finishes_with_one_location() {
    killed_at("copied", 82);
}

#[test]
fn a_migration_killed_after_its_switch_removes_the_source() {
    killed_at("switched", 83);
}

#[test]
fn a_migration_killed_mid_removal_finishes_it() {
    killed_at("removed-one", 84);
}

#[test]
fn an_instance_arriving_after_a_migration_follows_the_study() {
    let dir = test_dir("migrate-follow");
    let corpus_dir = dir.path().join("corpus");
    let corpus = generate_corpus(&corpus_dir, 85, CorpusShape::uniform(1, 1, 4, (32, 32)));
    let (study, late) = corpus.split_at(corpus.len() - 1);
    let (builder, t1, t2) = two_tiers(dir.path());
    let server = builder.start();
    // The running server has the study's location (t1) in hand.
    store_all(&server, study);
    let uid = &study[0].study_uid;
    cli_ok(
        dir.path(),
        server.archive(),
        &["study", "migrate", uid, "--to", &t2.display().to_string()],
    );
    assert!(instance_files(&t1).is_empty());
    let out = dcmtk::store(
        server.addr(),
        server.ae_title(),
        &[&late[0].path],
        &[],
        BOUND,
    );
    assert_eq!(dcmtk::store_responses(&out.text()), ["Success"], "{out}");
    let file = stored_at(&t2, &late[0].sop_instance_uid)
        .expect("the late instance is with its study on t2");
    assert!(same_dataset(&file, &late[0].path));
    assert!(instance_files(&t1).is_empty(), "{:#?}", instance_files(&t1));
}
