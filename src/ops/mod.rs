//! The service layer: every operation the agent performs — drain, undrain, accept and release on
//! the peer, keepalived's notify, the daemon's reconcile, status, check — written once, against
//! the [`Host`] trait, and returning typed results. The CLI and the daemon call these and only
//! render what they return; the kernel is reached only through [`Host`] (whose real
//! implementation, [`crate::wiring::SystemHost`], composes the adapters in [`crate::sys`]).
//! What to change is computed by the pure planner, [`crate::plan`]; every change to a host is
//! recorded in a [`crate::journal::Journal`] before it is made, so it can be undone after a crash.
//!
//! Each operation is unit-tested against a scripted fake world (`fake`), without root.

use std::net::Ipv4Addr;
use std::time::Duration;

use serde::Serialize;

use crate::journal::JournalError;
use crate::sys::firewall::{Firewall, FirewallError};

pub mod check;
pub mod divert;
pub mod drain;
pub mod event;
pub mod exit;
pub mod handoff;
pub mod maintenance;
pub mod notify;
pub mod peer;
pub mod reconcile;
pub mod record;
pub mod status;
pub mod undo;
pub mod undrain;

pub use drain::drain;
pub use event::{DrainReason, DrainReport, Event, PeerAnswer, SocketCount};
pub use undo::{cleanup, undo, undo_all};
pub use undrain::undrain;

/// What kind of failure a host operation had; decides the exit code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum HostErrorKind {
    /// A binary the agent runs (iptables-restore, ipset, nft) is missing.
    MissingBinary,
    /// A network interface named in the config does not exist.
    MissingInterface,
    /// The kernel refused: not root / no CAP_NET_ADMIN.
    Permission,
    /// A request to the peer's agent went out but no reply came: the peer may have acted on it.
    Unanswered,
    /// Anything else.
    Other,
}

/// A failed host operation: what was attempted and why it failed, in one line.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{op}: {cause}")]
pub struct HostError {
    /// The operation, e.g. `iptables-restore (install divert)`.
    pub op: String,
    /// The cause, e.g. the tool's first stderr line.
    pub cause: String,
    /// Classification for the exit code.
    pub kind: HostErrorKind,
}

impl From<FirewallError> for HostError {
    fn from(e: FirewallError) -> HostError {
        let kind = if e.is_missing_binary() {
            HostErrorKind::MissingBinary
        } else if e.is_permission() {
            HostErrorKind::Permission
        } else {
            HostErrorKind::Other
        };
        HostError {
            op: "firewall".into(),
            cause: e.to_string(),
            kind,
        }
    }
}

impl From<divert::DivertError> for HostError {
    fn from(e: divert::DivertError) -> HostError {
        match e {
            divert::DivertError::Firewall(f) => f.into(),
            other => HostError::other("firewall", other),
        }
    }
}

impl HostError {
    /// An error of kind `Other`.
    pub fn other(op: impl Into<String>, cause: impl ToString) -> HostError {
        HostError {
            op: op.into(),
            cause: cause.to_string(),
            kind: HostErrorKind::Other,
        }
    }
}

/// Everything the drain cycle needs from the host. The real implementation composes the
/// firewall, links, sock_diag and probe adapters; tests use a scripted fake.
pub trait Host {
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
    /// The firewall adapter (iptables-restore/-save, ipset, nft).
    fn firewall(&mut self) -> &mut dyn Firewall;
    /// Is the interface administratively up? (Missing interface = error of kind MissingInterface.)
    fn link_up(&mut self, ifname: &str) -> Result<bool, HostError>;
    /// Sets the interface up or down.
    fn set_link(&mut self, ifname: &str, up: bool) -> Result<(), HostError>;
    /// Is the VIP configured on one of this node's interfaces?
    fn vip_local(&mut self, vip: Ipv4Addr) -> Result<bool, HostError>;
    /// Does the peer (and only the peer) answer ARP for the VIP?
    fn peer_owns(&mut self, vip: Ipv4Addr) -> Result<bool, HostError>;
    /// One SYN probe of the VIP through the peer.
    fn probe_peer(&mut self) -> Result<PeerAnswer, HostError>;
    /// Counts the node's sockets on the VIP ports.
    fn count(&mut self) -> Result<SocketCount, HostError>;
    /// Adds (`present`) or removes the `local VIP/32 dev lo` route.
    fn local_route(&mut self, vip: Ipv4Addr, present: bool) -> Result<(), HostError>;
    /// Writes keepalived's track file atomically (the value keepalived multiplies by the block's
    /// weight; -254 means FAULT).
    fn write_track_file(&mut self, path: &std::path::Path, value: i32) -> Result<(), HostError>;
    /// Reads the track file (`None` if it does not exist: keepalived reads that as 0).
    fn read_track_file(&mut self, path: &std::path::Path) -> Result<Option<i32>, HostError>;
    /// Reads a sysctl (key relative to /proc/sys).
    fn sysctl_read(&mut self, key: &str) -> Result<String, HostError>;
    /// Writes a sysctl.
    fn sysctl_write(&mut self, key: &str, value: &str) -> Result<(), HostError>;
    /// Whether this process may change the network (`CAP_NET_ADMIN`).
    fn has_net_admin(&self) -> bool;
    /// Where the tool `bin` is, if installed.
    fn find_tool(&self, bin: &str) -> Option<std::path::PathBuf>;
    /// TCP connections this node has accepted so far (its namespace's `PassiveOpens`).
    fn passive_opens(&mut self) -> Result<u64, HostError>;
    /// Has the kernel's tools parse the divert's exact `ipset restore` and
    /// `iptables-restore --noflush` texts, committing nothing to this node.
    fn test_divert(&mut self, sets: &str, rules: &str) -> DivertTest;
    /// The peer's MAC on the ingress network (ARP); `None` if it does not answer.
    fn peer_mac(&mut self) -> Result<Option<crate::plan::Mac>, HostError>;
    /// One request to the peer's agent over the authenticated peer link (`handoff:` section).
    fn peer_agent(&mut self, req: &handoff::PeerRequest) -> Result<handoff::PeerReply, HostError>;
    /// Wall-clock time in seconds since the epoch, for deadlines that must outlive the process.
    fn unix_now(&self) -> u64;
}

