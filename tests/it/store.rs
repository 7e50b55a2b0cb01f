//! C-STORE of a generated corpus: index rows, digests, byte-identical data sets.

use std::time::Duration;

use crate::support::corpus::{generate_corpus, CorpusShape, Rng};
use crate::support::dcmtk::{self, CALLING_AE};
use crate::support::raw::{self, DatasetUids, Proposal, RawPeer};
use crate::support::server::{test_dir, Server};
use crate::support::{
    archive_state, archived_files, assert_archived, assert_no_temp_files, temp_entries,
};

/// 3 studies × 2 series × 5 instances, 64×64 and 256×256 images.
const SHAPE: CorpusShape = CorpusShape {
    studies: 3,
    series_per_study: 2,
    instances_per_series: 5,
    small: (64, 64),
    large: (256, 256),
};

#[test]
fn stored_corpus_is_indexed_with_identical_bytes() {
    let dir = test_dir("store");
    let corpus_dir = dir.path().join("corpus");
    let corpus = generate_corpus(&corpus_dir, 1, SHAPE);
    let server = Server::start(dir.path());

    let storescu = dcmtk::store(
        server.addr(),
        server.ae_title(),
        &[&corpus_dir],
        &[],
        Duration::from_secs(120),
    );

    assert!(storescu.success(), "storescu failed:\n{storescu}");
    assert_eq!(
        dcmtk::acknowledged_files(&storescu.text()).len(),
        corpus.len(),
        "storescu did not get Success for every file:\n{storescu}"
    );
    let index = server.archive().index();
    for instance in &corpus {
        assert_archived(server.archive(), &index, instance, Some(CALLING_AE));
    }
    let counts = index.counts();
    assert_eq!(counts.patients, 3);
    assert_eq!(counts.studies, 3);
    assert_eq!(counts.series, 6);
    assert_eq!(counts.instances, 30);
    assert_eq!(archived_files(server.archive()).len(), 30, "files in fs1");

    let dump = dcmtk::dump(&server.archive().expected_path(
        &corpus[0].study_date,
        &corpus[0].study_uid,
        &corpus[0].series_uid,
        &corpus[0].sop_instance_uid,
    ));
    assert!(dump.success(), "dcmdump cannot read a stored file:\n{dump}");
    assert!(
        dump.stdout
            .contains(&format!("(0002,0016) AE [{CALLING_AE}]")),
        "dcmdump shows no SourceApplicationEntityTitle {CALLING_AE}:\n{dump}"
    );
}

#[test]
fn storing_the_same_corpus_twice_changes_nothing() {
    let dir = test_dir("store-twice");
    let corpus_dir = dir.path().join("corpus");
    let corpus = generate_corpus(&corpus_dir, 2, CorpusShape::uniform(2, 2, 3, (64, 64)));
    let server = Server::start(dir.path());

    let mut first_run = None;
    for attempt in 1..=2 {
        if attempt == 2 {
            first_run = Some(archive_state(server.archive()));
        }
        let storescu = dcmtk::store(
            server.addr(),
            server.ae_title(),
            &[&corpus_dir],
            &[],
            Duration::from_secs(120),
        );
        assert!(
            storescu.success(),
            "storescu run {attempt} failed:\n{storescu}"
        );
        assert_eq!(
            dcmtk::acknowledged_files(&storescu.text()).len(),
            corpus.len(),
            "storescu run {attempt} did not get Success for every file:\n{storescu}"
        );
    }

    let index = server.archive().index();
    let counts = index.counts();
    assert_eq!(
        (
            counts.patients,
            counts.studies,
            counts.series,
            counts.instances
        ),
        (2, 2, 4, 12),
        "counts after storing twice"
    );
    for instance in &corpus {
        assert_archived(server.archive(), &index, instance, Some(CALLING_AE));
    }
    assert_eq!(
        archived_files(server.archive()).len(),
        corpus.len(),
        "files in fs1"
    );
    // Not rewritten either: the same files (inode, mtime, size) and the
    // same index rows (ids, reception times, source AE) as after the first.
    let first_run = first_run.expect("the state after the first run");
    assert_eq!(first_run.rows.len(), corpus.len(), "{first_run:#?}");
    assert_eq!(first_run.files.len(), corpus.len(), "{first_run:#?}");
    let second_run = archive_state(server.archive());
    assert_eq!(second_run.files, first_run.files, "the files changed");
    assert_eq!(second_run.rows, first_run.rows, "the index rows changed");
    assert_no_temp_files(server.archive(), "storing the corpus twice");
}

#[test]
fn stores_are_refused_with_a700_when_free_space_is_short() {
    let dir = test_dir("store-no-space");
    // More free space demanded than any test machine has (1 EiB).
    let server = Server::builder(dir.path())
        .setting("min_free_space_mb", 1u64 << 40)
        .start();
    let mut rng = Rng::new(3);
    let uids = DatasetUids {
        sop_class_uid: raw::CT_IMAGE_STORAGE.to_string(),
        sop_instance_uid: rng.uid(),
        study_uid: rng.uid(),
        series_uid: rng.uid(),
    };

    let mut peer = RawPeer::associate(
        server.addr(),
        server.ae_title(),
        &[Proposal::implicit(1, raw::CT_IMAGE_STORAGE)],
    );
    let status = peer.c_store(
        1,
        &uids.sop_class_uid,
        &uids.sop_instance_uid,
        &raw::ct_dataset(&uids),
    );
    peer.release();

    assert_eq!(status, Some(0xA700), "expected Out of Resources");
    assert!(archived_files(server.archive()).is_empty());
    assert_no_temp_files(server.archive(), "an A700");
    let echo = dcmtk::echo(server.addr(), server.ae_title(), Duration::from_secs(10));
    assert!(echo.success(), "no C-ECHO after an A700:\n{echo}");
}

