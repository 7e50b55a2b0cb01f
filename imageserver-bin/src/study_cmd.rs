//! `imageserver study delete|edit|reprocess|send|check|history|migrate|compress` and
//! `imageserver rules test|check`: operator commands over the study
//! operations (`services::studies`) and the rules (`rules`).
//!
//! The study commands enqueue a work item for the engine of a running
//! `imageserver serve` on the same database and wait for it (the default),
//! so that they take the same per-study locks as everything the server
//! runs; `--queue` returns once the item is queued, `--now` runs the
//! operation in this process (for a stopped archive; it takes no lock).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use imageserver_core::db::studies::StudyStore;
use imageserver_core::db::work::WorkError;
use imageserver_core::dicom::scu::ScuOptions;
use imageserver_core::model::work::{Timestamp, WorkUid};
use imageserver_core::rules::dry_run;
use imageserver_core::services::studies::{DeleteOutcome, DigestCheck, EditOutcome, EditValue};
use imageserver_core::{
    AeTitle, Archive, ArchivePartition, Config, RuleSet, ServerBuilder, Studies, StudyError,
    StudyRequest, Uid, WorkStatus,
};

use crate::{load_config, ArchiveArgs};

const MODES: &str = "By default the command enqueues a work item (its id is printed) for the \
                     engine of a running `imageserver serve` on the same database and waits \
                     until it completes (exit status 0) or fails (exit status 1); Ctrl-C \
                     stops waiting and leaves the item queued. --queue returns as soon as \
                     the item is queued. --now runs the operation in this process instead, \
                     without the work queue's study locks: for an archive whose server is \
                     stopped. `imageserver workqueue show ID` follows an item.";

/// `imageserver study ...`.
#[derive(Args, Debug)]
pub struct StudyArgs {
    #[command(subcommand)]
    command: StudyCommand,
}

#[derive(Subcommand, Debug)]
enum StudyCommand {
    /// Delete a study: its index rows (with an audit record: who, when,
    /// why), then its files, through a delete_study work item (--now: in
    /// this process). Safe to run again after an interruption.
    Delete(DeleteArgs),
    /// Change patient/study attributes in the index and in every file of a
    /// study (history kept), through an edit_study work item (--now: in
    /// this process). Run it again with the same values to finish an
    /// interrupted edit.
    Edit(EditArgs),
    /// Rebuild a study's index rows from its files, through a
    /// reprocess_study work item (--now: in this process).
    Reprocess(ReprocessArgs),
    /// Send a study (or some of its instances) to a device with C-STORE,
    /// through a move_study work item (retried with backoff while the
    /// device is down; a partial failure retries only the failed
    /// instances), or with --now in this process, once.
    Send(SendArgs),
    /// Compare the index with a study's files (missing, extra, size,
    /// digest). Exit status 1 when they disagree.
    Check(CheckArgs),
    /// Show a study's edit history and audit log.
    History(StudyOnlyArgs),
    /// Move a study's files to another filesystem (tier), through a
    /// migrate_study work item (--now: in this process): copied, fsync'd,
    /// verified, switched in one transaction, then the source removed.
    /// Safe to run again after an interruption.
    Migrate(MigrateArgs),
    /// Pack a study into the archive (`[archive] path`): one tar file with
    /// a manifest of every instance's digest, fsync'd, then recorded,
    /// through an archive_study work item (--now: in this process).
    Archive(ReprocessArgs),
    /// Make an archived study nearline: its online files removed, its
    /// index rows kept (C-FIND still finds it), through a purge_study work
    /// item (--now: in this process).
    Purge(ReprocessArgs),
    /// Bring a nearline study back online from its pack, verified against
    /// the manifest's digests, through a restore_study work item (--now:
    /// in this process).
    Restore(ReprocessArgs),
    /// Re-encode a study's images losslessly (RLE Lossless), through a
    /// compress_study work item (--now: in this process): each file
    /// recoded, decoded again and compared with the original frame by
    /// frame, swapped, then recorded in the index. Instances already
    /// compressed or without pixel data are left alone. Prints the space
    /// saved. Safe to run again after an interruption.
    Compress(CompressArgs),
}

#[derive(Args, Debug)]
#[command(after_help = MODES)]
struct CompressArgs {
    #[command(flatten)]
    target: Target,
    #[command(flatten)]
    mode: Mode,
}

