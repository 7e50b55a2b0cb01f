//! Retrieve SCPs: C-MOVE (PS3.4 C.4.2) and C-GET (PS3.4 C.4.3).
//!
//! Both parse the identifier's unique keys into a [`Query`], plan the
//! retrieve with [`Retrieve::plan`] (the total the sub-operation counters
//! need and the contexts, without holding the instance list), then load
//! the instances a batch of series at a time and run one C-STORE
//! sub-operation per instance, each followed by a pending response with
//! the counters:
//!
//! - C-MOVE stores to the move destination (a known device of the
//!   partition) through the storage SCU, [`crate::services::send::send`], on an
//!   association of its own;
//! - C-GET stores on the requestor's association, on an accepted context of
//!   the instance's SOP class whose transfer syntax is the stored one (or,
//!   for an instance stored compressed that the requestor takes only
//!   uncompressed, Explicit/Implicit VR LE: decoded on the fly) and for
//!   which the requestor took the SCP role.
//!
//! Between sub-operations a C-CANCEL-RQ stops the retrieve (final status
//! FE00). Nothing else is transcoded: an instance without a context in its
//! stored transfer syntax (or an uncompressed one it decodes to) is a failed
//! sub-operation.
//!
//! Final status (PS3.4 C.4.2.1.4, C.4.3.1.4): 0000 when every sub-operation
//! completed; B000 when some failed or completed with a warning; A702 when
//! none completed (every sub-operation failed, or the move destination
//! could not be reached); FE00 after a cancel. Failures, warnings and
//! cancels carry the Failed SOP Instance UID List (0008,0058) when any
//! sub-operation failed (its first 4096 UIDs; the count is exact). A batch
//! the index cannot read fails the rest of the retrieve by count. An invalid identifier gets A900, an unknown move
//! destination (or one registered without a port) A801, an index failure
//! C000.

use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::tags;
use dicom_encoding::{TransferSyntax, TransferSyntaxIndex};
use dicom_object::InMemDicomObject;
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
use tracing::{debug, info, warn};

use super::{Dispatcher, Link, LinkError};
use crate::audit::{
    Action, AuditEvent, EventKind, Outcome as AuditOutcome, Participant, ParticipantObject, Role,
    TransferTally,
};
use crate::dicom::codec;
use crate::dicom::dimse::{Command, CommandField, Priority, Status, SubOpCounts};
use crate::dicom::part10::DataSetReader;
use crate::dicom::scu::{self, Destination, Outcome, Outgoing, ScuError, Tally};
use crate::dicom::sop_classes;
use crate::model::error_chain;
use crate::model::query::{Attribute, Key, Level, Matcher, Query, Root, MAX_LIST_VALUES};
use crate::model::Uid;
use crate::services::retrieve::{Retrieve, RetrieveItem, RetrievePlan};

/// Which retrieve service a request is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Service {
    Move,
    Get,
}

impl Service {
    fn name(self) -> &'static str {
        match self {
            Service::Move => "C-MOVE",
            Service::Get => "C-GET",
        }
    }

    fn response(
        self,
        request: &Command,
        status: Status,
        counts: SubOpCounts,
        has_dataset: bool,
    ) -> Command {
        match self {
            Service::Move => Command::move_rsp(request, status, counts, has_dataset),
            Service::Get => Command::get_rsp(request, status, counts, has_dataset),
        }
    }
}

/// A request refused before any sub-operation.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Refusal {
    status: Status,
    comment: String,
}

impl Refusal {
    fn new(status: Status, comment: impl Into<String>) -> Refusal {
        Refusal {
            status,
            comment: comment.into(),
        }
    }
}

/// A parsed C-MOVE/C-GET request.
struct Request {
    message_id: u16,
    query: Query,
    /// The transfer syntax of the request's context (for the final
    /// response's identifier).
    transfer_syntax: &'static TransferSyntax,
}

