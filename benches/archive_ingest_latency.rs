//! Ingest latency while the watermark service migrates (issue 13): p50 and
//! p99 of per-instance C-STORE latency on one association (the pynetdicom
//! probe `benches/archive_ingest_latency.py` times each request to its
//! response), idle and while the server's own watermark service migrates a
//! study set from tier 1 to tier 2, in the same run.
//!
//! An in-process server (`ServerBuilder`, the real acceptor, ingest, group
//! committer, work queue and scheduler, SQLite index) gets a tier-1 and a
//! tier-2 filesystem; `--studies` studies are imported onto tier 1. Then:
//!
//! 1. **idle**: the probe stores a fresh study (`--probe` instances);
//! 2. **migrating**: tier 1's quota is set so that it stands above its high
//!    watermark with a low watermark of 5 %; within a refresh
//!    (`filesystem_refresh_secs = 1`) the watermark service queues
//!    `migrate_study` items and the engine runs them (copy, fsync, digest
//!    check, switch, remove); as soon as the first is queued, the probe
//!    stores another fresh study;
//! 3. **idle again** once every migration is done, a third fresh study.
//!
//! The migrating figure counts only if migrations ran for the whole probe
//! (the run says how many studies moved during it).
//!
//! ```text
//! cargo bench --bench archive_ingest_latency                    # 40 studies x 40 CT-sized (512x512) instances, 300 probed per phase
//! cargo bench --bench archive_ingest_latency -- --studies 80 --instances 40 --probe 500 --dir /data/bench
//! ```
//!
//! Without `--bench` (as `cargo test --benches` runs it) a smoke run on a
//! tiny set checks that it all works.

#[path = "../tests/it/support/corpus.rs"]
#[allow(dead_code)]
mod corpus;
#[path = "support/lifecycle.rs"]
mod lifecycle;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use imageserver_core::model::work::{WorkFilter, WorkKind, WorkStatus};
use imageserver_core::Server;
use lifecycle::files;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

const USAGE: &str = "\
usage: cargo bench --bench archive_ingest_latency -- [options]
  --studies N     studies on tier 1 to migrate (default 40; 4 without --bench)
  --instances K   instances per study (default 40; 4 without --bench)
  --size PX       image rows = columns (default 512; 32 without --bench)
  --probe P       C-STOREs timed per phase (default 300; 10 without --bench)
  --dir DIR       where to work (default $BENCH_TMPDIR or /tmp)";

/// The pynetdicom probe.
const PROBE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/benches/archive_ingest_latency.py"
);

/// The longest any wait of the run may take.
const BOUND: Duration = Duration::from_secs(1800);

struct Options {
    studies: usize,
    instances: usize,
    size: u16,
    probe: usize,
    dir: PathBuf,
}

fn options() -> Result<Options> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let bench = args.iter().any(|a| a == "--bench");
    args.retain(|a| a != "--bench");
    let mut options = Options {
        studies: if bench { 40 } else { 4 },
        instances: if bench { 40 } else { 4 },
        size: if bench { 512 } else { 32 },
        probe: if bench { 300 } else { 10 },
        dir: std::env::var_os("BENCH_TMPDIR").map_or_else(std::env::temp_dir, PathBuf::from),
    };
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value\n{USAGE}"));
        match arg.as_str() {
            "--studies" => options.studies = value()?.parse()?,
            "--instances" => options.instances = value()?.parse()?,
            "--size" => options.size = value()?.parse()?,
            "--probe" => options.probe = value()?.parse()?,
            "--dir" => options.dir = PathBuf::from(value()?),
            "--help" | "-h" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other}\n{USAGE}").into()),
        }
    }
    Ok(options)
}

/// Runs the probe over `paths`; the latencies in ms, in order.
fn probe(server: &Server, ae: &str, paths: &[PathBuf]) -> Result<Vec<f64>> {
    let addr = server.local_addr();
    let output = Command::new("python3")
        .arg(PROBE)
        .arg(addr.ip().to_string())
        .arg(addr.port().to_string())
        .arg(ae)
        .args(paths)
        .output()?;
    let text = String::from_utf8_lossy(&output.stdout);
    let line = text
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .ok_or_else(|| {
            format!(
                "the probe printed no result: {}",
                String::from_utf8_lossy(&output.stderr)
            )
        })?;
    let found: serde_json::Value = serde_json::from_str(line)?;
    let failures = found["failures"].as_array().map_or(0, Vec::len);
    let latencies: Vec<f64> = found["latencies_ms"]
        .as_array()
        .ok_or("no latencies")?
        .iter()
        .filter_map(serde_json::Value::as_f64)
        .collect();
    if !output.status.success() || failures > 0 || latencies.len() != paths.len() {
        return Err(format!(
            "the probe stored {} of {} with {failures} failures: {line}",
            latencies.len(),
            paths.len()
        )
        .into());
    }
    Ok(latencies)
}

