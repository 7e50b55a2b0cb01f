//! [`IndexStore::remove_instance_row`] on PostgreSQL: one instance row
//! removed and its series, study and patient recounted (crash recovery's,
//! see `services::journal`), with SQLite's semantics. The study is locked
//! in ingest's order first (its patient, then its storage row).
//!
//! [`IndexStore::remove_instance_row`]: crate::db::IndexStore::remove_instance_row

use std::collections::BTreeSet;

use sqlx::{PgConnection, Row};

use super::studies::{lock_study, recount_patient};
use super::{now_ms, PgIndex, TxError};
use crate::db::rows::joined;
use crate::db::{sql, Error, InstanceFile};
use crate::model::PartitionId;

impl PgIndex {
    /// [`IndexStore::remove_instance_row`](crate::db::IndexStore::remove_instance_row).
    pub(super) fn remove_file_row(
        &self,
        partition: PartitionId,
        file: &InstanceFile,
    ) -> Result<bool, Error> {
        self.write("removing an instance row", async |conn| {
            remove_instance_row(conn, partition, file, now_ms()).await
        })
    }
}

/// Removes the row of `file` if it names it exactly; whether it did.
async fn remove_instance_row(
    conn: &mut PgConnection,
    partition: PartitionId,
    file: &InstanceFile,
    now: i64,
) -> Result<bool, TxError> {
    let Some((study, patient, _)) = lock_study(conn, partition, &file.location.study_uid).await?
    else {
        return Ok(false);
    };
    let row = sqlx::query(sql::INSTANCE_ROW_OF_FILE)
        .bind(partition.0)
        .bind(file.sop_instance_uid.as_str())
        .bind(file.location.filesystem.0)
        .bind(file.location.partition_folder.as_str())
        .bind(&file.location.date_folder)
        .bind(file.location.study_uid.as_str())
        .bind(file.series_uid.as_str())
        .bind(i64::try_from(file.file_size).unwrap_or(i64::MAX))
        .bind(&file.digest)
        .fetch_optional(&mut *conn)
        .await?;
    let Some(row) = row else {
        return Ok(false);
    };
    let (instance, series): (i64, i64) = (row.try_get("id")?, row.try_get("series_id")?);
    if row.try_get::<i64, _>("study_id")? != study {
        return Err(TxError::Conflict(
            "a study changed while its rows were locked",
        ));
    }
    sqlx::query(sql::DELETE_INSTANCE)
        .bind(instance)
        .execute(&mut *conn)
        .await?;
    let left: i64 = sqlx::query_scalar(sql::RECOUNT_SERIES)
        .bind(series)
        .fetch_one(&mut *conn)
        .await?;
    if left == 0 {
        sqlx::query(sql::DELETE_SERIES)
            .bind(series)
            .execute(&mut *conn)
            .await?;
    }
    let left: i64 = sqlx::query_scalar(sql::RECOUNT_STUDY)
        .bind(study)
        .bind(now)
        .fetch_one(&mut *conn)
        .await?;
    if left == 0 {
        for statement in [sql::DELETE_STUDY_SERIES, sql::DELETE_STUDY] {
            sqlx::query(statement)
                .bind(study)
                .execute(&mut *conn)
                .await?;
        }
    } else {
        let modalities = distinct(conn, sql::STUDY_MODALITIES, study).await?;
        let classes = distinct(conn, sql::STUDY_SOP_CLASSES, study).await?;
        sqlx::query(sql::SET_STUDY_SUMMARIES)
            .bind(joined(&modalities))
            .bind(joined(&classes))
            .bind(study)
            .execute(&mut *conn)
            .await?;
    }
    recount_patient(conn, patient).await?;
    Ok(true)
}

/// The non-empty values of a one-column statement on study row `study`.
async fn distinct(
    conn: &mut PgConnection,
    statement: &'static str,
    study: i64,
) -> Result<BTreeSet<String>, sqlx::Error> {
    let values: Vec<String> = sqlx::query_scalar(statement)
        .bind(study)
        .fetch_all(&mut *conn)
        .await?;
    Ok(values.into_iter().filter(|v| !v.is_empty()).collect())
}
