//! Shared test machinery: the server under test, DCMTK clients, a raw
//! hostile client, the generated corpus, and the checks every store-like
//! test makes.

pub mod cli;
pub mod corpus;
pub mod dcmtk;
pub mod lifecycle;
pub mod net;
pub mod raw;
pub mod scp;
pub mod server;

use std::path::{Path, PathBuf};

use corpus::Instance;
use server::{Archive, Index};

/// Asserts that `instance` is archived as the contract says: indexed, at
/// its layout path, with the indexed size and BLAKE3 digest, its data set
/// byte-identical to the source file's, and a meta group naming the
/// Explicit VR Little Endian syntax it travelled in and the AE that sent it
/// (`None` for imports, whose source AE is not checked).
pub fn assert_archived(
    archive: &Archive,
    index: &Index,
    instance: &Instance,
    calling_ae: Option<&str>,
) {
    let sop = &instance.sop_instance_uid;
    let stored = index.instance(sop).unwrap_or_else(|| {
        panic!(
            "instance {sop} ({}) is not indexed",
            instance.path.display()
        )
    });
    let path = archive.expected_path(
        &instance.study_date,
        &instance.study_uid,
        &instance.series_uid,
        sop,
    );
    assert!(
        path.is_file(),
        "instance {sop} is not at {}",
        path.display()
    );
    assert_eq!(
        stored.location.date_folder, instance.study_date,
        "date folder of {sop}"
    );
    assert_eq!(
        stored.location.study_uid.as_str(),
        instance.study_uid,
        "study of {sop}"
    );
    assert_eq!(
        stored.series_uid.as_str(),
        instance.series_uid,
        "series of {sop}"
    );
    assert_eq!(
        stored.sop_class_uid.as_str(),
        corpus::CT_IMAGE_STORAGE,
        "SOP class of {sop}"
    );
    let file_size = std::fs::metadata(&path)
        .expect("stat the stored file")
        .len();
    assert_eq!(stored.file_size, file_size, "indexed size of {sop}");
    assert_eq!(
        stored.digest,
        corpus::blake3_hex(&path),
        "indexed digest of {sop}"
    );
    let meta = corpus::file_meta(&path);
    assert_eq!(
        meta.transfer_syntax().trim_end_matches(['\0', ' ']),
        corpus::EXPLICIT_VR_LITTLE_ENDIAN,
        "stored transfer syntax of {sop}"
    );
    assert_eq!(
        stored.transfer_syntax_uid.as_str(),
        corpus::EXPLICIT_VR_LITTLE_ENDIAN,
        "indexed transfer syntax of {sop}"
    );
    assert_eq!(
        meta.media_storage_sop_instance_uid()
            .trim_end_matches(['\0', ' ']),
        sop.as_str(),
        "MediaStorageSOPInstanceUID of {sop}"
    );
    if let Some(calling_ae) = calling_ae {
        assert_eq!(
            meta.source_application_entity_title()
                .map(|ae| ae.trim_end_matches(['\0', ' '])),
            Some(calling_ae),
            "SourceApplicationEntityTitle of {sop}"
        );
    }
    assert!(
        corpus::same_dataset(&path, &instance.path),
        "the stored data set of {sop} differs from the one sent"
    );
}

/// The Part 10 files a peer wrote under `dir` (partial `.part` files left
/// out), by the SOP Instance UID of their meta group.
pub fn received_by_uid(dir: &Path) -> std::collections::BTreeMap<String, PathBuf> {
    files_under(dir)
        .into_iter()
        .filter(|path| path.extension().is_none_or(|e| e != "part"))
        .map(|path| {
            let uid = corpus::file_meta(&path)
                .media_storage_sop_instance_uid()
                .trim_end_matches(['\0', ' '])
                .to_string();
            (uid, path)
        })
        .collect()
}

/// Every file and folder under `dir`, recursively (symlinks not followed).
pub fn entries_under(dir: &Path) -> std::collections::BTreeSet<PathBuf> {
    let mut entries = std::collections::BTreeSet::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        let Ok(read) = std::fs::read_dir(&current) else {
            continue;
        };
        for entry in read.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                pending.push(entry.path());
            }
            entries.insert(entry.path());
        }
    }
    entries
}

/// The identity marker each filesystem root holds: bookkeeping, never an
/// instance, so the file listings below leave it out.
pub const MARKER_FILE: &str = ".imageserver-filesystem";

/// Every regular file under `dir`, recursively (symlinks not followed),
/// but filesystem identity markers ([`MARKER_FILE`]).
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&current) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(file_type) = entry.file_type() else {
                continue;
            };
            if file_type.is_dir() {
                pending.push(entry.path());
            } else if entry.file_name() != MARKER_FILE {
                files.push(entry.path());
            }
        }
    }
    files.sort();
    files
}

