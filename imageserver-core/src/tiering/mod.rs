//! Tiering: the filesystems at run time.
//!
//! The configuration seeds the index's filesystems ([`seed`]); the index
//! is the truth afterwards (`imageserver filesystem add|set` change it),
//! and a running server re-reads it every `filesystem_refresh_secs`
//! ([`Monitor`]). Each refresh also checks every filesystem's identity
//! marker ([`check_marker`]: written into the root when the filesystem is
//! first used and recorded in the index; a root without the recorded
//! marker is never written to) and reads the bytes the index holds on each
//! (what a `capacity_mb` quota is measured against), into the
//! [`FilesystemStates`] that placement and ingest read.
//!
//! Everything here goes through the seams: the index through
//! [`IndexStore`], the roots through [`StorageBackend`].

pub mod watermark;

use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::db::{self, IndexStore};
use crate::model::{error_chain, Filesystem, FilesystemSpec};
use crate::storage::placement::{quota_usage, FilesystemStates};
use crate::storage::{StorageBackend, Usage};

/// Seeds the index with the configured filesystems: a path new to the
/// index is added; a known one keeps the index's values (a configuration
/// that differs is reported, not applied: `imageserver filesystem set`
/// changes a filesystem). Returns the rows.
pub fn seed(
    index: &dyn IndexStore,
    specs: &[FilesystemSpec],
) -> Result<Vec<Filesystem>, db::Error> {
    let mut rows = Vec::new();
    for spec in specs {
        let (row, created) = index.seed_filesystem(spec)?;
        if created {
            tracing::info!(filesystem = %spec.path.display(), tier = spec.tier.0, "filesystem added from the configuration");
        } else if row.spec != *spec {
            tracing::info!(
                filesystem = %spec.path.display(),
                "the configuration differs from the index for this filesystem: the index's values are in force (change them with `imageserver filesystem set`)"
            );
        }
        rows.push(row);
    }
    Ok(rows)
}

/// Why a root cannot be taken as a filesystem of the index ([`adopt`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdoptError {
    /// The root holds the identity marker of another row of the index:
    /// that filesystem is mounted at another path than the index says.
    #[error(
        "{path} holds the identity marker of filesystem {id} ({known}): mount it at {known}, or          reinventory filesystem {id}"
    )]
    MarkerOfAnother {
        /// The root asked for.
        path: std::path::PathBuf,
        /// The filesystem whose marker it holds.
        id: i64,
        /// Where the index expects that filesystem.
        known: std::path::PathBuf,
    },
    /// The root's identity marker does not fit the index's row.
    #[error("filesystem {path} refused: {reason}")]
    Refused {
        /// The root.
        path: std::path::PathBuf,
        /// What is wrong with its marker.
        reason: String,
    },
    /// The index failed.
    #[error("index failure")]
    Index(#[from] db::Error),
}

/// The index's row for the root `spec.path`, for a reinventory of it: the
/// row with that path, else a new row from `spec` — unless the root holds
/// the marker another row recorded. Its identity marker is checked, and
/// adopted from the root when the index recorded none (the marker written
/// at the filesystem's first use is what says which filesystem a root is,
/// also to an index rebuilt from nothing).
pub fn adopt(
    index: &dyn IndexStore,
    storage: &dyn StorageBackend,
    spec: &FilesystemSpec,
) -> Result<Filesystem, AdoptError> {
    let rows = index.filesystems()?;
    let row = match rows.iter().find(|fs| fs.spec.path == spec.path) {
        Some(row) => row.clone(),
        None => {
            let probe = Filesystem {
                id: crate::model::FilesystemId(0),
                spec: spec.clone(),
                enabled: false,
                marker: None,
            };
            if let Ok(Some(found)) = storage.read_marker(&probe) {
                if let Some(other) = rows.iter().find(|fs| fs.marker.as_ref() == Some(&found)) {
                    return Err(AdoptError::MarkerOfAnother {
                        path: spec.path.clone(),
                        id: other.id.0,
                        known: other.spec.path.clone(),
                    });
                }
            }
            let (row, created) = index.seed_filesystem(spec)?;
            if created {
                tracing::info!(filesystem = %spec.path.display(), id = row.id.0, "filesystem added for its reinventory");
            }
            row
        }
    };
    match check_marker(index, storage, &row, true) {
        MarkerState::Present(marker) => Ok(Filesystem {
            marker: Some(marker),
            ..row
        }),
        other => Err(AdoptError::Refused {
            path: row.spec.path.clone(),
            reason: other
                .refusal()
                .unwrap_or_else(|| "no identity marker".to_string()),
        }),
    }
}

