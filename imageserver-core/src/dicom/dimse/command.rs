//! The DIMSE command set: values, constructors and the Implicit VR Little
//! Endian codec (PS3.7 section 9.3 and Annex E).

use super::{DimseError, Status};

/// The Verification SOP class, affected SOP class of C-ECHO.
const VERIFICATION_SOP_CLASS: &str = "1.2.840.10008.1.1";

/// CommandDataSetType value meaning "no data set".
const NO_DATASET: u16 = 0x0101;
/// CommandDataSetType value we send when a data set follows.
const DATASET_PRESENT: u16 = 0x0000;

/// Maximum length, in characters, of an LO value (ErrorComment).
const LO_MAX_CHARS: usize = 64;

/// Element numbers in group 0000 (PS3.7 Annex E).
mod tag {
    pub const GROUP_LENGTH: u16 = 0x0000;
    pub const AFFECTED_SOP_CLASS_UID: u16 = 0x0002;
    pub const REQUESTED_SOP_CLASS_UID: u16 = 0x0003;
    pub const COMMAND_FIELD: u16 = 0x0100;
    pub const MESSAGE_ID: u16 = 0x0110;
    pub const MESSAGE_ID_BEING_RESPONDED_TO: u16 = 0x0120;
    pub const MOVE_DESTINATION: u16 = 0x0600;
    pub const PRIORITY: u16 = 0x0700;
    pub const COMMAND_DATA_SET_TYPE: u16 = 0x0800;
    pub const STATUS: u16 = 0x0900;
    pub const OFFENDING_ELEMENT: u16 = 0x0901;
    pub const ERROR_COMMENT: u16 = 0x0902;
    pub const AFFECTED_SOP_INSTANCE_UID: u16 = 0x1000;
    pub const REMAINING_SUBOPERATIONS: u16 = 0x1020;
    pub const COMPLETED_SUBOPERATIONS: u16 = 0x1021;
    pub const FAILED_SUBOPERATIONS: u16 = 0x1022;
    pub const WARNING_SUBOPERATIONS: u16 = 0x1023;
    pub const MOVE_ORIGINATOR_AE_TITLE: u16 = 0x1030;
    pub const MOVE_ORIGINATOR_MESSAGE_ID: u16 = 0x1031;
}

/// The DIMSE operation of a command set (CommandField, (0000,0100)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandField {
    /// C-STORE-RQ (0x0001).
    CStoreRq,
    /// C-STORE-RSP (0x8001).
    CStoreRsp,
    /// C-GET-RQ (0x0010).
    CGetRq,
    /// C-GET-RSP (0x8010).
    CGetRsp,
    /// C-FIND-RQ (0x0020).
    CFindRq,
    /// C-FIND-RSP (0x8020).
    CFindRsp,
    /// C-MOVE-RQ (0x0021).
    CMoveRq,
    /// C-MOVE-RSP (0x8021).
    CMoveRsp,
    /// C-ECHO-RQ (0x0030).
    CEchoRq,
    /// C-ECHO-RSP (0x8030).
    CEchoRsp,
    /// C-CANCEL-RQ (0x0FFF).
    CCancelRq,
    /// Any other code (N-* services, unknown values).
    Other(u16),
}

impl CommandField {
    /// The wire value.
    pub fn code(self) -> u16 {
        match self {
            CommandField::CStoreRq => 0x0001,
            CommandField::CStoreRsp => 0x8001,
            CommandField::CGetRq => 0x0010,
            CommandField::CGetRsp => 0x8010,
            CommandField::CFindRq => 0x0020,
            CommandField::CFindRsp => 0x8020,
            CommandField::CMoveRq => 0x0021,
            CommandField::CMoveRsp => 0x8021,
            CommandField::CEchoRq => 0x0030,
            CommandField::CEchoRsp => 0x8030,
            CommandField::CCancelRq => 0x0FFF,
            CommandField::Other(code) => code,
        }
    }

    /// The field for a wire value; unknown values map to [`CommandField::Other`].
    pub fn from_code(code: u16) -> Self {
        match code {
            0x0001 => CommandField::CStoreRq,
            0x8001 => CommandField::CStoreRsp,
            0x0010 => CommandField::CGetRq,
            0x8010 => CommandField::CGetRsp,
            0x0020 => CommandField::CFindRq,
            0x8020 => CommandField::CFindRsp,
            0x0021 => CommandField::CMoveRq,
            0x8021 => CommandField::CMoveRsp,
            0x0030 => CommandField::CEchoRq,
            0x8030 => CommandField::CEchoRsp,
            0x0FFF => CommandField::CCancelRq,
            other => CommandField::Other(other),
        }
    }

    /// Whether this is a response (bit 15 set).
    pub fn is_response(self) -> bool {
        self.code() & 0x8000 != 0
    }

    /// The matching response field (`code | 0x8000`).
    pub fn response(self) -> Self {
        CommandField::from_code(self.code() | 0x8000)
    }
}

/// Priority of a request ((0000,0700)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Priority {
    /// 0x0000.
    #[default]
    Medium,
    /// 0x0001.
    High,
    /// 0x0002.
    Low,
}

impl Priority {
    /// The wire value.
    pub fn code(self) -> u16 {
        match self {
            Priority::Medium => 0x0000,
            Priority::High => 0x0001,
            Priority::Low => 0x0002,
        }
    }

