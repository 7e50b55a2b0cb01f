//! Compression: a study's images re-encoded losslessly (RLE Lossless,
//! [`crate::dicom::codec`]), each file replaced only by a verified copy.
//!
//! Per instance, in batches of [`BATCH`]:
//! 1. the file is read whole and its BLAKE3 compared with the index's (a
//!    file that is not what the index says is not recoded);
//! 2. the recoded file is written beside it (a temporary file, fsync'd),
//!    read back, parsed and decoded by the registry's decoder: every frame
//!    must equal the original's pixels and every other element the
//!    original's, the SOP Instance UID kept (otherwise the instance stays
//!    as it is, with a warning);
//! 3. one index transaction per batch records the new transfer syntax,
//!    size and digest of each row that still holds the recoded file's old
//!    digest and, while it holds that row, renames the recoded file over
//!    the original; the directories are synced before it commits. A row
//!    that changed — a replacement (`accept_latest`) committed after step
//!    1 — is left alone and so is its file: the recode is dropped, and a
//!    replacement committing after the switch waits for it, then puts its
//!    own file over the recode.
//!
//! A crash before 3 leaves the original and a temporary file (swept at
//! start). A crash inside 3 leaves verified recoded files the index does
//! not describe (the transaction rolled back): the rerun (the work item is
//! retried) recognises each — the index names a native transfer syntax
//! and another digest, the file is this instance in RLE Lossless and
//! decodes — and records it. Instances already compressed, without pixel
//! data, or not smaller once recoded are left as they are. The switch
//! holds the index's write lock (SQLite) or the study's rows (PostgreSQL)
//! for one batch's renames and directory sync.

use std::io::{Read, Write};

use super::*;
use std::collections::HashMap;

use crate::db::studies::{RecodedFile, RecodedSwitch, SwitchFailed};
use crate::dicom::codec::{self, Skip};
use crate::storage::ObjectWriter;

/// Names a fault-injection point of the compression: when the environment
/// variable equals a step's name (`written-one`: the first recoded file
/// written and verified, not yet renamed; `swapped-one`: the first renamed
/// over its original inside the recording transaction, not yet committed;
/// `recorded`: the first batch recorded), the compression logs and pauses there for ten minutes, so
/// that a test can kill -9 the process at that step. Never set in
/// production.
pub const COMPRESS_FAULT_PAUSE_ENV: &str = crate::fault::COMPRESSION_ENV;

/// Instances recoded between two index transactions.
pub const BATCH: usize = 16;

/// Files larger than this are left uncompressed (a file is held in memory
/// three times while it is recoded and verified).
pub const MAX_FILE_BYTES: u64 = 512 * 1024 * 1024;

fn fault_point(step: &str) {
    crate::fault::COMPRESSION.pass(step);
}

/// What a compression did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompressionReport {
    /// Files recoded by this run.
    pub compressed: u64,
    /// Recoded files an interrupted run left unrecorded, recorded now.
    pub resumed: u64,
    /// Instances already stored compressed.
    pub already_compressed: u64,
    /// Instances left as they are (no pixel data, an image the codec does
    /// not take, no gain, too large, a recode that failed verification).
    pub skipped: u64,
    /// Files that are not what the index says (left for the integrity
    /// check).
    pub mismatched: u64,
    /// Instances replaced (a newer version stored) while they were
    /// recoded: the replacement is kept, the recode dropped.
    pub replaced: u64,
    /// Bytes of the compressed (and resumed) instances before.
    pub bytes_before: u64,
    /// Their bytes after.
    pub bytes_after: u64,
}

impl CompressionReport {
    /// Bytes saved.
    pub fn saved(&self) -> u64 {
        self.bytes_before.saturating_sub(self.bytes_after)
    }
}

fn native(ts: &str) -> bool {
    ts == crate::dicom::scu::EXPLICIT_VR_LITTLE_ENDIAN
        || ts == crate::dicom::scu::IMPLICIT_VR_LITTLE_ENDIAN
}

