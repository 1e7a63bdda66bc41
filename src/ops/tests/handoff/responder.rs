//! The peer's side of the hand-off: the return path it installs, keeps and removes, the requests
//! it refuses, and the peer link's wire format.

use super::*;

#[test]
fn the_peer_installs_a_return_path_once_and_removes_it_when_told() {
    let (cfg, _dir, state, mut h) = peer_side();
    let until = h.unix_now() + 100;
    let r = handoff::begin(&cfg, &state, &mut h, &VipPorts::of(&cfg), until)
        .unwrap()
        .unwrap();
    let ret = r.plan(&cfg);
    assert_eq!(ret.prefix(), "DRAINR");
    ret.check_read_back(crate::plan::Phase::Installed, &h.fw.mangle_text())
        .unwrap();
    // Again (the peer retried): the same return path, nothing installed twice.
    let again = handoff::begin(&cfg, &state, &mut h, &VipPorts::of(&cfg), until)
        .unwrap()
        .unwrap();
    assert_eq!(again, r);
    assert_eq!(
        h.call_log()
            .iter()
            .filter(|c| *c == "restore install")
            .count(),
        1
    );
    // The peer says the hand-off is over after 5 s.
    let t0 = h.t();
    let end_at = t0 + S(5);
    let clock = h.clock.clone();
    let report = handoff::supervise(&cfg, &state, &mut h, &r, &|| clock.get() >= end_at).unwrap();
    assert_eq!(report.end, ReturnEnd::PeerEnded);
    assert!(report.removed);
    assert!(ret.owned_lines(&h.fw.mangle_text()).is_empty());
    assert!(h.fw.sets().is_empty());
    assert!(state.return_journal().unwrap().is_empty());
    // Supervising meant probing the node that hands off.
    assert!(h.call_log().iter().filter(|c| *c == "probe").count() >= 20);
}

#[test]
fn the_peer_removes_the_return_path_when_the_node_handing_off_is_gone_or_late() {
    for (dies, end) in [
        (Some(S(3)), ReturnEnd::PeerGone),
        (None, ReturnEnd::Deadline),
    ] {
        let (cfg, _dir, state, mut h) = peer_side();
        h.peer_dies_at = dies;
        let until = h.unix_now() + 10;
        let r = handoff::begin(&cfg, &state, &mut h, &VipPorts::of(&cfg), until)
            .unwrap()
            .unwrap();
        let report = handoff::supervise(&cfg, &state, &mut h, &r, &|| false).unwrap();
        assert_eq!(report.end, end);
        assert!(report.removed);
        assert!(h.fw.sets().is_empty());
        assert!(state.return_journal().unwrap().is_empty());
    }
}

#[test]
fn the_peer_keeps_the_return_path_when_its_agent_stops_and_refuses_to_drain_meanwhile() {
    let (cfg, _dir, state, mut h) = peer_side();
    let until = h.unix_now() + 100;
    let r = handoff::begin(&cfg, &state, &mut h, &VipPorts::of(&cfg), until)
        .unwrap()
        .unwrap();
    h.interrupts_at = vec![h.t() + S(1)];
    let report = handoff::supervise(&cfg, &state, &mut h, &r, &|| false).unwrap();
    assert_eq!(report.end, ReturnEnd::Stopped);
    assert!(!report.removed);
    assert!(!r.plan(&cfg).owned_lines(&h.fw.mangle_text()).is_empty());
    assert_eq!(
        handoff::Returning::recorded(&state.return_journal().unwrap()),
        Some(r.clone())
    );
    // This node cannot drain while it returns its peer's connections.
    h.interrupts_at.clear();
    let e = drain::run(
        &test_config("80, 7", ""),
        &DrainOptions::default(),
        &state,
        &mut h,
        &mut |_| {},
    )
    .unwrap_err();
    assert!(matches!(e, OpError::ServingHandoff(_)), "{e}");
}

#[test]
fn the_peer_refuses_a_hand_off_for_other_vips() {
    let (cfg, _dir, state, mut h) = peer_side();
    let mut vips = VipPorts::of(&cfg);
    vips[0].ports.push(443);
    let refused = handoff::begin(&cfg, &state, &mut h, &vips, 0)
        .unwrap()
        .unwrap_err();
    assert!(refused.contains("different VIPs"), "{refused}");
    assert!(h.call_log().is_empty());
    assert!(matches!(
        handoff::hello(&cfg, "198.18.0.12".parse().unwrap(), &vips),
        handoff::PeerReply::Refused { .. }
    ));
}

