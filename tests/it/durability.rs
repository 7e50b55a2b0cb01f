//! kill -9 during ingest: every acknowledged instance survives the restart.
//!
//! Senders run one `storescu` per instance, so an instance counts as
//! acknowledged exactly when its storescu exited 0 after printing Success.
//! The server is SIGKILLed while they are still sending.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::cli::{work_item, work_items};
use crate::support::corpus::{generate_corpus, single_instance, CorpusShape, Instance};
use crate::support::dcmtk::{self, CALLING_AE};
use crate::support::server::{test_dir, Server};
use crate::support::{archived_files, assert_archived, corpus};

/// Parallel senders (the machine has two cores).
const N_SENDERS: usize = 3;
/// Instances generated (the upper bound of the sending loop).
const N_INSTANCES: usize = 300;
/// Acknowledged instances before the kill.
const KILL_AFTER_ACKNOWLEDGED: usize = 40;
/// Upper bound of the whole sending phase.
const SEND_TIME_BOUND: Duration = Duration::from_secs(90);

#[test]
fn acknowledged_instances_survive_kill_9() {
    let dir = test_dir("durability");
    let corpus_dir = dir.path().join("corpus");
    // 300 instances: 6 studies × 5 series × 10, half of them 256×256.
    let corpus = generate_corpus(
        &corpus_dir,
        7,
        CorpusShape {
            studies: 6,
            series_per_study: 5,
            instances_per_series: N_INSTANCES / 30,
            small: (64, 64),
            large: (256, 256),
        },
    );
    let mut server = Server::start(dir.path());

    let (acknowledged, in_flight) = send_until_killed(&mut server, &corpus);

    assert!(
        acknowledged.len() >= KILL_AFTER_ACKNOWLEDGED,
        "only {} instances were acknowledged",
        acknowledged.len()
    );
    // The kill must have hit stores under way, or the test proves only
    // that a server stopped between stores keeps what it had.
    assert!(
        in_flight >= 1,
        "no store was under way at the kill (every attempt was acknowledged)"
    );
    server.restart();
    eprintln!(
        "durability: {} of {} instances acknowledged before the kill",
        acknowledged.len(),
        corpus.len()
    );
    let index = server.archive().index();
    for instance in &acknowledged {
        assert_archived(server.archive(), &index, instance, Some(CALLING_AE));
    }
    // Whatever else made it into the index must be whole as well.
    for instance in &corpus {
        if let Some(stored) = index.instance(&instance.sop_instance_uid) {
            let path = server.archive().expected_path(
                &instance.study_date,
                &instance.study_uid,
                &instance.series_uid,
                &instance.sop_instance_uid,
            );
            assert_eq!(
                stored.digest,
                corpus::blake3_hex(&path),
                "indexed but not whole: {}",
                path.display()
            );
        }
    }
    // Each acknowledged instance's study will be processed: its StudyProcess
    // item committed with its index row (the default delay keeps it waiting).
    let scheduled = study_process_uids(dir.path(), &server);
    for instance in &acknowledged {
        assert!(
            scheduled.contains(&instance.sop_instance_uid),
            "acknowledged {} is in no study_process item",
            instance.sop_instance_uid
        );
    }
    let n_indexed = index.counts().instances;
    eprintln!("durability: {n_indexed} indexed after the restart");
    assert!(
        n_indexed >= acknowledged.len() as u64,
        "{n_indexed} indexed < {} acknowledged",
        acknowledged.len()
    );
    assert!(archived_files(server.archive()).len() >= acknowledged.len());

    // The restarted server takes new instances.
    let after = single_instance(&dir.path().join("after.dcm"), 8, 64, 64);
    let storescu = dcmtk::store(
        server.addr(),
        server.ae_title(),
        &[&after.path],
        &[],
        Duration::from_secs(60),
    );
    assert!(
        storescu.success(),
        "storescu after the restart failed:\n{storescu}"
    );
    assert_archived(
        server.archive(),
        &server.archive().index(),
        &after,
        Some(CALLING_AE),
    );
    assert_eq!(server.archive().index().counts().instances, n_indexed + 1);
}

/// Sends the corpus one instance per storescu from [`N_SENDERS`] threads,
/// SIGKILLs the server once [`KILL_AFTER_ACKNOWLEDGED`] are acknowledged,
/// and returns the acknowledged instances.
/// Sends until the server is killed; returns the acknowledged instances
/// and how many stores had started before the kill but were not
/// acknowledged (in flight when it came).
fn send_until_killed(server: &mut Server, corpus: &[Instance]) -> (Vec<Instance>, usize) {
    let next = Arc::new(AtomicUsize::new(0));
    let in_flight = Arc::new(AtomicUsize::new(0));
    // Set before the kill is sent: a store started earlier was under way.
    let killing = Arc::new(AtomicBool::new(false));
    let killed = Arc::new(AtomicBool::new(false));
    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let deadline = Instant::now() + SEND_TIME_BOUND;
    let addr = server.addr();
    let called_ae = server.ae_title().to_string();

    std::thread::scope(|scope| {
        for _ in 0..N_SENDERS {
            let next = Arc::clone(&next);
            let killed = Arc::clone(&killed);
            let acknowledged = Arc::clone(&acknowledged);
            let in_flight = Arc::clone(&in_flight);
            let killing = Arc::clone(&killing);
            let called_ae = called_ae.clone();
            scope.spawn(move || {
                let mut failures_after_kill = 0;
                while Instant::now() < deadline && failures_after_kill < 3 {
                    let instance_idx = next.fetch_add(1, Ordering::SeqCst);
                    let Some(instance) = corpus.get(instance_idx) else {
                        break;
                    };
                    let started_before_kill = !killing.load(Ordering::SeqCst);
                    if store_one(addr, &called_ae, &instance.path) {
                        acknowledged.lock().expect("lock").push(instance.clone());
                    } else if killed.load(Ordering::SeqCst) {
                        failures_after_kill += 1;
                        if started_before_kill {
                            in_flight.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                }
            });
        }

        // Kill once enough are acknowledged (bounded by the same deadline).
        loop {
            let n_acknowledged = acknowledged.lock().expect("lock").len();
            if n_acknowledged >= KILL_AFTER_ACKNOWLEDGED || Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        killing.store(true, Ordering::SeqCst);
        server.kill_9();
        killed.store(true, Ordering::SeqCst);
    });

    let acknowledged = acknowledged.lock().expect("lock").clone();
    (acknowledged, in_flight.load(Ordering::SeqCst))
}

/// One storescu of one file: acknowledged iff it exited 0 with Success.
fn store_one(addr: std::net::SocketAddr, called_ae: &str, path: &Path) -> bool {
    let storescu = dcmtk::store(addr, called_ae, &[path], &[], Duration::from_secs(30));
    storescu.success() && dcmtk::acknowledged_files(&storescu.text()).len() == 1
}

/// The instance UIDs the server's `study_process` items list, through
/// `imageserver workqueue list` and `show --json`.
fn study_process_uids(root: &Path, server: &Server) -> std::collections::BTreeSet<String> {
    let archive = server.archive();
    let mut uids = std::collections::BTreeSet::new();
    for item in work_items(root, archive, "study_process") {
        let shown = work_item(root, archive, &item);
        for uid in shown["uids"].as_array().expect("uids") {
            uids.insert(uid["sop_instance_uid"].as_str().expect("a UID").to_string());
        }
    }
    uids
}
