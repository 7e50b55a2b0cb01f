//! `[workqueue]` and `[workqueue.kinds.<kind>]`: the engine this process
//! runs and the operator's changes to each kind of work.
//!
//! The table validates into the engine's own [`EngineConfig`], whose
//! [`Default`] is also where the table's engine defaults come from.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::ConfigError;
use crate::model::work::{WorkKind, WorkPriority};
use crate::workqueue::{EngineConfig, KindOverride, Registry};

/// Seconds a study must be quiet before its StudyProcess item runs
/// (`study_process_delay_secs`).
const DEFAULT_STUDY_PROCESS_DELAY_SECS: u64 = 60;

/// `[workqueue]`: the WorkQueue engine of this process.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct WorkQueueConfig {
    /// Worker threads (items running at once); 0 runs no engine in this
    /// process (another node of the cluster does the work).
    pub threads: usize,
    /// Of those, the threads only High and Stat items may use.
    pub high_priority_threads: usize,
    /// Most memory-heavy items running at once.
    pub memory_heavy_threads: usize,
    /// Seconds a claim holds without renewal; a dead node's items are taken
    /// over this long after its last renewal.
    pub lease_secs: u64,
    /// Longest wait, in seconds, before the engine looks for work it was
    /// not told about (other processes on SQLite, expired leases).
    pub poll_secs: u64,
    /// Hours completed items are kept before they are purged.
    pub keep_completed_hours: u64,
    /// Seconds a study must be quiet (no instance arriving) before its
    /// StudyProcess item runs (rules, integrity check).
    pub study_process_delay_secs: u64,
    /// Per-kind overrides (`[workqueue.kinds.<kind>]`), by kind name.
    pub kinds: BTreeMap<String, KindConfig>,
}

/// `[workqueue.kinds.<kind>]`: an operator's changes to one kind of work
/// item (ClearCanvas's WorkQueueTypeProperties); keys left out keep what
/// the kind was registered with.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct KindConfig {
    /// `low`, `medium`, `high` or `stat`: the priority of new items that
    /// name none.
    pub priority: Option<String>,
    /// Failures after which an item is left Failed (at least 1).
    pub max_failures: Option<u32>,
    /// Seconds to wait after the first failure (at least 1).
    pub failure_delay_secs: Option<u64>,
    /// Each further failure multiplies the wait by this (at least 1.0).
    pub backoff: Option<f64>,
    /// The longest wait between tries, in seconds (at least 1).
    pub max_delay_secs: Option<u64>,
}

impl Default for WorkQueueConfig {
    /// The engine's own defaults ([`EngineConfig::default`]) in the
    /// table's units, no per-kind overrides.
    fn default() -> Self {
        let engine = EngineConfig::default();
        WorkQueueConfig {
            threads: engine.threads,
            high_priority_threads: engine.high_priority_threads,
            memory_heavy_threads: engine.memory_heavy_threads,
            lease_secs: engine.lease.as_secs(),
            poll_secs: engine.poll.as_secs(),
            keep_completed_hours: engine.keep_completed.as_secs() / 3600,
            study_process_delay_secs: DEFAULT_STUDY_PROCESS_DELAY_SECS,
            kinds: BTreeMap::new(),
        }
    }
}

/// The validated `[workqueue]` table.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkQueueSettings {
    /// The engine this process runs; `threads` 0: none. The server gives
    /// each engine it starts a `processor_id` of its own.
    pub engine: EngineConfig,
    /// How long a study must be quiet before StudyProcess runs.
    pub study_process_delay: Duration,
    /// Per-kind overrides; the composition root applies them to the kinds
    /// it registers ([`WorkQueueSettings::apply_kind_overrides`]).
    pub kinds: BTreeMap<WorkKind, KindOverride>,
}

