//! The peers of the retrieve tests: DCMTK `storescp` as move destination,
//! `movescu` and `getscu` as requestors (their `-d` logs parsed for the
//! final response), the pynetdicom script `tests/it/py/retrieve_scu.py`
//! (pending responses, C-CANCEL, role selection), and a Secondary Capture
//! writer for a second SOP class.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::tags;
use dicom_object::meta::FileMetaTableBuilder;
use dicom_object::InMemDicomObject;

use crate::support::corpus::{self, Instance};
use crate::support::dcmtk::{self, ToolOutput, CALLING_AE};
use crate::support::server::free_port;

/// Full paths of the DCMTK tools (see [`dcmtk::ECHOSCU`]).
pub const STORESCP: &str = "/usr/bin/storescp";
/// See [`STORESCP`].
pub const MOVESCU: &str = "/usr/bin/movescu";
/// See [`STORESCP`].
pub const GETSCU: &str = "/usr/bin/getscu";
/// The pynetdicom client script.
pub const PY_RETRIEVE_SCU: &str =
    concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/py/retrieve_scu.py");
/// Secondary Capture Image Storage.
pub const SECONDARY_CAPTURE: &str = "1.2.840.10008.5.1.4.1.1.7";

/// How long one client run may take before the test fails.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(120);

/// A DCMTK `storescp` on a free loopback port, writing into its own
/// directory; killed (by its process handle) when dropped.
#[derive(Debug)]
pub struct StoreScp {
    child: Option<Child>,
    /// Its AE title.
    pub ae_title: String,
    /// Its port.
    pub port: u16,
    /// Where it writes received files.
    pub dir: PathBuf,
    log: PathBuf,
}

impl StoreScp {
    /// Starts `storescp` as `ae_title` writing to `dir`; `refuse` makes it
    /// reject every association. Waits until it listens.
    pub fn start(ae_title: &str, dir: &Path, refuse: bool) -> StoreScp {
        std::fs::create_dir_all(dir).expect("create the storescp directory");
        let port = free_port();
        let log = dir.with_extension("log");
        let log_file = std::fs::File::create(&log).expect("create the storescp log");
        let mut command = dcmtk::command(STORESCP);
        command
            .args(["-v", "-aet", ae_title, "-od"])
            .arg(dir)
            .args(["-ta", "10", "-td", "60"]);
        if refuse {
            command.arg("--refuse");
        }
        command
            .arg(port.to_string())
            .stdout(log_file.try_clone().expect("clone the log handle"))
            .stderr(log_file);
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {STORESCP}: {e}"));
        let scp = StoreScp {
            child: Some(child),
            ae_title: ae_title.to_string(),
            port,
            dir: dir.to_path_buf(),
            log,
        };
        scp.wait_listening();
        scp
    }

    fn wait_listening(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            assert!(
                Instant::now() < deadline,
                "storescp did not listen on {addr}:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Its log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The received files by SOP Instance UID (from their meta group).
    pub fn received(&self) -> BTreeMap<String, PathBuf> {
        crate::support::received_by_uid(&self.dir)
    }

    /// Removes every received file.
    pub fn clear(&self) {
        for path in crate::support::files_under(&self.dir) {
            std::fs::remove_file(&path).expect("remove a received file");
        }
    }

    /// A `--device` style declaration of this destination, as a TOML inline
    /// table for the server's `devices` setting.
    pub fn device(&self) -> String {
        device_toml(&self.ae_title, self.port)
    }
}

impl Drop for StoreScp {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "===== storescp {} log =====\n{}",
                self.ae_title,
                self.log_text()
            );
        }
    }
}

