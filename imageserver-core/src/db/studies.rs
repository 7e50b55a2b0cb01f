//! What the study operations (delete, edit, reprocess, send, integrity
//! check: `services::studies`) need from the index: [`StudyStore`].
//!
//! Every write method is one transaction, so each index effect of an
//! operation happens exactly once even when the operation is retried: the
//! services order their file work around these transactions (see
//! `services/studies.rs` for the crash-safety order of each operation).
//!
//! - **Delete** is two transactions around the file deletion.
//!   [`StudyStore::delete_study_rows`] removes the instance, series, study
//!   and duplicate rows, keeps the patient counters right (a patient left
//!   without studies goes), writes the audit record and leaves the study's
//!   `study_storage` row behind as a *tombstone* (state `deleting`) that
//!   still says where the files are. After the files are gone,
//!   [`StudyStore::finish_study_delete`] removes the tombstone. A retry finds
//!   the tombstone ([`StudyStore::deleting_study`]) and finishes the files.
//! - **Edit** records its target values first ([`StudyStore::begin_edit`]:
//!   a `pending` row of `study_edit`, at most one per study), rewrites the
//!   files, then [`StudyStore::complete_edit`] updates the patient/study
//!   rows and the instances' sizes and digests, marks the edit `completed`
//!   and writes the audit record, all in one transaction. The rows are the
//!   edit history ([`StudyStore::edit_history`]).
//! - **Reprocess** replaces a study's rows by a set rebuilt from its files
//!   in one transaction ([`StudyStore::replace_study_rows`]), unless rows
//!   were inserted since the [`RowFence`] it read before listing the files
//!   (ingest does not wait for reprocess): then nothing changes and it
//!   lists again.

use crate::db::Error;
use crate::model::{
    DuplicateRecord, InstanceRecord, PartitionId, PatientAttrs, ReconcileEntry, StoredInstance,
    StudyAttrs, StudyLocation, Uid,
};

/// A study as the index holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StudyRecord {
    /// The partition.
    pub partition: PartitionId,
    /// Where its files are; `None` while it has no online copy (nearline).
    pub location: Option<StudyLocation>,
    /// The patient it belongs to (issuer `None` when empty).
    pub patient: PatientAttrs,
    /// Its study attributes.
    pub study: StudyAttrs,
    /// Distinct modalities of its series, sorted, `\`-joined.
    pub modalities_in_study: String,
    /// Series counter.
    pub num_series: u64,
    /// Instance counter.
    pub num_instances: u64,
    /// Sum of the instances' file sizes.
    pub size_bytes: u64,
    /// How many studies its patient has (this one included).
    pub patient_num_studies: u64,
    /// When its first instance arrived (ms since the Unix epoch).
    pub received_at_ms: i64,
    /// When its rows last changed (ms since the Unix epoch).
    pub updated_at_ms: i64,
}

/// A study whose rows are deleted but whose files may not all be: the
/// tombstone [`StudyStore::delete_study_rows`] leaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeletingStudy {
    /// Where its files are.
    pub location: StudyLocation,
    /// When its rows were deleted (ms since the Unix epoch): files written
    /// later belong to instances that arrived afterwards.
    pub since_ms: i64,
}

/// What [`StudyStore::delete_study_rows`] removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeletedStudy {
    /// Where the study's files are (the tombstone keeps it).
    pub location: StudyLocation,
    /// The instance rows removed (their files are to be deleted).
    pub instances: Vec<StoredInstance>,
    /// The kept-aside duplicates removed (their files too).
    pub duplicates: Vec<DuplicateRecord>,
    /// Series rows removed.
    pub num_series: u64,
    /// Sum of the removed instances' file sizes.
    pub size_bytes: u64,
    /// When the rows were deleted (the tombstone's time).
    pub since_ms: i64,
}

/// A patient or study attribute a study edit may change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EditableAttribute {
    /// (0010,0010) PN.
    PatientName,
    /// (0010,0020) LO: moves the study to the patient with that ID.
    PatientId,
    /// (0010,0021) LO: part of the patient key, like PatientID.
    IssuerOfPatientId,
    /// (0010,0030) DA.
    PatientBirthDate,
    /// (0010,0040) CS.
    PatientSex,
    /// (0008,0020) DA. The study's date folder stays where it is.
    StudyDate,
    /// (0008,0030) TM.
    StudyTime,
    /// (0008,0050) SH.
    AccessionNumber,
    /// (0008,0090) PN.
    ReferringPhysicianName,
    /// (0008,1030) LO.
    StudyDescription,
    /// (0020,0010) SH.
    StudyId,
}

