//! The PostgreSQL backend of the index (sqlx): the dedicated database server
//! of the medium deployment, and the shared database of a cluster.
//!
//! - **Sync trait, async driver.** [`IndexStore`] and [`QueryStore`](crate::db::QueryStore) are
//!   blocking traits; a [`PgIndex`] owns a private current-thread tokio
//!   runtime, and every method `block_on`s a future on the calling thread,
//!   which drives sqlx's sockets itself: a round trip wakes no other
//!   thread (a multi-thread runtime's workers cost a futex wake-up and an
//!   epoll round per round trip; ARCHITECTURE.md's `postgres/` entry has
//!   the measurements). Callers at once take turns
//!   driving it. Work that must go on between calls runs elsewhere: the
//!   work queue's LISTEN on a runtime of its own, early ingest look-ups on
//!   a helper thread (`early.rs`). Never call a `PgIndex` from inside a tokio
//!   runtime (that panics): the archive calls it from its own threads
//!   (associations, the group committer), never from an executor.
//! - **Pools.** A sqlx pool of at most `pool_size` connections, and one of
//!   `query_pool_size` for queries (C-FIND, retrieve lists), so that queries
//!   can never take the connections ingest needs. Connections are not
//!   pinged when they leave the pool (that was a round trip per call): an
//!   operation that finds its connection dead (a database restart, an
//!   administrator's `pg_terminate_backend`) before its COMMIT was sent
//!   runs again, once, on a pinged connection, dead ones being discarded
//!   (`PgIndex::write`, `PgIndex::read`). When the database is
//!   unreachable a call fails after `connect_timeout` with
//!   [`Error::Backend`] (ingest answers A700, C-FIND a failure status)
//!   and the next call tries again: reconnecting is the
//!   pool's job, nothing restarts. Every call is also bounded as a whole
//!   (statement timeout + connect timeout + a margin), so a vanished network
//!   gives an error, not a hang.
//! - **Transactions.** Every write method is one transaction at READ
//!   COMMITTED. Serialization failures and deadlocks (SQLSTATE 40001, 40P01)
//!   retry the whole transaction with backoff for up to [`RETRY_FOR`]; they
//!   never reach callers before that. A lost connection is retried once
//!   (above) unless it was lost during COMMIT; other failures are not
//!   retried: a commit that may not have happened is reported, so no
//!   C-STORE is acknowledged without a commit, and none is re-run blindly
//!   (re-indexing a batch by SOP Instance UID would leave the rows right
//!   but answer Replaced for what was Inserted, and a follow-up item
//!   claimed meanwhile would be created a second time).
//! - **Group commit.** `insert_instances` indexes a whole batch with a fixed
//!   number of set-based statements (UNNEST arrays, multi-row upserts), six
//!   round trips for a one-study batch whatever its size: see `ingest.rs`, which also
//!   explains how concurrent nodes are kept from deadlocking or counting
//!   twice.
//! - **Migrations.** `migrations/NNNN_*.sql`, applied at connect inside one
//!   transaction holding `pg_advisory_xact_lock`, so several nodes starting
//!   together migrate once; the version lives in `schema_version`. A newer
//!   version than this build knows is [`Error::SchemaTooNew`].
//!
//! The schema is SQLite's in PostgreSQL types (`migrations/0001_initial.sql`
//! lists the differences); text columns use the "C" collation so that
//! ordering and case folding match SQLite's BINARY and NOCASE exactly.
//! PostgreSQL text cannot hold NUL characters: NULs inside received values
//! are dropped before they are stored (SQLite keeps them).
//!
//! URL: `postgres://user[:password]@host[:port]/database`, plus optional
//! query parameters read here and removed before sqlx sees the URL:
//! `pool_size`, `query_pool_size`, `connect_timeout_secs`,
//! `statement_timeout_secs`, `work_tablespace`, `index_tablespace` (see
//! `tablespaces.rs`).

mod admin;
mod archive;
#[cfg(feature = "sqlite")]
mod copy;
mod early;
mod ingest;
mod nodes;
mod query;
mod recovery;
mod retry;
mod studies;
mod tablespaces;
mod work;

use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::{ConnectOptions, PgConnection, Row};

use crate::db::rows::{self, Columns};
use crate::db::studies::now_ms;
use crate::db::{log_batch, redact_url, sql, Admission, Error, FollowUp, IndexStore, IngestLookup};
use crate::model::{
    AeTitle, DeviceSpec, DuplicateRecord, Filesystem, FilesystemId, FilesystemSpec, IndexCounts,
    InsertOutcome, InstanceRecord, PartitionId, PartitionSpec, StoredInstance, StudyDeletions,
    StudyLocation, Uid,
};

#[cfg(test)]
use retry::lost_connection;
use retry::{map_error, TxError};

pub use admin::{create_database, database_url, drop_database};
#[cfg(feature = "sqlite")]
pub use copy::{copy_from_sqlite, CopyReport, TableCopy};

