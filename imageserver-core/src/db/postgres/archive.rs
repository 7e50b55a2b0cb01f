//! [`ArchiveStore`] on PostgreSQL (see `db/archive.rs` for the semantics).

use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Row};

use super::PgIndex;
use crate::db::archive::{self as shared, signed, ArchiveEntry, ArchiveStore, StudyCandidate};
use crate::db::rows::Columns;
use crate::db::Error;
use crate::model::{FilesystemId, PartitionId, Uid};

fn candidates(rows: &[PgRow]) -> Result<Vec<StudyCandidate>, sqlx::Error> {
    rows.iter()
        .map(|row| {
            Ok((
                PartitionId(row.try_get("partition_id")?),
                row.uid("study_uid")?,
                row.count("size_bytes")?,
            ))
        })
        .collect()
}

async fn execute(
    conn: &mut PgConnection,
    query: sqlx::query::Query<'_, sqlx::Postgres, sqlx::postgres::PgArguments>,
) -> Result<u64, sqlx::Error> {
    Ok(query.execute(&mut *conn).await?.rows_affected())
}

impl ArchiveStore for PgIndex {
    fn archive_root_marker(&self, path: &str, proposed: &str) -> Result<String, Error> {
        self.write("recording an archive root's marker", async |conn| {
            sqlx::query(shared::INSERT_ARCHIVE_ROOT)
                .bind(path)
                .bind(proposed)
                .execute(&mut *conn)
                .await?;
            let marker: String = sqlx::query_scalar(shared::ARCHIVE_ROOT_MARKER)
                .bind(path)
                .fetch_one(&mut *conn)
                .await?;
            Ok(marker)
        })
    }

    fn record_archive(&self, entry: &ArchiveEntry) -> Result<(), Error> {
        self.write("recording a study's pack", async |conn| {
            sqlx::query(shared::RECORD_ARCHIVE)
                .bind(entry.partition.0)
                .bind(entry.study_uid.as_str())
                .bind(entry.path.as_str())
                .bind(entry.date_folder.as_str())
                .bind(signed(entry.size_bytes))
                .bind(entry.digest.as_str())
                .bind(signed(entry.instances))
                .bind(signed(entry.instance_bytes))
                .bind(entry.archived_at_ms)
                .execute(&mut *conn)
                .await?;
            Ok(())
        })
    }

    fn archive_entry(
        &self,
        partition: PartitionId,
        study_uid: &Uid,
    ) -> Result<Option<ArchiveEntry>, Error> {
        self.read("reading a study's pack", async |conn| {
            let row = sqlx::query(shared::ARCHIVE_ENTRY)
                .bind(partition.0)
                .bind(study_uid.as_str())
                .fetch_optional(&mut *conn)
                .await?;
            row.map(|r| shared::entry(&r, partition, study_uid))
                .transpose()
        })
    }

    fn forget_archive(&self, partition: PartitionId, study_uid: &Uid) -> Result<bool, Error> {
        self.write("forgetting a study's pack", async |conn| {
            let query = sqlx::query(shared::FORGET_ARCHIVE)
                .bind(partition.0)
                .bind(study_uid.as_str());
            Ok(execute(conn, query).await? > 0)
        })
    }

    fn archive_candidates(
        &self,
        partition: PartitionId,
        quiet_before_ms: i64,
        limit: u64,
    ) -> Result<Vec<StudyCandidate>, Error> {
        self.read("choosing studies to archive", async |conn| {
            let rows = sqlx::query(shared::ARCHIVE_CANDIDATES)
                .bind(partition.0)
                .bind(quiet_before_ms)
                .bind(signed(limit))
                .fetch_all(&mut *conn)
                .await?;
            candidates(&rows)
        })
    }

    fn purge_candidates(
        &self,
        filesystem: FilesystemId,
        limit: u64,
    ) -> Result<Vec<StudyCandidate>, Error> {
        self.read("choosing studies to purge", async |conn| {
            let rows = sqlx::query(shared::PURGE_CANDIDATES)
                .bind(filesystem.0)
                .bind(signed(limit))
                .fetch_all(&mut *conn)
                .await?;
            candidates(&rows)
        })
    }

    fn online_studies(
        &self,
        after: i64,
        limit: u64,
    ) -> Result<Vec<(i64, PartitionId, Uid)>, Error> {
        self.read("listing online studies", async |conn| {
            let rows = sqlx::query(shared::ONLINE_STUDIES)
                .bind(after)
                .bind(signed(limit))
                .fetch_all(&mut *conn)
                .await?;
            rows.iter()
                .map(|row| {
                    Ok((
                        row.try_get("id")?,
                        PartitionId(row.try_get("partition_id")?),
                        row.uid("study_uid")?,
                    ))
                })
                .collect()
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
        self.write("making a study nearline", async |conn| {
            let query = sqlx::query(shared::SWITCH_TO_NEARLINE)
                .bind(partition.0)
                .bind(study_uid.as_str())
                .bind(from.0)
                .bind(signed(instances))
                .bind(signed(bytes));
            Ok(execute(conn, query).await? == 1)
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
        self.write("bringing a study online", async |conn| {
            let query = sqlx::query(shared::SWITCH_FROM_NEARLINE)
                .bind(to.0)
                .bind(date_folder)
                .bind(partition.0)
                .bind(study_uid.as_str())
                .bind(signed(instances))
                .bind(signed(bytes));
            Ok(execute(conn, query).await? == 1)
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::db::archive::conformance;
    use crate::db::postgres::tests::TestDb;

    #[test]
    fn archive_store_conformance_on_postgres() {
        let Some(db) = TestDb::new() else { return };
        conformance::run_all(&db.connect());
    }
}
