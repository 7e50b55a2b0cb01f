//! `imageserver filesystem`: the filesystems and tiers in the index, with
//! their usage against the watermarks; added and changed while servers run
//! (they re-read the index every `filesystem_refresh_secs`); a
//! filesystem's lost index rows rebuilt from its files (`reinventory`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use imageserver_core::config::FilesystemConfig;
use imageserver_core::model::Filesystem;
use imageserver_core::services::studies::ReinventoryOutcome;
use imageserver_core::storage::fs::FsStorage;
use imageserver_core::tiering;
use imageserver_core::{error_chain, open_index, Database, IndexStore};

use crate::{load_config, ArchiveArgs};

#[derive(Args, Debug)]
pub struct FilesystemArgs {
    #[command(subcommand)]
    command: FilesystemCommand,
}

#[derive(Subcommand, Debug)]
enum FilesystemCommand {
    /// List the filesystems by tier, with usage against the watermarks and
    /// the state of each identity marker.
    List(ListArgs),
    /// Add a filesystem (running servers take new studies there within
    /// `filesystem_refresh_secs`).
    Add(AddArgs),
    /// Change a filesystem's properties (id or path).
    Set(SetArgs),
    /// Rebuild the index rows of the studies on a filesystem that the
    /// index lacks, from their files (after the index was lost or restored
    /// from an old backup). A path the index does not know is added (tier
    /// --tier) unless its identity marker names another filesystem.
    /// Runs in this process, one study after the other; studies the index
    /// already knows are left alone.
    Reinventory(ReinventoryArgs),
}

#[derive(Args, Debug)]
struct ReinventoryArgs {
    #[command(flatten)]
    archive: ArchiveArgs,
    /// The filesystem: its id or its path (default: every filesystem of
    /// the index).
    filesystem: Option<String>,
    /// Tier of a filesystem the index does not know yet.
    #[arg(long, default_value_t = 1)]
    tier: u8,
    /// Who asks, for the audit log (default cli:$USER).
    #[arg(long)]
    actor: Option<String>,
    /// One line per study folder as it is done.
    #[arg(long)]
    verbose: bool,
}

#[derive(Args, Debug)]
struct ListArgs {
    #[command(flatten)]
    archive: ArchiveArgs,
    /// One JSON array, for scripts.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct AddArgs {
    #[command(flatten)]
    archive: ArchiveArgs,
    /// Root directory (local disk or NAS mount).
    path: PathBuf,
    /// Tier, 1 = fastest.
    #[arg(long, default_value_t = 1)]
    tier: u8,
    /// Used percentage above which studies move to the next tier.
    #[arg(long, default_value_t = 90.0)]
    high_watermark: f64,
    /// Used percentage migration drains down to.
    #[arg(long, default_value_t = 80.0)]
    low_watermark: f64,
    /// A quota in MiB below the volume's size.
    #[arg(long, value_name = "MIB")]
    capacity_mb: Option<u64>,
    /// Never written to.
    #[arg(long)]
    read_only: bool,
    /// Never read from.
    #[arg(long)]
    write_only: bool,
    /// Added disabled (takes no new studies).
    #[arg(long)]
    disabled: bool,
    /// Free text.
    #[arg(long, default_value = "")]
    description: String,
}

#[derive(Args, Debug)]
struct SetArgs {
    #[command(flatten)]
    archive: ArchiveArgs,
    /// The filesystem: its id or its path.
    filesystem: String,
    /// Tier, 1 = fastest.
    #[arg(long)]
    tier: Option<u8>,
    /// Used percentage above which studies move to the next tier.
    #[arg(long)]
    high_watermark: Option<f64>,
    /// Used percentage migration drains down to.
    #[arg(long)]
    low_watermark: Option<f64>,
    /// A quota in MiB below the volume's size (0: none, the volume's size).
    #[arg(long, value_name = "MIB")]
    capacity_mb: Option<u64>,
    /// Never written to.
    #[arg(long, value_name = "BOOL")]
    read_only: Option<bool>,
    /// Never read from.
    #[arg(long, value_name = "BOOL")]
    write_only: Option<bool>,
    /// Takes new studies.
    #[arg(long, value_name = "BOOL")]
    enabled: Option<bool>,
    /// Free text.
    #[arg(long)]
    description: Option<String>,
}

/// Runs `imageserver filesystem ...`.
pub fn filesystem(args: FilesystemArgs) -> Result<ExitCode> {
    match args.command {
        FilesystemCommand::List(args) => list(args),
        FilesystemCommand::Add(args) => add(args),
        FilesystemCommand::Set(args) => set(args),
        FilesystemCommand::Reinventory(args) => reinventory(args),
    }
}

