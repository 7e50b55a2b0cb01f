//! WorkQueue benchmark (issue 5): claim-and-complete throughput of no-op
//! items.
//!
//! - **In-process:** one engine (`Engine::start`) with a no-op processor,
//!   with 1, 4 and 10 worker threads, on SQLite (a file in a temporary
//!   directory) and on PostgreSQL (a fresh database per run).
//! - **Two processes:** two `imageserver workqueue run-test-engine`
//!   processes on one PostgreSQL database, against one such process, each
//!   with 10 threads (the cluster case: claims race through `FOR UPDATE
//!   SKIP LOCKED`).
//!
//! Each run enqueues N items first (not timed), starts the engine(s), and
//! times until the database shows no item waiting or running; the figure
//! is N divided by that time (a process's start-up, tens of milliseconds,
//! is included in the two-process runs). Every item costs one claim share
//! and one completion transaction, each durable (fsync'd on SQLite with
//! `synchronous=FULL`, and on PostgreSQL with its default
//! `synchronous_commit`).
//!
//! PostgreSQL comes from `IMAGESERVER_PG_URL`, or a throwaway cluster is
//! started with `scripts/pg.sh` (and removed afterwards).
//!
//! ```text
//! cargo bench --bench workqueue                              # 2000 items per run
//! cargo bench --bench workqueue -- --items 20000 --threads 1,4,10,16
//! cargo bench --bench workqueue -- --backends sqlite --no-processes
//! ```
//!
//! Without `--bench` (as `cargo test --benches` runs it) a smoke run of 50
//! items per configuration checks that everything completes.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use imageserver_core::db::postgres::PgIndex;
use imageserver_core::db::sqlite::SqliteIndex;
use imageserver_core::db::{Database, IndexStore};
use imageserver_core::model::{AeTitle, DuplicatePolicy, FolderName, PartitionId, PartitionSpec};
use imageserver_core::workqueue::{
    Engine, EngineConfig, KindProperties, NewWorkItem, ProcessContext, Registry, StepResult,
    WorkFilter, WorkItem, WorkKind, WorkStatus, WorkStore,
};

#[path = "support/pg.rs"]
mod pg;

use pg::PgServer;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

const USAGE: &str = "\
usage: cargo bench --bench workqueue -- [options]
  --items N            items per run (default 2000; 50 without --bench)
  --threads A,B,..     worker threads of the in-process runs (default 1,4,10)
  --backends A,B       sqlite, postgres (default both)
  --no-processes       skip the two-process PostgreSQL runs
  --process-threads N  worker threads per engine process (default 10)";

struct Options {
    items: usize,
    threads: Vec<usize>,
    sqlite: bool,
    postgres: bool,
    processes: bool,
    process_threads: usize,
}

impl Options {
    fn parse() -> Result<Options> {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let bench = args.iter().any(|a| a == "--bench");
        let mut options = Options {
            items: if bench { 2000 } else { 50 },
            threads: vec![1, 4, 10],
            sqlite: true,
            postgres: true,
            processes: true,
            process_threads: 10,
        };
        let mut args = args.into_iter().filter(|a| a != "--bench");
        while let Some(flag) = args.next() {
            let mut value = || args.next().ok_or(format!("{flag} needs a value\n{USAGE}"));
            match flag.as_str() {
                "--items" => options.items = value()?.parse()?,
                "--threads" => {
                    options.threads = value()?
                        .split(',')
                        .map(str::parse)
                        .collect::<std::result::Result<_, _>>()?;
                }
                "--backends" => {
                    let backends = value()?;
                    options.sqlite = backends.split(',').any(|b| b == "sqlite");
                    options.postgres = backends.split(',').any(|b| b == "postgres");
                }
                "--no-processes" => options.processes = false,
                "--process-threads" => options.process_threads = value()?.parse()?,
                "--help" | "-h" => {
                    println!("{USAGE}");
                    std::process::exit(0);
                }
                other => return Err(format!("unknown argument {other}\n{USAGE}").into()),
            }
        }
        Ok(options)
    }
}

fn main() {
    if let Err(error) = run() {
        eprintln!("workqueue bench: {error}");
        std::process::exit(1);
    }
}

/// One measured run.
struct Figure {
    backend: &'static str,
    mode: String,
    threads: usize,
    items: usize,
    elapsed: Duration,
}