/// Answers a C-MOVE-RQ with its identifier.
pub fn handle_move(
    dispatcher: &Dispatcher,
    link: &mut Link,
    pc_id: u8,
    command: &Command,
    identifier: &[u8],
) -> Result<(), LinkError> {
    let started = Instant::now();
    let request = match parse_request(dispatcher, link, pc_id, command, identifier, Service::Move) {
        Ok(request) => request,
        Err(refusal) => return refuse(link, pc_id, command, Service::Move, refusal),
    };
    let destination_ae = command
        .move_destination
        .as_deref()
        .map(|ae| ae.trim_matches([' ', '\0']))
        .unwrap_or("");
    let device = match dispatcher
        .retrieve
        .destination(dispatcher.partition.id, destination_ae)
    {
        Ok(Some(device)) if device.port != 0 => device,
        Ok(Some(_)) => {
            // Callers registered automatically have no port until an
            // administrator sets one.
            let refusal = Refusal::new(
                Status::MOVE_DESTINATION_UNKNOWN,
                format!("move destination {destination_ae:?} has no port"),
            );
            return refuse(link, pc_id, command, Service::Move, refusal);
        }
        Ok(None) => {
            let refusal = Refusal::new(
                Status::MOVE_DESTINATION_UNKNOWN,
                format!("move destination {destination_ae:?} unknown"),
            );
            return refuse(link, pc_id, command, Service::Move, refusal);
        }
        Err(error) => {
            warn!(error = %error_chain(&error), "C-MOVE: cannot look up the destination");
            let refusal = Refusal::new(Status::UNABLE_TO_PROCESS, "index unavailable");
            return refuse(link, pc_id, command, Service::Move, refusal);
        }
    };
    if let Err(refusal) = restore_first(dispatcher, link, pc_id, command, Service::Move, &request)?
    {
        return refuse(link, pc_id, command, Service::Move, refusal);
    }
    let plan = match plan_retrieve(&dispatcher.retrieve, &request.query) {
        Ok(plan) => plan,
        Err(refusal) => return refuse(link, pc_id, command, Service::Move, refusal),
    };
    let destination = Destination {
        ae_title: device.ae_title.as_str().to_string(),
        host: device.host.clone(),
        port: device.port,
    };
    let mut progress = Progress::new(plan.total);
    let audit_participants = [
        dispatcher.us(Role::Source),
        Participant::ae(
            &destination.ae_title,
            false,
            Some(destination.host.clone()),
            Role::Destination,
        ),
        Participant {
            role: None,
            ..dispatcher.caller(link, Role::Source)
        },
    ];
    audit_begin(dispatcher, &plan, &audit_participants);
    let mut options = scu::ScuOptions::new(dispatcher.partition.ae_title.as_str());
    options.priority = command.priority.unwrap_or(Priority::Medium);
    options.move_originator = Some((link.calling_ae().to_string(), request.message_id));
    options.tls = dispatcher.devices.tls_for(&destination.ae_title);

    let mut link_error: Option<LinkError> = None;
    let mut comment: Option<String> = None;
    if plan.total > 0 {
        let retrieve = &dispatcher.retrieve;
        let pairs: Vec<(&str, &str)> = plan
            .pairs
            .iter()
            .map(|(class, ts)| (class.as_str(), ts.as_str()))
            .collect();
        let sent = crate::services::send::send_batches(
            &destination,
            &options,
            &pairs,
            plan.batches(),
            &mut |batch| load_batch(retrieve, &plan, batch),
            &mut |source: &Source<'_>, outcome: &Outcome| {
                progress.record_item(&source.item, outcome);
                let pending = Service::Move.response(
                    command,
                    Status::PENDING,
                    progress.pending_counts(),
                    false,
                );
                if let Err(error) = link.send_command(pc_id, &pending) {
                    link_error = Some(error);
                    return ControlFlow::Break(());
                }
                match link.poll_cancel(request.message_id) {
                    Ok(false) => ControlFlow::Continue(()),
                    Ok(true) => {
                        progress.cancelled = true;
                        ControlFlow::Break(())
                    }
                    Err(error) => {
                        link_error = Some(error);
                        ControlFlow::Break(())
                    }
                }
            },
        );
        match sent {
            Ok(summary) => {
                if let Some(reason) = summary.unloaded {
                    comment = Some(progress.give_up(&reason).to_string());
                }
            }
            Err(error) => {
                warn!(destination = %destination, %error, "C-MOVE: cannot reach the move destination");
                comment = Some(unreachable_comment(&error).to_string());
                let reason = error.to_string();
                for batch in 0..plan.batches() {
                    if progress.failed_uids.len() >= MAX_FAILED_UIDS {
                        // The list is full: the rest fail by count, unread.
                        break;
                    }
                    match load_batch(retrieve, &plan, batch) {
                        Ok(sources) => {
                            for source in &sources {
                                progress.record_item(
                                    &source.item,
                                    &Outcome::Failed {
                                        reason: reason.clone(),
                                    },
                                );
                            }
                        }
                        Err(_) => break,
                    }
                }
                // Whatever could not be listed failed too, by count.
                progress.give_up(&reason);
            }
        }
    }
    audit_transferred(dispatcher, &mut progress, &audit_participants);
    if let Some(error) = link_error {
        log_done(
            Service::Move,
            &request,
            &progress,
            started,
            Some(&destination),
        );
        return Err(error);
    }
    let result = finish(
        link,
        pc_id,
        command,
        Service::Move,
        &request,
        &progress,
        comment,
    );
    log_done(
        Service::Move,
        &request,
        &progress,
        started,
        Some(&destination),
    );
    result
}

