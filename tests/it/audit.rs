//! The ATNA audit trail through the real binary: a syslog receiver on
//! loopback (`tests/it/py/syslog_receiver.py`, UDP and TCP) collects the
//! DICOM audit messages of a store, a query, a move, a delete and a refused
//! association; each is checked for the PS3.15 A.5 structure. The receiver
//! is stopped during an ingest that completes anyway, and every message
//! spooled meanwhile arrives once it is back. `imageserver audit --json`
//! lists the same events from the index.

#[path = "support/find_scu.rs"]
#[allow(dead_code, clippy::duplicate_mod)]
mod find_scu;
#[path = "support/retrieve_peers.rs"]
#[allow(dead_code, clippy::duplicate_mod)]
mod retrieve_peers;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::cli::{cli_ok, BOUND};
use crate::support::corpus::{generate_corpus, CorpusShape};
use crate::support::dcmtk::{self, CALLING_AE};
use crate::support::server::{down_port, test_dir, Server};
use find_scu::{findscu, Model};
use retrieve_peers::{device_toml, movescu, StoreScp};

const RECEIVER: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/it/py/syslog_receiver.py"
);
/// How long a message may take to arrive (the spool retries with backoff).
const ARRIVAL: Duration = Duration::from_secs(90);

/// The receiver process, killed by its pid when dropped.
struct Receiver {
    child: Option<Child>,
    udp_port: u16,
    tcp_port: u16,
    out: PathBuf,
}

impl Receiver {
    fn start(udp_port: u16, tcp_port: u16, out: &Path) -> Receiver {
        let mut receiver = Receiver {
            child: None,
            udp_port,
            tcp_port,
            out: out.to_path_buf(),
        };
        receiver.spawn();
        receiver
    }

    fn spawn(&mut self) {
        let mut child = Command::new("python3")
            .arg(RECEIVER)
            .args(["--udp-port", &self.udp_port.to_string()])
            .args(["--tcp-port", &self.tcp_port.to_string()])
            .arg("--out")
            .arg(&self.out)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the syslog receiver");
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().expect("stdout"))
            .read_line(&mut line)
            .expect("read the receiver's ready line");
        assert_eq!(line.trim(), "ready", "the syslog receiver did not start");
        self.child = Some(child);
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Every message received so far, in order.
    fn messages(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect()
    }

    /// Waits (bounded) until `done` holds for the messages received.
    fn wait_for(&self, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + ARRIVAL;
        loop {
            let messages = self.messages();
            if done(&messages) {
                return messages;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not received within {ARRIVAL:?}; got:\n{}",
                messages
                    .iter()
                    .map(Value::to_string)
                    .collect::<Vec<_>>()
                    .join("\n")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop();
    }
}

fn of_event<'a>(messages: &'a [Value], event_id: &str) -> Vec<&'a Value> {
    messages
        .iter()
        .filter(|m| m["event_id"] == event_id)
        .collect()
}

/// The messages of `event_id` about study `uid`.
fn about<'a>(messages: &'a [Value], event_id: &str, uid: &str) -> Vec<&'a Value> {
    of_event(messages, event_id)
        .into_iter()
        .filter(|m| {
            m["objects"]
                .as_array()
                .unwrap()
                .iter()
                .any(|o| o["id"] == uid && o["id_type"] == "110180")
        })
        .collect()
}

/// Instances of the study object `uid` in a message, summed over SOP classes.
fn instances(message: &Value, uid: &str) -> u64 {
    message["objects"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o["id"] == uid)
        .flat_map(|o| o["sop_classes"].as_object().unwrap().values())
        .map(|n| n.as_u64().unwrap())
        .sum()
}

/// Whether `message` names `user_id` as an active participant with `role`
/// (and as the requestor when `requestor`).
fn has_participant(message: &Value, user_id: &str, role: Option<&str>, requestor: bool) -> bool {
    message["participants"].as_array().unwrap().iter().any(|p| {
        p["user_id"] == user_id
            && role.is_none_or(|r| p["role"] == r)
            && (!requestor || p["requestor"] == "true")
    })
}

