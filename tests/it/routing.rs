//! Sends that partly fail, through a running server (`imageserver serve`)
//! and the CLI, on the selected backend. The destination is a real Storage
//! SCP (`tests/it/py/flaky_store_scp.py`, pynetdicom, driven by
//! `support::scp::FlakyScp`) that refuses chosen
//! instances with 0xA700, once or forever, and logs every C-STORE it gets:
//! the log shows what each round sent, the items show what the archive
//! decided, the SCP's files show what arrived.
//!
//! - `study send --wait`: the first item completes, a follow-up carries
//!   exactly the refused instances and sends only those; everything
//!   arrives byte for byte; the `[workqueue.kinds.move_study]` override
//!   sets the delay and the priority.
//! - An auto-route rule to a destination refusing one instance forever:
//!   the chain is given up at `max_failures` sends of that instance (the
//!   carried failure count holds), naming it and the status; the others
//!   are sent once.
//! - An override of a kind nothing runs stops `serve` with a clear message.
//!
//! Outcomes are asserted; the bounds only stop a test that would hang.

#[path = "support/retrieve_peers.rs"]
#[allow(dead_code, clippy::duplicate_mod)]
mod retrieve_peers;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::support::cli::{cli_ok, command, load, wait_work_items, work_item, BOUND};
use crate::support::corpus::{generate_corpus, CorpusShape, Instance};
use crate::support::dcmtk;
use crate::support::scp::{FlakyScp, Refuse};
use crate::support::server::{free_port, test_dir, Archive, Server};
use retrieve_peers::{assert_received, device_toml};

/// Out of Resources: what the SCP answers a refused instance.
const REFUSED: u16 = 0xA700;
/// Coercion of Data Elements: stored, with a warning.
const WARNING: u16 = 0xB000;

/// The SOP Instance UIDs of a shown item, checked against their series.
fn item_uids(shown: &serde_json::Value, corpus: &[Instance]) -> BTreeSet<String> {
    let series: BTreeMap<&str, &str> = corpus
        .iter()
        .map(|i| (i.sop_instance_uid.as_str(), i.series_uid.as_str()))
        .collect();
    shown["uids"]
        .as_array()
        .unwrap_or_else(|| panic!("no uids in {shown:#}"))
        .iter()
        .map(|uid| {
            let sop = uid["sop_instance_uid"]
                .as_str()
                .expect("a SOP Instance UID");
            assert_eq!(
                uid["series_uid"].as_str(),
                series.get(sop).copied(),
                "series of {sop} in {shown:#}"
            );
            sop.to_string()
        })
        .collect()
}

fn uid_set<'a>(uids: impl IntoIterator<Item = &'a str>) -> BTreeSet<String> {
    uids.into_iter().map(str::to_string).collect()
}

fn count_of(stores: &[(String, u16)], uid: &str) -> usize {
    stores.iter().filter(|(u, _)| u == uid).count()
}