    /// The priority for a wire value; undefined values read as
    /// [`Priority::Medium`] (priority is advisory, no reason to fail on it).
    pub fn from_code(code: u16) -> Self {
        match code {
            0x0001 => Priority::High,
            0x0002 => Priority::Low,
            _ => Priority::Medium,
        }
    }
}

/// Sub-operation counters of a C-MOVE/C-GET response.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SubOpCounts {
    /// Remaining sub-operations; present in pending responses, absent in
    /// most final ones.
    pub remaining: Option<u16>,
    /// Completed sub-operations.
    pub completed: u16,
    /// Failed sub-operations.
    pub failed: u16,
    /// Sub-operations completed with a warning.
    pub warning: u16,
}

/// One decoded or to-be-encoded command set. Unset optional elements are not
/// encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// CommandField (0000,0100).
    pub field: CommandField,
    /// MessageID (0000,0110).
    pub message_id: Option<u16>,
    /// MessageIDBeingRespondedTo (0000,0120).
    pub message_id_being_responded_to: Option<u16>,
    /// AffectedSOPClassUID (0000,0002).
    pub affected_sop_class_uid: Option<String>,
    /// AffectedSOPInstanceUID (0000,1000).
    pub affected_sop_instance_uid: Option<String>,
    /// RequestedSOPClassUID (0000,0003).
    pub requested_sop_class_uid: Option<String>,
    /// Priority (0000,0700).
    pub priority: Option<Priority>,
    /// CommandDataSetType (0000,0800): 0x0101 means no data set, any other
    /// value that one follows.
    pub has_dataset: bool,
    /// Status (0000,0900).
    pub status: Option<Status>,
    /// ErrorComment (0000,0902), LO: truncated to 64 characters on encode.
    pub error_comment: Option<String>,
    /// OffendingElement (0000,0901), AT: tags as `(group << 16) | element`.
    pub offending_element: Option<Vec<u32>>,
    /// MoveDestination (0000,0600), AE.
    pub move_destination: Option<String>,
    /// MoveOriginatorApplicationEntityTitle (0000,1030), AE.
    pub move_originator_ae_title: Option<String>,
    /// MoveOriginatorMessageID (0000,1031).
    pub move_originator_message_id: Option<u16>,
    /// NumberOfRemainingSuboperations (0000,1020).
    pub remaining_suboperations: Option<u16>,
    /// NumberOfCompletedSuboperations (0000,1021).
    pub completed_suboperations: Option<u16>,
    /// NumberOfFailedSuboperations (0000,1022).
    pub failed_suboperations: Option<u16>,
    /// NumberOfWarningSuboperations (0000,1023).
    pub warning_suboperations: Option<u16>,
}

/// How a string value is padded and trimmed.
#[derive(Clone, Copy)]
enum Text {
    /// UI: pad with NUL.
    Uid,
    /// AE, LO: pad with space.
    Spaced,
}

impl Command {
    /// A command with the given field and every optional element unset.
    pub fn new(field: CommandField) -> Self {
        Command {
            field,
            message_id: None,
            message_id_being_responded_to: None,
            affected_sop_class_uid: None,
            affected_sop_instance_uid: None,
            requested_sop_class_uid: None,
            priority: None,
            has_dataset: false,
            status: None,
            error_comment: None,
            offending_element: None,
            move_destination: None,
            move_originator_ae_title: None,
            move_originator_message_id: None,
            remaining_suboperations: None,
            completed_suboperations: None,
            failed_suboperations: None,
            warning_suboperations: None,
        }
    }

    /// C-ECHO-RQ for the Verification SOP class.
    pub fn echo_rq(message_id: u16) -> Self {
        Command {
            message_id: Some(message_id),
            affected_sop_class_uid: Some(VERIFICATION_SOP_CLASS.to_string()),
            ..Command::new(CommandField::CEchoRq)
        }
    }

    /// C-STORE-RQ; `move_originator` is the (AE title, message id) of the
    /// C-MOVE that triggered this store, if any.
    pub fn store_rq(
        message_id: u16,
        sop_class: &str,
        sop_instance: &str,
        priority: Priority,
        move_originator: Option<(&str, u16)>,
    ) -> Self {
        Command {
            message_id: Some(message_id),
            affected_sop_class_uid: Some(sop_class.to_string()),
            affected_sop_instance_uid: Some(sop_instance.to_string()),
            priority: Some(priority),
            has_dataset: true,
            move_originator_ae_title: move_originator.map(|(ae, _)| ae.to_string()),
            move_originator_message_id: move_originator.map(|(_, id)| id),
            ..Command::new(CommandField::CStoreRq)
        }
    }

    /// C-FIND-RQ; the identifier follows as the data set.
    pub fn find_rq(message_id: u16, sop_class: &str, priority: Priority) -> Self {
        Self::query_rq(CommandField::CFindRq, message_id, sop_class, priority)
    }

    /// C-MOVE-RQ to `destination`; the identifier follows as the data set.
    pub fn move_rq(
        message_id: u16,
        sop_class: &str,
        priority: Priority,
        destination: &str,
    ) -> Self {
        Command {
            move_destination: Some(destination.to_string()),
            ..Self::query_rq(CommandField::CMoveRq, message_id, sop_class, priority)
        }
    }