/// Answers a C-GET-RQ with its identifier.
pub fn handle_get(
    dispatcher: &Dispatcher,
    link: &mut Link,
    pc_id: u8,
    command: &Command,
    identifier: &[u8],
) -> Result<(), LinkError> {
    let started = Instant::now();
    let request = match parse_request(dispatcher, link, pc_id, command, identifier, Service::Get) {
        Ok(request) => request,
        Err(refusal) => return refuse(link, pc_id, command, Service::Get, refusal),
    };
    if let Err(refusal) = restore_first(dispatcher, link, pc_id, command, Service::Get, &request)? {
        return refuse(link, pc_id, command, Service::Get, refusal);
    }
    let plan = match plan_retrieve(&dispatcher.retrieve, &request.query) {
        Ok(plan) => plan,
        Err(refusal) => return refuse(link, pc_id, command, Service::Get, refusal),
    };
    let priority = command.priority.unwrap_or(Priority::Medium);
    let mut progress = Progress::new(plan.total);
    let audit_participants = [
        dispatcher.us(Role::Source),
        dispatcher.caller(link, Role::Destination),
    ];
    audit_begin(dispatcher, &plan, &audit_participants);
    let result = get_sub_operations(
        dispatcher,
        link,
        command,
        pc_id,
        &request,
        &plan,
        priority,
        &mut progress,
    );
    audit_transferred(dispatcher, &mut progress, &audit_participants);
    let comment = result?;
    let result = finish(
        link,
        pc_id,
        command,
        Service::Get,
        &request,
        &progress,
        comment,
    );
    log_done(Service::Get, &request, &progress, started, None);
    result
}

/// C-GET's sub-operations, batch by batch, on the requestor's association;
/// returns the final response's comment. `Err` when the association
/// cannot go on.
#[allow(clippy::too_many_arguments)]
fn get_sub_operations(
    dispatcher: &Dispatcher,
    link: &mut Link,
    command: &Command,
    pc_id: u8,
    request: &Request,
    plan: &RetrievePlan,
    priority: Priority,
    progress: &mut Progress,
) -> Result<Option<String>, LinkError> {
    let mut next_message_id: u16 = 1;
    let mut comment: Option<String> = None;
    'batches: for batch in 0..plan.batches() {
        let sources = match load_batch(&dispatcher.retrieve, plan, batch) {
            Ok(sources) => sources,
            Err(reason) => {
                comment = Some(progress.give_up(&reason).to_string());
                break;
            }
        };
        for source in &sources {
            if link.poll_cancel(request.message_id)? {
                progress.cancelled = true;
                break 'batches;
            }
            let message_id = next_message_id;
            next_message_id = next_message_id.checked_add(1).unwrap_or(1);
            let outcome = get_sub_operation(
                &dispatcher.retrieve,
                link,
                &source.item,
                message_id,
                priority,
                request.message_id,
                &mut progress.cancelled,
            )?;
            progress.record_item(&source.item, &outcome);
            let pending =
                Service::Get.response(command, Status::PENDING, progress.pending_counts(), false);
            link.send_command(pc_id, &pending)?;
            if progress.cancelled {
                break 'batches;
            }
        }
    }
    Ok(comment)
}

/// Begin Transferring DICOM Instances (PS3.15 A.5.3.3): the studies a
/// C-MOVE/C-GET is about to send.
fn audit_begin(dispatcher: &Dispatcher, plan: &RetrievePlan, participants: &[Participant]) {
    if !dispatcher.auditor.is_enabled() || plan.total == 0 {
        return;
    }
    let mut event = AuditEvent::new(
        EventKind::BeginTransferring,
        Action::Execute,
        AuditOutcome::Success,
    )
    .in_partition(dispatcher.partition.id);
    event.participants = participants.to_vec();
    for uid in plan.study_uids() {
        event = event.object(ParticipantObject::Study {
            uid: uid.as_str().to_string(),
            sop_classes: Default::default(),
        });
    }
    dispatcher.auditor.record(event);
}

/// DICOM Instances Transferred (PS3.15 A.5.3.4), one per study, for the
/// sub-operations done so far.
fn audit_transferred(
    dispatcher: &Dispatcher,
    progress: &mut Progress,
    participants: &[Participant],
) {
    let studies = std::mem::take(&mut progress.studies);
    if studies.is_empty() {
        return;
    }
    for event in studies.events(Action::Read, participants, Some(dispatcher.partition.id)) {
        dispatcher.auditor.record(event);
    }
}

