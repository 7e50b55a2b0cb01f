//! `study_process`: what runs once a study has been quiet.

use std::collections::BTreeSet;

use super::{on_error, step, study_uid, AuditPayload, BuiltinDeps, SendPayload};
use crate::model::work::{NewWorkItem, Timestamp, WorkItem, WorkKind, WorkUid};
use crate::model::Uid;
use crate::rules::{dry_run, Action};
use crate::services::studies::{DigestCheck, StudyError};
use crate::services::Partition;
use crate::workqueue::{ProcessContext, Processor, StepResult};

/// Once a study has been quiet for the kind's processing delay (ingest
/// enqueues, or appends to, one item per study and batch):
///
/// 1. when instances that arrived lack the values of the study's completed
///    edits (sent after an edit, or while it ran), enqueues an `edit_study`
///    that applies them again to files and index rows;
/// 2. writes the series metadata (DICOM JSON, bulk data stripped:
///    [`crate::services::studies::Studies::update_series_metadata`]) that
///    the DICOMweb metadata endpoint will serve, for the series that
///    received instances (all of them when the item lists none);
/// 3. checks integrity (index vs files: every file listed and sized, the
///    digests of the instances that arrived) and enqueues a
///    `reprocess_study` on a mismatch a reprocess fixes;
/// 4. last, evaluates the partition's rules on the study (the facts `rules
///    test --study` prints) and enqueues what the matching rules ask for:
///    `auto_route` items carrying the instances that arrived (the whole
///    study when the item lists none), `delete_study` items scheduled at
///    their due time. Last, so that a transient failure of an earlier step
///    (retried after the kind's failure delay) never sends twice.
///
/// A study gone meanwhile (deleted) is done. Rerunning enqueues again:
/// sends are at-least-once; deletes of the same study merge into one item.
/// Events are logged in a `study_process` span with the `study_uid` field.
#[derive(Debug, Clone)]
pub struct StudyProcess {
    deps: BuiltinDeps,
}

impl StudyProcess {
    /// The processor.
    pub fn new(deps: BuiltinDeps) -> StudyProcess {
        StudyProcess { deps }
    }
}

impl Processor for StudyProcess {
    fn process(&self, item: &WorkItem, ctx: &ProcessContext<'_>) -> StepResult {
        let partition = step!(self.deps.partition(item));
        let study = step!(study_uid(item));
        let _span = tracing::info_span!("study_process", study_uid = %study).entered();
        let step = Step {
            item,
            partition,
            study,
            ctx,
        };
        // The rules last: a retry caused by an earlier step never enqueues
        // their sends twice.
        step!(self.reconcile_edits(&step));
        step!(self.write_metadata(&step));
        step!(self.check_integrity(&step));
        step!(self.apply_rules(&step));
        StepResult::Done
    }
}

/// What every step of one run needs.
struct Step<'a> {
    item: &'a WorkItem,
    partition: &'a Partition,
    study: &'a Uid,
    ctx: &'a ProcessContext<'a>,
}

impl Step<'_> {
    /// The UIDs `uid` picks from what arrived (the item lists none when
    /// the whole study is concerned).
    fn arrived(&self, uid: impl Fn(&WorkUid) -> &Uid) -> BTreeSet<Uid> {
        self.item.uids.iter().map(|u| uid(u).clone()).collect()
    }

    /// A transient failure: retried after the kind's failure delay.
    fn transient(&self, what: &str, e: &dyn std::error::Error) -> StepResult {
        StepResult::RetryAfter(
            self.ctx.properties().retry.failure_delay,
            format!("{what}: {}", crate::model::error_chain(e)),
        )
    }
}

/// Each step's outcome: go on, or end the run with this result (a study
/// gone meanwhile ends it as done).
type Next = Result<(), StepResult>;

impl StudyProcess {
    /// Instances that arrived after an edit (or during it) keep their
    /// sender's values: an `edit_study` applies the study's edits again.
    fn reconcile_edits(&self, step: &Step<'_>) -> Next {
        let (item, partition, study) = (step.item, step.partition, step.study);
        let arrived = Vec::from_iter(step.arrived(|u| &u.sop_instance_uid));
        match self
            .deps
            .studies
            .edits_missing_from(partition, study, &arrived)
        {
            Ok(None) => Ok(()),
            Ok(Some(values)) => {
                let edit = NewWorkItem::new(WorkKind::EDIT_STUDY, item.partition)
                    .study(study.clone())
                    .payload(
                        AuditPayload {
                            actor: Some("study_process".into()),
                            reason: Some("instances received after an edit take its values".into()),
                            values: values.iter().map(ToString::to_string).collect(),
                        }
                        .to_json(),
                    );
                match step.ctx.work_queue().enqueue(edit) {
                    Ok(id) => {
                        tracing::warn!(
                            study_uid = %study,
                            work_item = %id,
                            "instances arrived without the study's edited values; re-applying the edit"
                        );
                        Ok(())
                    }
                    Err(e) => Err(step.transient("enqueuing an edit", &e)),
                }
            }
            Err(StudyError::UnknownStudy { .. } | StudyError::Nearline(_)) => Err(StepResult::Done),
            Err(e) => Err(step.transient("comparing arrivals with the study's edits", &e)),
        }
    }

    /// The series metadata (DICOM JSON, bulk data stripped) of the series
    /// that received instances (all of them when the item lists none).
    fn write_metadata(&self, step: &Step<'_>) -> Next {
        let study = step.study;
        let changed = step.arrived(|u| &u.series_uid);
        let changed = (!changed.is_empty()).then_some(&changed);
        match self
            .deps
            .studies
            .update_series_metadata(step.partition, study, changed)
        {
            Ok(report) => {
                tracing::debug!(
                    study_uid = %study,
                    series = report.series,
                    instances = report.instances,
                    skipped = report.skipped.len(),
                    "series metadata up to date"
                );
                Ok(())
            }
            Err(StudyError::UnknownStudy { .. } | StudyError::Nearline(_)) => Err(StepResult::Done),
            Err(e) => Err(step.transient("writing the series metadata", &e)),
        }
    }

