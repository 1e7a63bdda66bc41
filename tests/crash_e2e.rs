//! End-to-end: the agent SIGKILLed at every fault-injection point (`src/faults.rs`) of drain,
//! undrain, accept/release, maintenance (a MASTER's drain and a BACKUP's stand-by), the hand-off
//! (both sides), the track-file trigger and the daemon, under the lab's mixed load; then the
//! documented recovery (`undrain`, `release`, `maintenance off`, or
//! the daemon's restart). For every step: the agent died where the test says (its own stderr
//! line, killed by SIGKILL), no flow broke, exactly one node holds the VIP, the node ends in the
//! step's documented state (serving, or back as BACKUP with the peer serving), and both hosts
//! (iptables-save, ipset list, rules, routes, links, sysctls, keepalived's track file) are
//! exactly as the documented outcome says. Each step starts from the lab's baseline, checked
//! (which doubles as a check of the step before).
//!
//! Needs a drain-agent built with `--features drain-agent/fault-injection` (`make test` and
//! `make crash` build it so); a binary without it is refused, never silently tested.
//! `CRASH_REPEAT=N` (`make crash`) runs every step N times; `CRASH_STEPS=point,...` only those.

use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use drain_lab::load::LoadSpec;
use drain_lab::scenario::{self, default_load, AgentConfig, Clock, Event, EventOutcome};
use drain_lab::topology::{can_run_lab, find_bin, wait_until, Lab, LabOptions, Node};

const CRASH_ENV: &str = "DRAIN_AGENT_CRASH_AT";

/// When the step's operation starts in its load.
const EVENT_AT: Duration = Duration::from_millis(2000);

/// The operation that dies at the point, and what comes before it in the same step.
#[derive(Clone, Copy, Debug)]
enum Op {
    /// `drain` on lb1 (the CLI runs it in its own process).
    Drain,
    /// A `drain` on lb1 killed at the given point, then `undrain`, which dies at the step's point.
    UndrainAfterKill(&'static str),
    /// A whole `drain` on lb1, then `undrain`, which dies.
    UndrainAfterDrain,
    /// `maintenance on` on lb1.
    MaintenanceOn,
    /// `maintenance on`, whole, then `maintenance off`, which dies.
    MaintenanceOff,
    /// `maintenance on` on lb2, the BACKUP, which holds no VIP: it stands by (stops accepting,
    /// pulls its trigger so keepalived keeps it out of elections) and dies; `maintenance off`.
    Standby,
    /// `accept` on lb2 (what keepalived's BACKUP notify runs).
    Accept,
    /// `accept` on lb2, whole, then `release`, which dies.
    Release,
    /// `drain --handoff` on lb1 (lb2's daemon answers the peer link).
    Handoff,
    /// `drain --handoff` on lb1, whole; lb2's daemon dies at the point.
    HandoffResponder,
    /// `drain` on lb1 through lb1's daemon, which dies.
    DaemonDrain,
}

impl Op {
    fn name(self) -> String {
        match self {
            Op::Drain => "drain".into(),
            Op::UndrainAfterKill(p) => format!("undrain (drain killed at {p})"),
            Op::UndrainAfterDrain => "undrain (after a drain)".into(),
            Op::MaintenanceOn => "maintenance on".into(),
            Op::MaintenanceOff => "maintenance off".into(),
            Op::Standby => "maintenance on (lb2, stand-by)".into(),
            Op::Accept => "accept (lb2)".into(),
            Op::Release => "release (lb2)".into(),
            Op::Handoff => "drain --handoff".into(),
            Op::HandoffResponder => "hand-off, lb2's daemon".into(),
            Op::DaemonDrain => "drain via lb1's daemon".into(),
        }
    }
}

/// Where a step must leave lb1 after its recovery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    /// It never left service: MASTER, the VIP here, the track file untouched.
    Serving,
    /// It had failed over: back as BACKUP (demoted by `return_weight`), lb2 holds the VIP.
    BackAsBackup,
}

