//! Maintenance mode: an operator takes the node out of service on purpose, for a reason, and it
//! stays out — across agent restarts and reboots — until they bring it back.
//!
//! `on` drains the node (or hands it off) and records who, when and why in the state directory
//! (`maintenance.json`); `off` undoes the drain and clears the record; `status` reads it. After a
//! reboot the tracked interface comes back up (and the track file may be rewritten by whoever
//! provisions the node), while the journal still says the node was taken out of service: the
//! daemon, which starts before keepalived, puts the failover trigger back ([`reassert`]), so the
//! node does not quietly take the VIP back, and `status` says what happened.

use serde::{Deserialize, Serialize};

use super::drain::{self, DrainOptions};
use super::error::{ConfigProblem, PeerProblem};
use super::undrain::{self, UndrainOptions, Undrained};
use super::{DrainReport, Event, Host, OpError, TRACK_FAULT};
use crate::config::Config;
use crate::journal::{Change, StateDir};

pub use crate::journal::Maintenance;

/// `maintenance off`'s arguments.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MaintenanceOffRequest {
    /// The undrain's options.
    #[serde(flatten)]
    pub undrain: UndrainOptions,
    /// Then ask the peer to drain itself, so the VIPs come back here.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub failback: bool,
}

/// `maintenance on`'s arguments.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MaintenanceRequest {
    /// Why.
    pub reason: String,
    /// Who asked (the daemon adds the connection's uid).
    pub by: String,
    /// The drain's overrides.
    #[serde(default)]
    pub drain: DrainOptions,
}

/// What `maintenance on` did.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "result", rename = "maintenance-on")]
pub struct MaintenanceOn {
    /// The record.
    pub maintenance: Maintenance,
    /// The drain that took the node out of service (`None`: it was out of service already, or
    /// held no VIP).
    pub drain: Option<DrainReport>,
    /// A node that held no VIP (the pair's BACKUP) is kept out of elections instead of drained:
    /// the failover trigger it pulled.
    pub standby: Option<String>,
}

impl MaintenanceOn {
    /// The line an operator reads.
    pub fn summary(&self) -> String {
        match (&self.drain, &self.standby) {
            (Some(d), _) => format!(
                "in maintenance ({}): {}",
                self.maintenance.reason,
                d.summary()
            ),
            (None, Some(trigger)) => format!(
                "in maintenance ({}): the node held no VIP, so nothing was drained; {trigger}: keepalived cannot elect it, and it no longer accepts its peer's drains, until `maintenance off`",
                self.maintenance.reason
            ),
            (None, None) => format!(
                "in maintenance ({}); the node was already out of service",
                self.maintenance.reason
            ),
        }
    }
}

/// What `maintenance off` did.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "result", rename = "maintenance-off")]
pub struct MaintenanceOff {
    /// The record that was cleared (`None`: the node was not in maintenance).
    pub was: Option<Maintenance>,
    /// The undrain.
    pub undrained: Undrained,
    /// With `--failback`: what the peer reported of its drain and undrain.
    pub failed_back: Option<String>,
}

impl MaintenanceOff {
    /// The line an operator reads.
    pub fn summary(&self) -> String {
        let back = match &self.was {
            Some(m) => format!(
                "maintenance over (was: {}, by {}); {}",
                m.reason,
                m.by,
                self.undrained.summary()
            ),
            None => format!("not in maintenance; {}", self.undrained.summary()),
        };
        match &self.failed_back {
            Some(f) => format!("{back}; failed back: {f}"),
            None => back,
        }
    }
}

/// `maintenance on`: drains the node unless it is out of service already, then records the
/// maintenance. Idempotent: a node already in maintenance keeps its first record (the reason is
/// not overwritten by a retry).
pub fn on(
    cfg: &Config,
    state: &StateDir,
    h: &mut dyn Host,
    req: &MaintenanceRequest,
    ev: &mut dyn FnMut(Event),
) -> Result<MaintenanceOn, OpError> {
    let (reason, by, opts) = (&req.reason, &req.by, &req.drain);
    if reason.trim().is_empty() {
        return Err(OpError::Config(ConfigProblem::MaintenanceNeedsReason));
    }
    if let Some(m) = state.maintenance()? {
        return Ok(MaintenanceOn {
            maintenance: m,
            drain: None,
            standby: None,
        });
    }
    let out_of_service = state
        .drain_journal()?
        .entries()
        .iter()
        .any(|e| e.change.is_maintenance_state());
    let policy = super::Policy::from_config(cfg);
    let mut holds_none = true;
    for vip in &policy.vips {
        holds_none &= !h.vip_local(*vip)?;
    }
    let (drain, standby) = if out_of_service {
        (None, None)
    } else if holds_none {
        (None, Some(stand_by(cfg, state, h, &policy, ev)?))
    } else {
        (Some(drain::run(cfg, opts, state, h, ev)?), None)
    };
    crate::faults::point("maintenance.drained");
    let m = Maintenance {
        reason: reason.trim().to_string(),
        by: by.to_string(),
        since: h.unix_now(),
        drained: drain.is_some(),
    };
    state.set_maintenance(Some(&m))?;
    Ok(MaintenanceOn {
        maintenance: m,
        drain,
        standby,
    })
}

