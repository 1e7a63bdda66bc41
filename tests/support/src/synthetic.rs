//! Synthetic TCP segments on the wire: many distinct client flows' SYNs (and the ACKs that would
//! follow) sent as raw Ethernet frames from a scratch namespace, paced, so the divert's record can
//! be fed hundreds of thousands of flows in seconds without that many real sockets.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

/// One client flow: source address and port (the destination is the sender's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flow {
    /// Client address.
    pub src: Ipv4Addr,
    /// Client port.
    pub sport: u16,
}

/// `n` distinct flows: ports 20000..=59999 of consecutive addresses from `first`.
pub fn flows(first: Ipv4Addr, n: usize) -> Vec<Flow> {
    const PORTS: usize = 40_000;
    let base = u32::from(first);
    (0..n)
        .map(|i| Flow {
            src: Ipv4Addr::from(base + (i / PORTS) as u32),
            sport: 20_000 + (i % PORTS) as u16,
        })
        .collect()
}

/// TCP flags of a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Segment {
    /// The client's first handshake packet.
    Syn,
    /// The client's handshake ACK.
    Ack,
}

fn fold(mut sum: u32, data: &[u8]) -> u32 {
    for pair in data.chunks(2) {
        let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    sum
}

fn finish(mut sum: u32) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An Ethernet frame carrying `seg` of `flow` to `dst:dport`.
pub fn frame(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    flow: Flow,
    dst: Ipv4Addr,
    dport: u16,
    seg: Segment,
) -> Vec<u8> {
    let mut tcp = [0u8; 20];
    tcp[0..2].copy_from_slice(&flow.sport.to_be_bytes());
    tcp[2..4].copy_from_slice(&dport.to_be_bytes());
    tcp[4..8].copy_from_slice(&1000u32.to_be_bytes());
    let (ack, flags) = match seg {
        Segment::Syn => (0u32, 0x02u8),
        Segment::Ack => (5000u32, 0x10u8),
    };
    tcp[8..12].copy_from_slice(&ack.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = flags;
    tcp[14..16].copy_from_slice(&64240u16.to_be_bytes());
    let mut pseudo = Vec::with_capacity(12);
    pseudo.extend_from_slice(&flow.src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&[0, 6, 0, 20]);
    let sum = finish(fold(fold(0, &pseudo), &tcp));
    tcp[16..18].copy_from_slice(&sum.to_be_bytes());
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&40u16.to_be_bytes());
    ip[8] = 64;
    ip[9] = 6;
    ip[12..16].copy_from_slice(&flow.src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    let sum = finish(fold(0, &ip));
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    let mut f = Vec::with_capacity(54);
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&[0x08, 0x00]);
    f.extend_from_slice(&ip);
    f.extend_from_slice(&tcp);
    f
}

/// A raw packet socket bound to one interface of the calling thread's namespace.
pub struct Wire {
    fd: OwnedFd,
}

impl Wire {
    /// Opens it on `ifname`.
    pub fn open(ifname: &str) -> io::Result<Wire> {
        let index = nix::net::if_::if_nametoindex(ifname)?;
        // SAFETY: plain socket(2) call; the result is checked before it is owned.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                (libc::ETH_P_ALL as u16).to_be() as i32,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: sockaddr_ll is plain data; zeroed is a valid start.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
        addr.sll_ifindex = index as i32;
        // SAFETY: `addr` is a valid sockaddr_ll of the size passed.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &addr as *const libc::sockaddr_ll as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Wire { fd })
    }

    /// Sends one frame, retrying while the device queue is full.
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        loop {
            match nix::sys::socket::send(
                self.fd.as_raw_fd(),
                frame,
                nix::sys::socket::MsgFlags::empty(),
            ) {
                Ok(_) => return Ok(()),
                Err(nix::errno::Errno::ENOBUFS) | Err(nix::errno::Errno::EAGAIN) => {
                    std::thread::sleep(Duration::from_micros(100))
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Sends every frame at no more than `per_s` frames a second (in bursts of 1 ms), so the
    /// receiving side's backlog is not overrun.
    pub fn send_paced(&self, frames: &[Vec<u8>], per_s: u32) -> io::Result<Duration> {
        let start = Instant::now();
        let burst = (per_s / 1000).max(1) as usize;
        for (i, chunk) in frames.chunks(burst).enumerate() {
            let due = start + Duration::from_millis(i as u64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            for f in chunk {
                self.send(f)?;
            }
        }
        Ok(start.elapsed())
    }
}

/// Parses a MAC address as `ip` and sysfs print it (`aa:bb:cc:dd:ee:ff`).
pub fn parse_mac(text: &str) -> [u8; 6] {
    let mut mac = [0u8; 6];
    let parts: Vec<&str> = text.trim().split(':').collect();
    assert_eq!(parts.len(), 6, "not a MAC address: {text:?}");
    for (i, part) in parts.iter().enumerate() {
        mac[i] = u8::from_str_radix(part, 16).unwrap_or_else(|e| panic!("{text:?}: {e}"));
    }
    mac
}

/// Formats a MAC address the way `ip` takes it.
pub fn format_mac(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}
