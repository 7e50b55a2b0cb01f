//! C-FIND on SQLite: [`QueryStore`] for [`SqliteIndex`].
//!
//! Each [`Query`] becomes **one** parameterised statement: the entity table
//! of the level (`patient p`, `study st`, `series se`, `instance i`) joined
//! upward (instance → series → study → patient) as far as the keys and
//! returned attributes need, one condition per matching key, every value
//! bound (never interpolated), the partition on every joined table that has
//! one, the level's stable order and `LIMIT limit + 1`:
//!
//! ```text
//! SELECT <returned columns> FROM study st [INDEXED BY study_date_idx]
//!   JOIN patient p ON p.id = st.patient_fk
//! WHERE +p.partition_id = ?1 AND st.partition_id = ?1 AND <key conditions>
//! ORDER BY st.study_date NULLS LAST, st.study_time NULLS LAST, st.study_uid
//! LIMIT ?n
//! ```
//!
//! Orders: patient: patient ID, issuer; study: date, time, UID; series:
//! series number, UID; image: instance number, SOP Instance UID (NULLs
//! last). Which index the statement enters by is decided here, not left to
//! the planner's statistics (see [`Entry`]). The SQL text depends only on
//! the *shape* of the query (attributes, matcher kinds, entry), so the per
//! connection statement cache (`prepare_cached`) serves repeated queries;
//! lists are bound as one JSON array (`IN (SELECT value FROM json_each(?))`)
//! so that their length changes neither the text nor hits the bound-variable
//! limit. Statements run on a pooled reader connection and never wait for
//! the writer.
//!
//! Matching (PS3.4 C.2.2.2), per [`Kind`]:
//! - Text, UID, date: single value `col = ?`; wildcard `col GLOB ?` (case
//!   sensitive; `[` and `]` of the value are escaped as `[[]` and `[]]`, and
//!   `%` and `_` are not special to GLOB); range: string comparison, bounds
//!   inclusive (`YYYYMMDD` sorts chronologically), open ends allowed; list:
//!   `col IN (…)`.
//! - Integer (IS, stored as INTEGER): compared numerically; a value that is not
//!   an integer matches nothing.
//! - Time: colons are removed from the stored value and the bounds; a stored
//!   value shorter than `HHMMSS` is padded with zeros (it counts as the start
//!   of its unit); the lower bound is padded with zeros to `HHMMSS`, the upper
//!   bound so that a partial bound covers its whole unit (`12` →
//!   `125959.999999`, `1200` → `120059.999999`, `120000` → `120000.999999`,
//!   `120000.5` → `120000.599999`), and they compare as strings. A single
//!   time is the range over its unit. (No combined date-time range matching.)
//! - Person name: exact or wildcard. With `pn_case_insensitive` the match
//!   folds case **beyond ASCII**: every letter of the value becomes a GLOB
//!   class of its simple (one-character) case mappings (`müller*` →
//!   `[mM][üÜ]…*`), so `MÜLLER^JÜRGEN` matches. Mappings that change the
//!   length (`ß` ↔ `SS`) are not folded, and stored letters are not
//!   normalised (NFC vs NFD). SQLite's NOCASE and `lower()` fold ASCII only,
//!   so they serve the index, not the match: `patient_name_idx` (NOCASE) is
//!   entered through an extra `LIKE 'prefix%'` on the value's literal ASCII
//!   prefix, which every match satisfies; an all-ASCII single value is
//!   `= ? COLLATE NOCASE`. Case-sensitive names add the NOCASE equality or
//!   the `LIKE` prefix in the same way, so that they use the index too.
//! - ModalitiesInStudy, SOPClassesInStudy: the study matches when one of its
//!   series (instances) has a value that matches. Single values and lists
//!   are whole-element lookups in the study's maintained summary
//!   (`modalities_in_study`, which `study_date_idx` also holds, so a scan
//!   rejects a study without reading its row); wildcards use `EXISTS` over
//!   the series (instances). Returned from the summary.
//! - Counts (NumberOf…Related…) are never matched, only returned from the
//!   maintained counters (the patient's at study level in Study Root too).
//! - A key other than universal (or a wildcard of only `*`) never matches a
//!   NULL or empty stored value.
//!
//! Keys of levels below the query level are ignored.

