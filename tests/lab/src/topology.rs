//! The lab topology: a client, two load-balancer nodes running real keepalived and HAProxy, and a
//! backend, each in its own network namespace, joined by a bridge that lives in a fifth namespace.
//!
//! Nothing here touches the root namespace's links, routes, firewall or sysctls: veth pairs are
//! created directly between lab namespaces (`ip -n SW link add X type veth peer name eth0 netns
//! NODE`), and every sysctl is written inside a lab namespace. Every lab has its own bridge, so
//! concurrent labs can use the same addresses (198.18.0.0/24, RFC 2544 benchmarking range) without
//! seeing each other.
//!
//! Names are `dl-<pid>-<n>-<role>` so a later run can tell a leftover of a killed run (its pid is
//! gone) from a lab that is still in use, and [`cleanup_leftovers`] removes only the former.

use std::fmt;
use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use drain_test_support::netns;

/// Prefix of every namespace and state directory a lab creates.
pub const PREFIX: &str = "dl-";
/// Where lab state (configs, logs, pid files) lives. Under /run rather than /tmp because keepalived's
/// `enable_script_security` refuses notify scripts in a path any non-root user can write to.
pub const STATE_ROOT: &str = "/run/drain-lab";

/// The lab's fixed addresses (per lab: every lab has its own bridge).
pub mod addr {
    use std::net::Ipv4Addr;
    /// The client namespace's address.
    pub const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
    /// lb1's address on the ingress network.
    pub const LB1: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 11);
    /// lb2's address on the ingress network.
    pub const LB2: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 12);
    /// The backend's address.
    pub const BACKEND: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 20);
    /// The VRRP virtual address both HAProxy instances bind.
    pub const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 100);
    /// Prefix length of the lab network.
    pub const PREFIX_LEN: u8 = 24;
    /// HAProxy's HTTP frontend port on the VIP.
    pub const HTTP_PORT: u16 = 80;
    /// HAProxy's TCP (echo) frontend port on the VIP.
    pub const ECHO_PORT: u16 = 7;
    /// The backend's HTTP port.
    pub const BACKEND_HTTP: u16 = 8080;
    /// The backend's echo port.
    pub const BACKEND_ECHO: u16 = 7007;
}

/// Ingress interface name inside each node namespace.
pub const INGRESS_IF: &str = "eth0";
/// Interface keepalived tracks on each LB node (one end of a veth pair standing in for the
/// production dummy interface: this kernel has no dummy driver).
pub const TRACKED_IF: &str = "trk0";

/// One of the two load-balancer nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Node {
    /// The node that starts as MASTER.
    Lb1,
    /// The node that starts as BACKUP.
    Lb2,
}

impl Node {
    /// Both nodes, lb1 first.
    pub const ALL: [Node; 2] = [Node::Lb1, Node::Lb2];
    /// Short name used in namespace and file names.
    pub fn name(self) -> &'static str {
        match self {
            Node::Lb1 => "lb1",
            Node::Lb2 => "lb2",
        }
    }
    /// The node's own address.
    pub fn addr(self) -> Ipv4Addr {
        match self {
            Node::Lb1 => addr::LB1,
            Node::Lb2 => addr::LB2,
        }
    }
    /// The other node of the pair.
    pub fn peer(self) -> Node {
        match self {
            Node::Lb1 => Node::Lb2,
            Node::Lb2 => Node::Lb1,
        }
    }
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How the lab's keepalived pair is configured.
#[derive(Clone, Debug)]
pub struct LabOptions {
    /// `nopreempt` on both nodes (both start in state BACKUP; lb1 wins the first election by priority).
    pub nopreempt: bool,
    /// VRRP advertisement interval in seconds.
    pub advert_int: u32,
    /// Extra lines appended to each node's `vrrp_instance` block (tests use it for notify wiring).
    pub extra_vrrp: Vec<String>,
    /// How long `up` waits for the VIP to answer.
    pub ready_timeout: Duration,
    /// Wire keepalived's notify to `drain-agent notify` on both nodes (with the default agent
    /// configuration), as keepalived/ does in production.
    pub agent_notify: bool,
    /// The agent fails over through keepalived's track file instead of the tracked interface.
    pub track_file_trigger: bool,
    /// Run `drain-agent run` (the daemon) on both nodes, following keepalived's
    /// `vrrp_notify_fifo`, as keepalived/ ships it; the CLI then goes through its control socket.
    pub daemon: bool,
    /// Give both agents' configurations a `handoff:` section (one shared key in the lab's
    /// directory), so a daemon serves the peer link and `drain --handoff` works.
    pub handoff: bool,
}

