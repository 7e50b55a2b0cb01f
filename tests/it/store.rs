//! C-STORE of a generated corpus: index rows, digests, byte-identical data sets.

use std::time::Duration;

use crate::support::corpus::{generate_corpus, CorpusShape, Rng};
use crate::support::dcmtk::{self, CALLING_AE};
use crate::support::raw::{self, DatasetUids, Proposal, RawPeer};
use crate::support::server::{test_dir, Server};
use crate::support::{archived_files, assert_archived};

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

    for attempt in 1..=2 {
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
}
