//! Archive (HSM): a quiet study packed into its partition's archive root
//! (one tar file with a manifest of every instance's digest, see
//! [`crate::archive`]), then recorded in the index. `purge.rs` makes an
//! archived study nearline, `restore.rs` brings it back.
//!
//! The order, each step safe to crash after and to run again:
//! 1. the pack is written to a temporary name, every instance checked
//!    against its indexed digest as it is copied, fsync'd, renamed over
//!    any older pack of the study, the directories fsync'd;
//! 2. one index transaction records it (path, size, digest, what it holds).
//!
//! A crash before 2 leaves a pack the index does not name (a rerun writes
//! it again) or a temporary file (removed by the next pack of the study);
//! the study stays online throughout: archiving never touches its files.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::*;
use crate::archive::{self, ArchiveRoot, Manifest, ManifestEntry};
use crate::db::archive::ArchiveEntry;
use crate::storage::placement::{LowestTierMostRoom, Placement};

/// Names a fault-injection point of archive, purge and restore: when the
/// environment variable equals a step's name (`archive-packed`,
/// `purge-switched`, `purge-removed-one`, `restore-unpacked-one`,
/// `restore-verified`, `restore-switched`), the operation logs and pauses
/// there for ten minutes, so that a test can kill -9 the process at that
/// step. Never set in production.
pub const ARCHIVE_FAULT_PAUSE_ENV: &str = crate::fault::ARCHIVE_ENV;

pub(super) fn fault_point(step: &str) {
    crate::fault::ARCHIVE.pass(step);
}

/// What the archive operations need beside the index and the storage: the
/// archive root, where a restore places a study, and the restore limit.
#[derive(Debug, Clone)]
pub struct Hsm {
    pub(super) root: Option<ArchiveRoot>,
    pub(super) placement: Arc<dyn Placement>,
    pub(super) restores: Arc<RestoreSlots>,
}

impl Default for Hsm {
    fn default() -> Hsm {
        Hsm::new(None, Arc::new(LowestTierMostRoom { min_free_bytes: 0 }), 2)
    }
}

impl Hsm {
    /// Packs go to `root` (none: archiving is off; restores of studies
    /// packed earlier still read their recorded paths); restores are placed
    /// by `placement`, at most `max_restores` at once in this process.
    pub fn new(
        root: Option<ArchiveRoot>,
        placement: Arc<dyn Placement>,
        max_restores: usize,
    ) -> Hsm {
        Hsm {
            root,
            placement,
            restores: Arc::new(RestoreSlots {
                max: max_restores.max(1),
                running: AtomicUsize::new(0),
                cluster: None,
            }),
        }
    }

    /// The restore limit held across every process sharing `index` (a
    /// cluster): each running restore holds one of the numbered slots, a
    /// named lease in the index (`restore:<n>`) renewed while it runs and
    /// expiring when its holder dies.
    pub fn in_index(mut self, index: Arc<dyn crate::db::nodes::NodeStore>) -> Hsm {
        self.restores = Arc::new(RestoreSlots {
            max: self.restores.max,
            running: AtomicUsize::new(0),
            cluster: Some(index),
        });
        self
    }

    /// The archive root, if archiving is on.
    pub fn root(&self) -> Option<&ArchiveRoot> {
        self.root.as_ref()
    }
}

/// The restores running in this process, and how many may (in this
/// process, and with [`Hsm::in_index`] in the whole deployment).
pub(super) struct RestoreSlots {
    max: usize,
    running: AtomicUsize,
    cluster: Option<Arc<dyn crate::db::nodes::NodeStore>>,
}

impl std::fmt::Debug for RestoreSlots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RestoreSlots")
            .field("max", &self.max)
            .field("running", &self.running)
            .field("cluster_wide", &self.cluster.is_some())
            .finish()
    }
}

/// A restore's slot, given back when dropped.
pub(super) struct RestoreSlot {
    slots: Arc<RestoreSlots>,
    /// Its lease in the index (cluster-wide limits), released when dropped.
    _lease: Option<crate::services::devices::ClusterSlot>,
}

