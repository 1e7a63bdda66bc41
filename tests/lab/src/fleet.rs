//! A fleet: several lab pairs side by side, each node reachable over SSH from a controller
//! namespace on a management network, and an Ansible inventory describing it. This is where the
//! `ansible/` role and playbooks are run for real: `ansible-playbook` from the distribution's
//! ansible-core, in the controller namespace, over real sshd in every LB namespace.
//!
//! ```text
//!   controller (ctl) 198.19.0.2 ── mgmt bridge ──┬── p1-lb1 mgmt0 198.19.0.11   (lab 1: its own
//!                                                ├── p1-lb2 mgmt0 198.19.0.12    client, bridge,
//!                                                ├── p2-lb1 mgmt0 198.19.0.21    backend; the
//!                                                └── p2-lb2 mgmt0 198.19.0.22    same 198.18.0.x)
//! ```
//!
//! Every pair is a [`Lab`] of its own (own bridge, so both use the lab's addresses and VIP); the
//! management network only carries SSH. The namespaces share one filesystem, so each node gets a
//! root directory of its own (`<fleet dir>/<node>/`) and the inventory points every path of the
//! drain_agent role there. Names are `dl-<pid>-f<n>-ctl|mgmt`, so `drain-lab cleanup` recognises a
//! killed run's leftovers as it does a lab's.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::load::{LoadReport, LoadSpec};
use crate::ssh::{self, KeyPair, Sshd};
use crate::topology::{
    self, addr, find_bin, remove_namespace, run, Lab, LabLock, LabOptions, Node, INGRESS_IF,
    LAB_LOCK, LAB_LOCK_WAIT, PREFIX, STATE_ROOT, TRACKED_IF,
};

/// The controller's address on the management network.
pub const CONTROLLER: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 2);
/// Prefix length of the management network.
const MGMT_PREFIX_LEN: u8 = 24;
/// Interface name of the management link inside an LB namespace.
pub const MGMT_IF: &str = "mgmt0";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// One LB node of the fleet.
#[derive(Clone, Debug)]
pub struct FleetNode {
    /// Inventory name: `p<pair>-lb<n>`.
    pub name: String,
    /// Index of its pair in [`Fleet::labs`].
    pub pair: usize,
    /// Which node of its pair.
    pub node: Node,
    /// Its address on the management network (where its sshd listens).
    pub mgmt: Ipv4Addr,
    /// Its own directory: the drain_agent role's paths, HAProxy's pid file, sshd's files.
    pub root: PathBuf,
    /// Its sshd.
    pub sshd: Sshd,
}

impl FleetNode {
    /// The inventory group of its pair.
    pub fn pair_group(&self) -> String {
        format!("pair{}", self.pair + 1)
    }
    /// Where the role installs the binary on this node.
    pub fn binary(&self) -> PathBuf {
        self.root.join("sbin/drain-agent")
    }
    /// The agent's configuration on this node.
    pub fn config(&self) -> PathBuf {
        self.root.join("etc/drain-agent.yaml")
    }
    /// The daemon's control socket on this node.
    pub fn socket(&self) -> PathBuf {
        self.root.join("run/control.sock")
    }
    /// The agent's state directory on this node.
    pub fn state_dir(&self) -> PathBuf {
        self.root.join("state")
    }
    /// The rendered systemd unit on this node.
    pub fn unit(&self) -> PathBuf {
        self.root.join("systemd/drain-agent.service")
    }
    /// HAProxy's pid file (HAProxy runs daemonized, as maintenance restarts it by pid file).
    pub fn haproxy_pid_file(&self) -> PathBuf {
        self.root.join("haproxy.pid")
    }
    /// The directory Ansible uses for its temporary files on this node.
    fn remote_tmp(&self) -> PathBuf {
        self.root.join("ansible-tmp")
    }
}

/// Counts of one host's PLAY RECAP line.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recap {
    /// ok=
    pub ok: u32,
    /// changed=
    pub changed: u32,
    /// unreachable=
    pub unreachable: u32,
    /// failed=
    pub failed: u32,
    /// skipped=
    pub skipped: u32,
    /// rescued=
    pub rescued: u32,
    /// ignored=
    pub ignored: u32,
}

