//! The audit event model: the DICOM audit messages of PS3.15 A.5.3 that
//! the archive emits, as values. [`super::xml`] writes them as the DICOM
//! audit message XML (PS3.15 A.5.1).

use std::collections::BTreeMap;

use crate::model::PartitionId;

/// A coded value (`csd-code`, `codeSystemName`, `originalText`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Code {
    /// The code value.
    pub code: &'static str,
    /// The coding scheme (`DCM`, `RFC-3881`).
    pub scheme: &'static str,
    /// The code meaning.
    pub meaning: &'static str,
}

const fn dcm(code: &'static str, meaning: &'static str) -> Code {
    Code {
        code,
        scheme: "DCM",
        meaning,
    }
}

/// The events the archive emits (PS3.15 A.5.3, EventID).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventKind {
    /// 110100 Application Activity: the server started or stopped.
    ApplicationActivity,
    /// 110113 Security Alert: an association refused by the access policy,
    /// an operation the device lacks the permission for.
    SecurityAlert,
    /// 110104 DICOM Instances Transferred: a study's instances stored or
    /// sent on one association.
    InstancesTransferred,
    /// 110112 Query: one C-FIND request.
    Query,
    /// 110102 Begin Transferring DICOM Instances: a C-MOVE/C-GET starts.
    BeginTransferring,
    /// 110103 DICOM Instances Accessed: a study edited or reprocessed.
    InstancesAccessed,
    /// 110105 DICOM Study Deleted.
    StudyDeleted,
    /// 110110 Patient Record: an edit changed patient demographics.
    PatientRecord,
    /// 110114 User Authentication: a caller's User Identity (PS3.7
    /// D.3.3.7) refused (type Login, outcome minor failure).
    UserAuthentication,
}

impl EventKind {
    /// The EventID code.
    pub fn code(self) -> Code {
        match self {
            EventKind::ApplicationActivity => dcm("110100", "Application Activity"),
            EventKind::SecurityAlert => dcm("110113", "Security Alert"),
            EventKind::InstancesTransferred => dcm("110104", "DICOM Instances Transferred"),
            EventKind::Query => dcm("110112", "Query"),
            EventKind::BeginTransferring => dcm("110102", "Begin Transferring DICOM Instances"),
            EventKind::InstancesAccessed => dcm("110103", "DICOM Instances Accessed"),
            EventKind::StudyDeleted => dcm("110105", "DICOM Study Deleted"),
            EventKind::PatientRecord => dcm("110110", "Patient Record"),
            EventKind::UserAuthentication => dcm("110114", "User Authentication"),
        }
    }

    /// The `audit_log` action of the event (`atna.<name>`).
    pub fn action(self) -> &'static str {
        match self {
            EventKind::ApplicationActivity => "atna.application-activity",
            EventKind::SecurityAlert => "atna.security-alert",
            EventKind::InstancesTransferred => "atna.instances-transferred",
            EventKind::Query => "atna.query",
            EventKind::BeginTransferring => "atna.begin-transferring",
            EventKind::InstancesAccessed => "atna.instances-accessed",
            EventKind::StudyDeleted => "atna.study-deleted",
            EventKind::PatientRecord => "atna.patient-record",
            EventKind::UserAuthentication => "atna.user-authentication",
        }
    }
}

/// EventTypeCode values used with [`EventKind::ApplicationActivity`] and
/// [`EventKind::SecurityAlert`].
pub mod types {
    use super::{dcm, Code};

    /// 110120 Application Start.
    pub const APPLICATION_START: Code = dcm("110120", "Application Start");
    /// 110121 Application Stop.
    pub const APPLICATION_STOP: Code = dcm("110121", "Application Stop");
    /// 110122 Login: with [`super::EventKind::UserAuthentication`].
    pub const LOGIN: Code = dcm("110122", "Login");
    /// 110126 Node Authentication: an association refused (by the access
    /// policy, or a failed TLS handshake).
    pub const NODE_AUTHENTICATION: Code = dcm("110126", "Node Authentication");
    /// 110128 Network Configuration: a known device added, changed or
    /// removed through the admin API or pages.
    pub const NETWORK_CONFIGURATION: Code = dcm("110128", "Network Configuration");
    /// 110131 Software Configuration: a work item retried, deleted,
    /// reprioritised or postponed by an operator.
    pub const SOFTWARE_CONFIGURATION: Code = dcm("110131", "Software Configuration");
    /// 110132 Use of a restricted function: an operation without permission.
    pub const RESTRICTED_FUNCTION: Code = dcm("110132", "Use of a restricted function");
}

/// EventActionCode (PS3.15 A.5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// C: create.
    Create,
    /// R: read.
    Read,
    /// U: update.
    Update,
    /// D: delete.
    Delete,
    /// E: execute.
    Execute,
}

impl Action {
    /// The code letter.
    pub fn letter(self) -> &'static str {
        match self {
            Action::Create => "C",
            Action::Read => "R",
            Action::Update => "U",
            Action::Delete => "D",
            Action::Execute => "E",
        }
    }
}