/// What a filesystem's identity marker says about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MarkerState {
    /// The root holds the marker the index recorded: it may be written.
    Present(String),
    /// Never used yet: no marker recorded (a check that may write gives it
    /// one).
    Unmarked,
    /// The index recorded a marker and the root has none: not the
    /// filesystem it was (an unmounted share, an empty folder where the
    /// NAS should be). Never written to.
    Missing {
        /// The recorded marker.
        expected: String,
    },
    /// The root holds another marker than the index recorded (another
    /// filesystem mounted there). Never written to.
    Mismatch {
        /// The recorded marker.
        expected: String,
        /// The marker found.
        found: String,
    },
    /// The marker could not be read or written.
    Unreadable(String),
}

impl MarkerState {
    /// Why the filesystem may not be written, `None` when it may.
    pub fn refusal(&self) -> Option<String> {
        match self {
            MarkerState::Present(_) | MarkerState::Unmarked => None,
            MarkerState::Missing { expected } => Some(format!(
                "identity marker {expected} missing from the root (not mounted?)"
            )),
            MarkerState::Mismatch { expected, found } => Some(format!(
                "the root holds identity marker {found}, the index expects {expected} (another filesystem mounted there?)"
            )),
            MarkerState::Unreadable(error) => Some(format!("identity marker unreadable: {error}")),
        }
    }

    /// A short word for listings: ok, unmarked, missing, mismatch, error.
    pub fn word(&self) -> &'static str {
        match self {
            MarkerState::Present(_) => "ok",
            MarkerState::Unmarked => "unmarked",
            MarkerState::Missing { .. } => "missing",
            MarkerState::Mismatch { .. } => "mismatch",
            MarkerState::Unreadable(_) => "error",
        }
    }
}

