//! What the operations report: the live events of a drain (printed as they happen, or as JSON
//! lines) and the typed results.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

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

impl std::fmt::Display for PeerAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PeerAnswer::Accepted { rtt_ms } => write!(f, "SYN-ACK in {rtt_ms:.2} ms"),
            PeerAnswer::Refused => f.write_str("refused (RST)"),
            PeerAnswer::NoAnswer => f.write_str("no answer"),
        }
    }
}

/// The node's sockets on the VIP ports that still hold the drain.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct SocketCount {
    /// Sockets still being served (see [`crate::sys::sockdiag`] for which states count).
    pub total: usize,
    /// Of those, the ones whose client was silent longer than the idle threshold.
    pub idle: usize,
    /// Per TCP state.
    pub by_state: BTreeMap<String, usize>,
}

impl std::fmt::Display for DrainReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DrainReason::Empty => "every connection closed",
            DrainReason::OnlyIdle => "only idle connections left",
            DrainReason::Deadline => "deadline reached",
        })
    }
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
        /// `drain` or `handoff`.
        #[serde(default)]
        mode: crate::config::DrainMode,
        /// How long the wait for this node's connections may last (drain or hand-off
        /// deadline), in milliseconds.
        #[serde(default)]
        deadline_ms: f64,
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
    /// Hand-off: the peer's agent installed its return path (this node's packets come back
    /// here after the failover).
    HandoffBegun {
        /// The peer's address.
        peer: String,
    },
    /// Hand-off: the peer's agent removed its return path.
    HandoffEnded {
        /// What it reported.
        detail: String,
    },
    /// Hand-off: the peer's agent could not be told the hand-off is over; it removes its return
    /// path itself once this node no longer accepts the VIP.
    HandoffEndFailed {
        /// Why.
        error: String,
    },
    /// `maintenance off --failback`: the peer drained itself and came back as BACKUP; the VIPs
    /// are here again.
    FailedBack {
        /// What the peer reported.
        detail: String,
    },
}

/// How a completed drain went.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DrainReport {
    /// `drain` (waited, then failed over) or `handoff` (failed over at once, then waited).
    pub mode: crate::config::DrainMode,
    /// Why the wait ended.
    pub reason: DrainReason,
    /// Milliseconds from divert to the end of the wait (hand-off: from the failover).
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

/// An event as the JSON line `--json` prints (and the daemon streams): its `event` kind, its
/// fields, `ts_ms`, the wall-clock time in milliseconds since the epoch, and `mono_ns`, the
/// CLOCK_MONOTONIC time in nanoseconds.
#[derive(Debug, Serialize)]
pub struct Stamped<'a> {
    /// The event.
    #[serde(flatten)]
    pub event: &'a Event,
    /// When it was stamped, in milliseconds since the epoch.
    pub ts_ms: u64,
    /// When it was stamped on CLOCK_MONOTONIC: the clock every process of the host shares
    /// (network namespaces too), which wall-clock steps do not move, so a caller can put the
    /// event on the same time line as its own measurements.
    pub mono_ns: u64,
}

/// `e`, stamped now.
pub fn stamped(e: &Event) -> Stamped<'_> {
    let ts_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let mono_ns = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0);
    Stamped {
        event: e,
        ts_ms,
        mono_ns,
    }
}

/// Milliseconds of a duration, as the reports and events give them.
pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