/// EventOutcomeIndicator (PS3.15 A.5.1): 0, 4, 8 or 12.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    /// 0: success.
    Success,
    /// 4: minor failure (the action was restarted or partly done).
    MinorFailure,
    /// 8: serious failure (the action was terminated).
    SeriousFailure,
    /// 12: major failure (the action made unavailable).
    MajorFailure,
}

impl Outcome {
    /// The indicator's number.
    pub fn value(self) -> u8 {
        match self {
            Outcome::Success => 0,
            Outcome::MinorFailure => 4,
            Outcome::SeriousFailure => 8,
            Outcome::MajorFailure => 12,
        }
    }
}

/// RoleIDCode of an active participant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// 110153 Source Role ID.
    Source,
    /// 110152 Destination Role ID.
    Destination,
    /// 110150 Application.
    Application,
    /// 110151 Application Launcher.
    ApplicationLauncher,
}

impl Role {
    /// The role's code.
    pub fn code(self) -> Code {
        match self {
            Role::Source => dcm("110153", "Source Role ID"),
            Role::Destination => dcm("110152", "Destination Role ID"),
            Role::Application => dcm("110150", "Application"),
            Role::ApplicationLauncher => dcm("110151", "Application Launcher"),
        }
    }
}

/// An ActiveParticipant: a person or process taking part in the event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Participant {
    /// UserID: an AE title, a process or a user name.
    pub user_id: String,
    /// AlternativeUserID (e.g. `AETITLES=…`, a process id).
    pub alternative_user_id: Option<String>,
    /// UserName: for a caller authenticated by a TLS client certificate,
    /// the certificate's subject.
    pub user_name: Option<String>,
    /// Whether this participant asked for the event.
    pub requestor: bool,
    /// NetworkAccessPointID: an IP address (type 2) or host name (type 1).
    pub network_access_point: Option<String>,
    /// RoleIDCode.
    pub role: Option<Role>,
}

impl Participant {
    /// A participant that is a DICOM application entity, by AE title.
    pub fn ae(ae_title: &str, requestor: bool, address: Option<String>, role: Role) -> Participant {
        Participant {
            user_id: ae_title.trim().to_string(),
            alternative_user_id: Some(format!("AETITLES={}", ae_title.trim())),
            user_name: None,
            requestor,
            network_access_point: address,
            role: Some(role),
        }
    }

    /// A person or process named by `user_id` (an operator, a work item).
    pub fn user(user_id: &str, requestor: bool) -> Participant {
        Participant {
            user_id: user_id.to_string(),
            alternative_user_id: None,
            user_name: None,
            requestor,
            network_access_point: None,
            role: None,
        }
    }
}

/// A ParticipantObjectIdentification: what the event was about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParticipantObject {
    /// A study (type 2 system object, role 3 report, ID type 110180),
    /// with its instance counts per SOP class when known.
    Study {
        /// Study Instance UID.
        uid: String,
        /// Instances per SOP Class UID.
        sop_classes: BTreeMap<String, u64>,
    },
    /// A patient (type 1 person, role 1 patient, ID type 2).
    Patient {
        /// Patient ID.
        id: String,
        /// Patient's Name, when known.
        name: Option<String>,
    },
    /// A query (type 2, role 3, ID type 110181 SOP Class UID).
    Query {
        /// The query's SOP class.
        sop_class_uid: String,
        /// The transfer syntax of the identifier.
        transfer_syntax_uid: String,
        /// The identifier's bytes (sent base64 in ParticipantObjectQuery).
        identifier: Vec<u8>,
    },
}

/// One audit event (PS3.15 A.5.3), before its audit source is added.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    /// EventID.
    pub kind: EventKind,
    /// EventActionCode.
    pub action: Action,
    /// EventOutcomeIndicator.
    pub outcome: Outcome,
    /// EventOutcomeDescription, when not a success.
    pub outcome_description: Option<String>,
    /// EventTypeCode, when the event has one.
    pub type_code: Option<Code>,
    /// EventDateTime (ms since the Unix epoch).
    pub at_ms: i64,
    /// ActiveParticipant entries.
    pub participants: Vec<Participant>,
    /// ParticipantObjectIdentification entries.
    pub objects: Vec<ParticipantObject>,
    /// The partition concerned (the `audit_log` row's), if any.
    pub partition: Option<PartitionId>,
}

impl AuditEvent {
    /// An event of `kind` stamped now, with no participants yet.
    pub fn new(kind: EventKind, action: Action, outcome: Outcome) -> AuditEvent {
        AuditEvent {
            kind,
            action,
            outcome,
            outcome_description: None,
            type_code: None,
            at_ms: crate::db::studies::now_ms(),
            participants: Vec::new(),
            objects: Vec::new(),
            partition: None,
        }
    }

    /// Adds an active participant.
    pub fn participant(mut self, participant: Participant) -> AuditEvent {
        self.participants.push(participant);
        self
    }

    /// Adds a participant object.
    pub fn object(mut self, object: ParticipantObject) -> AuditEvent {
        self.objects.push(object);
        self
    }

