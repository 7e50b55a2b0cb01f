//! The backend-agnostic test suite every [`IndexStore`] must pass (SQLite
//! now, PostgreSQL later): each backend calls [`run_all`] on a fresh, empty
//! store, [`run_summaries`] with a probe of its study rows, and
//! [`run_query_suite`] (the [`QueryStore`] checks) on a fresh store.
//!
//! Every check works in partitions of its own, so the checks do not see each
//! other's rows.

use std::collections::BTreeSet;
use std::ops::ControlFlow;

use crate::db::fixtures::{self, counts, uid, Scope};
use crate::db::{Error, IndexStore, QueryStore};
use crate::model::query::{Attribute, DateTimeBound, Key, Level, Match, Matcher, Query, Root};
use crate::model::{
    AeTitle, DeviceSpec, DuplicatePolicy, FilesystemId, FilesystemSpec, FolderName, IndexCounts,
    InsertOutcome, InstanceAttrs, InstanceRecord, PartitionId, PartitionSpec, PatientAttrs,
    StoredInstance, StudyAttrs, StudyLocation, Tier, Uid,
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
    filesystems_at_run_time(store);
    devices(store);
    study_location_is_fixed_by_the_first_instance(store);
    study_location_claims(store);
    batch_counts(store);
    replaced_instances_are_not_counted_twice(store);
    moved_instances_fix_both_sides(store);
    patient_keys_and_demographics(store);
    batch_is_all_or_nothing(store);
    a_called_off_commit_leaves_nothing(store);
    empty_batch(store);
    batch_mixes_every_case(store);
    ingest_lookup_matches_its_parts(store);
}

/// Runs the checks that need the study summary probe.
pub(crate) fn run_summaries(store: &dyn IndexStore, probe: &dyn StudySummaries) {
    removing_one_instance_row(store, probe);
    let f = fixture(store, "SUMMARY");
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

    // A later batch's new SOP class and modality join those the study has.
    let mut sr = f.record("P1", st, "1.2.9.1.6", "SR", "1.2.9.1.6.1", 10);
    sr.instance.sop_class_uid = uid("1.2.840.10008.5.1.4.1.1.88.11");
    store.insert_instances(&[sr]).expect("new class");
    let summary = probe
        .study_summary(f.partition, &uid(st))
        .expect("study exists");
    assert_eq!(summary.modalities_in_study, "CT\\KO\\MR\\SR");
    assert_eq!(
        summary.sop_classes_in_study,
        "1.2.840.10008.5.1.4.1.1.4\\1.2.840.10008.5.1.4.1.1.88.11"
    );
}

/// `IndexStore::remove_instance_row` removes a row only while it names
/// exactly the file given, and keeps the counts and summaries right;
/// emptied series, studies and patients go.
fn removing_one_instance_row(store: &dyn IndexStore, probe: &dyn StudySummaries) {
    let f = fixture(store, "REMOVE_ROW");
    let (st, other) = ("1.2.11.1", "1.2.11.2");
    let mut batch = vec![
        f.record("P1", st, "1.2.11.1.1", "MR", "1.2.11.1.1.1", 100),
        f.record("P1", st, "1.2.11.1.1", "MR", "1.2.11.1.1.2", 100),
        f.record("P1", st, "1.2.11.1.2", "CT", "1.2.11.1.2.1", 50),
        f.record("P1", other, "1.2.11.2.1", "PT", "1.2.11.2.1.1", 10),
    ];
    batch[2].instance.sop_class_uid = uid("1.2.840.10008.5.1.4.1.1.2");
    batch[2].instance.digest = "cd".repeat(32);
    store.insert_instances(&batch).expect("batch");
    let file = |record: &InstanceRecord| crate::db::InstanceFile {
        location: record.location.clone(),
        series_uid: record.series.series_uid.clone(),
        sop_instance_uid: record.instance.sop_instance_uid.clone(),
        file_size: record.instance.file_size,
        digest: record.instance.digest.clone(),
    };
    let remove = |file: &crate::db::InstanceFile| {
        store
            .remove_instance_row(f.partition, file)
            .expect("remove_instance_row")
    };
    assert_eq!(f.counts(), counts(1, 2, 3, 4));

    // An unknown UID, and a row that names another file (digest, size,
    // series or location differ: a later replacement), are left alone.
    let mut unknown = file(&batch[2]);
    unknown.sop_instance_uid = uid("1.2.11.9.9");
    assert!(!remove(&unknown), "an unknown UID removed something");
    let changes: [fn(&mut crate::db::InstanceFile); 4] = [
        |f| f.digest = "ef".repeat(32),
        |f| f.file_size += 1,
        |f| f.series_uid = uid("1.2.11.1.1"),
        |f| f.location.date_folder = "20240201".to_string(),
    ];
    for (n, change) in changes.iter().enumerate() {
        let mut differs = file(&batch[2]);
        change(&mut differs);
        assert!(!remove(&differs), "a row naming another file went ({n})");
    }
    assert!(store
        .instance(f.partition, &uid("1.2.11.1.2.1"))
        .expect("instance")
        .is_some());
    assert_eq!(f.counts(), counts(1, 2, 3, 4));

    // The only CT image: its series goes, and CT and its SOP class leave
    // the study's summaries.
    assert!(remove(&file(&batch[2])), "the matching row stayed");
    assert!(!remove(&file(&batch[2])), "removed twice");
    assert!(store
        .instance(f.partition, &uid("1.2.11.1.2.1"))
        .expect("instance")
        .is_none());
    let summary = probe
        .study_summary(f.partition, &uid(st))
        .expect("study stays");
    assert_eq!(
        (
            summary.num_series,
            summary.num_instances,
            summary.size_bytes
        ),
        (1, 2, 200)
    );
    assert_eq!(summary.modalities_in_study, "MR");
    assert_eq!(summary.sop_classes_in_study, "1.2.840.10008.5.1.4.1.1.4");
    assert_eq!(f.counts(), counts(1, 2, 2, 3));

    // A study's only instance: the study goes, the patient stays.
    assert!(remove(&file(&batch[3])));
    assert!(probe.study_summary(f.partition, &uid(other)).is_none());
    assert_eq!(f.counts(), counts(1, 1, 1, 2));

    // The patient's last instances: everything goes.
    assert!(remove(&file(&batch[0])));
    let summary = probe
        .study_summary(f.partition, &uid(st))
        .expect("study stays");
    assert_eq!((summary.num_instances, summary.size_bytes), (1, 100));
    assert!(remove(&file(&batch[1])));
    assert!(probe.study_summary(f.partition, &uid(st)).is_none());
    assert_eq!(f.counts(), counts(0, 0, 0, 0));
}

fn ae(value: &str) -> AeTitle {
    AeTitle::parse(value).expect("test AE title")
}

fn fs_spec(path: &str, tier: u8) -> FilesystemSpec {
    FilesystemSpec {
        tier: Tier(tier),
        ..fixtures::fs_spec(path)
    }
}

/// A partition and filesystem of their own for one check.
type Fixture<'a> = Scope<'a, dyn IndexStore + 'a>;

/// Partition `name` (described `conformance <name>`) on filesystem
/// `/conformance/<name>`.
fn fixture<'a>(store: &'a dyn IndexStore, name: &str) -> Fixture<'a> {
    Scope::new(
        store,
        PartitionSpec {
            description: format!("conformance {name}"),
            ..fixtures::partition_spec(name)
        },
        fs_spec(&format!("/conformance/{name}"), 1),
    )
}

/// The records of this suite.
trait Records {
    /// An MR image record (or `modality` when given; "" for none).
    fn record(
        &self,
        patient: &str,
        study: &str,
        series: &str,
        modality: &str,
        sop: &str,
        size: u64,
    ) -> InstanceRecord;
}

impl Records for Fixture<'_> {
    fn record(
        &self,
        patient: &str,
        study: &str,
        series: &str,
        modality: &str,
        sop: &str,
        size: u64,
    ) -> InstanceRecord {
        let mut record = self.detailed_record(patient, study, series, sop);
        record.study.accession_number = Some(format!("ACC{study}"));
        record.study.study_description = Some("conformance".to_string());
        record.study.specific_character_set = Some("ISO_IR 192".to_string());
        record.series.modality = (!modality.is_empty()).then(|| modality.to_string());
        record.instance.sop_class_uid = uid("1.2.840.10008.5.1.4.1.1.4");
        record.instance.file_size = size;
        record.instance.source_ae = Some("MODALITY".to_string());
        record
    }
}