impl EditableAttribute {
    /// Every editable attribute, in tag order.
    pub const ALL: [EditableAttribute; 11] = [
        EditableAttribute::StudyDate,
        EditableAttribute::StudyTime,
        EditableAttribute::AccessionNumber,
        EditableAttribute::ReferringPhysicianName,
        EditableAttribute::StudyDescription,
        EditableAttribute::PatientName,
        EditableAttribute::PatientId,
        EditableAttribute::IssuerOfPatientId,
        EditableAttribute::PatientBirthDate,
        EditableAttribute::PatientSex,
        EditableAttribute::StudyId,
    ];

    /// The DICOM keyword (also the name stored in the edit history).
    pub fn keyword(self) -> &'static str {
        match self {
            EditableAttribute::PatientName => "PatientName",
            EditableAttribute::PatientId => "PatientID",
            EditableAttribute::IssuerOfPatientId => "IssuerOfPatientID",
            EditableAttribute::PatientBirthDate => "PatientBirthDate",
            EditableAttribute::PatientSex => "PatientSex",
            EditableAttribute::StudyDate => "StudyDate",
            EditableAttribute::StudyTime => "StudyTime",
            EditableAttribute::AccessionNumber => "AccessionNumber",
            EditableAttribute::ReferringPhysicianName => "ReferringPhysicianName",
            EditableAttribute::StudyDescription => "StudyDescription",
            EditableAttribute::StudyId => "StudyID",
        }
    }

    /// The attribute with this keyword (exact spelling).
    pub fn from_keyword(keyword: &str) -> Option<EditableAttribute> {
        EditableAttribute::ALL
            .into_iter()
            .find(|a| a.keyword() == keyword)
    }

    /// The DICOM tag as (group, element).
    pub fn tag(self) -> (u16, u16) {
        match self {
            EditableAttribute::PatientName => (0x0010, 0x0010),
            EditableAttribute::PatientId => (0x0010, 0x0020),
            EditableAttribute::IssuerOfPatientId => (0x0010, 0x0021),
            EditableAttribute::PatientBirthDate => (0x0010, 0x0030),
            EditableAttribute::PatientSex => (0x0010, 0x0040),
            EditableAttribute::StudyDate => (0x0008, 0x0020),
            EditableAttribute::StudyTime => (0x0008, 0x0030),
            EditableAttribute::AccessionNumber => (0x0008, 0x0050),
            EditableAttribute::ReferringPhysicianName => (0x0008, 0x0090),
            EditableAttribute::StudyDescription => (0x0008, 0x1030),
            EditableAttribute::StudyId => (0x0020, 0x0010),
        }
    }

    /// The value representation, as its two-letter code.
    pub fn vr(self) -> &'static str {
        match self {
            EditableAttribute::PatientName | EditableAttribute::ReferringPhysicianName => "PN",
            EditableAttribute::PatientId
            | EditableAttribute::IssuerOfPatientId
            | EditableAttribute::StudyDescription => "LO",
            EditableAttribute::PatientBirthDate | EditableAttribute::StudyDate => "DA",
            EditableAttribute::PatientSex => "CS",
            EditableAttribute::StudyTime => "TM",
            EditableAttribute::AccessionNumber | EditableAttribute::StudyId => "SH",
        }
    }

    /// Whether the attribute lives on the patient row.
    pub fn is_patient_level(self) -> bool {
        matches!(
            self,
            EditableAttribute::PatientName
                | EditableAttribute::PatientId
                | EditableAttribute::IssuerOfPatientId
                | EditableAttribute::PatientBirthDate
                | EditableAttribute::PatientSex
        )
    }

    /// The value a study record holds for this attribute (`None`: absent).
    pub fn value_in(self, record: &StudyRecord) -> Option<&str> {
        let (p, s) = (&record.patient, &record.study);
        match self {
            EditableAttribute::PatientName => p.patient_name.as_deref(),
            EditableAttribute::PatientId => Some(p.patient_id.as_str()).filter(|v| !v.is_empty()),
            EditableAttribute::IssuerOfPatientId => p.issuer_of_patient_id.as_deref(),
            EditableAttribute::PatientBirthDate => p.birth_date.as_deref(),
            EditableAttribute::PatientSex => p.sex.as_deref(),
            EditableAttribute::StudyDate => s.study_date.as_deref(),
            EditableAttribute::StudyTime => s.study_time.as_deref(),
            EditableAttribute::AccessionNumber => s.accession_number.as_deref(),
            EditableAttribute::ReferringPhysicianName => s.referring_physician_name.as_deref(),
            EditableAttribute::StudyDescription => s.study_description.as_deref(),
            EditableAttribute::StudyId => s.study_id.as_deref(),
        }
    }
}

