//! The upgrade path from a small deployment: copying a SQLite index into an
//! empty PostgreSQL database (`imageserver migrate-db`).
//!
//! The SQLite file is opened read-only (`mode=ro`): it is never written.
//! Every table is copied with its keys unchanged, in foreign-key order, in
//! one PostgreSQL transaction (all or nothing), in chunks of multi-row
//! inserts over `UNNEST` arrays; the identity sequences are then moved past
//! the copied keys. Before committing, each table's row count is compared
//! and a sample of rows (about a hundred per table, spread over the key
//! range) is read back and compared column by column.

use std::path::Path;
use std::time::Duration;

use futures_util::TryStreamExt;
use rusqlite::{types::ValueRef, Connection, OpenFlags};
use sqlx::{AssertSqlSafe, PgConnection, Row};

use super::{map_error, PgIndex, PgOptions};
use crate::db::Error;

/// How a column is typed on each side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// INTEGER (SQLite) → BIGINT or INTEGER.
    Int,
    /// TEXT → TEXT.
    Text,
    /// INTEGER 0/1 → BOOLEAN.
    Bool,
    /// REAL → DOUBLE PRECISION.
    Real,
}

use Kind::{Bool, Int, Real, Text};

/// The tables in foreign-key order, each with its key column first.
const TABLES: &[(&str, &[(&str, Kind)])] = &[
    (
        "partition",
        &[
            ("id", Int),
            ("ae_title", Text),
            ("folder", Text),
            ("description", Text),
            ("port", Int),
            ("accept_any_device", Bool),
            ("duplicate_policy", Text),
            ("pn_case_insensitive", Bool),
            ("enabled", Bool),
            ("created_at", Int),
        ],
    ),
    (
        "filesystem",
        &[
            ("id", Int),
            ("path", Text),
            ("tier", Int),
            ("high_watermark", Real),
            ("low_watermark", Real),
            ("read_only", Bool),
            ("write_only", Bool),
            ("enabled", Bool),
            ("description", Text),
            ("capacity_mb", Int),
            ("marker", Text),
        ],
    ),
    (
        "device",
        &[
            ("id", Int),
            ("partition_id", Int),
            ("ae_title", Text),
            ("host", Text),
            ("port", Int),
            ("allow_store", Bool),
            ("allow_query", Bool),
            ("allow_retrieve", Bool),
            ("allow_autoroute", Bool),
            ("max_associations", Int),
            ("max_outgoing_associations", Int),
            ("allow_replace", Bool),
            ("description", Text),
            ("enabled", Bool),
            ("last_seen", Int),
        ],
    ),
    (
        "patient",
        &[
            ("id", Int),
            ("partition_id", Int),
            ("patient_id", Text),
            ("issuer_of_patient_id", Text),
            ("patient_name", Text),
            ("birth_date", Text),
            ("sex", Text),
            ("num_studies", Int),
            ("num_series", Int),
            ("num_instances", Int),
        ],
    ),
    (
        "study_storage",
        &[
            ("id", Int),
            ("partition_id", Int),
            ("study_uid", Text),
            ("filesystem_id", Int),
            ("date_folder", Text),
            ("state", Text),
            ("lock_write", Bool),
            ("lock_read_count", Int),
            ("queue_state", Text),
            ("last_accessed", Int),
            ("created_at", Int),
        ],
    ),
    (
        "study",
        &[
            ("id", Int),
            ("partition_id", Int),
            ("patient_fk", Int),
            ("study_storage_id", Int),
            ("study_uid", Text),
            ("study_date", Text),
            ("study_time", Text),
            ("accession_number", Text),
            ("study_id", Text),
            ("study_description", Text),
            ("referring_physician_name", Text),
            ("specific_character_set", Text),
            ("modalities_in_study", Text),
            ("sop_classes_in_study", Text),
            ("num_series", Int),
            ("num_instances", Int),
            ("size_bytes", Int),
            ("created_at", Int),
            ("updated_at", Int),
        ],
    ),
    (
        "series",
        &[
            ("id", Int),
            ("study_fk", Int),
            ("series_uid", Text),
            ("modality", Text),
            ("series_number", Int),
            ("series_description", Text),
            ("body_part_examined", Text),
            ("series_date", Text),
            ("series_time", Text),
            ("num_instances", Int),
        ],
    ),
    (
        "instance",
        &[
            ("id", Int),
            ("partition_id", Int),
            ("series_fk", Int),
            ("sop_instance_uid", Text),
            ("sop_class_uid", Text),
            ("instance_number", Int),
            ("transfer_syntax_uid", Text),
            ("file_size", Int),
            ("digest", Text),
            ("source_ae", Text),
            ("received_at", Int),
        ],
    ),
    (
        "work_queue",
        &[
            ("id", Int),
            ("partition_id", Int),
            ("study_storage_id", Int),
            ("type", Text),
            ("status", Text),
            ("priority", Int),
            ("scheduled_time", Int),
            ("expiration_time", Int),
            ("failure_count", Int),
            ("failure_description", Text),
            ("processor_id", Text),
            ("lease_expires_at", Int),
            ("attempt", Int),
            ("study_lock", Text),
            ("payload", Text),
            ("created_at", Int),
            ("updated_at", Int),
        ],
    ),
    (
        "work_queue_uid",
        &[
            ("id", Int),
            ("work_queue_id", Int),
            ("series_uid", Text),
            ("sop_instance_uid", Text),
            ("failed", Bool),
            ("failure_count", Int),
            ("duplicate", Bool),
            ("relative_path", Text),
        ],
    ),
    (
        "duplicate",
        &[
            ("id", Int),
            ("partition_id", Int),
            ("sop_instance_uid", Text),
            ("filesystem_id", Int),
            ("date_folder", Text),
            ("study_uid", Text),
            ("series_uid", Text),
            ("variant", Int),
            ("file_size", Int),
            ("digest", Text),
            ("source_ae", Text),
            ("received_at", Int),
        ],
    ),
    (
        "reconcile",
        &[
            ("id", Int),
            ("partition_id", Int),
            ("sop_instance_uid", Text),
            ("sop_class_uid", Text),
            ("transfer_syntax_uid", Text),
            ("filesystem_id", Int),
            ("date_folder", Text),
            ("study_uid", Text),
            ("series_uid", Text),
            ("variant", Int),
            ("file_size", Int),
            ("digest", Text),
            ("source_ae", Text),
            ("received_at", Int),
            ("patient_id", Text),
            ("issuer_of_patient_id", Text),
            ("patient_name", Text),
            ("birth_date", Text),
        ],
    ),
    (
        "study_edit",
        &[
            ("id", Int),
            ("partition_id", Int),
            ("study_uid", Text),
            ("actor", Text),
            ("reason", Text),
            ("status", Text),
            ("requested_at", Int),
            ("completed_at", Int),
        ],
    ),
    (
        // Keyed by (edit_id, attribute): counted, not sampled by key.
        "study_edit_change",
        &[
            ("edit_id", Int),
            ("attribute", Text),
            ("old_value", Text),
            ("new_value", Text),
        ],
    ),
    (
        "audit_log",
        &[
            ("id", Int),
            ("at", Int),
            ("actor", Text),
            ("action", Text),
            ("partition_id", Int),
            ("study_uid", Text),
            ("details", Text),
        ],
    ),
    (
        "service_lock",
        &[("name", Text), ("holder", Text), ("expires_at", Int)],
    ),
    (
        "archive_root",
        &[("id", Int), ("path", Text), ("marker", Text)],
    ),
    (
        "archive_entry",
        &[
            ("id", Int),
            ("partition_id", Int),
            ("study_uid", Text),
            ("path", Text),
            ("date_folder", Text),
            ("size_bytes", Int),
            ("digest", Text),
            ("instances", Int),
            ("instance_bytes", Int),
            ("archived_at", Int),
        ],
    ),
];