fn partitions(store: &dyn IndexStore) {
    let spec = PartitionSpec {
        ae_title: ae("PARTS_A"),
        folder: FolderName::parse("PARTS_A").expect("folder"),
        description: "first".to_string(),
        port: 0,
        accept_unknown_devices: true,
        duplicate_policy: DuplicatePolicy::default(),
        pn_case_insensitive: true,
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
            port: 0,
            accept_unknown_devices: true,
            duplicate_policy: DuplicatePolicy::default(),
            pn_case_insensitive: true,
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

/// The configuration seeds, the operator changes, the first marker
/// stays, and the bytes held are the studies' files.
fn filesystems_at_run_time(store: &dyn IndexStore) {
    let mut spec = fs_spec("/conformance/fs/seeded", 2);
    spec.capacity_mb = Some(64);
    let (row, created) = store.seed_filesystem(&spec).expect("seed");
    assert!(created, "a new path is created");
    assert_eq!(row.spec, spec);
    assert!(row.enabled && row.marker.is_none());

    // The configuration changed: the index's row stays in force.
    let mut edited = spec.clone();
    edited.tier = Tier(1);
    edited.capacity_mb = None;
    let (again, created) = store.seed_filesystem(&edited).expect("seed again");
    assert!(!created);
    assert_eq!(again, row, "a known path is never changed by the seed");

    // The operator's change.
    let mut changed = row.clone();
    changed.enabled = false;
    changed.spec.capacity_mb = Some(7);
    changed.spec.low_watermark = 10.0;
    changed.spec.write_only = true;
    store.update_filesystem(&changed).expect("update");
    let listed = store.filesystems().expect("list");
    let read_back = listed.iter().find(|f| f.id == row.id).expect("listed");
    assert_eq!(*read_back, changed);
    let mut unknown = changed.clone();
    unknown.id = FilesystemId(i64::MAX);
    assert!(matches!(
        store.update_filesystem(&unknown),
        Err(Error::NotFound { .. })
    ));

    // The first marker recorded wins.
    assert_eq!(
        store
            .record_filesystem_marker(row.id, "first")
            .expect("mark"),
        "first"
    );
    assert_eq!(
        store
            .record_filesystem_marker(row.id, "second")
            .expect("mark again"),
        "first"
    );
    store
        .update_filesystem(&changed)
        .expect("update keeps the marker");
    let listed = store.filesystems().expect("list");
    let read_back = listed.iter().find(|f| f.id == row.id).expect("listed");
    assert_eq!(read_back.marker.as_deref(), Some("first"));
    assert!(matches!(
        store.record_filesystem_marker(FilesystemId(i64::MAX), "x"),
        Err(Error::NotFound { .. })
    ));

    // Bytes held: the studies' instance files.
    let f = fixture(store, "HELD");
    let held = |store: &dyn IndexStore| {
        store
            .filesystem_held_bytes()
            .expect("held")
            .into_iter()
            .find(|(id, _)| *id == f.fs)
            .map_or(0, |(_, bytes)| bytes)
    };
    assert_eq!(held(store), 0);
    let batch = vec![
        f.record("P1", "1.2.77.1", "1.2.77.1.1", "CT", "1.2.77.1.1.1", 1000),
        f.record("P1", "1.2.77.1", "1.2.77.1.1", "CT", "1.2.77.1.1.2", 500),
        f.record("P2", "1.2.77.2", "1.2.77.2.1", "MR", "1.2.77.2.1.1", 25),
    ];
    store.insert_instances(&batch).expect("insert");
    assert_eq!(held(store), 1525);
}

fn devices(store: &dyn IndexStore) {
    let f = fixture(store, "DEVICES");
    let g = fixture(store, "DEVICES2");
    assert_eq!(store.devices(f.partition).expect("none"), []);
    let mut ws = DeviceSpec {
        ae_title: ae("WS1"),
        host: "10.0.0.5".to_string(),
        port: 104,
        allow_store: true,
        allow_query: true,
        allow_retrieve: false,
        allow_replace: false,
        max_associations: 0,
        max_outgoing_associations: 0,
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
    ws.max_associations = 3;
    ws.max_outgoing_associations = 2;
    ws.allow_replace = true;
    store.ensure_device(f.partition, &ws).expect("update ws");
    assert_eq!(
        store.devices(f.partition).expect("list"),
        [ct.clone(), ws.clone()]
    );
    assert_eq!(
        store.devices(g.partition).expect("list"),
        std::slice::from_ref(&ct)
    );
    assert_eq!(
        store.device(f.partition, &ae("WS1")).expect("one"),
        Some(ws.clone())
    );
    assert_eq!(store.device(f.partition, &ae("NONE")).expect("one"), None);

    // Deleting: only that partition's row goes; a second delete finds none.
    store
        .ensure_device(
            f.partition,
            &DeviceSpec {
                ae_title: ae("GONE"),
                ..ws.clone()
            },
        )
        .expect("gone");
    assert!(store
        .delete_device(f.partition, &ae("GONE"))
        .expect("delete"));
    assert!(!store
        .delete_device(f.partition, &ae("GONE"))
        .expect("again"));
    assert!(!store
        .delete_device(g.partition, &ae("WS1"))
        .expect("not in g"));
    assert_eq!(store.device(f.partition, &ae("GONE")).expect("one"), None);

    // Registration never overwrites: an administrator's narrowed row stays.
    let unknown_ws = DeviceSpec {
        allow_store: true,
        allow_query: true,
        allow_retrieve: true,
        allow_replace: false,
        port: 0,
        max_associations: 0,
        max_outgoing_associations: 0,
        ..ws.clone()
    };
    assert_eq!(
        store
            .register_device(f.partition, &unknown_ws, 100)
            .expect("register over an existing row"),
        Some(ws.clone()),
        "registration must return the stored row, unchanged"
    );
    assert_eq!(
        store.device(f.partition, &ae("WS1")).expect("one"),
        Some(ws)
    );
    // A new caller is registered while the partition has room ...
    let mr = DeviceSpec {
        ae_title: ae("MR1"),
        ..unknown_ws.clone()
    };
    assert_eq!(
        store
            .register_device(f.partition, &mr, 3)
            .expect("register"),
        Some(mr.clone())
    );
    // ... and not once it holds the most devices allowed.
    let us = DeviceSpec {
        ae_title: ae("US1"),
        ..unknown_ws
    };
    assert_eq!(
        store.register_device(f.partition, &us, 3).expect("cap"),
        None
    );
    assert_eq!(store.device(f.partition, &ae("US1")).expect("one"), None);
    assert_eq!(store.devices(f.partition).expect("list").len(), 3);
    assert_eq!(store.devices(g.partition).expect("list"), [ct]);
}

/// The first claim of a new study's location wins; the batch that indexes
/// the study keeps it.
fn study_location_claims(store: &dyn IndexStore) {
    let f = fixture(store, "CLAIM");
    let other_fs = store
        .ensure_filesystem(&fs_spec("/conformance/CLAIM2", 1))
        .expect("fs");
    let study = uid("1.2.3.7.1");
    let first = f.location("1.2.3.7.1", "20240101");
    let mut second = first.clone();
    second.filesystem = other_fs;
    second.date_folder = "20991231".to_string();
    assert_eq!(
        store
            .claim_study_location(f.partition, &first)
            .expect("claim"),
        first
    );
    assert_eq!(
        store
            .claim_study_location(f.partition, &second)
            .expect("claim again"),
        first,
        "a later claim gets the first one's location"
    );
    assert_eq!(
        store.study_location(f.partition, &study).expect("lookup"),
        Some(first.clone())
    );
    // Indexing the study (even a record proposing the other place) keeps it.
    let mut record = f.record("P", "1.2.3.7.1", "1.2.3.7.1.1", "CT", "1.2.3.7.1.1.1", 10);
    record.location = first.clone();
    store.insert_instances(&[record]).expect("index");
    assert_eq!(
        store.study_location(f.partition, &study).expect("lookup"),
        Some(first.clone())
    );
    assert_eq!(
        store
            .claim_study_location(f.partition, &second)
            .expect("claim an indexed study"),
        first
    );
    assert_eq!(f.counts(), counts(1, 1, 1, 1));
}

fn study_location_is_fixed_by_the_first_instance(store: &dyn IndexStore) {
    let f = fixture(store, "LOCATION");
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

    // A later instance proposing another place does not move the study;
    // one placed on another filesystem than the study's (before a
    // migration moved the study) is refused: its file is not where the
    // study's row would send readers.
    let mut second = f.record("P", "1.2.2.1", "1.2.2.1.1", "CT", "1.2.2.1.1.2", 10);
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
    let mut elsewhere = f.record("P", "1.2.2.1", "1.2.2.1.1", "CT", "1.2.2.1.1.3", 10);
    elsewhere.location.filesystem = other_fs;
    assert_eq!(
        store.insert_instances(&[elsewhere]).expect("third"),
        [InsertOutcome::StudyDeleted]
    );
    assert_eq!(
        store.study_location(f.partition, &study).expect("lookup"),
        Some(expected.clone())
    );

    // Locations are per partition.
    let g = fixture(store, "LOCATION3");
    assert_eq!(
        store.study_location(g.partition, &study).expect("lookup"),
        None
    );
}

fn batch_counts(store: &dyn IndexStore) {
    let f = fixture(store, "COUNTS");
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
    let g = fixture(store, "COUNTS2");
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
    let f = fixture(store, "REPLACE");
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
    let f = fixture(store, "MOVED");
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
    let f = fixture(store, "PATIENTS");
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
    let f = fixture(store, "ATOMIC");
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

/// `insert_instances_when`: a commit called off leaves nothing and says so;
/// one let through commits, asking once.
fn a_called_off_commit_leaves_nothing(store: &dyn IndexStore) {
    let f = fixture(store, "GATED");
    let record = f.record("P", "1.2.8.1", "1.2.8.1.1", "CT", "1.2.8.1.1.1", 10);
    let asked = std::cell::Cell::new(0);
    let result = store.insert_instances_when(std::slice::from_ref(&record), None, &|| {
        asked.set(asked.get() + 1);
        false
    });
    assert!(
        matches!(result, Err(Error::CommitCalledOff)),
        "called off: {result:?}"
    );
    assert_eq!(asked.get(), 1);
    assert_eq!(f.counts(), counts(0, 0, 0, 0));
    assert_eq!(
        store
            .instance(f.partition, &record.instance.sop_instance_uid)
            .expect("lookup"),
        None
    );
    assert_eq!(
        store
            .study_location(f.partition, &uid("1.2.8.1"))
            .expect("lookup"),
        None
    );

    asked.set(0);
    let outcomes = store
        .insert_instances_when(std::slice::from_ref(&record), None, &|| {
            asked.set(asked.get() + 1);
            true
        })
        .expect("let through");
    assert_eq!(outcomes, [InsertOutcome::Inserted]);
    assert_eq!(asked.get(), 1);
    assert_eq!(f.counts(), counts(1, 1, 1, 1));
}

fn empty_batch(store: &dyn IndexStore) {
    assert_eq!(store.insert_instances(&[]).expect("empty"), []);
}

/// One batch doing everything at once: a new instance of a stored study, a
/// new study, one SOP Instance UID twice, a stored instance replaced, and
/// records of a second partition (whose UIDs repeat the first's).
fn batch_mixes_every_case(store: &dyn IndexStore) {
    let f = fixture(store, "MIXED");
    let g = fixture(store, "MIXED2");
    store
        .insert_instances(&[
            f.record("P", "1.2.8.1", "1.2.8.1.1", "CT", "1.2.8.1.1.1", 10),
            f.record("P", "1.2.8.1", "1.2.8.1.1", "CT", "1.2.8.1.1.2", 10),
        ])
        .expect("seed");
    assert_eq!(f.counts(), counts(1, 1, 1, 2));

    let in_g = |mut r: InstanceRecord| {
        r.partition = g.partition;
        r.location = g.location(r.study.study_uid.as_str(), "20240131");
        r
    };
    let mut replaced = f.record("P", "1.2.8.1", "1.2.8.1.1", "CT", "1.2.8.1.1.2", 30);
    replaced.instance.digest = "ee".repeat(32);
    let twice = f.record("Q", "1.2.8.2", "1.2.8.2.1", "MR", "1.2.8.2.1.1", 5);
    let batch = vec![
        f.record("P", "1.2.8.1", "1.2.8.1.1", "CT", "1.2.8.1.1.3", 10),
        in_g(f.record("P", "1.2.8.1", "1.2.8.1.1", "CT", "1.2.8.1.1.1", 10)),
        twice.clone(),
        replaced,
        in_g(f.record("P", "1.2.8.1", "1.2.8.1.1", "CT", "1.2.8.1.1.2", 10)),
        twice,
        in_g(f.record("P", "1.2.8.1", "1.2.8.1.1", "CT", "1.2.8.1.1.1", 20)),
    ];
    assert_eq!(
        store.insert_instances(&batch).expect("mixed batch"),
        [
            InsertOutcome::Inserted,
            InsertOutcome::Inserted,
            InsertOutcome::Inserted,
            InsertOutcome::Replaced,
            InsertOutcome::Inserted,
            InsertOutcome::Replaced,
            InsertOutcome::Replaced,
        ]
    );
    assert_eq!(f.counts(), counts(2, 2, 2, 4));
    assert_eq!(g.counts(), counts(1, 1, 1, 2));
    let size = |scope: &Fixture<'_>, sop: &str| {
        store
            .instance(scope.partition, &uid(sop))
            .expect("lookup")
            .expect("row")
            .file_size
    };
    assert_eq!(size(&f, "1.2.8.1.1.2"), 30);
    assert_eq!(size(&g, "1.2.8.1.1.1"), 20);
}

/// [`IndexStore::ingest_lookup`] answers what its three parts answer, and
/// [`IndexStore::begin_ingest_lookup`] what it answers.
fn ingest_lookup_matches_its_parts(store: &dyn IndexStore) {
    let f = fixture(store, "LOOKUP");
    let parts = |study: &str, sop: &str| crate::db::IngestLookup {
        deletions: store
            .study_deletions(f.partition, &uid(study))
            .expect("deletions"),
        existing: store.instance(f.partition, &uid(sop)).expect("instance"),
        study_patient: store
            .study_patient(f.partition, &uid(study))
            .expect("patient"),
    };
    let check = |study: &str, sop: &str| {
        let lookup = store
            .ingest_lookup(f.partition, &uid(study), &uid(sop))
            .expect("lookup");
        assert_eq!(lookup, parts(study, sop), "study {study}, instance {sop}");
        let begun = store.begin_ingest_lookup(f.partition, &uid(study), &uid(sop));
        assert_eq!(
            begun.wait().expect("begun"),
            lookup,
            "begun: {study}, {sop}"
        );
        lookup
    };
    // Nothing stored yet.
    let empty = check("1.2.10.1", "1.2.10.1.1.1");
    assert_eq!(
        (empty.existing, empty.study_patient),
        (None, None),
        "nothing is stored yet"
    );
    let mut record = f.record("P", "1.2.10.1", "1.2.10.1.1", "CT", "1.2.10.1.1.1", 10);
    record.patient.issuer_of_patient_id = Some("HOSP".to_string());
    store.insert_instances(&[record]).expect("seed");
    let found = check("1.2.10.1", "1.2.10.1.1.1");
    assert!(found.existing.is_some() && found.study_patient.is_some());
    assert_eq!(found.deletions.filesystem, Some(f.fs));
    // A stored study with a new instance; a stored instance asked with
    // another study; neither.
    assert!(check("1.2.10.1", "1.2.10.1.1.2").existing.is_none());
    let other = check("1.2.10.2", "1.2.10.1.1.1");
    assert!(other.existing.is_some() && other.study_patient.is_none());
    check("1.2.10.3", "1.2.10.3.1.1");
}

// ---------------------------------------------------------------- queries ---

/// Takes a study offline (nearline: no filesystem), backend-specific, until
/// the trait has a way to do it.
pub(crate) trait Nearline {
    /// Clears the study's online location.
    fn take_offline(&self, partition: PartitionId, study_uid: &Uid);
}

const CT: &str = "1.2.840.10008.5.1.4.1.1.2";
const MR: &str = "1.2.840.10008.5.1.4.1.1.4";
const SR: &str = "1.2.840.10008.5.1.4.1.1.88.22";
const US: &str = "1.2.840.10008.5.1.4.1.1.6.1";
const CR: &str = "1.2.840.10008.5.1.4.1.1.1";

/// A patient of the query fixture: ID, name, birth date, sex.
type FixturePatient = (
    &'static str,
    Option<&'static str>,
    Option<&'static str>,
    Option<&'static str>,
);

/// A series of the query fixture: UID, modality, series number, SOP class
/// and instances (SOP Instance UID, instance number) in insertion order.
type FixtureSeries = (
    &'static str,
    Option<&'static str>,
    Option<i32>,
    &'static str,
    &'static [(&'static str, Option<i32>)],
);

/// A study of the query fixture.
struct FixtureStudy {
    uid: &'static str,
    patient: FixturePatient,
    date: Option<&'static str>,
    time: Option<&'static str>,
    accession: Option<&'static str>,
    description: Option<&'static str>,
    series: &'static [FixtureSeries],
}

const DOE_JOHN: FixturePatient = ("PID1", Some("DOE^JOHN"), Some("19700101"), Some("M"));
const DOE_JANE: FixturePatient = ("PID2", Some("doe^jane"), Some("19800202"), Some("F"));
const MULLER: FixturePatient = ("PID3", Some("Müller^Jürgen"), Some("19650303"), Some("M"));
const SMITH: FixturePatient = ("PID4", Some("SMITH"), None, Some("O"));
const MC_DONALD: FixturePatient = (
    "PID_5%",
    Some("MC_DONALD^100%"),
    Some("19900505"),
    Some("M"),
);
const MCX_DONALD: FixturePatient = (
    "PIDX5%",
    Some("MCXDONALD^100X"),
    Some("19900505"),
    Some("M"),
);
const NAMELESS: FixturePatient = ("PID7", None, Some("20000101"), Some("F"));

/// Partition A of the query checks. Study-level order: S3, S1, S4, S2, S6,
/// S7, S8, S5 (date, time, UID; S5 has no date).
const QUERY_STUDIES: &[FixtureStudy] = &[
    FixtureStudy {
        uid: "1.2.10.1",
        patient: DOE_JOHN,
        date: Some("20240115"),
        time: Some("101500"),
        accession: Some("ACC1"),
        description: Some("CT CHEST"),
        series: &[
            (
                "1.2.10.1.1",
                Some("CT"),
                Some(1),
                CT,
                &[
                    ("1.2.10.1.1.3", Some(3)),
                    ("1.2.10.1.1.1", Some(1)),
                    ("1.2.10.1.1.2", Some(2)),
                ],
            ),
            (
                "1.2.10.1.2",
                Some("SR"),
                Some(2),
                SR,
                &[("1.2.10.1.2.1", Some(1))],
            ),
        ],
    },
    FixtureStudy {
        uid: "1.2.10.2",
        patient: DOE_JOHN,
        date: Some("20240220"),
        time: Some("0930"),
        accession: Some("ACC2"),
        description: Some("MR KNEE"),
        series: &[(
            "1.2.10.2.1",
            Some("MR"),
            Some(1),
            MR,
            &[("1.2.10.2.1.1", Some(1)), ("1.2.10.2.1.2", Some(2))],
        )],
    },
    FixtureStudy {
        uid: "1.2.10.3",
        patient: DOE_JANE,
        date: Some("20231231"),
        time: Some("235959.5"),
        accession: Some("A%1"),
        description: Some("CT ABDOMEN"),
        series: &[
            (
                "1.2.10.3.2",
                Some("CT"),
                Some(2),
                CT,
                &[("1.2.10.3.2.1", None), ("1.2.10.3.2.2", Some(1))],
            ),
            (
                "1.2.10.3.1",
                Some("CT"),
                Some(1),
                CT,
                &[("1.2.10.3.1.1", Some(1))],
            ),
        ],
    },
    FixtureStudy {
        uid: "1.2.10.4",
        patient: MULLER,
        date: Some("20240115"),
        time: Some("12"),
        accession: Some("A_1"),
        description: Some("Kopf"),
        series: &[(
            "1.2.10.4.1",
            Some("MR"),
            Some(1),
            MR,
            &[("1.2.10.4.1.1", Some(1))],
        )],
    },
    FixtureStudy {
        uid: "1.2.10.5",
        patient: SMITH,
        date: None,
        time: None,
        accession: None,
        description: None,
        series: &[(
            "1.2.10.5.1",
            Some("US"),
            None,
            US,
            &[("1.2.10.5.1.1", None)],
        )],
    },
    FixtureStudy {
        uid: "1.2.10.6",
        patient: MC_DONALD,
        date: Some("20240301"),
        time: Some("080000"),
        accession: Some("A[1]"),
        description: Some("CT HEAD"),
        series: &[(
            "1.2.10.6.1",
            Some("CT"),
            Some(1),
            CT,
            &[("1.2.10.6.1.1", Some(1))],
        )],
    },
    FixtureStudy {
        uid: "1.2.10.7",
        patient: MCX_DONALD,
        date: Some("20240302"),
        time: Some("12:30:00"),
        accession: Some("AX1"),
        description: Some("CT HEAD"),
        series: &[(
            "1.2.10.7.1",
            Some("CT"),
            Some(1),
            CT,
            &[("1.2.10.7.1.1", Some(1))],
        )],
    },
    FixtureStudy {
        uid: "1.2.10.8",
        patient: NAMELESS,
        date: Some("20240303"),
        time: Some("1700"),
        accession: Some("ACC8"),
        description: None,
        series: &[(
            "1.2.10.8.1",
            Some("CR"),
            Some(1),
            CR,
            &[("1.2.10.8.1.1", Some(1))],
        )],
    },
];

/// Partition B: the same UIDs as partition A's S1 (other values), and S9.
const OTHER_PARTITION_STUDIES: &[FixtureStudy] = &[
    FixtureStudy {
        uid: "1.2.10.1",
        patient: DOE_JOHN,
        date: Some("20240115"),
        time: Some("101500"),
        accession: Some("B-ACC1"),
        description: Some("OTHER"),
        series: &[(
            "1.2.10.1.1",
            Some("CT"),
            Some(1),
            CT,
            &[("1.2.10.1.1.1", Some(1))],
        )],
    },
    FixtureStudy {
        uid: "1.2.10.9",
        patient: DOE_JOHN,
        date: Some("20240101"),
        time: None,
        accession: Some("B-ACC9"),
        description: None,
        series: &[(
            "1.2.10.9.1",
            Some("MR"),
            Some(1),
            MR,
            &[("1.2.10.9.1.1", Some(1))],
        )],
    },
];

impl Fixture<'_> {
    /// Indexes the studies, one batch per study.
    fn load(&self, studies: &[FixtureStudy]) {
        for study in studies {
            let (patient_id, name, birth, sex) = study.patient;
            let mut batch = Vec::new();
            for &(series_uid, modality, number, class, instances) in study.series {
                for &(sop, instance_number) in instances {
                    batch.push(InstanceRecord {
                        partition: self.partition,
                        location: self
                            .location(study.uid, &crate::model::study_date_folder(study.date)),
                        patient: PatientAttrs {
                            patient_id: patient_id.to_string(),
                            issuer_of_patient_id: None,
                            patient_name: name.map(str::to_string),
                            birth_date: birth.map(str::to_string),
                            sex: sex.map(str::to_string),
                        },
                        study: StudyAttrs {
                            study_uid: uid(study.uid),
                            study_date: study.date.map(str::to_string),
                            study_time: study.time.map(str::to_string),
                            accession_number: study.accession.map(str::to_string),
                            study_id: Some("1".to_string()),
                            study_description: study.description.map(str::to_string),
                            referring_physician_name: Some("REF^ONE".to_string()),
                            specific_character_set: Some("ISO_IR 192".to_string()),
                        },
                        series: fixtures::series_attrs(series_uid, modality, number),
                        instance: InstanceAttrs {
                            sop_instance_uid: uid(sop),
                            sop_class_uid: uid(class),
                            instance_number,
                            transfer_syntax_uid: uid("1.2.840.10008.1.2.1"),
                            file_size: u64::try_from(sop.len()).expect("small") * 100,
                            digest: format!("{:0>64}", sop.replace('.', "")),
                            source_ae: None,
                        },
                        deletions_seen: None,
                    });
                }
            }
            self.store.insert_instances(&batch).expect("load fixture");
        }
    }
}

