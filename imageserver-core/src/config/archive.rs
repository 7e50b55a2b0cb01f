//! `[archive]` (the HSM archive: where quiet studies are packed, when, how
//! many restores at once) and `[services]` (how often the scheduled
//! services run).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::ConfigError;

/// `[archive]` as written in TOML.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ArchiveConfig {
    /// The archive root: one pack per study at
    /// `<path>/<partition folder>/<date folder>/<study uid>.tar`. None
    /// (the default): nothing is archived.
    pub path: Option<PathBuf>,
    /// A study no instance arrived for this many hours is packed by the
    /// archive scan (default 24; fractions allowed).
    pub after_quiet_hours: f64,
    /// The partitions (AE titles) whose studies the scan archives; empty
    /// (the default): every partition.
    pub partitions: Vec<String>,
    /// Most restores running at once in the deployment (every process
    /// sharing the index; default 2).
    pub max_concurrent_restores: usize,
    /// How long a retrieve or a store waits for a nearline study's
    /// restore before it gives up (default 1800 s; the restore goes on).
    pub restore_wait_secs: u64,
}

impl Default for ArchiveConfig {
    fn default() -> ArchiveConfig {
        ArchiveConfig {
            path: None,
            after_quiet_hours: 24.0,
            partitions: Vec::new(),
            max_concurrent_restores: 2,
            restore_wait_secs: 1800,
        }
    }
}

/// `[archive]` validated.
#[derive(Debug, Clone, PartialEq)]
pub struct ArchiveSettings {
    /// The archive root (None: archiving off).
    pub root: Option<PathBuf>,
    /// How long a study is quiet before the scan packs it.
    pub after_quiet: Duration,
    /// The partitions archived (empty: all).
    pub partitions: Vec<String>,
    /// Most concurrent restores in the deployment.
    pub max_concurrent_restores: usize,
    /// How long a caller waits for a restore.
    pub restore_wait: Duration,
}

impl ArchiveSettings {
    /// Whether the scan archives the partition answering to `ae_title`.
    pub fn archives(&self, ae_title: &str) -> bool {
        self.root.is_some()
            && (self.partitions.is_empty() || self.partitions.iter().any(|p| p.trim() == ae_title))
    }
}

impl ArchiveConfig {
    /// Checks the values.
    pub(super) fn validate(&self) -> Result<ArchiveSettings, ConfigError> {
        if !self.after_quiet_hours.is_finite() || self.after_quiet_hours < 0.0 {
            return Err(ConfigError::invalid(
                "archive.after_quiet_hours",
                "must be a number of hours, 0 or more",
            ));
        }
        if self.max_concurrent_restores == 0 {
            return Err(ConfigError::invalid(
                "archive.max_concurrent_restores",
                "must be at least 1",
            ));
        }
        if self.path.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
            return Err(ConfigError::invalid("archive.path", "is empty"));
        }
        Ok(ArchiveSettings {
            root: self.path.clone(),
            after_quiet: Duration::from_secs_f64(self.after_quiet_hours * 3600.0),
            partitions: self.partitions.clone(),
            max_concurrent_restores: self.max_concurrent_restores,
            restore_wait: Duration::from_secs(self.restore_wait_secs.max(1)),
        })
    }
}

/// `[services]` as written in TOML: each scheduled service's interval in
/// seconds (0: the service runs only on `imageserver service run`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ServicesConfig {
    /// The archive scan (default 300).
    pub archive_scan_secs: u64,
    /// The integrity scan (default 3600).
    pub integrity_scan_secs: u64,
    /// Studies whose files the integrity scan hashes per run (the slow
    /// rotation of digests; sizes are checked for every study), default 20.
    pub integrity_digest_studies: u64,
    /// A study whose newest file is younger than this many seconds may
    /// still be receiving instances (a file is durable before its index row
    /// is committed): the integrity scan leaves it for a later run, and
    /// never queues a repair that would race ingest (default 600).
    pub integrity_settle_secs: u64,
    /// Whether the scheduler runs at all in this process (default true; a
    /// cluster's nodes all may: a lease picks one per service).
    pub enabled: bool,
    /// The drop folder: files put in `<import_folder>/<AE title>/` are
    /// imported into that partition (none, the default: no folder import).
    pub import_folder: Option<PathBuf>,
    /// The folder import (default 10).
    pub folder_import_secs: u64,
}

impl Default for ServicesConfig {
    fn default() -> ServicesConfig {
        ServicesConfig {
            archive_scan_secs: 300,
            integrity_scan_secs: 3600,
            integrity_digest_studies: 20,
            integrity_settle_secs: 600,
            enabled: true,
            import_folder: None,
            folder_import_secs: 10,
        }
    }
}

/// `[services]` validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicesSettings {
    /// The archive scan's interval (None: on request only).
    pub archive_scan: Option<Duration>,
    /// The integrity scan's interval (None: on request only).
    pub integrity_scan: Option<Duration>,
    /// Studies hashed per integrity scan.
    pub integrity_digest_studies: u64,
    /// How long a study's newest file must be quiet before the integrity
    /// scan judges it.
    pub integrity_settle: Duration,
    /// Whether the scheduler runs.
    pub enabled: bool,
    /// The drop folder (None: no folder import).
    pub import_folder: Option<PathBuf>,
    /// The folder import's interval (None: on request only).
    pub folder_import: Option<Duration>,
}

impl ServicesConfig {
    /// Checks the values.
    pub(super) fn validate(&self) -> ServicesSettings {
        let every = |secs: u64| (secs > 0).then(|| Duration::from_secs(secs));
        ServicesSettings {
            archive_scan: every(self.archive_scan_secs),
            integrity_scan: every(self.integrity_scan_secs),
            integrity_digest_studies: self.integrity_digest_studies,
            integrity_settle: Duration::from_secs(self.integrity_settle_secs),
            enabled: self.enabled,
            import_folder: self.import_folder.clone(),
            folder_import: every(self.folder_import_secs),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{assert_refused, Config};

    #[test]
    fn archive_and_services_parse_and_bad_values_are_refused() {
        let settings = Config::from_toml(
            "[archive]\npath = \"/mnt/archive\"\nafter_quiet_hours = 0.5\npartitions = [\"A\"]\n\
             [services]\narchive_scan_secs = 0\n",
        )
        .unwrap()
        .validate()
        .unwrap();
        assert_eq!(settings.archive.after_quiet.as_secs(), 1800);
        assert!(settings.archive.archives("A"));
        assert!(!settings.archive.archives("B"));
        assert_eq!(settings.services.archive_scan, None);
        assert!(!Config::default().validate().unwrap().archive.archives("A"));
        assert_refused(
            "[archive]\nafter_quiet_hours = -1",
            "archive.after_quiet_hours",
            "hours",
        );
        assert_refused(
            "[archive]\nmax_concurrent_restores = 0",
            "archive.max_concurrent_restores",
            "at least",
        );
    }
}