/// The peer link's messages as they travel: during an upgrade the two nodes run different
/// builds, so a renamed tag or field would break every hand-off between them.
#[test]
fn peer_link_messages_keep_their_wire_format() {
    let vips = vec![VipPorts {
        vip: std::net::Ipv4Addr::new(198, 18, 0, 100),
        ports: vec![80, 7],
    }];
    let wire_vips = serde_json::json!([{"vip": "198.18.0.100", "ports": [80, 7]}]);
    let requests = [
        (
            PeerRequest::Hello { vips: vips.clone() },
            serde_json::json!({"op": "hello", "vips": wire_vips}),
        ),
        (
            PeerRequest::Begin { vips, until: 1234 },
            serde_json::json!({"op": "begin", "vips": wire_vips, "until": 1234}),
        ),
        (PeerRequest::End, serde_json::json!({"op": "end"})),
        (
            PeerRequest::Failback {
                mode: crate::config::DrainMode::Handoff,
            },
            serde_json::json!({"op": "failback", "mode": "handoff"}),
        ),
    ];
    for (request, wire) in requests {
        assert_eq!(serde_json::to_value(&request).unwrap(), wire);
        assert_eq!(
            serde_json::from_value::<PeerRequest>(wire).unwrap(),
            request
        );
    }
    let replies = [
        (
            handoff::PeerReply::Ok {
                detail: "return path installed".into(),
            },
            serde_json::json!({"reply": "ok", "detail": "return path installed"}),
        ),
        (
            handoff::PeerReply::Refused {
                reason: "busy".into(),
            },
            serde_json::json!({"reply": "refused", "reason": "busy"}),
        ),
    ];
    for (reply, wire) in replies {
        assert_eq!(serde_json::to_value(&reply).unwrap(), wire);
        assert_eq!(
            serde_json::from_value::<handoff::PeerReply>(wire).unwrap(),
            reply
        );
    }
}

#[test]
fn ask_end_retries_while_the_peers_agent_restarts_and_stops_at_a_refusal() {
    let ends = |h: &FakeHost| {
        h.call_log()
            .iter()
            .filter(|c| *c == "peer-agent end")
            .count()
    };
    // The agent answers again 3 s in: the end gets through.
    let mut h = FakeHost::new();
    h.peer_agent.down_until = Some(S(3));
    assert_eq!(handoff::ask_end(&mut h), Ok("end done".into()));
    assert!(ends(&h) > 1, "{:?}", h.call_log());
    assert!(h.t() >= S(3));
    // It never answers: the last error, once END_RETRY_FOR has passed and not before.
    let mut h = FakeHost::new();
    h.peer_agent.down = true;
    let e = handoff::ask_end(&mut h).unwrap_err();
    assert!(e.contains("connection refused"), "{e}");
    assert!(h.t() >= handoff::END_RETRY_FOR, "gave up at {:?}", h.t());
    assert!(ends(&h) > 1);
    // A refusal is an answer: not asked again.
    let mut h = FakeHost::new();
    h.peer_agent.refuse = Some("no return path here".into());
    assert_eq!(handoff::ask_end(&mut h), Err("no return path here".into()));
    assert_eq!(ends(&h), 1);
}

#[test]
fn the_peer_refuses_a_hand_off_while_another_operation_holds_the_lock() {
    let (cfg, _dir, state, mut h) = peer_side();
    // flock locks conflict between open files, so a lock taken here is "another process's".
    let held = state.lock().unwrap();
    let until = h.unix_now() + 100;
    let e = handoff::begin(&cfg, &state, &mut h, &VipPorts::of(&cfg), until).unwrap_err();
    assert_eq!(e.exit_code(), exit::BUSY, "{e}");
    assert!(
        e.to_string()
            .contains(&format!("pid {}", std::process::id())),
        "names the holder: {e}"
    );
    assert!(h.call_log().is_empty(), "{:?}", h.call_log());
    assert!(state.return_journal().unwrap().is_empty());
    drop(held);
}
