//! Tidy: the dependency directions ARCHITECTURE.md promises, checked on
//! the source text so that a new forbidden edge fails the build's tests
//! instead of waiting for a reviewer (rust-analyzer runs its tidy checks the
//! same way).
//!
//! Comments and test code (`tests.rs`, the index's `conformance.rs`
//! suites, anything after a `#[cfg(test)]` line) are not checked: tests may
//! name concrete backends. The storage conformance suite is library code
//! (embedders run it) and is checked like the rest.

use std::path::{Path, PathBuf};

/// A module (path prefix under `src/`) and the names its code must not use.
const RULES: &[(&str, &[&str], &str)] = &[
    (
        "model/",
        &[
            "crate::web",
            "crate::db",
            "crate::dicom",
            "crate::services",
            "crate::storage",
            "crate::workqueue",
            "crate::processors",
        ],
        "model is the shared vocabulary: it depends on nothing of ours",
    ),
    (
        "db/",
        &[
            "crate::web",
            "crate::dicom",
            "crate::services",
            "crate::storage",
            "dicom_ul",
            "dicom_parser",
        ],
        "the index speaks model values: no DICOM wire, no files",
    ),
    (
        "storage/",
        &[
            "crate::web",
            "crate::db",
            "crate::dicom",
            "crate::services",
            "rusqlite",
            "sqlx",
        ],
        "storage never knows the index",
    ),
    (
        "workqueue/",
        &[
            "crate::dicom",
            "crate::services",
            "crate::storage",
            "crate::processors",
            "dicom_",
        ],
        "the engine knows work kinds, never DICOM, files or use cases",
    ),
    (
        "dicom/",
        &[
            "crate::web",
            "rusqlite",
            "sqlx",
            "std::fs",
            "crate::config",
            "crate::db",
            "crate::processors",
            "crate::scp",
            "crate::server",
            "crate::services",
            "crate::storage",
            "crate::workqueue",
        ],
        "the DICOM toolkit stands below the services: model and dicom-rs only",
    ),
    (
        "dicom/part10/",
        &[
            "crate::dicom::assoc",
            "crate::dicom::link",
            "crate::dicom::pdu",
            "crate::dicom::dimse",
            "crate::dicom::scu",
            "crate::dicom::query_keys",
            "crate::rules",
            "dicom_ul",
        ],
        "part10 is files only: model and the dicom-rs file crates, no association",
    ),
    (
        "scp/",
        &[
            "rusqlite",
            "sqlx",
            "std::fs",
            "crate::db",
            "crate::storage",
            "crate::processors",
            "crate::server",
        ],
        "DICOM handlers call services: no index, no paths",
    ),
    (
        "web/",
        &[
            "rusqlite",
            "sqlx",
            "std::fs",
            "crate::db",
            "crate::storage",
            "crate::processors",
            "crate::server",
            "crate::workqueue",
            "crate::dicom::assoc",
            "crate::dicom::link",
            "crate::scp::find",
            "crate::scp::retrieve",
            "crate::scp::Dispatcher",
        ],
        "the HTTP handlers call services, as the DICOM ones do: no index, no paths \
         (C-STORE's status map, scp::store::status_of, is the one thing they share)",
    ),
    (
        "services/",
        &[
            "crate::web",
            "crate::scp",
            "crate::dicom::dimse",
            "crate::dicom::assoc",
            "crate::processors",
            "rusqlite",
            "sqlx",
        ],
        "use cases speak no DIMSE and no SQL, and never call the handlers or the processors above them \
         (what they enqueue is the model's StudyRequest)",
    ),
    (
        "services/studies",
        &["std::fs"],
        "study operations reach files only through the storage seam",
    ),
    (
        "cluster/",
        &[
            "crate::dicom",
            "crate::scp",
            "crate::services",
            "crate::storage",
            "crate::processors",
            "crate::workqueue",
            "rusqlite",
            "sqlx",
        ],
        "the cluster knows the index's node table: no DICOM, files or use cases",
    ),
    (
        "archive/",
        &[
            "crate::web",
            "crate::db",
            "crate::dicom",
            "crate::scp",
            "crate::services",
            "crate::storage",
            "crate::processors",
            "crate::workqueue",
            "rusqlite",
            "sqlx",
        ],
        "the archive's packs are files only: the index and the studies are the caller's",
    ),
    (
        "scheduler/",
        &[
            "crate::web",
            "crate::scp",
            "crate::dicom",
            "rusqlite",
            "sqlx",
        ],
        "scheduled services call services, the index's traits and the work queue: no DICOM wire, no SQL",
    ),
    (
        "audit/",
        &[
            "crate::scp",
            "crate::dicom",
            "crate::services",
            "crate::storage",
            "crate::server",
            "crate::processors",
            "rusqlite",
            "sqlx",
        ],
        "the audit trail is told events: it records them in the index and sends them, nothing more",
    ),
    (
        "tiering/",
        &[
            "crate::dicom",
            "crate::scp",
            "crate::services",
            "crate::processors",
            "rusqlite",
            "sqlx",
            "std::fs",
        ],
        "tiering works through the seams: the index's traits and the storage backend",
    ),
    (
        "rules/",
        &[
            "crate::dicom",
            "crate::storage",
            "crate::workqueue",
            "rusqlite",
            "sqlx",
        ],
        "rules are pure decisions over facts",
    ),
    (
        "fault.rs",
        &[
            "crate::",
            "rusqlite",
            "sqlx",
        ],
        "fault points know nothing of ours: any module may pass one",
    ),
    (
        "tls.rs",
        &[
            "crate::db",
            "crate::services",
            "crate::scp",
            "crate::server",
            "crate::storage",
            "crate::web",
            "crate::workqueue",
            "rusqlite",
            "sqlx",
        ],
        "TLS configuration is PEM files to rustls, for whoever listens or connects",
    ),
];

