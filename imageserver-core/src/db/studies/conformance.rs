//! The backend-agnostic checks of [`StudyStore`]: both backends run
//! [`run_all`] on a fresh store. Each check works in a partition of its own.

use crate::db::fixtures::{self, counts, uid, Scope};
use crate::db::studies::{
    AttributeChange, AuditEntry, AuditFilter, DeletedStudy, EditStatus, EditableAttribute,
    FileFacts, RecodedFile, RecodedSwitch, RowFence, StudyStore, SwitchFailed,
};
use crate::db::{Error, IndexStore};
use crate::model::{
    DuplicateRecord, InsertOutcome, InstanceRecord, PatientIdentity, ReconcileEntry,
    StudyDeletions, Uid,
};

/// Runs every check.
pub(crate) fn run_all<S: IndexStore + StudyStore>(store: &S) {
    reads(store);
    delete_keeps_counters_and_leaves_a_tombstone(store);
    commit_refuses_records_of_a_deleted_study(store);
    edit_demographics_and_history(store);
    edit_patient_id_moves_the_study(store);
    replace_rows(store);
    reconcile_queue(store);
    audit_entries_are_listed_and_filtered(store);
    migration_switch(store);
    recoded_files(store);
}

/// A migration's switch moves the study only as copied; afterwards a
/// record placed at the old location is refused.
fn migration_switch<S: IndexStore + StudyStore>(store: &S) {
    let f = fixture(store, "ST_MIGRATE");
    let other = store
        .ensure_filesystem(&fixtures::fs_spec("/studies/ST_MIGRATE_TIER2"))
        .expect("second filesystem");
    let study = uid("1.17.1");
    let records = [
        f.record("P1", "1.17.1", "1.17.1.1", "1.17.1.1.1"),
        f.record("P1", "1.17.1", "1.17.1.1", "1.17.1.1.2"),
    ];
    store.insert_instances(&records).expect("insert");
    let bytes: u64 = records.iter().map(|r| r.instance.file_size).sum();
    // Not as copied (an instance more, other bytes, another source): no.
    for (from, count, size) in [(f.fs, 3, bytes), (f.fs, 2, bytes + 1), (other, 2, bytes)] {
        assert!(!store
            .switch_study_location(f.partition, &study, from, other, count, size)
            .expect("switch"));
    }
    assert_eq!(
        store
            .study_location(f.partition, &study)
            .expect("read")
            .map(|l| l.filesystem),
        Some(f.fs)
    );
    assert!(store
        .switch_study_location(f.partition, &study, f.fs, other, 2, bytes)
        .expect("switch"));
    assert_eq!(
        store
            .study_location(f.partition, &study)
            .expect("read")
            .map(|l| l.filesystem),
        Some(other)
    );
    assert_eq!(
        store
            .study_deletions(f.partition, &study)
            .expect("read")
            .filesystem,
        Some(other)
    );
    // A record placed before the switch is refused; one placed after it
    // goes in.
    let stale = f.record("P1", "1.17.1", "1.17.1.1", "1.17.1.1.3");
    let mut fresh = f.record("P1", "1.17.1", "1.17.1.1", "1.17.1.1.4");
    fresh.location.filesystem = other;
    assert_eq!(
        store.insert_instances(&[stale, fresh]).expect("batch"),
        [InsertOutcome::StudyDeleted, InsertOutcome::Inserted]
    );

    // Candidates: least recently accessed (or arrived) first.
    for study in ["1.17.2", "1.17.3"] {
        store
            .insert_instances(&[f.record(
                "P1",
                study,
                &format!("{study}.1"),
                &format!("{study}.1.1"),
            )])
            .expect("insert");
    }
    let order = |store: &S| -> Vec<String> {
        let (queued, found) = store.migration_candidates(f.fs, 10).expect("candidates");
        assert_eq!(queued, 0);
        found
            .into_iter()
            .map(|(_, uid, _)| uid.to_string())
            .collect()
    };
    assert_eq!(order(store), ["1.17.2", "1.17.3"]);
    let later = crate::db::studies::now_ms() + 60_000;
    store
        .touch_study(f.partition, &uid("1.17.2"), later, 3_600_000)
        .expect("touch");
    assert_eq!(order(store), ["1.17.3", "1.17.2"]);
    // Within the coarseness an access is not written again.
    store
        .touch_study(f.partition, &uid("1.17.3"), later + 2, 3_600_000)
        .expect("touch");
    store
        .touch_study(f.partition, &uid("1.17.2"), later + 1, 3_600_000)
        .expect("touch again");
    assert_eq!(order(store), ["1.17.2", "1.17.3"]);
    assert_eq!(
        store
            .migration_candidates(f.fs, 1)
            .expect("limited")
            .1
            .len(),
        1
    );
}

