//! DIMSE status codes and their classification.

use std::fmt;

/// A DIMSE status code (PS3.7 Annex C, PS3.4 B.2.3/C.4).
///
/// Several services reuse a value with a different meaning; such values get
/// one constant per meaning (e.g. [`Status::SUBOPS_WARNING`] and
/// [`Status::COERCION_OF_DATA_ELEMENTS`] are both `0xB000`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Status(pub u16);

impl Status {
    /// Success (all services).
    pub const SUCCESS: Status = Status(0x0000);
    /// Pending: matches or sub-operations are continuing (C-FIND/C-MOVE/C-GET).
    pub const PENDING: Status = Status(0xFF00);
    /// Pending, but one or more optional keys were not supported (C-FIND).
    pub const PENDING_WARNING: Status = Status(0xFF01);
    /// Matching or sub-operations terminated by a C-CANCEL.
    pub const CANCEL: Status = Status(0xFE00);
    /// Refused: out of resources (C-STORE/C-FIND).
    pub const OUT_OF_RESOURCES: Status = Status(0xA700);
    /// Refused: out of resources, unable to calculate the number of matches
    /// (C-MOVE/C-GET).
    pub const OUT_OF_RESOURCES_MATCHES: Status = Status(0xA701);
    /// Refused: out of resources, unable to perform sub-operations
    /// (C-MOVE/C-GET).
    pub const OUT_OF_RESOURCES_SUBOPS: Status = Status(0xA702);
    /// Refused: move destination unknown (C-MOVE).
    pub const MOVE_DESTINATION_UNKNOWN: Status = Status(0xA801);
    /// Error: data set does not match SOP class (C-STORE).
    pub const DATASET_MISMATCH: Status = Status(0xA900);
    /// Failed: identifier does not match SOP class (C-FIND/C-MOVE/C-GET).
    pub const IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS: Status = Status(0xA900);
    /// Error: cannot understand (C-STORE; first value of the Cxxx range).
    pub const CANNOT_UNDERSTAND: Status = Status(0xC000);
    /// Failed: unable to process (C-FIND/C-MOVE/C-GET; PS3.4 gives the range
    /// Cxxx, `0xC000` is its conventional value).
    pub const UNABLE_TO_PROCESS: Status = Status(0xC000);
    /// Refused: SOP class not supported.
    pub const SOP_CLASS_NOT_SUPPORTED: Status = Status(0x0122);
    /// Failure: duplicate SOP instance.
    pub const DUPLICATE_SOP_INSTANCE: Status = Status(0x0111);
    /// Failure: unrecognized operation.
    pub const UNRECOGNIZED_OPERATION: Status = Status(0x0211);
    /// Failure: mistyped argument.
    pub const MISTYPED_ARGUMENT: Status = Status(0x0212);
    /// Refused: not authorized.
    pub const NOT_AUTHORIZED: Status = Status(0x0124);
    /// Failure: processing failure.
    pub const PROCESSING_FAILURE: Status = Status(0x0110);
    /// Warning: sub-operations complete, one or more failures or warnings
    /// (C-MOVE/C-GET).
    pub const SUBOPS_WARNING: Status = Status(0xB000);
    /// Warning: coercion of data elements (C-STORE).
    pub const COERCION_OF_DATA_ELEMENTS: Status = Status(0xB000);
    /// Warning: elements discarded (C-STORE).
    pub const ELEMENTS_DISCARDED: Status = Status(0xB006);
    /// Warning: data set does not match SOP class (C-STORE).
    pub const DATASET_MISMATCH_WARNING: Status = Status(0xB007);

    /// The class of this status per PS3.7 Annex C: `0000` success;
    /// `FF00`/`FF01` pending; `FE00` cancel; `0001`, `0107`, `0116` and
    /// `Bxxx` warning; everything else failure.
    pub fn class(self) -> StatusClass {
        match self.0 {
            0x0000 => StatusClass::Success,
            0xFF00 | 0xFF01 => StatusClass::Pending,
            0xFE00 => StatusClass::Cancel,
            0x0001 | 0x0107 | 0x0116 | 0xB000..=0xBFFF => StatusClass::Warning,
            _ => StatusClass::Failure,
        }
    }

    /// Whether this status ends an operation (anything but pending).
    pub fn is_final(self) -> bool {
        self.class() != StatusClass::Pending
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#06X}", self.0)
    }
}

/// The class of a [`Status`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusClass {
    /// The operation succeeded.
    Success,
    /// The operation completed with a warning.
    Warning,
    /// The operation failed or was refused.
    Failure,
    /// The operation was cancelled.
    Cancel,
    /// More responses follow.
    Pending,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_classes() {
        let cases = [
            (0x0000, StatusClass::Success),
            (0xFF00, StatusClass::Pending),
            (0xFF01, StatusClass::Pending),
            (0xFE00, StatusClass::Cancel),
            (0xA700, StatusClass::Failure),
            (0xA900, StatusClass::Failure),
            (0xC000, StatusClass::Failure),
            (0xCFFF, StatusClass::Failure),
            (0xB000, StatusClass::Warning),
            (0xB006, StatusClass::Warning),
            (0x0001, StatusClass::Warning),
            (0x0107, StatusClass::Warning),
            (0x0116, StatusClass::Warning),
            (0x0122, StatusClass::Failure),
            (0x0211, StatusClass::Failure),
            (0x0110, StatusClass::Failure),
            (0xFFFF, StatusClass::Failure),
        ];
        for (code, class) in cases {
            assert_eq!(Status(code).class(), class, "{:#06X}", code);
        }
    }

    #[test]
    fn aliases_and_display() {
        assert_eq!(Status::SUBOPS_WARNING, Status::COERCION_OF_DATA_ELEMENTS);
        assert_eq!(
            Status::DATASET_MISMATCH,
            Status::IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS
        );
        assert_eq!(Status::CANNOT_UNDERSTAND, Status::UNABLE_TO_PROCESS);
        assert_eq!(Status::OUT_OF_RESOURCES.to_string(), "0xA700");
        assert!(!Status::PENDING.is_final());
        assert!(Status::CANCEL.is_final());
    }
}
