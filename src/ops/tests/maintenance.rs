//! Maintenance mode against the fake world.

use crate::config::DrainMode;
use crate::journal::{Change, StateDir};
use crate::ops::drain::DrainOptions;
use crate::ops::fake::{test_config, FakeHost};
use crate::ops::maintenance::{self, reassert};
use crate::ops::undrain::UndrainOptions;
use crate::ops::*;

fn on_req(reason: &str, by: &str, drain: &DrainOptions) -> maintenance::MaintenanceRequest {
    maintenance::MaintenanceRequest {
        reason: reason.into(),
        by: by.into(),
        drain: drain.clone(),
    }
}

fn off_req(undrain: &UndrainOptions, failback: bool) -> maintenance::MaintenanceOffRequest {
    maintenance::MaintenanceOffRequest {
        undrain: undrain.clone(),
        failback,
    }
}

/// `maintenance on` with the default drain options, events dropped.
fn maintenance_on(
    cfg: &crate::config::Config,
    state: &StateDir,
    h: &mut FakeHost,
    reason: &str,
    by: &str,
) -> Result<maintenance::MaintenanceOn, OpError> {
    let req = on_req(reason, by, &DrainOptions::default());
    maintenance::on(cfg, state, h, &req, &mut |_| {})
}

/// `maintenance off` without failback, events dropped.
fn maintenance_off(
    cfg: &crate::config::Config,
    state: &StateDir,
    h: &mut FakeHost,
) -> Result<maintenance::MaintenanceOff, OpError> {
    let req = off_req(&UndrainOptions::default(), false);
    maintenance::off(cfg, state, h, &req, &mut |_| {})
}

#[test]
fn on_drains_and_records_who_when_why_and_off_brings_the_node_back() {
    let cfg = test_config("80", "");
    let dir = tempfile::tempdir().unwrap();
    let state = StateDir::open(dir.path()).unwrap();
    let mut h = FakeHost::new();
    let on = maintenance_on(&cfg, &state, &mut h, "kernel upgrade", "alice").unwrap();
    assert!(on.drain.is_some());
    assert_eq!(on.maintenance.reason, "kernel upgrade");
    assert_eq!(on.maintenance.by, "alice");
    assert_eq!(on.maintenance.since, h.unix_now());
    assert!(on.maintenance.drained);
    assert_eq!(state.maintenance().unwrap(), Some(on.maintenance.clone()));
    assert!(!h.links["trk0"]);
    // Again: nothing drained twice, the first record stands.
    let again = maintenance_on(&cfg, &state, &mut h, "something else", "bob").unwrap();
    assert!(again.drain.is_none());
    assert_eq!(again.maintenance, on.maintenance);
    let off = maintenance_off(&cfg, &state, &mut h).unwrap();
    assert_eq!(off.was, Some(on.maintenance));
    assert!(off.undrained.tracked_interface_up);
    assert_eq!(state.maintenance().unwrap(), None);
    assert!(h.links["trk0"]);
    assert!(state.drain_journal().unwrap().is_empty());
}

#[test]
fn on_without_a_reason_changes_nothing() {
    let cfg = test_config("80", "");
    let dir = tempfile::tempdir().unwrap();
    let state = StateDir::open(dir.path()).unwrap();
    let mut h = FakeHost::new();
    let e = maintenance_on(&cfg, &state, &mut h, "  ", "alice").unwrap_err();
    assert_eq!(e.exit_code(), exit::CONFIG);
    assert!(h.call_log().is_empty());
    assert_eq!(state.maintenance().unwrap(), None);
}

#[test]
fn on_records_a_node_already_out_of_service_without_draining_it_again() {
    let cfg = test_config("80", "");
    let dir = tempfile::tempdir().unwrap();
    let state = StateDir::open(dir.path()).unwrap();
    let mut h = FakeHost::new();
    drain::run(&cfg, &DrainOptions::default(), &state, &mut h, &mut |_| {}).unwrap();
    let calls = h.call_log().len();
    let on = maintenance_on(&cfg, &state, &mut h, "disk swap", "alice").unwrap();
    assert!(on.drain.is_none());
    assert_eq!(h.call_log().len(), calls);
}

#[test]
fn a_reboot_that_brought_the_tracked_interface_back_is_undone_on_start() {
    let cfg = test_config("80", "");
    let dir = tempfile::tempdir().unwrap();
    let state = StateDir::open(dir.path()).unwrap();
    let mut h = FakeHost::new();
    assert_eq!(reassert(&cfg, &state, &mut h).unwrap(), None);
    state
        .drain_journal()
        .unwrap()
        .record(Change::LinkDown {
            ifname: "trk0".into(),
        })
        .unwrap();
    // After the reboot trk0 is up again, as the OS brings interfaces up; keepalived, which
    // starts after the daemon, holds no VIP yet.
    h.links.insert("trk0".into(), true);
    h.vip_local_initially = false;
    let r = reassert(&cfg, &state, &mut h).unwrap().unwrap();
    assert_eq!(r.trigger, "trk0 down");
    assert!(!h.links["trk0"]);
    // In effect already: nothing to do.
    assert_eq!(reassert(&cfg, &state, &mut h).unwrap(), None);
}

