//! The integrity check: a study's index rows against its files.

use super::*;

/// One disagreement between the index and the files of a study.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// Indexed, but its file is missing.
    MissingFile {
        /// The series.
        series_uid: Uid,
        /// The instance.
        sop_instance_uid: Uid,
    },
    /// A file of the study folder no row of the study names.
    ExtraFile {
        /// The series folder.
        series_uid: Uid,
        /// The instance its name says.
        sop_instance_uid: Uid,
    },
    /// The file's size differs from the index's.
    SizeMismatch {
        /// The instance.
        sop_instance_uid: Uid,
        /// The index's size.
        indexed: u64,
        /// The file's size.
        actual: u64,
    },
    /// The file's digest differs from the index's.
    DigestMismatch {
        /// The instance.
        sop_instance_uid: Uid,
        /// The index's digest.
        indexed: String,
        /// The file's digest.
        actual: String,
    },
    /// The file could not be read.
    Unreadable {
        /// The instance.
        sop_instance_uid: Uid,
        /// Why.
        reason: String,
    },
}

impl Finding {
    /// Whether rebuilding the study's rows from its files (reprocess)
    /// resolves it.
    pub fn needs_reprocess(&self) -> bool {
        !matches!(self, Finding::Unreadable { .. })
    }

    /// Whether a scheduled scan may queue that reprocess by itself: only
    /// for files the index does not hold (it adds their rows). A missing
    /// file, or one whose size or digest changed, is reported for a person:
    /// rebuilding the rows from what is on disk would drop the rows of
    /// files on a share that comes back, or record a damaged file's digest
    /// as the truth.
    pub fn repaired_unattended(&self) -> bool {
        matches!(self, Finding::ExtraFile { .. })
    }
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Finding::MissingFile {
                series_uid,
                sop_instance_uid,
            } => write!(f, "missing file: {sop_instance_uid} (series {series_uid})"),
            Finding::ExtraFile {
                series_uid,
                sop_instance_uid,
            } => write!(
                f,
                "file not in the index: {sop_instance_uid} (series {series_uid})"
            ),
            Finding::SizeMismatch {
                sop_instance_uid,
                indexed,
                actual,
            } => write!(
                f,
                "size mismatch: {sop_instance_uid}: index {indexed} bytes, file {actual} bytes"
            ),
            Finding::DigestMismatch {
                sop_instance_uid,
                indexed,
                actual,
            } => write!(
                f,
                "digest mismatch: {sop_instance_uid}: index {indexed}, file {actual}"
            ),
            Finding::Unreadable {
                sop_instance_uid,
                reason,
            } => write!(f, "unreadable: {sop_instance_uid}: {reason}"),
        }
    }
}

/// What [`Studies::check_integrity`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IntegrityReport {
    /// Instances the index lists.
    pub indexed: u64,
    /// Instance files in the study folder.
    pub files: u64,
    /// The disagreements.
    pub findings: Vec<Finding>,
    /// When the study's newest file was last modified (ms since the Unix
    /// epoch; None without files). A study still receiving instances has
    /// files whose rows are not committed yet: its findings are transient.
    pub newest_file_ms: Option<i64>,
}

impl IntegrityReport {
    /// Whether index and files agree.
    pub fn is_clean(&self) -> bool {
        self.findings.is_empty()
    }

    /// Whether a reprocess would fix something (StudyProcess schedules one).
    pub fn needs_reprocess(&self) -> bool {
        self.findings.iter().any(Finding::needs_reprocess)
    }

    /// Whether every finding is one a scheduled scan repairs by itself
    /// ([`Finding::repaired_unattended`]), and there is one.
    pub fn repaired_unattended(&self) -> bool {
        !self.findings.is_empty() && self.findings.iter().all(Finding::repaired_unattended)
    }
}

impl Studies {
    // ---------------------------------------------------------- integrity

    /// Compares the index with the study folder: missing files, files no
    /// row names, sizes and the BLAKE3 digests of the files `digests`
    /// selects. Reads files, writes nothing.
    pub fn check_integrity(
        &self,
        partition: &Partition,
        study_uid: &Uid,
        digests: DigestCheck<'_>,
    ) -> Result<IntegrityReport, StudyError> {
        let (location, filesystem) = self.online_files(partition, study_uid)?;
        let indexed = self.store().study_instances(partition.id, study_uid)?;
        let mut on_disk: BTreeMap<Uid, StoredObject> = BTreeMap::new();
        for object in self.storage.list_study(&filesystem, &location)? {
            if let StudyObject::Instance(file) = object {
                on_disk.insert(file.sop_instance_uid.clone(), file);
            }
        }
        let mut report = IntegrityReport {
            indexed: indexed.len() as u64,
            files: on_disk.len() as u64,
            findings: Vec::new(),
            newest_file_ms: on_disk.values().map(|f| f.modified_ms).max(),
        };
        for instance in &indexed {
            let sop = &instance.sop_instance_uid;
            let Some(file) = on_disk
                .remove(sop)
                .filter(|f| f.series_uid == instance.series_uid)
            else {
                report.findings.push(Finding::MissingFile {
                    series_uid: instance.series_uid.clone(),
                    sop_instance_uid: sop.clone(),
                });
                continue;
            };
            if file.size != instance.file_size {
                report.findings.push(Finding::SizeMismatch {
                    sop_instance_uid: sop.clone(),
                    indexed: instance.file_size,
                    actual: file.size,
                });
                continue;
            }
            if digests.covers(sop) {
                let digest = self
                    .storage
                    .open(&filesystem, &key_of(instance))
                    .map_err(|e| e.to_string())
                    .and_then(|reader| files::digest(reader).map_err(|e| e.to_string()));
                match digest {
                    Ok((_, digest)) if digest == instance.digest => {}
                    Ok((_, digest)) => report.findings.push(Finding::DigestMismatch {
                        sop_instance_uid: sop.clone(),
                        indexed: instance.digest.clone(),
                        actual: digest,
                    }),
                    Err(reason) => report.findings.push(Finding::Unreadable {
                        sop_instance_uid: sop.clone(),
                        reason,
                    }),
                }
            }
        }
        for (sop, file) in on_disk {
            report.findings.push(Finding::ExtraFile {
                series_uid: file.series_uid,
                sop_instance_uid: sop,
            });
        }
        Ok(report)
    }
}

/// Which files [`Studies::check_integrity`] hashes (every file is listed and
/// its size compared either way).
#[derive(Debug, Clone, Copy)]
pub enum DigestCheck<'a> {
    /// None: sizes only.
    None,
    /// Every file of the study.
    All,
    /// Only these instances (the ones that just arrived).
    Only(&'a BTreeSet<Uid>),
}

impl DigestCheck<'_> {
    fn covers(&self, sop_instance_uid: &Uid) -> bool {
        match self {
            DigestCheck::None => false,
            DigestCheck::All => true,
            DigestCheck::Only(uids) => uids.contains(sop_instance_uid),
        }
    }
}
