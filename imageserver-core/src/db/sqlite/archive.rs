//! [`ArchiveStore`] on SQLite (see `db/archive.rs` for the semantics).

use rusqlite::{params, OptionalExtension};

use super::SqliteIndex;
use crate::db::archive::{self as shared, signed, ArchiveEntry, ArchiveStore, StudyCandidate};
use crate::db::rows::Columns;
use crate::db::Error;
use crate::model::{FilesystemId, PartitionId, Uid};

fn candidates(
    conn: &rusqlite::Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> rusqlite::Result<Vec<StudyCandidate>> {
    let mut stmt = conn.prepare_cached(sql)?;
    let found = stmt.query_map(params, |r| {
        Ok((
            PartitionId(r.get(0)?),
            r.uid("study_uid")?,
            r.count("size_bytes")?,
        ))
    })?;
    found.collect()
}

impl ArchiveStore for SqliteIndex {
    fn archive_root_marker(&self, path: &str, proposed: &str) -> Result<String, Error> {
        self.write("recording an archive root's marker", |tx| {
            tx.prepare_cached(shared::INSERT_ARCHIVE_ROOT)?
                .execute(params![path, proposed])?;
            tx.prepare_cached(shared::ARCHIVE_ROOT_MARKER)?
                .query_row([path], |r| r.get(0))
        })
    }

    fn record_archive(&self, entry: &ArchiveEntry) -> Result<(), Error> {
        self.write("recording a study's pack", |tx| {
            tx.prepare_cached(shared::RECORD_ARCHIVE)?.execute(params![
                entry.partition.0,
                entry.study_uid.as_str(),
                entry.path,
                entry.date_folder,
                signed(entry.size_bytes),
                entry.digest,
                signed(entry.instances),
                signed(entry.instance_bytes),
                entry.archived_at_ms,
            ])
        })
        .map(drop)
    }

    fn archive_entry(
        &self,
        partition: PartitionId,
        study_uid: &Uid,
    ) -> Result<Option<ArchiveEntry>, Error> {
        self.read("reading a study's pack", |conn| {
            conn.prepare_cached(shared::ARCHIVE_ENTRY)?
                .query_row(params![partition.0, study_uid.as_str()], |r| {
                    shared::entry(r, partition, study_uid)
                })
                .optional()
        })
    }

    fn forget_archive(&self, partition: PartitionId, study_uid: &Uid) -> Result<bool, Error> {
        self.write("forgetting a study's pack", |tx| {
            tx.prepare_cached(shared::FORGET_ARCHIVE)?
                .execute(params![partition.0, study_uid.as_str()])
                .map(|n| n > 0)
        })
    }

    fn archive_candidates(
        &self,
        partition: PartitionId,
        quiet_before_ms: i64,
        limit: u64,
    ) -> Result<Vec<StudyCandidate>, Error> {
        self.read("choosing studies to archive", |conn| {
            candidates(
                conn,
                shared::ARCHIVE_CANDIDATES,
                params![partition.0, quiet_before_ms, signed(limit)],
            )
        })
    }

    fn purge_candidates(
        &self,
        filesystem: FilesystemId,
        limit: u64,
    ) -> Result<Vec<StudyCandidate>, Error> {
        self.read("choosing studies to purge", |conn| {
            candidates(
                conn,
                shared::PURGE_CANDIDATES,
                params![filesystem.0, signed(limit)],
            )
        })
    }

    fn online_studies(
        &self,
        after: i64,
        limit: u64,
    ) -> Result<Vec<(i64, PartitionId, Uid)>, Error> {
        self.read("listing online studies", |conn| {
            let mut stmt = conn.prepare_cached(shared::ONLINE_STUDIES)?;
            let found = stmt.query_map(params![after, signed(limit)], |r| {
                Ok((r.get(0)?, PartitionId(r.get(1)?), r.uid("study_uid")?))
            })?;
            found.collect()
        })
    }

    fn switch_to_nearline(
        &self,
        partition: PartitionId,
        study_uid: &Uid,
        from: FilesystemId,
        instances: u64,
        bytes: u64,
    ) -> Result<bool, Error> {
        self.write("making a study nearline", |tx| {
            tx.prepare_cached(shared::SWITCH_TO_NEARLINE)?
                .execute(params![
                    partition.0,
                    study_uid.as_str(),
                    from.0,
                    signed(instances),
                    signed(bytes)
                ])
                .map(|n| n == 1)
        })
    }

    fn switch_from_nearline(
        &self,
        partition: PartitionId,
        study_uid: &Uid,
        to: FilesystemId,
        date_folder: &str,
        instances: u64,
        bytes: u64,
    ) -> Result<bool, Error> {
        self.write("bringing a study online", |tx| {
            tx.prepare_cached(shared::SWITCH_FROM_NEARLINE)?
                .execute(params![
                    to.0,
                    date_folder,
                    partition.0,
                    study_uid.as_str(),
                    signed(instances),
                    signed(bytes)
                ])
                .map(|n| n == 1)
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::db::archive::conformance;
    use crate::db::sqlite::SqliteIndex;

    #[test]
    fn archive_store_conformance_on_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let index = SqliteIndex::open(&dir.path().join("index.db")).unwrap();
        conformance::run_all(&index);
    }
}
