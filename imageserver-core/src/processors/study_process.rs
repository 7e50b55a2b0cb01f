//! `study_process`: what runs once a study has been quiet.

use super::{on_error, step, study_uid, AuditPayload, BuiltinDeps, SendPayload};
use crate::model::work::{NewWorkItem, Timestamp, WorkItem, WorkKind};
use crate::rules::{dry_run, Action};
use crate::services::studies::StudyError;
use crate::workqueue::{ProcessContext, Processor, StepResult};

/// Once a study has been quiet for the kind's processing delay (ingest
/// enqueues, or appends to, one item per study and batch):
///
/// 1. evaluates the partition's rules on the study (the facts `rules test
///    --study` prints) and enqueues what the matching rules ask for:
///    `auto_route` items carrying the instances that arrived (the whole
///    study when the item lists none), `delete_study` items scheduled at
///    their due time;
/// 2. when instances that arrived lack the values of the study's completed
///    edits (sent after an edit, or while it ran), enqueues an `edit_study`
///    that applies them again to files and index rows;
/// 3. writes the series metadata (DICOM JSON, bulk data stripped:
///    [`crate::services::studies::Studies::write_series_metadata`]) that
///    the DICOMweb metadata endpoint will serve; a failure to write is
///    transient (retried after the kind's failure delay);
/// 4. checks integrity (index vs files, sizes and digests) and enqueues a
///    `reprocess_study` on a mismatch a reprocess fixes.
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
        let retry_after = ctx.properties().retry.failure_delay;
        let queue = ctx.work_queue();
        let transient = |what: &str, e: &dyn std::error::Error| {
            StepResult::RetryAfter(
                retry_after,
                format!("{what}: {}", crate::services::commit::error_chain(e)),
            )
        };
        if let Some(rules) = &self.deps.rules {
            let facts =
                match dry_run::study_facts(&*self.deps.db, &*self.deps.db, partition.id, study) {
                    Ok(Some(facts)) => facts,
                    Ok(None) => return StepResult::Done,
                    Err(e) => return transient("reading the study's facts", &e),
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
                    // Declared hooks (and actions not due) are not executed.
                    _ => continue,
                }
                .study(study.clone());
                let kind = new.kind.clone();
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
                    Err(e) => return transient("enqueuing a rule action", &e),
                }
            }
        }
        // Instances that arrived after an edit (or during it) keep their
        // sender's values: apply the study's edits to them again.
        let arrived: Vec<crate::model::Uid> = item
            .uids
            .iter()
            .map(|u| u.sop_instance_uid.clone())
            .collect();
        match self
            .deps
            .studies
            .edits_missing_from(partition, study, &arrived)
        {
            Ok(None) => {}
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
                match queue.enqueue(edit) {
                    Ok(id) => tracing::warn!(
                        study_uid = %study,
                        work_item = %id,
                        "instances arrived without the study's edited values; re-applying the edit"
                    ),
                    Err(e) => return transient("enqueuing an edit", &e),
                }
            }
            Err(StudyError::UnknownStudy { .. } | StudyError::Nearline(_)) => {
                return StepResult::Done
            }
            Err(e) => return transient("comparing arrivals with the study's edits", &e),
        }
        match self.deps.studies.write_series_metadata(partition, study) {
            Ok(report) => tracing::debug!(
                study_uid = %study,
                series = report.series,
                instances = report.instances,
                skipped = report.skipped.len(),
                "series metadata up to date"
            ),
            Err(StudyError::UnknownStudy { .. } | StudyError::Nearline(_)) => {
                return StepResult::Done
            }
            Err(e) => return transient("writing the series metadata", &e),
        }
        match self.deps.studies.check_integrity(partition, study, true) {
            Ok(report) if report.needs_reprocess() => {
                tracing::warn!(
                    study_uid = %study,
                    findings = report.findings.len(),
                    first = %report.findings[0],
                    "integrity mismatch; scheduling a reprocess"
                );
                let reprocess = NewWorkItem::new(WorkKind::REPROCESS_STUDY, item.partition)
                    .study(study.clone())
                    .payload(
                        AuditPayload {
                            actor: Some("study_process".into()),
                            ..AuditPayload::default()
                        }
                        .to_json(),
                    );
                if let Err(e) = queue.enqueue_or_append(reprocess) {
                    return transient("enqueuing a reprocess", &e);
                }
                StepResult::Done
            }
            Ok(_) => StepResult::Done,
            Err(StudyError::UnknownStudy { .. } | StudyError::Nearline(_)) => StepResult::Done,
            Err(error) => on_error(&error, retry_after),
        }
    }
}
