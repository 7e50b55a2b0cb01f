//! Settings: the TOML file a deployment is described by.
//!
//! Every field has a default, so an empty file (or none) is the small
//! deployment: AE `IMAGESERVER` on port 11112, data in `./imageserver-data`
//! (SQLite index plus one tier-1 filesystem). [`Config::from_toml`] reads a
//! file; the binary's flags then override single fields; [`Config::validate`]
//! turns the raw values into checked model types once, at start-up.
//!
//! Each area has a module of its own, which validates its tables straight
//! into the types their consumers take: `dicom` (`[dicom]`, partitions,
//! devices), `storage` (data folder, filesystems, free space), `database`
//! (`[database]`, the index URL), `http` (`[http]`) and `workqueue` (`[workqueue]`, per-kind
//! overrides, into the engine's own settings). The types are re-exported
//! here, so every one is `config::Name`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::model::FilesystemSpec;

mod archive;
mod audit;
mod database;
mod dicom;
mod http;
mod node;
mod storage;
mod users;
mod workqueue;

pub use archive::{ArchiveConfig, ArchiveSettings, ServicesConfig, ServicesSettings};
pub use audit::AuditConfig;
pub use database::DatabaseConfig;
pub use dicom::{
    DeviceConfig, DicomConfig, PartitionConfig, PartitionSettings, TlsConfig, TlsListener,
};
pub use http::{DicomWebAuth, HttpConfig, HttpSettings, HttpUserConfig, Role, User};
pub use node::NodeConfig;
pub use storage::FilesystemConfig;
pub use users::{hash_passcode, UserConfig, Users};
pub use workqueue::{KindConfig, WorkQueueConfig, WorkQueueSettings};

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
    #[error("invalid configuration")]
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
    /// A [`ConfigError::Invalid`] naming `setting` and saying why.
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
    /// They seed the index: once a path is there, the index's row is in
    /// force (`imageserver filesystem set` changes it).
    pub filesystems: Vec<FilesystemConfig>,
    /// Seconds between a running server's re-reads of the filesystems
    /// (rows, identity markers, usage).
    pub filesystem_refresh_secs: u64,
    /// Most studies the watermark service queues for migration per
    /// filesystem and round (every `filesystem_refresh_secs`).
    pub migration_batch: u64,
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
    /// This process as a node of a cluster (`[node]`).
    pub node: NodeConfig,
    /// The HTTP server (`[http]`).
    pub http: HttpConfig,
    /// The IHE ATNA audit trail (`[audit]`).
    pub audit: AuditConfig,
    /// Users who may identify themselves in associations (`[[users]]`).
    pub users: Vec<UserConfig>,
    /// The HSM archive (`[archive]`).
    pub archive: ArchiveConfig,
    /// The scheduled services (`[services]`).
    pub services: ServicesConfig,
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
            filesystem_refresh_secs: storage::DEFAULT_FILESYSTEM_REFRESH_SECS,
            migration_batch: storage::DEFAULT_MIGRATION_BATCH,
            devices: Vec::new(),
            partitions: Vec::new(),
            rules_file: None,
            workqueue: WorkQueueConfig::default(),
            node: NodeConfig::default(),
            http: HttpConfig::default(),
            audit: AuditConfig::default(),
            users: Vec::new(),
            archive: ArchiveConfig::default(),
            services: ServicesConfig::default(),
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
    /// Largest instance (stored file) accepted, in bytes.
    pub max_instance_bytes: u64,
    /// Most data set bytes before Pixel Data accepted.
    pub max_header_bytes: u64,
    /// Most unknown C-FIND keys returned in each response.
    pub max_echoed_unknown_keys: usize,
    /// Listen address (all partitions).
    pub bind: String,
    /// Reject associations calling another AE title.
    pub check_called_ae: bool,
    /// Association limit (per partition listener).
    pub max_associations: usize,
    /// Connections waiting for their A-ASSOCIATE-RQ (per listener).
    pub max_pending_associations: usize,
    /// Such connections from one address (0: no limit).
    pub max_pending_per_address: usize,
    /// Most devices per partition that unknown callers are registered into.
    pub max_registered_devices: u64,
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
    /// How often a running server re-reads the filesystems.
    pub filesystem_refresh: Duration,
    /// Most studies the watermark service queues for migration per
    /// filesystem and round.
    pub migration_batch: u64,
    /// Partitions; the first is the default (the `[dicom]` one).
    pub partitions: Vec<PartitionSettings>,
    /// The WorkQueue engine.
    pub workqueue: WorkQueueSettings,
    /// This process as a node of a cluster.
    pub node: crate::cluster::NodeSettings,
    /// The HTTP server.
    pub http: HttpSettings,
    /// The audit trail, None when `[audit]` is not enabled.
    pub audit: Option<crate::audit::AuditSettings>,
    /// The users of User Identity negotiation.
    pub users: std::sync::Arc<Users>,
    /// The HSM archive.
    pub archive: ArchiveSettings,
    /// The scheduled services.
    pub services: ServicesSettings,
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
        self.database.validate()?;
        let filesystems = storage::filesystems(&self.data_dir, &self.filesystems)?;
        let partitions = dicom::partitions(&self.dicom, &self.partitions, &self.devices)?;
        Ok(Settings {
            db_url: self.db_url(),
            min_free_bytes: storage::min_free_bytes(self.min_free_space_mb),
            max_instance_bytes: self.dicom.max_instance_size_mb.saturating_mul(1 << 20),
            max_header_bytes: self.dicom.max_header_size_mb.saturating_mul(1 << 20),
            max_echoed_unknown_keys: self.dicom.max_echoed_unknown_keys,
            bind: self.dicom.bind.clone(),
            check_called_ae: self.dicom.check_called_ae,
            max_associations: self.dicom.max_associations,
            max_pending_associations: self.dicom.max_pending_associations,
            max_pending_per_address: self.dicom.max_pending_per_address,
            max_registered_devices: self.dicom.max_registered_devices,
            max_pdu_length: self.dicom.max_pdu_length,
            artim_timeout: Duration::from_secs(self.dicom.artim_timeout_secs),
            idle_timeout: Duration::from_secs(self.dicom.idle_timeout_secs),
            private_sop_classes: self.dicom.private_sop_classes.clone(),
            filesystems,
            filesystem_refresh: storage::filesystem_refresh(self.filesystem_refresh_secs)?,
            migration_batch: self.migration_batch.max(1),
            partitions,
            workqueue: self.workqueue.validate()?,
            node: self.node.validate()?,
            http: self.http.validate()?,
            audit: self.audit.validate(&self.data_dir, &self.dicom.ae_title)?,
            users: std::sync::Arc::new(Users::validate(&self.users)?),
            archive: self.archive.validate()?,
            services: self.services.validate(),
        })
    }
}

/// Asserts that validating `text` fails on `setting`, for a reason that
/// contains `reason`.
#[cfg(test)]
fn assert_refused(text: &str, setting: &str, reason: &str) {
    match Config::from_toml(text).unwrap().validate() {
        Err(ConfigError::Invalid {
            setting: refused,
            reason: why,
        }) => {
            assert_eq!(refused, setting, "{text}");
            assert!(why.contains(reason), "{text}: {why}");
        }
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