use std::fmt::Write as _;
use std::ops::ControlFlow;

use rusqlite::types::Value;
use rusqlite::{Connection, Row};

use super::{get_u64, is_busy, location_from_row, parse_column, SqliteIndex};
use crate::db::matching::{
    case_variants, effective, keys, like_prefix, returned, time_from, time_to, top,
};
use crate::db::{Error, QueryStore};
use crate::model::query::{Attribute, Key, Kind, Level, Match, Matcher, Query};
use crate::model::{StoredInstance, Uid};

impl QueryStore for SqliteIndex {
    fn find(
        &self,
        query: &Query,
        sink: &mut dyn FnMut(Match) -> ControlFlow<()>,
    ) -> Result<(), Error> {
        let plan = Plan::find(query);
        self.stream("answering a query", |conn, delivered| {
            let mut stmt = conn.prepare_cached(&plan.sql.text)?;
            let mut rows = stmt.query(rusqlite::params_from_iter(&plan.sql.params))?;
            while let Some(row) = rows.next()? {
                let found = plan.row(row)?;
                *delivered = true;
                if sink(found).is_break() {
                    break;
                }
            }
            Ok(())
        })
    }

    /// Instances of studies without an online copy (`study_storage`
    /// `filesystem_id` NULL: nearline) are skipped: there is no file to send.
    /// `query.limit` caps matches, not instances, and is ignored here.
    ///
    /// At IMAGE level one statement lists the instances. Above it, the
    /// query's statement lists the matching entities in study, series order
    /// and a fixed statement lists each one's instances, in the same read
    /// transaction: memory stays bounded (no sort of every instance of a
    /// large C-MOVE) and the first instance goes out at once.
    fn find_instances(
        &self,
        query: &Query,
        sink: &mut dyn FnMut(StoredInstance) -> ControlFlow<()>,
    ) -> Result<(), Error> {
        let plan = Plan::instances(query);
        self.stream("listing instances to retrieve", |conn, delivered| {
            let mut stmt = conn.prepare_cached(&plan.sql.text)?;
            let mut rows = stmt.query(rusqlite::params_from_iter(&plan.sql.params))?;
            if query.level == Level::Image {
                // The statement lists the instances themselves.
                while let Some(row) = rows.next()? {
                    let instance = stored_instance(row)?;
                    *delivered = true;
                    if sink(instance).is_break() {
                        break;
                    }
                }
                return Ok(());
            }
            // One entity key per row; its instances come from a fixed
            // statement, inside the same read transaction (one snapshot).
            let mut below = conn.prepare_cached(&instances_below(query.level))?;
            while let Some(row) = rows.next()? {
                let id: i64 = row.get(0)?;
                let mut instances = below.query([id])?;
                while let Some(instance) = instances.next()? {
                    let instance = stored_instance(instance)?;
                    *delivered = true;
                    if sink(instance).is_break() {
                        return Ok(());
                    }
                }
            }
            Ok(())
        })
    }
}

impl SqliteIndex {
    /// Runs `f` on a reader connection. Busy answers are retried like every
    /// read, but only while nothing has reached the sink yet (`f` sets the
    /// flag): a retry after that would deliver rows twice.
    fn stream(
        &self,
        operation: &'static str,
        mut f: impl FnMut(&Connection, &mut bool) -> rusqlite::Result<()>,
    ) -> Result<(), Error> {
        let mut delivered = false;
        self.read_query(operation, |conn| match f(conn, &mut delivered) {
            Err(e) if delivered && is_busy(&e) => Err(rusqlite::Error::ToSqlConversionFailure(
                format!("database busy after results were delivered: {e}").into(),
            )),
            result => result,
        })
    }
}

/// The study location (filesystem, partition folder, date folder, study UID:
/// a [`location_from_row`]) and the instance columns of a [`StoredInstance`].
const INSTANCE_COLUMNS: &str = "ss.filesystem_id, \
     (SELECT pa.folder FROM partition pa WHERE pa.id = ss.partition_id), ss.date_folder, st.study_uid, \
     se.series_uid, i.sop_instance_uid, i.sop_class_uid, i.transfer_syntax_uid, i.file_size, \
     i.digest";