/// One `ansible-playbook` run.
#[derive(Clone, Debug)]
pub struct PlaybookRun {
    /// The command line, as a shell would read it.
    pub command: String,
    /// Exit code.
    pub exit_code: i32,
    /// Everything it printed on stdout.
    pub stdout: String,
    /// Its stderr.
    pub stderr: String,
    /// Wall time.
    pub elapsed: Duration,
    /// The PLAY RECAP lines, verbatim.
    pub recap_lines: Vec<String>,
    /// The same, parsed, by host.
    pub recap: BTreeMap<String, Recap>,
}

impl PlaybookRun {
    /// The output's tail, for an assertion message.
    pub fn tail(&self, lines: usize) -> String {
        let all: Vec<&str> = self.stdout.lines().collect();
        let from = all.len().saturating_sub(lines);
        format!("{}\n--- stderr:\n{}", all[from..].join("\n"), self.stderr)
    }
}

/// Parses the PLAY RECAP section of ansible-playbook's default output.
pub fn parse_recap(stdout: &str) -> (Vec<String>, BTreeMap<String, Recap>) {
    let mut lines = Vec::new();
    let mut recap = BTreeMap::new();
    let mut in_recap = false;
    for line in stdout.lines() {
        if line.starts_with("PLAY RECAP") {
            in_recap = true;
            continue;
        }
        if !in_recap {
            continue;
        }
        let Some((host, counts)) = line.split_once(" : ") else {
            if line.trim().is_empty() {
                continue;
            }
            in_recap = false;
            continue;
        };
        let mut r = Recap::default();
        for kv in counts.split_whitespace() {
            let Some((k, v)) = kv.split_once('=') else {
                continue;
            };
            let v: u32 = v.parse().unwrap_or(0);
            match k {
                "ok" => r.ok = v,
                "changed" => r.changed = v,
                "unreachable" => r.unreachable = v,
                "failed" => r.failed = v,
                "skipped" => r.skipped = v,
                "rescued" => r.rescued = v,
                "ignored" => r.ignored = v,
                _ => {}
            }
        }
        lines.push(line.trim_end().to_string());
        recap.insert(host.trim().to_string(), r);
    }
    (lines, recap)
}

/// A running load generator on one pair.
pub struct LoadRun {
    pair: usize,
    child: Child,
    out: PathBuf,
}

/// Several lab pairs, their sshd, a controller namespace and an Ansible inventory. Dropping it
/// tears everything down (the labs, then the controller and management namespaces, then the
/// directory), also when a test panics.
pub struct Fleet {
    /// `<pid>-f<n>`.
    pub id: String,
    /// The fleet's directory: controller key, known_hosts, inventory, ansible.cfg, node roots.
    pub dir: PathBuf,
    /// One lab per pair.
    pub labs: Vec<Lab>,
    /// Every LB node, pair by pair, lb1 first.
    pub nodes: Vec<FleetNode>,
    /// The controller's key pair.
    pub key: KeyPair,
    torn_down: bool,
    /// The lab lock, for all the fleet's labs; declared last, so released after teardown.
    _lock: LabLock,
}

