//! The drain cycle as a state machine over a [`Host`]: preflight → divert → watch → seal → fail
//! over → clean up, with rollback on every abort path. Everything the cycle does to the host goes
//! through the `Host` trait, so the whole machine is unit-tested against a scripted fake world
//! (connections that close, a peer that dies, keepalived that moves the VIP) without root.
//!
//! Every host change is recorded in the [`Journal`] before it is made; undo is idempotent and is
//! the same code whether it runs at the end of a drain, on rollback, or after a crash (`undrain`).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::divert::{self, InstallReceipt};
use super::handoff::{self, Returning};
use super::record::{self, RecordKeeper};
use super::undo::{cleanup, withdraw_and_wait};
use super::{
    ms, DrainReason, DrainReport, Event, Host, HostError, OpError, PeerAnswer, Policy, SocketCount,
    MIN_SLEEP, TRACK_FAULT,
};
use crate::config::{Config, DrainMode, PositiveDuration};
use crate::journal::{Change, Journal, StateDir};
use crate::plan::sets::{DivertCounters, RecordStats};
use crate::plan::DivertPlan;

/// What `drain-agent drain` (or the daemon's drain request) may override of the configuration.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DrainOptions {
    /// Roll back at the deadline instead of failing over.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub abort_on_deadline: bool,
    /// Override of `drain.deadline`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deadline: Option<PositiveDuration>,
    /// Override of `drain.idle_threshold`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_threshold: Option<PositiveDuration>,
    /// Override of `drain.mode` (`--handoff` / `--no-handoff`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<DrainMode>,
}

impl DrainOptions {
    /// `cfg` with these overrides.
    pub fn apply(&self, cfg: &Config) -> Config {
        let mut cfg = cfg.clone();
        if let Some(d) = self.deadline {
            cfg.drain.deadline = d;
        }
        if let Some(d) = self.idle_threshold {
            cfg.drain.idle_threshold = d;
        }
        if self.abort_on_deadline {
            cfg.drain.abort_on_deadline = true;
        }
        if let Some(m) = self.mode {
            cfg.drain.mode = m;
        }
        cfg
    }
}

/// The result of a drain, as `--json` prints it and `last-drain.json` records it.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "result", rename_all = "kebab-case")]
pub enum DrainOutcome {
    /// The node is out of service and clean.
    Drained {
        /// How it went.
        report: DrainReport,
    },
    /// It did not complete (rolled back, or as the error says).
    Failed {
        /// The documented exit code.
        exit_code: u8,
        /// The one-line error.
        error: String,
    },
}

impl DrainReport {
    /// The one line an operator reads at the end of a drain.
    pub fn summary(&self) -> String {
        format!(
            "drained: {} after {:.1} s ({} left), {} new flow(s) diverted ({} SYN(s) unrecorded), peer owned the VIP {:.0} ms after the trigger; divert removed; the node stays out of service until `drain-agent undrain`",
            self.reason,
            self.drain_ms / 1000.0,
            self.abandoned,
            self.diverted_flows,
            self.unrecorded_syns,
            self.failover_ms,
        )
    }
}

/// `drain-agent drain`: takes the lock, runs the cycle with `opts` applied, reporting each event,
/// and records the outcome in the state directory (`last-drain.json`), success or not.
pub fn run(
    cfg: &Config,
    opts: &DrainOptions,
    state: &StateDir,
    h: &mut dyn Host,
    ev: &mut dyn FnMut(Event),
) -> Result<DrainReport, OpError> {
    let cfg = opts.apply(cfg);
    if cfg.drain.mode == DrainMode::Handoff && cfg.handoff.is_none() {
        return Err(OpError::Config(
            "a hand-off needs the handoff: section in the configuration (key_file, and `drain-agent run` on the peer)".into(),
        ));
    }
    let _lock = state.lock()?;
    let mut journal = state.drain_journal()?;
    if let Some(r) = Returning::recorded(&state.return_journal()?) {
        return Err(OpError::ServingHandoff(r.peer));
    }
    let span = tracing::info_span!("drain", peer = %cfg.peer.get(), tracked = %cfg.tracked_interface.as_str());
    let _enter = span.enter();
    let (plan, policy) = (DivertPlan::new(&cfg), Policy::from_config(&cfg));
    let result = match policy.handoff {
        None => drain(h, &mut journal, &plan, &policy, ev),
        Some(deadline) => hand_off(&cfg, h, &mut journal, &plan, &policy, deadline, ev),
    };
    let outcome = match &result {
        Ok(report) => DrainOutcome::Drained {
            report: report.clone(),
        },
        Err(e) => DrainOutcome::Failed {
            exit_code: e.exit_code(),
            error: e.to_string(),
        },
    };
    state.record_last_drain(&outcome);
    result
}

