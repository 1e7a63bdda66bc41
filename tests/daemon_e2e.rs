//! The daemon, `drain-agent run`, on both lab nodes as keepalived/ ships it: it follows
//! keepalived's `vrrp_notify_fifo` (so the BACKUP accepts and the new MASTER releases on their
//! own) and serves the control socket the CLI's `drain`, `undrain` and `status` go through.

use std::time::Duration;

use drain_lab::scenario::{self, default_load, drain_agent, AgentOptions, DuringDrain, When};
use drain_lab::topology::{can_run_lab, wait_until, Lab, LabOptions, Node};

fn wait_for(what: &str, cond: impl FnMut() -> bool) {
    wait_until(what, Duration::from_secs(10), cond).unwrap();
}

#[test]
#[ignore = "needs root and network namespaces; `make test` runs it"]
fn the_daemon_follows_the_fifo_and_runs_the_clis_drain() {
    if !can_run_lab("daemon_fifo_and_socket", &[]) {
        return;
    }
    let mut lab = Lab::up(&LabOptions {
        daemon: true,
        ..LabOptions::default()
    })
    .unwrap();
    wait_for("lb2 (BACKUP, from the FIFO) to accept", || {
        lab.accepting(Node::Lb2).unwrap()
    });
    let status = lab.agent(Node::Lb1, &["--json", "status"]).unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(doc["mode"], "serving", "{doc}");
    assert!(
        doc["summary"].is_string(),
        "the answer came from the daemon: {doc}"
    );

    let opts = AgentOptions {
        no_accept: true,
        ..AgentOptions::default()
    };
    let r = scenario::run_in(
        &mut lab,
        "drain-agent-daemon",
        &default_load(),
        Duration::from_millis(2500),
        drain_agent(opts),
    )
    .unwrap();
    let agent = r.event.agent.as_ref().unwrap();
    assert_eq!(agent.exit_code, 0, "{}", agent.stderr);
    assert!(
        agent.event("diverted").is_some() && agent.event("cleaned-up").is_some(),
        "events streamed from the daemon"
    );
    assert_eq!(agent.result().unwrap()["result"], "drained");
    assert_eq!(
        r.broken,
        0,
        "{:?}",
        r.load.failures.iter().take(5).collect::<Vec<_>>()
    );
    if let Err(stall) = r.load.stall_check() {
        panic!("{stall}");
    }
    wait_for("lb2 (MASTER, from the FIFO) to release", || {
        !lab.accepting(Node::Lb2).unwrap()
    });
}

#[test]
#[ignore = "needs root and network namespaces; `make test` runs it"]
fn a_daemon_killed_mid_drain_repairs_on_restart_without_breaking_flows() {
    if !can_run_lab("daemon_killed_mid_drain", &[]) {
        return;
    }
    let mut lab = Lab::up(&LabOptions {
        daemon: true,
        ..LabOptions::default()
    })
    .unwrap();
    wait_for("lb2 to accept", || lab.accepting(Node::Lb2).unwrap());
    let before = lab.host_snapshot(Node::Lb1).unwrap();
    // The daemon dies with its drain's divert installed; started again, it finds the divert no
    // drain owns and withdraws it gracefully: flows already at lb2 finish there.
    let opts = AgentOptions {
        no_accept: true,
        // Killed once the divert is in place (the CLI streams the daemon's events), so the
        // restarted daemon has a divert to repair; started again as soon as it is dead.
        during: vec![
            (
                When::After("diverted", Duration::from_millis(500)),
                DuringDrain::KillDaemon(Node::Lb1),
            ),
            (
                When::At(Duration::ZERO),
                DuringDrain::StartDaemon(Node::Lb1),
            ),
        ],
        ..AgentOptions::default()
    };
    let r = scenario::run_in(
        &mut lab,
        "daemon-killed",
        &default_load(),
        Duration::from_millis(2500),
        drain_agent(opts),
    )
    .unwrap();
    let agent = r.event.agent.as_ref().unwrap();
    // The CLI lost its daemon mid-drain: exit 1 (internal error: the daemon closed the
    // connection before the final result), not a panic (101) or any other failure.
    assert_eq!(agent.exit_code, 1, "{}", agent.stderr);
    assert!(
        agent
            .stderr
            .contains("the daemon closed the connection before the final result"),
        "{}",
        agent.stderr
    );
    r.assert_killed_after_the_divert("lb1: daemon killed");
    assert_eq!(
        r.broken,
        0,
        "{:?}\n{:?}",
        r.load.failures.iter().take(5).collect::<Vec<_>>(),
        r.event.timeline
    );
    if let Err(stall) = r.load.stall_check() {
        panic!("{stall}");
    }
    assert_eq!(
        r.vip_owner_after,
        Some(Node::Lb1),
        "the drain never reached the failover"
    );
    assert_eq!(
        before,
        lab.host_snapshot(Node::Lb1).unwrap(),
        "the restarted daemon left nothing behind"
    );
}
