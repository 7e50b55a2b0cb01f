//! [`Transport`]: an association's byte stream, plain TCP or TLS (PS3.15
//! B.1/B.9) over TCP.
//!
//! An enum rather than a generic stream trait: the acceptor, the
//! [`Link`](super::link::Link) and the storage SCU keep one concrete type,
//! the plain case stays a bare `TcpStream`, and what TLS needs beyond
//! `Read + Write` (a readiness probe for C-CANCEL, the peer's certificate)
//! lives in one place. A TLS transport is shared by its clones (the
//! association loop and its link read and write in turn, never at once);
//! each clone also keeps the TCP socket itself for timeouts, the peer
//! address and a shutdown from another thread.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use rustls::{ClientConnection, ServerConnection};

/// Where a server's TLS configuration comes from: asked once per accepted
/// connection, so that a source re-reading its files on change reloads
/// certificates without a restart.
pub trait ServerTls: Send + Sync {
    /// The configuration for the next handshake.
    fn server_config(&self) -> Arc<rustls::ServerConfig>;
}

/// An association's byte stream.
#[derive(Debug)]
pub enum Transport {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP.
    Tls(TlsTransport),
}

/// A TLS connection and its socket, shared by the transport's clones.
#[derive(Debug)]
pub struct TlsTransport {
    state: Arc<Mutex<TlsState>>,
    tcp: TcpStream,
}

#[derive(Debug)]
enum TlsConnection {
    Server(ServerConnection),
    Client(ClientConnection),
}

#[derive(Debug)]
struct TlsState {
    connection: TlsConnection,
    socket: TcpStream,
    /// Plain text read before the stream was handed on (the acceptor's
    /// pending stage reads the A-ASSOCIATE-RQ out of the connection).
    prefix: Vec<u8>,
    prefix_at: usize,
}

/// What [`Transport::probe`] found without waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// Bytes can be read.
    Data,
    /// Nothing yet.
    Nothing,
    /// The peer closed the connection.
    Closed,
}

impl TlsState {
    fn with_stream<T>(
        &mut self,
        f: impl FnOnce(&mut dyn ReadWrite) -> io::Result<T>,
    ) -> io::Result<T> {
        match &mut self.connection {
            TlsConnection::Server(c) => f(&mut rustls::Stream::new(c, &mut self.socket)),
            TlsConnection::Client(c) => f(&mut rustls::Stream::new(c, &mut self.socket)),
        }
    }
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

impl Transport {
    /// A server-side TLS transport over `socket` whose handshake is done;
    /// `prefix` is plain text already read out of `connection`.
    pub(crate) fn server_tls(
        socket: TcpStream,
        connection: ServerConnection,
        prefix: Vec<u8>,
    ) -> io::Result<Transport> {
        Transport::tls(socket, TlsConnection::Server(connection), prefix)
    }

    /// A client-side TLS transport over `socket` (the handshake completes
    /// on the first read or write).
    pub(crate) fn client_tls(
        socket: TcpStream,
        connection: ClientConnection,
    ) -> io::Result<Transport> {
        Transport::tls(socket, TlsConnection::Client(connection), Vec::new())
    }

    fn tls(socket: TcpStream, connection: TlsConnection, prefix: Vec<u8>) -> io::Result<Transport> {
        let tcp = socket.try_clone()?;
        Ok(Transport::Tls(TlsTransport {
            state: Arc::new(Mutex::new(TlsState {
                connection,
                socket,
                prefix,
                prefix_at: 0,
            })),
            tcp,
        }))
    }

