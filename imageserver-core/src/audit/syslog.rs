//! Syslog transport of audit messages: RFC 5424 messages, sent over UDP
//! (RFC 5426, one datagram each), TCP with octet-counting framing
//! (`LEN SP MSG`, RFC 6587 §3.4.1), or TLS with the same framing (RFC
//! 5425), the repository's certificate verified against a configured CA
//! bundle and its host name.

use std::io::Write;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, StreamOwned};

use super::xml::rfc3339;

/// How long a connect or a write to the repository may take.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// PRI of audit messages: facility 10 (security/authorization), severity
/// 5 (notice), as IHE ATNA asks.
const PRI: u8 = 10 * 8 + 5;
/// The largest UDP payload; a longer message cannot go over UDP.
pub const MAX_UDP_MESSAGE: usize = 65_507;

/// Where audit messages go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Repository {
    /// `udp://host:port`.
    Udp(String),
    /// `tcp://host:port`.
    Tcp(String),
    /// `tls://host:port` (RFC 5425).
    Tls(String),
}

/// Why a repository URL or a send failed.
#[derive(Debug, thiserror::Error)]
pub enum SyslogError {
    /// The URL is not `udp://`, `tcp://` or `tls://host:port`.
    #[error(
        "audit repository {0:?}: expected udp://host:port, tcp://host:port or tls://host:port"
    )]
    BadUrl(String),
    /// A `tls://` repository without a CA bundle to verify it against.
    #[error("audit repository {0}: TLS needs the repository's CA bundle (audit.tls_ca_file)")]
    NoTlsConfig(String),
    /// The host name did not resolve.
    #[error("cannot resolve the audit repository {0}")]
    Resolve(String, #[source] std::io::Error),
    /// The repository could not be reached or written to.
    #[error("cannot send to the audit repository {0}")]
    Io(String, #[source] std::io::Error),
    /// The message is longer than one UDP datagram carries.
    #[error("audit message of {0} bytes exceeds a UDP datagram; use tcp://")]
    TooLong(usize),
}

impl Repository {
    /// Parses `udp://host:port` or `tcp://host:port`.
    pub fn parse(url: &str) -> Result<Repository, SyslogError> {
        let (scheme, address) = url
            .split_once("://")
            .ok_or_else(|| SyslogError::BadUrl(url.to_string()))?;
        let valid = address.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
        });
        match scheme {
            "udp" if valid => Ok(Repository::Udp(address.to_string())),
            "tcp" if valid => Ok(Repository::Tcp(address.to_string())),
            "tls" if valid => Ok(Repository::Tls(address.to_string())),
            _ => Err(SyslogError::BadUrl(url.to_string())),
        }
    }

    fn address(&self) -> &str {
        match self {
            Repository::Udp(a) | Repository::Tcp(a) | Repository::Tls(a) => a,
        }
    }

    fn resolve(&self) -> Result<SocketAddr, SyslogError> {
        let address = self.address();
        address
            .to_socket_addrs()
            .map_err(|e| SyslogError::Resolve(address.to_string(), e))?
            .next()
            .ok_or_else(|| {
                SyslogError::Resolve(
                    address.to_string(),
                    std::io::Error::new(std::io::ErrorKind::NotFound, "no address"),
                )
            })
    }
}

impl std::fmt::Display for Repository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Repository::Udp(a) => write!(f, "udp://{a}"),
            Repository::Tcp(a) => write!(f, "tcp://{a}"),
            Repository::Tls(a) => write!(f, "tls://{a}"),
        }
    }
}

/// An RFC 5424 message: `<85>1 TIMESTAMP HOST APP PROCID MSGID - BOM MSG`,
/// MSGID `IHE+RFC-3881` as IHE ITI TF-2a 3.20 asks, the XML after a UTF-8
/// byte order mark.
pub fn message(at_ms: i64, hostname: &str, xml: &str) -> Vec<u8> {
    let host = header_field(hostname, 255);
    let mut out = format!(
        "<{PRI}>1 {} {host} imageserver {} IHE+RFC-3881 - \u{FEFF}",
        rfc3339(at_ms),
        std::process::id()
    )
    .into_bytes();
    out.extend_from_slice(xml.as_bytes());
    out
}

