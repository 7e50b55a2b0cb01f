//! `[http]`: the HTTP server (DICOMweb under `/dicom-web`, metrics at
//! `/metrics`), on a port of its own beside the DICOM listeners.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

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
    /// The people who may use the admin API and pages (`[[http.users]]`).
    /// None: the admin API and pages answer only callers on loopback.
    pub users: Vec<HttpUserConfig>,
    /// A header a reverse proxy sets to the authenticated user's name
    /// (e.g. `X-Remote-User`), honoured only from `trusted_proxies`.
    pub trusted_user_header: Option<String>,
    /// The proxies' addresses whose `trusted_user_header` is believed.
    pub trusted_proxies: Vec<String>,
    /// The key sessions are signed with (at least 32 characters). Unset: a
    /// random one at each start (sessions end with the process; a cluster
    /// behind one balancer needs the same secret on every node).
    pub session_secret: Option<String>,
    /// How long a session lasts, in hours (default 12).
    pub session_hours: u64,
    /// Who may read through DICOMweb: `open-on-loopback` (the default:
    /// callers on loopback without logging in, others authenticated),
    /// `authenticated` or `open`.
    pub dicomweb_auth: String,
    /// Mark the session cookie `Secure` (default false: it is also marked
    /// when a trusted proxy says `X-Forwarded-Proto: https`). Set it when
    /// browsers reach the server only through HTTPS.
    pub secure_cookies: bool,
    /// A prebuilt OHIF viewer (`@ohif/app`'s `dist/` folder) to serve at
    /// `/viewer/`, with an `app-config.js` of ours pointing it at
    /// `/dicom-web`. Unset (the default): no `/viewer`.
    pub viewer_dir: Option<PathBuf>,
}

/// One `[[http.users]]` entry.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HttpUserConfig {
    /// The login name (letters, digits, `.`, `_`, `-`, `@`).
    pub name: String,
    /// Its argon2 password hash (PHC string; `imageserver user
    /// hash-password` writes one). Absent: the user can only come through
    /// the trusted proxy header.
    #[serde(default)]
    pub password_hash: Option<String>,
    /// `admin` or `read_only` (the default).
    #[serde(default = "read_only")]
    pub role: String,
}

fn read_only() -> String {
    "read_only".to_string()
}

/// What a user may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Read and change.
    Admin,
    /// Read only.
    ReadOnly,
}

impl Role {
    /// Its configuration word.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::ReadOnly => "read_only",
        }
    }
}

/// A validated user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// The login name.
    pub name: String,
    /// The argon2 PHC string, if the user may log in with a password.
    pub password_hash: Option<String>,
    /// What the user may do.
    pub role: Role,
}

/// Who may read through DICOMweb.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DicomWebAuth {
    /// Callers on loopback freely, others once authenticated.
    OpenOnLoopback,
    /// Authenticated callers only.
    Authenticated,
    /// Anyone who reaches the port.
    Open,
}

