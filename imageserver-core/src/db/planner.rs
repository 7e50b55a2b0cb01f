//! C-FIND and retrieve lists as SQL: one planner for both backends, generic
//! over a [`Dialect`] that writes what the two databases spell differently
//! (one small implementation in each backend's `query.rs`, beside the code
//! that runs the statements and reads their rows).
//!
//! Each [`Query`] becomes **one** parameterised statement: the entity table
//! of the level (`patient p`, `study st`, `series se`, `instance i`) joined
//! upward (instance → series → study → patient) as far as the keys and
//! returned attributes need, one condition per matching key, every value
//! bound (never interpolated), the partition on every joined table that has
//! one, the level's stable order and `LIMIT limit + 1` (then `OFFSET`). On
//! SQLite:
//!
//! ```text
//! SELECT <returned columns> FROM study st [INDEXED BY study_date_idx]
//!   JOIN patient p ON p.id = st.patient_fk
//! WHERE +p.partition_id = ?1 AND st.partition_id = ?1 AND <key conditions>
//! ORDER BY st.study_date NULLS LAST, st.study_time NULLS LAST, st.study_uid
//! LIMIT ?n
//! ```
//!
//! PostgreSQL writes the parameters `$n` and selects every column as text
//! (`CAST(col AS TEXT)`); it has no entry hints (`INDEXED BY`, `+col`).
//!
//! Orders: patient: patient ID, issuer; study: date, time, UID; series:
//! series number, UID; image: instance number, SOP Instance UID (NULLs
//! last). Text columns compare and sort by code point on both (SQLite's
//! BINARY, PostgreSQL's `COLLATE "C"`). Which index the statement enters by
//! the dialect may decide ([`Dialect::entry`]: SQLite does, see its
//! `Entry`); else the database plans from its statistics (PostgreSQL). The
//! SQL text depends only on the *shape* of the query (attributes, matcher
//! kinds, entry), so each connection's statement cache serves repeated
//! queries; a list is bound as **one** parameter ([`Dialect::bind_list`]:
//! on SQLite one JSON array, `IN (SELECT value FROM json_each(?))`; on
//! PostgreSQL an array, `= ANY($n::text[])`) so that its length changes
//! neither the text nor hits the bound-variable limit.
//!
//! Matching (PS3.4 C.2.2.2), per [`Kind`]:
//! - Text, UID, date: single value `col = ?`; wildcard: the dialect's
//!   case-sensitive pattern ([`Dialect::pattern`]): on SQLite `col GLOB ?`
//!   (`[` and `]` of the value are escaped as `[[]` and `[]]`, and `%` and
//!   `_` are not special to GLOB), on PostgreSQL `col LIKE ?` (`%`, `_` and
//!   `\` of the value escaped, `*` → `%`, `?` → `_`); range: string
//!   comparison, bounds inclusive (`YYYYMMDD` sorts chronologically), open
//!   ends allowed; list: `col` is one of the values.
//! - Integer (IS, stored as INTEGER): compared numerically; a value that is not
//!   an integer matches nothing.
//! - Time: colons are removed from the stored value and the bounds; a stored
//!   value shorter than `HHMMSS` is padded with zeros (it counts as the start
//!   of its unit); the lower bound is padded with zeros to `HHMMSS`, the upper
//!   bound so that a partial bound covers its whole unit (`12` →
//!   `125959.999999`, `1200` → `120059.999999`, `120000` → `120000.999999`,
//!   `120000.5` → `120000.599999`), and they compare as strings. A single
//!   time is the range over its unit.
//! - Combined date-time ([`Matcher::DateTimeRange`], PS3.4 C.2.2.2.5): the
//!   date column and its paired time column as one range: after the lower
//!   date or on it from the lower time, before the upper date or on it up
//!   to the upper time (bounds padded as above); an absent stored time
//!   counts as midnight.
//! - Person name: exact or wildcard. With `pn_case_insensitive` the match
//!   folds case **beyond ASCII**: every letter of the value becomes a class
//!   of its simple (one-character) case mappings, on SQLite in a GLOB
//!   (`müller*` → `[mM][üÜ]…*`), on PostgreSQL in an anchored regular
//!   expression (`^[mM][üÜ][lL][lL][eE][rR].*$`), so `MÜLLER^JÜRGEN`
//!   matches. Mappings that change the length (`ß` ↔ `SS`) are not folded,
//!   and stored letters are not normalised (NFC vs NFD). The databases'
//!   own folding is ASCII only (SQLite's NOCASE and `lower()`; PostgreSQL's
//!   `lower()` of a `"C"` column, exactly as NOCASE), so it serves the
//!   index, not the match: `patient_name_idx` (NOCASE on SQLite, on
//!   `lower(patient_name)` on PostgreSQL) is entered through an extra prefix
//!   condition on the value's literal ASCII prefix, which every match
//!   satisfies (SQLite `col LIKE 'prefix%'`, PostgreSQL
//!   `lower(col) LIKE 'prefix%'` with the prefix folded); an all-ASCII single
//!   value is `col = ? COLLATE NOCASE` (PostgreSQL `lower(col) = ?` with the
//!   value folded). Case-sensitive names add the folded equality or the
//!   prefix in the same way, so that they use the index too
//!   ([`Dialect::equal_nocase`], [`Dialect::prefix_nocase`]).
//! - ModalitiesInStudy, SOPClassesInStudy: the study matches when one of its
//!   series (instances) has a value that matches. Single values and lists
//!   are whole-element lookups in the study's maintained summary
//!   (`modalities_in_study`, which SQLite's `study_date_idx` also holds, so
//!   a scan rejects a study without reading its row; SQLite `instr`,
//!   PostgreSQL `strpos`); wildcards use `EXISTS` over the series
//!   (instances). Returned from the summary.
//! - Counts (NumberOf…Related…) are never matched, only returned from the
//!   maintained counters (the patient's at study level in Study Root too).
//! - A key other than universal (or a wildcard of only `*`) never matches a
//!   NULL or empty stored value.
//!
//! Keys of levels below the query level are ignored.
//!
//! The retrieve list of [`crate::db::QueryStore::find_instances`] has two
//! forms, one per backend's way of reading: [`retrieve_entities`] lists the
//! matching entities and [`instances_below`] each one's instances (SQLite:
//! both in one read transaction, streamed, so memory stays bounded and the
//! first instance goes out at once), and [`retrieve_instances`] lists every
//! instance in one statement (PostgreSQL: one snapshot, read whole so that a
//! slow sink never holds a statement open against `statement_timeout`).