/// A header field: printable US-ASCII without spaces, at most `max`
/// characters, `-` when empty (RFC 5424 NILVALUE).
fn header_field(value: &str, max: usize) -> String {
    let field: String = value
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(max)
        .collect();
    if field.is_empty() {
        "-".to_string()
    } else {
        field
    }
}

/// A connection to the repository, kept across messages (TCP, TLS) or a
/// bound socket (UDP).
#[derive(Debug)]
pub struct Sender {
    repository: Repository,
    tcp: Option<TcpStream>,
    udp: Option<UdpSocket>,
    tls_config: Option<Arc<ClientConfig>>,
    tls: Option<Box<StreamOwned<ClientConnection, TcpStream>>>,
}

impl Sender {
    /// A sender to `repository`; nothing is connected yet. A `tls://`
    /// repository is verified with `tls_config` (its CA bundle).
    pub fn new(repository: Repository, tls_config: Option<Arc<ClientConfig>>) -> Sender {
        Sender {
            repository,
            tcp: None,
            udp: None,
            tls_config,
            tls: None,
        }
    }

    /// Sends one message, connecting first when needed. On failure the
    /// connection is dropped, so that the next send reconnects.
    pub fn send(&mut self, message: &[u8]) -> Result<(), SyslogError> {
        let result = self.try_send(message);
        if result.is_err() {
            self.tcp = None;
            self.udp = None;
            self.tls = None;
        }
        result
    }

