//! The ready-to-copy files in keepalived/: the agent's configuration for each node loads, the
//! keepalived configurations pass `keepalived -t` (inside a scratch network namespace that has
//! their interfaces) and agree with the agent's files and the paths the code uses, and the
//! systemd unit passes `systemd-analyze verify`.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use drain_agent::config::Config;
use drain_agent::keepalived::{DEFAULT_FIFO_PATH, DEFAULT_TRACK_FILE_PATH};
use drain_test_support::netns::{require_root, require_tool, ScratchNetns};

fn shipped(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("keepalived")
        .join(name)
}

fn read(name: &str) -> String {
    fs::read_to_string(shipped(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn load(name: &str) -> Config {
    Config::load(shipped(name)).unwrap_or_else(|e| panic!("{e}"))
}

/// Non-comment, non-blank lines, trimmed.
fn directives(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect()
}

/// The value of the first directive `key ...` in a keepalived file.
fn directive(text: &str, key: &str) -> String {
    directives(text)
        .into_iter()
        .find_map(|l| {
            l.strip_prefix(key)
                .filter(|rest| rest.starts_with(' '))
                .map(|rest| rest.trim().to_string())
        })
        .unwrap_or_else(|| panic!("no `{key}` directive"))
}

/// The entries of a `key { ... }` block.
fn block(text: &str, key: &str) -> Vec<String> {
    let lines = directives(text);
    let start = lines
        .iter()
        .position(|l| l == &format!("{key} {{"))
        .unwrap_or_else(|| panic!("no `{key} {{` block"));
    lines[start + 1..]
        .iter()
        .take_while(|l| *l != "}")
        .cloned()
        .collect()
}

#[test]
fn agent_configs_load_and_differ_only_in_peer() {
    let lb1 = load("drain-agent-lb1.yaml");
    let lb2 = load("drain-agent-lb2.yaml");
    assert_eq!(lb1.peer.to_string(), "198.18.0.12", "lb1's peer is lb2");
    assert_eq!(lb2.peer.to_string(), "198.18.0.11", "lb2's peer is lb1");
    let mut lb1_as_lb2 = lb1.clone();
    lb1_as_lb2.peer = lb2.peer;
    assert_eq!(lb1_as_lb2, lb2);
}

#[test]
fn keepalived_configs_differ_only_in_router_id_and_priority() {
    let a: BTreeSet<String> = directives(&read("keepalived-lb1.conf"))
        .into_iter()
        .collect();
    let b: BTreeSet<String> = directives(&read("keepalived-lb2.conf"))
        .into_iter()
        .collect();
    let only_a: Vec<_> = a.difference(&b).cloned().collect();
    let only_b: Vec<_> = b.difference(&a).cloned().collect();
    assert_eq!(only_a, vec!["priority 150", "router_id lb1"]);
    assert_eq!(only_b, vec!["priority 100", "router_id lb2"]);
}

#[test]
fn keepalived_configs_agree_with_the_agent() {
    for n in [1, 2] {
        let conf = read(&format!("keepalived-lb{n}.conf"));
        let agent = load(&format!("drain-agent-lb{n}.yaml"));
        let ctx = format!("keepalived-lb{n}.conf");

        assert_eq!(
            directive(&conf, "vrrp_notify_fifo"),
            DEFAULT_FIFO_PATH,
            "{ctx}"
        );
        assert!(directives(&conf).contains(&"fifo_write_vrrp_states_on_reload".to_string()));
        assert!(directives(&conf).contains(&"enable_script_security".to_string()));
        assert_eq!(directive(&conf, "script_user"), "root", "{ctx}");
        assert_eq!(
            directive(&conf, "notify"),
            "\"/usr/local/sbin/drain-agent notify\"",
            "{ctx}"
        );
        assert_eq!(
            directive(&conf, "file"),
            format!("\"{DEFAULT_TRACK_FILE_PATH}\""),
            "{ctx}"
        );
        // The track file lives in the agent's state directory (the unit's StateDirectory).
        assert_eq!(
            Path::new(DEFAULT_TRACK_FILE_PATH).parent().unwrap(),
            agent.state_dir.as_path(),
            "{ctx}"
        );
        assert_eq!(directive(&conf, "weight"), "1", "{ctx}");
        assert_eq!(block(&conf, "track_file"), vec!["drain_agent"], "{ctx}");

        // The VRRP side matches what the agent acts on.
        assert_eq!(directive(&conf, "state"), "BACKUP", "{ctx}");
        assert!(
            directives(&conf).contains(&"nopreempt".to_string()),
            "{ctx}"
        );
        assert_eq!(
            directive(&conf, "interface"),
            agent.ingress_interface.to_string(),
            "{ctx}"
        );
        assert_eq!(
            block(&conf, "track_interface"),
            vec![agent.tracked_interface.to_string()],
            "{ctx}"
        );
        let vips: Vec<String> = agent
            .vips
            .iter()
            .map(|v| format!("{}/24 dev {}", v.address, agent.ingress_interface))
            .collect();
        assert_eq!(block(&conf, "virtual_ipaddress"), vips, "{ctx}");
    }
}

/// Runs `keepalived -t -f FILE` in a namespace that has the interfaces the files name, so the
/// check covers them; returns (success, stderr).
fn keepalived_check(ns: &ScratchNetns, file: &Path) -> (bool, String) {
    let out = ns
        .run(&["keepalived", "-t", "-f", file.to_str().unwrap()])
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout),
    )
}

#[test]
#[ignore = "needs root and network namespaces; `make test` runs it"]
fn keepalived_accepts_both_configs() {
    if !require_root("keepalived_accepts_both_configs")
        || !require_tool("keepalived_accepts_both_configs", "keepalived")
    {
        return;
    }
    let ns = ScratchNetns::new("kacfg").unwrap();
    for (dev, peer) in [("eth0", "eth0p"), ("trk0", "trk0p")] {
        ns.run_ok(&[
            "ip", "link", "add", dev, "type", "veth", "peer", "name", peer,
        ])
        .unwrap();
    }
    for name in ["keepalived-lb1.conf", "keepalived-lb2.conf"] {
        let (ok, output) = keepalived_check(&ns, &shipped(name));
        assert!(ok, "{name}: keepalived -t failed:\n{output}");
        assert_eq!(output.trim(), "", "{name}: keepalived -t warned");
    }
    // The check does catch mistakes here (a misspelt keyword, a missing interface).
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.conf");
    fs::write(
        &bad,
        read("keepalived-lb1.conf").replace("nopreempt", "nopreemt"),
    )
    .unwrap();
    let (ok, output) = keepalived_check(&ns, &bad);
    assert!(!ok && output.contains("nopreemt"), "{output}");
    ns.run_ok(&["ip", "link", "del", "trk0"]).unwrap();
    let (ok, output) = keepalived_check(&ns, &shipped("keepalived-lb1.conf"));
    assert!(!ok && output.contains("trk0"), "{output}");
}

/// `systemd-analyze verify` of the unit with ExecStart pointed at the built binary (it checks
/// that the program exists); returns everything it printed.
fn verify_unit(text: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let unit = dir.path().join("drain-agent.service");
    fs::write(
        &unit,
        text.replace(
            "/usr/local/sbin/drain-agent",
            env!("CARGO_BIN_EXE_drain-agent"),
        ),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&unit)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout)
}