use std::fmt::{self, Write as _};

use crate::db::matching::{effective, keys, like_prefix, returned, time_from, time_to, top};
use crate::model::query::{Attribute, Key, Kind, Level, Matcher, Query};

/// A list of values bound as one parameter.
#[derive(Debug, Clone, Copy)]
pub(crate) enum List<'a> {
    /// Text values.
    Texts(&'a [String]),
    /// Integers.
    Ints(&'a [i64]),
}

/// How one database writes what the planner needs: parameters and values,
/// patterns, lists, folded comparisons, and the hints only one backend
/// gives. Implemented by a marker type per backend.
pub(crate) trait Dialect: Sized {
    /// A value bound to a parameter.
    type Value: fmt::Debug;
    /// The dialect's choice of the table a statement enters by (`()` where
    /// the database's own planner chooses).
    type Entry: Copy;

    /// A condition that is never true.
    const FALSE: &'static str;
    /// The function giving the position of its second argument in the first
    /// (0 when absent).
    const POSITION: &'static str;
    /// The `LIMIT` an `OFFSET` without a limit needs, if the dialect needs one.
    const UNLIMITED: Option<&'static str>;

    /// An integer value.
    fn int(n: i64) -> Self::Value;

    /// A text value.
    fn text(text: String) -> Self::Value;

    /// The parameter the statement names the `n`th bound value (from 1) by.
    fn parameter(n: usize, value: &Self::Value) -> String;

    /// The operator matching a [`Dialect::pattern`] of the same `fold`.
    fn matches(fold: bool) -> &'static str;

    /// The pattern of a DICOM wildcard value (`*`, `?`), case-sensitive or,
    /// with `fold`, with letters folded beyond ASCII.
    fn pattern(value: &str, fold: bool) -> String;

    /// Binds `list` as one parameter and returns the rows it reads as: a
    /// FROM item and its value column.
    fn bind_list(sql: &mut Sql<Self>, list: List<'_>) -> (String, &'static str);

    /// `col` equal to one of `list`.
    fn any_of(sql: &mut Sql<Self>, col: &str, list: List<'_>) -> String {
        let (rows, value) = Self::bind_list(sql, list);
        format!("{col} IN (SELECT {value} FROM {rows})")
    }

    /// `col` equal to `value` with ASCII case folded, as the name index
    /// serves it; `bound` is a parameter already holding `value`, if any.
    fn equal_nocase(sql: &mut Sql<Self>, col: &str, value: &str, bound: Option<&str>) -> String;

    /// `col` starting with `prefix` (LIKE text, `\` escapes) with ASCII case
    /// folded, as the name index serves it.
    fn prefix_nocase(sql: &mut Sql<Self>, col: &str, prefix: &str) -> String;

    /// A returned column as selected.
    fn select(col: &str) -> String {
        col.to_string()
    }

    /// The entry of a query's statement with these keys (of its level).
    fn entry(query: &Query, keys: &[&Key]) -> Self::Entry;

    /// What follows the level's table in the FROM clause (an index to enter
    /// by), if anything.
    fn table_hint(_level: Level, _entry: Self::Entry) -> &'static str {
        ""
    }

    /// The partition condition of the table of `table` (alias `alias`) in a
    /// statement at `level`; `param` holds the partition.
    fn partition_term(
        _entry: Self::Entry,
        _level: Level,
        _table: Level,
        alias: &str,
        param: &str,
    ) -> String {
        format!("{alias}.partition_id = {param}")
    }
}

