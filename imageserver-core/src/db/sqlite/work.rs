//! The work queue on SQLite: [`WorkStore`] for [`SqliteIndex`].
//!
//! Every write is one `BEGIN IMMEDIATE` transaction on the writer
//! connection, so a claim (candidates, study-lock check, updates) is atomic
//! against every other writer, in this process and in others sharing the
//! file. Kind and status lists travel as one JSON array parameter
//! (`json_each`), so each statement is prepared once. Times come from this
//! machine's clock (every process using the file runs on it).
//!
//! Another process's enqueue is noticed by polling: SQLite has no
//! notifications ([`WorkStore::watch`] returns None).

use std::collections::HashMap;
use std::time::Duration;

use rusqlite::{params, OptionalExtension, Transaction};

use super::{get_u64, now_ms, parse_column, SqliteIndex};
use crate::db::work::{
    choose_claims, item_from_row, lease_lost, millis, refused, status_from_row,
    takeover_description, unknown_study, validate, Candidate, ClaimRequest, FailureAction,
    WorkError, WorkStore, RESCHEDULE_REFUSED,
};
use crate::model::work::{
    Enqueued, Lease, NewWorkItem, StudyLock, Timestamp, WorkFilter, WorkItem, WorkItemId,
    WorkPriority, WorkStatus, WorkUid,
};
use crate::model::Uid;

/// The columns [`item_from_row`] reads, over `work_queue w LEFT JOIN
/// study_storage ss`.
const ITEM_COLUMNS: &str = "w.id, w.partition_id, w.study_storage_id, ss.study_uid, w.type,
     w.status, w.priority, w.scheduled_time, w.expiration_time, w.failure_count,
     w.failure_description, w.processor_id, w.lease_expires_at, w.attempt, w.payload,
     w.created_at, w.updated_at,
     (SELECT COUNT(*) FROM work_queue_uid u WHERE u.work_queue_id = w.id) AS uid_count";

/// The claim candidates: waiting items that are due, or in-progress items
/// whose lease expired, of the requested kinds (`?1`, JSON), whose study is
/// not locked against them (`?2`: the write kinds, JSON) at `?3` (now);
/// in claim order, at most `?4`. `waiting` picks the half.
fn candidates_sql(waiting: bool) -> String {
    // The waiting half walks the ready index in claim order and stops at
    // the limit (the planner, without statistics, would rather sort every
    // due item); the expired half is small and uses the lease index.
    let (index, status) = if waiting {
        (
            "INDEXED BY work_queue_ready_idx",
            "w.status IN ('pending', 'idle') AND w.scheduled_time <= ?3",
        )
    } else {
        ("", "w.status = 'in_progress' AND w.lease_expires_at <= ?3")
    };
    format!(
        "SELECT w.id, w.study_storage_id, w.type, w.priority, w.scheduled_time, w.status,
                w.processor_id, w.attempt
         FROM work_queue w {index}
         WHERE {status}
           AND w.type IN (SELECT value FROM json_each(?1))
           AND (w.study_storage_id IS NULL OR NOT EXISTS (
                SELECT 1 FROM work_queue o
                WHERE o.study_storage_id = w.study_storage_id AND o.id != w.id
                  AND o.status = 'in_progress' AND o.lease_expires_at > ?3
                  AND (o.study_lock = 'write' OR w.type IN (SELECT value FROM json_each(?2)))))
         ORDER BY w.priority DESC, w.scheduled_time, w.id
         LIMIT ?4"
    )
}

