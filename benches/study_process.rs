//! StudyProcess scheduling latency (issue 5): from a study going quiet to
//! its StudyProcess item starting.
//!
//! An in-process server (`ServerBuilder`, the real ingest path, group
//! committer and WorkQueue engine) with `[workqueue]
//! study_process_delay_secs = D` and the default 5 s poll receives N
//! studies of K instances each through the storage SCU, one association per
//! study, one after the other. The StudyProcess kind is registered with a
//! processor that only records when it starts, so the figure is scheduling
//! alone: for each study, the time from its last C-STORE-RSP (client side)
//! to its item starting, minus D. That excess is what a study waits beyond
//! the quiet time it asked for (the engine's timer step, the claim, the
//! clock's granularity). Each study must run exactly once. Afterwards the
//! series metadata the real StudyProcess writes is written for every study
//! and timed (printed per instance).
//!
//! ```text
//! cargo bench --bench study_process                          # 20 studies × 5, D = 1 s
//! cargo bench --bench study_process -- --studies 50 --delay-secs 2 --backends sqlite
//! ```
//!
//! PostgreSQL comes from `IMAGESERVER_PG_URL`, or a throwaway cluster is
//! started with `scripts/pg.sh`. Without `--bench` (as `cargo test
//! --benches` runs it) a smoke run of 3 studies checks it all works.

#[path = "../tests/it/support/corpus.rs"]
#[allow(dead_code)]
mod corpus;
#[path = "support/pg.rs"]
mod pg;

use std::collections::HashMap;
use std::io::Read;
use std::net::TcpListener;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use imageserver_core::config::Config;
use imageserver_core::dicom::scu::{Destination, Outgoing, ScuOptions, StoreScu, Tally};
use imageserver_core::model::work::StudyLock;
use imageserver_core::model::Uid;
use imageserver_core::server::{open_index, Server, ServerBuilder};
use imageserver_core::workqueue::{
    KindProperties, ProcessContext, Processor, StepResult, WorkItem, WorkKind,
};

use corpus::{generate_corpus, CorpusShape, Instance, CT_IMAGE_STORAGE, EXPLICIT_VR_LITTLE_ENDIAN};
use pg::PgServer;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

const USAGE: &str = "\
usage: cargo bench --bench study_process -- [options]
  --studies N       studies per run (default 20; 3 without --bench)
  --instances K     instances per study (default 5)
  --delay-secs D    study_process_delay_secs (default 1)
  --backends A,B    sqlite, postgres (default both)";

struct Options {
    studies: usize,
    instances: usize,
    delay: u64,
    sqlite: bool,
    postgres: bool,
}

impl Options {
    fn parse() -> Result<Options> {
        let mut args = std::env::args().skip(1);
        let bench = std::env::args().any(|a| a == "--bench");
        let mut options = Options {
            studies: if bench { 20 } else { 3 },
            instances: 5,
            delay: 1,
            sqlite: true,
            postgres: true,
        };
        while let Some(arg) = args.next() {
            let mut value = || args.next().ok_or_else(|| format!("{arg} needs a value"));
            match arg.as_str() {
                "--bench" => {}
                "--studies" => options.studies = value()?.parse()?,
                "--instances" => options.instances = value()?.parse()?,
                "--delay-secs" => options.delay = value()?.parse()?,
                "--backends" => {
                    let list = value()?;
                    options.sqlite = list.split(',').any(|b| b == "sqlite");
                    options.postgres = list.split(',').any(|b| b == "postgres");
                }
                "--help" | "-h" => {
                    println!("{USAGE}");
                    std::process::exit(0);
                }
                other => return Err(format!("unknown argument {other}\n{USAGE}").into()),
            }
        }
        if options.studies == 0 || options.instances == 0 || options.delay == 0 {
            return Err("--studies, --instances and --delay-secs must be above zero".into());
        }
        Ok(options)
    }
}

