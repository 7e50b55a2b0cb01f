//! The `imageserver` operator commands against a test server's archive
//! (its data directory, index and config file), bounded in time, and the
//! work queue as `workqueue list|show --json` print it.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::dcmtk::{self, ToolOutput};
use super::server::{Archive, Server, BINARY};

/// The longest any command or awaited outcome may take.
pub const BOUND: Duration = Duration::from_secs(120);

/// `imageserver ARGS --data … [--db …] [--config ROOT/imageserver.toml]`.
pub fn command(root: &Path, archive: &Archive, args: &[&str]) -> Command {
    let mut command = Command::new(BINARY);
    command.args(args).arg("--data").arg(archive.data_dir());
    command.args(archive.db_args());
    let config = root.join("imageserver.toml");
    if config.is_file() {
        command.arg("--config").arg(config);
    }
    command
        .env("IMAGESERVER_LOG", "warn")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null());
    command
}

/// Runs a command to completion (killed after [`BOUND`]).
pub fn cli(root: &Path, archive: &Archive, args: &[&str]) -> ToolOutput {
    dcmtk::run(command(root, archive, args), BOUND)
}

/// Runs a command that must succeed; returns its stdout.
pub fn cli_ok(root: &Path, archive: &Archive, args: &[&str]) -> String {
    let out = cli(root, archive, args);
    assert!(out.success(), "imageserver {args:?}:\n{out}");
    out.stdout
}

/// Stores every file under `dir` with storescu; checks that `n` arrived.
pub fn load(server: &Server, dir: &Path, n: usize) {
    let storescu = dcmtk::store(server.addr(), server.ae_title(), &[dir], &[], BOUND);
    assert!(storescu.success(), "storescu failed:\n{storescu}");
    assert_eq!(dcmtk::acknowledged_files(&storescu.text()).len(), n);
}

/// The work items of a kind (`workqueue list --json`), by id.
pub fn work_items(root: &Path, archive: &Archive, kind: &str) -> Vec<serde_json::Value> {
    let mut found: Vec<serde_json::Value> = cli_ok(
        root,
        archive,
        &["workqueue", "list", "--type", kind, "--json"],
    )
    .lines()
    .map(|l| serde_json::from_str(l).expect("a JSON line"))
    .collect();
    found.sort_by_key(|item| item["id"].as_i64());
    found
}

/// One item (as [`work_items`] lists it) with its instances
/// (`workqueue show ID --json`).
pub fn work_item(root: &Path, archive: &Archive, item: &serde_json::Value) -> serde_json::Value {
    let id = item["id"].to_string();
    serde_json::from_str(&cli_ok(
        root,
        archive,
        &["workqueue", "show", &id, "--json"],
    ))
    .expect("one JSON object")
}

/// Waits until `done` holds for the items of `kind`; returns them.
pub fn wait_work_items(
    root: &Path,
    archive: &Archive,
    kind: &str,
    what: &str,
    done: impl Fn(&[serde_json::Value]) -> bool,
) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + BOUND;
    loop {
        let found = work_items(root, archive, kind);
        if done(&found) {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {kind} items are {found:#?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Asserts that `output` holds exactly one line starting with `prefix` and
/// that it is `expected` (so "rejected 1" cannot pass for "rejected 10").
pub fn assert_line(output: &str, prefix: &str, expected: &str) {
    let lines: Vec<&str> = output
        .lines()
        .map(str::trim)
        .filter(|line| line.starts_with(prefix))
        .collect();
    assert_eq!(lines, [expected], "lines starting {prefix:?} in:\n{output}");
}

/// Asserts `imageserver import`'s summary line: the exact counts.
pub fn assert_import_summary(output: &str, imported: usize, present: usize, rejected: usize) {
    assert_line(
        output,
        "imported ",
        &format!("imported {imported}, already present {present}, rejected {rejected}"),
    );
}

/// Waits (bounded by [`BOUND`]) for the server log under `root` to contain
/// `text` (a fault-injection pause, a step logged).
pub fn wait_log(root: &Path, text: &str) {
    let deadline = Instant::now() + BOUND;
    loop {
        let log = std::fs::read_to_string(root.join("server.log")).unwrap_or_default();
        if log.contains(text) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the log never said {text:?}:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Ends a fault-injection pause (the file `IMAGESERVER_FAULT_RESUME_FILE`
/// names) when dropped, also when the test fails.
pub struct Resume(pub std::path::PathBuf);

impl Drop for Resume {
    fn drop(&mut self) {
        let _ = std::fs::write(&self.0, b"");
    }
}
