//! Per-kind properties: what the engine needs to know about a kind of work
//! besides its processor.

use std::time::Duration;

use crate::model::work::{StudyLock, WorkPriority};

/// How a kind of work is scheduled, retried and locked.
#[derive(Debug, Clone, PartialEq)]
pub struct KindProperties {
    /// The priority of new items that do not name one.
    pub priority: WorkPriority,
    /// The most instances a processor should handle in one step (a hint it
    /// reads from [`super::ProcessContext::properties`]; the engine hands
    /// it the whole list).
    pub batch_size: usize,
    /// New items (and items appended to) wait this long before they run:
    /// StudyProcess waits for its study to be quiet.
    pub processing_delay: Duration,
    /// How failures are retried.
    pub retry: RetryPolicy,
    /// Counts against the engine's memory-heavy cap.
    pub memory_heavy: bool,
    /// How a running item locks its study.
    pub study_lock: StudyLock,
}

impl Default for KindProperties {
    fn default() -> Self {
        KindProperties {
            priority: WorkPriority::Medium,
            batch_size: 100,
            processing_delay: Duration::ZERO,
            retry: RetryPolicy::default(),
            memory_heavy: false,
            study_lock: StudyLock::Write,
        }
    }
}

impl KindProperties {
    /// Defaults: Medium, batches of 100, no delay, [`RetryPolicy::default`],
    /// not memory-heavy, a write lock on the study.
    pub fn new() -> KindProperties {
        KindProperties::default()
    }

    /// Sets the default priority.
    pub fn priority(mut self, priority: WorkPriority) -> KindProperties {
        self.priority = priority;
        self
    }

    /// Sets the batch size.
    pub fn batch_size(mut self, batch_size: usize) -> KindProperties {
        self.batch_size = batch_size.max(1);
        self
    }

    /// Sets the processing delay.
    pub fn processing_delay(mut self, delay: Duration) -> KindProperties {
        self.processing_delay = delay;
        self
    }

    /// Sets the retry policy.
    pub fn retry(mut self, retry: RetryPolicy) -> KindProperties {
        self.retry = retry;
        self
    }

    /// Marks the kind memory-heavy.
    pub fn memory_heavy(mut self, memory_heavy: bool) -> KindProperties {
        self.memory_heavy = memory_heavy;
        self
    }

    /// Sets the study lock.
    pub fn study_lock(mut self, study_lock: StudyLock) -> KindProperties {
        self.study_lock = study_lock;
        self
    }
}

/// When a failed item is tried again, and when it is given up.
///
/// After the `n`-th failure (n ≥ 1) the item waits
/// `failure_delay × backoff^(n-1)`, at most `max_delay`, or longer if the
/// processor asked for more; the `max_failures`-th failure leaves it Failed
/// for a person. Takeovers after an expired lease count as failures too.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Failures after which the item is given up (at least 1).
    pub max_failures: u32,
    /// The wait after the first failure.
    pub failure_delay: Duration,
    /// Each further failure multiplies the wait by this (≥ 1).
    pub backoff: f64,
    /// The longest wait.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_failures: 5,
            failure_delay: Duration::from_secs(30),
            backoff: 2.0,
            max_delay: Duration::from_secs(3600),
        }
    }
}

impl RetryPolicy {
    /// The wait after the `failures`-th failure.
    pub fn delay(&self, failures: u32) -> Duration {
        let exponent = i32::try_from(failures.saturating_sub(1)).unwrap_or(i32::MAX);
        let factor = self.backoff.max(1.0).powi(exponent);
        let secs = self.failure_delay.as_secs_f64() * factor;
        if !secs.is_finite() || secs >= self.max_delay.as_secs_f64() {
            self.max_delay
        } else {
            Duration::from_secs_f64(secs)
        }
    }

    /// Whether the `failures`-th failure gives the item up.
    pub fn gives_up(&self, failures: u32) -> bool {
        failures >= self.max_failures.max(1)
    }
}

/// An operator's changes to a kind's [`KindProperties`] (the configuration's
/// `[workqueue.kinds.<kind>]` table): each field that is set replaces the
/// registered value, the others stay as the kind was registered.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KindOverride {
    /// The priority of new items that do not name one.
    pub priority: Option<WorkPriority>,
    /// [`RetryPolicy::max_failures`].
    pub max_failures: Option<u32>,
    /// [`RetryPolicy::failure_delay`].
    pub failure_delay: Option<Duration>,
    /// [`RetryPolicy::backoff`].
    pub backoff: Option<f64>,
    /// [`RetryPolicy::max_delay`].
    pub max_delay: Option<Duration>,
}

impl KindOverride {
    /// Replaces, in `properties`, the fields this override sets.
    pub fn apply(&self, properties: &mut KindProperties) {
        if let Some(priority) = self.priority {
            properties.priority = priority;
        }
        let retry = &mut properties.retry;
        if let Some(max_failures) = self.max_failures {
            retry.max_failures = max_failures;
        }
        if let Some(failure_delay) = self.failure_delay {
            retry.failure_delay = failure_delay;
        }
        if let Some(backoff) = self.backoff {
            retry.backoff = backoff;
        }
        if let Some(max_delay) = self.max_delay {
            retry.max_delay = max_delay;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_gives_up_at_the_limit() {
        let policy = RetryPolicy {
            max_failures: 4,
            failure_delay: Duration::from_secs(10),
            backoff: 2.0,
            max_delay: Duration::from_secs(60),
        };
        let delays: Vec<u64> = (1..=5).map(|n| policy.delay(n).as_secs()).collect();
        assert_eq!(delays, [10, 20, 40, 60, 60]);
        assert_eq!(policy.delay(u32::MAX), Duration::from_secs(60));
        assert!(!policy.gives_up(3));
        assert!(policy.gives_up(4));
        let never_zero = RetryPolicy {
            max_failures: 0,
            ..policy
        };
        assert!(never_zero.gives_up(1), "at least one try");
    }

    #[test]
    fn an_override_replaces_only_what_it_sets() {
        let registered = KindProperties::new()
            .priority(WorkPriority::High)
            .study_lock(StudyLock::Read)
            .retry(RetryPolicy {
                max_failures: 10,
                failure_delay: Duration::from_secs(10),
                backoff: 2.0,
                max_delay: Duration::from_secs(1800),
            });
        let mut properties = registered.clone();
        KindOverride::default().apply(&mut properties);
        assert_eq!(properties, registered);
        KindOverride {
            max_failures: Some(3),
            failure_delay: Some(Duration::from_secs(1)),
            ..KindOverride::default()
        }
        .apply(&mut properties);
        assert_eq!(properties.priority, WorkPriority::High);
        assert_eq!(properties.study_lock, StudyLock::Read);
        assert_eq!(properties.retry.max_failures, 3);
        assert_eq!(properties.retry.failure_delay, Duration::from_secs(1));
        assert_eq!(properties.retry.backoff, 2.0);
        assert_eq!(properties.retry.max_delay, Duration::from_secs(1800));
    }
}
