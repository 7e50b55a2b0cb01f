//! The backend-agnostic checks every [`NodeStore`] must pass: each backend
//! calls [`run_all`] on a fresh database. Ages and expiry are asserted by
//! outcome (a lease of a millisecond, then a short sleep), never a duration.

use std::time::Duration;

use crate::db::fixtures;
use crate::db::nodes::{Liveness, NodeRegistration, NodeState, NodeStore, DEVICES_VERSION};
use crate::db::Database;
use crate::model::{AeTitle, DeviceSpec};

/// Runs every check.
pub(crate) fn run_all(store: &dyn Database) {
    register_heartbeat_and_states(store);
    named_leases(store);
    device_version_moves_with_device_writes(store);
}

fn device_version_moves_with_device_writes(db: &dyn Database) {
    assert_eq!(db.cache_version("no such thing").unwrap(), 0);
    let partition = db
        .ensure_partition(&fixtures::partition_spec("NODEVERSION"))
        .unwrap();
    let before = db.cache_version(DEVICES_VERSION).unwrap();
    let device = DeviceSpec {
        ae_title: AeTitle::parse("WS1").unwrap(),
        host: "10.0.0.5".to_string(),
        port: 104,
        allow_store: true,
        allow_query: true,
        allow_retrieve: true,
        allow_replace: false,
        max_associations: 0,
        max_outgoing_associations: 0,
    };
    db.ensure_device(partition, &device).unwrap();
    let added = db.cache_version(DEVICES_VERSION).unwrap();
    assert!(added > before, "a new device moves the version");
    let mut changed = device.clone();
    changed.allow_query = !changed.allow_query;
    db.ensure_device(partition, &changed).unwrap();
    assert!(
        db.cache_version(DEVICES_VERSION).unwrap() > added,
        "a changed device moves the version"
    );
    let reads = db.cache_version(DEVICES_VERSION).unwrap();
    db.devices(partition).unwrap();
    assert_eq!(
        db.cache_version(DEVICES_VERSION).unwrap(),
        reads,
        "reads do not"
    );
}

fn registration(id: &str, pid: u32) -> NodeRegistration {
    NodeRegistration {
        id: id.to_string(),
        host: "host-a".to_string(),
        addresses: vec!["127.0.0.2:11112".to_string(), "127.0.0.2:11113".to_string()],
        version: "1.2.3".to_string(),
        pid,
        processor_id: Some(format!("{id}:{pid}")),
    }
}

fn register_heartbeat_and_states(store: &dyn NodeStore) {
    assert_eq!(
        store.nodes().unwrap(),
        Vec::new(),
        "a fresh index has no nodes"
    );
    assert_eq!(store.node_heartbeat("n1", 10).unwrap(), None, "no row yet");

    store.register_node(&registration("n1", 10)).unwrap();
    store.register_node(&registration("n2", 20)).unwrap();
    let nodes = store.nodes().unwrap();
    assert_eq!(
        nodes
            .iter()
            .map(|n| n.registration.id.as_str())
            .collect::<Vec<_>>(),
        ["n1", "n2"],
        "listed by id"
    );
    assert_eq!(nodes[0].registration, registration("n1", 10), "round trip");
    assert_eq!(nodes[0].state, NodeState::Active);
    assert!(nodes[0].heartbeat_at_ms >= nodes[0].started_at_ms);
    assert_eq!(nodes[0].liveness(Duration::from_secs(60)), Liveness::Active);
    std::thread::sleep(Duration::from_millis(5));
    assert_eq!(
        store.nodes().unwrap()[0].liveness(Duration::from_millis(1)),
        Liveness::Dead,
        "a heartbeat older than the limit is dead"
    );

    // The heartbeat reports what an operator asked for.
    assert_eq!(
        store.node_heartbeat("n1", 10).unwrap(),
        Some(NodeState::Active)
    );
    assert!(store.set_node_state("n1", NodeState::Draining).unwrap());
    assert!(!store.set_node_state("nobody", NodeState::Draining).unwrap());
    assert_eq!(
        store.node_heartbeat("n1", 10).unwrap(),
        Some(NodeState::Draining)
    );
    assert_eq!(
        store.nodes().unwrap()[0].liveness(Duration::from_secs(60)),
        Liveness::Draining
    );

    // Another process took the id over: the old one's heartbeat is refused.
    store.register_node(&registration("n1", 11)).unwrap();
    assert_eq!(store.node_heartbeat("n1", 10).unwrap(), None);
    assert_eq!(
        store.node_heartbeat("n1", 11).unwrap(),
        Some(NodeState::Active),
        "registering again makes the node active"
    );

    // A clean exit: stopped, stays stopped however old, heartbeats refused.
    assert!(store.set_node_state("n2", NodeState::Stopped).unwrap());
    assert_eq!(store.node_heartbeat("n2", 20).unwrap(), None);
    std::thread::sleep(Duration::from_millis(5));
    assert_eq!(
        store.nodes().unwrap()[1].liveness(Duration::from_millis(1)),
        Liveness::Stopped
    );

    assert!(store.forget_node("n2").unwrap());
    assert!(!store.forget_node("n2").unwrap());
    assert_eq!(store.nodes().unwrap().len(), 1);
}

fn named_leases(store: &dyn NodeStore) {
    let long = Duration::from_secs(300);
    assert_eq!(store.lease_holder("sweep").unwrap(), None);
    assert!(
        store.take_lease("sweep", "a", long).unwrap(),
        "a free lease"
    );
    assert!(!store.take_lease("sweep", "b", long).unwrap(), "held by a");
    assert!(
        store.take_lease("sweep", "a", long).unwrap(),
        "renewed by its holder"
    );
    assert_eq!(store.lease_holder("sweep").unwrap().as_deref(), Some("a"));
    assert!(
        store.take_lease("other", "b", long).unwrap(),
        "names are independent"
    );

    assert!(
        !store.release_lease("sweep", "b").unwrap(),
        "only the holder releases"
    );
    assert!(store.release_lease("sweep", "a").unwrap());
    assert!(store
        .take_lease("sweep", "b", Duration::from_millis(1))
        .unwrap());
    std::thread::sleep(Duration::from_millis(10));
    assert_eq!(store.lease_holder("sweep").unwrap(), None, "expired");
    assert!(
        store.take_lease("sweep", "a", long).unwrap(),
        "an expired lease is taken over"
    );
    assert!(!store.take_lease("sweep", "b", long).unwrap());
    assert_eq!(store.lease_holder("sweep").unwrap().as_deref(), Some("a"));
}