/// A switch that records which files it was asked to put in place, and
/// fails when told to.
#[derive(Default)]
struct Recorder {
    put: Vec<Uid>,
    durable: u32,
    fail: bool,
}

impl RecodedSwitch for Recorder {
    fn put_in_place(&mut self, file: &RecodedFile) -> Result<(), SwitchFailed> {
        self.put.push(file.sop_instance_uid.clone());
        if self.fail {
            return Err(SwitchFailed);
        }
        Ok(())
    }

    fn make_durable(&mut self) -> Result<(), SwitchFailed> {
        self.durable += 1;
        Ok(())
    }
}

/// A compression's record changes only the rows that still hold the
/// recoded file's digest, puts only their files in place (a row that
/// changed — a replacement — keeps its file), and the study's size
/// follows; a failed switch changes nothing.
fn recoded_files<S: IndexStore + StudyStore>(store: &S) {
    let f = fixture(store, "ST_RECODE");
    let study = uid("1.18.1");
    let records = [
        f.record("P1", "1.18.1", "1.18.1.1", "1.18.1.1.1"),
        f.record("P1", "1.18.1", "1.18.1.1", "1.18.1.1.2"),
    ];
    store.insert_instances(&records).expect("insert");
    let before = store.study_instances(f.partition, &study).expect("read");
    let recoded = |i: usize, old: &str| RecodedFile {
        sop_instance_uid: records[i].instance.sop_instance_uid.clone(),
        old_digest: old.to_string(),
        transfer_syntax_uid: "1.2.840.10008.1.2.5".into(),
        file_size: 100 + i as u64,
        digest: format!("{i:064x}"),
    };
    let files = [recoded(0, &before[0].digest), recoded(1, "not the digest")];
    // A failing switch rolls the transaction back.
    let mut failing = Recorder {
        fail: true,
        ..Recorder::default()
    };
    assert!(matches!(
        store.record_recoded_files(f.partition, &study, &files, &mut failing),
        Err(Error::Backend { .. })
    ));
    assert_eq!(
        store.study_instances(f.partition, &study).expect("read"),
        before
    );
    let mut switch = Recorder::default();
    assert_eq!(
        store
            .record_recoded_files(f.partition, &study, &files, &mut switch)
            .expect("record"),
        1
    );
    assert_eq!(switch.put, [files[0].sop_instance_uid.clone()]);
    assert_eq!(switch.durable, 1);
    let after = store.study_instances(f.partition, &study).expect("read");
    assert_eq!(after[0].transfer_syntax_uid.as_str(), "1.2.840.10008.1.2.5");
    assert_eq!(
        (after[0].file_size, after[0].digest.as_str()),
        (100, files[0].digest.as_str())
    );
    assert_eq!(after[1], before[1]);
    let size = store
        .study(f.partition, &study)
        .expect("read")
        .expect("study")
        .size_bytes;
    assert_eq!(size, 100 + before[1].file_size);
    // Again (a rerun): the row no longer holds the old digest.
    let mut switch = Recorder::default();
    assert_eq!(
        store
            .record_recoded_files(f.partition, &study, &files[..1], &mut switch)
            .expect("record"),
        0
    );
    assert!(switch.put.is_empty());
    // An unknown study changes nothing.
    assert_eq!(
        store
            .record_recoded_files(f.partition, &uid("1.18.9"), &files, &mut switch)
            .expect("record"),
        0
    );
    assert!(switch.put.is_empty());
}

/// A partition and filesystem of their own for one check.
type Fixture<'a, S> = Scope<'a, S>;

/// Partition `name` on filesystem `/studies/<name>`.
fn fixture<'a, S: IndexStore + StudyStore>(store: &'a S, name: &str) -> Fixture<'a, S> {
    Scope::new(
        store,
        fixtures::partition_spec(name),
        fixtures::fs_spec(format!("/studies/{name}")),
    )
}

/// The records and audit entries of this suite.
trait StudyFixture {
    /// A CT image of `patient` in series `series` of `study`
    /// ([`Scope::detailed_record`]).
    fn record(&self, patient: &str, study: &str, series: &str, sop: &str) -> InstanceRecord;

    /// An audit entry of `action` about `study`, stamped now.
    fn audit(&self, action: &str, study: &str) -> AuditEntry;

    /// Deletes the rows of `study` with a `study.delete` audit entry
    /// (`None`: it was not there).
    fn delete_rows(&self, study: &str) -> Option<DeletedStudy>;
}

