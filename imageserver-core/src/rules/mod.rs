//! Rules (F14): what the archive does with a study, declared per partition
//! in a reviewed, versioned TOML file.
//!
//! A rule has a condition on the study's DICOM attributes and actions.
//! Conditions test one attribute (`equals`, `wildcard`, `in`,
//! `older_than_days`, `contains`) and combine with `all`, `any` and `not`.
//! Actions, which the work queue executes: `auto_route` to a device,
//! `delete` after N days, `tier1_retention` (migrate off tier 1 N days
//! after arrival), `online_retention` (purge the online copy N days after
//! the study was archived, archiving it first) and `compress` to RLE
//! Lossless (N days after arrival); and hooks of later issues, declared and
//! validated now but not yet executed: `compress` to the other lossless
//! codecs.
//!
//! Evaluation is pure ([`RuleSet::evaluate`]): a study's attributes and the
//! time in, the matching rules' actions out, each with the reason (the rule,
//! and the conditions that held or failed). `imageserver rules test --study
//! UID` prints it ([`dry_run`]). See [`mod@format`] for the file format.

pub mod dry_run;
pub mod format;

use std::collections::BTreeMap;

use crate::model::query::{Attribute, Kind};
use crate::model::{AeTitle, Uid};

pub use format::{RulesError, FORMAT_VERSION};

/// A validated set of rules, in file order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RuleSet {
    /// The rules.
    pub rules: Vec<Rule>,
}

/// One rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// Unique name (used in reasons, audit records and work items).
    pub name: String,
    /// Free text.
    pub description: String,
    /// The partition it applies to (`None`: every partition).
    pub partition: Option<AeTitle>,
    /// Disabled rules are reported but never match.
    pub enabled: bool,
    /// When it applies.
    pub condition: Condition,
    /// What it does.
    pub actions: Vec<Action>,
}

/// A condition on a study's attributes.
#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    /// Every study (a rule without `when`).
    Always,
    /// Every condition holds.
    All(Vec<Condition>),
    /// At least one condition holds.
    Any(Vec<Condition>),
    /// The condition does not hold.
    Not(Box<Condition>),
    /// A test of one attribute.
    Test {
        /// The attribute (study level, Study Root: patient attributes too).
        attribute: Attribute,
        /// The test.
        test: Test,
    },
}

/// A test of one attribute's value. A missing value fails every test.
#[derive(Debug, Clone, PartialEq)]
pub enum Test {
    /// The value is exactly this (person names: ignoring case).
    Equals(String),
    /// The value matches the pattern: `*` any run, `?` one character
    /// (person names: ignoring case).
    Wildcard(String),
    /// The value is one of these (person names: ignoring case).
    In(Vec<String>),
    /// A date (`YYYYMMDD`) more than this many days before today.
    OlderThanDays(u32),
    /// One of the `\`-separated values is exactly this (ModalitiesInStudy
    /// contains CT).
    Contains(String),
}

/// A lossless transfer syntax a `compress` action may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// RLE Lossless.
    Rle,
    /// JPEG Lossless, first-order prediction (process 14, SV1).
    JpegLossless,
    /// JPEG-LS Lossless.
    JpegLsLossless,
    /// JPEG 2000 Lossless.
    Jpeg2000Lossless,
}

impl Compression {
    /// Every kind, with its name in the rules file.
    pub const ALL: [(Compression, &'static str); 4] = [
        (Compression::Rle, "rle"),
        (Compression::JpegLossless, "jpeg-lossless"),
        (Compression::JpegLsLossless, "jpeg-ls-lossless"),
        (Compression::Jpeg2000Lossless, "jpeg2000-lossless"),
    ];

    /// Its name in the rules file.
    pub fn name(self) -> &'static str {
        Compression::ALL
            .iter()
            .find(|(c, _)| *c == self)
            .map(|(_, n)| *n)
            .unwrap_or("?")
    }

