//! The hot path on PostgreSQL: indexing a batch of instances inside one
//! transaction with a fixed number of set-based statements.
//!
//! The batch is first folded in memory, in record order, into one row per
//! patient, study storage, study, series and instance, with the semantics of
//! the SQLite backend applied record by record: later non-empty attributes
//! win and absent ones never erase known ones (`COALESCE`); the first
//! instance of a study fixes its location; a study follows the patient of
//! its latest record; a SOP Instance UID seen twice is inserted then
//! replaced. Each level is then one multi-row upsert over `UNNEST` arrays
//! (`INSERT … ON CONFLICT … DO UPDATE … RETURNING`).
//!
//! Two ways: a batch that only adds (new instances, no study changing
//! patient; most batches) is first tried in one statement, a call of
//! migration 0013's `imageserver_ingest`, that writes each row once with its
//! counters and appends the follow-up items ([`single`]: BEGIN, the call,
//! COMMIT). The general way, for the rest and for a
//! one-statement attempt that found its assumption wrong, takes a fixed
//! number of round trips whatever the batch's size: BEGIN, patients with
//! study storages, studies with the deletion check and their series (the
//! series join the studies' RETURNING), instances (reading the rows they
//! replace in the same statement), counters and summaries (with the
//! follow-up items: migration 0011's `imageserver_append_works`; in
//! [`flush`]), COMMIT.
//! A batch with rows to recount appends its items one call each.
//!
//! **Concurrent nodes.** The upserts lock rows in a stable order: patients,
//! then study storages (one row per study: the study's lock), then studies,
//! series and instances, each level sorted by key; existing instance rows are
//! read with `SELECT … FOR UPDATE` in key order before they are replaced. Two
//! nodes therefore wait for each other instead of deadlocking, and a study's
//! counters are only ever updated by the transaction holding its storage
//! row. The few rows outside that order (the old side of an instance that
//! moved to another study) can deadlock in theory; PostgreSQL then aborts one
//! transaction (40P01) and `PgIndex::write` retries it. An instance row that
//! another node inserted between our read and our upsert (detected from
//! `xmax = 0` in RETURNING) is a conflict: the transaction is retried, so
//! nothing is counted twice.
//!
//! Counters are kept as on SQLite: deltas for the common case, and an exact
//! recount (which also deletes rows left empty) for the rows a moved
//! instance or a study that changed patient left behind.

/// The SET list that merges a patient row's attributes in an upsert:
/// later non-empty values win, absent ones never erase (both ways share it).
macro_rules! patient_merge {
    () => {
        "patient_name = COALESCE(excluded.patient_name, patient.patient_name),
         birth_date = COALESCE(excluded.birth_date, patient.birth_date),
         sex = COALESCE(excluded.sex, patient.sex)"
    };
}

/// [`patient_merge`] for a study row's attributes.
macro_rules! study_merge {
    () => {
        "study_date = COALESCE(excluded.study_date, study.study_date),
         study_time = COALESCE(excluded.study_time, study.study_time),
         accession_number = COALESCE(excluded.accession_number, study.accession_number),
         study_id = COALESCE(excluded.study_id, study.study_id),
         study_description = COALESCE(excluded.study_description, study.study_description),
         referring_physician_name =
             COALESCE(excluded.referring_physician_name, study.referring_physician_name),
         specific_character_set =
             COALESCE(excluded.specific_character_set, study.specific_character_set)"
    };
}

/// [`patient_merge`] for a series row's attributes.
macro_rules! series_merge {
    () => {
        "modality = COALESCE(excluded.modality, series.modality),
         series_number = COALESCE(excluded.series_number, series.series_number),
         series_description = COALESCE(excluded.series_description, series.series_description),
         body_part_examined = COALESCE(excluded.body_part_examined, series.body_part_examined),
         series_date = COALESCE(excluded.series_date, series.series_date),
         series_time = COALESCE(excluded.series_time, series.series_time)"
    };
}

mod flush;
mod single;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::db::rows::{split, PatientDelta, StudyDelta};

use sqlx::{PgConnection, Row};

use super::TxError;
use crate::db::Admission;
use crate::model::work::NewWorkItem;
use crate::model::{
    InsertOutcome, InstanceAttrs, InstanceRecord, PartitionId, StudyDeletions, Uid,
};
use flush::Flush;

/// Trims DICOM padding and drops NULs; empty becomes `None`.
fn text(value: Option<&str>) -> Option<String> {
    value
        .map(|v| v.trim_matches([' ', '\0']))
        .filter(|v| !v.is_empty())
        .map(|v| v.replace('\0', ""))
}

/// An instance's file size as the index's BIGINT column holds it.
fn file_size(instance: &InstanceAttrs) -> Result<i64, TxError> {
    i64::try_from(instance.file_size).map_err(|_| {
        TxError::Sql(sqlx::Error::Encode(
            format!("file size {} out of range", instance.file_size).into(),
        ))
    })
}

/// Overwrites `into` with the values of `from` that are present.
fn merge<const N: usize>(into: &mut [Option<String>; N], from: [Option<String>; N]) {
    for (slot, value) in into.iter_mut().zip(from) {
        if value.is_some() {
            *slot = value;
        }
    }
}

