//! [`StudyStore`] on SQLite: the index side of study delete, edit and
//! reprocess. Each write method is one `BEGIN IMMEDIATE` transaction on the
//! writer connection (see `db/studies.rs` for the semantics).

use rusqlite::{params, Connection, OptionalExtension, Transaction};

use super::{now_ms, SqliteIndex};
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

fn read_study(
    conn: &Connection,
    partition: PartitionId,
    study_uid: &Uid,
) -> rusqlite::Result<Option<StudyRecord>> {
    conn.prepare_cached(sql::STUDY)?
        .query_row(params![partition.0, study_uid.as_str()], |r| {
            rows::study(r, partition)
        })
        .optional()
}

fn read_instances(
    conn: &Connection,
    partition: PartitionId,
    study_uid: &Uid,
) -> rusqlite::Result<Vec<StoredInstance>> {
    let mut stmt = conn.prepare_cached(sql::STUDY_INSTANCES)?;
    let found = stmt.query_map(params![partition.0, study_uid.as_str()], |r| {
        rows::stored_instance(r)
    })?;
    found.collect()
}

fn read_duplicates(
    conn: &Connection,
    partition: PartitionId,
    study_uid: &Uid,
) -> rusqlite::Result<Vec<DuplicateRecord>> {
    let mut stmt = conn.prepare_cached(sql::STUDY_DUPLICATES)?;
    let found = stmt.query_map(params![partition.0, study_uid.as_str()], |r| {
        rows::duplicate(r, partition)
    })?;
    found.collect()
}

/// Recounts a patient from its studies' counters; deletes it when it has
/// no study left.
pub(super) fn recount_patient(tx: &Transaction<'_>, patient: i64) -> rusqlite::Result<()> {
    let studies: Option<i64> = tx
        .prepare_cached(sql::RECOUNT_PATIENT)?
        .query_row([patient], |r| r.get(0))
        .optional()?;
    if studies == Some(0) {
        tx.prepare_cached(sql::DELETE_PATIENT)?.execute([patient])?;
    }
    Ok(())
}

