//! The admin API, pages and access control against the real binary, with
//! data stored by DCMTK's storescu and a send that fails for real (to a
//! device whose port nothing listens on):
//!
//! - `tests/it/py/web_admin.py` checks every path and method of
//!   `/api/openapi.json` against the running server (each GET answers 200
//!   and JSON of its declared schema; each change without the CSRF token
//!   is refused), that an unauthenticated change is refused (401), a
//!   read-only user cannot delete (403, the study stays), a change with a
//!   wrong CSRF token is refused (403), and a change is in the audit log;
//! - `tests/it/js/web_pages.cjs` drives the pages in headless Chromium
//!   (Debian's `chromium`, through playwright-core): log in, search, open
//!   the study, C-ECHO a device, retry the failed work item (which runs
//!   and fails again), the filesystems page on a tablet's viewport; the
//!   screenshots are kept in the test's output directory (printed);
//! - `tests/it/py/dicomweb_auth.py` is a non-browser DICOMweb client
//!   (dicomweb-client) on the same server, whose DICOMweb is
//!   `authenticated`: 401 with a Basic challenge without credentials, the
//!   read-only user's Basic credentials read but cannot STOW (403), the
//!   admin's store, a bearer token from `/api/login` reads, and repeated
//!   failures are throttled (429) while credentials verified just before
//!   still work. It runs last: the throttle locks out loopback.
//!
//! Admin changes are ATNA events too: a device changed (Security Alert,
//! Network Configuration), a work item retried (Software Configuration),
//! a read-only user's refused change (Use of Restricted Function), each
//! naming the user, read back with `imageserver audit`.
//!
//! One server serves every scenario. The bounds only stop a test that
//! would hang.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::{json, Value};

use crate::support::cli::{cli_ok, BOUND};
use crate::support::corpus::{generate_corpus, single_instance, CorpusShape};
use crate::support::dcmtk;
use crate::support::server::{down_port, test_dir, Server, BINARY};

const API_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/py/web_admin.py");
const AUTH_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/py/dicomweb_auth.py");
const PAGES_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/js/web_pages.cjs");
const CHROMIUM: &str = "/usr/bin/chromium";

/// Where scripts/test.sh installs playwright-core (`npm install --prefix
/// target/node playwright-core`), unless IMAGESERVER_NODE_MODULES says.
fn node_modules() -> PathBuf {
    std::env::var_os("IMAGESERVER_NODE_MODULES")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/target/node/node_modules"
            ))
        })
}

