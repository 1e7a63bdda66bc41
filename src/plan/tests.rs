//! The planner's texts against golden files, and its read-back and conflict rules.

use super::*;
use std::path::PathBuf;

/// The fixed configuration behind the golden files: two VIPs sharing port 80, a non-default
/// prefix, mark and capacity.
const GOLDEN_CONFIG: &str = "\
vips:
  - address: 198.18.0.100
    ports: [80, 7]
  - address: 198.18.0.101
    ports: [443, 80]
ingress_interface: eth0
peer: 198.18.0.12
tracked_interface: trk0
firewall:
  chain_prefix: LBDRAIN
  mark: 0x100
  mark_mask: 0xf00
  max_diverted_flows: 100000
";

fn plan_from(text: &str) -> DivertPlan {
    DivertPlan::new(&Config::from_str(text, "test").unwrap())
}

fn golden_plan() -> DivertPlan {
    plan_from(GOLDEN_CONFIG)
}

/// Compares `actual` with tests/golden/`name`; a missing golden file fails like a changed one.
///
/// Only `make golden` (`UPDATE_GOLDEN=1`, exactly that value) rewrites the file instead, and
/// never under CI: there a rewrite would turn every golden test into one that cannot fail. Any
/// other value (`0`, empty, `true`) is ignored and the text is compared, so a stray variable
/// cannot switch the comparison off.
fn golden(name: &str, actual: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if update_golden(
        std::env::var("UPDATE_GOLDEN").ok().as_deref(),
        std::env::var("CI").ok().as_deref(),
    ) {
        std::fs::write(&path, actual)
            .unwrap_or_else(|e| panic!("{}: cannot write: {e}", path.display()));
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; a new golden file is created with `make golden`",
            path.display()
        )
    });
    assert_eq!(
        actual,
        expected,
        "{} differs; if the change is intended, run `make golden` and review the diff",
        path.display()
    );
}

/// Whether `golden` rewrites instead of comparing, from `UPDATE_GOLDEN` and `CI`; panics when a
/// rewrite is asked for under CI (the CI values are the lab's: `true` or `1`).
fn update_golden(update: Option<&str>, ci: Option<&str>) -> bool {
    if update != Some("1") {
        return false;
    }
    assert!(
        !matches!(ci, Some("true" | "1")),
        "UPDATE_GOLDEN=1 under CI={}: golden files are regenerated only by hand (`make golden`)",
        ci.unwrap_or_default()
    );
    true
}

#[test]
fn only_update_golden_1_outside_ci_rewrites() {
    for ignored in [
        None,
        Some(""),
        Some("0"),
        Some("true"),
        Some("yes"),
        Some(" 1"),
    ] {
        assert!(!update_golden(ignored, None), "{ignored:?}");
        assert!(
            !update_golden(ignored, Some("true")),
            "{ignored:?} under CI"
        );
    }
    assert!(update_golden(Some("1"), None));
    assert!(update_golden(Some("1"), Some("false")));
    for ci in ["true", "1"] {
        let refused = std::panic::catch_unwind(|| update_golden(Some("1"), Some(ci)));
        assert!(refused.is_err(), "UPDATE_GOLDEN=1 accepted under CI={ci}");
    }
}

#[test]
fn golden_install() {
    golden("install.txt", &golden_plan().install_rules());
}

#[test]
fn golden_withdraw() {
    golden("withdraw.txt", &golden_plan().withdraw_rules());
}

#[test]
fn golden_seal() {
    golden("seal.txt", &golden_plan().seal_rules());
}

#[test]
fn golden_remove() {
    golden("remove.txt", &golden_plan().remove_rules());
}

#[test]
fn golden_ipset() {
    let p = golden_plan();
    golden("ipset-create.txt", &p.ipset_create());
    // Port 80's member 0 half full, port 7's nearly empty, port 443 at its last member.
    let terse = "Name: LBDRAIN-80-0\nType: hash:ip,port,ip\nHeader: family inet hashsize 65536 maxelem 65536 bucketsize 12 initval 0x1\nSize in memory: 400000\nReferences: 1\nNumber of entries: 32768\n\n\
            Name: LBDRAIN-80\nType: list:set\nHeader: size 4\nNumber of entries: 1\n\n\
            Name: LBDRAIN-7-0\nType: hash:ip,port,ip\nHeader: family inet hashsize 65536 maxelem 65536 bucketsize 12\nNumber of entries: 3\n\n\
            Name: LBDRAIN-7\nType: list:set\nHeader: size 4\nNumber of entries: 1\n\n\
            Name: LBDRAIN-443-0\nType: hash:ip,port,ip\nHeader: family inet hashsize 65536 maxelem 65536 bucketsize 12\nNumber of entries: 65536\n\n\
            Name: LBDRAIN-443-1\nType: hash:ip,port,ip\nHeader: family inet hashsize 65536 maxelem 34464 bucketsize 12\nNumber of entries: 20000\n\n\
            Name: LBDRAIN-443\nType: list:set\nHeader: size 4\nNumber of entries: 2\n";
    let stats = p.record_stats(terse);
    assert_eq!(stats.entries(), 32768 + 3 + 65536 + 20000);
    assert_eq!(stats.ports[0].members[0].bytes(), 400000 + 8 * 65536);
    golden("ipset-grow.txt", &p.ipset_grow(&stats, |_| 0).unwrap());
    let mut all: Vec<String> = Vec::new();
    for port in p.ports() {
        for m in p.member_schedule() {
            all.push(p.member_name(*port, m.index));
        }
        all.push(p.set_name(*port));
    }
    golden(
        "ipset-destroy.txt",
        &p.ipset_destroy_observed(&all).unwrap(),
    );
    golden(
        "ipset-teardown.txt",
        &p.ipset_teardown_observed(&all).unwrap(),
    );
}