/// One C-GET sub-operation on the requestor's association. `Err` only when
/// the association cannot go on.
fn get_sub_operation(
    retrieve: &Retrieve,
    link: &mut Link,
    item: &RetrieveItem,
    message_id: u16,
    priority: Priority,
    get_message_id: u16,
    cancelled: &mut bool,
) -> Result<Outcome, LinkError> {
    let class = item.sop_class_uid.as_str();
    let ts = item.transfer_syntax_uid.as_str();
    if !link.peer_is_scp_for(class) {
        return Ok(Outcome::Failed {
            reason: format!("the requestor did not take the SCP role for SOP class {class}"),
        });
    }
    let contexts = link.contexts_for(class);
    let stored = contexts
        .iter()
        .find(|(_, accepted)| *accepted == ts)
        .map(|(id, _)| (*id, None));
    // Stored compressed, taken only uncompressed: decoded for the requestor.
    let accepted: Vec<&str> = contexts.iter().map(|(_, t)| *t).collect();
    let decoded = || {
        let to = codec::fallback_for(ts, &accepted)?;
        contexts
            .iter()
            .find(|(_, t)| *t == to)
            .map(|(id, _)| (*id, Some(to.to_string())))
    };
    let Some((pc_id, decode_to)) = stored.or_else(decoded) else {
        return Ok(Outcome::Failed {
            reason: if accepted.is_empty() {
                format!("the requestor accepted no context for SOP class {class}")
            } else {
                format!(
                    "the requestor accepted SOP class {class} only in {}, the instance is stored in {ts} (not transcoded)",
                    accepted.join(", ")
                )
            },
        });
    };
    let opened = retrieve.open(item).map_err(|e| e.to_string());
    let dataset = match (opened, decode_to) {
        (Err(reason), _) => Err(reason),
        (Ok(file), None) => {
            DataSetReader::new(file, Some(item.file_size)).map_err(|e| e.to_string())
        }
        (Ok(mut file), Some(to)) => codec::decoded_data_set(&mut file, Some(item.file_size), &to),
    };
    let mut dataset = match dataset {
        Ok(dataset) => dataset,
        Err(reason) => {
            return Ok(Outcome::Failed {
                reason: format!("cannot read the stored instance: {reason}"),
            })
        }
    };
    let store = Command::store_rq(
        message_id,
        class,
        item.sop_instance_uid.as_str(),
        priority,
        None,
    );
    link.send_command(pc_id, &store)?;
    if let Err(error) = link.send_dataset_from(pc_id, &mut dataset) {
        return Err(match dataset.failure() {
            // The requestor holds a partial data set: only an abort ends it.
            Some(reason) => LinkError::Broken(format!(
                "reading {} failed while sending it: {reason}",
                item.sop_instance_uid
            )),
            None => error,
        });
    }
    loop {
        let message = link.receive_message()?;
        let answer = &message.command;
        match answer.field {
            CommandField::CStoreRsp if answer.message_id_being_responded_to == Some(message_id) => {
                return Ok(Outcome::Answered {
                    status: answer.status.unwrap_or(Status::PROCESSING_FAILURE),
                    error_comment: answer.error_comment.clone(),
                });
            }
            CommandField::CCancelRq => {
                if answer.message_id_being_responded_to == Some(get_message_id) {
                    // Stop after the sub-operation in flight is answered.
                    *cancelled = true;
                }
            }
            other => {
                return Err(LinkError::Unexpected(format!(
                    "{other:?} while the C-STORE response to {message_id} was awaited"
                )))
            }
        }
    }
}

/// An instance as the storage SCU sees it.
struct Source<'a> {
    retrieve: &'a Retrieve,
    item: RetrieveItem,
}

impl Outgoing for Source<'_> {
    fn sop_class_uid(&self) -> &str {
        self.item.sop_class_uid.as_str()
    }

    fn sop_instance_uid(&self) -> &str {
        self.item.sop_instance_uid.as_str()
    }

    fn transfer_syntax_uid(&self) -> &str {
        self.item.transfer_syntax_uid.as_str()
    }

    fn file_size(&self) -> Option<u64> {
        Some(self.item.file_size)
    }

    fn open(
        &self,
    ) -> Result<Box<dyn std::io::Read + Send + '_>, Box<dyn std::error::Error + Send + Sync>> {
        Ok(self.retrieve.open(&self.item)?)
    }
}

/// Most UIDs a final response's Failed SOP Instance UID List holds (the
/// count of failures is always exact): the list of a huge failed retrieve
/// would not fit a response a peer can take.
const MAX_FAILED_UIDS: usize = MAX_LIST_VALUES;

/// Sub-operation counters and the failed instances (up to
/// [`MAX_FAILED_UIDS`] of them).
#[derive(Debug, Default)]
struct Progress {
    total: usize,
    completed: usize,
    warning: usize,
    failed: usize,
    failed_uids: Vec<String>,
    cancelled: bool,
    /// The first failure, for the log line.
    first_failure: Option<String>,
    /// Sub-operations per study, for the audit trail.
    studies: TransferTally,
}

impl Progress {
    fn new(total: usize) -> Progress {
        Progress {
            total,
            ..Progress::default()
        }
    }

    fn done(&self) -> usize {
        self.completed + self.warning + self.failed
    }

    /// Records a sub-operation's outcome, counted for its study too.
    fn record_item(&mut self, item: &RetrieveItem, outcome: &Outcome) {
        let ok = !matches!(outcome.tally(), Tally::Failed);
        self.studies.add(
            item.study_uid().as_str(),
            item.sop_class_uid.as_str(),
            None,
            ok,
        );
        self.record(&item.sop_instance_uid, outcome);
    }

    fn record(&mut self, sop_instance_uid: &Uid, outcome: &Outcome) {
        match outcome.tally() {
            Tally::Completed => self.completed += 1,
            Tally::Warning => {
                debug!(%sop_instance_uid, outcome = %outcome.describe(), "sub-operation warning");
                self.warning += 1;
            }
            Tally::Failed => {
                debug!(%sop_instance_uid, outcome = %outcome.describe(), "sub-operation failed");
                if self.first_failure.is_none() {
                    self.first_failure = Some(outcome.describe());
                }
                self.failed += 1;
                if self.failed_uids.len() < MAX_FAILED_UIDS {
                    self.failed_uids.push(sop_instance_uid.as_str().to_string());
                }
            }
        }
    }

