//! The small deployment, assembled through the embedding API: one process,
//! the index in SQLite and the files on local disk, both under one data
//! directory (`<data>/index.db`, `<data>/fs1`). That is what the defaults
//! of [`Config`] describe, so the builder needs no part of its own; served
//! until Ctrl-C or SIGTERM.
//!
//! ```text
//! cargo run --release --example small -- [--data ./imageserver-data] [--port 11112] \
//!     [--device VIEWER=10.0.0.5:11112]...
//! ```
//!
//! `--device` adds a known device, a workstation that may query and
//! retrieve (unknown callers may only store).
//! It prints `small deployment ready: AE <ae> on <address>` once it listens;
//! its log goes to stderr (`IMAGESERVER_LOG`, default `info`).

use std::error::Error;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use imageserver_core::config::{Config, DeviceConfig};
use imageserver_core::server::{Server, ServerBuilder};
use signal_hook::consts::{SIGINT, SIGTERM};
use tracing_subscriber::EnvFilter;

fn main() -> Result<(), Box<dyn Error>> {
    let filter = EnvFilter::try_from_env("IMAGESERVER_LOG").unwrap_or_else(|_| "info".into());
    let log = tracing_subscriber::fmt().with_env_filter(filter);
    let log = log.with_ansi(std::io::stderr().is_terminal());
    log.with_writer(std::io::stderr).init();
    let mut config = Config::default();
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--data" => config.data_dir = value.into(),
            "--port" => config.dicom.port = value.parse()?,
            "--device" => config.devices.push(DeviceConfig::from_flag(&value)?),
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    // Before listening, so that a signal sent once it is ready is not lost.
    let stop = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(SIGINT, stop.clone())?;
    signal_hook::flag::register(SIGTERM, stop.clone())?;
    let server = Server::start(ServerBuilder::new(config.validate()?).open()?)?;
    let ae_title = &server.archive().default_partition().partition.ae_title;
    let address = server.local_addr();
    println!("small deployment ready: AE {ae_title} on {address}");
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
    }
    server.shutdown(Duration::from_secs(30));
    Ok(())
}