impl SqliteIndex {
    /// An operator transition: `sql` (`?1` the item's key, `?2` now, then
    /// `extra`) changes the one item, or nothing: then the refusal says why,
    /// from the item's current state (or that it does not exist).
    fn operator(
        &self,
        operation: &'static str,
        id: WorkItemId,
        sql: &str,
        extra: &[&dyn rusqlite::ToSql],
        reason: &'static str,
    ) -> Result<(), WorkError> {
        let now = now_ms();
        let state = self.write(operation, |tx| {
            let mut values: Vec<&dyn rusqlite::ToSql> = vec![&id.0, &now];
            values.extend_from_slice(extra);
            let changed = tx.prepare_cached(sql)?.execute(values.as_slice())?;
            if changed == 1 {
                Ok(None)
            } else {
                Ok(Some(Self::work_state(tx, id.0)?))
            }
        })?;
        match state {
            None => Ok(()),
            Some(current) => Err(refused(id, current.map(|(s, _)| s), reason)),
        }
    }

    /// The current status and attempt of an item (None: no such item).
    fn work_state(
        conn: &rusqlite::Connection,
        id: i64,
    ) -> rusqlite::Result<Option<(WorkStatus, i64)>> {
        conn.prepare_cached("SELECT status, attempt FROM work_queue WHERE id = ?1")?
            .query_row([id], |r| Ok((status_from_row(r)?, r.get("attempt")?)))
            .optional()
    }

    /// Runs a lease-fenced update (`?1` id, `?2` attempt, then `extra`);
    /// refuses with [`WorkError::LeaseLost`] when it matched nothing.
    fn fenced(
        &self,
        operation: &'static str,
        lease: Lease,
        sql: &str,
        extra: &[&dyn rusqlite::ToSql],
    ) -> Result<(), WorkError> {
        let state = self.write(operation, |tx| {
            let mut values: Vec<&dyn rusqlite::ToSql> = vec![&lease.item.0, &lease.attempt];
            values.extend_from_slice(extra);
            let changed = tx.prepare_cached(sql)?.execute(values.as_slice())?;
            if changed == 1 {
                Ok(None)
            } else {
                Ok(Some(Self::work_state(tx, lease.item.0)?))
            }
        })?;
        match state {
            None => Ok(()),
            Some(current) => Err(lease_lost(lease, current)),
        }
    }

    /// Loads one item with its instance list.
    fn load_item(conn: &rusqlite::Connection, id: i64) -> rusqlite::Result<Option<WorkItem>> {
        let item = conn
            .prepare_cached(&format!(
                "SELECT {ITEM_COLUMNS}
                 FROM work_queue w LEFT JOIN study_storage ss ON ss.id = w.study_storage_id
                 WHERE w.id = ?1"
            ))?
            .query_row([id], |r| item_from_row(r))
            .optional()?;
        let Some(mut item) = item else {
            return Ok(None);
        };
        let mut stmt = conn.prepare_cached(
            "SELECT series_uid, sop_instance_uid, failed, failure_count, duplicate, relative_path
             FROM work_queue_uid WHERE work_queue_id = ?1 ORDER BY id",
        )?;
        let uids = stmt.query_map([id], |r| {
            Ok(WorkUid {
                series_uid: parse_column(r, 0, Uid::parse)?,
                sop_instance_uid: parse_column(r, 1, Uid::parse)?,
                failed: r.get(2)?,
                failure_count: u32::try_from(get_u64(r, 3)?).unwrap_or(u32::MAX),
                duplicate: r.get(4)?,
                relative_path: r.get(5)?,
            })
        })?;
        item.uids = uids.collect::<rusqlite::Result<_>>()?;
        Ok(Some(item))
    }
}

/// Resolves the study of a new item (Err: not stored in the partition).
pub(super) fn study_of(
    tx: &Transaction<'_>,
    item: &NewWorkItem,
) -> rusqlite::Result<Result<Option<i64>, ()>> {
    let Some(study_uid) = &item.study_uid else {
        return Ok(Ok(None));
    };
    let id: Option<i64> = tx
        .prepare_cached("SELECT id FROM study_storage WHERE partition_id = ?1 AND study_uid = ?2")?
        .query_row(params![item.partition.0, study_uid.as_str()], |r| r.get(0))
        .optional()?;
    Ok(id.map(Some).ok_or(()))
}