#[test]
fn a_trigger_journalled_but_never_pulled_on_a_node_holding_the_vip_is_not_pulled_on_start() {
    // The daemon killed between journalling the failover trigger and pulling it: on restart the
    // journal says "out of service", the link is up and the node is MASTER serving flows.
    // Pulling the trigger then is a failover that resets them (48 in the lab's crash test).
    let cfg = test_config("80", "");
    let dir = tempfile::tempdir().unwrap();
    let state = StateDir::open(dir.path()).unwrap();
    let mut h = FakeHost::new();
    state
        .drain_journal()
        .unwrap()
        .record(Change::LinkDown {
            ifname: "trk0".into(),
        })
        .unwrap();
    h.links.insert("trk0".into(), true);
    assert_eq!(reassert(&cfg, &state, &mut h).unwrap(), None);
    assert!(h.links["trk0"], "{:?}", h.call_log());
}

fn handoff_config() -> crate::config::Config {
    test_config("80", "handoff:\n  key_file: /etc/drain-agent/handoff.key\n")
}

#[test]
fn off_with_failback_undrains_first_then_asks_the_peer_to_drain_itself() {
    let cfg = handoff_config();
    let dir = tempfile::tempdir().unwrap();
    let state = StateDir::open(dir.path()).unwrap();
    let mut h = FakeHost::new();
    maintenance_on(&cfg, &state, &mut h, "upgrade", "alice").unwrap();
    let mut events = Vec::new();
    let off = maintenance::off(
        &cfg,
        &state,
        &mut h,
        &off_req(&UndrainOptions::default(), true),
        &mut |e| events.push(e),
    )
    .unwrap();
    assert_eq!(off.failed_back.as_deref(), Some("failback done"));
    let log = h.call_log();
    assert!(
        h.call_index("link trk0 up") < h.call_index("peer-agent failback"),
        "{log:?}"
    );
    assert!(events.iter().any(|e| matches!(e, Event::FailedBack { .. })));
}

#[test]
fn failback_without_the_peer_link_or_refused_by_the_peer() {
    // No peer link configured: refused before anything changes.
    let cfg = test_config("80", "");
    let dir = tempfile::tempdir().unwrap();
    let state = StateDir::open(dir.path()).unwrap();
    let mut h = FakeHost::new();
    let e = maintenance::off(
        &cfg,
        &state,
        &mut h,
        &off_req(&UndrainOptions::default(), true),
        &mut |_| {},
    )
    .unwrap_err();
    assert_eq!(e.exit_code(), exit::CONFIG);
    assert!(h.call_log().is_empty());
    // The peer keeps refusing (say its node cannot drain): this node is back, as BACKUP, and
    // the error says so; the peer was asked again for a while first.
    let cfg = handoff_config();
    let mut h = FakeHost::new();
    h.peer_agent.refuse = Some("peer not ready".into());
    let e = maintenance::off(
        &cfg,
        &state,
        &mut h,
        &off_req(&UndrainOptions::default(), true),
        &mut |_| {},
    )
    .unwrap_err();
    assert_eq!(e.exit_code(), exit::PEER_NOT_READY, "{e}");
    assert!(e.to_string().contains("back as BACKUP"), "{e}");
    assert!(
        h.call_log()
            .iter()
            .filter(|c| *c == "peer-agent failback")
            .count()
            > 5
    );
}

#[test]
fn on_a_node_without_the_vip_stops_accepting_and_stays_out_of_elections_until_off() {
    let cfg = test_config("80", "");
    let dir = tempfile::tempdir().unwrap();
    let state = StateDir::open(dir.path()).unwrap();
    let mut h = FakeHost::new();
    h.vip_local_initially = false;
    crate::ops::peer::accept(&cfg, &state, &mut h).unwrap();
    assert!(!state.accept_journal().unwrap().is_empty());
    let mut events = Vec::new();
    let on = maintenance::on(
        &cfg,
        &state,
        &mut h,
        &on_req("haproxy upgrade", "alice", &DrainOptions::default()),
        &mut |e| events.push(e),
    )
    .unwrap();
    assert!(on.drain.is_none(), "nothing to drain on a BACKUP");
    assert!(!on.maintenance.drained);
    assert_eq!(on.standby.as_deref(), Some("trk0 down"));
    assert!(on.summary().contains("held no VIP"), "{}", on.summary());
    assert!(!h.links["trk0"], "keepalived must not elect it");
    assert!(
        state.accept_journal().unwrap().is_empty(),
        "the peer's drain must find it not accepting"
    );
    assert!(h.routes.is_empty(), "the accept's local route is gone");
    assert!(matches!(
        state.drain_journal().unwrap().entries()[..],
        [crate::journal::Entry {
            change: Change::LinkDown { .. },
            ..
        }]
    ));
    assert!(events
        .iter()
        .any(|e| matches!(e, Event::FailoverTriggered { .. })));
    let off = maintenance_off(&cfg, &state, &mut h).unwrap();
    assert!(off.was.is_some());
    assert!(h.links["trk0"]);
    assert!(state.drain_journal().unwrap().is_empty());
    assert_eq!(state.maintenance().unwrap(), None);
}

