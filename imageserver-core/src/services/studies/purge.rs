//! Purge: an archived study made nearline. Its rows stay (C-FIND finds
//! it); its online files go; its pack is then its only copy, until a
//! restore.
//!
//! The order, each step safe to crash after and to run again:
//! 1. the pack is re-read and must be exactly as recorded (size, BLAKE3)
//!    and hold the study's current content (instance count and bytes);
//! 2. one index transaction makes the study nearline, only if it is still
//!    on the filesystem it was read from and holds what the pack holds;
//! 3. the files the pack's manifest names are removed from every
//!    filesystem, with the series metadata.
//!
//! Until 2 commits the study is online and complete; after it, its pack
//! is verified. A rerun of a study already nearline does 3 again.

use super::archive::fault_point;
use super::*;
use crate::archive;

/// What a purge did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PurgeReport {
    /// Whether this run made the study nearline (false: an earlier run did).
    pub switched: bool,
    /// Online files removed.
    pub removed: u64,
    /// Their study's bytes (what the purge freed online).
    pub bytes: u64,
}

impl Studies {
    /// Purges an archived study (see the module). Take the study's write
    /// lock (the `purge_study` item does).
    pub fn purge(&self, partition: &Partition, study_uid: &Uid) -> Result<PurgeReport, StudyError> {
        let record = self
            .store()
            .study(partition.id, study_uid)?
            .ok_or_else(|| Self::unknown(partition, study_uid))?;
        let entry = self.current_pack(
            partition,
            study_uid,
            record.num_instances,
            record.size_bytes,
        )?;
        let pack = std::path::Path::new(&entry.path);
        let mut report = PurgeReport {
            bytes: record.size_bytes,
            ..PurgeReport::default()
        };
        if let Some(location) = &record.location {
            if archive::digest_pack(pack)? != (entry.size_bytes, entry.digest.clone()) {
                return Err(archive::ArchiveError::Damaged {
                    path: pack.to_path_buf(),
                    reason: "its digest differs from the recorded one".into(),
                }
                .into());
            }
            if !self.db.switch_to_nearline(
                partition.id,
                study_uid,
                location.filesystem,
                entry.instances,
                entry.instance_bytes,
            )? {
                return Err(StudyError::Busy(study_uid.clone()));
            }
            report.switched = true;
            tracing::info!(%study_uid, pack = %entry.path, "study purged: nearline");
            fault_point("purge-switched");
        }
        let manifest = archive::read_manifest(pack)?;
        report.removed = self.remove_packed_files(
            partition,
            study_uid,
            &manifest,
            None,
            Some("purge-removed-one"),
        )?;
        Ok(report)
    }
}