impl std::fmt::Display for EditableAttribute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.keyword())
    }
}

/// One attribute of an edit: the value the index held before and the value
/// written (an empty value empties the attribute; the index stores it as
/// absent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttributeChange {
    /// The attribute.
    pub attribute: EditableAttribute,
    /// The index's value when the edit was requested (`None`: absent).
    pub old_value: Option<String>,
    /// The value written to the files and the index.
    pub new_value: String,
}

/// Where an edit stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EditStatus {
    /// Recorded; files may be partly rewritten; the rows are not updated.
    Pending,
    /// Files and rows carry the new values.
    Completed,
    /// The study was deleted while the edit was pending.
    Abandoned,
}

impl EditStatus {
    /// The stable name stored in the index.
    pub fn as_str(self) -> &'static str {
        match self {
            EditStatus::Pending => "pending",
            EditStatus::Completed => "completed",
            EditStatus::Abandoned => "abandoned",
        }
    }

    /// Parses the stable name.
    pub fn parse(name: &str) -> Option<EditStatus> {
        [
            EditStatus::Pending,
            EditStatus::Completed,
            EditStatus::Abandoned,
        ]
        .into_iter()
        .find(|s| s.as_str() == name)
    }
}

/// A study edit: the request and where it stands; the history entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EditRecord {
    /// Its key.
    pub id: i64,
    /// The partition.
    pub partition: PartitionId,
    /// The study.
    pub study_uid: Uid,
    /// Who asked for it.
    pub actor: String,
    /// Why.
    pub reason: String,
    /// Where it stands.
    pub status: EditStatus,
    /// When it was requested (ms since the Unix epoch).
    pub requested_at_ms: i64,
    /// When it completed or was abandoned.
    pub completed_at_ms: Option<i64>,
    /// The attributes it changes, in tag order of [`EditableAttribute::ALL`].
    pub changes: Vec<AttributeChange>,
}

/// The facts of one rewritten (or rebuilt) file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileFacts {
    /// The instance.
    pub sop_instance_uid: Uid,
    /// Size of the file in bytes.
    pub file_size: u64,
    /// BLAKE3 digest of the file, lowercase hex.
    pub digest: String,
}

/// A file a compression rewrote, as the index is to record it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecodedFile {
    /// The instance.
    pub sop_instance_uid: Uid,
    /// The digest of the file that was recoded (the row must still hold it).
    pub old_digest: String,
    /// The new file's transfer syntax.
    pub transfer_syntax_uid: String,
    /// The new file's size in bytes.
    pub file_size: u64,
    /// The new file's BLAKE3 digest, lowercase hex.
    pub digest: String,
}

/// What a compression does with its files inside
/// [`StudyStore::record_recoded_files`]'s transaction: a recoded file is put
/// in place only after its row changed, while the transaction holds the row
/// (and, on PostgreSQL, the study) locked, so a replacement (`accept_latest`)
/// whose row committed first keeps its file, and one committing later waits
/// and then puts its own file over the recode.
pub trait RecodedSwitch {
    /// Puts `file`'s recoded copy in place: called for each row the
    /// transaction just changed. A retried transaction calls it again for
    /// the same file; it must then succeed without doing anything. An error
    /// rolls the transaction back (the switch keeps the reason).
    fn put_in_place(&mut self, file: &RecodedFile) -> Result<(), SwitchFailed>;

    /// Makes everything put in place durable: called once before the
    /// commit, after the last [`RecodedSwitch::put_in_place`].
    fn make_durable(&mut self) -> Result<(), SwitchFailed>;
}

/// A [`RecodedSwitch`] failed: the transaction rolled back; the switch
/// holds the reason.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the recoded files could not be put in place")]
pub struct SwitchFailed;

