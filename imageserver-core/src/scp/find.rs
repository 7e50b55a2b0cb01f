//! Query SCP (C-FIND, PS3.4 C.4.1) for the Patient Root and Study Root
//! information models.
//!
//! The identifier becomes a [`crate::model::query::Query`] through
//! [`crate::dicom::query_keys`]; matches are read from the index a page at
//! a time ([`crate::services::find::Pages`], no connection held while the peer is written to),
//! one pending C-FIND-RSP and identifier each. Responses are queued and
//! written [`QUEUE_FLUSH_BYTES`] at a time and at the end of every page: a
//! long answer costs few writes and wakes its peer rarely.
//!
//! Statuses:
//! - FF00 per match, FF01 when the identifier held keys we do not support
//!   (returned zero-length) or a value we could not match on;
//! - 0000 after the last match;
//! - FE00 when a C-CANCEL-RQ for the request arrives (looked for before
//!   every write): matching stops, and what is queued is never sent;
//! - A700 (out of resources) when there are more than `max_query_results`
//!   matches: the first `max_query_results` pendings have been sent and stay
//!   sent; the final response says so in its ErrorComment;
//! - A900 / C000 when the identifier cannot be answered (see
//!   [`crate::dicom::query_keys::QueryKeyError::status`]), with ErrorComment
//!   and OffendingElement;
//! - C000 when the index fails (a database failure is not a property of the
//!   request, and PS3.4 reserves A700 for resource exhaustion, which the cap
//!   stands for here); C000 too when a response cannot be encoded;
//! - 0122 when the presentation context is not a C-FIND SOP class we serve.

use std::time::Instant;

use tracing::{info, warn};

use super::{Dispatcher, Link, LinkError};
use crate::audit::{
    Action, AuditEvent, EventKind, Outcome as AuditOutcome, ParticipantObject, Role,
};
use crate::dicom::dimse::{Command, Status};
use crate::dicom::link::QUEUE_FLUSH_BYTES;
use crate::dicom::query_keys::{self, ParseOptions};
use crate::dicom::sop_classes::{PATIENT_ROOT_FIND, STUDY_ROOT_FIND};
use crate::model::error_chain;
use crate::model::query::Root;

/// How the matching ended.
enum Outcome {
    /// Every match was sent.
    Complete,
    /// The peer cancelled.
    Cancelled,
    /// More matches than the cap.
    Capped,
    /// A response could not be encoded.
    Encode(String),
    /// The association failed.
    Link(LinkError),
}

