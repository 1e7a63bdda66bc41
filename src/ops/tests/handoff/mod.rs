//! The hand-off, both sides, against the fake world.

use std::time::Duration;

use crate::config::Config;
use crate::journal::{Change, StateDir};
use crate::ops::drain::{self, DrainOptions};
use crate::ops::fake::{test_config, Conn, FakeHost};
use crate::ops::handoff::{self, PeerRequest, ReturnEnd, VipPorts};
use crate::ops::*;
use crate::plan::DivertPlan;

mod responder;

const S: fn(u64) -> Duration = Duration::from_secs;

fn cfg(deadline: &str) -> Config {
    test_config(
        "80, 7",
        &format!(
            "handoff:\n  key_file: /etc/drain-agent/handoff.key\n  deadline: {deadline}\ndrain:\n  mode: handoff\n  deadline: 5s\n"
        ),
    )
}

fn conns(closing_s: &[Option<u64>]) -> Vec<Conn> {
    closing_s
        .iter()
        .map(|c| Conn {
            closes_at: c.map(S),
            idle: false,
        })
        .collect()
}

struct Run {
    h: FakeHost,
    state: StateDir,
    events: Vec<Event>,
    result: Result<DrainReport, OpError>,
    _dir: tempfile::TempDir,
}

fn hand_off(mut h: FakeHost, cfg: &Config) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let state = StateDir::open(dir.path()).unwrap();
    let mut events = Vec::new();
    let result = drain::run(cfg, &DrainOptions::default(), &state, &mut h, &mut |e| {
        events.push(e)
    });
    Run {
        h,
        state,
        events,
        result,
        _dir: dir,
    }
}

fn nothing_left(r: &Run) {
    let fw = &r.h.fw;
    let plan = DivertPlan::new(&cfg("1h"));
    assert!(
        plan.owned_lines(&fw.mangle_text()).is_empty(),
        "{}",
        fw.mangle_text()
    );
    assert!(fw.sets().is_empty(), "{:?}", fw.sets());
    assert!(r.h.routes.is_empty(), "routes left: {:?}", r.h.routes);
    let j = r.state.drain_journal().unwrap();
    assert!(
        j.entries().iter().all(|e| e.change.is_maintenance_state()),
        "{:?}",
        j.entries()
    );
}

#[test]
fn hands_off_at_once_and_waits_for_its_connections_longer_than_a_drain_would() {
    let mut h = FakeHost::new();
    // Connections that outlive drain.deadline (5 s) by far: a drain would cut them.
    h.conns = conns(&[Some(2), Some(40), Some(95)]);
    let r = hand_off(h, &cfg("1h"));
    let rep = r.result.as_ref().unwrap();
    assert_eq!(rep.mode, crate::config::DrainMode::Handoff);
    assert_eq!(rep.reason, DrainReason::Empty);
    assert_eq!(rep.abandoned, 0);
    let log = r.h.call_log();
    let at = |what: &str| {
        r.h.first_call_at(what)
            .unwrap_or_else(|| panic!("no {what}: {log:?}"))
    };
    // The peer's return path first, then the divert, then the VIP accepted here, then the
    // failover at once (no drain wait), and the end only after the last connection.
    assert!(
        r.h.call_index("peer-agent begin") < r.h.call_index("restore install"),
        "{log:?}"
    );
    assert!(at("route 198.18.0.100 true") <= at("link trk0 down"));
    assert!(
        at("link trk0 down") < S(1),
        "failover at {:?}",
        at("link trk0 down")
    );
    assert!(
        at("peer-agent end") >= S(95),
        "ended at {:?}",
        at("peer-agent end")
    );
    assert!(at("route 198.18.0.100 false") >= at("peer-agent end"));
    assert!(r
        .events
        .iter()
        .any(|e| matches!(e, Event::HandoffEnded { .. })));
    nothing_left(&r);
    // The sysctls `accept` set are restored.
    assert_eq!(
        r.h.sysctls.get("net/ipv4/conf/eth0/arp_ignore").unwrap(),
        "0"
    );
}

