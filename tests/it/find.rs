//! C-FIND against a server loaded by storescu with the corpus of
//! `support/find_corpus.rs`: every matching rule (PS3.4 C.2.2.2) through
//! DCMTK findscu in both models and at every level, statuses and character
//! sets through pynetdicom (`py/find_scu.py`), C-CANCEL, the result cap.
//! Answers are compared exactly, as sets of unique keys and values.

#[path = "support/find_corpus.rs"]
mod find_corpus;
#[path = "support/find_scu.rs"]
pub(crate) mod find_scu;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use dicom_core::Tag;
use dicom_dictionary_std::tags;
use imageserver_core::dicom::dimse::{Command, CommandField, Priority};

use crate::support::archived_files;
use crate::support::corpus::{generate_corpus, CorpusShape};
use crate::support::dcmtk;
use crate::support::raw::{self, Pdu, Proposal, RawPeer};
use crate::support::server::{test_dir, Server};
use find_corpus::{Patient, Study};
use find_scu::{findscu, py_find, FindOutput, Model, PyOutput, PyRequest};

/// C-FIND statuses (PS3.4 C.4.1.1.4).
const SUCCESS: u16 = 0x0000;
const PENDING: u16 = 0xFF00;
const PENDING_WARNING: u16 = 0xFF01;
const CANCEL: u16 = 0xFE00;
const OUT_OF_RESOURCES: u16 = 0xA700;
const IDENTIFIER_MISMATCH: u16 = 0xA900;
const UNABLE_TO_PROCESS: u16 = 0xC000;

const STUDY_ROOT_FIND: &str = "1.2.840.10008.5.1.4.1.2.2.1";

/// A server holding a corpus stored by storescu.
struct Loaded {
    _dir: tempfile::TempDir,
    server: Server,
    patients: Vec<Patient>,
    work: PathBuf,
}

impl Loaded {
    /// Starts a server with `[dicom]` settings and stores `patients` into it.
    fn new(name: &str, patients: Vec<Patient>, settings: &[(&str, &str)]) -> Loaded {
        let dir = test_dir(name);
        let corpus = dir.path().join("corpus");
        let files = find_corpus::write(&corpus, &patients);
        let mut builder = Server::builder(dir.path());
        for (key, value) in settings {
            builder = builder.dicom_setting(key, value);
        }
        let server = builder.start();
        let storescu = dcmtk::store(
            server.addr(),
            server.ae_title(),
            &[&corpus],
            &[],
            Duration::from_secs(300),
        );
        assert!(storescu.success(), "storescu failed:\n{storescu}");
        assert_eq!(
            dcmtk::acknowledged_files(&storescu.text()).len(),
            files.len(),
            "storescu did not get Success for every file:\n{storescu}"
        );
        Loaded {
            work: dir.path().join("work"),
            _dir: dir,
            server,
            patients,
        }
    }

    /// The standard corpus.
    fn standard(name: &str, settings: &[(&str, &str)]) -> Loaded {
        Loaded::new(name, find_corpus::patients(4242), settings)
    }

    fn findscu(&self, model: Model, keys: &[&str], extra: &[&str]) -> FindOutput {
        findscu(
            self.server.addr(),
            self.server.ae_title(),
            model,
            keys,
            extra,
            &self.work,
        )
    }

    fn py(&self, request: &PyRequest<'_>) -> PyOutput {
        py_find(self.server.addr(), self.server.ae_title(), request)
    }

    fn patient(&self, id: &str) -> &Patient {
        self.patients
            .iter()
            .find(|p| p.id == id)
            .expect("known patient")
    }

    /// UIDs of the studies for which `keep` holds.
    fn studies(&self, keep: impl Fn(&Patient, &Study) -> bool) -> BTreeSet<String> {
        self.patients
            .iter()
            .flat_map(|p| p.studies.iter().map(move |s| (p, s)))
            .filter(|(p, s)| keep(p, s))
            .map(|(_, s)| s.uid.clone())
            .collect()
    }
}

fn set<S: ToString>(values: impl IntoIterator<Item = S>) -> BTreeSet<String> {
    values.into_iter().map(|v| v.to_string()).collect()
}

/// Runs findscu and checks the answer: final status Success, and the
/// `column` values of the pendings are exactly `expected` (no duplicates,
/// QueryRetrieveLevel echoed in each).
fn check(
    loaded: &Loaded,
    model: Model,
    keys: &[&str],
    column: Tag,
    expected: &BTreeSet<String>,
) -> FindOutput {
    let out = loaded.findscu(model, keys, &[]);
    let what = format!("{model:?} {keys:?}");
    assert_eq!(out.final_status(), Some(SUCCESS), "{what}:\n{out}");
    let got: Vec<String> = out
        .column(column)
        .into_iter()
        .map(|v| v.unwrap_or_else(|| panic!("{what}: a response without {column}:\n{out}")))
        .collect();
    assert_eq!(&set(&got), expected, "{what}:\n{out}");
    assert_eq!(got.len(), expected.len(), "{what}: duplicates:\n{out}");
    let level = keys
        .iter()
        .find_map(|k| k.strip_prefix("0008,0052="))
        .expect("a level key");
    for level_value in out.column(tags::QUERY_RETRIEVE_LEVEL) {
        assert_eq!(level_value.as_deref(), Some(level), "{what}:\n{out}");
    }
    out
}

/// `key column → value column` of every response.
fn rows(out: &FindOutput, key: Tag, value: Tag) -> BTreeMap<String, String> {
    out.responses
        .iter()
        .map(|r| {
            (
                find_scu::value(r, key).unwrap_or_default(),
                find_scu::value(r, value).unwrap_or_else(|| format!("<no {value}>")),
            )
        })
        .collect()
}

