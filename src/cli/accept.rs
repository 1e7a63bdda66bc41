//! `drain-agent accept` / `release`, run on the peer: accept diverted traffic for the VIPs while
//! BACKUP, reversibly. FIELD-NOTES pitfall 5: the BACKUP peer must take packets addressed to the
//! VIP (a `local VIP/32 dev lo` route, no address on any interface) but must not answer ARP for it
//! (`arp_ignore=1`, `arp_announce=2` on the ingress interface), or clients could send established
//! flows to the wrong node.

use clap::Args;
use serde_json::json;

use super::common::{self, Output};
use super::{Failure, GlobalOpts};
use crate::config::Config;
use crate::ops::{self as cycle, Host};
use crate::sys::host::SystemHost;
use crate::sys::journal::{Change, StateDir};

/// Arguments of `accept`.
#[derive(Debug, Args)]
pub struct AcceptArgs {}

/// Arguments of `release`.
#[derive(Debug, Args)]
pub struct ReleaseArgs {}

/// Runs `accept`.
pub fn run_accept(g: &GlobalOpts, _a: &AcceptArgs) -> Result<(), Failure> {
    let cfg = common::load_config(g)?;
    let state = common::state_dir(&cfg)?;
    let _lock = state.lock()?;
    let mut host = common::system_host(&cfg, common::no_interrupts())?;
    let _span = tracing::info_span!("accept").entered();
    let done = accept(&cfg, &state, &mut host)?;
    Output::new(g.json).result(
        &json!({"result": "accepting", "changes": done}),
        &format!(
            "accepting diverted traffic for {} VIP(s)",
            cfg.vips.iter().count()
        ),
    );
    Ok(())
}

/// Makes this node accept diverted traffic for the VIPs (the caller holds the lock). Idempotent:
/// returns the changes this call made (none if already accepting). On failure, undoes them.
pub(super) fn accept(
    cfg: &Config,
    state: &StateDir,
    host: &mut SystemHost,
) -> Result<Vec<String>, Failure> {
    let mut journal = state.accept_journal()?;
    // Fail on a missing ingress interface before changing anything.
    host.link_up(cfg.ingress_interface.as_str())?;
    let plan = crate::plan::PeerPlan::new(cfg);
    let mut done = Vec::new();
    let mut made = Vec::new();
    let result = (|| -> Result<(), Failure> {
        for change in &plan.sysctls {
            let current = host.sysctl_read(&change.key)?;
            if current.trim() == change.value {
                continue;
            }
            let c = Change::Sysctl {
                key: change.key.clone(),
                previous: current.trim().to_string(),
            };
            journal.record(c.clone())?;
            made.push(c);
            host.sysctl_write(&change.key, &change.value)?;
            done.push(format!(
                "{} = {} (was {})",
                change.key,
                change.value,
                current.trim()
            ));
        }
        for vip in &plan.local_routes {
            if journal
                .entries()
                .iter()
                .any(|e| e.change == Change::LocalRoute { addr: *vip })
            {
                continue;
            }
            let c = Change::LocalRoute { addr: *vip };
            journal.record(c.clone())?;
            made.push(c);
            host.local_route(*vip, true)?;
            done.push(format!("local route {vip}/32 dev lo"));
        }
        Ok(())
    })();
    if let Err(f) = result {
        // All or nothing for this call: undo what it made, keep what an earlier accept made.
        let divert = common::plan(cfg);
        for c in made.iter().rev() {
            if cycle::undo(host, &divert, c).is_ok() {
                let _ = journal.forget(c);
            }
        }
        return Err(f);
    }
    Ok(done)
}

/// Runs `release`.
pub fn run_release(g: &GlobalOpts, _a: &ReleaseArgs) -> Result<(), Failure> {
    let cfg = common::load_config(g)?;
    let state = common::state_dir(&cfg)?;
    let _lock = state.lock()?;
    let mut host = common::system_host(&cfg, common::no_interrupts())?;
    let _span = tracing::info_span!("release").entered();
    let n = release(&cfg, &state, &mut host)?;
    Output::new(g.json).result(
        &json!({"result": "released", "undone": n}),
        &format!("released: {n} change(s) undone"),
    );
    Ok(())
}

/// Undoes `accept` (the caller holds the lock); returns how many changes were undone.
pub(super) fn release(
    cfg: &Config,
    state: &StateDir,
    host: &mut SystemHost,
) -> Result<usize, Failure> {
    let mut journal = state.accept_journal()?;
    let n = journal.entries().len();
    cycle::undo_all(host, &mut journal, &common::plan(cfg))?;
    Ok(n)
}
