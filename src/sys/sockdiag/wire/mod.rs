//! The bytes of `inet_diag`: dump requests (with an `INET_DIAG_REQ_BYTECODE` filter) and
//! replies, built and parsed by hand.
//!
//! netlink-packet-sock-diag 0.5 has no bytecode support, and its parser allocates per socket
//! and per attribute; at ~100k sockets every 100 ms that matters, so replies are read in place
//! here. Layouts are those of `include/uapi/linux/inet_diag.h` and `linux/netlink.h`; all
//! integers are host order except ports and addresses, which are network order.

use std::io;
use std::mem::offset_of;
use std::net::{Ipv4Addr, SocketAddrV4};

use super::{SockDiagError, SocketFilter, SocketSample, TcpState};

/// `SOCK_DIAG_BY_FAMILY`: the request (and reply) message type.
pub(crate) const SOCK_DIAG_BY_FAMILY: u16 = 20;

const NLMSG_HDRLEN: usize = 16;
const NLMSG_NOOP: u16 = 1;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLMSG_OVERRUN: u16 = 4;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300; // NLM_F_ROOT | NLM_F_MATCH

/// `struct inet_diag_sockid`: ports, addresses, interface, cookie.
const SOCKID_LEN: usize = 48;
/// `struct inet_diag_req_v2`: family, protocol, ext, pad, states, sockid.
const REQ_V2_LEN: usize = 8 + SOCKID_LEN;
/// `struct inet_diag_msg`: family, state, timer, retrans, sockid, 5 × u32.
const DIAG_MSG_LEN: usize = 4 + SOCKID_LEN + 20;

/// Request attribute carrying the filter program.
const INET_DIAG_REQ_BYTECODE: u16 = 1;
/// Reply attribute carrying `struct tcp_info`; requested by bit `INET_DIAG_INFO - 1` of
/// `idiag_ext`.
const INET_DIAG_INFO: u16 = 2;
/// The `idiag_ext` bit that asks for [`INET_DIAG_INFO`].
pub(crate) const EXT_INFO: u8 = 1 << (INET_DIAG_INFO - 1);

const AF_INET: u8 = libc::AF_INET as u8;
const AF_INET6: u8 = libc::AF_INET6 as u8;

/// Offsets in `struct tcp_info` (the kernel's layout; libc mirrors it).
const TCPI_LAST_DATA_RECV: usize = offset_of!(libc::tcp_info, tcpi_last_data_recv);
const TCPI_LAST_ACK_RECV: usize = offset_of!(libc::tcp_info, tcpi_last_ack_recv);

// --- bytecode ---------------------------------------------------------------------------------

const BC_JMP: u8 = 1;
const BC_S_COND: u8 = 7;
const BC_S_EQ: u8 = 11;
/// `struct inet_diag_bc_op`: code, yes, no.
const OP_LEN: usize = 4;
/// `struct inet_diag_hostcond` with an IPv4 address: family, prefix_len, pad, int port, addr.
const HOSTCOND_V4_LEN: usize = 8 + 4;

/// The largest bytecode an `nlattr` (16-bit length, 4-byte header) can carry.
const MAX_BYTECODE: usize = u16::MAX as usize - 4;

/// A compiled filter fragment in the convention of iproute2's `ss`: when the condition holds,
/// execution runs off the end of the fragment; when it fails, it jumps to `len + 4`.
///
/// The kernel runs a program by following `yes` on success and `no` on failure and accepts the
/// socket iff it lands exactly on the end (`len == 0`); landing past the end rejects it. Its
/// verifier (`inet_diag_bc_audit`) only walks the `yes` chain and requires every `no` target to
/// lie on that chain, so every op's `yes` is its own size and the chain is simply sequential —
/// which is why an OR is built with a `JMP` op rather than with forward `yes` jumps.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Frag(Vec<u8>);

