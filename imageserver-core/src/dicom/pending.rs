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

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use dicom_ul::pdu::AbortRQServiceProviderReason;

use super::pdu::{self, MAX_CONTROL_PDU_LEN};

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
    /// Its whole A-ASSOCIATE-RQ is queued in the socket (not consumed);
    /// the socket is blocking again.
    Ready {
        /// The connection.
        socket: TcpStream,
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
    },
}

struct Waiting {
    socket: TcpStream,
    peer: SocketAddr,
    deadline: Instant,
    /// Bytes the next step needs: the header, then header plus body.
    wanted: usize,
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
    pub fn admit(
        &mut self,
        socket: TcpStream,
        peer: SocketAddr,
    ) -> Result<Option<(TcpStream, SocketAddr)>, Refusal> {
        let from_address = self.per_address.get(&peer.ip()).copied().unwrap_or(0);
        if self.limits.max_per_address > 0 && from_address >= self.limits.max_per_address {
            return Err(Refusal::AddressFull);
        }
        socket.set_nonblocking(true).map_err(|_| Refusal::Socket)?;
        set_low_water(&socket, pdu::PDU_HEADER_LEN).map_err(|_| Refusal::Socket)?;
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
            .chain(self.waiting.iter().map(|w| w.socket.as_raw_fd()))
            .map(|fd| libc::pollfd {
                fd,
                events: libc::POLLIN | libc::POLLRDHUP,
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
                self.step(index)
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
                    outcomes.push(match restore_blocking(&waiting.socket) {
                        Ok(()) => Outcome::Ready {
                            socket: waiting.socket,
                            peer: waiting.peer,
                            calling_ae,
                        },
                        Err(e) => Outcome::Failed {
                            socket: waiting.socket,
                            peer: waiting.peer,
                            abort: None,
                            reason: e.to_string(),
                        },
                    });
                }
                Step::Failed(abort, reason) => {
                    let waiting = self.remove(index);
                    let _ = restore_blocking(&waiting.socket);
                    outcomes.push(Outcome::Failed {
                        socket: waiting.socket,
                        peer: waiting.peer,
                        abort,
                        reason,
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
        if waiting.wanted == pdu::PDU_HEADER_LEN {
            if buffer[0] != 0x01 {
                return Step::Failed(
                    Some(AbortRQServiceProviderReason::UnexpectedPdu),
                    format!(
                        "expected an A-ASSOCIATE-RQ, got PDU type {:#04x}",
                        buffer[0]
                    ),
                );
            }
            let length = u32::from_be_bytes([buffer[2], buffer[3], buffer[4], buffer[5]]);
            if length > MAX_CONTROL_PDU_LEN {
                return Step::Failed(
                    Some(AbortRQServiceProviderReason::InvalidPduParameter),
                    format!("A-ASSOCIATE-RQ of {length} bytes is too large"),
                );
            }
            waiting.wanted = pdu::PDU_HEADER_LEN + length as usize;
            if let Err(e) = set_low_water(&waiting.socket, waiting.wanted) {
                return Step::Failed(None, e.to_string());
            }
            // The whole request may be queued already.
            return self.step(index);
        }
        // Calling AE title: bytes 26..42 of the PDU (PS3.8 9.3.2).
        let calling = buffer.get(26..42).unwrap_or_default();
        Step::Ready(
            String::from_utf8_lossy(calling)
                .trim_matches([' ', '\0'])
                .to_string(),
        )
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

enum Step {
    Wait,
    Ready(String),
    Failed(Option<AbortRQServiceProviderReason>, String),
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
