//! Bad input to the real `drain-agent` binary gets one line on stderr, the documented exit code,
//! and leaves the host unchanged (the issue's acceptance: "Bad input … gets a one-line error and
//! leaves the host unchanged").
//!
//! A mini topology in scratch namespaces (see `common::MiniPair`): the node holds the VIP on
//! eth0 and has a tracked interface `trk0`; the peer ran `drain-agent accept` and has a TCP
//! listener on port 80, so the peer probe of a good configuration succeeds. Each case runs the
//! binary inside the node's namespace with `ip netns exec` and checks:
//! - the exit code;
//! - stderr is exactly one line, `drain-agent: error: <cause>`, naming the cause (the key,
//!   interface, binary, address or path), or empty on success;
//! - a snapshot of the node and of the peer (iptables, nftables, ipsets, rules, routes, links,
//!   addresses, sysctls) and the node's journals are identical before and after;
//! - `last-drain.json` (the record of the last drain) changes only to record this very failure.
//!
//! Root only (namespaces); skipped with a message otherwise, failed under CI=true.

mod common;

use std::fs;
use std::io::Write;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::{diff, journals, snapshot, MiniPair, NODE_IP, PEER_IP, VIP};
use drain_agent::ops::exit;
use drain_test_support::netns::{require_root, ScratchNetns};

const BIN: &str = env!("CARGO_BIN_EXE_drain-agent");

/// The mini topology with the peer accepting, a listener on the peer, and a scratch directory
/// (configs, both state directories, PATH directories without one of the tools).
struct Lab {
    // Fields drop in order: the listener before its namespace.
    _listener: TcpListener,
    pair: MiniPair,
    dir: tempfile::TempDir,
}

impl Lab {
    fn new(purpose: &str, peer_accepts: bool) -> Lab {
        let pair = MiniPair::new(purpose);
        let dir = tempfile::tempdir().expect("tempdir");
        // Readable by `nobody`, for the privilege cases: a config it cannot read would be a
        // config error (3), not the privilege error (4) under test.
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let lab_listener = pair
            .peer
            .enter(|| TcpListener::bind("0.0.0.0:80"))
            .expect("enter peer")
            .expect("listen on the peer's port 80");
        let lab = Lab {
            _listener: lab_listener,
            pair,
            dir,
        };
        fs::create_dir(lab.node_state()).unwrap();
        lab.write("peer.yaml", &lab.peer_config());
        if peer_accepts {
            lab.peer_cmd("accept");
        }
        lab
    }

