//! What the storage-lifecycle tests (archive, migration, compression,
//! tiers, services) share: the instance files under a filesystem root,
//! where one instance is filed, a filesystem's id, a server with two tiers,
//! and storing a corpus.

use std::path::{Path, PathBuf};

use super::cli::{cli_ok, BOUND};
use super::corpus::Instance;
use super::dcmtk;
use super::files_under;
use super::server::{Server, ServerBuilder};

/// The instance files under a filesystem root (no temporary files, no
/// series metadata, no marker).
pub fn instance_files(root: &Path) -> Vec<PathBuf> {
    files_under(root)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "dcm"))
        .filter(|p| !p.components().any(|c| c.as_os_str() == ".tmp"))
        .collect()
}

/// Where instance `sop` is filed under `root`, if it is.
pub fn stored_at(root: &Path, sop: &str) -> Option<PathBuf> {
    instance_files(root).into_iter().find(|p| {
        p.file_name()
            .is_some_and(|n| n == format!("{sop}.dcm").as_str())
    })
}

/// Where instance `sop` is filed under `root` (it must be).
pub fn stored_path(root: &Path, sop: &str) -> PathBuf {
    stored_at(root, sop).unwrap_or_else(|| panic!("{sop} is not stored under {}", root.display()))
}

/// The filesystem id `filesystem list --json` gives `path`.
pub fn filesystem_id(root: &Path, server: &Server, path: &Path) -> i64 {
    let out = cli_ok(root, server.archive(), &["filesystem", "list", "--json"]);
    let rows: Vec<serde_json::Value> = serde_json::from_str(&out).expect("list --json");
    rows.iter()
        .find(|r| r["path"] == path.display().to_string().as_str())
        .and_then(|r| r["id"].as_i64())
        .unwrap_or_else(|| panic!("{} not listed: {rows:#?}", path.display()))
}

/// A server builder with two filesystems of 1 GiB quota, tier 1 at
/// `<root>/data/t1` and tier 2 at `<root>/data/t2`; returns the two paths.
pub fn two_tiers(root: &Path) -> (ServerBuilder, PathBuf, PathBuf) {
    let data = root.join("data");
    let (t1, t2) = (data.join("t1"), data.join("t2"));
    let builder = Server::builder(root).setting(
        "filesystems",
        format!(
            "[{{ path = {:?}, tier = 1, capacity_mb = 1024 }}, {{ path = {:?}, tier = 2, capacity_mb = 1024 }}]",
            t1.display().to_string(),
            t2.display().to_string()
        ),
    );
    (builder, t1, t2)
}

/// Stores `instances` in one storescu association; every one must be
/// acknowledged.
pub fn store_all(server: &Server, instances: &[Instance]) {
    let paths: Vec<&Path> = instances.iter().map(|i| i.path.as_path()).collect();
    let out = dcmtk::store(server.addr(), server.ae_title(), &paths, &[], BOUND);
    assert_eq!(
        dcmtk::acknowledged_files(&out.text()).len(),
        instances.len(),
        "{out}"
    );
}
