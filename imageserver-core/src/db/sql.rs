//! The statements both backends run as they are, once.
//!
//! Placeholders are written `$1`, `$2`, ... in the order they first appear:
//! PostgreSQL numbers them by their digits, SQLite by first appearance, and
//! in this order the two agree (a test below holds every statement to it).
//! Column names are those [`crate::db::rows`] reads. Statements whose text
//! differs (locking, bulk forms, `RETURNING` on a conflict) stay in the
//! backends.

/// The columns [`crate::db::rows::stored_instance`] reads, from every
/// instance joined to its series `se`, study `st`, study storage `ss` and
/// partition `p`: the caller adds the `WHERE`.
macro_rules! instances {
    () => {
        "SELECT ss.filesystem_id, p.folder, ss.date_folder, st.study_uid,
                se.series_uid, i.sop_instance_uid, i.sop_class_uid,
                i.transfer_syntax_uid, i.file_size, i.digest
         FROM instance i
         JOIN series se ON se.id = i.series_fk
         JOIN study st ON st.id = se.study_fk
         JOIN study_storage ss ON ss.id = st.study_storage_id
         JOIN partition p ON p.id = ss.partition_id"
    };
}

/// The columns of [`STUDY_DELETIONS`], for statements that join them.
macro_rules! study_deletions {
    () => {
        "SELECT EXISTS (SELECT 1 FROM study_storage
                        WHERE partition_id = $1 AND study_uid = $2 AND state = 'deleting') AS deleting,
                (SELECT COUNT(*) FROM audit_log
                 WHERE partition_id = $1 AND study_uid = $2 AND action = 'study.delete') AS deletions,
                (SELECT filesystem_id FROM study_storage
                 WHERE partition_id = $1 AND study_uid = $2) AS filesystem"
    };
}

/// The columns [`crate::db::rows::duplicate`] reads, from `d` and `p`.
macro_rules! duplicate_columns {
    () => {
        "SELECT d.filesystem_id, p.folder, d.date_folder, d.study_uid, d.sop_instance_uid,
                d.series_uid, d.variant, d.file_size, d.digest, d.source_ae, d.received_at
         FROM duplicate d JOIN partition p ON p.id = d.partition_id"
    };
}

/// Creates or updates a partition (`$1` AE title ... `$8` created at);
/// returns its `id`.
pub(crate) const ENSURE_PARTITION: &str =
    "INSERT INTO partition (ae_title, folder, description, port, accept_any_device,
                            duplicate_policy, pn_case_insensitive, created_at)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
     ON CONFLICT (ae_title) DO UPDATE
     SET folder = excluded.folder, description = excluded.description,
         port = excluded.port, accept_any_device = excluded.accept_any_device,
         duplicate_policy = excluded.duplicate_policy,
         pn_case_insensitive = excluded.pn_case_insensitive
     RETURNING id";

/// The partition answering to AE title `$1`.
pub(crate) const PARTITION: &str = "SELECT id FROM partition WHERE ae_title = $1";

/// Creates or updates a filesystem (`$1` path ... `$7` description, `$8`
/// capacity in MiB); returns its `id`.
pub(crate) const ENSURE_FILESYSTEM: &str = "INSERT INTO filesystem
         (path, tier, high_watermark, low_watermark, read_only, write_only, description,
          capacity_mb)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
     ON CONFLICT (path) DO UPDATE
     SET tier = excluded.tier, high_watermark = excluded.high_watermark,
         low_watermark = excluded.low_watermark, read_only = excluded.read_only,
         write_only = excluded.write_only, description = excluded.description,
         capacity_mb = excluded.capacity_mb
     RETURNING id";

/// Creates a filesystem (columns as [`ENSURE_FILESYSTEM`]) unless its path
/// is known: a row already there is never changed. Returns the `id` only
/// when it created the row.
pub(crate) const SEED_FILESYSTEM: &str = "INSERT INTO filesystem
         (path, tier, high_watermark, low_watermark, read_only, write_only, description,
          capacity_mb)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
     ON CONFLICT (path) DO NOTHING
     RETURNING id";

/// The filesystem at path `$1`, with every column of [`FILESYSTEMS`].
pub(crate) const FILESYSTEM_AT: &str =
    "SELECT id, path, tier, high_watermark, low_watermark, read_only, write_only,
            enabled, description, capacity_mb, marker
     FROM filesystem WHERE path = $1";