fn op(code: u8, yes: usize, no: usize) -> [u8; OP_LEN] {
    let yes = u8::try_from(yes).expect("op size fits a byte");
    let no = u16::try_from(no).expect("bytecode length was checked");
    let n = no.to_ne_bytes();
    [code, yes, n[0], n[1]]
}

impl Frag {
    /// `local port == port`. The port is stored in the `no` field of a second op.
    fn sport_eq(port: u16) -> Self {
        let mut b = Vec::with_capacity(2 * OP_LEN);
        b.extend_from_slice(&op(BC_S_EQ, 2 * OP_LEN, 2 * OP_LEN + 4));
        b.extend_from_slice(&op(0, 0, usize::from(port)));
        Self(b)
    }

    /// `local address == addr` (a /32 host condition, any port).
    fn saddr_eq(addr: Ipv4Addr) -> Self {
        let len = OP_LEN + HOSTCOND_V4_LEN;
        let mut b = Vec::with_capacity(len);
        b.extend_from_slice(&op(BC_S_COND, len, len + 4));
        b.push(AF_INET);
        b.push(32);
        b.extend_from_slice(&[0, 0]);
        b.extend_from_slice(&(-1i32).to_ne_bytes());
        b.extend_from_slice(&addr.octets());
        Self(b)
    }

    /// `a && b`: `a`'s failure jumps (to its end + 4) are moved to the end of `b` + 4.
    fn and(mut self, b: Frag) -> Self {
        let reject = self.0.len() + 4;
        let mut off = 0;
        while off < self.0.len() {
            let yes = usize::from(self.0[off + 1]);
            let no = usize::from(u16::from_ne_bytes([self.0[off + 2], self.0[off + 3]]));
            if off + no == reject {
                let moved = u16::try_from(no + b.0.len()).expect("bytecode length was checked");
                self.0[off + 2..off + 4].copy_from_slice(&moved.to_ne_bytes());
            }
            off += yes;
        }
        self.0.extend_from_slice(&b.0);
        self
    }

    /// `a || b`: `a` is followed by a `JMP` over `b` (taken when `a` held, since a JMP's
    /// condition is always false); `a`'s failure target (its end + 4) is the start of `b`.
    fn or(mut self, b: Frag) -> Self {
        self.0
            .extend_from_slice(&op(BC_JMP, OP_LEN, b.0.len() + OP_LEN));
        self.0.extend_from_slice(&b.0);
        self
    }

    fn any(parts: impl IntoIterator<Item = Frag>) -> Option<Self> {
        parts.into_iter().reduce(Frag::or)
    }
}

/// The kernel-side form of a [`SocketFilter`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KernelFilter {
    /// Exact local port for `inet_diag_sockid.idiag_sport` (0 = any). The kernel compares it
    /// before running any bytecode, so a single port costs no bytecode at all.
    pub sport: u16,
    /// The `INET_DIAG_REQ_BYTECODE` program, if one is needed.
    pub bytecode: Option<Vec<u8>>,
}

impl KernelFilter {
    /// Compiles `f` to `(local port ∈ ports) && (local address ∈ addrs)`; the port test goes
    /// first because it is the cheaper op. `None` when the program would not fit an attribute
    /// (thousands of entries); the caller then filters in user space only.
    pub(crate) fn compile(f: &SocketFilter) -> Option<Self> {
        let mut ports = f.local_ports.clone();
        ports.sort_unstable();
        ports.dedup();
        let mut addrs = f.local_addrs.clone();
        addrs.sort_unstable();
        addrs.dedup();

        // A single port goes into the sockid; several become an OR of S_EQ ops (8 bytes each,
        // plus a 4-byte JMP between two), addresses an OR of S_COND ops (16 bytes each).
        let sport = if ports.len() == 1 { ports[0] } else { 0 };
        let port_len = if ports.len() > 1 {
            12 * ports.len() - 4
        } else {
            0
        };
        let addr_len = (20 * addrs.len()).saturating_sub(4);
        if port_len + addr_len > MAX_BYTECODE {
            return None;
        }
        let port_bc = if ports.len() > 1 {
            Frag::any(ports.iter().map(|&p| Frag::sport_eq(p)))
        } else {
            None
        };
        let addr_bc = Frag::any(addrs.iter().map(|&a| Frag::saddr_eq(a)));
        let bytecode = match (port_bc, addr_bc) {
            (None, None) => None,
            (Some(p), None) => Some(p),
            (None, Some(a)) => Some(a),
            (Some(p), Some(a)) => Some(p.and(a)),
        };
        debug_assert_eq!(
            bytecode.as_ref().map_or(0, |b| b.0.len()),
            port_len + addr_len
        );
        Some(Self {
            sport,
            bytecode: bytecode.map(|b| b.0),
        })
    }
}

