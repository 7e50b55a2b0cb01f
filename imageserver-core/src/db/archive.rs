//! The index's side of the HSM archive: where each archive root's identity
//! marker is recorded, which study is packed where, and the two location
//! switches a purge and a restore make (each one transaction).
//!
//! A study is **nearline** when its storage row names no filesystem: its
//! rows stay (C-FIND finds it), its files are only in its pack.

#[cfg(test)]
pub(crate) mod conformance;

use crate::db::rows::Columns;
use crate::db::Error;
use crate::model::{FilesystemId, PartitionId, Uid};

/// A study's pack, as recorded once it is durable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveEntry {
    /// The study's partition.
    pub partition: PartitionId,
    /// The study.
    pub study_uid: Uid,
    /// The pack's absolute path.
    pub path: String,
    /// The study's date folder (a restore recreates it).
    pub date_folder: String,
    /// The pack's size in bytes.
    pub size_bytes: u64,
    /// The pack's BLAKE3 digest, lowercase hex.
    pub digest: String,
    /// The instances it holds.
    pub instances: u64,
    /// Their bytes.
    pub instance_bytes: u64,
    /// When it was recorded (ms since the epoch).
    pub archived_at_ms: i64,
}

/// A study the archive scan or the watermark service may act on:
/// partition, study, its bytes.
pub type StudyCandidate = (PartitionId, Uid, u64);

/// The archive's records in the index. Every write is one transaction.
pub trait ArchiveStore: Send + Sync {
    /// The identity marker of the archive root at `path`: the one recorded,
    /// or `proposed` when none was (it is recorded then).
    fn archive_root_marker(&self, path: &str, proposed: &str) -> Result<String, Error>;

    /// Records (or replaces) a study's pack.
    fn record_archive(&self, entry: &ArchiveEntry) -> Result<(), Error>;

    /// The study's pack, if one was recorded.
    fn archive_entry(
        &self,
        partition: PartitionId,
        study_uid: &Uid,
    ) -> Result<Option<ArchiveEntry>, Error>;

    /// Forgets a study's pack (its study was deleted); whether there was one.
    fn forget_archive(&self, partition: PartitionId, study_uid: &Uid) -> Result<bool, Error>;

    /// Online studies of `partition` quiet since `quiet_before_ms` (no
    /// instance arrived after it) whose current content no pack holds and
    /// no open `archive_study` or `delete_study` item names (a study a rule
    /// deletes is not archived), oldest first, at most `limit`.
    fn archive_candidates(
        &self,
        partition: PartitionId,
        quiet_before_ms: i64,
        limit: u64,
    ) -> Result<Vec<StudyCandidate>, Error>;

    /// Studies on `filesystem` whose pack holds exactly their current
    /// content and that no open `purge_study` item names, least recently
    /// accessed (or arrived) first, at most `limit` (what the watermark
    /// service purges before it migrates).
    fn purge_candidates(
        &self,
        filesystem: FilesystemId,
        limit: u64,
    ) -> Result<Vec<StudyCandidate>, Error>;

    /// Online studies after storage row `after` (its key; 0: from the
    /// first), by key, at most `limit`: (key, partition, study). The
    /// integrity scan pages through them.
    fn online_studies(&self, after: i64, limit: u64)
        -> Result<Vec<(i64, PartitionId, Uid)>, Error>;

    /// A purge's switch: the study becomes nearline (no filesystem, state
    /// `nearline`), only while it is on `from`, not being deleted, and
    /// holds exactly `instances` instance rows of `bytes` bytes (what its
    /// pack holds). Whether it switched.
    fn switch_to_nearline(
        &self,
        partition: PartitionId,
        study_uid: &Uid,
        from: FilesystemId,
        instances: u64,
        bytes: u64,
    ) -> Result<bool, Error>;

    /// A restore's switch: the nearline study is online again on `to` in
    /// `date_folder` (state `idle`), only while it is nearline and holds
    /// exactly `instances` instance rows of `bytes` bytes (what was
    /// unpacked and verified). Whether it switched.
    fn switch_from_nearline(
        &self,
        partition: PartitionId,
        study_uid: &Uid,
        to: FilesystemId,
        date_folder: &str,
        instances: u64,
        bytes: u64,
    ) -> Result<bool, Error>;
}

/// Records (or replaces) a pack (`$1` partition … `$9` archived at).
pub(crate) const RECORD_ARCHIVE: &str = "INSERT INTO archive_entry
         (partition_id, study_uid, path, date_folder, size_bytes, digest, instances,
          instance_bytes, archived_at)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
     ON CONFLICT (partition_id, study_uid) DO UPDATE
     SET path = excluded.path, date_folder = excluded.date_folder,
         size_bytes = excluded.size_bytes, digest = excluded.digest,
         instances = excluded.instances, instance_bytes = excluded.instance_bytes,
         archived_at = excluded.archived_at";

/// The pack of study `$2` of partition `$1`.
pub(crate) const ARCHIVE_ENTRY: &str = "SELECT path, date_folder, size_bytes, digest, instances,
            instance_bytes, archived_at
     FROM archive_entry WHERE partition_id = $1 AND study_uid = $2";

/// Forgets the pack of study `$2` of partition `$1`.
pub(crate) const FORGET_ARCHIVE: &str =
    "DELETE FROM archive_entry WHERE partition_id = $1 AND study_uid = $2";

