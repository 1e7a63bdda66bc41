//! Every way a configuration can be wrong produces one line that names the file, the key and,
//! when serde_yaml knows it, the line and column of the bad value.

use drain_agent::config::{Config, ConfigError};

const ORIGIN: &str = "/etc/drain-agent/drain-agent.yaml";

/// A valid file; each case below changes one thing in it.
const GOOD: &str = "\
vips:
  - address: 198.18.0.100
    ports: [80, 7]
  - address: 198.18.0.101
    ports: [443]
ingress_interface: eth0
peer: 198.18.0.12
tracked_interface: trk0
failover:
  timeout: 10s
firewall:
  chain_prefix: DRAIN
  mark: 0x1d000000
  mark_mask: 0xff000000
drain:
  deadline: 5m
peer_probe:
  port: 80
state_dir: /var/lib/drain-agent
";

/// One bad input: how it is made from GOOD, the key path the message must start with (empty where
/// the key is named inside the cause instead: unknown and missing keys), a piece of the cause, and
/// the line serde_yaml must report (None for cross-field checks, which run after parsing).
struct Case {
    name: &'static str,
    text: String,
    key: &'static str,
    cause: &'static str,
    line: Option<usize>,
}

fn replaced(from: &str, to: &str) -> String {
    assert!(GOOD.contains(from), "test bug: {from:?} not in GOOD");
    GOOD.replacen(from, to, 1)
}