/// [`WorkStore::enqueue_or_append`] inside a write transaction, the study
/// resolved: appends to the study's waiting item of the kind, or creates one.
/// The item's row is written only where the append changes it (its
/// schedule, expiry, priority or status): an UPDATE rewrites the entries of
/// every index on the columns it sets, changed or not, and the schedule is
/// in two. With a slack ([`NewWorkItem::slack`]) most appends of a study
/// arriving batch after batch leave it as it is.
pub(super) fn append_in(
    tx: &Transaction<'_>,
    item: &NewWorkItem,
    study: Option<i64>,
    now: i64,
) -> rusqlite::Result<Enqueued> {
    let existing = match study {
        None => None,
        Some(study) => tx
            .prepare_cached(
                "SELECT id, scheduled_time, expiration_time, priority, status FROM work_queue
                 WHERE study_storage_id = ?1 AND partition_id = ?2 AND type = ?3
                   AND status IN ('idle', 'pending')
                 ORDER BY id LIMIT 1",
            )?
            .query_row(params![study, item.partition.0, item.kind.as_str()], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, Option<i64>>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, String>(4)?,
                ))
            })
            .optional()?,
    };
    let Some((id, scheduled, expires, priority, status)) = existing else {
        return insert_item(tx, item, study, now).map(|id| Enqueued::Created(WorkItemId(id)));
    };
    let due = item.scheduled_at.map_or(now, Timestamp::as_millis);
    let new_scheduled = if scheduled < due {
        slackened(due, item.slack)
    } else {
        scheduled
    };
    // An item without expiry keeps none; otherwise the later of the two.
    let new_expires = match (expires, item.expires_at.map(Timestamp::as_millis)) {
        (Some(old), Some(new)) => Some(old.max(new)),
        _ => None,
    };
    let new_priority = priority.max(item.priority.unwrap_or_default().rank());
    if (new_scheduled, new_expires, new_priority) != (scheduled, expires, priority) {
        tx.prepare_cached(
            "UPDATE work_queue SET scheduled_time = ?2, expiration_time = ?3, priority = ?4,
                 updated_at = ?5
             WHERE id = ?1",
        )?
        .execute(params![id, new_scheduled, new_expires, new_priority, now])?;
    }
    if matches!(item.status, WorkStatus::Pending) && status != WorkStatus::Pending.as_str() {
        tx.prepare_cached(
            "UPDATE work_queue SET status = 'pending', updated_at = ?2 WHERE id = ?1",
        )?
        .execute(params![id, now])?;
    }
    add_uids(tx, id, &item.uids)?;
    Ok(Enqueued::Appended(WorkItemId(id)))
}

/// `due` plus `slack`, in milliseconds.
fn slackened(due: i64, slack: std::time::Duration) -> i64 {
    due.saturating_add(i64::try_from(slack.as_millis()).unwrap_or(i64::MAX))
}

/// Adds instances to an item, skipping those it lists already.
fn add_uids(tx: &Transaction<'_>, item_id: i64, uids: &[WorkUid]) -> rusqlite::Result<()> {
    let mut stmt = tx.prepare_cached(
        "INSERT INTO work_queue_uid (work_queue_id, series_uid, sop_instance_uid, failed,
                                     failure_count, duplicate, relative_path)
         SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7
         WHERE NOT EXISTS (SELECT 1 FROM work_queue_uid
                           WHERE work_queue_id = ?1 AND sop_instance_uid = ?3)",
    )?;
    for uid in uids {
        stmt.execute(params![
            item_id,
            uid.series_uid.as_str(),
            uid.sop_instance_uid.as_str(),
            uid.failed,
            uid.failure_count,
            uid.duplicate,
            uid.relative_path
        ])?;
    }
    Ok(())
}