#[test]
fn the_hand_off_deadline_cuts_what_is_left_and_still_ends_the_peer() {
    let mut h = FakeHost::new();
    h.conns = conns(&[None, None, Some(3)]);
    let r = hand_off(h, &cfg("20s"));
    let rep = r.result.as_ref().unwrap();
    assert_eq!(rep.reason, DrainReason::Deadline);
    assert_eq!(rep.abandoned, 2);
    assert!(r.h.first_call_at("peer-agent end").unwrap() >= S(20));
    nothing_left(&r);
}

#[test]
fn a_peer_agent_that_does_not_answer_or_refuses_changes_nothing() {
    for refuse in [None, Some("the two nodes serve different VIPs".to_string())] {
        let mut h = FakeHost::new();
        h.conns = conns(&[None]);
        h.peer_agent.down = refuse.is_none();
        h.peer_agent.refuse = refuse.clone();
        let r = hand_off(h, &cfg("1h"));
        let e = r.result.as_ref().unwrap_err();
        assert_eq!(e.exit_code(), exit::PEER_NOT_READY, "{e}");
        if let Some(why) = &refuse {
            assert!(e.to_string().contains(why), "{e}");
        }
        let log = r.h.call_log();
        assert!(
            !log.iter().any(|c| c.starts_with("restore")
                || c.starts_with("ipset")
                || c.starts_with("link")
                || c.starts_with("route")),
            "{log:?}"
        );
        assert!(r.state.drain_journal().unwrap().is_empty());
        // The request never reached a peer that acted on it: nothing to end there.
        assert!(!log.iter().any(|c| c == "peer-agent end"), "{log:?}");
    }
}

#[test]
fn a_begin_the_peer_took_but_never_answered_is_ended_there_and_changes_nothing_here() {
    // The peer's agent installs its return path and dies before replying; it is back 3 s later.
    let mut h = FakeHost::new();
    h.conns = conns(&[None]);
    h.peer_agent.dies_at_begin = Some(S(3));
    let r = hand_off(h, &cfg("1h"));
    let e = r.result.as_ref().unwrap_err();
    assert_eq!(e.exit_code(), exit::PEER_NOT_READY, "{e}");
    assert!(e.to_string().contains("told it to end the hand-off"), "{e}");
    let log = r.h.call_log();
    let begin = log.iter().position(|c| c == "peer-agent begin").unwrap();
    let end = log.iter().rposition(|c| c == "peer-agent end").unwrap();
    assert!(begin < end, "{log:?}");
    // `End` was retried until the agent was back, and answered.
    assert!(e.to_string().contains("(end done)"), "{e}");
    assert!(
        log.iter().filter(|c| *c == "peer-agent end").count() > 1,
        "{log:?}"
    );
    assert!(
        !log.iter()
            .any(|c| c.starts_with("restore") || c.starts_with("link") || c.starts_with("route")),
        "{log:?}"
    );
    assert!(r.state.drain_journal().unwrap().is_empty());

    // Back only after `End`'s retries ran out: the drain says so, and still changes nothing.
    let mut h = FakeHost::new();
    h.conns = conns(&[None]);
    h.peer_agent.dies_at_begin = Some(handoff::END_RETRY_FOR + S(5));
    let r = hand_off(h, &cfg("1h"));
    let e = r.result.as_ref().unwrap_err();
    assert_eq!(e.exit_code(), exit::PEER_NOT_READY, "{e}");
    assert!(
        e.to_string()
            .contains("could not tell it to end the hand-off"),
        "{e}"
    );
    assert!(r.state.drain_journal().unwrap().is_empty());
}

#[test]
fn an_interrupt_after_the_failover_cuts_the_rest_ends_the_peer_and_cleans_up() {
    let mut h = FakeHost::new();
    h.conns = conns(&[None, None]);
    h.interrupts_at = vec![S(10)];
    let r = hand_off(h, &cfg("1h"));
    let e = r.result.as_ref().unwrap_err();
    assert!(matches!(e, OpError::HandoffCut(2)), "{e}");
    assert_eq!(e.exit_code(), exit::INTERRUPTED);
    assert!(r.h.call_log().contains(&"peer-agent end".to_string()));
    nothing_left(&r);
}