impl<S: IndexStore + StudyStore> StudyFixture for Fixture<'_, S> {
    fn record(&self, patient: &str, study: &str, series: &str, sop: &str) -> InstanceRecord {
        self.detailed_record(patient, study, series, sop)
    }

    fn audit(&self, action: &str, study: &str) -> AuditEntry {
        AuditEntry::now(
            "test",
            action,
            self.partition,
            &uid(study),
            "{}".to_string(),
        )
    }

    fn delete_rows(&self, study: &str) -> Option<DeletedStudy> {
        let audit = self.audit("study.delete", study);
        self.store
            .delete_study_rows(self.partition, &uid(study), &audit)
            .expect("delete")
    }
}

fn reads<S: IndexStore + StudyStore>(store: &S) {
    let f = fixture(store, "ST_READS");
    store
        .insert_instances(&[
            f.record("P1", "1.5.1", "1.5.1.1", "1.5.1.1.2"),
            f.record("P1", "1.5.1", "1.5.1.1", "1.5.1.1.1"),
            f.record("P1", "1.5.1", "1.5.1.2", "1.5.1.2.1"),
        ])
        .expect("insert");
    assert_eq!(
        store.study(f.partition, &uid("1.5.9")).expect("lookup"),
        None
    );
    let study = store
        .study(f.partition, &uid("1.5.1"))
        .expect("lookup")
        .expect("known");
    assert_eq!(study.location, Some(f.location("1.5.1", "20240131")));
    assert_eq!(study.patient.patient_id, "P1");
    assert_eq!(study.patient.issuer_of_patient_id, None);
    assert_eq!(study.patient.patient_name.as_deref(), Some("NAME^P1"));
    assert_eq!(study.study.study_description.as_deref(), Some("before"));
    assert_eq!(
        (study.num_series, study.num_instances, study.size_bytes),
        (2, 3, 300)
    );
    assert_eq!(study.modalities_in_study, "CT");
    assert_eq!(study.patient_num_studies, 1);
    assert!(study.received_at_ms > 0);
    let instances = store
        .study_instances(f.partition, &uid("1.5.1"))
        .expect("instances");
    let sops: Vec<&str> = instances
        .iter()
        .map(|i| i.sop_instance_uid.as_str())
        .collect();
    // Ordered by series, instance number, then SOP Instance UID.
    assert_eq!(sops, ["1.5.1.1.1", "1.5.1.1.2", "1.5.1.2.1"]);
    assert!(instances
        .iter()
        .all(|i| i.location == f.location("1.5.1", "20240131")));
    assert!(store
        .study_instances(f.partition, &uid("1.5.9"))
        .expect("none")
        .is_empty());
}

