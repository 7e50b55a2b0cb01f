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
}

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

    /// `url` with these settings added as query parameters (PostgreSQL
    /// URLs only).
    fn apply_to(&self, url: String) -> String {
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return url;
        }
        let mut url = url;
        let settings = [
            ("pool_size", self.pool_size.map(u64::from)),
            ("query_pool_size", self.query_pool_size.map(u64::from)),
            ("connect_timeout_secs", self.connect_timeout_secs),
            ("statement_timeout_secs", self.statement_timeout_secs),
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
            "#,
        )
        .unwrap();
        assert_eq!(
            config.validate().unwrap().db_url,
            "postgres://pacs@db.example:5432/index?pool_size=4&connect_timeout_secs=3"
        );
        let sqlite =
            Config::from_toml("db = \"sqlite:/x/index.db\"\n[database]\npool_size = 2").unwrap();
        assert_eq!(sqlite.db_url(), "sqlite:/x/index.db");
    }
}
