//! Matching values: a key's request values → a [`Matcher`] (PS3.4
//! C.2.2.2), shared by C-FIND identifiers and, later, QIDO-RS query
//! parameters.

use super::*;

fn has_wildcard(value: &str) -> bool {
    value.contains(['*', '?'])
}

/// The matcher of one key from its request values (each trimmed of
/// padding, one per backslash-separated part; none for zero length), as
/// PS3.4 C.2.2.2 and PS3.18 (QIDO-RS) both read them; the flag says a value
/// was ignored (count attributes are return-only).
pub fn parse_matcher(
    attribute: Attribute,
    values: &[String],
) -> Result<(Matcher, bool), QueryKeyError> {
    let bad = |value: &str, reason: &'static str| QueryKeyError::BadValue {
        attribute,
        value: value.chars().take(32).collect(),
        reason,
    };
    let kind = attribute.kind();
    let non_empty: Vec<&String> = values.iter().filter(|v| !v.is_empty()).collect();
    if non_empty.is_empty() {
        return Ok((Matcher::Universal, false));
    }
    if kind == Kind::Count {
        return Ok((Matcher::Universal, true));
    }
    if non_empty.len() > MAX_LIST_VALUES {
        return Err(bad(non_empty[0], "a list of more than 4096 values"));
    }
    const _: () = assert!(MAX_LIST_VALUES == 4096, "keep the message above in step");
    if non_empty.len() > 1 {
        for value in &non_empty {
            match kind {
                Kind::Text | Kind::PersonName if has_wildcard(value) => {
                    return Err(bad(value, "wildcard in a list"));
                }
                Kind::Date => check_date(value).map_err(|r| bad(value, r))?,
                Kind::Time => check_time(value).map_err(|r| bad(value, r))?,
                Kind::Integer => check_integer(value).map_err(|r| bad(value, r))?,
                _ => {}
            }
        }
        let list = non_empty.into_iter().cloned().collect();
        return Ok((Matcher::List(list), false));
    }
    let value = non_empty[0].as_str();
    // `*` alone is universal matching (PS3.4 C.2.2.2.4), for every VR:
    // unlike a wildcard it also matches entities without a value.
    if value.chars().all(|c| c == '*') {
        return Ok((Matcher::Universal, false));
    }
    let matcher = match kind {
        Kind::Text | Kind::PersonName if has_wildcard(value) => Matcher::Wildcard(value.into()),
        Kind::Text | Kind::PersonName | Kind::Uid => Matcher::Single(value.into()),
        Kind::Integer => {
            check_integer(value).map_err(|r| bad(value, r))?;
            Matcher::Single(value.into())
        }
        Kind::Date | Kind::Time => {
            let check = if kind == Kind::Date {
                check_date
            } else {
                check_time
            };
            match value.split_once('-') {
                None => {
                    check(value).map_err(|r| bad(value, r))?;
                    Matcher::Single(value.into())
                }
                Some((from, to)) => {
                    let (from, to) = (trim(from), trim(to));
                    if from.is_empty() && to.is_empty() {
                        Matcher::Universal
                    } else {
                        let bound = |b: &str| -> Result<Option<String>, QueryKeyError> {
                            if b.is_empty() {
                                return Ok(None);
                            }
                            check(b).map_err(|r| bad(value, r))?;
                            Ok(Some(b.to_string()))
                        };
                        Matcher::Range {
                            from: bound(from)?,
                            to: bound(to)?,
                        }
                    }
                }
            }
        }
        Kind::Count => unreachable!("count attributes returned above"),
    };
    Ok((matcher, false))
}

/// DA: `YYYYMMDD` with a plausible month and day.
fn check_date(value: &str) -> Result<(), &'static str> {
    let digits = value.len() == 8 && value.bytes().all(|b| b.is_ascii_digit());
    if !digits {
        return Err("not a date YYYYMMDD or range");
    }
    let month: u32 = value[4..6].parse().unwrap_or(0);
    let day: u32 = value[6..8].parse().unwrap_or(0);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return Err("not a valid date");
    }
    Ok(())
}

/// TM: `HH[MM[SS[.F{1,6}]]]`.
fn check_time(value: &str) -> Result<(), &'static str> {
    const BAD: &str = "not a time HHMMSS.FFFFFF or range";
    let (whole, fraction) = match value.split_once('.') {
        Some((whole, fraction)) => (whole, Some(fraction)),
        None => (value, None),
    };
    if !matches!(whole.len(), 2 | 4 | 6) || !whole.bytes().all(|b| b.is_ascii_digit()) {
        return Err(BAD);
    }
    if let Some(fraction) = fraction {
        let ok = whole.len() == 6
            && (1..=6).contains(&fraction.len())
            && fraction.bytes().all(|b| b.is_ascii_digit());
        if !ok {
            return Err(BAD);
        }
    }
    let part = |i: usize| whole.get(i..i + 2).map(|p| p.parse::<u32>().unwrap_or(99));
    let in_range = part(0).is_none_or(|h| h < 24)
        && part(2).is_none_or(|m| m < 60)
        && part(4).is_none_or(|s| s < 61);
    if !in_range {
        return Err("not a valid time");
    }
    Ok(())
}

/// IS: an optionally signed integer.
fn check_integer(value: &str) -> Result<(), &'static str> {
    let digits = value.strip_prefix(['+', '-']).unwrap_or(value);
    if digits.is_empty() || digits.len() > 11 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err("not an integer");
    }
    Ok(())
}

/// Combined date-time matching (PS3.4 C.2.2.2.5): a date range key and its
/// paired time key ([`Attribute::paired_time`], a single value or a range)
/// become one [`Matcher::DateTimeRange`] on the date key, from the lower
/// date at the lower time to the upper date at the upper time; the time key
/// is then universal (still returned). Any other pair (a single date, a
/// universal date or time, a list) matches as before: for a single date
/// the combined range and the separate ones are the same. C-FIND applies
/// this when the SCU negotiated it; QIDO-RS always (PS3.18 8.3.4.6.2).
pub fn combine_date_time(keys: &mut [Key]) {
    for date_index in 0..keys.len() {
        let Some(time_attribute) = keys[date_index].attribute.paired_time() else {
            continue;
        };
        let Matcher::Range { from, to } = &keys[date_index].matcher else {
            continue;
        };
        let Some(time_index) = keys.iter().position(|k| k.attribute == time_attribute) else {
            continue;
        };
        let (time_from, time_to) = match &keys[time_index].matcher {
            Matcher::Single(t) => (Some(t.clone()), Some(t.clone())),
            Matcher::Range { from, to } => (from.clone(), to.clone()),
            _ => continue,
        };
        let bound = |date: &Option<String>, time: Option<String>| {
            date.clone().map(|date| DateTimeBound { date, time })
        };
        let combined = Matcher::DateTimeRange {
            from: bound(from, time_from),
            to: bound(to, time_to),
        };
        keys[date_index].matcher = combined;
        keys[time_index].matcher = Matcher::Universal;
    }
}