    /// Its transfer syntax UID.
    pub fn transfer_syntax_uid(self) -> &'static str {
        match self {
            Compression::Rle => "1.2.840.10008.1.2.5",
            Compression::JpegLossless => "1.2.840.10008.1.2.4.70",
            Compression::JpegLsLossless => "1.2.840.10008.1.2.4.80",
            Compression::Jpeg2000Lossless => "1.2.840.10008.1.2.4.90",
        }
    }
}

/// What a rule does with a matching study.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Send the study to a device (AutoRoute work item).
    AutoRoute {
        /// The destination, a device of the partition.
        device: AeTitle,
    },
    /// Delete the study this many days after it arrived (DeleteStudy).
    Delete {
        /// Days after arrival.
        after_days: u32,
    },
    /// Migrate the study off tier 1 this many days after it arrived
    /// (`migrate_study`).
    Tier1Retention {
        /// Days after arrival.
        after_days: u32,
    },
    /// Purge the online copy of the study this many days after it was
    /// archived (`purge_study`, which archives it first when it has no
    /// current pack and then waits the days from that pack).
    OnlineRetention {
        /// Days after archiving (so never before as many after arrival).
        after_days: u32,
    },
    /// Compress the study losslessly this many days after it arrived.
    /// Executed for RLE Lossless (`compress_study`); the other codecs are
    /// declared for a later version.
    Compress {
        /// Days after arrival.
        after_days: u32,
        /// The target transfer syntax.
        to: Compression,
    },
}

impl Action {
    /// The kind's name in the rules file.
    pub fn kind(&self) -> &'static str {
        match self {
            Action::AutoRoute { .. } => "auto_route",
            Action::Delete { .. } => "delete",
            Action::Tier1Retention { .. } => "tier1_retention",
            Action::OnlineRetention { .. } => "online_retention",
            Action::Compress { .. } => "compress",
        }
    }

    /// Whether this version executes the action (through the work queue);
    /// the others are declared hooks.
    pub fn is_executed(&self) -> bool {
        matches!(
            self,
            Action::AutoRoute { .. }
                | Action::Delete { .. }
                | Action::Tier1Retention { .. }
                | Action::OnlineRetention { .. }
                | Action::Compress {
                    to: Compression::Rle,
                    ..
                }
        )
    }

    /// Days after the study's arrival from which the action applies (for
    /// `online_retention` the earliest: it counts from the archiving).
    pub fn after_days(&self) -> u32 {
        match self {
            Action::AutoRoute { .. } => 0,
            Action::Delete { after_days }
            | Action::Tier1Retention { after_days }
            | Action::OnlineRetention { after_days }
            | Action::Compress { after_days, .. } => *after_days,
        }
    }
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Action::AutoRoute { device } => write!(f, "auto-route to {device}"),
            Action::Delete { after_days } => {
                write!(f, "delete {after_days} days after arrival")
            }
            Action::Tier1Retention { after_days } => {
                write!(f, "migrate off tier 1 {after_days} days after arrival")
            }
            Action::OnlineRetention { after_days } => write!(
                f,
                "purge the online copy {after_days} days after archiving (archived first if needed)"
            ),
            Action::Compress { after_days, to } => write!(
                f,
                "compress to {} ({}) {after_days} days after arrival",
                to.name(),
                to.transfer_syntax_uid()
            ),
        }
    }
}

/// What evaluation knows about a study.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StudyFacts {
    /// The study.
    pub study_uid: Option<Uid>,
    /// Attribute values (absent attributes are missing).
    pub values: BTreeMap<Attribute, String>,
    /// When its first instance arrived (ms since the Unix epoch).
    pub received_at_ms: Option<i64>,
}

impl StudyFacts {
    /// Facts from (keyword, value) pairs (tests, tools); unknown keywords
    /// are ignored.
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> StudyFacts {
        let mut facts = StudyFacts::default();
        for (keyword, value) in pairs {
            if let Some(attribute) = Attribute::ALL.iter().find(|a| a.keyword() == keyword) {
                facts.values.insert(*attribute, value.to_string());
            }
        }
        facts
    }
}