fn cases() -> Vec<Case> {
    let sixteen_ports = (1..=16)
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let seventeen_vips = (1..=17)
        .map(|i| format!("  - address: 198.18.1.{i}\n    ports: [80]\n"))
        .collect::<String>();
    vec![
        Case {
            name: "malformed YAML",
            text: replaced("    ports: [80, 7]", "    ports: [80, 7]]"),
            key: "",
            cause: "line 3",
            line: None,
        },
        Case {
            name: "unknown top-level key",
            text: format!("{GOOD}state_directory: /tmp\n"),
            key: "",
            cause: "unknown field `state_directory`",
            line: Some(20),
        },
        Case {
            name: "unknown nested key",
            text: replaced("  deadline: 5m", "  deadline: 5m\n  dedline: 5m"),
            key: "drain",
            cause: "unknown field `dedline`",
            line: Some(17),
        },
        Case {
            name: "unknown key in a VIP",
            text: replaced("    ports: [443]", "    ports: [443]\n    port: 80"),
            key: "vips[1]",
            cause: "unknown field `port`",
            line: Some(6),
        },
        Case {
            name: "bad IPv4",
            text: replaced("198.18.0.100", "198.18.0.300"),
            key: "vips[0].address",
            cause: "\"198.18.0.300\" is not an IPv4 address",
            line: Some(2),
        },
        Case {
            name: "IPv6 VIP",
            text: replaced("198.18.0.100", "\"2001:db8::1\""),
            key: "vips[0].address",
            cause: "not supported",
            line: Some(2),
        },
        Case {
            name: "multicast VIP",
            text: replaced("198.18.0.101", "224.0.0.18"),
            key: "vips[1].address",
            cause: "multicast",
            line: Some(4),
        },
        Case {
            name: "duplicate port",
            text: replaced("[80, 7]", "[80, 7, 80]"),
            key: "vips[0].ports",
            cause: "port 80 is listed twice",
            line: Some(3),
        },
        Case {
            name: "port 0",
            text: replaced("[443]", "[0]"),
            key: "vips[1].ports",
            cause: "port 0 is out of range",
            line: Some(5),
        },
        Case {
            name: "port above 65535",
            text: replaced("[443]", "[65536]"),
            key: "vips[1].ports",
            cause: "port 65536 is out of range",
            line: Some(5),
        },
        Case {
            name: "16 ports",
            text: replaced("[80, 7]", &format!("[{sixteen_ports}]")),
            key: "vips[0].ports",
            cause: "16 ports given",
            line: Some(3),
        },
        Case {
            name: "empty ports",
            text: replaced("[443]", "[]"),
            key: "vips[1].ports",
            cause: "at least one port",
            line: Some(5),
        },
        Case {
            name: "empty vips",
            text: GOOD.replace(
                "  - address: 198.18.0.100\n    ports: [80, 7]\n  - address: 198.18.0.101\n    ports: [443]\n",
                "",
            )
            .replace("vips:", "vips: []"),
            key: "vips",
            cause: "at least one VIP",
            line: Some(1),
        },
        Case {
            name: "17 vips",
            text: replaced(
                "  - address: 198.18.0.100\n    ports: [80, 7]\n  - address: 198.18.0.101\n    ports: [443]\n",
                &seventeen_vips,
            )
            .replace("  port: 443", "  port: 80"),
            key: "vips",
            cause: "17 VIPs given",
            line: Some(2),
        },
        Case {
            name: "duplicate VIP",
            text: replaced("198.18.0.101", "198.18.0.100"),
            key: "vips",
            cause: "198.18.0.100 is listed twice",
            line: Some(2),
        },
        Case {
            name: "missing required key",
            text: replaced("peer: 198.18.0.12\n", ""),
            key: "",
            cause: "missing field `peer`",
            line: None,
        },
        Case {
            name: "interface name too long",
            text: replaced("ingress_interface: eth0", "ingress_interface: eth0123456789012"),
            key: "ingress_interface",
            cause: "1..=15 bytes",
            line: Some(6),
        },
        Case {
            name: "interface name with a slash",
            text: replaced("tracked_interface: trk0", "tracked_interface: trk/0"),
            key: "tracked_interface",
            cause: "contains '/'",
            line: Some(8),
        },
        Case {
            name: "peer equals a VIP",
            text: replaced("peer: 198.18.0.12", "peer: 198.18.0.101"),
            key: "peer",
            cause: "also vips[1].address",
            line: None,
        },
        Case {
            name: "peer is loopback",
            text: replaced("peer: 198.18.0.12", "peer: 127.0.0.1"),
            key: "peer",
            cause: "loopback",
            line: Some(7),
        },
        Case {
            name: "tracked equals ingress",
            text: replaced("tracked_interface: trk0", "tracked_interface: eth0"),
            key: "tracked_interface",
            cause: "also the ingress_interface",
            line: None,
        },
        Case {
            name: "bad duration",
            text: replaced("timeout: 10s", "timeout: 10 seconds"),
            key: "failover.timeout",
            cause: "not a duration",
            line: Some(10),
        },
        Case {
            name: "duration without unit",
            text: replaced("deadline: 5m", "deadline: 300"),
            key: "drain.deadline",
            cause: "not a duration",
            line: Some(16),
        },
        Case {
            name: "zero duration",
            text: replaced("timeout: 10s", "timeout: 0s"),
            key: "failover.timeout",
            cause: "is zero",
            line: Some(10),
        },
        Case {
            name: "poll interval too short",
            text: replaced("  deadline: 5m", "  deadline: 5m\n  poll_interval: 1ms"),
            key: "drain.poll_interval",
            cause: "outside 10ms..=10s",
            line: Some(17),
        },
        Case {
            name: "mark outside mask",
            text: replaced("mark: 0x1d000000", "mark: 0x1d000001"),
            key: "firewall.mark",
            cause: "bits outside firewall.mark_mask",
            line: None,
        },
        Case {
            name: "zero mask",
            text: replaced("mark_mask: 0xff000000", "mark_mask: 0"),
            key: "firewall.mark_mask",
            cause: "not a usable mask",
            line: Some(14),
        },
        Case {
            name: "bad chain prefix",
            text: replaced("chain_prefix: DRAIN", "chain_prefix: DRAIN-1"),
            key: "firewall.chain_prefix",
            cause: "not a valid prefix",
            line: Some(12),
        },
        Case {
            name: "chain prefix too long",
            text: replaced("chain_prefix: DRAIN", "chain_prefix: DRAINDRAINDRA"),
            key: "firewall.chain_prefix",
            cause: "not a valid prefix",
            line: Some(12),
        },
        Case {
            name: "set capacity too small",
            text: replaced("  mark_mask: 0xff000000", "  mark_mask: 0xff000000\n  max_diverted_flows: 10"),
            key: "firewall.max_diverted_flows",
            cause: "outside 1024..=16777216",
            line: Some(15),
        },
        Case {
            name: "probe port not a VIP port",
            text: replaced("  port: 80", "  port: 8080"),
            key: "peer_probe.port",
            cause: "not one of the VIP ports",
            line: None,
        },
        Case {
            name: "unknown failover method",
            text: replaced("  timeout: 10s", "  timeout: 10s\n  method: carrier-pigeon"),
            key: "failover.method",
            cause: "unknown variant `carrier-pigeon`",
            line: Some(11),
        },
        Case {
            name: "track-file method without a track file",
            text: replaced("  timeout: 10s", "  timeout: 10s\n  method: track-file"),
            key: "failover.track_file",
            cause: "is required by failover.method: track-file",
            line: None,
        },
        Case {
            name: "return weight that would mean FAULT",
            text: replaced("  timeout: 10s", "  timeout: 10s\n  track_file: /var/lib/drain-agent/keepalived.track\n  return_weight: -254"),
            key: "failover.return_weight",
            cause: "-254 is outside -253..=0",
            line: Some(12),
        },
        Case {
            name: "return weight without a track file",
            text: replaced("  timeout: 10s", "  timeout: 10s\n  return_weight: -51"),
            key: "failover.return_weight",
            cause: "needs failover.track_file",
            line: None,
        },
        Case {
            name: "relative track file",
            text: replaced("  timeout: 10s", "  timeout: 10s\n  track_file: keepalived.track"),
            key: "failover.track_file",
            cause: "is not an absolute path",
            line: Some(11),
        },
        Case {
            name: "relative state dir",
            text: replaced("state_dir: /var/lib/drain-agent", "state_dir: var/lib/drain-agent"),
            key: "state_dir",
            cause: "not an absolute path",
            line: Some(19),
        },
        Case {
            name: "abort_on_deadline not a bool",
            text: replaced("  deadline: 5m", "  deadline: 5m\n  abort_on_deadline: maybe"),
            key: "drain.abort_on_deadline",
            cause: "invalid type",
            line: Some(17),
        },
    ]
}

