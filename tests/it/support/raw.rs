//! A tiny hand-rolled DICOM upper-layer client for hostile-peer tests: it
//! writes PDUs byte by byte (PS3.8 §9.3) so a test can send exactly the
//! malformed, truncated or slow traffic a real client never would.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// The DICOM application context name.
pub const APPLICATION_CONTEXT: &str = "1.2.840.10008.3.1.1.1";
/// Implicit VR Little Endian, the default transfer syntax.
pub const IMPLICIT_VR_LITTLE_ENDIAN: &str = "1.2.840.10008.1.2";
/// The Verification SOP class (C-ECHO).
pub const VERIFICATION: &str = "1.2.840.10008.1.1";
/// CT Image Storage.
pub const CT_IMAGE_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.2";

/// PDU types.
pub mod pdu_type {
    /// A-ASSOCIATE-RQ.
    pub const ASSOCIATE_RQ: u8 = 0x01;
    /// A-ASSOCIATE-AC.
    pub const ASSOCIATE_AC: u8 = 0x02;
    /// A-ASSOCIATE-RJ.
    pub const ASSOCIATE_RJ: u8 = 0x03;
    /// P-DATA-TF.
    pub const P_DATA_TF: u8 = 0x04;
    /// A-RELEASE-RQ.
    pub const RELEASE_RQ: u8 = 0x05;
    /// A-RELEASE-RP.
    pub const RELEASE_RP: u8 = 0x06;
    /// A-ABORT.
    pub const ABORT: u8 = 0x07;
}

/// Largest PDU this client accepts from the server (its own safety bound).
const MAX_INCOMING_PDU: u32 = 4 << 20;
/// The PDU size this client proposes and sends.
pub const CLIENT_MAX_PDU: u32 = 16384;

/// A-ASSOCIATE-RJ for a called AE title the server does not answer to:
/// rejected-permanent, by the service user, called AE title not recognised
/// (PS3.8 §9.3.4).
pub const REJECT_CALLED_AE: Pdu = Pdu::AssociateRj {
    result: 1,
    source: 1,
    reason: 7,
};

/// A-ASSOCIATE-RJ for a calling AE title the partition does not know:
/// rejected-permanent, by the service user, calling AE title not recognised.
pub const REJECT_CALLING_AE: Pdu = Pdu::AssociateRj {
    result: 1,
    source: 1,
    reason: 3,
};

/// A-ASSOCIATE-RJ beyond an association limit: rejected-transient, by the
/// service provider (presentation), local limit exceeded.
pub const REJECT_LOCAL_LIMIT: Pdu = Pdu::AssociateRj {
    result: 2,
    source: 3,
    reason: 2,
};

/// A PDU as received from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pdu {
    /// A-ASSOCIATE-AC with its presentation context results.
    AssociateAc {
        /// The accepted or refused contexts.
        contexts: Vec<ContextResult>,
        /// The server's maximum PDU length (0 = unlimited).
        max_pdu: u32,
    },
    /// A-ASSOCIATE-RJ.
    AssociateRj {
        /// 1 permanent, 2 transient.
        result: u8,
        /// Who rejected.
        source: u8,
        /// Why.
        reason: u8,
    },
    /// P-DATA-TF with its presentation data values.
    PData(Vec<Pdv>),
    /// A-RELEASE-RQ.
    ReleaseRq,
    /// A-RELEASE-RP.
    ReleaseRp,
    /// A-ABORT.
    Abort {
        /// Who aborted.
        source: u8,
        /// Why.
        reason: u8,
    },
    /// Anything else.
    Unknown {
        /// The PDU type byte.
        pdu_type: u8,
        /// Its length field.
        length: u32,
    },
}

/// One presentation context of an A-ASSOCIATE-AC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContextResult {
    /// The presentation context ID.
    pub id: u8,
    /// 0 acceptance, 1–4 refusal reasons.
    pub result: u8,
    /// The accepted transfer syntax.
    pub transfer_syntax: String,
}

