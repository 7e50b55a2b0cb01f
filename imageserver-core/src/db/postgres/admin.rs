//! Database administration for tests and try-outs: the URL of another
//! database on the same server, and creating and dropping databases. A
//! production database is created by its administrator.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection};

use super::{map_error, PgOptions};
use crate::db::Error;

/// The URL of database `name` on the server `url` points at (same user,
/// host, port and parameters).
pub fn database_url(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority_start = base.find("://").map_or(0, |at| at + 3);
    let path_start = base[authority_start..]
        .find('/')
        .map_or(base.len(), |at| authority_start + at);
    let mut out = format!("{}/{name}", &base[..path_start]);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    out
}

/// Creates the empty database `name` (ASCII letters, digits and `_`) on the
/// server `server_url` points at, connecting to the database that URL
/// names; returns the new database's URL. For tests and try-outs: a
/// production database is created by its administrator.
pub fn create_database(server_url: &str, name: &str) -> Result<String, Error> {
    admin(server_url, name, "creating a database", |name| {
        format!("CREATE DATABASE \"{name}\" TEMPLATE template0 ENCODING 'UTF8'")
    })?;
    Ok(database_url(server_url, name))
}

/// Drops database `name`, disconnecting its sessions (`WITH (FORCE)`).
pub fn drop_database(server_url: &str, name: &str) -> Result<(), Error> {
    admin(server_url, name, "dropping a database", |name| {
        format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)")
    })
}

/// Runs the one statement `statement(name)` makes, for the object `name`
/// (ASCII letters, digits and `_`), on the server `server_url` points at,
/// outside any transaction.
pub(super) fn admin(
    server_url: &str,
    name: &str,
    operation: &'static str,
    statement: impl FnOnce(&str) -> String,
) -> Result<(), Error> {
    if name.is_empty()
        || name.len() > 63
        || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        return Err(Error::Backend {
            operation,
            source: format!("database name {name:?}: use ASCII letters, digits and _").into(),
        });
    }
    let (url, _) = PgOptions::from_url(server_url)?;
    let sql = statement(name);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Backend {
            operation,
            source: Box::new(e),
        })?;
    runtime
        .block_on(async {
            let options = PgConnectOptions::from_str(&url)?;
            let mut conn = tokio::time::timeout(Duration::from_secs(10), options.connect())
                .await
                .map_err(super::retry::timed_out)??;
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                .execute(&mut conn)
                .await?;
            conn.close().await
        })
        .map_err(|e| map_error(operation, e))
}
