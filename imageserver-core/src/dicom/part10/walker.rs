//! A streaming structural check of a received data set.
//!
//! Headers are parsed only up to Pixel Data, so a data set cut short inside
//! its pixel data, or an element whose length runs past the end, would
//! otherwise pass unnoticed. [`DataSetWalker`] follows element, item and
//! delimiter headers as the bytes stream by, skipping values without
//! buffering them, and at the end says whether the data set ended exactly on
//! an element boundary with every sequence and item closed.
//!
//! The walker is the guard in front of dicom-object's header parser, which
//! recurses once per nesting level and allocates an element's claimed
//! length before reading it. It therefore reads headers exactly as that
//! parser does (an unknown explicit VR has a 4-byte length, as UN; in
//! Implicit VR the dictionary says which elements are sequences), and a
//! data set it accepts nests at most [`MAX_DEPTH`] levels and claims no
//! length beyond the bytes present. Deflated transfer syntaxes are inflated
//! through a fixed buffer and the inflated stream is walked, up to
//! [`MAX_INFLATED_BYTES`].

use flate2::{Decompress, FlushDecompress, Status};

/// Value representations whose explicit-VR header has a 2-byte length
/// (PS3.5 Table 7.1-2); every other VR, known or not, has a 4-byte length,
/// as dicom-rs reads it.
pub(super) const SHORT_VRS: [&[u8; 2]; 21] = [
    b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT", b"PN",
    b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US",
];
/// Deflated transfer syntaxes: the data set is a raw deflate stream.
const DEFLATED: [&str; 2] = ["1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.4.95"];
/// Most bytes a deflated data set may inflate to. Deflate reaches ratios
/// of about 1000:1, so without a bound a few megabytes on the wire would
/// keep a thread inflating for minutes.
pub(crate) const MAX_INFLATED_BYTES: u64 = 4 << 30;
/// Size of the buffer inflated bytes pass through.
const INFLATE_CHUNK: usize = 64 * 1024;
const UNDEFINED: u32 = 0xFFFF_FFFF;
const ITEM: (u16, u16) = (0xFFFE, 0xE000);
const ITEM_END: (u16, u16) = (0xFFFE, 0xE00D);
const SEQUENCE_END: (u16, u16) = (0xFFFE, 0xE0DD);
const PIXEL_DATA: (u16, u16) = (0x7FE0, 0x0010);
/// Deepest nesting of sequences and items accepted (each level is a
/// sequence plus an item). Real data sets nest a handful of levels; the
/// header parser recurses per level, so unbounded nesting could exhaust a
/// thread's stack.
pub(crate) const MAX_DEPTH: usize = 32;

/// Why a data set stream was refused: the rule or limit broken and, for
/// structural faults, the offset in the (inflated) data set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WalkError {
    /// A header not allowed where it stands.
    #[error("{fault} at byte {offset}")]
    Misplaced {
        /// What was found.
        fault: Fault,
        /// Offset of its header.
        offset: u64,
    },
    /// Sequences nest deeper than [`MAX_DEPTH`].
    #[error("sequences nested too deeply at byte {offset}")]
    TooDeep {
        /// The limit (levels of sequence and item).
        limit: usize,
        /// Offset of the header that went beyond it.
        offset: u64,
    },
    /// An element's value runs past the end of its sequence or item.
    #[error("an element runs past its container at byte {end}")]
    PastContainer {
        /// Where the container ends.
        end: u64,
    },
    /// The stream ends inside an element value.
    #[error("data set ends {missing} bytes before the end of an element value")]
    TruncatedValue {
        /// Bytes of the value that never came.
        missing: u64,
    },
    /// The stream ends inside an element header.
    #[error("data set ends inside an element header")]
    TruncatedHeader,
    /// The stream ends inside a sequence or item.
    #[error("data set ends inside a sequence or item")]
    Unclosed,
    /// A deflated data set inflates beyond [`MAX_INFLATED_BYTES`].
    #[error("the deflated data set inflates beyond {limit} bytes")]
    InflateLimit {
        /// The limit.
        limit: u64,
    },
    /// The deflate stream is corrupt.
    #[error("the deflated data set cannot be inflated: {reason}")]
    Inflate {
        /// The decompressor's message.
        reason: String,
    },
    /// Non-padding bytes follow the end of the deflate stream.
    #[error("bytes follow the end of the deflated data set")]
    TrailingBytes,
    /// The input ends before the deflate stream does.
    #[error("the deflated data set ends before its deflate stream does")]
    DeflateUnfinished,
    /// The elements before Pixel Data (what a header parse reads into
    /// memory) run beyond the walker's header limit.
    #[error("the elements before Pixel Data exceed {limit} bytes")]
    HeaderTooLarge {
        /// The limit, in bytes of the (inflated) data set.
        limit: u64,
    },
}

