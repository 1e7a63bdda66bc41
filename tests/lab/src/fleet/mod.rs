//! A fleet: several lab pairs side by side, each node reachable over SSH from a controller
//! namespace on a management network, and an Ansible inventory describing it. This is where the
//! `drain_agent.drain_agent` collection (`ansible/collection/`, built and installed from its
//! artifact) is run for real: `ansible-playbook` from the distribution's ansible-core, in the
//! controller namespace, over real sshd in every LB namespace.
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
//!
//! This module brings the fleet up and down (namespaces, management network, node roots, sshd);
//! `inventory.rs` writes what Ansible reads about it, `ansible.rs` runs Ansible (and installs the
//! collection it runs), `snapshot.rs` records what the role or a playbook could change, and
//! `load.rs` runs the lab's load generator on every pair.

mod ansible;
mod inventory;
mod load;
mod snapshot;

pub use ansible::{parse_recap, InstalledCollection, PlaybookRun, Recap};
pub use load::LoadRun;
pub use snapshot::{namespace_processes, snapshot_diff};

use std::fs;
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{anyhow, Result};

use crate::ssh::{self, KeyPair, Sshd};
use crate::topology::{
    self, addr, remove_namespace, run, Lab, LabLock, LabOptions, Node, LAB_LOCK, LAB_LOCK_WAIT,
    PREFIX, STATE_ROOT,
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
