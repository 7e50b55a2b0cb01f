//! [`StudyStore`] on PostgreSQL: the index side of study delete, edit and
//! reprocess, with SQLite's semantics (see `db/studies.rs`).
//!
//! Each write method is one transaction ([`PgIndex::write`]: serialization
//! failures, deadlocks and detected conflicts retry the whole transaction).
//! Rows are locked in ingest's order (`db/postgres/ingest.rs`): the study's
//! patient first, then its study storage row (the study's lock); a study
//! that changed patient between the read and the lock is a conflict and
//! retried.

use sqlx::{PgConnection, Row};

use super::{now_ms, pg_text, PgIndex, TxError};
use crate::db::rows::{self, Columns, EditGone};
use crate::db::studies::{
    index_text, AttributeChange, AuditEntry, AuditFilter, DeletedStudy, DeletingStudy, EditRecord,
    EditableAttribute, FileFacts, RecodedFile, RecodedSwitch, ReplaceOutcome, RowFence,
    StudyRecord, StudyStore, SwitchFailed,
};
use crate::db::{sql, Error};
use crate::model::{
    DuplicateRecord, InstanceRecord, PartitionId, ReconcileEntry, StoredInstance, Uid,
};

fn decode(column: &str, message: String) -> sqlx::Error {
    sqlx::Error::ColumnDecode {
        index: column.to_string(),
        source: message.into(),
    }
}

/// `statement` with its study bound: `$1` partition, `$2` study UID.
fn of_study<'q>(
    statement: &'static str,
    partition: PartitionId,
    study_uid: &'q Uid,
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    sqlx::query(statement)
        .bind(partition.0)
        .bind(study_uid.as_str())
}

async fn read_study(
    conn: &mut PgConnection,
    partition: PartitionId,
    study_uid: &Uid,
) -> Result<Option<StudyRecord>, sqlx::Error> {
    let row = of_study(sql::STUDY, partition, study_uid)
        .fetch_optional(&mut *conn)
        .await?;
    row.map(|r| rows::study(&r, partition)).transpose()
}

async fn read_instances(
    conn: &mut PgConnection,
    partition: PartitionId,
    study_uid: &Uid,
) -> Result<Vec<StoredInstance>, sqlx::Error> {
    let found = of_study(sql::STUDY_INSTANCES, partition, study_uid)
        .fetch_all(&mut *conn)
        .await?;
    found.iter().map(rows::stored_instance).collect()
}

async fn read_duplicates(
    conn: &mut PgConnection,
    partition: PartitionId,
    study_uid: &Uid,
) -> Result<Vec<DuplicateRecord>, sqlx::Error> {
    let found = of_study(sql::STUDY_DUPLICATES, partition, study_uid)
        .fetch_all(&mut *conn)
        .await?;
    found
        .iter()
        .map(|r| rows::duplicate(r, partition))
        .collect()
}

/// The study's row keys: (study, patient, study storage).
async fn study_keys(
    conn: &mut PgConnection,
    partition: PartitionId,
    study_uid: &Uid,
) -> Result<Option<(i64, i64, i64)>, sqlx::Error> {
    let row = of_study(sql::STUDY_KEYS, partition, study_uid)
        .fetch_optional(&mut *conn)
        .await?;
    row.map(|r| {
        Ok((
            r.try_get("id")?,
            r.try_get("patient_fk")?,
            r.try_get("study_storage_id")?,
        ))
    })
    .transpose()
}

/// Locks the study's patient, then its storage row (ingest's order), and
/// returns its keys; a study that changed meanwhile is a conflict.
pub(super) async fn lock_study(
    conn: &mut PgConnection,
    partition: PartitionId,
    study_uid: &Uid,
) -> Result<Option<(i64, i64, i64)>, TxError> {
    let Some(keys) = study_keys(conn, partition, study_uid).await? else {
        return Ok(None);
    };
    sqlx::query("SELECT id FROM patient WHERE id = $1 FOR UPDATE")
        .bind(keys.1)
        .fetch_optional(&mut *conn)
        .await?;
    sqlx::query("SELECT id FROM study_storage WHERE id = $1 FOR UPDATE")
        .bind(keys.2)
        .fetch_optional(&mut *conn)
        .await?;
    if study_keys(conn, partition, study_uid).await? != Some(keys) {
        return Err(TxError::Conflict(
            "a study changed while its rows were locked",
        ));
    }
    Ok(Some(keys))
}

