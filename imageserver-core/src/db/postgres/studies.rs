//! [`StudyStore`] on PostgreSQL: the index side of study delete, edit and
//! reprocess, with SQLite's semantics (see `db/studies.rs`).
//!
//! Each write method is one transaction ([`PgIndex::write`]: serialization
//! failures, deadlocks and detected conflicts retry the whole transaction).
//! Rows are locked in ingest's order (`db/postgres/ingest.rs`): the study's
//! patient first, then its study storage row (the study's lock); a study
//! that changed patient between the read and the lock is a conflict and
//! retried.

use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Row};

use super::{
    get_u64, location_from_row, now_ms, parse_column, pg_text, stored_instance, PgIndex, TxError,
};
use crate::db::studies::{
    index_text, AttributeChange, AuditEntry, DeletedStudy, DeletingStudy, EditRecord, EditStatus,
    EditableAttribute, FileFacts, ReplaceOutcome, StudyRecord, StudyStore,
};
use crate::db::Error;
use crate::model::{
    DuplicateRecord, InstanceRecord, PartitionId, PatientAttrs, StoredInstance, StudyAttrs, Uid,
};

fn decode(column: &str, message: String) -> sqlx::Error {
    sqlx::Error::ColumnDecode {
        index: column.to_string(),
        source: message.into(),
    }
}

fn study_from_row(partition: PartitionId, r: &PgRow) -> Result<StudyRecord, sqlx::Error> {
    let filesystem: Option<i64> = r.try_get("filesystem_id")?;
    let location = match filesystem {
        Some(_) => Some(location_from_row(r)?),
        None => None,
    };
    let issuer: String = r.try_get("issuer_of_patient_id")?;
    Ok(StudyRecord {
        partition,
        location,
        patient: PatientAttrs {
            patient_id: r.try_get("patient_id")?,
            issuer_of_patient_id: (!issuer.is_empty()).then_some(issuer),
            patient_name: r.try_get("patient_name")?,
            birth_date: r.try_get("birth_date")?,
            sex: r.try_get("sex")?,
        },
        study: StudyAttrs {
            study_uid: parse_column(r, "study_uid", Uid::parse)?,
            study_date: r.try_get("study_date")?,
            study_time: r.try_get("study_time")?,
            accession_number: r.try_get("accession_number")?,
            study_id: r.try_get("study_id")?,
            study_description: r.try_get("study_description")?,
            referring_physician_name: r.try_get("referring_physician_name")?,
            specific_character_set: r.try_get("specific_character_set")?,
        },
        modalities_in_study: r.try_get("modalities_in_study")?,
        num_series: get_u64(r, "num_series")?,
        num_instances: get_u64(r, "num_instances")?,
        size_bytes: get_u64(r, "size_bytes")?,
        patient_num_studies: get_u64(r, "num_studies")?,
        received_at_ms: r.try_get("received_at")?,
        updated_at_ms: r.try_get("updated_at")?,
    })
}

async fn read_study(
    conn: &mut PgConnection,
    partition: PartitionId,
    study_uid: &Uid,
) -> Result<Option<StudyRecord>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT ss.filesystem_id, p.folder, ss.date_folder, st.study_uid,
                pa.patient_id, pa.issuer_of_patient_id, pa.patient_name, pa.birth_date, pa.sex,
                st.study_date, st.study_time, st.accession_number, st.study_id,
                st.study_description, st.referring_physician_name, st.specific_character_set,
                st.modalities_in_study, st.num_series, st.num_instances, st.size_bytes,
                pa.num_studies, ss.created_at AS received_at, st.updated_at
         FROM study st
         JOIN patient pa ON pa.id = st.patient_fk
         JOIN study_storage ss ON ss.id = st.study_storage_id
         JOIN partition p ON p.id = st.partition_id
         WHERE st.partition_id = $1 AND st.study_uid = $2",
    )
    .bind(partition.0)
    .bind(study_uid.as_str())
    .fetch_optional(&mut *conn)
    .await?;
    row.map(|r| study_from_row(partition, &r)).transpose()
}

