//! The C-FIND corpus: a few patients with known names (one Latin-1 name
//! written in ISO_IR 100, one outside Latin-1 written in ISO_IR 192, names
//! differing only in case), dates, times, modalities and SOP classes, so
//! that every query's answer is known exactly. Also a bulk corpus (one
//! series of many instances) for cancel and result caps.
//!
//! Small Part 10 files (Explicit VR Little Endian, 2×2 pixels) written with
//! dicom-object: it encodes each file's text in its Specific Character Set.

use std::path::{Path, PathBuf};

use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::meta::FileMetaTableBuilder;
use dicom_object::InMemDicomObject;

/// CT Image Storage.
pub const CT: &str = uids::CT_IMAGE_STORAGE;
/// MR Image Storage.
pub const MR: &str = uids::MR_IMAGE_STORAGE;
/// Secondary Capture Image Storage.
pub const SC: &str = uids::SECONDARY_CAPTURE_IMAGE_STORAGE;

/// A patient and its studies.
#[derive(Debug, Clone)]
pub struct Patient {
    /// (0010,0020).
    pub id: String,
    /// (0010,0010), as text (encoded in `charset` in the files).
    pub name: String,
    /// (0008,0005) of its files.
    pub charset: &'static str,
    /// (0010,0030).
    pub birth_date: &'static str,
    /// (0010,0040).
    pub sex: &'static str,
    /// Its studies.
    pub studies: Vec<Study>,
}

/// A study and its series.
#[derive(Debug, Clone)]
pub struct Study {
    /// (0020,000D).
    pub uid: String,
    /// (0008,0020).
    pub date: &'static str,
    /// (0008,0030).
    pub time: &'static str,
    /// (0008,0050).
    pub accession: &'static str,
    /// (0008,1030).
    pub description: &'static str,
    /// (0008,0090).
    pub referring: &'static str,
    /// Its series.
    pub series: Vec<Series>,
}

/// A series and its instances.
#[derive(Debug, Clone)]
pub struct Series {
    /// (0020,000E).
    pub uid: String,
    /// (0008,0060).
    pub modality: &'static str,
    /// (0020,0011).
    pub number: i32,
    /// (0008,0016) of its instances.
    pub sop_class: &'static str,
    /// (0008,0018) of its instances; instance numbers are 1, 2, …
    pub instances: Vec<String>,
}

impl Patient {
    /// Every series of the patient.
    pub fn series(&self) -> impl Iterator<Item = &Series> {
        self.studies.iter().flat_map(|s| s.series.iter())
    }

    /// Number of instances of the patient.
    pub fn n_instances(&self) -> usize {
        self.series().map(|s| s.instances.len()).sum()
    }
}

impl Study {
    /// Number of instances of the study.
    pub fn n_instances(&self) -> usize {
        self.series.iter().map(|s| s.instances.len()).sum()
    }

    /// ModalitiesInStudy as the index keeps it: distinct, sorted, `\`.
    pub fn modalities(&self) -> String {
        let mut modalities: Vec<&str> = self.series.iter().map(|s| s.modality).collect();
        modalities.sort();
        modalities.dedup();
        modalities.join("\\")
    }

    /// SOPClassesInStudy: distinct, sorted, `\`.
    pub fn sop_classes(&self) -> String {
        let mut classes: Vec<&str> = self.series.iter().map(|s| s.sop_class).collect();
        classes.sort();
        classes.dedup();
        classes.join("\\")
    }
}

/// A series of `count` instances, its UIDs from `next`.
fn series(
    modality: &'static str,
    number: i32,
    sop_class: &'static str,
    count: usize,
    next: &mut dyn FnMut() -> String,
) -> Series {
    Series {
        uid: next(),
        modality,
        number,
        sop_class,
        instances: (0..count).map(|_| next()).collect(),
    }
}

/// `2.25.<base><n>`: deterministic, valid and distinct per `base`.
fn uid(base: u64, n: u64) -> String {
    format!("2.25.{base}{n:05}")
}

/// The C-FIND corpus (UIDs under `2.25.<base>…`):
///
/// | patient | name | charset | studies (date time: series modality×n) |
/// |---|---|---|---|
/// | FIND-P1 | Doe^John | ISO_IR 100 | 20200115 083000: CT×3, OT(SC)×1; 20210610 141500: MR×2 |
/// | FIND-P2 | Müller^Hans | ISO_IR 100 | 20211231 235959: CT×2 |
/// | FIND-P3 | Żółć^Jan | ISO_IR 192 | 20220301 120000.5: MR×1, CT×1 |
/// | FIND-P4 | doe^jane | (none) | 20190101 0700: US×1 |
pub fn patients(base: u64) -> Vec<Patient> {
    let mut n = 0;
    let mut next = || {
        n += 1;
        uid(base, n)
    };
    let p1_s1 = Study {
        uid: next(),
        date: "20200115",
        time: "083000",
        accession: "ACC-1",
        description: "Chest CT",
        referring: "Ref^One",
        series: vec![
            series("CT", 1, CT, 3, &mut next),
            series("OT", 2, SC, 1, &mut next),
        ],
    };
    let p1_s2 = Study {
        uid: next(),
        date: "20210610",
        time: "141500",
        accession: "ACC-2",
        description: "Head MR",
        referring: "Ref^Two",
        series: vec![series("MR", 1, MR, 2, &mut next)],
    };
    let p2_s1 = Study {
        uid: next(),
        date: "20211231",
        time: "235959",
        accession: "ACC-3",
        description: "Abdomen CT",
        referring: "",
        series: vec![series("CT", 1, CT, 2, &mut next)],
    };
    let p3_s1 = Study {
        uid: next(),
        date: "20220301",
        time: "120000.5",
        accession: "BCC-4",
        description: "Knee",
        referring: "",
        series: vec![
            series("MR", 1, MR, 1, &mut next),
            series("CT", 2, CT, 1, &mut next),
        ],
    };
    let p4_s1 = Study {
        uid: next(),
        date: "20190101",
        time: "0700",
        accession: "ACC-5",
        description: "Neck",
        referring: "",
        series: vec![series("US", 1, SC, 1, &mut next)],
    };
    vec![
        Patient {
            id: "FIND-P1".into(),
            name: "Doe^John".into(),
            charset: "ISO_IR 100",
            birth_date: "19700101",
            sex: "M",
            studies: vec![p1_s1, p1_s2],
        },
        Patient {
            id: "FIND-P2".into(),
            name: "Müller^Hans".into(),
            charset: "ISO_IR 100",
            birth_date: "19851224",
            sex: "M",
            studies: vec![p2_s1],
        },
        Patient {
            id: "FIND-P3".into(),
            name: "Żółć^Jan".into(),
            charset: "ISO_IR 192",
            birth_date: "19900301",
            sex: "M",
            studies: vec![p3_s1],
        },
        Patient {
            id: "FIND-P4".into(),
            name: "doe^jane".into(),
            charset: "",
            birth_date: "19950505",
            sex: "F",
            studies: vec![p4_s1],
        },
    ]
}

