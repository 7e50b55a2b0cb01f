//! DIMSE command sets (PS3.7): a hand-written codec and status codes.
//!
//! This module is a pure codec in the spirit of dicom-ul's `pdu` module: it
//! turns bytes into values and back and never touches a socket. The message
//! loop reads PDVs with [`crate::dicom::pdu`], collects the command fragments
//! in a [`FragmentBuffer`], decodes them with [`Command::decode`] and answers
//! with a [`Command`] built by one of the response constructors and encoded
//! with [`Command::encode`].
//!
//! Command sets are always Implicit VR Little Endian, group 0000, with
//! CommandGroupLength (0000,0000) first. That encoding is simple enough to
//! write by hand, which avoids building an in-memory DICOM object per
//! message; the tests cross-check the codec against dicom-object.
//!
//! - [`command`]: [`Command`], [`CommandField`], [`Priority`], [`SubOpCounts`].
//! - [`status`]: [`Status`] and [`StatusClass`].

pub mod command;
pub mod status;

pub use command::{Command, CommandField, Priority, SubOpCounts};
pub use status::{Status, StatusClass};

/// An error decoding a DIMSE message.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DimseError {
    /// The command set is truncated, inconsistent or lacks a required element.
    #[error("malformed command set: {0}")]
    Malformed(String),
    /// The message part exceeds the size we accept.
    #[error("message of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// The size the message would have reached.
        len: usize,
        /// The limit.
        max: usize,
    },
}

/// Assembles command and data-set fragments of one message from PDVs
/// (in-memory; for commands and small identifiers only).
#[derive(Debug, Clone)]
pub struct FragmentBuffer {
    max_len: usize,
    buf: Vec<u8>,
}

impl FragmentBuffer {
    /// An empty buffer refusing to grow beyond `max_len` bytes.
    pub fn new(max_len: usize) -> Self {
        FragmentBuffer {
            max_len,
            buf: Vec::new(),
        }
    }

    /// Appends one fragment; [`DimseError::TooLarge`] (and nothing appended)
    /// if the total would exceed the limit.
    pub fn push(&mut self, fragment: &[u8]) -> Result<(), DimseError> {
        let len = self.buf.len().saturating_add(fragment.len());
        if len > self.max_len {
            return Err(DimseError::TooLarge {
                len,
                max: self.max_len,
            });
        }
        self.buf.extend_from_slice(fragment);
        Ok(())
    }

    /// Returns the assembled bytes, leaving the buffer empty.
    pub fn take(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf)
    }

    /// The assembled bytes so far.
    pub fn as_slice(&self) -> &[u8] {
        &self.buf
    }

    /// Discards the assembled bytes, keeping the allocation.
    pub fn clear(&mut self) {
        self.buf.clear();
    }

    /// Whether no byte has been pushed since the last take/clear.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Number of bytes assembled so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fragment_buffer_limits() {
        // (fragments, max, expected pushes ok, final content)
        type Case<'a> = (&'a [&'a [u8]], usize, &'a [bool], &'a [u8]);
        let cases: &[Case] = &[
            (&[b"ab", b"cd"], 4, &[true, true], b"abcd"),
            (&[b"ab", b"cde"], 4, &[true, false], b"ab"),
            (&[b"", b"abcde", b"x"], 5, &[true, true, false], b"abcde"),
            (&[b"a"], 0, &[false], b""),
        ];
        for &(frags, max, oks, content) in cases {
            let mut fb = FragmentBuffer::new(max);
            for (frag, &ok) in frags.iter().zip(oks) {
                let r = fb.push(frag);
                assert_eq!(r.is_ok(), ok, "{frags:?} max {max}");
                if let Err(e) = r {
                    assert!(matches!(e, DimseError::TooLarge { max: m, .. } if m == max));
                }
            }
            assert_eq!(fb.as_slice(), content);
            assert_eq!(fb.len(), content.len());
            assert_eq!(fb.take(), content);
            assert!(fb.is_empty());
        }
        let mut fb = FragmentBuffer::new(8);
        fb.push(b"abc").unwrap();
        fb.clear();
        assert!(fb.is_empty());
        fb.push(b"12345678").unwrap();
        assert_eq!(fb.take(), b"12345678");
    }
}
