//! `imageserver workqueue`: list, show and steer work items in the database
//! a running server uses (any backend, also while it runs), and a hidden
//! test engine for the integration tests and the benchmark.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use imageserver_core::open_index;
use imageserver_core::workqueue::{
    Engine, EngineConfig, KindProperties, ProcessContext, Registry, RetryPolicy, StepResult,
    StudyLock, Timestamp, WorkError, WorkFilter, WorkItem, WorkItemId, WorkKind, WorkPriority,
    WorkStatus, WorkStore,
};

use crate::{load_config, ArchiveArgs};

#[derive(Args, Debug)]
pub struct WorkqueueArgs {
    #[command(subcommand)]
    command: WorkqueueCommand,
}

#[derive(Subcommand, Debug)]
enum WorkqueueCommand {
    /// List work items, oldest first.
    List(ListArgs),
    /// Show one work item with its instances.
    Show(ShowArgs),
    /// Make a failed item run again (its failure count is kept).
    Retry(IdArgs),
    /// Delete an item that is not running.
    Delete(IdArgs),
    /// Change an item's priority (low, medium, high, stat).
    #[command(alias = "reprioritize")]
    Reprioritise(ReprioritiseArgs),
    /// Make a waiting item due at another time: later (postpone) or sooner.
    #[command(visible_alias = "postpone")]
    Reschedule(RescheduleArgs),
    /// Run an engine with test processors (integration tests, benchmark).
    #[command(hide = true)]
    RunTestEngine(TestEngineArgs),
}

#[derive(Args, Debug)]
struct ListArgs {
    #[command(flatten)]
    archive: ArchiveArgs,
    /// Only items in these states (idle, pending, in_progress, completed,
    /// failed); repeatable or comma-separated.
    #[arg(long, value_name = "STATUS", value_delimiter = ',')]
    status: Vec<String>,
    /// Only items of these types (e.g. study_process); repeatable or
    /// comma-separated.
    #[arg(long = "type", value_name = "TYPE", value_delimiter = ',')]
    kind: Vec<String>,
    /// Only items on this study.
    #[arg(long, value_name = "UID")]
    study: Option<String>,
    /// At most this many items.
    #[arg(long, value_name = "N")]
    limit: Option<usize>,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct ShowArgs {
    #[command(flatten)]
    archive: ArchiveArgs,
    /// The item's id (as `list` prints it).
    id: i64,
    /// JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct IdArgs {
    #[command(flatten)]
    archive: ArchiveArgs,
    /// The item's id (as `list` prints it).
    id: i64,
}

#[derive(Args, Debug)]
struct ReprioritiseArgs {
    #[command(flatten)]
    archive: ArchiveArgs,
    /// The item's id (as `list` prints it).
    id: i64,
    /// low, medium, high or stat.
    priority: String,
}

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("when").required(true).args(["after", "at", "now"])))]
struct RescheduleArgs {
    #[command(flatten)]
    archive: ArchiveArgs,
    /// The item's id (as `list` prints it).
    id: i64,
    /// Due this long from now: a number and s, m, h or d (e.g. 90s, 2h).
    #[arg(long = "in", value_name = "DURATION")]
    after: Option<String>,
    /// Due at this UTC time: YYYY-MM-DD HH:MM or YYYY-MM-DD HH:MM:SS (a T may
    /// stand for the space).
    #[arg(long, value_name = "TIME")]
    at: Option<String>,
    /// Due now.
    #[arg(long)]
    now: bool,
}

#[derive(Args, Debug)]
struct TestEngineArgs {
    #[command(flatten)]
    archive: ArchiveArgs,
    /// Worker threads.
    #[arg(long, default_value_t = 4)]
    threads: usize,
    /// Lease in milliseconds.
    #[arg(long, default_value_t = 30_000)]
    lease_ms: u64,
    /// Poll interval in milliseconds.
    #[arg(long, default_value_t = 1_000)]
    poll_ms: u64,
    /// Append a line per run start and end here.
    #[arg(long, value_name = "FILE")]
    spans: Option<PathBuf>,
    /// Every item hangs after it started (until the process is killed).
    #[arg(long)]
    hang: bool,
    /// Exit once this many runs have finished in this process.
    #[arg(long, value_name = "N")]
    exit_after: Option<usize>,
}

