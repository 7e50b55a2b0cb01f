//! Sockets the standard library cannot open: a connection from a chosen
//! loopback source address (another "host" for per-address limits). Also
//! used by the stall-and-flood benchmark.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::FromRawFd;

/// A TCP connection to `addr` from the loopback address `source`.
pub fn connect_from(source: Ipv4Addr, addr: SocketAddr) -> io::Result<TcpStream> {
    let SocketAddr::V4(target) = addr else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "connect_from speaks IPv4 only",
        ));
    };
    let sockaddr = |ip: Ipv4Addr, port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    let local = sockaddr(source, 0);
    let remote = sockaddr(*target.ip(), target.port());
    let size = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: plain socket calls on a descriptor this function owns (the
    // TcpStream closes it on every path), with valid sockaddr_in structures
    // of the given size.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let stream = TcpStream::from_raw_fd(fd);
        if libc::bind(fd, (&local as *const libc::sockaddr_in).cast(), size) != 0
            || libc::connect(fd, (&remote as *const libc::sockaddr_in).cast(), size) != 0
        {
            return Err(io::Error::last_os_error());
        }
        Ok(stream)
    }
}
