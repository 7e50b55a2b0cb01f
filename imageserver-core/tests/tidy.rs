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
            "crate::db",
            "crate::dicom",
            "crate::services",
            "crate::storage",
            "crate::workqueue",
        ],
        "model is the shared vocabulary: it depends on nothing of ours",
    ),
    (
        "db/",
        &[
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
        "services/",
        &[
            "crate::scp",
            "crate::dicom::dimse",
            "crate::dicom::assoc",
            "rusqlite",
            "sqlx",
        ],
        "use cases speak no DIMSE and no SQL, and never call the handlers above them",
    ),
    (
        "services/studies",
        &["std::fs"],
        "study operations reach files only through the storage seam",
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
];

/// Concrete backends: named only by the composition root and inside their
/// own modules.
const CONCRETE: &[&str] = &["SqliteIndex", "PgIndex", "FsStorage"];
const CONCRETE_ALLOWED: &[&str] = &["server.rs", "db/", "storage/fs.rs", "storage/mod.rs"];

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

/// The checked lines of a file: code before any `#[cfg(test)]`, comments
/// dropped.
fn code_lines(text: &str) -> Vec<(usize, &str)> {
    let mut lines = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("#[cfg(test)]") {
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
