//! Property tests of every parser that reads input from outside the agent: the configuration
//! file, keepalived's own configuration file, keepalived's FIFO lines and notify arguments, control-socket requests, peer-link lines,
//! and the `iptables-save` / `ipset list -terse` texts the planner reads back. For any input:
//! no panic, and a rejection is one line (it ends up in a log line or a one-line CLI error).
//!
//! Each property runs `PROPTEST_CASES` cases (proptest's default, 256, in the normal suite);
//! `make fuzz` runs a million per parser and prints the counts and times.
//!
//! The sock_diag reply parser (`sys::sockdiag::wire`) is private to its module; its property
//! tests live there (`sockdiag::wire::tests::prop`), and `make fuzz` runs them too.

use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use drain_agent::config::Config;
use drain_agent::daemon::control::Request;
use drain_agent::keepalived::conf::{Files, KeepalivedConf, Kind};
use drain_agent::keepalived::{FifoLine, NotifyArgs};
use drain_agent::ops::handoff::PeerRequest;
use drain_agent::plan::{DivertPlan, Phase};
use drain_agent::sys::peerlink::{Key, Replay};
use proptest::prelude::*;
use proptest::test_runner::{Config as RunnerConfig, TestRunner};

/// A valid configuration the edits below start from, so most cases reach past the YAML layer.
const CONFIG: &str = "\
vips:
  - address: 198.18.0.100
    ports: [80, 7]
ingress_interface: eth0
peer: 198.18.0.12
tracked_interface: trk0
firewall:
  chain_prefix: LBDRAIN
  mark: 0x100
  mark_mask: 0xf00
  max_diverted_flows: 100000
drain:
  deadline: 30s
";

/// Runs `property` over `strategy` for the configured number of cases and prints how many ran
/// and how long they took (the figures `make fuzz` reports).
fn check<S: Strategy>(name: &str, strategy: S, property: impl Fn(S::Value) -> Result<(), String>)
where
    S::Value: std::fmt::Debug,
{
    let config = RunnerConfig {
        // A failure is reported with its shrunk input; nothing is written into the repository.
        failure_persistence: None,
        ..RunnerConfig::default()
    };
    let mut runner = TestRunner::new(config);
    let cases = AtomicU64::new(0);
    let start = Instant::now();
    runner
        .run(&strategy, |input| {
            cases.fetch_add(1, Ordering::Relaxed);
            property(input).map_err(TestCaseError::fail)
        })
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    eprintln!(
        "{name}: {} cases in {:.1} s",
        cases.load(Ordering::Relaxed),
        start.elapsed().as_secs_f64()
    );
}

/// A rejection's message: one non-empty line.
fn one_line(what: &str, message: &str) -> Result<(), String> {
    if message.is_empty() || message.contains('\n') {
        return Err(format!("{what}: not one line: {message:?}"));
    }
    Ok(())
}

/// Text near `base`: truncated, with a piece inserted, a line dropped or duplicated, or bytes
/// swapped for others; or any string at all.
fn near(base: &'static str) -> impl Strategy<Value = String> {
    let lines: Vec<&'static str> = base.lines().collect();
    let n = lines.len();
    prop_oneof![
        any::<String>(),
        (0..=base.len()).prop_map(move |at| cut(base, at).to_string()),
        (0..=base.len(), "[ -~\\n\\t]{0,12}").prop_map(move |(at, piece)| format!(
            "{}{piece}{}",
            cut(base, at),
            &base[cut(base, at).len()..]
        )),
        (0..n, any::<bool>()).prop_map({
            let lines = lines.clone();
            move |(i, twice)| {
                let mut l = lines.clone();
                if twice {
                    l.insert(i, lines[i]);
                } else {
                    l.remove(i);
                }
                l.join("\n")
            }
        }),
        (0..n, "[ -~]{0,30}").prop_map(move |(i, line)| {
            let mut l: Vec<String> = lines.iter().map(|s| s.to_string()).collect();
            l[i] = line;
            l.join("\n")
        }),
    ]
}

/// `s` up to the char boundary at or before `at`.
fn cut(s: &str, at: usize) -> &str {
    let mut at = at.min(s.len());
    while !s.is_char_boundary(at) {
        at -= 1;
    }
    &s[..at]
}

#[test]
fn configuration_text_never_panics_and_rejects_in_one_line() {
    check("config", near(CONFIG), |text| {
        match Config::from_str(&text, "fuzz.yaml") {
            Ok(_) => Ok(()),
            Err(e) => one_line("config", &e.to_string()),
        }
    });
}

/// No file to include: a generated `include` reads nothing from the machine.
struct NoFiles;

impl Files for NoFiles {
    fn read(&self, _: &Path) -> io::Result<Vec<u8>> {
        Err(io::ErrorKind::NotFound.into())
    }
    fn kind(&self, _: &Path) -> io::Result<Kind> {
        Err(io::ErrorKind::NotFound.into())
    }
    fn list(&self, _: &Path) -> io::Result<Vec<String>> {
        Err(io::ErrorKind::NotFound.into())
    }
    fn identity(&self, path: &Path) -> PathBuf {
        path.to_path_buf()
    }
}

/// A keepalived configuration the edits start from: every construct the reader models.
const KEEPALIVED: &str = include_str!("fixtures/keepalived/sync-group.conf");