impl Studies {
    /// Compresses a study's images losslessly (see the module).
    /// Idempotent: a rerun records what an interrupted run swapped and
    /// goes on. Take the study's write lock (the `compress_study` work
    /// item does).
    pub fn compress(
        &self,
        partition: &Partition,
        study_uid: &Uid,
    ) -> Result<CompressionReport, StudyError> {
        let (_, filesystem) = self.online_files(partition, study_uid)?;
        if let Some(expected) = &filesystem.marker {
            if self.storage.read_marker(&filesystem)?.as_ref() != Some(expected) {
                return Err(StudyError::FilesystemRefused {
                    path: filesystem.spec.path.clone(),
                });
            }
        }
        let instances = self.store().study_instances(partition.id, study_uid)?;
        let mut report = CompressionReport::default();
        let mut recorded_any = false;
        for batch in instances.chunks(BATCH) {
            let mut files = Vec::new();
            let mut switch = Switch {
                studies: self,
                writers: HashMap::new(),
                pending: PendingSync::default(),
                swapped: 0,
                error: None,
            };
            for instance in batch {
                let ts = instance.transfer_syntax_uid.as_str();
                if codec::can_decode(ts) {
                    report.already_compressed += 1;
                    continue;
                }
                if !native(ts) || instance.file_size > MAX_FILE_BYTES {
                    report.skipped += 1;
                    continue;
                }
                if let Some((file, writer)) =
                    self.compress_one(&filesystem, instance, &mut report)?
                {
                    if let Some(writer) = writer {
                        switch
                            .writers
                            .insert(file.sop_instance_uid.clone(), (key_of(instance), writer));
                    }
                    files.push((file, instance.file_size));
                }
            }
            if files.is_empty() {
                continue;
            }
            let recoded: Vec<RecodedFile> = files.iter().map(|(f, _)| f.clone()).collect();
            let changed = match self.store().record_recoded_files(
                partition.id,
                study_uid,
                &recoded,
                &mut switch,
            ) {
                Ok(changed) => changed,
                Err(e) => return Err(switch.error.take().unwrap_or_else(|| e.into())),
            };
            // A recode whose row changed meanwhile was not put in place.
            for (file, before) in &files {
                if switch.writers.remove(&file.sop_instance_uid).is_some() {
                    tracing::warn!(%study_uid, sop_instance_uid = %file.sop_instance_uid, "replaced while it was compressed: the replacement is kept");
                    report.compressed -= 1;
                    report.replaced += 1;
                    report.bytes_before -= before;
                    report.bytes_after -= file.file_size;
                }
            }
            if changed < files.len() as u64 {
                tracing::info!(%study_uid, recoded = files.len(), recorded = changed, "some instances changed while they were compressed: left as they are now");
            }
            if !recorded_any {
                recorded_any = true;
                fault_point("recorded");
            }
        }
        tracing::info!(
            %study_uid,
            compressed = report.compressed,
            resumed = report.resumed,
            already = report.already_compressed,
            skipped = report.skipped,
            mismatched = report.mismatched,
            replaced = report.replaced,
            bytes_before = report.bytes_before,
            bytes_after = report.bytes_after,
            saved = report.saved(),
            "study compressed"
        );
        Ok(report)
    }

