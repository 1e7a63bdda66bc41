//! Shared by `tests/cli_errors.rs` and `tests/bench/divert.rs`: a two-node mini topology in
//! scratch namespaces, and a textual snapshot of everything in a namespace the agent could change.
//!
//! Included with `mod common;` from the test and `#[path]` from the benchmark.
#![allow(dead_code)] // each includer uses a different subset

use std::net::Ipv4Addr;
use std::path::Path;

use drain_test_support::netns::ScratchNetns;

/// The node's own address on eth0.
pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 9, 1);
/// The peer's own address on eth0.
pub const PEER_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 9, 2);
/// The VIP, a secondary address on the node's eth0 (the node is MASTER).
pub const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 9, 100);

/// Two namespaces joined by a veth pair, both ends named `eth0`: the "node" holds
/// 198.18.9.1/24 and the VIP 198.18.9.100/24, plus the veth pair `trk0`/`trk0p` as the interface
/// keepalived would track (the kernel here has no `dummy` driver); the "peer" holds 198.18.9.2/24.
/// Both namespaces are deleted on drop, also when a test fails.
pub struct MiniPair {
    /// The node being drained.
    pub node: ScratchNetns,
    /// The other load balancer.
    pub peer: ScratchNetns,
}

impl MiniPair {
    /// Builds the topology; `purpose` goes into the namespace names (`da-<purpose>n-<pid>-<k>`).
    pub fn new(purpose: &str) -> MiniPair {
        let node = ScratchNetns::new(&format!("{purpose}n")).expect("create node netns");
        let peer = ScratchNetns::new(&format!("{purpose}p")).expect("create peer netns");
        for ns in [&node, &peer] {
            // No IPv6: link-local addresses would appear (and lose their `tentative` flag after
            // DAD) while a test runs, so two snapshots of an untouched namespace could differ.
            sh(
                ns,
                "echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6; \
                 echo 1 > /proc/sys/net/ipv6/conf/default/disable_ipv6",
            );
        }
        // Created inside the node's namespace with the far end moved straight into the peer's:
        // nothing ever appears in the root namespace.
        ip(
            &node,
            &[
                "link",
                "add",
                "eth0",
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                peer.name(),
            ],
        );
        ip(
            &node,
            &["addr", "add", &format!("{NODE_IP}/24"), "dev", "eth0"],
        );
        ip(&node, &["addr", "add", &format!("{VIP}/24"), "dev", "eth0"]);
        ip(
            &peer,
            &["addr", "add", &format!("{PEER_IP}/24"), "dev", "eth0"],
        );
        ip(&node, &["link", "set", "eth0", "up"]);
        ip(&peer, &["link", "set", "eth0", "up"]);
        ip(
            &node,
            &[
                "link", "add", "trk0", "type", "veth", "peer", "name", "trk0p",
            ],
        );
        ip(&node, &["link", "set", "trk0", "up"]);
        ip(&node, &["link", "set", "trk0p", "up"]);
        for (ns, ifname) in [
            (&node, "eth0"),
            (&peer, "eth0"),
            (&node, "trk0"),
            (&node, "trk0p"),
        ] {
            wait_oper_state(ns, ifname, "UP");
        }
        MiniPair { node, peer }
    }
}

