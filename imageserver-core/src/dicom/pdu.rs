//! Bounded PDU framing over a byte stream (PS3.8 section 9.3).
//!
//! dicom-ul negotiates the association; after that we read and write PDUs on
//! the socket ourselves, because dicom-ul's receive path buffers a whole
//! claimed PDU length before checking it and its P-DATA reader ignores read
//! timeouts.
//!
//! - [`PduReader`] reads one PDU at a time into a reusable buffer and refuses
//!   a claimed length beyond the limits *before* allocating.
//! - [`PData::pdvs`] walks the presentation data values of a P-DATA-TF body
//!   without copying.
//! - [`write_pdata`] and [`copy_pdata`] fragment a message into P-DATA-TF
//!   PDUs that respect the peer's maximum length, writing each PDU with a
//!   single `write_all`.
//! - [`write_pdu`] encodes any other PDU with dicom-ul.
//!
//! All functions are synchronous over [`std::io`]; socket timeouts surface as
//! [`PduError::Io`] with the original [`std::io::ErrorKind`].

use std::io::{self, Read, Write};

use dicom_ul::pdu::Pdu;

/// Length of a PDU header: type (1), reserved (1), PDU length (4, big endian).
pub const PDU_HEADER_LEN: usize = 6;

/// Largest non-P-DATA PDU we accept (A-ASSOCIATE-RQ with many presentation
/// contexts fits).
pub const MAX_CONTROL_PDU_LEN: u32 = 128 * 1024;

/// Ceiling applied to the receive limit given to [`PduReader::new`] when it is
/// 0 ("unlimited") or larger.
pub const MAX_PDATA_LEN_CLAMP: u32 = 16 * 1024 * 1024;

/// PDU-length we use for outgoing P-DATA-TF PDUs when the peer announces no
/// limit (0) or a larger one: keeps memory per association bounded.
pub const MAX_SEND_PDU_LEN: u32 = 1024 * 1024;

/// Length of a PDV item header: item length (4), context id (1), control (1).
const PDV_HEADER_LEN: usize = 6;

/// Header of a P-DATA-TF PDU carrying exactly one PDV.
const PDATA_HEADER_LEN: usize = PDU_HEADER_LEN + PDV_HEADER_LEN;

/// Smallest peer maximum we can honour: room for a 2-byte fragment.
const MIN_SEND_PDU_LEN: u32 = PDV_HEADER_LEN as u32 + 2;

const PDU_TYPE_PDATA: u8 = 0x04;

/// Message control header bit: the fragment carries command information.
const MCH_COMMAND: u8 = 0x01;
/// Message control header bit: the fragment is the last of its message part.
const MCH_LAST: u8 = 0x02;

/// An error while reading or decoding a PDU.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PduError {
    /// The stream failed, timed out or ended inside a PDU; the kind of the
    /// `io::Error` is preserved (`TimedOut`/`WouldBlock`, `UnexpectedEof`...).
    #[error("i/o error on the association")]
    Io(#[source] io::Error),
    /// The peer closed the stream cleanly at a PDU boundary.
    #[error("connection closed by peer")]
    Closed,
    /// The claimed PDU length exceeds our limit; the body was not read.
    #[error("pdu type {pdu_type:#04x} of {length} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// The PDU type byte.
        pdu_type: u8,
        /// The PDU-length field as received.
        length: u32,
        /// The limit that applied.
        max: u32,
    },
    /// The PDU structure is invalid.
    #[error("malformed pdu: {0}")]
    Malformed(String),
    /// The PDU type is not defined by PS3.8; the body was not read.
    #[error("unknown pdu type {0:#04x}")]
    UnknownType(u8),
}

impl From<io::Error> for PduError {
    fn from(e: io::Error) -> Self {
        PduError::Io(e)
    }
}

/// Reads whole PDUs into one reusable buffer, refusing a length beyond the
/// limits BEFORE allocating.
///
/// After any error other than [`PduError::Closed`] the stream position is
/// unspecified and the association should be aborted. The one exception: an
/// `Io` error raised before any byte of the next PDU was read (typically an
/// idle read timeout) leaves the stream at a PDU boundary.
#[derive(Debug)]
pub struct PduReader {
    /// Header and body of the last PDU read.
    buf: Vec<u8>,
    /// Largest accepted PDU-length for P-DATA-TF.
    max_pdata_len: u32,
}