#[test]
fn a_stand_by_without_demotion_leaves_a_track_file_that_was_never_written_absent() {
    // A BACKUP in maintenance comes back with `return_weight` 0: nothing to demote, and
    // keepalived reads a missing track file as 0, so `off` must not create one (it did).
    let cfg = test_config("80", "failover:\n  track_file: /t/track\n");
    let path = std::path::PathBuf::from("/t/track");
    let dir = tempfile::tempdir().unwrap();
    let state = StateDir::open(dir.path()).unwrap();
    let mut h = FakeHost::new();
    h.vip_local_initially = false;
    maintenance_on(&cfg, &state, &mut h, "kernel upgrade", "bob").unwrap();
    maintenance_off(&cfg, &state, &mut h).unwrap();
    assert_eq!(h.track.get(&path), None, "{:?}", h.call_log());
    assert!(h.links["trk0"]);
    assert!(state.drain_journal().unwrap().is_empty());
}

#[test]
fn a_reboot_that_reset_the_track_file_is_undone_on_start() {
    let cfg = test_config("80", "");
    let dir = tempfile::tempdir().unwrap();
    let state = StateDir::open(dir.path()).unwrap();
    let mut h = FakeHost::new();
    // The daemon starts before keepalived: no VIP here yet.
    h.vip_local_initially = false;
    let path = std::path::PathBuf::from("/t/track");
    state
        .drain_journal()
        .unwrap()
        .record(Change::TrackFault { path: path.clone() })
        .unwrap();
    // Gone (a tmpfs after the reboot), or rewritten to a healthy weight by whoever manages it.
    for reset in [None, Some(0), Some(TRACK_FAULT + 1)] {
        match reset {
            None => h.track.remove(&path),
            Some(v) => h.track.insert(path.clone(), v),
        };
        let r = reassert(&cfg, &state, &mut h)
            .unwrap()
            .unwrap_or_else(|| panic!("track file at {reset:?} left as it is"));
        assert_eq!(r.trigger, format!("track file /t/track = {TRACK_FAULT}"));
        assert_eq!(h.track.get(&path), Some(&TRACK_FAULT), "after {reset:?}");
    }
    assert!(h.links["trk0"], "the link is not the trigger here");
    // FAULT, or lower (still FAULT to keepalived): in effect, nothing written.
    let calls = h.call_log().len();
    for in_effect in [TRACK_FAULT, TRACK_FAULT - 1] {
        h.track.insert(path.clone(), in_effect);
        assert_eq!(reassert(&cfg, &state, &mut h).unwrap(), None);
    }
    assert_eq!(h.call_log().len(), calls, "{:?}", h.call_log());
}

#[test]
fn fail_back_here_drains_this_node_the_way_asked_and_brings_it_back_as_backup() {
    for mode in [DrainMode::Drain, DrainMode::Handoff] {
        let cfg = handoff_config();
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        let mut h = FakeHost::new();
        let mangle_before = h.fw.mangle_text();
        let line = maintenance::fail_back_here(&cfg, &state, &mut h, mode)
            .unwrap_or_else(|e| panic!("{mode:?}: {e}"));
        assert!(!line.is_empty());
        let log = h.call_log();
        // Out of service first (the VIP moves to the asking node), then back, as BACKUP.
        assert!(
            h.call_index("link trk0 down") < h.call_index("link trk0 up"),
            "{mode:?}: {log:?}"
        );
        assert!(h.links["trk0"], "{mode:?}");
        let handed_off = log.iter().any(|c| c == "peer-agent begin");
        assert_eq!(handed_off, mode == DrainMode::Handoff, "{mode:?}: {log:?}");
        assert_eq!(h.fw.mangle_text(), mangle_before, "{mode:?}");
        assert!(state.drain_journal().unwrap().is_empty(), "{mode:?}");
        assert_eq!(state.lock_holder(), None);
    }
}
