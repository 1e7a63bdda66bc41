//! Drains that do not end as planned: the peer lost, an interrupt, a failed install or seal,
//! a failover not confirmed, the VIP moving away on its own; what is rolled back and what is kept.

use super::*;

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
