//! Drains refused before anything changes: the peer not ready, the node not MASTER or already
//! out of service, leftovers of an earlier run.

use super::*;

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
