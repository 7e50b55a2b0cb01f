//! The group commit's journal of open batches, and start-up recovery from
//! it.
//!
//! An instance persisted with [`crate::storage::DeferredSync::persist_deferred`]
//! is renamed into place before its data is synced, and the group commit
//! syncs the file, its directory and the index at once: an index row may
//! then be durable before its file is whole. Before a batch's index
//! transaction begins, the committer writes the batch's entries (partition,
//! location, series, SOP instance, size, BLAKE3) to its journal on each
//! filesystem and syncs it ([`crate::storage::DeferredSync::write_journal`]);
//! the next batch overwrites it (one batch is open at a time). A crash
//! leaves the journal of the dead process; [`recover`] reads it at start:
//! every listed file that is not whole (missing, or another size or digest)
//! was never acknowledged, so it is removed, and a row the batch committed
//! for it is removed ([`IndexStore::remove_instance_row`]: only while the
//! row still names that very file, so a later acknowledged replacement
//! stays; the counts fixed as a deletion fixes them) and its series'
//! metadata file dropped (it may list the instance; WADO-RS encodes from
//! the files until StudyProcess writes it again). A row that holds the
//! entry's digest but no longer names its file exactly (its study moved
//! meanwhile) is left to the old remedy: its study is reprocessed (rows
//! rebuilt from the files). Then the journal goes.

use std::collections::BTreeSet;
use std::io::Read;

use crate::db::{IndexStore, InstanceFile};
use crate::model::{
    error_chain, Filesystem, FilesystemId, FolderName, InstanceRecord, PartitionId, StudyLocation,
    Uid,
};
use crate::services::partition::Partition;
use crate::services::studies::Studies;
use crate::storage::{InstanceKey, SeriesKey, StorageBackend};

/// First line of a journal: magic, version, body length, body digest.
const MAGIC: &str = "IMAGESERVER-OPEN-BATCH 1";

/// Appends a record's entry (one tab-separated line) to a journal body.
pub(crate) fn push_entry(body: &mut Vec<u8>, record: &InstanceRecord) {
    use std::io::Write;
    let location = &record.location;
    let _ = writeln!(
        body,
        "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
        record.partition.0,
        location.filesystem.0,
        location.partition_folder.as_str(),
        location.date_folder,
        location.study_uid.as_str(),
        record.series.series_uid.as_str(),
        record.instance.sop_instance_uid.as_str(),
        record.instance.file_size,
        record.instance.digest,
    );
}

/// A journal's bytes: the header (with the body's length and BLAKE3, so a
/// torn write is recognised) and the body.
pub(crate) fn frame(body: &[u8]) -> Vec<u8> {
    let mut framed =
        format!("{MAGIC} {} {}\n", body.len(), blake3::hash(body).to_hex()).into_bytes();
    framed.extend_from_slice(body);
    framed
}

/// One instance of an open batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    pub partition: PartitionId,
    pub key: InstanceKey,
    pub size: u64,
    pub digest: String,
}

/// The entries of a journal; `None` when its header or digest does not
/// hold (a torn write: that batch's index transaction never began).
pub(crate) fn parse(contents: &[u8]) -> Option<Vec<Entry>> {
    let newline = contents.iter().position(|&b| b == b'\n')?;
    let header = std::str::from_utf8(&contents[..newline]).ok()?;
    let rest = header.strip_prefix(MAGIC)?.trim();
    let (length, digest) = rest.split_once(' ')?;
    let length: usize = length.parse().ok()?;
    let body = contents.get(newline + 1..newline + 1 + length)?;
    if blake3::hash(body).to_hex().as_str() != digest {
        return None;
    }
    let text = std::str::from_utf8(body).ok()?;
    text.lines().map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Entry> {
    let fields: Vec<&str> = line.split('\t').collect();
    let [partition, filesystem, folder, date, study, series, sop, size, digest] = fields[..] else {
        return None;
    };
    Some(Entry {
        partition: PartitionId(partition.parse().ok()?),
        key: InstanceKey {
            location: StudyLocation {
                filesystem: FilesystemId(filesystem.parse().ok()?),
                partition_folder: FolderName::parse(folder).ok()?,
                date_folder: date.to_string(),
                study_uid: Uid::parse(study).ok()?,
            },
            series_uid: Uid::parse(series).ok()?,
            sop_instance_uid: Uid::parse(sop).ok()?,
        },
        size: size.parse().ok()?,
        digest: digest.to_string(),
    })
}

/// What [`recover`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Journals read (and removed).
    pub journals: u64,
    /// Entries checked.
    pub checked: u64,
    /// Files that were not whole, removed.
    pub removed_files: u64,
    /// Index rows of files that were not whole, removed.
    pub removed_rows: u64,
    /// Studies reprocessed because a row of theirs had no whole file and
    /// could not be removed alone.
    pub reprocessed_studies: u64,
}