/// The result of one rule for one study.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleResult<'r> {
    /// The rule.
    pub rule: &'r Rule,
    /// Whether it applies.
    pub matched: bool,
    /// Why: the conditions that held (matched) or failed (not matched).
    pub reasons: Vec<String>,
    /// Its actions when matched (empty otherwise).
    pub actions: Vec<PlannedAction>,
}

/// An action a matching rule asks for, with when it is due.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedAction {
    /// The action.
    pub action: Action,
    /// When it is due (ms since the Unix epoch): arrival + its days; `None`
    /// when the arrival time is unknown.
    pub due_at_ms: Option<i64>,
    /// Whether it is due at the evaluation time.
    pub due_now: bool,
}

/// Every rule's result for one study, in file order.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation<'r> {
    /// The partition evaluated for.
    pub partition: AeTitle,
    /// One result per rule that applies to the partition.
    pub results: Vec<RuleResult<'r>>,
}

impl Evaluation<'_> {
    /// The actions of the matching rules, with their rule's name.
    pub fn actions(&self) -> Vec<(&str, &PlannedAction)> {
        self.results
            .iter()
            .filter(|r| r.matched)
            .flat_map(|r| r.actions.iter().map(move |a| (r.rule.name.as_str(), a)))
            .collect()
    }
}

const DAY_MS: i64 = 24 * 60 * 60 * 1000;

impl RuleSet {
    /// The rules of a TOML text (see [`mod@format`]).
    pub fn from_toml(text: &str) -> Result<RuleSet, RulesError> {
        format::parse(text)
    }

    /// The rules of a TOML file.
    pub fn from_file(path: &std::path::Path) -> Result<RuleSet, RulesError> {
        let text = std::fs::read_to_string(path).map_err(|source| RulesError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        format::parse(&text).map_err(|e| e.in_file(path))
    }

    /// The rules that apply to a partition.
    pub fn for_partition(&self, partition: &AeTitle) -> impl Iterator<Item = &Rule> {
        let partition = partition.clone();
        self.rules
            .iter()
            .filter(move |r| r.partition.as_ref().is_none_or(|p| *p == partition))
    }

    /// Evaluates every rule of `partition` on a study at `now_ms`. Pure.
    pub fn evaluate<'r>(
        &'r self,
        partition: &AeTitle,
        facts: &StudyFacts,
        now_ms: i64,
    ) -> Evaluation<'r> {
        let results = self
            .for_partition(partition)
            .map(|rule| {
                if !rule.enabled {
                    return RuleResult {
                        rule,
                        matched: false,
                        reasons: vec!["the rule is disabled".to_string()],
                        actions: Vec::new(),
                    };
                }
                let (matched, reasons) = check(&rule.condition, facts, now_ms);
                let actions = if matched {
                    rule.actions
                        .iter()
                        .map(|action| {
                            let due_at_ms = facts
                                .received_at_ms
                                .map(|at| at + i64::from(action.after_days()) * DAY_MS);
                            PlannedAction {
                                action: action.clone(),
                                due_at_ms,
                                due_now: action.after_days() == 0
                                    || due_at_ms.is_some_and(|due| due <= now_ms),
                            }
                        })
                        .collect()
                } else {
                    Vec::new()
                };
                RuleResult {
                    rule,
                    matched,
                    reasons,
                    actions,
                }
            })
            .collect();
        Evaluation {
            partition: partition.clone(),
            results,
        }
    }
}

