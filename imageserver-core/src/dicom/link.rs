//! [`Link`]: what a service handler may do with its association while it
//! runs — send commands and data sets, notice a C-CANCEL, and (C-GET) read
//! the responses to its own sub-operations.
//!
//! The association loop owns the socket's main PDU reader and is suspended
//! while a handler runs; the link reads with a reader of its own, so a
//! handler never touches the loop's buffer.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use crate::dicom::deadline::DeadlineReader;
use crate::dicom::dimse::{Command, CommandField, FragmentBuffer};
use crate::dicom::pdu::{self, Incoming, PduError, PduReader};
use crate::dicom::transport::{Readiness, Transport};
use dicom_ul::Pdu;

/// Largest data set a handler reads back through [`Link::receive_message`]
/// (responses and identifiers, not instances).
const MAX_SIDE_MESSAGE: usize = 1024 * 1024;

/// Why a handler cannot go on with its association.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LinkError {
    /// Writing or reading the socket failed, or a PDU was malformed.
    #[error("association broken: {0}")]
    Broken(String),
    /// The peer sent something not allowed at this point.
    #[error("unexpected from the peer: {0}")]
    Unexpected(String),
    /// The peer released or aborted the association.
    #[error("the peer ended the association")]
    Ended,
}

impl From<io::Error> for LinkError {
    fn from(error: io::Error) -> LinkError {
        LinkError::Broken(error.to_string())
    }
}

impl From<PduError> for LinkError {
    fn from(error: PduError) -> LinkError {
        LinkError::Broken(crate::model::error_chain(&error))
    }
}

/// A complete message read by [`Link::receive_message`].
#[derive(Debug, Clone)]
pub struct Message {
    /// Its presentation context.
    pub pc_id: u8,
    /// The command.
    pub command: Command,
    /// The data set bytes, when the command has one.
    pub dataset: Option<Vec<u8>>,
}

/// One association as a handler sees it.
pub struct Link {
    socket: Transport,
    scratch: Vec<u8>,
    peer_max_pdu: u32,
    side_reader: PduReader,
    idle_timeout: Duration,
    calling_ae: String,
    /// Accepted presentation contexts: id → (abstract syntax, transfer syntax).
    contexts: HashMap<u8, (String, String)>,
    /// SOP classes for which the peer accepted the SCP role (C-GET).
    scp_roles: Vec<String>,
    /// C-FIND SOP classes for which combined date-time matching was
    /// negotiated (extended negotiation).
    combined_date_time: Vec<String>,
    /// PDVs read but not yet consumed (several messages in one PDU).
    pending: VecDeque<OwnedPdv>,
    /// Messages queued by [`Link::queue_command_with_dataset`], not yet
    /// written.
    queued: Vec<u8>,
}

/// How many queued bytes [`Link::queue_command_with_dataset`]'s callers let
/// gather before they flush: large enough that a long C-FIND costs few
/// system calls and wake-ups, small enough that the first matches reach the
/// peer at once.
pub const QUEUE_FLUSH_BYTES: usize = 32 * 1024;

/// A PDV copied out of the reader's buffer.
#[derive(Debug)]
struct OwnedPdv {
    pc_id: u8,
    is_command: bool,
    is_last: bool,
    data: Vec<u8>,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("calling_ae", &self.calling_ae)
            .field("contexts", &self.contexts.len())
            .finish()
    }
}

impl Link {
    /// A link over (a clone of) the association's socket.
    pub fn new(
        socket: Transport,
        calling_ae: &str,
        contexts: HashMap<u8, (String, String)>,
        scp_roles: Vec<String>,
        peer_max_pdu: u32,
        our_max_pdu: u32,
        idle_timeout: Duration,
    ) -> Link {
        Link {
            socket,
            scratch: Vec::new(),
            peer_max_pdu,
            side_reader: PduReader::new(our_max_pdu),
            idle_timeout,
            calling_ae: calling_ae.to_string(),
            contexts,
            scp_roles,
            combined_date_time: Vec::new(),
            pending: VecDeque::new(),
            queued: Vec::new(),
        }
    }

    /// The caller's AE title.
    pub fn calling_ae(&self) -> &str {
        &self.calling_ae
    }

