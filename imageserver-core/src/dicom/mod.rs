//! The DICOM toolkit: the protocol layer below the services.
//!
//! - [`pdu`]: bounded PDU framing on a socket and P-DATA fragmenting.
//! - [`dimse`]: the DIMSE command-set codec and status codes.
//! - [`assoc`]: the acceptor: negotiation, limits, timeouts, the message
//!   loop. Who may associate and what serves the messages are the caller's
//!   ([`assoc::AccessPolicy`], [`assoc::HandlerFactory`]).
//! - [`link`]: one association's outgoing side for the handlers (commands,
//!   data sets, C-CANCEL, C-GET sub-operation responses).
//! - [`scu`]: the storage SCU (client associations).
//! - [`transport`]: an association's byte stream, plain TCP or TLS.
//! - `negotiate`: the answer to an A-ASSOCIATE-RQ (contexts, roles, user
//!   identity), over either transport.
//! - [`codec`]: lossless compression (RLE) and decoding for peers that
//!   accept only uncompressed data sets.
//! - [`query_keys`]: C-FIND identifiers to [`crate::model::query::Query`]
//!   and matches back to identifiers.
//! - `part10`: Part 10 files and the structural walker that guards the
//!   header parser.
//! - [`sop_classes`]: the abstract syntaxes we accept.
//! - `render` (feature `web`): one frame as a JPEG or PNG (dicom-pixeldata
//!   decodes, `image` encodes), for DICOMweb's rendered resources.
//!
//! It imports only [`crate::model`] and the dicom-rs crates (and `image`
//! to encode rendered frames): never the
//! services, the index, the storage or the handlers above it.

pub mod assoc;
pub mod codec;
mod deadline;
pub mod dimse;
pub mod link;
mod negotiate;
pub(crate) mod part10;
pub mod pdu;
mod pending;
pub mod query_keys;
#[cfg(feature = "web")]
pub(crate) mod render;
pub mod scu;
pub mod sop_classes;
pub mod transport;
