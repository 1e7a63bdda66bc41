//! Socket helpers for the sock_diag kernel test and benchmark: TCP sockets bound to chosen
//! addresses, test addresses on a scratch namespace's `lo`, and a raised descriptor limit. The
//! namespaces themselves are [`crate::netns::ScratchNetns`].

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd};

use crate::netns::ScratchNetns;
use nix::sys::socket::{self, AddressFamily, Backlog, SockFlag, SockType, SockaddrIn};

/// Adds `addr/32` to `lo` in `ns`; panics with the cause on failure.
pub fn add_lo_addr(ns: &ScratchNetns, addr: Ipv4Addr) {
    ns.run_ok(&["ip", "addr", "add", &format!("{addr}/32"), "dev", "lo"])
        .unwrap_or_else(|e| panic!("{e}"));
}

fn tcp_socket() -> io::Result<OwnedFd> {
    Ok(socket::socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?)
}

/// A listener on `addr` with a deep accept queue (std's `TcpListener::bind` uses 128).
pub fn listen(addr: SocketAddrV4, backlog: i32) -> io::Result<TcpListener> {
    let fd = tcp_socket()?;
    socket::setsockopt(&fd, socket::sockopt::ReuseAddr, &true)?;
    socket::bind(fd.as_raw_fd(), &SockaddrIn::from(addr))?;
    socket::listen(&fd, Backlog::new(backlog)?)?;
    Ok(TcpListener::from(fd))
}

/// A client connected from `src` (port 0 = ephemeral) to `dst`.
pub fn connect_from(src: SocketAddrV4, dst: SocketAddrV4) -> io::Result<TcpStream> {
    let fd = tcp_socket()?;
    socket::bind(fd.as_raw_fd(), &SockaddrIn::from(src))?;
    socket::connect(fd.as_raw_fd(), &SockaddrIn::from(dst))?;
    Ok(TcpStream::from(fd))
}

/// Raises the soft RLIMIT_NOFILE to the hard limit and returns it. (Going past the hard limit
/// needs CAP_SYS_RESOURCE, which the test machines' root lacks: 20000 there.)
pub fn raise_nofile_to_hard() -> io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid rlimit structs for the duration of each call.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return Err(io::Error::last_os_error());
        }
        lim.rlim_cur = lim.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(lim.rlim_max)
}