    /// The TCP socket underneath.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Transport::Plain(s) => s,
            Transport::Tls(t) => &t.tcp,
        }
    }

    /// Whether this is TLS.
    pub fn is_tls(&self) -> bool {
        matches!(self, Transport::Tls(_))
    }

    /// Another handle on the same stream.
    pub fn try_clone(&self) -> io::Result<Transport> {
        Ok(match self {
            Transport::Plain(s) => Transport::Plain(s.try_clone()?),
            Transport::Tls(t) => Transport::Tls(TlsTransport {
                state: t.state.clone(),
                tcp: t.tcp.try_clone()?,
            }),
        })
    }

    /// The socket's read timeout.
    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.tcp().set_read_timeout(timeout)
    }

    /// The socket's write timeout.
    pub fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.tcp().set_write_timeout(timeout)
    }

    /// The remote address.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.tcp().peer_addr()
    }

    /// Closes the connection (a TLS one after its close_notify, when the
    /// stream is free).
    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        if let Transport::Tls(t) = self {
            if let Ok(mut state) = t.state.try_lock() {
                match &mut state.connection {
                    TlsConnection::Server(c) => c.send_close_notify(),
                    TlsConnection::Client(c) => c.send_close_notify(),
                }
                let _ = state.with_stream(|s| s.flush());
            }
        }
        self.tcp().shutdown(how)
    }

    /// The subject of the peer's certificate (TLS with a client
    /// certificate), as `CN=…, O=…`.
    pub fn peer_subject(&self) -> Option<String> {
        let Transport::Tls(t) = self else {
            return None;
        };
        let state = t.state.lock().unwrap_or_else(|p| p.into_inner());
        let certificates = match &state.connection {
            TlsConnection::Server(c) => c.peer_certificates(),
            TlsConnection::Client(c) => c.peer_certificates(),
        }?;
        certificates.first().and_then(certificate_subject)
    }

    /// Without waiting: whether a read would return data or the end.
    pub fn probe(&self) -> io::Result<Readiness> {
        match self {
            Transport::Plain(s) => peek_socket(s),
            Transport::Tls(t) => {
                let mut state = t.state.lock().unwrap_or_else(|p| p.into_inner());
                if state.prefix_at < state.prefix.len() {
                    return Ok(Readiness::Data);
                }
                loop {
                    let io_state = match &mut state.connection {
                        TlsConnection::Server(c) => c.process_new_packets(),
                        TlsConnection::Client(c) => c.process_new_packets(),
                    }
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                    if io_state.plaintext_bytes_to_read() > 0 {
                        return Ok(Readiness::Data);
                    }
                    if io_state.peer_has_closed() {
                        return Ok(Readiness::Closed);
                    }
                    match peek_socket(&t.tcp)? {
                        Readiness::Data => {}
                        other => return Ok(other),
                    }
                    // Bytes are queued: reading them cannot block.
                    let TlsState {
                        connection, socket, ..
                    } = &mut *state;
                    let n = match connection {
                        TlsConnection::Server(c) => c.read_tls(socket),
                        TlsConnection::Client(c) => c.read_tls(socket),
                    }?;
                    if n == 0 {
                        return Ok(Readiness::Closed);
                    }
                }
            }
        }
    }
}