    /// C-GET-RQ; the identifier follows as the data set.
    pub fn get_rq(message_id: u16, sop_class: &str, priority: Priority) -> Self {
        Self::query_rq(CommandField::CGetRq, message_id, sop_class, priority)
    }

    fn query_rq(field: CommandField, message_id: u16, sop_class: &str, priority: Priority) -> Self {
        Command {
            message_id: Some(message_id),
            affected_sop_class_uid: Some(sop_class.to_string()),
            priority: Some(priority),
            has_dataset: true,
            ..Command::new(field)
        }
    }

    /// C-CANCEL-RQ for the operation with the given message id.
    pub fn cancel_rq(message_id_being_responded_to: u16) -> Self {
        Command {
            message_id_being_responded_to: Some(message_id_being_responded_to),
            ..Command::new(CommandField::CCancelRq)
        }
    }

    /// C-ECHO-RSP to `req`.
    pub fn echo_rsp(req: &Command, status: Status) -> Self {
        let mut rsp = Self::rsp(CommandField::CEchoRsp, req, status, false);
        rsp.affected_sop_class_uid
            .get_or_insert_with(|| VERIFICATION_SOP_CLASS.to_string());
        rsp
    }

    /// C-STORE-RSP to `req`, copying the affected SOP class and instance.
    pub fn store_rsp(req: &Command, status: Status) -> Self {
        Command {
            affected_sop_instance_uid: req.affected_sop_instance_uid.clone(),
            ..Self::rsp(CommandField::CStoreRsp, req, status, false)
        }
    }

    /// C-FIND-RSP to `req`; `has_dataset` for pending responses carrying a
    /// match.
    pub fn find_rsp(req: &Command, status: Status, has_dataset: bool) -> Self {
        Self::rsp(CommandField::CFindRsp, req, status, has_dataset)
    }

    /// C-MOVE-RSP to `req` with sub-operation counters.
    pub fn move_rsp(req: &Command, status: Status, counts: SubOpCounts, has_dataset: bool) -> Self {
        Self::rsp(CommandField::CMoveRsp, req, status, has_dataset).with_counts(counts)
    }

    /// C-GET-RSP to `req` with sub-operation counters.
    pub fn get_rsp(req: &Command, status: Status, counts: SubOpCounts, has_dataset: bool) -> Self {
        Self::rsp(CommandField::CGetRsp, req, status, has_dataset).with_counts(counts)
    }

    /// A response without data set to any request, e.g. a failure for an
    /// unrecognized command: the field is the request's with bit 15 set
    /// (`Other(x)` gives `Other(x | 0x8000)`); affected SOP class and
    /// instance are copied when present.
    pub fn response_for(req: &Command, status: Status) -> Self {
        Command {
            affected_sop_instance_uid: req.affected_sop_instance_uid.clone(),
            ..Self::rsp(req.field.response(), req, status, false)
        }
    }

    fn rsp(field: CommandField, req: &Command, status: Status, has_dataset: bool) -> Self {
        Command {
            message_id_being_responded_to: req.message_id,
            affected_sop_class_uid: req.affected_sop_class_uid.clone(),
            status: Some(status),
            has_dataset,
            ..Command::new(field)
        }
    }

    fn with_counts(mut self, counts: SubOpCounts) -> Self {
        self.remaining_suboperations = counts.remaining;
        self.completed_suboperations = Some(counts.completed);
        self.failed_suboperations = Some(counts.failed);
        self.warning_suboperations = Some(counts.warning);
        self
    }

    /// Sets the ErrorComment (0000,0902).
    pub fn with_error_comment(mut self, comment: impl Into<String>) -> Self {
        self.error_comment = Some(comment.into());
        self
    }

