//! The vocabulary every module shares: validated identifiers and the records
//! that flow from the DICOM layer through the services into the index.
//!
//! Nothing here does IO. Values are validated once, at construction
//! ("parse, don't re-check"): a [`Uid`] can be used as a path component
//! because it cannot hold anything but digits and dots.

pub mod query;
pub mod requests;
pub mod work;

use std::fmt;

/// A DICOM UID, validated against PS3.5 §9.1: at most 64 characters,
/// dot-separated components of digits, no empty component, and no leading
/// zero in a component other than `0` itself.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Uid(String);

/// Why a string is not a valid UID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UidError {
    /// The value is empty after trimming padding.
    #[error("empty UID")]
    Empty,
    /// The value is longer than 64 characters.
    #[error("UID longer than 64 characters ({0})")]
    TooLong(usize),
    /// A character other than a digit or `.` was found.
    #[error("UID contains a character other than digits and dots")]
    BadCharacter,
    /// Two dots in a row, or a leading or trailing dot.
    #[error("UID has an empty component")]
    EmptyComponent,
    /// A component such as `01`.
    #[error("UID component has a leading zero")]
    LeadingZero,
}

impl Uid {
    /// Validates `value` (trailing NUL and space padding is removed first).
    pub fn parse(value: &str) -> Result<Uid, UidError> {
        let value = value.trim_end_matches(['\0', ' ']);
        if value.is_empty() {
            return Err(UidError::Empty);
        }
        if value.len() > 64 {
            return Err(UidError::TooLong(value.len()));
        }
        for component in value.split('.') {
            if component.is_empty() {
                return Err(UidError::EmptyComponent);
            }
            if !component.bytes().all(|b| b.is_ascii_digit()) {
                return Err(UidError::BadCharacter);
            }
            if component.len() > 1 && component.starts_with('0') {
                return Err(UidError::LeadingZero);
            }
        }
        Ok(Uid(value.to_string()))
    }

    /// The UID as text, without padding.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Uid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Uid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Uid({})", self.0)
    }
}

impl AsRef<str> for Uid {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// An application entity title: 1–16 characters of the default character
/// repertoire without backslash or control characters, not all spaces
/// (PS3.5 §6.2, AE). Leading and trailing spaces are not significant.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AeTitle(String);

/// Why a string is not a valid AE title.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid AE title {0:?}: 1-16 printable ASCII characters without backslash")]
pub struct AeTitleError(pub String);

impl AeTitle {
    /// Validates and trims an AE title.
    pub fn parse(value: &str) -> Result<AeTitle, AeTitleError> {
        let trimmed = value.trim_matches([' ', '\0']);
        let ok = !trimmed.is_empty()
            && trimmed.len() <= 16
            && trimmed
                .bytes()
                .all(|b| (0x20..0x7f).contains(&b) && b != b'\\');
        if ok {
            Ok(AeTitle(trimmed.to_string()))
        } else {
            Err(AeTitleError(value.to_string()))
        }
    }

    /// The title without padding.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AeTitle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for AeTitle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AeTitle({})", self.0)
    }
}

/// Database key of a partition (a virtual server with its own AE title).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PartitionId(pub i64);

/// Database key of a filesystem (a storage root on one tier).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FilesystemId(pub i64);

/// A storage tier: 1 is the fastest; higher numbers are cheaper and slower.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tier(pub u8);

/// A validated name that is safe as one path component (partition folders):
/// 1–64 characters of `[A-Za-z0-9_.-]`, not `.` or `..`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FolderName(String);

/// Why a string cannot be a folder name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid folder name {0:?}: 1-64 characters of A-Z a-z 0-9 _ . -")]
pub struct FolderNameError(pub String);

impl FolderName {
    /// Validates a folder name.
    pub fn parse(value: &str) -> Result<FolderName, FolderNameError> {
        let ok = !value.is_empty()
            && value.len() <= 64
            && value != "."
            && value != ".."
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if ok {
            Ok(FolderName(value.to_string()))
        } else {
            Err(FolderNameError(value.to_string()))
        }
    }

