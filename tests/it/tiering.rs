//! Filesystems and tiers at run time: placement by tier and high
//! watermark (a `capacity_mb` quota makes the watermarks reachable without
//! filling the disk), A700 before a quota is exhausted with nothing
//! half-written, `imageserver filesystem add|set` seen by a running server,
//! and a root without its identity marker refused.

#[path = "support/retrieve_peers.rs"]
#[allow(dead_code, clippy::duplicate_mod)]
mod retrieve_peers;

use std::path::Path;
use std::time::Duration;

use crate::support::cli::{cli_ok, wait_work_items, BOUND};
use crate::support::corpus::{generate_corpus, CorpusShape, Instance};
use crate::support::dcmtk;
use crate::support::files_under;
use crate::support::lifecycle::{instance_files, stored_at};
use crate::support::server::{test_dir, Server};
use crate::support::{assert_no_temp_files, received_by_uid, temp_entries};
use retrieve_peers::{assert_received, getscu, movescu, StoreScp};

/// One `[[filesystems]]` entry as an inline TOML table.
fn fs_toml(path: &Path, tier: u8, capacity_mb: Option<u64>, high: f64, low: f64) -> String {
    let capacity = capacity_mb.map_or(String::new(), |mb| format!(", capacity_mb = {mb}"));
    format!(
        "{{ path = {:?}, tier = {tier}, high_watermark = {high:.1}, low_watermark = {low:.1}{capacity} }}",
        path.display().to_string()
    )
}

/// `filesystem list --json`, by path.
fn listed(root: &Path, server: &Server) -> Vec<serde_json::Value> {
    let out = cli_ok(root, server.archive(), &["filesystem", "list", "--json"]);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("list --json: {e}\n{out}"))
}

fn row<'a>(rows: &'a [serde_json::Value], path: &Path) -> &'a serde_json::Value {
    let path = path.display().to_string();
    rows.iter()
        .find(|r| r["path"] == path.as_str())
        .unwrap_or_else(|| panic!("{path} not listed: {rows:#?}"))
}

/// Whether instance `sop` is filed under `root`.
fn holds(root: &Path, sop: &str) -> bool {
    stored_at(root, sop).is_some()
}

/// storescu of `paths`; the Store Responses in order.
fn store(server: &Server, paths: &[&Path]) -> Vec<String> {
    let out = dcmtk::store(server.addr(), server.ae_title(), paths, &[], BOUND);
    dcmtk::store_responses(&out.text())
}

const OUT_OF_RESOURCES: &str = "Refused: OutOfResources";

#[test]
fn new_studies_go_to_the_highest_tier_below_its_high_watermark() {
    let dir = test_dir("tier-placement");
    let data = dir.path().join("data");
    let (t1, t2) = (data.join("t1"), data.join("t2"));
    // Two studies of 12 instances of ~33 KB: the first takes the 1 MiB
    // tier-1 quota past its 30 % high watermark. (Every filesystem has a
    // quota: the test machine's disk may itself be past 90 %.)
    let corpus_dir = dir.path().join("corpus");
    let corpus = generate_corpus(&corpus_dir, 71, CorpusShape::uniform(2, 1, 12, (128, 128)));
    // No scheduler: its watermark check would migrate the first study off
    // tier 1 (above its high watermark) while the test looks for it there.
    let server = Server::builder(dir.path())
        .setting("min_free_space_mb", 0)
        .setting("services", "{ enabled = false }")
        .setting(
            "filesystems",
            format!(
                "[{}, {}]",
                fs_toml(&t2, 2, Some(1024), 90.0, 80.0),
                fs_toml(&t1, 1, Some(1), 30.0, 10.0)
            ),
        )
        .start();
    let (first, second) = corpus.split_at(12);
    for study in [first, second] {
        let paths: Vec<&Path> = study.iter().map(|i| i.path.as_path()).collect();
        let responses = store(&server, &paths);
        assert_eq!(
            responses,
            vec!["Success"; study.len()],
            "every store succeeds"
        );
    }

    for instance in first {
        // Later instances follow their study, past the watermark.
        assert!(
            holds(&t1, &instance.sop_instance_uid),
            "{} of the first study is not on tier 1",
            instance.sop_instance_uid
        );
    }
    for instance in second {
        assert!(
            holds(&t2, &instance.sop_instance_uid),
            "{} of the second study is not on tier 2 (tier 1 is above its high watermark)",
            instance.sop_instance_uid
        );
    }
    assert_eq!(
        instance_files(&t1).len() + instance_files(&t2).len(),
        corpus.len()
    );
    assert!(temp_entries(server.archive()).is_empty());

    let rows = listed(dir.path(), &server);
    let tier1 = row(&rows, &t1);
    let size = |root: &Path| -> u64 {
        instance_files(root)
            .iter()
            .map(|p| p.metadata().expect("stat").len())
            .sum()
    };
    let held = size(&t1);
    assert_eq!(tier1["held_bytes"], held, "{tier1:#}");
    assert_eq!(tier1["total_bytes"], 1u64 << 20, "{tier1:#}");
    assert_eq!(tier1["above_high_watermark"], true, "{tier1:#}");
    assert_eq!(tier1["marker_state"], "ok", "{tier1:#}");
    let tier2 = row(&rows, &t2);
    assert_eq!(tier2["held_bytes"], size(&t2), "{tier2:#}");
    let text = cli_ok(dir.path(), server.archive(), &["filesystem", "list"]);
    assert!(
        text.contains(&t1.display().to_string()) && text.contains("USED%"),
        "{text}"
    );
}

