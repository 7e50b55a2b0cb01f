//! HSM archive throughput (issue 13): how fast a study is packed into the
//! archive (`Studies::archive`: every file read and checked against its
//! digest, one tar written, fsync'd, recorded), restored from it
//! (`Studies::restore` after a purge: unpacked through the storage seam,
//! synced, every file re-read against the manifest, switched) and migrated
//! to another filesystem (`Studies::migrate`), each beside the plain tools
//! on the same tree in the same run: `tar cf` + `sync`, `tar xf` + `sync`,
//! `cp -r` + `sync`. MB/s are of the study's instance bytes.
//!
//! ```text
//! cargo bench --bench archive                       # one study, 4 series x 50 CT-sized (512x512) instances
//! cargo bench --bench archive -- --instances 400 --size 512 --dir /data/bench
//! ```
//!
//! Without `--bench` (as `cargo test --benches` runs it) a smoke run of a
//! tiny study checks that every operation works and round-trips.

#[path = "../tests/it/support/corpus.rs"]
#[allow(dead_code)]
mod corpus;
#[path = "support/lifecycle.rs"]
mod lifecycle;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use imageserver_core::Uid;
use lifecycle::files;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

const USAGE: &str = "\
usage: cargo bench --bench archive -- [options]
  --instances N   instances in the study (default 200; 8 without --bench)
  --size PX       image rows = columns (default 512; 32 without --bench)
  --dir DIR       where to work (default $BENCH_TMPDIR or /tmp)";

struct Options {
    instances: usize,
    size: u16,
    dir: PathBuf,
    smoke: bool,
}

fn options() -> Result<Options> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let bench = args.iter().any(|a| a == "--bench");
    args.retain(|a| a != "--bench");
    let mut options = Options {
        instances: if bench { 200 } else { 8 },
        size: if bench { 512 } else { 32 },
        dir: std::env::var_os("BENCH_TMPDIR").map_or_else(std::env::temp_dir, PathBuf::from),
        smoke: !bench,
    };
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value\n{USAGE}"));
        match arg.as_str() {
            "--instances" => options.instances = value()?.parse()?,
            "--size" => options.size = value()?.parse()?,
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

fn run(command: &mut Command) -> Result<()> {
    let status = command.status()?;
    if !status.success() {
        return Err(format!("{command:?}: {status}").into());
    }
    Ok(())
}

fn sync() -> Result<()> {
    run(&mut Command::new("sync"))
}

fn timed(f: impl FnOnce() -> Result<()>) -> Result<Duration> {
    let start = Instant::now();
    f()?;
    Ok(start.elapsed())
}

fn rate(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / 1e6 / elapsed.as_secs_f64()
}

fn main() -> Result<()> {
    let options = options()?;
    let work = tempfile::Builder::new()
        .prefix("archive-bench-")
        .tempdir_in(&options.dir)?;
    let root = work.path();
    let series = 4.min(options.instances.max(1));
    let shape = corpus::CorpusShape::uniform(
        1,
        series,
        options.instances.div_ceil(series),
        (options.size, options.size),
    );
    let corpus = corpus::generate_corpus(&root.join("corpus"), 13, shape);
    let archive_dir = root.join("archive");
    let (archive, fs1, fs2) = lifecycle::two_tier_archive(
        root,
        "",
        "",
        &format!(
            "[archive]\npath = {:?}\n",
            archive_dir.display().to_string()
        ),
    )?;
    let partition = lifecycle::import_all(&archive, &corpus)?;
    let uid = Uid::parse(&corpus[0].study_uid)?;
    let bytes: u64 = files(&fs1)
        .iter()
        .map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .sum();
    let studies = archive.studies();
    let study_dir = fs1.clone();
    sync()?;

    // Pack: ours, then tar cf + sync of the same tree.
    let ours = timed(|| {
        studies.archive(&partition, &uid)?;
        Ok(())
    })?;
    let tar_path = root.join("plain.tar");
    let theirs = timed(|| {
        run(Command::new("tar")
            .arg("cf")
            .arg(&tar_path)
            .arg("-C")
            .arg(&study_dir)
            .arg("."))?;
        sync()
    })?;
    println!(
        "archive  {} instances, {:.1} MB: imageserver {:.1} MB/s, tar cf + sync {:.1} MB/s",
        corpus.len(),
        bytes as f64 / 1e6,
        rate(bytes, ours),
        rate(bytes, theirs)
    );

    // Restore: purge, then ours; tar xf + sync of the plain tar.
    studies.purge(&partition, &uid)?;
    if !files(&fs1).is_empty() {
        return Err("the purge left files".into());
    }
    sync()?;
    let ours = timed(|| {
        let report = studies.restore(&partition, &uid)?;
        if !report.switched {
            return Err("not restored".into());
        }
        Ok(())
    })?;
    let untar = root.join("untar");
    std::fs::create_dir_all(&untar)?;
    let theirs = timed(|| {
        run(Command::new("tar")
            .arg("xf")
            .arg(&tar_path)
            .arg("-C")
            .arg(&untar))?;
        sync()
    })?;
    println!(
        "restore  imageserver {:.1} MB/s (verified), tar xf + sync {:.1} MB/s",
        rate(bytes, ours),
        rate(bytes, theirs)
    );

    // Migration to the second filesystem; cp -r + sync of the same tree.
    let restored_on = files(&fs1).len() + files(&fs2).len();
    if restored_on != corpus.len() {
        return Err(format!("restored {restored_on} of {} files", corpus.len()).into());
    }
    let (from, to) = if files(&fs1).is_empty() {
        (fs2.clone(), fs1.clone())
    } else {
        (fs1.clone(), fs2.clone())
    };
    let target = archive
        .index()
        .filesystems()?
        .into_iter()
        .find(|fs| fs.spec.path == to)
        .ok_or("no target filesystem")?;
    sync()?;
    let ours = timed(|| {
        studies.migrate(&partition, &uid, target.id)?;
        Ok(())
    })?;
    let copy = root.join("copy");
    let theirs = timed(|| {
        run(Command::new("cp").arg("-r").arg(&to).arg(&copy))?;
        sync()
    })?;
    println!(
        "migrate  imageserver {:.1} MB/s (verified), cp -r + sync {:.1} MB/s",
        rate(bytes, ours),
        rate(bytes, theirs)
    );
    if files(&from).len() + files(&to).len() != corpus.len() || files(&to).len() != corpus.len() {
        return Err("the migration did not leave exactly one copy".into());
    }
    if options.smoke {
        let report = studies.check_integrity(
            &partition,
            &uid,
            imageserver_core::services::studies::DigestCheck::All,
        )?;
        if !report.is_clean() {
            return Err(format!("integrity after the round trip: {:?}", report.findings).into());
        }
        println!("smoke run: archive, purge, restore and migrate round-trip");
    }
    Ok(())
}
