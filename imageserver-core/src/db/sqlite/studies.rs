//! [`StudyStore`] on SQLite: the index side of study delete, edit and
//! reprocess. Each write method is one `BEGIN IMMEDIATE` transaction on the
//! writer connection (see `db/studies.rs` for the semantics).

use rusqlite::{params, Connection, OptionalExtension, Row, Transaction};

use super::{get_u64, location_from_row, now_ms, parse_column, SqliteIndex};
use crate::db::studies::{
    index_text, AttributeChange, AuditEntry, DeletedStudy, DeletingStudy, EditRecord, EditStatus,
    EditableAttribute, FileFacts, ReplaceOutcome, StudyRecord, StudyStore,
};
use crate::db::Error;
use crate::model::{
    DuplicateRecord, InstanceRecord, PartitionId, PatientAttrs, StoredInstance, StudyAttrs, Uid,
};

/// Columns of a study read (see [`study_from_row`]).
const STUDY_COLUMNS: &str = "ss.filesystem_id, p.folder, ss.date_folder, st.study_uid,
     pa.patient_id, pa.issuer_of_patient_id, pa.patient_name, pa.birth_date, pa.sex,
     st.study_date, st.study_time, st.accession_number, st.study_id, st.study_description,
     st.referring_physician_name, st.specific_character_set, st.modalities_in_study,
     st.num_series, st.num_instances, st.size_bytes, pa.num_studies, ss.created_at,
     st.updated_at";

fn study_from_row(partition: PartitionId, r: &Row<'_>) -> rusqlite::Result<StudyRecord> {
    let filesystem: Option<i64> = r.get(0)?;
    let location = match filesystem {
        Some(_) => Some(location_from_row(r, 0)?),
        None => None,
    };
    let issuer: String = r.get(5)?;
    Ok(StudyRecord {
        partition,
        location,
        patient: PatientAttrs {
            patient_id: r.get(4)?,
            issuer_of_patient_id: (!issuer.is_empty()).then_some(issuer),
            patient_name: r.get(6)?,
            birth_date: r.get(7)?,
            sex: r.get(8)?,
        },
        study: StudyAttrs {
            study_uid: parse_column(r, 3, Uid::parse)?,
            study_date: r.get(9)?,
            study_time: r.get(10)?,
            accession_number: r.get(11)?,
            study_id: r.get(12)?,
            study_description: r.get(13)?,
            referring_physician_name: r.get(14)?,
            specific_character_set: r.get(15)?,
        },
        modalities_in_study: r.get(16)?,
        num_series: get_u64(r, 17)?,
        num_instances: get_u64(r, 18)?,
        size_bytes: get_u64(r, 19)?,
        patient_num_studies: get_u64(r, 20)?,
        received_at_ms: r.get(21)?,
        updated_at_ms: r.get(22)?,
    })
}

fn read_study(
    conn: &Connection,
    partition: PartitionId,
    study_uid: &Uid,
) -> rusqlite::Result<Option<StudyRecord>> {
    conn.prepare_cached(&format!(
        "SELECT {STUDY_COLUMNS}
         FROM study st
         JOIN patient pa ON pa.id = st.patient_fk
         JOIN study_storage ss ON ss.id = st.study_storage_id
         JOIN partition p ON p.id = st.partition_id
         WHERE st.partition_id = ?1 AND st.study_uid = ?2"
    ))?
    .query_row(params![partition.0, study_uid.as_str()], |r| {
        study_from_row(partition, r)
    })
    .optional()
}

fn read_instances(
    conn: &Connection,
    partition: PartitionId,
    study_uid: &Uid,
) -> rusqlite::Result<Vec<StoredInstance>> {
    let mut stmt = conn.prepare_cached(
        "SELECT ss.filesystem_id, p.folder, ss.date_folder, st.study_uid,
                se.series_uid, i.sop_instance_uid, i.sop_class_uid,
                i.transfer_syntax_uid, i.file_size, i.digest
         FROM study st
         JOIN study_storage ss ON ss.id = st.study_storage_id
         JOIN partition p ON p.id = st.partition_id
         JOIN series se ON se.study_fk = st.id
         JOIN instance i ON i.series_fk = se.id
         WHERE st.partition_id = ?1 AND st.study_uid = ?2 AND ss.filesystem_id IS NOT NULL
         ORDER BY se.series_uid, i.instance_number, i.sop_instance_uid",
    )?;
    let rows = stmt.query_map(params![partition.0, study_uid.as_str()], |r| {
        Ok(StoredInstance {
            location: location_from_row(r, 0)?,
            series_uid: parse_column(r, 4, Uid::parse)?,
            sop_instance_uid: parse_column(r, 5, Uid::parse)?,
            sop_class_uid: parse_column(r, 6, Uid::parse)?,
            transfer_syntax_uid: parse_column(r, 7, Uid::parse)?,
            file_size: get_u64(r, 8)?,
            digest: r.get(9)?,
        })
    })?;
    rows.collect()
}