impl RestoreSlots {
    pub(super) fn take(self: &Arc<Self>) -> Option<RestoreSlot> {
        self.running
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .ok()?;
        let mut slot = RestoreSlot {
            slots: self.clone(),
            _lease: None,
        };
        if let Some(index) = &self.cluster {
            // Dropping the slot without a lease gives the count back.
            let names = (0..self.max).map(|n| format!("restore:{n}"));
            slot._lease = Some(crate::services::devices::ClusterSlot::take_named(
                index, names, "restore",
            )?);
        }
        Some(slot)
    }
}

impl Drop for RestoreSlot {
    fn drop(&mut self) {
        self.slots.running.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(all(test, feature = "sqlite"))]
mod restore_slot_tests {
    use super::*;
    use crate::db::sqlite::SqliteIndex;

    /// Two processes' slots over one index (two nodes): the limit holds
    /// across them, and a slot given back is free for either.
    #[test]
    fn the_restore_limit_holds_across_processes_sharing_an_index() {
        let dir = tempfile::tempdir().expect("tempdir");
        let index: Arc<dyn crate::db::nodes::NodeStore> =
            Arc::new(SqliteIndex::open(&dir.path().join("index.db")).expect("open"));
        let placement = || Arc::new(LowestTierMostRoom { min_free_bytes: 0 });
        let node_a = Hsm::new(None, placement(), 2).in_index(index.clone());
        let node_b = Hsm::new(None, placement(), 2).in_index(index);
        let a = node_a.restores.take().expect("a first slot");
        let b = node_b.restores.take().expect("a second slot");
        assert!(node_a.restores.take().is_none(), "both slots held");
        assert!(node_b.restores.take().is_none(), "on either node");
        drop(a);
        let c = node_b.restores.take().expect("the slot given back");
        assert!(node_a.restores.take().is_none());
        drop((b, c));
        assert!(node_a.restores.take().is_some());
        // Per process only (no index): the process's own limit.
        let alone = Hsm::new(None, placement(), 1);
        let _held = alone.restores.take().expect("one");
        assert!(alone.restores.take().is_none());
    }
}

/// What an archive run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveReport {
    /// The pack.
    pub path: PathBuf,
    /// Its size.
    pub pack_bytes: u64,
    /// The instances it holds.
    pub instances: u64,
    /// Their bytes.
    pub instance_bytes: u64,
    /// False when a pack of the study's current content was recorded
    /// already (nothing written).
    pub written: bool,
}

impl Studies {
    /// The same operations, archiving with `hsm`.
    pub fn with_hsm(mut self, hsm: Hsm) -> Studies {
        self.hsm = hsm;
        self
    }

    /// The archive settings these operations use.
    pub fn hsm(&self) -> &Hsm {
        &self.hsm
    }

    /// The archive root, its identity marker checked against the index's
    /// record (written and recorded at first use).
    fn archive_root(&self) -> Result<&ArchiveRoot, StudyError> {
        let root = self.hsm.root.as_ref().ok_or(StudyError::NoArchive)?;
        self.checked_root(root)?;
        Ok(root)
    }

    fn checked_root(&self, root: &ArchiveRoot) -> Result<(), StudyError> {
        // Two operations marking a fresh root at once would propose two
        // markers: one at a time in this process (another process's is
        // seen by the re-read below).
        static MARKING: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _one = MARKING.lock().unwrap_or_else(|p| p.into_inner());
        let found = root.read_marker()?;
        let proposed = found.clone().unwrap_or_else(archive::new_marker);
        let path = root.path().to_string_lossy().into_owned();
        let recorded = self.db.archive_root_marker(&path, &proposed)?;
        match found {
            Some(found) if found == recorded => Ok(()),
            None if recorded == proposed => {
                root.write_marker(&recorded)?;
                tracing::info!(root = %path, "archive root marked");
                Ok(())
            }
            // Another process marked it just now.
            None if root.read_marker()?.as_ref() == Some(&recorded) => Ok(()),
            _ => Err(archive::ArchiveError::Unmounted {
                path: root.path().to_path_buf(),
            }
            .into()),
        }
    }

