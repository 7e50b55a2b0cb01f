//! The backend-agnostic checks every [`WorkStore`] must pass: each backend
//! calls [`run_all`] on a fresh database (SQLite in `db/sqlite/work.rs`,
//! PostgreSQL in `db/postgres/work.rs`).
//!
//! Claims are global (not per partition), so every check claims kinds of
//! its own (`c<check>_...`) and never sees another check's items. Leases
//! are made to expire by claiming with a lease of a millisecond and
//! sleeping a little longer: the outcome is asserted, never a duration.

use std::time::Duration;

use crate::db::fixtures::{self, uid, Scope};
use crate::db::work::{ClaimKind, ClaimRequest, FailureAction, WorkError, WorkStore};
use crate::db::Database;
use crate::model::work::{
    Enqueued, NewWorkItem, StudyLock, Timestamp, WorkFilter, WorkItem, WorkItemId, WorkKind,
    WorkPriority, WorkStatus, WorkUid,
};
use crate::model::{FilesystemId, InstanceRecord, Uid};

/// Runs every check.
pub(crate) fn run_all(db: &dyn Database) {
    enqueue_and_get(db);
    enqueue_or_append(db);
    claim_order_and_filters(db);
    study_locks(db);
    caps(db);
    takeover_and_fencing(db);
    failures_postpone_release(db);
    operator_transitions(db);
    list_filters_and_purge(db);
    batch_follow_ups(db);
}

const LONG: Duration = Duration::from_secs(300);

fn kind(name: &str) -> WorkKind {
    WorkKind::new(name).expect("test kind")
}

/// A partition with studies of its own.
type Fixture<'a> = Scope<'a, dyn Database + 'a>;

/// Partition `name` on filesystem `/work-conformance/<name>`.
fn fixture<'a>(db: &'a dyn Database, name: &str) -> Fixture<'a> {
    Scope::new(
        db,
        fixtures::partition_spec(name),
        fixtures::fs_spec(format!("/work-conformance/{name}")),
    )
}

/// The studies and work items of this suite.
trait WorkFixture {
    /// Stores one instance of `study` so that items can be bound to it.
    fn study(&self, study: &str) -> Uid;

    /// Instance `n` of series 1 of `study`.
    fn record(&self, study: &str, n: u32) -> InstanceRecord;

    /// A new item of kind `kind_name` in this partition.
    fn item(&self, kind_name: &str) -> NewWorkItem;

    /// Enqueues `item`.
    fn enqueue(&self, item: NewWorkItem) -> WorkItemId;

    /// The item `id`, which must exist.
    fn get(&self, id: WorkItemId) -> WorkItem;
}

impl WorkFixture for Fixture<'_> {
    fn study(&self, study: &str) -> Uid {
        let record = self.record(study, 1);
        self.store
            .insert_instances(&[record])
            .expect("store a study");
        uid(study)
    }

    fn record(&self, study: &str, n: u32) -> InstanceRecord {
        self.bare_record(study, n)
    }

    fn item(&self, kind_name: &str) -> NewWorkItem {
        NewWorkItem::new(kind(kind_name), self.partition)
    }

    fn enqueue(&self, item: NewWorkItem) -> WorkItemId {
        self.store.enqueue(&item).expect("enqueue")
    }

    fn get(&self, id: WorkItemId) -> WorkItem {
        self.store.get(id).expect("get").expect("item exists")
    }
}

fn claim_kind(name: &str, study_lock: StudyLock) -> ClaimKind {
    ClaimKind {
        kind: kind(name),
        study_lock,
        memory_heavy: false,
    }
}

/// Claims up to `limit` of `kinds` as `processor` with no caps.
fn claim(
    db: &dyn WorkStore,
    processor: &str,
    kinds: &[ClaimKind],
    limit: usize,
    lease: Duration,
) -> Vec<WorkItem> {
    db.claim(&ClaimRequest {
        processor_id: processor,
        lease,
        kinds,
        limit,
        max_normal: limit,
        max_memory_heavy: limit,
    })
    .expect("claim")
}

fn ids(items: &[WorkItem]) -> Vec<WorkItemId> {
    items.iter().map(|i| i.id).collect()
}

fn expire_leases() {
    std::thread::sleep(Duration::from_millis(30));
}