fn run() -> Result<()> {
    let options = Options::parse()?;
    let tmp = tempfile::Builder::new()
        .prefix("imageserver-bench-workqueue-")
        .tempdir_in(std::env::var_os("BENCH_TMPDIR").unwrap_or_else(|| "/tmp".into()))?;
    let mut figures = Vec::new();
    if options.sqlite {
        for (n, &threads) in options.threads.iter().enumerate() {
            let path = tmp.path().join(format!("sqlite-{n}.db"));
            let db: Arc<dyn Database> = Arc::new(SqliteIndex::open(&path)?);
            figures.push(in_process(db, "sqlite", threads, options.items)?);
            report(figures.last().expect("just pushed"));
        }
    }
    if options.postgres {
        let server = PgServer::get(tmp.path())?;
        for &threads in &options.threads {
            let database = server.database()?;
            let db: Arc<dyn Database> = Arc::new(PgIndex::connect(&database.url)?);
            figures.push(in_process(db, "postgres", threads, options.items)?);
            report(figures.last().expect("just pushed"));
        }
        if options.processes {
            for processes in [1, 2] {
                let database = server.database()?;
                figures.push(in_processes(
                    &database.url,
                    processes,
                    options.process_threads,
                    options.items,
                )?);
                report(figures.last().expect("just pushed"));
            }
        }
    }
    println!();
    println!(
        "{:<9} {:<22} {:>7} {:>7} {:>9} {:>10}",
        "backend", "mode", "threads", "items", "seconds", "items/s"
    );
    for f in &figures {
        println!(
            "{:<9} {:<22} {:>7} {:>7} {:>9.2} {:>10.0}",
            f.backend,
            f.mode,
            f.threads,
            f.items,
            f.elapsed.as_secs_f64(),
            f.items as f64 / f.elapsed.as_secs_f64()
        );
    }
    Ok(())
}

fn report(f: &Figure) {
    eprintln!(
        "{} {} threads={} items={}: {:.2} s, {:.0} items/s",
        f.backend,
        f.mode,
        f.threads,
        f.items,
        f.elapsed.as_secs_f64(),
        f.items as f64 / f.elapsed.as_secs_f64()
    );
}

fn partition(db: &dyn IndexStore) -> Result<PartitionId> {
    Ok(db.ensure_partition(&PartitionSpec {
        ae_title: AeTitle::parse("BENCH")?,
        folder: FolderName::parse("BENCH")?,
        description: String::new(),
        port: 0,
        accept_unknown_devices: true,
        duplicate_policy: DuplicatePolicy::default(),
        pn_case_insensitive: true,
    })?)
}

fn enqueue(db: &dyn Database, kind: &WorkKind, items: usize) -> Result<()> {
    let partition = partition(db)?;
    for _ in 0..items {
        db.enqueue(&NewWorkItem::new(kind.clone(), partition))?;
    }
    Ok(())
}

/// Waits until no item is waiting or running (polling every 5 ms).
fn wait_drained(store: &dyn WorkStore, bound: Duration) -> Result<()> {
    let deadline = Instant::now() + bound;
    let open = WorkFilter {
        statuses: vec![
            WorkStatus::Idle,
            WorkStatus::Pending,
            WorkStatus::InProgress,
        ],
        limit: Some(1),
        ..WorkFilter::default()
    };
    while !store.list(&open)?.is_empty() {
        if Instant::now() > deadline {
            return Err("the queue did not drain in time".into());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

fn in_process(
    db: Arc<dyn Database>,
    backend: &'static str,
    threads: usize,
    items: usize,
) -> Result<Figure> {
    let kind = WorkKind::new("bench_noop")?;
    enqueue(&*db, &kind, items)?;
    let runs = Arc::new(AtomicUsize::new(0));
    let mut registry = Registry::new();
    {
        let runs = runs.clone();
        registry.register(
            kind,
            KindProperties::new(),
            move |_: &WorkItem, _: &ProcessContext<'_>| {
                runs.fetch_add(1, Ordering::Relaxed);
                StepResult::Done
            },
        );
    }
    let store: Arc<dyn WorkStore> = db.clone();
    let started = Instant::now();
    let engine = Engine::start(
        store.clone(),
        registry,
        EngineConfig {
            threads,
            high_priority_threads: 0,
            memory_heavy_threads: threads,
            lease: Duration::from_secs(60),
            poll: Duration::from_secs(1),
            ..EngineConfig::default()
        },
    )?;
    wait_drained(&*store, Duration::from_secs(3600))?;
    let elapsed = started.elapsed();
    engine.shutdown(Duration::from_secs(10));
    if runs.load(Ordering::Relaxed) != items {
        return Err(format!("{} runs for {items} items", runs.load(Ordering::Relaxed)).into());
    }
    Ok(Figure {
        backend,
        mode: "in-process engine".into(),
        threads,
        items,
        elapsed,
    })
}

fn in_processes(url: &str, processes: usize, threads: usize, items: usize) -> Result<Figure> {
    let db = PgIndex::connect(url)?;
    enqueue(&db, &WorkKind::new("test_write")?, items)?;
    let started = Instant::now();
    let mut children: Vec<Child> = Vec::new();
    for _ in 0..processes {
        children.push(
            Command::new(env!("CARGO_BIN_EXE_imageserver"))
                .args(["workqueue", "run-test-engine", "--threads"])
                .arg(threads.to_string())
                .args(["--poll-ms", "200", "--db", url])
                .env("IMAGESERVER_LOG", "warn")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .spawn()?,
        );
    }
    let drained = wait_drained(&db, Duration::from_secs(3600));
    let elapsed = started.elapsed();
    for child in &mut children {
        let pid = libc::pid_t::try_from(child.id())?;
        // SAFETY: kill(2) on our own child has no memory effects.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    for child in &mut children {
        child.wait()?;
    }
    drained?;
    Ok(Figure {
        backend: "postgres",
        mode: format!("{processes} engine process(es)"),
        threads,
        items,
        elapsed,
    })
}
