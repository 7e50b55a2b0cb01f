//! Settings: the TOML file a deployment is described by.
//!
//! Every field has a default, so an empty file (or none) is the small
//! deployment: AE `IMAGESERVER` on port 11112, data in `./imageserver-data`
//! (SQLite index plus one tier-1 filesystem). [`Config::from_toml`] reads a
//! file; the binary's flags then override single fields; [`Config::validate`]
//! turns the raw values into checked model types once, at start-up.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::model::work::{WorkKind, WorkPriority};
use crate::model::FilesystemSpec;
use crate::workqueue::{KindOverride, Registry};

mod database;
mod dicom;
mod storage;

pub use database::DatabaseConfig;
pub use dicom::{DeviceConfig, DicomConfig, PartitionConfig, PartitionSettings};
pub use storage::FilesystemConfig;

/// Why a configuration is not usable.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read the configuration file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The underlying failure.
        #[source]
        source: std::io::Error,
    },
    /// The TOML is invalid or has unknown keys.
    #[error("invalid configuration: {0}")]
    Parse(#[from] toml::de::Error),
    /// A value is out of range or malformed.
    #[error("invalid setting {setting}: {reason}")]
    Invalid {
        /// The setting's path, e.g. `dicom.ae_title`.
        setting: String,
        /// What is wrong.
        reason: String,
    },
}

impl ConfigError {
    /// An [`ConfigError::Invalid`] naming `setting` and saying why.
    fn invalid(setting: impl Into<String>, reason: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            setting: setting.into(),
            reason: reason.into(),
        }
    }
}

/// The whole configuration, as written in TOML.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where the default index and filesystem live.
    pub data_dir: PathBuf,
    /// Index database URL: `sqlite:PATH` (default `sqlite:<data_dir>/index.db`)
    /// or `postgres://user@host:port/database`.
    pub db: Option<String>,
    /// Connection settings of a PostgreSQL index (`[database]`).
    pub database: DatabaseConfig,
    /// New instances are refused (A700) when no writable filesystem has at
    /// least this many MiB free.
    pub min_free_space_mb: u64,
    /// The DICOM acceptor.
    pub dicom: DicomConfig,
    /// Storage filesystems; empty means one tier-1 filesystem at `<data_dir>/fs1`.
    pub filesystems: Vec<FilesystemConfig>,
    /// Known remote AEs.
    pub devices: Vec<DeviceConfig>,
    /// Further partitions (virtual servers), besides the one `[dicom]` describes.
    pub partitions: Vec<PartitionConfig>,
    /// The rules file (F14): a separate, versioned TOML file (`version = 1`,
    /// `[[rule]]` entries; see `rules::format`), reviewed on its own.
    /// Relative paths are relative to the configuration file. None: no rules.
    pub rules_file: Option<PathBuf>,
    /// The WorkQueue engine (`[workqueue]`).
    pub workqueue: WorkQueueConfig,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            data_dir: PathBuf::from(storage::DEFAULT_DATA_DIR),
            db: None,
            database: DatabaseConfig::default(),
            min_free_space_mb: storage::DEFAULT_MIN_FREE_SPACE_MB,
            dicom: DicomConfig::default(),
            filesystems: Vec::new(),
            devices: Vec::new(),
            partitions: Vec::new(),
            rules_file: None,
            workqueue: WorkQueueConfig::default(),
        }
    }
}

/// The configuration after validation: model types, resolved defaults.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The index database URL.
    pub db_url: String,
    /// Minimum free bytes for new instances.
    pub min_free_bytes: u64,
    /// Listen address (all partitions).
    pub bind: String,
    /// Reject associations calling another AE title.
    pub check_called_ae: bool,
    /// Association limit (per partition listener).
    pub max_associations: usize,
    /// Largest PDU we accept.
    pub max_pdu_length: u32,
    /// ARTIM timeout.
    pub artim_timeout: Duration,
    /// Idle timeout.
    pub idle_timeout: Duration,
    /// Private SOP classes, validated.
    pub private_sop_classes: Vec<String>,
    /// Filesystems.
    pub filesystems: Vec<FilesystemSpec>,
    /// Partitions; the first is the default (the `[dicom]` one).
    pub partitions: Vec<PartitionSettings>,
    /// The WorkQueue engine.
    pub workqueue: WorkQueueSettings,
}

impl Settings {
    /// The default partition (the `[dicom]` one).
    pub fn default_partition(&self) -> &PartitionSettings {
        &self.partitions[0]
    }
}

