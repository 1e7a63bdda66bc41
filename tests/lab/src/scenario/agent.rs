//! The agent in a scenario: its generated configuration, the options of a drain run through it
//! (what happens during the drain, when), and running it as a scenario's event.

use super::*;

/// Something done to the lab while the agent drains, at a time after the drain started.
#[derive(Clone, Debug)]
pub enum DuringDrain {
    /// The peer dies: its ingress link goes down (no answer at all).
    PeerLinkDown,
    /// SIGTERM to the drain-agent process.
    Terminate,
    /// A second `drain` on the same node (must be refused); its exit code is noted.
    SecondDrain,
    /// SIGKILL to drain-agent (a crash: no rollback runs).
    Kill,
    /// `drain-agent undrain` on lb1; its exit code is noted.
    Undrain,
    /// keepalived on a node stops gracefully (SIGTERM: notify STOP runs) and starts again.
    RestartKeepalived(Node),
    /// SIGKILL to the daemon on a node (a crash).
    KillDaemon(Node),
    /// Starts the daemon on a node again.
    StartDaemon(Node),
    /// A node goes away: its ingress link goes down.
    NodeLinkDown(Node),
    /// A node's ingress link comes back.
    NodeLinkUp(Node),
    /// Runs a command in a lab namespace (by role: `lb1`, `lb2`, `cl`) and notes its exit code.
    Exec(String, Vec<String>),
    /// Starts a background process (name, role, argv) as [`Lab::spawn`] does: the lab kills it
    /// at teardown, so it must also end by itself (bounded).
    Spawn(String, String, Vec<String>),
    /// SIGTERM to a process the lab started (`haproxy-lb2`, ...), waited for.
    StopProcess(String),
    /// SIGKILL to every process in a node's namespace whose command name is this: for
    /// `keepalived`, its main process and its VRRP child, so no shutdown code runs.
    KillAll(Node, String),
}

/// When a [`DuringDrain`] action happens.
#[derive(Clone, Debug)]
pub enum When {
    /// This long after the drain command was started (or at once, if that has passed).
    At(Duration),
    /// This long after the agent printed its first event of this kind (`ready`, `diverted`, ...):
    /// the action follows that step however slowly the machine runs. The scenario fails if the
    /// event does not come within [`EVENT_WAIT`].
    After(&'static str, Duration),
}

/// How long [`When::After`] waits for its event.
pub const EVENT_WAIT: Duration = Duration::from_secs(60);

/// How to run drain-agent in the `drain-agent` scenario.
#[derive(Clone, Debug, Default)]
pub struct AgentOptions {
    /// Extra arguments after `drain`.
    pub args: Vec<String>,
    /// Config overrides for lb1 (see [`Lab::write_agent_config`]).
    pub overrides: AgentConfig,
    /// Actions while the drain runs, in this order, each when its [`When`] says.
    pub during: Vec<(When, DuringDrain)>,
    /// Skip `accept` on the peer (to test that the agent refuses an unprepared peer).
    pub no_accept: bool,
}

/// The parts of the agent's config the lab varies.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// `drain.deadline`.
    pub deadline: String,
    /// `drain.idle_threshold`.
    pub idle_threshold: String,
    /// `drain.rollback_grace`.
    pub rollback_grace: String,
    /// `failover.post_wait`.
    pub post_wait: String,
    /// `drain.poll_interval`.
    pub poll_interval: String,
    /// `handoff.deadline` (used when the lab has [`LabOptions::handoff`]).
    pub handoff_deadline: String,
    /// `metrics.listen`, if the daemon should serve metrics.
    pub metrics_listen: Option<String>,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            deadline: "30s".into(),
            idle_threshold: "2s".into(),
            rollback_grace: "5s".into(),
            post_wait: "1s".into(),
            poll_interval: "100ms".into(),
            handoff_deadline: "5m".into(),
            metrics_listen: None,
        }
    }
}