/// Recounts a patient from its studies' counters; deletes it when it has
/// no study left.
pub(super) async fn recount_patient(
    conn: &mut PgConnection,
    patient: i64,
) -> Result<(), sqlx::Error> {
    let studies: Option<i64> = sqlx::query_scalar(sql::RECOUNT_PATIENT)
        .bind(patient)
        .fetch_optional(&mut *conn)
        .await?;
    if studies == Some(0) {
        sqlx::query(sql::DELETE_PATIENT)
            .bind(patient)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// Deletes a study's instance, series and study rows (not its patient).
/// Returns the number of instance rows removed.
async fn delete_study_tree(conn: &mut PgConnection, study: i64) -> Result<u64, sqlx::Error> {
    let removed = sqlx::query(sql::DELETE_STUDY_INSTANCES)
        .bind(study)
        .execute(&mut *conn)
        .await?
        .rows_affected();
    for statement in [sql::DELETE_STUDY_SERIES, sql::DELETE_STUDY] {
        sqlx::query(statement)
            .bind(study)
            .execute(&mut *conn)
            .await?;
    }
    Ok(removed)
}

async fn insert_audit(conn: &mut PgConnection, entry: &AuditEntry) -> Result<(), sqlx::Error> {
    sqlx::query(sql::INSERT_AUDIT)
        .bind(entry.at_ms)
        .bind(pg_text(&entry.actor).as_ref())
        .bind(pg_text(&entry.action).as_ref())
        .bind(entry.partition.map(|p| p.0))
        .bind(entry.study_uid.as_ref().map(Uid::as_str))
        .bind(pg_text(&entry.details).as_ref())
        .execute(&mut *conn)
        .await?;
    Ok(())
}

async fn read_edits(
    conn: &mut PgConnection,
    partition: PartitionId,
    study_uid: &Uid,
    pending_only: bool,
) -> Result<Vec<EditRecord>, sqlx::Error> {
    let found = of_study(sql::EDITS, partition, study_uid)
        .bind(pending_only)
        .fetch_all(&mut *conn)
        .await?;
    let mut edits = found
        .iter()
        .map(|r| rows::edit(r, partition, study_uid))
        .collect::<Result<Vec<_>, _>>()?;
    for edit in &mut edits {
        let found = sqlx::query(sql::EDIT_CHANGES)
            .bind(edit.id)
            .fetch_all(&mut *conn)
            .await?;
        edit.changes = found.iter().map(rows::change).collect::<Result<_, _>>()?;
        rows::sort_changes(&mut edit.changes);
    }
    Ok(edits)
}

/// The index form of an edited value: trimmed, NULs dropped, empty = NULL.
fn edited_value(value: &str) -> Option<String> {
    index_text(value).map(|v| pg_text(v).into_owned())
}

async fn apply_edit(
    conn: &mut PgConnection,
    edit: &EditRecord,
    files: &[FileFacts],
    audit: &AuditEntry,
    now: i64,
) -> Result<Result<(), EditGone>, TxError> {
    let pending: Option<i64> = sqlx::query_scalar(
        "SELECT id FROM study_edit WHERE id = $1 AND status = 'pending' FOR UPDATE",
    )
    .bind(edit.id)
    .fetch_optional(&mut *conn)
    .await?;
    if pending.is_none() {
        return Ok(Err(EditGone::Edit(edit.id)));
    }
    let Some((study, old_patient, _)) = lock_study(conn, edit.partition, &edit.study_uid).await?
    else {
        return Ok(Err(EditGone::Study(edit.study_uid.clone())));
    };
    let change = |attribute| {
        edit.changes
            .iter()
            .find(|c| c.attribute == attribute)
            .map(|c| edited_value(&c.new_value).unwrap_or_default())
    };
    let row = sqlx::query(sql::PATIENT_KEY)
        .bind(old_patient)
        .fetch_one(&mut *conn)
        .await?;
    let patient_id: String = row.try_get("patient_id")?;
    let issuer: String = row.try_get("issuer_of_patient_id")?;
    let new_id = change(EditableAttribute::PatientId).unwrap_or(patient_id.clone());
    let new_issuer = change(EditableAttribute::IssuerOfPatientId).unwrap_or(issuer.clone());
    let patient = if (&new_id, &new_issuer) == (&patient_id, &issuer) {
        old_patient
    } else {
        sqlx::query(sql::COPY_PATIENT)
            .bind(&new_id)
            .bind(&new_issuer)
            .bind(old_patient)
            .execute(&mut *conn)
            .await?;
        let moved_to: i64 = sqlx::query_scalar(
            "SELECT id FROM patient WHERE partition_id = $1 AND patient_id = $2
               AND issuer_of_patient_id = $3 FOR UPDATE",
        )
        .bind(edit.partition.0)
        .bind(&new_id)
        .bind(&new_issuer)
        .fetch_one(&mut *conn)
        .await?;
        sqlx::query(sql::MOVE_STUDY)
            .bind(moved_to)
            .bind(study)
            .execute(&mut *conn)
            .await?;
        moved_to
    };
    for c in &edit.changes {
        let value = edited_value(&c.new_value);
        if let Some(column) = sql::patient_column(c.attribute) {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE patient SET {column} = $2 WHERE id = $1"
            )))
            .bind(patient)
            .bind(value.as_deref())
            .execute(&mut *conn)
            .await?;
        }
        if let Some(column) = sql::study_column(c.attribute) {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE study SET {column} = $2 WHERE id = $1"
            )))
            .bind(study)
            .bind(value.as_deref())
            .execute(&mut *conn)
            .await?;
        }
    }
    if !files.is_empty() {
        let mut uids = Vec::with_capacity(files.len());
        let mut sizes = Vec::with_capacity(files.len());
        let mut digests = Vec::with_capacity(files.len());
        for file in files {
            uids.push(file.sop_instance_uid.as_str().to_string());
            sizes.push(i64::try_from(file.file_size).map_err(|_| {
                TxError::Sql(decode(
                    "file_size",
                    format!("file size {} out of range", file.file_size),
                ))
            })?);
            digests.push(pg_text(&file.digest).into_owned());
        }
        sqlx::query(
            "UPDATE instance i SET file_size = f.size, digest = f.digest
             FROM UNNEST($2::TEXT[], $3::BIGINT[], $4::TEXT[]) AS f(uid, size, digest)
             WHERE i.partition_id = $1 AND i.sop_instance_uid = f.uid
               AND i.series_fk IN (SELECT id FROM series WHERE study_fk = $5)",
        )
        .bind(edit.partition.0)
        .bind(&uids)
        .bind(&sizes)
        .bind(&digests)
        .bind(study)
        .execute(&mut *conn)
        .await?;
    }
    sqlx::query(sql::RESIZE_STUDY)
        .bind(now)
        .bind(study)
        .execute(&mut *conn)
        .await?;
    if patient != old_patient {
        recount_patient(conn, patient).await?;
        recount_patient(conn, old_patient).await?;
    }
    sqlx::query(sql::COMPLETE_EDIT)
        .bind(now)
        .bind(edit.id)
        .execute(&mut *conn)
        .await?;
    insert_audit(conn, audit).await?;
    Ok(Ok(()))
}

