//! The data set of a stored Part 10 file as a stream, for sending it.

use std::io::{self, Read};

/// Reads past the 128-byte preamble, `DICM` and the file meta group of a
/// Part 10 stream, leaving it at the data set's first byte; returns the data
/// set's offset. The group's length is the value of (0002,0000), which must
/// be the first element (PS3.10 7.1).
pub fn skip_file_meta(reader: &mut dyn Read) -> io::Result<u64> {
    let mut head = [0u8; 144];
    reader.read_exact(&mut head).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            io::Error::new(io::ErrorKind::InvalidData, "shorter than a Part 10 header")
        } else {
            e
        }
    })?;
    if &head[128..132] != b"DICM" {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "no DICM prefix after the preamble",
        ));
    }
    if head[132..140] != [0x02, 0x00, 0x00, 0x00, b'U', b'L', 0x04, 0x00] {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the meta group does not start with (0002,0000) UL",
        ));
    }
    let group_length = u32::from_le_bytes([head[140], head[141], head[142], head[143]]);
    let skipped = io::copy(&mut reader.take(u64::from(group_length)), &mut io::sink())?;
    if skipped < u64::from(group_length) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the file ends inside its meta group",
        ));
    }
    Ok(144 + u64::from(group_length))
}

/// The data set of a stored Part 10 file, as a stream: the preamble and
/// meta group are skipped on creation; reading remembers its own failures
/// (to tell them from socket failures) and, when the file size is known,
/// refuses a file that ends early or runs long, so that a damaged file
/// aborts its transfer instead of delivering a damaged instance.
pub struct DataSetReader<'a> {
    inner: Box<dyn Read + Send + 'a>,
    remaining: Option<u64>,
    failure: Option<String>,
}

impl std::fmt::Debug for DataSetReader<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataSetReader")
            .field("remaining", &self.remaining)
            .field("failure", &self.failure)
            .finish()
    }
}

impl<'a> DataSetReader<'a> {
    /// Skips the preamble and meta group of `file` (see
    /// [`skip_file_meta`]); `file_size`, when known, is the whole file's
    /// size.
    pub fn new(
        mut file: Box<dyn Read + Send + 'a>,
        file_size: Option<u64>,
    ) -> io::Result<DataSetReader<'a>> {
        let offset = skip_file_meta(&mut file)?;
        let remaining = match file_size {
            Some(size) if size < offset => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("the indexed size {size} is below the meta group's end {offset}"),
                ))
            }
            Some(size) => Some(size - offset),
            None => None,
        };
        Ok(DataSetReader {
            inner: file,
            remaining,
            failure: None,
        })
    }

    /// Why reading failed, if it did.
    pub fn failure(&self) -> Option<&str> {
        self.failure.as_deref()
    }
}

impl Read for DataSetReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = match self.inner.read(buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Err(e),
            Err(e) => {
                self.failure = Some(e.to_string());
                return Err(e);
            }
        };
        if let Some(remaining) = self.remaining.as_mut() {
            let fail = if n == 0 && *remaining > 0 {
                Some(format!(
                    "the stored file ends {remaining} bytes before its indexed size"
                ))
            } else if n as u64 > *remaining {
                Some("the stored file is longer than its indexed size".to_string())
            } else {
                None
            };
            if let Some(reason) = fail {
                self.failure = Some(reason.clone());
                return Err(io::Error::new(io::ErrorKind::InvalidData, reason));
            }
            *remaining -= n as u64;
        }
        Ok(n)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Cursor;

    /// A Part 10 stream: preamble, `DICM`, a meta group of `meta_len`
    /// filler bytes behind its group length, then `dataset`.
    pub(crate) fn part10(meta_len: u32, dataset: &[u8]) -> Vec<u8> {
        let mut bytes = vec![0u8; 128];
        bytes.extend_from_slice(b"DICM");
        bytes.extend_from_slice(&[0x02, 0x00, 0x00, 0x00, b'U', b'L', 0x04, 0x00]);
        bytes.extend_from_slice(&meta_len.to_le_bytes());
        bytes.extend(std::iter::repeat_n(0xAA, meta_len as usize));
        bytes.extend_from_slice(dataset);
        bytes
    }

    #[test]
    fn file_meta_is_skipped_by_its_group_length() {
        let bytes = part10(30, b"dataset");
        let mut cursor = Cursor::new(bytes);
        assert_eq!(skip_file_meta(&mut cursor).unwrap(), 174);
        let mut rest = Vec::new();
        cursor.read_to_end(&mut rest).unwrap();
        assert_eq!(rest, b"dataset");

        let mut bad = part10(30, b"x");
        bad[128] = b'X';
        assert!(skip_file_meta(&mut Cursor::new(bad)).is_err());
        let truncated = part10(30, b"")[..150].to_vec();
        assert!(skip_file_meta(&mut Cursor::new(truncated)).is_err());
        assert!(skip_file_meta(&mut Cursor::new(vec![0u8; 20])).is_err());
    }

    #[test]
    fn data_set_reader_checks_the_length() {
        let read_all = |dataset: &[u8], file_size: Option<u64>| {
            let file = Box::new(Cursor::new(part10(30, dataset)));
            let mut reader = DataSetReader::new(file, file_size).unwrap();
            let mut out = Vec::new();
            let result = reader.read_to_end(&mut out);
            (result.is_ok(), reader.failure().map(str::to_string), out)
        };
        assert_eq!(read_all(b"abcd", Some(178)), (true, None, b"abcd".to_vec()));
        assert_eq!(read_all(b"abcd", None), (true, None, b"abcd".to_vec()));
        let (ok, failure, _) = read_all(b"abc", Some(178));
        assert!(!ok && failure.unwrap().contains("ends 1 bytes before"));
        let (ok, failure, _) = read_all(b"abcde", Some(178));
        assert!(!ok && failure.unwrap().contains("longer"));
        let file = Box::new(Cursor::new(part10(30, b"x")));
        assert!(DataSetReader::new(file, Some(100)).is_err());
    }
}
