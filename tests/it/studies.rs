//! Study operations through the `imageserver study` and `imageserver rules`
//! commands, run against the data (and index) of a running server: delete,
//! edit, reprocess and the integrity check, send to a storescp, and the
//! rules dry run. Interrupted runs are simulated through the index trait
//! (rows deleted, an edit recorded) and DCMTK's dcmodify (a file changed
//! behind the index's back).

#[path = "support/find_scu.rs"]
#[allow(dead_code, clippy::duplicate_mod)]
mod find_scu;
#[path = "support/retrieve_peers.rs"]
#[allow(dead_code, clippy::duplicate_mod)]
mod retrieve_peers;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use dicom_dictionary_std::tags;
use imageserver_core::db::postgres::PgIndex;
use imageserver_core::db::sqlite::SqliteIndex;
use imageserver_core::db::studies::{AttributeChange, AuditEntry, EditStatus, EditableAttribute};
use imageserver_core::db::Database;
use imageserver_core::model::{AeTitle, IndexCounts, PartitionId, Uid};

use crate::support::cli::{cli, cli_ok, load, wait_work_items, work_items};
use crate::support::corpus::{self, generate_corpus, CorpusShape, Instance};
use crate::support::dcmtk;
use crate::support::server::{down_port, test_dir, Archive, Server, SERVER_AE};
use find_scu::{findscu, Model};
use retrieve_peers::{assert_received, device_toml, StoreScp};

/// The archive's index through the full `Database` trait (study store
/// included), and the default partition.
fn database(archive: &Archive) -> (Box<dyn Database>, PartitionId) {
    let store: Box<dyn Database> = match archive.db_url() {
        Some(url) => Box::new(PgIndex::connect(url).expect("connect to the index")),
        None => Box::new(
            SqliteIndex::open(&archive.data_dir().join("index.db")).expect("open the index"),
        ),
    };
    let partition = store
        .partition(&AeTitle::parse(SERVER_AE).unwrap())
        .unwrap()
        .expect("the partition");
    (store, partition)
}

fn uid(value: &str) -> Uid {
    Uid::parse(value).unwrap()
}

fn counts(patients: u64, studies: u64, series: u64, instances: u64) -> IndexCounts {
    IndexCounts {
        patients,
        studies,
        series,
        instances,
    }
}

/// The stored file of an instance.
fn stored(server: &Server, instance: &Instance) -> PathBuf {
    server.archive().expected_path(
        &instance.study_date,
        &instance.study_uid,
        &instance.series_uid,
        &instance.sop_instance_uid,
    )
}

/// The Pixel Data element (always last in the corpus) of a file.
fn pixel_data(path: &Path, instance: &Instance) -> Vec<u8> {
    let bytes = std::fs::read(path).unwrap();
    let source = std::fs::read(&instance.path).unwrap();
    let tag = [0xE0, 0x7F, 0x10, 0x00];
    let at = source.windows(4).rposition(|w| w == tag).unwrap();
    let len = source.len() - at;
    bytes[bytes.len() - len..].to_vec()
}

/// STUDY-level C-FIND by Study Instance UID: (PatientName, StudyDescription)
/// of every match.
fn find_study(server: &Server, work: &Path, study_uid: &str) -> Vec<(String, String)> {
    let out = findscu(
        server.addr(),
        server.ae_title(),
        Model::Study,
        &[
            "QueryRetrieveLevel=STUDY",
            &format!("StudyInstanceUID={study_uid}"),
            "PatientName",
            "StudyDescription",
        ],
        &[],
        work,
    );
    let names = out.column(tags::PATIENT_NAME);
    let descriptions = out.column(tags::STUDY_DESCRIPTION);
    names
        .into_iter()
        .zip(descriptions)
        .map(|(n, d)| (n.unwrap_or_default(), d.unwrap_or_default()))
        .collect()
}