    /// Decodes a command set (Implicit VR Little Endian, group 0000).
    ///
    /// Unknown group-0000 elements are skipped and the group length value is
    /// not trusted; truncation, an element outside group 0000, a wrongly
    /// sized numeric value or a missing CommandField give
    /// [`DimseError::Malformed`].
    pub fn decode(bytes: &[u8]) -> Result<Command, DimseError> {
        let mut cmd = Command::new(CommandField::Other(0));
        let mut field = None;
        let mut has_dataset = None;
        let mut rest = bytes;
        while !rest.is_empty() {
            let Some((header, after)) = rest.split_first_chunk::<8>() else {
                return Err(malformed(format!(
                    "element header truncated: {} bytes left",
                    rest.len()
                )));
            };
            let group = u16::from_le_bytes([header[0], header[1]]);
            let element = u16::from_le_bytes([header[2], header[3]]);
            let len = u32::from_le_bytes([header[4], header[5], header[6], header[7]]) as usize;
            if group != 0x0000 {
                return Err(malformed(format!(
                    "element ({group:04X},{element:04X}) outside group 0000"
                )));
            }
            if len > after.len() {
                return Err(malformed(format!(
                    "element (0000,{element:04X}) length {len} exceeds the {} bytes left",
                    after.len()
                )));
            }
            let (value, next) = after.split_at(len);
            rest = next;
            match element {
                tag::GROUP_LENGTH => {
                    read_u32(element, value)?;
                }
                tag::AFFECTED_SOP_CLASS_UID => {
                    cmd.affected_sop_class_uid = Some(read_text(value, Text::Uid));
                }
                tag::REQUESTED_SOP_CLASS_UID => {
                    cmd.requested_sop_class_uid = Some(read_text(value, Text::Uid));
                }
                tag::COMMAND_FIELD => field = Some(read_u16(element, value)?),
                tag::MESSAGE_ID => cmd.message_id = Some(read_u16(element, value)?),
                tag::MESSAGE_ID_BEING_RESPONDED_TO => {
                    cmd.message_id_being_responded_to = Some(read_u16(element, value)?);
                }
                tag::MOVE_DESTINATION => {
                    cmd.move_destination = Some(read_text(value, Text::Spaced));
                }
                tag::PRIORITY => {
                    cmd.priority = Some(Priority::from_code(read_u16(element, value)?));
                }
                tag::COMMAND_DATA_SET_TYPE => has_dataset = Some(read_u16(element, value)?),
                tag::STATUS => cmd.status = Some(Status(read_u16(element, value)?)),
                tag::OFFENDING_ELEMENT => {
                    if !value.len().is_multiple_of(4) {
                        return Err(malformed(format!(
                            "offending element length {} is not a multiple of 4",
                            value.len()
                        )));
                    }
                    let tags = value
                        .chunks_exact(4)
                        .map(|c| {
                            let g = u16::from_le_bytes([c[0], c[1]]);
                            let e = u16::from_le_bytes([c[2], c[3]]);
                            (u32::from(g) << 16) | u32::from(e)
                        })
                        .collect();
                    cmd.offending_element = Some(tags);
                }
                tag::ERROR_COMMENT => cmd.error_comment = Some(read_text(value, Text::Spaced)),
                tag::AFFECTED_SOP_INSTANCE_UID => {
                    cmd.affected_sop_instance_uid = Some(read_text(value, Text::Uid));
                }
                tag::REMAINING_SUBOPERATIONS => {
                    cmd.remaining_suboperations = Some(read_u16(element, value)?);
                }
                tag::COMPLETED_SUBOPERATIONS => {
                    cmd.completed_suboperations = Some(read_u16(element, value)?);
                }
                tag::FAILED_SUBOPERATIONS => {
                    cmd.failed_suboperations = Some(read_u16(element, value)?);
                }
                tag::WARNING_SUBOPERATIONS => {
                    cmd.warning_suboperations = Some(read_u16(element, value)?);
                }
                tag::MOVE_ORIGINATOR_AE_TITLE => {
                    cmd.move_originator_ae_title = Some(read_text(value, Text::Spaced));
                }
                tag::MOVE_ORIGINATOR_MESSAGE_ID => {
                    cmd.move_originator_message_id = Some(read_u16(element, value)?);
                }
                _ => {} // unknown or unused group-0000 element: skip
            }
        }
        cmd.field = CommandField::from_code(
            field.ok_or_else(|| malformed("missing command field (0000,0100)".to_string()))?,
        );
        // A missing CommandDataSetType is a peer bug; reading it as "no data
        // set" keeps the message loop in step with what was sent.
        cmd.has_dataset = has_dataset.is_some_and(|v| v != NO_DATASET);
        Ok(cmd)
    }

    /// Encodes the command set: group length first, then the set elements in
    /// ascending tag order, values padded to even length.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        // group length placeholder, patched below
        put_element(&mut out, tag::GROUP_LENGTH, &[0; 4]);
        let body_start = out.len();

        let text = |out: &mut Vec<u8>, element, value: &Option<String>, kind| {
            if let Some(v) = value {
                put_text(out, element, v.as_bytes(), kind);
            }
        };
        let u16s = |out: &mut Vec<u8>, element, value: Option<u16>| {
            if let Some(v) = value {
                put_element(out, element, &v.to_le_bytes());
            }
        };

        text(
            &mut out,
            tag::AFFECTED_SOP_CLASS_UID,
            &self.affected_sop_class_uid,
            Text::Uid,
        );
        text(
            &mut out,
            tag::REQUESTED_SOP_CLASS_UID,
            &self.requested_sop_class_uid,
            Text::Uid,
        );
        u16s(&mut out, tag::COMMAND_FIELD, Some(self.field.code()));
        u16s(&mut out, tag::MESSAGE_ID, self.message_id);
        u16s(
            &mut out,
            tag::MESSAGE_ID_BEING_RESPONDED_TO,
            self.message_id_being_responded_to,
        );
        text(
            &mut out,
            tag::MOVE_DESTINATION,
            &self.move_destination,
            Text::Spaced,
        );
        u16s(&mut out, tag::PRIORITY, self.priority.map(Priority::code));
        let dataset_type = if self.has_dataset {
            DATASET_PRESENT
        } else {
            NO_DATASET
        };
        u16s(&mut out, tag::COMMAND_DATA_SET_TYPE, Some(dataset_type));
        u16s(&mut out, tag::STATUS, self.status.map(|s| s.0));
        if let Some(tags) = &self.offending_element {
            let value: Vec<u8> = tags
                .iter()
                .flat_map(|t| {
                    let [g0, g1] = ((t >> 16) as u16).to_le_bytes();
                    let [e0, e1] = (*t as u16).to_le_bytes();
                    [g0, g1, e0, e1]
                })
                .collect();
            put_element(&mut out, tag::OFFENDING_ELEMENT, &value);
        }
        if let Some(comment) = &self.error_comment {
            put_text(
                &mut out,
                tag::ERROR_COMMENT,
                sanitize_lo(comment).as_bytes(),
                Text::Spaced,
            );
        }
        text(
            &mut out,
            tag::AFFECTED_SOP_INSTANCE_UID,
            &self.affected_sop_instance_uid,
            Text::Uid,
        );
        u16s(
            &mut out,
            tag::REMAINING_SUBOPERATIONS,
            self.remaining_suboperations,
        );
        u16s(
            &mut out,
            tag::COMPLETED_SUBOPERATIONS,
            self.completed_suboperations,
        );
        u16s(
            &mut out,
            tag::FAILED_SUBOPERATIONS,
            self.failed_suboperations,
        );
        u16s(
            &mut out,
            tag::WARNING_SUBOPERATIONS,
            self.warning_suboperations,
        );
        text(
            &mut out,
            tag::MOVE_ORIGINATOR_AE_TITLE,
            &self.move_originator_ae_title,
            Text::Spaced,
        );
        u16s(
            &mut out,
            tag::MOVE_ORIGINATOR_MESSAGE_ID,
            self.move_originator_message_id,
        );

