//! The scheduled services on one running server: `service list`, the
//! archive scan queueing a quiet study, the watermark check (run by the
//! server's scheduler) purging the archived study before anything else,
//! the integrity scan reporting a missing file (for a person, unrepaired),
//! and the folder import taking dropped files, with a broken one set aside
//! in `failed/` with its reason.

use std::path::PathBuf;
use std::process::Command;

use crate::support::cli::{cli, cli_ok, wait_work_items};
use crate::support::corpus::{generate_corpus, CorpusShape};
use crate::support::files_under;
use crate::support::lifecycle::instance_files;
use crate::support::server::{test_dir, Server};

/// Files dropped a minute ago (settled: the import takes them).
fn settle(files: &[PathBuf]) {
    let status = Command::new("touch")
        .args(["-d", "1 minute ago"])
        .args(files)
        .status()
        .expect("touch");
    assert!(status.success());
}

#[test]
fn scheduled_services_archive_purge_check_and_import() {
    let dir = test_dir("services");
    let root = dir.path();
    let drop = root.join("drop");
    let archive_root = root.join("archive");
    let corpus = generate_corpus(
        &root.join("corpus"),
        97,
        CorpusShape::uniform(2, 1, 2, (32, 32)),
    );
    let server = Server::builder(root)
        .setting(
            "archive",
            format!(
                "{{ path = {:?}, after_quiet_hours = 0.0 }}",
                archive_root.display().to_string()
            ),
        )
        .setting(
            "services",
            format!(
                "{{ archive_scan_secs = 0, integrity_scan_secs = 0, integrity_settle_secs = 0, \
                 folder_import_secs = 0, import_folder = {:?} }}",
                drop.display().to_string()
            ),
        )
        .setting("workqueue", "{ lease_secs = 2, poll_secs = 1 }")
        .start();
    let archive = server.archive();
    let fs1 = archive.fs1();

    let listed = cli_ok(root, archive, &["service", "list"]);
    for name in [
        "watermark",
        "archive-scan",
        "integrity-scan",
        "folder-import",
    ] {
        assert!(listed.contains(name), "{listed}");
    }

    // Folder import: one study's files and a broken file are dropped.
    let (first, second): (Vec<_>, Vec<_>) = corpus
        .iter()
        .partition(|i| i.study_uid == corpus[0].study_uid);
    let into = drop.join(server.ae_title());
    std::fs::create_dir_all(into.join("sub")).unwrap();
    let mut dropped = Vec::new();
    for instance in &first {
        let to = into.join("sub").join(instance.path.file_name().unwrap());
        std::fs::copy(&instance.path, &to).unwrap();
        dropped.push(to);
    }
    let broken = into.join("broken.dcm");
    std::fs::write(&broken, b"not DICOM at all").unwrap();
    dropped.push(broken);
    settle(&dropped);
    let out = cli_ok(root, archive, &["service", "run", "folder-import"]);
    assert!(
        out.contains(&format!(
            "{} imported, 0 already held, 1 set aside",
            first.len()
        )),
        "{out}"
    );
    for instance in &first {
        assert!(
            archive
                .index()
                .instance(&instance.sop_instance_uid)
                .is_some(),
            "{out}"
        );
    }
    let aside = drop
        .join("failed")
        .join(server.ae_title())
        .join("broken.dcm");
    assert_eq!(std::fs::read(&aside).unwrap(), b"not DICOM at all");
    let reason = std::fs::read_to_string(aside.with_extension("dcm.reason")).unwrap();
    assert!(!reason.trim().is_empty());
    assert!(
        files_under(&into).is_empty(),
        "the drop folder keeps {:#?}",
        files_under(&into)
    );

    // The other study arrives by import too (the CLI), then the archive
    // scan queues both quiet studies and they are packed.
    let paths: Vec<String> = second
        .iter()
        .map(|i| i.path.display().to_string())
        .collect();
    let mut args = vec!["import"];
    args.extend(paths.iter().map(String::as_str));
    cli_ok(root, archive, &args);
    let out = cli_ok(root, archive, &["service", "run", "archive-scan"]);
    assert!(out.contains("queued 2 studies for archiving"), "{out}");
    wait_work_items(
        root,
        archive,
        "archive_study",
        "the archive scan",
        |items| items.len() == 2 && items.iter().all(|i| i["status"] == "completed"),
    );
    assert_eq!(
        files_under(&archive_root)
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "tar"))
            .count(),
        2
    );
    let out = cli_ok(root, archive, &["service", "run", "archive-scan"]);
    assert!(out.contains("queued 0 studies"), "packed already: {out}");

    // Integrity scan: a missing file is reported for a person, never
    // "repaired" by dropping its row (the index still answers for it).
    let gone = instance_files(&fs1)
        .into_iter()
        .find(|p| p.ends_with(format!("{}.dcm", second[0].sop_instance_uid)))
        .expect("stored");
    std::fs::remove_file(&gone).unwrap();
    let out = cli_ok(root, archive, &["service", "run", "integrity-scan"]);
    assert!(out.contains(&second[0].sop_instance_uid), "{out}");
    assert!(out.contains("queued 0 reprocess items"), "{out}");
    assert!(out.contains("1 with findings for a person"), "{out}");

    // The watermark check, run by the server's scheduler: the filesystem is
    // made "full"; the archived studies are purged (nearline) rather than
    // migrated (there is no lower tier anyway).
    cli_ok(
        root,
        archive,
        &[
            "filesystem",
            "set",
            &fs1.display().to_string(),
            "--capacity-mb",
            "1",
            "--high-watermark",
            "0.2",
            "--low-watermark",
            "0.1",
        ],
    );
    wait_work_items(
        root,
        archive,
        "purge_study",
        "the watermark purge",
        |items| !items.is_empty() && items.iter().all(|i| i["status"] == "completed"),
    );
    let first_study_online = archive
        .index()
        .instance(&first[0].sop_instance_uid)
        .is_some();
    assert!(!first_study_online, "the archived study was not purged");

    let status = cli(root, archive, &["service", "run", "watermark"]);
    assert!(status.success(), "{status}");
}