/// The joins from an instance up to its study's location.
const INSTANCE_JOINS: &str = "instance i JOIN series se ON se.id = i.series_fk \
     JOIN study st ON st.id = se.study_fk \
     JOIN study_storage ss ON ss.id = st.study_storage_id";

/// Study, series and instance order of retrieved instances.
const INSTANCE_ORDER: &str = "st.study_date NULLS LAST, st.study_time NULLS LAST, st.study_uid, \
     se.series_number NULLS LAST, se.series_uid, se.id, i.instance_number NULLS LAST, \
     i.sop_instance_uid";

fn stored_instance(row: &Row<'_>) -> rusqlite::Result<StoredInstance> {
    Ok(StoredInstance {
        location: location_from_row(row, 0)?,
        series_uid: parse_column(row, 4, Uid::parse)?,
        sop_instance_uid: parse_column(row, 5, Uid::parse)?,
        sop_class_uid: parse_column(row, 6, Uid::parse)?,
        transfer_syntax_uid: parse_column(row, 7, Uid::parse)?,
        file_size: get_u64(row, 8)?,
        digest: row.get(9)?,
    })
}

/// The fixed statement listing the online instances below one entity
/// (`?1`: its row key) of a level above IMAGE.
pub(super) fn instances_below(level: Level) -> String {
    let entity = match level {
        Level::Patient => "st.patient_fk",
        Level::Study => "st.id",
        Level::Series | Level::Image => "se.id",
    };
    format!(
        "SELECT {INSTANCE_COLUMNS} FROM {INSTANCE_JOINS}
         WHERE {entity} = ?1 AND ss.filesystem_id IS NOT NULL
         ORDER BY {INSTANCE_ORDER}"
    )
}

/// The column holding an attribute (aliases: `p` patient, `st` study, `se`
/// series, `i` instance).
fn column(attribute: Attribute) -> &'static str {
    use Attribute as A;
    match attribute {
        A::PatientName => "p.patient_name",
        A::PatientId => "p.patient_id",
        A::IssuerOfPatientId => "p.issuer_of_patient_id",
        A::PatientBirthDate => "p.birth_date",
        A::PatientSex => "p.sex",
        A::NumberOfPatientRelatedStudies => "p.num_studies",
        A::NumberOfPatientRelatedSeries => "p.num_series",
        A::NumberOfPatientRelatedInstances => "p.num_instances",
        A::StudyDate => "st.study_date",
        A::StudyTime => "st.study_time",
        A::AccessionNumber => "st.accession_number",
        A::ModalitiesInStudy => "st.modalities_in_study",
        A::SopClassesInStudy => "st.sop_classes_in_study",
        A::ReferringPhysicianName => "st.referring_physician_name",
        A::StudyDescription => "st.study_description",
        A::StudyInstanceUid => "st.study_uid",
        A::StudyId => "st.study_id",
        A::NumberOfStudyRelatedSeries => "st.num_series",
        A::NumberOfStudyRelatedInstances => "st.num_instances",
        A::SeriesDate => "se.series_date",
        A::SeriesTime => "se.series_time",
        A::Modality => "se.modality",
        A::SeriesDescription => "se.series_description",
        A::BodyPartExamined => "se.body_part_examined",
        A::SeriesInstanceUid => "se.series_uid",
        A::SeriesNumber => "se.series_number",
        A::NumberOfSeriesRelatedInstances => "se.num_instances",
        A::SopClassUid => "i.sop_class_uid",
        A::SopInstanceUid => "i.sop_instance_uid",
        A::InstanceNumber => "i.instance_number",
    }
}

/// Whether a NOCASE index serves the column (`patient_name_idx`).
fn has_nocase_index(attribute: Attribute) -> bool {
    attribute == Attribute::PatientName
}

/// SQL text and the values bound to its numbered parameters.
#[derive(Debug, Default)]
pub(super) struct Sql {
    pub(super) text: String,
    pub(super) params: Vec<Value>,
}

impl Sql {
    /// Adds a bound value and returns its parameter (`?n`).
    fn bind(&mut self, value: impl Into<Value>) -> String {
        self.params.push(value.into());
        format!("?{}", self.params.len())
    }
}

