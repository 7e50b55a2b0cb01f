//! The HTTP front-end against the real binary: dicomweb-client (PyPI)
//! searches, retrieves and stores (`tests/it/py/web_client.py`), DCMTK
//! stores and finds beside it, on the selected backend.
//!
//! A C-STORE'd corpus is seen by QIDO-RS at every level; QIDO-RS and
//! C-FIND agree on the same keys; WADO-RS parts are the stored files byte
//! for byte (their data sets the sent ones); metadata names bulk data that
//! is the Pixel Data, and frame 1 is too; a STOW-RS instance is found by
//! C-FIND; a part that is no DICOM fails with C000 (409); `/metrics`
//! parses as OpenMetrics and its counters moved with the traffic.
//!
//! Outcomes are asserted; the bounds only stop a test that would hang.

use std::collections::BTreeSet;
use std::process::Command;

use dicom_core::Tag;
use serde_json::{json, Value};

use crate::find::find_scu::{findscu, Model};
use crate::support::cli::BOUND;
use crate::support::corpus::{generate_corpus, same_dataset, single_instance, CorpusShape};
use crate::support::dcmtk;
use crate::support::server::{test_dir, Server};

/// The dicomweb-client script.
const WEB_CLIENT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/py/web_client.py");

const STUDY_INSTANCE_UID: Tag = Tag(0x0020, 0x000D);

/// The study UIDs C-FIND answers for `keys` at the STUDY level.
fn cfind_studies(server: &Server, keys: &[String], work: &std::path::Path) -> BTreeSet<String> {
    let mut all: Vec<&str> = vec!["QueryRetrieveLevel=STUDY", "StudyInstanceUID"];
    all.extend(keys.iter().map(String::as_str));
    let out = findscu(
        server.addr(),
        server.ae_title(),
        Model::Study,
        &all,
        &[],
        work,
    );
    assert_eq!(out.final_status(), Some(0), "C-FIND failed:\n{out}");
    out.column(STUDY_INSTANCE_UID)
        .into_iter()
        .map(|v| v.expect("a study UID"))
        .collect()
}

fn metric(found: &Value, when: &str, name: &str) -> f64 {
    found[when][name].as_f64().unwrap_or(0.0)
}

