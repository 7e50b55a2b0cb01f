//! One node: its registration, its heartbeat thread, and what it learns
//! from the index (drain requests, dead peers).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam::channel::{bounded, Receiver, RecvTimeoutError, Sender};

use crate::db::nodes::{
    Liveness, NodeRecord, NodeRegistration, NodeState, NodeStore, DEVICES_VERSION,
};
use crate::db::Error;
use crate::model::error_chain;

/// How a node identifies itself and keeps in touch (`[node]`, validated).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSettings {
    /// The node id; None: `HOST:ADDRESS:PORT` of the default partition's
    /// listener, stable as long as the host and configuration are.
    pub id: Option<String>,
    /// How often the node beats its heart (and looks at the others).
    pub heartbeat: Duration,
    /// A node whose heartbeat is older than this is dead.
    pub dead_after: Duration,
    /// Draining: how long health checks are refused while associations
    /// are still accepted, so that the balancer takes the node out of its
    /// pool before it stops listening.
    pub drain_grace: Duration,
    /// Draining: how long, after the listener is closed, associations and
    /// work items in flight may take to finish before they are cut off.
    pub drain_timeout: Duration,
    /// The calling AE title of the balancer's health check (refused with
    /// A-ASSOCIATE-RJ while draining); None: no health check is known.
    pub health_check_ae: Option<String>,
}

impl Default for NodeSettings {
    fn default() -> Self {
        NodeSettings {
            id: None,
            heartbeat: Duration::from_secs(5),
            dead_after: Duration::from_secs(30),
            drain_grace: Duration::ZERO,
            drain_timeout: Duration::ZERO,
            health_check_ae: Some(DEFAULT_HEALTH_CHECK_AE.to_string()),
        }
    }
}

/// The calling AE title `deploy/large/haproxy.cfg`'s health check uses.
pub const DEFAULT_HEALTH_CHECK_AE: &str = "HEALTHCHECK";

/// This host's name (`/proc/sys/kernel/hostname`), `localhost` when unknown.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

/// The default node id: this host and the address it listens on.
pub fn default_node_id(listen: &std::net::SocketAddr) -> String {
    format!("{}:{listen}", host_name())
}

/// What the server does on what its heartbeat learns; each runs on the
/// heartbeat thread.
pub struct NodeHooks {
    /// Another node was first seen dead.
    pub on_dead: Box<dyn Fn(&NodeRecord) + Send>,
    /// The device table changed (by any node or an administrator): caches
    /// of it are to be reloaded.
    pub on_devices_changed: Box<dyn Fn() + Send>,
}

/// A registered node and its heartbeat thread. Dropping it stops the
/// thread without touching the row (the heartbeat then ages: the node
/// looks dead); [`Node::stop`] marks it stopped.
pub struct Node {
    registration: NodeRegistration,
    store: Arc<dyn NodeStore>,
    drain_requested: Arc<AtomicBool>,
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.registration.id)
            .finish_non_exhaustive()
    }
}