fn read_duplicates(
    conn: &Connection,
    partition: PartitionId,
    study_uid: &Uid,
) -> rusqlite::Result<Vec<DuplicateRecord>> {
    let mut stmt = conn.prepare_cached(
        "SELECT d.filesystem_id, p.folder, d.date_folder, d.study_uid, d.sop_instance_uid,
                d.series_uid, d.variant, d.file_size, d.digest, d.source_ae, d.received_at
         FROM duplicate d JOIN partition p ON p.id = d.partition_id
         WHERE d.partition_id = ?1 AND d.study_uid = ?2 ORDER BY d.id",
    )?;
    let rows = stmt.query_map(params![partition.0, study_uid.as_str()], |r| {
        super::duplicate_from_row(r, partition)
    })?;
    rows.collect()
}

/// Recounts a patient from its studies' counters; deletes it when it has
/// no study left.
fn recount_patient(tx: &Transaction<'_>, patient: i64) -> rusqlite::Result<()> {
    let studies: Option<i64> = tx
        .prepare_cached(
            "UPDATE patient SET
                 num_studies = (SELECT COUNT(*) FROM study WHERE patient_fk = ?1),
                 num_series = (SELECT COALESCE(SUM(num_series), 0) FROM study
                               WHERE patient_fk = ?1),
                 num_instances = (SELECT COALESCE(SUM(num_instances), 0) FROM study
                                  WHERE patient_fk = ?1)
             WHERE id = ?1 RETURNING num_studies",
        )?
        .query_row([patient], |r| r.get(0))
        .optional()?;
    if studies == Some(0) {
        tx.prepare_cached("DELETE FROM patient WHERE id = ?1")?
            .execute([patient])?;
    }
    Ok(())
}

/// The study's row keys: (study, patient, study storage).
fn study_keys(
    tx: &Transaction<'_>,
    partition: PartitionId,
    study_uid: &Uid,
) -> rusqlite::Result<Option<(i64, i64, i64)>> {
    tx.prepare_cached(
        "SELECT id, patient_fk, study_storage_id FROM study
         WHERE partition_id = ?1 AND study_uid = ?2",
    )?
    .query_row(params![partition.0, study_uid.as_str()], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
    })
    .optional()
}

/// Deletes a study's instance, series and study rows (not its patient).
/// Returns the number of instance rows removed.
fn delete_study_tree(tx: &Transaction<'_>, study: i64) -> rusqlite::Result<u64> {
    let removed = tx
        .prepare_cached(
            "DELETE FROM instance WHERE series_fk IN (SELECT id FROM series WHERE study_fk = ?1)",
        )?
        .execute([study])?;
    tx.prepare_cached("DELETE FROM series WHERE study_fk = ?1")?
        .execute([study])?;
    tx.prepare_cached("DELETE FROM study WHERE id = ?1")?
        .execute([study])?;
    Ok(removed as u64)
}

fn insert_audit(tx: &Transaction<'_>, entry: &AuditEntry) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO audit_log (at, actor, action, partition_id, study_uid, details)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        entry.at_ms,
        entry.actor,
        entry.action,
        entry.partition.map(|p| p.0),
        entry.study_uid.as_ref().map(Uid::as_str),
        entry.details
    ])
    .map(drop)
}

