//! Failback, end to end, under one continuous mixed load: drain lb1 (lb2 becomes MASTER), do
//! maintenance on lb1 (HAProxy killed and started again, like `systemctl restart`), `undrain`
//! lb1, then drain lb2 back to lb1 with the same command, and `undrain` lb2. keepalived's notify
//! calls `drain-agent notify` as keepalived/ ships it, so no step prepares a peer by hand.
//! Zero broken flows over the whole sequence, for a preempting and a `nopreempt` pair, with both
//! failover triggers (tracked interface down, keepalived track file).

use std::time::Duration;

use drain_lab::scenario::{self, default_load, Clock, Event, EventOutcome};
use drain_lab::topology::{can_run_lab, wait_until, Lab, LabOptions, Node};

fn agent_ok(
    lab: &Lab,
    o: &mut EventOutcome,
    clock: &Clock,
    node: Node,
    args: &[&str],
) -> anyhow::Result<()> {
    let out = lab.agent(node, args)?;
    o.note(
        clock,
        format!(
            "{node}: drain-agent {} exited {}",
            args.join(" "),
            out.status.code().unwrap_or(-1)
        ),
    );
    if !out.status.success() {
        anyhow::bail!(
            "{node}: drain-agent {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

fn sequence(lab: &mut Lab, clock: &Clock) -> anyhow::Result<EventOutcome> {
    let mut o = EventOutcome::default();
    // Prepared by notify at start-up: lb2 is BACKUP and accepts.
    wait_until("lb2 accepting", Duration::from_secs(15), || {
        lab.accepting(Node::Lb2).unwrap()
    })?;
    agent_ok(lab, &mut o, clock, Node::Lb1, &["drain"])?;
    lab.wait_vip_owner(Node::Lb2, Duration::from_secs(5))?;
    // Maintenance on lb1: HAProxy killed and started again.
    lab.kill("haproxy-lb1")?;
    lab.start_haproxy(Node::Lb1)?;
    wait_until("lb1's HAProxy to listen", Duration::from_secs(15), || {
        lab.haproxy_listening(Node::Lb1).unwrap()
    })?;
    o.note(clock, "lb1: HAProxy restarted");
    agent_ok(lab, &mut o, clock, Node::Lb1, &["undrain"])?;
    // lb1 must come back as BACKUP (nopreempt, or demoted by return_weight) and accept.
    wait_until("lb1 accepting as BACKUP", Duration::from_secs(15), || {
        lab.accepting(Node::Lb1).unwrap()
    })?;
    lab.wait_announced(Node::Lb1, "BACKUP", Duration::from_secs(15))?;
    if lab.vip_owner()? != Some(Node::Lb2) {
        anyhow::bail!("lb1 took the VIP back on undrain: preemption would cut lb2's connections");
    }
    o.note(clock, "lb1 back as BACKUP, lb2 still MASTER");
    agent_ok(lab, &mut o, clock, Node::Lb2, &["drain"])?;
    lab.wait_vip_owner(Node::Lb1, Duration::from_secs(5))?;
    agent_ok(lab, &mut o, clock, Node::Lb2, &["undrain"])?;
    wait_until("lb2 accepting as BACKUP", Duration::from_secs(15), || {
        lab.accepting(Node::Lb2).unwrap()
    })?;
    lab.wait_announced(Node::Lb2, "BACKUP", Duration::from_secs(15))?;
    if lab.vip_owner()? != Some(Node::Lb1) {
        anyhow::bail!("lb2 took the VIP back on undrain");
    }
    o.note(clock, "back to the start: lb1 MASTER, lb2 BACKUP");
    Ok(o)
}

fn failback(nopreempt: bool, track_file_trigger: bool) {
    let name = format!("failback nopreempt={nopreempt} track_file={track_file_trigger}");
    if !can_run_lab(&name, &[]) {
        return;
    }
    let opts = LabOptions {
        nopreempt,
        track_file_trigger,
        agent_notify: true,
        ..LabOptions::default()
    };
    let mut lab = Lab::up(&opts).unwrap();
    // The `before` snapshot once the start-up notify calls are done (lb2's BACKUP makes it
    // accept), not while they still change the hosts.
    lab.wait_announced(Node::Lb2, "BACKUP", Duration::from_secs(15))
        .unwrap();
    lab.wait_announced(Node::Lb1, "MASTER", Duration::from_secs(15))
        .unwrap();
    let before = lab.pair_snapshots().unwrap();
    let mut load = default_load();
    load.duration_ms = 30_000;
    let r = scenario::run_in(
        &mut lab,
        "failback",
        &load,
        Duration::from_millis(2500),
        Event::Custom(Box::new(sequence)),
    )
    .unwrap();
    println!(
        "{name}\n{}",
        scenario::comparison_table(std::slice::from_ref(&r))
    );
    for (t, n) in &r.event.timeline {
        println!("  {t:>8.0} ms  {n}");
    }
    assert!(
        r.broken == 0,
        "{name}: {} broken: {:?}",
        r.broken,
        r.load.failures.iter().take(10).collect::<Vec<_>>()
    );
    if let Err(stall) = r.load.stall_check() {
        panic!("{name}: {stall}");
    }
    assert_eq!(r.vip_owner_after, Some(Node::Lb1));
    // lb1's full priority is back (its notify reset the demotion once MASTER): track files read 0.
    for node in Node::ALL {
        let v = std::fs::read_to_string(lab.track_file(node)).unwrap_or_default();
        assert!(
            v.trim().is_empty() || v.trim() == "0",
            "{node} track file holds {v:?}"
        );
    }
    let after = lab.pair_snapshots().unwrap();
    // Acceptance state sits on whichever node is BACKUP, as at the start.
    assert_eq!(before, after, "{name}: hosts differ from the start");
}

#[test]
#[ignore = "needs root and network namespaces; `make test` runs it"]
fn failback_nopreempt_link_down() {
    failback(true, false);
}

#[test]
#[ignore = "needs root and network namespaces; `make test` runs it"]
fn failback_preempt_link_down() {
    failback(false, false);
}

#[test]
#[ignore = "needs root and network namespaces; `make test` runs it"]
fn failback_nopreempt_track_file() {
    failback(true, true);
}

#[test]
#[ignore = "needs root and network namespaces; `make test` runs it"]
fn failback_preempt_track_file() {
    failback(false, true);
}