#[test]
fn study_root_matching_with_findscu() {
    let l = Loaded::standard("find-study-root", &[]);
    let uid = tags::STUDY_INSTANCE_UID;
    let study = "0008,0052=STUDY";
    let all = l.studies(|_, _| true);
    let of = |ids: &[&str]| l.studies(|p, _| ids.contains(&p.id.as_str()));
    let p1 = &l.patient("FIND-P1").studies;
    let (s1, s2) = (&p1[0], &p1[1]);
    let s3 = &l.patient("FIND-P2").studies[0];
    let s4 = &l.patient("FIND-P3").studies[0];
    let s5 = &l.patient("FIND-P4").studies[0];
    let list = format!("StudyInstanceUID={}\\{}", s1.uid, s3.uid);
    let sop_class_mr = format!("SOPClassesInStudy={}", find_corpus::MR);

    // (keys besides the level and StudyInstanceUID, expected studies)
    let cases: Vec<(Vec<&str>, BTreeSet<String>)> = vec![
        // Universal.
        (vec![], all.clone()),
        (
            vec!["PatientName", "StudyDate", "AccessionNumber"],
            all.clone(),
        ),
        (vec!["PatientName=*"], all.clone()),
        // PN: single value, case-insensitive by default, wildcards.
        (vec!["PatientName=Doe^John"], of(&["FIND-P1"])),
        (vec!["PatientName=DOE^JOHN"], of(&["FIND-P1"])),
        (vec!["PatientName=doe*"], of(&["FIND-P1", "FIND-P4"])),
        (vec!["PatientName=?oe^j*"], of(&["FIND-P1", "FIND-P4"])),
        (vec!["PatientName=*^Ja*"], of(&["FIND-P3", "FIND-P4"])),
        (vec!["PatientName=D*n"], of(&["FIND-P1"])),
        (vec!["PatientName=Nobody"], set::<&str>([])),
        (
            vec!["ReferringPhysicianName=Ref^*"],
            set([&s1.uid, &s2.uid]),
        ),
        // Text: single, prefix, middle and `?` wildcards; case-sensitive.
        (vec!["PatientID=FIND-P2"], of(&["FIND-P2"])),
        (vec!["PatientID=FIND-P?"], all.clone()),
        (vec!["PatientID=*P3"], of(&["FIND-P3"])),
        (
            vec!["AccessionNumber=ACC-?"],
            set([&s1.uid, &s2.uid, &s3.uid, &s5.uid]),
        ),
        (vec!["AccessionNumber=*-4"], set([&s4.uid])),
        (vec!["AccessionNumber=acc-1"], set::<&str>([])),
        (vec!["StudyDescription=*CT"], set([&s1.uid, &s3.uid])),
        (vec!["StudyDescription=*e*M*"], set([&s2.uid])),
        (vec!["PatientSex=F"], of(&["FIND-P4"])),
        // DA: single, closed and open ranges (bounds inclusive).
        (vec!["StudyDate=20200115"], set([&s1.uid])),
        (vec!["StudyDate=20210101-20211231"], set([&s2.uid, &s3.uid])),
        (vec!["StudyDate=20211231-"], set([&s3.uid, &s4.uid])),
        (vec!["StudyDate=-20200115"], set([&s1.uid, &s5.uid])),
        (
            vec!["PatientBirthDate=19800101-19951231"],
            of(&["FIND-P2", "FIND-P3", "FIND-P4"]),
        ),
        // TM: ranges, partial times, fractions.
        (vec!["StudyTime=080000-140000"], set([&s1.uid, &s4.uid])),
        (vec!["StudyTime=-0800"], set([&s5.uid])),
        (vec!["StudyTime=14-"], set([&s2.uid, &s3.uid])),
        (vec!["StudyTime=083000"], set([&s1.uid])),
        // Date and time ranges match independently (no combined datetime).
        (
            vec!["StudyDate=20200101-20221231", "StudyTime=120000-235959"],
            set([&s2.uid, &s3.uid, &s4.uid]),
        ),
        // UID list.
        (vec![list.as_str()], set([&s1.uid, &s3.uid])),
        // ModalitiesInStudy: single, list, wildcard.
        (vec!["ModalitiesInStudy=MR"], set([&s2.uid, &s4.uid])),
        (vec!["ModalitiesInStudy=OT\\US"], set([&s1.uid, &s5.uid])),
        (vec!["ModalitiesInStudy=M*"], set([&s2.uid, &s4.uid])),
        (vec![sop_class_mr.as_str()], set([&s2.uid, &s4.uid])),
        // Several keys: all must match.
        (
            vec!["PatientName=Doe*", "ModalitiesInStudy=CT"],
            set([&s1.uid]),
        ),
    ];
    for (extra, expected) in &cases {
        let mut keys = vec![study, "StudyInstanceUID"];
        // A later `-k` of the same tag overrides the universal one.
        keys.extend(extra.iter().copied());
        check(&l, Model::Study, &keys, uid, expected);
    }

    // Return keys: every value as stored, counts and modalities.
    let out = check(
        &l,
        Model::Study,
        &[
            study,
            "StudyInstanceUID",
            "StudyDate",
            "StudyTime",
            "AccessionNumber",
            "ModalitiesInStudy",
            "SOPClassesInStudy",
            "StudyDescription",
            "PatientID",
            "NumberOfStudyRelatedSeries",
            "NumberOfStudyRelatedInstances",
            "NumberOfPatientRelatedStudies",
            "RetrieveAETitle",
        ],
        uid,
        &all,
    );
    for patient in &l.patients {
        for s in &patient.studies {
            let row = out
                .responses
                .iter()
                .find(|r| find_scu::value(r, uid).as_deref() == Some(&s.uid))
                .expect("every study answered");
            let get = |tag| find_scu::value(row, tag).unwrap_or_default();
            assert_eq!(get(tags::STUDY_DATE), s.date);
            assert_eq!(get(tags::STUDY_TIME), s.time);
            assert_eq!(get(tags::ACCESSION_NUMBER), s.accession);
            assert_eq!(get(tags::MODALITIES_IN_STUDY), s.modalities(), "{}", s.uid);
            assert_eq!(
                get(tags::SOP_CLASSES_IN_STUDY),
                s.sop_classes(),
                "{}",
                s.uid
            );
            assert_eq!(get(tags::STUDY_DESCRIPTION), s.description);
            assert_eq!(get(tags::PATIENT_ID), patient.id);
            assert_eq!(
                get(tags::NUMBER_OF_STUDY_RELATED_SERIES),
                s.series.len().to_string()
            );
            assert_eq!(
                get(tags::NUMBER_OF_STUDY_RELATED_INSTANCES),
                s.n_instances().to_string()
            );
            assert_eq!(
                get(tags::NUMBER_OF_PATIENT_RELATED_STUDIES),
                patient.studies.len().to_string()
            );
            assert_eq!(get(tags::RETRIEVE_AE_TITLE), l.server.ae_title());
        }
    }

    // SERIES level of S1: universal, modality, number, UID list.
    let series_uid = tags::SERIES_INSTANCE_UID;
    let s1_study = format!("StudyInstanceUID={}", s1.uid);
    let (ct, ot) = (&s1.series[0], &s1.series[1]);
    let series_list = format!("SeriesInstanceUID={}\\{}", ct.uid, ot.uid);
    let series_cases: Vec<(Vec<&str>, BTreeSet<String>)> = vec![
        (vec![], set([&ct.uid, &ot.uid])),
        (vec!["Modality=CT"], set([&ct.uid])),
        (vec!["Modality=O?"], set([&ot.uid])),
        (vec!["SeriesNumber=2"], set([&ot.uid])),
        (vec!["SeriesNumber=1\\2"], set([&ct.uid, &ot.uid])),
        (vec![series_list.as_str()], set([&ct.uid, &ot.uid])),
        (
            vec!["SeriesDate=20200101-20200131"],
            set([&ct.uid, &ot.uid]),
        ),
        (vec!["SeriesDate=20200116-"], set::<&str>([])),
        (vec!["PatientName=Doe*"], set([&ct.uid, &ot.uid])),
        (vec!["PatientName=Müller*"], set::<&str>([])),
    ];
    for (extra, expected) in &series_cases {
        let mut keys = vec!["0008,0052=SERIES", s1_study.as_str(), "SeriesInstanceUID"];
        keys.extend(extra.iter().copied());
        check(&l, Model::Study, &keys, series_uid, expected);
    }
    let out = check(
        &l,
        Model::Study,
        &[
            "0008,0052=SERIES",
            &s1_study,
            "Modality",
            "SeriesNumber",
            "NumberOfSeriesRelatedInstances",
        ],
        series_uid,
        &set([&ct.uid, &ot.uid]),
    );
    // The level's unique key is returned although not asked for.
    assert_eq!(
        rows(&out, series_uid, tags::NUMBER_OF_SERIES_RELATED_INSTANCES),
        BTreeMap::from([(ct.uid.clone(), "3".into()), (ot.uid.clone(), "1".into())])
    );
    assert_eq!(
        rows(&out, series_uid, tags::MODALITY),
        BTreeMap::from([(ct.uid.clone(), "CT".into()), (ot.uid.clone(), "OT".into())])
    );
    assert_eq!(
        rows(&out, series_uid, tags::STUDY_INSTANCE_UID),
        BTreeMap::from([
            (ct.uid.clone(), s1.uid.clone()),
            (ot.uid.clone(), s1.uid.clone())
        ])
    );

    // IMAGE level of the CT series.
    let sop = tags::SOP_INSTANCE_UID;
    let ct_series = format!("SeriesInstanceUID={}", ct.uid);
    let sop_list = format!("SOPInstanceUID={}\\{}", ct.instances[0], ct.instances[2]);
    let ct_class = format!("SOPClassUID={}", find_corpus::CT);
    let image_cases: Vec<(Vec<&str>, BTreeSet<String>)> = vec![
        (vec![], set(&ct.instances)),
        (vec!["InstanceNumber=2"], set([&ct.instances[1]])),
        (
            vec![sop_list.as_str()],
            set([&ct.instances[0], &ct.instances[2]]),
        ),
        (vec![ct_class.as_str()], set(&ct.instances)),
        (vec!["SOPClassUID=1.2.3"], set::<&str>([])),
    ];
    for (extra, expected) in &image_cases {
        let mut keys = vec!["0008,0052=IMAGE", &s1_study, &ct_series, "SOPInstanceUID"];
        keys.extend(extra.iter().copied());
        check(&l, Model::Study, &keys, sop, expected);
    }
    let out = check(
        &l,
        Model::Study,
        &[
            "0008,0052=IMAGE",
            &s1_study,
            &ct_series,
            "InstanceNumber",
            "SOPClassUID",
        ],
        sop,
        &set(&ct.instances),
    );
    let numbers: BTreeMap<String, String> = ct
        .instances
        .iter()
        .enumerate()
        .map(|(i, uid)| (uid.clone(), (i + 1).to_string()))
        .collect();
    assert_eq!(rows(&out, sop, tags::INSTANCE_NUMBER), numbers);
    assert_eq!(
        set(rows(&out, sop, tags::SOP_CLASS_UID).into_values()),
        set([find_corpus::CT])
    );
}