#[test]
fn golden_expected_rules() {
    let p = golden_plan();
    golden(
        "expected-installed.txt",
        &text(p.expected_rules(Phase::Installed)),
    );
    golden(
        "expected-sealed.txt",
        &text(p.expected_rules(Phase::Sealed)),
    );
    golden(
        "expected-withdrawn.txt",
        &text(p.expected_rules(Phase::Withdrawn)),
    );
}

#[test]
fn golden_peer_plan() {
    let peer = PeerPlan::new(&Config::from_str(GOLDEN_CONFIG, "test").unwrap());
    let mut lines: Vec<String> = peer
        .local_routes
        .iter()
        .map(|a| format!("local-route {a}/32"))
        .collect();
    lines.extend(
        peer.sysctls
            .iter()
            .map(|s| format!("sysctl {} = {}", s.key, s.value)),
    );
    golden("peer.txt", &text(lines));
    assert_eq!(
        peer.sysctls[0].proc_path(),
        PathBuf::from("/proc/sys/net/ipv4/conf/eth0/arp_ignore")
    );
}

#[test]
fn shared_ports_get_one_set_each() {
    assert_eq!(
        golden_plan().set_names(),
        ["LBDRAIN-80", "LBDRAIN-7", "LBDRAIN-443"]
    );
}

#[test]
fn names_fit_the_kernel_limits_with_the_longest_prefix() {
    let longest = GOLDEN_CONFIG
        .replace("LBDRAIN", "ABCDEFGHIJKL")
        .replace("[443, 80]", "[65535]");
    let p = plan_from(&longest);
    for chain in p.chains() {
        assert!(chain.len() <= MAX_CHAIN_NAME_LEN, "{chain}");
    }
    let sets = p.set_names();
    assert!(sets.contains(&"ABCDEFGHIJKL-65535".to_string()));
    for set in sets {
        assert!(set.len() <= MAX_SET_NAME_LEN, "{set}");
    }
    let last = p.member_schedule().len() - 1;
    let member = p.member_name(65535, last);
    assert!(member.len() <= MAX_SET_NAME_LEN, "{member}");
}

/// What iptables-save printed in a scratch namespace after install_rules, with a user rule
/// and a user chain around ours (captured from iptables-nft 1.8.9 and rearranged by hand into
/// its order: builtins first, user chains sorted by name).
fn saved_installed(p: &DivertPlan) -> String {
    let mut lines = vec![
        "# Generated by iptables-save v1.8.9 (nf_tables) on Sun Nov 22 01:04:22 2026".into(),
        "*mangle".into(),
        ":PREROUTING ACCEPT [0:0]".into(),
        ":INPUT ACCEPT [0:0]".into(),
        ":FORWARD ACCEPT [0:0]".into(),
        ":OUTPUT ACCEPT [0:0]".into(),
        ":POSTROUTING ACCEPT [0:0]".into(),
        ":AAA - [0:0]".to_string(),
    ];
    let expected = p.expected_rules(Phase::Installed);
    lines.extend(expected.iter().filter(|l| l.starts_with(':')).cloned());
    lines.extend(
        expected
            .iter()
            .filter(|l| l.starts_with("-A PREROUTING"))
            .cloned(),
    );
    lines.push("-A PREROUTING -p udp -m udp --dport 53 -j MARK --set-xmark 0x5/0xffffffff".into());
    lines.push("-A AAA -j RETURN".into());
    lines.extend(
        expected
            .iter()
            .filter(|l| l.starts_with("-A ") && !l.starts_with("-A PREROUTING"))
            .cloned(),
    );
    lines.push("COMMIT".into());
    text(lines)
}

