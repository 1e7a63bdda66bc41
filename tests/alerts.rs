//! The alerting rules shipped in packaging/prometheus: `promtool check rules` accepts them and
//! `promtool test rules` runs their unit tests (each alert fires on the series that mean it, after
//! its `for`, and stays quiet on a node that is serving or in maintenance on purpose). The metric
//! names they read are the ones the daemon exposes (`daemon::metrics::EXPOSED`).

use std::path::Path;
use std::process::Command;

use drain_test_support::require_tool;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/packaging/prometheus");
const RULES: &str = "drain-agent.rules.yml";
const RULE_TESTS: &str = "drain-agent.rules.test.yml";

fn promtool(args: &[&str]) {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(DIR)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("promtool {}:\n{text}", args.join(" "));
    assert!(
        out.status.success(),
        "promtool {} failed:\n{text}",
        args.join(" ")
    );
}

#[test]
fn the_shipped_alert_rules_pass_promtool_and_their_unit_tests() {
    if !require_tool(
        "the_shipped_alert_rules_pass_promtool_and_their_unit_tests",
        "promtool",
    ) {
        return;
    }
    promtool(&["check", "rules", RULES]);
    promtool(&["test", "rules", RULE_TESTS]);
}

#[test]
fn the_rules_read_only_metrics_the_daemon_exposes() {
    let rules = std::fs::read_to_string(Path::new(DIR).join(RULES)).unwrap();
    let mut names: Vec<&str> = rules
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("drain_agent_"))
        .collect();
    names.sort();
    names.dedup();
    assert!(names.len() >= 5, "{names:?}");
    // EXPOSED is checked against the rendered exposition by the metrics module's own tests.
    for name in names {
        assert!(
            drain_agent::daemon::metrics::EXPOSED.contains(&name),
            "the rules read {name}, which the daemon does not expose (daemon::metrics::EXPOSED)"
        );
    }
}
