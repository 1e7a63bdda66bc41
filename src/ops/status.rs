//! `status`: what the agent has changed on this node, read live from the host and from the
//! journals. The rules and sets are found by the planner's exact names and lines, never by a
//! substring.

use std::net::Ipv4Addr;

use serde::Serialize;

use super::{Host, HostError, Netfilter, OpError};
use crate::config::Config;
use crate::journal::{Change, Entry, Journal, JournalError, StateDir};
use crate::plan::{DivertPlan, Phase};

/// What the node is doing, as far as the agent is concerned (first match wins, in this order).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// An operator put it in maintenance (`maintenance on`): out of service until `off`.
    Maintenance,
    /// A drain (or hand-off) is running: it holds the lock and has changed the host.
    Draining,
    /// Another operation holds the lock (accept, release, notify, undrain).
    Busy,
    /// Failed over in a hand-off: the peer returns this node's remaining connections to it.
    HandingOff,
    /// Returning the peer's connections to it during the peer's hand-off.
    Returning,
    /// A divert is in place with no drain running (an interrupted drain: `undrain` clears it).
    Diverting,
    /// Failed over (tracked interface down or track file FAULT): out of service until `undrain`.
    FailedOver,
    /// Nothing of ours is in place.
    Serving,
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Maintenance => "in maintenance",
            Mode::Draining => "draining",
            Mode::Busy => "busy",
            Mode::HandingOff => "handing off",
            Mode::Returning => "returning the peer's hand-off",
            Mode::Diverting => "diverting",
            Mode::FailedOver => "failed over",
            Mode::Serving => "serving",
        })
    }
}

pub use crate::journal::VrrpSeen;

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
    /// Unix time (s) since which it is doing it (`null` when serving).
    pub since: Option<u64>,
    /// The maintenance record, when in maintenance.
    pub maintenance: Option<crate::journal::Maintenance>,
    /// Set when the journal says the node was taken out of service but the trigger is not in
    /// effect (a reboot brings the tracked interface back up): what is really true.
    pub trigger_undone: Option<String>,
    /// keepalived's state as the agent last saw it.
    pub vrrp: Option<VrrpSeen>,
    /// The node's connections on the VIP ports (`null` if they could not be counted).
    pub sockets: Option<super::SocketCount>,
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
    /// The return path of the peer's hand-off, as the kernel has it.
    pub returning: Option<DivertState>,
    /// Changes the peer side of a hand-off recorded (the return path).
    pub return_journal: Vec<Entry>,
    /// The record of the last drain (`last-drain.json`), if any.
    pub last_drain: Option<serde_json::Value>,
    /// The state files that could not be read (a truncated or damaged journal), one line each
    /// with the repair. Their entries are missing above; drains are refused until they are
    /// repaired. Empty when every file was read.
    pub state_errors: Vec<String>,
}