/// A query turned into SQL, and how to read its rows back.
#[derive(Debug)]
pub(super) struct Plan {
    pub(super) sql: Sql,
    /// The returned attributes, one per selected column.
    returned: Vec<Attribute>,
}

/// The conditions of a query and the aliases they need.
struct Where {
    sql: Sql,
    conditions: Vec<String>,
    /// Numbering of the subquery aliases.
    aliases: usize,
}

impl Plan {
    /// The statement of [`QueryStore::find`].
    pub(super) fn find(query: &Query) -> Plan {
        let level = query.level;
        let returned = returned(query);
        let keys = keys(query);
        let top = top(
            level,
            returned.iter().chain(keys.iter().map(|k| &k.attribute)),
        );
        let entry = Entry::of(query, &keys);
        let mut w = Where::new(query, level, top, entry);
        for key in &keys {
            w.key(key, query.pn_case_insensitive);
        }
        let select: Vec<&str> = returned.iter().map(|a| column(*a)).collect();
        let mut text = format!(
            "SELECT {} FROM {} WHERE {}",
            select.join(", "),
            from(level, top, entry),
            w.conditions.join(" AND ")
        );
        let order = match level {
            Level::Patient => "p.patient_id, p.issuer_of_patient_id",
            Level::Study => "st.study_date NULLS LAST, st.study_time NULLS LAST, st.study_uid",
            Level::Series => "se.series_number NULLS LAST, se.series_uid, se.id",
            Level::Image => "i.instance_number NULLS LAST, i.sop_instance_uid",
        };
        let _ = write!(text, " ORDER BY {order}");
        let mut sql = w.sql;
        if let Some(limit) = query.limit {
            let limit = i64::try_from(limit.saturating_add(1)).unwrap_or(i64::MAX);
            let limit = sql.bind(limit);
            let _ = write!(text, " LIMIT {limit}");
        }
        if query.offset > 0 {
            if query.limit.is_none() {
                text.push_str(" LIMIT -1");
            }
            let offset = sql.bind(i64::try_from(query.offset).unwrap_or(i64::MAX));
            let _ = write!(text, " OFFSET {offset}");
        }
        sql.text = text;
        Plan { sql, returned }
    }

    /// The outer statement of [`QueryStore::find_instances`]: the row keys of
    /// the matching entities in study, series, instance order, or at IMAGE
    /// level the instances themselves.
    pub(super) fn instances(query: &Query) -> Plan {
        let level = query.level;
        let keys = keys(query);
        let mut top = top(level, keys.iter().map(|k| &k.attribute));
        if level == Level::Image {
            // The location needs every table up to the study.
            top = top.min(Level::Study);
        }
        let entry = Entry::of(query, &keys);
        let (select, order, from_clause) = match level {
            Level::Patient => (
                "p.id",
                "p.patient_id, p.issuer_of_patient_id",
                from(level, top, entry),
            ),
            Level::Study => (
                "st.id",
                "st.study_date NULLS LAST, st.study_time NULLS LAST, st.study_uid",
                from(level, top, entry),
            ),
            Level::Series => (
                "se.id",
                "st.study_date NULLS LAST, st.study_time NULLS LAST, st.study_uid, \
                 se.series_number NULLS LAST, se.series_uid, se.id",
                from(level, top, entry),
            ),
            Level::Image => {
                let mut joins = INSTANCE_JOINS.to_string();
                if top == Level::Patient {
                    joins.push_str(" JOIN patient p ON p.id = st.patient_fk");
                }
                (INSTANCE_COLUMNS, INSTANCE_ORDER, joins)
            }
        };
        let mut w = Where::new(query, level, top, entry);
        if level == Level::Image {
            w.conditions
                .push("ss.filesystem_id IS NOT NULL".to_string());
        }
        for key in &keys {
            w.key(key, query.pn_case_insensitive);
        }
        let mut sql = w.sql;
        sql.text = format!(
            "SELECT {select} FROM {from_clause} WHERE {} ORDER BY {order}",
            w.conditions.join(" AND ")
        );
        Plan {
            sql,
            returned: Vec::new(),
        }
    }

