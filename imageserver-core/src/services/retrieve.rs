//! Retrieve: which stored instances a C-MOVE, C-GET (or WADO) asks for, and
//! their bytes as streams, plus where a move destination lives.
//!
//! No DICOM encoding happens here and no path leaves: a [`RetrieveItem`]
//! names an instance by its UIDs and study location, [`Retrieve::open`]
//! turns it into a byte stream of the stored Part 10 file.

use std::collections::HashMap;
use std::io::Read;
use std::ops::ControlFlow;
use std::sync::{Arc, Mutex};

use crate::db::{self, IndexStore, QueryStore};
use crate::model::query::Query;
use crate::model::{
    AeTitle, DeviceSpec, Filesystem, FilesystemId, PartitionId, StoredInstance, StudyLocation, Uid,
};
use crate::storage::{self, InstanceKey, StorageBackend};

/// Why a retrieve step failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RetrieveError {
    /// The index could not be queried.
    #[error("index lookup failed")]
    Index(#[from] db::Error),
    /// The stored file could not be opened.
    #[error("cannot open the stored instance {sop_instance_uid}")]
    Storage {
        /// The instance.
        sop_instance_uid: Uid,
        /// The underlying failure.
        #[source]
        source: storage::Error,
    },
    /// The instance's study lives on a filesystem the index no longer lists.
    #[error(
        "the study of {sop_instance_uid} lives on filesystem {filesystem:?}, unknown to the index"
    )]
    UnknownFilesystem {
        /// The instance.
        sop_instance_uid: Uid,
        /// The filesystem key.
        filesystem: FilesystemId,
    },
}

/// One instance to retrieve: what a sub-operation needs to name it and to
/// open its file. Instances of one study share their location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetrieveItem {
    location: Arc<StudyLocation>,
    partition: PartitionId,
    /// The series.
    pub series_uid: Uid,
    /// The instance.
    pub sop_instance_uid: Uid,
    /// Its SOP class.
    pub sop_class_uid: Uid,
    /// The transfer syntax it is stored in.
    pub transfer_syntax_uid: Uid,
    /// Size of the stored Part 10 file in bytes.
    pub file_size: u64,
}

impl RetrieveItem {
    fn key(&self) -> InstanceKey {
        InstanceKey {
            location: StudyLocation::clone(&self.location),
            series_uid: self.series_uid.clone(),
            sop_instance_uid: self.sop_instance_uid.clone(),
        }
    }
}

/// The retrieve service. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Retrieve {
    index: Arc<dyn IndexStore>,
    query: Arc<dyn QueryStore>,
    storage: Arc<dyn StorageBackend>,
    /// Filesystems by key, loaded on first use and reloaded on a miss.
    filesystems: Arc<Mutex<HashMap<FilesystemId, Filesystem>>>,
    /// Where study accesses are recorded (the watermark service migrates
    /// the least recently accessed first), and when this process last did.
    accesses: Option<Accesses>,
}

/// Where accesses are recorded, and when this process last recorded each.
type Accesses = (
    Arc<dyn crate::db::studies::StudyStore>,
    Arc<Mutex<HashMap<(PartitionId, Uid), std::time::Instant>>>,
);

/// A study's access is recorded at most once per this long.
const ACCESS_COARSENESS: std::time::Duration = std::time::Duration::from_secs(3600);

impl Retrieve {
    /// A service over an index and a storage backend.
    pub fn new(
        index: Arc<dyn IndexStore>,
        query: Arc<dyn QueryStore>,
        storage: Arc<dyn StorageBackend>,
    ) -> Retrieve {
        Retrieve {
            index,
            query,
            storage,
            filesystems: Arc::new(Mutex::new(HashMap::new())),
            accesses: None,
        }
    }

    /// The same service, recording in `studies` when each study was last
    /// retrieved (at most one write per study per hour).
    pub fn recording_access(
        mut self,
        studies: Arc<dyn crate::db::studies::StudyStore>,
    ) -> Retrieve {
        self.accesses = Some((studies, Arc::new(Mutex::new(HashMap::new()))));
        self
    }