/// One step of the table.
#[derive(Clone, Copy, Debug)]
struct Step {
    op: Op,
    point: &'static str,
    expect: Expect,
    /// In the normal suite's run (one step per distinct host state, to stay in its time);
    /// `make crash` runs every step.
    quick: bool,
}

const fn step(op: Op, point: &'static str, expect: Expect) -> Step {
    Step {
        op,
        point,
        expect,
        quick: false,
    }
}

const fn quick(op: Op, point: &'static str, expect: Expect) -> Step {
    Step {
        op,
        point,
        expect,
        quick: true,
    }
}

use Expect::{BackAsBackup, Serving};

/// Every step of the operations a plain pair runs (CLI on lb1, `accept`/`release` on lb2).
const PAIR_STEPS: &[Step] = &[
    step(Op::Drain, "drain.journalled", Serving),
    quick(Op::Drain, "divert.sets-created", Serving),
    step(Op::Drain, "drain.installed", Serving),
    step(Op::Drain, "drain.watching", Serving),
    step(Op::Drain, "drain.sealed", Serving),
    quick(Op::Drain, "drain.trigger-journalled", Serving),
    quick(Op::Drain, "drain.failover-triggered", BackAsBackup),
    step(Op::Drain, "drain.peer-owns-vip", BackAsBackup),
    quick(Op::Drain, "divert.rules-removed", BackAsBackup),
    step(Op::Drain, "drain.cleaned-up", BackAsBackup),
    quick(
        Op::UndrainAfterKill("drain.installed"),
        "undrain.withdrawn",
        Serving,
    ),
    step(
        Op::UndrainAfterKill("drain.installed"),
        "divert.rules-removed",
        Serving,
    ),
    step(Op::UndrainAfterDrain, "undrain.demoted", BackAsBackup),
    quick(Op::UndrainAfterDrain, "undo.partial", BackAsBackup),
    step(Op::UndrainAfterDrain, "undrain.undone", BackAsBackup),
    step(Op::MaintenanceOn, "drain.installed", Serving),
    quick(Op::MaintenanceOn, "maintenance.drained", BackAsBackup),
    step(Op::MaintenanceOff, "maintenance.undrained", BackAsBackup),
    step(Op::Accept, "accept.sysctl-journalled", Serving),
    step(Op::Accept, "accept.sysctl-set", Serving),
    step(Op::Accept, "accept.route-journalled", Serving),
    step(Op::Accept, "accept.route-added", Serving),
    quick(Op::Release, "undo.partial", Serving),
    step(Op::Standby, "drain.trigger-journalled", Serving),
    quick(Op::Standby, "drain.failover-triggered", Serving),
    step(Op::Standby, "maintenance.drained", Serving),
];

/// The steps where the trigger is keepalived's track file (`failover.method: track-file`)
/// instead of the tracked interface: what a crash leaves there is a file's content.
const TRACK_FILE_STEPS: &[Step] = &[
    step(Op::Drain, "drain.trigger-journalled", Serving),
    quick(Op::Drain, "drain.failover-triggered", BackAsBackup),
    step(Op::Drain, "drain.peer-owns-vip", BackAsBackup),
    step(Op::UndrainAfterDrain, "undrain.demoted", BackAsBackup),
    step(Op::MaintenanceOn, "maintenance.drained", BackAsBackup),
];

/// The hand-off's steps, on both sides.
const HANDOFF_STEPS: &[Step] = &[
    step(Op::Handoff, "handoff.initiator.journalled", Serving),
    step(Op::Handoff, "handoff.initiator.begun", Serving),
    quick(Op::Handoff, "drain.installed", Serving),
    step(Op::Handoff, "accept.sysctl-set", Serving),
    step(Op::Handoff, "handoff.initiator.accepting", Serving),
    step(Op::Handoff, "drain.failover-triggered", BackAsBackup),
    quick(Op::Handoff, "handoff.initiator.watching", BackAsBackup),
    step(Op::Handoff, "handoff.initiator.ended", BackAsBackup),
    step(Op::Handoff, "undo.partial", BackAsBackup),
    quick(
        Op::HandoffResponder,
        "handoff.responder.journalled",
        Serving,
    ),
    step(Op::HandoffResponder, "divert.sets-created", Serving),
    step(Op::HandoffResponder, "handoff.responder.installed", Serving),
    step(
        Op::HandoffResponder,
        "handoff.responder.supervising@2",
        BackAsBackup,
    ),
    quick(
        Op::HandoffResponder,
        "handoff.responder.removing",
        BackAsBackup,
    ),
];

