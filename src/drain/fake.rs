//! A scripted fake world for the drain state machine: a clock that only moves when the machine
//! sleeps, connections that close at given times, a peer that may die, keepalived that moves the
//! VIP some time after the tracked interface goes down, and a small model of iptables-restore
//! (all-or-nothing, -A/-I/-D/-F/-X) and ipset. It records every call.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::time::Duration;

use super::{Host, HostError, HostErrorKind, PeerAnswer, SocketCount};

/// A connection on the VIP ports.
#[derive(Clone, Debug)]
pub struct Conn {
    /// When it closes (`None`: never).
    pub closes_at: Option<Duration>,
    /// Client silent longer than the idle threshold.
    pub idle: bool,
}

/// The fake world.
#[derive(Debug)]
pub struct FakeHost {
    pub t: Duration,
    pub calls: Vec<String>,
    pub conns: Vec<Conn>,
    pub peer_dies_at: Option<Duration>,
    pub peer_refuses: bool,
    pub interrupts_at: Vec<Duration>,
    pub links: BTreeMap<String, bool>,
    pub link_down_at: Option<Duration>,
    pub vip: Ipv4Addr,
    pub vip_local_initially: bool,
    pub keepalived_reacts: bool,
    pub failover_delay: Duration,
    pub mangle: Option<Vec<String>>,
    pub chains: Vec<String>,
    pub sets: BTreeSet<String>,
    pub fail_op: Option<String>,
    pub routes: BTreeSet<Ipv4Addr>,
    pub sysctls: BTreeMap<String, String>,
    /// Set when a restore carrying "--del-set" (the withdraw) was applied.
    pub withdrawn_at: Option<Duration>,
}

impl FakeHost {
    pub fn new() -> FakeHost {
        FakeHost {
            t: Duration::ZERO,
            calls: Vec::new(),
            conns: Vec::new(),
            peer_dies_at: None,
            peer_refuses: false,
            interrupts_at: Vec::new(),
            links: [("trk0".to_string(), true), ("eth0".to_string(), true)]
                .into_iter()
                .collect(),
            link_down_at: None,
            vip: Ipv4Addr::new(198, 18, 0, 100),
            vip_local_initially: true,
            keepalived_reacts: true,
            failover_delay: Duration::from_millis(600),
            mangle: None,
            chains: Vec::new(),
            sets: BTreeSet::new(),
            fail_op: None,
            routes: BTreeSet::new(),
            sysctls: BTreeMap::new(),
            withdrawn_at: None,
        }
    }

    fn fail(&self, op: &str) -> Result<(), HostError> {
        match &self.fail_op {
            Some(f) if op.contains(f.as_str()) => Err(HostError::other(op, "injected failure")),
            _ => Ok(()),
        }
    }

    fn peer_alive(&self) -> bool {
        self.peer_dies_at.is_none_or(|d| self.t < d)
    }

    fn failed_over(&self) -> bool {
        self.keepalived_reacts
            && self
                .link_down_at
                .is_some_and(|d| self.t >= d + self.failover_delay)
    }

    /// The mangle rules as iptables-save would print them (chains + rules, no header).
    pub fn rule_lines(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .chains
            .iter()
            .map(|c| format!(":{c} - [0:0]"))
            .collect();
        v.extend(self.mangle.clone().unwrap_or_default());
        v
    }

    /// Applies an iptables-restore --noflush text to a copy and commits it only if every line
    /// applies — the kernel's all-or-nothing transaction.
    fn apply(&mut self, text: &str) -> Result<(), String> {
        let mut rules = self.mangle.clone().unwrap_or_default();
        let mut chains = self.chains.clone();
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line == "*mangle" || line == "COMMIT" {
                continue;
            }
            if let Some(decl) = line.strip_prefix(':') {
                let name = decl.split_whitespace().next().unwrap().to_string();
                if !chains.contains(&name) {
                    chains.push(name);
                }
            } else if let Some(r) = line.strip_prefix("-A ") {
                rules.push(format!("-A {r}"));
            } else if let Some(r) = line.strip_prefix("-I ") {
                let mut w: Vec<&str> = r.split_whitespace().collect();
                if w.get(1).is_some_and(|x| x.parse::<u32>().is_ok()) {
                    w.remove(1);
                }
                rules.insert(0, format!("-A {}", w.join(" ")));
            } else if let Some(r) = line.strip_prefix("-D ") {
                let want = format!("-A {r}");
                let pos = rules
                    .iter()
                    .position(|x| *x == want)
                    .ok_or(format!("no rule `{r}`"))?;
                rules.remove(pos);
            } else if let Some(c) = line.strip_prefix("-F ") {
                rules.retain(|x| x.split_whitespace().nth(1) != Some(c));
            } else if let Some(c) = line.strip_prefix("-X ") {
                if rules.iter().any(|x| x.ends_with(&format!("-j {c}"))) {
                    return Err(format!("chain {c} is referenced"));
                }
                chains.retain(|x| x != c);
            } else {
                return Err(format!("cannot parse `{line}`"));
            }
        }
        self.mangle = Some(rules);
        self.chains = chains;
        Ok(())
    }
}