#[test]
fn delete_removes_rows_counts_files_and_is_audited() {
    let dir = test_dir("study-delete");
    let corpus_dir = dir.path().join("corpus");
    let corpus = generate_corpus(&corpus_dir, 501, CorpusShape::uniform(3, 1, 2, (16, 16)));
    let server = Server::start(dir.path());
    load(&server, &corpus_dir, corpus.len());
    let archive = server.archive();
    let (db, partition) = database(archive);
    assert_eq!(db.counts(partition).unwrap(), counts(3, 3, 3, 6));
    let (first, second, third) = (&corpus[0], &corpus[2], &corpus[4]);
    assert_eq!(find_study(&server, dir.path(), &first.study_uid).len(), 1);

    let out = cli_ok(
        dir.path(),
        archive,
        &[
            "study",
            "delete",
            "--now",
            &first.study_uid,
            "--reason",
            "wrong patient",
            "--actor",
            "cli:tester",
        ],
    );
    assert!(out.contains(": 2 instances in 1 series ("), "{out}");
    assert!(out.contains("), 2 files removed;"), "{out}");
    assert_eq!(db.counts(partition).unwrap(), counts(2, 2, 2, 4));
    for instance in &corpus[..2] {
        assert!(db
            .instance(partition, &uid(&instance.sop_instance_uid))
            .unwrap()
            .is_none());
        assert!(!stored(&server, instance).exists());
    }
    // The study folder is gone; the other studies' files are untouched.
    assert!(!stored(&server, first)
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .exists());
    for instance in &corpus[2..] {
        assert!(stored(&server, instance).is_file());
    }
    assert!(find_study(&server, dir.path(), &first.study_uid).is_empty());
    let audit = db.audit_log(partition, &uid(&first.study_uid)).unwrap();
    assert_eq!(audit.len(), 1, "{audit:?}");
    assert_eq!(audit[0].action, "study.delete");
    assert_eq!(audit[0].actor, "cli:tester");
    assert!(audit[0].details.contains("wrong patient"), "{audit:?}");

    // Again: a clear message, nothing deleted, nothing recorded.
    let again = cli(
        dir.path(),
        archive,
        &[
            "study",
            "delete",
            "--now",
            &first.study_uid,
            "--reason",
            "again",
        ],
    );
    assert_eq!(again.code(), Some(2), "{}", again);
    assert!(
        again.stderr.contains(&format!(
            "no study {} in partition IMAGESERVER",
            first.study_uid
        )),
        "{}",
        again
    );
    assert_eq!(
        db.audit_log(partition, &uid(&first.study_uid))
            .unwrap()
            .len(),
        1
    );

    // Interrupted after the rows went (the index says deleted, the files are
    // still there): the next run finishes the files.
    db.delete_study_rows(
        partition,
        &uid(&second.study_uid),
        &AuditEntry::now(
            "test",
            "study.delete",
            partition,
            &uid(&second.study_uid),
            "{}".into(),
        ),
    )
    .unwrap()
    .expect("the study was there");
    assert!(stored(&server, second).is_file());
    let out = cli_ok(
        dir.path(),
        archive,
        &[
            "study",
            "delete",
            "--now",
            &second.study_uid,
            "--reason",
            "retry",
        ],
    );
    assert!(out.contains("removed the 2 remaining files"), "{out}");
    assert!(!stored(&server, second).parent().unwrap().exists());
    assert_eq!(db.counts(partition).unwrap(), counts(1, 1, 1, 2));
    assert!(stored(&server, third).is_file());
    // The server still takes the deleted study again.
    load(&server, &corpus_dir.join("study0"), 2);
    assert_eq!(db.counts(partition).unwrap(), counts(2, 2, 2, 4));
}