#[derive(Args, Debug)]
#[command(after_help = MODES)]
struct MigrateArgs {
    #[command(flatten)]
    target: Target,
    #[command(flatten)]
    mode: Mode,
    /// The target filesystem: its id or path (`imageserver filesystem list`).
    #[arg(long, value_name = "FS")]
    to: String,
}

/// Which study, in which partition.
#[derive(Args, Debug)]
struct Target {
    #[command(flatten)]
    archive: ArchiveArgs,
    /// The Study Instance UID.
    study_uid: String,
    /// The partition's AE title (default: the `[dicom]` one).
    #[arg(long, value_name = "AE")]
    partition: Option<String>,
    /// Who asks, for the audit log (default: cli:$USER).
    #[arg(long, value_name = "NAME")]
    actor: Option<String>,
}

/// How an operation runs: as a work item (waited for, or not), or now.
#[derive(Args, Debug, Clone, Copy)]
struct Mode {
    /// Run the operation now, in this process, without the work queue's
    /// study locks (for a stopped archive).
    #[arg(long, conflicts_with_all = ["queue", "wait"])]
    now: bool,
    /// Enqueue the work item, print its id and return.
    #[arg(long, conflicts_with = "wait")]
    queue: bool,
    /// Enqueue the work item and wait until it completes or fails (the
    /// default).
    #[arg(long)]
    wait: bool,
}

impl Mode {
    fn queued(self) -> bool {
        !self.now
    }

    fn waits(self) -> bool {
        !self.queue
    }
}

#[derive(Args, Debug)]
#[command(after_help = MODES)]
struct DeleteArgs {
    #[command(flatten)]
    target: Target,
    #[command(flatten)]
    mode: Mode,
    /// Why (recorded in the audit log).
    #[arg(long, value_name = "TEXT")]
    reason: String,
}

#[derive(Args, Debug)]
#[command(after_help = MODES)]
struct EditArgs {
    #[command(flatten)]
    target: Target,
    #[command(flatten)]
    mode: Mode,
    /// An attribute and its new value, Keyword=value (repeatable), e.g.
    /// --set PatientName=DOE^JANE --set StudyDescription="CT CHEST".
    /// Editable: StudyDate, StudyTime, AccessionNumber,
    /// ReferringPhysicianName, StudyDescription, PatientName, PatientID,
    /// IssuerOfPatientID, PatientBirthDate, PatientSex, StudyID.
    #[arg(long = "set", value_name = "KEYWORD=VALUE", required = true)]
    set: Vec<String>,
    /// Why (recorded in the history and the audit log).
    #[arg(long, value_name = "TEXT", default_value = "")]
    reason: String,
}

#[derive(Args, Debug)]
struct StudyOnlyArgs {
    #[command(flatten)]
    target: Target,
}

#[derive(Args, Debug)]
#[command(after_help = MODES)]
struct ReprocessArgs {
    #[command(flatten)]
    target: Target,
    #[command(flatten)]
    mode: Mode,
}

#[derive(Args, Debug)]
#[command(after_help = MODES)]
struct SendArgs {
    #[command(flatten)]
    target: Target,
    #[command(flatten)]
    mode: Mode,
    /// The destination: a device of the partition (configured with
    /// the `devices` list of the configuration or --device on serve).
    #[arg(long, value_name = "AE")]
    to: String,
    /// Send only this SOP Instance UID (repeatable; default: every instance).
    #[arg(long = "instance", value_name = "UID")]
    instances: Vec<String>,
}

#[derive(Args, Debug)]
struct CheckArgs {
    #[command(flatten)]
    target: Target,
    /// Compare sizes only (do not read every file for its digest).
    #[arg(long)]
    no_digests: bool,
}

/// `imageserver rules ...`.
#[derive(Args, Debug)]
pub struct RulesArgs {
    #[command(subcommand)]
    command: RulesCommand,
}

#[derive(Subcommand, Debug)]
enum RulesCommand {
    /// Dry run: what the rules would do with a stored study, and why.
    /// Nothing is changed.
    Test(RulesTestArgs),
    /// Validate the rules file against the configuration.
    Check(RulesCheckArgs),
}