/// Whether `condition` holds, with the reasons.
fn check(condition: &Condition, facts: &StudyFacts, now_ms: i64) -> (bool, Vec<String>) {
    match condition {
        Condition::Always => (true, vec!["the rule has no condition".to_string()]),
        Condition::All(conditions) => {
            let mut reasons = Vec::new();
            for c in conditions {
                let (ok, why) = check(c, facts, now_ms);
                if !ok {
                    return (false, why);
                }
                reasons.extend(why);
            }
            (true, reasons)
        }
        Condition::Any(conditions) => {
            let mut reasons = Vec::new();
            for c in conditions {
                let (ok, why) = check(c, facts, now_ms);
                if ok {
                    return (true, why);
                }
                reasons.extend(why);
            }
            (false, reasons)
        }
        Condition::Not(inner) => {
            let (ok, why) = check(inner, facts, now_ms);
            (!ok, why.into_iter().map(|w| format!("not: {w}")).collect())
        }
        Condition::Test { attribute, test } => {
            let (ok, why) = test_value(*attribute, test, facts.values.get(attribute), now_ms);
            (ok, vec![why])
        }
    }
}

fn test_value(
    attribute: Attribute,
    test: &Test,
    value: Option<&String>,
    now_ms: i64,
) -> (bool, String) {
    let name = attribute.keyword();
    let Some(value) = value
        .map(|v| v.trim_matches([' ', '\0']))
        .filter(|v| !v.is_empty())
    else {
        return (false, format!("{name} is absent"));
    };
    let fold = attribute.kind() == Kind::PersonName;
    let same = |a: &str, b: &str| {
        if fold {
            a.eq_ignore_ascii_case(b)
        } else {
            a == b
        }
    };
    match test {
        Test::Equals(expected) => {
            let ok = same(value, expected);
            let verb = if ok { "equals" } else { "is not" };
            (ok, format!("{name} {value:?} {verb} {expected:?}"))
        }
        Test::Wildcard(pattern) => {
            let ok = if fold {
                wildcard(&pattern.to_ascii_uppercase(), &value.to_ascii_uppercase())
            } else {
                wildcard(pattern, value)
            };
            let verb = if ok { "matches" } else { "does not match" };
            (ok, format!("{name} {value:?} {verb} {pattern:?}"))
        }
        Test::In(list) => {
            let ok = list.iter().any(|v| same(value, v));
            let verb = if ok { "is one of" } else { "is none of" };
            (ok, format!("{name} {value:?} {verb} {list:?}"))
        }
        Test::Contains(wanted) => {
            let ok = value.split('\\').any(|v| same(v.trim(), wanted));
            let verb = if ok { "contains" } else { "does not contain" };
            (ok, format!("{name} {value:?} {verb} {wanted:?}"))
        }
        Test::OlderThanDays(days) => match days_from_civil_text(value) {
            None => (false, format!("{name} {value:?} is not a date (YYYYMMDD)")),
            Some(date) => {
                let today = now_ms.div_euclid(DAY_MS);
                let age = today - date;
                let ok = age > i64::from(*days);
                let verb = if ok { "more" } else { "not more" };
                (
                    ok,
                    format!("{name} {value} is {age} days old ({verb} than {days})"),
                )
            }
        },
    }
}

/// Matches `*` (any run) and `?` (one character).
fn wildcard(pattern: &str, value: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let v: Vec<char> = value.chars().collect();
    let (mut pi, mut vi) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while vi < v.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == v[vi]) {
            pi += 1;
            vi += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = vi;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            vi = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

/// Days since 1970-01-01 of a `YYYYMMDD` date (proleptic Gregorian).
pub fn days_from_civil_text(value: &str) -> Option<i64> {
    if value.len() != 8 || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let y: i64 = value[0..4].parse().ok()?;
    let m: i64 = value[4..6].parse().ok()?;
    let d: i64 = value[6..8].parse().ok()?;
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    // Howard Hinnant's days_from_civil.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Some(era * 146_097 + doe - 719_468)
}

/// `YYYY-MM-DD` of a time (ms since the Unix epoch), UTC.
pub fn civil_date(ms: i64) -> String {
    let z = ms.div_euclid(DAY_MS) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

#[cfg(test)]
mod tests;