/// Concrete backends: named only by the composition root and inside their
/// own modules.
const CONCRETE: &[&str] = &["SqliteIndex", "PgIndex", "FsStorage"];
const CONCRETE_ALLOWED: &[&str] = &[
    "server.rs",
    "db/",
    "storage/fs.rs",
    "storage/fs/",
    "storage/mod.rs",
];

fn source_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            source_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The checked lines of a file: code before any `#[cfg(test)]` (or
/// `#[cfg(all(test, …))]`, a test module of one feature), comments dropped.
fn code_lines(text: &str) -> Vec<(usize, &str)> {
    let mut lines = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("#[cfg(test)]") || trimmed.starts_with("#[cfg(all(test,") {
            break;
        }
        if trimmed.starts_with("//") {
            continue;
        }
        let code = line.split("//").next().unwrap_or(line);
        lines.push((n + 1, code));
    }
    lines
}

/// The module path of a source file under `src/` (`dicom/link.rs` →
/// `crate::dicom::link`, `dicom/mod.rs` → `crate::dicom`).
fn module_path(relative: &str) -> Vec<String> {
    let mut path = vec!["crate".to_string()];
    let stem = relative.strip_suffix(".rs").unwrap_or(relative);
    for part in stem.split('/') {
        if part != "mod" && part != "lib" {
            path.push(part.to_string());
        }
    }
    path
}

/// Expands one `use` tree (`a::{b, c::{d, e}}`) into full paths.
fn expand_use(tree: &str, out: &mut Vec<String>) {
    let tree = tree.trim();
    let Some(open) = tree.find('{') else {
        if !tree.is_empty() {
            out.push(tree.split(" as ").next().unwrap_or(tree).trim().to_string());
        }
        return;
    };
    let prefix = tree[..open].trim_end_matches("::").trim();
    let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
    // Split the group at top-level commas.
    let (mut depth, mut start) = (0, 0);
    let mut parts = Vec::new();
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&inner[start..]);
    for part in parts {
        let part = part.trim();
        if part.is_empty() {
            continue;
        }
        let name = part.split(" as ").next().unwrap_or(part).trim();
        let joined = if name == "self" {
            prefix.to_string()
        } else {
            format!("{prefix}::{part}")
        };
        expand_use(&joined, out);
    }
}