pub use crate::sys::firewall::DivertTest;

/// The drain policy (from the config's `drain`, `peer_probe` and `failover` sections).
#[derive(Clone, Debug)]
pub struct Policy {
    /// The VIPs this node serves.
    pub vips: Vec<Ipv4Addr>,
    /// The peer's own address (named in errors about it).
    pub peer: Ipv4Addr,
    /// Interface keepalived tracks.
    pub tracked_interface: String,
    /// Give up waiting for the drain after this.
    pub deadline: Duration,
    /// At the deadline: roll back instead of failing over.
    pub abort_on_deadline: bool,
    /// How often to count sockets.
    pub poll_interval: Duration,
    /// How often to probe the peer.
    pub probe_interval: Duration,
    /// Consecutive failed probes that mean the peer is lost.
    pub probe_failures: u32,
    /// On rollback, keep diverting already-diverted flows this long.
    pub rollback_grace: Duration,
    /// How long to wait for the peer to own the VIP after the trigger.
    pub failover_timeout: Duration,
    /// Keep diverting this long after the peer owns the VIP.
    pub post_wait: Duration,
    /// keepalived's track file, if configured (`failover.track_file`).
    pub track_file: Option<std::path::PathBuf>,
    /// Fail over by writing FAULT to the track file instead of downing the tracked interface.
    pub trigger_track_file: bool,
    /// What `undrain` writes to the track file (see `failover.return_weight`).
    pub return_weight: i32,
    /// Hand off instead of waiting ([`handoff`]): how long the hand-off may last.
    pub handoff: Option<Duration>,
}

impl Policy {
    /// The policy a configuration sets.
    pub fn from_config(cfg: &crate::config::Config) -> Policy {
        Policy {
            vips: cfg.vips.iter().map(|v| v.address.get()).collect(),
            peer: cfg.peer.get(),
            tracked_interface: cfg.tracked_interface.as_str().to_string(),
            deadline: cfg.drain.deadline.get(),
            abort_on_deadline: cfg.drain.abort_on_deadline,
            poll_interval: cfg.drain.poll_interval.get(),
            probe_interval: cfg.peer_probe.interval.get(),
            probe_failures: cfg.peer_probe.failures.get(),
            rollback_grace: cfg.drain.rollback_grace.get(),
            failover_timeout: cfg.failover.timeout.get(),
            post_wait: cfg.failover.post_wait.get(),
            track_file: cfg
                .failover
                .track_file
                .as_ref()
                .map(|p| p.as_path().to_path_buf()),
            trigger_track_file: cfg.failover.method == crate::config::FailoverMethod::TrackFile,
            return_weight: cfg.failover.return_weight.get(),
            handoff: match (&cfg.handoff, cfg.drain.mode) {
                (Some(h), crate::config::DrainMode::Handoff) => Some(h.deadline.get()),
                _ => None,
            },
        }
    }
}

