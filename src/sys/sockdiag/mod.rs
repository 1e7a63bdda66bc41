//! Counting the node's TCP connections on the VIPs over netlink `sock_diag`.
//!
//! During a drain the agent polls (every ~100 ms, while the node may still serve ~100k
//! connections) how many TCP sockets whose *local* address is a VIP and local port a VIP port
//! are still being served, to know when the drain is done. The count comes straight from the
//! kernel's `inet_diag` dump (`NETLINK_SOCK_DIAG`); no `ss`/`netstat` subprocess.
//!
//! * [`SocketCounter`] is the small trait the drain loop uses; [`NetlinkSockDiag`] is the real
//!   adapter and `FakeCounter` a scripted, recording fake for unit tests of the agent.
//! * [`DestroyWatcher`] wakes the drain loop when a matching socket is destroyed, so it does not
//!   have to wait for its next poll.
//!
//! Only IPv4 (`AF_INET`) sockets are dumped, plus, when asked for
//! ([`NetlinkSockDiag::set_include_v4_mapped`]), `AF_INET6` sockets carrying v4-mapped
//! addresses (a server bound to `[::]` with `IPV6_V6ONLY` off).

#[cfg(any(test, feature = "test-util"))]
mod fake;
mod netlink;
mod wire;

/// TCP connections this network namespace has accepted since it exists (`PassiveOpens` in
/// `/proc/net/snmp`, which is per namespace): sampled twice, the rate of new connections.
pub fn passive_opens() -> io::Result<u64> {
    parse_passive_opens(&std::fs::read_to_string("/proc/net/snmp")?).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "/proc/net/snmp: no Tcp PassiveOpens",
        )
    })
}

/// `PassiveOpens` from the two `Tcp:` lines of `/proc/net/snmp` (names, then values).
fn parse_passive_opens(snmp: &str) -> Option<u64> {
    let mut tcp = snmp.lines().filter(|l| l.starts_with("Tcp:"));
    let (names, values) = (tcp.next()?, tcp.next()?);
    let at = names.split_whitespace().position(|n| n == "PassiveOpens")?;
    values.split_whitespace().nth(at)?.parse().ok()
}

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

#[cfg(any(test, feature = "test-util"))]
pub use fake::{FakeCall, FakeCounter};
pub use netlink::{DestroyWatcher, NetlinkSockDiag};

/// Which sockets to count: those whose local address is one of `local_addrs` and whose local
/// port is one of `local_ports`.
///
/// An empty list means "any" for that field, so `SocketFilter::default()` matches every socket.
/// The agent always fills in both lists (VIPs and VIP ports).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SocketFilter {
    /// Local (server-side) addresses: the VIPs. Empty = any address.
    pub local_addrs: Vec<Ipv4Addr>,
    /// Local (server-side) ports: the VIP ports. Empty = any port.
    pub local_ports: Vec<u16>,
}

impl SocketFilter {
    /// A filter on the given VIPs and ports.
    pub fn new(local_addrs: impl Into<Vec<Ipv4Addr>>, local_ports: impl Into<Vec<u16>>) -> Self {
        Self {
            local_addrs: local_addrs.into(),
            local_ports: local_ports.into(),
        }
    }

    /// Whether a socket with this local endpoint is selected by the filter.
    pub fn matches(&self, local: SocketAddrV4) -> bool {
        (self.local_addrs.is_empty() || self.local_addrs.contains(local.ip()))
            && (self.local_ports.is_empty() || self.local_ports.contains(&local.port()))
    }
}

/// A TCP socket state as reported by `inet_diag` (`include/net/tcp_states.h` numbering).
///
/// The derived order is the kernel's numbering, which keeps [`Counts::by_state`] in the order
/// a connection goes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TcpState {
    /// `TCP_ESTABLISHED` (1).
    Established,
    /// `TCP_SYN_SENT` (2): an outgoing connect in progress.
    SynSent,
    /// `TCP_SYN_RECV` (3), which is also how the kernel reports request sockets
    /// (`TCP_NEW_SYN_RECV`, 12): a handshake we answered whose final ACK has not arrived yet.
    SynRecv,
    /// `TCP_FIN_WAIT1` (4): we closed; our FIN is not acknowledged yet.
    FinWait1,
    /// `TCP_FIN_WAIT2` (5): we closed, the peer acknowledged, and may still send to us.
    FinWait2,
    /// `TCP_TIME_WAIT` (6).
    TimeWait,
    /// `TCP_CLOSE` (7).
    Close,
    /// `TCP_CLOSE_WAIT` (8): the peer half-closed; we may still send to it.
    CloseWait,
    /// `TCP_LAST_ACK` (9): both sides closed; our FIN is not acknowledged yet.
    LastAck,
    /// `TCP_LISTEN` (10).
    Listen,
    /// `TCP_CLOSING` (11): simultaneous close.
    Closing,
    /// `TCP_BOUND_INACTIVE` (13): bound, neither listening nor connected.
    BoundInactive,
    /// A state number this code does not know.
    Unknown(u8),
}

