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
pub(crate) mod tests {
    use super::*;

    /// Builds a reply datagram the way the kernel lays it out.
    #[derive(Default)]
    pub(crate) struct Reply(pub Vec<u8>);

    impl Reply {
        fn header(&mut self, len: usize, kind: u16, flags: u16, seq: u32) {
            self.0.extend_from_slice(&(len as u32).to_ne_bytes());
            self.0.extend_from_slice(&kind.to_ne_bytes());
            self.0.extend_from_slice(&flags.to_ne_bytes());
            self.0.extend_from_slice(&seq.to_ne_bytes());
            self.0.extend_from_slice(&4242u32.to_ne_bytes());
        }

        /// One socket: AF_INET unless `v6` is given (then a 16-byte address pair).
        pub(crate) fn sock(
            mut self,
            seq: u32,
            state: u8,
            local: &str,
            remote: &str,
            info: Option<(u32, u32)>,
        ) -> Self {
            let local: SocketAddrV4 = local.parse().unwrap();
            let remote: SocketAddrV4 = remote.parse().unwrap();
            let mut body = vec![AF_INET, state, 0, 0];
            body.extend_from_slice(&local.port().to_be_bytes());
            body.extend_from_slice(&remote.port().to_be_bytes());
            let mut src = [0u8; 16];
            src[..4].copy_from_slice(&local.ip().octets());
            let mut dst = [0u8; 16];
            dst[..4].copy_from_slice(&remote.ip().octets());
            body.extend_from_slice(&src);
            body.extend_from_slice(&dst);
            body.extend_from_slice(&[0; 12]); // if, cookie
            body.extend_from_slice(&[0; 20]); // expires, rqueue, wqueue, uid, inode
                                              // An unrelated attribute first (INET_DIAG_SHUTDOWN, 1 byte + padding).
            body.extend_from_slice(&5u16.to_ne_bytes());
            body.extend_from_slice(&8u16.to_ne_bytes());
            body.extend_from_slice(&[0, 0, 0, 0]);
            if let Some((data, ack)) = info {
                let mut ti = vec![0u8; std::mem::size_of::<libc::tcp_info>()];
                ti[TCPI_LAST_DATA_RECV..TCPI_LAST_DATA_RECV + 4]
                    .copy_from_slice(&data.to_ne_bytes());
                ti[TCPI_LAST_ACK_RECV..TCPI_LAST_ACK_RECV + 4].copy_from_slice(&ack.to_ne_bytes());
                body.extend_from_slice(&((4 + ti.len()) as u16).to_ne_bytes());
                body.extend_from_slice(&INET_DIAG_INFO.to_ne_bytes());
                body.extend_from_slice(&ti);
                body.resize(align4(body.len()), 0);
            }
            self.header(NLMSG_HDRLEN + body.len(), SOCK_DIAG_BY_FAMILY, 2, seq);
            self.0.extend_from_slice(&body);
            self
        }

        pub(crate) fn done(mut self, seq: u32, err: i32) -> Self {
            self.header(NLMSG_HDRLEN + 4, NLMSG_DONE, 2, seq);
            self.0.extend_from_slice(&err.to_ne_bytes());
            self
        }

        pub(crate) fn error(mut self, seq: u32, err: i32) -> Self {
            self.header(NLMSG_HDRLEN + 4 + NLMSG_HDRLEN, NLMSG_ERROR, 0, seq);
            self.0.extend_from_slice(&err.to_ne_bytes());
            self.0.extend_from_slice(&[0; NLMSG_HDRLEN]); // the offending request's header
            self
        }
    }

    fn collect(
        dgram: &[u8],
        seq: Option<u32>,
    ) -> (Result<Progress, SockDiagError>, Vec<SocketSample>) {
        let mut v = Vec::new();
        let r = parse_datagram(dgram, seq, &mut |s| v.push(*s));
        (r, v)
    }