fn delete_keeps_counters_and_leaves_a_tombstone<S: IndexStore + StudyStore>(store: &S) {
    let f = fixture(store, "ST_DELETE");
    store
        .insert_instances(&[
            f.record("P1", "1.6.1", "1.6.1.1", "1.6.1.1.1"),
            f.record("P1", "1.6.1", "1.6.1.1", "1.6.1.1.2"),
            f.record("P1", "1.6.2", "1.6.2.1", "1.6.2.1.1"),
            f.record("P2", "1.6.3", "1.6.3.1", "1.6.3.1.1"),
        ])
        .expect("insert");
    store
        .record_duplicate(&DuplicateRecord {
            partition: f.partition,
            sop_instance_uid: uid("1.6.1.1.1"),
            location: f.location("1.6.1", "20240131"),
            series_uid: uid("1.6.1.1"),
            variant: 7,
            file_size: 10,
            digest: "cd".repeat(32),
            source_ae: None,
            received_at_ms: 1,
        })
        .expect("duplicate");
    assert_eq!(f.counts(), counts(2, 3, 3, 4));
    // A pending edit is abandoned by the deletion.
    store
        .begin_edit(
            f.partition,
            &uid("1.6.1"),
            &[AttributeChange {
                attribute: EditableAttribute::StudyDescription,
                old_value: Some("before".into()),
                new_value: "after".into(),
            }],
            "test",
            "",
        )
        .expect("begin edit");

    let deleted = f.delete_rows("1.6.1").expect("the study was there");
    assert_eq!(deleted.location, f.location("1.6.1", "20240131"));
    assert_eq!(deleted.instances.len(), 2);
    assert_eq!(deleted.duplicates.len(), 1);
    assert_eq!((deleted.num_series, deleted.size_bytes), (1, 200));
    assert!(deleted.since_ms > 0);
    // The patient keeps its other study.
    assert_eq!(f.counts(), counts(2, 2, 2, 2));
    assert!(store.duplicates(f.partition).expect("dups").is_empty());
    assert_eq!(store.study(f.partition, &uid("1.6.1")).expect("gone"), None);
    assert!(store
        .study_instances(f.partition, &uid("1.6.1"))
        .expect("none")
        .is_empty());
    assert_eq!(
        store
            .instance(f.partition, &uid("1.6.1.1.1"))
            .expect("gone"),
        None
    );
    assert!(store
        .pending_edit(f.partition, &uid("1.6.1"))
        .expect("no pending")
        .is_none());
    let history = store
        .edit_history(f.partition, &uid("1.6.1"))
        .expect("history");
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].status, EditStatus::Abandoned);
    let tombstone = store
        .deleting_study(f.partition, &uid("1.6.1"))
        .expect("tombstone")
        .expect("left behind");
    assert_eq!(tombstone.location, f.location("1.6.1", "20240131"));
    assert_eq!(tombstone.since_ms, deleted.since_ms);
    let audit = store.audit_log(f.partition, &uid("1.6.1")).expect("audit");
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0].action, "study.delete");

    // Again: nothing left to delete, nothing written.
    assert_eq!(f.delete_rows("1.6.1"), None);
    assert_eq!(
        store.audit_log(f.partition, &uid("1.6.1")).unwrap().len(),
        1
    );
    assert!(store
        .finish_study_delete(f.partition, &uid("1.6.1"))
        .expect("finish"));
    assert!(!store
        .finish_study_delete(f.partition, &uid("1.6.1"))
        .expect("finish again"));
    assert_eq!(
        store.deleting_study(f.partition, &uid("1.6.1")).unwrap(),
        None
    );
    assert_eq!(
        store.study_location(f.partition, &uid("1.6.1")).unwrap(),
        None
    );

    // The last study of a patient takes the patient with it.
    f.delete_rows("1.6.3").expect("there");
    assert_eq!(f.counts(), counts(1, 1, 1, 1));

    // An instance of the study arriving before the deletion finishes is
    // refused (the deletion's file work may remove its file): the
    // tombstone goes with the deletion.
    f.delete_rows("1.6.2").expect("there");
    assert_eq!(f.counts(), counts(0, 0, 0, 0));
    assert_eq!(
        store
            .insert_instances(&[f.record("P1", "1.6.2", "1.6.2.1", "1.6.2.1.9")])
            .expect("late arrival"),
        [InsertOutcome::StudyDeleted]
    );
    assert_eq!(f.counts(), counts(0, 0, 0, 0));
    assert!(store
        .finish_study_delete(f.partition, &uid("1.6.2"))
        .expect("finish"));
    assert_eq!(
        store.study_location(f.partition, &uid("1.6.2")).unwrap(),
        None
    );
    assert_eq!(
        store.deleting_study(f.partition, &uid("1.6.2")).unwrap(),
        None
    );
    // Once it has finished, the study arrives anew.
    store
        .insert_instances(&[f.record("P1", "1.6.2", "1.6.2.1", "1.6.2.1.9")])
        .expect("arrival after the deletion");
    assert_eq!(
        store.study_location(f.partition, &uid("1.6.2")).unwrap(),
        Some(f.location("1.6.2", "20240131"))
    );
    assert_eq!(f.counts(), counts(1, 1, 1, 1));
}

