//! `drain-agent notify TYPE NAME STATE [PRIORITY]`: keepalived's `notify` hook. Brings this node's
//! side of the protocol in line with its VRRP state, idempotently:
//!
//! | state | action |
//! |---|---|
//! | BACKUP | accept diverted traffic for the VIPs (what `accept` does) |
//! | MASTER | release that acceptance (the VIP is on an interface now); remove a stale divert; reset a `return_weight` demotion in the track file to 0 |
//! | STOP, DELETED | release, unless diverted connections are still served here (keepalived restarting on a BACKUP mid-drain must not cut them); remove a stale divert |
//! | FAULT | nothing: a node in FAULT receives no traffic for the VIP, and if it is in FAULT because a drain downed its tracked interface, the drain (or `undrain`) owns what follows |
//!
//! keepalived does not wait for notify scripts, so two can run at once and finish out of order
//! (BACKUP then MASTER at start-up, say). Each call therefore checks its state against what is
//! true once it holds the lock: keepalived adds the VIPs before it calls MASTER and removes them
//! before it calls BACKUP, so a BACKUP call on a node that holds a VIP, or a MASTER call on one
//! that holds none, is stale and does nothing — the later call has done, or will do, the right
//! thing.
//!
//! This takes the same
//! lock as every other command, waiting for it a bounded time (a drain finishing, another
//! notify); if a drain holds it past that, exit 6 and nothing changed. A "stale divert" is one no
//! running drain owns: holding the lock proves none runs.

use std::time::Duration;

use clap::Args;
use serde_json::json;

use super::accept::{accept, release};
use super::common::{self, Output};
use super::{Failure, GlobalOpts};
use crate::config::Config;
use crate::keepalived::{NotifyArgs, VrrpState};
use crate::ops::{self as cycle, exit, Host};

/// How long `notify` waits for another operation to finish before giving up (exit 6).
pub const LOCK_WAIT: Duration = Duration::from_secs(20);

/// Arguments of `notify` (keepalived appends them to the configured command).
#[derive(Debug, Args)]
pub struct NotifyCliArgs {
    /// TYPE NAME STATE [PRIORITY], e.g. `INSTANCE VI_1 MASTER 150`.
    #[arg(num_args = 0.., allow_hyphen_values = true, trailing_var_arg = true)]
    pub args: Vec<String>,
}

/// What `notify` does for a state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Accept diverted traffic.
    Accept,
    /// Release acceptance and remove any stale divert.
    ReleaseAndClear,
    /// Nothing.
    Nothing,
}

/// The action for a VRRP state (see the module table).
pub fn action_for(state: VrrpState) -> Action {
    match state {
        VrrpState::Backup => Action::Accept,
        VrrpState::Master | VrrpState::Stop | VrrpState::Deleted => Action::ReleaseAndClear,
        VrrpState::Fault => Action::Nothing,
    }
}

/// Runs `notify`.
pub fn run(g: &GlobalOpts, a: &NotifyCliArgs) -> Result<(), Failure> {
    let n = NotifyArgs::parse(&a.args).map_err(|e| Failure::new(exit::USAGE, e.to_string()))?;
    let cfg = common::load_config(g)?;
    let (doc, text) = apply(&cfg, &n)?;
    Output::new(g.json).result(&doc, &text);
    Ok(())
}

/// Brings this node in line with VRRP state `n` (for the notify hook and the daemon's FIFO
/// follower alike); returns the result document and a one-line summary.
pub fn apply(cfg: &Config, n: &NotifyArgs) -> Result<(serde_json::Value, String), Failure> {
    let action = action_for(n.state);
    let summary = |done: &[String]| json!({"result": "notified", "state": n.state.to_string(), "instance": n.name, "changes": done});
    if action == Action::Nothing {
        return Ok((
            summary(&[]),
            format!("notify {} {}: nothing to do", n.name, n.state),
        ));
    }
    let state = common::state_dir(cfg)?;
    let _lock = state.lock_wait(LOCK_WAIT)?;
    let mut host = common::system_host(cfg, common::no_interrupts())?;
    let _span = tracing::info_span!("notify", instance = %n.name, state = %n.state).entered();
    let mut holds_vip = false;
    for v in cfg.vips.iter() {
        holds_vip |= host.vip_local(v.address.get())?;
    }
    if is_stale(n.state, holds_vip) {
        let why = if holds_vip {
            "this node holds the VIP"
        } else {
            "this node holds no VIP"
        };
        return Ok((
            summary(&[]),
            format!(
                "notify {} {}: stale ({why}), nothing to do",
                n.name, n.state
            ),
        ));
    }
    let mut done = Vec::new();
    match action {
        Action::Accept => done.extend(accept(cfg, &state, &mut host)?),
        Action::ReleaseAndClear => {
            if n.state == VrrpState::Master {
                // Back as MASTER after an undrain that demoted this node (`return_weight`, so it
                // would not preempt its peer): restore the full priority.
                if let Some(path) = &cfg.failover.track_file {
                    let value = host.read_track_file(path.as_path())?;
                    if value.is_some_and(|v| v < 0 && v > cycle::TRACK_FAULT) {
                        host.write_track_file(path.as_path(), 0)?;
                        done.push(format!(
                            "full priority restored ({} = 0)",
                            path.as_path().display()
                        ));
                    }
                }
            }
            // keepalived stopping (or restarting) on a BACKUP that serves flows diverted to it
            // must not cut them: without the VIP on an interface, the local route is what keeps
            // them alive. Release only once no VIP socket is left; the next BACKUP call (after a
            // restart) finds the state in place, and `release` is there for a node leaving for good.
            let serving = if holds_vip { 0 } else { host.count()?.total };
            if serving > 0 {
                done.push(format!(
                    "acceptance kept: {serving} diverted connection(s) still served here"
                ));
            } else {
                let undone = release(cfg, &state, &mut host)?;
                if undone > 0 {
                    done.push(format!("released {undone} acceptance change(s)"));
                }
            }
            if common::clear_orphaned_divert(cfg, &state, &mut host)? {
                done.push("removed a divert no drain owns".to_string());
            }
        }
        Action::Nothing => {}
    }
    let text = format!(
        "notify {} {}: {}",
        n.name,
        n.state,
        if done.is_empty() {
            "already in line".to_string()
        } else {
            done.join("; ")
        }
    );
    Ok((summary(&done), text))
}

/// A notification that reality has already overtaken (see the module docs).
pub fn is_stale(state: VrrpState, holds_vip: bool) -> bool {
    matches!(
        (state, holds_vip),
        (VrrpState::Backup, true) | (VrrpState::Master, false)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_has_the_documented_action() {
        assert_eq!(action_for(VrrpState::Backup), Action::Accept);
        assert_eq!(action_for(VrrpState::Master), Action::ReleaseAndClear);
        assert_eq!(action_for(VrrpState::Stop), Action::ReleaseAndClear);
        assert_eq!(action_for(VrrpState::Deleted), Action::ReleaseAndClear);
        assert_eq!(action_for(VrrpState::Fault), Action::Nothing);
    }

    #[test]
    fn out_of_order_calls_are_recognised_as_stale() {
        assert!(is_stale(VrrpState::Backup, true));
        assert!(is_stale(VrrpState::Master, false));
        assert!(!is_stale(VrrpState::Backup, false));
        assert!(!is_stale(VrrpState::Master, true));
        assert!(!is_stale(VrrpState::Stop, true) && !is_stale(VrrpState::Stop, false));
    }
}