async fn read_instances(
    conn: &mut PgConnection,
    partition: PartitionId,
    study_uid: &Uid,
) -> Result<Vec<StoredInstance>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT ss.filesystem_id, p.folder, ss.date_folder, st.study_uid,
                se.series_uid, i.sop_instance_uid, i.sop_class_uid,
                i.transfer_syntax_uid, i.file_size, i.digest
         FROM study st
         JOIN study_storage ss ON ss.id = st.study_storage_id
         JOIN partition p ON p.id = st.partition_id
         JOIN series se ON se.study_fk = st.id
         JOIN instance i ON i.series_fk = se.id
         WHERE st.partition_id = $1 AND st.study_uid = $2 AND ss.filesystem_id IS NOT NULL
         ORDER BY se.series_uid, i.instance_number NULLS FIRST, i.sop_instance_uid",
    )
    .bind(partition.0)
    .bind(study_uid.as_str())
    .fetch_all(&mut *conn)
    .await?;
    rows.iter().map(stored_instance).collect()
}

async fn read_duplicates(
    conn: &mut PgConnection,
    partition: PartitionId,
    study_uid: &Uid,
) -> Result<Vec<DuplicateRecord>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT d.filesystem_id, p.folder, d.date_folder, d.study_uid, d.sop_instance_uid,
                d.series_uid, d.variant, d.file_size, d.digest, d.source_ae, d.received_at
         FROM duplicate d JOIN partition p ON p.id = d.partition_id
         WHERE d.partition_id = $1 AND d.study_uid = $2 ORDER BY d.id",
    )
    .bind(partition.0)
    .bind(study_uid.as_str())
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|r| super::duplicate_from_row(r, partition))
        .collect()
}

