//! `move_study`: send a study (or some of its instances) to a device.

use std::collections::BTreeMap;

use super::{on_error, step, BuiltinDeps};
use crate::dicom::scu::ScuOptions;
use crate::model::requests::SendPayload;
use crate::model::work::{NewWorkItem, Timestamp, WorkItem, WorkKind, WorkUid};
use crate::model::Uid;
use crate::workqueue::{ProcessContext, Processor, RetryPolicy, StepResult};

/// Sends the item's study to `destination` with the storage SCU: every
/// instance, or only the item's instance UIDs when it has some.
///
/// - everything delivered (or answered with a warning): done;
/// - nothing delivered: retried with the kind's backoff (the destination is
///   probably down), the same instances next time;
/// - some delivered, some failed: this item is done and a new item of the
///   same kind carries only the failed instances, scheduled after the
///   backoff delay (the failure count carries over in its payload).
///
/// The kind's failure limit and backoff count the failures of the whole
/// chain (an item and the follow-ups that continue it): a follow-up that
/// keeps failing is given up at the limit, not `max_failures` failures
/// after its own start.
///
/// Sends are at-least-once: a rerun after a crash sends again.
#[derive(Debug, Clone)]
pub struct MoveStudy {
    deps: BuiltinDeps,
    kind: WorkKind,
}

impl MoveStudy {
    /// The processor for items of `kind` (`move_study` or `auto_route`).
    pub fn new(deps: BuiltinDeps, kind: WorkKind) -> MoveStudy {
        MoveStudy { deps, kind }
    }
}

impl Processor for MoveStudy {
    fn process(&self, item: &WorkItem, ctx: &ProcessContext<'_>) -> StepResult {
        let (partition, study, send) = step!(self.deps.study_item::<SendPayload>(item));
        let retry = &ctx.properties().retry;
        // This run's failure, if it fails, counting the chain's earlier ones.
        let failures = send
            .previous_failures
            .saturating_add(item.failure_count)
            .saturating_add(1);
        let device = match self.deps.studies.destination(partition, &send.destination) {
            Ok(device) => device,
            Err(error) => return failed(on_error(&error, retry.failure_delay), retry, failures),
        };
        let only: Vec<Uid> = item
            .uids
            .iter()
            .map(|u| u.sop_instance_uid.clone())
            .collect();
        let options = ScuOptions::new(partition.ae_title.as_str());
        let report = match self.deps.studies.send(
            partition,
            study,
            &device,
            (!only.is_empty()).then_some(&only[..]),
            &options,
            ctx.processor_id(),
        ) {
            Ok(report) => report,
            Err(error) => return failed(on_error(&error, retry.failure_delay), retry, failures),
        };
        if !report.missing.is_empty() {
            tracing::warn!(
                study_uid = %study,
                missing = report.missing.len(),
                "instances to send are no longer in the study"
            );
        }
        if report.failed.is_empty() {
            tracing::info!(
                study_uid = %study,
                destination = %report.destination,
                delivered = report.delivered.len(),
                warnings = report.warnings.len(),
                "study sent"
            );
            return StepResult::Done;
        }
        let first = &report.failed[0];
        let description = format!(
            "{} of {} instances not stored at {} (first: {}: {})",
            report.failed.len(),
            report.failed.len() + report.delivered.len() + report.warnings.len(),
            report.destination,
            first.0,
            first.1
        );
        if report.delivered.is_empty() && report.warnings.is_empty() {
            return retry_or_give_up(retry, failures, description);
        }
        // Partial failure: only what failed goes on, in a new item.
        if retry.gives_up(failures) {
            return given_up(description, failures);
        }
        let series: BTreeMap<Uid, Uid> = match self.deps.db.study_instances(partition.id, study) {
            Ok(instances) => instances
                .into_iter()
                .map(|i| (i.sop_instance_uid, i.series_uid))
                .collect(),
            Err(error) => {
                return retry_or_give_up(retry, failures, crate::model::error_chain(&error))
            }
        };
        let uids: Vec<WorkUid> = report
            .failed
            .iter()
            .filter_map(|(sop, _)| {
                series
                    .get(sop)
                    .map(|series| WorkUid::new(series.clone(), sop.clone()))
            })
            .collect();
        if uids.is_empty() {
            // What failed has left the study since: nothing to retry (an
            // item without instances would send the whole study).
            tracing::warn!(study_uid = %study, "{description}; those instances are no longer in the study");
            return StepResult::Done;
        }
        let next = SendPayload {
            previous_failures: failures,
            ..send.clone()
        };
        let follow_up = NewWorkItem::new(self.kind.clone(), item.partition)
            .study(study.clone())
            .priority(item.priority)
            .scheduled_at(Timestamp::now().after(retry.delay(failures)))
            .payload(next.to_json())
            .uids(uids);
        match ctx.work_queue().enqueue(follow_up) {
            Ok(id) => {
                tracing::warn!(study_uid = %study, follow_up = %id, "{description}; retrying the failed instances");
                StepResult::Done
            }
            // Could not hand over: retry everything this item covers.
            Err(error) => retry_or_give_up(
                retry,
                failures,
                format!("{description}; cannot enqueue the retry: {error}"),
            ),
        }
    }
}

/// A transient failure as the `failures`-th of the chain: retried after
/// that failure's backoff, or given up at the limit. (The engine counts
/// only the item's own failures, so a follow-up would otherwise get the
/// whole limit again.)
fn retry_or_give_up(retry: &RetryPolicy, failures: u32, description: String) -> StepResult {
    if retry.gives_up(failures) {
        given_up(description, failures)
    } else {
        StepResult::RetryAfter(retry.delay(failures), description)
    }
}

/// [`retry_or_give_up`] for what [`on_error`] decided: permanent failures
/// stay permanent.
fn failed(step: StepResult, retry: &RetryPolicy, failures: u32) -> StepResult {
    match step {
        StepResult::RetryAfter(_, description) => retry_or_give_up(retry, failures, description),
        other => other,
    }
}

/// The permanent failure at the chain's failure limit, worded as the
/// engine words its own.
fn given_up(description: String, failures: u32) -> StepResult {
    StepResult::Fail(format!("{description} (gave up after {failures} failures)"))
}
