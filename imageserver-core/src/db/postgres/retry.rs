//! How every operation runs: on a pooled connection (or one kept between
//! calls, [`Kept`]), inside the private
//! runtime and its call timeout, and — for writes — in one transaction
//! retried on conflicts, and once on a checked connection when the
//! connection was lost before COMMIT (the backend's module doc says why a lost
//! COMMIT is never re-run).

use std::future::Future;
use std::time::{Duration, Instant};

use sqlx::pool::PoolConnection;
use sqlx::postgres::PgPool;
use sqlx::{PgConnection, Postgres};

use super::{PgIndex, RETRY_FOR};
use crate::db::Error;

/// A failure inside a transaction: a database error, a conflict with a
/// concurrent writer detected by the code (retried like a serialization
/// failure), an optimistic attempt whose assumption did not hold (retried
/// at once: the next attempt takes the general way), or the caller calling
/// the commit off (never retried).
#[derive(Debug)]
pub(crate) enum TxError {
    Sql(sqlx::Error),
    Conflict(&'static str),
    Optimism(&'static str),
    CalledOff,
}

impl From<sqlx::Error> for TxError {
    fn from(e: sqlx::Error) -> Self {
        TxError::Sql(e)
    }
}

impl PgIndex {
    /// Runs `future` on the private runtime, bounded by the call timeout.
    pub(super) fn block_on<T>(
        &self,
        future: impl Future<Output = T>,
    ) -> Result<T, tokio::time::error::Elapsed> {
        let timeout = self.options.call_timeout();
        self.runtime
            .block_on(async { tokio::time::timeout(timeout, future).await })
    }

    /// Runs `future` on the private runtime until `deadline`.
    fn block_until<T>(
        &self,
        deadline: Instant,
        future: impl Future<Output = T>,
    ) -> Result<T, tokio::time::error::Elapsed> {
        self.runtime.block_on(async {
            tokio::time::timeout_at(tokio::time::Instant::from_std(deadline), future).await
        })
    }

    /// Runs `f` in one transaction, retrying the whole transaction on
    /// serialization failures, deadlocks and detected conflicts, and once
    /// on a checked connection when the connection was lost before COMMIT
    /// was sent (see [`lost_connection`]). A connection lost while COMMIT
    /// was under way is reported, never retried: that transaction may
    /// have committed. `f` must therefore be safe to run again from the
    /// start (it is: nothing of a rolled-back attempt stays).
    pub(crate) fn write<T>(
        &self,
        operation: &'static str,
        f: impl AsyncFnMut(&mut PgConnection) -> Result<T, TxError>,
    ) -> Result<T, Error> {
        self.write_when(operation, f, None)
    }

    /// [`PgIndex::write`] whose COMMIT waits until `ready` (called once
    /// `f` has run, outside the runtime: it may block without holding the
    /// runtime from other callers) says to go on; `false` rolls back and
    /// fails with [`Error::CommitCalledOff`].
    pub(crate) fn write_when<T>(
        &self,
        operation: &'static str,
        mut f: impl AsyncFnMut(&mut PgConnection) -> Result<T, TxError>,
        ready: Option<&dyn Fn() -> bool>,
    ) -> Result<T, Error> {
        let start = Instant::now();
        let mut delay = Duration::from_millis(5);
        let mut attempt = 1u32;
        let mut checked = false;
        loop {
            let mut committing = false;
            let result = self.attempt(&mut f, checked, ready, &mut committing);
            match result {
                Ok(value) => return Ok(value),
                Err(TxError::Optimism(what)) if start.elapsed() < RETRY_FOR => {
                    tracing::debug!(
                        operation,
                        attempt,
                        what,
                        "optimistic attempt rolled back, retrying"
                    );
                    attempt += 1;
                }
                Err(e) if is_retryable(&e) && start.elapsed() < RETRY_FOR => {
                    tracing::debug!(operation, attempt, error = ?e, "index transaction conflict, retrying");
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(Duration::from_millis(200));
                    attempt += 1;
                }
                Err(TxError::Sql(e)) if !checked && !committing && lost_connection(&e) => {
                    tracing::info!(operation, error = %e, "index connection lost before commit, retrying on a checked connection");
                    checked = true;
                    attempt += 1;
                }
                Err(TxError::Sql(e)) => return Err(map_error(operation, e)),
                Err(TxError::CalledOff) => return Err(Error::CommitCalledOff),
                Err(TxError::Conflict(what) | TxError::Optimism(what)) => {
                    return Err(Error::Backend {
                        operation,
                        source: format!("concurrent writers kept conflicting: {what}").into(),
                    })
                }
            }
        }
    }

    /// One attempt of [`PgIndex::write_when`], bounded by the call timeout
    /// (but for the wait in `ready`). `committing` is set once COMMIT may
    /// have been sent, or the attempt was abandoned for its time: neither
    /// is retried on another connection.
    fn attempt<T>(
        &self,
        f: &mut impl AsyncFnMut(&mut PgConnection) -> Result<T, TxError>,
        checked: bool,
        ready: Option<&dyn Fn() -> bool>,
        committing: &mut bool,
    ) -> Result<T, TxError> {
        let deadline = Instant::now() + self.options.call_timeout();
        // A connection dropped on the way back (an error, a rollback) is
        // returned to its pool by a task of the runtime.
        let _runtime = self.runtime.enter();
        let abandoned = |committing: &mut bool, elapsed: tokio::time::error::Elapsed| {
            // Abandoned (no retry): the call's time is spent.
            *committing = true;
            TxError::Sql(timed_out(elapsed))
        };
        // A kept connection needs no turn on the runtime.
        let kept = if checked { None } else { self.kept.take() };
        let mut conn = match kept {
            Some(conn) => conn,
            None => self
                .block_until(deadline, lease(&self.pool, Some(&self.kept), checked))
                .map_err(|e| abandoned(committing, e))??,
        };
        let (tx, value) = self
            .block_until(deadline, async {
                let mut tx = sqlx::Connection::begin(&mut *conn).await?;
                let value = f(&mut tx).await?;
                Ok::<_, TxError>((tx, value))
            })
            .map_err(|e| abandoned(committing, e))??;
        // The statements ran: the commit waits for the caller (the
        // transaction rolls back when dropped).
        if let Some(ready) = ready {
            if !ready() {
                return Err(TxError::CalledOff);
            }
        }
        *committing = true;
        self.block_until(deadline, tx.commit())
            .map_err(|e| abandoned(committing, e))??;
        self.kept.put(&self.pool, conn);
        Ok(value)
    }

    /// Runs `f` on a pooled connection (autocommit). `f` must only read:
    /// after a lost connection it runs again, once, on a checked one.
    pub(crate) fn read<T>(
        &self,
        operation: &'static str,
        f: impl AsyncFnMut(&mut PgConnection) -> Result<T, sqlx::Error>,
    ) -> Result<T, Error> {
        self.read_on(&self.pool, Some(&self.kept), operation, f)
    }

    /// Runs a query's `f` on a connection of the query pool (autocommit),
    /// as [`PgIndex::read`].
    pub(crate) fn read_query<T>(
        &self,
        operation: &'static str,
        f: impl AsyncFnMut(&mut PgConnection) -> Result<T, sqlx::Error>,
    ) -> Result<T, Error> {
        self.read_on(&self.query_pool, None, operation, f)
    }

    fn read_on<T>(
        &self,
        pool: &PgPool,
        kept: Option<&Kept>,
        operation: &'static str,
        mut f: impl AsyncFnMut(&mut PgConnection) -> Result<T, sqlx::Error>,
    ) -> Result<T, Error> {
        let mut checked = false;
        loop {
            let result = self.block_on(async {
                let mut conn = lease(pool, kept, checked).await?;
                let value = f(&mut conn).await?;
                if let Some(kept) = kept {
                    kept.put(pool, conn);
                }
                Ok(value)
            });
            match result {
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(e)) if !checked && lost_connection(&e) => {
                    tracing::info!(operation, error = %e, "index connection lost, retrying on a checked connection");
                    checked = true;
                }
                Ok(Err(e)) => return Err(map_error(operation, e)),
                Err(elapsed) => return Err(map_error(operation, timed_out(elapsed))),
            }
        }
    }
}

/// Write-pool connections kept between calls, handed out again without
/// going back through sqlx's pool. A connection returned to that pool is
/// pinged first (a round trip, on a task of the runtime), and taking one
/// out costs its bookkeeping: ~0.1 ms a call measured here against a
/// connection held, on ingest's path twice an instance (the look-up and
/// the batch). A call that ends well puts its connection back here; one
/// that fails drops it (the pool pings it and closes a dead one).
///
/// Kept connections are checked out of the pool, so every taker of the
/// write pool looks here first ([`lease`]), and one is kept only while the
/// pool could still serve a caller waiting in it (it may open another, or
/// has an idle one): nobody waits in the pool for a connection kept here.
/// One kept longer than [`KEEP_FOR`] goes back to the pool, whose lifetime
/// and idle rules then apply.
#[derive(Debug, Default)]
pub(super) struct Kept {
    connections: std::sync::Mutex<Vec<(PoolConnection<Postgres>, Instant)>>,
}

/// How long a connection is kept out of the pool at most.
const KEEP_FOR: Duration = Duration::from_secs(300);

impl Kept {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(PoolConnection<Postgres>, Instant)>> {
        self.connections
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The most recently kept connection young enough; older ones go back
    /// to the pool (must run inside the runtime: a pooled connection's drop
    /// spawns its return).
    fn take(&self) -> Option<PoolConnection<Postgres>> {
        let mut kept = self.lock();
        while let Some((conn, since)) = kept.pop() {
            if since.elapsed() < KEEP_FOR {
                return Some(conn);
            }
            drop(conn);
        }
        None
    }

