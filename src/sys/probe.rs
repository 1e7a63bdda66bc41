//! Probing the peer with raw frames: who answers ARP for an address, and does the peer's kernel
//! accept a TCP connection to VIP:port right now.
//!
//! Both use an AF_PACKET socket on the ingress interface, so they work below our own IP stack:
//! while this node owns the VIP, a packet to the VIP sent through our routing would be delivered
//! locally, never reaching the peer. Sending a hand-made Ethernet frame to the peer's MAC proves
//! what a diverted flow needs — the peer's kernel accepts packets for the VIP (its local route,
//! FIELD-NOTES pitfall 5) and something listens on VIP:port there.
//!
//! Synchronous with bounded waits (the caller may use `spawn_blocking`); IPv4 over Ethernet only.
//! Sockets act in the network namespace of the calling thread.
//!
//! Receiving: a classic BPF filter attached before `bind` keeps the socket from copying every
//! frame of a busy ingress interface (tens of thousands of packets per second on a loaded LB);
//! user space re-checks every field anyway. Frames we sent ourselves come back on the packet
//! socket as `PACKET_OUTGOING` and are skipped.

use std::io;
use std::mem;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use thiserror::Error;

/// An Ethernet MAC address.
pub type MacAddr = [u8; 6];

/// Formats a MAC address as `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &MacAddr) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Outcome of a [`syn_probe`]: the negative answers are results, not errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeResult {
    /// The peer answered SYN-ACK: it accepts packets for the VIP and something listens on the
    /// port. `rtt` is from sending the SYN to receiving the SYN-ACK.
    Accepted {
        /// Round-trip time of the handshake's first two packets.
        rtt: Duration,
    },
    /// The peer answered RST: it accepts packets for the VIP but nothing listens on the port.
    Refused,
    /// Nothing came back before the timeout: the peer drops packets for the VIP (no local
    /// route, firewall) or the frame did not reach it.
    NoAnswer,
}

/// Errors of the probes — failures to probe at all, never a negative answer.
#[derive(Debug, Error)]
pub enum ProbeError {
    /// The interface does not exist in this network namespace.
    #[error("no such interface {ifname:?}")]
    NoSuchInterface {
        /// The interface.
        ifname: String,
    },
    /// Raw sockets need CAP_NET_RAW.
    #[error(
        "not permitted to open a raw packet socket on {ifname:?} (needs CAP_NET_RAW): {source}"
    )]
    Permission {
        /// The interface.
        ifname: String,
        /// The socket error.
        source: io::Error,
    },
    /// The interface is down, so nothing can be sent on it.
    #[error("interface {ifname:?} is down")]
    InterfaceDown {
        /// The interface.
        ifname: String,
    },
    /// The interface has no Ethernet address (tunnel, loopback, ...).
    #[error("interface {ifname:?} is not an Ethernet interface (hardware type {hw_type})")]
    NotEthernet {
        /// The interface.
        ifname: String,
        /// Its ARPHRD_* hardware type.
        hw_type: u16,
    },
    /// Any other socket operation failed.
    #[error("packet socket on {ifname:?}: {op} failed: {source}")]
    Socket {
        /// The interface.
        ifname: String,
        /// The failing operation.
        op: &'static str,
        /// The error.
        source: io::Error,
    },
}

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_ARP: u16 = 0x0806;
/// Ethernet's minimum frame without FCS; shorter frames are padded so strict drivers accept them.
const ETH_MIN_FRAME: usize = 60;
const ARP_REQUEST: u16 = 1;
const ARP_REPLY: u16 = 2;
const IPPROTO_TCP: u8 = 6;

/// TCP flag bits.
const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;

// ---------------------------------------------------------------------------------------------
// Pure packet building and parsing.
// ---------------------------------------------------------------------------------------------

/// Internet checksum (RFC 1071) of `data`, continuing from a partial 32-bit sum.
fn checksum_fold(mut sum: u32, data: &[u8]) -> u16 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// RFC 1071 checksum of `data`.
fn checksum(data: &[u8]) -> u16 {
    checksum_fold(0, data)
}

