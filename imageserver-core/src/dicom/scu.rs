//! The storage SCU: one client association to a remote AE that sends
//! stored instances with C-STORE.
//!
//! [`StoreScu::connect`] proposes presentation contexts for a set of (SOP
//! class, transfer syntax) pairs, [`StoreScu::store_item`] sends one
//! instance and waits for its C-STORE-RSP, [`StoreScu::release`] ends the
//! association. The whole job for a list of instances (the plan over
//! associations, reconnection, stopping) is the services' send use case.
//!
//! ## Presentation contexts and transfer syntaxes
//!
//! For every SOP class among the instances, one presentation context is
//! proposed per transfer syntax its instances are stored in, plus Explicit
//! VR Little Endian and Implicit VR Little Endian, each context with exactly
//! one transfer syntax so that the peer accepts or refuses each on its own.
//! **An instance is sent in the transfer syntax it is stored in whenever
//! the peer accepts it**, so the data set bytes that arrive are the stored
//! bytes. Only an instance stored compressed in a syntax the archive
//! decodes ([`codec::can_decode`]: RLE Lossless, what compression writes)
//! for a peer that accepted its SOP class only uncompressed is decoded on
//! the fly into Explicit VR LE (else Implicit) — in memory, one instance at
//! a time; nothing else is ever transcoded, and the fallback contexts make
//! the failure reason precise ("accepts CT only as Implicit VR LE"). At most 128 contexts fit one association; more
//! distinct pairs are spread over successive associations.
//!
//! ## Wire
//!
//! After dicom-ul negotiated the association, PDUs are written and read
//! with [`crate::dicom::pdu`] (dicom-ul's P-DATA writer has the exact-fill
//! bug): the file's preamble and meta group are skipped (their length comes
//! from (0002,0000)) and the data set is streamed with
//! [`pdu::copy_pdata`], one PDU of memory, never the whole instance. The
//! socket has `TCP_NODELAY`. Every wait for the peer is bounded by
//! [`ScuOptions::response_timeout`].
//!
//! ## TLS
//!
//! With [`ScuOptions::tls`] the association runs over TLS (PS3.15 B.1/B.9),
//! the destination's certificate verified against the configured CA bundle
//! and its host name; we negotiate the association ourselves then (dicom-ul's
//! client connects plain TCP only), proposing the same contexts.

use std::io::{self, Read};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dicom_ul::association::Error as UlError;
use dicom_ul::pdu::{
    AbortRQSource, AssociationRJ, AssociationRJSource, AssociationRQ, PresentationContextProposed,
    PresentationContextResultReason, UserVariableItem,
};
use dicom_ul::{ClientAssociationOptions, Pdu};
use tracing::debug;

use super::codec;
use super::deadline::DeadlineReader;
use super::dimse::{Command, CommandField, FragmentBuffer, Priority, Status, StatusClass};
use super::part10::DataSetReader;
use super::pdu::{self, Incoming, PduError, PduReader};
use super::transport::Transport;
use crate::model::error_chain;

/// Explicit VR Little Endian.
pub const EXPLICIT_VR_LITTLE_ENDIAN: &str = "1.2.840.10008.1.2.1";
/// Implicit VR Little Endian.
pub const IMPLICIT_VR_LITTLE_ENDIAN: &str = "1.2.840.10008.1.2";

/// Most presentation contexts one association can carry (odd ids 1–255).
pub const MAX_CONTEXTS: usize = 128;
/// Largest command set we accept in a response.
const MAX_COMMAND_LEN: usize = 64 * 1024;

/// Where to send: a remote AE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    /// The called AE title.
    pub ae_title: String,
    /// Host name or address.
    pub host: String,
    /// Port.
    pub port: u16,
}

impl std::fmt::Display for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}:{}", self.ae_title, self.host, self.port)
    }
}

/// How to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScuOptions {
    /// Our (calling) AE title.
    pub calling_ae: String,
    /// The largest PDU we accept from the peer (responses are small).
    pub max_pdu_length: u32,
    /// Time to set up the TCP connection.
    pub connect_timeout: Duration,
    /// Longest wait for any answer (A-ASSOCIATE-AC, C-STORE-RSP,
    /// A-RELEASE-RP) and for any write to be taken by the peer.
    pub response_timeout: Duration,
    /// Priority of the C-STORE-RQs.
    pub priority: Priority,
    /// AE title and message id of the C-MOVE the stores belong to.
    pub move_originator: Option<(String, u16)>,
    /// TLS to the destination (a device configured with `tls = true`).
    pub tls: Option<ClientTls>,
}

