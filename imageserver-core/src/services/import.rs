//! Import: existing DICOM Part 10 files into the archive, through the same
//! durable path as a C-STORE. A file that fails is left where it was.

use std::fs::File;
use std::io::{self, BufReader};
use std::path::{Path, PathBuf};

use crate::dicom::part10::{read_file_meta, MetaError};

use super::ingest::{Ingest, IngestError, Partition, StoreRequest};
use crate::db;
use crate::model::error_chain;
use crate::model::Uid;
use crate::storage::layout;

/// What happened to one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileOutcome {
    /// Stored and indexed.
    Imported,
    /// Its SOP Instance UID is already indexed in the partition; not stored again.
    AlreadyPresent,
    /// Not imported, with the reason.
    Rejected(String),
}

/// Why one file was not imported.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImportError {
    /// The file cannot be opened.
    #[error("cannot open")]
    Open(#[source] io::Error),
    /// Not a Part 10 file, or its meta group is refused.
    #[error(transparent)]
    Meta(#[from] MetaError),
    /// Looking the instance up in the index failed (transient).
    #[error("index lookup failed")]
    Index(#[source] db::Error),
    /// Reading the data set failed.
    #[error("cannot read")]
    Read(#[source] io::Error),
    /// Ingest refused or failed to store it.
    #[error(transparent)]
    Ingest(#[from] IngestError),
}

/// Totals of an import run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportSummary {
    /// Files stored.
    pub imported: u64,
    /// Files whose instance was already indexed.
    pub already_present: u64,
    /// Files not imported, with reasons.
    pub rejected: Vec<(PathBuf, String)>,
}

/// Lists the files under `paths` (directories recursively, sorted), so a
/// caller can size a progress bar before importing. Series metadata folders
/// ([`layout::METADATA_DIR`], derived data of an archive's study folders,
/// never instances) are not entered.
pub fn collect_files(paths: &[PathBuf]) -> io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for path in paths {
        collect(path, &mut files)?;
    }
    Ok(files)
}

fn collect(path: &Path, files: &mut Vec<PathBuf>) -> io::Result<()> {
    let meta = std::fs::metadata(path)?;
    if meta.is_dir() {
        if path.file_name().is_some_and(|n| n == layout::METADATA_DIR) {
            return Ok(());
        }
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)?
            .map(|entry| entry.map(|e| e.path()))
            .collect::<io::Result<_>>()?;
        entries.sort();
        for entry in entries {
            collect(&entry, files)?;
        }
    } else if meta.is_file() {
        files.push(path.to_path_buf());
    }
    Ok(())
}

/// Imports `files` into `partition`, calling `progress` after each file.
pub fn import_files(
    ingest: &Ingest,
    partition: &Partition,
    files: &[PathBuf],
    progress: &mut dyn FnMut(&Path, &FileOutcome),
) -> ImportSummary {
    let mut summary = ImportSummary::default();
    for path in files {
        let outcome = match import_file(ingest, partition, path) {
            Ok(outcome) => outcome,
            Err(error) => FileOutcome::Rejected(error_chain(&error)),
        };
        match &outcome {
            FileOutcome::Imported => summary.imported += 1,
            FileOutcome::AlreadyPresent => summary.already_present += 1,
            FileOutcome::Rejected(reason) => {
                tracing::warn!(path = %path.display(), %reason, "import rejected");
                summary.rejected.push((path.clone(), reason.clone()))
            }
        }
        progress(path, &outcome);
    }
    summary
}

/// Imports one Part 10 file.
pub fn import_file(
    ingest: &Ingest,
    partition: &Partition,
    path: &Path,
) -> Result<FileOutcome, ImportError> {
    let mut reader = BufReader::new(File::open(path).map_err(ImportError::Open)?);
    let meta = read_file_meta(&mut reader)?;
    let sop_instance_uid = meta.media_storage_sop_instance_uid().to_string();
    if let Ok(uid) = Uid::parse(&sop_instance_uid) {
        let present = ingest
            .index()
            .instance(partition.id, &uid)
            .map_err(ImportError::Index)?;
        if present.is_some() {
            return Ok(FileOutcome::AlreadyPresent);
        }
    }
    // read_file_meta left the reader at the data set's first byte.
    let mut writer = ingest.begin(StoreRequest {
        partition,
        sop_class_uid: meta.media_storage_sop_class_uid(),
        sop_instance_uid: &sop_instance_uid,
        transfer_syntax_uid: meta.transfer_syntax(),
        source_ae: meta.source_application_entity_title(),
        // Never reached for an instance already held (skipped above).
        may_replace: false,
    })?;
    io::copy(&mut reader, &mut writer).map_err(ImportError::Read)?;
    ingest.finish(writer)?;
    Ok(FileOutcome::Imported)
}
