//! keepalived's `notify` wired to `drain-agent notify` in the lab, as keepalived/ ships it: the
//! BACKUP node accepts diverted traffic by itself, so a drain needs no manual `accept`, and the
//! new MASTER releases that state on its own after the failover.

use std::time::Duration;

use drain_lab::scenario::{self, default_load, drain_agent, AgentOptions, DuringDrain, When};
use drain_lab::topology::{can_run_lab, wait_until, Lab, LabOptions, Node};

fn wait_for(what: &str, cond: impl FnMut() -> bool) {
    wait_until(what, Duration::from_secs(10), cond).unwrap();
}

fn arp_ignore(lab: &Lab, node: Node) -> String {
    let out = lab
        .exec(
            &lab.node_ns(node),
            &["sysctl", "-n", "net.ipv4.conf.eth0.arp_ignore"],
        )
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
#[ignore = "needs root and network namespaces; `make test` runs it"]
fn notify_prepares_the_backup_and_releases_it_once_master() {
    if !can_run_lab("notify_e2e", &[]) {
        return;
    }
    let mut lab = Lab::up(&LabOptions {
        agent_notify: true,
        ..LabOptions::default()
    })
    .unwrap();
    // At start-up lb1 went BACKUP then MASTER, lb2 BACKUP; the notify calls may finish out of
    // order, but each checks its state against the VIP it holds.
    wait_for("lb2 (BACKUP) to accept", || {
        lab.accepting(Node::Lb2).unwrap() && arp_ignore(&lab, Node::Lb2) == "1"
    });
    // lb1's last start-up notify (MASTER) has run, and no notify call is still going.
    lab.wait_announced(Node::Lb1, "MASTER", Duration::from_secs(15))
        .unwrap();
    assert!(
        !lab.accepting(Node::Lb1).unwrap(),
        "the MASTER carries no acceptance state"
    );
    assert_eq!(arp_ignore(&lab, Node::Lb1), "0");

    // No manual accept: the drain relies on what notify did.
    let opts = AgentOptions {
        no_accept: true,
        ..AgentOptions::default()
    };
    let r = scenario::run_in(
        &mut lab,
        "drain-agent-notify",
        &default_load(),
        Duration::from_millis(2500),
        drain_agent(opts),
    )
    .unwrap();
    let agent = r.event.agent.as_ref().unwrap();
    assert_eq!(agent.exit_code, 0, "{}", agent.stderr);
    assert_eq!(
        r.broken,
        0,
        "{:?}",
        r.load.failures.iter().take(5).collect::<Vec<_>>()
    );
    if let Err(stall) = r.load.stall_check() {
        panic!("{stall}");
    }
    // lb2 became MASTER: its notify released the acceptance state.
    wait_for("lb2 (MASTER) to release", || {
        !lab.accepting(Node::Lb2).unwrap() && arp_ignore(&lab, Node::Lb2) == "0"
    });

    // Two notify calls at once (keepalived does not serialise them): both succeed, the state is
    // made once. lb1 is in FAULT (drained) and holds no VIP, so BACKUP is not stale for it.
    let run = |lab: &Lab| {
        lab.agent(Node::Lb1, &["notify", "INSTANCE", "VI_1", "BACKUP", "150"])
            .unwrap()
    };
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| run(&lab));
        let b = s.spawn(|| run(&lab));
        (a.join().unwrap(), b.join().unwrap())
    });
    assert!(
        a.status.success() && b.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&a.stderr),
        String::from_utf8_lossy(&b.stderr)
    );
    let routes = lab
        .exec(
            &lab.node_ns(Node::Lb1),
            &["ip", "route", "show", "table", "main", "proto", "211"],
        )
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&routes.stdout).lines().count(), 1);

    // Malformed arguments: one line, exit 2, nothing changed.
    let before = lab.host_snapshot(Node::Lb1).unwrap();
    let bad = lab
        .agent(Node::Lb1, &["notify", "INSTANCE", "VI_1", "BOGUS", "100"])
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("BOGUS"), "{err}");
    assert_eq!(before, lab.host_snapshot(Node::Lb1).unwrap());

    // Back in service: the lab pair preempts, so undrain demotes lb1 (return_weight) and it comes
    // back as BACKUP — accepting, as notify BACKUP makes it — while lb2 keeps the VIP and its
    // connections. (tests/failback_e2e.rs drains the VIP back.)
    let out = lab.agent(Node::Lb1, &["undrain"]).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for("lb1 (BACKUP) to accept", || {
        lab.accepting(Node::Lb1).unwrap() && arp_ignore(&lab, Node::Lb1) == "1"
    });
    // keepalived on lb1 announced BACKUP after the undrain and every notify call has ended.
    lab.wait_announced(Node::Lb1, "BACKUP", Duration::from_secs(15))
        .unwrap();
    assert_eq!(
        lab.vip_owner().unwrap(),
        Some(Node::Lb2),
        "lb1 did not preempt"
    );
    assert!(
        !lab.accepting(Node::Lb2).unwrap(),
        "the MASTER carries no acceptance state"
    );
}

#[test]
#[ignore = "needs root and network namespaces; `make test` runs it"]
fn keepalived_restarting_on_the_peer_mid_drain_breaks_nothing() {
    if !can_run_lab("keepalived_restart_mid_drain", &[]) {
        return;
    }
    let mut lab = Lab::up(&LabOptions {
        agent_notify: true,
        ..LabOptions::default()
    })
    .unwrap();
    wait_for("lb2 (BACKUP) to accept", || {
        lab.accepting(Node::Lb2).unwrap()
    });
    // lb2 serves diverted flows when its keepalived stops (notify STOP) and starts again
    // (notify BACKUP): the acceptance they depend on must stay in place throughout.
    let opts = AgentOptions {
        no_accept: true,
        // While lb2 serves diverted flows.
        during: vec![(
            When::After("diverted", Duration::from_millis(500)),
            DuringDrain::RestartKeepalived(Node::Lb2),
        )],
        ..AgentOptions::default()
    };
    let r = scenario::run_in(
        &mut lab,
        "keepalived-restart",
        &default_load(),
        Duration::from_millis(2500),
        drain_agent(opts),
    )
    .unwrap();
    let agent = r.event.agent.as_ref().unwrap();
    assert_eq!(
        agent.exit_code, 0,
        "{}\n{:?}",
        agent.stderr, r.event.timeline
    );
    assert_eq!(
        r.broken,
        0,
        "{:?}",
        r.load.failures.iter().take(5).collect::<Vec<_>>()
    );
    if let Err(stall) = r.load.stall_check() {
        panic!("{stall}");
    }
    assert!(r
        .event
        .timeline
        .iter()
        .any(|(_, n)| n.contains("lb2: keepalived started")));
    assert_eq!(r.vip_owner_after, Some(Node::Lb2));
    wait_for("lb2 (MASTER) to release", || {
        !lab.accepting(Node::Lb2).unwrap()
    });
}