type PatientKey = (i64, String, String);
pub(super) type StudyKey = (i64, String);
type SeriesKey = (i64, String);
type InstanceKey = (i64, String);

/// One study of the batch, folded.
struct StudyRow {
    storage_key: StudyKey,
    attrs: [Option<String>; 7],
    /// The patient of the latest record.
    patient: PatientKey,
    /// Every patient a record gave the study.
    patients_seen: BTreeSet<PatientKey>,
}

/// One series of the batch, folded.
#[derive(Default)]
struct SeriesRow {
    attrs: [Option<String>; 5],
    series_number: Option<i32>,
}

/// The state of an instance row: series, size, SOP class.
#[derive(Clone, PartialEq)]
struct InstanceState {
    series: i64,
    size: i64,
    class: String,
}

/// The study storage keys of a batch's studies, by partition and study UID.
pub(super) type StorageIds = HashMap<StudyKey, i64>;

/// A batch folded in memory, record by record (see the module doc).
struct Folded<'a> {
    patients: BTreeMap<PatientKey, [Option<String>; 3]>,
    /// Per study: the record that fixes its location (its first).
    storages: BTreeMap<StudyKey, &'a InstanceRecord>,
    studies: BTreeMap<StudyKey, StudyRow>,
    series: BTreeMap<(StudyKey, String), SeriesRow>,
    /// Per record: its study's key and its series UID.
    record_series: Vec<(StudyKey, String)>,
}