impl Status {
    /// The text form.
    pub fn text(&self) -> String {
        let mut t = String::new();
        for e in &self.state_errors {
            t.push_str(&format!("WARNING: {e}\n"));
        }
        t.push_str(&format!("mode: {}", self.mode));
        if let Some(since) = self.since {
            t.push_str(&format!(" since {}", fmt_unix(since)));
        }
        t.push('\n');
        if let Some(m) = &self.maintenance {
            t.push_str(&format!("maintenance: {} (by {})\n", m.reason, m.by));
        }
        if let Some(u) = &self.trigger_undone {
            t.push_str(&format!("WARNING: {u}\n"));
        }
        t.push_str(&format!(
            "tracked interface {}: {}\n",
            self.tracked_interface.name,
            if self.tracked_interface.up {
                "up"
            } else {
                "DOWN"
            }
        ));
        if let Some(v) = &self.vrrp {
            t.push_str(&format!(
                "VRRP {}: {} (seen {})\n",
                v.instance,
                v.state,
                fmt_unix(v.at)
            ));
        }
        for v in &self.vips {
            t.push_str(&format!(
                "VIP {}: {}\n",
                v.address,
                if v.local { "held here" } else { "not here" }
            ));
        }
        if let Some(c) = &self.sockets {
            let states: Vec<String> = c.by_state.iter().map(|(k, n)| format!("{k} {n}")).collect();
            t.push_str(&format!(
                "connections on the VIP ports: {} ({} idle){}\n",
                c.total,
                c.idle,
                if states.is_empty() {
                    String::new()
                } else {
                    format!(": {}", states.join(", "))
                }
            ));
        }
        if let Some(pid) = &self.lock_holder_pid {
            t.push_str(&format!("operation in progress: pid {pid}\n"));
        }
        if let Some(d) = &self.divert {
            t.push_str(&format!(
                "divert {}: {} new flow(s) diverted ({} packets), {} recorded (capacity {} per port, {:.1} MiB), {} SYN(s) unrecorded\n",
                d.phase.map_or("incomplete".to_string(), |p| p.to_string()),
                d.diverted_flows,
                d.diverted_packets,
                d.recorded_flows,
                d.capacity_per_port,
                d.record_bytes as f64 / f64::from(1 << 20),
                d.unrecorded_syns,
            ));
        } else {
            t.push_str("divert: none\n");
        }
        if let Some(d) = &self.returning {
            t.push_str(&format!(
                "return path (peer's hand-off): {} packet(s) returned, {} flow(s) recorded here\n",
                d.diverted_packets, d.recorded_flows
            ));
        }
        t.push_str(&format!(
            "recorded changes: {} (drain), {} (accept), {} (return)\n",
            self.drain_journal.len(),
            self.accept_journal.len(),
            self.return_journal.len()
        ));
        for e in self
            .drain_journal
            .iter()
            .chain(&self.accept_journal)
            .chain(&self.return_journal)
        {
            t.push_str(&format!("  {}\n", e.change));
        }
        if let Some(last) = &self.last_drain {
            t.push_str(&format!(
                "last drain: {}",
                last["result"].as_str().unwrap_or("?")
            ));
            if let Some(r) = last["report"].as_object() {
                t.push_str(&format!(
                    " ({}, {} after {:.1} s, {} left)",
                    r.get("mode").and_then(|m| m.as_str()).unwrap_or("drain"),
                    r.get("reason").and_then(|m| m.as_str()).unwrap_or("?"),
                    r.get("drain_ms").and_then(|m| m.as_f64()).unwrap_or(0.0) / 1000.0,
                    r.get("abandoned").and_then(|m| m.as_u64()).unwrap_or(0),
                ));
            }
            if let Some(e) = last["error"].as_str() {
                t.push_str(&format!(" ({e})"));
            }
        }
        t.trim_end().to_string()
    }
}

