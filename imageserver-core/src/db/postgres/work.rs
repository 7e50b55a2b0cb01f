//! The work queue on PostgreSQL: [`WorkStore`] for [`PgIndex`], shared by
//! every node of a cluster.
//!
//! - **Claim.** One READ COMMITTED transaction: the candidates are read
//!   `FOR UPDATE SKIP LOCKED` (two nodes never pick the same row, and never
//!   wait for each other's candidates); the chosen ones' studies are locked
//!   with transaction-scoped advisory locks, in ascending key order so that
//!   two claimers wait instead of deadlocking; only then is each study's
//!   lock re-checked, by a statement whose snapshot sees every claim
//!   committed by the previous holder of that study's advisory lock; then
//!   the items are updated in one statement. Without the advisory lock two
//!   nodes could each see the other's item as not yet running and run two
//!   writers on one study.
//! - **Clock.** Leases are set and compared by the database's clock
//!   (`clock_timestamp()`), so nodes with skewed clocks agree on expiry.
//! - **Wake-ups.** Enqueue, retry, release and finishing a study-bound item
//!   `NOTIFY imageserver_work` (delivered at commit); [`WorkStore::watch`]
//!   keeps a dedicated connection that `LISTEN`s and wakes the engine.
//!   Notifications lost while that connection is down are covered by the
//!   engine's polling.

use std::collections::HashMap;
use std::time::Duration;

use sqlx::postgres::{PgListener, PgPoolOptions};
use sqlx::{PgConnection, Row};

use super::{pg_text, PgIndex, TxError};
use crate::db::rows::Columns;
use crate::db::work::{
    choose_claims, item_from_row, lease_lost, millis, refused, status_from_row,
    takeover_description, unknown_study, validate, Candidate, ClaimKind, ClaimRequest,
    FailureAction, WorkError, WorkStore, WorkWatch, RESCHEDULE_REFUSED,
};
use crate::model::work::{
    Enqueued, Lease, NewWorkItem, StudyLock, Timestamp, WorkFilter, WorkItem, WorkItemId,
    WorkPriority, WorkStatus, WorkUid,
};
use crate::model::Uid;

/// The notification channel engines listen on.
pub const CHANNEL: &str = "imageserver_work";

/// The database clock in milliseconds since the epoch, as SQL.
const NOW_MS: &str = "(EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT";

/// Advisory lock keys: a namespace in the top 16 bits, the study storage
/// key below (keys stay below 2^48). Claims lock [`CLAIM_LOCK`], appends
/// [`APPEND_LOCK`]: an append waits for the item rows a claimer holds, so
/// it must not also wait for the claimer's study lock.
const CLAIM_LOCK: i64 = 0x5751 << 48;
pub(super) const APPEND_LOCK: i64 = 0x5741 << 48;

/// The item columns [`item_from_row`] reads, over `work_queue w LEFT JOIN
/// study_storage ss`.
const ITEM_SELECT: &str = "SELECT w.id, w.partition_id, w.study_storage_id, ss.study_uid,
        w.type, w.status, w.priority, w.scheduled_time, w.expiration_time, w.failure_count,
        w.failure_description, w.processor_id, w.lease_expires_at, w.attempt, w.payload,
        w.created_at, w.updated_at,
        (SELECT COUNT(*) FROM work_queue_uid u WHERE u.work_queue_id = w.id) AS uid_count
     FROM work_queue w LEFT JOIN study_storage ss ON ss.id = w.study_storage_id";

/// The claim candidate statement over the items `$due` selects (see
/// `db/sqlite/work.rs`): `$1` kinds, `$2` write kinds, `$3` now, `$4` most
/// rows; locked, skipping rows others hold.
macro_rules! candidates {
    ($due:literal) => {
        concat!(
            "SELECT w.id, w.study_storage_id, w.type, w.priority, w.scheduled_time, w.status,
                    w.processor_id, w.attempt
             FROM work_queue w
             WHERE ",
            $due,
            "
               AND w.type = ANY($1::text[])
               AND (w.study_storage_id IS NULL OR NOT EXISTS (
                    SELECT 1 FROM work_queue o
                    WHERE o.study_storage_id = w.study_storage_id AND o.id != w.id
                      AND o.status = 'in_progress' AND o.lease_expires_at > $3
                      AND (o.study_lock = 'write' OR w.type = ANY($2::text[]))))
             ORDER BY w.priority DESC, w.scheduled_time, w.id
             LIMIT $4
             FOR UPDATE SKIP LOCKED"
        )
    };
}