/// One entry of the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    /// When (ms since the Unix epoch).
    pub at_ms: i64,
    /// Who: `cli:<user>`, `rule:<name>`, `workqueue:<item>`, ...
    pub actor: String,
    /// What: `study.delete`, `study.edit`, `study.reprocess`, `study.send`, ...
    pub action: String,
    /// The partition concerned.
    pub partition: Option<PartitionId>,
    /// The study concerned.
    pub study_uid: Option<Uid>,
    /// Details as a JSON object (why, counts, values).
    pub details: String,
}

impl AuditEntry {
    /// An entry stamped now.
    pub fn now(
        actor: &str,
        action: &str,
        partition: PartitionId,
        study_uid: &Uid,
        details: String,
    ) -> AuditEntry {
        AuditEntry {
            at_ms: now_ms(),
            actor: actor.to_string(),
            action: action.to_string(),
            partition: Some(partition),
            study_uid: Some(study_uid.clone()),
            details,
        }
    }
}

/// Which audit entries [`StudyStore::audit_entries`] lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditFilter {
    /// Only entries at or after this time (ms since the Unix epoch).
    pub since_ms: Option<i64>,
    /// Only entries of this action (`atna.query`, `study.delete`, …).
    pub action: Option<String>,
    /// Only entries about this study.
    pub study_uid: Option<Uid>,
    /// At most this many entries (the oldest that match).
    pub limit: u64,
}

impl Default for AuditFilter {
    fn default() -> AuditFilter {
        AuditFilter {
            since_ms: None,
            action: None,
            study_uid: None,
            limit: 1000,
        }
    }
}

/// What [`StudyStore::replace_study_rows`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReplaceOutcome {
    /// Instance rows the study had before.
    pub removed_instances: u64,
    /// Instance rows it has now.
    pub inserted_instances: u64,
}

/// The newest instance row of a study at one moment
/// ([`StudyStore::study_row_fence`]): every row inserted later has a
/// greater id (PostgreSQL's identity sequence; SQLite's rowid, one above the
/// table's largest). Ingest makes a file durable at its path before it
/// inserts the row, so a row at or below a fence read *before* a listing of
/// the study's files names a file that listing saw, unless the file is
/// really gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct RowFence(pub i64);

/// What [`StudyStore::migration_candidates`] answers: the bytes already
/// queued for migration, and (partition, study, bytes) of the studies that
/// may be.
pub type MigrationCandidates = (u64, Vec<(PartitionId, Uid, u64)>);

/// The index operations of study delete, edit, reprocess and send. Every
/// write method is one transaction; none touches files.
pub trait StudyStore: Send + Sync + std::fmt::Debug {
    /// The study, if the index has its rows.
    fn study(&self, partition: PartitionId, study_uid: &Uid) -> Result<Option<StudyRecord>, Error>;

    /// Every instance of the study with where its file is, ordered by
    /// series UID, instance number, SOP Instance UID. Empty when the study
    /// is unknown or nearline.
    fn study_instances(
        &self,
        partition: PartitionId,
        study_uid: &Uid,
    ) -> Result<Vec<StoredInstance>, Error>;

    /// A migration's switch: moves the study's location from filesystem
    /// `from` to `to` (the date and partition folders stay), only if it is
    /// still on `from`, not being deleted, and has exactly `instances`
    /// instance rows of `bytes` bytes in all (what was copied and
    /// verified; an instance that arrived meanwhile makes it false, and the
    /// migration copies again). Whether it moved.
    fn switch_study_location(
        &self,
        partition: PartitionId,
        study_uid: &Uid,
        from: crate::model::FilesystemId,
        to: crate::model::FilesystemId,
        instances: u64,
        bytes: u64,
    ) -> Result<bool, Error>;

    /// A compression's switch, in one transaction: each instance of `files`
    /// whose row still holds its `old_digest` takes the new transfer
    /// syntax, size and digest, and `switch` puts its file in place at
    /// once, under the row's lock; the study's size is recomputed,
    /// `switch` makes the files durable, and the transaction commits.
    /// Returns the rows changed (a row that changed meanwhile — a
    /// replacement — is left alone and its file is not touched). A failed
    /// switch rolls back and is an [`Error::Backend`] whose source is
    /// [`SwitchFailed`].
    fn record_recoded_files(
        &self,
        partition: PartitionId,
        study_uid: &Uid,
        files: &[RecodedFile],
        switch: &mut dyn RecodedSwitch,
    ) -> Result<u64, Error>;

