//! The reconcile queue: instances whose patient identity conflicted with
//! the stored study they name, held aside by ingest until a person decides
//! (ClearCanvas's study integrity queue).
//!
//! - **accept**: the instance's identity wins. The study is edited to it
//!   (a study edit: every file rewritten, history and audit kept; a new
//!   PatientID moves the study to that patient), then the held instance is
//!   stored into it.
//! - **merge**: the study's identity wins. The held file's patient
//!   attributes are rewritten to the study's (the splice a study edit
//!   uses), then it is stored into the study.
//! - **reject**: the held file is discarded.
//!
//! Each decision removes the entry and records an audit entry in one index
//! transaction once the instance is stored (accept, merge), and only then
//! deletes the held file: a decision interrupted before that is taken again
//! (the edit finds itself done, the store finds the instance identical).

use std::io::{self, Write};

use super::edit::EditValue;
use super::*;
use crate::model::{PatientIdentity, ReconcileEntry};
use crate::services::{Ingest, StoreRequest};

/// An entry of the reconcile queue beside the stored study's identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReconcileCase {
    /// The held instance and the identity it carries.
    pub entry: ReconcileEntry,
    /// The identity the study holds now (`None`: the study is gone).
    pub study_identity: Option<PatientIdentity>,
}

/// What a person decided about an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// The instance's identity wins: the study is edited to it.
    Accept,
    /// The study's identity wins: the instance is rewritten to it.
    Merge,
    /// The held instance is discarded.
    Reject,
}

impl Decision {
    fn action(self) -> &'static str {
        match self {
            Decision::Accept => "reconcile.accept",
            Decision::Merge => "reconcile.merge",
            Decision::Reject => "reconcile.reject",
        }
    }
}

/// The reconcile queue's operations: the study operations and the ingest
/// a held instance is stored through. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Reconcile {
    studies: Studies,
    ingest: Ingest,
}

impl Reconcile {
    /// The queue over `studies`, storing decided instances through `ingest`.
    pub fn new(studies: Studies, ingest: Ingest) -> Reconcile {
        Reconcile { studies, ingest }
    }

    /// The entries of a partition, oldest first.
    pub fn list(&self, partition: &Partition) -> Result<Vec<ReconcileEntry>, StudyError> {
        Ok(self.studies.store().reconcile_entries(partition.id)?)
    }

    /// One entry with the stored study's identity.
    pub fn show(&self, partition: &Partition, id: i64) -> Result<ReconcileCase, StudyError> {
        let entry = self.entry(partition, id)?;
        let study_identity = self
            .studies
            .store()
            .study(partition.id, &entry.location.study_uid)?
            .map(|record| PatientIdentity::of(&record.patient));
        Ok(ReconcileCase {
            entry,
            study_identity,
        })
    }

    /// Carries out a decision about entry `id` (see the module
    /// documentation); `actor` is recorded in the audit log (and the
    /// study's edit history for an accept).
    pub fn decide(
        &self,
        partition: &Partition,
        id: i64,
        decision: Decision,
        actor: &str,
    ) -> Result<(), StudyError> {
        let case = self.show(partition, id)?;
        let entry = &case.entry;
        let study_uid = &entry.location.study_uid;
        match decision {
            Decision::Reject => {}
            Decision::Accept => {
                if case.study_identity.is_some() {
                    let values = identity_values(&entry.identity);
                    let reason = format!("reconcile entry {id} accepted");
                    self.studies
                        .edit(partition, study_uid, &values, actor, &reason)?;
                }
                self.store_held(partition, entry, &entry.identity)?;
            }
            Decision::Merge => {
                let identity = case
                    .study_identity
                    .as_ref()
                    .ok_or_else(|| Studies::unknown(partition, study_uid))?;
                self.store_held(partition, entry, identity)?;
            }
        }
        let audit = AuditEntry::now(
            actor,
            decision.action(),
            partition.id,
            study_uid,
            JsonObject::new()
                .int("entry", i128::from(id))
                .string("sop_instance_uid", Some(entry.sop_instance_uid.as_str()))
                .string("patient_id", Some(&entry.identity.patient_id))
                .string("patient_name", entry.identity.patient_name.as_deref())
                .finish(),
        );
        self.studies
            .store()
            .resolve_reconcile(partition.id, id, &audit)?;
        let filesystem = self.studies.filesystem(entry.location.filesystem)?;
        self.studies
            .storage
            .delete_aside(&filesystem, &held_key(entry), entry.variant)?;
        tracing::info!(
            reconcile = id,
            decision = decision.action(),
            sop_instance_uid = %entry.sop_instance_uid,
            study_uid = %study_uid,
            actor,
            "reconcile entry decided"
        );
        Ok(())
    }

