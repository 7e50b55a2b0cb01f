//! The one read-with-deadline loop of the upper layer: the acceptor, the
//! [`Link`](super::link::Link) and the storage SCU read every PDU through
//! it, so a peer trickling bytes cannot hold a thread beyond the deadline.

use std::io::{self, Read};

use super::transport::Transport;
use std::time::Instant;

/// A socket reader whose every read waits at most until `deadline`; past
/// it, reads fail with [`io::ErrorKind::TimedOut`] and the message given.
pub(crate) struct DeadlineReader<'a> {
    socket: &'a mut Transport,
    deadline: Instant,
    expired: &'static str,
}

impl<'a> DeadlineReader<'a> {
    /// Reads `socket` until `deadline`; `expired` is the error's message
    /// once it has passed.
    pub(crate) fn new(
        socket: &'a mut Transport,
        deadline: Instant,
        expired: &'static str,
    ) -> DeadlineReader<'a> {
        DeadlineReader {
            socket,
            deadline,
            expired,
        }
    }

    /// The socket back, for writing after the read.
    pub(crate) fn into_socket(self) -> &'a mut Transport {
        self.socket
    }
}

impl Read for DeadlineReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let remaining = self
            .deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| io::Error::new(io::ErrorKind::TimedOut, self.expired))?;
        self.socket.read_within(buf, remaining)
    }
}
