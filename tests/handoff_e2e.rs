//! End-to-end: `drain-agent drain --handoff` on the MASTER of a real keepalived + HAProxy pair,
//! with the daemon serving the peer link on the peer, under the lab's mixed load with echo
//! sessions of 20 s. The VIP moves at once, no connection breaks however long it lives, and
//! both hosts end as they began; also when either agent dies mid-hand-off, and when the node
//! handing off goes away (then only its own connections, whose server is gone, may break).

use std::time::Duration;

use drain_lab::scenario::{
    self, drain_agent, handoff_load, AgentConfig, AgentOptions, DuringDrain, ScenarioResult, When,
    HANDOFF_EVENT_AT,
};
use drain_lab::topology::{can_run_lab, Lab, LabOptions, Node};

/// A lab whose agents can hand off, the daemon (the peer link) running on lb2.
fn handoff_lab() -> Lab {
    let mut lab = Lab::up(&LabOptions {
        handoff: true,
        ..LabOptions::default()
    })
    .unwrap();
    lab.write_agent_config(Node::Lb2, &AgentConfig::default())
        .unwrap();
    lab.start_daemon(Node::Lb2).unwrap();
    lab
}

fn run(
    lab: &mut Lab,
    name: &str,
    handoff_deadline: &str,
    during: Vec<(When, DuringDrain)>,
) -> ScenarioResult {
    let r = scenario::run_in(
        lab,
        name,
        &handoff_load(),
        HANDOFF_EVENT_AT,
        drain_agent(AgentOptions {
            args: vec!["--handoff".into()],
            overrides: AgentConfig {
                // The drain deadline does not apply to a hand-off: sessions of 20 s outlive it.
                deadline: "3s".into(),
                handoff_deadline: handoff_deadline.into(),
                ..AgentConfig::default()
            },
            during,
            no_accept: false,
        }),
    )
    .unwrap();
    println!("{}", scenario::comparison_table(std::slice::from_ref(&r)));
    for n in &r.event.timeline {
        println!("  {n:?}");
    }
    r
}

fn assert_no_broken(r: &ScenarioResult) {
    assert!(
        r.broken == 0,
        "{} broken flows: {}\nagent stderr: {}",
        r.broken,
        serde_json::to_string_pretty(&r.load.failures.iter().take(20).collect::<Vec<_>>()).unwrap(),
        r.event.agent.as_ref().map_or("", |a| a.stderr.as_str()),
    );
}

fn noted(r: &ScenarioResult, what: &str) -> bool {
    r.event
        .timeline
        .iter()
        .any(|n| format!("{n:?}").contains(what))
}

#[test]
#[ignore = "needs root and network namespaces; `make test` runs it"]
fn handoff_moves_the_vip_at_once_and_breaks_no_connection_however_long() {
    if !can_run_lab("handoff_moves_the_vip_at_once", &[]) {
        return;
    }
    let mut lab = handoff_lab();
    let before = lab.pair_snapshots().unwrap();
    let r = run(&mut lab, "drain-agent-handoff", "5m", Vec::new());
    let agent = r.event.agent.as_ref().expect("agent ran");
    assert_eq!(agent.exit_code, 0, "{}", agent.stderr);
    assert_no_broken(&r);
    let open = agent.event("ready").unwrap()["sockets"].as_u64().unwrap();
    assert!(
        open >= 100,
        "only {open} connections on lb1 at the hand-off"
    );
    // The VIP moves at once: before lb1's connections end, not after them as in a drain. The
    // first progress report after lb2 took the VIP still counts most of the connections lb1 had
    // when the hand-off started (its echo sessions last 20 s).
    let owned_at = agent.event("peer-owns-vip").unwrap()["t_ms"]
        .as_f64()
        .unwrap();
    println!(
        "VIP on lb2 {:.0} ms after the command",
        owned_at - HANDOFF_EVENT_AT.as_millis() as f64
    );
    let drained_at = agent.event("drained").unwrap()["t_ms"].as_f64().unwrap();
    assert!(
        owned_at < drained_at,
        "the VIP moved at {owned_at:.0} ms, after lb1's connections ended at {drained_at:.0} ms"
    );
    let remaining = agent
        .events
        .iter()
        .find(|e| e["event"] == "progress" && e["t_ms"].as_f64().unwrap() > owned_at)
        .and_then(|e| e["remaining"].as_u64())
        .expect("a progress event after the VIP moved");
    assert!(
        remaining * 2 > open,
        "only {remaining} of {open} connections were left when the VIP moved"
    );
    // lb1's connections, sessions of 20 s among them, ended on their own, long after the 3 s a
    // drain would have waited: the peer returned their packets all along.
    let report = &agent.result().unwrap()["report"];
    assert_eq!(report["mode"], "handoff", "{report}");
    assert_eq!(report["reason"], "empty", "{report}");
    assert_eq!(report["abandoned"], 0, "{report}");
    assert!(
        report["drain_ms"].as_f64().unwrap() > 10_000.0,
        "lb1's connections ended within {report}: were the long sessions there?"
    );
    let (before_hs, during_hs) = (
        &r.load.handshake_baseline_ms,
        &r.load.handshake_after_baseline_ms,
    );
    println!(
        "{open} connections on lb1 at the hand-off; handshakes: steady p99.9 {:.3} ms, max during the hand-off {:.3} ms; connect() max {:.1} ms",
        before_hs.p999, during_hs.max, r.load.setup_latency_after_baseline_ms.max
    );
    if let Err(stall) = r.load.stall_check() {
        panic!("during the hand-off: {stall}");
    }
    lab.undrain_and_compare(&before).unwrap();
}

