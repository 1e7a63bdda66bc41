//! The real adapters: a NETLINK_SOCK_DIAG socket for dumps, and one subscribed to destroy
//! events.

use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::time::{Duration, Instant};

use netlink_sys::{protocols::NETLINK_SOCK_DIAG, Socket};

use super::wire::{self, KernelFilter, Progress, EXT_INFO};
use super::{
    Counts, SockDiagError, SocketCounter, SocketFilter, SocketSample, Tally, SERVED_STATES_MASK,
};

/// Size of the receive buffer. The kernel sends a dump in datagrams of at most ~32 KiB (it
/// sizes them from our largest read, capped at `SKB_WITH_OVERHEAD(32768)`), so 1 MiB can
/// never truncate one; `MSG_TRUNC` would tell us if it did.
const RECV_BUF: usize = 1 << 20;

/// Upper bound on one blocking read of a dump, in seconds.
const RECV_TIMEOUT_S: i64 = 5;

/// `SKNLGRP_INET_TCP_DESTROY`, from `enum sknetlink_groups` in `linux/sock_diag.h`.
const SKNLGRP_INET_TCP_DESTROY: u32 = 1;

/// Counts sockets with `inet_diag` dumps over a NETLINK_SOCK_DIAG socket.
///
/// The socket belongs to the network namespace of the thread that called [`Self::new`]: to
/// count in another namespace, create it from a thread that has `setns()`-ed there.
///
/// Each count is one dump of the TCP established hash with
/// * the state mask [`SERVED_STATES_MASK`] (no LISTEN, no TIME_WAIT in the reply),
/// * an `INET_DIAG_REQ_BYTECODE` program (or the sockid's exact port) for the filter, so the
///   kernel builds messages only for the VIP sockets. The `sockdiag` bench measured this at
///   ~0.65x the time of filtering 100k VIP sockets out of 200k in user space,
/// * `INET_DIAG_INFO` (tcp_info) only when idle times are wanted. It makes the reply about
///   three times bigger, yet measured within noise of the time without: the kernel's
///   per-socket work (walk, locking, filling the fixed attributes) dominates.
///
/// Cost: ~1.1 µs per matching socket and ~0.15 µs per other socket in the namespace on the
/// 2-core test VM, all of it in the kernel: ~110 ms for 100k VIP connections. A drain loop
/// polling every 100 ms should stretch its interval to a multiple of the last count's
/// duration, and can use [`DestroyWatcher`] to wake early.
pub struct NetlinkSockDiag {
    socket: Socket,
    buf: Vec<u8>,
    seq: u32,
    kernel_filter: bool,
    include_v4_mapped: bool,
}

impl NetlinkSockDiag {
    /// Opens the socket in the calling thread's network namespace.
    pub fn new() -> Result<Self, SockDiagError> {
        let socket = Socket::new(NETLINK_SOCK_DIAG).map_err(|source| SockDiagError::Open {
            what: "socket(AF_NETLINK, NETLINK_SOCK_DIAG)",
            source,
        })?;
        // The kernel produces each part of a dump inside our recv(), so a healthy dump never
        // blocks; the timeout only bounds the wait if a reply we could not parse hid the end
        // of the dump from us.
        nix::sys::socket::setsockopt(
            &socket,
            nix::sys::socket::sockopt::ReceiveTimeout,
            &nix::sys::time::TimeVal::new(RECV_TIMEOUT_S, 0),
        )
        .map_err(|e| SockDiagError::Open {
            what: "SO_RCVTIMEO",
            source: e.into(),
        })?;
        Ok(Self {
            socket,
            buf: vec![0; RECV_BUF],
            seq: 0,
            kernel_filter: true,
            include_v4_mapped: false,
        })
    }

    /// Whether to filter in the kernel with bytecode (the default) or to dump every served
    /// socket and filter in user space. Only the benchmark and diagnostics turn it off; the
    /// counts are the same either way.
    pub fn set_kernel_filter(&mut self, on: bool) {
        self.kernel_filter = on;
    }

