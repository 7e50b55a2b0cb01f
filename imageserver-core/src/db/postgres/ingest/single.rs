//! The common batch in one call.
//!
//! Most batches only add: new instances, no SOP Instance UID twice, no study
//! changing patient. Their counters then follow from which studies and
//! series are new, so every row can be written once with its counters
//! (patients, study storages, studies, series, instances) and the
//! StudyProcess items appended (one per study, by migration 0011's
//! `imageserver_append_works`), all in one call of migration 0013's
//! `imageserver_ingest`: BEGIN, the call, COMMIT, where the general path
//! ([`super::insert_batch`]) takes four statements plus one per further
//! study's item, and writes the patient, study and series rows twice.
//!
//! The function is a PL/pgSQL loop of one-row statements. It replaced
//! (2026-12-07) one statement of CTEs that did the same: that statement's
//! ~130 plan nodes were built and torn down on every call, 0.75–0.8 ms for
//! a batch of one instance against 0.44 ms for the function.
//!
//! What is new is read before any lock is taken. The function checks
//! itself and returns what it found; any difference makes the attempt an
//! [`TxError::Optimism`] failure, rolled back and run again at once on the
//! general path:
//! - a study or series new when read and there when locked (or the
//!   reverse: deleted meanwhile), seen from `xmax = 0` in RETURNING;
//! - an instance already indexed (`ON CONFLICT DO NOTHING` writes nothing):
//!   a replacement, which needs the general path's recount;
//! - a study whose row, once locked, names another patient, or a series
//!   whose modality changes (the `DO UPDATE … WHERE` guards write nothing):
//!   both need a recount or a rebuilt summary.
//!
//! The study summaries (SOP classes, modalities) are merged into the values
//! of the locked row, so a concurrent writer's additions stay. A study's
//! state and filesystem are those its storage row's upsert returns (the
//! latest version, locked from then on); its deletions are counted with a
//! snapshot taken after every storage row of the batch was locked, as the
//! general path's separate statement reads them. The locks are taken in the general path's order:
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

/// The call of migration 0013's `imageserver_ingest`, with the appends'
/// arguments (`$43`-`$60`, see [`work::bind_appends`]).
const INGEST_AND_APPEND: &str = "SELECT * FROM imageserver_ingest(
    $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20,
    $21, $22, $23, $24, $25, $26, $27, $28, $29, $30, $31, $32, $33, $34, $35, $36, $37, $38,
    $39, $40, $41, $42, $43, $44, $45, $46, $47, $48, $49, $50, $51, $52, $53, $54, $55, $56,
    $57, $58, $59, $60)";

/// [`INGEST_AND_APPEND`] without appends: the caller appends the items.
const INGEST: &str = "SELECT * FROM imageserver_ingest(
    $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20,
    $21, $22, $23, $24, $25, $26, $27, $28, $29, $30, $31, $32, $33, $34, $35, $36, $37, $38,
    $39, $40, $41, $42, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
    NULL, NULL, NULL, NULL, NULL, NULL)";

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
        let sql = if append { INGEST_AND_APPEND } else { INGEST };
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
                    filesystem: filesystem.map(crate::model::FilesystemId),
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