/// Records root `$1`'s marker `$2` unless one is recorded.
pub(crate) const INSERT_ARCHIVE_ROOT: &str = "INSERT INTO archive_root (path, marker)
     VALUES ($1, $2) ON CONFLICT (path) DO NOTHING";

/// The marker recorded for root `$1`.
pub(crate) const ARCHIVE_ROOT_MARKER: &str = "SELECT marker FROM archive_root WHERE path = $1";

/// See [`ArchiveStore::archive_candidates`] (`$1` partition, `$2` quiet
/// before, `$3` limit).
pub(crate) const ARCHIVE_CANDIDATES: &str = "SELECT ss.partition_id, ss.study_uid, st.size_bytes
     FROM study_storage ss JOIN study st ON st.study_storage_id = ss.id
     WHERE ss.partition_id = $1 AND ss.filesystem_id IS NOT NULL AND ss.state <> 'deleting'
       AND st.updated_at <= $2 AND st.num_instances > 0
       AND NOT EXISTS (SELECT 1 FROM archive_entry ae
                       WHERE ae.partition_id = ss.partition_id AND ae.study_uid = ss.study_uid
                         AND ae.instances = st.num_instances
                         AND ae.instance_bytes = st.size_bytes)
       AND NOT EXISTS (SELECT 1 FROM work_queue w
                       WHERE w.study_storage_id = ss.id
                         AND w.type IN ('archive_study', 'delete_study')
                         AND w.status IN ('idle', 'pending', 'in_progress'))
     ORDER BY st.updated_at, ss.id
     LIMIT $3";

/// See [`ArchiveStore::online_studies`] (`$1` after, `$2` limit).
pub(crate) const ONLINE_STUDIES: &str = "SELECT id, partition_id, study_uid FROM study_storage
     WHERE id > $1 AND filesystem_id IS NOT NULL AND state <> 'deleting'
     ORDER BY id LIMIT $2";

/// See [`ArchiveStore::purge_candidates`] (`$1` filesystem, `$2` limit).
pub(crate) const PURGE_CANDIDATES: &str = "SELECT ss.partition_id, ss.study_uid, st.size_bytes
     FROM study_storage ss JOIN study st ON st.study_storage_id = ss.id
     JOIN archive_entry ae ON ae.partition_id = ss.partition_id AND ae.study_uid = ss.study_uid
     WHERE ss.filesystem_id = $1 AND ss.state <> 'deleting'
       AND ae.instances = st.num_instances AND ae.instance_bytes = st.size_bytes
       AND NOT EXISTS (SELECT 1 FROM work_queue w
                       WHERE w.study_storage_id = ss.id AND w.type = 'purge_study'
                         AND w.status IN ('idle', 'pending', 'in_progress'))
     ORDER BY COALESCE(ss.last_accessed, ss.created_at), ss.id
     LIMIT $2";

/// See [`ArchiveStore::switch_to_nearline`] (`$1` partition, `$2` study,
/// `$3` from, `$4` instances, `$5` bytes).
pub(crate) const SWITCH_TO_NEARLINE: &str =
    "UPDATE study_storage SET filesystem_id = NULL, state = 'nearline'
     WHERE partition_id = $1 AND study_uid = $2 AND filesystem_id = $3 AND state <> 'deleting'
       AND (SELECT COUNT(*) FROM instance i
            JOIN series se ON se.id = i.series_fk JOIN study st ON st.id = se.study_fk
            WHERE st.partition_id = $1 AND st.study_uid = $2) = $4
       AND (SELECT CAST(COALESCE(SUM(i.file_size), 0) AS BIGINT) FROM instance i
            JOIN series se ON se.id = i.series_fk JOIN study st ON st.id = se.study_fk
            WHERE st.partition_id = $1 AND st.study_uid = $2) = $5";

/// See [`ArchiveStore::switch_from_nearline`] (`$1` to, `$2` date folder,
/// `$3` partition, `$4` study, `$5` instances, `$6` bytes).
pub(crate) const SWITCH_FROM_NEARLINE: &str =
    "UPDATE study_storage SET filesystem_id = $1, date_folder = $2, state = 'idle'
     WHERE partition_id = $3 AND study_uid = $4 AND filesystem_id IS NULL AND state <> 'deleting'
       AND (SELECT COUNT(*) FROM instance i
            JOIN series se ON se.id = i.series_fk JOIN study st ON st.id = se.study_fk
            WHERE st.partition_id = $3 AND st.study_uid = $4) = $5
       AND (SELECT CAST(COALESCE(SUM(i.file_size), 0) AS BIGINT) FROM instance i
            JOIN series se ON se.id = i.series_fk JOIN study st ON st.id = se.study_fk
            WHERE st.partition_id = $3 AND st.study_uid = $4) = $6";

/// An [`ArchiveEntry`] from an [`ARCHIVE_ENTRY`] row.
pub(crate) fn entry<R: Columns>(
    row: &R,
    partition: PartitionId,
    study_uid: &Uid,
) -> Result<ArchiveEntry, R::Error> {
    Ok(ArchiveEntry {
        partition,
        study_uid: study_uid.clone(),
        path: row.text("path")?,
        date_folder: row.text("date_folder")?,
        size_bytes: row.count("size_bytes")?,
        digest: row.text("digest")?,
        instances: row.count("instances")?,
        instance_bytes: row.count("instance_bytes")?,
        archived_at_ms: row.int("archived_at")?,
    })
}

/// A count as a bound parameter.
pub(crate) fn signed(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
