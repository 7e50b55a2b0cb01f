//! DICOM Part 10 files and data set streams, below every service: the
//! structural [`walker`] that guards the header parser, the bounded reader
//! of a file's meta group, and [`reader`], a stored file's data set as a
//! stream for sending.

pub(crate) mod reader;
pub(crate) mod walker;

pub use reader::DataSetReader;
pub(crate) use walker::DataSetWalker;

/// Largest file meta group read (real ones are a few hundred bytes).
const MAX_META: usize = 64 * 1024;

/// Reads the head of a Part 10 stream — preamble, `DICM`, and the file
/// meta group, whose size is bounded before anything is allocated — and
/// leaves the stream at the first byte of the data set.
pub(crate) fn read_file_meta(
    reader: &mut dyn std::io::Read,
) -> Result<dicom_object::meta::FileMetaTable, String> {
    let mut head = vec![0u8; 144];
    reader
        .read_exact(&mut head)
        .map_err(|_| "not a DICOM Part 10 file (too short)".to_string())?;
    if &head[128..132] != b"DICM" {
        return Err("not a DICOM Part 10 file (no DICM magic)".to_string());
    }
    // (0002,0000) UL: tag, "UL", 2-byte length, 4-byte value.
    if head[132..138] != [0x02, 0x00, 0x00, 0x00, b'U', b'L'] {
        return Err("the file meta group does not start with its group length".to_string());
    }
    let meta_len = u32::from_le_bytes([head[140], head[141], head[142], head[143]]) as usize;
    if meta_len > MAX_META {
        return Err(format!(
            "the file meta group claims {meta_len} bytes (at most {MAX_META})"
        ));
    }
    head.resize(144 + meta_len, 0);
    reader
        .read_exact(&mut head[144..])
        .map_err(|e| format!("cannot read the file meta group: {e}"))?;
    dicom_object::meta::FileMetaTable::from_reader(&head[128..])
        .map_err(|e| format!("cannot parse the file meta group: {e}"))
}
