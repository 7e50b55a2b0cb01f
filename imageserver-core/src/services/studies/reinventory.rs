//! Reinventory: a filesystem's index rows rebuilt from its files.
//!
//! Every study folder the storage backend lists on the filesystem
//! ([`StorageBackend::list_studies`]) whose study the index does not know
//! gets its location claimed where its files are and its rows rebuilt by
//! [`Studies::reprocess`] (each file's header read; files that do not
//! belong where they are skipped and reported). Studies the index knows
//! are left as they are (the integrity scan compares those), as are
//! studies it holds elsewhere or nearline, or whose deletion it recorded: a
//! folder here is then a copy an interrupted operation left, reported for a
//! person (a deleted study never comes back). Nothing is written to the
//! files.

use std::ops::ControlFlow;

use super::*;

/// What became of one study folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReinventoryOutcome {
    /// The index lacked the study: its rows were rebuilt from the files.
    Indexed {
        /// Instances indexed.
        instances: u64,
        /// Files left out, with the reason.
        skipped: Vec<(PathBuf, String)>,
    },
    /// The index already holds the study at this location: left alone.
    Known,
    /// Left alone, with the reason (another location in the index,
    /// nearline, no partition with this folder, no instance files).
    Skipped(String),
}

/// One study folder and what reinventory did with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReinventoriedStudy {
    /// The folder's study.
    pub location: StudyLocation,
    /// What was done.
    pub outcome: ReinventoryOutcome,
}

/// What [`Studies::reinventory`] did on one filesystem.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReinventoryReport {
    /// Study folders found.
    pub studies: u64,
    /// Studies whose rows were rebuilt.
    pub indexed_studies: u64,
    /// Instances indexed in them.
    pub indexed_instances: u64,
    /// Studies the index already held there.
    pub known_studies: u64,
    /// Study folders left alone, with the reason.
    pub skipped: Vec<(StudyLocation, String)>,
    /// Files left out of rebuilt studies, with the reason.
    pub skipped_files: Vec<(PathBuf, String)>,
}

impl ReinventoryReport {
    fn add(&mut self, study: &ReinventoriedStudy) {
        self.studies += 1;
        match &study.outcome {
            ReinventoryOutcome::Indexed { instances, skipped } => {
                self.indexed_studies += 1;
                self.indexed_instances += instances;
                self.skipped_files.extend(skipped.iter().cloned());
            }
            ReinventoryOutcome::Known => self.known_studies += 1,
            ReinventoryOutcome::Skipped(reason) => {
                self.skipped.push((study.location.clone(), reason.clone()))
            }
        }
    }
}

impl Studies {
    /// Rebuilds the index rows of every study on `filesystem` that the
    /// index lacks, from the files (see the module's doc); `partitions`
    /// are the partitions whose folders are read (others' folders are
    /// skipped). `progress` hears of each study folder as it is done.
    /// Runs in the caller's process without the work queue's study locks:
    /// meant for an index that lost its rows, not beside a busy ingest of
    /// the same studies.
    pub fn reinventory(
        &self,
        filesystem: &Filesystem,
        partitions: &[Partition],
        actor: &str,
        progress: &mut dyn FnMut(&ReinventoriedStudy),
    ) -> Result<ReinventoryReport, StudyError> {
        let mut report = ReinventoryReport::default();
        let mut failure = None;
        self.storage
            .list_studies(filesystem, &mut |location| match self
                .reinventory_study(filesystem, partitions, &location, actor)
            {
                Ok(outcome) => {
                    let study = ReinventoriedStudy { location, outcome };
                    report.add(&study);
                    progress(&study);
                    ControlFlow::Continue(())
                }
                Err(error) => {
                    failure = Some(error);
                    ControlFlow::Break(())
                }
            })?;
        if let Some(error) = failure {
            return Err(error);
        }
        tracing::info!(
            filesystem = %filesystem.spec.path.display(),
            studies = report.studies,
            indexed_studies = report.indexed_studies,
            indexed_instances = report.indexed_instances,
            known = report.known_studies,
            skipped = report.skipped.len(),
            "filesystem reinventoried"
        );
        Ok(report)
    }

    fn reinventory_study(
        &self,
        filesystem: &Filesystem,
        partitions: &[Partition],
        location: &StudyLocation,
        actor: &str,
    ) -> Result<ReinventoryOutcome, StudyError> {
        let skipped = |reason: String| Ok(ReinventoryOutcome::Skipped(reason));
        let Some(partition) = partitions
            .iter()
            .find(|p| p.folder == location.partition_folder)
        else {
            return skipped(format!(
                "no partition keeps its studies in folder {}",
                location.partition_folder.as_str()
            ));
        };
        let study_uid = &location.study_uid;
        if let Some(record) = self.store().study(partition.id, study_uid)? {
            return match record.location {
                Some(known) if known == *location => Ok(ReinventoryOutcome::Known),
                Some(known) => skipped(format!(
                    "the index holds the study on filesystem {} in date folder {} (a copy an \
                     interrupted operation left here?)",
                    known.filesystem.0, known.date_folder
                )),
                None => skipped(
                    "the index holds the study nearline (a copy an interrupted purge left here?)"
                        .to_string(),
                ),
            };
        }
        let deletions = self.db.study_deletions(partition.id, study_uid)?;
        if deletions.deleting || deletions.count > 0 {
            return skipped(format!(
                "the index records {} deletion(s) of the study{}: a leftover, not indexed again",
                deletions.count,
                if deletions.deleting {
                    ", one under way"
                } else {
                    ""
                }
            ));
        }
        let has_instances = self
            .storage
            .list_study(filesystem, location)?
            .iter()
            .any(|object| matches!(object, StudyObject::Instance(_)));
        if !has_instances {
            return skipped("no instance files".to_string());
        }
        let claimed = self.db.claim_study_location(partition.id, location)?;
        if claimed != *location {
            return skipped(format!(
                "the study was placed on filesystem {} meanwhile",
                claimed.filesystem.0
            ));
        }
        let rebuilt = match self.reprocess(partition, study_uid, actor) {
            Ok(rebuilt) => rebuilt,
            Err(StudyError::BeingDeleted(_)) => {
                return skipped("the study is being deleted".to_string())
            }
            Err(error) => return Err(error),
        };
        Ok(ReinventoryOutcome::Indexed {
            instances: rebuilt.indexed_instances,
            skipped: rebuilt.skipped,
        })
    }
}