    /// The folder name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A DICOM date (DA) reduced to its validated `YYYYMMDD` form, used for the
/// study-date folder. Anything else becomes `None` (no date folder).
pub fn study_date_folder(value: Option<&str>) -> String {
    match value.map(|v| v.trim()) {
        Some(v) if v.len() == 8 && v.bytes().all(|b| b.is_ascii_digit()) => v.to_string(),
        _ => "00000000".to_string(),
    }
}

/// What a partition does with an instance whose SOP Instance UID it
/// already holds (ClearCanvas's duplicate SOP policy).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum DuplicatePolicy {
    /// Answer success and keep the stored instance; the new one is dropped.
    /// The default: no caller overwrites what another stored.
    #[default]
    SendSuccess,
    /// Answer a failure (0111, duplicate SOP instance); keep the stored one.
    Reject,
    /// Keep the stored instance, keep the new one aside and record it for a
    /// person to reconcile (identical bytes are simply acknowledged).
    Compare,
    /// Replace the stored instance; the old file goes only once the new one
    /// is durable and indexed. Only for callers whose device has
    /// [`DeviceSpec::allow_replace`]; for every other caller the partition
    /// behaves as [`DuplicatePolicy::SendSuccess`].
    AcceptLatest,
}

impl DuplicatePolicy {
    /// The stable name used in configuration and the database.
    pub fn as_str(self) -> &'static str {
        match self {
            DuplicatePolicy::SendSuccess => "send_success",
            DuplicatePolicy::Reject => "reject",
            DuplicatePolicy::Compare => "compare",
            DuplicatePolicy::AcceptLatest => "accept_latest",
        }
    }

    /// Parses the stable name.
    pub fn parse(name: &str) -> Option<DuplicatePolicy> {
        [
            DuplicatePolicy::SendSuccess,
            DuplicatePolicy::Reject,
            DuplicatePolicy::Compare,
            DuplicatePolicy::AcceptLatest,
        ]
        .into_iter()
        .find(|p| p.as_str() == name)
    }
}

/// A partition as the configuration declares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionSpec {
    /// The AE title the partition answers to.
    pub ae_title: AeTitle,
    /// The folder under each filesystem that holds this partition's studies.
    pub folder: FolderName,
    /// Human description.
    pub description: String,
    /// The port its listener uses.
    pub port: u16,
    /// Accept callers that are not known devices (and register them), or
    /// reject them with A-ASSOCIATE-RJ.
    pub accept_unknown_devices: bool,
    /// What to do with duplicate SOP instances.
    pub duplicate_policy: DuplicatePolicy,
    /// PN keys match case-insensitively in queries.
    pub pn_case_insensitive: bool,
}

/// A filesystem as the configuration declares it.
#[derive(Debug, Clone, PartialEq)]
pub struct FilesystemSpec {
    /// The root directory (local disk or NAS mount).
    pub path: std::path::PathBuf,
    /// Its tier.
    pub tier: Tier,
    /// Usage percentage above which studies migrate away.
    pub high_watermark: f64,
    /// Usage percentage migration drains down to.
    pub low_watermark: f64,
    /// Never written to (reads only).
    pub read_only: bool,
    /// Never read from (writes only).
    pub write_only: bool,
    /// Human description.
    pub description: String,
    /// A quota in MiB below what the volume reports: usage is then the
    /// bytes of the studies held there, measured against it (`None`: the
    /// volume's own size and free space).
    pub capacity_mb: Option<u64>,
}

/// A filesystem row as the index knows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Filesystem {
    /// Database key.
    pub id: FilesystemId,
    /// The declared properties.
    pub spec: FilesystemSpec,
    /// Whether the filesystem takes new studies.
    pub enabled: bool,
    /// The identity written into its root when it was first used (`None`
    /// until then): a root without it (an unmounted share) is never
    /// written to.
    pub marker: Option<String>,
}