#[test]
fn patient_root_matching_with_findscu() {
    let l = Loaded::standard("find-patient-root", &[]);
    let pid = tags::PATIENT_ID;
    let patient = "0008,0052=PATIENT";
    let ids = |ids: &[&str]| set(ids.iter().copied());
    let cases: Vec<(Vec<&str>, BTreeSet<String>)> = vec![
        (vec![], ids(&["FIND-P1", "FIND-P2", "FIND-P3", "FIND-P4"])),
        (vec!["PatientID=FIND-P3"], ids(&["FIND-P3"])),
        (vec!["PatientID=FIND-P[12]"], ids(&[])),
        (vec!["PatientID=*1"], ids(&["FIND-P1"])),
        (vec!["PatientName=DOE*"], ids(&["FIND-P1", "FIND-P4"])),
        (vec!["PatientName=*n"], ids(&["FIND-P1", "FIND-P3"])),
        (
            vec!["PatientBirthDate=-19851224"],
            ids(&["FIND-P1", "FIND-P2"]),
        ),
        (vec!["PatientBirthDate=19900301"], ids(&["FIND-P3"])),
        (
            vec!["PatientSex=M"],
            ids(&["FIND-P1", "FIND-P2", "FIND-P3"]),
        ),
        (
            vec!["PatientSex=M\\F"],
            ids(&["FIND-P1", "FIND-P2", "FIND-P3", "FIND-P4"]),
        ),
    ];
    for (extra, expected) in &cases {
        let mut keys = vec![patient, "PatientID"];
        keys.extend(extra.iter().copied());
        check(&l, Model::Patient, &keys, pid, expected);
    }

    // Patient-level counts and names.
    let out = check(
        &l,
        Model::Patient,
        &[
            patient,
            "PatientName",
            "NumberOfPatientRelatedStudies",
            "NumberOfPatientRelatedSeries",
            "NumberOfPatientRelatedInstances",
        ],
        pid,
        &ids(&["FIND-P1", "FIND-P2", "FIND-P3", "FIND-P4"]),
    );
    for p in &l.patients {
        let counts = format!(
            "{}/{}/{}",
            p.studies.len(),
            p.series().count(),
            p.n_instances()
        );
        let row = out
            .responses
            .iter()
            .find(|r| find_scu::value(r, pid).as_deref() == Some(&p.id))
            .expect("every patient answered");
        let get = |tag| find_scu::value(row, tag).unwrap_or_default();
        let got = format!(
            "{}/{}/{}",
            get(tags::NUMBER_OF_PATIENT_RELATED_STUDIES),
            get(tags::NUMBER_OF_PATIENT_RELATED_SERIES),
            get(tags::NUMBER_OF_PATIENT_RELATED_INSTANCES)
        );
        assert_eq!(got, counts, "{}", p.id);
        assert_eq!(get(tags::PATIENT_NAME), p.name, "{}", p.id);
    }

    // STUDY, SERIES and IMAGE levels under a patient.
    let p1 = l.patient("FIND-P1");
    let (s1, s2) = (&p1.studies[0], &p1.studies[1]);
    let out = check(
        &l,
        Model::Patient,
        &[
            "0008,0052=STUDY",
            "PatientID=FIND-P1",
            "StudyInstanceUID",
            "StudyDate",
        ],
        tags::STUDY_INSTANCE_UID,
        &set([&s1.uid, &s2.uid]),
    );
    assert_eq!(set(out.column(pid).into_iter().flatten()), set(["FIND-P1"]));
    check(
        &l,
        Model::Patient,
        &[
            "0008,0052=STUDY",
            "PatientID=FIND-P1",
            "StudyDate=20210101-",
        ],
        tags::STUDY_INSTANCE_UID,
        &set([&s2.uid]),
    );
    // PatientID scopes the studies: P2's study is not under P1.
    let s3_uid = format!("StudyInstanceUID={}", l.patient("FIND-P2").studies[0].uid);
    check(
        &l,
        Model::Patient,
        &["0008,0052=STUDY", "PatientID=FIND-P1", &s3_uid],
        tags::STUDY_INSTANCE_UID,
        &BTreeSet::new(),
    );
    let s1_study = format!("StudyInstanceUID={}", s1.uid);
    check(
        &l,
        Model::Patient,
        &[
            "0008,0052=SERIES",
            "PatientID=FIND-P1",
            &s1_study,
            "SeriesInstanceUID",
            "Modality=CT",
        ],
        tags::SERIES_INSTANCE_UID,
        &set([&s1.series[0].uid]),
    );
    let series = format!("SeriesInstanceUID={}", s1.series[1].uid);
    check(
        &l,
        Model::Patient,
        &[
            "0008,0052=IMAGE",
            "PatientID=FIND-P1",
            &s1_study,
            &series,
            "SOPInstanceUID",
        ],
        tags::SOP_INSTANCE_UID,
        &set(&s1.series[1].instances),
    );
}

