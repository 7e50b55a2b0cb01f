//! The backend-agnostic test suite every [`IndexStore`] must pass (SQLite
//! now, PostgreSQL later): each backend calls [`run_all`] on a fresh, empty
//! store, and [`run_summaries`] with a probe of its study rows.
//!
//! Every check works in partitions of its own, so the checks do not see each
//! other's rows.

use std::path::PathBuf;

use crate::db::{Error, IndexStore};
use crate::model::{
    AeTitle, DeviceSpec, FilesystemId, FilesystemSpec, FolderName, IndexCounts, InsertOutcome,
    InstanceAttrs, InstanceRecord, PartitionId, PartitionSpec, PatientAttrs, SeriesAttrs,
    StudyAttrs, StudyLocation, Tier, Uid,
};

/// The study-level summary a backend keeps, read back by a backend-specific
/// probe until the trait has a study query of its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StudySummary {
    /// Series of the study.
    pub num_series: u64,
    /// Instances of the study.
    pub num_instances: u64,
    /// Sum of the instances' file sizes.
    pub size_bytes: u64,
    /// Distinct modalities, sorted, joined with `\`.
    pub modalities_in_study: String,
    /// Distinct SOP class UIDs, sorted, joined with `\`.
    pub sop_classes_in_study: String,
}

/// Reads a study's summary row (backend-specific).
pub(crate) trait StudySummaries {
    /// The summary of a study, if the study exists.
    fn study_summary(&self, partition: PartitionId, study_uid: &Uid) -> Option<StudySummary>;
}

/// Runs every trait-level check.
pub(crate) fn run_all(store: &dyn IndexStore) {
    partitions(store);
    filesystems(store);
    devices(store);
    study_location_is_fixed_by_the_first_instance(store);
    batch_counts(store);
    replaced_instances_are_not_counted_twice(store);
    moved_instances_fix_both_sides(store);
    patient_keys_and_demographics(store);
    batch_is_all_or_nothing(store);
    empty_batch(store);
}

