//! The acceptor's pre-negotiation stage: connections that have not yet
//! sent their whole A-ASSOCIATE-RQ.
//!
//! One thread per listener holds all of them and waits on them with
//! `poll(2)`, so a silent or trickling connection costs a descriptor and a
//! few bytes of state, never a thread or an association slot. The stage is
//! bounded twice: at most `max_pending_per_address` connections from one
//! remote address (a new one beyond it is closed at once) and at most
//! `max_pending` in all (a new one beyond it evicts the connection that has
//! waited longest). Each connection has the ARTIM timeout to deliver its
//! request; only then does it compete for an association.
//!
//! A waiting socket is non-blocking with `SO_RCVLOWAT` set to the bytes it
//! still needs (the PDU header, then the whole request), so that `poll`
//! wakes once per step instead of once per segment of a trickle.
//!
//! A TLS connection (a TLS listener) first completes its handshake here,
//! driven without blocking on the same `poll` (rustls `read_tls`,
//! `process_new_packets`, `write_tls` on readiness; `POLLOUT` while it has
//! records to send; `SO_RCVLOWAT` left at 1, records are not PDUs); the
//! decrypted request is kept and handed on with the connection. Same ARTIM,
//! same bounds; a failed handshake (a plain-text caller, a refused client
//! certificate) closes the connection and is reported as such.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use std::io::Read;
use std::sync::Arc;

use dicom_ul::pdu::AbortRQServiceProviderReason;
use rustls::ServerConnection;

use super::pdu::{self, MAX_CONTROL_PDU_LEN};
use super::transport::Transport;

/// The fixed fields of an A-ASSOCIATE-RQ after its header (PS3.8 9.3.2):
/// a shorter one is malformed (and a zero length would never complete).
const MIN_REQUEST_BODY: u32 = 68;

/// Most TLS reads per readiness: a fast sender cannot hold the accept
/// thread.
const MAX_TLS_READS_PER_STEP: usize = 16;

/// The bounds of the stage.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PendingLimits {
    /// Connections waiting at once, in all.
    pub max_pending: usize,
    /// Connections waiting at once from one remote address (0: no limit).
    pub max_per_address: usize,
    /// Time to deliver the whole A-ASSOCIATE-RQ.
    pub artim: Duration,
}

/// Why a connection was closed without negotiation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// It waited longest when the stage was full and a new one came.
    Evicted,
    /// Its address has `max_per_address` connections waiting already.
    AddressFull,
    /// The socket could not be prepared (an OS error).
    Socket,
}

impl Refusal {
    /// For the log.
    pub fn describe(self) -> &'static str {
        match self {
            Refusal::Evicted => {
                "too many connections waiting to associate: the longest-waiting one closed"
            }
            Refusal::AddressFull => "too many connections from one address waiting to associate",
            Refusal::Socket => "cannot prepare the socket",
        }
    }
}

/// What became of a waiting connection.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Its whole A-ASSOCIATE-RQ is queued in the socket (not consumed;
    /// over TLS: decrypted and held by the transport); the socket is
    /// blocking again.
    Ready {
        /// The connection.
        socket: Transport,
        /// Its remote address.
        peer: SocketAddr,
        /// The request's calling AE title.
        calling_ae: String,
    },
    /// It sent something else, too much, nothing in time, or closed.
    Failed {
        /// The connection (blocking again), for an A-ABORT.
        socket: TcpStream,
        /// Its remote address.
        peer: SocketAddr,
        /// The A-ABORT reason to send; None when the peer closed.
        abort: Option<AbortRQServiceProviderReason>,
        /// Why, for the log.
        reason: String,
        /// The TLS handshake failed (a security event, not a slow peer).
        handshake: bool,
    },
}

struct Waiting {
    socket: TcpStream,
    peer: SocketAddr,
    deadline: Instant,
    /// Bytes the next step needs: the header, then header plus body.
    wanted: usize,
    /// A TLS connection's state and the plain text read so far.
    tls: Option<Box<Handshake>>,
}

struct Handshake {
    connection: ServerConnection,
    plain: Vec<u8>,
}