fn key(attribute: Attribute, matcher: Matcher) -> Key {
    Key { attribute, matcher }
}

fn single(attribute: Attribute, value: &str) -> Key {
    key(attribute, Matcher::Single(value.to_string()))
}

fn wild(attribute: Attribute, value: &str) -> Key {
    key(attribute, Matcher::Wildcard(value.to_string()))
}

fn range(attribute: Attribute, from: Option<&str>, to: Option<&str>) -> Key {
    key(
        attribute,
        Matcher::Range {
            from: from.map(str::to_string),
            to: to.map(str::to_string),
        },
    )
}

fn list(attribute: Attribute, values: &[&str]) -> Key {
    key(
        attribute,
        Matcher::List(values.iter().map(|v| v.to_string()).collect()),
    )
}

fn universal(attribute: Attribute) -> Key {
    key(attribute, Matcher::Universal)
}

fn query(partition: PartitionId, root: Root, level: Level, keys: Vec<Key>) -> Query {
    Query {
        partition,
        root,
        level,
        keys,
        pn_case_insensitive: true,
        limit: None,
        offset: 0,
    }
}

/// Every match of `query`.
fn find_all(store: &dyn QueryStore, query: &Query) -> Vec<Match> {
    let mut matches = Vec::new();
    store
        .find(query, &mut |m| {
            matches.push(m);
            ControlFlow::Continue(())
        })
        .expect("find");
    matches
}

