//! Classic BPF filters for the probe's packet sockets, assembled from a small instruction list, so
//! the kernel hands the socket only the replies to our own probe.

use std::net::Ipv4Addr;

use super::frame::*;

// ---------------------------------------------------------------------------------------------
// Classic BPF filters.
// ---------------------------------------------------------------------------------------------

/// The few classic BPF instructions the filters use. Every test jumps to a final "drop".
#[derive(Debug, Clone, Copy)]
pub(super) enum Bpf {
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
pub(super) fn bpf_assemble(prog: &[Bpf]) -> Vec<libc::sock_filter> {
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
pub(super) fn arp_reply_filter(target: Ipv4Addr) -> Vec<libc::sock_filter> {
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
pub(super) fn tcp_reply_filter(flow: &ProbeFlow) -> Vec<libc::sock_filter> {
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