/// One presentation data value of a P-DATA-TF.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pdv {
    /// The presentation context ID.
    pub context_id: u8,
    /// A command fragment (else a data set fragment).
    pub is_command: bool,
    /// The last fragment of its message.
    pub is_last: bool,
    /// The fragment bytes.
    pub data: Vec<u8>,
}

/// How a connection ended from the client's point of view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectionEnd {
    /// The server closed (or reset) the TCP connection; the PDUs it sent
    /// before are listed (typically one A-ABORT or A-ASSOCIATE-RJ).
    Closed {
        /// PDUs received before the close.
        pdus: Vec<Pdu>,
    },
}

/// A proposed presentation context: ID, abstract syntax, transfer syntaxes.
#[derive(Debug, Clone)]
pub struct Proposal {
    /// Odd presentation context ID.
    pub id: u8,
    /// Abstract syntax (SOP class) UID.
    pub abstract_syntax: String,
    /// Transfer syntaxes, in order of preference.
    pub transfer_syntaxes: Vec<String>,
}

impl Proposal {
    /// A context with Implicit VR Little Endian only.
    pub fn implicit(id: u8, abstract_syntax: &str) -> Proposal {
        Proposal {
            id,
            abstract_syntax: abstract_syntax.to_string(),
            transfer_syntaxes: vec![IMPLICIT_VR_LITTLE_ENDIAN.to_string()],
        }
    }
}

/// A raw TCP connection to a DICOM peer.
#[derive(Debug)]
pub struct RawPeer {
    stream: TcpStream,
    next_message_id: u16,
}

impl RawPeer {
    /// Connects (TCP only; no PDU is sent).
    pub fn connect(addr: SocketAddr) -> RawPeer {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
        RawPeer::over(stream)
    }