/// Creates an item (its study already resolved).
fn insert_item(
    tx: &Transaction<'_>,
    item: &NewWorkItem,
    study: Option<i64>,
    now: i64,
) -> rusqlite::Result<i64> {
    let id: i64 = tx
        .prepare_cached(
            "INSERT INTO work_queue (partition_id, study_storage_id, type, status, priority,
                                     scheduled_time, expiration_time, payload, created_at,
                                     updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9)
             RETURNING id",
        )?
        .query_row(
            params![
                item.partition.0,
                study,
                item.kind.as_str(),
                item.status.as_str(),
                item.priority.unwrap_or_default().rank(),
                slackened(
                    item.scheduled_at.map_or(now, Timestamp::as_millis),
                    item.slack
                ),
                item.expires_at.map(Timestamp::as_millis),
                item.payload,
                now
            ],
            |r| r.get(0),
        )?;
    add_uids(tx, id, &item.uids)?;
    Ok(id)
}

fn json_list<'a>(values: impl IntoIterator<Item = &'a str>) -> String {
    serde_json::to_string(&values.into_iter().collect::<Vec<_>>()).unwrap_or_else(|_| "[]".into())
}

impl WorkStore for SqliteIndex {
    fn enqueue(&self, item: &NewWorkItem) -> Result<WorkItemId, WorkError> {
        validate(item)?;
        let now = now_ms();
        let id = self.write("enqueuing work", |tx| {
            let Ok(study) = study_of(tx, item)? else {
                return Ok(None);
            };
            insert_item(tx, item, study, now).map(Some)
        })?;
        id.map(WorkItemId).ok_or_else(|| unknown_study(item))
    }

    fn enqueue_or_append(&self, item: &NewWorkItem) -> Result<Enqueued, WorkError> {
        validate(item)?;
        let now = now_ms();
        let outcome = self.write("enqueuing or appending work", |tx| {
            let Ok(study) = study_of(tx, item)? else {
                return Ok(None);
            };
            append_in(tx, item, study, now).map(Some)
        })?;
        outcome.ok_or_else(|| unknown_study(item))
    }

    fn claim(&self, request: &ClaimRequest<'_>) -> Result<Vec<WorkItem>, WorkError> {
        if request.limit == 0 || request.kinds.is_empty() {
            return Ok(Vec::new());
        }
        let kinds: HashMap<&str, &crate::db::work::ClaimKind> =
            request.kinds.iter().map(|k| (k.kind.as_str(), k)).collect();
        let all = json_list(kinds.keys().copied());
        let writers = json_list(
            request
                .kinds
                .iter()
                .filter(|k| k.study_lock == StudyLock::Write)
                .map(|k| k.kind.as_str()),
        );
        // Candidates a batch may skip (caps, studies claimed in this batch).
        let window =
            i64::try_from(request.limit.saturating_mul(4).saturating_add(32)).unwrap_or(i64::MAX);
        let lease = millis(request.lease);
        let claimed = self.write("claiming work", |tx| {
            let now = now_ms();
            let mut candidates = Vec::new();
            for waiting in [false, true] {
                let mut stmt = tx.prepare_cached(&candidates_sql(waiting))?;
                let rows = stmt.query_map(params![all, writers, now, window], |r| {
                    Candidate::from_row(r)
                })?;
                for row in rows {
                    candidates.push(row?);
                }
            }
            let mut taken = Vec::new();
            for (c, kind) in choose_claims(candidates, &kinds, request) {
                let description = c
                    .in_progress
                    .then(|| takeover_description(c.processor_id.as_deref(), c.attempt));
                tx.prepare_cached(
                    "UPDATE work_queue SET
                         failure_count = failure_count + (status = 'in_progress'),
                         failure_description = COALESCE(?5, failure_description),
                         status = 'in_progress', processor_id = ?2, lease_expires_at = ?3,
                         attempt = attempt + 1, study_lock = ?4, updated_at = ?6
                     WHERE id = ?1",
                )?
                .execute(params![
                    c.id,
                    request.processor_id,
                    now.saturating_add(lease),
                    kind.study_lock.as_str(),
                    description,
                    now
                ])?;
                taken.push(c.id);
            }
            let mut items = Vec::with_capacity(taken.len());
            for id in taken {
                if let Some(item) = Self::load_item(tx, id)? {
                    items.push(item);
                }
            }
            Ok(items)
        })?;
        Ok(claimed)
    }

