//! Peers that hold the archive's resources to starve everyone else.
//!
//! Durations below are failure bounds, never timing assertions: each is far
//! shorter than the server's own timeouts, so a server that only recovers
//! when its timers fire fails.

use std::time::{Duration, Instant};

use crate::find::find_scu::{findscu, Model};
use crate::support::corpus::Rng;
use crate::support::net::connect_from;
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
    store_ct_as(server, "RAWSCU", uids)
}

/// One C-STORE of a CT data set on an association of its own, calling as
/// `calling_ae`.
fn store_ct_as(server: &Server, calling_ae: &str, uids: &DatasetUids) -> Option<u16> {
    let context = [Proposal::implicit(1, raw::CT_IMAGE_STORAGE)];
    let mut peer = RawPeer::associate_as(server.addr(), server.ae_title(), calling_ae, &context);
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

/// The number of threads and open descriptors of a process (Linux `/proc`).
fn threads_and_descriptors(pid: u32) -> (usize, usize) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    let threads = status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("a Threads line");
    let descriptors = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("list descriptors")
        .count();
    (threads, descriptors)
}

/// Whether the server closed `socket` (EOF or reset) within `bound`.
fn closed_within(socket: &mut std::net::TcpStream, bound: Duration) -> bool {
    use std::io::Read;
    socket.set_read_timeout(Some(bound)).expect("set timeout");
    let mut byte = [0u8; 1];
    match socket.read(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !raw::is_timeout(&e),
    }
}

/// Connections that never send their A-ASSOCIATE-RQ once took an
/// association slot and a thread each for the whole ARTIM window: as many
/// silent sockets as `max_associations` locked every caller out. Now they
/// wait in a bounded stage that costs neither, and the ARTIM timeout here is
/// far too long to rescue a server that still counted them.
#[test]
fn silent_connections_take_neither_association_slots_nor_threads() {
    const SILENT: usize = 60;
    let dir = test_dir("silent-connections");
    let server = Server::builder(dir.path())
        .dicom_setting("artim_timeout_secs", IDLE_SECS)
        .dicom_setting("max_associations", 4)
        .dicom_setting("max_pending_per_address", 0)
        .start();
    let (threads_before, _) = threads_and_descriptors(server.pid());
    let silent: Vec<std::net::TcpStream> = (0..SILENT)
        .map(|_| std::net::TcpStream::connect(server.addr()).expect("connect"))
        .collect();
    // Every silent connection is accepted (none closed) ...
    std::thread::sleep(Duration::from_millis(300));
    let (threads, _) = threads_and_descriptors(server.pid());
    assert!(
        threads < threads_before + 8,
        "{SILENT} silent connections made the server go from {threads_before} to {threads} threads"
    );
    // ... and callers that do associate are served meanwhile, more of them
    // than `max_associations`, one after another.
    let mut rng = Rng::new(5);
    for i in 0..6 {
        assert_eq!(
            store_ct(&server, &ct_uids(&mut rng)),
            Some(0x0000),
            "store {i} beside {SILENT} silent connections"
        );
    }
    for (i, mut socket) in silent.into_iter().enumerate() {
        assert!(
            !closed_within(&mut socket, Duration::from_millis(10)),
            "silent connection {i} was closed long before its ARTIM timeout"
        );
    }
}

/// A connection flood is bounded: beyond `max_pending_associations`
/// waiting connections the longest-waiting one is closed (not held for the
/// ARTIM window on a thread of its own), the server's threads and
/// descriptors stay within the bound, and a caller that sends its request
/// at once is served in the middle of the flood.
#[test]
fn a_connection_flood_is_bounded_and_ingest_goes_on_through_it() {
    const PENDING: usize = 16;
    const FLOOD: usize = 400;
    let dir = test_dir("connection-flood");
    let server = Server::builder(dir.path())
        .dicom_setting("artim_timeout_secs", IDLE_SECS)
        .dicom_setting("max_pending_associations", PENDING)
        .dicom_setting("max_pending_per_address", 0)
        .start();
    let (threads_before, descriptors_before) = threads_and_descriptors(server.pid());
    let mut flood: Vec<std::net::TcpStream> = (0..FLOOD)
        .map(|_| std::net::TcpStream::connect(server.addr()).expect("connect"))
        .collect();
    // Let the server take them all in.
    std::thread::sleep(Duration::from_millis(300));
    let (threads, descriptors) = threads_and_descriptors(server.pid());
    assert!(
        threads < threads_before + 8,
        "the flood took the server from {threads_before} to {threads} threads"
    );
    assert!(
        descriptors <= descriptors_before + PENDING + 8,
        "the flood took the server from {descriptors_before} to {descriptors} descriptors"
    );
    let mut rng = Rng::new(6);
    assert_eq!(
        store_ct(&server, &ct_uids(&mut rng)),
        Some(0x0000),
        "a store while {FLOOD} silent connections flood the listener"
    );
    let closed = flood
        .iter_mut()
        .take(FLOOD - PENDING)
        .map(|socket| closed_within(socket, Duration::from_millis(200)))
        .filter(|closed| *closed)
        .count();
    assert_eq!(
        closed,
        FLOOD - PENDING,
        "the connections beyond the newest {PENDING} were not all closed"
    );
}