/// TCP checksum: over the IPv4 pseudo-header (src, dst, zero, protocol, TCP length) and the
/// segment, whose checksum field must be zero.
fn tcp_checksum(src: Ipv4Addr, dst: Ipv4Addr, segment: &[u8]) -> u16 {
    let mut pseudo = [0u8; 12];
    pseudo[0..4].copy_from_slice(&src.octets());
    pseudo[4..8].copy_from_slice(&dst.octets());
    pseudo[9] = IPPROTO_TCP;
    pseudo[10..12].copy_from_slice(&(segment.len() as u16).to_be_bytes());
    let mut sum = 0u32;
    for c in pseudo.chunks_exact(2) {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    checksum_fold(sum, segment)
}

/// A broadcast ARP who-has `target` request from `our_mac`/`our_ip`.
fn arp_request_frame(our_mac: MacAddr, our_ip: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let mut f = Vec::with_capacity(ETH_MIN_FRAME);
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&our_mac);
    f.extend_from_slice(&ETH_P_ARP.to_be_bytes());
    f.extend_from_slice(&1u16.to_be_bytes()); // hardware type: Ethernet
    f.extend_from_slice(&ETH_P_IP.to_be_bytes()); // protocol type: IPv4
    f.push(6); // hardware address length
    f.push(4); // protocol address length
    f.extend_from_slice(&ARP_REQUEST.to_be_bytes());
    f.extend_from_slice(&our_mac);
    f.extend_from_slice(&our_ip.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target.octets());
    f.resize(ETH_MIN_FRAME, 0);
    f
}

/// The sender MAC of an ARP reply saying "`target` is at ..." addressed to `our_ip`; `None` for
/// any other frame (requests, gratuitous ARPs, answers to somebody else's question).
fn parse_arp_reply(frame: &[u8], our_ip: Ipv4Addr, target: Ipv4Addr) -> Option<MacAddr> {
    if frame.len() < ETH_HLEN + 28 {
        return None;
    }
    let be16 = |i: usize| u16::from_be_bytes([frame[i], frame[i + 1]]);
    let arp = ETH_HLEN;
    if be16(12) != ETH_P_ARP
        || be16(arp) != 1
        || be16(arp + 2) != ETH_P_IP
        || frame[arp + 4] != 6
        || frame[arp + 5] != 4
        || be16(arp + 6) != ARP_REPLY
    {
        return None;
    }
    let spa = Ipv4Addr::new(
        frame[arp + 14],
        frame[arp + 15],
        frame[arp + 16],
        frame[arp + 17],
    );
    let tpa = Ipv4Addr::new(
        frame[arp + 24],
        frame[arp + 25],
        frame[arp + 26],
        frame[arp + 27],
    );
    if spa != target || tpa != our_ip {
        return None;
    }
    let mut sha = [0u8; 6];
    sha.copy_from_slice(&frame[arp + 8..arp + 14]);
    Some(sha)
}

/// Everything needed to build one TCP segment in an Ethernet frame.
#[derive(Debug, Clone, Copy)]
struct TcpFrame {
    src_mac: MacAddr,
    dst_mac: MacAddr,
    src_ip: Ipv4Addr,
    dst_ip: Ipv4Addr,
    sport: u16,
    dport: u16,
    seq: u32,
    ack: u32,
    flags: u8,
    ip_id: u16,
    /// MSS option to advertise (SYN only).
    mss: Option<u16>,
}

impl TcpFrame {
    fn build(&self) -> Vec<u8> {
        let opt_len = if self.mss.is_some() { 4 } else { 0 };
        let tcp_len = 20 + opt_len;
        let total = 20 + tcp_len;
        let mut f = Vec::with_capacity(ETH_HLEN + total);
        f.extend_from_slice(&self.dst_mac);
        f.extend_from_slice(&self.src_mac);
        f.extend_from_slice(&ETH_P_IP.to_be_bytes());
        let ip = f.len();
        f.push(0x45); // version 4, IHL 5
        f.push(0); // DSCP/ECN
        f.extend_from_slice(&(total as u16).to_be_bytes());
        f.extend_from_slice(&self.ip_id.to_be_bytes());
        f.extend_from_slice(&0x4000u16.to_be_bytes()); // DF, offset 0
        f.push(64); // TTL
        f.push(IPPROTO_TCP);
        f.extend_from_slice(&[0, 0]); // header checksum, filled below
        f.extend_from_slice(&self.src_ip.octets());
        f.extend_from_slice(&self.dst_ip.octets());
        let ip_sum = checksum(&f[ip..ip + 20]);
        f[ip + 10..ip + 12].copy_from_slice(&ip_sum.to_be_bytes());
        let tcp = f.len();
        f.extend_from_slice(&self.sport.to_be_bytes());
        f.extend_from_slice(&self.dport.to_be_bytes());
        f.extend_from_slice(&self.seq.to_be_bytes());
        f.extend_from_slice(&self.ack.to_be_bytes());
        f.push(((tcp_len / 4) as u8) << 4);
        f.push(self.flags);
        let window: u16 = if self.flags & TCP_RST != 0 { 0 } else { 64240 };
        f.extend_from_slice(&window.to_be_bytes());
        f.extend_from_slice(&[0, 0]); // checksum, filled below
        f.extend_from_slice(&[0, 0]); // urgent pointer
        if let Some(mss) = self.mss {
            f.extend_from_slice(&[2, 4]);
            f.extend_from_slice(&mss.to_be_bytes());
        }
        let tcp_sum = tcp_checksum(self.src_ip, self.dst_ip, &f[tcp..]);
        f[tcp + 16..tcp + 18].copy_from_slice(&tcp_sum.to_be_bytes());
        // Receivers trim to the IP total length, so the padding is never part of the segment.
        if f.len() < ETH_MIN_FRAME {
            f.resize(ETH_MIN_FRAME, 0);
        }
        f
    }
}