impl Default for LabOptions {
    fn default() -> Self {
        LabOptions {
            nopreempt: false,
            advert_int: 1,
            extra_vrrp: Vec::new(),
            ready_timeout: Duration::from_secs(20),
            agent_notify: false,
            track_file_trigger: false,
            daemon: false,
            handoff: false,
        }
    }
}

/// A running lab. Dropping it tears everything down (processes first, then namespaces, then the
/// state directory), also when a test panics.
pub struct Lab {
    /// Unique id, `<pid>-<n>`.
    pub id: String,
    /// State directory (configs, logs, pid files).
    pub dir: PathBuf,
    /// The options it was built with.
    pub opts: LabOptions,
    children: Vec<(String, Child)>,
    torn_down: bool,
    /// Held for the lab's whole life (released when the lab is dropped, after teardown); `None`
    /// in a [`crate::fleet::Fleet`], which holds it for all its labs.
    _lock: Option<LabLock>,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// The lock every [`Lab`] holds while it exists, so two labs never run at once (they would share
/// the 2 cores and each other's timing, and `Lab::up` removes leftovers), whatever the test
/// runner's thread count or how many test binaries run.
pub const LAB_LOCK: &str = "/run/drain-lab/lab.lock";

/// How long [`Lab::up`] waits for another lab to finish: longer than the longest lab test.
pub const LAB_LOCK_WAIT: Duration = Duration::from_secs(30 * 60);

/// An exclusive `flock` on a file: per open file description, so it serialises threads of one
/// process as well as processes. Released when dropped (or when the process dies).
#[derive(Debug)]
pub struct LabLock {
    _file: fs::File,
}

impl LabLock {
    /// Takes the lock at `path` (created if missing), waiting at most `bound` for its holder;
    /// the error names the holder's pid, which the holder writes into the file.
    pub fn acquire(path: &Path, bound: Duration) -> Result<LabLock> {
        use std::os::fd::AsRawFd;
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        let mut file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .with_context(|| format!("opening the lab lock {}", path.display()))?;
        let start = Instant::now();
        // SAFETY: flock on a descriptor this function owns.
        while unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(anyhow!("locking {}: {err}", path.display()));
            }
            if start.elapsed() >= bound {
                let holder = fs::read_to_string(path).unwrap_or_default();
                bail!(
                    "another lab holds {} (pid {}) after {bound:?}",
                    path.display(),
                    holder.trim()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        file.set_len(0)?;
        write!(file, "{}", std::process::id())?;
        Ok(LabLock { _file: file })
    }
}

/// Lab roles that get a namespace.
const ROLES: [&str; 5] = ["sw", "cl", "lb1", "lb2", "be"];

impl Lab {
    /// Namespace name of a role (`sw`, `cl`, `lb1`, `lb2`, `be`).
    pub fn ns(&self, role: &str) -> String {
        format!("{PREFIX}{}-{role}", self.id)
    }

    /// Namespace of an LB node.
    pub fn node_ns(&self, node: Node) -> String {
        self.ns(node.name())
    }

    /// Namespace of the client.
    pub fn client_ns(&self) -> String {
        self.ns("cl")
    }

    /// Builds the topology, starts the backend, keepalived and HAProxy on both nodes, and returns
    /// once lb1 is MASTER and the VIP answers HTTP and echo from the client namespace.
    pub fn up(opts: &LabOptions) -> Result<Lab> {
        let lock = LabLock::acquire(Path::new(LAB_LOCK), LAB_LOCK_WAIT)?;
        Lab::up_locked(opts, Some(lock))
    }

