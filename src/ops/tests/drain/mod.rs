//! The drain state machine against the fake world.

use std::time::Duration;

use crate::journal::{Change, Journal};
use crate::ops::cycle::install;
use crate::ops::divert;
use crate::ops::fake::{Conn, FakeHost};
use crate::ops::tests::event_index;
use crate::ops::*;
use crate::plan::DivertPlan;
use crate::sys::firewall::{FakeOp, Firewall, FirewallError};
use crate::sys::process::ProcessError;

mod record;
mod refused;
mod rollback;
mod undrain;

const S: fn(u64) -> Duration = Duration::from_secs;
const MS: fn(u64) -> Duration = Duration::from_millis;

fn plan() -> DivertPlan {
    let cfg = crate::ops::fake::test_config("80, 7", "");
    DivertPlan::new(&cfg)
}

fn restore_failure() -> FirewallError {
    FirewallError::Process(ProcessError::Failed {
        binary: "iptables-restore".into(),
        args: "--noflush".into(),
        status: "exit code 1".into(),
        stderr: "injected".into(),
    })
}

fn policy() -> Policy {
    Policy {
        vips: vec![std::net::Ipv4Addr::new(198, 18, 0, 100)],
        peer: std::net::Ipv4Addr::new(198, 18, 0, 12),
        tracked_interface: "trk0".into(),
        deadline: S(60),
        abort_on_deadline: false,
        poll_interval: MS(100),
        probe_interval: MS(200),
        probe_failures: 2,
        rollback_grace: S(2),
        failover_timeout: S(5),
        post_wait: S(1),
        track_file: None,
        trigger_track_file: false,
        return_weight: 0,
        handoff: None,
    }
}

struct Run {
    host: FakeHost,
    journal: Journal,
    events: Vec<Event>,
    result: Result<DrainReport, OpError>,
    _dir: tempfile::TempDir,
}

fn run(host: FakeHost, p: Policy) -> Run {
    run_plan(host, p, &plan())
}

fn run_plan(mut host: FakeHost, p: Policy, plan: &DivertPlan) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let mut journal = Journal::open(&dir.path().join("j.json")).unwrap();
    let mut events = Vec::new();
    let result = drain(&mut Cycle::new(
        &mut host,
        &mut journal,
        plan,
        &p,
        &mut |e| events.push(e),
    ));
    Run {
        host,
        journal,
        events,
        result,
        _dir: dir,
    }
}

/// After any drain, successful or not: no rule, chain or set of ours is left, the mangle table is
/// back to how it was, and the journal holds at most the maintenance state.
fn assert_no_divert_left(r: &Run, mangle_before: Option<&str>) {
    let fw = &r.host.fw;
    assert!(
        plan().owned_lines(&fw.mangle_text()).is_empty(),
        "rules left: {}",
        fw.mangle_text()
    );
    assert!(fw.sets().is_empty(), "sets left: {:?}", fw.sets());
    match mangle_before {
        None => assert!(!fw.mangle_table_exists(), "mangle table not dropped"),
        Some(text) => assert_eq!(fw.mangle_text(), text, "mangle table not restored"),
    }
    assert!(
        r.journal
            .entries()
            .iter()
            .all(|e| e.change.is_maintenance_state()),
        "journal: {:?}",
        r.journal.entries()
    );
}

fn conn(closes_ms: Option<u64>, idle: bool) -> Conn {
    Conn {
        closes_at: closes_ms.map(MS),
        idle,
    }
}

fn with_user_rule(h: &mut FakeHost) -> String {
    h.fw.without_hooks(|fw| {
        fw.restore("*mangle\n-A PREROUTING -s 10.9.9.9/32 -j ACCEPT\nCOMMIT\n")
    })
    .unwrap();
    h.fw.mangle_text()
}

