//! Probing the peer with raw frames: who answers ARP for an address, and does the peer's kernel
//! accept a TCP connection to VIP:port right now.
//!
//! Both use an AF_PACKET socket on the ingress interface, so they work below our own IP stack:
//! while this node owns the VIP, a packet to the VIP sent through our routing would be delivered
//! locally, never reaching the peer. Sending a hand-made Ethernet frame to the peer's MAC proves
//! what a diverted flow needs — the peer's kernel accepts packets for the VIP (its local route,
//! docs/kernel-facts.md#k5) and something listens on VIP:port there.
//!
//! Synchronous with bounded waits (the caller may use `spawn_blocking`); IPv4 over Ethernet only.
//! Sockets act in the network namespace of the calling thread.
//!
//! Receiving: a classic BPF filter attached before `bind` keeps the socket from copying every
//! frame of a busy ingress interface (tens of thousands of packets per second on a loaded LB);
//! user space re-checks every field anyway. Frames we sent ourselves come back on the packet
//! socket as `PACKET_OUTGOING` and are skipped.

use std::io;
use std::net::Ipv4Addr;
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

mod bpf;
mod frame;
mod socket;

use bpf::{arp_reply_filter, tcp_reply_filter};
use frame::*;
use socket::{random_u64, PacketSocket};

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
/// a split brain or a peer answering ARP while BACKUP (docs/kernel-facts.md#k5).
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