/// The migrations, in order: `(version, SQL)`.
const MIGRATIONS: &[(u32, &str)] = &[
    (1, include_str!("migrations/0001_initial.sql")),
    (2, include_str!("migrations/0002_study_edit.sql")),
    (3, include_str!("migrations/0003_work_queue_claim.sql")),
    (4, include_str!("migrations/0004_device_outgoing_limit.sql")),
    (5, include_str!("migrations/0005_replace_and_reconcile.sql")),
    (
        6,
        include_str!("migrations/0006_filesystem_capacity_marker.sql"),
    ),
    (7, include_str!("migrations/0007_nodes.sql")),
    (8, include_str!("migrations/0008_archive.sql")),
    (9, include_str!("migrations/0009_ingest_round_trips.sql")),
    (10, include_str!("migrations/0010_append_work_slack.sql")),
    (11, include_str!("migrations/0011_ingest_one_statement.sql")),
    (12, include_str!("migrations/0012_work_uid_unique.sql")),
    (13, include_str!("migrations/0013_ingest_function.sql")),
];

/// The newest schema version this build knows (`schema_version.version`).
pub const SCHEMA_VERSION: u32 = MIGRATIONS[MIGRATIONS.len() - 1].0;

/// How long serialization failures and deadlocks are retried.
pub const RETRY_FOR: Duration = Duration::from_secs(10);

/// The key of the advisory lock migrations hold (any constant; "imgsrv").
const MIGRATION_LOCK: i64 = 0x696d_6773_7276;

/// Connection settings of a [`PgIndex`].
#[derive(Debug, Clone, PartialEq)]
pub struct PgOptions {
    /// Most connections open at once for ingest, work items and study
    /// operations.
    pub pool_size: u32,
    /// Most connections open at once for queries (C-FIND, retrieve lists):
    /// a pool of their own, so no number of queries can take a connection
    /// ingest needs.
    pub query_pool_size: u32,
    /// How long a call waits for a connection (including connecting)
    /// before it fails.
    pub connect_timeout: Duration,
    /// PostgreSQL's `statement_timeout` for every statement (None: no limit).
    pub statement_timeout: Option<Duration>,
    /// The tablespace the work-queue tables live in (the tables updated
    /// most: work items, their UIDs, leases, nodes); None leaves them where
    /// they are.
    pub work_tablespace: Option<String>,
    /// The tablespace every index of the schema lives in; None leaves them
    /// where they are.
    pub index_tablespace: Option<String>,
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions {
            pool_size: 8,
            query_pool_size: 4,
            connect_timeout: Duration::from_secs(5),
            statement_timeout: Some(Duration::from_secs(60)),
            work_tablespace: None,
            index_tablespace: None,
        }
    }
}

impl PgOptions {
    /// Splits the options this module reads (`pool_size`, `query_pool_size`,
    /// `connect_timeout_secs`, `statement_timeout_secs`, `work_tablespace`,
    /// `index_tablespace`) off a URL's query
    /// string; returns the URL without them and the options (defaults for
    /// those absent).
    pub fn from_url(url: &str) -> Result<(String, PgOptions), Error> {
        let mut options = PgOptions::default();
        let Some((base, query)) = url.split_once('?') else {
            return Ok((url.to_string(), options));
        };
        let bad = |key: &str, value: &str| Error::Open {
            url: redact_url(url),
            source: format!("{key}={value}: expected a positive integer").into(),
        };
        let mut rest = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let number = || value.parse::<u64>().ok().filter(|n| *n > 0);
            match key {
                "pool_size" => {
                    options.pool_size = number()
                        .and_then(|n| u32::try_from(n).ok())
                        .ok_or_else(|| bad(key, value))?;
                }
                "query_pool_size" => {
                    options.query_pool_size = number()
                        .and_then(|n| u32::try_from(n).ok())
                        .ok_or_else(|| bad(key, value))?;
                }
                "connect_timeout_secs" => {
                    options.connect_timeout =
                        Duration::from_secs(number().ok_or_else(|| bad(key, value))?);
                }
                "statement_timeout_secs" => {
                    options.statement_timeout = match value {
                        "0" => None,
                        _ => Some(Duration::from_secs(
                            number().ok_or_else(|| bad(key, value))?,
                        )),
                    };
                }
                "work_tablespace" | "index_tablespace" => {
                    let name = tablespaces::checked_name(value).ok_or_else(|| Error::Open {
                        url: redact_url(url),
                        source: format!(
                            "{key}={value}: expected a PostgreSQL identifier \
                             (lower-case letters, digits and _, at most 63)"
                        )
                        .into(),
                    })?;
                    if key == "work_tablespace" {
                        options.work_tablespace = Some(name);
                    } else {
                        options.index_tablespace = Some(name);
                    }
                }
                _ => rest.push(pair),
            }
        }
        let url = if rest.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{}", rest.join("&"))
        };
        Ok((url, options))
    }

    /// The longest a whole call may take before it is abandoned.
    fn call_timeout(&self) -> Duration {
        self.statement_timeout.unwrap_or(Duration::from_secs(600))
            + self.connect_timeout
            + Duration::from_secs(5)
    }
}

