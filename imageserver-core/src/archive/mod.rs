//! The HSM archive's packs: one tar file per study, on an archive root
//! (a directory: local disk, NAS, a tape library's filesystem).
//!
//! A pack is `manifest.json` (the study, its date folder, and every
//! instance's series, SOP Instance UID, size and BLAKE3 digest), then one
//! entry per instance, `<series uid>/<sop instance uid>.dcm`, the stored
//! Part 10 file byte for byte (no compression: the files are DICOM
//! already). Packs lie at `<root>/<partition folder>/<date folder>/<study
//! uid>.tar`; each root holds an identity marker ([`MARKER_FILE`]) that
//! the index records at first use, so an unmounted share is never written
//! to or read from.
//!
//! [`pack`] writes a pack durably: to a temporary name beside it, every
//! instance checked against its manifest digest while it is copied, the
//! file fsync'd, renamed, and the directory fsync'd; it returns the pack's
//! own size and digest. [`unpack`] reads one back in a single pass, hands
//! each instance's bytes to the caller and checks the pack's digest at the
//! end. This module knows files only: the index and the stored studies
//! are the caller's (`services::studies`).

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The identity marker in an archive root.
pub const MARKER_FILE: &str = ".imageserver-archive";

/// The manifest's name inside a pack.
pub const MANIFEST: &str = "manifest.json";

/// Why a pack could not be written or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ArchiveError {
    /// A file or directory of the archive failed.
    #[error("cannot {operation} {path}")]
    Io {
        /// What was being done.
        operation: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The underlying failure.
        #[source]
        source: io::Error,
    },
    /// An instance's bytes differ from its manifest entry (size or
    /// digest): the stored file is not what the index says.
    #[error("instance {sop_instance_uid} differs from its recorded digest")]
    Mismatch {
        /// The instance.
        sop_instance_uid: String,
    },
    /// The pack is not one this module wrote, or is damaged.
    #[error("pack {path} is damaged: {reason}")]
    Damaged {
        /// The pack.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The root's identity marker is not the one the index recorded.
    #[error("archive root {path} lacks its identity marker (not mounted?)")]
    Unmounted {
        /// The root.
        path: PathBuf,
    },
}

/// One instance of a pack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestEntry {
    /// Its series.
    pub series_uid: String,
    /// The instance.
    pub sop_instance_uid: String,
    /// The file's size.
    pub file_size: u64,
    /// The file's BLAKE3, lowercase hex.
    pub digest: String,
}

impl ManifestEntry {
    /// The entry's path inside the pack.
    pub fn path(&self) -> String {
        format!("{}/{}.dcm", self.series_uid, self.sop_instance_uid)
    }
}

/// What a pack holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Format version (1).
    pub version: u32,
    /// The study.
    pub study_uid: String,
    /// Its date folder.
    pub date_folder: String,
    /// Its instances, in the order they follow the manifest.
    pub instances: Vec<ManifestEntry>,
}

impl Manifest {
    /// The instances' bytes.
    pub fn instance_bytes(&self) -> u64 {
        self.instances.iter().map(|i| i.file_size).sum()
    }
}

/// A durable pack: where, how big, its digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackInfo {
    /// The pack's path.
    pub path: PathBuf,
    /// Its size.
    pub size_bytes: u64,
    /// Its BLAKE3, lowercase hex.
    pub digest: String,
}

/// An archive root directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveRoot {
    path: PathBuf,
}

impl ArchiveRoot {
    /// The root at `path`.
    pub fn new(path: impl Into<PathBuf>) -> ArchiveRoot {
        ArchiveRoot { path: path.into() }
    }

