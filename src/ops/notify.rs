//! keepalived's notify (`drain-agent notify TYPE NAME STATE [PRIORITY]`, and each line of its
//! `vrrp_notify_fifo` in the daemon): brings this node's side of the protocol in line with its
//! VRRP state, idempotently:
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
//! It takes the same lock as every other operation, waiting for it a bounded time ([`LOCK_WAIT`]:
//! a drain finishing, another notify); if a drain holds it past that, exit 6 and nothing changed.
//! A "stale divert" is one no running drain owns: holding the lock proves none runs.

use std::time::Duration;

use serde::Serialize;

use super::peer::{accept, release};
use super::reconcile::clear_orphaned_divert;
use super::{Host, OpError, TRACK_FAULT};
use crate::config::Config;
use crate::journal::StateDir;
use crate::keepalived::{NotifyArgs, VrrpState};

/// How long `notify` waits for another operation to finish before giving up (exit 6).
pub const LOCK_WAIT: Duration = Duration::from_secs(20);

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

/// A notification that reality has already overtaken (see the module docs).
pub fn is_stale(state: VrrpState, holds_vip: bool) -> bool {
    matches!(
        (state, holds_vip),
        (VrrpState::Backup, true) | (VrrpState::Master, false)
    )
}

/// What a notification did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Notified {
    /// The VRRP state notified.
    pub state: String,
    /// The instance or group name.
    pub instance: String,
    /// Why nothing was done, if nothing was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
    /// What was done, one line each.
    pub changes: Vec<String>,
}

impl Notified {
    /// The one line an operator (or keepalived's log) reads.
    pub fn summary(&self) -> String {
        let what = match (&self.skipped, self.changes.is_empty()) {
            (Some(why), _) => why.clone(),
            (None, true) => "already in line".to_string(),
            (None, false) => self.changes.join("; "),
        };
        format!("notify {} {}: {what}", self.instance, self.state)
    }
}

/// Brings this node in line with VRRP state `n`. `open` gives the state directory and the host;
/// it is only called when the state asks for an action (a FAULT needs neither).
pub fn notify(
    cfg: &Config,
    n: &NotifyArgs,
    open: impl FnOnce() -> Result<(StateDir, Box<dyn Host>), OpError>,
) -> Result<Notified, OpError> {
    let mut out = Notified {
        state: n.state.to_string(),
        instance: n.name.clone(),
        skipped: None,
        changes: Vec::new(),
    };
    let action = action_for(n.state);
    if action == Action::Nothing {
        out.skipped = Some("nothing to do".into());
        return Ok(out);
    }
    let (state, mut host) = open()?;
    let h = host.as_mut();
    let _lock = state.lock_wait(LOCK_WAIT)?;
    let mut holds_vip = false;
    for v in cfg.vips.iter() {
        holds_vip |= h.vip_local(v.address.get())?;
    }
    if is_stale(n.state, holds_vip) {
        let why = if holds_vip {
            "this node holds the VIP"
        } else {
            "this node holds no VIP"
        };
        out.skipped = Some(format!("stale ({why}), nothing to do"));
        return Ok(out);
    }
    let done = &mut out.changes;
    match action {
        Action::Accept => done.extend(accept(cfg, &state, h)?.iter().map(ToString::to_string)),
        Action::ReleaseAndClear => {
            if n.state == VrrpState::Master {
                // Back as MASTER after an undrain that demoted this node (`return_weight`, so it
                // would not preempt its peer): restore the full priority.
                if let Some(path) = &cfg.failover.track_file {
                    let value = h.read_track_file(path.as_path())?;
                    if value.is_some_and(|v| v < 0 && v > TRACK_FAULT) {
                        h.write_track_file(path.as_path(), 0)?;
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
            // restart) finds the state in place, and `release` is there for a node leaving for
            // good.
            let serving = if holds_vip { 0 } else { h.count()?.total };
            if serving > 0 {
                done.push(format!(
                    "acceptance kept: {serving} diverted connection(s) still served here"
                ));
            } else {
                let undone = release(cfg, &state, h)?;
                if undone > 0 {
                    done.push(format!("released {undone} acceptance change(s)"));
                }
            }
            if clear_orphaned_divert(cfg, &state, h)? {
                done.push("removed a divert no drain owns".to_string());
            }
        }
        Action::Nothing => {}
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::fake::{Conn, FakeHost};

    fn cfg() -> Config {
        crate::ops::fake::test_config("80", "")
    }

    fn args(state: &str) -> NotifyArgs {
        NotifyArgs::parse(&["INSTANCE".into(), "VI_1".into(), state.into()]).unwrap()
    }

    /// Runs `notify` for `state` against `h`, whose state directory is `dir`.
    fn run(state: &str, dir: &std::path::Path, h: FakeHost) -> Notified {
        notify(&cfg(), &args(state), move || {
            Ok((StateDir::open(dir).unwrap(), Box::new(h) as Box<dyn Host>))
        })
        .unwrap()
    }

    /// A BACKUP node: it holds no VIP.
    fn backup() -> FakeHost {
        let mut h = FakeHost::new();
        h.vip_local_initially = false;
        h
    }

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

    #[test]
    fn fault_needs_neither_host_nor_state() {
        let n = notify(&cfg(), &args("FAULT"), || {
            panic!("FAULT must not open the host")
        })
        .unwrap();
        assert_eq!(n.summary(), "notify VI_1 FAULT: nothing to do");
    }

    #[test]
    fn backup_accepts_and_a_stale_backup_does_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let n = run("BACKUP", dir.path(), backup());
        assert_eq!(n.changes.len(), 3, "{n:?}");
        let state = StateDir::open(dir.path()).unwrap();
        assert_eq!(state.accept_journal().unwrap().entries().len(), 3);
        // The same call while the node holds the VIP: keepalived has moved on.
        let n = run("BACKUP", dir.path(), FakeHost::new());
        assert_eq!(
            n.skipped.as_deref(),
            Some("stale (this node holds the VIP), nothing to do")
        );
    }

    #[test]
    fn stop_keeps_acceptance_while_diverted_connections_are_served() {
        let dir = tempfile::tempdir().unwrap();
        run("BACKUP", dir.path(), backup());
        let mut serving = backup();
        serving.conns = vec![Conn {
            closes_at: None,
            idle: false,
        }];
        let n = run("STOP", dir.path(), serving);
        assert!(n.changes[0].starts_with("acceptance kept: 1"), "{n:?}");
        let n = run("STOP", dir.path(), backup());
        assert_eq!(n.changes, ["released 3 acceptance change(s)"]);
    }

    #[test]
    fn master_releases_and_restores_full_priority() {
        let dir = tempfile::tempdir().unwrap();
        let track = dir.path().join("track");
        let cfg = Config::from_str(
            &format!("vips:\n  - address: 198.18.0.100\n    ports: [80]\ningress_interface: eth0\npeer: 198.18.0.12\ntracked_interface: trk0\nfailover:\n  track_file: {}\n  return_weight: -51\n", track.display()),
            "test",
        )
        .unwrap();
        let mut h = FakeHost::new();
        h.track.insert(track.clone(), -51);
        let state_dir = dir.path().join("state");
        let n = notify(&cfg, &args("MASTER"), || {
            Ok((
                StateDir::open(&state_dir).unwrap(),
                Box::new(h) as Box<dyn Host>,
            ))
        })
        .unwrap();
        assert_eq!(
            n.changes,
            [format!("full priority restored ({} = 0)", track.display())]
        );
    }
}
