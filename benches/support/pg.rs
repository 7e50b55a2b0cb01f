//! The PostgreSQL server of a benchmark: `IMAGESERVER_PG_URL`, or a
//! throwaway cluster started with `scripts/pg.sh`; one fresh database per
//! run. Included by the benches with `#[path]`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use imageserver_core::db::postgres;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// The PostgreSQL server of the runs: `IMAGESERVER_PG_URL`, or a cluster
/// of our own (stopped on drop).
pub struct PgServer {
    url: String,
    own: Option<PathBuf>,
    counter: AtomicUsize,
}

/// A fresh database of the server, dropped on drop.
pub struct PgDatabase {
    server: String,
    name: String,
    /// Its URL.
    pub url: String,
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let _ = postgres::drop_database(&self.server, &self.name);
    }
}

impl PgServer {
    /// `IMAGESERVER_PG_URL`, or a throwaway cluster under `tmp`.
    pub fn get(tmp: &Path) -> Result<PgServer> {
        if let Ok(url) = std::env::var("IMAGESERVER_PG_URL") {
            return Ok(PgServer {
                url,
                own: None,
                counter: AtomicUsize::new(0),
            });
        }
        let dir = tmp.join("pg");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/pg.sh");
        let output = Command::new("bash")
            .arg(&script)
            .arg("start")
            .arg(&dir)
            .stderr(Stdio::inherit())
            .output()?;
        if !output.status.success() {
            return Err("scripts/pg.sh start failed".into());
        }
        Ok(PgServer {
            url: String::from_utf8(output.stdout)?.trim().to_string(),
            own: Some(dir),
            counter: AtomicUsize::new(0),
        })
    }

    /// A new empty database.
    pub fn database(&self) -> Result<PgDatabase> {
        let name = format!(
            "bench_{}_{}",
            std::process::id(),
            self.counter.fetch_add(1, Ordering::Relaxed)
        );
        let url = postgres::create_database(&self.url, &name)?;
        Ok(PgDatabase {
            server: self.url.clone(),
            name,
            url,
        })
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if let Some(dir) = &self.own {
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/pg.sh");
            let _ = Command::new("bash")
                .arg(script)
                .arg("stop")
                .arg(dir)
                .status();
        }
    }
}
