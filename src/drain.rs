//! The drain cycle as a state machine over a [`Host`]: preflight → divert → watch → fail over →
//! clean up, with rollback on every abort path. Everything the cycle does to the host goes
//! through the `Host` trait, so the whole machine is unit-tested against a scripted fake world
//! (connections that close, a peer that dies, keepalived that moves the VIP) without root.
//!
//! Every host change is recorded in the [`Journal`] before it is made; undo is idempotent and is
//! the same code whether it runs at the end of a drain, on rollback, or after a crash (`undrain`).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use serde::Serialize;

use crate::firewall::{self, Firewall, FirewallError, InstallReceipt};
use crate::journal::{Change, Journal, JournalError};
use crate::plan::sets::{DivertCounters, RecordStats};
use crate::plan::DivertPlan;
use crate::record::{self, RecordKeeper};

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
        let kind = match &e {
            FirewallError::MissingBinary { .. } => HostErrorKind::MissingBinary,
            other
                if other.to_string().contains("ermission denied")
                    || other.to_string().contains("not permitted") =>
            {
                HostErrorKind::Permission
            }
            _ => HostErrorKind::Other,
        };
        HostError {
            op: "firewall".into(),
            cause: e.to_string(),
            kind,
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

/// What a SYN probe of the peer saw.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case", tag = "answer")]
pub enum PeerAnswer {
    /// SYN-ACK from the VIP via the peer: it accepts the VIP's traffic.
    Accepted {
        /// Round-trip time in milliseconds.
        rtt_ms: f64,
    },
    /// RST: the peer takes packets for the VIP but nothing listens on the port.
    Refused,
    /// Nothing came back in time.
    NoAnswer,
}

/// The node's sockets on the VIP ports that still hold the drain.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct SocketCount {
    /// Sockets still being served (see [`crate::sockdiag`] for which states count).
    pub total: usize,
    /// Of those, the ones whose client was silent longer than the idle threshold.
    pub idle: usize,
    /// Per TCP state.
    pub by_state: BTreeMap<String, usize>,
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
}

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
}

/// Why the drain stopped waiting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DrainReason {
    /// No socket left.
    Empty,
    /// Only sockets idle longer than the threshold left.
    OnlyIdle,
    /// The deadline passed.
    Deadline,
}

