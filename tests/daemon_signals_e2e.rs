//! Signals to the daemon and to the CLI that talks to it, under the lab's load: `systemctl stop`
//! (SIGTERM to `drain-agent run`) must roll back whatever drain runs, also after another request
//! came and went; Ctrl-C on `drain-agent drain` forwarded through the daemon rolls its drain
//! back; and `READY=1` reaches systemd's `NOTIFY_SOCKET` only once the control socket answers.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use drain_lab::load::LoadSpec;
use drain_lab::scenario::{self, default_load, EventOutcome};
use drain_lab::topology::{can_run_lab, find_bin, wait_until, Lab, LabOptions, Node};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// `drain-agent`'s documented exit codes the tests expect.
const BUSY: i32 = 6;
const INTERRUPTED: i32 = 9;

/// Echo sessions that hold the drain (its `--deadline` is long) for up to 4 s after the divert,
/// so the signal comes while it waits: without a rollback it goes on to the failover once they
/// end. 4 s is under the lab's `rollback_grace` (5 s), so the flows diverted to the peer before
/// the withdrawal finish there during the grace: a longer flow would be cut when the divert is
/// removed, which is the rollback's documented bound, not what these tests look at.
fn held_load() -> LoadSpec {
    let mut load = default_load();
    load.duration_ms = 10_000;
    load.echo.session_ms = 4_000;
    load
}

/// When the drain starts: ~25 echo sessions are open by then.
const DRAIN_AT: Duration = Duration::from_millis(2500);

/// The lab with the daemon on both nodes, once lb2 (BACKUP, told by its FIFO) accepts.
fn daemon_lab() -> Lab {
    let lab = Lab::up(&LabOptions {
        daemon: true,
        ..LabOptions::default()
    })
    .unwrap();
    wait_until("lb2 (BACKUP, from the FIFO) to accept", WAIT, || {
        lab.accepting(Node::Lb2).unwrap()
    })
    .unwrap();
    lab
}

/// Bound of every wait on a condition.
const WAIT: Duration = Duration::from_secs(30);

/// A `drain-agent --json drain` on lb1, talking to the daemon; its JSON lines are collected as
/// they come. Killed if still running when dropped.
struct DrainCli {
    child: Child,
    lines: Arc<Mutex<Vec<serde_json::Value>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl DrainCli {
    fn start(lab: &Lab, args: &[&str]) -> DrainCli {
        let bin = find_bin("drain-agent").unwrap();
        let mut child = Command::new("ip")
            .args(["netns", "exec", &lab.node_ns(Node::Lb1)])
            .arg(bin)
            .arg("-c")
            .arg(lab.dir.join("agent-lb1.yaml"))
            .arg("--socket")
            .arg(lab.control_socket(Node::Lb1))
            .args(["--json", "drain"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().unwrap();
        let sink = lines.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str(&line) {
                    sink.lock().unwrap().push(v);
                }
            }
        });
        DrainCli {
            child,
            lines,
            reader: Some(reader),
        }
    }

    fn saw(&self, event: &str) -> bool {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| l["event"] == event)
    }

    fn wait_event(&self, event: &str) {
        wait_until(&format!("the drain's {event:?} event"), WAIT, || {
            self.saw(event)
        })
        .unwrap();
    }

    /// Waits (bounded) for the CLI to exit; its exit code and every line it printed.
    fn finish(mut self) -> (i32, Vec<serde_json::Value>) {
        let mut code = None;
        wait_until("drain-agent drain to exit", WAIT, || {
            code = self
                .child
                .try_wait()
                .unwrap()
                .map(|s| s.code().unwrap_or(-1));
            code.is_some()
        })
        .unwrap();
        if let Some(r) = self.reader.take() {
            r.join().unwrap();
        }
        (code.unwrap(), self.lines.lock().unwrap().clone())
    }
}

impl Drop for DrainCli {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The pid of lb1's daemon: the lab's process whose command line serves lb1's control socket.
fn daemon_pid(lab: &Lab, node: Node) -> Pid {
    let sock = lab.control_socket(node);
    let sock = sock.to_str().unwrap();
    let pid = lab
        .pids()
        .into_iter()
        .find(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            args.contains(&sock.as_bytes()) && args.contains(&&b"run"[..])
        })
        .expect("the lab runs a daemon on the node");
    Pid::from_raw(pid as i32)
}

/// True once `pid` has exited (gone, or a zombie its parent, the lab, has not reaped yet).
fn exited(pid: Pid) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // The state follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z')),
    }
}