/// The values of one attribute over the matches (`-` for none).
fn column_of(matches: &[Match], attribute: Attribute) -> Vec<String> {
    matches
        .iter()
        .map(|m| m.get(attribute).unwrap_or("-").to_string())
        .collect()
}

/// Study UIDs `1.2.10.n` for the numbers.
fn studies(numbers: &[u32]) -> Vec<String> {
    numbers.iter().map(|n| format!("1.2.10.{n}")).collect()
}

fn all_instances(store: &dyn QueryStore, query: &Query) -> Vec<StoredInstance> {
    let mut instances = Vec::new();
    store
        .find_instances(query, &mut |i| {
            instances.push(i);
            ControlFlow::Continue(())
        })
        .expect("find_instances");
    instances
}

/// Runs every query check on a fresh store (partitions QUERY_A, QUERY_B).
pub(crate) fn run_query_suite<S: IndexStore + QueryStore>(store: &S, nearline: &dyn Nearline) {
    let a = fixture(store, "QUERY_A");
    a.load(QUERY_STUDIES);
    let b = fixture(store, "QUERY_B");
    b.load(OTHER_PARTITION_STUDIES);
    study_matching(store, a.partition);
    person_names(store, a.partition);
    study_summaries(store, a.partition);
    return_values(store, a.partition);
    counts_at_every_level(store, a.partition);
    hierarchy_and_order(store, a.partition);
    partitions_are_isolated(store, a.partition, b.partition);
    limits_and_cancel(store, a.partition);
    retrieve_lists(store, &a, nearline);
    retrieve_batches(store, a.partition);
    pages_across_changes(store);
    later_batches_update_attributes(store);
}

/// Attributes across batches (each its own transaction): a later record's
/// non-empty values replace the patient's, study's and series' stored
/// ones, its empty ones keep them, and a record that changes nothing
/// leaves them as they are.
fn later_batches_update_attributes<S: IndexStore + QueryStore>(store: &S) {
    use Attribute as A;
    let f = fixture(store, "LATER");
    let (st, se) = ("1.2.78.1", "1.2.78.1.1");
    let first = f.record("LT", st, se, "CT", "1.2.78.1.1.1", 1);
    store.insert_instances(&[first]).expect("first");
    let mut second = f.record("LT", st, se, "CT", "1.2.78.1.1.2", 1);
    second.patient.patient_name = Some("LATER^NAME".to_string());
    second.patient.birth_date = None;
    second.study.study_description = Some("later".to_string());
    second.study.accession_number = None;
    second.series.series_description = Some("series later".to_string());
    second.series.series_number = None;
    store.insert_instances(&[second.clone()]).expect("second");
    let study_keys = || {
        vec![
            universal(A::PatientName),
            universal(A::PatientBirthDate),
            universal(A::StudyDescription),
            universal(A::AccessionNumber),
        ]
    };
    let series_keys = || {
        vec![
            universal(A::SeriesDescription),
            universal(A::SeriesNumber),
            universal(A::Modality),
        ]
    };
    let read = || {
        let studies = find_all(
            store,
            &query(f.partition, Root::Study, Level::Study, study_keys()),
        );
        let series = find_all(
            store,
            &query(f.partition, Root::Study, Level::Series, series_keys()),
        );
        assert_eq!((studies.len(), series.len()), (1, 1));
        let mut values: Vec<String> = study_keys()
            .iter()
            .map(|k| column_of(&studies, k.attribute)[0].clone())
            .collect();
        values.extend(
            series_keys()
                .iter()
                .map(|k| column_of(&series, k.attribute)[0].clone()),
        );
        values
    };
    let expected = [
        "LATER^NAME",
        "19700101",
        "later",
        &format!("ACC{st}"),
        "series later",
        "1",
        "CT",
    ];
    assert_eq!(read(), expected);
    // The same values again, and a record that carries none: no change.
    let mut third = second.clone();
    third.instance.sop_instance_uid = uid("1.2.78.1.1.3");
    let mut fourth = f.record("LT", st, se, "", "1.2.78.1.1.4", 1);
    fourth.patient.patient_name = None;
    fourth.patient.birth_date = None;
    fourth.patient.sex = None;
    fourth.study.study_description = None;
    fourth.study.accession_number = None;
    fourth.series.series_description = None;
    fourth.series.series_number = None;
    for record in [third, fourth] {
        store.insert_instances(&[record]).expect("again");
        assert_eq!(read(), expected);
    }
    assert_eq!(f.counts(), counts(1, 1, 1, 4));
}