#[derive(Args, Debug)]
struct RulesTestArgs {
    #[command(flatten)]
    archive: ArchiveArgs,
    /// The Study Instance UID.
    #[arg(long, value_name = "UID")]
    study: String,
    /// Only this partition (default: every partition holding the study).
    #[arg(long, value_name = "AE")]
    partition: Option<String>,
    /// The rules file (default: rules_file of the configuration).
    #[arg(long, value_name = "FILE")]
    rules: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct RulesCheckArgs {
    #[command(flatten)]
    archive: ArchiveArgs,
    /// The rules file (default: rules_file of the configuration).
    #[arg(long, value_name = "FILE")]
    rules: Option<PathBuf>,
}

/// Runs `imageserver study ...`.
pub fn study(args: StudyArgs) -> Result<ExitCode> {
    match args.command {
        StudyCommand::Delete(args) => delete(args),
        StudyCommand::Edit(args) => edit(args),
        StudyCommand::Reprocess(args) => reprocess(args),
        StudyCommand::Send(args) => send(args),
        StudyCommand::Check(args) => check(args),
        StudyCommand::History(args) => history(args),
        StudyCommand::Migrate(args) => migrate(args),
        StudyCommand::Archive(args) => hsm(args, StudyRequest::Archive),
        StudyCommand::Purge(args) => hsm(args, StudyRequest::Purge),
        StudyCommand::Restore(args) => hsm(args, StudyRequest::Restore),
        StudyCommand::Compress(args) => compress(args),
    }
}

/// Runs `imageserver rules ...`.
pub fn rules(args: RulesArgs) -> Result<ExitCode> {
    match args.command {
        RulesCommand::Test(args) => rules_test(args),
        RulesCommand::Check(args) => rules_check(args),
    }
}

/// An opened archive with its study operations.
struct Opened {
    config: Config,
    archive: Archive,
    studies: Studies,
}

fn open(args: &ArchiveArgs) -> Result<Opened> {
    let config = load_config(args)?;
    let settings = config.validate()?;
    let archive = ServerBuilder::new(settings)
        .open()
        .context("cannot open the archive")?;
    let studies = archive.studies();
    Ok(Opened {
        config,
        archive,
        studies,
    })
}

pub(crate) fn partition<'a>(
    archive: &'a Archive,
    ae: Option<&str>,
) -> Result<&'a ArchivePartition> {
    match ae {
        None => Ok(archive.default_partition()),
        Some(ae) => archive.partition(ae).with_context(|| {
            format!(
                "no partition {ae:?}; partitions: {}",
                archive
                    .partitions()
                    .iter()
                    .map(|p| p.partition.ae_title.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }),
    }
}

fn study_uid(text: &str) -> Result<Uid> {
    Uid::parse(text).with_context(|| format!("{text:?} is not a valid Study Instance UID"))
}

fn actor(target: &Target) -> String {
    target.actor.clone().unwrap_or_else(|| {
        format!(
            "cli:{}",
            std::env::var("USER")
                .or_else(|_| std::env::var("LOGNAME"))
                .unwrap_or_else(|_| "unknown".to_string())
        )
    })
}

/// Turns an unknown study into the one clear message.
fn unknown(error: StudyError) -> anyhow::Error {
    match error {
        e @ StudyError::UnknownStudy { .. } => anyhow::anyhow!("{e}"),
        e => anyhow::Error::new(e),
    }
}

/// `YYYY-MM-DD HH:MM:SS UTC` of a time in ms since the Unix epoch.
fn timestamp(ms: i64) -> String {
    let seconds = ms.div_euclid(1000).rem_euclid(86_400);
    format!(
        "{} {:02}:{:02}:{:02} UTC",
        imageserver_core::rules::civil_date(ms),
        seconds / 3600,
        seconds / 60 % 60,
        seconds % 60
    )
}

/// Enqueues the request for the study, prints the work item's id and,
/// unless `--queue`, follows it until it completes (success) or fails
/// (exit status 1).
fn enqueue(
    opened: &Opened,
    partition: &ArchivePartition,
    uid: &Uid,
    request: StudyRequest,
    mode: Mode,
) -> Result<ExitCode> {
    let queue = opened.archive.work_queue();
    let kind = request.kind();
    let id = match queue.enqueue(request.work_item(partition.partition.id, uid.clone())) {
        Ok(id) => id,
        Err(WorkError::UnknownStudy { .. }) => bail!(
            "no study {uid} in partition {} (nothing enqueued)",
            partition.partition.ae_title
        ),
        Err(e) => return Err(e).with_context(|| format!("cannot enqueue {kind} for study {uid}")),
    };
    println!("enqueued {kind} work item {id} for study {uid}");
    if !mode.waits() {
        return Ok(ExitCode::SUCCESS);
    }
    let _ = std::io::Write::flush(&mut std::io::stdout());
    let mut last = None;
    let hint_at = std::time::Instant::now() + UNCLAIMED_HINT;
    let mut hinted = false;
    let item = queue
        .wait(id, std::time::Duration::from_millis(250), &mut |item| {
            if !hinted
                && item.attempt == 0
                && item.scheduled_at <= Timestamp::now()
                && std::time::Instant::now() >= hint_at
            {
                eprintln!(
                    "no engine has started work item {id} yet: is `imageserver serve` running \
                     on this database? Still waiting (Ctrl-C leaves the item queued; --now runs \
                     the operation in this process)"
                );
                hinted = true;
            }
            if last != Some((item.status, item.failure_count)) {
                match &item.failure_description {
                    Some(why) if item.failure_count > 0 => println!(
                        "work item {id}: {} (failures: {}, last: {why}; next try {})",
                        item.status, item.failure_count, item.scheduled_at
                    ),
                    _ => println!("work item {id}: {}", item.status),
                }
                last = Some((item.status, item.failure_count));
            }
        })
        .map_err(|e| match e {
            WorkError::NotFound { .. } => {
                anyhow::anyhow!("work item {id} was deleted before it finished")
            }
            e => anyhow::Error::new(e),
        })?;
    Ok(match item.status {
        WorkStatus::Completed => ExitCode::SUCCESS,
        _ => ExitCode::from(1),
    })
}

/// How long `--wait` waits for an engine to start the item before it says
/// that none may be running.
const UNCLAIMED_HINT: std::time::Duration = std::time::Duration::from_secs(15);

fn megabytes(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1_000_000.0)
}

