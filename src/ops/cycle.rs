//! The steps the drain, the hand-off and maintenance share: the checks before anything changes
//! ([`preflight`]), the install of the divert ([`install`], [`divert_now`]), the record kept
//! ahead of the traffic while it is in place ([`Tender`]), the count of the node's sockets a wait
//! loop makes ([`Watch`]), the failover ([`pull_trigger`], [`failover`]), and the abort path
//! ([`rollback`], [`withdraw_and_wait`]). The drain ([`super::drain`]) and the hand-off's
//! initiator ([`super::handoff`]) are sequences of these.

use std::time::Duration;

use super::divert::{self, InstallReceipt};
use super::error::{FailoverPending, Leftover, OutOfService, PeerProblem};
use super::record::{self, RecordKeeper};
use super::undo::cleanup;
use super::{
    ms, DrainReason, Event, Host, HostError, Netfilter, OpError, PeerAnswer, Policy, SocketCount,
    MIN_SLEEP, TRACK_FAULT,
};
use crate::journal::{Change, Journal};
use crate::plan::sets::{DivertCounters, RecordStats};
use crate::plan::DivertPlan;

/// What every step of a cycle works on: the host, the drain journal, the divert's rules, the
/// policy, and where the events go. One value, so that a step's signature names only what it
/// needs besides (the tender, a deadline, the error it rolls back for).
pub struct Cycle<'a> {
    /// The host.
    pub h: &'a mut dyn Host,
    /// The drain journal: every change is recorded in it before it is made.
    pub j: &'a mut Journal,
    /// The divert's rules (a hand-off's are guarded by the peer's MAC).
    pub plan: &'a DivertPlan,
    /// The drain policy.
    pub p: &'a Policy,
    /// Where each event goes, as it happens.
    pub ev: &'a mut dyn FnMut(Event),
}

impl<'a> Cycle<'a> {
    /// A cycle on `h`, recording in `j`, diverting with `plan`, as `p` says, reporting to `ev`.
    pub fn new(
        h: &'a mut dyn Host,
        j: &'a mut Journal,
        plan: &'a DivertPlan,
        p: &'a Policy,
        ev: &'a mut dyn FnMut(Event),
    ) -> Cycle<'a> {
        Cycle { h, j, plan, p, ev }
    }

    /// The same cycle with the rules `plan` (a hand-off's guarded ones), for as long as it lives.
    pub fn with_plan<'b>(&'b mut self, plan: &'b DivertPlan) -> Cycle<'b> {
        Cycle {
            h: &mut *self.h,
            j: &mut *self.j,
            plan,
            p: self.p,
            ev: &mut *self.ev,
        }
    }

    /// Reports `e`.
    pub fn emit(&mut self, e: Event) {
        (self.ev)(e)
    }
}

/// The drain's side of the [`RecordKeeper`]: turns what it finds into events.
pub(crate) struct Tender {
    keeper: RecordKeeper,
}

impl Tender {
    pub(crate) fn new(now: Duration) -> Tender {
        Tender {
            keeper: RecordKeeper::new(now),
        }
    }

