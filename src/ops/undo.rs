//! Undoing what the journal records: one change ([`undo`]), the transient ones ([`cleanup`]:
//! a drain's rollback and its end), or all of them ([`undo_all`]: `undrain`, `release`). Shared
//! by the drain, `undrain`, the peer side and the hand-off; the drain and `undrain` need not
//! import each other for it.

use super::divert;
use super::error::UndoFailures;
use super::{Host, HostError, OpError};
use crate::journal::{Change, Journal};
use crate::plan::DivertPlan;

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
    // A journal that cannot be rewritten (a full state directory) must not stop the undoing:
    // the next change (the divert, after the link) would stay in the kernel with nobody
    // tending it. The journal then lists changes already undone, which `undrain` undoes again
    // (a no-op) and forgets once the file can be written.
    let mut unforgotten = None;
    let last = changes.len().saturating_sub(1);
    for (i, c) in changes.into_iter().enumerate() {
        match undo(h, plan, &c) {
            Ok(()) => {
                if let Err(e) = j.forget(&c) {
                    unforgotten.get_or_insert(e);
                }
            }
            Err(e) => errors.push(e),
        }
        if i < last {
            crate::faults::point("undo.partial");
        }
    }
    match (errors.is_empty(), unforgotten) {
        (true, None) => Ok(()),
        (true, Some(e)) => Err(e.into()),
        (false, journal) => Err(OpError::CleanupIncomplete(UndoFailures {
            steps: errors,
            journal,
        })),
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
                .map_err(|e| HostError::caused("remove divert", super::HostErrorKind::Other, e))
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