    /// Connects to an IPv4 `addr` from the loopback address `local` (e.g.
    /// 127.0.0.2): another host, as the server sees it.
    pub fn connect_from(local: std::net::Ipv4Addr, addr: SocketAddr) -> RawPeer {
        use std::os::fd::FromRawFd;
        let SocketAddr::V4(remote) = addr else {
            panic!("connect_from needs an IPv4 address, not {addr}")
        };
        let sockaddr = |ip: std::net::Ipv4Addr, port: u16| libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(ip).to_be(),
            },
            sin_zero: [0; 8],
        };
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        // SAFETY: a fresh socket, plain sockaddr_in values of the right
        // length, and the descriptor handed to exactly one TcpStream.
        let stream = unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
            let stream = TcpStream::from_raw_fd(fd);
            let local_addr = sockaddr(local, 0);
            let bound = libc::bind(fd, (&raw const local_addr).cast(), len);
            assert_eq!(
                bound,
                0,
                "bind {local}: {}",
                std::io::Error::last_os_error()
            );
            let remote_addr = sockaddr(*remote.ip(), remote.port());
            let connected = libc::connect(fd, (&raw const remote_addr).cast(), len);
            assert_eq!(
                connected,
                0,
                "connect to {addr} from {local}: {}",
                std::io::Error::last_os_error()
            );
            stream
        };
        RawPeer::over(stream)
    }

    fn over(stream: TcpStream) -> RawPeer {
        stream.set_nodelay(true).expect("set TCP_NODELAY");
        stream
            .set_write_timeout(Some(Duration::from_secs(10)))
            .expect("set the write timeout");
        RawPeer {
            stream,
            next_message_id: 1,
        }
    }

    /// Connects and negotiates an association; panics unless accepted.
    pub fn associate(addr: SocketAddr, called_ae: &str, proposals: &[Proposal]) -> RawPeer {
        let mut peer = RawPeer::connect(addr);
        match peer.request_association(called_ae, "RAWSCU", proposals, CLIENT_MAX_PDU) {
            Some(Pdu::AssociateAc { contexts, .. }) => {
                for proposal in proposals {
                    let accepted = contexts
                        .iter()
                        .any(|context| context.id == proposal.id && context.result == 0);
                    assert!(accepted, "context {proposal:?} refused: {contexts:?}");
                }
            }
            other => panic!("association to {addr} not accepted: {other:?}"),
        }
        peer
    }

    /// Connects and negotiates an association as `calling_ae`; panics
    /// unless every proposed context is accepted.
    pub fn associate_as(
        addr: SocketAddr,
        called_ae: &str,
        calling_ae: &str,
        proposals: &[Proposal],
    ) -> RawPeer {
        let mut peer = RawPeer::connect(addr);
        match peer.request_association(called_ae, calling_ae, proposals, CLIENT_MAX_PDU) {
            Some(Pdu::AssociateAc { contexts, .. }) => {
                for proposal in proposals {
                    assert!(
                        contexts
                            .iter()
                            .any(|c| c.id == proposal.id && c.result == 0),
                        "context {proposal:?} refused to {calling_ae}: {contexts:?}"
                    );
                }
            }
            other => panic!("association of {calling_ae} to {addr} not accepted: {other:?}"),
        }
        peer
    }

    /// Sends an A-ASSOCIATE-RQ and returns the reply PDU (`None` if the
    /// server closed the connection instead of answering within 10 s).
    pub fn request_association(
        &mut self,
        called_ae: &str,
        calling_ae: &str,
        proposals: &[Proposal],
        max_pdu: u32,
    ) -> Option<Pdu> {
        let request = associate_rq(called_ae, calling_ae, proposals, max_pdu);
        self.send(&request).expect("send A-ASSOCIATE-RQ");
        self.read_pdu(Duration::from_secs(10))
            .expect("read the association reply")
    }

    /// Writes raw bytes.
    pub fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)?;
        self.stream.flush()
    }

    /// Reads one PDU; `Ok(None)` when the server closed the connection
    /// (EOF or reset), an error of kind `WouldBlock`/`TimedOut` when nothing
    /// complete arrived within `timeout`.
    pub fn read_pdu(&mut self, timeout: Duration) -> io::Result<Option<Pdu>> {
        self.stream.set_read_timeout(Some(timeout))?;
        let mut header = [0u8; 6];
        match read_exact_or_eof(&mut self.stream, &mut header)? {
            ReadOutcome::Eof => return Ok(None),
            ReadOutcome::Full => {}
        }
        let pdu_type = header[0];
        let length = u32::from_be_bytes(header[2..6].try_into().expect("four bytes"));
        if length > MAX_INCOMING_PDU {
            return Ok(Some(Pdu::Unknown { pdu_type, length }));
        }
        let mut body = vec![0u8; length as usize];
        match read_exact_or_eof(&mut self.stream, &mut body)? {
            ReadOutcome::Eof => return Ok(None),
            ReadOutcome::Full => {}
        }
        Ok(Some(parse_pdu(pdu_type, length, &body)))
    }

    /// Waits until the server closes the connection, collecting the PDUs it
    /// sends first; panics if it is still open after `bound`.
    pub fn expect_closed_within(&mut self, bound: Duration) -> ConnectionEnd {
        let deadline = Instant::now() + bound;
        let mut pdus = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "the server kept the connection open for more than {bound:?} (PDUs seen: {pdus:?})"
            );
            match self.read_pdu(left.min(Duration::from_millis(500))) {
                Ok(None) => return ConnectionEnd::Closed { pdus },
                Ok(Some(received)) => {
                    if received == Pdu::ReleaseRq {
                        // A server-initiated release: answer it.
                        let _ = self.send(&pdu(pdu_type::RELEASE_RP, &[0, 0, 0, 0]));
                    }
                    pdus.push(received);
                }
                Err(e) if is_timeout(&e) => {}
                // A reset is a close too.
                Err(_) => return ConnectionEnd::Closed { pdus },
            }
        }
    }

    /// Sends one P-DATA-TF carrying one PDV.
    pub fn send_pdv(
        &mut self,
        context_id: u8,
        is_command: bool,
        is_last: bool,
        data: &[u8],
    ) -> io::Result<()> {
        self.send(&p_data_tf(context_id, is_command, is_last, data))
    }

    /// Sends a whole DIMSE message: the command in one PDV, then the data set
    /// (if any) in fragments that fit [`CLIENT_MAX_PDU`], the last flagged.
    pub fn send_message(
        &mut self,
        context_id: u8,
        command: &[u8],
        dataset: Option<&[u8]>,
    ) -> io::Result<()> {
        self.send_pdv(context_id, true, true, command)?;
        if let Some(dataset) = dataset {
            if dataset.is_empty() {
                return self.send_pdv(context_id, false, true, &[]);
            }
            // PDU header (6) and PDV header (6) take 12 bytes of the PDU.
            let fragment_len = CLIENT_MAX_PDU as usize - 12;
            let n_fragments = dataset.len().div_ceil(fragment_len);
            for (fragment_idx, fragment) in dataset.chunks(fragment_len).enumerate() {
                self.send_pdv(context_id, false, fragment_idx + 1 == n_fragments, fragment)?;
            }
        }
        Ok(())
    }

    /// Reads a DIMSE response and returns its Status (0000,0900); `None` if
    /// the server closed or aborted instead.
    pub fn read_status(&mut self, timeout: Duration) -> Option<u16> {
        let deadline = Instant::now() + timeout;
        let mut command = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no DIMSE response within {timeout:?}");
            match self.read_pdu(left) {
                Ok(Some(Pdu::PData(pdvs))) => {
                    for pdv in pdvs {
                        assert!(pdv.is_command, "a response carried a data set");
                        command.extend_from_slice(&pdv.data);
                        if pdv.is_last {
                            return Some(command_status(&command));
                        }
                    }
                }
                Ok(Some(Pdu::Abort { .. })) | Ok(None) => return None,
                Ok(Some(other)) => panic!("unexpected PDU while awaiting a response: {other:?}"),
                Err(e) if is_timeout(&e) => {}
                Err(_) => return None,
            }
        }
    }

    /// Reads responses (and their data sets) until one whose status is not
    /// pending (FF00/FF01) and returns it, with how many pending ones came
    /// first; `None` if the server closed or aborted instead.
    pub fn read_final_status(&mut self, timeout: Duration) -> Option<(u16, usize)> {
        let deadline = Instant::now() + timeout;
        let mut command = Vec::new();
        let mut pending = 0;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no final response within {timeout:?}");
            match self.read_pdu(left) {
                Ok(Some(Pdu::PData(pdvs))) => {
                    for pdv in pdvs.into_iter().filter(|pdv| pdv.is_command) {
                        command.extend_from_slice(&pdv.data);
                        if pdv.is_last {
                            let status = command_status(&command);
                            command.clear();
                            if matches!(status, 0xFF00 | 0xFF01) {
                                pending += 1;
                            } else {
                                return Some((status, pending));
                            }
                        }
                    }
                }
                Ok(Some(Pdu::Abort { .. })) | Ok(None) => return None,
                Ok(Some(other)) => panic!("unexpected PDU while awaiting a response: {other:?}"),
                Err(e) if is_timeout(&e) => {}
                Err(_) => return None,
            }
        }
    }

    /// Sends a C-STORE-RQ with `dataset` and returns the response status
    /// (`None` if the association ended instead).
    pub fn c_store(
        &mut self,
        context_id: u8,
        sop_class_uid: &str,
        sop_instance_uid: &str,
        dataset: &[u8],
    ) -> Option<u16> {
        let message_id = self.message_id();
        let command = c_store_rq(message_id, sop_class_uid, sop_instance_uid);
        if self
            .send_message(context_id, &command, Some(dataset))
            .is_err()
        {
            return None;
        }
        self.read_status(Duration::from_secs(30))
    }

    /// Requests a release and waits for the A-RELEASE-RP (or a close).
    pub fn release(mut self) {
        if self.send(&release_rq()).is_ok() {
            let _ = self.read_pdu(Duration::from_secs(10));
        }
        let _ = self.stream.shutdown(Shutdown::Both);
    }

    fn message_id(&mut self) -> u16 {
        let id = self.next_message_id;
        self.next_message_id = self.next_message_id.wrapping_add(1).max(1);
        id
    }
}