    fn renew_lease(&self, lease: Lease, duration: Duration) -> Result<Timestamp, WorkError> {
        let expires = now_ms().saturating_add(millis(duration));
        self.fenced(
            "renewing a work lease",
            lease,
            "UPDATE work_queue SET lease_expires_at = ?3
             WHERE id = ?1 AND attempt = ?2 AND status = 'in_progress'",
            &[&expires],
        )?;
        Ok(Timestamp::from_millis(expires))
    }

    fn complete(&self, lease: Lease) -> Result<(), WorkError> {
        self.fenced(
            "completing work",
            lease,
            "UPDATE work_queue SET status = 'completed', lease_expires_at = NULL, updated_at = ?3
             WHERE id = ?1 AND attempt = ?2 AND status = 'in_progress'",
            &[&now_ms()],
        )
    }

    fn fail(
        &self,
        lease: Lease,
        description: &str,
        action: FailureAction,
    ) -> Result<(), WorkError> {
        let now = now_ms();
        let (status, scheduled) = match action {
            FailureAction::RetryAfter(delay) => ("pending", now.saturating_add(millis(delay))),
            FailureAction::Permanent => ("failed", now),
        };
        self.fenced(
            "recording a work failure",
            lease,
            "UPDATE work_queue SET status = ?3, failure_count = failure_count + 1,
                 failure_description = ?4, scheduled_time = ?5, lease_expires_at = NULL,
                 updated_at = ?6
             WHERE id = ?1 AND attempt = ?2 AND status = 'in_progress'",
            &[&status, &description, &scheduled, &now],
        )
    }

    fn postpone(&self, lease: Lease, until: Timestamp) -> Result<(), WorkError> {
        self.fenced(
            "postponing work",
            lease,
            "UPDATE work_queue SET status = 'pending', scheduled_time = ?3,
                 lease_expires_at = NULL, updated_at = ?4
             WHERE id = ?1 AND attempt = ?2 AND status = 'in_progress'",
            &[&until.as_millis(), &now_ms()],
        )
    }

    fn release(&self, lease: Lease) -> Result<(), WorkError> {
        let now = now_ms();
        self.fenced(
            "releasing a work lease",
            lease,
            "UPDATE work_queue SET status = 'pending', scheduled_time = MIN(scheduled_time, ?3),
                 lease_expires_at = NULL, updated_at = ?3
             WHERE id = ?1 AND attempt = ?2 AND status = 'in_progress'",
            &[&now],
        )
    }

    fn retry(&self, id: WorkItemId) -> Result<(), WorkError> {
        self.operator(
            "retrying work",
            id,
            "UPDATE work_queue SET status = 'pending', scheduled_time = ?2,
                 lease_expires_at = NULL, updated_at = ?2
             WHERE id = ?1 AND status = 'failed'",
            &[],
            "only failed items can be retried",
        )
    }

    fn delete(&self, id: WorkItemId) -> Result<(), WorkError> {
        self.operator(
            "deleting work",
            id,
            "DELETE FROM work_queue
             WHERE id = ?1 AND NOT (status = 'in_progress' AND lease_expires_at > ?2)",
            &[],
            "it is running under a valid lease; delete it once it has finished or its lease \
             has expired",
        )
    }