impl Lab {
    /// Writes the drain-agent config of a node (its peer is the other node) and returns its path.
    pub fn write_agent_config(&self, node: Node, c: &AgentConfig) -> Result<PathBuf> {
        let path = self.dir.join(format!("agent-{node}.yaml"));
        let handoff = if self.opts.handoff {
            format!(
                "handoff:\n  key_file: {}\n  deadline: {}\n",
                self.handoff_key()?.display(),
                c.handoff_deadline
            )
        } else {
            String::new()
        };
        let metrics = c
            .metrics_listen
            .as_ref()
            .map_or(String::new(), |l| format!("metrics:\n  listen: {l}\n"));
        let text = format!(
            "# drain-agent config of lab node {node}
vips:
  - address: {vip}
    ports: [{http}, {echo}]
ingress_interface: {ingress}
peer: {peer}
tracked_interface: {tracked}
failover:
  method: {method}
  timeout: 10s
  post_wait: {post_wait}
  track_file: {track}
  return_weight: {ret}
drain:
  deadline: {deadline}
  idle_threshold: {idle}
  poll_interval: {poll}
  rollback_grace: {grace}
peer_probe:
  interval: 200ms
  timeout: 200ms
  failures: 2
state_dir: {dir}/agent-state-{node}
{handoff}{metrics}",
            vip = addr::VIP,
            http = addr::HTTP_PORT,
            echo = addr::ECHO_PORT,
            ingress = INGRESS_IF,
            peer = node.peer().addr(),
            tracked = crate::topology::TRACKED_IF,
            post_wait = c.post_wait,
            method = if self.opts.track_file_trigger {
                "track-file"
            } else {
                "link-down"
            },
            track = self.track_file(node).display(),
            // In a preempting pair lb1 (150) must come back below lb2 (100): 150 - 51 = 99.
            ret = if !self.opts.nopreempt && node == Node::Lb1 {
                -51
            } else {
                0
            },
            deadline = c.deadline,
            idle = c.idle_threshold,
            grace = c.rollback_grace,
            poll = c.poll_interval,
            dir = self.dir.display(),
        );
        fs::write(&path, text)?;
        Ok(path)
    }

    /// The key both agents' peer link uses (created on first use: 32 random bytes, mode 0600).
    pub fn handoff_key(&self) -> Result<PathBuf> {
        use std::io::Read;
        use std::os::unix::fs::OpenOptionsExt;
        let path = self.dir.join("handoff.key");
        if !path.exists() {
            let mut key = [0u8; 32];
            fs::File::open("/dev/urandom")?.read_exact(&mut key)?;
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)?;
            std::io::Write::write_all(&mut f, &key)?;
        }
        Ok(path)
    }

    /// Both LB nodes' host snapshots, (lb1, lb2): see [`Lab::host_snapshot`].
    pub fn pair_snapshots(&self) -> Result<(String, String)> {
        Ok((
            self.host_snapshot(Node::Lb1)?,
            self.host_snapshot(Node::Lb2)?,
        ))
    }

    /// Brings lb1 back in service after a drain (`undrain`) and compares both hosts with their
    /// `before` snapshots (VIP lines aside: the lab pair preempts, so lb1 returns as BACKUP,
    /// demoted by return_weight, and the VIP stays on lb2). The error names what differs.
    pub fn undrain_and_compare(&self, before: &(String, String)) -> Result<()> {
        let out = self.agent(Node::Lb1, &["undrain"])?;
        if !out.status.success() {
            bail!("undrain: {}", String::from_utf8_lossy(&out.stderr));
        }
        // Compared once keepalived on lb1 has left FAULT (it announces BACKUP) and every notify
        // call has finished, not after a guessed pause.
        self.wait_announced(Node::Lb1, "BACKUP", Duration::from_secs(15))?;
        let owner = self.vip_owner()?;
        if owner != Some(Node::Lb2) {
            bail!("after undrain the VIP is on {owner:?}, not lb2: lb1 preempted lb2");
        }
        let after = self.pair_snapshots()?;
        for (node, b, a) in [("lb1", &before.0, &after.0), ("lb2", &before.1, &after.1)] {
            if b != a {
                bail!(
                    "{node} not restored:\n{}",
                    crate::fleet::snapshot_diff(b, a)
                );
            }
        }
        Ok(())
    }

    /// Runs `drain-agent -c <node config> ARGS...` in a node's namespace and returns its output.
    pub fn agent(&self, node: Node, args: &[&str]) -> Result<std::process::Output> {
        let bin = find_bin("drain-agent")?;
        let cfg = self.dir.join(format!("agent-{node}.yaml"));
        let sock = self.control_socket(node);
        let mut argv = vec![
            bin.to_str().unwrap().to_string(),
            "-c".into(),
            cfg.to_str().unwrap().to_string(),
            "--socket".into(),
            sock.to_str().unwrap().to_string(),
        ];
        argv.extend(args.iter().map(|s| s.to_string()));
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        self.exec_status(&self.node_ns(node), &argv)
    }
}