/// `maintenance on` for a node that holds no VIP (the pair's BACKUP): there is nothing to drain,
/// but while its services are down it must neither be elected (the peer failing would hand it the
/// VIPs) nor take its peer's drain. So it stops accepting the peer's diverts (`release`: the peer's
/// preflight then refuses to drain, exit 5, nothing changed) and pulls its failover trigger,
/// journalled like a drain's, so keepalived holds it in FAULT. `off` undoes both: the trigger
/// by `undrain`, the accept by keepalived's BACKUP notify.
fn stand_by(
    cfg: &Config,
    state: &StateDir,
    h: &mut dyn Host,
    p: &super::Policy,
    ev: &mut dyn FnMut(Event),
) -> Result<String, OpError> {
    let _lock = state.lock()?;
    h.link_up(&p.tracked_interface)?;
    for vip in &p.vips {
        if h.vip_local(*vip)? {
            return Err(OpError::StateChanged { vip: *vip });
        }
    }
    super::peer::release(cfg, state, h)?;
    let mut journal = state.drain_journal()?;
    let trigger = super::cycle::pull_trigger(h, &mut journal, p)?;
    ev(Event::FailoverTriggered {
        trigger: trigger.clone(),
    });
    Ok(trigger)
}

/// `maintenance off`: undoes the drain and clears the record. A drain in progress holds the lock,
/// so `off` is refused then (exit 6) and changes nothing. With `failback`, then asks the peer's
/// agent (peer link) to drain itself the way `drain.mode` says and come back as BACKUP, so the
/// VIPs return here without breaking a connection — in a preempting pair as in one without.
pub fn off(
    cfg: &Config,
    state: &StateDir,
    h: &mut dyn Host,
    req: &MaintenanceOffRequest,
    ev: &mut dyn FnMut(Event),
) -> Result<MaintenanceOff, OpError> {
    let (opts, failback) = (&req.undrain, req.failback);
    if failback && cfg.handoff.is_none() {
        return Err(OpError::Config(ConfigProblem::FailbackNeedsPeerLink));
    }
    let was = state.maintenance()?;
    let undrained = undrain::run(cfg, opts, state, h, ev)?;
    crate::faults::point("maintenance.undrained");
    state.set_maintenance(None)?;
    let failed_back = if failback {
        Some(ask_failback(cfg, h, ev)?)
    } else {
        None
    };
    Ok(MaintenanceOff {
        was,
        undrained,
        failed_back,
    })
}

/// How long this node waits to be ready for the failback (keepalived BACKUP, accepting the VIPs:
/// the peer's preflight probes it) before giving up.
const FAILBACK_READY_WITHIN: std::time::Duration = std::time::Duration::from_secs(20);
/// Between two failback requests the peer refused because this node was not ready yet.
const FAILBACK_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

fn ask_failback(
    cfg: &Config,
    h: &mut dyn Host,
    ev: &mut dyn FnMut(Event),
) -> Result<String, OpError> {
    let req = super::handoff::PeerRequest::Failback {
        mode: cfg.drain.mode,
    };
    let until = h.now() + FAILBACK_READY_WITHIN;
    loop {
        match h.peer_agent(&req) {
            Ok(super::handoff::PeerReply::Ok { detail }) => {
                ev(Event::FailedBack {
                    detail: detail.clone(),
                });
                return Ok(detail);
            }
            // The peer refuses while this node is not ready to take the VIPs (keepalived not
            // BACKUP yet, not accepting yet): its preflight changed nothing, so ask again.
            Ok(super::handoff::PeerReply::Refused { reason }) if h.now() < until => {
                tracing::info!("failback: {reason}; asking again");
                h.sleep(FAILBACK_RETRY);
            }
            Ok(super::handoff::PeerReply::Refused { reason }) => {
                return Err(OpError::PeerNotReady(PeerProblem::FailbackRefused {
                    reason,
                }))
            }
            Err(error) => {
                return Err(OpError::PeerNotReady(PeerProblem::FailbackUnanswered {
                    error,
                }))
            }
        }
    }
}

/// The peer's side of a failback: drain this node (`mode`) and bring it back as BACKUP. Returns
/// the line to answer with.
pub fn fail_back_here(
    cfg: &Config,
    state: &StateDir,
    h: &mut dyn Host,
    mode: crate::config::DrainMode,
) -> Result<String, OpError> {
    let opts = DrainOptions {
        mode: Some(mode),
        ..DrainOptions::default()
    };
    let report = drain::run(cfg, &opts, state, h, &mut |_| {})?;
    let undrained = undrain::run(cfg, &UndrainOptions::default(), state, h, &mut |_| {})?;
    Ok(format!("{}; {}", report.summary(), undrained.summary()))
}

/// What [`reassert`] found and did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Reasserted {
    /// The failover trigger that had come undone (a reboot brings the tracked interface up).
    pub trigger: String,
}

/// On the daemon's start: if the journal says the node was taken out of service but the trigger
/// is no longer in effect (the tracked interface is up again, or the track file no longer says
/// FAULT — a reboot), puts it back, so the node does not take the VIP back on its own.
pub fn reassert(
    cfg: &Config,
    state: &StateDir,
    h: &mut dyn Host,
) -> Result<Option<Reasserted>, OpError> {
    let journal = state.drain_journal()?;
    // After a reboot the daemon starts before keepalived: no VIP here yet. A node that holds
    // one is MASTER and serving, with a trigger journalled by a drain killed before it pulled
    // it: pulling it now would fail over its flows. It stays as it is, for `undrain`.
    for v in cfg.vips.iter() {
        if h.vip_local(v.address.get())? {
            return Ok(None);
        }
    }
    for e in journal.entries() {
        match &e.change {
            Change::LinkDown { ifname } if h.link_up(ifname)? => {
                h.set_link(ifname, false)?;
                return Ok(Some(Reasserted {
                    trigger: format!("{ifname} down"),
                }));
            }
            Change::TrackFault { path }
                if h.read_track_file(path)?.is_none_or(|v| v > TRACK_FAULT) =>
            {
                h.write_track_file(path, TRACK_FAULT)?;
                return Ok(Some(Reasserted {
                    trigger: format!("track file {} = {TRACK_FAULT}", path.display()),
                }));
            }
            _ => {}
        }
    }
    Ok(None)
}
