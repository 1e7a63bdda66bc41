//! Benchmark: how long installing and removing the divert takes (issue target: install ≤ 20 ms,
//! in one transaction).
//!
//! Run as root: `cargo bench --bench divert`. Everything happens in the mini topology of
//! `tests/common` (a node holding the VIPs and a reachable peer, in throw-away namespaces). For
//! 1 VIP × 2 ports and 4 VIPs × 4 ports, runs [`firewall::install`] then [`firewall::remove`]
//! N times against the real iptables-nft, ipset and nft, and prints median / p90 / max of:
//! the whole install (conflict checks, set creation, the rules transaction, the read-back), the
//! `iptables-restore --noflush` transaction alone, the other install steps, and the whole
//! remove with its steps. The node starts without a mangle table, as on a node that never ran a drain, so each
//! install creates the table and each remove drops it again. Asserts nothing about speed; it
//! does check that the namespace is back to its initial state afterwards.

#[path = "../common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use drain_agent::config::Config;
use drain_agent::ops::divert;
use drain_agent::plan::DivertPlan;
use drain_agent::sys::firewall::{Firewall, FirewallError, SystemFirewall};

const N: usize = 50;

/// The firewall adapter with a stopwatch on every call, so one install can be split into its
/// steps without changing the code under measurement.
struct Timed {
    inner: SystemFirewall,
    calls: Vec<(&'static str, Duration)>,
}

impl Timed {
    fn time<T>(&mut self, name: &'static str, f: impl FnOnce(&mut SystemFirewall) -> T) -> T {
        let t = Instant::now();
        let r = f(&mut self.inner);
        self.calls.push((name, t.elapsed()));
        r
    }
}

impl Firewall for Timed {
    fn restore(&mut self, text: &str) -> Result<(), FirewallError> {
        self.time("restore", |f| f.restore(text))
    }
    fn save_mangle(&mut self) -> Result<String, FirewallError> {
        self.time("save_mangle", |f| f.save_mangle())
    }
    fn ipset_restore(&mut self, text: &str) -> Result<(), FirewallError> {
        self.time("ipset_restore", |f| f.ipset_restore(text))
    }
    fn ipset_names(&mut self) -> Result<Vec<String>, FirewallError> {
        self.time("ipset_names", |f| f.ipset_names())
    }
    fn save_mangle_counters(&mut self) -> Result<String, FirewallError> {
        self.time("save_mangle_counters", |f| f.save_mangle_counters())
    }
    fn ipset_list_terse(&mut self) -> Result<String, FirewallError> {
        self.time("ipset_list_terse", |f| f.ipset_list_terse())
    }
    fn mangle_table_present(&mut self) -> Result<bool, FirewallError> {
        self.time("mangle_table_present", |f| f.mangle_table_present())
    }
    fn drop_mangle_table_if_empty(&mut self) -> Result<bool, FirewallError> {
        self.time("drop_mangle_table_if_empty", |f| {
            f.drop_mangle_table_if_empty()
        })
    }
}

/// Milliseconds of one install, split into its steps, and of the remove that follows.
#[derive(Default)]
struct Sample {
    install: f64,
    prechecks: f64,
    ipset_create: f64,
    restore: f64,
    read_back: f64,
    remove: f64,
    remove_restore: f64,
    remove_ipset: f64,
    remove_table: f64,
    remove_reads: f64,
}

/// One column of [`Sample`].
type Column = fn(&Sample) -> f64;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn measure(plan: &DivertPlan) -> Sample {
    let mut fw = Timed {
        inner: SystemFirewall::new(),
        calls: Vec::new(),
    };
    let t = Instant::now();
    let receipt = divert::install(&mut fw, plan).expect("install the divert");
    let install = ms(t.elapsed());
    let mut s = Sample {
        install,
        ..Sample::default()
    };
    // install's order: conflict checks, one `ipset restore` for every set, one
    // `iptables-restore`, then the `iptables-save` read-back.
    let mut after_restore = false;
    for (name, d) in &fw.calls {
        let d = ms(*d);
        match *name {
            "restore" => {
                assert!(
                    !after_restore,
                    "install ran more than one rules transaction"
                );
                s.restore += d;
                after_restore = true;
            }
            "ipset_restore" => s.ipset_create += d,
            _ if after_restore => s.read_back += d,
            _ => s.prechecks += d,
        }
    }
    let installed_calls = fw.calls.len();
    let t = Instant::now();
    divert::remove(&mut fw, plan, !receipt.mangle_table_was_present).expect("remove the divert");
    s.remove = ms(t.elapsed());
    for (name, d) in &fw.calls[installed_calls..] {
        let d = ms(*d);
        match *name {
            "restore" => s.remove_restore += d,
            "ipset_restore" => s.remove_ipset += d,
            "drop_mangle_table_if_empty" => s.remove_table += d,
            _ => s.remove_reads += d,
        }
    }
    s
}

/// (median, p90, max) by nearest rank.
fn stats(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    let rank = |q: f64| v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
    (rank(0.5), rank(0.9), v[v.len() - 1])
}

fn config(vips: usize, ports: &[u16]) -> String {
    let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
    let mut text = String::from("vips:\n");
    for i in 0..vips {
        text.push_str(&format!(
            "  - address: 198.18.9.{}\n    ports: [{}]\n",
            100 + i,
            ports.join(", ")
        ));
    }
    text.push_str(&format!(
        "ingress_interface: eth0\npeer: {}\ntracked_interface: trk0\n",
        common::PEER_IP
    ));
    text
}

fn main() {
    // `cargo test --benches` (and `cargo test --all-targets`) runs this binary too; only
    // `cargo bench` passes --bench.
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("divert bench: not run (use `cargo bench --bench divert`)");
        return;
    }
    if !drain_test_support::netns::require_root("divert benchmark") {
        return;
    }
    let pair = common::MiniPair::new("divbench");
    for i in 1..4 {
        common::ip(
            &pair.node,
            &[
                "addr",
                "add",
                &format!("198.18.9.{}/24", 100 + i),
                "dev",
                "eth0",
            ],
        );
    }
    let before = common::snapshot(&pair.node);
    let version = pair
        .node
        .run_ok(&["iptables-restore", "--version"])
        .unwrap_or_default();
    println!(
        "divert install/remove, N={N} each, in scratch netns {} ({}), times in ms",
        pair.node.name(),
        version.trim()
    );
    println!(
        "{:<26} {:<48} {:>8} {:>8} {:>8}",
        "config", "step", "median", "p90", "max"
    );
    for (label, vips, ports) in [
        ("1 VIP x 2 ports", 1, &[80u16, 443][..]),
        ("4 VIPs x 4 ports", 4, &[80u16, 443, 8080, 8443][..]),
    ] {
        let cfg = Config::from_str(&config(vips, ports), "bench").expect("bench config");
        let plan = DivertPlan::new(&cfg);
        let samples: Vec<Sample> = pair
            .node
            .enter(move || {
                // One unmeasured round first: the first run of each tool pays for page cache
                // and dynamic loading.
                measure(&plan);
                (0..N).map(|_| measure(&plan)).collect()
            })
            .expect("enter the node's namespace");
        let sets = ports.len();
        let rows: [(&str, Column); 10] = [
            ("install (total)", |s| s.install),
            ("  of which iptables-restore (1 transaction)", |s| s.restore),
            ("  of which ipset create (1 call, all sets)", |s| {
                s.ipset_create
            }),
            ("  of which conflict checks (netlink, ipset, save)", |s| {
                s.prechecks
            }),
            ("  of which read-back (iptables-save)", |s| s.read_back),
            ("remove (total)", |s| s.remove),
            ("  of which iptables-restore (1 transaction)", |s| {
                s.remove_restore
            }),
            ("  of which ipset destroy (1 call)", |s| s.remove_ipset),
            ("  of which drop mangle table (nft list+delete)", |s| {
                s.remove_table
            }),
            ("  of which reads and leftover check", |s| s.remove_reads),
        ];
        for (i, (step, get)) in rows.iter().enumerate() {
            let (med, p90, max) = stats(samples.iter().map(get).collect());
            let first = if i == 0 {
                format!("{label} ({sets} sets)")
            } else {
                String::new()
            };
            println!("{first:<26} {step:<48} {med:>8.2} {p90:>8.2} {max:>8.2}");
        }
    }
    let after = common::snapshot(&pair.node);
    assert!(
        before == after,
        "the benchmark left changes in {}:\n{}",
        pair.node.name(),
        common::diff(&before, &after)
    );
}
