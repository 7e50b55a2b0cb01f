//! The DIMSE service handlers and the per-association message state machine,
//! above the services (where the web front-end will stand beside them).
//!
//! [`Session`] receives PDVs from [`crate::dicom::assoc`], assembles command
//! sets, and routes each message to its handler: [`echo`] answers C-ECHO,
//! [`store`] streams a C-STORE data set into [`crate::services::Ingest`],
//! [`find`] answers C-FIND from the index, [`retrieve`] runs C-MOVE and
//! C-GET. Any other command is answered with "unrecognized operation" (0211)
//! after its data set, if any, has been drained. Handlers see services,
//! model values and statuses, never SQL or paths; they talk to the peer
//! through a [`Link`].

pub mod echo;
pub mod find;
pub mod retrieve;
pub mod store;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use dicom_ul::pdu::{UserIdentity, UserIdentityType};
use tracing::{info, warn};

pub use crate::dicom::link::{Link, LinkError};

use crate::audit::event::types;
use crate::audit::{
    Action, AuditEvent, Auditor, EventKind, Outcome, Participant, Role, TransferTally,
};
use crate::config::Users;
use crate::dicom::assoc::{AccessPolicy, HandlerFactory, MessageHandler, MessageOutcome};
use crate::dicom::dimse::{Command, CommandField, FragmentBuffer, Status};
use crate::dicom::pdu::Pdv;
use crate::services::devices::{Admission, Devices, Operation};
use crate::services::find::Find;
use crate::services::retrieve::Retrieve;
use crate::services::{Ingest, Partition};

/// Largest command set we assemble (real ones are a few hundred bytes).
const MAX_COMMAND_LEN: usize = 64 * 1024;
/// Largest C-FIND/C-MOVE/C-GET identifier we accept.
const MAX_IDENTIFIER_LEN: usize = 1024 * 1024;

/// Per-partition behaviour of the query/retrieve handlers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScpOptions {
    /// PN values match case-insensitively.
    pub pn_case_insensitive: bool,
    /// A C-FIND with more matches than this fails (A700) instead of running away.
    pub max_query_results: u64,
    /// Most unknown keys of a C-FIND identifier returned in each response.
    pub max_echoed_unknown_keys: usize,
}

/// The services a partition's associations use. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Dispatcher {
    /// Ingest service for C-STORE.
    pub ingest: Ingest,
    /// The find service, for C-FIND.
    pub find: Find,
    /// Retrieve service for C-MOVE and C-GET.
    pub retrieve: Retrieve,
    /// The partition's devices: admission and permissions.
    pub devices: Devices,
    /// The partition the associations belong to.
    pub partition: Partition,
    /// Query/retrieve behaviour.
    pub options: ScpOptions,
    /// Told of what is served (metrics), when someone listens.
    pub observer: Option<Arc<dyn ScpObserver>>,
    /// The audit trail.
    pub auditor: Auditor,
}

/// What the DICOM handlers report as they serve: the metrics' side of the
/// front-end (the HTTP server's registry implements it).
pub trait ScpObserver: Send + Sync + std::fmt::Debug {
    /// An association was accepted (`true`) or refused by the access
    /// policy (`false`).
    fn association(&self, accepted: bool);
    /// A C-STORE ended: its outcome's name and, when stored, how long
    /// ingest took from the last byte.
    fn stored(&self, outcome: &str, took: Option<Duration>);
    /// A C-FIND was answered, in `took`.
    fn found(&self, took: Duration);
}

impl Dispatcher {
    /// The calling AE of `link` as an audit participant (the requestor).
    pub(crate) fn caller(&self, link: &Link, role: Role) -> Participant {
        let address = link.peer_ip().map(|ip| ip.to_string());
        Participant {
            // The TLS client certificate's subject, when it presented one.
            user_name: link.tls_subject(),
            ..Participant::ae(link.calling_ae(), true, address, role)
        }
    }

    /// This partition's AE as an audit participant.
    pub(crate) fn us(&self, role: Role) -> Participant {
        Participant::ae(self.partition.ae_title.as_str(), false, None, role)
    }
}