/// The PostgreSQL index: an [`IndexStore`] and [`crate::db::QueryStore`]
/// over a pool of connections to one database.
pub struct PgIndex {
    /// The URL without its password.
    url: String,
    options: PgOptions,
    pool: PgPool,
    /// Write-pool connections kept between calls (see [`retry::Kept`]).
    kept: Arc<retry::Kept>,
    /// Queries' own connections (see [`PgOptions::query_pool_size`]).
    query_pool: PgPool,
    /// Ingest batches indexed in one statement, and those that tried and
    /// fell back to the general way (see `ingest::single`).
    one_statement: [AtomicU64; 2],
    /// The helper thread of early ingest look-ups.
    early: early::EarlyLookups,
    /// Drives the pool's sockets (current-thread: driven by whichever
    /// caller is in `block_on`); declared last so that it outlives the pool
    /// when dropped. Shared with early look-ups under way.
    runtime: Arc<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for PgIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgIndex")
            .field("url", &self.url)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl Drop for PgIndex {
    fn drop(&mut self) {
        // Closes the connections politely (bounded) before the runtime goes.
        let pools = [self.pool.clone(), self.query_pool.clone()];
        let kept = self.kept.drain();
        self.runtime.block_on(async move {
            drop(kept);
            let close = futures_util::future::join_all(pools.iter().map(|pool| pool.close()));
            let _ = tokio::time::timeout(Duration::from_secs(2), close).await;
        });
    }
}

impl PgIndex {
    /// Connects to the database a `postgres://` URL names (with the pool
    /// options of its query string, see [`PgOptions::from_url`]) and brings
    /// its schema up to [`SCHEMA_VERSION`].
    pub fn connect(url: &str) -> Result<PgIndex, Error> {
        let (url, options) = PgOptions::from_url(url)?;
        PgIndex::connect_with(&url, options)
    }

    /// Like [`PgIndex::connect`] with explicit options (the URL's query
    /// string must not carry them).
    ///
    /// Fails with [`Error::Open`] when the database cannot be reached within
    /// the connect timeout, [`Error::SchemaTooNew`] when it was migrated by a
    /// newer build, and [`Error::Migrate`] when a migration fails.
    pub fn connect_with(url: &str, options: PgOptions) -> Result<PgIndex, Error> {
        let redacted = redact_url(url);
        let open_error = |source: Box<dyn std::error::Error + Send + Sync>| Error::Open {
            url: redacted.clone(),
            source,
        };
        let mut connect = PgConnectOptions::from_str(url)
            .map_err(|e| open_error(Box::new(e)))?
            .application_name("imageserver")
            .statement_cache_capacity(256)
            .log_statements(tracing::log::LevelFilter::Trace)
            .log_slow_statements(tracing::log::LevelFilter::Warn, Duration::from_secs(2));
        if let Some(timeout) = options.statement_timeout {
            connect = connect.options([("statement_timeout", timeout.as_millis().to_string())]);
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| open_error(Box::new(e)))?;
        // The write pool's statements (ingest's batch, the work queue) take
        // arrays and run thousands of times with the same shape: planned
        // once, not at every bind (custom plans cost ingest's four batch
        // statements ~1.6 ms a C-STORE at one association). Searches keep
        // PostgreSQL's default: their best plan depends on the values.
        let write_connect = connect
            .clone()
            .options([("plan_cache_mode", "force_generic_plan")]);
        let pool_of = |size: u32, connect: &PgConnectOptions| {
            runtime.block_on(async {
                PgPoolOptions::new()
                    .max_connections(size.max(1))
                    .min_connections(0)
                    .acquire_timeout(options.connect_timeout)
                    .idle_timeout(Some(Duration::from_secs(600)))
                    .test_before_acquire(false)
                    .connect_lazy_with(connect.clone())
            })
        };
        let pool = pool_of(options.pool_size, &write_connect);
        let query_pool = pool_of(options.query_pool_size, &connect);
        let index = PgIndex {
            url: redacted,
            options,
            pool,
            kept: Default::default(),
            query_pool,
            one_statement: Default::default(),
            early: Default::default(),
            runtime: Arc::new(runtime),
        };
        index.migrate()?;
        Ok(index)
    }

    /// How many ingest batches were indexed in one statement, and how many
    /// tried to and fell back to the general way (a batch that replaces an
    /// instance, or met a concurrent writer), since this handle opened.
    pub fn one_statement_batches(&self) -> (u64, u64) {
        (
            self.one_statement[0].load(Ordering::Relaxed),
            self.one_statement[1].load(Ordering::Relaxed),
        )
    }