/// Every filesystem, by tier then key.
pub(crate) const FILESYSTEMS: &str =
    "SELECT id, path, tier, high_watermark, low_watermark, read_only, write_only,
            enabled, description, capacity_mb, marker
     FROM filesystem ORDER BY tier, id";

/// Sets every property of filesystem `$10` an operator may change (`$1`
/// path ... `$8` capacity as [`ENSURE_FILESYSTEM`], `$9` enabled).
pub(crate) const UPDATE_FILESYSTEM: &str = "UPDATE filesystem
     SET path = $1, tier = $2, high_watermark = $3, low_watermark = $4, read_only = $5,
         write_only = $6, description = $7, capacity_mb = $8, enabled = $9
     WHERE id = $10";

/// Records marker `$1` of filesystem `$2` unless it has one already.
pub(crate) const RECORD_MARKER: &str =
    "UPDATE filesystem SET marker = $1 WHERE id = $2 AND marker IS NULL";

/// The marker of filesystem `$1`.
pub(crate) const MARKER: &str = "SELECT marker FROM filesystem WHERE id = $1";

/// Moves study `$3` of partition `$2` to filesystem `$1`, only while it is
/// on filesystem `$4`, not being deleted, and holds exactly `$5` instances
/// of `$6` bytes (what the migration copied and verified).
pub(crate) const SWITCH_STUDY_LOCATION: &str = "UPDATE study_storage SET filesystem_id = $1
     WHERE partition_id = $2 AND study_uid = $3 AND filesystem_id = $4 AND state <> 'deleting'
       AND (SELECT COUNT(*) FROM instance i
            JOIN series se ON se.id = i.series_fk JOIN study st ON st.id = se.study_fk
            WHERE st.partition_id = $2 AND st.study_uid = $3) = $5
       AND (SELECT CAST(COALESCE(SUM(i.file_size), 0) AS BIGINT) FROM instance i
            JOIN series se ON se.id = i.series_fk JOIN study st ON st.id = se.study_fk
            WHERE st.partition_id = $2 AND st.study_uid = $3) = $6";

/// The studies on filesystem `$1` no open `migrate_study` or
/// `purge_study` item names,
/// least recently accessed (or arrived) first, at most `$2`
/// (`partition_id`, `study_uid`, `size_bytes`).
pub(crate) const MIGRATION_CANDIDATES: &str = "SELECT ss.partition_id, ss.study_uid, st.size_bytes
     FROM study_storage ss JOIN study st ON st.study_storage_id = ss.id
     WHERE ss.filesystem_id = $1 AND ss.state <> 'deleting'
       AND NOT EXISTS (SELECT 1 FROM work_queue w
                       WHERE w.study_storage_id = ss.id AND w.type IN ('migrate_study', 'purge_study')
                         AND w.status IN ('idle', 'pending', 'in_progress'))
     ORDER BY COALESCE(ss.last_accessed, ss.created_at), ss.id
     LIMIT $2";

/// The bytes of the studies on filesystem `$1` that an open
/// `migrate_study` or `purge_study` item names (`queued`).
pub(crate) const MIGRATION_QUEUED_BYTES: &str =
    "SELECT CAST(COALESCE(SUM(st.size_bytes), 0) AS BIGINT) AS queued
     FROM study_storage ss JOIN study st ON st.study_storage_id = ss.id
     WHERE ss.filesystem_id = $1
       AND EXISTS (SELECT 1 FROM work_queue w
                   WHERE w.study_storage_id = ss.id AND w.type IN ('migrate_study', 'purge_study')
                     AND w.status IN ('idle', 'pending', 'in_progress'))";

/// Records an access at `$1` of study `$3` of partition `$2` unless one
/// was recorded after `$4`.
pub(crate) const TOUCH_STUDY: &str = "UPDATE study_storage SET last_accessed = $1
     WHERE partition_id = $2 AND study_uid = $3
       AND (last_accessed IS NULL OR last_accessed < $4)";

/// The bytes of the studies each filesystem holds (`filesystem_id`,
/// `held`): the sum of their instance files as the index counts them.
pub(crate) const HELD_BYTES: &str = "SELECT ss.filesystem_id,
            CAST(COALESCE(SUM(st.size_bytes), 0) AS BIGINT) AS held
     FROM study st JOIN study_storage ss ON ss.id = st.study_storage_id
     WHERE ss.filesystem_id IS NOT NULL
     GROUP BY ss.filesystem_id";

