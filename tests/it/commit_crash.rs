//! kill -9 at every step of the group commit's window (issue 15): a file is
//! renamed into place before its data is synced (once its batch's journal
//! entry is durable), and its data sync, its directory's sync and the index
//! commit run at once, so an index row may be durable before its file is
//! whole. The journal of open batches lets restart recovery find such rows. Each step: one instance sent, the
//! server paused there (`IMAGESERVER_FAULT_PAUSE_COMMIT_AT`) and killed;
//! where a power loss could have lost the file's data (every step before
//! `synced`) the file is cut short as that loss would leave it; the next
//! start must leave every acknowledged instance whole and queryable, no
//! row without its whole file, the study's instance count equal to its
//! rows, no journal of the dead process and nothing in `.tmp`.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use dicom_dictionary_std::tags;

use crate::support::cli::wait_log;
use crate::support::corpus::{generate_corpus, CorpusShape, Instance};
use crate::support::dcmtk::{self, CALLING_AE};
use crate::support::server::{test_dir, Server};
use crate::support::{assert_archived, corpus, entries_under};
use find_scu::{findscu, Model};

#[path = "support/find_scu.rs"]
#[allow(dead_code, clippy::duplicate_mod)]
mod find_scu;

const FAULT_ENV: &str = "IMAGESERVER_FAULT_PAUSE_COMMIT_AT";
/// The steps, in the order an instance passes them; whether a power loss
/// at the step could leave the file not whole. At `queued` (the writer's
/// thread, before its data sync) the committer may not have journaled and
/// placed the file yet: then there is no file at its path to cut short. At
/// `journaling` (before the journal is written) the index has run the
/// batch's statements and waits: a row committed there would name a file
/// that is not in place and that no journal names.
const STEPS: [(&str, bool); 5] = [
    ("queued", true),
    ("journaling", true),
    ("journaled", true),
    ("indexed", true),
    ("synced", false),
];
const BOUND: Duration = Duration::from_secs(60);

