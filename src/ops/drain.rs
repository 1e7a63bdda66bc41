//! The drain cycle as a state machine over a [`Host`]: preflight → divert → watch → seal → fail
//! over → clean up, with rollback on every abort path. Everything the cycle does to the host goes
//! through the `Host` trait, so the whole machine is unit-tested against a scripted fake world
//! (connections that close, a peer that dies, keepalived that moves the VIP) without root.
//!
//! Every host change is recorded in the [`Journal`] before it is made; undo is idempotent and is
//! the same code whether it runs at the end of a drain, on rollback, or after a crash (`undrain`).

use serde::{Deserialize, Serialize};

use super::cycle::{divert_now, failover, preflight, pull_trigger, rollback, Tender, Watch};
use super::divert;
use super::handoff::{self, Returning};
use super::undo::cleanup;
use super::{ms, DrainReason, DrainReport, Event, Host, HostError, OpError, PeerAnswer, Policy};
use crate::config::{Config, DrainMode, PositiveDuration};
use crate::journal::{Journal, StateDir};
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
        Some(deadline) => handoff::hand_off(&cfg, h, &mut journal, &plan, &policy, deadline, ev),
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
