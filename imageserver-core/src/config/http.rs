//! `[http]`: the HTTP server (DICOMweb under `/dicom-web`, metrics at
//! `/metrics`), on a port of its own beside the DICOM listeners.

use std::net::{IpAddr, SocketAddr};

use serde::Deserialize;

use super::ConfigError;

/// The HTTP port when none is configured.
pub const DEFAULT_HTTP_PORT: u16 = 8080;
/// The HTTP listen address when none is configured: loopback only.
pub const DEFAULT_HTTP_BIND: &str = "127.0.0.1";
/// Largest STOW-RS request body accepted, in MiB, by default.
pub const DEFAULT_MAX_UPLOAD_MB: u64 = 4096;

/// `[http]` as written in TOML.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Whether `serve` starts the HTTP server (default false: deployments
    /// and scripts that run several servers on one machine would all want
    /// port 8080; `serve --http-port` also enables it).
    pub enabled: bool,
    /// Its TCP port (default 8080; 0 picks a free one).
    pub port: u16,
    /// Its listen address (default 127.0.0.1).
    pub bind: String,
    /// Origins allowed to call it from a browser (CORS), e.g.
    /// `["https://viewer.example.org"]`; `["*"]` allows any; empty (the
    /// default) sends no CORS headers.
    pub cors_origins: Vec<String>,
    /// Largest STOW-RS request body, in MiB (default 4096).
    pub max_upload_mb: u64,
}

impl Default for HttpConfig {
    fn default() -> HttpConfig {
        HttpConfig {
            enabled: false,
            port: DEFAULT_HTTP_PORT,
            bind: DEFAULT_HTTP_BIND.to_string(),
            cors_origins: Vec::new(),
            max_upload_mb: DEFAULT_MAX_UPLOAD_MB,
        }
    }
}

/// `[http]` validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpSettings {
    /// Whether the HTTP server runs.
    pub enabled: bool,
    /// Where it listens.
    pub address: SocketAddr,
    /// Allowed CORS origins (`*` for any); empty: no CORS headers.
    pub cors_origins: Vec<String>,
    /// Largest STOW-RS request body in bytes.
    pub max_upload_bytes: u64,
}

impl HttpConfig {
    /// Checks the values.
    pub(super) fn validate(&self) -> Result<HttpSettings, ConfigError> {
        let ip: IpAddr = self.bind.trim().parse().map_err(|_| {
            ConfigError::invalid("http.bind", format!("{:?} is not an IP address", self.bind))
        })?;
        for origin in &self.cors_origins {
            let ok = origin == "*"
                || ((origin.starts_with("http://") || origin.starts_with("https://"))
                    && !origin.trim_end_matches('/').contains(['?', '#', ' ']));
            if !ok {
                return Err(ConfigError::invalid(
                    "http.cors_origins",
                    format!("{origin:?} is not an origin (scheme://host[:port]) or \"*\""),
                ));
            }
        }
        if self.max_upload_mb == 0 {
            return Err(ConfigError::invalid(
                "http.max_upload_mb",
                "must be at least 1",
            ));
        }
        Ok(HttpSettings {
            enabled: self.enabled,
            address: SocketAddr::new(ip, self.port),
            cors_origins: self
                .cors_origins
                .iter()
                .map(|o| o.trim_end_matches('/').to_string())
                .collect(),
            max_upload_bytes: self.max_upload_mb.saturating_mul(1 << 20),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::{assert_refused, Config};

    #[test]
    fn defaults_listen_on_loopback_8080_once_enabled() {
        let settings = Config::from_toml("").unwrap().validate().unwrap();
        assert!(!settings.http.enabled);
        assert_eq!(settings.http.address.to_string(), "127.0.0.1:8080");
        assert!(settings.http.cors_origins.is_empty());
    }

    #[test]
    fn http_values_are_checked() {
        let settings = Config::from_toml(
            "[http]\nport = 9000\nbind = \"127.0.0.2\"\ncors_origins = [\"http://localhost:3000/\"]",
        )
        .unwrap()
        .validate()
        .unwrap();
        assert_eq!(settings.http.address.to_string(), "127.0.0.2:9000");
        assert_eq!(settings.http.cors_origins, ["http://localhost:3000"]);
        assert_refused("[http]\nbind = \"localhost\"", "http.bind", "not an IP");
        assert_refused(
            "[http]\ncors_origins = [\"localhost\"]",
            "http.cors_origins",
            "not an origin",
        );
        assert_refused(
            "[http]\nmax_upload_mb = 0",
            "http.max_upload_mb",
            "at least 1",
        );
    }
}