/// Creates or updates a device of partition `$1` (`$2` AE title ... `$9`
/// most outgoing associations, `$10` may replace).
pub(crate) const ENSURE_DEVICE: &str = "INSERT INTO device
         (partition_id, ae_title, host, port, allow_store, allow_query, allow_retrieve,
          max_associations, max_outgoing_associations, allow_replace)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
     ON CONFLICT (partition_id, ae_title) DO UPDATE
     SET host = excluded.host, port = excluded.port,
         allow_store = excluded.allow_store, allow_query = excluded.allow_query,
         allow_retrieve = excluded.allow_retrieve,
         max_associations = excluded.max_associations,
         max_outgoing_associations = excluded.max_outgoing_associations,
         allow_replace = excluded.allow_replace";

/// Registers a device of partition `$1` (columns as [`ENSURE_DEVICE`])
/// unless one has its AE title, and only while the partition has fewer
/// than `$11` devices: an existing row is never changed.
pub(crate) const REGISTER_DEVICE: &str = "INSERT INTO device
         (partition_id, ae_title, host, port, allow_store, allow_query, allow_retrieve,
          max_associations, max_outgoing_associations, allow_replace)
     SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10
     WHERE (SELECT count(*) FROM device WHERE partition_id = $1) < $11
     ON CONFLICT (partition_id, ae_title) DO NOTHING";

/// Removes the device of partition `$1` with AE title `$2`.
pub(crate) const DELETE_DEVICE: &str =
    "DELETE FROM device WHERE partition_id = $1 AND ae_title = $2";

/// The device of partition `$1` with AE title `$2`.
pub(crate) const DEVICE: &str =
    "SELECT ae_title, host, port, allow_store, allow_query, allow_retrieve,
            max_associations, max_outgoing_associations, allow_replace
     FROM device WHERE partition_id = $1 AND ae_title = $2";

/// The devices of partition `$1`, by AE title.
pub(crate) const DEVICES: &str =
    "SELECT ae_title, host, port, allow_store, allow_query, allow_retrieve,
            max_associations, max_outgoing_associations, allow_replace
     FROM device WHERE partition_id = $1 ORDER BY ae_title";

/// A study's online location (`$1` partition, `$2` study UID); none while
/// it is nearline.
pub(crate) const STUDY_LOCATION: &str =
    "SELECT ss.filesystem_id, p.folder, ss.date_folder, ss.study_uid
     FROM study_storage ss JOIN partition p ON p.id = ss.partition_id
     WHERE ss.partition_id = $1 AND ss.study_uid = $2 AND ss.filesystem_id IS NOT NULL";

/// The deletions of study `$2` of partition `$1`: whether its storage row
/// is a deletion's tombstone, and how many deletions the audit log records
/// (`study.delete` entries are never removed, so the count only grows).
pub(crate) const STUDY_DELETIONS: &str = study_deletions!();

/// Instance `$2` of partition `$1`, with where its file is.
pub(crate) const INSTANCE: &str = concat!(
    instances!(),
    "
     WHERE i.partition_id = $1 AND i.sop_instance_uid = $2 AND ss.filesystem_id IS NOT NULL"
);

/// What ingest reads before placing a file, in one statement (`$1`
/// partition, `$2` study UID, `$3` SOP Instance UID): the columns of
/// [`STUDY_DELETIONS`], then those of [`INSTANCE`] (NULL when there is no
/// such online instance) and the study's patient (NULL when the study is
/// not indexed). Read by [`crate::db::rows::ingest_lookup`]. The joined
/// subqueries name only parameters, so both backends plan each as its own
/// index look-up.
pub(crate) const INGEST_LOOKUP: &str = concat!(
    "SELECT d.deleting, d.deletions, d.filesystem,
            i.filesystem_id, i.folder, i.date_folder, i.study_uid, i.series_uid,
            i.sop_instance_uid, i.sop_class_uid, i.transfer_syntax_uid, i.file_size, i.digest,
            s.patient_id, s.issuer_of_patient_id, s.patient_name, s.birth_date, s.sex
     FROM (",
    study_deletions!(),
    ") d
     LEFT JOIN (",
    instances!(),
    "
     WHERE i.partition_id = $1 AND i.sop_instance_uid = $3 AND ss.filesystem_id IS NOT NULL",
    ") i ON TRUE
     LEFT JOIN (
         SELECT pa.patient_id, pa.issuer_of_patient_id, pa.patient_name, pa.birth_date, pa.sex
         FROM study st
         JOIN patient pa ON pa.id = st.patient_fk
         JOIN study_storage ss ON ss.id = st.study_storage_id
         JOIN partition p ON p.id = st.partition_id
         WHERE st.partition_id = $1 AND st.study_uid = $2) s ON TRUE"
);

/// Row counts of partition `$1`, from the patients' counters.
pub(crate) const COUNTS: &str = "SELECT COUNT(*) AS patients,
            CAST(COALESCE(SUM(num_studies), 0) AS BIGINT) AS studies,
            CAST(COALESCE(SUM(num_series), 0) AS BIGINT) AS series,
            CAST(COALESCE(SUM(num_instances), 0) AS BIGINT) AS instances
     FROM patient WHERE partition_id = $1";

/// Records a kept-aside duplicate (`$1` partition ... `$11` received at).
pub(crate) const RECORD_DUPLICATE: &str =
    "INSERT INTO duplicate (partition_id, sop_instance_uid, filesystem_id, date_folder,
                            study_uid, series_uid, variant, file_size, digest,
                            source_ae, received_at)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)";

