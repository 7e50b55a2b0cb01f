//! Temporary files made ahead of need. Creating a file is slow next to
//! writing one: measured under strace on this project's ext4 test machine,
//! the `openat(O_CREAT)` of a store's temporary file took 0.3 to 0.7 ms
//! (perf shows the inode allocator reading inode-table blocks to skip
//! recently deleted inodes), on the association's path between the
//! C-STORE request and its data. A thread of its own makes the next one
//! meanwhile, so that a store takes a file already there.
//!
//! A spare is an empty file `HOST-PID-N-NANOS.spare` in the filesystem's
//! `.tmp`; a store that takes one writes it under that name, and its first
//! bytes reach the file at once (see `FsWriter`), so that an empty `.spare`
//! of a running process is always one not handed out. The process removes
//! its spares when the backend is dropped (a clean shutdown); the start-up
//! and periodic sweeps remove a dead process's, as they do its `.part`
//! files. The periodic sweep also removes any temporary file idle for an
//! hour or more; a spare older than [`MAX_AGE`] is therefore never handed
//! out, but removed and replaced.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam::channel::{self, Sender};

/// The extension of a spare's name.
pub(super) const EXTENSION: &str = "spare";

/// The end of a spare's name.
pub(super) const SUFFIX: &str = ".spare";

/// Spares kept ready per filesystem: one for each association that may be
/// between two stores at once is enough to hide the wait; more only hold
/// files open.
const PER_ROOT: usize = 4;

/// The oldest spare handed out (far below the periodic sweep's hour).
const MAX_AGE: Duration = Duration::from_secs(600);

/// A temporary file made ahead, still empty.
#[derive(Debug)]
pub(super) struct Spare {
    pub(super) path: PathBuf,
    pub(super) file: File,
    made: Instant,
}

/// The spares of one backend, and the thread that makes them. Dropping it
/// (with the backend) ends the thread and removes every spare not handed
/// out before it returns.
#[derive(Debug, Default)]
pub(super) struct Spares {
    ready: Arc<Ready>,
    /// The thread that makes spares; started by the first request.
    maker: Mutex<Option<Maker>>,
}

/// The thread that makes spares, and how to ask it for one.
#[derive(Debug)]
struct Maker {
    requests: Sender<Request>,
    thread: std::thread::JoinHandle<()>,
}

impl Drop for Spares {
    fn drop(&mut self) {
        self.ready.closing.store(true, Ordering::Relaxed);
        let maker = self
            .maker
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(Maker { requests, thread }) = maker {
            drop(requests);
            let _ = thread.join();
        }
        // `Ready` is now ours alone: dropping it removes the spares.
    }
}

/// A spare wanted in `temp_dir`, at `path`.
#[derive(Debug)]
struct Request {
    temp_dir: PathBuf,
    path: PathBuf,
}

/// The spares ready, by the `.tmp` folder they are in.
#[derive(Debug, Default)]
struct Ready {
    spares: Mutex<HashMap<PathBuf, Vec<Spare>>>,
    /// Set when the backend is dropped: requests still queued make nothing.
    closing: AtomicBool,
}

impl Ready {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, Vec<Spare>>> {
        self.spares.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for Ready {
    fn drop(&mut self) {
        for spare in self.lock().drain().flat_map(|(_, spares)| spares) {
            remove(&spare.path);
        }
    }
}

fn remove(path: &Path) {
    if let Err(e) = fs::remove_file(path) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove a spare temporary file");
        }
    }
}

impl Spares {
    /// A spare of `temp_dir` if one is ready, and a request for the next,
    /// at `next` (a fresh temporary name there).
    pub(super) fn take(&self, temp_dir: &Path, next: PathBuf) -> Option<Spare> {
        let (spare, ready) = {
            let mut ready = self.ready.lock();
            let spares = ready.entry(temp_dir.to_path_buf()).or_default();
            (spares.pop(), spares.len())
        };
        if ready < PER_ROOT {
            self.request(Request {
                temp_dir: temp_dir.to_path_buf(),
                path: next,
            });
        }
        let spare = spare?;
        if spare.made.elapsed() > MAX_AGE {
            remove(&spare.path);
            return None;
        }
        Some(spare)
    }

    fn request(&self, request: Request) {
        let mut maker = self.maker.lock().unwrap_or_else(|p| p.into_inner());
        if maker.is_none() {
            let (requests, receiver) = channel::unbounded::<Request>();
            let ready = self.ready.clone();
            let spawned = std::thread::Builder::new()
                .name("spare-temp-files".into())
                .spawn(move || {
                    for request in receiver {
                        make(&ready, request);
                    }
                });
            match spawned {
                Ok(thread) => *maker = Some(Maker { requests, thread }),
                // Stores then create their files themselves.
                Err(e) => {
                    tracing::warn!(error = %e, "cannot start the spare temporary file thread");
                    return;
                }
            }
        }
        if let Some(maker) = maker.as_ref() {
            let _ = maker.requests.send(request);
        }
    }
}