    /// The subject of the caller's TLS client certificate, when it
    /// presented one.
    pub fn tls_subject(&self) -> Option<String> {
        self.socket.peer_subject()
    }

    /// The caller's address (host part), to reach it for C-MOVE to itself.
    pub fn peer_ip(&self) -> Option<std::net::IpAddr> {
        self.socket.peer_addr().ok().map(|a| a.ip())
    }

    /// The abstract and transfer syntax of an accepted presentation context.
    pub fn context(&self, pc_id: u8) -> Option<(&str, &str)> {
        self.contexts
            .get(&pc_id)
            .map(|(a, t)| (a.as_str(), t.as_str()))
    }

    /// Accepted presentation contexts for `sop_class` (id, transfer syntax),
    /// in id order — for C-GET sub-operations.
    pub fn contexts_for(&self, sop_class: &str) -> Vec<(u8, &str)> {
        let mut found: Vec<(u8, &str)> = self
            .contexts
            .iter()
            .filter(|(_, (a, _))| a == sop_class)
            .map(|(id, (_, t))| (*id, t.as_str()))
            .collect();
        found.sort_by_key(|(id, _)| *id);
        found
    }

    /// The link with combined date-time matching (PS3.4 C.2.2.2.5)
    /// negotiated for these C-FIND SOP classes.
    pub fn with_combined_date_time(mut self, sop_classes: Vec<String>) -> Link {
        self.combined_date_time = sop_classes;
        self
    }

    /// Whether combined date-time matching was negotiated for `sop_class`.
    pub fn combined_date_time(&self, sop_class: &str) -> bool {
        self.combined_date_time.iter().any(|c| c == sop_class)
    }

    /// Whether the peer took the SCP role for `sop_class` (role selection).
    pub fn peer_is_scp_for(&self, sop_class: &str) -> bool {
        self.scp_roles.iter().any(|c| c == sop_class)
    }

    /// Sends a command set.
    pub fn send_command(&mut self, pc_id: u8, command: &Command) -> Result<(), LinkError> {
        let bytes = command.encode();
        pdu::write_pdata(
            &mut self.socket,
            &mut self.scratch,
            pc_id,
            true,
            &bytes,
            self.peer_max_pdu,
        )?;
        Ok(())
    }

    /// Appends an encoded command set and its data set to the queue of
    /// messages not yet written; [`flush_queued`](Link::flush_queued) writes
    /// them with one system call. A C-FIND answering hundreds of matches
    /// then wakes its peer once per [`QUEUE_FLUSH_BYTES`], not once per
    /// match. Returns the bytes now queued.
    pub fn queue_command_with_dataset(
        &mut self,
        pc_id: u8,
        command: &[u8],
        data: &[u8],
    ) -> Result<usize, LinkError> {
        pdu::write_pdata(
            &mut self.queued,
            &mut self.scratch,
            pc_id,
            true,
            command,
            self.peer_max_pdu,
        )?;
        pdu::write_pdata(
            &mut self.queued,
            &mut self.scratch,
            pc_id,
            false,
            data,
            self.peer_max_pdu,
        )?;
        Ok(self.queued.len())
    }

    /// Writes the queued messages, if any.
    pub fn flush_queued(&mut self) -> Result<(), LinkError> {
        if self.queued.is_empty() {
            return Ok(());
        }
        let written = self.socket.write_all(&self.queued);
        self.queued.clear();
        written?;
        Ok(())
    }

    /// Drops the queued messages unsent (the operation was cancelled).
    pub fn discard_queued(&mut self) {
        self.queued.clear();
    }

    /// Sends a data set held in memory.
    pub fn send_dataset(&mut self, pc_id: u8, data: &[u8]) -> Result<(), LinkError> {
        pdu::write_pdata(
            &mut self.socket,
            &mut self.scratch,
            pc_id,
            false,
            data,
            self.peer_max_pdu,
        )?;
        Ok(())
    }

    /// Streams a data set from a reader (memory bounded by one PDU).
    pub fn send_dataset_from(
        &mut self,
        pc_id: u8,
        source: &mut dyn Read,
    ) -> Result<u64, LinkError> {
        let mut source = source;
        Ok(pdu::copy_pdata(
            &mut self.socket,
            &mut self.scratch,
            &mut source,
            pc_id,
            self.peer_max_pdu,
        )?)
    }