#[test]
fn edit_rewrites_every_file_and_the_index_and_keeps_history() {
    let dir = test_dir("study-edit");
    let corpus_dir = dir.path().join("corpus");
    let corpus = generate_corpus(&corpus_dir, 502, CorpusShape::uniform(1, 2, 2, (16, 16)));
    let server = Server::start(dir.path());
    load(&server, &corpus_dir, corpus.len());
    let archive = server.archive();
    let (db, partition) = database(archive);
    let study = &corpus[0].study_uid;
    let pixels: Vec<Vec<u8>> = corpus
        .iter()
        .map(|i| pixel_data(&stored(&server, i), i))
        .collect();
    let old_name = find_study(&server, dir.path(), study)[0].0.clone();

    // An earlier run was interrupted: the edit is recorded and the first
    // file already carries the new values.
    let changes = [
        AttributeChange {
            attribute: EditableAttribute::StudyDescription,
            old_value: Some("imageserver integration test".into()),
            new_value: "CT CHEST".into(),
        },
        AttributeChange {
            attribute: EditableAttribute::PatientName,
            old_value: Some(old_name.clone()),
            new_value: "DOE^JANE".into(),
        },
    ];
    db.begin_edit(partition, &uid(study), &changes, "cli:first", "typo")
        .unwrap();
    let first_file = stored(&server, &corpus[0]);
    let dcmodify = dcmtk::run(
        {
            let mut command = dcmtk::command("/usr/bin/dcmodify");
            command
                .args([
                    "-nb",
                    "-m",
                    "PatientName=DOE^JANE",
                    "-m",
                    "StudyDescription=CT CHEST",
                ])
                .arg(&first_file);
            command
        },
        Duration::from_secs(30),
    );
    assert!(dcmodify.success(), "{dcmodify}");

    // Another edit while that one is pending is refused, clearly.
    let other = cli(
        dir.path(),
        archive,
        &[
            "study",
            "edit",
            "--now",
            study,
            "--set",
            "PatientName=ROE^RICHARD",
        ],
    );
    assert_eq!(other.code(), Some(2), "{}", other);
    assert!(other.stderr.contains("is pending"), "{}", other);

    // The same edit again finishes it.
    let out = cli_ok(
        dir.path(),
        archive,
        &[
            "study",
            "edit",
            "--now",
            study,
            "--set",
            "PatientName=DOE^JANE",
            "--set",
            "StudyDescription=CT CHEST",
            "--reason",
            "typo",
        ],
    );
    assert!(
        out.contains("): 3 files rewritten, 1 already edited\n"),
        "{out}"
    );

    assert_eq!(
        find_study(&server, dir.path(), study),
        [("DOE^JANE".to_string(), "CT CHEST".to_string())]
    );
    for (instance, pixels) in corpus.iter().zip(&pixels) {
        let path = stored(&server, instance);
        let dump = dcmtk::dump(&path);
        assert!(dump.success(), "{dump}");
        assert!(dump.stdout.contains("[DOE^JANE]"), "{}", dump.stdout);
        assert!(dump.stdout.contains("[CT CHEST]"), "{}", dump.stdout);
        assert!(!dump.stdout.contains(&old_name), "{}", dump.stdout);
        assert!(dump
            .stdout
            .contains(&format!("[{}]", instance.sop_instance_uid)));
        assert_eq!(
            &pixel_data(&path, instance),
            pixels,
            "pixel data of {path:?}"
        );
        let indexed = db
            .instance(partition, &uid(&instance.sop_instance_uid))
            .unwrap()
            .unwrap();
        assert_eq!(indexed.file_size, std::fs::metadata(&path).unwrap().len());
        assert_eq!(indexed.digest, corpus::blake3_hex(&path));
    }
    let history = db.edit_history(partition, &uid(study)).unwrap();
    assert_eq!(history.len(), 1, "{history:?}");
    assert_eq!(history[0].status, EditStatus::Completed);
    assert_eq!(history[0].actor, "cli:first");
    let name = history[0]
        .changes
        .iter()
        .find(|c| c.attribute == EditableAttribute::PatientName)
        .unwrap();
    assert_eq!(
        (name.old_value.as_deref(), name.new_value.as_str()),
        (Some(old_name.as_str()), "DOE^JANE")
    );

    // Once more: nothing to do, no second history entry, files untouched.
    let before = corpus::blake3_hex(&first_file);
    let out = cli_ok(
        dir.path(),
        archive,
        &[
            "study",
            "edit",
            "--now",
            study,
            "--set",
            "PatientName=DOE^JANE",
            "--set",
            "StudyDescription=CT CHEST",
        ],
    );
    assert!(out.contains("nothing to do"), "{out}");
    assert_eq!(db.edit_history(partition, &uid(study)).unwrap().len(), 1);
    assert_eq!(corpus::blake3_hex(&first_file), before);
    let edits = db
        .audit_log(partition, &uid(study))
        .unwrap()
        .into_iter()
        .filter(|a| a.action == "study.edit")
        .count();
    assert_eq!(edits, 1);
    // Index and files agree.
    cli_ok(dir.path(), archive, &["study", "check", study]);
    let history = cli_ok(dir.path(), archive, &["study", "history", study]);
    assert!(history.contains("completed by cli:first"), "{history}");

    // Bad requests get clear messages.
    for (set, message) in [
        ("Modality=MR", "cannot be edited"),
        ("StudyDate=2024-01-01", "YYYYMMDD"),
        (
            "PatientName=王^小明",
            "cannot be written in the file's character set ISO_IR 100",
        ),
    ] {
        let bad = cli(
            dir.path(),
            archive,
            &["study", "edit", "--now", study, "--set", set],
        );
        assert_eq!(bad.code(), Some(2), "{set}: {}", bad);
        assert!(bad.stderr.contains(message), "{set}: {}", bad);
    }
    let unknown = cli(
        dir.path(),
        archive,
        &[
            "study",
            "edit",
            "--now",
            "1.2.3.4.5",
            "--set",
            "PatientName=X",
        ],
    );
    assert!(
        unknown
            .stderr
            .contains("no study 1.2.3.4.5 in partition IMAGESERVER"),
        "{}",
        unknown
    );
}