    /// The root holding the pack at `path` (a recorded pack may predate
    /// the configured root): its marker is checked when it is the
    /// configured root.
    fn check_pack_root(&self, path: &std::path::Path) -> Result<(), StudyError> {
        if let Some(root) = &self.hsm.root {
            if path.starts_with(root.path()) {
                self.checked_root(root)?;
            }
        }
        Ok(())
    }

    /// Packs a study into the archive root and records it (see the
    /// module). A study whose current content is packed already is left
    /// alone. Take the study's read lock (the `archive_study` item does).
    pub fn archive(
        &self,
        partition: &Partition,
        study_uid: &Uid,
    ) -> Result<ArchiveReport, StudyError> {
        let root = self.archive_root()?;
        let (location, filesystem) = self.online_files(partition, study_uid)?;
        let instances = self.store().study_instances(partition.id, study_uid)?;
        let instance_bytes: u64 = instances.iter().map(|i| i.file_size).sum();
        let path = root.pack_path(
            partition.folder.as_str(),
            &location.date_folder,
            study_uid.as_str(),
        );
        if let Some(entry) = self.db.archive_entry(partition.id, study_uid)? {
            if entry.instances == instances.len() as u64
                && entry.instance_bytes == instance_bytes
                && archive::digest_pack(std::path::Path::new(&entry.path)).ok()
                    == Some((entry.size_bytes, entry.digest.clone()))
            {
                return Ok(ArchiveReport {
                    path: entry.path.into(),
                    pack_bytes: entry.size_bytes,
                    instances: entry.instances,
                    instance_bytes,
                    written: false,
                });
            }
        }
        let manifest = Manifest {
            version: 1,
            study_uid: study_uid.as_str().to_string(),
            date_folder: location.date_folder.clone(),
            instances: instances
                .iter()
                .map(|i| ManifestEntry {
                    series_uid: i.series_uid.as_str().to_string(),
                    sop_instance_uid: i.sop_instance_uid.as_str().to_string(),
                    file_size: i.file_size,
                    digest: i.digest.clone(),
                })
                .collect(),
        };
        let by_sop: BTreeMap<&str, &StoredInstance> = instances
            .iter()
            .map(|i| (i.sop_instance_uid.as_str(), i))
            .collect();
        let info = archive::pack(&path, &manifest, &mut |entry| {
            let instance = by_sop[entry.sop_instance_uid.as_str()];
            let reader = self
                .storage
                .open(&filesystem, &key_of(instance))
                .map_err(std::io::Error::other)?;
            Ok(Box::new(reader) as Box<dyn std::io::Read>)
        })?;
        fault_point("archive-packed");
        self.db.record_archive(&ArchiveEntry {
            partition: partition.id,
            study_uid: study_uid.clone(),
            path: info.path.to_string_lossy().into_owned(),
            date_folder: location.date_folder.clone(),
            size_bytes: info.size_bytes,
            digest: info.digest.clone(),
            instances: instances.len() as u64,
            instance_bytes,
            archived_at_ms: crate::db::studies::now_ms(),
        })?;
        tracing::info!(%study_uid, pack = %info.path.display(), bytes = info.size_bytes, instances = instances.len(), "study archived");
        Ok(ArchiveReport {
            path: info.path,
            pack_bytes: info.size_bytes,
            instances: instances.len() as u64,
            instance_bytes,
            written: true,
        })
    }