#[test]
fn dicomweb_client_searches_retrieves_and_stores() {
    let dir = test_dir("web-dicomweb");
    let corpus_dir = dir.path().join("corpus");
    let corpus = generate_corpus(&corpus_dir, 1401, CorpusShape::uniform(3, 2, 2, (16, 16)));
    let stow_file = single_instance(&dir.path().join("stow.dcm"), 1402, 16, 16);
    // One STOW-RS request of more parts than are ingested at once, one of
    // them no DICOM file.
    let stow_many = generate_corpus(
        &dir.path().join("stow-many"),
        1403,
        CorpusShape::uniform(1, 1, 20, (8, 8)),
    );
    let server = Server::start(dir.path());

    let storescu = dcmtk::store(server.addr(), server.ae_title(), &[&corpus_dir], &[], BOUND);
    assert!(storescu.success(), "storescu failed:\n{storescu}");
    assert_eq!(
        dcmtk::acknowledged_files(&storescu.text()).len(),
        corpus.len()
    );

    // QIDO-RS and C-FIND on the same keys.
    let queries: Vec<Vec<(&str, &str)>> = vec![
        vec![("PatientName", "TEST^PATIENT1*")],
        vec![("StudyDate", "20200101-20211231")],
        vec![("PatientID", "PID1401-2")],
        vec![("PatientName", "NOBODY*")],
        vec![("StudyInstanceUID", &corpus[0].study_uid)],
    ];
    let instances: Vec<Value> = corpus
        .iter()
        .map(|i| {
            json!({"study": i.study_uid, "series": i.series_uid, "sop": i.sop_instance_uid,
                   "path": i.path})
        })
        .collect();
    let request = json!({
        "base": server.http_url(),
        "instances": instances,
        "stow": stow_file.path,
        "stow_many": stow_many.iter().map(|i| &i.path).collect::<Vec<_>>(),
        "out": dir.path().join("parts"),
        "queries": queries.iter().map(|q| q.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>()).collect::<Vec<_>>(),
    });
    let request_file = dir.path().join("web-request.json");
    std::fs::write(&request_file, request.to_string()).expect("write the request");
    let mut command = Command::new("python3");
    command.arg(WEB_CLIENT).arg(&request_file);
    let out = dcmtk::run(command, BOUND);
    assert!(out.success(), "the dicomweb-client script failed:\n{out}");
    let found: Value = serde_json::from_str(
        out.text()
            .lines()
            .rev()
            .find(|l| l.starts_with('{'))
            .unwrap_or("{}"),
    )
    .unwrap_or_else(|e| panic!("no JSON from the script ({e}):\n{out}"));

    // A C-STORE then a QIDO sees it, at every level.
    let studies: BTreeSet<&str> = corpus.iter().map(|i| i.study_uid.as_str()).collect();
    let qido_studies: BTreeSet<&str> = found["studies"]
        .as_array()
        .expect("studies")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(qido_studies, studies, "QIDO studies");
    for instance in &corpus {
        let series = &found["series"][&instance.study_uid];
        assert!(
            series
                .as_array()
                .expect("series")
                .iter()
                .any(|s| s == &json!(instance.series_uid)),
            "series of {}: {series}",
            instance.study_uid
        );
        let sops = &found["instances"][&instance.series_uid];
        assert!(
            sops.as_array()
                .expect("instances")
                .iter()
                .any(|s| s == &json!(instance.sop_instance_uid)),
            "instances of {}: {sops}",
            instance.series_uid
        );
    }
    assert_eq!(found["all_series"], json!(6), "GET /series");
    assert_eq!(found["all_instances"], json!(12), "GET /instances");
    assert_eq!(
        found["study_instances"],
        json!(4),
        "GET /studies/{{uid}}/instances"
    );
    // limit=1 and offset page through every study once, then nothing.
    let pages = found["pages"].as_array().expect("pages");
    let paged: Vec<&str> = pages
        .iter()
        .flat_map(|p| p.as_array().expect("a page"))
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(
        paged.len(),
        3,
        "one study per page, an empty last page: {pages:?}"
    );
    assert_eq!(paged.iter().copied().collect::<BTreeSet<_>>(), studies);
    assert!(
        found["includefield_all_keys"]
            .as_array()
            .expect("keys")
            .iter()
            .any(|k| k == "00201208"),
        "includefield=all returns NumberOfStudyRelatedInstances: {}",
        found["includefield_all_keys"]
    );
    assert_eq!(found["unknown_key"], json!(3), "an unknown key is ignored");

    // QIDO-RS matching agrees with C-FIND.
    let work = dir.path().join("find");
    for (query, answer) in queries
        .iter()
        .zip(found["queries"].as_array().expect("queries"))
    {
        let keys: Vec<String> = query.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let mut cfind = cfind_studies(&server, &keys, &work);
        // Stored by the script after its queries.
        cfind.remove(&stow_many[0].study_uid);
        let qido: BTreeSet<String> = answer
            .as_array()
            .expect("an answer")
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect();
        assert_eq!(qido, cfind, "QIDO and C-FIND differ on {query:?}");
    }
    let matched: usize = found["queries"]
        .as_array()
        .expect("queries")
        .iter()
        .map(|a| a.as_array().map_or(0, Vec::len))
        .sum();
    assert!(
        matched >= 4,
        "the queries match something: {}",
        found["queries"]
    );

    // WADO-RS.
    let first = &corpus[0];
    assert_eq!(found["retrieved_instance"], json!(first.sop_instance_uid));
    let same_series: BTreeSet<&str> = corpus
        .iter()
        .filter(|i| i.series_uid == first.series_uid)
        .map(|i| i.sop_instance_uid.as_str())
        .collect();
    let retrieved: BTreeSet<&str> = found["retrieved_series"]
        .as_array()
        .expect("series")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(retrieved, same_series, "series retrieve");
    let metadata: BTreeSet<&str> = found["metadata_sops"]
        .as_array()
        .expect("metadata")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(metadata, same_series, "series metadata");
    assert_eq!(found["study_metadata_count"], json!(4), "study metadata");
    assert_eq!(
        found["bulk_uri"],
        json!(format!(
            "studies/{}/series/{}/instances/{}/bulk/7FE00010",
            first.study_uid, first.series_uid, first.sop_instance_uid
        ))
    );
    assert_eq!(
        found["bulk_equals_pixel_data"],
        json!(true),
        "bulk data is the Pixel Data"
    );
    assert_eq!(
        found["frame_equals_pixel_data"],
        json!(true),
        "frame 1 is the Pixel Data"
    );
    assert_eq!(found["study_status"], json!(200));
    assert_eq!(found["wado_uri_status"], json!(200));
    assert_eq!(found["missing_status"], json!(404));
    // Every part of the study retrieve is a stored file, byte for byte,
    // whose data set is the one sent.
    let parts: Vec<&str> = found["study_parts"]
        .as_array()
        .expect("parts")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let of_study: Vec<_> = corpus
        .iter()
        .filter(|i| i.study_uid == first.study_uid)
        .collect();
    assert_eq!(
        parts.len(),
        of_study.len(),
        "one part per instance of the study"
    );
    for part in parts {
        let bytes = std::fs::read(part).expect("read a part");
        let source = of_study
            .iter()
            .find(|i| {
                let stored = server.archive().expected_path(
                    &i.study_date,
                    &i.study_uid,
                    &i.series_uid,
                    &i.sop_instance_uid,
                );
                std::fs::read(stored).expect("read a stored file") == bytes
            })
            .unwrap_or_else(|| panic!("{part} is no stored file of the study"));
        assert!(
            same_dataset(std::path::Path::new(part), &source.path),
            "{part}: the data set sent"
        );
    }

    // STOW-RS, then C-FIND sees it; a part that is no DICOM fails alone.
    assert_eq!(
        found["stow_referenced"],
        json!([stow_file.sop_instance_uid]),
        "STOW response"
    );
    assert_eq!(found["stow_failed"], json!(0));
    let stowed = cfind_studies(
        &server,
        &[format!("StudyInstanceUID={}", stow_file.study_uid)],
        &work,
    );
    assert_eq!(
        stowed,
        BTreeSet::from([stow_file.study_uid.clone()]),
        "C-FIND finds the STOW'd study"
    );
    let stored = server.archive().expected_path(
        &stow_file.study_date,
        &stow_file.study_uid,
        &stow_file.series_uid,
        &stow_file.sop_instance_uid,
    );
    assert!(
        same_dataset(&stored, &stow_file.path),
        "the STOW'd data set is stored as sent"
    );
    assert_eq!(
        found["stow_bad_status"],
        json!(409),
        "no instance stored: 409"
    );
    assert_eq!(
        found["stow_bad_reasons"],
        json!([0xC000]),
        "FailureReason C000"
    );

    // A request of 21 parts: each answered in request order, the non-DICOM
    // one (the 8th) failed alone, every other one stored before the answer.
    assert_eq!(found["stow_many_status"], json!(202), "some failed: 202");
    assert_eq!(
        found["stow_many_referenced"],
        json!(stow_many
            .iter()
            .map(|i| &i.sop_instance_uid)
            .collect::<Vec<_>>()),
        "the stored parts, in request order"
    );
    assert_eq!(found["stow_many_reasons"], json!([0xC000]));
    assert_eq!(
        found["stow_many_found"],
        json!(stow_many.len()),
        "QIDO finds every stored part as soon as the answer came"
    );

    // /metrics parsed as OpenMetrics; the counters moved with the traffic.
    let moved =
        |name: &str| metric(&found, "metrics_after", name) - metric(&found, "metrics_before", name);
    assert!(
        metric(
            &found,
            "metrics_before",
            "imageserver_instances_stored_total{frontend=dicom,outcome=inserted}"
        ) >= corpus.len() as f64,
        "C-STOREs counted: {}",
        found["metrics_before"]
    );
    assert_eq!(
        moved("imageserver_instances_stored_total{frontend=stow,outcome=inserted}"),
        1.0 + stow_many.len() as f64,
        "{}",
        found["metrics_after"]
    );
    assert_eq!(
        moved("imageserver_instances_stored_total{frontend=stow,outcome=refused_data}"),
        2.0
    );
    assert!(
        moved("imageserver_find_seconds_count{frontend=qido}") >= 10.0,
        "{}",
        found["metrics_after"]
    );
    assert!(metric(&found, "metrics_before", "imageserver_associations_total{}") >= 1.0);
    // The StudyProcess items of the three stored studies wait out their
    // quiet delay (60 s by default): the work queue gauge, read at scrape
    // time, shows them.
    let waiting: f64 = found["metrics_before"]
        .as_object()
        .expect("metrics")
        .iter()
        .filter(|(name, _)| name.starts_with("imageserver_work_items{kind=study_process,"))
        .filter_map(|(_, v)| v.as_f64())
        .sum();
    assert!(
        waiting >= 3.0,
        "work items gauge: {}",
        found["metrics_before"]
    );
    assert!(
        moved("imageserver_http_requests_total{method=GET,route=/dicom-web/studies,status=200}")
            >= 5.0,
        "{}",
        found["metrics_after"]
    );
    assert!(
        moved("imageserver_http_requests_total{method=POST,route=/dicom-web/studies,status=409}")
            == 1.0,
        "{}",
        found["metrics_after"]
    );
}