/// A remote application entity we know (routing destination, query source).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceSpec {
    /// Its AE title.
    pub ae_title: AeTitle,
    /// Host name or address.
    pub host: String,
    /// DICOM port.
    pub port: u16,
    /// May store to us.
    pub allow_store: bool,
    /// May query us.
    pub allow_query: bool,
    /// May retrieve from us.
    pub allow_retrieve: bool,
    /// May replace a stored instance by sending another one with its SOP
    /// Instance UID (under the `accept_latest` duplicate policy).
    pub allow_replace: bool,
    /// Most associations it may have open with us at once (0: no limit).
    pub max_associations: u32,
    /// Most associations all processes sharing the index open to it at once for sends
    /// (auto-route, move_study; 0: no limit). Items beyond it wait.
    pub max_outgoing_associations: u32,
}

/// Where a study lives: one filesystem and a folder relative to its root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StudyLocation {
    /// The filesystem that holds the study.
    pub filesystem: FilesystemId,
    /// The partition folder.
    pub partition_folder: FolderName,
    /// The `YYYYMMDD` (or `00000000`) folder chosen when the study arrived.
    pub date_folder: String,
    /// The study.
    pub study_uid: Uid,
}

/// Patient-level attributes taken from an instance header.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PatientAttrs {
    /// (0010,0020), empty when absent.
    pub patient_id: String,
    /// (0010,0021).
    pub issuer_of_patient_id: Option<String>,
    /// (0010,0010) as received.
    pub patient_name: Option<String>,
    /// (0010,0030).
    pub birth_date: Option<String>,
    /// (0010,0040).
    pub sex: Option<String>,
}

/// Study-level attributes taken from an instance header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StudyAttrs {
    /// (0020,000D).
    pub study_uid: Uid,
    /// (0008,0020).
    pub study_date: Option<String>,
    /// (0008,0030).
    pub study_time: Option<String>,
    /// (0008,0050).
    pub accession_number: Option<String>,
    /// (0020,0010).
    pub study_id: Option<String>,
    /// (0008,1030).
    pub study_description: Option<String>,
    /// (0008,0090).
    pub referring_physician_name: Option<String>,
    /// (0008,0005).
    pub specific_character_set: Option<String>,
}

/// Series-level attributes taken from an instance header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeriesAttrs {
    /// (0020,000E).
    pub series_uid: Uid,
    /// (0008,0060).
    pub modality: Option<String>,
    /// (0020,0011).
    pub series_number: Option<i32>,
    /// (0008,103E).
    pub series_description: Option<String>,
    /// (0018,0015).
    pub body_part_examined: Option<String>,
    /// (0008,0021).
    pub series_date: Option<String>,
    /// (0008,0031).
    pub series_time: Option<String>,
}

/// Instance-level attributes and file facts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceAttrs {
    /// (0008,0018).
    pub sop_instance_uid: Uid,
    /// (0008,0016).
    pub sop_class_uid: Uid,
    /// (0020,0013).
    pub instance_number: Option<i32>,
    /// The transfer syntax the file is stored in.
    pub transfer_syntax_uid: Uid,
    /// Size of the stored Part 10 file in bytes.
    pub file_size: u64,
    /// BLAKE3 digest of the stored file, lowercase hex.
    pub digest: String,
    /// The calling AE title that sent it (or `None` for imports).
    pub source_ae: Option<String>,
}

/// Everything the index records for one stored instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceRecord {
    /// The partition it belongs to.
    pub partition: PartitionId,
    /// Where its study lives (created with the study's first instance).
    pub location: StudyLocation,
    /// Patient attributes.
    pub patient: PatientAttrs,
    /// Study attributes.
    pub study: StudyAttrs,
    /// Series attributes.
    pub series: SeriesAttrs,
    /// Instance attributes.
    pub instance: InstanceAttrs,
    /// How many times the study had been deleted when the instance's file
    /// was placed ([`StudyDeletions::count`]): the commit refuses the record
    /// if the study has been deleted since, because that deletion may have
    /// removed the file. `None`: not checked (rows rebuilt from files).
    pub deletions_seen: Option<u64>,
}