/// The study's row keys: (study, patient, study storage).
fn study_keys(
    tx: &Transaction<'_>,
    partition: PartitionId,
    study_uid: &Uid,
) -> rusqlite::Result<Option<(i64, i64, i64)>> {
    tx.prepare_cached(sql::STUDY_KEYS)?
        .query_row(params![partition.0, study_uid.as_str()], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .optional()
}

/// Deletes a study's instance, series and study rows (not its patient).
/// Returns the number of instance rows removed.
fn delete_study_tree(tx: &Transaction<'_>, study: i64) -> rusqlite::Result<u64> {
    let removed = tx
        .prepare_cached(sql::DELETE_STUDY_INSTANCES)?
        .execute([study])?;
    for statement in [sql::DELETE_STUDY_SERIES, sql::DELETE_STUDY] {
        tx.prepare_cached(statement)?.execute([study])?;
    }
    Ok(removed as u64)
}

fn insert_audit(tx: &Transaction<'_>, entry: &AuditEntry) -> rusqlite::Result<()> {
    tx.prepare_cached(sql::INSERT_AUDIT)?
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
    let mut stmt = conn.prepare_cached(sql::EDITS)?;
    let found = stmt.query_map(
        params![partition.0, study_uid.as_str(), pending_only],
        |r| rows::edit(r, partition, study_uid),
    )?;
    let mut edits: Vec<EditRecord> = found.collect::<rusqlite::Result<_>>()?;
    let mut changes = conn.prepare_cached(sql::EDIT_CHANGES)?;
    for edit in &mut edits {
        let found = changes.query_map([edit.id], |r| rows::change(r))?;
        edit.changes = found.collect::<rusqlite::Result<_>>()?;
        rows::sort_changes(&mut edit.changes);
    }
    Ok(edits)
}

fn apply_edit(
    tx: &Transaction<'_>,
    edit: &EditRecord,
    files: &[FileFacts],
    audit: &AuditEntry,
    now: i64,
) -> rusqlite::Result<Result<(), EditGone>> {
    let pending: Option<i64> = tx
        .prepare_cached("SELECT id FROM study_edit WHERE id = ?1 AND status = 'pending'")?
        .query_row([edit.id], |r| r.get(0))
        .optional()?;
    if pending.is_none() {
        return Ok(Err(EditGone::Edit(edit.id)));
    }
    let Some((study, old_patient, _)) = study_keys(tx, edit.partition, &edit.study_uid)? else {
        return Ok(Err(EditGone::Study(edit.study_uid.clone())));
    };
    let change = |attribute| {
        edit.changes
            .iter()
            .find(|c| c.attribute == attribute)
            .map(|c| index_text(&c.new_value))
    };

    // Patient: a new key moves the study; demographics go to its patient.
    let (patient_id, issuer): (String, String) = tx
        .prepare_cached(sql::PATIENT_KEY)?
        .query_row([old_patient], |r| Ok((r.get(0)?, r.get(1)?)))?;
    let new_id = change(EditableAttribute::PatientId)
        .map(|v| v.unwrap_or("").to_string())
        .unwrap_or(patient_id.clone());
    let new_issuer = change(EditableAttribute::IssuerOfPatientId)
        .map(|v| v.unwrap_or("").to_string())
        .unwrap_or(issuer.clone());
    let patient = if (new_id.as_str(), new_issuer.as_str())
        == (patient_id.as_str(), issuer.as_str())
    {
        old_patient
    } else {
        // Created with the old patient's demographics unless it exists.
        tx.prepare_cached(sql::COPY_PATIENT)?
            .execute(params![new_id, new_issuer, old_patient])?;
        let moved_to: i64 = tx
            .prepare_cached(
                "SELECT id FROM patient WHERE partition_id = ?1 AND patient_id = ?2
                   AND issuer_of_patient_id = ?3",
            )?
            .query_row(params![edit.partition.0, new_id, new_issuer], |r| r.get(0))?;
        tx.prepare_cached(sql::MOVE_STUDY)?
            .execute(params![moved_to, study])?;
        moved_to
    };
    for c in &edit.changes {
        if let Some(column) = sql::patient_column(c.attribute) {
            tx.execute(
                &format!("UPDATE patient SET {column} = ?2 WHERE id = ?1"),
                params![patient, index_text(&c.new_value)],
            )?;
        }
        if let Some(column) = sql::study_column(c.attribute) {
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
    tx.prepare_cached(sql::RESIZE_STUDY)?
        .execute(params![now, study])?;
    if patient != old_patient {
        recount_patient(tx, patient)?;
        recount_patient(tx, old_patient)?;
    }
    tx.prepare_cached(sql::COMPLETE_EDIT)?
        .execute(params![now, edit.id])?;
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
            tx.prepare_cached(sql::DELETE_STUDY_DUPLICATES)?
                .execute(params![partition.0, study_uid.as_str()])?;
            tx.prepare_cached(sql::DELETE_STUDY_RECONCILE)?
                .execute(params![partition.0, study_uid.as_str()])?;
            recount_patient(tx, patient)?;
            tx.prepare_cached(sql::MARK_DELETING)?.execute([storage])?;
            tx.prepare_cached(sql::ABANDON_EDIT)?.execute(params![
                now,
                partition.0,
                study_uid.as_str()
            ])?;
            insert_audit(tx, &rows::delete_audit(audit, now))?;
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
        self.read("looking up a study being deleted", |conn| {
            conn.prepare_cached(sql::DELETING_STUDY)?
                .query_row(params![partition.0, study_uid.as_str()], |r| {
                    Ok(DeletingStudy {
                        location: rows::location(r)?,
                        since_ms: r.opt_int("since")?.unwrap_or(0),
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
                .prepare_cached(sql::REMOVE_TOMBSTONE)?
                .execute([storage])?;
            if removed == 0 {
                tx.prepare_cached(sql::REVIVE_TOMBSTONE)?
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
                tx.prepare_cached(sql::INSERT_EDIT_CHANGE)?
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
        .map_err(Error::from)
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

    fn study_row_fence(&self, partition: PartitionId, study_uid: &Uid) -> Result<RowFence, Error> {
        self.read("reading a study's row fence", |conn| {
            conn.prepare_cached(sql::STUDY_ROW_FENCE_BY_UID)?
                .query_row(params![partition.0, study_uid.as_str()], |r| r.get(0))
                .map(RowFence)
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
        let now = now_ms();
        // The one writer connection is the study's lock: no insert runs
        // between the fence check and the replacement.
        self.write("replacing a study's rows", |tx| {
            let mut outcome = ReplaceOutcome::default();
            if let Some((study, patient, _)) = study_keys(tx, partition, study_uid)? {
                let newest: i64 = tx
                    .prepare_cached(sql::STUDY_ROW_FENCE)?
                    .query_row([study], |r| r.get(0))?;
                if newest > fence.0 {
                    return Ok(None);
                }
                outcome.removed_instances = delete_study_tree(tx, study)?;
                recount_patient(tx, patient)?;
            }
            super::ingest::insert_batch(tx, records, now)?;
            outcome.inserted_instances = records.len() as u64;
            insert_audit(tx, audit)?;
            Ok(Some(outcome))
        })
    }

    fn reconcile_entries(&self, partition: PartitionId) -> Result<Vec<ReconcileEntry>, Error> {
        self.read("listing the reconcile queue", |conn| {
            let mut stmt = conn.prepare_cached(sql::RECONCILE_ENTRIES)?;
            let found = stmt.query_map([partition.0], |r| rows::reconcile_entry(r, partition))?;
            found.collect()
        })
    }

    fn reconcile_entry(
        &self,
        partition: PartitionId,
        id: i64,
    ) -> Result<Option<ReconcileEntry>, Error> {
        self.read("reading a reconcile entry", |conn| {
            conn.prepare_cached(sql::RECONCILE_ENTRY)?
                .query_row(params![partition.0, id], |r| {
                    rows::reconcile_entry(r, partition)
                })
                .optional()
        })
    }

    fn resolve_reconcile(
        &self,
        partition: PartitionId,
        id: i64,
        audit: &AuditEntry,
    ) -> Result<bool, Error> {
        self.write("resolving a reconcile entry", |tx| {
            let removed = tx
                .prepare_cached(sql::DELETE_RECONCILE_ENTRY)?
                .execute(params![partition.0, id])?;
            if removed > 0 {
                insert_audit(tx, audit)?;
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
        let moved = self.write("switching a study's location", |tx| {
            tx.prepare_cached(sql::SWITCH_STUDY_LOCATION)?
                .execute(params![
                    to.0,
                    partition.0,
                    study_uid.as_str(),
                    from.0,
                    instances,
                    bytes
                ])
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
        let failed = |e: SwitchFailed| rusqlite::Error::ToSqlConversionFailure(Box::new(e));
        // The write transaction is IMMEDIATE: ingest's commit of a
        // replacement waits for it (or committed before, and the row no
        // longer holds the old digest).
        self.write("recording recoded files", |tx| {
            let Some((study, _, _)) = study_keys(tx, partition, study_uid)? else {
                return Ok(0);
            };
            let mut changed = 0u64;
            for file in files {
                let size = i64::try_from(file.file_size).map_err(|_| {
                    super::to_sql_error(format!("file size {} out of range", file.file_size))
                })?;
                let updated = tx.prepare_cached(sql::RECORD_RECODED)?.execute(params![
                    file.transfer_syntax_uid,
                    size,
                    file.digest,
                    partition.0,
                    file.sop_instance_uid.as_str(),
                    study,
                    file.old_digest,
                ])? as u64;
                if updated > 0 {
                    switch.put_in_place(file).map_err(failed)?;
                }
                changed += updated;
            }
            tx.prepare_cached(sql::RESIZE_STUDY)?
                .execute(params![now_ms(), study])?;
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
        self.read("choosing studies to migrate", |conn| {
            let queued: i64 = conn
                .prepare_cached(sql::MIGRATION_QUEUED_BYTES)?
                .query_row([filesystem.0], |r| r.get(0))?;
            let mut stmt = conn.prepare_cached(sql::MIGRATION_CANDIDATES)?;
            let found = stmt.query_map(params![filesystem.0, limit], |r| {
                Ok((
                    PartitionId(r.get(0)?),
                    r.uid("study_uid")?,
                    r.count("size_bytes")?,
                ))
            })?;
            Ok((
                queued.max(0) as u64,
                found.collect::<rusqlite::Result<_>>()?,
            ))
        })
    }

    fn touch_study(
        &self,
        partition: PartitionId,
        study_uid: &Uid,
        now_ms: i64,
        coarseness_ms: i64,
    ) -> Result<(), Error> {
        self.write("recording a study access", |tx| {
            tx.prepare_cached(sql::TOUCH_STUDY)?.execute(params![
                now_ms,
                partition.0,
                study_uid.as_str(),
                now_ms - coarseness_ms
            ])
        })
        .map(drop)
    }

    fn record_audit(&self, entry: &AuditEntry) -> Result<(), Error> {
        self.write("recording an audit entry", |tx| insert_audit(tx, entry))
    }

    fn audit_entries(&self, filter: &AuditFilter) -> Result<Vec<AuditEntry>, Error> {
        self.read("listing the audit log", |conn| {
            let mut stmt = conn.prepare_cached(sql::AUDIT_ENTRIES)?;
            let found = stmt.query_map(
                params![
                    filter.since_ms.unwrap_or(i64::MIN),
                    filter.action.as_deref().unwrap_or(""),
                    filter.study_uid.as_ref().map_or("", Uid::as_str),
                    i64::try_from(filter.limit).unwrap_or(i64::MAX),
                ],
                |r| rows::audit_entry(r),
            )?;
            found.collect()
        })
    }

    fn audit_log(&self, partition: PartitionId, study_uid: &Uid) -> Result<Vec<AuditEntry>, Error> {
        self.read("reading the audit log", |conn| {
            let mut stmt = conn.prepare_cached(sql::AUDIT_LOG)?;
            let found = stmt.query_map(params![partition.0, study_uid.as_str()], |r| {
                rows::audit(r, partition, study_uid)
            })?;
            found.collect()
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
