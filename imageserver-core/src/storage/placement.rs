//! Placement: which filesystem a new study goes to.
//!
//! [`Ingest`](crate::services::Ingest) asks its [`Placement`] for every new
//! instance's temporary file, and a study new to the index is claimed on
//! the filesystem it chose; later instances follow the study. Tiering plugs
//! in here.

use super::StorageBackend;
use crate::model::Filesystem;

/// Decides where new studies go.
pub trait Placement: Send + Sync + std::fmt::Debug {
    /// The filesystem for a new instance among `filesystems` (the index's
    /// list), or `None` when none can take it.
    fn place(&self, filesystems: &[Filesystem], storage: &dyn StorageBackend)
        -> Option<Filesystem>;
}

/// Today's policy: among enabled, writable filesystems with at least
/// `min_free_bytes` available, the lowest tier number, and within it the
/// one with the most room. A filesystem whose usage cannot be read is
/// skipped with a warning.
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