/// [`crate::services::find::Pages`] on this backend: every match once,
/// also when an insert between two pages shifts the order, and patients
/// that share an ID under different issuers are both answered.
fn pages_across_changes<S: IndexStore + QueryStore>(store: &S) {
    use crate::services::find::Pages;
    let f = fixture(store, "PAGES");
    let study = |n: u32| format!("1.2.77.{n}");
    let records: Vec<InstanceRecord> = (1..=6)
        .map(|n| {
            f.record(
                "PG",
                &study(n),
                &format!("{}.1", study(n)),
                "CT",
                &format!("{}.1.1", study(n)),
                1,
            )
        })
        .collect();
    store.insert_instances(&records).expect("insert");
    let q = query(f.partition, Root::Study, Level::Study, vec![]);
    let uids = |page: Vec<Match>| column_of(&page, Attribute::StudyInstanceUid);

    let mut pages = Pages::with_page_size(store, q.clone(), 3);
    let first = uids(pages.next().expect("a first page").expect("read"));
    assert_eq!(first, [study(1), study(2), study(3)]);
    // A study that sorts first arrives between the pages: 1.2.77.3 is read
    // again on the second page and passed on once only.
    let early = f.record("PG", &study(0), "1.2.77.0.1", "CT", "1.2.77.0.1.1", 1);
    store.insert_instances(&[early]).expect("insert");
    let rest: Vec<String> = pages.flat_map(|page| uids(page.expect("read"))).collect();
    assert_eq!(rest, [study(4), study(5), study(6)]);

    // Limits: at most limit + 1 in total, whatever the page size.
    for (limit, page_size) in [(0, 3), (4, 3), (4, 5), (50, 2)] {
        let mut capped = q.clone();
        capped.limit = Some(limit);
        let got: Vec<String> = Pages::with_page_size(store, capped, page_size)
            .flat_map(|page| uids(page.expect("read")))
            .collect();
        let all: Vec<String> = (0..=6).map(study).collect();
        assert_eq!(
            got,
            all[..all.len().min(limit as usize + 1)],
            "limit {limit}, pages of {page_size}"
        );
    }

    // Pages grow fourfold: seven studies from a first page of one are
    // three statements, not seven.
    let sizes: Vec<usize> = Pages::with_page_size(store, q.clone(), 1)
        .map(|page| page.expect("read").len())
        .collect();
    assert_eq!(sizes, [1, 4, 2]);

    // Two patients with one ID, told apart by their issuers.
    let mut other = f.record("PG", "1.2.78.1", "1.2.78.1.1", "CT", "1.2.78.1.1.1", 1);
    other.patient.issuer_of_patient_id = Some("OTHER".to_string());
    store.insert_instances(&[other]).expect("insert");
    let patients = query(
        f.partition,
        Root::Patient,
        Level::Patient,
        vec![universal(Attribute::PatientId)],
    );
    let got: Vec<Match> = Pages::with_page_size(store, patients, 1)
        .flat_map(|page| page.expect("read"))
        .collect();
    assert_eq!(column_of(&got, Attribute::PatientId), ["PG", "PG"]);
}

/// Study-level matching in Study Root, table-driven: every matcher on every
/// kind of value.
fn study_matching(store: &dyn QueryStore, partition: PartitionId) {
    use Attribute as A;
    let cases: Vec<(&str, Vec<Key>, &[u32])> = vec![
        (
            "universal",
            vec![universal(A::AccessionNumber)],
            &[3, 1, 4, 2, 6, 7, 8, 5],
        ),
        ("no keys", vec![], &[3, 1, 4, 2, 6, 7, 8, 5]),
        // Text.
        ("text single", vec![single(A::PatientId, "PID1")], &[1, 2]),
        (
            "text single with %",
            vec![single(A::AccessionNumber, "A%1")],
            &[3],
        ),
        (
            "text single is case-sensitive",
            vec![single(A::AccessionNumber, "acc1")],
            &[],
        ),
        (
            "text ? wildcard",
            vec![wild(A::PatientId, "PID?")],
            &[3, 1, 4, 2, 8, 5],
        ),
        ("text literal _", vec![wild(A::PatientId, "PID_5*")], &[6]),
        (
            "text literal %",
            vec![wild(A::AccessionNumber, "A%*")],
            &[3],
        ),
        (
            "text literal _ again",
            vec![wild(A::AccessionNumber, "A_*")],
            &[4],
        ),
        (
            "text literal [",
            vec![wild(A::AccessionNumber, "A[*")],
            &[6],
        ),
        ("text literal ]", vec![wild(A::AccessionNumber, "*]")], &[6]),
        (
            "text middle ?",
            vec![wild(A::AccessionNumber, "A?1")],
            &[3, 4, 7],
        ),
        (
            "text suffix",
            vec![wild(A::AccessionNumber, "*1")],
            &[3, 1, 4, 7],
        ),
        (
            "text middle *",
            vec![wild(A::AccessionNumber, "A*1*")],
            &[3, 1, 4, 6, 7],
        ),
        (
            "text wildcard case-sensitive",
            vec![wild(A::AccessionNumber, "acc*")],
            &[],
        ),
        (
            "lone * matches empty",
            vec![wild(A::AccessionNumber, "*")],
            &[3, 1, 4, 2, 6, 7, 8, 5],
        ),
        (
            "?* skips empty",
            vec![wild(A::AccessionNumber, "?*")],
            &[3, 1, 4, 2, 6, 7, 8],
        ),
        (
            "text range skips empty",
            vec![range(A::AccessionNumber, None, Some("B"))],
            &[3, 1, 4, 2, 6, 7, 8],
        ),
        (
            "text list",
            vec![list(A::AccessionNumber, &["ACC2", "A_1", "NONE"])],
            &[4, 2],
        ),
        (
            "description wildcard",
            vec![wild(A::StudyDescription, "*HEAD")],
            &[6, 7],
        ),
        // Dates.
        (
            "date single",
            vec![single(A::StudyDate, "20240115")],
            &[1, 4],
        ),
        (
            "date closed range",
            vec![range(A::StudyDate, Some("20240101"), Some("20240229"))],
            &[1, 4, 2],
        ),
        (
            "date range bounds inclusive",
            vec![range(A::StudyDate, Some("20240115"), Some("20240220"))],
            &[1, 4, 2],
        ),
        (
            "date open lower",
            vec![range(A::StudyDate, None, Some("20231231"))],
            &[3],
        ),
        (
            "date open upper",
            vec![range(A::StudyDate, Some("20240301"), None)],
            &[6, 7, 8],
        ),
        (
            "date list",
            vec![list(A::StudyDate, &["20240301", "20231231"])],
            &[3, 6],
        ),
        (
            "date wildcard",
            vec![wild(A::StudyDate, "202401*")],
            &[1, 4],
        ),
        (
            "patient birth date above the level",
            vec![range(A::PatientBirthDate, None, Some("19700101"))],
            &[1, 4, 2],
        ),
        // Times: partial values, colons.
        (
            "time single hour",
            vec![single(A::StudyTime, "12")],
            &[4, 7],
        ),
        (
            "time single minute",
            vec![single(A::StudyTime, "1015")],
            &[1],
        ),
        (
            "time single second",
            vec![single(A::StudyTime, "101500")],
            &[1],
        ),
        (
            "time single no match",
            vec![single(A::StudyTime, "1016")],
            &[],
        ),
        (
            "time single with colons",
            vec![single(A::StudyTime, "12:30")],
            &[7],
        ),
        (
            "time closed range",
            vec![range(A::StudyTime, Some("0900"), Some("1030"))],
            &[1, 2],
        ),
        (
            "time range partial upper",
            vec![range(A::StudyTime, Some("0930"), Some("10"))],
            &[1, 2],
        ),
        (
            "time open lower",
            vec![range(A::StudyTime, None, Some("0900"))],
            &[6],
        ),
        (
            "time open upper",
            vec![range(A::StudyTime, Some("2359"), None)],
            &[3],
        ),
        (
            "time colon range",
            vec![range(A::StudyTime, Some("12:00"), Some("12:59"))],
            &[4, 7],
        ),
        (
            "time fraction upper",
            vec![range(A::StudyTime, Some("2359"), Some("235959.4"))],
            &[],
        ),
        (
            "time fraction",
            vec![single(A::StudyTime, "235959.5")],
            &[3],
        ),
        (
            "time list",
            vec![list(A::StudyTime, &["08", "2359"])],
            &[3, 6],
        ),
        ("time wildcard", vec![wild(A::StudyTime, "12*")], &[4, 7]),
        // UIDs.
        (
            "uid single",
            vec![single(A::StudyInstanceUid, "1.2.10.4")],
            &[4],
        ),
        (
            "uid list",
            vec![list(A::StudyInstanceUid, &["1.2.10.2", "1.2.10.5", "9.9"])],
            &[2, 5],
        ),
        (
            "uid list none",
            vec![list(A::StudyInstanceUid, &["9.9"])],
            &[],
        ),
        (
            "uid wildcard",
            vec![wild(A::StudyInstanceUid, "1.2.10.?")],
            &[3, 1, 4, 2, 6, 7, 8, 5],
        ),
        (
            "uid wildcard none",
            vec![wild(A::StudyInstanceUid, "1.2.1?")],
            &[],
        ),
        (
            "uid range",
            vec![range(A::StudyInstanceUid, Some("1.2.10.7"), None)],
            &[7, 8],
        ),
        // Several keys.
        (
            "keys combine",
            vec![
                wild(A::PatientId, "PID*"),
                range(A::StudyDate, Some("20240115"), None),
                single(A::PatientSex, "M"),
            ],
            &[1, 4, 2, 6, 7],
        ),
        // A key below the level is ignored.
        (
            "series key ignored",
            vec![single(A::Modality, "XX")],
            &[3, 1, 4, 2, 6, 7, 8, 5],
        ),
        // Counts are never matched.
        (
            "count not matched",
            vec![single(A::NumberOfStudyRelatedInstances, "99")],
            &[3, 1, 4, 2, 6, 7, 8, 5],
        ),
    ];
    let at = |date: &str, time: Option<&str>| {
        Some(DateTimeBound {
            date: date.to_string(),
            time: time.map(str::to_string),
        })
    };
    let date_time = |from, to| key(A::StudyDate, Matcher::DateTimeRange { from, to });
    let cases: Vec<(&str, Vec<Key>, &[u32])> = cases
        .into_iter()
        .chain([
            // Combined date-time (PS3.4 C.2.2.2.5): separately, 20240115 to
            // 20240302 and 11:00 to 10:00 match nothing.
            (
                "date-time closed range",
                vec![date_time(
                    at("20240115", Some("1100")),
                    at("20240302", Some("1000")),
                )],
                &[4, 2, 6][..],
            ),
            (
                "date-time open lower, partial upper time",
                vec![date_time(None, at("20240115", Some("11")))],
                &[3, 1][..],
            ),
            (
                "date-time open upper, colons stored",
                vec![date_time(at("20240302", Some("1200")), None)],
                &[7, 8][..],
            ),
            (
                "date-time without a lower time",
                vec![date_time(
                    at("20231231", None),
                    at("20240115", Some("1015")),
                )],
                &[3, 1][..],
            ),
            (
                "date-time with the time key returned",
                vec![
                    date_time(at("20240301", Some("0800")), at("20240303", Some("1659"))),
                    universal(A::StudyTime),
                ],
                &[6, 7][..],
            ),
        ])
        .collect();
    for (name, keys, expected) in cases {
        let q = query(partition, Root::Study, Level::Study, keys);
        let found = column_of(&find_all(store, &q), A::StudyInstanceUid);
        assert_eq!(found, studies(expected), "{name}");
        // The same in Patient Root.
        let q = Query {
            root: Root::Patient,
            ..q
        };
        let found = column_of(&find_all(store, &q), A::StudyInstanceUid);
        assert_eq!(found, studies(expected), "{name} (patient root)");
    }
}

