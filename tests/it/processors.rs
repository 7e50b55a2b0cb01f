//! The built-in work item processors through a running server
//! (`imageserver serve`) and the CLI, on the selected backend: a send
//! queued while the destination is down retries with backoff and completes
//! once it is up; a queued delete removes the study and its files; ingest
//! schedules StudyProcess once a study has been quiet.
//!
//! Outcomes are asserted; the bounds only stop a test that would hang.

#[path = "support/retrieve_peers.rs"]
#[allow(dead_code, clippy::duplicate_mod)]
mod retrieve_peers;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::support::cli::{cli_ok, command, load, wait_work_items, work_items, BOUND};
use crate::support::corpus::{generate_corpus, CorpusShape, Instance};
use crate::support::server::{down_port, free_port, test_dir, Archive, Server};
use crate::support::{archived_files, dcmtk, received_by_uid};
use retrieve_peers::{assert_received, device_toml, STORESCP};

/// A storescp on a fixed port (the destination a server was told about
/// before it was up), killed on drop.
struct Dest {
    child: Child,
    dir: PathBuf,
}

impl Dest {
    fn start(ae_title: &str, port: u16, dir: &Path) -> Dest {
        std::fs::create_dir_all(dir).expect("create the storescp directory");
        let log = std::fs::File::create(dir.with_extension("log")).expect("create the log");
        let child = dcmtk::command(STORESCP)
            .args(["-v", "-aet", ae_title, "-od"])
            .arg(dir)
            .args(["-ta", "10", "-td", "60"])
            .arg(port.to_string())
            .stdout(log.try_clone().expect("clone the log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {STORESCP}: {e}"));
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            assert!(
                Instant::now() < deadline,
                "storescp did not listen on {addr}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Dest {
            child,
            dir: dir.to_path_buf(),
        }
    }

    fn received(&self) -> BTreeMap<String, PathBuf> {
        received_by_uid(&self.dir)
    }
}

impl Drop for Dest {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn queued_send_retries_while_the_destination_is_down_and_then_delivers_everything() {
    let dir = test_dir("proc-send");
    let corpus_dir = dir.path().join("corpus");
    let corpus = generate_corpus(&corpus_dir, 701, CorpusShape::uniform(1, 2, 3, (16, 16)));
    let dest_port = down_port();
    let server = Server::builder(dir.path())
        .setting("devices", format!("[{}]", device_toml("DEST", dest_port)))
        .start();
    load(&server, &corpus_dir, corpus.len());
    let archive = server.archive();
    let study = corpus[0].study_uid.clone();

    // Queued and waited for, while nothing listens on DEST's port.
    let out_path = dir.path().join("send.out");
    let out = std::fs::File::create(&out_path).expect("create the output file");
    let waiting = command(
        dir.path(),
        archive,
        &["study", "send", &study, "--to", "DEST", "--wait"],
    )
    .stdout(out)
    .stderr(Stdio::inherit())
    .spawn()
    .expect("spawn study send --wait");
    let failed = wait_work_items(
        dir.path(),
        archive,
        "move_study",
        "first failure",
        |items| items.len() == 1 && items[0]["failure_count"].as_u64() >= Some(1),
    );
    assert_eq!(failed[0]["status"], "pending", "{failed:#?}");
    assert!(
        failed[0]["failure_description"]
            .as_str()
            .is_some_and(|d| d.contains("not stored at DEST")),
        "{failed:#?}"
    );