/// The daemon's steps: the drain runs inside it, so it is the daemon that dies.
const DAEMON_STEPS: &[Step] = &[
    step(Op::DaemonDrain, "drain.installed", Serving),
    step(Op::DaemonDrain, "drain.trigger-journalled", Serving),
    quick(Op::DaemonDrain, "drain.failover-triggered", BackAsBackup),
];

/// One row of the table.
struct Row {
    op: String,
    point: String,
    recovery: String,
    outcome: String,
    flows: u64,
    broken: u64,
    equal: bool,
    /// Empty when the step passed.
    failure: String,
}

fn table(rows: &[Row]) -> String {
    let mut s = format!(
        "| {:<38} | {:<32} | {:<34} | {:<40} | {:>6} | {:>6} | {:<8} | {}\n",
        "operation", "killed at", "recovery", "outcome", "flows", "broken", "snapshot", "verdict"
    );
    s.push_str(&format!(
        "|{}|{}|{}|{}|{}|{}|{}|---\n",
        "-".repeat(40),
        "-".repeat(34),
        "-".repeat(36),
        "-".repeat(42),
        "-".repeat(8),
        "-".repeat(8),
        "-".repeat(10)
    ));
    for r in rows {
        s.push_str(&format!(
            "| {:<38} | {:<32} | {:<34} | {:<40} | {:>6} | {:>6} | {:<8} | {}\n",
            r.op,
            r.point,
            r.recovery,
            r.outcome,
            r.flows,
            r.broken,
            if r.equal { "equal" } else { "DIFFERS" },
            if r.failure.is_empty() {
                "ok"
            } else {
                &r.failure
            }
        ));
    }
    s
}

/// Runs `drain-agent -c <node's config> --socket <node's socket> ARGS` in the node's namespace,
/// with `DRAIN_AGENT_CRASH_AT=crash` if given.
fn agent(lab: &Lab, node: Node, args: &[&str], crash: Option<&str>) -> Output {
    let bin = find_bin("drain-agent").unwrap();
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &lab.node_ns(node)]);
    // `ip netns exec` and `env` exec, so the status is the agent's own (a signal shows).
    if let Some(point) = crash {
        cmd.arg("env").arg(format!("{CRASH_ENV}={point}"));
    }
    cmd.arg(bin)
        .arg("-c")
        .arg(lab.dir.join(format!("agent-{node}.yaml")))
        .arg("--socket")
        .arg(lab.control_socket(node))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).trim().to_string()
}

/// The line `faults::point` prints before it SIGKILLs the agent.
fn killed_line(point: &str) -> String {
    format!(
        "fault-injection: killed at {}",
        point.split('@').next().unwrap()
    )
}

/// The agent died of SIGKILL at `point`, by its own hand.
fn check_killed(out: &Output, point: &str, what: &str) -> Result<(), String> {
    let err = stderr(out);
    if out.status.signal() != Some(libc::SIGKILL) || !err.contains(&killed_line(point)) {
        return Err(format!(
            "{what} was not killed at {point} (status {:?}): {err}",
            out.status
        ));
    }
    Ok(())
}

/// Runs `args` to completion; its failure is the step's.
fn ok(lab: &Lab, node: Node, args: &[&str]) -> Result<(), String> {
    let out = agent(lab, node, args, None);
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{node}: `{}` exited {:?}: {}",
            args.join(" "),
            out.status,
            stderr(&out)
        ))
    }
}