/// A record of a study being deleted, or deleted since the record's
/// `deletions_seen`, is not indexed; the rest of its batch is.
fn commit_refuses_records_of_a_deleted_study<S: IndexStore + StudyStore>(store: &S) {
    let f = fixture(store, "ST_DEL_RACE");
    let seen = |study: &str| {
        store
            .study_deletions(f.partition, &uid(study))
            .expect("read")
    };
    let with_seen = |mut record: InstanceRecord, seen: StudyDeletions| {
        record.deletions_seen = Some(seen.count);
        record
    };
    store
        .insert_instances(&[f.record("P1", "1.16.1", "1.16.1.1", "1.16.1.1.1")])
        .expect("insert");
    let before = seen("1.16.1");
    assert_eq!(
        before,
        StudyDeletions {
            deleting: false,
            count: 0,
            filesystem: Some(f.fs),
        }
    );
    f.delete_rows("1.16.1").expect("deleted");
    assert_eq!(
        seen("1.16.1"),
        StudyDeletions {
            deleting: true,
            count: 1,
            filesystem: Some(f.fs),
        }
    );
    // Ingest's one read says the same.
    assert_eq!(
        store
            .ingest_lookup(f.partition, &uid("1.16.1"), &uid("1.16.1.1.2"))
            .expect("lookup")
            .deletions,
        seen("1.16.1")
    );

    // While the tombstone is there: refused, whatever the record saw; the
    // other study of the batch commits.
    let batch = [
        f.record("P1", "1.16.1", "1.16.1.1", "1.16.1.1.2"),
        f.record("P2", "1.16.2", "1.16.2.1", "1.16.2.1.1"),
        with_seen(f.record("P1", "1.16.1", "1.16.1.1", "1.16.1.1.3"), before),
    ];
    assert_eq!(
        store.insert_instances(&batch).expect("batch"),
        [
            InsertOutcome::StudyDeleted,
            InsertOutcome::Inserted,
            InsertOutcome::StudyDeleted
        ]
    );
    assert!(store
        .study(f.partition, &uid("1.16.1"))
        .expect("lookup")
        .is_none());
    assert!(store
        .instance(f.partition, &uid("1.16.1.1.2"))
        .expect("lookup")
        .is_none());
    assert!(store
        .instance(f.partition, &uid("1.16.2.1.1"))
        .expect("lookup")
        .is_some());

    // Once the delete has finished: a record placed before it is refused,
    // one placed after it starts the study anew.
    assert!(store
        .finish_study_delete(f.partition, &uid("1.16.1"))
        .expect("finish"));
    let after = seen("1.16.1");
    assert_eq!(
        after,
        StudyDeletions {
            deleting: false,
            count: 1,
            filesystem: None,
        }
    );
    let outcomes = store
        .insert_instances(&[
            with_seen(f.record("P1", "1.16.1", "1.16.1.1", "1.16.1.1.4"), before),
            with_seen(f.record("P1", "1.16.1", "1.16.1.1", "1.16.1.1.5"), after),
        ])
        .expect("batch");
    assert_eq!(
        outcomes,
        [InsertOutcome::StudyDeleted, InsertOutcome::Inserted]
    );
    let study = store
        .study(f.partition, &uid("1.16.1"))
        .expect("lookup")
        .expect("arrived again");
    assert_eq!(study.num_instances, 1);
    assert!(store
        .instance(f.partition, &uid("1.16.1.1.4"))
        .expect("lookup")
        .is_none());
}

fn change(attribute: EditableAttribute, old: Option<&str>, new: &str) -> AttributeChange {
    AttributeChange {
        attribute,
        old_value: old.map(str::to_string),
        new_value: new.to_string(),
    }
}

fn edit_demographics_and_history<S: IndexStore + StudyStore>(store: &S) {
    let f = fixture(store, "ST_EDIT");
    store
        .insert_instances(&[
            f.record("P1", "1.7.1", "1.7.1.1", "1.7.1.1.1"),
            f.record("P1", "1.7.1", "1.7.1.1", "1.7.1.1.2"),
        ])
        .expect("insert");
    let changes = vec![
        change(EditableAttribute::StudyDescription, Some("before"), "after"),
        change(EditableAttribute::PatientName, Some("NAME^P1"), "DOE^JANE"),
        change(EditableAttribute::AccessionNumber, Some("ACC1"), ""),
    ];
    assert!(matches!(
        store.begin_edit(f.partition, &uid("1.7.9"), &changes, "test", "why"),
        Err(Error::NotFound { .. })
    ));
    let edit = store
        .begin_edit(f.partition, &uid("1.7.1"), &changes, "alice", "typo")
        .expect("begin");
    assert_eq!(edit.status, EditStatus::Pending);
    assert_eq!(
        (edit.actor.as_str(), edit.reason.as_str()),
        ("alice", "typo")
    );
    // Changes come back in tag order.
    let order: Vec<EditableAttribute> = edit.changes.iter().map(|c| c.attribute).collect();
    assert_eq!(
        order,
        [
            EditableAttribute::AccessionNumber,
            EditableAttribute::StudyDescription,
            EditableAttribute::PatientName
        ]
    );
    // A second request while one is pending gets the pending one.
    let again = store
        .begin_edit(
            f.partition,
            &uid("1.7.1"),
            &[change(EditableAttribute::StudyId, None, "9")],
            "bob",
            "",
        )
        .expect("pending");
    assert_eq!(again, edit);
    assert_eq!(
        store.pending_edit(f.partition, &uid("1.7.1")).unwrap(),
        Some(edit.clone())
    );

    let files = [
        FileFacts {
            sop_instance_uid: uid("1.7.1.1.1"),
            file_size: 110,
            digest: "01".repeat(32),
        },
        FileFacts {
            sop_instance_uid: uid("1.7.1.1.2"),
            file_size: 120,
            digest: "02".repeat(32),
        },
    ];
    store
        .complete_edit(&edit, &files, &f.audit("study.edit", "1.7.1"))
        .expect("complete");
    let study = store.study(f.partition, &uid("1.7.1")).unwrap().unwrap();
    assert_eq!(study.patient.patient_name.as_deref(), Some("DOE^JANE"));
    assert_eq!(study.study.study_description.as_deref(), Some("after"));
    assert_eq!(study.study.accession_number, None);
    assert_eq!(study.size_bytes, 230);
    let stored = store
        .instance(f.partition, &uid("1.7.1.1.2"))
        .unwrap()
        .unwrap();
    assert_eq!(
        (stored.file_size, stored.digest.as_str()),
        (120, "02".repeat(32).as_str())
    );
    assert_eq!(f.counts(), counts(1, 1, 1, 2));
    // Completing twice is refused; nothing pending any more.
    assert!(matches!(
        store.complete_edit(&edit, &files, &f.audit("study.edit", "1.7.1")),
        Err(Error::NotFound { .. })
    ));
    assert_eq!(
        store.pending_edit(f.partition, &uid("1.7.1")).unwrap(),
        None
    );
    let history = store.edit_history(f.partition, &uid("1.7.1")).unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].status, EditStatus::Completed);
    assert!(history[0].completed_at_ms.is_some());
    assert_eq!(history[0].changes, edit.changes);
    assert_eq!(
        store.audit_log(f.partition, &uid("1.7.1")).unwrap().len(),
        1
    );
}

