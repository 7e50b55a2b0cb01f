//! Reinventory: a corpus of several patients, studies and series is
//! stored, its C-FIND answers at every level recorded; the server stops,
//! the index is lost (SQLite file deleted, PostgreSQL database dropped and
//! created again), the server starts on an empty index and
//! `imageserver filesystem reinventory` rebuilds it from the files. The
//! C-FIND answers are then identical, and C-MOVE delivers byte-identical
//! data sets.

#[path = "support/retrieve_peers.rs"]
#[allow(dead_code, clippy::duplicate_mod)]
mod retrieve_peers;

#[path = "support/find_scu.rs"]
#[allow(dead_code, clippy::duplicate_mod)]
mod find_scu;

#[path = "support/find_corpus.rs"]
#[allow(dead_code, clippy::duplicate_mod)]
mod find_corpus;

use std::path::Path;

use crate::support::cli::{cli_ok, load};
use crate::support::dcmtk;
use crate::support::server::{test_dir, Server};
use find_scu::{findscu, Model};
use retrieve_peers::{dataset_bytes, movescu, StoreScp};

const PATIENT_KEYS: &[&str] = &[
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "PatientBirthDate",
    "PatientSex",
    "NumberOfPatientRelatedStudies",
    "NumberOfPatientRelatedSeries",
    "NumberOfPatientRelatedInstances",
];

const STUDY_KEYS: &[&str] = &[
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "ModalitiesInStudy",
    "SOPClassesInStudy",
    "ReferringPhysicianName",
    "StudyDescription",
    "StudyID",
    "NumberOfStudyRelatedSeries",
    "NumberOfStudyRelatedInstances",
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
];

const SERIES_KEYS: &[&str] = &[
    "SeriesInstanceUID",
    "SeriesDate",
    "SeriesTime",
    "Modality",
    "SeriesDescription",
    "BodyPartExamined",
    "SeriesNumber",
    "NumberOfSeriesRelatedInstances",
];

const IMAGE_KEYS: &[&str] = &["SOPInstanceUID", "SOPClassUID", "InstanceNumber"];

/// Every answer of one C-FIND, each as its elements' tags and values,
/// sorted (the order of matches is the index's, which a rebuild may change).
fn answers(
    server: &Server,
    work: &Path,
    model: Model,
    level: &str,
    fixed: &[String],
    keys: &[&str],
) -> Vec<String> {
    let mut request = vec![format!("QueryRetrieveLevel={level}")];
    request.extend(fixed.iter().cloned());
    request.extend(keys.iter().map(|k| k.to_string()));
    let request: Vec<&str> = request.iter().map(String::as_str).collect();
    let out = findscu(server.addr(), server.ae_title(), model, &request, &[], work);
    assert_eq!(out.final_status(), Some(0), "C-FIND {level}:\n{out}");
    let mut answers: Vec<String> = out
        .responses
        .iter()
        .map(|response| {
            response
                .iter()
                .map(|element| {
                    let tag = element.header().tag;
                    format!(
                        "({:04X},{:04X})={:?}",
                        tag.group(),
                        tag.element(),
                        find_scu::value(response, tag)
                    )
                })
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    answers.sort();
    answers
}

/// C-FIND at every level: patients (Patient Root), studies, then each
/// study's series and each series' images (Study Root).
fn snapshot(server: &Server, work: &Path, patients: &[find_corpus::Patient]) -> Vec<String> {
    let mut all = Vec::new();
    let mut section = |name: String, answers: Vec<String>| {
        all.push(format!("== {name}: {} answers", answers.len()));
        all.extend(answers);
    };
    section(
        "patients".into(),
        answers(server, work, Model::Patient, "PATIENT", &[], PATIENT_KEYS),
    );
    section(
        "studies".into(),
        answers(server, work, Model::Study, "STUDY", &[], STUDY_KEYS),
    );
    for study in patients.iter().flat_map(|p| p.studies.iter()) {
        let study_key = format!("StudyInstanceUID={}", study.uid);
        section(
            format!("series of {}", study.uid),
            answers(
                server,
                work,
                Model::Study,
                "SERIES",
                std::slice::from_ref(&study_key),
                SERIES_KEYS,
            ),
        );
        for series in &study.series {
            section(
                format!("images of {}", series.uid),
                answers(
                    server,
                    work,
                    Model::Study,
                    "IMAGE",
                    &[
                        study_key.clone(),
                        format!("SeriesInstanceUID={}", series.uid),
                    ],
                    IMAGE_KEYS,
                ),
            );
        }
    }
    all
}

#[test]
fn reinventory_rebuilds_a_lost_index_that_answers_as_before() {
    let dir = test_dir("reinventory");
    let root = dir.path();
    let scp = StoreScp::start("REINVDEST", &root.join("scp"), false);
    let patients = find_corpus::patients(7373);
    let corpus = root.join("corpus");
    let files = find_corpus::write(&corpus, &patients);
    let mut server = Server::builder(root)
        .setting("devices", format!("[{}]", scp.device()))
        .start();
    load(&server, &corpus, files.len());
    let work = root.join("find");
    let before = snapshot(&server, &work, &patients);
    assert!(
        before.len() > 2 * patients.len(),
        "the snapshot holds answers: {before:#?}"
    );

    // The index is lost; the files stay.
    server.sigterm();
    server.archive().delete_index();
    server.restart();
    let empty = answers(&server, &work, Model::Patient, "PATIENT", &[], PATIENT_KEYS);
    assert!(empty.is_empty(), "the new index is empty: {empty:#?}");

    let fs1 = server.archive().fs1();
    let out = cli_ok(
        root,
        server.archive(),
        &["filesystem", "reinventory", &fs1.display().to_string()],
    );
    let after = snapshot(&server, &work, &patients);
    assert_eq!(
        after.join("\n"),
        before.join("\n"),
        "C-FIND answers after reinventory ({out})"
    );
    let studies: usize = patients.iter().map(|p| p.studies.len()).sum();
    assert!(
        out.contains(&format!(
            "{studies} study folders, {studies} studies indexed ({} instances), 0 already known, \
             0 skipped, 0 files skipped",
            files.len()
        )),
        "{out}"
    );

    // A second run finds everything known and changes nothing.
    let again = cli_ok(root, server.archive(), &["filesystem", "reinventory"]);
    assert!(
        again.contains(&format!(
            "{studies} study folders, 0 studies indexed (0 instances), {studies} already known"
        )),
        "{again}"
    );

    // C-MOVE of every patient delivers the stored data sets byte for byte.
    for patient in &patients {
        let run = movescu(
            server.addr(),
            server.ae_title(),
            &scp.ae_title,
            true,
            &[
                "QueryRetrieveLevel=PATIENT".to_string(),
                format!("PatientID={}", patient.id),
            ],
        );
        assert_eq!(
            run.status,
            Some(0),
            "C-MOVE of {}:\n{}",
            patient.id,
            run.tool
        );
    }
    let received = scp.received();
    assert_eq!(received.len(), files.len(), "every instance moved");
    for file in &files {
        let sop = file.file_stem().and_then(|s| s.to_str()).expect("name");
        let got = received
            .get(sop)
            .unwrap_or_else(|| panic!("{sop} was not moved"));
        assert!(
            dataset_bytes(got) == dataset_bytes(file),
            "{sop} arrived with other bytes"
        );
    }
}
