//! The storage SCU: sends stored instances to a remote AE with C-STORE
//! (C-MOVE sub-operations now, auto-routing later).
//!
//! Two levels:
//!
//! - [`StoreScu`]: one association to a destination. [`StoreScu::connect`]
//!   proposes presentation contexts for a set of (SOP class, transfer
//!   syntax) pairs, [`StoreScu::store_item`] sends one instance and waits for
//!   its C-STORE-RSP, [`StoreScu::release`] ends the association.
//! - [`send`]: the whole job for a list of instances: as few associations as
//!   possible, one outcome per instance reported to a callback that may stop
//!   the job between instances (C-CANCEL), one reconnection after a lost
//!   association.
//!
//! ## Presentation contexts and transfer syntaxes
//!
//! For every SOP class among the instances, one presentation context is
//! proposed per transfer syntax its instances are stored in, plus Explicit
//! VR Little Endian and Implicit VR Little Endian, each context with exactly
//! one transfer syntax so that the peer accepts or refuses each on its own.
//! **An instance is only sent on a context whose accepted transfer syntax is
//! the one it is stored in: nothing is transcoded**, so the data set bytes
//! that arrive are the stored bytes. The fallback contexts make the failure
//! reason precise ("accepts CT only as Implicit VR LE") and are the hook for
//! a later transcoder. At most 128 contexts fit one association; more
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

use std::io::{self, Read};
use std::net::{Shutdown, TcpStream};
use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use dicom_ul::association::Error as UlError;
use dicom_ul::pdu::{AbortRQSource, AssociationRJSource, PresentationContextResultReason};
use dicom_ul::{ClientAssociationOptions, Pdu};
use tracing::{debug, info, warn};

use super::dimse::{Command, CommandField, FragmentBuffer, Priority, Status, StatusClass};
use super::pdu::{self, Incoming, PduError, PduReader};
use crate::model::error_chain;

/// Explicit VR Little Endian.
pub const EXPLICIT_VR_LITTLE_ENDIAN: &str = "1.2.840.10008.1.2.1";
/// Implicit VR Little Endian.
pub const IMPLICIT_VR_LITTLE_ENDIAN: &str = "1.2.840.10008.1.2";

/// Most presentation contexts one association can carry (odd ids 1–255).
const MAX_CONTEXTS: usize = 128;
/// Largest command set we accept in a response.
const MAX_COMMAND_LEN: usize = 64 * 1024;
/// Associations lost in a row (with nothing stored in between) before the
/// rest of a job is given up.
const MAX_CONSECUTIVE_LOSSES: u32 = 2;

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
}

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