    /// What the watermark service may migrate off `filesystem`: the bytes
    /// of its studies already named by an open `migrate_study` or `purge_study` item, and up
    /// to `limit` other studies (partition, study, bytes), least recently
    /// accessed (or, never accessed, arrived) first.
    fn migration_candidates(
        &self,
        filesystem: crate::model::FilesystemId,
        limit: u64,
    ) -> Result<crate::db::studies::MigrationCandidates, Error>;

    /// Records that the study was read at `now_ms` (a retrieve), unless an
    /// access after `now_ms - coarseness_ms` is recorded already (one write
    /// per study per `coarseness_ms` at most).
    fn touch_study(
        &self,
        partition: PartitionId,
        study_uid: &Uid,
        now_ms: i64,
        coarseness_ms: i64,
    ) -> Result<(), Error>;

    /// Deletes the study's instance, series, study and duplicate rows,
    /// recounts its patient (deleting it when left without studies),
    /// abandons a pending edit, marks the study storage row as the
    /// `deleting` tombstone and records `audit`, in one transaction.
    /// `None` (and nothing written) when the index has no study row.
    fn delete_study_rows(
        &self,
        partition: PartitionId,
        study_uid: &Uid,
        audit: &AuditEntry,
    ) -> Result<Option<DeletedStudy>, Error>;

    /// The tombstone of a study whose deletion has not finished, if any.
    fn deleting_study(
        &self,
        partition: PartitionId,
        study_uid: &Uid,
    ) -> Result<Option<DeletingStudy>, Error>;

    /// Ends a deletion once the files are gone: the tombstone is removed
    /// (or, when instances of the study arrived meanwhile or a work item
    /// still refers to it, turned back into an ordinary study storage row).
    /// Returns whether a tombstone was there.
    fn finish_study_delete(&self, partition: PartitionId, study_uid: &Uid) -> Result<bool, Error>;

    /// Records an edit of the study as `pending` with its changes, unless
    /// one is pending already: then that one is returned unchanged (the
    /// caller compares). Fails with [`Error::NotFound`] for an unknown study.
    fn begin_edit(
        &self,
        partition: PartitionId,
        study_uid: &Uid,
        changes: &[AttributeChange],
        actor: &str,
        reason: &str,
    ) -> Result<EditRecord, Error>;

    /// The study's pending edit, if any.
    fn pending_edit(
        &self,
        partition: PartitionId,
        study_uid: &Uid,
    ) -> Result<Option<EditRecord>, Error>;

    /// Completes a pending edit in one transaction: the patient and study
    /// rows take the new values (a changed PatientID or issuer moves the
    /// study to that patient, created if needed; counters follow), the
    /// instances take the sizes and digests of their rewritten `files`, the
    /// study's size is recomputed, the edit becomes `completed` and `audit`
    /// is recorded. Fails with [`Error::NotFound`] when the edit is not
    /// pending or the study is gone.
    fn complete_edit(
        &self,
        edit: &EditRecord,
        files: &[FileFacts],
        audit: &AuditEntry,
    ) -> Result<(), Error>;

    /// Every edit of the study, oldest first.
    fn edit_history(
        &self,
        partition: PartitionId,
        study_uid: &Uid,
    ) -> Result<Vec<EditRecord>, Error>;

    /// The study's [`RowFence`] now (`RowFence(0)` while it has no rows).
    fn study_row_fence(&self, partition: PartitionId, study_uid: &Uid) -> Result<RowFence, Error>;

    /// Replaces the study's instance, series and study rows by `records`
    /// (every one of this partition and study) in one transaction, with the
    /// counters right (patients left without studies go), and records
    /// `audit`. The study storage row (location) is kept. With no records,
    /// the study's rows are simply removed. `None`, with nothing changed,
    /// when the study holds a row inserted after `fence` (under the study's
    /// lock, so no insert slips in between the check and the replacement):
    /// `records` may lack it.
    fn replace_study_rows(
        &self,
        partition: PartitionId,
        study_uid: &Uid,
        records: &[InstanceRecord],
        fence: RowFence,
        audit: &AuditEntry,
    ) -> Result<Option<ReplaceOutcome>, Error>;

