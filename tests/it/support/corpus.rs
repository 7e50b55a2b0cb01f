//! Deterministic CT-like test instances, written as Part 10 files.
//!
//! The header is built with dicom-object (Explicit VR Little Endian, a proper
//! file meta group); the 16-bit pixel data, always the last element, is
//! streamed after it so that a 200 MiB instance never sits in memory.
//! Everything (UIDs, names, pixels) follows from a seed.

use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::meta::FileMetaTableBuilder;
use dicom_object::InMemDicomObject;

/// The SOP class of every generated instance.
pub const CT_IMAGE_STORAGE: &str = uids::CT_IMAGE_STORAGE;
/// The transfer syntax every generated instance is written in.
pub const EXPLICIT_VR_LITTLE_ENDIAN: &str = uids::EXPLICIT_VR_LITTLE_ENDIAN;

/// A small, seedable pseudo-random generator (SplitMix64).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator fully determined by `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x5DEE_CE66_D1CE_4E5B)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A fresh UID under the `2.25` root (a UUID-style decimal).
    pub fn uid(&mut self) -> String {
        let value = (u128::from(self.next_u64()) << 64) | u128::from(self.next_u64());
        // `max(1)`: a component of a single zero is legal, but keep it boring.
        format!("2.25.{}", value.max(1))
    }
}

/// What to generate for one instance.
#[derive(Debug, Clone)]
pub struct InstanceSpec {
    /// Seeds the pixel values.
    pub pixel_seed: u64,
    /// (0010,0020).
    pub patient_id: String,
    /// (0010,0010).
    pub patient_name: String,
    /// (0008,0020), `YYYYMMDD`.
    pub study_date: String,
    /// (0020,000D).
    pub study_uid: String,
    /// (0020,000E).
    pub series_uid: String,
    /// (0008,0018).
    pub sop_instance_uid: String,
    /// (0020,0011).
    pub series_number: i32,
    /// (0020,0013).
    pub instance_number: i32,
    /// (0028,0010).
    pub rows: u16,
    /// (0028,0011).
    pub columns: u16,
}

/// A generated instance on disk.
#[derive(Debug, Clone)]
pub struct Instance {
    /// The Part 10 file.
    pub path: PathBuf,
    /// Its study.
    pub study_uid: String,
    /// Its series.
    pub series_uid: String,
    /// Its SOP Instance UID.
    pub sop_instance_uid: String,
    /// Its study date (`YYYYMMDD`).
    pub study_date: String,
    /// Size of the whole file in bytes.
    pub file_size: u64,
}

/// The shape of a generated corpus.
#[derive(Debug, Clone, Copy)]
pub struct CorpusShape {
    /// Number of studies (one patient each).
    pub studies: usize,
    /// Series per study.
    pub series_per_study: usize,
    /// Instances per series.
    pub instances_per_series: usize,
    /// Image size of even-numbered series: (rows, columns).
    pub small: (u16, u16),
    /// Image size of odd-numbered series.
    pub large: (u16, u16),
}

impl CorpusShape {
    /// `studies × series × instances` images, all `rows × columns`.
    pub fn uniform(
        studies: usize,
        series_per_study: usize,
        instances_per_series: usize,
        size: (u16, u16),
    ) -> CorpusShape {
        CorpusShape {
            studies,
            series_per_study,
            instances_per_series,
            small: size,
            large: size,
        }
    }

    /// Total number of instances.
    pub fn n_instances(&self) -> usize {
        self.studies * self.series_per_study * self.instances_per_series
    }
}

/// Writes a corpus under `dir` (one folder per study), deterministic from
/// `seed`, and returns the instances in sending order.
pub fn generate_corpus(dir: &Path, seed: u64, shape: CorpusShape) -> Vec<Instance> {
    let mut rng = Rng::new(seed);
    let mut instances = Vec::with_capacity(shape.n_instances());
    for study_idx in 0..shape.studies {
        let study_uid = rng.uid();
        let patient_id = format!("PID{seed}-{study_idx}");
        let patient_name = format!("TEST^PATIENT{study_idx}^SEED{seed}");
        // Dates in 2020..2023, so several date folders appear.
        let study_date = format!(
            "202{}{:02}{:02}",
            study_idx % 4,
            1 + study_idx % 12,
            1 + study_idx % 28
        );
        let study_dir = dir.join(format!("study{study_idx}"));
        std::fs::create_dir_all(&study_dir).expect("create the corpus study folder");
        for series_idx in 0..shape.series_per_study {
            let series_uid = rng.uid();
            let (rows, columns) = if series_idx % 2 == 0 {
                shape.small
            } else {
                shape.large
            };
            for instance_idx in 0..shape.instances_per_series {
                let spec = InstanceSpec {
                    pixel_seed: rng.next_u64(),
                    patient_id: patient_id.clone(),
                    patient_name: patient_name.clone(),
                    study_date: study_date.clone(),
                    study_uid: study_uid.clone(),
                    series_uid: series_uid.clone(),
                    sop_instance_uid: rng.uid(),
                    series_number: series_idx as i32 + 1,
                    instance_number: instance_idx as i32 + 1,
                    rows,
                    columns,
                };
                let path = study_dir.join(format!("s{series_idx}_i{instance_idx}.dcm"));
                instances.push(write_instance(&path, &spec));
            }
        }
    }
    instances
}

