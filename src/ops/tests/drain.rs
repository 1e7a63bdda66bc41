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
fn peer_death_withdraws_within_a_second_and_rolls_back() {
    let mut h = FakeHost::new();
    h.conns = vec![conn(None, false)];
    h.peer_dies_at = Some(MS(2000));
    let r = run(h, policy());
    let e = r.result.as_ref().unwrap_err();
    assert_eq!(e.exit_code(), exit::PEER_LOST, "{e}");
    let withdrawn = r.host.withdrawn_at().expect("withdrawn");
    assert!(
        withdrawn >= MS(2000) && withdrawn - MS(2000) <= S(1),
        "withdrawn {withdrawn:?} after death at 2 s"
    );
    assert!(r.host.links["trk0"]);
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
        assert!(e.to_string().contains("198.18.0.12"), "names the peer: {e}");
        assert!(
            r.host.call_log().iter().all(|c| c == "probe"),
            "only probes: {:?}",
            r.host.call_log()
        );
        assert!(r.journal.is_empty());
        assert!(!r.host.fw.mangle_table_exists());
    }
}

#[test]
fn not_master_changes_nothing() {
    let mut h = FakeHost::new();
    h.vip_local_initially = false;
    let r = run(h, policy());
    let e = r.result.as_ref().unwrap_err();
    assert_eq!(e.exit_code(), exit::STATE);
    assert!(r.host.call_log().is_empty(), "{:?}", r.host.call_log());
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
    assert!(r.host.call_log().is_empty());
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
    assert!(r.host.links["trk0"]);
    assert!(
        r.host.t() >= S(2) + S(2),
        "grace honoured: {:?}",
        r.host.t()
    );
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
        r.host.t() < MS(2600),
        "second interrupt cut the grace short: {:?}",
        r.host.t()
    );
    assert_no_divert_left(&r, None);
}

#[test]
fn failed_install_leaves_nothing_behind() {
    let mut h = FakeHost::new();
    let before = with_user_rule(&mut h);
    h.fw.fail_next(FakeOp::Restore, restore_failure());
    let r = run(h, policy());
    let e = r.result.as_ref().unwrap_err();
    assert!(e.to_string().contains("injected"), "{e}");
    assert_no_divert_left(&r, Some(&before));
    assert!(r.journal.is_empty());
    assert!(r.host.links["trk0"]);
}

#[test]
fn failed_set_creation_leaves_nothing_behind() {
    let mut h = FakeHost::new();
    h.fw.fail_next(FakeOp::IpsetRestore, restore_failure());
    let r = run(h, policy());
    assert!(r.result.is_err());
    assert_no_divert_left(&r, None);
    assert!(r.journal.is_empty());
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
    j.record(Change::Divert {
        prefix: "DRAIN".into(),
        drop_mangle_table: true,
    })
    .unwrap();
    let mut h = FakeHost::new();
    let e = drain(&mut Cycle::new(
        &mut h,
        &mut j,
        &plan(),
        &policy(),
        &mut |_| {},
    ))
    .unwrap_err();
    assert_eq!(e.exit_code(), exit::STATE);
    assert!(h.call_log().is_empty());

    let mut h = FakeHost::new();
    h.fw.without_hooks(|fw| {
        fw.ipset_restore("create DRAIN-80 hash:ip,port,ip family inet maxelem 1024\n")
    })
    .unwrap();
    let r = run(h, policy());
    assert_eq!(r.result.as_ref().unwrap_err().exit_code(), exit::STATE);
    assert!(
        r.host
            .call_log()
            .iter()
            .all(|c| !c.starts_with("restore") && !c.starts_with("link")),
        "{:?}",
        r.host.call_log()
    );
    assert_eq!(
        r.host.fw.sets(),
        ["DRAIN-80"],
        "someone else's set is not ours to destroy"
    );

    let mut h = FakeHost::new();
    h.links.insert("trk0".into(), false);
    let r = run(h, policy());
    assert!(matches!(r.result, Err(OpError::AlreadyDrained(_))));
}

