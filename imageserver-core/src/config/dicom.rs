//! `[dicom]`, `[[partitions]]` and `[[devices]]`: the acceptor, the
//! partitions (virtual servers) it answers as, and the remote AEs each
//! partition knows.

use std::path::PathBuf;

use serde::Deserialize;

use super::ConfigError;
use crate::model::{AeTitle, DeviceSpec, DuplicatePolicy, FolderName, PartitionSpec, Uid};
use crate::services::IngestLimits;

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
    /// Most connections per listener that have not yet sent their whole
    /// A-ASSOCIATE-RQ; more are closed at once.
    pub max_pending_associations: usize,
    /// Most such connections from one remote address (0: no limit; behind
    /// a load balancer every connection comes from its address).
    pub max_pending_per_address: usize,
    /// The largest PDU we accept, in bytes (4096 to 16777216).
    pub max_pdu_length: u32,
    /// Seconds a caller has to send its association request (ARTIM).
    pub artim_timeout_secs: u64,
    /// Seconds an association may stay silent, and the longest one PDU may
    /// take to arrive, before it is aborted.
    pub idle_timeout_secs: u64,
    /// Private storage SOP Class UIDs accepted besides the standard ones.
    pub private_sop_classes: Vec<String>,
    /// PN keys match case-insensitively in C-FIND (PS3.4 leaves it to us).
    pub pn_case_insensitive: bool,
    /// A C-FIND with more matches than this fails with A700 (out of resources).
    pub max_query_results: u64,
    /// Accept (and register) callers that are not known devices; otherwise
    /// they get A-ASSOCIATE-RJ (calling AE title not recognised).
    pub accept_unknown_devices: bool,
    /// Unknown callers may query (C-FIND) and retrieve (C-MOVE, C-GET) as
    /// well as store; by default they may only store (0124 otherwise).
    pub unknown_devices_query_retrieve: bool,
    /// A known device with a host is accepted only from that host's
    /// addresses (the name resolved at start and every 5 minutes); any
    /// other caller using its AE title gets A-ASSOCIATE-RJ.
    pub check_device_hosts: bool,
    /// Unknown callers are registered only while their partition holds
    /// fewer devices than this (beyond it they are admitted, not recorded).
    pub max_registered_devices: u64,
    /// `send_success`, `reject`, `compare` or `accept_latest`.
    pub duplicate_policy: String,
    /// The largest instance (stored file) accepted, in MiB; a larger one
    /// fails with A700 as soon as it crosses the limit.
    pub max_instance_size_mb: u64,
    /// Most MiB of a data set before Pixel Data (all of it when it has
    /// none): what the header parse holds in memory. Beyond it a store
    /// fails with C000.
    pub max_header_size_mb: u64,
    /// Most keys of a C-FIND identifier that the index does not know
    /// returned (zero-length) in each response; the rest are left out, and
    /// pendings are FF01 either way.
    pub max_echoed_unknown_keys: usize,
    /// `[dicom.tls]`: the default partition's TLS listener.
    pub tls: Option<TlsConfig>,
    /// Callers must identify themselves (User Identity negotiation,
    /// username and passcode checked against `[[users]]`); without it an
    /// identity sent is still checked.
    pub require_user_identity: bool,
}

/// `[dicom.tls]` (or a partition's `tls`): a TLS listener (PS3.15 B.1/B.9,
/// TLS 1.2 and 1.3) beside the plain one, or instead of it.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Its port (2762 by convention).
    #[serde(default = "default_tls_port")]
    pub port: u16,
    /// The server certificate chain, PEM, leaf first.
    pub certificate: PathBuf,
    /// Its private key, PEM.
    pub private_key: PathBuf,
    /// CA bundle (PEM) a client certificate must chain to: set, every
    /// caller must present one (mutual authentication).
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    /// No plain listener for the partition: TLS only.
    #[serde(default)]
    pub tls_only: bool,
}

fn default_tls_port() -> u16 {
    2762
}

/// A partition's validated TLS listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsListener {
    /// Its port.
    pub port: u16,
    /// Its PEM files (loaded when the server starts, reloaded on change).
    pub files: crate::tls::ServerFiles,
    /// The partition has no plain listener.
    pub tls_only: bool,
}