/// Runs the checks that need the study summary probe.
pub(crate) fn run_summaries(store: &dyn IndexStore, probe: &dyn StudySummaries) {
    let f = Fixture::new(store, "SUMMARY");
    let st = "1.2.9.1";
    let mut batch = vec![
        f.record("P1", st, "1.2.9.1.1", "MR", "1.2.9.1.1.1", 100),
        f.record("P1", st, "1.2.9.1.1", "MR", "1.2.9.1.1.2", 100),
        f.record("P1", st, "1.2.9.1.2", "CT", "1.2.9.1.2.1", 50),
    ];
    batch[2].instance.sop_class_uid = uid("1.2.840.10008.5.1.4.1.1.2");
    store.insert_instances(&batch).expect("first batch");
    let summary = probe
        .study_summary(f.partition, &uid(st))
        .expect("study exists");
    assert_eq!(summary.num_series, 2);
    assert_eq!(summary.num_instances, 3);
    assert_eq!(summary.size_bytes, 250);
    assert_eq!(summary.modalities_in_study, "CT\\MR");
    assert_eq!(
        summary.sop_classes_in_study,
        "1.2.840.10008.5.1.4.1.1.2\\1.2.840.10008.5.1.4.1.1.4"
    );

    // Later batches accumulate distinct values; repeats add nothing.
    let batch = vec![
        f.record("P1", st, "1.2.9.1.3", "PT", "1.2.9.1.3.1", 10),
        f.record("P1", st, "1.2.9.1.4", "CT", "1.2.9.1.4.1", 10),
        f.record("P1", st, "1.2.9.1.5", "", "1.2.9.1.5.1", 10),
    ];
    store.insert_instances(&batch).expect("second batch");
    let summary = probe
        .study_summary(f.partition, &uid(st))
        .expect("study exists");
    assert_eq!(summary.modalities_in_study, "CT\\MR\\PT");
    assert_eq!(summary.num_series, 5);
    assert_eq!(summary.num_instances, 6);
    assert_eq!(summary.size_bytes, 280);

    // A replacement changes the size by the difference only.
    let mut again = f.record("P1", st, "1.2.9.1.1", "MR", "1.2.9.1.1.1", 130);
    again.instance.digest = "ff".repeat(32);
    assert_eq!(
        store.insert_instances(&[again]).expect("replace"),
        [InsertOutcome::Replaced]
    );
    let summary = probe
        .study_summary(f.partition, &uid(st))
        .expect("study exists");
    assert_eq!((summary.num_instances, summary.size_bytes), (6, 310));

    // The only CT image of series .2 replaced by an MR one of the same series:
    // its SOP class goes, CT stays (series .4).
    let mut ct = f.record("P1", st, "1.2.9.1.2", "CT", "1.2.9.1.2.1", 50);
    ct.instance.sop_class_uid = uid("1.2.840.10008.5.1.4.1.1.4");
    store.insert_instances(&[ct]).expect("replace class");
    let summary = probe
        .study_summary(f.partition, &uid(st))
        .expect("study exists");
    assert_eq!(summary.sop_classes_in_study, "1.2.840.10008.5.1.4.1.1.4");

    // The PT instance moves to another study: PT leaves the first study.
    let moved = f.record("P1", "1.2.9.2", "1.2.9.2.1", "PT", "1.2.9.1.3.1", 10);
    store.insert_instances(&[moved]).expect("move");
    let summary = probe
        .study_summary(f.partition, &uid(st))
        .expect("study exists");
    assert_eq!(summary.modalities_in_study, "CT\\MR");
    assert_eq!(
        (
            summary.num_series,
            summary.num_instances,
            summary.size_bytes
        ),
        (4, 5, 300)
    );
    let other = probe
        .study_summary(f.partition, &uid("1.2.9.2"))
        .expect("new study");
    assert_eq!(other.modalities_in_study, "PT");
    assert_eq!(
        (other.num_series, other.num_instances, other.size_bytes),
        (1, 1, 10)
    );

    // A series whose modality changes (here: was absent) updates the study.
    let ko = f.record("P1", st, "1.2.9.1.5", "KO", "1.2.9.1.5.2", 10);
    store.insert_instances(&[ko]).expect("modality change");
    let summary = probe
        .study_summary(f.partition, &uid(st))
        .expect("study exists");
    assert_eq!(summary.modalities_in_study, "CT\\KO\\MR");
}

fn uid(value: &str) -> Uid {
    Uid::parse(value).expect("test UID")
}

fn ae(value: &str) -> AeTitle {
    AeTitle::parse(value).expect("test AE title")
}

fn counts(patients: u64, studies: u64, series: u64, instances: u64) -> IndexCounts {
    IndexCounts {
        patients,
        studies,
        series,
        instances,
    }
}

fn fs_spec(path: &str, tier: u8) -> FilesystemSpec {
    FilesystemSpec {
        path: PathBuf::from(path),
        tier: Tier(tier),
        high_watermark: 90.0,
        low_watermark: 80.0,
        read_only: false,
        write_only: false,
        description: String::new(),
    }
}

/// A partition and filesystem of their own for one check, and a record maker.
struct Fixture<'a> {
    store: &'a dyn IndexStore,
    partition: PartitionId,
    folder: FolderName,
    fs: FilesystemId,
}

