//! `[database]` and the index URL: which database holds the index, and the
//! connection settings a PostgreSQL index is opened with.

use std::path::Path;

use serde::Deserialize;

/// `[database]`: connection settings of a PostgreSQL index (ignored for
/// SQLite). They travel as query parameters of the index URL, which
/// `db::postgres` reads; parameters already in `db` win.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    /// Most connections open at once for ingest, work and study
    /// operations (default 8).
    pub pool_size: Option<u32>,
    /// Most connections open at once for queries, a pool of their own
    /// (default 4).
    pub query_pool_size: Option<u32>,
    /// Seconds a call waits for a connection before it fails (default 5).
    pub connect_timeout_secs: Option<u64>,
    /// PostgreSQL `statement_timeout` in seconds, 0 for none (default 60).
    pub statement_timeout_secs: Option<u64>,
    /// TLS to the database server, as libpq names it: `disable`, `prefer`
    /// (the default: TLS when the server offers it, unverified),
    /// `require` (TLS, unverified), `verify-ca` (TLS, the server's
    /// certificate signed by `sslrootcert`) or `verify-full` (and issued
    /// for the host the URL names). A site whose index crosses a network
    /// uses `verify-full`.
    pub sslmode: Option<String>,
    /// PEM file of the certificate authorities the server's certificate
    /// is checked against (`verify-ca`, `verify-full`).
    pub sslrootcert: Option<String>,
    /// PEM file of this client's certificate, for a server that
    /// authenticates clients by certificate (`clientcert` in
    /// `pg_hba.conf`); with `sslkey`.
    pub sslcert: Option<String>,
    /// PEM file of the private key of `sslcert`.
    pub sslkey: Option<String>,
    /// A tablespace (created beforehand by the administrator) for the
    /// work-queue tables, the ones updated most; at start the server moves
    /// them there. For the large deployment's separate volumes.
    pub work_queue_tablespace: Option<String>,
    /// A tablespace for every index of the schema, moved there at start.
    pub index_tablespace: Option<String>,
}

/// The values `[database] sslmode` takes.
pub const SSL_MODES: [&str; 6] = [
    "disable",
    "allow",
    "prefer",
    "require",
    "verify-ca",
    "verify-full",
];

impl DatabaseConfig {
    /// The index URL: `db` if set, else the SQLite file `index.db` in
    /// `data_dir`, with these settings added (PostgreSQL URLs only).
    pub(super) fn index_url(&self, data_dir: &Path, db: Option<&str>) -> String {
        let url = db.map_or_else(
            || format!("sqlite:{}", data_dir.join("index.db").display()),
            str::to_string,
        );
        self.apply_to(url)
    }

    /// Refuses an `sslmode` libpq does not know, and a client certificate
    /// without its key (or the reverse).
    pub(super) fn validate(&self) -> Result<(), super::ConfigError> {
        let invalid = |setting: &str, reason: String| super::ConfigError::Invalid {
            setting: setting.to_string(),
            reason,
        };
        if let Some(mode) = &self.sslmode {
            if !SSL_MODES.contains(&mode.as_str()) {
                return Err(invalid(
                    "database.sslmode",
                    format!("{mode:?} is not one of {}", SSL_MODES.join(", ")),
                ));
            }
        }
        for (setting, name) in [
            (
                "database.work_queue_tablespace",
                &self.work_queue_tablespace,
            ),
            ("database.index_tablespace", &self.index_tablespace),
        ] {
            let plain = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_';
            if let Some(name) = name {
                if name.is_empty()
                    || name.len() > 63
                    || name.starts_with(|c: char| c.is_ascii_digit())
                    || !name.chars().all(plain)
                {
                    return Err(invalid(
                        setting,
                        format!(
                            "{name:?} is not a plain PostgreSQL identifier \
                             (lower-case letters, digits and _, at most 63)"
                        ),
                    ));
                }
            }
        }
        if self.sslcert.is_some() != self.sslkey.is_some() {
            return Err(invalid(
                "database.sslcert",
                "a client certificate needs its key (sslkey), and a key its certificate".into(),
            ));
        }
        Ok(())
    }

    /// `url` with these settings added as query parameters (PostgreSQL
    /// URLs only).
    fn apply_to(&self, url: String) -> String {
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return url;
        }
        let mut url = url;
        let number = |value: Option<u64>| value.map(|n| n.to_string());
        let settings = [
            ("pool_size", number(self.pool_size.map(u64::from))),
            (
                "query_pool_size",
                number(self.query_pool_size.map(u64::from)),
            ),
            ("connect_timeout_secs", number(self.connect_timeout_secs)),
            (
                "statement_timeout_secs",
                number(self.statement_timeout_secs),
            ),
            ("sslmode", self.sslmode.clone()),
            ("sslrootcert", self.sslrootcert.as_deref().map(url_escape)),
            ("sslcert", self.sslcert.as_deref().map(url_escape)),
            ("sslkey", self.sslkey.as_deref().map(url_escape)),
            ("work_tablespace", self.work_queue_tablespace.clone()),
            ("index_tablespace", self.index_tablespace.clone()),
        ];
        for (key, value) in settings {
            let Some(value) = value else { continue };
            let present = url.split_once('?').is_some_and(|(_, query)| {
                query.split('&').any(|p| p.split('=').next() == Some(key))
            });
            if !present {
                url.push(if url.contains('?') { '&' } else { '?' });
                url.push_str(&format!("{key}={value}"));
            }
        }
        url
    }
}

/// `value` percent-encoded for a URL's query (file paths may hold spaces,
/// `&` or `%`).
fn url_escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                out.push(byte as char)
            }
            other => out.push_str(&format!("%{other:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    #[test]
    fn database_settings_travel_in_the_postgres_url() {
        let config = Config::from_toml(
            r#"
            db = "postgres://pacs@db.example:5432/index?pool_size=4"
            [database]
            pool_size = 16
            connect_timeout_secs = 3
            work_queue_tablespace = "queue_ssd"
            index_tablespace = "index_ssd"
            "#,
        )
        .unwrap();
        assert_eq!(
            config.validate().unwrap().db_url,
            "postgres://pacs@db.example:5432/index?pool_size=4&connect_timeout_secs=3\
             &work_tablespace=queue_ssd&index_tablespace=index_ssd"
        );
        let sqlite =
            Config::from_toml("db = \"sqlite:/x/index.db\"\n[database]\npool_size = 2").unwrap();
        assert_eq!(sqlite.db_url(), "sqlite:/x/index.db");
    }

    #[test]
    fn tls_settings_travel_in_the_url_and_are_checked() {
        let config = Config::from_toml(
            r#"
            db = "postgres://pacs@db.example/index"
            [database]
            sslmode = "verify-full"
            sslrootcert = "/etc/pki/site CA&1.pem"
            "#,
        )
        .unwrap();
        assert_eq!(
            config.validate().unwrap().db_url,
            "postgres://pacs@db.example/index?sslmode=verify-full&sslrootcert=/etc/pki/site%20CA%261.pem"
        );
        crate::config::assert_refused(
            "db = \"postgres://x/y\"\n[database]\nsslmode = \"verify\"",
            "database.sslmode",
            "is not one of",
        );
        crate::config::assert_refused(
            "[database]\nindex_tablespace = \"Fast SSD\"",
            "database.index_tablespace",
            "not a plain PostgreSQL identifier",
        );
        crate::config::assert_refused(
            "[database]\nsslcert = \"/c.pem\"",
            "database.sslcert",
            "needs its key",
        );
    }
}