    /// [`Lab::up`] for a caller that already holds the [`LAB_LOCK`] (a fleet of labs).
    pub(crate) fn up_locked(opts: &LabOptions, lock: Option<LabLock>) -> Result<Lab> {
        require_root()?;
        for bin in ["ip", "keepalived", "haproxy"] {
            which(bin).with_context(|| format!("the lab needs `{bin}`: run `make deps` (or apt-get install keepalived haproxy iproute2)"))?;
        }
        // A killed earlier run may have left namespaces behind; they would not collide with ours
        // (names carry the pid) but would eat memory and confuse `ip netns list`. Under the lock
        // no other lab is alive to lose its namespaces.
        let _ = cleanup_leftovers(false);
        let id = format!(
            "{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        let dir = Path::new(STATE_ROOT).join(format!("{PREFIX}{id}"));
        let mut lab = Lab {
            id,
            dir,
            opts: opts.clone(),
            children: Vec::new(),
            torn_down: false,
            _lock: lock,
        };
        if let Err(e) = lab.build(opts) {
            let logs = lab.log_tail();
            lab.teardown();
            return Err(e.context(logs));
        }
        Ok(lab)
    }

    fn build(&mut self, opts: &LabOptions) -> Result<()> {
        fs::create_dir_all(STATE_ROOT)?;
        fs::set_permissions(STATE_ROOT, fs::Permissions::from_mode(0o755))?;
        fs::create_dir_all(&self.dir)?;
        fs::set_permissions(&self.dir, fs::Permissions::from_mode(0o755))?;
        for role in ROLES {
            run(&["ip", "netns", "add", &self.ns(role)])?;
            run(&["ip", "-n", &self.ns(role), "link", "set", "lo", "up"])?;
        }
        let sw = self.ns("sw");
        run(&["ip", "-n", &sw, "link", "add", "br0", "type", "bridge"])?;
        // Multicast snooping off: VRRP adverts (224.0.0.18) must reach the other node whatever the
        // bridge has learnt about group membership.
        run(&[
            "ip",
            "-n",
            &sw,
            "link",
            "set",
            "br0",
            "type",
            "bridge",
            "mcast_snooping",
            "0",
            "stp_state",
            "0",
            "forward_delay",
            "0",
        ])?;
        run(&["ip", "-n", &sw, "link", "set", "br0", "up"])?;
        let nodes = [
            ("cl", addr::CLIENT),
            ("lb1", addr::LB1),
            ("lb2", addr::LB2),
            ("be", addr::BACKEND),
        ];
        for (role, ip) in nodes {
            self.attach(role, ip)?;
        }
        for node in Node::ALL {
            let ns = self.node_ns(node);
            // The tracked interface: a veth pair inside the node (production uses a dummy).
            run(&[
                "ip", "-n", &ns, "link", "add", TRACKED_IF, "type", "veth", "peer", "name", "trk0p",
            ])?;
            run(&["ip", "-n", &ns, "link", "set", "trk0p", "up"])?;
            run(&["ip", "-n", &ns, "link", "set", TRACKED_IF, "up"])?;
            // HAProxy binds the VIP on both nodes, also while the VIP lives on the other one.
            // (HAProxy 2.6 here has no `freebind` bind keyword.)
            self.sysctl(&ns, "net.ipv4.ip_nonlocal_bind", "1")?;
        }
        self.start_backend()?;
        for node in Node::ALL {
            self.write_haproxy_config(node)?;
            self.start_haproxy(node)?;
        }
        if opts.agent_notify || opts.daemon {
            for node in Node::ALL {
                self.write_agent_config(node, &crate::scenario::AgentConfig::default())?;
            }
        }
        if opts.daemon {
            for node in Node::ALL {
                self.start_daemon(node)?;
            }
        }
        self.write_notify_script(opts.agent_notify)?;
        for node in Node::ALL {
            self.write_keepalived_config(node, opts)?;
            self.start_keepalived(node)?;
        }
        self.wait_ready(opts.ready_timeout)
    }

    /// Connects namespace `role` to the bridge with a veth pair and gives it `ip`.
    fn attach(&self, role: &str, ip: Ipv4Addr) -> Result<()> {
        let sw = self.ns("sw");
        let ns = self.ns(role);
        run(&[
            "ip", "-n", &sw, "link", "add", role, "type", "veth", "peer", "name", INGRESS_IF,
            "netns", &ns,
        ])?;
        run(&["ip", "-n", &sw, "link", "set", role, "master", "br0"])?;
        run(&["ip", "-n", &sw, "link", "set", role, "up"])?;
        let cidr = format!("{ip}/{}", addr::PREFIX_LEN);
        run(&["ip", "-n", &ns, "addr", "add", &cidr, "dev", INGRESS_IF])?;
        run(&["ip", "-n", &ns, "link", "set", INGRESS_IF, "up"])?;
        Ok(())
    }

    /// Adds one more client namespace (role `extra<n>`) on the bridge, e.g. for a client that will
    /// vanish and leave a zombie connection behind. Returns its namespace name.
    pub fn add_client(&mut self, n: u8) -> Result<String> {
        let role = format!("x{n}");
        run(&["ip", "netns", "add", &self.ns(&role)])?;
        run(&["ip", "-n", &self.ns(&role), "link", "set", "lo", "up"])?;
        self.attach(&role, Ipv4Addr::new(198, 18, 0, 30 + n))?;
        Ok(self.ns(&role))
    }

    /// Writes a sysctl inside a lab namespace.
    pub fn sysctl(&self, ns: &str, key: &str, value: &str) -> Result<()> {
        run(&[
            "ip",
            "netns",
            "exec",
            ns,
            "sysctl",
            "-q",
            "-w",
            &format!("{key}={value}"),
        ])?;
        Ok(())
    }

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
    fn take_child(&mut self, name: &str) -> Result<Child> {
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

    fn start_backend(&mut self) -> Result<()> {
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

    /// HAProxy's configuration file of a node.
    pub fn haproxy_config_path(&self, node: Node) -> PathBuf {
        self.dir.join(format!("haproxy-{node}.cfg"))
    }

    fn write_haproxy_config(&self, node: Node) -> Result<()> {
        let text = haproxy_config(&self.dir, node);
        fs::write(self.haproxy_config_path(node), text)?;
        Ok(())
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

    fn notify_script(&self) -> PathBuf {
        self.dir.join("notify.sh")
    }

    /// Log of keepalived `notify` calls on a node: one line `unix-time TYPE NAME STATE PRIORITY`.
    pub fn notify_log(&self, node: Node) -> PathBuf {
        self.dir.join(format!("notify-{node}.log"))
    }

    /// Whether HAProxy on a node listens on both frontends (it binds them after start-up).
    pub fn haproxy_listening(&self, node: Node) -> Result<bool> {
        for port in [addr::HTTP_PORT, addr::ECHO_PORT] {
            let out = self.exec(
                &self.node_ns(node),
                &["ss", "-Hltn", &format!("sport = :{port}")],
            )?;
            if out.stdout.is_empty() {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// The states keepalived announced on a node so far, in order (the notify log's STATE).
    pub fn notify_states(&self, node: Node) -> Vec<String> {
        fs::read_to_string(self.notify_log(node))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_whitespace().nth(3).map(str::to_string))
            .collect()
    }

    /// Whether every notify call keepalived started on a node has finished: with
    /// [`LabOptions::agent_notify`], each `drain-agent notify` run logs its exit after it ends;
    /// without it the hook only appends its log line, which is done when it is there.
    pub fn notify_settled(&self, node: Node) -> bool {
        if !self.opts.agent_notify {
            return true;
        }
        let finished = fs::read_to_string(self.dir.join(format!("agent-notify-{node}.log")))
            .unwrap_or_default()
            .lines()
            .filter(|l| {
                l.rsplit_once(" exit ")
                    .is_some_and(|(_, code)| code.trim().parse::<i32>().is_ok())
            })
            .count();
        finished == self.notify_states(node).len()
    }

    /// Waits (at most `timeout`) until the latest state keepalived announced on `node` is
    /// `state` and every notify call of both nodes has finished: what "keepalived has acted on
    /// the change" means from outside.
    pub fn wait_announced(&self, node: Node, state: &str, timeout: Duration) -> Result<()> {
        wait_until(&format!("{node} to announce {state}"), timeout, || {
            self.notify_states(node).last().map(String::as_str) == Some(state)
                && Node::ALL.iter().all(|n| self.notify_settled(*n))
        })
        .with_context(|| format!("{node}'s states: {:?}", self.notify_states(node)))
    }

    fn write_notify_script(&self, agent: bool) -> Result<()> {
        let path = self.notify_script();
        let mut text = format!(
            "#!/bin/sh\n# keepalived notify hook of the lab: records every state change so tests can observe it.\n\
             node=\"$1\"; shift\n\
             echo \"$(date +%s.%N) $*\" >> {dir}/notify-$node.log\n",
            dir = self.dir.display()
        );
        if agent {
            // Then what production runs: `drain-agent notify TYPE NAME STATE PRIORITY`.
            let bin = find_bin("drain-agent")?;
            text.push_str(&format!(
                "{bin} -c {dir}/agent-$node.yaml notify \"$@\" >> {dir}/agent-notify-$node.log 2>&1\n\
                 echo \"$(date +%s.%N) $* exit $?\" >> {dir}/agent-notify-$node.log\n",
                bin = bin.display(),
                dir = self.dir.display()
            ));
        }
        fs::write(&path, text)?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755))?;
        Ok(())
    }

    /// keepalived's configuration file of a node (what `start_keepalived` runs).
    pub fn keepalived_config_path(&self, node: Node) -> PathBuf {
        self.dir.join(format!("keepalived-{node}.conf"))
    }

    /// The daemon's control socket of a node.
    pub fn control_socket(&self, node: Node) -> PathBuf {
        self.dir.join(format!("ctl-{node}.sock"))
    }

    /// keepalived's `vrrp_notify_fifo` of a node.
    pub fn notify_fifo(&self, node: Node) -> PathBuf {
        self.dir.join(format!("fifo-{node}"))
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

    /// The keepalived track file of a node (`track_file` block, weight 1); a missing file is 0.
    pub fn track_file(&self, node: Node) -> PathBuf {
        self.dir.join(format!("track-{node}"))
    }

    fn write_keepalived_config(&self, node: Node, opts: &LabOptions) -> Result<()> {
        let mut text = keepalived_config(node, opts, &self.notify_script(), &self.track_file(node));
        if opts.daemon {
            // The ordered channel the daemon follows (keepalived creates the FIFO).
            text = text.replacen(
                "global_defs {\n",
                &format!(
                    "global_defs {{\n    vrrp_notify_fifo {}\n",
                    self.notify_fifo(node).display()
                ),
                1,
            );
        }
        fs::write(self.keepalived_config_path(node), text)?;
        Ok(())
    }

    /// keepalived's pid file of a node (its main process: SIGHUP reloads the configuration).
    pub fn keepalived_pid_file(&self, node: Node) -> PathBuf {
        self.dir.join(format!("keepalived-{node}.pid"))
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

    /// Waits until lb1 holds the VIP, lb2 does not, and the VIP answers HTTP and echo from the client.
    fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut last = String::from("nothing tried yet");
        while Instant::now() < deadline {
            match self.check_ready() {
                Ok(()) => return Ok(()),
                Err(e) => last = format!("{e:#}"),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("lab not ready after {timeout:?}: {last}")
    }

    fn check_ready(&self) -> Result<()> {
        if !self.has_vip(Node::Lb1)? {
            bail!("lb1 does not hold the VIP yet");
        }
        if self.has_vip(Node::Lb2)? {
            bail!("lb2 holds the VIP too");
        }
        let cl = self.client_ns();
        netns::in_netns(&cl, || -> Result<()> {
            http_get(SocketAddrV4::new(addr::VIP, addr::HTTP_PORT), "/health")?;
            echo_once(SocketAddrV4::new(addr::VIP, addr::ECHO_PORT))?;
            Ok(())
        })??;
        Ok(())
    }

    /// Is the VIP configured on the node's ingress interface?
    pub fn has_vip(&self, node: Node) -> Result<bool> {
        let out = run(&[
            "ip",
            "-n",
            &self.node_ns(node),
            "-4",
            "-o",
            "addr",
            "show",
            "dev",
            INGRESS_IF,
        ])?;
        let needle = format!(" {}/", addr::VIP);
        Ok(String::from_utf8_lossy(&out.stdout).contains(&needle))
    }

    /// Which node holds the VIP (None during a switch or if both do).
    pub fn vip_owner(&self) -> Result<Option<Node>> {
        let a = self.has_vip(Node::Lb1)?;
        let b = self.has_vip(Node::Lb2)?;
        Ok(match (a, b) {
            (true, false) => Some(Node::Lb1),
            (false, true) => Some(Node::Lb2),
            _ => None,
        })
    }

    /// Waits until `node` alone holds the VIP; returns how long that took.
    pub fn wait_vip_owner(&self, node: Node, timeout: Duration) -> Result<Duration> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if self.vip_owner()? == Some(node) {
                return Ok(start.elapsed());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("{node} did not take the VIP within {timeout:?}")
    }

    /// Does the node carry drain-agent's acceptance route (`local VIP/32 dev lo`, protocol 211),
    /// i.e. does it accept diverted traffic?
    pub fn accepting(&self, node: Node) -> Result<bool> {
        let out = self.exec(
            &self.node_ns(node),
            &["ip", "route", "show", "table", "main", "proto", "211"],
        )?;
        Ok(!String::from_utf8_lossy(&out.stdout).trim().is_empty())
    }

    /// Sets the tracked interface of a node down or up (what an operator's `ip link set dummy0 down`
    /// does in production).
    pub fn set_tracked(&self, node: Node, up: bool) -> Result<()> {
        let state = if up { "up" } else { "down" };
        run(&[
            "ip",
            "-n",
            &self.node_ns(node),
            "link",
            "set",
            TRACKED_IF,
            state,
        ])?;
        Ok(())
    }

    /// Runs a command inside a lab namespace and returns its output (fails on a non-zero exit).
    pub fn exec(&self, ns: &str, argv: &[&str]) -> Result<Output> {
        let mut full = vec!["ip", "netns", "exec", ns];
        full.extend_from_slice(argv);
        run(&full)
    }

    /// Like [`Lab::exec`] but returns the output whatever the exit status.
    pub fn exec_status(&self, ns: &str, argv: &[&str]) -> Result<Output> {
        Command::new("ip")
            .args(["netns", "exec", ns])
            .args(argv)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {argv:?} in {ns}"))
    }

    /// Everything a drain must leave as it found it on a node: firewall, sets, policy rules, all
    /// routing tables, addresses apart from the VIP, and the sysctls the agent may touch.
    pub fn host_snapshot(&self, node: Node) -> Result<String> {
        let ns = self.node_ns(node);
        let mut s = String::new();
        for argv in [
            &["iptables-save"][..],
            &["ipset", "list"],
            &["ip", "rule"],
            &["ip", "route", "show", "table", "all"],
            &["ip", "-o", "link", "show"],
        ] {
            let out = self.exec(&ns, argv)?;
            s.push_str(&format!("## {}\n", argv.join(" ")));
            let text = String::from_utf8_lossy(&out.stdout);
            // iptables-save stamps the time and packet counters; the VIP's own routes move with VRRP.
            let mut lines: Vec<String> = text
                .lines()
                .filter(|l| {
                    !(l.starts_with('#') || l.contains(&addr::VIP.to_string()) && argv[0] == "ip")
                })
                .map(strip_counters)
                .collect();
            if argv.starts_with(&["ip", "route"]) {
                // IPv6 link-local routes come back by themselves a moment (DAD) after a link
                // goes up again; the agent never touches IPv6.
                lines.retain(|l| !l.contains("fe80::"));
                // A link going down and up re-adds its IPv6 link-local routes at the end of the
                // listing: the same routes in another order.
                lines.sort();
            }
            for line in lines {
                s.push_str(&line);
                s.push('\n');
            }
        }
        s.push_str("## sysctls\n");
        for key in [
            "net.ipv4.conf.all.rp_filter",
            "net.ipv4.conf.eth0.rp_filter",
            "net.ipv4.conf.all.arp_ignore",
            "net.ipv4.conf.eth0.arp_ignore",
            "net.ipv4.conf.all.arp_announce",
            "net.ipv4.conf.eth0.arp_announce",
            "net.ipv4.conf.eth0.send_redirects",
            "net.ipv4.conf.all.send_redirects",
            "net.ipv4.ip_forward",
        ] {
            let out = self.exec(&ns, &["sysctl", "-n", key])?;
            s.push_str(&format!("{key} = {}", String::from_utf8_lossy(&out.stdout)));
        }
        Ok(s)
    }

    /// The last lines of every process log, to explain a failure.
    pub fn log_tail(&self) -> String {
        let mut s = String::new();
        if let Ok(entries) = fs::read_dir(&self.dir) {
            let mut names: Vec<_> = entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "log"))
                .collect();
            names.sort();
            for p in names {
                let text = fs::read_to_string(&p).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(8).collect();
                s.push_str(&format!("--- {}\n", p.display()));
                for l in tail.into_iter().rev() {
                    s.push_str(l);
                    s.push('\n');
                }
            }
        }
        s
    }

    /// Stops every process and removes every namespace and the state directory. Idempotent.
    pub fn teardown(&mut self) {
        if self.torn_down {
            return;
        }
        self.torn_down = true;
        for (_, child) in self.children.iter_mut() {
            let _ = child.kill();
        }
        for (_, mut child) in self.children.drain(..) {
            let _ = child.wait();
        }
        let mut names: Vec<String> = ROLES.iter().map(|r| self.ns(r)).collect();
        names.extend(
            list_namespaces()
                .into_iter()
                .filter(|n| n.starts_with(&format!("{PREFIX}{}-", self.id))),
        );
        names.sort();
        names.dedup();
        for ns in names {
            remove_namespace(&ns);
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// Kills every process still running in a namespace, then deletes it.
pub fn remove_namespace(ns: &str) {
    if !Path::new("/run/netns").join(ns).exists() {
        return;
    }
    for _ in 0..20 {
        let pids = Command::new("ip")
            .args(["netns", "pids", ns])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
            .unwrap_or_default();
        let pids: Vec<i32> = pids
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
        if pids.is_empty() {
            break;
        }
        for pid in pids {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = Command::new("ip")
        .args(["netns", "del", ns])
        .stderr(Stdio::null())
        .status();
}

/// Polls `cond` every 50 ms until it holds, failing after `timeout` with `what` in the message.
pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) -> Result<()> {
    let start = Instant::now();
    while !cond() {
        if start.elapsed() > timeout {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Names of all network namespaces under /run/netns.
pub fn list_namespaces() -> Vec<String> {
    fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Removes what killed lab runs left behind: namespaces (and their processes) and state
/// directories whose creating process no longer exists. With `all`, removes every lab, live or not.
/// Returns the names removed.
pub fn cleanup_leftovers(all: bool) -> Result<Vec<String>> {
    let mut removed = Vec::new();
    for ns in list_namespaces() {
        if let Some(pid) = owner_pid(&ns) {
            if all || !pid_alive(pid) {
                remove_namespace(&ns);
                removed.push(ns);
            }
        }
    }
    if let Ok(d) = fs::read_dir(STATE_ROOT) {
        for e in d.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if let Some(pid) = owner_pid(&name) {
                if all || !pid_alive(pid) {
                    let _ = fs::remove_dir_all(e.path());
                    removed.push(e.path().display().to_string());
                }
            }
        }
    }
    Ok(removed)
}

/// `dl-<pid>-<n>-...` → pid.
fn owner_pid(name: &str) -> Option<i32> {
    name.strip_prefix(PREFIX)?.split('-').next()?.parse().ok()
}

fn pid_alive(pid: i32) -> bool {
    pid == std::process::id() as i32 || Path::new(&format!("/proc/{pid}")).exists()
}

/// HAProxy configuration of a lab node: HTTP on VIP:80 and TCP echo on VIP:7, both to the backend.
pub fn haproxy_config(dir: &Path, node: Node) -> String {
    format!(
        "# drain-lab HAProxy for {node}
global
    # The fd hard limit here is 20000; HAProxy needs ~2 fds per connection.
    maxconn 8000
    nbthread 1
    stats socket {dir}/haproxy-{node}.sock mode 600 level admin
    # The lab kills and restarts HAProxy like a crash would; never let it linger.
    hard-stop-after 30s

defaults
    timeout connect 3s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 30s
    timeout client-fin 10s
    timeout server-fin 10s

frontend http
    mode http
    bind {vip}:{http}
    default_backend web

backend web
    mode http
    server be1 {be}:{be_http}

frontend echo
    mode tcp
    bind {vip}:{echo}
    default_backend echo

backend echo
    mode tcp
    server be1 {be}:{be_echo}
",
        dir = dir.display(),
        vip = addr::VIP,
        http = addr::HTTP_PORT,
        echo = addr::ECHO_PORT,
        be = addr::BACKEND,
        be_http = addr::BACKEND_HTTP,
        be_echo = addr::BACKEND_ECHO,
    )
}

/// keepalived configuration of a lab node: one VRRP instance, VIP on eth0, tracking trk0.
pub fn keepalived_config(
    node: Node,
    opts: &LabOptions,
    notify: &Path,
    track_file: &Path,
) -> String {
    let (state, prio) = match (node, opts.nopreempt) {
        (Node::Lb1, false) => ("MASTER", 150),
        (Node::Lb2, false) => ("BACKUP", 100),
        // keepalived honours nopreempt only with an initial state of BACKUP.
        (Node::Lb1, true) => ("BACKUP", 150),
        (Node::Lb2, true) => ("BACKUP", 100),
    };
    let nopreempt = if opts.nopreempt {
        "    nopreempt\n"
    } else {
        ""
    };
    let extra: String = opts
        .extra_vrrp
        .iter()
        .map(|l| format!("    {l}\n"))
        .collect();
    format!(
        "# drain-lab keepalived for {node}
global_defs {{
    router_id {node}
    enable_script_security
    script_user root
    vrrp_garp_master_delay 1
    vrrp_garp_master_repeat 3
}}

# The agent's second failover trigger (and the demotion a returning preempting node gets):
# value x weight is added to the priority, -254 is FAULT, a missing file is 0.
track_file drain_agent {{
    file \"{track}\"
    weight 1
}}

vrrp_instance VI_1 {{
    state {state}
    interface {ingress}
    virtual_router_id 51
    priority {prio}
    advert_int {advert}
{nopreempt}    track_interface {{
        {tracked}
    }}
    track_file {{
        drain_agent
    }}
    virtual_ipaddress {{
        {vip}/{plen} dev {ingress}
    }}
    notify \"{notify} {node}\"
{extra}}}
",
        ingress = INGRESS_IF,
        advert = opts.advert_int,
        tracked = TRACKED_IF,
        vip = addr::VIP,
        plen = addr::PREFIX_LEN,
        notify = notify.display(),
        track = track_file.display(),
    )
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
fn which(bin: &str) -> Result<PathBuf> {
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

/// One HTTP GET with `Connection: close`; returns the body on a 200.
pub fn http_get(to: SocketAddrV4, path: &str) -> Result<String> {
    let mut s = TcpStream::connect_timeout(&to.into(), Duration::from_secs(1))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: lab\r\nConnection: close\r\n\r\n"
    )?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    if !resp.starts_with("HTTP/1.1 200") {
        bail!(
            "GET {path} from {to}: {}",
            resp.lines().next().unwrap_or("no response")
        );
    }
    Ok(resp.split("\r\n\r\n").nth(1).unwrap_or("").to_string())
}

fn echo_once(to: SocketAddrV4) -> Result<()> {
    let mut s = TcpStream::connect_timeout(&to.into(), Duration::from_secs(1))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(b"ping")?;
    s.shutdown(std::net::Shutdown::Write)?;
    let mut back = Vec::new();
    s.read_to_end(&mut back)?;
    if back != b"ping" {
        bail!("echo via {to} returned {back:?}");
    }
    Ok(())
}

/// Removes iptables-save's `[packets:bytes]` counters so snapshots compare rules, not traffic.
fn strip_counters(line: &str) -> String {
    if line.starts_with(':') {
        if let Some(i) = line.rfind(" [") {
            return line[..i].to_string();
        }
    }
    line.to_string()
}

/// For privileged tests: returns true when the test can run (root, and the binaries the lab needs
/// are present). Otherwise prints why it skips and returns false — except under CI (`CI=true`),
/// where a skip would hide a missing install step, so it panics instead.
pub fn can_run_lab(test: &str, extra_bins: &[&str]) -> bool {
    let mut why = Vec::new();
    if !nix::unistd::Uid::effective().is_root() {
        why.push("not root".to_string());
    }
    for bin in [
        "ip",
        "keepalived",
        "haproxy",
        "iptables",
        "ipset",
        "ss",
        "sysctl",
    ]
    .iter()
    .chain(extra_bins)
    {
        if which(bin).is_err() {
            why.push(format!("`{bin}` not installed"));
        }
    }
    if why.is_empty() {
        return true;
    }
    let msg = format!(
        "{test}: skipped: {} (run `make deps` as root)",
        why.join(", ")
    );
    if netns::is_ci() {
        panic!("{msg} — under CI=true a skip is a failure");
    }
    eprintln!("{msg}");
    false
}

/// Removes every lab created by process `pid` (namespaces, their processes, state directories).
pub fn cleanup_pid(pid: i32) -> Result<Vec<String>> {
    let prefix = format!("{PREFIX}{pid}-");
    let mut removed = Vec::new();
    for ns in list_namespaces()
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
    {
        remove_namespace(&ns);
        removed.push(ns);
    }
    if let Ok(d) = fs::read_dir(STATE_ROOT) {
        for e in d.flatten() {
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lab_lock_serialises_threads_of_one_process() {
        let dir = std::env::temp_dir().join(format!("drain-lab-lock-test-{}", std::process::id()));
        let path = dir.join("lab.lock");
        let first = LabLock::acquire(&path, Duration::ZERO).unwrap();
        // Held: a second taker (another open file description, as another test thread's lab
        // would have) is refused, naming the holder.
        let p = path.clone();
        let refused = std::thread::spawn(move || LabLock::acquire(&p, Duration::from_millis(200)))
            .join()
            .unwrap()
            .unwrap_err()
            .to_string();
        assert!(
            refused.contains(&format!("pid {}", std::process::id())),
            "{refused}"
        );
        // Released: a waiting taker gets it, and only after the release.
        let (tx, rx) = std::sync::mpsc::channel();
        let p = path.clone();
        let waiter = std::thread::spawn(move || {
            let lock = LabLock::acquire(&p, Duration::from_secs(30));
            tx.send(()).unwrap();
            lock
        });
        assert!(
            rx.recv_timeout(Duration::from_millis(300)).is_err(),
            "taken while held"
        );
        drop(first);
        rx.recv_timeout(Duration::from_secs(30))
            .expect("taken once released");
        waiter.join().unwrap().unwrap();
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn owner_pid_parses_lab_names() {
        assert_eq!(owner_pid("dl-1234-0-lb1"), Some(1234));
        assert_eq!(owner_pid("dl-99-12"), Some(99));
        assert_eq!(owner_pid("other-1-lb1"), None);
        assert_eq!(owner_pid("dl-x-lb1"), None);
    }

    #[test]
    fn counters_are_stripped_from_chain_lines_only() {
        assert_eq!(
            strip_counters(":PREROUTING ACCEPT [12:345]"),
            ":PREROUTING ACCEPT"
        );
        assert_eq!(strip_counters("-A X -j DROP"), "-A X -j DROP");
    }

    #[test]
    fn nopreempt_config_starts_both_nodes_as_backup() {
        let opts = LabOptions {
            nopreempt: true,
            ..LabOptions::default()
        };
        let a = keepalived_config(Node::Lb1, &opts, Path::new("/n"), Path::new("/t"));
        let b = keepalived_config(Node::Lb2, &opts, Path::new("/n"), Path::new("/t"));
        assert!(
            a.contains("state BACKUP") && a.contains("nopreempt") && a.contains("priority 150")
        );
        assert!(b.contains("state BACKUP") && b.contains("priority 100"));
        let p = keepalived_config(
            Node::Lb1,
            &LabOptions::default(),
            Path::new("/n"),
            Path::new("/t"),
        );
        assert!(p.contains("state MASTER") && !p.contains("nopreempt"));
    }
}
