//! Placement: which filesystem a new study goes to.
//!
//! [`Ingest`](crate::services::Ingest) asks its [`Placement`] for every new
//! instance's temporary file, and a study new to the index is claimed on
//! the filesystem it chose; later instances follow the study.
//!
//! [`Tiered`] is the server's policy: tiers and watermarks, quotas
//! (`capacity_mb`) and identity markers, over the per-filesystem facts a
//! [`FilesystemStates`] keeps (the tiering monitor refreshes them from the
//! index and the roots). [`LowestTierMostRoom`] is the plain one.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, RwLock};
use std::time::Duration;

use super::{Error, StorageBackend, Usage};
use crate::model::{Filesystem, FilesystemId};

/// Decides where new studies go.
pub trait Placement: Send + Sync + std::fmt::Debug {
    /// The filesystem for a new instance among `filesystems` (the index's
    /// list), or `None` when none can take it.
    fn place(&self, filesystems: &[Filesystem], storage: &dyn StorageBackend)
        -> Option<Filesystem>;

    /// Space on a filesystem as this policy counts it (a quota, when it
    /// knows one): what ingest checks while a store streams in.
    fn usage(&self, filesystem: &Filesystem, storage: &dyn StorageBackend) -> Result<Usage, Error> {
        storage.usage(filesystem)
    }

    /// Why nothing may be written to `filesystem` now (its identity marker
    /// is missing: an unmounted share), `None` when it may be.
    fn refusal(&self, _filesystem: FilesystemId) -> Option<String> {
        None
    }

    /// Told after a commit that `bytes` more are held on `filesystem`.
    fn stored(&self, _filesystem: FilesystemId, _bytes: u64) {}
}

/// Among enabled, writable filesystems with at least `min_free_bytes`
/// available, the lowest tier number, and within it the one with the most
/// room. A filesystem whose usage cannot be read is skipped with a warning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LowestTierMostRoom {
    /// Free space a filesystem must keep to take new instances.
    pub min_free_bytes: u64,
}

impl Placement for LowestTierMostRoom {
    fn place(
        &self,
        filesystems: &[Filesystem],
        storage: &dyn StorageBackend,
    ) -> Option<Filesystem> {
        let mut best: Option<(&Filesystem, u64)> = None;
        for fs in filesystems
            .iter()
            .filter(|fs| fs.enabled && !fs.spec.read_only)
        {
            if let Some((chosen, _)) = best {
                if fs.spec.tier > chosen.spec.tier {
                    continue;
                }
            }
            let usage = match storage.usage(fs) {
                Ok(usage) => usage,
                Err(error) => {
                    tracing::warn!(filesystem = %fs.spec.path.display(), %error, "filesystem unusable");
                    continue;
                }
            };
            if usage.available_bytes < self.min_free_bytes {
                continue;
            }
            let better = match best {
                None => true,
                Some((chosen, room)) => {
                    fs.spec.tier < chosen.spec.tier || usage.available_bytes > room
                }
            };
            if better {
                best = Some((fs, usage.available_bytes));
            }
        }
        best.map(|(fs, _)| fs.clone())
    }
}

/// What is known of each filesystem beyond its index row: the bytes of
/// the studies the index holds on it (what a `capacity_mb` quota is
/// measured against) and whether it may be written (its identity marker).
/// Shared by placement, ingest and the tiering monitor that refreshes it.
///
/// A server starts with the held bytes not yet measured
/// ([`FilesystemStates::unmeasured`]: summing every study's bytes would
/// delay start-up at a large index); until the first
/// [`FilesystemStates::set_held`], the space of a filesystem with a quota
/// waits for it, and counts as full if it does not come in time.
#[derive(Debug)]
pub struct FilesystemStates {
    states: RwLock<HashMap<FilesystemId, State>>,
    /// Whether a measurement is under way ([`FilesystemStates::measuring`]);
    /// read and written under the `states` write lock only.
    measuring: AtomicBool,
    /// Whether the held bytes were measured.
    measured: Mutex<bool>,
    measured_now: Condvar,
    /// How long a quota's usage waits for the first measurement.
    unmeasured_wait: Duration,
}

