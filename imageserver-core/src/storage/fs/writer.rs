//! A file being written: a temporary file under `<root>/.tmp`, persisted
//! (synced and renamed, or deferred: see `journal.rs`) or removed on drop.

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use super::place::FsPlacing;
use super::{io_error, FsStorage};
use crate::storage::Error;
use crate::storage::{layout, InstanceKey, ObjectWriter, PendingSync, Placing, SeriesKey};

/// While a large object arrives, writeback of what is written is started
/// (`sync_file_range(SYNC_FILE_RANGE_WRITE)`) every this many bytes, so that
/// the final `fdatasync` has little left to write.
const WRITEBACK_STEP: u64 = 4 * 1024 * 1024;

/// A temporary file being written; removed on drop unless persisted.
pub(super) struct FsWriter {
    pub(super) storage: FsStorage,
    pub(super) root: PathBuf,
    pub(super) temp_path: PathBuf,
    pub(super) file: Option<BufWriter<File>>,
    pub(super) len: u64,
    /// Where writeback has not been started yet.
    pub(super) writeback_from: u64,
}

impl FsWriter {
    /// Starts writeback of what reached the file since the last start, once
    /// that is [`WRITEBACK_STEP`] or more: a hint, its failure ignored (the
    /// final sync reports any).
    fn start_writeback(&mut self) {
        if self.len - self.writeback_from < WRITEBACK_STEP {
            return;
        }
        let Some(buffered) = self.file.as_ref() else {
            return;
        };
        let written = self.len - buffered.buffer().len() as u64;
        if written <= self.writeback_from {
            return;
        }
        start_writeback(buffered.get_ref(), self.writeback_from, written);
        self.writeback_from = written;
    }

    fn file(&mut self) -> io::Result<&mut BufWriter<File>> {
        self.file
            .as_mut()
            .ok_or_else(|| io::Error::other("writer already closed"))
    }
}

/// Starts writeback of `file`'s bytes `from..to` (`sync_file_range` with
/// `SYNC_FILE_RANGE_WRITE`): a hint that returns at once, its failure
/// ignored (the final sync reports any).
fn start_writeback(file: &File, from: u64, to: u64) {
    use std::os::fd::AsRawFd;
    if to <= from {
        return;
    }
    // SAFETY: the descriptor is `file`'s, open for the call; the range is
    // plain numbers the kernel checks.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            from as libc::off64_t,
            (to - from) as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

impl Write for FsWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file()?.write(buf)?;
        self.len += n as u64;
        self.start_writeback();
        Ok(n)
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.file()?.write_all(buf)?;
        self.len += buf.len() as u64;
        self.start_writeback();
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file()?.flush()
    }
}

impl ObjectWriter for FsWriter {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_back(&mut self) -> Result<Box<dyn Read + '_>, Error> {
        let (root, path) = (self.root.clone(), self.temp_path.clone());
        self.flush()
            .map_err(|e| io_error("writing", &path, &root, e))?;
        let file = File::open(&path).map_err(|e| io_error("reading back", &path, &root, e))?;
        Ok(Box::new(io::BufReader::new(file)))
    }

    fn persist(self: Box<Self>, key: &InstanceKey) -> Result<PendingSync, Error> {
        let relative = layout::instance_path(key);
        (*self).persist_to(&relative)
    }

    fn persist_aside(
        self: Box<Self>,
        key: &InstanceKey,
        variant: u64,
    ) -> Result<PendingSync, Error> {
        let relative = layout::aside_path(key, variant);
        (*self).persist_to(&relative)
    }

    fn persist_series_metadata(self: Box<Self>, key: &SeriesKey) -> Result<PendingSync, Error> {
        let relative = layout::series_metadata_path(key);
        (*self).persist_to(&relative)
    }
}

impl FsWriter {
    fn persist_to(self, relative: &Path) -> Result<PendingSync, Error> {
        self.persist_with(relative, false)
    }

    /// Flushes and syncs the data (unless `deferred`: then the open file
    /// and its rename go into the pending set), renames into place and
    /// lists the directories to sync.
    pub(super) fn persist_with(
        mut self,
        relative: &Path,
        deferred: bool,
    ) -> Result<PendingSync, Error> {
        let root = self.root.clone();
        let temp_path = self.temp_path.clone();
        let buffered = self
            .file
            .take()
            .ok_or_else(|| io_error("writing", &temp_path, &root, io::Error::other("closed")))?;
        let file = buffered
            .into_inner()
            .map_err(|e| io_error("writing", &temp_path, &root, e.into_error()))?;
        // From here the temporary file is the placing's (or gone).
        self.temp_path = PathBuf::new();
        let placing = FsPlacing {
            storage: self.storage.clone(),
            root: root.clone(),
            temp_path,
            target: root.join(relative),
            synced: !deferred,
        };
        if deferred {
            // The data sync waits for the batch's journal and rename: start
            // writing what is left now, so that sync finds it on its way.
            start_writeback(&file, self.writeback_from, self.len);
            return Ok(PendingSync {
                files: vec![file],
                placings: vec![Box::new(placing)],
                ..PendingSync::default()
            });
        }
        file.sync_data()
            .map_err(|e| io_error("syncing", &placing.temp_path, &root, e))?;
        drop(file);
        let dirs = Box::new(placing).place()?;
        Ok(PendingSync {
            dirs,
            ..PendingSync::default()
        })
    }
}

impl Drop for FsWriter {
    fn drop(&mut self) {
        if !self.temp_path.as_os_str().is_empty() {
            self.file.take();
            if let Err(e) = fs::remove_file(&self.temp_path) {
                tracing::warn!(path = %self.temp_path.display(), error = %e, "cannot remove temporary file");
            }
        }
    }
}
