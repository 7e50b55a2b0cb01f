//! Storage SCP (C-STORE): the data set streams into the ingest service as
//! its fragments arrive; the response is sent only once ingest says the
//! instance is durable and indexed.

use tracing::{debug, warn};

use super::Dispatcher;
use crate::audit::TransferTally;
use crate::dicom::dimse::{Command, Status};
use crate::services::{IngestError, IngestWriter, StoreRequest};

/// A C-STORE whose data set is arriving.
pub struct StoreInProgress {
    writer: Result<IngestWriter, IngestError>,
}

impl StoreInProgress {
    /// Appends data set bytes (dropped if the store already failed).
    pub fn write(&mut self, bytes: &[u8]) {
        if let Ok(writer) = &mut self.writer {
            writer.write_data(bytes);
        }
    }
}

/// Starts a C-STORE on the presentation context's transfer syntax.
pub fn begin(
    dispatcher: &Dispatcher,
    calling_ae: &str,
    command: &Command,
    abstract_syntax: &str,
    transfer_syntax: &str,
) -> StoreInProgress {
    let sop_class_uid = command
        .affected_sop_class_uid
        .as_deref()
        .unwrap_or(abstract_syntax);
    let writer = dispatcher.ingest.begin(StoreRequest {
        partition: &dispatcher.partition,
        sop_class_uid,
        sop_instance_uid: command.affected_sop_instance_uid.as_deref().unwrap_or(""),
        transfer_syntax_uid: transfer_syntax,
        source_ae: Some(calling_ae),
        may_replace: dispatcher
            .devices
            .permits(calling_ae, crate::services::devices::Operation::Replace),
    });
    StoreInProgress { writer }
}

/// Completes a C-STORE and builds its response; a stored instance is
/// counted in `stored` (the association's audit tally).
pub fn finish(
    dispatcher: &Dispatcher,
    command: &Command,
    in_progress: StoreInProgress,
    stored: &mut TransferTally,
) -> Command {
    let started = std::time::Instant::now();
    let result = in_progress
        .writer
        .and_then(|writer| dispatcher.ingest.finish(writer));
    if let Some(observer) = &dispatcher.observer {
        match &result {
            Ok(outcome) => observer.stored(outcome.outcome.name(), Some(started.elapsed())),
            Err(error) => observer.stored(error.outcome_name(), None),
        }
    }
    let sop_instance_uid = command.affected_sop_instance_uid.as_deref().unwrap_or("");
    match result {
        Ok(outcome) => {
            if dispatcher.auditor.is_enabled() {
                let sop_class_uid = command.affected_sop_class_uid.as_deref().unwrap_or("");
                stored.add(
                    outcome.study_uid.as_str(),
                    sop_class_uid.trim_end_matches(['\0', ' ']),
                    Some(&outcome.patient_id),
                    true,
                );
            }
            debug!(
                study_uid = %outcome.study_uid,
                sop_instance_uid,
                bytes = outcome.file_size,
                outcome = ?outcome.outcome,
                "C-STORE stored"
            );
            Command::store_rsp(command, Status::SUCCESS)
        }
        Err(error) => {
            let status = status_of(&error);
            let detail = crate::model::error_chain(&error);
            warn!(
                sop_instance_uid = %sop_instance_uid.chars().take(80).collect::<String>(),
                status = %status,
                error = %detail,
                "C-STORE failed"
            );
            Command::store_rsp(command, status).with_error_comment(detail)
        }
    }
}

/// The C-STORE status of an ingest failure: A700 when resources ran out
/// (disk, database, the free space a filesystem must keep, the largest
/// instance accepted), A900 for an identifier mismatch, C000 for data we
/// cannot understand (a header beyond what we parse into memory
/// included), 0111 for a rejected duplicate.
pub fn status_of(error: &IngestError) -> Status {
    match error {
        IngestError::InvalidUid(_)
        | IngestError::MissingAttribute(_)
        | IngestError::TooLong { .. }
        | IngestError::Malformed(_)
        | IngestError::Unparseable(_)
        | IngestError::HeaderTooLarge { .. } => Status::CANNOT_UNDERSTAND,
        IngestError::Mismatch { .. } => Status::DATASET_MISMATCH,
        IngestError::NoFilesystem
        | IngestError::Storage(_)
        | IngestError::Index(_)
        | IngestError::Commit(_)
        | IngestError::TooLarge { .. }
        | IngestError::LowSpace { .. }
        | IngestError::Refused { .. }
        | IngestError::StudyDeleted(_)
        | IngestError::Restore(_) => Status::OUT_OF_RESOURCES,
        IngestError::Duplicate(_) => Status::DUPLICATE_SOP_INSTANCE,
    }
}