/// Rows per multi-row insert.
const CHUNK: usize = 2000;
/// Rows compared per table, at most.
const SAMPLE: u64 = 100;

/// What was copied from one table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableCopy {
    /// The table.
    pub table: &'static str,
    /// Rows copied (equal on both sides: verified).
    pub rows: u64,
    /// Rows read back and compared column by column.
    pub sampled: u64,
}

/// The outcome of [`copy_from_sqlite`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyReport {
    /// The target database's URL, without password.
    pub target: String,
    /// Per table, in copy order.
    pub tables: Vec<TableCopy>,
}

/// One value, as both sides are compared.
#[derive(Debug, Clone, PartialEq)]
enum Cell {
    Null,
    Int(i64),
    Text(String),
    Bool(bool),
    Real(f64),
}

/// Column arrays of one chunk, typed for binding.
enum ColumnData {
    Int(Vec<Option<i64>>),
    Text(Vec<Option<String>>),
    Bool(Vec<Option<bool>>),
    Real(Vec<Option<f64>>),
}

impl ColumnData {
    fn new(kind: Kind) -> ColumnData {
        match kind {
            Int => ColumnData::Int(Vec::with_capacity(CHUNK)),
            Text => ColumnData::Text(Vec::with_capacity(CHUNK)),
            Bool => ColumnData::Bool(Vec::with_capacity(CHUNK)),
            Real => ColumnData::Real(Vec::with_capacity(CHUNK)),
        }
    }