/// A further partition: its own AE title, port, folder, devices and policies.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PartitionConfig {
    /// Its AE title.
    pub ae_title: String,
    /// Its port.
    pub port: u16,
    /// Its folder under each filesystem (default: the AE title).
    #[serde(default)]
    pub folder: Option<String>,
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// Accept (and register) callers that are not known devices.
    #[serde(default = "default_accept_unknown_devices")]
    pub accept_unknown_devices: bool,
    /// Unknown callers may query and retrieve as well as store.
    #[serde(default)]
    pub unknown_devices_query_retrieve: bool,
    /// Known devices with a host are accepted only from it.
    #[serde(default = "yes")]
    pub check_device_hosts: bool,
    /// `send_success`, `reject`, `compare` or `accept_latest`.
    #[serde(default = "default_duplicate_policy")]
    pub duplicate_policy: String,
    /// PN keys match case-insensitively.
    #[serde(default = "default_pn_case_insensitive")]
    pub pn_case_insensitive: bool,
    /// C-FIND result cap.
    #[serde(default = "default_max_query_results")]
    pub max_query_results: u64,
    /// Its TLS listener.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Callers must send a User Identity (checked against `[[users]]`).
    #[serde(default)]
    pub require_user_identity: bool,
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
    /// May replace a stored instance under the `accept_latest` duplicate
    /// policy (default: no; without it the caller's duplicates are
    /// acknowledged and dropped, as under `send_success`).
    #[serde(default)]
    pub allow_replace: bool,
    /// Most associations it may hold open at once (0: no limit).
    #[serde(default)]
    pub max_associations: u32,
    /// Associations to it (C-MOVE sub-operations, auto-route, study
    /// send) use TLS, its certificate verified against `tls_ca_file`.
    #[serde(default)]
    pub tls: bool,
    /// CA bundle (PEM) its certificate must chain to (required with
    /// `tls`).
    #[serde(default)]
    pub tls_ca_file: Option<PathBuf>,
    /// Most associations all processes sharing the index open to it at once for sends
    /// (auto-route, study send; 0: no limit).
    #[serde(default)]
    pub max_outgoing_associations: u32,
    /// The AE title of the partition it belongs to (default: the `[dicom]` one).
    #[serde(default)]
    pub partition: Option<String>,
}

impl DeviceConfig {
    /// A device of the default partition with every permission but
    /// replace, from `AE=HOST:PORT` (what `--device` takes).
    pub fn from_flag(text: &str) -> Result<DeviceConfig, ConfigError> {
        let bad = || ConfigError::invalid("--device", format!("{text:?}: expected AE=HOST:PORT"));
        let (ae_title, address) = text.split_once('=').ok_or_else(bad)?;
        let (host, port) = address.rsplit_once(':').ok_or_else(bad)?;
        Ok(DeviceConfig {
            ae_title: ae_title.to_string(),
            host: host.to_string(),
            port: port.parse().map_err(|_| bad())?,
            allow_store: true,
            allow_query: true,
            allow_retrieve: true,
            allow_replace: false,
            max_associations: 0,
            max_outgoing_associations: 0,
            partition: None,
            tls: false,
            tls_ca_file: None,
        })
    }
}

/// One partition's validated settings.
#[derive(Debug, Clone)]
pub struct PartitionSettings {
    /// Identity and policies.
    pub spec: PartitionSpec,
    /// C-FIND result cap.
    pub max_query_results: u64,
    /// Unknown callers may query and retrieve as well as store.
    pub unknown_devices_query_retrieve: bool,
    /// Known devices with a host are accepted only from it.
    pub check_device_hosts: bool,
    /// Its known devices.
    pub devices: Vec<DeviceSpec>,
    /// Its TLS listener.
    pub tls: Option<TlsListener>,
    /// Callers must send a User Identity.
    pub require_user_identity: bool,
    /// Devices reached over TLS: AE title → CA bundle.
    pub device_tls: Vec<(String, PathBuf)>,
}