#[test]
fn crash_leftovers_are_undone_by_undo_all() {
    // A crash right after install and link down: journal and host both carry the changes.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j.json");
    let mut h = FakeHost::new();
    {
        let mut j = Journal::open(&path).unwrap();
        install_fresh(&mut h, &mut j).unwrap();
        j.record(Change::LinkDown {
            ifname: "trk0".into(),
        })
        .unwrap();
        h.set_link("trk0", false).unwrap();
    }
    assert!(!plan().owned_lines(&h.fw.mangle_text()).is_empty() && !h.fw.sets().is_empty());
    let mut j = Journal::open(&path).unwrap();
    undo_all(&mut h, &mut j, &plan()).unwrap();
    assert!(plan().owned_lines(&h.fw.mangle_text()).is_empty());
    assert!(h.fw.sets().is_empty() && !h.fw.mangle_table_exists());
    assert!(h.links["trk0"]);
    assert!(Journal::open(&path).unwrap().is_empty());
    // Idempotent: a second undo finds nothing to do and succeeds.
    let mut j = Journal::open(&path).unwrap();
    j.record(Change::Divert {
        prefix: "DRAIN".into(),
        drop_mangle_table: true,
    })
    .unwrap();
    undo_all(&mut h, &mut j, &plan()).unwrap();
    // A journal whose prefix no longer matches the config is reported, not silently dropped.
    j.record(Change::Divert {
        prefix: "OLD".into(),
        drop_mangle_table: false,
    })
    .unwrap();
    let e = undo_all(&mut h, &mut j, &plan()).unwrap_err();
    assert!(e.to_string().contains("OLD"), "{e}");
    assert_eq!(j.entries().len(), 1, "kept for a later undo");
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

#[test]
fn undrain_after_a_crash_withdraws_gracefully_then_removes_everything() {
    let dir = tempfile::tempdir().unwrap();
    let mut j = Journal::open(&dir.path().join("j.json")).unwrap();
    let mut h = FakeHost::new();
    install_fresh(&mut h, &mut j).unwrap();
    let mut events = Vec::new();
    undrain(
        &mut Cycle::new(&mut h, &mut j, &plan(), &policy(), &mut |e| events.push(e)),
        false,
    )
    .unwrap();
    let withdrawn = h.withdrawn_at().expect("withdrawn before removal");
    assert!(
        h.t() >= withdrawn + S(2),
        "grace kept for flows already at the peer: {:?}",
        h.t()
    );
    assert!(plan().owned_lines(&h.fw.mangle_text()).is_empty() && h.fw.sets().is_empty());
    assert!(!h.fw.mangle_table_exists());
    assert!(j.is_empty());
    assert!(matches!(events.first(), Some(Event::Withdrawn { .. })));
}

#[test]
fn undrain_without_a_journal_still_removes_our_names_and_brings_the_link_up() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = FakeHost::new();
    {
        // The journal is lost (another disk, a wiped state dir): only the host shows the divert.
        let mut lost = Journal::open(&dir.path().join("lost.json")).unwrap();
        install_fresh(&mut h, &mut lost).unwrap();
    }
    h.set_link("trk0", false).unwrap();
    let mut j = Journal::open(&dir.path().join("j.json")).unwrap();
    undrain(
        &mut Cycle::new(&mut h, &mut j, &plan(), &policy(), &mut |_| {}),
        false,
    )
    .unwrap();
    assert!(plan().owned_lines(&h.fw.mangle_text()).is_empty() && h.fw.sets().is_empty());
    assert!(h.links["trk0"]);
    // Nothing installed, nothing recorded: undrain is a no-op that succeeds.
    let calls = h.call_log().len();
    undrain(
        &mut Cycle::new(&mut h, &mut j, &plan(), &policy(), &mut |_| {}),
        false,
    )
    .unwrap();
    assert!(
        !h.call_log()[calls..]
            .iter()
            .any(|c| c.starts_with("restore") || c.starts_with("link")),
        "{:?}",
        &h.call_log()[calls..]
    );
}