fn enqueue_and_get(db: &dyn Database) {
    let f = fixture(db, "WQ_ENQ");
    let study = f.study("1.9.1");
    let before = Timestamp::now();
    let uids = [
        WorkUid::new(uid("1.9.1.1"), uid("1.9.1.1.1")),
        WorkUid::new(uid("1.9.1.1"), uid("1.9.1.1.2")),
    ];
    let id = f.enqueue(
        f.item("c1_kind")
            .study(study.clone())
            .priority(WorkPriority::High)
            .payload(r#"{"device":"PACS2"}"#)
            .uids(uids.clone()),
    );
    let item = f.get(id);
    assert_eq!(item.id, id);
    assert_eq!(item.partition, f.partition);
    assert_eq!(item.study_uid(), Some(&study));
    assert_eq!(item.kind, kind("c1_kind"));
    assert_eq!(item.status, WorkStatus::Pending);
    assert_eq!(item.priority, WorkPriority::High);
    assert!(item.scheduled_at >= before && item.scheduled_at <= Timestamp::now());
    assert_eq!(item.expires_at, None);
    assert_eq!((item.failure_count, item.attempt), (0, 0));
    assert_eq!(item.failure_description, None);
    assert_eq!(item.processor_id, None);
    assert_eq!(item.lease_expires_at, None);
    assert_eq!(item.payload, r#"{"device":"PACS2"}"#);
    assert_eq!(item.uids, uids);
    assert_eq!(item.uid_count, 2);

    // Defaults, no study, idle, explicit times; repeated instances once.
    let at = Timestamp::from_millis(1_700_000_000_000);
    let mut idle = f
        .item("c1_kind")
        .scheduled_at(at)
        .uids([uids[0].clone(), uids[0].clone()]);
    idle.status = WorkStatus::Idle;
    idle.expires_at = Some(at.after(Duration::from_secs(60)));
    let item = f.get(f.enqueue(idle));
    assert_eq!(item.study, None);
    assert_eq!(item.status, WorkStatus::Idle);
    assert_eq!(item.priority, WorkPriority::Medium);
    assert_eq!(item.payload, "{}");
    assert_eq!(item.scheduled_at, at);
    assert_eq!(item.expires_at, Some(at.after(Duration::from_secs(60))));
    assert_eq!(item.uid_count, 1);

    // Refusals.
    match db.enqueue(&f.item("c1_kind").study(uid("1.9.404"))) {
        Err(WorkError::UnknownStudy { study_uid, .. }) => assert_eq!(study_uid, "1.9.404"),
        other => panic!("unknown study: {other:?}"),
    }
    assert!(matches!(
        db.enqueue(&f.item("c1_kind").payload("{not json")),
        Err(WorkError::Invalid(_))
    ));
    let mut completed = f.item("c1_kind");
    completed.status = WorkStatus::Completed;
    assert!(matches!(db.enqueue(&completed), Err(WorkError::Invalid(_))));
    assert!(db.get(WorkItemId(i64::MAX)).expect("get").is_none());
}

fn enqueue_or_append(db: &dyn Database) {
    let f = fixture(db, "WQ_APPEND");
    let study = f.study("1.9.2");
    let other_study = f.study("1.9.3");
    let u = |n: u32| WorkUid::new(uid("1.9.2.1"), uid(&format!("1.9.2.1.{n}")));
    let t0 = Timestamp::now().after(Duration::from_secs(60));
    let first = db
        .enqueue_or_append(
            &f.item("c2_process")
                .study(study.clone())
                .scheduled_at(t0)
                .uids([u(1), u(2)]),
        )
        .expect("first");
    let Enqueued::Created(id) = first else {
        panic!("first enqueue creates: {first:?}");
    };
    // More instances arrive: same item, later schedule, no repeats.
    let t1 = t0.after(Duration::from_secs(30));
    let again = db
        .enqueue_or_append(
            &f.item("c2_process")
                .study(study.clone())
                .scheduled_at(t1)
                .priority(WorkPriority::High)
                .uids([u(2), u(3)]),
        )
        .expect("append");
    assert_eq!(again, Enqueued::Appended(id));
    let item = f.get(id);
    assert_eq!(item.scheduled_at, t1);
    assert_eq!(item.priority, WorkPriority::High);
    let sops: Vec<&str> = item
        .uids
        .iter()
        .map(|u| u.sop_instance_uid.as_str())
        .collect();
    assert_eq!(sops, ["1.9.2.1.1", "1.9.2.1.2", "1.9.2.1.3"]);
    // An earlier time does not move it back.
    db.enqueue_or_append(&f.item("c2_process").study(study.clone()).scheduled_at(t0))
        .expect("append earlier");
    assert_eq!(f.get(id).scheduled_at, t1);

    // Another kind or another study: new items.
    let other_kind = db
        .enqueue_or_append(&f.item("c2_route").study(study.clone()))
        .expect("other kind");
    assert!(matches!(other_kind, Enqueued::Created(x) if x != id));
    let other = db
        .enqueue_or_append(&f.item("c2_process").study(other_study))
        .expect("other study");
    assert!(matches!(other, Enqueued::Created(x) if x != id));

    // Once an item runs, arrivals start a new one.
    let run = db
        .enqueue_or_append(&f.item("c2_run").study(study.clone()).uids([u(1)]))
        .expect("enqueue")
        .id();
    let claimed = claim(
        db,
        "node-a",
        &[claim_kind("c2_run", StudyLock::Read)],
        1,
        LONG,
    );
    assert_eq!(ids(&claimed), [run]);
    let next = db
        .enqueue_or_append(&f.item("c2_run").study(study.clone()).uids([u(4)]))
        .expect("enqueue");
    assert!(matches!(next, Enqueued::Created(x) if x != run));
    assert_eq!(f.get(run).uid_count, 1);
    assert!(db
        .enqueue_or_append(&f.item("c2_process").study(uid("1.9.404")))
        .is_err());

    // With a slack: created at its schedule plus the slack; an append due
    // before that leaves the row as it is (not even its update time); one
    // due after moves it to its own schedule plus the slack; a priority
    // raise is written whatever the schedule.
    let slack = Duration::from_secs(10);
    let slack_study = f.study("1.9.4");
    let slacked = |at: Timestamp| {
        f.item("c2_slack")
            .study(slack_study.clone())
            .scheduled_at(at)
            .slack(slack)
    };
    let id = db
        .enqueue_or_append(&slacked(t0).uids([u(1)]))
        .expect("slack: first")
        .id();
    let created = f.get(id);
    assert_eq!(created.scheduled_at, t0.after(slack));
    std::thread::sleep(Duration::from_millis(5));
    let within = db
        .enqueue_or_append(&slacked(t0.after(Duration::from_secs(7))).uids([u(2)]))
        .expect("slack: within");
    assert_eq!(within, Enqueued::Appended(id));
    let unmoved = f.get(id);
    assert_eq!(unmoved.scheduled_at, t0.after(slack));
    assert_eq!(unmoved.updated_at, created.updated_at);
    assert_eq!(unmoved.uid_count, 2);
    let t2 = t0.after(Duration::from_secs(11));
    db.enqueue_or_append(&slacked(t2)).expect("slack: past");
    assert_eq!(f.get(id).scheduled_at, t2.after(slack));
    db.enqueue_or_append(&slacked(t2).priority(WorkPriority::High))
        .expect("slack: priority");
    let raised = f.get(id);
    assert_eq!(
        (raised.scheduled_at, raised.priority),
        (t2.after(slack), WorkPriority::High)
    );
}

fn claim_order_and_filters(db: &dyn Database) {
    let f = fixture(db, "WQ_ORDER");
    let now = Timestamp::now();
    let at = |secs_ago: u64| Timestamp::from_millis(now.as_millis() - secs_ago as i64 * 1000);
    let low_old = f.enqueue(
        f.item("c3_a")
            .priority(WorkPriority::Low)
            .scheduled_at(at(50)),
    );
    let medium_new = f.enqueue(f.item("c3_a").scheduled_at(at(10)));
    let medium_old = f.enqueue(f.item("c3_a").scheduled_at(at(20)));
    let stat = f.enqueue(
        f.item("c3_a")
            .priority(WorkPriority::Stat)
            .scheduled_at(at(1)),
    );
    let future = f.enqueue(
        f.item("c3_a")
            .priority(WorkPriority::Stat)
            .scheduled_at(now.after(Duration::from_secs(3600))),
    );
    let mut idle = f.item("c3_a").scheduled_at(at(5));
    idle.status = WorkStatus::Idle;
    let idle = f.enqueue(idle);
    let other_kind = f.enqueue(f.item("c3_b").priority(WorkPriority::Stat));

    let kinds = [claim_kind("c3_a", StudyLock::Write)];
    let first = claim(db, "node-a", &kinds, 2, LONG);
    assert_eq!(ids(&first), [stat, medium_old]);
    for item in &first {
        assert_eq!(item.status, WorkStatus::InProgress);
        assert_eq!(item.attempt, 1);
        assert_eq!(item.processor_id.as_deref(), Some("node-a"));
        let expires = item.lease_expires_at.expect("lease");
        assert!(expires > Timestamp::now().after(Duration::from_secs(200)));
    }
    // Claimed items are not claimed again while their lease holds.
    let rest = claim(db, "node-b", &kinds, 10, LONG);
    assert_eq!(ids(&rest), [medium_new, idle, low_old]);
    assert!(claim(db, "node-b", &kinds, 10, LONG).is_empty());
    assert_eq!(f.get(future).status, WorkStatus::Pending);
    assert_eq!(f.get(other_kind).status, WorkStatus::Pending);
    // No kinds, no limit: nothing.
    assert!(claim(db, "node-b", &[], 10, LONG).is_empty());
    let c3b = [claim_kind("c3_b", StudyLock::Write)];
    assert!(claim(db, "node-b", &c3b, 0, LONG).is_empty());
    assert_eq!(ids(&claim(db, "node-b", &c3b, 5, LONG)), [other_kind]);
}

fn study_locks(db: &dyn Database) {
    let f = fixture(db, "WQ_LOCKS");
    let s1 = f.study("1.9.10");
    let s2 = f.study("1.9.11");
    let write = claim_kind("c4_write", StudyLock::Write);
    let read = claim_kind("c4_read", StudyLock::Read);

    // Two writes on one study in one batch: only the first.
    let w1 = f.enqueue(f.item("c4_write").study(s1.clone()));
    let w2 = f.enqueue(f.item("c4_write").study(s1.clone()));
    let w3 = f.enqueue(f.item("c4_write").study(s2.clone()));
    let nostudy = f.enqueue(f.item("c4_write"));
    let got = claim(db, "node-a", std::slice::from_ref(&write), 10, LONG);
    assert_eq!(ids(&got), [w1, w3, nostudy]);
    // While w1 runs, neither a write nor a read on s1 is claimable.
    let r1 = f.enqueue(f.item("c4_read").study(s1.clone()));
    assert!(claim(db, "node-b", &[write.clone(), read.clone()], 10, LONG).is_empty());
    db.complete(got[0].lease()).expect("complete w1");
    // Now w2 (older) and r1 compete: the write goes first and excludes r1.
    let got = claim(db, "node-b", &[write.clone(), read.clone()], 10, LONG);
    assert_eq!(ids(&got), [w2]);
    db.complete(got[0].lease()).expect("complete w2");
    // Readers share: r1 and r2 together; a write waits for both.
    let r2 = f.enqueue(f.item("c4_read").study(s1.clone()));
    let got_r = claim(db, "node-a", std::slice::from_ref(&read), 10, LONG);
    assert_eq!(ids(&got_r), [r1, r2]);
    let w4 = f.enqueue(f.item("c4_write").study(s1.clone()));
    let r3 = f.enqueue(f.item("c4_read").study(s1.clone()));
    assert_eq!(
        ids(&claim(
            db,
            "node-b",
            &[write.clone(), read.clone()],
            10,
            LONG
        )),
        [r3],
        "a reader joins the readers; the writer waits"
    );
    for item in &got_r {
        db.complete(item.lease()).expect("complete reader");
    }
    assert!(claim(db, "node-b", std::slice::from_ref(&write), 10, LONG).is_empty());
    let r3_lease = f.get(r3).lease();
    db.complete(r3_lease).expect("complete r3");
    assert_eq!(
        ids(&claim(db, "node-b", std::slice::from_ref(&write), 10, LONG)),
        [w4]
    );
    // A write whose lease expired no longer locks the study (the holder is
    // presumed dead): a reader may run, and the item itself is taken over.
    let w5 = f.enqueue(f.item("c4_write").study(s2.clone()));
    db.complete(f.get(w3).lease()).expect("complete w3");
    let short = claim(
        db,
        "node-a",
        std::slice::from_ref(&write),
        1,
        Duration::from_millis(1),
    );
    assert_eq!(ids(&short), [w5]);
    expire_leases();
    let r4 = f.enqueue(f.item("c4_read").study(s2.clone()));
    let got = claim(db, "node-b", &[write, read], 10, LONG);
    assert_eq!(ids(&got), [w5], "the takeover excludes the reader");
    assert_eq!(f.get(r4).status, WorkStatus::Pending);
}

fn caps(db: &dyn Database) {
    let f = fixture(db, "WQ_CAPS");
    let heavy = ClaimKind {
        kind: kind("c5_heavy"),
        study_lock: StudyLock::Write,
        memory_heavy: true,
    };
    let light = claim_kind("c5_light", StudyLock::Write);
    let h1 = f.enqueue(f.item("c5_heavy").priority(WorkPriority::Stat));
    let h2 = f.enqueue(f.item("c5_heavy").priority(WorkPriority::Stat));
    let l1 = f.enqueue(f.item("c5_light"));
    let l2 = f.enqueue(f.item("c5_light").priority(WorkPriority::High));
    let kinds = [heavy, light];
    let request = |limit, max_normal, max_memory_heavy| {
        db.claim(&ClaimRequest {
            processor_id: "node-a",
            lease: LONG,
            kinds: &kinds,
            limit,
            max_normal,
            max_memory_heavy,
        })
        .expect("claim")
    };
    // No normal-priority slot and one memory-heavy slot.
    assert_eq!(ids(&request(10, 0, 1)), [h1, l2]);
    assert!(request(10, 0, 0).is_empty());
    assert_eq!(ids(&request(10, 1, 0)), [l1]);
    assert_eq!(ids(&request(10, 0, 1)), [h2]);
}

fn takeover_and_fencing(db: &dyn Database) {
    let f = fixture(db, "WQ_FENCE");
    let kinds = [claim_kind("c6_kind", StudyLock::Write)];
    let id = f.enqueue(f.item("c6_kind"));
    let first = claim(db, "node-a", &kinds, 1, Duration::from_millis(1));
    assert_eq!(ids(&first), [id]);
    let stale = first[0].lease();
    assert_eq!(stale.attempt, 1);
    expire_leases();
    // The expired lease is taken over under a new attempt.
    let second = claim(db, "node-b", &kinds, 1, LONG);
    assert_eq!(ids(&second), [id]);
    let item = &second[0];
    assert_eq!(item.attempt, 2);
    assert_eq!(item.processor_id.as_deref(), Some("node-b"));
    assert_eq!(item.failure_count, 1, "a takeover counts as a failure");
    let description = item.failure_description.as_deref().unwrap_or("");
    assert!(
        description.contains("node-a") && description.contains("taken over"),
        "{description}"
    );
    // The stale holder can do nothing any more.
    let lost = |result: Result<(), WorkError>| {
        assert!(
            matches!(result, Err(WorkError::LeaseLost { lease, .. }) if lease == stale),
            "{result:?}"
        );
    };
    lost(db.renew_lease(stale, LONG).map(drop));
    lost(db.complete(stale));
    lost(db.fail(stale, "late", FailureAction::Permanent));
    lost(db.postpone(stale, Timestamp::now()));
    lost(db.release(stale));
    let current = f.get(id);
    assert_eq!(
        (current.status, current.attempt),
        (WorkStatus::InProgress, 2)
    );
    // The current holder renews and completes.
    let renewed = db.renew_lease(item.lease(), LONG).expect("renew");
    assert_eq!(f.get(id).lease_expires_at, Some(renewed));
    db.complete(item.lease()).expect("complete");
    let done = f.get(id);
    assert_eq!(done.status, WorkStatus::Completed);
    assert_eq!(done.lease_expires_at, None);
    // Finished: even the right attempt cannot act again.
    assert!(matches!(
        db.complete(item.lease()),
        Err(WorkError::LeaseLost { .. })
    ));
    // A deleted item's lease is lost too.
    let gone = f.enqueue(f.item("c6_kind"));
    let claimed = claim(db, "node-a", &kinds, 1, Duration::from_millis(1));
    assert_eq!(ids(&claimed), [gone]);
    expire_leases();
    db.delete(gone).expect("delete an item whose lease expired");
    assert!(matches!(
        db.complete(claimed[0].lease()),
        Err(WorkError::LeaseLost { .. })
    ));
}

fn failures_postpone_release(db: &dyn Database) {
    let f = fixture(db, "WQ_FAIL");
    let kinds = [claim_kind("c7_kind", StudyLock::Write)];
    let id = f.enqueue(f.item("c7_kind"));
    let take = || claim(db, "node-a", &kinds, 1, LONG);

    // Retry later: pending, counted, not due yet.
    let lease = take()[0].lease();
    db.fail(lease, "peer down", FailureAction::RetryAfter(LONG))
        .expect("fail");
    let item = f.get(id);
    assert_eq!(item.status, WorkStatus::Pending);
    assert_eq!(item.failure_count, 1);
    assert_eq!(item.failure_description.as_deref(), Some("peer down"));
    assert_eq!(item.lease_expires_at, None);
    assert!(item.scheduled_at > Timestamp::now().after(Duration::from_secs(200)));
    assert!(take().is_empty());

    // Postpone: due later, not counted. (Made due first by a zero retry.)
    let other = f.enqueue(f.item("c7_kind"));
    let lease = take()[0].lease();
    assert_eq!(lease.item, other);
    db.fail(lease, "again", FailureAction::RetryAfter(Duration::ZERO))
        .expect("fail");
    let lease = take()[0].lease();
    assert_eq!((lease.item, lease.attempt), (other, 2));
    let until = Timestamp::now().after(Duration::from_secs(3600));
    db.postpone(lease, until).expect("postpone");
    let item = f.get(other);
    assert_eq!(
        (item.status, item.failure_count, item.scheduled_at),
        (WorkStatus::Pending, 1, until)
    );
    assert!(take().is_empty());

    // Release: due now, not counted, the next claim is a new attempt.
    let third = f.enqueue(f.item("c7_kind"));
    let lease = take()[0].lease();
    db.release(lease).expect("release");
    let item = f.get(third);
    assert_eq!((item.status, item.failure_count), (WorkStatus::Pending, 0));
    let again = take();
    assert_eq!(ids(&again), [third]);
    assert_eq!(again[0].attempt, 2);

    // Permanent: Failed, never claimed.
    db.fail(again[0].lease(), "bad data", FailureAction::Permanent)
        .expect("fail");
    let item = f.get(third);
    assert_eq!((item.status, item.failure_count), (WorkStatus::Failed, 1));
    assert_eq!(item.failure_description.as_deref(), Some("bad data"));
    assert!(take().is_empty());
}

fn operator_transitions(db: &dyn Database) {
    let f = fixture(db, "WQ_OPS");
    let kinds = [claim_kind("c8_kind", StudyLock::Write)];
    let id = f.enqueue(f.item("c8_kind"));
    let missing = WorkItemId(i64::MAX);
    let illegal = |result: Result<(), WorkError>, status: WorkStatus| match result {
        Err(WorkError::IllegalTransition {
            id: refused,
            status: found,
            ..
        }) => assert_eq!((refused, found), (id, status)),
        other => panic!("expected an illegal transition from {status}: {other:?}"),
    };

    // Pending: no retry; reprioritise works.
    illegal(db.retry(id), WorkStatus::Pending);
    db.reprioritise(id, WorkPriority::Stat)
        .expect("reprioritise");
    assert_eq!(f.get(id).priority, WorkPriority::Stat);
    // Postponed, it is not claimable; rescheduled to now, it is.
    let later = Timestamp::now().after(LONG);
    db.reschedule(id, later).expect("postpone");
    assert_eq!(f.get(id).scheduled_at, later);
    assert!(claim(db, "node-a", &kinds, 1, LONG).is_empty());
    db.reschedule(id, Timestamp::now())
        .expect("reschedule to now");

    // Running under a valid lease: no delete, no reschedule.
    let lease = claim(db, "node-a", &kinds, 1, LONG)[0].lease();
    illegal(db.delete(id), WorkStatus::InProgress);
    illegal(db.retry(id), WorkStatus::InProgress);
    illegal(db.reschedule(id, later), WorkStatus::InProgress);

    // Failed: no reschedule; retry keeps the failure count and makes it
    // due now.
    db.fail(lease, "broken", FailureAction::Permanent)
        .expect("fail");
    illegal(db.reschedule(id, later), WorkStatus::Failed);
    db.retry(id).expect("retry");
    let item = f.get(id);
    assert_eq!(item.status, WorkStatus::Pending);
    assert_eq!(item.failure_count, 1);
    assert!(item.scheduled_at <= Timestamp::now());
    let lease = claim(db, "node-a", &kinds, 1, LONG)[0].lease();
    assert_eq!(lease.attempt, 2);

    // Completed: neither retry nor reprioritise; delete works.
    db.complete(lease).expect("complete");
    illegal(db.retry(id), WorkStatus::Completed);
    illegal(
        db.reprioritise(id, WorkPriority::Low),
        WorkStatus::Completed,
    );
    illegal(db.reschedule(id, later), WorkStatus::Completed);
    db.delete(id).expect("delete");
    assert!(db.get(id).expect("get").is_none());

    // Unknown ids.
    for result in [
        db.retry(missing),
        db.delete(missing),
        db.reprioritise(missing, WorkPriority::High),
        db.reschedule(missing, later),
    ] {
        assert!(
            matches!(result, Err(WorkError::NotFound { id }) if id == missing),
            "{result:?}"
        );
    }
    // Deleting removes the instance list with the item.
    let with_uids = f.enqueue(
        f.item("c8_kind")
            .uids([WorkUid::new(uid("1.9.8.1"), uid("1.9.8.1.1"))]),
    );
    db.delete(with_uids).expect("delete");
    assert!(db.get(with_uids).expect("get").is_none());
}

fn list_filters_and_purge(db: &dyn Database) {
    let f = fixture(db, "WQ_LIST");
    let g = fixture(db, "WQ_LIST2");
    let study = f.study("1.9.20");
    let a = f.enqueue(f.item("c9_a").study(study.clone()));
    let b = f.enqueue(
        f.item("c9_b")
            .uids([WorkUid::new(uid("1.9.9.1"), uid("1.9.9.1.1"))]),
    );
    let c = f.enqueue(f.item("c9_a"));
    let other_partition = g.enqueue(g.item("c9_a"));
    let kinds = [claim_kind("c9_a", StudyLock::Write)];
    let running = claim(db, "node-a", &kinds, 1, LONG);
    assert_eq!(ids(&running), [a]);
    let list = |filter: WorkFilter| ids(&db.list(&filter).expect("list"));
    let mine = WorkFilter {
        partition: Some(f.partition),
        ..WorkFilter::default()
    };
    assert_eq!(list(mine.clone()), [a, b, c]);
    assert_eq!(
        list(WorkFilter {
            statuses: vec![WorkStatus::Pending],
            ..mine.clone()
        }),
        [b, c]
    );
    assert_eq!(
        list(WorkFilter {
            statuses: vec![WorkStatus::InProgress, WorkStatus::Failed],
            ..mine.clone()
        }),
        [a]
    );
    assert_eq!(
        list(WorkFilter {
            kinds: vec![kind("c9_a")],
            ..WorkFilter::default()
        }),
        [a, c, other_partition]
    );
    assert_eq!(
        list(WorkFilter {
            study_uid: Some(study.clone()),
            ..WorkFilter::default()
        }),
        [a]
    );
    assert_eq!(
        list(WorkFilter {
            limit: Some(2),
            ..mine.clone()
        }),
        [a, b]
    );
    let listed = db.list(&mine).expect("list");
    assert_eq!(listed[1].uid_count, 1);
    assert!(listed[1].uids.is_empty(), "lists leave the instances out");
    assert_eq!(listed[0].study_uid(), Some(&study));

    // Purge removes completed items changed before the cut, nothing else.
    db.complete(running[0].lease()).expect("complete");
    assert_eq!(
        db.purge_completed(Timestamp::from_millis(0))
            .expect("purge"),
        0
    );
    let removed = db
        .purge_completed(Timestamp::now().after(Duration::from_secs(1)))
        .expect("purge");
    assert!(removed >= 1);
    assert!(db.get(a).expect("get").is_none());
    assert_eq!(list(mine), [b, c]);
}

/// `insert_instances_then`: the batch's follow-up items commit with it.
fn batch_follow_ups(db: &dyn Database) {
    let f = fixture(db, "WQ_FOLLOW");
    let process = kind("c10_process");
    let items = |study: &str| -> Vec<WorkItem> {
        db.list(&WorkFilter {
            kinds: vec![process.clone()],
            partition: Some(f.partition),
            study_uid: Some(uid(study)),
            ..WorkFilter::default()
        })
        .expect("list")
        .into_iter()
        .map(|i| f.get(i.id))
        .collect()
    };
    let sops = |item: &WorkItem| -> Vec<String> {
        item.uids
            .iter()
            .map(|u| u.sop_instance_uid.to_string())
            .collect()
    };
    let t0 = Timestamp::now().after(Duration::from_secs(60));
    let follow_up = |due| crate::db::FollowUp {
        kind: process.clone(),
        priority: WorkPriority::Low,
        due,
        slack: Duration::ZERO,
    };
    // Two studies in one batch: one item each, listing their instances.
    let batch = [
        f.record("1.9.10.1", 1),
        f.record("1.9.10.2", 1),
        f.record("1.9.10.1", 2),
    ];
    db.insert_instances_then(&batch, Some(&follow_up(t0)))
        .expect("batch");
    let first = items("1.9.10.1");
    assert_eq!(first.len(), 1, "{first:?}");
    assert_eq!(sops(&first[0]), ["1.9.10.1.1.1", "1.9.10.1.1.2"]);
    assert_eq!(first[0].scheduled_at, t0);
    assert_eq!(first[0].priority, WorkPriority::Low);
    assert_eq!(first[0].status, WorkStatus::Pending);
    assert_eq!(sops(&items("1.9.10.2")[0]), ["1.9.10.2.1.1"]);

    // A later batch of the study appends and moves the item later.
    let t1 = t0.after(Duration::from_secs(5));
    db.insert_instances_then(&[f.record("1.9.10.1", 3)], Some(&follow_up(t1)))
        .expect("second batch");
    let again = items("1.9.10.1");
    assert_eq!(again.len(), 1, "{again:?}");
    assert_eq!(again[0].id, first[0].id);
    assert_eq!(again[0].scheduled_at, t1);
    assert_eq!(
        sops(&again[0]),
        ["1.9.10.1.1.1", "1.9.10.1.1.2", "1.9.10.1.1.3"]
    );

    // With a slack, the batches of a study move its item only when one is
    // due after the item's schedule: then to that batch's due plus the
    // slack. Two studies in one batch: each item is handled alike.
    let slack = Duration::from_secs(10);
    let slacked = |due| crate::db::FollowUp {
        slack,
        ..follow_up(due)
    };
    let t2 = t1.after(Duration::from_secs(60));
    db.insert_instances_then(
        &[f.record("1.9.10.6", 1), f.record("1.9.10.7", 1)],
        Some(&slacked(t2)),
    )
    .expect("slack: first batch");
    let at = |study: &str| items(study)[0].scheduled_at;
    assert_eq!(
        (at("1.9.10.6"), at("1.9.10.7")),
        (t2.after(slack), t2.after(slack))
    );
    for (n, seconds) in [(2, 3), (3, 9)] {
        db.insert_instances_then(
            &[f.record("1.9.10.6", n), f.record("1.9.10.7", n)],
            Some(&slacked(t2.after(Duration::from_secs(seconds)))),
        )
        .expect("slack: batch within");
        assert_eq!(
            (at("1.9.10.6"), at("1.9.10.7")),
            (t2.after(slack), t2.after(slack))
        );
    }
    let t3 = t2.after(Duration::from_secs(12));
    db.insert_instances_then(&[f.record("1.9.10.6", 4)], Some(&slacked(t3)))
        .expect("slack: batch past");
    assert_eq!(at("1.9.10.6"), t3.after(slack));
    assert_eq!(at("1.9.10.7"), t2.after(slack));
    assert_eq!(items("1.9.10.6")[0].uid_count, 4);

    // A batch that indexes an instance again (a replacement) appends to
    // each of its studies' items like any other, listing nothing twice.
    let t4 = t3.after(Duration::from_secs(60));
    let ids = (items("1.9.10.6")[0].id, items("1.9.10.7")[0].id);
    db.insert_instances_then(
        &[f.record("1.9.10.6", 1), f.record("1.9.10.7", 5)],
        Some(&slacked(t4)),
    )
    .expect("slack: batch with a replacement");
    assert_eq!((items("1.9.10.6")[0].id, items("1.9.10.7")[0].id), ids);
    assert_eq!(
        (at("1.9.10.6"), at("1.9.10.7")),
        (t4.after(slack), t4.after(slack))
    );
    assert_eq!(
        (
            items("1.9.10.6")[0].uid_count,
            items("1.9.10.7")[0].uid_count
        ),
        (4, 4)
    );

    // A failed batch schedules nothing: rows and items are one transaction.
    let mut bad = f.record("1.9.10.4", 1);
    bad.location.filesystem = FilesystemId(i64::MAX - 7);
    assert!(db
        .insert_instances_then(&[f.record("1.9.10.3", 1), bad], Some(&follow_up(t1)))
        .is_err());
    assert!(items("1.9.10.3").is_empty());
    assert!(db
        .study_location(f.partition, &uid("1.9.10.3"))
        .expect("lookup")
        .is_none());
    // Without a follow-up, nothing is scheduled.
    db.insert_instances(&[f.record("1.9.10.5", 1)])
        .expect("plain batch");
    assert!(items("1.9.10.5").is_empty());
}
