//! The AF_PACKET socket the probes send and receive on, bound to one interface with a BPF filter.

use std::io;
use std::mem;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::Instant;

use super::{MacAddr, ProbeError};

// ---------------------------------------------------------------------------------------------
// The packet socket.
// ---------------------------------------------------------------------------------------------

/// An AF_PACKET raw socket bound to one interface.
pub(super) struct PacketSocket {
    pub(super) fd: OwnedFd,
    pub(super) ifname: String,
    pub(super) mac: MacAddr,
}

impl PacketSocket {
    /// Opens a socket receiving frames of `ethertype` on `ifname` that pass `filter`.
    pub(super) fn open(
        ifname: &str,
        ethertype: u16,
        filter: &[libc::sock_filter],
    ) -> Result<Self, ProbeError> {
        let err = |op, source| ProbeError::Socket {
            ifname: ifname.to_owned(),
            op,
            source,
        };
        let ifindex = match nix::net::if_::if_nametoindex(ifname) {
            Ok(i) => i,
            Err(nix::errno::Errno::ENODEV) | Err(nix::errno::Errno::ENAMETOOLONG) => {
                return Err(ProbeError::NoSuchInterface {
                    ifname: ifname.to_owned(),
                })
            }
            Err(e) => return Err(err("if_nametoindex", io::Error::from(e))),
        };
        // Protocol 0 at creation: the socket receives nothing until bind() names the protocol,
        // so no unfiltered frame from another interface can slip in before the filter is set.
        // Non-blocking: receiving drains what is queued, then polls.
        use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
        let fd: OwnedFd = match socket(
            AddressFamily::Packet,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            None,
        ) {
            Ok(fd) => fd,
            Err(e @ (nix::errno::Errno::EPERM | nix::errno::Errno::EACCES)) => {
                return Err(ProbeError::Permission {
                    ifname: ifname.to_owned(),
                    source: e.into(),
                })
            }
            Err(e) => return Err(err("socket", e.into())),
        };

        let prog = libc::sock_fprog {
            len: filter.len() as u16,
            filter: filter.as_ptr() as *mut libc::sock_filter,
        };
        // SAFETY: `prog` points at `filter`, which outlives the call; the kernel copies it.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_ATTACH_FILTER,
                &prog as *const libc::sock_fprog as *const libc::c_void,
                mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(err("attach BPF filter", io::Error::last_os_error()));
        }

        // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
        let mut sll: libc::sockaddr_ll = unsafe { mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = ethertype.to_be();
        sll.sll_ifindex = ifindex as i32;
        // SAFETY: `sll` is a valid sockaddr_ll of the size passed.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &sll as *const libc::sockaddr_ll as *const libc::sockaddr,
                mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            let e = io::Error::last_os_error();
            return Err(match e.raw_os_error() {
                Some(libc::ENODEV) => ProbeError::NoSuchInterface {
                    ifname: ifname.to_owned(),
                },
                _ => err("bind", e),
            });
        }

        let mac = interface_mac(&fd, ifname)?;
        Ok(PacketSocket {
            fd,
            ifname: ifname.to_owned(),
            mac,
        })
    }

    /// Sends one complete Ethernet frame on the bound interface.
    pub(super) fn send(&self, frame: &[u8]) -> Result<(), ProbeError> {
        use nix::errno::Errno;
        match nix::sys::socket::send(
            self.fd.as_raw_fd(),
            frame,
            nix::sys::socket::MsgFlags::empty(),
        ) {
            Ok(_) => Ok(()),
            Err(Errno::ENETDOWN | Errno::ENXIO) => Err(ProbeError::InterfaceDown {
                ifname: self.ifname.clone(),
            }),
            Err(e) => Err(self.error("send", e.into())),
        }
    }

    /// Receives incoming frames until `on_frame` returns `Some` or `deadline` passes (`None`).
    pub(super) fn recv_until<R>(
        &self,
        deadline: Instant,
        mut on_frame: impl FnMut(&[u8]) -> Option<R>,
    ) -> Result<Option<R>, ProbeError> {
        let mut buf = [0u8; 2048];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            // Round up so a sub-millisecond remainder still waits instead of spinning.
            let ms = left.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
            let timeout =
                nix::poll::PollTimeout::try_from(ms).unwrap_or(nix::poll::PollTimeout::MAX);
            let mut fds = [nix::poll::PollFd::new(
                self.fd.as_fd(),
                nix::poll::PollFlags::POLLIN,
            )];
            match nix::poll::poll(&mut fds, timeout) {
                Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
                Ok(_) => {}
                Err(e) => return Err(self.error("poll", e.into())),
            }
            // Drain everything queued before polling again.
            loop {
                let (n, from) = match nix::sys::socket::recvfrom::<nix::sys::socket::LinkAddr>(
                    self.fd.as_raw_fd(),
                    &mut buf,
                ) {
                    Ok(r) => r,
                    Err(nix::errno::Errno::EAGAIN) => break,
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(e) => return Err(self.error("recvfrom", e.into())),
                };
                // Our own transmissions are looped back to packet sockets as PACKET_OUTGOING;
                // that includes our kernel's RST to a SYN-ACK it does not expect.
                if from.is_some_and(|a| a.pkttype() == libc::PACKET_OUTGOING) {
                    continue;
                }
                if let Some(r) = on_frame(&buf[..n]) {
                    return Ok(Some(r));
                }
            }
        }
    }

    pub(super) fn error(&self, op: &'static str, source: io::Error) -> ProbeError {
        ProbeError::Socket {
            ifname: self.ifname.clone(),
            op,
            source,
        }
    }
}

/// The Ethernet address of `ifname` (SIOCGIFHWADDR on a socket of the same namespace).
pub(super) fn interface_mac(fd: &OwnedFd, ifname: &str) -> Result<MacAddr, ProbeError> {
    // SAFETY: ifreq is plain old data; all-zero is valid.
    let mut req: libc::ifreq = unsafe { mem::zeroed() };
    let name = ifname.as_bytes();
    if name.len() >= req.ifr_name.len() {
        return Err(ProbeError::NoSuchInterface {
            ifname: ifname.to_owned(),
        });
    }
    for (dst, src) in req.ifr_name.iter_mut().zip(name) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFHWADDR reads and writes one ifreq, which `req` is.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCGIFHWADDR, &mut req) };
    if rc < 0 {
        return Err(ProbeError::Socket {
            ifname: ifname.to_owned(),
            op: "SIOCGIFHWADDR",
            source: io::Error::last_os_error(),
        });
    }
    // SAFETY: after SIOCGIFHWADDR the union holds ifru_hwaddr.
    let hw = unsafe { req.ifr_ifru.ifru_hwaddr };
    if hw.sa_family != libc::ARPHRD_ETHER {
        return Err(ProbeError::NotEthernet {
            ifname: ifname.to_owned(),
            hw_type: hw.sa_family,
        });
    }
    let mut mac = [0u8; 6];
    for (dst, src) in mac.iter_mut().zip(hw.sa_data.iter()) {
        *dst = *src as u8;
    }
    Ok(mac)
}

/// Random bytes from the kernel (for the ISN, source port and IP id — an off-path guess of them
/// must not be able to fake an answer).
pub(super) fn random_u64() -> Result<u64, io::Error> {
    use std::io::Read;
    let mut b = [0u8; 8];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    Ok(u64::from_ne_bytes(b))
}
