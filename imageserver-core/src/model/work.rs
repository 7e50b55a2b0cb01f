//! The vocabulary of the WorkQueue: what a work item is, independent of how
//! it is stored ([`crate::db::work`]) or run ([`crate::workqueue`]).
//!
//! A work item is bound to a partition and (usually) to one study; it has a
//! [`WorkKind`] (what to do), a [`WorkStatus`], a [`WorkPriority`], a
//! scheduled time, and while it runs a lease: the processor that claimed it,
//! until when, and the claim's `attempt` number, the fencing token every
//! later write of that claim must present.

use std::borrow::Cow;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::model::{PartitionId, Uid};

/// Database key of a work item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkItemId(pub i64);

impl fmt::Display for WorkItemId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Database key of a study's storage row (the row a work item is bound to).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StudyStorageId(pub i64);

/// A point in time, in milliseconds since the Unix epoch (UTC): the
/// resolution the database stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Timestamp(i64);

impl Timestamp {
    /// Now, from the system clock.
    pub fn now() -> Timestamp {
        Timestamp::from(SystemTime::now())
    }

    /// From milliseconds since the epoch.
    pub fn from_millis(millis: i64) -> Timestamp {
        Timestamp(millis)
    }

    /// Milliseconds since the epoch.
    pub fn as_millis(self) -> i64 {
        self.0
    }

    /// This time plus `duration` (saturating).
    pub fn after(self, duration: Duration) -> Timestamp {
        let millis = i64::try_from(duration.as_millis()).unwrap_or(i64::MAX);
        Timestamp(self.0.saturating_add(millis))
    }

    /// How long from `earlier` to this time (zero if `earlier` is later).
    pub fn since(self, earlier: Timestamp) -> Duration {
        Duration::from_millis(u64::try_from(self.0.saturating_sub(earlier.0)).unwrap_or(0))
    }
}

impl From<SystemTime> for Timestamp {
    fn from(time: SystemTime) -> Timestamp {
        match time.duration_since(UNIX_EPOCH) {
            Ok(d) => Timestamp(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
            Err(e) => Timestamp(-i64::try_from(e.duration().as_millis()).unwrap_or(i64::MAX)),
        }
    }
}

impl fmt::Display for Timestamp {
    /// ISO 8601 in UTC with milliseconds, e.g. `2024-01-31T10:15:00.250Z`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let millis = self.0.rem_euclid(1000);
        let secs = self.0.div_euclid(1000);
        let days = secs.div_euclid(86_400);
        let of_day = secs.rem_euclid(86_400);
        let (year, month, day) = civil_from_days(days);
        write!(
            f,
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
            of_day / 3600,
            of_day / 60 % 60,
            of_day % 60
        )
    }
}

/// Year, month, day of a day number since 1970-01-01 (proleptic Gregorian;
/// Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = u32::try_from(doy - (153 * mp + 2) / 5 + 1).unwrap_or(1);
    let month = u32::try_from(if mp < 10 { mp + 3 } else { mp - 9 }).unwrap_or(1);
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// What a work item does: a stable `snake_case` name (it is stored in the
/// database and named in configuration). The archive's own kinds are
/// constants; an embedding product names its own with [`WorkKind::new`].
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkKind(Cow<'static, str>);

/// Why a name cannot be a [`WorkKind`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid work item type {0:?}: 1-64 characters of a-z 0-9 _, starting with a letter")]
pub struct WorkKindError(pub String);

impl WorkKind {
    /// Applies the partition's rules and indexes what arrived, once a study
    /// has been quiet for a while.
    pub const STUDY_PROCESS: WorkKind = WorkKind(Cow::Borrowed("study_process"));
    /// Sends instances or a study to a device.
    pub const AUTO_ROUTE: WorkKind = WorkKind(Cow::Borrowed("auto_route"));
    /// Deletes a study's files and rows.
    pub const DELETE_STUDY: WorkKind = WorkKind(Cow::Borrowed("delete_study"));
    /// Changes patient/study attributes in the index and the files.
    pub const EDIT_STUDY: WorkKind = WorkKind(Cow::Borrowed("edit_study"));
    /// Rebuilds a study's index rows from its files.
    pub const REPROCESS_STUDY: WorkKind = WorkKind(Cow::Borrowed("reprocess_study"));
    /// Sends a study to a device on request.
    pub const MOVE_STUDY: WorkKind = WorkKind(Cow::Borrowed("move_study"));
    /// Moves a study's files to another filesystem (tier).
    pub const MIGRATE_STUDY: WorkKind = WorkKind(Cow::Borrowed("migrate_study"));
    /// Packs a quiet study into the archive (HSM).
    pub const ARCHIVE_STUDY: WorkKind = WorkKind(Cow::Borrowed("archive_study"));
    /// Removes an archived study's online files (it becomes nearline).
    pub const PURGE_STUDY: WorkKind = WorkKind(Cow::Borrowed("purge_study"));
    /// Brings a nearline study back online from its pack.
    pub const RESTORE_STUDY: WorkKind = WorkKind(Cow::Borrowed("restore_study"));
    /// Re-encodes a study's images losslessly (RLE Lossless).
    pub const COMPRESS_STUDY: WorkKind = WorkKind(Cow::Borrowed("compress_study"));

    /// Validates a kind name: 1–64 characters of `[a-z0-9_]`, starting with
    /// a letter.
    pub fn new(name: &str) -> Result<WorkKind, WorkKindError> {
        let ok = !name.is_empty()
            && name.len() <= 64
            && name.as_bytes()[0].is_ascii_lowercase()
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if ok {
            Ok(WorkKind(Cow::Owned(name.to_string())))
        } else {
            Err(WorkKindError(name.to_string()))
        }
    }

    /// The stable name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for WorkKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for WorkKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WorkKind({})", self.0)
    }
}