        let group_len = (out.len() - body_start) as u32;
        out[body_start - 4..body_start].copy_from_slice(&group_len.to_le_bytes());
        out
    }
}

fn malformed(msg: String) -> DimseError {
    DimseError::Malformed(msg)
}

fn read_u16(element: u16, value: &[u8]) -> Result<u16, DimseError> {
    match value {
        [a, b] => Ok(u16::from_le_bytes([*a, *b])),
        _ => Err(malformed(format!(
            "element (0000,{element:04X}) has length {}, expected 2",
            value.len()
        ))),
    }
}

fn read_u32(element: u16, value: &[u8]) -> Result<u32, DimseError> {
    match value {
        [a, b, c, d] => Ok(u32::from_le_bytes([*a, *b, *c, *d])),
        _ => Err(malformed(format!(
            "element (0000,{element:04X}) has length {}, expected 4",
            value.len()
        ))),
    }
}

/// Decodes a string value, stripping padding (trailing NULs and spaces;
/// leading spaces too for AE/LO, where they are insignificant).
fn read_text(value: &[u8], kind: Text) -> String {
    let s = String::from_utf8_lossy(value);
    let s = s.trim_end_matches(['\0', ' ']);
    let s = match kind {
        Text::Uid => s,
        Text::Spaced => s.trim_start_matches(' '),
    };
    s.to_string()
}

/// Appends one element with an already even-length value.
fn put_element(out: &mut Vec<u8>, element: u16, value: &[u8]) {
    debug_assert!(value.len().is_multiple_of(2));
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&element.to_le_bytes());
    out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    out.extend_from_slice(value);
}

/// Appends a string element padded to even length.
fn put_text(out: &mut Vec<u8>, element: u16, value: &[u8], kind: Text) {
    let padded_len = value.len() + value.len() % 2;
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&element.to_le_bytes());
    out.extend_from_slice(&(padded_len as u32).to_le_bytes());
    out.extend_from_slice(value);
    if value.len() % 2 == 1 {
        out.push(match kind {
            Text::Uid => b'\0',
            Text::Spaced => b' ',
        });
    }
}