#[test]
fn a700_before_the_quota_is_full_and_the_rest_keeps_working() {
    let dir = test_dir("tier-full");
    let data = dir.path().join("data");
    let t1 = data.join("t1");
    let corpus_dir = dir.path().join("corpus");
    // ~2 MiB of instances against a 2 MiB quota that keeps 1 MiB free.
    let corpus = generate_corpus(&corpus_dir, 72, CorpusShape::uniform(1, 1, 60, (128, 128)));
    let dest = StoreScp::start("DEST", &dir.path().join("dest"), false);
    let mut server = Server::builder(dir.path())
        .setting("min_free_space_mb", 1)
        .setting(
            "filesystems",
            format!("[{}]", fs_toml(&t1, 1, Some(2), 90.0, 80.0)),
        )
        .setting("devices", format!("[{}]", dest.device()))
        .start();
    // storescu stops at the first refusal.
    let responses = store(&server, &[&corpus_dir]);
    let stored = responses.len() - 1;
    assert!(stored > 0, "{responses:?}");
    assert_eq!(
        responses,
        [vec!["Success"; stored], vec![OUT_OF_RESOURCES]].concat(),
        "stores succeed until the reserve is reached, then A700"
    );
    let unsent = corpus
        .iter()
        .find(|i| {
            server
                .archive()
                .index()
                .instance(&i.sop_instance_uid)
                .is_none()
        })
        .expect("an instance was refused");
    assert_eq!(
        store(&server, &[&unsent.path]),
        [OUT_OF_RESOURCES],
        "still full"
    );
    // Right after a restart (the bytes held are measured once the server
    // runs, not before it listens): still full, never a guess of empty.
    server.sigterm();
    server.restart();
    assert_eq!(
        store(&server, &[&unsent.path]),
        [OUT_OF_RESOURCES],
        "still full right after a restart"
    );

    // The reserve: the quota never filled.
    let files = instance_files(&t1);
    let bytes: u64 = files
        .iter()
        .map(|p| p.metadata().expect("stat").len())
        .sum();
    let largest = corpus.iter().map(|i| i.file_size).max().unwrap_or(0);
    assert!(
        bytes <= (1 << 20) + largest,
        "{bytes} bytes stored: the 1 MiB reserve of the 2 MiB quota was eaten into"
    );
    // Nothing half-written: every file is an acknowledged, indexed instance.
    assert_no_temp_files(server.archive(), "the A700s");
    assert_eq!(files.len(), stored);
    let index = server.archive().index();
    let acknowledged: Vec<&Instance> = corpus
        .iter()
        .filter(|i| index.instance(&i.sop_instance_uid).is_some())
        .collect();
    assert_eq!(acknowledged.len(), stored);

    // Echo, find and move still answer.
    let echo = dcmtk::echo(server.addr(), server.ae_title(), Duration::from_secs(10));
    assert!(echo.success(), "no C-ECHO when full:\n{echo}");
    let find = crate::find::find_scu::findscu(
        server.addr(),
        server.ae_title(),
        crate::find::find_scu::Model::Study,
        &["QueryRetrieveLevel=STUDY", "StudyInstanceUID"],
        &[],
        dir.path(),
    );
    assert_eq!(find.responses.len(), 1, "C-FIND when full:\n{find}");
    let run = movescu(
        server.addr(),
        server.ae_title(),
        "DEST",
        false,
        &[
            "QueryRetrieveLevel=STUDY".to_string(),
            format!("StudyInstanceUID={}", corpus[0].study_uid),
        ],
    );
    assert_eq!(run.status, Some(0), "C-MOVE when full:\n{}", run.tool);
    assert_received(&dest.received(), &acknowledged, "C-MOVE when full");
}

