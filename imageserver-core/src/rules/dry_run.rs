//! The dry run: a stored study's attributes read from the index (a
//! study-level query, as C-FIND answers it), evaluated, and printed as what
//! would happen and why. Nothing is changed.

use std::fmt::Write as _;
use std::ops::ControlFlow;

use super::{civil_date, format::condition_attributes, Action, Evaluation, StudyFacts};
use crate::db::studies::StudyStore;
use crate::db::{self, QueryStore};
use crate::model::query::{Attribute, Key, Level, Matcher, Query, Root};
use crate::model::{PartitionId, Uid};

/// The facts of a stored study of `partition`: every attribute a condition
/// may test, from a STUDY-level query of the index, and its arrival time.
/// `None` when the partition has no such study.
pub fn study_facts(
    query: &dyn QueryStore,
    studies: &dyn StudyStore,
    partition: PartitionId,
    study_uid: &Uid,
) -> Result<Option<StudyFacts>, db::Error> {
    let mut keys = vec![Key {
        attribute: Attribute::StudyInstanceUid,
        matcher: Matcher::Single(study_uid.as_str().to_string()),
    }];
    keys.extend(
        condition_attributes()
            .filter(|a| *a != Attribute::StudyInstanceUid)
            .map(|attribute| Key {
                attribute,
                matcher: Matcher::Universal,
            }),
    );
    let request = Query {
        partition,
        root: Root::Study,
        level: Level::Study,
        keys,
        pn_case_insensitive: false,
        limit: Some(1),
        offset: 0,
    };
    let mut found = None;
    query.find(&request, &mut |m| {
        found = Some(m);
        ControlFlow::Break(())
    })?;
    let Some(found) = found else {
        return Ok(None);
    };
    let mut facts = StudyFacts {
        study_uid: Some(study_uid.clone()),
        ..StudyFacts::default()
    };
    for (attribute, value) in found.values {
        if let Some(value) = value.filter(|v| !v.is_empty()) {
            facts.values.insert(attribute, value);
        }
    }
    facts.received_at_ms = studies
        .study(partition, study_uid)?
        .map(|record| record.received_at_ms);
    Ok(Some(facts))
}

/// The dry run's text: the study's attributes, then every rule of the
/// partition with whether it matches, why, and what it would do.
pub fn render(evaluation: &Evaluation<'_>, facts: &StudyFacts) -> String {
    let mut out = String::new();
    let study = facts
        .study_uid
        .as_ref()
        .map(Uid::to_string)
        .unwrap_or_else(|| "(unnamed)".to_string());
    let _ = writeln!(
        out,
        "study {study} in partition {} (dry run: nothing is changed)",
        evaluation.partition
    );
    for (attribute, value) in &facts.values {
        if *attribute != Attribute::StudyInstanceUid {
            let _ = writeln!(out, "  {} = {value}", attribute.keyword());
        }
    }
    if let Some(at) = facts.received_at_ms {
        let _ = writeln!(out, "  arrived {}", civil_date(at));
    }
    if evaluation.results.is_empty() {
        let _ = writeln!(out, "no rule applies to partition {}", evaluation.partition);
        return out;
    }
    for result in &evaluation.results {
        let verdict = if result.matched {
            "MATCHES"
        } else {
            "no match"
        };
        let _ = writeln!(out, "rule {:?}: {verdict}", result.rule.name);
        for reason in &result.reasons {
            let _ = writeln!(out, "  because {reason}");
        }
        for planned in &result.actions {
            // online_retention counts from the archiving: arrival + N is
            // only the earliest.
            let from_archiving = matches!(planned.action, Action::OnlineRetention { .. });
            let when = match (planned.due_now, planned.due_at_ms) {
                (true, _) if from_archiving => "once archived that long".to_string(),
                (true, _) => "now".to_string(),
                (false, Some(due)) if from_archiving => {
                    format!("not before {}", civil_date(due))
                }
                (false, Some(due)) => format!("on {}", civil_date(due)),
                (false, None) => "when due (arrival time unknown)".to_string(),
            };
            if planned.action.is_executed() {
                let _ = writeln!(out, "  would {} ({when})", planned.action);
            } else {
                let _ = writeln!(
                    out,
                    "  declared, not executed by this version: {} ({when})",
                    planned.action
                );
            }
        }
    }
    let matched = evaluation.results.iter().filter(|r| r.matched).count();
    let actions = evaluation.actions();
    let _ = write!(
        out,
        "=> {matched} of {} rules match",
        evaluation.results.len()
    );
    if actions.is_empty() {
        let _ = writeln!(out, "; nothing would happen");
    } else {
        let list: Vec<String> = actions
            .iter()
            .map(|(rule, planned)| format!("{} [{rule}]", planned.action))
            .collect();
        let _ = writeln!(out, ": {}", list.join("; "));
    }
    out
}