fn read_edits(
    conn: &Connection,
    partition: PartitionId,
    study_uid: &Uid,
    pending_only: bool,
) -> rusqlite::Result<Vec<EditRecord>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, actor, reason, status, requested_at, completed_at FROM study_edit
         WHERE partition_id = ?1 AND study_uid = ?2 AND (?3 = 0 OR status = 'pending')
         ORDER BY id",
    )?;
    let rows = stmt.query_map(
        params![partition.0, study_uid.as_str(), pending_only],
        |r| {
            let status: String = r.get(3)?;
            Ok(EditRecord {
                id: r.get(0)?,
                partition,
                study_uid: study_uid.clone(),
                actor: r.get(1)?,
                reason: r.get(2)?,
                status: EditStatus::parse(&status).ok_or_else(|| {
                    rusqlite::Error::FromSqlConversionFailure(
                        3,
                        rusqlite::types::Type::Text,
                        format!("unknown edit status {status:?}").into(),
                    )
                })?,
                requested_at_ms: r.get(4)?,
                completed_at_ms: r.get(5)?,
                changes: Vec::new(),
            })
        },
    )?;
    let mut edits: Vec<EditRecord> = rows.collect::<rusqlite::Result<_>>()?;
    let mut changes = conn.prepare_cached(
        "SELECT attribute, old_value, new_value FROM study_edit_change WHERE edit_id = ?1",
    )?;
    for edit in &mut edits {
        let rows = changes.query_map([edit.id], |r| {
            let keyword: String = r.get(0)?;
            Ok(AttributeChange {
                attribute: EditableAttribute::from_keyword(&keyword).ok_or_else(|| {
                    rusqlite::Error::FromSqlConversionFailure(
                        0,
                        rusqlite::types::Type::Text,
                        format!("unknown edited attribute {keyword:?}").into(),
                    )
                })?,
                old_value: r.get(1)?,
                new_value: r.get(2)?,
            })
        })?;
        edit.changes = rows.collect::<rusqlite::Result<_>>()?;
        edit.changes.sort_by_key(|c| {
            EditableAttribute::ALL
                .iter()
                .position(|a| *a == c.attribute)
        });
    }
    Ok(edits)
}

/// The study column an attribute is stored in.
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

/// The patient demographics column an attribute is stored in.
fn patient_column(attribute: EditableAttribute) -> Option<&'static str> {
    Some(match attribute {
        EditableAttribute::PatientName => "patient_name",
        EditableAttribute::PatientBirthDate => "birth_date",
        EditableAttribute::PatientSex => "sex",
        _ => return None,
    })
}

fn apply_edit(
    tx: &Transaction<'_>,
    edit: &EditRecord,
    files: &[FileFacts],
    audit: &AuditEntry,
    now: i64,
) -> rusqlite::Result<Result<(), String>> {
    let pending: Option<i64> = tx
        .prepare_cached("SELECT id FROM study_edit WHERE id = ?1 AND status = 'pending'")?
        .query_row([edit.id], |r| r.get(0))
        .optional()?;
    if pending.is_none() {
        return Ok(Err(format!("pending edit {}", edit.id)));
    }
    let Some((study, old_patient, _)) = study_keys(tx, edit.partition, &edit.study_uid)? else {
        return Ok(Err(format!("study {}", edit.study_uid)));
    };
    let change = |attribute| {
        edit.changes
            .iter()
            .find(|c| c.attribute == attribute)
            .map(|c| index_text(&c.new_value))
    };

    // Patient: a new key moves the study; demographics go to its patient.
    let (patient_id, issuer): (String, String) = tx
        .prepare_cached("SELECT patient_id, issuer_of_patient_id FROM patient WHERE id = ?1")?
        .query_row([old_patient], |r| Ok((r.get(0)?, r.get(1)?)))?;
    let new_id = change(EditableAttribute::PatientId)
        .map(|v| v.unwrap_or("").to_string())
        .unwrap_or(patient_id.clone());
    let new_issuer = change(EditableAttribute::IssuerOfPatientId)
        .map(|v| v.unwrap_or("").to_string())
        .unwrap_or(issuer.clone());
    let patient =
        if (new_id.as_str(), new_issuer.as_str()) == (patient_id.as_str(), issuer.as_str()) {
            old_patient
        } else {
            // Created with the old patient's demographics unless it exists.
            tx.prepare_cached(
                "INSERT INTO patient (partition_id, patient_id, issuer_of_patient_id, patient_name,
                                  birth_date, sex)
             SELECT partition_id, ?2, ?3, patient_name, birth_date, sex FROM patient WHERE id = ?1
             ON CONFLICT (partition_id, patient_id, issuer_of_patient_id) DO NOTHING",
            )?
            .execute(params![old_patient, new_id, new_issuer])?;
            let moved_to: i64 = tx
                .prepare_cached(
                    "SELECT id FROM patient WHERE partition_id = ?1 AND patient_id = ?2
                   AND issuer_of_patient_id = ?3",
                )?
                .query_row(params![edit.partition.0, new_id, new_issuer], |r| r.get(0))?;
            tx.prepare_cached("UPDATE study SET patient_fk = ?2 WHERE id = ?1")?
                .execute(params![study, moved_to])?;
            moved_to
        };
    for c in &edit.changes {
        if let Some(column) = patient_column(c.attribute) {
            tx.execute(
                &format!("UPDATE patient SET {column} = ?2 WHERE id = ?1"),
                params![patient, index_text(&c.new_value)],
            )?;
        }
        if let Some(column) = study_column(c.attribute) {
            tx.execute(
                &format!("UPDATE study SET {column} = ?2 WHERE id = ?1"),
                params![study, index_text(&c.new_value)],
            )?;
        }
    }

    // Files: new sizes and digests.
    for file in files {
        let size = i64::try_from(file.file_size).map_err(|_| {
            super::to_sql_error(format!("file size {} out of range", file.file_size))
        })?;
        tx.prepare_cached(
            "UPDATE instance SET file_size = ?3, digest = ?4
             WHERE partition_id = ?1 AND sop_instance_uid = ?2
               AND series_fk IN (SELECT id FROM series WHERE study_fk = ?5)",
        )?
        .execute(params![
            edit.partition.0,
            file.sop_instance_uid.as_str(),
            size,
            file.digest,
            study
        ])?;
    }
    tx.prepare_cached(
        "UPDATE study SET updated_at = ?2,
             size_bytes = (SELECT COALESCE(SUM(i.file_size), 0) FROM instance i
                           JOIN series se ON se.id = i.series_fk WHERE se.study_fk = ?1)
         WHERE id = ?1",
    )?
    .execute(params![study, now])?;
    if patient != old_patient {
        recount_patient(tx, patient)?;
        recount_patient(tx, old_patient)?;
    }
    tx.prepare_cached(
        "UPDATE study_edit SET status = 'completed', completed_at = ?2 WHERE id = ?1",
    )?
    .execute(params![edit.id, now])?;
    insert_audit(tx, audit)?;
    Ok(Ok(()))
}

