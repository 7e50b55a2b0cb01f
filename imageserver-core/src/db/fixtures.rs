//! The one place test fixtures live: the backends' own tests
//! (`sqlite/tests.rs`, `postgres/tests.rs`), the conformance suites
//! (`conformance.rs`, `studies/conformance.rs`, `work/conformance.rs`), the
//! work queue's engine tests and the storage tests build their partitions,
//! filesystems, locations and instance records here: specs, a [`Scope`]
//! (a partition and filesystem of a check's own), records with UIDs derived
//! from small numbers, and a deterministic generator of batches.

use std::path::PathBuf;

use crate::db::IndexStore;
use crate::model::{
    AeTitle, DuplicatePolicy, FilesystemId, FilesystemSpec, FolderName, IndexCounts, InstanceAttrs,
    InstanceRecord, PartitionId, PartitionSpec, PatientAttrs, SeriesAttrs, StudyAttrs,
    StudyLocation, Tier, Uid,
};

/// A UID from a test literal.
pub(crate) fn uid(value: &str) -> Uid {
    Uid::parse(value).expect("uid")
}

/// Series `series_uid` with a modality and a number, nothing else.
pub(crate) fn series_attrs(
    series_uid: &str,
    modality: Option<&str>,
    number: Option<i32>,
) -> SeriesAttrs {
    SeriesAttrs {
        series_uid: uid(series_uid),
        modality: modality.map(str::to_string),
        series_number: number,
        series_description: None,
        body_part_examined: None,
        series_date: None,
        series_time: None,
    }
}

/// Partition `name`: AE title and folder `name`, no description, unknown
/// devices accepted, default duplicate policy.
pub(crate) fn partition_spec(name: &str) -> PartitionSpec {
    PartitionSpec {
        ae_title: AeTitle::parse(name).expect("test AE title"),
        folder: FolderName::parse(name).expect("test folder"),
        description: String::new(),
        port: 0,
        accept_unknown_devices: true,
        duplicate_policy: DuplicatePolicy::default(),
        pn_case_insensitive: true,
    }
}

/// A writable tier 1 filesystem at `path` (watermarks 90/80).
pub(crate) fn fs_spec(path: impl Into<PathBuf>) -> FilesystemSpec {
    FilesystemSpec {
        path: path.into(),
        tier: Tier(1),
        high_watermark: 90.0,
        low_watermark: 80.0,
        read_only: false,
        write_only: false,
        description: String::new(),
        capacity_mb: None,
    }
}

/// Where `study` lives: filesystem `fs`, partition folder `folder`.
pub(crate) fn location(
    fs: FilesystemId,
    folder: &str,
    date_folder: &str,
    study: &str,
) -> StudyLocation {
    StudyLocation {
        filesystem: fs,
        partition_folder: FolderName::parse(folder).expect("test folder"),
        date_folder: date_folder.to_string(),
        study_uid: uid(study),
    }
}

/// Creates partition `name` (AE title and folder; names fold case) and the
/// filesystem `/data/fs1`, and returns their keys.
pub(crate) fn setup(index: &dyn IndexStore, name: &str) -> (PartitionId, FilesystemId) {
    let scope = Scope::new(index, partition_spec(name), fs_spec("/data/fs1"));
    (scope.partition, scope.fs)
}

/// The least record of instance `sop` in series `<study>.1` of `study` at
/// `location`: patient `P`, no optional attributes, a one-byte file.
pub(crate) fn bare_record(
    partition: PartitionId,
    location: StudyLocation,
    sop: u32,
) -> InstanceRecord {
    let study = location.study_uid.as_str().to_string();
    InstanceRecord {
        partition,
        patient: PatientAttrs {
            patient_id: "P".into(),
            ..PatientAttrs::default()
        },
        study: StudyAttrs {
            study_uid: location.study_uid.clone(),
            study_date: None,
            study_time: None,
            accession_number: None,
            study_id: None,
            study_description: None,
            referring_physician_name: None,
            specific_character_set: None,
        },
        series: series_attrs(&format!("{study}.1"), None, None),
        instance: InstanceAttrs {
            sop_instance_uid: uid(&format!("{study}.1.{sop}")),
            sop_class_uid: uid("1.2.840.10008.5.1.4.1.1.7"),
            instance_number: None,
            transfer_syntax_uid: uid("1.2.840.10008.1.2.1"),
            file_size: 1,
            digest: "00".repeat(32),
            source_ae: None,
        },
        location,
        deletions_seen: None,
    }
}

/// A partition and filesystem of a check's own in `store`, and the records
/// it stores there.
#[derive(Debug)]
pub(crate) struct Scope<'a, S: ?Sized> {
    /// The store.
    pub(crate) store: &'a S,
    /// The partition's key.
    pub(crate) partition: PartitionId,
    /// The partition's folder.
    pub(crate) folder: FolderName,
    /// The filesystem's key.
    pub(crate) fs: FilesystemId,
}

