//! What the storage-lifecycle benches (`archive`, `archive_ingest_latency`)
//! share: an archive over a tier-1 and a tier-2 filesystem with a study set
//! imported, and the instance files under a root. Included by the benches
//! with `#[path]`, beside `tests/it/support/corpus.rs` as `corpus`.

use std::path::{Path, PathBuf};

use imageserver_core::{Archive, Config, Partition, ServerBuilder};

use crate::corpus::Instance;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// An archive whose data lives in `root`, over a tier-1 filesystem
/// `<root>/fs1` and a tier-2 one `<root>/fs2` (SQLite index). `top` adds
/// top-level settings (lines), `tier1` keys of the tier-1 filesystem
/// (`, high_watermark = 90.0`), `tables` TOML tables after them
/// (`[archive]` …). Returns it with the two paths.
pub fn two_tier_archive(
    root: &Path,
    top: &str,
    tier1: &str,
    tables: &str,
) -> Result<(Archive, PathBuf, PathBuf)> {
    let (fs1, fs2) = (root.join("fs1"), root.join("fs2"));
    let config = Config::from_toml(&format!(
        "data_dir = {:?}\n{top}filesystems = [{{ path = {:?}, tier = 1{tier1} }}, \
         {{ path = {:?}, tier = 2 }}]\n{tables}",
        root.display().to_string(),
        fs1.display().to_string(),
        fs2.display().to_string(),
    ))?;
    let archive = ServerBuilder::new(config.validate()?).open()?;
    Ok((archive, fs1, fs2))
}

/// Imports `set` into the default partition (every instance must be
/// imported); returns the partition.
pub fn import_all(archive: &Archive, set: &[Instance]) -> Result<Partition> {
    let partition = archive.default_partition().partition.clone();
    let paths: Vec<PathBuf> = set.iter().map(|i| i.path.clone()).collect();
    let summary = archive.import_files(&partition, &paths, &mut |_, _| {});
    if summary.imported as usize != set.len() {
        return Err(format!("imported {} of {}", summary.imported, set.len()).into());
    }
    Ok(partition)
}

/// The instance files under a root (no temporary files).
pub fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                if path.file_name().is_some_and(|n| n != ".tmp") {
                    stack.push(path);
                }
            } else if path.extension().is_some_and(|e| e == "dcm") {
                out.push(path);
            }
        }
    }
    out
}
