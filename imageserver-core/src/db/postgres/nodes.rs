//! Nodes and named leases on PostgreSQL: [`NodeStore`] for [`PgIndex`].
//! Heartbeats, ages and lease expiry are by the database's clock
//! (`clock_timestamp()`), so nodes with skewed clocks agree on them.

use std::time::Duration;

use sqlx::postgres::PgRow;
use sqlx::Row;

use super::PgIndex;
use crate::db::nodes::{
    age, join_addresses, lease_ms, parse_state, split_addresses, NodeRecord, NodeRegistration,
    NodeState, NodeStore,
};
use crate::db::Error;

/// The database clock in milliseconds since the epoch, as SQL.
macro_rules! now_ms {
    () => {
        "(EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT"
    };
}

const REGISTER: &str = concat!(
    "INSERT INTO node
         (id, host, addresses, version, pid, processor_id, state, started_at, heartbeat_at)
     VALUES ($1, $2, $3, $4, $5, $6, 'active', ",
    now_ms!(),
    ", ",
    now_ms!(),
    ")
     ON CONFLICT (id) DO UPDATE
     SET host = excluded.host, addresses = excluded.addresses, version = excluded.version,
         pid = excluded.pid, processor_id = excluded.processor_id, state = 'active',
         started_at = excluded.started_at, heartbeat_at = excluded.heartbeat_at"
);

const HEARTBEAT: &str = concat!(
    "UPDATE node SET heartbeat_at = ",
    now_ms!(),
    " WHERE id = $1 AND pid = $2 AND state <> 'stopped' RETURNING state"
);

const NODES: &str = concat!(
    "SELECT id, host, addresses, version, pid, processor_id, state, started_at, heartbeat_at, ",
    now_ms!(),
    " - heartbeat_at AS age FROM node ORDER BY id"
);

const TAKE_LEASE: &str = concat!(
    "INSERT INTO cluster_lease (name, holder, expires_at) VALUES ($1, $2, ",
    now_ms!(),
    " + $3)
     ON CONFLICT (name) DO UPDATE
     SET holder = excluded.holder, expires_at = excluded.expires_at
     WHERE cluster_lease.holder = excluded.holder OR cluster_lease.expires_at <= ",
    now_ms!()
);

const LEASE_HOLDER: &str = concat!(
    "SELECT holder FROM cluster_lease WHERE name = $1 AND expires_at > ",
    now_ms!()
);

fn node(r: &PgRow) -> Result<(NodeRecord, String), sqlx::Error> {
    Ok((
        NodeRecord {
            registration: NodeRegistration {
                id: r.try_get("id")?,
                host: r.try_get("host")?,
                addresses: split_addresses(r.try_get::<&str, _>("addresses")?),
                version: r.try_get("version")?,
                pid: u32::try_from(r.try_get::<i64, _>("pid")?).unwrap_or(0),
                processor_id: r.try_get("processor_id")?,
            },
            state: NodeState::Active,
            started_at_ms: r.try_get("started_at")?,
            heartbeat_at_ms: r.try_get("heartbeat_at")?,
            heartbeat_age: age(r.try_get("age")?),
        },
        r.try_get("state")?,
    ))
}

impl NodeStore for PgIndex {
    fn register_node(&self, node: &NodeRegistration) -> Result<(), Error> {
        let addresses = join_addresses(&node.addresses);
        self.write("registering a node", async |conn| {
            sqlx::query(REGISTER)
                .bind(&node.id)
                .bind(&node.host)
                .bind(&addresses)
                .bind(&node.version)
                .bind(i64::from(node.pid))
                .bind(&node.processor_id)
                .execute(&mut *conn)
                .await?;
            Ok(())
        })
    }

    fn node_heartbeat(&self, id: &str, pid: u32) -> Result<Option<NodeState>, Error> {
        let state: Option<String> = self.write("beating a node's heart", async |conn| {
            Ok(sqlx::query_scalar(HEARTBEAT)
                .bind(id)
                .bind(i64::from(pid))
                .fetch_optional(&mut *conn)
                .await?)
        })?;
        state.as_deref().map(parse_state).transpose()
    }

    fn set_node_state(&self, id: &str, state: NodeState) -> Result<bool, Error> {
        self.write("setting a node's state", async |conn| {
            let done = sqlx::query("UPDATE node SET state = $2 WHERE id = $1")
                .bind(id)
                .bind(state.as_str())
                .execute(&mut *conn)
                .await?;
            Ok(done.rows_affected() > 0)
        })
    }

    fn nodes(&self) -> Result<Vec<NodeRecord>, Error> {
        let rows = self.read("listing nodes", async |conn| {
            let rows = sqlx::query(NODES).fetch_all(&mut *conn).await?;
            rows.iter().map(node).collect::<Result<Vec<_>, _>>()
        })?;
        rows.into_iter()
            .map(|(mut record, state)| {
                record.state = parse_state(&state)?;
                Ok(record)
            })
            .collect()
    }

    fn forget_node(&self, id: &str) -> Result<bool, Error> {
        self.write("removing a node", async |conn| {
            let done = sqlx::query("DELETE FROM node WHERE id = $1")
                .bind(id)
                .execute(&mut *conn)
                .await?;
            Ok(done.rows_affected() > 0)
        })
    }

    fn take_lease(&self, name: &str, holder: &str, duration: Duration) -> Result<bool, Error> {
        self.write("taking a lease", async |conn| {
            let done = sqlx::query(TAKE_LEASE)
                .bind(name)
                .bind(holder)
                .bind(lease_ms(duration))
                .execute(&mut *conn)
                .await?;
            Ok(done.rows_affected() > 0)
        })
    }

    fn release_lease(&self, name: &str, holder: &str) -> Result<bool, Error> {
        self.write("releasing a lease", async |conn| {
            let done = sqlx::query("DELETE FROM cluster_lease WHERE name = $1 AND holder = $2")
                .bind(name)
                .bind(holder)
                .execute(&mut *conn)
                .await?;
            Ok(done.rows_affected() > 0)
        })
    }

    fn lease_holder(&self, name: &str) -> Result<Option<String>, Error> {
        self.read("reading a lease", async |conn| {
            sqlx::query_scalar(LEASE_HOLDER)
                .bind(name)
                .fetch_optional(&mut *conn)
                .await
        })
    }

    fn cache_version(&self, name: &str) -> Result<i64, Error> {
        self.read("reading a cache version", async |conn| {
            let version: Option<i64> =
                sqlx::query_scalar("SELECT version FROM cluster_version WHERE name = $1")
                    .bind(name)
                    .fetch_optional(&mut *conn)
                    .await?;
            Ok(version.unwrap_or_default())
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::db::nodes::conformance;
    use crate::db::postgres::tests::TestDb;

    #[test]
    fn node_store_conformance() {
        let Some(db) = TestDb::new() else { return };
        conformance::run_all(&db.connect());
    }
}
