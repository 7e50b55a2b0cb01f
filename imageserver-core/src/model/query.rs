//! Queries against the index, independent of DICOM encoding and of SQL.
//!
//! `dicom::query_keys` turns a C-FIND identifier into a [`Query`]; a
//! [`crate::db::QueryStore`] answers it with [`Match`]es; the DICOM layer
//! encodes those back into identifiers. Matching follows PS3.4 C.2.2.2:
//! each key is universal, single value, wildcard, range or list.

use super::PartitionId;

/// Query/Retrieve level (PS3.4 C.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// PATIENT.
    Patient,
    /// STUDY.
    Study,
    /// SERIES.
    Series,
    /// IMAGE (instance).
    Image,
}

impl Level {
    /// The value of QueryRetrieveLevel (0008,0052).
    pub fn code(self) -> &'static str {
        match self {
            Level::Patient => "PATIENT",
            Level::Study => "STUDY",
            Level::Series => "SERIES",
            Level::Image => "IMAGE",
        }
    }

    /// Parses QueryRetrieveLevel.
    pub fn from_code(code: &str) -> Option<Level> {
        match code.trim() {
            "PATIENT" => Some(Level::Patient),
            "STUDY" => Some(Level::Study),
            "SERIES" => Some(Level::Series),
            "IMAGE" => Some(Level::Image),
            _ => None,
        }
    }
}

/// Information model (PS3.4 C.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Root {
    /// Patient Root: PATIENT / STUDY / SERIES / IMAGE.
    Patient,
    /// Study Root: STUDY / SERIES / IMAGE (patient attributes at study level).
    Study,
}

/// How an attribute's values compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// LO, SH, LT, CS and other strings: exact, case-sensitive.
    Text,
    /// PN: exact or wildcard, case-insensitive when the partition says so.
    PersonName,
    /// DA (`YYYYMMDD`): single, range.
    Date,
    /// TM (`HHMMSS.FFFFFF`, any prefix): single, range.
    Time,
    /// UI: single or list.
    Uid,
    /// IS: exact.
    Integer,
    /// A count the index maintains (return-only, never matched).
    Count,
}

macro_rules! attributes {
    ($( $variant:ident = ($group:literal, $element:literal, $keyword:literal, $level:ident, $kind:ident), )*) => {
        /// An attribute the index can match on or return.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Attribute {
            $(
                #[doc = concat!($keyword, " (", stringify!($group), ",", stringify!($element), ").")]
                $variant,
            )*
        }

        impl Attribute {
            /// Every attribute, in tag order within each level.
            pub const ALL: &'static [Attribute] = &[$(Attribute::$variant,)*];

            /// The DICOM tag as (group, element).
            pub fn tag(self) -> (u16, u16) {
                match self { $(Attribute::$variant => ($group, $element),)* }
            }

            /// The DICOM keyword.
            pub fn keyword(self) -> &'static str {
                match self { $(Attribute::$variant => $keyword,)* }
            }

            /// The level whose entity holds the attribute.
            pub fn level(self) -> Level {
                match self { $(Attribute::$variant => Level::$level,)* }
            }

            /// How values compare.
            pub fn kind(self) -> Kind {
                match self { $(Attribute::$variant => Kind::$kind,)* }
            }
        }
    };
}

attributes! {
    PatientName = (0x0010, 0x0010, "PatientName", Patient, PersonName),
    PatientId = (0x0010, 0x0020, "PatientID", Patient, Text),
    IssuerOfPatientId = (0x0010, 0x0021, "IssuerOfPatientID", Patient, Text),
    PatientBirthDate = (0x0010, 0x0030, "PatientBirthDate", Patient, Date),
    PatientSex = (0x0010, 0x0040, "PatientSex", Patient, Text),
    NumberOfPatientRelatedStudies = (0x0020, 0x1200, "NumberOfPatientRelatedStudies", Patient, Count),
    NumberOfPatientRelatedSeries = (0x0020, 0x1202, "NumberOfPatientRelatedSeries", Patient, Count),
    NumberOfPatientRelatedInstances = (0x0020, 0x1204, "NumberOfPatientRelatedInstances", Patient, Count),
    StudyDate = (0x0008, 0x0020, "StudyDate", Study, Date),
    StudyTime = (0x0008, 0x0030, "StudyTime", Study, Time),
    AccessionNumber = (0x0008, 0x0050, "AccessionNumber", Study, Text),
    ModalitiesInStudy = (0x0008, 0x0061, "ModalitiesInStudy", Study, Text),
    SopClassesInStudy = (0x0008, 0x0062, "SOPClassesInStudy", Study, Uid),
    ReferringPhysicianName = (0x0008, 0x0090, "ReferringPhysicianName", Study, PersonName),
    StudyDescription = (0x0008, 0x1030, "StudyDescription", Study, Text),
    StudyInstanceUid = (0x0020, 0x000D, "StudyInstanceUID", Study, Uid),
    StudyId = (0x0020, 0x0010, "StudyID", Study, Text),
    NumberOfStudyRelatedSeries = (0x0020, 0x1206, "NumberOfStudyRelatedSeries", Study, Count),
    NumberOfStudyRelatedInstances = (0x0020, 0x1208, "NumberOfStudyRelatedInstances", Study, Count),
    SeriesDate = (0x0008, 0x0021, "SeriesDate", Series, Date),
    SeriesTime = (0x0008, 0x0031, "SeriesTime", Series, Time),
    Modality = (0x0008, 0x0060, "Modality", Series, Text),
    SeriesDescription = (0x0008, 0x103E, "SeriesDescription", Series, Text),
    BodyPartExamined = (0x0018, 0x0015, "BodyPartExamined", Series, Text),
    SeriesInstanceUid = (0x0020, 0x000E, "SeriesInstanceUID", Series, Uid),
    SeriesNumber = (0x0020, 0x0011, "SeriesNumber", Series, Integer),
    NumberOfSeriesRelatedInstances = (0x0020, 0x1209, "NumberOfSeriesRelatedInstances", Series, Count),
    SopClassUid = (0x0008, 0x0016, "SOPClassUID", Image, Uid),
    SopInstanceUid = (0x0008, 0x0018, "SOPInstanceUID", Image, Uid),
    InstanceNumber = (0x0020, 0x0013, "InstanceNumber", Image, Integer),
}

