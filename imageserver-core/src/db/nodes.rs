//! The cluster's table of nodes and its named leases, in the index.
//!
//! Every `serve` process is a **node**: it registers a row under its node
//! id (stable for its configuration and host, so a restarted node takes
//! its row back), beats its heart into it, and reads back the state an
//! operator set (`draining`). A node whose heart stopped beating is dead by
//! age: the state says what the node was asked to be, the heartbeat
//! whether it is still there ([`NodeRecord::liveness`]).
//!
//! A **named lease** ([`NodeStore::take_lease`]) is the primitive for work
//! that must run on one node at a time (periodic jobs): the holder renews
//! it before it expires, anyone takes it once it has.
//!
//! Times: SQLite uses this machine's clock (every process using the file
//! runs on it); PostgreSQL the database's (`clock_timestamp()`), so nodes
//! with skewed clocks agree on ages and expiry.

#[cfg(test)]
pub(crate) mod conformance;

use std::time::Duration;

use crate::db::Error;

/// What a node was asked to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NodeState {
    /// Serving: accepting associations, claiming work.
    Active,
    /// Asked to drain: it leaves the balancer, finishes what it holds and
    /// exits.
    Draining,
    /// It exited cleanly.
    Stopped,
}

impl NodeState {
    /// The name stored in the index.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Active => "active",
            NodeState::Draining => "draining",
            NodeState::Stopped => "stopped",
        }
    }

    /// The state a stored name denotes.
    pub fn parse(name: &str) -> Option<NodeState> {
        match name {
            "active" => Some(NodeState::Active),
            "draining" => Some(NodeState::Draining),
            "stopped" => Some(NodeState::Stopped),
            _ => None,
        }
    }
}

impl std::fmt::Display for NodeState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A node as it registers itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRegistration {
    /// Its id, unique in the cluster and stable across restarts.
    pub id: String,
    /// The host it runs on.
    pub host: String,
    /// The addresses it accepts associations on (`host:port`).
    pub addresses: Vec<String>,
    /// The software version.
    pub version: String,
    /// Its process id.
    pub pid: u32,
    /// The identity its work queue engine claims items under (the work
    /// items' `processor_id`); None without an engine.
    pub processor_id: Option<String>,
}

/// A node's row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRecord {
    /// What the node registered.
    pub registration: NodeRegistration,
    /// What it was asked to be.
    pub state: NodeState,
    /// When it registered (ms since the epoch).
    pub started_at_ms: i64,
    /// Its last heartbeat (ms since the epoch).
    pub heartbeat_at_ms: i64,
    /// How long ago that was, by the index's clock.
    pub heartbeat_age: Duration,
}

/// A node's state with its heartbeat taken into account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Liveness {
    /// Beating, serving.
    Active,
    /// Beating, draining.
    Draining,
    /// Exited cleanly.
    Stopped,
    /// Its heartbeat is too old: the process is gone or cut off.
    Dead,
}

impl Liveness {
    /// The name `imageserver nodes` shows.
    pub fn as_str(self) -> &'static str {
        match self {
            Liveness::Active => "active",
            Liveness::Draining => "draining",
            Liveness::Stopped => "stopped",
            Liveness::Dead => "dead",
        }
    }
}

impl std::fmt::Display for Liveness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl NodeRecord {
    /// Its state, or dead when its heartbeat is older than `dead_after`.
    pub fn liveness(&self, dead_after: Duration) -> Liveness {
        match self.state {
            NodeState::Stopped => Liveness::Stopped,
            _ if self.heartbeat_age > dead_after => Liveness::Dead,
            NodeState::Active => Liveness::Active,
            NodeState::Draining => Liveness::Draining,
        }
    }
}

/// The index's side of the cluster: nodes and named leases.
pub trait NodeStore: Send + Sync {
    /// Creates or takes back the node's row: registration fields replaced,
    /// state active, started and heartbeat now.
    fn register_node(&self, node: &NodeRegistration) -> Result<(), Error>;

    /// Beats the heart of the node `id` registered by process `pid`:
    /// returns the state it is asked to be, or None when the row is gone
    /// or was taken over by another process (which then owns it).
    fn node_heartbeat(&self, id: &str, pid: u32) -> Result<Option<NodeState>, Error>;

    /// Sets a node's state (an operator's drain, a node's clean exit);
    /// false when no node has this id.
    fn set_node_state(&self, id: &str, state: NodeState) -> Result<bool, Error>;

    /// Every node, by id.
    fn nodes(&self) -> Result<Vec<NodeRecord>, Error>;

    /// Removes a node's row (a node that will not come back); false when
    /// there was none.
    fn forget_node(&self, id: &str) -> Result<bool, Error>;

    /// Takes or renews the lease `name` for `holder` until `duration` from
    /// now: true when `holder` holds it now (it was free, expired, or
    /// already its own), false when another holder's lease is still valid.
    fn take_lease(&self, name: &str, holder: &str, duration: Duration) -> Result<bool, Error>;

    /// Gives the lease back if `holder` holds it; false otherwise.
    fn release_lease(&self, name: &str, holder: &str) -> Result<bool, Error>;

    /// The current holder of a lease that has not expired.
    fn lease_holder(&self, name: &str) -> Result<Option<String>, Error>;

    /// The version of what nodes cache (e.g. [`DEVICES_VERSION`]): it
    /// moves whenever the cached rows are written, by any process; 0 for
    /// an unknown name.
    fn cache_version(&self, name: &str) -> Result<i64, Error>;
}

/// The [`NodeStore::cache_version`] of the device table.
pub const DEVICES_VERSION: &str = "devices";

/// Addresses as stored: comma-separated.
pub(crate) fn join_addresses(addresses: &[String]) -> String {
    addresses.join(",")
}

/// Addresses as read back.
pub(crate) fn split_addresses(text: &str) -> Vec<String> {
    text.split(',')
        .filter(|a| !a.is_empty())
        .map(str::to_string)
        .collect()
}

/// A stored state name, or a backend error naming it.
pub(crate) fn parse_state(name: &str) -> Result<NodeState, Error> {
    NodeState::parse(name).ok_or_else(|| Error::Backend {
        operation: "reading a node",
        source: format!("unknown node state {name:?}").into(),
    })
}

/// A stored millisecond count as a duration (negative: zero).
pub(crate) fn age(ms: i64) -> Duration {
    Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

/// Milliseconds of a lease duration, for the statements.
pub(crate) fn lease_ms(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}