/// The header fields of a received IPv4/TCP frame that the probe looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TcpHeaderView {
    src_ip: Ipv4Addr,
    dst_ip: Ipv4Addr,
    sport: u16,
    dport: u16,
    seq: u32,
    ack: u32,
    flags: u8,
}

/// Parses an unfragmented IPv4/TCP frame. Checksums are not verified: a frame that crossed a
/// veth or was taken before NIC checksum completion may carry a partial checksum
/// (CHECKSUM_PARTIAL), and the kernel already dropped corrupt frames from the wire.
fn parse_tcp(frame: &[u8]) -> Option<TcpHeaderView> {
    if frame.len() < ETH_HLEN + 20 + 20 {
        return None;
    }
    if u16::from_be_bytes([frame[12], frame[13]]) != ETH_P_IP {
        return None;
    }
    let ip = &frame[ETH_HLEN..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let frag = u16::from_be_bytes([ip[6], ip[7]]);
    // Version 4, sane header length, TCP, and neither a later fragment nor "more fragments".
    if ip[0] >> 4 != 4 || ihl < 20 || ip[9] != IPPROTO_TCP || frag & 0x3fff != 0 {
        return None;
    }
    let tcp = ip.get(ihl..ihl + 20)?;
    let be16 = |s: &[u8], i: usize| u16::from_be_bytes([s[i], s[i + 1]]);
    let be32 = |s: &[u8], i: usize| u32::from_be_bytes([s[i], s[i + 1], s[i + 2], s[i + 3]]);
    Some(TcpHeaderView {
        src_ip: Ipv4Addr::from(be32(ip, 12)),
        dst_ip: Ipv4Addr::from(be32(ip, 16)),
        sport: be16(tcp, 0),
        dport: be16(tcp, 2),
        seq: be32(tcp, 4),
        ack: be32(tcp, 8),
        flags: tcp[13],
    })
}

/// The connection a SYN probe opened, to recognise the answer.
#[derive(Debug, Clone, Copy)]
struct ProbeFlow {
    our_ip: Ipv4Addr,
    sport: u16,
    vip: Ipv4Addr,
    port: u16,
    isn: u32,
}

/// What an answer to our SYN says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SynAnswer {
    SynAck,
    Rst,
}