    fn try_send(&mut self, message: &[u8]) -> Result<(), SyslogError> {
        let io = |e| SyslogError::Io(self.repository.to_string(), e);
        match &self.repository {
            Repository::Udp(_) => {
                if message.len() > MAX_UDP_MESSAGE {
                    return Err(SyslogError::TooLong(message.len()));
                }
                if self.udp.is_none() {
                    let target = self.repository.resolve()?;
                    let local: SocketAddr = if target.is_ipv4() {
                        "0.0.0.0:0".parse().expect("address")
                    } else {
                        "[::]:0".parse().expect("address")
                    };
                    let socket = UdpSocket::bind(local).map_err(io)?;
                    socket.connect(target).map_err(io)?;
                    socket.set_write_timeout(Some(IO_TIMEOUT)).map_err(io)?;
                    self.udp = Some(socket);
                }
                let socket = self.udp.as_ref().expect("connected");
                socket.send(message).map_err(io)?;
                // A refused datagram shows as an error on the next call:
                // ask now, so an unreachable port keeps the message spooled.
                match socket.take_error() {
                    Ok(None) => Ok(()),
                    Ok(Some(e)) | Err(e) => Err(io(e)),
                }
            }
            Repository::Tls(address) => {
                if self.tls.is_none() {
                    let config = self
                        .tls_config
                        .clone()
                        .ok_or_else(|| SyslogError::NoTlsConfig(self.repository.to_string()))?;
                    let host = address
                        .rsplit_once(':')
                        .map_or(address.as_str(), |(host, _)| host)
                        .trim_matches(['[', ']']);
                    let name = ServerName::try_from(host.to_string()).map_err(|e| {
                        io(std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
                    })?;
                    let connection = ClientConnection::new(config, name)
                        .map_err(|e| io(std::io::Error::other(e)))?;
                    let target = self.repository.resolve()?;
                    let stream = TcpStream::connect_timeout(&target, IO_TIMEOUT).map_err(io)?;
                    stream.set_write_timeout(Some(IO_TIMEOUT)).map_err(io)?;
                    stream.set_read_timeout(Some(IO_TIMEOUT)).map_err(io)?;
                    stream.set_nodelay(true).map_err(io)?;
                    let mut tls = StreamOwned::new(connection, stream);
                    // The handshake now: a repository whose certificate
                    // does not verify fails here, and the message stays
                    // spooled.
                    while tls.conn.is_handshaking() {
                        tls.conn.complete_io(&mut tls.sock).map_err(io)?;
                    }
                    self.tls = Some(Box::new(tls));
                }
                let stream = self.tls.as_mut().expect("connected");
                let mut frame = format!("{} ", message.len()).into_bytes();
                frame.extend_from_slice(message);
                stream.write_all(&frame).map_err(io)?;
                stream.flush().map_err(io)?;
                if peer_closed(&stream.sock) {
                    return Err(io(std::io::Error::new(
                        std::io::ErrorKind::ConnectionReset,
                        "the repository closed the connection",
                    )));
                }
                Ok(())
            }
            Repository::Tcp(_) => {
                if self.tcp.is_none() {
                    let target = self.repository.resolve()?;
                    let stream = TcpStream::connect_timeout(&target, IO_TIMEOUT).map_err(io)?;
                    stream.set_write_timeout(Some(IO_TIMEOUT)).map_err(io)?;
                    stream.set_nodelay(true).map_err(io)?;
                    self.tcp = Some(stream);
                }
                let stream = self.tcp.as_mut().expect("connected");
                let mut frame = format!("{} ", message.len()).into_bytes();
                frame.extend_from_slice(message);
                stream.write_all(&frame).map_err(io)?;
                // A peer that closed shows on the next write only; a zero
                // timeout peek finds it now instead.
                if peer_closed(stream) {
                    return Err(io(std::io::Error::new(
                        std::io::ErrorKind::ConnectionReset,
                        "the repository closed the connection",
                    )));
                }
                Ok(())
            }
        }
    }
}

/// Whether the peer has closed the connection (a read would return EOF).
fn peer_closed(stream: &TcpStream) -> bool {
    if stream.set_nonblocking(true).is_err() {
        return false;
    }
    let mut byte = [0u8; 1];
    let closed = matches!(stream.peek(&mut byte), Ok(0));
    let _ = stream.set_nonblocking(false);
    closed
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::TcpListener;

    #[test]
    fn repository_urls_are_parsed() {
        assert_eq!(
            Repository::parse("udp://127.0.0.1:514").unwrap(),
            Repository::Udp("127.0.0.1:514".into())
        );
        assert_eq!(
            Repository::parse("tcp://audit.example:6514").unwrap(),
            Repository::Tcp("audit.example:6514".into())
        );
        assert_eq!(
            Repository::parse("tls://audit.example:6514").unwrap(),
            Repository::Tls("audit.example:6514".into())
        );
        for bad in ["ftp://a:1", "udp://a", "udp://:5", "a:5", "tcp://a:0"] {
            assert!(Repository::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn messages_have_the_rfc5424_header() {
        let text = String::from_utf8(message(0, "my host", "<AuditMessage/>")).unwrap();
        let pid = std::process::id();
        assert_eq!(
            text,
            format!("<85>1 1970-01-01T00:00:00.000Z myhost imageserver {pid} IHE+RFC-3881 - \u{FEFF}<AuditMessage/>")
        );
    }

    #[test]
    fn tcp_frames_count_octets() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("tcp://{}", listener.local_addr().unwrap());
        let mut sender = Sender::new(Repository::parse(&url).unwrap(), None);
        sender.send(b"hello").unwrap();
        sender.send("é".as_bytes()).unwrap();
        drop(sender);
        let (mut stream, _) = listener.accept().unwrap();
        let mut got = Vec::new();
        stream.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"5 hello2 \xc3\xa9");
    }

    #[test]
    fn udp_sends_one_datagram_per_message() {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let url = format!("udp://{}", socket.local_addr().unwrap());
        let mut sender = Sender::new(Repository::parse(&url).unwrap(), None);
        sender.send(b"one").unwrap();
        let mut buffer = [0u8; 16];
        let n = socket.recv(&mut buffer).unwrap();
        assert_eq!(&buffer[..n], b"one");
        assert!(matches!(
            sender.send(&vec![b'x'; MAX_UDP_MESSAGE + 1]),
            Err(SyslogError::TooLong(_))
        ));
    }
}