/// The acceptor's access policy over a partition's devices: unknown
/// callers are admitted or not by the partition's setting (and registered
/// once associated), a known device with a host only from that host, and
/// a known device's association limit holds. A refused caller is counted
/// (metrics) and audited (Security Alert, Node Authentication).
#[derive(Debug, Clone)]
pub struct DevicePolicy {
    /// The partition's devices.
    pub devices: Devices,
    /// Told of refusals (metrics), when someone listens.
    pub observer: Option<Arc<dyn ScpObserver>>,
    /// Where refusals are recorded.
    pub auditor: Auditor,
    /// The partition (AE title and id), for the audit record.
    pub partition: Partition,
    /// The users a User Identity is checked against.
    pub users: Arc<Users>,
    /// Callers must send a User Identity.
    pub require_user_identity: bool,
}

impl DevicePolicy {
    /// Records a refusal before or during negotiation as a Security Alert
    /// of type `type_code`.
    fn alert(
        &self,
        kind: EventKind,
        type_code: crate::audit::event::Code,
        description: String,
        caller: Participant,
    ) {
        if let Some(observer) = &self.observer {
            observer.association(false);
        }
        self.auditor.record(
            AuditEvent::new(kind, Action::Execute, Outcome::MinorFailure)
                .type_code(type_code)
                .described(description)
                .participant(caller)
                .participant(Participant::ae(
                    self.partition.ae_title.as_str(),
                    false,
                    None,
                    Role::Destination,
                ))
                .in_partition(self.partition.id),
        );
    }
}

impl AccessPolicy for DevicePolicy {
    fn admit(&self, calling_ae: &str, peer: Option<IpAddr>) -> bool {
        let refusal = match self.devices.admit(calling_ae, peer) {
            Admission::Admit(_) => return true,
            Admission::Unknown => {
                warn!(
                    calling_ae,
                    ?peer,
                    "association rejected: unknown calling AE title"
                );
                format!(
                    "association rejected: unknown calling AE title {:?}",
                    calling_ae.trim()
                )
            }
            Admission::WrongHost { host, peer } => {
                warn!(
                    calling_ae,
                    ?peer,
                    device_host = %host,
                    "association rejected: the device calls from an address its host does not have"
                );
                format!(
                    "association rejected: AE title {:?} called from an address its host {host:?} does not have",
                    calling_ae.trim()
                )
            }
        };
        if let Some(observer) = &self.observer {
            observer.association(false);
        }
        let address = peer.map(|ip| ip.to_string());
        self.auditor.record(
            AuditEvent::new(
                EventKind::SecurityAlert,
                Action::Execute,
                Outcome::MinorFailure,
            )
            .type_code(types::NODE_AUTHENTICATION)
            .described(refusal)
            .participant(Participant::ae(calling_ae, true, address, Role::Source))
            .participant(Participant::ae(
                self.partition.ae_title.as_str(),
                false,
                None,
                Role::Destination,
            ))
            .in_partition(self.partition.id),
        );
        false
    }

    fn max_associations(&self, calling_ae: &str) -> u32 {
        self.devices
            .get(calling_ae)
            .map_or(0, |device| device.max_associations)
    }

    fn check_user(
        &self,
        calling_ae: &str,
        peer: Option<IpAddr>,
        user: Option<&UserIdentity>,
    ) -> bool {
        let refusal = match user {
            None if !self.require_user_identity => return true,
            None => "no User Identity sent, and the partition requires one".to_string(),
            Some(user) => {
                let name = String::from_utf8_lossy(&user.primary_field()).to_string();
                let accepted = match user.identity_type() {
                    UserIdentityType::Username => self.users.verify(&name, None),
                    UserIdentityType::UsernamePassword => {
                        self.users.verify(&name, Some(&user.secondary_field()))
                    }
                    _ => false,
                };
                if accepted {
                    info!(calling_ae, user = %name, "user identity accepted");
                    return true;
                }
                format!("user {name:?} not accepted (unknown user, wrong passcode or unsupported identity type)")
            }
        };
        warn!(calling_ae, ?peer, reason = %refusal, "association rejected: user identity");
        let address = peer.map(|ip| ip.to_string());
        self.alert(
            EventKind::UserAuthentication,
            types::LOGIN,
            format!("association rejected: {refusal}"),
            Participant::ae(calling_ae, true, address, Role::Source),
        );
        false
    }