/// `imageserver user hash-password` with `password` on its stdin.
fn hash_password(password: &str) -> String {
    let mut child = Command::new(BINARY)
        .args(["user", "hash-password"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn imageserver user hash-password");
    writeln!(child.stdin.take().expect("stdin"), "{password}").expect("write the password");
    let out = child.wait_with_output().expect("hash-password");
    assert!(out.status.success(), "hash-password failed: {out:?}");
    let hash = String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_string();
    assert!(hash.starts_with("$argon2id$"), "not an argon2 hash: {hash}");
    hash
}

#[test]
fn admin_api_and_pages_with_access_control() {
    assert!(
        std::path::Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: apt-get install -y chromium (scripts/test.sh installs it)"
    );
    let modules = node_modules();
    assert!(
        modules.join("playwright-core").exists(),
        "playwright-core is missing at {}: npm install --prefix target/node playwright-core \
         (scripts/test.sh installs it)",
        modules.display()
    );
    let dir = test_dir("web-admin");
    let corpus_dir = dir.path().join("corpus");
    let corpus = generate_corpus(&corpus_dir, 1501, CorpusShape::uniform(2, 2, 2, (16, 16)));
    let admin_hash = hash_password("admin-password");
    let viewer_hash = hash_password("viewer-password");
    let users = format!(
        "[{{ name = \"admin\", password_hash = \"{admin_hash}\", role = \"admin\" }}, \
          {{ name = \"viewer\", password_hash = \"{viewer_hash}\", role = \"read_only\" }}]"
    );
    let server = Server::builder(dir.path())
        .setting("http.users", users)
        .setting("http.dicomweb_auth", "\"authenticated\"")
        // ATNA events kept in the index (no repository): admin changes
        // are among them.
        .setting("audit.enabled", true)
        // A failed send fails its item at once (no backoff to wait out).
        .setting("workqueue.kinds.move_study.max_failures", 1)
        .start();
    let storescu = dcmtk::store(server.addr(), server.ae_title(), &[&corpus_dir], &[], BOUND);
    assert!(storescu.success(), "storescu failed:\n{storescu}");

    let out_dir = dir.path().join("artifacts");
    std::fs::create_dir_all(&out_dir).expect("artifacts dir");
    let study = &corpus[0];
    let instances_of_study = corpus
        .iter()
        .filter(|i| i.study_uid == study.study_uid)
        .count();
    let request = json!({
        "base": server.http_url(),
        "admin": ["admin", "admin-password"],
        "viewer": ["viewer", "viewer-password"],
        "study_uid": study.study_uid,
        "patient_id": "PID1501-0",
        "instances": instances_of_study,
        "unreachable": { "ae": "NOWHERE", "port": down_port() },
        "self": { "ae": server.ae_title(), "port": server.addr().port() },
    });
    let request_file = dir.path().join("web-admin-request.json");
    std::fs::write(&request_file, request.to_string()).expect("write the request");
    let mut command = Command::new("python3");
    command.arg(API_SCRIPT).arg(&request_file);
    let out = dcmtk::run(command, BOUND);
    let log = || std::fs::read_to_string(dir.path().join("server.log")).unwrap_or_default();
    assert!(
        out.success(),
        "the admin API script failed:\n{out}\nserver log:\n{}",
        log()
    );
    let found: Value = out
        .text()
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no JSON from the API script:\n{out}"));
    let failed_item = found["failed_item"]
        .as_i64()
        .expect("the failed send's item");

    let pages = json!({
        "base": server.http_url(),
        "admin": ["admin", "admin-password"],
        "patient_name": "TEST^PATIENT0^SEED1501",
        "study_uid": study.study_uid,
        "failed_item": failed_item,
        "echo_device": server.ae_title(),
        "out_dir": out_dir,
        "chromium": CHROMIUM,
        "playwright": modules.join("playwright-core"),
    });
    let pages_file = dir.path().join("web-pages-request.json");
    std::fs::write(&pages_file, pages.to_string()).expect("write the request");
    let mut command = Command::new("node");
    command.arg(PAGES_SCRIPT).arg(&pages_file);
    let out = dcmtk::run(command, BOUND);
    println!("page screenshots: {}", out_dir.display());
    assert!(
        out.success(),
        "the pages script failed:\n{out}\nserver log:\n{}",
        log()
    );
    for shot in [
        "studies.png",
        "study.png",
        "devices.png",
        "work.png",
        "filesystems-tablet.png",
    ] {
        assert!(out_dir.join(shot).exists(), "no screenshot {shot}:\n{out}");
    }
    // Keep the screenshots past the temporary directory.
    let kept = std::env::temp_dir().join("imageserver-it-web-admin-screenshots");
    let _ = std::fs::create_dir_all(&kept);
    for entry in std::fs::read_dir(&out_dir).expect("artifacts").flatten() {
        let _ = std::fs::copy(entry.path(), kept.join(entry.file_name()));
    }
    println!("screenshots kept in {}", kept.display());

    // A non-browser DICOMweb client with HTTP Basic credentials (last: its
    // failure throttle locks out loopback for a minute).
    let stow = single_instance(&dir.path().join("stow.dcm"), 1502, 16, 16);
    let auth = json!({
        "base": server.http_url(),
        "admin": ["admin", "admin-password"],
        "viewer": ["viewer", "viewer-password"],
        "study_uid": study.study_uid,
        "stow": stow.path,
    });
    let auth_file = dir.path().join("dicomweb-auth-request.json");
    std::fs::write(&auth_file, auth.to_string()).expect("write the request");
    let mut command = Command::new("python3");
    command.arg(AUTH_SCRIPT).arg(&auth_file);
    let out = dcmtk::run(command, BOUND);
    assert!(
        out.success(),
        "the DICOMweb auth script failed:\n{out}\nserver log:\n{}",
        log()
    );

    // The admin changes as ATNA events (written by the audit thread: poll).
    let wanted = [
        ("110128", "http:admin"),
        ("110131", "http:admin"),
        ("110132", "http:viewer"),
    ];
    let deadline = std::time::Instant::now() + BOUND;
    loop {
        let listed = cli_ok(
            dir.path(),
            server.archive(),
            &["audit", "--action", "security-alert", "--json"],
        );
        let events: Vec<Value> = listed
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        let has = |code: &str, user: &str| {
            events.iter().any(|e| {
                let text = e.to_string();
                text.contains(&format!("\"{code}\"")) && text.contains(user)
            })
        };
        if wanted.iter().all(|(code, user)| has(code, user)) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "admin changes are not all ATNA security alerts ({wanted:?}):\n{listed}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}