impl<'a> Fixture<'a> {
    fn new(store: &'a dyn IndexStore, name: &str) -> Fixture<'a> {
        let folder = FolderName::parse(name).expect("test folder");
        let partition = store
            .ensure_partition(&PartitionSpec {
                ae_title: ae(name),
                folder: folder.clone(),
                description: format!("conformance {name}"),
            })
            .expect("ensure partition");
        let fs = store
            .ensure_filesystem(&fs_spec(&format!("/conformance/{name}"), 1))
            .expect("ensure filesystem");
        Fixture {
            store,
            partition,
            folder,
            fs,
        }
    }

    fn location(&self, study: &str, date_folder: &str) -> StudyLocation {
        StudyLocation {
            filesystem: self.fs,
            partition_folder: self.folder.clone(),
            date_folder: date_folder.to_string(),
            study_uid: uid(study),
        }
    }

    /// An MR image record (or `modality` when given; "" for none).
    fn record(
        &self,
        patient: &str,
        study: &str,
        series: &str,
        modality: &str,
        sop: &str,
        size: u64,
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
                accession_number: Some(format!("ACC{study}")),
                study_id: Some("1".to_string()),
                study_description: Some("conformance".to_string()),
                referring_physician_name: None,
                specific_character_set: Some("ISO_IR 192".to_string()),
            },
            series: SeriesAttrs {
                series_uid: uid(series),
                modality: (!modality.is_empty()).then(|| modality.to_string()),
                series_number: Some(1),
                series_description: None,
                body_part_examined: None,
                series_date: None,
                series_time: None,
            },
            instance: InstanceAttrs {
                sop_instance_uid: uid(sop),
                sop_class_uid: uid("1.2.840.10008.5.1.4.1.1.4"),
                instance_number: Some(1),
                transfer_syntax_uid: uid("1.2.840.10008.1.2.1"),
                file_size: size,
                digest: "ab".repeat(32),
                source_ae: Some("MODALITY".to_string()),
            },
        }
    }

    fn counts(&self) -> IndexCounts {
        self.store.counts(self.partition).expect("counts")
    }
}

fn partitions(store: &dyn IndexStore) {
    let spec = PartitionSpec {
        ae_title: ae("PARTS_A"),
        folder: FolderName::parse("PARTS_A").expect("folder"),
        description: "first".to_string(),
    };
    assert_eq!(store.partition(&spec.ae_title).expect("lookup"), None);
    let id = store.ensure_partition(&spec).expect("create");
    assert_eq!(store.ensure_partition(&spec).expect("again"), id);
    let updated = PartitionSpec {
        folder: FolderName::parse("PARTS_A2").expect("folder"),
        description: "renamed".to_string(),
        ..spec.clone()
    };
    assert_eq!(store.ensure_partition(&updated).expect("update"), id);
    assert_eq!(store.partition(&spec.ae_title).expect("lookup"), Some(id));
    let other = store
        .ensure_partition(&PartitionSpec {
            ae_title: ae("PARTS_B"),
            folder: FolderName::parse("PARTS_B").expect("folder"),
            description: String::new(),
        })
        .expect("second");
    assert_ne!(other, id);
    assert_eq!(
        store.partition(&ae("PARTS_B")).expect("lookup"),
        Some(other)
    );
    assert_eq!(store.partition(&ae("PARTS_NONE")).expect("lookup"), None);
    assert_eq!(store.counts(other).expect("counts"), IndexCounts::default());

    // The folder follows the update: a study placed now carries it.
    let fs = store
        .ensure_filesystem(&fs_spec("/conformance/PARTS", 1))
        .expect("fs");
    let study = uid("1.2.1.1");
    let record = InstanceRecord {
        partition: id,
        location: StudyLocation {
            filesystem: fs,
            partition_folder: updated.folder.clone(),
            date_folder: "00000000".to_string(),
            study_uid: study.clone(),
        },
        ..Fixture {
            store,
            partition: id,
            folder: updated.folder.clone(),
            fs,
        }
        .record("P", "1.2.1.1", "1.2.1.1.1", "OT", "1.2.1.1.1.1", 1)
    };
    store.insert_instances(&[record]).expect("insert");
    let location = store
        .study_location(id, &study)
        .expect("location")
        .expect("placed");
    assert_eq!(location.partition_folder, updated.folder);
    assert_eq!(location.date_folder, "00000000");
}