    /// Reads one row of [`Plan::find`].
    fn row(&self, row: &Row<'_>) -> rusqlite::Result<Match> {
        let mut values = Vec::with_capacity(self.returned.len());
        for (idx, attribute) in self.returned.iter().enumerate() {
            let value = match row.get::<_, Value>(idx)? {
                Value::Null => None,
                Value::Integer(n) => Some(n.to_string()),
                Value::Real(x) => Some(x.to_string()),
                Value::Text(t) if t.is_empty() => None,
                Value::Text(t) => Some(t),
                Value::Blob(b) => Some(String::from_utf8_lossy(&b).into_owned()),
            };
            values.push((*attribute, value));
        }
        Ok(Match { values })
    }
}

/// The table a query's statement is meant to enter by: that of its most
/// specific key with an index (an exact value, a list or a literal prefix of
/// an identifier or the patient name; a date restriction), else the level's.
///
/// The statement makes the choice explicit because the planner's own is
/// unreliable here: every index of patient, study and instance starts with
/// `partition_id`, which without statistics the planner takes for a
/// selective column, and which the statistics `PRAGMA optimize` samples
/// (small `analysis_limit`) underestimate as well. So the partition term
/// is written so that an index can use it (`st.partition_id = ?`) only on
/// the entry table, and as `+p.partition_id = ?` (a filter) on the others;
/// and a study-level query without an indexed key, or with a date key only,
/// names `study_date_idx`: a scan in date order is the result order (a
/// capped query stops after its first matches) and the index holds
/// ModalitiesInStudy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Entry {
    /// No indexed key: the level's table (studies in date order).
    Level,
    /// `study_date_idx`.
    StudyDate,
    /// `patient_name_idx` or the patient ID index.
    Patient,
    /// The study UID or accession number index.
    Study,
    /// `series_uid_idx` (series have no partition column).
    Series,
    /// The SOP Instance UID index.
    Instance,
}

impl Entry {
    fn of(query: &Query, keys: &[&Key]) -> Entry {
        keys.iter()
            .map(|k| Entry::of_key(k, query.pn_case_insensitive))
            .max()
            .unwrap_or(Entry::Level)
    }

    fn of_key(key: &Key, fold: bool) -> Entry {
        let matcher = effective(&key.matcher);
        let name = key.attribute == Attribute::PatientName;
        let indexed = match &matcher {
            // Names: `= ? COLLATE NOCASE` or a LIKE prefix (ASCII); lists
            // of names do not use the index.
            Some(Matcher::List(_)) if name => false,
            Some(Matcher::Single(v)) if name && fold => {
                v.chars().next().is_some_and(|c| c.is_ascii())
            }
            Some(Matcher::Single(_) | Matcher::List(_)) => true,
            // A literal prefix: GLOB and LIKE ranges stop at these.
            Some(Matcher::Wildcard(v)) => v
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii() && !matches!(c, '*' | '?' | '[' | ']')),
            Some(Matcher::Range { from, to }) => {
                key.attribute == Attribute::StudyDate && (from.is_some() || to.is_some())
            }
            Some(Matcher::Universal) | None => false,
        };
        if !indexed {
            return Entry::Level;
        }
        match key.attribute {
            Attribute::SopInstanceUid => Entry::Instance,
            Attribute::SeriesInstanceUid => Entry::Series,
            Attribute::StudyInstanceUid | Attribute::AccessionNumber => Entry::Study,
            Attribute::PatientId | Attribute::PatientName => Entry::Patient,
            Attribute::StudyDate => Entry::StudyDate,
            _ => Entry::Level,
        }
    }
}

/// The FROM clause: the entity table of `level` joined up to `top`.
fn from(level: Level, top: Level, entry: Entry) -> String {
    let mut from = match level {
        Level::Patient => "patient p",
        Level::Study if matches!(entry, Entry::Level | Entry::StudyDate) => {
            "study st INDEXED BY study_date_idx"
        }
        Level::Study => "study st",
        Level::Series => "series se JOIN study st ON st.id = se.study_fk",
        Level::Image => "instance i",
    }
    .to_string();
    if level == Level::Image && top <= Level::Series {
        from.push_str(" JOIN series se ON se.id = i.series_fk");
        if top <= Level::Study {
            from.push_str(" JOIN study st ON st.id = se.study_fk");
        }
    }
    if level > Level::Patient && top == Level::Patient {
        from.push_str(" JOIN patient p ON p.id = st.patient_fk");
    }
    from
}

