//! The common batch in one statement.
//!
//! Most batches only add: new instances, no SOP Instance UID twice, no study
//! changing patient. Their counters then follow from which studies and
//! series are new, so every row can be written once with its counters
//! (patients, study storages, studies, series, instances) and the
//! StudyProcess items appended (one per study, by migration 0011's
//! `imageserver_append_works`), all in one statement: BEGIN, the statement,
//! COMMIT, where the general path ([`super::insert_batch`]) takes four
//! statements plus one per further study's item, and writes the patient,
//! study and series rows twice.
//!
//! What is new is read from the statement's snapshot, taken before it
//! waits for any lock. The statement checks itself and returns what it
//! found; any difference makes the attempt an [`TxError::Optimism`]
//! failure, rolled back and run again at once on the general path:
//! - a study or series new in the snapshot and there when locked (or the
//!   reverse: deleted meanwhile), seen from `xmax = 0` in RETURNING;
//! - an instance already indexed (`ON CONFLICT DO NOTHING` leaves it out of
//!   RETURNING): a replacement, which needs the general path's recount;
//! - a study whose row, once locked, names another patient, or a series
//!   whose modality changes (the `DO UPDATE … WHERE` guards leave them out
//!   of RETURNING): both need a recount or a rebuilt summary.
//!
//! The study summaries (SOP classes, modalities) are merged into the values
//! of the locked row, so a concurrent writer's additions stay. The
//! deletions are read for each study by migration 0011's
//! `imageserver_study_deletions`, with a snapshot of its own taken after
//! the study's storage row was locked, as the general path's separate
//! statement reads them. The locks are taken in the general path's order:
//! patients, study storages, studies, series, instances (each level in key
//! order), then the appends' (in study order).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use sqlx::{PgConnection, Row};

use super::{
    file_size, refuse_if_deleted, text, warn_if_elsewhere, Indexed, InstanceKey, PatientKey,
    SeriesRow, StorageIds, StudyKey, StudyRow, TxError,
};
use crate::db::postgres::work;
use crate::db::rows::joined;
use crate::model::work::NewWorkItem;
use crate::model::{InsertOutcome, InstanceRecord, StudyDeletions};

