//! The SQLite backend of the index (rusqlite, bundled SQLite): the embedded
//! default for one-process deployments.
//!
//! - One database file in WAL mode with `synchronous=FULL`: a committed batch
//!   survives power loss (invariant 1).
//! - One writer connection behind a mutex (SQLite has one writer anyway) and a
//!   small pool of reader connections, so lookups never wait for a batch.
//! - Every write method is one `BEGIN IMMEDIATE` transaction. Busy/locked
//!   answers (another process holds the write lock) are retried with backoff
//!   for up to [`RETRY_FOR`]; they never reach callers before that.
//! - The schema is versioned by `PRAGMA user_version`; the embedded
//!   `migrations/NNNN_*.sql` files are applied in order at open, each in its
//!   own transaction.
//!
//! Time stamps are stored as INTEGER milliseconds since the Unix epoch (see
//! `migrations/0001_initial.sql` for all conventions).

mod archive;
mod ingest;
mod nodes;
mod query;
mod recovery;
mod studies;
mod work;

use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use rusqlite::{
    params, Connection, ErrorCode, OptionalExtension, Row, ToSql, Transaction, TransactionBehavior,
};

use crate::db::rows::{self, Columns};
use crate::db::studies::now_ms;
use crate::db::{log_batch, sql, Admission, Error, FollowUp, IndexStore, IngestLookup};
use crate::model::{
    AeTitle, DeviceSpec, DuplicateRecord, Filesystem, FilesystemId, FilesystemSpec, IndexCounts,
    InsertOutcome, InstanceRecord, PartitionId, PartitionSpec, StoredInstance, StudyDeletions,
    StudyLocation, Uid,
};

/// The migrations, in order: `(version, SQL)`. Version `n` is the schema
/// after applying the `n`-th file.
const MIGRATIONS: &[(u32, &str)] = &[
    (1, include_str!("migrations/0001_initial.sql")),
    (2, include_str!("migrations/0002_query_indexes.sql")),
    (3, include_str!("migrations/0003_study_edit.sql")),
    (4, include_str!("migrations/0004_work_queue_claim.sql")),
    (5, include_str!("migrations/0005_device_outgoing_limit.sql")),
    (6, include_str!("migrations/0006_replace_and_reconcile.sql")),
    (
        7,
        include_str!("migrations/0007_filesystem_capacity_marker.sql"),
    ),
    (8, include_str!("migrations/0008_nodes.sql")),
    (9, include_str!("migrations/0009_archive.sql")),
];

/// The newest schema version this build knows (`PRAGMA user_version`).
pub const SCHEMA_VERSION: u32 = MIGRATIONS[MIGRATIONS.len() - 1].0;

/// How long busy/locked answers are retried before they become errors.
pub const RETRY_FOR: Duration = Duration::from_secs(10);

/// Tunables of a [`SqliteIndex`]; tests shorten the timeouts.
#[derive(Debug, Clone, Copy)]
struct Options {
    /// SQLite's own busy handler wait per statement.
    busy_timeout: Duration,
    /// Total time busy answers are retried by [`with_retry`].
    retry_for: Duration,
    /// Most reader connections open at once for the index's own lookups
    /// (ingest, work items, study operations).
    readers: usize,
    /// Most reader connections open at once for queries (C-FIND, retrieve
    /// lists): a pool of their own, so no number of queries can take a
    /// connection ingest needs.
    query_readers: usize,
    /// Longest wait for a free reader connection before the call fails.
    pool_wait: Duration,
    /// Longest a query statement may run before it is interrupted (SQLite's
    /// progress handler; `statement_timeout` on PostgreSQL).
    query_timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            busy_timeout: Duration::from_secs(5),
            retry_for: RETRY_FOR,
            readers: 4,
            query_readers: 4,
            pool_wait: Duration::from_secs(10),
            query_timeout: Duration::from_secs(60),
        }
    }
}

/// The lock file beside an index database (`index.db` → `index.db.lock`):
/// every [`SqliteIndex`] holds a shared lock on it while open.
fn open_lock_file(path: &Path) -> std::io::Result<std::fs::File> {
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(PathBuf::from(name))
}

/// Holds an index database to itself: no [`SqliteIndex`] (a server, an
/// operator command) can open it while this lives, and it is refused with
/// [`Error::InUse`] while one is open.
#[derive(Debug)]
pub struct ExclusiveUse {
    _lock: std::fs::File,
}