    /// The reconcile queue of a partition, oldest first.
    fn reconcile_entries(&self, partition: PartitionId) -> Result<Vec<ReconcileEntry>, Error>;

    /// One entry of the reconcile queue.
    fn reconcile_entry(
        &self,
        partition: PartitionId,
        id: i64,
    ) -> Result<Option<ReconcileEntry>, Error>;

    /// Removes an entry of the reconcile queue once a person decided, and
    /// records `audit`, in one transaction. Returns whether it was there.
    fn resolve_reconcile(
        &self,
        partition: PartitionId,
        id: i64,
        audit: &AuditEntry,
    ) -> Result<bool, Error>;

    /// Appends an entry to the audit log.
    fn record_audit(&self, entry: &AuditEntry) -> Result<(), Error>;

    /// The audit entries about a study, oldest first.
    fn audit_log(&self, partition: PartitionId, study_uid: &Uid) -> Result<Vec<AuditEntry>, Error>;

    /// The audit entries of every partition that `filter` selects, oldest
    /// first.
    fn audit_entries(&self, filter: &AuditFilter) -> Result<Vec<AuditEntry>, Error>;
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A value as the index stores it: DICOM padding trimmed, empty = absent.
pub(crate) fn index_text(value: &str) -> Option<&str> {
    let trimmed = value.trim_matches([' ', '\0']);
    (!trimmed.is_empty()).then_some(trimmed)
}

/// A minimal JSON object writer for audit details (string and integer
/// members), so the index needs no JSON library.
#[derive(Debug, Default, Clone)]
pub struct JsonObject {
    text: String,
}

impl JsonObject {
    /// An empty object.
    pub fn new() -> JsonObject {
        JsonObject::default()
    }

    fn key(&mut self, key: &str) {
        self.text.push(if self.text.is_empty() { '{' } else { ',' });
        push_json_string(&mut self.text, key);
        self.text.push(':');
    }

    /// Adds a string member (`null` for `None`).
    pub fn string(mut self, key: &str, value: Option<&str>) -> JsonObject {
        self.key(key);
        match value {
            Some(value) => push_json_string(&mut self.text, value),
            None => self.text.push_str("null"),
        }
        self
    }

    /// Adds an integer member.
    pub fn int(mut self, key: &str, value: i128) -> JsonObject {
        self.key(key);
        self.text.push_str(&value.to_string());
        self
    }

    /// Adds a member whose value is already JSON.
    pub fn raw(mut self, key: &str, json: &str) -> JsonObject {
        self.key(key);
        self.text.push_str(json);
        self
    }

    /// The object's text.
    pub fn finish(self) -> String {
        if self.text.is_empty() {
            "{}".to_string()
        } else {
            self.text + "}"
        }
    }
}

/// A JSON array of strings.
pub fn json_strings<'a>(values: impl IntoIterator<Item = &'a str>) -> String {
    let mut text = String::from("[");
    for (i, value) in values.into_iter().enumerate() {
        if i > 0 {
            text.push(',');
        }
        push_json_string(&mut text, value);
    }
    text.push(']');
    text
}

fn push_json_string(out: &mut String, value: &str) {
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
pub(crate) mod conformance;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_objects_escape_their_strings() {
        let json = JsonObject::new()
            .string("reason", Some("a \"quoted\"\\ line\nnext"))
            .int("instances", 3)
            .string("none", None)
            .raw("uids", &json_strings(["1.2", "1.3"]))
            .finish();
        assert_eq!(
            json,
            r#"{"reason":"a \"quoted\"\\ line\nnext","instances":3,"none":null,"uids":["1.2","1.3"]}"#
        );
        assert_eq!(JsonObject::new().finish(), "{}");
    }

    #[test]
    fn editable_attributes_round_trip() {
        for attribute in EditableAttribute::ALL {
            assert_eq!(
                EditableAttribute::from_keyword(attribute.keyword()),
                Some(attribute)
            );
            let tag = attribute.tag();
            let query = crate::model::query::Attribute::from_tag(tag)
                .expect("every editable attribute is an index attribute");
            assert_eq!(query.keyword(), attribute.keyword());
        }
        assert_eq!(EditableAttribute::from_keyword("Modality"), None);
        assert_eq!(EditStatus::parse("pending"), Some(EditStatus::Pending));
    }
}
