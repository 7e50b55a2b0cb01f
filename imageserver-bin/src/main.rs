//! `imageserver`: the reference server binary over `imageserver-core`.
//!
//! Thin by design: parse flags into a [`Config`], validate it, open the
//! archive, run. Errors are printed once with their chain and turned into an
//! exit code here.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use imageserver_core::config::DeviceConfig;
use imageserver_core::services::import;
use imageserver_core::{Archive, Config, FileOutcome, RuleSet, Server, ServerBuilder};

mod audit_cmd;
mod filesystem_cmd;
mod nodes_cmd;
mod reconcile_cmd;
mod service_cmd;
mod study_cmd;
mod user_cmd;
mod workqueue_cmd;

/// A DICOM image archive: C-ECHO and durable C-STORE into an indexed,
/// filesystem-backed study store.
#[derive(Parser, Debug)]
#[command(name = "imageserver", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the DICOM server until SIGTERM or Ctrl-C.
    Serve(ServeArgs),
    /// Import DICOM Part 10 files or directories into the archive.
    Import(ImportArgs),
    /// List instances kept aside under the `compare` duplicate policy.
    Duplicates(DuplicatesArgs),
    /// Copy a small deployment's SQLite index into an empty PostgreSQL
    /// database (stop the server first; the SQLite file is only read).
    MigrateDb(MigrateDbArgs),
    /// Instances held because their patient identity conflicted with their
    /// study: list, show, accept, reject, merge.
    Reconcile(reconcile_cmd::ReconcileArgs),
    /// Study operations: delete, edit, reprocess, send, check, history.
    Study(study_cmd::StudyArgs),
    /// Rules: dry run on a stored study, validation of the rules file.
    Rules(study_cmd::RulesArgs),
    /// Work queue: list, show, retry, delete, reprioritise and reschedule work items.
    Workqueue(workqueue_cmd::WorkqueueArgs),
    /// Cluster nodes: list them (state, heartbeat, work items held), drain one.
    Nodes(nodes_cmd::NodesArgs),
    /// The audit trail kept in the index (ATNA events, study operations).
    Audit(audit_cmd::AuditArgs),
    /// Filesystems and tiers: list with usage, add, set (while servers run).
    Filesystem(filesystem_cmd::FilesystemArgs),
    /// Users: hash a password for the configuration (`[[http.users]]` of
    /// the admin pages, `[[users]]` of DICOM User Identity).
    User(user_cmd::UserArgs),
    /// Scheduled services (watermark check, archive scan, integrity scan,
    /// folder import): list them, run one now.
    Service(service_cmd::ServiceArgs),
}

/// Settings shared by every command that opens the archive.
#[derive(Args, Debug)]
struct ArchiveArgs {
    /// TOML configuration file (every setting; flags override it).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Data directory: default index and filesystem location.
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// Index database URL, e.g. sqlite:/srv/pacs/index.db.
    #[arg(long, value_name = "URL")]
    db: Option<String>,
    /// Our AE title (also the partition folder).
    #[arg(long, value_name = "AE")]
    aet: Option<String>,
}

#[derive(Args, Debug)]
struct ServeArgs {
    #[command(flatten)]
    archive: ArchiveArgs,
    /// Address to listen on.
    #[arg(long, value_name = "ADDR")]
    bind: Option<String>,
    /// DICOM port.
    #[arg(long, value_name = "N")]
    port: Option<u16>,
    /// HTTP port (DICOMweb at /dicom-web, metrics at /metrics); also
    /// enables the HTTP server when the configuration disables it.
    #[arg(long, value_name = "N")]
    http_port: Option<u16>,
    /// A known remote AE, AE=HOST:PORT (repeatable).
    #[arg(long = "device", value_name = "AE=HOST:PORT")]
    devices: Vec<String>,
}