/// The daemon's log of a node (`Lab::spawn` names it after the process).
fn daemon_log(lab: &Lab, node: Node) -> String {
    std::fs::read_to_string(lab.dir.join(format!("agent-{node}.log"))).unwrap_or_default()
}

/// Starts `drain-agent run` on a node as [`Lab::start_daemon`] does, with `crash` armed.
fn start_daemon_armed(lab: &mut Lab, node: Node, crash: &str) -> anyhow::Result<()> {
    let bin = find_bin("drain-agent")?;
    let cfg = lab.dir.join(format!("agent-{node}.yaml"));
    let (sock, fifo) = (lab.control_socket(node), lab.notify_fifo(node));
    let ns = lab.node_ns(node);
    let env = format!("{CRASH_ENV}={crash}");
    let mut argv = vec!["env", &env, bin.to_str().unwrap()];
    argv.extend([
        "-c",
        cfg.to_str().unwrap(),
        "--socket",
        sock.to_str().unwrap(),
        "--log-level",
        "info",
        "run",
    ]);
    let fifo = fifo.to_str().unwrap().to_string();
    argv.extend(["--fifo", &fifo]);
    lab.spawn(&format!("agent-{node}"), &ns, &argv)?;
    wait_until(
        &format!("{node}'s armed daemon to answer"),
        Duration::from_secs(10),
        || std::os::unix::net::UnixStream::connect(&sock).is_ok(),
    )
}

/// Waits for a node's daemon to have killed itself at `point` (its log says so, and its
/// control socket no longer answers), then starts it again, unarmed: the recovery.
fn restart_killed_daemon(lab: &mut Lab, node: Node, point: &str) -> Result<(), String> {
    let line = killed_line(point);
    wait_until(
        &format!("{node}'s daemon to die at {point}"),
        Duration::from_secs(30),
        || {
            daemon_log(lab, node).contains(&line)
                && std::os::unix::net::UnixStream::connect(lab.control_socket(node)).is_err()
        },
    )
    .map_err(|e| format!("{e:#}: {}", daemon_log(lab, node)))?;
    // Reaps it (it is dead already) and takes it off the lab's list.
    lab.kill(&format!("agent-{node}"))
        .map_err(|e| e.to_string())?;
    lab.start_daemon(node).map_err(|e| format!("{e:#}"))
}

