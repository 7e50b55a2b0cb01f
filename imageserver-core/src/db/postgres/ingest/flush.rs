//! The general way's last step: the counters and summaries a batch
//! changed, as deltas in one statement for the common case (which also
//! appends the follow-up items), and exact recounts (which delete the rows
//! left empty) for the rows a moved instance or a study that changed
//! patient left behind.

use std::collections::{BTreeMap, BTreeSet};

use sqlx::{PgConnection, Row};

use super::TxError;
use crate::db::postgres::work;
use crate::db::rows::{joined, PatientDelta, StudyDelta};
use crate::model::work::NewWorkItem;

/// The counters' statement of [`Flush::apply_deltas`], with `$cte` added
/// to its CTEs and `$count` to its result.
macro_rules! counters_sql {
    ($cte:expr, $count:expr) => {
        concat!(
            "WITH se AS (
                 UPDATE series SET num_instances = series.num_instances + d.delta
                 FROM UNNEST($1::bigint[], $2::bigint[]) AS d(id, delta)
                 WHERE series.id = d.id
                 RETURNING 1),
             st AS (
                 UPDATE study SET
                     num_series = study.num_series + COALESCE(d.series, 0),
                     num_instances = study.num_instances + COALESCE(d.instances, 0),
                     size_bytes = study.size_bytes + COALESCE(d.size, 0),
                     updated_at = CASE WHEN d.series IS NULL THEN study.updated_at ELSE $10 END,
                     sop_classes_in_study = CASE
                         WHEN d.rebuild_classes THEN COALESCE(
                             (SELECT string_agg(DISTINCT i.sop_class_uid, '\\'
                                                ORDER BY i.sop_class_uid)
                              FROM instance i JOIN series se ON se.id = i.series_fk
                              WHERE se.study_fk = study.id AND i.sop_class_uid <> ''), '')
                         ELSE COALESCE(d.classes, study.sop_classes_in_study) END,
                     modalities_in_study = CASE
                         WHEN d.rebuild_modalities THEN COALESCE(
                             (SELECT string_agg(DISTINCT modality, '\\' ORDER BY modality)
                              FROM series WHERE study_fk = study.id AND modality <> ''), '')
                         ELSE study.modalities_in_study END
                 FROM UNNEST($3::bigint[], $4::bigint[], $5::bigint[], $6::bigint[], $7::text[],
                             $8::bool[], $9::bool[])
                      AS d(id, series, instances, size, classes, rebuild_classes,
                           rebuild_modalities)
                 WHERE study.id = d.id
                 RETURNING 1),
             pa AS (
                 UPDATE patient SET num_studies = patient.num_studies + d.studies,
                     num_series = patient.num_series + d.series,
                     num_instances = patient.num_instances + d.instances
                 FROM UNNEST($11::bigint[], $12::bigint[], $13::bigint[], $14::bigint[])
                      AS d(id, studies, series, instances)
                 WHERE patient.id = d.id
                 RETURNING 1)",
            $cte,
            " SELECT (SELECT COUNT(*) FROM se) + (SELECT COUNT(*) FROM st)
                    + (SELECT COUNT(*) FROM pa)",
            $count
        )
    };
}

/// What remains to write once the rows are in: counters, summaries,
/// recounts.
pub(super) struct Flush {
    pub(super) series_delta: BTreeMap<i64, i64>,
    pub(super) study_delta: BTreeMap<i64, StudyDelta>,
    pub(super) patient_delta: BTreeMap<i64, PatientDelta>,
    /// Per study: its SOP classes as stored plus those the batch added.
    pub(super) study_classes: BTreeMap<i64, BTreeSet<String>>,
    pub(super) classes_added: BTreeSet<i64>,
    pub(super) classes_dirty: BTreeSet<i64>,
    pub(super) modalities_dirty: BTreeSet<i64>,
    pub(super) recount_series: BTreeSet<i64>,
    pub(super) recount_studies: BTreeSet<i64>,
    pub(super) recount_patients: BTreeSet<i64>,
}