impl Default for FilesystemStates {
    /// Measured: every filesystem holds nothing until told otherwise.
    fn default() -> Self {
        FilesystemStates {
            states: RwLock::default(),
            measuring: AtomicBool::new(false),
            measured: Mutex::new(true),
            measured_now: Condvar::new(),
            unmeasured_wait: Duration::ZERO,
        }
    }
}

#[derive(Debug, Default, Clone)]
struct State {
    held_bytes: u64,
    /// Bytes added since the measurement under way started.
    added_while_measuring: u64,
    refused: Option<String>,
}

impl FilesystemStates {
    /// States whose held bytes are still to be measured: until the first
    /// [`FilesystemStates::set_held`], [`FilesystemStates::usage`] of a
    /// filesystem with a quota waits for it for at most `wait`, then
    /// counts the quota as used up (never more than it allows).
    pub fn unmeasured(wait: Duration) -> FilesystemStates {
        FilesystemStates {
            measured: Mutex::new(false),
            unmeasured_wait: wait,
            ..FilesystemStates::default()
        }
    }

    /// Notes that a measurement of the bytes held starts: what
    /// [`FilesystemStates::add_held`] counts from now on is added to the
    /// figures [`FilesystemStates::set_held`] then sets (the measurement
    /// may not see those instances; counted twice if it does, which errs
    /// on the full side until the next measurement).
    pub fn measuring(&self) {
        let mut states = self.states.write().unwrap_or_else(|p| p.into_inner());
        for state in states.values_mut() {
            state.added_while_measuring = 0;
        }
        self.measuring.store(true, Ordering::Relaxed);
    }

    /// Sets the bytes held per filesystem (as the index counts them), plus
    /// those added since [`FilesystemStates::measuring`] when it was
    /// called; a filesystem not listed holds none.
    pub fn set_held(&self, held: &[(FilesystemId, u64)]) {
        let mut states = self.states.write().unwrap_or_else(|p| p.into_inner());
        let measuring = self.measuring.swap(false, Ordering::Relaxed);
        for state in states.values_mut() {
            state.held_bytes = if measuring {
                state.added_while_measuring
            } else {
                0
            };
            state.added_while_measuring = 0;
        }
        for (id, bytes) in held {
            let state = states.entry(*id).or_default();
            state.held_bytes = state.held_bytes.saturating_add(*bytes);
        }
        drop(states);
        *self.measured.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.measured_now.notify_all();
    }

    /// Whether the held bytes have been measured.
    pub fn is_measured(&self) -> bool {
        *self.measured.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits (at most the wait given to [`FilesystemStates::unmeasured`])
    /// for the held bytes to be measured; whether they are.
    fn wait_measured(&self) -> bool {
        let measured = self.measured.lock().unwrap_or_else(|p| p.into_inner());
        let (measured, _) = self
            .measured_now
            .wait_timeout_while(measured, self.unmeasured_wait, |measured| !*measured)
            .unwrap_or_else(|p| p.into_inner());
        *measured
    }

    /// Counts `bytes` more held on `filesystem` (until the next
    /// [`FilesystemStates::set_held`]).
    pub fn add_held(&self, filesystem: FilesystemId, bytes: u64) {
        let mut states = self.states.write().unwrap_or_else(|p| p.into_inner());
        let measuring = self.measuring.load(Ordering::Relaxed);
        let state = states.entry(filesystem).or_default();
        state.held_bytes = state.held_bytes.saturating_add(bytes);
        if measuring {
            state.added_while_measuring = state.added_while_measuring.saturating_add(bytes);
        }
    }

    /// The bytes held on `filesystem`.
    pub fn held(&self, filesystem: FilesystemId) -> u64 {
        self.states
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&filesystem)
            .map_or(0, |s| s.held_bytes)
    }