/// The step's operation, its death and its recovery, while the load runs. Returns the recovery
/// it ran, in words.
fn crash_and_recover(lab: &mut Lab, s: Step) -> Result<String, String> {
    let p = s.point;
    let (lb1, lb2) = (Node::Lb1, Node::Lb2);
    match s.op {
        Op::Drain | Op::MaintenanceOn => {
            ok(lab, lb2, &["accept"])?;
            let args: &[&str] = match s.op {
                Op::Drain => &["drain"],
                _ => &["maintenance", "on", "--reason", "crash test"],
            };
            check_killed(&agent(lab, lb1, args, Some(p)), p, args[0])?;
            let recovery: &[&str] = match s.op {
                Op::Drain => &["undrain"],
                _ => &["maintenance", "off"],
            };
            ok(lab, lb1, recovery)?;
            ok(lab, lb2, &["release"])?;
            Ok(recovery.join(" "))
        }
        Op::UndrainAfterKill(first) => {
            ok(lab, lb2, &["accept"])?;
            check_killed(&agent(lab, lb1, &["drain"], Some(first)), first, "drain")?;
            check_killed(&agent(lab, lb1, &["undrain"], Some(p)), p, "undrain")?;
            ok(lab, lb1, &["undrain"])?;
            ok(lab, lb2, &["release"])?;
            Ok("undrain again".into())
        }
        Op::UndrainAfterDrain | Op::MaintenanceOff => {
            ok(lab, lb2, &["accept"])?;
            let (on, off): (&[&str], &[&str]) = match s.op {
                Op::UndrainAfterDrain => (&["drain"], &["undrain"]),
                _ => (
                    &["maintenance", "on", "--reason", "crash test"],
                    &["maintenance", "off"],
                ),
            };
            ok(lab, lb1, on)?;
            check_killed(&agent(lab, lb1, off, Some(p)), p, off[0])?;
            ok(lab, lb1, off)?;
            ok(lab, lb2, &["release"])?;
            Ok(format!("{} again", off.join(" ")))
        }
        Op::Standby => {
            let on = ["maintenance", "on", "--reason", "crash test"];
            check_killed(&agent(lab, lb2, &on, Some(p)), p, "maintenance on")?;
            ok(lab, lb2, &["maintenance", "off"])?;
            Ok("maintenance off (lb2)".into())
        }
        Op::Accept => {
            check_killed(&agent(lab, lb2, &["accept"], Some(p)), p, "accept")?;
            ok(lab, lb2, &["release"])?;
            Ok("release".into())
        }
        Op::Release => {
            ok(lab, lb2, &["accept"])?;
            check_killed(&agent(lab, lb2, &["release"], Some(p)), p, "release")?;
            ok(lab, lb2, &["release"])?;
            Ok("release again".into())
        }
        Op::Handoff => {
            check_killed(
                &agent(lab, lb1, &["drain", "--handoff"], Some(p)),
                p,
                "drain --handoff",
            )?;
            ok(lab, lb1, &["undrain"])?;
            Ok("undrain".into())
        }
        Op::HandoffResponder => {
            lab.kill("agent-lb2").map_err(|e| e.to_string())?;
            start_daemon_armed(lab, lb2, p).map_err(|e| format!("{e:#}"))?;
            // The hand-off runs while lb2's daemon dies and comes back; whatever lb1's drain
            // makes of it (refused: exit 5, nothing changed; or done), `undrain` follows.
            let bin = find_bin("drain-agent").unwrap();
            let drain = Command::new("ip")
                .args(["netns", "exec", &lab.node_ns(lb1)])
                .arg(bin)
                .arg("-c")
                .arg(lab.dir.join("agent-lb1.yaml"))
                .arg("--socket")
                .arg(lab.control_socket(lb1))
                .args(["drain", "--handoff"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let restarted = restart_killed_daemon(lab, lb2, p);
            let out = drain.wait_with_output().unwrap();
            restarted?;
            ok(lab, lb1, &["undrain"])?;
            Ok(format!(
                "lb2's daemon restarted; lb1's drain exited {}; undrain",
                out.status.code().map_or("?".into(), |c| c.to_string())
            ))
        }
        Op::DaemonDrain => {
            lab.kill("agent-lb1").map_err(|e| e.to_string())?;
            start_daemon_armed(lab, lb1, p).map_err(|e| format!("{e:#}"))?;
            let out = agent(lab, lb1, &["drain"], None);
            // The CLI lost its daemon: exit 1, saying so.
            if out.status.code() != Some(1) {
                return Err(format!(
                    "the CLI's drain exited {:?}: {}",
                    out.status,
                    stderr(&out)
                ));
            }
            restart_killed_daemon(lab, lb1, p)?;
            ok(lab, lb1, &["undrain"])?;
            Ok("daemon restarted; undrain".into())
        }
    }
}

/// Everything a step must find and leave: both hosts' snapshots, both track files, and what
/// both agents' journals record (a change journalled and not made is invisible in the kernel,
/// and was what broke the next hand-off).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Baseline {
    pair: (String, String),
    track: Option<String>,
    /// lb2's track file (its stand-by pulls its trigger there when that is the method).
    track_lb2: Option<String>,
    journals: Vec<(String, Vec<serde_json::Value>)>,
}

/// The changes each journal of both nodes records (their times left out).
fn journals(lab: &Lab) -> Vec<(String, Vec<serde_json::Value>)> {
    let mut out = Vec::new();
    for node in Node::ALL {
        for j in ["drain-journal", "accept-journal", "return-journal"] {
            let path = lab.dir.join(format!("agent-state-{node}/{j}.json"));
            let changes = std::fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice::<Vec<serde_json::Value>>(&b).ok())
                .unwrap_or_default()
                .into_iter()
                .map(|e| e["change"].clone())
                .collect();
            out.push((format!("{node} {j}"), changes));
        }
    }
    out
}