/// The duplicates of partition `$1`, oldest first.
pub(crate) const DUPLICATES: &str = concat!(
    duplicate_columns!(),
    "
     WHERE d.partition_id = $1 ORDER BY d.received_at, d.id"
);

/// Holds an instance in the reconcile queue (`$1` partition ... `$17`
/// birth date); returns its `id`.
pub(crate) const HOLD_FOR_RECONCILE: &str =
    "INSERT INTO reconcile (partition_id, sop_instance_uid, sop_class_uid, transfer_syntax_uid,
                            filesystem_id, date_folder, study_uid, series_uid, variant,
                            file_size, digest, source_ae, received_at, patient_id,
                            issuer_of_patient_id, patient_name, birth_date)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)
     RETURNING id";

macro_rules! reconcile_columns {
    () => {
        "SELECT r.id, r.filesystem_id, p.folder, r.date_folder, r.study_uid, r.sop_instance_uid,
                r.sop_class_uid, r.transfer_syntax_uid, r.series_uid, r.variant, r.file_size,
                r.digest, r.source_ae, r.received_at, r.patient_id, r.issuer_of_patient_id,
                r.patient_name, r.birth_date
         FROM reconcile r JOIN partition p ON p.id = r.partition_id"
    };
}

/// The reconcile queue of partition `$1`, oldest first.
pub(crate) const RECONCILE_ENTRIES: &str = concat!(
    reconcile_columns!(),
    "
     WHERE r.partition_id = $1 ORDER BY r.received_at, r.id"
);

/// Entry `$2` of the reconcile queue of partition `$1`.
pub(crate) const RECONCILE_ENTRY: &str = concat!(
    reconcile_columns!(),
    "
     WHERE r.partition_id = $1 AND r.id = $2"
);

/// Removes entry `$2` of the reconcile queue of partition `$1`.
pub(crate) const DELETE_RECONCILE_ENTRY: &str =
    "DELETE FROM reconcile WHERE partition_id = $1 AND id = $2";

/// Removes the reconcile entries of study `$2` of partition `$1` (its
/// deletion removes their held files with the study's).
pub(crate) const DELETE_STUDY_RECONCILE: &str =
    "DELETE FROM reconcile WHERE partition_id = $1 AND study_uid = $2";

/// Study `$2` of partition `$1` (see [`crate::db::rows::study`]).
pub(crate) const STUDY: &str = "SELECT ss.filesystem_id, p.folder, ss.date_folder, st.study_uid,
            pa.patient_id, pa.issuer_of_patient_id, pa.patient_name, pa.birth_date, pa.sex,
            st.study_date, st.study_time, st.accession_number, st.study_id,
            st.study_description, st.referring_physician_name, st.specific_character_set,
            st.modalities_in_study, st.num_series, st.num_instances, st.size_bytes,
            pa.num_studies, ss.created_at AS received_at, st.updated_at
     FROM study st
     JOIN patient pa ON pa.id = st.patient_fk
     JOIN study_storage ss ON ss.id = st.study_storage_id
     JOIN partition p ON p.id = st.partition_id
     WHERE st.partition_id = $1 AND st.study_uid = $2";

