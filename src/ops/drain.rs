//! The drain cycle as a state machine over a [`Host`]: preflight → divert → watch → seal → fail
//! over → clean up, with rollback on every abort path; [`run`] chooses it or the hand-off
//! ([`super::handoff`]). The steps it shares with the hand-off and maintenance are in the cycle
//! module; this file holds the plain drain's sequence and its wait (`watch`). Everything the
//! cycle does to the host goes through the `Host` trait, so the whole machine is unit-tested
//! against a scripted fake world (connections that close, a peer that dies, keepalived that
//! moves the VIP) without root.
//!
//! Every host change is recorded in the [`crate::journal::Journal`] before it is made; undo is
//! idempotent and is the same code whether it runs at the end of a drain, on rollback, or after
//! a crash (`undrain`).

use serde::{Deserialize, Serialize};

use super::cycle::{divert_now, failover, preflight, pull_trigger, rollback, Cycle, Tender, Watch};
use super::divert;
use super::error::ConfigProblem;
use super::handoff::{self, Returning};
use super::undo::cleanup;
use super::{ms, DrainReason, DrainReport, Event, Host, HostError, OpError, PeerAnswer, Policy};
use crate::config::{Config, DrainMode, PositiveDuration};
use crate::journal::StateDir;
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
        return Err(OpError::Config(ConfigProblem::HandoffNeedsPeerLink));
    }
    let _lock = state.lock()?;
    let mut journal = state.drain_journal()?;
    if let Some(r) = Returning::recorded(&state.return_journal()?) {
        return Err(OpError::ServingHandoff(r.peer));
    }
    let span = tracing::info_span!("drain", peer = %cfg.peer.get(), tracked = %cfg.tracked_interface.as_str());
    let _enter = span.enter();
    let (plan, policy) = (DivertPlan::new(&cfg), Policy::from_config(&cfg));
    let mut cx = Cycle::new(h, &mut journal, &plan, &policy, ev);
    let result = match policy.handoff {
        None => drain(&mut cx),
        Some(deadline) => handoff::hand_off(&mut cx, &cfg, deadline),
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
pub fn drain(cx: &mut Cycle<'_>) -> Result<DrainReport, OpError> {
    let start = cx.h.now();
    let receipt = preflight(cx)?;
    let (install_ms, mut tender) = divert_now(cx, &receipt)?;
    let (reason, remaining, drain_ms) = match watch(cx, &mut tender) {
        Ok(w) => w,
        Err(moved @ OpError::VipMoved { .. }) => {
            // Clients already send to the peer: a rollback would serve nothing here. Finish the
            // drain instead, so that a keepalived restarted here does not take the VIP back.
            let failover = pull_trigger(cx.h, cx.j, cx.p)
                .and_then(|trigger| failover(cx, &mut tender, trigger));
            tender.totals(cx);
            let cleaned = cleanup(cx.h, cx.j, cx.plan);
            if cleaned.is_ok() {
                cx.emit(Event::CleanedUp);
            }
            failover?;
            cleaned?;
            return Err(moved);
        }
        Err(e) => {
            tender.totals(cx);
            return Err(rollback(cx, e));
        }
    };
    // `pull_trigger` journals before it pulls: a trigger it could not record (a full state
    // directory) was not pulled and nothing moved, so this is an abort like any other, with the
    // grace for the flows already at the peer (removed at once, the divert would send them back
    // here, where no socket knows them: reset).
    let trigger = match pull_trigger(cx.h, cx.j, cx.p) {
        Ok(t) => t,
        Err(e) => {
            tender.totals(cx);
            return Err(rollback(cx, e));
        }
    };
    let failover = failover(cx, &mut tender, trigger);
    let totals = tender.totals(cx);
    let cleaned = cleanup(cx.h, cx.j, cx.plan);
    if cleaned.is_ok() {
        cx.emit(Event::CleanedUp);
    }
    crate::faults::point("drain.cleaned-up");
    let failover_ms = failover?;
    cleaned?;
    Ok(DrainReport {
        mode: DrainMode::Drain,
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

/// Waits for the drain; returns (reason, sockets left, ms since divert). When the drain is over
/// it seals the divert and counts once more: a flow that started locally just before the seal
/// (an unrecorded SYN) is waited for too, and none can start after it.
fn watch(cx: &mut Cycle<'_>, tender: &mut Tender) -> Result<(DrainReason, usize, f64), OpError> {
    let mut w = Watch::new(cx.h.now());
    let mut sealed = false;
    let mut next_probe = w.start + cx.p.probe_interval;
    let mut fails = 0u32;
    loop {
        crate::faults::point("drain.watching");
        if cx.h.interrupts() > 0 {
            return Err(OpError::Interrupted);
        }
        if cx.h.now() >= next_probe {
            moved_away(cx, &w)?;
            let answer = cx.h.probe_peer().unwrap_or(PeerAnswer::NoAnswer);
            if matches!(answer, PeerAnswer::Accepted { .. }) {
                fails = 0;
            } else {
                fails += 1;
                cx.emit(Event::PeerProbeFailed {
                    consecutive: fails,
                    answer: answer.to_string(),
                });
                if fails >= cx.p.probe_failures {
                    return Err(OpError::PeerLost {
                        failed: fails,
                        last: answer,
                    });
                }
            }
            next_probe = cx.h.now() + cx.p.probe_interval;
        }
        tender.tick(cx);
        let (c, elapsed) = w.look(cx, tender.diverted())?;
        let reason = Watch::over(&c, elapsed, cx.p.deadline);
        if reason == Some(DrainReason::Deadline) && cx.p.abort_on_deadline {
            return Err(OpError::DeadlineAbort(cx.p.deadline, c.total));
        }
        if reason.is_some() && !sealed {
            divert::seal(cx.h.firewall(), cx.plan).map_err(HostError::from)?;
            crate::faults::point("drain.sealed");
            sealed = true;
            cx.emit(Event::Sealed {
                elapsed_ms: ms(cx.h.now() - w.start),
            });
            continue;
        }
        if let Some(reason) = reason {
            cx.emit(Event::Drained {
                reason,
                elapsed_ms: ms(elapsed),
                remaining: c.total,
            });
            return Ok((reason, c.total, ms(elapsed)));
        }
        cx.h.wait_for_change(w.pause(cx.p.poll_interval, next_probe.saturating_sub(cx.h.now())));
    }
}

/// Fails with [`OpError::VipMoved`] if a VIP left this node before the trigger: keepalived
/// here was stopped (it removes the address and hands over), or its VRRP process went FAULT or
/// BACKUP by itself. The connections still counted here are cut then: their packets go to the
/// peer. Only the address is looked at (a netlink dump, cheap): a keepalived killed outright
/// leaves it configured, and asking the wire who answers ARP takes a probe timeout each tick;
/// that case ends at the failover wait instead (exit 11, "still configured here").
fn moved_away(cx: &mut Cycle<'_>, w: &Watch) -> Result<(), OpError> {
    let cut = w.last.map_or(0, |(total, _)| total);
    for vip in &cx.p.vips {
        if !cx.h.vip_local(*vip)? {
            return Err(OpError::VipMoved { vip: *vip, cut });
        }
    }
    Ok(())
}