/// A device as a TOML inline table (`devices = [ ... ]` in the config).
pub fn device_toml(ae_title: &str, port: u16) -> String {
    format!(r#"{{ ae_title = "{ae_title}", host = "127.0.0.1", port = {port} }}"#)
}

/// The data set bytes of a Part 10 file (after its meta group).
pub fn dataset_bytes(path: &Path) -> Vec<u8> {
    let bytes = std::fs::read(path).expect("read a Part 10 file");
    let offset = usize::try_from(corpus::dataset_offset(path)).expect("offset fits");
    bytes[offset..].to_vec()
}

/// Asserts that `received` holds exactly `expected`, each with the data set
/// of its source file, byte for byte.
pub fn assert_received(received: &BTreeMap<String, PathBuf>, expected: &[&Instance], what: &str) {
    let want: Vec<&str> = {
        let mut uids: Vec<&str> = expected
            .iter()
            .map(|i| i.sop_instance_uid.as_str())
            .collect();
        uids.sort_unstable();
        uids
    };
    let got: Vec<&str> = received.keys().map(String::as_str).collect();
    assert_eq!(got, want, "{what}: received instances");
    for instance in expected {
        let path = &received[&instance.sop_instance_uid];
        assert!(
            corpus::same_dataset(path, &instance.path),
            "{what}: the data set of {} differs from the stored one",
            instance.sop_instance_uid
        );
    }
}

/// What a `movescu -d` / `getscu -d` run reported.
#[derive(Debug)]
pub struct RetrieveRun {
    /// The tool's exit and log.
    pub tool: ToolOutput,
    /// Final status, if a final response was logged.
    pub status: Option<u16>,
    /// Completed sub-operations of the final response.
    pub completed: Option<u16>,
    /// Failed sub-operations of the final response.
    pub failed: Option<u16>,
    /// Warning sub-operations of the final response.
    pub warning: Option<u16>,
    /// Pending responses received.
    pub pending: usize,
    /// The final response's Failed SOP Instance UID List.
    pub failed_uids: Vec<String>,
}

/// `movescu -d` (Study Root, or Patient Root with `patient_root`) of
/// `keys` (`Name=Value`) to `destination`.
pub fn movescu(
    addr: SocketAddr,
    called_ae: &str,
    destination: &str,
    patient_root: bool,
    keys: &[String],
) -> RetrieveRun {
    let mut command = dcmtk::command(MOVESCU);
    command
        .args(["-d", if patient_root { "-P" } else { "-S" }])
        .args(["-aet", CALLING_AE, "-aec", called_ae, "-aem", destination])
        .args(["-to", "10", "-ta", "10", "-td", "120"]);
    for key in keys {
        command.arg("-k").arg(key);
    }
    command
        .arg(addr.ip().to_string())
        .arg(addr.port().to_string());
    parse_run(
        dcmtk::run(command, CLIENT_TIMEOUT),
        "Received Final Move Response",
    )
}

/// `getscu -d -S` of `keys`, writing received files to `out`.
pub fn getscu(addr: SocketAddr, called_ae: &str, keys: &[String], out: &Path) -> RetrieveRun {
    std::fs::create_dir_all(out).expect("create the getscu directory");
    let mut command = dcmtk::command(GETSCU);
    command
        .args(["-d", "-S", "-aet", CALLING_AE, "-aec", called_ae])
        .args(["-to", "10", "-ta", "10", "-td", "120", "-od"])
        .arg(out);
    for key in keys {
        command.arg("-k").arg(key);
    }
    command
        .arg(addr.ip().to_string())
        .arg(addr.port().to_string());
    parse_run(
        dcmtk::run(command, CLIENT_TIMEOUT),
        "Received C-GET Response",
    )
}

/// Reads the final response of a DCMTK `-d` log: the last DIMSE message
/// after the last `final_marker`, and the pending count.
fn parse_run(tool: ToolOutput, final_marker: &str) -> RetrieveRun {
    let text = tool.text();
    // `-d` dumps every response: count the pending statuses.
    let pending = text
        .lines()
        .filter(|l| l.contains("DIMSE Status") && l.contains(": 0xff00"))
        .count();
    // The final response is the last incoming C-MOVE/C-GET RSP message.
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.iter().rposition(|l| {
        l.contains("Message Type") && (l.contains("C-MOVE RSP") || l.contains("C-GET RSP"))
    });
    let last = match start {
        Some(start) if text.contains(final_marker) => lines[start..].join("\n"),
        _ => String::new(),
    };
    let field = |name: &str| -> Option<u16> {
        last.lines()
            .find_map(|l| l.split(name).nth(1))
            .and_then(|rest| rest.trim().trim_start_matches(':').trim().parse().ok())
    };
    let status = last.lines().find_map(|l| {
        let rest = l.split("DIMSE Status").nth(1)?;
        let hex = rest.split("0x").nth(1)?;
        u16::from_str_radix(hex.get(..4)?, 16).ok()
    });
    let failed_uids = last
        .lines()
        .find(|l| l.contains("(0008,0058)"))
        .and_then(|l| l.split('[').nth(1))
        .and_then(|l| l.split(']').next())
        .map(|v| v.split('\\').map(str::to_string).collect())
        .unwrap_or_default();
    RetrieveRun {
        status: if status.is_some_and(|s| s == 0xFF00) {
            None
        } else {
            status
        },
        completed: field("Completed Suboperations"),
        failed: field("Failed Suboperations"),
        warning: field("Warning Suboperations"),
        pending,
        failed_uids,
        tool,
    }
}

/// One C-MOVE/C-GET response as the pynetdicom script printed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PyResponse {
    /// Status.
    pub status: u16,
    /// Remaining sub-operations, `None` when absent.
    pub remaining: Option<u16>,
    /// Completed sub-operations.
    pub completed: Option<u16>,
    /// Failed sub-operations.
    pub failed: Option<u16>,
    /// Warning sub-operations.
    pub warning: Option<u16>,
}