/// The online instances of study `$2` of partition `$1`, by series UID,
/// instance number (none first), SOP Instance UID.
pub(crate) const STUDY_INSTANCES: &str = concat!(
    instances!(),
    "
     WHERE st.partition_id = $1 AND st.study_uid = $2 AND ss.filesystem_id IS NOT NULL
     ORDER BY se.series_uid, i.instance_number NULLS FIRST, i.sop_instance_uid"
);

/// The duplicates of study `$2` of partition `$1`.
pub(crate) const STUDY_DUPLICATES: &str = concat!(
    duplicate_columns!(),
    "
     WHERE d.partition_id = $1 AND d.study_uid = $2 ORDER BY d.id"
);

/// The row keys `id, patient_fk, study_storage_id` of study `$2` of
/// partition `$1`.
pub(crate) const STUDY_KEYS: &str = "SELECT id, patient_fk, study_storage_id FROM study
     WHERE partition_id = $1 AND study_uid = $2";

/// Recounts patient `$1` from its studies' counters; returns
/// `num_studies`.
pub(crate) const RECOUNT_PATIENT: &str = "UPDATE patient SET
         num_studies = (SELECT COUNT(*) FROM study WHERE patient_fk = $1),
         num_series = (SELECT COALESCE(SUM(num_series), 0) FROM study WHERE patient_fk = $1),
         num_instances = (SELECT COALESCE(SUM(num_instances), 0) FROM study
                          WHERE patient_fk = $1)
     WHERE id = $1 RETURNING num_studies";

/// Deletes patient `$1`.
pub(crate) const DELETE_PATIENT: &str = "DELETE FROM patient WHERE id = $1";

/// Deletes the instance rows of study row `$1`.
pub(crate) const DELETE_STUDY_INSTANCES: &str =
    "DELETE FROM instance WHERE series_fk IN (SELECT id FROM series WHERE study_fk = $1)";

/// The largest instance row id of study row `$1` (0 without rows): the
/// check of `StudyStore::replace_study_rows` against its fence.
pub(crate) const STUDY_ROW_FENCE: &str = "SELECT COALESCE(MAX(id), 0) FROM instance
     WHERE series_fk IN (SELECT id FROM series WHERE study_fk = $1)";

/// The largest instance row id of study `$2` of partition `$1` (0 without
/// rows): `StudyStore::study_row_fence`.
pub(crate) const STUDY_ROW_FENCE_BY_UID: &str = "SELECT COALESCE(MAX(i.id), 0) FROM instance i
     JOIN series s ON s.id = i.series_fk
     JOIN study st ON st.id = s.study_fk
     WHERE st.partition_id = $1 AND st.study_uid = $2";

/// Deletes the series rows of study row `$1`.
pub(crate) const DELETE_STUDY_SERIES: &str = "DELETE FROM series WHERE study_fk = $1";

/// Deletes study row `$1`.
pub(crate) const DELETE_STUDY: &str = "DELETE FROM study WHERE id = $1";

/// Deletes the duplicates of study `$2` of partition `$1`.
pub(crate) const DELETE_STUDY_DUPLICATES: &str =
    "DELETE FROM duplicate WHERE partition_id = $1 AND study_uid = $2";

/// Marks study storage row `$1` as a deletion's tombstone.
pub(crate) const MARK_DELETING: &str = "UPDATE study_storage SET state = 'deleting' WHERE id = $1";

/// Abandons at `$1` the pending edit of study `$3` of partition `$2`.
pub(crate) const ABANDON_EDIT: &str =
    "UPDATE study_edit SET status = 'abandoned', completed_at = $1
     WHERE partition_id = $2 AND study_uid = $3 AND status = 'pending'";

/// The tombstone of study `$2` of partition `$1` with the time of its
/// deletion (`since`).
pub(crate) const DELETING_STUDY: &str =
    "SELECT ss.filesystem_id, p.folder, ss.date_folder, ss.study_uid,
            (SELECT MAX(a.at) FROM audit_log a
             WHERE a.partition_id = ss.partition_id AND a.study_uid = ss.study_uid
               AND a.action = 'study.delete') AS since
     FROM study_storage ss JOIN partition p ON p.id = ss.partition_id
     WHERE ss.partition_id = $1 AND ss.study_uid = $2 AND ss.state = 'deleting'
       AND ss.filesystem_id IS NOT NULL";

/// Removes tombstone `$1` unless a study row or work item refers to it.
pub(crate) const REMOVE_TOMBSTONE: &str = "DELETE FROM study_storage WHERE id = $1
       AND NOT EXISTS (SELECT 1 FROM study WHERE study_storage_id = $1)
       AND NOT EXISTS (SELECT 1 FROM work_queue WHERE study_storage_id = $1)";