/// Where a work item is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WorkStatus {
    /// Waiting (for more instances, or for its scheduled time) without
    /// having been asked to run yet; claimable once due.
    Idle,
    /// Waiting to run; claimable once its scheduled time has come.
    Pending,
    /// Claimed by a processor under a lease.
    InProgress,
    /// Done.
    Completed,
    /// Given up: stays until a person retries or deletes it.
    Failed,
}

impl WorkStatus {
    /// Every status, in life order.
    pub const ALL: [WorkStatus; 5] = [
        WorkStatus::Idle,
        WorkStatus::Pending,
        WorkStatus::InProgress,
        WorkStatus::Completed,
        WorkStatus::Failed,
    ];

    /// The stable name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkStatus::Idle => "idle",
            WorkStatus::Pending => "pending",
            WorkStatus::InProgress => "in_progress",
            WorkStatus::Completed => "completed",
            WorkStatus::Failed => "failed",
        }
    }

    /// Parses the stable name.
    pub fn parse(name: &str) -> Option<WorkStatus> {
        WorkStatus::ALL.into_iter().find(|s| s.as_str() == name)
    }
}

impl fmt::Display for WorkStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How urgent a work item is; higher runs first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum WorkPriority {
    /// Background work (migration, compression).
    Low,
    /// The default.
    #[default]
    Medium,
    /// Ahead of everything else; may use the threads kept for it.
    High,
    /// A person is waiting.
    Stat,
}

impl WorkPriority {
    /// Every priority, lowest first.
    pub const ALL: [WorkPriority; 4] = [
        WorkPriority::Low,
        WorkPriority::Medium,
        WorkPriority::High,
        WorkPriority::Stat,
    ];

    /// The stable name (configuration, CLI).
    pub fn as_str(self) -> &'static str {
        match self {
            WorkPriority::Low => "low",
            WorkPriority::Medium => "medium",
            WorkPriority::High => "high",
            WorkPriority::Stat => "stat",
        }
    }

    /// Parses the stable name (case-insensitive).
    pub fn parse(name: &str) -> Option<WorkPriority> {
        WorkPriority::ALL
            .into_iter()
            .find(|p| p.as_str().eq_ignore_ascii_case(name.trim()))
    }

    /// The value stored in the database's `priority` column.
    pub fn rank(self) -> i64 {
        match self {
            WorkPriority::Low => 0,
            WorkPriority::Medium => 1,
            WorkPriority::High => 2,
            WorkPriority::Stat => 3,
        }
    }

    /// The priority of a stored rank (out-of-range values are clamped).
    pub fn from_rank(rank: i64) -> WorkPriority {
        match rank {
            i64::MIN..=0 => WorkPriority::Low,
            1 => WorkPriority::Medium,
            2 => WorkPriority::High,
            _ => WorkPriority::Stat,
        }
    }

    /// High and Stat items may use the threads kept for urgent work.
    pub fn is_high(self) -> bool {
        self >= WorkPriority::High
    }
}

impl fmt::Display for WorkPriority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a running item locks its study: writers exclude everyone, readers
/// exclude only writers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum StudyLock {
    /// Reads the study (sending it, checking it): shares with other readers.
    Read,
    /// Changes the study (processing, editing, deleting): runs alone.
    #[default]
    Write,
}