    fn reschedule(&self, id: WorkItemId, at: Timestamp) -> Result<(), WorkError> {
        self.operator(
            "rescheduling work",
            id,
            "UPDATE work_queue SET scheduled_time = ?3, updated_at = ?2
             WHERE id = ?1 AND status IN ('idle', 'pending')",
            &[&at.as_millis()],
            RESCHEDULE_REFUSED,
        )
    }

    fn reprioritise(&self, id: WorkItemId, priority: WorkPriority) -> Result<(), WorkError> {
        self.operator(
            "reprioritising work",
            id,
            "UPDATE work_queue SET priority = ?3, updated_at = ?2
             WHERE id = ?1 AND status != 'completed'",
            &[&priority.rank()],
            "a completed item has no priority to change",
        )
    }

    fn list(&self, filter: &WorkFilter) -> Result<Vec<WorkItem>, WorkError> {
        let statuses = (!filter.statuses.is_empty())
            .then(|| json_list(filter.statuses.iter().map(|s| s.as_str())));
        let kinds =
            (!filter.kinds.is_empty()).then(|| json_list(filter.kinds.iter().map(|k| k.as_str())));
        let limit = filter
            .limit
            .map_or(-1, |l| i64::try_from(l).unwrap_or(i64::MAX));
        let items = self.read("listing work", |conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {ITEM_COLUMNS}
                 FROM work_queue w LEFT JOIN study_storage ss ON ss.id = w.study_storage_id
                 WHERE (?1 IS NULL OR w.status IN (SELECT value FROM json_each(?1)))
                   AND (?2 IS NULL OR w.type IN (SELECT value FROM json_each(?2)))
                   AND (?3 IS NULL OR w.partition_id = ?3)
                   AND (?4 IS NULL OR ss.study_uid = ?4)
                 ORDER BY w.id
                 LIMIT ?5"
            ))?;
            let rows = stmt.query_map(
                params![
                    statuses,
                    kinds,
                    filter.partition.map(|p| p.0),
                    filter.study_uid.as_ref().map(Uid::as_str),
                    limit
                ],
                |r| item_from_row(r),
            )?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
        })?;
        Ok(items)
    }

    fn get(&self, id: WorkItemId) -> Result<Option<WorkItem>, WorkError> {
        Ok(self.read("reading a work item", |conn| Self::load_item(conn, id.0))?)
    }

    fn purge_completed(&self, before: Timestamp) -> Result<u64, WorkError> {
        let removed = self.write("purging completed work", |tx| {
            tx.prepare_cached(
                "DELETE FROM work_queue WHERE status = 'completed' AND updated_at < ?1",
            )?
            .execute([before.as_millis()])
        })?;
        Ok(removed as u64)
    }
}

#[cfg(test)]
mod tests {
    use crate::db::sqlite::SqliteIndex;
    use crate::db::work::conformance;

    #[test]
    fn work_store_conformance() {
        let dir = tempfile::tempdir().expect("tempdir");
        let index = SqliteIndex::open(&dir.path().join("index.db")).expect("open");
        conformance::run_all(&index);
    }

    /// The claim query walks the ready index instead of sorting the queue.
    #[test]
    fn claim_uses_the_ready_index() {
        let dir = tempfile::tempdir().expect("tempdir");
        let index = SqliteIndex::open(&dir.path().join("index.db")).expect("open");
        let plan: Vec<String> = index
            .read("explaining", |conn| {
                let mut stmt = conn.prepare(&format!(
                    "EXPLAIN QUERY PLAN {}",
                    super::candidates_sql(true)
                ))?;
                let rows = stmt.query_map(rusqlite::params!["[\"a\"]", "[]", 0, 10], |r| {
                    r.get::<_, String>(3)
                })?;
                rows.collect()
            })
            .expect("plan");
        let plan = plan.join("\n");
        assert!(plan.contains("work_queue_ready_idx"), "{plan}");
        assert!(!plan.contains("TEMP B-TREE"), "{plan}");
    }
}