/// A TLS client configuration for outgoing associations: the CA bundle
/// destinations' certificates are verified against. Compared by identity.
#[derive(Debug, Clone)]
pub struct ClientTls(pub Arc<rustls::ClientConfig>);

impl PartialEq for ClientTls {
    fn eq(&self, other: &ClientTls) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for ClientTls {}

impl ScuOptions {
    /// Defaults: 64 KiB PDUs, 10 s to connect, 60 s per answer, medium
    /// priority, no move originator.
    pub fn new(calling_ae: &str) -> ScuOptions {
        ScuOptions {
            calling_ae: calling_ae.to_string(),
            max_pdu_length: 64 * 1024,
            connect_timeout: Duration::from_secs(10),
            response_timeout: Duration::from_secs(60),
            priority: Priority::Medium,
            move_originator: None,
            tls: None,
        }
    }
}

/// One instance to send.
pub trait Outgoing {
    /// Its SOP Class UID.
    fn sop_class_uid(&self) -> &str;
    /// Its SOP Instance UID.
    fn sop_instance_uid(&self) -> &str;
    /// The transfer syntax its data set is stored in.
    fn transfer_syntax_uid(&self) -> &str;
    /// The size of its Part 10 file, when known: the data set sent must
    /// then be exactly the file minus its meta group (a shorter or longer
    /// file aborts the transfer instead of delivering a damaged instance).
    fn file_size(&self) -> Option<u64> {
        None
    }
    /// Opens its Part 10 file (preamble and meta group included).
    fn open(&self) -> Result<Box<dyn Read + Send + '_>, Box<dyn std::error::Error + Send + Sync>>;
}

/// What became of one instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The destination answered the C-STORE-RQ.
    Answered {
        /// Its status.
        status: Status,
        /// Its error comment, if any.
        error_comment: Option<String>,
    },
    /// The instance was not stored and no answer says why: not sent (no
    /// suitable presentation context, unreadable file) or the association
    /// failed while it was in flight.
    Failed {
        /// Why, for logs.
        reason: String,
    },
}

/// How an [`Outcome`] counts in C-MOVE/C-GET sub-operation counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tally {
    /// Stored (status success).
    Completed,
    /// Stored with a warning (status warning).
    Warning,
    /// Not stored.
    Failed,
}

impl Outcome {
    /// How the outcome counts.
    pub fn tally(&self) -> Tally {
        match self {
            Outcome::Answered { status, .. } => match status.class() {
                StatusClass::Success => Tally::Completed,
                StatusClass::Warning => Tally::Warning,
                _ => Tally::Failed,
            },
            Outcome::Failed { .. } => Tally::Failed,
        }
    }

    /// A one-line description.
    pub fn describe(&self) -> String {
        match self {
            Outcome::Answered {
                status,
                error_comment: Some(comment),
            } => format!("status {status}: {comment}"),
            Outcome::Answered { status, .. } => format!("status {status}"),
            Outcome::Failed { reason } => reason.clone(),
        }
    }
}

/// Why an association (or the whole job) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScuError {
    /// The host name did not resolve.
    #[error("cannot resolve the address of {destination}: {source}")]
    Resolve {
        /// The destination.
        destination: String,
        /// The resolver's error.
        #[source]
        source: io::Error,
    },
    /// Nothing listens at the destination's address (check host and port).
    #[error("{destination} refused the connection (is its SCP running on that port?)")]
    ConnectionRefused {
        /// The destination.
        destination: String,
    },
    /// The TCP connection failed otherwise (unreachable, timed out).
    #[error("cannot connect to {destination}: {source}")]
    Connect {
        /// The destination.
        destination: String,
        /// The socket error.
        #[source]
        source: io::Error,
    },
    /// The peer answered with A-ASSOCIATE-RJ (check its configuration of
    /// our calling AE title and of its own called AE title).
    #[error("{destination} rejected the association ({reason})")]
    Rejected {
        /// The destination.
        destination: String,
        /// Result, source and reason of the rejection.
        reason: String,
    },
    /// The peer accepted none of the proposed presentation contexts.
    #[error("{destination} accepted none of the SOP classes and transfer syntaxes proposed")]
    NoAcceptableContext {
        /// The destination.
        destination: String,
    },
    /// The peer did not answer or take our data in time.
    #[error("{destination} did not answer within {timeout:?} while {waiting_for}")]
    Timeout {
        /// The destination.
        destination: String,
        /// The timeout that passed.
        timeout: Duration,
        /// What we waited for.
        waiting_for: &'static str,
    },
    /// The peer aborted the association.
    #[error("{destination} aborted the association ({source_desc})")]
    Aborted {
        /// The destination.
        destination: String,
        /// Who aborted and why.
        source_desc: String,
    },
    /// The connection broke (reset, closed, malformed PDU).
    #[error("the association with {destination} broke: {reason}")]
    Broken {
        /// The destination.
        destination: String,
        /// What happened.
        reason: String,
    },
    /// The peer sent something DIMSE does not allow here.
    #[error("protocol error from {destination}: {detail}")]
    Protocol {
        /// The destination.
        destination: String,
        /// What arrived.
        detail: String,
    },
    /// Reading the stored instance failed after part of it was sent; the
    /// association was aborted so the peer discards the partial data set.
    #[error("reading the stored instance failed while sending it: {reason}")]
    Source {
        /// What failed.
        reason: String,
    },
    /// More than 128 presentation contexts would be needed for one class.
    #[error("{0} presentation contexts requested; one association holds at most 128")]
    TooManyContexts(usize),
}

