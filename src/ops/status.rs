//! `status`: what the agent has changed on this node, read live from the host and from the
//! journals. The rules and sets are found by the planner's exact names and lines, never by a
//! substring.

use std::net::Ipv4Addr;

use serde::Serialize;

use super::{Host, HostError, OpError};
use crate::config::Config;
use crate::journal::{Entry, StateDir};
use crate::plan::{DivertPlan, Phase};

/// What the node is doing, as far as the agent is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// An operation holds the lock.
    Busy,
    /// Rules or sets of ours are in place.
    DivertInstalled,
    /// The tracked interface is down: out of service until `undrain`.
    Drained,
    /// Nothing of ours is in place.
    InService,
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Busy => "busy",
            Mode::DivertInstalled => "divert-installed",
            Mode::Drained => "drained",
            Mode::InService => "in-service",
        })
    }
}

/// The tracked interface.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Tracked {
    /// Its name.
    pub name: String,
    /// Whether it is up.
    pub up: bool,
}

/// One VIP.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct VipState {
    /// The address.
    pub address: Ipv4Addr,
    /// Whether this node holds it.
    pub local: bool,
}

/// The divert in place, as the kernel has it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DivertState {
    /// Which phase its rules show (`null` if they match none: a half-removed divert).
    pub phase: Option<Phase>,
    /// New flows diverted (SYNs).
    pub diverted_flows: u64,
    /// Packets diverted.
    pub diverted_packets: u64,
    /// Distinct flow records.
    pub recorded_flows: u64,
    /// Member sets of the record.
    pub record_members: usize,
    /// Kernel memory of the record, bytes.
    pub record_bytes: u64,
    /// Configured capacity per port.
    pub capacity_per_port: u32,
    /// SYNs that could not be recorded.
    pub unrecorded_syns: u64,
    /// Of those, dropped after the seal.
    pub sealed_drops: u64,
}

/// The status document (`drain-agent status --json`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Status {
    /// What the node is doing.
    pub mode: Mode,
    /// Pid of the operation holding the lock, if any.
    pub lock_holder_pid: Option<String>,
    /// The tracked interface.
    pub tracked_interface: Tracked,
    /// The VIPs.
    pub vips: Vec<VipState>,
    /// Our rule lines in table mangle, as `iptables-save` prints them.
    pub divert_rules: Vec<String>,
    /// Our sets.
    pub divert_sets: Vec<String>,
    /// The divert, if one is in place.
    pub divert: Option<DivertState>,
    /// Changes the drain side recorded and has not undone.
    pub drain_journal: Vec<Entry>,
    /// Changes the accepting side recorded and has not undone.
    pub accept_journal: Vec<Entry>,
    /// The record of the last drain (`last-drain.json`), if any.
    pub last_drain: Option<serde_json::Value>,
}

impl Status {
    /// The text form.
    pub fn text(&self) -> String {
        let mut t = format!(
            "mode: {}\ntracked interface {}: {}\n",
            self.mode,
            self.tracked_interface.name,
            if self.tracked_interface.up {
                "up"
            } else {
                "DOWN"
            }
        );
        for v in &self.vips {
            t.push_str(&format!(
                "VIP {}: {}\n",
                v.address,
                if v.local { "held here" } else { "not here" }
            ));
        }
        if let Some(pid) = &self.lock_holder_pid {
            t.push_str(&format!("operation in progress: pid {pid}\n"));
        }
        t.push_str(&format!(
            "divert: {} rule line(s), {} set(s)\n",
            self.divert_rules.len(),
            self.divert_sets.len()
        ));
        if let Some(d) = &self.divert {
            t.push_str(&format!(
                "divert {}: {} new flow(s) diverted, {} recorded (capacity {} per port, {:.1} MiB), {} SYN(s) unrecorded\n",
                d.phase.map_or("incomplete".to_string(), |p| p.to_string()),
                d.diverted_flows,
                d.recorded_flows,
                d.capacity_per_port,
                d.record_bytes as f64 / f64::from(1 << 20),
                d.unrecorded_syns,
            ));
        }
        t.push_str(&format!(
            "recorded changes: {} (drain), {} (accept)\n",
            self.drain_journal.len(),
            self.accept_journal.len()
        ));
        for e in self.drain_journal.iter().chain(&self.accept_journal) {
            t.push_str(&format!("  {}\n", e.change));
        }
        if let Some(last) = &self.last_drain {
            t.push_str(&format!(
                "last drain: {}",
                last["result"].as_str().unwrap_or("?")
            ));
            if let Some(e) = last["error"].as_str() {
                t.push_str(&format!(" ({e})"));
            }
        }
        t.trim_end().to_string()
    }
}