/// One instance with its own study and series, `rows × columns` pixels.
pub fn single_instance(path: &Path, seed: u64, rows: u16, columns: u16) -> Instance {
    write_instance(path, &single_spec(seed, rows, columns))
}

/// What [`single_instance`] writes for `seed`: the same seed gives the same
/// patient and UIDs, so `InstanceSpec { pixel_seed, ..single_spec(..) }` is
/// that instance with other pixels (a duplicate that differs).
pub fn single_spec(seed: u64, rows: u16, columns: u16) -> InstanceSpec {
    let mut rng = Rng::new(seed);
    InstanceSpec {
        pixel_seed: rng.next_u64(),
        patient_id: format!("PID{seed}"),
        patient_name: format!("SINGLE^SEED{seed}"),
        study_date: "20240229".to_string(),
        study_uid: rng.uid(),
        series_uid: rng.uid(),
        sop_instance_uid: rng.uid(),
        series_number: 1,
        instance_number: 1,
        rows,
        columns,
    }
}

/// Writes one instance as a Part 10 file.
pub fn write_instance(path: &Path, spec: &InstanceSpec) -> Instance {
    let header = header_object(spec);
    let file_object = header
        .with_meta(FileMetaTableBuilder::new().transfer_syntax(EXPLICIT_VR_LITTLE_ENDIAN))
        .expect("build the file meta group");
    let file = File::create(path).expect("create the instance file");
    let mut out = BufWriter::with_capacity(1 << 20, file);
    file_object
        .write_all(&mut out)
        .expect("write the instance header");

    // (7FE0,0010) OW, always last: tag, VR, two reserved bytes, 32-bit length.
    let n_pixel_bytes = u64::from(spec.rows) * u64::from(spec.columns) * 2;
    let n_pixel_bytes_u32 = u32::try_from(n_pixel_bytes).expect("pixel data below 4 GiB");
    out.write_all(&[0xE0, 0x7F, 0x10, 0x00, b'O', b'W', 0, 0])
        .expect("write the pixel data header");
    out.write_all(&n_pixel_bytes_u32.to_le_bytes())
        .expect("write the pixel data length");
    write_pixels(&mut out, spec.pixel_seed, n_pixel_bytes);
    out.flush().expect("flush the instance file");
    drop(out);

    let file_size = std::fs::metadata(path).expect("stat the instance").len();
    Instance {
        path: path.to_path_buf(),
        study_uid: spec.study_uid.clone(),
        series_uid: spec.series_uid.clone(),
        sop_instance_uid: spec.sop_instance_uid.clone(),
        study_date: spec.study_date.clone(),
        file_size,
    }
}

/// The header elements of a CT-like image (everything but the pixel data).
fn header_object(spec: &InstanceSpec) -> InMemDicomObject {
    let text = |tag, vr, value: &str| DataElement::new(tag, vr, PrimitiveValue::from(value));
    let us = |tag, value: u16| DataElement::new(tag, VR::US, PrimitiveValue::from(value));
    InMemDicomObject::from_element_iter([
        text(tags::SPECIFIC_CHARACTER_SET, VR::CS, "ISO_IR 100"),
        text(tags::IMAGE_TYPE, VR::CS, "ORIGINAL\\PRIMARY\\AXIAL"),
        text(tags::SOP_CLASS_UID, VR::UI, CT_IMAGE_STORAGE),
        text(tags::SOP_INSTANCE_UID, VR::UI, &spec.sop_instance_uid),
        text(tags::STUDY_DATE, VR::DA, &spec.study_date),
        text(tags::STUDY_TIME, VR::TM, "101500"),
        text(tags::ACCESSION_NUMBER, VR::SH, "ACC0001"),
        text(tags::MODALITY, VR::CS, "CT"),
        text(tags::REFERRING_PHYSICIAN_NAME, VR::PN, ""),
        text(
            tags::STUDY_DESCRIPTION,
            VR::LO,
            "imageserver integration test",
        ),
        text(tags::PATIENT_NAME, VR::PN, &spec.patient_name),
        text(tags::PATIENT_ID, VR::LO, &spec.patient_id),
        text(tags::PATIENT_BIRTH_DATE, VR::DA, "19700101"),
        text(tags::PATIENT_SEX, VR::CS, "O"),
        text(tags::BODY_PART_EXAMINED, VR::CS, "CHEST"),
        text(tags::STUDY_INSTANCE_UID, VR::UI, &spec.study_uid),
        text(tags::SERIES_INSTANCE_UID, VR::UI, &spec.series_uid),
        text(tags::STUDY_ID, VR::SH, "1"),
        text(tags::SERIES_NUMBER, VR::IS, &spec.series_number.to_string()),
        text(
            tags::INSTANCE_NUMBER,
            VR::IS,
            &spec.instance_number.to_string(),
        ),
        us(tags::SAMPLES_PER_PIXEL, 1),
        text(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "MONOCHROME2"),
        us(tags::ROWS, spec.rows),
        us(tags::COLUMNS, spec.columns),
        us(tags::BITS_ALLOCATED, 16),
        us(tags::BITS_STORED, 12),
        us(tags::HIGH_BIT, 11),
        us(tags::PIXEL_REPRESENTATION, 0),
        text(tags::RESCALE_INTERCEPT, VR::DS, "-1024"),
        text(tags::RESCALE_SLOPE, VR::DS, "1"),
    ])
}