fn edit_patient_id_moves_the_study<S: IndexStore + StudyStore>(store: &S) {
    let f = fixture(store, "ST_MOVE");
    store
        .insert_instances(&[
            f.record("P1", "1.8.1", "1.8.1.1", "1.8.1.1.1"),
            f.record("P1", "1.8.2", "1.8.2.1", "1.8.2.1.1"),
            f.record("P2", "1.8.3", "1.8.3.1", "1.8.3.1.1"),
        ])
        .expect("insert");
    assert_eq!(f.counts(), counts(2, 3, 3, 3));
    let complete = |study: &str, changes: &[AttributeChange]| {
        let edit = store
            .begin_edit(f.partition, &uid(study), changes, "test", "")
            .expect("begin");
        store
            .complete_edit(&edit, &[], &f.audit("study.edit", study))
            .expect("complete");
    };
    // To a new patient: created with the old demographics and the new ones.
    complete(
        "1.8.1",
        &[change(EditableAttribute::PatientId, Some("P1"), "P9")],
    );
    assert_eq!(f.counts(), counts(3, 3, 3, 3));
    let moved = store.study(f.partition, &uid("1.8.1")).unwrap().unwrap();
    assert_eq!(moved.patient.patient_id, "P9");
    assert_eq!(moved.patient.patient_name.as_deref(), Some("NAME^P1"));
    assert_eq!(moved.patient_num_studies, 1);
    // To an existing patient: the old one, now empty, goes.
    complete(
        "1.8.3",
        &[
            change(EditableAttribute::PatientId, Some("P2"), "P1"),
            change(EditableAttribute::PatientSex, Some("O"), "F"),
        ],
    );
    assert_eq!(f.counts(), counts(2, 3, 3, 3));
    let merged = store.study(f.partition, &uid("1.8.3")).unwrap().unwrap();
    assert_eq!(merged.patient.patient_id, "P1");
    assert_eq!(merged.patient.sex.as_deref(), Some("F"));
    assert_eq!(merged.patient_num_studies, 2);
    // An issuer is part of the key.
    complete(
        "1.8.2",
        &[change(EditableAttribute::IssuerOfPatientId, None, "HOSP")],
    );
    assert_eq!(f.counts(), counts(3, 3, 3, 3));
    let issued = store.study(f.partition, &uid("1.8.2")).unwrap().unwrap();
    assert_eq!(
        (
            issued.patient.patient_id.as_str(),
            issued.patient.issuer_of_patient_id.as_deref()
        ),
        ("P1", Some("HOSP"))
    );
}