/// One patient with one study of one CT series of `n` instances.
pub fn bulk(base: u64, n: usize) -> Vec<Patient> {
    vec![Patient {
        id: "BULK-1".into(),
        name: "Bulk^Patient".into(),
        charset: "",
        birth_date: "20000101",
        sex: "O",
        studies: vec![Study {
            uid: uid(base, 0),
            date: "20230101",
            time: "120000",
            accession: "BULK",
            description: "Bulk",
            referring: "",
            series: vec![Series {
                uid: uid(base, 1),
                modality: "CT",
                number: 1,
                sop_class: CT,
                instances: (0..n as u64).map(|i| uid(base, 10 + i)).collect(),
            }],
        }],
    }]
}

/// Writes every instance of `patients` under `dir` and returns the paths.
pub fn write(dir: &Path, patients: &[Patient]) -> Vec<PathBuf> {
    std::fs::create_dir_all(dir).expect("create the corpus folder");
    let mut paths = Vec::new();
    for patient in patients {
        for study in &patient.studies {
            for series in &study.series {
                for (idx, sop) in series.instances.iter().enumerate() {
                    let path = dir.join(format!("{sop}.dcm"));
                    write_instance(&path, patient, study, series, sop, idx as i32 + 1);
                    paths.push(path);
                }
            }
        }
    }
    paths
}

fn write_instance(
    path: &Path,
    patient: &Patient,
    study: &Study,
    series: &Series,
    sop: &str,
    number: i32,
) {
    let text = |tag, vr, value: &str| {
        let value = if value.is_empty() {
            PrimitiveValue::Empty
        } else {
            PrimitiveValue::from(value)
        };
        DataElement::new(tag, vr, value)
    };
    let us = |tag, value: u16| DataElement::new(tag, VR::US, PrimitiveValue::from(value));
    let mut object = InMemDicomObject::from_element_iter([
        text(tags::SOP_CLASS_UID, VR::UI, series.sop_class),
        text(tags::SOP_INSTANCE_UID, VR::UI, sop),
        text(tags::STUDY_DATE, VR::DA, study.date),
        text(tags::SERIES_DATE, VR::DA, study.date),
        text(tags::STUDY_TIME, VR::TM, study.time),
        text(tags::ACCESSION_NUMBER, VR::SH, study.accession),
        text(tags::MODALITY, VR::CS, series.modality),
        text(tags::REFERRING_PHYSICIAN_NAME, VR::PN, study.referring),
        text(tags::STUDY_DESCRIPTION, VR::LO, study.description),
        text(tags::PATIENT_NAME, VR::PN, &patient.name),
        text(tags::PATIENT_ID, VR::LO, &patient.id),
        text(tags::PATIENT_BIRTH_DATE, VR::DA, patient.birth_date),
        text(tags::PATIENT_SEX, VR::CS, patient.sex),
        text(tags::STUDY_INSTANCE_UID, VR::UI, &study.uid),
        text(tags::SERIES_INSTANCE_UID, VR::UI, &series.uid),
        text(tags::STUDY_ID, VR::SH, "1"),
        text(tags::SERIES_NUMBER, VR::IS, &series.number.to_string()),
        text(tags::INSTANCE_NUMBER, VR::IS, &number.to_string()),
        us(tags::SAMPLES_PER_PIXEL, 1),
        text(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "MONOCHROME2"),
        us(tags::ROWS, 2),
        us(tags::COLUMNS, 2),
        us(tags::BITS_ALLOCATED, 16),
        us(tags::BITS_STORED, 12),
        us(tags::HIGH_BIT, 11),
        us(tags::PIXEL_REPRESENTATION, 0),
        DataElement::new(
            tags::PIXEL_DATA,
            VR::OW,
            PrimitiveValue::U16([1u16, 2, 3, 4].as_slice().into()),
        ),
    ]);
    if !patient.charset.is_empty() {
        object.put(text(tags::SPECIFIC_CHARACTER_SET, VR::CS, patient.charset));
    }
    object
        .with_meta(FileMetaTableBuilder::new().transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN))
        .expect("build the file meta group")
        .write_to_file(path)
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}
