//! Dialect-free pieces of C-FIND planning: which keys count at a query
//! level, which attributes a match returns, how far up the joins go, the
//! matcher a key really needs, and the value transforms of prefix matching,
//! case folding and time ranges. The planner (`planner.rs`) turns them into
//! SQL through each backend's dialect.

use crate::model::query::{Attribute, Key, Level, Matcher, Query, Root};

/// The keys that restrict or return at `query.level`: those of levels
/// below it are ignored.
pub(crate) fn keys(query: &Query) -> Vec<&Key> {
    query
        .keys
        .iter()
        .filter(|k| k.attribute.level_in(query.root) <= query.level)
        .collect()
}

/// The returned attributes: the query's keys in order (each once), then the
/// unique keys of the level and the levels above that are missing.
pub(crate) fn returned(query: &Query) -> Vec<Attribute> {
    let mut returned: Vec<Attribute> = Vec::new();
    for key in keys(query) {
        if !returned.contains(&key.attribute) {
            returned.push(key.attribute);
        }
    }
    let level = query.level;
    let mut unique = Vec::new();
    if query.root == Root::Patient || level <= Level::Study {
        unique.push(Attribute::PatientId);
    }
    // A patient is its ID *and* issuer: readers of patient matches (the
    // pages of a C-FIND) tell two patients with one ID apart by it.
    if level == Level::Patient {
        unique.push(Attribute::IssuerOfPatientId);
    }
    for l in [Level::Study, Level::Series, Level::Image] {
        if l <= level {
            unique.push(Attribute::unique_key(l));
        }
    }
    for attribute in unique {
        if !returned.contains(&attribute) {
            returned.push(attribute);
        }
    }
    returned
}

/// The highest level whose table a query at `level` joins: that of the
/// highest attribute, and at least the study for series (whose partition is
/// the study's).
pub(crate) fn top<'a>(level: Level, attributes: impl Iterator<Item = &'a Attribute>) -> Level {
    let mut top = level;
    for attribute in attributes {
        top = top.min(attribute.level());
    }
    if level == Level::Series {
        top = top.min(Level::Study);
    }
    top
}

/// The matcher as it restricts: `None` for universal matching (including a
/// wildcard of only `*`, and lists of only empty values); a wildcard without
/// `*` or `?` is a single value; empty list values are dropped.
pub(crate) fn effective(matcher: &Matcher) -> Option<Matcher> {
    match matcher {
        Matcher::Universal => None,
        Matcher::Single(v) if v.is_empty() => None,
        Matcher::Wildcard(v) if v.chars().all(|c| c == '*') => None,
        Matcher::Wildcard(v) if !v.contains(['*', '?']) => Some(Matcher::Single(v.clone())),
        Matcher::Range {
            from: None,
            to: None,
        } => Some(matcher.clone()),
        Matcher::Range { from, to } => {
            let keep = |b: &Option<String>| b.clone().filter(|b| !b.is_empty());
            Some(Matcher::Range {
                from: keep(from),
                to: keep(to),
            })
        }
        Matcher::List(values) => {
            let values: Vec<String> = values.iter().filter(|v| !v.is_empty()).cloned().collect();
            match values.len() {
                0 => None,
                _ => Some(Matcher::List(values)),
            }
        }
        other => Some(other.clone()),
    }
}

/// `c` and its simple (one-character) upper and lower case mappings.
pub(crate) fn case_variants(c: char) -> Vec<char> {
    fn single(mut it: impl Iterator<Item = char>) -> Option<char> {
        let first = it.next()?;
        it.next().is_none().then_some(first)
    }
    let mut variants = vec![c];
    let lower = single(c.to_lowercase());
    let upper = single(c.to_uppercase());
    let candidates = [
        lower,
        upper,
        lower.and_then(|l| single(l.to_uppercase())),
        upper.and_then(|u| single(u.to_lowercase())),
    ];
    for candidate in candidates.into_iter().flatten() {
        // `]`, `^`, `-` and `\` would change the class; letters are never those.
        if !variants.contains(&candidate) && !matches!(candidate, ']' | '^' | '-' | '\\') {
            variants.push(candidate);
        }
    }
    variants
}

/// The literal ASCII prefix of a value (up to its first wildcard or
/// non-ASCII character) as LIKE text, with `\`, `%` and `_` escaped.
pub(crate) fn like_prefix(value: &str) -> String {
    let mut out = String::new();
    for c in value.chars() {
        match c {
            '*' | '?' => break,
            c if !c.is_ascii() => break,
            '\\' | '%' | '_' => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out
}

/// The lower bound of a time: colons removed, padded with zeros to `HHMMSS`.
pub(crate) fn time_from(value: &str) -> String {
    let v: String = value.trim().chars().filter(|c| *c != ':').collect();
    if v.contains('.') || v.len() >= 6 {
        v
    } else {
        format!("{v}{}", &"000000"[v.len()..])
    }
}

/// The upper bound of a time: colons removed, padded so that a partial value
/// covers its whole unit (`12` → `125959.999999`).
pub(crate) fn time_to(value: &str) -> String {
    let v: String = value.trim().chars().filter(|c| *c != ':').collect();
    match v.split_once('.') {
        Some((whole, fraction)) if fraction.len() < 6 => {
            format!("{whole}.{fraction}{}", &"999999"[fraction.len()..])
        }
        Some(_) => v,
        None if v.len() < 6 => format!("{v}{}.999999", &"595959"[v.len()..]),
        None => format!("{v}.999999"),
    }
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
    fn like_prefixes_escape_and_stop_at_wildcards() {
        assert_eq!(like_prefix("DO%_\\E*X"), "DO\\%\\_\\\\E");
        assert_eq!(like_prefix("Mü*"), "M");
    }
}