/// What every rollback test checks: lb1 serves as before (VIP, tracked link, firewall, sets,
/// routes, sysctls) and no flow broke.
fn assert_rolled_back(lab: &Lab, r: &scenario::ScenarioResult, before: &str) {
    assert_eq!(
        r.broken,
        0,
        "{:?}\n{:?}",
        r.load.failures.iter().take(5).collect::<Vec<_>>(),
        r.event.timeline
    );
    assert_eq!(
        r.vip_owner_after,
        Some(Node::Lb1),
        "no failover: lb1 still holds the VIP ({:?})",
        r.event.timeline
    );
    let after = lab.host_snapshot(Node::Lb1).unwrap();
    assert_eq!(
        before,
        after,
        "lb1 restored (tracked link up, no divert rule or set left):\n{}",
        drain_lab::fleet::snapshot_diff(before, &after)
    );
}

/// Runs `event` at [`DRAIN_AT`] under [`held_load`] in `lab`.
fn run_held(
    lab: &mut Lab,
    name: &str,
    event: impl FnOnce(&mut Lab, &scenario::Clock) -> anyhow::Result<EventOutcome> + 'static,
) -> scenario::ScenarioResult {
    scenario::run_in(
        lab,
        name,
        &held_load(),
        DRAIN_AT,
        scenario::Event::Custom(Box::new(event)),
    )
    .unwrap()
}

/// SIGTERM to the daemon while its drain waits for the echo sessions, optionally after an
/// `undrain` the daemon refused as busy. Returns the drain's exit code and events.
fn sigterm_mid_drain(second_request: bool, name: &str) {
    let mut lab = daemon_lab();
    let before = lab.host_snapshot(Node::Lb1).unwrap();
    let result = Arc::new(Mutex::new(None));
    let out = result.clone();
    let r = run_held(&mut lab, name, move |lab, clock| {
        let mut o = EventOutcome::default();
        let cli = DrainCli::start(lab, &["--deadline", "60s"]);
        cli.wait_event("diverted");
        o.note(clock, "lb1: diverted (through the daemon)");
        if second_request {
            let undrain = lab.agent(Node::Lb1, &["undrain"])?;
            o.note(clock, "lb1: undrain answered");
            assert_eq!(
                undrain.status.code(),
                Some(BUSY),
                "the undrain is refused while the drain runs: {}",
                String::from_utf8_lossy(&undrain.stderr)
            );
        }
        assert!(!cli.saw("drained"), "the drain is still waiting");
        let daemon = daemon_pid(lab, Node::Lb1);
        kill(daemon, Signal::SIGTERM)?;
        o.note(clock, "lb1: SIGTERM to the daemon");
        // Bounded: a daemon that lost the signal exits only after its drain's failover.
        wait_until("the daemon to exit after SIGTERM", WAIT, || exited(daemon))?;
        o.note(clock, "lb1: daemon exited");
        *out.lock().unwrap() = Some(cli.finish());
        Ok(o)
    });
    let (code, lines) = result.lock().unwrap().take().unwrap();
    let events: Vec<_> = lines.iter().filter_map(|l| l["event"].as_str()).collect();
    assert_eq!(
        code,
        INTERRUPTED,
        "the drain reports the interrupt: {events:?}, {:?}",
        lines.last()
    );
    assert!(
        !events.contains(&"failover-triggered"),
        "no failover: {events:?}"
    );
    assert!(
        events.contains(&"withdrawn") && events.contains(&"cleaned-up"),
        "rolled back: {events:?}"
    );
    assert_rolled_back(&lab, &r, &before);
}

#[test]
#[ignore = "needs root and network namespaces; `make test` runs it"]
fn sigterm_to_the_daemon_rolls_back_its_drain_after_a_refused_undrain() {
    if !can_run_lab("daemon_sigterm_after_second_request", &[]) {
        return;
    }
    sigterm_mid_drain(true, "daemon-sigterm-after-undrain");
}

#[test]
#[ignore = "needs root and network namespaces; `make test` runs it"]
fn sigterm_to_the_daemon_rolls_back_its_drain() {
    if !can_run_lab("daemon_sigterm_mid_drain", &[]) {
        return;
    }
    sigterm_mid_drain(false, "daemon-sigterm");
}