#[test]
fn refusals_unknown_keys_and_pending_statuses() {
    let l = Loaded::standard("find-refusals", &[]);
    let s1 = &l.patient("FIND-P1").studies[0];
    let s1_study = format!("StudyInstanceUID={}", s1.uid);

    // Refusals through findscu: (model, keys, final status).
    let cases: Vec<(Model, Vec<&str>, u16)> = vec![
        // Hierarchy (A900): unique keys above the level, single valued.
        (
            Model::Study,
            vec!["0008,0052=SERIES", "SeriesInstanceUID"],
            IDENTIFIER_MISMATCH,
        ),
        (
            Model::Study,
            vec!["0008,0052=SERIES", "StudyInstanceUID=1.2.3\\1.2.4"],
            IDENTIFIER_MISMATCH,
        ),
        (
            Model::Study,
            vec!["0008,0052=IMAGE", &s1_study],
            IDENTIFIER_MISMATCH,
        ),
        (
            Model::Patient,
            vec!["0008,0052=STUDY", "StudyInstanceUID"],
            IDENTIFIER_MISMATCH,
        ),
        (
            Model::Patient,
            vec!["0008,0052=STUDY", "PatientID=FIND-*"],
            IDENTIFIER_MISMATCH,
        ),
        (
            Model::Patient,
            vec!["0008,0052=SERIES", "PatientID=FIND-P1"],
            IDENTIFIER_MISMATCH,
        ),
        // Keys below the level (Modality at STUDY level is the one
        // leniency: tests/it/query_leniency.rs).
        (
            Model::Study,
            vec!["0008,0052=STUDY", "SeriesDescription=CT"],
            IDENTIFIER_MISMATCH,
        ),
        (
            Model::Study,
            vec!["0008,0052=STUDY", "SOPInstanceUID"],
            IDENTIFIER_MISMATCH,
        ),
        (
            Model::Patient,
            vec!["0008,0052=PATIENT", "StudyDate"],
            IDENTIFIER_MISMATCH,
        ),
        // Levels: missing, unknown, not in the model.
        (Model::Study, vec!["StudyInstanceUID"], IDENTIFIER_MISMATCH),
        (Model::Study, vec!["0008,0052=FRAME"], IDENTIFIER_MISMATCH),
        (
            Model::Study,
            vec!["0008,0052=PATIENT", "PatientID"],
            IDENTIFIER_MISMATCH,
        ),
        // Values that cannot be matched (C000).
        (
            Model::Study,
            vec!["0008,0052=STUDY", "StudyDate=2021*"],
            UNABLE_TO_PROCESS,
        ),
        (
            Model::Study,
            vec!["0008,0052=STUDY", "StudyDate=2021-01-01"],
            UNABLE_TO_PROCESS,
        ),
        (
            Model::Study,
            vec!["0008,0052=STUDY", "StudyTime=25"],
            UNABLE_TO_PROCESS,
        ),
        (
            Model::Study,
            vec!["0008,0052=STUDY", "PatientName=A*\\B*"],
            UNABLE_TO_PROCESS,
        ),
    ];
    for (model, keys, status) in &cases {
        let out = l.findscu(*model, keys, &[]);
        assert_eq!(
            out.final_status(),
            Some(*status),
            "{model:?} {keys:?}:\n{out}"
        );
        assert!(out.responses.is_empty(), "{model:?} {keys:?}:\n{out}");
    }

    // ErrorComment and OffendingElement, through pynetdicom.
    /// (model, keys, status, offending element, text in the comment)
    type PyCase<'a> = (Model, Vec<(&'a str, &'a str)>, u16, u32, &'a str);
    let py_cases: Vec<PyCase> = vec![
        (
            Model::Study,
            vec![("QueryRetrieveLevel", "SERIES"), ("SeriesInstanceUID", "")],
            IDENTIFIER_MISMATCH,
            0x0020_000D,
            "StudyInstanceUID",
        ),
        (
            Model::Patient,
            vec![("QueryRetrieveLevel", "STUDY"), ("PatientID", "FIND-*")],
            IDENTIFIER_MISMATCH,
            0x0010_0020,
            "PatientID",
        ),
        (
            Model::Study,
            vec![("QueryRetrieveLevel", "STUDY"), ("SeriesNumber", "1")],
            IDENTIFIER_MISMATCH,
            0x0020_0011,
            "SeriesNumber",
        ),
        (
            Model::Study,
            vec![("StudyInstanceUID", "")],
            IDENTIFIER_MISMATCH,
            0x0008_0052,
            "QueryRetrieveLevel",
        ),
        (
            Model::Study,
            vec![("QueryRetrieveLevel", "STUDY"), ("StudyDate", "2021*")],
            UNABLE_TO_PROCESS,
            0x0008_0020,
            "StudyDate",
        ),
    ];
    for (model, keys, status, offending, comment) in &py_cases {
        let out = l.py(&PyRequest::new(*model, keys));
        assert_eq!(out.statuses, vec![*status], "{keys:?}: {}", out.log);
        assert_eq!(out.offending, vec![*offending], "{keys:?}: {}", out.log);
        let error_comment = out.error_comment.clone().unwrap_or_default();
        assert!(error_comment.contains(comment), "{keys:?}: {}", out.log);
    }

    // Only supported keys: FF00; an unknown key, a sequence or a private
    // element: FF01 and returned empty; a value on a count: FF01, the count
    // is returned all the same.
    let known = l.py(&PyRequest::new(
        Model::Study,
        &[
            ("QueryRetrieveLevel", "STUDY"),
            ("StudyInstanceUID", &s1.uid),
            ("PatientName", ""),
        ],
    ));
    assert_eq!(known.statuses, vec![PENDING, SUCCESS], "{}", known.log);
    let unknown = l.py(&PyRequest::new(
        Model::Study,
        &[
            ("QueryRetrieveLevel", "STUDY"),
            ("StudyInstanceUID", &s1.uid),
            ("InstanceAvailability", ""),
            ("ReferencedStudySequence", ""),
            ("OtherPatientIDs", "X"),
            ("0009,0010:LO", "ACME"),
            ("0009,1001:LO", ""),
            ("RetrieveAETitle", ""),
        ],
    ));
    assert_eq!(
        unknown.statuses,
        vec![PENDING_WARNING, SUCCESS],
        "{}",
        unknown.log
    );
    let response = &unknown.responses[0];
    for key in [
        "InstanceAvailability",
        "ReferencedStudySequence",
        "OtherPatientIDs",
        "0009,0010",
        "0009,1001",
    ] {
        assert_eq!(
            response.get(key).map(String::as_str),
            Some(""),
            "{key}: {}",
            unknown.log
        );
    }
    assert_eq!(response["StudyInstanceUID"], s1.uid);
    assert_eq!(response["RetrieveAETitle"], l.server.ae_title());
    assert_eq!(response["QueryRetrieveLevel"], "STUDY");
    let count = l.py(&PyRequest::new(
        Model::Study,
        &[
            ("QueryRetrieveLevel", "STUDY"),
            ("StudyInstanceUID", &s1.uid),
            ("NumberOfStudyRelatedInstances", "99"),
        ],
    ));
    assert_eq!(
        count.statuses,
        vec![PENDING_WARNING, SUCCESS],
        "{}",
        count.log
    );
    assert_eq!(count.responses[0]["NumberOfStudyRelatedInstances"], "4");

    // findscu sees an unknown key come back empty too.
    let out = check(
        &l,
        Model::Study,
        &["0008,0052=STUDY", &s1_study, "0008,0056", "0040,0275"],
        tags::STUDY_INSTANCE_UID,
        &set([&s1.uid]),
    );
    assert_eq!(out.column(Tag(0x0008, 0x0056)), vec![Some(String::new())]);
    assert_eq!(out.column(Tag(0x0040, 0x0275)), vec![Some(String::new())]);

    // A hostile identifier: an element claiming 2 GiB is refused (C000)
    // before anything is allocated for it; the association goes on.
    let mut peer = RawPeer::associate(
        l.server.addr(),
        l.server.ae_title(),
        &[Proposal::implicit(1, STUDY_ROOT_FIND)],
    );
    let mut identifier = implicit_identifier(&[(tags::QUERY_RETRIEVE_LEVEL, "STUDY")]);
    identifier.extend([0x10, 0x00, 0x10, 0x00, 0xFF, 0xFF, 0xFF, 0x7F, b'x', b' ']);
    let request = Command::find_rq(1, STUDY_ROOT_FIND, Priority::Medium).encode();
    peer.send_message(1, &request, Some(&identifier))
        .expect("send C-FIND-RQ");
    assert_eq!(
        read_find_responses(&mut peer),
        vec![(UNABLE_TO_PROCESS, false)]
    );
    let rss = l.server.rss_bytes();
    assert!(rss < 1 << 30, "the server grew to {rss} bytes");
    let identifier = implicit_identifier(&[
        (tags::QUERY_RETRIEVE_LEVEL, "STUDY"),
        (tags::STUDY_INSTANCE_UID, &s1.uid),
    ]);
    let request = Command::find_rq(2, STUDY_ROOT_FIND, Priority::Medium).encode();
    peer.send_message(1, &request, Some(&identifier))
        .expect("send C-FIND-RQ");
    assert_eq!(
        read_find_responses(&mut peer),
        vec![(PENDING, true), (SUCCESS, false)]
    );
    peer.release();
}