/// PatientName matching with and without case folding, beyond ASCII.
fn person_names(store: &dyn QueryStore, partition: PartitionId) {
    use Attribute as A;
    // (value, case-insensitive, wildcard, expected studies)
    let cases: &[(&str, bool, bool, &[u32])] = &[
        ("DOE^JOHN", true, false, &[1, 2]),
        ("doe^john", true, false, &[1, 2]),
        ("doe^john", false, false, &[]),
        ("DOE^JOHN", false, false, &[1, 2]),
        ("DOE*", true, true, &[3, 1, 2]),
        ("DOE*", false, true, &[1, 2]),
        ("doe*", false, true, &[3]),
        ("*JANE", true, true, &[3]),
        ("*JANE", false, true, &[]),
        ("D?E^J*", true, true, &[3, 1, 2]),
        ("*^J?HN", true, true, &[1, 2]),
        // Beyond ASCII: simple case mappings fold.
        ("müller*", true, true, &[4]),
        ("MÜLLER*", true, true, &[4]),
        ("*JÜRGEN", true, true, &[4]),
        ("MÜLLER^JÜRGEN", true, false, &[4]),
        ("müller^jürgen", true, false, &[4]),
        ("Müller*", false, true, &[4]),
        ("MÜLLER*", false, true, &[]),
        ("Müller^Jürgen", false, false, &[4]),
        ("MÜLLER^JÜRGEN", false, false, &[]),
        // LIKE and GLOB metacharacters are literal.
        ("MC_*", true, true, &[6]),
        ("mc_donald^100%", true, false, &[6]),
        ("*100%", true, true, &[6]),
        ("*^100?", true, true, &[6, 7]),
        ("MC[*", true, true, &[]),
        // Empty names: only universal matching.
        ("*", true, true, &[3, 1, 4, 2, 6, 7, 8, 5]),
        ("?*", true, true, &[3, 1, 4, 2, 6, 7, 5]),
    ];
    for &(value, insensitive, wildcard, expected) in cases {
        let matcher = if wildcard {
            Matcher::Wildcard(value.to_string())
        } else {
            Matcher::Single(value.to_string())
        };
        let mut q = query(
            partition,
            Root::Study,
            Level::Study,
            vec![key(A::PatientName, matcher)],
        );
        q.pn_case_insensitive = insensitive;
        let found = column_of(&find_all(store, &q), A::StudyInstanceUid);
        assert_eq!(
            found,
            studies(expected),
            "PatientName {value:?}, case-insensitive {insensitive}"
        );
    }
    // Lists of names, both ways.
    let names = ["doe^jane", "MÜLLER^JÜRGEN", "NOBODY"];
    let mut q = query(
        partition,
        Root::Study,
        Level::Study,
        vec![list(A::PatientName, &names)],
    );
    assert_eq!(
        column_of(&find_all(store, &q), A::StudyInstanceUid),
        studies(&[3, 4])
    );
    q.pn_case_insensitive = false;
    assert_eq!(
        column_of(&find_all(store, &q), A::StudyInstanceUid),
        studies(&[3])
    );
    // Another PN attribute (no index) folds the same way.
    let q = query(
        partition,
        Root::Study,
        Level::Study,
        vec![wild(A::ReferringPhysicianName, "ref^o*")],
    );
    assert_eq!(find_all(store, &q).len(), 8);
    // Patient level, Patient Root: ordered by patient ID.
    let q = query(
        partition,
        Root::Patient,
        Level::Patient,
        vec![wild(A::PatientName, "doe*")],
    );
    let found = find_all(store, &q);
    assert_eq!(column_of(&found, A::PatientId), ["PID1", "PID2"]);
    assert_eq!(column_of(&found, A::PatientName), ["DOE^JOHN", "doe^jane"]);
}

/// ModalitiesInStudy and SOPClassesInStudy: a study matches when one of its
/// series (instances) does.
fn study_summaries(store: &dyn QueryStore, partition: PartitionId) {
    use Attribute as A;
    let cases: Vec<(&str, Key, &[u32])> = vec![
        ("single", single(A::ModalitiesInStudy, "CT"), &[3, 1, 6, 7]),
        (
            "single second modality",
            single(A::ModalitiesInStudy, "SR"),
            &[1],
        ),
        ("single none", single(A::ModalitiesInStudy, "XA"), &[]),
        (
            "single is not a substring",
            single(A::ModalitiesInStudy, "C"),
            &[],
        ),
        (
            "list",
            list(A::ModalitiesInStudy, &["MR", "US"]),
            &[4, 2, 5],
        ),
        (
            "wildcard ?",
            wild(A::ModalitiesInStudy, "C?"),
            &[3, 1, 6, 7, 8],
        ),
        (
            "wildcard suffix",
            wild(A::ModalitiesInStudy, "*R"),
            &[1, 4, 2, 8],
        ),
        (
            "wildcard does not span modalities",
            wild(A::ModalitiesInStudy, "C*R"),
            &[8],
        ),
        (
            "lone *",
            wild(A::ModalitiesInStudy, "*"),
            &[3, 1, 4, 2, 6, 7, 8, 5],
        ),
        ("sop class single", single(A::SopClassesInStudy, SR), &[1]),
        (
            "sop class list",
            list(A::SopClassesInStudy, &[US, CR]),
            &[8, 5],
        ),
        (
            "sop class wildcard",
            wild(A::SopClassesInStudy, "1.2.840.10008.5.1.4.1.1.88.*"),
            &[1],
        ),
    ];
    for (name, k, expected) in cases {
        let q = query(partition, Root::Study, Level::Study, vec![k]);
        let found = column_of(&find_all(store, &q), A::StudyInstanceUid);
        assert_eq!(found, studies(expected), "{name}");
    }
    let q = query(
        partition,
        Root::Study,
        Level::Study,
        vec![
            single(A::StudyInstanceUid, "1.2.10.1"),
            universal(A::ModalitiesInStudy),
            universal(A::SopClassesInStudy),
        ],
    );
    let found = find_all(store, &q);
    assert_eq!(found[0].get(A::ModalitiesInStudy), Some("CT\\SR"));
    assert_eq!(
        found[0].get(A::SopClassesInStudy),
        Some(format!("{CT}\\{SR}").as_str())
    );
}

/// Returned values: the query's keys in order (once each), then the missing
/// unique keys; `None` for absent values; integers as decimal text.
fn return_values(store: &dyn QueryStore, partition: PartitionId) {
    use Attribute as A;
    let q = query(
        partition,
        Root::Study,
        Level::Study,
        vec![
            universal(A::PatientName),
            single(A::StudyDate, "20240115"),
            universal(A::ModalitiesInStudy),
            universal(A::NumberOfStudyRelatedInstances),
            universal(A::PatientName),
            universal(A::IssuerOfPatientId),
            universal(A::Modality),
        ],
    );
    let found = find_all(store, &q);
    let some = |v: &str| Some(v.to_string());
    assert_eq!(
        found[0].values,
        vec![
            (A::PatientName, some("DOE^JOHN")),
            (A::StudyDate, some("20240115")),
            (A::ModalitiesInStudy, some("CT\\SR")),
            (A::NumberOfStudyRelatedInstances, some("4")),
            (A::IssuerOfPatientId, None),
            (A::PatientId, some("PID1")),
            (A::StudyInstanceUid, some("1.2.10.1")),
        ]
    );
    assert_eq!(found[1].get(A::PatientName), Some("Müller^Jürgen"));

    // Absent values are None.
    let q = query(
        partition,
        Root::Study,
        Level::Study,
        vec![
            single(A::PatientId, "PID4"),
            universal(A::StudyDate),
            universal(A::AccessionNumber),
            universal(A::StudyTime),
        ],
    );
    let found = find_all(store, &q);
    assert_eq!(
        found[0].values,
        vec![
            (A::PatientId, some("PID4")),
            (A::StudyDate, None),
            (A::AccessionNumber, None),
            (A::StudyTime, None),
            (A::StudyInstanceUid, some("1.2.10.5")),
        ]
    );

    // Series level: Study Root has no PatientID, Patient Root does.
    let keys = vec![
        single(A::SeriesInstanceUid, "1.2.10.1.2"),
        universal(A::SeriesNumber),
        universal(A::Modality),
    ];
    let found = find_all(
        store,
        &query(partition, Root::Study, Level::Series, keys.clone()),
    );
    assert_eq!(
        found[0].values,
        vec![
            (A::SeriesInstanceUid, some("1.2.10.1.2")),
            (A::SeriesNumber, some("2")),
            (A::Modality, some("SR")),
            (A::StudyInstanceUid, some("1.2.10.1")),
        ]
    );
    let found = find_all(store, &query(partition, Root::Patient, Level::Series, keys));
    assert_eq!(
        found[0].values[3..],
        [
            (A::PatientId, some("PID1")),
            (A::StudyInstanceUid, some("1.2.10.1")),
        ]
    );

    // Image level: every unique key up the hierarchy.
    let found = find_all(
        store,
        &query(
            partition,
            Root::Patient,
            Level::Image,
            vec![
                single(A::SopInstanceUid, "1.2.10.3.2.1"),
                universal(A::InstanceNumber),
                universal(A::SopClassUid),
            ],
        ),
    );
    assert_eq!(
        found[0].values,
        vec![
            (A::SopInstanceUid, some("1.2.10.3.2.1")),
            (A::InstanceNumber, None),
            (A::SopClassUid, some(CT)),
            (A::PatientId, some("PID2")),
            (A::StudyInstanceUid, some("1.2.10.3")),
            (A::SeriesInstanceUid, some("1.2.10.3.2")),
        ]
    );
}

