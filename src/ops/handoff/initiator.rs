//! A, the node handing off: [`hand_off`] (the drain mode `handoff`) and [`finish_handoff`]
//! (`undrain` of a hand-off its agent did not finish), as sequences of the cycle's steps
//! ([`crate::ops::cycle`]), and [`ask_begin`], the request that starts one.

use std::time::Duration;

use super::protocol::{ask_end, format_mac, PeerReply, PeerRequest, VipPorts};
use crate::config::{Config, DrainMode};
use crate::journal::Change;
use crate::ops::cycle::{
    divert_now, failover, preflight, pull_trigger, rollback, Cycle, Tender, Watch,
};
use crate::ops::divert;
use crate::ops::error::PeerProblem;
use crate::ops::undo::cleanup;
use crate::ops::{ms, DrainReason, DrainReport, Event, Host, HostError, HostErrorKind, OpError};

/// The hand-off ([`super`]): the peer's agent installs its return path, this node
/// diverts, accepts the VIPs without owning them, seals and fails over at once, then waits for
/// its own connections (which the peer now sends back here) up to `deadline`; then the peer
/// removes its return path and this node cleans up. Before the failover every failure rolls back
/// as a drain does; after it, there is nothing to roll back to: the node's remaining connections
/// are cut when the hand-off ends early (interrupt, error).
pub(crate) fn hand_off(
    cx: &mut Cycle<'_>,
    cfg: &Config,
    deadline: Duration,
) -> Result<DrainReport, OpError> {
    let start = cx.h.now();
    let receipt = preflight(cx)?;
    let Some(peer_mac) = cx.h.peer_mac()? else {
        return Err(OpError::PeerNotReady(PeerProblem::NoArp {
            peer: cx.p.peer,
        }));
    };
    let guarded = cx.plan.clone().guarded(peer_mac);
    let cx = &mut cx.with_plan(&guarded);
    let lasts = deadline + cx.p.failover_timeout + cx.p.post_wait + HANDOFF_SLACK;
    let until = cx.h.unix_now() + lasts.as_secs();
    let handoff = Change::Handoff {
        peer: cx.p.peer,
        peer_mac: format_mac(&peer_mac),
        until,
    };
    cx.j.record(handoff.clone())?;
    crate::faults::point("handoff.initiator.journalled");
    if let Err(e) = ask_begin(cx.h, cfg, until) {
        cx.j.forget(&handoff)?;
        return Err(e);
    }
    crate::faults::point("handoff.initiator.begun");
    cx.emit(Event::HandoffBegun {
        peer: cx.p.peer.to_string(),
    });
    let t = cx.h.now();
    let (install_ms, mut tender) = divert_now(cx, &receipt)?;
    // Accept the VIPs without owning them, then seal: from the failover on no SYN may start a
    // flow here (an unrecorded one is dropped, counted; its retransmission reaches the peer).
    let ready = crate::ops::peer::accept_into(cfg, cx.j, cx.h)
        .map(|_| crate::faults::point("handoff.initiator.accepting"))
        .and_then(|()| {
            divert::seal(cx.h.firewall(), cx.plan).map_err(|e| HostError::from(e).into())
        });
    if let Err(e) = ready {
        tender.totals(cx);
        return Err(rollback(cx, e));
    }
    cx.emit(Event::Sealed {
        elapsed_ms: ms(cx.h.now() - t),
    });
    let waited = pull_trigger(cx.h, cx.j, cx.p)
        .and_then(|trigger| failover(cx, &mut tender, trigger))
        .and_then(|failover_ms| watch_handoff(cx, deadline, &mut tender).map(|w| (failover_ms, w)));
    match ask_end(cx.h) {
        Ok(detail) => cx.emit(Event::HandoffEnded { detail }),
        Err(error) => cx.emit(Event::HandoffEndFailed { error }),
    }
    crate::faults::point("handoff.initiator.ended");
    cx.j.forget(&handoff)?;
    let totals = tender.totals(cx);
    let cleaned = cleanup(cx.h, cx.j, cx.plan);
    if cleaned.is_ok() {
        cx.emit(Event::CleanedUp);
    }
    crate::faults::point("drain.cleaned-up");
    let (failover_ms, (reason, remaining, drain_ms)) = waited?;
    cleaned?;
    Ok(DrainReport {
        mode: DrainMode::Handoff,
        reason,
        drain_ms,
        failover_ms,
        total_ms: ms(cx.h.now() - start),
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
pub(crate) fn finish_handoff(cx: &mut Cycle<'_>) -> Result<(), OpError> {
    let Some(entry) =
        cx.j.entries()
            .iter()
            .map(|e| e.change.clone())
            .find(|c| matches!(c, Change::Handoff { .. }))
    else {
        return Ok(());
    };
    let Change::Handoff { until, .. } = entry else {
        unreachable!("found as a hand-off")
    };
    let failed_over =
        cx.j.entries()
            .iter()
            .any(|e| e.change.is_maintenance_state());
    if failed_over {
        let mut w = Watch::new(cx.h.now());
        loop {
            let (c, elapsed) = w.look(cx, 0)?;
            let reason = Watch::over(&c, elapsed, Duration::MAX).or_else(|| {
                (cx.h.unix_now() >= until || cx.h.interrupts() > 0).then_some(DrainReason::Deadline)
            });
            if let Some(reason) = reason {
                cx.emit(Event::Drained {
                    reason,
                    elapsed_ms: ms(elapsed),
                    remaining: c.total,
                });
                break;
            }
            cx.h.wait_for_change(w.pause(cx.p.poll_interval, cx.p.poll_interval));
        }
    }
    match ask_end(cx.h) {
        Ok(detail) => cx.emit(Event::HandoffEnded { detail }),
        Err(error) => cx.emit(Event::HandoffEndFailed { error }),
    }
    cx.j.forget(&entry)?;
    Ok(())
}

/// How long the peer keeps a return path beyond this node's hand-off deadline before removing it
/// on its own (this node normally ends it long before).
const HANDOFF_SLACK: Duration = Duration::from_secs(60);

/// After the failover of a hand-off: waits for this node's connections (the peer returns their
/// packets here) until none is left, only idle ones, or `deadline`. An interrupt ends the wait
/// with the connections left cut ([`OpError::HandoffCut`]).
fn watch_handoff(
    cx: &mut Cycle<'_>,
    deadline: Duration,
    tender: &mut Tender,
) -> Result<(DrainReason, usize, f64), OpError> {
    let mut w = Watch::new(cx.h.now());
    loop {
        crate::faults::point("handoff.initiator.watching");
        tender.tick(cx);
        let (c, elapsed) = w.look(cx, tender.diverted())?;
        if cx.h.interrupts() > 0 {
            return Err(OpError::HandoffCut(c.total));
        }
        if let Some(reason) = Watch::over(&c, elapsed, deadline) {
            cx.emit(Event::Drained {
                reason,
                elapsed_ms: ms(elapsed),
                remaining: c.total,
            });
            return Ok((reason, c.total, ms(elapsed)));
        }
        cx.h.wait_for_change(w.pause(cx.p.poll_interval, cx.p.poll_interval));
    }
}

/// A: asks the peer's agent to start returning this node's packets. `Ok(())` once it has.
///
/// A `Begin` that went out but got no reply may have been acted on: the peer's agent can have
/// installed its return path and died (or its reply been lost) before answering. This node does
/// not divert without a reply, so that return path serves no one, and the peer's own probe
/// would not remove it (this node still answers for the VIP): left alone it stays until `until`.
/// So this node then sends `End` ([`ask_end`], which retries while the peer's agent restarts)
/// before giving up, and the peer is left as it was.
pub fn ask_begin(h: &mut dyn Host, cfg: &Config, until: u64) -> Result<(), OpError> {
    let req = PeerRequest::Begin {
        vips: VipPorts::of(cfg),
        until,
    };
    let peer = cfg.peer.get();
    match h.peer_agent(&req) {
        Ok(PeerReply::Ok { .. }) => Ok(()),
        Ok(PeerReply::Refused { reason }) => {
            Err(OpError::PeerNotReady(PeerProblem::HandoffRefused {
                peer,
                reason,
            }))
        }
        Err(error) if error.kind == HostErrorKind::Unanswered => {
            let ended = ask_end(h);
            Err(OpError::PeerNotReady(PeerProblem::HandoffUnanswered {
                peer,
                error,
                ended,
            }))
        }
        Err(error) => Err(OpError::PeerNotReady(PeerProblem::AgentUnreachable {
            peer,
            error,
        })),
    }
}