#[test]
fn reprocess_restores_the_rows_and_the_check_finds_what_differs() {
    let dir = test_dir("study-reprocess");
    let corpus_dir = dir.path().join("corpus");
    let corpus = generate_corpus(&corpus_dir, 503, CorpusShape::uniform(1, 1, 3, (16, 16)));
    let server = Server::start(dir.path());
    load(&server, &corpus_dir, corpus.len());
    let archive = server.archive();
    let (db, partition) = database(archive);
    let study = &corpus[0].study_uid;
    let out = cli_ok(dir.path(), archive, &["study", "check", study]);
    assert!(out.contains("index and files agree"), "{out}");

    // A file deleted and a file edited behind the index's back.
    let (gone, changed) = (&corpus[0], &corpus[1]);
    std::fs::remove_file(stored(&server, gone)).unwrap();
    let dcmodify = dcmtk::run(
        {
            let mut command = dcmtk::command("/usr/bin/dcmodify");
            command
                .args(["-nb", "-m", "StudyDescription=CHANGED BEHIND ITS BACK"])
                .arg(stored(&server, changed));
            command
        },
        Duration::from_secs(30),
    );
    assert!(dcmodify.success(), "{dcmodify}");
    let check = cli(dir.path(), archive, &["study", "check", study]);
    assert_eq!(check.code(), Some(1), "{}", check);
    let report = &check.stdout;
    assert!(
        report.contains(&format!("missing file: {}", gone.sop_instance_uid)),
        "{report}"
    );
    assert!(
        report.contains(&format!("mismatch: {}", changed.sop_instance_uid)),
        "{report}"
    );
    assert!(report.contains("study reprocess"), "{report}");

    let out = cli_ok(dir.path(), archive, &["study", "reprocess", "--now", study]);
    assert!(
        out.contains(": 2 instance rows rebuilt from its files (there were 3)\n"),
        "{out}"
    );
    assert_eq!(db.counts(partition).unwrap(), counts(1, 1, 1, 2));
    assert!(db
        .instance(partition, &uid(&gone.sop_instance_uid))
        .unwrap()
        .is_none());
    let path = stored(&server, changed);
    let indexed = db
        .instance(partition, &uid(&changed.sop_instance_uid))
        .unwrap()
        .unwrap();
    assert_eq!(indexed.file_size, std::fs::metadata(&path).unwrap().len());
    assert_eq!(indexed.digest, corpus::blake3_hex(&path));
    cli_ok(dir.path(), archive, &["study", "check", study]);

    // The rows deleted through the index trait: reprocess brings them back.
    db.replace_study_rows(
        partition,
        &uid(study),
        &[],
        db.study_row_fence(partition, &uid(study)).unwrap(),
        &AuditEntry::now("test", "test.corrupt", partition, &uid(study), "{}".into()),
    )
    .unwrap()
    .expect("no row inserted after the fence");
    assert_eq!(db.counts(partition).unwrap(), counts(0, 0, 0, 0));
    assert!(find_study(&server, dir.path(), study).is_empty());
    cli_ok(dir.path(), archive, &["study", "reprocess", "--now", study]);
    assert_eq!(db.counts(partition).unwrap(), counts(1, 1, 1, 2));
    assert_eq!(find_study(&server, dir.path(), study).len(), 1);
    let study_row = db.study(partition, &uid(study)).unwrap().unwrap();
    assert_eq!(
        study_row.study.study_date.as_deref(),
        Some(gone.study_date.as_str())
    );
    cli_ok(dir.path(), archive, &["study", "check", study]);
}

