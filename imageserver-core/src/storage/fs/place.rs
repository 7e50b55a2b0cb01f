//! Placing a written file at its path: the rename, the folders made on the
//! way, and the directories whose sync makes the entry durable. A file
//! whose data is not durable yet never replaces one already there.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use super::{c_path, io_error, FsStorage};
use crate::storage::{Error, Placing};

/// A written temporary file and where it goes; removed on drop unless
/// placed.
#[derive(Debug)]
pub(super) struct FsPlacing {
    pub(super) storage: FsStorage,
    pub(super) root: PathBuf,
    pub(super) temp_path: PathBuf,
    pub(super) target: PathBuf,
    /// Whether the file's data is durable already (an eager persist).
    pub(super) synced: bool,
}

/// What a rename that must not replace found.
pub(super) enum NoReplace {
    /// Renamed: nothing was at the target.
    Renamed,
    /// A file is at the target (nothing was renamed).
    Occupied,
}

/// Renames `from` to `to` unless something is at `to`. Where the
/// filesystem cannot say so atomically (`renameat2`'s `RENAME_NOREPLACE`
/// is refused: NFS, some FUSE filesystems), the target is looked at first:
/// only another process could then place a file between the look and the
/// rename.
pub(super) fn rename_no_replace(from: &Path, to: &Path) -> io::Result<NoReplace> {
    #[cfg(target_os = "linux")]
    {
        let (from_c, to_c) = (c_path(from)?, c_path(to)?);
        // SAFETY: two NUL-terminated paths, relative to the working
        // directory (absolute here); no memory is shared.
        let rc = unsafe {
            libc::renameat2(
                libc::AT_FDCWD,
                from_c.as_ptr(),
                libc::AT_FDCWD,
                to_c.as_ptr(),
                libc::RENAME_NOREPLACE,
            )
        };
        if rc == 0 {
            return Ok(NoReplace::Renamed);
        }
        let error = io::Error::last_os_error();
        match error.raw_os_error() {
            Some(libc::EEXIST) => return Ok(NoReplace::Occupied),
            Some(libc::EINVAL) | Some(libc::ENOSYS) | Some(libc::ENOTSUP) => {}
            _ => return Err(error),
        }
    }
    if fs::symlink_metadata(to).is_ok() {
        return Ok(NoReplace::Occupied);
    }
    fs::rename(from, to).map(|()| NoReplace::Renamed)
}

impl FsPlacing {
    /// Renames the file to its target. A file whose data is not durable
    /// yet never replaces one already there (a stored instance another
    /// store of the same SOP instance placed and may have acknowledged: a
    /// crash before this file's data sync would leave neither whole). It
    /// then has its data synced first, so the path holds one whole version
    /// or the other at every moment.
    fn rename(&self) -> io::Result<()> {
        if self.synced {
            return fs::rename(&self.temp_path, &self.target);
        }
        match rename_no_replace(&self.temp_path, &self.target)? {
            NoReplace::Renamed => Ok(()),
            NoReplace::Occupied => {
                tracing::info!(
                    path = %self.target.display(),
                    "a file is already at a deferred file's path (a concurrent store of the same instance): its data is synced before it replaces it"
                );
                File::open(&self.temp_path)?.sync_data()?;
                fs::rename(&self.temp_path, &self.target)
            }
        }
    }
}

impl Placing for FsPlacing {
    /// Renames the file into place (making its folders) and lists the
    /// directories to sync: its own, and the parents of those whose entry
    /// is not durable yet.
    fn place(mut self: Box<Self>) -> Result<Vec<PathBuf>, Error> {
        let root = self.root.clone();
        let final_path = self.target.clone();
        let parent = final_path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| root.clone());
        let renamed = match self.rename() {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.storage.create_dirs(&root, &parent)?;
                self.rename()
            }
            Err(e) => Err(e),
        };
        renamed.map_err(|e| io_error("renaming into", &final_path, &root, e))?;
        // The temporary name is gone: nothing left for Drop to clean up.
        self.temp_path = PathBuf::new();

        let mut dirs = vec![parent.clone()];
        let unsynced = self.storage.lock_unsynced();
        let mut cursor = parent.as_path();
        while cursor != root {
            let Some(up) = cursor.parent() else { break };
            if unsynced.contains_key(cursor) {
                dirs.push(up.to_path_buf());
            }
            cursor = up;
        }
        Ok(dirs)
    }
}

impl Drop for FsPlacing {
    fn drop(&mut self) {
        if !self.temp_path.as_os_str().is_empty() {
            if let Err(e) = fs::remove_file(&self.temp_path) {
                tracing::warn!(path = %self.temp_path.display(), error = %e, "cannot remove temporary file");
            }
        }
    }
}