    /// A deleted study's pack: the file removed, then its record (a crash
    /// between leaves a record of a missing pack, which the delete's rerun
    /// forgets).
    pub(super) fn forget_pack(
        &self,
        partition: &Partition,
        study_uid: &Uid,
    ) -> Result<(), StudyError> {
        if let Some(entry) = self.db.archive_entry(partition.id, study_uid)? {
            archive::remove_pack(std::path::Path::new(&entry.path))?;
            self.db.forget_archive(partition.id, study_uid)?;
            tracing::info!(%study_uid, pack = %entry.path, "the deleted study's pack removed");
        }
        Ok(())
    }

    /// The study's pack as recorded, if it holds the study's current
    /// content (its root's marker checked): [`StudyError::NotArchived`] when
    /// none was recorded, [`StudyError::StaleArchive`] when instances
    /// changed since. `archived_at_ms` is when that pack was recorded (an
    /// `online_retention` rule counts from it).
    pub fn current_archive(
        &self,
        partition: &Partition,
        study_uid: &Uid,
    ) -> Result<ArchiveEntry, StudyError> {
        let record = self
            .store()
            .study(partition.id, study_uid)?
            .ok_or_else(|| Self::unknown(partition, study_uid))?;
        self.current_pack(
            partition,
            study_uid,
            record.num_instances,
            record.size_bytes,
        )
    }

    /// The study's pack as recorded, which must hold its current content
    /// (`instances` rows of `bytes`), its root's marker checked.
    pub(super) fn current_pack(
        &self,
        partition: &Partition,
        study_uid: &Uid,
        instances: u64,
        bytes: u64,
    ) -> Result<ArchiveEntry, StudyError> {
        let entry = self
            .db
            .archive_entry(partition.id, study_uid)?
            .ok_or_else(|| StudyError::NotArchived(study_uid.clone()))?;
        if entry.instances != instances || entry.instance_bytes != bytes {
            return Err(StudyError::StaleArchive(study_uid.clone()));
        }
        self.check_pack_root(std::path::Path::new(&entry.path))?;
        Ok(entry)
    }

    /// The study files a pack's manifest names, on every filesystem but
    /// `keep`: removed (with the series metadata and emptied folders).
    /// Returns the instance files removed.
    pub(super) fn remove_packed_files(
        &self,
        partition: &Partition,
        study_uid: &Uid,
        manifest: &Manifest,
        keep: Option<FilesystemId>,
        fault: Option<&str>,
    ) -> Result<u64, StudyError> {
        let packed: BTreeSet<&str> = manifest
            .instances
            .iter()
            .map(|i| i.sop_instance_uid.as_str())
            .collect();
        let mut removed = 0;
        for filesystem in self.db.filesystems()? {
            if Some(filesystem.id) == keep {
                continue;
            }
            let location = StudyLocation {
                filesystem: filesystem.id,
                partition_folder: partition.folder.clone(),
                date_folder: manifest.date_folder.clone(),
                study_uid: study_uid.clone(),
            };
            let objects = match self.storage.list_study(&filesystem, &location) {
                Ok(objects) => objects,
                Err(e) => {
                    tracing::warn!(filesystem = %filesystem.spec.path.display(), error = %crate::model::error_chain(&e), "cannot look for a study's files");
                    continue;
                }
            };
            if objects.is_empty() {
                continue;
            }
            let mut metadata = false;
            for object in objects {
                match object {
                    StudyObject::Instance(file)
                        if packed.contains(file.sop_instance_uid.as_str()) =>
                    {
                        self.storage.delete(
                            &filesystem,
                            &InstanceKey {
                                location: location.clone(),
                                series_uid: file.series_uid,
                                sop_instance_uid: file.sop_instance_uid,
                            },
                        )?;
                        removed += 1;
                        if removed == 1 {
                            if let Some(step) = fault {
                                fault_point(step);
                            }
                        }
                    }
                    StudyObject::Metadata { .. } => metadata = true,
                    _ => {}
                }
            }
            if metadata {
                self.storage.delete_study_metadata(&filesystem, &location)?;
            }
            self.storage
                .remove_empty_study_folders(&filesystem, &location)?;
        }
        Ok(removed)
    }
}