/// Claim candidates: waiting items that are due, or in-progress items
/// whose lease has expired.
fn candidates_sql(waiting: bool) -> &'static str {
    if waiting {
        candidates!("w.status IN ('pending', 'idle') AND w.scheduled_time <= $3")
    } else {
        candidates!("w.status = 'in_progress' AND w.lease_expires_at <= $3")
    }
}

async fn db_now(conn: &mut PgConnection) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT {NOW_MS}")))
        .fetch_one(&mut *conn)
        .await
}

async fn notify(conn: &mut PgConnection, kind: &str) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(CHANNEL)
        .bind(kind)
        .execute(&mut *conn)
        .await
        .map(drop)
}

/// The status and attempt of an item (None: no such item).
async fn work_state(
    conn: &mut PgConnection,
    id: i64,
) -> Result<Option<(WorkStatus, i64)>, sqlx::Error> {
    let row = sqlx::query("SELECT status, attempt FROM work_queue WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?;
    row.map(|r| Ok((status_from_row(&r)?, r.try_get("attempt")?)))
        .transpose()
}

/// Loads items with their instance lists, in the order of `ids`.
async fn load_items(conn: &mut PgConnection, ids: &[i64]) -> Result<Vec<WorkItem>, sqlx::Error> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "{ITEM_SELECT} WHERE w.id = ANY($1::bigint[])"
    )))
    .bind(ids)
    .fetch_all(&mut *conn)
    .await?;
    let mut items: HashMap<i64, WorkItem> = HashMap::new();
    for row in &rows {
        let item = item_from_row(row)?;
        items.insert(item.id.0, item);
    }
    let uid_rows = sqlx::query(
        "SELECT work_queue_id, series_uid, sop_instance_uid, failed, failure_count, duplicate,
                relative_path
         FROM work_queue_uid WHERE work_queue_id = ANY($1::bigint[])
         ORDER BY work_queue_id, id",
    )
    .bind(ids)
    .fetch_all(&mut *conn)
    .await?;
    for r in &uid_rows {
        let owner: i64 = r.try_get("work_queue_id")?;
        if let Some(item) = items.get_mut(&owner) {
            item.uids.push(WorkUid {
                series_uid: r.uid("series_uid")?,
                sop_instance_uid: r.uid("sop_instance_uid")?,
                failed: r.try_get("failed")?,
                failure_count: u32::try_from(r.count("failure_count")?).unwrap_or(u32::MAX),
                duplicate: r.try_get("duplicate")?,
                relative_path: r.try_get("relative_path")?,
            });
        }
    }
    Ok(ids.iter().filter_map(|id| items.remove(id)).collect())
}

/// The study storage key of a new item (Err: not stored in the partition).
/// [`WorkStore::enqueue_or_append`] inside a write transaction, the study
/// resolved: appends to the study's waiting item of the kind, or creates one.
/// Takes the study's append lock until the transaction ends.
pub(super) async fn append_in(
    conn: &mut PgConnection,
    item: &NewWorkItem,
    study: Option<i64>,
) -> Result<Enqueued, TxError> {
    let Some(study) = study else {
        let id = insert_item(conn, item, None).await?;
        return Ok(Enqueued::Created(WorkItemId(id)));
    };
    // One statement (migration 0011's `imageserver_append_works`): under
    // the study's append lock (one appender per study at a time, so that
    // two nodes receiving instances of one study do not both create an
    // item), append to the waiting item or create one. An item claimed
    // between the function's read and its update fails the transaction
    // with 40001, retried by the caller (it will create a new item).
    let row = bind_append(
        sqlx::query(
            "SELECT item_id, created FROM imageserver_append_works(
                 $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17,
                 $18)",
        ),
        item,
        study,
    )
    .fetch_one(&mut *conn)
    .await?;
    let id = WorkItemId(row.try_get("item_id")?);
    Ok(if row.try_get("created")? {
        Enqueued::Created(id)
    } else {
        Enqueued::Appended(id)
    })
}