/// Number of related studies, series and instances at every level and in
/// both roots, from the counters.
fn counts_at_every_level(store: &dyn QueryStore, partition: PartitionId) {
    use Attribute as A;
    let patient_counts = vec![
        single(A::PatientId, "PID1"),
        universal(A::NumberOfPatientRelatedStudies),
        universal(A::NumberOfPatientRelatedSeries),
        universal(A::NumberOfPatientRelatedInstances),
    ];
    let found = find_all(
        store,
        &query(
            partition,
            Root::Patient,
            Level::Patient,
            patient_counts.clone(),
        ),
    );
    assert_eq!(found.len(), 1);
    assert_eq!(
        [
            A::NumberOfPatientRelatedStudies,
            A::NumberOfPatientRelatedSeries,
            A::NumberOfPatientRelatedInstances
        ]
        .map(|a| found[0].get(a)),
        [Some("2"), Some("3"), Some("6")]
    );
    // Study Root, study level: still the patient's counters.
    let found = find_all(
        store,
        &query(partition, Root::Study, Level::Study, patient_counts),
    );
    assert_eq!(
        column_of(&found, A::NumberOfPatientRelatedInstances),
        ["6", "6"]
    );
    assert_eq!(
        column_of(&found, A::NumberOfPatientRelatedStudies),
        ["2", "2"]
    );

    let study_counts = vec![
        universal(A::NumberOfStudyRelatedSeries),
        universal(A::NumberOfStudyRelatedInstances),
    ];
    for root in [Root::Study, Root::Patient] {
        let found = find_all(
            store,
            &query(partition, root, Level::Study, study_counts.clone()),
        );
        assert_eq!(
            column_of(&found, A::NumberOfStudyRelatedSeries),
            ["2", "2", "1", "1", "1", "1", "1", "1"]
        );
        assert_eq!(
            column_of(&found, A::NumberOfStudyRelatedInstances),
            ["3", "4", "1", "2", "1", "1", "1", "1"]
        );
        let found = find_all(
            store,
            &query(
                partition,
                root,
                Level::Series,
                vec![
                    single(A::StudyInstanceUid, "1.2.10.1"),
                    universal(A::NumberOfSeriesRelatedInstances),
                ],
            ),
        );
        assert_eq!(
            column_of(&found, A::NumberOfSeriesRelatedInstances),
            ["3", "1"]
        );
    }
}

/// Hierarchical queries and the stable order of every level.
fn hierarchy_and_order(store: &dyn QueryStore, partition: PartitionId) {
    use Attribute as A;
    // Series of one study, by series number.
    let found = find_all(
        store,
        &query(
            partition,
            Root::Study,
            Level::Series,
            vec![single(A::StudyInstanceUid, "1.2.10.3")],
        ),
    );
    assert_eq!(
        column_of(&found, A::SeriesInstanceUid),
        ["1.2.10.3.1", "1.2.10.3.2"]
    );
    // A patient key restricts series through the study (Study Root).
    let found = find_all(
        store,
        &query(
            partition,
            Root::Study,
            Level::Series,
            vec![single(A::PatientId, "PID1"), single(A::Modality, "CT")],
        ),
    );
    assert_eq!(column_of(&found, A::SeriesInstanceUid), ["1.2.10.1.1"]);
    // All series: series number (none last), then UID.
    let found = find_all(store, &query(partition, Root::Study, Level::Series, vec![]));
    assert_eq!(
        column_of(&found, A::SeriesInstanceUid),
        [
            "1.2.10.1.1",
            "1.2.10.2.1",
            "1.2.10.3.1",
            "1.2.10.4.1",
            "1.2.10.6.1",
            "1.2.10.7.1",
            "1.2.10.8.1",
            "1.2.10.1.2",
            "1.2.10.3.2",
            "1.2.10.5.1"
        ]
    );
    // Integers compare numerically; text that is no integer matches nothing.
    let by_number = |matcher: Matcher| {
        let q = query(
            partition,
            Root::Study,
            Level::Series,
            vec![key(A::SeriesNumber, matcher)],
        );
        column_of(&find_all(store, &q), A::SeriesInstanceUid)
    };
    assert_eq!(
        by_number(Matcher::Single("2".into())),
        ["1.2.10.1.2", "1.2.10.3.2"]
    );
    assert_eq!(
        by_number(Matcher::Single(" 02".into())),
        ["1.2.10.1.2", "1.2.10.3.2"]
    );
    assert_eq!(
        by_number(Matcher::Single("two".into())),
        Vec::<String>::new()
    );
    assert_eq!(
        by_number(Matcher::List(vec!["2".into(), "x".into()])),
        ["1.2.10.1.2", "1.2.10.3.2"]
    );
    assert_eq!(by_number(Matcher::Wildcard("*".into())).len(), 10);
    assert_eq!(
        by_number(Matcher::Wildcard("2*".into())),
        ["1.2.10.1.2", "1.2.10.3.2"]
    );
    let number_range = |from: &str, to: &str| Matcher::Range {
        from: Some(from.into()),
        to: Some(to.into()),
    };
    assert_eq!(
        by_number(number_range("2", "10")),
        ["1.2.10.1.2", "1.2.10.3.2"]
    );
    assert_eq!(by_number(number_range("x", "10")), Vec::<String>::new());
    // Series UID lists.
    let found = find_all(
        store,
        &query(
            partition,
            Root::Study,
            Level::Series,
            vec![list(A::SeriesInstanceUid, &["1.2.10.5.1", "1.2.10.2.1"])],
        ),
    );
    assert_eq!(
        column_of(&found, A::SeriesInstanceUid),
        ["1.2.10.2.1", "1.2.10.5.1"]
    );

    // Images of one series, by instance number (none last).
    let images = |series: &str| {
        let q = query(
            partition,
            Root::Study,
            Level::Image,
            vec![
                single(A::StudyInstanceUid, &series[..8]),
                single(A::SeriesInstanceUid, series),
            ],
        );
        column_of(&find_all(store, &q), A::SopInstanceUid)
    };
    assert_eq!(
        images("1.2.10.1.1"),
        ["1.2.10.1.1.1", "1.2.10.1.1.2", "1.2.10.1.1.3"]
    );
    assert_eq!(images("1.2.10.3.2"), ["1.2.10.3.2.2", "1.2.10.3.2.1"]);
    let found = find_all(
        store,
        &query(
            partition,
            Root::Patient,
            Level::Image,
            vec![
                single(A::SeriesInstanceUid, "1.2.10.1.1"),
                single(A::InstanceNumber, "2"),
            ],
        ),
    );
    assert_eq!(column_of(&found, A::SopInstanceUid), ["1.2.10.1.1.2"]);
    let found = find_all(
        store,
        &query(
            partition,
            Root::Study,
            Level::Image,
            vec![list(
                A::SopInstanceUid,
                &["1.2.10.2.1.2", "1.2.10.8.1.1", "1.2.10.1.1.3"],
            )],
        ),
    );
    assert_eq!(
        column_of(&found, A::SopInstanceUid),
        ["1.2.10.8.1.1", "1.2.10.2.1.2", "1.2.10.1.1.3"]
    );
    let found = find_all(
        store,
        &query(
            partition,
            Root::Study,
            Level::Image,
            vec![single(A::SopClassUid, SR)],
        ),
    );
    assert_eq!(column_of(&found, A::SopInstanceUid), ["1.2.10.1.2.1"]);

    // Patients, by patient ID.
    let found = find_all(
        store,
        &query(partition, Root::Patient, Level::Patient, vec![]),
    );
    assert_eq!(
        column_of(&found, A::PatientId),
        ["PID1", "PID2", "PID3", "PID4", "PID7", "PIDX5%", "PID_5%"]
    );

    // The order is stable.
    for level in [Level::Study, Level::Series, Level::Image] {
        let q = query(partition, Root::Study, level, vec![]);
        assert_eq!(find_all(store, &q), find_all(store, &q));
    }
}

fn partitions_are_isolated(store: &dyn QueryStore, a: PartitionId, b: PartitionId) {
    use Attribute as A;
    let accession = |partition| {
        let q = query(
            partition,
            Root::Study,
            Level::Study,
            vec![
                single(A::StudyInstanceUid, "1.2.10.1"),
                universal(A::AccessionNumber),
            ],
        );
        column_of(&find_all(store, &q), A::AccessionNumber)
    };
    assert_eq!(accession(a), ["ACC1"]);
    assert_eq!(accession(b), ["B-ACC1"]);
    let q = query(b, Root::Study, Level::Study, vec![]);
    assert_eq!(
        column_of(&find_all(store, &q), A::StudyInstanceUid),
        studies(&[9, 1])
    );
    let q = query(
        b,
        Root::Patient,
        Level::Patient,
        vec![universal(A::NumberOfPatientRelatedInstances)],
    );
    assert_eq!(
        column_of(&find_all(store, &q), A::NumberOfPatientRelatedInstances),
        ["2"]
    );
    let q = query(
        b,
        Root::Study,
        Level::Series,
        vec![single(A::StudyInstanceUid, "1.2.10.1")],
    );
    assert_eq!(
        column_of(&find_all(store, &q), A::SeriesInstanceUid),
        ["1.2.10.1.1"]
    );
    let q = query(
        b,
        Root::Study,
        Level::Image,
        vec![single(A::SeriesInstanceUid, "1.2.10.1.1")],
    );
    assert_eq!(
        column_of(&find_all(store, &q), A::SopInstanceUid),
        ["1.2.10.1.1.1"]
    );
    let q = query(
        a,
        Root::Study,
        Level::Study,
        vec![single(A::StudyInstanceUid, "1.2.10.9")],
    );
    assert!(find_all(store, &q).is_empty());
    let q = query(PartitionId(i64::MAX - 3), Root::Study, Level::Study, vec![]);
    assert!(find_all(store, &q).is_empty());
}