impl ScuError {
    /// Whether the failure lies with our stored file rather than with the
    /// peer or the network.
    pub fn is_local(&self) -> bool {
        matches!(self, ScuError::Source { .. })
    }
}

/// An accepted presentation context.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Accepted {
    id: u8,
    abstract_syntax: String,
    transfer_syntax: String,
}

/// The Verification SOP Class (C-ECHO).
pub const VERIFICATION: &str = "1.2.840.10008.1.1";

/// One association to a storage SCP.
pub struct StoreScu {
    socket: Transport,
    destination: String,
    options: ScuOptions,
    contexts: Vec<Accepted>,
    peer_max_pdu: u32,
    reader: PduReader,
    scratch: Vec<u8>,
    next_message_id: u16,
}

impl std::fmt::Debug for StoreScu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreScu")
            .field("destination", &self.destination)
            .field("contexts", &self.contexts.len())
            .finish()
    }
}

/// The presentation contexts to propose for `pairs` of (SOP class, stored
/// transfer syntax): per class, each stored syntax, then Explicit and
/// Implicit VR Little Endian; each (class, syntax) once, in first-seen order.
pub fn proposals<'p>(pairs: impl IntoIterator<Item = (&'p str, &'p str)>) -> Vec<(String, String)> {
    let mut classes: Vec<(&str, Vec<&str>)> = Vec::new();
    for (class, ts) in pairs {
        match classes.iter_mut().find(|(c, _)| *c == class) {
            Some((_, syntaxes)) => {
                if !syntaxes.contains(&ts) {
                    syntaxes.push(ts);
                }
            }
            None => classes.push((class, vec![ts])),
        }
    }
    let mut out = Vec::new();
    for (class, mut syntaxes) in classes {
        for fallback in [EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN] {
            if !syntaxes.contains(&fallback) {
                syntaxes.push(fallback);
            }
        }
        out.extend(
            syntaxes
                .into_iter()
                .map(|ts| (class.to_string(), ts.to_string())),
        );
    }
    out
}