/// One PDU as returned by [`PduReader::read`].
#[derive(Debug)]
pub enum Incoming<'a> {
    /// A P-DATA-TF PDU, borrowed from the reader's buffer.
    PData(PData<'a>),
    /// Any other PDU, decoded with dicom_ul::pdu::read_pdu (non-strict) from
    /// the buffered bytes.
    Other(Pdu),
}

/// The body of a P-DATA-TF PDU (everything after the 6-byte PDU header).
#[derive(Debug, Clone, Copy)]
pub struct PData<'a> {
    body: &'a [u8],
}

/// Iterator over the PDV items of one P-DATA-TF body; each item: u32 BE
/// length (covering the 2 header bytes + data), presentation context id,
/// message control header (bit0 = command, bit1 = last fragment).
///
/// Yields at most one error, then stops.
#[derive(Debug, Clone)]
pub struct PdvIter<'a> {
    rest: &'a [u8],
    /// Set once the iterator yielded an item; an empty body is an error.
    started: bool,
    /// Set after an error: the iterator is exhausted.
    failed: bool,
}

/// One presentation data value: a fragment of a command or a data set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pdv<'a> {
    /// Presentation context id.
    pub pc_id: u8,
    /// Whether the fragment belongs to the command set (else the data set).
    pub is_command: bool,
    /// Whether this is the last fragment of the command or data set.
    pub is_last: bool,
    /// The fragment bytes.
    pub data: &'a [u8],
}

impl PduReader {
    /// `max_pdata_len` is our negotiated maximum P-DATA-TF length (value of
    /// the PDU-length field); 0 ("unlimited") and anything larger are clamped
    /// to [`MAX_PDATA_LEN_CLAMP`] (16 MiB).
    pub fn new(max_pdata_len: u32) -> Self {
        let max_pdata_len = if max_pdata_len == 0 {
            MAX_PDATA_LEN_CLAMP
        } else {
            max_pdata_len.min(MAX_PDATA_LEN_CLAMP)
        };
        PduReader {
            buf: Vec::new(),
            max_pdata_len,
        }
    }

    /// The effective P-DATA-TF length limit after clamping.
    pub fn max_pdata_len(&self) -> u32 {
        self.max_pdata_len
    }

    /// Current capacity of the internal buffer, in bytes.
    pub fn buffer_capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// Reads the next PDU. A P-DATA-TF whose length > max_pdata_len, or
    /// another PDU type > [`MAX_CONTROL_PDU_LEN`], gives
    /// [`PduError::TooLarge`] without reading the body; an undefined PDU type
    /// gives [`PduError::UnknownType`], also without reading the body.
    pub fn read<R: Read>(&mut self, r: &mut R) -> Result<Incoming<'_>, PduError> {
        let mut header = [0u8; PDU_HEADER_LEN];
        if !read_header(r, &mut header)? {
            return Err(PduError::Closed);
        }
        let pdu_type = header[0];
        let length = u32::from_be_bytes([header[2], header[3], header[4], header[5]]);
        let max = match pdu_type {
            PDU_TYPE_PDATA => self.max_pdata_len,
            0x01..=0x03 | 0x05..=0x07 => MAX_CONTROL_PDU_LEN,
            other => return Err(PduError::UnknownType(other)),
        };
        if length > max {
            return Err(PduError::TooLarge {
                pdu_type,
                length,
                max,
            });
        }
        // `length <= max <= 16 MiB`: the allocation is bounded.
        let total = PDU_HEADER_LEN + length as usize;
        self.buf.clear();
        self.buf.extend_from_slice(&header);
        self.buf.resize(total, 0);
        r.read_exact(&mut self.buf[PDU_HEADER_LEN..])?;

        if pdu_type == PDU_TYPE_PDATA {
            return Ok(Incoming::PData(PData {
                body: &self.buf[PDU_HEADER_LEN..],
            }));
        }
        decode_other(&self.buf).map(Incoming::Other)
    }
}