#[test]
fn drains_fails_over_and_removes_everything() {
    let mut h = FakeHost::new();
    h.conns = vec![conn(Some(1000), false), conn(Some(2500), false)];
    let r = run(h, policy());
    let rep = r.result.as_ref().unwrap();
    assert_eq!(rep.reason, DrainReason::Empty);
    assert!(rep.drain_ms >= 2500.0 && rep.drain_ms < 2700.0, "{rep:?}");
    assert!(rep.failover_ms >= 600.0, "{rep:?}");
    assert_eq!(rep.abandoned, 0);
    assert_no_divert_left(&r, None);
    assert!(!r.host.links["trk0"], "node stays out of service");
    assert_eq!(
        r.journal.entries().len(),
        1,
        "only the link-down maintenance state remains"
    );
    // Order: sets before the rules that use them; the link goes down only after the drain; the
    // divert stays until the peer owns the VIP, and only then goes.
    let c = r.host.call_log();
    let pos = |s: &str| r.host.call_index(s);
    assert!(pos("ipset create") < pos("restore install"));
    assert_eq!(
        c.iter().filter(|x| x.starts_with("ipset create")).count(),
        1,
        "every port's record in one ipset restore, no growth without traffic: {c:?}"
    );
    // The drain is sealed before the failover.
    assert!(pos("restore install") < pos("restore seal"));
    assert!(pos("restore seal") < pos("link trk0 down"));
    assert!(pos("link trk0 down") < pos("restore remove"));
    assert!(pos("restore remove") < pos("ipset destroy"));
    assert!(matches!(r.events.last(), Some(Event::CleanedUp)));
    assert!(r
        .events
        .iter()
        .any(|e| matches!(e, Event::PeerOwnsVip { .. })));
}

#[test]
fn a_users_own_mangle_rules_survive_a_drain() {
    let mut h = FakeHost::new();
    let before = with_user_rule(&mut h);
    let r = run(h, policy());
    assert!(r.result.is_ok(), "{:?}", r.result);
    assert_no_divert_left(&r, Some(&before));
}

#[test]
fn divert_stays_until_peer_owns_the_vip_plus_post_wait() {
    let mut h = FakeHost::new();
    h.failover_delay = MS(1500);
    let r = run(h, policy());
    let c = r.host.call_log();
    let rep = r.result.unwrap();
    assert!(rep.failover_ms >= 1500.0, "{rep:?}");
    assert!(rep.total_ms >= 1500.0 + 1000.0, "post_wait kept: {rep:?}");
    assert!(
        r.host.call_index("link trk0 down") < r.host.call_index("restore remove"),
        "{c:?}"
    );
}

#[test]
fn only_idle_sockets_left_counts_as_drained() {
    let mut h = FakeHost::new();
    h.conns = vec![conn(None, true), conn(Some(800), false)];
    let r = run(h, policy());
    let rep = r.result.unwrap();
    assert_eq!(rep.reason, DrainReason::OnlyIdle);
    assert_eq!(rep.abandoned, 1);
    assert!(rep.drain_ms < 1000.0);
}

#[test]
fn deadline_fails_over_anyway_by_default() {
    let mut h = FakeHost::new();
    h.conns = vec![conn(None, false)];
    let mut p = policy();
    p.deadline = S(3);
    let r = run(h, p);
    let rep = r.result.as_ref().unwrap();
    assert_eq!(rep.reason, DrainReason::Deadline);
    assert_eq!(rep.abandoned, 1);
    assert!(!r.host.links["trk0"]);
    assert_no_divert_left(&r, None);
}

#[test]
fn deadline_with_abort_rolls_back_and_keeps_serving() {
    let mut h = FakeHost::new();
    h.conns = vec![conn(None, false)];
    let mut p = policy();
    p.deadline = S(3);
    p.abort_on_deadline = true;
    let r = run(h, p);
    let e = r.result.as_ref().unwrap_err();
    assert_eq!(e.exit_code(), exit::DEADLINE, "{e}");
    assert!(r.host.links["trk0"], "the node keeps serving");
    assert!(r.host.withdrawn_at().is_some(), "new flows withdrawn first");
    assert_no_divert_left(&r, None);
    assert!(r.journal.is_empty());
}

#[test]
fn progress_is_reported_as_sockets_close() {
    let mut h = FakeHost::new();
    h.conns = vec![
        conn(Some(300), false),
        conn(Some(600), false),
        conn(Some(900), false),
    ];
    let r = run(h, policy());
    let remaining: Vec<usize> = r
        .events
        .iter()
        .filter_map(|e| {
            if let Event::Progress { remaining, .. } = e {
                Some(*remaining)
            } else {
                None
            }
        })
        .collect();
    assert_eq!(remaining, vec![3, 2, 1, 0]);
    let drained = r
        .events
        .iter()
        .find_map(|e| {
            if let Event::Drained { elapsed_ms, .. } = e {
                Some(*elapsed_ms)
            } else {
                None
            }
        })
        .unwrap();
    assert!(
        (900.0..=900.0 + 100.0 + 10.0).contains(&drained),
        "declared within one poll interval: {drained}"
    );
}

/// Installs the divert as the drain does (journal first), as a crashed drain would leave it.
fn install_fresh(h: &mut FakeHost, j: &mut Journal) -> Result<(), OpError> {
    let receipt = divert::prepare(h.firewall(), &plan()).map_err(HostError::from)?;
    install(h, j, &plan(), &receipt)
}