    // DEST comes up: the retry (after the backoff) delivers every instance.
    let dest = Dest::start("DEST", dest_port, &dir.path().join("dest"));
    let status = dcmtk::wait_with_timeout(waiting, BOUND);
    let printed = std::fs::read_to_string(&out_path).unwrap_or_default();
    assert!(status.success(), "study send --wait:\n{status}\n{printed}");
    assert!(
        printed.contains("enqueued move_study work item"),
        "{printed}"
    );
    assert!(printed.contains("completed"), "{printed}");
    let done = work_items(dir.path(), archive, "move_study");
    assert_eq!(done[0]["status"], "completed", "{done:#?}");
    assert!(done[0]["failure_count"].as_u64() >= Some(1), "{done:#?}");
    let all: Vec<&Instance> = corpus.iter().collect();
    assert_received(&dest.received(), &all, "queued send");
}

#[test]
fn queued_delete_removes_the_study_and_its_files() {
    let dir = test_dir("proc-delete");
    let corpus_dir = dir.path().join("corpus");
    let corpus = generate_corpus(&corpus_dir, 702, CorpusShape::uniform(1, 1, 4, (16, 16)));
    let server = Server::start(dir.path());
    load(&server, &corpus_dir, corpus.len());
    let archive = server.archive();
    assert_eq!(archive.index().counts().instances, 4);
    let out = cli_ok(
        dir.path(),
        archive,
        &[
            "study",
            "delete",
            &corpus[0].study_uid,
            "--reason",
            "queued test",
            "--wait",
        ],
    );
    assert!(out.contains("enqueued delete_study work item"), "{out}");
    assert!(out.contains("completed"), "{out}");
    let counts = archive.index().counts();
    assert_eq!((counts.studies, counts.instances), (0, 0), "{counts:?}");
    let left: Vec<PathBuf> = archived_files(archive)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "dcm"))
        .collect();
    assert!(left.is_empty(), "files left: {left:?}");
}

#[test]
fn ingest_schedules_one_study_process_per_study_once_it_is_quiet() {
    let dir = test_dir("proc-study-process");
    let corpus_dir = dir.path().join("corpus");
    let corpus = generate_corpus(&corpus_dir, 703, CorpusShape::uniform(2, 1, 3, (16, 16)));
    let server = Server::builder(dir.path())
        .setting(
            "workqueue",
            "{ study_process_delay_secs = 1, poll_secs = 1 }",
        )
        .start();
    load(&server, &corpus_dir, corpus.len());
    let archive = server.archive();
    let studies: std::collections::BTreeSet<&str> =
        corpus.iter().map(|i| i.study_uid.as_str()).collect();
    let done = wait_work_items(
        dir.path(),
        archive,
        "study_process",
        "study processing",
        |items| {
            !items.is_empty()
                && items.iter().all(|i| i["status"] == "completed")
                && items
                    .iter()
                    .filter_map(|i| i["study_uid"].as_str())
                    .collect::<std::collections::BTreeSet<_>>()
                    == studies
        },
    );
    let instances: u64 = done.iter().filter_map(|i| i["instances"].as_u64()).sum();
    assert_eq!(instances, corpus.len() as u64, "{done:#?}");
    // The index and the files agree: no reprocess was scheduled.
    assert!(work_items(dir.path(), archive, "reprocess_study").is_empty());
}