/// A study summary column (`\`-joined distinct values) merged with the
/// values the batch adds: the union, sorted byte-wise (as SQLite's and the
/// general way's `joined`), empty values dropped.
macro_rules! summary_merge {
    ($column:literal) => {
        concat!(
            "(SELECT COALESCE(string_agg(v, '\\' ORDER BY v), '')
              FROM (SELECT DISTINCT v COLLATE \"C\" AS v
                    FROM unnest(string_to_array(study.",
            $column,
            ", '\\') || string_to_array(excluded.",
            $column,
            ", '\\')) AS v
                    WHERE v <> '') m)"
        )
    };
}

/// The statement, with `$append` added to its CTEs and `$appended` to its
/// result.
macro_rules! single_sql {
    ($append:expr, $appended:expr) => {
        concat!(
            "WITH pa_in AS (
                 SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::text[],
                                      $5::text[], $6::text[], $7::bigint[])
                     WITH ORDINALITY AS t(partition_id, patient_id, issuer, name, birth, sex,
                                          instances, n)),
             st_in AS (
                 SELECT * FROM UNNEST($8::bigint[], $9::text[], $10::bigint[], $11::bigint[],
                                      $12::text[], $13::text[], $14::text[], $15::text[],
                                      $16::text[], $17::text[], $18::text[], $19::text[],
                                      $20::bigint[], $21::bigint[], $22::text[], $23::text[])
                     WITH ORDINALITY AS t(partition_id, study_uid, patient_n, filesystem_id,
                                          date_folder, study_date, study_time, accession_number,
                                          study_id, study_description, referring_physician_name,
                                          specific_character_set, instances, size, classes,
                                          modalities, n)),
             se_in AS (
                 SELECT * FROM UNNEST($24::bigint[], $25::text[], $26::text[], $27::int4[],
                                      $28::text[], $29::text[], $30::text[], $31::text[],
                                      $32::bigint[])
                     WITH ORDINALITY AS t(study_n, series_uid, modality, series_number,
                                          series_description, body_part_examined, series_date,
                                          series_time, instances, n)),
             st_old AS (
                 SELECT i.n, s.id FROM st_in i
                 JOIN study s ON s.partition_id = i.partition_id AND s.study_uid = i.study_uid),
             se_old AS (
                 SELECT i.n, EXISTS (SELECT 1 FROM st_old o JOIN series x ON x.study_fk = o.id
                                     WHERE o.n = i.study_n AND x.series_uid = i.series_uid)
                        AS existed
                 FROM se_in i),
             st_d AS (
                 SELECT i.n, i.patient_n, o.id IS NULL AS new_study,
                        (SELECT COUNT(*) FROM se_in s JOIN se_old so ON so.n = s.n
                         WHERE s.study_n = i.n AND NOT so.existed) AS new_series
                 FROM st_in i LEFT JOIN st_old o ON o.n = i.n),
             pa AS (
                 INSERT INTO patient
                     (partition_id, patient_id, issuer_of_patient_id, patient_name, birth_date,
                      sex, num_studies, num_series, num_instances)
                 SELECT p.partition_id, p.patient_id, p.issuer, p.name, p.birth, p.sex,
                        (SELECT COUNT(*) FROM st_d d WHERE d.patient_n = p.n AND d.new_study),
                        (SELECT COALESCE(SUM(d.new_series), 0)::BIGINT FROM st_d d
                         WHERE d.patient_n = p.n),
                        p.instances
                 FROM pa_in p ORDER BY p.n
                 ON CONFLICT (partition_id, patient_id, issuer_of_patient_id) DO UPDATE SET ",
            patient_merge!(),
            ",
                     num_studies = patient.num_studies + excluded.num_studies,
                     num_series = patient.num_series + excluded.num_series,
                     num_instances = patient.num_instances + excluded.num_instances
                 RETURNING id, partition_id, patient_id, issuer_of_patient_id),
             ss AS (
                 INSERT INTO study_storage
                     (partition_id, study_uid, filesystem_id, date_folder, created_at)
                 SELECT i.partition_id, i.study_uid, i.filesystem_id, i.date_folder, $33
                 FROM st_in i
                 WHERE (SELECT COUNT(*) FROM pa) >= 0
                 ORDER BY i.n
                 ON CONFLICT (partition_id, study_uid) DO UPDATE
                 SET filesystem_id =
                         COALESCE(study_storage.filesystem_id, excluded.filesystem_id),
                     date_folder = CASE WHEN study_storage.filesystem_id IS NULL
                                        THEN excluded.date_folder
                                        ELSE study_storage.date_folder END
                 RETURNING id, partition_id, study_uid, filesystem_id, date_folder),
             st AS (
                 INSERT INTO study
                     (partition_id, patient_fk, study_storage_id, study_uid, study_date,
                      study_time, accession_number, study_id, study_description,
                      referring_physician_name, specific_character_set, modalities_in_study,
                      sop_classes_in_study, num_series, num_instances, size_bytes, created_at,
                      updated_at)
                 SELECT i.partition_id, pa.id, ss.id, i.study_uid, i.study_date, i.study_time,
                        i.accession_number, i.study_id, i.study_description,
                        i.referring_physician_name, i.specific_character_set, i.modalities,
                        i.classes, d.new_series, i.instances, i.size, $33, $33
                 FROM st_in i
                 JOIN st_d d ON d.n = i.n
                 JOIN pa_in p ON p.n = i.patient_n
                 JOIN pa ON pa.partition_id = p.partition_id AND pa.patient_id = p.patient_id
                        AND pa.issuer_of_patient_id = p.issuer
                 JOIN ss ON ss.partition_id = i.partition_id AND ss.study_uid = i.study_uid
                 ORDER BY i.n
                 ON CONFLICT (partition_id, study_uid) DO UPDATE SET ",
            study_merge!(),
            ",
                     modalities_in_study = ",
            summary_merge!("modalities_in_study"),
            ",
                     sop_classes_in_study = ",
            summary_merge!("sop_classes_in_study"),
            ",
                     num_series = study.num_series + excluded.num_series,
                     num_instances = study.num_instances + excluded.num_instances,
                     size_bytes = study.size_bytes + excluded.size_bytes,
                     updated_at = excluded.updated_at
                 WHERE study.patient_fk = excluded.patient_fk
                 RETURNING id, partition_id, study_uid, (xmax = 0) AS inserted),
             se AS (
                 INSERT INTO series
                     (study_fk, series_uid, modality, series_number, series_description,
                      body_part_examined, series_date, series_time, num_instances)
                 SELECT st.id, i.series_uid, i.modality, i.series_number, i.series_description,
                        i.body_part_examined, i.series_date, i.series_time, i.instances
                 FROM se_in i
                 JOIN st_in t ON t.n = i.study_n
                 JOIN st ON st.partition_id = t.partition_id AND st.study_uid = t.study_uid
                 ORDER BY i.n
                 ON CONFLICT (study_fk, series_uid) DO UPDATE SET ",
            series_merge!(),
            ",
                     num_instances = series.num_instances + excluded.num_instances
                 WHERE series.modality IS NULL OR excluded.modality IS NULL
                       OR series.modality = excluded.modality
                 RETURNING id, study_fk, series_uid, (xmax = 0) AS inserted),
             ins AS (
                 INSERT INTO instance
                     (partition_id, series_fk, sop_instance_uid, sop_class_uid, instance_number,
                      transfer_syntax_uid, file_size, digest, source_ae, received_at)
                 SELECT i.p, se.id, i.uid, i.cls, i.num, i.ts, i.sz, i.dg, i.ae, $33
                 FROM UNNEST($34::bigint[], $35::bigint[], $36::text[], $37::text[],
                             $38::int4[], $39::text[], $40::bigint[], $41::text[], $42::text[])
                      WITH ORDINALITY AS i(p, series_n, uid, cls, num, ts, sz, dg, ae, n)
                 JOIN se_in s ON s.n = i.series_n
                 JOIN st_in t ON t.n = s.study_n
                 JOIN st ON st.partition_id = t.partition_id AND st.study_uid = t.study_uid
                 JOIN se ON se.study_fk = st.id AND se.series_uid = s.series_uid
                 ORDER BY i.n
                 ON CONFLICT (partition_id, sop_instance_uid) DO NOTHING
                 RETURNING 1)",
            $append,
            " SELECT ss.id, ss.partition_id, ss.study_uid, ss.filesystem_id, ss.date_folder,
                     d.deleting, d.deletions, d.filesystem AS filesystem_now,
                     (SELECT COUNT(*) FROM pa) AS patients,
                     (SELECT COUNT(*) FROM st) AS studies,
                     (SELECT COUNT(*) FROM st
                      JOIN st_in i ON i.partition_id = st.partition_id
                                  AND i.study_uid = st.study_uid
                      JOIN st_d ON st_d.n = i.n
                      WHERE st.inserted <> st_d.new_study) AS studies_off,
                     (SELECT COUNT(*) FROM se) AS series,
                     (SELECT COUNT(*) FROM se
                      JOIN st ON st.id = se.study_fk
                      JOIN st_in t ON t.partition_id = st.partition_id
                                  AND t.study_uid = st.study_uid
                      JOIN se_in i ON i.study_n = t.n AND i.series_uid = se.series_uid
                      JOIN se_old o ON o.n = i.n
                      WHERE se.inserted = o.existed) AS series_off,
                     (SELECT COUNT(*) FROM ins) AS instances",
            $appended,
            " FROM ss CROSS JOIN LATERAL imageserver_study_deletions(ss.partition_id, ss.study_uid) d"
        )
    };
}