/// One association to a storage SCP.
pub struct StoreScu {
    socket: TcpStream,
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
            socket,
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
    pub fn context_for(&self, sop_class: &str, transfer_syntax: &str) -> Result<u8, String> {
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
            Err(format!(
                "{} does not accept SOP class {sop_class}",
                self.destination
            ))
        } else {
            Err(format!(
                "{} accepts SOP class {sop_class} only in {}, the instance is stored in {transfer_syntax} (not transcoded)",
                self.destination,
                accepted.join(", ")
            ))
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
        let pc_id = match self.context_for(class, ts) {
            Ok(pc_id) => pc_id,
            Err(reason) => return Ok(Outcome::Failed { reason }),
        };
        let file = match item.open() {
            Ok(file) => file,
            Err(error) => {
                return Ok(Outcome::Failed {
                    reason: format!("cannot open the stored instance: {error}"),
                })
            }
        };
        let mut dataset = match DataSetReader::new(file, item.file_size()) {
            Ok(dataset) => dataset,
            Err(error) => {
                return Ok(Outcome::Failed {
                    reason: format!("the stored file is not a readable Part 10 file: {error}"),
                })
            }
        };
        self.store(pc_id, class, instance, &mut dataset)
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
        let response = self.read_response(message_id)?;
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
            let mut timed = Deadline {
                socket: &mut self.socket,
                deadline,
            };
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

    /// Reads PDUs until the C-STORE-RSP to `message_id` is complete.
    fn read_response(&mut self, message_id: u16) -> Result<Command, ScuError> {
        let deadline = Instant::now() + self.options.response_timeout;
        let mut command_bytes = FragmentBuffer::new(MAX_COMMAND_LEN);
        // A response with a data set (not expected for C-STORE): its
        // command, held until the data set's last fragment went by.
        let mut answered: Option<Command> = None;
        loop {
            let mut timed = Deadline {
                socket: &mut self.socket,
                deadline,
            };
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
                if command.field != CommandField::CStoreRsp
                    || command.message_id_being_responded_to != Some(message_id)
                {
                    return Err(ScuError::Protocol {
                        destination: self.destination.clone(),
                        detail: format!(
                            "{:?} responding to {:?} while the C-STORE response to {message_id} was awaited",
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

/// What [`send`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SendSummary {
    /// Instances stored with status success.
    pub completed: usize,
    /// Instances stored with a warning status.
    pub warning: usize,
    /// Instances not stored.
    pub failed: usize,
    /// The callback stopped the job; the rest was not attempted.
    pub stopped: bool,
    /// Associations opened.
    pub associations: usize,
}

/// Sends `items` to `destination`, reporting every instance's outcome to
/// `on_result` in turn (items are grouped by association, in order within
/// a group: with at most 128 contexts needed, which is the usual case, one
/// association in the given order). `on_result` returning `Break` stops
/// the job between instances (the association is released).
///
/// `Err` only when the first association cannot be established (nothing
/// was reported then): connection refused, rejected, no acceptable
/// context, timeout. A later failure to connect fails the instances it
/// concerns (each reported); an association lost in the middle fails the
/// instance in flight, and the job reconnects once for the rest.
pub fn send<I: Outgoing>(
    destination: &Destination,
    options: &ScuOptions,
    items: &[I],
    on_result: &mut dyn FnMut(&I, &Outcome) -> ControlFlow<()>,
) -> Result<SendSummary, ScuError> {
    let mut summary = SendSummary::default();
    let mut report = |item: &I, outcome: &Outcome, summary: &mut SendSummary| {
        match outcome.tally() {
            Tally::Completed => summary.completed += 1,
            Tally::Warning => summary.warning += 1,
            Tally::Failed => summary.failed += 1,
        }
        if matches!(on_result(item, outcome), ControlFlow::Break(())) {
            summary.stopped = true;
        }
        summary.stopped
    };
    for group in plan(items)? {
        let pairs: Vec<(&str, &str)> = group
            .iter()
            .map(|&i| (items[i].sop_class_uid(), items[i].transfer_syntax_uid()))
            .collect();
        let mut scu: Option<StoreScu> = None;
        let mut losses = 0u32;
        let mut position = 0;
        while position < group.len() {
            let item = &items[group[position]];
            let current = match scu.as_mut() {
                Some(current) => current,
                None => match StoreScu::connect(destination, options, pairs.iter().copied()) {
                    Ok(opened) => {
                        summary.associations += 1;
                        scu.insert(opened)
                    }
                    Err(error) if summary.associations == 0 && reported(&summary) == 0 => {
                        return Err(error)
                    }
                    Err(error) => {
                        warn!(destination = %destination, %error, "cannot open a storage association");
                        let reason = error.to_string();
                        for &rest in &group[position..] {
                            let outcome = Outcome::Failed {
                                reason: reason.clone(),
                            };
                            if report(&items[rest], &outcome, &mut summary) {
                                return Ok(summary);
                            }
                        }
                        break;
                    }
                },
            };
            let outcome = match current.store_item(item) {
                Ok(outcome) => {
                    losses = 0;
                    outcome
                }
                Err(error) => {
                    if let Some(lost) = scu.take() {
                        lost.abort();
                    }
                    if !error.is_local() {
                        losses += 1;
                    }
                    warn!(destination = %destination, %error, sop_instance_uid = item.sop_instance_uid(), "storage association lost");
                    if losses >= MAX_CONSECUTIVE_LOSSES {
                        let reason = format!("gave up after losing the association twice: {error}");
                        for &rest in &group[position..] {
                            let outcome = Outcome::Failed {
                                reason: reason.clone(),
                            };
                            if report(&items[rest], &outcome, &mut summary) {
                                return Ok(summary);
                            }
                        }
                        break;
                    }
                    Outcome::Failed {
                        reason: error.to_string(),
                    }
                }
            };
            if report(item, &outcome, &mut summary) {
                if let Some(open) = scu.take() {
                    if let Err(error) = open.release() {
                        debug!(destination = %destination, %error, "release after a stop failed");
                    }
                }
                return Ok(summary);
            }
            position += 1;
        }
        if let Some(open) = scu.take() {
            if let Err(error) = open.release() {
                // Every instance was answered already: only worth a log line.
                info!(destination = %destination, %error, "storage association release failed");
            }
        }
    }
    Ok(summary)
}

fn reported(summary: &SendSummary) -> usize {
    summary.completed + summary.warning + summary.failed
}

/// Splits the items into association groups whose contexts fit in 128,
/// by SOP class, keeping the order within each group.
fn plan<I: Outgoing>(items: &[I]) -> Result<Vec<Vec<usize>>, ScuError> {
    // contexts each class needs
    let mut classes: Vec<(&str, Vec<&str>)> = Vec::new();
    for item in items {
        let (class, ts) = (item.sop_class_uid(), item.transfer_syntax_uid());
        match classes.iter_mut().find(|(c, _)| *c == class) {
            Some((_, syntaxes)) => {
                if !syntaxes.contains(&ts) {
                    syntaxes.push(ts);
                }
            }
            None => classes.push((class, vec![ts])),
        }
    }
    let mut group_of_class: Vec<(&str, usize)> = Vec::new();
    let (mut groups, mut used) = (0usize, 0usize);
    for (class, syntaxes) in &classes {
        let needed = proposals(syntaxes.iter().map(|ts| (*class, *ts))).len();
        if needed > MAX_CONTEXTS {
            return Err(ScuError::TooManyContexts(needed));
        }
        if groups == 0 || used + needed > MAX_CONTEXTS {
            groups += 1;
            used = 0;
        }
        used += needed;
        group_of_class.push((class, groups - 1));
    }
    let mut out = vec![Vec::new(); groups];
    for (index, item) in items.iter().enumerate() {
        let group = group_of_class
            .iter()
            .find(|(c, _)| *c == item.sop_class_uid())
            .map(|(_, g)| *g)
            .expect("every class was planned");
        out[group].push(index);
    }
    Ok(out)
}

/// Reads past the 128-byte preamble, `DICM` and the file meta group of a
/// Part 10 stream, leaving it at the data set's first byte; returns the data
/// set's offset. The group's length is the value of (0002,0000), which must
/// be the first element (PS3.10 7.1).
pub fn skip_file_meta(reader: &mut dyn Read) -> io::Result<u64> {
    let mut head = [0u8; 144];
    reader.read_exact(&mut head).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            io::Error::new(io::ErrorKind::InvalidData, "shorter than a Part 10 header")
        } else {
            e
        }
    })?;
    if &head[128..132] != b"DICM" {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "no DICM prefix after the preamble",
        ));
    }
    if head[132..140] != [0x02, 0x00, 0x00, 0x00, b'U', b'L', 0x04, 0x00] {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the meta group does not start with (0002,0000) UL",
        ));
    }
    let group_length = u32::from_le_bytes([head[140], head[141], head[142], head[143]]);
    let skipped = io::copy(&mut reader.take(u64::from(group_length)), &mut io::sink())?;
    if skipped < u64::from(group_length) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the file ends inside its meta group",
        ));
    }
    Ok(144 + u64::from(group_length))
}