fn track(lab: &Lab) -> Option<String> {
    std::fs::read_to_string(lab.track_file(Node::Lb1)).ok()
}

fn observe(lab: &Lab) -> Baseline {
    Baseline {
        pair: lab.pair_snapshots().unwrap(),
        track: track(lab),
        track_lb2: std::fs::read_to_string(lab.track_file(Node::Lb2)).ok(),
        journals: journals(lab),
    }
}

/// What differs between two observations, for the failure message.
fn diff(before: &Baseline, after: &Baseline) -> String {
    let mut s = String::new();
    for (node, b, a) in [
        ("lb1", &before.pair.0, &after.pair.0),
        ("lb2", &before.pair.1, &after.pair.1),
    ] {
        if b != a {
            s.push_str(&format!(
                "{node}:\n{}",
                drain_lab::fleet::snapshot_diff(b, a)
            ));
        }
    }
    for (b, a) in before.journals.iter().zip(&after.journals) {
        if b != a {
            s.push_str(&format!("{}: {:?} -> {:?}\n", b.0, b.1, a.1));
        }
    }
    if before.track != after.track {
        s.push_str(&format!(
            "lb1's track file: {:?} -> {:?}\n",
            before.track, after.track
        ));
    }
    if before.track_lb2 != after.track_lb2 {
        s.push_str(&format!(
            "lb2's track file: {:?} -> {:?}\n",
            before.track_lb2, after.track_lb2
        ));
    }
    s
}

/// Puts lb1 back as MASTER after a step that left it BACKUP (demoted): the track file as it
/// was, then keepalived's own preemption moves the VIP back. No load runs then.
fn reset(lab: &Lab, base: &Baseline) -> Result<(), String> {
    std::fs::write(
        lab.track_file(Node::Lb1),
        base.track.as_deref().unwrap_or("0\n"),
    )
    .map_err(|e| e.to_string())?;
    lab.wait_vip_owner(Node::Lb1, Duration::from_secs(15))
        .map(|_| ())
        .map_err(|e| format!("{e:#}"))
}

/// The step's load: long enough that new connections keep arriving through the crash, the
/// recovery and after it.
fn load_for(s: Step) -> LoadSpec {
    let mut load = default_load();
    load.duration_ms = match s.op {
        Op::Drain
        | Op::MaintenanceOn
        | Op::Standby
        | Op::Accept
        | Op::Release
        | Op::DaemonDrain => 12_000,
        _ => 18_000,
    };
    load
}