    /// Marks `filesystem` as not to be written, with why (`None`: it may
    /// be written again).
    pub fn set_refusal(&self, filesystem: FilesystemId, reason: Option<String>) {
        let mut states = self.states.write().unwrap_or_else(|p| p.into_inner());
        states.entry(filesystem).or_default().refused = reason;
    }

    /// Why `filesystem` may not be written, if it may not.
    pub fn refusal(&self, filesystem: FilesystemId) -> Option<String> {
        self.states
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&filesystem)
            .and_then(|s| s.refused.clone())
    }

    /// Space on `filesystem`: with a `capacity_mb` quota, the quota is the
    /// total and the bytes held are used (never more available than the
    /// volume has; before the first measurement, see
    /// [`FilesystemStates::unmeasured`]); without one, the volume's own
    /// figures.
    pub fn usage(
        &self,
        filesystem: &Filesystem,
        storage: &dyn StorageBackend,
    ) -> Result<Usage, Error> {
        let volume = storage.usage(filesystem)?;
        let held = match filesystem.spec.capacity_mb {
            Some(_) if !self.wait_measured() => {
                tracing::warn!(
                    filesystem = %filesystem.spec.path.display(),
                    "the bytes held are not measured yet: the quota counts as used up"
                );
                u64::MAX
            }
            _ => self.held(filesystem.id),
        };
        Ok(quota_usage(filesystem, volume, held))
    }
}

/// The usage of `filesystem` under its quota, if it has one.
pub fn quota_usage(filesystem: &Filesystem, volume: Usage, held_bytes: u64) -> Usage {
    match filesystem.spec.capacity_mb {
        None => volume,
        Some(mb) => {
            let total = mb.saturating_mul(1024 * 1024);
            Usage {
                total_bytes: total,
                available_bytes: total.saturating_sub(held_bytes).min(volume.available_bytes),
            }
        }
    }
}

/// The server's placement. Among enabled, writable filesystems that may be
/// written (marker present) and keep at least `min_free_bytes` available
/// (the reserve): first those used below their high watermark, the
/// highest tier (lowest number) first and within a tier the most room;
/// when every one is above its high watermark, the same order over the
/// rest (the watermark service frees space; the reserve is what refuses
/// stores). Usage counts a `capacity_mb` quota.
#[derive(Debug)]
pub struct Tiered {
    /// Free space a filesystem must keep to take new instances.
    pub min_free_bytes: u64,
    /// The facts the choice reads.
    pub states: std::sync::Arc<FilesystemStates>,
}

impl Placement for Tiered {
    fn place(
        &self,
        filesystems: &[Filesystem],
        storage: &dyn StorageBackend,
    ) -> Option<Filesystem> {
        // (below its high watermark, tier, room)
        let mut best: Option<(&Filesystem, bool, u64)> = None;
        for fs in filesystems
            .iter()
            .filter(|fs| fs.enabled && !fs.spec.read_only)
        {
            if self.states.refusal(fs.id).is_some() {
                continue;
            }
            let usage = match self.states.usage(fs, storage) {
                Ok(usage) => usage,
                Err(error) => {
                    tracing::warn!(filesystem = %fs.spec.path.display(), %error, "filesystem unusable");
                    continue;
                }
            };
            if usage.available_bytes < self.min_free_bytes.max(1) {
                continue;
            }
            let below = usage.used_percent() < fs.spec.high_watermark;
            let better = match best {
                None => true,
                Some((chosen, chosen_below, room)) => {
                    (
                        below,
                        std::cmp::Reverse(fs.spec.tier),
                        usage.available_bytes,
                    ) > (chosen_below, std::cmp::Reverse(chosen.spec.tier), room)
                }
            };
            if better {
                best = Some((fs, below, usage.available_bytes));
            }
        }
        best.map(|(fs, _, _)| fs.clone())
    }