impl StoreScu {
    /// Connects to `destination` and negotiates the contexts
    /// [`proposals`] gives for `pairs` of (SOP class, stored transfer
    /// syntax).
    pub fn connect<'p>(
        destination: &Destination,
        options: &ScuOptions,
        pairs: impl IntoIterator<Item = (&'p str, &'p str)>,
    ) -> Result<StoreScu, ScuError> {
        let name = destination.to_string();
        let proposed = proposals(pairs);
        if proposed.len() > MAX_CONTEXTS {
            return Err(ScuError::TooManyContexts(proposed.len()));
        }
        if proposed.is_empty() {
            return Err(ScuError::NoAcceptableContext { destination: name });
        }
        if let Some(tls) = &options.tls {
            return connect_tls(destination, options, &proposed, tls);
        }
        let mut request = ClientAssociationOptions::new()
            .calling_ae_title(options.calling_ae.clone())
            .called_ae_title(destination.ae_title.clone())
            .max_pdu_length(options.max_pdu_length)
            .connection_timeout(options.connect_timeout)
            .read_timeout(options.response_timeout)
            .write_timeout(options.response_timeout);
        for (class, ts) in &proposed {
            request = request.with_presentation_context(class.clone(), vec![ts.clone()]);
        }
        let mut association = request
            .establish((destination.host.as_str(), destination.port))
            .map_err(|error| establish_error(&name, options.response_timeout, error))?;
        let contexts: Vec<Accepted> = association
            .presentation_contexts()
            .iter()
            .filter(|pc| pc.reason == PresentationContextResultReason::Acceptance)
            .map(|pc| Accepted {
                id: pc.id,
                abstract_syntax: pc.abstract_syntax.trim_end_matches('\0').to_string(),
                transfer_syntax: pc.transfer_syntax.trim_end_matches('\0').to_string(),
            })
            .collect();
        let peer_max_pdu = association.acceptor_max_pdu_length();
        // From here on we read and write PDUs ourselves on the same socket.
        let socket = association
            .inner_stream()
            .try_clone()
            .map_err(|e| broken(&name, e))?;
        drop(association);
        socket.set_nodelay(true).map_err(|e| broken(&name, e))?;
        socket
            .set_write_timeout(Some(options.response_timeout))
            .map_err(|e| broken(&name, e))?;
        debug!(
            destination = %name,
            proposed = proposed.len(),
            accepted = contexts.len(),
            peer_max_pdu,
            "storage association established"
        );
        Ok(StoreScu {
            socket: Transport::Plain(socket),
            destination: name,
            options: options.clone(),
            contexts,
            peer_max_pdu,
            reader: PduReader::new(options.max_pdu_length),
            scratch: Vec::new(),
            next_message_id: 1,
        })
    }

    /// The accepted context for (SOP class, transfer syntax), or why there
    /// is none.
    pub fn context_for(&self, sop_class: &str, transfer_syntax: &str) -> Result<u8, NoContext> {
        if let Some(pc) = self
            .contexts
            .iter()
            .find(|pc| pc.abstract_syntax == sop_class && pc.transfer_syntax == transfer_syntax)
        {
            return Ok(pc.id);
        }
        let accepted: Vec<&str> = self
            .contexts
            .iter()
            .filter(|pc| pc.abstract_syntax == sop_class)
            .map(|pc| pc.transfer_syntax.as_str())
            .collect();
        if accepted.is_empty() {
            Err(NoContext::SopClass {
                destination: self.destination.clone(),
                sop_class: sop_class.to_string(),
            })
        } else {
            Err(NoContext::TransferSyntax {
                destination: self.destination.clone(),
                sop_class: sop_class.to_string(),
                accepted: accepted.join(", "),
                stored: transfer_syntax.to_string(),
            })
        }
    }

    /// Sends one instance: finds its context, opens its file, skips the
    /// meta group, streams the data set and waits for the C-STORE-RSP.
    ///
    /// `Ok` for every outcome that leaves the association usable (including
    /// refusals and unreadable files); `Err` when the association is lost
    /// or had to be aborted, the instance then counts as failed.
    pub fn store_item<I: Outgoing + ?Sized>(&mut self, item: &I) -> Result<Outcome, ScuError> {
        let (class, instance, ts) = (
            item.sop_class_uid(),
            item.sop_instance_uid(),
            item.transfer_syntax_uid(),
        );
        let (pc_id, decode_to) = match self.context_for(class, ts) {
            Ok(pc_id) => (pc_id, None),
            Err(no_context) => match self.decoding_context(class, ts) {
                Some((pc_id, to)) => (pc_id, Some(to)),
                None => {
                    return Ok(Outcome::Failed {
                        reason: no_context.to_string(),
                    })
                }
            },
        };
        let mut file = match item.open() {
            Ok(file) => file,
            Err(error) => {
                return Ok(Outcome::Failed {
                    reason: format!("cannot open the stored instance: {error}"),
                })
            }
        };
        let dataset = match decode_to {
            None => DataSetReader::new(file, item.file_size()).map_err(|error| {
                format!("the stored file is not a readable Part 10 file: {error}")
            }),
            Some(to) => {
                debug!(
                    sop_instance_uid = instance,
                    from = ts,
                    to,
                    "decoding for the peer"
                );
                codec::decoded_data_set(&mut file, item.file_size(), to)
            }
        };
        let mut dataset = match dataset {
            Ok(dataset) => dataset,
            Err(reason) => return Ok(Outcome::Failed { reason }),
        };
        self.store(pc_id, class, instance, &mut dataset)
    }

    /// For an instance stored compressed in `stored` that the peer takes
    /// only uncompressed: the accepted context of `sop_class` in the
    /// syntax to decode into (Explicit VR LE first).
    fn decoding_context(&self, sop_class: &str, stored: &str) -> Option<(u8, &'static str)> {
        let accepted: Vec<&str> = self
            .contexts
            .iter()
            .filter(|pc| pc.abstract_syntax == sop_class)
            .map(|pc| pc.transfer_syntax.as_str())
            .collect();
        let to = codec::fallback_for(stored, &accepted)?;
        let to = [EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN]
            .into_iter()
            .find(|t| *t == to)?;
        self.context_for(sop_class, to).ok().map(|id| (id, to))
    }

    /// Sends one C-STORE-RQ on `pc_id` with the data set of `dataset` and
    /// waits for the response.
    pub fn store(
        &mut self,
        pc_id: u8,
        sop_class: &str,
        sop_instance: &str,
        dataset: &mut DataSetReader<'_>,
    ) -> Result<Outcome, ScuError> {
        let message_id = self.message_id();
        let originator = self
            .options
            .move_originator
            .as_ref()
            .map(|(ae, id)| (ae.as_str(), *id));
        let command = Command::store_rq(
            message_id,
            sop_class,
            sop_instance,
            self.options.priority,
            originator,
        );
        pdu::write_pdata(
            &mut self.socket,
            &mut self.scratch,
            pc_id,
            true,
            &command.encode(),
            self.peer_max_pdu,
        )
        .map_err(|e| self.write_error(e))?;
        let sent = pdu::copy_pdata(
            &mut self.socket,
            &mut self.scratch,
            dataset,
            pc_id,
            self.peer_max_pdu,
        );
        if let Some(reason) = dataset.failure() {
            let reason = reason.to_string();
            // The peer holds a partial data set: only an abort discards it.
            self.abort_now();
            return Err(ScuError::Source { reason });
        }
        sent.map_err(|e| self.write_error(e))?;
        let response = self.read_response(message_id, CommandField::CStoreRsp)?;
        Ok(Outcome::Answered {
            status: response.status.unwrap_or(Status::PROCESSING_FAILURE),
            error_comment: response.error_comment,
        })
    }

    /// Releases the association (A-RELEASE-RQ, waits for the RP).
    pub fn release(mut self) -> Result<(), ScuError> {
        pdu::write_pdu(&mut self.socket, &Pdu::ReleaseRQ).map_err(|e| match e {
            PduError::Io(e) => self.write_error(e),
            other => broken(&self.destination, other),
        })?;
        let deadline = Instant::now() + self.options.response_timeout;
        let result = loop {
            let mut timed =
                DeadlineReader::new(&mut self.socket, deadline, "response deadline passed");
            match self.reader.read(&mut timed) {
                Ok(Incoming::Other(Pdu::ReleaseRP)) => break Ok(()),
                // A late P-DATA or a release collision: keep waiting.
                Ok(Incoming::PData(_)) | Ok(Incoming::Other(Pdu::ReleaseRQ)) => {}
                Ok(Incoming::Other(Pdu::AbortRQ { source })) => {
                    break Err(ScuError::Aborted {
                        destination: self.destination.clone(),
                        source_desc: abort_source(&source),
                    })
                }
                Ok(Incoming::Other(other)) => {
                    break Err(ScuError::Protocol {
                        destination: self.destination.clone(),
                        detail: format!("{other:?} instead of A-RELEASE-RP"),
                    })
                }
                Err(error) => break Err(self.read_error(error, "the release")),
            }
        };
        let _ = self.socket.shutdown(Shutdown::Both);
        result
    }

    /// Aborts the association (A-ABORT, then closes the socket).
    pub fn abort(mut self) {
        self.abort_now();
    }

    fn abort_now(&mut self) {
        let _ = pdu::write_pdu(
            &mut self.socket,
            &Pdu::AbortRQ {
                source: AbortRQSource::ServiceUser,
            },
        );
        let _ = self.socket.shutdown(Shutdown::Both);
    }

    fn message_id(&mut self) -> u16 {
        let id = self.next_message_id;
        self.next_message_id = self.next_message_id.checked_add(1).unwrap_or(1);
        id
    }

    /// Sends a C-ECHO-RQ on the Verification context and returns the
    /// response's status (the association must have been opened with
    /// [`VERIFICATION`] among its pairs).
    pub fn echo(&mut self) -> Result<Status, ScuError> {
        let pc_id = self
            .contexts
            .iter()
            .find(|pc| pc.abstract_syntax == VERIFICATION)
            .map(|pc| pc.id)
            .ok_or_else(|| ScuError::NoAcceptableContext {
                destination: self.destination.clone(),
            })?;
        let message_id = self.message_id();
        pdu::write_pdata(
            &mut self.socket,
            &mut self.scratch,
            pc_id,
            true,
            &Command::echo_rq(message_id).encode(),
            self.peer_max_pdu,
        )
        .map_err(|e| self.write_error(e))?;
        let response = self.read_response(message_id, CommandField::CEchoRsp)?;
        Ok(response.status.unwrap_or(Status::PROCESSING_FAILURE))
    }

    /// Reads PDUs until the response (`expected`) to `message_id` is
    /// complete.
    fn read_response(
        &mut self,
        message_id: u16,
        expected: CommandField,
    ) -> Result<Command, ScuError> {
        let deadline = Instant::now() + self.options.response_timeout;
        let mut command_bytes = FragmentBuffer::new(MAX_COMMAND_LEN);
        // A response with a data set (not expected for C-STORE): its
        // command, held until the data set's last fragment went by.
        let mut answered: Option<Command> = None;
        loop {
            let mut timed =
                DeadlineReader::new(&mut self.socket, deadline, "response deadline passed");
            let incoming = match self.reader.read(&mut timed) {
                Ok(incoming) => incoming,
                Err(error) => return Err(self.read_error(error, "the C-STORE response")),
            };
            let data = match incoming {
                Incoming::PData(data) => data,
                Incoming::Other(Pdu::AbortRQ { source }) => {
                    return Err(ScuError::Aborted {
                        destination: self.destination.clone(),
                        source_desc: abort_source(&source),
                    })
                }
                Incoming::Other(other) => {
                    return Err(ScuError::Protocol {
                        destination: self.destination.clone(),
                        detail: format!("{other:?} while a C-STORE response was awaited"),
                    })
                }
            };
            for pdv in data.pdvs() {
                let pdv = pdv.map_err(|e| broken(&self.destination, e))?;
                if !pdv.is_command {
                    match (&answered, pdv.is_last) {
                        (Some(_), true) => return Ok(answered.take().expect("checked")),
                        (Some(_), false) => continue,
                        (None, _) => {
                            return Err(ScuError::Protocol {
                                destination: self.destination.clone(),
                                detail: "data set fragment without a command".into(),
                            })
                        }
                    }
                }
                command_bytes
                    .push(pdv.data)
                    .map_err(|e| ScuError::Protocol {
                        destination: self.destination.clone(),
                        detail: e.to_string(),
                    })?;
                if !pdv.is_last {
                    continue;
                }
                let command =
                    Command::decode(&command_bytes.take()).map_err(|e| ScuError::Protocol {
                        destination: self.destination.clone(),
                        detail: e.to_string(),
                    })?;
                if command.field != expected
                    || command.message_id_being_responded_to != Some(message_id)
                {
                    return Err(ScuError::Protocol {
                        destination: self.destination.clone(),
                        detail: format!(
                            "{:?} responding to {:?} while the {expected:?} to {message_id} was awaited",
                            command.field, command.message_id_being_responded_to
                        ),
                    });
                }
                if command.has_dataset {
                    answered = Some(command);
                } else {
                    return Ok(command);
                }
            }
        }
    }

    fn write_error(&self, error: io::Error) -> ScuError {
        if matches!(
            error.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        ) {
            ScuError::Timeout {
                destination: self.destination.clone(),
                timeout: self.options.response_timeout,
                waiting_for: "sending",
            }
        } else {
            broken(&self.destination, error)
        }
    }

    fn read_error(&self, error: PduError, waiting_for: &'static str) -> ScuError {
        match error {
            PduError::Io(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                ScuError::Timeout {
                    destination: self.destination.clone(),
                    timeout: self.options.response_timeout,
                    waiting_for,
                }
            }
            PduError::Closed => ScuError::Broken {
                destination: self.destination.clone(),
                reason: format!("the peer closed the connection while we awaited {waiting_for}"),
            },
            other => broken(&self.destination, other),
        }
    }
}