    /// Without waiting: whether a C-CANCEL-RQ for `message_id` arrived.
    /// Anything else arriving now is a protocol error (we do not negotiate
    /// asynchronous operations).
    pub fn poll_cancel(&mut self, message_id: u16) -> Result<bool, LinkError> {
        if !self.pending.is_empty() {
            return self.cancel_arrived(message_id);
        }
        match self.socket.probe()? {
            Readiness::Closed => return Err(LinkError::Ended),
            Readiness::Nothing => return Ok(false),
            Readiness::Data => {}
        }
        self.cancel_arrived(message_id)
    }

    fn cancel_arrived(&mut self, message_id: u16) -> Result<bool, LinkError> {
        let message = self.receive_message()?;
        match message.command.field {
            CommandField::CCancelRq
                if message.command.message_id_being_responded_to == Some(message_id) =>
            {
                Ok(true)
            }
            CommandField::CCancelRq => Ok(false),
            other => Err(LinkError::Unexpected(format!(
                "{other:?} while an operation is in progress"
            ))),
        }
    }

    /// Reads the next complete message (command and data set), waiting at
    /// most the idle timeout for each PDU.
    pub fn receive_message(&mut self) -> Result<Message, LinkError> {
        let mut command_bytes = FragmentBuffer::new(64 * 1024);
        let mut dataset = FragmentBuffer::new(MAX_SIDE_MESSAGE);
        let mut command: Option<(u8, Command)> = None;
        loop {
            let pdv = self.next_pdv()?;
            if pdv.is_command {
                if command.is_some() {
                    return Err(LinkError::Unexpected(
                        "command fragment inside a data set".into(),
                    ));
                }
                command_bytes
                    .push(&pdv.data)
                    .map_err(|e| LinkError::Unexpected(e.to_string()))?;
                if pdv.is_last {
                    let parsed = Command::decode(&command_bytes.take())
                        .map_err(|e| LinkError::Unexpected(e.to_string()))?;
                    if !parsed.has_dataset {
                        return Ok(Message {
                            pc_id: pdv.pc_id,
                            command: parsed,
                            dataset: None,
                        });
                    }
                    command = Some((pdv.pc_id, parsed));
                }
            } else {
                let Some((pc_id, _)) = &command else {
                    return Err(LinkError::Unexpected(
                        "data set fragment without a command".into(),
                    ));
                };
                if *pc_id != pdv.pc_id {
                    return Err(LinkError::Unexpected(
                        "data set on another presentation context than its command".into(),
                    ));
                }
                dataset
                    .push(&pdv.data)
                    .map_err(|e| LinkError::Unexpected(e.to_string()))?;
                if pdv.is_last {
                    let (pc_id, command) = command.take().ok_or_else(|| {
                        LinkError::Unexpected("data set without a command".into())
                    })?;
                    return Ok(Message {
                        pc_id,
                        command,
                        dataset: Some(dataset.take()),
                    });
                }
            }
        }
    }

    /// The next PDV: left over from the last PDU, or from a new one (waiting
    /// at most the idle timeout for it).
    fn next_pdv(&mut self) -> Result<OwnedPdv, LinkError> {
        while self.pending.is_empty() {
            let mut reader = DeadlineReader::new(
                &mut self.socket,
                Instant::now() + self.idle_timeout,
                "PDU deadline passed",
            );
            match self.side_reader.read(&mut reader)? {
                Incoming::PData(data) => {
                    for pdv in data.pdvs() {
                        let pdv = pdv?;
                        self.pending.push_back(OwnedPdv {
                            pc_id: pdv.pc_id,
                            is_command: pdv.is_command,
                            is_last: pdv.is_last,
                            data: pdv.data.to_vec(),
                        });
                    }
                }
                Incoming::Other(Pdu::ReleaseRQ) | Incoming::Other(Pdu::AbortRQ { .. }) => {
                    return Err(LinkError::Ended)
                }
                Incoming::Other(other) => {
                    return Err(LinkError::Unexpected(format!("unexpected PDU {other:?}")))
                }
            }
        }
        self.pending
            .pop_front()
            .ok_or_else(|| LinkError::Broken("no PDV".into()))
    }
}
