//! The drain state machine against the fake world.

use std::time::Duration;

use super::fake::{Conn, FakeHost};
use super::*;
use crate::journal::Journal;

const S: fn(u64) -> Duration = Duration::from_secs;
const MS: fn(u64) -> Duration = Duration::from_millis;

fn scripts() -> DivertScripts {
    DivertScripts {
        prefix: "DRAIN".into(),
        set_names: vec!["DRAIN-80".into()],
        ipset_create: "create DRAIN-80 hash:ip,port,ip family inet maxelem 1024\n".into(),
        install: "*mangle\n:DRAIN-PRE - [0:0]\n:DRAIN-DIV - [0:0]\n\
                  -A DRAIN-PRE -p tcp -m set --match-set DRAIN-80 src,src,dst -j DRAIN-DIV\n\
                  -A DRAIN-DIV -j DROP\n\
                  -I PREROUTING 1 -d 198.18.0.100/32 -i eth0 -p tcp -j DRAIN-PRE\nCOMMIT\n"
            .into(),
        withdraw: "*mangle\n-F DRAIN-DIV\n-A DRAIN-DIV -j SET --del-set DRAIN-80 src,src,dst\n-A DRAIN-DIV -j DROP\nCOMMIT\n".into(),
        expected_installed: vec![
            ":DRAIN-DIV - [0:0]".into(),
            "-A PREROUTING -d 198.18.0.100/32 -i eth0 -p tcp -j DRAIN-PRE".into(),
            "-A DRAIN-PRE -p tcp -m set --match-set DRAIN-80 src,src,dst -j DRAIN-DIV".into(),
        ],
    }
}

fn policy() -> Policy {
    Policy {
        vips: vec![std::net::Ipv4Addr::new(198, 18, 0, 100)],
        tracked_interface: "trk0".into(),
        deadline: S(60),
        abort_on_deadline: false,
        poll_interval: MS(100),
        probe_interval: MS(200),
        probe_failures: 2,
        rollback_grace: S(2),
        failover_timeout: S(5),
        post_wait: S(1),
        skip_failover: false,
    }
}

struct Run {
    host: FakeHost,
    journal: Journal,
    events: Vec<Event>,
    result: Result<DrainReport, DrainError>,
    _dir: tempfile::TempDir,
}

fn run(mut host: FakeHost, p: Policy) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let mut journal = Journal::open(&dir.path().join("j.json")).unwrap();
    let mut events = Vec::new();
    let result = drain(&mut host, &mut journal, &scripts(), &p, &mut |e| {
        events.push(e)
    });
    Run {
        host,
        journal,
        events,
        result,
        _dir: dir,
    }
}

/// After any drain, successful or not: no rule, chain or set of ours is left, and the mangle table
/// is back to how it was.
fn assert_no_divert_left(r: &Run, mangle_before: Option<Vec<String>>) {
    assert!(r.host.chains.is_empty(), "chains left: {:?}", r.host.chains);
    assert!(r.host.sets.is_empty(), "sets left: {:?}", r.host.sets);
    assert_eq!(r.host.mangle, mangle_before, "mangle table not restored");
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
    assert_eq!(r.host.links["trk0"], false, "node stays out of service");
    assert_eq!(
        r.journal.entries().len(),
        1,
        "only the link-down maintenance state remains"
    );
    // Order: sets before the rules that use them; the link goes down only after the drain; the
    // divert stays until the peer owns the VIP, and only then goes.
    let c = &r.host.calls;
    let pos = |s: &str| {
        c.iter()
            .position(|x| x.starts_with(s))
            .unwrap_or_else(|| panic!("{s} not in {c:?}"))
    };
    assert!(pos("ipset create") < pos("restore install"));
    assert!(pos("restore install") < pos("link trk0 down"));
    assert!(pos("link trk0 down") < pos("restore remove"));
    assert!(pos("restore remove") < pos("ipset destroy"));
    assert!(matches!(r.events.last(), Some(Event::CleanedUp)));
    assert!(r
        .events
        .iter()
        .any(|e| matches!(e, Event::PeerOwnsVip { .. })));
}