#[test]
fn send_delivers_byte_identical_data_sets_and_reports_failed_uids() {
    let dir = test_dir("study-send");
    let corpus_dir = dir.path().join("corpus");
    let corpus = generate_corpus(&corpus_dir, 504, CorpusShape::uniform(1, 1, 3, (16, 16)));
    let dest = StoreScp::start("DEST", &dir.path().join("dest"), false);
    let down_port = down_port();
    let server = Server::builder(dir.path())
        .setting(
            "devices",
            format!("[{}, {}]", dest.device(), device_toml("DOWN", down_port)),
        )
        .start();
    load(&server, &corpus_dir, corpus.len());
    let archive = server.archive();
    let study = &corpus[0].study_uid;

    let out = cli_ok(
        dir.path(),
        archive,
        &["study", "send", "--now", study, "--to", "DEST"],
    );
    assert!(out.contains("sent 3 of 3 instances"), "{out}");
    let all: Vec<&Instance> = corpus.iter().collect();
    assert_received(&dest.received(), &all, "study send");

    // Only what is asked for.
    dest.clear();
    cli_ok(
        dir.path(),
        archive,
        &[
            "study",
            "send",
            "--now",
            study,
            "--to",
            "DEST",
            "--instance",
            &corpus[1].sop_instance_uid,
        ],
    );
    assert_received(&dest.received(), &[&corpus[1]], "one instance");

    // A destination that is down: every UID failed, for a retry.
    let down = cli(
        dir.path(),
        archive,
        &["study", "send", "--now", study, "--to", "DOWN"],
    );
    assert_eq!(down.code(), Some(1), "{}", down);
    let stdout = &down.stdout;
    assert!(stdout.contains("sent 0 of 3 instances"), "{stdout}");
    let failed: BTreeSet<&str> = stdout
        .lines()
        .filter_map(|l| l.trim().strip_prefix("failed "))
        .filter_map(|l| l.split(':').next())
        .collect();
    let expected: BTreeSet<&str> = corpus.iter().map(|i| i.sop_instance_uid.as_str()).collect();
    assert_eq!(failed, expected, "{stdout}");
    assert!(stdout.contains("refused the connection"), "{stdout}");

    let unknown = cli(
        dir.path(),
        archive,
        &["study", "send", "--now", study, "--to", "NOWHERE"],
    );
    assert_eq!(unknown.code(), Some(2));
    assert!(
        unknown
            .stderr
            .contains("partition IMAGESERVER has no device NOWHERE"),
        "{}",
        unknown
    );
    let (db, partition) = database(archive);
    let sends = db
        .audit_log(partition, &uid(study))
        .unwrap()
        .into_iter()
        .filter(|a| a.action == "study.send")
        .count();
    assert_eq!(sends, 3);
}