/// Why an operation did not complete. Each maps to a documented exit code ([`OpError::exit_code`]).
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    /// A host operation failed before anything was changed, or while changing (then rolled back).
    #[error("{0}")]
    Host(#[from] HostError),
    /// The state directory failed.
    #[error("{0}")]
    Journal(#[from] JournalError),
    /// The peer cannot take the traffic; nothing was changed.
    #[error("peer not ready: {0}; nothing changed")]
    PeerNotReady(String),
    /// This node does not hold the VIP.
    #[error("this node does not hold VIP {0} (not MASTER?); nothing to drain, nothing changed")]
    NotMaster(Ipv4Addr),
    /// The node is already out of service.
    #[error("already out of service: {0}; run `drain-agent undrain` (or `maintenance off`) first")]
    AlreadyDrained(String),
    /// The node changed under the operation (keepalived moved a VIP); nothing was changed.
    #[error("{0}; nothing changed")]
    StateChanged(String),
    /// An earlier run left changes behind.
    #[error("leftovers of an earlier run: {0}; run `drain-agent undrain` to remove them")]
    Leftovers(String),
    /// The peer stopped answering; the divert was withdrawn and removed.
    #[error("peer lost during the drain ({0}); divert withdrawn, this node still serves")]
    PeerLost(String),
    /// SIGINT/SIGTERM; rolled back.
    #[error("interrupted; divert withdrawn and removed, this node still serves")]
    Interrupted,
    /// Deadline with abort_on_deadline; rolled back.
    #[error("drain deadline of {} reached with {} connections left; rolled back (abort_on_deadline)", crate::config::fmt_duration(*.0), .1)]
    DeadlineAbort(Duration, usize),
    /// The peer did not take the VIP in time.
    #[error("failover not confirmed within {} ({}); divert removed, tracked interface left down: check keepalived on both nodes", crate::config::fmt_duration(*.0), .1)]
    FailoverUnconfirmed(Duration, String),
    /// Not root / no CAP_NET_ADMIN.
    #[error("insufficient privileges: drain-agent needs root or CAP_NET_ADMIN (and CAP_NET_RAW for the peer probe)")]
    Privileges,
    /// Some undo steps failed; they stay in the journal.
    #[error("cleanup incomplete ({0}); the journal keeps what is left, run `drain-agent undrain`")]
    CleanupIncomplete(String),
    /// The configuration does not allow what was asked.
    #[error("{0}")]
    Config(String),
    /// This node returns its peer's connections in the peer's hand-off.
    #[error("this node serves the hand-off of {0} (its connections are returned to it); drain this node when that is over")]
    ServingHandoff(Ipv4Addr),
    /// The VIP left this node before the agent pulled the trigger: keepalived here stopped,
    /// or went FAULT or BACKUP by itself. Clients already send
    /// to the peer, so nothing is rolled back: the drain is finished (trigger, divert kept for
    /// `post_wait`, removed) and the connections this node still had are reported cut.
    #[error("VIP {0} moved to the peer during the drain without the agent ({1}): {2} connection(s) of this node cut; failover finished, divert removed, this node stays out of service until `drain-agent undrain`: check keepalived here")]
    VipMoved(Ipv4Addr, String, usize),
    /// SIGINT/SIGTERM after the failover of a hand-off: the node's remaining connections were cut.
    #[error("interrupted during the hand-off: {0} connection(s) of this node cut; the peer serves the VIP, this node stays out of service until `drain-agent undrain`")]
    HandoffCut(usize),
}

impl OpError {
    /// The documented exit code of this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            OpError::Host(e) => match e.kind {
                HostErrorKind::Other | HostErrorKind::Unanswered => exit::INTERNAL,
                _ => exit::ENVIRONMENT,
            },
            OpError::Journal(JournalError::Busy { .. }) => exit::BUSY,
            OpError::Journal(_) | OpError::Privileges => exit::ENVIRONMENT,
            OpError::Config(_) => exit::CONFIG,
            OpError::PeerNotReady(_) => exit::PEER_NOT_READY,
            OpError::NotMaster(_)
            | OpError::AlreadyDrained(_)
            | OpError::Leftovers(_)
            | OpError::StateChanged(_)
            | OpError::ServingHandoff(_) => exit::STATE,
            OpError::PeerLost(_) => exit::PEER_LOST,
            OpError::Interrupted | OpError::HandoffCut(_) => exit::INTERRUPTED,
            OpError::DeadlineAbort(..) => exit::DEADLINE,
            OpError::FailoverUnconfirmed(..) => exit::FAILOVER,
            OpError::CleanupIncomplete(_) => exit::CLEANUP,
            OpError::VipMoved(..) => exit::VIP_MOVED,
        }
    }
}

/// The shortest pause a wait loop takes, so that a deadline reached between two reads of the
/// clock never turns into a busy spin.
pub(crate) const MIN_SLEEP: Duration = Duration::from_millis(1);

/// The track-file value keepalived reads as FAULT (value x weight clamped to -254).
pub const TRACK_FAULT: i32 = -254;

/// Milliseconds of a duration, as the reports and events give them.
pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[cfg(test)]
pub(crate) mod fake;

#[cfg(test)]
mod tests;