/// Reads the journals a crashed process left on `filesystems` and removes
/// what of their batches is not whole (see the module). A journal is
/// removed only once all of it was handled; one left is read again at the
/// next start.
pub fn recover(
    index: &dyn IndexStore,
    storage: &dyn StorageBackend,
    studies: &Studies,
    partitions: &[Partition],
    filesystems: &[Filesystem],
) -> RecoveryReport {
    let mut report = RecoveryReport::default();
    // A backend that never defers keeps no journals.
    let Some(journal) = storage.deferred() else {
        return report;
    };
    for filesystem in filesystems {
        let journals = match journal.orphan_journals(filesystem) {
            Ok(journals) => journals,
            Err(e) => {
                tracing::warn!(filesystem = %filesystem.spec.path.display(), error = %error_chain(&e), "cannot read the open-batch journals");
                continue;
            }
        };
        for (name, contents) in journals {
            report.journals += 1;
            let handled = match parse(&contents) {
                None => {
                    tracing::info!(journal = %name, "an open-batch journal was torn: its batch never reached the index");
                    true
                }
                Some(entries) => recover_entries(
                    index,
                    storage,
                    studies,
                    partitions,
                    filesystems,
                    &entries,
                    &mut report,
                ),
            };
            if handled {
                if let Err(e) = journal.remove_journal(filesystem, &name) {
                    tracing::warn!(journal = %name, error = %error_chain(&e), "cannot remove an open-batch journal");
                }
            }
        }
    }
    if report.journals > 0 {
        tracing::info!(
            journals = report.journals,
            checked = report.checked,
            removed_files = report.removed_files,
            removed_rows = report.removed_rows,
            reprocessed_studies = report.reprocessed_studies,
            "open batches of a crashed process checked"
        );
    }
    report
}

/// Checks one journal's entries; whether all went well.
fn recover_entries(
    index: &dyn IndexStore,
    storage: &dyn StorageBackend,
    studies: &Studies,
    partitions: &[Partition],
    filesystems: &[Filesystem],
    entries: &[Entry],
    report: &mut RecoveryReport,
) -> bool {
    let mut ok = true;
    let mut to_reprocess = BTreeSet::new();
    for entry in entries {
        report.checked += 1;
        let sop = &entry.key.sop_instance_uid;
        let Some(filesystem) = filesystems
            .iter()
            .find(|f| f.id == entry.key.location.filesystem)
        else {
            tracing::warn!(sop_instance_uid = %sop, "an open batch's filesystem is unknown");
            continue;
        };
        let file = match facts(storage, filesystem, &entry.key) {
            Ok(file) => file,
            Err(e) => {
                tracing::warn!(sop_instance_uid = %sop, error = %error_chain(&e), "cannot read an open batch's file");
                ok = false;
                continue;
            }
        };
        if file.as_ref() == Some(&(entry.size, entry.digest.clone())) {
            continue;
        }
        let row = match index.instance(entry.partition, sop) {
            Ok(row) => row,
            Err(e) => {
                tracing::warn!(sop_instance_uid = %sop, error = %error_chain(&e), "cannot look up an open batch's row");
                ok = false;
                continue;
            }
        };
        let ours = row.as_ref().is_some_and(|r| r.digest == entry.digest);
        let rows_file = row.as_ref().is_some_and(|r| {
            r.location == entry.key.location
                && r.series_uid == entry.key.series_uid
                && file.as_ref() == Some(&(r.file_size, r.digest.clone()))
        });
        if rows_file {
            // A later acknowledged version holds the path.
            continue;
        }
        if file.is_some() {
            match storage.delete(filesystem, &entry.key) {
                Ok(()) => report.removed_files += 1,
                Err(e) => {
                    tracing::warn!(sop_instance_uid = %sop, error = %error_chain(&e), "cannot remove a file that is not whole");
                    ok = false;
                    continue;
                }
            }
        }
        let removed_row = if ours {
            match remove_row(index, storage, filesystem, entry) {
                Ok(removed) => removed,
                Err(e) => {
                    tracing::warn!(sop_instance_uid = %sop, error = %error_chain(&e), "cannot remove the row of a file that was not whole");
                    ok = false;
                    continue;
                }
            }
        } else {
            false
        };
        tracing::warn!(
            sop_instance_uid = %sop,
            path = %storage.describe(filesystem, &entry.key).display(),
            indexed = ours,
            "an instance of an open batch was not whole at the crash (never acknowledged): removed"
        );
        if removed_row {
            report.removed_rows += 1;
        } else if ours {
            // The row holds the entry's digest but not its file exactly:
            // the study is rebuilt from its files instead.
            to_reprocess.insert((entry.partition, entry.key.location.study_uid.clone()));
        }
    }
    for (partition_id, study_uid) in to_reprocess {
        let Some(partition) = partitions.iter().find(|p| p.id == partition_id) else {
            tracing::warn!(study_uid = %study_uid, "an open batch's partition is not configured: its rows stay");
            ok = false;
            continue;
        };
        match studies.reprocess(partition, &study_uid, "recovery") {
            Ok(_) => report.reprocessed_studies += 1,
            Err(e) => {
                tracing::warn!(study_uid = %study_uid, error = %error_chain(&e), "cannot reprocess a study after a crash");
                ok = false;
            }
        }
    }
    ok
}