/// Events reported while the cycle runs (printed live, or as JSON lines with `--json`).
#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    /// Preflight passed.
    Ready {
        /// The peer's answer to the preflight probe.
        peer: PeerAnswer,
        /// Sockets before the divert.
        sockets: usize,
    },
    /// The divert is installed and verified.
    Diverted {
        /// Milliseconds the install transaction (sets + rules + read-back) took.
        install_ms: f64,
    },
    /// Sockets left.
    Progress {
        /// Milliseconds since the divert.
        elapsed_ms: f64,
        /// Sockets still served.
        remaining: usize,
        /// Of which idle.
        idle: usize,
        /// Per state.
        by_state: BTreeMap<String, usize>,
        /// New flows diverted to the peer so far (their SYNs, as of the last look at the
        /// counters, once a second).
        #[serde(default)]
        diverted_flows: u64,
    },
    /// The diverted-flow record of a port got its next, larger member (see
    /// [`crate::plan::sets`]): the record keeps ahead of the traffic.
    RecordGrown {
        /// The member set created.
        set: String,
        /// Flows the port's record held when it grew.
        recorded: u64,
        /// Flows the port's record can hold now.
        room: u64,
    },
    /// Keeping the record ahead of the traffic failed (the divert itself is unchanged; if it
    /// keeps failing, new flows may go unrecorded, which is counted and reported).
    RecordTendFailed {
        /// Why.
        error: String,
    },
    /// SYNs of new flows could not be recorded (capacity reached, or the record did not grow in
    /// time): before the seal they are served locally, after it they are dropped and the client
    /// retransmits to the new owner.
    Unrecorded {
        /// Unrecorded SYNs since the divert, all ports.
        syns: u64,
        /// Flows recorded so far.
        recorded: u64,
        /// The configured capacity per port.
        capacity: u32,
    },
    /// The drain is over: from now on an unrecorded SYN is dropped instead of starting a local
    /// flow; the final count follows.
    Sealed {
        /// Milliseconds since the divert.
        elapsed_ms: f64,
    },
    /// A peer probe failed.
    PeerProbeFailed {
        /// Consecutive failures so far.
        consecutive: u32,
        /// What was seen.
        answer: String,
    },
    /// The drain wait ended.
    Drained {
        /// Why.
        reason: DrainReason,
        /// Milliseconds since the divert.
        elapsed_ms: f64,
        /// Sockets left (idle ones, or any at the deadline).
        remaining: usize,
    },
    /// keepalived was made to give up the VIPs.
    FailoverTriggered {
        /// How: `trk0 down`, or `track file /path = -254`.
        trigger: String,
    },
    /// The peer answers ARP for every VIP and this node holds none.
    PeerOwnsVip {
        /// Milliseconds after the trigger.
        after_ms: f64,
    },
    /// The divert's totals, read just before it is removed.
    DivertTotals {
        /// New flows diverted to the peer (their SYNs; a retransmitted SYN counts again).
        diverted_flows: u64,
        /// Distinct (client address, client port, VIP) records: a client that reuses a port
        /// for a new flow reuses its record.
        recorded_flows: u64,
        /// Packets diverted to the peer.
        diverted_packets: u64,
        /// SYNs that could not be recorded (0 unless the capacity was reached).
        unrecorded_syns: u64,
        /// Of those, the ones dropped after the seal.
        sealed_drops: u64,
        /// Kernel memory the record held, bytes.
        record_bytes: u64,
    },
    /// New flows are served locally again.
    Withdrawn {
        /// Why.
        reason: String,
    },
    /// Every transient change is undone.
    CleanedUp,
}

/// How a completed drain went.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DrainReport {
    /// Why the wait ended.
    pub reason: DrainReason,
    /// Milliseconds from divert to the end of the wait.
    pub drain_ms: f64,
    /// Milliseconds from the trigger until the peer owned the VIP.
    pub failover_ms: f64,
    /// Milliseconds the whole cycle took.
    pub total_ms: f64,
    /// Milliseconds the divert install took.
    pub install_ms: f64,
    /// Sockets left when the node went out of service (idle ones or deadline leftovers).
    pub abandoned: usize,
    /// New flows diverted to the peer (their SYNs; a retransmitted SYN counts again).
    pub diverted_flows: u64,
    /// Distinct (client address, client port, VIP) records the divert held.
    pub recorded_flows: u64,
    /// SYNs that could not be recorded (0 unless the capacity was reached).
    pub unrecorded_syns: u64,
    /// Of those, the ones dropped after the seal (each a ~1 s retransmit for its client).
    pub sealed_drops: u64,
}

/// Why a drain did not complete. Each maps to a documented exit code ([`DrainError::exit_code`]).
#[derive(Debug, thiserror::Error)]
pub enum DrainError {
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
    #[error("already drained: tracked interface {0} is down; run `drain-agent undrain` first")]
    AlreadyDrained(String),
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
    #[error("drain deadline of {0:?} reached with {1} connections left; rolled back (abort_on_deadline)")]
    DeadlineAbort(Duration, usize),
    /// The peer did not take the VIP in time.
    #[error("failover not confirmed within {0:?} ({1}); divert removed, tracked interface left down: check keepalived on both nodes")]
    FailoverUnconfirmed(Duration, String),
    /// Some undo steps failed; they stay in the journal.
    #[error("cleanup incomplete ({0}); the journal keeps what is left, run `drain-agent undrain`")]
    CleanupIncomplete(String),
}

