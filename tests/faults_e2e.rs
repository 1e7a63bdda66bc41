//! End-to-end: faults around a drain of the MASTER of a real keepalived + HAProxy pair under the
//! lab's mixed load, each with the outcome the README's "What happens when…" table documents:
//! the exit code, the events, the state left, and no broken flow where the flows go to a live
//! server.
//!
//! The conntrack table filling up is not here: `net.netfilter.nf_conntrack_max` cannot be set
//! in a network namespace on this kernel (EINVAL for any value), and filling the host's table
//! would hit every namespace on the machine; the README says why the agent does not make it
//! worse.

use std::fs;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use drain_lab::scenario::{
    self, default_load, drain_agent, AgentConfig, AgentOptions, DuringDrain, ScenarioResult, When,
};
use drain_lab::topology::{addr, can_run_lab, wait_until, Lab, LabOptions, Node, INGRESS_IF};

const EVENT_AT: Duration = Duration::from_millis(2500);

/// How long after a flow's `start_ms` its SYN may leave (see drain_e2e.rs).
const SYN_SEND_SLACK_MS: f64 = 20.0;

fn assert_no_broken(r: &ScenarioResult) {
    let agent = r.event.agent.as_ref().expect("agent ran");
    assert!(
        r.broken == 0,
        "{} broken flows: {}\nagent stderr: {}\ntimeline: {:?}",
        r.broken,
        serde_json::to_string_pretty(&r.load.failures.iter().take(20).collect::<Vec<_>>()).unwrap(),
        agent.stderr,
        r.event.timeline
    );
}

fn print(r: &ScenarioResult) {
    println!("{}", scenario::comparison_table(std::slice::from_ref(r)));
    for n in &r.event.timeline {
        println!("  {n:?}");
    }
    if let Some(a) = &r.event.agent {
        for e in &a.events {
            println!("  {e}");
        }
        println!("  stderr: {}", a.stderr);
    }
}

fn run(lab: &mut Lab, name: &str, opts: AgentOptions, echo_ms: Option<u64>) -> ScenarioResult {
    let mut load = default_load();
    if let Some(ms) = echo_ms {
        load.echo.session_ms = ms;
    }
    let r = scenario::run_in(lab, name, &load, EVENT_AT, drain_agent(opts)).unwrap();
    print(&r);
    r
}

fn sh(script: String) -> Vec<String> {
    vec!["sh".into(), "-c".into(), script]
}

fn noted(r: &ScenarioResult, what: &str) -> Option<f64> {
    r.event
        .timeline
        .iter()
        .find(|(_, n)| n.contains(what))
        .map(|(t, _)| *t)
}

/// An exclusive `flock` on `/run/xtables.lock`, held by this test process (another process
/// than the agent) until dropped, also when the test panics. File locks do not belong to a
/// network namespace: a tool in the node's namespace that takes the xtables lock (every
/// iptables-legacy command, `-w` or not) finds this one.
struct XtablesLock {
    _file: fs::File,
}

const XTABLES_LOCK: &str = "/run/xtables.lock";

impl XtablesLock {
    fn hold() -> XtablesLock {
        let f = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(XTABLES_LOCK)
            .unwrap();
        let start = Instant::now();
        // SAFETY: flock on a descriptor this function owns.
        while unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{XTABLES_LOCK} held by someone else for 10 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        XtablesLock { _file: f }
    }
}

/// Whether the xtables lock is held, as seen from a node's namespace (`flock -n` fails).
fn xtables_lock_held(lab: &Lab, node: Node) -> bool {
    let out = lab
        .exec_status(&lab.node_ns(node), &["flock", "-n", XTABLES_LOCK, "true"])
        .unwrap();
    !out.status.success()
}