/// Reads the node's state.
pub fn status(cfg: &Config, state: &StateDir, h: &mut dyn Host) -> Result<Status, OpError> {
    let plan = DivertPlan::new(cfg);
    let save = h.firewall().save_mangle().map_err(HostError::from)?;
    let divert_rules = plan.owned_lines(&save);
    let divert_sets = plan.existing_sets(&h.firewall().ipset_names().map_err(HostError::from)?);
    let divert = divert_state(h, &plan, &save);
    let tracked_up = h.link_up(cfg.tracked_interface.as_str())?;
    let mut vips = Vec::new();
    for v in cfg.vips.iter() {
        vips.push(VipState {
            address: v.address.get(),
            local: h.vip_local(v.address.get())?,
        });
    }
    let lock_holder_pid = state.lock_holder();
    let mode = if lock_holder_pid.is_some() {
        Mode::Busy
    } else if !divert_rules.is_empty() || !divert_sets.is_empty() {
        Mode::DivertInstalled
    } else if !tracked_up {
        Mode::Drained
    } else {
        Mode::InService
    };
    Ok(Status {
        mode,
        lock_holder_pid,
        tracked_interface: Tracked {
            name: cfg.tracked_interface.as_str().to_string(),
            up: tracked_up,
        },
        vips,
        divert_rules,
        divert_sets,
        divert,
        drain_journal: state.drain_journal()?.entries().to_vec(),
        accept_journal: state.accept_journal()?.entries().to_vec(),
        last_drain: state.last_drain(),
    })
}

/// The divert as the kernel has it now; `None` when none is there.
fn divert_state(h: &mut dyn Host, plan: &DivertPlan, saved: &str) -> Option<DivertState> {
    if plan.existing_chains(saved).is_empty() {
        return None;
    }
    let fw = h.firewall();
    let stats = fw
        .ipset_list_terse()
        .map(|t| plan.record_stats(&t))
        .unwrap_or_default();
    let counters = super::divert::counters(fw, plan).unwrap_or_default();
    Some(DivertState {
        phase: plan.observed_phase(saved),
        diverted_flows: counters.diverted_syns,
        diverted_packets: counters.diverted_packets,
        recorded_flows: stats.entries(),
        record_members: stats.members(),
        record_bytes: stats.bytes(),
        capacity_per_port: plan.capacity(),
        unrecorded_syns: counters.unrecorded_syns(),
        sealed_drops: counters.sealed_drops,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::fake::FakeHost;
    use crate::sys::firewall::Firewall;

    fn cfg() -> Config {
        crate::ops::fake::test_config("80", "")
    }

    #[test]
    fn a_node_in_service_then_with_a_divert_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        let mut h = FakeHost::new();
        let s = status(&cfg(), &state, &mut h).unwrap();
        assert_eq!(s.mode, Mode::InService);
        assert!(s.divert.is_none() && s.divert_rules.is_empty());
        assert!(s.text().starts_with("mode: in-service\n"), "{}", s.text());
        let plan = DivertPlan::new(&cfg());
        crate::ops::divert::install(h.firewall(), &plan).unwrap();
        h.fw.inner.syns(80, 10);
        // A user rule that merely mentions our prefix is not ours.
        h.fw.inner
            .restore(
                "*mangle\n-A PREROUTING -p udp -m comment --comment DRAIN-80 -j ACCEPT\nCOMMIT\n",
            )
            .unwrap();
        let s = status(&cfg(), &state, &mut h).unwrap();
        assert_eq!(s.mode, Mode::DivertInstalled);
        assert_eq!(s.divert_rules, plan.owned_lines(&h.fw.inner.mangle_text()));
        assert!(!s.divert_rules.iter().any(|l| l.contains("comment")));
        let d = s.divert.unwrap();
        assert_eq!(d.phase, Some(Phase::Installed));
        assert_eq!((d.diverted_flows, d.recorded_flows), (10, 10));
        let json = serde_json::to_value(status(&cfg(), &state, &mut h).unwrap()).unwrap();
        assert_eq!(json["mode"], "divert-installed");
        assert_eq!(json["divert"]["phase"], "installed");
        assert_eq!(json["vips"][0]["address"], "198.18.0.100");
    }
}