/// Turns tombstone `$1` back into an ordinary study storage row.
pub(crate) const REVIVE_TOMBSTONE: &str = "UPDATE study_storage SET state = 'idle' WHERE id = $1";

/// Appends an audit entry (`$1` at ... `$6` details).
pub(crate) const INSERT_AUDIT: &str =
    "INSERT INTO audit_log (at, actor, action, partition_id, study_uid, details)
     VALUES ($1, $2, $3, $4, $5, $6)";

/// The audit entries about study `$2` of partition `$1`, oldest first.
pub(crate) const AUDIT_LOG: &str = "SELECT at, actor, action, details FROM audit_log
     WHERE partition_id = $1 AND study_uid = $2 ORDER BY at, id";

/// Audit entries at or after `$1`, of action `$2` (any when empty), about
/// study `$3` (any when empty), oldest first, at most `$4`.
pub(crate) const AUDIT_ENTRIES: &str =
    "SELECT at, actor, action, partition_id, study_uid, details FROM audit_log
     WHERE at >= $1 AND ($2 = '' OR action = $2) AND ($3 = '' OR study_uid = $3)
     ORDER BY at, id LIMIT $4";

/// The edits of study `$2` of partition `$1` (only the pending one when
/// `$3`), oldest first.
pub(crate) const EDITS: &str =
    "SELECT id, actor, reason, status, requested_at, completed_at FROM study_edit
     WHERE partition_id = $1 AND study_uid = $2 AND (NOT $3 OR status = 'pending')
     ORDER BY id";

/// The changes of edit `$1`.
pub(crate) const EDIT_CHANGES: &str =
    "SELECT attribute, old_value, new_value FROM study_edit_change WHERE edit_id = $1";

/// Records one change (`$2` attribute, `$3` old, `$4` new) of edit `$1`.
pub(crate) const INSERT_EDIT_CHANGE: &str =
    "INSERT INTO study_edit_change (edit_id, attribute, old_value, new_value)
     VALUES ($1, $2, $3, $4)";

/// The key of patient row `$1`.
pub(crate) const PATIENT_KEY: &str =
    "SELECT patient_id, issuer_of_patient_id FROM patient WHERE id = $1";

/// Creates patient (`$1` ID, `$2` issuer) in the partition of patient row
/// `$3` with its demographics, unless it exists.
pub(crate) const COPY_PATIENT: &str =
    "INSERT INTO patient (partition_id, patient_id, issuer_of_patient_id, patient_name,
                          birth_date, sex)
     SELECT partition_id, $1, $2, patient_name, birth_date, sex FROM patient WHERE id = $3
     ON CONFLICT (partition_id, patient_id, issuer_of_patient_id) DO NOTHING";

/// Moves study row `$2` to patient row `$1`.
pub(crate) const MOVE_STUDY: &str = "UPDATE study SET patient_fk = $1 WHERE id = $2";

/// Stamps study row `$2` changed at `$1` and recomputes its size.
pub(crate) const RESIZE_STUDY: &str = "UPDATE study SET updated_at = $1,
         size_bytes = (SELECT CAST(COALESCE(SUM(i.file_size), 0) AS BIGINT) FROM instance i
                       JOIN series se ON se.id = i.series_fk WHERE se.study_fk = $2)
     WHERE id = $2";

/// A compression's record of one recoded file: instance `$5` of study row
/// `$6` in partition `$4` takes transfer syntax `$1`, size `$2` and digest
/// `$3`, only while its row still holds digest `$7` (the file that was
/// recoded).
pub(crate) const RECORD_RECODED: &str =
    "UPDATE instance SET transfer_syntax_uid = $1, file_size = $2, digest = $3
     WHERE partition_id = $4 AND sop_instance_uid = $5
       AND series_fk IN (SELECT id FROM series WHERE study_fk = $6) AND digest = $7";