#[test]
fn keepalived_conf_never_panics_and_rejects_in_one_line() {
    let word = "(vrrp_instance|vrrp_sync_group|group|virtual_ipaddress|track_interface|track_file|\\{|\\}|\"|#|!|@x|\\$X|\\$X=1|~SEQ\\(|include x|198\\.18\\.0\\.1/24|dev|eth0|weight|-2|VI_1|\\\\|[ -~]{0,6})";
    let generated = format!("({word}[ \\t\\n]{{0,2}}){{0,40}}");
    let texts = prop_oneof![near(KEEPALIVED), generated.as_str()];
    check("keepalived.conf", texts, |text| {
        let path = Path::new("/fuzz/keepalived.conf");
        match KeepalivedConf::parse_from(&NoFiles, text.as_bytes(), path) {
            Ok(_) => Ok(()),
            Err(e) => one_line("keepalived.conf", &e.to_string()),
        }
    });
}

#[test]
fn fifo_lines_never_panic_and_reject_in_one_line() {
    let words = "(INSTANCE|GROUP|VRRP|INSTANCE|[A-Z]{0,8})";
    let line = format!(
        "{words}( \"[ -~]{{0,16}}\"?)?( (MASTER|BACKUP|FAULT|STOP|[A-Za-z]{{0,7}}))?( [-+]?[0-9]{{0,5}})?\r?\n?"
    );
    let lines = prop_oneof![any::<String>(), line.as_str()];
    check("fifo line", lines, |l| match FifoLine::parse(&l) {
        Ok(_) => Ok(()),
        Err(e) => one_line("fifo line", &e.to_string()),
    });
}

#[test]
fn notify_arguments_never_panic_and_reject_in_one_line() {
    let word = prop_oneof![
        any::<String>(),
        "(INSTANCE|GROUP|MASTER|BACKUP|FAULT|STOP|VI_[0-9]|[-0-9]{1,4}|)",
    ];
    check(
        "notify args",
        prop::collection::vec(word, 0..6),
        |args| match NotifyArgs::parse(&args) {
            Ok(_) => Ok(()),
            Err(e) => one_line("notify args", &e.to_string()),
        },
    );
}

#[test]
fn control_requests_never_panic_and_reject_in_one_line() {
    let value = "(\"[ -~]{0,10}\"|-?[0-9]{1,12}|true|null|\\[\\]|\\{\\})";
    let request = format!(
        "\\{{\"op\":\"(status|drain|undrain|maintenance|maintenance-on|maintenanceon|[a-z]{{0,8}})\"(,\"[a-z_]{{1,12}}\":{value}){{0,4}}\\}}"
    );
    let lines = prop_oneof![any::<String>(), request.as_str()];
    check("control request", lines, |l| {
        match serde_json::from_str::<Request>(&l) {
            Ok(_) => Ok(()),
            Err(e) => one_line("control request", &e.to_string()),
        }
    });
}

#[test]
fn peer_link_lines_never_panic_and_reject_in_one_line() {
    let key = Key::from_bytes(&[7; 32]);
    let lines = prop_oneof![
        any::<String>(),
        "[A-Za-z0-9+/=.:_-]{0,120}",
        "\\{\"[a-z]{1,6}\":\"[ -~]{0,40}\"(,\"[a-z]{1,6}\":[0-9]{1,6}){0,3}\\}",
    ];
    check("peer-link line", lines, |l| {
        let mut replay = Replay::default();
        match replay.accept::<PeerRequest>(&key, Ipv4Addr::new(198, 18, 0, 12), &l) {
            Ok(_) => Err(format!("accepted an unsigned line: {l:?}")),
            Err(e) => one_line("peer-link line", &e.to_string()),
        }
    });
}

/// The planner's own texts, the base the `iptables-save` mutations start from.
fn saved_mangle() -> &'static str {
    let plan = DivertPlan::new(&Config::from_str(CONFIG, "fuzz").unwrap());
    let mut text = String::from("*mangle\n:PREROUTING ACCEPT [0:0]\n");
    for line in plan.expected_rules(Phase::Sealed) {
        text.push_str(&line);
        text.push('\n');
    }
    text.push_str("-A PREROUTING -p udp -j ACCEPT\nCOMMIT\n");
    Box::leak(text.into_boxed_str())
}

#[test]
fn iptables_save_text_never_panics_the_read_back() {
    let plan = DivertPlan::new(&Config::from_str(CONFIG, "fuzz").unwrap());
    check("iptables-save", near(saved_mangle()), |saved| {
        let _ = plan.observed_phase(&saved);
        let _ = plan.owned_lines(&saved);
        let _ = plan.existing_chains(&saved);
        let _ = plan.remove_rules_observed(&saved);
        Ok(())
    });
}

/// `ipset list -terse` as the record's sets report it.
const TERSE: &str = "Name: LBDRAIN-80-0\nType: hash:ip,port,ip\nHeader: family inet hashsize 65536 maxelem 65536 bucketsize 12 initval 0x1\nSize in memory: 400000\nReferences: 1\nNumber of entries: 32768\n\nName: LBDRAIN-80\nType: list:set\nHeader: size 4\nNumber of entries: 1\n\nName: LBDRAIN-7-0\nType: hash:ip,port,ip\nHeader: family inet hashsize 65536 maxelem 65536 bucketsize 12\nNumber of entries: 3\n";

#[test]
fn ipset_terse_text_never_panics_the_record_stats() {
    let plan = DivertPlan::new(&Config::from_str(CONFIG, "fuzz").unwrap());
    check("ipset -terse", near(TERSE), |terse| {
        let stats = plan.record_stats(&terse);
        let _ = stats.entries();
        let _ = plan.ipset_grow(&stats, |_| 0);
        Ok(())
    });
}
