//! End-to-end: maintenance mode on a real keepalived + HAProxy pair wired to the agent as
//! keepalived/ ships it, under the lab's mixed load: `maintenance on` takes lb1 out with its
//! reason recorded, `maintenance off --failback` brings it back and moves the VIP back to it by
//! having lb2's agent drain lb2. Zero broken flows; both hosts end as they began.

use std::time::Duration;

use drain_lab::scenario::{self, default_load, AgentConfig, Event, EventOutcome};
use drain_lab::topology::{can_run_lab, Lab, LabOptions, Node};

#[test]
#[ignore = "needs root and network namespaces; `make test` runs it"]
fn maintenance_on_then_off_with_failback_breaks_nothing_and_restores_the_pair() {
    if !can_run_lab("maintenance_on_then_off_with_failback", &[]) {
        return;
    }
    let mut lab = Lab::up(&LabOptions {
        handoff: true,
        agent_notify: true,
        ..LabOptions::default()
    })
    .unwrap();
    lab.write_agent_config(Node::Lb2, &AgentConfig::default())
        .unwrap();
    lab.start_daemon(Node::Lb2).unwrap();
    // The start-up notify calls are done (lb2 BACKUP accepts) before the `before` snapshot.
    lab.wait_announced(Node::Lb2, "BACKUP", Duration::from_secs(15))
        .unwrap();
    lab.wait_announced(Node::Lb1, "MASTER", Duration::from_secs(15))
        .unwrap();
    let before = lab.pair_snapshots().unwrap();
    let mut load = default_load();
    load.duration_ms = 26_000;
    let event = Event::Custom(Box::new(|lab: &mut Lab, _clock| {
        let on = lab.agent(
            Node::Lb1,
            &["--json", "maintenance", "on", "--reason", "kernel upgrade"],
        )?;
        anyhow::ensure!(
            on.status.success(),
            "maintenance on: {}",
            String::from_utf8_lossy(&on.stderr)
        );
        let status = lab.agent(Node::Lb1, &["--json", "status"])?;
        let doc: serde_json::Value = serde_json::from_slice(&status.stdout)?;
        anyhow::ensure!(doc["mode"] == "maintenance", "status: {doc}");
        anyhow::ensure!(
            doc["maintenance"]["reason"] == "kernel upgrade",
            "status: {doc}"
        );
        anyhow::ensure!(lab.vip_owner()? == Some(Node::Lb2), "the VIP did not move");
        // The maintenance window: until lb2 has announced MASTER and its notify (release) ran.
        lab.wait_announced(Node::Lb2, "MASTER", Duration::from_secs(15))?;
        let off = lab.agent(Node::Lb1, &["--json", "maintenance", "off", "--failback"])?;
        anyhow::ensure!(
            off.status.success(),
            "maintenance off --failback: {}{}",
            String::from_utf8_lossy(&off.stdout),
            String::from_utf8_lossy(&off.stderr)
        );
        println!("{}", String::from_utf8_lossy(&off.stdout));
        Ok(EventOutcome::default())
    }));
    let r = scenario::run_in(
        &mut lab,
        "maintenance-failback",
        &load,
        Duration::from_secs(4),
        event,
    )
    .unwrap();
    println!("{}", scenario::comparison_table(std::slice::from_ref(&r)));
    assert_eq!(
        r.broken,
        0,
        "{}",
        serde_json::to_string_pretty(&r.load.failures.iter().take(10).collect::<Vec<_>>()).unwrap()
    );
    // The VIP is back on lb1, and both nodes are as they were (lb2 back as BACKUP, accepting).
    lab.wait_announced(Node::Lb2, "BACKUP", Duration::from_secs(15))
        .unwrap();
    assert_eq!(lab.vip_owner().unwrap(), Some(Node::Lb1));
    let after = lab.pair_snapshots().unwrap();
    assert_eq!(before.0, after.0, "lb1 not restored");
    assert_eq!(before.1, after.1, "lb2 not restored");
}