#[test]
fn divert_stays_until_peer_owns_the_vip_plus_post_wait() {
    let mut h = FakeHost::new();
    h.failover_delay = MS(1500);
    let r = run(h, policy());
    let rep = r.result.unwrap();
    assert!(rep.failover_ms >= 1500.0, "{rep:?}");
    assert!(rep.total_ms >= 1500.0 + 1000.0, "post_wait kept: {rep:?}");
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
    assert_eq!(r.host.links["trk0"], false);
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
    assert_eq!(r.host.links["trk0"], true, "the node keeps serving");
    assert!(r.host.withdrawn_at.is_some(), "new flows withdrawn first");
    assert_no_divert_left(&r, None);
    assert!(r.journal.is_empty());
}

#[test]
fn peer_death_withdraws_within_a_second_and_rolls_back() {
    let mut h = FakeHost::new();
    h.conns = vec![conn(None, false)];
    h.peer_dies_at = Some(MS(2000));
    let r = run(h, policy());
    let e = r.result.as_ref().unwrap_err();
    assert_eq!(e.exit_code(), exit::PEER_LOST, "{e}");
    let withdrawn = r.host.withdrawn_at.expect("withdrawn");
    assert!(
        withdrawn >= MS(2000) && withdrawn - MS(2000) <= S(1),
        "withdrawn {withdrawn:?} after death at 2 s"
    );
    assert_eq!(r.host.links["trk0"], true);
    assert_no_divert_left(&r, None);
}

#[test]
fn a_peer_that_is_not_ready_changes_nothing() {
    for refuses in [true, false] {
        let mut h = FakeHost::new();
        if refuses {
            h.peer_refuses = true;
        } else {
            h.peer_dies_at = Some(Duration::ZERO);
        }
        let r = run(h, policy());
        let e = r.result.as_ref().unwrap_err();
        assert_eq!(e.exit_code(), exit::PEER_NOT_READY, "{e}");
        assert!(e.to_string().contains("nothing changed"));
        assert!(
            r.host.calls.iter().all(|c| c == "probe"),
            "only probes: {:?}",
            r.host.calls
        );
        assert!(r.journal.is_empty());
    }
}

#[test]
fn not_master_changes_nothing() {
    let mut h = FakeHost::new();
    h.vip_local_initially = false;
    let r = run(h, policy());
    let e = r.result.as_ref().unwrap_err();
    assert_eq!(e.exit_code(), exit::STATE);
    assert!(r.host.calls.is_empty(), "{:?}", r.host.calls);
    assert!(r.journal.is_empty());
}

#[test]
fn missing_tracked_interface_is_an_environment_error() {
    let mut h = FakeHost::new();
    h.links.remove("trk0");
    let r = run(h, policy());
    let e = r.result.as_ref().unwrap_err();
    assert_eq!(e.exit_code(), exit::ENVIRONMENT, "{e}");
    assert!(e.to_string().contains("trk0"));
    assert!(r.host.calls.is_empty());
}

#[test]
fn interrupt_rolls_back_after_the_grace_and_a_second_one_cuts_it_short() {
    let mut h = FakeHost::new();
    h.conns = vec![conn(None, false)];
    h.interrupts_at = vec![S(2)];
    let r = run(h, policy());
    assert_eq!(
        r.result.as_ref().unwrap_err().exit_code(),
        exit::INTERRUPTED
    );
    assert_eq!(r.host.links["trk0"], true);
    assert!(r.host.t >= S(2) + S(2), "grace honoured: {:?}", r.host.t);
    assert_no_divert_left(&r, None);

    let mut h = FakeHost::new();
    h.conns = vec![conn(None, false)];
    h.interrupts_at = vec![S(2), MS(2300)];
    let r = run(h, policy());
    assert_eq!(
        r.result.as_ref().unwrap_err().exit_code(),
        exit::INTERRUPTED
    );
    assert!(
        r.host.t < MS(2600),
        "second interrupt cut the grace short: {:?}",
        r.host.t
    );
    assert_no_divert_left(&r, None);
}

#[test]
fn failed_install_leaves_nothing_behind() {
    let mut h = FakeHost::new();
    h.fail_op = Some("install".into());
    h.mangle = Some(vec!["-A PREROUTING -s 10.9.9.9/32 -j ACCEPT".into()]);
    let r = run(h, policy());
    assert!(r.result.is_err());
    assert_no_divert_left(
        &r,
        Some(vec!["-A PREROUTING -s 10.9.9.9/32 -j ACCEPT".into()]),
    );
    assert!(r.journal.is_empty());
    assert_eq!(r.host.links["trk0"], true);
}

