//! The audit spool: one file per syslog message in a directory, written
//! before any send is tried and deleted once sent, so messages survive an
//! unreachable repository and a restart.
//!
//! Files are named `<ms>-<pid>-<seq>.syslog` (written as `.tmp`, then
//! renamed): names sort in the order the events were taken. Several
//! processes may share a spool (the server, a `study delete --now`); each
//! sends its own files and those of processes that are no longer running
//! (a dead process's leftovers are adopted), never another live one's.

use std::path::{Path, PathBuf};

/// Most files one [`Spool::pending`] call returns.
pub const MAX_BATCH: usize = 10_000;

/// A spool directory.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    pid: u32,
    seq: u64,
}

impl Spool {
    /// Opens (creating it if needed) the spool directory.
    pub fn open(dir: &Path) -> std::io::Result<Spool> {
        std::fs::create_dir_all(dir)?;
        Ok(Spool {
            dir: dir.to_path_buf(),
            pid: std::process::id(),
            seq: 0,
        })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes one message; returns its file.
    pub fn put(&mut self, at_ms: i64, message: &[u8]) -> std::io::Result<PathBuf> {
        self.seq += 1;
        let name = format!("{:015}-{}-{:010}", at_ms.max(0), self.pid, self.seq);
        let tmp = self.dir.join(format!("{name}.tmp"));
        let path = self.dir.join(format!("{name}.syslog"));
        std::fs::write(&tmp, message)?;
        std::fs::rename(&tmp, &path)?;
        Ok(path)
    }

    /// The messages this process should send, oldest first (at most
    /// [`MAX_BATCH`]): its own and those of processes no longer running.
    pub fn pending(&self) -> std::io::Result<Vec<PathBuf>> {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let Some(stem) = name.strip_suffix(".syslog") else {
                continue;
            };
            let Some(pid) = stem.split('-').nth(1).and_then(|p| p.parse::<u32>().ok()) else {
                continue;
            };
            if pid == self.pid || !alive(pid) {
                files.push(entry.path());
            }
        }
        files.sort();
        files.truncate(MAX_BATCH);
        Ok(files)
    }

    /// How many messages wait in the directory (every process's).
    pub fn len(&self) -> usize {
        std::fs::read_dir(&self.dir)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".syslog"))
                    .count()
            })
            .unwrap_or(0)
    }

    /// Whether no message waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Whether a process of this id runs (a pid reused since is taken as alive:
/// its files wait for that process to end).
fn alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: kill with signal 0 only checks for the process.
    let result = unsafe { libc::kill(pid, 0) };
    result == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_come_back_in_order_and_dead_processes_are_adopted() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path()).unwrap();
        let a = spool.put(2, b"second").unwrap();
        let b = spool.put(1, b"first").unwrap();
        // A dead process's file (pid beyond pid_max) and a live one's (ours
        // parent, pid 1).
        std::fs::write(
            dir.path()
                .join("000000000000000-999999999-0000000001.syslog"),
            b"x",
        )
        .unwrap();
        std::fs::write(dir.path().join("000000000000000-1-0000000001.syslog"), b"y").unwrap();
        std::fs::write(dir.path().join("000000000000000-1-0000000002.tmp"), b"z").unwrap();
        let pending = spool.pending().unwrap();
        assert_eq!(pending.len(), 3, "{pending:?}");
        assert!(pending[0].ends_with("000000000000000-999999999-0000000001.syslog"));
        assert_eq!(pending[1], b);
        assert_eq!(pending[2], a);
        assert_eq!(spool.len(), 4);
    }
}