    /// Its directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The marker in the root, if any.
    pub fn read_marker(&self) -> Result<Option<String>, ArchiveError> {
        let path = self.path.join(MARKER_FILE);
        match fs::read_to_string(&path) {
            Ok(text) => Ok(Some(text.trim().to_string())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(io_error("read", &path, source)),
        }
    }

    /// Writes the marker durably (creating the root).
    pub fn write_marker(&self, marker: &str) -> Result<(), ArchiveError> {
        fs::create_dir_all(&self.path).map_err(|e| io_error("create", &self.path, e))?;
        let path = self.path.join(MARKER_FILE);
        let temporary = self
            .path
            .join(format!("{MARKER_FILE}.{}", std::process::id()));
        let mut file = File::create(&temporary).map_err(|e| io_error("create", &temporary, e))?;
        file.write_all(format!("{marker}\n").as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|e| io_error("write", &temporary, e))?;
        fs::rename(&temporary, &path).map_err(|e| io_error("rename", &path, e))?;
        sync_dir(&self.path)
    }

    /// Checks that the root holds `expected` (the index's record).
    pub fn check_marker(&self, expected: &str) -> Result<(), ArchiveError> {
        if self.read_marker()?.as_deref() == Some(expected) {
            Ok(())
        } else {
            Err(ArchiveError::Unmounted {
                path: self.path.clone(),
            })
        }
    }

    /// Where a study's pack lies.
    pub fn pack_path(&self, partition_folder: &str, date_folder: &str, study_uid: &str) -> PathBuf {
        self.path
            .join(partition_folder)
            .join(date_folder)
            .join(format!("{study_uid}.tar"))
    }
}

/// A fresh identity for a root: time and process, unique enough to tell
/// two shares apart.
pub fn new_marker() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let seed = format!(
        "{}-{}-{:?}",
        now.as_nanos(),
        std::process::id(),
        std::thread::current().id()
    );
    blake3::hash(seed.as_bytes()).to_hex()[..32].to_string()
}

fn io_error(operation: &'static str, path: &Path, source: io::Error) -> ArchiveError {
    ArchiveError::Io {
        operation,
        path: path.to_path_buf(),
        source,
    }
}

fn sync_dir(path: &Path) -> Result<(), ArchiveError> {
    File::open(path)
        .and_then(|dir| dir.sync_all())
        .map_err(|e| io_error("sync", path, e))
}

/// Hashes and counts what passes through.
struct Hashing<T> {
    inner: T,
    hasher: blake3::Hasher,
    count: u64,
}

impl<T> Hashing<T> {
    fn new(inner: T) -> Hashing<T> {
        Hashing {
            inner,
            hasher: blake3::Hasher::new(),
            count: 0,
        }
    }

    fn finish(&self) -> (u64, String) {
        (self.count, self.hasher.finalize().to_hex().to_string())
    }
}

impl<T: Read> Read for Hashing<T> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

impl<T: Write> Write for Hashing<T> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn header(size: u64) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_size(size);
    header.set_mode(0o644);
    header.set_entry_type(tar::EntryType::Regular);
    header
}

/// Writes `manifest`'s pack to `path` durably (see the module): `open`
/// gives each instance's stored bytes. A pack already at `path` is
/// replaced only once the new one is complete.
pub fn pack(
    path: &Path,
    manifest: &Manifest,
    open: &mut dyn FnMut(&ManifestEntry) -> io::Result<Box<dyn Read + '_>>,
) -> Result<PackInfo, ArchiveError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(|e| io_error("create", dir, e))?;
    let temporary = path.with_extension(format!("tar.partial-{}", std::process::id()));
    let result = write_pack(&temporary, manifest, open);
    let info = match result {
        Ok(info) => info,
        Err(e) => {
            let _ = fs::remove_file(&temporary);
            return Err(e);
        }
    };
    fs::rename(&temporary, path).map_err(|e| io_error("rename", path, e))?;
    sync_dir(dir)?;
    // The partition and date folders may be new.
    for ancestor in dir.ancestors().skip(1).take(2) {
        sync_dir(ancestor)?;
    }
    Ok(PackInfo {
        path: path.to_path_buf(),
        ..info
    })
}

