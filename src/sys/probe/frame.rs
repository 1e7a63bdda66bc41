//! The frames the probes send and read: ARP requests and replies, TCP segments in Ethernet
//! frames, checksums. Pure byte work, unit-tested.

use std::net::Ipv4Addr;

use super::MacAddr;

pub(super) const ETH_HLEN: usize = 14;
pub(super) const ETH_P_IP: u16 = 0x0800;
pub(super) const ETH_P_ARP: u16 = 0x0806;
/// Ethernet's minimum frame without FCS; shorter frames are padded so strict drivers accept them.
pub(super) const ETH_MIN_FRAME: usize = 60;
pub(super) const ARP_REQUEST: u16 = 1;
pub(super) const ARP_REPLY: u16 = 2;
pub(super) const IPPROTO_TCP: u8 = 6;

/// TCP flag bits.
pub(super) const TCP_FIN: u8 = 0x01;
pub(super) const TCP_SYN: u8 = 0x02;
pub(super) const TCP_RST: u8 = 0x04;
pub(super) const TCP_ACK: u8 = 0x10;

// ---------------------------------------------------------------------------------------------
// Pure packet building and parsing.
// ---------------------------------------------------------------------------------------------

/// Internet checksum (RFC 1071) of `data`, continuing from a partial 32-bit sum.
pub(super) fn checksum_fold(mut sum: u32, data: &[u8]) -> u16 {
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
pub(super) fn checksum(data: &[u8]) -> u16 {
    checksum_fold(0, data)
}

/// TCP checksum: over the IPv4 pseudo-header (src, dst, zero, protocol, TCP length) and the
/// segment, whose checksum field must be zero.
pub(super) fn tcp_checksum(src: Ipv4Addr, dst: Ipv4Addr, segment: &[u8]) -> u16 {
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
pub(super) fn arp_request_frame(our_mac: MacAddr, our_ip: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
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
pub(super) fn parse_arp_reply(frame: &[u8], our_ip: Ipv4Addr, target: Ipv4Addr) -> Option<MacAddr> {
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
pub(super) struct TcpFrame {
    pub(super) src_mac: MacAddr,
    pub(super) dst_mac: MacAddr,
    pub(super) src_ip: Ipv4Addr,
    pub(super) dst_ip: Ipv4Addr,
    pub(super) sport: u16,
    pub(super) dport: u16,
    pub(super) seq: u32,
    pub(super) ack: u32,
    pub(super) flags: u8,
    pub(super) ip_id: u16,
    /// MSS option to advertise (SYN only).
    pub(super) mss: Option<u16>,
}

impl TcpFrame {
    pub(super) fn build(&self) -> Vec<u8> {
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
pub(super) struct TcpHeaderView {
    pub(super) src_ip: Ipv4Addr,
    pub(super) dst_ip: Ipv4Addr,
    pub(super) sport: u16,
    pub(super) dport: u16,
    pub(super) seq: u32,
    pub(super) ack: u32,
    pub(super) flags: u8,
}

/// Parses an unfragmented IPv4/TCP frame. Checksums are not verified: a frame that crossed a
/// veth or was taken before NIC checksum completion may carry a partial checksum
/// (CHECKSUM_PARTIAL), and the kernel already dropped corrupt frames from the wire.
pub(super) fn parse_tcp(frame: &[u8]) -> Option<TcpHeaderView> {
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
pub(super) struct ProbeFlow {
    pub(super) our_ip: Ipv4Addr,
    pub(super) sport: u16,
    pub(super) vip: Ipv4Addr,
    pub(super) port: u16,
    pub(super) isn: u32,
}

/// What an answer to our SYN says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SynAnswer {
    SynAck,
    Rst,
}

impl ProbeFlow {
    /// Classifies a received segment; `None` if it is not an acceptable answer to our SYN
    /// (other flow, or an ACK number that does not acknowledge our SYN, RFC 9293 3.10.7.3).
    pub(super) fn classify(&self, h: &TcpHeaderView) -> Option<SynAnswer> {
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