/// One non-blocking peek: no switching the socket's mode per call.
fn peek_socket(socket: &TcpStream) -> io::Result<Readiness> {
    let mut probe = [0u8; 1];
    // SAFETY: the descriptor is an open socket and `probe` a valid
    // one-byte buffer.
    let n = unsafe {
        libc::recv(
            std::os::fd::AsRawFd::as_raw_fd(socket),
            probe.as_mut_ptr().cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    if n == 0 {
        return Ok(Readiness::Closed);
    }
    if n < 0 {
        let error = io::Error::last_os_error();
        if matches!(
            error.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
        ) {
            return Ok(Readiness::Nothing);
        }
        return Err(error);
    }
    Ok(Readiness::Data)
}

/// One read that does not wait: `WouldBlock` when nothing has arrived.
fn recv_nowait(socket: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: the descriptor is an open socket and `buf` a valid buffer of
    // its length.
    let n = unsafe {
        libc::recv(
            std::os::fd::AsRawFd::as_raw_fd(socket),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// Asks the kernel to acknowledge what arrived at once rather than after
/// its delayed-ACK timer (~40 ms). A peer that leaves Nagle's algorithm on
/// (DCMTK's tools do unless `TCP_NODELAY=1` is set in their environment)
/// holds a small segment back until its previous one is acknowledged: a
/// C-STORE's data set (or the rest of a PDU DCMTK writes in two parts)
/// waited for our ACK, an instance at a time. Linux leaves quick-ACK mode
/// by itself, so it is asked each time; elsewhere this does nothing.
#[cfg(target_os = "linux")]
fn quick_ack(socket: &TcpStream) {
    use std::os::fd::AsRawFd;
    let on: libc::c_int = 1;
    // SAFETY: a valid socket descriptor and a c_int option of its size.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_QUICKACK,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn quick_ack(_socket: &TcpStream) {}

impl Read for Transport {
    /// A plain read asks for an immediate ACK (`TCP_QUICKACK`) only when it
    /// has to wait, that is when the peer may be holding its next segment
    /// for our ACK: a read that finds its bytes sends no pure ACK, so the
    /// last read of a message leaves the ACK to our response (one pure ACK
    /// a message cost a `TCP_NODELAY` peer ~9 % of its small-instance rate
    /// on one association). A TLS read asks after every read.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.read_waiting(buf, None)
    }
}

impl Transport {
    /// Reads as [`Read::read`] does, waiting at most `timeout` for bytes
    /// when none are there yet. A plain socket's timeout is set only when
    /// the read has to wait: most reads of a message find their bytes, and
    /// each `setsockopt` is a system call on the path of every PDU.
    pub(crate) fn read_within(&mut self, buf: &mut [u8], timeout: Duration) -> io::Result<usize> {
        self.read_waiting(buf, Some(timeout))
    }

    /// A read; `timeout`, when given, becomes the socket's read timeout
    /// before a read that may wait.
    fn read_waiting(&mut self, buf: &mut [u8], timeout: Option<Duration>) -> io::Result<usize> {
        match self {
            Transport::Plain(s) => match recv_nowait(s, buf) {
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) =>
                {
                    if timeout.is_some() {
                        s.set_read_timeout(timeout)?;
                    }
                    if e.kind() == io::ErrorKind::WouldBlock {
                        quick_ack(s);
                    }
                    s.read(buf)
                }
                read => read,
            },
            Transport::Tls(t) => {
                if timeout.is_some() {
                    t.tcp.set_read_timeout(timeout)?;
                }
                let n = t.read(buf)?;
                if n > 0 {
                    quick_ack(&t.tcp);
                }
                Ok(n)
            }
        }
    }
}

impl TlsTransport {
    /// Plain text: what the acceptor read ahead first, then the connection's.
    fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.prefix_at < state.prefix.len() {
            let rest = &state.prefix[state.prefix_at..];
            let n = rest.len().min(buf.len());
            buf[..n].copy_from_slice(&rest[..n]);
            state.prefix_at += n;
            if state.prefix_at == state.prefix.len() {
                state.prefix = Vec::new();
                state.prefix_at = 0;
            }
            return Ok(n);
        }
        state.with_stream(|s| s.read(buf))
    }
}

impl Write for Transport {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(s) => s.write(buf),
            Transport::Tls(t) => {
                let mut state = t.state.lock().unwrap_or_else(|p| p.into_inner());
                state.with_stream(|s| {
                    let n = s.write(buf)?;
                    // Out on the wire before we return, errors included.
                    s.flush()?;
                    Ok(n)
                })
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Transport::Plain(s) => s.flush(),
            Transport::Tls(t) => {
                let mut state = t.state.lock().unwrap_or_else(|p| p.into_inner());
                state.with_stream(|s| s.flush())
            }
        }
    }
}

/// The subject of a DER certificate as `CN=…, O=…` (the attributes people
/// read; others by OID), None when it does not parse.
pub fn certificate_subject(certificate: &CertificateDer<'_>) -> Option<String> {
    let (certificate, _) = der_item(certificate.as_ref(), 0x30)?;
    let (mut tbs, _) = der_item(certificate, 0x30)?;
    // [0] version (optional), serial, signature algorithm, issuer, validity.
    if tbs.first() == Some(&0xa0) {
        tbs = der_any(tbs)?.1;
    }
    for _ in 0..4 {
        tbs = der_any(tbs)?.1;
    }
    let (mut name, _) = der_item(tbs, 0x30)?;
    let mut parts = Vec::new();
    while !name.is_empty() {
        let (set, rest) = der_item(name, 0x31)?;
        name = rest;
        let (attribute, _) = der_item(set, 0x30)?;
        let (oid, value) = der_item(attribute, 0x06)?;
        let (_, value_bytes, _) = der_any_with_tag(value)?;
        let label = match oid {
            [0x55, 0x04, 0x03] => "CN".to_string(),
            [0x55, 0x04, 0x06] => "C".to_string(),
            [0x55, 0x04, 0x07] => "L".to_string(),
            [0x55, 0x04, 0x08] => "ST".to_string(),
            [0x55, 0x04, 0x0a] => "O".to_string(),
            [0x55, 0x04, 0x0b] => "OU".to_string(),
            other => format!(
                "OID.{}",
                other.iter().map(|b| format!("{b:02x}")).collect::<String>()
            ),
        };
        parts.push(format!("{label}={}", String::from_utf8_lossy(value_bytes)));
    }
    Some(parts.join(", "))
}

/// A DER item of the given tag: (contents, rest).
fn der_item(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (got, contents, rest) = der_any_with_tag(input)?;
    (got == tag).then_some((contents, rest))
}

/// Any DER item: (contents, rest).
fn der_any(input: &[u8]) -> Option<(&[u8], &[u8])> {
    der_any_with_tag(input).map(|(_, contents, rest)| (contents, rest))
}

/// Any DER item: (tag, contents, rest); definite lengths of up to 4 bytes.
fn der_any_with_tag(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let tag = *input.first()?;
    let first = *input.get(1)? as usize;
    let (length, header) = if first < 0x80 {
        (first, 2)
    } else {
        let count = first & 0x7f;
        if count == 0 || count > 4 {
            return None;
        }
        let bytes = input.get(2..2 + count)?;
        (
            bytes.iter().fold(0usize, |acc, b| (acc << 8) | *b as usize),
            2 + count,
        )
    };
    let end = header.checked_add(length)?;
    let contents = input.get(header..end)?;
    Some((tag, contents, &input[end..]))
}