/// Every path the `use` declarations of `lines` import, grouped imports
/// expanded and `self::`/`super::` resolved against `module`, with the
/// line each declaration starts on.
fn use_paths(lines: &[(usize, &str)], module: &[String]) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (n, code) in lines {
        let trimmed = code.trim();
        if current.is_none() {
            let declaration = trimmed
                .strip_prefix("pub(crate) use ")
                .or_else(|| trimmed.strip_prefix("pub(super) use "))
                .or_else(|| trimmed.strip_prefix("pub use "))
                .or_else(|| trimmed.strip_prefix("use "));
            if let Some(rest) = declaration {
                current = Some((*n, rest.to_string()));
            }
        } else if let Some((_, text)) = current.as_mut() {
            text.push(' ');
            text.push_str(trimmed);
        }
        if let Some((start, text)) = current.take() {
            if !text.contains(';') {
                current = Some((start, text));
                continue;
            }
            let tree = text.split(';').next().unwrap_or("");
            let mut paths = Vec::new();
            expand_use(tree, &mut paths);
            for path in paths {
                out.push((start, resolve(&path, module)));
            }
        }
    }
    out
}

/// `self::x` and `super::x` as paths from the crate root.
fn resolve(path: &str, module: &[String]) -> String {
    let mut base: Vec<String> = module.to_vec();
    let mut rest = path;
    let mut relative = false;
    loop {
        if let Some(r) = rest.strip_prefix("super::") {
            base.pop();
            rest = r;
            relative = true;
        } else if let Some(r) = rest.strip_prefix("self::") {
            rest = r;
            relative = true;
        } else {
            break;
        }
    }
    if relative {
        format!("{}::{rest}", base.join("::"))
    } else {
        rest.to_string()
    }
}

#[test]
fn use_trees_are_expanded_and_resolved() {
    let module = module_path("dicom/query_keys/matching.rs");
    assert_eq!(module.join("::"), "crate::dicom::query_keys::matching");
    let code = [
        (1, "use crate::{db, services::{find::Find, send}};"),
        (2, "use super::super::scp::Link;"),
        (3, "pub(crate) use self::inner::{self as alias, Thing};"),
        (4, "use crate::model::{"),
        (5, "    error_chain,"),
        (6, "    Uid,"),
        (7, "};"),
    ];
    let paths: Vec<(usize, String)> = use_paths(&code, &module);
    let got: Vec<String> = paths.iter().map(|(_, p)| p.clone()).collect();
    assert_eq!(
        got,
        [
            "crate::db",
            "crate::services::find::Find",
            "crate::services::send",
            "crate::dicom::scp::Link",
            "crate::dicom::query_keys::matching::inner",
            "crate::dicom::query_keys::matching::inner::Thing",
            "crate::model::error_chain",
            "crate::model::Uid",
        ]
    );
    assert_eq!(paths[6].0, 4, "a declaration is reported on its first line");
}

#[test]
fn dependency_directions_hold() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    source_files(&src, &mut files);
    assert!(files.len() > 20, "found only {} source files", files.len());
    let mut broken = Vec::new();
    for path in &files {
        let relative = path
            .strip_prefix(&src)
            .expect("under src")
            .to_string_lossy()
            .replace('\\', "/");
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let test_code = name == "tests.rs"
            || (name == "conformance.rs" && relative != "storage/conformance.rs");
        if test_code {
            continue;
        }
        let text = std::fs::read_to_string(path).expect("read a source file");
        let lines = code_lines(&text);
        // Grouped and relative imports (`use crate::{db, …}`, `super::`)
        // are expanded to full paths and checked as well as the text.
        let imports = use_paths(&lines, &module_path(&relative));
        for (prefix, forbidden, why) in RULES {
            if !relative.starts_with(prefix) {
                continue;
            }
            for (n, code) in &lines {
                for name in *forbidden {
                    if code.contains(name) {
                        broken.push(format!("{relative}:{n}: uses `{name}` ({why})"));
                    }
                }
            }
            for (n, import) in &imports {
                for name in *forbidden {
                    let edge = import == name || import.starts_with(&format!("{name}::"));
                    if edge && !lines.iter().any(|(m, code)| m == n && code.contains(name)) {
                        broken.push(format!("{relative}:{n}: imports `{import}` ({why})"));
                    }
                }
            }
        }
        if !CONCRETE_ALLOWED
            .iter()
            .any(|allowed| relative.starts_with(allowed))
        {
            for (n, code) in &lines {
                for name in CONCRETE {
                    if code.contains(name) {
                        broken.push(format!(
                            "{relative}:{n}: names the concrete backend `{name}` (only the \
                             composition root, server.rs, may)"
                        ));
                    }
                }
            }
        }
    }
    assert!(broken.is_empty(), "forbidden edges:\n{}", broken.join("\n"));
}