#[test]
fn kills_in_the_commit_window_leave_no_row_without_its_whole_file() {
    let dir = test_dir("commit-crash");
    let corpus_dir = dir.path().join("corpus");
    let corpus = generate_corpus(
        &corpus_dir,
        31,
        CorpusShape::uniform(1, 1, 2 + STEPS.len(), (64, 64)),
    );
    let (first, in_flight) = corpus.split_at(2);
    let mut server = Server::start(dir.path());
    let paths: Vec<&Path> = first.iter().map(|i| i.path.as_path()).collect();
    let out = dcmtk::store(server.addr(), server.ae_title(), &paths, &[], BOUND);
    assert_eq!(dcmtk::acknowledged_files(&out.text()).len(), 2, "{out}");
    let acknowledged = first.to_vec();
    assert!(server.sigterm().success());

    let mut torn = Vec::new();
    for ((step, loses_data), instance) in STEPS.iter().zip(in_flight) {
        server.set_env(FAULT_ENV, Some(step));
        server.restart();
        check(&server, dir.path(), &corpus, &acknowledged, &torn);

        let mut storescu = dcmtk::store_command(
            server.addr(),
            server.ae_title(),
            &[instance.path.as_path()],
            &[],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn storescu");
        wait_log(
            dir.path(),
            &format!("fault injection: the group commit pauses here step=\"{step}\""),
        );
        server.kill_9();
        let _ = storescu.kill();
        let _ = storescu.wait();
        let path = expected_path(&server, instance);
        // Past `journaling` the batch's journal is durable and its file in
        // place; at `journaling` neither.
        match *step {
            "queued" => {}
            "journaling" => assert!(!path.exists(), "{step}: the file is not in place"),
            _ => assert!(path.is_file(), "{step}: the file is in place"),
        }
        if *loses_data {
            // What a power loss may leave of data never synced.
            if path.is_file() {
                let file = std::fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .expect("open the stored file");
                let len = file.metadata().expect("stat").len();
                file.set_len(len / 2).expect("cut the file short");
            }
            torn.push(instance.clone());
        }
    }
    server.set_env(FAULT_ENV, None);
    server.restart();
    check(&server, dir.path(), &corpus, &acknowledged, &torn);
    // The instance killed at `synced` was whole and indexed: it stays.
    let last = in_flight.last().expect("one per step");
    assert_archived(
        server.archive(),
        &server.archive().index(),
        last,
        Some(CALLING_AE),
    );
}

/// After a restart: the acknowledged instances whole and found by C-FIND,
/// the torn ones neither indexed nor on disk, no row without its whole
/// file, no journal of a dead process, nothing in `.tmp`.
fn check(
    server: &Server,
    root: &Path,
    corpus: &[Instance],
    acknowledged: &[Instance],
    torn: &[Instance],
) {
    let archive = server.archive();
    let index = archive.index();
    for instance in acknowledged {
        assert_archived(archive, &index, instance, Some(CALLING_AE));
    }
    for instance in corpus {
        let path = expected_path(server, instance);
        if let Some(row) = index.instance(&instance.sop_instance_uid) {
            assert!(path.is_file(), "a row without its file: {}", path.display());
            assert_eq!(
                row.digest,
                corpus::blake3_hex(&path),
                "a row without its whole file: {}",
                path.display()
            );
        }
    }
    for instance in torn {
        let sop = &instance.sop_instance_uid;
        assert!(index.instance(sop).is_none(), "torn {sop} is indexed");
        assert!(
            !expected_path(server, instance).exists(),
            "torn {sop} is left on disk"
        );
    }
    let found = findscu(
        server.addr(),
        server.ae_title(),
        Model::Study,
        &[
            "QueryRetrieveLevel=IMAGE",
            &format!("StudyInstanceUID={}", corpus[0].study_uid),
            &format!("SeriesInstanceUID={}", corpus[0].series_uid),
            "SOPInstanceUID",
        ],
        &[],
        &root.join("find"),
    );
    assert_eq!(found.final_status(), Some(0), "{}", found.tool);
    let uids: Vec<String> = found
        .column(tags::SOP_INSTANCE_UID)
        .into_iter()
        .flatten()
        .collect();
    for instance in acknowledged {
        assert!(
            uids.contains(&instance.sop_instance_uid),
            "C-FIND misses acknowledged {}: {uids:?}",
            instance.sop_instance_uid
        );
    }
    for instance in torn {
        assert!(
            !uids.contains(&instance.sop_instance_uid),
            "C-FIND finds torn {}",
            instance.sop_instance_uid
        );
    }
    // The study's counter follows its rows: a removed row is uncounted.
    let rows = corpus
        .iter()
        .filter(|i| index.instance(&i.sop_instance_uid).is_some())
        .count();
    let study = findscu(
        server.addr(),
        server.ae_title(),
        Model::Study,
        &[
            "QueryRetrieveLevel=STUDY",
            &format!("StudyInstanceUID={}", corpus[0].study_uid),
            "NumberOfStudyRelatedInstances",
        ],
        &[],
        &root.join("find-study"),
    );
    assert_eq!(study.final_status(), Some(0), "{}", study.tool);
    assert_eq!(
        study.column(tags::NUMBER_OF_STUDY_RELATED_INSTANCES),
        vec![Some(rows.to_string())],
        "the study's instance count"
    );
    // Recovery ran before the server answered: the dead process's journal
    // is gone, and the new one is made only by its first batch.
    let tmp: Vec<_> = entries_under(archive.data_dir())
        .into_iter()
        .filter(|p| p.components().any(|c| c.as_os_str() == ".tmp"))
        .filter(|p| p.file_name().is_some_and(|n| n != ".tmp"))
        .collect();
    assert!(tmp.is_empty(), "left in .tmp after the restart: {tmp:#?}");
}

fn expected_path(server: &Server, instance: &Instance) -> std::path::PathBuf {
    server.archive().expected_path(
        &instance.study_date,
        &instance.study_uid,
        &instance.series_uid,
        &instance.sop_instance_uid,
    )
}