fn main() {
    if let Err(error) = run() {
        eprintln!("study_process bench: {error}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let options = Options::parse()?;
    let tmp = tempfile::Builder::new()
        .prefix("imageserver-bench-study-process-")
        .tempdir_in(std::env::var_os("BENCH_TMPDIR").unwrap_or_else(|| "/tmp".into()))?;
    let corpus = generate_corpus(
        &tmp.path().join("corpus"),
        42,
        CorpusShape::uniform(options.studies, 1, options.instances, (32, 32)),
    );
    let mut rows = Vec::new();
    if options.sqlite {
        let data = tmp.path().join("sqlite");
        rows.push(("sqlite", measure(&options, &corpus, &data, None)?));
    }
    if options.postgres {
        let server = PgServer::get(tmp.path())?;
        let database = server.database()?;
        let data = tmp.path().join("postgres");
        rows.push((
            "postgres",
            measure(&options, &corpus, &data, Some(&database.url))?,
        ));
    }
    println!();
    println!(
        "StudyProcess start minus (last C-STORE-RSP + {} s), {} studies × {} instances:",
        options.delay, options.studies, options.instances
    );
    println!(
        "{:<9} {:>8} {:>8} {:>8} {:>8}",
        "backend", "p50 ms", "p95 ms", "max ms", "min ms"
    );
    for (backend, excess) in &rows {
        println!(
            "{:<9} {:>8.1} {:>8.1} {:>8.1} {:>8.1}",
            backend,
            percentile(excess, 0.50),
            percentile(excess, 0.95),
            percentile(excess, 1.0),
            percentile(excess, 0.0),
        );
    }
    Ok(())
}

/// Runs one server, sends every study, and returns each study's excess
/// latency in ms, sorted.
fn measure(
    options: &Options,
    corpus: &[Instance],
    data: &Path,
    db_url: Option<&str>,
) -> Result<Vec<f64>> {
    let mut toml = format!(
        "data_dir = {:?}\n[workqueue]\nstudy_process_delay_secs = {}\n",
        data.display().to_string(),
        options.delay
    );
    if let Some(url) = db_url {
        toml = format!("db = {url:?}\n{toml}");
    }
    let settings = Config::from_toml(&toml)?.validate()?;
    let ae = settings.partitions[0].spec.ae_title.as_str().to_string();
    let started = Recorder::default();
    let db = open_index(&settings.db_url)?;
    let archive = ServerBuilder::new(settings)
        .index(db.clone())
        .processor(
            WorkKind::STUDY_PROCESS,
            KindProperties::new().study_lock(StudyLock::Read),
            started.clone(),
        )
        .open()?;
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let server = Server::start_on(archive, vec![listener])?;
    let destination = Destination {
        ae_title: ae,
        host: "127.0.0.1".into(),
        port: server.local_addr().port(),
    };

    let mut quiet_since: HashMap<String, Instant> = HashMap::new();
    for study in corpus.chunks(options.instances) {
        let mut scu = StoreScu::connect(
            &destination,
            &ScuOptions::new("BENCH"),
            [(CT_IMAGE_STORAGE, EXPLICIT_VR_LITTLE_ENDIAN)],
        )?;
        for instance in study {
            let outcome = scu.store_item(&File(instance))?;
            if outcome.tally() != Tally::Completed {
                return Err(
                    format!("C-STORE of {} failed: {outcome:?}", instance.path.display()).into(),
                );
            }
        }
        quiet_since.insert(study[0].study_uid.clone(), Instant::now());
        scu.release()?;
    }

    // Every study's item runs once, after its delay plus at most the poll.
    let bound = Instant::now() + Duration::from_secs(options.delay + 30);
    while started.len() < quiet_since.len() {
        if Instant::now() > bound {
            return Err(format!(
                "only {} of {} studies were processed in time",
                started.len(),
                quiet_since.len()
            )
            .into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // Give a duplicate run the chance to show up.
    std::thread::sleep(Duration::from_millis(500));

    // What the real StudyProcess adds per study: its series metadata.
    let studies = server.archive().studies();
    let partition = server.archive().default_partition().partition.clone();
    let started_at = Instant::now();
    let mut instances = 0;
    for study in quiet_since.keys() {
        let uid = Uid::parse(study).map_err(|e| format!("{study}: {e}"))?;
        instances += studies.write_series_metadata(&partition, &uid)?.instances;
    }
    let metadata = started_at.elapsed();
    eprintln!(
        "series metadata: {} studies, {instances} instances in {:.1} ms ({:.0} µs per instance)",
        quiet_since.len(),
        metadata.as_secs_f64() * 1000.0,
        metadata.as_secs_f64() * 1e6 / instances.max(1) as f64
    );
    server.shutdown(Duration::from_secs(10));
    let runs = started.runs.lock().expect("lock");
    let delay = Duration::from_secs(options.delay);
    let mut excess = Vec::with_capacity(quiet_since.len());
    for (study, quiet) in &quiet_since {
        let starts = runs.get(study).map(Vec::as_slice).unwrap_or_default();
        if starts.len() != 1 {
            return Err(format!("study {study} was processed {} times", starts.len()).into());
        }
        // The item's due time is set at commit, just before the response
        // reaches the client: a start up to a few ms early is expected.
        let waited = starts[0].saturating_duration_since(*quiet);
        let excess_ms = (waited.as_secs_f64() - delay.as_secs_f64()) * 1000.0;
        if excess_ms < -50.0 {
            return Err(format!("study {study} was processed {waited:?} after going quiet").into());
        }
        excess.push(excess_ms);
    }
    excess.sort_by(f64::total_cmp);
    Ok(excess)
}

/// The StudyProcess stand-in: records when each study's item starts.
#[derive(Default, Clone)]
struct Recorder {
    runs: Arc<Mutex<HashMap<String, Vec<Instant>>>>,
}

impl Recorder {
    fn len(&self) -> usize {
        self.runs.lock().expect("lock").len()
    }
}

impl Processor for Recorder {
    fn process(&self, item: &WorkItem, _ctx: &ProcessContext<'_>) -> StepResult {
        let now = Instant::now();
        let study = item.study_uid().map(|u| u.to_string()).unwrap_or_default();
        self.runs
            .lock()
            .expect("lock")
            .entry(study)
            .or_default()
            .push(now);
        StepResult::Done
    }
}

/// A generated Part 10 file to send.
struct File<'a>(&'a Instance);

impl Outgoing for File<'_> {
    fn sop_class_uid(&self) -> &str {
        CT_IMAGE_STORAGE
    }

    fn sop_instance_uid(&self) -> &str {
        &self.0.sop_instance_uid
    }

    fn transfer_syntax_uid(&self) -> &str {
        EXPLICIT_VR_LITTLE_ENDIAN
    }

    fn open(
        &self,
    ) -> std::result::Result<Box<dyn Read + Send + '_>, Box<dyn std::error::Error + Send + Sync>>
    {
        Ok(Box::new(std::io::BufReader::new(std::fs::File::open(
            &self.0.path,
        )?)))
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}