impl StudyStore for PgIndex {
    fn study(&self, partition: PartitionId, study_uid: &Uid) -> Result<Option<StudyRecord>, Error> {
        self.read("looking up a study", async |conn| {
            read_study(conn, partition, study_uid).await
        })
    }

    fn study_instances(
        &self,
        partition: PartitionId,
        study_uid: &Uid,
    ) -> Result<Vec<StoredInstance>, Error> {
        self.read("listing a study's instances", async |conn| {
            read_instances(conn, partition, study_uid).await
        })
    }

    fn delete_study_rows(
        &self,
        partition: PartitionId,
        study_uid: &Uid,
        audit: &AuditEntry,
    ) -> Result<Option<DeletedStudy>, Error> {
        self.write("deleting a study's rows", async |conn| {
            let now = now_ms();
            let Some((study, patient, storage)) = lock_study(conn, partition, study_uid).await?
            else {
                return Ok(None);
            };
            let record = read_study(conn, partition, study_uid)
                .await?
                .ok_or(TxError::Conflict("a study vanished while locked"))?;
            let Some(location) = record.location.clone() else {
                return Err(TxError::Sql(decode(
                    "filesystem_id",
                    format!("study {study_uid} has no online copy"),
                )));
            };
            let instances = read_instances(conn, partition, study_uid).await?;
            let duplicates = read_duplicates(conn, partition, study_uid).await?;
            delete_study_tree(conn, study).await?;
            of_study(sql::DELETE_STUDY_DUPLICATES, partition, study_uid)
                .execute(&mut *conn)
                .await?;
            of_study(sql::DELETE_STUDY_RECONCILE, partition, study_uid)
                .execute(&mut *conn)
                .await?;
            recount_patient(conn, patient).await?;
            sqlx::query(sql::MARK_DELETING)
                .bind(storage)
                .execute(&mut *conn)
                .await?;
            sqlx::query(sql::ABANDON_EDIT)
                .bind(now)
                .bind(partition.0)
                .bind(study_uid.as_str())
                .execute(&mut *conn)
                .await?;
            insert_audit(conn, &rows::delete_audit(audit, now)).await?;
            Ok(Some(rows::deleted_study(
                location,
                record.num_series,
                instances,
                duplicates,
                now,
            )))
        })
    }