    /// Steps 1 and 2 for one instance: the record to write with the
    /// recoded file to put in place (none: an interrupted run's, in place
    /// already), or `None` when it is left as it is.
    fn compress_one(
        &self,
        filesystem: &Filesystem,
        instance: &StoredInstance,
        report: &mut CompressionReport,
    ) -> Result<Option<Recoded>, StudyError> {
        let key = key_of(instance);
        let sop = &instance.sop_instance_uid;
        let io_error = |operation, source| StudyError::Io {
            operation,
            path: self.storage.describe(filesystem, &key),
            source,
        };
        let mut original = Vec::with_capacity(instance.file_size as usize);
        self.storage
            .open(filesystem, &key)?
            .take(MAX_FILE_BYTES + 1)
            .read_to_end(&mut original)
            .map_err(|e| io_error("read", e))?;
        let digest = blake3::hash(&original).to_hex().to_string();
        let record = |bytes: &[u8], digest: String| RecodedFile {
            sop_instance_uid: sop.clone(),
            old_digest: instance.digest.clone(),
            transfer_syntax_uid: codec::RLE_LOSSLESS.to_string(),
            file_size: bytes.len() as u64,
            digest,
        };
        if original.len() as u64 != instance.file_size || digest != instance.digest {
            // An interrupted run's verified swap, not yet recorded?
            return Ok(match codec::check_recoded(&original, sop.as_str()) {
                Ok(()) => {
                    tracing::info!(sop_instance_uid = %sop, "a recoded file an interrupted compression left unrecorded is recorded");
                    report.resumed += 1;
                    report.bytes_before += instance.file_size;
                    report.bytes_after += original.len() as u64;
                    Some((record(&original, digest), None))
                }
                Err(e) => {
                    tracing::warn!(sop_instance_uid = %sop, path = %self.storage.describe(filesystem, &key).display(), error = %crate::model::error_chain(&e), "the file is not what the index says: not compressed");
                    report.mismatched += 1;
                    None
                }
            });
        }
        let recoded = match codec::compress_rle(&original) {
            Ok(Ok(recoded)) => recoded,
            Ok(Err(skip)) => {
                if !matches!(skip, Skip::NoPixelData) {
                    tracing::debug!(sop_instance_uid = %sop, reason = %skip, "not compressed");
                }
                report.skipped += 1;
                return Ok(None);
            }
            Err(e) => {
                tracing::warn!(sop_instance_uid = %sop, error = %crate::model::error_chain(&e), "cannot compress");
                report.skipped += 1;
                return Ok(None);
            }
        };
        if recoded.bytes.len() >= original.len() {
            tracing::debug!(sop_instance_uid = %sop, "RLE would not be smaller: not compressed");
            report.skipped += 1;
            return Ok(None);
        }
        let mut writer = self.storage.begin_write(filesystem)?;
        writer
            .write_all(&recoded.bytes)
            .map_err(|e| io_error("write", e))?;
        let new_digest = blake3::hash(&recoded.bytes).to_hex().to_string();
        drop(recoded);
        let mut written = Vec::new();
        writer
            .read_back()?
            .read_to_end(&mut written)
            .map_err(|e| io_error("read back", e))?;
        if let Err(e) = codec::verify_recoded(&original, &written) {
            // The original stays (the temporary file goes with the writer).
            tracing::warn!(sop_instance_uid = %sop, error = %crate::model::error_chain(&e), "the compressed copy failed verification: not compressed");
            report.skipped += 1;
            return Ok(None);
        }
        if blake3::hash(&written).to_hex().as_str() != new_digest {
            return Err(StudyError::CopyMismatch(sop.clone()));
        }
        if report.compressed == 0 {
            fault_point("written-one");
        }
        report.compressed += 1;
        report.bytes_before += original.len() as u64;
        report.bytes_after += written.len() as u64;
        Ok(Some((record(&written, new_digest), Some(writer))))
    }
}

/// A recoded file's record, and its writer when it is still to be put in
/// place.
type Recoded = (RecodedFile, Option<Box<dyn ObjectWriter>>);

/// Puts a batch's recoded files in place inside the index transaction
/// that records them ([`StudyStore::record_recoded_files`]).
struct Switch<'a> {
    studies: &'a Studies,
    /// The recoded files not yet in place, by SOP Instance UID.
    writers: HashMap<Uid, (InstanceKey, Box<dyn ObjectWriter>)>,
    /// What the renames left to sync.
    pending: PendingSync,
    /// Files put in place by this compression.
    swapped: u64,
    /// Why the switch failed.
    error: Option<StudyError>,
}

impl RecodedSwitch for Switch<'_> {
    fn put_in_place(&mut self, file: &RecodedFile) -> Result<(), SwitchFailed> {
        // Absent: an interrupted run's (in place already) or a retried
        // transaction's second call.
        let Some((key, writer)) = self.writers.remove(&file.sop_instance_uid) else {
            return Ok(());
        };
        match writer.persist(&key) {
            Ok(pending) => self.pending.merge(pending),
            Err(e) => {
                self.error = Some(e.into());
                return Err(SwitchFailed);
            }
        }
        self.swapped += 1;
        if self.swapped == 1 {
            fault_point("swapped-one");
        }
        Ok(())
    }

    fn make_durable(&mut self) -> Result<(), SwitchFailed> {
        // Every rename durable before the index says so.
        let pending = std::mem::take(&mut self.pending);
        self.studies.storage.sync(pending).map_err(|e| {
            self.error = Some(e.into());
            SwitchFailed
        })?;
        Ok(())
    }
}
