//! The durable-write ceiling (ingest issue): how many instances per second
//! this disk takes through the write recipe a C-STORE pays, without the
//! network, the DICOM parsing and the index. Ingest figures are read beside
//! it: the gap between the two is what the rest of the path costs.
//!
//! Per instance, on T threads at once: a temporary file in `<dir>/.tmp`,
//! the bytes written in 256 KiB chunks, `fdatasync`, `rename` into its
//! study/series folder, and the folder's entry made durable, in one of two
//! ways:
//!
//! - **naive**: the writing thread fsyncs the folder itself after the
//!   rename, so the three flushes of an instance run one after the other
//!   and every instance pays its own folder sync;
//! - **grouped**: the writer hands the folder to one committer thread and
//!   waits; the committer fsyncs each distinct folder of whatever queued
//!   meanwhile once (what `services::commit::GroupCommitter` does before
//!   its index transaction).
//!
//! The folders (20 studies of 2 series, as the benchmark corpora) are made
//! and synced before the clock starts. Every run is checked afterwards:
//! each file present, renamed, of its size, nothing left in `.tmp`; a run
//! that fails the check prints no rate.
//!
//! ```text
//! cargo bench --bench durable_ceiling                 # 1000 instances, 1 and 8 threads, 0.5 MB and 9 KB
//! cargo bench --bench durable_ceiling -- --count 2000 --threads "1 8" --sizes "524288 9216" --dir /data/bench
//! ```
//!
//! Without `--bench` (as `cargo test --benches` runs it) a smoke run of a
//! few instances checks it all works.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Instant;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

const USAGE: &str = "\
usage: cargo bench --bench durable_ceiling -- [options]
  --count N       instances per run (default 1000; 24 without --bench)
  --threads \"T…\"  writer threads, one run each (default \"1 8\")
  --sizes \"B…\"    instance sizes in bytes (default \"524288 9216\": 512x512 CT, 64x64)
  --dir DIR       where to write (default $BENCH_TMPDIR or /tmp): the disk ingest uses";

/// Studies and series per study of the folder layout.
const STUDIES: usize = 20;
const SERIES: usize = 2;
/// The write buffer of ingest.
const CHUNK: usize = 256 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Naive,
    Grouped,
}

struct Options {
    count: usize,
    threads: Vec<usize>,
    sizes: Vec<usize>,
    dir: PathBuf,
}

impl Options {
    fn parse() -> Result<Options> {
        let mut args: Vec<String> = std::env::args().skip(1).collect();
        let bench = args.iter().any(|a| a == "--bench");
        args.retain(|a| a != "--bench");
        let mut options = Options {
            count: if bench { 1000 } else { 24 },
            threads: vec![1, 8],
            sizes: if bench {
                vec![524_288, 9216]
            } else {
                vec![65_536, 9216]
            },
            dir: std::env::var_os("BENCH_TMPDIR")
                .map_or_else(|| PathBuf::from("/tmp"), PathBuf::from),
        };
        let mut args = args.into_iter();
        let numbers = |text: String| -> Result<Vec<usize>> {
            let parsed: std::result::Result<Vec<usize>, _> =
                text.split_whitespace().map(str::parse).collect();
            Ok(parsed?)
        };
        while let Some(flag) = args.next() {
            let mut value = || args.next().ok_or(format!("{flag} needs a value\n{USAGE}"));
            match flag.as_str() {
                "--count" => options.count = value()?.parse()?,
                "--threads" => options.threads = numbers(value()?)?,
                "--sizes" => options.sizes = numbers(value()?)?,
                "--dir" => options.dir = PathBuf::from(value()?),
                "-h" | "--help" => {
                    println!("{USAGE}");
                    std::process::exit(0);
                }
                other => return Err(format!("unknown argument {other}\n{USAGE}").into()),
            }
        }
        if options.count == 0 || options.threads.contains(&0) || options.sizes.contains(&0) {
            return Err(format!("counts, threads and sizes must be positive\n{USAGE}").into());
        }
        Ok(options)
    }
}