/// Why an association has no presentation context for an instance.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NoContext {
    /// The destination accepted no context for the SOP class.
    #[error("{destination} does not accept SOP class {sop_class}")]
    SopClass {
        /// The destination, as the SCU names it.
        destination: String,
        /// The SOP class.
        sop_class: String,
    },
    /// The destination accepted the SOP class only in other transfer
    /// syntaxes (instances are never transcoded).
    #[error(
        "{destination} accepts SOP class {sop_class} only in {accepted}, the instance is \
         stored in {stored} (not transcoded)"
    )]
    TransferSyntax {
        /// The destination, as the SCU names it.
        destination: String,
        /// The SOP class.
        sop_class: String,
        /// The transfer syntaxes it accepted, comma separated.
        accepted: String,
        /// The transfer syntax the instance is stored in.
        stored: String,
    },
}

fn broken(destination: &str, error: impl std::fmt::Display) -> ScuError {
    ScuError::Broken {
        destination: destination.to_string(),
        reason: error.to_string(),
    }
}

fn abort_source(source: &AbortRQSource) -> String {
    match source {
        AbortRQSource::ServiceUser => "by the service user".to_string(),
        AbortRQSource::ServiceProvider(reason) => format!("by the service provider: {reason:?}"),
        other => format!("{other:?}"),
    }
}

