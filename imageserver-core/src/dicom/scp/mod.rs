//! The DIMSE service handlers and the per-association message state machine.
//!
//! [`Session`] receives PDVs from [`crate::dicom::assoc`], assembles command
//! sets, and routes each message to its handler: [`echo`] answers C-ECHO,
//! [`store`] streams a C-STORE data set into [`crate::services::Ingest`].
//! Any other command is answered with "unrecognized operation" (0211) after
//! its data set, if any, has been drained. Handlers see services and statuses,
//! never SQL or paths.

pub mod echo;
pub mod store;

use std::collections::HashMap;
use std::net::TcpStream;

use tracing::warn;

use super::dimse::{Command, CommandField, FragmentBuffer, Status};
use super::pdu::{self, Pdv};
use crate::services::{Ingest, Partition};

/// Largest command set we assemble (real ones are a few hundred bytes).
const MAX_COMMAND_LEN: usize = 64 * 1024;

/// The services a partition's associations use. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Dispatcher {
    /// Ingest service for C-STORE.
    pub ingest: Ingest,
    /// The partition the associations belong to.
    pub partition: Partition,
}

/// What the association loop should do after a PDV.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MessageOutcome {
    /// The message goes on.
    Continue,
    /// A message was completed and answered.
    Done,
    /// A protocol violation: abort the association.
    Abort(String),
}

/// Where the data set of the current message goes.
enum DataSink {
    /// Into the ingest service (C-STORE).
    Store(Box<store::StoreInProgress>),
    /// Nowhere: the command is answered with a failure once it ends.
    Discard(Status),
}

enum State {
    /// Between messages, or collecting command fragments.
    Command,
    /// Receiving the data set of `command` on `pc_id`.
    Data {
        command: Box<Command>,
        pc_id: u8,
        sink: DataSink,
    },
}

/// One association's message state.
pub struct Session<'a> {
    dispatcher: &'a Dispatcher,
    calling_ae: String,
    /// Accepted presentation contexts: id → (abstract syntax, transfer syntax).
    contexts: HashMap<u8, (String, String)>,
    peer_max_pdu: u32,
    command: FragmentBuffer,
    state: State,
    scratch: Vec<u8>,
}

impl Dispatcher {
    /// Message state for a new association.
    pub fn session(
        &self,
        calling_ae: &str,
        contexts: HashMap<u8, (String, String)>,
        peer_max_pdu: u32,
    ) -> Session<'_> {
        Session {
            dispatcher: self,
            calling_ae: calling_ae.to_string(),
            contexts,
            peer_max_pdu,
            command: FragmentBuffer::new(MAX_COMMAND_LEN),
            state: State::Command,
            scratch: Vec::new(),
        }
    }
}

impl Session<'_> {
    /// Whether a message is partly received.
    pub fn in_message(&self) -> bool {
        !self.command.is_empty() || matches!(self.state, State::Data { .. })
    }

    /// Handles one PDV; responses are written to `socket`.
    pub fn on_pdv(&mut self, pdv: Pdv<'_>, socket: &mut TcpStream) -> MessageOutcome {
        if !self.contexts.contains_key(&pdv.pc_id) {
            return MessageOutcome::Abort(format!(
                "PDV on presentation context {} that was not accepted",
                pdv.pc_id
            ));
        }
        if pdv.is_command {
            self.on_command_fragment(pdv, socket)
        } else {
            self.on_data_fragment(pdv, socket)
        }
    }

    fn on_command_fragment(&mut self, pdv: Pdv<'_>, socket: &mut TcpStream) -> MessageOutcome {
        if matches!(self.state, State::Data { .. }) {
            return MessageOutcome::Abort("command fragment while a data set was expected".into());
        }
        if let Err(error) = self.command.push(pdv.data) {
            return MessageOutcome::Abort(error.to_string());
        }
        if !pdv.is_last {
            return MessageOutcome::Continue;
        }
        let bytes = self.command.take();
        let command = match Command::decode(&bytes) {
            Ok(command) => command,
            Err(error) => return MessageOutcome::Abort(error.to_string()),
        };
        let (abstract_syntax, transfer_syntax) = self.contexts[&pdv.pc_id].clone();
        match command.field {
            CommandField::CEchoRq => {
                let response = echo::handle(&command);
                self.respond(socket, pdv.pc_id, &response)
            }
            CommandField::CStoreRq if command.has_dataset => {
                let sink = DataSink::Store(Box::new(store::begin(
                    self.dispatcher,
                    &self.calling_ae,
                    &command,
                    &abstract_syntax,
                    &transfer_syntax,
                )));
                self.state = State::Data {
                    command: Box::new(command),
                    pc_id: pdv.pc_id,
                    sink,
                };
                MessageOutcome::Continue
            }
            CommandField::CCancelRq => MessageOutcome::Done,
            field if command.has_dataset => {
                warn!(?field, "unsupported command: draining its data set");
                self.state = State::Data {
                    command: Box::new(command),
                    pc_id: pdv.pc_id,
                    sink: DataSink::Discard(Status::UNRECOGNIZED_OPERATION),
                };
                MessageOutcome::Continue
            }
            field => {
                warn!(?field, "unsupported command");
                let status = if field == CommandField::CStoreRq {
                    Status::CANNOT_UNDERSTAND
                } else {
                    Status::UNRECOGNIZED_OPERATION
                };
                let response = Command::response_for(&command, status);
                self.respond(socket, pdv.pc_id, &response)
            }
        }
    }

    fn on_data_fragment(&mut self, pdv: Pdv<'_>, socket: &mut TcpStream) -> MessageOutcome {
        let State::Data { pc_id, sink, .. } = &mut self.state else {
            return MessageOutcome::Abort("data set fragment without a command".into());
        };
        if *pc_id != pdv.pc_id {
            return MessageOutcome::Abort(
                "data set fragment on another presentation context than its command".into(),
            );
        }
        if let DataSink::Store(in_progress) = sink {
            in_progress.write(pdv.data);
        }
        if !pdv.is_last {
            return MessageOutcome::Continue;
        }
        let State::Data {
            command,
            pc_id,
            sink,
        } = std::mem::replace(&mut self.state, State::Command)
        else {
            unreachable!("state checked above");
        };
        let response = match sink {
            DataSink::Store(in_progress) => store::finish(self.dispatcher, &command, *in_progress),
            DataSink::Discard(status) => Command::response_for(&command, status),
        };
        self.respond(socket, pc_id, &response)
    }

    fn respond(&mut self, socket: &mut TcpStream, pc_id: u8, response: &Command) -> MessageOutcome {
        let bytes = response.encode();
        match pdu::write_pdata(
            socket,
            &mut self.scratch,
            pc_id,
            true,
            &bytes,
            self.peer_max_pdu,
        ) {
            Ok(()) => MessageOutcome::Done,
            Err(error) => MessageOutcome::Abort(format!("cannot send the response: {error}")),
        }
    }
}