    fn handshake_failed(&self, peer: SocketAddr, reason: &str) {
        self.alert(
            EventKind::SecurityAlert,
            types::NODE_AUTHENTICATION,
            format!("TLS connection refused: {reason}"),
            Participant::ae("", true, Some(peer.ip().to_string()), Role::Source),
        );
    }

    fn established(&self, calling_ae: &str, peer: Option<SocketAddr>) {
        if self.devices.get(calling_ae).is_none() {
            let host = peer.map(|p| p.ip().to_string()).unwrap_or_default();
            if let Err(error) = self.devices.register_unknown(calling_ae, &host) {
                warn!(%error, "cannot register the calling AE as a device");
            }
        }
    }
}

impl HandlerFactory for Dispatcher {
    fn handler(&self, link: Link) -> Box<dyn MessageHandler + '_> {
        if let Some(observer) = &self.observer {
            observer.association(true);
        }
        Box::new(self.session(link))
    }
}

impl MessageHandler for Session<'_> {
    fn on_pdv(&mut self, pdv: Pdv<'_>) -> MessageOutcome {
        Session::on_pdv(self, pdv)
    }

    fn in_message(&self) -> bool {
        Session::in_message(self)
    }
}

/// Where the data set of the current message goes.
enum DataSink {
    /// Into the ingest service (C-STORE).
    Store(Box<store::StoreInProgress>),
    /// Nowhere: the command is answered with a failure once it ends.
    Discard(Status),
    /// Into memory: a query/retrieve identifier.
    Identifier(FragmentBuffer),
    /// Nowhere: the prepared refusal is sent once the data set ends.
    Refused(Box<Command>),
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
    link: Link,
    command: FragmentBuffer,
    state: State,
    /// The instances stored on this association, per study: one DICOM
    /// Instances Transferred message each when the association ends.
    stored: TransferTally,
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        let stored = std::mem::take(&mut self.stored);
        if stored.is_empty() || !self.dispatcher.auditor.is_enabled() {
            return;
        }
        let participants = [
            self.dispatcher.caller(&self.link, Role::Source),
            self.dispatcher.us(Role::Destination),
        ];
        let partition = Some(self.dispatcher.partition.id);
        for event in stored.events(Action::Create, &participants, partition) {
            self.dispatcher.auditor.record(event);
        }
    }
}

impl Dispatcher {
    /// Message state for a new association, talking through `link`.
    pub fn session(&self, link: Link) -> Session<'_> {
        Session {
            dispatcher: self,
            link,
            command: FragmentBuffer::new(MAX_COMMAND_LEN),
            state: State::Command,
            stored: TransferTally::default(),
        }
    }
}

