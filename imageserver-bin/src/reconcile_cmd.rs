//! `imageserver reconcile list|show|accept|reject|merge`: the instances
//! held because their patient identity conflicted with the stored study
//! they name, and a person's decision about each (`services::studies::
//! Reconcile`). A decision runs in this process: accept edits the study
//! (history and audit kept) as `imageserver study edit --now` does.

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use imageserver_core::model::{PatientIdentity, ReconcileEntry};
use imageserver_core::services::studies::Decision;
use imageserver_core::StudyError;

use crate::study_cmd::partition;
use crate::{load_config, open_archive, ArchiveArgs};

/// `imageserver reconcile ...`.
#[derive(Args, Debug)]
pub struct ReconcileArgs {
    #[command(subcommand)]
    command: ReconcileCommand,
}

#[derive(Subcommand, Debug)]
enum ReconcileCommand {
    /// List the held instances, oldest first.
    List(ListArgs),
    /// Show one held instance: its identity and the study's.
    Show(EntryArgs),
    /// The instance's identity wins: edit the study to it (history and
    /// audit kept; a new PatientID moves the study to that patient), then
    /// store the instance.
    Accept(EntryArgs),
    /// Discard the held instance.
    Reject(EntryArgs),
    /// The study's identity wins: rewrite the instance's patient
    /// attributes to the study's, then store it.
    Merge(EntryArgs),
}

#[derive(Args, Debug)]
struct ListArgs {
    #[command(flatten)]
    archive: ArchiveArgs,
    /// The partition's AE title (default: the `[dicom]` one).
    #[arg(long, value_name = "AE")]
    partition: Option<String>,
    /// Print JSON lines instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct EntryArgs {
    #[command(flatten)]
    archive: ArchiveArgs,
    /// The entry's id (from `reconcile list`).
    id: i64,
    /// The partition's AE title (default: the `[dicom]` one).
    #[arg(long, value_name = "AE")]
    partition: Option<String>,
    /// Who decides, for the audit log (default: cli:$USER).
    #[arg(long, value_name = "NAME")]
    actor: Option<String>,
}

/// Runs a `reconcile` subcommand.
pub fn reconcile(args: ReconcileArgs) -> Result<ExitCode> {
    match args.command {
        ReconcileCommand::List(args) => list(args),
        ReconcileCommand::Show(args) => show(args),
        ReconcileCommand::Accept(args) => decide(args, Decision::Accept),
        ReconcileCommand::Reject(args) => decide(args, Decision::Reject),
        ReconcileCommand::Merge(args) => decide(args, Decision::Merge),
    }
}

fn list(args: ListArgs) -> Result<ExitCode> {
    let archive = open_archive(&load_config(&args.archive)?)?;
    let partition = partition(&archive, args.partition.as_deref())?;
    for entry in archive.reconcile().list(&partition.partition)? {
        if args.json {
            println!("{}", entry_json(&entry));
        } else {
            println!(
                "{}  {}  study {}  from {}  patient {}",
                entry.id,
                entry.sop_instance_uid,
                entry.location.study_uid,
                entry.source_ae.as_deref().unwrap_or("-"),
                describe(&entry.identity)
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn show(args: EntryArgs) -> Result<ExitCode> {
    let archive = open_archive(&load_config(&args.archive)?)?;
    let partition = partition(&archive, args.partition.as_deref())?;
    let case = archive
        .reconcile()
        .show(&partition.partition, args.id)
        .map_err(plain)?;
    let entry = &case.entry;
    println!("entry:        {}", entry.id);
    println!("instance:     {}", entry.sop_instance_uid);
    println!("study:        {}", entry.location.study_uid);
    println!("series:       {}", entry.series_uid);
    println!(
        "from:         {}",
        entry.source_ae.as_deref().unwrap_or("-")
    );
    println!("received at:  {} ms", entry.received_at_ms);
    println!("size:         {} bytes", entry.file_size);
    println!("instance's patient: {}", describe(&entry.identity));
    match &case.study_identity {
        Some(identity) => println!("study's patient:    {}", describe(identity)),
        None => println!("study's patient:    (the study is gone)"),
    }
    Ok(ExitCode::SUCCESS)
}

fn decide(args: EntryArgs, decision: Decision) -> Result<ExitCode> {
    let archive = open_archive(&load_config(&args.archive)?)?;
    let partition = partition(&archive, args.partition.as_deref())?;
    let actor = args.actor.clone().unwrap_or_else(|| {
        format!(
            "cli:{}",
            std::env::var("USER")
                .or_else(|_| std::env::var("LOGNAME"))
                .unwrap_or_else(|_| "unknown".to_string())
        )
    });
    archive
        .reconcile()
        .decide(&partition.partition, args.id, decision, &actor)
        .map_err(plain)
        .with_context(|| format!("reconcile entry {}", args.id))?;
    let done = match decision {
        Decision::Accept => "accepted: the study now carries the instance's patient",
        Decision::Merge => "merged: the instance now carries the study's patient",
        Decision::Reject => "rejected: the held instance is discarded",
    };
    println!("{}: {done}", args.id);
    Ok(ExitCode::SUCCESS)
}

/// An unknown entry as the one clear message; other errors keep their chain.
fn plain(error: StudyError) -> anyhow::Error {
    match error {
        e @ StudyError::UnknownReconcileEntry(_) => anyhow::anyhow!("{e}"),
        e => anyhow::Error::new(e),
    }
}

fn describe(identity: &PatientIdentity) -> String {
    format!(
        "PatientID={} IssuerOfPatientID={} PatientName={} PatientBirthDate={}",
        identity.patient_id,
        identity.issuer_of_patient_id.as_deref().unwrap_or(""),
        identity.patient_name.as_deref().unwrap_or(""),
        identity.birth_date.as_deref().unwrap_or("")
    )
}

fn entry_json(entry: &ReconcileEntry) -> String {
    serde_json::json!({
        "id": entry.id,
        "sop_instance_uid": entry.sop_instance_uid.as_str(),
        "study_uid": entry.location.study_uid.as_str(),
        "series_uid": entry.series_uid.as_str(),
        "source_ae": entry.source_ae,
        "received_at_ms": entry.received_at_ms,
        "size": entry.file_size,
        "patient_id": entry.identity.patient_id,
        "issuer_of_patient_id": entry.identity.issuer_of_patient_id,
        "patient_name": entry.identity.patient_name,
        "patient_birth_date": entry.identity.birth_date,
    })
    .to_string()
}
