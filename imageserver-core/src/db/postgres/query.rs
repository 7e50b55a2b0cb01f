//! C-FIND on PostgreSQL: [`QueryStore`] for [`PgIndex`].
//!
//! The same plan as the SQLite backend's (`db/sqlite/query.rs`, whose module
//! docs state the matching rules): each [`Query`] becomes **one**
//! parameterised statement over the level's table joined upward as far as
//! the keys need, one condition per matching key, every value bound, the
//! level's stable order and `LIMIT limit + 1`. The SQL text depends only on
//! the query's shape (lists are bound as one array: `= ANY($n::text[])`), so
//! each connection's prepared-statement cache serves repeated queries.
//!
//! How SQLite's operators map here (text columns are COLLATE "C", so
//! comparisons and order are by code point as with SQLite's BINARY):
//! - `GLOB` (case-sensitive wildcard) → `LIKE` with `%`, `_` and `\` of the
//!   value escaped, `*` → `%`, `?` → `_`.
//! - The case-folded name match (a GLOB whose letters are classes of their
//!   one-character case mappings) → an anchored regular expression with the
//!   same classes: `müller*` → `^[mM][üÜ][lL][lL][eE][rR].*$`.
//! - `= ? COLLATE NOCASE` and the NOCASE index's `LIKE 'prefix%'` →
//!   `lower(col) = ?` and `lower(col) LIKE 'prefix%'` with the value folded
//!   in ASCII: lower() of a "C" column folds ASCII only, exactly as NOCASE,
//!   and `patient_name_idx` is an index on it.
//! - `instr('\' || summary || '\', ?)` → `strpos(…)`; `json_each` lists →
//!   arrays; SQLite's planner hints (`INDEXED BY`, `+col`) have no
//!   counterpart: PostgreSQL plans from its statistics.
//!
//! `find_instances` is one statement at every level (the matching entities
//! in a subquery), so the instances come from one snapshot, as SQLite's one
//! read transaction gives; the rows are read whole before they reach the
//! sink, so a slow sink (a C-MOVE sending files) never holds a statement
//! open against `statement_timeout`.

use std::fmt::Write as _;
use std::ops::ControlFlow;

use futures_util::TryStreamExt;
use sqlx::postgres::PgArguments;
use sqlx::{AssertSqlSafe, PgConnection, Postgres, Row};

use super::{stored_instance, PgIndex};
use crate::db::matching::{
    case_variants, effective, keys, like_prefix, returned, time_from, time_to, top,
};
use crate::db::{Error, QueryStore};
use crate::model::query::{Attribute, Key, Kind, Level, Match, Matcher, Query};
use crate::model::StoredInstance;