impl Where {
    /// The partition term of every joined table that has a partition column
    /// (one bound value), usable by an index only on the [`Entry`] table.
    fn new(query: &Query, level: Level, top: Level, entry: Entry) -> Where {
        let mut sql = Sql::default();
        let partition = sql.bind(query.partition.0);
        let entry_level = match entry {
            Entry::Patient => Some(Level::Patient),
            Entry::Study | Entry::StudyDate => Some(Level::Study),
            Entry::Series => None,
            Entry::Instance => Some(Level::Image),
            Entry::Level => Some(match level {
                // Series are entered through their studies.
                Level::Series => Level::Study,
                level => level,
            }),
        };
        let term = |alias: &str, table: Level| {
            let plus = if entry_level == Some(table) { "" } else { "+" };
            format!("{plus}{alias}.partition_id = {partition}")
        };
        let mut conditions = Vec::new();
        if top == Level::Patient {
            conditions.push(term("p", Level::Patient));
        }
        if top <= Level::Study && level >= Level::Study {
            conditions.push(term("st", Level::Study));
        }
        if level == Level::Image {
            conditions.push(term("i", Level::Image));
        }
        Where {
            sql,
            conditions,
            aliases: 0,
        }
    }

    fn alias(&mut self, prefix: &str) -> String {
        self.aliases += 1;
        format!("{prefix}{}", self.aliases)
    }

    /// Adds the condition of one key (none for universal matching).
    fn key(&mut self, key: &Key, pn_case_insensitive: bool) {
        let Some(matcher) = effective(&key.matcher) else {
            return;
        };
        let attribute = key.attribute;
        let condition = match (attribute, attribute.kind()) {
            (_, Kind::Count) => None,
            (Attribute::ModalitiesInStudy, _) => self.summary(
                "st.modalities_in_study",
                "series {a} WHERE {a}.study_fk = st.id",
                "modality",
                &matcher,
            ),
            (Attribute::SopClassesInStudy, _) => self.summary(
                "st.sop_classes_in_study",
                "series {a}s JOIN instance {a} ON {a}.series_fk = {a}s.id WHERE {a}s.study_fk = st.id",
                "sop_class_uid",
                &matcher,
            ),
            (_, Kind::Time) => self.time(column(attribute), &matcher),
            (_, Kind::Integer) => self.integer(column(attribute), &matcher),
            (_, Kind::PersonName) => self.person_name(
                column(attribute),
                &matcher,
                pn_case_insensitive,
                has_nocase_index(attribute),
            ),
            (_, Kind::Text | Kind::Uid | Kind::Date) => self.text(column(attribute), &matcher),
        };
        if let Some(condition) = condition {
            self.conditions.push(condition);
        }
    }

    /// Text, UID and date values: exact, GLOB, string range, list.
    fn text(&mut self, col: &str, matcher: &Matcher) -> Option<String> {
        Some(match matcher {
            Matcher::Universal => return None,
            Matcher::Single(v) => format!("{col} = {}", self.sql.bind(v.clone())),
            Matcher::Wildcard(v) => {
                format!("{col} GLOB {}", self.sql.bind(glob(v, false)))
            }
            Matcher::Range { from, to } => {
                let mut parts = Vec::new();
                match from {
                    Some(from) => parts.push(format!("{col} >= {}", self.sql.bind(from.clone()))),
                    None => parts.push(format!("{col} > ''")),
                }
                if let Some(to) = to {
                    parts.push(format!("{col} <= {}", self.sql.bind(to.clone())));
                }
                parts.join(" AND ")
            }
            Matcher::List(values) => {
                let list = self
                    .sql
                    .bind(json_strings(values.iter().map(String::as_str)));
                format!("{col} IN (SELECT value FROM json_each({list}))")
            }
        })
    }