impl StudyLock {
    /// The stable name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            StudyLock::Read => "read",
            StudyLock::Write => "write",
        }
    }

    /// Parses the stable name.
    pub fn parse(name: &str) -> Option<StudyLock> {
        match name {
            "read" => Some(StudyLock::Read),
            "write" => Some(StudyLock::Write),
            _ => None,
        }
    }
}

/// The study a work item is bound to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkStudy {
    /// Its storage row.
    pub storage: StudyStorageId,
    /// Its Study Instance UID.
    pub study_uid: Uid,
}

/// One instance a work item covers (the `work_queue_uid` rows): StudyProcess
/// accumulates the instances that arrived, AutoRoute the ones to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkUid {
    /// Series Instance UID.
    pub series_uid: Uid,
    /// SOP Instance UID.
    pub sop_instance_uid: Uid,
    /// Processing this instance failed (it is retried with the item).
    pub failed: bool,
    /// How often processing this instance failed.
    pub failure_count: u32,
    /// A duplicate kept for review (duplicate policy `compare`).
    pub duplicate: bool,
    /// Where a duplicate's file waits, relative to the study folder.
    pub relative_path: Option<String>,
}

impl WorkUid {
    /// An instance to process, with no failures yet.
    pub fn new(series_uid: Uid, sop_instance_uid: Uid) -> WorkUid {
        WorkUid {
            series_uid,
            sop_instance_uid,
            failed: false,
            failure_count: 0,
            duplicate: false,
            relative_path: None,
        }
    }
}

/// The claim a processor holds on an item: the item and the claim's
/// attempt number. Every claim increments the attempt, so a lease taken
/// over after expiry has a new number and the old holder's renew, complete,
/// fail and postpone are refused (a fencing token).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Lease {
    /// The item.
    pub item: WorkItemId,
    /// The attempt number of this claim.
    pub attempt: u32,
}

/// A stored work item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkItem {
    /// Its key.
    pub id: WorkItemId,
    /// The partition it belongs to.
    pub partition: PartitionId,
    /// The study it works on (None: bound to no study).
    pub study: Option<WorkStudy>,
    /// What it does.
    pub kind: WorkKind,
    /// Where it is in its life.
    pub status: WorkStatus,
    /// How urgent it is.
    pub priority: WorkPriority,
    /// Not claimed before this time.
    pub scheduled_at: Timestamp,
    /// Fails instead of running when claimed after this time.
    pub expires_at: Option<Timestamp>,
    /// How often it failed (retries, takeovers after an expired lease).
    pub failure_count: u32,
    /// Why it last failed.
    pub failure_description: Option<String>,
    /// The processor holding (or last holding) its lease.
    pub processor_id: Option<String>,
    /// Until when the current lease holds.
    pub lease_expires_at: Option<Timestamp>,
    /// How often it was claimed: the current lease's fencing token.
    pub attempt: u32,
    /// Kind-specific parameters, JSON text (`{}` when none).
    pub payload: String,
    /// The instances it covers; empty in lists (see `uid_count`).
    pub uids: Vec<WorkUid>,
    /// How many instances it covers.
    pub uid_count: u64,
    /// When it was created.
    pub created_at: Timestamp,
    /// When it last changed.
    pub updated_at: Timestamp,
}

impl WorkItem {
    /// The lease of the current claim (meaningful while in progress).
    pub fn lease(&self) -> Lease {
        Lease {
            item: self.id,
            attempt: self.attempt,
        }
    }

    /// The study UID, if it is bound to a study.
    pub fn study_uid(&self) -> Option<&Uid> {
        self.study.as_ref().map(|s| &s.study_uid)
    }
}

/// A work item to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewWorkItem {
    /// Its partition.
    pub partition: PartitionId,
    /// The study it works on; it must be stored in the partition already
    /// (None: bound to no study).
    pub study_uid: Option<Uid>,
    /// What it does.
    pub kind: WorkKind,
    /// [`WorkStatus::Pending`] (the default) or [`WorkStatus::Idle`].
    pub status: WorkStatus,
    /// None: the kind's default (Medium in the store).
    pub priority: Option<WorkPriority>,
    /// None: now plus the kind's processing delay (now in the store).
    pub scheduled_at: Option<Timestamp>,
    /// How much later than `scheduled_at` the store may schedule the item,
    /// so that appending to a waiting item need not move it every time: a
    /// new item, and a waiting item scheduled before `scheduled_at`, are
    /// scheduled at `scheduled_at` plus the slack; a waiting item scheduled
    /// at or after `scheduled_at` stays where it is. Zero (the default):
    /// exactly `scheduled_at`, later only where an append found it later.
    pub slack: Duration,
    /// Fails instead of running when claimed after this time.
    pub expires_at: Option<Timestamp>,
    /// Kind-specific parameters, JSON text.
    pub payload: String,
    /// The instances it covers.
    pub uids: Vec<WorkUid>,
}