#[test]
fn systemd_unit_is_valid_and_confined() {
    let unit = read("drain-agent.service");
    for line in [
        "ExecStart=/usr/local/sbin/drain-agent run --config /etc/drain-agent/drain-agent.yaml",
        "CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_RAW",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "StateDirectory=drain-agent",
        "RuntimeDirectory=drain-agent",
        "RuntimeDirectoryMode=0700",
        "KillMode=mixed",
    ] {
        assert!(
            directives(&unit).iter().any(|l| l == line),
            "missing {line}"
        );
    }
    // /proc/sys must stay writable: the agent sets and restores ARP sysctls.
    assert!(!directives(&unit)
        .iter()
        .any(|l| l.starts_with("ProtectKernelTunables=")));
    // keepalived must never depend on the agent's lifetime.
    assert!(!directives(&unit)
        .iter()
        .any(|l| l.starts_with("Requires=") || l.starts_with("BindsTo=")));
    // The control socket lives in the runtime directory.
    assert!(drain_agent::daemon::control::DEFAULT_SOCKET_PATH.starts_with("/run/drain-agent/"));

    if !require_tool("systemd_unit_is_valid_and_confined", "systemd-analyze") {
        return;
    }
    let output = verify_unit(&unit);
    assert_eq!(output.trim(), "", "systemd-analyze verify complained");
    // It does report problems in this environment.
    let output = verify_unit(&unit.replace("ProtectSystem=strict", "ProtectSystem=strictest"));
    assert!(
        output.contains("ProtectSystem") || output.contains("protect system"),
        "{output}"
    );
}