#[test]
fn rules_dry_run_prints_the_matching_rule_and_action() {
    let dir = test_dir("study-rules");
    let corpus_dir = dir.path().join("corpus");
    // Study dates 2020-01-01 and 2021-02-02, CT.
    let corpus = generate_corpus(&corpus_dir, 505, CorpusShape::uniform(2, 1, 1, (16, 16)));
    std::fs::write(
        dir.path().join("rules.toml"),
        format!(
            r#"
version = 1

[[rule]]
name = "ct-route"
when.all = [
    {{ attribute = "ModalitiesInStudy", contains = "CT" }},
    {{ attribute = "StudyDate", older_than_days = 30 }},
]
actions = [{{ type = "auto_route", device = "VIEWER" }}]

[[rule]]
name = "mr-only"
when = {{ attribute = "ModalitiesInStudy", contains = "MR" }}
actions = [{{ type = "delete", after_days = 1 }}]

[[rule]]
name = "first-patient"
partition = "IMAGESERVER"
when = {{ attribute = "PatientID", in = ["{}"] }}
actions = [{{ type = "delete", after_days = 3650 }}, {{ type = "tier1_retention", after_days = 0 }}]
"#,
            "PID505-0"
        ),
    )
    .unwrap();
    let server = Server::builder(dir.path())
        .setting("rules_file", "\"rules.toml\"")
        .setting("devices", format!("[{}]", device_toml("VIEWER", 104)))
        .start();
    load(&server, &corpus_dir, corpus.len());
    let archive = server.archive();

    let out = cli_ok(
        dir.path(),
        archive,
        &["rules", "test", "--study", &corpus[0].study_uid],
    );
    for expected in [
        "dry run: nothing is changed",
        "rule \"ct-route\": MATCHES",
        "because ModalitiesInStudy \"CT\" contains \"CT\"",
        "would auto-route to VIEWER (now)",
        "rule \"mr-only\": no match",
        "because ModalitiesInStudy \"CT\" does not contain \"MR\"",
        "rule \"first-patient\": MATCHES",
        "because PatientID \"PID505-0\" is one of [\"PID505-0\"]",
        "would delete 3650 days after arrival (on ",
        "would migrate off tier 1 0 days after arrival (now)",
        "=> 2 of 3 rules match",
    ] {
        assert!(out.contains(expected), "missing {expected:?} in:\n{out}");
    }
    let out = cli_ok(
        dir.path(),
        archive,
        &["rules", "test", "--study", &corpus[1].study_uid],
    );
    assert!(out.contains("rule \"first-patient\": no match"), "{out}");
    assert!(
        out.contains("=> 1 of 3 rules match: auto-route to VIEWER [ct-route]"),
        "{out}"
    );

    let unknown = cli(
        dir.path(),
        archive,
        &["rules", "test", "--study", "1.2.3.4.5"],
    );
    assert_eq!(unknown.code(), Some(2));
    assert!(
        unknown
            .stderr
            .contains("no study 1.2.3.4.5 in any partition"),
        "{}",
        unknown
    );
    let out = cli_ok(dir.path(), archive, &["rules", "check"]);
    assert!(out.contains(": 3 rules, valid\n"), "{out}");
}