    /// Sets the EventTypeCode.
    pub fn type_code(mut self, code: Code) -> AuditEvent {
        self.type_code = Some(code);
        self
    }

    /// Sets the EventOutcomeDescription.
    pub fn described(mut self, description: impl Into<String>) -> AuditEvent {
        self.outcome_description = Some(description.into());
        self
    }

    /// Sets the partition.
    pub fn in_partition(mut self, partition: PartitionId) -> AuditEvent {
        self.partition = Some(partition);
        self
    }

    /// The first study the event is about, if any.
    pub fn study_uid(&self) -> Option<&str> {
        self.objects.iter().find_map(|o| match o {
            ParticipantObject::Study { uid, .. } => Some(uid.as_str()),
            _ => None,
        })
    }

    /// The requesting participant's user ID (else the first's, else `system`).
    pub fn actor(&self) -> &str {
        self.participants
            .iter()
            .find(|p| p.requestor)
            .or(self.participants.first())
            .map_or("system", |p| p.user_id.as_str())
    }
}

/// The instances of one operation, per study: what one
/// [`EventKind::InstancesTransferred`] message per study reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TransferTally {
    studies: BTreeMap<String, StudyTally>,
}

/// One study's share of a [`TransferTally`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StudyTally {
    /// The study's Patient ID, when known.
    pub patient_id: Option<String>,
    /// Instances done, per SOP Class UID.
    pub sop_classes: BTreeMap<String, u64>,
    /// Instances that failed.
    pub failed: u64,
}

impl TransferTally {
    /// Counts one instance of `study_uid` (done or failed).
    pub fn add(
        &mut self,
        study_uid: &str,
        sop_class_uid: &str,
        patient_id: Option<&str>,
        ok: bool,
    ) {
        // Allocates only for a study or SOP class not seen yet.
        if !self.studies.contains_key(study_uid) {
            self.studies
                .insert(study_uid.to_string(), StudyTally::default());
        }
        let study = self.studies.get_mut(study_uid).expect("inserted above");
        if study.patient_id.is_none() {
            study.patient_id = patient_id.filter(|p| !p.is_empty()).map(str::to_string);
        }
        if !ok {
            study.failed += 1;
        } else if let Some(count) = study.sop_classes.get_mut(sop_class_uid) {
            *count += 1;
        } else {
            study.sop_classes.insert(sop_class_uid.to_string(), 1);
        }
    }

    /// Whether nothing was counted.
    pub fn is_empty(&self) -> bool {
        self.studies.is_empty()
    }

    /// The studies counted, by UID.
    pub fn studies(&self) -> &BTreeMap<String, StudyTally> {
        &self.studies
    }

    /// One Instances Transferred event per study: `source` sent to
    /// `destination`, at the request of `requestor` when that is a third
    /// party (C-MOVE). Outcome 0 when nothing failed, 4 when some did, 8
    /// when none was done.
    pub fn events(
        self,
        action: Action,
        participants: &[Participant],
        partition: Option<PartitionId>,
    ) -> Vec<AuditEvent> {
        self.studies
            .into_iter()
            .map(|(uid, study)| {
                let done: u64 = study.sop_classes.values().sum();
                let outcome = match (study.failed, done) {
                    (0, _) => Outcome::Success,
                    (_, 0) => Outcome::SeriousFailure,
                    _ => Outcome::MinorFailure,
                };
                let mut event = AuditEvent::new(EventKind::InstancesTransferred, action, outcome);
                if study.failed > 0 {
                    event = event.described(format!(
                        "{} of {} instances failed",
                        study.failed,
                        study.failed + done
                    ));
                }
                event.participants = participants.to_vec();
                event.partition = partition;
                event = event.object(ParticipantObject::Study {
                    uid,
                    sop_classes: study.sop_classes,
                });
                if let Some(id) = study.patient_id {
                    event = event.object(ParticipantObject::Patient { id, name: None });
                }
                event
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tally_makes_one_event_per_study_with_counts_per_class() {
        let mut tally = TransferTally::default();
        tally.add("1.2.3", "1.2.840.10008.5.1.4.1.1.7", Some("P1"), true);
        tally.add("1.2.3", "1.2.840.10008.5.1.4.1.1.7", Some("P1"), true);
        tally.add("1.2.3", "1.2.840.10008.5.1.4.1.1.2", Some("P1"), true);
        tally.add("1.2.4", "1.2.840.10008.5.1.4.1.1.2", None, false);
        let events = tally.events(Action::Create, &[Participant::user("X", true)], None);
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].study_uid(), Some("1.2.3"));
        assert_eq!(events[0].outcome, Outcome::Success);
        match &events[0].objects[0] {
            ParticipantObject::Study { sop_classes, .. } => {
                assert_eq!(sop_classes["1.2.840.10008.5.1.4.1.1.7"], 2);
                assert_eq!(sop_classes["1.2.840.10008.5.1.4.1.1.2"], 1);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(events[1].outcome, Outcome::SeriousFailure);
        assert_eq!(events[1].actor(), "X");
    }
}