fn filesystems(store: &dyn IndexStore) {
    let slow = store
        .ensure_filesystem(&fs_spec("/conformance/fs/slow", 3))
        .expect("slow");
    let fast = store
        .ensure_filesystem(&fs_spec("/conformance/fs/fast", 1))
        .expect("fast");
    let fast2 = store
        .ensure_filesystem(&fs_spec("/conformance/fs/fast2", 1))
        .expect("fast2");
    assert_eq!(
        store
            .ensure_filesystem(&fs_spec("/conformance/fs/fast", 1))
            .expect("again"),
        fast
    );

    let mut changed = fs_spec("/conformance/fs/slow", 2);
    changed.high_watermark = 95.5;
    changed.low_watermark = 70.25;
    changed.read_only = true;
    changed.description = "nearline".to_string();
    assert_eq!(store.ensure_filesystem(&changed).expect("update"), slow);

    let all = store.filesystems().expect("list");
    let order: Vec<(u8, i64)> = all.iter().map(|f| (f.spec.tier.0, f.id.0)).collect();
    let mut sorted = order.clone();
    sorted.sort();
    assert_eq!(order, sorted, "ordered by tier, then key");
    let ours: Vec<FilesystemId> = all
        .iter()
        .filter(|f| f.spec.path.starts_with("/conformance/fs"))
        .map(|f| f.id)
        .collect();
    let mut expected = vec![fast, fast2];
    expected.sort();
    expected.push(slow);
    assert_eq!(ours, expected);
    let read_back = all.iter().find(|f| f.id == slow).expect("slow listed");
    assert_eq!(read_back.spec, changed);
    assert!(read_back.enabled, "new filesystems are enabled");
}

fn devices(store: &dyn IndexStore) {
    let f = Fixture::new(store, "DEVICES");
    let g = Fixture::new(store, "DEVICES2");
    assert_eq!(store.devices(f.partition).expect("none"), []);
    let mut ws = DeviceSpec {
        ae_title: ae("WS1"),
        host: "10.0.0.5".to_string(),
        port: 104,
        allow_store: true,
        allow_query: true,
        allow_retrieve: false,
    };
    let ct = DeviceSpec {
        ae_title: ae("CT1"),
        host: "ct.local".to_string(),
        port: 11112,
        ..ws.clone()
    };
    store.ensure_device(f.partition, &ws).expect("ws");
    store.ensure_device(f.partition, &ct).expect("ct");
    store.ensure_device(g.partition, &ct).expect("ct elsewhere");
    ws.port = 65535;
    ws.allow_retrieve = true;
    ws.allow_store = false;
    store.ensure_device(f.partition, &ws).expect("update ws");
    assert_eq!(store.devices(f.partition).expect("list"), [ct.clone(), ws]);
    assert_eq!(store.devices(g.partition).expect("list"), [ct]);
}

fn study_location_is_fixed_by_the_first_instance(store: &dyn IndexStore) {
    let f = Fixture::new(store, "LOCATION");
    let other_fs = store
        .ensure_filesystem(&fs_spec("/conformance/LOCATION2", 1))
        .expect("fs");
    let study = uid("1.2.2.1");
    assert_eq!(
        store.study_location(f.partition, &study).expect("lookup"),
        None
    );

    let mut first = f.record("P", "1.2.2.1", "1.2.2.1.1", "CT", "1.2.2.1.1.1", 10);
    first.location.date_folder = "20240101".to_string();
    store.insert_instances(&[first]).expect("first");
    let expected = f.location("1.2.2.1", "20240101");
    assert_eq!(
        store.study_location(f.partition, &study).expect("lookup"),
        Some(expected.clone())
    );

    // A later instance proposing another place does not move the study.
    let mut second = f.record("P", "1.2.2.1", "1.2.2.1.1", "CT", "1.2.2.1.1.2", 10);
    second.location.filesystem = other_fs;
    second.location.date_folder = "20250505".to_string();
    store.insert_instances(&[second]).expect("second");
    assert_eq!(
        store.study_location(f.partition, &study).expect("lookup"),
        Some(expected.clone())
    );
    let stored = store
        .instance(f.partition, &uid("1.2.2.1.1.2"))
        .expect("lookup")
        .expect("stored");
    assert_eq!(stored.location, expected);

    // Locations are per partition.
    let g = Fixture::new(store, "LOCATION3");
    assert_eq!(
        store.study_location(g.partition, &study).expect("lookup"),
        None
    );
}