/// A header found where the structure does not allow it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// An item delimiter outside an undefined-length item.
    UnexpectedItemDelimiter,
    /// An item tag among a data set's elements.
    ItemInDataSet,
    /// Undefined length on an element that is not a sequence.
    UndefinedLength,
    /// Something other than an item in a sequence.
    ExpectedItem,
    /// Something other than a fragment in encapsulated pixel data.
    ExpectedFragment,
    /// A binary value whose length is not a whole number of its values
    /// (dicom-parser loses step with one).
    PartialValue {
        /// The value's length.
        length: u32,
        /// The size of one value of its VR.
        unit: u32,
    },
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Fault::UnexpectedItemDelimiter => "unexpected item delimiter",
            Fault::ItemInDataSet => "unexpected item tag in a data set",
            Fault::UndefinedLength => "undefined length on a non-sequence element",
            Fault::ExpectedItem => "expected an item in a sequence",
            Fault::ExpectedFragment => "expected a pixel data fragment",
            Fault::PartialValue { length, unit } => {
                return write!(
                    f,
                    "a value of {length} bytes is not a whole number of {unit}-byte values"
                )
            }
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Context {
    /// Elements of a data set (the root, or an item), ending at a known
    /// offset or at an item delimiter.
    DataSet { end: Option<u64> },
    /// Items of a sequence.
    Sequence { end: Option<u64> },
    /// Fragments of encapsulated pixel data.
    Fragments,
}

impl Context {
    fn end(self) -> Option<u64> {
        match self {
            Context::DataSet { end } | Context::Sequence { end } => end,
            Context::Fragments => None,
        }
    }
}

/// Follows the structure of a data set fed to it in arbitrary chunks,
/// inflating it first when its transfer syntax is deflated.
#[derive(Debug)]
pub(crate) struct DataSetWalker {
    structure: Structure,
    inflate: Option<Box<Inflate>>,
}

impl DataSetWalker {
    /// A walker for the data set of a transfer syntax. Every syntax but
    /// the two big-endian and implicit ones is read as Explicit VR Little
    /// Endian (encapsulated syntaxes differ only in their pixel data).
    pub(crate) fn for_transfer_syntax(ts_uid: &str) -> DataSetWalker {
        let (explicit_vr, big_endian) = match ts_uid {
            "1.2.840.10008.1.2" => (false, false),
            "1.2.840.10008.1.2.2" => (true, true),
            _ => (true, false),
        };
        let inflate = DEFLATED.contains(&ts_uid).then(|| {
            Box::new(Inflate {
                decompress: Decompress::new(false),
                out: vec![0; INFLATE_CHUNK],
                ended: false,
                limit: MAX_INFLATED_BYTES,
                error: None,
            })
        });
        DataSetWalker {
            structure: Structure::new(explicit_vr, big_endian),
            inflate,
        }
    }

    /// Refuses ([`WalkError::HeaderTooLarge`]) a data set whose elements
    /// before Pixel Data (every element when it has none) end beyond
    /// `limit` bytes of the (inflated) data set: as soon as an element
    /// header claims a value that would cross it, before the value arrives.
    pub(crate) fn with_header_limit(mut self, limit: u64) -> DataSetWalker {
        self.structure.header_limit = limit;
        self
    }

    /// The fault found so far, if any: once there is one, nothing more is
    /// walked and [`finish`](DataSetWalker::finish) returns it.
    pub(crate) fn error(&self) -> Option<&WalkError> {
        self.inflate
            .as_ref()
            .and_then(|inflate| inflate.error.as_ref())
            .or(self.structure.error.as_ref())
    }

    /// Once every element before Pixel Data has been walked (a top-level
    /// element at or after Pixel Data has begun), how many bytes of the
    /// value under way are still to come; `None` before. A receiver learns
    /// from it that the header is whole while much of the instance is yet
    /// to arrive.
    pub(crate) fn past_header(&self) -> Option<u64> {
        (!self.structure.in_header && self.error().is_none()).then_some(self.structure.skip)
    }

    /// Feeds the next bytes of the data set (as received: deflated ones
    /// are inflated here).
    pub(crate) fn feed(&mut self, bytes: &[u8]) {
        match self.inflate.as_mut() {
            None => self.structure.feed(bytes),
            Some(inflate) => inflate.feed(bytes, &mut self.structure),
        }
    }