impl StudyStore for SqliteIndex {
    fn study(&self, partition: PartitionId, study_uid: &Uid) -> Result<Option<StudyRecord>, Error> {
        self.read("looking up a study", |conn| {
            read_study(conn, partition, study_uid)
        })
    }

    fn study_instances(
        &self,
        partition: PartitionId,
        study_uid: &Uid,
    ) -> Result<Vec<StoredInstance>, Error> {
        self.read("listing a study's instances", |conn| {
            read_instances(conn, partition, study_uid)
        })
    }

    fn delete_study_rows(
        &self,
        partition: PartitionId,
        study_uid: &Uid,
        audit: &AuditEntry,
    ) -> Result<Option<DeletedStudy>, Error> {
        let now = now_ms();
        self.write("deleting a study's rows", |tx| {
            let Some(record) = read_study(tx, partition, study_uid)? else {
                return Ok(None);
            };
            let Some(location) = record.location.clone() else {
                return Err(super::to_sql_error(format!(
                    "study {study_uid} has no online copy"
                )));
            };
            let (study, patient, storage) =
                study_keys(tx, partition, study_uid)?.expect("the study row was just read");
            let instances = read_instances(tx, partition, study_uid)?;
            let duplicates = read_duplicates(tx, partition, study_uid)?;
            delete_study_tree(tx, study)?;
            tx.prepare_cached("DELETE FROM duplicate WHERE partition_id = ?1 AND study_uid = ?2")?
                .execute(params![partition.0, study_uid.as_str()])?;
            recount_patient(tx, patient)?;
            tx.prepare_cached("UPDATE study_storage SET state = 'deleting' WHERE id = ?1")?
                .execute([storage])?;
            tx.prepare_cached(
                "UPDATE study_edit SET status = 'abandoned', completed_at = ?3
                 WHERE partition_id = ?1 AND study_uid = ?2 AND status = 'pending'",
            )?
            .execute(params![partition.0, study_uid.as_str(), now])?;
            // The tombstone's time is the `at` of this entry.
            let mut entry = audit.clone();
            entry.at_ms = now;
            entry.action = "study.delete".to_string();
            insert_audit(tx, &entry)?;
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
        self.read("looking up a study being deleted", |conn| {
            conn.prepare_cached(
                "SELECT ss.filesystem_id, p.folder, ss.date_folder, ss.study_uid,
                        (SELECT MAX(a.at) FROM audit_log a
                         WHERE a.partition_id = ss.partition_id AND a.study_uid = ss.study_uid
                           AND a.action = 'study.delete')
                 FROM study_storage ss JOIN partition p ON p.id = ss.partition_id
                 WHERE ss.partition_id = ?1 AND ss.study_uid = ?2 AND ss.state = 'deleting'
                   AND ss.filesystem_id IS NOT NULL",
            )?
            .query_row(params![partition.0, study_uid.as_str()], |r| {
                Ok(DeletingStudy {
                    location: location_from_row(r, 0)?,
                    since_ms: r.get::<_, Option<i64>>(4)?.unwrap_or(0),
                })
            })
            .optional()
        })
    }

    fn finish_study_delete(&self, partition: PartitionId, study_uid: &Uid) -> Result<bool, Error> {
        self.write("finishing a study deletion", |tx| {
            let storage: Option<i64> = tx
                .prepare_cached(
                    "SELECT id FROM study_storage
                     WHERE partition_id = ?1 AND study_uid = ?2 AND state = 'deleting'",
                )?
                .query_row(params![partition.0, study_uid.as_str()], |r| r.get(0))
                .optional()?;
            let Some(storage) = storage else {
                return Ok(false);
            };
            let removed = tx
                .prepare_cached(
                    "DELETE FROM study_storage WHERE id = ?1
                       AND NOT EXISTS (SELECT 1 FROM study WHERE study_storage_id = ?1)
                       AND NOT EXISTS (SELECT 1 FROM work_queue WHERE study_storage_id = ?1)",
                )?
                .execute([storage])?;
            if removed == 0 {
                tx.prepare_cached("UPDATE study_storage SET state = 'idle' WHERE id = ?1")?
                    .execute([storage])?;
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
        let now = now_ms();
        let result = self.write("recording a study edit", |tx| {
            if let Some(pending) = read_edits(tx, partition, study_uid, true)?.pop() {
                return Ok(Some(pending));
            }
            if study_keys(tx, partition, study_uid)?.is_none() {
                return Ok(None);
            }
            let id: i64 = tx
                .prepare_cached(
                    "INSERT INTO study_edit (partition_id, study_uid, actor, reason, status,
                                             requested_at)
                     VALUES (?1, ?2, ?3, ?4, 'pending', ?5) RETURNING id",
                )?
                .query_row(
                    params![partition.0, study_uid.as_str(), actor, reason, now],
                    |r| r.get(0),
                )?;
            for change in changes {
                tx.prepare_cached(
                    "INSERT INTO study_edit_change (edit_id, attribute, old_value, new_value)
                     VALUES (?1, ?2, ?3, ?4)",
                )?
                .execute(params![
                    id,
                    change.attribute.keyword(),
                    change.old_value,
                    change.new_value
                ])?;
            }
            Ok(read_edits(tx, partition, study_uid, true)?.pop())
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
        self.read("looking up a pending study edit", |conn| {
            Ok(read_edits(conn, partition, study_uid, true)?.pop())
        })
    }

    fn complete_edit(
        &self,
        edit: &EditRecord,
        files: &[FileFacts],
        audit: &AuditEntry,
    ) -> Result<(), Error> {
        let now = now_ms();
        self.write("completing a study edit", |tx| {
            apply_edit(tx, edit, files, audit, now)
        })?
        .map_err(|what| Error::NotFound { what })
    }

    fn edit_history(
        &self,
        partition: PartitionId,
        study_uid: &Uid,
    ) -> Result<Vec<EditRecord>, Error> {
        self.read("listing study edits", |conn| {
            read_edits(conn, partition, study_uid, false)
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
        let now = now_ms();
        self.write("replacing a study's rows", |tx| {
            let mut outcome = ReplaceOutcome::default();
            if let Some((study, patient, _)) = study_keys(tx, partition, study_uid)? {
                outcome.removed_instances = delete_study_tree(tx, study)?;
                recount_patient(tx, patient)?;
            }
            super::ingest::insert_batch(tx, records, now)?;
            outcome.inserted_instances = records.len() as u64;
            insert_audit(tx, audit)?;
            Ok(outcome)
        })
    }

    fn record_audit(&self, entry: &AuditEntry) -> Result<(), Error> {
        self.write("recording an audit entry", |tx| insert_audit(tx, entry))
    }

    fn audit_log(&self, partition: PartitionId, study_uid: &Uid) -> Result<Vec<AuditEntry>, Error> {
        self.read("reading the audit log", |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT at, actor, action, details FROM audit_log
                 WHERE study_uid = ?2 AND partition_id = ?1 ORDER BY at, id",
            )?;
            let rows = stmt.query_map(params![partition.0, study_uid.as_str()], |r| {
                Ok(AuditEntry {
                    at_ms: r.get(0)?,
                    actor: r.get(1)?,
                    action: r.get(2)?,
                    partition: Some(partition),
                    study_uid: Some(study_uid.clone()),
                    details: r.get::<_, Option<String>>(3)?.unwrap_or_default(),
                })
            })?;
            rows.collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::db::sqlite::SqliteIndex;
    use crate::db::studies::conformance;

    #[test]
    fn study_store_conformance_on_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let index = SqliteIndex::open(&dir.path().join("index.db")).unwrap();
        conformance::run_all(&index);
    }
}
