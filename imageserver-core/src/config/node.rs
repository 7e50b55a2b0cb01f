//! `[node]`: this process as a node of a cluster (the large deployment):
//! its id, its heartbeat, how it drains. Validated into
//! [`crate::cluster::NodeSettings`], whose [`Default`] is where the
//! table's defaults come from.

use std::time::Duration;

use serde::Deserialize;

use super::ConfigError;
use crate::cluster::NodeSettings;
use crate::model::AeTitle;

/// `[node]`: every key defaulted; a single server needs none of them.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// The node id, unique in the cluster; default `HOST:ADDRESS:PORT` of
    /// the `[dicom]` listener.
    pub id: Option<String>,
    /// Seconds between heartbeats.
    pub heartbeat_secs: u64,
    /// A node whose heartbeat is this many seconds old is dead.
    pub dead_after_secs: u64,
    /// Draining (`imageserver nodes drain`, SIGTERM): seconds the balancer's
    /// health checks are refused while associations are still accepted.
    pub drain_grace_secs: u64,
    /// Draining: seconds associations and work items in flight may take to
    /// finish once the listener is closed; 0: cut idle associations off at
    /// once, as a plain shutdown does.
    pub drain_timeout_secs: u64,
    /// The calling AE title of the balancer's health check ("" for none).
    pub health_check_ae: String,
}

impl Default for NodeConfig {
    fn default() -> Self {
        let settings = NodeSettings::default();
        NodeConfig {
            id: settings.id,
            heartbeat_secs: settings.heartbeat.as_secs(),
            dead_after_secs: settings.dead_after.as_secs(),
            drain_grace_secs: settings.drain_grace.as_secs(),
            drain_timeout_secs: settings.drain_timeout.as_secs(),
            health_check_ae: settings.health_check_ae.unwrap_or_default(),
        }
    }
}

impl NodeConfig {
    /// Checks the values into [`NodeSettings`].
    pub(super) fn validate(&self) -> Result<NodeSettings, ConfigError> {
        if let Some(id) = &self.id {
            if id.trim().is_empty() || id.len() > 200 || id.chars().any(char::is_control) {
                return Err(ConfigError::invalid(
                    "node.id",
                    "must be 1 to 200 printable characters",
                ));
            }
        }
        if self.heartbeat_secs == 0 {
            return Err(ConfigError::invalid(
                "node.heartbeat_secs",
                "must be at least 1",
            ));
        }
        if self.dead_after_secs < 2 * self.heartbeat_secs {
            return Err(ConfigError::invalid(
                "node.dead_after_secs",
                "must be at least twice node.heartbeat_secs, or a slow beat kills a live node",
            ));
        }
        let health_check_ae = match self.health_check_ae.trim() {
            "" => None,
            ae => Some(
                AeTitle::parse(ae)
                    .map_err(|e| ConfigError::invalid("node.health_check_ae", e.to_string()))?
                    .as_str()
                    .to_string(),
            ),
        };
        Ok(NodeSettings {
            id: self.id.as_ref().map(|id| id.trim().to_string()),
            heartbeat: Duration::from_secs(self.heartbeat_secs),
            dead_after: Duration::from_secs(self.dead_after_secs),
            drain_grace: Duration::from_secs(self.drain_grace_secs),
            drain_timeout: Duration::from_secs(self.drain_timeout_secs),
            health_check_ae,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::{assert_refused, Config};
    use super::*;

    #[test]
    fn defaults_and_refusals() {
        let settings = Config::from_toml("").unwrap().validate().unwrap().node;
        assert_eq!(settings, NodeSettings::default());
        let settings = Config::from_toml(
            "[node]\nid = \"pacs-2\"\nheartbeat_secs = 1\ndead_after_secs = 3\ndrain_grace_secs = 2\nhealth_check_ae = \"\"",
        )
        .unwrap()
        .validate()
        .unwrap()
        .node;
        assert_eq!(settings.id.as_deref(), Some("pacs-2"));
        assert_eq!(settings.drain_grace, Duration::from_secs(2));
        assert_eq!(settings.health_check_ae, None);
        assert_refused("[node]\nid = \" \"", "node.id", "printable");
        assert_refused(
            "[node]\nheartbeat_secs = 0",
            "node.heartbeat_secs",
            "at least 1",
        );
        assert_refused(
            "[node]\nheartbeat_secs = 5\ndead_after_secs = 9",
            "node.dead_after_secs",
            "twice",
        );
        assert_refused(
            "[node]\nhealth_check_ae = \"A\\\\B\"",
            "node.health_check_ae",
            "",
        );
    }
}