#[derive(Args, Debug)]
struct ImportArgs {
    #[command(flatten)]
    archive: ArchiveArgs,
    /// Files or directories (searched recursively).
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

#[derive(Args, Debug)]
struct DuplicatesArgs {
    #[command(flatten)]
    archive: ArchiveArgs,
    /// Print JSON lines instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct MigrateDbArgs {
    /// The SQLite index to copy: the one `serve` would open with the same
    /// --config, --data and --db.
    #[command(flatten)]
    archive: ArchiveArgs,
    /// The empty PostgreSQL database to copy into,
    /// e.g. postgres://imageserver@db-host:5432/imageserver.
    #[arg(long, value_name = "URL")]
    to: String,
}

fn main() -> ExitCode {
    init_logging();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(args),
        Command::Import(args) => run_import(args),
        Command::Duplicates(args) => list_duplicates(args),
        Command::MigrateDb(args) => migrate_db(args),
        Command::Reconcile(args) => reconcile_cmd::reconcile(args),
        Command::Study(args) => study_cmd::study(args),
        Command::Rules(args) => study_cmd::rules(args),
        Command::Workqueue(args) => workqueue_cmd::workqueue(args),
        Command::Nodes(args) => nodes_cmd::nodes(args),
        Command::Audit(args) => audit_cmd::audit(args),
        Command::Filesystem(args) => filesystem_cmd::filesystem(args),
        Command::User(args) => user_cmd::user(args),
        Command::Service(args) => service_cmd::service(args),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("imageserver: {error:#}");
            ExitCode::from(2)
        }
    }
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("IMAGESERVER_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
}

/// The configuration file (if any) with the flags applied over it.
fn load_config(args: &ArchiveArgs) -> Result<Config> {
    let mut config = match &args.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    if let Some(data) = &args.data {
        config.data_dir = data.clone();
    }
    if let Some(db) = &args.db {
        config.db = Some(db.clone());
    }
    if let Some(aet) = &args.aet {
        config.dicom.ae_title = aet.clone();
    }
    Ok(config)
}

fn open_archive(config: &Config) -> Result<Archive> {
    let settings = config.validate()?;
    Archive::open(settings).context("cannot open the archive")
}

fn serve(args: ServeArgs) -> Result<ExitCode> {
    let mut config = load_config(&args.archive)?;
    if let Some(bind) = args.bind {
        config.dicom.bind = bind;
    }
    if let Some(port) = args.port {
        config.dicom.port = port;
    }
    if let Some(port) = args.http_port {
        config.http.port = port;
        config.http.enabled = true;
    }
    for device in &args.devices {
        config.devices.push(DeviceConfig::from_flag(device)?);
    }
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, stop.clone()).context("installing signal handlers")?;
    }
    let mut builder = ServerBuilder::new(config.validate()?);
    if config.rules_file.is_some() {
        let path = study_cmd::rules_path(&config, args.archive.config.as_deref(), None)?;
        let rules = RuleSet::from_file(&path)
            .with_context(|| format!("cannot load the rules file {}", path.display()))?;
        tracing::info!(rules = %path.display(), "rules loaded");
        builder = builder.rules(rules);
    }
    let archive = builder.open().context("cannot open the archive")?;
    let server = Server::start(archive)?;
    tracing::info!(
        address = %server.local_addr(),
        http = %server.http_addr().map_or_else(|| "off".to_string(), |a| a.to_string()),
        ae_title = %config.dicom.ae_title,
        node = %server.node().id(),
        db = %imageserver_core::db::redact_url(&config.db_url()),
        "imageserver ready"
    );
    while !stop.load(Ordering::Relaxed) && !server.drain_requested() {
        std::thread::sleep(Duration::from_millis(100));
    }
    // SIGTERM and `imageserver nodes drain` alike: health checks refused
    // for [node] drain_grace_secs, then no new associations; what is in
    // flight finishes.
    tracing::info!("stopping: draining; finishing associations and work in flight");
    server.drain(Duration::from_secs(30));
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