/// Makes one spare for `request`, unless enough are ready.
fn make(ready: &Ready, request: Request) {
    if ready.closing.load(Ordering::Relaxed) {
        return;
    }
    if ready.lock().get(&request.temp_dir).map_or(0, Vec::len) >= PER_ROOT {
        return;
    }
    let path = request.path;
    match OpenOptions::new().write(true).create_new(true).open(&path) {
        Ok(file) => ready
            .lock()
            .entry(request.temp_dir)
            .or_default()
            .push(Spare {
                path,
                file,
                made: Instant::now(),
            }),
        // The store that wants one creates its own and reports the error.
        Err(e) => {
            tracing::debug!(path = %path.display(), error = %e, "cannot make a spare temporary file")
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::time::Duration;

    use super::super::tests::{filesystem, key, temp_left};
    use super::super::FsStorage;
    use super::*;
    use crate::storage::StorageBackend;

    /// This process's spares in `temp_dir`, waiting (bounded) for `count`.
    fn wait_for_spares(storage: &FsStorage, temp_dir: &Path, count: usize) -> Vec<PathBuf> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let ready: Vec<PathBuf> = storage
                .inner
                .spares
                .ready
                .lock()
                .get(temp_dir)
                .map(|spares| spares.iter().map(|s| s.path.clone()).collect())
                .unwrap_or_default();
            if ready.len() >= count {
                return ready;
            }
            assert!(Instant::now() < deadline, "no spare made: {ready:?}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// A store takes a spare made while the previous one ran, writes it
    /// under its own name (its first bytes at once), and persists or
    /// removes it like any temporary file; the backend keeps at most
    /// [`PER_ROOT`] ready and removes them when dropped.
    #[test]
    fn a_store_takes_a_spare_made_ahead() {
        let dir = tempfile::tempdir().unwrap();
        let fs_ = filesystem(dir.path());
        let temp_dir = dir.path().join(crate::storage::layout::TEMP_DIR);
        let storage = FsStorage::new();

        // The first store makes its own file, and asks for a spare.
        let mut first = storage.begin_write(&fs_).unwrap();
        first.write_all(b"first").unwrap();
        storage
            .sync(first.persist(&key("1.2.3", "1.2.3.1")).unwrap())
            .unwrap();
        let spares = wait_for_spares(&storage, &temp_dir, 1);
        let spare = spares.last().unwrap().clone();
        assert!(spare.to_string_lossy().ends_with(SUFFIX), "{spare:?}");
        assert_eq!(fs::metadata(&spare).unwrap().len(), 0);

        // The next one takes it: its bytes are in the file at once, though
        // the writer buffers what follows.
        let mut second = storage.begin_write(&fs_).unwrap();
        second.write_all(b"second").unwrap();
        assert_eq!(fs::read(&spare).unwrap(), b"second");
        assert!(temp_left(dir.path()).iter().any(|n| spare.ends_with(n)));
        let k = key("1.2.3", "1.2.3.2");
        storage.sync(second.persist(&k).unwrap()).unwrap();
        assert!(!spare.exists());
        let mut back = Vec::new();
        storage
            .open(&fs_, &k)
            .unwrap()
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, b"second");

        // A taken spare dropped unpersisted is removed.
        let taken = wait_for_spares(&storage, &temp_dir, 1).pop().unwrap();
        let mut dropped = storage.begin_write(&fs_).unwrap();
        dropped.write_all(b"dropped").unwrap();
        assert_eq!(fs::read(&taken).unwrap(), b"dropped");
        drop(dropped);
        assert!(!taken.exists());
        assert_eq!(temp_left(dir.path()), Vec::<String>::new());

        // However many stores ask, no more than PER_ROOT wait.
        for _ in 0..3 * PER_ROOT {
            drop(storage.begin_write(&fs_).unwrap());
        }
        wait_for_spares(&storage, &temp_dir, 1);
        std::thread::sleep(Duration::from_millis(100));
        let made = fs::read_dir(&temp_dir)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .to_string_lossy()
                    .ends_with(SUFFIX)
            })
            .count();
        assert!((1..=PER_ROOT).contains(&made), "{made} spares");

        drop(storage);
        assert!(
            fs::read_dir(&temp_dir).unwrap().next().is_none(),
            "spares left after the backend was dropped"
        );
    }

    /// A spare older than [`MAX_AGE`] is removed, not handed out: the
    /// periodic sweep may have removed it already.
    #[test]
    fn an_old_spare_is_not_handed_out() {
        let dir = tempfile::tempdir().unwrap();
        let fs_ = filesystem(dir.path());
        let temp_dir = dir.path().join(crate::storage::layout::TEMP_DIR);
        let storage = FsStorage::new();
        drop(storage.begin_write(&fs_).unwrap());
        let old = wait_for_spares(&storage, &temp_dir, 1);
        for spare in storage.inner.spares.ready.lock().values_mut().flatten() {
            spare.made -= MAX_AGE + Duration::from_secs(1);
        }
        let mut writer = storage.begin_write(&fs_).unwrap();
        writer.write_all(b"x").unwrap();
        for spare in &old {
            assert!(!spare.exists(), "{spare:?} was kept");
        }
        drop(writer);
    }
}