    /// The URL it connects to, without password.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Applies the migrations the database lacks, in one transaction that
    /// holds the migration advisory lock, then moves tables and indexes to
    /// their configured tablespaces (in the same transaction).
    fn migrate(&self) -> Result<(), Error> {
        let open_error = |e: sqlx::Error| Error::Open {
            url: self.url.clone(),
            source: Box::new(e),
        };
        let applied = self
            .block_on(async {
                let mut tx = self.pool.begin().await.map_err(open_error)?;
                sqlx::query("SELECT pg_advisory_xact_lock($1)")
                    .bind(MIGRATION_LOCK)
                    .execute(&mut *tx)
                    .await
                    .map_err(open_error)?;
                sqlx::raw_sql(
                    "CREATE TABLE IF NOT EXISTS schema_version (
                     version    INTEGER NOT NULL,
                     applied_at BIGINT  NOT NULL
                 )",
                )
                .execute(&mut *tx)
                .await
                .map_err(open_error)?;
                let found: Option<i32> =
                    sqlx::query_scalar("SELECT max(version) FROM schema_version")
                        .fetch_one(&mut *tx)
                        .await
                        .map_err(open_error)?;
                let found = u32::try_from(found.unwrap_or(0)).unwrap_or(0);
                if found > SCHEMA_VERSION {
                    return Err(Error::SchemaTooNew {
                        found,
                        supported: SCHEMA_VERSION,
                    });
                }
                let mut applied = Vec::new();
                for &(version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > found) {
                    let migrate_error = |e: sqlx::Error| Error::Migrate {
                        version,
                        source: Box::new(e),
                    };
                    sqlx::raw_sql(sql)
                        .execute(&mut *tx)
                        .await
                        .map_err(migrate_error)?;
                    sqlx::query("INSERT INTO schema_version (version, applied_at) VALUES ($1, $2)")
                        .bind(i32::try_from(version).unwrap_or(i32::MAX))
                        .bind(now_ms())
                        .execute(&mut *tx)
                        .await
                        .map_err(migrate_error)?;
                    applied.push(version);
                }
                let moved = tablespaces::apply(&mut tx, &self.options).await?;
                tx.commit().await.map_err(open_error)?;
                for (relation, tablespace) in moved {
                    tracing::info!(%relation, %tablespace, "moved to its configured tablespace");
                }
                Ok(applied)
            })
            .unwrap_or_else(|elapsed| {
                Err(Error::Open {
                    url: self.url.clone(),
                    source: Box::new(elapsed),
                })
            })?;
        for version in applied {
            tracing::info!(version, url = %self.url, "index schema migrated");
        }
        Ok(())
    }
}

/// [`sql::INGEST_LOOKUP`] on `conn`.
async fn ingest_lookup_on(
    conn: &mut PgConnection,
    partition: PartitionId,
    study_uid: &Uid,
    sop_instance_uid: &Uid,
) -> Result<IngestLookup, sqlx::Error> {
    let row = sqlx::query(sql::INGEST_LOOKUP)
        .bind(partition.0)
        .bind(study_uid.as_str())
        .bind(sop_instance_uid.as_str())
        .fetch_one(&mut *conn)
        .await?;
    rows::ingest_lookup(&row)
}

/// `sql` with partition `$1` and a device's columns `$2`…`$9` bound, in
/// the order of [`sql::ENSURE_DEVICE`].
fn device_query<'q>(
    sql: &'static str,
    partition: PartitionId,
    spec: &'q DeviceSpec,
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    sqlx::query(sql)
        .bind(partition.0)
        .bind(spec.ae_title.as_str())
        .bind(pg_text(&spec.host))
        .bind(i32::from(spec.port))
        .bind(spec.allow_store)
        .bind(spec.allow_query)
        .bind(spec.allow_retrieve)
        .bind(i64::from(spec.max_associations))
        .bind(i64::from(spec.max_outgoing_associations))
        .bind(spec.allow_replace)
}

/// The device of `partition` with `ae_title`, read on `conn`.
async fn device_in(
    conn: &mut PgConnection,
    partition: PartitionId,
    ae_title: &AeTitle,
) -> Result<Option<DeviceSpec>, sqlx::Error> {
    let row = sqlx::query(sql::DEVICE)
        .bind(partition.0)
        .bind(ae_title.as_str())
        .fetch_optional(conn)
        .await?;
    row.as_ref().map(rows::device).transpose()
}

/// Text as PostgreSQL can store it: NUL characters removed.
pub(crate) fn pg_text(value: &str) -> std::borrow::Cow<'_, str> {
    if value.contains('\0') {
        std::borrow::Cow::Owned(value.replace('\0', ""))
    } else {
        std::borrow::Cow::Borrowed(value)
    }
}

impl Columns for PgRow {
    type Error = sqlx::Error;

    fn int(&self, column: &str) -> Result<i64, sqlx::Error> {
        self.try_get(column)
    }

    fn opt_int(&self, column: &str) -> Result<Option<i64>, sqlx::Error> {
        self.try_get(column)
    }

    fn int32(&self, column: &str) -> Result<i32, sqlx::Error> {
        self.try_get(column)
    }

    fn real(&self, column: &str) -> Result<f64, sqlx::Error> {
        self.try_get(column)
    }

    fn flag(&self, column: &str) -> Result<bool, sqlx::Error> {
        self.try_get(column)
    }

    fn text(&self, column: &str) -> Result<String, sqlx::Error> {
        self.try_get(column)
    }

    fn opt_text(&self, column: &str) -> Result<Option<String>, sqlx::Error> {
        self.try_get(column)
    }

