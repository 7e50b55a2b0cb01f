//! The files of one study: hashing them and reading their headers
//! (reprocess; the header → record mapping is `dicom::part10::header`).
//! Listing a study's files is the storage seam's
//! (`StorageBackend::list_study`).

use std::io::{self, Read};

use dicom_object::DefaultDicomObject;

use crate::dicom::part10::walker::WalkError;
use crate::dicom::part10::{self, DataSetWalker, MetaError};
use crate::storage;

/// A reader that hashes (BLAKE3) and counts every byte read through it.
pub(crate) struct HashingReader<R> {
    inner: R,
    hasher: blake3::Hasher,
    len: u64,
}

impl<R: Read> HashingReader<R> {
    pub(crate) fn new(inner: R) -> HashingReader<R> {
        HashingReader {
            inner,
            hasher: blake3::Hasher::new(),
            len: 0,
        }
    }

    /// Reads the rest and returns (size, lowercase hex digest) of everything.
    pub(crate) fn finish(mut self) -> io::Result<(u64, String)> {
        io::copy(&mut self, &mut io::sink())?;
        Ok((self.len, self.hasher.finalize().to_hex().to_string()))
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
}

/// Size and BLAKE3 digest (lowercase hex) of a stream.
pub(crate) fn digest(reader: impl Read) -> io::Result<(u64, String)> {
    HashingReader::new(reader).finish()
}

/// Why a stored file's header could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum FileError {
    /// The storage could not open it.
    #[error("cannot open the file")]
    Open(#[source] storage::Error),
    /// Preamble, magic or meta group refused.
    #[error(transparent)]
    Meta(#[from] MetaError),
    /// Reading it failed.
    #[error("cannot read the file")]
    Read(#[source] io::Error),
    /// The walker refused the data set's structure.
    #[error("the data set is incomplete or malformed")]
    Malformed(#[source] WalkError),
    /// The header parser refused it.
    #[error("cannot parse the header")]
    Parse(#[source] dicom_object::ReadError),
}

/// Reads a Part 10 file's header (meta and data set up to Pixel Data) and
/// hashes the whole file: (header, size, digest). `open` is called twice:
/// the first pass hashes the file and checks its structure (nesting depth,
/// lengths within the data, deflated data sets inflated within bounds), and
/// only a file that passes is handed to the header parser, which recurses
/// per nesting level and allocates the lengths it reads.
pub(crate) fn read_header_and_digest<R: Read>(
    mut open: impl FnMut() -> Result<R, storage::Error>,
) -> Result<(DefaultDicomObject, u64, String), FileError> {
    let mut hashing = HashingReader::new(open().map_err(FileError::Open)?);
    let meta = part10::read_file_meta(&mut hashing)?;
    let mut walker = DataSetWalker::for_transfer_syntax(meta.transfer_syntax());
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match hashing.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => walker.feed(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(FileError::Read(e)),
        }
    }
    walker.finish().map_err(FileError::Malformed)?;
    let (size, digest) = hashing.finish().map_err(FileError::Read)?;
    let reader = open().map_err(FileError::Open)?;
    let header = part10::parse_header(reader).map_err(FileError::Parse)?;
    Ok((header, size, digest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dicom::part10::testfiles::{deflate, explicit};
    use dicom_dictionary_std::tags;

    /// A Part 10 file: preamble, meta for `ts`, then `data_set` as is.
    fn part10(ts: &str, data_set: &[u8]) -> Vec<u8> {
        let meta = dicom_object::meta::FileMetaTableBuilder::new()
            .media_storage_sop_class_uid("1.2.840.10008.5.1.4.1.1.2")
            .media_storage_sop_instance_uid("1.2.3.4")
            .transfer_syntax(ts)
            .implementation_class_uid("1.2.3")
            .build()
            .unwrap();
        let mut out = vec![0u8; 128];
        out.extend_from_slice(b"DICM");
        meta.write(&mut out).unwrap();
        out.extend_from_slice(data_set);
        out
    }

    fn read(file: &[u8]) -> Result<(DefaultDicomObject, u64, String), FileError> {
        read_header_and_digest(|| Ok::<_, storage::Error>(file))
    }

    /// The whole chain of why `file` is refused.
    fn refusal(file: &[u8]) -> String {
        crate::model::error_chain(&read(file).unwrap_err())
    }

    #[test]
    fn reprocess_reads_deflated_files_and_refuses_hostile_ones() {
        let header = [
            explicit((0x0008, 0x0016), b"UI", b"1.2.840.10008.5.1.4.1.1.2\0"),
            explicit((0x0008, 0x0018), b"UI", b"1.2.3.4\0"),
        ]
        .concat();
        let ts = "1.2.840.10008.1.2.1.99";
        let good = part10(ts, &deflate(&header));
        let (parsed, size, digest) = read(&good).unwrap();
        assert_eq!(
            part10::header::text(&parsed, tags::SOP_INSTANCE_UID).as_deref(),
            Some("1.2.3.4")
        );
        assert_eq!(size, good.len() as u64);
        assert_eq!(digest, blake3::hash(&good).to_hex().to_string());

        // 20,000 nested sequences once inflated: refused before parsing
        // (the parser would overflow the thread's stack).
        let mut nested = header.clone();
        let open = [
            &[
                0x08, 0x00, 0x40, 0x11, b'S', b'Q', 0, 0, 0xFF, 0xFF, 0xFF, 0xFF,
            ][..],
            &[0xFE, 0xFF, 0x00, 0xE0, 0xFF, 0xFF, 0xFF, 0xFF][..],
        ]
        .concat();
        let close = [
            &[0xFE, 0xFF, 0x0D, 0xE0, 0, 0, 0, 0][..],
            &[0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0][..],
        ]
        .concat();
        nested.extend(open.repeat(20_000));
        nested.extend(close.repeat(20_000));
        let error = read(&part10(ts, &deflate(&nested))).unwrap_err();
        assert!(matches!(error, FileError::Malformed(_)), "{error:?}");
        let error = crate::model::error_chain(&error);
        assert!(error.contains("nested too deeply"), "{error}");

        // A 4 GiB length claim with 16 bytes present.
        let mut lie = header.clone();
        lie.extend_from_slice(&[0x09, 0x00, 0x10, 0x10, b'O', b'B', 0, 0]);
        lie.extend_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
        lie.extend_from_slice(&[0; 16]);
        for file in [
            part10(ts, &deflate(&lie)),
            part10("1.2.840.10008.1.2.1", &lie),
        ] {
            let error = refusal(&file);
            assert!(
                error.contains("before the end of an element value"),
                "{error}"
            );
        }

        // A meta group claiming 4 GiB is refused before allocating it.
        let mut huge_meta = good.clone();
        huge_meta[140..144].copy_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
        assert!(matches!(
            read(&huge_meta),
            Err(FileError::Meta(MetaError::TooLarge { .. }))
        ));
        assert!(refusal(&huge_meta).contains("file meta group claims"));
    }

    #[test]
    fn digests_count_every_byte() {
        assert_eq!(digest(&b"abc"[..]).unwrap().0, 3);
    }
}
