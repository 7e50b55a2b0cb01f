//! The hot path: indexing a batch of instances inside one write transaction.
//!
//! Per record: upsert the patient, the study storage (first instance wins),
//! the study and the series, then insert or replace the instance. Rows already
//! seen in the batch are cached, and an attribute update is issued only when
//! the record's attributes differ from the last ones applied, so a batch of
//! one series costs about two statements per instance.
//!
//! Counters are kept two ways:
//! - the common case (a new instance, or a replaced one that stays in its
//!   series) adds deltas, applied with one UPDATE per touched row at the end;
//! - the rare case (a replaced instance that moved to another series, a study
//!   whose patient changed) marks the rows it left for a full recount at the
//!   end, which also deletes series, studies and patients left empty.
//!
//! Absent attributes never erase known ones (`COALESCE`); strings are trimmed
//! of DICOM padding and empty strings count as absent.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::db::rows::{joined, split, PatientDelta, StudyDelta};

use rusqlite::{params, OptionalExtension, Transaction};

use super::to_sql_error;
use crate::model::{InsertOutcome, InstanceRecord, PatientAttrs, SeriesAttrs, StudyAttrs};

/// Creates a study's storage row (`?1` partition, `?2` study UID, `?3`
/// filesystem, `?4` date folder, `?5` now). An existing row is kept, unless
/// the study has no online copy (nearline): then the proposed location
/// becomes its home. The batch and the location claim both use it.
pub(super) const UPSERT_STUDY_STORAGE: &str =
    "INSERT INTO study_storage (partition_id, study_uid, filesystem_id, date_folder, created_at)
     VALUES (?1, ?2, ?3, ?4, ?5)
     ON CONFLICT (partition_id, study_uid) DO UPDATE
     SET filesystem_id = excluded.filesystem_id, date_folder = excluded.date_folder
     WHERE study_storage.filesystem_id IS NULL";

/// Indexes `batch` in `tx` and returns one outcome per record.
pub(super) fn insert_batch(
    tx: &Transaction<'_>,
    batch: &[InstanceRecord],
    now: i64,
) -> rusqlite::Result<Vec<InsertOutcome>> {
    let mut state = Batch::default();
    let mut outcomes = Vec::with_capacity(batch.len());
    for record in batch {
        outcomes.push(state.record(tx, record, now)?);
    }
    state.flush(tx, now)?;
    Ok(outcomes)
}

/// Trims DICOM padding; empty becomes `None`.
fn text(value: Option<&str>) -> Option<&str> {
    value
        .map(|v| v.trim_matches([' ', '\0']))
        .filter(|v| !v.is_empty())
}

fn owned(values: &[Option<&str>]) -> Vec<Option<String>> {
    values.iter().map(|v| v.map(str::to_string)).collect()
}

fn same(cached: &[Option<String>], values: &[Option<&str>]) -> bool {
    cached.len() == values.len() && cached.iter().zip(values).all(|(a, b)| a.as_deref() == *b)
}

struct CachedPatient {
    id: i64,
    demographics: Vec<Option<String>>,
}

struct CachedStudy {
    id: i64,
    patient: i64,
    attrs: Vec<Option<String>>,
    /// SOP classes as stored plus those added in this batch.
    sop_classes: BTreeSet<String>,
}

struct CachedSeries {
    id: i64,
    attrs: Vec<Option<String>>,
    series_number: Option<i32>,
    /// The modality as stored.
    modality: Option<String>,
}

/// What one batch has seen and must still write.
#[derive(Default)]
struct Batch {
    patients: HashMap<(i64, String, String), CachedPatient>,
    storages: HashMap<(i64, String), i64>,
    studies: HashMap<(i64, String), CachedStudy>,
    series: HashMap<(i64, String), CachedSeries>,

    series_delta: BTreeMap<i64, i64>,
    study_delta: BTreeMap<i64, StudyDelta>,
    patient_delta: BTreeMap<i64, PatientDelta>,
    /// Studies whose sop_classes_in_study gained a value.
    sop_classes_added: BTreeSet<i64>,
    /// Studies whose modalities_in_study must be rebuilt from their series.
    modalities_dirty: BTreeSet<i64>,
    /// Studies whose SOP classes must be rebuilt from their instances.
    sop_classes_dirty: BTreeSet<i64>,