impl ProbeFlow {
    /// Classifies a received segment; `None` if it is not an acceptable answer to our SYN
    /// (other flow, or an ACK number that does not acknowledge our SYN, RFC 9293 3.10.7.3).
    fn classify(&self, h: &TcpHeaderView) -> Option<SynAnswer> {
        if h.src_ip != self.vip
            || h.dst_ip != self.our_ip
            || h.sport != self.port
            || h.dport != self.sport
            || h.flags & TCP_ACK == 0
            || h.ack != self.isn.wrapping_add(1)
        {
            return None;
        }
        if h.flags & TCP_RST != 0 {
            Some(SynAnswer::Rst)
        } else if h.flags & (TCP_SYN | TCP_FIN) == TCP_SYN {
            Some(SynAnswer::SynAck)
        } else {
            None
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Classic BPF filters.
// ---------------------------------------------------------------------------------------------

/// The few classic BPF instructions the filters use. Every test jumps to a final "drop".
#[derive(Debug, Clone, Copy)]
enum Bpf {
    /// A = byte at offset.
    LdB(u32),
    /// A = big-endian half-word at offset.
    LdH(u32),
    /// A = big-endian word at offset.
    LdW(u32),
    /// X = 4 * (byte at offset & 0xf) — the IPv4 header length.
    LdxIhl(u32),
    /// A = big-endian half-word at X + offset.
    LdHInd(u32),
    /// Drop unless A == k.
    DropUnlessEq(u32),
    /// Drop if A & k != 0.
    DropIfAnySet(u32),
    /// Accept the whole frame.
    Accept,
}

/// Assembles a program and appends the shared "drop" (return 0) at the end.
fn bpf_assemble(prog: &[Bpf]) -> Vec<libc::sock_filter> {
    let drop_at = prog.len();
    let op = |code: u32| code as u16;
    let mut out: Vec<libc::sock_filter> = prog
        .iter()
        .enumerate()
        .map(|(i, insn)| {
            let to_drop = u8::try_from(drop_at - i - 1).expect("BPF program too long for a jump");
            let (code, jt, jf, k) = match *insn {
                Bpf::LdB(k) => (op(libc::BPF_LD | libc::BPF_B | libc::BPF_ABS), 0, 0, k),
                Bpf::LdH(k) => (op(libc::BPF_LD | libc::BPF_H | libc::BPF_ABS), 0, 0, k),
                Bpf::LdW(k) => (op(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS), 0, 0, k),
                Bpf::LdxIhl(k) => (op(libc::BPF_LDX | libc::BPF_B | libc::BPF_MSH), 0, 0, k),
                Bpf::LdHInd(k) => (op(libc::BPF_LD | libc::BPF_H | libc::BPF_IND), 0, 0, k),
                Bpf::DropUnlessEq(k) => (
                    op(libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K),
                    0,
                    to_drop,
                    k,
                ),
                Bpf::DropIfAnySet(k) => (
                    op(libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K),
                    to_drop,
                    0,
                    k,
                ),
                Bpf::Accept => (op(libc::BPF_RET | libc::BPF_K), 0, 0, 0x0004_0000),
            };
            libc::sock_filter { code, jt, jf, k }
        })
        .collect();
    out.push(libc::sock_filter {
        code: op(libc::BPF_RET | libc::BPF_K),
        jt: 0,
        jf: 0,
        k: 0,
    });
    out
}

/// Passes ARP replies whose sender protocol address is `target`.
fn arp_reply_filter(target: Ipv4Addr) -> Vec<libc::sock_filter> {
    bpf_assemble(&[
        Bpf::LdH(12),
        Bpf::DropUnlessEq(u32::from(ETH_P_ARP)),
        Bpf::LdH(20),
        Bpf::DropUnlessEq(u32::from(ARP_REPLY)),
        Bpf::LdW(28),
        Bpf::DropUnlessEq(u32::from(target)),
        Bpf::Accept,
    ])
}

/// Passes unfragmented TCP segments of the flow `vip:port -> our_ip:sport`.
fn tcp_reply_filter(flow: &ProbeFlow) -> Vec<libc::sock_filter> {
    bpf_assemble(&[
        Bpf::LdH(12),
        Bpf::DropUnlessEq(u32::from(ETH_P_IP)),
        Bpf::LdB(23),
        Bpf::DropUnlessEq(u32::from(IPPROTO_TCP)),
        Bpf::LdW(26),
        Bpf::DropUnlessEq(u32::from(flow.vip)),
        Bpf::LdW(30),
        Bpf::DropUnlessEq(u32::from(flow.our_ip)),
        Bpf::LdH(20),
        Bpf::DropIfAnySet(0x1fff),
        Bpf::LdxIhl(14),
        Bpf::LdHInd(14),
        Bpf::DropUnlessEq(u32::from(flow.port)),
        Bpf::LdHInd(16),
        Bpf::DropUnlessEq(u32::from(flow.sport)),
        Bpf::Accept,
    ])
}

// ---------------------------------------------------------------------------------------------
// The packet socket.
// ---------------------------------------------------------------------------------------------

/// An AF_PACKET raw socket bound to one interface.
struct PacketSocket {
    fd: OwnedFd,
    ifname: String,
    mac: MacAddr,
}

impl PacketSocket {
    /// Opens a socket receiving frames of `ethertype` on `ifname` that pass `filter`.
    fn open(
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
        // SAFETY: plain syscall; the fd is owned immediately below.
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            let e = io::Error::last_os_error();
            return Err(match e.raw_os_error() {
                Some(libc::EPERM) | Some(libc::EACCES) => ProbeError::Permission {
                    ifname: ifname.to_owned(),
                    source: e,
                },
                _ => err("socket", e),
            });
        }
        // SAFETY: `raw` is a fresh, valid descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };

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
    fn send(&self, frame: &[u8]) -> Result<(), ProbeError> {
        // SAFETY: `frame` is a valid buffer of the given length.
        let n = unsafe {
            libc::send(
                self.fd.as_raw_fd(),
                frame.as_ptr() as *const libc::c_void,
                frame.len(),
                0,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return Err(match e.raw_os_error() {
                Some(libc::ENETDOWN) | Some(libc::ENXIO) => ProbeError::InterfaceDown {
                    ifname: self.ifname.clone(),
                },
                _ => ProbeError::Socket {
                    ifname: self.ifname.clone(),
                    op: "send",
                    source: e,
                },
            });
        }
        Ok(())
    }

    /// Receives incoming frames until `on_frame` returns `Some` or `deadline` passes (`None`).
    fn recv_until<R>(
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
            let mut pfd = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // Round up so a sub-millisecond remainder still waits instead of spinning.
            let ms = left.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
            // SAFETY: one valid pollfd.
            let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
            if rc < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(self.error("poll", e));
            }
            if rc == 0 {
                continue;
            }
            // Drain everything queued before polling again.
            loop {
                // SAFETY: all-zero sockaddr_ll is valid; sizes match the buffers passed.
                let mut from: libc::sockaddr_ll = unsafe { mem::zeroed() };
                let mut from_len = mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
                let n = unsafe {
                    libc::recvfrom(
                        self.fd.as_raw_fd(),
                        buf.as_mut_ptr() as *mut libc::c_void,
                        buf.len(),
                        libc::MSG_DONTWAIT,
                        &mut from as *mut libc::sockaddr_ll as *mut libc::sockaddr,
                        &mut from_len,
                    )
                };
                if n < 0 {
                    let e = io::Error::last_os_error();
                    match e.kind() {
                        io::ErrorKind::WouldBlock => break,
                        io::ErrorKind::Interrupted => continue,
                        _ => return Err(self.error("recvfrom", e)),
                    }
                }
                // Our own transmissions are looped back to packet sockets as PACKET_OUTGOING;
                // that includes our kernel's RST to a SYN-ACK it does not expect.
                if from.sll_pkttype == libc::PACKET_OUTGOING {
                    continue;
                }
                if let Some(r) = on_frame(&buf[..n as usize]) {
                    return Ok(Some(r));
                }
            }
        }
    }

    fn error(&self, op: &'static str, source: io::Error) -> ProbeError {
        ProbeError::Socket {
            ifname: self.ifname.clone(),
            op,
            source,
        }
    }
}

/// The Ethernet address of `ifname` (SIOCGIFHWADDR on a socket of the same namespace).
fn interface_mac(fd: &OwnedFd, ifname: &str) -> Result<MacAddr, ProbeError> {
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
fn random_u64() -> Result<u64, io::Error> {
    let mut b = [0u8; 8];
    // SAFETY: writes at most b.len() bytes into `b`.
    let n = unsafe { libc::getrandom(b.as_mut_ptr() as *mut libc::c_void, b.len(), 0) };
    if n != b.len() as isize {
        return Err(io::Error::last_os_error());
    }
    Ok(u64::from_ne_bytes(b))
}

// ---------------------------------------------------------------------------------------------
// The probes.
// ---------------------------------------------------------------------------------------------

fn arp_collect(
    ifname: &str,
    our_ip: Ipv4Addr,
    target: Ipv4Addr,
    timeout: Duration,
    first_only: bool,
) -> Result<Vec<MacAddr>, ProbeError> {
    let sock = PacketSocket::open(ifname, ETH_P_ARP, &arp_reply_filter(target))?;
    sock.send(&arp_request_frame(sock.mac, our_ip, target))?;
    let deadline = Instant::now() + timeout;
    let mut macs: Vec<MacAddr> = Vec::new();
    sock.recv_until(deadline, |frame| {
        let mac = parse_arp_reply(frame, our_ip, target)?;
        if !macs.contains(&mac) {
            macs.push(mac);
        }
        first_only.then_some(())
    })?;
    Ok(macs)
}

/// Sends one ARP who-has `target` (broadcast, sender `our_ip` and `ifname`'s MAC) and returns
/// the MAC of the first answer, or `None` if nobody answered within `timeout`.
///
/// With `target` = the peer's address this finds the peer's MAC; with `target` = the VIP it
/// finds the VIP's owner (after failover it must be the peer). `our_ip` may be 0.0.0.0 (an
/// RFC 5227 probe, which leaves no neighbour entry for us on the answering host).
pub fn arp_resolve(
    ifname: &str,
    our_ip: Ipv4Addr,
    target: Ipv4Addr,
    timeout: Duration,
) -> Result<Option<MacAddr>, ProbeError> {
    Ok(arp_collect(ifname, our_ip, target, timeout, true)?
        .into_iter()
        .next())
}

/// Like [`arp_resolve`] but listens for the whole `timeout` and returns every distinct MAC that
/// answered, in order of arrival. More than one means two hosts claim the address — for the VIP,
/// a split brain or a peer answering ARP while BACKUP (FIELD-NOTES pitfall 5).
pub fn arp_resolve_all(
    ifname: &str,
    our_ip: Ipv4Addr,
    target: Ipv4Addr,
    timeout: Duration,
) -> Result<Vec<MacAddr>, ProbeError> {
    arp_collect(ifname, our_ip, target, timeout, false)
}

/// Lowest source port used by probes: above Linux's default `ip_local_port_range`
/// (32768–60999), so a probe never collides with a connection our kernel picked a port for.
const PROBE_PORT_MIN: u16 = 61000;

/// Sends one TCP SYN `our_ip:<random port ≥ 61000> -> vip:port` in a frame addressed to
/// `peer_mac` out of `ifname`, and reports how the peer answered within `timeout`.
///
/// On a SYN-ACK it sends an RST with seq = ISN + 1 so the peer drops its request socket at
/// once instead of retransmitting SYN-ACKs; the listener's accept queue never sees the probe.
///
/// Our own kernel also receives the peer's answer, which is harmless either way: while we own
/// the VIP, a packet *from* the VIP is a martian source (it is one of our local addresses) and
/// is dropped in routing; once we do not own it, no socket matches `our_ip:port` and our kernel
/// answers with an RST carrying the same seq = ISN + 1 as ours.
pub fn syn_probe(
    ifname: &str,
    our_ip: Ipv4Addr,
    peer_mac: MacAddr,
    vip: Ipv4Addr,
    port: u16,
    timeout: Duration,
) -> Result<ProbeResult, ProbeError> {
    let rnd = random_u64().map_err(|source| ProbeError::Socket {
        ifname: ifname.to_owned(),
        op: "getrandom",
        source,
    })?;
    let flow = ProbeFlow {
        our_ip,
        sport: PROBE_PORT_MIN + (rnd as u16) % (u16::MAX - PROBE_PORT_MIN + 1),
        vip,
        port,
        isn: (rnd >> 16) as u32,
    };
    let ip_id = (rnd >> 48) as u16;
    let sock = PacketSocket::open(ifname, ETH_P_IP, &tcp_reply_filter(&flow))?;
    let segment = |flags, seq, mss| TcpFrame {
        src_mac: sock.mac,
        dst_mac: peer_mac,
        src_ip: our_ip,
        dst_ip: vip,
        sport: flow.sport,
        dport: port,
        seq,
        ack: 0,
        flags,
        ip_id,
        mss,
    };
    let sent_at = Instant::now();
    sock.send(&segment(TCP_SYN, flow.isn, Some(1460)).build())?;
    let answer = sock.recv_until(sent_at + timeout, |frame| {
        parse_tcp(frame).and_then(|h| flow.classify(&h))
    })?;
    let rtt = sent_at.elapsed();
    Ok(match answer {
        Some(SynAnswer::SynAck) => {
            let rst = segment(TCP_RST, flow.isn.wrapping_add(1), None).build();
            if let Err(e) = sock.send(&rst) {
                // The probe's answer stands; the peer's request socket just lives until its
                // SYN-ACK retries run out.
                tracing::warn!(ifname, %vip, port, error = %e, "could not reset the probe connection");
            }
            ProbeResult::Accepted { rtt }
        }
        Some(SynAnswer::Rst) => ProbeResult::Refused,
        None => ProbeResult::NoAnswer,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const A_MAC: MacAddr = [0x02, 0, 0, 0, 0, 0x0a];
    const B_MAC: MacAddr = [0x02, 0, 0, 0, 0, 0x0b];
    const A_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 5, 1);
    const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 5, 100);

    /// Runs a classic BPF program of the subset [`bpf_assemble`] emits, like the kernel would.
    fn bpf_run(prog: &[libc::sock_filter], pkt: &[u8]) -> u32 {
        let (mut a, mut x, mut pc) = (0u32, 0u32, 0usize);
        let load = |off: usize, n: usize| -> Option<u32> {
            pkt.get(off..off + n)
                .map(|b| b.iter().fold(0u32, |acc, &v| (acc << 8) | u32::from(v)))
        };
        loop {
            let i = prog[pc];
            let code = u32::from(i.code);
            pc += 1;
            let k = i.k as usize;
            let next = match code {
                c if c == libc::BPF_LD | libc::BPF_B | libc::BPF_ABS => load(k, 1),
                c if c == libc::BPF_LD | libc::BPF_H | libc::BPF_ABS => load(k, 2),
                c if c == libc::BPF_LD | libc::BPF_W | libc::BPF_ABS => load(k, 4),
                c if c == libc::BPF_LD | libc::BPF_H | libc::BPF_IND => load(x as usize + k, 2),
                c if c == libc::BPF_LDX | libc::BPF_B | libc::BPF_MSH => {
                    x = 4 * (load(k, 1).unwrap_or(0) & 0xf);
                    Some(a)
                }
                c if c == libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K => {
                    pc += usize::from(if a == i.k { i.jt } else { i.jf });
                    Some(a)
                }
                c if c == libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K => {
                    pc += usize::from(if a & i.k != 0 { i.jt } else { i.jf });
                    Some(a)
                }
                c if c == libc::BPF_RET | libc::BPF_K => return i.k,
                other => panic!("unexpected BPF opcode {other:#x}"),
            };
            match next {
                Some(v) => a = v,
                // An out-of-bounds load makes the kernel's filter return 0.
                None => return 0,
            }
        }
    }

    fn flow() -> ProbeFlow {
        ProbeFlow {
            our_ip: A_IP,
            sport: 61234,
            vip: VIP,
            port: 80,
            isn: 0xffff_ffff,
        }
    }

    fn answer(flags: u8, ack: u32) -> TcpFrame {
        TcpFrame {
            src_mac: B_MAC,
            dst_mac: A_MAC,
            src_ip: VIP,
            dst_ip: A_IP,
            sport: 80,
            dport: 61234,
            seq: 777,
            ack,
            flags,
            ip_id: 1,
            mss: None,
        }
    }

    #[test]
    fn ipv4_header_checksum_matches_known_vector() {
        // The classic example header (checksum field zeroed): expected checksum 0xb861.
        let hdr = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(checksum(&hdr), 0xb861);
        assert_eq!(checksum(&[0x01]), !0x0100);
    }

    #[test]
    fn built_syn_has_valid_checksums_and_fields() {
        let f = flow();
        let frame = TcpFrame {
            src_mac: A_MAC,
            dst_mac: B_MAC,
            src_ip: A_IP,
            dst_ip: VIP,
            sport: f.sport,
            dport: 80,
            seq: f.isn,
            ack: 0,
            flags: TCP_SYN,
            ip_id: 0x1234,
            mss: Some(1460),
        }
        .build();
        assert_eq!(frame.len(), ETH_MIN_FRAME);
        assert_eq!(&frame[0..6], &B_MAC);
        assert_eq!(&frame[6..12], &A_MAC);
        let ip = &frame[14..34];
        // A correct header sums to zero including its checksum.
        assert_eq!(checksum(ip), 0);
        let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
        assert_eq!(total, 44);
        let tcp = &frame[34..14 + total];
        assert_eq!(tcp_checksum(A_IP, VIP, tcp), 0);
        let h = parse_tcp(&frame).unwrap();
        assert_eq!(
            h,
            TcpHeaderView {
                src_ip: A_IP,
                dst_ip: VIP,
                sport: 61234,
                dport: 80,
                seq: 0xffff_ffff,
                ack: 0,
                flags: TCP_SYN
            }
        );
        assert_eq!(&tcp[20..24], &[2, 4, 0x05, 0xb4]);
    }

    #[test]
    fn tcp_checksum_handles_odd_lengths() {
        let seg = [
            0u8, 80, 0, 81, 1, 2, 3, 4, 5, 6, 7, 8, 0x50, 0x18, 0, 0, 0, 0, 0, 0, 0xab,
        ];
        let sum = tcp_checksum(A_IP, VIP, &seg);
        let mut with = seg;
        with[16..18].copy_from_slice(&sum.to_be_bytes());
        assert_eq!(tcp_checksum(A_IP, VIP, &with), 0);
    }

    #[test]
    fn answers_are_classified_by_flags_and_ack() {
        let f = flow();
        let classify = |t: TcpFrame| parse_tcp(&t.build()).and_then(|h| f.classify(&h));
        // isn + 1 wraps to 0.
        assert_eq!(
            classify(answer(TCP_SYN | TCP_ACK, 0)),
            Some(SynAnswer::SynAck)
        );
        assert_eq!(classify(answer(TCP_RST | TCP_ACK, 0)), Some(SynAnswer::Rst));
        assert_eq!(classify(answer(TCP_SYN | TCP_ACK, 5)), None, "wrong ack");
        assert_eq!(classify(answer(TCP_RST, 0)), None, "RST without ACK");
        assert_eq!(classify(answer(TCP_ACK, 0)), None, "plain ACK");
        let mut other_port = answer(TCP_SYN | TCP_ACK, 0);
        other_port.dport = 61235;
        assert_eq!(classify(other_port), None);
        let mut other_src = answer(TCP_SYN | TCP_ACK, 0);
        other_src.src_ip = Ipv4Addr::new(198, 18, 5, 2);
        assert_eq!(classify(other_src), None);
    }

    #[test]
    fn fragments_and_non_tcp_are_not_parsed() {
        let mut frame = answer(TCP_SYN | TCP_ACK, 0).build();
        frame[14 + 6] = 0x20; // more fragments
        assert_eq!(parse_tcp(&frame), None);
        let mut udp = answer(TCP_SYN | TCP_ACK, 0).build();
        udp[14 + 9] = 17;
        assert_eq!(parse_tcp(&udp), None);
        assert_eq!(parse_tcp(&frame[..40]), None);
    }

    #[test]
    fn tcp_filter_passes_exactly_the_probe_flow() {
        let f = flow();
        let prog = tcp_reply_filter(&f);
        assert!(bpf_run(&prog, &answer(TCP_SYN | TCP_ACK, 0).build()) > 0);
        assert!(bpf_run(&prog, &answer(TCP_RST | TCP_ACK, 0).build()) > 0);
        let mut wrong_dport = answer(TCP_SYN | TCP_ACK, 0);
        wrong_dport.dport = 1;
        assert_eq!(bpf_run(&prog, &wrong_dport.build()), 0);
        let mut wrong_sport = answer(TCP_SYN | TCP_ACK, 0);
        wrong_sport.sport = 81;
        assert_eq!(bpf_run(&prog, &wrong_sport.build()), 0);
        let mut wrong_dst = answer(TCP_SYN | TCP_ACK, 0);
        wrong_dst.dst_ip = Ipv4Addr::new(198, 18, 5, 3);
        assert_eq!(bpf_run(&prog, &wrong_dst.build()), 0);
        let mut frag = answer(TCP_SYN | TCP_ACK, 0).build();
        frag[14 + 7] = 1;
        assert_eq!(bpf_run(&prog, &frag), 0);
        // IP options move the TCP header; the filter follows the IHL.
        let mut opts = answer(TCP_SYN | TCP_ACK, 0).build();
        opts[14] = 0x46;
        opts.splice(34..34, [1, 1, 1, 1]);
        assert!(bpf_run(&prog, &opts) > 0);
        assert_eq!(
            parse_tcp(&opts).and_then(|h| f.classify(&h)),
            Some(SynAnswer::SynAck)
        );
        assert_eq!(bpf_run(&prog, &arp_request_frame(A_MAC, A_IP, VIP)), 0);
    }

    fn arp_reply(sender_mac: MacAddr, sender_ip: Ipv4Addr, to_ip: Ipv4Addr) -> Vec<u8> {
        let mut f = arp_request_frame(sender_mac, sender_ip, to_ip);
        f[0..6].copy_from_slice(&A_MAC);
        f[20..22].copy_from_slice(&ARP_REPLY.to_be_bytes());
        f[32..38].copy_from_slice(&A_MAC);
        f
    }

    #[test]
    fn arp_request_layout_and_reply_parsing() {
        let req = arp_request_frame(A_MAC, A_IP, VIP);
        assert_eq!(req.len(), ETH_MIN_FRAME);
        assert_eq!(&req[0..6], &[0xff; 6]);
        assert_eq!(&req[12..14], &[0x08, 0x06]);
        assert_eq!(&req[20..22], &[0, 1]);
        assert_eq!(&req[28..32], &A_IP.octets());
        assert_eq!(&req[38..42], &VIP.octets());
        // Our own request is not an answer.
        assert_eq!(parse_arp_reply(&req, A_IP, VIP), None);
        let reply = arp_reply(B_MAC, VIP, A_IP);
        assert_eq!(parse_arp_reply(&reply, A_IP, VIP), Some(B_MAC));
        // An answer about another address, or to somebody else's question, is not ours.
        assert_eq!(
            parse_arp_reply(&reply, A_IP, Ipv4Addr::new(198, 18, 5, 2)),
            None
        );
        let to_other = arp_reply(B_MAC, VIP, Ipv4Addr::new(198, 18, 5, 9));
        assert_eq!(parse_arp_reply(&to_other, A_IP, VIP), None);
        let prog = arp_reply_filter(VIP);
        assert!(bpf_run(&prog, &reply) > 0);
        assert_eq!(bpf_run(&prog, &req), 0);
        assert_eq!(bpf_run(&prog, &arp_reply(B_MAC, A_IP, VIP)), 0);
    }

    #[test]
    fn mac_formatting() {
        assert_eq!(
            format_mac(&[0x02, 0xab, 0, 1, 0x10, 0xff]),
            "02:ab:00:01:10:ff"
        );
    }
}