    fn entry(&self, partition: &Partition, id: i64) -> Result<ReconcileEntry, StudyError> {
        self.studies
            .store()
            .reconcile_entry(partition.id, id)?
            .ok_or(StudyError::UnknownReconcileEntry(id))
    }

    /// Stores the held file into its study through ingest, its patient
    /// attributes rewritten to `identity` (the splice of a study edit).
    fn store_held(
        &self,
        partition: &Partition,
        entry: &ReconcileEntry,
        identity: &PatientIdentity,
    ) -> Result<(), StudyError> {
        let file_error = |source: splice::SpliceError| StudyError::File {
            sop_instance_uid: entry.sop_instance_uid.clone(),
            source: Box::new(source),
        };
        let store_error = |source: crate::services::IngestError| StudyError::Store {
            sop_instance_uid: entry.sop_instance_uid.clone(),
            source: Box::new(source),
        };
        let values = identity_values(identity);
        let targets = edit::validate_values(&values)?;
        let filesystem = self.studies.filesystem(entry.location.filesystem)?;
        let mut source =
            self.studies
                .storage
                .open_aside(&filesystem, &held_key(entry), entry.variant)?;
        let head = splice::read_head(&mut source).map_err(file_error)?;
        splice::check(&head, &targets).map_err(file_error)?;
        let mut writer = self
            .ingest
            .begin(StoreRequest {
                partition,
                sop_class_uid: entry.sop_class_uid.as_str(),
                sop_instance_uid: entry.sop_instance_uid.as_str(),
                transfer_syntax_uid: entry.transfer_syntax_uid.as_str(),
                source_ae: entry.source_ae.as_deref(),
                // A person decided: the instance goes in even over a stored
                // copy of the same UID (where the partition's policy lets
                // anyone replace).
                may_replace: true,
            })
            .map_err(store_error)?;
        // Ingest writes its own file meta: only the data set goes in.
        let mut data_set = SkipPrefix {
            skip: head.prefix_len(),
            inner: &mut writer,
        };
        splice::write_edited(&head, &targets, &mut source, &mut data_set).map_err(file_error)?;
        let stored = self.ingest.finish(writer).map_err(store_error)?;
        if stored.outcome == crate::services::Stored::HeldForReconcile {
            return Err(StudyError::StillConflicts {
                sop_instance_uid: entry.sop_instance_uid.clone(),
            });
        }
        Ok(())
    }
}

/// The identity as edit values (an absent attribute as an empty value).
fn identity_values(identity: &PatientIdentity) -> Vec<EditValue> {
    let value = |attribute, value: Option<&str>| EditValue {
        attribute,
        value: value.unwrap_or("").trim_matches([' ', '\0']).to_string(),
    };
    vec![
        value(EditableAttribute::PatientId, Some(&identity.patient_id)),
        value(
            EditableAttribute::IssuerOfPatientId,
            identity.issuer_of_patient_id.as_deref(),
        ),
        value(
            EditableAttribute::PatientName,
            identity.patient_name.as_deref(),
        ),
        value(
            EditableAttribute::PatientBirthDate,
            identity.birth_date.as_deref(),
        ),
    ]
}

fn held_key(entry: &ReconcileEntry) -> InstanceKey {
    InstanceKey {
        location: entry.location.clone(),
        series_uid: entry.series_uid.clone(),
        sop_instance_uid: entry.sop_instance_uid.clone(),
    }
}

/// Drops the first `skip` bytes written (a file's preamble and meta group)
/// and passes the rest on.
struct SkipPrefix<'a, W: Write> {
    skip: usize,
    inner: &'a mut W,
}

impl<W: Write> Write for SkipPrefix<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let dropped = self.skip.min(buf.len());
        self.skip -= dropped;
        self.inner.write_all(&buf[dropped..])?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