// --- request ----------------------------------------------------------------------------------

/// Builds one `SOCK_DIAG_BY_FAMILY` dump request for TCP sockets of `family` in `states`.
pub(crate) fn dump_request(
    seq: u32,
    family: u8,
    states: u32,
    ext: u8,
    filter: Option<&KernelFilter>,
) -> Vec<u8> {
    let bytecode = filter.and_then(|f| f.bytecode.as_deref());
    let attr_len = bytecode.map_or(0, |b| 4 + b.len());
    let len = NLMSG_HDRLEN + REQ_V2_LEN + attr_len;
    let mut m = Vec::with_capacity(len);
    // struct nlmsghdr
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    m.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills in ours
                                              // struct inet_diag_req_v2
    m.push(family);
    m.push(libc::IPPROTO_TCP as u8);
    m.push(ext);
    m.push(0);
    m.extend_from_slice(&states.to_ne_bytes());
    // struct inet_diag_sockid: only the source port is used as a dump filter.
    let sport = filter.map_or(0, |f| f.sport);
    m.extend_from_slice(&sport.to_be_bytes());
    m.extend_from_slice(&[0; SOCKID_LEN - 2]);
    if let Some(b) = bytecode {
        m.extend_from_slice(&(attr_len as u16).to_ne_bytes());
        m.extend_from_slice(&INET_DIAG_REQ_BYTECODE.to_ne_bytes());
        m.extend_from_slice(b);
    }
    debug_assert_eq!(m.len(), len);
    m
}

// --- replies ----------------------------------------------------------------------------------

/// Whether a dump is over after a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Progress {
    /// More datagrams follow.
    More,
    /// NLMSG_DONE was seen.
    Done,
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// An `inet_diag_sockid` address as IPv4: AF_INET uses the first word; AF_INET6 qualifies only
/// when v4-mapped (`::ffff:a.b.c.d`).
fn ipv4_of(family: u8, addr: &[u8]) -> Option<Ipv4Addr> {
    match family {
        AF_INET => Some(Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3])),
        AF_INET6 if addr[..10] == [0; 10] && addr[10..12] == [0xff, 0xff] => {
            Some(Ipv4Addr::new(addr[12], addr[13], addr[14], addr[15]))
        }
        _ => None,
    }
}