impl Default for HttpConfig {
    fn default() -> HttpConfig {
        HttpConfig {
            enabled: false,
            port: DEFAULT_HTTP_PORT,
            bind: DEFAULT_HTTP_BIND.to_string(),
            cors_origins: Vec::new(),
            max_upload_mb: DEFAULT_MAX_UPLOAD_MB,
            users: Vec::new(),
            trusted_user_header: None,
            trusted_proxies: Vec::new(),
            session_secret: None,
            session_hours: 12,
            dicomweb_auth: "open-on-loopback".to_string(),
            secure_cookies: false,
            viewer_dir: None,
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
    /// The users of the admin API and pages (empty: loopback only).
    pub users: Vec<User>,
    /// The reverse proxy's user header (lower case), if any.
    pub trusted_user_header: Option<String>,
    /// The proxies it is believed from.
    pub trusted_proxies: Vec<IpAddr>,
    /// The session signing key, if configured.
    pub session_secret: Option<String>,
    /// How long a session lasts.
    pub session_lifetime: std::time::Duration,
    /// Who may read through DICOMweb.
    pub dicomweb_auth: DicomWebAuth,
    /// Session cookies are always `Secure`.
    pub secure_cookies: bool,
    /// The OHIF viewer's `dist/` served at `/viewer/`, if any.
    pub viewer_dir: Option<PathBuf>,
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
        let mut users: Vec<User> = Vec::new();
        for user in &self.users {
            let name = user.name.trim();
            if name.is_empty()
                || name.len() > 64
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-@".contains(c))
            {
                return Err(ConfigError::invalid(
                    "http.users.name",
                    format!("{name:?}: 1 to 64 letters, digits, '.', '_', '-' or '@'"),
                ));
            }
            if users.iter().any(|u| u.name == name) {
                return Err(ConfigError::invalid(
                    "http.users.name",
                    format!("{name:?} is listed twice"),
                ));
            }
            let role = match user.role.as_str() {
                "admin" => Role::Admin,
                "read_only" => Role::ReadOnly,
                other => {
                    return Err(ConfigError::invalid(
                        "http.users.role",
                        format!("{other:?}: expected \"admin\" or \"read_only\""),
                    ))
                }
            };
            if let Some(hash) = &user.password_hash {
                if !hash.starts_with("$argon2") {
                    return Err(ConfigError::invalid(
                        "http.users.password_hash",
                        format!(
                            "the hash of {name:?} is not an argon2 PHC string \
                             (`imageserver user hash-password` writes one)"
                        ),
                    ));
                }
            }
            users.push(User {
                name: name.to_string(),
                password_hash: user.password_hash.clone(),
                role,
            });
        }
        let mut trusted_proxies = Vec::new();
        for proxy in &self.trusted_proxies {
            trusted_proxies.push(proxy.trim().parse::<IpAddr>().map_err(|_| {
                ConfigError::invalid(
                    "http.trusted_proxies",
                    format!("{proxy:?} is not an IP address"),
                )
            })?);
        }
        let trusted_user_header =
            match &self.trusted_user_header {
                Some(h)
                    if h.trim().is_empty()
                        || !h
                            .trim()
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '-') =>
                {
                    return Err(ConfigError::invalid(
                        "http.trusted_user_header",
                        format!("{h:?} is not a header name"),
                    ))
                }
                Some(_) if trusted_proxies.is_empty() => return Err(ConfigError::invalid(
                    "http.trusted_proxies",
                    "trusted_user_header needs the proxies' addresses, or anyone could name a user",
                )),
                Some(h) => Some(h.trim().to_ascii_lowercase()),
                None => None,
            };
        if let Some(secret) = &self.session_secret {
            if secret.len() < 32 {
                return Err(ConfigError::invalid(
                    "http.session_secret",
                    "must be at least 32 characters",
                ));
            }
        }
        if self.session_hours == 0 || self.session_hours > 24 * 30 {
            return Err(ConfigError::invalid(
                "http.session_hours",
                "must be 1 to 720",
            ));
        }
        let dicomweb_auth = match self.dicomweb_auth.as_str() {
            "open-on-loopback" => DicomWebAuth::OpenOnLoopback,
            "authenticated" => DicomWebAuth::Authenticated,
            "open" => DicomWebAuth::Open,
            other => {
                return Err(ConfigError::invalid(
                    "http.dicomweb_auth",
                    format!(
                        "{other:?}: expected \"open-on-loopback\", \"authenticated\" or \"open\""
                    ),
                ))
            }
        };
        if let Some(dir) = &self.viewer_dir {
            if !dir.join("index.html").is_file() {
                return Err(ConfigError::invalid(
                    "http.viewer_dir",
                    format!(
                        "{} holds no index.html (expected a prebuilt OHIF dist/ folder)",
                        dir.display()
                    ),
                ));
            }
        }
        Ok(HttpSettings {
            secure_cookies: self.secure_cookies,
            viewer_dir: self.viewer_dir.clone(),
            users,
            trusted_user_header,
            trusted_proxies,
            session_secret: self.session_secret.clone(),
            session_lifetime: std::time::Duration::from_secs(self.session_hours * 3600),
            dicomweb_auth,
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
            "[http]\ntrusted_user_header = \"X-Remote-User\"",
            "http.trusted_proxies",
            "proxies",
        );
        assert_refused(
            "[[http.users]]\nname = \"a b\"\npassword_hash = \"$argon2id$x\"",
            "http.users.name",
            "letters",
        );
        assert_refused(
            "[[http.users]]\nname = \"ann\"\npassword_hash = \"secret\"",
            "http.users.password_hash",
            "argon2",
        );
        assert_refused(
            "[[http.users]]\nname = \"ann\"\nrole = \"root\"",
            "http.users.role",
            "admin",
        );
        assert_refused(
            "[http]\ndicomweb_auth = \"maybe\"",
            "http.dicomweb_auth",
            "open-on-loopback",
        );
        assert_refused(
            "[http]\nviewer_dir = \"/nonexistent/dist\"",
            "http.viewer_dir",
            "index.html",
        );
        assert_refused(
            "[http]\nmax_upload_mb = 0",
            "http.max_upload_mb",
            "at least 1",
        );
    }
}