/// `2026-12-01 03:12:44 UTC`-style time for a Unix timestamp (UTC, no time zone database).
pub fn fmt_unix(secs: u64) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Reads the node's state.
///
/// A state file that cannot be read does not fail it: status is what an operator runs to find
/// out what is wrong, and the daemon answers it whatever the journals hold. Such a file is
/// reported in [`Status::state_errors`] and counts as empty here; what the kernel shows (rules,
/// sets, links, VIPs) is read as always.
pub fn status(cfg: &Config, state: &StateDir, h: &mut dyn Host) -> Result<Status, OpError> {
    let mut state_errors = Vec::new();
    let mut readable = |r: Result<Journal, JournalError>| match r {
        Ok(j) => Some(j),
        Err(e) => {
            state_errors.push(e.to_string());
            None
        }
    };
    let drain = readable(state.drain_journal());
    let accept = readable(state.accept_journal());
    let returns = readable(state.return_journal());
    let entries = |j: &Option<Journal>| j.as_ref().map_or_else(Vec::new, |j| j.entries().to_vec());
    let (drain_journal, accept_journal, return_journal) =
        (entries(&drain), entries(&accept), entries(&returns));
    let maintenance = state.maintenance().unwrap_or_else(|e| {
        state_errors.push(e.to_string());
        None
    });
    let handoff_mac = drain_journal.iter().find_map(|e| match &e.change {
        Change::Handoff { peer_mac, .. } => super::handoff::parse_mac(peer_mac),
        _ => None,
    });
    let plan = match handoff_mac {
        Some(mac) => DivertPlan::new(cfg).guarded(mac),
        None => DivertPlan::new(cfg),
    };
    let save = h.firewall().save_mangle().map_err(HostError::from)?;
    let divert_rules = plan.owned_lines(&save);
    let divert_sets = plan.existing_sets(&h.firewall().ipset_names().map_err(HostError::from)?);
    let divert = divert_state(h, &plan, &save);
    let returning = returns
        .as_ref()
        .and_then(super::handoff::Returning::recorded)
        .and_then(|r| divert_state(h, &r.plan(cfg), &save));
    let tracked_up = h.link_up(cfg.tracked_interface.as_str())?;
    let mut vips = Vec::new();
    for v in cfg.vips.iter() {
        vips.push(VipState {
            address: v.address.get(),
            local: h.vip_local(v.address.get())?,
        });
    }
    let trigger_undone = trigger_undone(h, &drain_journal)?;
    let lock_holder_pid = state.lock_holder();
    let oldest = |j: &[Entry]| j.iter().map(|e| e.at).min();
    let ours_in_place = !divert_rules.is_empty() || !divert_sets.is_empty();
    let handing_off = drain_journal
        .iter()
        .any(|e| matches!(e.change, Change::Handoff { .. }));
    let failed_over = drain_journal
        .iter()
        .any(|e| e.change.is_maintenance_state());
    let (mode, since) = if let Some(m) = &maintenance {
        (Mode::Maintenance, Some(m.since))
    } else if lock_holder_pid.is_some() && (ours_in_place || !drain_journal.is_empty()) {
        (Mode::Draining, oldest(&drain_journal))
    } else if lock_holder_pid.is_some() {
        (Mode::Busy, None)
    } else if handing_off {
        (Mode::HandingOff, oldest(&drain_journal))
    } else if !return_journal.is_empty() {
        (Mode::Returning, oldest(&return_journal))
    } else if ours_in_place {
        (Mode::Diverting, oldest(&drain_journal))
    } else if failed_over || !tracked_up {
        (Mode::FailedOver, oldest(&drain_journal))
    } else {
        (Mode::Serving, None)
    };
    Ok(Status {
        mode,
        since,
        maintenance,
        trigger_undone,
        vrrp: state.last_vrrp(),
        sockets: h.count().ok(),
        lock_holder_pid,
        tracked_interface: Tracked {
            name: cfg.tracked_interface.as_str().to_string(),
            up: tracked_up,
        },
        vips,
        divert_rules,
        divert_sets,
        divert,
        drain_journal,
        accept_journal,
        returning,
        return_journal,
        last_drain: state.last_drain(),
        state_errors,
    })
}

/// What the journal says was done to take the node out of service but is not in effect now.
fn trigger_undone(h: &mut dyn Host, journal: &[Entry]) -> Result<Option<String>, OpError> {
    for e in journal {
        match &e.change {
            Change::LinkDown { ifname } if h.link_up(ifname)? => {
                return Ok(Some(format!(
                    "the journal says {ifname} was set down (at {}), but it is up: the node was rebooted or someone brought it up; keepalived may take the VIP back (`drain-agent run` puts it down again on start; `undrain` clears the journal)",
                    fmt_unix(e.at)
                )));
            }
            Change::TrackFault { path }
                if h.read_track_file(path)?
                    .is_none_or(|v| v > super::TRACK_FAULT) =>
            {
                return Ok(Some(format!(
                    "the journal says FAULT was written to {} (at {}), but the file no longer says so; keepalived may take the VIP back",
                    path.display(),
                    fmt_unix(e.at)
                )));
            }
            _ => {}
        }
    }
    Ok(None)
}

