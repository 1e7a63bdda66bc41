//! The service layer's errors: [`HostError`] (one host operation failed, classified for the exit
//! code) and [`OpError`] (why an operation did not complete, each variant mapped to a documented
//! exit code of [`super::exit`]).

use std::net::Ipv4Addr;
use std::time::Duration;

use serde::Serialize;

use super::{divert, exit, PeerAnswer};
use crate::journal::{Change, JournalError};
use crate::sys::firewall::FirewallError;

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

/// The adapter's own error behind a [`HostError`], kept whole (shared, so the error stays
/// `Clone`) for callers that look at it rather than at its text.
pub type Source = std::sync::Arc<dyn std::error::Error + Send + Sync + 'static>;

/// A failed host operation: what was attempted and why it failed, in one line, and the adapter's
/// error it came from, when there is one.
#[derive(Clone, Debug)]
pub struct HostError {
    /// The operation, e.g. `iptables-restore (install divert)`.
    pub op: String,
    /// The cause, e.g. the tool's first stderr line: the source's own message when there is a
    /// source.
    pub cause: String,
    /// Classification for the exit code.
    pub kind: HostErrorKind,
    /// The adapter's error (a `FirewallError`, `LinksError`, `SockDiagError`, ...), for
    /// `downcast_ref`; `None` when the cause is only a sentence.
    pub source: Option<Source>,
}

impl std::fmt::Display for HostError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.op, self.cause)
    }
}

// By hand rather than derived: a derived source would be the `Arc` itself, which no caller can
// downcast to the adapter's error; this hands out the error inside it.
impl std::error::Error for HostError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
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
        HostError::caused("firewall", kind, e)
    }
}

impl From<divert::DivertError> for HostError {
    fn from(e: divert::DivertError) -> HostError {
        match e {
            divert::DivertError::Firewall(f) => f.into(),
            other => HostError::caused("firewall", HostErrorKind::Other, other),
        }
    }
}

impl HostError {
    /// An error of kind `Other` whose cause is a sentence (no source error).
    pub fn other(op: impl Into<String>, cause: impl ToString) -> HostError {
        HostError::new(op, HostErrorKind::Other, cause)
    }

    /// An error whose cause is a sentence (no source error), of `kind`.
    pub fn new(op: impl Into<String>, kind: HostErrorKind, cause: impl ToString) -> HostError {
        HostError {
            op: op.into(),
            cause: cause.to_string(),
            kind,
            source: None,
        }
    }