/// A batch [`super::insert_batch`] may index in one statement, as its
/// columns.
pub(super) struct Single<'a> {
    patients: &'a BTreeMap<PatientKey, [Option<String>; 3]>,
    studies: &'a BTreeMap<StudyKey, StudyRow>,
    series: &'a BTreeMap<(StudyKey, String), SeriesRow>,
    /// Each instance key, with the index of its record.
    instances: BTreeMap<InstanceKey, usize>,
}

impl<'a> Single<'a> {
    /// The batch folded into `patients`, `studies` and `series`, when it
    /// can be indexed in one statement: no SOP Instance UID twice and no
    /// study given two patients. Whether its instances are new is for the
    /// statement to find out.
    pub(super) fn of(
        batch: &[InstanceRecord],
        patients: &'a BTreeMap<PatientKey, [Option<String>; 3]>,
        studies: &'a BTreeMap<StudyKey, StudyRow>,
        series: &'a BTreeMap<(StudyKey, String), SeriesRow>,
    ) -> Option<Single<'a>> {
        if studies.values().any(|s| s.patients_seen.len() != 1) {
            return None;
        }
        let mut instances = BTreeMap::new();
        for (i, r) in batch.iter().enumerate() {
            let key = (
                r.partition.0,
                r.instance.sop_instance_uid.as_str().to_string(),
            );
            if instances.insert(key, i).is_some() {
                return None;
            }
        }
        Some(Single {
            patients,
            studies,
            series,
            instances,
        })
    }

    /// Runs the statement (see the module doc) and returns what
    /// [`super::insert_batch`] does.
    pub(super) async fn run(
        self,
        conn: &mut PgConnection,
        batch: &[InstanceRecord],
        storages: &BTreeMap<StudyKey, &InstanceRecord>,
        follow_ups: &[NewWorkItem],
        now: i64,
    ) -> Result<Indexed, TxError> {
        let Single {
            patients,
            studies,
            series,
            instances,
        } = self;
        let patient_n: HashMap<&PatientKey, i64> = patients.keys().zip(1..).collect();
        let study_n: HashMap<&StudyKey, i64> = studies.keys().zip(1..).collect();
        let series_n: HashMap<(&StudyKey, &str), i64> = series
            .keys()
            .map(|(study, uid)| (study, uid.as_str()))
            .zip(1..)
            .collect();

        // Per level, what the batch adds.
        let mut sizes = Vec::with_capacity(batch.len());
        let mut patient_instances: HashMap<&PatientKey, i64> = HashMap::new();
        let mut study_added: HashMap<&StudyKey, (i64, i64, BTreeSet<String>)> = HashMap::new();
        let mut series_instances: HashMap<(&StudyKey, &str), i64> = HashMap::new();
        let mut record_series = Vec::with_capacity(batch.len());
        for r in batch {
            let size = file_size(&r.instance)?;
            sizes.push(size);
            let key = (r.partition.0, r.study.study_uid.as_str().to_string());
            let (study_key, study) = studies
                .get_key_value(&key)
                .ok_or(TxError::Conflict("a record's study was not folded"))?;
            *patient_instances.entry(&study.patient).or_default() += 1;
            let added = study_added.entry(study_key).or_default();
            added.0 += 1;
            added.1 += size;
            let class = r.instance.sop_class_uid.as_str();
            if !class.is_empty() {
                added.2.insert(class.to_string());
            }
            let series_key = (study_key, r.series.series_uid.as_str());
            *series_instances.entry(series_key).or_default() += 1;
            record_series.push(series_n[&series_key]);
        }

        let mut pa: (Vec<i64>, Vec<&str>, Vec<&str>) = Default::default();
        let mut pa_columns: [Vec<Option<&str>>; 3] = Default::default();
        let mut pa_instances = Vec::with_capacity(patients.len());
        for (key, values) in patients {
            pa.0.push(key.0);
            pa.1.push(key.1.as_str());
            pa.2.push(key.2.as_str());
            for (column, value) in pa_columns.iter_mut().zip(values) {
                column.push(value.as_deref());
            }
            pa_instances.push(patient_instances.get(key).copied().unwrap_or(0));
        }

        let n = studies.len();
        let (mut st_partition, mut st_uid, mut st_patient, mut st_fs, mut st_folder) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        let mut st_columns: [Vec<Option<&str>>; 7] = Default::default();
        let (mut st_instances, mut st_sizes, mut st_classes, mut st_modalities) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        let mut modalities: HashMap<&StudyKey, BTreeSet<String>> = HashMap::new();
        for ((study_key, _), row) in series {
            if let Some(modality) = &row.attrs[0] {
                modalities
                    .entry(study_key)
                    .or_default()
                    .insert(modality.clone());
            }
        }
        for (key, row) in studies {
            let record = storages
                .get(key)
                .ok_or(TxError::Conflict("a study's location was not folded"))?;
            st_partition.push(key.0);
            st_uid.push(key.1.as_str());
            st_patient.push(patient_n[&row.patient]);
            st_fs.push(record.location.filesystem.0);
            st_folder.push(record.location.date_folder.replace('\0', ""));
            for (column, value) in st_columns.iter_mut().zip(&row.attrs) {
                column.push(value.as_deref());
            }
            let (instances, size, classes) = study_added.remove(key).unwrap_or_default();
            st_instances.push(instances);
            st_sizes.push(size);
            st_classes.push(joined(&classes));
            st_modalities.push(modalities.get(key).map(joined).unwrap_or_default());
        }

        let m = series.len();
        let (mut se_study, mut se_uid, mut se_number, mut se_instances) = (
            Vec::with_capacity(m),
            Vec::with_capacity(m),
            Vec::with_capacity(m),
            Vec::with_capacity(m),
        );
        let mut se_columns: [Vec<Option<&str>>; 5] = Default::default();
        for ((study_key, uid), row) in series {
            se_study.push(study_n[study_key]);
            se_uid.push(uid.as_str());
            se_number.push(row.series_number);
            for (column, value) in se_columns.iter_mut().zip(&row.attrs) {
                column.push(value.as_deref());
            }
            se_instances.push(
                series_instances
                    .get(&(study_key, uid.as_str()))
                    .copied()
                    .unwrap_or(0),
            );
        }

        let k = instances.len();
        let mut ins: (Vec<i64>, Vec<i64>, Vec<&str>, Vec<&str>) = Default::default();
        let (mut number, mut syntax, mut size, mut digest, mut source) = (
            Vec::with_capacity(k),
            Vec::with_capacity(k),
            Vec::with_capacity(k),
            Vec::with_capacity(k),
            Vec::with_capacity(k),
        );
        for (key, record_idx) in &instances {
            let i = &batch[*record_idx].instance;
            ins.0.push(key.0);
            ins.1.push(record_series[*record_idx]);
            ins.2.push(key.1.as_str());
            ins.3.push(i.sop_class_uid.as_str());
            number.push(i.instance_number);
            syntax.push(i.transfer_syntax_uid.as_str());
            size.push(sizes[*record_idx]);
            digest.push(i.digest.replace('\0', ""));
            source.push(text(i.source_ae.as_deref()));
        }

        // The follow-up items (one per study), appended by the statement to
        // the study storage rows it writes, in study order; when one names
        // no study of the batch, the caller appends them all.
        let mut append_studies = Vec::with_capacity(follow_ups.len());
        for item in follow_ups {
            let Some(n) = item
                .study_uid
                .as_ref()
                .and_then(|uid| study_n.get(&(item.partition.0, uid.as_str().to_string())))
            else {
                append_studies.clear();
                break;
            };
            append_studies.push(*n);
        }
        let append = !append_studies.is_empty() && append_studies.is_sorted();
        let sql = if append {
            single_sql!(
                ", wq AS (
                     SELECT w.item_id FROM imageserver_append_works(
                         $43::bigint,
                         ARRAY(SELECT ss.id
                               FROM UNNEST($44::bigint[]) WITH ORDINALITY AS a(study_n, k)
                               JOIN st_in t ON t.n = a.study_n
                               JOIN ss ON ss.partition_id = t.partition_id
                                      AND ss.study_uid = t.study_uid
                               ORDER BY a.k),
                         $45, $46, $47, $48, $49, $50, $51, $52, $53, $54, $55, $56, $57, $58,
                         $59, $60) w
                     WHERE (SELECT COUNT(*) FROM ins) >= 0)",
                ", (SELECT COUNT(*) FROM wq) AS appended"
            )
        } else {
            single_sql!("", "")
        };
        let query = sqlx::query(sql)
            .bind(&pa.0)
            .bind(&pa.1)
            .bind(&pa.2)
            .bind(&pa_columns[0])
            .bind(&pa_columns[1])
            .bind(&pa_columns[2])
            .bind(&pa_instances)
            .bind(&st_partition)
            .bind(&st_uid)
            .bind(&st_patient)
            .bind(&st_fs)
            .bind(&st_folder)
            .bind(&st_columns[0])
            .bind(&st_columns[1])
            .bind(&st_columns[2])
            .bind(&st_columns[3])
            .bind(&st_columns[4])
            .bind(&st_columns[5])
            .bind(&st_columns[6])
            .bind(&st_instances)
            .bind(&st_sizes)
            .bind(&st_classes)
            .bind(&st_modalities)
            .bind(&se_study)
            .bind(&se_uid)
            .bind(&se_columns[0])
            .bind(&se_number)
            .bind(&se_columns[1])
            .bind(&se_columns[2])
            .bind(&se_columns[3])
            .bind(&se_columns[4])
            .bind(&se_instances)
            .bind(now)
            .bind(&ins.0)
            .bind(&ins.1)
            .bind(&ins.2)
            .bind(&ins.3)
            .bind(&number)
            .bind(&syntax)
            .bind(&size)
            .bind(&digest)
            .bind(&source);
        let rows = if append {
            work::bind_appends(
                query.bind(work::APPEND_LOCK).bind(&append_studies),
                follow_ups,
            )
            .fetch_all(&mut *conn)
            .await?
        } else {
            query.fetch_all(&mut *conn).await?
        };

        // What the statement found against what it assumed.
        let Some(first) = rows.first() else {
            return Err(TxError::Optimism("no study storage row was returned"));
        };
        let count = |column: &str| -> Result<usize, TxError> {
            Ok(usize::try_from(first.try_get::<i64, _>(column)?).unwrap_or(usize::MAX))
        };
        if count("patients")? != patients.len() || rows.len() != studies.len() {
            return Err(TxError::Optimism(
                "a patient or storage row was not returned",
            ));
        }
        if count("studies")? != studies.len() || count("studies_off")? != 0 {
            return Err(TxError::Optimism(
                "a study changed patient, or was created or deleted meanwhile",
            ));
        }
        if count("series")? != series.len() || count("series_off")? != 0 {
            return Err(TxError::Optimism(
                "a series changed modality, or was created or deleted meanwhile",
            ));
        }
        if count("instances")? != instances.len() {
            return Err(TxError::Optimism("an instance was indexed already"));
        }
        if append && count("appended")? != follow_ups.len() {
            return Err(TxError::Optimism("a follow-up item was not appended"));
        }

        let mut storage_ids = StorageIds::with_capacity(rows.len());
        let mut deletions: HashMap<StudyKey, StudyDeletions> = HashMap::with_capacity(rows.len());
        for row in &rows {
            let key: StudyKey = (row.try_get("partition_id")?, row.try_get("study_uid")?);
            let filesystem: Option<i64> = row.try_get("filesystem_id")?;
            let date_folder: String = row.try_get("date_folder")?;
            if let Some(record) = storages.get(&key) {
                warn_if_elsewhere(record, filesystem, &date_folder);
            }
            deletions.insert(
                key.clone(),
                StudyDeletions {
                    deleting: row.try_get("deleting")?,
                    count: u64::try_from(row.try_get::<i64, _>("deletions")?).unwrap_or(0),
                    filesystem: row
                        .try_get::<Option<i64>, _>("filesystem_now")?
                        .map(crate::model::FilesystemId),
                },
            );
            storage_ids.insert(key, row.try_get("id")?);
        }
        refuse_if_deleted(batch, |key| deletions.get(key).copied())?;
        Ok(Indexed {
            outcomes: vec![InsertOutcome::Inserted; batch.len()],
            storages: storage_ids,
            appended: append,
            one_statement: true,
        })
    }
}