/// The archived instance files under a data directory: `fs1` minus its
/// `.tmp` folder and the studies' series metadata (`.metadata` folders,
/// which StudyProcess writes once a study has been quiet).
pub fn archived_files(archive: &Archive) -> Vec<PathBuf> {
    let tmp = archive.fs1().join(".tmp");
    files_under(&archive.fs1())
        .into_iter()
        .filter(|path| !path.starts_with(&tmp))
        .filter(|path| !path.components().any(|c| c.as_os_str() == ".metadata"))
        .collect()
}

/// Every entry inside a `.tmp` folder of any filesystem under the archive's
/// data directory: the temporary files of stores and rewrites in progress
/// (`*.part`), which a failed or interrupted write must not leave behind.
/// The running server's journal of open batches (`*.journal`, the group
/// commit's, removed at shutdown and checked by `commit_crash`) is not one,
/// nor are its empty files made ahead of need (`*.spare`: a writer renames
/// one to `*.part` before it writes a byte).
pub fn temp_entries(archive: &Archive) -> Vec<PathBuf> {
    let all = entries_under(archive.data_dir());
    all.iter()
        .filter(|path| path.file_name().is_some_and(|n| n == ".tmp") && path.is_dir())
        .flat_map(|tmp| all.iter().filter(move |p| p.starts_with(tmp) && *p != tmp))
        .filter(|p| p.extension().is_none_or(|e| e != "journal"))
        .filter(|p| !is_empty_spare(p))
        .cloned()
        .collect()
}

/// An empty file a server made ahead of need in a `.tmp` folder (`*.spare`,
/// renamed to a writer's `*.part` before a byte is written to it).
pub fn is_empty_spare(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "spare")
        && path.parent().and_then(|p| p.file_name()) == Some(".tmp".as_ref())
        && path.metadata().is_ok_and(|m| m.is_file() && m.len() == 0)
}

/// Asserts that no filesystem of the archive holds a temporary file
/// ([`temp_entries`]), `after` naming what just happened.
pub fn assert_no_temp_files(archive: &Archive, after: &str) {
    let left = temp_entries(archive);
    assert!(
        left.is_empty(),
        "temporary files left after {after}: {left:#?}"
    );
}

/// `IMAGESERVER_SKIP_PG=1` makes the library's PostgreSQL tests pass
/// without running them; in CI (`CI=true`) that must fail the run instead.
#[test]
fn ci_does_not_skip_the_postgresql_tests() {
    if std::env::var("CI").as_deref() == Ok("true") {
        assert!(
            std::env::var_os("IMAGESERVER_SKIP_PG").is_none(),
            "IMAGESERVER_SKIP_PG is set in CI: the PostgreSQL tests would pass without running"
        );
    }
}

/// A file's identity and timestamps: what a rewrite would change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileState {
    /// Inode number.
    pub inode: u64,
    /// Modification time: seconds and nanoseconds.
    pub mtime: (i64, i64),
    /// Size in bytes.
    pub len: u64,
}

/// What storing something again must leave alone: every file under `fs1`
/// (kept-aside copies and `.tmp` included; series metadata and the group
/// commit's journal of open batches, rewritten by every batch, left out)
/// with its [`FileState`], and every instance row of the index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveState {
    /// Files by path.
    pub files: std::collections::BTreeMap<PathBuf, FileState>,
    /// `instance` rows (id, partition, series, UIDs, syntax, size, digest,
    /// source AE, reception time), one line each.
    pub rows: Vec<String>,
}

/// The [`ArchiveState`] of `archive` now.
pub fn archive_state(archive: &Archive) -> ArchiveState {
    use std::os::unix::fs::MetadataExt;
    let files = files_under(&archive.fs1())
        .into_iter()
        .filter(|path| !path.components().any(|c| c.as_os_str() == ".metadata"))
        .filter(|path| path.extension().is_none_or(|e| e != "journal"))
        // The writers' spare temporary files come and go with every store.
        .filter(|path| !is_empty_spare(path))
        .map(|path| {
            let meta = std::fs::metadata(&path).expect("stat an archived file");
            let state = FileState {
                inode: meta.ino(),
                mtime: (meta.mtime(), meta.mtime_nsec()),
                len: meta.len(),
            };
            (path, state)
        })
        .collect();
    let rows = archive.sql(
        "SELECT id, partition_id, series_fk, sop_instance_uid, sop_class_uid, instance_number, \
         transfer_syntax_uid, file_size, digest, source_ae, received_at FROM instance \
         ORDER BY partition_id, sop_instance_uid",
    );
    ArchiveState { files, rows }
}