#[test]
fn a_partial_send_failure_retries_only_the_refused_instances() {
    let dir = test_dir("route-partial");
    let corpus_dir = dir.path().join("corpus");
    // One study, three series of three instances.
    let corpus = generate_corpus(&corpus_dir, 711, CorpusShape::uniform(1, 3, 3, (16, 16)));
    let all_uids = uid_set(corpus.iter().map(|i| i.sop_instance_uid.as_str()));
    // Every third instance is refused the first time; one is stored with a
    // warning (delivered: never sent again).
    let refused: Vec<&str> = corpus
        .iter()
        .skip(2)
        .step_by(3)
        .map(|i| i.sop_instance_uid.as_str())
        .collect();
    let warned = corpus[0].sop_instance_uid.as_str();
    let dest_port = free_port();
    let scp = FlakyScp::start(
        dir.path(),
        "DEST",
        dest_port,
        Refuse::FirstTime(&refused),
        &[warned],
    );
    let server = Server::builder(dir.path())
        .setting("devices", format!("[{}]", device_toml("DEST", dest_port)))
        .setting(
            "workqueue",
            r#"{ kinds = { move_study = { failure_delay_secs = 1, priority = "stat" } } }"#,
        )
        .start();
    load(&server, &corpus_dir, corpus.len());
    let archive = server.archive();
    let study = corpus[0].study_uid.clone();

    // The first item completes: what was refused went on in a new item.
    let out = cli_ok(
        dir.path(),
        archive,
        &["study", "send", &study, "--to", "DEST", "--wait"],
    );
    assert!(out.contains("enqueued move_study work item"), "{out}");
    assert!(out.contains("completed"), "{out}");
    let done = wait_work_items(
        dir.path(),
        archive,
        "move_study",
        "the follow-up",
        |items| items.len() == 2 && items.iter().all(|i| i["status"] == "completed"),
    );
    let (first, follow_up) = (&done[0], &done[1]);
    assert_eq!(first["payload"], serde_json::json!({"destination": "DEST"}));
    assert_eq!(
        first["instances"], 0,
        "the first item sends the whole study"
    );
    assert_eq!(first["failure_count"], 0, "{first:#}");
    assert_eq!(
        follow_up["payload"],
        serde_json::json!({"destination": "DEST", "previous_failures": 1}),
        "the failure count carries over"
    );
    assert_eq!(follow_up["failure_count"], 0, "{follow_up:#}");
    assert_eq!(
        item_uids(&work_item(dir.path(), archive, follow_up), &corpus),
        uid_set(refused.iter().copied()),
        "the follow-up carries exactly the refused instances"
    );
    // The override: the priority of items naming none (the CLI's), carried
    // to the follow-up, and the first retry delay (1 s, not the default 10 s).
    assert!(done.iter().all(|i| i["priority"] == "stat"), "{done:#?}");
    let waited = follow_up["scheduled_at"]["ms"].as_i64().unwrap()
        - follow_up["created_at"]["ms"].as_i64().unwrap();
    assert!(
        (100..9_000).contains(&waited),
        "the follow-up was scheduled {waited} ms after its creation: {follow_up:#}"
    );

    // Round one offered every instance once; round two only the refused.
    let stores = scp.stores();
    assert_eq!(stores.len(), corpus.len() + refused.len(), "{stores:#?}");
    let (round_one, round_two) = stores.split_at(corpus.len());
    assert_eq!(
        uid_set(round_one.iter().map(|(uid, _)| uid.as_str())),
        all_uids,
        "round one: {round_one:#?}"
    );
    for (uid, status) in round_one {
        let expected = if refused.contains(&uid.as_str()) {
            REFUSED
        } else if uid == warned {
            WARNING
        } else {
            0
        };
        assert_eq!(*status, expected, "round one, {uid}: {stores:#?}");
    }
    assert_eq!(
        uid_set(round_two.iter().map(|(uid, _)| uid.as_str())),
        uid_set(refused.iter().copied()),
        "round two sends only what was refused: {round_two:#?}"
    );
    assert!(
        round_two.iter().all(|(_, status)| *status == 0),
        "{round_two:#?}"
    );
    for instance in &corpus {
        let uid = instance.sop_instance_uid.as_str();
        let times = if refused.contains(&uid) { 2 } else { 1 };
        assert_eq!(count_of(&stores, uid), times, "{uid}: {stores:#?}");
    }
    let all: Vec<&Instance> = corpus.iter().collect();
    assert_received(&scp.received(), &all, "partial send");
}