impl Attribute {
    /// The attribute with this tag, if the index knows it.
    pub fn from_tag(tag: (u16, u16)) -> Option<Attribute> {
        Attribute::ALL.iter().copied().find(|a| a.tag() == tag)
    }

    /// The time attribute that combined date-time matching (PS3.4
    /// C.2.2.2.5) pairs with this date attribute, if the index holds one.
    pub fn paired_time(self) -> Option<Attribute> {
        match self {
            Attribute::StudyDate => Some(Attribute::StudyTime),
            Attribute::SeriesDate => Some(Attribute::SeriesTime),
            _ => None,
        }
    }

    /// The unique key of a level (PS3.4 C.2.2.1.1). PatientID serves as the
    /// patient level's key (with IssuerOfPatientID when given).
    pub fn unique_key(level: Level) -> Attribute {
        match level {
            Level::Patient => Attribute::PatientId,
            Level::Study => Attribute::StudyInstanceUid,
            Level::Series => Attribute::SeriesInstanceUid,
            Level::Image => Attribute::SopInstanceUid,
        }
    }

    /// The level the attribute belongs to *in a given model*: in Study Root
    /// the patient attributes are study-level attributes.
    pub fn level_in(self, root: Root) -> Level {
        match (root, self.level()) {
            (Root::Study, Level::Patient) => Level::Study,
            (_, level) => level,
        }
    }
}

/// How one key restricts matches (PS3.4 C.2.2.2). Values are decoded text
/// (UTF-8), without padding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Matcher {
    /// Empty value: every entity matches; the attribute is returned.
    Universal,
    /// Exact value (case-insensitive for PN when the query says so).
    Single(String),
    /// A value with `*` (any run) and/or `?` (any one character).
    Wildcard(String),
    /// `lo-hi`, `lo-` or `-hi` on a date or time; bounds as given
    /// (normalisation of partial times is the backend's job).
    Range {
        /// Inclusive lower bound.
        from: Option<String>,
        /// Inclusive upper bound.
        to: Option<String>,
    },
    /// Any of several values (UID lists, multi-valued keys).
    List(Vec<String>),
    /// Combined date-time range matching (PS3.4 C.2.2.2.5) on a date
    /// attribute with a paired time ([`Attribute::paired_time`]): the date
    /// and time keys read as one range from `from`'s instant to `to`'s,
    /// bounds inclusive, open ends allowed. The paired time key is then
    /// universal (returned only).
    DateTimeRange {
        /// Inclusive lower bound.
        from: Option<DateTimeBound>,
        /// Inclusive upper bound.
        to: Option<DateTimeBound>,
    },
}

/// One end of a [`Matcher::DateTimeRange`]: a date and, optionally, a time
/// of day (as given: a partial time covers its unit, as in time ranges).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DateTimeBound {
    /// `YYYYMMDD`.
    pub date: String,
    /// `HH[MM[SS[.F]]]`; none: the start (lower bound) or end (upper
    /// bound) of the day.
    pub time: Option<String>,
}

/// One key of a query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    /// The attribute.
    pub attribute: Attribute,
    /// Its matching rule.
    pub matcher: Matcher,
}

/// Most values a list key (PS3.4 C.2.2.2.2 value lists, UID lists) may
/// hold: enough for a retrieve of a whole large series by SOP Instance UID,
/// small enough that no request makes one statement arbitrarily costly.
pub const MAX_LIST_VALUES: usize = 4096;

/// A query against one partition's index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// The partition whose data is searched (never another's).
    pub partition: PartitionId,
    /// The information model.
    pub root: Root,
    /// The level whose entities are returned.
    pub level: Level,
    /// Keys: matching keys and return keys (universal). Keys of levels below
    /// `level` are not allowed here (the DICOM layer answers them empty).
    pub keys: Vec<Key>,
    /// PN values match case-insensitively (a partition setting).
    pub pn_case_insensitive: bool,
    /// Stop after this many matches (the backend may fetch one more to tell
    /// the caller the cap was exceeded).
    pub limit: Option<u64>,
    /// Skip this many matches of the stable order first (a page after the
    /// first).
    pub offset: u64,
}

/// One matching entity: the value of every key of the query (in the query's
/// order) plus the unique keys of its level and the levels above, `None`
/// where the index holds no value.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Match {
    /// Attribute values.
    pub values: Vec<(Attribute, Option<String>)>,
}

impl Match {
    /// The value of an attribute, if returned and present.
    pub fn get(&self, attribute: Attribute) -> Option<&str> {
        self.values
            .iter()
            .find(|(a, _)| *a == attribute)
            .and_then(|(_, v)| v.as_deref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_round_trip_through_their_tags() {
        for attribute in Attribute::ALL {
            assert_eq!(Attribute::from_tag(attribute.tag()), Some(*attribute));
        }
        assert_eq!(Attribute::from_tag((0x0008, 0x0052)), None);
        assert_eq!(Attribute::PatientName.level_in(Root::Study), Level::Study);
        assert_eq!(Attribute::Modality.level_in(Root::Study), Level::Series);
        assert_eq!(Level::from_code("SERIES "), Some(Level::Series));
    }
}