impl Config {
    /// Reads a TOML file.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::from_toml(&text)
    }

    /// Parses TOML text.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        Ok(toml::from_str(text)?)
    }

    /// The index URL this configuration uses.
    pub fn db_url(&self) -> String {
        self.database.index_url(&self.data_dir, self.db.as_deref())
    }

    /// Checks every value and resolves defaults.
    pub fn validate(&self) -> Result<Settings, ConfigError> {
        self.dicom.validate_acceptor()?;
        let filesystems = storage::filesystems(&self.data_dir, &self.filesystems)?;
        let partitions = dicom::partitions(&self.dicom, &self.partitions, &self.devices)?;
        Ok(Settings {
            db_url: self.db_url(),
            min_free_bytes: storage::min_free_bytes(self.min_free_space_mb),
            bind: self.dicom.bind.clone(),
            check_called_ae: self.dicom.check_called_ae,
            max_associations: self.dicom.max_associations,
            max_pdu_length: self.dicom.max_pdu_length,
            artim_timeout: Duration::from_secs(self.dicom.artim_timeout_secs),
            idle_timeout: Duration::from_secs(self.dicom.idle_timeout_secs),
            private_sop_classes: self.dicom.private_sop_classes.clone(),
            filesystems,
            partitions,
            workqueue: self.workqueue.validate()?,
        })
    }
}

/// The setting and reason the configuration `text` is refused with.
#[cfg(test)]
fn refusal(text: &str) -> (String, String) {
    match Config::from_toml(text).unwrap().validate() {
        Err(ConfigError::Invalid { setting, reason }) => (setting, reason),
        other => panic!("{text}: expected an invalid setting, got {other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_the_small_deployment() {
        let config = Config::from_toml("").unwrap();
        let settings = config.validate().unwrap();
        assert_eq!(
            settings.default_partition().spec.ae_title.as_str(),
            "IMAGESERVER"
        );
        assert_eq!(settings.default_partition().spec.port, 11112);
        assert_eq!(settings.db_url, "sqlite:./imageserver-data/index.db");
        assert_eq!(
            settings.filesystems[0].path,
            PathBuf::from("./imageserver-data/fs1")
        );
    }

    #[test]
    fn full_file_parses_and_bad_values_are_refused() {
        let config = Config::from_toml(
            r#"
            data_dir = "/srv/pacs"
            db = "sqlite:/srv/pacs/index.db"
            min_free_space_mb = 1024
            [dicom]
            ae_title = "ARCHIVE"
            port = 104
            max_pdu_length = 16384
            [[filesystems]]
            path = "/mnt/fast"
            tier = 1
            [[filesystems]]
            path = "/mnt/nas"
            tier = 2
            high_watermark = 95.0
            [[devices]]
            ae_title = "WORKSTATION"
            host = "10.0.0.5"
            port = 11112
            "#,
        )
        .unwrap();
        let settings = config.validate().unwrap();
        assert_eq!(settings.filesystems.len(), 2);
        assert_eq!(
            settings.default_partition().devices[0].ae_title.as_str(),
            "WORKSTATION"
        );
        assert!(Config::from_toml("unknown_key = 1").is_err());
        let mut bad = config.clone();
        bad.dicom.max_pdu_length = 100;
        assert!(bad.validate().is_err());
        bad = config.clone();
        bad.dicom.ae_title = "A/B".into();
        assert!(bad.validate().is_err());
        bad = config;
        bad.dicom.duplicate_policy = "keep_both".into();
        assert!(bad.validate().is_err());
    }
}

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
    fn default() -> Self {
        WorkQueueConfig {
            threads: 10,
            high_priority_threads: 2,
            memory_heavy_threads: 4,
            lease_secs: 60,
            poll_secs: 5,
            keep_completed_hours: 24,
            study_process_delay_secs: 60,
            kinds: BTreeMap::new(),
        }
    }
}

/// The validated `[workqueue]` table.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkQueueSettings {
    /// Worker threads; 0: no engine in this process.
    pub threads: usize,
    /// Threads kept for High and Stat items.
    pub high_priority_threads: usize,
    /// Memory-heavy cap.
    pub memory_heavy_threads: usize,
    /// Lease duration.
    pub lease: Duration,
    /// Poll interval.
    pub poll: Duration,
    /// How long completed items are kept.
    pub keep_completed: Duration,
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
                return Err(ConfigError::Invalid {
                    setting,
                    reason: format!(
                        "this archive runs no work item type {kind:?}; it runs: {}",
                        known.join(", ")
                    ),
                });
            }
            let properties = registry.properties_mut(kind).expect("registered");
            changes.apply(properties);
            let retry = &properties.retry;
            if retry.failure_delay > retry.max_delay {
                return Err(ConfigError::Invalid {
                    setting,
                    reason: format!(
                        "failure_delay_secs ({}) is longer than max_delay_secs ({})",
                        retry.failure_delay.as_secs(),
                        retry.max_delay.as_secs()
                    ),
                });
            }
        }
        Ok(())
    }
}