    fn invalid(&self, column: &str, cause: rows::Cause) -> sqlx::Error {
        sqlx::Error::ColumnDecode {
            index: column.to_string(),
            source: cause,
        }
    }
}

impl IndexStore for PgIndex {
    fn ensure_partition(&self, spec: &PartitionSpec) -> Result<PartitionId, Error> {
        let now = now_ms();
        self.write("ensuring a partition", async |conn| {
            let id: i64 = sqlx::query_scalar(sql::ENSURE_PARTITION)
                .bind(spec.ae_title.as_str())
                .bind(spec.folder.as_str())
                .bind(pg_text(&spec.description).as_ref())
                .bind(i32::from(spec.port))
                .bind(spec.accept_unknown_devices)
                .bind(spec.duplicate_policy.as_str())
                .bind(spec.pn_case_insensitive)
                .bind(now)
                .fetch_one(&mut *conn)
                .await
                .map_err(|e| match &e {
                    // Nodes of a cluster starting together insert the same
                    // partition at once: ON CONFLICT arbitrates on the AE
                    // title only, so the loser can trip the folder's unique
                    // index instead. Retried, it finds the row and updates.
                    sqlx::Error::Database(db) if db.code().as_deref() == Some("23505") => {
                        TxError::Conflict("the partition was inserted concurrently")
                    }
                    _ => TxError::Sql(e),
                })?;
            Ok(PartitionId(id))
        })
    }

    fn partition(&self, ae_title: &AeTitle) -> Result<Option<PartitionId>, Error> {
        self.read("looking up a partition", async |conn| {
            let id: Option<i64> = sqlx::query_scalar(sql::PARTITION)
                .bind(ae_title.as_str())
                .fetch_optional(&mut *conn)
                .await?;
            Ok(id.map(PartitionId))
        })
    }

    fn ensure_filesystem(&self, spec: &FilesystemSpec) -> Result<FilesystemId, Error> {
        const OPERATION: &str = "ensuring a filesystem";
        let path = rows::fs_path(spec, OPERATION)?;
        let capacity = rows::capacity(spec, OPERATION)?;
        self.write(OPERATION, async |conn| {
            let id: i64 = sqlx::query_scalar(sql::ENSURE_FILESYSTEM)
                .bind(pg_text(path).as_ref())
                .bind(i32::from(spec.tier.0))
                .bind(spec.high_watermark)
                .bind(spec.low_watermark)
                .bind(spec.read_only)
                .bind(spec.write_only)
                .bind(pg_text(&spec.description).as_ref())
                .bind(capacity)
                .fetch_one(&mut *conn)
                .await?;
            Ok(FilesystemId(id))
        })
    }

    fn seed_filesystem(&self, spec: &FilesystemSpec) -> Result<(Filesystem, bool), Error> {
        const OPERATION: &str = "seeding a filesystem";
        let path = rows::fs_path(spec, OPERATION)?;
        let capacity = rows::capacity(spec, OPERATION)?;
        self.write(OPERATION, async |conn| {
            let created: Option<i64> = sqlx::query_scalar(sql::SEED_FILESYSTEM)
                .bind(pg_text(path).as_ref())
                .bind(i32::from(spec.tier.0))
                .bind(spec.high_watermark)
                .bind(spec.low_watermark)
                .bind(spec.read_only)
                .bind(spec.write_only)
                .bind(pg_text(&spec.description).as_ref())
                .bind(capacity)
                .fetch_optional(&mut *conn)
                .await?;
            let row = sqlx::query(sql::FILESYSTEM_AT)
                .bind(pg_text(path).as_ref())
                .fetch_one(&mut *conn)
                .await?;
            let row = rows::filesystem(&row)?;
            Ok((row, created.is_some()))
        })
    }

    fn update_filesystem(&self, filesystem: &Filesystem) -> Result<(), Error> {
        const OPERATION: &str = "updating a filesystem";
        let spec = &filesystem.spec;
        let path = rows::fs_path(spec, OPERATION)?;
        let capacity = rows::capacity(spec, OPERATION)?;
        let changed = self.write(OPERATION, async |conn| {
            let done = sqlx::query(sql::UPDATE_FILESYSTEM)
                .bind(pg_text(path).as_ref())
                .bind(i32::from(spec.tier.0))
                .bind(spec.high_watermark)
                .bind(spec.low_watermark)
                .bind(spec.read_only)
                .bind(spec.write_only)
                .bind(pg_text(&spec.description).as_ref())
                .bind(capacity)
                .bind(filesystem.enabled)
                .bind(filesystem.id.0)
                .execute(&mut *conn)
                .await?;
            Ok(done.rows_affected())
        })?;
        if changed == 0 {
            return Err(Error::NotFound {
                what: format!("filesystem {}", filesystem.id.0),
            });
        }
        Ok(())
    }

