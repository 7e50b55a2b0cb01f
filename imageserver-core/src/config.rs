//! Settings: the TOML file a deployment is described by.
//!
//! Every field has a default, so an empty file (or none) is the small
//! deployment: AE `IMAGESERVER` on port 11112, data in `./imageserver-data`
//! (SQLite index plus one tier-1 filesystem). [`Config::from_toml`] reads a
//! file; the binary's flags then override single fields; [`Config::validate`]
//! turns the raw values into checked model types once, at start-up.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::model::{AeTitle, DeviceSpec, FilesystemSpec, FolderName, PartitionSpec, Tier};

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

/// The whole configuration, as written in TOML.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where the default index and filesystem live.
    pub data_dir: PathBuf,
    /// Index database URL: `sqlite:PATH` (default `sqlite:<data_dir>/index.db`).
    pub db: Option<String>,
    /// New instances are refused (A700) when no writable filesystem has at
    /// least this many MiB free.
    pub min_free_space_mb: u64,
    /// The DICOM acceptor.
    pub dicom: DicomConfig,
    /// Storage filesystems; empty means one tier-1 filesystem at `<data_dir>/fs1`.
    pub filesystems: Vec<FilesystemConfig>,
    /// Known remote AEs.
    pub devices: Vec<DeviceConfig>,
}

/// The DICOM acceptor's settings.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DicomConfig {
    /// Our AE title.
    pub ae_title: String,
    /// Address to listen on.
    pub bind: String,
    /// Port to listen on.
    pub port: u16,
    /// Reject associations that call another AE title.
    pub check_called_ae: bool,
    /// Most associations open at once; more are rejected (A-ASSOCIATE-RJ).
    pub max_associations: usize,
    /// The largest PDU we accept, in bytes (4096 to 16777216).
    pub max_pdu_length: u32,
    /// Seconds a caller has to send its association request (ARTIM).
    pub artim_timeout_secs: u64,
    /// Seconds an association may stay silent, and the longest one PDU may
    /// take to arrive, before it is aborted.
    pub idle_timeout_secs: u64,
    /// Private storage SOP Class UIDs accepted besides the standard ones.
    pub private_sop_classes: Vec<String>,
}

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
}

/// One known remote AE.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DeviceConfig {
    /// Its AE title.
    pub ae_title: String,
    /// Host name or address.
    pub host: String,
    /// DICOM port.
    pub port: u16,
    /// May store to us.
    #[serde(default = "yes")]
    pub allow_store: bool,
    /// May query us.
    #[serde(default = "yes")]
    pub allow_query: bool,
    /// May retrieve from us.
    #[serde(default = "yes")]
    pub allow_retrieve: bool,
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
fn yes() -> bool {
    true
}

impl Default for Config {
    fn default() -> Config {
        Config {
            data_dir: PathBuf::from("./imageserver-data"),
            db: None,
            min_free_space_mb: 256,
            dicom: DicomConfig::default(),
            filesystems: Vec::new(),
            devices: Vec::new(),
        }
    }
}