    /// Times: colons removed, partial values padded (see the module docs).
    fn time(&mut self, col: &str, matcher: &Matcher) -> Option<String> {
        let stored = format!(
            "(CASE WHEN length(replace({col}, ':', '')) >= 6 THEN replace({col}, ':', '') \
             ELSE substr(replace({col}, ':', '') || '000000', 1, 6) END)"
        );
        let range = |w: &mut Where, from: Option<String>, to: Option<String>| -> String {
            let mut parts = vec![format!("{col} <> ''")];
            if let Some(from) = from {
                parts.push(format!("{stored} >= {}", w.sql.bind(from)));
            }
            if let Some(to) = to {
                parts.push(format!("{stored} <= {}", w.sql.bind(to)));
            }
            parts.join(" AND ")
        };
        Some(match matcher {
            Matcher::Universal => return None,
            Matcher::Wildcard(v) => format!("{col} GLOB {}", self.sql.bind(glob(v, false))),
            Matcher::Single(v) => range(self, Some(time_from(v)), Some(time_to(v))),
            Matcher::Range { from, to } => range(
                self,
                from.as_deref().map(time_from),
                to.as_deref().map(time_to),
            ),
            Matcher::List(values) => {
                let alternatives: Vec<String> = values
                    .iter()
                    .map(|v| format!("({})", range(self, Some(time_from(v)), Some(time_to(v)))))
                    .collect();
                format!("({})", alternatives.join(" OR "))
            }
        })
    }

    /// Integers: compared numerically; text that is no integer matches nothing.
    fn integer(&mut self, col: &str, matcher: &Matcher) -> Option<String> {
        let parse = |v: &str| v.trim().parse::<i64>().ok();
        Some(match matcher {
            Matcher::Universal => return None,
            Matcher::Single(v) => match parse(v) {
                Some(n) => format!("{col} = {}", self.sql.bind(n)),
                None => "0".to_string(),
            },
            Matcher::Wildcard(v) => {
                format!("CAST({col} AS TEXT) GLOB {}", self.sql.bind(glob(v, false)))
            }
            Matcher::Range { from, to } => {
                let mut parts = vec![format!("{col} IS NOT NULL")];
                for (bound, op) in [(from, ">="), (to, "<=")] {
                    if let Some(bound) = bound {
                        match parse(bound) {
                            Some(n) => parts.push(format!("{col} {op} {}", self.sql.bind(n))),
                            None => return Some("0".to_string()),
                        }
                    }
                }
                parts.join(" AND ")
            }
            Matcher::List(values) => {
                let numbers: Vec<String> = values
                    .iter()
                    .filter_map(|v| parse(v))
                    .map(|n| n.to_string())
                    .collect();
                let list = self.sql.bind(format!("[{}]", numbers.join(",")));
                format!("{col} IN (SELECT value FROM json_each({list}))")
            }
        })
    }

    /// Person names: exact or wildcard, folded when `fold` (see the module
    /// docs); `indexed` adds the NOCASE-index conditions.
    fn person_name(
        &mut self,
        col: &str,
        matcher: &Matcher,
        fold: bool,
        indexed: bool,
    ) -> Option<String> {
        match matcher {
            Matcher::Single(v) if fold && v.is_ascii() => Some(format!(
                "{col} = {} COLLATE NOCASE",
                self.sql.bind(v.clone())
            )),
            Matcher::Single(v) if !fold => {
                let p = self.sql.bind(v.clone());
                Some(if indexed {
                    format!("{col} = {p} COLLATE NOCASE AND {col} = {p}")
                } else {
                    format!("{col} = {p}")
                })
            }
            Matcher::Single(v) | Matcher::Wildcard(v) => {
                let mut parts = Vec::new();
                let prefix = like_prefix(v);
                if indexed && !prefix.is_empty() {
                    parts.push(format!(
                        "{col} LIKE {} ESCAPE '\\'",
                        self.sql.bind(format!("{prefix}%"))
                    ));
                }
                parts.push(format!("{col} GLOB {}", self.sql.bind(glob(v, fold))));
                Some(parts.join(" AND "))
            }
            Matcher::List(values) if fold => {
                let patterns: Vec<String> = values.iter().map(|v| glob(v, true)).collect();
                let list = self
                    .sql
                    .bind(json_strings(patterns.iter().map(String::as_str)));
                Some(format!(
                    "EXISTS (SELECT 1 FROM json_each({list}) WHERE {col} GLOB value)"
                ))
            }
            _ => self.text(col, matcher),
        }
    }