#[test]
#[ignore = "needs root and network namespaces; `make test` runs it"]
fn ctrl_c_on_the_cli_rolls_the_daemons_drain_back() {
    if !can_run_lab("daemon_cli_ctrl_c", &[]) {
        return;
    }
    let mut lab = daemon_lab();
    let before = lab.host_snapshot(Node::Lb1).unwrap();
    let result = Arc::new(Mutex::new(None));
    let out = result.clone();
    let r = run_held(&mut lab, "daemon-cli-ctrl-c", move |lab, clock| {
        let mut o = EventOutcome::default();
        let cli = DrainCli::start(lab, &["--deadline", "60s"]);
        cli.wait_event("diverted");
        o.note(clock, "lb1: diverted (through the daemon)");
        // `ip netns exec` execs the CLI, so the child is the CLI itself.
        kill(Pid::from_raw(cli.child.id() as i32), Signal::SIGINT)?;
        o.note(clock, "lb1: SIGINT to drain-agent drain");
        let (code, _) = cli.finish();
        // The CLI leaves at once; the daemon rolls back on its own: wait for the node to serve
        // as before (the daemon keeps running).
        let sock = lab.control_socket(Node::Lb1);
        wait_until("lb1 to be restored by the daemon", WAIT, || {
            lab.host_snapshot(Node::Lb1).unwrap() == before
                && lab.agent(Node::Lb1, &["--json", "status"]).is_ok_and(|s| {
                    serde_json::from_slice::<serde_json::Value>(&s.stdout)
                        .is_ok_and(|d| d["mode"] == "serving")
                })
        })?;
        o.note(clock, "lb1: restored");
        assert!(sock.exists(), "the daemon is still serving");
        *out.lock().unwrap() = Some((code, before));
        Ok(o)
    });
    let (code, before) = result.lock().unwrap().take().unwrap();
    assert_eq!(code, INTERRUPTED, "{:?}", r.event.timeline);
    assert_rolled_back(&lab, &r, &before);
}

/// Starts lb1's daemon again by hand (the lab's own one stopped) with `NOTIFY_SOCKET` set.
fn daemon_with_notify_socket(lab: &Lab, notify_socket: &str) -> Child {
    let bin = find_bin("drain-agent").unwrap();
    Command::new("ip")
        .args(["netns", "exec", &lab.node_ns(Node::Lb1)])
        .arg(bin)
        .arg("-c")
        .arg(lab.dir.join("agent-lb1.yaml"))
        .arg("--socket")
        .arg(lab.control_socket(Node::Lb1))
        .arg("run")
        .env("NOTIFY_SOCKET", notify_socket)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Waits for one datagram on `sock`, then checks that the control socket answers `status`
/// right away: READY=1 must come after the daemon serves.
fn ready_then_serving(lab: &Lab, sock: &std::os::unix::net::UnixDatagram) {
    sock.set_read_timeout(Some(WAIT)).unwrap();
    let mut buf = [0u8; 256];
    let n = sock.recv(&mut buf).expect("READY=1 within the bound");
    assert_eq!(&buf[..n], b"READY=1");
    // First, before anything slower: the socket must be in place when READY=1 is sent.
    assert!(
        lab.control_socket(Node::Lb1).exists(),
        "READY=1 came before the control socket existed"
    );
    let status = lab.agent(Node::Lb1, &["--json", "status"]).unwrap();
    assert!(status.status.success(), "status answers once READY=1 came");
    let doc: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert!(
        doc["summary"].is_string(),
        "the daemon, not the CLI, answered: {doc}"
    );
}

struct KillOnDrop(Child);
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Both forms of `NOTIFY_SOCKET` systemd uses, one lab: a path, then an abstract name.
#[test]
#[ignore = "needs root and network namespaces; `make test` runs it"]
fn the_daemon_sends_ready_to_a_path_or_abstract_notify_socket_once_it_serves() {
    use std::os::linux::net::SocketAddrExt;
    if !can_run_lab("daemon_sd_notify", &[]) {
        return;
    }
    let mut lab = daemon_lab();
    lab.stop("agent-lb1").unwrap();
    let path: PathBuf = lab.dir.join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    let daemon = KillOnDrop(daemon_with_notify_socket(&lab, path.to_str().unwrap()));
    ready_then_serving(&lab, &sock);
    drop(daemon);
    // The killed daemon's socket file stays; without it the next check means something.
    std::fs::remove_file(lab.control_socket(Node::Lb1)).unwrap();

    // An abstract name belongs to a network namespace: bind it in lb1's, where the daemon runs.
    let name = format!("drain-agent-test-notify-{}", lab.id);
    let sock = drain_test_support::netns::in_netns(&lab.node_ns(Node::Lb1), || {
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        std::os::unix::net::UnixDatagram::bind_addr(&addr).unwrap()
    })
    .unwrap();
    let _daemon = KillOnDrop(daemon_with_notify_socket(&lab, &format!("@{name}")));
    ready_then_serving(&lab, &sock);
}