#[test]
fn the_base_file_is_valid() {
    Config::from_str(GOOD, ORIGIN).unwrap();
}

#[test]
fn each_bad_input_gets_one_line_naming_file_key_and_line() {
    let mut failures = Vec::new();
    for case in cases() {
        let err = match Config::from_str(&case.text, ORIGIN) {
            Ok(_) => {
                failures.push(format!("{}: accepted", case.name));
                continue;
            }
            Err(e) => e,
        };
        let msg = err.to_string();
        println!("{:32} {msg}", case.name);
        let prefix = format!("{ORIGIN}: {}", case.key);
        let mut problems = Vec::new();
        if msg.contains('\n') {
            problems.push("is not one line".to_string());
        }
        if !msg.starts_with(&prefix) {
            problems.push(format!("does not start with {prefix:?}"));
        }
        if !msg.contains(case.cause) {
            problems.push(format!("does not contain {:?}", case.cause));
        }
        if let Some(line) = case.line {
            let want = format!("(line {line}, column ");
            if !msg.ends_with(')') || !msg.contains(&want) {
                problems.push(format!("does not end with {want:?}..."));
            }
        }
        if !problems.is_empty() {
            failures.push(format!("{}: {msg:?} {}", case.name, problems.join(", ")));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn the_example_in_the_brief_reads_as_specified() {
    let text = "vips:\n  - address: 198.18.0.300\n    ports: [80]\n";
    let msg = Config::from_str(&format!("# header\n{text}"), ORIGIN)
        .unwrap_err()
        .to_string();
    // The comment pushes the address to line 3; the value starts after `  - address: `.
    assert_eq!(
        msg,
        "/etc/drain-agent/drain-agent.yaml: vips[0].address: \"198.18.0.300\" is not an IPv4 address (line 3, column 14)"
    );
}

#[test]
fn a_missing_file_is_reported_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("absent.yaml");
    let err = Config::load(&path).unwrap_err();
    assert!(matches!(err, ConfigError::Read { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!("{}: cannot read", path.display())),
        "{msg}"
    );
}

#[test]
fn load_reads_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("drain-agent.yaml");
    std::fs::write(&path, GOOD).unwrap();
    let config = Config::load(&path).unwrap();
    assert_eq!(config.vips.as_slice().len(), 2);
}