/// Waits (at most 5 s) until `ip link` shows `state STATE` for `ifname`. The kernel sets the
/// operational state from a workqueue (linkwatch), a moment after `ip link set up/down`
/// returns; a snapshot taken in between would differ from the next one without anybody having
/// changed anything.
pub fn wait_oper_state(ns: &ScratchNetns, ifname: &str, state: &str) {
    let want = format!(" state {state} ");
    let mut seen = String::new();
    for _ in 0..100 {
        seen = ns
            .run_ok(&["ip", "-o", "link", "show", "dev", ifname])
            .unwrap_or_else(|e| panic!("ip link show {ifname} in {}: {e}", ns.name()));
        if seen.contains(&want) {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!(
        "{ifname} in {} never reached state {state}: {seen}",
        ns.name()
    );
}

/// `ip ARGS` inside `ns`; panics with ip's stderr on failure.
pub fn ip(ns: &ScratchNetns, args: &[&str]) {
    let mut argv = vec!["ip"];
    argv.extend_from_slice(args);
    ns.run_ok(&argv)
        .unwrap_or_else(|e| panic!("{argv:?} in {}: {e}", ns.name()));
}

/// A shell command inside `ns`; panics on failure, returns stdout.
pub fn sh(ns: &ScratchNetns, script: &str) -> String {
    ns.run_ok(&["sh", "-c", script])
        .unwrap_or_else(|e| panic!("sh -c {script:?} in {}: {e}", ns.name()))
}

/// Everything in `ns` the agent could change, as text: iptables (all tables; counters and
/// timestamp comments removed), the nftables ruleset (counters removed), ipsets, policy rules,
/// routes of every table, links, addresses and the ARP/rp_filter/forwarding sysctls.
/// Neighbour caches are left out: probing the peer fills them, and that is not a change the
/// agent makes.
pub fn snapshot(ns: &ScratchNetns) -> String {
    let run = |argv: &[&str]| {
        ns.run_ok(argv)
            .unwrap_or_else(|e| panic!("snapshot {argv:?} in {}: {e}", ns.name()))
    };
    let mut out = String::new();
    out.push_str("== iptables-save\n");
    for line in run(&["iptables-save"]).lines() {
        if line.starts_with('#') {
            continue;
        }
        // ":CHAIN POLICY [packets:bytes]": probe packets move the counters.
        let line = match line.find(" [") {
            Some(i) if line.starts_with(':') => &line[..i],
            _ => line,
        };
        out.push_str(line);
        out.push('\n');
    }
    out.push_str("== nft list ruleset\n");
    out.push_str(&strip_nft_counters(&run(&["nft", "list", "ruleset"])));
    out.push_str("== ipset list\n");
    out.push_str(&run(&["ipset", "list"]));
    out.push_str("== ip rule\n");
    out.push_str(&run(&["ip", "rule"]));
    out.push_str("== ip route show table all\n");
    out.push_str(&run(&["ip", "route", "show", "table", "all"]));
    out.push_str("== ip -o link\n");
    out.push_str(&run(&["ip", "-o", "link"]));
    out.push_str("== ip -o addr\n");
    out.push_str(&run(&["ip", "-o", "addr"]));
    out.push_str("== sysctls\n");
    let mut keys = vec!["net/ipv4/ip_forward".to_string()];
    for dev in ["all", "eth0"] {
        for name in ["arp_ignore", "arp_announce", "rp_filter", "send_redirects"] {
            keys.push(format!("net/ipv4/conf/{dev}/{name}"));
        }
    }
    for key in keys {
        let value = run(&["cat", &format!("/proc/sys/{key}")]);
        out.push_str(&format!("{key} = {}\n", value.trim()));
    }
    out
}

/// `counter packets N bytes M` → `counter` (iptables-nft gives every rule a counter).
pub fn strip_nft_counters(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let mut kept = Vec::new();
        let mut i = 0;
        while i < words.len() {
            if matches!(words[i], "packets" | "bytes") && i + 1 < words.len() {
                i += 2;
                continue;
            }
            kept.push(words[i]);
            i += 1;
        }
        out.push_str(&kept.join(" "));
        out.push('\n');
    }
    out
}

/// The journals in a state directory, by file name. A missing journal and an empty one (`[]`)
/// are the same state (the agent writes `[]` after recording and forgetting a change), so both
/// read as `[]`; anything unparsable is kept verbatim.
pub fn journals(state_dir: &Path) -> String {
    let mut out = String::new();
    for name in ["drain-journal.json", "accept-journal.json"] {
        let text = match std::fs::read_to_string(state_dir.join(name)) {
            Ok(t) => match serde_json::from_str::<Vec<serde_json::Value>>(&t) {
                Ok(entries) => serde_json::to_string(&entries).expect("re-serialise"),
                Err(_) => t,
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => "[]".to_string(),
            Err(e) => format!("unreadable: {e}"),
        };
        out.push_str(&format!("{name}: {text}\n"));
    }
    out
}

/// A line-by-line diff of two snapshots, for assertion messages.
pub fn diff(before: &str, after: &str) -> String {
    let b: Vec<&str> = before.lines().collect();
    let a: Vec<&str> = after.lines().collect();
    let mut out = String::new();
    for l in &b {
        if !a.contains(l) {
            out.push_str(&format!("- {l}\n"));
        }
    }
    for l in &a {
        if !b.contains(l) {
            out.push_str(&format!("+ {l}\n"));
        }
    }
    out
}