/// Streams `n_bytes` of 12-bit pixel values (in 16-bit words).
fn write_pixels(out: &mut impl Write, seed: u64, n_bytes: u64) {
    let mut rng = Rng::new(seed);
    let mut chunk = vec![0u8; 1 << 20];
    let mut remaining = n_bytes;
    while remaining > 0 {
        let len = remaining.min(chunk.len() as u64) as usize;
        for word in chunk[..len].chunks_exact_mut(8) {
            let bits = rng.next_u64() & 0x0FFF_0FFF_0FFF_0FFF;
            word.copy_from_slice(&bits.to_le_bytes());
        }
        // Lengths are multiples of two; a tail of 2, 4 or 6 bytes stays zero.
        out.write_all(&chunk[..len]).expect("write pixel data");
        remaining -= len as u64;
    }
}

/// The offset of the data set in a Part 10 file: after the 128-byte
/// preamble, `DICM` and the file meta group, whose length is the value of
/// (0002,0000) (an Explicit VR UL element right after the magic).
pub fn dataset_offset(path: &Path) -> u64 {
    let mut head = [0u8; 144];
    File::open(path)
        .and_then(|mut file| file.read_exact(&mut head))
        .unwrap_or_else(|e| panic!("read the Part 10 header of {}: {e}", path.display()));
    assert_eq!(
        &head[128..132],
        b"DICM",
        "{} is not Part 10",
        path.display()
    );
    assert_eq!(
        &head[132..138],
        &[0x02, 0x00, 0x00, 0x00, b'U', b'L'],
        "{} does not start its meta group with (0002,0000) UL",
        path.display()
    );
    let group_length = u32::from_le_bytes(head[140..144].try_into().expect("four bytes"));
    144 + u64::from(group_length)
}

/// Whether the data set parts of two Part 10 files are byte-identical,
/// compared in chunks (for files too large to hold twice).
pub fn same_dataset(stored: &Path, source: &Path) -> bool {
    let open_at_dataset = |path: &Path| {
        let mut file = File::open(path).expect("open the Part 10 file");
        let offset = dataset_offset(path);
        let len = file.metadata().expect("stat").len() - offset;
        file.seek(SeekFrom::Start(offset)).expect("seek");
        (std::io::BufReader::with_capacity(1 << 20, file), len)
    };
    let (mut left, left_len) = open_at_dataset(stored);
    let (mut right, right_len) = open_at_dataset(source);
    if left_len != right_len {
        return false;
    }
    let mut left_chunk = vec![0u8; 1 << 20];
    let mut right_chunk = vec![0u8; 1 << 20];
    let mut remaining = left_len;
    while remaining > 0 {
        let len = remaining.min(left_chunk.len() as u64) as usize;
        left.read_exact(&mut left_chunk[..len]).expect("read");
        right.read_exact(&mut right_chunk[..len]).expect("read");
        if left_chunk[..len] != right_chunk[..len] {
            return false;
        }
        remaining -= len as u64;
    }
    true
}

/// BLAKE3 of a whole file, lowercase hex.
pub fn blake3_hex(path: &Path) -> String {
    let mut hasher = blake3::Hasher::new();
    let mut file = File::open(path).expect("open the file to hash");
    let mut chunk = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut chunk).expect("read the file to hash");
        if n == 0 {
            break;
        }
        hasher.update(&chunk[..n]);
    }
    hasher.finalize().to_hex().to_string()
}

/// The file meta group of a Part 10 file.
pub fn file_meta(path: &Path) -> dicom_object::meta::FileMetaTable {
    let mut file = File::open(path).expect("open the Part 10 file");
    file.seek(SeekFrom::Start(128)).expect("skip the preamble");
    dicom_object::meta::FileMetaTable::from_reader(file)
        .unwrap_or_else(|e| panic!("parse the meta group of {}: {e}", path.display()))
}
