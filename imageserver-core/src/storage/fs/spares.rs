//! Spare temporary files, made ahead of need.
//!
//! Creating a file was the dearest step of receiving a small instance:
//! 50–400 µs on this machine's ext4, depending on the folder, and a round
//! trip to the server on a NAS; renaming one within its folder costs
//! ~10 µs. A helper thread keeps up to [`SPARES`] empty `*.spare` files
//! open in each `<root>/.tmp` that writers use; a writer takes one and
//! renames it to its own `*.part` name, and the helper makes the next. With
//! none ready the writer creates its file itself, as before.
//!
//! A spare is never written to under its `.spare` name, so a `.part` file
//! is always a writer's. The temporary sweep treats both alike (a dead
//! process's are removed, any other only once stale); a spare older than
//! [`MAX_AGE`], far below the shortest staleness, is thrown away rather
//! than used, so no sweep removes a spare that is still taken.

use std::collections::{HashMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::temp::{temp_name, SPARE_SUFFIX};

/// Spares kept per temporary folder.
pub(super) const SPARES: usize = 8;

/// Older spares are removed instead of used.
pub(super) const MAX_AGE: Duration = Duration::from_secs(60);

/// After a failure to make a spare in a folder, the helper leaves that
/// folder alone this long (a full disk, a folder removed).
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// The spares of every temporary folder written through one backend, and
/// the helper thread that makes them (started by the first [`Spares::take`];
/// stopped, and the spares removed, on drop).
#[derive(Default)]
pub(super) struct Spares {
    shared: Arc<Shared>,
    helper: Mutex<Option<JoinHandle<()>>>,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    wanted: Condvar,
    counter: AtomicU64,
}

#[derive(Default)]
struct State {
    /// Ready spares by temporary folder, oldest first.
    pools: HashMap<PathBuf, VecDeque<Spare>>,
    /// When the helper last failed to make a spare in a folder.
    failed: HashMap<PathBuf, Instant>,
    started: bool,
    helper_waiting: bool,
    closed: bool,
}

struct Spare {
    file: File,
    path: PathBuf,
    made: Instant,
}

impl std::fmt::Debug for Spares {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.shared.lock();
        f.debug_struct("Spares")
            .field(
                "ready",
                &state.pools.values().map(VecDeque::len).sum::<usize>(),
            )
            .finish()
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is plain values, whole after any panic.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A folder whose pool is short of spares (and did not just fail).
    fn wanting(state: &State) -> Option<PathBuf> {
        state
            .pools
            .iter()
            .filter(|(_, pool)| pool.len() < SPARES)
            .map(|(dir, _)| dir)
            .find(|dir| {
                state
                    .failed
                    .get(*dir)
                    .is_none_or(|at| at.elapsed() >= RETRY_AFTER)
            })
            .cloned()
    }

    fn make(&self, dir: &Path) -> std::io::Result<Spare> {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(temp_name(format_args!("s{n}"), SPARE_SUFFIX));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)?;
        Ok(Spare {
            file,
            path,
            made: Instant::now(),
        })
    }

    /// The helper: tops every pool up, then waits to be asked again.
    fn run(&self) {
        let mut state = self.lock();
        while !state.closed {
            let Some(dir) = Self::wanting(&state) else {
                state.helper_waiting = true;
                let wait = if state.failed.is_empty() {
                    Duration::from_secs(3600)
                } else {
                    RETRY_AFTER
                };
                state = self
                    .wanted
                    .wait_timeout(state, wait)
                    .map(|(state, _)| state)
                    .unwrap_or_else(|p| p.into_inner().0);
                state.helper_waiting = false;
                continue;
            };
            drop(state);
            let made = self.make(&dir);
            state = self.lock();
            match made {
                Ok(spare) if state.closed => {
                    let _ = fs::remove_file(&spare.path);
                }
                Ok(spare) => {
                    state.failed.remove(&dir);
                    state.pools.entry(dir).or_default().push_back(spare);
                }
                Err(error) => {
                    tracing::debug!(dir = %dir.display(), %error, "cannot make a spare temporary file");
                    state.failed.insert(dir, Instant::now());
                }
            }
        }
    }
}