fn batch_counts(store: &dyn IndexStore) {
    let f = Fixture::new(store, "COUNTS");
    let mut batch = Vec::new();
    // Patient A: studies 1 (2 series × 3) and 2 (1 series × 2); patient B: study 3 (1 × 1).
    for series in 1..=2 {
        for n in 1..=3 {
            batch.push(f.record(
                "A",
                "1.2.3.1",
                &format!("1.2.3.1.{series}"),
                "MR",
                &format!("1.2.3.1.{series}.{n}"),
                1000,
            ));
        }
    }
    for n in 1..=2 {
        batch.push(f.record(
            "A",
            "1.2.3.2",
            "1.2.3.2.1",
            "CT",
            &format!("1.2.3.2.1.{n}"),
            500,
        ));
    }
    batch.push(f.record("B", "1.2.3.3", "1.2.3.3.1", "US", "1.2.3.3.1.1", 7));
    let outcomes = store.insert_instances(&batch).expect("batch");
    assert_eq!(outcomes, vec![InsertOutcome::Inserted; batch.len()]);
    assert_eq!(f.counts(), counts(2, 3, 4, 9));

    let stored = store
        .instance(f.partition, &uid("1.2.3.1.2.3"))
        .expect("lookup")
        .expect("stored");
    let r = &batch[5];
    assert_eq!(stored.location, f.location("1.2.3.1", "20240131"));
    assert_eq!(stored.series_uid, r.series.series_uid);
    assert_eq!(stored.sop_instance_uid, r.instance.sop_instance_uid);
    assert_eq!(stored.sop_class_uid, r.instance.sop_class_uid);
    assert_eq!(stored.transfer_syntax_uid, r.instance.transfer_syntax_uid);
    assert_eq!(stored.file_size, 1000);
    assert_eq!(stored.digest, r.instance.digest);
    assert_eq!(
        store
            .instance(f.partition, &uid("1.2.3.9"))
            .expect("lookup"),
        None
    );

    // A second batch adds to existing rows.
    let batch = vec![
        f.record("A", "1.2.3.1", "1.2.3.1.1", "MR", "1.2.3.1.1.4", 1000),
        f.record("B", "1.2.3.3", "1.2.3.3.2", "US", "1.2.3.3.2.1", 7),
        f.record("C", "1.2.3.4", "1.2.3.4.1", "DX", "1.2.3.4.1.1", 7),
    ];
    store.insert_instances(&batch).expect("second batch");
    assert_eq!(f.counts(), counts(3, 4, 6, 12));

    // Other partitions see none of it; the same UIDs there are new rows.
    let g = Fixture::new(store, "COUNTS2");
    assert_eq!(g.counts(), IndexCounts::default());
    let mut elsewhere = batch[0].clone();
    elsewhere.partition = g.partition;
    elsewhere.location = g.location("1.2.3.1", "20240131");
    assert_eq!(
        store.insert_instances(&[elsewhere]).expect("g"),
        [InsertOutcome::Inserted]
    );
    assert_eq!(g.counts(), counts(1, 1, 1, 1));
    assert_eq!(f.counts(), counts(3, 4, 6, 12));
}

