//! Verification SCP (C-ECHO).

use crate::dicom::dimse::{Command, Status};

/// Answers a C-ECHO-RQ with success.
pub fn handle(request: &Command) -> Command {
    tracing::debug!("C-ECHO");
    Command::echo_rsp(request, Status::SUCCESS)
}