/// Exit codes — an API: keepalived and Ansible read them. Documented in the README.
pub mod exit {
    /// Success.
    pub const OK: u8 = 0;
    /// Unexpected internal error.
    pub const INTERNAL: u8 = 1;
    /// Bad command-line usage.
    pub const USAGE: u8 = 2;
    /// The configuration file is invalid.
    pub const CONFIG: u8 = 3;
    /// The environment is not usable (missing binary, interface, privilege, kernel feature).
    pub const ENVIRONMENT: u8 = 4;
    /// The peer cannot take the traffic (nothing was changed).
    pub const PEER_NOT_READY: u8 = 5;
    /// Another drain-agent operation is running.
    pub const BUSY: u8 = 6;
    /// The node's state does not allow it (not MASTER, already drained, leftovers).
    pub const STATE: u8 = 7;
    /// The peer was lost during the drain (rolled back).
    pub const PEER_LOST: u8 = 8;
    /// Interrupted by a signal (rolled back).
    pub const INTERRUPTED: u8 = 9;
    /// Deadline reached with abort_on_deadline (rolled back).
    pub const DEADLINE: u8 = 10;
    /// Failover not confirmed in time.
    pub const FAILOVER: u8 = 11;
    /// Cleanup incomplete: changes remain (listed in the journal).
    pub const CLEANUP: u8 = 12;
}

impl DrainError {
    /// The documented exit code of this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            DrainError::Host(e) => match e.kind {
                HostErrorKind::Other => exit::INTERNAL,
                _ => exit::ENVIRONMENT,
            },
            DrainError::Journal(JournalError::Busy { .. }) => exit::BUSY,
            DrainError::Journal(_) => exit::ENVIRONMENT,
            DrainError::PeerNotReady(_) => exit::PEER_NOT_READY,
            DrainError::NotMaster(_) | DrainError::AlreadyDrained(_) | DrainError::Leftovers(_) => {
                exit::STATE
            }
            DrainError::PeerLost(_) => exit::PEER_LOST,
            DrainError::Interrupted => exit::INTERRUPTED,
            DrainError::DeadlineAbort(..) => exit::DEADLINE,
            DrainError::FailoverUnconfirmed(..) => exit::FAILOVER,
            DrainError::CleanupIncomplete(_) => exit::CLEANUP,
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The track-file value keepalived reads as FAULT (value x weight clamped to -254).
pub const TRACK_FAULT: i32 = -254;

/// Runs the whole drain cycle. Returns only when the node is out of service and every transient
/// change is undone, or with an error after rolling back.
pub fn drain(
    h: &mut dyn Host,
    j: &mut Journal,
    plan: &DivertPlan,
    p: &Policy,
    ev: &mut dyn FnMut(Event),
) -> Result<DrainReport, DrainError> {
    let start = h.now();
    let receipt = preflight(h, j, plan, p, ev)?;
    let t = h.now();
    if let Err(e) = install(h, j, plan, &receipt) {
        // firewall::install undoes its own partial work; cleanup then only forgets the entry
        // (or reports what could not be undone).
        return Err(match cleanup(h, j, plan) {
            Ok(()) => e,
            Err(c) => c,
        });
    }
    let install_ms = ms(h.now() - t);
    ev(Event::Diverted { install_ms });
    let mut tender = Tender::new(h.now());
    let (reason, remaining, drain_ms) = match watch(h, plan, p, ev, &mut tender) {
        Ok(w) => w,
        Err(e) => {
            tender.totals(h, plan, ev);
            return Err(rollback(h, j, plan, p, ev, e));
        }
    };
    let failover = failover(h, j, plan, p, ev, &mut tender);
    let totals = tender.totals(h, plan, ev);
    let cleaned = cleanup(h, j, plan);
    if cleaned.is_ok() {
        ev(Event::CleanedUp);
    }
    let failover_ms = failover?;
    cleaned?;
    Ok(DrainReport {
        reason,
        drain_ms,
        failover_ms,
        total_ms: ms(h.now() - start),
        install_ms,
        abandoned: remaining,
        diverted_flows: totals.1.diverted_syns,
        recorded_flows: totals.0.entries(),
        unrecorded_syns: totals.1.unrecorded_syns(),
        sealed_drops: totals.1.sealed_drops,
    })
}