    /// Index against files (every file listed and sized; the digests of
    /// the instances that arrived, of all when the item lists none); a
    /// mismatch a reprocess fixes enqueues one.
    fn check_integrity(&self, step: &Step<'_>) -> Next {
        let study = step.study;
        let arrived = step.arrived(|u| &u.sop_instance_uid);
        let digests = if arrived.is_empty() {
            DigestCheck::All
        } else {
            DigestCheck::Only(&arrived)
        };
        match self
            .deps
            .studies
            .check_integrity(step.partition, study, digests)
        {
            Ok(report) if report.needs_reprocess() => {
                tracing::warn!(
                    study_uid = %study,
                    findings = report.findings.len(),
                    first = %report.findings[0],
                    "integrity mismatch; scheduling a reprocess"
                );
                let reprocess = NewWorkItem::new(WorkKind::REPROCESS_STUDY, step.item.partition)
                    .study(study.clone())
                    .payload(
                        AuditPayload {
                            actor: Some("study_process".into()),
                            ..AuditPayload::default()
                        }
                        .to_json(),
                    );
                match step.ctx.work_queue().enqueue_or_append(reprocess) {
                    Ok(_) => Ok(()),
                    Err(e) => Err(step.transient("enqueuing a reprocess", &e)),
                }
            }
            Ok(_) => Ok(()),
            Err(StudyError::UnknownStudy { .. } | StudyError::Nearline(_)) => Err(StepResult::Done),
            Err(error) => Err(on_error(&error, step.ctx.properties().retry.failure_delay)),
        }
    }

    /// The partition's rules: the due `auto_route` and `delete_study`
    /// items they ask for.
    fn apply_rules(&self, step: &Step<'_>) -> Next {
        let (item, partition, study) = (step.item, step.partition, step.study);
        let queue = step.ctx.work_queue();
        let Some(rules) = &self.deps.rules else {
            return Ok(());
        };
        let facts = match dry_run::study_facts(&*self.deps.db, &*self.deps.db, partition.id, study)
        {
            Ok(Some(facts)) => facts,
            Ok(None) => return Err(StepResult::Done),
            Err(e) => return Err(step.transient("reading the study's facts", &e)),
        };
        let now = Timestamp::now();
        let evaluation = rules.evaluate(&partition.ae_title, &facts, now.as_millis());
        for (rule, planned) in evaluation.actions() {
            let new = match &planned.action {
                Action::AutoRoute { device } if planned.due_now => {
                    let payload = SendPayload {
                        rule: Some(rule.to_string()),
                        ..SendPayload::to(device.as_str())
                    };
                    NewWorkItem::new(WorkKind::AUTO_ROUTE, item.partition)
                        .payload(payload.to_json())
                        .uids(item.uids.iter().cloned())
                }
                Action::Delete { .. } => {
                    let payload = AuditPayload {
                        actor: Some(format!("rule:{rule}")),
                        reason: Some(planned.action.to_string()),
                        values: Vec::new(),
                    };
                    let due = planned
                        .due_at_ms
                        .map_or(now, Timestamp::from_millis)
                        .max(now);
                    NewWorkItem::new(WorkKind::DELETE_STUDY, item.partition)
                        .payload(payload.to_json())
                        .scheduled_at(due)
                }
                Action::Tier1Retention { .. } => {
                    let due = planned
                        .due_at_ms
                        .map_or(now, Timestamp::from_millis)
                        .max(now);
                    let payload = super::MigratePayload {
                        to: None,
                        off_tier: Some(1),
                    };
                    NewWorkItem::new(WorkKind::MIGRATE_STUDY, item.partition)
                        .payload(payload.to_json())
                        .scheduled_at(due)
                }
                // Due N days after archiving, which is after arrival: the
                // item runs no earlier than arrival + N and postpones itself
                // to the pack's time + N.
                Action::OnlineRetention { after_days } => {
                    let due = planned
                        .due_at_ms
                        .map_or(now, Timestamp::from_millis)
                        .max(now);
                    let payload = super::PurgePayload {
                        after_days: Some(*after_days),
                    };
                    NewWorkItem::new(WorkKind::PURGE_STUDY, item.partition)
                        .payload(payload.to_json())
                        .scheduled_at(due)
                }
                Action::Compress { .. } if planned.action.is_executed() => {
                    let due = planned
                        .due_at_ms
                        .map_or(now, Timestamp::from_millis)
                        .max(now);
                    NewWorkItem::new(WorkKind::COMPRESS_STUDY, item.partition).scheduled_at(due)
                }
                // Declared hooks (and actions not due) are not executed.
                _ => continue,
            }
            .study(study.clone());
            let kind = new.kind.clone();
            // A migrate_study item is never appended to: a waiting one may be
            // the watermark service's, due now; a repeat is a no-op (as is a
            // repeated compress_study: compressed instances are skipped).
            let result = if kind == WorkKind::DELETE_STUDY {
                queue.enqueue_or_append(new).map(|e| e.id())
            } else {
                queue.enqueue(new)
            };
            match result {
                Ok(id) => tracing::info!(
                    study_uid = %study, rule, kind = %kind, work_item = %id,
                    "rule action enqueued"
                ),
                Err(e) => return Err(step.transient("enqueuing a rule action", &e)),
            }
        }
        Ok(())
    }
}