fn run_import(args: ImportArgs) -> Result<ExitCode> {
    let config = load_config(&args.archive)?;
    let archive = open_archive(&config)?;
    let files = import::collect_files(&args.paths).context("listing the files to import")?;
    let bar = if args.quiet {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(files.len() as u64)
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} files  {per_sec}  eta {eta}  {msg}",
        )
        .expect("a valid progress template"),
    );
    let summary = archive.import_files(
        &archive.default_partition().partition,
        &files,
        &mut |path, outcome| {
            if let FileOutcome::Rejected(reason) = outcome {
                bar.println(format!("rejected {}: {reason}", path.display()));
            }
            bar.inc(1);
        },
    );
    bar.finish_and_clear();
    println!(
        "imported {}, already present {}, rejected {}",
        summary.imported,
        summary.already_present,
        summary.rejected.len()
    );
    for (path, reason) in &summary.rejected {
        println!("  rejected {}: {reason}", path.display());
    }
    Ok(if summary.rejected.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn list_duplicates(args: DuplicatesArgs) -> Result<ExitCode> {
    let config = load_config(&args.archive)?;
    let archive = open_archive(&config)?;
    for partition in archive.partitions() {
        let duplicates = archive.index().duplicates(partition.partition.id)?;
        for duplicate in duplicates {
            let stored = archive
                .index()
                .instance(partition.partition.id, &duplicate.sop_instance_uid)?;
            if args.json {
                println!(
                    "{{\"partition\":{:?},\"sop_instance_uid\":{:?},\"study_uid\":{:?},\"received_at_ms\":{},\"source_ae\":{:?},\"size\":{},\"digest\":{:?},\"stored_digest\":{:?}}}",
                    partition.partition.ae_title.as_str(),
                    duplicate.sop_instance_uid.as_str(),
                    duplicate.location.study_uid.as_str(),
                    duplicate.received_at_ms,
                    duplicate.source_ae.as_deref().unwrap_or(""),
                    duplicate.file_size,
                    duplicate.digest,
                    stored.as_ref().map(|s| s.digest.as_str()).unwrap_or(""),
                );
            } else {
                println!(
                    "{}  {}  study {}  from {}  {} bytes  (stored copy: {})",
                    partition.partition.ae_title,
                    duplicate.sop_instance_uid,
                    duplicate.location.study_uid,
                    duplicate.source_ae.as_deref().unwrap_or("-"),
                    duplicate.file_size,
                    stored
                        .as_ref()
                        .map(|s| format!("{} bytes", s.file_size))
                        .unwrap_or_else(|| "missing".into()),
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `migrate-db`: copies the SQLite index into PostgreSQL, verifies it, and
/// prints a summary; the SQLite file is opened read-only, and only while
/// no server or command has it open.
fn migrate_db(args: MigrateDbArgs) -> Result<ExitCode> {
    use imageserver_core::db::postgres;
    let config = load_config(&args.archive)?;
    let source = config.db_url();
    let path = match source.strip_prefix("sqlite:") {
        Some(path) => PathBuf::from(path.trim_start_matches("//")),
        None if source.contains("://") => {
            bail!("the source index {source} is not a SQLite file: migrate-db copies SQLite into PostgreSQL")
        }
        None => PathBuf::from(&source),
    };
    if !(args.to.starts_with("postgres://") || args.to.starts_with("postgresql://")) {
        bail!("--to {:?}: expected a postgres:// URL", args.to);
    }
    let report = postgres::copy_from_sqlite(&path, &args.to)
        .with_context(|| format!("cannot copy {} into PostgreSQL", path.display()))?;
    println!("copied {} into {}", path.display(), report.target);
    println!("  {:<16} {:>12} {:>9}", "table", "rows", "compared");
    let mut rows = 0;
    for table in &report.tables {
        println!(
            "  {:<16} {:>12} {:>9}",
            table.table, table.rows, table.sampled
        );
        rows += table.rows;
    }
    println!(
        "{rows} rows in {} tables; row counts equal on both sides, sampled rows identical; \
         {} was not modified",
        report.tables.len(),
        path.display()
    );
    println!(
        "next: imageserver serve --db {} (or db = \"...\" in the config file)",
        report.target
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    /// clap's own consistency checks over every subcommand and argument.
    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