impl QueryStore for PgIndex {
    fn find(
        &self,
        query: &Query,
        sink: &mut dyn FnMut(Match) -> ControlFlow<()>,
    ) -> Result<(), Error> {
        let plan = Plan::find(query);
        self.read_query("answering a query", async |conn: &mut PgConnection| {
            let mut rows = plan.sql.query().fetch(&mut *conn);
            while let Some(row) = rows.try_next().await? {
                let found = plan.row(&row)?;
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
    fn find_instances(
        &self,
        query: &Query,
        sink: &mut dyn FnMut(StoredInstance) -> ControlFlow<()>,
    ) -> Result<(), Error> {
        let sql = instances(query);
        let instances = self.read_query(
            "listing instances to retrieve",
            async |conn: &mut PgConnection| {
                let rows = sql.query().fetch_all(&mut *conn).await?;
                rows.iter()
                    .map(stored_instance)
                    .collect::<Result<Vec<_>, _>>()
            },
        )?;
        for instance in instances {
            if sink(instance).is_break() {
                break;
            }
        }
        Ok(())
    }
}

/// A bound value.
#[derive(Debug, Clone)]
enum Value {
    Int(i64),
    Text(String),
    Texts(Vec<String>),
    Ints(Vec<i64>),
}

/// SQL text and the values bound to its numbered parameters.
#[derive(Debug, Default)]
struct Sql {
    text: String,
    params: Vec<Value>,
}

impl Sql {
    /// Adds a bound value and returns its parameter (`$n`, with a cast for
    /// arrays).
    fn bind(&mut self, value: Value) -> String {
        let cast = match &value {
            Value::Texts(_) => "::text[]",
            Value::Ints(_) => "::bigint[]",
            Value::Int(_) | Value::Text(_) => "",
        };
        self.params.push(value);
        format!("${}{cast}", self.params.len())
    }

    fn text(&mut self, value: impl Into<String>) -> String {
        self.bind(Value::Text(value.into()))
    }

    /// The statement with its values bound.
    fn query(&self) -> sqlx::query::Query<'static, Postgres, PgArguments> {
        let mut query = sqlx::query(AssertSqlSafe(self.text.clone()));
        for value in &self.params {
            query = match value {
                Value::Int(n) => query.bind(*n),
                Value::Text(t) => query.bind(t.clone()),
                Value::Texts(t) => query.bind(t.clone()),
                Value::Ints(n) => query.bind(n.clone()),
            };
        }
        query
    }
}

/// A query turned into SQL, and how to read its rows back.
#[derive(Debug)]
struct Plan {
    sql: Sql,
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

/// The stable order of each level's entities.
fn order(level: Level) -> &'static str {
    match level {
        Level::Patient => "p.patient_id, p.issuer_of_patient_id",
        Level::Study => "st.study_date NULLS LAST, st.study_time NULLS LAST, st.study_uid",
        Level::Series => "se.series_number NULLS LAST, se.series_uid, se.id",
        Level::Image => "i.instance_number NULLS LAST, i.sop_instance_uid",
    }
}

impl Plan {
    /// The statement of [`QueryStore::find`].
    fn find(query: &Query) -> Plan {
        let level = query.level;
        let returned = returned(query);
        let keys = keys(query);
        let top = top(
            level,
            returned.iter().chain(keys.iter().map(|k| &k.attribute)),
        );
        let mut w = Where::new(query, level, top);
        for key in &keys {
            w.key(key, query.pn_case_insensitive);
        }
        let select: Vec<String> = returned
            .iter()
            .map(|a| format!("CAST({} AS TEXT)", column(*a)))
            .collect();
        let mut text = format!(
            "SELECT {} FROM {} WHERE {} ORDER BY {}",
            select.join(", "),
            from(level, top),
            w.conditions.join(" AND "),
            order(level)
        );
        let mut sql = w.sql;
        if let Some(limit) = query.limit {
            let limit = i64::try_from(limit.saturating_add(1)).unwrap_or(i64::MAX);
            let limit = sql.bind(Value::Int(limit));
            let _ = write!(text, " LIMIT {limit}");
        }
        if query.offset > 0 {
            let offset = i64::try_from(query.offset).unwrap_or(i64::MAX);
            let offset = sql.bind(Value::Int(offset));
            let _ = write!(text, " OFFSET {offset}");
        }
        sql.text = text;
        Plan { sql, returned }
    }

    /// Reads one row of [`Plan::find`].
    fn row(&self, row: &sqlx::postgres::PgRow) -> Result<Match, sqlx::Error> {
        let mut values = Vec::with_capacity(self.returned.len());
        for (idx, attribute) in self.returned.iter().enumerate() {
            let value: Option<String> = row.try_get(idx)?;
            values.push((*attribute, value.filter(|v| !v.is_empty())));
        }
        Ok(Match { values })
    }
}

/// The columns of a stored instance, from the outer aliases of
/// [`instances`] (`x…`), named as `stored_instance` reads them.
const INSTANCE_COLUMNS: &str = "xss.filesystem_id, xpa.folder, xss.date_folder, xst.study_uid, \
     xse.series_uid, xi.sop_instance_uid, xi.sop_class_uid, xi.transfer_syntax_uid, \
     xi.file_size, xi.digest";

/// The joins from an instance up to its study's location.
const INSTANCE_JOINS: &str = "instance xi JOIN series xse ON xse.id = xi.series_fk \
     JOIN study xst ON xst.id = xse.study_fk \
     JOIN study_storage xss ON xss.id = xst.study_storage_id \
     JOIN partition xpa ON xpa.id = xss.partition_id";

/// Study, series and instance order of retrieved instances.
const INSTANCE_ORDER: &str = "xst.study_date NULLS LAST, xst.study_time NULLS LAST, \
     xst.study_uid, xse.series_number NULLS LAST, xse.series_uid, xse.id, \
     xi.instance_number NULLS LAST, xi.sop_instance_uid";

/// The statement of [`QueryStore::find_instances`]: the online instances
/// below the matching entities (a subquery with the level's key), in the
/// entities' order, then study, series, instance order.
fn instances(query: &Query) -> Sql {
    let level = query.level;
    let keys = keys(query);
    let top = top(level, keys.iter().map(|k| &k.attribute));
    let mut w = Where::new(query, level, top);
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
        "SELECT {INSTANCE_COLUMNS} FROM {INSTANCE_JOINS}{patient_join}
         WHERE xss.filesystem_id IS NOT NULL
           AND {outer} IN (SELECT {entity} FROM {} WHERE {})
         ORDER BY {patient_order}{INSTANCE_ORDER}",
        from(level, top),
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

/// Whether `patient_name_idx` (on `lower(patient_name)`) serves the column.
fn has_lower_index(attribute: Attribute) -> bool {
    attribute == Attribute::PatientName
}

/// The FROM clause: the entity table of `level` joined up to `top`.
fn from(level: Level, top: Level) -> String {
    let mut from = match level {
        Level::Patient => "patient p",
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
    /// (one bound value).
    fn new(query: &Query, level: Level, top: Level) -> Where {
        let mut sql = Sql::default();
        let partition = sql.bind(Value::Int(query.partition.0));
        let mut conditions = Vec::new();
        if top == Level::Patient {
            conditions.push(format!("p.partition_id = {partition}"));
        }
        if top <= Level::Study && level >= Level::Study {
            conditions.push(format!("st.partition_id = {partition}"));
        }
        if level == Level::Image {
            conditions.push(format!("i.partition_id = {partition}"));
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
                has_lower_index(attribute),
            ),
            (_, Kind::Text | Kind::Uid | Kind::Date) => self.text(column(attribute), &matcher),
        };
        if let Some(condition) = condition {
            self.conditions.push(condition);
        }
    }

    /// Text, UID and date values: exact, LIKE, string range, list.
    fn text(&mut self, col: &str, matcher: &Matcher) -> Option<String> {
        Some(match matcher {
            Matcher::Universal => return None,
            Matcher::Single(v) => format!("{col} = {}", self.sql.text(v.clone())),
            Matcher::Wildcard(v) => format!("{col} LIKE {}", self.sql.text(like(v))),
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
            Matcher::List(values) => {
                format!(
                    "{col} = ANY({})",
                    self.sql.bind(Value::Texts(values.clone()))
                )
            }
        })
    }

    /// Times: colons removed, partial values padded (see SQLite's module
    /// docs).
    fn time(&mut self, col: &str, matcher: &Matcher) -> Option<String> {
        let stored = format!(
            "(CASE WHEN length(replace({col}, ':', '')) >= 6 THEN replace({col}, ':', '') \
             ELSE substr(replace({col}, ':', '') || '000000', 1, 6) END)"
        );
        let range = |w: &mut Where, from: Option<String>, to: Option<String>| -> String {
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
            Matcher::Wildcard(v) => format!("{col} LIKE {}", self.sql.text(like(v))),
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
                Some(n) => format!("{col} = {}", self.sql.bind(Value::Int(n))),
                None => "FALSE".to_string(),
            },
            Matcher::Wildcard(v) => {
                format!("CAST({col} AS TEXT) LIKE {}", self.sql.text(like(v)))
            }
            Matcher::Range { from, to } => {
                let mut parts = vec![format!("{col} IS NOT NULL")];
                for (bound, op) in [(from, ">="), (to, "<=")] {
                    if let Some(bound) = bound {
                        match parse(bound) {
                            Some(n) => {
                                parts.push(format!("{col} {op} {}", self.sql.bind(Value::Int(n))))
                            }
                            None => return Some("FALSE".to_string()),
                        }
                    }
                }
                parts.join(" AND ")
            }
            Matcher::List(values) => {
                let numbers: Vec<i64> = values.iter().filter_map(|v| parse(v)).collect();
                format!("{col} = ANY({})", self.sql.bind(Value::Ints(numbers)))
            }
        })
    }

    /// Person names: exact or wildcard, folded when `fold`; `indexed` adds
    /// the conditions `patient_name_idx` serves.
    fn person_name(
        &mut self,
        col: &str,
        matcher: &Matcher,
        fold: bool,
        indexed: bool,
    ) -> Option<String> {
        match matcher {
            Matcher::Single(v) if fold && v.is_ascii() => Some(format!(
                "lower({col}) = {}",
                self.sql.text(v.to_ascii_lowercase())
            )),
            Matcher::Single(v) if !fold => {
                let p = self.sql.text(v.clone());
                Some(if indexed {
                    let lower = self.sql.text(v.to_ascii_lowercase());
                    format!("lower({col}) = {lower} AND {col} = {p}")
                } else {
                    format!("{col} = {p}")
                })
            }
            Matcher::Single(v) | Matcher::Wildcard(v) => {
                let mut parts = Vec::new();
                let prefix = like_prefix(v);
                if indexed && !prefix.is_empty() {
                    parts.push(format!(
                        "lower({col}) LIKE {}",
                        self.sql.text(format!("{}%", prefix.to_ascii_lowercase()))
                    ));
                }
                if fold {
                    parts.push(format!("{col} ~ {}", self.sql.text(regex(v))));
                } else {
                    parts.push(format!("{col} LIKE {}", self.sql.text(like(v))));
                }
                Some(parts.join(" AND "))
            }
            Matcher::List(values) if fold => {
                let patterns: Vec<String> = values.iter().map(|v| regex(v)).collect();
                let list = self.sql.bind(Value::Texts(patterns));
                Some(format!(
                    "EXISTS (SELECT 1 FROM unnest({list}) AS v(pattern) WHERE {col} ~ v.pattern)"
                ))
            }
            _ => self.text(col, matcher),
        }
    }

    /// A study summary (ModalitiesInStudy, SOPClassesInStudy): the study
    /// matches when one of the values below it matches. Single values and
    /// lists are looked up as whole elements of the study's `\`-joined
    /// `summary` column; other matchers test the rows below:
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
                "strpos({joined}, {}) > 0",
                self.sql.text(format!("\\{v}\\"))
            )),
            Matcher::List(values) => {
                let terms: Vec<String> = values
                    .iter()
                    .map(|v| {
                        format!(
                            "strpos({joined}, {}) > 0",
                            self.sql.text(format!("\\{v}\\"))
                        )
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

/// A DICOM wildcard value as a LIKE pattern (escape character `\`).
fn like(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 4);
    for c in value.chars() {
        match c {
            '*' => out.push('%'),
            '?' => out.push('_'),
            '%' | '_' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out
}

/// A DICOM wildcard value as an anchored regular expression whose letters
/// are classes of their one-character case mappings.
fn regex(value: &str) -> String {
    let mut out = String::with_capacity(value.len() * 4 + 2);
    out.push('^');
    for c in value.chars() {
        match c {
            '*' => out.push_str(".*"),
            '?' => out.push('.'),
            c => {
                let variants = case_variants(c);
                if variants.len() > 1 {
                    out.push('[');
                    out.extend(variants);
                    out.push(']');
                } else if c.is_ascii() && !c.is_ascii_alphanumeric() {
                    out.push('\\');
                    out.push(c);
                } else {
                    out.push(c);
                }
            }
        }
    }
    out.push('$');
    out
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn patterns_escape_and_fold() {
        assert_eq!(like("A%_\\*?[x]"), "A\\%\\_\\\\%_[x]");
        assert_eq!(regex("mü*"), "^[mM][üÜ].*$");
        assert_eq!(regex("a.b?(c)"), "^[aA]\\.[bB].\\([cC]\\)$");
        assert_eq!(regex("1^ß"), "^1\\^ß$");
        assert_eq!(like_prefix("DO%_\\E*X"), "DO\\%\\_\\\\E");
        assert_eq!(time_to("12"), "125959.999999");
        assert_eq!(time_from("12:30"), "123000");
    }
}