/// Fills `header`; `Ok(false)` on a clean EOF before the first byte.
fn read_header<R: Read>(r: &mut R, header: &mut [u8; PDU_HEADER_LEN]) -> Result<bool, PduError> {
    let mut filled = 0;
    while filled < header.len() {
        match r.read(&mut header[filled..]) {
            Ok(0) if filled == 0 => return Ok(false),
            Ok(0) => {
                return Err(PduError::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "stream ended inside a pdu header",
                )))
            }
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(PduError::Io(e)),
        }
    }
    Ok(true)
}

/// Decodes a complete non-P-DATA PDU (header included) with dicom-ul.
fn decode_other(bytes: &[u8]) -> Result<Pdu, PduError> {
    // dicom-ul's parser is not ours to audit: contain a panic on hostile
    // input instead of taking the whole thread down (defence in depth).
    let parsed = std::panic::catch_unwind(|| {
        dicom_ul::pdu::read_pdu(bytes, dicom_ul::pdu::MAXIMUM_PDU_SIZE, false)
    });
    match parsed {
        Ok(Ok(Some(pdu))) => Ok(pdu),
        Ok(Ok(None)) => Err(PduError::Malformed("incomplete pdu".to_string())),
        Ok(Err(e)) => Err(PduError::Malformed(e.to_string().to_lowercase())),
        Err(_) => Err(PduError::Malformed("pdu decoder panicked".to_string())),
    }
}

impl<'a> PData<'a> {
    /// Iterates over the PDV items of this P-DATA-TF body.
    pub fn pdvs(&self) -> PdvIter<'a> {
        PdvIter::new(self.body)
    }

    /// The raw body: the PDV items, headers included.
    pub fn body(&self) -> &'a [u8] {
        self.body
    }
}

impl<'a> PdvIter<'a> {
    /// Iterates over the PDV items of a raw P-DATA-TF body.
    pub fn new(body: &'a [u8]) -> Self {
        PdvIter {
            rest: body,
            started: false,
            failed: false,
        }
    }

    fn fail(&mut self, msg: String) -> Option<Result<Pdv<'a>, PduError>> {
        self.failed = true;
        self.rest = &[];
        Some(Err(PduError::Malformed(msg)))
    }
}

impl<'a> Iterator for PdvIter<'a> {
    type Item = Result<Pdv<'a>, PduError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        if self.rest.is_empty() {
            if self.started {
                return None;
            }
            return self.fail("p-data-tf without pdv items".to_string());
        }
        self.started = true;
        let Some((len_bytes, after_len)) = self.rest.split_first_chunk::<4>() else {
            return self.fail(format!(
                "pdv item header truncated: {} bytes left",
                self.rest.len()
            ));
        };
        let item_len = u32::from_be_bytes(*len_bytes) as usize;
        if item_len < 2 {
            return self.fail(format!("pdv item length {item_len} is below 2"));
        }
        if item_len > after_len.len() {
            return self.fail(format!(
                "pdv item length {item_len} exceeds the {} bytes left in the pdu",
                after_len.len()
            ));
        }
        let (item, rest) = after_len.split_at(item_len);
        self.rest = rest;
        let mch = item[1];
        Some(Ok(Pdv {
            pc_id: item[0],
            is_command: mch & MCH_COMMAND != 0,
            is_last: mch & MCH_LAST != 0,
            data: &item[2..],
        }))
    }
}

impl std::iter::FusedIterator for PdvIter<'_> {}

/// Largest data fragment per P-DATA-TF PDU for a peer maximum PDU length.
fn fragment_len(peer_max_pdu_len: u32) -> io::Result<usize> {
    let max = match peer_max_pdu_len {
        0 => MAX_SEND_PDU_LEN,
        m if m < MIN_SEND_PDU_LEN => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("peer maximum pdu length {m} leaves no room for data"),
            ))
        }
        m => m.min(MAX_SEND_PDU_LEN),
    };
    Ok(max as usize - PDV_HEADER_LEN)
}