impl<'a> Folded<'a> {
    fn of(batch: &'a [InstanceRecord]) -> Folded<'a> {
        let mut patients: BTreeMap<PatientKey, [Option<String>; 3]> = BTreeMap::new();
        let mut storages: BTreeMap<StudyKey, &InstanceRecord> = BTreeMap::new();
        let mut studies: BTreeMap<StudyKey, StudyRow> = BTreeMap::new();
        let mut series: BTreeMap<(StudyKey, String), SeriesRow> = BTreeMap::new();
        let mut record_series = Vec::with_capacity(batch.len());
        for r in batch {
            let partition = r.partition.0;
            let p = &r.patient;
            let patient_key = (
                partition,
                p.patient_id.trim_matches([' ', '\0']).replace('\0', ""),
                text(p.issuer_of_patient_id.as_deref()).unwrap_or_default(),
            );
            merge(
                patients.entry(patient_key.clone()).or_default(),
                [
                    text(p.patient_name.as_deref()),
                    text(p.birth_date.as_deref()),
                    text(p.sex.as_deref()),
                ],
            );
            let study_key = (partition, r.study.study_uid.as_str().to_string());
            storages.entry(study_key.clone()).or_insert(r);
            let s = &r.study;
            let attrs = [
                text(s.study_date.as_deref()),
                text(s.study_time.as_deref()),
                text(s.accession_number.as_deref()),
                text(s.study_id.as_deref()),
                text(s.study_description.as_deref()),
                text(s.referring_physician_name.as_deref()),
                text(s.specific_character_set.as_deref()),
            ];
            let study = studies
                .entry(study_key.clone())
                .or_insert_with(|| StudyRow {
                    storage_key: study_key.clone(),
                    attrs: Default::default(),
                    patient: patient_key.clone(),
                    patients_seen: BTreeSet::new(),
                });
            merge(&mut study.attrs, attrs);
            study.patient = patient_key.clone();
            study.patients_seen.insert(patient_key);

            let uid = r.series.series_uid.as_str().to_string();
            let s = &r.series;
            let row = series.entry((study_key.clone(), uid.clone())).or_default();
            merge(
                &mut row.attrs,
                [
                    text(s.modality.as_deref()),
                    text(s.series_description.as_deref()),
                    text(s.body_part_examined.as_deref()),
                    text(s.series_date.as_deref()),
                    text(s.series_time.as_deref()),
                ],
            );
            if s.series_number.is_some() {
                row.series_number = s.series_number;
            }
            record_series.push((study_key, uid));
        }
        Folded {
            patients,
            storages,
            studies,
            series,
            record_series,
        }
    }
}

/// What [`insert_batch`] did.
pub(super) struct Indexed {
    /// One outcome per record.
    pub(super) outcomes: Vec<InsertOutcome>,
    /// The storage keys of the batch's studies.
    pub(super) storages: StorageIds,
    /// Whether the items of `follow_ups` were appended too (the common
    /// case: nothing to recount); when not, the caller appends them.
    pub(super) appended: bool,
    /// Whether the batch took the one-statement way ([`single`]).
    pub(super) one_statement: bool,
}

/// Indexes `batch` on `conn` (inside a transaction), with the item of
/// `follow_ups` when there is one. With `one_statement`, a batch that only
/// adds is tried in one statement ([`single`]); that attempt fails with
/// [`TxError::Optimism`] when the batch turns out not to.
pub(super) async fn insert_batch(
    conn: &mut PgConnection,
    batch: &[InstanceRecord],
    follow_ups: &[NewWorkItem],
    now: i64,
    one_statement: bool,
) -> Result<Indexed, TxError> {
    let Folded {
        patients,
        storages,
        studies,
        series: series_in,
        record_series: record_series_in,
    } = Folded::of(batch);
    if one_statement {
        if let Some(single) = single::Single::of(batch, &patients, &studies, &series_in) {
            return single.run(conn, batch, &storages, follow_ups, now).await;
        }
    }

    // ---- Patients (locked first, in key order), then the study storages:
    // the per-study locks, in key order.
    let (patient_ids, storage_ids) =
        upsert_patients_and_storages(conn, &patients, &storages, now).await?;

    // ---- Studies and series, in one statement.
    let (study_rows, series_rows) =
        upsert_studies_and_series(conn, &studies, &patient_ids, &storage_ids, &series_in, now)
            .await?;
    // The same statement read the studies' deletions after the storage
    // rows were locked: under those locks no deletion can start or finish,
    // and one that did since the records were admitted makes this a
    // conflict (retried; the rows just written roll back).
    refuse_if_deleted(batch, |key| study_rows.get(key).map(|row| row.3))?;
    let mut patient_delta: BTreeMap<i64, PatientDelta> = BTreeMap::new();
    let mut recount_patients: BTreeSet<i64> = BTreeSet::new();
    let mut study_ids: HashMap<StudyKey, i64> = HashMap::new();
    let mut study_patient: HashMap<i64, i64> = HashMap::new();
    let mut study_classes: BTreeMap<i64, BTreeSet<String>> = BTreeMap::new();
    for (key, row) in &studies {
        let (id, old_patient, old_classes, _) = study_rows
            .get(key)
            .cloned()
            .ok_or(TxError::Conflict("a study row was not returned"))?;
        let patient = patient_ids[&row.patient];
        study_ids.insert(key.clone(), id);
        study_patient.insert(id, patient);
        match old_patient {
            None => patient_delta.entry(patient).or_default().studies += 1,
            Some(old) if old != patient => {
                tracing::info!(study_uid = %key.1, "study moved to another patient");
                recount_patients.insert(old);
                recount_patients.insert(patient);
            }
            Some(_) => {}
        }
        for seen in &row.patients_seen {
            let seen = patient_ids[seen];
            if seen != patient {
                recount_patients.insert(seen);
                recount_patients.insert(patient);
            }
        }
        study_classes.insert(id, split(old_classes.as_deref().unwrap_or("")));
    }

    // ---- Series: the fold keyed by study id.
    let mut series: BTreeMap<SeriesKey, SeriesRow> = BTreeMap::new();
    for ((study_key, uid), row) in series_in {
        series.insert((study_ids[&study_key], uid), row);
    }
    let record_series_keys: Vec<SeriesKey> = record_series_in
        .into_iter()
        .map(|(study_key, uid)| (study_ids[&study_key], uid))
        .collect();
    let mut study_delta: BTreeMap<i64, StudyDelta> = BTreeMap::new();
    let mut modalities_dirty: BTreeSet<i64> = BTreeSet::new();
    let mut series_ids: HashMap<SeriesKey, i64> = HashMap::new();
    let mut series_study: HashMap<i64, i64> = HashMap::new();
    for (key, row) in &series {
        let (id, existed, old_modality) = series_rows
            .get(key)
            .cloned()
            .ok_or(TxError::Conflict("a series row was not returned"))?;
        series_ids.insert(key.clone(), id);
        series_study.insert(id, key.0);
        let modality = row.attrs[0].clone();
        if existed {
            if modality.is_some() && modality != old_modality {
                modalities_dirty.insert(key.0);
            }
        } else {
            study_delta.entry(key.0).or_default().series += 1;
            patient_delta
                .entry(study_patient[&key.0])
                .or_default()
                .series += 1;
            if modality.is_some() {
                modalities_dirty.insert(key.0);
            }
        }
    }

    // ---- Instances: each key's final state (its last record's), then in
    // one statement the existing rows read and locked in key order and
    // every key inserted or replaced.
    let mut states = Vec::with_capacity(batch.len());
    let mut finals: HashMap<InstanceKey, InstanceState> = HashMap::new();
    let mut last_record: BTreeMap<InstanceKey, usize> = BTreeMap::new();
    for (record_idx, (r, series_key)) in batch.iter().zip(&record_series_keys).enumerate() {
        let i = &r.instance;
        let key = (r.partition.0, i.sop_instance_uid.as_str().to_string());
        let size = file_size(i)?;
        let state = InstanceState {
            series: series_ids[series_key],
            size,
            class: i.sop_class_uid.as_str().to_string(),
        };
        finals.insert(key.clone(), state.clone());
        last_record.insert(key.clone(), record_idx);
        states.push((key, state));
    }
    let (existing, inserted) =
        lock_and_upsert_instances(conn, batch, &last_record, &finals, now).await?;
    let mut recount_series: BTreeSet<i64> = BTreeSet::new();
    let mut recount_studies: BTreeSet<i64> = BTreeSet::new();
    // Per key: the state before the batch and the state now.
    let mut initial: HashMap<InstanceKey, Option<InstanceState>> = HashMap::new();
    let mut current: HashMap<InstanceKey, InstanceState> = HashMap::new();
    let mut outcomes = Vec::with_capacity(batch.len());
    for (key, state) in states {
        let previous = match current.get(&key) {
            Some(previous) => Some(previous.clone()),
            None => {
                let before = existing.get(&key).map(|(state, _, _)| state.clone());
                initial.insert(key.clone(), before.clone());
                before
            }
        };
        outcomes.push(match &previous {
            Some(_) => InsertOutcome::Replaced,
            None => InsertOutcome::Inserted,
        });
        // A series this instance passed through within the batch and left:
        // recounted exactly.
        if let Some(previous) = previous.filter(|p| p.series != state.series) {
            if let Some(study) = series_study.get(&previous.series) {
                recount_series.insert(previous.series);
                recount_studies.insert(*study);
                recount_patients.insert(study_patient[study]);
            }
        }
        current.insert(key, state);
    }
    // A row we did not see when reading appeared before our upsert (another
    // node inserted it meanwhile): retried, so nothing is counted twice.
    if inserted.len() != initial.len()
        || inserted
            .iter()
            .any(|(key, inserted)| initial.get(key).map(Option::is_none) != Some(*inserted))
    {
        return Err(TxError::Conflict(
            "an instance was indexed by another writer meanwhile",
        ));
    }
    let mut classes_added: BTreeSet<i64> = BTreeSet::new();
    let mut classes_dirty: BTreeSet<i64> = BTreeSet::new();
    let mut series_delta: BTreeMap<i64, i64> = BTreeMap::new();
    for (key, state) in &current {
        let study = series_study[&state.series];
        match &initial[key] {
            Some(before) if before.series == state.series => {
                study_delta.entry(study).or_default().size += state.size - before.size;
                if before.class != state.class {
                    classes_dirty.insert(study);
                }
                continue;
            }
            Some(before) => {
                // Moved: the old side is recounted from its rows.
                let (_, old_study, old_patient) = existing[key];
                recount_series.insert(before.series);
                recount_studies.insert(old_study);
                recount_patients.insert(old_patient);
            }
            None => {}
        }
        *series_delta.entry(state.series).or_default() += 1;
        let delta = study_delta.entry(study).or_default();
        delta.instances += 1;
        delta.size += state.size;
        patient_delta
            .entry(study_patient[&study])
            .or_default()
            .instances += 1;
        if let Some(classes) = study_classes.get_mut(&study) {
            if classes.insert(state.class.clone()) {
                classes_added.insert(study);
            }
        }
    }

    // ---- Counters and summaries.
    let flush = Flush {
        series_delta,
        study_delta,
        patient_delta,
        study_classes,
        classes_added,
        classes_dirty,
        modalities_dirty,
        recount_series,
        recount_studies,
        recount_patients,
    };
    // The follow-up items (one per study, in study order), appended by the
    // counters' statement to the storage rows the batch wrote; when one
    // names no study of the batch, the caller appends them all.
    let studies: Option<Vec<i64>> = follow_ups
        .iter()
        .map(|item| {
            let uid = item.study_uid.as_ref()?;
            storage_ids
                .get(&(item.partition.0, uid.as_str().to_string()))
                .copied()
        })
        .collect();
    let append = studies
        .as_deref()
        .filter(|studies| !studies.is_empty())
        .map(|studies| (follow_ups, studies));
    let appended = flush.apply(conn, now, append).await?;
    Ok(Indexed {
        outcomes,
        storages: storage_ids,
        appended,
        one_statement: false,
    })
}

/// The deletions of the studies of `batch` ([`crate::db::sql::STUDY_DELETIONS`]
/// for all of them in one statement).
pub(super) async fn study_deletions<'a>(
    conn: &mut PgConnection,
    batch: &'a [InstanceRecord],
) -> Result<HashMap<(PartitionId, &'a Uid), StudyDeletions>, TxError> {
    let studies = Admission::studies(batch);
    let partitions: Vec<i64> = studies.iter().map(|(p, _)| p.0).collect();
    let uids: Vec<&str> = studies.iter().map(|(_, u)| u.as_str()).collect();
    let rows = sqlx::query(
        "SELECT t.n,
                EXISTS (SELECT 1 FROM study_storage ss
                        WHERE ss.partition_id = t.p AND ss.study_uid = t.uid
                          AND ss.state = 'deleting') AS deleting,
                (SELECT COUNT(*) FROM audit_log a
                 WHERE a.partition_id = t.p AND a.study_uid = t.uid
                   AND a.action = 'study.delete') AS deletions,
                (SELECT ss.filesystem_id FROM study_storage ss
                 WHERE ss.partition_id = t.p AND ss.study_uid = t.uid) AS filesystem
         FROM UNNEST($1::bigint[], $2::text[]) WITH ORDINALITY AS t(p, uid, n)",
    )
    .bind(&partitions)
    .bind(&uids)
    .fetch_all(&mut *conn)
    .await?;
    let mut deletions = HashMap::with_capacity(rows.len());
    for row in rows {
        let n: i64 = row.try_get("n")?;
        let study = usize::try_from(n - 1)
            .ok()
            .and_then(|i| studies.get(i))
            .ok_or(TxError::Conflict("a study's deletions were not returned"))?;
        deletions.insert(
            *study,
            StudyDeletions {
                deleting: row.try_get("deleting")?,
                count: u64::try_from(row.try_get::<i64, _>("deletions")?).unwrap_or(0),
                filesystem: row
                    .try_get::<Option<i64>, _>("filesystem")?
                    .map(crate::model::FilesystemId),
            },
        );
    }
    Ok(deletions)
}

