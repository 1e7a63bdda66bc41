//! A scripted fake world for the drain state machine: a clock that only moves when the machine
//! sleeps, connections that close at given times, a peer that may die, keepalived that moves the
//! VIP some time after the tracked interface goes down, and the firewall module's stateful fake
//! (hooked so the test knows *when* the divert was withdrawn). It records every call.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};

use std::net::Ipv4Addr;
use std::rc::Rc;
use std::time::Duration;

use super::{
    Clock, HostError, HostErrorKind, Interfaces, KeepalivedTrack, Netfilter, PeerAgent, PeerAnswer,
    PeerProbe, SocketCount, Sockets, Sysctl, Tools,
};
use crate::config::Config;
use crate::sys::firewall::{FakeFirewall, FakeOp, Firewall, HookAt};

/// The test node's configuration: VIP 198.18.0.100 on `ports` (e.g. `"80, 7"`), ingress eth0,
/// peer 198.18.0.12, tracked interface trk0, then `more` (further YAML sections, or "").
pub fn test_config(ports: &str, more: &str) -> Config {
    Config::from_str(
        &format!(
            "vips:\n  - address: 198.18.0.100\n    ports: [{ports}]\ningress_interface: eth0\npeer: 198.18.0.12\ntracked_interface: trk0\n{more}"
        ),
        "test",
    )
    .unwrap()
}

/// The firewall fake, stamped with the fake clock: each call the test orders is noted in `log`
/// (`restore install`, `ipset create`, …), a restore takes 5 ms, and `withdrawn` is set when
/// the withdraw was applied.
fn timed_firewall(
    clock: &Rc<Cell<Duration>>,
    log: &Rc<RefCell<Vec<String>>>,
    withdrawn: &Rc<Cell<Option<Duration>>>,
) -> FakeFirewall {
    let mut fw = FakeFirewall::new();
    let (clock, log, before_clock) = (clock.clone(), log.clone(), clock.clone());
    fw.hook(HookAt::Before, move |_, op, text| {
        let what = match op {
            FakeOp::Restore if text.contains("--del-set") => "restore withdraw",
            FakeOp::Restore if text.contains("-X ") => "restore remove",
            FakeOp::Restore if text.contains("-I PREROUTING") => "restore install",
            FakeOp::Restore => "restore seal",
            FakeOp::IpsetRestore if text.starts_with("create") => "ipset create",
            FakeOp::IpsetRestore => "ipset destroy",
            FakeOp::DropMangleTableIfEmpty => "drop mangle",
            _ => return Ok(()),
        };
        log.borrow_mut().push(what.to_string());
        if op == FakeOp::Restore {
            before_clock.set(before_clock.get() + Duration::from_millis(5));
        }
        Ok(())
    });
    let withdrawn = withdrawn.clone();
    fw.hook(HookAt::After, move |_, op, text| {
        if op == FakeOp::Restore && text.contains("--del-set") {
            withdrawn.set(Some(clock.get()));
        }
        Ok(())
    });
    fw
}

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
    pub clock: Rc<Cell<Duration>>,
    pub calls: Rc<std::cell::RefCell<Vec<String>>>,
    stamps: std::cell::RefCell<Vec<(Duration, String)>>,
    /// The firewall module's fake, hooked so that each transaction takes 5 ms of the fake clock
    /// and the call log shows what it did, in order with the host's calls.
    pub fw: FakeFirewall,
    withdrawn: Rc<Cell<Option<Duration>>>,
    pub conns: Vec<Conn>,
    pub peer_dies_at: Option<Duration>,
    pub peer_refuses: bool,
    pub interrupts_at: Vec<Duration>,
    pub links: BTreeMap<String, bool>,
    pub link_down_at: Option<Duration>,
    pub vip: Ipv4Addr,
    pub vip_local_initially: bool,
    /// When keepalived moves the VIP to the peer by itself (it stopped, or the peer preempted).
    pub vip_moves_at: Option<Duration>,
    pub keepalived_reacts: bool,
    pub failover_delay: Duration,
    pub fail_op: Option<String>,
    pub routes: BTreeSet<Ipv4Addr>,
    pub sysctls: BTreeMap<String, String>,
    /// keepalived track files.
    pub track: BTreeMap<std::path::PathBuf, i32>,
    /// New connections per second arriving for port 80 while the divert is in place, played
    /// through the firewall fake's rules as the clock moves.
    pub syn_rate: f64,
    syn_debt: f64,
    /// The process lacks CAP_NET_ADMIN.
    pub unprivileged: bool,
    /// Tools that are not installed.
    pub missing_tools: Vec<String>,
    /// What testing the divert's texts finds.
    pub divert_test: super::DivertTest,
    /// The peer's agent, as the peer link reaches it.
    pub peer_agent: FakePeerAgent,
}