// The partition policies' defaults, for `[dicom]` and `[[partitions]]` alike.
fn default_accept_unknown_devices() -> bool {
    true
}
fn default_pn_case_insensitive() -> bool {
    true
}
fn default_duplicate_policy() -> String {
    DuplicatePolicy::default().as_str().to_string()
}
fn default_max_query_results() -> u64 {
    10_000
}
fn yes() -> bool {
    true
}

impl Default for DicomConfig {
    fn default() -> DicomConfig {
        DicomConfig {
            ae_title: "IMAGESERVER".into(),
            bind: "0.0.0.0".into(),
            port: 11112,
            check_called_ae: true,
            max_associations: 64,
            max_pending_associations: 256,
            max_pending_per_address: 32,
            max_pdu_length: 256 * 1024,
            artim_timeout_secs: 30,
            idle_timeout_secs: 300,
            private_sop_classes: Vec::new(),
            pn_case_insensitive: default_pn_case_insensitive(),
            max_query_results: default_max_query_results(),
            accept_unknown_devices: default_accept_unknown_devices(),
            unknown_devices_query_retrieve: false,
            check_device_hosts: true,
            max_registered_devices: 1_000,
            duplicate_policy: default_duplicate_policy(),
            max_instance_size_mb: IngestLimits::default().max_instance_bytes >> 20,
            max_header_size_mb: IngestLimits::default().max_header_bytes >> 20,
            max_echoed_unknown_keys: 64,
            tls: None,
            require_user_identity: false,
        }
    }
}

impl DicomConfig {
    /// Checks the acceptor's limits and private SOP classes (its partition
    /// keys are checked by [`partitions`]).
    pub(super) fn validate_acceptor(&self) -> Result<(), ConfigError> {
        if !(4096..=16 * 1024 * 1024).contains(&self.max_pdu_length) {
            return Err(ConfigError::invalid(
                "dicom.max_pdu_length",
                "must be between 4096 and 16777216",
            ));
        }
        if self.max_associations == 0 {
            return Err(ConfigError::invalid(
                "dicom.max_associations",
                "must be at least 1",
            ));
        }
        if self.max_pending_associations == 0 {
            return Err(ConfigError::invalid(
                "dicom.max_pending_associations",
                "must be at least 1",
            ));
        }
        if self.artim_timeout_secs == 0 || self.idle_timeout_secs == 0 {
            return Err(ConfigError::invalid(
                "dicom timeouts",
                "must be at least 1 second",
            ));
        }
        if self.max_instance_size_mb == 0 {
            return Err(ConfigError::invalid(
                "dicom.max_instance_size_mb",
                "must be at least 1",
            ));
        }
        if self.max_header_size_mb == 0 || self.max_header_size_mb > self.max_instance_size_mb {
            return Err(ConfigError::invalid(
                "dicom.max_header_size_mb",
                "must be at least 1 and at most max_instance_size_mb",
            ));
        }
        for uid in &self.private_sop_classes {
            Uid::parse(uid).map_err(|e| {
                ConfigError::invalid("dicom.private_sop_classes", format!("{uid:?}: {e}"))
            })?;
        }
        Ok(())
    }

    /// The default partition the `[dicom]` table describes.
    fn partition(&self) -> PartitionConfig {
        PartitionConfig {
            ae_title: self.ae_title.clone(),
            port: self.port,
            folder: None,
            description: "default partition".into(),
            accept_unknown_devices: self.accept_unknown_devices,
            unknown_devices_query_retrieve: self.unknown_devices_query_retrieve,
            check_device_hosts: self.check_device_hosts,
            duplicate_policy: self.duplicate_policy.clone(),
            pn_case_insensitive: self.pn_case_insensitive,
            max_query_results: self.max_query_results,
            tls: self.tls.clone(),
            require_user_identity: self.require_user_identity,
        }
    }
}

