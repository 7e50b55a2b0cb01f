//! One node of the large deployment, assembled through the embedding API:
//! the index on the cluster's PostgreSQL server ([`PgIndex`]), the files on
//! the shared path every node sees, registered in the cluster's node table
//! and drained on `imageserver nodes drain NODE` or SIGTERM.
//!
//! ```text
//! cargo run --release --example large -- [--config deploy/large/node.toml]
//!     [--db postgres://user@host:port/database] [--shared /mnt/nas/imageserver]
//!     [--bind 10.0.0.11] [--port 11112] [--node-id pacs-1] [--device VIEWER=10.0.0.5:11112]...
//! ```
//!
//! `--db` and `--shared` may also come from `IMAGESERVER_DB` and
//! `IMAGESERVER_SHARED`. Start three of them with distinct `--bind` (or
//! hosts) and the same port behind `deploy/large/haproxy.cfg`; the README
//! shows `deploy/large/cluster.sh`, which does it on one machine with the
//! `imageserver` binary.

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

    let mut config_path = PathBuf::from("deploy/large/node.toml");
    let mut db = std::env::var("IMAGESERVER_DB").ok();
    let mut shared = std::env::var("IMAGESERVER_SHARED").ok().map(PathBuf::from);
    let (mut bind, mut port, mut node_id) = (None, None, None);
    let mut devices = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--config" => config_path = PathBuf::from(value()?),
            "--db" => db = Some(value()?),
            "--shared" => shared = Some(PathBuf::from(value()?)),
            "--bind" => bind = Some(value()?),
            "--port" => port = Some(value()?.parse()?),
            "--node-id" => node_id = Some(value()?),
            "--device" => devices.push(DeviceConfig::from_flag(&value()?)?),
            other => return Err(format!("unknown argument {other}").into()),
        }
    }

    let mut config = Config::from_file(&config_path)?;
    config.devices.extend(devices);
    if let Some(db) = db {
        config.db = Some(db);
    }
    if let Some(shared) = shared {
        config.data_dir = shared.join(".node-local");
        config.filesystems = vec![FilesystemConfig {
            path: shared,
            tier: 1,
            high_watermark: 90.0,
            low_watermark: 80.0,
            read_only: false,
            write_only: false,
            description: "shared filesystem, tier 1".into(),
            capacity_mb: None,
        }];
    }
    if let Some(bind) = bind {
        config.dicom.bind = bind;
    }
    if let Some(port) = port {
        config.dicom.port = port;
    }
    if let Some(id) = node_id {
        config.node.id = Some(id);
    }
    let settings = config.validate()?;
    if !settings.db_url.starts_with("postgres") {
        return Err(format!(
            "the nodes of the large deployment share a PostgreSQL index; got {}",
            settings.db_url
        )
        .into());
    }

    // The parts: the cluster's PostgreSQL index and the filesystem storage
    // on the shared path. Starting the server registers the node.
    let index = Arc::new(PgIndex::connect(&settings.db_url)?);
    let archive = ServerBuilder::new(settings).index(index.clone()).open()?;
    let server = Server::start(archive)?;
    eprintln!(
        "large deployment ready: AE {} on {}, node {}, index {}",
        server.archive().default_partition().partition.ae_title,
        server.local_addr(),
        server.node().id(),
        index.url(),
    );

    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone())?;
    }
    while !stop.load(Ordering::Relaxed) && !server.drain_requested() {
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("draining: leaving the balancer, finishing associations and work");
    server.drain(Duration::from_secs(30));
    Ok(())
}
