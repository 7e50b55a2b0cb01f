//! The partition as every use case sees it (ingest, retrieval, the study
//! operations, recovery): a leaf, so that none of them depends on another
//! for it.

use crate::model::{AeTitle, DuplicatePolicy, FolderName, PartitionId};

/// A partition as the services see it: a virtual server with its own AE
/// title and storage folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// Index key.
    pub id: PartitionId,
    /// The AE title it answers to.
    pub ae_title: AeTitle,
    /// Its folder under each filesystem.
    pub folder: FolderName,
    /// What to do with duplicate SOP instances.
    pub duplicate_policy: DuplicatePolicy,
}