#[test]
fn concurrent_stores_of_the_same_instances_stay_consistent() {
    let dir = test_dir("store-concurrent");
    let corpus_dir = dir.path().join("corpus");
    let corpus = generate_corpus(&corpus_dir, 4, CorpusShape::uniform(2, 2, 5, (128, 128)));
    let server = Server::start(dir.path());

    let runs: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..3)
            .map(|_| {
                scope.spawn(|| {
                    dcmtk::store(
                        server.addr(),
                        server.ae_title(),
                        &[&corpus_dir],
                        &[],
                        Duration::from_secs(120),
                    )
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| handle.join().expect("a storescu thread panicked"))
            .collect()
    });

    for storescu in &runs {
        assert!(storescu.success(), "storescu failed:\n{storescu}");
        assert_eq!(
            dcmtk::acknowledged_files(&storescu.text()).len(),
            corpus.len(),
            "{storescu}"
        );
    }
    let index = server.archive().index();
    let counts = index.counts();
    assert_eq!(
        (
            counts.patients,
            counts.studies,
            counts.series,
            counts.instances
        ),
        (2, 2, 4, 20),
        "counts after three concurrent stores of the same corpus"
    );
    for instance in &corpus {
        assert_archived(server.archive(), &index, instance, Some(CALLING_AE));
    }
    assert_eq!(archived_files(server.archive()).len(), corpus.len());
    assert_no_temp_files(server.archive(), "three concurrent stores");
}

/// Starts a C-STORE on a fresh association and sends the first half of its
/// data set, then waits until its temporary file exists; returns the peer,
/// the instance's UIDs and the rest of the data set.
fn store_in_flight(server: &Server, rng: &mut Rng) -> (RawPeer, DatasetUids, Vec<u8>) {
    let uids = DatasetUids {
        sop_class_uid: raw::CT_IMAGE_STORAGE.to_string(),
        sop_instance_uid: rng.uid(),
        study_uid: rng.uid(),
        series_uid: rng.uid(),
    };
    let mut peer = RawPeer::associate(
        server.addr(),
        server.ae_title(),
        &[Proposal::implicit(1, raw::CT_IMAGE_STORAGE)],
    );
    let command = raw::c_store_rq(1, &uids.sop_class_uid, &uids.sop_instance_uid);
    peer.send_pdv(1, true, true, &command)
        .expect("send the command");
    let dataset = raw::ct_dataset(&uids);
    let (first, rest) = dataset.split_at(dataset.len() / 2);
    peer.send_pdv(1, false, false, first)
        .expect("send the first half of the data set");
    wait_for("the store's temporary file", || {
        !temp_entries(server.archive()).is_empty()
    });
    (peer, uids, rest.to_vec())
}

/// Polls `done` until it holds; the bound only stops a test that would
/// otherwise hang.
fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn interrupted_stores_leave_no_temporary_files() {
    let dir = test_dir("store-interrupted");
    let mut server = Server::start(dir.path());
    let mut rng = Rng::new(11);

    // The peer aborts mid data set.
    let (mut peer, ..) = store_in_flight(&server, &mut rng);
    peer.send(&[raw::pdu_type::ABORT, 0, 0, 0, 0, 4, 0, 0, 0, 0])
        .expect("send A-ABORT");
    wait_for("the aborted store's temporary file to go", || {
        temp_entries(server.archive()).is_empty()
    });
    drop(peer);

    // The peer's connection drops mid data set.
    let (peer, ..) = store_in_flight(&server, &mut rng);
    drop(peer);
    wait_for("the dropped store's temporary file to go", || {
        temp_entries(server.archive()).is_empty()
    });

    // SIGTERM mid data set: once the listener is closed (shutdown has
    // begun), the rest of the data set arrives; the store in flight is
    // completed and answered, the server exits 0, and nothing is left in
    // `.tmp`, then or after a restart.
    let (mut peer, uids, rest) = store_in_flight(&server, &mut rng);
    server.send_sigterm();
    wait_for("the listener to close", || {
        std::net::TcpStream::connect_timeout(&server.addr(), Duration::from_secs(1)).is_err()
    });
    peer.send_pdv(1, false, true, &rest)
        .expect("send the rest of the data set");
    assert_eq!(
        peer.read_status(Duration::from_secs(30)),
        Some(0x0000),
        "the store in flight at SIGTERM was not answered with Success"
    );
    let exit = server.wait_exit(Duration::from_secs(60));
    assert!(
        exit.success(),
        "the server exited with {exit} after SIGTERM"
    );
    assert_no_temp_files(server.archive(), "SIGTERM with a store in flight");
    server.restart();
    assert_no_temp_files(server.archive(), "the restart after SIGTERM");
    let stored = server.archive().expected_path(
        raw::CT_DATASET_STUDY_DATE,
        &uids.study_uid,
        &uids.series_uid,
        &uids.sop_instance_uid,
    );
    assert_eq!(archived_files(server.archive()), vec![stored]);
    assert_eq!(server.archive().index().counts().instances, 1);
}

#[test]
fn a_store_in_flight_at_kill_9_leaves_no_temporary_file_after_the_restart() {
    let dir = test_dir("store-killed");
    let mut server = Server::start(dir.path());
    let mut rng = Rng::new(12);
    let _in_flight = store_in_flight(&server, &mut rng);
    server.kill_9();
    server.restart();
    assert_no_temp_files(server.archive(), "kill -9 and a restart");
}
