//! The query leniency real clients need and combined date-time matching,
//! against the real binary on the selected backend, for both front-ends:
//! DCMTK findscu and pynetdicom (C-FIND, with and without SOP class
//! extended negotiation) and dicomweb-client (QIDO-RS).
//!
//! Three studies, one a day at 08:00, 12:00 and 20:00; the middle one MR.
//! StudyDate 20240110-20240112 with StudyTime 1300-0900 is, combined, from
//! the 10th 13:00 to the 12th 09:00 (the middle study only); matched
//! separately no time lies between 13:00 and 09:00 (nothing).

use std::collections::BTreeSet;
use std::process::Command;

use dicom_core::Tag;
use serde_json::Value;

use crate::find::find_scu::{findscu, py_find, Model, PyRequest};
use crate::support::cli::BOUND;
use crate::support::corpus::single_instance;
use crate::support::dcmtk;
use crate::support::server::{test_dir, Server};

const STUDY_ROOT_FIND: &str = "1.2.840.10008.5.1.4.1.2.2.1";
const MODALITY: Tag = Tag(0x0008, 0x0060);
const STUDY_INSTANCE_UID: Tag = Tag(0x0020, 0x000D);

/// QIDO-RS through dicomweb-client: each search's study UIDs, one JSON
/// list per line of searches given as JSON objects.
const QIDO: &str = r#"
import json, sys
from dicomweb_client.api import DICOMwebClient
client = DICOMwebClient(url=sys.argv[1])
answers = []
for filters in json.loads(sys.argv[2]):
    found = client.search_for_studies(search_filters=filters)
    answers.append(sorted(s["0020000D"]["Value"][0] for s in found))
print(json.dumps(answers))
"#;

#[test]
fn modality_at_study_level_and_combined_date_time() {
    let dir = test_dir("query-leniency");
    let corpus = dir.path().join("corpus");
    std::fs::create_dir_all(&corpus).expect("corpus folder");
    let days = [
        ("20240110", "080000", "CT"),
        ("20240111", "120000", "MR"),
        ("20240112", "200000", "CT"),
    ];
    let mut uids = Vec::new();
    for (n, (date, time, modality)) in days.iter().enumerate() {
        let instance = single_instance(&corpus.join(format!("{n}.dcm")), 1500 + n as u64, 8, 8);
        let mut modify = dcmtk::command("/usr/bin/dcmodify");
        modify
            .arg("-nb")
            .args(["-m", &format!("(0008,0020)={date}")])
            .args(["-m", &format!("(0008,0030)={time}")])
            .args(["-m", &format!("(0008,0060)={modality}")])
            .arg(&instance.path);
        let out = dcmtk::run(modify, BOUND);
        assert!(out.success(), "dcmodify failed:\n{out}");
        uids.push(instance.study_uid);
    }
    let server = Server::start(dir.path());
    let stored = dcmtk::store(server.addr(), server.ae_title(), &[&corpus], &[], BOUND);
    assert!(stored.success(), "storescu failed:\n{stored}");
    let middle = BTreeSet::from([uids[1].clone()]);
    let work = dir.path().join("find");

    // A Modality key in a study-level C-FIND is ModalitiesInStudy
    // (refused with A900 before), answered under the tag asked.
    let out = findscu(
        server.addr(),
        server.ae_title(),
        Model::Study,
        &[
            "QueryRetrieveLevel=STUDY",
            "StudyInstanceUID",
            "Modality=MR",
        ],
        &[],
        &work,
    );
    assert_eq!(out.final_status(), Some(0), "C-FIND failed:\n{}", out.tool);
    let found: BTreeSet<String> = out
        .column(STUDY_INSTANCE_UID)
        .into_iter()
        .flatten()
        .collect();
    assert_eq!(found, middle, "Modality=MR at STUDY level");
    assert_eq!(out.column(MODALITY), vec![Some("MR".to_string())]);

    // Combined date-time only when negotiated.
    let keys = [
        ("QueryRetrieveLevel", "STUDY"),
        ("StudyInstanceUID", ""),
        ("StudyDate", "20240110-20240112"),
        ("StudyTime", "1300-0900"),
    ];
    let combined = py_find(
        server.addr(),
        server.ae_title(),
        &PyRequest {
            combined_date_time: true,
            ..PyRequest::new(Model::Study, &keys)
        },
    );
    assert_eq!(
        combined
            .extended_negotiation
            .get(STUDY_ROOT_FIND)
            .map(String::as_str),
        Some("0001"),
        "combined date-time accepted, relational queries not: {}",
        combined.log
    );
    assert_eq!(combined.final_status(), Some(0), "{}", combined.log);
    let found: BTreeSet<String> = combined
        .column("StudyInstanceUID")
        .into_iter()
        .flatten()
        .collect();
    assert_eq!(found, middle, "combined: {}", combined.log);
    let separate = py_find(
        server.addr(),
        server.ae_title(),
        &PyRequest::new(Model::Study, &keys),
    );
    assert!(separate.extended_negotiation.is_empty(), "{}", separate.log);
    assert_eq!(separate.statuses, vec![0], "separate: {}", separate.log);
    let out = findscu(
        server.addr(),
        server.ae_title(),
        Model::Study,
        &[
            "QueryRetrieveLevel=STUDY",
            "StudyInstanceUID",
            "StudyDate=20240110-20240112",
            "StudyTime=1300-0900",
        ],
        &[],
        &work,
    );
    assert_eq!(out.final_status(), Some(0), "{}", out.tool);
    assert!(
        out.responses.is_empty(),
        "findscu negotiates nothing: separate"
    );

    // QIDO-RS: combined always, Modality as in C-FIND, unknown keys and
    // keys of lower levels ignored.
    let searches = serde_json::json!([
        {"StudyDate": "20240110-20240112", "StudyTime": "1300-0900"},
        {"Modality": "MR"},
        {"NoSuchKeyword": "x", "SOPClassUID": "1.2.3", "StudyDate": "20240110-20240112"},
    ]);
    let mut command = Command::new("python3");
    command
        .arg("-c")
        .arg(QIDO)
        .arg(format!("{}/dicom-web", server.http_url()))
        .arg(searches.to_string());
    let out = dcmtk::run(command, BOUND);
    assert!(out.success(), "the QIDO script failed:\n{out}");
    let answers: Vec<BTreeSet<String>> = out
        .stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('['))
        .and_then(|l| serde_json::from_str::<Value>(l).ok())
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_else(|| panic!("no answers:\n{out}"))
        .iter()
        .map(|a| {
            a.as_array()
                .expect("a list")
                .iter()
                .filter_map(|u| u.as_str().map(str::to_string))
                .collect()
        })
        .collect();
    let all: BTreeSet<String> = uids.iter().cloned().collect();
    assert_eq!(answers, vec![middle.clone(), middle, all], "{out}");
}
