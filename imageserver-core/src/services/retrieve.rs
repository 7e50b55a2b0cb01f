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
use crate::model::query::{Attribute, Key, Level, Matcher, Query};
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
    /// The study it belongs to.
    pub fn study_uid(&self) -> &Uid {
        &self.location.study_uid
    }

    fn key(&self) -> InstanceKey {
        InstanceKey {
            location: StudyLocation::clone(&self.location),
            series_uid: self.series_uid.clone(),
            sop_instance_uid: self.sop_instance_uid.clone(),
        }
    }
}

/// Most instances a [`RetrievePlan`] batch holds, unless one series alone
/// has more (a batch never splits a series).
pub const BATCH_INSTANCES: usize = 1000;

/// A retrieve planned without holding its instance list: how many
/// instances it names, the (SOP class, transfer syntax) pairs they need,
/// and batches of whole series, each loaded on its own
/// ([`Retrieve::batch`]) just before it is sent. Memory grows with the
/// number of series, never with the number of instances.
#[derive(Debug, Clone)]
pub struct RetrievePlan {
    query: Query,
    /// Instances named when the plan was made.
    pub total: usize,
    /// Distinct (SOP class, transfer syntax) pairs, in order of first
    /// appearance.
    pub pairs: Vec<(Uid, Uid)>,
    batches: Vec<Batch>,
}

/// Consecutive series of one study, loaded together.
#[derive(Debug, Clone)]
struct Batch {
    study_uid: Uid,
    series: Vec<Uid>,
}

impl RetrievePlan {
    /// How many batches [`Retrieve::batch`] loads.
    pub fn batches(&self) -> usize {
        self.batches.len()
    }

    /// The studies it names, in order, each once.
    pub fn study_uids(&self) -> Vec<&Uid> {
        let mut uids: Vec<&Uid> = Vec::new();
        for batch in &self.batches {
            if uids.last() != Some(&&batch.study_uid) && !uids.contains(&&batch.study_uid) {
                uids.push(&batch.study_uid);
            }
        }
        uids
    }
}

/// Most nearline studies one retrieve restores.
pub const MAX_RESTORED_STUDIES: usize = 64;