impl Node {
    /// Registers the node (its row active, heartbeat now) and starts its
    /// heartbeat thread, which runs `hooks` on what it learns.
    pub fn start(
        store: Arc<dyn NodeStore>,
        registration: NodeRegistration,
        settings: &NodeSettings,
        hooks: NodeHooks,
    ) -> Result<Node, Error> {
        let devices_version = store.cache_version(DEVICES_VERSION)?;
        store.register_node(&registration)?;
        tracing::info!(
            node = %registration.id,
            addresses = %registration.addresses.join(","),
            "node registered"
        );
        let drain_requested = Arc::new(AtomicBool::new(false));
        let (stop, stopped) = bounded(1);
        let beat = Heartbeat {
            registration: registration.clone(),
            store: store.clone(),
            drain_requested: drain_requested.clone(),
            every: settings.heartbeat,
            dead_after: settings.dead_after,
            hooks,
            seen_dead: HashSet::new(),
            devices_version,
        };
        let thread = std::thread::Builder::new()
            .name("node-heartbeat".into())
            .spawn(move || beat.run(&stopped))
            .map_err(|e| Error::Backend {
                operation: "starting the node heartbeat",
                source: Box::new(e),
            })?;
        Ok(Node {
            registration,
            store,
            drain_requested,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The node id.
    pub fn id(&self) -> &str {
        &self.registration.id
    }

    /// What it registered.
    pub fn registration(&self) -> &NodeRegistration {
        &self.registration
    }

    /// Whether an operator asked this node to drain (seen at a heartbeat).
    pub fn drain_requested(&self) -> bool {
        self.drain_requested.load(Ordering::SeqCst)
    }

    /// Records the node's state in the index (draining when it starts to
    /// drain on its own, e.g. on SIGTERM); a failure is logged.
    pub fn set_state(&self, state: NodeState) {
        if let Err(e) = self.store.set_node_state(&self.registration.id, state) {
            tracing::warn!(node = %self.registration.id, %state, error = %error_chain(&e), "cannot record the node's state");
        }
    }

    /// Stops the heartbeat and marks the node stopped: a clean exit.
    pub fn stop(mut self) {
        self.halt();
        self.set_state(NodeState::Stopped);
        tracing::info!(node = %self.registration.id, "node stopped");
    }

    fn halt(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.halt();
    }
}

struct Heartbeat {
    registration: NodeRegistration,
    store: Arc<dyn NodeStore>,
    drain_requested: Arc<AtomicBool>,
    every: Duration,
    dead_after: Duration,
    hooks: NodeHooks,
    /// Nodes already handed to `on_dead` (until they beat again).
    seen_dead: HashSet<(String, u32)>,
    /// The device table's version the caches were loaded at.
    devices_version: i64,
}

impl Heartbeat {
    /// Beats until `stopped` is closed: one beat per `every`, each a
    /// bounded number of index calls.
    fn run(mut self, stopped: &Receiver<()>) {
        loop {
            match stopped.recv_timeout(self.every) {
                Err(RecvTimeoutError::Timeout) => {}
                Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
            }
            self.beat();
            self.watch_devices();
            self.watch_others();
        }
    }

    fn beat(&mut self) {
        let id = &self.registration.id;
        match self.store.node_heartbeat(id, self.registration.pid) {
            Ok(Some(NodeState::Draining)) => {
                if !self.drain_requested.swap(true, Ordering::SeqCst) {
                    tracing::info!(node = %id, "drain requested in the index");
                }
            }
            Ok(Some(_)) => {}
            Ok(None) => {
                // Forgotten, or marked stopped while running: register
                // again (a node still running is one).
                tracing::warn!(node = %id, "the node's row was gone or taken: registering again");
                if let Err(e) = self.store.register_node(&self.registration) {
                    tracing::warn!(node = %id, error = %error_chain(&e), "cannot register the node");
                }
            }
            Err(e) => {
                tracing::warn!(node = %id, error = %error_chain(&e), "heartbeat failed");
            }
        }
    }

    fn watch_devices(&mut self) {
        match self.store.cache_version(DEVICES_VERSION) {
            Ok(version) if version != self.devices_version => {
                tracing::info!(version, "devices changed in the index: reloading");
                (self.hooks.on_devices_changed)();
                self.devices_version = version;
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %error_chain(&e), "cannot read the devices version"),
        }
    }

    fn watch_others(&mut self) {
        let nodes = match self.store.nodes() {
            Ok(nodes) => nodes,
            Err(e) => {
                tracing::debug!(error = %error_chain(&e), "cannot list the nodes");
                return;
            }
        };
        for node in nodes {
            let key = (node.registration.id.clone(), node.registration.pid);
            if node.registration.id == self.registration.id {
                continue;
            }
            if node.liveness(self.dead_after) == Liveness::Dead {
                if self.seen_dead.insert(key) {
                    tracing::warn!(
                        node = %node.registration.id,
                        heartbeat_age_secs = node.heartbeat_age.as_secs(),
                        "node dead: its heartbeat stopped"
                    );
                    (self.hooks.on_dead)(&node);
                }
            } else {
                self.seen_dead.remove(&key);
            }
        }
    }
}