    /// Whether to also dump `AF_INET6` sockets and count those with v4-mapped addresses
    /// (`::ffff:VIP`). Needed only when the proxy listens on `[::]` with `IPV6_V6ONLY` off
    /// (HAProxy `bind :::80 v4v6`); it costs a second walk of the established hash. Off by
    /// default: HAProxy in front of a VIP binds the IPv4 VIP itself.
    pub fn set_include_v4_mapped(&mut self, on: bool) {
        self.include_v4_mapped = on;
    }

    /// Runs the dumps for `f` and feeds each socket to `visit`.
    fn dump(
        &mut self,
        f: &SocketFilter,
        with_info: bool,
        visit: &mut dyn FnMut(&SocketSample),
    ) -> Result<(), SockDiagError> {
        let kf = if self.kernel_filter {
            KernelFilter::compile(f)
        } else {
            None
        };
        let ext = if with_info { EXT_INFO } else { 0 };
        let families: &[u8] = if self.include_v4_mapped {
            &[libc::AF_INET as u8, libc::AF_INET6 as u8]
        } else {
            &[libc::AF_INET as u8]
        };
        for &family in families {
            self.seq = self.seq.wrapping_add(1);
            let req = wire::dump_request(self.seq, family, SERVED_STATES_MASK, ext, kf.as_ref());
            self.one_dump(&req, visit)?;
        }
        Ok(())
    }