#[test]
#[ignore = "needs root and network namespaces; `make test` runs it"]
fn xtables_lock_held_and_a_concurrent_firewall_writer_through_install_and_removal() {
    if !can_run_lab("xtables_lock", &["flock"]) {
        return;
    }
    let mut lab = Lab::up(&LabOptions::default()).unwrap();
    let lb1 = lab.node_ns(Node::Lb1);
    // The operator's own mangle rule: the table exists before the drain and must stay, with it.
    lab.exec(
        &lb1,
        &[
            "iptables",
            "-t",
            "mangle",
            "-A",
            "PREROUTING",
            "-s",
            "198.19.255.1/32",
            "-j",
            "ACCEPT",
        ],
    )
    .unwrap();
    let before = lab.pair_snapshots().unwrap();
    let _lock = XtablesLock::hold();
    assert!(xtables_lock_held(&lab, Node::Lb1), "lb1 sees the lock held");
    // Another firewall user in lb1 changing mangle all along the drain (bounded in count and
    // stopped by a file), counting its own failures.
    let stop = lab.dir.join("writer.stop");
    lab.spawn(
        "fw-writer",
        &lb1,
        &[
            "sh",
            "-c",
            &format!(
                "i=0; f=0; while [ ! -e {stop} ] && [ $i -lt 4000 ]; do \
                 iptables -t mangle -A OUTPUT -m comment --comment fault-writer -j RETURN || f=$((f+1)); \
                 iptables -t mangle -D OUTPUT -m comment --comment fault-writer -j RETURN || f=$((f+1)); \
                 i=$((i+1)); done; echo \"writer done: $i rounds, $f failures\"",
                stop = stop.display()
            ),
        ],
    )
    .unwrap();
    let r = run(
        &mut lab,
        "drain-agent-xtables-lock",
        AgentOptions::default(),
        None,
    );
    let held_after = xtables_lock_held(&lab, Node::Lb1);
    fs::write(&stop, "").unwrap();
    let log = lab.dir.join("fw-writer.log");
    wait_until(
        "the firewall writer to stop",
        Duration::from_secs(30),
        || fs::read_to_string(&log).is_ok_and(|t| t.contains("writer done")),
    )
    .unwrap();
    let writer = fs::read_to_string(&log).unwrap();
    println!("{}", writer.trim());
    assert_no_broken(&r);
    let agent = r.event.agent.as_ref().unwrap();
    assert_eq!(agent.exit_code, 0, "{}", agent.stderr);
    assert_eq!(agent.result().unwrap()["result"], "drained");
    assert!(agent.event("cleaned-up").is_some());
    assert!(held_after, "the lock was held through install and removal");
    assert!(
        writer.contains(", 0 failures"),
        "the other writer failed: {writer}"
    );
    drop(_lock);
    lab.undrain_and_compare(&before).unwrap();
}

/// A small tmpfs mounted on a directory (created 0700) for the test's life: unmounted when
/// dropped, also when the test panics, and before the lab removes its directory.
struct SmallFs(PathBuf);

impl SmallFs {
    fn mount(dir: &Path, size: &str) -> SmallFs {
        fs::create_dir_all(dir).unwrap();
        let st = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700")])
            .arg("drain-faults")
            .arg(dir)
            .status()
            .unwrap();
        assert!(st.success(), "mounting a tmpfs on {}", dir.display());
        SmallFs(dir.to_path_buf())
    }

    /// Fills it: a file of zeros until ENOSPC.
    fn fill(&self) -> Vec<String> {
        sh(format!(
            "dd if=/dev/zero of={}/filler bs=4096 2>/dev/null; true",
            self.0.display()
        ))
    }