    /// Fails, by count, every planned sub-operation not yet done: the job
    /// cannot go on (`reason`, logged). Returns the final response's
    /// comment.
    fn give_up(&mut self, reason: &str) -> &'static str {
        let rest = self.total.saturating_sub(self.done());
        if rest > 0 {
            self.failed += rest;
            if self.first_failure.is_none() {
                self.first_failure = Some(reason.to_string());
            }
        }
        "the instances to send could not be read from the index"
    }

    /// Counters of a pending response: remaining = total − done.
    fn pending_counts(&self) -> SubOpCounts {
        SubOpCounts {
            remaining: Some(clamp(self.total.saturating_sub(self.done()))),
            ..self.final_counts()
        }
    }

    /// Counters of a final response: no remaining count, except after a
    /// cancel, where it tells how many were not attempted.
    fn final_counts(&self) -> SubOpCounts {
        SubOpCounts {
            remaining: self
                .cancelled
                .then(|| clamp(self.total.saturating_sub(self.done()))),
            completed: clamp(self.completed),
            failed: clamp(self.failed),
            warning: clamp(self.warning),
        }
    }

    fn final_status(&self) -> Status {
        if self.cancelled {
            Status::CANCEL
        } else if self.failed == 0 && self.warning == 0 {
            Status::SUCCESS
        } else if self.completed == 0 && self.warning == 0 {
            Status::OUT_OF_RESOURCES_SUBOPS
        } else {
            Status::SUBOPS_WARNING
        }
    }
}

/// Counters are US: more than 65535 sub-operations saturate.
fn clamp(n: usize) -> u16 {
    u16::try_from(n).unwrap_or(u16::MAX)
}

/// Sends the final response, with the Failed SOP Instance UID List when
/// any sub-operation failed.
fn finish(
    link: &mut Link,
    pc_id: u8,
    command: &Command,
    service: Service,
    request: &Request,
    progress: &Progress,
    comment: Option<String>,
) -> Result<(), LinkError> {
    let status = progress.final_status();
    let identifier = if progress.failed > 0 {
        failed_list(&progress.failed_uids, request.transfer_syntax)
    } else {
        None
    };
    let mut response = service.response(
        command,
        status,
        progress.final_counts(),
        identifier.is_some(),
    );
    let comment = comment.or_else(|| match status {
        Status::OUT_OF_RESOURCES_SUBOPS => Some("every sub-operation failed".to_string()),
        Status::SUBOPS_WARNING if progress.failed > 0 => Some(format!(
            "{} of {} sub-operations failed",
            progress.failed, progress.total
        )),
        _ => None,
    });
    if let Some(comment) = comment {
        response = response.with_error_comment(comment);
    }
    link.send_command(pc_id, &response)?;
    if let Some(identifier) = identifier {
        link.send_dataset(pc_id, &identifier)?;
    }
    Ok(())
}

/// An identifier holding Failed SOP Instance UID List (0008,0058).
fn failed_list(uids: &[String], ts: &TransferSyntax) -> Option<Vec<u8>> {
    let object = InMemDicomObject::from_element_iter([DataElement::new(
        tags::FAILED_SOP_INSTANCE_UID_LIST,
        VR::UI,
        PrimitiveValue::Strs(uids.iter().cloned().collect()),
    )]);
    let mut bytes = Vec::new();
    match object.write_dataset_with_ts(&mut bytes, ts) {
        Ok(()) => Some(bytes),
        Err(error) => {
            warn!(%error, ts = ts.uid(), "cannot encode the failed SOP instance list");
            None
        }
    }
}

/// Answers a refused request with its final status.
fn refuse(
    link: &mut Link,
    pc_id: u8,
    command: &Command,
    service: Service,
    refusal: Refusal,
) -> Result<(), LinkError> {
    info!(
        service = service.name(),
        status = %refusal.status,
        reason = %refusal.comment,
        "retrieve refused"
    );
    let response = service
        .response(command, refusal.status, SubOpCounts::default(), false)
        .with_error_comment(refusal.comment);
    link.send_command(pc_id, &response)
}