impl KindConfig {
    fn validate(&self, name: &str) -> Result<(WorkKind, KindOverride), ConfigError> {
        let invalid = |key: &str, reason: String| ConfigError::Invalid {
            setting: format!("workqueue.kinds.{name}{key}"),
            reason,
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

impl WorkQueueConfig {
    fn validate(&self) -> Result<WorkQueueSettings, ConfigError> {
        let invalid = |setting: &str, reason: String| ConfigError::Invalid {
            setting: format!("workqueue.{setting}"),
            reason,
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
            threads: self.threads,
            high_priority_threads: self.high_priority_threads,
            memory_heavy_threads: self.memory_heavy_threads.min(self.threads.max(1)),
            lease: Duration::from_secs(self.lease_secs),
            poll: Duration::from_secs(self.poll_secs),
            keep_completed: Duration::from_secs(self.keep_completed_hours.saturating_mul(3600)),
            study_process_delay: Duration::from_secs(self.study_process_delay_secs),
            kinds: self
                .kinds
                .iter()
                .map(|(name, kind)| kind.validate(name))
                .collect::<Result<_, _>>()?,
        })
    }
}

#[cfg(test)]
mod workqueue_tests {
    use super::{Config, ConfigError};
    use crate::model::work::{WorkItem, WorkKind, WorkPriority};
    use crate::workqueue::{KindProperties, ProcessContext, Registry, RetryPolicy, StepResult};
    use std::time::Duration;

    #[test]
    fn workqueue_table_defaults_and_limits() {
        let settings = Config::from_toml("").unwrap().validate().unwrap().workqueue;
        assert_eq!(settings.threads, 10);
        assert_eq!(settings.lease, Duration::from_secs(60));
        let config = Config::from_toml(
            "[workqueue]\nthreads = 4\nhigh_priority_threads = 1\nmemory_heavy_threads = 2\n\
             lease_secs = 30\npoll_secs = 2",
        )
        .unwrap();
        let settings = config.validate().unwrap().workqueue;
        assert_eq!(
            (
                settings.threads,
                settings.high_priority_threads,
                settings.memory_heavy_threads
            ),
            (4, 1, 2)
        );
        assert_eq!(settings.poll, Duration::from_secs(2));
        assert!(
            Config::from_toml("[workqueue]\nthreads = 2\nhigh_priority_threads = 2")
                .unwrap()
                .validate()
                .is_err()
        );
        assert!(Config::from_toml("[workqueue]\nlease_secs = 0")
            .unwrap()
            .validate()
            .is_err());
        assert!(Config::from_toml("[workqueue]\nthreads = 0")
            .unwrap()
            .validate()
            .is_ok());
        assert!(Config::from_toml("[workqueue]\nthread = 3").is_err());
    }

    /// A registry running `move_study` (High, sends' retry policy) and an
    /// embedder's `notify_ris`, as `ServerBuilder::open` leaves it.
    fn sample_registry() -> Registry {
        let mut registry = Registry::new();
        registry
            .register(
                WorkKind::MOVE_STUDY,
                KindProperties::new()
                    .priority(WorkPriority::High)
                    .retry(crate::processors::send_retry_policy()),
                |_: &WorkItem, _: &ProcessContext<'_>| StepResult::Done,
            )
            .register(
                WorkKind::new("notify_ris").unwrap(),
                KindProperties::new(),
                |_: &WorkItem, _: &ProcessContext<'_>| StepResult::Done,
            );
        registry
    }

    fn invalid_setting(text: &str) -> (String, String) {
        match Config::from_toml(text).unwrap().validate() {
            Err(ConfigError::Invalid { setting, reason }) => (setting, reason),
            other => panic!("{text}: expected an invalid setting, got {other:?}"),
        }
    }

    #[test]
    fn per_kind_overrides_parse_and_apply_to_registered_kinds_only() {
        let settings = Config::from_toml(
            r#"
            [workqueue.kinds.move_study]
            failure_delay_secs = 2
            max_failures = 5
            backoff = 2
            max_delay_secs = 600
            priority = "STAT"

            [workqueue.kinds.notify_ris]
            max_failures = 1
            "#,
        )
        .unwrap()
        .validate()
        .unwrap()
        .workqueue;
        assert_eq!(settings.kinds.len(), 2);
        let mut registry = sample_registry();
        settings.apply_kind_overrides(&mut registry).unwrap();
        let moves = registry.properties(&WorkKind::MOVE_STUDY).unwrap();
        assert_eq!(moves.priority, WorkPriority::Stat);
        assert_eq!(
            moves.retry,
            RetryPolicy {
                max_failures: 5,
                failure_delay: Duration::from_secs(2),
                backoff: 2.0,
                max_delay: Duration::from_secs(600),
            }
        );
        assert_eq!(moves.study_lock, KindProperties::new().study_lock);
        let notify = registry
            .properties(&WorkKind::new("notify_ris").unwrap())
            .unwrap();
        assert_eq!(notify.retry.max_failures, 1);
        assert_eq!(
            notify.retry.failure_delay,
            RetryPolicy::default().failure_delay
        );
        assert_eq!(notify.priority, WorkPriority::Medium);

        // A kind this archive does not run: refused, naming what it runs.
        let unknown = Config::from_toml("[workqueue.kinds.auto_rout]\nmax_failures = 2")
            .unwrap()
            .validate()
            .unwrap()
            .workqueue;
        match unknown.apply_kind_overrides(&mut sample_registry()) {
            Err(ConfigError::Invalid { setting, reason }) => {
                assert_eq!(setting, "workqueue.kinds.auto_rout");
                assert!(reason.contains("move_study, notify_ris"), "{reason}");
            }
            other => panic!("expected an unknown kind, got {other:?}"),
        }
        // A first delay beyond the kind's registered longest (30 min).
        let beyond = Config::from_toml("[workqueue.kinds.move_study]\nfailure_delay_secs = 3600")
            .unwrap()
            .validate()
            .unwrap()
            .workqueue;
        assert!(beyond.apply_kind_overrides(&mut sample_registry()).is_err());
        // No overrides: the registry is left as it was.
        let mut untouched = sample_registry();
        Config::from_toml("")
            .unwrap()
            .validate()
            .unwrap()
            .workqueue
            .apply_kind_overrides(&mut untouched)
            .unwrap();
        assert_eq!(
            format!("{untouched:?}"),
            format!("{:?}", sample_registry()),
            "no overrides, no change"
        );
    }

    #[test]
    fn per_kind_overrides_are_validated_strictly() {
        let unknown_key =
            Config::from_toml("[workqueue.kinds.move_study]\nfailure_delay = 2").unwrap_err();
        let text = unknown_key.to_string();
        assert!(
            text.contains("unknown field `failure_delay`") && text.contains("failure_delay_secs"),
            "{text}"
        );
        assert!(Config::from_toml("[workqueue.kinds.move_study]\nmax_failures = \"3\"").is_err());
        assert!(Config::from_toml("[workqueue.kinds.move_study]\nmax_failures = -1").is_err());
        let cases = [
            (
                "[workqueue.kinds.Move-Study]\nmax_failures = 2",
                "workqueue.kinds.Move-Study",
                "invalid work item type",
            ),
            (
                "[workqueue.kinds.move_study]\npriority = \"urgent\"",
                "workqueue.kinds.move_study.priority",
                "expected low, medium, high or stat",
            ),
            (
                "[workqueue.kinds.move_study]\nmax_failures = 0",
                "workqueue.kinds.move_study.max_failures",
                "at least 1",
            ),
            (
                "[workqueue.kinds.move_study]\nbackoff = 0.5",
                "workqueue.kinds.move_study.backoff",
                "at least 1.0",
            ),
            (
                "[workqueue.kinds.move_study]\nbackoff = nan",
                "workqueue.kinds.move_study.backoff",
                "at least 1.0",
            ),
            (
                "[workqueue.kinds.move_study]\nfailure_delay_secs = 0",
                "workqueue.kinds.move_study.failure_delay_secs",
                "at least 1 second",
            ),
            (
                "[workqueue.kinds.move_study]\nmax_delay_secs = 0",
                "workqueue.kinds.move_study.max_delay_secs",
                "at least 1 second",
            ),
            (
                "[workqueue.kinds.move_study]\nfailure_delay_secs = 60\nmax_delay_secs = 30",
                "workqueue.kinds.move_study",
                "longer than max_delay_secs",
            ),
        ];
        for (text, setting, reason) in cases {
            let (got_setting, got_reason) = invalid_setting(text);
            assert_eq!(got_setting, setting, "{text}");
            assert!(got_reason.contains(reason), "{text}: {got_reason}");
        }
        // Every key is optional; an empty table changes nothing.
        assert!(Config::from_toml("[workqueue.kinds.move_study]")
            .unwrap()
            .validate()
            .is_ok());
    }
}