impl<'a, S: IndexStore + ?Sized> Scope<'a, S> {
    /// Creates (or finds) the partition and filesystem.
    pub(crate) fn new(store: &'a S, partition: PartitionSpec, fs: FilesystemSpec) -> Scope<'a, S> {
        let folder = partition.folder.clone();
        let partition = store
            .ensure_partition(&partition)
            .expect("ensure partition");
        let fs = store.ensure_filesystem(&fs).expect("ensure filesystem");
        Scope {
            store,
            partition,
            folder,
            fs,
        }
    }

    /// Where `study` lives in this scope.
    pub(crate) fn location(&self, study: &str, date_folder: &str) -> StudyLocation {
        location(self.fs, self.folder.as_str(), date_folder, study)
    }

    /// The partition's row counts.
    pub(crate) fn counts(&self) -> IndexCounts {
        self.store.counts(self.partition).expect("counts")
    }

    /// [`bare_record`] of instance `sop` of `study` in this scope.
    pub(crate) fn bare_record(&self, study: &str, sop: u32) -> InstanceRecord {
        bare_record(self.partition, self.location(study, "20240131"), sop)
    }

    /// A CT image of `patient` (`NAME^<patient>`, born 19700101) in series
    /// 1 of `study` (20240131 101500, accession `ACC1`, described `before`),
    /// a 100-byte file.
    pub(crate) fn detailed_record(
        &self,
        patient: &str,
        study: &str,
        series: &str,
        sop: &str,
    ) -> InstanceRecord {
        InstanceRecord {
            partition: self.partition,
            location: self.location(study, "20240131"),
            patient: PatientAttrs {
                patient_id: patient.to_string(),
                issuer_of_patient_id: None,
                patient_name: Some(format!("NAME^{patient}")),
                birth_date: Some("19700101".to_string()),
                sex: Some("O".to_string()),
            },
            study: StudyAttrs {
                study_uid: uid(study),
                study_date: Some("20240131".to_string()),
                study_time: Some("101500".to_string()),
                accession_number: Some("ACC1".to_string()),
                study_id: Some("1".to_string()),
                study_description: Some("before".to_string()),
                referring_physician_name: None,
                specific_character_set: None,
            },
            series: series_attrs(series, Some("CT"), Some(1)),
            instance: InstanceAttrs {
                sop_instance_uid: uid(sop),
                sop_class_uid: uid("1.2.840.10008.5.1.4.1.1.2"),
                instance_number: Some(1),
                transfer_syntax_uid: uid("1.2.840.10008.1.2.1"),
                file_size: 100,
                digest: "ab".repeat(32),
                source_ae: None,
            },
            deletions_seen: None,
        }
    }
}

/// Row counts.
pub(crate) fn counts(patients: u64, studies: u64, series: u64, instances: u64) -> IndexCounts {
    IndexCounts {
        patients,
        studies,
        series,
        instances,
    }
}

/// A record with `n`-derived UIDs: patient `p`, study `st`, series `se`.
pub(crate) fn record(
    partition: PartitionId,
    fs: FilesystemId,
    p: u32,
    st: u32,
    se: u32,
    sop: u32,
) -> InstanceRecord {
    let study_uid = uid(&format!("1.2.826.0.1.3680043.2.{st}"));
    InstanceRecord {
        partition,
        location: StudyLocation {
            filesystem: fs,
            partition_folder: FolderName::parse("X").expect("folder"),
            date_folder: "20240131".to_string(),
            study_uid: study_uid.clone(),
        },
        patient: PatientAttrs {
            patient_id: format!("PID{p}"),
            issuer_of_patient_id: None,
            patient_name: Some(format!("DOE^JOHN{p}")),
            birth_date: Some("19800101".to_string()),
            sex: Some("M".to_string()),
        },
        study: StudyAttrs {
            study_uid,
            study_date: Some("20240131".to_string()),
            study_time: Some("120000".to_string()),
            accession_number: Some(format!("A{st}")),
            study_id: Some("1".to_string()),
            study_description: Some("CT CHEST".to_string()),
            referring_physician_name: Some("REF^DR".to_string()),
            specific_character_set: Some("ISO_IR 100".to_string()),
        },
        series: SeriesAttrs {
            series_uid: uid(&format!("1.2.826.0.1.3680043.2.{st}.{se}")),
            modality: Some(["CT", "MR", "PT", "SR"][se as usize % 4].to_string()),
            series_number: Some(i32::try_from(se).expect("small")),
            series_description: Some("AXIAL".to_string()),
            body_part_examined: Some("CHEST".to_string()),
            series_date: Some("20240131".to_string()),
            series_time: Some("120001".to_string()),
        },
        instance: InstanceAttrs {
            sop_instance_uid: uid(&format!("1.2.826.0.1.3680043.3.{sop}")),
            sop_class_uid: uid(if sop.is_multiple_of(7) {
                "1.2.840.10008.5.1.4.1.1.7"
            } else {
                "1.2.840.10008.5.1.4.1.1.2"
            }),
            instance_number: Some(i32::try_from(sop % 1000).expect("small")),
            transfer_syntax_uid: uid("1.2.840.10008.1.2.1"),
            file_size: 500_000 + u64::from(sop % 13),
            digest: format!("{sop:064x}"),
            source_ae: Some("CT01".to_string()),
        },
        deletions_seen: None,
    }
}

/// A small deterministic generator (xorshift64).
#[derive(Debug, Clone)]
pub(crate) struct Xorshift(u64);

impl Xorshift {
    /// A generator starting from `seed` (not 0).
    pub(crate) fn new(seed: u64) -> Xorshift {
        Xorshift(seed)
    }

    /// The next number below `n`.
    pub(crate) fn below(&mut self, n: u32) -> u32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        u32::try_from(self.0 % u64::from(n)).expect("small")
    }
}

/// 40 batches of 50 records (2 000 in all) of a mixed workload:
/// replacements, moves across series, studies and patients, studies
/// changing patient.
pub(crate) fn mixed_batches(partition: PartitionId, fs: FilesystemId) -> Vec<Vec<InstanceRecord>> {
    let mut rng = Xorshift::new(0x2545_f491_4f6c_dd1d);
    (0..40)
        .map(|_| {
            (0..50)
                .map(|_| {
                    let study = rng.below(12);
                    let patient = if rng.below(10) == 0 {
                        rng.below(5)
                    } else {
                        study % 5
                    };
                    let series = rng.below(4);
                    record(partition, fs, patient, study, series, rng.below(400))
                })
                .collect()
        })
        .collect()
}