/// Without `--now`, the study commands go through the server's work queue:
/// by default they wait for the item; `--queue` returns at once; an unknown
/// study or device enqueues nothing.
#[test]
fn study_commands_queue_work_for_the_server_by_default() {
    let dir = test_dir("study-queued");
    let corpus_dir = dir.path().join("corpus");
    let corpus = generate_corpus(&corpus_dir, 509, CorpusShape::uniform(2, 1, 2, (16, 16)));
    let server = Server::start(dir.path());
    load(&server, &corpus_dir, corpus.len());
    let archive = server.archive();
    let (db, partition) = database(archive);
    let items = |kind: &str| -> Vec<serde_json::Value> {
        cli_ok(
            dir.path(),
            archive,
            &["workqueue", "list", "--type", kind, "--json"],
        )
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
    };

    // The default: enqueue, wait, report.
    let (first, second) = (&corpus[0], &corpus[2]);
    let out = cli_ok(
        dir.path(),
        archive,
        &["study", "delete", &first.study_uid, "--reason", "queued"],
    );
    assert!(out.contains("enqueued delete_study work item"), "{out}");
    assert!(out.contains(": completed"), "{out}");
    assert_eq!(db.counts(partition).unwrap(), counts(1, 1, 1, 2));
    assert!(!stored(&server, first).exists());
    let deleted = items("delete_study");
    assert_eq!(deleted.len(), 1, "{deleted:#?}");
    assert_eq!(deleted[0]["status"], "completed");

    // --queue: the id is printed at once; the server runs it.
    let out = cli_ok(
        dir.path(),
        archive,
        &[
            "study",
            "edit",
            &second.study_uid,
            "--set",
            "PatientName=QUEUED^ONLY",
            "--queue",
        ],
    );
    assert!(!out.contains("completed"), "{out}");
    let id = out
        .split_whitespace()
        .skip_while(|w| *w != "item")
        .nth(1)
        .expect("an item id")
        .to_string();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let shown: serde_json::Value = serde_json::from_str(&cli_ok(
            dir.path(),
            archive,
            &["workqueue", "show", &id, "--json"],
        ))
        .expect("JSON");
        if shown["status"] == "completed" {
            break;
        }
        assert_ne!(shown["status"], "failed", "{shown:#?}");
        assert!(std::time::Instant::now() < deadline, "{shown:#?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let found = find_study(&server, dir.path(), &second.study_uid);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].0, "QUEUED^ONLY");

    // Refusals before anything is queued.
    let unknown = cli(dir.path(), archive, &["study", "reprocess", "1.2.3.4.5"]);
    assert_eq!(unknown.code(), Some(2), "{}", unknown);
    assert!(
        unknown
            .stderr
            .contains("no study 1.2.3.4.5 in partition IMAGESERVER (nothing enqueued)"),
        "{}",
        unknown
    );
    let nowhere = cli(
        dir.path(),
        archive,
        &["study", "send", &second.study_uid, "--to", "NOWHERE"],
    );
    assert_eq!(nowhere.code(), Some(2), "{}", nowhere);
    assert!(items("reprocess_study").is_empty());
    assert!(items("move_study").is_empty());
    let both = cli(
        dir.path(),
        archive,
        &["study", "reprocess", &second.study_uid, "--now", "--queue"],
    );
    assert_eq!(both.code(), Some(2), "{}", both);
}

/// An instance sent after an edit keeps its sender's values (and puts them
/// back in the index rows) until StudyProcess notices and applies the
/// study's edit again: then every file and the index carry the edit.
#[test]
fn instances_arriving_after_an_edit_take_its_values() {
    let dir = test_dir("study-late-arrival");
    let corpus_dir = dir.path().join("corpus");
    let corpus = generate_corpus(&corpus_dir, 511, CorpusShape::uniform(1, 1, 3, (16, 16)));
    let server = Server::builder(dir.path())
        .setting(
            "workqueue",
            "{ study_process_delay_secs = 1, poll_secs = 1 }",
        )
        .start();
    let archive = server.archive();
    let (db, partition) = database(archive);
    let study = &corpus[0].study_uid;
    let send = |instances: &[Instance]| {
        let paths: Vec<&Path> = instances.iter().map(|i| i.path.as_path()).collect();
        let storescu = dcmtk::store(
            server.addr(),
            server.ae_title(),
            &paths,
            &[],
            Duration::from_secs(120),
        );
        assert!(storescu.success(), "storescu failed:\n{storescu}");
        assert_eq!(
            dcmtk::acknowledged_files(&storescu.text()).len(),
            instances.len()
        );
    };

    send(&corpus[..2]);
    let out = cli_ok(
        dir.path(),
        archive,
        &[
            "study",
            "edit",
            study,
            "--set",
            "PatientName=EDITED^NAME",
            "--reason",
            "wrong name",
        ],
    );
    assert!(out.contains(": completed"), "{out}");
    // The third instance comes with the name its modality knows.
    send(&corpus[2..]);

    let edits = wait_work_items(
        dir.path(),
        archive,
        "edit_study",
        "the edit re-applied",
        |items| items.len() == 2 && items.iter().all(|i| i["status"] == "completed"),
    );
    assert_eq!(edits[1]["payload"]["actor"], "study_process", "{edits:#?}");
    assert_eq!(
        edits[1]["payload"]["values"],
        serde_json::json!(["PatientName=EDITED^NAME"])
    );
    // Once every StudyProcess has run, nothing else was re-applied.
    wait_work_items(dir.path(), archive, "study_process", "quiet", |items| {
        !items.is_empty() && items.iter().all(|i| i["status"] == "completed")
    });
    assert_eq!(work_items(dir.path(), archive, "edit_study").len(), 2);

    for instance in &corpus {
        let dump = dcmtk::dump(&stored(&server, instance));
        assert!(dump.success(), "{dump}");
        assert!(dump.stdout.contains("[EDITED^NAME]"), "{}", dump.stdout);
    }
    let found = find_study(&server, dir.path(), study);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].0, "EDITED^NAME");
    let history = db.edit_history(partition, &uid(study)).unwrap();
    assert_eq!(history.len(), 2, "{history:?}");
    assert!(history.iter().all(|e| e.status == EditStatus::Completed));
    assert_eq!(history[1].actor, "study_process");
}