impl Host for FakeHost {
    fn now(&self) -> Duration {
        self.t
    }
    fn sleep(&mut self, d: Duration) {
        self.t += d;
    }
    fn interrupts(&self) -> u32 {
        self.interrupts_at.iter().filter(|t| self.t >= **t).count() as u32
    }
    fn restore(&mut self, what: &str, text: &str) -> Result<(), HostError> {
        self.calls.push(format!("restore {what}"));
        self.fail(what)?;
        self.t += Duration::from_millis(5);
        self.apply(text)
            .map_err(|e| HostError::other(format!("iptables-restore ({what})"), e))?;
        if text.contains("--del-set") {
            self.withdrawn_at = Some(self.t);
        }
        Ok(())
    }
    fn mangle_save(&mut self) -> Result<String, HostError> {
        self.fail("save")?;
        let mut s = String::from("*mangle\n:PREROUTING ACCEPT [0:0]\n");
        for l in self.rule_lines() {
            s.push_str(&l);
            s.push('\n');
        }
        s.push_str("COMMIT\n");
        Ok(s)
    }
    fn mangle_present(&mut self) -> Result<bool, HostError> {
        Ok(self.mangle.is_some())
    }
    fn drop_mangle_if_empty(&mut self) -> Result<bool, HostError> {
        self.calls.push("drop mangle".into());
        if self.mangle.as_ref().is_some_and(|r| r.is_empty()) && self.chains.is_empty() {
            self.mangle = None;
            return Ok(true);
        }
        Ok(false)
    }
    fn ipset_restore(&mut self, what: &str, text: &str) -> Result<(), HostError> {
        self.calls.push(format!("ipset {what}"));
        self.fail(what)?;
        let mut sets = self.sets.clone();
        for line in text.lines() {
            let w: Vec<&str> = line.split_whitespace().collect();
            match w.as_slice() {
                ["create", name, ..] => {
                    if !sets.insert(name.to_string()) {
                        return Err(HostError::other(
                            "ipset restore",
                            format!("set {name} exists"),
                        ));
                    }
                }
                ["destroy", name] => {
                    let referenced = self
                        .mangle
                        .iter()
                        .flatten()
                        .any(|r| r.contains(&format!(" {name} ")));
                    if referenced {
                        return Err(HostError::other(
                            "ipset restore",
                            format!("set {name} is in use"),
                        ));
                    }
                    sets.remove(*name);
                }
                [] => {}
                _ => {
                    return Err(HostError::other(
                        "ipset restore",
                        format!("cannot parse `{line}`"),
                    ))
                }
            }
        }
        self.sets = sets;
        Ok(())
    }
    fn ipset_names(&mut self) -> Result<Vec<String>, HostError> {
        Ok(self.sets.iter().cloned().collect())
    }
    fn link_up(&mut self, ifname: &str) -> Result<bool, HostError> {
        self.links.get(ifname).copied().ok_or(HostError {
            op: format!("link {ifname}"),
            cause: "no such interface".into(),
            kind: HostErrorKind::MissingInterface,
        })
    }
    fn set_link(&mut self, ifname: &str, up: bool) -> Result<(), HostError> {
        self.calls
            .push(format!("link {ifname} {}", if up { "up" } else { "down" }));
        self.fail("link")?;
        self.links.insert(ifname.to_string(), up);
        self.link_down_at = if up { None } else { Some(self.t) };
        Ok(())
    }
    fn vip_local(&mut self, vip: Ipv4Addr) -> Result<bool, HostError> {
        Ok(vip == self.vip && self.vip_local_initially && !self.failed_over())
    }
    fn peer_owns(&mut self, vip: Ipv4Addr) -> Result<bool, HostError> {
        Ok(vip == self.vip && self.peer_alive() && self.failed_over())
    }
    fn probe_peer(&mut self) -> Result<PeerAnswer, HostError> {
        self.calls.push("probe".into());
        if !self.peer_alive() {
            self.t += Duration::from_millis(200);
            return Ok(PeerAnswer::NoAnswer);
        }
        self.t += Duration::from_millis(1);
        Ok(if self.peer_refuses {
            PeerAnswer::Refused
        } else {
            PeerAnswer::Accepted { rtt_ms: 0.3 }
        })
    }
    fn count(&mut self) -> Result<SocketCount, HostError> {
        let open: Vec<&Conn> = self
            .conns
            .iter()
            .filter(|c| c.closes_at.is_none_or(|d| self.t < d))
            .collect();
        let idle = open.iter().filter(|c| c.idle).count();
        Ok(SocketCount {
            total: open.len(),
            idle,
            by_state: [("established".to_string(), open.len())]
                .into_iter()
                .collect(),
        })
    }
    fn local_route(&mut self, vip: Ipv4Addr, present: bool) -> Result<(), HostError> {
        self.calls.push(format!("route {vip} {present}"));
        self.fail("route")?;
        if present {
            self.routes.insert(vip);
        } else {
            self.routes.remove(&vip);
        }
        Ok(())
    }
    fn sysctl_read(&mut self, key: &str) -> Result<String, HostError> {
        Ok(self.sysctls.get(key).cloned().unwrap_or_else(|| "0".into()))
    }
    fn sysctl_write(&mut self, key: &str, value: &str) -> Result<(), HostError> {
        self.calls.push(format!("sysctl {key}={value}"));
        self.fail("sysctl")?;
        self.sysctls.insert(key.to_string(), value.to_string());
        Ok(())
    }
}