pub fn workqueue(args: WorkqueueArgs) -> Result<ExitCode> {
    match args.command {
        WorkqueueCommand::List(args) => list(args),
        WorkqueueCommand::Show(args) => show(args),
        WorkqueueCommand::Retry(args) => {
            let store = open_store(&args.archive)?;
            let id = WorkItemId(args.id);
            operator(store.retry(id), || {
                println!("work item {id} is pending again");
            })
        }
        WorkqueueCommand::Delete(args) => {
            let store = open_store(&args.archive)?;
            let id = WorkItemId(args.id);
            operator(store.delete(id), || println!("work item {id} deleted"))
        }
        WorkqueueCommand::Reprioritise(args) => {
            let Some(priority) = WorkPriority::parse(&args.priority) else {
                bail!(
                    "unknown priority {:?}: expected low, medium, high or stat",
                    args.priority
                );
            };
            let store = open_store(&args.archive)?;
            let id = WorkItemId(args.id);
            operator(store.reprioritise(id, priority), || {
                println!("work item {id} now has priority {priority}");
            })
        }
        WorkqueueCommand::Reschedule(args) => {
            let now = Timestamp::now();
            let at = match (&args.after, &args.at) {
                (Some(text), _) => now.after(parse_duration(text)?),
                (None, Some(text)) => parse_utc(text)?,
                (None, None) => now,
            };
            let store = open_store(&args.archive)?;
            let id = WorkItemId(args.id);
            operator(store.reschedule(id, at), || {
                println!("work item {id} is now due at {at}");
            })
        }
        WorkqueueCommand::RunTestEngine(args) => run_test_engine(args),
    }
}

/// `90s`, `10m`, `2h`, `1d`.
pub(crate) fn parse_duration(text: &str) -> Result<Duration> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => bail!("{text:?}: expected a number and s, m, h or d (e.g. 90s, 2h)"),
    };
    let number: u64 = number
        .parse()
        .with_context(|| format!("{text:?}: expected a number and s, m, h or d"))?;
    number
        .checked_mul(seconds)
        .filter(|s| *s <= 366 * 86_400)
        .map(Duration::from_secs)
        .with_context(|| format!("{text:?}: at most a year"))
}

/// `YYYY-MM-DD HH:MM[:SS]` (or with a `T`, and an optional `Z`), UTC.
pub(crate) fn parse_utc(text: &str) -> Result<Timestamp> {
    let bad = || anyhow::anyhow!("{text:?}: expected a UTC time as YYYY-MM-DD HH:MM[:SS]");
    let trimmed = text.trim().trim_end_matches('Z');
    let (date, time) = trimmed.split_once([' ', 'T']).ok_or_else(bad)?;
    let days = imageserver_core::rules::days_from_civil_text(&date.replace('-', ""))
        .filter(|_| date.len() == 10)
        .ok_or_else(bad)?;
    let parts: Vec<&str> = time.split(':').collect();
    if !(2..=3).contains(&parts.len()) || parts.iter().any(|p| p.len() != 2) {
        return Err(bad());
    }
    let field = |i: usize, max: i64| -> Result<i64> {
        let value: i64 = parts
            .get(i)
            .map_or(Ok(0), |p| p.parse())
            .map_err(|_| bad())?;
        if value > max {
            return Err(bad());
        }
        Ok(value)
    };
    let seconds = field(0, 23)? * 3600 + field(1, 59)? * 60 + field(2, 59)?;
    Ok(Timestamp::from_millis((days * 86_400 + seconds) * 1000))
}

fn open_store(args: &ArchiveArgs) -> Result<Arc<dyn WorkStore>> {
    let config = load_config(args)?;
    let url = config.db_url();
    let database = open_index(&url).with_context(|| {
        format!(
            "cannot open the index database {}",
            imageserver_core::db::redact_url(&url)
        )
    })?;
    let store: Arc<dyn WorkStore> = database;
    Ok(store)
}

/// Prints the outcome of an operator action: refusals (unknown id, illegal
/// transition) are a one-line message and exit code 1.
fn operator(result: Result<(), WorkError>, done: impl FnOnce()) -> Result<ExitCode> {
    match result {
        Ok(()) => {
            done();
            Ok(ExitCode::SUCCESS)
        }
        Err(e @ (WorkError::NotFound { .. } | WorkError::IllegalTransition { .. })) => {
            eprintln!("imageserver: {e}");
            Ok(ExitCode::from(1))
        }
        Err(e) => Err(e.into()),
    }
}