    recount_series: BTreeSet<i64>,
    recount_studies: BTreeSet<i64>,
    recount_patients: BTreeSet<i64>,
}

impl Batch {
    fn record(
        &mut self,
        tx: &Transaction<'_>,
        r: &InstanceRecord,
        now: i64,
    ) -> rusqlite::Result<InsertOutcome> {
        let partition = r.partition.0;
        let patient = self.patient(tx, partition, &r.patient)?;
        let storage = self.storage(tx, r, now)?;
        let study_key = (partition, r.study.study_uid.as_str().to_string());
        let study = self.study(tx, study_key.clone(), patient, storage, &r.study, now)?;
        let series = self.series(tx, study, patient, &r.series)?;
        let i = &r.instance;
        let file_size = i64::try_from(i.file_size)
            .map_err(|_| to_sql_error(format!("file size {} out of range", i.file_size)))?;

        let previous: Option<(i64, i64, String)> = tx
            .prepare_cached(
                "SELECT series_fk, file_size, sop_class_uid FROM instance
                 WHERE partition_id = ?1 AND sop_instance_uid = ?2",
            )?
            .query_row(params![partition, i.sop_instance_uid.as_str()], |row| {
                Ok((row.get(0)?, row.get(1)?, row.get(2)?))
            })
            .optional()?;
        tx.prepare_cached(
            "INSERT INTO instance
                 (partition_id, series_fk, sop_instance_uid, sop_class_uid, instance_number,
                  transfer_syntax_uid, file_size, digest, source_ae, received_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
             ON CONFLICT (partition_id, sop_instance_uid) DO UPDATE
             SET series_fk = excluded.series_fk, sop_class_uid = excluded.sop_class_uid,
                 instance_number = excluded.instance_number,
                 transfer_syntax_uid = excluded.transfer_syntax_uid,
                 file_size = excluded.file_size, digest = excluded.digest,
                 source_ae = excluded.source_ae, received_at = excluded.received_at",
        )?
        .execute(params![
            partition,
            series,
            i.sop_instance_uid.as_str(),
            i.sop_class_uid.as_str(),
            i.instance_number,
            i.transfer_syntax_uid.as_str(),
            file_size,
            i.digest,
            text(i.source_ae.as_deref()),
            now
        ])?;

        let sop_class = i.sop_class_uid.as_str();
        let outcome = match previous {
            Some((old_series, old_size, old_class)) if old_series == series => {
                self.study_delta.entry(study).or_default().size += file_size - old_size;
                if old_class != sop_class {
                    // The old class may have been the study's last one of its kind.
                    self.sop_classes_dirty.insert(study);
                }
                return Ok(InsertOutcome::Replaced);
            }
            Some((old_series, _, _)) => {
                // Moved: the new side is counted like an insert, the old side
                // is recounted from its rows.
                let (old_study, old_patient): (i64, i64) = tx
                    .prepare_cached(
                        "SELECT se.study_fk, st.patient_fk FROM series se
                         JOIN study st ON st.id = se.study_fk WHERE se.id = ?1",
                    )?
                    .query_row([old_series], |row| Ok((row.get(0)?, row.get(1)?)))?;
                self.recount_series.insert(old_series);
                self.recount_studies.insert(old_study);
                self.recount_patients.insert(old_patient);
                InsertOutcome::Replaced
            }
            None => InsertOutcome::Inserted,
        };
        *self.series_delta.entry(series).or_default() += 1;
        let delta = self.study_delta.entry(study).or_default();
        delta.instances += 1;
        delta.size += file_size;
        self.patient_delta.entry(patient).or_default().instances += 1;
        if let Some(cached) = self.studies.get_mut(&study_key) {
            if !cached.sop_classes.contains(sop_class) {
                cached.sop_classes.insert(sop_class.to_string());
                self.sop_classes_added.insert(study);
            }
        }
        Ok(outcome)
    }

    /// Upserts the patient; returns its key.
    fn patient(
        &mut self,
        tx: &Transaction<'_>,
        partition: i64,
        p: &PatientAttrs,
    ) -> rusqlite::Result<i64> {
        let patient_id = p.patient_id.trim_matches([' ', '\0']);
        let issuer = text(p.issuer_of_patient_id.as_deref()).unwrap_or("");
        let demographics = [
            text(p.patient_name.as_deref()),
            text(p.birth_date.as_deref()),
            text(p.sex.as_deref()),
        ];
        let key = (partition, patient_id.to_string(), issuer.to_string());
        if let Some(cached) = self.patients.get(&key) {
            if same(&cached.demographics, &demographics) {
                return Ok(cached.id);
            }
        }
        // A known patient whose demographics this record does not change
        // is only read: an UPDATE rewrites the entries of every index on
        // the columns it sets, changed or not (pages of the WAL commit).
        let known: Option<(i64, [Option<String>; 3])> = tx
            .prepare_cached(
                "SELECT id, patient_name, birth_date, sex FROM patient
                 WHERE partition_id = ?1 AND patient_id = ?2 AND issuer_of_patient_id = ?3",
            )?
            .query_row(params![partition, patient_id, issuer], |row| {
                Ok((row.get(0)?, [row.get(1)?, row.get(2)?, row.get(3)?]))
            })
            .optional()?;
        if let Some((id, stored)) = &known {
            let unchanged = demographics
                .iter()
                .zip(stored)
                .all(|(new, old)| new.is_none() || *new == old.as_deref());
            if unchanged {
                self.patients.insert(
                    key,
                    CachedPatient {
                        id: *id,
                        demographics: owned(&demographics),
                    },
                );
                return Ok(*id);
            }
        }
        let id = tx
            .prepare_cached(
                "INSERT INTO patient
                     (partition_id, patient_id, issuer_of_patient_id, patient_name, birth_date, sex)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (partition_id, patient_id, issuer_of_patient_id) DO UPDATE
                 SET patient_name = COALESCE(excluded.patient_name, patient_name),
                     birth_date = COALESCE(excluded.birth_date, birth_date),
                     sex = COALESCE(excluded.sex, sex)
                 RETURNING id",
            )?
            .query_row(
                params![
                    partition,
                    patient_id,
                    issuer,
                    demographics[0],
                    demographics[1],
                    demographics[2]
                ],
                |row| row.get(0),
            )?;
        self.patients.insert(
            key,
            CachedPatient {
                id,
                demographics: owned(&demographics),
            },
        );
        Ok(id)
    }

    /// Creates the study's storage row if it has none (the first instance
    /// fixes filesystem and date folder); returns its key.
    fn storage(
        &mut self,
        tx: &Transaction<'_>,
        r: &InstanceRecord,
        now: i64,
    ) -> rusqlite::Result<i64> {
        let key = (r.partition.0, r.study.study_uid.as_str().to_string());
        if let Some(id) = self.storages.get(&key) {
            return Ok(*id);
        }
        let location = &r.location;
        tx.prepare_cached(UPSERT_STUDY_STORAGE)?.execute(params![
            key.0,
            key.1,
            location.filesystem.0,
            location.date_folder,
            now
        ])?;
        let (id, filesystem, date_folder): (i64, Option<i64>, String) = tx
            .prepare_cached(
                "SELECT id, filesystem_id, date_folder FROM study_storage
                 WHERE partition_id = ?1 AND study_uid = ?2",
            )?
            .query_row(params![key.0, key.1], |row| {
                Ok((row.get(0)?, row.get(1)?, row.get(2)?))
            })?;
        if filesystem != Some(location.filesystem.0) || date_folder != location.date_folder {
            tracing::warn!(
                study_uid = %r.study.study_uid,
                indexed_filesystem = ?filesystem,
                indexed_date_folder = %date_folder,
                record_filesystem = location.filesystem.0,
                record_date_folder = %location.date_folder,
                "instance stored outside its study's indexed location"
            );
        }
        self.storages.insert(key, id);
        Ok(id)
    }

    /// Upserts the study (latest attributes win, absent ones are kept; the
    /// study follows the latest record's patient); returns its key.
    fn study(
        &mut self,
        tx: &Transaction<'_>,
        key: (i64, String),
        patient: i64,
        storage: i64,
        s: &StudyAttrs,
        now: i64,
    ) -> rusqlite::Result<i64> {
        let attrs = [
            text(s.study_date.as_deref()),
            text(s.study_time.as_deref()),
            text(s.accession_number.as_deref()),
            text(s.study_id.as_deref()),
            text(s.study_description.as_deref()),
            text(s.referring_physician_name.as_deref()),
            text(s.specific_character_set.as_deref()),
        ];
        if let Some(cached) = self.studies.get(&key) {
            if cached.patient == patient && same(&cached.attrs, &attrs) {
                return Ok(cached.id);
            }
        }
        let existing = match self.studies.get(&key) {
            Some(cached) => Some((cached.id, cached.patient, None)),
            None => tx
                .prepare_cached(
                    "SELECT id, patient_fk, sop_classes_in_study FROM study
                     WHERE partition_id = ?1 AND study_uid = ?2",
                )?
                .query_row(params![key.0, key.1], |row| {
                    Ok((row.get(0)?, row.get(1)?, Some(row.get::<_, String>(2)?)))
                })
                .optional()?,
        };
        let (id, sop_classes) = match existing {
            Some((id, old_patient, sop_classes)) => {
                tx.prepare_cached(
                    "UPDATE study SET
                         patient_fk = ?2,
                         study_date = COALESCE(?3, study_date),
                         study_time = COALESCE(?4, study_time),
                         accession_number = COALESCE(?5, accession_number),
                         study_id = COALESCE(?6, study_id),
                         study_description = COALESCE(?7, study_description),
                         referring_physician_name = COALESCE(?8, referring_physician_name),
                         specific_character_set = COALESCE(?9, specific_character_set),
                         updated_at = ?10
                     WHERE id = ?1
                       -- Only when something changes: an UPDATE rewrites the
                       -- entries of every index on the columns it sets. The
                       -- counters' UPDATE sets updated_at in any case.
                       AND (patient_fk IS NOT ?2
                            OR study_date IS NOT COALESCE(?3, study_date)
                            OR study_time IS NOT COALESCE(?4, study_time)
                            OR accession_number IS NOT COALESCE(?5, accession_number)
                            OR study_id IS NOT COALESCE(?6, study_id)
                            OR study_description IS NOT COALESCE(?7, study_description)
                            OR referring_physician_name
                                   IS NOT COALESCE(?8, referring_physician_name)
                            OR specific_character_set
                                   IS NOT COALESCE(?9, specific_character_set))",
                )?
                .execute(params![
                    id, patient, attrs[0], attrs[1], attrs[2], attrs[3], attrs[4], attrs[5],
                    attrs[6], now
                ])?;
                if old_patient != patient {
                    tracing::info!(study_uid = %s.study_uid, "study moved to another patient");
                    self.recount_patients.insert(old_patient);
                    self.recount_patients.insert(patient);
                }
                (id, sop_classes)
            }
            None => {
                let id = tx
                    .prepare_cached(
                        "INSERT INTO study
                             (partition_id, patient_fk, study_storage_id, study_uid, study_date,
                              study_time, accession_number, study_id, study_description,
                              referring_physician_name, specific_character_set, created_at,
                              updated_at)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?12)
                         RETURNING id",
                    )?
                    .query_row(
                        params![
                            key.0, patient, storage, key.1, attrs[0], attrs[1], attrs[2], attrs[3],
                            attrs[4], attrs[5], attrs[6], now
                        ],
                        |row| row.get(0),
                    )?;
                self.patient_delta.entry(patient).or_default().studies += 1;
                (id, Some(String::new()))
            }
        };
        let attrs = owned(&attrs);
        match (self.studies.get_mut(&key), sop_classes) {
            (Some(cached), _) => {
                cached.patient = patient;
                cached.attrs = attrs;
            }
            (None, sop_classes) => {
                let sop_classes = split(sop_classes.as_deref().unwrap_or(""));
                self.studies.insert(
                    key,
                    CachedStudy {
                        id,
                        patient,
                        attrs,
                        sop_classes,
                    },
                );
            }
        }
        Ok(id)
    }

