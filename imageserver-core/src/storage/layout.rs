//! The on-disk layout: the only code that turns UIDs into relative paths.
//!
//! `<partition folder>/<study date>/<study uid>/<series uid>/<sop uid>.dcm`
//! (ClearCanvas's layout). Data derived from a study's files lives in the
//! study folder too, under [`METADATA_DIR`] (`.metadata/<series uid>.json`:
//! the series metadata), so that whatever moves or deletes the study folder
//! carries it; that name is never a UID, so it is never taken for a series. Every component is validated before it gets
//! here: UIDs are [`Uid`]s (digits and dots), the partition folder is a
//! [`crate::model::FolderName`], and the date folder is checked to be eight
//! digits, so no component can be `..` or hold a separator.

use std::path::PathBuf;

use super::{InstanceKey, SeriesKey};
use crate::model::{FilesystemId, FolderName, StudyLocation, Uid};

/// Name of the folder of temporary files under each filesystem root.
pub const TEMP_DIR: &str = ".tmp";

/// Name of the identity marker file in each filesystem root (see
/// [`StorageBackend::write_marker`](super::StorageBackend::write_marker)).
pub const MARKER_FILE: &str = ".imageserver-filesystem";

/// Name of the study subfolder reserved for derived data (series metadata).
/// It starts with a dot, so it can never be a UID (a series folder).
pub const METADATA_DIR: &str = ".metadata";

/// The study folder, relative to the filesystem root.
pub fn study_dir(location: &StudyLocation) -> PathBuf {
    let mut path = PathBuf::from(location.partition_folder.as_str());
    path.push(date_component(&location.date_folder));
    path.push(location.study_uid.as_str());
    path
}

/// The instance file, relative to the filesystem root.
pub fn instance_path(key: &InstanceKey) -> PathBuf {
    let mut path = study_dir(&key.location);
    path.push(key.series_uid.as_str());
    path.push(format!("{}.dcm", key.sop_instance_uid.as_str()));
    path
}

/// The study's derived-data folder, relative to the filesystem root:
/// `<study folder>/.metadata`.
pub fn metadata_dir(location: &StudyLocation) -> PathBuf {
    let mut path = study_dir(location);
    path.push(METADATA_DIR);
    path
}

/// The metadata file of a series, relative to the filesystem root:
/// `<study folder>/.metadata/<series uid>.json`.
pub fn series_metadata_path(key: &SeriesKey) -> PathBuf {
    let mut path = metadata_dir(&key.location);
    path.push(format!("{}.json", key.series_uid.as_str()));
    path
}

/// A kept-aside duplicate of an instance, beside it in its series folder:
/// `<sop uid>.dup<variant>.dcm`.
pub fn aside_path(key: &InstanceKey, variant: u64) -> PathBuf {
    let mut path = study_dir(&key.location);
    path.push(key.series_uid.as_str());
    path.push(format!(
        "{}.dup{variant}.dcm",
        key.sop_instance_uid.as_str()
    ));
    path
}

/// The study a study folder's three components name (the inverse of
/// [`study_dir`]), on `filesystem`; `None` when they are not a partition
/// folder name (a name starting with a dot, such as [`TEMP_DIR`], never
/// is), eight digits and a UID.
pub fn study_location_of(
    filesystem: FilesystemId,
    partition_folder: &str,
    date_folder: &str,
    study_uid: &str,
) -> Option<StudyLocation> {
    if partition_folder.starts_with('.')
        || date_folder.len() != 8
        || !date_folder.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    Some(StudyLocation {
        filesystem,
        partition_folder: FolderName::parse(partition_folder).ok()?,
        date_folder: date_folder.to_string(),
        study_uid: Uid::parse(study_uid).ok()?,
    })
}

/// The date folder, or `00000000` for anything that is not eight digits
/// (defence in depth: the services only ever produce eight digits).
fn date_component(date: &str) -> &str {
    if date.len() == 8 && date.bytes().all(|b| b.is_ascii_digit()) {
        date
    } else {
        "00000000"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_paths_follow_the_layout() {
        let key = InstanceKey {
            location: StudyLocation {
                filesystem: FilesystemId(1),
                partition_folder: FolderName::parse("IMAGESERVER").unwrap(),
                date_folder: "20240131".into(),
                study_uid: Uid::parse("1.2.3").unwrap(),
            },
            series_uid: Uid::parse("1.2.3.4").unwrap(),
            sop_instance_uid: Uid::parse("1.2.3.4.5").unwrap(),
        };
        assert_eq!(
            instance_path(&key),
            PathBuf::from("IMAGESERVER/20240131/1.2.3/1.2.3.4/1.2.3.4.5.dcm")
        );
        let series = SeriesKey {
            location: key.location.clone(),
            series_uid: key.series_uid.clone(),
        };
        assert_eq!(
            series_metadata_path(&series),
            PathBuf::from("IMAGESERVER/20240131/1.2.3/.metadata/1.2.3.4.json")
        );
        assert!(Uid::parse(METADATA_DIR).is_err());
        let mut odd = key.clone();
        odd.location.date_folder = "../../x".into();
        assert_eq!(
            instance_path(&odd),
            PathBuf::from("IMAGESERVER/00000000/1.2.3/1.2.3.4/1.2.3.4.5.dcm")
        );
        assert_eq!(
            study_location_of(FilesystemId(1), "IMAGESERVER", "20240131", "1.2.3"),
            Some(key.location.clone())
        );
        for (partition, date, study) in [
            (TEMP_DIR, "20240131", "1.2.3"),
            ("IMAGESERVER", "2024013", "1.2.3"),
            ("IMAGESERVER", "2024013x", "1.2.3"),
            ("IMAGESERVER", "20240131", METADATA_DIR),
            ("IMAGE SERVER", "20240131", "1.2.3"),
        ] {
            assert_eq!(
                study_location_of(FilesystemId(1), partition, date, study),
                None,
                "{partition}/{date}/{study}"
            );
        }
    }
}