/// [`StoreScu::connect`] over TLS: connect, handshake, A-ASSOCIATE-RQ, and
/// the answer read through the same bounded reader as every later PDU.
fn connect_tls(
    destination: &Destination,
    options: &ScuOptions,
    proposed: &[(String, String)],
    tls: &ClientTls,
) -> Result<StoreScu, ScuError> {
    let name = destination.to_string();
    let address = (destination.host.as_str(), destination.port)
        .to_socket_addrs()
        .and_then(|mut addresses| {
            addresses
                .next()
                .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address"))
        })
        .map_err(|source| ScuError::Resolve {
            destination: name.clone(),
            source,
        })?;
    let socket = TcpStream::connect_timeout(&address, options.connect_timeout).map_err(
        |source| match source.kind() {
            io::ErrorKind::ConnectionRefused => ScuError::ConnectionRefused {
                destination: name.clone(),
            },
            io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => ScuError::Timeout {
                destination: name.clone(),
                timeout: options.connect_timeout,
                waiting_for: "connecting",
            },
            _ => ScuError::Connect {
                destination: name.clone(),
                source,
            },
        },
    )?;
    let server_name = rustls::pki_types::ServerName::try_from(destination.host.clone())
        .map_err(|e| broken(&name, format!("not a TLS server name: {e}")))?;
    let connection = rustls::ClientConnection::new(tls.0.clone(), server_name)
        .map_err(|e| broken(&name, format!("TLS: {e}")))?;
    socket.set_nodelay(true).map_err(|e| broken(&name, e))?;
    socket
        .set_write_timeout(Some(options.response_timeout))
        .map_err(|e| broken(&name, e))?;
    let mut transport = Transport::client_tls(socket, connection).map_err(|e| broken(&name, e))?;
    let request = AssociationRQ {
        protocol_version: 1,
        calling_ae_title: options.calling_ae.clone(),
        called_ae_title: destination.ae_title.clone(),
        application_context_name: "1.2.840.10008.3.1.1.1".to_string(),
        presentation_contexts: proposed
            .iter()
            .enumerate()
            .map(|(i, (class, ts))| PresentationContextProposed {
                id: (2 * i + 1) as u8,
                abstract_syntax: class.clone(),
                transfer_syntaxes: vec![ts.clone()],
            })
            .collect(),
        user_variables: vec![
            UserVariableItem::MaxLength(options.max_pdu_length),
            UserVariableItem::ImplementationClassUID(
                dicom_ul::IMPLEMENTATION_CLASS_UID.to_string(),
            ),
            UserVariableItem::ImplementationVersionName(
                dicom_ul::IMPLEMENTATION_VERSION_NAME.to_string(),
            ),
        ],
    };
    // The handshake happens in this write: a certificate that does not
    // verify fails it.
    pdu::write_pdu(&mut transport, &Pdu::AssociationRQ(request)).map_err(|e| {
        broken(
            &name,
            format!(
                "TLS connection or association request failed: {}",
                error_chain(&e)
            ),
        )
    })?;
    let mut reader = PduReader::new(options.max_pdu_length);
    let answer = {
        let mut timed = DeadlineReader::new(
            &mut transport,
            Instant::now() + options.response_timeout,
            "association answer deadline passed",
        );
        reader.read(&mut timed)
    };
    let accept = match answer {
        Ok(Incoming::Other(Pdu::AssociationAC(accept))) => accept,
        Ok(Incoming::Other(Pdu::AssociationRJ(reject))) => {
            return Err(rejected(&name, &reject));
        }
        Ok(Incoming::Other(Pdu::AbortRQ { .. })) => {
            return Err(ScuError::Aborted {
                destination: name,
                source_desc: "during negotiation".to_string(),
            })
        }
        Ok(_) => {
            return Err(ScuError::Protocol {
                destination: name,
                detail: "expected A-ASSOCIATE-AC or -RJ".to_string(),
            })
        }
        Err(PduError::Io(e))
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            return Err(ScuError::Timeout {
                destination: name,
                timeout: options.response_timeout,
                waiting_for: "the association to be accepted",
            })
        }
        Err(e) => {
            return Err(broken(
                &name,
                format!("association negotiation failed: {}", error_chain(&e)),
            ))
        }
    };
    let contexts: Vec<Accepted> = accept
        .presentation_contexts
        .iter()
        .filter(|pc| pc.reason == PresentationContextResultReason::Acceptance)
        .filter_map(|pc| {
            let (class, _) = proposed.get(usize::from(pc.id / 2))?;
            Some(Accepted {
                id: pc.id,
                abstract_syntax: class.clone(),
                transfer_syntax: pc.transfer_syntax.trim_end_matches('\0').to_string(),
            })
        })
        .collect();
    if contexts.is_empty() {
        let _ = pdu::write_pdu(
            &mut transport,
            &Pdu::AbortRQ {
                source: AbortRQSource::ServiceUser,
            },
        );
        return Err(ScuError::NoAcceptableContext { destination: name });
    }
    let peer_max_pdu = accept
        .user_variables
        .iter()
        .find_map(|v| match v {
            UserVariableItem::MaxLength(0) => Some(dicom_ul::pdu::MAXIMUM_PDU_SIZE),
            UserVariableItem::MaxLength(n) => Some(*n),
            _ => None,
        })
        .unwrap_or(dicom_ul::pdu::DEFAULT_MAX_PDU);
    debug!(
        destination = %name,
        proposed = proposed.len(),
        accepted = contexts.len(),
        peer_max_pdu,
        "storage association established over TLS"
    );
    Ok(StoreScu {
        socket: transport,
        destination: name,
        options: options.clone(),
        contexts,
        peer_max_pdu,
        reader: PduReader::new(options.max_pdu_length),
        scratch: Vec::new(),
        next_message_id: 1,
    })
}