    fn record_filesystem_marker(&self, id: FilesystemId, marker: &str) -> Result<String, Error> {
        let held = self.write("recording a filesystem marker", async |conn| {
            sqlx::query(sql::RECORD_MARKER)
                .bind(pg_text(marker).as_ref())
                .bind(id.0)
                .execute(&mut *conn)
                .await?;
            let held: Option<Option<String>> = sqlx::query_scalar(sql::MARKER)
                .bind(id.0)
                .fetch_optional(&mut *conn)
                .await?;
            Ok(held.flatten())
        })?;
        held.ok_or_else(|| Error::NotFound {
            what: format!("filesystem {}", id.0),
        })
    }

    fn filesystem_held_bytes(&self) -> Result<Vec<(FilesystemId, u64)>, Error> {
        self.read("measuring filesystem usage", async |conn| {
            let rows: Vec<(i64, i64)> = sqlx::query_as(sql::HELD_BYTES)
                .fetch_all(&mut *conn)
                .await?;
            Ok(rows
                .into_iter()
                .map(|(id, held)| (FilesystemId(id), held.max(0) as u64))
                .collect())
        })
    }

    fn filesystems(&self) -> Result<Vec<Filesystem>, Error> {
        self.read("listing filesystems", async |conn| {
            let rows = sqlx::query(sql::FILESYSTEMS).fetch_all(&mut *conn).await?;
            rows.iter().map(rows::filesystem).collect()
        })
    }

    fn ensure_device(&self, partition: PartitionId, spec: &DeviceSpec) -> Result<(), Error> {
        self.write("ensuring a device", async |conn| {
            device_query(sql::ENSURE_DEVICE, partition, spec)
                .execute(&mut *conn)
                .await?;
            Ok(())
        })
    }

    fn register_device(
        &self,
        partition: PartitionId,
        spec: &DeviceSpec,
        max_devices: u64,
    ) -> Result<Option<DeviceSpec>, Error> {
        self.write("registering a device", async |conn| {
            device_query(sql::REGISTER_DEVICE, partition, spec)
                .bind(i64::try_from(max_devices).unwrap_or(i64::MAX))
                .execute(&mut *conn)
                .await?;
            Ok(device_in(conn, partition, &spec.ae_title).await?)
        })
    }

    fn device(
        &self,
        partition: PartitionId,
        ae_title: &AeTitle,
    ) -> Result<Option<DeviceSpec>, Error> {
        self.read("looking up a device", async |conn| {
            device_in(conn, partition, ae_title).await
        })
    }

    fn delete_device(&self, partition: PartitionId, ae_title: &AeTitle) -> Result<bool, Error> {
        let ae_title = ae_title.as_str().to_string();
        self.write("deleting a device", async |conn| {
            let done = sqlx::query(sql::DELETE_DEVICE)
                .bind(partition.0)
                .bind(&ae_title)
                .execute(&mut *conn)
                .await?;
            Ok(done.rows_affected() > 0)
        })
    }

    fn devices(&self, partition: PartitionId) -> Result<Vec<DeviceSpec>, Error> {
        self.read("listing devices", async |conn| {
            let rows = sqlx::query(sql::DEVICES)
                .bind(partition.0)
                .fetch_all(&mut *conn)
                .await?;
            rows.iter().map(rows::device).collect()
        })
    }

    fn study_location(
        &self,
        partition: PartitionId,
        study_uid: &Uid,
    ) -> Result<Option<StudyLocation>, Error> {
        self.read("looking up a study location", async |conn| {
            let row = sqlx::query(sql::STUDY_LOCATION)
                .bind(partition.0)
                .bind(study_uid.as_str())
                .fetch_optional(&mut *conn)
                .await?;
            row.as_ref().map(rows::location).transpose()
        })
    }