    fn node_state(&self) -> PathBuf {
        self.dir.path().join("node-state")
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The good node configuration; every bad one is made from it by one replacement.
    fn good_config(&self) -> String {
        format!(
            "vips:\n  - address: {VIP}\n    ports: [80]\ningress_interface: eth0\npeer: {PEER_IP}\n\
             tracked_interface: trk0\ndrain:\n  deadline: 5m\npeer_probe:\n  timeout: 250ms\n\
             state_dir: {}\n",
            self.node_state().display()
        )
    }

    /// The same file on the peer (as in production, only `peer` and the state dir differ).
    fn peer_config(&self) -> String {
        self.good_config()
            .replace(&format!("peer: {PEER_IP}"), &format!("peer: {NODE_IP}"))
            .replace(
                &self.node_state().display().to_string(),
                &self.path("peer-state").display().to_string(),
            )
    }

    /// The good config with `from` replaced by `to`; `from` must be there, so that a typo in a
    /// case cannot quietly turn it into the good configuration.
    fn config_with(&self, from: &str, to: &str) -> String {
        let good = self.good_config();
        assert!(good.contains(from), "test bug: {from:?} not in\n{good}");
        good.replacen(from, to, 1)
    }

    fn write(&self, name: &str, text: &str) -> String {
        let p = self.path(name);
        fs::write(&p, text).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        p.display().to_string()
    }

    /// A directory for PATH holding every tool the agent runs except `missing`. The firewall
    /// adapter and `check` look the tools up in PATH (`Binaries::default()`), not at fixed paths.
    fn path_without(&self, missing: &str) -> String {
        let dir = self.path(&format!("bin-without-{missing}"));
        if !dir.exists() {
            fs::create_dir(&dir).unwrap();
            for tool in ["iptables-restore", "iptables-save", "ipset", "nft"] {
                if tool != missing {
                    // iptables-* are xtables-nft-multi, which dispatches on the link's name.
                    std::os::unix::fs::symlink(find_in_path(tool), dir.join(tool)).unwrap();
                }
            }
        }
        dir.display().to_string()
    }

    fn peer_cmd(&self, sub: &str) {
        let peer_cfg = self.path("peer.yaml").display().to_string();
        let out = run_in(&self.pair.peer, &Runner::Plain, &["-c", &peer_cfg, sub]);
        assert!(
            out.code == 0 && out.stderr.is_empty(),
            "peer {sub}: exit {} stderr {:?}",
            out.code,
            out.stderr
        );
    }

    /// Node and peer network state plus the node's journals.
    fn state(&self) -> String {
        format!(
            "### node\n{}### peer\n{}### node journals\n{}",
            snapshot(&self.pair.node),
            snapshot(&self.pair.peer),
            journals(&self.node_state())
        )
    }
}

fn find_in_path(tool: &str) -> PathBuf {
    let path = std::env::var_os("PATH").expect("PATH");
    std::env::split_paths(&path)
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{tool} not in PATH; run tests/deps.sh"))
}

/// How the binary is started inside the namespace.
#[derive(Clone, Debug)]
enum Runner {
    /// As root, with the test's environment.
    Plain,
    /// As `nobody:nogroup` without supplementary groups or capabilities.
    Nobody,
    /// With `PATH` set to this directory only.
    Path(String),
}

struct Outcome {
    code: i32,
    stdout: String,
    stderr: String,
}

fn run_in(ns: &ScratchNetns, runner: &Runner, args: &[&str]) -> Outcome {
    let path_env;
    let mut argv: Vec<&str> = match runner {
        Runner::Plain => vec![],
        Runner::Nobody => vec![
            "setpriv",
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
        ],
        Runner::Path(dir) => {
            path_env = format!("PATH={dir}");
            vec!["env", &path_env]
        }
    };
    argv.push(BIN);
    argv.extend_from_slice(args);
    // The binary's own settings must not leak in from the test's environment: RUST_LOG would add
    // log lines to stderr, DRAIN_AGENT_CONFIG is always overridden by -c anyway.
    let out = ns
        .command(&argv)
        .env_remove("RUST_LOG")
        .env_remove("DRAIN_AGENT_CONFIG")
        .output()
        .expect("run ip netns exec");
    Outcome {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// What a case does to the lab around the run (undone afterwards). The snapshot "before" is
/// taken after the setup, so each case checks only what the agent itself did.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Setup {
    None,
    /// Hold `<state_dir>/lock` as a running drain-agent would (flock, pid written).
    HoldLock,
    /// Run `release` on the peer: it no longer takes the VIP's traffic (no local route).
    PeerReleased,
    /// Down the tracked interface: the node is already out of service.
    TrackedDown,
    /// A foreign ipset with one of the agent's names exists.
    ForeignSet,
    /// The drain journal is garbage.
    CorruptJournal,
}

struct Case {
    name: &'static str,
    /// Config file name → contents (written before the run); None = no file written.
    config: Option<String>,
    /// Arguments after the binary; `{cfg}` is replaced by the config's path.
    args: &'static [&'static str],
    runner: Runner,
    setup: Setup,
    code: u8,
    /// Pieces stderr must contain (the cause: key, interface, binary, address, path).
    names: Vec<String>,
}

impl Case {
    fn new(name: &'static str, config: Option<String>, args: &'static [&'static str]) -> Case {
        Case {
            name,
            config,
            args,
            runner: Runner::Plain,
            setup: Setup::None,
            code: 0,
            names: Vec::new(),
        }
    }
    fn fails(mut self, code: u8, names: &[&str]) -> Case {
        self.code = code;
        self.names = names.iter().map(|s| s.to_string()).collect();
        self
    }
    fn runner(mut self, r: Runner) -> Case {
        self.runner = r;
        self
    }
    fn setup(mut self, s: Setup) -> Case {
        self.setup = s;
        self
    }
}

const DRAIN: &[&str] = &["-c", "{cfg}", "drain"];
const CHECK: &[&str] = &["-c", "{cfg}", "check"];
const UNDRAIN: &[&str] = &["-c", "{cfg}", "undrain"];
const STATUS: &[&str] = &["-c", "{cfg}", "status"];
const DRAIN_JSON: &[&str] = &["-c", "{cfg}", "--json", "drain"];
const MAINTENANCE_ON_NO_REASON: &[&str] = &["-c", "{cfg}", "maintenance", "on"];
const MAINTENANCE_ON_EMPTY_REASON: &[&str] = &["-c", "{cfg}", "maintenance", "on", "--reason", " "];
const MAINTENANCE_OFF: &[&str] = &["-c", "{cfg}", "maintenance", "off"];
const HANDOFF_WITHOUT_SECTION: &[&str] = &["-c", "{cfg}", "drain", "--handoff"];
const UNDRAIN_JSON: &[&str] = &["-c", "{cfg}", "--json", "undrain"];

fn cases(lab: &Lab) -> Vec<Case> {
    let good = || Some(lab.good_config());
    let with = |from: &str, to: &str| Some(lab.config_with(from, to));
    let state_file = lab.path("state-is-a-file").display().to_string();
    let node_state = lab.node_state().display().to_string();
    vec![
        // --- configuration (exit 3) ---
        Case::new(
            "malformed YAML",
            with("    ports: [80]", "    ports: [80]]"),
            DRAIN,
        )
        .fails(exit::CONFIG, &["{cfg}", "line"]),
        Case::new("empty file", Some(String::new()), DRAIN).fails(exit::CONFIG, &["{cfg}"]),
        Case::new(
            "unknown top-level key",
            with("ingress_interface:", "colour: blue\ningress_interface:"),
            DRAIN,
        )
        .fails(exit::CONFIG, &["{cfg}", "colour"]),
        Case::new(
            "unknown nested key",
            with("  deadline: 5m", "  deadlin: 5m"),
            DRAIN,
        )
        .fails(exit::CONFIG, &["{cfg}", "deadlin"]),
        Case::new(
            "missing required key",
            with("tracked_interface: trk0\n", ""),
            DRAIN,
        )
        .fails(exit::CONFIG, &["{cfg}", "tracked_interface"]),
        Case::new(
            "bad IPv4 address",
            with("address: 198.18.9.100", "address: 198.18.9.300"),
            DRAIN,
        )
        .fails(exit::CONFIG, &["vips[0].address", "198.18.9.300"]),
        Case::new(
            "IPv6 VIP",
            with("address: 198.18.9.100", "address: 2001:db8::100"),
            DRAIN,
        )
        .fails(exit::CONFIG, &["vips[0].address", "2001:db8::100", "IPv6"]),
        Case::new(
            "loopback peer",
            with("peer: 198.18.9.2", "peer: 127.0.0.1"),
            DRAIN,
        )
        .fails(exit::CONFIG, &["peer", "127.0.0.1"]),
        Case::new("port 0", with("ports: [80]", "ports: [0]"), DRAIN)
            .fails(exit::CONFIG, &["vips[0].ports", "port 0"]),
        Case::new("port 65536", with("ports: [80]", "ports: [65536]"), CHECK)
            .fails(exit::CONFIG, &["vips[0].ports", "65536"]),
        Case::new(
            "duplicate port",
            with("ports: [80]", "ports: [80, 80]"),
            DRAIN,
        )
        .fails(exit::CONFIG, &["vips[0].ports", "80"]),
        Case::new(
            "peer is the VIP",
            with("peer: 198.18.9.2", "peer: 198.18.9.100"),
            DRAIN,
        )
        .fails(exit::CONFIG, &["peer", "198.18.9.100"]),
        Case::new(
            "tracked interface is the ingress interface",
            with("tracked_interface: trk0", "tracked_interface: eth0"),
            DRAIN,
        )
        .fails(exit::CONFIG, &["tracked_interface", "eth0"]),
        Case::new(
            "interface name too long",
            with(
                "tracked_interface: trk0",
                "tracked_interface: trk0123456789abcdef",
            ),
            DRAIN,
        )
        .fails(exit::CONFIG, &["tracked_interface", "trk0123456789abcdef"]),
        Case::new(
            "bad duration",
            with("  deadline: 5m", "  deadline: 5 minutes"),
            DRAIN,
        )
        .fails(exit::CONFIG, &["drain.deadline", "5 minutes"]),
        Case::new(
            "probe port not a VIP port",
            with("  timeout: 250ms", "  timeout: 250ms\n  port: 443"),
            DRAIN,
        )
        .fails(exit::CONFIG, &["peer_probe.port", "443"]),
        Case::new(
            "mark outside the mask",
            with(
                "drain:",
                "firewall:\n  mark: 0x100\n  mark_mask: 0xff000000\ndrain:",
            ),
            DRAIN,
        )
        .fails(exit::CONFIG, &["firewall.mark"]),
        Case::new(
            "relative state_dir",
            with(&format!("state_dir: {node_state}"), "state_dir: var/lib/x"),
            DRAIN,
        )
        .fails(exit::CONFIG, &["state_dir", "var/lib/x"]),
        Case::new("config file missing", None, DRAIN).fails(exit::CONFIG, &["{cfg}"]),
        Case::new("config file missing (check)", None, CHECK).fails(exit::CONFIG, &["{cfg}"]),
        // --- command line (exit 2) ---
        Case::new(
            "unknown CLI flag",
            good(),
            &["-c", "{cfg}", "drain", "--bogus"],
        )
        .fails(exit::USAGE, &["--bogus"]),
        Case::new(
            "bad CLI duration",
            good(),
            &["-c", "{cfg}", "drain", "--deadline", "5x"],
        )
        .fails(exit::USAGE, &["--deadline", "5x"]),
        Case::new("unknown subcommand", good(), &["-c", "{cfg}", "frobnicate"])
            .fails(exit::USAGE, &["frobnicate"]),
        Case::new("no subcommand", good(), &["-c", "{cfg}"]).fails(exit::USAGE, &["subcommand"]),
        Case::new("stray argument", good(), &["-c", "{cfg}", "check", "now"])
            .fails(exit::USAGE, &["now"]),
        Case::new(
            "unknown shell",
            good(),
            &["-c", "{cfg}", "completions", "tcsh"],
        )
        .fails(exit::USAGE, &["tcsh"]),
        Case::new(
            "completions without a shell",
            good(),
            &["-c", "{cfg}", "completions"],
        )
        .fails(exit::USAGE, &["SHELL"]),
        Case::new("man without --out-dir", good(), &["-c", "{cfg}", "man"])
            .fails(exit::USAGE, &["--out-dir"]),
        Case::new(
            "man into a directory that cannot be created",
            good(),
            &["-c", "{cfg}", "man", "--out-dir", "/proc/drain-agent-man"],
        )
        .fails(exit::ENVIRONMENT, &["/proc/drain-agent-man"]),
        // --- environment (exit 4) ---
        Case::new(
            "missing tracked interface",
            with("tracked_interface: trk0", "tracked_interface: trk9"),
            DRAIN,
        )
        .fails(exit::ENVIRONMENT, &["trk9"]),
        Case::new(
            "missing tracked interface (check)",
            with("tracked_interface: trk0", "tracked_interface: trk9"),
            CHECK,
        )
        .fails(exit::ENVIRONMENT, &["trk9"]),
        Case::new(
            "missing tracked interface (undrain)",
            with("tracked_interface: trk0", "tracked_interface: trk9"),
            UNDRAIN,
        )
        .fails(exit::ENVIRONMENT, &["trk9"]),
        Case::new(
            "missing ingress interface",
            with("ingress_interface: eth0", "ingress_interface: eth9"),
            DRAIN,
        )
        .fails(exit::ENVIRONMENT, &["eth9"]),
        Case::new(
            "missing ingress interface (check)",
            with("ingress_interface: eth0", "ingress_interface: eth9"),
            CHECK,
        )
        .fails(exit::ENVIRONMENT, &["eth9"]),
        Case::new("missing iptables-restore", good(), DRAIN)
            .runner(Runner::Path(lab.path_without("iptables-restore")))
            .fails(exit::ENVIRONMENT, &["iptables-restore"]),
        Case::new("missing iptables-restore (check)", good(), CHECK)
            .runner(Runner::Path(lab.path_without("iptables-restore")))
            .fails(exit::ENVIRONMENT, &["iptables-restore"]),
        Case::new("missing iptables-save", good(), DRAIN)
            .runner(Runner::Path(lab.path_without("iptables-save")))
            .fails(exit::ENVIRONMENT, &["iptables-save"]),
        Case::new("missing ipset", good(), DRAIN)
            .runner(Runner::Path(lab.path_without("ipset")))
            .fails(exit::ENVIRONMENT, &["ipset"]),
        Case::new("missing nft", good(), DRAIN)
            .runner(Runner::Path(lab.path_without("nft")))
            .fails(exit::ENVIRONMENT, &["nft"]),
        Case::new("wrong privileges", good(), DRAIN)
            .runner(Runner::Nobody)
            .fails(exit::ENVIRONMENT, &["privileges", "CAP_NET_ADMIN"]),
        Case::new("wrong privileges (check)", good(), CHECK)
            .runner(Runner::Nobody)
            .fails(exit::ENVIRONMENT, &["privileges", "CAP_NET_ADMIN"]),
        Case::new("wrong privileges (undrain)", good(), UNDRAIN)
            .runner(Runner::Nobody)
            .fails(exit::ENVIRONMENT, &["privileges", "CAP_NET_ADMIN"]),
        Case::new(
            "state dir is a file",
            with(
                &format!("state_dir: {node_state}"),
                &format!("state_dir: {state_file}"),
            ),
            DRAIN,
        )
        .fails(exit::ENVIRONMENT, &[&state_file, "Not a directory"]),
        Case::new("corrupt journal", good(), DRAIN)
            .setup(Setup::CorruptJournal)
            .fails(exit::ENVIRONMENT, &["drain-journal.json", "unreadable"]),
        // --- maintenance and hand-off arguments ---
        Case::new(
            "maintenance on without a reason",
            good(),
            MAINTENANCE_ON_NO_REASON,
        )
        .fails(exit::USAGE, &["--reason"]),
        Case::new(
            "maintenance on with an empty reason",
            good(),
            MAINTENANCE_ON_EMPTY_REASON,
        )
        .fails(exit::CONFIG, &["--reason"]),
        Case::new(
            "maintenance off while a drain runs",
            good(),
            MAINTENANCE_OFF,
        )
        .setup(Setup::HoldLock)
        .fails(exit::BUSY, &["another drain-agent operation"]),
        Case::new(
            "hand-off without a handoff: section",
            good(),
            HANDOFF_WITHOUT_SECTION,
        )
        .fails(exit::CONFIG, &["handoff:"]),
        // --- with --json, the failure is also the last line on stdout ---
        Case::new("wrong privileges (--json)", good(), DRAIN_JSON)
            .runner(Runner::Nobody)
            .fails(exit::ENVIRONMENT, &["privileges", "CAP_NET_ADMIN"]),
        Case::new("lock held (--json undrain)", good(), UNDRAIN_JSON)
            .setup(Setup::HoldLock)
            .fails(exit::BUSY, &["lock"]),
        // --- peer not ready (exit 5): nothing changed ---
        Case::new(
            "peer unreachable",
            with("peer: 198.18.9.2", "peer: 198.18.9.3"),
            DRAIN,
        )
        .fails(exit::PEER_NOT_READY, &["198.18.9.3"]),
        Case::new(
            "peer unreachable (check)",
            with("peer: 198.18.9.2", "peer: 198.18.9.3"),
            CHECK,
        )
        .fails(exit::PEER_NOT_READY, &["198.18.9.3"]),
        Case::new(
            "peer without a listener on the probed port",
            with("ports: [80]", "ports: [81]"),
            DRAIN,
        )
        .fails(exit::PEER_NOT_READY, &["198.18.9.2", "RST"]),
        Case::new("peer did not run accept", good(), DRAIN)
            .setup(Setup::PeerReleased)
            .fails(exit::PEER_NOT_READY, &["198.18.9.2", "accept"]),
        // --- busy (6) and state (7) ---
        Case::new("second drain while the lock is held", good(), DRAIN)
            .setup(Setup::HoldLock)
            .fails(
                exit::BUSY,
                &[
                    "another drain-agent operation",
                    &std::process::id().to_string(),
                ],
            ),
        Case::new("undrain while the lock is held", good(), UNDRAIN)
            .setup(Setup::HoldLock)
            .fails(exit::BUSY, &["another drain-agent operation"]),
        Case::new(
            "node not MASTER",
            with("address: 198.18.9.100", "address: 198.18.9.101"),
            DRAIN,
        )
        .fails(exit::STATE, &["198.18.9.101", "MASTER"]),
        Case::new("already drained", good(), DRAIN)
            .setup(Setup::TrackedDown)
            .fails(exit::STATE, &["trk0", "undrain"]),
        Case::new("a set of ours already exists", good(), DRAIN)
            .setup(Setup::ForeignSet)
            .fails(exit::STATE, &["DRAIN-80"]),
        // --- success, nothing to do: exit 0, host unchanged ---
        Case::new("undrain with nothing to undo", good(), UNDRAIN),
        Case::new("check on a good setup", good(), CHECK),
        Case::new("status on a good setup", good(), STATUS),
        // Not covered: `notify` (keepalived notify-script arguments) is not implemented yet.
    ]
}

/// Prepares the lab for a case; returns the lock when the setup holds it (released on drop).
fn set_up(lab: &Lab, s: Setup) -> Option<nix::fcntl::Flock<fs::File>> {
    let node = &lab.pair.node;
    match s {
        Setup::None => None,
        Setup::HoldLock => {
            let f = fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(lab.node_state().join("lock"))
                .unwrap();
            let mut lock = nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock)
                .map_err(|(_, e)| e)
                .expect("take the lock");
            lock.set_len(0).unwrap();
            write!(lock, "{}", std::process::id()).unwrap();
            Some(lock)
        }
        Setup::PeerReleased => {
            lab.peer_cmd("release");
            None
        }
        Setup::TrackedDown => {
            common::ip(node, &["link", "set", "trk0", "down"]);
            common::wait_oper_state(node, "trk0", "DOWN");
            common::wait_oper_state(node, "trk0p", "LOWERLAYERDOWN");
            None
        }
        Setup::ForeignSet => {
            node.run_ok(&["ipset", "create", "DRAIN-80", "hash:ip"])
                .unwrap();
            None
        }
        Setup::CorruptJournal => {
            fs::write(lab.node_state().join("drain-journal.json"), "{not json").unwrap();
            None
        }
    }
}

fn tear_down(lab: &Lab, s: Setup, held: Option<nix::fcntl::Flock<fs::File>>) {
    drop(held);
    let node = &lab.pair.node;
    match s {
        Setup::None | Setup::HoldLock => {}
        Setup::PeerReleased => lab.peer_cmd("accept"),
        Setup::TrackedDown => {
            common::ip(node, &["link", "set", "trk0", "up"]);
            common::wait_oper_state(node, "trk0", "UP");
            common::wait_oper_state(node, "trk0p", "UP");
        }
        Setup::ForeignSet => {
            node.run_ok(&["ipset", "destroy", "DRAIN-80"]).unwrap();
        }
        Setup::CorruptJournal => fs::remove_file(lab.node_state().join("drain-journal.json"))
            .expect("remove the corrupt journal"),
    }
}

/// Runs one case; returns what went wrong (empty = passed).
fn run_case(lab: &Lab, case: &Case, index: usize) -> Vec<String> {
    let cfg = match &case.config {
        Some(text) => lab.write(&format!("case-{index}.yaml"), text),
        None => lab.path("does-not-exist.yaml").display().to_string(),
    };
    let args: Vec<String> = case.args.iter().map(|a| a.replace("{cfg}", &cfg)).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let last_run = lab.node_state().join("last-drain.json");

    let held = set_up(lab, case.setup);
    let before = lab.state();
    let last_before = fs::read_to_string(&last_run).ok();
    let out = run_in(&lab.pair.node, &case.runner, &args);
    let after = lab.state();
    let last_after = fs::read_to_string(&last_run).ok();
    tear_down(lab, case.setup, held);
    eprintln!(
        "{:<45} exit {:>2}  {}",
        case.name,
        out.code,
        out.stderr.trim_end()
    );

    let mut problems = Vec::new();
    if out.code != i32::from(case.code) {
        problems.push(format!(
            "exit code {} (expected {}); stdout {:?}",
            out.code, case.code, out.stdout
        ));
    }
    let lines: Vec<&str> = out.stderr.lines().collect();
    if case.code == 0 {
        if !lines.is_empty() {
            problems.push(format!("stderr not empty: {:?}", out.stderr));
        }
    } else if lines.len() != 1 || !lines[0].starts_with("drain-agent: error: ") {
        problems.push(format!(
            "stderr is not one `drain-agent: error:` line: {:?}",
            out.stderr
        ));
    }
    if case.code != 0 && args.contains(&"--json") {
        // Automation reads every outcome from stdout: the last line is the failure document.
        let last = out.stdout.lines().last().unwrap_or("");
        let doc: serde_json::Value = serde_json::from_str(last).unwrap_or_default();
        let error = lines
            .first()
            .and_then(|l| l.strip_prefix("drain-agent: error: "));
        if doc["result"] != "failed"
            || doc["exit_code"] != u64::from(case.code)
            || doc["error"].as_str() != error
        {
            problems.push(format!(
                "last stdout line is not the failure document: {:?}",
                out.stdout
            ));
        }
    }
    for name in &case.names {
        let name = name.replace("{cfg}", &cfg);
        if !out.stderr.contains(&name) {
            problems.push(format!("stderr does not name {name:?}: {:?}", out.stderr));
        }
    }
    if before != after {
        problems.push(format!(
            "the host changed:\n{}",
            diff(&before, &after).trim_end()
        ));
    }
    if last_after != last_before {
        // Only a drain that got the lock may record its own failure, and nothing else.
        let record: serde_json::Value = last_after
            .as_deref()
            .and_then(|t| serde_json::from_str(t).ok())
            .unwrap_or_default();
        let ok = args.contains(&"drain")
            && case.setup != Setup::HoldLock
            && record["result"] == "failed"
            && record["exit_code"] == case.code;
        if !ok {
            problems.push(format!("last-drain.json changed to {last_after:?}"));
        }
    }
    problems
}

#[test]
#[ignore = "needs root and network namespaces; `make test` runs it"]
fn bad_input_gets_one_line_and_leaves_the_host_unchanged() {
    if !require_root("bad_input_gets_one_line_and_leaves_the_host_unchanged") {
        return;
    }
    let lab = Lab::new("cli", true);
    fs::write(lab.path("state-is-a-file"), "").unwrap();
    let cases = cases(&lab);
    assert!(cases.len() >= 15);
    let mut failures = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let problems = run_case(&lab, case, i);
        if !problems.is_empty() {
            eprintln!("  FAILED: {}", problems.join("\n  "));
            failures.push(format!("{}:\n  {}", case.name, problems.join("\n  ")));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// The positive path of the same topology: `accept` on the peer makes exactly its documented
/// changes (a local route for the VIP, arp_ignore=1 and arp_announce=2 on eth0), `check` on the
/// node then passes with one `ok` line per check, and `release` restores the peer exactly.
#[test]
#[ignore = "needs root and network namespaces; `make test` runs it"]
fn check_passes_after_accept_and_release_restores_the_peer() {
    if !require_root("check_passes_after_accept_and_release_restores_the_peer") {
        return;
    }
    let lab = Lab::new("clip", false);
    let cfg = lab.write("node.yaml", &lab.good_config());
    let peer_before = snapshot(&lab.pair.peer);
    let node_before = snapshot(&lab.pair.node);

    // Before accept, the peer drops the VIP's packets: check says so, with exit 5.
    let out = run_in(&lab.pair.node, &Runner::Plain, &["-c", &cfg, "check"]);
    assert_eq!(out.code, i32::from(exit::PEER_NOT_READY), "{}", out.stderr);
    assert!(out.stdout.contains("FAIL peer"), "{}", out.stdout);

    lab.peer_cmd("accept");
    let accepted = snapshot(&lab.pair.peer);
    let changes = diff(&peer_before, &accepted);
    for expected in [
        &format!("+ local {VIP} dev lo "),
        "+ net/ipv4/conf/eth0/arp_ignore = 1",
        "+ net/ipv4/conf/eth0/arp_announce = 2",
    ] {
        assert!(
            changes.lines().any(|l| l.starts_with(expected)),
            "accept did not make {expected:?}; changes:\n{changes}"
        );
    }
    assert_eq!(
        changes.lines().filter(|l| l.starts_with('+')).count(),
        3,
        "accept changed more than documented:\n{changes}"
    );
    // accept is idempotent.
    lab.peer_cmd("accept");
    assert_eq!(
        snapshot(&lab.pair.peer),
        accepted,
        "second accept changed the peer"
    );

    let out = run_in(&lab.pair.node, &Runner::Plain, &["-c", &cfg, "check"]);
    assert_eq!(out.code, 0, "check failed: {} {}", out.stdout, out.stderr);
    assert!(out.stderr.is_empty(), "stderr: {:?}", out.stderr);
    for check in [
        "config",
        "privileges",
        "binary",
        "ingress interface",
        "tracked interface",
        "kernel",
        "sock_diag",
        "vip",
        "peer",
    ] {
        assert!(
            out.stdout
                .lines()
                .any(|l| l.starts_with(&format!("ok   {check}: "))),
            "no ok line for {check}:\n{}",
            out.stdout
        );
    }
    assert!(!out.stdout.contains("FAIL"), "{}", out.stdout);
    assert!(
        out.stdout.contains(&format!("{VIP} is held here (MASTER)")),
        "{}",
        out.stdout
    );
    assert_eq!(
        snapshot(&lab.pair.node),
        node_before,
        "check changed the node"
    );

    lab.peer_cmd("release");
    let released = snapshot(&lab.pair.peer);
    assert_eq!(
        released,
        peer_before,
        "release left changes:\n{}",
        diff(&peer_before, &released)
    );
    assert_eq!(
        journals(&lab.path("peer-state")),
        journals(Path::new("/nonexistent"))
    );
}

/// The snapshot that the cases compare must see every kind of change the agent can make (else
/// "unchanged" would prove nothing): each change below shows up, and undoing it restores the
/// snapshot exactly.
#[test]
#[ignore = "needs root and network namespaces; `make test` runs it"]
fn the_snapshot_sees_every_kind_of_change_the_agent_makes() {
    if !require_root("the_snapshot_sees_every_kind_of_change_the_agent_makes") {
        return;
    }
    let pair = MiniPair::new("clis");
    let node = &pair.node;
    let base = snapshot(node);
    let mut changes: Vec<(String, String)> = [
        (
            "ipset create DRAIN-80 hash:ip,port,ip",
            "ipset destroy DRAIN-80",
        ),
        (
            "iptables -t mangle -N DRAIN-PRE",
            "iptables -t mangle -X DRAIN-PRE; nft delete table ip mangle",
        ),
        (
            "iptables -t filter -N X",
            "iptables -t filter -X X; nft delete table ip filter",
        ),
        (
            "ip rule add fwmark 0x1d000000 lookup 100",
            "ip rule del fwmark 0x1d000000 lookup 100",
        ),
        (
            "ip route add local 198.18.9.200/32 dev lo",
            "ip route del local 198.18.9.200/32 dev lo",
        ),
        (
            "ip addr del 198.18.9.100/24 dev eth0",
            "ip addr add 198.18.9.100/24 dev eth0",
        ),
    ]
    .iter()
    .map(|(c, u)| (c.to_string(), u.to_string()))
    .collect();
    for key in [
        "net/ipv4/conf/eth0/arp_ignore",
        "net/ipv4/conf/all/arp_announce",
        "net/ipv4/conf/all/rp_filter",
    ] {
        let path = format!("/proc/sys/{key}");
        let old = common::sh(node, &format!("cat {path}")).trim().to_string();
        let new = if old == "1" { "2" } else { "1" };
        changes.push((
            format!("echo {new} > {path}"),
            format!("echo {old} > {path}"),
        ));
    }
    let check = |what: &str, change: &dyn Fn(), undo: &dyn Fn()| {
        change();
        let changed = snapshot(node);
        undo();
        assert_ne!(changed, base, "the snapshot does not see `{what}`");
        let restored = snapshot(node);
        assert_eq!(
            restored,
            base,
            "undoing `{what}` did not restore the snapshot:\n{}",
            diff(&base, &restored)
        );
    };
    for (change, undo) in &changes {
        check(change, &|| drop(common::sh(node, change)), &|| {
            drop(common::sh(node, undo))
        });
    }
    check(
        "ip link set trk0 down",
        &|| {
            common::ip(node, &["link", "set", "trk0", "down"]);
            common::wait_oper_state(node, "trk0p", "LOWERLAYERDOWN");
        },
        &|| {
            common::ip(node, &["link", "set", "trk0", "up"]);
            common::wait_oper_state(node, "trk0", "UP");
            common::wait_oper_state(node, "trk0p", "UP");
        },
    );
}

// Pure helpers of `tests/common`, tested here (the benchmark includes them too, without a harness).
#[test]
fn nft_counters_are_stripped_but_nothing_else() {
    let text = "table ip mangle {\n\tchain PREROUTING {\n\t\tip daddr 198.18.9.100 counter packets 12 bytes 720 jump DRAIN-PRE\n\t}\n}\n";
    assert_eq!(
        common::strip_nft_counters(text),
        "table ip mangle {\nchain PREROUTING {\nip daddr 198.18.9.100 counter jump DRAIN-PRE\n}\n}\n"
    );
}

#[test]
fn a_missing_journal_reads_like_an_empty_one_and_garbage_verbatim() {
    let dir = tempfile::tempdir().unwrap();
    let empty = journals(dir.path());
    std::fs::write(dir.path().join("drain-journal.json"), "[]").unwrap();
    assert_eq!(journals(dir.path()), empty);
    std::fs::write(dir.path().join("drain-journal.json"), "{oops").unwrap();
    assert!(journals(dir.path()).contains("{oops"));
}

#[test]
fn diff_shows_removed_and_added_lines() {
    assert_eq!(diff("a\nb\n", "a\nc\n"), "- b\n+ c\n");
}