#[test]
fn track_file_trigger_writes_fault_and_undrain_writes_the_return_weight() {
    let mut p = policy();
    let path = std::path::PathBuf::from("/var/lib/drain-agent/keepalived.track");
    p.track_file = Some(path.clone());
    p.trigger_track_file = true;
    p.return_weight = -51;
    let mut r = run(FakeHost::new(), p.clone());
    assert!(r.result.is_ok(), "{:?}", r.result);
    assert_eq!(r.host.track[&path], TRACK_FAULT);
    assert!(
        r.host.links["trk0"],
        "the interface is left alone with the track-file trigger"
    );
    assert!(r.host.call_log().iter().all(|c| !c.starts_with("link")));
    // Already drained: a second drain is refused.
    let dir = tempfile::tempdir().unwrap();
    let mut j2 = Journal::open(&dir.path().join("j.json")).unwrap();
    let e = drain(&mut Cycle::new(
        &mut r.host,
        &mut j2,
        &plan(),
        &p,
        &mut |_| {},
    ))
    .unwrap_err();
    assert!(matches!(e, OpError::AlreadyDrained(_)), "{e}");
    // undrain demotes (the value is written before anything else clears the fault) and forgets
    // the fault.
    undrain(
        &mut Cycle::new(&mut r.host, &mut r.journal, &plan(), &p, &mut |_| {}),
        false,
    )
    .unwrap();
    assert_eq!(r.host.track[&path], -51);
    assert!(r.journal.is_empty());
    let log = r.host.call_log();
    assert_eq!(
        log.iter().rfind(|c| c.starts_with("track")).unwrap(),
        &format!("track {} -51", path.display())
    );
}

#[test]
fn link_down_undrain_demotes_before_bringing_the_link_up() {
    let mut p = policy();
    let path = std::path::PathBuf::from("/t/track");
    p.track_file = Some(path.clone());
    p.return_weight = -51;
    let mut r = run(FakeHost::new(), p.clone());
    assert!(r.result.is_ok());
    assert!(!r.host.links["trk0"]);
    undrain(
        &mut Cycle::new(&mut r.host, &mut r.journal, &plan(), &p, &mut |_| {}),
        false,
    )
    .unwrap();
    let log = r.host.call_log();
    let demote = r.host.call_index("track /t/track -51");
    let up = r.host.call_index("link trk0 up");
    assert!(
        demote < up,
        "a preempting node must be demoted before its fault clears: {log:?}"
    );
}

#[test]
fn undrain_of_a_node_still_master_never_demotes_it() {
    // A drain killed before its failover (at `ready`, or with the divert in place) leaves the
    // node MASTER. Writing `return_weight` there drops it below its preempting peer: keepalived
    // moves the VIP, the peer resets every flow this node serves (52 in the lab). Undrain must
    // only demote a node that is coming back from out of service.
    let mut p = policy();
    let path = std::path::PathBuf::from("/t/track");
    p.track_file = Some(path.clone());
    p.return_weight = -51;
    for divert_left in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::open(&dir.path().join("j.json")).unwrap();
        let mut h = FakeHost::new();
        if divert_left {
            install_fresh(&mut h, &mut j).unwrap();
        }
        undrain(
            &mut Cycle::new(&mut h, &mut j, &plan(), &p, &mut |_| {}),
            false,
        )
        .unwrap();
        assert_eq!(
            h.track.get(&path),
            None,
            "divert left: {divert_left}: {:?}",
            h.call_log()
        );
        assert!(j.is_empty());
        assert!(h.links["trk0"]);
    }
}