fn replace_rows<S: IndexStore + StudyStore>(store: &S) {
    let f = fixture(store, "ST_REPLACE");
    let fence = |store: &S| {
        store
            .study_row_fence(f.partition, &uid("1.9.1"))
            .expect("fence")
    };
    assert_eq!(fence(store), RowFence(0), "no rows yet");
    let full = vec![
        f.record("P1", "1.9.1", "1.9.1.1", "1.9.1.1.1"),
        f.record("P1", "1.9.1", "1.9.1.1", "1.9.1.1.2"),
        f.record("P1", "1.9.1", "1.9.1.2", "1.9.1.2.1"),
    ];
    store.insert_instances(&full).expect("insert");
    store
        .insert_instances(&[f.record("P2", "1.9.2", "1.9.2.1", "1.9.2.1.1")])
        .expect("insert");
    // Corrupt: only one instance left.
    let outcome = store
        .replace_study_rows(
            f.partition,
            &uid("1.9.1"),
            &full[..1],
            fence(store),
            &f.audit("test.corrupt", "1.9.1"),
        )
        .expect("replace")
        .expect("no row inserted after the fence");
    assert_eq!(
        (outcome.removed_instances, outcome.inserted_instances),
        (3, 1)
    );
    assert_eq!(f.counts(), counts(2, 2, 2, 2));
    // Rebuilt, with a changed description and size.
    let mut rebuilt = full.clone();
    for record in &mut rebuilt {
        record.study.study_description = Some("rebuilt".into());
        record.instance.file_size = 50;
    }
    store
        .replace_study_rows(
            f.partition,
            &uid("1.9.1"),
            &rebuilt,
            fence(store),
            &f.audit("study.reprocess", "1.9.1"),
        )
        .expect("replace")
        .expect("no row inserted after the fence");
    assert_eq!(f.counts(), counts(2, 2, 3, 4));
    let study = store.study(f.partition, &uid("1.9.1")).unwrap().unwrap();
    assert_eq!(study.study.study_description.as_deref(), Some("rebuilt"));
    assert_eq!(
        (study.num_series, study.num_instances, study.size_bytes),
        (2, 3, 150)
    );
    // A record of another study is refused.
    assert!(store
        .replace_study_rows(
            f.partition,
            &uid("1.9.1"),
            &[f.record("P2", "1.9.2", "1.9.2.1", "1.9.2.1.1")],
            fence(store),
            &f.audit("study.reprocess", "1.9.1"),
        )
        .is_err());
    // None: the rows go; the patient with them; the location stays.
    store
        .replace_study_rows(
            f.partition,
            &uid("1.9.1"),
            &[],
            fence(store),
            &f.audit("study.reprocess", "1.9.1"),
        )
        .expect("empty")
        .expect("no row inserted after the fence");
    assert_eq!(f.counts(), counts(1, 1, 1, 1));
    assert_eq!(store.study(f.partition, &uid("1.9.1")).unwrap(), None);
    assert_eq!(
        store.audit_log(f.partition, &uid("1.9.1")).unwrap().len(),
        3
    );

    // A row inserted after the fence was read (ingest, while reprocess
    // listed the files) is never replaced away: nothing changes.
    store.insert_instances(&full[..2]).expect("insert");
    let before = fence(store);
    assert!(before > RowFence(0));
    store.insert_instances(&full[2..]).expect("a later insert");
    assert!(fence(store) > before, "a later row has a greater id");
    assert_eq!(
        store
            .replace_study_rows(
                f.partition,
                &uid("1.9.1"),
                &full[..2],
                before,
                &f.audit("study.reprocess", "1.9.1"),
            )
            .expect("replace"),
        None
    );
    assert_eq!(f.counts(), counts(2, 2, 3, 4), "nothing changed");
    assert_eq!(
        store.audit_log(f.partition, &uid("1.9.1")).unwrap().len(),
        3,
        "nor audited"
    );
    // Rebuilt from a listing taken after the fence: it replaces.
    let outcome = store
        .replace_study_rows(
            f.partition,
            &uid("1.9.1"),
            &full,
            fence(store),
            &f.audit("study.reprocess", "1.9.1"),
        )
        .expect("replace")
        .expect("no row after the fence");
    assert_eq!(
        (outcome.removed_instances, outcome.inserted_instances),
        (3, 3)
    );
}