/// Whether an IO error is a read timeout.
pub fn is_timeout(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

enum ReadOutcome {
    Full,
    Eof,
}

/// `read_exact`, except that EOF or a reset before the first byte is `Eof`,
/// and a reset or EOF mid-way also counts as the peer having gone away.
fn read_exact_or_eof(stream: &mut TcpStream, buf: &mut [u8]) -> io::Result<ReadOutcome> {
    let mut filled = 0;
    while filled < buf.len() {
        match stream.read(&mut buf[filled..]) {
            Ok(0) => return Ok(ReadOutcome::Eof),
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if is_timeout(&e) && filled > 0 => {
                // A partial PDU: keep waiting for the rest.
                continue;
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionReset
                        | io::ErrorKind::ConnectionAborted
                        | io::ErrorKind::BrokenPipe
                ) =>
            {
                return Ok(ReadOutcome::Eof)
            }
            Err(e) => return Err(e),
        }
    }
    Ok(ReadOutcome::Full)
}

fn parse_pdu(pdu_type: u8, length: u32, body: &[u8]) -> Pdu {
    match pdu_type {
        pdu_type::ASSOCIATE_AC => parse_associate_ac(body),
        pdu_type::ASSOCIATE_RJ if body.len() >= 4 => Pdu::AssociateRj {
            result: body[1],
            source: body[2],
            reason: body[3],
        },
        pdu_type::P_DATA_TF => {
            let mut pdvs = Vec::new();
            let mut rest = body;
            while rest.len() >= 6 {
                let item_len = u32::from_be_bytes(rest[0..4].try_into().expect("four bytes"));
                let item_len = item_len as usize;
                if item_len < 2 || 4 + item_len > rest.len() {
                    break;
                }
                let header = rest[5];
                pdvs.push(Pdv {
                    context_id: rest[4],
                    is_command: header & 1 != 0,
                    is_last: header & 2 != 0,
                    data: rest[6..4 + item_len].to_vec(),
                });
                rest = &rest[4 + item_len..];
            }
            Pdu::PData(pdvs)
        }
        pdu_type::RELEASE_RQ => Pdu::ReleaseRq,
        pdu_type::RELEASE_RP => Pdu::ReleaseRp,
        pdu_type::ABORT if body.len() >= 4 => Pdu::Abort {
            source: body[2],
            reason: body[3],
        },
        _ => Pdu::Unknown { pdu_type, length },
    }
}

fn parse_associate_ac(body: &[u8]) -> Pdu {
    let mut contexts = Vec::new();
    let mut max_pdu = 0;
    // 68 fixed bytes: version, reserved, called/calling AE, 32 reserved.
    let mut items = body.get(68..).unwrap_or_default();
    while items.len() >= 4 {
        let item_type = items[0];
        let item_len = usize::from(u16::from_be_bytes([items[2], items[3]]));
        let Some(item) = items.get(4..4 + item_len) else {
            break;
        };
        match item_type {
            0x21 if item.len() >= 4 => {
                let mut transfer_syntax = String::new();
                let sub = &item[4..];
                if sub.len() >= 4 && sub[0] == 0x40 {
                    let len = usize::from(u16::from_be_bytes([sub[2], sub[3]]));
                    if let Some(uid) = sub.get(4..4 + len) {
                        transfer_syntax = trim_uid(uid);
                    }
                }
                contexts.push(ContextResult {
                    id: item[0],
                    result: item[2],
                    transfer_syntax,
                });
            }
            0x50 => {
                let mut sub = item;
                while sub.len() >= 4 {
                    let len = usize::from(u16::from_be_bytes([sub[2], sub[3]]));
                    if sub[0] == 0x51 && len == 4 && sub.len() >= 8 {
                        max_pdu = u32::from_be_bytes(sub[4..8].try_into().expect("four bytes"));
                    }
                    sub = sub.get(4 + len..).unwrap_or_default();
                }
            }
            _ => {}
        }
        items = &items[4 + item_len..];
    }
    Pdu::AssociateAc { contexts, max_pdu }
}

fn trim_uid(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .trim_end_matches(['\0', ' '])
        .to_string()
}

fn ae_field(ae_title: &str) -> [u8; 16] {
    let mut field = [b' '; 16];
    let bytes = ae_title.as_bytes();
    let n = bytes.len().min(16);
    field[..n].copy_from_slice(&bytes[..n]);
    field
}

fn item(item_type: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![item_type, 0];
    out.extend_from_slice(&u16::try_from(body.len()).expect("item fits").to_be_bytes());
    out.extend_from_slice(body);
    out
}

fn pdu(pdu_type: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![pdu_type, 0];
    out.extend_from_slice(&u32::try_from(body.len()).expect("PDU fits").to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// An A-ASSOCIATE-RQ PDU.
pub fn associate_rq(
    called_ae: &str,
    calling_ae: &str,
    proposals: &[Proposal],
    max_pdu: u32,
) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&[0x00, 0x01, 0x00, 0x00]); // version 1, reserved
    body.extend_from_slice(&ae_field(called_ae));
    body.extend_from_slice(&ae_field(calling_ae));
    body.extend_from_slice(&[0u8; 32]);
    body.extend(item(0x10, APPLICATION_CONTEXT.as_bytes()));
    for proposal in proposals {
        let mut context = vec![proposal.id, 0, 0, 0];
        context.extend(item(0x30, proposal.abstract_syntax.as_bytes()));
        for transfer_syntax in &proposal.transfer_syntaxes {
            context.extend(item(0x40, transfer_syntax.as_bytes()));
        }
        body.extend(item(0x20, &context));
    }
    let mut user_information = item(0x51, &max_pdu.to_be_bytes());
    user_information.extend(item(0x52, b"1.2.826.0.1.3680043.10.999.1"));
    user_information.extend(item(0x55, b"IMAGESERVER_IT"));
    body.extend(item(0x50, &user_information));
    pdu(pdu_type::ASSOCIATE_RQ, &body)
}

/// A P-DATA-TF PDU with one PDV.
pub fn p_data_tf(context_id: u8, is_command: bool, is_last: bool, data: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(data.len() + 6);
    let item_len = u32::try_from(data.len() + 2).expect("PDV fits");
    body.extend_from_slice(&item_len.to_be_bytes());
    body.push(context_id);
    body.push(u8::from(is_command) | (u8::from(is_last) << 1));
    body.extend_from_slice(data);
    pdu(pdu_type::P_DATA_TF, &body)
}

/// An A-RELEASE-RQ PDU.
pub fn release_rq() -> Vec<u8> {
    pdu(pdu_type::RELEASE_RQ, &[0, 0, 0, 0])
}

/// Builds an Implicit VR Little Endian element list (commands and the
/// hand-made data sets of the hostile tests). Elements must be added in
/// ascending tag order.
#[derive(Debug, Default, Clone)]
pub struct ImplicitLe {
    bytes: Vec<u8>,
}

impl ImplicitLe {
    /// An empty element list.
    pub fn new() -> ImplicitLe {
        ImplicitLe::default()
    }

    /// Appends an element with a raw value, padded to even length with `pad`.
    pub fn raw(mut self, group: u16, element: u16, value: &[u8], pad: u8) -> ImplicitLe {
        let padded_len = value.len() + value.len() % 2;
        self.header(group, element, u32::try_from(padded_len).expect("fits"));
        self.bytes.extend_from_slice(value);
        if value.len() % 2 == 1 {
            self.bytes.push(pad);
        }
        self
    }

    /// Appends a UI element (NUL-padded).
    pub fn uid(self, group: u16, element: u16, value: &str) -> ImplicitLe {
        self.raw(group, element, value.as_bytes(), 0)
    }

    /// Appends a text element (space-padded).
    pub fn text(self, group: u16, element: u16, value: &str) -> ImplicitLe {
        self.raw(group, element, value.as_bytes(), b' ')
    }

    /// Appends a US element.
    pub fn us(self, group: u16, element: u16, value: u16) -> ImplicitLe {
        self.raw(group, element, &value.to_le_bytes(), 0)
    }

    /// Appends an element header that claims `length` bytes, and nothing
    /// else (for length-lies).
    pub fn header_only(mut self, group: u16, element: u16, length: u32) -> ImplicitLe {
        self.header(group, element, length);
        self
    }

    /// Appends bytes as they are.
    pub fn bytes(mut self, bytes: &[u8]) -> ImplicitLe {
        self.bytes.extend_from_slice(bytes);
        self
    }

    /// The encoded elements.
    pub fn build(self) -> Vec<u8> {
        self.bytes
    }

    fn header(&mut self, group: u16, element: u16, length: u32) {
        self.bytes.extend_from_slice(&group.to_le_bytes());
        self.bytes.extend_from_slice(&element.to_le_bytes());
        self.bytes.extend_from_slice(&length.to_le_bytes());
    }
}

/// Prefixes a command's elements with (0000,0000) CommandGroupLength.
fn command_set(elements: ImplicitLe) -> Vec<u8> {
    let elements = elements.build();
    let group_length = u32::try_from(elements.len()).expect("fits");
    ImplicitLe::new()
        .raw(0x0000, 0x0000, &group_length.to_le_bytes(), 0)
        .bytes(&elements)
        .build()
}

/// A C-STORE-RQ command set.
pub fn c_store_rq(message_id: u16, sop_class_uid: &str, sop_instance_uid: &str) -> Vec<u8> {
    command_set(
        ImplicitLe::new()
            .uid(0x0000, 0x0002, sop_class_uid)
            .us(0x0000, 0x0100, 0x0001)
            .us(0x0000, 0x0110, message_id)
            .us(0x0000, 0x0700, 0x0000)
            .us(0x0000, 0x0800, 0x0000)
            .uid(0x0000, 0x1000, sop_instance_uid),
    )
}

/// Study Root Query/Retrieve Information Model – FIND.
pub const STUDY_ROOT_FIND: &str = "1.2.840.10008.5.1.4.1.2.2.1";

/// A C-FIND-RQ command set (a data set follows).
pub fn c_find_rq(message_id: u16, sop_class_uid: &str) -> Vec<u8> {
    command_set(
        ImplicitLe::new()
            .uid(0x0000, 0x0002, sop_class_uid)
            .us(0x0000, 0x0100, 0x0020)
            .us(0x0000, 0x0110, message_id)
            .us(0x0000, 0x0700, 0x0000)
            .us(0x0000, 0x0800, 0x0000),
    )
}

/// Study Root Query/Retrieve Information Model – MOVE.
pub const STUDY_ROOT_MOVE: &str = "1.2.840.10008.5.1.4.1.2.2.2";

/// Study Root Query/Retrieve Information Model – GET.
pub const STUDY_ROOT_GET: &str = "1.2.840.10008.5.1.4.1.2.2.3";

/// A C-MOVE-RQ command set to `destination` (a data set follows).
pub fn c_move_rq(message_id: u16, sop_class_uid: &str, destination: &str) -> Vec<u8> {
    command_set(
        ImplicitLe::new()
            .uid(0x0000, 0x0002, sop_class_uid)
            .us(0x0000, 0x0100, 0x0021)
            .us(0x0000, 0x0110, message_id)
            .text(0x0000, 0x0600, destination)
            .us(0x0000, 0x0700, 0x0000)
            .us(0x0000, 0x0800, 0x0000),
    )
}

/// A C-GET-RQ command set (a data set follows).
pub fn c_get_rq(message_id: u16, sop_class_uid: &str) -> Vec<u8> {
    command_set(
        ImplicitLe::new()
            .uid(0x0000, 0x0002, sop_class_uid)
            .us(0x0000, 0x0100, 0x0010)
            .us(0x0000, 0x0110, message_id)
            .us(0x0000, 0x0700, 0x0000)
            .us(0x0000, 0x0800, 0x0000),
    )
}

/// A study-level identifier (Implicit VR LE): QueryRetrieveLevel=STUDY and
/// StudyInstanceUID (empty for a C-FIND's universal match).
pub fn study_identifier(study_uid: &str) -> Vec<u8> {
    ImplicitLe::new()
        .text(0x0008, 0x0052, "STUDY")
        .uid(0x0020, 0x000D, study_uid)
        .build()
}

/// A C-ECHO-RQ command set.
pub fn c_echo_rq(message_id: u16) -> Vec<u8> {
    command_set(
        ImplicitLe::new()
            .uid(0x0000, 0x0002, VERIFICATION)
            .us(0x0000, 0x0100, 0x0030)
            .us(0x0000, 0x0110, message_id)
            .us(0x0000, 0x0800, 0x0101),
    )
}

/// The Status (0000,0900) of an Implicit VR LE command set; panics if absent.
pub fn command_status(command: &[u8]) -> u16 {
    let mut rest = command;
    while rest.len() >= 8 {
        let group = u16::from_le_bytes([rest[0], rest[1]]);
        let element = u16::from_le_bytes([rest[2], rest[3]]);
        let len = u32::from_le_bytes(rest[4..8].try_into().expect("four bytes")) as usize;
        let Some(value) = rest.get(8..8 + len) else {
            break;
        };
        if (group, element) == (0x0000, 0x0900) && len == 2 {
            return u16::from_le_bytes([value[0], value[1]]);
        }
        rest = &rest[8 + len..];
    }
    panic!("response command set without a Status: {command:02x?}")
}

/// The UIDs of a hand-made CT data set.
#[derive(Debug, Clone)]
pub struct DatasetUids {
    /// (0008,0016).
    pub sop_class_uid: String,
    /// (0008,0018).
    pub sop_instance_uid: String,
    /// (0020,000D).
    pub study_uid: String,
    /// (0020,000E).
    pub series_uid: String,
}

/// A small, valid CT-like data set in Implicit VR LE with 8×8 pixels.
pub fn ct_dataset(uids: &DatasetUids) -> Vec<u8> {
    ct_dataset_dated(uids, CT_DATASET_STUDY_DATE)
}

/// [`ct_dataset`] with another Study Date (0008,0020) value.
pub fn ct_dataset_dated(uids: &DatasetUids, study_date: &str) -> Vec<u8> {
    ct_dataset_header_dated(uids, study_date)
        .header_only(0x7FE0, 0x0010, 128)
        .bytes(&[0x11; 128])
        .build()
}

/// The Study Date of [`ct_dataset`].
pub const CT_DATASET_STUDY_DATE: &str = "20240101";

/// The elements of [`ct_dataset`] before the pixel data, to append lies to.
pub fn ct_dataset_header(uids: &DatasetUids) -> ImplicitLe {
    ct_dataset_header_dated(uids, CT_DATASET_STUDY_DATE)
}

fn ct_dataset_header_dated(uids: &DatasetUids, study_date: &str) -> ImplicitLe {
    ImplicitLe::new()
        .uid(0x0008, 0x0016, &uids.sop_class_uid)
        .uid(0x0008, 0x0018, &uids.sop_instance_uid)
        .text(0x0008, 0x0020, study_date)
        .text(0x0008, 0x0060, "CT")
        .text(0x0010, 0x0010, "HOSTILE^PEER")
        .text(0x0010, 0x0020, "RAWPID")
        .uid(0x0020, 0x000D, &uids.study_uid)
        .uid(0x0020, 0x000E, &uids.series_uid)
        .us(0x0028, 0x0002, 1)
        .text(0x0028, 0x0004, "MONOCHROME2")
        .us(0x0028, 0x0010, 8)
        .us(0x0028, 0x0011, 8)
        .us(0x0028, 0x0100, 16)
        .us(0x0028, 0x0101, 16)
        .us(0x0028, 0x0102, 15)
        .us(0x0028, 0x0103, 0)
}