/// The drain's side of the [`RecordKeeper`]: turns what it finds into events.
struct Tender {
    keeper: RecordKeeper,
}

impl Tender {
    fn new(now: Duration) -> Tender {
        Tender {
            keeper: RecordKeeper::new(now),
        }
    }

    /// Does what is due and reports it.
    fn tick(&mut self, h: &mut dyn Host, plan: &DivertPlan, ev: &mut dyn FnMut(Event)) {
        let now = h.now();
        let news = self.keeper.tick(h.firewall(), plan, now);
        Self::report(news, plan, ev);
    }

    fn report(news: record::News, plan: &DivertPlan, ev: &mut dyn FnMut(Event)) {
        for g in news.grown {
            ev(Event::RecordGrown {
                set: g.set,
                recorded: g.recorded,
                room: g.room,
            });
        }
        if let Some(syns) = news.unrecorded {
            ev(Event::Unrecorded {
                syns,
                recorded: news.recorded,
                capacity: plan.capacity(),
            });
        }
        if let Some(error) = news.error {
            ev(Event::RecordTendFailed { error });
        }
    }

    /// New flows diverted as of the last look at the counters.
    fn diverted(&self) -> u64 {
        self.keeper.counters().diverted_syns
    }

    /// The final look before the divert goes, reported.
    fn totals(
        &mut self,
        h: &mut dyn Host,
        plan: &DivertPlan,
        ev: &mut dyn FnMut(Event),
    ) -> (RecordStats, DivertCounters) {
        let (news, stats, counters) = self.keeper.final_look(h.firewall(), plan);
        Self::report(news, plan, ev);
        ev(Event::DivertTotals {
            diverted_flows: counters.diverted_syns,
            recorded_flows: stats.entries(),
            diverted_packets: counters.diverted_packets,
            unrecorded_syns: counters.unrecorded_syns(),
            sealed_drops: counters.sealed_drops,
            record_bytes: stats.bytes(),
        });
        (stats, counters)
    }
}

/// Checks everything that can be checked before changing anything; returns what the install
/// needs to know of the firewall as it is.
fn preflight(
    h: &mut dyn Host,
    j: &Journal,
    plan: &DivertPlan,
    p: &Policy,
    ev: &mut dyn FnMut(Event),
) -> Result<InstallReceipt, DrainError> {
    if let Some(e) = j
        .entries()
        .iter()
        .find(|e| !e.change.is_maintenance_state())
    {
        return Err(DrainError::Leftovers(format!(
            "journal records {:?}",
            e.change
        )));
    }
    let faulted = match &p.track_file {
        Some(path) => h.read_track_file(path)?.is_some_and(|v| v <= TRACK_FAULT),
        None => false,
    };
    if !h.link_up(&p.tracked_interface)?
        || faulted
        || j.entries().iter().any(|e| e.change.is_maintenance_state())
    {
        return Err(DrainError::AlreadyDrained(p.tracked_interface.clone()));
    }
    for vip in &p.vips {
        if !h.vip_local(*vip)? {
            return Err(DrainError::NotMaster(*vip));
        }
    }
    let receipt = match firewall::prepare(h.firewall(), plan) {
        Ok(r) => r,
        Err(FirewallError::SetsExist { names }) => {
            return Err(DrainError::Leftovers(format!(
                "ipset {} already exists",
                names.join(", ")
            )))
        }
        Err(FirewallError::ChainsExist { chains }) => {
            return Err(DrainError::Leftovers(format!(
                "iptables chain {} already exists",
                chains.join(", ")
            )))
        }
        Err(e) => return Err(HostError::from(e).into()),
    };
    let answer = h.probe_peer()?;
    if !matches!(answer, PeerAnswer::Accepted { .. }) {
        let why = match answer {
            PeerAnswer::Refused => "refuses connections to the VIP (RST): is HAProxy running there, and did you run `drain-agent accept` on it?",
            _ => "does not answer for the VIP: is it up, and did you run `drain-agent accept` on it?",
        };
        return Err(DrainError::PeerNotReady(format!("{} {why}", p.peer)));
    }
    let sockets = h.count()?.total;
    ev(Event::Ready {
        peer: answer,
        sockets,
    });
    Ok(receipt)
}

