//! Peers that hold the archive's resources to starve everyone else.
//!
//! Durations below are failure bounds, never timing assertions: each is far
//! shorter than the server's own timeouts, so a server that only recovers
//! when its timers fire fails.

use std::time::{Duration, Instant};

use crate::find::find_scu::{findscu, Model};
use crate::support::corpus::Rng;
use crate::support::raw::{self, ct_dataset, DatasetUids, Proposal, RawPeer};
use crate::support::server::{test_dir, Server};

/// The idle timeout of these tests: far beyond every bound they check.
const IDLE_SECS: u64 = 600;
/// Peers that stall mid-C-FIND: twice the SQLite reader pool, the size of
/// the default PostgreSQL pool.
const STALLED_PEERS: usize = 8;
/// Instances stored while they stall.
const STORES: usize = 20;

fn ct_uids(rng: &mut Rng) -> DatasetUids {
    DatasetUids {
        sop_class_uid: raw::CT_IMAGE_STORAGE.to_string(),
        sop_instance_uid: rng.uid(),
        study_uid: rng.uid(),
        series_uid: rng.uid(),
    }
}

fn store_ct(server: &Server, uids: &DatasetUids) -> Option<u16> {
    let context = [Proposal::implicit(1, raw::CT_IMAGE_STORAGE)];
    let mut peer = RawPeer::associate(server.addr(), server.ae_title(), &context);
    let status = peer.c_store(
        1,
        &uids.sop_class_uid,
        &uids.sop_instance_uid,
        &ct_dataset(uids),
    );
    peer.release();
    status
}

/// A peer sends a study-level C-FIND that matches, then the first byte of
/// another PDU, then nothing: the server waits for the rest of that PDU
/// before it writes the first match. Eight such peers once held every
/// index connection (SQLite's four readers, PostgreSQL's pool of eight)
/// until their idle timeout, and every C-STORE waited or failed with them.
#[test]
fn stalled_c_finds_do_not_stop_ingest_or_queries() {
    let dir = test_dir("stalled-finds");
    let server = Server::builder(dir.path())
        .dicom_setting("idle_timeout_secs", IDLE_SECS)
        .start();
    let mut rng = Rng::new(77);
    let stored: Vec<DatasetUids> = (0..3).map(|_| ct_uids(&mut rng)).collect();
    for uids in &stored {
        assert_eq!(store_ct(&server, uids), Some(0x0000), "preload");
    }

    let find_context = [Proposal::implicit(1, raw::STUDY_ROOT_FIND)];
    let identifier = raw::ImplicitLe::new()
        .text(0x0008, 0x0052, "STUDY")
        .raw(0x0020, 0x000D, &[], 0)
        .build();
    let mut stalled = Vec::new();
    for message_id in 1..=STALLED_PEERS as u16 {
        let mut peer = RawPeer::associate(server.addr(), server.ae_title(), &find_context);
        peer.send_message(
            1,
            &raw::c_find_rq(message_id, raw::STUDY_ROOT_FIND),
            Some(&identifier),
        )
        .expect("send the C-FIND");
        // The PDU type of a P-DATA-TF, and not one byte more.
        peer.send(&[0x04]).expect("send one byte");
        stalled.push(peer);
    }
    // Let every stalled request reach the point where it waits.
    std::thread::sleep(Duration::from_millis(500));

    let started = Instant::now();
    for i in 0..STORES {
        let uids = ct_uids(&mut rng);
        assert_eq!(
            store_ct(&server, &uids),
            Some(0x0000),
            "store {i} while {STALLED_PEERS} C-FINDs stall ({:?} in)",
            started.elapsed()
        );
    }
    let bound = Duration::from_secs(60);
    assert!(
        started.elapsed() < bound,
        "{STORES} stores took {:?} while C-FINDs stalled",
        started.elapsed()
    );

    // Another peer's C-FIND is answered meanwhile, with every study.
    let find = findscu(
        server.addr(),
        server.ae_title(),
        Model::Study,
        &["QueryRetrieveLevel=STUDY", "StudyInstanceUID"],
        &[],
        &dir.path().join("find"),
    );
    assert_eq!(find.final_status(), Some(0x0000), "{find}");
    assert_eq!(find.responses.len(), 3 + STORES, "{find}");

    // All of that happened while the C-FINDs were still stalled: each
    // stalled association is still open (it may have been sent the first
    // match, if that left before its stray byte arrived, but it was neither
    // aborted nor closed), so no timer of the server released what they held
    // before the stores ran.
    for (i, peer) in stalled.iter_mut().enumerate() {
        loop {
            match peer.read_pdu(Duration::from_millis(200)) {
                Err(e) if raw::is_timeout(&e) => break,
                Ok(Some(raw::Pdu::PData(_))) => {}
                other => panic!("stalled peer {i} was not stalled any more: {other:?}"),
            }
        }
    }
    drop(stalled);
}