#[test]
fn a_failure_before_the_failover_rolls_back_and_ends_the_peer() {
    let mut h = FakeHost::new();
    h.conns = conns(&[None]);
    // The install's transaction goes through; the seal's fails.
    h.fw.fail_later(
        crate::sys::firewall::FakeOp::Restore,
        1,
        crate::sys::firewall::FirewallError::BadOutput {
            binary: "iptables-restore".into(),
            detail: "injected".into(),
        },
    );
    let r = hand_off(h, &cfg("1h"));
    assert!(r.result.is_err());
    let log = r.h.call_log();
    assert!(log.contains(&"peer-agent end".to_string()), "{log:?}");
    assert!(!log.iter().any(|c| c == "link trk0 down"), "{log:?}");
    assert!(r.state.drain_journal().unwrap().is_empty());
    nothing_left(&r);
}

#[test]
fn hand_off_without_the_handoff_section_is_a_configuration_error() {
    let cfg = test_config("80", "");
    let opts = DrainOptions {
        mode: Some(crate::config::DrainMode::Handoff),
        ..Default::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let state = StateDir::open(dir.path()).unwrap();
    let mut h = FakeHost::new();
    let e = drain::run(&cfg, &opts, &state, &mut h, &mut |_| {}).unwrap_err();
    assert_eq!(e.exit_code(), exit::CONFIG, "{e}");
    assert!(h.call_log().is_empty());
}

#[test]
fn undrain_of_a_killed_hand_off_waits_for_the_connections_then_ends_the_peer() {
    let cfg = cfg("1h");
    let dir = tempfile::tempdir().unwrap();
    let state = StateDir::open(dir.path()).unwrap();
    let mut h = FakeHost::new();
    // What a hand-off leaves when its agent is SIGKILLed after the failover.
    let mut j = state.drain_journal().unwrap();
    let until = h.unix_now() + 3600;
    j.record(Change::Handoff {
        peer: cfg.peer.get(),
        peer_mac: "02:00:5e:10:00:0c".into(),
        until,
    })
    .unwrap();
    let plan = DivertPlan::new(&cfg).guarded([2, 0, 0x5e, 0x10, 0, 12]);
    let receipt = divert::prepare(h.firewall(), &plan).unwrap();
    crate::ops::cycle::install(&mut h, &mut j, &plan, &receipt).unwrap();
    crate::ops::peer::accept_into(&cfg, &mut j, &mut h).unwrap();
    j.record(Change::LinkDown {
        ifname: "trk0".into(),
    })
    .unwrap();
    h.set_link("trk0", false).unwrap();
    h.conns = conns(&[Some(30)]);
    let mut events = Vec::new();
    let done = undrain::run(
        &cfg,
        &undrain::UndrainOptions::default(),
        &state,
        &mut h,
        &mut |e| events.push(e),
    )
    .unwrap();
    assert!(done.tracked_interface_up);
    let end = h.first_call_at("peer-agent end").unwrap();
    assert!(end >= S(30), "the peer was told at {end:?}");
    assert!(h.first_call_at("route 198.18.0.100 false").unwrap() >= end);
    assert!(h.first_call_at("link trk0 up").unwrap() >= end);
    assert!(plan.owned_lines(&h.fw.mangle_text()).is_empty());
    assert!(h.fw.sets().is_empty());
    assert!(h.routes.is_empty());
    assert!(state.drain_journal().unwrap().is_empty());
    assert!(events
        .iter()
        .any(|e| matches!(e, Event::HandoffEnded { .. })));
}

#[test]
fn undrain_of_a_hand_off_killed_before_its_failover_withdraws_its_guarded_divert_gracefully() {
    // Killed with the divert in place, before the failover (`drain.installed` of a hand-off):
    // the flows diverted to the peer must keep going there for the grace period. The divert is
    // the hand-off's guarded one; withdrawn as the plain plan's, its read-back failed, the grace
    // was skipped and those flows were reset (5 in the lab's crash test).
    let cfg = cfg("1h");
    let dir = tempfile::tempdir().unwrap();
    let state = StateDir::open(dir.path()).unwrap();
    let mut h = FakeHost::new();
    let mut j = state.drain_journal().unwrap();
    j.record(Change::Handoff {
        peer: cfg.peer.get(),
        peer_mac: "02:00:5e:10:00:0c".into(),
        until: h.unix_now() + 3600,
    })
    .unwrap();
    let plan = DivertPlan::new(&cfg).guarded([2, 0, 0x5e, 0x10, 0, 12]);
    let receipt = divert::prepare(h.firewall(), &plan).unwrap();
    crate::ops::cycle::install(&mut h, &mut j, &plan, &receipt).unwrap();
    undrain::run(
        &cfg,
        &undrain::UndrainOptions::default(),
        &state,
        &mut h,
        &mut |_| {},
    )
    .unwrap();
    let withdrawn = h
        .withdrawn_at()
        .unwrap_or_else(|| panic!("not withdrawn before removal: {:?}", h.call_log()));
    // The removal is the last thing undrain does: it came at least the grace after the withdraw.
    assert!(
        h.t() >= withdrawn + cfg.drain.rollback_grace.get(),
        "done at {:?}, withdrawn at {withdrawn:?}: no grace for the diverted flows: {:?}",
        h.t(),
        h.call_log()
    );
    assert!(plan.owned_lines(&h.fw.mangle_text()).is_empty());
    assert!(state.drain_journal().unwrap().is_empty());
}

#[test]
fn a_return_path_journalled_but_not_installed_is_neither_trusted_nor_resumed() {
    // The peer's agent killed between journalling its return path and installing it (with
    // nothing, or only the sets, in the kernel). Trusted, the next `Begin` was answered "return
    // path installed" with none there (35 flows broken in the lab), and the restarted daemon
    // supervised a return path that did not exist.
    for sets_made in [false, true] {
        let (cfg, _dir, state, mut h) = peer_side();
        let until = h.unix_now() + 100;
        let mac = [2, 0, 0x5e, 0x10, 0, 11];
        let plan = DivertPlan::new(&cfg).returning(mac);
        let mut j = state.return_journal().unwrap();
        j.record(Change::Returning {
            peer: cfg.peer.get(),
            peer_mac: handoff::format_mac(&mac),
            until,
        })
        .unwrap();
        j.record(Change::Divert {
            prefix: plan.prefix().to_string(),
            drop_mangle_table: true,
        })
        .unwrap();
        if sets_made {
            h.firewall().ipset_restore(&plan.ipset_create()).unwrap();
        }
        assert_eq!(
            handoff::resumable(&cfg, &state, &mut h).unwrap(),
            None,
            "sets made: {sets_made}"
        );
        assert!(state.return_journal().unwrap().is_empty());
        assert!(h.fw.sets().is_empty(), "{:?}", h.fw.sets());
        // And `Begin` on such a journal installs the return path for real.
        let mut j = state.return_journal().unwrap();
        j.record(Change::Returning {
            peer: cfg.peer.get(),
            peer_mac: handoff::format_mac(&mac),
            until,
        })
        .unwrap();
        let r = handoff::begin(&cfg, &state, &mut h, &VipPorts::of(&cfg), until)
            .unwrap()
            .unwrap();
        r.plan(&cfg)
            .check_read_back(crate::plan::Phase::Installed, &h.fw.mangle_text())
            .unwrap();
        // Installed, it is resumed.
        assert_eq!(handoff::resumable(&cfg, &state, &mut h).unwrap(), Some(r));
    }
}

#[test]
fn the_daemon_start_leaves_an_unfinished_hand_off_to_undrain() {
    let cfg = cfg("1h");
    let dir = tempfile::tempdir().unwrap();
    let state = StateDir::open(dir.path()).unwrap();
    let mut h = FakeHost::new();
    let mut j = state.drain_journal().unwrap();
    j.record(Change::Handoff {
        peer: cfg.peer.get(),
        peer_mac: "02:00:5e:10:00:0c".into(),
        until: h.unix_now() + 3600,
    })
    .unwrap();
    let plan = DivertPlan::new(&cfg);
    let receipt = divert::prepare(h.firewall(), &plan).unwrap();
    crate::ops::cycle::install(&mut h, &mut j, &plan, &receipt).unwrap();
    let r = reconcile::reconcile(&cfg, &state, &mut h).unwrap();
    assert!(!r.repaired);
    assert!(!plan.owned_lines(&h.fw.mangle_text()).is_empty());
    assert!(!h.call_log().iter().any(|c| c.starts_with("peer-agent")));
}

fn peer_side() -> (Config, tempfile::TempDir, StateDir, FakeHost) {
    let cfg = cfg("1h");
    let dir = tempfile::tempdir().unwrap();
    let state = StateDir::open(dir.path()).unwrap();
    (cfg, dir, state, FakeHost::new())
}