/// The divert as the kernel has it now; `None` when none is there.
fn divert_state(h: &mut dyn Netfilter, plan: &DivertPlan, saved: &str) -> Option<DivertState> {
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
    fn a_corrupt_journal_is_reported_and_the_kernel_state_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        let mut h = FakeHost::new();
        let plan = DivertPlan::new(&cfg());
        crate::ops::divert::install(h.firewall(), &plan).unwrap();
        // Truncated mid-write by a full disk, say: what it recorded is unknown.
        std::fs::write(dir.path().join("drain-journal.json"), "[{\"at\":17").unwrap();
        let s = status(&cfg(), &state, &mut h).unwrap();
        assert_eq!(s.state_errors.len(), 1, "{:?}", s.state_errors);
        assert!(
            s.state_errors[0].contains("drain-journal.json")
                && s.state_errors[0].contains("corrupt"),
            "{:?}",
            s.state_errors
        );
        assert_eq!(
            s.mode,
            Mode::Diverting,
            "the rules in the kernel still show"
        );
        assert_eq!(s.divert_rules, plan.owned_lines(&h.fw.mangle_text()));
        let text = s.text();
        assert!(text.starts_with("WARNING: journal "), "{text}");
        assert_eq!(text.lines().filter(|l| l.starts_with("WARNING")).count(), 1);
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["state_errors"].as_array().unwrap().len(), 1);
        // Repaired (moved aside): nothing to report.
        std::fs::remove_file(dir.path().join("drain-journal.json")).unwrap();
        assert!(status(&cfg(), &state, &mut h)
            .unwrap()
            .state_errors
            .is_empty());
    }

    #[test]
    fn a_node_in_service_then_with_a_divert_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        let mut h = FakeHost::new();
        let s = status(&cfg(), &state, &mut h).unwrap();
        assert_eq!(s.mode, Mode::Serving);
        assert!(s.divert.is_none() && s.divert_rules.is_empty());
        assert!(s.text().starts_with("mode: serving\n"), "{}", s.text());
        let plan = DivertPlan::new(&cfg());
        crate::ops::divert::install(h.firewall(), &plan).unwrap();
        h.fw.syns(80, 10);
        // A user rule that merely mentions our prefix is not ours.
        h.fw.restore(
            "*mangle\n-A PREROUTING -p udp -m comment --comment DRAIN-80 -j ACCEPT\nCOMMIT\n",
        )
        .unwrap();
        let s = status(&cfg(), &state, &mut h).unwrap();
        assert_eq!(s.mode, Mode::Diverting);
        assert_eq!(s.divert_rules, plan.owned_lines(&h.fw.mangle_text()));
        assert!(!s.divert_rules.iter().any(|l| l.contains("comment")));
        let d = s.divert.unwrap();
        assert_eq!(d.phase, Some(Phase::Installed));
        assert_eq!((d.diverted_flows, d.recorded_flows), (10, 10));
        let json = serde_json::to_value(status(&cfg(), &state, &mut h).unwrap()).unwrap();
        assert_eq!(json["mode"], "diverting");
        assert_eq!(json["divert"]["phase"], "installed");
        assert_eq!(json["vips"][0]["address"], "198.18.0.100");
    }

    #[test]
    fn a_node_in_maintenance_that_was_rebooted_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        let mut h = FakeHost::new();
        let mut j = state.drain_journal().unwrap();
        j.record(Change::LinkDown {
            ifname: "trk0".into(),
        })
        .unwrap();
        h.links.insert("trk0".into(), false);
        let s = status(&cfg(), &state, &mut h).unwrap();
        assert_eq!(s.mode, Mode::FailedOver);
        assert!(s.since.is_some() && s.trigger_undone.is_none());
        state
            .set_maintenance(Some(&crate::journal::Maintenance {
                reason: "kernel upgrade".into(),
                by: "alice".into(),
                since: 1_800_000_000,
                drained: true,
            }))
            .unwrap();
        // The reboot brings trk0 back up; the journal still says it was set down.
        h.links.insert("trk0".into(), true);
        let s = status(&cfg(), &state, &mut h).unwrap();
        assert_eq!(s.mode, Mode::Maintenance);
        assert_eq!(s.since, Some(1_800_000_000));
        let undone = s.trigger_undone.as_deref().unwrap();
        assert!(undone.contains("trk0") && undone.contains("up"), "{undone}");
        let text = s.text();
        assert!(
            text.starts_with("mode: in maintenance since 2027-01-15"),
            "{text}"
        );
        assert!(text.contains("kernel upgrade (by alice)"), "{text}");
        assert!(text.contains("WARNING"), "{text}");
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["mode"], "maintenance");
        assert_eq!(json["maintenance"]["reason"], "kernel upgrade");
        assert_eq!(json["sockets"]["total"], 0);
    }

    #[test]
    fn unix_times_read_as_utc_dates() {
        assert_eq!(fmt_unix(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(fmt_unix(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(fmt_unix(1_800_000_000), "2027-01-15 08:00:00 UTC");
    }
}