impl Fleet {
    /// Brings up `pairs` labs (keepalived nopreempt, as keepalived/ ships it), the management
    /// network with the controller, an sshd in every LB namespace, and writes the inventory.
    /// HAProxy on every node is restarted daemonized with a pid file (what the maintenance
    /// example restarts).
    pub fn up(pairs: usize) -> Result<Fleet> {
        topology::require_root()?;
        let id = format!(
            "{}-f{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        let lock = LabLock::acquire(Path::new(LAB_LOCK), LAB_LOCK_WAIT)?;
        let dir = Path::new(STATE_ROOT).join(format!("{PREFIX}{id}"));
        fs::create_dir_all(STATE_ROOT)?;
        fs::set_permissions(STATE_ROOT, fs::Permissions::from_mode(0o755))?;
        fs::create_dir_all(&dir)?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))?;
        let key = ssh::keygen(&dir.join("controller_key"), "drain-lab controller")?;
        let mut fleet = Fleet {
            id,
            dir,
            labs: Vec::new(),
            nodes: Vec::new(),
            key,
            torn_down: false,
            _lock: lock,
        };
        if let Err(e) = fleet.build(pairs) {
            let logs: String = fleet.labs.iter().map(Lab::log_tail).collect();
            fleet.teardown();
            return Err(e.context(logs));
        }
        Ok(fleet)
    }

    /// The controller's namespace (where ansible-playbook runs).
    pub fn ctl_ns(&self) -> String {
        format!("{PREFIX}{}-ctl", self.id)
    }

    fn mgmt_ns(&self) -> String {
        format!("{PREFIX}{}-mgmt", self.id)
    }

    fn build(&mut self, pairs: usize) -> Result<()> {
        let opts = LabOptions {
            nopreempt: true,
            ..LabOptions::default()
        };
        for _ in 0..pairs {
            // The fleet holds the lab lock for all its labs.
            self.labs.push(Lab::up_locked(&opts, None)?);
        }
        let (mgmt, ctl) = (self.mgmt_ns(), self.ctl_ns());
        for ns in [&mgmt, &ctl] {
            run(&["ip", "netns", "add", ns])?;
            run(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
        }
        run(&["ip", "-n", &mgmt, "link", "add", "br0", "type", "bridge"])?;
        run(&[
            "ip",
            "-n",
            &mgmt,
            "link",
            "set",
            "br0",
            "type",
            "bridge",
            "stp_state",
            "0",
            "forward_delay",
            "0",
        ])?;
        run(&["ip", "-n", &mgmt, "link", "set", "br0", "up"])?;
        attach(&mgmt, "ctl", &ctl, "eth0", CONTROLLER)?;
        for pair in 0..pairs {
            for node in Node::ALL {
                let name = format!("p{}-{}", pair + 1, node.name());
                let mgmt_addr =
                    Ipv4Addr::new(198, 19, 0, (10 * (pair + 1) + node_index(node)) as u8);
                let ns = self.labs[pair].node_ns(node);
                attach(
                    &mgmt,
                    &format!("p{}{}", pair + 1, node.name()),
                    &ns,
                    MGMT_IF,
                    mgmt_addr,
                )?;
                // The node's own "filesystem": the system directories the role expects to exist
                // (as /usr/local/sbin, /etc/systemd/system, /run and /var/log do on a host), and
                // Ansible's temporary directory.
                let root = self.dir.join(&name);
                for (sub, mode) in [
                    ("", 0o755),
                    ("sbin", 0o755),
                    ("systemd", 0o755),
                    ("run", 0o755),
                    ("log", 0o755),
                    ("ansible-tmp", 0o700),
                ] {
                    let d = root.join(sub);
                    fs::create_dir_all(&d)?;
                    fs::set_permissions(&d, fs::Permissions::from_mode(mode))?;
                }
                let key = self.key.clone();
                let sshd = ssh::start(
                    &mut self.labs[pair],
                    &format!("sshd-{}", node.name()),
                    &ns,
                    &root.join("ssh"),
                    mgmt_addr,
                    &key,
                )?;
                let fnode = FleetNode {
                    name,
                    pair,
                    node,
                    mgmt: mgmt_addr,
                    root,
                    sshd,
                };
                self.restart_haproxy_daemonized(&fnode)?;
                self.nodes.push(fnode);
            }
        }
        let known: String = self
            .nodes
            .iter()
            .map(|n| n.sshd.known_hosts_line() + "\n")
            .collect();
        fs::write(self.dir.join("known_hosts"), known)?;
        fs::write(self.dir.join("ansible.cfg"), self.ansible_cfg())?;
        fs::write(self.inventory_path(), self.inventory())?;
        for lab in &self.labs {
            topology::wait_until("the VIP answering again", Duration::from_secs(10), || {
                drain_test_support::netns::in_netns(&lab.client_ns(), || {
                    topology::http_get(
                        std::net::SocketAddrV4::new(addr::VIP, addr::HTTP_PORT),
                        "/health",
                    )
                    .is_ok()
                })
                .unwrap_or(false)
            })?;
        }
        Ok(())
    }

    /// Replaces the lab's foreground HAProxy of a node by one daemonized with a pid file, so a
    /// maintenance task can restart it as it would without systemd (`haproxy -D -p PID -st OLD`).
    fn restart_haproxy_daemonized(&mut self, n: &FleetNode) -> Result<()> {
        let lab = &mut self.labs[n.pair];
        lab.stop(&format!("haproxy-{}", n.node))?;
        let cfg = lab.haproxy_config_path(n.node);
        let pid = n.haproxy_pid_file();
        lab.exec(
            &lab.node_ns(n.node),
            &[
                "haproxy",
                "-D",
                "-p",
                pid.to_str().unwrap(),
                "-f",
                cfg.to_str().unwrap(),
            ],
        )?;
        Ok(())
    }

    /// The lab of a node.
    pub fn lab(&self, n: &FleetNode) -> &Lab {
        &self.labs[n.pair]
    }

    /// A node by inventory name.
    pub fn node(&self, name: &str) -> &FleetNode {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no fleet node {name}"))
    }

    /// The inventory file.
    pub fn inventory_path(&self) -> PathBuf {
        self.dir.join("inventory.yml")
    }

    fn ansible_cfg(&self) -> String {
        let d = self.dir.display();
        format!(
            "# ansible.cfg of drain-lab fleet {id}: real SSH to every node, host keys checked.
[defaults]
inventory = {d}/inventory.yml
forks = 4
timeout = 20
host_key_checking = True
retry_files_enabled = False
interpreter_python = /usr/bin/python3
local_tmp = {d}/ansible-home/tmp
nocolor = True
stdout_callback = default
callbacks_enabled =

[ssh_connection]
pipelining = True
ssh_args = -F none -o BatchMode=yes -o IdentitiesOnly=yes -o IdentityFile={d}/controller_key -o UserKnownHostsFile={d}/known_hosts -o StrictHostKeyChecking=yes -o ControlMaster=auto -o ControlPersist=120s
control_path_dir = {d}/cp
",
            id = self.id
        )
    }

    /// The Ansible inventory of the fleet: group `lb_pairs` with one child group per pair,
    /// every path of the drain_agent role inside the node's root.
    pub fn inventory(&self) -> String {
        let bin = find_bin("drain-agent")
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| "target/release/drain-agent".into());
        let mut s = format!(
            "# Ansible inventory of drain-lab fleet {id} (written by tests/lab/src/fleet.rs).
all:
  vars:
    ansible_user: root
    ansible_python_interpreter: /usr/bin/python3
  children:
    lb_pairs:
      vars:
        drain_agent_binary_src: {bin}
        drain_agent_vips:
          - address: {vip}
            ports: [{http}, {echo}]
            prefix_length: {plen}
        drain_agent_ingress_interface: {ingress}
        drain_agent_tracked_interface: {tracked}
        drain_agent_service_manager: start-stop-daemon
        drain_agent_vrrp_virtual_router_id: 51
        drain_agent_vrrp_nopreempt: true
        drain_agent_drain_deadline: 30s
        drain_agent_idle_threshold: 2s
        drain_agent_extra_config:
          drain:
            poll_interval: 100ms
            rollback_grace: 5s
          peer_probe:
            interval: 200ms
            timeout: 200ms
            failures: 2
        haproxy_restart_method: pidfile
      children:
",
            id = self.id,
            vip = addr::VIP,
            http = addr::HTTP_PORT,
            echo = addr::ECHO_PORT,
            plen = addr::PREFIX_LEN,
            ingress = INGRESS_IF,
            tracked = TRACKED_IF,
        );
        for (pair, lab) in self.labs.iter().enumerate() {
            let _ = writeln!(s, "        pair{}:", pair + 1);
            let _ = writeln!(
                s,
                "          vars:\n            drain_agent_pair: pair{}",
                pair + 1
            );
            let _ = writeln!(s, "          hosts:");
            for n in self.nodes.iter().filter(|n| n.pair == pair) {
                let r = n.root.display();
                let _ = write!(
                    s,
                    "            {name}:
              ansible_host: {mgmt}
              ansible_remote_tmp: {tmp}
              drain_agent_peer: {peer}
              drain_agent_vrrp_priority: {prio}
              drain_agent_vrrp_router_id: {node}
              drain_agent_binary_path: {r}/sbin/drain-agent
              drain_agent_config_path: {r}/etc/drain-agent.yaml
              drain_agent_state_dir: {r}/state
              drain_agent_track_file: {track}
              drain_agent_socket_path: {r}/run/control.sock
              drain_agent_unit_path: {r}/systemd/drain-agent.service
              drain_agent_log_path: {r}/log/drain-agent.log
              drain_agent_pid_file: {r}/run/drain-agent.pid
              drain_agent_keepalived_conf_path: {kconf}
              drain_agent_keepalived_pid_file: {kpid}
              drain_agent_keepalived_fifo: {r}/run/keepalived-vrrp-notify.fifo
              haproxy_config: {hconf}
              haproxy_pid_file: {hpid}
              haproxy_stats_socket: {hsock}
",
                    name = n.name,
                    mgmt = n.mgmt,
                    tmp = n.remote_tmp().display(),
                    peer = n.node.peer().addr(),
                    prio = if n.node == Node::Lb1 { 150 } else { 100 },
                    node = n.node,
                    track = lab.track_file(n.node).display(),
                    kconf = lab.keepalived_config_path(n.node).display(),
                    kpid = lab.keepalived_pid_file(n.node).display(),
                    hconf = lab.haproxy_config_path(n.node).display(),
                    hpid = n.haproxy_pid_file().display(),
                    hsock = lab.dir.join(format!("haproxy-{}.sock", n.node)).display(),
                );
            }
        }
        s
    }

    /// Runs `ansible-playbook PLAYBOOK ARGS...` in the controller namespace and returns what it
    /// printed, its exit code and its PLAY RECAP. Fails only if it could not be started.
    pub fn ansible_playbook(&self, playbook: &Path, args: &[&str]) -> Result<PlaybookRun> {
        let mut argv = vec![playbook.to_str().context("playbook path is not UTF-8")?];
        argv.extend_from_slice(args);
        self.ansible_tool("ansible-playbook", &argv)
    }

    /// Runs the ad-hoc `ansible ARGS...` (e.g. one module on one host) in the controller namespace.
    pub fn ansible_adhoc(&self, args: &[&str]) -> Result<PlaybookRun> {
        self.ansible_tool("ansible", args)
    }

    fn ansible_tool(&self, tool: &str, args: &[&str]) -> Result<PlaybookRun> {
        let home = self.dir.join("ansible-home");
        fs::create_dir_all(home.join("tmp"))?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ctl_ns(), tool])
            .args(args)
            .env("ANSIBLE_CONFIG", self.dir.join("ansible.cfg"))
            .env("ANSIBLE_HOME", &home)
            .env("ANSIBLE_NOCOLOR", "1")
            .env("ANSIBLE_FORCE_COLOR", "0")
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::null());
        let command = format!(
            "ANSIBLE_CONFIG={cfg} ip netns exec {ns} {tool} {args}",
            cfg = self.dir.join("ansible.cfg").display(),
            ns = self.ctl_ns(),
            args = args.join(" ")
        );
        let t0 = Instant::now();
        let out = cmd.output().with_context(|| format!("starting {tool}"))?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let (recap_lines, recap) = parse_recap(&stdout);
        Ok(PlaybookRun {
            command,
            exit_code: out.status.code().unwrap_or(-1),
            stdout,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            elapsed: t0.elapsed(),
            recap_lines,
            recap,
        })
    }

    /// `drain-agent status --json` of a node, with the binary, configuration and socket the role
    /// installed there.
    pub fn agent_status(&self, n: &FleetNode) -> Result<serde_json::Value> {
        let lab = self.lab(n);
        let out = lab.exec(
            &lab.node_ns(n.node),
            &[
                n.binary().to_str().unwrap(),
                "-c",
                n.config().to_str().unwrap(),
                "--socket",
                n.socket().to_str().unwrap(),
                "--json",
                "status",
            ],
        )?;
        let text = String::from_utf8_lossy(&out.stdout);
        let last = text
            .lines()
            .last()
            .ok_or_else(|| anyhow!("status printed nothing"))?;
        Ok(serde_json::from_str(last)?)
    }

    /// Which node of a pair holds its VIP.
    pub fn vip_owner(&self, pair: usize) -> Result<Option<Node>> {
        self.labs[pair].vip_owner()
    }

    /// Everything the role or a playbook could change on every node: the lab's host snapshot
    /// (firewall, sets, rules, routes, links, sysctls), the files under the node's root (path,
    /// mode, content hash; Ansible's temporary files and sshd's aside), keepalived's configuration
    /// and track file, and the processes in the node's namespace (sshd sessions aside).
    pub fn snapshot(&self) -> Result<BTreeMap<String, String>> {
        let mut all = BTreeMap::new();
        for n in &self.nodes {
            let lab = self.lab(n);
            let mut s = lab.host_snapshot(n.node)?;
            s.push_str("## files\n");
            let mut files = Vec::new();
            list_files(&n.root, &mut files)?;
            for extra in [lab.keepalived_config_path(n.node), lab.track_file(n.node)] {
                if extra.exists() {
                    files.push(extra);
                }
            }
            files.sort();
            for f in files {
                // sshd's files, Ansible's temporary files and the daemon's log are not state.
                if f.starts_with(n.root.join("ssh"))
                    || f.starts_with(n.remote_tmp())
                    || f.starts_with(n.root.join("log"))
                {
                    continue;
                }
                let meta = fs::symlink_metadata(&f)?;
                let hash = if meta.is_file() {
                    let out = run(&["sha256sum", f.to_str().unwrap()])?;
                    String::from_utf8_lossy(&out.stdout)
                        .split_whitespace()
                        .next()
                        .unwrap_or("")
                        .to_string()
                } else {
                    String::new()
                };
                let _ = writeln!(
                    s,
                    "{} {:o} {}",
                    f.display(),
                    meta.permissions().mode() & 0o7777,
                    hash
                );
            }
            s.push_str("## processes\n");
            let mut procs = namespace_processes(&lab.node_ns(n.node));
            procs.retain(|p| !p.starts_with("sshd"));
            procs.sort();
            for p in procs {
                s.push_str(&p);
                s.push('\n');
            }
            all.insert(n.name.clone(), s);
        }
        Ok(all)
    }

    /// Starts the load generator on every pair (in each lab's client namespace), to run until
    /// [`Fleet::stop_load`].
    pub fn start_load(&self, spec: &LoadSpec) -> Result<Vec<LoadRun>> {
        let bin = find_bin("drain-lab")?;
        let mut runs = Vec::new();
        for (pair, lab) in self.labs.iter().enumerate() {
            let spec_path = self.dir.join(format!("load-pair{}.json", pair + 1));
            let out = self.dir.join(format!("report-pair{}.json", pair + 1));
            fs::write(&spec_path, serde_json::to_vec_pretty(spec)?)?;
            let log = fs::File::create(self.dir.join(format!("load-pair{}.log", pair + 1)))?;
            let child = Command::new("ip")
                .args(["netns", "exec", &lab.client_ns()])
                .arg(&bin)
                .args(["load", "--stop-on-sigterm", "--spec"])
                .arg(&spec_path)
                .arg("--out")
                .arg(&out)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .context("starting the load generator")?;
            runs.push(LoadRun { pair, child, out });
        }
        Ok(runs)
    }

    /// Stops the generators (SIGTERM: no new flow, the flows in progress finish) and returns each
    /// pair's report.
    pub fn stop_load(&self, runs: Vec<LoadRun>) -> Result<Vec<LoadReport>> {
        for r in &runs {
            // `ip netns exec` execs the generator: the child is the generator.
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(r.child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            )?;
        }
        let mut reports = Vec::new();
        for mut r in runs {
            let status = r.child.wait()?;
            if !matches!(status.code(), Some(0) | Some(1)) {
                let log = fs::read_to_string(self.dir.join(format!("load-pair{}.log", r.pair + 1)))
                    .unwrap_or_default();
                bail!(
                    "load generator of pair {} exited with {status}: {log}",
                    r.pair + 1
                );
            }
            reports
                .push(serde_json::from_slice(&fs::read(&r.out)?).context("parsing a load report")?);
        }
        Ok(reports)
    }

    /// Stops everything and removes every namespace and the fleet's directory. Idempotent.
    pub fn teardown(&mut self) {
        if self.torn_down {
            return;
        }
        self.torn_down = true;
        // The labs first: their namespaces hold the daemons the role started.
        self.labs.clear();
        remove_namespace(&self.ctl_ns());
        remove_namespace(&self.mgmt_ns());
        let _ = fs::remove_dir_all(&self.dir);
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.teardown();
    }
}