    fn free(&self) {
        let _ = fs::remove_file(self.0.join("filler"));
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[test]
#[ignore = "needs root and network namespaces; `make test` runs it"]
fn a_full_state_directory_refuses_a_drain_and_mid_drain_rolls_back_gracefully() {
    if !can_run_lab("state_dir_full", &["mount", "dd"]) {
        return;
    }
    let mut lab = Lab::up(&LabOptions::default()).unwrap();
    let state = lab.dir.join("agent-state-lb1");
    let small = SmallFs::mount(&state, "64k");
    let before = lab.pair_snapshots().unwrap();

    // Full before the drain: refused, nothing changed.
    lab.write_agent_config(Node::Lb1, &AgentConfig::default())
        .unwrap();
    lab.write_agent_config(Node::Lb2, &AgentConfig::default())
        .unwrap();
    let fill = small.fill();
    let fill: Vec<&str> = fill.iter().map(String::as_str).collect();
    lab.exec(&lab.node_ns(Node::Lb1), &fill).unwrap();
    assert!(lab.agent(Node::Lb2, &["accept"]).unwrap().status.success());
    let out = lab.agent(Node::Lb1, &["drain"]).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("drain on a full state directory: {:?} {stderr}", out.status);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(
        stderr.contains("No space left on device") && stderr.contains(state.to_str().unwrap()),
        "the error names the cause and the directory: {stderr}"
    );
    assert!(lab.agent(Node::Lb2, &["release"]).unwrap().status.success());
    assert_eq!(before, lab.pair_snapshots().unwrap(), "nothing changed");
    small.free();

    // Full mid-drain: the failover cannot be journalled, so it is not pulled; the divert is
    // withdrawn with the grace (the flows already at the peer finish there) and removed.
    let opts = AgentOptions {
        during: vec![(
            When::After("diverted", Duration::from_millis(500)),
            DuringDrain::Exec("lb1".into(), small.fill()),
        )],
        ..AgentOptions::default()
    };
    let r = run(&mut lab, "drain-agent-state-full", opts, None);
    assert_no_broken(&r);
    let agent = r.event.agent.as_ref().unwrap();
    assert_eq!(agent.exit_code, 4, "{}", agent.stderr);
    assert!(
        agent.stderr.contains("No space left on device"),
        "{}",
        agent.stderr
    );
    assert!(agent.event("withdrawn").is_some());
    assert!(agent.event("failover-triggered").is_none());
    assert_eq!(r.vip_owner_after, Some(Node::Lb1), "lb1 still serves");
    // The kernel is as before; only the journal still lists the divert it could not forget.
    assert_eq!(before, lab.pair_snapshots().unwrap(), "rolled back exactly");
    small.free();
    let out = lab.agent(Node::Lb1, &["undrain"]).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let journal = fs::read_to_string(state.join("drain-journal.json")).unwrap_or_default();
    assert!(
        journal.trim().is_empty() || journal.trim() == "[]",
        "undrain finished the journal: {journal}"
    );
    assert_eq!(before, lab.pair_snapshots().unwrap());
    drop(small);
}

/// Every broken flow started before the divert was in place (the `diverted` event, stamped once
/// the install committed): a connection this node served, cut when the VIP moved without the
/// agent (its packets then reach the peer); none that went to the peer.
fn assert_only_local_flows_cut(r: &ScenarioResult) {
    let agent = r.event.agent.as_ref().unwrap();
    let committed = agent.event("diverted").unwrap()["t_ms"].as_f64().unwrap();
    for f in &r.load.failures {
        assert!(
            f.start_ms < committed,
            "a flow the peer served broke: {f:?} (divert in place at {committed:.1})"
        );
    }
}

/// keepalived back on lb1, then `undrain`: both hosts as before.
fn restart_keepalived_and_compare(lab: &mut Lab, before: &(String, String)) {
    lab.start_keepalived(Node::Lb1).unwrap();
    lab.wait_announced(Node::Lb1, "FAULT", Duration::from_secs(15))
        .unwrap();
    lab.undrain_and_compare(before).unwrap();
}

#[test]
#[ignore = "needs root and network namespaces; `make test` runs it"]
fn keepalived_stopped_on_the_draining_node_finishes_the_drain() {
    if !can_run_lab("keepalived_stopped", &[]) {
        return;
    }
    let mut lab = Lab::up(&LabOptions::default()).unwrap();
    let before = lab.pair_snapshots().unwrap();
    let opts = AgentOptions {
        during: vec![(
            When::After("diverted", Duration::from_millis(500)),
            DuringDrain::StopProcess("keepalived-lb1".into()),
        )],
        ..AgentOptions::default()
    };
    let r = run(&mut lab, "drain-agent-keepalived-stopped", opts, Some(6000));
    let agent = r.event.agent.as_ref().unwrap();
    assert_eq!(agent.exit_code, 13, "{}", agent.stderr);
    assert!(
        agent.stderr.contains("moved to the peer during the drain"),
        "{}",
        agent.stderr
    );
    // The stop was sent 500 ms after `diverted` (the note is stamped once keepalived exited).
    let sent = noted(&r, "emitted `diverted`").unwrap() + 500.0;
    let triggered = agent.event("failover-triggered").expect("drain finished")["t_ms"]
        .as_f64()
        .unwrap();
    assert!(triggered > sent, "{triggered} before the stop at {sent}");
    assert!(agent.event("withdrawn").is_none(), "not rolled back");
    assert!(agent.event("cleaned-up").is_some());
    assert_eq!(r.vip_owner_after, Some(Node::Lb2));
    assert_only_local_flows_cut(&r);
    restart_keepalived_and_compare(&mut lab, &before);
}

#[test]
#[ignore = "needs root and network namespaces; `make test` runs it"]
fn keepalived_killed_on_the_draining_node_ends_at_the_failover_wait() {
    if !can_run_lab("keepalived_killed", &[]) {
        return;
    }
    let mut lab = Lab::up(&LabOptions::default()).unwrap();
    let before = lab.pair_snapshots().unwrap();
    let opts = AgentOptions {
        during: vec![(
            When::After("diverted", Duration::from_millis(500)),
            DuringDrain::KillAll(Node::Lb1, "keepalived".into()),
        )],
        ..AgentOptions::default()
    };
    let r = run(&mut lab, "drain-agent-keepalived-killed", opts, Some(6000));
    let agent = r.event.agent.as_ref().unwrap();
    assert!(
        noted(&r, "2 keepalived process(es) killed").is_some(),
        "{:?}",
        r.event.timeline
    );
    assert_eq!(agent.exit_code, 11, "{}", agent.stderr);
    assert!(
        agent.stderr.contains("still configured here"),
        "{}",
        agent.stderr
    );
    assert!(agent.event("cleaned-up").is_some());
    assert!(lab.has_vip(Node::Lb1).unwrap() && lab.has_vip(Node::Lb2).unwrap());
    assert_only_local_flows_cut(&r);
    // No rule or set of the agent's is left on lb1 (the link stays down: out of service).
    let lb1 = lab.node_ns(Node::Lb1);
    let rules = lab.exec(&lb1, &["iptables-save"]).unwrap();
    let sets = lab.exec(&lb1, &["ipset", "list", "-n"]).unwrap();
    assert!(
        !String::from_utf8_lossy(&rules.stdout).contains("DRAIN")
            && !String::from_utf8_lossy(&sets.stdout).contains("DRAIN"),
        "divert left on lb1"
    );
    assert_eq!(
        before.1,
        lab.host_snapshot(Node::Lb2).unwrap(),
        "lb2 as before"
    );
}

#[test]
#[ignore = "needs root and network namespaces; `make test` runs it"]
fn the_peers_haproxy_stopped_mid_drain_withdraws_and_spares_local_flows() {
    if !can_run_lab("peer_haproxy_stopped", &[]) {
        return;
    }
    let mut lab = Lab::up(&LabOptions::default()).unwrap();
    let before_lb1 = lab.host_snapshot(Node::Lb1).unwrap();
    let opts = AgentOptions {
        during: vec![(
            When::After("diverted", Duration::from_millis(1000)),
            DuringDrain::StopProcess("haproxy-lb2".into()),
        )],
        ..AgentOptions::default()
    };
    let r = run(
        &mut lab,
        "drain-agent-peer-haproxy-stopped",
        opts,
        Some(6000),
    );
    let agent = r.event.agent.as_ref().unwrap();
    assert_eq!(agent.exit_code, 8, "peer lost: {}", agent.stderr);
    let stopped = noted(&r, "haproxy-lb2 stopped").unwrap();
    let failed: Vec<(f64, String)> = agent
        .events
        .iter()
        .filter(|e| e["event"] == "peer-probe-failed")
        .map(|e| {
            (
                e["t_ms"].as_f64().unwrap(),
                e["answer"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert!(
        failed.len() >= 2 && failed.iter().all(|(t, _)| *t > stopped - 5.0),
        "the probe saw the stopped HAProxy, after it stopped at {stopped}: {failed:?}"
    );
    let withdrawn = agent
        .event("withdrawn")
        .and_then(|e| e["t_ms"].as_f64())
        .expect("withdrawn event");
    let diverted = agent.event("diverted").unwrap();
    let installed = diverted["t_ms"].as_f64().unwrap() - diverted["install_ms"].as_f64().unwrap();
    // Only flows that went to lb2 (SYN after the install began, before the withdrawal) may
    // break: their server stopped. Every flow lb1 serves is untouched.
    for f in &r.load.failures {
        assert!(
            f.start_ms >= installed - SYN_SEND_SLACK_MS && f.start_ms <= withdrawn,
            "a flow lb1 serves broke: {f:?} (divert from {installed:.1}, withdrawn at {withdrawn:.1})"
        );
    }
    assert_eq!(r.vip_owner_after, Some(Node::Lb1), "lb1 keeps serving");
    assert_eq!(
        before_lb1,
        lab.host_snapshot(Node::Lb1).unwrap(),
        "lb1 rolled back exactly"
    );
}

#[test]
#[ignore = "needs root and network namespaces; `make test` runs it"]
fn the_clients_arp_entry_for_the_vip_flapping_breaks_nothing() {
    if !can_run_lab("arp_flapping", &[]) {
        return;
    }
    let mut lab = Lab::up(&LabOptions::default()).unwrap();
    let before = lab.pair_snapshots().unwrap();
    // The client forgets its resolved neighbour entry for the VIP every 20 ms (at most 600
    // times) from the divert on, through the failover: each packet after a flush waits for a
    // fresh ARP answer, which only the node that owns the VIP may give. (Flushing an entry still
    // being resolved drops the packets queued on it: the README's note on the VRRP switch.)
    let flap = format!(
        "i=0; while [ $i -lt 600 ]; do ip neigh flush to {vip} dev {dev} nud reachable nud stale nud delay nud probe; sleep 0.02; i=$((i+1)); done",
        vip = addr::VIP,
        dev = INGRESS_IF
    );
    let opts = AgentOptions {
        during: vec![(
            When::After("diverted", Duration::ZERO),
            DuringDrain::Spawn("arp-flap".into(), "cl".into(), sh(flap)),
        )],
        ..AgentOptions::default()
    };
    let r = run(&mut lab, "drain-agent-arp-flap", opts, None);
    assert_no_broken(&r);
    let agent = r.event.agent.as_ref().unwrap();
    assert_eq!(agent.exit_code, 0, "{}", agent.stderr);
    assert_eq!(r.vip_owner_after, Some(Node::Lb2));
    lab.undrain_and_compare(&before).unwrap();
}