/// SQL text and the values bound to its numbered parameters.
pub(crate) struct Sql<D: Dialect> {
    /// The statement.
    pub(crate) text: String,
    /// Its values, in parameter order.
    pub(crate) params: Vec<D::Value>,
}

impl<D: Dialect> Default for Sql<D> {
    fn default() -> Self {
        Sql {
            text: String::new(),
            params: Vec::new(),
        }
    }
}

impl<D: Dialect> fmt::Debug for Sql<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sql")
            .field("text", &self.text)
            .field("params", &self.params)
            .finish()
    }
}

impl<D: Dialect> Sql<D> {
    /// Adds a bound value and returns its parameter.
    pub(crate) fn bind(&mut self, value: D::Value) -> String {
        let parameter = D::parameter(self.params.len() + 1, &value);
        self.params.push(value);
        parameter
    }

    /// Adds a bound text value and returns its parameter.
    pub(crate) fn text(&mut self, value: impl Into<String>) -> String {
        self.bind(D::text(value.into()))
    }

    /// Adds a bound integer and returns its parameter.
    pub(crate) fn int(&mut self, value: i64) -> String {
        self.bind(D::int(value))
    }
}

/// A query turned into SQL, and how to read its rows back.
#[derive(Debug)]
pub(crate) struct Plan<D: Dialect> {
    /// The statement.
    pub(crate) sql: Sql<D>,
    /// The returned attributes, one per selected column.
    pub(crate) returned: Vec<Attribute>,
}

/// The statement of [`crate::db::QueryStore::find`].
pub(crate) fn find<D: Dialect>(query: &Query) -> Plan<D> {
    let level = query.level;
    let returned = returned(query);
    let keys = keys(query);
    let top = top(
        level,
        returned.iter().chain(keys.iter().map(|k| &k.attribute)),
    );
    let entry = D::entry(query, &keys);
    let mut w = Where::<D>::new(query, level, top, entry);
    for key in &keys {
        w.key(key, query.pn_case_insensitive);
    }
    let select: Vec<String> = returned.iter().map(|a| D::select(column(*a))).collect();
    let mut text = format!(
        "SELECT {} FROM {} WHERE {} ORDER BY {}",
        select.join(", "),
        from::<D>(level, top, entry),
        w.conditions.join(" AND "),
        order(level)
    );
    let mut sql = w.sql;
    if let Some(limit) = query.limit {
        let limit = sql.int(i64::try_from(limit.saturating_add(1)).unwrap_or(i64::MAX));
        let _ = write!(text, " LIMIT {limit}");
    }
    if query.offset > 0 {
        if let (None, Some(unlimited)) = (query.limit, D::UNLIMITED) {
            let _ = write!(text, " LIMIT {unlimited}");
        }
        let offset = sql.int(i64::try_from(query.offset).unwrap_or(i64::MAX));
        let _ = write!(text, " OFFSET {offset}");
    }
    sql.text = text;
    Plan { sql, returned }
}