    /// Whether the data set ended cleanly; otherwise why not.
    pub(crate) fn finish(self) -> Result<(), WalkError> {
        if let Some(inflate) = self.inflate {
            if let Some(error) = inflate.error {
                return Err(error);
            }
            if let Some(error) = self.structure.error {
                return Err(error);
            }
            if !inflate.ended {
                return Err(WalkError::DeflateUnfinished);
            }
        }
        self.structure.finish()
    }
}

/// A raw deflate stream (PS3.5 A.5) inflated through a fixed buffer.
struct Inflate {
    decompress: Decompress,
    out: Vec<u8>,
    /// The deflate stream has ended; only padding may follow.
    ended: bool,
    /// Most bytes it may inflate to.
    limit: u64,
    error: Option<WalkError>,
}

impl std::fmt::Debug for Inflate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inflate")
            .field("total_in", &self.decompress.total_in())
            .field("total_out", &self.decompress.total_out())
            .field("ended", &self.ended)
            .finish()
    }
}

impl Inflate {
    fn feed(&mut self, mut input: &[u8], structure: &mut Structure) {
        loop {
            if self.error.is_some() || structure.error.is_some() {
                return;
            }
            if self.ended {
                // An odd-length stream is padded with one null byte.
                if input.iter().any(|&b| b != 0) {
                    self.error = Some(WalkError::TrailingBytes);
                }
                return;
            }
            let (in_before, out_before) = (self.decompress.total_in(), self.decompress.total_out());
            let status = self
                .decompress
                .decompress(input, &mut self.out, FlushDecompress::None);
            let consumed = (self.decompress.total_in() - in_before) as usize;
            let produced = (self.decompress.total_out() - out_before) as usize;
            input = &input[consumed..];
            if produced > 0 {
                structure.feed(&self.out[..produced]);
                if self.decompress.total_out() > self.limit {
                    self.error = Some(WalkError::InflateLimit { limit: self.limit });
                    return;
                }
            }
            match status {
                Err(error) => {
                    self.error = Some(WalkError::Inflate {
                        reason: error.to_string(),
                    });
                    return;
                }
                Ok(Status::StreamEnd) => self.ended = true,
                Ok(_) => {
                    // All input taken and no output held back, or stuck.
                    let drained = input.is_empty() && produced < self.out.len();
                    if drained || (consumed == 0 && produced == 0) {
                        return;
                    }
                }
            }
        }
    }
}

/// Follows element, item and delimiter headers of a plain (not deflated)
/// data set.
#[derive(Debug)]
struct Structure {
    explicit_vr: bool,
    big_endian: bool,
    pos: u64,
    skip: u64,
    header: [u8; 12],
    header_len: usize,
    stack: Vec<Context>,
    error: Option<WalkError>,
    /// Most bytes the elements before Pixel Data may end at.
    header_limit: u64,
    /// No top-level element at or after Pixel Data seen yet.
    in_header: bool,
}

impl Structure {
    fn new(explicit_vr: bool, big_endian: bool) -> Structure {
        Structure {
            explicit_vr,
            big_endian,
            pos: 0,
            skip: 0,
            header: [0; 12],
            header_len: 0,
            stack: vec![Context::DataSet { end: None }],
            error: None,
            header_limit: u64::MAX,
            in_header: true,
        }
    }

    fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() && self.error.is_none() {
            if self.skip > 0 {
                let n = self.skip.min(bytes.len() as u64) as usize;
                self.skip -= n as u64;
                self.pos += n as u64;
                bytes = &bytes[n..];
                continue;
            }
            self.close_finished_contexts();
            let needed = self.header_needed();
            let take = (needed - self.header_len).min(bytes.len());
            self.header[self.header_len..self.header_len + take].copy_from_slice(&bytes[..take]);
            self.header_len += take;
            self.pos += take as u64;
            bytes = &bytes[take..];
            if self.header_len == self.header_needed() {
                self.on_header();
                if self.error.is_none()
                    && self.in_header
                    && self.pos.saturating_add(self.skip) > self.header_limit
                {
                    self.error = Some(WalkError::HeaderTooLarge {
                        limit: self.header_limit,
                    });
                }
            }
        }
    }

    fn finish(mut self) -> Result<(), WalkError> {
        if let Some(error) = self.error {
            return Err(error);
        }
        if self.skip > 0 {
            return Err(WalkError::TruncatedValue { missing: self.skip });
        }
        if self.header_len > 0 {
            return Err(WalkError::TruncatedHeader);
        }
        self.close_finished_contexts();
        if let Some(error) = self.error {
            return Err(error);
        }
        if self.stack.len() != 1 {
            return Err(WalkError::Unclosed);
        }
        Ok(())
    }

    fn close_finished_contexts(&mut self) {
        while let Some(top) = self.stack.last().copied() {
            match top.end() {
                Some(end) if end == self.pos && self.header_len == 0 => {
                    self.stack.pop();
                }
                Some(end) if self.pos > end => {
                    self.error = Some(WalkError::PastContainer { end });
                    return;
                }
                _ => return,
            }
        }
    }

    fn header_needed(&self) -> usize {
        if self.header_len < 8 {
            return 8;
        }
        let (group, _) = self.tag();
        if self.explicit_vr
            && group != 0xFFFE
            && matches!(self.stack.last(), Some(Context::DataSet { .. }))
            && !SHORT_VRS.contains(&&[self.header[4], self.header[5]])
        {
            12
        } else {
            8
        }
    }

    fn u16_at(&self, at: usize) -> u16 {
        let b = [self.header[at], self.header[at + 1]];
        if self.big_endian {
            u16::from_be_bytes(b)
        } else {
            u16::from_le_bytes(b)
        }
    }

    fn u32_at(&self, at: usize) -> u32 {
        let b = [
            self.header[at],
            self.header[at + 1],
            self.header[at + 2],
            self.header[at + 3],
        ];
        if self.big_endian {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        }
    }

    fn tag(&self) -> (u16, u16) {
        (self.u16_at(0), self.u16_at(2))
    }

    fn on_header(&mut self) {
        let tag = self.tag();
        let header_len = self.header_len;
        self.header_len = 0;
        let context = *self.stack.last().unwrap_or(&Context::DataSet { end: None });
        let offset = self.pos - header_len as u64;
        let fail = |fault| Some(WalkError::Misplaced { fault, offset });
        match context {
            Context::DataSet { end } => {
                if tag == ITEM_END {
                    if end.is_none() && self.stack.len() > 1 {
                        self.stack.pop();
                    } else {
                        self.error = fail(Fault::UnexpectedItemDelimiter);
                    }
                    return;
                }
                if tag.0 == 0xFFFE {
                    self.error = fail(Fault::ItemInDataSet);
                    return;
                }
                if self.stack.len() == 1 && tag >= PIXEL_DATA {
                    // Where a header parse stops (`read_until(PIXEL_DATA)`).
                    self.in_header = false;
                }
                let (vr, length) = if !self.explicit_vr {
                    (None, self.u32_at(4))
                } else if header_len == 12 {
                    (Some([self.header[4], self.header[5]]), self.u32_at(8))
                } else {
                    (
                        Some([self.header[4], self.header[5]]),
                        u32::from(self.u16_at(6)),
                    )
                };
                // Implicit VR: the dictionary's VR decides, as in dicom-rs,
                // so a defined-length sequence is followed, not skipped.
                let sequence = match vr.as_ref() {
                    Some(vr) => vr == b"SQ",
                    None => implicit_is_sequence(tag),
                };
                if self.stack.len() >= 2 * MAX_DEPTH && (length == UNDEFINED || sequence) {
                    self.error = Some(WalkError::TooDeep {
                        limit: MAX_DEPTH,
                        offset,
                    });
                    return;
                }
                if length == UNDEFINED {
                    match vr.as_ref() {
                        // Whatever its VR, as dicom-rs reads it.
                        _ if tag == PIXEL_DATA => self.stack.push(Context::Fragments),
                        None | Some(b"SQ") | Some(b"UN") => {
                            self.stack.push(Context::Sequence { end: None })
                        }
                        _ => self.error = fail(Fault::UndefinedLength),
                    }
                } else if sequence {
                    self.stack.push(Context::Sequence {
                        end: Some(self.pos + u64::from(length)),
                    });
                } else {
                    let vr = match vr {
                        Some(code) => dicom_core::VR::from_binary(code),
                        None => Some(implicit_vr(tag)),
                    };
                    let unit = vr.map_or(1, value_unit);
                    if length % unit != 0 {
                        self.error = fail(Fault::PartialValue { length, unit });
                        return;
                    }
                    self.skip = u64::from(length);
                }
            }
            Context::Sequence { end } => {
                let length = self.u32_at(4);
                if tag == ITEM {
                    let item_end = (length != UNDEFINED).then(|| self.pos + u64::from(length));
                    self.stack.push(Context::DataSet { end: item_end });
                } else if tag == SEQUENCE_END && end.is_none() {
                    self.stack.pop();
                } else {
                    self.error = fail(Fault::ExpectedItem);
                }
            }
            Context::Fragments => {
                let length = self.u32_at(4);
                if tag == ITEM && length != UNDEFINED {
                    self.skip = u64::from(length);
                } else if tag == SEQUENCE_END {
                    self.stack.pop();
                } else {
                    self.error = fail(Fault::ExpectedFragment);
                }
            }
        }
    }
}