#[test]
fn read_back_accepts_exactly_the_expected_lines() {
    let p = golden_plan();
    let saved = saved_installed(&p);
    assert_eq!(p.check_read_back(Phase::Installed, &saved), Ok(()));
    assert!(matches!(
        p.check_read_back(Phase::Withdrawn, &saved),
        Err(ReadBackError::Differs { .. })
    ));
}

#[test]
fn the_observed_phase_is_the_one_whose_rules_are_there() {
    let p = golden_plan();
    let saved = saved_installed(&p);
    assert_eq!(p.observed_phase(&saved), Some(Phase::Installed));
    let sealed = saved.replace(
        "-A LBDRAIN-NEW -j LBDRAIN-MISS\n",
        "-A LBDRAIN-NEW -j LBDRAIN-MISS\n-A LBDRAIN-NEW -j DROP\n",
    );
    assert_eq!(p.observed_phase(&sealed), Some(Phase::Sealed));
    let broken = saved.replace("-A LBDRAIN-DIV -j DROP\n", "");
    assert_eq!(p.observed_phase(&broken), None);
    assert_eq!(p.observed_phase("*mangle\nCOMMIT\n"), None);
}

#[test]
fn read_back_ignores_chain_order_but_not_rule_order() {
    let p = golden_plan();
    let saved = saved_installed(&p);
    // Chains listed in creation order instead of by name: still fine.
    let div_block: Vec<&str> = saved
        .lines()
        .filter(|l| l.starts_with("-A LBDRAIN-DIV"))
        .collect();
    let mut reordered: Vec<&str> = saved
        .lines()
        .filter(|l| !l.starts_with("-A LBDRAIN-DIV") && *l != "COMMIT")
        .collect();
    reordered.extend(&div_block);
    reordered.push("COMMIT");
    let reordered = text(reordered.into_iter().map(String::from));
    assert_eq!(p.check_read_back(Phase::Installed, &reordered), Ok(()));
    // TEE before MARK inside P-DIV: wrong.
    let swapped = saved
        .replace("-j MARK --set-xmark 0x100/0xf00", "@@")
        .replace(
            "-j TEE --gateway 198.18.0.12",
            "-j MARK --set-xmark 0x100/0xf00",
        )
        .replace("@@", "-j TEE --gateway 198.18.0.12");
    assert!(p.check_read_back(Phase::Installed, &swapped).is_err());
}

#[test]
fn read_back_rejects_missing_extra_and_late_jumps() {
    let p = golden_plan();
    let saved = saved_installed(&p);
    let missing = saved.replace("-A LBDRAIN-DIV -j DROP\n", "");
    assert!(p.check_read_back(Phase::Installed, &missing).is_err());
    let extra = saved.replace("COMMIT", "-A LBDRAIN-PRE -j ACCEPT\nCOMMIT");
    assert!(p.check_read_back(Phase::Installed, &extra).is_err());
    let foreign_jump = saved.replace("COMMIT", "-A OUTPUT -j LBDRAIN-DIV\nCOMMIT");
    assert!(p.check_read_back(Phase::Installed, &foreign_jump).is_err());
    // A user rule first in PREROUTING could ACCEPT before our jumps are reached.
    let user = "-A PREROUTING -p udp -m udp --dport 53 -j MARK --set-xmark 0x5/0xffffffff\n";
    let late = saved.replace(user, "").replace(
        ":LBDRAIN-PRE - [0:0]\n",
        &format!(":LBDRAIN-PRE - [0:0]\n{user}"),
    );
    assert_eq!(
        p.check_read_back(Phase::Installed, &late),
        Err(ReadBackError::NotFirst {
            found: vec![
                user.trim_end().to_string(),
                p.expected_rules(Phase::Installed)[4].clone()
            ]
        })
    );
}