fn write_pack(
    temporary: &Path,
    manifest: &Manifest,
    open: &mut dyn FnMut(&ManifestEntry) -> io::Result<Box<dyn Read + '_>>,
) -> Result<PackInfo, ArchiveError> {
    let file = File::create(temporary).map_err(|e| io_error("create", temporary, e))?;
    let mut builder = tar::Builder::new(Hashing::new(BufWriter::with_capacity(1 << 20, file)));
    let json = serde_json::to_vec_pretty(manifest).map_err(|e| ArchiveError::Damaged {
        path: temporary.to_path_buf(),
        reason: e.to_string(),
    })?;
    let write = |e| io_error("write", temporary, e);
    builder
        .append_data(&mut header(json.len() as u64), MANIFEST, &json[..])
        .map_err(write)?;
    for entry in &manifest.instances {
        let reader = open(entry).map_err(|e| io_error("read", Path::new(&entry.path()), e))?;
        // Exactly the recorded size goes in; a shorter file fails the
        // append, a longer or different one the digest.
        let mut source = Hashing::new(reader.take(entry.file_size));
        builder
            .append_data(&mut header(entry.file_size), entry.path(), &mut source)
            .map_err(write)?;
        if source.finish() != (entry.file_size, entry.digest.clone()) {
            return Err(ArchiveError::Mismatch {
                sop_instance_uid: entry.sop_instance_uid.clone(),
            });
        }
    }
    let hashing = builder.into_inner().map_err(write)?;
    let (size_bytes, digest) = hashing.finish();
    let file = hashing
        .inner
        .into_inner()
        .map_err(|e| write(e.into_error()))?;
    file.sync_all().map_err(write)?;
    Ok(PackInfo {
        path: temporary.to_path_buf(),
        size_bytes,
        digest,
    })
}

/// Removes a pack durably; a missing one is not an error.
pub fn remove_pack(path: &Path) -> Result<(), ArchiveError> {
    match fs::remove_file(path) {
        Ok(()) => sync_dir(path.parent().unwrap_or(Path::new("."))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_error("remove", path, e)),
    }
}

/// The size and BLAKE3 of a pack file.
pub fn digest_pack(path: &Path) -> Result<(u64, String), ArchiveError> {
    let file = File::open(path).map_err(|e| io_error("open", path, e))?;
    let mut hashing = Hashing::new(io::BufReader::with_capacity(1 << 20, file));
    io::copy(&mut hashing, &mut io::sink()).map_err(|e| io_error("read", path, e))?;
    Ok(hashing.finish())
}

/// The manifest of the pack at `path` (its first entry only).
pub fn read_manifest(path: &Path) -> Result<Manifest, ArchiveError> {
    let damaged = |reason: String| ArchiveError::Damaged {
        path: path.to_path_buf(),
        reason,
    };
    let file = File::open(path).map_err(|e| io_error("open", path, e))?;
    let mut archive = tar::Archive::new(io::BufReader::new(file));
    let mut entries = archive.entries().map_err(|e| io_error("read", path, e))?;
    let first = entries
        .next()
        .ok_or_else(|| damaged("empty".into()))?
        .map_err(|e| io_error("read", path, e))?;
    read_manifest_entry(path, first)
}

fn read_manifest_entry(
    path: &Path,
    mut first: tar::Entry<'_, impl Read>,
) -> Result<Manifest, ArchiveError> {
    let damaged = |reason: String| ArchiveError::Damaged {
        path: path.to_path_buf(),
        reason,
    };
    if first.path_bytes().as_ref() != MANIFEST.as_bytes() {
        return Err(damaged("no manifest first".into()));
    }
    let mut json = Vec::new();
    (&mut first)
        .take(16 << 20)
        .read_to_end(&mut json)
        .map_err(|e| io_error("read", path, e))?;
    serde_json::from_slice(&json).map_err(|e| damaged(format!("manifest: {e}")))
}

