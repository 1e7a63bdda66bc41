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
//!
//! Here: [`Lab`], its options, nodes, addresses and lock, building it up and running commands in
//! it. Its other methods live by concern: `network` (namespaces, links, sysctls, the tracked
//! interface), `procs` (the processes it runs), `configs` (the files it generates), `probes`
//! (questions about its state and the waits on them), `cleanup` (tearing it down, leftovers).

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

mod cleanup;
mod configs;
mod network;
mod probes;
mod procs;

pub use cleanup::{cleanup_leftovers, cleanup_pid, list_namespaces, remove_namespace};
pub use configs::{haproxy_config, keepalived_config};
pub use probes::{http_get, wait_until};
pub use procs::{find_bin, require_root, run};
// `up` and `can_run_lab` check for the programs the way the processes are started.
use procs::which;

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
}