#[test]
fn an_instance_refused_forever_fails_the_auto_route_at_max_failures() {
    const MAX_FAILURES: usize = 3;
    let dir = test_dir("route-forever");
    let corpus_dir = dir.path().join("corpus");
    let corpus = generate_corpus(&corpus_dir, 712, CorpusShape::uniform(1, 2, 3, (16, 16)));
    let refused = corpus[4].sop_instance_uid.as_str();
    let dest_port = free_port();
    let scp = FlakyScp::start(
        dir.path(),
        "DEST",
        dest_port,
        Refuse::Always(&[refused]),
        &[],
    );
    std::fs::write(
        dir.path().join("rules.toml"),
        r#"
version = 1

[[rule]]
name = "ct-to-dest"
when = { attribute = "ModalitiesInStudy", contains = "CT" }
actions = [{ type = "auto_route", device = "DEST" }]
"#,
    )
    .unwrap();
    let server = Server::builder(dir.path())
        .setting("rules_file", r#""rules.toml""#)
        .setting("devices", format!("[{}]", device_toml("DEST", dest_port)))
        .setting(
            "workqueue",
            format!(
                "{{ study_process_delay_secs = 2, poll_secs = 1, kinds = {{ auto_route = \
                 {{ failure_delay_secs = 1, backoff = 1.0, max_failures = {MAX_FAILURES} }} }} }}"
            ),
        )
        .start();
    load(&server, &corpus_dir, corpus.len());
    let archive = server.archive();
    let others: Vec<&Instance> = corpus
        .iter()
        .filter(|i| i.sop_instance_uid != refused)
        .collect();

    // StudyProcess routes the study once it is quiet; the refused instance
    // goes on alone until the chain gives up.
    let settled = wait_work_items(dir.path(), archive, "auto_route", "giving up", |items| {
        items.iter().any(|i| i["status"] == "failed")
            && items
                .iter()
                .all(|i| i["status"] == "failed" || i["status"] == "completed")
    });
    let failed: Vec<&serde_json::Value> =
        settled.iter().filter(|i| i["status"] == "failed").collect();
    assert_eq!(failed.len(), 1, "{settled:#?}");
    let failed = failed[0];
    let why = failed["failure_description"].as_str().unwrap_or_default();
    assert!(
        why.contains(refused) && why.contains("0xA700"),
        "the failure names the instance and the status: {why}"
    );
    assert!(
        why.contains(&format!("gave up after {MAX_FAILURES} failures")),
        "{why}"
    );
    assert_eq!(
        failed["payload"],
        serde_json::json!({"destination": "DEST", "rule": "ct-to-dest", "previous_failures": 1}),
        "{failed:#}"
    );
    assert_eq!(
        item_uids(&work_item(dir.path(), archive, failed), &corpus),
        uid_set([refused]),
    );

    // The refused instance was offered exactly max_failures times, every
    // other instance once.
    let stores = scp.stores();
    let attempts: Vec<u16> = stores
        .iter()
        .filter(|(uid, _)| uid == refused)
        .map(|(_, status)| *status)
        .collect();
    assert_eq!(attempts, vec![REFUSED; MAX_FAILURES], "{stores:#?}");
    for instance in &others {
        let uid = instance.sop_instance_uid.as_str();
        assert_eq!(count_of(&stores, uid), 1, "{uid}: {stores:#?}");
    }
    assert!(
        stores
            .iter()
            .all(|(uid, status)| uid == refused || *status == 0),
        "{stores:#?}"
    );
    assert_received(&scp.received(), &others, "auto-route");
}

#[test]
fn an_override_of_a_kind_nothing_runs_stops_serve() {
    let dir = test_dir("route-unknown-kind");
    let archive = Archive::new(&dir.path().join("data"), "IMAGESERVER");
    let config = dir.path().join("imageserver.toml");
    let db = archive
        .db_url()
        .map(|url| format!("db = {url:?}\n"))
        .unwrap_or_default();
    std::fs::write(
        &config,
        format!("{db}[workqueue.kinds.auto_rout]\nmax_failures = 2\n"),
    )
    .unwrap();
    let mut serve = command(dir.path(), &archive, &["serve"]);
    serve.args(["--bind", "127.0.0.1", "--port", &free_port().to_string()]);
    let out = dcmtk::run(serve, BOUND);
    assert!(
        !out.success() && !out.timed_out(),
        "serve must refuse to start:\n{out}"
    );
    let text = out.text();
    assert!(
        text.contains("workqueue.kinds.auto_rout")
            && text.contains("auto_route, compress_study, delete_study"),
        "the error names the setting and the kinds that run:\n{out}"
    );
}

/// Work-queue sends open at most a device's `max_outgoing_associations` to
/// it at once: three studies queued together for a slow destination with a
/// limit of one arrive one association at a time (the others wait, without
/// counting a failure); with no limit they overlap.
#[test]
fn sends_keep_to_the_device_outgoing_association_limit() {
    let dir = test_dir("route-limit");
    let corpus_dir = dir.path().join("corpus");
    let corpus = generate_corpus(&corpus_dir, 713, CorpusShape::uniform(3, 1, 3, (16, 16)));
    let dest_port = free_port();
    // Two device entries for the same SCP (it answers any called AE).
    let limited = "[{ ae_title = \"LIMITED\", host = \"127.0.0.1\", port = PORT, \
                   max_outgoing_associations = 1 }, \
                   { ae_title = \"OPEN\", host = \"127.0.0.1\", port = PORT }]"
        .replace("PORT", &dest_port.to_string());
    let server = Server::builder(dir.path())
        .setting("devices", limited)
        .start();
    load(&server, &corpus_dir, corpus.len());
    let archive = server.archive();
    let scp = FlakyScp::start_slow(
        dir.path(),
        "DEST",
        dest_port,
        Refuse::FirstTime(&[]),
        &[],
        Duration::from_millis(150),
    );
    let studies: BTreeSet<&str> = corpus.iter().map(|i| i.study_uid.as_str()).collect();
    assert_eq!(studies.len(), 3);

    let send_all = |device: &str| {
        for study in &studies {
            cli_ok(
                dir.path(),
                archive,
                &["study", "send", study, "--to", device, "--queue"],
            );
        }
    };
    let all_done = |expected: usize| {
        move |items: &[serde_json::Value]| {
            items.len() == expected && items.iter().all(|i| i["status"] == "completed")
        }
    };

    // Limit 1: one association at a time, every instance once, no failure.
    send_all("LIMITED");
    let done = wait_work_items(
        dir.path(),
        archive,
        "move_study",
        "limited sends",
        all_done(3),
    );
    assert!(
        done.iter().all(|i| i["failure_count"] == 0),
        "waiting for the device is no failure: {done:#?}"
    );
    assert_eq!(
        scp.max_open_connections(0),
        1,
        "{:?}",
        scp.connection_events()
    );
    let stores = scp.stores();
    assert_eq!(stores.len(), corpus.len(), "{stores:#?}");
    let all: Vec<&Instance> = corpus.iter().collect();
    assert_received(&scp.received(), &all, "limited sends");

    // No limit: the same three sends overlap (each holds ~0.45 s).
    let from = scp.connection_events().len();
    send_all("OPEN");
    wait_work_items(dir.path(), archive, "move_study", "open sends", all_done(6));
    assert!(
        scp.max_open_connections(from) >= 2,
        "without a limit the sends overlap: {:?}",
        scp.connection_events()
    );
}