impl Default for DicomConfig {
    fn default() -> DicomConfig {
        DicomConfig {
            ae_title: "IMAGESERVER".into(),
            bind: "0.0.0.0".into(),
            port: 11112,
            check_called_ae: true,
            max_associations: 64,
            max_pdu_length: 256 * 1024,
            artim_timeout_secs: 30,
            idle_timeout_secs: 300,
            private_sop_classes: Vec::new(),
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
    /// The partition the acceptor serves.
    pub partition: PartitionSpec,
    /// Listen address.
    pub bind: String,
    /// Listen port.
    pub port: u16,
    /// Reject associations calling another AE title.
    pub check_called_ae: bool,
    /// Association limit.
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
    /// Devices.
    pub devices: Vec<DeviceSpec>,
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
        self.db
            .clone()
            .unwrap_or_else(|| format!("sqlite:{}", self.data_dir.join("index.db").display()))
    }

    /// Checks every value and resolves defaults.
    pub fn validate(&self) -> Result<Settings, ConfigError> {
        let invalid = |setting: &str, reason: String| ConfigError::Invalid {
            setting: setting.to_string(),
            reason,
        };
        let ae_title = AeTitle::parse(&self.dicom.ae_title)
            .map_err(|e| invalid("dicom.ae_title", e.to_string()))?;
        let folder = FolderName::parse(ae_title.as_str())
            .map_err(|e| invalid("dicom.ae_title", format!("not usable as a folder: {e}")))?;
        if !(4096..=16 * 1024 * 1024).contains(&self.dicom.max_pdu_length) {
            return Err(invalid(
                "dicom.max_pdu_length",
                "must be between 4096 and 16777216".into(),
            ));
        }
        if self.dicom.max_associations == 0 {
            return Err(invalid(
                "dicom.max_associations",
                "must be at least 1".into(),
            ));
        }
        if self.dicom.artim_timeout_secs == 0 || self.dicom.idle_timeout_secs == 0 {
            return Err(invalid(
                "dicom timeouts",
                "must be at least 1 second".into(),
            ));
        }
        for uid in &self.dicom.private_sop_classes {
            crate::model::Uid::parse(uid)
                .map_err(|e| invalid("dicom.private_sop_classes", format!("{uid:?}: {e}")))?;
        }
        let filesystems = if self.filesystems.is_empty() {
            vec![FilesystemSpec {
                path: self.data_dir.join("fs1"),
                tier: Tier(1),
                high_watermark: default_high_watermark(),
                low_watermark: default_low_watermark(),
                read_only: false,
                write_only: false,
                description: "default tier-1 filesystem".into(),
            }]
        } else {
            self.filesystems
                .iter()
                .map(|fs| {
                    if fs.tier == 0 {
                        return Err(invalid("filesystems.tier", "tiers start at 1".into()));
                    }
                    if !(0.0..=100.0).contains(&fs.low_watermark)
                        || !(0.0..=100.0).contains(&fs.high_watermark)
                        || fs.low_watermark > fs.high_watermark
                    {
                        return Err(invalid(
                            "filesystems.watermarks",
                            "need 0 <= low <= high <= 100".into(),
                        ));
                    }
                    Ok(FilesystemSpec {
                        path: fs.path.clone(),
                        tier: Tier(fs.tier),
                        high_watermark: fs.high_watermark,
                        low_watermark: fs.low_watermark,
                        read_only: fs.read_only,
                        write_only: fs.write_only,
                        description: fs.description.clone(),
                    })
                })
                .collect::<Result<_, _>>()?
        };
        let devices = self
            .devices
            .iter()
            .map(|device| {
                Ok(DeviceSpec {
                    ae_title: AeTitle::parse(&device.ae_title)
                        .map_err(|e| invalid("devices.ae_title", e.to_string()))?,
                    host: device.host.clone(),
                    port: device.port,
                    allow_store: device.allow_store,
                    allow_query: device.allow_query,
                    allow_retrieve: device.allow_retrieve,
                })
            })
            .collect::<Result<_, ConfigError>>()?;
        Ok(Settings {
            db_url: self.db_url(),
            min_free_bytes: self.min_free_space_mb * 1024 * 1024,
            partition: PartitionSpec {
                ae_title,
                folder,
                description: "default partition".into(),
            },
            bind: self.dicom.bind.clone(),
            port: self.dicom.port,
            check_called_ae: self.dicom.check_called_ae,
            max_associations: self.dicom.max_associations,
            max_pdu_length: self.dicom.max_pdu_length,
            artim_timeout: Duration::from_secs(self.dicom.artim_timeout_secs),
            idle_timeout: Duration::from_secs(self.dicom.idle_timeout_secs),
            private_sop_classes: self.dicom.private_sop_classes.clone(),
            filesystems,
            devices,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_the_small_deployment() {
        let config = Config::from_toml("").unwrap();
        let settings = config.validate().unwrap();
        assert_eq!(settings.partition.ae_title.as_str(), "IMAGESERVER");
        assert_eq!(settings.port, 11112);
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
        assert_eq!(settings.devices[0].ae_title.as_str(), "WORKSTATION");
        assert!(Config::from_toml("unknown_key = 1").is_err());
        let mut bad = config.clone();
        bad.dicom.max_pdu_length = 100;
        assert!(bad.validate().is_err());
        bad = config;
        bad.dicom.ae_title = "A/B".into();
        assert!(bad.validate().is_err());
    }
}