/// Reads the pack at `path` in one pass: its manifest, then each
/// instance's bytes handed to `sink` with its manifest entry (every entry
/// exactly once). The pack must be `expected` (size, digest) as recorded;
/// a pack that is not fails with [`ArchiveError::Damaged`] after the
/// sink has seen its entries, so the caller commits nothing before
/// `unpack` returns.
pub fn unpack(
    path: &Path,
    expected: (u64, &str),
    sink: &mut dyn FnMut(&ManifestEntry, &mut dyn Read) -> Result<(), ArchiveError>,
) -> Result<Manifest, ArchiveError> {
    let damaged = |reason: String| ArchiveError::Damaged {
        path: path.to_path_buf(),
        reason,
    };
    let file = File::open(path).map_err(|e| io_error("open", path, e))?;
    let mut hashing = Hashing::new(io::BufReader::with_capacity(1 << 20, file));
    let manifest = {
        let mut archive = tar::Archive::new(&mut hashing);
        let mut entries = archive.entries().map_err(|e| io_error("read", path, e))?;
        let first = entries
            .next()
            .ok_or_else(|| damaged("empty".into()))?
            .map_err(|e| io_error("read", path, e))?;
        let manifest = read_manifest_entry(path, first)?;
        let mut next = manifest.instances.iter();
        for entry in entries {
            let mut entry = entry.map_err(|e| io_error("read", path, e))?;
            let expected = next
                .next()
                .ok_or_else(|| damaged("more entries than the manifest".into()))?;
            if entry.path_bytes().as_ref() != expected.path().as_bytes()
                || entry.size() != expected.file_size
            {
                return Err(damaged(format!("unexpected entry for {}", expected.path())));
            }
            sink(expected, &mut entry)?;
        }
        if next.next().is_some() {
            return Err(damaged("fewer entries than the manifest".into()));
        }
        manifest
    };
    // The end-of-archive blocks and padding count in the digest.
    io::copy(&mut hashing, &mut io::sink()).map_err(|e| io_error("read", path, e))?;
    let (size, digest) = hashing.finish();
    if (size, digest.as_str()) != expected {
        return Err(damaged(format!(
            "{size} bytes of digest {digest}, recorded {} of {}",
            expected.0, expected.1
        )));
    }
    Ok(manifest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(series: &str, sop: &str, bytes: &[u8]) -> ManifestEntry {
        ManifestEntry {
            series_uid: series.into(),
            sop_instance_uid: sop.into(),
            file_size: bytes.len() as u64,
            digest: blake3::hash(bytes).to_hex().to_string(),
        }
    }

    #[test]
    fn packs_round_trip_and_damage_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let root = ArchiveRoot::new(dir.path().join("archive"));
        assert_eq!(root.read_marker().unwrap(), None);
        root.write_marker("abc").unwrap();
        root.check_marker("abc").unwrap();
        assert!(root.check_marker("other").is_err());
        let long = "1.2.840.10008.55555555555555555555555555555555555555555555555555.1";
        let files: Vec<(ManifestEntry, Vec<u8>)> = vec![
            (
                entry("1.2.3", "1.2.3.1", b"first file"),
                b"first file".to_vec(),
            ),
            (
                entry(long, &format!("{long}.7"), &[7u8; 3000]),
                vec![7u8; 3000],
            ),
        ];
        let manifest = Manifest {
            version: 1,
            study_uid: "1.2".into(),
            date_folder: "20240101".into(),
            instances: files.iter().map(|(e, _)| e.clone()).collect(),
        };
        let path = root.pack_path("PART", "20240101", "1.2");
        let info = pack(&path, &manifest, &mut |e| {
            let bytes = files.iter().find(|(f, _)| f == e).unwrap().1.clone();
            Ok(Box::new(io::Cursor::new(bytes)))
        })
        .unwrap();
        assert_eq!(
            digest_pack(&path).unwrap(),
            (info.size_bytes, info.digest.clone())
        );
        let mut seen = Vec::new();
        let back = unpack(&path, (info.size_bytes, &info.digest), &mut |e, r| {
            let mut bytes = Vec::new();
            r.read_to_end(&mut bytes).unwrap();
            seen.push((e.clone(), bytes));
            Ok(())
        })
        .unwrap();
        assert_eq!(back, manifest);
        assert_eq!(seen, files);

        // A file that is not what the index says is never packed.
        let mut wrong = manifest.clone();
        wrong.instances[0].digest = "00".repeat(32);
        let err = pack(&path, &wrong, &mut |e| {
            let bytes = files
                .iter()
                .find(|(f, _)| f.path() == e.path())
                .unwrap()
                .1
                .clone();
            Ok(Box::new(io::Cursor::new(bytes)))
        })
        .unwrap_err();
        assert!(matches!(err, ArchiveError::Mismatch { .. }), "{err}");
        assert_eq!(
            digest_pack(&path).unwrap().1,
            info.digest,
            "the good pack stays"
        );

        // A flipped byte is found.
        let mut bytes = fs::read(&path).unwrap();
        let at = bytes.len() - 2048 - 10;
        bytes[at] ^= 1;
        fs::write(&path, &bytes).unwrap();
        let err = unpack(&path, (info.size_bytes, &info.digest), &mut |_, r| {
            io::copy(r, &mut io::sink()).unwrap();
            Ok(())
        })
        .unwrap_err();
        assert!(matches!(err, ArchiveError::Damaged { .. }), "{err}");
    }
}
