//! `accept` and `release`, on the peer: accept diverted traffic for the VIPs while BACKUP,
//! reversibly. docs/kernel-facts.md#k5: the BACKUP peer must take packets addressed to the VIP (a
//! `local VIP/32 dev lo` route, no address on any interface) but must not answer ARP for it
//! (`arp_ignore=1`, `arp_announce=2` on the ingress interface), or clients could send established
//! flows to the wrong node. The caller holds the state directory's lock.

use serde::Serialize;

use super::{undo, undo_all, Host, OpError};
use crate::config::Config;
use crate::journal::{Change, Journal, StateDir};
use crate::plan::{DivertPlan, PeerPlan};

/// One change `accept` made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Accepted {
    /// A sysctl set, with the value it had.
    Sysctl {
        /// Key relative to /proc/sys.
        key: String,
        /// The new value.
        value: String,
        /// The value before.
        previous: String,
    },
    /// A `local VIP/32 dev lo` route added.
    LocalRoute {
        /// The VIP.
        vip: std::net::Ipv4Addr,
    },
}

impl std::fmt::Display for Accepted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Accepted::Sysctl {
                key,
                value,
                previous,
            } => write!(f, "{key} = {value} (was {previous})"),
            Accepted::LocalRoute { vip } => write!(f, "local route {vip}/32 dev lo"),
        }
    }
}

impl Serialize for Accepted {
    /// As the one line an operator reads.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Makes this node accept diverted traffic for the VIPs. Idempotent: returns the changes this
/// call made (none if already accepting). All or nothing for this call: on failure, undoes what
/// it made and keeps what an earlier `accept` made.
pub fn accept(cfg: &Config, state: &StateDir, h: &mut dyn Host) -> Result<Vec<Accepted>, OpError> {
    let mut journal = state.accept_journal()?;
    accept_into(cfg, &mut journal, h)
}

/// Makes this node accept traffic for the VIPs it does not own, recording each change in
/// `journal` first (the accept journal, or the drain journal of a hand-off, whose node keeps
/// serving its own connections after the VIP has moved). All or nothing, as [`accept`].
pub(crate) fn accept_into(
    cfg: &Config,
    journal: &mut Journal,
    h: &mut dyn Host,
) -> Result<Vec<Accepted>, OpError> {
    // Fail on a missing ingress interface before changing anything.
    h.link_up(cfg.ingress_interface.as_str())?;
    let plan = PeerPlan::new(cfg);
    let mut done = Vec::new();
    let mut made = Vec::new();
    let result = (|| -> Result<(), OpError> {
        for change in &plan.sysctls {
            let current = h.sysctl_read(&change.key)?;
            let current = current.trim();
            if current == change.value {
                continue;
            }
            let c = Change::Sysctl {
                key: change.key.clone(),
                previous: current.to_string(),
            };
            journal.record(c.clone())?;
            made.push(c);
            crate::faults::point("accept.sysctl-journalled");
            h.sysctl_write(&change.key, &change.value)?;
            crate::faults::point("accept.sysctl-set");
            done.push(Accepted::Sysctl {
                key: change.key.clone(),
                value: change.value.clone(),
                previous: current.to_string(),
            });
        }
        for vip in &plan.local_routes {
            let c = Change::LocalRoute { addr: *vip };
            if journal.entries().iter().any(|e| e.change == c) {
                continue;
            }
            journal.record(c.clone())?;
            made.push(c);
            crate::faults::point("accept.route-journalled");
            h.local_route(*vip, true)?;
            crate::faults::point("accept.route-added");
            done.push(Accepted::LocalRoute { vip: *vip });
        }
        Ok(())
    })();
    if let Err(e) = result {
        let divert = DivertPlan::new(cfg);
        for c in made.iter().rev() {
            if undo(h, &divert, c).is_ok() {
                let _ = journal.forget(c);
            }
        }
        return Err(e);
    }
    Ok(done)
}

/// Undoes `accept`; returns how many changes were undone.
pub fn release(cfg: &Config, state: &StateDir, h: &mut dyn Host) -> Result<usize, OpError> {
    let mut journal = state.accept_journal()?;
    let n = journal.entries().len();
    undo_all(h, &mut journal, &DivertPlan::new(cfg))?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::fake::FakeHost;

    fn cfg() -> Config {
        crate::ops::fake::test_config("80", "")
    }

    #[test]
    fn accept_is_idempotent_and_release_restores_every_value() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        let mut h = FakeHost::new();
        h.sysctls
            .insert("net/ipv4/conf/eth0/arp_ignore".into(), "0".into());
        h.sysctls
            .insert("net/ipv4/conf/eth0/arp_announce".into(), "1".into());
        let done = accept(&cfg(), &state, &mut h).unwrap();
        assert_eq!(
            done.iter().map(ToString::to_string).collect::<Vec<_>>(),
            [
                "net/ipv4/conf/eth0/arp_ignore = 1 (was 0)",
                "net/ipv4/conf/eth0/arp_announce = 2 (was 1)",
                "local route 198.18.0.100/32 dev lo"
            ]
        );
        assert!(h.routes.contains(&"198.18.0.100".parse().unwrap()));
        assert!(
            accept(&cfg(), &state, &mut h).unwrap().is_empty(),
            "idempotent"
        );
        assert_eq!(release(&cfg(), &state, &mut h).unwrap(), 3);
        assert_eq!(h.sysctls["net/ipv4/conf/eth0/arp_ignore"], "0");
        assert_eq!(h.sysctls["net/ipv4/conf/eth0/arp_announce"], "1");
        assert!(h.routes.is_empty());
        assert_eq!(release(&cfg(), &state, &mut h).unwrap(), 0);
    }

    #[test]
    fn a_failed_accept_undoes_what_it_made() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        let mut h = FakeHost::new();
        h.fail_op = Some("route".into());
        assert!(accept(&cfg(), &state, &mut h).is_err());
        assert!(h.routes.is_empty());
        assert_eq!(h.sysctls["net/ipv4/conf/eth0/arp_ignore"], "0");
        // The route's undo failed the same way, so the journal keeps it for the next release.
        let left: Vec<Change> = state
            .accept_journal()
            .unwrap()
            .entries()
            .iter()
            .map(|e| e.change.clone())
            .collect();
        assert_eq!(
            left,
            [Change::LocalRoute {
                addr: "198.18.0.100".parse().unwrap()
            }]
        );
        h.fail_op = None;
        release(&cfg(), &state, &mut h).unwrap();
        assert!(state.accept_journal().unwrap().entries().is_empty());
    }

    #[test]
    fn a_missing_ingress_interface_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        let mut h = FakeHost::new();
        h.links.remove("eth0");
        let err = accept(&cfg(), &state, &mut h).unwrap_err();
        assert_eq!(err.exit_code(), crate::ops::exit::ENVIRONMENT);
        assert!(h.sysctls.is_empty());
    }
}