    /// Keeps `conn` after a call that ended well, unless the pool could
    /// not serve a caller without it (inside the runtime, as [`Kept::take`]).
    pub(super) fn put(&self, pool: &PgPool, conn: PoolConnection<Postgres>) {
        let pool_can_serve =
            pool.size() < pool.options().get_max_connections() || pool.num_idle() > 0;
        if pool_can_serve {
            self.lock().push((conn, Instant::now()));
        }
    }

    /// Every kept connection, to drop inside the runtime before the pool
    /// closes (closing waits for connections checked out).
    pub(super) fn drain(&self) -> Vec<PoolConnection<Postgres>> {
        self.lock().drain(..).map(|(conn, _)| conn).collect()
    }
}

/// A connection of `pool`: one `kept` if any (see [`Kept`]), else the
/// pool's. Connections are not pinged when they leave the pool (a round
/// trip per call on the hot path); a call that finds its connection dead is
/// retried once with `checked`: then the kept ones are given back, and idle
/// connections are pinged and dead ones discarded (at most the pool's size
/// of them) before one is handed out.
pub(super) async fn lease(
    pool: &PgPool,
    kept: Option<&Kept>,
    checked: bool,
) -> Result<PoolConnection<Postgres>, sqlx::Error> {
    if let Some(kept) = kept {
        if checked {
            drop(kept.drain());
        } else if let Some(conn) = kept.take() {
            return Ok(conn);
        }
    }
    if checked {
        for _ in 0..pool.options().get_max_connections() {
            let mut conn = pool.acquire().await?;
            match sqlx::Connection::ping(&mut *conn).await {
                Ok(()) => return Ok(conn),
                Err(e) => {
                    tracing::debug!(error = %e, "discarding a dead index connection");
                    // Out of the pool, which may open a replacement.
                    drop(conn.detach());
                }
            }
        }
    }
    pool.acquire().await
}

/// A call that ran out of its time, as the I/O error sqlx reports for a
/// socket that timed out.
pub(super) fn timed_out(elapsed: tokio::time::error::Elapsed) -> sqlx::Error {
    sqlx::Error::Io(elapsed.into())
}

/// Whether `e` says the connection itself failed (the server ended the
/// session: SQLSTATE 57P01 admin_shutdown, 57P02 crash_shutdown, 57P03
/// cannot_connect_now, class 08 connection exceptions; or the socket
/// failed), so that the same work may succeed on another connection. A
/// closed pool and a pool timeout are not: retrying cannot help.
pub(super) fn lost_connection(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(io) => io.kind() != std::io::ErrorKind::TimedOut,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            matches!(code.as_ref(), "57P01" | "57P02" | "57P03") || code.starts_with("08")
        }),
        _ => false,
    }
}

/// Whether a transaction failed in a way that a retry can fix.
fn is_retryable(e: &TxError) -> bool {
    match e {
        TxError::Conflict(_) => true,
        TxError::Sql(sqlx::Error::Database(db)) => {
            matches!(db.code().as_deref(), Some("40001" | "40P01"))
        }
        TxError::Sql(_) | TxError::Optimism(_) | TxError::CalledOff => false,
    }
}

/// Maps a sqlx failure to the backend-neutral [`Error`]: out of disk space
/// (SQLSTATE 53100) is [`Error::Full`]; everything else, including an
/// unreachable database, a pool timeout and an administrator's shutdown, is
/// [`Error::Backend`].
pub(super) fn map_error(operation: &'static str, e: sqlx::Error) -> Error {
    match &e {
        sqlx::Error::Database(db) if db.code().as_deref() == Some("53100") => {
            Error::Full(Box::new(e))
        }
        _ => Error::Backend {
            operation,
            source: Box::new(e),
        },
    }
}