/// `TCP_NEW_SYN_RECV`: the state of request sockets in the established hash (since 4.4).
const TCP_NEW_SYN_RECV: u8 = 12;

impl TcpState {
    /// The state's name as `ss` prints it (lower case), for reports.
    pub fn name(self) -> String {
        match self {
            Self::Established => "established".into(),
            Self::SynSent => "syn-sent".into(),
            Self::SynRecv => "syn-recv".into(),
            Self::FinWait1 => "fin-wait-1".into(),
            Self::FinWait2 => "fin-wait-2".into(),
            Self::TimeWait => "time-wait".into(),
            Self::Close => "close".into(),
            Self::CloseWait => "close-wait".into(),
            Self::LastAck => "last-ack".into(),
            Self::Listen => "listen".into(),
            Self::Closing => "closing".into(),
            Self::BoundInactive => "bound-inactive".into(),
            Self::Unknown(n) => format!("state-{n}"),
        }
    }

    /// Decodes the kernel's state number.
    pub fn from_kernel(state: u8) -> Self {
        match state {
            1 => Self::Established,
            2 => Self::SynSent,
            3 | TCP_NEW_SYN_RECV => Self::SynRecv,
            4 => Self::FinWait1,
            5 => Self::FinWait2,
            6 => Self::TimeWait,
            7 => Self::Close,
            8 => Self::CloseWait,
            9 => Self::LastAck,
            10 => Self::Listen,
            11 => Self::Closing,
            13 => Self::BoundInactive,
            other => Self::Unknown(other),
        }
    }

    /// The kernel's state number (request sockets map to `TCP_SYN_RECV`, 3).
    pub fn to_kernel(self) -> u8 {
        match self {
            Self::Established => 1,
            Self::SynSent => 2,
            Self::SynRecv => 3,
            Self::FinWait1 => 4,
            Self::FinWait2 => 5,
            Self::TimeWait => 6,
            Self::Close => 7,
            Self::CloseWait => 8,
            Self::LastAck => 9,
            Self::Listen => 10,
            Self::Closing => 11,
            Self::BoundInactive => 13,
            Self::Unknown(n) => n,
        }
    }

    /// Whether a socket in this state is a connection the node is still serving, i.e. one a
    /// drain has to wait for.
    ///
    /// * Counted: `ESTABLISHED`; `SYN_RECV` (a client is mid-handshake with us; once its ACK
    ///   arrives it is an established connection of ours); `FIN_WAIT1`/`FIN_WAIT2` (we closed our
    ///   half, but the client may still send and expects our ACKs); `CLOSE_WAIT` (the client
    ///   half-closed, we are still sending it the response); `LAST_ACK` and `CLOSING` (our FIN
    ///   still has to be acknowledged: if the packets went elsewhere now, the client would get a
    ///   reset instead of a clean close).
    /// * Not counted: `LISTEN` (not a connection), `TIME_WAIT` (both FINs are acknowledged, the
    ///   exchange is complete; the kernel only guards against stray old segments, and a late
    ///   retransmitted FIN reaching the peer node instead merely earns the finished client a
    ///   reset), `CLOSE` (already gone), `SYN_SENT` and `BOUND_INACTIVE` (not served
    ///   connections).
    pub fn is_served(self) -> bool {
        matches!(
            self,
            Self::Established
                | Self::SynRecv
                | Self::FinWait1
                | Self::FinWait2
                | Self::CloseWait
                | Self::LastAck
                | Self::Closing
        )
    }
}