/// The VR dicom-rs gives an Implicit VR element: OW for Pixel Data and
/// Overlay Data, else the standard dictionary's (UN when it has none).
fn implicit_vr((group, element): (u16, u16)) -> dicom_core::VR {
    use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry};
    if (group, element) == PIXEL_DATA || (group >> 8 == 0x60 && element == 0x3000) {
        return dicom_core::VR::OW;
    }
    dicom_dictionary_std::StandardDataDictionary
        .by_tag(dicom_core::Tag(group, element))
        .map_or(dicom_core::VR::UN, |entry| entry.vr().relaxed())
}

/// Size of one value of a binary VR as dicom-parser reads it (1 for the
/// rest). dicom-parser reads `length / size` values but counts `length`
/// bytes as read, so a length that is not a multiple of the size leaves it
/// out of step with the bytes: the next "header" it reads is value bytes,
/// whose claimed length it allocates.
pub(crate) fn value_unit(vr: dicom_core::VR) -> u32 {
    use dicom_core::VR;
    match vr {
        VR::US | VR::OW | VR::SS => 2,
        VR::AT | VR::FL | VR::OF | VR::SL | VR::OL | VR::UL => 4,
        VR::FD | VR::OD | VR::SV | VR::OV | VR::UV => 8,
        _ => 1,
    }
}

/// Whether dicom-rs reads an Implicit VR element as a sequence: its tag is
/// one the standard dictionary gives VR SQ.
fn implicit_is_sequence((group, element): (u16, u16)) -> bool {
    use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry};
    if (group, element) == PIXEL_DATA || (group >> 8 == 0x60 && element == 0x3000) {
        return false;
    }
    dicom_dictionary_std::StandardDataDictionary
        .by_tag(dicom_core::Tag(group, element))
        .is_some_and(|entry| entry.vr().relaxed() == dicom_core::VR::SQ)
}

#[cfg(test)]
mod tests {
    use super::super::testfiles::{deflate, explicit};
    use super::*;