/// Answers a C-FIND-RQ with its identifier.
pub fn handle(
    dispatcher: &Dispatcher,
    link: &mut Link,
    pc_id: u8,
    command: &Command,
    identifier: &[u8],
) -> Result<(), LinkError> {
    let started = Instant::now();
    let calling_ae = link.calling_ae().to_string();
    let (abstract_syntax, transfer_syntax) = match link.context(pc_id) {
        Some((a, t)) => (a.to_string(), t.to_string()),
        None => (String::new(), String::new()),
    };
    let root = match abstract_syntax.as_str() {
        PATIENT_ROOT_FIND => Some(Root::Patient),
        STUDY_ROOT_FIND => Some(Root::Study),
        _ => None,
    };
    let requested_class = command
        .affected_sop_class_uid
        .as_deref()
        .map(|c| c.trim_end_matches(['\0', ' ']));
    let root = match root {
        Some(root) if requested_class.is_none_or(|c| c == abstract_syntax) => root,
        _ => {
            warn!(
                calling_ae,
                abstract_syntax,
                ?requested_class,
                "C-FIND on a SOP class we do not serve"
            );
            let response = Command::find_rsp(command, Status::SOP_CLASS_NOT_SUPPORTED, false)
                .with_error_comment("C-FIND SOP class not supported");
            return link.send_command(pc_id, &response);
        }
    };

    let options = &dispatcher.options;
    let parse_options = ParseOptions {
        pn_case_insensitive: options.pn_case_insensitive,
        // One more than the cap, so that exceeding it is seen whatever the
        // backend does with the limit.
        limit: Some(options.max_query_results.saturating_add(1)),
        retrieve_ae_title: dispatcher.partition.ae_title.as_str(),
        max_echoed_unsupported: options.max_echoed_unknown_keys,
        combined_date_time: link.combined_date_time(&abstract_syntax),
    };
    let parsed = match query_keys::parse_identifier(
        identifier,
        &transfer_syntax,
        root,
        dispatcher.partition.id,
        &parse_options,
    ) {
        Ok(parsed) => parsed,
        Err(error) => {
            let status = error.status();
            info!(
                calling_ae,
                %status,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "C-FIND refused: {error}"
            );
            let query = QueryAudit::new(&abstract_syntax, &transfer_syntax, identifier);
            query.record(dispatcher, link, AuditOutcome::MinorFailure);
            let mut response = Command::find_rsp(command, status, false)
                .with_error_comment(ascii(&error.to_string()));
            response.offending_element = error.offending_element().map(|tag| vec![tag]);
            return link.send_command(pc_id, &response);
        }
    };

    let level = parsed.query.level.code();
    let pending = if parsed.optional_keys_unsupported() {
        Status::PENDING_WARNING
    } else {
        Status::PENDING
    };
    let cap = options.max_query_results;
    let message_id = command.message_id.unwrap_or_default();
    let mut sent: u64 = 0;
    let mut outcome = Outcome::Complete;
    let mut found = Ok(());
    // Every pending response carries the same command set: encoded once.
    let response = Command::find_rsp(command, pending, true).encode();
    // Responses are queued and written QUEUE_FLUSH_BYTES at a time; a
    // C-CANCEL-RQ is looked for before each write, and what is queued when
    // it arrives is never sent.
    let flush = |link: &mut Link| -> Option<Outcome> {
        match link.poll_cancel(message_id) {
            Ok(true) => {
                link.discard_queued();
                Some(Outcome::Cancelled)
            }
            Ok(false) => link.flush_queued().err().map(Outcome::Link),
            Err(error) => Some(Outcome::Link(error)),
        }
    };
    // A page at a time: the index connection is back in its pool before a
    // byte goes to the peer, so a peer that stalls holds no connection.
    'pages: for page in dispatcher.find.pages(parsed.query.clone()) {
        let page = match page {
            Ok(page) => page,
            Err(error) => {
                found = Err(error);
                break;
            }
        };
        for matched in page {
            if sent >= cap {
                outcome = Outcome::Capped;
                break 'pages;
            }
            let data = match query_keys::encode_response(&parsed, &matched, &transfer_syntax) {
                Ok(data) => data,
                Err(error) => {
                    outcome = Outcome::Encode(error.to_string());
                    break 'pages;
                }
            };
            let queued = match link.queue_command_with_dataset(pc_id, &response, &data) {
                Ok(queued) => queued,
                Err(error) => {
                    outcome = Outcome::Link(error);
                    break 'pages;
                }
            };
            sent += 1;
            if queued >= QUEUE_FLUSH_BYTES {
                if let Some(stopped) = flush(link) {
                    outcome = stopped;
                    break 'pages;
                }
            }
        }
        // The page is out before the next is read from the index.
        if let Some(stopped) = flush(link) {
            outcome = stopped;
            break 'pages;
        }
    }
    // Queued responses of a query that stopped early (cap, encoding error,
    // index failure) still go before the final response.
    if matches!(outcome, Outcome::Capped | Outcome::Encode(_)) || found.is_err() {
        if let Err(error) = link.flush_queued() {
            outcome = Outcome::Link(error);
        }
    } else if matches!(outcome, Outcome::Cancelled | Outcome::Link(_)) {
        link.discard_queued();
    }

    // (status, ErrorComment, failure detail for the log)
    let query = QueryAudit::new(&abstract_syntax, &transfer_syntax, identifier);
    let (status, comment, failure) = match (found, outcome) {
        (_, Outcome::Link(error)) => {
            query.record(dispatcher, link, AuditOutcome::SeriousFailure);
            info!(
                calling_ae,
                level,
                matches = sent,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "C-FIND ended by the association: {error}"
            );
            return Err(error);
        }
        (_, Outcome::Cancelled) => (Status::CANCEL, None, None),
        (_, Outcome::Capped) => (
            Status::OUT_OF_RESOURCES,
            Some(format!("more than {cap} matches; refine the query")),
            None,
        ),
        (_, Outcome::Encode(error)) => (
            Status::UNABLE_TO_PROCESS,
            Some("cannot encode a match".to_string()),
            Some(error),
        ),
        (Err(error), Outcome::Complete) => (
            Status::UNABLE_TO_PROCESS,
            Some("index query failed".to_string()),
            Some(error_chain(&error)),
        ),
        (Ok(()), Outcome::Complete) => (Status::SUCCESS, None, None),
    };
    let elapsed_ms = started.elapsed().as_millis() as u64;
    if let Some(observer) = &dispatcher.observer {
        observer.found(started.elapsed());
    }
    match failure {
        None => info!(calling_ae, level, matches = sent, %status, elapsed_ms, "C-FIND"),
        Some(failure) => warn!(
            calling_ae,
            level,
            matches = sent,
            %status,
            elapsed_ms,
            "C-FIND failed: {failure}"
        ),
    }
    let audit_outcome = if status == Status::SUCCESS || status == Status::CANCEL {
        AuditOutcome::Success
    } else if status == Status::OUT_OF_RESOURCES {
        AuditOutcome::MinorFailure
    } else {
        AuditOutcome::SeriousFailure
    };
    query.record(dispatcher, link, audit_outcome);
    let mut response = Command::find_rsp(command, status, false);
    if let Some(comment) = comment {
        response = response.with_error_comment(comment);
    }
    link.send_command(pc_id, &response)
}

/// The Query audit message of one C-FIND request (PS3.15 A.5.3.12): the
/// caller, this AE, and the identifier as received.
struct QueryAudit<'a> {
    sop_class_uid: &'a str,
    transfer_syntax_uid: &'a str,
    identifier: &'a [u8],
}

impl<'a> QueryAudit<'a> {
    fn new(sop_class_uid: &'a str, transfer_syntax_uid: &'a str, identifier: &'a [u8]) -> Self {
        QueryAudit {
            sop_class_uid,
            transfer_syntax_uid,
            identifier,
        }
    }

    fn record(&self, dispatcher: &Dispatcher, link: &Link, outcome: AuditOutcome) {
        if !dispatcher.auditor.is_enabled() {
            return;
        }
        dispatcher.auditor.record(
            AuditEvent::new(EventKind::Query, Action::Execute, outcome)
                .participant(dispatcher.caller(link, Role::Source))
                .participant(dispatcher.us(Role::Destination))
                .in_partition(dispatcher.partition.id)
                .object(ParticipantObject::Query {
                    sop_class_uid: self.sop_class_uid.to_string(),
                    transfer_syntax_uid: self.transfer_syntax_uid.to_string(),
                    identifier: self.identifier.to_vec(),
                }),
        );
    }
}

/// ErrorComment is LO in the default repertoire: other characters become `?`.
fn ascii(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii() && !c.is_ascii_control() {
                c
            } else {
                '?'
            }
        })
        .collect()
}
