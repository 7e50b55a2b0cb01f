//! [`IndexStore::remove_instance_row`] on SQLite: one instance row removed
//! and its series, study and patient recounted (crash recovery's, see
//! `services::journal`).
//!
//! [`IndexStore::remove_instance_row`]: crate::db::IndexStore::remove_instance_row

use rusqlite::{params, OptionalExtension, Transaction};

use super::studies::recount_patient;
use crate::db::rows::joined;
use crate::db::{sql, InstanceFile};
use crate::model::PartitionId;

/// Removes the row of `file` if it names it exactly; whether it did.
pub(super) fn remove_instance_row(
    tx: &Transaction<'_>,
    partition: PartitionId,
    file: &InstanceFile,
    now: i64,
) -> rusqlite::Result<bool> {
    let found: Option<(i64, i64, i64)> = tx
        .prepare_cached(sql::INSTANCE_ROW_OF_FILE)?
        .query_row(
            params![
                partition.0,
                file.sop_instance_uid.as_str(),
                file.location.filesystem.0,
                file.location.partition_folder.as_str(),
                file.location.date_folder,
                file.location.study_uid.as_str(),
                file.series_uid.as_str(),
                i64::try_from(file.file_size).unwrap_or(i64::MAX),
                file.digest,
            ],
            |r| Ok((r.get("id")?, r.get("series_id")?, r.get("study_id")?)),
        )
        .optional()?;
    let Some((instance, series, study)) = found else {
        return Ok(false);
    };
    let patient: i64 = tx
        .prepare_cached("SELECT patient_fk FROM study WHERE id = ?1")?
        .query_row([study], |r| r.get(0))?;
    tx.prepare_cached(sql::DELETE_INSTANCE)?
        .execute([instance])?;
    let left: i64 = tx
        .prepare_cached(sql::RECOUNT_SERIES)?
        .query_row([series], |r| r.get(0))?;
    if left == 0 {
        tx.prepare_cached(sql::DELETE_SERIES)?.execute([series])?;
    }
    let left: i64 = tx
        .prepare_cached(sql::RECOUNT_STUDY)?
        .query_row(params![study, now], |r| r.get(0))?;
    if left == 0 {
        for statement in [sql::DELETE_STUDY_SERIES, sql::DELETE_STUDY] {
            tx.prepare_cached(statement)?.execute([study])?;
        }
    } else {
        let modalities = super::ingest::distinct(tx, sql::STUDY_MODALITIES, study)?;
        let classes = super::ingest::distinct(tx, sql::STUDY_SOP_CLASSES, study)?;
        tx.prepare_cached(sql::SET_STUDY_SUMMARIES)?
            .execute(params![joined(&modalities), joined(&classes), study])?;
    }
    recount_patient(tx, patient)?;
    Ok(true)
}
