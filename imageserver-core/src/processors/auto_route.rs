//! `auto_route`: what a rule's `auto_route` action sends.

use super::{BuiltinDeps, MoveStudy};
use crate::model::work::{WorkItem, WorkKind};
use crate::workqueue::{ProcessContext, Processor, StepResult};

/// Sends instances (the item's UIDs: what arrived) or the whole study to a
/// device a rule names; behaves as [`MoveStudy`] (payload
/// [`super::SendPayload`] with the rule's name).
#[derive(Debug, Clone)]
pub struct AutoRoute {
    inner: MoveStudy,
}

impl AutoRoute {
    /// The processor.
    pub fn new(deps: BuiltinDeps) -> AutoRoute {
        AutoRoute {
            inner: MoveStudy::new(deps, WorkKind::AUTO_ROUTE),
        }
    }
}

impl Processor for AutoRoute {
    fn process(&self, item: &WorkItem, ctx: &ProcessContext<'_>) -> StepResult {
        self.inner.process(item, ctx)
    }
}