/// Runs each step (`repeat` times) from the verified baseline in one lab; returns the rows.
fn run_steps(lab: &mut Lab, steps: &[Step], repeat: usize) -> Vec<Row> {
    // keepalived reads a missing track file as 0; written, it can be put back byte for byte.
    if track(lab).is_none() {
        std::fs::write(lab.track_file(Node::Lb1), "0\n").unwrap();
    }
    let base = observe(lab);
    let mut rows = Vec::new();
    for s in steps.iter().flat_map(|s| std::iter::repeat_n(*s, repeat)) {
        let started = Instant::now();
        let mut row = Row {
            op: s.op.name(),
            point: s.point.to_string(),
            recovery: String::new(),
            outcome: String::new(),
            flows: 0,
            broken: 0,
            equal: false,
            failure: String::new(),
        };
        let now = observe(lab);
        if now != base || lab.vip_owner().unwrap() != Some(Node::Lb1) {
            row.failure = format!(
                "the step did not start from the baseline:\n{}",
                diff(&base, &now)
            );
            rows.push(row);
            break;
        }
        let recovered = std::sync::Arc::new(std::sync::Mutex::new(Err(String::new())));
        let out = recovered.clone();
        let event = Event::Custom(Box::new(move |lab: &mut Lab, clock: &Clock| {
            let mut o = EventOutcome::default();
            o.note(clock, format!("{}: killed at {}", s.op.name(), s.point));
            let r = crash_and_recover(lab, s);
            o.note(clock, format!("recovered: {r:?}"));
            *out.lock().unwrap() = r;
            Ok(o)
        }));
        let r = scenario::run_in(lab, "crash", &load_for(s), EVENT_AT, event).unwrap();
        row.flows = r.flows;
        row.broken = r.broken;
        let recovered = recovered.lock().unwrap().clone();
        let mut failures = Vec::new();
        match recovered {
            Ok(how) => row.recovery = how,
            Err(e) => failures.push(e),
        }
        if r.broken > 0 {
            failures.push(format!(
                "{} broken flow(s): {}",
                r.broken,
                serde_json::to_string(&r.load.failures.iter().take(5).collect::<Vec<_>>()).unwrap()
            ));
        }
        let owner = lab.vip_owner().unwrap();
        if owner == Some(Node::Lb2) && lab.opts.daemon {
            // With the daemons following keepalived, the roles' acceptance moves with the VIP:
            // the hosts are compared once lb1 is MASTER again and the notifications are done.
            if let Err(e) = reset(lab, &base) {
                failures.push(format!("reset: {e}"));
            }
            let settled = wait_until(
                "the daemons to follow the VIP back",
                Duration::from_secs(15),
                || {
                    lab.accepting(Node::Lb2).unwrap_or(false)
                        && !lab.accepting(Node::Lb1).unwrap_or(true)
                        && track(lab) == base.track
                },
            );
            if let Err(e) = settled {
                failures.push(format!("{e:#}"));
            }
        }
        let after = observe(lab);
        // Back as BACKUP, lb1 carries the demotion `undrain` wrote (`return_weight`) and nothing
        // else differs; serving, it is exactly as it was.
        let expected = match s.expect {
            Serving => base.clone(),
            BackAsBackup if lab.opts.daemon => base.clone(),
            BackAsBackup => Baseline {
                track: after.track.clone().filter(|t| t.trim() == "-51"),
                ..base.clone()
            },
        };
        row.equal = after == expected;
        row.outcome = match (owner, s.expect) {
            (Some(Node::Lb1), _) => "serving (MASTER, never left)".to_string(),
            (Some(Node::Lb2), _) => format!(
                "back as BACKUP (track {}), lb2 serves",
                after.track.as_deref().unwrap_or("-").trim()
            ),
            (None, _) => "NO single VIP owner".to_string(),
        };
        let wanted = match s.expect {
            Serving => Some(Node::Lb1),
            BackAsBackup => Some(Node::Lb2),
        };
        if owner != wanted {
            failures.push(format!("the VIP is on {owner:?}, documented: {wanted:?}"));
        }
        if !row.equal {
            failures.push(format!("hosts differ:\n{}", diff(&expected, &after)));
        }
        if owner == Some(Node::Lb2) && !lab.opts.daemon {
            if let Err(e) = reset(lab, &base) {
                failures.push(format!("reset: {e}"));
            }
        }
        row.failure = failures.join("; ");
        println!(
            "{} at {}: {} ({:.1} s)\n  timeline: {:?}",
            row.op,
            row.point,
            if row.failure.is_empty() {
                "ok"
            } else {
                &row.failure
            },
            started.elapsed().as_secs_f64(),
            r.event.timeline
        );
        rows.push(row);
    }
    rows
}

/// `CRASH_STEPS=point,point` runs only the steps at those points (to reproduce one); with
/// `CRASH_REPEAT` (`make crash`) every step runs, else the quick ones.
fn selected(steps: &[Step]) -> Vec<Step> {
    let only = std::env::var("CRASH_STEPS").unwrap_or_default();
    let only: Vec<&str> = only.split(',').filter(|p| !p.is_empty()).collect();
    let all = std::env::var_os("CRASH_REPEAT").is_some();
    steps
        .iter()
        .filter(|s| {
            if only.is_empty() {
                all || s.quick
            } else {
                only.contains(&s.point)
            }
        })
        .copied()
        .collect()
}

