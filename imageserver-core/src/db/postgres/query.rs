//! C-FIND on PostgreSQL: [`QueryStore`] for [`PgIndex`], and PostgreSQL's
//! [`Dialect`] of the planner (`db/planner.rs`, whose module docs state the
//! plan and the matching rules). How SQLite's forms map here (text columns
//! are COLLATE "C", so comparisons and order are by code point as with
//! SQLite's BINARY):
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
//!   arrays (`= ANY($n::text[])`, `unnest`); SQLite's planner hints
//!   (`INDEXED BY`, `+col`) have no counterpart: PostgreSQL plans from its
//!   statistics.
//!
//! The SQL text depends only on the query's shape, so each connection's
//! prepared-statement cache serves repeated queries. `find_instances` is
//! one statement at every level ([`planner::retrieve_instances`]: the
//! matching entities in a subquery), so the instances come from one
//! snapshot, as SQLite's one read transaction gives; the rows are read whole
//! before they reach the sink, so a slow sink (a C-MOVE sending files) never
//! holds a statement open against `statement_timeout`. `find` streams its
//! rows to the sink [`FIND_CHUNK`] at a time: each chunk is read inside the
//! index's runtime and handed to the sink outside it, so a sink that
//! blocks holds its connection but not the runtime other callers drive.

use std::ops::ControlFlow;

use futures_util::TryStreamExt;
use sqlx::postgres::{PgArguments, PgRow};
use sqlx::{AssertSqlSafe, PgConnection, Postgres, Row};

use super::retry::{lease, lost_connection, timed_out};
use super::{map_error, PgIndex};
use crate::db::matching::case_variants;
use crate::db::planner::{self, Dialect, List, Sql};
use crate::db::rows::stored_instance;
use crate::db::{Error, QueryStore};
use crate::model::query::{Attribute, Key, Match, Query};
use crate::model::StoredInstance;

/// Rows of a query read at once before they go to the sink.
const FIND_CHUNK: usize = 256;

impl QueryStore for PgIndex {
    /// A connection lost before any row reached the sink is retried once on
    /// a checked connection; after that, the error is the caller's.
    fn find(
        &self,
        query: &Query,
        sink: &mut dyn FnMut(Match) -> ControlFlow<()>,
    ) -> Result<(), Error> {
        let plan = planner::find::<PgDialect>(query);
        let operation = "answering a query";
        let mut checked = false;
        loop {
            let mut delivered = false;
            match self.find_once(&plan, checked, sink, &mut delivered) {
                Ok(()) => return Ok(()),
                Err(e) if !checked && !delivered && lost_connection(&e) => {
                    tracing::info!(operation, error = %e, "index connection lost, retrying on a checked connection");
                    checked = true;
                }
                Err(e) => return Err(map_error(operation, e)),
            }
        }
    }