    fn claim_study_location(
        &self,
        partition: PartitionId,
        proposed: &StudyLocation,
    ) -> Result<StudyLocation, Error> {
        let now = now_ms();
        self.write("claiming a study location", async |conn| {
            // Visible at once, durable with the batch that repeats it.
            sqlx::query("SET LOCAL synchronous_commit TO OFF")
                .execute(&mut *conn)
                .await?;
            // As the ingest batch does: an existing row is kept unless it
            // has no online copy.
            sqlx::query(
                "INSERT INTO study_storage (partition_id, study_uid, filesystem_id, date_folder,
                                            created_at)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (partition_id, study_uid) DO UPDATE
                 SET filesystem_id = COALESCE(study_storage.filesystem_id, excluded.filesystem_id),
                     date_folder = CASE WHEN study_storage.filesystem_id IS NULL
                                        THEN excluded.date_folder ELSE study_storage.date_folder END",
            )
            .bind(partition.0)
            .bind(proposed.study_uid.as_str())
            .bind(proposed.filesystem.0)
            .bind(&proposed.date_folder)
            .bind(now)
            .execute(&mut *conn)
            .await?;
            let row = sqlx::query(sql::STUDY_LOCATION)
            .bind(partition.0)
            .bind(proposed.study_uid.as_str())
            .fetch_one(&mut *conn)
            .await?;
            Ok(rows::location(&row)?)
        })
    }

    fn study_deletions(
        &self,
        partition: PartitionId,
        study_uid: &Uid,
    ) -> Result<StudyDeletions, Error> {
        self.read("looking up a study's deletions", async |conn| {
            let row = sqlx::query(sql::STUDY_DELETIONS)
                .bind(partition.0)
                .bind(study_uid.as_str())
                .fetch_one(&mut *conn)
                .await?;
            Ok(StudyDeletions {
                deleting: row.try_get("deleting")?,
                count: u64::try_from(row.try_get::<i64, _>("deletions")?).unwrap_or(0),
                filesystem: row
                    .try_get::<Option<i64>, _>("filesystem")?
                    .map(FilesystemId),
            })
        })
    }

    fn ingest_lookup(
        &self,
        partition: PartitionId,
        study_uid: &Uid,
        sop_instance_uid: &Uid,
    ) -> Result<IngestLookup, Error> {
        self.read("looking up an instance before ingest", async |conn| {
            ingest_lookup_on(conn, partition, study_uid, sop_instance_uid).await
        })
    }

    /// Sent at once on a connection of the write pool by the helper thread
    /// of early look-ups (`early.rs`), which drives the runtime while the
    /// caller receives the rest of the instance.
    fn begin_ingest_lookup(
        &self,
        partition: PartitionId,
        study_uid: &Uid,
        sop_instance_uid: &Uid,
    ) -> crate::db::PendingLookup {
        let (pool, kept, study_uid, sop_instance_uid) = (
            self.pool.clone(),
            self.kept.clone(),
            study_uid.clone(),
            sop_instance_uid.clone(),
        );
        let timeout = self.options.call_timeout();
        let runtime = self.runtime.clone();
        let operation = "looking up an instance before ingest";
        let look_up = move || {
            let looked_up = runtime.block_on(async {
                tokio::time::timeout(timeout, async {
                    let mut conn = retry::lease(&pool, Some(&kept), false).await?;
                    let lookup =
                        ingest_lookup_on(&mut conn, partition, &study_uid, &sop_instance_uid)
                            .await?;
                    kept.put(&pool, conn);
                    Ok::<_, sqlx::Error>(lookup)
                })
                .await
            });
            match looked_up {
                Ok(Ok(lookup)) => Ok(lookup),
                Ok(Err(e)) => Err(map_error(operation, e)),
                Err(elapsed) => Err(map_error(operation, retry::timed_out(elapsed))),
            }
        };
        self.early.begin(operation, look_up)
    }

    fn insert_instances_then(
        &self,
        batch: &[InstanceRecord],
        follow_up: Option<&FollowUp>,
    ) -> Result<Vec<InsertOutcome>, Error> {
        self.insert_instances_when(batch, follow_up, &|| true)
    }

    fn insert_instances_when(
        &self,
        batch: &[InstanceRecord],
        follow_up: Option<&FollowUp>,
        ready: &dyn Fn() -> bool,
    ) -> Result<Vec<InsertOutcome>, Error> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let start = Instant::now();
        let now = now_ms();
        // In study UID order: every appender takes the studies' append
        // locks in that one order, so two nodes' batches never deadlock.
        // The first attempt admits every record: ingest read the studies'
        // deletions just before placing each file, so a refusal is rare.
        // `insert_batch` checks the deletions once the studies' storage
        // rows are locked; a record it would refuse (a deletion committed
        // since) makes the attempt a conflict, and the retry decides
        // before locking, reading the deletions first.
        let mut optimistic = true;
        let outcomes = self.write_when(
            "indexing instances",
            async |conn| {
                let first = std::mem::take(&mut optimistic);
                let deletions = if first {
                    std::collections::HashMap::new()
                } else {
                    ingest::study_deletions(conn, batch).await?
                };
                let admission = Admission::decide(batch, &deletions);
                let kept = admission.kept(batch);
                let follow_ups = follow_up
                    .map(|f| f.items_for(kept.iter()))
                    .unwrap_or_default();
                // The first attempt may take the one-statement way.
                let indexed = match ingest::insert_batch(conn, &kept, &follow_ups, now, first).await
                {
                    Err(TxError::Optimism(what)) => {
                        self.one_statement[1].fetch_add(1, Ordering::Relaxed);
                        return Err(TxError::Optimism(what));
                    }
                    indexed => indexed?,
                };
                if indexed.one_statement {
                    self.one_statement[0].fetch_add(1, Ordering::Relaxed);
                }
                let ingest::Indexed {
                    outcomes,
                    storages,
                    appended,
                    ..
                } = indexed;
                for item in follow_ups.iter().filter(|_| !appended) {
                    // The batch has just written the study's storage row.
                    let study = match &item.study_uid {
                        None => Ok(None),
                        Some(uid) => {
                            match storages.get(&(item.partition.0, uid.as_str().to_string())) {
                                Some(id) => Ok(Some(*id)),
                                None => work::study_of(conn, item).await?,
                            }
                        }
                    };
                    if let Ok(study) = study {
                        work::append_in(conn, item, study).await?;
                    }
                }
                Ok(admission.outcomes(outcomes))
            },
            // The statements ran: the commit waits for the caller.
            Some(ready),
        )?;
        log_batch(&outcomes, start);
        Ok(outcomes)
    }

    fn instance(
        &self,
        partition: PartitionId,
        sop_instance_uid: &Uid,
    ) -> Result<Option<StoredInstance>, Error> {
        self.read("looking up an instance", async |conn| {
            let row = sqlx::query(sql::INSTANCE)
                .bind(partition.0)
                .bind(sop_instance_uid.as_str())
                .fetch_optional(&mut *conn)
                .await?;
            row.as_ref().map(rows::stored_instance).transpose()
        })
    }

    fn counts(&self, partition: PartitionId) -> Result<IndexCounts, Error> {
        // From the maintained counters, as on SQLite.
        self.read("counting", async |conn| {
            let row = sqlx::query(sql::COUNTS)
                .bind(partition.0)
                .fetch_one(&mut *conn)
                .await?;
            rows::counts(&row)
        })
    }

    fn record_duplicate(&self, duplicate: &DuplicateRecord) -> Result<(), Error> {
        let to_i64 = |value: u64, what: &str| {
            i64::try_from(value).map_err(|_| Error::Backend {
                operation: "recording a duplicate",
                source: format!("{what} {value} out of range").into(),
            })
        };
        let variant = to_i64(duplicate.variant, "variant")?;
        let file_size = to_i64(duplicate.file_size, "file size")?;
        self.write("recording a duplicate", async |conn| {
            sqlx::query(sql::RECORD_DUPLICATE)
                .bind(duplicate.partition.0)
                .bind(duplicate.sop_instance_uid.as_str())
                .bind(duplicate.location.filesystem.0)
                .bind(pg_text(&duplicate.location.date_folder).as_ref())
                .bind(duplicate.location.study_uid.as_str())
                .bind(duplicate.series_uid.as_str())
                .bind(variant)
                .bind(file_size)
                .bind(pg_text(&duplicate.digest).as_ref())
                .bind(duplicate.source_ae.as_deref().map(pg_text).as_deref())
                .bind(duplicate.received_at_ms)
                .execute(&mut *conn)
                .await?;
            Ok(())
        })
    }

    fn duplicates(&self, partition: PartitionId) -> Result<Vec<DuplicateRecord>, Error> {
        self.read("listing duplicates", async |conn| {
            let rows = sqlx::query(sql::DUPLICATES)
                .bind(partition.0)
                .fetch_all(&mut *conn)
                .await?;
            rows.iter().map(|r| rows::duplicate(r, partition)).collect()
        })
    }

    fn study_patient(
        &self,
        partition: PartitionId,
        study_uid: &Uid,
    ) -> Result<Option<crate::model::PatientAttrs>, Error> {
        Ok(crate::db::studies::StudyStore::study(self, partition, study_uid)?.map(|s| s.patient))
    }

    fn study_edits(
        &self,
        partition: PartitionId,
        study_uid: &Uid,
    ) -> Result<Vec<crate::db::studies::EditRecord>, Error> {
        crate::db::studies::StudyStore::edit_history(self, partition, study_uid)
    }

    fn hold_for_reconcile(&self, entry: &crate::model::ReconcileEntry) -> Result<i64, Error> {
        let to_i64 = |value: u64, what: &str| {
            i64::try_from(value).map_err(|_| Error::Backend {
                operation: "holding an instance for reconciliation",
                source: format!("{what} {value} out of range").into(),
            })
        };
        let variant = to_i64(entry.variant, "variant")?;
        let file_size = to_i64(entry.file_size, "file size")?;
        let identity = &entry.identity;
        self.write("holding an instance for reconciliation", async |conn| {
            let id: i64 = sqlx::query_scalar(sql::HOLD_FOR_RECONCILE)
                .bind(entry.partition.0)
                .bind(entry.sop_instance_uid.as_str())
                .bind(entry.sop_class_uid.as_str())
                .bind(entry.transfer_syntax_uid.as_str())
                .bind(entry.location.filesystem.0)
                .bind(pg_text(&entry.location.date_folder).as_ref())
                .bind(entry.location.study_uid.as_str())
                .bind(entry.series_uid.as_str())
                .bind(variant)
                .bind(file_size)
                .bind(pg_text(&entry.digest).as_ref())
                .bind(entry.source_ae.as_deref().map(pg_text).as_deref())
                .bind(entry.received_at_ms)
                .bind(pg_text(&identity.patient_id).as_ref())
                .bind(
                    identity
                        .issuer_of_patient_id
                        .as_deref()
                        .map(pg_text)
                        .as_deref(),
                )
                .bind(identity.patient_name.as_deref().map(pg_text).as_deref())
                .bind(identity.birth_date.as_deref().map(pg_text).as_deref())
                .fetch_one(&mut *conn)
                .await?;
            Ok(id)
        })
    }

    fn remove_instance_row(
        &self,
        partition: PartitionId,
        file: &crate::db::InstanceFile,
    ) -> Result<bool, Error> {
        self.remove_file_row(partition, file)
    }
}

#[cfg(test)]
mod tests;