/// A new marker: 128 bits as a UUID-shaped string (BLAKE3 of the time, the
/// process, the host and the path: unique without a random source).
fn new_marker(filesystem: &Filesystem) -> String {
    let mut hasher = blake3::Hasher::new();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    hasher.update(&now.as_nanos().to_le_bytes());
    hasher.update(&std::process::id().to_le_bytes());
    hasher.update(filesystem.spec.path.as_os_str().as_encoded_bytes());
    hasher.update(&filesystem.id.0.to_le_bytes());
    let hex = hasher.finalize().to_hex();
    let h = &hex.as_str()[..32];
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Checks a filesystem's identity marker. When the index has none yet and
/// `may_write`, this is the filesystem's first use: a marker already in
/// the root is adopted, else a new one is written (creating the root) and
/// recorded; processes doing so at once agree on one (the file is never
/// overwritten, the index keeps the first recorded).
pub fn check_marker(
    index: &dyn IndexStore,
    storage: &dyn StorageBackend,
    filesystem: &Filesystem,
    may_write: bool,
) -> MarkerState {
    let found = match storage.read_marker(filesystem) {
        Ok(found) => found,
        Err(e) => return MarkerState::Unreadable(error_chain(&e).to_string()),
    };
    match (&filesystem.marker, found) {
        (Some(expected), Some(found)) if *expected == found => MarkerState::Present(found),
        (Some(expected), Some(found)) => MarkerState::Mismatch {
            expected: expected.clone(),
            found,
        },
        (Some(expected), None) => MarkerState::Missing {
            expected: expected.clone(),
        },
        (None, _) if !may_write => MarkerState::Unmarked,
        (None, found) => {
            let in_root = match found {
                Some(found) => found,
                None => {
                    let marker = new_marker(filesystem);
                    match storage.write_marker(filesystem, &marker) {
                        Ok(()) => marker,
                        // Another process wrote one first: read it.
                        Err(e) => match storage.read_marker(filesystem) {
                            Ok(Some(theirs)) => theirs,
                            _ => return MarkerState::Unreadable(error_chain(&e).to_string()),
                        },
                    }
                }
            };
            match index.record_filesystem_marker(filesystem.id, &in_root) {
                Ok(recorded) if recorded == in_root => {
                    tracing::info!(filesystem = %filesystem.spec.path.display(), marker = %recorded, "filesystem identity marker recorded");
                    MarkerState::Present(recorded)
                }
                Ok(recorded) => MarkerState::Mismatch {
                    expected: recorded,
                    found: in_root,
                },
                Err(e) => MarkerState::Unreadable(error_chain(&e).to_string()),
            }
        }
    }
}

/// One filesystem as [`refresh`] found it.
#[derive(Debug, Clone)]
pub struct FilesystemReport {
    /// The index's row.
    pub filesystem: Filesystem,
    /// Its identity marker's state.
    pub marker: MarkerState,
    /// Bytes of the studies the index holds on it.
    pub held_bytes: u64,
    /// Space as placement counts it (the quota, when it has one); `None`
    /// when the root could not be measured.
    pub usage: Option<Usage>,
}

impl FilesystemReport {
    /// Used percentage (as placement counts it), when measured.
    pub fn used_percent(&self) -> Option<f64> {
        self.usage.map(|u| u.used_percent())
    }
}

/// Reads every filesystem, checks its marker (writing first markers when
/// `may_write`) and measures it; when `states` is given, records what
/// placement needs in it and logs each filesystem whose refusal changed.
pub fn refresh(
    index: &dyn IndexStore,
    storage: &dyn StorageBackend,
    states: Option<&FilesystemStates>,
    may_write: bool,
) -> Result<Vec<FilesystemReport>, db::Error> {
    if let Some(states) = states {
        states.measuring();
    }
    let held = index.filesystem_held_bytes()?;
    let reports = check(index, storage, states, may_write, &held)?;
    if let Some(states) = states {
        states.set_held(&held);
    }
    Ok(reports)
}

/// What a server checks before it listens: every filesystem's marker
/// (writing first markers), the refusals recorded in `states`; but not
/// the bytes held, whose sum over every study grows with the index (about
/// 0.7 s at 10 M instances): [`measure_later`] measures them once the
/// server runs, and until then a quota waits for them (see
/// [`FilesystemStates::unmeasured`]).
pub fn check_at_start(
    index: &dyn IndexStore,
    storage: &dyn StorageBackend,
    states: &FilesystemStates,
) -> Result<(), db::Error> {
    check(index, storage, Some(states), true, &[])?;
    Ok(())
}

/// Measures the bytes held on every filesystem into `states` on a thread
/// of its own (the first measurement after [`check_at_start`]). A failure
/// is logged; the [`Monitor`]'s next refresh measures again.
pub fn measure_later(
    index: Arc<dyn IndexStore>,
    states: Arc<FilesystemStates>,
) -> std::io::Result<()> {
    // From now on: what is stored before the figures land adds to them.
    states.measuring();
    std::thread::Builder::new()
        .name("filesystem-usage".into())
        .spawn(move || {
            let start = std::time::Instant::now();
            match index.filesystem_held_bytes() {
                Ok(held) => {
                    states.set_held(&held);
                    tracing::debug!(
                        elapsed_ms = start.elapsed().as_millis() as u64,
                        "bytes held per filesystem measured"
                    );
                }
                Err(e) => tracing::warn!(
                    error = %error_chain(&e),
                    "cannot measure the bytes held per filesystem (the next refresh tries again)"
                ),
            }
        })
        .map(drop)
}

/// The reports of [`refresh`] with `held` as the bytes held.
fn check(
    index: &dyn IndexStore,
    storage: &dyn StorageBackend,
    states: Option<&FilesystemStates>,
    may_write: bool,
    held: &[(crate::model::FilesystemId, u64)],
) -> Result<Vec<FilesystemReport>, db::Error> {
    let mut reports = Vec::new();
    for filesystem in index.filesystems()? {
        let marker = check_marker(index, storage, &filesystem, may_write);
        let held_bytes = held
            .iter()
            .find(|(id, _)| *id == filesystem.id)
            .map_or(0, |(_, bytes)| *bytes);
        let usage = match storage.usage(&filesystem) {
            Ok(volume) => Some(quota_usage(&filesystem, volume, held_bytes)),
            Err(_) => None,
        };
        if let Some(states) = states {
            let refusal = marker.refusal();
            let before = states.refusal(filesystem.id);
            if refusal != before {
                match &refusal {
                    Some(reason) => tracing::warn!(
                        filesystem = %filesystem.spec.path.display(),
                        %reason,
                        "filesystem refused: nothing is written there"
                    ),
                    None => tracing::info!(
                        filesystem = %filesystem.spec.path.display(),
                        "filesystem may be written again"
                    ),
                }
            }
            states.set_refusal(filesystem.id, refusal);
        }
        reports.push(FilesystemReport {
            filesystem,
            marker,
            held_bytes,
            usage,
        });
    }
    Ok(reports)
}

/// What the watermark service needs: the index and where to enqueue.
#[derive(Debug, Clone)]
pub struct Watermarks {
    /// The index (its study and work sides).
    pub db: Arc<dyn crate::db::Database>,
    /// Where `migrate_study` items go (the local engine, woken at once).
    pub queue: crate::workqueue::WorkQueue,
    /// Most studies enqueued per filesystem and round.
    pub batch: u64,
    /// The filesystems last seen stuck above their high watermark (each
    /// logged once until it is not).
    pub stuck: Arc<std::sync::Mutex<std::collections::BTreeSet<crate::model::FilesystemId>>>,
}

impl Watermarks {
    /// One round: plans and enqueues the migrations and purges the
    /// watermarks call for (see [`watermark::plan`]); returns what was
    /// enqueued.
    pub fn run(&self, reports: &[FilesystemReport]) -> Vec<watermark::PlannedMigration> {
        let mut now_stuck = std::collections::BTreeSet::new();
        let mut stuck = self.stuck.lock().unwrap_or_else(|p| p.into_inner());
        let planned = watermark::plan_noting(self.db.as_ref(), reports, self.batch, &mut |r| {
            now_stuck.insert(r.filesystem.id);
            if !stuck.contains(&r.filesystem.id) {
                tracing::warn!(
                    filesystem = %r.filesystem.spec.path.display(),
                    used_percent = r.used_percent().unwrap_or(100.0),
                    "above its high watermark, and no lower tier has room to migrate to"
                );
            }
        });
        *stuck = now_stuck;
        drop(stuck);
        let planned = match planned {
            Ok(planned) => planned,
            Err(e) => {
                tracing::warn!(error = %error_chain(&e), "cannot plan migrations");
                return Vec::new();
            }
        };
        let mut enqueued = Vec::new();
        for migration in planned {
            let request = match migration.to {
                Some(to) => crate::model::requests::StudyRequest::Migrate { to },
                None => crate::model::requests::StudyRequest::Purge,
            };
            let item = request.work_item(migration.partition, migration.study_uid.clone());
            match self.queue.enqueue(item) {
                Ok(id) => {
                    tracing::info!(study_uid = %migration.study_uid, bytes = migration.bytes, to = ?migration.to.map(|f| f.0), item = ?id, "watermark: study queued for migration (to none: purge)");
                    enqueued.push(migration);
                }
                Err(e) => {
                    tracing::warn!(study_uid = %migration.study_uid, error = %error_chain(&e), "watermark: cannot queue a migration")
                }
            }
        }
        enqueued
    }
}

/// The thread of a running server that refreshes the filesystems every
/// interval, then runs the watermark service (when given) and calls
/// `on_refresh` (ingest re-reads its list). Stops when dropped.
#[derive(Debug)]
pub struct Monitor {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Monitor {
    /// Starts refreshing every `interval`.
    pub fn start(
        index: Arc<dyn IndexStore>,
        storage: Arc<dyn StorageBackend>,
        states: Arc<FilesystemStates>,
        interval: Duration,
        watermarks: Option<Watermarks>,
        on_refresh: Box<dyn Fn() + Send>,
    ) -> std::io::Result<Monitor> {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("filesystems".into())
            .spawn(move || loop {
                match stopped.recv_timeout(interval) {
                    Err(RecvTimeoutError::Timeout) => {}
                    Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
                }
                match refresh(index.as_ref(), storage.as_ref(), Some(&states), true) {
                    Ok(reports) => {
                        on_refresh();
                        if let Some(watermarks) = &watermarks {
                            watermarks.run(&reports);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %error_chain(&e), "cannot refresh the filesystems")
                    }
                }
            })?;
        Ok(Monitor {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