    /// An error caused by the adapter's error `e`, kept as the source.
    pub fn caused(
        op: impl Into<String>,
        kind: HostErrorKind,
        e: impl std::error::Error + Send + Sync + 'static,
    ) -> HostError {
        HostError {
            op: op.into(),
            cause: e.to_string(),
            kind,
            source: Some(std::sync::Arc::new(e)),
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
    PeerNotReady(#[source] PeerProblem),
    /// This node does not hold the VIP.
    #[error("this node does not hold VIP {0} (not MASTER?); nothing to drain, nothing changed")]
    NotMaster(Ipv4Addr),
    /// The node is already out of service.
    #[error("already out of service: {0}; run `drain-agent undrain` (or `maintenance off`) first")]
    AlreadyDrained(OutOfService),
    /// The node changed under the operation: keepalived moved `vip` here as `maintenance on`
    /// began, after it found the node not holding it; nothing was changed.
    #[error("keepalived moved {vip} here as maintenance began; run `maintenance on` again to drain it; nothing changed")]
    StateChanged {
        /// The VIP that arrived.
        vip: Ipv4Addr,
    },
    /// An earlier run left changes behind.
    #[error("leftovers of an earlier run: {0}; run `drain-agent undrain` to remove them")]
    Leftovers(Leftover),
    /// The peer stopped answering; the divert was withdrawn and removed.
    #[error("peer lost during the drain ({failed} probes failed, last: {last}); divert withdrawn, this node still serves")]
    PeerLost {
        /// Consecutive probes that failed (`probe_failures`).
        failed: u32,
        /// What the last of them saw.
        last: PeerAnswer,
    },
    /// SIGINT/SIGTERM; rolled back.
    #[error("interrupted; divert withdrawn and removed, this node still serves")]
    Interrupted,
    /// Deadline with abort_on_deadline; rolled back.
    #[error("drain deadline of {} reached with {} connections left; rolled back (abort_on_deadline)", crate::config::fmt_duration(*.0), .1)]
    DeadlineAbort(Duration, usize),
    /// The peer did not take the VIP in time.
    #[error("failover not confirmed within {} ({pending}); divert removed, tracked interface left down: check keepalived on both nodes", crate::config::fmt_duration(*.timeout))]
    FailoverUnconfirmed {
        /// The `failover_timeout` waited.
        timeout: Duration,
        /// What was still missing when it ran out.
        pending: FailoverPending,
    },
    /// Not root / no CAP_NET_ADMIN.
    #[error("insufficient privileges: drain-agent needs root or CAP_NET_ADMIN (and CAP_NET_RAW for the peer probe)")]
    Privileges,
    /// Some undo steps failed; they stay in the journal.
    #[error("cleanup incomplete ({0}); the journal keeps what is left, run `drain-agent undrain`")]
    CleanupIncomplete(#[source] UndoFailures),
    /// The configuration (or the request) does not allow what was asked.
    #[error("{0}")]
    Config(ConfigProblem),
    /// This node returns its peer's connections in the peer's hand-off.
    #[error("this node serves the hand-off of {0} (its connections are returned to it); drain this node when that is over")]
    ServingHandoff(Ipv4Addr),
    /// The VIP left this node before the agent pulled the trigger: keepalived here stopped,
    /// or went FAULT or BACKUP by itself. Clients already send
    /// to the peer, so nothing is rolled back: the drain is finished (trigger, divert kept for
    /// `post_wait`, removed) and the connections this node still had are reported cut.
    /// What is seen is only that the address is no longer configured here.
    #[error("VIP {vip} moved to the peer during the drain without the agent (no longer configured here): {cut} connection(s) of this node cut; failover finished, divert removed, this node stays out of service until `drain-agent undrain`: check keepalived here")]
    VipMoved {
        /// The VIP that left.
        vip: Ipv4Addr,
        /// The connections this node still had, cut.
        cut: usize,
    },
    /// SIGINT/SIGTERM after the failover of a hand-off: the node's remaining connections were cut.
    #[error("interrupted during the hand-off: {0} connection(s) of this node cut; the peer serves the VIP, this node stays out of service until `drain-agent undrain`")]
    HandoffCut(usize),
}

/// Why the peer cannot take the traffic ([`OpError::PeerNotReady`]): what was asked of it and
/// what it answered, and the host's error when the asking failed.
#[derive(Debug, thiserror::Error)]
pub enum PeerProblem {
    /// The preflight's probe of the VIP through the peer was refused (RST).
    #[error("{peer} refuses connections to the VIP (RST): is HAProxy running there, and did you run `drain-agent accept` on it?")]
    Refuses {
        /// The peer's address.
        peer: Ipv4Addr,
    },
    /// The preflight's probe of the VIP through the peer got no answer.
    #[error(
        "{peer} does not answer for the VIP: is it up, and did you run `drain-agent accept` on it?"
    )]
    Silent {
        /// The peer's address.
        peer: Ipv4Addr,
    },
    /// A hand-off needs the peer's MAC, and the peer does not answer ARP.
    #[error("{peer} does not answer ARP")]
    NoArp {
        /// The peer's address.
        peer: Ipv4Addr,
    },
    /// The peer's agent refused to begin the hand-off.
    #[error("{peer}'s agent refuses the hand-off: {reason}")]
    HandoffRefused {
        /// The peer's address.
        peer: Ipv4Addr,
        /// The reason the peer's agent gave.
        reason: String,
    },
    /// The request to begin the hand-off went out and no reply came; this node then told the
    /// peer's agent to end it.
    #[error("{peer}'s agent did not answer the hand-off ({error}); nothing changed here; {}", fmt_ended(.ended))]
    HandoffUnanswered {
        /// The peer's address.
        peer: Ipv4Addr,
        /// Why no reply came.
        #[source]
        error: HostError,
        /// What telling the peer's agent to end the hand-off gave
        /// ([`super::handoff::ask_end`]): its reply, or why it failed.
        ended: Result<String, String>,
    },
    /// The peer's agent could not be asked to begin the hand-off.
    #[error("{peer}'s agent does not answer ({error}): is `drain-agent run` running there with the same handoff.key_file?")]
    AgentUnreachable {
        /// The peer's address.
        peer: Ipv4Addr,
        /// Why it could not be asked.
        #[source]
        error: HostError,
    },
    /// `maintenance off --failback`: the peer's agent refused to fail back.
    #[error("the peer did not fail back: {reason}; this node is back as BACKUP")]
    FailbackRefused {
        /// The reason the peer's agent gave.
        reason: String,
    },
    /// `maintenance off --failback`: the peer's agent did not answer the failback.
    #[error(
        "the peer's agent does not answer the failback ({error}); this node is back as BACKUP"
    )]
    FailbackUnanswered {
        /// Why it did not answer.
        #[source]
        error: HostError,
    },
}

/// The end of [`PeerProblem::HandoffUnanswered`]'s message: what became of the request to end.
fn fmt_ended(ended: &Result<String, String>) -> String {
    match ended {
        Ok(detail) => format!("told it to end the hand-off ({detail})"),
        Err(why) => format!(
            "could not tell it to end the hand-off ({why}); its return path, if any, goes at its deadline"
        ),
    }
}

/// How the preflight found the node already out of service ([`OpError::AlreadyDrained`]).
#[derive(Debug)]
pub enum OutOfService {
    /// The journal records the maintenance state (the tracked interface down, the track file
    /// FAULT).
    Journalled {
        /// The change recorded.
        change: Change,
        /// When it was recorded, in seconds since the epoch.
        at: u64,
        /// Whether it is in effect now: after a reboot the journal still records the failover
        /// while the tracked interface is up again.
        in_effect: bool,
    },
    /// The tracked interface is down, and the journal does not say why.
    LinkDown {
        /// The tracked interface.
        ifname: String,
    },
    /// The track file says FAULT, and the journal does not say why.
    TrackFault,
}

