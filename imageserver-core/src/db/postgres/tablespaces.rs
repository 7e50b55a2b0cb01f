//! Optional tablespaces for the large deployment: the work-queue tables
//! (updated most: claims, heartbeats, leases) and the indexes each on a
//! volume of their own, as the seed's database layout asks, beside the
//! tables and the write-ahead log.
//!
//! The administrator creates the tablespaces (`CREATE TABLESPACE … LOCATION
//! …`, a superuser's job, once per database server) and names them in
//! `[database]`; at every connect, under the migration lock and after the
//! migrations, whatever is not yet where it is configured to be is moved
//! there (`ALTER TABLE/INDEX … SET TABLESPACE`). So tables and indexes added
//! by later migrations follow, and a node that starts with the setting moves
//! the existing schema once. Moving rewrites the relation under an exclusive
//! lock: on a large archive, set it before loading, or during a maintenance
//! window. Removing the setting moves nothing back (name `pg_default` to do
//! that).

use sqlx::{Postgres, Row, Transaction};

use super::PgOptions;
use crate::db::Error;

/// The tables `work_tablespace` holds: the work queue and what the nodes of
/// a cluster update every few seconds.
pub(super) const WORK_TABLES: [&str; 5] = [
    "work_queue",
    "work_queue_uid",
    "service_lock",
    "cluster_lease",
    "node",
];

/// `name` if it is a plain lower-case PostgreSQL identifier (it is quoted
/// anyway, but nothing else belongs in a tablespace setting).
pub(super) fn checked_name(name: &str) -> Option<String> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_');
    let rest_ok = name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    (first_ok && rest_ok && name.len() <= 63).then(|| name.to_string())
}

/// Moves the work-queue tables and the indexes of the current schema to
/// their configured tablespaces where they are not there yet; returns what
/// moved, as `(relation, tablespace)`.
pub(super) async fn apply(
    tx: &mut Transaction<'_, Postgres>,
    options: &PgOptions,
) -> Result<Vec<(String, String)>, Error> {
    if options.work_tablespace.is_none() && options.index_tablespace.is_none() {
        return Ok(Vec::new());
    }
    let failed = |e: sqlx::Error| Error::Backend {
        operation: "moving tables and indexes to their configured tablespaces",
        source: Box::new(e),
    };
    // Where each table and index of the schema is now (a relation in the
    // database's default tablespace has reltablespace 0).
    let rows = sqlx::query(
        "SELECT c.relname, c.relkind::text AS kind, coalesce(t.spcname, d.spcname) AS place
         FROM pg_class c
         JOIN pg_namespace n ON n.oid = c.relnamespace
         LEFT JOIN pg_tablespace t ON t.oid = c.reltablespace
         CROSS JOIN (SELECT ts.spcname FROM pg_database db
                     JOIN pg_tablespace ts ON ts.oid = db.dattablespace
                     WHERE db.datname = current_database()) d
         WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'i')
         ORDER BY c.relkind DESC, c.relname",
    )
    .fetch_all(&mut **tx)
    .await
    .map_err(failed)?;
    let mut moved = Vec::new();
    for row in rows {
        let name: String = row.get("relname");
        let kind: String = row.get("kind");
        let place: String = row.get("place");
        let (statement, target) = match (
            kind.as_str(),
            &options.work_tablespace,
            &options.index_tablespace,
        ) {
            ("r", Some(work), _) if WORK_TABLES.contains(&name.as_str()) => ("TABLE", work),
            ("i", _, Some(index)) => ("INDEX", index),
            _ => continue,
        };
        if &place == target {
            continue;
        }
        let sql = format!("ALTER {statement} \"{name}\" SET TABLESPACE \"{target}\"");
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut **tx)
            .await
            .map_err(failed)?;
        moved.push((name, target.clone()));
    }
    Ok(moved)
}

#[cfg(test)]
mod tests {
    use super::checked_name;

    #[test]
    fn only_plain_identifiers_name_a_tablespace() {
        assert_eq!(checked_name("fast_ssd1").as_deref(), Some("fast_ssd1"));
        assert_eq!(checked_name("_q").as_deref(), Some("_q"));
        for bad in ["", "1st", "Fast", "a b", "x\";DROP", "a-b", &"a".repeat(64)] {
            assert_eq!(checked_name(bad), None, "{bad:?}");
        }
    }
}