/// Decodes one `inet_diag_msg` plus attributes (`body` is the netlink payload). `None` for a
/// socket that has no IPv4 identity (a real IPv6 socket).
fn parse_diag_msg(body: &[u8]) -> Result<Option<SocketSample>, &'static str> {
    if body.len() < DIAG_MSG_LEN {
        return Err("inet_diag_msg shorter than its fixed part");
    }
    let family = body[0];
    let state = TcpState::from_kernel(body[1]);
    let id = &body[4..4 + SOCKID_LEN];
    let sport = u16::from_be_bytes([id[0], id[1]]);
    let dport = u16::from_be_bytes([id[2], id[3]]);
    let (Some(src), Some(dst)) = (ipv4_of(family, &id[4..20]), ipv4_of(family, &id[20..36])) else {
        return Ok(None);
    };

    let mut idle_ms = None;
    let mut at = DIAG_MSG_LEN;
    while at + 4 <= body.len() {
        let nla_len = usize::from(u16_at(body, at));
        // NLA_F_NESTED and NLA_F_NET_BYTEORDER live in the top bits of the type.
        let nla_type = u16_at(body, at + 2) & 0x3fff;
        if nla_len < 4 || at + nla_len > body.len() {
            return Err("attribute length out of bounds");
        }
        if nla_type == INET_DIAG_INFO {
            let info = &body[at + 4..at + nla_len];
            // An older kernel may send a shorter tcp_info; without both fields there is no
            // idle time rather than a wrong one.
            if info.len() >= TCPI_LAST_ACK_RECV + 4 {
                let data = u32_at(info, TCPI_LAST_DATA_RECV);
                let ack = u32_at(info, TCPI_LAST_ACK_RECV);
                idle_ms = Some(data.min(ack));
            }
        }
        at += align4(nla_len);
    }
    Ok(Some(SocketSample {
        state,
        local: SocketAddrV4::new(src, sport),
        remote: SocketAddrV4::new(dst, dport),
        idle_ms,
    }))
}

/// Walks the netlink messages of one datagram, calling `visit` for each socket.
///
/// `seq` selects the messages of the current request; others are left-overs of an earlier,
/// abandoned dump and are skipped. `None` accepts all (multicast events carry seq 0).
pub(crate) fn parse_datagram(
    dgram: &[u8],
    seq: Option<u32>,
    visit: &mut dyn FnMut(&SocketSample),
) -> Result<Progress, SockDiagError> {
    let malformed = |offset: usize, reason: &'static str| SockDiagError::Malformed {
        offset,
        len: dgram.len(),
        reason,
    };
    let mut off = 0;
    while off + NLMSG_HDRLEN <= dgram.len() {
        let len = u32_at(dgram, off) as usize;
        let kind = u16_at(dgram, off + 4);
        let msg_seq = u32_at(dgram, off + 8);
        if len < NLMSG_HDRLEN || off + len > dgram.len() {
            return Err(malformed(off, "netlink message length out of bounds"));
        }
        let body = &dgram[off + NLMSG_HDRLEN..off + len];
        let ours = seq.is_none_or(|s| s == msg_seq);
        match kind {
            _ if !ours => {}
            NLMSG_NOOP => {}
            NLMSG_DONE => {
                // A dump that failed part-way ends with NLMSG_DONE carrying -errno.
                if body.len() >= 4 {
                    let err = u32_at(body, 0) as i32;
                    if err < 0 {
                        return Err(kernel_error(msg_seq, err));
                    }
                }
                return Ok(Progress::Done);
            }
            NLMSG_ERROR => {
                if body.len() < 4 {
                    return Err(malformed(off, "NLMSG_ERROR without an error code"));
                }
                let err = u32_at(body, 0) as i32;
                if err != 0 {
                    return Err(kernel_error(msg_seq, err));
                }
                // err == 0 is an ACK; a dump sends none unless asked, so just go on.
            }
            NLMSG_OVERRUN => return Err(malformed(off, "NLMSG_OVERRUN: data lost")),
            SOCK_DIAG_BY_FAMILY => {
                let parsed = parse_diag_msg(body).map_err(|r| malformed(off + NLMSG_HDRLEN, r))?;
                if let Some(s) = parsed {
                    visit(&s);
                }
            }
            _ => return Err(malformed(off, "unexpected netlink message type")),
        }
        off += align4(len);
    }
    if off < dgram.len() && dgram.len() - off >= 4 {
        // Trailing bytes that cannot hold a header (alignment padding is < 4 bytes).
        return Err(malformed(off, "trailing bytes after the last message"));
    }
    Ok(Progress::More)
}

fn kernel_error(seq: u32, err: i32) -> SockDiagError {
    SockDiagError::Kernel {
        seq,
        source: io::Error::from_raw_os_error(-err),
    }
}

#[cfg(test)]
pub(crate) mod tests;
