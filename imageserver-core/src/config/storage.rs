//! Storage: the data folder, the filesystems instances are written to and
//! the free space new instances need.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::ConfigError;
use crate::model::{FilesystemSpec, Tier};

/// Where the default index and filesystem live (`data_dir`).
pub(super) const DEFAULT_DATA_DIR: &str = "./imageserver-data";

/// MiB a writable filesystem needs free before new instances are refused
/// (`min_free_space_mb`).
pub(super) const DEFAULT_MIN_FREE_SPACE_MB: u64 = 256;

/// Seconds between a running server's re-reads of the filesystems
/// (`filesystem_refresh_secs`).
pub(super) const DEFAULT_FILESYSTEM_REFRESH_SECS: u64 = 5;

/// Most studies queued for migration per filesystem and round
/// (`migration_batch`).
pub(super) const DEFAULT_MIGRATION_BATCH: u64 = 20;

/// One storage filesystem.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FilesystemConfig {
    /// Root directory (local disk or NAS mount).
    pub path: PathBuf,
    /// Tier, 1 = fastest.
    #[serde(default = "default_tier")]
    pub tier: u8,
    /// Used percentage above which studies move away.
    #[serde(default = "default_high_watermark")]
    pub high_watermark: f64,
    /// Used percentage migration drains down to.
    #[serde(default = "default_low_watermark")]
    pub low_watermark: f64,
    /// Never written to.
    #[serde(default)]
    pub read_only: bool,
    /// Never read from.
    #[serde(default)]
    pub write_only: bool,
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// A quota in MiB below what the volume reports (usage is then the
    /// bytes of the studies held there); none: the volume's size.
    #[serde(default)]
    pub capacity_mb: Option<u64>,
}

fn default_tier() -> u8 {
    1
}
fn default_high_watermark() -> f64 {
    90.0
}
fn default_low_watermark() -> f64 {
    80.0
}

impl FilesystemConfig {
    /// What an empty `filesystems` list stands for: one tier-1 filesystem
    /// at `<data_dir>/fs1`, with the defaults a listed one gets.
    fn default_in(data_dir: &Path) -> FilesystemConfig {
        FilesystemConfig {
            path: data_dir.join("fs1"),
            tier: default_tier(),
            high_watermark: default_high_watermark(),
            low_watermark: default_low_watermark(),
            read_only: false,
            write_only: false,
            description: "default tier-1 filesystem".into(),
            capacity_mb: None,
        }
    }

    /// Checks the values (tier, watermarks, quota): the spec the index
    /// stores.
    pub fn validate(&self) -> Result<FilesystemSpec, ConfigError> {
        if self.tier == 0 {
            return Err(ConfigError::invalid("filesystems.tier", "tiers start at 1"));
        }
        if !(0.0..=100.0).contains(&self.low_watermark)
            || !(0.0..=100.0).contains(&self.high_watermark)
            || self.low_watermark > self.high_watermark
        {
            return Err(ConfigError::invalid(
                "filesystems.watermarks",
                "need 0 <= low <= high <= 100",
            ));
        }
        if self.capacity_mb == Some(0) {
            return Err(ConfigError::invalid(
                "filesystems.capacity_mb",
                "a quota is at least 1 MiB",
            ));
        }
        Ok(FilesystemSpec {
            path: self.path.clone(),
            tier: Tier(self.tier),
            high_watermark: self.high_watermark,
            low_watermark: self.low_watermark,
            read_only: self.read_only,
            write_only: self.write_only,
            description: self.description.clone(),
            capacity_mb: self.capacity_mb,
        })
    }
}

/// The checked filesystems; none listed means the default one in `data_dir`.
pub(super) fn filesystems(
    data_dir: &Path,
    listed: &[FilesystemConfig],
) -> Result<Vec<FilesystemSpec>, ConfigError> {
    if listed.is_empty() {
        return Ok(vec![FilesystemConfig::default_in(data_dir).validate()?]);
    }
    listed.iter().map(FilesystemConfig::validate).collect()
}

/// `filesystem_refresh_secs`, at least one second.
pub(super) fn filesystem_refresh(secs: u64) -> Result<std::time::Duration, ConfigError> {
    if secs == 0 {
        return Err(ConfigError::invalid(
            "filesystem_refresh_secs",
            "at least 1 second",
        ));
    }
    Ok(std::time::Duration::from_secs(secs))
}

/// `min_free_space_mb` in bytes.
pub(super) fn min_free_bytes(min_free_space_mb: u64) -> u64 {
    min_free_space_mb * 1024 * 1024
}

#[cfg(test)]
mod tests {
    use crate::config::{assert_refused, Config};
    use crate::model::Tier;

    #[test]
    fn filesystems_default_to_one_in_the_data_dir_and_are_checked() {
        let settings = Config::from_toml("data_dir = \"/srv/pacs\"")
            .unwrap()
            .validate()
            .unwrap();
        let [fs] = settings.filesystems.as_slice() else {
            panic!("one default filesystem: {:?}", settings.filesystems);
        };
        assert_eq!(fs.path.to_str(), Some("/srv/pacs/fs1"));
        assert_eq!(fs.tier, Tier(1));
        assert_eq!((fs.low_watermark, fs.high_watermark), (80.0, 90.0));
        assert!(!fs.read_only && !fs.write_only);
        assert_eq!(settings.min_free_bytes, 256 * 1024 * 1024);

        let listed = Config::from_toml("[[filesystems]]\npath = \"/mnt/a\"\nlow_watermark = 50")
            .unwrap()
            .validate()
            .unwrap();
        assert_eq!(listed.filesystems.len(), 1);
        assert_eq!(listed.filesystems[0].high_watermark, 90.0);
        assert_eq!(listed.filesystems[0].low_watermark, 50.0);

        let listed = "[[filesystems]]\npath = \"/mnt/a\"\n";
        assert_refused(
            &format!("{listed}tier = 0"),
            "filesystems.tier",
            "tiers start at 1",
        );
        for watermarks in ["low_watermark = 95", "high_watermark = 101"] {
            assert_refused(
                &format!("{listed}{watermarks}"),
                "filesystems.watermarks",
                "need 0 <= low <= high <= 100",
            );
        }
        assert!(
            Config::from_toml("[[filesystems]]\ntier = 1").is_err(),
            "path is required"
        );
    }
}