    fn raw(tag: (u16, u16), length: u32) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&tag.0.to_le_bytes());
        out.extend_from_slice(&tag.1.to_le_bytes());
        out.extend_from_slice(&length.to_le_bytes());
        out
    }

    fn walk(ts: &str, bytes: &[u8], chunk: usize) -> Result<(), String> {
        walk_typed(ts, bytes, chunk).map_err(|e| e.to_string())
    }

    fn walk_typed(ts: &str, bytes: &[u8], chunk: usize) -> Result<(), WalkError> {
        let mut walker = DataSetWalker::for_transfer_syntax(ts);
        for piece in bytes.chunks(chunk.max(1)) {
            walker.feed(piece);
        }
        walker.finish()
    }

    fn sample() -> Vec<u8> {
        let mut data = explicit((0x0008, 0x0018), b"UI", b"1.2.3\0");
        // An undefined-length sequence with one undefined-length item.
        data.extend(explicit((0x0008, 0x1140), b"SQ", &[]).iter().take(8));
        data.extend_from_slice(&UNDEFINED.to_le_bytes());
        data.extend(raw(ITEM, UNDEFINED));
        data.extend(explicit((0x0008, 0x1150), b"UI", b"1.2\0"));
        data.extend(raw(ITEM_END, 0));
        data.extend(raw(SEQUENCE_END, 0));
        // A defined-length sequence with one defined-length item.
        let inner = explicit((0x0008, 0x1155), b"UI", b"1.4\0");
        let mut item = raw(ITEM, inner.len() as u32);
        item.extend(&inner);
        data.extend(explicit((0x0008, 0x1199), b"SQ", &item));
        // Encapsulated pixel data: offset table and one fragment.
        data.extend_from_slice(&[0xE0, 0x7F, 0x10, 0x00, b'O', b'B', 0, 0]);
        data.extend_from_slice(&UNDEFINED.to_le_bytes());
        data.extend(raw(ITEM, 0));
        data.extend(raw(ITEM, 4));
        data.extend_from_slice(&[1, 2, 3, 4]);
        data.extend(raw(SEQUENCE_END, 0));
        data
    }

    #[test]
    fn the_header_is_known_whole_while_pixel_data_still_arrives() {
        let mut data = explicit((0x0020, 0x000D), b"UI", b"1.2.3\0");
        let pixel_data = data.len();
        data.extend(explicit((0x7FE0, 0x0010), b"OW", &[7u8; 1000]));
        let mut walker = DataSetWalker::for_transfer_syntax("1.2.840.10008.1.2.1");
        // Up to the last byte of Pixel Data's 12-byte header: not yet.
        walker.feed(&data[..pixel_data + 11]);
        assert_eq!(walker.past_header(), None);
        walker.feed(&data[pixel_data + 11..pixel_data + 112]);
        assert_eq!(
            walker.past_header(),
            Some(900),
            "the value's bytes still to come"
        );
        walker.feed(&data[pixel_data + 112..]);
        assert_eq!(walker.past_header(), Some(0));
        assert_eq!(walker.finish(), Ok(()));
        // A data set without Pixel Data never says so.
        let mut walker = DataSetWalker::for_transfer_syntax("1.2.840.10008.1.2.1");
        walker.feed(&data[..pixel_data]);
        assert_eq!(walker.past_header(), None);
    }

    #[test]
    fn elements_before_pixel_data_are_held_to_the_header_limit() {
        let data = sample();
        let pixel_data = data
            .windows(4)
            .position(|w| w == [0xE0, 0x7F, 0x10, 0x00])
            .unwrap() as u64;
        let limited = |limit: u64, bytes: &[u8]| {
            let mut walker =
                DataSetWalker::for_transfer_syntax("1.2.840.10008.1.2.1").with_header_limit(limit);
            walker.feed(bytes);
            (walker.error().cloned(), walker.finish())
        };
        // Pixel Data itself, however long, is not the header.
        assert_eq!(limited(pixel_data, &data), (None, Ok(())));
        let refused = Err(WalkError::HeaderTooLarge {
            limit: pixel_data - 1,
        });
        assert_eq!(limited(pixel_data - 1, &data).1, refused);
        // A large value is refused on its header, before its bytes arrive.
        let mut big = explicit((0x0009, 0x1010), b"OB", &[]);
        big[8..12].copy_from_slice(&(200u32 << 20).to_le_bytes());
        let (early, _) = limited(64 << 20, &big);
        assert_eq!(
            early,
            Some(WalkError::HeaderTooLarge { limit: 64 << 20 }),
            "refused from its 12-byte header alone"
        );
        // Without a limit, the same header waits for its value.
        assert_eq!(limited(u64::MAX, &big).0, None);
    }

    #[test]
    fn complete_data_sets_pass_in_any_chunking() {
        let data = sample();
        for chunk in [1, 3, 7, 64, data.len()] {
            assert_eq!(
                walk("1.2.840.10008.1.2.1", &data, chunk),
                Ok(()),
                "chunk {chunk}"
            );
        }
    }

    #[test]
    fn every_truncation_is_detected() {
        let data = sample();
        for cut in 1..data.len() {
            // Cutting exactly between two root elements leaves a valid data set.
            let result = walk("1.2.840.10008.1.2.1", &data[..cut], 5);
            let first = explicit((0x0008, 0x0018), b"UI", b"1.2.3\0").len();
            if cut == first {
                assert!(result.is_ok());
            } else if cut < data.len() {
                let boundary = result.is_ok();
                // The only other valid cut points are after the sequences.
                if boundary {
                    assert!(cut > first, "cut {cut} accepted");
                }
            }
        }
        assert!(walk("1.2.840.10008.1.2.1", &data[..data.len() - 1], 4).is_err());
        assert!(walk("1.2.840.10008.1.2.1", &data[..data.len() - 8], 4).is_err());
    }

    #[test]
    fn a_length_beyond_the_data_is_detected() {
        let mut data = explicit((0x0010, 0x0010), b"PN", b"DOE^JOHN");
        data.extend_from_slice(&[0xE0, 0x7F, 0x10, 0x00, b'O', b'W', 0, 0]);
        data.extend_from_slice(&1000u32.to_le_bytes());
        data.extend_from_slice(&[0; 10]);
        assert!(walk("1.2.840.10008.1.2.1", &data, 16).is_err());
    }

    #[test]
    fn implicit_vr_is_followed() {
        let mut data = raw((0x0008, 0x0018), 6);
        data.extend_from_slice(b"1.2.3\0");
        data.extend(raw((0x0008, 0x1140), UNDEFINED));
        data.extend(raw(ITEM, UNDEFINED));
        data.extend(raw(ITEM_END, 0));
        data.extend(raw(SEQUENCE_END, 0));
        data.extend(raw(PIXEL_DATA, 4));
        data.extend_from_slice(&[0; 4]);
        assert_eq!(walk("1.2.840.10008.1.2", &data, 3), Ok(()));
        assert!(walk("1.2.840.10008.1.2", &data[..data.len() - 2], 3).is_err());
    }

    #[test]
    fn deep_nesting_is_rejected() {
        let mut data = Vec::new();
        for _ in 0..(MAX_DEPTH + 1) {
            data.extend(raw((0x0008, 0x1140), UNDEFINED));
            data.extend(raw(ITEM, UNDEFINED));
        }
        for _ in 0..(MAX_DEPTH + 1) {
            data.extend(raw(ITEM_END, 0));
            data.extend(raw(SEQUENCE_END, 0));
        }
        let result = walk("1.2.840.10008.1.2", &data, 64);
        assert!(result.unwrap_err().contains("nested too deeply"));
        // Within the limit the same shape passes.
        let mut ok = Vec::new();
        for _ in 0..MAX_DEPTH - 1 {
            ok.extend(raw((0x0008, 0x1140), UNDEFINED));
            ok.extend(raw(ITEM, UNDEFINED));
        }
        for _ in 0..MAX_DEPTH - 1 {
            ok.extend(raw(ITEM_END, 0));
            ok.extend(raw(SEQUENCE_END, 0));
        }
        assert_eq!(walk("1.2.840.10008.1.2", &ok, 64), Ok(()));
    }

    /// dicom-parser reads an odd-length US value as whole u16s and loses
    /// step with the bytes; the next header it reads is value bytes, whose
    /// claimed length it allocates (hundreds of megabytes from a few dozen
    /// bytes, found by the fuzz target). Such values are refused.
    #[test]
    fn a_binary_value_of_a_partial_length_is_rejected() {
        // Implicit VR: Rows (0028,0010) is US in the dictionary.
        let mut data = raw((0x0028, 0x0010), 3);
        data.extend_from_slice(&[1, 2, 3]);
        data.extend(raw((0x0010, 0x0010), 8));
        data.extend_from_slice(b"DOE^JOHN");
        let error = walk("1.2.840.10008.1.2", &data, 5).unwrap_err();
        assert!(error.contains("whole number of 2-byte values"), "{error}");
        // Explicit VR: the header's VR decides.
        let data = explicit((0x0009, 0x1010), b"UL", &[0; 6]);
        assert!(walk("1.2.840.10008.1.2.1", &data, 64).is_err());
        let data = explicit((0x0009, 0x1010), b"FD", &[0; 12]);
        assert!(walk("1.2.840.10008.1.2.1", &data, 64).is_err());
        // Whole values, and byte VRs of any length, pass.
        let mut data = explicit((0x0028, 0x0010), b"US", &[0; 4]);
        data.extend(explicit((0x0029, 0x1010), b"OB", &[0; 3]));
        assert_eq!(walk("1.2.840.10008.1.2.1", &data, 64), Ok(()));
        let mut data = raw((0x0028, 0x0010), 2);
        data.extend_from_slice(&[0, 2]);
        assert_eq!(walk("1.2.840.10008.1.2", &data, 64), Ok(()));
    }

    #[test]
    fn garbage_is_rejected() {
        let data = raw(ITEM_END, 0);
        assert!(walk("1.2.840.10008.1.2.1", &data, 8).is_err());
    }

    const DEFLATED_TS: &str = "1.2.840.10008.1.2.1.99";

    /// `depth` explicit-VR undefined-length sequences, each with one
    /// undefined-length item, all closed.
    fn explicit_nesting(depth: usize) -> Vec<u8> {
        let mut open = [0x08, 0x00, 0x40, 0x11, b'S', b'Q', 0, 0].to_vec();
        open.extend_from_slice(&UNDEFINED.to_le_bytes());
        open.extend(raw(ITEM, UNDEFINED));
        let mut close = raw(ITEM_END, 0);
        close.extend(raw(SEQUENCE_END, 0));
        let mut data = open.repeat(depth);
        data.extend(close.repeat(depth));
        data
    }

    #[test]
    fn deflated_data_sets_are_inflated_and_followed_in_any_chunking() {
        let data = deflate(&sample());
        for chunk in [1, 2, 5, 100, data.len()] {
            assert_eq!(walk(DEFLATED_TS, &data, chunk), Ok(()), "chunk {chunk}");
        }
        // One null byte of padding (odd-length streams) is accepted.
        let mut padded = data.clone();
        padded.push(0);
        assert_eq!(walk(DEFLATED_TS, &padded, 7), Ok(()));
        // JPIP Referenced Deflate is deflated too.
        assert_eq!(walk("1.2.840.10008.1.2.4.95", &data, 64), Ok(()));
    }

    #[test]
    fn deeply_nested_deflated_data_sets_are_rejected() {
        // ~1 KB on the wire, 20,000 levels once inflated: the attack that
        // overflowed the header parser's stack.
        let bomb = deflate(&explicit_nesting(20_000));
        assert!(bomb.len() < 4096, "{} bytes", bomb.len());
        let error = walk_typed(DEFLATED_TS, &bomb, 1024).unwrap_err();
        assert!(
            matches!(
                error,
                WalkError::TooDeep {
                    limit: MAX_DEPTH,
                    ..
                }
            ),
            "{error:?}"
        );
        assert!(error.to_string().contains("nested too deeply"), "{error}");
        assert_eq!(
            walk(DEFLATED_TS, &deflate(&explicit_nesting(MAX_DEPTH - 1)), 64),
            Ok(())
        );
    }

    #[test]
    fn deflated_lengths_beyond_the_inflated_data_are_rejected() {
        let mut data = explicit((0x0010, 0x0010), b"PN", b"DOE^JOHN");
        // A private OB element claiming 0xFFFFFFF0 bytes, with 16 present.
        data.extend_from_slice(&[0x09, 0x00, 0x10, 0x10, b'O', b'B', 0, 0]);
        data.extend_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
        data.extend_from_slice(&[0; 16]);
        assert_eq!(
            walk_typed(DEFLATED_TS, &deflate(&data), 64),
            Err(WalkError::TruncatedValue {
                missing: 0xFFFF_FFF0 - 16
            })
        );
        let error = walk(DEFLATED_TS, &deflate(&data), 64).unwrap_err();
        assert!(
            error.contains("before the end of an element value"),
            "{error}"
        );
    }

    #[test]
    fn broken_deflate_streams_are_rejected() {
        let data = deflate(&sample());
        let cut = walk(DEFLATED_TS, &data[..data.len() - 3], 16).unwrap_err();
        assert!(!cut.is_empty());
        let mut trailing = data.clone();
        trailing.extend_from_slice(b"junk");
        let error = walk(DEFLATED_TS, &trailing, 16).unwrap_err();
        assert!(error.contains("follow the end"), "{error}");
        let error = walk(DEFLATED_TS, &[0xFF; 64], 16).unwrap_err();
        assert!(error.contains("cannot be inflated"), "{error}");
    }

    #[test]
    fn inflation_is_bounded() {
        // 64 MiB of one long value: a few dozen kilobytes deflated.
        let mut data = [0x09, 0x00, 0x10, 0x10, b'O', b'B', 0, 0].to_vec();
        data.extend_from_slice(&(64u32 << 20).to_le_bytes());
        data.resize(data.len() + (64 << 20), 0);
        let deflated = deflate(&data);
        assert!(deflated.len() < 128 * 1024);
        let mut walker = DataSetWalker::for_transfer_syntax(DEFLATED_TS);
        walker.inflate.as_mut().unwrap().limit = 16 << 20;
        walker.feed(&deflated);
        let error = walker.finish().unwrap_err();
        assert_eq!(error, WalkError::InflateLimit { limit: 16 << 20 });
        assert!(error.to_string().contains("inflates beyond"), "{error}");
        // Under the default limit the same data set passes.
        assert_eq!(walk(DEFLATED_TS, &deflated, 4096), Ok(()));
    }

    #[test]
    fn defined_length_sequences_in_implicit_vr_count_towards_the_depth() {
        // Referenced Image Sequence is SQ in the dictionary: dicom-rs
        // recurses into it even with a defined length.
        let mut data = raw((0x0008, 0x1155), 4);
        data.extend_from_slice(b"1.2\0");
        for _ in 0..(MAX_DEPTH + 1) {
            let mut item = raw(ITEM, data.len() as u32);
            item.extend(&data);
            data = raw((0x0008, 0x1140), item.len() as u32);
            data.extend(item);
        }
        let error = walk("1.2.840.10008.1.2", &data, 64).unwrap_err();
        assert!(error.contains("nested too deeply"), "{error}");
    }

    #[test]
    fn unknown_explicit_vrs_have_a_four_byte_length() {
        // As dicom-rs reads it: tag, "ZZ", two reserved bytes, 4-byte length.
        let mut data = [0x09, 0x00, 0x10, 0x10, b'Z', b'Z', 0, 0].to_vec();
        data.extend_from_slice(&4u32.to_le_bytes());
        data.extend_from_slice(&[1, 2, 3, 4]);
        assert_eq!(walk("1.2.840.10008.1.2.1", &data, 3), Ok(()));
    }
}