/// The study's row keys: (study, patient, study storage).
async fn study_keys(
    conn: &mut PgConnection,
    partition: PartitionId,
    study_uid: &Uid,
) -> Result<Option<(i64, i64, i64)>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT id, patient_fk, study_storage_id FROM study
         WHERE partition_id = $1 AND study_uid = $2",
    )
    .bind(partition.0)
    .bind(study_uid.as_str())
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
async fn lock_study(
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
async fn recount_patient(conn: &mut PgConnection, patient: i64) -> Result<(), sqlx::Error> {
    let studies: Option<i64> = sqlx::query_scalar(
        "UPDATE patient SET
             num_studies = (SELECT COUNT(*) FROM study WHERE patient_fk = $1),
             num_series = (SELECT COALESCE(SUM(num_series), 0) FROM study WHERE patient_fk = $1),
             num_instances = (SELECT COALESCE(SUM(num_instances), 0) FROM study
                              WHERE patient_fk = $1)
         WHERE id = $1 RETURNING num_studies",
    )
    .bind(patient)
    .fetch_optional(&mut *conn)
    .await?;
    if studies == Some(0) {
        sqlx::query("DELETE FROM patient WHERE id = $1")
            .bind(patient)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// Deletes a study's instance, series and study rows (not its patient).
/// Returns the number of instance rows removed.
async fn delete_study_tree(conn: &mut PgConnection, study: i64) -> Result<u64, sqlx::Error> {
    let removed = sqlx::query(
        "DELETE FROM instance WHERE series_fk IN (SELECT id FROM series WHERE study_fk = $1)",
    )
    .bind(study)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    sqlx::query("DELETE FROM series WHERE study_fk = $1")
        .bind(study)
        .execute(&mut *conn)
        .await?;
    sqlx::query("DELETE FROM study WHERE id = $1")
        .bind(study)
        .execute(&mut *conn)
        .await?;
    Ok(removed)
}

async fn insert_audit(conn: &mut PgConnection, entry: &AuditEntry) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO audit_log (at, actor, action, partition_id, study_uid, details)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
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
    let rows = sqlx::query(
        "SELECT id, actor, reason, status, requested_at, completed_at FROM study_edit
         WHERE partition_id = $1 AND study_uid = $2 AND (NOT $3 OR status = 'pending')
         ORDER BY id",
    )
    .bind(partition.0)
    .bind(study_uid.as_str())
    .bind(pending_only)
    .fetch_all(&mut *conn)
    .await?;
    let mut edits = Vec::with_capacity(rows.len());
    for r in &rows {
        let status: String = r.try_get("status")?;
        edits.push(EditRecord {
            id: r.try_get("id")?,
            partition,
            study_uid: study_uid.clone(),
            actor: r.try_get("actor")?,
            reason: r.try_get("reason")?,
            status: EditStatus::parse(&status)
                .ok_or_else(|| decode("status", format!("unknown edit status {status:?}")))?,
            requested_at_ms: r.try_get("requested_at")?,
            completed_at_ms: r.try_get("completed_at")?,
            changes: Vec::new(),
        });
    }
    for edit in &mut edits {
        let rows = sqlx::query(
            "SELECT attribute, old_value, new_value FROM study_edit_change WHERE edit_id = $1",
        )
        .bind(edit.id)
        .fetch_all(&mut *conn)
        .await?;
        for r in &rows {
            let keyword: String = r.try_get("attribute")?;
            edit.changes.push(AttributeChange {
                attribute: EditableAttribute::from_keyword(&keyword).ok_or_else(|| {
                    decode("attribute", format!("unknown edited attribute {keyword:?}"))
                })?,
                old_value: r.try_get("old_value")?,
                new_value: r.try_get("new_value")?,
            });
        }
        edit.changes.sort_by_key(|c| {
            EditableAttribute::ALL
                .iter()
                .position(|a| *a == c.attribute)
        });
    }
    Ok(edits)
}

fn study_column(attribute: EditableAttribute) -> Option<&'static str> {
    Some(match attribute {
        EditableAttribute::StudyDate => "study_date",
        EditableAttribute::StudyTime => "study_time",
        EditableAttribute::AccessionNumber => "accession_number",
        EditableAttribute::ReferringPhysicianName => "referring_physician_name",
        EditableAttribute::StudyDescription => "study_description",
        EditableAttribute::StudyId => "study_id",
        _ => return None,
    })
}

fn patient_column(attribute: EditableAttribute) -> Option<&'static str> {
    Some(match attribute {
        EditableAttribute::PatientName => "patient_name",
        EditableAttribute::PatientBirthDate => "birth_date",
        EditableAttribute::PatientSex => "sex",
        _ => return None,
    })
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
) -> Result<Result<(), String>, TxError> {
    let pending: Option<i64> = sqlx::query_scalar(
        "SELECT id FROM study_edit WHERE id = $1 AND status = 'pending' FOR UPDATE",
    )
    .bind(edit.id)
    .fetch_optional(&mut *conn)
    .await?;
    if pending.is_none() {
        return Ok(Err(format!("pending edit {}", edit.id)));
    }
    let Some((study, old_patient, _)) = lock_study(conn, edit.partition, &edit.study_uid).await?
    else {
        return Ok(Err(format!("study {}", edit.study_uid)));
    };
    let change = |attribute| {
        edit.changes
            .iter()
            .find(|c| c.attribute == attribute)
            .map(|c| edited_value(&c.new_value).unwrap_or_default())
    };
    let row = sqlx::query("SELECT patient_id, issuer_of_patient_id FROM patient WHERE id = $1")
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
        sqlx::query(
            "INSERT INTO patient (partition_id, patient_id, issuer_of_patient_id, patient_name,
                                  birth_date, sex)
             SELECT partition_id, $2, $3, patient_name, birth_date, sex FROM patient WHERE id = $1
             ON CONFLICT (partition_id, patient_id, issuer_of_patient_id) DO NOTHING",
        )
        .bind(old_patient)
        .bind(&new_id)
        .bind(&new_issuer)
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
        sqlx::query("UPDATE study SET patient_fk = $2 WHERE id = $1")
            .bind(study)
            .bind(moved_to)
            .execute(&mut *conn)
            .await?;
        moved_to
    };
    for c in &edit.changes {
        let value = edited_value(&c.new_value);
        if let Some(column) = patient_column(c.attribute) {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE patient SET {column} = $2 WHERE id = $1"
            )))
            .bind(patient)
            .bind(value.as_deref())
            .execute(&mut *conn)
            .await?;
        }
        if let Some(column) = study_column(c.attribute) {
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
    sqlx::query(
        "UPDATE study SET updated_at = $2,
             size_bytes = (SELECT COALESCE(SUM(i.file_size), 0)::BIGINT FROM instance i
                           JOIN series se ON se.id = i.series_fk WHERE se.study_fk = $1)
         WHERE id = $1",
    )
    .bind(study)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    if patient != old_patient {
        recount_patient(conn, patient).await?;
        recount_patient(conn, old_patient).await?;
    }
    sqlx::query("UPDATE study_edit SET status = 'completed', completed_at = $2 WHERE id = $1")
        .bind(edit.id)
        .bind(now)
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
            sqlx::query("DELETE FROM duplicate WHERE partition_id = $1 AND study_uid = $2")
                .bind(partition.0)
                .bind(study_uid.as_str())
                .execute(&mut *conn)
                .await?;
            recount_patient(conn, patient).await?;
            sqlx::query("UPDATE study_storage SET state = 'deleting' WHERE id = $1")
                .bind(storage)
                .execute(&mut *conn)
                .await?;
            sqlx::query(
                "UPDATE study_edit SET status = 'abandoned', completed_at = $3
                 WHERE partition_id = $1 AND study_uid = $2 AND status = 'pending'",
            )
            .bind(partition.0)
            .bind(study_uid.as_str())
            .bind(now)
            .execute(&mut *conn)
            .await?;
            let mut entry = audit.clone();
            entry.at_ms = now;
            entry.action = "study.delete".to_string();
            insert_audit(conn, &entry).await?;
            Ok(Some(DeletedStudy {
                location,
                size_bytes: instances.iter().map(|i| i.file_size).sum(),
                num_series: record.num_series,
                instances,
                duplicates,
                since_ms: now,
            }))
        })
    }

    fn deleting_study(
        &self,
        partition: PartitionId,
        study_uid: &Uid,
    ) -> Result<Option<DeletingStudy>, Error> {
        self.read("looking up a study being deleted", async |conn| {
            let row = sqlx::query(
                "SELECT ss.filesystem_id, p.folder, ss.date_folder, ss.study_uid,
                        (SELECT MAX(a.at) FROM audit_log a
                         WHERE a.partition_id = ss.partition_id AND a.study_uid = ss.study_uid
                           AND a.action = 'study.delete') AS since
                 FROM study_storage ss JOIN partition p ON p.id = ss.partition_id
                 WHERE ss.partition_id = $1 AND ss.study_uid = $2 AND ss.state = 'deleting'
                   AND ss.filesystem_id IS NOT NULL",
            )
            .bind(partition.0)
            .bind(study_uid.as_str())
            .fetch_optional(&mut *conn)
            .await?;
            row.map(|r| {
                Ok(DeletingStudy {
                    location: location_from_row(&r)?,
                    since_ms: r.try_get::<Option<i64>, _>("since")?.unwrap_or(0),
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
            let removed = sqlx::query(
                "DELETE FROM study_storage WHERE id = $1
                   AND NOT EXISTS (SELECT 1 FROM study WHERE study_storage_id = $1)
                   AND NOT EXISTS (SELECT 1 FROM work_queue WHERE study_storage_id = $1)",
            )
            .bind(storage)
            .execute(&mut *conn)
            .await?
            .rows_affected();
            if removed == 0 {
                sqlx::query("UPDATE study_storage SET state = 'idle' WHERE id = $1")
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
                sqlx::query(
                    "INSERT INTO study_edit_change (edit_id, attribute, old_value, new_value)
                     VALUES ($1, $2, $3, $4)",
                )
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
        .map_err(|what| Error::NotFound { what })
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

    fn replace_study_rows(
        &self,
        partition: PartitionId,
        study_uid: &Uid,
        records: &[InstanceRecord],
        audit: &AuditEntry,
    ) -> Result<ReplaceOutcome, Error> {
        if let Some(other) = records
            .iter()
            .find(|r| r.partition != partition || r.study.study_uid != *study_uid)
        {
            return Err(Error::Backend {
                operation: "replacing a study's rows",
                source: format!(
                    "instance {} belongs to study {}, not {study_uid}",
                    other.instance.sop_instance_uid, other.study.study_uid
                )
                .into(),
            });
        }
        self.write("replacing a study's rows", async |conn| {
            let mut outcome = ReplaceOutcome::default();
            if let Some((study, patient, _)) = lock_study(conn, partition, study_uid).await? {
                outcome.removed_instances = delete_study_tree(conn, study).await?;
                recount_patient(conn, patient).await?;
            }
            if !records.is_empty() {
                super::ingest::insert_batch(conn, records, now_ms()).await?;
            }
            outcome.inserted_instances = records.len() as u64;
            insert_audit(conn, audit).await?;
            Ok(outcome)
        })
    }

    fn record_audit(&self, entry: &AuditEntry) -> Result<(), Error> {
        self.write("recording an audit entry", async |conn| {
            insert_audit(conn, entry).await?;
            Ok(())
        })
    }

    fn audit_log(&self, partition: PartitionId, study_uid: &Uid) -> Result<Vec<AuditEntry>, Error> {
        self.read("reading the audit log", async |conn| {
            let rows = sqlx::query(
                "SELECT at, actor, action, details FROM audit_log
                 WHERE partition_id = $1 AND study_uid = $2 ORDER BY at, id",
            )
            .bind(partition.0)
            .bind(study_uid.as_str())
            .fetch_all(&mut *conn)
            .await?;
            rows.iter()
                .map(|r| {
                    Ok(AuditEntry {
                        at_ms: r.try_get("at")?,
                        actor: r.try_get("actor")?,
                        action: r.try_get("action")?,
                        partition: Some(partition),
                        study_uid: Some(study_uid.clone()),
                        details: r
                            .try_get::<Option<String>, _>("details")?
                            .unwrap_or_default(),
                    })
                })
                .collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::PgIndex;
    use crate::db::postgres::{create_database, drop_database};
    use crate::db::studies::conformance;

    #[test]
    fn study_store_conformance_on_postgres() {
        let Ok(server) = std::env::var("IMAGESERVER_PG_URL") else {
            if std::env::var("IMAGESERVER_SKIP_PG").as_deref() == Ok("1") {
                eprintln!("note: IMAGESERVER_SKIP_PG=1: PostgreSQL test not run");
                return;
            }
            panic!(
                "IMAGESERVER_PG_URL is not set: run the tests through scripts/test.sh, which \
                 starts PostgreSQL (or set IMAGESERVER_SKIP_PG=1)"
            );
        };
        let name = format!("it_studies_{}", std::process::id());
        let url = create_database(&server, &name).expect("create the test database");
        let result = std::panic::catch_unwind(|| {
            let index = PgIndex::connect(&url).expect("connect");
            conformance::run_all(&index);
        });
        if let Err(e) = drop_database(&server, &name) {
            eprintln!("cannot drop test database {name}: {e}");
        }
        if let Err(panic) = result {
            std::panic::resume_unwind(panic);
        }
    }
}