/// Upserts the patients (locked first, in key order), then the study
/// storages (the per-study locks, in key order), in one statement: the
/// storage upsert waits for the patients' (it depends on their row count).
/// Returns their keys.
async fn upsert_patients_and_storages(
    conn: &mut PgConnection,
    patients: &BTreeMap<PatientKey, [Option<String>; 3]>,
    storages: &BTreeMap<StudyKey, &InstanceRecord>,
    now: i64,
) -> Result<(HashMap<PatientKey, i64>, HashMap<StudyKey, i64>), TxError> {
    let mut partition = Vec::with_capacity(patients.len());
    let mut patient_id = Vec::with_capacity(patients.len());
    let mut issuer = Vec::with_capacity(patients.len());
    let mut columns: [Vec<Option<String>>; 3] = Default::default();
    for (key, values) in patients {
        partition.push(key.0);
        patient_id.push(key.1.clone());
        issuer.push(key.2.clone());
        for (column, value) in columns.iter_mut().zip(values) {
            column.push(value.clone());
        }
    }
    let mut study_partition = Vec::with_capacity(storages.len());
    let mut study_uid = Vec::with_capacity(storages.len());
    let mut filesystem = Vec::with_capacity(storages.len());
    let mut date_folder = Vec::with_capacity(storages.len());
    for (key, record) in storages {
        study_partition.push(key.0);
        study_uid.push(key.1.clone());
        filesystem.push(record.location.filesystem.0);
        date_folder.push(record.location.date_folder.replace('\0', ""));
    }
    // An existing storage row is kept, unless the study has no online copy
    // (nearline): then the arriving instance's location becomes its home.
    // Every touched row is updated (and so locked), in key order.
    let rows = sqlx::query(concat!(
        "WITH pa AS (
             INSERT INTO patient
                 (partition_id, patient_id, issuer_of_patient_id, patient_name, birth_date, sex)
             SELECT p, id, iss, name, birth, sex
             FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[],
                         $6::text[])
                  WITH ORDINALITY AS t(p, id, iss, name, birth, sex, n)
             ORDER BY n
             ON CONFLICT (partition_id, patient_id, issuer_of_patient_id) DO UPDATE SET ",
        patient_merge!(),
        "
             RETURNING id, partition_id, patient_id, issuer_of_patient_id),
         ss AS (
             INSERT INTO study_storage
                 (partition_id, study_uid, filesystem_id, date_folder, created_at)
             SELECT p, uid, fs, folder, $11
             FROM UNNEST($7::bigint[], $8::text[], $9::bigint[], $10::text[])
                  WITH ORDINALITY AS t(p, uid, fs, folder, n)
             WHERE (SELECT COUNT(*) FROM pa) >= 0
             ORDER BY n
             ON CONFLICT (partition_id, study_uid) DO UPDATE
             SET filesystem_id = COALESCE(study_storage.filesystem_id, excluded.filesystem_id),
                 date_folder = CASE WHEN study_storage.filesystem_id IS NULL
                                    THEN excluded.date_folder ELSE study_storage.date_folder END
             RETURNING id, partition_id, study_uid, filesystem_id, date_folder)
         SELECT FALSE AS storage, id, partition_id, patient_id, issuer_of_patient_id,
                NULL::TEXT AS study_uid, NULL::BIGINT AS filesystem_id,
                NULL::TEXT AS date_folder
         FROM pa
         UNION ALL
         SELECT TRUE, id, partition_id, NULL, NULL, study_uid, filesystem_id, date_folder
         FROM ss"
    ))
    .bind(&partition)
    .bind(&patient_id)
    .bind(&issuer)
    .bind(&columns[0])
    .bind(&columns[1])
    .bind(&columns[2])
    .bind(&study_partition)
    .bind(&study_uid)
    .bind(&filesystem)
    .bind(&date_folder)
    .bind(now)
    .fetch_all(&mut *conn)
    .await?;
    let mut patient_ids = HashMap::with_capacity(patients.len());
    let mut storage_ids = HashMap::with_capacity(storages.len());
    for row in rows {
        if !row.try_get::<bool, _>("storage")? {
            patient_ids.insert(
                (
                    row.try_get("partition_id")?,
                    row.try_get("patient_id")?,
                    row.try_get("issuer_of_patient_id")?,
                ),
                row.try_get("id")?,
            );
            continue;
        }
        let key: StudyKey = (row.try_get("partition_id")?, row.try_get("study_uid")?);
        let filesystem: Option<i64> = row.try_get("filesystem_id")?;
        let date_folder: String = row.try_get("date_folder")?;
        if let Some(record) = storages.get(&key) {
            warn_if_elsewhere(record, filesystem, &date_folder);
        }
        storage_ids.insert(key, row.try_get("id")?);
    }
    if patient_ids.len() != patients.len() {
        return Err(TxError::Conflict("a patient row was not returned"));
    }
    if storage_ids.len() != storages.len() {
        return Err(TxError::Conflict("a study storage row was not returned"));
    }
    Ok((patient_ids, storage_ids))
}