/// The stable order of each level's entities.
fn order(level: Level) -> &'static str {
    match level {
        Level::Patient => "p.patient_id, p.issuer_of_patient_id",
        Level::Study => "st.study_date NULLS LAST, st.study_time NULLS LAST, st.study_uid",
        Level::Series => "se.series_number NULLS LAST, se.series_uid, se.id",
        Level::Image => "i.instance_number NULLS LAST, i.sop_instance_uid",
    }
}

/// The study location (filesystem, partition folder, date folder, study
/// UID) and the instance columns of a stored instance, named as
/// `rows::stored_instance` reads them.
#[cfg(feature = "sqlite")]
const INSTANCE_COLUMNS: &str = "ss.filesystem_id, \
     (SELECT pa.folder FROM partition pa WHERE pa.id = ss.partition_id) AS folder, \
     ss.date_folder, st.study_uid, \
     se.series_uid, i.sop_instance_uid, i.sop_class_uid, i.transfer_syntax_uid, i.file_size, \
     i.digest";

/// The joins from an instance up to its study's location.
#[cfg(feature = "sqlite")]
const INSTANCE_JOINS: &str = "instance i JOIN series se ON se.id = i.series_fk \
     JOIN study st ON st.id = se.study_fk \
     JOIN study_storage ss ON ss.id = st.study_storage_id";

/// Study, series and instance order of retrieved instances.
#[cfg(feature = "sqlite")]
const INSTANCE_ORDER: &str = "st.study_date NULLS LAST, st.study_time NULLS LAST, st.study_uid, \
     se.series_number NULLS LAST, se.series_uid, se.id, i.instance_number NULLS LAST, \
     i.sop_instance_uid";

/// The outer statement of the streamed retrieve list: the row keys of the
/// matching entities in study, series, instance order, each one's
/// instances to be read with [`instances_below`]; at IMAGE level the online
/// instances themselves (the columns of [`INSTANCE_COLUMNS`]).
#[cfg(feature = "sqlite")]
pub(crate) fn retrieve_entities<D: Dialect>(query: &Query) -> Sql<D> {
    let level = query.level;
    let keys = keys(query);
    let mut top = top(level, keys.iter().map(|k| &k.attribute));
    if level == Level::Image {
        // The location needs every table up to the study.
        top = top.min(Level::Study);
    }
    let entry = D::entry(query, &keys);
    let (select, order, from_clause) = match level {
        Level::Patient => ("p.id", order(level), from::<D>(level, top, entry)),
        Level::Study => ("st.id", order(level), from::<D>(level, top, entry)),
        Level::Series => (
            "se.id",
            "st.study_date NULLS LAST, st.study_time NULLS LAST, st.study_uid, \
             se.series_number NULLS LAST, se.series_uid, se.id",
            from::<D>(level, top, entry),
        ),
        Level::Image => {
            let mut joins = INSTANCE_JOINS.to_string();
            if top == Level::Patient {
                joins.push_str(" JOIN patient p ON p.id = st.patient_fk");
            }
            (INSTANCE_COLUMNS, INSTANCE_ORDER, joins)
        }
    };
    let mut w = Where::<D>::new(query, level, top, entry);
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
    sql
}

/// The fixed statement listing the online instances below one entity (the
/// first parameter: its row key) of a level above IMAGE, with the columns
/// of [`INSTANCE_COLUMNS`].
#[cfg(feature = "sqlite")]
pub(crate) fn instances_below<D: Dialect>(level: Level) -> String {
    let entity = match level {
        Level::Patient => "st.patient_fk",
        Level::Study => "st.id",
        Level::Series | Level::Image => "se.id",
    };
    let key = D::parameter(1, &D::int(0));
    format!(
        "SELECT {INSTANCE_COLUMNS} FROM {INSTANCE_JOINS}
         WHERE {entity} = {key} AND ss.filesystem_id IS NOT NULL
         ORDER BY {INSTANCE_ORDER}"
    )
}

/// The columns of a stored instance in [`retrieve_instances`], from its
/// outer aliases (`x…`), named as `rows::stored_instance` reads them.
#[cfg(feature = "postgres")]
const NAMED_INSTANCE_COLUMNS: &str = "xss.filesystem_id, xpa.folder, xss.date_folder, \
     xst.study_uid, xse.series_uid, xi.sop_instance_uid, xi.sop_class_uid, \
     xi.transfer_syntax_uid, xi.file_size, xi.digest";