    fn usage(&self, filesystem: &Filesystem, storage: &dyn StorageBackend) -> Result<Usage, Error> {
        self.states.usage(filesystem, storage)
    }

    fn refusal(&self, filesystem: FilesystemId) -> Option<String> {
        self.states.refusal(filesystem)
    }

    fn stored(&self, filesystem: FilesystemId, bytes: u64) {
        self.states.add_held(filesystem, bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{FilesystemSpec, Tier};
    use crate::storage::fs::FsStorage;

    fn quota_filesystem(root: &std::path::Path) -> Filesystem {
        Filesystem {
            id: FilesystemId(1),
            spec: FilesystemSpec {
                path: root.to_path_buf(),
                tier: Tier(1),
                high_watermark: 90.0,
                low_watermark: 80.0,
                read_only: false,
                write_only: false,
                description: String::new(),
                capacity_mb: Some(1),
            },
            enabled: true,
            marker: None,
        }
    }

    /// Right after start-up, before the bytes held are measured, a quota
    /// counts as used up: placement never overfills it on a guess.
    #[test]
    fn an_unmeasured_quota_counts_as_used_up_until_measured() {
        let root = tempfile::tempdir().expect("tempdir");
        let storage = FsStorage::new();
        let fs = quota_filesystem(root.path());
        let states = std::sync::Arc::new(FilesystemStates::unmeasured(Duration::ZERO));
        assert!(!states.is_measured());
        let usage = states.usage(&fs, &storage).expect("usage");
        assert_eq!(usage.available_bytes, 0, "{usage:?}");
        let tiered = Tiered {
            min_free_bytes: 0,
            states: states.clone(),
        };
        assert!(tiered.place(std::slice::from_ref(&fs), &storage).is_none());

        states.set_held(&[(fs.id, 1 << 19)]);
        assert!(states.is_measured());
        let usage = states.usage(&fs, &storage).expect("usage");
        assert!(usage.available_bytes <= 1 << 19, "{usage:?}");
        assert!(usage.available_bytes > 0, "{usage:?}");
        assert!(tiered.place(std::slice::from_ref(&fs), &storage).is_some());
    }

    /// A quota's usage waits for a measurement under way rather than count
    /// the quota as used up.
    #[test]
    fn a_quota_waits_for_the_first_measurement() {
        let root = tempfile::tempdir().expect("tempdir");
        let fs = quota_filesystem(root.path());
        let states = std::sync::Arc::new(FilesystemStates::unmeasured(Duration::from_secs(60)));
        let measuring = states.clone();
        let measure = std::thread::spawn(move || measuring.set_held(&[]));
        let usage = states.usage(&fs, &FsStorage::new()).expect("usage");
        measure.join().expect("measure");
        assert!(usage.available_bytes > 0, "{usage:?}");
    }

    /// Bytes stored while a measurement runs are not lost when its (older)
    /// figures land.
    #[test]
    fn bytes_stored_during_a_measurement_are_kept() {
        let fs = FilesystemId(1);
        let states = FilesystemStates::unmeasured(Duration::ZERO);
        states.measuring();
        states.add_held(fs, 100);
        states.set_held(&[(fs, 1000)]);
        assert_eq!(states.held(fs), 1100);
        // A measurement that started after them counts them itself.
        states.add_held(fs, 10);
        states.measuring();
        states.set_held(&[(fs, 1110)]);
        assert_eq!(states.held(fs), 1110);
    }

    /// Without a quota the bytes held are not read: nothing waits.
    #[test]
    fn without_a_quota_nothing_waits() {
        let root = tempfile::tempdir().expect("tempdir");
        let mut fs = quota_filesystem(root.path());
        fs.spec.capacity_mb = None;
        let states = FilesystemStates::unmeasured(Duration::from_secs(3600));
        let usage = states.usage(&fs, &FsStorage::new()).expect("usage");
        assert!(usage.total_bytes > 0, "{usage:?}");
    }
}
