//! The use cases, over the [`crate::db`] and [`crate::storage`] seams.
//!
//! - [`ingest`]: a streamed data set becomes a durable, indexed instance.
//! - `commit`: the group committer ingest waits on; [`journal`], its
//!   journal of open batches and start-up recovery from it.
//! - [`import`]: existing Part 10 files brought in through ingest.
//! - `find`: C-FIND's matches, read from the index a page at a time.
//! - [`send`]: instances to a remote AE: the send plan and retry policy.
//!
//! The use cases speak no DIMSE: the SCP handlers (`crate::scp`)
//! turn their errors into DICOM statuses.

pub mod admin;
pub(crate) mod commit;
pub(crate) mod devices;
pub(crate) mod find;
pub mod import;
pub mod ingest;
pub mod journal;
mod partition;
pub(crate) mod retrieve;
pub mod send;
#[cfg(feature = "web")]
pub(crate) mod static_files;
pub mod studies;

pub use ingest::{
    Ingest, IngestError, IngestLimits, IngestWriter, StoreOutcome, StoreRequest, Stored,
};
pub use partition::Partition;