impl std::fmt::Display for OutOfService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OutOfService::Journalled {
                change,
                at,
                in_effect,
            } => {
                let now = if *in_effect {
                    "and it is in effect"
                } else {
                    "but it is not in effect now (rebooted?)"
                };
                write!(
                    f,
                    "the journal records {change} (at {}) {now}",
                    super::status::fmt_unix(*at)
                )
            }
            OutOfService::LinkDown { ifname } => write!(f, "tracked interface {ifname} is down"),
            OutOfService::TrackFault => f.write_str("the track file says FAULT"),
        }
    }
}

/// What an earlier run left behind ([`OpError::Leftovers`]).
#[derive(Debug)]
pub enum Leftover {
    /// The journal records a transient change (a crash mid-drain).
    Journalled(Change),
    /// The divert's ipsets exist already.
    Sets(Vec<String>),
    /// The divert's iptables chains exist already.
    Chains(Vec<String>),
}

impl std::fmt::Display for Leftover {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Leftover::Journalled(change) => write!(f, "journal records {change}"),
            Leftover::Sets(names) => write!(f, "ipset {} already exists", names.join(", ")),
            Leftover::Chains(chains) => {
                write!(f, "iptables chain {} already exists", chains.join(", "))
            }
        }
    }
}

/// What the failover wait still missed when `failover_timeout` ran out
/// ([`OpError::FailoverUnconfirmed`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailoverPending {
    /// The VIP is still configured on this node (keepalived here did not let it go).
    StillHere(Ipv4Addr),
    /// The peer does not answer ARP for the VIP (it did not take it).
    NoArp(Ipv4Addr),
}

impl std::fmt::Display for FailoverPending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FailoverPending::StillHere(vip) => write!(f, "{vip} still configured here"),
            FailoverPending::NoArp(vip) => write!(f, "the peer does not answer ARP for {vip}"),
        }
    }
}

/// The undo steps that failed ([`OpError::CleanupIncomplete`]), newest change first, and the
/// journal's error when it could not forget a change that was undone.
#[derive(Debug)]
pub struct UndoFailures {
    /// Each failed undo step's error; never empty.
    pub steps: Vec<HostError>,
    /// Why the journal could not be rewritten after a step that worked.
    pub journal: Option<JournalError>,
}

impl std::fmt::Display for UndoFailures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let journal = self.journal.iter().map(|e| e as &dyn std::fmt::Display);
        let all = self.steps.iter().map(|e| e as &dyn std::fmt::Display);
        for (i, e) in all.chain(journal).enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

// One source only: the first failed step, the one an operator looks at first.
impl std::error::Error for UndoFailures {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.steps
            .first()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// What the configuration or the request lacks for what was asked ([`OpError::Config`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigProblem {
    /// `drain.mode: handoff` without the `handoff:` section.
    #[error("a hand-off needs the handoff: section in the configuration (key_file, and `drain-agent run` on the peer)")]
    HandoffNeedsPeerLink,
    /// `maintenance off --failback` without the `handoff:` section.
    #[error("--failback asks the peer's agent to drain itself: it needs the peer link (the handoff: section, and `drain-agent run` on the peer)")]
    FailbackNeedsPeerLink,
    /// `maintenance on` with an empty `--reason`.
    #[error("maintenance on needs --reason: say why the node goes out of service")]
    MaintenanceNeedsReason,
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
            | OpError::StateChanged { .. }
            | OpError::ServingHandoff(_) => exit::STATE,
            OpError::PeerLost { .. } => exit::PEER_LOST,
            OpError::Interrupted | OpError::HandoffCut(_) => exit::INTERRUPTED,
            OpError::DeadlineAbort(..) => exit::DEADLINE,
            OpError::FailoverUnconfirmed { .. } => exit::FAILOVER,
            OpError::CleanupIncomplete(_) => exit::CLEANUP,
            OpError::VipMoved { .. } => exit::VIP_MOVED,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_error_keeps_the_adapters_error_as_its_source() {
        let fw = FirewallError::BadOutput {
            binary: "iptables-save".into(),
            detail: "no table line".into(),
        };
        let text = fw.to_string();
        let op: OpError = HostError::from(fw).into();
        // The message is what it was; the chain leads to the firewall's own error.
        assert_eq!(op.to_string(), format!("firewall: {text}"));
        let host = std::error::Error::source(&op).expect("OpError::Host has its HostError");
        let inner = host.source().expect("HostError has the firewall's error");
        assert!(
            matches!(
                inner.downcast_ref::<FirewallError>(),
                Some(FirewallError::BadOutput { .. })
            ),
            "{inner:?}"
        );
        // A sentence has no source.
        assert!(std::error::Error::source(&HostError::other("x", "y")).is_none());
    }
}