#[test]
fn conflicts_are_found_by_exact_name() {
    let p = golden_plan();
    let saved = ":LBDRAIN-PREX - [0:0]\n:LBDRAIN-NEW - [0:0]\n";
    assert_eq!(p.existing_chains(saved), ["LBDRAIN-NEW"]);
    let sets: Vec<String> = [
        "LBDRAIN-8",
        "LBDRAIN-443",
        "LBDRAIN-x",
        "LBDRAIN-08",
        "LBDRAINX-1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(p.existing_sets(&sets), ["LBDRAIN-8", "LBDRAIN-443"]);
}

#[test]
fn observed_removal_takes_what_is_there_even_from_an_older_config() {
    let p = golden_plan();
    let saved = "*mangle\n:PREROUTING ACCEPT [0:0]\n:LBDRAIN-PRE - [0:0]\n\
            -A PREROUTING -d 198.18.0.99/32 -i eth1 -p tcp -m multiport --dports 22 -j LBDRAIN-PRE\n\
            -A PREROUTING -p udp -m udp --dport 53 -j ACCEPT\n\
            -A LBDRAIN-PRE -j ACCEPT\nCOMMIT\n";
    assert_eq!(
            p.remove_rules_observed(saved).unwrap(),
            "*mangle\n\
             -D PREROUTING -d 198.18.0.99/32 -i eth1 -p tcp -m multiport --dports 22 -j LBDRAIN-PRE\n\
             -F LBDRAIN-PRE\n-X LBDRAIN-PRE\nCOMMIT\n"
        );
    assert_eq!(
        p.remove_rules_observed("*mangle\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n"),
        None
    );
}

#[test]
fn observed_removal_of_everything_equals_the_full_removal() {
    let p = golden_plan();
    assert_eq!(
        p.remove_rules_observed(&saved_installed(&p)).unwrap(),
        p.remove_rules()
    );
}

#[test]
fn observed_set_destruction_takes_only_prefix_dash_port() {
    let p = golden_plan();
    let names: Vec<String> = [
        "LBDRAIN-80-0",
        "LBDRAIN-80",
        "LBDRAIN-8080",
        "LBDRAIN-x",
        "LBDRAIN-080",
        "LBDRAIN-80-01",
        "LBDRAIN-80-x",
        "LBDRAINX-1",
        "other",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    // Lists first: a member still in a list is in use and cannot be destroyed.
    assert_eq!(
        p.ipset_destroy_observed(&names).unwrap(),
        "destroy LBDRAIN-80\ndestroy LBDRAIN-8080\ndestroy LBDRAIN-80-0\n"
    );
    assert_eq!(p.ipset_destroy_observed(&names[7..]), None);
}

/// The peer's MAC in the hand-off golden files.
const PEER_MAC: Mac = [0x02, 0x00, 0x5e, 0x10, 0x00, 0x0c];

#[test]
fn golden_handoff_return_path() {
    let p = golden_plan().returning(PEER_MAC);
    golden("return-install.txt", &p.install_rules());
    golden("return-remove.txt", &p.remove_rules());
    golden("return-ipset-create.txt", &p.ipset_create());
}

#[test]
fn golden_handoff_guarded_divert() {
    golden(
        "guarded-install.txt",
        &golden_plan().guarded(PEER_MAC).install_rules(),
    );
}

#[test]
fn the_return_path_and_the_divert_own_disjoint_names() {
    let divert = golden_plan();
    let ret = golden_plan().returning(PEER_MAC);
    assert_eq!(ret.prefix(), "LBDRAINR");
    assert_eq!(ret.prefix(), divert.return_prefix());
    // Neither plan takes the other's chains or sets for its own (a drain of this node and the
    // return path of the peer's hand-off must never remove each other).
    let saved = format!(
        "*mangle\n{}",
        ret.expected_rules(Phase::Installed)
            .iter()
            .map(|l| format!("{l}\n"))
            .collect::<String>()
    );
    assert!(divert.existing_chains(&saved).is_empty());
    assert!(divert.owned_lines(&saved).is_empty());
    assert!(divert.remove_rules_observed(&saved).is_none());
    let names: Vec<String> = ret
        .set_names()
        .into_iter()
        .chain(ret.ports().iter().map(|&p| ret.member_name(p, 0)))
        .collect();
    assert!(divert.existing_sets(&names).is_empty());
    assert_eq!(ret.existing_sets(&names), names);
    // And the return plan reads its own rules back, in its one phase.
    assert_eq!(ret.observed_phase(&saved), Some(Phase::Installed));
}

#[test]
fn the_return_path_keeps_syns_and_recorded_flows_and_returns_the_rest() {
    let ret = golden_plan().returning(PEER_MAC);
    let pre = ret.pre_rules();
    // Order is the semantics: SYNs are recorded and kept, recorded flows kept, packets the peer
    // diverted here kept (no loop), everything else returned.
    assert_eq!(
        pre[0],
        "-p tcp -m tcp --tcp-flags FIN,SYN,RST,ACK SYN -j LBDRAINR-NEW"
    );
    assert_eq!(
        pre[1],
        "-p tcp -m tcp --tcp-flags FIN,SYN,RST,ACK SYN -j RETURN"
    );
    assert!(pre[2..pre.len() - 2]
        .iter()
        .all(|r| r.contains("--match-set LBDRAINR-") && r.ends_with("-j RETURN")));
    assert_eq!(
        pre[pre.len() - 2],
        "-m mac --mac-source 02:00:5e:10:00:0c -j RETURN"
    );
    assert_eq!(pre[pre.len() - 1], "-j LBDRAINR-DIV");
    assert!(ret
        .div_rules()
        .contains(&"-j TEE --gateway 198.18.0.12".to_string()));
}