/// Binds, after those `query` has, the eighteen arguments of migration
/// 0011's `imageserver_append_works` that append `item` to the waiting work
/// of study storage `study` (see [`append_in`]).
pub(super) fn bind_append<'q>(
    query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    item: &'q NewWorkItem,
    study: i64,
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    bind_appends(
        query.bind(APPEND_LOCK).bind(vec![study]),
        std::slice::from_ref(item),
    )
}

/// Binds, after those `query` has, the arguments of migration 0011's
/// `imageserver_append_works` after its first two (the lock base, see
/// [`APPEND_LOCK`], and the study storage rows, which the statement knows):
/// for a statement that appends `items`, in their order, to study storage
/// rows it writes itself.
pub(super) fn bind_appends<'q>(
    query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    items: &'q [NewWorkItem],
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    let n = items.len();
    let mut partitions = Vec::with_capacity(n);
    let mut kinds = Vec::with_capacity(n);
    let mut statuses = Vec::with_capacity(n);
    let mut priorities = Vec::with_capacity(n);
    let mut scheduled = Vec::with_capacity(n);
    let mut expires = Vec::with_capacity(n);
    let mut payloads = Vec::with_capacity(n);
    let mut slacks = Vec::with_capacity(n);
    let mut owners = Vec::new();
    let mut uids = Vec::new();
    for (item, k) in items.iter().zip(1i64..) {
        partitions.push(item.partition.0);
        kinds.push(item.kind.as_str());
        statuses.push(item.status.as_str());
        priorities.push(item.priority.unwrap_or_default().rank());
        scheduled.push(item.scheduled_at.map(Timestamp::as_millis));
        expires.push(item.expires_at.map(Timestamp::as_millis));
        payloads.push(pg_text(&item.payload).into_owned());
        slacks.push(slack_ms(item));
        let distinct = distinct_uids(&item.uids);
        owners.extend(std::iter::repeat_n(k, distinct.len()));
        uids.extend(distinct);
    }
    let query = query
        .bind(partitions)
        .bind(kinds)
        .bind(statuses)
        .bind(priorities)
        .bind(scheduled)
        .bind(expires)
        .bind(payloads)
        .bind(CHANNEL)
        .bind(slacks)
        .bind(owners);
    UidColumns::of(&uids).bind(query)
}

/// [`NewWorkItem::slack`] in milliseconds.
fn slack_ms(item: &NewWorkItem) -> i64 {
    i64::try_from(item.slack.as_millis()).unwrap_or(i64::MAX)
}

pub(super) async fn study_of(
    conn: &mut PgConnection,
    item: &NewWorkItem,
) -> Result<Result<Option<i64>, ()>, sqlx::Error> {
    let Some(study_uid) = &item.study_uid else {
        return Ok(Ok(None));
    };
    let id: Option<i64> = sqlx::query_scalar(
        "SELECT id FROM study_storage WHERE partition_id = $1 AND study_uid = $2",
    )
    .bind(item.partition.0)
    .bind(study_uid.as_str())
    .fetch_optional(&mut *conn)
    .await?;
    Ok(id.map(Some).ok_or(()))
}

/// Work-item UIDs as the column arrays `unnest` takes (the item function
/// and the UID insert bind the same six, in this order).
struct UidColumns<'a> {
    series: Vec<&'a str>,
    sops: Vec<&'a str>,
    failed: Vec<bool>,
    counts: Vec<i64>,
    duplicate: Vec<bool>,
    paths: Vec<Option<String>>,
}