impl fmt::Display for TcpState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Self::Established => "ESTABLISHED",
            Self::SynSent => "SYN_SENT",
            Self::SynRecv => "SYN_RECV",
            Self::FinWait1 => "FIN_WAIT1",
            Self::FinWait2 => "FIN_WAIT2",
            Self::TimeWait => "TIME_WAIT",
            Self::Close => "CLOSE",
            Self::CloseWait => "CLOSE_WAIT",
            Self::LastAck => "LAST_ACK",
            Self::Listen => "LISTEN",
            Self::Closing => "CLOSING",
            Self::BoundInactive => "BOUND_INACTIVE",
            Self::Unknown(n) => return write!(f, "UNKNOWN({n})"),
        };
        f.write_str(name)
    }
}

/// The kernel `idiag_states` bitmask of the states [`TcpState::is_served`] counts.
///
/// Request sockets live in the established hash (since 4.4) in state `TCP_NEW_SYN_RECV` (12)
/// and are reported as `TCP_SYN_RECV` (3). Current kernels add `TCPF_NEW_SYN_RECV` themselves
/// whenever `TCPF_SYN_RECV` is requested (`tcp_diag_dump`); the mask carries both bits so it
/// does not depend on that. TIME_WAIT is left out so the kernel sends none: after a busy
/// drain there are more TIME_WAIT sockets than live ones.
pub const SERVED_STATES_MASK: u32 = (1 << 1) // ESTABLISHED
    | (1 << 3) // SYN_RECV
    | (1 << 4) // FIN_WAIT1
    | (1 << 5) // FIN_WAIT2
    | (1 << 8) // CLOSE_WAIT
    | (1 << 9) // LAST_ACK
    | (1 << 11) // CLOSING
    | (1 << TCP_NEW_SYN_RECV);

/// One socket from a dump.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketSample {
    /// The socket's state.
    pub state: TcpState,
    /// The local (VIP side) endpoint.
    pub local: SocketAddrV4,
    /// The client's endpoint.
    pub remote: SocketAddrV4,
    /// How long ago the client last showed a sign of life, in ms: the smaller of
    /// `tcpi_last_data_recv` and `tcpi_last_ack_recv`. `None` when the kernel has no
    /// `tcp_info` for the socket: request sockets (SYN_RECV) and FIN_WAIT2 sockets the
    /// application already closed (the kernel keeps those as small timewait-socks).
    pub idle_ms: Option<u32>,
}

impl SocketSample {
    /// Whether the client has been silent for longer than `idle_after`. Sockets without
    /// `tcp_info` are never idle: the kernel expires request and orphaned FIN_WAIT2 sockets on
    /// its own schedule, so there is nothing for the drain to decide about them.
    pub fn is_idle(&self, idle_after: Duration) -> bool {
        self.idle_ms
            .is_some_and(|ms| u128::from(ms) > idle_after.as_millis())
    }
}

/// The result of one count.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    /// Sockets still being served ([`TcpState::is_served`]) that match the filter.
    pub total: usize,
    /// How many of `total` are idle (see [`SocketSample::is_idle`]); always 0 when the count
    /// was asked without an idle threshold.
    pub idle: usize,
    /// Matching sockets per state, including any not-served state the kernel sent.
    pub by_state: BTreeMap<TcpState, usize>,
}

impl Counts {
    /// Served sockets that are not idle: the ones a drain really waits for.
    pub fn active(&self) -> usize {
        self.total - self.idle
    }
}

/// Counts sockets as a dump streams by, without allocating per socket.
///
/// The real adapter feeds it from the netlink buffer, the fake from its script, so both share
/// the counting rules.
pub(crate) struct Tally<'a> {
    filter: &'a SocketFilter,
    idle_after: Option<Duration>,
    total: usize,
    idle: usize,
    by_state: [usize; 256],
}

impl<'a> Tally<'a> {
    pub(crate) fn new(filter: &'a SocketFilter, idle_after: Option<Duration>) -> Self {
        Self {
            filter,
            idle_after,
            total: 0,
            idle: 0,
            by_state: [0; 256],
        }
    }

    pub(crate) fn add(&mut self, s: &SocketSample) {
        // The kernel-side bytecode already filtered, but the check is nearly free and keeps
        // the count right when the filter could not be compiled (or is switched off).
        if !self.filter.matches(s.local) {
            return;
        }
        self.by_state[usize::from(s.state.to_kernel())] += 1;
        if !s.state.is_served() {
            return;
        }
        self.total += 1;
        if self.idle_after.is_some_and(|d| s.is_idle(d)) {
            self.idle += 1;
        }
    }