fn delete(args: DeleteArgs) -> Result<ExitCode> {
    let opened = open(&args.target.archive)?;
    let partition = partition(&opened.archive, args.target.partition.as_deref())?;
    let uid = study_uid(&args.target.study_uid)?;
    let actor = actor(&args.target);
    if args.reason.trim().is_empty() {
        bail!("--reason must say why the study is deleted");
    }
    if args.mode.queued() {
        let request = StudyRequest::Delete {
            actor: actor.clone(),
            reason: args.reason.trim().to_string(),
        };
        return enqueue(&opened, partition, &uid, request, args.mode);
    }
    match opened
        .studies
        .delete(&partition.partition, &uid, &actor, args.reason.trim())
        .map_err(unknown)?
    {
        DeleteOutcome::Deleted(report) => println!(
            "deleted study {uid} from partition {}: {} instances in {} series ({}), {} files \
             removed; audit record by {actor}",
            partition.partition.ae_title,
            report.instances,
            report.series,
            megabytes(report.bytes),
            report.files_deleted
        ),
        DeleteOutcome::Finished(report) => println!(
            "study {uid}: its rows were already deleted by an interrupted run; removed the {} \
             remaining files",
            report.files_deleted
        ),
        DeleteOutcome::Absent => bail!(
            "no study {uid} in partition {} (nothing deleted)",
            partition.partition.ae_title
        ),
    }
    Ok(ExitCode::SUCCESS)
}