    fn one_dump(
        &mut self,
        req: &[u8],
        visit: &mut dyn FnMut(&SocketSample),
    ) -> Result<(), SockDiagError> {
        let seq = self.seq;
        loop {
            match self.socket.send(req, 0) {
                Ok(_) => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => return Err(SockDiagError::Send { seq, source }),
            }
        }
        let mut failure = None;
        loop {
            let len = match recv(&self.socket, &mut self.buf) {
                Ok(n) => n,
                Err(source) => return Err(SockDiagError::Recv { seq, source }),
            };
            if len > self.buf.len() {
                failure.get_or_insert(SockDiagError::Truncated {
                    len,
                    capacity: self.buf.len(),
                });
                // The rest of this datagram is lost; the dump itself goes on and must be
                // read to its end, or the kernel refuses the next one with EBUSY.
                continue;
            }
            let dgram = &self.buf[..len];
            let step = if failure.is_none() {
                wire::parse_datagram(dgram, Some(seq), visit)
            } else {
                wire::parse_datagram(dgram, Some(seq), &mut |_| {})
            };
            match step {
                Ok(Progress::More) => {}
                Ok(Progress::Done) => break,
                // The kernel's own error ends the dump (NLMSG_ERROR or DONE with -errno).
                Err(e @ SockDiagError::Kernel { .. }) => return Err(failure.unwrap_or(e)),
                // Unparseable bytes: keep reading to NLMSG_DONE, so that the socket is
                // usable for the next count, then report. A datagram we cannot walk
                // cannot tell us whether it held the DONE either; the seq check makes any
                // left-over harmless for the next dump.
                Err(e) => {
                    failure.get_or_insert(e);
                    if !has_done(dgram, seq) {
                        continue;
                    }
                    break;
                }
            }
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// Best effort: whether the datagram's last message is NLMSG_DONE of `seq`.
fn has_done(dgram: &[u8], seq: u32) -> bool {
    // NLMSG_DONE is 16 + 4 bytes and the last message of its datagram.
    if dgram.len() < 20 {
        return false;
    }
    let m = &dgram[dgram.len() - 20..];
    u32::from_ne_bytes([m[0], m[1], m[2], m[3]]) == 20
        && u16::from_ne_bytes([m[4], m[5]]) == 3
        && u32::from_ne_bytes([m[8], m[9], m[10], m[11]]) == seq
}

/// One `recv` with `MSG_TRUNC`, so the returned length is the datagram's real size; EINTR is
/// retried.
fn recv(socket: &Socket, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        let mut slice = &mut buf[..];
        match socket.recv(&mut slice, libc::MSG_TRUNC) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

impl SocketCounter for NetlinkSockDiag {
    fn count(
        &mut self,
        f: &SocketFilter,
        idle_after: Option<Duration>,
    ) -> Result<Counts, SockDiagError> {
        let mut tally = Tally::new(f, idle_after);
        self.dump(f, idle_after.is_some(), &mut |s| tally.add(s))?;
        Ok(tally.finish())
    }

    fn sample(&mut self, f: &SocketFilter) -> Result<Vec<SocketSample>, SockDiagError> {
        let mut out = Vec::new();
        self.dump(f, true, &mut |s| {
            if f.matches(s.local) && s.state.is_served() {
                out.push(*s);
            }
        })?;
        Ok(out)
    }
}

/// Wakes the drain loop when a matching TCP socket is destroyed.
///
/// Subscribes to sock_diag's `SKNLGRP_INET_TCP_DESTROY` multicast group (needs CAP_NET_ADMIN
/// in the socket's network namespace; the socket belongs to the namespace of the thread that
/// created it). The kernel broadcasts an `inet_diag_msg` (state CLOSE, with tcp_info) when it
/// frees a *full* socket of a user-space socket's namespace (`sk_destruct`). Measured on
/// kernel 6.18 (`tests/sockdiag_ns.rs`):
/// * closing an established connection yields one event per end, when that end's full socket
///   is freed: right after the last ACK when the client closed first, or as soon as our FIN is
///   acknowledged when we closed first (the kernel swaps in a small timewait-sock then);
/// * a request socket (SYN_RECV) that goes away yields none, and by the code neither does a
///   TIME_WAIT or orphaned FIN_WAIT2 timewait-sock expiring;
/// * a socket the application has not closed yet stays allocated (in CLOSE) until it does.
///
/// So an event is a hint to recount early, never a replacement for polling.
pub struct DestroyWatcher {
    socket: Socket,
    buf: Vec<u8>,
    filter: SocketFilter,
}

impl DestroyWatcher {
    /// Subscribes, in the calling thread's network namespace, to destroy events of sockets
    /// matching `filter`.
    pub fn new(filter: SocketFilter) -> Result<Self, SockDiagError> {
        let mut socket = Socket::new(NETLINK_SOCK_DIAG).map_err(|source| SockDiagError::Open {
            what: "socket(AF_NETLINK, NETLINK_SOCK_DIAG)",
            source,
        })?;
        socket.bind_auto().map_err(|source| SockDiagError::Open {
            what: "bind",
            source,
        })?;
        // A burst of closes (thousands per second at the end of a drain) must not overflow
        // the queue; if it does anyway, ENOBUFS is reported as "something happened".
        socket
            .set_rx_buf_sz(4 << 20)
            .map_err(|source| SockDiagError::Open {
                what: "SO_RCVBUF",
                source,
            })?;
        socket
            .add_membership(SKNLGRP_INET_TCP_DESTROY)
            .map_err(|source| SockDiagError::Subscribe { source })?;
        socket
            .set_non_blocking(true)
            .map_err(|source| SockDiagError::Open {
                what: "O_NONBLOCK",
                source,
            })?;
        Ok(Self {
            socket,
            buf: vec![0; RECV_BUF],
            filter,
        })
    }

    /// Waits up to `timeout` for a matching socket to be destroyed. Returns `true` as soon as
    /// one was (events already queued count, and are consumed), `false` on timeout. Also
    /// `true` when the kernel dropped events for lack of buffer space (ENOBUFS), since one of
    /// them may have been a match.
    pub fn wait(&mut self, timeout: Duration) -> Result<bool, SockDiagError> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.drain_queue()? {
                return Ok(true);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(false);
            }
            poll_in(&self.socket, left).map_err(|source| SockDiagError::Wait { source })?;
        }
    }

    /// Reads every queued event; whether any matched.
    fn drain_queue(&mut self) -> Result<bool, SockDiagError> {
        let mut matched = false;
        loop {
            let len = match recv(&self.socket, &mut self.buf) {
                Ok(n) => n.min(self.buf.len()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(matched),
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    matched = true;
                    continue;
                }
                Err(source) => return Err(SockDiagError::Wait { source }),
            };
            let filter = &self.filter;
            wire::parse_datagram(&self.buf[..len], None, &mut |s| {
                matched |= filter.matches(s.local);
            })?;
        }
    }
}

/// `poll(2)` for readability, up to `timeout` (rounded up to whole ms); EINTR is a wake-up.
fn poll_in(socket: &Socket, timeout: Duration) -> io::Result<()> {
    let ms = timeout.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
    let mut pfd = libc::pollfd {
        fd: socket.as_fd().as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for a socket we own, for the duration of the call.
    let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    Ok(())
}
