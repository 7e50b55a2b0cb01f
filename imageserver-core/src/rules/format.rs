//! The rules file: TOML, versioned, meant to be reviewed like code.
//!
//! ```toml
//! # rules.toml, referenced from the configuration as rules_file = "rules.toml"
//! version = 1                      # the format version; required
//!
//! [[rule]]
//! name = "ct-to-viewer"            # unique
//! description = "CT chest studies go to the reading room"
//! partition = "IMAGESERVER"        # optional: every partition when absent
//! enabled = true                   # optional, default true
//! when.all = [                     # all / any / not, nested at will
//!     { attribute = "ModalitiesInStudy", contains = "CT" },
//!     { attribute = "StudyDescription", wildcard = "*CHEST*" },
//! ]
//! actions = [{ type = "auto_route", device = "VIEWER" }]
//!
//! [[rule]]
//! name = "research-retention"
//! when.any = [
//!     { attribute = "PatientID", in = ["TEST1", "TEST2"] },
//!     { attribute = "StudyDate", older_than_days = 3650 },
//! ]
//! actions = [
//!     { type = "delete", after_days = 30 },
//!     { type = "tier1_retention", after_days = 7 },
//!     { type = "online_retention", after_days = 90 },    # 90 days after archiving
//!     { type = "compress", after_days = 1, to = "rle" },  # "rle" (the default) is executed
//! ]
//! ```
//!
//! A condition is either a test — `attribute` plus exactly one of `equals`,
//! `wildcard`, `in`, `older_than_days` (dates only), `contains` — or one
//! combinator: `all = [...]`, `any = [...]`, `not = {...}`. Attributes are
//! the study-level keywords of the index (Study Root, so patient attributes
//! too): PatientName, PatientID, IssuerOfPatientID, PatientBirthDate,
//! PatientSex, StudyDate, StudyTime, AccessionNumber, ModalitiesInStudy,
//! SOPClassesInStudy, ReferringPhysicianName, StudyDescription,
//! StudyInstanceUID, StudyID. A rule without `when` applies to every study.
//! Unknown keys are errors, so a typo never silently disables a rule.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{Action, Compression, Condition, Rule, RuleSet, Test};
use crate::model::query::{Attribute, Kind, Level, Root};
use crate::model::AeTitle;

/// The format version this build reads.
pub const FORMAT_VERSION: u32 = 1;

/// Why a rules file is not usable.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RulesError {
    /// The file could not be read.
    #[error("cannot read the rules file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The underlying failure.
        #[source]
        source: std::io::Error,
    },
    /// The TOML is invalid or has unknown keys.
    #[error("invalid rules{}: {source}", in_file(.file))]
    Parse {
        /// The file, when known.
        file: Option<PathBuf>,
        /// The TOML error (with line and column).
        #[source]
        source: toml::de::Error,
    },
    /// A value is wrong.
    #[error("invalid rules{}: {place}: {reason}", in_file(.file))]
    Invalid {
        /// The file, when known.
        file: Option<PathBuf>,
        /// Where, e.g. `rule "ct-to-viewer": when.all[1]`.
        place: String,
        /// What is wrong.
        reason: String,
    },
}

fn in_file(file: &Option<PathBuf>) -> String {
    file.as_ref()
        .map(|f| format!(" in {}", f.display()))
        .unwrap_or_default()
}