/// Runs the whole drain cycle. Returns only when the node is out of service and every transient
/// change is undone, or with an error after rolling back.
pub fn drain(
    h: &mut dyn Host,
    j: &mut Journal,
    plan: &DivertPlan,
    p: &Policy,
    ev: &mut dyn FnMut(Event),
) -> Result<DrainReport, OpError> {
    let start = h.now();
    let receipt = preflight(h, j, plan, p, ev)?;
    let (install_ms, mut tender) = divert_now(h, j, plan, &receipt, ev)?;
    let (reason, remaining, drain_ms) = match watch(h, plan, p, ev, &mut tender) {
        Ok(w) => w,
        Err(moved @ OpError::VipMoved(..)) => {
            // Clients already send to the peer: a rollback would serve nothing here. Finish the
            // drain instead, so that a keepalived restarted here does not take the VIP back.
            let failover = pull_trigger(h, j, p)
                .and_then(|trigger| failover(h, plan, p, ev, &mut tender, trigger));
            tender.totals(h, plan, ev);
            let cleaned = cleanup(h, j, plan);
            if cleaned.is_ok() {
                ev(Event::CleanedUp);
            }
            failover?;
            cleaned?;
            return Err(moved);
        }
        Err(e) => {
            tender.totals(h, plan, ev);
            return Err(rollback(h, j, plan, p, ev, e));
        }
    };
    // `pull_trigger` journals before it pulls: a trigger it could not record (a full state
    // directory) was not pulled and nothing moved, so this is an abort like any other, with the
    // grace for the flows already at the peer (removed at once, the divert would send them back
    // here, where no socket knows them: reset).
    let trigger = match pull_trigger(h, j, p) {
        Ok(t) => t,
        Err(e) => {
            tender.totals(h, plan, ev);
            return Err(rollback(h, j, plan, p, ev, e));
        }
    };
    let failover = failover(h, plan, p, ev, &mut tender, trigger);
    let totals = tender.totals(h, plan, ev);
    let cleaned = cleanup(h, j, plan);
    if cleaned.is_ok() {
        ev(Event::CleanedUp);
    }
    crate::faults::point("drain.cleaned-up");
    let failover_ms = failover?;
    cleaned?;
    Ok(DrainReport {
        mode: DrainMode::Drain,
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
) -> Result<InstallReceipt, OpError> {
    if let Some(e) = j
        .entries()
        .iter()
        .find(|e| !e.change.is_maintenance_state())
    {
        return Err(OpError::Leftovers(format!("journal records {}", e.change)));
    }
    let faulted = match &p.track_file {
        Some(path) => h.read_track_file(path)?.is_some_and(|v| v <= TRACK_FAULT),
        None => false,
    };
    let link_up = h.link_up(&p.tracked_interface)?;
    if let Some(e) = j.entries().iter().find(|e| e.change.is_maintenance_state()) {
        // Say what is true: after a reboot the journal still records the failover while the
        // tracked interface is up again.
        let now = if link_up && !faulted {
            "but it is not in effect now (rebooted?)"
        } else {
            "and it is in effect"
        };
        return Err(OpError::AlreadyDrained(format!(
            "the journal records {} (at {}) {now}",
            e.change,
            super::status::fmt_unix(e.at)
        )));
    }
    if !link_up {
        return Err(OpError::AlreadyDrained(format!(
            "tracked interface {} is down",
            p.tracked_interface
        )));
    }
    if faulted {
        return Err(OpError::AlreadyDrained(
            "the track file says FAULT".to_string(),
        ));
    }
    for vip in &p.vips {
        if !h.vip_local(*vip)? {
            return Err(OpError::NotMaster(*vip));
        }
    }
    let receipt = match divert::prepare(h.firewall(), plan) {
        Ok(r) => r,
        Err(divert::DivertError::SetsExist { names }) => {
            return Err(OpError::Leftovers(format!(
                "ipset {} already exists",
                names.join(", ")
            )))
        }
        Err(divert::DivertError::ChainsExist { chains }) => {
            return Err(OpError::Leftovers(format!(
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
        return Err(OpError::PeerNotReady(format!("{} {why}", p.peer)));
    }
    let sockets = h.count()?.total;
    ev(Event::Ready {
        peer: answer,
        sockets,
        mode: if p.handoff.is_some() {
            crate::config::DrainMode::Handoff
        } else {
            crate::config::DrainMode::Drain
        },
        deadline_ms: ms(p.handoff.unwrap_or(p.deadline)),
    });
    Ok(receipt)
}

/// Installs the divert (sets, then the rules in one transaction, then a read-back), recording it
/// in the journal first. [`firewall::apply_install`] undoes its own partial work on failure.
pub(crate) fn install(
    h: &mut dyn Host,
    j: &mut Journal,
    plan: &DivertPlan,
    receipt: &InstallReceipt,
) -> Result<(), OpError> {
    j.record(Change::Divert {
        prefix: plan.prefix().to_string(),
        drop_mangle_table: !receipt.mangle_table_was_present,
    })?;
    crate::faults::point("drain.journalled");
    divert::apply_install(h.firewall(), plan, receipt).map_err(HostError::from)?;
    crate::faults::point("drain.installed");
    Ok(())
}

/// Counts the node's sockets for a wait loop and reports progress: whenever the count changes,
/// and at least every [`PROGRESS_EVERY`].
struct Watch {
    start: Duration,
    last: Option<(usize, usize)>,
    last_report: Duration,
    count_took: Duration,
}

impl Watch {
    fn new(start: Duration) -> Watch {
        Watch {
            start,
            last: None,
            last_report: start,
            count_took: Duration::ZERO,
        }
    }

    /// Counts once; returns the count and the time since the wait started.
    fn look(
        &mut self,
        h: &mut dyn Host,
        diverted_flows: u64,
        ev: &mut dyn FnMut(Event),
    ) -> Result<(SocketCount, Duration), OpError> {
        let before = h.now();
        let c = h.count()?;
        let now = h.now();
        self.count_took = now - before;
        let elapsed = now - self.start;
        if self.last != Some((c.total, c.idle)) || now - self.last_report >= PROGRESS_EVERY {
            ev(Event::Progress {
                elapsed_ms: ms(elapsed),
                remaining: c.total,
                idle: c.idle,
                by_state: c.by_state.clone(),
                diverted_flows,
            });
            self.last = Some((c.total, c.idle));
            self.last_report = now;
        }
        Ok((c, elapsed))
    }

    /// Whether the wait is over, and why: no socket left, only idle ones, or `deadline` passed.
    fn over(c: &SocketCount, elapsed: Duration, deadline: Duration) -> Option<DrainReason> {
        if c.total == 0 {
            Some(DrainReason::Empty)
        } else if c.total == c.idle {
            Some(DrainReason::OnlyIdle)
        } else if elapsed >= deadline {
            Some(DrainReason::Deadline)
        } else {
            None
        }
    }

    /// The pause before the next look: `poll`, but never less than the last count took (a count
    /// over ~100k sockets costs ~100 ms of kernel time, see the sockdiag bench: never spend more
    /// than half the time counting), nor longer than `until_next` (the next probe).
    fn pause(&self, poll: Duration, until_next: Duration) -> Duration {
        poll.max(self.count_took).min(until_next).max(MIN_SLEEP)
    }
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
) -> Result<(DrainReason, usize, f64), OpError> {
    let mut w = Watch::new(h.now());
    let mut sealed = false;
    let mut next_probe = w.start + p.probe_interval;
    let mut fails = 0u32;
    loop {
        crate::faults::point("drain.watching");
        if h.interrupts() > 0 {
            return Err(OpError::Interrupted);
        }
        if h.now() >= next_probe {
            moved_away(h, p, &w)?;
            let answer = h.probe_peer().unwrap_or(PeerAnswer::NoAnswer);
            if matches!(answer, PeerAnswer::Accepted { .. }) {
                fails = 0;
            } else {
                fails += 1;
                ev(Event::PeerProbeFailed {
                    consecutive: fails,
                    answer: answer.to_string(),
                });
                if fails >= p.probe_failures {
                    return Err(OpError::PeerLost(format!(
                        "{fails} probes failed, last: {answer}"
                    )));
                }
            }
            next_probe = h.now() + p.probe_interval;
        }
        tender.tick(h, plan, ev);
        let (c, elapsed) = w.look(h, tender.diverted(), ev)?;
        let reason = Watch::over(&c, elapsed, p.deadline);
        if reason == Some(DrainReason::Deadline) && p.abort_on_deadline {
            return Err(OpError::DeadlineAbort(p.deadline, c.total));
        }
        if reason.is_some() && !sealed {
            divert::seal(h.firewall(), plan).map_err(HostError::from)?;
            crate::faults::point("drain.sealed");
            sealed = true;
            ev(Event::Sealed {
                elapsed_ms: ms(h.now() - w.start),
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
        h.wait_for_change(w.pause(p.poll_interval, next_probe.saturating_sub(h.now())));
    }
}

/// Fails with [`OpError::VipMoved`] if a VIP left this node before the trigger: keepalived
/// here was stopped (it removes the address and hands over), or its VRRP process went FAULT or
/// BACKUP by itself. The connections still counted here are cut then: their packets go to the
/// peer. Only the address is looked at (a netlink dump, cheap): a keepalived killed outright
/// leaves it configured, and asking the wire who answers ARP takes a probe timeout each tick;
/// that case ends at the failover wait instead (exit 11, "still configured here").
fn moved_away(h: &mut dyn Host, p: &Policy, w: &Watch) -> Result<(), OpError> {
    let cut = w.last.map_or(0, |(total, _)| total);
    for vip in &p.vips {
        if !h.vip_local(*vip)? {
            return Err(OpError::VipMoved(
                *vip,
                "no longer configured here".into(),
                cut,
            ));
        }
    }
    Ok(())
}

/// The hand-off ([`super::handoff`]): the peer's agent installs its return path, this node
/// diverts, accepts the VIPs without owning them, seals and fails over at once, then waits for
/// its own connections (which the peer now sends back here) up to `deadline`; then the peer
/// removes its return path and this node cleans up. Before the failover every failure rolls back
/// as a drain does; after it, there is nothing to roll back to: the node's remaining connections
/// are cut when the hand-off ends early (interrupt, error).
fn hand_off(
    cfg: &Config,
    h: &mut dyn Host,
    j: &mut Journal,
    plan: &DivertPlan,
    p: &Policy,
    deadline: Duration,
    ev: &mut dyn FnMut(Event),
) -> Result<DrainReport, OpError> {
    let start = h.now();
    let receipt = preflight(h, j, plan, p, ev)?;
    let Some(peer_mac) = h.peer_mac()? else {
        return Err(OpError::PeerNotReady(format!(
            "{} does not answer ARP",
            p.peer
        )));
    };
    let plan = &plan.clone().guarded(peer_mac);
    let lasts = deadline + p.failover_timeout + p.post_wait + HANDOFF_SLACK;
    let until = h.unix_now() + lasts.as_secs();
    let handoff = Change::Handoff {
        peer: p.peer,
        peer_mac: handoff::format_mac(&peer_mac),
        until,
    };
    j.record(handoff.clone())?;
    crate::faults::point("handoff.initiator.journalled");
    if let Err(e) = handoff::ask_begin(h, cfg, until) {
        j.forget(&handoff)?;
        return Err(e);
    }
    crate::faults::point("handoff.initiator.begun");
    ev(Event::HandoffBegun {
        peer: p.peer.to_string(),
    });
    let t = h.now();
    let (install_ms, mut tender) = divert_now(h, j, plan, &receipt, ev)?;
    // Accept the VIPs without owning them, then seal: from the failover on no SYN may start a
    // flow here (an unrecorded one is dropped, counted; its retransmission reaches the peer).
    let ready = super::peer::accept_into(cfg, j, h)
        .map(|_| crate::faults::point("handoff.initiator.accepting"))
        .and_then(|()| divert::seal(h.firewall(), plan).map_err(|e| HostError::from(e).into()));
    if let Err(e) = ready {
        tender.totals(h, plan, ev);
        return Err(rollback(h, j, plan, p, ev, e));
    }
    ev(Event::Sealed {
        elapsed_ms: ms(h.now() - t),
    });
    let waited = pull_trigger(h, j, p)
        .and_then(|trigger| failover(h, plan, p, ev, &mut tender, trigger))
        .and_then(|failover_ms| {
            watch_handoff(h, plan, p, deadline, ev, &mut tender).map(|w| (failover_ms, w))
        });
    match handoff::ask_end(h) {
        Ok(detail) => ev(Event::HandoffEnded { detail }),
        Err(error) => ev(Event::HandoffEndFailed { error }),
    }
    crate::faults::point("handoff.initiator.ended");
    j.forget(&handoff)?;
    let totals = tender.totals(h, plan, ev);
    let cleaned = cleanup(h, j, plan);
    if cleaned.is_ok() {
        ev(Event::CleanedUp);
    }
    crate::faults::point("drain.cleaned-up");
    let (failover_ms, (reason, remaining, drain_ms)) = waited?;
    cleaned?;
    Ok(DrainReport {
        mode: DrainMode::Handoff,
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

/// `undrain` of a node whose hand-off did not finish (its agent died, or was killed): if the
/// node had failed over, its connections still come back through the peer, so this waits for
/// them as the hand-off would have (until none is left, only idle ones, the hand-off's recorded
/// end, or an interrupt), then tells the peer the hand-off is over. Nothing to do without a
/// hand-off in the journal.
pub(super) fn finish_handoff(
    h: &mut dyn Host,
    j: &mut Journal,
    p: &Policy,
    ev: &mut dyn FnMut(Event),
) -> Result<(), OpError> {
    let Some(entry) = j
        .entries()
        .iter()
        .map(|e| e.change.clone())
        .find(|c| matches!(c, Change::Handoff { .. }))
    else {
        return Ok(());
    };
    let Change::Handoff { until, .. } = entry else {
        unreachable!("found as a hand-off")
    };
    let failed_over = j.entries().iter().any(|e| e.change.is_maintenance_state());
    if failed_over {
        let mut w = Watch::new(h.now());
        loop {
            let (c, elapsed) = w.look(h, 0, ev)?;
            let reason = Watch::over(&c, elapsed, Duration::MAX).or_else(|| {
                (h.unix_now() >= until || h.interrupts() > 0).then_some(DrainReason::Deadline)
            });
            if let Some(reason) = reason {
                ev(Event::Drained {
                    reason,
                    elapsed_ms: ms(elapsed),
                    remaining: c.total,
                });
                break;
            }
            h.wait_for_change(w.pause(p.poll_interval, p.poll_interval));
        }
    }
    match handoff::ask_end(h) {
        Ok(detail) => ev(Event::HandoffEnded { detail }),
        Err(error) => ev(Event::HandoffEndFailed { error }),
    }
    j.forget(&entry)?;
    Ok(())
}

/// How long the peer keeps a return path beyond this node's hand-off deadline before removing it
/// on its own (this node normally ends it long before).
const HANDOFF_SLACK: Duration = Duration::from_secs(60);

/// After the failover of a hand-off: waits for this node's connections (the peer returns their
/// packets here) until none is left, only idle ones, or `deadline`. An interrupt ends the wait
/// with the connections left cut ([`OpError::HandoffCut`]).
fn watch_handoff(
    h: &mut dyn Host,
    plan: &DivertPlan,
    p: &Policy,
    deadline: Duration,
    ev: &mut dyn FnMut(Event),
    tender: &mut Tender,
) -> Result<(DrainReason, usize, f64), OpError> {
    let mut w = Watch::new(h.now());
    loop {
        crate::faults::point("handoff.initiator.watching");
        tender.tick(h, plan, ev);
        let (c, elapsed) = w.look(h, tender.diverted(), ev)?;
        if h.interrupts() > 0 {
            return Err(OpError::HandoffCut(c.total));
        }
        if let Some(reason) = Watch::over(&c, elapsed, deadline) {
            ev(Event::Drained {
                reason,
                elapsed_ms: ms(elapsed),
                remaining: c.total,
            });
            return Ok((reason, c.total, ms(elapsed)));
        }
        h.wait_for_change(w.pause(p.poll_interval, p.poll_interval));
    }
}

/// Installs the divert the preflight cleared, announces it, and starts tending the record.
/// Returns the install's duration (ms) and the tender.
fn divert_now(
    h: &mut dyn Host,
    j: &mut Journal,
    plan: &DivertPlan,
    receipt: &InstallReceipt,
    ev: &mut dyn FnMut(Event),
) -> Result<(f64, Tender), OpError> {
    let t = h.now();
    if let Err(e) = install(h, j, plan, receipt) {
        // firewall::install undoes its own partial work; cleanup then only forgets the entry
        // (or reports what could not be undone).
        return Err(match cleanup(h, j, plan) {
            Ok(()) => e,
            Err(c) => c,
        });
    }
    let install_ms = ms(h.now() - t);
    ev(Event::Diverted { install_ms });
    Ok((install_ms, Tender::new(h.now())))
}

/// Pulls the failover trigger the configuration names (tracked interface down, or FAULT in the
/// track file), journalled first; returns what it did, for the event.
pub(super) fn pull_trigger(
    h: &mut dyn Host,
    j: &mut Journal,
    p: &Policy,
) -> Result<String, OpError> {
    Ok(match (&p.track_file, p.trigger_track_file) {
        (Some(path), true) => {
            j.record(Change::TrackFault { path: path.clone() })?;
            crate::faults::point("drain.trigger-journalled");
            h.write_track_file(path, TRACK_FAULT)?;
            crate::faults::point("drain.failover-triggered");
            format!("track file {} = {TRACK_FAULT}", path.display())
        }
        _ => {
            j.record(Change::LinkDown {
                ifname: p.tracked_interface.clone(),
            })?;
            crate::faults::point("drain.trigger-journalled");
            h.set_link(&p.tracked_interface, false)?;
            crate::faults::point("drain.failover-triggered");
            format!("{} down", p.tracked_interface)
        }
    })
}

/// After [`pull_trigger`] (which said `trigger`): waits until the peer owns every VIP; keeps
/// the divert meanwhile (clients keep sending to this node until the peer's gratuitous ARP
/// lands: docs/kernel-facts.md#k8).
fn failover(
    h: &mut dyn Host,
    plan: &DivertPlan,
    p: &Policy,
    ev: &mut dyn FnMut(Event),
    tender: &mut Tender,
    trigger: String,
) -> Result<f64, OpError> {
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
                crate::faults::point("drain.peer-owns-vip");
                // Clients whose ARP cache still points here keep sending until it expires.
                let until = h.now() + p.post_wait;
                while h.now() < until {
                    tender.tick(h, plan, ev);
                    h.sleep(FAILOVER_POLL.min(until.saturating_sub(h.now())));
                }
                return Ok(ms(waited));
            }
            Some(why) if waited >= p.failover_timeout => {
                return Err(OpError::FailoverUnconfirmed(p.failover_timeout, why))
            }
            Some(_) => {
                tender.tick(h, plan, ev);
                h.sleep(FAILOVER_POLL);
            }
        }
    }
}

/// A progress event goes out whenever the count changes, and at least this often.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

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
    why: OpError,
) -> OpError {
    withdraw_and_wait(h, plan, p.rollback_grace, ev, why.to_string());
    match cleanup(h, j, plan) {
        Ok(()) => {
            ev(Event::CleanedUp);
            why
        }
        Err(e) => e,
    }
}
