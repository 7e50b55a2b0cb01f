//! The large deployment's cluster: every `serve` process is a node of it.
//!
//! A node registers itself in the index ([`crate::db::nodes`]), beats its
//! heart there from a thread of its own ([`Node`]), and reads back the
//! state an operator set: `imageserver nodes drain NODE` marks it
//! draining, the heartbeat notices, and the server drains (see
//! [`crate::Server::drain`]): it refuses the balancer's health checks
//! first, so HAProxy takes it out of the pool while it still serves, then
//! stops listening, lets its associations and work items finish, gives
//! back its leases and exits.
//!
//! The heartbeat thread also watches the other nodes: one whose heartbeat
//! is older than `dead_after` is dead, and the first beat that sees it so
//! runs the server's `on_dead` hook (the temporary files it left are
//! removed). Its work items are taken over by the work queue's leases, not
//! here. And it polls the device table's version
//! ([`crate::db::nodes::DEVICES_VERSION`], moved by triggers on every
//! write): when it moves, the server reloads its device caches, so a
//! device changed on one node (or by an administrator) is used by every
//! node within a heartbeat.
//!
//! The module knows the index's node table and nothing of DICOM, files or
//! the services: `server.rs` wires it.

pub mod node;

pub use node::{Node, NodeHooks, NodeSettings};
