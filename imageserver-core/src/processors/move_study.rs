//! `move_study`: send a study (or some of its instances) to a device.

use std::collections::BTreeMap;

use super::{on_error, payload, step, study_uid, BuiltinDeps};
use crate::dicom::scu::ScuOptions;
use crate::model::work::{NewWorkItem, Timestamp, WorkItem, WorkKind, WorkUid};
use crate::model::Uid;
use crate::workqueue::{ProcessContext, Processor, StepResult};

/// Payload of `move_study` and `auto_route` items.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct SendPayload {
    /// The device's AE title (a device of the item's partition).
    pub destination: String,
    /// The rule that asked for it (auto-route).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// Failures of the items this one continues (a partial failure hands
    /// what failed to a new item; the count carries over so the kind's
    /// failure limit still holds).
    #[serde(skip_serializing_if = "is_zero")]
    pub previous_failures: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl SendPayload {
    /// A send to `destination`.
    pub fn to(destination: &str) -> SendPayload {
        SendPayload {
            destination: destination.to_string(),
            ..SendPayload::default()
        }
    }

    /// As JSON text.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("serialisable")
    }
}

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
        let partition = step!(self.deps.partition(item));
        let study = step!(study_uid(item));
        let send: SendPayload = step!(payload(item));
        let retry = &ctx.properties().retry;
        let device = match self.deps.studies.destination(partition, &send.destination) {
            Ok(device) => device,
            Err(error) => return on_error(&error, retry.failure_delay),
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
            Err(error) => return on_error(&error, retry.failure_delay),
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
            return StepResult::RetryAfter(retry.delay(item.failure_count + 1), description);
        }
        // Partial failure: only what failed goes on, in a new item.
        let failures = send.previous_failures + item.failure_count + 1;
        if retry.gives_up(failures) {
            return StepResult::Fail(description);
        }
        let series: BTreeMap<Uid, Uid> = match self.deps.db.study_instances(partition.id, study) {
            Ok(instances) => instances
                .into_iter()
                .map(|i| (i.sop_instance_uid, i.series_uid))
                .collect(),
            Err(error) => {
                return StepResult::RetryAfter(
                    retry.failure_delay,
                    crate::services::commit::error_chain(&error),
                )
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
            Err(error) => StepResult::RetryAfter(
                retry.delay(item.failure_count + 1),
                format!("{description}; cannot enqueue the retry: {error}"),
            ),
        }
    }
}