    /// Upserts the series (latest attributes win, absent ones are kept);
    /// returns its key.
    fn series(
        &mut self,
        tx: &Transaction<'_>,
        study: i64,
        patient: i64,
        s: &SeriesAttrs,
    ) -> rusqlite::Result<i64> {
        let attrs = [
            text(s.modality.as_deref()),
            text(s.series_description.as_deref()),
            text(s.body_part_examined.as_deref()),
            text(s.series_date.as_deref()),
            text(s.series_time.as_deref()),
        ];
        let key = (study, s.series_uid.as_str().to_string());
        if let Some(cached) = self.series.get(&key) {
            if cached.series_number == s.series_number && same(&cached.attrs, &attrs) {
                return Ok(cached.id);
            }
        }
        let existing = match self.series.get(&key) {
            Some(cached) => Some((cached.id, cached.modality.clone())),
            None => tx
                .prepare_cached(
                    "SELECT id, modality FROM series WHERE study_fk = ?1 AND series_uid = ?2",
                )?
                .query_row(params![study, key.1], |row| Ok((row.get(0)?, row.get(1)?)))
                .optional()?,
        };
        let (id, modality) = match existing {
            Some((id, old_modality)) => {
                tx.prepare_cached(
                    "UPDATE series SET
                         modality = COALESCE(?2, modality),
                         series_number = COALESCE(?3, series_number),
                         series_description = COALESCE(?4, series_description),
                         body_part_examined = COALESCE(?5, body_part_examined),
                         series_date = COALESCE(?6, series_date),
                         series_time = COALESCE(?7, series_time)
                     WHERE id = ?1
                       -- Only when something changes (see the study's).
                       AND (modality IS NOT COALESCE(?2, modality)
                            OR series_number IS NOT COALESCE(?3, series_number)
                            OR series_description IS NOT COALESCE(?4, series_description)
                            OR body_part_examined IS NOT COALESCE(?5, body_part_examined)
                            OR series_date IS NOT COALESCE(?6, series_date)
                            OR series_time IS NOT COALESCE(?7, series_time))",
                )?
                .execute(params![
                    id,
                    attrs[0],
                    s.series_number,
                    attrs[1],
                    attrs[2],
                    attrs[3],
                    attrs[4]
                ])?;
                let modality: Option<String> =
                    attrs[0].map(str::to_string).or(old_modality.clone());
                if modality != old_modality {
                    self.modalities_dirty.insert(study);
                }
                (id, modality)
            }
            None => {
                let id = tx
                    .prepare_cached(
                        "INSERT INTO series
                             (study_fk, series_uid, modality, series_number, series_description,
                              body_part_examined, series_date, series_time)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                         RETURNING id",
                    )?
                    .query_row(
                        params![
                            study,
                            key.1,
                            attrs[0],
                            s.series_number,
                            attrs[1],
                            attrs[2],
                            attrs[3],
                            attrs[4]
                        ],
                        |row| row.get(0),
                    )?;
                self.study_delta.entry(study).or_default().series += 1;
                self.patient_delta.entry(patient).or_default().series += 1;
                if attrs[0].is_some() {
                    self.modalities_dirty.insert(study);
                }
                (id, attrs[0].map(str::to_string))
            }
        };
        self.series.insert(
            key,
            CachedSeries {
                id,
                attrs: owned(&attrs),
                series_number: s.series_number,
                modality,
            },
        );
        Ok(id)
    }

    /// Writes the counters and summaries, recounts what the rare cases left
    /// behind and deletes rows left empty.
    fn flush(self, tx: &Transaction<'_>, now: i64) -> rusqlite::Result<()> {
        let Batch {
            studies,
            series_delta,
            study_delta,
            patient_delta,
            sop_classes_added,
            mut modalities_dirty,
            mut sop_classes_dirty,
            recount_series,
            mut recount_studies,
            mut recount_patients,
            ..
        } = self;

        // Series.
        for (id, delta) in &series_delta {
            if !recount_series.contains(id) && *delta != 0 {
                tx.prepare_cached(
                    "UPDATE series SET num_instances = num_instances + ?2 WHERE id = ?1",
                )?
                .execute(params![id, delta])?;
            }
        }
        for id in &recount_series {
            let (count, study): (i64, i64) = tx
                .prepare_cached(
                    "UPDATE series SET num_instances =
                         (SELECT COUNT(*) FROM instance WHERE series_fk = ?1)
                     WHERE id = ?1 RETURNING num_instances, study_fk",
                )?
                .query_row([id], |row| Ok((row.get(0)?, row.get(1)?)))?;
            if count == 0 {
                tx.prepare_cached("DELETE FROM series WHERE id = ?1")?
                    .execute([id])?;
                recount_studies.insert(study);
            }
        }

        // Studies.
        for (id, delta) in &study_delta {
            if !recount_studies.contains(id) {
                tx.prepare_cached(
                    "UPDATE study SET num_series = num_series + ?2,
                         num_instances = num_instances + ?3, size_bytes = size_bytes + ?4,
                         updated_at = ?5
                     WHERE id = ?1",
                )?
                .execute(params![
                    id,
                    delta.series,
                    delta.instances,
                    delta.size,
                    now
                ])?;
            }
        }
        for id in &recount_studies {
            let (instances, patient): (i64, i64) = tx
                .prepare_cached(
                    "UPDATE study SET
                         num_series = (SELECT COUNT(*) FROM series WHERE study_fk = ?1),
                         num_instances = (SELECT COALESCE(SUM(num_instances), 0) FROM series
                                          WHERE study_fk = ?1),
                         size_bytes = (SELECT COALESCE(SUM(i.file_size), 0) FROM instance i
                                       JOIN series se ON se.id = i.series_fk WHERE se.study_fk = ?1),
                         updated_at = ?2
                     WHERE id = ?1 RETURNING num_instances, patient_fk",
                )?
                .query_row(params![id, now], |row| Ok((row.get(0)?, row.get(1)?)))?;
            recount_patients.insert(patient);
            if instances == 0 {
                tx.prepare_cached("DELETE FROM series WHERE study_fk = ?1")?
                    .execute([id])?;
                tx.prepare_cached("DELETE FROM study WHERE id = ?1")?
                    .execute([id])?;
            } else {
                modalities_dirty.insert(*id);
                sop_classes_dirty.insert(*id);
            }
        }
        for cached in studies.values() {
            if sop_classes_added.contains(&cached.id) && !sop_classes_dirty.contains(&cached.id) {
                tx.prepare_cached("UPDATE study SET sop_classes_in_study = ?2 WHERE id = ?1")?
                    .execute(params![cached.id, joined(&cached.sop_classes)])?;
            }
        }
        for id in &sop_classes_dirty {
            let classes = distinct(
                tx,
                "SELECT DISTINCT i.sop_class_uid FROM instance i
                 JOIN series se ON se.id = i.series_fk WHERE se.study_fk = ?1",
                *id,
            )?;
            tx.prepare_cached("UPDATE study SET sop_classes_in_study = ?2 WHERE id = ?1")?
                .execute(params![id, joined(&classes)])?;
        }
        for id in &modalities_dirty {
            let modalities = distinct(
                tx,
                "SELECT DISTINCT modality FROM series WHERE study_fk = ?1 AND modality IS NOT NULL",
                *id,
            )?;
            tx.prepare_cached("UPDATE study SET modalities_in_study = ?2 WHERE id = ?1")?
                .execute(params![id, joined(&modalities)])?;
        }

        // Patients.
        for (id, delta) in &patient_delta {
            if !recount_patients.contains(id) {
                tx.prepare_cached(
                    "UPDATE patient SET num_studies = num_studies + ?2,
                         num_series = num_series + ?3, num_instances = num_instances + ?4
                     WHERE id = ?1",
                )?
                .execute(params![
                    id,
                    delta.studies,
                    delta.series,
                    delta.instances
                ])?;
            }
        }
        for id in &recount_patients {
            let studies: i64 = tx
                .prepare_cached(
                    "UPDATE patient SET
                         num_studies = (SELECT COUNT(*) FROM study WHERE patient_fk = ?1),
                         num_series = (SELECT COALESCE(SUM(num_series), 0) FROM study
                                       WHERE patient_fk = ?1),
                         num_instances = (SELECT COALESCE(SUM(num_instances), 0) FROM study
                                          WHERE patient_fk = ?1)
                     WHERE id = ?1 RETURNING num_studies",
                )?
                .query_row([id], |row| row.get(0))?;
            if studies == 0 {
                tx.prepare_cached("DELETE FROM patient WHERE id = ?1")?
                    .execute([id])?;
            }
        }
        Ok(())
    }
}

/// The distinct non-empty text values a one-parameter query returns.
pub(super) fn distinct(
    tx: &Transaction<'_>,
    sql: &str,
    id: i64,
) -> rusqlite::Result<BTreeSet<String>> {
    let mut stmt = tx.prepare_cached(sql)?;
    let values = stmt.query_map([id], |row| row.get::<_, String>(0))?;
    let mut set = BTreeSet::new();
    for value in values {
        let value = value?;
        if !value.is_empty() {
            set.insert(value);
        }
    }
    Ok(set)
}