/// Installs the divert (sets, then the rules in one transaction, then a read-back), recording it
/// in the journal first. [`firewall::apply_install`] undoes its own partial work on failure.
fn install(
    h: &mut dyn Host,
    j: &mut Journal,
    plan: &DivertPlan,
    receipt: &InstallReceipt,
) -> Result<(), DrainError> {
    j.record(Change::Divert {
        prefix: plan.prefix().to_string(),
        drop_mangle_table: !receipt.mangle_table_was_present,
    })?;
    firewall::apply_install(h.firewall(), plan, receipt).map_err(HostError::from)?;
    Ok(())
}

/// Waits for the drain; returns (reason, sockets left, ms since divert). When the drain is over
/// it seals the divert and counts once more: a flow that started locally just before the seal
/// (an unrecorded SYN) is waited for too, and none can start after it.
fn watch(
    h: &mut dyn Host,
    plan: &DivertPlan,
    p: &Policy,
    ev: &mut dyn FnMut(Event),
    tender: &mut Tender,
) -> Result<(DrainReason, usize, f64), DrainError> {
    let start = h.now();
    let mut sealed = false;
    let mut next_probe = start + p.probe_interval;
    let mut fails = 0u32;
    let mut last: Option<(usize, usize)> = None;
    let mut last_report = start;
    loop {
        if h.interrupts() > 0 {
            return Err(DrainError::Interrupted);
        }
        let now = h.now();
        if now >= next_probe {
            let answer = h.probe_peer().unwrap_or(PeerAnswer::NoAnswer);
            if matches!(answer, PeerAnswer::Accepted { .. }) {
                fails = 0;
            } else {
                fails += 1;
                ev(Event::PeerProbeFailed {
                    consecutive: fails,
                    answer: format!("{answer:?}"),
                });
                if fails >= p.probe_failures {
                    return Err(DrainError::PeerLost(format!(
                        "{fails} probes failed, last: {answer:?}"
                    )));
                }
            }
            next_probe = h.now() + p.probe_interval;
        }
        tender.tick(h, plan, ev);
        let before_count = h.now();
        let c = h.count()?;
        let now = h.now();
        let count_took = now - before_count;
        let elapsed = now - start;
        if last != Some((c.total, c.idle)) || now - last_report >= Duration::from_secs(1) {
            ev(Event::Progress {
                elapsed_ms: ms(elapsed),
                remaining: c.total,
                idle: c.idle,
                by_state: c.by_state.clone(),
                diverted_flows: tender.diverted(),
            });
            last = Some((c.total, c.idle));
            last_report = now;
        }
        let reason = if c.total == 0 {
            Some(DrainReason::Empty)
        } else if c.total == c.idle {
            Some(DrainReason::OnlyIdle)
        } else if elapsed >= p.deadline {
            if p.abort_on_deadline {
                return Err(DrainError::DeadlineAbort(p.deadline, c.total));
            }
            Some(DrainReason::Deadline)
        } else {
            None
        };
        if reason.is_some() && !sealed {
            firewall::seal(h.firewall(), plan).map_err(HostError::from)?;
            sealed = true;
            ev(Event::Sealed {
                elapsed_ms: ms(h.now() - start),
            });
            continue;
        }
        if let Some(reason) = reason {
            ev(Event::Drained {
                reason,
                elapsed_ms: ms(elapsed),
                remaining: c.total,
            });
            return Ok((reason, c.total, ms(elapsed)));
        }
        let until_probe = next_probe.saturating_sub(now);
        // A count over ~100k sockets costs ~100 ms of kernel time (see the sockdiag bench):
        // never spend more than half the time counting.
        let pause = p
            .poll_interval
            .max(count_took)
            .min(until_probe)
            .max(Duration::from_millis(1));
        h.wait_for_change(pause);
    }
}