/// What the pynetdicom script printed.
#[derive(Debug)]
pub struct PyRun {
    /// Every response in order.
    pub responses: Vec<PyResponse>,
    /// The final Failed SOP Instance UID List.
    pub failed_uids: Vec<String>,
    /// Instances our SCP received.
    pub stored: Vec<String>,
    /// Move Originator AE Title and Message ID of each received C-STORE.
    pub originators: Vec<String>,
    /// The final Error Comment.
    pub comment: Option<String>,
    /// The raw run.
    pub tool: ToolOutput,
}

impl PyRun {
    /// The final response.
    pub fn last(&self) -> &PyResponse {
        self.responses
            .last()
            .unwrap_or_else(|| panic!("no response:\n{}", self.tool))
    }

    /// The pending responses.
    pub fn pending(&self) -> Vec<&PyResponse> {
        self.responses
            .iter()
            .filter(|r| r.status == 0xFF00)
            .collect()
    }
}

/// Runs `retrieve_scu.py <mode> <args>` against the server.
pub fn py_retrieve(addr: SocketAddr, called_ae: &str, mode: &str, args: &[String]) -> PyRun {
    let mut command = Command::new("python3");
    command
        .arg(PY_RETRIEVE_SCU)
        .arg(mode)
        .args(["--host", &addr.ip().to_string()])
        .args(["--port", &addr.port().to_string()])
        .args(["--aet", CALLING_AE, "--aec", called_ae])
        .args(args)
        .stdin(Stdio::null());
    let tool = dcmtk::run(command, CLIENT_TIMEOUT);
    assert!(tool.success(), "{PY_RETRIEVE_SCU} failed:\n{tool}");
    assert!(
        tool.stdout.lines().any(|l| l == "END"),
        "{PY_RETRIEVE_SCU} did not finish:\n{tool}"
    );
    let count = |v: &str| (v != "-").then(|| v.parse().expect("a count"));
    let mut run = PyRun {
        responses: Vec::new(),
        failed_uids: Vec::new(),
        stored: Vec::new(),
        originators: Vec::new(),
        comment: None,
        tool: ToolOutput {
            status: tool.status,
            stdout: String::new(),
            stderr: String::new(),
        },
    };
    for line in tool.stdout.lines() {
        let (kind, rest) = line.split_once(' ').unwrap_or((line, ""));
        match kind {
            "RSP" => {
                let f: Vec<&str> = rest.split(' ').collect();
                assert_eq!(f.len(), 5, "bad RSP line {line:?}");
                run.responses.push(PyResponse {
                    status: u16::from_str_radix(f[0], 16).expect("a hex status"),
                    remaining: count(f[1]),
                    completed: count(f[2]),
                    failed: count(f[3]),
                    warning: count(f[4]),
                });
            }
            "FAILED" => run.failed_uids.push(rest.to_string()),
            "STORED" => run.stored.push(rest.to_string()),
            "ORIGINATOR" => run.originators.push(rest.to_string()),
            "COMMENT" => run.comment = Some(rest.to_string()),
            _ => {}
        }
    }
    run.tool = tool;
    run
}