fn node_index(node: Node) -> usize {
    match node {
        Node::Lb1 => 1,
        Node::Lb2 => 2,
    }
}

/// Connects namespace `ns` to the bridge in `bridge_ns` with a veth pair (`port` on the bridge
/// side, `ifname` inside `ns`) and gives it `ip`.
fn attach(bridge_ns: &str, port: &str, ns: &str, ifname: &str, ip: Ipv4Addr) -> Result<()> {
    run(&[
        "ip", "-n", bridge_ns, "link", "add", port, "type", "veth", "peer", "name", ifname,
        "netns", ns,
    ])?;
    run(&["ip", "-n", bridge_ns, "link", "set", port, "master", "br0"])?;
    run(&["ip", "-n", bridge_ns, "link", "set", port, "up"])?;
    // IPv4 only: IPv6 would add link-local addresses and routes a moment after the link is up,
    // and a snapshot taken in between would differ from the next one.
    run(&[
        "ip",
        "netns",
        "exec",
        ns,
        "sysctl",
        "-q",
        "-w",
        &format!("net.ipv6.conf.{ifname}.disable_ipv6=1"),
    ])?;
    let cidr = format!("{ip}/{MGMT_PREFIX_LEN}");
    run(&["ip", "-n", ns, "addr", "add", &cidr, "dev", ifname])?;
    run(&["ip", "-n", ns, "link", "set", ifname, "up"])?;
    Ok(())
}