fn spooled(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().ends_with(".syslog"))
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn store_query_move_delete_and_refusal_are_audited_and_spooled_while_the_repository_is_down() {
    let dir = test_dir("audit");
    let out = dir.path().join("received.jsonl");
    let mut receiver = Receiver::start(down_port(), down_port(), &out);
    let corpus_dir = dir.path().join("corpus");
    let corpus = generate_corpus(&corpus_dir, 901, CorpusShape::uniform(2, 1, 3, (16, 16)));
    let destination = StoreScp::start("AUDITDEST", &dir.path().join("dest"), false);
    let devices = format!(
        "[{}, {}]",
        device_toml(CALLING_AE, 1),
        device_toml(&destination.ae_title, destination.port)
    );
    let audit = format!(
        "{{ enabled = true, repository = \"tcp://127.0.0.1:{}\", audit_source_id = \"AUDIT-IT\" }}",
        receiver.tcp_port
    );
    let server = Server::builder(dir.path())
        .setting("devices", devices)
        .setting("audit", &audit)
        .dicom_setting("accept_unknown_devices", false)
        .start();
    let spool = server.archive().data_dir().join("audit-spool");

    // Application Activity: started.
    let messages = receiver.wait_for("Application Start", |m| {
        m.iter().any(|m| m["event_id"] == "110100")
    });
    let start = of_event(&messages, "110100")[0];
    assert_eq!(start["event_type"], "110120");
    assert_eq!(start["source_id"], "AUDIT-IT");
    assert_eq!(start["pri"], 85, "facility authpriv (10), severity notice");
    assert_eq!(start["msgid"], "IHE+RFC-3881");

    // A store of two studies on one association: one Instances Transferred
    // per study, with its instances counted, when the association ends.
    let storescu = dcmtk::store(server.addr(), server.ae_title(), &[&corpus_dir], &[], BOUND);
    assert!(storescu.success(), "storescu:\n{storescu}");
    let (first, second) = (&corpus[0].study_uid, &corpus[3].study_uid);
    let messages = receiver.wait_for("the stores", |m| {
        !about(m, "110104", first).is_empty() && !about(m, "110104", second).is_empty()
    });
    for study in [first, second] {
        let stored = about(&messages, "110104", study);
        assert_eq!(
            stored.len(),
            1,
            "one message per association and study: {stored:?}"
        );
        let stored = stored[0];
        assert_eq!(stored["action"], "C");
        assert_eq!(stored["outcome"], "0");
        assert_eq!(instances(stored, study), 3, "{stored}");
        assert!(
            has_participant(stored, CALLING_AE, Some("110153"), true),
            "{stored}"
        );
        assert!(has_participant(
            stored,
            server.ae_title(),
            Some("110152"),
            false
        ));
        assert!(
            stored["objects"]
                .as_array()
                .unwrap()
                .iter()
                .any(|o| o["type"] == "1"),
            "a patient object: {stored}"
        );
    }

    // A C-FIND: one Query message with the identifier.
    let found = findscu(
        server.addr(),
        server.ae_title(),
        Model::Study,
        &[
            "QueryRetrieveLevel=STUDY",
            &format!("StudyInstanceUID={first}"),
        ],
        &[],
        &dir.path().join("find"),
    );
    assert_eq!(found.final_status(), Some(0));
    let messages = receiver.wait_for("the query", |m| !of_event(m, "110112").is_empty());
    let queries = of_event(&messages, "110112");
    assert_eq!(queries.len(), 1);
    assert_eq!(queries[0]["action"], "E");
    assert!(has_participant(
        queries[0],
        CALLING_AE,
        Some("110153"),
        true
    ));
    let query_object = &queries[0]["objects"][0];
    assert_eq!(query_object["id_type"], "110181");
    assert!(
        query_object["query_bytes"].as_u64().unwrap() > 0,
        "{query_object}"
    );

    // A C-MOVE of the first study: Begin Transferring, then one Instances
    // Transferred with its three instances.
    let moved = movescu(
        server.addr(),
        server.ae_title(),
        &destination.ae_title,
        false,
        &[
            "QueryRetrieveLevel=STUDY".into(),
            format!("StudyInstanceUID={first}"),
        ],
    );
    assert_eq!(moved.status, Some(0), "{}", moved.tool);
    let messages = receiver.wait_for("the move", |m| about(m, "110104", first).len() == 2);
    let begin = about(&messages, "110102", first);
    assert_eq!(begin.len(), 1, "{begin:?}");
    let sent = about(&messages, "110104", first)[1];
    assert_eq!(sent["action"], "R");
    assert_eq!(instances(sent, first), 3);
    assert!(has_participant(
        sent,
        &destination.ae_title,
        Some("110152"),
        false
    ));
    assert!(has_participant(
        sent,
        server.ae_title(),
        Some("110153"),
        false
    ));
    assert!(has_participant(sent, CALLING_AE, None, true), "{sent}");
    assert!(
        about(&messages, "110104", second).len() == 1,
        "the second study was not moved"
    );

    // An unknown caller is refused: a Security Alert.
    let mut echo = dcmtk::command(dcmtk::ECHOSCU);
    echo.args(["-aet", "INTRUDER", "-aec", server.ae_title()])
        .args(["-to", "10", "-ta", "10", "-td", "10"])
        .arg("127.0.0.1")
        .arg(server.addr().port().to_string());
    let refused = dcmtk::run(echo, BOUND);
    assert!(!refused.success(), "INTRUDER was not refused:\n{refused}");
    let messages = receiver.wait_for("the refusal", |m| !of_event(m, "110113").is_empty());
    let alert = of_event(&messages, "110113")[0];
    assert_eq!(alert["event_type"], "110126");
    assert_eq!(alert["outcome"], "4");
    assert!(has_participant(alert, "INTRUDER", None, true), "{alert}");

    // A study delete from the command line: its own process, configured to
    // send over UDP, which sends before it exits.
    let udp_root = dir.path().join("udp");
    std::fs::create_dir_all(&udp_root).unwrap();
    let config = std::fs::read_to_string(dir.path().join("imageserver.toml")).unwrap();
    let config = config.replace(
        &format!("tcp://127.0.0.1:{}", receiver.tcp_port),
        &format!("udp://127.0.0.1:{}", receiver.udp_port),
    );
    std::fs::write(udp_root.join("imageserver.toml"), config).unwrap();
    cli_ok(
        &udp_root,
        server.archive(),
        &[
            "study",
            "delete",
            "--now",
            second,
            "--reason",
            "audit test",
            "--actor",
            "cli:auditor",
        ],
    );
    let messages = receiver.wait_for("the delete", |m| !about(m, "110105", second).is_empty());
    let deleted = about(&messages, "110105", second)[0];
    assert_eq!(deleted["transport"], "udp");
    assert_eq!(deleted["action"], "D");
    assert!(
        has_participant(deleted, "cli:auditor", None, true),
        "{deleted}"
    );

    // Every message so far parsed as a DICOM audit message.
    for message in &messages {
        assert!(message.get("error").is_none(), "{message}");
        assert_eq!(message["event_scheme"], "DCM");
        assert!(!message["participants"].as_array().unwrap().is_empty());
    }

    // The repository goes down; ingest goes on and its message waits in
    // the spool.
    let received_before = messages.len();
    receiver.stop();
    let late_dir = dir.path().join("late");
    let late = generate_corpus(&late_dir, 902, CorpusShape::uniform(1, 1, 2, (16, 16)));
    let storescu = dcmtk::store(server.addr(), server.ae_title(), &[&late_dir], &[], BOUND);
    assert!(
        storescu.success(),
        "ingest while the repository is down:\n{storescu}"
    );
    assert_eq!(dcmtk::acknowledged_files(&storescu.text()).len(), 2);
    // The store's message is spooled once the association has ended.
    let deadline = Instant::now() + ARRIVAL;
    while spooled(&spool) == 0 {
        assert!(
            Instant::now() < deadline,
            "nothing spooled in {}",
            spool.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(receiver.messages().len(), received_before);

    // Back up: the spool drains and the message arrives.
    receiver.spawn();
    let late_study = &late[0].study_uid;
    let messages = receiver.wait_for("the spooled store", |m| {
        !about(m, "110104", late_study).is_empty()
    });
    assert_eq!(
        instances(about(&messages, "110104", late_study)[0], late_study),
        2
    );
    let deadline = Instant::now() + ARRIVAL;
    while spooled(&spool) > 0 {
        assert!(Instant::now() < deadline, "the spool did not drain");
        std::thread::sleep(Duration::from_millis(50));
    }

    // The index keeps the same events: `imageserver audit --json`.
    let listed = cli_ok(dir.path(), server.archive(), &["audit", "--json"]);
    let entries: Vec<Value> = listed
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    let actions: Vec<&str> = entries
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for action in [
        "atna.application-activity",
        "atna.instances-transferred",
        "atna.query",
        "atna.begin-transferring",
        "atna.security-alert",
        "atna.study-deleted",
    ] {
        assert!(
            actions.contains(&action),
            "{action} not listed: {actions:?}"
        );
    }
    let of_second = cli_ok(
        dir.path(),
        server.archive(),
        &[
            "audit",
            "--json",
            "--action",
            "instances-transferred",
            "--study",
            second,
        ],
    );
    let of_second: Vec<Value> = of_second
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(of_second.len(), 1, "{of_second:?}");
    assert_eq!(of_second[0]["details"]["event_id"], "110104");
    assert_eq!(of_second[0]["actor"], CALLING_AE);

    // Application Activity: stopped, sent before the process exits.
    let mut server = server;
    assert!(server.sigterm().success());
    let messages = receiver.wait_for("Application Stop", |m| {
        of_event(m, "110100")
            .iter()
            .any(|m| m["event_type"] == "110121")
    });
    assert!(messages.iter().all(|m| m.get("error").is_none()));
}