/// Triggers the failover and waits until the peer owns every VIP; keeps the divert meanwhile
/// (clients keep sending to this node until the peer's gratuitous ARP lands: FIELD-NOTES 8).
fn failover(
    h: &mut dyn Host,
    j: &mut Journal,
    plan: &DivertPlan,
    p: &Policy,
    ev: &mut dyn FnMut(Event),
    tender: &mut Tender,
) -> Result<f64, DrainError> {
    let trigger = match (&p.track_file, p.trigger_track_file) {
        (Some(path), true) => {
            j.record(Change::TrackFault { path: path.clone() })?;
            h.write_track_file(path, TRACK_FAULT)?;
            format!("track file {} = {TRACK_FAULT}", path.display())
        }
        _ => {
            j.record(Change::LinkDown {
                ifname: p.tracked_interface.clone(),
            })?;
            h.set_link(&p.tracked_interface, false)?;
            format!("{} down", p.tracked_interface)
        }
    };
    ev(Event::FailoverTriggered { trigger });
    let t = h.now();
    loop {
        let mut pending = None;
        for vip in &p.vips {
            if h.vip_local(*vip)? {
                pending = Some(format!("{vip} still configured here"));
                break;
            }
            if !h.peer_owns(*vip)? {
                pending = Some(format!("the peer does not answer ARP for {vip}"));
                break;
            }
        }
        let waited = h.now() - t;
        match pending {
            None => {
                ev(Event::PeerOwnsVip {
                    after_ms: ms(waited),
                });
                // Clients whose ARP cache still points here keep sending until it expires.
                let until = h.now() + p.post_wait;
                while h.now() < until {
                    tender.tick(h, plan, ev);
                    h.sleep(FAILOVER_POLL.min(until.saturating_sub(h.now())));
                }
                return Ok(ms(waited));
            }
            Some(why) if waited >= p.failover_timeout => {
                return Err(DrainError::FailoverUnconfirmed(p.failover_timeout, why))
            }
            Some(_) => {
                tender.tick(h, plan, ev);
                h.sleep(FAILOVER_POLL);
            }
        }
    }
}

/// How often the failover wait looks at the VIP's owner.
const FAILOVER_POLL: Duration = Duration::from_millis(20);

/// Abort path: new flows local again at once, already-diverted flows keep going to the peer for
/// the grace period (a further interrupt cuts it short), then everything is removed.
fn rollback(
    h: &mut dyn Host,
    j: &mut Journal,
    plan: &DivertPlan,
    p: &Policy,
    ev: &mut dyn FnMut(Event),
    why: DrainError,
) -> DrainError {
    withdraw_and_wait(h, plan, p.rollback_grace, ev, why.to_string());
    match cleanup(h, j, plan) {
        Ok(()) => {
            ev(Event::CleanedUp);
            why
        }
        Err(e) => e,
    }
}

/// Withdraws the divert for new flows and keeps diverting the flows already at the peer for
/// `grace`, so they can finish there; returns early on an interrupt that arrived after the call.
/// If the withdraw fails (e.g. a half-removed divert), returns at once: removal follows anyway.
fn withdraw_and_wait(
    h: &mut dyn Host,
    plan: &DivertPlan,
    grace: Duration,
    ev: &mut dyn FnMut(Event),
    reason: String,
) {
    let withdrew = firewall::withdraw(h.firewall(), plan);
    ev(Event::Withdrawn { reason });
    if withdrew.is_err() {
        return;
    }
    let until = h.now() + grace;
    let seen = h.interrupts();
    while h.now() < until && h.interrupts() <= seen {
        h.sleep(
            Duration::from_millis(50)
                .min(until.saturating_sub(h.now()))
                .max(Duration::from_millis(1)),
        );
    }
}

