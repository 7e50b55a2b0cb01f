//! The DICOM network front-end.
//!
//! - [`pdu`]: bounded PDU framing on a socket and P-DATA fragmenting.
//! - [`dimse`]: the DIMSE command-set codec and status codes.
//! - [`assoc`]: the acceptor: negotiation, limits, timeouts, the message loop.
//! - [`scp`]: one handler per DIMSE service, calling [`crate::services`].
//! - [`sop_classes`]: the abstract syntaxes we accept.
//!
//! Nothing here touches SQL or file paths.

pub mod assoc;
pub mod dimse;
pub mod pdu;
pub mod query_keys;
pub mod scp;
pub mod scu;
pub mod sop_classes;