    /// A study summary (ModalitiesInStudy, SOPClassesInStudy): the study
    /// matches when one of the values below it matches. Single values and
    /// lists are looked up as whole elements of the study's `\`-joined
    /// `summary` column (in `study_date_idx` for the modalities, so a scan
    /// rejects studies without reading them); other matchers (a wildcard
    /// could span two elements of the joined text) test the rows below:
    /// `EXISTS (SELECT 1 FROM <below> AND <alias>.<column> …)`, where `{a}`
    /// in `below` is the subquery's alias.
    fn summary(
        &mut self,
        summary: &str,
        below: &str,
        column: &str,
        matcher: &Matcher,
    ) -> Option<String> {
        let joined = format!("('\\' || {summary} || '\\')");
        match matcher {
            Matcher::Single(v) => Some(format!(
                "instr({joined}, {}) > 0",
                self.sql.bind(format!("\\{v}\\"))
            )),
            // Lists of modalities and SOP classes are short: one term each.
            Matcher::List(values) => {
                let terms: Vec<String> = values
                    .iter()
                    .map(|v| format!("instr({joined}, {}) > 0", self.sql.bind(format!("\\{v}\\"))))
                    .collect();
                Some(format!("({})", terms.join(" OR ")))
            }
            _ => {
                let a = self.alias("sub");
                let below = below.replace("{a}", &a);
                self.text(&format!("{a}.{column}"), matcher)
                    .map(|c| format!("EXISTS (SELECT 1 FROM {below} AND {c})"))
            }
        }
    }
}

/// A DICOM wildcard value as a GLOB pattern: `*` and `?` keep their meaning,
/// `[` and `]` are literal; with `fold`, letters become classes of their
/// one-character case mappings.
fn glob(value: &str, fold: bool) -> String {
    let mut out = String::with_capacity(value.len() + 8);
    for c in value.chars() {
        match c {
            '*' | '?' => out.push(c),
            '[' => out.push_str("[[]"),
            ']' => out.push_str("[]]"),
            c if fold => {
                let variants = case_variants(c);
                if variants.len() == 1 {
                    out.push(c);
                } else {
                    out.push('[');
                    out.extend(variants);
                    out.push(']');
                }
            }
            c => out.push(c),
        }
    }
    out
}

/// A JSON array of strings (for `json_each`).
fn json_strings<'a>(values: impl Iterator<Item = &'a str>) -> String {
    let mut out = String::from("[");
    for (n, value) in values.enumerate() {
        if n > 0 {
            out.push(',');
        }
        out.push('"');
        for c in value.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                c if u32::from(c) < 0x20 => {
                    let _ = write!(out, "\\u{:04x}", u32::from(c));
                }
                c => out.push(c),
            }
        }
        out.push('"');
    }
    out.push(']');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_bounds_cover_their_unit() {
        assert_eq!(time_from("12"), "120000");
        assert_eq!(time_from("12:30"), "123000");
        assert_eq!(time_from("120000.5"), "120000.5");
        assert_eq!(time_to("12"), "125959.999999");
        assert_eq!(time_to("1200"), "120059.999999");
        assert_eq!(time_to("120000"), "120000.999999");
        assert_eq!(time_to("12:00:00"), "120000.999999");
        assert_eq!(time_to("120000.5"), "120000.599999");
        assert_eq!(time_to("120000.123456"), "120000.123456");
    }

    #[test]
    fn patterns_escape_and_fold() {
        assert_eq!(glob("A[1]*?", false), "A[[]1[]]*?");
        assert_eq!(glob("mü*", true), "[mM][üÜ]*");
        // ß upper-cases to "SS": not folded; ẞ lower-cases to ß.
        assert_eq!(glob("1^ß", true), "1^ß");
        assert_eq!(glob("ẞ", true), "[ẞß]");
        assert_eq!(like_prefix("DO%_\\E*X"), "DO\\%\\_\\\\E");
        assert_eq!(like_prefix("Mü*"), "M");
        assert_eq!(
            json_strings(["a\"b", "c\\d", "\u{1}"].into_iter()),
            r#"["a\"b","c\\d","\u0001"]"#
        );
    }
}