    fn push(&mut self, cell: Cell) {
        match (self, cell) {
            (ColumnData::Int(v), Cell::Int(n)) => v.push(Some(n)),
            (ColumnData::Text(v), Cell::Text(t)) => v.push(Some(t)),
            (ColumnData::Bool(v), Cell::Bool(b)) => v.push(Some(b)),
            (ColumnData::Real(v), Cell::Real(x)) => v.push(Some(x)),
            (ColumnData::Int(v), _) => v.push(None),
            (ColumnData::Text(v), _) => v.push(None),
            (ColumnData::Bool(v), _) => v.push(None),
            (ColumnData::Real(v), _) => v.push(None),
        }
    }

    fn cast(&self) -> &'static str {
        match self {
            ColumnData::Int(_) => "bigint[]",
            ColumnData::Text(_) => "text[]",
            ColumnData::Bool(_) => "boolean[]",
            ColumnData::Real(_) => "float8[]",
        }
    }
}

/// Copies the SQLite index at `sqlite_path` (opened read-only, schema
/// version [`crate::db::sqlite::SCHEMA_VERSION`]) into the PostgreSQL
/// database `pg_url`, which must be empty (no index rows; its schema is
/// created if missing). Verifies counts and a sample of rows before
/// committing.
pub fn copy_from_sqlite(sqlite_path: &Path, pg_url: &str) -> Result<CopyReport, Error> {
    const OPERATION: &str = "copying the SQLite index";
    let source_error = |e: rusqlite::Error| Error::Open {
        url: sqlite_path.display().to_string(),
        source: Box::new(e),
    };
    if !sqlite_path.is_file() {
        return Err(Error::Open {
            url: sqlite_path.display().to_string(),
            source: "no such file".into(),
        });
    }
    // Nothing may write the source while it is copied.
    let _exclusive = crate::db::sqlite::ExclusiveUse::take(sqlite_path)?;
    let source = Connection::open_with_flags(
        sqlite_path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(source_error)?;
    source
        .busy_timeout(Duration::from_secs(10))
        .map_err(source_error)?;
    let version: u32 = source
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(source_error)?;
    if version != crate::db::sqlite::SCHEMA_VERSION {
        return Err(Error::Open {
            url: sqlite_path.display().to_string(),
            source: format!(
                "the SQLite index has schema version {version}, this build copies version {} \
                 (open it once with this build's `serve` or `import` first)",
                crate::db::sqlite::SCHEMA_VERSION
            )
            .into(),
        });
    }
    // Nothing may be left behind silently: every column of the file must
    // be one this build copies.
    let uncovered = uncovered_columns(&source).map_err(source_error)?;
    if !uncovered.is_empty() {
        return Err(Error::Backend {
            operation: OPERATION,
            source: format!(
                "this build does not know how to copy the SQLite columns {}",
                uncovered.join(", ")
            )
            .into(),
        });
    }
    // One read transaction: a consistent snapshot of the whole file.
    source.execute_batch("BEGIN").map_err(source_error)?;

    let (url, options) = PgOptions::from_url(pg_url)?;
    let target = PgIndex::connect_with(&url, options)?;
    let report = target
        .runtime
        .block_on(async {
            let mut tx = target.pool.begin().await?;
            for (table, _) in TABLES {
                let count: i64 =
                    sqlx::query_scalar(AssertSqlSafe(format!("SELECT COUNT(*) FROM {table}")))
                        .fetch_one(&mut *tx)
                        .await?;
                if count > 0 {
                    return Ok(Err(Error::Backend {
                        operation: OPERATION,
                        source: format!(
                            "the target database is not empty: table {table} has {count} rows"
                        )
                        .into(),
                    }));
                }
            }
            let mut tables = Vec::new();
            for (table, columns) in TABLES {
                match copy_table(&source, &mut tx, table, columns).await? {
                    Ok(copied) => tables.push(copied),
                    Err(e) => return Ok(Err(e)),
                }
            }
            tx.commit().await?;
            Ok::<_, sqlx::Error>(Ok(CopyReport {
                target: target.url.clone(),
                tables,
            }))
        })
        .map_err(|e| map_error(OPERATION, e))??;
    let _ = source.execute_batch("COMMIT");
    Ok(report)
}

/// Tables deliberately not copied: a cluster's runtime state (its nodes,
/// named leases and cache versions), which the target's own schema and
/// nodes write.
const NOT_COPIED: &[&str] = &["node", "cluster_lease", "cluster_version"];

/// The `table.column`s of the SQLite file that [`TABLES`] does not copy
/// (the schema bookkeeping tables and [`NOT_COPIED`] aside).
fn uncovered_columns(source: &Connection) -> rusqlite::Result<Vec<String>> {
    let mut statement = source.prepare(
        "SELECT m.name, c.name FROM sqlite_schema m, pragma_table_info(m.name) c
         WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite_%'
         ORDER BY m.name, c.cid",
    )?;
    let columns =
        statement.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
    let mut uncovered = Vec::new();
    for column in columns {
        let (table, column) = column?;
        if NOT_COPIED.contains(&table.as_str()) {
            continue;
        }
        let known = TABLES
            .iter()
            .find(|(name, _)| *name == table)
            .is_some_and(|(_, columns)| columns.iter().any(|(name, _)| *name == column));
        if !known {
            uncovered.push(format!("{table}.{column}"));
        }
    }
    Ok(uncovered)
}

/// Copies and verifies one table inside the target transaction.
async fn copy_table(
    source: &Connection,
    target: &mut PgConnection,
    table: &'static str,
    columns: &[(&str, Kind)],
) -> Result<Result<TableCopy, Error>, sqlx::Error> {
    const OPERATION: &str = "copying the SQLite index";
    let sqlite_error = |e: rusqlite::Error| Error::Backend {
        operation: OPERATION,
        source: Box::new(e),
    };
    let names: Vec<&str> = columns.iter().map(|(name, _)| *name).collect();
    let key = names[0];
    let total: i64 =
        match source.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0)) {
            Ok(total) => total,
            Err(e) => return Ok(Err(sqlite_error(e))),
        };
    let total = u64::try_from(total).unwrap_or(0);
    let step = (total / SAMPLE).max(1);

    let insert = {
        let params: Vec<String> = columns
            .iter()
            .enumerate()
            .map(|(idx, (_, kind))| format!("${}::{}", idx + 1, ColumnData::new(*kind).cast()))
            .collect();
        format!(
            "INSERT INTO {table} ({}) SELECT * FROM UNNEST({})",
            names.join(", "),
            params.join(", ")
        )
    };
    let mut statement = match source.prepare(&format!(
        "SELECT {} FROM {table} ORDER BY {key}",
        names.join(", ")
    )) {
        Ok(statement) => statement,
        Err(e) => return Ok(Err(sqlite_error(e))),
    };
    let mut rows = match statement.query([]) {
        Ok(rows) => rows,
        Err(e) => return Ok(Err(sqlite_error(e))),
    };
    let mut chunk: Vec<ColumnData> = columns.iter().map(|(_, k)| ColumnData::new(*k)).collect();
    let mut in_chunk = 0usize;
    let mut copied = 0u64;
    let mut samples: Vec<Vec<Cell>> = Vec::new();
    loop {
        let row = match rows.next() {
            Ok(row) => row,
            Err(e) => return Ok(Err(sqlite_error(e))),
        };
        if let Some(row) = row {
            let mut cells = Vec::with_capacity(columns.len());
            for (idx, (name, kind)) in columns.iter().enumerate() {
                match row.get_ref(idx).map(|v| cell(v, *kind)) {
                    Ok(Ok(c)) => cells.push(c),
                    Ok(Err(cause)) => {
                        return Ok(Err(Error::Backend {
                            operation: OPERATION,
                            source: Box::new(BadCell {
                                table,
                                column: (*name).to_string(),
                                cause,
                            }),
                        }))
                    }
                    Err(e) => return Ok(Err(sqlite_error(e))),
                }
            }
            // Rows are sampled by their first column, which must be unique.
            let unique_key = table != "study_edit_change";
            if unique_key && copied.is_multiple_of(step) && (samples.len() as u64) < SAMPLE {
                samples.push(cells.clone());
            }
            for (column, c) in chunk.iter_mut().zip(cells) {
                column.push(c);
            }
            in_chunk += 1;
            copied += 1;
        }
        if in_chunk == CHUNK || (row.is_none() && in_chunk > 0) {
            let mut query = sqlx::query(AssertSqlSafe(insert.clone()));
            for column in &chunk {
                query = match column {
                    ColumnData::Int(v) => query.bind(v.clone()),
                    ColumnData::Text(v) => query.bind(v.clone()),
                    ColumnData::Bool(v) => query.bind(v.clone()),
                    ColumnData::Real(v) => query.bind(v.clone()),
                };
            }
            query.execute(&mut *target).await?;
            chunk = columns.iter().map(|(_, k)| ColumnData::new(*k)).collect();
            in_chunk = 0;
        }
        if row.is_none() {
            break;
        }
    }
    if key == "id" {
        sqlx::query(AssertSqlSafe(format!(
            "SELECT setval(pg_get_serial_sequence('{table}', 'id'),
                           COALESCE((SELECT max(id) FROM {table}), 1),
                           (SELECT max(id) FROM {table}) IS NOT NULL)"
        )))
        .execute(&mut *target)
        .await?;
    }

    // Verify: counts, then the sampled rows column by column.
    let count: i64 = sqlx::query_scalar(AssertSqlSafe(format!("SELECT COUNT(*) FROM {table}")))
        .fetch_one(&mut *target)
        .await?;
    if u64::try_from(count).ok() != Some(total) || copied != total {
        return Ok(Err(Error::Backend {
            operation: OPERATION,
            source: format!(
                "{table}: {total} rows in SQLite, {copied} read, {count} in PostgreSQL"
            )
            .into(),
        }));
    }
    let select: Vec<String> = columns
        .iter()
        .map(|(name, kind)| match kind {
            Int => format!("{name}::bigint AS {name}"),
            Real => format!("{name}::float8 AS {name}"),
            Text | Bool => name.to_string(),
        })
        .collect();
    let lookup = format!("SELECT {} FROM {table} WHERE {key} = $1", select.join(", "));
    for expected in &samples {
        let query = sqlx::query(AssertSqlSafe(lookup.clone()));
        let query = match &expected[0] {
            Cell::Int(n) => query.bind(*n),
            Cell::Text(t) => query.bind(t.clone()),
            other => {
                return Ok(Err(Error::Backend {
                    operation: OPERATION,
                    source: format!("{table}: unexpected key {other:?}").into(),
                }))
            }
        };
        let mut found = query.fetch(&mut *target);
        let Some(row) = found.try_next().await? else {
            return Ok(Err(Error::Backend {
                operation: OPERATION,
                source: format!("{table}: row {:?} missing after the copy", expected[0]).into(),
            }));
        };
        for (idx, (name, kind)) in columns.iter().enumerate() {
            let actual = match kind {
                Int => row.try_get::<Option<i64>, _>(idx)?.map(Cell::Int),
                Text => row.try_get::<Option<String>, _>(idx)?.map(Cell::Text),
                Bool => row.try_get::<Option<bool>, _>(idx)?.map(Cell::Bool),
                Real => row.try_get::<Option<f64>, _>(idx)?.map(Cell::Real),
            }
            .unwrap_or(Cell::Null);
            if actual != expected[idx] {
                return Ok(Err(Error::Backend {
                    operation: OPERATION,
                    source: format!(
                        "{table}.{name} of row {:?}: {:?} in SQLite, {actual:?} in PostgreSQL",
                        expected[0], expected[idx]
                    )
                    .into(),
                }));
            }
        }
    }
    Ok(Ok(TableCopy {
        table,
        rows: total,
        sampled: samples.len() as u64,
    }))
}