impl ExclusiveUse {
    /// Takes the index at `path` for this process alone, without waiting.
    pub fn take(path: &Path) -> Result<ExclusiveUse, Error> {
        let file = open_lock_file(path).map_err(|e| Error::Open {
            url: path.display().to_string(),
            source: Box::new(e),
        })?;
        match file.try_lock() {
            Ok(()) => Ok(ExclusiveUse { _lock: file }),
            Err(std::fs::TryLockError::WouldBlock) => Err(Error::InUse {
                path: path.to_path_buf(),
            }),
            Err(std::fs::TryLockError::Error(e)) => Err(Error::Open {
                url: path.display().to_string(),
                source: Box::new(e),
            }),
        }
    }
}

/// The SQLite index: an [`IndexStore`] over one database file.
pub struct SqliteIndex {
    path: PathBuf,
    /// A shared lock on the index's lock file while it is open: a command
    /// that needs the index to itself (migrate-db) takes it exclusively.
    _in_use: std::fs::File,
    options: Options,
    writer: Mutex<Connection>,
    readers: ReaderPool,
    query_readers: ReaderPool,
    /// The planner statistics' refresh started at open, joined on drop.
    optimizer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Drop for SqliteIndex {
    fn drop(&mut self) {
        let optimizer = self
            .optimizer
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(handle) = optimizer.take() {
            let _ = handle.join();
        }
    }
}

/// Refreshes the planner's statistics (`PRAGMA optimize`, each index
/// sampled at most `analysis_limit` rows) on a connection of its own, off
/// the open path: after a bulk load it analyses every table, and start-up
/// need not wait for that. Queries planned meanwhile use the statistics
/// already there. A failure is logged; the next open tries again.
fn optimize_in_background(path: PathBuf, options: Options) -> Option<std::thread::JoinHandle<()>> {
    let optimize = move || {
        let result = Connection::open(&path).and_then(|conn| {
            configure(&conn, &options, Role::Writer)?;
            with_retry(options.retry_for, "optimizing", || {
                conn.execute_batch("PRAGMA analysis_limit = 400; PRAGMA optimize = 0x10002;")
            })
        });
        if let Err(error) = result {
            tracing::warn!(
                path = %path.display(),
                %error,
                "cannot refresh the index's planner statistics"
            );
        }
    };
    std::thread::Builder::new()
        .name("sqlite-optimize".into())
        .spawn(optimize)
        .map_err(|error| tracing::warn!(%error, "no thread for the planner statistics: skipped"))
        .ok()
}

impl std::fmt::Debug for SqliteIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteIndex")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl SqliteIndex {
    /// Opens the index database at `path`, creating the file if it is
    /// missing, and brings its schema up to [`SCHEMA_VERSION`].
    ///
    /// Fails with [`Error::SchemaTooNew`] when the file was written by a newer
    /// build, [`Error::Migrate`] when a migration fails, and [`Error::Open`]
    /// otherwise.
    pub fn open(path: &Path) -> Result<SqliteIndex, Error> {
        Self::open_with(path, Options::default())
    }