/// The data set of a stored Part 10 file, as a stream: the preamble and
/// meta group are skipped on creation; reading remembers its own failures
/// (to tell them from socket failures) and, when the file size is known,
/// refuses a file that ends early or runs long, so that a damaged file
/// aborts its transfer instead of delivering a damaged instance.
pub struct DataSetReader<'a> {
    inner: Box<dyn Read + Send + 'a>,
    remaining: Option<u64>,
    failure: Option<String>,
}

impl std::fmt::Debug for DataSetReader<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataSetReader")
            .field("remaining", &self.remaining)
            .field("failure", &self.failure)
            .finish()
    }
}

impl<'a> DataSetReader<'a> {
    /// Skips the preamble and meta group of `file` (see
    /// [`skip_file_meta`]); `file_size`, when known, is the whole file's
    /// size.
    pub fn new(
        mut file: Box<dyn Read + Send + 'a>,
        file_size: Option<u64>,
    ) -> io::Result<DataSetReader<'a>> {
        let offset = skip_file_meta(&mut file)?;
        let remaining = match file_size {
            Some(size) if size < offset => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("the indexed size {size} is below the meta group's end {offset}"),
                ))
            }
            Some(size) => Some(size - offset),
            None => None,
        };
        Ok(DataSetReader {
            inner: file,
            remaining,
            failure: None,
        })
    }

    /// Why reading failed, if it did.
    pub fn failure(&self) -> Option<&str> {
        self.failure.as_deref()
    }
}