#[test]
fn rules_fire_through_study_process_as_the_dry_run_says() {
    use imageserver_core::config::Config;
    use imageserver_core::rules::RuleSet;
    use imageserver_core::server::{Server as InProcess, ServerBuilder};
    use imageserver_core::workqueue::{WorkFilter, WorkKind, WorkStatus};

    let dir = test_dir("proc-rules");
    let corpus_dir = dir.path().join("corpus");
    // Two CT studies of two patients, two instances each.
    let corpus = generate_corpus(&corpus_dir, 704, CorpusShape::uniform(2, 1, 2, (16, 16)));
    let data = dir.path().join("data");
    let archive = Archive::new(&data, "IMAGESERVER");
    let dest_port = free_port();
    let dest = Dest::start("DEST", dest_port, &dir.path().join("dest"));
    let port = free_port();
    let db = archive
        .db_url()
        .map(|url| format!("db = {url:?}\n"))
        .unwrap_or_default();
    let config_path = dir.path().join("imageserver.toml");
    std::fs::write(
        &config_path,
        format!(
            "data_dir = {data:?}\n{db}rules_file = \"rules.toml\"\n\
             devices = [{}, {}]\n\
             [dicom]\nae_title = \"IMAGESERVER\"\nbind = \"127.0.0.1\"\nport = {port}\n\
             [workqueue]\nstudy_process_delay_secs = 1\npoll_secs = 1\n",
            device_toml("DEST", dest_port),
            device_toml("OTHER", free_port()),
        ),
    )
    .unwrap();
    let rules_path = dir.path().join("rules.toml");
    std::fs::write(
        &rules_path,
        r#"
version = 1

[[rule]]
name = "ct-route"
when = { attribute = "ModalitiesInStudy", contains = "CT" }
actions = [{ type = "auto_route", device = "DEST" }]

[[rule]]
name = "mr-route"
when = { attribute = "ModalitiesInStudy", contains = "MR" }
actions = [{ type = "auto_route", device = "OTHER" }]

[[rule]]
name = "first-patient"
when = { attribute = "PatientID", in = ["PID704-0"] }
actions = [{ type = "delete", after_days = 3650 }]
"#,
    )
    .unwrap();
    let settings = Config::from_file(&config_path).unwrap().validate().unwrap();
    let opened = ServerBuilder::new(settings)
        .rules(RuleSet::from_file(&rules_path).unwrap())
        .open()
        .unwrap();
    let server = InProcess::start(opened).unwrap();
    load_at(server.local_addr(), &corpus_dir, corpus.len());

    // The engine routes every instance to DEST once the studies are quiet.
    let queue = server.work_queue();
    let list = |kind: WorkKind| {
        queue
            .list(&WorkFilter {
                kinds: vec![kind],
                ..WorkFilter::default()
            })
            .unwrap()
    };
    let deadline = Instant::now() + BOUND;
    loop {
        let routes = list(WorkKind::AUTO_ROUTE);
        if routes.len() == 2 && routes.iter().all(|i| i.status == WorkStatus::Completed) {
            break;
        }
        assert!(Instant::now() < deadline, "auto_route items: {routes:#?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let all: Vec<&Instance> = corpus.iter().collect();
    assert_received(&dest.received(), &all, "auto-route");
    let routes = list(WorkKind::AUTO_ROUTE);
    assert!(
        routes.iter().all(|i| i.payload.contains("\"DEST\"")),
        "{routes:#?}"
    );
    let deletes = list(WorkKind::DELETE_STUDY);
    assert_eq!(deletes.len(), 1, "{deletes:#?}");
    assert_eq!(deletes[0].status, WorkStatus::Pending);
    assert!(
        deletes[0]
            .scheduled_at
            .since(imageserver_core::workqueue::Timestamp::now())
            > Duration::from_secs(3600 * 24 * 3000),
        "{deletes:#?}"
    );

    // The dry run says the same, study by study.
    for study in corpus.iter().map(|i| i.study_uid.as_str()) {
        let out = cli_ok(dir.path(), &archive, &["rules", "test", "--study", study]);
        assert!(out.contains("would auto-route to DEST (now)"), "{out}");
        assert!(!out.contains("auto-route to OTHER"), "{out}");
        let routed = routes
            .iter()
            .filter(|i| i.study_uid().map(|u| u.as_str()) == Some(study))
            .count();
        assert_eq!(routed, 1, "{study}: {routes:#?}");
        let deleted = deletes
            .iter()
            .any(|i| i.study_uid().map(|u| u.as_str()) == Some(study));
        assert_eq!(
            out.contains("would delete 3650 days after arrival"),
            deleted,
            "{study}:\n{out}\n{deletes:#?}"
        );
    }
    server.shutdown(Duration::from_secs(10));
}

fn load_at(addr: std::net::SocketAddr, dir: &Path, n: usize) {
    let storescu = dcmtk::store(addr, "IMAGESERVER", &[dir], &[], BOUND);
    assert!(storescu.success(), "storescu failed:\n{storescu}");
    assert_eq!(dcmtk::acknowledged_files(&storescu.text()).len(), n);
}
