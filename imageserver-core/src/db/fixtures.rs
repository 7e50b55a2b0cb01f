//! Test fixtures both backends' own tests use (`sqlite/tests.rs`,
//! `postgres/tests.rs`): a partition and filesystem to store into, instance
//! records with UIDs derived from small numbers, and a deterministic
//! generator of batches.

use std::path::PathBuf;

use crate::db::IndexStore;
use crate::model::{
    AeTitle, DuplicatePolicy, FilesystemId, FilesystemSpec, FolderName, InstanceAttrs,
    InstanceRecord, PartitionId, PartitionSpec, PatientAttrs, SeriesAttrs, StudyAttrs,
    StudyLocation, Tier, Uid,
};

/// A UID from a test literal.
pub(crate) fn uid(value: &str) -> Uid {
    Uid::parse(value).expect("uid")
}

/// Creates partition `name` (AE title and folder; names fold case) and the
/// filesystem `/data/fs1`, and returns their keys.
pub(crate) fn setup(index: &dyn IndexStore, name: &str) -> (PartitionId, FilesystemId) {
    let partition = index
        .ensure_partition(&PartitionSpec {
            ae_title: AeTitle::parse(name).expect("ae"),
            folder: FolderName::parse(name).expect("folder"),
            description: String::new(),
            port: 0,
            accept_unknown_devices: true,
            duplicate_policy: DuplicatePolicy::default(),
            pn_case_insensitive: true,
        })
        .expect("partition");
    let fs = index
        .ensure_filesystem(&FilesystemSpec {
            path: PathBuf::from("/data/fs1"),
            tier: Tier(1),
            high_watermark: 90.0,
            low_watermark: 80.0,
            read_only: false,
            write_only: false,
            description: String::new(),
        })
        .expect("filesystem");
    (partition, fs)
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