/// A study's deletions as the index knows them: what ingest reads before
/// placing a file and the commit checks again in its transaction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StudyDeletions {
    /// A deletion is under way (its rows are gone, its files may not be).
    pub deleting: bool,
    /// How many deletions of the study have been recorded (audit log).
    pub count: u64,
    /// The filesystem the study is on now (`None`: no location yet, or
    /// nearline): a record placed elsewhere (before a migration moved the
    /// study) is refused by the commit, and ingest re-reads the location.
    pub filesystem: Option<FilesystemId>,
}

/// What the index did with one [`InstanceRecord`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InsertOutcome {
    /// A new instance row was created.
    Inserted,
    /// The SOP Instance UID was already indexed; its row was replaced.
    Replaced,
    /// Not indexed: its study is being deleted, or was deleted after the
    /// instance's file was placed (see [`InstanceRecord::deletions_seen`]).
    /// Nothing of the record was written; its file is the caller's to
    /// remove.
    StudyDeleted,
}

/// An indexed instance, as a lookup returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredInstance {
    /// The study's location.
    pub location: StudyLocation,
    /// The series.
    pub series_uid: Uid,
    /// The instance.
    pub sop_instance_uid: Uid,
    /// Its SOP class.
    pub sop_class_uid: Uid,
    /// Its stored transfer syntax.
    pub transfer_syntax_uid: Uid,
    /// File size in bytes.
    pub file_size: u64,
    /// BLAKE3 digest, lowercase hex.
    pub digest: String,
}

/// An instance received for a SOP Instance UID already held, kept aside
/// under the `compare` duplicate policy for a person to reconcile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DuplicateRecord {
    /// The partition.
    pub partition: PartitionId,
    /// The duplicated instance.
    pub sop_instance_uid: Uid,
    /// Where the kept-aside copy is (its study location and series).
    pub location: StudyLocation,
    /// The series of the kept-aside copy.
    pub series_uid: Uid,
    /// Distinguishes several kept-aside copies of one instance.
    pub variant: u64,
    /// Size of the kept-aside file.
    pub file_size: u64,
    /// BLAKE3 digest of the kept-aside file.
    pub digest: String,
    /// The AE title that sent it.
    pub source_ae: Option<String>,
    /// When it arrived (milliseconds since the Unix epoch).
    pub received_at_ms: i64,
}

/// The attributes that say who a patient is: an instance whose identity
/// differs from its stored study's is held for reconciliation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PatientIdentity {
    /// (0010,0020), empty when absent.
    pub patient_id: String,
    /// (0010,0021).
    pub issuer_of_patient_id: Option<String>,
    /// (0010,0010).
    pub patient_name: Option<String>,
    /// (0010,0030).
    pub birth_date: Option<String>,
}

impl PatientIdentity {
    /// The identity part of a patient's attributes.
    pub fn of(patient: &PatientAttrs) -> PatientIdentity {
        PatientIdentity {
            patient_id: patient.patient_id.clone(),
            issuer_of_patient_id: patient.issuer_of_patient_id.clone(),
            patient_name: patient.patient_name.clone(),
            birth_date: patient.birth_date.clone(),
        }
    }

    /// Whether two identities name the same patient: every attribute
    /// equal once padding is trimmed, an empty value the same as an absent
    /// one.
    pub fn same_as(&self, other: &PatientIdentity) -> bool {
        same_text(Some(&self.patient_id), Some(&other.patient_id))
            && same_text(
                self.issuer_of_patient_id.as_deref(),
                other.issuer_of_patient_id.as_deref(),
            )
            && same_text(self.patient_name.as_deref(), other.patient_name.as_deref())
            && same_text(self.birth_date.as_deref(), other.birth_date.as_deref())
    }
}

