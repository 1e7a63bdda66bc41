//! Crash recovery: `undo_all` and `undrain` after a drain that was killed at each stage, and the
//! failover trigger (link, track file) that `undrain` takes back.

use super::*;

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