/// Writes a small Secondary Capture image (Explicit VR Little Endian) into
/// an existing study, of its patient: its own series, 8×8 8-bit pixels.
pub fn secondary_capture(
    path: &Path,
    study: &Instance,
    (patient_id, patient_name): (&str, &str),
    series_uid: &str,
    sop_instance_uid: &str,
) -> Instance {
    let text = |tag, vr, value: &str| DataElement::new(tag, vr, PrimitiveValue::from(value));
    let us = |tag, value: u16| DataElement::new(tag, VR::US, PrimitiveValue::from(value));
    let object = InMemDicomObject::from_element_iter([
        text(tags::SOP_CLASS_UID, VR::UI, SECONDARY_CAPTURE),
        text(tags::SOP_INSTANCE_UID, VR::UI, sop_instance_uid),
        text(tags::STUDY_DATE, VR::DA, &study.study_date),
        text(tags::MODALITY, VR::CS, "OT"),
        text(tags::CONVERSION_TYPE, VR::CS, "WSD"),
        // The study's patient, as the corpus writes it: another identity
        // would be held for reconciliation.
        text(tags::PATIENT_NAME, VR::PN, patient_name),
        text(tags::PATIENT_ID, VR::LO, patient_id),
        text(tags::PATIENT_BIRTH_DATE, VR::DA, "19700101"),
        text(tags::STUDY_INSTANCE_UID, VR::UI, &study.study_uid),
        text(tags::SERIES_INSTANCE_UID, VR::UI, series_uid),
        text(tags::SERIES_NUMBER, VR::IS, "99"),
        text(tags::INSTANCE_NUMBER, VR::IS, "1"),
        us(tags::SAMPLES_PER_PIXEL, 1),
        text(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "MONOCHROME2"),
        us(tags::ROWS, 8),
        us(tags::COLUMNS, 8),
        us(tags::BITS_ALLOCATED, 8),
        us(tags::BITS_STORED, 8),
        us(tags::HIGH_BIT, 7),
        us(tags::PIXEL_REPRESENTATION, 0),
        DataElement::new(
            tags::PIXEL_DATA,
            VR::OB,
            PrimitiveValue::from((0u8..64).collect::<Vec<u8>>()),
        ),
    ]);
    object
        .with_meta(FileMetaTableBuilder::new().transfer_syntax(corpus::EXPLICIT_VR_LITTLE_ENDIAN))
        .expect("build the file meta group")
        .write_to_file(path)
        .expect("write the Secondary Capture file");
    Instance {
        path: path.to_path_buf(),
        study_uid: study.study_uid.clone(),
        series_uid: series_uid.to_string(),
        sop_instance_uid: sop_instance_uid.to_string(),
        study_date: study.study_date.clone(),
        file_size: std::fs::metadata(path).expect("stat").len(),
    }
}