#[test]
fn undrain_after_a_crash_before_the_trigger_is_pulled_never_demotes() {
    // Killed between journalling the trigger and pulling it (`drain.trigger-journalled`): the
    // journal says the node left service, the kernel says it never did (tracked interface up,
    // track file not FAULT, VIP here). Demoting it then hands the VIP to a preempting peer and
    // resets every flow this node serves: what is in effect decides, not what was journalled.
    let path = std::path::PathBuf::from("/t/track");
    for trigger_track_file in [false, true] {
        let mut p = policy();
        p.track_file = Some(path.clone());
        p.trigger_track_file = trigger_track_file;
        p.return_weight = -51;
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::open(&dir.path().join("j.json")).unwrap();
        let mut h = FakeHost::new();
        install_fresh(&mut h, &mut j).unwrap();
        j.record(if trigger_track_file {
            Change::TrackFault { path: path.clone() }
        } else {
            Change::LinkDown {
                ifname: "trk0".into(),
            }
        })
        .unwrap();
        undrain(
            &mut Cycle::new(&mut h, &mut j, &plan(), &p, &mut |_| {}),
            false,
        )
        .unwrap();
        assert!(
            h.track.get(&path).is_none_or(|v| *v == 0),
            "track-file trigger: {trigger_track_file}: demoted a node still MASTER: {:?}",
            h.call_log()
        );
        assert!(j.is_empty());
        assert!(h.links["trk0"]);
    }
}

#[test]
fn undrain_after_a_crash_past_the_trigger_keeps_diverting_until_the_peer_owns_the_vip() {
    // Killed right after pulling the trigger (`drain.failover-triggered`): the VIP is moving to
    // the peer. Withdrawing the divert now makes the node serve new flows locally for the
    // moment it still holds the VIP, and the peer resets each of them once it owns it (11 in
    // the lab). New flows must keep going to the peer until it owns the VIP, and `post_wait`
    // after, as the drain itself would have had it; then the divert goes.
    let dir = tempfile::tempdir().unwrap();
    let mut j = Journal::open(&dir.path().join("j.json")).unwrap();
    let mut h = FakeHost::new();
    install_fresh(&mut h, &mut j).unwrap();
    j.record(Change::LinkDown {
        ifname: "trk0".into(),
    })
    .unwrap();
    h.set_link("trk0", false).unwrap();
    let owned_at = h.t() + h.failover_delay;
    let p = policy();
    undrain(
        &mut Cycle::new(&mut h, &mut j, &plan(), &p, &mut |_| {}),
        false,
    )
    .unwrap();
    assert_eq!(
        h.withdrawn_at(),
        None,
        "withdrawn while the VIP moved: {:?}",
        h.call_log()
    );
    assert!(
        h.t() >= owned_at + p.post_wait,
        "removed at {:?}, before the peer owned the VIP ({owned_at:?}) + post_wait",
        h.t()
    );
    assert!(plan().owned_lines(&h.fw.mangle_text()).is_empty() && h.fw.sets().is_empty());
    assert!(j.is_empty());
    assert!(h.links["trk0"]);
}

/// Installs the divert as the drain does (journal first), as a crashed drain would leave it.
fn install_fresh(h: &mut FakeHost, j: &mut Journal) -> Result<(), OpError> {
    let receipt = divert::prepare(h.firewall(), &plan()).map_err(HostError::from)?;
    install(h, j, &plan(), &receipt)
}

/// The test plan with another per-port capacity.
fn plan_with_capacity(capacity: u32) -> DivertPlan {
    let cfg = crate::ops::fake::test_config(
        "80, 7",
        &format!("firewall:\n  max_diverted_flows: {capacity}\n"),
    );
    DivertPlan::new(&cfg)
}