/// Whether two attribute values are the same once padding (spaces, NUL) is
/// trimmed, an empty value the same as an absent one.
pub fn same_text(a: Option<&str>, b: Option<&str>) -> bool {
    fn norm(value: Option<&str>) -> &str {
        value.unwrap_or("").trim_matches([' ', '\0'])
    }
    norm(a) == norm(b)
}

/// An instance held for a person because its patient identity conflicts
/// with the stored study it names (the reconcile queue). Its file is kept
/// aside beside the study's instances, as a `compare` duplicate is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReconcileEntry {
    /// Its key (0 before it is recorded).
    pub id: i64,
    /// The partition.
    pub partition: PartitionId,
    /// The instance.
    pub sop_instance_uid: Uid,
    /// Its SOP class.
    pub sop_class_uid: Uid,
    /// The transfer syntax of the held file.
    pub transfer_syntax_uid: Uid,
    /// The study it names (where the held file is kept aside).
    pub location: StudyLocation,
    /// Its series.
    pub series_uid: Uid,
    /// The kept-aside file's variant.
    pub variant: u64,
    /// Size of the held file.
    pub file_size: u64,
    /// BLAKE3 digest of the held file.
    pub digest: String,
    /// The AE title that sent it.
    pub source_ae: Option<String>,
    /// When it arrived (milliseconds since the Unix epoch).
    pub received_at_ms: i64,
    /// The patient identity the instance carries.
    pub identity: PatientIdentity,
}

/// Row counts of one partition's index.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IndexCounts {
    /// Patients.
    pub patients: u64,
    /// Studies.
    pub studies: u64,
    /// Series.
    pub series: u64,
    /// Instances.
    pub instances: u64,
}

/// An error and each of its causes on one line, joined with `": "`. The
/// one way errors are printed for logs and error comments; an error's own
/// message therefore never repeats its source's.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uid_validation() {
        let ok = ["1.2.840.10008.1.1", "0", "1.0.2", "2.25.1234"];
        for v in ok {
            assert_eq!(Uid::parse(v).unwrap().as_str(), v);
        }
        assert_eq!(Uid::parse("1.2.3\0").unwrap().as_str(), "1.2.3");
        assert_eq!(Uid::parse(""), Err(UidError::Empty));
        assert_eq!(Uid::parse("1.2.3/../../x"), Err(UidError::BadCharacter));
        assert_eq!(Uid::parse("1..2"), Err(UidError::EmptyComponent));
        assert_eq!(Uid::parse(".1"), Err(UidError::EmptyComponent));
        assert_eq!(Uid::parse("1.02"), Err(UidError::LeadingZero));
        assert_eq!(Uid::parse(&"1".repeat(200)), Err(UidError::TooLong(200)));
        assert_eq!(Uid::parse("1.2 .3"), Err(UidError::BadCharacter));
    }

    #[test]
    fn ae_title_validation() {
        assert_eq!(AeTitle::parse(" STORESCU ").unwrap().as_str(), "STORESCU");
        assert!(AeTitle::parse("").is_err());
        assert!(AeTitle::parse("    ").is_err());
        assert!(AeTitle::parse("A\\B").is_err());
        assert!(AeTitle::parse("ABCDEFGHIJKLMNOPQ").is_err());
    }

    #[test]
    fn folder_names_and_dates() {
        assert!(FolderName::parse("IMAGESERVER").is_ok());
        assert!(FolderName::parse("..").is_err());
        assert!(FolderName::parse("a/b").is_err());
        assert_eq!(study_date_folder(Some("20240131")), "20240131");
        assert_eq!(study_date_folder(Some("2024/01")), "00000000");
        assert_eq!(study_date_folder(None), "00000000");
    }
}