/// A SQLite value the target column cannot take.
#[derive(Debug, thiserror::Error)]
enum CellError {
    /// Text that is not UTF-8.
    #[error("the text is not UTF-8")]
    NotUtf8(#[source] std::str::Utf8Error),
    /// A value of another storage class than the column's.
    #[error("{found:?} value where {expected:?} was expected")]
    Mismatch {
        /// The value's SQLite storage class.
        found: rusqlite::types::Type,
        /// What the column holds.
        expected: Kind,
    },
}

/// A value of the SQLite file that cannot be copied, and where it is.
#[derive(Debug, thiserror::Error)]
#[error("cannot copy a value of {table}.{column}")]
struct BadCell {
    table: &'static str,
    column: String,
    #[source]
    cause: CellError,
}

/// A SQLite value as the target column takes it (text without NULs).
fn cell(value: ValueRef<'_>, kind: Kind) -> Result<Cell, CellError> {
    Ok(match (value, kind) {
        (ValueRef::Null, _) => Cell::Null,
        (ValueRef::Integer(n), Int) => Cell::Int(n),
        (ValueRef::Integer(n), Bool) => Cell::Bool(n != 0),
        (ValueRef::Integer(n), Real) => Cell::Real(n as f64),
        (ValueRef::Real(x), Real) => Cell::Real(x),
        (ValueRef::Text(t), Text) => {
            let text = std::str::from_utf8(t).map_err(CellError::NotUtf8)?;
            Cell::Text(text.replace('\0', ""))
        }
        (other, expected) => {
            return Err(CellError::Mismatch {
                found: other.data_type(),
                expected,
            })
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every table and column of the current SQLite schema is copied.
    #[test]
    fn every_sqlite_column_is_copied() {
        let dir = std::env::temp_dir().join(format!("copy-columns-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("index.db");
        drop(crate::db::sqlite::SqliteIndex::open(&path).expect("a fresh index"));
        let source = Connection::open(&path).expect("open");
        let uncovered = uncovered_columns(&source).expect("schema");
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(uncovered, Vec::<String>::new());
    }
}