/// Every file and directory under `dir`, recursively (symlinks not followed).
fn list_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(());
    };
    for e in entries.flatten() {
        let p = e.path();
        out.push(p.clone());
        if e.file_type()?.is_dir() {
            list_files(&p, out)?;
        }
    }
    Ok(())
}

/// The lines only one of two snapshots has, `-` before and `+` after, for assertion messages.
pub fn snapshot_diff(before: &str, after: &str) -> String {
    let (b, a): (Vec<&str>, Vec<&str>) = (before.lines().collect(), after.lines().collect());
    let mut out = String::new();
    for l in b.iter().filter(|l| !a.contains(l)) {
        let _ = writeln!(out, "- {l}");
    }
    for l in a.iter().filter(|l| !b.contains(l)) {
        let _ = writeln!(out, "+ {l}");
    }
    out
}

/// Command lines of the processes in a network namespace.
pub fn namespace_processes(ns: &str) -> Vec<String> {
    let pids = Command::new("ip")
        .args(["netns", "pids", ns])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
        .unwrap_or_default();
    pids.split_whitespace()
        .filter_map(|p| fs::read(format!("/proc/{p}/cmdline")).ok())
        .map(|c| {
            String::from_utf8_lossy(&c)
                .split('\0')
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .filter(|c| !c.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_recap_is_parsed_per_host() {
        let out = "TASK [x] ***\nok: [a]\n\nPLAY RECAP *********\n\
                   p1-lb1                     : ok=12   changed=3    unreachable=0    failed=0    skipped=4    rescued=0    ignored=0   \n\
                   p2-lb1                     : ok=7    changed=0    unreachable=0    failed=1    skipped=1    rescued=1    ignored=0   \n\n";
        let (lines, recap) = parse_recap(out);
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("p1-lb1"));
        assert_eq!(
            recap["p1-lb1"],
            Recap {
                ok: 12,
                changed: 3,
                skipped: 4,
                ..Recap::default()
            }
        );
        assert_eq!(recap["p2-lb1"].failed, 1);
        assert_eq!(recap["p2-lb1"].rescued, 1);
    }
}