impl<'a> UidColumns<'a> {
    fn of(uids: &[&'a WorkUid]) -> UidColumns<'a> {
        UidColumns {
            series: uids.iter().map(|u| u.series_uid.as_str()).collect(),
            sops: uids.iter().map(|u| u.sop_instance_uid.as_str()).collect(),
            failed: uids.iter().map(|u| u.failed).collect(),
            counts: uids.iter().map(|u| i64::from(u.failure_count)).collect(),
            duplicate: uids.iter().map(|u| u.duplicate).collect(),
            paths: uids
                .iter()
                .map(|u| u.relative_path.as_deref().map(|p| pg_text(p).into_owned()))
                .collect(),
        }
    }

    /// Binds the six arrays, in order, after those `query` has.
    fn bind<'q>(
        self,
        query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>
    where
        'a: 'q,
    {
        query
            .bind(self.series)
            .bind(self.sops)
            .bind(self.failed)
            .bind(self.counts)
            .bind(self.duplicate)
            .bind(self.paths)
    }
}

/// `uids` without the repeats of a SOP Instance UID (the first one kept).
fn distinct_uids(uids: &[WorkUid]) -> Vec<&WorkUid> {
    let mut seen = std::collections::HashSet::new();
    uids.iter()
        .filter(|u| seen.insert(u.sop_instance_uid.as_str()))
        .collect()
}

/// Adds instances to an item, skipping those it (or the list before them)
/// has already: through the unique index of migration 0012, never a plan
/// that reads the whole queue.
async fn add_uids(
    conn: &mut PgConnection,
    item_id: i64,
    uids: &[WorkUid],
) -> Result<(), sqlx::Error> {
    let uids = distinct_uids(uids);
    if uids.is_empty() {
        return Ok(());
    }
    let query = sqlx::query(
        "INSERT INTO work_queue_uid (work_queue_id, series_uid, sop_instance_uid, failed,
                                     failure_count, duplicate, relative_path)
         SELECT $1, t.s, t.o, t.f, t.c, t.d, t.r
         FROM UNNEST($2::text[], $3::text[], $4::bool[], $5::bigint[], $6::bool[], $7::text[])
              WITH ORDINALITY AS t(s, o, f, c, d, r, n)
         ORDER BY t.n
         ON CONFLICT (work_queue_id, sop_instance_uid) DO NOTHING",
    )
    .bind(item_id);
    UidColumns::of(&uids)
        .bind(query)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Creates an item (its study resolved) and signals it.
async fn insert_item(
    conn: &mut PgConnection,
    item: &NewWorkItem,
    study: Option<i64>,
) -> Result<i64, sqlx::Error> {
    let id: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "INSERT INTO work_queue (partition_id, study_storage_id, type, status, priority,
                                 scheduled_time, expiration_time, payload, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, COALESCE($6, {NOW_MS}) + $9, $7, $8, {NOW_MS}, {NOW_MS})
         RETURNING id"
    )))
    .bind(item.partition.0)
    .bind(study)
    .bind(item.kind.as_str())
    .bind(item.status.as_str())
    .bind(item.priority.unwrap_or_default().rank())
    .bind(item.scheduled_at.map(Timestamp::as_millis))
    .bind(item.expires_at.map(Timestamp::as_millis))
    .bind(pg_text(&item.payload).as_ref())
    .bind(slack_ms(item))
    .fetch_one(&mut *conn)
    .await?;
    add_uids(conn, id, &item.uids).await?;
    notify(conn, item.kind.as_str()).await?;
    Ok(id)
}

/// What a fenced update found: done, or the item's current state.
enum Fenced {
    Done,
    Lost(Option<(WorkStatus, i64)>),
}

impl PgIndex {
    /// Runs a lease-fenced `UPDATE … WHERE id = $1 AND attempt = $2 AND
    /// status = 'in_progress' RETURNING study_storage_id` with `bind` adding
    /// `$3…`; notifies when `notify_study` and the item is study-bound.
    fn fenced<'q>(
        &self,
        operation: &'static str,
        lease: Lease,
        sql: &'q str,
        notify_study: bool,
        bind: impl Fn(
            sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
        ) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    ) -> Result<(), WorkError> {
        let outcome = self.write(operation, async |conn| {
            let query = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(lease.item.0)
                .bind(i64::from(lease.attempt));
            let row = bind(query).fetch_optional(&mut *conn).await?;
            match row {
                Some(row) => {
                    let study: Option<i64> = row.try_get("study_storage_id")?;
                    if notify_study && study.is_some() {
                        notify(conn, "").await?;
                    }
                    Ok(Fenced::Done)
                }
                None => Ok(Fenced::Lost(work_state(conn, lease.item.0).await?)),
            }
        })?;
        match outcome {
            Fenced::Done => Ok(()),
            Fenced::Lost(current) => Err(lease_lost(lease, current)),
        }
    }

    /// Runs an operator update or delete (`$1` id, then `bind`); refuses
    /// with the item's status when it matched nothing.
    fn operator<'q>(
        &self,
        operation: &'static str,
        id: WorkItemId,
        sql: &'q str,
        reason: &'static str,
        notify_after: bool,
        bind: impl Fn(
            sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
        ) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    ) -> Result<(), WorkError> {
        let state = self.write(operation, async |conn| {
            let query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(id.0);
            let changed = bind(query).execute(&mut *conn).await?.rows_affected();
            if changed == 1 {
                if notify_after {
                    notify(conn, "").await?;
                }
                Ok(None)
            } else {
                Ok(Some(work_state(conn, id.0).await?))
            }
        })?;
        match state {
            None => Ok(()),
            Some(current) => Err(refused(id, current.map(|(s, _)| s), reason)),
        }
    }
}