fn grown(r: &Run) -> Vec<String> {
    r.events
        .iter()
        .filter_map(|e| match e {
            Event::RecordGrown { set, .. } => Some(set.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn the_record_grows_ahead_of_a_high_rate_and_records_every_flow() {
    // 20 000 new flows/s for a 4 s drain and the failover after it: 110 000+ flows.
    let mut h = FakeHost::new();
    h.syn_rate = 20_000.0;
    h.conns = vec![conn(Some(4000), false)];
    let r = run(h, policy());
    let rep = r.result.as_ref().unwrap();
    // Member 1 before member 0 is half full: at the rate it fills it would be before the
    // look after next.
    assert_eq!(grown(&r), ["DRAIN-80-1"], "{:?}", r.events);
    assert!(r.events.iter().any(|e| matches!(
        e,
        Event::RecordGrown { recorded, .. } if *recorded < 32_768 && *recorded > 20_000
    )));
    assert_eq!(rep.unrecorded_syns, 0, "{rep:?}");
    assert_eq!(rep.sealed_drops, 0);
    let syns = r.host.fw.syns_played(80);
    assert!(syns > 80_000, "{syns}");
    assert_eq!(rep.diverted_flows, syns, "every SYN recorded");
    assert!(!r
        .events
        .iter()
        .any(|e| matches!(e, Event::Unrecorded { .. })));
    assert!(r.events.iter().any(|e| matches!(
        e,
        Event::Progress { diverted_flows, .. } if *diverted_flows > 0
    )));
    assert_no_divert_left(&r, None);
}

#[test]
fn a_full_record_is_reported_served_locally_then_dropped_after_the_seal() {
    // Capacity 1024 per port at 2 000 flows/s: full after half a second.
    let mut h = FakeHost::new();
    h.syn_rate = 2_000.0;
    h.conns = vec![conn(Some(2000), false)];
    let r = run_plan(h, policy(), &plan_with_capacity(1024));
    let rep = r.result.as_ref().unwrap();
    let syns = r.host.fw.syns_played(80);
    assert_eq!(rep.diverted_flows, 1024);
    assert_eq!(rep.unrecorded_syns, syns - 1024, "counted exactly: {rep:?}");
    assert!(
        rep.sealed_drops > 0 && rep.sealed_drops < rep.unrecorded_syns,
        "{rep:?}"
    );
    assert!(grown(&r).is_empty(), "no room to grow at capacity 1024");
    // Reported while it happens, not only in the totals.
    let unrecorded = event_index(&r.events, "Unrecorded", |e| {
        matches!(e, Event::Unrecorded { .. })
    });
    let sealed = event_index(&r.events, "Sealed", |e| matches!(e, Event::Sealed { .. }));
    assert!(unrecorded < sealed);
    assert!(matches!(
        r.events.iter().rev().find(|e| matches!(e, Event::DivertTotals { .. })),
        Some(Event::DivertTotals { unrecorded_syns, .. }) if *unrecorded_syns == rep.unrecorded_syns
    ));
}

#[test]
fn the_seal_comes_after_the_drain_and_before_drained_and_the_trigger() {
    let mut h = FakeHost::new();
    h.conns = vec![conn(Some(300), false)];
    let r = run(h, policy());
    assert!(r.result.is_ok());
    let at = |what, f: fn(&Event) -> bool| event_index(&r.events, what, f);
    let sealed = at("Sealed", |e| matches!(e, Event::Sealed { .. }));
    assert!(at("Diverted", |e| matches!(e, Event::Diverted { .. })) < sealed);
    assert!(sealed < at("Drained", |e| matches!(e, Event::Drained { .. })));
    assert!(
        sealed
            < at("FailoverTriggered", |e| matches!(
                e,
                Event::FailoverTriggered { .. }
            ))
    );
}

#[test]
fn a_failed_seal_rolls_back() {
    let mut h = FakeHost::new();
    h.conns = vec![conn(Some(300), false)];
    // Install's transaction succeeds, the seal's fails.
    h.fw.fail_later(FakeOp::Restore, 1, restore_failure());
    let r = run(h, policy());
    assert!(matches!(r.result, Err(OpError::Host(_))), "{:?}", r.result);
    assert!(r.host.links["trk0"], "never failed over");
    assert_no_divert_left(&r, None);
}

#[test]
fn a_journal_that_cannot_record_the_failover_rolls_back_with_the_grace() {
    // The state directory fills (here: goes away) mid-drain, so the failover trigger cannot be
    // journalled. It must not be pulled, and the divert must be withdrawn with the rollback
    // grace like any other abort: removed at once, it would send the flows already at the
    // peer back to this node, which resets them.
    let mut h = FakeHost::new();
    h.conns = vec![conn(Some(300), false)];
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let mut journal = Journal::open(&state.join("j.json")).unwrap();
    let mut events = Vec::new();
    let result = drain(&mut Cycle::new(
        &mut h,
        &mut journal,
        &plan(),
        &policy(),
        &mut |e| {
            if matches!(e, Event::Drained { .. }) {
                std::fs::remove_dir_all(&state).unwrap();
            }
            events.push(e)
        },
    ));
    let e = result.unwrap_err();
    assert!(matches!(e, OpError::Journal(_)), "{e:?}");
    assert_eq!(e.exit_code(), exit::ENVIRONMENT, "{e}");
    assert!(h.links["trk0"], "failed over without a journal entry");
    assert!(!h.call_log().iter().any(|c| c.starts_with("link trk0 down")));
    let withdrawn = h.withdrawn_at().expect("the divert was withdrawn first");
    assert!(
        h.t() >= withdrawn + policy().rollback_grace,
        "removed {:?} after the withdrawal, before the grace",
        h.t() - withdrawn
    );
    let fw = &h.fw;
    assert!(plan().owned_lines(&fw.mangle_text()).is_empty());
    assert!(fw.sets().is_empty(), "sets left: {:?}", fw.sets());
    assert!(!fw.mangle_table_exists(), "mangle table not dropped");
    assert!(events.iter().any(|e| matches!(e, Event::Withdrawn { .. })));
}

#[test]
fn undo_all_undoes_every_change_when_the_journal_cannot_be_rewritten() {
    // `undrain` on a full state directory: each undo must still run (the divert must not stay
    // in place because forgetting the link entry failed), and the error says the journal was
    // not updated.
    let mut h = FakeHost::new();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let mut j = Journal::open(&state.join("j.json")).unwrap();
    install_fresh(&mut h, &mut j).unwrap();
    j.record(Change::LinkDown {
        ifname: "trk0".into(),
    })
    .unwrap();
    h.links.insert("trk0".into(), false);
    std::fs::remove_dir_all(&state).unwrap();
    let e = crate::ops::undo::undo_all(&mut h, &mut j, &plan()).unwrap_err();
    assert!(matches!(e, OpError::Journal(_)), "{e:?}");
    assert!(h.links["trk0"]);
    let fw = &h.fw;
    assert!(
        plan().owned_lines(&fw.mangle_text()).is_empty(),
        "divert left: {}",
        fw.mangle_text()
    );
    assert!(fw.sets().is_empty(), "sets left: {:?}", fw.sets());
}

#[test]
fn the_vip_moving_away_mid_drain_finishes_the_drain_and_says_connections_were_cut() {
    // keepalived here stops mid-drain and the peer takes the VIP: waiting for the sockets (their
    // clients now send to the peer) or rolling back (nothing would reach this node) serves no
    // one. The drain is finished, out of service, and the exit code says what happened.
    let mut h = FakeHost::new();
    h.conns = vec![conn(None, false), conn(None, false)];
    h.vip_moves_at = Some(S(2));
    let r = run(h, policy());
    let e = r.result.as_ref().unwrap_err();
    assert!(matches!(e, OpError::VipMoved { cut: 2, .. }), "{e:?}");
    assert_eq!(e.exit_code(), exit::VIP_MOVED, "{e}");
    let moved = r
        .host
        .first_call_at("link trk0 down")
        .expect("trigger pulled");
    assert!(
        moved >= S(2) && moved - S(2) <= S(1),
        "noticed {:?} after the VIP moved at 2 s",
        moved.saturating_sub(S(2))
    );
    assert!(!r.host.links["trk0"], "stays out of service");
    assert!(r.host.withdrawn_at().is_none(), "not rolled back");
    assert!(r.events.iter().any(|e| matches!(e, Event::CleanedUp)));
    assert_no_divert_left(&r, None);
}
