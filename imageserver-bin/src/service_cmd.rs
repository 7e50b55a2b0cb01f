//! `imageserver service list|run NAME`: the scheduled services (watermark
//! check, archive scan, integrity scan, folder import), listed with their
//! intervals and the node running each now, or run once here.

use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use imageserver_core::scheduler::{run_once, RunOutcome};
use imageserver_core::ServerBuilder;

use crate::{load_config, ArchiveArgs};

#[derive(Args, Debug)]
pub struct ServiceArgs {
    #[command(subcommand)]
    command: ServiceCommand,
}

#[derive(Subcommand, Debug)]
enum ServiceCommand {
    /// List the scheduled services: interval, and the node running one now.
    List(ListArgs),
    /// Run one service once in this process and print what it found and
    /// did (exit status 1 when it failed or another node runs it now).
    /// What it queues runs on the work queue of a running server.
    Run(RunArgs),
}

#[derive(Args, Debug)]
struct ListArgs {
    #[command(flatten)]
    archive: ArchiveArgs,
}

#[derive(Args, Debug)]
struct RunArgs {
    #[command(flatten)]
    archive: ArchiveArgs,
    /// The service (`service list`).
    name: String,
}

pub fn service(args: ServiceArgs) -> Result<ExitCode> {
    match args.command {
        ServiceCommand::List(args) => list(args),
        ServiceCommand::Run(args) => run(args),
    }
}

fn list(args: ListArgs) -> Result<ExitCode> {
    let settings = load_config(&args.archive)?.validate()?;
    let archive = ServerBuilder::new(settings)
        .open()
        .context("cannot open the archive")?;
    let index = archive.index().clone();
    for service in archive.scheduled_services(archive.work_queue()) {
        let interval = service.interval().map_or("on request".to_string(), |i| {
            format!("every {} s", i.as_secs())
        });
        let running = index
            .lease_holder(&format!("service:{}", service.name()))?
            .map_or(String::new(), |holder| format!(", running on {holder}"));
        println!(
            "{:<16} {interval}{running}\n                 {}",
            service.name(),
            service.description()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn run(args: RunArgs) -> Result<ExitCode> {
    let settings = load_config(&args.archive)?.validate()?;
    let archive = ServerBuilder::new(settings)
        .open()
        .context("cannot open the archive")?;
    let services = archive.scheduled_services(archive.work_queue());
    let Some(service) = services.iter().find(|s| s.name() == args.name) else {
        bail!(
            "no service {:?}; services: {}",
            args.name,
            services
                .iter()
                .map(|s| s.name())
                .collect::<Vec<_>>()
                .join(", ")
        );
    };
    let holder = format!(
        "cli:{}:{}",
        imageserver_core::cluster::node::host_name(),
        std::process::id()
    );
    match run_once(service.as_ref(), archive.index().as_ref(), &holder) {
        RunOutcome::Ran(lines) => {
            for line in lines {
                println!("{line}");
            }
            Ok(ExitCode::SUCCESS)
        }
        RunOutcome::Held(by) => {
            eprintln!("service {} is running on {by} now; not run", args.name);
            Ok(ExitCode::FAILURE)
        }
        RunOutcome::Failed(reason) => {
            eprintln!("service {} failed: {reason}", args.name);
            Ok(ExitCode::FAILURE)
        }
    }
}