fn main() {
    if let Err(error) = run() {
        eprintln!("durable_ceiling bench: {error}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let options = Options::parse()?;
    println!(
        "durable write ceiling in {} ({} instances per run)",
        options.dir.display(),
        options.count
    );
    println!(
        "{:>9} {:>8} {:>8} {:>11} {:>9}",
        "size", "threads", "mode", "instances/s", "MB/s"
    );
    for &size in &options.sizes {
        for &threads in &options.threads {
            // Interleaved, so both modes see the same machine.
            for mode in [Mode::Naive, Mode::Grouped] {
                let root = tempfile::Builder::new()
                    .prefix("imageserver-durable-ceiling-")
                    .tempdir_in(&options.dir)?;
                let seconds = write_run(root.path(), options.count, size, threads, mode)?;
                check(root.path(), options.count, size)?;
                let rate = options.count as f64 / seconds;
                println!(
                    "{size:>9} {threads:>8} {:>8} {rate:>11.0} {:>9.1}",
                    format!("{mode:?}").to_lowercase(),
                    rate * size as f64 / 1e6
                );
            }
        }
    }
    Ok(())
}

/// The folder of instance `n`.
fn folder(root: &Path, n: usize) -> PathBuf {
    let study = n % STUDIES;
    let series = (n / STUDIES) % SERIES;
    root.join(format!("study{study}"))
        .join(format!("series{series}"))
}

/// Writes `count` instances of `size` bytes on `threads` threads; the
/// seconds it took from the first byte to the last durable entry.
fn write_run(root: &Path, count: usize, size: usize, threads: usize, mode: Mode) -> Result<f64> {
    fs::create_dir_all(root.join(".tmp"))?;
    for n in 0..STUDIES * SERIES {
        fs::create_dir_all(folder(root, n))?;
    }
    for study in 0..STUDIES {
        File::open(root.join(format!("study{study}")))?.sync_all()?;
    }
    File::open(root)?.sync_all()?;
    let data: Arc<Vec<u8>> = Arc::new((0..size).map(|i| (i * 31 % 251) as u8).collect());
    let next = Arc::new(AtomicUsize::new(0));
    let (to_committer, committer_inbox) = mpsc::channel::<(PathBuf, mpsc::Sender<()>)>();
    let committer = (mode == Mode::Grouped).then(|| {
        std::thread::spawn(move || -> std::io::Result<()> {
            while let Ok(first) = committer_inbox.recv() {
                let mut batch = vec![first];
                batch.extend(committer_inbox.try_iter());
                let mut folders: Vec<&PathBuf> = batch.iter().map(|(dir, _)| dir).collect();
                folders.sort();
                folders.dedup();
                for dir in folders {
                    File::open(dir)?.sync_all()?;
                }
                for (_, done) in &batch {
                    let _ = done.send(());
                }
            }
            Ok(())
        })
    });
    let started = Instant::now();
    let writers: Vec<_> = (0..threads)
        .map(|t| {
            let (root, data, next) = (root.to_path_buf(), data.clone(), next.clone());
            let to_committer = to_committer.clone();
            std::thread::spawn(move || -> std::io::Result<()> {
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= count {
                        return Ok(());
                    }
                    let temporary = root.join(".tmp").join(format!("w{t}-{n}.part"));
                    let mut file = OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .open(&temporary)?;
                    for chunk in data.chunks(CHUNK) {
                        file.write_all(chunk)?;
                    }
                    file.sync_data()?;
                    drop(file);
                    let dir = folder(&root, n);
                    fs::rename(&temporary, dir.join(format!("{n}.dcm")))?;
                    match mode {
                        Mode::Naive => File::open(&dir)?.sync_all()?,
                        Mode::Grouped => {
                            let (done, wait) = mpsc::channel();
                            to_committer
                                .send((dir, done))
                                .map_err(|_| std::io::Error::other("the committer stopped"))?;
                            wait.recv()
                                .map_err(|_| std::io::Error::other("the committer stopped"))?;
                        }
                    }
                }
            })
        })
        .collect();
    drop(to_committer);
    for writer in writers {
        writer.join().map_err(|_| "a writer panicked")??;
    }
    let seconds = started.elapsed().as_secs_f64();
    if let Some(committer) = committer {
        committer.join().map_err(|_| "the committer panicked")??;
    }
    Ok(seconds)
}

/// Every instance renamed into its folder with its size; `.tmp` empty.
fn check(root: &Path, count: usize, size: usize) -> Result<()> {
    for n in 0..count {
        let path = folder(root, n).join(format!("{n}.dcm"));
        let len = fs::metadata(&path)
            .map_err(|e| format!("{}: {e}", path.display()))?
            .len();
        if len != size as u64 {
            return Err(format!("{}: {len} bytes, expected {size}", path.display()).into());
        }
    }
    let left = fs::read_dir(root.join(".tmp"))?.count();
    if left != 0 {
        return Err(format!("{left} temporary files left").into());
    }
    Ok(())
}
