//! Temporary files' names and their sweep. A writer's `.part` file and a
//! spare's `.spare` file are named `HOST-PID-N-NANOS`, and whose file it is
//! is read back from the name; the sweep removes what no writer will finish:
//! a dead process's of this host at once, any other after `stale_after`.

use std::fs;
use std::io;
use std::path::Path;
use std::time::Duration;

use super::{io_error, sync_dir};
use crate::storage::{layout, Error, SweepReport};

/// This host's name as temporary file names carry it: `-` and anything
/// but ASCII letters, digits and `.` replaced, so that the name splits back.
pub(super) fn host_tag() -> &'static str {
    static TAG: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TAG.get_or_init(|| {
        let name = fs::read_to_string("/proc/sys/kernel/hostname")
            .or_else(|_| fs::read_to_string("/etc/hostname"))
            .unwrap_or_default();
        let tag: String = name
            .trim()
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        if tag.is_empty() {
            "localhost".to_string()
        } else {
            tag
        }
    })
}

/// A writer's temporary file ends so.
pub(super) const PART_SUFFIX: &str = ".part";

/// A spare's name ends so (made ahead of need, `fs/spares.rs`; its name
/// is otherwise a writer's).
pub(super) const SPARE_SUFFIX: &str = ".spare";

/// A temporary file's name, `HOST-PID-N-NANOS` and `suffix` (`N` tells the
/// process's files apart), whose writer [`of_dead_process`] reads back.
pub(super) fn temp_name(n: impl std::fmt::Display, suffix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{}-{}-{n}-{nanos}{suffix}", host_tag(), std::process::id())
}

/// Whether a `HOST-PID-…` name (a temporary file's without its suffix, or
/// a journal's) is a process's of this host that is no longer running:
/// nothing it left will be finished. Another host's process may be alive
/// however long its files have been quiet.
pub(super) fn of_dead_process(stem: &str) -> bool {
    let mut parts = stem.split('-');
    let (Some(host), Some(Ok(pid))) = (parts.next(), parts.next().map(str::parse::<u32>)) else {
        return false;
    };
    host == host_tag() && pid != std::process::id() && !process_alive(pid)
}

/// Whether a process of this host is running (Linux: its `/proc` entry).
fn process_alive(pid: u32) -> bool {
    Path::new("/proc").join(pid.to_string()).exists()
}

/// [`StorageBackend::sweep_temporary`](crate::storage::StorageBackend::sweep_temporary)
/// for the filesystem at `root`.
pub(super) fn sweep(root: &Path, stale_after: Duration) -> Result<SweepReport, Error> {
    let dir = root.join(layout::TEMP_DIR);
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(SweepReport::default()),
        Err(e) => return Err(io_error("list", &dir, root, e)),
    };
    let now = std::time::SystemTime::now();
    let mut report = SweepReport::default();
    for entry in entries {
        let entry = entry.map_err(|e| io_error("list", &dir, root, e))?;
        let path = entry.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let Some(stem) = name
            .strip_suffix(PART_SUFFIX)
            .or_else(|| name.strip_suffix(SPARE_SUFFIX))
        else {
            continue;
        };
        let meta = match entry.metadata() {
            Ok(meta) if meta.is_file() => meta,
            _ => continue,
        };
        let idle = meta
            .modified()
            .ok()
            .and_then(|m| now.duration_since(m).ok())
            .unwrap_or_default();
        let orphaned = of_dead_process(stem);
        if !orphaned && idle < stale_after {
            report.kept += 1;
            continue;
        }
        match fs::remove_file(&path) {
            Ok(()) => {
                report.removed += 1;
                report.bytes += meta.len();
                tracing::info!(
                    path = %path.display(),
                    bytes = meta.len(),
                    idle_secs = idle.as_secs(),
                    "removed a temporary file no writer will finish"
                );
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_error("remove", &path, root, e)),
        }
    }
    if report.removed > 0 {
        sync_dir(&dir)?;
    }
    Ok(report)
}
