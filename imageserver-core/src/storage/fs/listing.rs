//! Reading study and metadata folders back: a study folder's series
//! folders, instances, set-aside copies and series metadata, and the sorted
//! folders of the levels above. Every name is parsed back into a [`Uid`]
//! before it is used; anything else is a stray.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::model::Uid;
use crate::storage::{layout, StoredObject, StudyObject};

/// Every object of a study folder (none when the folder does not exist),
/// sorted by path. Every name is parsed back into a [`Uid`] before it is
/// used; anything else is a stray.
pub(super) fn list_study_folder(folder: &Path) -> io::Result<Vec<StudyObject>> {
    let mut entries: Vec<(PathBuf, StudyObject)> = Vec::new();
    let series_dirs = match fs::read_dir(folder) {
        Ok(dirs) => dirs,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    for series_dir in series_dirs {
        let series_dir = series_dir?;
        let path = series_dir.path();
        if !series_dir.file_type()?.is_dir() {
            entries.push((path.clone(), StudyObject::Stray(path)));
            continue;
        }
        if series_dir.file_name() == layout::METADATA_DIR {
            list_metadata_folder(&path, &mut entries)?;
            continue;
        }
        let Some(series_uid) = uid_of_name(&path, "") else {
            entries.push((path.clone(), StudyObject::Stray(path)));
            continue;
        };
        for file in fs::read_dir(&path)? {
            let file = file?;
            let file_path = file.path();
            let meta = file.metadata()?;
            if !meta.is_file() {
                entries.push((file_path.clone(), StudyObject::Stray(file_path)));
                continue;
            }
            let name = file_path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("")
                .to_string();
            let object = |sop: &str| {
                Uid::parse(sop).ok().map(|sop_instance_uid| StoredObject {
                    series_uid: series_uid.clone(),
                    sop_instance_uid,
                    size: meta.len(),
                    modified_ms: modified_ms(&meta),
                })
            };
            let parsed = match name.strip_suffix(".dcm") {
                Some(stem) => match stem.rsplit_once(".dup") {
                    Some((sop, variant)) if variant.bytes().all(|b| b.is_ascii_digit()) => {
                        match (object(sop), variant.parse::<u64>()) {
                            (Some(file), Ok(variant)) => Some(StudyObject::Aside(file, variant)),
                            _ => None,
                        }
                    }
                    _ => object(stem).map(StudyObject::Instance),
                },
                None => None,
            };
            let parsed = parsed.unwrap_or_else(|| StudyObject::Stray(file_path.clone()));
            entries.push((file_path, parsed));
        }
    }
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(entries.into_iter().map(|(_, object)| object).collect())
}

/// The entries of a study's metadata folder.
fn list_metadata_folder(
    folder: &Path,
    entries: &mut Vec<(PathBuf, StudyObject)>,
) -> io::Result<()> {
    for file in fs::read_dir(folder)? {
        let file = file?;
        let path = file.path();
        let meta = file.metadata()?;
        match uid_of_name(&path, ".json") {
            Some(series_uid) if meta.is_file() => {
                let object = StudyObject::Metadata {
                    series_uid,
                    modified_ms: modified_ms(&meta),
                };
                entries.push((path, object));
            }
            _ => entries.push((path.clone(), StudyObject::Stray(path))),
        }
    }
    Ok(())
}

/// The folders in `dir` with UTF-8 names, sorted by name; none when `dir`
/// is missing.
pub(super) fn sorted_folders(dir: &Path) -> io::Result<Vec<(String, PathBuf)>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut folders = Vec::new();
    for entry in entries {
        let entry = entry?;
        if !entry.file_type()?.is_dir() {
            continue;
        }
        if let Ok(name) = entry.file_name().into_string() {
            folders.push((name, entry.path()));
        }
    }
    folders.sort();
    Ok(folders)
}

/// The UID a file or folder is named after (with `suffix` removed).
fn uid_of_name(path: &Path, suffix: &str) -> Option<Uid> {
    path.file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_suffix(suffix))
        .and_then(|n| Uid::parse(n).ok())
}

fn modified_ms(meta: &fs::Metadata) -> i64 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
