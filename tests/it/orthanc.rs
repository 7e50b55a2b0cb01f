//! Interoperability with a real archive: Orthanc (Debian's package) is
//! configured with us as a modality and, driven through its REST API, finds
//! our studies (C-FIND) and retrieves them to itself (C-MOVE). The retrieved
//! instances must be the data sets we were sent, byte for byte.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::corpus::{dataset_offset, generate_corpus, CorpusShape};
use crate::support::dcmtk;
use crate::support::server::{free_port, test_dir, Server};

const ORTHANC: &str = "/usr/sbin/Orthanc";
const ORTHANC_AE: &str = "ORTHANCPEER";

/// A running Orthanc, killed when dropped.
struct Orthanc {
    child: Child,
    http_port: u16,
}

impl Drop for Orthanc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Orthanc {
    fn start(dir: &Path, dicom_port: u16, our_port: u16) -> Orthanc {
        let http_port = free_port();
        let storage = dir.join("orthanc-storage");
        std::fs::create_dir_all(&storage).expect("orthanc storage dir");
        let config = serde_json::json!({
            "Name": "imageserver-it",
            "StorageDirectory": storage,
            "IndexDirectory": storage,
            "StorageCompression": false,
            "HttpServerEnabled": true,
            "HttpPort": http_port,
            "RemoteAccessAllowed": false,
            "AuthenticationEnabled": false,
            "DicomServerEnabled": true,
            "DicomAet": ORTHANC_AE,
            "DicomPort": dicom_port,
            "DicomCheckCalledAet": false,
            "DicomModalities": {
                "imageserver": ["IMAGESERVER", "127.0.0.1", our_port]
            },
            "Plugins": []
        });
        let config_path = dir.join("orthanc.json");
        std::fs::write(&config_path, config.to_string()).expect("write orthanc.json");
        let log = std::fs::File::create(dir.join("orthanc.log")).expect("orthanc log");
        let child = Command::new(ORTHANC)
            .arg(&config_path)
            .env("TCP_NODELAY", "1")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {ORTHANC} (apt-get install orthanc): {e}"));
        let orthanc = Orthanc { child, http_port };
        let deadline = Instant::now() + Duration::from_secs(60);
        while orthanc.get("/system").is_none() {
            assert!(Instant::now() < deadline, "Orthanc did not start");
            std::thread::sleep(Duration::from_millis(200));
        }
        orthanc
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.http_port)
    }

    fn get(&self, path: &str) -> Option<serde_json::Value> {
        let output = Command::new("curl")
            .args(["-sf", "--max-time", "30"])
            .arg(self.url(path))
            .output()
            .expect("run curl");
        output
            .status
            .success()
            .then(|| serde_json::from_slice(&output.stdout).ok())
            .flatten()
    }

    fn get_bytes(&self, path: &str) -> Vec<u8> {
        let output = Command::new("curl")
            .args(["-sf", "--max-time", "30"])
            .arg(self.url(path))
            .output()
            .expect("run curl");
        assert!(output.status.success(), "GET {path} failed");
        output.stdout
    }

    fn post(&self, path: &str, body: &serde_json::Value) -> serde_json::Value {
        let output = Command::new("curl")
            .args(["-sf", "--max-time", "120", "-X", "POST", "--data-binary"])
            .arg(body.to_string())
            .arg(self.url(path))
            .output()
            .expect("run curl");
        assert!(
            output.status.success(),
            "POST {path} {body} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).unwrap_or(serde_json::Value::Null)
    }
}

#[test]
fn orthanc_queries_and_retrieves_from_us() {
    let dir = test_dir("orthanc");
    let orthanc_dicom_port = free_port();
    let server = Server::builder(dir.path())
        .setting(
            "devices",
            format!(
                r#"[{{ ae_title = "{ORTHANC_AE}", host = "127.0.0.1", port = {orthanc_dicom_port} }}]"#
            ),
        )
        .start();
    let corpus_dir = dir.path().join("corpus");
    let corpus = generate_corpus(&corpus_dir, 31, CorpusShape::uniform(2, 2, 3, (32, 32)));
    let stored = dcmtk::store(
        server.addr(),
        "IMAGESERVER",
        &[&corpus_dir],
        &[],
        Duration::from_secs(60),
    );
    assert!(stored.success(), "{stored}");

    let orthanc = Orthanc::start(dir.path(), orthanc_dicom_port, server.addr().port());

    // C-FIND from Orthanc: every study, with its attributes.
    let query = orthanc.post(
        "/modalities/imageserver/query",
        &serde_json::json!({"Level": "Study", "Query": {"StudyInstanceUID": "", "PatientID": "*"}}),
    );
    let query_id = query["ID"].as_str().expect("query id").to_string();
    let answers = orthanc
        .get(&format!("/queries/{query_id}/answers?expand"))
        .expect("answers");
    let mut found: Vec<String> = answers
        .as_array()
        .expect("an array of answers")
        .iter()
        .map(|a| {
            a["0020,000d"]["Value"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    found.sort();
    let mut expected: Vec<String> = corpus.iter().map(|i| i.study_uid.clone()).collect();
    expected.sort();
    expected.dedup();
    assert_eq!(found, expected, "Orthanc's C-FIND answers: {answers}");

    // C-MOVE from Orthanc to itself: every instance arrives unchanged.
    orthanc.post(
        &format!("/queries/{query_id}/retrieve"),
        &serde_json::json!({"TargetAet": ORTHANC_AE, "Synchronous": true}),
    );
    let instances = orthanc.get("/instances").expect("instance list");
    let ids = instances.as_array().expect("an array of instances");
    assert_eq!(ids.len(), corpus.len(), "instances in Orthanc: {instances}");
    for id in ids {
        let id = id.as_str().expect("instance id");
        let tags = orthanc
            .get(&format!("/instances/{id}/simplified-tags"))
            .expect("tags");
        let sop = tags["SOPInstanceUID"].as_str().expect("SOP Instance UID");
        let source = corpus
            .iter()
            .find(|i| i.sop_instance_uid == sop)
            .unwrap_or_else(|| panic!("Orthanc has an instance we never stored: {sop}"));
        let retrieved = orthanc.get_bytes(&format!("/instances/{id}/file"));
        let retrieved_path = dir.path().join("retrieved.dcm");
        std::fs::write(&retrieved_path, &retrieved).expect("write retrieved file");
        let source_bytes = std::fs::read(&source.path).expect("read source");
        let source_data = &source_bytes[dataset_offset(&source.path) as usize..];
        let retrieved_data = &retrieved[dataset_offset(&retrieved_path) as usize..];
        assert!(
            source_data == retrieved_data,
            "instance {sop} differs after the round trip through us"
        );
    }
}