    fn deleting_study(
        &self,
        partition: PartitionId,
        study_uid: &Uid,
    ) -> Result<Option<DeletingStudy>, Error> {
        self.read("looking up a study being deleted", async |conn| {
            let row = of_study(sql::DELETING_STUDY, partition, study_uid)
                .fetch_optional(&mut *conn)
                .await?;
            row.map(|r| {
                Ok(DeletingStudy {
                    location: rows::location(&r)?,
                    since_ms: r.opt_int("since")?.unwrap_or(0),
                })
            })
            .transpose()
        })
    }

    fn finish_study_delete(&self, partition: PartitionId, study_uid: &Uid) -> Result<bool, Error> {
        self.write("finishing a study deletion", async |conn| {
            let storage: Option<i64> = sqlx::query_scalar(
                "SELECT id FROM study_storage
                 WHERE partition_id = $1 AND study_uid = $2 AND state = 'deleting' FOR UPDATE",
            )
            .bind(partition.0)
            .bind(study_uid.as_str())
            .fetch_optional(&mut *conn)
            .await?;
            let Some(storage) = storage else {
                return Ok(false);
            };
            let removed = sqlx::query(sql::REMOVE_TOMBSTONE)
                .bind(storage)
                .execute(&mut *conn)
                .await?
                .rows_affected();
            if removed == 0 {
                sqlx::query(sql::REVIVE_TOMBSTONE)
                    .bind(storage)
                    .execute(&mut *conn)
                    .await?;
            }
            Ok(true)
        })
    }