impl Flush {
    /// The common case (nothing to recount) in one statement: the
    /// series, study and patient counters, the studies' SOP classes and
    /// modalities, as the general path below would write them.
    #[allow(clippy::too_many_arguments)]
    async fn apply_deltas(
        conn: &mut PgConnection,
        now: i64,
        series_delta: &BTreeMap<i64, i64>,
        study_delta: &BTreeMap<i64, StudyDelta>,
        patient_delta: &BTreeMap<i64, PatientDelta>,
        study_classes: &BTreeMap<i64, BTreeSet<String>>,
        classes_added: &BTreeSet<i64>,
        classes_dirty: &BTreeSet<i64>,
        modalities_dirty: &BTreeSet<i64>,
        append: Option<(&[NewWorkItem], &[i64])>,
    ) -> Result<(), TxError> {
        let (series_ids, series_deltas): (Vec<i64>, Vec<i64>) = series_delta
            .iter()
            .filter(|(_, delta)| **delta != 0)
            .map(|(id, delta)| (*id, *delta))
            .unzip();
        // One row per touched study: its deltas (NULL: none), its SOP
        // classes when only added to (NULL: unchanged), whether its classes
        // and its modalities are rebuilt from the rows.
        let studies: BTreeSet<i64> = study_delta
            .keys()
            .chain(classes_added)
            .chain(classes_dirty)
            .chain(modalities_dirty)
            .copied()
            .collect();
        let n = studies.len();
        let (mut ids, mut series, mut instances, mut sizes) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        let (mut classes, mut rebuild_classes, mut rebuild_modalities) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        for id in &studies {
            let delta = study_delta.get(id);
            ids.push(*id);
            series.push(delta.map(|d| d.series));
            instances.push(delta.map(|d| d.instances));
            sizes.push(delta.map(|d| d.size));
            let dirty = classes_dirty.contains(id);
            classes.push(
                (classes_added.contains(id) && !dirty)
                    .then(|| study_classes.get(id).map(joined))
                    .flatten(),
            );
            rebuild_classes.push(dirty);
            rebuild_modalities.push(modalities_dirty.contains(id));
        }
        let m = patient_delta.len();
        let (mut patient_ids, mut patient_studies, mut patient_series, mut patient_instances) = (
            Vec::with_capacity(m),
            Vec::with_capacity(m),
            Vec::with_capacity(m),
            Vec::with_capacity(m),
        );
        for (id, delta) in patient_delta {
            patient_ids.push(*id);
            patient_studies.push(delta.studies);
            patient_series.push(delta.series);
            patient_instances.push(delta.instances);
        }
        let sql = match append {
            None => counters_sql!("", ""),
            Some(_) => counters_sql!(
                ", wq AS (SELECT item_id FROM imageserver_append_works(
                     $15, $16, $17, $18, $19, $20, $21, $22, $23, $24, $25, $26, $27, $28,
                     $29, $30, $31, $32))",
                " + (SELECT COUNT(*) FROM wq)"
            ),
        };
        let query = sqlx::query(sql)
            .bind(&series_ids)
            .bind(&series_deltas)
            .bind(&ids)
            .bind(&series)
            .bind(&instances)
            .bind(&sizes)
            .bind(&classes)
            .bind(&rebuild_classes)
            .bind(&rebuild_modalities)
            .bind(now)
            .bind(&patient_ids)
            .bind(&patient_studies)
            .bind(&patient_series)
            .bind(&patient_instances);
        match append {
            None => query.execute(&mut *conn).await?,
            Some((items, studies)) => {
                work::bind_appends(query.bind(work::APPEND_LOCK).bind(studies), items)
                    .execute(&mut *conn)
                    .await?
            }
        };
        Ok(())
    }

    /// Writes the counters; in the common case (nothing to recount) with
    /// `append`'s items (each with its study storage row) appended by the
    /// same statement: whether they were.
    pub(super) async fn apply(
        self,
        conn: &mut PgConnection,
        now: i64,
        append: Option<(&[NewWorkItem], &[i64])>,
    ) -> Result<bool, TxError> {
        let Flush {
            series_delta,
            study_delta,
            patient_delta,
            study_classes,
            classes_added,
            mut classes_dirty,
            mut modalities_dirty,
            recount_series,
            mut recount_studies,
            mut recount_patients,
        } = self;
        if recount_series.is_empty() && recount_studies.is_empty() && recount_patients.is_empty() {
            Flush::apply_deltas(
                conn,
                now,
                &series_delta,
                &study_delta,
                &patient_delta,
                &study_classes,
                &classes_added,
                &classes_dirty,
                &modalities_dirty,
                append,
            )
            .await?;
            return Ok(append.is_some());
        }

        // Series.
        let (ids, deltas): (Vec<i64>, Vec<i64>) = series_delta
            .iter()
            .filter(|(id, delta)| !recount_series.contains(id) && **delta != 0)
            .map(|(id, delta)| (*id, *delta))
            .unzip();
        if !ids.is_empty() {
            sqlx::query(
                "UPDATE series SET num_instances = series.num_instances + d.delta
                 FROM UNNEST($1::bigint[], $2::bigint[]) AS d(id, delta)
                 WHERE series.id = d.id",
            )
            .bind(&ids)
            .bind(&deltas)
            .execute(&mut *conn)
            .await?;
        }
        for id in &recount_series {
            let row = sqlx::query(
                "UPDATE series SET num_instances =
                     (SELECT COUNT(*) FROM instance WHERE series_fk = $1)
                 WHERE id = $1 RETURNING num_instances, study_fk",
            )
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?;
            let Some(row) = row else { continue };
            let count: i64 = row.try_get("num_instances")?;
            if count == 0 {
                sqlx::query("DELETE FROM series WHERE id = $1")
                    .bind(id)
                    .execute(&mut *conn)
                    .await?;
                recount_studies.insert(row.try_get("study_fk")?);
            }
        }

        // Studies.
        let mut ids = Vec::new();
        let mut series = Vec::new();
        let mut instances = Vec::new();
        let mut sizes = Vec::new();
        for (id, delta) in &study_delta {
            if !recount_studies.contains(id) {
                ids.push(*id);
                series.push(delta.series);
                instances.push(delta.instances);
                sizes.push(delta.size);
            }
        }
        if !ids.is_empty() {
            sqlx::query(
                "UPDATE study SET num_series = study.num_series + d.series,
                     num_instances = study.num_instances + d.instances,
                     size_bytes = study.size_bytes + d.size, updated_at = $5
                 FROM UNNEST($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[])
                      AS d(id, series, instances, size)
                 WHERE study.id = d.id",
            )
            .bind(&ids)
            .bind(&series)
            .bind(&instances)
            .bind(&sizes)
            .bind(now)
            .execute(&mut *conn)
            .await?;
        }
        for id in &recount_studies {
            let row = sqlx::query(
                "UPDATE study SET
                     num_series = (SELECT COUNT(*) FROM series WHERE study_fk = $1),
                     num_instances = (SELECT COALESCE(SUM(num_instances), 0)::BIGINT FROM series
                                      WHERE study_fk = $1),
                     size_bytes = (SELECT COALESCE(SUM(i.file_size), 0)::BIGINT FROM instance i
                                   JOIN series se ON se.id = i.series_fk WHERE se.study_fk = $1),
                     updated_at = $2
                 WHERE id = $1 RETURNING num_instances, patient_fk",
            )
            .bind(id)
            .bind(now)
            .fetch_optional(&mut *conn)
            .await?;
            let Some(row) = row else { continue };
            let instances: i64 = row.try_get("num_instances")?;
            recount_patients.insert(row.try_get("patient_fk")?);
            if instances == 0 {
                sqlx::query("DELETE FROM series WHERE study_fk = $1")
                    .bind(id)
                    .execute(&mut *conn)
                    .await?;
                sqlx::query("DELETE FROM study WHERE id = $1")
                    .bind(id)
                    .execute(&mut *conn)
                    .await?;
            } else {
                modalities_dirty.insert(*id);
                classes_dirty.insert(*id);
            }
        }
        let (ids, classes): (Vec<i64>, Vec<String>) = classes_added
            .iter()
            .filter(|id| !classes_dirty.contains(id))
            .filter_map(|id| study_classes.get(id).map(|c| (*id, joined(c))))
            .unzip();
        if !ids.is_empty() {
            sqlx::query(
                "UPDATE study SET sop_classes_in_study = d.classes
                 FROM UNNEST($1::bigint[], $2::text[]) AS d(id, classes)
                 WHERE study.id = d.id",
            )
            .bind(&ids)
            .bind(&classes)
            .execute(&mut *conn)
            .await?;
        }
        if !classes_dirty.is_empty() {
            let ids: Vec<i64> = classes_dirty.iter().copied().collect();
            sqlx::query(
                "UPDATE study SET sop_classes_in_study = COALESCE(
                     (SELECT string_agg(DISTINCT i.sop_class_uid, '\\' ORDER BY i.sop_class_uid)
                      FROM instance i JOIN series se ON se.id = i.series_fk
                      WHERE se.study_fk = study.id AND i.sop_class_uid <> ''), '')
                 WHERE id = ANY($1::bigint[])",
            )
            .bind(&ids)
            .execute(&mut *conn)
            .await?;
        }
        if !modalities_dirty.is_empty() {
            let ids: Vec<i64> = modalities_dirty.iter().copied().collect();
            sqlx::query(
                "UPDATE study SET modalities_in_study = COALESCE(
                     (SELECT string_agg(DISTINCT modality, '\\' ORDER BY modality)
                      FROM series WHERE study_fk = study.id AND modality <> ''), '')
                 WHERE id = ANY($1::bigint[])",
            )
            .bind(&ids)
            .execute(&mut *conn)
            .await?;
        }

        // Patients.
        let mut ids = Vec::new();
        let mut studies = Vec::new();
        let mut series = Vec::new();
        let mut instances = Vec::new();
        for (id, delta) in &patient_delta {
            if !recount_patients.contains(id) {
                ids.push(*id);
                studies.push(delta.studies);
                series.push(delta.series);
                instances.push(delta.instances);
            }
        }
        if !ids.is_empty() {
            sqlx::query(
                "UPDATE patient SET num_studies = patient.num_studies + d.studies,
                     num_series = patient.num_series + d.series,
                     num_instances = patient.num_instances + d.instances
                 FROM UNNEST($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[])
                      AS d(id, studies, series, instances)
                 WHERE patient.id = d.id",
            )
            .bind(&ids)
            .bind(&studies)
            .bind(&series)
            .bind(&instances)
            .execute(&mut *conn)
            .await?;
        }
        for id in &recount_patients {
            let studies: Option<i64> = sqlx::query_scalar(
                "UPDATE patient SET
                     num_studies = (SELECT COUNT(*) FROM study WHERE patient_fk = $1),
                     num_series = (SELECT COALESCE(SUM(num_series), 0)::BIGINT FROM study
                                   WHERE patient_fk = $1),
                     num_instances = (SELECT COALESCE(SUM(num_instances), 0)::BIGINT FROM study
                                      WHERE patient_fk = $1)
                 WHERE id = $1 RETURNING num_studies",
            )
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?;
            if studies == Some(0) {
                sqlx::query("DELETE FROM patient WHERE id = $1")
                    .bind(id)
                    .execute(&mut *conn)
                    .await?;
            }
        }
        Ok(false)
    }
}