/// Recovery's look-up (`IndexStore::remove_instance_row`): the row of SOP
/// Instance `$2` of partition `$1` only while it names exactly the file
/// `$3` filesystem, `$4` partition folder, `$5` date folder, `$6` study,
/// `$7` series, `$8` size, `$9` digest; its `id`, `series_id`, `study_id`.
pub(crate) const INSTANCE_ROW_OF_FILE: &str = "SELECT i.id, se.id AS series_id, st.id AS study_id
     FROM instance i
     JOIN series se ON se.id = i.series_fk
     JOIN study st ON st.id = se.study_fk
     JOIN study_storage ss ON ss.id = st.study_storage_id
     JOIN partition p ON p.id = ss.partition_id
     WHERE i.partition_id = $1 AND i.sop_instance_uid = $2 AND ss.filesystem_id = $3
       AND p.folder = $4 AND ss.date_folder = $5 AND st.study_uid = $6 AND se.series_uid = $7
       AND i.file_size = $8 AND i.digest = $9";

/// Deletes instance row `$1`.
pub(crate) const DELETE_INSTANCE: &str = "DELETE FROM instance WHERE id = $1";

/// Recounts series row `$1` from its instance rows; returns
/// `num_instances`.
pub(crate) const RECOUNT_SERIES: &str = "UPDATE series SET
         num_instances = (SELECT COUNT(*) FROM instance WHERE series_fk = $1)
     WHERE id = $1 RETURNING num_instances";

/// Deletes series row `$1`.
pub(crate) const DELETE_SERIES: &str = "DELETE FROM series WHERE id = $1";

/// Recounts study row `$1` from its series and instance rows, updated at
/// `$2`; returns `num_instances`.
pub(crate) const RECOUNT_STUDY: &str = "UPDATE study SET
         num_series = (SELECT COUNT(*) FROM series WHERE study_fk = $1),
         num_instances = (SELECT CAST(COALESCE(SUM(num_instances), 0) AS BIGINT) FROM series
                          WHERE study_fk = $1),
         size_bytes = (SELECT CAST(COALESCE(SUM(i.file_size), 0) AS BIGINT) FROM instance i
                       JOIN series se ON se.id = i.series_fk WHERE se.study_fk = $1),
         updated_at = $2
     WHERE id = $1 RETURNING num_instances";

/// The distinct modalities (`value`; '' for none) of study row `$1`'s
/// series.
pub(crate) const STUDY_MODALITIES: &str =
    "SELECT DISTINCT COALESCE(modality, '') AS value FROM series WHERE study_fk = $1";

/// The distinct SOP classes (`value`) of study row `$1`'s instances.
pub(crate) const STUDY_SOP_CLASSES: &str = "SELECT DISTINCT i.sop_class_uid AS value
     FROM instance i JOIN series se ON se.id = i.series_fk WHERE se.study_fk = $1";

/// Sets study row `$3`'s modalities to `$1` and SOP classes to `$2`
/// (`\`-joined, sorted).
pub(crate) const SET_STUDY_SUMMARIES: &str =
    "UPDATE study SET modalities_in_study = $1, sop_classes_in_study = $2 WHERE id = $3";

/// Completes edit `$2` at `$1`.
pub(crate) const COMPLETE_EDIT: &str =
    "UPDATE study_edit SET status = 'completed', completed_at = $1 WHERE id = $2";

/// The patient column `attribute` is stored in, if it is one of the
/// demographics (the patient key moves the study instead).
pub(crate) fn patient_column(
    attribute: crate::db::studies::EditableAttribute,
) -> Option<&'static str> {
    use crate::db::studies::EditableAttribute as A;
    Some(match attribute {
        A::PatientName => "patient_name",
        A::PatientBirthDate => "birth_date",
        A::PatientSex => "sex",
        _ => return None,
    })
}