/// The checked partitions, `[dicom]`'s first, each holding its devices.
/// Partitions may share no AE title, port or folder; a device names an
/// existing partition or belongs to the default one.
pub(super) fn partitions(
    dicom: &DicomConfig,
    further: &[PartitionConfig],
    devices: &[DeviceConfig],
) -> Result<Vec<PartitionSettings>, ConfigError> {
    let mut partitions = vec![dicom.partition().validate("dicom")?];
    for partition in further {
        let validated = partition.validate("partitions")?;
        let clash = partitions.iter().find(|p| {
            p.spec.ae_title == validated.spec.ae_title
                || p.spec.port == validated.spec.port
                || p.spec
                    .folder
                    .as_str()
                    .eq_ignore_ascii_case(validated.spec.folder.as_str())
        });
        if let Some(other) = clash {
            return Err(ConfigError::invalid(
                "partitions",
                format!(
                    "{} shares its AE title, port or folder with {}",
                    validated.spec.ae_title, other.spec.ae_title
                ),
            ));
        }
        partitions.push(validated);
    }
    for device in devices {
        let spec = device.validate()?;
        let owner = match &device.partition {
            None => Some(&mut partitions[0]),
            Some(ae) => partitions
                .iter_mut()
                .find(|p| p.spec.ae_title.as_str() == ae.trim()),
        };
        let Some(owner) = owner else {
            return Err(ConfigError::invalid(
                "devices.partition",
                format!("no partition has AE title {ae:?}", ae = device.partition),
            ));
        };
        if device.tls {
            let Some(ca) = &device.tls_ca_file else {
                return Err(ConfigError::invalid(
                    "devices.tls_ca_file",
                    format!(
                        "{}: tls = true needs the CA bundle its certificate is verified against",
                        device.ae_title
                    ),
                ));
            };
            owner
                .device_tls
                .push((spec.ae_title.as_str().to_string(), ca.clone()));
        }
        owner.devices.push(spec);
    }
    Ok(partitions)
}

impl PartitionConfig {
    /// Checks one partition; `table` names it in errors (`dicom`, `partitions`).
    fn validate(&self, table: &str) -> Result<PartitionSettings, ConfigError> {
        let invalid =
            |reason: String| ConfigError::invalid(format!("{table}.{}", self.ae_title), reason);
        let ae_title = AeTitle::parse(&self.ae_title).map_err(|e| invalid(e.to_string()))?;
        let folder_name = self
            .folder
            .clone()
            .unwrap_or_else(|| ae_title.as_str().to_string());
        let folder = FolderName::parse(&folder_name)
            .map_err(|e| invalid(format!("not usable as a folder: {e}")))?;
        let duplicate_policy = DuplicatePolicy::parse(&self.duplicate_policy).ok_or_else(|| {
            invalid(format!(
                "duplicate_policy {:?}: expected send_success, reject, compare or accept_latest",
                self.duplicate_policy
            ))
        })?;
        let tls = match &self.tls {
            None => None,
            Some(tls) => {
                if tls.port == self.port && !tls.tls_only {
                    return Err(invalid(
                        "tls.port: the TLS listener needs a port of its own".into(),
                    ));
                }
                Some(TlsListener {
                    port: tls.port,
                    files: crate::tls::ServerFiles {
                        certificate: tls.certificate.clone(),
                        private_key: tls.private_key.clone(),
                        client_ca: tls.client_ca.clone(),
                    },
                    tls_only: tls.tls_only,
                })
            }
        };
        Ok(PartitionSettings {
            spec: PartitionSpec {
                ae_title,
                folder,
                description: self.description.clone(),
                port: self.port,
                accept_unknown_devices: self.accept_unknown_devices,
                duplicate_policy,
                pn_case_insensitive: self.pn_case_insensitive,
            },
            max_query_results: self.max_query_results,
            unknown_devices_query_retrieve: self.unknown_devices_query_retrieve,
            check_device_hosts: self.check_device_hosts,
            devices: Vec::new(),
            tls,
            require_user_identity: self.require_user_identity,
            device_tls: Vec::new(),
        })
    }
}