fn edit(args: EditArgs) -> Result<ExitCode> {
    let values = args
        .set
        .iter()
        .map(|text| EditValue::parse(text))
        .collect::<Result<Vec<_>, _>>()?;
    let opened = open(&args.target.archive)?;
    let partition = partition(&opened.archive, args.target.partition.as_deref())?;
    let uid = study_uid(&args.target.study_uid)?;
    let actor = actor(&args.target);
    if args.mode.queued() {
        let request = StudyRequest::Edit {
            actor: actor.clone(),
            reason: args.reason.clone(),
            values: args.set.clone(),
        };
        return enqueue(&opened, partition, &uid, request, args.mode);
    }
    match opened
        .studies
        .edit(&partition.partition, &uid, &values, &actor, &args.reason)
        .map_err(unknown)?
    {
        EditOutcome::Edited {
            edit,
            files_rewritten,
            files_already_edited,
            other_studies_of_patient,
        } => {
            println!(
                "edited study {uid} (edit {}): {} files rewritten, {} already edited",
                edit.id, files_rewritten, files_already_edited
            );
            for change in &edit.changes {
                println!(
                    "  {}: {:?} -> {:?}",
                    change.attribute,
                    change.old_value.as_deref().unwrap_or(""),
                    change.new_value
                );
            }
            if other_studies_of_patient > 0
                && edit.changes.iter().any(|c| c.attribute.is_patient_level())
            {
                println!(
                    "note: the patient has {other_studies_of_patient} other studies; their query \
                     answers show the new patient attributes, their files keep the old ones"
                );
            }
        }
        EditOutcome::Unchanged => {
            println!("study {uid} already has these values; nothing to do")
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn reprocess(args: ReprocessArgs) -> Result<ExitCode> {
    let opened = open(&args.target.archive)?;
    let partition = partition(&opened.archive, args.target.partition.as_deref())?;
    let uid = study_uid(&args.target.study_uid)?;
    if args.mode.queued() {
        let request = StudyRequest::Reprocess {
            actor: actor(&args.target),
        };
        return enqueue(&opened, partition, &uid, request, args.mode);
    }
    let report = opened
        .studies
        .reprocess(&partition.partition, &uid, &actor(&args.target))
        .map_err(unknown)?;
    println!(
        "reprocessed study {uid}: {} instance rows rebuilt from its files (there were {})",
        report.indexed_instances, report.removed_instances
    );
    for (path, reason) in &report.skipped {
        println!("  skipped {}: {reason}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// `study archive|purge|restore`.
fn hsm(args: ReprocessArgs, request: StudyRequest) -> Result<ExitCode> {
    let opened = open(&args.target.archive)?;
    let partition = partition(&opened.archive, args.target.partition.as_deref())?;
    let uid = study_uid(&args.target.study_uid)?;
    if args.mode.queued() {
        return enqueue(&opened, partition, &uid, request, args.mode);
    }
    let studies = &opened.studies;
    let p = &partition.partition;
    match request {
        StudyRequest::Archive => {
            let report = studies.archive(p, &uid).map_err(unknown)?;
            if report.written {
                println!(
                    "study {uid} archived: {} instances ({} bytes) in {} ({} bytes)",
                    report.instances,
                    report.instance_bytes,
                    report.path.display(),
                    report.pack_bytes
                );
            } else {
                println!(
                    "study {uid} is archived already in {}",
                    report.path.display()
                );
            }
        }
        StudyRequest::Purge => {
            let report = studies.purge(p, &uid).map_err(unknown)?;
            println!(
                "study {uid} is nearline: {} online files removed ({} bytes freed)",
                report.removed, report.bytes
            );
        }
        _ => {
            let report = studies.restore(p, &uid).map_err(unknown)?;
            if report.switched {
                println!(
                    "study {uid} restored: {} files ({} bytes) written and verified",
                    report.written, report.bytes
                );
            } else {
                println!("study {uid} is online");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn compress(args: CompressArgs) -> Result<ExitCode> {
    let opened = open(&args.target.archive)?;
    let partition = partition(&opened.archive, args.target.partition.as_deref())?;
    let uid = study_uid(&args.target.study_uid)?;
    let size = |opened: &Opened| -> Result<Option<u64>> {
        Ok(opened
            .archive
            .index()
            .study(partition.partition.id, &uid)?
            .map(|s| s.size_bytes))
    };
    if args.mode.queued() {
        let before = size(&opened)?;
        let code = enqueue(&opened, partition, &uid, StudyRequest::Compress, args.mode)?;
        if args.mode.waits() && code == ExitCode::SUCCESS {
            if let (Some(before), Some(after)) = (before, size(&opened)?) {
                println!(
                    "study {uid}: {before} bytes before, {after} after ({} saved)",
                    before.saturating_sub(after)
                );
            }
        }
        return Ok(code);
    }
    let report = opened
        .studies
        .compress(&partition.partition, &uid)
        .map_err(unknown)?;
    println!(
        "study {uid}: {} instances compressed ({} resumed), {} already compressed, {} left as \
         they are, {} not matching the index, {} replaced meanwhile; {} bytes before, {} after \
         ({} saved)",
        report.compressed,
        report.resumed,
        report.already_compressed,
        report.skipped,
        report.mismatched,
        report.replaced,
        report.bytes_before,
        report.bytes_after,
        report.saved()
    );
    Ok(ExitCode::SUCCESS)
}

fn migrate(args: MigrateArgs) -> Result<ExitCode> {
    let opened = open(&args.target.archive)?;
    let partition = partition(&opened.archive, args.target.partition.as_deref())?;
    let uid = study_uid(&args.target.study_uid)?;
    let to = opened
        .archive
        .index()
        .filesystems()?
        .into_iter()
        .find(|fs| fs.id.0.to_string() == args.to || fs.spec.path == Path::new(&args.to))
        .with_context(|| {
            format!(
                "no filesystem {:?} (`imageserver filesystem list`)",
                args.to
            )
        })?;
    if args.mode.queued() {
        let request = StudyRequest::Migrate { to: to.id };
        return enqueue(&opened, partition, &uid, request, args.mode);
    }
    let report = opened
        .studies
        .migrate(&partition.partition, &uid, to.id)
        .map_err(unknown)?;
    println!(
        "study {uid} is on {}: {} files ({} bytes) copied, {} source files removed",
        to.spec.path.display(),
        report.copied,
        report.bytes,
        report.removed
    );
    Ok(ExitCode::SUCCESS)
}

fn send(args: SendArgs) -> Result<ExitCode> {
    let opened = open(&args.target.archive)?;
    let partition = partition(&opened.archive, args.target.partition.as_deref())?;
    let uid = study_uid(&args.target.study_uid)?;
    let only = args
        .instances
        .iter()
        .map(|text| Uid::parse(text).with_context(|| format!("--instance {text:?}")))
        .collect::<Result<Vec<_>>>()?;
    let device = opened
        .studies
        .destination(&partition.partition, &args.to)
        .map_err(unknown)?;
    if args.mode.queued() {
        let mut uids = Vec::new();
        if !only.is_empty() {
            let series: std::collections::BTreeMap<Uid, Uid> = opened
                .archive
                .index()
                .study_instances(partition.partition.id, &uid)?
                .into_iter()
                .map(|i| (i.sop_instance_uid, i.series_uid))
                .collect();
            for sop in &only {
                let Some(series) = series.get(sop) else {
                    bail!("{sop} is not an instance of study {uid}");
                };
                uids.push(WorkUid::new(series.clone(), sop.clone()));
            }
        }
        let request = StudyRequest::Send {
            destination: device.ae_title.as_str().to_string(),
            instances: uids,
        };
        return enqueue(&opened, partition, &uid, request, args.mode);
    }
    let options = ScuOptions::new(partition.partition.ae_title.as_str());
    let report = opened
        .studies
        .send(
            &partition.partition,
            &uid,
            &device,
            (!only.is_empty()).then_some(&only[..]),
            &options,
            &actor(&args.target),
        )
        .map_err(unknown)?;
    let total = report.delivered.len() + report.warnings.len() + report.failed.len();
    println!(
        "sent {} of {total} instances of study {uid} to {}",
        report.delivered.len() + report.warnings.len(),
        report.destination
    );
    for (sop, why) in &report.warnings {
        println!("  warning {sop}: {why}");
    }
    for (sop, why) in &report.failed {
        println!("  failed {sop}: {why}");
    }
    for sop in &report.missing {
        println!("  not in the study: {sop}");
    }
    Ok(if report.is_complete() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn check(args: CheckArgs) -> Result<ExitCode> {
    let opened = open(&args.target.archive)?;
    let partition = partition(&opened.archive, args.target.partition.as_deref())?;
    let uid = study_uid(&args.target.study_uid)?;
    let report = opened
        .studies
        .check_integrity(
            &partition.partition,
            &uid,
            if args.no_digests {
                DigestCheck::None
            } else {
                DigestCheck::All
            },
        )
        .map_err(unknown)?;
    println!(
        "study {uid}: {} instances indexed, {} instance files",
        report.indexed, report.files
    );
    for finding in &report.findings {
        println!("  {finding}");
    }
    if report.is_clean() {
        println!("index and files agree");
        Ok(ExitCode::SUCCESS)
    } else {
        if report.needs_reprocess() {
            println!("run `imageserver study reprocess {uid}` to rebuild the rows from the files");
        }
        Ok(ExitCode::from(1))
    }
}

fn history(args: StudyOnlyArgs) -> Result<ExitCode> {
    let opened = open(&args.target.archive)?;
    let partition = partition(&opened.archive, args.target.partition.as_deref())?;
    let uid = study_uid(&args.target.study_uid)?;
    let store: &dyn StudyStore = &**opened.archive.index();
    let edits = store.edit_history(partition.partition.id, &uid)?;
    let audit = store.audit_log(partition.partition.id, &uid)?;
    if edits.is_empty() && audit.is_empty() && store.study(partition.partition.id, &uid)?.is_none()
    {
        bail!(
            "no study {uid} in partition {} and no history of one",
            partition.partition.ae_title
        );
    }
    println!("edits of study {uid}:");
    for edit in &edits {
        println!(
            "  edit {} {} by {} at {} ({}):",
            edit.id,
            edit.status.as_str(),
            edit.actor,
            timestamp(edit.requested_at_ms),
            if edit.reason.is_empty() {
                "no reason given"
            } else {
                &edit.reason
            }
        );
        for change in &edit.changes {
            println!(
                "    {}: {:?} -> {:?}",
                change.attribute,
                change.old_value.as_deref().unwrap_or(""),
                change.new_value
            );
        }
    }
    println!("audit log:");
    for entry in &audit {
        println!(
            "  {} {} by {}: {}",
            timestamp(entry.at_ms),
            entry.action,
            entry.actor,
            entry.details
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The rules file: `--rules`, else the configuration's `rules_file`
/// (relative to the configuration file).
pub(crate) fn rules_path(
    config: &Config,
    config_file: Option<&Path>,
    flag: Option<&Path>,
) -> Result<PathBuf> {
    if let Some(path) = flag {
        return Ok(path.to_path_buf());
    }
    let Some(path) = &config.rules_file else {
        bail!("no rules file: set rules_file in the configuration or pass --rules FILE");
    };
    Ok(match config_file.and_then(Path::parent) {
        Some(dir) if path.is_relative() => dir.join(path),
        _ => path.clone(),
    })
}

fn load_rules(opened: &Opened, config_file: Option<&Path>, flag: Option<&Path>) -> Result<RuleSet> {
    let path = rules_path(&opened.config, config_file, flag)?;
    let rules = RuleSet::from_file(&path)?;
    let deployment: Vec<(AeTitle, Vec<AeTitle>)> = opened
        .archive
        .partitions()
        .iter()
        .map(|p| {
            (
                p.partition.ae_title.clone(),
                p.settings
                    .devices
                    .iter()
                    .map(|d| d.ae_title.clone())
                    .collect(),
            )
        })
        .collect();
    for warning in rules
        .check_against(&deployment)
        .map_err(|e| e.in_file(&path))?
    {
        eprintln!("warning: {warning}");
    }
    Ok(rules)
}

fn rules_test(args: RulesTestArgs) -> Result<ExitCode> {
    let opened = open(&args.archive)?;
    let rules = load_rules(
        &opened,
        args.archive.config.as_deref(),
        args.rules.as_deref(),
    )?;
    let uid = study_uid(&args.study)?;
    let partitions: Vec<&ArchivePartition> = match &args.partition {
        Some(ae) => vec![partition(&opened.archive, Some(ae))?],
        None => opened.archive.partitions().iter().collect(),
    };
    let now = Timestamp::now().as_millis();
    let mut found = false;
    let index = opened.archive.index();
    for p in partitions {
        let Some(facts) = dry_run::study_facts(&**index, &**index, p.partition.id, &uid)? else {
            continue;
        };
        found = true;
        let evaluation = rules.evaluate(&p.partition.ae_title, &facts, now);
        print!("{}", dry_run::render(&evaluation, &facts));
    }
    if !found {
        bail!(
            "no study {uid} in {}",
            match &args.partition {
                Some(ae) => format!("partition {ae}"),
                None => "any partition".to_string(),
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn rules_check(args: RulesCheckArgs) -> Result<ExitCode> {
    let opened = open(&args.archive)?;
    let path = rules_path(
        &opened.config,
        args.archive.config.as_deref(),
        args.rules.as_deref(),
    )?;
    let rules = load_rules(
        &opened,
        args.archive.config.as_deref(),
        args.rules.as_deref(),
    )?;
    println!("{}: {} rules, valid", path.display(), rules.rules.len());
    for rule in &rules.rules {
        println!(
            "  {:?} ({}{}): {}",
            rule.name,
            rule.partition
                .as_ref()
                .map(|p| format!("partition {p}"))
                .unwrap_or_else(|| "every partition".to_string()),
            if rule.enabled { "" } else { ", disabled" },
            rule.actions
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
    Ok(ExitCode::SUCCESS)
}