/// Fails the attempt as a conflict when a record of `batch` would be
/// refused because of its study's deletions (`deletions`, per study key:
/// what the transaction read after locking the study's storage row). The
/// rows just written roll back, and the retry decides before locking.
fn refuse_if_deleted(
    batch: &[InstanceRecord],
    deletions: impl Fn(&StudyKey) -> Option<StudyDeletions>,
) -> Result<(), TxError> {
    let deletions: HashMap<(PartitionId, &Uid), StudyDeletions> = batch
        .iter()
        .filter_map(|r| {
            let key = (r.partition.0, r.study.study_uid.as_str().to_string());
            Some(((r.partition, &r.study.study_uid), deletions(&key)?))
        })
        .collect();
    if Admission::decide(batch, &deletions).any_refused() {
        return Err(TxError::Conflict(
            "a study was deleted while its batch was admitted",
        ));
    }
    Ok(())
}

/// Logs `record` when its study's indexed location (`filesystem`,
/// `date_folder`) is not where the record's file was placed.
fn warn_if_elsewhere(record: &InstanceRecord, filesystem: Option<i64>, date_folder: &str) {
    let location = &record.location;
    if filesystem != Some(location.filesystem.0) || date_folder != location.date_folder {
        tracing::warn!(
            study_uid = %record.study.study_uid,
            indexed_filesystem = ?filesystem,
            indexed_date_folder = %date_folder,
            record_filesystem = location.filesystem.0,
            record_date_folder = %location.date_folder,
            "instance stored outside its study's indexed location"
        );
    }
}