impl WorkQueueSettings {
    /// Applies the per-kind overrides to the kinds `registry` runs (built-in
    /// and embedder's alike). An override of a kind the registry does not
    /// run, or one that leaves a kind's first retry delay beyond its
    /// longest, is an error.
    pub fn apply_kind_overrides(&self, registry: &mut Registry) -> Result<(), ConfigError> {
        for (kind, changes) in &self.kinds {
            let setting = format!("workqueue.kinds.{kind}");
            if registry.properties(kind).is_none() {
                let known: Vec<&str> = registry.kinds().map(WorkKind::as_str).collect();
                return Err(ConfigError::invalid(
                    setting,
                    format!(
                        "this archive runs no work item type {kind:?}; it runs: {}",
                        known.join(", ")
                    ),
                ));
            }
            let properties = registry.properties_mut(kind).expect("registered");
            changes.apply(properties);
            let retry = &properties.retry;
            if retry.failure_delay > retry.max_delay {
                return Err(ConfigError::invalid(
                    setting,
                    format!(
                        "failure_delay_secs ({}) is longer than max_delay_secs ({})",
                        retry.failure_delay.as_secs(),
                        retry.max_delay.as_secs()
                    ),
                ));
            }
        }
        Ok(())
    }
}

impl WorkQueueConfig {
    /// Checks the table into the engine's settings and the kinds' overrides.
    pub(super) fn validate(&self) -> Result<WorkQueueSettings, ConfigError> {
        let invalid = |setting: &str, reason: String| {
            ConfigError::invalid(format!("workqueue.{setting}"), reason)
        };
        if self.threads > 0 && self.high_priority_threads >= self.threads {
            return Err(invalid(
                "high_priority_threads",
                format!("must be below threads ({})", self.threads),
            ));
        }
        if self.memory_heavy_threads == 0 {
            return Err(invalid("memory_heavy_threads", "must be at least 1".into()));
        }
        if self.lease_secs == 0 || self.poll_secs == 0 {
            return Err(invalid(
                "lease_secs, poll_secs",
                "must be at least 1 second".into(),
            ));
        }
        Ok(WorkQueueSettings {
            engine: EngineConfig {
                threads: self.threads,
                high_priority_threads: self.high_priority_threads,
                memory_heavy_threads: self.memory_heavy_threads.min(self.threads.max(1)),
                lease: Duration::from_secs(self.lease_secs),
                poll: Duration::from_secs(self.poll_secs),
                keep_completed: Duration::from_secs(self.keep_completed_hours.saturating_mul(3600)),
                ..EngineConfig::default()
            },
            study_process_delay: Duration::from_secs(self.study_process_delay_secs),
            kinds: self
                .kinds
                .iter()
                .map(|(name, kind)| kind.validate(name))
                .collect::<Result<_, _>>()?,
        })
    }
}

impl KindConfig {
    /// Checks one `[workqueue.kinds.<name>]` table.
    fn validate(&self, name: &str) -> Result<(WorkKind, KindOverride), ConfigError> {
        let invalid = |key: &str, reason: String| {
            ConfigError::invalid(format!("workqueue.kinds.{name}{key}"), reason)
        };
        let kind = WorkKind::new(name).map_err(|e| invalid("", e.to_string()))?;
        let priority = match &self.priority {
            None => None,
            Some(text) => Some(WorkPriority::parse(text).ok_or_else(|| {
                invalid(
                    ".priority",
                    format!("{text:?}: expected low, medium, high or stat"),
                )
            })?),
        };
        if self.max_failures == Some(0) {
            return Err(invalid(".max_failures", "must be at least 1".into()));
        }
        if let Some(backoff) = self.backoff {
            if !(backoff.is_finite() && backoff >= 1.0) {
                return Err(invalid(
                    ".backoff",
                    format!("{backoff}: must be a number of at least 1.0"),
                ));
            }
        }
        for (key, secs) in [
            (".failure_delay_secs", self.failure_delay_secs),
            (".max_delay_secs", self.max_delay_secs),
        ] {
            if secs == Some(0) {
                return Err(invalid(key, "must be at least 1 second".into()));
            }
        }
        if let (Some(first), Some(longest)) = (self.failure_delay_secs, self.max_delay_secs) {
            if first > longest {
                return Err(invalid(
                    "",
                    format!(
                        "failure_delay_secs ({first}) is longer than max_delay_secs ({longest})"
                    ),
                ));
            }
        }
        Ok((
            kind,
            KindOverride {
                priority,
                max_failures: self.max_failures,
                failure_delay: self.failure_delay_secs.map(Duration::from_secs),
                backoff: self.backoff,
                max_delay: self.max_delay_secs.map(Duration::from_secs),
            },
        ))
    }
}

#[cfg(test)]
mod tests;
