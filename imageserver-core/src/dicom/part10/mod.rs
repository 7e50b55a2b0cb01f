//! DICOM Part 10 files and data set streams, below every service: the
//! structural [`walker`] that guards the header parser, the bounded reader
//! of a file's meta group, [`reader`], a stored file's data set as a
//! stream for sending, [`header`], a parsed header as an index record,
//! [`splice`], the byte-level rewrite of a file's patient/study elements,
//! [`json`], a data set's DICOM JSON model, and `bulk` (feature `web`), its
//! bulk values and frames streamed out for WADO-RS.

// Used by the HTTP front-end (WADO-RS bulk data and frames) only.
#[cfg(feature = "web")]
pub mod bulk;
pub(crate) mod header;
pub(crate) mod json;
pub(crate) mod reader;
pub(crate) mod splice;
#[cfg(test)]
pub(crate) mod testfiles;
pub(crate) mod walker;

pub use reader::DataSetReader;
pub(crate) use walker::DataSetWalker;

/// Largest file meta group read (real ones are a few hundred bytes).
const MAX_META: usize = 64 * 1024;

/// Why the head of a Part 10 stream was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MetaError {
    /// Fewer bytes than a preamble, magic and group length.
    #[error("not a DICOM Part 10 file (too short)")]
    TooShort,
    /// No `DICM` after the preamble.
    #[error("not a DICOM Part 10 file (no DICM magic)")]
    NoMagic,
    /// The meta group does not start with (0002,0000) UL.
    #[error("the file meta group does not start with its group length")]
    NoGroupLength,
    /// The meta group claims more than [`MAX_META`] bytes.
    #[error("the file meta group claims {claimed} bytes (at most {limit})")]
    TooLarge {
        /// The length it claims.
        claimed: usize,
        /// The limit.
        limit: usize,
    },
    /// Reading the meta group failed.
    #[error("cannot read the file meta group")]
    Read(#[source] std::io::Error),
    /// The meta group does not parse.
    #[error("cannot parse the file meta group")]
    Parse(#[source] dicom_object::meta::Error),
}

/// Parses a Part 10 stream's header: preamble, file meta group and the
/// data set up to Pixel Data (whose value is never read).
pub(crate) fn parse_header(
    reader: impl std::io::Read,
) -> Result<dicom_object::DefaultDicomObject, dicom_object::ReadError> {
    dicom_object::OpenFileOptions::new()
        .read_preamble(dicom_object::file::ReadPreamble::Always)
        .read_until(dicom_dictionary_std::tags::PIXEL_DATA)
        .from_reader(reader)
}

/// Reads the head of a Part 10 stream — preamble, `DICM`, and the file
/// meta group, whose size is bounded before anything is allocated — and
/// leaves the stream at the first byte of the data set.
pub(crate) fn read_file_meta(
    reader: &mut dyn std::io::Read,
) -> Result<dicom_object::meta::FileMetaTable, MetaError> {
    let mut head = vec![0u8; 144];
    reader
        .read_exact(&mut head)
        .map_err(|_| MetaError::TooShort)?;
    if &head[128..132] != b"DICM" {
        return Err(MetaError::NoMagic);
    }
    // (0002,0000) UL: tag, "UL", 2-byte length, 4-byte value.
    if head[132..138] != [0x02, 0x00, 0x00, 0x00, b'U', b'L'] {
        return Err(MetaError::NoGroupLength);
    }
    let meta_len = u32::from_le_bytes([head[140], head[141], head[142], head[143]]) as usize;
    if meta_len > MAX_META {
        return Err(MetaError::TooLarge {
            claimed: meta_len,
            limit: MAX_META,
        });
    }
    head.resize(144 + meta_len, 0);
    reader
        .read_exact(&mut head[144..])
        .map_err(MetaError::Read)?;
    dicom_object::meta::FileMetaTable::from_reader(&head[128..]).map_err(MetaError::Parse)
}