#[test]
fn filesystems_added_and_changed_reach_a_running_server() {
    let dir = test_dir("tier-runtime");
    let data = dir.path().join("data");
    let (a, b) = (data.join("a"), data.join("b"));
    let corpus_dir = dir.path().join("corpus");
    let corpus = generate_corpus(&corpus_dir, 73, CorpusShape::uniform(40, 1, 1, (16, 16)));
    let mut server = Server::builder(dir.path())
        .setting("filesystem_refresh_secs", 1)
        .setting(
            "filesystems",
            format!("[{}]", fs_toml(&a, 1, Some(1024), 90.0, 80.0)),
        )
        .start();
    let pid = server.pid();
    assert_eq!(store(&server, &[&corpus[0].path]), ["Success"]);
    assert!(holds(&a, &corpus[0].sop_instance_uid));

    let b_text = b.display().to_string();
    let a_text = a.display().to_string();
    cli_ok(
        dir.path(),
        server.archive(),
        &["filesystem", "add", &b_text, "--tier", "1"],
    );
    cli_ok(
        dir.path(),
        server.archive(),
        &["filesystem", "set", &a_text, "--enabled", "false"],
    );
    // New studies, one at a time, until one lands on b: the server re-reads
    // the filesystems every second (bounded by the corpus).
    let mut landed = None;
    for instance in &corpus[1..] {
        assert_eq!(store(&server, &[&instance.path]), ["Success"]);
        if holds(&b, &instance.sop_instance_uid) {
            landed = Some(instance);
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let landed = landed.expect("no new study reached the added filesystem");
    assert_eq!(server.pid(), pid, "no restart");
    // From then on, nothing new goes to the disabled one.
    let after = corpus
        .iter()
        .position(|i| i.sop_instance_uid == landed.sop_instance_uid)
        .expect("from the corpus");
    for instance in &corpus[after + 1..after + 4] {
        assert_eq!(store(&server, &[&instance.path]), ["Success"]);
        assert!(
            holds(&b, &instance.sop_instance_uid),
            "a new study went to the disabled filesystem"
        );
    }

    // The configuration seeds; the index's rows stay in force after a restart.
    assert!(server.sigterm().success());
    server.restart();
    let rows = listed(dir.path(), &server);
    assert_eq!(row(&rows, &a)["enabled"], false, "{rows:#?}");
    assert_eq!(row(&rows, &b)["enabled"], true, "{rows:#?}");
}

#[test]
fn a_root_without_its_identity_marker_is_never_written() {
    let dir = test_dir("tier-marker");
    let data = dir.path().join("data");
    let (t1, t2) = (data.join("t1"), data.join("t2"));
    let corpus_dir = dir.path().join("corpus");
    let corpus = generate_corpus(&corpus_dir, 74, CorpusShape::uniform(3, 1, 2, (16, 16)));
    let mut server = Server::builder(dir.path())
        .setting("filesystem_refresh_secs", 1)
        .setting(
            "filesystems",
            format!(
                "[{}, {}]",
                fs_toml(&t1, 1, Some(1024), 90.0, 80.0),
                fs_toml(&t2, 2, Some(1024), 90.0, 80.0)
            ),
        )
        .start();
    // The first study's first instance, on tier 1.
    assert_eq!(store(&server, &[&corpus[0].path]), ["Success"]);
    assert!(holds(&t1, &corpus[0].sop_instance_uid));
    let rows = listed(dir.path(), &server);
    let marker = row(&rows, &t1)["marker"]
        .as_str()
        .expect("a marker")
        .to_string();
    assert_eq!(
        std::fs::read_to_string(t1.join(".imageserver-filesystem"))
            .expect("marker file")
            .trim(),
        marker
    );
    assert!(server.sigterm().success());

    // The share is not mounted: an empty folder where it was.
    let mounted = data.join("t1.mounted");
    std::fs::rename(&t1, &mounted).expect("unmount");
    std::fs::create_dir(&t1).expect("empty mount point");
    server.restart();
    let rows = listed(dir.path(), &server);
    let refused = row(&rows, &t1);
    assert_eq!(refused["marker_state"], "missing", "{refused:#}");
    assert!(
        refused["refused"]
            .as_str()
            .is_some_and(|r| r.contains("not mounted")),
        "{refused:#}"
    );
    let log = std::fs::read_to_string(dir.path().join("server.log")).expect("server log");
    assert!(
        log.contains("filesystem refused") && log.contains(&marker),
        "no log line says why:\n{log}"
    );
    // A new study goes elsewhere; the first study's next instance cannot
    // follow it there: A700, and the empty folder stays empty.
    assert_eq!(store(&server, &[&corpus[2].path]), ["Success"]);
    assert!(holds(&t2, &corpus[2].sop_instance_uid));
    assert_eq!(store(&server, &[&corpus[1].path]), [OUT_OF_RESOURCES]);
    assert!(
        files_under(&t1).is_empty(),
        "written into the unmounted folder: {:?}",
        files_under(&t1)
    );
    assert!(
        !t1.join(crate::support::MARKER_FILE).exists(),
        "a new marker was written into the unmounted folder"
    );
    assert_no_temp_files(server.archive(), "a refused filesystem");
    // Nor does a migration write there.
    let refused = crate::support::cli::cli(
        dir.path(),
        server.archive(),
        &[
            "study",
            "migrate",
            &corpus[2].study_uid,
            "--to",
            &t1.display().to_string(),
            "--now",
        ],
    );
    assert!(
        !refused.success() && refused.text().contains("identity marker"),
        "a migration into the unmounted folder:\n{refused}"
    );
    assert!(files_under(&t1).is_empty() && !t1.join(crate::support::MARKER_FILE).exists());
    assert!(holds(&t2, &corpus[2].sop_instance_uid));

    // Mounted again: the running server writes there again.
    std::fs::remove_dir(&t1).expect("remove the mount point");
    std::fs::rename(&mounted, &t1).expect("mount");
    let mut stored = false;
    for _ in 0..40 {
        std::thread::sleep(Duration::from_millis(250));
        if store(&server, &[&corpus[1].path]) == ["Success"] {
            stored = true;
            break;
        }
    }
    assert!(stored, "the remounted filesystem was not written again");
    assert!(holds(&t1, &corpus[1].sop_instance_uid));
}

#[test]
fn the_watermark_service_drains_a_tier_below_its_low_watermark() {
    let dir = test_dir("tier-watermark");
    let data = dir.path().join("data");
    let (t1, t2) = (data.join("t1"), data.join("t2"));
    let corpus_dir = dir.path().join("corpus");
    // 8 studies of ~100 KB against a 1 MiB tier 1 (high 90 %, low 30 %):
    // all of them fit below the high watermark, so placement puts every
    // one on tier 1 however fresh its view of the usage is. The high
    // watermark is lowered to 60 % once they are stored.
    let corpus = generate_corpus(&corpus_dir, 75, CorpusShape::uniform(8, 1, 3, (128, 128)));
    let server = Server::builder(dir.path())
        .setting("min_free_space_mb", 0)
        .setting("filesystem_refresh_secs", 1)
        .setting("workqueue", "{ lease_secs = 5, poll_secs = 1 }")
        .setting(
            "filesystems",
            format!(
                "[{}, {}]",
                fs_toml(&t1, 1, Some(1), 90.0, 30.0),
                fs_toml(&t2, 2, Some(1024), 90.0, 80.0)
            ),
        )
        .start();
    // One study after the other: their order of arrival is known. After
    // six the first is retrieved (its access recorded); then two more.
    let studies_in_order: Vec<&[Instance]> = corpus.chunks(3).collect();
    for (n, study) in studies_in_order.iter().enumerate() {
        if n == 6 {
            let run = getscu(
                server.addr(),
                server.ae_title(),
                &[
                    "QueryRetrieveLevel=STUDY".to_string(),
                    format!("StudyInstanceUID={}", studies_in_order[0][0].study_uid),
                ],
                &dir.path().join("get-first"),
            );
            assert_eq!(run.status, Some(0), "C-GET:\n{}", run.tool);
            let items =
                crate::support::cli::work_items(dir.path(), server.archive(), "migrate_study");
            assert!(
                items.is_empty(),
                "below the high watermark, nothing migrates: {items:#?}"
            );
        }
        let paths: Vec<&Path> = study.iter().map(|i| i.path.as_path()).collect();
        assert_eq!(store(&server, &paths), vec!["Success"; study.len()]);
    }
    assert_eq!(
        instance_files(&t1).len(),
        corpus.len(),
        "every study is on tier 1 before the watermark is lowered"
    );
    let items = crate::support::cli::work_items(dir.path(), server.archive(), "migrate_study");
    assert!(
        items.is_empty(),
        "below the high watermark, nothing migrates: {items:#?}"
    );
    // About 76 % used: lowering the high watermark to 60 % puts tier 1
    // above it.
    let t1_text = t1.display().to_string();
    cli_ok(
        dir.path(),
        server.archive(),
        &["filesystem", "set", &t1_text, "--high-watermark", "60"],
    );

    // Migrations are queued and run until tier 1 is below its low mark.
    let deadline = std::time::Instant::now() + BOUND;
    let used = loop {
        let items = crate::support::cli::work_items(dir.path(), server.archive(), "migrate_study");
        let rows = listed(dir.path(), &server);
        let used = row(&rows, &t1)["used_percent"].as_f64().expect("measured");
        if !items.is_empty() && used < 30.0 && items.iter().all(|i| i["status"] == "completed") {
            break used;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "tier 1 at {used} %, items {items:#?}"
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    let items = wait_work_items(
        dir.path(),
        server.archive(),
        "migrate_study",
        "done",
        |_| true,
    );
    assert!(used < 30.0);
    // Least recently accessed first: the second study (never retrieved,
    // the oldest arrival after the first) left tier 1; the first, just
    // retrieved, stayed.
    assert!(
        holds(&t2, &corpus[3].sop_instance_uid),
        "the least recently accessed study stayed"
    );
    assert!(
        holds(&t1, &corpus[0].sop_instance_uid),
        "the recently retrieved study was migrated"
    );
    assert!(
        !instance_files(&t1).is_empty(),
        "tier 1 was emptied, not drained to its low mark: {items:#?}"
    );
    assert_eq!(
        instance_files(&t1).len() + instance_files(&t2).len(),
        corpus.len()
    );

    // Every instance still retrievable, byte-identical.
    let studies: Vec<&str> = {
        let mut uids: Vec<&str> = corpus.iter().map(|i| i.study_uid.as_str()).collect();
        uids.dedup();
        uids
    };
    let out_dir = dir.path().join("get");
    let run = getscu(
        server.addr(),
        server.ae_title(),
        &[
            "QueryRetrieveLevel=STUDY".to_string(),
            format!("StudyInstanceUID={}", studies.join("\\")),
        ],
        &out_dir,
    );
    assert_eq!(run.status, Some(0), "C-GET:\n{}", run.tool);
    let all: Vec<&Instance> = corpus.iter().collect();
    assert_received(
        &received_by_uid(&out_dir),
        &all,
        "C-GET after the watermark migrations",
    );
}

#[test]
fn a_tier1_retention_rule_migrates_studies_off_tier_1() {
    let dir = test_dir("tier-retention");
    let data = dir.path().join("data");
    let (t1, t2) = (data.join("t1"), data.join("t2"));
    let corpus_dir = dir.path().join("corpus");
    let corpus = generate_corpus(&corpus_dir, 76, CorpusShape::uniform(1, 1, 3, (16, 16)));
    std::fs::write(
        dir.path().join("rules.toml"),
        r#"version = 1

[[rule]]
name = "tier1-for-0-days"
when = { attribute = "StudyInstanceUID", wildcard = "*" }
actions = [{ type = "tier1_retention", after_days = 0 }]
"#,
    )
    .expect("write the rules");
    let server = Server::builder(dir.path())
        .setting("rules_file", r#""rules.toml""#)
        .setting(
            "workqueue",
            "{ study_process_delay_secs = 1, poll_secs = 1 }",
        )
        .setting(
            "filesystems",
            format!(
                "[{}, {}]",
                fs_toml(&t1, 1, Some(1024), 90.0, 80.0),
                fs_toml(&t2, 2, Some(1024), 90.0, 80.0)
            ),
        )
        .start();
    assert_eq!(
        store(&server, &[&corpus_dir]),
        vec!["Success"; corpus.len()]
    );
    wait_work_items(
        dir.path(),
        server.archive(),
        "migrate_study",
        "tier retention",
        |items| !items.is_empty() && items.iter().all(|i| i["status"] == "completed"),
    );
    for instance in &corpus {
        assert!(
            holds(&t2, &instance.sop_instance_uid),
            "{} stayed on tier 1",
            instance.sop_instance_uid
        );
    }
    assert!(instance_files(&t1).is_empty());
}