/// The `q` quantile (nearest rank) of `values`.
fn quantile(values: &[f64], q: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn report(phase: &str, latencies: &[f64]) {
    println!(
        "{phase:<10} {} C-STOREs: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        latencies.len(),
        quantile(latencies, 0.5),
        quantile(latencies, 0.99),
        quantile(latencies, 1.0)
    );
}

/// Migrations queued so far (any state), and those not finished yet.
fn migrations(server: &Server) -> Result<(usize, usize)> {
    let items = server.work_queue().list(&WorkFilter {
        kinds: vec![WorkKind::MIGRATE_STUDY],
        ..WorkFilter::default()
    })?;
    let open = items
        .iter()
        .filter(|i| {
            matches!(
                i.status,
                WorkStatus::Idle | WorkStatus::Pending | WorkStatus::InProgress
            )
        })
        .count();
    Ok((items.len(), open))
}

fn main() -> Result<()> {
    let options = options()?;
    let work = tempfile::Builder::new()
        .prefix("archive-ingest-latency-")
        .tempdir_in(&options.dir)?;
    let root = work.path();
    let size = (options.size, options.size);
    let set = corpus::generate_corpus(
        &root.join("set"),
        17,
        corpus::CorpusShape::uniform(options.studies, 2, options.instances.div_ceil(2), size),
    );
    let probe_sets: Vec<Vec<corpus::Instance>> = (0..3)
        .map(|n| {
            corpus::generate_corpus(
                &root.join(format!("probe{n}")),
                100 + n,
                corpus::CorpusShape::uniform(1, 1, options.probe, size),
            )
        })
        .collect();
    let probes: Vec<Vec<PathBuf>> = probe_sets
        .iter()
        .map(|set| set.iter().map(|i| i.path.clone()).collect())
        .collect();
    // Files of the set on a root (not the probes' studies).
    let set_files = |root: &Path| {
        files(root)
            .into_iter()
            .filter(|p| {
                !probe_sets.iter().any(|set| {
                    p.components()
                        .any(|c| c.as_os_str() == set[0].study_uid.as_str())
                })
            })
            .count()
    };
    let (archive, fs1, fs2) = lifecycle::two_tier_archive(
        root,
        "filesystem_refresh_secs = 1\nmigration_batch = 1000\n",
        ", high_watermark = 90.0, low_watermark = 5.0",
        "",
    )?;
    let partition = lifecycle::import_all(&archive, &set)?;
    let ae = partition.ae_title.as_str().to_string();
    let set_bytes: u64 = set.iter().map(|i| i.file_size).sum();
    let server = Server::start_on(archive, vec![TcpListener::bind("127.0.0.1:0")?])?;

    // 1. Idle.
    let idle = probe(&server, &ae, &probes[0])?;

    // 2. Tier 1 over its high watermark: the watermark service migrates.
    let index = server.archive().index().clone();
    let mut tier1 = index
        .filesystems()?
        .into_iter()
        .find(|fs| fs.spec.path == fs1)
        .ok_or("no tier-1 filesystem")?;
    let held: u64 = files(&fs1)
        .iter()
        .map(|p| std::fs::metadata(p).map_or(0, |m| m.len()))
        .sum();
    // Used = held / quota, about 95 % (a quota is whole MiB: on a tiny set
    // the watermarks follow what it comes to).
    let quota_mb = (held as f64 / 0.95 / (1024.0 * 1024.0)).ceil().max(1.0);
    let used = 100.0 * held as f64 / (quota_mb * 1024.0 * 1024.0);
    tier1.spec.capacity_mb = Some(quota_mb as u64);
    tier1.spec.high_watermark = (used * 0.9).min(90.0);
    tier1.spec.low_watermark = tier1.spec.high_watermark / 18.0;
    index.update_filesystem(&tier1)?;
    let asked = Instant::now();
    loop {
        if migrations(&server)?.0 > 0 {
            break;
        }
        if asked.elapsed() > BOUND {
            return Err("no migration was queued".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let started_after = asked.elapsed();
    if migrations(&server)?.1 == 0 {
        println!("(every migration ended before the probe started)");
    }
    let on_tier2_before = set_files(&fs2);
    let migrating = probe(&server, &ae, &probes[1])?;
    let (queued, left) = migrations(&server)?;
    let moved_during = set_files(&fs2).saturating_sub(on_tier2_before);
    loop {
        if migrations(&server)?.1 == 0 {
            break;
        }
        if asked.elapsed() > BOUND {
            return Err("the migrations did not finish".into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let migrated_in = asked.elapsed() - started_after;

    // 3. Idle again.
    let after = probe(&server, &ae, &probes[2])?;

    println!(
        "set: {} studies, {} instances, {:.1} MB on tier 1; migrations started {:.1} s after \
         the quota change and took {:.1} s; {queued} migrations queued, {moved_during} of the \
         set's files reached tier 2 during the migrating probe, {left} migrations still queued \
         or running when it ended",
        options.studies,
        set.len(),
        set_bytes as f64 / 1e6,
        started_after.as_secs_f64(),
        migrated_in.as_secs_f64()
    );
    report("idle", &idle);
    report("migrating", &migrating);
    report("idle after", &after);
    if left == 0 {
        println!("(the migrations ended before the probe: the migrating figure is partly idle)");
    }
    server.shutdown(Duration::from_secs(30));
    Ok(())
}
