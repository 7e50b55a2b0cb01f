//! SIGTERM during a transfer: clean exit, nothing acknowledged is lost.

use std::fs::File;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::corpus::{generate_corpus, CorpusShape, Instance};
use crate::support::dcmtk::{self, CALLING_AE};
use crate::support::raw::{self, Proposal, RawPeer};
use crate::support::server::{test_dir, Server};
use crate::support::{archived_files, assert_archived, assert_no_temp_files};

/// Acknowledged instances to wait for before the SIGTERM.
const SIGTERM_AFTER_ACKNOWLEDGED: usize = 20;

#[test]
fn sigterm_during_a_transfer_exits_zero_and_keeps_acknowledged_instances() {
    let dir = test_dir("shutdown");
    let corpus_dir = dir.path().join("corpus");
    // 240 instances of 512×512 (512 KiB each), enough to outlast the wait.
    let corpus = generate_corpus(&corpus_dir, 11, CorpusShape::uniform(4, 4, 15, (512, 512)));
    let mut server = Server::start(dir.path());

    let storescu_log = dir.path().join("storescu.log");
    let mut command = dcmtk::store_command(server.addr(), server.ae_title(), &[&corpus_dir], &[]);
    let log = File::create(&storescu_log).expect("create the storescu log");
    command
        .stdout(log.try_clone().expect("clone the log handle"))
        .stderr(log);
    let mut storescu = command.spawn().expect("spawn storescu");

    // SIGTERM once enough are acknowledged (bounded wait).
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut n_acknowledged_before = 0;
    while n_acknowledged_before < SIGTERM_AFTER_ACKNOWLEDGED {
        let finished = storescu.try_wait().expect("poll storescu").is_some();
        assert!(
            !finished,
            "storescu finished before the SIGTERM; grow the corpus"
        );
        assert!(
            Instant::now() < deadline,
            "storescu made no progress:\n{}",
            read(&storescu_log)
        );
        std::thread::sleep(Duration::from_millis(10));
        n_acknowledged_before = dcmtk::acknowledged_files(&read(&storescu_log)).len();
    }
    let exit = server.sigterm();

    // storescu ends once the server is gone; bound it anyway.
    let storescu_output = dcmtk::wait_with_timeout(storescu, Duration::from_secs(60));
    assert!(
        !storescu_output.timed_out(),
        "storescu hung after the server stopped"
    );
    assert!(
        exit.success(),
        "the server exited with {exit} after SIGTERM"
    );

    let log_text = read(&storescu_log);
    let acknowledged = acknowledged_instances(&log_text, &corpus);
    eprintln!(
        "shutdown: SIGTERM after {n_acknowledged_before} acknowledged; {} of {} acknowledged in all",
        acknowledged.len(),
        corpus.len()
    );
    assert!(acknowledged.len() >= n_acknowledged_before);
    let index = server.archive().index();
    for instance in &acknowledged {
        assert_archived(server.archive(), &index, instance, Some(CALLING_AE));
    }
    assert!(index.counts().instances >= acknowledged.len() as u64);
    assert!(archived_files(server.archive()).len() >= acknowledged.len());
    assert_no_temp_files(server.archive(), "SIGTERM during a transfer");

    // It starts again on the same data and takes the rest.
    server.restart();
    assert_no_temp_files(server.archive(), "the restart after SIGTERM");
    let rest = dcmtk::store(
        server.addr(),
        server.ae_title(),
        &[&corpus_dir],
        &[],
        Duration::from_secs(300),
    );
    assert!(rest.success(), "storescu after the restart failed:\n{rest}");
    assert_eq!(
        server.archive().index().counts().instances,
        corpus.len() as u64
    );
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// The corpus instances a storescu log reports Success for.
fn acknowledged_instances(storescu_log: &str, corpus: &[Instance]) -> Vec<Instance> {
    let files = dcmtk::acknowledged_files(storescu_log);
    corpus
        .iter()
        .filter(|instance| {
            files
                .iter()
                .any(|file| Path::new(file) == instance.path.as_path())
        })
        .cloned()
        .collect()
}

#[test]
fn sigterm_with_an_idle_association_open_exits_zero() {
    let dir = test_dir("shutdown-idle");
    let mut server = Server::start(dir.path());
    let mut idle = RawPeer::associate(
        server.addr(),
        server.ae_title(),
        &[Proposal::implicit(1, raw::CT_IMAGE_STORAGE)],
    );

    // The default idle timeout (minutes) must not hold the exit back.
    server.send_sigterm();
    idle.expect_closed_within(Duration::from_secs(30));
    let exit = server.wait_exit(Duration::from_secs(30));

    assert!(
        exit.success(),
        "the server exited with {exit} after SIGTERM"
    );
}