/// The peer's agent in the fake world.
#[derive(Clone, Debug, Default)]
pub struct FakePeerAgent {
    /// Does not answer at all (not running, wrong key, network).
    pub down: bool,
    /// Does not answer before this time (its agent restarting).
    pub down_until: Option<Duration>,
    /// Answers every request with this refusal.
    pub refuse: Option<String>,
    /// Takes the next `Begin` without answering it (its agent dies there), then is down for
    /// this long (restarting).
    pub dies_at_begin: Option<Duration>,
}

impl FakeHost {
    pub fn new() -> FakeHost {
        let clock = Rc::new(Cell::new(Duration::ZERO));
        let calls = Rc::new(std::cell::RefCell::new(Vec::new()));
        let withdrawn = Rc::new(Cell::new(None));
        FakeHost {
            fw: timed_firewall(&clock, &calls, &withdrawn),
            withdrawn,
            clock,
            calls,
            stamps: Default::default(),
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
            vip_moves_at: None,
            keepalived_reacts: true,
            failover_delay: Duration::from_millis(600),
            fail_op: None,
            routes: BTreeSet::new(),
            sysctls: BTreeMap::new(),
            track: BTreeMap::new(),
            syn_rate: 0.0,
            syn_debt: 0.0,
            unprivileged: false,
            missing_tools: Vec::new(),
            divert_test: super::DivertTest::Accepted,
            peer_agent: FakePeerAgent::default(),
        }
    }

    fn fail(&self, op: &str) -> Result<(), HostError> {
        match &self.fail_op {
            Some(f) if op.contains(f.as_str()) => Err(HostError::other(op, "injected failure")),
            _ => Ok(()),
        }
    }

    fn peer_alive(&self) -> bool {
        self.peer_dies_at.is_none_or(|d| self.t() < d)
    }

    fn failed_over(&self) -> bool {
        self.vip_moves_at.is_some_and(|at| self.t() >= at)
            || self.keepalived_reacts
                && self
                    .link_down_at
                    .is_some_and(|d| self.t() >= d + self.failover_delay)
    }

    /// The fake wall clock (seconds since the epoch). Inherent as well as [`Clock::unix_now`],
    /// so a test elsewhere reads it without importing the capability.
    pub fn unix_now(&self) -> u64 {
        1_800_000_000 + self.t().as_secs()
    }

    /// When a restore with `--del-set` (the withdraw) was applied.
    pub fn withdrawn_at(&self) -> Option<Duration> {
        self.withdrawn.get()
    }

    /// Current fake time.
    pub fn t(&self) -> Duration {
        self.clock.get()
    }

    fn advance(&self, d: Duration) {
        self.clock.set(self.clock.get() + d);
    }

    /// Time passes while the host sleeps: new connections arrive.
    fn pass(&mut self, d: Duration) {
        self.advance(d);
        self.syn_debt += self.syn_rate * d.as_secs_f64();
        let n = self.syn_debt.floor();
        if n >= 1.0 {
            self.syn_debt -= n;
            self.fw.syns(80, n as u64);
        }
    }

    fn call(&self, what: String) {
        self.stamps.borrow_mut().push((self.t(), what.clone()));
        self.calls.borrow_mut().push(what);
    }

    /// When the first host call (not firewall) starting with `what` was made.
    pub fn first_call_at(&self, what: &str) -> Option<Duration> {
        self.stamps
            .borrow()
            .iter()
            .find(|(_, c)| c.starts_with(what))
            .map(|(t, _)| *t)
    }

    /// Where the first call starting with `what` is in the call log (firewall calls included).
    /// Panics naming the call when it never happened: an order check on `Option` positions would
    /// pass on a missing step, since `Some(_) > None`.
    pub fn call_index(&self, what: &str) -> usize {
        let log = self.calls.borrow();
        log.iter()
            .position(|c| c.starts_with(what))
            .unwrap_or_else(|| panic!("no call {what:?} in {log:?}"))
    }

    /// Every call so far.
    pub fn call_log(&self) -> Vec<String> {
        self.calls.borrow().clone()
    }
}

impl Clock for FakeHost {
    fn now(&self) -> Duration {
        self.t()
    }
    fn sleep(&mut self, d: Duration) {
        self.pass(d);
    }
    fn interrupts(&self) -> u32 {
        self.interrupts_at
            .iter()
            .filter(|t| self.t() >= **t)
            .count() as u32
    }
    fn unix_now(&self) -> u64 {
        FakeHost::unix_now(self)
    }
}

impl Interfaces for FakeHost {
    fn link_up(&mut self, ifname: &str) -> Result<bool, HostError> {
        self.links.get(ifname).copied().ok_or(HostError::new(
            format!("link {ifname}"),
            HostErrorKind::MissingInterface,
            "no such interface",
        ))
    }
    fn set_link(&mut self, ifname: &str, up: bool) -> Result<(), HostError> {
        self.call(format!("link {ifname} {}", if up { "up" } else { "down" }));
        self.fail("link")?;
        self.links.insert(ifname.to_string(), up);
        self.link_down_at = if up { None } else { Some(self.t()) };
        Ok(())
    }
    fn vip_local(&mut self, vip: Ipv4Addr) -> Result<bool, HostError> {
        Ok(vip == self.vip && self.vip_local_initially && !self.failed_over())
    }
    fn local_route(&mut self, vip: Ipv4Addr, present: bool) -> Result<(), HostError> {
        self.call(format!("route {vip} {present}"));
        self.fail("route")?;
        if present {
            self.routes.insert(vip);
        } else {
            self.routes.remove(&vip);
        }
        Ok(())
    }
}