fn log_done(
    service: Service,
    request: &Request,
    progress: &Progress,
    started: Instant,
    destination: Option<&Destination>,
) {
    info!(
        service = service.name(),
        level = request.query.level.code(),
        destination = destination.map(|d| d.to_string()),
        instances = progress.total,
        completed = progress.completed,
        warning = progress.warning,
        failed = progress.failed,
        cancelled = progress.cancelled,
        status = %progress.final_status(),
        first_failure = progress.first_failure.as_deref(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "retrieve done"
    );
}

/// How often a retrieve waiting for a restore tells the peer it is alive.
const PENDING_WHILE_RESTORING: Duration = Duration::from_secs(5);

/// Brings the nearline studies the request names online before it is
/// planned, with a pending response (no sub-operation counted yet) every
/// [`PENDING_WHILE_RESTORING`] while a restore runs. `Err` when the peer
/// is gone; the inner `Err` when a study could not be restored.
fn restore_first(
    dispatcher: &Dispatcher,
    link: &mut Link,
    pc_id: u8,
    command: &Command,
    service: Service,
    request: &Request,
) -> Result<Result<(), Refusal>, LinkError> {
    let mut last = Instant::now();
    let mut lost: Option<LinkError> = None;
    let restored =
        dispatcher
            .retrieve
            .restore_nearline(&dispatcher.partition, &request.query, &mut || {
                if lost.is_some() || last.elapsed() < PENDING_WHILE_RESTORING {
                    return;
                }
                last = Instant::now();
                let counts = SubOpCounts {
                    remaining: None,
                    completed: 0,
                    failed: 0,
                    warning: 0,
                };
                let pending = service.response(command, Status::PENDING, counts, false);
                if let Err(error) = link.send_command(pc_id, &pending) {
                    lost = Some(error);
                }
            });
    if let Some(error) = lost {
        return Err(error);
    }
    Ok(match restored {
        Ok(0) => Ok(()),
        Ok(n) => {
            tracing::info!(
                service = service.name(),
                studies = n,
                "nearline studies restored for a retrieve"
            );
            Ok(())
        }
        Err(error) => {
            warn!(service = service.name(), error = %error_chain(&error), "cannot restore a nearline study");
            Err(Refusal::new(
                Status::UNABLE_TO_PROCESS,
                "a nearline study could not be restored",
            ))
        }
    })
}

fn plan_retrieve(retrieve: &Retrieve, query: &Query) -> Result<RetrievePlan, Refusal> {
    retrieve.plan(query).map_err(|error| {
        warn!(error = %error_chain(&error), "retrieve: index query failed");
        Refusal::new(Status::UNABLE_TO_PROCESS, "index query failed")
    })
}

/// Batch `batch` of `plan`, read just before it is sent (no index
/// connection is held while the peer is written to).
fn load_batch<'r>(
    retrieve: &'r Retrieve,
    plan: &RetrievePlan,
    batch: usize,
) -> Result<Vec<Source<'r>>, String> {
    match retrieve.batch(plan, batch) {
        Ok(items) => Ok(items
            .into_iter()
            .map(|item| Source { retrieve, item })
            .collect()),
        Err(error) => {
            let reason = error_chain(&error);
            warn!(error = %reason, batch, "retrieve: cannot read the next batch of instances");
            Err(reason)
        }
    }
}

/// A short ErrorComment for a destination that could not be reached.
fn unreachable_comment(error: &ScuError) -> &'static str {
    match error {
        ScuError::ConnectionRefused { .. } => "move destination refused the connection",
        ScuError::Rejected { .. } => "move destination rejected the association",
        ScuError::NoAcceptableContext { .. } => "move destination accepts none of the SOP classes",
        ScuError::Timeout { .. } => "move destination did not answer",
        _ => "cannot reach the move destination",
    }
}

/// The information model a retrieve SOP class belongs to.
fn root_of(sop_class: &str, service: Service) -> Option<Root> {
    match (service, sop_class) {
        (Service::Move, sop_classes::PATIENT_ROOT_MOVE) => Some(Root::Patient),
        (Service::Move, sop_classes::STUDY_ROOT_MOVE) => Some(Root::Study),
        (Service::Get, sop_classes::PATIENT_ROOT_GET) => Some(Root::Patient),
        (Service::Get, sop_classes::STUDY_ROOT_GET) => Some(Root::Study),
        _ => None,
    }
}

fn parse_request(
    dispatcher: &Dispatcher,
    link: &Link,
    pc_id: u8,
    command: &Command,
    identifier: &[u8],
    service: Service,
) -> Result<Request, Refusal> {
    let message_id = command
        .message_id
        .ok_or_else(|| Refusal::new(Status::UNABLE_TO_PROCESS, "request without a message id"))?;
    let (abstract_syntax, transfer_syntax) = link
        .context(pc_id)
        .ok_or_else(|| Refusal::new(Status::UNABLE_TO_PROCESS, "unknown presentation context"))?;
    let root = root_of(abstract_syntax, service).ok_or_else(|| {
        Refusal::new(
            Status::SOP_CLASS_NOT_SUPPORTED,
            format!("{} on SOP class {abstract_syntax}", service.name()),
        )
    })?;
    let ts = TransferSyntaxRegistry.get(transfer_syntax).ok_or_else(|| {
        Refusal::new(
            Status::UNABLE_TO_PROCESS,
            format!("transfer syntax {transfer_syntax} unsupported"),
        )
    })?;
    // The bounded reader of C-FIND: lengths checked against the data and
    // sequence depth limited before dicom-object allocates or recurses.
    let object = crate::dicom::query_keys::read_identifier(identifier, transfer_syntax).map_err(
        |error| {
            Refusal::new(
                Status::UNABLE_TO_PROCESS,
                format!("cannot parse the identifier: {error}"),
            )
        },
    )?;
    let (level, keys) = parse_identifier(&object, root)
        .map_err(|comment| Refusal::new(Status::IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, comment))?;
    Ok(Request {
        message_id,
        query: Query {
            partition: dispatcher.partition.id,
            root,
            level,
            keys,
            pn_case_insensitive: dispatcher.options.pn_case_insensitive,
            limit: None,
            offset: 0,
        },
        transfer_syntax: ts,
    })
}