    fn open_with(path: &Path, options: Options) -> Result<SqliteIndex, Error> {
        let open_error = |source: Box<dyn std::error::Error + Send + Sync>| Error::Open {
            url: path.display().to_string(),
            source,
        };
        let in_use = open_lock_file(path).map_err(|e| open_error(Box::new(e)))?;
        in_use.lock_shared().map_err(|e| open_error(Box::new(e)))?;
        let mut writer = Connection::open(path).map_err(|e| open_error(Box::new(e)))?;
        configure(&writer, &options, Role::Writer).map_err(|e| open_error(Box::new(e)))?;
        let mode: String = with_retry(options.retry_for, "enabling WAL", || {
            writer.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        })
        .map_err(|e| open_error(Box::new(e)))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(open_error(
                format!("the database refuses WAL mode (journal_mode is {mode})").into(),
            ));
        }
        migrate(&mut writer, &options)?;
        let optimizer = Mutex::new(optimize_in_background(path.to_path_buf(), options));
        Ok(SqliteIndex {
            path: path.to_path_buf(),
            _in_use: in_use,
            options,
            writer: Mutex::new(writer),
            readers: ReaderPool::new(path.to_path_buf(), options, options.readers),
            query_readers: ReaderPool::new(path.to_path_buf(), options, options.query_readers),
            optimizer,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` in one `BEGIN IMMEDIATE` transaction on the writer connection,
    /// retrying the whole transaction while the database is busy.
    fn write<T>(
        &self,
        operation: &'static str,
        mut f: impl FnMut(&Transaction<'_>) -> rusqlite::Result<T>,
    ) -> Result<T, Error> {
        let mut conn = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        with_retry(self.options.retry_for, operation, || {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let value = f(&tx)?;
            tx.commit()?;
            Ok(value)
        })
        .map_err(|e| map_error(operation, e))
    }

    /// [`SqliteIndex::write`] without waiting for the disk: the commit is
    /// atomic and visible at once but may be lost in a power cut (WAL with
    /// `synchronous=NORMAL`; the next full commit makes it durable). Only
    /// for writes that something durable repeats later.
    fn write_relaxed<T>(
        &self,
        operation: &'static str,
        mut f: impl FnMut(&Transaction<'_>) -> rusqlite::Result<T>,
    ) -> Result<T, Error> {
        let mut conn = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        conn.execute_batch("PRAGMA synchronous = NORMAL")
            .map_err(|e| map_error(operation, e))?;
        let result = with_retry(self.options.retry_for, operation, || {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let value = f(&tx)?;
            tx.commit()?;
            Ok(value)
        })
        .map_err(|e| map_error(operation, e));
        // Every other write stays durable.
        conn.execute_batch("PRAGMA synchronous = FULL")
            .map_err(|e| map_error(operation, e))?;
        result
    }

    /// Runs `f` on a pooled reader connection, retrying while busy.
    fn read<T>(
        &self,
        operation: &'static str,
        mut f: impl FnMut(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, Error> {
        let conn = self.readers.get().map_err(|e| map_error(operation, e))?;
        with_retry(self.options.retry_for, operation, || f(conn.conn()))
            .map_err(|e| map_error(operation, e))
    }

    /// Runs a query's `f` on a connection of the query pool, interrupted
    /// once it has run for the query timeout (retries included).
    fn read_query<T>(
        &self,
        operation: &'static str,
        mut f: impl FnMut(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, Error> {
        let conn = self
            .query_readers
            .get()
            .map_err(|e| map_error(operation, e))?;
        let timeout = self.options.query_timeout;
        let deadline = Instant::now() + timeout;
        // Called every 10,000 virtual machine instructions: a few hundred
        // microseconds, so the check costs nothing measurable.
        conn.conn()
            .progress_handler(10_000, Some(move || Instant::now() >= deadline))
            .map_err(|e| map_error(operation, e))?;
        let result = with_retry(self.options.retry_for, operation, || f(conn.conn()));
        // A connection goes back to the pool without a deadline; should
        // clearing fail, the old deadline only interrupts sooner.
        let _ = conn.conn().progress_handler(0, None::<fn() -> bool>);
        result.map_err(|e| match &e {
            rusqlite::Error::SqliteFailure(f, _) if f.code == ErrorCode::OperationInterrupted => {
                Error::Backend {
                    operation,
                    source: format!(
                        "the query ran longer than {} s and was interrupted",
                        timeout.as_secs_f32()
                    )
                    .into(),
                }
            }
            _ => map_error(operation, e),
        })
    }
}

/// Which connection a [`configure`] call sets up.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    Writer,
    Reader,
}

/// Per-connection settings (journal mode is per file and set once by the
/// writer).
fn configure(conn: &Connection, options: &Options, role: Role) -> rusqlite::Result<()> {
    conn.busy_timeout(options.busy_timeout)?;
    conn.set_prepared_statement_cache_capacity(64);
    conn.execute_batch(
        "PRAGMA synchronous = FULL;
         PRAGMA foreign_keys = ON;
         PRAGMA temp_store = MEMORY;
         PRAGMA mmap_size = 268435456;
         PRAGMA journal_size_limit = 67108864;",
    )?;
    match role {
        // 32 MiB of page cache for the writer, 8 MiB per reader.
        Role::Writer => conn.execute_batch("PRAGMA cache_size = -32768;"),
        Role::Reader => conn.execute_batch("PRAGMA cache_size = -8192; PRAGMA query_only = ON;"),
    }
}

/// Applies the migrations the database lacks, each in its own transaction.
fn migrate(conn: &mut Connection, options: &Options) -> Result<(), Error> {
    let user_version = |conn: &Connection| -> rusqlite::Result<u32> {
        conn.query_row("PRAGMA user_version", [], |r| r.get(0))
    };
    let too_new = |found: u32| Error::SchemaTooNew {
        found,
        supported: SCHEMA_VERSION,
    };
    let found = user_version(conn).map_err(|e| Error::Open {
        url: conn.path().unwrap_or("").to_string(),
        source: Box::new(e),
    })?;
    if found > SCHEMA_VERSION {
        return Err(too_new(found));
    }
    for &(version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > found) {
        let applied = with_retry(options.retry_for, "migrating", || {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            // Another process may have migrated since we looked.
            let current = user_version(&tx)?;
            if current >= version {
                return Ok(current);
            }
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", version)?;
            tx.commit()?;
            Ok(version)
        })
        .map_err(|e| Error::Migrate {
            version,
            source: Box::new(e),
        })?;
        if applied > SCHEMA_VERSION {
            return Err(too_new(applied));
        }
        if applied == version {
            tracing::info!(version, "index schema migrated");
        }
    }
    Ok(())
}

/// Whether `e` is a transient lock conflict worth retrying.
fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e,
        rusqlite::Error::SqliteFailure(f, _)
            if matches!(f.code, ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
    )
}

/// Runs `f` until it succeeds, fails with something other than busy/locked,
/// or `retry_for` has passed; sleeps 5 ms, doubling up to 200 ms, between tries.
fn with_retry<T>(
    retry_for: Duration,
    operation: &'static str,
    mut f: impl FnMut() -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    let start = Instant::now();
    let mut delay = Duration::from_millis(5);
    let mut attempt = 1u32;
    loop {
        match f() {
            Err(e) if is_busy(&e) && start.elapsed() < retry_for => {
                tracing::debug!(operation, attempt, "index database busy, retrying");
                std::thread::sleep(delay);
                delay = (delay * 2).min(Duration::from_millis(200));
                attempt += 1;
            }
            result => return result,
        }
    }
}

/// Maps a rusqlite failure to the backend-neutral [`Error`].
fn map_error(operation: &'static str, e: rusqlite::Error) -> Error {
    match &e {
        rusqlite::Error::SqliteFailure(f, _) if f.code == ErrorCode::DiskFull => {
            Error::Full(Box::new(e))
        }
        _ => Error::Backend {
            operation,
            source: Box::new(e),
        },
    }
}

/// Partition `?1` and a device's columns `?2`…`?10`, in the order of
/// [`sql::ENSURE_DEVICE`].
fn device_params<'a>(partition: &'a PartitionId, spec: &'a DeviceSpec) -> [&'a dyn ToSql; 10] {
    [
        &partition.0,
        &spec.ae_title,
        &spec.host,
        &spec.port,
        &spec.allow_store,
        &spec.allow_query,
        &spec.allow_retrieve,
        &spec.max_associations,
        &spec.max_outgoing_associations,
        &spec.allow_replace,
    ]
}

/// The device of `partition` with `ae_title`, read on `conn`.
fn device_in(
    conn: &Connection,
    partition: PartitionId,
    ae_title: &AeTitle,
) -> rusqlite::Result<Option<DeviceSpec>> {
    conn.prepare_cached(sql::DEVICE)?
        .query_row(params![partition.0, ae_title.as_str()], |r| rows::device(r))
        .optional()
}

/// An error for a value that cannot be stored.
fn to_sql_error(message: String) -> rusqlite::Error {
    rusqlite::Error::ToSqlConversionFailure(message.into())
}

/// Reads a non-negative INTEGER column as `u64`.
fn get_u64(row: &Row<'_>, idx: usize) -> rusqlite::Result<u64> {
    let value: i64 = row.get(idx)?;
    u64::try_from(value).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(idx, rusqlite::types::Type::Integer, Box::new(e))
    })
}

/// Reads column `idx` as text and validates it with `parse`.
fn parse_column<T, E>(
    row: &Row<'_>,
    idx: usize,
    parse: fn(&str) -> Result<T, E>,
) -> rusqlite::Result<T>
where
    E: std::error::Error + Send + Sync + 'static,
{
    let text: String = row.get(idx)?;
    parse(&text).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(idx, rusqlite::types::Type::Text, Box::new(e))
    })
}

/// A bounded pool of reader connections, opened lazily.
struct ReaderPool {
    path: PathBuf,
    options: Options,
    /// Most connections open at once.
    size: usize,
    state: Mutex<PoolState>,
    returned: Condvar,
}

struct PoolState {
    idle: Vec<Connection>,
    open: usize,
}

/// A reader connection checked out of the pool; returned on drop.
struct PooledReader<'a> {
    pool: &'a ReaderPool,
    conn: Option<Connection>,
}

impl PooledReader<'_> {
    fn conn(&self) -> &Connection {
        // Always Some until drop.
        self.conn
            .as_ref()
            .expect("pooled connection present until drop")
    }
}

impl Drop for PooledReader<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.pool.lock().idle.push(conn);
            self.pool.returned.notify_one();
        }
    }
}

impl ReaderPool {
    fn new(path: PathBuf, options: Options, size: usize) -> ReaderPool {
        ReaderPool {
            path,
            options,
            size: size.max(1),
            state: Mutex::new(PoolState {
                idle: Vec::new(),
                open: 0,
            }),
            returned: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, PoolState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Checks out an idle connection, opens one if fewer than the maximum
    /// are open, or waits for one to come back — at most the pool wait,
    /// then fails as busy.
    fn get(&self) -> rusqlite::Result<PooledReader<'_>> {
        let deadline = Instant::now() + self.options.pool_wait;
        let mut state = self.lock();
        loop {
            if let Some(conn) = state.idle.pop() {
                return Ok(PooledReader {
                    pool: self,
                    conn: Some(conn),
                });
            }
            if state.open < self.size {
                state.open += 1;
                drop(state);
                return match self.open_one() {
                    Ok(conn) => Ok(PooledReader {
                        pool: self,
                        conn: Some(conn),
                    }),
                    Err(e) => {
                        self.lock().open -= 1;
                        self.returned.notify_one();
                        Err(e)
                    }
                };
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
                    Some(format!(
                        "no reader connection came free within {} s",
                        self.options.pool_wait.as_secs_f32()
                    )),
                ));
            }
            state = self
                .returned
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    fn open_one(&self) -> rusqlite::Result<Connection> {
        let conn = Connection::open(&self.path)?;
        configure(&conn, &self.options, Role::Reader)?;
        Ok(conn)
    }
}

impl ToSql for AeTitle {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        self.as_str().to_sql()
    }
}

impl Columns for Row<'_> {
    type Error = rusqlite::Error;

    fn int(&self, column: &str) -> rusqlite::Result<i64> {
        self.get(column)
    }

    fn opt_int(&self, column: &str) -> rusqlite::Result<Option<i64>> {
        self.get(column)
    }

    fn int32(&self, column: &str) -> rusqlite::Result<i32> {
        self.get(column)
    }

    fn real(&self, column: &str) -> rusqlite::Result<f64> {
        self.get(column)
    }

    fn flag(&self, column: &str) -> rusqlite::Result<bool> {
        self.get(column)
    }

    fn text(&self, column: &str) -> rusqlite::Result<String> {
        self.get(column)
    }

    fn opt_text(&self, column: &str) -> rusqlite::Result<Option<String>> {
        self.get(column)
    }

    fn invalid(&self, column: &str, cause: rows::Cause) -> rusqlite::Error {
        let index = self.as_ref().column_index(column).unwrap_or(usize::MAX);
        rusqlite::Error::FromSqlConversionFailure(index, rusqlite::types::Type::Text, cause)
    }
}

impl IndexStore for SqliteIndex {
    fn ensure_partition(&self, spec: &PartitionSpec) -> Result<PartitionId, Error> {
        let now = now_ms();
        self.write("ensuring a partition", |tx| {
            tx.prepare_cached(sql::ENSURE_PARTITION)?.query_row(
                params![
                    spec.ae_title.as_str(),
                    spec.folder.as_str(),
                    spec.description,
                    spec.port,
                    spec.accept_unknown_devices,
                    spec.duplicate_policy.as_str(),
                    spec.pn_case_insensitive,
                    now
                ],
                |r| r.get(0).map(PartitionId),
            )
        })
    }

    fn partition(&self, ae_title: &AeTitle) -> Result<Option<PartitionId>, Error> {
        self.read("looking up a partition", |conn| {
            conn.prepare_cached(sql::PARTITION)?
                .query_row([ae_title.as_str()], |r| r.get(0).map(PartitionId))
                .optional()
        })
    }

    fn ensure_filesystem(&self, spec: &FilesystemSpec) -> Result<FilesystemId, Error> {
        const OPERATION: &str = "ensuring a filesystem";
        let path = rows::fs_path(spec, OPERATION)?;
        let capacity = rows::capacity(spec, OPERATION)?;
        self.write(OPERATION, |tx| {
            tx.prepare_cached(sql::ENSURE_FILESYSTEM)?.query_row(
                params![
                    path,
                    spec.tier.0,
                    spec.high_watermark,
                    spec.low_watermark,
                    spec.read_only,
                    spec.write_only,
                    spec.description,
                    capacity
                ],
                |r| r.get(0).map(FilesystemId),
            )
        })
    }

    fn seed_filesystem(&self, spec: &FilesystemSpec) -> Result<(Filesystem, bool), Error> {
        const OPERATION: &str = "seeding a filesystem";
        let path = rows::fs_path(spec, OPERATION)?;
        let capacity = rows::capacity(spec, OPERATION)?;
        self.write(OPERATION, |tx| {
            let created = tx
                .prepare_cached(sql::SEED_FILESYSTEM)?
                .query_row(
                    params![
                        path,
                        spec.tier.0,
                        spec.high_watermark,
                        spec.low_watermark,
                        spec.read_only,
                        spec.write_only,
                        spec.description,
                        capacity
                    ],
                    |r| r.get::<_, i64>(0),
                )
                .optional()?
                .is_some();
            let row = tx
                .prepare_cached(sql::FILESYSTEM_AT)?
                .query_row([path], |r| rows::filesystem(r))?;
            Ok((row, created))
        })
    }

    fn update_filesystem(&self, filesystem: &Filesystem) -> Result<(), Error> {
        const OPERATION: &str = "updating a filesystem";
        let spec = &filesystem.spec;
        let path = rows::fs_path(spec, OPERATION)?;
        let capacity = rows::capacity(spec, OPERATION)?;
        let changed = self.write(OPERATION, |tx| {
            tx.prepare_cached(sql::UPDATE_FILESYSTEM)?.execute(params![
                path,
                spec.tier.0,
                spec.high_watermark,
                spec.low_watermark,
                spec.read_only,
                spec.write_only,
                spec.description,
                capacity,
                filesystem.enabled,
                filesystem.id.0
            ])
        })?;
        if changed == 0 {
            return Err(Error::NotFound {
                what: format!("filesystem {}", filesystem.id.0),
            });
        }
        Ok(())
    }

    fn record_filesystem_marker(&self, id: FilesystemId, marker: &str) -> Result<String, Error> {
        let held = self.write("recording a filesystem marker", |tx| {
            tx.prepare_cached(sql::RECORD_MARKER)?
                .execute(params![marker, id.0])?;
            tx.prepare_cached(sql::MARKER)?
                .query_row([id.0], |r| r.get::<_, Option<String>>(0))
                .optional()
        })?;
        held.flatten().ok_or_else(|| Error::NotFound {
            what: format!("filesystem {}", id.0),
        })
    }

    fn filesystem_held_bytes(&self) -> Result<Vec<(FilesystemId, u64)>, Error> {
        self.read("measuring filesystem usage", |conn| {
            let mut stmt = conn.prepare_cached(sql::HELD_BYTES)?;
            let found = stmt.query_map([], |r| {
                Ok((FilesystemId(r.get(0)?), r.get::<_, i64>(1)?.max(0) as u64))
            })?;
            found.collect()
        })
    }

    fn filesystems(&self) -> Result<Vec<Filesystem>, Error> {
        self.read("listing filesystems", |conn| {
            let mut stmt = conn.prepare_cached(sql::FILESYSTEMS)?;
            let found = stmt.query_map([], |r| rows::filesystem(r))?;
            found.collect()
        })
    }

    fn ensure_device(&self, partition: PartitionId, spec: &DeviceSpec) -> Result<(), Error> {
        self.write("ensuring a device", |tx| {
            tx.prepare_cached(sql::ENSURE_DEVICE)?
                .execute(device_params(&partition, spec))
                .map(drop)
        })
    }

    fn register_device(
        &self,
        partition: PartitionId,
        spec: &DeviceSpec,
        max_devices: u64,
    ) -> Result<Option<DeviceSpec>, Error> {
        self.write("registering a device", |tx| {
            let max_devices = i64::try_from(max_devices).unwrap_or(i64::MAX);
            let mut values = device_params(&partition, spec).to_vec();
            values.push(&max_devices);
            tx.prepare_cached(sql::REGISTER_DEVICE)?
                .execute(&values[..])?;
            device_in(tx, partition, &spec.ae_title)
        })
    }

    fn device(
        &self,
        partition: PartitionId,
        ae_title: &AeTitle,
    ) -> Result<Option<DeviceSpec>, Error> {
        self.read("looking up a device", |conn| {
            device_in(conn, partition, ae_title)
        })
    }

    fn delete_device(&self, partition: PartitionId, ae_title: &AeTitle) -> Result<bool, Error> {
        self.write("deleting a device", |tx| {
            tx.prepare_cached(sql::DELETE_DEVICE)?
                .execute(rusqlite::params![partition.0, ae_title.as_str()])
                .map(|n| n > 0)
        })
    }

    fn devices(&self, partition: PartitionId) -> Result<Vec<DeviceSpec>, Error> {
        self.read("listing devices", |conn| {
            let mut stmt = conn.prepare_cached(sql::DEVICES)?;
            let found = stmt.query_map([partition.0], |r| rows::device(r))?;
            found.collect()
        })
    }

    fn study_location(
        &self,
        partition: PartitionId,
        study_uid: &Uid,
    ) -> Result<Option<StudyLocation>, Error> {
        self.read("looking up a study location", |conn| {
            conn.prepare_cached(sql::STUDY_LOCATION)?
                .query_row(params![partition.0, study_uid.as_str()], |r| {
                    rows::location(r)
                })
                .optional()
        })
    }

    fn claim_study_location(
        &self,
        partition: PartitionId,
        proposed: &StudyLocation,
    ) -> Result<StudyLocation, Error> {
        let now = now_ms();
        self.write_relaxed("claiming a study location", |tx| {
            tx.prepare_cached(ingest::UPSERT_STUDY_STORAGE)?
                .execute(params![
                    partition.0,
                    proposed.study_uid.as_str(),
                    proposed.filesystem.0,
                    proposed.date_folder,
                    now
                ])?;
            tx.prepare_cached(sql::STUDY_LOCATION)?
                .query_row(params![partition.0, proposed.study_uid.as_str()], |r| {
                    rows::location(r)
                })
        })
    }

    fn study_deletions(
        &self,
        partition: PartitionId,
        study_uid: &Uid,
    ) -> Result<StudyDeletions, Error> {
        self.read("looking up a study's deletions", |conn| {
            study_deletions_in(conn, partition, study_uid)
        })
    }

    /// One statement on one reader: the trait's default would take three
    /// readers and read the study's every column for its patient.
    fn ingest_lookup(
        &self,
        partition: PartitionId,
        study_uid: &Uid,
        sop_instance_uid: &Uid,
    ) -> Result<IngestLookup, Error> {
        self.read("looking up an instance before ingest", |conn| {
            conn.prepare_cached(sql::INGEST_LOOKUP)?.query_row(
                params![partition.0, study_uid.as_str(), sop_instance_uid.as_str()],
                |r| rows::ingest_lookup(r),
            )
        })
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
        let called_off = std::cell::Cell::new(false);
        let outcomes = self.write("indexing instances", |tx| {
            // The only writer: what it reads here holds until it commits.
            let mut deletions = std::collections::HashMap::new();
            for (partition, study_uid) in Admission::studies(batch) {
                deletions.insert(
                    (partition, study_uid),
                    study_deletions_in(tx, partition, study_uid)?,
                );
            }
            let admission = Admission::decide(batch, &deletions);
            let kept = admission.kept(batch);
            let outcomes = ingest::insert_batch(tx, &kept, now)?;
            let follow_ups = follow_up
                .map(|f| f.items_for(kept.iter()))
                .unwrap_or_default();
            for item in &follow_ups {
                // The batch has just written the study's storage row.
                if let Ok(study) = work::study_of(tx, item)? {
                    work::append_in(tx, item, study, now)?;
                }
            }
            // The statements ran: the commit waits for the caller.
            if !ready() {
                called_off.set(true);
                return Err(rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ABORT),
                    Some("the commit was called off by its caller".into()),
                ));
            }
            Ok(admission.outcomes(outcomes))
        });
        let outcomes = match outcomes {
            Err(_) if called_off.get() => return Err(Error::CommitCalledOff),
            outcomes => outcomes?,
        };
        log_batch(&outcomes, start);
        Ok(outcomes)
    }

    fn instance(
        &self,
        partition: PartitionId,
        sop_instance_uid: &Uid,
    ) -> Result<Option<StoredInstance>, Error> {
        self.read("looking up an instance", |conn| {
            conn.prepare_cached(sql::INSTANCE)?
                .query_row(params![partition.0, sop_instance_uid.as_str()], |r| {
                    rows::stored_instance(r)
                })
                .optional()
        })
    }

    fn counts(&self, partition: PartitionId) -> Result<IndexCounts, Error> {
        // From the maintained counters: one pass over the partition's
        // patients instead of counting millions of instance rows.
        self.read("counting", |conn| {
            conn.prepare_cached(sql::COUNTS)?
                .query_row([partition.0], |r| rows::counts(r))
        })
    }

    fn record_duplicate(&self, duplicate: &DuplicateRecord) -> Result<(), Error> {
        self.write("recording a duplicate", |tx| {
            tx.prepare_cached(sql::RECORD_DUPLICATE)?
                .execute(params![
                    duplicate.partition.0,
                    duplicate.sop_instance_uid.as_str(),
                    duplicate.location.filesystem.0,
                    duplicate.location.date_folder,
                    duplicate.location.study_uid.as_str(),
                    duplicate.series_uid.as_str(),
                    duplicate.variant as i64,
                    duplicate.file_size as i64,
                    duplicate.digest,
                    duplicate.source_ae,
                    duplicate.received_at_ms
                ])
                .map(drop)
        })
    }

    fn duplicates(&self, partition: PartitionId) -> Result<Vec<DuplicateRecord>, Error> {
        self.read("listing duplicates", |conn| {
            let mut stmt = conn.prepare_cached(sql::DUPLICATES)?;
            let found = stmt.query_map([partition.0], |r| rows::duplicate(r, partition))?;
            found.collect()
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
        self.write("holding an instance for reconciliation", |tx| {
            tx.prepare_cached(sql::HOLD_FOR_RECONCILE)?.query_row(
                params![
                    entry.partition.0,
                    entry.sop_instance_uid.as_str(),
                    entry.sop_class_uid.as_str(),
                    entry.transfer_syntax_uid.as_str(),
                    entry.location.filesystem.0,
                    entry.location.date_folder,
                    entry.location.study_uid.as_str(),
                    entry.series_uid.as_str(),
                    entry.variant as i64,
                    entry.file_size as i64,
                    entry.digest,
                    entry.source_ae,
                    entry.received_at_ms,
                    entry.identity.patient_id,
                    entry.identity.issuer_of_patient_id,
                    entry.identity.patient_name,
                    entry.identity.birth_date
                ],
                |r| r.get(0),
            )
        })
    }

    fn remove_instance_row(
        &self,
        partition: PartitionId,
        file: &crate::db::InstanceFile,
    ) -> Result<bool, Error> {
        let now = now_ms();
        self.write("removing an instance row", |tx| {
            recovery::remove_instance_row(tx, partition, file, now)
        })
    }
}

#[cfg(test)]
mod tests;

/// [`IndexStore::study_deletions`] on `conn` (in a transaction or not).
fn study_deletions_in(
    conn: &rusqlite::Connection,
    partition: PartitionId,
    study_uid: &Uid,
) -> rusqlite::Result<StudyDeletions> {
    conn.prepare_cached(sql::STUDY_DELETIONS)?.query_row(
        params![partition.0, study_uid.as_str()],
        |r| {
            Ok(StudyDeletions {
                deleting: r.get("deleting")?,
                count: u64::try_from(r.get::<_, i64>("deletions")?).unwrap_or(0),
                filesystem: r.get::<_, Option<i64>>("filesystem")?.map(FilesystemId),
            })
        },
    )
}