#[test]
fn character_sets_round_trip() {
    let l = Loaded::standard("find-charsets", &[]);
    let study = |name: &'static str| -> Vec<(&'static str, &'static str)> {
        vec![
            ("QueryRetrieveLevel", "STUDY"),
            ("PatientName", name),
            ("StudyInstanceUID", ""),
        ]
    };
    let p2 = l.patient("FIND-P2");
    let p3 = l.patient("FIND-P3");
    // M ü l l e r ^ H a n s in Latin-1 and in UTF-8 (space-padded to even).
    let muller_latin1 = "4dfc6c6c65725e48616e7320";
    let muller_utf8 = "4dc3bc6c6c65725e48616e73";
    // Ż ó ł ć ^ J a n in UTF-8.
    let zolc_utf8 = "c5bbc3b3c582c4875e4a616e";

    // (request charset, name key, expected patient, response charset, raw name)
    type Case<'a> = (
        Option<&'a str>,
        &'static str,
        &'a Patient,
        Option<&'a str>,
        &'a str,
    );
    let cases: Vec<Case> = vec![
        (
            Some("ISO_IR 100"),
            "Müller*",
            p2,
            Some("ISO_IR 100"),
            muller_latin1,
        ),
        (
            Some("ISO_IR 100"),
            "MÜLLER^HANS",
            p2,
            Some("ISO_IR 100"),
            muller_latin1,
        ),
        (
            Some("ISO_IR 100"),
            "*ü*",
            p2,
            Some("ISO_IR 100"),
            muller_latin1,
        ),
        (
            Some("ISO_IR 192"),
            "Müller*",
            p2,
            Some("ISO_IR 192"),
            muller_utf8,
        ),
        (
            Some("ISO_IR 192"),
            "Żółć*",
            p3,
            Some("ISO_IR 192"),
            zolc_utf8,
        ),
        (
            Some("ISO_IR 192"),
            "żÓŁĆ^jan",
            p3,
            Some("ISO_IR 192"),
            zolc_utf8,
        ),
        // Not Latin-1: answered in UTF-8 although Latin-1 was asked for.
        (
            Some("ISO_IR 100"),
            "*^Jan",
            p3,
            Some("ISO_IR 192"),
            zolc_utf8,
        ),
        // No character set in the request: UTF-8 for non-ASCII names.
        (None, "M*", p2, Some("ISO_IR 192"), muller_utf8),
    ];
    for (charset, name, patient, response_charset, raw) in cases {
        let keys = study(name);
        let out = l.py(&PyRequest {
            charset,
            ..PyRequest::new(Model::Study, &keys)
        });
        let what = format!("{charset:?} {name}: {}", out.log);
        assert_eq!(out.final_status(), Some(SUCCESS), "{what}");
        assert_eq!(out.responses.len(), patient.studies.len(), "{what}");
        let response = &out.responses[0];
        assert_eq!(response["PatientName"], patient.name, "{what}");
        assert_eq!(
            response["StudyInstanceUID"], patient.studies[0].uid,
            "{what}"
        );
        assert_eq!(
            response.get("SpecificCharacterSet").map(String::as_str),
            response_charset,
            "{what}"
        );
        assert_eq!(
            response.get("raw:PatientName").map(String::as_str),
            Some(raw),
            "{what}"
        );
    }

    // Every patient, asked in Latin-1: ASCII names echo it, Müller is
    // Latin-1, Żółć UTF-8; asked without: only non-ASCII names get one.
    for (charset, expected) in [
        (
            Some("ISO_IR 100"),
            [
                ("FIND-P1", Some("ISO_IR 100")),
                ("FIND-P2", Some("ISO_IR 100")),
                ("FIND-P3", Some("ISO_IR 192")),
                ("FIND-P4", Some("ISO_IR 100")),
            ],
        ),
        (
            None,
            [
                ("FIND-P1", None),
                ("FIND-P2", Some("ISO_IR 192")),
                ("FIND-P3", Some("ISO_IR 192")),
                ("FIND-P4", None),
            ],
        ),
    ] {
        let keys = [
            ("QueryRetrieveLevel", "PATIENT"),
            ("PatientName", ""),
            ("PatientID", ""),
        ];
        let out = l.py(&PyRequest {
            charset,
            ..PyRequest::new(Model::Patient, &keys)
        });
        assert_eq!(out.final_status(), Some(SUCCESS), "{}", out.log);
        let got: BTreeMap<String, (Option<String>, String)> = out
            .responses
            .iter()
            .map(|r| {
                (
                    r["PatientID"].clone(),
                    (
                        r.get("SpecificCharacterSet").cloned(),
                        r["PatientName"].clone(),
                    ),
                )
            })
            .collect();
        let expected: BTreeMap<String, (Option<String>, String)> = expected
            .iter()
            .map(|(id, cs)| {
                (
                    id.to_string(),
                    (cs.map(str::to_string), l.patient(id).name.clone()),
                )
            })
            .collect();
        assert_eq!(got, expected, "{charset:?}: {}", out.log);
    }

    // findscu sends the UTF-8 bytes of its arguments: declared as ISO_IR 192.
    for (name, patient) in [("Żółć*", p3), ("*ÜLLER*", p2)] {
        let key = format!("PatientName={name}");
        let out = check(
            &l,
            Model::Study,
            &[
                "0008,0052=STUDY",
                "0008,0005=ISO_IR 192",
                &key,
                "StudyInstanceUID",
            ],
            tags::STUDY_INSTANCE_UID,
            &set([&patient.studies[0].uid]),
        );
        assert_eq!(
            out.column(tags::PATIENT_NAME),
            vec![Some(patient.name.clone())]
        );
        assert_eq!(
            out.column(tags::SPECIFIC_CHARACTER_SET),
            vec![Some("ISO_IR 192".to_string())]
        );
    }
}

