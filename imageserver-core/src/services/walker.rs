//! A streaming structural check of a received data set.
//!
//! Headers are parsed only up to Pixel Data, so a data set cut short inside
//! its pixel data, or an element whose length runs past the end, would
//! otherwise pass unnoticed. [`DataSetWalker`] follows element, item and
//! delimiter headers as the bytes stream by, skipping values without
//! buffering them, and at the end says whether the data set ended exactly on
//! an element boundary with every sequence and item closed.

/// Value representations whose explicit-VR header has a 4-byte length.
const LONG_VRS: [&[u8; 2]; 13] = [
    b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV",
];
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

/// Follows the structure of a data set fed to it in arbitrary chunks.
#[derive(Debug)]
pub(crate) struct DataSetWalker {
    explicit_vr: bool,
    big_endian: bool,
    pos: u64,
    skip: u64,
    header: [u8; 12],
    header_len: usize,
    stack: Vec<Context>,
    error: Option<String>,
}

impl DataSetWalker {
    /// A walker for a transfer syntax, or `None` when its encoding cannot be
    /// followed byte by byte (deflate).
    pub(crate) fn for_transfer_syntax(ts_uid: &str) -> Option<DataSetWalker> {
        let (explicit_vr, big_endian) = match ts_uid {
            "1.2.840.10008.1.2" => (false, false),
            "1.2.840.10008.1.2.2" => (true, true),
            "1.2.840.10008.1.2.1.99" | "1.2.840.10008.1.2.4.95" => return None,
            _ => (true, false),
        };
        Some(DataSetWalker {
            explicit_vr,
            big_endian,
            pos: 0,
            skip: 0,
            header: [0; 12],
            header_len: 0,
            stack: vec![Context::DataSet { end: None }],
            error: None,
        })
    }

    /// Feeds the next bytes of the data set.
    pub(crate) fn feed(&mut self, mut bytes: &[u8]) {
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
            }
        }
    }

    /// Whether the data set ended cleanly; otherwise why not.
    pub(crate) fn finish(mut self) -> Result<(), String> {
        if let Some(error) = self.error {
            return Err(error);
        }
        if self.skip > 0 {
            return Err(format!(
                "data set ends {} bytes before the end of an element value",
                self.skip
            ));
        }
        if self.header_len > 0 {
            return Err("data set ends inside an element header".into());
        }
        self.close_finished_contexts();
        if let Some(error) = self.error {
            return Err(error);
        }
        if self.stack.len() != 1 {
            return Err("data set ends inside a sequence or item".into());
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
                    self.error = Some(format!("an element runs past its container at byte {end}"));
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
            && LONG_VRS.contains(&&[self.header[4], self.header[5]])
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
        let fail = |what: &str| Some(format!("{what} at byte {}", self.pos - header_len as u64));
        match context {
            Context::DataSet { end } => {
                if tag == ITEM_END {
                    if end.is_none() && self.stack.len() > 1 {
                        self.stack.pop();
                    } else {
                        self.error = fail("unexpected item delimiter");
                    }
                    return;
                }
                if tag.0 == 0xFFFE {
                    self.error = fail("unexpected item tag in a data set");
                    return;
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
                if self.stack.len() >= 2 * MAX_DEPTH
                    && (length == UNDEFINED || vr.as_ref() == Some(b"SQ"))
                {
                    self.error = fail("sequences nested too deeply");
                    return;
                }
                if length == UNDEFINED {
                    match vr.as_ref() {
                        None | Some(b"SQ") | Some(b"UN") => {
                            self.stack.push(Context::Sequence { end: None })
                        }
                        Some(b"OB") | Some(b"OW") if tag == PIXEL_DATA => {
                            self.stack.push(Context::Fragments)
                        }
                        _ => self.error = fail("undefined length on a non-sequence element"),
                    }
                } else if vr.as_ref() == Some(b"SQ") {
                    self.stack.push(Context::Sequence {
                        end: Some(self.pos + u64::from(length)),
                    });
                } else {
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
                    self.error = fail("expected an item in a sequence");
                }
            }
            Context::Fragments => {
                let length = self.u32_at(4);
                if tag == ITEM && length != UNDEFINED {
                    self.skip = u64::from(length);
                } else if tag == SEQUENCE_END {
                    self.stack.pop();
                } else {
                    self.error = fail("expected a pixel data fragment");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn explicit(tag: (u16, u16), vr: &[u8; 2], value: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&tag.0.to_le_bytes());
        out.extend_from_slice(&tag.1.to_le_bytes());
        out.extend_from_slice(vr);
        if LONG_VRS.contains(&vr) {
            out.extend_from_slice(&[0, 0]);
            out.extend_from_slice(&(value.len() as u32).to_le_bytes());
        } else {
            out.extend_from_slice(&(value.len() as u16).to_le_bytes());
        }
        out.extend_from_slice(value);
        out
    }

    fn raw(tag: (u16, u16), length: u32) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&tag.0.to_le_bytes());
        out.extend_from_slice(&tag.1.to_le_bytes());
        out.extend_from_slice(&length.to_le_bytes());
        out
    }

    fn walk(ts: &str, bytes: &[u8], chunk: usize) -> Result<(), String> {
        let mut walker = DataSetWalker::for_transfer_syntax(ts).unwrap();
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

    #[test]
    fn garbage_is_rejected() {
        let data = raw(ITEM_END, 0);
        assert!(walk("1.2.840.10008.1.2.1", &data, 8).is_err());
        assert!(DataSetWalker::for_transfer_syntax("1.2.840.10008.1.2.1.99").is_none());
    }
}
