//! `[audit]`: the IHE ATNA audit trail (see `crate::audit`).

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::ConfigError;
use crate::audit::{AuditSettings, AuditSource, Repository, DEFAULT_QUEUE_CAPACITY};

/// `[audit]`: audit messages about stores, queries, retrieves, study
/// operations, refused associations and server start/stop.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AuditConfig {
    /// Record audit events (default false).
    pub enabled: bool,
    /// The audit record repository, `udp://host:port`, `tcp://host:port`
    /// or `tls://host:port` (syslog, RFC 5424; over TLS per RFC 5425).
    /// Unset: events are kept in the index only.
    pub repository: Option<String>,
    /// CA bundle (PEM) the `tls://` repository's certificate must chain
    /// to (its name is checked against the URL's host).
    pub tls_ca_file: Option<PathBuf>,
    /// Where messages wait until the repository takes them (default
    /// `<data_dir>/audit-spool`, beside the default SQLite index). Local to
    /// one host: processes recognise each other's leftovers by pid.
    pub spool_dir: Option<PathBuf>,
    /// AuditSourceID (default: the default partition's AE title).
    pub audit_source_id: Option<String>,
    /// AuditEnterpriseSiteID (default: none).
    pub enterprise_site_id: Option<String>,
    /// Events waiting for the audit thread before new ones are dropped
    /// (default 10000).
    pub queue_capacity: Option<usize>,
}

impl AuditConfig {
    /// The validated settings, None when disabled.
    pub(super) fn validate(
        &self,
        data_dir: &Path,
        default_ae: &str,
    ) -> Result<Option<AuditSettings>, ConfigError> {
        if !self.enabled {
            return Ok(None);
        }
        let repository = self
            .repository
            .as_deref()
            .map(Repository::parse)
            .transpose()
            .map_err(|e| ConfigError::invalid("audit.repository", e.to_string()))?;
        if matches!(repository, Some(Repository::Tls(_))) && self.tls_ca_file.is_none() {
            return Err(ConfigError::invalid(
                "audit.tls_ca_file",
                "a tls:// repository needs the CA bundle its certificate is verified against",
            ));
        }
        let queue_capacity = self.queue_capacity.unwrap_or(DEFAULT_QUEUE_CAPACITY);
        if queue_capacity == 0 {
            return Err(ConfigError::invalid(
                "audit.queue_capacity",
                "must be at least 1",
            ));
        }
        let source_id = self
            .audit_source_id
            .clone()
            .unwrap_or_else(|| default_ae.trim().to_string());
        if source_id.trim().is_empty() {
            return Err(ConfigError::invalid(
                "audit.audit_source_id",
                "must not be empty",
            ));
        }
        Ok(Some(AuditSettings {
            repository,
            tls_ca_file: self.tls_ca_file.clone(),
            spool_dir: self
                .spool_dir
                .clone()
                .unwrap_or_else(|| data_dir.join("audit-spool")),
            source: AuditSource {
                source_id,
                enterprise_site_id: self.enterprise_site_id.clone(),
            },
            queue_capacity,
        }))
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{assert_refused, Config};

    #[test]
    fn audit_is_off_by_default_and_validated_when_on() {
        let settings = Config::from_toml("").unwrap().validate().unwrap();
        assert!(settings.audit.is_none());
        let settings = Config::from_toml(
            "data_dir = \"/d\"\n[audit]\nenabled = true\nrepository = \"tcp://127.0.0.1:6514\"\n",
        )
        .unwrap()
        .validate()
        .unwrap();
        let audit = settings.audit.unwrap();
        assert_eq!(audit.spool_dir, std::path::PathBuf::from("/d/audit-spool"));
        assert_eq!(audit.source.source_id, "IMAGESERVER");
        assert_refused(
            "[audit]\nenabled = true\nrepository = \"ftp://a:1\"\n",
            "audit.repository",
            "udp://host:port",
        );
        assert_refused(
            "[audit]\nenabled = true\nrepository = \"tls://a:1\"\n",
            "audit.tls_ca_file",
            "CA bundle",
        );
    }
}