fn repeat() -> usize {
    std::env::var("CRASH_REPEAT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
}

/// Refuses a drain-agent built without the feature: every step would fail for want of a crash,
/// and say so less clearly. The line `faults::point` prints is in the binary only with it.
fn require_fault_injection() {
    let bin = find_bin("drain-agent").unwrap();
    let bytes = std::fs::read(&bin).unwrap();
    let needle = b"fault-injection: killed at";
    assert!(
        bytes.windows(needle.len()).any(|w| w == needle),
        "{} was built without `--features drain-agent/fault-injection` (make test and make crash build it so)",
        bin.display()
    );
}

fn finish(rows: Vec<Row>, expected: usize) {
    println!("{}", table(&rows));
    let failed: Vec<&Row> = rows.iter().filter(|r| !r.failure.is_empty()).collect();
    assert!(
        failed.is_empty() && rows.len() == expected,
        "{} of {} step(s) failed ({} run):\n{}",
        failed.len(),
        expected,
        rows.len(),
        failed
            .iter()
            .map(|r| format!("{} at {}: {}", r.op, r.point, r.failure))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// One table: a lab made with `opts` (CLI agents configured on both nodes unless the daemons
/// configure themselves), `prepare`d, then every selected step of `steps`, `repeat()` times.
fn crash_table(name: &str, opts: LabOptions, steps: &[Step], prepare: impl FnOnce(&mut Lab)) {
    if !can_run_lab(name, &[]) {
        return;
    }
    require_fault_injection();
    let mut lab = Lab::up(&opts).unwrap();
    if !opts.daemon {
        for node in Node::ALL {
            lab.write_agent_config(node, &AgentConfig::default())
                .unwrap();
        }
    }
    prepare(&mut lab);
    let n = repeat();
    let steps = selected(steps);
    let rows = run_steps(&mut lab, &steps, n);
    finish(rows, steps.len() * n);
}

#[test]
#[ignore = "needs root and network namespaces; `make test` runs it"]
fn a_crash_at_every_step_of_drain_undrain_accept_and_maintenance_is_recovered_exactly() {
    crash_table(
        "crash_at_every_step",
        LabOptions::default(),
        PAIR_STEPS,
        |_| {},
    );
}

#[test]
#[ignore = "needs root and network namespaces; `make test` runs it"]
fn a_crash_around_the_track_file_trigger_is_recovered_exactly() {
    let opts = LabOptions {
        track_file_trigger: true,
        ..LabOptions::default()
    };
    crash_table(
        "crash_around_the_track_file_trigger",
        opts,
        TRACK_FILE_STEPS,
        |_| {},
    );
}

#[test]
#[ignore = "needs root and network namespaces; `make test` runs it"]
fn a_crash_at_every_step_of_the_hand_off_on_either_side_is_recovered_exactly() {
    let opts = LabOptions {
        handoff: true,
        ..LabOptions::default()
    };
    crash_table(
        "crash_at_every_step_of_the_hand_off",
        opts,
        HANDOFF_STEPS,
        |lab| {
            lab.start_daemon(Node::Lb2).unwrap();
            // lb2 accepts for the whole test, as its BACKUP notify would have it (the
            // hand-off's preflight probes it); the baseline includes it.
            ok(lab, Node::Lb2, &["accept"]).unwrap();
        },
    );
}

#[test]
#[ignore = "needs root and network namespaces; `make test` runs it"]
fn a_daemon_killed_at_a_step_of_its_drain_is_recovered_by_its_restart() {
    let opts = LabOptions {
        daemon: true,
        ..LabOptions::default()
    };
    crash_table("crash_of_the_daemon", opts, DAEMON_STEPS, |lab| {
        // lb2 accepts from its BACKUP notification (the FIFO), before the baseline.
        wait_until("lb2 to accept", Duration::from_secs(10), || {
            lab.accepting(Node::Lb2).unwrap()
        })
        .unwrap();
    });
}
