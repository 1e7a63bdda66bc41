//! Taking the node back into service: `undrain` finishes an unfinished hand-off, withdraws and
//! removes a divert still in place, and undoes everything the journal records (through
//! [`mod@super::undo`]), the failover trigger last.

use serde::{Deserialize, Serialize};

use super::cycle::{withdraw_and_wait, Cycle};
use super::undo::{cleanup, undo_all};
use super::{Event, Host, HostError, OpError, Policy};
use crate::config::Config;
use crate::journal::{Change, StateDir};
use crate::plan::DivertPlan;

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
    let (plan, policy) = (DivertPlan::new(cfg), Policy::from_config(cfg));
    undrain(
        &mut Cycle::new(h, &mut journal, &plan, &policy, ev),
        opts.keep_link_down,
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
/// tracked interface is brought up unless `keep_link_down`. `return_weight` goes to the track
/// file only if the node left service: a node still MASTER is never demoted.
pub fn undrain(cx: &mut Cycle<'_>, keep_link_down: bool) -> Result<(), OpError> {
    cx.h.firewall().require_tools().map_err(HostError::from)?;
    // A hand-off's divert is its guarded plan: withdrawn as the plain one, its read-back fails
    // and the grace its diverted flows need is skipped.
    let guarded = cx.j.entries().iter().find_map(|e| match &e.change {
        Change::Handoff { peer_mac, .. } => super::handoff::parse_mac(peer_mac),
        _ => None,
    });
    let plan = match guarded {
        Some(mac) => cx.plan.clone().guarded(mac),
        None => cx.plan.clone(),
    };
    let cx = &mut cx.with_plan(&plan);
    // After the failover of a hand-off the VIP is the peer's: no new flow arrives here, so the
    // divert goes without a grace period once the hand-off is finished.
    let handed_off =
        cx.j.entries()
            .iter()
            .any(|e| matches!(e.change, Change::Handoff { .. }))
            && cx
                .j
                .entries()
                .iter()
                .any(|e| e.change.is_maintenance_state());
    super::handoff::finish_handoff(cx)?;
    let save = cx.h.firewall().save_mangle().map_err(HostError::from)?;
    if !cx.plan.existing_chains(&save).is_empty() && !handed_off {
        if trigger_pulled(cx.h, cx.p)? {
            // Killed after pulling the trigger: the VIP is moving to the peer (or has). A flow
            // this node took now would be reset by the peer once it owns the VIP, so new flows
            // keep going there, as the drain's own end would have had it.
            let_the_peer_take_over(cx.h, cx.p)?;
        } else {
            withdraw_and_wait(cx, "undrain: a divert was still installed".into());
            crate::faults::point("undrain.withdrawn");
        }
    }
    if !cx
        .j
        .entries()
        .iter()
        .any(|e| matches!(e.change, Change::Divert { .. }))
    {
        cx.j.record(Change::Divert {
            prefix: cx.plan.prefix().to_string(),
            drop_mangle_table: false,
        })?;
    }
    let Cycle { h, j, plan, p, .. } = cx;
    if keep_link_down {
        return cleanup(*h, j, plan);
    }
    // The track file first, so a preempting node is already demoted (`return_weight`) when its
    // FAULT clears below: it comes back as BACKUP instead of taking the VIP from the peer.
    if let Some(path) = &p.track_file {
        // The demotion is for a node coming back; one that never left (a drain killed before
        // its failover) is MASTER, and demoting it makes a preempting peer take the VIP: the
        // failover undrain exists to avoid, resetting every flow this node serves.
        // keepalived reads a missing file as 0: with `return_weight` 0 (no demotion) a node
        // whose file was never written is left without one, as it was.
        if !still_in_service(*h, p)? && h.read_track_file(path)?.unwrap_or(0) != p.return_weight {
            h.write_track_file(path, p.return_weight)?;
            crate::faults::point("undrain.demoted");
        }
        for e in j.entries().to_vec() {
            if matches!(e.change, Change::TrackFault { .. }) {
                j.forget(&e.change)?;
            }
        }
    }
    undo_all(*h, j, plan)?;
    crate::faults::point("undrain.undone");
    if !h.link_up(&p.tracked_interface)? {
        h.set_link(&p.tracked_interface, true)?;
    }
    Ok(())
}

/// Whether the failover trigger is in effect: the tracked interface down, or FAULT in the
/// track file.
fn trigger_pulled(h: &mut dyn Host, p: &Policy) -> Result<bool, OpError> {
    let faulted = match &p.track_file {
        Some(path) => h
            .read_track_file(path)?
            .is_some_and(|v| v <= super::TRACK_FAULT),
        None => false,
    };
    Ok(faulted || !h.link_up(&p.tracked_interface)?)
}

/// How often [`let_the_peer_take_over`] looks at the VIP's owner.
const TAKEOVER_POLL: std::time::Duration = std::time::Duration::from_millis(20);

/// Waits (up to `failover.timeout`) until the peer owns every VIP, then `post_wait` for the
/// clients whose ARP cache still points here, with the divert in place. Past the timeout the
/// removal follows anyway: keepalived has had the time a drain gives it.
fn let_the_peer_take_over(h: &mut dyn Host, p: &Policy) -> Result<(), OpError> {
    let start = h.now();
    loop {
        let mut owned = true;
        for vip in &p.vips {
            if h.vip_local(*vip)? || !h.peer_owns(*vip)? {
                owned = false;
                break;
            }
        }
        if owned || h.now() - start >= p.failover_timeout {
            break;
        }
        h.sleep(TAKEOVER_POLL);
    }
    let until = h.now() + p.post_wait;
    while h.now() < until {
        h.sleep(
            TAKEOVER_POLL
                .min(until.saturating_sub(h.now()))
                .max(super::MIN_SLEEP),
        );
    }
    Ok(())
}

/// Whether the node never left service: its failover trigger not in effect (the tracked
/// interface up, the track file not FAULT) and a VIP on one of its interfaces (keepalived's
/// MASTER). What the kernel shows decides, not the journal: a drain killed between journalling
/// its trigger and pulling it left a journal that says "out of service" on a node still MASTER.
fn still_in_service(h: &mut dyn Host, p: &Policy) -> Result<bool, OpError> {
    if trigger_pulled(h, p)? {
        return Ok(false);
    }
    for vip in &p.vips {
        if h.vip_local(*vip)? {
            return Ok(true);
        }
    }
    Ok(false)
}