    fn begin_edit(
        &self,
        partition: PartitionId,
        study_uid: &Uid,
        changes: &[AttributeChange],
        actor: &str,
        reason: &str,
    ) -> Result<EditRecord, Error> {
        let result = self.write("recording a study edit", async |conn| {
            if let Some(pending) = read_edits(conn, partition, study_uid, true).await?.pop() {
                return Ok(Some(pending));
            }
            if study_keys(conn, partition, study_uid).await?.is_none() {
                return Ok(None);
            }
            // A concurrent request for the same study loses on the unique
            // pending index and is retried: then it finds this one.
            let id: Option<i64> = sqlx::query_scalar(
                "INSERT INTO study_edit (partition_id, study_uid, actor, reason, status,
                                         requested_at)
                 VALUES ($1, $2, $3, $4, 'pending', $5)
                 ON CONFLICT (partition_id, study_uid) WHERE status = 'pending' DO NOTHING
                 RETURNING id",
            )
            .bind(partition.0)
            .bind(study_uid.as_str())
            .bind(pg_text(actor).as_ref())
            .bind(pg_text(reason).as_ref())
            .bind(now_ms())
            .fetch_optional(&mut *conn)
            .await?;
            let Some(id) = id else {
                return Err(TxError::Conflict("another edit of the study was recorded"));
            };
            for change in changes {
                sqlx::query(sql::INSERT_EDIT_CHANGE)
                    .bind(id)
                    .bind(change.attribute.keyword())
                    .bind(change.old_value.as_deref().map(pg_text).as_deref())
                    .bind(pg_text(&change.new_value).as_ref())
                    .execute(&mut *conn)
                    .await?;
            }
            Ok(read_edits(conn, partition, study_uid, true).await?.pop())
        })?;
        result.ok_or_else(|| Error::NotFound {
            what: format!("study {study_uid}"),
        })
    }

    fn pending_edit(
        &self,
        partition: PartitionId,
        study_uid: &Uid,
    ) -> Result<Option<EditRecord>, Error> {
        self.read("looking up a pending study edit", async |conn| {
            Ok(read_edits(conn, partition, study_uid, true).await?.pop())
        })
    }

    fn complete_edit(
        &self,
        edit: &EditRecord,
        files: &[FileFacts],
        audit: &AuditEntry,
    ) -> Result<(), Error> {
        self.write("completing a study edit", async |conn| {
            apply_edit(conn, edit, files, audit, now_ms()).await
        })?
        .map_err(Error::from)
    }

    fn edit_history(
        &self,
        partition: PartitionId,
        study_uid: &Uid,
    ) -> Result<Vec<EditRecord>, Error> {
        self.read("listing study edits", async |conn| {
            read_edits(conn, partition, study_uid, false).await
        })
    }

    fn study_row_fence(&self, partition: PartitionId, study_uid: &Uid) -> Result<RowFence, Error> {
        self.read("reading a study's row fence", async |conn| {
            let newest: i64 = sqlx::query_scalar(sql::STUDY_ROW_FENCE_BY_UID)
                .bind(partition.0)
                .bind(study_uid.as_str())
                .fetch_one(&mut *conn)
                .await?;
            Ok(RowFence(newest))
        })
    }

    fn replace_study_rows(
        &self,
        partition: PartitionId,
        study_uid: &Uid,
        records: &[InstanceRecord],
        fence: RowFence,
        audit: &AuditEntry,
    ) -> Result<Option<ReplaceOutcome>, Error> {
        rows::check_replacement(partition, study_uid, records)?;
        self.write("replacing a study's rows", async |conn| {
            let mut outcome = ReplaceOutcome::default();
            // The study's storage row is locked, as ingest's commit locks
            // it: no insert into the study runs between the fence check
            // (a statement after the lock, so it sees every committed row)
            // and the replacement.
            if let Some((study, patient, _)) = lock_study(conn, partition, study_uid).await? {
                let newest: i64 = sqlx::query_scalar(sql::STUDY_ROW_FENCE)
                    .bind(study)
                    .fetch_one(&mut *conn)
                    .await?;
                if newest > fence.0 {
                    return Ok(None);
                }
                outcome.removed_instances = delete_study_tree(conn, study).await?;
                recount_patient(conn, patient).await?;
            }
            if !records.is_empty() {
                super::ingest::insert_batch(conn, records, &[], now_ms(), false).await?;
            }
            outcome.inserted_instances = records.len() as u64;
            insert_audit(conn, audit).await?;
            Ok(Some(outcome))
        })
    }

    fn reconcile_entries(&self, partition: PartitionId) -> Result<Vec<ReconcileEntry>, Error> {
        self.read("listing the reconcile queue", async |conn| {
            let found = sqlx::query(sql::RECONCILE_ENTRIES)
                .bind(partition.0)
                .fetch_all(&mut *conn)
                .await?;
            found
                .iter()
                .map(|r| rows::reconcile_entry(r, partition))
                .collect()
        })
    }

    fn reconcile_entry(
        &self,
        partition: PartitionId,
        id: i64,
    ) -> Result<Option<ReconcileEntry>, Error> {
        self.read("reading a reconcile entry", async |conn| {
            let found = sqlx::query(sql::RECONCILE_ENTRY)
                .bind(partition.0)
                .bind(id)
                .fetch_optional(&mut *conn)
                .await?;
            found
                .as_ref()
                .map(|r| rows::reconcile_entry(r, partition))
                .transpose()
        })
    }

    fn resolve_reconcile(
        &self,
        partition: PartitionId,
        id: i64,
        audit: &AuditEntry,
    ) -> Result<bool, Error> {
        self.write("resolving a reconcile entry", async |conn| {
            let removed = sqlx::query(sql::DELETE_RECONCILE_ENTRY)
                .bind(partition.0)
                .bind(id)
                .execute(&mut *conn)
                .await?
                .rows_affected();
            if removed > 0 {
                insert_audit(conn, audit).await?;
            }
            Ok(removed > 0)
        })
    }

    fn switch_study_location(
        &self,
        partition: PartitionId,
        study_uid: &Uid,
        from: crate::model::FilesystemId,
        to: crate::model::FilesystemId,
        instances: u64,
        bytes: u64,
    ) -> Result<bool, Error> {
        let instances = i64::try_from(instances).unwrap_or(i64::MAX);
        let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
        let moved = self.write("switching a study's location", async |conn| {
            let done = sqlx::query(sql::SWITCH_STUDY_LOCATION)
                .bind(to.0)
                .bind(partition.0)
                .bind(study_uid.as_str())
                .bind(from.0)
                .bind(instances)
                .bind(bytes)
                .execute(&mut *conn)
                .await?;
            Ok(done.rows_affected())
        })?;
        Ok(moved == 1)
    }

    fn record_recoded_files(
        &self,
        partition: PartitionId,
        study_uid: &Uid,
        files: &[RecodedFile],
        switch: &mut dyn RecodedSwitch,
    ) -> Result<u64, Error> {
        let failed = |e: SwitchFailed| TxError::Sql(sqlx::Error::Io(std::io::Error::other(e)));
        self.write("recording recoded files", async |conn| {
            // Ingest's lock order: patient, then the study's storage row;
            // the UPDATE then holds the instance row: a replacement's commit
            // waits for this transaction (or committed before, and the row
            // no longer holds the old digest).
            let Some((study, _, _)) = lock_study(conn, partition, study_uid).await? else {
                return Ok(0);
            };
            let mut changed = 0u64;
            for file in files {
                let size = i64::try_from(file.file_size).map_err(|_| {
                    TxError::Sql(decode(
                        "file_size",
                        format!("file size {} out of range", file.file_size),
                    ))
                })?;
                let updated = sqlx::query(sql::RECORD_RECODED)
                    .bind(pg_text(&file.transfer_syntax_uid).into_owned())
                    .bind(size)
                    .bind(pg_text(&file.digest).into_owned())
                    .bind(partition.0)
                    .bind(file.sop_instance_uid.as_str())
                    .bind(study)
                    .bind(pg_text(&file.old_digest).into_owned())
                    .execute(&mut *conn)
                    .await?
                    .rows_affected();
                if updated > 0 {
                    switch.put_in_place(file).map_err(failed)?;
                }
                changed += updated;
            }
            sqlx::query(sql::RESIZE_STUDY)
                .bind(now_ms())
                .bind(study)
                .execute(&mut *conn)
                .await?;
            switch.make_durable().map_err(failed)?;
            Ok(changed)
        })
    }

    fn migration_candidates(
        &self,
        filesystem: crate::model::FilesystemId,
        limit: u64,
    ) -> Result<crate::db::studies::MigrationCandidates, Error> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read("choosing studies to migrate", async |conn| {
            let queued: i64 = sqlx::query_scalar(sql::MIGRATION_QUEUED_BYTES)
                .bind(filesystem.0)
                .fetch_one(&mut *conn)
                .await?;
            let rows = sqlx::query(sql::MIGRATION_CANDIDATES)
                .bind(filesystem.0)
                .bind(limit)
                .fetch_all(&mut *conn)
                .await?;
            let mut found = Vec::with_capacity(rows.len());
            for row in &rows {
                found.push((
                    PartitionId(row.try_get("partition_id")?),
                    row.uid("study_uid")?,
                    row.count("size_bytes")?,
                ));
            }
            Ok((queued.max(0) as u64, found))
        })
    }

    fn touch_study(
        &self,
        partition: PartitionId,
        study_uid: &Uid,
        now_ms: i64,
        coarseness_ms: i64,
    ) -> Result<(), Error> {
        self.write("recording a study access", async |conn| {
            sqlx::query(sql::TOUCH_STUDY)
                .bind(now_ms)
                .bind(partition.0)
                .bind(study_uid.as_str())
                .bind(now_ms - coarseness_ms)
                .execute(&mut *conn)
                .await?;
            Ok(())
        })
    }

    fn record_audit(&self, entry: &AuditEntry) -> Result<(), Error> {
        self.write("recording an audit entry", async |conn| {
            insert_audit(conn, entry).await?;
            Ok(())
        })
    }

    fn audit_entries(&self, filter: &AuditFilter) -> Result<Vec<AuditEntry>, Error> {
        self.read("listing the audit log", async |conn| {
            let found = sqlx::query(sql::AUDIT_ENTRIES)
                .bind(filter.since_ms.unwrap_or(i64::MIN))
                .bind(filter.action.as_deref().unwrap_or(""))
                .bind(filter.study_uid.as_ref().map_or("", Uid::as_str))
                .bind(i64::try_from(filter.limit).unwrap_or(i64::MAX))
                .fetch_all(&mut *conn)
                .await?;
            found.iter().map(rows::audit_entry).collect()
        })
    }

    fn audit_log(&self, partition: PartitionId, study_uid: &Uid) -> Result<Vec<AuditEntry>, Error> {
        self.read("reading the audit log", async |conn| {
            let found = of_study(sql::AUDIT_LOG, partition, study_uid)
                .fetch_all(&mut *conn)
                .await?;
            found
                .iter()
                .map(|r| rows::audit(r, partition, study_uid))
                .collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::db::postgres::tests::TestDb;
    use crate::db::studies::conformance;

    #[test]
    fn study_store_conformance_on_postgres() {
        let Some(db) = TestDb::new() else { return };
        conformance::run_all(&db.connect());
    }
}