impl PeerProbe for FakeHost {
    fn peer_owns(&mut self, vip: Ipv4Addr) -> Result<bool, HostError> {
        Ok(vip == self.vip && self.peer_alive() && self.failed_over())
    }
    fn probe_peer(&mut self) -> Result<PeerAnswer, HostError> {
        self.call("probe".into());
        if !self.peer_alive() {
            self.advance(Duration::from_millis(200));
            return Ok(PeerAnswer::NoAnswer);
        }
        self.advance(Duration::from_millis(1));
        Ok(if self.peer_refuses {
            PeerAnswer::Refused
        } else {
            PeerAnswer::Accepted { rtt_ms: 0.3 }
        })
    }
    fn peer_mac(&mut self) -> Result<Option<crate::plan::Mac>, HostError> {
        Ok(self.peer_alive().then_some([2, 0, 0x5e, 0x10, 0, 12]))
    }
}

impl Sockets for FakeHost {
    fn count(&mut self) -> Result<SocketCount, HostError> {
        let open: Vec<&Conn> = self
            .conns
            .iter()
            .filter(|c| c.closes_at.is_none_or(|d| self.t() < d))
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
    fn passive_opens(&mut self) -> Result<u64, HostError> {
        // The rate arrives in steps of the clock, like the SYNs the firewall fake plays.
        Ok((self.syn_rate * self.t().as_secs_f64()) as u64)
    }
}

impl Sysctl for FakeHost {
    fn sysctl_read(&mut self, key: &str) -> Result<String, HostError> {
        Ok(self.sysctls.get(key).cloned().unwrap_or_else(|| "0".into()))
    }
    fn sysctl_write(&mut self, key: &str, value: &str) -> Result<(), HostError> {
        self.call(format!("sysctl {key}={value}"));
        self.fail("sysctl")?;
        self.sysctls.insert(key.to_string(), value.to_string());
        Ok(())
    }
}

impl KeepalivedTrack for FakeHost {
    fn write_track_file(&mut self, path: &std::path::Path, value: i32) -> Result<(), HostError> {
        self.call(format!("track {} {value}", path.display()));
        self.fail("track")?;
        self.track.insert(path.to_path_buf(), value);
        // keepalived: -254 is FAULT, which the fake models like the link going down.
        if value <= super::TRACK_FAULT {
            self.link_down_at = Some(self.t());
        }
        Ok(())
    }
    fn read_track_file(&mut self, path: &std::path::Path) -> Result<Option<i32>, HostError> {
        Ok(self.track.get(path).copied())
    }
}

impl Tools for FakeHost {
    fn has_net_admin(&self) -> bool {
        !self.unprivileged
    }
    fn find_tool(&self, bin: &str) -> Option<std::path::PathBuf> {
        (!self.missing_tools.iter().any(|t| t == bin)).then(|| format!("/usr/sbin/{bin}").into())
    }
}

impl Netfilter for FakeHost {
    fn firewall(&mut self) -> &mut dyn Firewall {
        &mut self.fw
    }
    fn test_divert(&mut self, _sets: &str, _rules: &str) -> super::DivertTest {
        self.divert_test.clone()
    }
}

impl PeerAgent for FakeHost {
    fn peer_agent(
        &mut self,
        req: &super::handoff::PeerRequest,
    ) -> Result<super::handoff::PeerReply, HostError> {
        use super::handoff::{PeerReply, PeerRequest};
        let op = match req {
            PeerRequest::Hello { .. } => "hello",
            PeerRequest::Begin { .. } => "begin",
            PeerRequest::End => "end",
            PeerRequest::Failback { .. } => "failback",
        };
        self.call(format!("peer-agent {op}"));
        self.advance(Duration::from_millis(2));
        if let (PeerRequest::Begin { .. }, Some(down_for)) = (req, self.peer_agent.dies_at_begin) {
            self.peer_agent.dies_at_begin = None;
            self.peer_agent.down_until = Some(self.t() + down_for);
            return Err(HostError::new(
                "peer link",
                HostErrorKind::Unanswered,
                "the request was sent but no reply came: connection reset",
            ));
        }
        let restarting = self.peer_agent.down_until.is_some_and(|t| self.t() < t);
        if self.peer_agent.down || restarting || !self.peer_alive() {
            return Err(HostError::other("peer link", "connection refused"));
        }
        Ok(match &self.peer_agent.refuse {
            Some(reason) => PeerReply::Refused {
                reason: reason.clone(),
            },
            None => PeerReply::Ok {
                detail: format!("{op} done"),
            },
        })
    }
}
