//! Taking the node back into service, and undoing recorded changes: the one undo path used at the
//! end of a drain, on rollback, by `undrain` after a crash, and by `release`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::divert;
use super::{Event, Host, HostError, OpError, Policy, MIN_SLEEP};
use crate::config::Config;
use crate::journal::{Change, Journal, StateDir};
use crate::plan::DivertPlan;

/// How often the rollback grace looks for an interrupt (a second Ctrl-C ends it early).
const GRACE_TICK: Duration = Duration::from_millis(50);

/// What `drain-agent undrain` (or the daemon's undrain request) may ask for.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct UndrainOptions {
    /// Remove leftovers but leave the tracked interface as it is.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub keep_link_down: bool,
}

/// The result of an undrain.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "result", rename = "undrained")]
pub struct Undrained {
    /// The recorded changes that were undone, one line each.
    pub undone: Vec<String>,
    /// Whether the tracked interface is up again (false with `keep_link_down`).
    pub tracked_interface_up: bool,
}

impl Undrained {
    /// The one line an operator reads.
    pub fn summary(&self) -> String {
        format!(
            "undrained: {} recorded change(s) undone{}",
            self.undone.len(),
            if self.tracked_interface_up {
                "; back in service"
            } else {
                ""
            }
        )
    }
}

/// `drain-agent undrain`: takes the lock and undoes what the journal records and any divert of
/// ours it finds ([`undrain`]).
pub fn run(
    cfg: &Config,
    opts: &UndrainOptions,
    state: &StateDir,
    h: &mut dyn Host,
    ev: &mut dyn FnMut(Event),
) -> Result<Undrained, OpError> {
    let _lock = state.lock()?;
    let mut journal = state.drain_journal()?;
    let _span = tracing::info_span!("undrain").entered();
    let undone = journal
        .entries()
        .iter()
        .map(|e| e.change.to_string())
        .collect();
    undrain(
        h,
        &mut journal,
        &DivertPlan::new(cfg),
        &Policy::from_config(cfg),
        opts.keep_link_down,
        ev,
    )?;
    Ok(Undrained {
        undone,
        tracked_interface_up: !opts.keep_link_down,
    })
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
) -> Result<(), OpError> {
    h.firewall().require_tools().map_err(HostError::from)?;
    // After the failover of a hand-off the VIP is the peer's: no new flow arrives here, so the
    // divert goes without a grace period once the hand-off is finished.
    let handed_off = j
        .entries()
        .iter()
        .any(|e| matches!(e.change, Change::Handoff { .. }))
        && j.entries().iter().any(|e| e.change.is_maintenance_state());
    super::drain::finish_handoff(h, j, p, ev)?;
    let save = h.firewall().save_mangle().map_err(HostError::from)?;
    if !plan.existing_chains(&save).is_empty() && !handed_off {
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
pub fn cleanup(h: &mut dyn Host, j: &mut Journal, plan: &DivertPlan) -> Result<(), OpError> {
    undo_where(h, j, plan, |c| !c.is_maintenance_state())
}

/// Undoes every change in the journal, maintenance state included (`undrain`, `release`).
pub fn undo_all(h: &mut dyn Host, j: &mut Journal, plan: &DivertPlan) -> Result<(), OpError> {
    undo_where(h, j, plan, |_| true)
}

fn undo_where(
    h: &mut dyn Host,
    j: &mut Journal,
    plan: &DivertPlan,
    pick: impl Fn(&Change) -> bool,
) -> Result<(), OpError> {
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
        Err(OpError::CleanupIncomplete(errors.join("; ")))
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
            divert::remove(h.firewall(), plan, *drop_mangle_table)
                .map_err(|e| HostError::other("remove divert", e))
        }
        Change::LinkDown { ifname } => h.set_link(ifname, true),
        Change::TrackFault { path } => h.write_track_file(path, 0),
        Change::LocalRoute { addr } => h.local_route(*addr, false),
        Change::Sysctl { key, previous } => h.sysctl_write(key, previous),
        Change::Handoff { peer, .. } => {
            // Best effort: a peer that does not hear it removes its return path itself once
            // this node stops accepting the VIP.
            if let Err(e) = super::handoff::ask_end(h) {
                tracing::warn!("hand-off: {peer}'s agent was not told the hand-off is over: {e}");
            }
            Ok(())
        }
        // A marker: the return path itself is the `Divert` entry under the return prefix.
        Change::Returning { .. } => Ok(()),
    }
}

/// Withdraws the divert for new flows and keeps diverting the flows already at the peer for
/// `grace`, so they can finish there; returns early on an interrupt that arrived after the call.
/// If the withdraw fails (e.g. a half-removed divert), returns at once: removal follows anyway.
pub(super) fn withdraw_and_wait(
    h: &mut dyn Host,
    plan: &DivertPlan,
    grace: Duration,
    ev: &mut dyn FnMut(Event),
    reason: String,
) {
    let withdrew = divert::withdraw(h.firewall(), plan);
    ev(Event::Withdrawn { reason });
    if withdrew.is_err() {
        return;
    }
    let until = h.now() + grace;
    let seen = h.interrupts();
    while h.now() < until && h.interrupts() <= seen {
        h.sleep(GRACE_TICK.min(until.saturating_sub(h.now())).max(MIN_SLEEP));
    }
}