/// `limit` lets at most limit + 1 matches through; a sink's Break stops.
fn limits_and_cancel(store: &dyn QueryStore, partition: PartitionId) {
    for (limit, expected) in [(0, 1), (3, 4), (7, 8), (8, 8), (100, 8)] {
        for level in [Level::Study, Level::Image] {
            let mut q = query(partition, Root::Study, level, vec![]);
            let all = find_all(store, &q);
            q.limit = Some(limit);
            let capped = find_all(store, &q);
            let expected = if level == Level::Study {
                expected
            } else {
                all.len().min(limit as usize + 1)
            };
            assert_eq!(capped.len(), expected, "limit {limit} at {level:?}");
            assert_eq!(capped[..], all[..expected], "limit {limit} keeps the order");
        }
    }
    // Pages (limit and offset) read back the whole answer in order, at
    // every level, whatever the page size; an offset past the end is empty.
    for level in [Level::Patient, Level::Study, Level::Series, Level::Image] {
        let root = if level == Level::Patient {
            Root::Patient
        } else {
            Root::Study
        };
        let mut q = query(partition, root, level, vec![]);
        let all = find_all(store, &q);
        assert!(all.len() >= 2, "{level:?}: {} matches", all.len());
        for page in [1, 2, 3, all.len() as u64] {
            let mut paged = Vec::new();
            q.offset = 0;
            q.limit = Some(page);
            loop {
                let mut got = find_all(store, &q);
                let more = got.len() as u64 > page;
                got.truncate(page as usize);
                paged.extend(got);
                if !more {
                    break;
                }
                q.offset += page;
            }
            assert_eq!(paged, all, "{level:?} in pages of {page}");
        }
        q.limit = None;
        q.offset = all.len() as u64;
        assert!(find_all(store, &q).is_empty(), "{level:?} past the end");
        q.offset = 1;
        assert_eq!(
            find_all(store, &q)[..],
            all[1..],
            "{level:?} offset, no limit"
        );
    }

    let q = query(partition, Root::Study, Level::Study, vec![]);
    let mut seen = 0;
    store
        .find(&q, &mut |_| {
            seen += 1;
            if seen == 2 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .expect("find");
    assert_eq!(seen, 2);
    let mut seen = 0;
    store
        .find_instances(&q, &mut |_| {
            seen += 1;
            if seen == 3 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .expect("find_instances");
    assert_eq!(seen, 3);
}

/// A retrieve planned without its list ([`crate::services::retrieve`]):
/// its batches, loaded one by one, hold exactly the instances of the
/// whole list, in its order; whole series, at most the batch size unless
/// one series alone is larger; and only what the query named.
fn retrieve_batches(store: &(impl IndexStore + QueryStore), partition: PartitionId) {
    use crate::services::retrieve::{batch_on, plan_on};
    use Attribute as A;
    let sops = |items: &[crate::services::retrieve::RetrieveItem]| -> Vec<String> {
        items
            .iter()
            .map(|i| i.sop_instance_uid.to_string())
            .collect()
    };
    let patient = query(
        partition,
        Root::Patient,
        Level::Patient,
        vec![single(A::PatientId, "PID1")],
    );
    let images = query(
        partition,
        Root::Study,
        Level::Image,
        vec![list(
            A::SopInstanceUid,
            &["1.2.10.2.1.2", "1.2.10.1.2.1", "1.2.10.1.1.3", "9.9"],
        )],
    );
    let everything = query(partition, Root::Study, Level::Study, vec![]);
    for (name, q) in [
        ("patient", &patient),
        ("images", &images),
        ("all", &everything),
    ] {
        let whole: Vec<String> = all_instances(store, q)
            .iter()
            .map(|i| i.sop_instance_uid.to_string())
            .collect();
        for size in [1, 2, 1000] {
            let plan = plan_on(store, q, size).expect("plan");
            assert_eq!(plan.total, whole.len(), "{name}/{size}: total");
            let mut loaded = Vec::new();
            for batch in 0..plan.batches() {
                let items = batch_on(store, &plan, batch).expect("batch");
                // A batch starts a new series only while it holds fewer
                // than `size` instances: only its last series may overflow.
                let last = items.last().map(|i| i.series_uid.clone());
                let before_last = items
                    .iter()
                    .filter(|i| Some(&i.series_uid) != last.as_ref())
                    .count();
                assert!(
                    before_last < size || before_last == 0,
                    "{name}/{size}: batch {batch} holds {before_last} instances before its last series"
                );
                for item in &items {
                    let pair = (item.sop_class_uid.clone(), item.transfer_syntax_uid.clone());
                    assert!(plan.pairs.contains(&pair), "{name}/{size}: pair planned");
                }
                loaded.extend(sops(&items));
            }
            assert_eq!(loaded, whole, "{name}/{size}: batches = the whole list");
            if size == 1 {
                let series: BTreeSet<String> = all_instances(store, q)
                    .iter()
                    .map(|i| i.series_uid.to_string())
                    .collect();
                assert_eq!(plan.batches(), series.len(), "{name}: a batch per series");
            }
        }
    }
    assert!(batch_on(store, &plan_on(store, &patient, 2).unwrap(), 99)
        .unwrap()
        .is_empty());
}

/// The instances below matched entities, with their locations, in study,
/// series and instance order; studies without an online copy are skipped.
fn retrieve_lists(
    store: &(impl IndexStore + QueryStore),
    a: &Fixture<'_>,
    nearline: &dyn Nearline,
) {
    use Attribute as A;
    let partition = a.partition;
    let sops = |instances: &[StoredInstance]| -> Vec<String> {
        instances
            .iter()
            .map(|i| i.sop_instance_uid.to_string())
            .collect()
    };
    let study = query(
        partition,
        Root::Study,
        Level::Study,
        vec![single(A::StudyInstanceUid, "1.2.10.1")],
    );
    let found = all_instances(store, &study);
    assert_eq!(
        sops(&found),
        [
            "1.2.10.1.1.1",
            "1.2.10.1.1.2",
            "1.2.10.1.1.3",
            "1.2.10.1.2.1"
        ]
    );
    for instance in &found {
        assert_eq!(
            Some(instance),
            store
                .instance(partition, &instance.sop_instance_uid)
                .expect("lookup")
                .as_ref()
        );
    }
    assert_eq!(found[0].location, a.location("1.2.10.1", "20240115"));
    assert_eq!(found[3].series_uid, uid("1.2.10.1.2"));
    assert_eq!(found[3].sop_class_uid, uid(SR));
    assert_eq!(found[3].transfer_syntax_uid, uid("1.2.840.10008.1.2.1"));
    assert_eq!(found[3].file_size, 1200);
    assert_eq!(found[3].digest, format!("{:0>64}", "1210121"));

    // Every level: patient, series, image (a UID list), studies by a key.
    let patient = query(
        partition,
        Root::Patient,
        Level::Patient,
        vec![single(A::PatientId, "PID1")],
    );
    assert_eq!(
        sops(&all_instances(store, &patient)),
        [
            "1.2.10.1.1.1",
            "1.2.10.1.1.2",
            "1.2.10.1.1.3",
            "1.2.10.1.2.1",
            "1.2.10.2.1.1",
            "1.2.10.2.1.2"
        ]
    );
    let series = query(
        partition,
        Root::Study,
        Level::Series,
        vec![single(A::SeriesInstanceUid, "1.2.10.3.2")],
    );
    assert_eq!(
        sops(&all_instances(store, &series)),
        ["1.2.10.3.2.2", "1.2.10.3.2.1"]
    );
    let images = query(
        partition,
        Root::Study,
        Level::Image,
        vec![list(
            A::SopInstanceUid,
            &["1.2.10.2.1.2", "1.2.10.1.2.1", "1.2.10.1.1.3", "9.9"],
        )],
    );
    assert_eq!(
        sops(&all_instances(store, &images)),
        ["1.2.10.1.1.3", "1.2.10.1.2.1", "1.2.10.2.1.2"]
    );
    let by_modality = query(
        partition,
        Root::Study,
        Level::Study,
        vec![single(A::ModalitiesInStudy, "MR")],
    );
    assert_eq!(
        sops(&all_instances(store, &by_modality)),
        ["1.2.10.4.1.1", "1.2.10.2.1.1", "1.2.10.2.1.2"]
    );
    // A limit caps matches, not instances: it does not apply here.
    let capped = Query {
        limit: Some(0),
        ..patient.clone()
    };
    assert_eq!(all_instances(store, &capped).len(), 6);

    // A nearline study has nothing to send.
    nearline.take_offline(partition, &uid("1.2.10.2"));
    assert_eq!(
        sops(&all_instances(store, &patient)),
        [
            "1.2.10.1.1.1",
            "1.2.10.1.1.2",
            "1.2.10.1.1.3",
            "1.2.10.1.2.1"
        ]
    );
    let images = query(
        partition,
        Root::Study,
        Level::Image,
        vec![single(A::SopInstanceUid, "1.2.10.2.1.2")],
    );
    assert!(all_instances(store, &images).is_empty());
    // C-FIND still finds it.
    let q = query(
        partition,
        Root::Study,
        Level::Study,
        vec![single(A::StudyInstanceUid, "1.2.10.2")],
    );
    assert_eq!(find_all(store, &q).len(), 1);
}