    pub(crate) fn finish(self) -> Counts {
        let by_state = self
            .by_state
            .iter()
            .enumerate()
            .filter(|(_, &n)| n > 0)
            .map(|(state, &n)| (TcpState::from_kernel(state as u8), n))
            .collect();
        Counts {
            total: self.total,
            idle: self.idle,
            by_state,
        }
    }
}

/// Counting the node's connections; the drain loop's view of the kernel.
pub trait SocketCounter {
    /// Counts the served sockets matching `f`. With `idle_after`, also counts how many of them
    /// have been idle for longer (this needs `tcp_info`, which triples the reply's size, so it
    /// is requested only then).
    fn count(
        &mut self,
        f: &SocketFilter,
        idle_after: Option<Duration>,
    ) -> Result<Counts, SockDiagError>;

    /// Lists the served sockets matching `f`, with their idle time (for logs and `--json`).
    fn sample(&mut self, f: &SocketFilter) -> Result<Vec<SocketSample>, SockDiagError>;
}

/// Errors of the sock_diag adapters.
#[derive(Debug, thiserror::Error)]
pub enum SockDiagError {
    /// The NETLINK_SOCK_DIAG socket could not be created or configured.
    #[error("cannot open a NETLINK_SOCK_DIAG socket ({what}): {source}")]
    Open {
        /// The step that failed.
        what: &'static str,
        /// The OS error.
        source: io::Error,
    },
    /// Sending the dump request failed.
    #[error("cannot send the inet_diag dump request (seq {seq}): {source}")]
    Send {
        /// Sequence number of the request.
        seq: u32,
        /// The OS error.
        source: io::Error,
    },
    /// Receiving the dump failed.
    #[error("receiving the inet_diag dump (seq {seq}) failed: {source}")]
    Recv {
        /// Sequence number of the request.
        seq: u32,
        /// The OS error.
        source: io::Error,
    },
    /// The kernel answered the request with an error (NLMSG_ERROR, or NLMSG_DONE carrying one).
    #[error("the kernel rejected the inet_diag dump request (seq {seq}): {source}")]
    Kernel {
        /// Sequence number of the request.
        seq: u32,
        /// The errno the kernel returned.
        source: io::Error,
    },
    /// A datagram did not fit in the receive buffer.
    #[error("a sock_diag datagram of {len} bytes did not fit the {capacity}-byte receive buffer")]
    Truncated {
        /// Size of the datagram.
        len: usize,
        /// Size of the buffer.
        capacity: usize,
    },
    /// The kernel's reply could not be parsed.
    #[error("malformed sock_diag reply at byte {offset} of a {len}-byte datagram: {reason}")]
    Malformed {
        /// Where in the datagram.
        offset: usize,
        /// Length of the datagram.
        len: usize,
        /// What was wrong.
        reason: &'static str,
    },
    /// Joining the SKNLGRP_INET_TCP_DESTROY multicast group failed.
    #[error("cannot subscribe to sock_diag destroy events (needs CAP_NET_ADMIN): {source}")]
    Subscribe {
        /// The OS error.
        source: io::Error,
    },
    /// Waiting for destroy events failed.
    #[error("waiting for sock_diag destroy events failed: {source}")]
    Wait {
        /// The OS error.
        source: io::Error,
    },
    /// A `FakeCounter` was called more times than it had scripted replies.
    #[error("fake socket counter: no scripted reply left for call #{call} ({kind})")]
    FakeExhausted {
        /// 1-based number of the call.
        call: usize,
        /// `count` or `sample`.
        kind: &'static str,
    },
}