/// Takes the node back into service, after a drain or after a crashed one. A divert still
/// installed (the agent died mid-drain) is withdrawn gracefully first — new flows local at once,
/// flows already at the peer keep going there for `grace` — then every recorded change is undone,
/// plus any chain or set named with our prefix (the journal may be gone with the disk), and the
/// tracked interface is brought up unless `keep_link_down`.
pub fn undrain(
    h: &mut dyn Host,
    j: &mut Journal,
    plan: &DivertPlan,
    p: &Policy,
    keep_link_down: bool,
    ev: &mut dyn FnMut(Event),
) -> Result<(), DrainError> {
    h.firewall().require_tools().map_err(HostError::from)?;
    let save = h.firewall().save_mangle().map_err(HostError::from)?;
    if !plan.existing_chains(&save).is_empty() {
        withdraw_and_wait(
            h,
            plan,
            p.rollback_grace,
            ev,
            "undrain: a divert was still installed".into(),
        );
    }
    if !j
        .entries()
        .iter()
        .any(|e| matches!(e.change, Change::Divert { .. }))
    {
        j.record(Change::Divert {
            prefix: plan.prefix().to_string(),
            drop_mangle_table: false,
        })?;
    }
    if keep_link_down {
        return cleanup(h, j, plan);
    }
    // The track file first, so a preempting node is already demoted (`return_weight`) when its
    // FAULT clears below: it comes back as BACKUP instead of taking the VIP from the peer.
    if let Some(path) = &p.track_file {
        if h.read_track_file(path)? != Some(p.return_weight) {
            h.write_track_file(path, p.return_weight)?;
        }
        for e in j.entries().to_vec() {
            if matches!(e.change, Change::TrackFault { .. }) {
                j.forget(&e.change)?;
            }
        }
    }
    undo_all(h, j, plan)?;
    if !h.link_up(&p.tracked_interface)? {
        h.set_link(&p.tracked_interface, true)?;
    }
    Ok(())
}

/// Undoes every transient change in the journal (newest first), continuing past errors and
/// reporting all of them. Maintenance state (the tracked interface down) is kept.
pub fn cleanup(h: &mut dyn Host, j: &mut Journal, plan: &DivertPlan) -> Result<(), DrainError> {
    undo_where(h, j, plan, |c| !c.is_maintenance_state())
}

/// Undoes every change in the journal, maintenance state included (`undrain`, `release`).
pub fn undo_all(h: &mut dyn Host, j: &mut Journal, plan: &DivertPlan) -> Result<(), DrainError> {
    undo_where(h, j, plan, |_| true)
}

fn undo_where(
    h: &mut dyn Host,
    j: &mut Journal,
    plan: &DivertPlan,
    pick: impl Fn(&Change) -> bool,
) -> Result<(), DrainError> {
    // Newest first: the reverse of the order things were built in.
    let changes: Vec<Change> = j
        .entries()
        .iter()
        .rev()
        .map(|e| e.change.clone())
        .filter(|c| pick(c))
        .collect();
    let mut errors = Vec::new();
    for c in changes {
        match undo(h, plan, &c) {
            Ok(()) => j.forget(&c)?,
            Err(e) => errors.push(e.to_string()),
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(DrainError::CleanupIncomplete(errors.join("; ")))
    }
}

/// Undoes one change; succeeds if the change is already gone.
pub fn undo(h: &mut dyn Host, plan: &DivertPlan, c: &Change) -> Result<(), HostError> {
    match c {
        Change::Divert {
            prefix,
            drop_mangle_table,
        } => {
            if prefix != plan.prefix() {
                return Err(HostError::other(
                    "remove divert",
                    format!("the journal records chain prefix {prefix} but the config now says {}: set firewall.chain_prefix back to {prefix} and run undrain", plan.prefix()),
                ));
            }
            firewall::remove(h.firewall(), plan, *drop_mangle_table)
                .map_err(|e| HostError::other("remove divert", e))
        }
        Change::LinkDown { ifname } => h.set_link(ifname, true),
        Change::TrackFault { path } => h.write_track_file(path, 0),
        Change::LocalRoute { addr } => h.local_route(*addr, false),
        Change::Sysctl { key, previous } => h.sysctl_write(key, previous),
    }
}

#[cfg(test)]
pub(crate) mod fake;

#[cfg(test)]
mod tests;