fn rejected(destination: &str, association_rj: &AssociationRJ) -> ScuError {
    let source = match &association_rj.source {
        AssociationRJSource::ServiceUser(reason) => format!("service user: {reason:?}"),
        AssociationRJSource::ServiceProviderASCE(reason) => {
            format!("service provider (ACSE): {reason:?}")
        }
        AssociationRJSource::ServiceProviderPresentation(reason) => {
            format!("service provider (presentation): {reason:?}")
        }
    };
    ScuError::Rejected {
        destination: destination.to_string(),
        reason: format!("{:?}, {source}", association_rj.result),
    }
}

/// Maps dicom-ul's negotiation errors to ours.
fn establish_error(destination: &str, timeout: Duration, error: UlError) -> ScuError {
    let destination = destination.to_string();
    match error {
        UlError::ToAddress { source, .. } => ScuError::Resolve {
            destination,
            source,
        },
        UlError::Connect { source, .. } if source.kind() == io::ErrorKind::ConnectionRefused => {
            ScuError::ConnectionRefused { destination }
        }
        UlError::Connect { source, .. }
            if matches!(
                source.kind(),
                io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
            ) =>
        {
            ScuError::Timeout {
                destination,
                timeout,
                waiting_for: "connecting",
            }
        }
        UlError::Connect { source, .. } => ScuError::Connect {
            destination,
            source,
        },
        UlError::Rejected { association_rj, .. } => rejected(&destination, &association_rj),
        UlError::NoAcceptedPresentationContexts { .. } => {
            ScuError::NoAcceptableContext { destination }
        }
        UlError::Aborted { .. } => ScuError::Aborted {
            destination,
            source_desc: "during negotiation".to_string(),
        },
        other => {
            if timed_out(&other) {
                ScuError::Timeout {
                    destination,
                    timeout,
                    waiting_for: "the association to be accepted",
                }
            } else {
                ScuError::Broken {
                    destination,
                    reason: format!("association negotiation failed: {}", error_chain(&other)),
                }
            }
        }
    }
}