impl WorkStore for PgIndex {
    fn enqueue(&self, item: &NewWorkItem) -> Result<WorkItemId, WorkError> {
        validate(item)?;
        let id = self.write("enqueuing work", async |conn| {
            let Ok(study) = study_of(conn, item).await? else {
                return Ok(None);
            };
            Ok(Some(insert_item(conn, item, study).await?))
        })?;
        id.map(WorkItemId).ok_or_else(|| unknown_study(item))
    }

    fn enqueue_or_append(&self, item: &NewWorkItem) -> Result<Enqueued, WorkError> {
        validate(item)?;
        let outcome = self.write("enqueuing or appending work", async |conn| {
            let Ok(study) = study_of(conn, item).await? else {
                return Ok(None);
            };
            append_in(conn, item, study).await.map(Some)
        })?;
        outcome.ok_or_else(|| unknown_study(item))
    }

    fn claim(&self, request: &ClaimRequest<'_>) -> Result<Vec<WorkItem>, WorkError> {
        if request.limit == 0 || request.kinds.is_empty() {
            return Ok(Vec::new());
        }
        let kinds: HashMap<&str, &ClaimKind> =
            request.kinds.iter().map(|k| (k.kind.as_str(), k)).collect();
        let all: Vec<&str> = kinds.keys().copied().collect();
        let writers: Vec<&str> = request
            .kinds
            .iter()
            .filter(|k| k.study_lock == StudyLock::Write)
            .map(|k| k.kind.as_str())
            .collect();
        let window =
            i64::try_from(request.limit.saturating_mul(2).saturating_add(8)).unwrap_or(i64::MAX);
        let lease = millis(request.lease);
        let items = self.write("claiming work", async |conn| {
            let now = db_now(conn).await?;
            let mut candidates = Vec::new();
            for waiting in [false, true] {
                let rows = sqlx::query(candidates_sql(waiting))
                    .bind(&all)
                    .bind(&writers)
                    .bind(now)
                    .bind(window)
                    .fetch_all(&mut *conn)
                    .await?;
                for row in &rows {
                    candidates.push(Candidate::from_row(row)?);
                }
            }
            // Choose within the caps, one writer (or only readers) per study.
            let mut chosen = choose_claims(candidates, &kinds, request);

            // Lock the studies (ascending) and re-check them with a fresh
            // snapshot: claims other nodes committed meanwhile are visible.
            let mut keys: Vec<i64> = chosen
                .iter()
                .filter_map(|(c, _)| c.study)
                .map(|s| CLAIM_LOCK | s)
                .collect();
            if !keys.is_empty() {
                keys.sort_unstable();
                keys.dedup();
                sqlx::query("SELECT pg_advisory_xact_lock(k) FROM UNNEST($1::bigint[]) AS k")
                    .bind(&keys)
                    .execute(&mut *conn)
                    .await?;
                let bound: Vec<&(Candidate, &ClaimKind)> =
                    chosen.iter().filter(|(c, _)| c.study.is_some()).collect();
                let ids: Vec<i64> = bound.iter().map(|(c, _)| c.id).collect();
                let study_ids: Vec<i64> = bound.iter().filter_map(|(c, _)| c.study).collect();
                let write: Vec<bool> = bound
                    .iter()
                    .map(|(_, k)| k.study_lock == StudyLock::Write)
                    .collect();
                let blocked: Vec<i64> = sqlx::query_scalar(
                    "SELECT c.id
                     FROM UNNEST($1::bigint[], $2::bigint[], $3::bool[]) AS c(id, study, write)
                     WHERE EXISTS (
                         SELECT 1 FROM work_queue o
                         WHERE o.study_storage_id = c.study AND o.id != c.id
                           AND o.status = 'in_progress' AND o.lease_expires_at > $4
                           AND (o.study_lock = 'write' OR c.write))",
                )
                .bind(&ids)
                .bind(&study_ids)
                .bind(&write)
                .bind(now)
                .fetch_all(&mut *conn)
                .await?;
                chosen.retain(|(c, _)| !blocked.contains(&c.id));
            }
            if chosen.is_empty() {
                return Ok(Vec::new());
            }

            let ids: Vec<i64> = chosen.iter().map(|(c, _)| c.id).collect();
            let locks: Vec<&str> = chosen.iter().map(|(_, k)| k.study_lock.as_str()).collect();
            let descriptions: Vec<Option<String>> = chosen
                .iter()
                .map(|(c, _)| {
                    c.in_progress
                        .then(|| takeover_description(c.processor_id.as_deref(), c.attempt))
                })
                .collect();
            sqlx::query(
                "UPDATE work_queue w SET
                     failure_count = w.failure_count
                         + CASE WHEN w.status = 'in_progress' THEN 1 ELSE 0 END,
                     failure_description = COALESCE(c.description, w.failure_description),
                     status = 'in_progress', processor_id = $4, lease_expires_at = $5,
                     attempt = w.attempt + 1, study_lock = c.lock, updated_at = $6
                 FROM UNNEST($1::bigint[], $2::text[], $3::text[]) AS c(id, lock, description)
                 WHERE w.id = c.id",
            )
            .bind(&ids)
            .bind(&locks)
            .bind(&descriptions)
            .bind(pg_text(request.processor_id).as_ref())
            .bind(now.saturating_add(lease))
            .bind(now)
            .execute(&mut *conn)
            .await?;
            Ok(load_items(conn, &ids).await?)
        })?;
        Ok(items)
    }