/// Per study: its key, its patient and SOP classes before, its deletions.
type StudyRows = HashMap<StudyKey, (i64, Option<i64>, Option<String>, StudyDeletions)>;

/// Per series: its id, whether it existed, and its modality before.
type SeriesRows = HashMap<SeriesKey, (i64, bool, Option<String>)>;

/// Upserts the studies and their series in one statement, and reads the
/// studies' deletions (as [`study_deletions`]: this statement runs after
/// the one that locked the studies' storage rows, so it sees every
/// deletion committed before those locks were taken).
async fn upsert_studies_and_series(
    conn: &mut PgConnection,
    studies: &BTreeMap<StudyKey, StudyRow>,
    patient_ids: &HashMap<PatientKey, i64>,
    storage_ids: &HashMap<StudyKey, i64>,
    series: &BTreeMap<(StudyKey, String), SeriesRow>,
    now: i64,
) -> Result<(StudyRows, SeriesRows), TxError> {
    let mut partition = Vec::with_capacity(studies.len());
    let mut study_uid = Vec::with_capacity(studies.len());
    let mut patient = Vec::with_capacity(studies.len());
    let mut storage = Vec::with_capacity(studies.len());
    let mut columns: [Vec<Option<&str>>; 7] = Default::default();
    for (key, row) in studies {
        partition.push(key.0);
        study_uid.push(key.1.as_str());
        patient.push(patient_ids[&row.patient]);
        storage.push(storage_ids[&row.storage_key]);
        for (column, value) in columns.iter_mut().zip(&row.attrs) {
            column.push(value.as_deref());
        }
    }
    let mut series_partition = Vec::with_capacity(series.len());
    let mut series_study = Vec::with_capacity(series.len());
    let mut series_uid = Vec::with_capacity(series.len());
    let mut number = Vec::with_capacity(series.len());
    let mut series_columns: [Vec<Option<&str>>; 5] = Default::default();
    for ((study_key, uid), row) in series {
        series_partition.push(study_key.0);
        series_study.push(study_key.1.as_str());
        series_uid.push(uid.as_str());
        number.push(row.series_number);
        for (column, value) in series_columns.iter_mut().zip(&row.attrs) {
            column.push(value.as_deref());
        }
    }
    let rows = sqlx::query(concat!(
        "WITH input AS (
             SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::bigint[], $4::bigint[],
                                  $5::text[], $6::text[], $7::text[], $8::text[], $9::text[],
                                  $10::text[], $11::text[])
                 WITH ORDINALITY AS t(partition_id, study_uid, patient_fk, storage_id,
                                      study_date, study_time, accession_number, study_id,
                                      study_description, referring_physician_name,
                                      specific_character_set, n)
         ),
         old AS (
             SELECT s.partition_id, s.study_uid, s.patient_fk, s.sop_classes_in_study
             FROM study s JOIN input i
                  ON s.partition_id = i.partition_id AND s.study_uid = i.study_uid
         ),
         up AS (
             INSERT INTO study
                 (partition_id, patient_fk, study_storage_id, study_uid, study_date, study_time,
                  accession_number, study_id, study_description, referring_physician_name,
                  specific_character_set, created_at, updated_at)
             SELECT partition_id, patient_fk, storage_id, study_uid, study_date, study_time,
                    accession_number, study_id, study_description, referring_physician_name,
                    specific_character_set, $12, $12
             FROM input ORDER BY n
             ON CONFLICT (partition_id, study_uid) DO UPDATE SET
                 patient_fk = excluded.patient_fk, ",
        study_merge!(),
        ",
                 updated_at = excluded.updated_at
             RETURNING id, partition_id, study_uid
         ),
         series_input AS (
             SELECT * FROM UNNEST($13::bigint[], $14::text[], $15::text[], $16::text[],
                                  $17::int4[], $18::text[], $19::text[], $20::text[],
                                  $21::text[])
                 WITH ORDINALITY AS t(partition_id, study_uid, series_uid, modality,
                                      series_number, series_description, body_part_examined,
                                      series_date, series_time, n)
         ),
         series_old AS (
             SELECT s.study_fk, s.series_uid, s.modality
             FROM series_input i
             JOIN up ON up.partition_id = i.partition_id AND up.study_uid = i.study_uid
             JOIN series s ON s.study_fk = up.id AND s.series_uid = i.series_uid
         ),
         series_up AS (
             INSERT INTO series
                 (study_fk, series_uid, modality, series_number, series_description,
                  body_part_examined, series_date, series_time)
             SELECT up.id, i.series_uid, i.modality, i.series_number, i.series_description,
                    i.body_part_examined, i.series_date, i.series_time
             FROM series_input i
             JOIN up ON up.partition_id = i.partition_id AND up.study_uid = i.study_uid
             ORDER BY i.n
             ON CONFLICT (study_fk, series_uid) DO UPDATE SET ",
        series_merge!(),
        "
             RETURNING id, study_fk, series_uid
         )
         SELECT FALSE AS is_series, up.id, up.partition_id, up.study_uid,
                old.patient_fk AS old_patient, old.sop_classes_in_study AS old_classes,
                EXISTS (SELECT 1 FROM study_storage ss
                        WHERE ss.partition_id = up.partition_id AND ss.study_uid = up.study_uid
                          AND ss.state = 'deleting') AS deleting,
                (SELECT COUNT(*) FROM audit_log a
                 WHERE a.partition_id = up.partition_id AND a.study_uid = up.study_uid
                   AND a.action = 'study.delete') AS deletions,
                (SELECT ss.filesystem_id FROM study_storage ss
                 WHERE ss.partition_id = up.partition_id
                   AND ss.study_uid = up.study_uid) AS filesystem,
                NULL::BIGINT AS study_fk, NULL::TEXT AS series_uid, NULL::BOOLEAN AS existed,
                NULL::TEXT AS old_modality
         FROM up LEFT JOIN old
              ON old.partition_id = up.partition_id AND old.study_uid = up.study_uid
         UNION ALL
         SELECT TRUE, su.id, NULL::BIGINT, NULL::TEXT, NULL::BIGINT, NULL::TEXT,
                NULL::BOOLEAN, NULL::BIGINT, NULL::BIGINT, su.study_fk, su.series_uid,
                so.study_fk IS NOT NULL, so.modality
         FROM series_up su LEFT JOIN series_old so
              ON so.study_fk = su.study_fk AND so.series_uid = su.series_uid"
    ))
    .bind(&partition)
    .bind(&study_uid)
    .bind(&patient)
    .bind(&storage)
    .bind(&columns[0])
    .bind(&columns[1])
    .bind(&columns[2])
    .bind(&columns[3])
    .bind(&columns[4])
    .bind(&columns[5])
    .bind(&columns[6])
    .bind(now)
    .bind(&series_partition)
    .bind(&series_study)
    .bind(&series_uid)
    .bind(&series_columns[0])
    .bind(&number)
    .bind(&series_columns[1])
    .bind(&series_columns[2])
    .bind(&series_columns[3])
    .bind(&series_columns[4])
    .fetch_all(&mut *conn)
    .await?;
    let mut study_rows = HashMap::with_capacity(studies.len());
    let mut series_rows = HashMap::with_capacity(series.len());
    for row in rows {
        if row.try_get("is_series")? {
            series_rows.insert(
                (row.try_get("study_fk")?, row.try_get("series_uid")?),
                (
                    row.try_get("id")?,
                    row.try_get("existed")?,
                    row.try_get("old_modality")?,
                ),
            );
            continue;
        }
        study_rows.insert(
            (row.try_get("partition_id")?, row.try_get("study_uid")?),
            (
                row.try_get("id")?,
                row.try_get("old_patient")?,
                row.try_get("old_classes")?,
                StudyDeletions {
                    deleting: row.try_get("deleting")?,
                    count: u64::try_from(row.try_get::<i64, _>("deletions")?).unwrap_or(0),
                    filesystem: row
                        .try_get::<Option<i64>, _>("filesystem")?
                        .map(crate::model::FilesystemId),
                },
            ),
        );
    }
    Ok((study_rows, series_rows))
}