/// Removes the row of an entry's file if it still names it, and then the
/// series' metadata file (a failure there is only logged: WADO-RS's answer
/// is rebuilt by StudyProcess anyway); whether a row went.
fn remove_row(
    index: &dyn IndexStore,
    storage: &dyn StorageBackend,
    filesystem: &Filesystem,
    entry: &Entry,
) -> Result<bool, crate::db::Error> {
    let file = InstanceFile {
        location: entry.key.location.clone(),
        series_uid: entry.key.series_uid.clone(),
        sop_instance_uid: entry.key.sop_instance_uid.clone(),
        file_size: entry.size,
        digest: entry.digest.clone(),
    };
    if !index.remove_instance_row(entry.partition, &file)? {
        return Ok(false);
    }
    let series = SeriesKey {
        location: file.location,
        series_uid: file.series_uid,
    };
    if let Err(e) = storage.delete_series_metadata(filesystem, &series) {
        tracing::warn!(series_uid = %series.series_uid, error = %error_chain(&e), "cannot drop the metadata of a series whose row was removed");
    }
    Ok(true)
}

/// The size and BLAKE3 of a stored file, `None` when it is missing.
fn facts(
    storage: &dyn StorageBackend,
    filesystem: &Filesystem,
    key: &InstanceKey,
) -> Result<Option<(u64, String)>, crate::storage::Error> {
    let mut reader = match storage.open(filesystem, key) {
        Ok(reader) => reader,
        Err(crate::storage::Error::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut hasher = blake3::Hasher::new();
    let mut size = 0u64;
    let mut buffer = vec![0u8; 256 * 1024];
    loop {
        let n = reader
            .read(&mut buffer)
            .map_err(|e| crate::storage::Error::Io {
                operation: "reading",
                path: storage.describe(filesystem, key),
                source: e,
            })?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
        size += n as u64;
    }
    Ok(Some((size, hasher.finalize().to_hex().to_string())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_journal_reads_back_and_a_torn_one_is_recognised() {
        let line = "3\t1\tP\t20240101\t1.2.3\t1.2.3.4\t1.2.3.4.5\t9216\tabcdef\n";
        let framed = frame(line.as_bytes());
        let entries = parse(&framed).expect("a whole journal parses");
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].partition, PartitionId(3));
        assert_eq!(entries[0].key.sop_instance_uid.as_str(), "1.2.3.4.5");
        assert_eq!(entries[0].size, 9216);
        // Bytes of an older, longer batch after the body are ignored.
        let mut longer = framed.clone();
        longer.extend_from_slice(b"3\t1\tP\t20240101\t9.9\t9.9\t9.9\t1\tff\n");
        assert_eq!(parse(&longer), Some(entries));
        // A torn write (the body short or changed) is not a journal.
        assert_eq!(parse(&framed[..framed.len() - 3]), None);
        let mut changed = framed.clone();
        let last = changed.len() - 2;
        changed[last] ^= 1;
        assert_eq!(parse(&changed), None);
        assert_eq!(parse(&[0u8; 100]), None);
    }
}