    /// Records an access of the study at `location` (cheaply: once per
    /// study per [`ACCESS_COARSENESS`] from this process, and the index
    /// ignores one as recent as that). Failures are logged, not returned.
    fn record_access(&self, partition: PartitionId, location: &StudyLocation) {
        let Some((studies, recent)) = &self.accesses else {
            return;
        };
        let key = (partition, location.study_uid.clone());
        {
            let mut recent = recent.lock().unwrap_or_else(|p| p.into_inner());
            if recent
                .get(&key)
                .is_some_and(|at| at.elapsed() < ACCESS_COARSENESS)
            {
                return;
            }
            if recent.len() >= 10_000 {
                recent.clear();
            }
            recent.insert(key, std::time::Instant::now());
        }
        let now = crate::db::studies::now_ms();
        let coarseness = ACCESS_COARSENESS.as_millis() as i64;
        if let Err(e) = studies.touch_study(partition, &location.study_uid, now, coarseness) {
            tracing::warn!(study_uid = %location.study_uid, error = %crate::model::error_chain(&e), "cannot record a study access");
        }
    }

    /// Every stored instance below the entities `query` matches, in the
    /// index's order (study, series, instance number). A list, because
    /// sub-operation counts need the total before the first one starts.
    pub fn instances(&self, query: &Query) -> Result<Vec<RetrieveItem>, RetrieveError> {
        let mut items: Vec<RetrieveItem> = Vec::new();
        let mut current: Option<Arc<StudyLocation>> = None;
        let mut studies: Vec<Arc<StudyLocation>> = Vec::new();
        self.query
            .find_instances(query, &mut |stored: StoredInstance| {
                let location = match &current {
                    Some(location) if **location == stored.location => location.clone(),
                    _ => {
                        let location = Arc::new(stored.location);
                        studies.push(location.clone());
                        current = Some(location.clone());
                        location
                    }
                };
                items.push(RetrieveItem {
                    location,
                    partition: query.partition,
                    series_uid: stored.series_uid,
                    sop_instance_uid: stored.sop_instance_uid,
                    sop_class_uid: stored.sop_class_uid,
                    transfer_syntax_uid: stored.transfer_syntax_uid,
                    file_size: stored.file_size,
                });
                ControlFlow::Continue(())
            })?;
        // After the query: its connection is back in the pool.
        for location in &studies {
            self.record_access(query.partition, location);
        }
        Ok(items)
    }

    /// Opens the stored Part 10 file of `item` (preamble and meta group
    /// included) for streaming.
    /// A study migrated since the list was read is followed to its new
    /// location.
    pub fn open(&self, item: &RetrieveItem) -> Result<Box<dyn Read + Send>, RetrieveError> {
        let filesystem = self.filesystem(item.location.filesystem, item)?;
        let failed = match self.storage.open(&filesystem, &item.key()) {
            Ok(reader) => return Ok(reader),
            Err(failed) => failed,
        };
        if let crate::storage::Error::NotFound { .. } = failed {
            if let Some(now) = self
                .index
                .instance(item.partition, &item.sop_instance_uid)?
            {
                if now.location != *item.location {
                    let filesystem = self.filesystem(now.location.filesystem, item)?;
                    let key = InstanceKey {
                        location: now.location,
                        ..item.key()
                    };
                    return self.storage.open(&filesystem, &key).map_err(|source| {
                        RetrieveError::Storage {
                            sop_instance_uid: item.sop_instance_uid.clone(),
                            source,
                        }
                    });
                }
            }
        }
        Err(RetrieveError::Storage {
            sop_instance_uid: item.sop_instance_uid.clone(),
            source: failed,
        })
    }

    /// The device of `partition` called `ae_title`, if the partition knows
    /// it (an invalid AE title is simply unknown).
    pub fn destination(
        &self,
        partition: PartitionId,
        ae_title: &str,
    ) -> Result<Option<DeviceSpec>, RetrieveError> {
        let Ok(ae_title) = AeTitle::parse(ae_title) else {
            return Ok(None);
        };
        Ok(self
            .index
            .devices(partition)?
            .into_iter()
            .find(|device| device.ae_title == ae_title))
    }

    fn filesystem(
        &self,
        id: FilesystemId,
        item: &RetrieveItem,
    ) -> Result<Filesystem, RetrieveError> {
        let mut cache = self
            .filesystems
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if !cache.contains_key(&id) {
            // A miss: filesystems may have been added since the last load.
            *cache = self
                .index
                .filesystems()?
                .into_iter()
                .map(|filesystem| (filesystem.id, filesystem))
                .collect();
        }
        cache
            .get(&id)
            .cloned()
            .ok_or_else(|| RetrieveError::UnknownFilesystem {
                sop_instance_uid: item.sop_instance_uid.clone(),
                filesystem: id,
            })
    }
}