/// The instance rows the batch replaces (per key its state, its study and
/// that study's patient) and, per key, whether the upsert inserted it.
type InstanceRows = (
    HashMap<InstanceKey, (InstanceState, i64, i64)>,
    HashMap<InstanceKey, bool>,
);

/// In one statement: reads and locks (in key order) the instance rows the
/// batch will replace, then inserts or replaces one row per instance key
/// with the values of its last record. The upsert waits for the read (it
/// depends on its row count), so the read sees every row before the
/// batch touches it.
async fn lock_and_upsert_instances(
    conn: &mut PgConnection,
    batch: &[InstanceRecord],
    last_record: &BTreeMap<InstanceKey, usize>,
    finals: &HashMap<InstanceKey, InstanceState>,
    now: i64,
) -> Result<InstanceRows, TxError> {
    let n = last_record.len();
    let mut partition = Vec::with_capacity(n);
    let mut series = Vec::with_capacity(n);
    let mut sop = Vec::with_capacity(n);
    let mut class = Vec::with_capacity(n);
    let mut number = Vec::with_capacity(n);
    let mut syntax = Vec::with_capacity(n);
    let mut size = Vec::with_capacity(n);
    let mut digest = Vec::with_capacity(n);
    let mut source = Vec::with_capacity(n);
    for (key, record_idx) in last_record {
        let i = &batch[*record_idx].instance;
        let state = &finals[key];
        partition.push(key.0);
        series.push(state.series);
        sop.push(key.1.as_str());
        class.push(state.class.as_str());
        number.push(i.instance_number);
        syntax.push(i.transfer_syntax_uid.as_str());
        size.push(state.size);
        digest.push(i.digest.replace('\0', ""));
        source.push(text(i.source_ae.as_deref()));
    }
    let rows = sqlx::query(
        "WITH old AS (
             SELECT i.partition_id, i.sop_instance_uid, i.series_fk, i.file_size,
                    i.sop_class_uid, se.study_fk, st.patient_fk
             FROM instance i
             JOIN series se ON se.id = i.series_fk
             JOIN study st ON st.id = se.study_fk
             WHERE (i.partition_id, i.sop_instance_uid) IN
                   (SELECT * FROM UNNEST($1::bigint[], $3::text[]))
             ORDER BY i.partition_id, i.sop_instance_uid
             FOR UPDATE OF i),
         up AS (
             INSERT INTO instance
                 (partition_id, series_fk, sop_instance_uid, sop_class_uid, instance_number,
                  transfer_syntax_uid, file_size, digest, source_ae, received_at)
             SELECT p, se, uid, cls, num, ts, sz, dg, ae, $10
             FROM UNNEST($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::int4[],
                         $6::text[], $7::bigint[], $8::text[], $9::text[])
                  WITH ORDINALITY AS t(p, se, uid, cls, num, ts, sz, dg, ae, n)
             WHERE (SELECT COUNT(*) FROM old) >= 0
             ORDER BY n
             ON CONFLICT (partition_id, sop_instance_uid) DO UPDATE
             SET series_fk = excluded.series_fk, sop_class_uid = excluded.sop_class_uid,
                 instance_number = excluded.instance_number,
                 transfer_syntax_uid = excluded.transfer_syntax_uid,
                 file_size = excluded.file_size, digest = excluded.digest,
                 source_ae = excluded.source_ae, received_at = excluded.received_at
             RETURNING partition_id, sop_instance_uid, (xmax = 0) AS inserted)
         SELECT FALSE AS upserted, partition_id, sop_instance_uid, series_fk, file_size,
                sop_class_uid, study_fk, patient_fk, NULL::BOOLEAN AS inserted
         FROM old
         UNION ALL
         SELECT TRUE, partition_id, sop_instance_uid, NULL, NULL, NULL, NULL, NULL, inserted
         FROM up",
    )
    .bind(&partition)
    .bind(&series)
    .bind(&sop)
    .bind(&class)
    .bind(&number)
    .bind(&syntax)
    .bind(&size)
    .bind(&digest)
    .bind(&source)
    .bind(now)
    .fetch_all(&mut *conn)
    .await?;
    let mut existing = HashMap::new();
    let mut inserted = HashMap::with_capacity(n);
    for row in rows {
        let key: InstanceKey = (
            row.try_get("partition_id")?,
            row.try_get("sop_instance_uid")?,
        );
        if row.try_get("upserted")? {
            inserted.insert(key, row.try_get("inserted")?);
        } else {
            existing.insert(
                key,
                (
                    InstanceState {
                        series: row.try_get("series_fk")?,
                        size: row.try_get("file_size")?,
                        class: row.try_get("sop_class_uid")?,
                    },
                    row.try_get("study_fk")?,
                    row.try_get("patient_fk")?,
                ),
            );
        }
    }
    if inserted.len() != n {
        return Err(TxError::Conflict("an instance row was not returned"));
    }
    Ok((existing, inserted))
}
