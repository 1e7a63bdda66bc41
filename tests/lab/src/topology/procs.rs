//! The processes a lab runs (backend, HAProxy, keepalived, the agent's daemon): starting,
//! stopping and killing them, and finding the programs and binaries they run.

use super::*;

impl Lab {
    /// Starts a long-running process in a namespace; its output goes to `<dir>/<name>.log` and it
    /// is killed at teardown.
    pub fn spawn(&mut self, name: &str, ns: &str, argv: &[&str]) -> Result<()> {
        let log = fs::File::create(self.dir.join(format!("{name}.log")))?;
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .args(argv)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {name} in {ns}"))?;
        self.children.push((name.to_string(), child));
        Ok(())
    }

    /// Pids of the processes the lab started (not their children: keepalived forks its VRRP process).
    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().map(|(_, c)| c.id()).collect()
    }

    /// Removes a process started with [`Lab::spawn`] from the lab's list, to stop or kill it.
    pub(super) fn take_child(&mut self, name: &str) -> Result<Child> {
        let pos = self
            .children
            .iter()
            .position(|(n, _)| n == name)
            .ok_or_else(|| anyhow!("no process {name}"))?;
        Ok(self.children.remove(pos).1)
    }

    /// Stops a process started with [`Lab::spawn`] gracefully (SIGTERM) and waits for it.
    pub fn stop(&mut self, name: &str) -> Result<()> {
        let mut child = self.take_child(name)?;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )?;
        child.wait()?;
        Ok(())
    }

    /// Kills a process started with [`Lab::spawn`] (SIGKILL, like a crash or `systemctl kill`).
    pub fn kill(&mut self, name: &str) -> Result<()> {
        let mut child = self.take_child(name)?;
        let _ = child.kill();
        let _ = child.wait();
        Ok(())
    }

    /// Kills every process in a node's namespace whose command name (`/proc/PID/comm`) is
    /// `comm`, found by `ip netns pids` (never by name across the host), as `systemctl kill -s
    /// KILL` does to a unit: all at once, so none runs any code. Each is stopped (SIGSTOP)
    /// before any is killed: keepalived's VRRP child gets SIGTERM when its parent dies
    /// (PR_SET_PDEATHSIG) and would otherwise remove the VIP and hand it over gracefully.
    /// Returns how many; the lab's own handle on a killed process is reaped at teardown.
    pub fn kill_all(&self, node: Node, comm: &str) -> Result<usize> {
        use nix::sys::signal::{kill, Signal};
        let out = run(&["ip", "netns", "pids", &self.node_ns(node)])?;
        let pids: Vec<nix::unistd::Pid> = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
            .filter(|pid| {
                fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|n| n.trim() == comm)
            })
            .map(nix::unistd::Pid::from_raw)
            .collect();
        for pid in &pids {
            let _ = kill(*pid, Signal::SIGSTOP);
        }
        Ok(pids
            .iter()
            .filter(|pid| kill(**pid, Signal::SIGKILL).is_ok())
            .count())
    }

    pub(super) fn start_backend(&mut self) -> Result<()> {
        let bin = find_bin("drain-lab")?;
        let http = format!("0.0.0.0:{}", addr::BACKEND_HTTP);
        let echo = format!("0.0.0.0:{}", addr::BACKEND_ECHO);
        let be = self.ns("be");
        self.spawn(
            "backend",
            &be,
            &[
                bin.to_str().unwrap(),
                "backend",
                "--http",
                &http,
                "--echo",
                &echo,
            ],
        )
    }

    /// Starts HAProxy on a node (foreground, so the lab owns the process).
    pub fn start_haproxy(&mut self, node: Node) -> Result<()> {
        let cfg = self.haproxy_config_path(node);
        let ns = self.node_ns(node);
        self.spawn(
            &format!("haproxy-{node}"),
            &ns,
            &["haproxy", "-db", "-f", cfg.to_str().unwrap()],
        )
    }

    /// Starts `drain-agent run` on a node (process name `agent-<node>`).
    pub fn start_daemon(&mut self, node: Node) -> Result<()> {
        let bin = find_bin("drain-agent")?;
        let cfg = self.dir.join(format!("agent-{node}.yaml"));
        let (sock, fifo) = (self.control_socket(node), self.notify_fifo(node));
        let ns = self.node_ns(node);
        let argv = [
            bin.to_str().unwrap(),
            "-c",
            cfg.to_str().unwrap(),
            "--socket",
            sock.to_str().unwrap(),
            "--log-level",
            "info",
            "run",
            "--fifo",
            fifo.to_str().unwrap(),
        ];
        self.spawn(&format!("agent-{node}"), &ns, &argv)?;
        // Serving once the socket answers (reconcile runs first). Its mere existence says
        // nothing after a killed daemon, which leaves its socket file behind.
        let start = Instant::now();
        while std::os::unix::net::UnixStream::connect(&sock).is_err() {
            if start.elapsed() > Duration::from_secs(10) {
                bail!(
                    "drain-agent run on {node} does not answer on {}",
                    sock.display()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Starts keepalived on a node, with pid files of its own so two instances on one host (in two
    /// namespaces) don't fight over /run/keepalived.pid.
    pub fn start_keepalived(&mut self, node: Node) -> Result<()> {
        let d = &self.dir;
        let cfg = self.keepalived_config_path(node);
        let p = self.keepalived_pid_file(node);
        let r = d.join(format!("vrrp-{node}.pid"));
        let c = d.join(format!("checkers-{node}.pid"));
        let ns = self.node_ns(node);
        let args = [
            "keepalived",
            "--dont-fork",
            "--log-console",
            "--log-detail",
            "--vrrp",
            "-f",
            cfg.to_str().unwrap(),
            "-p",
            p.to_str().unwrap(),
            "-r",
            r.to_str().unwrap(),
            "-c",
            c.to_str().unwrap(),
            "-i",
            node.name(),
        ];
        self.spawn(&format!("keepalived-{node}"), &ns, &args)
    }
}

/// Runs a command, failing with its stderr when it exits non-zero.
pub fn run(argv: &[&str]) -> Result<Output> {
    let out = Command::new(argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", argv.join(" ")))?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            argv.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

/// `bin` in `PATH`, or in the sbin directories a non-root `PATH` often lacks.
pub(super) fn which(bin: &str) -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs =
        std::env::split_paths(&path).chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")]);
    let search = std::env::join_paths(dirs)?;
    drain_test_support::find_executable(bin, &search)
        .with_context(|| format!("`{bin}` not found in PATH"))
}

/// Fails unless running as root (the lab creates namespaces).
pub fn require_root() -> Result<()> {
    if !nix::unistd::Uid::effective().is_root() {
        bail!("the lab needs root (it creates network namespaces)");
    }
    Ok(())
}

/// Finds one of the workspace's binaries: `$DRAIN_LAB_BIN_<NAME>` (dashes as underscores, upper
/// case), else next to the running executable or one level up (cargo puts test executables in
/// target/<profile>/deps and binaries in target/<profile>).
pub fn find_bin(name: &str) -> Result<PathBuf> {
    let var = format!("DRAIN_LAB_BIN_{}", name.replace('-', "_").to_uppercase());
    if let Some(p) = std::env::var_os(&var) {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    let mut dir = exe.parent().map(Path::to_path_buf);
    for _ in 0..2 {
        if let Some(d) = dir {
            let p = d.join(name);
            if p.is_file() {
                return Ok(p);
            }
            dir = d.parent().map(Path::to_path_buf);
        }
    }
    bail!("binary `{name}` not found next to {} (build it with `cargo build --workspace --bins`, or set {var})", exe.display())
}