fn replaced_instances_are_not_counted_twice(store: &dyn IndexStore) {
    let f = Fixture::new(store, "REPLACE");
    let a = f.record("P", "1.2.4.1", "1.2.4.1.1", "CT", "1.2.4.1.1.1", 10);
    let b = f.record("P", "1.2.4.1", "1.2.4.1.1", "CT", "1.2.4.1.1.2", 10);
    assert_eq!(
        store
            .insert_instances(&[a.clone(), b.clone()])
            .expect("first"),
        [InsertOutcome::Inserted, InsertOutcome::Inserted]
    );
    assert_eq!(f.counts(), counts(1, 1, 1, 2));

    let mut a2 = a.clone();
    a2.instance.file_size = 99;
    a2.instance.digest = "cd".repeat(32);
    a2.instance.transfer_syntax_uid = uid("1.2.840.10008.1.2.4.70");
    assert_eq!(
        store.insert_instances(&[a2.clone()]).expect("again"),
        [InsertOutcome::Replaced]
    );
    assert_eq!(f.counts(), counts(1, 1, 1, 2));
    let stored = store
        .instance(f.partition, &a.instance.sop_instance_uid)
        .expect("lookup")
        .expect("row");
    assert_eq!(stored.file_size, 99);
    assert_eq!(stored.digest, a2.instance.digest);
    assert_eq!(stored.transfer_syntax_uid, a2.instance.transfer_syntax_uid);

    // The same SOP instance twice in one batch: the second replaces the first.
    let c = f.record("P", "1.2.4.1", "1.2.4.1.1", "CT", "1.2.4.1.1.3", 10);
    assert_eq!(
        store
            .insert_instances(&[c.clone(), c, b])
            .expect("dup batch"),
        [
            InsertOutcome::Inserted,
            InsertOutcome::Replaced,
            InsertOutcome::Replaced
        ]
    );
    assert_eq!(f.counts(), counts(1, 1, 1, 3));
}

fn moved_instances_fix_both_sides(store: &dyn IndexStore) {
    let f = Fixture::new(store, "MOVED");
    let batch = vec![
        f.record("P", "1.2.5.1", "1.2.5.1.1", "CT", "1.2.5.1.1.1", 10),
        f.record("P", "1.2.5.1", "1.2.5.1.1", "CT", "1.2.5.1.1.2", 10),
        f.record("P", "1.2.5.1", "1.2.5.1.2", "CT", "1.2.5.1.2.1", 10),
    ];
    store.insert_instances(&batch).expect("first");
    assert_eq!(f.counts(), counts(1, 1, 2, 3));

    // To another series of the same study: series .2 is left empty and goes.
    let moved = f.record("P", "1.2.5.1", "1.2.5.1.1", "CT", "1.2.5.1.2.1", 10);
    assert_eq!(
        store.insert_instances(&[moved]).expect("move"),
        [InsertOutcome::Replaced]
    );
    assert_eq!(f.counts(), counts(1, 1, 1, 3));
    let stored = store
        .instance(f.partition, &uid("1.2.5.1.2.1"))
        .expect("lookup")
        .expect("row");
    assert_eq!(stored.series_uid, uid("1.2.5.1.1"));

    // To another study of another patient, in a batch with a plain insert.
    let batch = vec![
        f.record("Q", "1.2.5.2", "1.2.5.2.1", "MR", "1.2.5.1.1.1", 10),
        f.record("Q", "1.2.5.2", "1.2.5.2.1", "MR", "1.2.5.2.1.1", 10),
    ];
    assert_eq!(
        store.insert_instances(&batch).expect("move across"),
        [InsertOutcome::Replaced, InsertOutcome::Inserted]
    );
    assert_eq!(f.counts(), counts(2, 2, 2, 4));

    // Moving every instance of a study away removes the study and its patient.
    let batch = vec![
        f.record("Q", "1.2.5.2", "1.2.5.2.1", "MR", "1.2.5.1.1.2", 10),
        f.record("Q", "1.2.5.2", "1.2.5.2.1", "MR", "1.2.5.1.2.1", 10),
    ];
    store
        .insert_instances(&batch)
        .expect("empty the first study");
    assert_eq!(f.counts(), counts(1, 1, 1, 4));
    let stored = store
        .instance(f.partition, &uid("1.2.5.1.2.1"))
        .expect("lookup")
        .expect("row");
    assert_eq!(stored.location.study_uid, uid("1.2.5.2"));
}