impl Spares {
    /// A spare of `dir` renamed to `to`, or `None` when none is ready (the
    /// caller then creates its own file). Either way the helper is asked to
    /// top the pool up.
    pub(super) fn take(&self, dir: &Path, to: &Path) -> Option<File> {
        let mut state = self.shared.lock();
        if state.closed {
            return None;
        }
        if !state.started {
            state.started = true;
            let shared = self.shared.clone();
            match std::thread::Builder::new()
                .name("spare-files".into())
                .spawn(move || shared.run())
            {
                Ok(handle) => *self.helper.lock().unwrap_or_else(|p| p.into_inner()) = Some(handle),
                Err(error) => {
                    tracing::warn!(%error, "cannot start the spare-file helper");
                    return None;
                }
            }
        }
        let pool = match state.pools.get_mut(dir) {
            Some(pool) => pool,
            None => state.pools.entry(dir.to_path_buf()).or_default(),
        };
        let mut stale = Vec::new();
        let mut found = None;
        while let Some(spare) = pool.pop_front() {
            if spare.made.elapsed() < MAX_AGE {
                found = Some(spare);
                break;
            }
            stale.push(spare);
        }
        let wake = std::mem::take(&mut state.helper_waiting);
        drop(state);
        if wake {
            self.shared.wanted.notify_one();
        }
        for spare in stale {
            let _ = fs::remove_file(&spare.path);
        }
        let spare = found?;
        match fs::rename(&spare.path, to) {
            Ok(()) => Some(spare.file),
            Err(error) => {
                // Removed under us (a sweep, the folder gone): the caller
                // makes its own file.
                tracing::debug!(path = %spare.path.display(), %error, "a spare temporary file could not be taken");
                None
            }
        }
    }
}

impl Drop for Spares {
    fn drop(&mut self) {
        let pools = {
            let mut state = self.shared.lock();
            state.closed = true;
            std::mem::take(&mut state.pools)
        };
        self.shared.wanted.notify_all();
        if let Some(helper) = self
            .helper
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            let _ = helper.join();
        }
        for spare in pools.into_values().flatten() {
            let _ = fs::remove_file(&spare.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spares_in(dir: &Path) -> Vec<PathBuf> {
        fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.to_string_lossy().ends_with(SPARE_SUFFIX))
            .collect()
    }

    fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// A pool of `dir` after its first take (which finds none), once full.
    fn filled(dir: &Path) -> Spares {
        let spares = Spares::default();
        assert!(spares.take(dir, &dir.join("a.part")).is_none());
        wait_for("a full pool", || spares_in(dir).len() == SPARES);
        spares
    }

    /// The first take finds none and starts the helper; the pool fills,
    /// a take renames a spare to the writer's name, and the drop removes
    /// what is left.
    #[test]
    fn spares_are_made_taken_renamed_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let spares = filled(dir.path());
        let mut file = spares
            .take(dir.path(), &dir.path().join("b.part"))
            .expect("a spare");
        std::io::Write::write_all(&mut file, b"data").unwrap();
        assert_eq!(fs::read(dir.path().join("b.part")).unwrap(), b"data");
        wait_for("the pool topped up", || {
            spares_in(dir.path()).len() == SPARES
        });
        drop(spares);
        assert!(spares_in(dir.path()).is_empty());
        assert!(dir.path().join("b.part").exists(), "the taken file stays");
    }

    /// A spare removed under the pool (a sweep) is not handed out; an old
    /// one is removed instead of used.
    #[test]
    fn a_removed_or_old_spare_is_not_taken() {
        let dir = tempfile::tempdir().unwrap();
        let spares = filled(dir.path());
        for spare in spares_in(dir.path()) {
            fs::remove_file(spare).unwrap();
        }
        assert!(spares
            .take(dir.path(), &dir.path().join("b.part"))
            .is_none());
        assert!(!dir.path().join("b.part").exists());

        wait_for("a full pool", || {
            spares
                .shared
                .lock()
                .pools
                .values()
                .map(VecDeque::len)
                .sum::<usize>()
                == SPARES
        });
        let old: Vec<PathBuf> = {
            let mut state = spares.shared.lock();
            let pool = state.pools.values_mut().flatten();
            pool.map(|spare| {
                spare.made = spare.made.checked_sub(MAX_AGE).unwrap();
                spare.path.clone()
            })
            .collect()
        };
        assert_eq!(old.len(), SPARES);
        assert!(spares
            .take(dir.path(), &dir.path().join("c.part"))
            .is_none());
        assert!(!dir.path().join("c.part").exists());
        for path in old {
            assert!(!path.exists(), "{} was kept", path.display());
        }
    }
}