impl Read for DataSetReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = match self.inner.read(buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Err(e),
            Err(e) => {
                self.failure = Some(e.to_string());
                return Err(e);
            }
        };
        if let Some(remaining) = self.remaining.as_mut() {
            let fail = if n == 0 && *remaining > 0 {
                Some(format!(
                    "the stored file ends {remaining} bytes before its indexed size"
                ))
            } else if n as u64 > *remaining {
                Some("the stored file is longer than its indexed size".to_string())
            } else {
                None
            };
            if let Some(reason) = fail {
                self.failure = Some(reason.clone());
                return Err(io::Error::new(io::ErrorKind::InvalidData, reason));
            }
            *remaining -= n as u64;
        }
        Ok(n)
    }
}

/// A reader that gives the PDU being read a deadline.
struct Deadline<'a> {
    socket: &'a mut TcpStream,
    deadline: Instant,
}

impl Read for Deadline<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let remaining = self
            .deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| io::Error::new(io::ErrorKind::TimedOut, "response deadline passed"))?;
        self.socket.set_read_timeout(Some(remaining))?;
        self.socket.read(buf)
    }
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
        UlError::Rejected { association_rj, .. } => {
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
                destination,
                reason: format!("{:?}, {source}", association_rj.result),
            }
        }
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
    use std::io::Cursor;

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

    struct Item {
        class: String,
        ts: String,
    }

    impl Outgoing for Item {
        fn sop_class_uid(&self) -> &str {
            &self.class
        }
        fn sop_instance_uid(&self) -> &str {
            "1.2.3"
        }
        fn transfer_syntax_uid(&self) -> &str {
            &self.ts
        }
        fn open(
            &self,
        ) -> Result<Box<dyn Read + Send + '_>, Box<dyn std::error::Error + Send + Sync>> {
            Err("not here".into())
        }
    }

    #[test]
    fn many_classes_spread_over_associations() {
        let item = |c: usize| Item {
            class: format!("1.2.3.{c}"),
            ts: EXPLICIT_VR_LITTLE_ENDIAN.to_string(),
        };
        // 2 contexts per class: 64 classes fit one association, 65 do not.
        let items: Vec<Item> = (0..65).map(item).chain([item(0)]).collect();
        let groups = plan(&items).unwrap();
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[0].len(), 65, "class 0 twice + 63 others");
        assert_eq!(groups[1], vec![64]);
        assert_eq!(*groups[0].last().unwrap(), 65, "order kept within a group");
        assert_eq!(plan(&items[..64]).unwrap().len(), 1);
        assert!(plan::<Item>(&[]).unwrap().is_empty());
    }

    fn part10(meta_len: u32, dataset: &[u8]) -> Vec<u8> {
        let mut bytes = vec![0u8; 128];
        bytes.extend_from_slice(b"DICM");
        bytes.extend_from_slice(&[0x02, 0x00, 0x00, 0x00, b'U', b'L', 0x04, 0x00]);
        bytes.extend_from_slice(&meta_len.to_le_bytes());
        bytes.extend(std::iter::repeat_n(0xAA, meta_len as usize));
        bytes.extend_from_slice(dataset);
        bytes
    }

    #[test]
    fn file_meta_is_skipped_by_its_group_length() {
        let bytes = part10(30, b"dataset");
        let mut cursor = Cursor::new(bytes);
        assert_eq!(skip_file_meta(&mut cursor).unwrap(), 174);
        let mut rest = Vec::new();
        cursor.read_to_end(&mut rest).unwrap();
        assert_eq!(rest, b"dataset");

        let mut bad = part10(30, b"x");
        bad[128] = b'X';
        assert!(skip_file_meta(&mut Cursor::new(bad)).is_err());
        let truncated = part10(30, b"")[..150].to_vec();
        assert!(skip_file_meta(&mut Cursor::new(truncated)).is_err());
        assert!(skip_file_meta(&mut Cursor::new(vec![0u8; 20])).is_err());
    }

    #[test]
    fn data_set_reader_checks_the_length() {
        let read_all = |dataset: &[u8], file_size: Option<u64>| {
            let file = Box::new(Cursor::new(part10(30, dataset)));
            let mut reader = DataSetReader::new(file, file_size).unwrap();
            let mut out = Vec::new();
            let result = reader.read_to_end(&mut out);
            (result.is_ok(), reader.failure().map(str::to_string), out)
        };
        assert_eq!(read_all(b"abcd", Some(178)), (true, None, b"abcd".to_vec()));
        assert_eq!(read_all(b"abcd", None), (true, None, b"abcd".to_vec()));
        let (ok, failure, _) = read_all(b"abc", Some(178));
        assert!(!ok && failure.unwrap().contains("ends 1 bytes before"));
        let (ok, failure, _) = read_all(b"abcde", Some(178));
        assert!(!ok && failure.unwrap().contains("longer"));
        let file = Box::new(Cursor::new(part10(30, b"x")));
        assert!(DataSetReader::new(file, Some(100)).is_err());
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

    /// An instance held in memory.
    struct Mem {
        uid: String,
        bytes: Vec<u8>,
    }

    impl Outgoing for Mem {
        fn sop_class_uid(&self) -> &str {
            CT
        }
        fn sop_instance_uid(&self) -> &str {
            &self.uid
        }
        fn transfer_syntax_uid(&self) -> &str {
            EXPLICIT_VR_LITTLE_ENDIAN
        }
        fn file_size(&self) -> Option<u64> {
            Some(self.bytes.len() as u64)
        }
        fn open(
            &self,
        ) -> Result<Box<dyn Read + Send + '_>, Box<dyn std::error::Error + Send + Sync>> {
            Ok(Box::new(Cursor::new(&self.bytes[..])))
        }
    }

    /// (SOP Instance UID, data set) of each instance a fake SCP stored.
    type Received = Vec<(String, Vec<u8>)>;

    /// What the fake storage SCP does with each C-STORE-RQ, in turn.
    #[derive(Debug, Clone, Copy)]
    enum Act {
        Answer(u16),
        Abort,
        Silent,
    }

    /// A storage SCP on loopback that plays `acts` (over as many
    /// associations as it takes) and returns the (instance, data set) pairs
    /// it received completely, once the client released after the last act.
    fn fake_scp(acts: Vec<Act>) -> (std::net::SocketAddr, std::thread::JoinHandle<Received>) {
        use dicom_ul::association::Association;
        use dicom_ul::ServerAssociationOptions;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let handle = std::thread::spawn(move || {
            let mut acts = acts.into_iter();
            let mut received = Vec::new();
            let mut finished = false;
            while !finished {
                let (socket, _) = listener.accept().unwrap();
                let mut association = ServerAssociationOptions::new()
                    .accept_any()
                    .ae_title("FAKE")
                    .with_abstract_syntax(CT)
                    .establish(socket)
                    .unwrap();
                let peer_max = association.peer_max_pdu_length();
                let mut socket = association.inner_stream().try_clone().unwrap();
                drop(association);
                let mut reader = PduReader::new(0);
                let (mut command, mut data) = (Vec::new(), Vec::new());
                let mut request: Option<Command> = None;
                'pdus: loop {
                    let pdv_list: Vec<(u8, bool, bool, Vec<u8>)> = match reader.read(&mut socket) {
                        Ok(Incoming::PData(p)) => p
                            .pdvs()
                            .map(|v| v.unwrap())
                            .map(|v| (v.pc_id, v.is_command, v.is_last, v.data.to_vec()))
                            .collect(),
                        Ok(Incoming::Other(Pdu::ReleaseRQ)) => {
                            pdu::write_pdu(&mut socket, &Pdu::ReleaseRP).unwrap();
                            finished = acts.len() == 0;
                            break 'pdus;
                        }
                        Ok(_) | Err(_) => break 'pdus,
                    };
                    for (pc_id, is_command, is_last, bytes) in pdv_list {
                        if is_command {
                            command.extend_from_slice(&bytes);
                            if is_last {
                                request = Some(Command::decode(&command).unwrap());
                                command.clear();
                            }
                            continue;
                        }
                        data.extend_from_slice(&bytes);
                        if !is_last {
                            continue;
                        }
                        let rq = request.take().unwrap();
                        match acts.next().expect("an act for every store") {
                            Act::Answer(code) => {
                                received.push((
                                    rq.affected_sop_instance_uid.clone().unwrap(),
                                    std::mem::take(&mut data),
                                ));
                                let rsp = Command::store_rsp(&rq, Status(code));
                                let mut scratch = Vec::new();
                                pdu::write_pdata(
                                    &mut socket,
                                    &mut scratch,
                                    pc_id,
                                    true,
                                    &rsp.encode(),
                                    peer_max,
                                )
                                .unwrap();
                            }
                            Act::Abort => {
                                data.clear();
                                let abort = Pdu::AbortRQ {
                                    source: AbortRQSource::ServiceUser,
                                };
                                let _ = pdu::write_pdu(&mut socket, &abort);
                                let _ = socket.shutdown(Shutdown::Both);
                                break 'pdus;
                            }
                            Act::Silent => {
                                // Never answer: wait for the client to give up.
                                let mut sink = Vec::new();
                                let _ = socket.read_to_end(&mut sink);
                                finished = acts.len() == 0;
                                break 'pdus;
                            }
                        }
                    }
                }
            }
            received
        });
        (addr, handle)
    }

    fn instances(n: usize) -> Vec<Mem> {
        (0..n)
            .map(|i| Mem {
                uid: format!("1.2.3.{i}"),
                bytes: part10(20, &vec![i as u8; 100_000 + i]),
            })
            .collect()
    }

    fn destination(addr: std::net::SocketAddr) -> Destination {
        Destination {
            ae_title: "FAKE".into(),
            host: addr.ip().to_string(),
            port: addr.port(),
        }
    }

    #[test]
    fn send_reports_each_outcome_and_reconnects_after_an_abort() {
        let items = instances(4);
        let (addr, scp) = fake_scp(vec![
            Act::Answer(0x0000),
            Act::Abort,
            Act::Answer(0xB000),
            Act::Answer(0xA700),
        ]);
        let mut options = ScuOptions::new("TESTSCU");
        options.max_pdu_length = 16384;
        let mut seen = Vec::new();
        let summary = send(
            &destination(addr),
            &options,
            &items,
            &mut |item, outcome| {
                seen.push((item.uid.clone(), outcome.tally()));
                ControlFlow::Continue(())
            },
        )
        .unwrap();
        assert_eq!(
            seen,
            vec![
                ("1.2.3.0".to_string(), Tally::Completed),
                ("1.2.3.1".to_string(), Tally::Failed),
                ("1.2.3.2".to_string(), Tally::Warning),
                ("1.2.3.3".to_string(), Tally::Failed),
            ]
        );
        assert_eq!(
            (summary.completed, summary.warning, summary.failed),
            (1, 1, 2)
        );
        assert_eq!(summary.associations, 2, "one reconnection after the abort");
        let received = scp.join().unwrap();
        assert_eq!(received.len(), 3);
        for (uid, data) in received {
            let item = items.iter().find(|i| i.uid == uid).unwrap();
            assert_eq!(data, item.bytes[164..], "data set of {uid}");
        }
    }

    #[test]
    fn a_silent_peer_times_out_and_a_stop_ends_the_job() {
        let items = instances(3);
        let (addr, scp) = fake_scp(vec![Act::Answer(0x0000), Act::Silent]);
        let mut options = ScuOptions::new("TESTSCU");
        options.response_timeout = Duration::from_millis(300);
        let mut seen = Vec::new();
        let summary = send(&destination(addr), &options, &items, &mut |_, outcome| {
            seen.push(outcome.clone());
            if seen.len() == 2 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .unwrap();
        assert!(summary.stopped);
        assert_eq!(seen.len(), 2, "nothing after the stop");
        match &seen[1] {
            Outcome::Failed { reason } => assert!(reason.contains("did not answer"), "{reason}"),
            other => panic!("expected a timeout, got {other:?}"),
        }
        assert_eq!(scp.join().unwrap().len(), 1);
    }

    #[test]
    fn nothing_listening_is_connection_refused() {
        let addr = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap()
        };
        let items = instances(1);
        let error = send(
            &destination(addr),
            &ScuOptions::new("TESTSCU"),
            &items,
            &mut |_, _| ControlFlow::Continue(()),
        )
        .unwrap_err();
        assert!(
            matches!(error, ScuError::ConnectionRefused { .. }),
            "{error:?}"
        );
    }
}
