//! # imageserver-core
//!
//! The library of a DICOM image archive: the storage heart of a PACS.
//! Modalities and workstations send instances over DICOM; the archive writes
//! them durably to filesystems, indexes them in a database and answers for
//! them.
//!
//! The crate is layered the way Orthanc splits framework and server:
//!
//! - [`model`]: the shared vocabulary (validated UIDs, AE titles, records).
//! - [`dicom`]: the DICOM toolkit below the services: PDU framing, the DIMSE
//!   codec, the association acceptor (with an access policy and a handler
//!   factory of the caller's), the storage SCU, identifier codecs and Part
//!   10 files. It imports only [`model`] and dicom-rs.
//! - `scp`: the DIMSE service handlers above the services: C-ECHO,
//!   C-STORE, C-FIND, C-MOVE and C-GET, each calling [`services`]; never SQL
//!   or a path.
//! - [`services`]: the use cases (ingest with group commit, import) over the
//!   two seams below.
//! - [`db`]: the index seam ([`db::IndexStore`]) and its backends.
//! - [`storage`]: the file seam ([`storage::StorageBackend`]) and the
//!   filesystem backend with its durable-write recipe.
//! - [`server`]: the composition root ([`server::ServerBuilder`]) that wires
//!   concrete backends together; the only module that names them.
//! - [`config`]: the TOML settings, raw and validated.
//! - [`audit`]: the IHE ATNA audit trail (DICOM audit messages kept in the
//!   index and sent over syslog through an on-disk spool).
//!
//! See ARCHITECTURE.md at the repository root for the data flow and the
//! invariants.
#![deny(missing_docs)]

#[cfg(not(any(feature = "sqlite", feature = "postgres")))]
compile_error!(
    "imageserver-core needs an index backend: enable feature `sqlite`, `postgres` or both"
);

pub mod archive;
pub mod audit;
pub mod cluster;
pub mod config;
pub mod db;
pub mod dicom;
pub mod fault;
pub mod model;
pub mod processors;
pub mod rules;
pub mod scheduler;
pub(crate) mod scp;
pub mod server;
pub mod services;
pub mod storage;
pub mod tiering;
pub mod tls;
#[cfg(feature = "web")]
pub mod web;
pub mod workqueue;

pub use dicom_core;
pub use dicom_object;

// The embedding surface: what a product assembles an archive from and
// talks to. Everything else is reached through its module when needed.
pub use config::{Config, ConfigError, Settings};
pub use db::{Database, IndexStore, QueryStore};
pub use model::requests::StudyRequest;
pub use model::{error_chain, AeTitle, PartitionId, Uid};
pub use rules::RuleSet;
pub use server::{open_index, Archive, ArchivePartition, Error, Server, ServerBuilder};
pub use services::import::{FileOutcome, ImportSummary};
pub use services::studies::{Studies, StudyError};
pub use services::Partition;
pub use storage::{Placement, StorageBackend};
pub use workqueue::{
    KindProperties, ProcessContext, Processor, Registry, StepResult, WorkItem, WorkKind, WorkQueue,
    WorkStatus, WorkStore,
};

// Property-based fuzzing (docs/fuzzing.md); it tests no backend, so the
// single-backend test runs skip it.
#[cfg(all(test, feature = "sqlite", feature = "postgres"))]
mod fuzz;
