//! What the service layer needs from the host: small capability traits ([`Clock`],
//! [`Interfaces`], [`PeerProbe`], [`Sockets`], [`Sysctl`], [`KeepalivedTrack`], [`Tools`],
//! [`Netfilter`], [`PeerAgent`]) and [`Host`], which is all of them. The real implementation,
//! [`crate::wiring::SystemHost`], composes the adapters in [`crate::sys`]; the tests use a
//! scripted fake world (`super::fake`).

use std::net::Ipv4Addr;
use std::time::Duration;

use super::handoff::{PeerReply, PeerRequest};
use super::{HostError, PeerAnswer, SocketCount};
use crate::sys::firewall::Firewall;

/// Time, and the interrupts that cut a wait short: what every wait loop of the cycle reads.
pub trait Clock {
    /// Monotonic time since an arbitrary start.
    fn now(&self) -> Duration;
    /// Sleeps (the fake advances its clock).
    fn sleep(&mut self, d: Duration);
    /// Waits up to `max` for a sign that the socket count changed (a socket of the VIP's being
    /// destroyed), so the drain is declared done right after the last connection closes rather
    /// than up to a poll interval later. May return early for no reason; never waits longer.
    fn wait_for_change(&mut self, max: Duration) {
        self.sleep(max);
    }
    /// How many interrupts (SIGINT/SIGTERM) arrived: 1 = roll back gracefully, 2+ = roll back now.
    fn interrupts(&self) -> u32;
    /// Wall-clock time in seconds since the epoch, for deadlines that must outlive the process.
    fn unix_now(&self) -> u64;
}

/// The node's links, addresses and routes (netlink).
pub trait Interfaces {
    /// Is the interface administratively up? (Missing interface = error of kind MissingInterface.)
    fn link_up(&mut self, ifname: &str) -> Result<bool, HostError>;
    /// Sets the interface up or down.
    fn set_link(&mut self, ifname: &str, up: bool) -> Result<(), HostError>;
    /// Is the VIP configured on one of this node's interfaces?
    fn vip_local(&mut self, vip: Ipv4Addr) -> Result<bool, HostError>;
    /// Adds (`present`) or removes the `local VIP/32 dev lo` route.
    fn local_route(&mut self, vip: Ipv4Addr, present: bool) -> Result<(), HostError>;
}

/// What the wire says about the peer: ARP for the VIP and its MAC, and SYN probes of the VIP through it.
pub trait PeerProbe {
    /// Does the peer (and only the peer) answer ARP for the VIP?
    fn peer_owns(&mut self, vip: Ipv4Addr) -> Result<bool, HostError>;
    /// One SYN probe of the VIP through the peer.
    fn probe_peer(&mut self) -> Result<PeerAnswer, HostError>;
    /// The peer's MAC on the ingress network (ARP); `None` if it does not answer.
    fn peer_mac(&mut self) -> Result<Option<crate::plan::Mac>, HostError>;
}

/// The node's TCP sockets (sock_diag) and connection counters.
pub trait Sockets {
    /// Counts the node's sockets on the VIP ports.
    fn count(&mut self) -> Result<SocketCount, HostError>;
    /// TCP connections this node has accepted so far (its namespace's `PassiveOpens`).
    fn passive_opens(&mut self) -> Result<u64, HostError>;
}

/// Kernel parameters under /proc/sys.
pub trait Sysctl {
    /// Reads a sysctl (key relative to /proc/sys).
    fn sysctl_read(&mut self, key: &str) -> Result<String, HostError>;
    /// Writes a sysctl.
    fn sysctl_write(&mut self, key: &str, value: &str) -> Result<(), HostError>;
}

/// keepalived's track file, the failover trigger a `track_file` block reads.
pub trait KeepalivedTrack {
    /// Writes keepalived's track file atomically (the value keepalived multiplies by the block's
    /// weight; -254 means FAULT).
    fn write_track_file(&mut self, path: &std::path::Path, value: i32) -> Result<(), HostError>;
    /// Reads the track file (`None` if it does not exist: keepalived reads that as 0).
    fn read_track_file(&mut self, path: &std::path::Path) -> Result<Option<i32>, HostError>;
}

/// What this process may do and which tools it finds: what `check` reports.
pub trait Tools {
    /// Whether this process may change the network (`CAP_NET_ADMIN`).
    fn has_net_admin(&self) -> bool;
    /// Where the tool `bin` is, if installed.
    fn find_tool(&self, bin: &str) -> Option<std::path::PathBuf>;
}

/// The firewall adapter, and a dry run of the texts it would apply.
pub trait Netfilter {
    /// The firewall adapter (iptables-restore/-save, ipset, nft).
    fn firewall(&mut self) -> &mut dyn Firewall;
    /// Has the kernel's tools parse the divert's exact `ipset restore` and
    /// `iptables-restore --noflush` texts, committing nothing to this node.
    fn test_divert(&mut self, sets: &str, rules: &str) -> DivertTest;
}

/// The peer's agent, over the authenticated peer link.
pub trait PeerAgent {
    /// One request to the peer's agent over the authenticated peer link (`handoff:` section).
    fn peer_agent(&mut self, req: &PeerRequest) -> Result<PeerReply, HostError>;
}

/// Everything the service layer needs from the host, as the capabilities it is made of. The
/// real implementation ([`crate::wiring::SystemHost`]) composes the firewall, links, sock_diag
/// and probe adapters; tests use a scripted fake. Any type with every capability is a `Host`; a
/// function that needs only one may take only that one (`&mut dyn PeerAgent`).
pub trait Host:
    Clock + Interfaces + PeerProbe + Sockets + Sysctl + KeepalivedTrack + Tools + Netfilter + PeerAgent
{
}

impl<T> Host for T where
    T: Clock
        + Interfaces
        + PeerProbe
        + Sockets
        + Sysctl
        + KeepalivedTrack
        + Tools
        + Netfilter
        + PeerAgent
        + ?Sized
{
}

pub use crate::sys::firewall::DivertTest;

/// The shortest pause a wait loop takes, so that a deadline reached between two reads of the
/// clock never turns into a busy spin.
pub(crate) const MIN_SLEEP: Duration = Duration::from_millis(1);