/// Held instances: recorded with their identity, listed oldest first,
/// resolved once (with the audit entry), and gone with their study; a
/// study's patient and edits are read for ingest's conflict check.
fn reconcile_queue<S: IndexStore + StudyStore>(store: &S) {
    let f = fixture(store, "ST_RECONCILE");
    store
        .insert_instances(&[f.record("P1", "1.9.1", "1.9.1.1", "1.9.1.1.1")])
        .expect("insert");
    let patient = store
        .study_patient(f.partition, &uid("1.9.1"))
        .expect("lookup")
        .expect("known");
    assert_eq!(
        (patient.patient_id.as_str(), patient.patient_name.as_deref()),
        ("P1", Some("NAME^P1"))
    );
    assert_eq!(
        store
            .study_patient(f.partition, &uid("1.9.9"))
            .expect("lookup"),
        None
    );
    assert!(store
        .study_edits(f.partition, &uid("1.9.1"))
        .expect("edits")
        .is_empty());
    let held = |sop: &str, variant: u64, at: i64| ReconcileEntry {
        id: 0,
        partition: f.partition,
        sop_instance_uid: uid(sop),
        sop_class_uid: uid("1.2.840.10008.5.1.4.1.1.2"),
        transfer_syntax_uid: uid("1.2.840.10008.1.2.1"),
        location: f.location("1.9.1", "20240131"),
        series_uid: uid("1.9.1.1"),
        variant,
        file_size: 123,
        digest: "ef".repeat(32),
        source_ae: Some("CT1".to_string()),
        received_at_ms: at,
        identity: PatientIdentity {
            patient_id: "P2".to_string(),
            issuer_of_patient_id: Some("HOSP".to_string()),
            patient_name: Some("OTHER^NAME".to_string()),
            birth_date: None,
        },
    };
    let late = store
        .hold_for_reconcile(&held("1.9.1.1.3", 2, 20))
        .expect("hold");
    let early = store
        .hold_for_reconcile(&held("1.9.1.1.2", 1, 10))
        .expect("hold");
    assert_ne!(early, late);
    let listed = store.reconcile_entries(f.partition).expect("list");
    assert_eq!(
        listed,
        [
            ReconcileEntry {
                id: early,
                ..held("1.9.1.1.2", 1, 10)
            },
            ReconcileEntry {
                id: late,
                ..held("1.9.1.1.3", 2, 20)
            }
        ]
    );
    assert_eq!(
        store.reconcile_entry(f.partition, late).expect("one"),
        Some(listed[1].clone())
    );
    let other = fixture(store, "ST_RECONCILE2");
    assert!(store
        .reconcile_entries(other.partition)
        .expect("list")
        .is_empty());
    assert_eq!(
        store.reconcile_entry(other.partition, late).expect("one"),
        None,
        "an entry belongs to its partition"
    );
    let audit = f.audit("reconcile.reject", "1.9.1");
    assert!(store
        .resolve_reconcile(f.partition, early, &audit)
        .expect("resolve"));
    assert!(!store
        .resolve_reconcile(f.partition, early, &audit)
        .expect("resolve again"));
    let log = store.audit_log(f.partition, &uid("1.9.1")).expect("audit");
    assert_eq!(
        log.iter()
            .filter(|e| e.action == "reconcile.reject")
            .count(),
        1,
        "one audit entry per decision"
    );
    // Deleting the study drops what is held for it.
    f.delete_rows("1.9.1").expect("deleted");
    assert!(store
        .reconcile_entries(f.partition)
        .expect("list")
        .is_empty());
}

/// `audit_entries` lists every partition's entries oldest first, filtered
/// by time, action and study, and limited. The entries are stamped far in
/// the future, after anything the other checks write.
fn audit_entries_are_listed_and_filtered<S: IndexStore + StudyStore>(store: &S) {
    let f = fixture(store, "ST_AUDIT");
    let t = 4_000_000_000_000_i64;
    let entry = |at: i64, action: &str, partition: bool, study: Option<&str>| AuditEntry {
        at_ms: at,
        actor: "AE_\u{e9}".to_string(),
        action: action.to_string(),
        partition: partition.then_some(f.partition),
        study_uid: study.map(uid),
        details: format!("{{\"n\":{at}}}"),
    };
    let before = entry(t - 1, "atna.query", true, None);
    let query = entry(t, "atna.query", true, None);
    let stored = entry(t + 1, "atna.instances-transferred", true, Some("1.9.1"));
    let deleted = entry(t + 2, "atna.study-deleted", false, Some("1.9.1"));
    // Recorded out of order: the listing orders by time.
    for e in [&deleted, &query, &stored, &before] {
        store.record_audit(e).expect("record");
    }
    let list = |filter: AuditFilter| store.audit_entries(&filter).expect("list");
    let since = |filter: AuditFilter| AuditFilter {
        since_ms: Some(t),
        ..filter
    };
    assert_eq!(
        list(since(AuditFilter::default())),
        vec![query.clone(), stored.clone(), deleted.clone()]
    );
    assert_eq!(
        list(since(AuditFilter {
            action: Some("atna.query".into()),
            ..AuditFilter::default()
        })),
        vec![query.clone()]
    );
    assert_eq!(
        list(since(AuditFilter {
            study_uid: Some(uid("1.9.1")),
            ..AuditFilter::default()
        })),
        vec![stored.clone(), deleted.clone()]
    );
    assert_eq!(
        list(since(AuditFilter {
            action: Some("atna.study-deleted".into()),
            study_uid: Some(uid("1.9.1")),
            ..AuditFilter::default()
        })),
        vec![deleted]
    );
    assert_eq!(
        list(since(AuditFilter {
            limit: 2,
            ..AuditFilter::default()
        })),
        vec![query, stored]
    );
    assert!(list(AuditFilter {
        since_ms: Some(t - 1),
        ..AuditFilter::default()
    })
    .contains(&before));
}