/// CORS from `[http] cors_origins`: an allowed origin gets the headers on
/// a search and on a preflight, another origin none.
#[test]
fn cors_headers_follow_the_configured_origins() {
    let dir = test_dir("web-cors");
    let server = Server::builder(dir.path())
        .setting("http", r#"{ cors_origins = ["http://viewer.test:3000"] }"#)
        .start();
    let curl = |args: &[&str]| {
        let mut command = Command::new("curl");
        command.args(["-s", "-i", "--max-time", "30"]).args(args);
        let out = dcmtk::run(command, BOUND);
        assert!(out.success(), "curl failed:\n{out}");
        out.text().to_ascii_lowercase()
    };
    let studies = format!("{}/dicom-web/studies", server.http_url());
    let allowed = curl(&["-H", "Origin: http://viewer.test:3000", &studies]);
    assert!(allowed.starts_with("http/1.1 200"), "{allowed}");
    assert!(
        allowed.contains("access-control-allow-origin: http://viewer.test:3000"),
        "{allowed}"
    );
    let preflight = curl(&[
        "-X",
        "OPTIONS",
        "-H",
        "Origin: http://viewer.test:3000",
        "-H",
        "Access-Control-Request-Method: GET",
        &studies,
    ]);
    assert!(preflight.starts_with("http/1.1 204"), "{preflight}");
    assert!(
        preflight.contains("access-control-allow-methods: get, post, options"),
        "{preflight}"
    );
    let other = curl(&["-H", "Origin: http://elsewhere.test", &studies]);
    assert!(other.starts_with("http/1.1 200"), "{other}");
    assert!(!other.contains("access-control-allow-origin"), "{other}");
}