impl NewWorkItem {
    /// A pending item of `kind` in `partition`, bound to no study, with
    /// defaults for everything else.
    pub fn new(kind: WorkKind, partition: PartitionId) -> NewWorkItem {
        NewWorkItem {
            partition,
            study_uid: None,
            kind,
            status: WorkStatus::Pending,
            priority: None,
            scheduled_at: None,
            slack: Duration::ZERO,
            expires_at: None,
            payload: "{}".to_string(),
            uids: Vec::new(),
        }
    }

    /// Binds it to a study of its partition.
    pub fn study(mut self, study_uid: Uid) -> NewWorkItem {
        self.study_uid = Some(study_uid);
        self
    }

    /// Sets its priority.
    pub fn priority(mut self, priority: WorkPriority) -> NewWorkItem {
        self.priority = Some(priority);
        self
    }

    /// Schedules it.
    pub fn scheduled_at(mut self, at: Timestamp) -> NewWorkItem {
        self.scheduled_at = Some(at);
        self
    }

    /// Lets the store schedule it up to `slack` after its schedule (see
    /// [`NewWorkItem::slack`]).
    pub fn slack(mut self, slack: Duration) -> NewWorkItem {
        self.slack = slack;
        self
    }

    /// Sets its payload (JSON text).
    pub fn payload(mut self, json: impl Into<String>) -> NewWorkItem {
        self.payload = json.into();
        self
    }

    /// Adds instances.
    pub fn uids(mut self, uids: impl IntoIterator<Item = WorkUid>) -> NewWorkItem {
        self.uids.extend(uids);
        self
    }
}

/// What an enqueue did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    /// A new item was created.
    Created(WorkItemId),
    /// The instances were added to this waiting item of the same kind and
    /// study.
    Appended(WorkItemId),
}

impl Enqueued {
    /// The item, new or existing.
    pub fn id(self) -> WorkItemId {
        match self {
            Enqueued::Created(id) | Enqueued::Appended(id) => id,
        }
    }
}

/// Which items a listing returns; empty lists mean "any".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkFilter {
    /// Only these statuses.
    pub statuses: Vec<WorkStatus>,
    /// Only these kinds.
    pub kinds: Vec<WorkKind>,
    /// Only this partition.
    pub partition: Option<PartitionId>,
    /// Only items on this study.
    pub study_uid: Option<Uid>,
    /// At most this many (oldest first).
    pub limit: Option<usize>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_statuses_and_priorities_round_trip() {
        assert_eq!(WorkKind::STUDY_PROCESS.as_str(), "study_process");
        assert_eq!(
            WorkKind::new("auto_route").unwrap(),
            WorkKind::AUTO_ROUTE,
            "a parsed name equals the constant"
        );
        for bad in ["", "Upper", "1st", "with-dash", &"x".repeat(65)] {
            assert!(WorkKind::new(bad).is_err(), "{bad:?}");
        }
        for status in WorkStatus::ALL {
            assert_eq!(WorkStatus::parse(status.as_str()), Some(status));
        }
        for priority in WorkPriority::ALL {
            assert_eq!(WorkPriority::from_rank(priority.rank()), priority);
            assert_eq!(WorkPriority::parse(priority.as_str()), Some(priority));
        }
        assert_eq!(WorkPriority::parse("STAT"), Some(WorkPriority::Stat));
        assert!(WorkPriority::Stat > WorkPriority::Low);
    }

    #[test]
    fn timestamps_print_as_utc() {
        assert_eq!(
            Timestamp::from_millis(0).to_string(),
            "1970-01-01T00:00:00.000Z"
        );
        assert_eq!(
            Timestamp::from_millis(1_706_696_100_250).to_string(),
            "2024-01-31T10:15:00.250Z"
        );
        assert_eq!(
            Timestamp::from_millis(951_782_400_000).to_string(),
            "2000-02-29T00:00:00.000Z"
        );
        let t = Timestamp::from_millis(1000);
        assert_eq!(t.after(Duration::from_millis(500)).as_millis(), 1500);
        assert_eq!(
            t.after(Duration::from_secs(2)).since(t),
            Duration::from_secs(2)
        );
        assert_eq!(t.since(t.after(Duration::from_secs(1))), Duration::ZERO);
    }
}