/// The `drain-agent` event: `accept` on lb2, `drain --json` on lb1 (with the given actions while it
/// runs), `release` on lb2.
pub fn drain_agent(opts: AgentOptions) -> Event {
    Event::Custom(Box::new(move |lab, clock| run_agent(lab, clock, opts)))
}

fn run_agent(lab: &mut Lab, clock: &Clock, opts: AgentOptions) -> Result<EventOutcome> {
    let mut o = EventOutcome::default();
    lab.write_agent_config(Node::Lb1, &opts.overrides)?;
    lab.write_agent_config(Node::Lb2, &AgentConfig::default())?;
    if !opts.no_accept {
        let acc = lab.agent(Node::Lb2, &["accept"])?;
        if !acc.status.success() {
            bail!(
                "drain-agent accept on lb2 failed: {}",
                String::from_utf8_lossy(&acc.stderr)
            );
        }
        o.note(clock, "lb2: drain-agent accept");
    }
    let bin = find_bin("drain-agent")?;
    let cfg = lab.dir.join("agent-lb1.yaml");
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &lab.node_ns(Node::Lb1)])
        .arg(&bin)
        .arg("-c")
        .arg(&cfg)
        .arg("--socket")
        .arg(lab.control_socket(Node::Lb1))
        .args(["--json", "drain"])
        .args(&opts.args);
    let t0 = Instant::now();
    o.note(clock, "lb1: drain-agent drain");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting drain-agent")?;
    // Read both pipes while the agent runs, or its live progress could fill a pipe and block it;
    // stdout line by line, so that an action can wait for the event it must follow.
    let (lines_tx, lines) = std::sync::mpsc::channel::<String>();
    let stdout_pipe = child.stdout.take();
    let stdout = std::thread::spawn(move || {
        use std::io::BufRead;
        if let Some(p) = stdout_pipe {
            for line in std::io::BufReader::new(p).lines().map_while(Result::ok) {
                if lines_tx.send(line).is_err() {
                    break;
                }
            }
        }
    });
    let stderr_pipe = child.stderr.take();
    let stderr = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(mut p) = stderr_pipe {
            let _ = std::io::Read::read_to_string(&mut p, &mut s);
        }
        s
    });
    let mut events: Vec<serde_json::Value> = Vec::new();
    let take_line = |line: String, events: &mut Vec<serde_json::Value>| {
        if let Ok(mut v) = serde_json::from_str::<serde_json::Value>(&line) {
            if let Some(ns) = v["mono_ns"].as_u64() {
                v["t_ms"] = serde_json::json!(clock.at(ns));
            }
            events.push(v);
        }
    };
    let mut exited = None;
    for (when, action) in opts.during.clone() {
        match when {
            When::At(at) => {
                let now = t0.elapsed();
                if at > now {
                    std::thread::sleep(at - now);
                }
            }
            When::After(kind, delay) => {
                let bound = Instant::now() + EVENT_WAIT;
                while !events.iter().any(|e| e["event"] == kind) {
                    match lines.recv_timeout(bound.saturating_duration_since(Instant::now())) {
                        Ok(line) => take_line(line, &mut events),
                        Err(e) => {
                            let _ = child.kill();
                            let _ = child.wait();
                            bail!(
                                "the agent never emitted `{kind}` ({}), so {action:?} cannot follow it; events: {:?}\nstderr: {}",
                                if e == std::sync::mpsc::RecvTimeoutError::Timeout { format!("not within {EVENT_WAIT:?}") } else { "it exited".to_string() },
                                events.iter().map(|e| e["event"].clone()).collect::<Vec<_>>(),
                                stderr.join().unwrap_or_default()
                            );
                        }
                    }
                }
                o.note(clock, format!("lb1: the agent emitted `{kind}`"));
                // Not ordering (the event did that): how far into the step the action lands.
                std::thread::sleep(delay);
            }
        }
        match action {
            DuringDrain::PeerLinkDown => {
                o.note(clock, "lb2: ingress link down (peer dies)");
                lab.exec(
                    &lab.node_ns(Node::Lb2),
                    &["ip", "link", "set", INGRESS_IF, "down"],
                )?;
            }
            DuringDrain::Terminate => {
                o.note(clock, "lb1: SIGTERM to drain-agent");
                // `ip netns exec` execs the agent, so the child pid is the agent's.
                nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(child.id() as i32),
                    nix::sys::signal::Signal::SIGTERM,
                )?;
            }
            DuringDrain::Kill => {
                o.note(clock, "lb1: SIGKILL to drain-agent");
                nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(child.id() as i32),
                    nix::sys::signal::Signal::SIGKILL,
                )?;
                // Dead before the next action: an `undrain` must not find the lock still held.
                exited = Some(child.wait()?);
                o.note(clock, "lb1: drain-agent gone");
            }
            DuringDrain::RestartKeepalived(node) => {
                lab.stop(&format!("keepalived-{node}"))?;
                o.note(clock, format!("{node}: keepalived stopped"));
                lab.start_keepalived(node)?;
                o.note(clock, format!("{node}: keepalived started"));
            }
            DuringDrain::KillDaemon(node) => {
                lab.kill(&format!("agent-{node}"))?;
                o.note(clock, format!("{node}: daemon killed (SIGKILL)"));
            }
            DuringDrain::NodeLinkDown(node) => {
                lab.exec(
                    &lab.node_ns(node),
                    &["ip", "link", "set", INGRESS_IF, "down"],
                )?;
                o.note(clock, format!("{node}: ingress link down (node gone)"));
            }
            DuringDrain::NodeLinkUp(node) => {
                lab.exec(&lab.node_ns(node), &["ip", "link", "set", INGRESS_IF, "up"])?;
                o.note(clock, format!("{node}: ingress link up"));
            }
            DuringDrain::Exec(role, argv) => {
                let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
                let out = lab.exec_status(&lab.ns(&role), &argv)?;
                o.note(
                    clock,
                    format!(
                        "{role}: {argv:?} exited {} ({})",
                        out.status.code().unwrap_or(-1),
                        String::from_utf8_lossy(&out.stderr).trim()
                    ),
                );
            }
            DuringDrain::Spawn(name, role, argv) => {
                let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
                let ns = lab.ns(&role);
                lab.spawn(&name, &ns, &argv)?;
                o.note(clock, format!("{role}: {name} started"));
            }
            DuringDrain::StopProcess(name) => {
                lab.stop(&name)?;
                o.note(clock, format!("{name} stopped (SIGTERM)"));
            }
            DuringDrain::KillAll(node, comm) => {
                let killed = lab.kill_all(node, &comm)?;
                o.note(
                    clock,
                    format!("{node}: {killed} {comm} process(es) killed (SIGKILL)"),
                );
            }
            DuringDrain::StartDaemon(node) => {
                lab.start_daemon(node)?;
                o.note(clock, format!("{node}: daemon started"));
            }
            DuringDrain::Undrain => {
                let out = lab.agent(Node::Lb1, &["undrain"])?;
                o.note(
                    clock,
                    format!(
                        "lb1: undrain exited {} ({})",
                        out.status.code().unwrap_or(-1),
                        String::from_utf8_lossy(&out.stderr).trim()
                    ),
                );
            }
            DuringDrain::SecondDrain => {
                let out = lab.agent(Node::Lb1, &["drain"])?;
                o.note(
                    clock,
                    format!(
                        "lb1: second drain exited {} ({})",
                        out.status.code().unwrap_or(-1),
                        String::from_utf8_lossy(&out.stderr).trim()
                    ),
                );
            }
        }
    }
    let status = match exited {
        Some(s) => s,
        None => child.wait()?,
    };
    let exit_code = status.code().unwrap_or(-1);
    o.note(clock, format!("lb1: drain-agent exited {exit_code}"));
    let _ = stdout.join();
    for line in lines.try_iter() {
        take_line(line, &mut events);
    }
    let stderr = stderr.join().unwrap_or_default();
    let run = AgentRun {
        exit_code,
        events,
        stderr,
    };
    if let Some(r) = run.result() {
        o.drain_ms = r["report"]["total_ms"].as_f64();
        o.failover_ms = r["report"]["failover_ms"].as_f64();
    }
    if !opts.no_accept {
        let rel = lab.agent(Node::Lb2, &["release"])?;
        if !rel.status.success() {
            bail!(
                "drain-agent release on lb2 failed: {}",
                String::from_utf8_lossy(&rel.stderr)
            );
        }
        o.note(clock, "lb2: drain-agent release");
    }
    o.agent = Some(run);
    Ok(o)
}