/// Keeps an ErrorComment within LO: at most 64 characters of the default
/// repertoire, no backslash (the value separator) nor control characters.
fn sanitize_lo(s: &str) -> String {
    s.chars()
        .take(LO_MAX_CHARS)
        .map(|c| {
            if c.is_ascii_graphic() && c != '\\' || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use dicom_core::value::PrimitiveValue;
    use dicom_core::{DataElement, Tag, VR};
    use dicom_dictionary_std::tags;
    use dicom_object::InMemDicomObject;
    use dicom_transfer_syntax_registry::entries::IMPLICIT_VR_LITTLE_ENDIAN;

    const CT: &str = "1.2.840.10008.5.1.4.1.1.2";
    const FIND: &str = "1.2.840.10008.5.1.4.1.2.2.1";
    const MOVE: &str = "1.2.840.10008.5.1.4.1.2.2.2";
    const GET: &str = "1.2.840.10008.5.1.4.1.2.2.3";
    const INSTANCE: &str = "1.2.3.4.5"; // odd length

    /// Every constructor, with the request it answers where relevant.
    fn samples() -> Vec<(&'static str, Command)> {
        let store = Command::store_rq(7, CT, INSTANCE, Priority::High, Some(("MOVER", 3)));
        let find = Command::find_rq(8, FIND, Priority::Low);
        let mv = Command::move_rq(9, MOVE, Priority::Medium, "DEST_AE");
        let get = Command::get_rq(10, GET, Priority::Medium);
        let echo = Command::echo_rq(1);
        let counts = SubOpCounts {
            remaining: Some(4),
            completed: 2,
            failed: 1,
            warning: 0,
        };
        let mut unknown = Command::new(CommandField::Other(0x0120));
        unknown.message_id = Some(11);
        unknown.requested_sop_class_uid = Some(CT.to_string());
        unknown.offending_element = Some(vec![0x0000_0100, 0x0008_0018]);
        vec![
            ("echo_rq", echo.clone()),
            ("echo_rsp", Command::echo_rsp(&echo, Status::SUCCESS)),
            ("store_rq", store.clone()),
            (
                "store_rq no originator",
                Command::store_rq(1, CT, "1.2", Priority::Medium, None),
            ),
            (
                "store_rsp",
                Command::store_rsp(&store, Status::COERCION_OF_DATA_ELEMENTS),
            ),
            ("find_rq", find.clone()),
            ("find_rsp", Command::find_rsp(&find, Status::PENDING, true)),
            ("move_rq", mv.clone()),
            (
                "move_rsp",
                Command::move_rsp(&mv, Status::PENDING, counts, false),
            ),
            ("get_rq", get.clone()),
            (
                "get_rsp",
                Command::get_rsp(&get, Status::SUBOPS_WARNING, SubOpCounts::default(), false),
            ),
            ("cancel_rq", Command::cancel_rq(8)),
            ("unknown", unknown.clone()),
            (
                "response_for",
                Command::response_for(&unknown, Status::UNRECOGNIZED_OPERATION)
                    .with_error_comment("no such operation"),
            ),
        ]
    }

    #[test]
    fn round_trip_every_constructor() {
        for (name, cmd) in samples() {
            let bytes = cmd.encode();
            assert!(bytes.len().is_multiple_of(2), "{name}");
            let back = Command::decode(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(back, cmd, "{name}");
        }
    }

    #[test]
    fn constructor_contents() {
        let store = Command::store_rq(7, CT, INSTANCE, Priority::High, Some(("MOVER", 3)));
        let rsp = Command::store_rsp(&store, Status::SUCCESS);
        assert_eq!(rsp.field, CommandField::CStoreRsp);
        assert_eq!(rsp.message_id, None);
        assert_eq!(rsp.message_id_being_responded_to, Some(7));
        assert_eq!(rsp.affected_sop_class_uid.as_deref(), Some(CT));
        assert_eq!(rsp.affected_sop_instance_uid.as_deref(), Some(INSTANCE));
        assert!(!rsp.has_dataset);

        let mv = Command::move_rq(9, MOVE, Priority::Low, "DEST");
        let rsp = Command::move_rsp(&mv, Status::SUCCESS, SubOpCounts::default(), false);
        assert_eq!(rsp.remaining_suboperations, None);
        assert_eq!(rsp.completed_suboperations, Some(0));
        assert_eq!(rsp.failed_suboperations, Some(0));
        assert_eq!(rsp.warning_suboperations, Some(0));

        let echo = Command::echo_rsp(&Command::new(CommandField::CEchoRq), Status::SUCCESS);
        assert_eq!(
            echo.affected_sop_class_uid.as_deref(),
            Some(VERIFICATION_SOP_CLASS)
        );

        let fields = [
            (CommandField::CStoreRq, CommandField::CStoreRsp),
            (CommandField::CFindRq, CommandField::CFindRsp),
            (CommandField::CMoveRq, CommandField::CMoveRsp),
            (CommandField::CGetRq, CommandField::CGetRsp),
            (CommandField::CEchoRq, CommandField::CEchoRsp),
            (CommandField::Other(0x0140), CommandField::Other(0x8140)),
        ];
        for (rq, rsp) in fields {
            let r = Command::response_for(&Command::new(rq), Status::PROCESSING_FAILURE);
            assert_eq!(r.field, rsp);
            assert!(r.field.is_response() && !rq.is_response());
            assert_eq!(CommandField::from_code(rq.code()), rq);
            assert_eq!(CommandField::from_code(rsp.code()), rsp);
        }
    }

    #[test]
    fn group_length_is_correct() {
        for (name, cmd) in samples() {
            let bytes = cmd.encode();
            assert_eq!(&bytes[..8], &[0, 0, 0, 0, 4, 0, 0, 0], "{name}");
            let group_len = u32::from_le_bytes(bytes[8..12].try_into().unwrap());
            assert_eq!(group_len as usize, bytes.len() - 12, "{name}");
        }
    }

    #[test]
    fn tags_are_ascending() {
        for (name, cmd) in samples() {
            let bytes = cmd.encode();
            let mut rest = &bytes[..];
            let mut prev = None;
            while !rest.is_empty() {
                let element = u16::from_le_bytes([rest[2], rest[3]]);
                let len = u32::from_le_bytes(rest[4..8].try_into().unwrap()) as usize;
                assert!(prev < Some(element), "{name}: {element:04X} after {prev:?}");
                prev = Some(element);
                rest = &rest[8 + len..];
            }
        }
    }

    #[test]
    fn padding_table() {
        // (element, value, kind, expected encoded value, decoded)
        let cases: &[(u16, &str, Text, &[u8], &str)] = &[
            (
                tag::AFFECTED_SOP_INSTANCE_UID,
                "1.2.3",
                Text::Uid,
                b"1.2.3\0",
                "1.2.3",
            ),
            (
                tag::AFFECTED_SOP_INSTANCE_UID,
                "1.23",
                Text::Uid,
                b"1.23",
                "1.23",
            ),
            (tag::MOVE_DESTINATION, "ABC", Text::Spaced, b"ABC ", "ABC"),
            (tag::MOVE_DESTINATION, "", Text::Spaced, b"", ""),
        ];
        for &(element, value, kind, encoded, decoded) in cases {
            let mut out = Vec::new();
            put_text(&mut out, element, value.as_bytes(), kind);
            assert_eq!(&out[8..], encoded, "{value:?}");
            assert_eq!(read_text(&out[8..], kind), decoded);
        }
        let cmd = Command::store_rq(1, CT, INSTANCE, Priority::Medium, None);
        let bytes = cmd.encode();
        let needle = b"1.2.3.4.5\0";
        assert!(bytes.windows(needle.len()).any(|w| w == needle));
        // tolerant decoding: leading spaces of AE and stray trailing NULs
        assert_eq!(read_text(b" AE\0 ", Text::Spaced), "AE");
        assert_eq!(read_text(b"1.2 ", Text::Uid), "1.2");
    }

    #[test]
    fn error_comment_is_truncated_and_sanitized() {
        let long: String = "x".repeat(100);
        let cmd = Command::echo_rsp(&Command::echo_rq(1), Status::PROCESSING_FAILURE)
            .with_error_comment(long);
        let back = Command::decode(&cmd.encode()).unwrap();
        assert_eq!(back.error_comment.as_deref(), Some("x".repeat(64).as_str()));

        let cmd = cmd.with_error_comment("bad\\path\né");
        let back = Command::decode(&cmd.encode()).unwrap();
        assert_eq!(back.error_comment.as_deref(), Some("bad?path??"));
    }

    #[test]
    fn decode_tolerates_unknown_elements_and_defaults() {
        let mut bytes = Command::echo_rq(5).encode();
        // unknown (0000,5555) and ErrorID (0000,0903)
        bytes.extend_from_slice(&[0, 0, 0x55, 0x55, 2, 0, 0, 0, 1, 2]);
        bytes.extend_from_slice(&[0, 0, 0x03, 0x09, 2, 0, 0, 0, 1, 2]);
        assert_eq!(Command::decode(&bytes).unwrap(), Command::echo_rq(5));

        // no group length, no data set type, undefined priority
        let mut bytes = Vec::new();
        put_element(&mut bytes, tag::COMMAND_FIELD, &0x0020u16.to_le_bytes());
        put_element(&mut bytes, tag::PRIORITY, &9u16.to_le_bytes());
        let cmd = Command::decode(&bytes).unwrap();
        assert_eq!(cmd.field, CommandField::CFindRq);
        assert_eq!(cmd.priority, Some(Priority::Medium));
        assert!(!cmd.has_dataset);

        // any CommandDataSetType other than 0x0101 means a data set follows
        let mut bytes = Vec::new();
        put_element(&mut bytes, tag::COMMAND_FIELD, &0x0001u16.to_le_bytes());
        put_element(
            &mut bytes,
            tag::COMMAND_DATA_SET_TYPE,
            &0x0102u16.to_le_bytes(),
        );
        assert!(Command::decode(&bytes).unwrap().has_dataset);
    }

    #[test]
    fn decode_errors_table() {
        let valid = Command::store_rq(7, CT, INSTANCE, Priority::High, None).encode();
        let mut wrong_group = valid.clone();
        wrong_group.extend_from_slice(&[0x08, 0, 0x18, 0, 2, 0, 0, 0, b'1', 0]);
        let mut no_field = Vec::new();
        put_element(&mut no_field, tag::MESSAGE_ID, &1u16.to_le_bytes());
        let mut bad_us = Vec::new();
        put_element(&mut bad_us, tag::COMMAND_FIELD, &[1, 0, 0, 0]);
        let mut bad_at = Vec::new();
        put_element(&mut bad_at, tag::COMMAND_FIELD, &[1, 0]);
        put_element(&mut bad_at, tag::OFFENDING_ELEMENT, &[1, 0]);
        let cases: &[(&str, &[u8])] = &[
            ("truncated value", &valid[..valid.len() - 1]),
            ("truncated header", &valid[..valid.len() - 3]),
            ("only a partial header", &valid[..5]),
            ("element outside group 0000", &wrong_group),
            ("missing command field", &no_field),
            ("empty", &[]),
            ("wrong us length", &bad_us),
            ("wrong at length", &bad_at),
            ("huge length", &[0, 0, 0, 1, 0xFF, 0xFF, 0xFF, 0xFF, 1, 0]),
            ("garbage", b"\xde\xad\xbe\xef garbage"),
        ];
        for (name, bytes) in cases {
            match Command::decode(bytes) {
                Err(DimseError::Malformed(_)) => {}
                other => panic!("{name}: expected Malformed, got {other:?}"),
            }
        }
    }

    #[test]
    fn dicom_object_parses_our_encoding() {
        for (name, cmd) in samples() {
            let bytes = cmd.encode();
            let obj = InMemDicomObject::read_dataset_with_ts(
                &bytes[..],
                &IMPLICIT_VR_LITTLE_ENDIAN.erased(),
            )
            .unwrap_or_else(|e| panic!("{name}: {e}"));
            let u16_of = |tag| obj.element(tag).unwrap().to_int::<u16>().unwrap();
            let str_of = |tag| obj.element(tag).unwrap().to_str().unwrap().to_string();
            assert_eq!(
                obj.element(tags::COMMAND_GROUP_LENGTH)
                    .unwrap()
                    .to_int::<u32>()
                    .unwrap() as usize,
                bytes.len() - 12,
                "{name}"
            );
            assert_eq!(u16_of(tags::COMMAND_FIELD), cmd.field.code(), "{name}");
            let dst = u16_of(tags::COMMAND_DATA_SET_TYPE);
            assert_eq!(dst != NO_DATASET, cmd.has_dataset, "{name}");
            if let Some(id) = cmd.message_id {
                assert_eq!(u16_of(tags::MESSAGE_ID), id, "{name}");
            }
            if let Some(uid) = &cmd.affected_sop_class_uid {
                assert_eq!(&str_of(tags::AFFECTED_SOP_CLASS_UID), uid, "{name}");
            }
            if let Some(uid) = &cmd.affected_sop_instance_uid {
                assert_eq!(&str_of(tags::AFFECTED_SOP_INSTANCE_UID), uid, "{name}");
            }
            if let Some(ae) = &cmd.move_destination {
                assert_eq!(&str_of(tags::MOVE_DESTINATION), ae, "{name}");
            }
            if let Some(status) = cmd.status {
                assert_eq!(u16_of(tags::STATUS), status.0, "{name}");
            }
            if let Some(comment) = &cmd.error_comment {
                assert_eq!(&str_of(tags::ERROR_COMMENT), comment, "{name}");
            }
            if let Some(n) = cmd.completed_suboperations {
                assert_eq!(u16_of(tags::NUMBER_OF_COMPLETED_SUBOPERATIONS), n, "{name}");
            }
            if let Some(at) = &cmd.offending_element {
                let got: Vec<Tag> = obj
                    .element(tags::OFFENDING_ELEMENT)
                    .unwrap()
                    .value()
                    .primitive()
                    .unwrap()
                    .tags()
                    .unwrap()
                    .to_vec();
                let want: Vec<Tag> = at
                    .iter()
                    .map(|t| Tag((t >> 16) as u16, *t as u16))
                    .collect();
                assert_eq!(got, want, "{name}");
            }
        }
    }

    #[test]
    fn we_parse_dicom_object_encoding() {
        let obj = InMemDicomObject::command_from_element_iter([
            DataElement::new(
                tags::AFFECTED_SOP_CLASS_UID,
                VR::UI,
                PrimitiveValue::from(CT),
            ),
            DataElement::new(tags::COMMAND_FIELD, VR::US, PrimitiveValue::from(0x0001u16)),
            DataElement::new(tags::MESSAGE_ID, VR::US, PrimitiveValue::from(42u16)),
            DataElement::new(tags::PRIORITY, VR::US, PrimitiveValue::from(2u16)),
            DataElement::new(
                tags::COMMAND_DATA_SET_TYPE,
                VR::US,
                PrimitiveValue::from(0x0000u16),
            ),
            DataElement::new(
                tags::AFFECTED_SOP_INSTANCE_UID,
                VR::UI,
                PrimitiveValue::from(INSTANCE),
            ),
            DataElement::new(
                tags::MOVE_ORIGINATOR_APPLICATION_ENTITY_TITLE,
                VR::AE,
                PrimitiveValue::from("MOVER"),
            ),
            DataElement::new(
                tags::MOVE_ORIGINATOR_MESSAGE_ID,
                VR::US,
                PrimitiveValue::from(3u16),
            ),
        ]);
        let mut bytes = Vec::new();
        obj.write_dataset_with_ts(&mut bytes, &IMPLICIT_VR_LITTLE_ENDIAN.erased())
            .unwrap();
        let cmd = Command::decode(&bytes).unwrap();
        assert_eq!(
            cmd,
            Command::store_rq(42, CT, INSTANCE, Priority::Low, Some(("MOVER", 3)))
        );
        // and byte-for-byte the same as ours
        assert_eq!(cmd.encode(), bytes);
    }

    /// Deterministic mutation fuzzing: decode never panics.
    #[test]
    fn decode_fuzz() {
        let seeds: Vec<Vec<u8>> = samples().into_iter().map(|(_, c)| c.encode()).collect();
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        let mut next = || {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (x >> 33) as usize
        };
        let mut ok = 0;
        for i in 0..10_000 {
            let mut bytes = seeds[i % seeds.len()].clone();
            for _ in 0..(next() % 4 + 1) {
                match next() % 4 {
                    0 | 1 => {
                        let i = next() % bytes.len();
                        bytes[i] = next() as u8;
                    }
                    2 => bytes.truncate(next() % (bytes.len() + 1)),
                    _ => bytes.push(next() as u8),
                }
                if bytes.is_empty() {
                    break;
                }
            }
            if let Ok(cmd) = Command::decode(&bytes) {
                ok += 1;
                // whatever decodes re-encodes to something that decodes alike
                let again = Command::decode(&cmd.encode()).unwrap();
                assert_eq!(again.field, cmd.field);
                assert_eq!(again.message_id, cmd.message_id);
            }
        }
        assert!(ok > 0 && ok < 10_000, "mutations should both pass and fail");
    }
}