/// The Study Instance UIDs a query names (single values and lists).
fn named_studies(query: &Query) -> Vec<Uid> {
    let mut found = Vec::new();
    for key in query
        .keys
        .iter()
        .filter(|k| k.attribute == Attribute::StudyInstanceUid)
    {
        let values: Vec<&String> = match &key.matcher {
            Matcher::Single(value) => vec![value],
            Matcher::List(values) => values.iter().collect(),
            _ => Vec::new(),
        };
        found.extend(values.into_iter().filter_map(|v| Uid::parse(v).ok()));
    }
    found
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
    /// Brings the nearline studies a retrieve names online first.
    restorer: Option<crate::services::studies::Restorer>,
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
            restorer: None,
        }
    }

    /// The same service, restoring the nearline studies a retrieve names
    /// (through `restorer`) before it is planned.
    pub fn restoring(mut self, restorer: crate::services::studies::Restorer) -> Retrieve {
        self.restorer = Some(restorer);
        self
    }

    /// Brings the nearline studies `query` names by Study Instance UID
    /// online (at most [`MAX_RESTORED_STUDIES`]; a patient- or study-level
    /// query without study UIDs, such as a patient's, restores the studies
    /// it matches), calling `on_wait` while a restore runs.
    /// Returns how many were restored.
    pub fn restore_nearline(
        &self,
        partition: &crate::services::Partition,
        query: &Query,
        on_wait: &mut dyn FnMut(),
    ) -> Result<usize, crate::services::studies::StudyError> {
        let Some(restorer) = &self.restorer else {
            return Ok(0);
        };
        let mut studies = named_studies(query);
        if studies.is_empty() {
            studies = self.matching_studies(query)?;
        }
        let mut restored = 0;
        for study in studies.into_iter().take(MAX_RESTORED_STUDIES) {
            if restorer.ensure_online(partition, &study, on_wait)? {
                restored += 1;
            }
        }
        Ok(restored)
    }

    /// The studies a patient- or study-level query matches without naming
    /// them (a patient's C-MOVE): its patient and study keys asked at the
    /// study level, at most [`MAX_RESTORED_STUDIES`]. None for a lower
    /// level (a series or image query without its study is not a retrieve
    /// we restore for).
    fn matching_studies(&self, query: &Query) -> Result<Vec<Uid>, db::Error> {
        if !matches!(query.level, Level::Patient | Level::Study) {
            return Ok(Vec::new());
        }
        let studies = Query {
            level: Level::Study,
            keys: query
                .keys
                .iter()
                .filter(|k| {
                    matches!(
                        k.attribute.level_in(query.root),
                        Level::Patient | Level::Study
                    )
                })
                .cloned()
                .collect(),
            limit: Some(MAX_RESTORED_STUDIES as u64),
            offset: 0,
            ..query.clone()
        };
        let mut found = Vec::new();
        self.query.find(&studies, &mut |m| {
            if let Some(uid) = m
                .get(Attribute::StudyInstanceUid)
                .and_then(|v| Uid::parse(v).ok())
            {
                found.push(uid);
            }
            if found.len() >= MAX_RESTORED_STUDIES {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })?;
        Ok(found)
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

    /// Records an access of each study of a list in study order (cheaply:
    /// once per study per [`ACCESS_COARSENESS`] from this process, and the
    /// index ignores one as recent as that). Failures are logged, not
    /// returned.
    fn record_accesses<'a>(&self, partition: PartitionId, studies: impl Iterator<Item = &'a Uid>) {
        let mut previous: Option<&Uid> = None;
        for study_uid in studies {
            // Lists are in study order: each study once.
            if previous != Some(study_uid) {
                self.record_access(partition, study_uid);
                previous = Some(study_uid);
            }
        }
    }

    /// Records an access of one study (see [`Retrieve::record_accesses`]).
    fn record_access(&self, partition: PartitionId, study_uid: &Uid) {
        let Some((studies, recent)) = &self.accesses else {
            return;
        };
        let key = (partition, study_uid.clone());
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
        if let Err(e) = studies.touch_study(partition, study_uid, now, coarseness) {
            tracing::warn!(%study_uid, error = %crate::model::error_chain(&e), "cannot record a study access");
        }
    }

    /// Every stored instance below the entities `query` matches, in the
    /// index's order, as one list: for a target of bounded size (WADO-RS's
    /// one study, series or instance). A C-MOVE or C-GET, which may name a
    /// patient's every study, uses [`Retrieve::plan`].
    #[cfg(feature = "web")]
    pub fn instances(&self, query: &Query) -> Result<Vec<RetrieveItem>, RetrieveError> {
        let items = instances_on(&*self.query, query)?;
        // After the query: its connection is back in the pool.
        self.record_accesses(query.partition, items.iter().map(|i| &i.location.study_uid));
        Ok(items)
    }

    /// Plans the retrieve of everything below the entities `query`
    /// matches: one pass over the index that keeps counts, the pairs and
    /// series keys, not the instances. Batches hold whole series, up to
    /// [`BATCH_INSTANCES`] instances where series are smaller.
    pub fn plan(&self, query: &Query) -> Result<RetrievePlan, RetrieveError> {
        let plan = plan_on(&*self.query, query, BATCH_INSTANCES)?;
        self.record_accesses(query.partition, plan.batches.iter().map(|b| &b.study_uid));
        Ok(plan)
    }

    /// Loads batch `index` of `plan`: the stored instances of its series
    /// that the plan's query names, as they are now (an instance stored or
    /// deleted since the plan was made is in or out).
    pub fn batch(
        &self,
        plan: &RetrievePlan,
        index: usize,
    ) -> Result<Vec<RetrieveItem>, RetrieveError> {
        batch_on(&*self.query, plan, index)
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

/// The item of a stored instance, sharing the location of the one before
/// when it is the same study's.
fn item_of(
    stored: StoredInstance,
    partition: PartitionId,
    current: &mut Option<Arc<StudyLocation>>,
) -> RetrieveItem {
    let location = match current {
        Some(location) if **location == stored.location => location.clone(),
        _ => {
            let location = Arc::new(stored.location);
            *current = Some(location.clone());
            location
        }
    };
    RetrieveItem {
        location,
        partition,
        series_uid: stored.series_uid,
        sop_instance_uid: stored.sop_instance_uid,
        sop_class_uid: stored.sop_class_uid,
        transfer_syntax_uid: stored.transfer_syntax_uid,
        file_size: stored.file_size,
    }
}

/// Every stored instance below the entities `query` matches, in the
/// index's order (study, series, instance number), as one list.
fn instances_on(store: &dyn QueryStore, query: &Query) -> Result<Vec<RetrieveItem>, RetrieveError> {
    let mut items: Vec<RetrieveItem> = Vec::new();
    let mut current: Option<Arc<StudyLocation>> = None;
    store.find_instances(query, &mut |stored: StoredInstance| {
        items.push(item_of(stored, query.partition, &mut current));
        ControlFlow::Continue(())
    })?;
    Ok(items)
}

/// [`Retrieve::plan`] on `store`, with batches of `batch_instances`.
pub(crate) fn plan_on(
    store: &dyn QueryStore,
    query: &Query,
    batch_instances: usize,
) -> Result<RetrievePlan, RetrieveError> {
    let mut plan = RetrievePlan {
        query: query.clone(),
        total: 0,
        pairs: Vec::new(),
        batches: Vec::new(),
    };
    // Instances in the last batch so far.
    let mut in_batch = 0usize;
    store.find_instances(query, &mut |stored: StoredInstance| {
        plan.total += 1;
        let pair = (stored.sop_class_uid, stored.transfer_syntax_uid);
        if !plan.pairs.contains(&pair) {
            plan.pairs.push(pair);
        }
        let same_series = plan.batches.last().is_some_and(|batch| {
            batch.study_uid == stored.location.study_uid
                && batch.series.last() == Some(&stored.series_uid)
        });
        if !same_series {
            let joins = plan.batches.last().is_some_and(|batch| {
                batch.study_uid == stored.location.study_uid
                    && in_batch < batch_instances
                    && batch.series.len() < crate::model::query::MAX_LIST_VALUES
            });
            if joins {
                let batch = plan.batches.last_mut().expect("checked above");
                batch.series.push(stored.series_uid);
            } else {
                plan.batches.push(Batch {
                    study_uid: stored.location.study_uid,
                    series: vec![stored.series_uid],
                });
                in_batch = 0;
            }
        }
        in_batch += 1;
        ControlFlow::Continue(())
    })?;
    Ok(plan)
}

/// [`Retrieve::batch`] on `store`.
pub(crate) fn batch_on(
    store: &dyn QueryStore,
    plan: &RetrievePlan,
    index: usize,
) -> Result<Vec<RetrieveItem>, RetrieveError> {
    let Some(batch) = plan.batches.get(index) else {
        return Ok(Vec::new());
    };
    let mut query = plan.query.clone();
    query.level = query.level.max(Level::Series);
    query.keys.retain(|key| {
        !matches!(
            key.attribute,
            Attribute::StudyInstanceUid | Attribute::SeriesInstanceUid
        )
    });
    query.keys.push(Key {
        attribute: Attribute::StudyInstanceUid,
        matcher: Matcher::Single(batch.study_uid.as_str().to_string()),
    });
    query.keys.push(Key {
        attribute: Attribute::SeriesInstanceUid,
        matcher: match batch.series.as_slice() {
            [one] => Matcher::Single(one.as_str().to_string()),
            many => Matcher::List(many.iter().map(|uid| uid.as_str().to_string()).collect()),
        },
    });
    instances_on(store, &query)
}