/// The retrieve level and the unique-key matchers of an identifier: the
/// retrieve level's unique key is required (one value or a list); unique
/// keys of the levels above restrict when present. Other keys are ignored.
fn parse_identifier(object: &InMemDicomObject, root: Root) -> Result<(Level, Vec<Key>), String> {
    let level_text = object
        .get(tags::QUERY_RETRIEVE_LEVEL)
        .and_then(|element| element.to_str().ok())
        .map(|text| text.trim_matches([' ', '\0']).to_string())
        .unwrap_or_default();
    let level = Level::from_code(&level_text)
        .ok_or_else(|| format!("invalid QueryRetrieveLevel {level_text:?}"))?;
    if root == Root::Study && level == Level::Patient {
        return Err("PATIENT level in the Study Root model".to_string());
    }
    let levels: &[Level] = match root {
        Root::Patient => &[Level::Patient, Level::Study, Level::Series, Level::Image],
        Root::Study => &[Level::Study, Level::Series, Level::Image],
    };
    let mut keys = Vec::new();
    for &current in levels.iter().filter(|l| **l <= level) {
        let attribute = Attribute::unique_key(current);
        let (group, element) = attribute.tag();
        let values: Vec<String> = object
            .get(dicom_core::Tag(group, element))
            .and_then(|element| element.to_multi_str().ok())
            .map(|values| {
                values
                    .iter()
                    // a value not split by the parser still holds backslashes
                    .flat_map(|v| v.split('\\'))
                    .map(|v| v.trim_matches([' ', '\0']).to_string())
                    .filter(|v| !v.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        if values.is_empty() {
            if current == level {
                return Err(format!("{} missing", attribute.keyword()));
            }
            continue;
        }
        if values.len() > MAX_LIST_VALUES {
            return Err(format!(
                "{} lists {} values (at most {MAX_LIST_VALUES})",
                attribute.keyword(),
                values.len()
            ));
        }
        if attribute != Attribute::PatientId {
            for value in &values {
                Uid::parse(value).map_err(|error| format!("{}: {error}", attribute.keyword()))?;
            }
        }
        let matcher = if values.len() == 1 {
            Matcher::Single(values.into_iter().next().expect("one value"))
        } else {
            Matcher::List(values)
        };
        keys.push(Key { attribute, matcher });
    }
    Ok((level, keys))
}

#[cfg(test)]
mod tests {
    use super::*;
    use dicom_transfer_syntax_registry::entries::{
        EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN,
    };

    fn identifier(elements: &[(dicom_core::Tag, VR, &str)]) -> InMemDicomObject {
        InMemDicomObject::from_element_iter(
            elements
                .iter()
                .map(|(tag, vr, value)| DataElement::new(*tag, *vr, PrimitiveValue::from(*value))),
        )
    }

    #[test]
    fn identifiers_become_unique_key_queries() {
        let study_list = identifier(&[
            (tags::QUERY_RETRIEVE_LEVEL, VR::CS, "STUDY "),
            (tags::STUDY_INSTANCE_UID, VR::UI, "1.2.3\\1.2.4\0"),
        ]);
        let (level, keys) = parse_identifier(&study_list, Root::Study).unwrap();
        assert_eq!(level, Level::Study);
        assert_eq!(
            keys,
            vec![Key {
                attribute: Attribute::StudyInstanceUid,
                matcher: Matcher::List(vec!["1.2.3".into(), "1.2.4".into()]),
            }]
        );

        let image = identifier(&[
            (tags::QUERY_RETRIEVE_LEVEL, VR::CS, "IMAGE"),
            (tags::PATIENT_ID, VR::LO, "PID1"),
            (tags::STUDY_INSTANCE_UID, VR::UI, "1.2.3"),
            (tags::SERIES_INSTANCE_UID, VR::UI, ""),
            (tags::SOP_INSTANCE_UID, VR::UI, "1.2.3.4.5"),
        ]);
        let (level, keys) = parse_identifier(&image, Root::Patient).unwrap();
        assert_eq!(level, Level::Image);
        let attributes: Vec<Attribute> = keys.iter().map(|k| k.attribute).collect();
        assert_eq!(
            attributes,
            [
                Attribute::PatientId,
                Attribute::StudyInstanceUid,
                Attribute::SopInstanceUid
            ]
        );
        // In Study Root, PatientID is no unique key: ignored.
        let (_, keys) = parse_identifier(&image, Root::Study).unwrap();
        assert_eq!(keys.len(), 2);

        let patient = identifier(&[
            (tags::QUERY_RETRIEVE_LEVEL, VR::CS, "PATIENT"),
            (tags::PATIENT_ID, VR::LO, "PID 7 "),
        ]);
        let (_, keys) = parse_identifier(&patient, Root::Patient).unwrap();
        assert_eq!(keys[0].matcher, Matcher::Single("PID 7".into()));
    }

    #[test]
    fn invalid_identifiers_are_refused() {
        let level = |level| (tags::QUERY_RETRIEVE_LEVEL, VR::CS, level);
        let study = |uid| (tags::STUDY_INSTANCE_UID, VR::UI, uid);
        let cases = [
            ("no level", vec![study("1.2.3")]),
            ("bad level", vec![level("FRAME"), study("1.2.3")]),
            (
                "patient level in study root",
                vec![level("PATIENT"), (tags::PATIENT_ID, VR::LO, "X")],
            ),
            ("missing key", vec![level("SERIES"), study("1.2.3")]),
            ("bad uid", vec![level("STUDY"), study("1.2.x")]),
        ];
        for (name, elements) in cases {
            let object = identifier(&elements);
            assert!(parse_identifier(&object, Root::Study).is_err(), "{name}");
        }
        // UID lists are capped: a whole large series, not without end.
        let uids = |n: usize| {
            (0..n)
                .map(|i| format!("1.2.{i}"))
                .collect::<Vec<_>>()
                .join("\\")
        };
        let list = |n| {
            identifier(&[
                (tags::QUERY_RETRIEVE_LEVEL, VR::CS, "IMAGE"),
                (tags::STUDY_INSTANCE_UID, VR::UI, "1.2.3"),
                (tags::SERIES_INSTANCE_UID, VR::UI, "1.2.3.4"),
                (tags::SOP_INSTANCE_UID, VR::UI, &uids(n)),
            ])
        };
        assert!(parse_identifier(&list(MAX_LIST_VALUES), Root::Study).is_ok());
        let error = parse_identifier(&list(MAX_LIST_VALUES + 1), Root::Study).unwrap_err();
        assert!(error.contains("at most 4096"), "{error}");
    }

    fn progress(total: usize, completed: usize, warning: usize, failed: usize) -> Progress {
        Progress {
            total,
            completed,
            warning,
            failed,
            ..Progress::default()
        }
    }

    #[test]
    fn final_statuses() {
        assert_eq!(progress(0, 0, 0, 0).final_status(), Status::SUCCESS);
        assert_eq!(progress(3, 3, 0, 0).final_status(), Status::SUCCESS);
        assert_eq!(progress(3, 2, 0, 1).final_status(), Status::SUBOPS_WARNING);
        assert_eq!(progress(3, 0, 3, 0).final_status(), Status::SUBOPS_WARNING);
        assert_eq!(
            progress(3, 0, 0, 3).final_status(),
            Status::OUT_OF_RESOURCES_SUBOPS
        );
        let mut cancelled = progress(5, 2, 0, 0);
        cancelled.cancelled = true;
        assert_eq!(cancelled.final_status(), Status::CANCEL);
        assert_eq!(cancelled.final_counts().remaining, Some(3));
        assert_eq!(progress(5, 2, 0, 1).final_counts().remaining, None);
        assert_eq!(progress(5, 2, 0, 1).pending_counts().remaining, Some(2));
        assert_eq!(clamp(70_000), u16::MAX);
        // More answered than planned (instances stored meanwhile).
        assert_eq!(progress(2, 3, 0, 0).pending_counts().remaining, Some(0));
    }

    #[test]
    fn failures_are_counted_exactly_and_listed_up_to_the_cap() {
        let mut p = progress(MAX_FAILED_UIDS + 10, 0, 0, 0);
        let failed = Outcome::Failed {
            reason: "refused".into(),
        };
        for n in 0..MAX_FAILED_UIDS + 5 {
            p.record(&Uid::parse(&format!("1.2.3.{n}")).unwrap(), &failed);
        }
        assert_eq!(p.failed, MAX_FAILED_UIDS + 5);
        assert_eq!(p.failed_uids.len(), MAX_FAILED_UIDS);
        assert_eq!(p.failed_uids[0], "1.2.3.0");
        p.give_up("index down");
        assert_eq!(p.failed, MAX_FAILED_UIDS + 10, "the rest failed by count");
        assert_eq!(p.final_counts().failed, clamp(MAX_FAILED_UIDS + 10));
        assert_eq!(p.final_status(), Status::OUT_OF_RESOURCES_SUBOPS);
    }

    #[test]
    fn failed_list_encodes_in_the_request_syntax() {
        let uids = vec!["1.2.3".to_string(), "1.2.34".to_string()];
        for ts in [
            EXPLICIT_VR_LITTLE_ENDIAN.erased(),
            IMPLICIT_VR_LITTLE_ENDIAN.erased(),
        ] {
            let bytes = failed_list(&uids, &ts).unwrap();
            let back = InMemDicomObject::read_dataset_with_ts(&bytes[..], &ts).unwrap();
            let values = back
                .get(tags::FAILED_SOP_INSTANCE_UID_LIST)
                .unwrap()
                .to_multi_str()
                .unwrap()
                .iter()
                .map(|v| v.trim_end_matches('\0').to_string())
                .collect::<Vec<_>>();
            assert_eq!(values, uids);
        }
    }
}