#[test]
fn read_back_mismatch_rolls_back() {
    let h = FakeHost::new();
    let dir = tempfile::tempdir().unwrap();
    let mut j = Journal::open(&dir.path().join("j.json")).unwrap();
    let mut s = scripts();
    s.expected_installed
        .push("-A DRAIN-DIV -j TEE --gateway 198.18.0.12".into());
    let mut h = h;
    let e = drain(&mut h, &mut j, &s, &policy(), &mut |_| {}).unwrap_err();
    assert!(matches!(e, DrainError::VerifyFailed(_)), "{e}");
    assert!(h.chains.is_empty() && h.sets.is_empty() && h.mangle.is_none());
    assert!(j.is_empty());
}

#[test]
fn failover_timeout_removes_divert_and_says_so() {
    let mut h = FakeHost::new();
    h.keepalived_reacts = false;
    let r = run(h, policy());
    let e = r.result.as_ref().unwrap_err();
    assert_eq!(e.exit_code(), exit::FAILOVER, "{e}");
    assert_no_divert_left(&r, None);
}

#[test]
fn leftovers_and_already_drained_are_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let mut j = Journal::open(&dir.path().join("j.json")).unwrap();
    j.record(Change::IpsetCreated {
        name: "DRAIN-80".into(),
    })
    .unwrap();
    let mut h = FakeHost::new();
    let e = drain(&mut h, &mut j, &scripts(), &policy(), &mut |_| {}).unwrap_err();
    assert_eq!(e.exit_code(), exit::STATE);
    assert!(h.calls.is_empty());

    let mut h = FakeHost::new();
    h.sets.insert("DRAIN-80".into());
    let r = run(h, policy());
    assert_eq!(r.result.as_ref().unwrap_err().exit_code(), exit::STATE);
    assert!(r.host.calls.is_empty());

    let mut h = FakeHost::new();
    h.links.insert("trk0".into(), false);
    let r = run(h, policy());
    assert!(matches!(r.result, Err(DrainError::AlreadyDrained(_))));
}

#[test]
fn crash_leftovers_are_undone_by_undo_all() {
    // Simulate a crash right after install: journal and host both carry the divert.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j.json");
    let mut h = FakeHost::new();
    {
        let mut j = Journal::open(&path).unwrap();
        install(&mut h, &mut j, &scripts()).unwrap();
        j.record(Change::LinkDown {
            ifname: "trk0".into(),
        })
        .unwrap();
        h.set_link("trk0", false).unwrap();
    }
    assert!(!h.chains.is_empty() && !h.sets.is_empty());
    let mut j = Journal::open(&path).unwrap();
    undo_all(&mut h, &mut j).unwrap();
    assert!(h.chains.is_empty() && h.sets.is_empty() && h.mangle.is_none());
    assert_eq!(h.links["trk0"], true);
    assert!(Journal::open(&path).unwrap().is_empty());
    // Idempotent: a second undo finds nothing to do and succeeds.
    let mut j = Journal::open(&path).unwrap();
    j.record(Change::Chains {
        prefix: "DRAIN".into(),
    })
    .unwrap();
    undo_all(&mut h, &mut j).unwrap();
}

#[test]
fn removal_from_save_handles_partial_states_and_leaves_other_rules() {
    let save = "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -j DRAIN-X\nCOMMIT\n*mangle\n:PREROUTING ACCEPT [1:2]\n:DRAIN-PRE - [0:0]\n:OTHER - [0:0]\n\
                -A PREROUTING -d 198.18.0.100/32 -i eth0 -p tcp -j DRAIN-PRE\n-A PREROUTING -j OTHER\n-A DRAIN-PRE -j DROP\nCOMMIT\n";
    let t = removal_from_save(save, "DRAIN").unwrap();
    assert_eq!(t, "*mangle\n-D PREROUTING -d 198.18.0.100/32 -i eth0 -p tcp -j DRAIN-PRE\n-F DRAIN-PRE\n-X DRAIN-PRE\nCOMMIT\n");
    assert_eq!(
        removal_from_save("*mangle\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n", "DRAIN"),
        None
    );
    // A prefix must not match a longer, foreign prefix.
    assert_eq!(
        removal_from_save("*mangle\n:DRAINX-PRE - [0:0]\nCOMMIT\n", "DRAIN"),
        None
    );
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
        drained >= 900.0 && drained <= 900.0 + 100.0 + 10.0,
        "declared within one poll interval: {drained}"
    );
}
