//! Nodes and named leases on SQLite: [`NodeStore`] for [`SqliteIndex`].
//! Times come from this machine's clock (every process using the file runs
//! on it).

use std::time::Duration;

use rusqlite::{params, OptionalExtension, Row};

use super::{now_ms, SqliteIndex};
use crate::db::nodes::{
    age, join_addresses, lease_ms, parse_state, split_addresses, NodeRecord, NodeRegistration,
    NodeState, NodeStore,
};
use crate::db::Error;

const REGISTER: &str = "INSERT INTO node
         (id, host, addresses, version, pid, processor_id, state, started_at, heartbeat_at)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'active', ?7, ?7)
     ON CONFLICT (id) DO UPDATE
     SET host = excluded.host, addresses = excluded.addresses, version = excluded.version,
         pid = excluded.pid, processor_id = excluded.processor_id, state = 'active',
         started_at = excluded.started_at, heartbeat_at = excluded.heartbeat_at";

const HEARTBEAT: &str = "UPDATE node SET heartbeat_at = ?3
     WHERE id = ?1 AND pid = ?2 AND state <> 'stopped' RETURNING state";

const NODES: &str = "SELECT id, host, addresses, version, pid, processor_id, state,
            started_at, heartbeat_at, ?1 - heartbeat_at
     FROM node ORDER BY id";

const TAKE_LEASE: &str = "INSERT INTO cluster_lease (name, holder, expires_at)
     VALUES (?1, ?2, ?3 + ?4)
     ON CONFLICT (name) DO UPDATE
     SET holder = excluded.holder, expires_at = excluded.expires_at
     WHERE cluster_lease.holder = excluded.holder OR cluster_lease.expires_at <= ?3";

fn node(r: &Row<'_>) -> rusqlite::Result<(NodeRecord, String)> {
    let state: String = r.get(6)?;
    Ok((
        NodeRecord {
            registration: NodeRegistration {
                id: r.get(0)?,
                host: r.get(1)?,
                addresses: split_addresses(&r.get::<_, String>(2)?),
                version: r.get(3)?,
                pid: u32::try_from(r.get::<_, i64>(4)?).unwrap_or(0),
                processor_id: r.get(5)?,
            },
            state: NodeState::Active,
            started_at_ms: r.get(7)?,
            heartbeat_at_ms: r.get(8)?,
            heartbeat_age: age(r.get(9)?),
        },
        state,
    ))
}

impl NodeStore for SqliteIndex {
    fn register_node(&self, node: &NodeRegistration) -> Result<(), Error> {
        let addresses = join_addresses(&node.addresses);
        self.write("registering a node", |tx| {
            tx.prepare_cached(REGISTER)?.execute(params![
                node.id,
                node.host,
                addresses,
                node.version,
                i64::from(node.pid),
                node.processor_id,
                now_ms(),
            ])?;
            Ok(())
        })
    }

    fn node_heartbeat(&self, id: &str, pid: u32) -> Result<Option<NodeState>, Error> {
        let state: Option<String> = self.write("beating a node's heart", |tx| {
            tx.prepare_cached(HEARTBEAT)?
                .query_row(params![id, i64::from(pid), now_ms()], |r| r.get(0))
                .optional()
        })?;
        state.as_deref().map(parse_state).transpose()
    }

    fn set_node_state(&self, id: &str, state: NodeState) -> Result<bool, Error> {
        self.write("setting a node's state", |tx| {
            tx.prepare_cached("UPDATE node SET state = ?2 WHERE id = ?1")?
                .execute(params![id, state.as_str()])
                .map(|n| n > 0)
        })
    }

    fn nodes(&self) -> Result<Vec<NodeRecord>, Error> {
        let rows = self.read("listing nodes", |conn| {
            let mut stmt = conn.prepare_cached(NODES)?;
            let found = stmt.query_map([now_ms()], node)?;
            found.collect::<rusqlite::Result<Vec<_>>>()
        })?;
        rows.into_iter()
            .map(|(mut record, state)| {
                record.state = parse_state(&state)?;
                Ok(record)
            })
            .collect()
    }

    fn forget_node(&self, id: &str) -> Result<bool, Error> {
        self.write("removing a node", |tx| {
            tx.prepare_cached("DELETE FROM node WHERE id = ?1")?
                .execute([id])
                .map(|n| n > 0)
        })
    }

    fn take_lease(&self, name: &str, holder: &str, duration: Duration) -> Result<bool, Error> {
        self.write("taking a lease", |tx| {
            tx.prepare_cached(TAKE_LEASE)?
                .execute(params![name, holder, now_ms(), lease_ms(duration)])
                .map(|n| n > 0)
        })
    }

    fn release_lease(&self, name: &str, holder: &str) -> Result<bool, Error> {
        self.write("releasing a lease", |tx| {
            tx.prepare_cached("DELETE FROM cluster_lease WHERE name = ?1 AND holder = ?2")?
                .execute([name, holder])
                .map(|n| n > 0)
        })
    }

    fn lease_holder(&self, name: &str) -> Result<Option<String>, Error> {
        self.read("reading a lease", |conn| {
            conn.prepare_cached(
                "SELECT holder FROM cluster_lease WHERE name = ?1 AND expires_at > ?2",
            )?
            .query_row(params![name, now_ms()], |r| r.get(0))
            .optional()
        })
    }

    fn cache_version(&self, name: &str) -> Result<i64, Error> {
        self.read("reading a cache version", |conn| {
            conn.prepare_cached("SELECT version FROM cluster_version WHERE name = ?1")?
                .query_row([name], |r| r.get(0))
                .optional()
                .map(Option::unwrap_or_default)
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::db::nodes::conformance;
    use crate::db::sqlite::SqliteIndex;

    #[test]
    fn node_store_conformance() {
        let dir = tempfile::tempdir().expect("tempdir");
        let index = SqliteIndex::open(&dir.path().join("index.db")).expect("open");
        conformance::run_all(&index);
    }
}