impl RulesError {
    /// The same error, naming the file it came from.
    pub fn in_file(self, path: &Path) -> RulesError {
        match self {
            RulesError::Parse { source, .. } => RulesError::Parse {
                file: Some(path.to_path_buf()),
                source,
            },
            RulesError::Invalid { place, reason, .. } => RulesError::Invalid {
                file: Some(path.to_path_buf()),
                place,
                reason,
            },
            other => other,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    version: Option<u32>,
    #[serde(default)]
    rule: Vec<RawRule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: String,
    #[serde(default)]
    description: String,
    partition: Option<String>,
    #[serde(default = "yes")]
    enabled: bool,
    when: Option<RawCondition>,
    #[serde(default)]
    actions: Vec<RawAction>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCondition {
    attribute: Option<String>,
    equals: Option<String>,
    wildcard: Option<String>,
    #[serde(rename = "in")]
    in_list: Option<Vec<String>>,
    older_than_days: Option<u32>,
    contains: Option<String>,
    all: Option<Vec<RawCondition>>,
    any: Option<Vec<RawCondition>>,
    not: Option<Box<RawCondition>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAction {
    #[serde(rename = "type")]
    kind: String,
    device: Option<String>,
    after_days: Option<u32>,
    to: Option<String>,
}

/// Parses and validates rules TOML.
pub fn parse(text: &str) -> Result<RuleSet, RulesError> {
    let raw: RawFile =
        toml::from_str(text).map_err(|source| RulesError::Parse { file: None, source })?;
    let invalid = |place: &str, reason: String| RulesError::Invalid {
        file: None,
        place: place.to_string(),
        reason,
    };
    match raw.version {
        Some(FORMAT_VERSION) => {}
        Some(other) => {
            return Err(invalid(
                "version",
                format!(
                    "format version {other} is not known to this build (it reads {FORMAT_VERSION})"
                ),
            ))
        }
        None => {
            return Err(invalid(
                "version",
                format!("missing: start the file with `version = {FORMAT_VERSION}`"),
            ))
        }
    }
    let mut names = BTreeSet::new();
    let mut rules = Vec::with_capacity(raw.rule.len());
    for (i, r) in raw.rule.into_iter().enumerate() {
        let name = r.name.trim().to_string();
        let place = if name.is_empty() {
            format!("rule {}", i + 1)
        } else {
            format!("rule {name:?}")
        };
        if name.is_empty() {
            return Err(invalid(&place, "a rule needs a name".to_string()));
        }
        if !names.insert(name.clone()) {
            return Err(invalid(
                &place,
                "another rule has the same name".to_string(),
            ));
        }
        let partition = r
            .partition
            .as_deref()
            .map(AeTitle::parse)
            .transpose()
            .map_err(|e| invalid(&format!("{place}: partition"), e.to_string()))?;
        let condition = match &r.when {
            None => Condition::Always,
            Some(when) => condition(when, &format!("{place}: when"))?,
        };
        if r.actions.is_empty() {
            return Err(invalid(
                &place,
                "a rule needs at least one action (actions = [{ type = ... }])".to_string(),
            ));
        }
        let actions = r
            .actions
            .iter()
            .enumerate()
            .map(|(j, a)| action(a, &format!("{place}: actions[{j}]")))
            .collect::<Result<Vec<_>, _>>()?;
        rules.push(Rule {
            name,
            description: r.description,
            partition,
            enabled: r.enabled,
            condition,
            actions,
        });
    }
    Ok(RuleSet { rules })
}

/// The attributes a condition may test: study level in Study Root
/// (patient attributes included), counts excluded.
pub fn condition_attributes() -> impl Iterator<Item = Attribute> {
    Attribute::ALL
        .iter()
        .copied()
        .filter(|a| a.level_in(Root::Study) <= Level::Study && a.kind() != Kind::Count)
}

fn condition(raw: &RawCondition, place: &str) -> Result<Condition, RulesError> {
    let invalid = |reason: String| RulesError::Invalid {
        file: None,
        place: place.to_string(),
        reason,
    };
    let combinators = usize::from(raw.all.is_some())
        + usize::from(raw.any.is_some())
        + usize::from(raw.not.is_some());
    let tests = usize::from(raw.equals.is_some())
        + usize::from(raw.wildcard.is_some())
        + usize::from(raw.in_list.is_some())
        + usize::from(raw.older_than_days.is_some())
        + usize::from(raw.contains.is_some());
    if combinators > 0 {
        if combinators > 1 || tests > 0 || raw.attribute.is_some() {
            return Err(invalid(
                "a condition is either one of all / any / not, or an attribute test".to_string(),
            ));
        }
        let list = |conditions: &Vec<RawCondition>, key: &str| {
            if conditions.is_empty() {
                return Err(invalid(format!("{key} = [] has no condition")));
            }
            conditions
                .iter()
                .enumerate()
                .map(|(i, c)| condition(c, &format!("{place}.{key}[{i}]")))
                .collect::<Result<Vec<_>, _>>()
        };
        return Ok(match (&raw.all, &raw.any, &raw.not) {
            (Some(all), _, _) => Condition::All(list(all, "all")?),
            (_, Some(any), _) => Condition::Any(list(any, "any")?),
            (_, _, Some(not)) => Condition::Not(Box::new(condition(not, &format!("{place}.not"))?)),
            _ => unreachable!("one combinator is present"),
        });
    }
    let Some(keyword) = raw.attribute.as_deref() else {
        return Err(invalid(
            "a test needs `attribute = \"Keyword\"` (or use all / any / not)".to_string(),
        ));
    };
    let attribute = condition_attributes()
        .find(|a| a.keyword() == keyword)
        .ok_or_else(|| {
            let hint = match Attribute::ALL
                .iter()
                .find(|a| a.keyword().eq_ignore_ascii_case(keyword))
            {
                Some(a) if a.level_in(Root::Study) > Level::Study => format!(
                    "{} is a {} attribute; rules see studies{}",
                    a.keyword(),
                    a.level().code().to_lowercase(),
                    if *a == Attribute::Modality {
                        ": use ModalitiesInStudy with contains"
                    } else {
                        ""
                    }
                ),
                Some(a) if a.keyword() != keyword => format!("did you mean {}?", a.keyword()),
                _ => format!(
                    "unknown attribute; one of {}",
                    condition_attributes()
                        .map(Attribute::keyword)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            };
            invalid(format!("attribute {keyword:?}: {hint}"))
        })?;
    if tests != 1 {
        return Err(invalid(format!(
            "{keyword}: exactly one of equals, wildcard, in, older_than_days, contains"
        )));
    }
    let test = if let Some(v) = &raw.equals {
        Test::Equals(v.clone())
    } else if let Some(v) = &raw.wildcard {
        Test::Wildcard(v.clone())
    } else if let Some(v) = &raw.in_list {
        if v.is_empty() {
            return Err(invalid(format!("{keyword}: in = [] matches nothing")));
        }
        Test::In(v.clone())
    } else if let Some(days) = raw.older_than_days {
        if attribute.kind() != Kind::Date {
            return Err(invalid(format!(
                "{keyword}: older_than_days needs a date attribute (StudyDate, PatientBirthDate)"
            )));
        }
        Test::OlderThanDays(days)
    } else if let Some(v) = &raw.contains {
        Test::Contains(v.clone())
    } else {
        unreachable!("one test is present")
    };
    Ok(Condition::Test { attribute, test })
}

fn action(raw: &RawAction, place: &str) -> Result<Action, RulesError> {
    let invalid = |reason: String| RulesError::Invalid {
        file: None,
        place: place.to_string(),
        reason,
    };
    let allowed: &[&str] = match raw.kind.as_str() {
        "auto_route" => &["device"],
        "delete" | "tier1_retention" | "online_retention" => &["after_days"],
        "compress" => &["after_days", "to"],
        other => {
            return Err(invalid(format!(
                "unknown action type {other:?}: auto_route, delete, tier1_retention, \
                 online_retention or compress"
            )))
        }
    };
    for (key, present) in [
        ("device", raw.device.is_some()),
        ("after_days", raw.after_days.is_some()),
        ("to", raw.to.is_some()),
    ] {
        if present && !allowed.contains(&key) {
            return Err(invalid(format!("{} takes no {key}", raw.kind)));
        }
    }
    let days = |required: bool| match raw.after_days {
        Some(days) => Ok(days),
        None if !required => Ok(0),
        None => Err(invalid(format!("{} needs after_days = N", raw.kind))),
    };
    Ok(match raw.kind.as_str() {
        "auto_route" => {
            let device = raw
                .device
                .as_deref()
                .ok_or_else(|| invalid("auto_route needs device = \"AE\"".to_string()))?;
            Action::AutoRoute {
                device: AeTitle::parse(device).map_err(|e| invalid(e.to_string()))?,
            }
        }
        "delete" => Action::Delete {
            after_days: days(true)?,
        },
        "tier1_retention" => Action::Tier1Retention {
            after_days: days(true)?,
        },
        "online_retention" => Action::OnlineRetention {
            after_days: days(true)?,
        },
        _ => {
            let to = raw.to.as_deref().unwrap_or("rle");
            let to = Compression::ALL
                .iter()
                .find(|(_, name)| *name == to)
                .map(|(c, _)| *c)
                .ok_or_else(|| {
                    invalid(format!(
                        "compress needs to = one of {} (lossless only)",
                        Compression::ALL
                            .iter()
                            .map(|(_, n)| format!("{n:?}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                })?;
            Action::Compress {
                after_days: days(false)?,
                to,
            }
        }
    })
}

impl RuleSet {
    /// Checks the rules against a deployment: every named partition exists
    /// (an error), and every auto-route device is a configured device of
    /// the rule's partitions (a warning: devices may also be registered at
    /// run time). Returns the warnings.
    pub fn check_against(
        &self,
        partitions: &[(AeTitle, Vec<AeTitle>)],
    ) -> Result<Vec<String>, RulesError> {
        let mut warnings = Vec::new();
        for rule in &self.rules {
            if let Some(p) = &rule.partition {
                if !partitions.iter().any(|(ae, _)| ae == p) {
                    return Err(RulesError::Invalid {
                        file: None,
                        place: format!("rule {:?}: partition", rule.name),
                        reason: format!(
                            "no partition {p}; partitions: {}",
                            partitions
                                .iter()
                                .map(|(ae, _)| ae.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    });
                }
            }
            for action in &rule.actions {
                let Action::AutoRoute { device } = action else {
                    continue;
                };
                for (ae, devices) in partitions
                    .iter()
                    .filter(|(ae, _)| rule.partition.as_ref().is_none_or(|p| p == ae))
                {
                    if !devices.contains(device) {
                        warnings.push(format!(
                            "rule {:?}: device {device} is not configured for partition {ae}",
                            rule.name
                        ));
                    }
                }
            }
        }
        Ok(warnings)
    }
}