/// Writes the P-DATA-TF + PDV header for `data_len` bytes into `hdr`.
fn put_pdata_header(hdr: &mut [u8], pc_id: u8, is_command: bool, is_last: bool, data_len: usize) {
    // data_len <= MAX_SEND_PDU_LEN - 6, so these fit in u32
    let pdv_len = (data_len + 2) as u32;
    let pdu_len = pdv_len + 4;
    hdr[0] = PDU_TYPE_PDATA;
    hdr[1] = 0;
    hdr[2..6].copy_from_slice(&pdu_len.to_be_bytes());
    hdr[6..10].copy_from_slice(&pdv_len.to_be_bytes());
    hdr[10] = pc_id;
    let mut mch = 0;
    if is_command {
        mch |= MCH_COMMAND;
    }
    if is_last {
        mch |= MCH_LAST;
    }
    hdr[11] = mch;
}

/// Fragments `data` into P-DATA-TF PDUs with one PDV each whose PDU-length
/// field ≤ `peer_max_pdu_len` (0 = unlimited; the PDU length counts the 6
/// bytes of PDV header, so data per PDU ≤ max − 6), marking the last
/// fragment. Each PDU is assembled in `scratch` and written with ONE
/// `write_all` call. Empty `data` still sends one PDV with the last flag.
///
/// Outgoing PDUs never exceed [`MAX_SEND_PDU_LEN`]; a peer maximum below 8
/// gives `InvalidInput`.
pub fn write_pdata<W: Write>(
    w: &mut W,
    scratch: &mut Vec<u8>,
    pc_id: u8,
    is_command: bool,
    data: &[u8],
    peer_max_pdu_len: u32,
) -> io::Result<()> {
    let frag = fragment_len(peer_max_pdu_len)?;
    let mut rest = data;
    loop {
        let n = rest.len().min(frag);
        let (chunk, tail) = rest.split_at(n);
        let is_last = tail.is_empty();
        scratch.clear();
        scratch.resize(PDATA_HEADER_LEN, 0);
        put_pdata_header(scratch, pc_id, is_command, is_last, n);
        scratch.extend_from_slice(chunk);
        w.write_all(scratch)?;
        if is_last {
            return Ok(());
        }
        rest = tail;
    }
}

