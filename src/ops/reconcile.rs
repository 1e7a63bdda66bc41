//! Repairing what an interrupted drain left: a divert no running drain owns — the daemon, or a
//! `drain` it ran, was killed — is withdrawn gracefully and removed; the tracked interface is left
//! as it is (a node left drained on purpose stays drained). Used by the daemon on start and by
//! keepalived's notify. The caller holds the state directory's lock, which proves no drain runs.

use serde::Serialize;

use super::{undrain, Cycle, Host, HostError, OpError, Policy};
use crate::config::Config;
use crate::journal::{Change, StateDir};
use crate::plan::DivertPlan;

/// Withdraws gracefully and removes a divert no running drain owns (on the host, or only in the
/// journal), leaving the tracked interface as it is. Returns whether there was one.
pub fn clear_orphaned_divert(
    cfg: &Config,
    state: &StateDir,
    h: &mut dyn Host,
) -> Result<bool, OpError> {
    let mut journal = state.drain_journal()?;
    if journal
        .entries()
        .iter()
        .any(|e| matches!(e.change, Change::Handoff { .. }))
    {
        // A hand-off whose agent died: the node's connections still come back through the peer,
        // so the divert and route stay until `undrain` finishes the hand-off.
        return Ok(false);
    }
    let plan = DivertPlan::new(cfg);
    let save = h.firewall().save_mangle().map_err(HostError::from)?;
    let orphaned = !plan.existing_chains(&save).is_empty()
        || journal
            .entries()
            .iter()
            .any(|e| !e.change.is_maintenance_state());
    if orphaned {
        let policy = Policy::from_config(cfg);
        undrain(
            &mut Cycle::new(h, &mut journal, &plan, &policy, &mut |_| {}),
            true,
        )?;
    }
    Ok(orphaned)
}

/// What the daemon found and did on start.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Reconciled {
    /// A divert left by an interrupted drain was withdrawn and removed.
    pub repaired: bool,
    /// Changes that stay (the node stays drained until `undrain`).
    pub kept: Vec<Change>,
    /// A failover trigger that had come undone (a reboot) and was put back.
    pub reasserted: Option<super::maintenance::Reasserted>,
}

impl Reconciled {
    /// One line per finding, for the log.
    pub fn lines(&self) -> Vec<String> {
        let mut lines = Vec::new();
        if self.repaired {
            lines.push(
                "repaired: a divert left by an interrupted drain was withdrawn and removed"
                    .to_string(),
            );
        }
        lines.extend(
            self.kept
                .iter()
                .map(|c| format!("kept: {c} (the node stays drained until `drain-agent undrain`)")),
        );
        if let Some(r) = &self.reasserted {
            lines.push(format!(
                "reasserted: {} (the journal says the node is out of service, but the trigger had come undone, e.g. by a reboot)",
                r.trigger
            ));
        }
        lines
    }
}

/// The daemon's repair on start.
pub fn reconcile(cfg: &Config, state: &StateDir, h: &mut dyn Host) -> Result<Reconciled, OpError> {
    let repaired = clear_orphaned_divert(cfg, state, h)?;
    let kept = state
        .drain_journal()?
        .entries()
        .iter()
        .map(|e| e.change.clone())
        .collect();
    Ok(Reconciled {
        repaired,
        kept,
        reasserted: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::fake::FakeHost;
    use crate::ops::Netfilter;

    fn cfg() -> Config {
        crate::ops::fake::test_config("80, 7", "")
    }

    #[test]
    fn a_divert_no_drain_owns_is_removed_and_the_link_state_kept() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        let mut h = FakeHost::new();
        let mut j = state.drain_journal().unwrap();
        j.record(Change::LinkDown {
            ifname: "trk0".into(),
        })
        .unwrap();
        crate::ops::divert::install(h.firewall(), &DivertPlan::new(&cfg())).unwrap();
        h.links.insert("trk0".into(), false);
        let r = reconcile(&cfg(), &state, &mut h).unwrap();
        assert!(r.repaired);
        assert_eq!(
            r.kept,
            [Change::LinkDown {
                ifname: "trk0".into()
            }]
        );
        assert!(DivertPlan::new(&cfg())
            .owned_lines(&h.fw.mangle_text())
            .is_empty());
        assert!(!h.links["trk0"], "a drained node stays drained");
        assert_eq!(r.lines().len(), 2);
        // Nothing left to repair the second time.
        assert!(!reconcile(&cfg(), &state, &mut h).unwrap().repaired);
    }
}