fn patient_keys_and_demographics(store: &dyn IndexStore) {
    let f = Fixture::new(store, "PATIENTS");
    // Same patient ID, different issuers: two patients; no issuer is a third.
    let mut a = f.record("X", "1.2.6.1", "1.2.6.1.1", "CT", "1.2.6.1.1.1", 1);
    a.patient.issuer_of_patient_id = Some("HOSP_A".to_string());
    let mut b = f.record("X", "1.2.6.2", "1.2.6.2.1", "CT", "1.2.6.2.1.1", 1);
    b.patient.issuer_of_patient_id = Some("HOSP_B".to_string());
    let c = f.record("X", "1.2.6.3", "1.2.6.3.1", "CT", "1.2.6.3.1.1", 1);
    let mut d = f.record("X", "1.2.6.4", "1.2.6.4.1", "CT", "1.2.6.4.1.1", 1);
    d.patient.issuer_of_patient_id = None;
    // No patient ID at all is still a patient key.
    let e = f.record("", "1.2.6.5", "1.2.6.5.1", "CT", "1.2.6.5.1.1", 1);
    store.insert_instances(&[a, b, c, d, e]).expect("batch");
    assert_eq!(f.counts(), counts(4, 5, 5, 5));

    // A study re-sent under another patient follows the latest record; the
    // patient it left, now without studies, goes.
    let mut moved = f.record("Y", "1.2.6.5", "1.2.6.5.1", "CT", "1.2.6.5.1.2", 1);
    moved.patient.patient_name = None;
    store.insert_instances(&[moved]).expect("moved study");
    assert_eq!(f.counts(), counts(4, 5, 5, 6));

    // The same within one batch: the study ends with patient W only.
    let batch = [
        f.record("Z", "1.2.6.6", "1.2.6.6.1", "CT", "1.2.6.6.1.1", 1),
        f.record("W", "1.2.6.6", "1.2.6.6.1", "CT", "1.2.6.6.1.2", 1),
    ];
    store
        .insert_instances(&batch)
        .expect("patient change in a batch");
    assert_eq!(f.counts(), counts(5, 6, 6, 8));
}

fn batch_is_all_or_nothing(store: &dyn IndexStore) {
    let f = Fixture::new(store, "ATOMIC");
    store
        .insert_instances(&[f.record("P", "1.2.7.1", "1.2.7.1.1", "CT", "1.2.7.1.1.1", 10)])
        .expect("seed");
    let before = f.counts();

    let good = f.record("P", "1.2.7.2", "1.2.7.2.1", "CT", "1.2.7.2.1.1", 10);
    let replaced = f.record("P", "1.2.7.1", "1.2.7.1.1", "CT", "1.2.7.1.1.1", 77);
    // A partition that does not exist violates a foreign key.
    let mut bad = f.record("P", "1.2.7.3", "1.2.7.3.1", "CT", "1.2.7.3.1.1", 10);
    bad.partition = PartitionId(i64::MAX - 7);
    let result = store.insert_instances(&[good.clone(), replaced, bad]);
    assert!(
        matches!(result, Err(Error::Backend { .. })),
        "a record of an unknown partition fails the batch: {result:?}"
    );
    assert_eq!(f.counts(), before);
    assert_eq!(
        store
            .instance(f.partition, &good.instance.sop_instance_uid)
            .expect("lookup"),
        None
    );
    assert_eq!(
        store
            .study_location(f.partition, &uid("1.2.7.2"))
            .expect("lookup"),
        None
    );
    let kept = store
        .instance(f.partition, &uid("1.2.7.1.1.1"))
        .expect("lookup")
        .expect("row");
    assert_eq!(kept.file_size, 10);

    // An unknown filesystem fails the same way.
    let mut bad = f.record("P", "1.2.7.4", "1.2.7.4.1", "CT", "1.2.7.4.1.1", 10);
    bad.location.filesystem = FilesystemId(i64::MAX - 7);
    assert!(store.insert_instances(&[good.clone(), bad]).is_err());
    assert_eq!(f.counts(), before);

    // The store still works afterwards.
    assert_eq!(
        store.insert_instances(&[good]).expect("good alone"),
        [InsertOutcome::Inserted]
    );
    assert_eq!(f.counts(), counts(1, 2, 2, 2));
}

fn empty_batch(store: &dyn IndexStore) {
    assert_eq!(store.insert_instances(&[]).expect("empty"), []);
}