    fn renew_lease(&self, lease: Lease, duration: Duration) -> Result<Timestamp, WorkError> {
        let outcome = self.write("renewing a work lease", async |conn| {
            let expires: Option<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "UPDATE work_queue SET lease_expires_at = {NOW_MS} + $3
                 WHERE id = $1 AND attempt = $2 AND status = 'in_progress'
                 RETURNING lease_expires_at"
            )))
            .bind(lease.item.0)
            .bind(i64::from(lease.attempt))
            .bind(millis(duration))
            .fetch_optional(&mut *conn)
            .await?;
            match expires {
                Some(expires) => Ok(Ok(expires)),
                None => Ok(Err(work_state(conn, lease.item.0).await?)),
            }
        })?;
        outcome
            .map(Timestamp::from_millis)
            .map_err(|current| lease_lost(lease, current))
    }

    fn complete(&self, lease: Lease) -> Result<(), WorkError> {
        let sql = format!(
            "UPDATE work_queue SET status = 'completed', lease_expires_at = NULL,
                 updated_at = {NOW_MS}
             WHERE id = $1 AND attempt = $2 AND status = 'in_progress'
             RETURNING study_storage_id"
        );
        self.fenced("completing work", lease, &sql, true, |q| q)
    }

    fn fail(
        &self,
        lease: Lease,
        description: &str,
        action: FailureAction,
    ) -> Result<(), WorkError> {
        let (status, delay) = match action {
            FailureAction::RetryAfter(delay) => ("pending", millis(delay)),
            FailureAction::Permanent => ("failed", 0),
        };
        let sql = format!(
            "UPDATE work_queue SET status = $3, failure_count = failure_count + 1,
                 failure_description = $4, scheduled_time = {NOW_MS} + $5,
                 lease_expires_at = NULL, updated_at = {NOW_MS}
             WHERE id = $1 AND attempt = $2 AND status = 'in_progress'
             RETURNING study_storage_id"
        );
        let description = pg_text(description).into_owned();
        self.fenced("recording a work failure", lease, &sql, true, |q| {
            q.bind(status).bind(description.clone()).bind(delay)
        })
    }

    fn postpone(&self, lease: Lease, until: Timestamp) -> Result<(), WorkError> {
        let sql = format!(
            "UPDATE work_queue SET status = 'pending', scheduled_time = $3,
                 lease_expires_at = NULL, updated_at = {NOW_MS}
             WHERE id = $1 AND attempt = $2 AND status = 'in_progress'
             RETURNING study_storage_id"
        );
        self.fenced("postponing work", lease, &sql, true, |q| {
            q.bind(until.as_millis())
        })
    }

    fn release(&self, lease: Lease) -> Result<(), WorkError> {
        let sql = format!(
            "UPDATE work_queue SET status = 'pending',
                 scheduled_time = LEAST(scheduled_time, {NOW_MS}),
                 lease_expires_at = NULL, updated_at = {NOW_MS}
             WHERE id = $1 AND attempt = $2 AND status = 'in_progress'
             RETURNING study_storage_id"
        );
        let outcome = self.write("releasing a work lease", async |conn| {
            let row = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                .bind(lease.item.0)
                .bind(i64::from(lease.attempt))
                .fetch_optional(&mut *conn)
                .await?;
            match row {
                Some(_) => {
                    notify(conn, "").await?;
                    Ok(None)
                }
                None => Ok(Some(work_state(conn, lease.item.0).await?)),
            }
        })?;
        match outcome {
            None => Ok(()),
            Some(current) => Err(lease_lost(lease, current)),
        }
    }

    fn retry(&self, id: WorkItemId) -> Result<(), WorkError> {
        let sql = format!(
            "UPDATE work_queue SET status = 'pending', scheduled_time = {NOW_MS},
                 lease_expires_at = NULL, updated_at = {NOW_MS}
             WHERE id = $1 AND status = 'failed'"
        );
        self.operator(
            "retrying work",
            id,
            &sql,
            "only failed items can be retried",
            true,
            |q| q,
        )
    }

    fn delete(&self, id: WorkItemId) -> Result<(), WorkError> {
        let sql = format!(
            "DELETE FROM work_queue
             WHERE id = $1 AND NOT (status = 'in_progress' AND lease_expires_at > {NOW_MS})"
        );
        self.operator(
            "deleting work",
            id,
            &sql,
            "it is running under a valid lease; delete it once it has finished or its lease \
             has expired",
            false,
            |q| q,
        )
    }

    fn reschedule(&self, id: WorkItemId, at: Timestamp) -> Result<(), WorkError> {
        let sql = format!(
            "UPDATE work_queue SET scheduled_time = $2, updated_at = {NOW_MS}
             WHERE id = $1 AND status IN ('idle', 'pending')"
        );
        self.operator(
            "rescheduling work",
            id,
            &sql,
            RESCHEDULE_REFUSED,
            true,
            |q| q.bind(at.as_millis()),
        )
    }

    fn reprioritise(&self, id: WorkItemId, priority: WorkPriority) -> Result<(), WorkError> {
        let sql = format!(
            "UPDATE work_queue SET priority = $2, updated_at = {NOW_MS}
             WHERE id = $1 AND status != 'completed'"
        );
        self.operator(
            "reprioritising work",
            id,
            &sql,
            "a completed item has no priority to change",
            false,
            |q| q.bind(priority.rank()),
        )
    }

    fn list(&self, filter: &WorkFilter) -> Result<Vec<WorkItem>, WorkError> {
        let statuses: Option<Vec<&str>> = (!filter.statuses.is_empty())
            .then(|| filter.statuses.iter().map(|s| s.as_str()).collect());
        let kinds: Option<Vec<&str>> =
            (!filter.kinds.is_empty()).then(|| filter.kinds.iter().map(|k| k.as_str()).collect());
        let limit = filter.limit.map(|l| i64::try_from(l).unwrap_or(i64::MAX));
        let items = self.read("listing work", async |conn| {
            let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                "{ITEM_SELECT}
                 WHERE ($1::text[] IS NULL OR w.status = ANY($1::text[]))
                   AND ($2::text[] IS NULL OR w.type = ANY($2::text[]))
                   AND ($3::bigint IS NULL OR w.partition_id = $3)
                   AND ($4::text IS NULL OR ss.study_uid = $4)
                 ORDER BY w.id
                 LIMIT $5"
            )))
            .bind(&statuses)
            .bind(&kinds)
            .bind(filter.partition.map(|p| p.0))
            .bind(filter.study_uid.as_ref().map(Uid::as_str))
            .bind(limit)
            .fetch_all(&mut *conn)
            .await?;
            rows.iter().map(item_from_row).collect()
        })?;
        Ok(items)
    }

    fn get(&self, id: WorkItemId) -> Result<Option<WorkItem>, WorkError> {
        let mut items = self.read("reading a work item", async |conn| {
            load_items(conn, &[id.0]).await
        })?;
        Ok(items.pop())
    }

    fn purge_completed(&self, before: Timestamp) -> Result<u64, WorkError> {
        Ok(self.write("purging completed work", async |conn| {
            Ok(
                sqlx::query(
                    "DELETE FROM work_queue WHERE status = 'completed' AND updated_at < $1",
                )
                .bind(before.as_millis())
                .execute(&mut *conn)
                .await?
                .rows_affected(),
            )
        })?)
    }

    /// The LISTEN runs on a runtime of its own (one worker): the index's
    /// runtime is driven only while a caller is in it.
    fn watch(&self, wake: Box<dyn Fn() + Send + Sync>) -> Result<Option<WorkWatch>, WorkError> {
        let options = (*self.pool.connect_options()).clone();
        let connect_timeout = self.options.connect_timeout;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("pg-notify")
            .enable_all()
            .build()
            .map_err(|e| {
                WorkError::Db(crate::db::Error::Backend {
                    operation: "listening for work notifications",
                    source: Box::new(e),
                })
            })?;
        runtime.spawn(async move {
            // A pool of one connection of its own: LISTEN holds it for good.
            let pool = PgPoolOptions::new()
                .max_connections(1)
                .min_connections(0)
                .acquire_timeout(connect_timeout)
                .idle_timeout(None)
                .max_lifetime(None)
                .connect_lazy_with(options);
            loop {
                match listen(&pool).await {
                    Ok(mut listener) => {
                        // Whatever was signalled while we were not listening.
                        wake();
                        loop {
                            match listener.recv().await {
                                Ok(_) => wake(),
                                Err(e) => {
                                    tracing::warn!(error = %e, "work notification listener lost its connection; polling until it is back");
                                    break;
                                }
                            }
                        }
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "cannot listen for work notifications yet");
                    }
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        Ok(Some(WorkWatch::new(StopOnDrop(Some(runtime)))))
    }
}

async fn listen(pool: &sqlx::PgPool) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.ignore_pool_close_event(true);
    listener.listen(CHANNEL).await?;
    Ok(listener)
}

/// Stops the listener when the watch is dropped: its runtime is shut down
/// without waiting (the task ends at its next await).
struct StopOnDrop(Option<tokio::runtime::Runtime>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use crate::db::fixtures;
    use crate::db::postgres::tests::TestDb;
    use crate::db::work::{conformance, WorkStore};
    use crate::model::work::{NewWorkItem, WorkKind};
    use crate::model::PartitionId;

    #[test]
    fn work_store_conformance() {
        let Some(db) = TestDb::new() else { return };
        conformance::run_all(&db.connect());
    }

    /// An enqueue through one connection pool wakes a watcher on another.
    #[test]
    fn enqueue_notifies_watchers() {
        let Some(db) = TestDb::new() else { return };
        let watcher = db.connect();
        let writer = db.connect();
        let woken = Arc::new(AtomicU64::new(0));
        let counter = woken.clone();
        let _watch = watcher
            .watch(Box::new(move || {
                counter.fetch_add(1, Ordering::SeqCst);
            }))
            .expect("watch")
            .expect("PostgreSQL can watch");
        // The first wake-up says the listener is connected.
        let deadline = Instant::now() + Duration::from_secs(30);
        while woken.load(Ordering::SeqCst) == 0 {
            assert!(Instant::now() < deadline, "the listener never connected");
            std::thread::sleep(Duration::from_millis(10));
        }
        let before = woken.load(Ordering::SeqCst);
        let partition: PartitionId =
            crate::db::IndexStore::ensure_partition(&writer, &fixtures::partition_spec("WATCH"))
                .expect("partition");
        writer
            .enqueue(&NewWorkItem::new(
                WorkKind::new("watched").expect("kind"),
                partition,
            ))
            .expect("enqueue");
        while woken.load(Ordering::SeqCst) == before {
            assert!(Instant::now() < deadline, "no notification arrived");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
