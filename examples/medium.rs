//! The medium deployment, assembled through the embedding API: the index on a
//! dedicated PostgreSQL server ([`PgIndex`]), the files on a NAS path, served
//! until Ctrl-C or SIGTERM.
//!
//! ```text
//! cargo run --release --example medium -- [--config deploy/medium.toml]
//!     [--db postgres://user@host:port/database] [--nas /mnt/nas/imageserver]
//!     [--port 11112] [--device VIEWER=10.0.0.5:11112]...
//! ```
//!
//! `--device` adds a known device (unknown callers may only store). `--db`
//! and `--nas` may also come from `IMAGESERVER_DB` and
//! `IMAGESERVER_NAS`; both override the configuration file. The README shows
//! how to start a local PostgreSQL to try it.

use std::error::Error;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use imageserver_core::config::{Config, DeviceConfig, FilesystemConfig};
use imageserver_core::db::postgres::PgIndex;
use imageserver_core::server::{Server, ServerBuilder};

fn main() -> Result<(), Box<dyn Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("IMAGESERVER_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();

    let mut config_path = PathBuf::from("deploy/medium.toml");
    let mut db = std::env::var("IMAGESERVER_DB").ok();
    let mut nas = std::env::var("IMAGESERVER_NAS").ok().map(PathBuf::from);
    let mut port = None;
    let mut devices = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--config" => config_path = PathBuf::from(value()?),
            "--db" => db = Some(value()?),
            "--nas" => nas = Some(PathBuf::from(value()?)),
            "--port" => port = Some(value()?.parse()?),
            "--device" => devices.push(DeviceConfig::from_flag(&value()?)?),
            other => return Err(format!("unknown argument {other}").into()),
        }
    }

    let mut config = Config::from_file(&config_path)?;
    if let Some(db) = db {
        config.db = Some(db);
    }
    if let Some(nas) = nas {
        config.filesystems = vec![FilesystemConfig {
            path: nas,
            tier: 1,
            high_watermark: 90.0,
            low_watermark: 80.0,
            read_only: false,
            write_only: false,
            description: "NAS share, tier 1".into(),
            capacity_mb: None,
        }];
    }
    if let Some(port) = port {
        config.dicom.port = port;
    }
    config.devices.extend(devices);
    let settings = config.validate()?;
    if !settings.db_url.starts_with("postgres") {
        return Err(format!(
            "the medium deployment keeps its index on PostgreSQL; got {}",
            settings.db_url
        )
        .into());
    }

    // The parts: a PostgreSQL index (pool options from the URL, which
    // `[database]` filled in) and, by default, the filesystem storage on the
    // configured NAS path.
    let index = Arc::new(PgIndex::connect(&settings.db_url)?);
    let archive = ServerBuilder::new(settings).index(index.clone()).open()?;
    let server = Server::start(archive)?;
    eprintln!(
        "medium deployment ready: AE {} on {}, index {}, files on {}",
        server.archive().default_partition().partition.ae_title,
        server.local_addr(),
        index.url(),
        server
            .archive()
            .settings()
            .filesystems
            .iter()
            .map(|fs| fs.path.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );

    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone())?;
    }
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("stopping: finishing the stores in flight");
    server.shutdown(Duration::from_secs(30));
    Ok(())
}