/// Streams a data set from `src` as data PDVs (is_command = false) until
/// EOF, with the fragment rules of [`write_pdata`], marking the last
/// fragment; an empty source sends one empty last PDV. Returns the number of
/// data bytes sent. Memory is bounded by one PDU (held in `scratch`).
pub fn copy_pdata<R: Read, W: Write>(
    w: &mut W,
    scratch: &mut Vec<u8>,
    src: &mut R,
    pc_id: u8,
    peer_max_pdu_len: u32,
) -> io::Result<u64> {
    let frag = fragment_len(peer_max_pdu_len)?;
    // One PDU plus one look-ahead byte: reading `frag + 1` bytes tells us
    // whether the fragment is the last one without a second buffer.
    let cap = PDATA_HEADER_LEN + frag + 1;
    scratch.clear();
    scratch.resize(cap, 0);
    let mut filled = PDATA_HEADER_LEN;
    let mut sent: u64 = 0;
    loop {
        // fill up to frag + 1 data bytes or EOF
        let mut eof = false;
        while filled < cap {
            match src.read(&mut scratch[filled..cap]) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        let data_len = filled - PDATA_HEADER_LEN;
        if eof {
            // everything left fits in this PDU (data_len <= frag)
            put_pdata_header(scratch, pc_id, false, true, data_len);
            w.write_all(&scratch[..filled])?;
            sent += data_len as u64;
            return Ok(sent);
        }
        // frag + 1 bytes available: send frag, keep the look-ahead byte
        put_pdata_header(scratch, pc_id, false, false, frag);
        w.write_all(&scratch[..PDATA_HEADER_LEN + frag])?;
        sent += frag as u64;
        scratch[PDATA_HEADER_LEN] = scratch[cap - 1];
        filled = PDATA_HEADER_LEN + 1;
    }
}

/// Encodes any PDU with dicom_ul::pdu::write_pdu and writes it in one
/// `write_all`.
pub fn write_pdu<W: Write>(w: &mut W, pdu: &Pdu) -> Result<(), PduError> {
    let mut buf = Vec::new();
    dicom_ul::pdu::write_pdu(&mut buf, pdu)
        .map_err(|e| PduError::Malformed(format!("cannot encode pdu: {e}").to_lowercase()))?;
    w.write_all(&buf)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use dicom_ul::pdu::{AbortRQServiceProviderReason, AbortRQSource};
    use std::io::Cursor;

    /// Deterministic pseudo-random bytes.
    fn pattern(len: usize) -> Vec<u8> {
        let mut x: u32 = 0x1234_5678;
        (0..len)
            .map(|_| {
                x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (x >> 24) as u8
            })
            .collect()
    }

    /// Reads P-DATA PDUs until a last fragment; checks every PDU length and
    /// returns (reassembled data, number of PDUs).
    fn reassemble(wire: &[u8], max: u32, pc_id: u8, is_command: bool) -> (Vec<u8>, usize) {
        let mut reader = PduReader::new(max);
        let mut cur = Cursor::new(wire);
        let mut out = Vec::new();
        let mut pdus = 0;
        loop {
            let Incoming::PData(pdata) = reader.read(&mut cur).expect("read pdu") else {
                panic!("expected p-data");
            };
            pdus += 1;
            assert!(pdata.body().len() <= max as usize);
            let mut last = false;
            for pdv in pdata.pdvs() {
                let pdv = pdv.expect("pdv");
                assert!(!last, "data after the last fragment");
                assert_eq!(pdv.pc_id, pc_id);
                assert_eq!(pdv.is_command, is_command);
                out.extend_from_slice(pdv.data);
                last = pdv.is_last;
            }
            if last {
                break;
            }
        }
        assert!(matches!(reader.read(&mut cur), Err(PduError::Closed)));
        (out, pdus)
    }

    /// Counts `write` calls and bytes, to check one write_all per PDU.
    struct CountingSink {
        bytes: Vec<u8>,
        writes: usize,
    }

    impl Write for CountingSink {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.writes += 1;
            self.bytes.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// A reader that hands out at most `chunk` bytes per call.
    struct Trickle<'a> {
        data: &'a [u8],
        chunk: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.data.len().min(buf.len()).min(self.chunk);
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    #[test]
    fn round_trips() {
        for max in [4096u32, 16384, 1024 * 1024] {
            let frag = max as usize - 6;
            for len in [0, 1, frag, 2 * frag, frag + 1, 200_000] {
                let data = pattern(len);
                let expected_pdus = len.div_ceil(frag).max(1);

                let mut sink = CountingSink {
                    bytes: Vec::new(),
                    writes: 0,
                };
                let mut scratch = Vec::new();
                write_pdata(&mut sink, &mut scratch, 3, true, &data, max).unwrap();
                let (got, pdus) = reassemble(&sink.bytes, max, 3, true);
                assert_eq!(got, data, "write_pdata max={max} len={len}");
                assert_eq!(pdus, expected_pdus, "write_pdata max={max} len={len}");
                assert_eq!(sink.writes, pdus, "one write per pdu");

                for chunk in [usize::MAX, 7] {
                    let mut sink = CountingSink {
                        bytes: Vec::new(),
                        writes: 0,
                    };
                    let mut src = Trickle { data: &data, chunk };
                    let sent = copy_pdata(&mut sink, &mut scratch, &mut src, 5, max).unwrap();
                    assert_eq!(sent, len as u64);
                    let (got, pdus) = reassemble(&sink.bytes, max, 5, false);
                    assert_eq!(got, data, "copy_pdata max={max} len={len} chunk={chunk}");
                    assert_eq!(pdus, expected_pdus, "copy_pdata max={max} len={len}");
                    assert_eq!(sink.writes, pdus, "one write per pdu");
                }
            }
        }
    }

    #[test]
    fn unlimited_peer_uses_bounded_pdus() {
        let data = pattern(3 * MAX_SEND_PDU_LEN as usize);
        let mut wire = Vec::new();
        write_pdata(&mut wire, &mut Vec::new(), 1, false, &data, 0).unwrap();
        let (got, pdus) = reassemble(&wire, MAX_SEND_PDU_LEN, 1, false);
        assert_eq!(got, data);
        assert_eq!(pdus, 4);
    }

    #[test]
    fn tiny_peer_max_is_refused() {
        for max in [1u32, 6, 7] {
            let err = write_pdata(&mut Vec::new(), &mut Vec::new(), 1, false, b"x", max)
                .expect_err("must refuse");
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        }
        let mut wire = Vec::new();
        write_pdata(&mut wire, &mut Vec::new(), 1, false, b"abcde", 8).unwrap();
        assert_eq!(reassemble(&wire, 8, 1, false), (b"abcde".to_vec(), 3));
    }

    #[test]
    fn huge_claimed_length_is_refused_without_allocating() {
        let cases: &[(&[u8], u8, u32, u32)] = &[
            (&[0x04, 0, 0xFF, 0xFF, 0xFF, 0xFF], 0x04, u32::MAX, 16384),
            (&[0x04, 0, 0, 0, 0x40, 0x01], 0x04, 16385, 16384),
            (&[0x01, 0, 0x00, 0x02, 0x00, 0x01], 0x01, 128 * 1024 + 1, 0),
            (&[0x05, 0, 0xF0, 0, 0, 0], 0x05, 0xF000_0000, 0),
        ];
        for &(wire, ty, len, max) in cases {
            let mut reader = PduReader::new(16384);
            let expected_max = if ty == 0x04 { max } else { MAX_CONTROL_PDU_LEN };
            match reader.read(&mut Cursor::new(wire)) {
                Err(PduError::TooLarge {
                    pdu_type,
                    length,
                    max,
                }) => {
                    assert_eq!((pdu_type, length, max), (ty, len, expected_max));
                }
                other => panic!("expected TooLarge, got {other:?}"),
            }
            assert!(reader.buffer_capacity() < 1024, "must not allocate");
        }
    }

    #[test]
    fn receive_limit_is_clamped() {
        assert_eq!(PduReader::new(0).max_pdata_len(), MAX_PDATA_LEN_CLAMP);
        assert_eq!(
            PduReader::new(u32::MAX).max_pdata_len(),
            MAX_PDATA_LEN_CLAMP
        );
        assert_eq!(PduReader::new(4096).max_pdata_len(), 4096);
    }

    #[test]
    fn truncated_input() {
        let mut full = Vec::new();
        write_pdata(&mut full, &mut Vec::new(), 1, false, &pattern(100), 4096).unwrap();
        for cut in [1, 3, 5, 6, 7, 11, 12, 50, full.len() - 1] {
            let mut reader = PduReader::new(4096);
            match reader.read(&mut Cursor::new(&full[..cut])) {
                Err(PduError::Io(e)) => assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof),
                other => panic!("cut {cut}: expected UnexpectedEof, got {other:?}"),
            }
        }
        let mut reader = PduReader::new(4096);
        assert!(matches!(
            reader.read(&mut Cursor::new(&[][..])),
            Err(PduError::Closed)
        ));
    }

    #[test]
    fn io_errors_keep_their_kind() {
        struct Failing;
        impl Read for Failing {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::ErrorKind::WouldBlock.into())
            }
        }
        match PduReader::new(4096).read(&mut Failing) {
            Err(PduError::Io(e)) => assert_eq!(e.kind(), io::ErrorKind::WouldBlock),
            other => panic!("got {other:?}"),
        }
    }

    #[test]
    fn unknown_pdu_type() {
        for ty in [0x00u8, 0x08, 0xFF] {
            let wire = [ty, 0, 0, 0, 0, 4, 0, 0, 0, 0];
            match PduReader::new(4096).read(&mut Cursor::new(&wire[..])) {
                Err(PduError::UnknownType(t)) => assert_eq!(t, ty),
                other => panic!("got {other:?}"),
            }
        }
    }

    /// Builds a P-DATA-TF PDU from a raw body.
    fn pdata_pdu(body: &[u8]) -> Vec<u8> {
        let mut v = vec![0x04, 0];
        v.extend_from_slice(&(body.len() as u32).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn pdv_parsing_table() {
        type Expect = Result<Vec<(u8, bool, bool, &'static [u8])>, ()>;
        let cases: &[(&str, &[u8], Expect)] = &[
            (
                "two items",
                &[0, 0, 0, 3, 1, 0x03, 0xAA, 0, 0, 0, 2, 3, 0x02],
                Ok(vec![(1, true, true, &[0xAA]), (3, false, true, &[])]),
            ),
            ("empty body", &[], Err(())),
            ("zero length item", &[0, 0, 0, 0, 1, 0], Err(())),
            ("length 1 item", &[0, 0, 0, 1, 1, 0], Err(())),
            ("beyond body", &[0, 0, 0, 9, 1, 0, 1, 2], Err(())),
            ("huge length", &[0xFF, 0xFF, 0xFF, 0xFF, 1, 0], Err(())),
            ("truncated item header", &[0, 0, 0, 2, 1, 2, 0, 0], Err(())),
        ];
        for (name, body, expect) in cases {
            let wire = pdata_pdu(body);
            let mut reader = PduReader::new(4096);
            let Incoming::PData(pdata) = reader.read(&mut Cursor::new(&wire[..])).unwrap() else {
                panic!("{name}: expected p-data");
            };
            let got: Result<Vec<_>, _> = pdata
                .pdvs()
                .map(|r| r.map(|p| (p.pc_id, p.is_command, p.is_last, p.data)))
                .collect();
            match (got, expect) {
                (Ok(g), Ok(e)) => assert_eq!(&g, e, "{name}"),
                (Err(PduError::Malformed(_)), Err(())) => {}
                (g, e) => panic!("{name}: got {g:?}, expected {e:?}"),
            }
            // errors are yielded once, then the iterator ends
            let mut it = pdata.pdvs();
            while let Some(r) = it.next() {
                if r.is_err() {
                    assert!(it.next().is_none(), "{name}");
                }
            }
        }
    }

    #[test]
    fn control_pdus_decode_to_other() {
        let pdus = [
            Pdu::ReleaseRQ,
            Pdu::ReleaseRP,
            Pdu::AbortRQ {
                source: AbortRQSource::ServiceUser,
            },
            Pdu::AbortRQ {
                source: AbortRQSource::ServiceProvider(AbortRQServiceProviderReason::UnexpectedPdu),
            },
        ];
        let mut wire = Vec::new();
        for pdu in &pdus {
            write_pdu(&mut wire, pdu).unwrap();
        }
        let mut reader = PduReader::new(4096);
        let mut cur = Cursor::new(&wire[..]);
        for pdu in &pdus {
            match reader.read(&mut cur).unwrap() {
                Incoming::Other(got) => assert_eq!(&got, pdu),
                Incoming::PData(_) => panic!("expected control pdu"),
            }
        }
        assert!(matches!(reader.read(&mut cur), Err(PduError::Closed)));
    }

    #[test]
    fn malformed_control_pdu() {
        // A-ABORT needs 4 body bytes
        let wire = [0x07, 0, 0, 0, 0, 2, 0, 0];
        assert!(matches!(
            PduReader::new(4096).read(&mut Cursor::new(&wire[..])),
            Err(PduError::Malformed(_))
        ));
    }

    /// Deterministic mutation of P-DATA bodies: the PDV walk never panics
    /// and every yielded fragment stays inside the body.
    #[test]
    fn pdv_iter_fuzz() {
        let mut seed = Vec::new();
        seed.extend_from_slice(&[0, 0, 0, 6, 1, 0x03, 1, 2, 3, 4]);
        seed.extend_from_slice(&[0, 0, 0, 3, 3, 0x02, 9]);
        let mut x: u64 = 42;
        let mut next = || {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (x >> 33) as usize
        };
        for _ in 0..10_000 {
            let mut body = seed.clone();
            for _ in 0..(next() % 4 + 1) {
                match next() % 3 {
                    0 => {
                        let i = next() % body.len();
                        body[i] = next() as u8;
                    }
                    1 => body.truncate(next() % (body.len() + 1)),
                    _ => body.push(next() as u8),
                }
                if body.is_empty() {
                    break;
                }
            }
            let total: usize = PdvIter::new(&body)
                .filter_map(Result::ok)
                .map(|p| p.data.len() + 6)
                .sum();
            assert!(total <= body.len());
        }
    }

    /// FIXME(dicom-ul 0.10.1): `PDataWriter::write` leaves a PDU buffer that
    /// an earlier write filled *exactly* unsent; the next `write` then sends
    /// it but consumes nothing and returns `Ok(0)`, so `write_all` and
    /// `io::copy` fail with `WriteZero` (a large C-STORE died after 4 MiB).
    /// This is why we stream P-DATA with our own [`write_pdata`] and
    /// [`copy_pdata`]. When this test starts failing, dicom-ul is fixed.
    ///
    /// `PDataWriter::new` is `pub(crate)`: the only public way to get one is
    /// `send_pdata` on an association, and associations are built on a
    /// `TcpStream`, so this test negotiates over loopback instead of writing
    /// into a `Vec<u8>`.
    #[test]
    fn dicom_ul_pdata_writer_exact_fill_bug() {
        use dicom_ul::{ClientAssociationOptions, ServerAssociationOptions};
        use std::net::TcpListener;

        const VERIFICATION: &str = "1.2.840.10008.1.1";
        const MAX: u32 = 16384;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (socket, _) = listener.accept().unwrap();
            let mut assoc = ServerAssociationOptions::new()
                .accept_any()
                .with_abstract_syntax(VERIFICATION)
                .max_pdu_length(MAX)
                .establish(socket)
                .unwrap();
            // drain until the client goes away
            let mut sink = Vec::new();
            let _ = assoc.inner_stream().read_to_end(&mut sink);
            sink.len()
        });

        let mut client = ClientAssociationOptions::new()
            .with_abstract_syntax(VERIFICATION)
            .max_pdu_length(MAX)
            .establish(addr)
            .unwrap();
        assert_eq!(client.acceptor_max_pdu_length(), MAX);
        let pc_id = client.presentation_contexts()[0].id;
        let frag = MAX as usize - 6;
        let data = pattern(2 * frag);

        let mut writer = client.send_pdata(pc_id);
        // exactly fills the first PDU: accepted in full, nothing sent yet
        assert_eq!(writer.write(&data[..frag]).unwrap(), frag);
        // FIXME: the correct result is Ok(n > 0); dicom-ul returns Ok(0)
        assert_eq!(writer.write(&data[frag..]).unwrap(), 0);
        writer.abandon();

        // ... hence write_all reports WriteZero
        let mut writer = client.send_pdata(pc_id);
        writer.write_all(&data[..frag]).unwrap();
        let err = writer.write_all(&data[frag..]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WriteZero);
        writer.abandon();

        drop(client); // closes the socket: the server thread ends
        assert!(server.join().unwrap() > 0);
    }

    /// The exact-fill sizes that break dicom-ul's writer work with ours,
    /// including when the source hands out exactly one fragment per read.
    #[test]
    fn exact_fill_sizes_work_with_our_writers() {
        for max in [4096u32, 16384, 1024 * 1024] {
            let frag = max as usize - 6;
            for len in [frag, 2 * frag, 4 * frag] {
                let data = pattern(len);
                let mut wire = Vec::new();
                let mut scratch = Vec::new();
                write_pdata(&mut wire, &mut scratch, 1, false, &data, max).unwrap();
                assert_eq!(reassemble(&wire, max, 1, false), (data.clone(), len / frag));

                let mut wire = Vec::new();
                let mut src = Trickle {
                    data: &data,
                    chunk: frag,
                };
                let sent = copy_pdata(&mut wire, &mut scratch, &mut src, 1, max).unwrap();
                assert_eq!(sent, len as u64);
                assert_eq!(reassemble(&wire, max, 1, false), (data, len / frag));
            }
        }
    }
}