#[test]
#[ignore = "needs root and network namespaces; `make test` runs it"]
fn handoff_survives_its_agent_killed_and_undrain_finishes_it() {
    if !can_run_lab("handoff_survives_its_agent_killed", &[]) {
        return;
    }
    let mut lab = handoff_lab();
    let before = lab.pair_snapshots().unwrap();
    let r = run(
        &mut lab,
        "handoff-agent-killed",
        "5m",
        vec![
            (
                When::After("peer-owns-vip", Duration::from_secs(1)),
                DuringDrain::Kill,
            ),
            (When::At(Duration::ZERO), DuringDrain::Undrain),
        ],
    );
    // Killed after the failover: lb1's connections kept coming back through lb2 while no agent
    // ran on lb1; `undrain` waited for them, ended lb2's return path and cleaned up.
    assert_no_broken(&r);
    assert!(noted(&r, "undrain exited 0"), "{:?}", r.event.timeline);
    lab.undrain_and_compare(&before).unwrap();
}

#[test]
#[ignore = "needs root and network namespaces; `make test` runs it"]
fn handoff_survives_the_peers_daemon_killed_and_restarted() {
    if !can_run_lab("handoff_survives_the_peers_daemon_killed", &[]) {
        return;
    }
    let mut lab = handoff_lab();
    let before = lab.pair_snapshots().unwrap();
    let r = run(
        &mut lab,
        "handoff-peer-daemon-killed",
        "5m",
        vec![
            (
                When::After("peer-owns-vip", Duration::from_secs(1)),
                DuringDrain::KillDaemon(Node::Lb2),
            ),
            (
                When::At(Duration::from_secs(6)),
                DuringDrain::StartDaemon(Node::Lb2),
            ),
        ],
    );
    // The return path lives in lb2's kernel, not in its agent; the restarted daemon resumed
    // supervising it from its journal and removed it when lb1 ended the hand-off.
    let agent = r.event.agent.as_ref().expect("agent ran");
    assert_eq!(agent.exit_code, 0, "{}", agent.stderr);
    assert!(agent.event("handoff-ended").is_some(), "{:?}", agent.events);
    assert_no_broken(&r);
    lab.undrain_and_compare(&before).unwrap();
}

#[test]
#[ignore = "needs root and network namespaces; `make test` runs it"]
fn handoff_whose_node_goes_away_breaks_only_that_nodes_connections() {
    if !can_run_lab("handoff_whose_node_goes_away", &[]) {
        return;
    }
    let mut lab = handoff_lab();
    let before = lab.pair_snapshots().unwrap();
    let r = run(
        &mut lab,
        "handoff-node-gone",
        "15s",
        vec![
            (
                When::After("peer-owns-vip", Duration::from_secs(2)),
                DuringDrain::NodeLinkDown(Node::Lb1),
            ),
            (
                When::At(Duration::from_secs(9)),
                DuringDrain::NodeLinkUp(Node::Lb1),
            ),
        ],
    );
    // lb2 saw lb1 stop answering for the VIP and removed its return path on its own; lb1's
    // connections, whose server was gone, got lb2's RST. Every flow whose SYN came after the
    // divert (lb2's: the divert sent it there, or it arrived there after the failover) is fine.
    let agent = r.event.agent.as_ref().expect("agent ran");
    let failures = &r.load.failures;
    assert_eq!(
        failures.len() as u64,
        r.broken,
        "the failure list is complete"
    );
    let diverted_at = agent.event("diverted").unwrap()["t_ms"].as_f64().unwrap();
    let late: Vec<_> = failures
        .iter()
        .filter(|f| f.start_ms >= diverted_at)
        .collect();
    assert!(
        late.is_empty(),
        "flows of the peer broke (divert at {diverted_at:.0} ms): {late:?}"
    );
    assert!(
        r.broken > 0,
        "lb1 went away with its connections: some must have broken"
    );
    assert_eq!(agent.exit_code, 0, "{}", agent.stderr);
    let ended = agent.event("handoff-ended").expect("lb2 answered the end");
    assert!(
        ended["detail"]
            .as_str()
            .unwrap()
            .contains("stopped answering"),
        "lb2 should have ended the return path itself: {ended}"
    );
    lab.undrain_and_compare(&before).unwrap();
}