    fn find_instances(
        &self,
        query: &Query,
        sink: &mut dyn FnMut(StoredInstance) -> ControlFlow<()>,
    ) -> Result<(), Error> {
        let sql = planner::retrieve_instances::<PgDialect>(query);
        let instances = self.read_query(
            "listing instances to retrieve",
            async |conn: &mut PgConnection| {
                let rows = statement(&sql).fetch_all(&mut *conn).await?;
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

impl PgIndex {
    /// One attempt of [`QueryStore::find`]; `delivered` is set once a row
    /// reached the sink. Each chunk's read is bounded by the call timeout.
    fn find_once(
        &self,
        plan: &planner::Plan<PgDialect>,
        checked: bool,
        sink: &mut dyn FnMut(Match) -> ControlFlow<()>,
        delivered: &mut bool,
    ) -> Result<(), sqlx::Error> {
        // The connection goes back to its pool (a task of the runtime) when
        // dropped, here or on an early return.
        let _runtime = self.runtime.enter();
        let mut conn = self
            .block_on(lease(&self.query_pool, None, checked))
            .map_err(timed_out)??;
        let mut rows = statement(&plan.sql).fetch(&mut *conn);
        let mut chunk = Vec::with_capacity(FIND_CHUNK);
        loop {
            let ended = self
                .block_on(async {
                    while chunk.len() < FIND_CHUNK {
                        match rows.try_next().await? {
                            Some(row) => chunk.push(match_from_row(&plan.returned, &row)?),
                            None => return Ok(true),
                        }
                    }
                    Ok::<_, sqlx::Error>(false)
                })
                .map_err(timed_out)??;
            for found in chunk.drain(..) {
                *delivered = true;
                if sink(found).is_break() {
                    return Ok(());
                }
            }
            if ended {
                return Ok(());
            }
        }
    }
}

/// A statement with its values bound.
fn statement(sql: &Sql<PgDialect>) -> sqlx::query::Query<'static, Postgres, PgArguments> {
    let mut query = sqlx::query(AssertSqlSafe(sql.text.clone()));
    for value in &sql.params {
        query = match value {
            Value::Int(n) => query.bind(*n),
            Value::Text(t) => query.bind(t.clone()),
            Value::Texts(t) => query.bind(t.clone()),
            Value::Ints(n) => query.bind(n.clone()),
        };
    }
    query
}

/// Reads one row of [`planner::find`]: the `returned` attributes in order
/// (every column selected as text).
fn match_from_row(returned: &[Attribute], row: &PgRow) -> Result<Match, sqlx::Error> {
    let mut values = Vec::with_capacity(returned.len());
    for (idx, attribute) in returned.iter().enumerate() {
        let value: Option<String> = row.try_get(idx)?;
        values.push((*attribute, value.filter(|v| !v.is_empty())));
    }
    Ok(Match { values })
}

/// A bound value.
#[derive(Debug, Clone)]
enum Value {
    /// BIGINT.
    Int(i64),
    /// TEXT.
    Text(String),
    /// `text[]`.
    Texts(Vec<String>),
    /// `bigint[]`.
    Ints(Vec<i64>),
}

/// PostgreSQL's way of writing the planner's statements.
#[derive(Debug)]
struct PgDialect;

impl Dialect for PgDialect {
    type Value = Value;
    /// PostgreSQL plans from its statistics: no entry hints.
    type Entry = ();

    const FALSE: &'static str = "FALSE";
    const POSITION: &'static str = "strpos";
    const UNLIMITED: Option<&'static str> = None;

    fn int(n: i64) -> Value {
        Value::Int(n)
    }

    fn text(text: String) -> Value {
        Value::Text(text)
    }

    /// `$n`, with a cast for arrays.
    fn parameter(n: usize, value: &Value) -> String {
        let cast = match value {
            Value::Texts(_) => "::text[]",
            Value::Ints(_) => "::bigint[]",
            Value::Int(_) | Value::Text(_) => "",
        };
        format!("${n}{cast}")
    }

    /// LIKE, or a regular expression when folded.
    fn matches(fold: bool) -> &'static str {
        if fold {
            "~"
        } else {
            "LIKE"
        }
    }

    fn pattern(value: &str, fold: bool) -> String {
        if fold {
            regex(value)
        } else {
            like(value)
        }
    }

    /// An array, read with `unnest`.
    fn bind_list(sql: &mut Sql<Self>, list: List<'_>) -> (String, &'static str) {
        let array = sql.bind(array(list));
        (format!("unnest({array}) AS v(value)"), "v.value")
    }

    /// `col = ANY($n)`: an array parameter.
    fn any_of(sql: &mut Sql<Self>, col: &str, list: List<'_>) -> String {
        format!("{col} = ANY({})", sql.bind(array(list)))
    }

    /// `lower(col)`, which `patient_name_idx` indexes, against the value
    /// folded in ASCII.
    fn equal_nocase(sql: &mut Sql<Self>, col: &str, value: &str, _bound: Option<&str>) -> String {
        format!("lower({col}) = {}", sql.text(value.to_ascii_lowercase()))
    }

    fn prefix_nocase(sql: &mut Sql<Self>, col: &str, prefix: &str) -> String {
        let prefix = sql.text(format!("{}%", prefix.to_ascii_lowercase()));
        format!("lower({col}) LIKE {prefix}")
    }

    /// Every column as text, as [`match_from_row`] reads it.
    fn select(col: &str) -> String {
        format!("CAST({col} AS TEXT)")
    }

    fn entry(_query: &Query, _keys: &[&Key]) {}
}

/// A list as an array value.
fn array(list: List<'_>) -> Value {
    match list {
        List::Texts(values) => Value::Texts(values.to_vec()),
        List::Ints(numbers) => Value::Ints(numbers.to_vec()),
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
    }
}