/// One address cannot take every waiting slot: beyond
/// `max_pending_per_address` its new connections are closed at once, while
/// a caller from another address is served.
#[test]
fn one_address_cannot_take_every_waiting_slot() {
    const PER_ADDRESS: usize = 4;
    let dir = test_dir("per-address");
    let server = Server::builder(dir.path())
        .dicom_setting("artim_timeout_secs", IDLE_SECS)
        .dicom_setting("max_pending_per_address", PER_ADDRESS)
        .start();
    let flooder = std::net::Ipv4Addr::new(127, 0, 0, 2);
    let mut silent: Vec<std::net::TcpStream> = (0..PER_ADDRESS + 6)
        .map(|_| connect_from(flooder, server.addr()).expect("connect from 127.0.0.2"))
        .collect();
    let closed: Vec<bool> = silent
        .iter_mut()
        .map(|socket| closed_within(socket, Duration::from_millis(200)))
        .collect();
    assert_eq!(
        closed.iter().filter(|c| **c).count(),
        6,
        "connections beyond {PER_ADDRESS} from {flooder}: {closed:?}"
    );
    let mut rng = Rng::new(7);
    assert_eq!(
        store_ct(&server, &ct_uids(&mut rng)),
        Some(0x0000),
        "a store from 127.0.0.1 while {flooder} holds its {PER_ADDRESS} slots"
    );
}

/// Every new calling AE title of a partition that accepts unknown callers
/// wrote a device row, without end. Registration now stops at
/// `max_registered_devices`; callers beyond it are still served.
#[test]
fn unknown_callers_register_only_up_to_the_cap() {
    const CAP: usize = 3;
    let dir = test_dir("device-cap");
    let server = Server::builder(dir.path())
        .dicom_setting("max_registered_devices", CAP)
        .start();
    let names = |server: &Server| -> Vec<String> {
        let mut names: Vec<String> = server
            .archive()
            .index()
            .devices()
            .iter()
            .map(|d| d.ae_title.as_str().to_string())
            .collect();
        names.sort();
        names
    };
    // The test server's own readiness check may have registered already.
    let before = names(&server);
    assert!(before.len() < CAP, "{before:?}");
    let mut rng = Rng::new(8);
    for i in 0..CAP + 4 {
        let calling = format!("CALLER{i}");
        assert_eq!(
            store_ct_as(&server, &calling, &ct_uids(&mut rng)),
            Some(0x0000),
            "{calling} is admitted whether or not it is registered"
        );
    }
    let mut expected = before.clone();
    expected.extend((0..CAP - before.len()).map(|i| format!("CALLER{i}")));
    expected.sort();
    assert_eq!(names(&server), expected);
}

/// A device an administrator narrowed while the server ran (so the server
/// had not cached it) was treated as unknown, given every permission, and
/// its row overwritten with those defaults by the registration. The server
/// now reads the row, refuses what it does not permit, and leaves it as it is.
#[test]
fn registration_never_overwrites_an_administrators_device() {
    let dir = test_dir("device-narrowed");
    // The administrator's row names another host: not bound to it here,
    // so that the call reaches registration.
    let server = Server::builder(dir.path())
        .dicom_setting("check_device_hosts", false)
        .start();
    let narrowed = imageserver_core::model::DeviceSpec {
        ae_title: imageserver_core::AeTitle::parse("NARROWED").unwrap(),
        host: "10.1.2.3".to_string(),
        port: 104,
        allow_store: false,
        allow_query: true,
        allow_retrieve: false,
        allow_replace: false,
        max_associations: 2,
        max_outgoing_associations: 1,
    };
    server.archive().index().ensure_device(&narrowed);
    let mut rng = Rng::new(9);
    assert_eq!(
        store_ct_as(&server, "NARROWED", &ct_uids(&mut rng)),
        Some(0x0124),
        "a device without the store permission is refused"
    );
    let stored: Vec<_> = server
        .archive()
        .index()
        .devices()
        .into_iter()
        .filter(|d| d.ae_title.as_str() == "NARROWED")
        .collect();
    assert_eq!(stored, vec![narrowed], "the administrator's row, unchanged");
}