#[test]
fn every_uncompressed_transfer_syntax() {
    let l = Loaded::standard("find-transfer-syntaxes", &[]);
    let expected: BTreeMap<String, String> = l
        .patients
        .iter()
        .flat_map(|p| {
            p.studies
                .iter()
                .map(move |s| (s.uid.clone(), p.name.clone()))
        })
        .collect();
    // findscu: explicit LE (default), big endian, implicit, deflated.
    for (flag, accepted) in [
        ("-xe", "=LittleEndianExplicit"),
        ("-xb", "=BigEndianExplicit"),
        ("-xi", "=LittleEndianImplicit"),
        ("-xd", "=DeflatedLittleEndianExplicit"),
    ] {
        let out = l.findscu(
            Model::Study,
            &["0008,0052=STUDY", "StudyInstanceUID", "PatientName"],
            &[flag],
        );
        let text = out.tool.text();
        let negotiated = text
            .lines()
            .find(|line| line.contains("Accepted Transfer Syntax:"))
            .unwrap_or_default()
            .to_string();
        assert_eq!(out.final_status(), Some(SUCCESS), "{flag}:\n{out}");
        assert_eq!(
            rows(&out, tags::STUDY_INSTANCE_UID, tags::PATIENT_NAME),
            expected,
            "{flag} ({negotiated}):\n{out}"
        );
        // The caller's preferred syntax is the one the server takes.
        assert!(
            negotiated.contains(accepted),
            "findscu {flag}: the server chose {negotiated:?}, not {accepted}:\n{out}"
        );
    }
    // pynetdicom, one transfer syntax at a time.
    for ts in [
        "1.2.840.10008.1.2",
        "1.2.840.10008.1.2.1",
        "1.2.840.10008.1.2.2",
        "1.2.840.10008.1.2.1.99",
    ] {
        let keys = [
            ("QueryRetrieveLevel", "STUDY"),
            ("StudyInstanceUID", ""),
            ("PatientName", ""),
        ];
        let out = l.py(&PyRequest {
            transfer_syntax: Some(ts),
            ..PyRequest::new(Model::Study, &keys)
        });
        assert!(
            out.associated,
            "pynetdicom: transfer syntax {ts} not accepted: {}",
            out.log
        );
        assert_eq!(out.final_status(), Some(SUCCESS), "{ts}: {}", out.log);
        let got: BTreeMap<String, String> = out
            .responses
            .iter()
            .map(|r| (r["StudyInstanceUID"].clone(), r["PatientName"].clone()))
            .collect();
        assert_eq!(got, expected, "{ts}: {}", out.log);
    }
}