fn timed_out(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = current {
        if let Some(io) = e.downcast_ref::<io::Error>() {
            if matches!(
                io.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) {
                return true;
            }
        }
        current = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    const CT: &str = "1.2.840.10008.5.1.4.1.1.2";
    const MR: &str = "1.2.840.10008.5.1.4.1.1.4";
    const JPEG_LOSSLESS: &str = "1.2.840.10008.1.2.4.70";

    #[test]
    fn proposals_put_each_pair_once_with_fallbacks() {
        let got = proposals([
            (CT, EXPLICIT_VR_LITTLE_ENDIAN),
            (CT, JPEG_LOSSLESS),
            (MR, IMPLICIT_VR_LITTLE_ENDIAN),
            (CT, EXPLICIT_VR_LITTLE_ENDIAN),
        ]);
        let want: Vec<(String, String)> = [
            (CT, EXPLICIT_VR_LITTLE_ENDIAN),
            (CT, JPEG_LOSSLESS),
            (CT, IMPLICIT_VR_LITTLE_ENDIAN),
            (MR, IMPLICIT_VR_LITTLE_ENDIAN),
            (MR, EXPLICIT_VR_LITTLE_ENDIAN),
        ]
        .iter()
        .map(|(a, t)| (a.to_string(), t.to_string()))
        .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn outcomes_tally_by_status_class() {
        let answered = |code| Outcome::Answered {
            status: Status(code),
            error_comment: None,
        };
        assert_eq!(answered(0x0000).tally(), Tally::Completed);
        assert_eq!(answered(0xB007).tally(), Tally::Warning);
        assert_eq!(answered(0xA700).tally(), Tally::Failed);
        assert_eq!(answered(0xC000).tally(), Tally::Failed);
        assert_eq!(
            Outcome::Failed { reason: "x".into() }.tally(),
            Tally::Failed
        );
    }
}