impl Session<'_> {
    /// Whether a message is partly received.
    pub fn in_message(&self) -> bool {
        !self.command.is_empty() || matches!(self.state, State::Data { .. })
    }

    /// Handles one PDV; responses go out through the session's link.
    pub fn on_pdv(&mut self, pdv: Pdv<'_>) -> MessageOutcome {
        if self.link.context(pdv.pc_id).is_none() {
            return MessageOutcome::Abort(format!(
                "PDV on presentation context {} that was not accepted",
                pdv.pc_id
            ));
        }
        if pdv.is_command {
            self.on_command_fragment(pdv)
        } else {
            self.on_data_fragment(pdv)
        }
    }

    fn on_command_fragment(&mut self, pdv: Pdv<'_>) -> MessageOutcome {
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
        let (abstract_syntax, transfer_syntax) = match self.link.context(pdv.pc_id) {
            Some((a, t)) => (a.to_string(), t.to_string()),
            None => return MessageOutcome::Abort("unknown presentation context".into()),
        };
        let operation = match command.field {
            CommandField::CStoreRq => Some(Operation::Store),
            CommandField::CFindRq => Some(Operation::Query),
            CommandField::CMoveRq | CommandField::CGetRq => Some(Operation::Retrieve),
            _ => None,
        };
        if let Some(operation) = operation {
            if !self
                .dispatcher
                .devices
                .permits(self.link.calling_ae(), operation)
            {
                warn!(
                    ?operation,
                    calling_ae = self.link.calling_ae(),
                    "refused: the device lacks the permission"
                );
                self.dispatcher.auditor.record(
                    AuditEvent::new(
                        EventKind::SecurityAlert,
                        Action::Execute,
                        Outcome::MinorFailure,
                    )
                    .type_code(types::RESTRICTED_FUNCTION)
                    .described(format!("{operation:?} is not permitted for this AE title"))
                    .participant(self.dispatcher.caller(&self.link, Role::Source))
                    .participant(self.dispatcher.us(Role::Destination))
                    .in_partition(self.dispatcher.partition.id),
                );
                let response = Command::response_for(&command, Status::NOT_AUTHORIZED)
                    .with_error_comment(format!(
                        "{operation:?} is not permitted for this AE title"
                    ));
                if command.has_dataset {
                    self.state = State::Data {
                        command: Box::new(command),
                        pc_id: pdv.pc_id,
                        sink: DataSink::Refused(Box::new(response)),
                    };
                    return MessageOutcome::Continue;
                }
                return self.respond(pdv.pc_id, &response);
            }
        }
        match command.field {
            CommandField::CEchoRq => {
                let response = echo::handle(&command);
                self.respond(pdv.pc_id, &response)
            }
            CommandField::CStoreRq if command.has_dataset => {
                let sink = DataSink::Store(Box::new(store::begin(
                    self.dispatcher,
                    self.link.calling_ae(),
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
            CommandField::CFindRq | CommandField::CMoveRq | CommandField::CGetRq
                if command.has_dataset =>
            {
                self.state = State::Data {
                    command: Box::new(command),
                    pc_id: pdv.pc_id,
                    sink: DataSink::Identifier(FragmentBuffer::new(MAX_IDENTIFIER_LEN)),
                };
                MessageOutcome::Continue
            }
            // A cancel for a request that already finished: nothing to do.
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
                self.respond(pdv.pc_id, &response)
            }
        }
    }

    fn on_data_fragment(&mut self, pdv: Pdv<'_>) -> MessageOutcome {
        let State::Data { pc_id, sink, .. } = &mut self.state else {
            return MessageOutcome::Abort("data set fragment without a command".into());
        };
        if *pc_id != pdv.pc_id {
            return MessageOutcome::Abort(
                "data set fragment on another presentation context than its command".into(),
            );
        }
        match sink {
            DataSink::Store(in_progress) => in_progress.write(pdv.data),
            DataSink::Identifier(buffer) => {
                if let Err(error) = buffer.push(pdv.data) {
                    return MessageOutcome::Abort(error.to_string());
                }
            }
            DataSink::Discard(_) | DataSink::Refused(_) => {}
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
            DataSink::Store(in_progress) => {
                store::finish(self.dispatcher, &command, *in_progress, &mut self.stored)
            }
            DataSink::Discard(status) => Command::response_for(&command, status),
            DataSink::Refused(response) => *response,
            DataSink::Identifier(mut buffer) => {
                let identifier = buffer.take();
                let (dispatcher, link) = (self.dispatcher, &mut self.link);
                let handled = match command.field {
                    CommandField::CFindRq => {
                        find::handle(dispatcher, link, pc_id, &command, &identifier)
                    }
                    CommandField::CMoveRq => {
                        retrieve::handle_move(dispatcher, link, pc_id, &command, &identifier)
                    }
                    _ => retrieve::handle_get(dispatcher, link, pc_id, &command, &identifier),
                };
                return match handled {
                    Ok(()) => MessageOutcome::Done,
                    Err(error) => MessageOutcome::Abort(error.to_string()),
                };
            }
        };
        self.respond(pc_id, &response)
    }

    fn respond(&mut self, pc_id: u8, response: &Command) -> MessageOutcome {
        match self.link.send_command(pc_id, response) {
            Ok(()) => MessageOutcome::Done,
            Err(error) => MessageOutcome::Abort(format!("cannot send the response: {error}")),
        }
    }
}