fn list(args: ListArgs) -> Result<ExitCode> {
    let statuses = args
        .status
        .iter()
        .map(|s| {
            WorkStatus::parse(s.trim()).with_context(|| {
                format!(
                    "unknown status {s:?}: expected idle, pending, in_progress, completed or failed"
                )
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let kinds = args
        .kind
        .iter()
        .map(|k| WorkKind::new(k.trim()).map_err(anyhow::Error::from))
        .collect::<Result<Vec<_>>>()?;
    let study_uid = args
        .study
        .as_deref()
        .map(imageserver_core::model::Uid::parse)
        .transpose()
        .context("--study")?;
    let store = open_store(&args.archive)?;
    let items = store.list(&WorkFilter {
        statuses,
        kinds,
        partition: None,
        study_uid,
        limit: args.limit,
    })?;
    let mut out = std::io::stdout().lock();
    if args.json {
        for item in &items {
            writeln!(
                out,
                "{}",
                imageserver_core::services::admin::work_item_json(item, false)
            )?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    writeln!(
        out,
        "{:>8}  {:<16} {:<11} {:<8} {:>4} {:>3}  {:<24}  STUDY",
        "ID", "TYPE", "STATUS", "PRIORITY", "FAIL", "TRY", "SCHEDULED"
    )?;
    for item in &items {
        writeln!(
            out,
            "{:>8}  {:<16} {:<11} {:<8} {:>4} {:>3}  {:<24}  {}",
            item.id,
            item.kind,
            item.status,
            item.priority,
            item.failure_count,
            item.attempt,
            item.scheduled_at,
            item.study_uid().map_or("-", |u| u.as_str()),
        )?;
    }
    writeln!(out, "{} item(s)", items.len())?;
    Ok(ExitCode::SUCCESS)
}

fn show(args: ShowArgs) -> Result<ExitCode> {
    let store = open_store(&args.archive)?;
    let id = WorkItemId(args.id);
    let Some(item) = store.get(id)? else {
        eprintln!("imageserver: {}", WorkError::NotFound { id });
        return Ok(ExitCode::from(1));
    };
    if args.json {
        println!(
            "{}",
            imageserver_core::services::admin::work_item_json(&item, true)
        );
        return Ok(ExitCode::SUCCESS);
    }
    let optional = |t: Option<imageserver_core::workqueue::Timestamp>| {
        t.map_or_else(|| "-".to_string(), |t| t.to_string())
    };
    println!("work item {}", item.id);
    println!("  type          {}", item.kind);
    println!("  status        {}", item.status);
    println!("  priority      {}", item.priority);
    println!("  partition     {}", item.partition.0);
    println!(
        "  study         {}",
        item.study_uid().map_or("-", |u| u.as_str())
    );
    println!("  scheduled     {}", item.scheduled_at);
    println!("  expires       {}", optional(item.expires_at));
    println!("  failures      {}", item.failure_count);
    println!(
        "  last failure  {}",
        item.failure_description.as_deref().unwrap_or("-")
    );
    println!("  attempt       {}", item.attempt);
    println!(
        "  processor     {}",
        item.processor_id.as_deref().unwrap_or("-")
    );
    println!("  lease until   {}", optional(item.lease_expires_at));
    println!("  created       {}", item.created_at);
    println!("  updated       {}", item.updated_at);
    println!("  payload       {}", item.payload);
    println!("  instances     {}", item.uid_count);
    for uid in &item.uids {
        println!(
            "    {} (series {}){}",
            uid.sop_instance_uid,
            uid.series_uid,
            if uid.failed { " failed" } else { "" }
        );
    }
    Ok(ExitCode::SUCCESS)
}

// ------------------------------------------------------------ test engine

/// The kinds the test engine runs: `test_write` (write lock on the study)
/// and `test_read` (read lock), both driven by the payload:
///
/// - `sleep_ms`: sleep this long;
/// - `wait_for`: wait (at most two minutes) until this file exists;
/// - `fail`: fail permanently with this reason;
/// - `retry_until_attempt`: ask for a retry until this attempt.
///
/// Each run appends `start <item> <attempt> <pid> <µs> <study>` and, unless
/// it hangs, `end <item> <attempt> <pid> <start µs> <end µs> <study>` to
/// `--spans`; lines are single `write`s to an O_APPEND file, so processes
/// do not interleave them.
struct TestProcessor {
    spans: Option<Arc<std::fs::File>>,
    hang: bool,
    finished: Arc<std::sync::atomic::AtomicUsize>,
}

fn now_us() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0)
}

impl TestProcessor {
    fn record(&self, line: String) {
        if let Some(file) = &self.spans {
            let _ = (&**file).write_all(line.as_bytes());
        }
    }
}

impl imageserver_core::workqueue::Processor for TestProcessor {
    fn process(&self, item: &WorkItem, ctx: &ProcessContext<'_>) -> StepResult {
        let payload: serde_json::Value =
            serde_json::from_str(&item.payload).unwrap_or(serde_json::Value::Null);
        let study = item.study_uid().map_or("-", |u| u.as_str()).to_string();
        let pid = std::process::id();
        let start = now_us();
        self.record(format!(
            "start {} {} {pid} {start} {study}\n",
            item.id,
            ctx.attempt()
        ));
        if self.hang {
            loop {
                std::thread::sleep(Duration::from_secs(1));
            }
        }
        let mut result = StepResult::Done;
        if let Some(ms) = payload.get("sleep_ms").and_then(serde_json::Value::as_u64) {
            std::thread::sleep(Duration::from_millis(ms));
        }
        if let Some(path) = payload.get("wait_for").and_then(serde_json::Value::as_str) {
            let deadline = Instant::now() + Duration::from_secs(120);
            while !std::path::Path::new(path).exists() {
                if Instant::now() > deadline {
                    result = StepResult::Fail(format!("{path} never appeared"));
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        if let Some(until) = payload
            .get("retry_until_attempt")
            .and_then(serde_json::Value::as_u64)
        {
            if u64::from(ctx.attempt()) < until {
                result = StepResult::RetryAfter(
                    Duration::ZERO,
                    format!("attempt {} asks for a retry", ctx.attempt()),
                );
            }
        }
        if let Some(reason) = payload.get("fail").and_then(serde_json::Value::as_str) {
            result = StepResult::Fail(reason.to_string());
        }
        self.record(format!(
            "end {} {} {pid} {start} {} {study}\n",
            item.id,
            ctx.attempt(),
            now_us()
        ));
        self.finished.fetch_add(1, Ordering::SeqCst);
        result
    }
}

fn run_test_engine(args: TestEngineArgs) -> Result<ExitCode> {
    let store = open_store(&args.archive)?;
    let spans = match &args.spans {
        Some(path) => Some(Arc::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("opening {}", path.display()))?,
        )),
        None => None,
    };
    let finished = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let processor = Arc::new(TestProcessor {
        spans,
        hang: args.hang,
        finished: finished.clone(),
    });
    let retry = RetryPolicy {
        max_failures: 10,
        failure_delay: Duration::from_millis(50),
        backoff: 2.0,
        max_delay: Duration::from_secs(1),
    };
    let mut registry = Registry::new();
    registry.register_shared(
        WorkKind::new("test_write")?,
        KindProperties::new()
            .study_lock(StudyLock::Write)
            .retry(retry.clone()),
        processor.clone(),
    );
    registry.register_shared(
        WorkKind::new("test_read")?,
        KindProperties::new()
            .study_lock(StudyLock::Read)
            .retry(retry),
        processor,
    );
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, stop.clone()).context("installing signal handlers")?;
    }
    let engine = Engine::start(
        store,
        registry,
        EngineConfig {
            threads: args.threads,
            high_priority_threads: 0,
            memory_heavy_threads: args.threads,
            lease: Duration::from_millis(args.lease_ms),
            poll: Duration::from_millis(args.poll_ms),
            ..EngineConfig::default()
        },
    )?;
    println!("ready {}", engine.processor_id());
    let _ = std::io::stdout().flush();
    while !stop.load(Ordering::Relaxed)
        && args
            .exit_after
            .is_none_or(|n| finished.load(Ordering::SeqCst) < n)
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    let report = engine.shutdown(Duration::from_secs(30));
    println!(
        "stopped: {} runs, {} released, {} abandoned",
        finished.load(Ordering::SeqCst),
        report.released,
        report.abandoned
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_utc_times_parse() {
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
        assert_eq!(parse_duration("1d").unwrap(), Duration::from_secs(86_400));
        for bad in ["", "h", "2", "2w", "-1h", "9999d", "2 h"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
        let at = parse_utc("2030-01-02 03:04:05").unwrap();
        assert_eq!(at.as_millis(), 1_893_553_445_000);
        assert_eq!(
            parse_utc("2030-01-02T03:04Z").unwrap().as_millis(),
            1_893_553_440_000
        );
        for bad in [
            "2030-01-02",
            "2030-1-2 03:04",
            "2030-01-02 24:00",
            "2030-13-02 03:04",
            "x",
        ] {
            assert!(parse_utc(bad).is_err(), "{bad:?}");
        }
    }
}