impl DeviceConfig {
    fn validate(&self) -> Result<DeviceSpec, ConfigError> {
        Ok(DeviceSpec {
            ae_title: AeTitle::parse(&self.ae_title)
                .map_err(|e| ConfigError::invalid("devices.ae_title", e.to_string()))?,
            host: self.host.clone(),
            port: self.port,
            allow_store: self.allow_store,
            allow_query: self.allow_query,
            allow_retrieve: self.allow_retrieve,
            allow_replace: self.allow_replace,
            max_associations: self.max_associations,
            max_outgoing_associations: self.max_outgoing_associations,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::PartitionSettings;
    use crate::config::{assert_refused, Config};
    use crate::model::DuplicatePolicy;

    #[test]
    fn partitions_and_their_devices() {
        let config = Config::from_toml(
            r#"
            [dicom]
            ae_title = "MAIN"
            port = 11112
            [[partitions]]
            ae_title = "RESEARCH"
            port = 11113
            duplicate_policy = "reject"
            accept_unknown_devices = false
            [[devices]]
            ae_title = "CT1"
            host = "127.0.0.1"
            port = 104
            partition = "RESEARCH"
            max_associations = 2
            "#,
        )
        .unwrap();
        let settings = config.validate().unwrap();
        assert_eq!(settings.partitions.len(), 2);
        let research = &settings.partitions[1];
        assert_eq!(research.spec.duplicate_policy, DuplicatePolicy::Reject);
        assert!(!research.spec.accept_unknown_devices);
        assert_eq!(research.devices[0].max_associations, 2);
        assert!(settings.partitions[0].devices.is_empty());
        let mut clash = config;
        clash.partitions[0].port = 11112;
        assert!(clash.validate().is_err());
    }

    #[test]
    fn partitions_default_as_the_dicom_table_does() {
        let settings = Config::from_toml(
            "[[partitions]]\nae_title = \"RESEARCH\"\nport = 11113\n\
             [[devices]]\nae_title = \"CT1\"\nhost = \"ct\"\nport = 104",
        )
        .unwrap()
        .validate()
        .unwrap();
        let (main, research) = (&settings.partitions[0], &settings.partitions[1]);
        assert_eq!(research.spec.folder.as_str(), "RESEARCH");
        let policies = |p: &PartitionSettings| {
            let spec = &p.spec;
            let flags = (spec.accept_unknown_devices, spec.pn_case_insensitive);
            (flags, spec.duplicate_policy, p.max_query_results)
        };
        assert_eq!(policies(research), policies(main));
        assert_eq!(
            policies(main),
            ((true, true), DuplicatePolicy::SendSuccess, 10_000)
        );
        let ct = &main.devices[0];
        assert!(ct.allow_store && ct.allow_query && ct.allow_retrieve);
        assert!(!ct.allow_replace, "replacing is granted, never assumed");
        assert_eq!((ct.max_associations, ct.max_outgoing_associations), (0, 0));
    }

    #[test]
    fn acceptor_limits_and_device_owners_are_refused_by_name() {
        let device = "[[devices]]\nae_title = \"CT1\"\nhost = \"ct\"\nport = 104\n";
        let cases = [
            (
                "[dicom]\nmax_pdu_length = 100",
                "dicom.max_pdu_length",
                "4096 and 16777216",
            ),
            (
                "[dicom]\nmax_associations = 0",
                "dicom.max_associations",
                "at least 1",
            ),
            (
                "[dicom]\nmax_instance_size_mb = 0",
                "dicom.max_instance_size_mb",
                "at least 1",
            ),
            (
                "[dicom]\nmax_instance_size_mb = 10\nmax_header_size_mb = 11",
                "dicom.max_header_size_mb",
                "at most max_instance_size_mb",
            ),
            (
                "[dicom]\nidle_timeout_secs = 0",
                "dicom timeouts",
                "at least 1 second",
            ),
            (
                "[dicom]\nprivate_sop_classes = [\"1..\"]",
                "dicom.private_sop_classes",
                "\"1..\"",
            ),
            (
                "[dicom]\nduplicate_policy = \"keep\"",
                "dicom.IMAGESERVER",
                "expected send_success",
            ),
            (
                &format!("{device}partition = \"NO\""),
                "devices.partition",
                "AE title Some(\"NO\")",
            ),
        ];
        for (text, setting, reason) in cases {
            assert_refused(text, setting, reason);
        }
    }
}