/// Instances of the bulk series: enough that matching is still going on
/// when a C-CANCEL sent after the first pending arrives. More than C-FIND's
/// first page (`services::find::PAGE_SIZE`, 5,000), so that a second
/// statement runs after the first page's responses are written: an answer
/// of one statement is written out before pynetdicom has read its first
/// pending.
const BULK: usize = 6000;

#[test]
fn cancel_stops_matching() {
    let l = Loaded::new("find-cancel", find_corpus::bulk(5151, BULK), &[]);
    let study = &l.patients[0].studies[0];
    let series = &study.series[0];
    let keys = [
        ("QueryRetrieveLevel", "IMAGE"),
        ("StudyInstanceUID", study.uid.as_str()),
        ("SeriesInstanceUID", series.uid.as_str()),
        ("SOPInstanceUID", ""),
    ];

    // pynetdicom cancels after the first pending. A cancel that arrives
    // after the last match is answered with success (also correct): try a
    // few times, every outcome must be consistent, one must be a cancel.
    let mut cancelled = false;
    for _attempt in 0..3 {
        let out = l.py(&PyRequest {
            cancel_after: Some(1),
            ..PyRequest::new(Model::Study, &keys)
        });
        let sent: Vec<String> = out
            .column("SOPInstanceUID")
            .into_iter()
            .map(|v| v.expect("SOPInstanceUID in every response"))
            .collect();
        // Matches come in instance number order: what was sent is a prefix.
        assert_eq!(sent, series.instances[..sent.len()], "{}", out.log);
        assert!(
            out.pending().iter().all(|s| *s == PENDING),
            "{:?}",
            out.pending()
        );
        match out.final_status() {
            Some(CANCEL) => {
                assert!(
                    (1..BULK).contains(&sent.len()),
                    "{} pendings before the cancel",
                    sent.len()
                );
                cancelled = true;
                break;
            }
            Some(SUCCESS) => assert_eq!(sent.len(), BULK),
            other => panic!("final status {other:?}: {}", out.log),
        }
    }
    assert!(cancelled, "no attempt was cancelled before the last match");

    // A raw peer sends the C-CANCEL with the request, so it is waiting
    // before the first match: no pending at all, then FE00; the association
    // goes on with the next request.
    let mut peer = RawPeer::associate(
        l.server.addr(),
        l.server.ae_title(),
        &[Proposal::implicit(1, STUDY_ROOT_FIND)],
    );
    let identifier = implicit_identifier(&[
        (tags::QUERY_RETRIEVE_LEVEL, "IMAGE"),
        (tags::STUDY_INSTANCE_UID, &study.uid),
        (tags::SERIES_INSTANCE_UID, &series.uid),
        (tags::SOP_INSTANCE_UID, ""),
    ]);
    let request = Command::find_rq(3, STUDY_ROOT_FIND, Priority::Medium).encode();
    let mut bytes = raw::p_data_tf(1, true, true, &request);
    bytes.extend(raw::p_data_tf(1, false, true, &identifier));
    bytes.extend(raw::p_data_tf(
        1,
        true,
        true,
        &Command::cancel_rq(3).encode(),
    ));
    peer.send(&bytes).expect("send C-FIND-RQ and C-CANCEL-RQ");
    let responses = read_find_responses(&mut peer);
    assert_eq!(responses, vec![(CANCEL, false)]);

    // Next request on the same association: answered in full.
    let identifier = implicit_identifier(&[
        (tags::QUERY_RETRIEVE_LEVEL, "STUDY"),
        (tags::STUDY_INSTANCE_UID, ""),
    ]);
    let request = Command::find_rq(4, STUDY_ROOT_FIND, Priority::Medium).encode();
    peer.send_message(1, &request, Some(&identifier))
        .expect("send C-FIND-RQ");
    assert_eq!(
        read_find_responses(&mut peer),
        vec![(PENDING, true), (SUCCESS, false)]
    );

    // A C-FIND-RQ naming another SOP class than its presentation context.
    let request = Command::find_rq(5, "1.2.840.10008.5.1.4.1.2.1.1", Priority::Medium).encode();
    peer.send_message(1, &request, Some(&identifier))
        .expect("send C-FIND-RQ");
    assert_eq!(read_find_responses(&mut peer), vec![(0x0122, false)]);
    peer.release();
}

/// An Implicit VR LE identifier (values are ASCII).
fn implicit_identifier(elements: &[(Tag, &str)]) -> Vec<u8> {
    let mut builder = raw::ImplicitLe::new();
    for (tag, value) in elements {
        let pad = if value.starts_with(char::is_numeric) {
            0
        } else {
            b' '
        };
        builder = builder.raw(tag.group(), tag.element(), value.as_bytes(), pad);
    }
    builder.build()
}

/// Reads C-FIND-RSPs up to the final one: (status, whether an identifier
/// followed) each.
fn read_find_responses(peer: &mut RawPeer) -> Vec<(u16, bool)> {
    let mut responses = Vec::new();
    let mut command = Vec::new();
    let mut awaiting_dataset = false;
    loop {
        let pdu = peer
            .read_pdu(Duration::from_secs(30))
            .expect("read a PDU")
            .expect("the server closed the connection");
        let Pdu::PData(pdvs) = pdu else {
            panic!("unexpected PDU {pdu:?}");
        };
        for pdv in pdvs {
            if pdv.is_command {
                command.extend_from_slice(&pdv.data);
                if !pdv.is_last {
                    continue;
                }
                let decoded = Command::decode(&std::mem::take(&mut command))
                    .expect("a valid response command set");
                assert_eq!(decoded.field, CommandField::CFindRsp);
                let status = decoded.status.expect("a status").0;
                responses.push((status, decoded.has_dataset));
                awaiting_dataset = decoded.has_dataset;
                if !decoded.has_dataset && status != PENDING && status != PENDING_WARNING {
                    return responses;
                }
            } else {
                assert!(awaiting_dataset, "a data set without a command");
                if pdv.is_last {
                    awaiting_dataset = false;
                }
            }
        }
    }
}