impl SockDiagError {
    /// Whether the kernel refused for lack of privilege (EPERM/EACCES), by errno.
    pub fn is_permission(&self) -> bool {
        match self {
            SockDiagError::Open { source, .. }
            | SockDiagError::Send { source, .. }
            | SockDiagError::Recv { source, .. }
            | SockDiagError::Kernel { source, .. }
            | SockDiagError::Subscribe { source }
            | SockDiagError::Wait { source } => {
                source.kind() == io::ErrorKind::PermissionDenied
                    || matches!(source.raw_os_error(), Some(libc::EPERM | libc::EACCES))
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn passive_opens_are_read_from_the_tcp_lines() {
        let snmp = "Ip: Forwarding DefaultTTL\nIp: 2 64\n\
            Tcp: RtoAlgorithm RtoMin RtoMax MaxConn ActiveOpens PassiveOpens AttemptFails\n\
            Tcp: 1 200 120000 -1 12 3456 0\nUdp: InDatagrams\nUdp: 5\n";
        assert_eq!(super::parse_passive_opens(snmp), Some(3456));
        assert_eq!(super::parse_passive_opens("Tcp: PassiveOpens\n"), None);
    }

    use super::*;

    fn sample(state: TcpState, local: &str, idle_ms: Option<u32>) -> SocketSample {
        SocketSample {
            state,
            local: local.parse().unwrap(),
            remote: "198.18.0.9:40000".parse().unwrap(),
            idle_ms,
        }
    }

    #[test]
    fn state_numbers_round_trip_and_request_socks_are_syn_recv() {
        for n in 0..=255u8 {
            let s = TcpState::from_kernel(n);
            if n == TCP_NEW_SYN_RECV {
                assert_eq!(s, TcpState::SynRecv);
                assert_eq!(s.to_kernel(), 3);
            } else {
                assert_eq!(s.to_kernel(), n, "{s}");
            }
        }
    }

    #[test]
    fn served_states_mask_agrees_with_is_served() {
        for n in 0..32u8 {
            let in_mask = SERVED_STATES_MASK & (1 << n) != 0;
            assert_eq!(in_mask, TcpState::from_kernel(n).is_served(), "state {n}");
        }
        assert!(!TcpState::TimeWait.is_served());
        assert!(!TcpState::Listen.is_served());
        assert!(TcpState::CloseWait.is_served());
    }

    #[test]
    fn empty_filter_lists_are_wildcards() {
        let local: SocketAddrV4 = "198.18.7.1:80".parse().unwrap();
        assert!(SocketFilter::default().matches(local));
        assert!(SocketFilter::new(vec![], vec![80]).matches(local));
        assert!(!SocketFilter::new(vec![], vec![81]).matches(local));
        assert!(SocketFilter::new(vec![Ipv4Addr::new(198, 18, 7, 1)], vec![]).matches(local));
        assert!(!SocketFilter::new(vec![Ipv4Addr::new(198, 18, 7, 2)], vec![80]).matches(local));
    }

    #[test]
    fn tally_counts_served_matching_sockets_and_idle_ones() {
        let f = SocketFilter::new(vec![Ipv4Addr::new(198, 18, 7, 1)], vec![80, 443]);
        let mut t = Tally::new(&f, Some(Duration::from_millis(1000)));
        for s in [
            sample(TcpState::Established, "198.18.7.1:80", Some(5)),
            sample(TcpState::Established, "198.18.7.1:443", Some(1001)),
            // Exactly the threshold is not "longer than" it.
            sample(TcpState::Established, "198.18.7.1:443", Some(1000)),
            sample(TcpState::SynRecv, "198.18.7.1:80", None),
            sample(TcpState::CloseWait, "198.18.7.1:80", Some(60_000)),
            sample(TcpState::TimeWait, "198.18.7.1:80", None),
            // Not matching: other port, other address.
            sample(TcpState::Established, "198.18.7.1:22", Some(99_999)),
            sample(TcpState::Established, "198.18.7.2:80", Some(99_999)),
        ] {
            t.add(&s);
        }
        let c = t.finish();
        assert_eq!(c.total, 5);
        assert_eq!(c.idle, 2);
        assert_eq!(c.active(), 3);
        let want: BTreeMap<_, _> = [
            (TcpState::Established, 3),
            (TcpState::SynRecv, 1),
            (TcpState::TimeWait, 1),
            (TcpState::CloseWait, 1),
        ]
        .into_iter()
        .collect();
        assert_eq!(c.by_state, want);
    }

    #[test]
    fn without_threshold_nothing_is_idle() {
        let f = SocketFilter::default();
        let mut t = Tally::new(&f, None);
        t.add(&sample(
            TcpState::Established,
            "198.18.7.1:80",
            Some(u32::MAX),
        ));
        let c = t.finish();
        assert_eq!((c.total, c.idle), (1, 0));
    }
}
