//! C-FIND on SQLite: [`QueryStore`] for [`SqliteIndex`], and SQLite's
//! [`Dialect`] of the planner (`db/planner.rs`, whose module docs state the
//! plan and the matching rules): `?n` parameters, GLOB patterns (letters
//! folded as classes: `[mM][üÜ]`), lists bound as one JSON array read with
//! `json_each`, NOCASE for the name index, and the table a statement enters
//! by chosen here, not left to SQLite's planner ([`Entry`]).
//!
//! Statements run on a pooled reader connection and never wait for the
//! writer; they are cached per connection (`prepare_cached`), their text
//! depending only on the query's shape.

use std::fmt::Write as _;
use std::ops::ControlFlow;

use rusqlite::types::Value;
use rusqlite::{Connection, Row};

use super::{is_busy, SqliteIndex};
use crate::db::matching::{case_variants, effective};
use crate::db::planner::{self, Dialect, List, Sql};
use crate::db::rows::stored_instance;
use crate::db::{Error, QueryStore};
use crate::model::query::{Attribute, Key, Level, Match, Matcher, Query};
use crate::model::StoredInstance;

impl QueryStore for SqliteIndex {
    fn find(
        &self,
        query: &Query,
        sink: &mut dyn FnMut(Match) -> ControlFlow<()>,
    ) -> Result<(), Error> {
        let plan = planner::find::<SqliteDialect>(query);
        self.stream("answering a query", |conn, delivered| {
            let mut stmt = conn.prepare_cached(&plan.sql.text)?;
            let mut rows = stmt.query(rusqlite::params_from_iter(&plan.sql.params))?;
            while let Some(row) = rows.next()? {
                let found = match_from_row(&plan.returned, row)?;
                *delivered = true;
                if sink(found).is_break() {
                    break;
                }
            }
            Ok(())
        })
    }

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
        let sql = planner::retrieve_entities::<SqliteDialect>(query);
        self.stream("listing instances to retrieve", |conn, delivered| {
            let mut stmt = conn.prepare_cached(&sql.text)?;
            let mut rows = stmt.query(rusqlite::params_from_iter(&sql.params))?;
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
            let mut below =
                conn.prepare_cached(&planner::instances_below::<SqliteDialect>(query.level))?;
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

/// Reads one row of [`planner::find`]: the `returned` attributes in order.
fn match_from_row(returned: &[Attribute], row: &Row<'_>) -> rusqlite::Result<Match> {
    let mut values = Vec::with_capacity(returned.len());
    for (idx, attribute) in returned.iter().enumerate() {
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

/// SQLite's way of writing the planner's statements.
#[derive(Debug)]
pub(super) struct SqliteDialect;

impl Dialect for SqliteDialect {
    type Value = Value;
    type Entry = Entry;

    const FALSE: &'static str = "0";
    const POSITION: &'static str = "instr";
    const UNLIMITED: Option<&'static str> = Some("-1");

    fn int(n: i64) -> Value {
        Value::Integer(n)
    }

    fn text(text: String) -> Value {
        Value::Text(text)
    }

    fn parameter(n: usize, _value: &Value) -> String {
        format!("?{n}")
    }

    /// GLOB, case-sensitive; folding is in the pattern.
    fn matches(_fold: bool) -> &'static str {
        "GLOB"
    }

    fn pattern(value: &str, fold: bool) -> String {
        glob(value, fold)
    }

    /// One JSON array (text), read with `json_each`.
    fn bind_list(sql: &mut Sql<Self>, list: List<'_>) -> (String, &'static str) {
        let json = match list {
            List::Texts(values) => json_strings(values.iter().map(String::as_str)),
            List::Ints(numbers) => {
                let numbers: Vec<String> = numbers.iter().map(i64::to_string).collect();
                format!("[{}]", numbers.join(","))
            }
        };
        (format!("json_each({})", sql.text(json)), "value")
    }

    fn equal_nocase(sql: &mut Sql<Self>, col: &str, value: &str, bound: Option<&str>) -> String {
        let p = match bound {
            Some(p) => p.to_string(),
            None => sql.text(value),
        };
        format!("{col} = {p} COLLATE NOCASE")
    }

    fn prefix_nocase(sql: &mut Sql<Self>, col: &str, prefix: &str) -> String {
        format!("{col} LIKE {} ESCAPE '\\'", sql.text(format!("{prefix}%")))
    }

    fn entry(query: &Query, keys: &[&Key]) -> Entry {
        Entry::of(query, keys)
    }

    /// A study-level scan in date order names `study_date_idx`.
    fn table_hint(level: Level, entry: Entry) -> &'static str {
        match (level, entry) {
            (Level::Study, Entry::Level | Entry::StudyDate) => " INDEXED BY study_date_idx",
            _ => "",
        }
    }

    /// Usable by an index only on the entry table: `+alias.partition_id`
    /// (a filter) on the others.
    fn partition_term(
        entry: Entry,
        level: Level,
        table: Level,
        alias: &str,
        param: &str,
    ) -> String {
        let plus = if entry.table(level) == Some(table) {
            ""
        } else {
            "+"
        };
        format!("{plus}{alias}.partition_id = {param}")
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
pub(super) enum Entry {
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
            Some(Matcher::DateTimeRange { from, to }) => {
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

    /// The table whose partition term an index may use in a statement at
    /// `level` (none when entering by series: they have no partition).
    fn table(self, level: Level) -> Option<Level> {
        match self {
            Entry::Patient => Some(Level::Patient),
            Entry::Study | Entry::StudyDate => Some(Level::Study),
            Entry::Series => None,
            Entry::Instance => Some(Level::Image),
            Entry::Level => Some(match level {
                // Series are entered through their studies.
                Level::Series => Level::Study,
                level => level,
            }),
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
    fn patterns_escape_and_fold() {
        assert_eq!(glob("A[1]*?", false), "A[[]1[]]*?");
        assert_eq!(glob("mü*", true), "[mM][üÜ]*");
        // ß upper-cases to "SS": not folded; ẞ lower-cases to ß.
        assert_eq!(glob("1^ß", true), "1^ß");
        assert_eq!(glob("ẞ", true), "[ẞß]");
        assert_eq!(
            json_strings(["a\"b", "c\\d", "\u{1}"].into_iter()),
            r#"["a\"b","c\\d","\u0001"]"#
        );
    }
}