    #[test]
    fn tcp_info_offsets_are_the_kernel_abi() {
        assert_eq!((TCPI_LAST_DATA_RECV, TCPI_LAST_ACK_RECV), (52, 56));
        assert_eq!((REQ_V2_LEN, DIAG_MSG_LEN), (56, 72));
    }

    #[test]
    fn multipart_dump_spans_datagrams_until_done() {
        let d1 = Reply::default()
            .sock(7, 1, "198.18.7.1:80", "198.18.7.10:40000", Some((1500, 20)))
            .sock(7, 12, "198.18.7.1:81", "198.18.7.10:40001", None);
        let d2 = Reply::default()
            .sock(7, 8, "198.18.7.1:80", "198.18.7.11:5000", Some((30, 3000)))
            .done(7, 0);
        let (r1, v1) = collect(&d1.0, Some(7));
        assert_eq!(r1.unwrap(), Progress::More);
        assert_eq!(v1.len(), 2);
        assert_eq!(v1[0].state, TcpState::Established);
        assert_eq!(v1[0].local, "198.18.7.1:80".parse().unwrap());
        assert_eq!(v1[0].remote, "198.18.7.10:40000".parse().unwrap());
        assert_eq!(
            v1[0].idle_ms,
            Some(20),
            "idle is the smaller of data and ack"
        );
        assert_eq!(
            v1[1].state,
            TcpState::SynRecv,
            "request socks read as SYN_RECV"
        );
        assert_eq!(v1[1].idle_ms, None);
        let (r2, v2) = collect(&d2.0, Some(7));
        assert_eq!(r2.unwrap(), Progress::Done);
        assert_eq!(v2[0].state, TcpState::CloseWait);
        assert_eq!(v2[0].idle_ms, Some(30));
    }