    /// Does what is due and reports it.
    pub(crate) fn tick(&mut self, cx: &mut Cycle<'_>) {
        let now = cx.h.now();
        let news = self.keeper.tick(cx.h.firewall(), cx.plan, now);
        Self::report(news, cx.plan, cx.ev);
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
    pub(crate) fn diverted(&self) -> u64 {
        self.keeper.counters().diverted_syns
    }

    /// The final look before the divert goes, reported.
    pub(crate) fn totals(&mut self, cx: &mut Cycle<'_>) -> (RecordStats, DivertCounters) {
        let (news, stats, counters) = self.keeper.final_look(cx.h.firewall(), cx.plan);
        Self::report(news, cx.plan, cx.ev);
        cx.emit(Event::DivertTotals {
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
pub(crate) fn preflight(cx: &mut Cycle<'_>) -> Result<InstallReceipt, OpError> {
    let Cycle { h, j, plan, p, ev } = cx;
    if let Some(e) = j
        .entries()
        .iter()
        .find(|e| !e.change.is_maintenance_state())
    {
        return Err(OpError::Leftovers(Leftover::Journalled(e.change.clone())));
    }
    let faulted = match &p.track_file {
        Some(path) => h.read_track_file(path)?.is_some_and(|v| v <= TRACK_FAULT),
        None => false,
    };
    let link_up = h.link_up(&p.tracked_interface)?;
    if let Some(e) = j.entries().iter().find(|e| e.change.is_maintenance_state()) {
        // Say what is true: after a reboot the journal still records the failover while the
        // tracked interface is up again.
        return Err(OpError::AlreadyDrained(OutOfService::Journalled {
            change: e.change.clone(),
            at: e.at,
            in_effect: !link_up || faulted,
        }));
    }
    if !link_up {
        return Err(OpError::AlreadyDrained(OutOfService::LinkDown {
            ifname: p.tracked_interface.clone(),
        }));
    }
    if faulted {
        return Err(OpError::AlreadyDrained(OutOfService::TrackFault));
    }
    for vip in &p.vips {
        if !h.vip_local(*vip)? {
            return Err(OpError::NotMaster(*vip));
        }
    }
    let receipt = match divert::prepare(h.firewall(), plan) {
        Ok(r) => r,
        Err(divert::DivertError::SetsExist { names }) => {
            return Err(OpError::Leftovers(Leftover::Sets(names)))
        }
        Err(divert::DivertError::ChainsExist { chains }) => {
            return Err(OpError::Leftovers(Leftover::Chains(chains)))
        }
        Err(e) => return Err(HostError::from(e).into()),
    };
    let answer = h.probe_peer()?;
    if !matches!(answer, PeerAnswer::Accepted { .. }) {
        let peer = p.peer;
        return Err(OpError::PeerNotReady(match answer {
            PeerAnswer::Refused => PeerProblem::Refuses { peer },
            _ => PeerProblem::Silent { peer },
        }));
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
    h: &mut dyn Netfilter,
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

/// A progress event goes out whenever the count changes, and at least this often.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// Counts the node's sockets for a wait loop and reports progress: whenever the count changes,
/// and at least every [`PROGRESS_EVERY`].
pub(crate) struct Watch {
    pub(crate) start: Duration,
    pub(crate) last: Option<(usize, usize)>,
    pub(crate) last_report: Duration,
    pub(crate) count_took: Duration,
}

impl Watch {
    pub(crate) fn new(start: Duration) -> Watch {
        Watch {
            start,
            last: None,
            last_report: start,
            count_took: Duration::ZERO,
        }
    }

    /// Counts once; returns the count and the time since the wait started.
    pub(crate) fn look(
        &mut self,
        cx: &mut Cycle<'_>,
        diverted_flows: u64,
    ) -> Result<(SocketCount, Duration), OpError> {
        let before = cx.h.now();
        let c = cx.h.count()?;
        let now = cx.h.now();
        self.count_took = now - before;
        let elapsed = now - self.start;
        if self.last != Some((c.total, c.idle)) || now - self.last_report >= PROGRESS_EVERY {
            cx.emit(Event::Progress {
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
    pub(crate) fn over(
        c: &SocketCount,
        elapsed: Duration,
        deadline: Duration,
    ) -> Option<DrainReason> {
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
    pub(crate) fn pause(&self, poll: Duration, until_next: Duration) -> Duration {
        poll.max(self.count_took).min(until_next).max(MIN_SLEEP)
    }
}

/// Installs the divert the preflight cleared, announces it, and starts tending the record.
/// Returns the install's duration (ms) and the tender.
pub(crate) fn divert_now(
    cx: &mut Cycle<'_>,
    receipt: &InstallReceipt,
) -> Result<(f64, Tender), OpError> {
    let t = cx.h.now();
    if let Err(e) = install(cx.h, cx.j, cx.plan, receipt) {
        // firewall::install undoes its own partial work; cleanup then only forgets the entry
        // (or reports what could not be undone).
        return Err(match cleanup(cx.h, cx.j, cx.plan) {
            Ok(()) => e,
            Err(c) => c,
        });
    }
    let install_ms = ms(cx.h.now() - t);
    cx.emit(Event::Diverted { install_ms });
    Ok((install_ms, Tender::new(cx.h.now())))
}

/// Pulls the failover trigger the configuration names (tracked interface down, or FAULT in the
/// track file), journalled first; returns what it did, for the event.
pub(crate) fn pull_trigger(
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
pub(crate) fn failover(
    cx: &mut Cycle<'_>,
    tender: &mut Tender,
    trigger: String,
) -> Result<f64, OpError> {
    cx.emit(Event::FailoverTriggered { trigger });
    let t = cx.h.now();
    loop {
        let mut pending = None;
        for vip in &cx.p.vips {
            if cx.h.vip_local(*vip)? {
                pending = Some(FailoverPending::StillHere(*vip));
                break;
            }
            if !cx.h.peer_owns(*vip)? {
                pending = Some(FailoverPending::NoArp(*vip));
                break;
            }
        }
        let waited = cx.h.now() - t;
        match pending {
            None => {
                cx.emit(Event::PeerOwnsVip {
                    after_ms: ms(waited),
                });
                crate::faults::point("drain.peer-owns-vip");
                // Clients whose ARP cache still points here keep sending until it expires.
                let until = cx.h.now() + cx.p.post_wait;
                while cx.h.now() < until {
                    tender.tick(cx);
                    cx.h.sleep(FAILOVER_POLL.min(until.saturating_sub(cx.h.now())));
                }
                return Ok(ms(waited));
            }
            Some(pending) if waited >= cx.p.failover_timeout => {
                return Err(OpError::FailoverUnconfirmed {
                    timeout: cx.p.failover_timeout,
                    pending,
                })
            }
            Some(_) => {
                tender.tick(cx);
                cx.h.sleep(FAILOVER_POLL);
            }
        }
    }
}

/// How often the failover wait looks at the VIP's owner.
const FAILOVER_POLL: Duration = Duration::from_millis(20);

/// Abort path: new flows local again at once, already-diverted flows keep going to the peer for
/// the grace period (a further interrupt cuts it short), then everything is removed.
pub(crate) fn rollback(cx: &mut Cycle<'_>, why: OpError) -> OpError {
    withdraw_and_wait(cx, why.to_string());
    match cleanup(cx.h, cx.j, cx.plan) {
        Ok(()) => {
            cx.emit(Event::CleanedUp);
            why
        }
        Err(e) => e,
    }
}

/// How often the rollback grace looks for an interrupt (a second Ctrl-C ends it early).
const GRACE_TICK: Duration = Duration::from_millis(50);

/// Withdraws the divert for new flows and keeps diverting the flows already at the peer for
/// the policy's `rollback_grace`, so they can finish there; returns early on an interrupt that
/// arrived after the call. If the withdraw fails (e.g. a half-removed divert), returns at once:
/// removal follows anyway.
pub(crate) fn withdraw_and_wait(cx: &mut Cycle<'_>, reason: String) {
    let withdrew = divert::withdraw(cx.h.firewall(), cx.plan);
    cx.emit(Event::Withdrawn { reason });
    let (h, grace) = (&mut *cx.h, cx.p.rollback_grace);
    if withdrew.is_err() {
        return;
    }
    let until = h.now() + grace;
    let seen = h.interrupts();
    while h.now() < until && h.interrupts() <= seen {
        h.sleep(GRACE_TICK.min(until.saturating_sub(h.now())).max(MIN_SLEEP));
    }
}