/// The study column `attribute` is stored in, if it is a study attribute.
pub(crate) fn study_column(
    attribute: crate::db::studies::EditableAttribute,
) -> Option<&'static str> {
    use crate::db::studies::EditableAttribute as A;
    Some(match attribute {
        A::StudyDate => "study_date",
        A::StudyTime => "study_time",
        A::AccessionNumber => "accession_number",
        A::ReferringPhysicianName => "referring_physician_name",
        A::StudyDescription => "study_description",
        A::StudyId => "study_id",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    /// Every shared statement.
    pub(crate) const ALL: &[&str] = &[
        super::ENSURE_PARTITION,
        super::PARTITION,
        super::ENSURE_FILESYSTEM,
        super::FILESYSTEMS,
        super::SEED_FILESYSTEM,
        super::FILESYSTEM_AT,
        super::UPDATE_FILESYSTEM,
        super::RECORD_MARKER,
        super::MARKER,
        super::HELD_BYTES,
        super::SWITCH_STUDY_LOCATION,
        super::MIGRATION_CANDIDATES,
        super::MIGRATION_QUEUED_BYTES,
        super::TOUCH_STUDY,
        super::ENSURE_DEVICE,
        super::REGISTER_DEVICE,
        super::DELETE_DEVICE,
        super::DEVICE,
        super::DEVICES,
        super::STUDY_LOCATION,
        super::STUDY_DELETIONS,
        super::INGEST_LOOKUP,
        super::INSTANCE,
        super::COUNTS,
        super::RECORD_DUPLICATE,
        super::DUPLICATES,
        super::STUDY,
        super::STUDY_INSTANCES,
        super::STUDY_DUPLICATES,
        super::STUDY_KEYS,
        super::RECOUNT_PATIENT,
        super::DELETE_PATIENT,
        super::DELETE_STUDY_INSTANCES,
        super::STUDY_ROW_FENCE,
        super::STUDY_ROW_FENCE_BY_UID,
        super::DELETE_STUDY_SERIES,
        super::DELETE_STUDY,
        super::DELETE_STUDY_DUPLICATES,
        super::HOLD_FOR_RECONCILE,
        super::RECONCILE_ENTRIES,
        super::RECONCILE_ENTRY,
        super::DELETE_RECONCILE_ENTRY,
        super::DELETE_STUDY_RECONCILE,
        super::MARK_DELETING,
        super::ABANDON_EDIT,
        super::DELETING_STUDY,
        super::REMOVE_TOMBSTONE,
        super::REVIVE_TOMBSTONE,
        super::INSERT_AUDIT,
        super::AUDIT_LOG,
        super::AUDIT_ENTRIES,
        super::EDITS,
        super::EDIT_CHANGES,
        super::INSERT_EDIT_CHANGE,
        super::PATIENT_KEY,
        super::COPY_PATIENT,
        super::MOVE_STUDY,
        super::RESIZE_STUDY,
        super::COMPLETE_EDIT,
        crate::db::archive::RECORD_ARCHIVE,
        crate::db::archive::ARCHIVE_ENTRY,
        crate::db::archive::FORGET_ARCHIVE,
        crate::db::archive::INSERT_ARCHIVE_ROOT,
        crate::db::archive::ARCHIVE_ROOT_MARKER,
        crate::db::archive::ARCHIVE_CANDIDATES,
        crate::db::archive::PURGE_CANDIDATES,
        crate::db::archive::ONLINE_STUDIES,
        crate::db::archive::SWITCH_TO_NEARLINE,
        crate::db::archive::SWITCH_FROM_NEARLINE,
        super::RECORD_RECODED,
        super::INSTANCE_ROW_OF_FILE,
        super::DELETE_INSTANCE,
        super::RECOUNT_SERIES,
        super::DELETE_SERIES,
        super::RECOUNT_STUDY,
        super::STUDY_MODALITIES,
        super::STUDY_SOP_CLASSES,
        super::SET_STUDY_SUMMARIES,
    ];

    /// The placeholders `$1..$n` in order of first appearance, so SQLite
    /// (which numbers `$name` parameters that way) binds them as
    /// PostgreSQL does.
    #[test]
    fn placeholders_first_appear_in_order() {
        for sql in ALL {
            let mut seen = Vec::new();
            let mut rest = *sql;
            while let Some(at) = rest.find('$') {
                rest = &rest[at + 1..];
                let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
                let n: usize = digits.parse().expect("a numbered placeholder");
                if !seen.contains(&n) {
                    seen.push(n);
                }
            }
            let expected: Vec<usize> = (1..=seen.len()).collect();
            assert_eq!(seen, expected, "placeholders of {sql}");
        }
    }

    /// SQLite prepares every statement against the real schema and numbers
    /// its placeholders as their digits say.
    #[cfg(feature = "sqlite")]
    #[test]
    fn sqlite_prepares_every_statement() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("index.db");
        drop(crate::db::sqlite::SqliteIndex::open(&path).expect("open"));
        let conn = rusqlite::Connection::open(&path).expect("connect");
        for sql in ALL {
            let stmt = conn.prepare(sql).unwrap_or_else(|e| panic!("{e}: {sql}"));
            for n in 1..=stmt.parameter_count() {
                assert_eq!(
                    stmt.parameter_index(&format!("${n}")).expect("index"),
                    Some(n),
                    "placeholder ${n} of {sql}"
                );
            }
        }
    }
}