    #[test]
    fn stale_messages_of_an_earlier_dump_are_skipped() {
        let d = Reply::default()
            .sock(6, 1, "198.18.7.1:80", "198.18.7.10:1", None)
            .done(6, 0)
            .sock(7, 1, "198.18.7.1:80", "198.18.7.10:2", None);
        let (r, v) = collect(&d.0, Some(7));
        assert_eq!(r.unwrap(), Progress::More);
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].remote.port(), 2);
    }

    #[test]
    fn nlmsg_error_and_failed_done_become_kernel_errors() {
        let d = Reply::default().error(9, -libc::EINVAL);
        match collect(&d.0, Some(9)).0 {
            Err(SockDiagError::Kernel { seq: 9, source }) => {
                assert_eq!(source.raw_os_error(), Some(libc::EINVAL))
            }
            other => panic!("{other:?}"),
        }
        let d = Reply::default()
            .sock(9, 1, "198.18.7.1:80", "198.18.7.10:1", None)
            .done(9, -libc::ENOBUFS);
        assert!(matches!(
            collect(&d.0, Some(9)).0,
            Err(SockDiagError::Kernel { seq: 9, .. })
        ));
        // An ACK (error 0) is not an error.
        let d = Reply::default().error(9, 0).done(9, 0);
        assert_eq!(collect(&d.0, Some(9)).0.unwrap(), Progress::Done);
    }

    #[test]
    fn truncated_and_garbage_messages_are_malformed() {
        let d = Reply::default().sock(1, 1, "198.18.7.1:80", "198.18.7.10:1", None);
        let cut = &d.0[..d.0.len() - 8];
        assert!(matches!(
            collect(cut, Some(1)).0,
            Err(SockDiagError::Malformed { offset: 0, .. })
        ));
        let mut bad_attr = d.0.clone();
        // Corrupt the first attribute's length so it runs past the message.
        let at = NLMSG_HDRLEN + DIAG_MSG_LEN;
        bad_attr[at..at + 2].copy_from_slice(&400u16.to_ne_bytes());
        assert!(matches!(
            collect(&bad_attr, Some(1)).0,
            Err(SockDiagError::Malformed { .. })
        ));
        let mut short = Reply::default();
        short.header(NLMSG_HDRLEN + 8, SOCK_DIAG_BY_FAMILY, 2, 1);
        short.0.extend_from_slice(&[0; 8]);
        assert!(matches!(
            collect(&short.0, Some(1)).0,
            Err(SockDiagError::Malformed { .. })
        ));
    }

    #[test]
    fn v4_mapped_ipv6_sockets_read_as_ipv4_and_real_ipv6_ones_are_skipped() {
        let mut body = vec![AF_INET6, 1, 0, 0];
        body.extend_from_slice(&80u16.to_be_bytes());
        body.extend_from_slice(&40000u16.to_be_bytes());
        let mapped = |o: [u8; 4]| {
            let mut a = [0u8; 16];
            a[10] = 0xff;
            a[11] = 0xff;
            a[12..].copy_from_slice(&o);
            a
        };
        body.extend_from_slice(&mapped([198, 18, 7, 1]));
        body.extend_from_slice(&mapped([198, 18, 7, 10]));
        body.extend_from_slice(&[0; 32]);
        let s = parse_diag_msg(&body).unwrap().unwrap();
        assert_eq!(s.local, "198.18.7.1:80".parse().unwrap());
        assert_eq!(s.remote, "198.18.7.10:40000".parse().unwrap());
        // 2001:db8::1 is not an IPv4 connection.
        body[4 + 4] = 0x20;
        body[4 + 5] = 0x01;
        assert_eq!(parse_diag_msg(&body).unwrap(), None);
    }

    #[test]
    fn request_layout() {
        let kf = KernelFilter {
            sport: 80,
            bytecode: Some(vec![1, 4, 8, 0]),
        };
        let m = dump_request(77, AF_INET, 0x0a, EXT_INFO, Some(&kf));
        assert_eq!(m.len(), NLMSG_HDRLEN + REQ_V2_LEN + 8);
        assert_eq!(u32_at(&m, 0) as usize, m.len());
        assert_eq!(u16_at(&m, 4), SOCK_DIAG_BY_FAMILY);
        assert_eq!(u16_at(&m, 6), NLM_F_REQUEST | NLM_F_DUMP);
        assert_eq!(u32_at(&m, 8), 77);
        let r = &m[NLMSG_HDRLEN..];
        assert_eq!(&r[..4], &[AF_INET, 6, EXT_INFO, 0]);
        assert_eq!(u32_at(r, 4), 0x0a);
        assert_eq!(&r[8..10], &80u16.to_be_bytes());
        let a = &r[REQ_V2_LEN..];
        assert_eq!((u16_at(a, 0), u16_at(a, 2)), (8, INET_DIAG_REQ_BYTECODE));
        assert_eq!(&a[4..], &[1, 4, 8, 0]);
    }

    // --- bytecode: a user-space model of the kernel's verifier and interpreter ---------------

    /// `inet_diag_bc_audit` + `valid_cc`, restricted to the ops this module emits.
    fn audit(bc: &[u8]) -> Result<(), String> {
        let valid_cc = |cc: usize| {
            let mut len = bc.len() as isize;
            let mut at = 0usize;
            while len >= 0 {
                if cc as isize > len {
                    return false;
                }
                if cc as isize == len {
                    return true;
                }
                let yes = bc[at + 1] as isize;
                if yes < 4 || yes & 3 != 0 {
                    return false;
                }
                len -= yes;
                at += yes as usize;
            }
            false
        };
        let mut at = 0usize;
        let mut len = bc.len();
        while len > 0 {
            let code = bc[at];
            let min_len = match code {
                BC_S_COND => {
                    if bc[at + 4] != AF_INET || bc[at + 5] > 32 {
                        return Err(format!("bad hostcond at {at}"));
                    }
                    OP_LEN + HOSTCOND_V4_LEN
                }
                BC_S_EQ => 2 * OP_LEN,
                BC_JMP => OP_LEN,
                c => return Err(format!("unexpected op {c} at {at}")),
            };
            if len < min_len {
                return Err(format!("op at {at} runs past the end"));
            }
            let yes = usize::from(bc[at + 1]);
            let no = usize::from(u16_at(bc, at + 2));
            if no < min_len || no > len + 4 || no & 3 != 0 {
                return Err(format!("bad no={no} at {at} (len {len})"));
            }
            if no < len && !valid_cc(len - no) {
                return Err(format!("no={no} at {at} is not on the yes chain"));
            }
            if yes < min_len || yes > len + 4 || yes & 3 != 0 {
                return Err(format!("bad yes={yes} at {at}"));
            }
            at += yes;
            len -= yes;
        }
        Ok(())
    }

    /// `inet_diag_bc_run` for an IPv4 socket.
    fn run(bc: &[u8], local: SocketAddrV4) -> bool {
        let mut at = 0isize;
        let mut len = bc.len() as isize;
        while len > 0 {
            let i = at as usize;
            let yes = match bc[i] {
                BC_JMP => false,
                BC_S_EQ => local.port() == u16_at(bc, i + 6),
                BC_S_COND => {
                    let port = i32::from_ne_bytes(bc[i + 8..i + 12].try_into().unwrap());
                    let addr = Ipv4Addr::new(bc[i + 12], bc[i + 13], bc[i + 14], bc[i + 15]);
                    (port == -1 || port == i32::from(local.port())) && addr == *local.ip()
                }
                c => panic!("unexpected op {c}"),
            };
            let step = if yes {
                isize::from(bc[i + 1])
            } else {
                u16_at(bc, i + 2) as isize
            };
            at += step;
            len -= step;
        }
        len == 0
    }

    #[test]
    fn compiled_filters_pass_the_verifier_and_agree_with_matches() {
        let a = |n: u8| Ipv4Addr::new(198, 18, 7, n);
        let filters = [
            SocketFilter::new(vec![a(1)], vec![80]),
            SocketFilter::new(vec![a(1), a(2), a(3)], vec![80, 81, 443, 8443]),
            SocketFilter::new(vec![], vec![80, 81]),
            SocketFilter::new(vec![a(1), a(2)], vec![]),
            SocketFilter::new(vec![a(1), a(1)], vec![81, 80, 81]),
            SocketFilter::default(),
        ];
        let probes: Vec<SocketAddrV4> = [1, 2, 3, 4]
            .iter()
            .flat_map(|&n| {
                [22u16, 80, 81, 443, 8443, 40000].map(move |p| SocketAddrV4::new(a(n), p))
            })
            .collect();
        for f in &filters {
            let kf = KernelFilter::compile(f).expect("small filters compile");
            if let Some(bc) = &kf.bytecode {
                audit(bc).unwrap_or_else(|e| panic!("{f:?}: {e}\n{bc:?}"));
            }
            for &p in &probes {
                let by_sport = kf.sport == 0 || kf.sport == p.port();
                let by_bc = kf.bytecode.as_deref().is_none_or(|bc| run(bc, p));
                assert_eq!(by_sport && by_bc, f.matches(p), "{f:?} on {p}");
            }
        }
    }

    #[test]
    fn single_port_uses_the_sockid_port_and_no_port_bytecode() {
        let f = SocketFilter::new(vec![Ipv4Addr::new(198, 18, 7, 1)], vec![80]);
        let kf = KernelFilter::compile(&f).unwrap();
        assert_eq!(kf.sport, 80);
        assert_eq!(kf.bytecode.unwrap().len(), OP_LEN + HOSTCOND_V4_LEN);
    }

    #[test]
    fn oversized_filters_fall_back_to_user_space() {
        let f = SocketFilter::new(vec![], (1..=6000).collect::<Vec<u16>>());
        assert_eq!(KernelFilter::compile(&f), None);
        let f = SocketFilter::new(vec![], (1..=5000).collect::<Vec<u16>>());
        let kf = KernelFilter::compile(&f).unwrap();
        audit(kf.bytecode.as_ref().unwrap()).unwrap();
        // Each list fits on its own, the two together do not.
        let addrs: Vec<Ipv4Addr> = (0..2000u32)
            .map(|n| Ipv4Addr::from(0xc612_0000 + n))
            .collect();
        let f = SocketFilter::new(addrs, (1..=3000).collect::<Vec<u16>>());
        assert_eq!(KernelFilter::compile(&f), None);
    }

    /// Property tests of the reply parser (`make fuzz` runs a million cases of each): the bytes
    /// come from the kernel, and a parser that panics on some layout would take the daemon with it.
    mod prop {
        use super::*;
        use proptest::prelude::*;

        /// One socket of a dump: state, local and remote endpoint, tcp_info's two idle fields.
        type Sock = (u8, [u8; 4], u16, [u8; 4], u16, Option<(u32, u32)>);

        fn sock() -> impl Strategy<Value = Sock> {
            (
                any::<u8>(),
                any::<[u8; 4]>(),
                any::<u16>(),
                any::<[u8; 4]>(),
                any::<u16>(),
                proptest::option::of((any::<u32>(), any::<u32>())),
            )
        }

        fn dump(socks: &[Sock], seq: u32) -> Vec<u8> {
            let mut r = Reply::default();
            for &(state, l, lp, rem, rp, info) in socks {
                let local = format!("{}:{lp}", Ipv4Addr::from(l));
                let remote = format!("{}:{rp}", Ipv4Addr::from(rem));
                r = r.sock(seq, state, &local, &remote, info);
            }
            r.done(seq, 0).0
        }

        /// An error is one line naming where the datagram went wrong.
        fn clean(r: &Result<Progress, SockDiagError>) -> Result<(), TestCaseError> {
            if let Err(e) = r {
                let text = e.to_string();
                prop_assert!(!text.is_empty() && !text.contains('\n'), "{text:?}");
            }
            Ok(())
        }

        proptest! {
            #![proptest_config(ProptestConfig {
                failure_persistence: None,
                ..ProptestConfig::default()
            })]

            #[test]
            fn prop_any_bytes_parse_or_fail_with_one_line(
                bytes in proptest::collection::vec(any::<u8>(), 0..600),
                seq in proptest::option::of(any::<u32>()),
            ) {
                let r = parse_datagram(&bytes, seq, &mut |_| {});
                clean(&r)?;
            }

            #[test]
            fn prop_a_well_formed_dump_reads_back_every_socket(
                socks in proptest::collection::vec(sock(), 0..24),
                seq in any::<u32>(),
            ) {
                let (r, got) = collect(&dump(&socks, seq), Some(seq));
                prop_assert_eq!(r.unwrap(), Progress::Done);
                prop_assert_eq!(got.len(), socks.len());
                for (s, &(state, l, lp, rem, rp, info)) in got.iter().zip(&socks) {
                    prop_assert_eq!(s.state, TcpState::from_kernel(state));
                    prop_assert_eq!(s.local, SocketAddrV4::new(l.into(), lp));
                    prop_assert_eq!(s.remote, SocketAddrV4::new(rem.into(), rp));
                    prop_assert_eq!(s.idle_ms, info.map(|(data, ack)| data.min(ack)));
                }
            }

            #[test]
            fn prop_a_damaged_dump_never_panics(
                socks in proptest::collection::vec(sock(), 1..8),
                cut in any::<proptest::sample::Index>(),
                flips in proptest::collection::vec(
                    (any::<proptest::sample::Index>(), any::<u8>()), 0..8),
            ) {
                let mut d = dump(&socks, 7);
                for (at, b) in &flips {
                    let i = at.index(d.len());
                    d[i] = *b;
                }
                d.truncate(cut.index(d.len() + 1));
                let mut seen = 0usize;
                let r = parse_datagram(&d, Some(7), &mut |_| seen += 1);
                clean(&r)?;
                // Every socket reported was read from bytes that are there.
                prop_assert!(seen * (NLMSG_HDRLEN + DIAG_MSG_LEN) <= d.len());
            }
        }
    }
}