/// The connections waiting for their request, with their per-address
/// counts.
pub(crate) struct PendingStage {
    limits: PendingLimits,
    waiting: Vec<Waiting>,
    per_address: HashMap<IpAddr, usize>,
}

impl PendingStage {
    /// An empty stage.
    pub fn new(limits: PendingLimits) -> PendingStage {
        PendingStage {
            limits,
            waiting: Vec::new(),
            per_address: HashMap::new(),
        }
    }

    /// Connections waiting now.
    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    /// Takes a new connection in, or refuses it (the caller closes it).
    /// When the stage is full, the connection that has waited longest is
    /// evicted to make room and returned for the caller to close: a caller
    /// that sends its request at once is never starved by connections that
    /// send nothing, however many addresses they come from.
    /// With `tls`, the connection is TLS: its handshake is done here too.
    pub fn admit(
        &mut self,
        socket: TcpStream,
        peer: SocketAddr,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> Result<Option<(TcpStream, SocketAddr)>, Refusal> {
        let from_address = self.per_address.get(&peer.ip()).copied().unwrap_or(0);
        if self.limits.max_per_address > 0 && from_address >= self.limits.max_per_address {
            return Err(Refusal::AddressFull);
        }
        let tls = match tls {
            Some(config) => Some(Box::new(Handshake {
                connection: ServerConnection::new(config).map_err(|_| Refusal::Socket)?,
                plain: Vec::new(),
            })),
            None => None,
        };
        socket.set_nonblocking(true).map_err(|_| Refusal::Socket)?;
        if tls.is_none() {
            set_low_water(&socket, pdu::PDU_HEADER_LEN).map_err(|_| Refusal::Socket)?;
        }
        let evicted = (self.waiting.len() >= self.limits.max_pending).then(|| {
            let oldest = self.remove(0);
            let _ = restore_blocking(&oldest.socket);
            (oldest.socket, oldest.peer)
        });
        *self.per_address.entry(peer.ip()).or_insert(0) += 1;
        self.waiting.push(Waiting {
            socket,
            peer,
            deadline: Instant::now() + self.limits.artim,
            wanted: pdu::PDU_HEADER_LEN,
            tls,
        });
        Ok(evicted)
    }

    /// Waits at most `timeout` for the listener or a waiting connection to
    /// be readable. Returns whether the listener has connections to accept,
    /// and what became of waiting connections (ready, failed, timed out).
    /// Without a listener (it was closed: the node drains), only the
    /// waiting connections are watched.
    pub fn poll(
        &mut self,
        listener: Option<&TcpListener>,
        timeout: Duration,
    ) -> (bool, Vec<Outcome>) {
        let now = Instant::now();
        let nearest = self
            .waiting
            .iter()
            .map(|w| w.deadline.saturating_duration_since(now))
            .min()
            .unwrap_or(timeout);
        let wait = timeout.min(nearest);
        let mut fds: Vec<libc::pollfd> = listener
            .map(|l| l.as_raw_fd())
            .into_iter()
            .map(|fd| (fd, false))
            .chain(self.waiting.iter().map(|w| {
                let sending = w.tls.as_ref().is_some_and(|t| t.connection.wants_write());
                (w.socket.as_raw_fd(), sending)
            }))
            .map(|(fd, sending)| libc::pollfd {
                fd,
                events: libc::POLLIN | libc::POLLRDHUP | if sending { libc::POLLOUT } else { 0 },
                revents: 0,
            })
            .collect();
        let millis = wait.as_millis().clamp(0, 1_000) as libc::c_int;
        // SAFETY: fds is a valid array of fds.len() pollfd structures.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, millis) };
        if ready < 0 {
            // EINTR and the like: nothing is ready; the caller loops.
            return (false, Vec::new());
        }
        let first = usize::from(listener.is_some());
        let listener_ready = listener.is_some() && fds[0].revents != 0;
        let now = Instant::now();
        let mut outcomes = Vec::new();
        let mut index = 0;
        let mut fd_index = first;
        while index < self.waiting.len() {
            let revents = fds[fd_index].revents;
            fd_index += 1;
            let step = if revents != 0 {
                if self.waiting[index].tls.is_some() {
                    self.step_tls(index)
                } else {
                    self.step(index)
                }
            } else if now >= self.waiting[index].deadline {
                Step::Failed(
                    Some(AbortRQServiceProviderReason::UnexpectedPdu),
                    "the association request did not arrive within the ARTIM timeout".into(),
                )
            } else {
                Step::Wait
            };
            match step {
                Step::Wait => index += 1,
                Step::Ready(calling_ae) => {
                    let waiting = self.remove(index);
                    let ready =
                        restore_blocking(&waiting.socket).and_then(|()| match waiting.tls {
                            Some(handshake) => Transport::server_tls(
                                waiting.socket.try_clone()?,
                                handshake.connection,
                                handshake.plain,
                            ),
                            None => waiting.socket.try_clone().map(Transport::Plain),
                        });
                    outcomes.push(match ready {
                        Ok(transport) => Outcome::Ready {
                            socket: transport,
                            peer: waiting.peer,
                            calling_ae,
                        },
                        Err(e) => Outcome::Failed {
                            socket: waiting.socket,
                            peer: waiting.peer,
                            abort: None,
                            reason: e.to_string(),
                            handshake: false,
                        },
                    });
                }
                Step::Failed(abort, reason) => {
                    let waiting = self.remove(index);
                    let _ = restore_blocking(&waiting.socket);
                    outcomes.push(Outcome::Failed {
                        // No A-ABORT in the clear on a TLS connection.
                        abort: abort.filter(|_| waiting.tls.is_none()),
                        socket: waiting.socket,
                        peer: waiting.peer,
                        reason,
                        handshake: false,
                    });
                }
                Step::Handshake(reason) => {
                    let waiting = self.remove(index);
                    let _ = restore_blocking(&waiting.socket);
                    outcomes.push(Outcome::Failed {
                        abort: None,
                        socket: waiting.socket,
                        peer: waiting.peer,
                        reason,
                        handshake: true,
                    });
                }
            }
        }
        (listener_ready, outcomes)
    }

    /// Looks at what a readable connection has queued.
    fn step(&mut self, index: usize) -> Step {
        let waiting = &mut self.waiting[index];
        let mut buffer = vec![0u8; waiting.wanted];
        let available = match waiting.socket.peek(&mut buffer) {
            Ok(0) => return Step::Failed(None, "the peer closed the connection".into()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Step::Wait,
            Err(e) => return Step::Failed(None, e.to_string()),
        };
        if available < waiting.wanted {
            // A smaller low-water mark than asked for (the kernel caps it):
            // wait for the rest.
            return Step::Wait;
        }
        match examine(&buffer, &mut waiting.wanted) {
            Examined::More => {
                if let Err(e) = set_low_water(&waiting.socket, waiting.wanted) {
                    return Step::Failed(None, e.to_string());
                }
                // The whole request may be queued already.
                self.step(index)
            }
            Examined::Step(step) => step,
        }
    }

    /// Drives a TLS connection: reads and decrypts what is queued, sends
    /// what the handshake has to send, and looks at the plain text.
    fn step_tls(&mut self, index: usize) -> Step {
        let waiting = &mut self.waiting[index];
        let Some(tls) = waiting.tls.as_mut() else {
            return Step::Wait;
        };
        let limit = pdu::PDU_HEADER_LEN + MAX_CONTROL_PDU_LEN as usize;
        for _ in 0..MAX_TLS_READS_PER_STEP {
            match tls.connection.read_tls(&mut waiting.socket) {
                Ok(0) => {
                    return if tls.connection.is_handshaking() {
                        Step::Handshake(
                            "the peer closed the connection during the TLS handshake".into(),
                        )
                    } else {
                        Step::Failed(None, "the peer closed the connection".into())
                    }
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Step::Failed(None, e.to_string()),
            }
            if let Err(error) = tls.connection.process_new_packets() {
                // The alert, if it can go at once.
                let _ = tls.connection.write_tls(&mut waiting.socket);
                return Step::Handshake(format!("TLS handshake failed: {error}"));
            }
            // Plain text out of rustls's buffer, bounded by the largest
            // request.
            let mut chunk = [0u8; 4096];
            while tls.plain.len() < limit {
                let room = (limit - tls.plain.len()).min(chunk.len());
                match tls.connection.reader().read(&mut chunk[..room]) {
                    Ok(0) => return Step::Failed(None, "the peer closed the connection".into()),
                    Ok(n) => tls.plain.extend_from_slice(&chunk[..n]),
                    Err(_) => break,
                }
            }
        }
        while tls.connection.wants_write() {
            match tls.connection.write_tls(&mut waiting.socket) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Step::Failed(None, e.to_string()),
            }
        }
        loop {
            if tls.plain.len() < waiting.wanted {
                return Step::Wait;
            }
            match examine(&tls.plain[..waiting.wanted], &mut waiting.wanted) {
                Examined::More => continue,
                Examined::Step(step) => return step,
            }
        }
    }

    fn remove(&mut self, index: usize) -> Waiting {
        // Order kept: `poll` pairs entries with their descriptors by position.
        let waiting = self.waiting.remove(index);
        if let Some(count) = self.per_address.get_mut(&waiting.peer.ip()) {
            *count -= 1;
            if *count == 0 {
                self.per_address.remove(&waiting.peer.ip());
            }
        }
        waiting
    }
}

enum Examined {
    /// The header is good: `wanted` now covers the whole request.
    More,
    Step(Step),
}

/// Looks at the first `wanted` bytes of a connection: the PDU header (a
/// request of an acceptable length?), then the whole request.
fn examine(bytes: &[u8], wanted: &mut usize) -> Examined {
    if *wanted == pdu::PDU_HEADER_LEN {
        if bytes[0] != 0x01 {
            return Examined::Step(Step::Failed(
                Some(AbortRQServiceProviderReason::UnexpectedPdu),
                format!("expected an A-ASSOCIATE-RQ, got PDU type {:#04x}", bytes[0]),
            ));
        }
        let length = u32::from_be_bytes([bytes[2], bytes[3], bytes[4], bytes[5]]);
        if length < MIN_REQUEST_BODY {
            return Examined::Step(Step::Failed(
                Some(AbortRQServiceProviderReason::InvalidPduParameter),
                format!("A-ASSOCIATE-RQ of {length} bytes is too short"),
            ));
        }
        if length > MAX_CONTROL_PDU_LEN {
            return Examined::Step(Step::Failed(
                Some(AbortRQServiceProviderReason::InvalidPduParameter),
                format!("A-ASSOCIATE-RQ of {length} bytes is too large"),
            ));
        }
        *wanted = pdu::PDU_HEADER_LEN + length as usize;
        return Examined::More;
    }
    // Calling AE title: bytes 26..42 of the PDU (PS3.8 9.3.2).
    let calling = bytes.get(26..42).unwrap_or_default();
    Examined::Step(Step::Ready(
        String::from_utf8_lossy(calling)
            .trim_matches([' ', '\0'])
            .to_string(),
    ))
}

enum Step {
    Wait,
    Ready(String),
    Failed(Option<AbortRQServiceProviderReason>, String),
    /// The TLS handshake failed.
    Handshake(String),
}

/// `SO_RCVLOWAT`: `poll` reports the socket readable only once `bytes` are
/// queued (or it is closed).
fn set_low_water(socket: &TcpStream, bytes: usize) -> io::Result<()> {
    let value = bytes.min(i32::MAX as usize) as libc::c_int;
    // SAFETY: a valid socket descriptor and a pointer to a c_int of the
    // given size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVLOWAT,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Back to what the association thread expects: blocking, reads return
/// whatever is there.
fn restore_blocking(socket: &TcpStream) -> io::Result<()> {
    set_low_water(socket, 1)?;
    socket.set_nonblocking(false)
}

/// Raises this process's soft limit on open descriptors to its hard limit
/// and returns the limit now in force; every waiting connection and
/// association holds one.
pub fn raise_descriptor_limit() -> io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid out pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: a valid pointer to a limit no higher than the hard one.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit = raised;
        }
    }
    Ok(limit.rlim_cur)
}