#[test]
fn result_cap_and_case_sensitive_names() {
    let l = Loaded::standard(
        "find-cap",
        &[("max_query_results", "3"), ("pn_case_insensitive", "false")],
    );
    // Five studies: three pendings, then A700 with the cap in the comment.
    let keys = [("QueryRetrieveLevel", "STUDY"), ("StudyInstanceUID", "")];
    let out = l.py(&PyRequest::new(Model::Study, &keys));
    assert_eq!(
        out.statuses,
        vec![PENDING, PENDING, PENDING, OUT_OF_RESOURCES],
        "{}",
        out.log
    );
    let comment = out.error_comment.clone().unwrap_or_default();
    assert!(comment.contains("more than 3 matches"), "{}", out.log);
    let out = l.findscu(Model::Patient, &["0008,0052=PATIENT", "PatientID"], &[]);
    assert_eq!(out.final_status(), Some(OUT_OF_RESOURCES), "{out}");
    assert_eq!(out.responses.len(), 3, "{out}");
    // Exactly at the cap: success.
    let s1 = &l.patient("FIND-P1").studies[0];
    let study = format!("StudyInstanceUID={}", s1.uid);
    let series = format!("SeriesInstanceUID={}", s1.series[0].uid);
    check(
        &l,
        Model::Study,
        &["0008,0052=IMAGE", &study, &series, "SOPInstanceUID"],
        tags::SOP_INSTANCE_UID,
        &set(&s1.series[0].instances),
    );

    // pn_case_insensitive = false: names match case-sensitively.
    let of = |ids: &[&str]| l.studies(|p, _| ids.contains(&p.id.as_str()));
    for (name, expected) in [
        ("DOE*", of(&[])),
        ("doe*", of(&["FIND-P4"])),
        ("Doe^John", of(&["FIND-P1"])),
        ("DOE^JOHN", of(&[])),
        ("*^J*", of(&["FIND-P1", "FIND-P3"])),
    ] {
        let key = format!("PatientName={name}");
        check(
            &l,
            Model::Study,
            &["0008,0052=STUDY", &key, "StudyInstanceUID"],
            tags::STUDY_INSTANCE_UID,
            &expected,
        );
    }
    let keys = [
        ("QueryRetrieveLevel", "STUDY"),
        ("PatientName", "MÜLLER*"),
        ("StudyInstanceUID", ""),
    ];
    let out = l.py(&PyRequest {
        charset: Some("ISO_IR 100"),
        ..PyRequest::new(Model::Study, &keys)
    });
    assert_eq!(out.statuses, vec![SUCCESS], "{}", out.log);
}

/// Every answer of a server at every level of the Study Root model, as sets
/// of rows (the values of `STUDY`, `SERIES` and `IMAGE` keys).
fn every_answer(server: &Server, work: &std::path::Path) -> Vec<BTreeSet<Vec<Option<String>>>> {
    let ask = |keys: &[&str], columns: &[Tag]| -> BTreeSet<Vec<Option<String>>> {
        let out = findscu(
            server.addr(),
            server.ae_title(),
            Model::Study,
            keys,
            &[],
            work,
        );
        assert_eq!(out.final_status(), Some(SUCCESS), "{keys:?}:\n{out}");
        out.responses
            .iter()
            .map(|r| columns.iter().map(|t| find_scu::value(r, *t)).collect())
            .collect()
    };
    let studies = ask(
        &[
            "QueryRetrieveLevel=STUDY",
            "StudyInstanceUID",
            "PatientName",
            "PatientID",
            "StudyDate",
            "ModalitiesInStudy",
            "NumberOfStudyRelatedSeries",
            "NumberOfStudyRelatedInstances",
        ],
        &[
            tags::STUDY_INSTANCE_UID,
            tags::PATIENT_NAME,
            tags::PATIENT_ID,
            tags::STUDY_DATE,
            tags::MODALITIES_IN_STUDY,
            tags::NUMBER_OF_STUDY_RELATED_SERIES,
            tags::NUMBER_OF_STUDY_RELATED_INSTANCES,
        ],
    );
    let mut answers = vec![studies.clone()];
    for study in &studies {
        let study_key = format!("StudyInstanceUID={}", study[0].clone().unwrap_or_default());
        let series = ask(
            &[
                "QueryRetrieveLevel=SERIES",
                &study_key,
                "SeriesInstanceUID",
                "Modality",
                "SeriesNumber",
                "NumberOfSeriesRelatedInstances",
            ],
            &[
                tags::SERIES_INSTANCE_UID,
                tags::MODALITY,
                tags::SERIES_NUMBER,
                tags::NUMBER_OF_SERIES_RELATED_INSTANCES,
            ],
        );
        for one in &series {
            let series_key = format!("SeriesInstanceUID={}", one[0].clone().unwrap_or_default());
            answers.push(ask(
                &[
                    "QueryRetrieveLevel=IMAGE",
                    &study_key,
                    &series_key,
                    "SOPInstanceUID",
                    "SOPClassUID",
                    "InstanceNumber",
                ],
                &[
                    tags::SOP_INSTANCE_UID,
                    tags::SOP_CLASS_UID,
                    tags::INSTANCE_NUMBER,
                ],
            ));
        }
        answers.push(series);
    }
    answers
}

/// "Queries never read image files": with every stored file deleted, every
/// level answers exactly as before, counts included.
#[test]
fn queries_are_answered_with_the_image_files_gone() {
    let dir = test_dir("find-no-files");
    let corpus_dir = dir.path().join("corpus");
    let corpus = generate_corpus(&corpus_dir, 31, CorpusShape::uniform(2, 2, 3, (16, 16)));
    let server = Server::start(dir.path());
    let storescu = dcmtk::store(
        server.addr(),
        server.ae_title(),
        &[&corpus_dir],
        &[],
        Duration::from_secs(120),
    );
    assert!(storescu.success(), "{storescu}");
    let work = dir.path().join("find");
    let before = every_answer(&server, &work);
    // 1 study level, 2 × (1 series level + 2 image levels).
    assert_eq!(before.len(), 7, "{before:#?}");
    let instances: usize = before[1..]
        .iter()
        .flatten()
        .filter(|row| row.len() == 3)
        .count();
    assert_eq!(instances, corpus.len(), "{before:#?}");
    let counts: BTreeSet<Option<String>> = before[0].iter().map(|row| row[6].clone()).collect();
    assert_eq!(
        counts,
        BTreeSet::from([Some("6".to_string())]),
        "{before:#?}"
    );

    let files = archived_files(server.archive());
    assert_eq!(files.len(), corpus.len());
    for file in &files {
        std::fs::remove_file(file).expect("delete a stored file");
    }
    assert_eq!(every_answer(&server, &work), before);
}
