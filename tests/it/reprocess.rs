//! `study reprocess` racing ingest, on the selected backend: instances
//! stored into a study while its reprocess has listed the files and not yet
//! replaced the rows keep their rows. The reprocess runs in the CLI's
//! process (`--now`) and pauses between the listing and the replacement
//! (`IMAGESERVER_FAULT_PAUSE_REPROCESS_AT=listed`, until the file
//! `IMAGESERVER_FAULT_RESUME_FILE` names exists), so the race is the same
//! at every run.

use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::support::cli::{command, load, Resume, BOUND};
use crate::support::corpus::{generate_corpus, CorpusShape};
use crate::support::dcmtk::{self, CALLING_AE};
use crate::support::server::{test_dir, Server};

const FAULT_ENV: &str = "IMAGESERVER_FAULT_PAUSE_REPROCESS_AT";
const RESUME_ENV: &str = "IMAGESERVER_FAULT_RESUME_FILE";

/// NumberOfStudyRelatedInstances of a study, as C-FIND answers it (one
/// value per answer).
fn queried_instances(server: &Server, study_uid: &str) -> Vec<String> {
    let mut find = dcmtk::command("/usr/bin/findscu");
    find.args(["-v", "-S", "-aet", CALLING_AE, "-aec", server.ae_title()])
        .args(["-k", "QueryRetrieveLevel=STUDY"])
        .arg("-k")
        .arg(format!("StudyInstanceUID={study_uid}"))
        .args(["-k", "NumberOfStudyRelatedInstances"])
        .arg("127.0.0.1")
        .arg(server.addr().port().to_string());
    let output = dcmtk::run(find, BOUND);
    assert!(output.success(), "findscu:\n{output}");
    output
        .text()
        .lines()
        .filter(|l| l.contains("(0020,1208)") && !l.contains("no value available"))
        .filter_map(|l| Some(l.split_once('[')?.1.split_once(']')?.0.trim().to_string()))
        .collect()
}

#[test]
fn instances_stored_during_a_reprocess_keep_their_rows() {
    let dir = test_dir("reprocess-race");
    let corpus_dir = dir.path().join("corpus");
    // One study of two series: the first stored before the reprocess, the
    // second while it is paused between its listing and its replacement.
    let corpus = generate_corpus(&corpus_dir, 731, CorpusShape::uniform(1, 2, 4, (16, 16)));
    let study = corpus[0].study_uid.clone();
    let (before, during): (Vec<_>, Vec<_>) = corpus
        .iter()
        .partition(|i| i.series_uid == corpus[0].series_uid);
    assert_eq!((before.len(), during.len()), (4, 4));
    let server = Server::start(dir.path());
    let archive = server.archive();
    let first_dir = dir.path().join("first");
    std::fs::create_dir_all(&first_dir).unwrap();
    for instance in &before {
        std::fs::copy(
            &instance.path,
            first_dir.join(instance.path.file_name().unwrap()),
        )
        .unwrap();
    }
    load(&server, &first_dir, before.len());

    let resume = Resume(dir.path().join("resume"));
    let stderr = dir.path().join("reprocess.err");
    let mut reprocess = command(
        dir.path(),
        archive,
        &["study", "reprocess", "--now", &study],
    );
    reprocess
        .env("IMAGESERVER_LOG", "info")
        .env(FAULT_ENV, "listed")
        .env(RESUME_ENV, &resume.0)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&stderr).unwrap());
    let child = reprocess
        .spawn()
        .expect("spawn imageserver study reprocess");
    let deadline = Instant::now() + BOUND;
    while !std::fs::read_to_string(&stderr)
        .unwrap_or_default()
        .contains("the reprocess pauses here")
    {
        assert!(
            Instant::now() < deadline,
            "the reprocess never reached its pause:\n{}",
            std::fs::read_to_string(&stderr).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // While it is paused: the second series, one association per instance
    // from a thread (bounded: four stores, each bounded in time), every
    // one acknowledged.
    let sender = std::thread::spawn({
        let addr = server.addr();
        let ae = server.ae_title().to_string();
        let files: Vec<_> = during.iter().map(|i| i.path.clone()).collect();
        move || {
            for file in &files {
                let output = dcmtk::store(addr, &ae, &[file], &[], BOUND);
                assert!(
                    output.success() && dcmtk::acknowledged_files(&output.text()).len() == 1,
                    "storescu {}:\n{output}",
                    file.display()
                );
            }
        }
    });
    sender.join().expect("the sender stored every instance");
    drop(resume);
    let output = dcmtk::wait_with_timeout(child, BOUND);
    let log = std::fs::read_to_string(&stderr).unwrap_or_default();
    assert!(output.success(), "study reprocess:\n{output}\n{log}");

    // Every acknowledged instance is indexed and answered for.
    let index = archive.index();
    for instance in &corpus {
        assert!(
            index.instance(&instance.sop_instance_uid).is_some(),
            "instance {} ({}) lost its row to the reprocess",
            instance.sop_instance_uid,
            if during
                .iter()
                .any(|i| i.sop_instance_uid == instance.sop_instance_uid)
            {
                "stored during it"
            } else {
                "stored before it"
            }
        );
    }
    assert_eq!(
        queried_instances(&server, &study),
        [corpus.len().to_string()]
    );
    // And it was the race: the first listing's replacement was refused.
    assert!(
        log.contains("instances arrived while the study was reprocessed"),
        "the first listing was not refused:\n{log}"
    );
}