/// The joins from an instance up to its study's location and partition
/// (outer aliases).
#[cfg(feature = "postgres")]
const NAMED_INSTANCE_JOINS: &str = "instance xi JOIN series xse ON xse.id = xi.series_fk \
     JOIN study xst ON xst.id = xse.study_fk \
     JOIN study_storage xss ON xss.id = xst.study_storage_id \
     JOIN partition xpa ON xpa.id = xss.partition_id";

/// Study, series and instance order of retrieved instances (outer aliases).
#[cfg(feature = "postgres")]
const NAMED_INSTANCE_ORDER: &str = "xst.study_date NULLS LAST, xst.study_time NULLS LAST, \
     xst.study_uid, xse.series_number NULLS LAST, xse.series_uid, xse.id, \
     xi.instance_number NULLS LAST, xi.sop_instance_uid";

/// The retrieve list in one statement: the online instances below the
/// matching entities (a subquery with the level's key), in the entities'
/// order, then study, series, instance order, with the columns of
/// [`NAMED_INSTANCE_COLUMNS`].
#[cfg(feature = "postgres")]
pub(crate) fn retrieve_instances<D: Dialect>(query: &Query) -> Sql<D> {
    let level = query.level;
    let keys = keys(query);
    let top = top(level, keys.iter().map(|k| &k.attribute));
    let entry = D::entry(query, &keys);
    let mut w = Where::<D>::new(query, level, top, entry);
    for key in &keys {
        w.key(key, query.pn_case_insensitive);
    }
    let (entity, outer, patient_join, patient_order) = match level {
        Level::Patient => (
            "p.id",
            "xst.patient_fk",
            " JOIN patient xp ON xp.id = xst.patient_fk",
            "xp.patient_id, xp.issuer_of_patient_id, xp.id, ",
        ),
        Level::Study => ("st.id", "xst.id", "", ""),
        Level::Series => ("se.id", "xse.id", "", ""),
        Level::Image => ("i.id", "xi.id", "", ""),
    };
    let mut sql = w.sql;
    sql.text = format!(
        "SELECT {NAMED_INSTANCE_COLUMNS} FROM {NAMED_INSTANCE_JOINS}{patient_join}
         WHERE xss.filesystem_id IS NOT NULL
           AND {outer} IN (SELECT {entity} FROM {} WHERE {})
         ORDER BY {patient_order}{NAMED_INSTANCE_ORDER}",
        from::<D>(level, top, entry),
        w.conditions.join(" AND ")
    );
    sql
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

/// A stored time as it compares (see the module docs): colons removed,
/// padded with zeros to `HHMMSS`.
fn stored_time(col: &str) -> String {
    format!(
        "(CASE WHEN length(replace({col}, ':', '')) >= 6 THEN replace({col}, ':', '') \
         ELSE substr(replace({col}, ':', '') || '000000', 1, 6) END)"
    )
}

/// Whether the name index (`patient_name_idx`, ASCII case folded) serves
/// the column.
fn has_name_index(attribute: Attribute) -> bool {
    attribute == Attribute::PatientName
}

/// The FROM clause: the entity table of `level` (with the dialect's hint)
/// joined up to `top`.
fn from<D: Dialect>(level: Level, top: Level, entry: D::Entry) -> String {
    let (table, joins) = match level {
        Level::Patient => ("patient p", ""),
        Level::Study => ("study st", ""),
        Level::Series => ("series se", " JOIN study st ON st.id = se.study_fk"),
        Level::Image => ("instance i", ""),
    };
    let mut from = format!("{table}{}{joins}", D::table_hint(level, entry));
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

/// The conditions of a query and the aliases they need.
struct Where<D: Dialect> {
    sql: Sql<D>,
    conditions: Vec<String>,
    /// Numbering of the subquery aliases.
    aliases: usize,
}

impl<D: Dialect> Where<D> {
    /// The partition term of every joined table that has a partition column
    /// (one bound value), as the dialect writes it for this entry.
    fn new(query: &Query, level: Level, top: Level, entry: D::Entry) -> Where<D> {
        let mut sql = Sql::default();
        let partition = sql.int(query.partition.0);
        let term =
            |alias: &str, table: Level| D::partition_term(entry, level, table, alias, &partition);
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
            (_, _) if matches!(matcher, Matcher::DateTimeRange { .. }) => {
                self.date_time(attribute, &matcher)
            }
            (_, Kind::Time) => self.time(column(attribute), &matcher),
            (_, Kind::Integer) => self.integer(column(attribute), &matcher),
            (_, Kind::PersonName) => self.person_name(
                column(attribute),
                &matcher,
                pn_case_insensitive,
                has_name_index(attribute),
            ),
            (_, Kind::Text | Kind::Uid | Kind::Date) => self.text(column(attribute), &matcher),
        };
        if let Some(condition) = condition {
            self.conditions.push(condition);
        }
    }

    /// `expr` matching the DICOM wildcard `value` (see [`Dialect::pattern`]).
    fn wildcard(&mut self, expr: &str, value: &str, fold: bool) -> String {
        let pattern = self.sql.text(D::pattern(value, fold));
        format!("{expr} {} {pattern}", D::matches(fold))
    }

    /// Text, UID and date values: exact, pattern, string range, list.
    fn text(&mut self, col: &str, matcher: &Matcher) -> Option<String> {
        Some(match matcher {
            Matcher::Universal => return None,
            Matcher::Single(v) => format!("{col} = {}", self.sql.text(v.clone())),
            Matcher::Wildcard(v) => self.wildcard(col, v, false),
            Matcher::Range { from, to } => {
                let mut parts = Vec::new();
                match from {
                    Some(from) => parts.push(format!("{col} >= {}", self.sql.text(from.clone()))),
                    None => parts.push(format!("{col} > ''")),
                }
                if let Some(to) = to {
                    parts.push(format!("{col} <= {}", self.sql.text(to.clone())));
                }
                parts.join(" AND ")
            }
            Matcher::List(values) => D::any_of(&mut self.sql, col, List::Texts(values)),
            Matcher::DateTimeRange { from, to } => {
                // On a column without a paired time: its dates alone.
                let range = Matcher::Range {
                    from: from.as_ref().map(|b| b.date.clone()),
                    to: to.as_ref().map(|b| b.date.clone()),
                };
                return self.text(col, &range);
            }
        })
    }

    /// Combined date-time range (PS3.4 C.2.2.2.5) on a date column and its
    /// paired time column: after the lower bound's date, or on it at or
    /// after its time; before the upper bound's date, or on it at or before
    /// its time. A stored time that is absent counts as midnight.
    fn date_time(&mut self, attribute: Attribute, matcher: &Matcher) -> Option<String> {
        let Matcher::DateTimeRange { from, to } = matcher else {
            return self.text(column(attribute), matcher);
        };
        let date = column(attribute);
        let Some(time_attribute) = attribute.paired_time() else {
            // No time column: the date range alone.
            let range = Matcher::Range {
                from: from.as_ref().map(|b| b.date.clone()),
                to: to.as_ref().map(|b| b.date.clone()),
            };
            return self.text(date, &range);
        };
        let time_col = column(time_attribute);
        let stored = stored_time(&format!("COALESCE({time_col}, '')"));
        let mut parts = vec![format!("{date} > ''")];
        if let Some(bound) = from {
            let d = self.sql.text(bound.date.clone());
            parts.push(match &bound.time {
                Some(t) => {
                    let t = self.sql.text(time_from(t));
                    format!("({date} > {d} OR ({date} = {d} AND {stored} >= {t}))")
                }
                None => format!("{date} >= {d}"),
            });
        }
        if let Some(bound) = to {
            let d = self.sql.text(bound.date.clone());
            parts.push(match &bound.time {
                Some(t) => {
                    let t = self.sql.text(time_to(t));
                    format!("({date} < {d} OR ({date} = {d} AND {stored} <= {t}))")
                }
                None => format!("{date} <= {d}"),
            });
        }
        Some(parts.join(" AND "))
    }

    /// Times: colons removed, partial values padded (see the module docs).
    fn time(&mut self, col: &str, matcher: &Matcher) -> Option<String> {
        let stored = stored_time(col);
        let range = |w: &mut Where<D>, from: Option<String>, to: Option<String>| -> String {
            let mut parts = vec![format!("{col} <> ''")];
            if let Some(from) = from {
                parts.push(format!("{stored} >= {}", w.sql.text(from)));
            }
            if let Some(to) = to {
                parts.push(format!("{stored} <= {}", w.sql.text(to)));
            }
            parts.join(" AND ")
        };
        Some(match matcher {
            Matcher::Universal => return None,
            Matcher::Wildcard(v) => self.wildcard(col, v, false),
            Matcher::Single(v) => range(self, Some(time_from(v)), Some(time_to(v))),
            Matcher::Range { from, to } => range(
                self,
                from.as_deref().map(time_from),
                to.as_deref().map(time_to),
            ),
            Matcher::DateTimeRange { .. } => return None,
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
                Some(n) => format!("{col} = {}", self.sql.int(n)),
                None => D::FALSE.to_string(),
            },
            Matcher::Wildcard(v) => self.wildcard(&format!("CAST({col} AS TEXT)"), v, false),
            Matcher::Range { from, to } => {
                let mut parts = vec![format!("{col} IS NOT NULL")];
                for (bound, op) in [(from, ">="), (to, "<=")] {
                    if let Some(bound) = bound {
                        match parse(bound) {
                            Some(n) => parts.push(format!("{col} {op} {}", self.sql.int(n))),
                            None => return Some(D::FALSE.to_string()),
                        }
                    }
                }
                parts.join(" AND ")
            }
            Matcher::DateTimeRange { .. } => return None,
            Matcher::List(values) => {
                let numbers: Vec<i64> = values.iter().filter_map(|v| parse(v)).collect();
                D::any_of(&mut self.sql, col, List::Ints(&numbers))
            }
        })
    }

    /// Person names: exact or wildcard, folded when `fold` (see the module
    /// docs); `indexed` adds the conditions the name index serves.
    fn person_name(
        &mut self,
        col: &str,
        matcher: &Matcher,
        fold: bool,
        indexed: bool,
    ) -> Option<String> {
        match matcher {
            Matcher::Single(v) if fold && v.is_ascii() => {
                Some(D::equal_nocase(&mut self.sql, col, v, None))
            }
            Matcher::Single(v) if !fold => {
                let p = self.sql.text(v.clone());
                Some(if indexed {
                    let nocase = D::equal_nocase(&mut self.sql, col, v, Some(&p));
                    format!("{nocase} AND {col} = {p}")
                } else {
                    format!("{col} = {p}")
                })
            }
            Matcher::Single(v) | Matcher::Wildcard(v) => {
                let mut parts = Vec::new();
                let prefix = like_prefix(v);
                if indexed && !prefix.is_empty() {
                    parts.push(D::prefix_nocase(&mut self.sql, col, &prefix));
                }
                parts.push(self.wildcard(col, v, fold));
                Some(parts.join(" AND "))
            }
            Matcher::List(values) if fold => {
                let patterns: Vec<String> = values.iter().map(|v| D::pattern(v, true)).collect();
                let (rows, value) = D::bind_list(&mut self.sql, List::Texts(&patterns));
                let op = D::matches(true);
                Some(format!(
                    "EXISTS (SELECT 1 FROM {rows} WHERE {col} {op} {value})"
                ))
            }
            _ => self.text(col, matcher),
        }
    }

    /// A study summary (ModalitiesInStudy, SOPClassesInStudy): the study
    /// matches when one of the values below it matches. Single values and
    /// lists are looked up as whole elements of the study's `\`-joined
    /// `summary` column (in SQLite's `study_date_idx` for the modalities, so
    /// a scan rejects studies without reading them); other matchers (a
    /// wildcard could span two elements of the joined text) test the rows
    /// below: `EXISTS (SELECT 1 FROM <below> AND <alias>.<column> …)`, where
    /// `{a}` in `below` is the subquery's alias.
    fn summary(
        &mut self,
        summary: &str,
        below: &str,
        column: &str,
        matcher: &Matcher,
    ) -> Option<String> {
        let joined = format!("('\\' || {summary} || '\\')");
        let position = D::POSITION;
        match matcher {
            Matcher::Single(v) => Some(format!(
                "{position}({joined}, {}) > 0",
                self.sql.text(format!("\\{v}\\"))
            )),
            // Lists of modalities and SOP classes are short: one term each.
            Matcher::List(values) => {
                let terms: Vec<String> = values
                    .iter()
                    .map(|v| {
                        let element = self.sql.text(format!("\\{v}\\"));
                        format!("{position}({joined}, {element}) > 0")
                    })
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