fn open(args: &ArchiveArgs) -> Result<Arc<dyn Database>> {
    let config = load_config(args)?;
    let url = config.db_url();
    open_index(&url).with_context(|| {
        format!(
            "cannot open the index database {}",
            imageserver_core::db::redact_url(&url)
        )
    })
}

/// Checks a spec as the configuration would.
fn checked(filesystem: &Filesystem) -> Result<()> {
    let spec = &filesystem.spec;
    FilesystemConfig {
        path: spec.path.clone(),
        tier: spec.tier.0,
        high_watermark: spec.high_watermark,
        low_watermark: spec.low_watermark,
        read_only: spec.read_only,
        write_only: spec.write_only,
        description: spec.description.clone(),
        capacity_mb: spec.capacity_mb,
    }
    .validate()?;
    Ok(())
}

fn list(args: ListArgs) -> Result<ExitCode> {
    let index = open(&args.archive)?;
    let reports = tiering::refresh(index.as_ref(), &FsStorage::new(), None, false)?;
    if args.json {
        let rows: Vec<serde_json::Value> = reports
            .iter()
            .map(imageserver_core::services::admin::filesystem_json)
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:>4} {:>4} {:<8} {:<8} {:>10} {:>10} {:>6} {:>5} {:>5}  PATH",
        "ID", "TIER", "STATE", "MARKER", "USED", "CAPACITY", "USED%", "LOW", "HIGH"
    );
    for report in &reports {
        let fs = &report.filesystem;
        let (used, total, percent) = match report.usage {
            Some(u) => (
                mib(u.total_bytes - u.available_bytes.min(u.total_bytes)),
                mib(u.total_bytes),
                format!("{:.1}", u.used_percent()),
            ),
            None => ("?".into(), "?".into(), "?".into()),
        };
        println!(
            "{:>4} {:>4} {:<8} {:<8} {:>10} {:>10} {:>6} {:>5} {:>5}  {}{}",
            fs.id.0,
            fs.spec.tier.0,
            state(fs),
            report.marker.word(),
            used,
            total,
            percent,
            fs.spec.low_watermark,
            fs.spec.high_watermark,
            fs.spec.path.display(),
            match report.marker.refusal() {
                Some(reason) => format!("  (refused: {reason})"),
                None => String::new(),
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn mib(bytes: u64) -> String {
    format!("{:.1}M", bytes as f64 / (1024.0 * 1024.0))
}

fn state(fs: &Filesystem) -> String {
    let mut words = vec![if fs.enabled { "on" } else { "off" }];
    if fs.spec.read_only {
        words.push("ro");
    }
    if fs.spec.write_only {
        words.push("wo");
    }
    words.join(",")
}

fn add(args: AddArgs) -> Result<ExitCode> {
    let spec = FilesystemConfig {
        path: args.path.clone(),
        tier: args.tier,
        high_watermark: args.high_watermark,
        low_watermark: args.low_watermark,
        read_only: args.read_only,
        write_only: args.write_only,
        description: args.description.clone(),
        capacity_mb: args.capacity_mb,
    }
    .validate()?;
    let index = open(&args.archive)?;
    let (mut row, created) = index.seed_filesystem(&spec)?;
    if !created {
        bail!(
            "filesystem {} is already known (id {}): change it with `imageserver filesystem set`",
            args.path.display(),
            row.id.0
        );
    }
    if args.disabled {
        row.enabled = false;
        index.update_filesystem(&row)?;
    }
    println!("filesystem {} added: {}", row.id.0, row.spec.path.display());
    Ok(ExitCode::SUCCESS)
}

fn find(index: &dyn IndexStore, which: &str) -> Result<Filesystem> {
    let all = index.filesystems()?;
    let found = match which.parse::<i64>() {
        Ok(id) => all.into_iter().find(|fs| fs.id.0 == id),
        Err(_) => all
            .into_iter()
            .find(|fs| fs.spec.path == std::path::Path::new(which)),
    };
    found.with_context(|| {
        format!("no filesystem {which:?} (an id or a path from `filesystem list`)")
    })
}

fn set(args: SetArgs) -> Result<ExitCode> {
    let index = open(&args.archive)?;
    let mut fs = find(index.as_ref(), &args.filesystem)?;
    if let Some(tier) = args.tier {
        fs.spec.tier = imageserver_core::model::Tier(tier);
    }
    if let Some(high) = args.high_watermark {
        fs.spec.high_watermark = high;
    }
    if let Some(low) = args.low_watermark {
        fs.spec.low_watermark = low;
    }
    if let Some(mb) = args.capacity_mb {
        fs.spec.capacity_mb = (mb > 0).then_some(mb);
    }
    if let Some(read_only) = args.read_only {
        fs.spec.read_only = read_only;
    }
    if let Some(write_only) = args.write_only {
        fs.spec.write_only = write_only;
    }
    if let Some(enabled) = args.enabled {
        fs.enabled = enabled;
    }
    if let Some(description) = args.description {
        fs.spec.description = description;
    }
    checked(&fs)?;
    index.update_filesystem(&fs)?;
    println!("filesystem {} updated: {}", fs.id.0, fs.spec.path.display());
    Ok(ExitCode::SUCCESS)
}

fn reinventory(args: ReinventoryArgs) -> Result<ExitCode> {
    let config = load_config(&args.archive)?;
    let settings = config.validate()?;
    let archive = imageserver_core::ServerBuilder::new(settings)
        .open()
        .context("cannot open the archive")?;
    let index = archive.index();
    let storage = archive.storage();
    let targets: Vec<Filesystem> = match &args.filesystem {
        None => index.filesystems()?,
        Some(which) => {
            let known = find(index.as_ref(), which).ok().or_else(|| {
                // The same root by another spelling of its path.
                let canonical = std::fs::canonicalize(which).ok()?;
                index.filesystems().ok()?.into_iter().find(|fs| {
                    std::fs::canonicalize(&fs.spec.path).ok().as_ref() == Some(&canonical)
                })
            });
            match known {
                Some(row) => vec![row],
                None if which.parse::<i64>().is_ok() => {
                    bail!("no filesystem {which} (an id from `filesystem list`)")
                }
                None => {
                    let path = std::fs::canonicalize(which)
                        .with_context(|| format!("no directory {which}"))?;
                    vec![FilesystemConfig {
                        path,
                        tier: args.tier,
                        high_watermark: 90.0,
                        low_watermark: 80.0,
                        read_only: false,
                        write_only: false,
                        description: "added by reinventory".to_string(),
                        capacity_mb: None,
                    }
                    .validate()
                    .map(|spec| Filesystem {
                        id: imageserver_core::model::FilesystemId(0),
                        spec,
                        enabled: true,
                        marker: None,
                    })?]
                }
            }
        }
    };
    let partitions: Vec<_> = archive
        .partitions()
        .iter()
        .map(|p| p.partition.clone())
        .collect();
    let actor = args.actor.clone().unwrap_or_else(|| {
        format!(
            "cli:{}",
            std::env::var("USER")
                .or_else(|_| std::env::var("LOGNAME"))
                .unwrap_or_else(|_| "unknown".to_string())
        )
    });
    let studies = archive.studies();
    let mut failed = false;
    for target in targets {
        let filesystem = match tiering::adopt(index.as_ref(), storage.as_ref(), &target.spec) {
            Ok(filesystem) => filesystem,
            Err(e) => {
                eprintln!("{}: {}", target.spec.path.display(), error_chain(&e));
                failed = true;
                continue;
            }
        };
        let mut done = 0u64;
        let report = studies.reinventory(&filesystem, &partitions, &actor, &mut |study| {
            done += 1;
            if args.verbose {
                eprintln!(
                    "{} {}/{}: {}",
                    study.location.study_uid,
                    study.location.partition_folder.as_str(),
                    study.location.date_folder,
                    describe(&study.outcome)
                );
            } else if done.is_multiple_of(100) {
                eprintln!("{done} study folders done");
            }
        });
        let report = match report {
            Ok(report) => report,
            Err(e) => {
                eprintln!("{}: {}", filesystem.spec.path.display(), error_chain(&e));
                failed = true;
                continue;
            }
        };
        for (location, reason) in &report.skipped {
            println!(
                "skipped study {} ({}/{}): {reason}",
                location.study_uid,
                location.partition_folder.as_str(),
                location.date_folder
            );
        }
        for (path, reason) in &report.skipped_files {
            println!("skipped file {}: {reason}", path.display());
        }
        println!(
            "filesystem {} ({}): {} study folders, {} studies indexed ({} instances), {} already \
             known, {} skipped, {} files skipped",
            filesystem.id.0,
            filesystem.spec.path.display(),
            report.studies,
            report.indexed_studies,
            report.indexed_instances,
            report.known_studies,
            report.skipped.len(),
            report.skipped_files.len()
        );
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn describe(outcome: &ReinventoryOutcome) -> String {
    match outcome {
        ReinventoryOutcome::Indexed { instances, skipped } => {
            format!(
                "indexed, {instances} instances, {} files skipped",
                skipped.len()
            )
        }
        ReinventoryOutcome::Known => "already known".to_string(),
        ReinventoryOutcome::Skipped(reason) => format!("skipped: {reason}"),
    }
}
