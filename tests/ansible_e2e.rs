//! End to end: the `drain_agent.drain_agent` collection (`ansible/collection/`), built with
//! `ansible-galaxy collection build` and installed from that artifact, its role and playbooks run
//! by FQCN by the distribution's `ansible-playbook` in a controller namespace over real SSH (an sshd in every LB namespace, host keys checked) on two
//! keepalived + HAProxy pairs, under the lab's mixed load on both pairs the whole time:
//!
//! 1. the role in check mode on fresh nodes changes nothing (host snapshots equal);
//! 2. the role installs from scratch (binary, configuration, keepalived wiring, daemon, a passing
//!    `drain-agent check`), and its second run reports changed=0;
//! 3. the rolling maintenance with a maintenance task that fails on the third node stops there,
//!    both pairs serving, nothing of the agent left behind (no divert, only the failed node's
//!    deliberate out-of-service state);
//! 4. running it again (with fail_back) completes the rollout, every pair back as it began.
//!
//! Zero broken flows over all of it, and no handshake slower than the steady baseline's p99.9
//! plus 10 ms.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use std::collections::BTreeMap;

use drain_lab::fleet::{snapshot_diff, Fleet, PlaybookRun};
use drain_lab::load::{LoadReport, LoadSpec};
use drain_lab::topology::{addr, can_run_lab, Node};

/// Steady load before the first playbook: the baseline the handshakes are held to.
const BASELINE: Duration = Duration::from_secs(10);

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The collection's namespace.name, as ansible/collection/galaxy.yml says.
const COLLECTION: &str = "drain_agent.drain_agent";

/// A playbook of the installed collection, by FQCN.
fn playbook(name: &str) -> String {
    format!("{COLLECTION}.{name}")
}

/// The lab's mixed load, lowered so two pairs, four sshd and Ansible share the 2 cores: 200 short
/// HTTP requests/s, 5 echo sessions/s of 3 s with half-close, 2 keep-alive sessions/s, 1 slow
/// download/s, per pair; started with no end and stopped when the playbooks are done.
fn load_spec() -> LoadSpec {
    serde_json::from_value(serde_json::json!({
        "target": addr::VIP.to_string(),
        "http_port": addr::HTTP_PORT,
        "echo_port": addr::ECHO_PORT,
        "duration_ms": 900_000,
        "short": { "rate_per_s": 200.0 },
        "keepalive": { "sessions_per_s": 2.0, "interval_ms": 100, "session_ms": 3000 },
        "echo": { "sessions_per_s": 5.0, "session_ms": 3000, "chunk_bytes": 64, "interval_ms": 100 },
        "slow": { "downloads_per_s": 1.0, "ms": 3000, "bytes": 30000 },
        "baseline_until_ms": BASELINE.as_millis() as u64,
    }))
    .expect("a valid load spec")
}

fn show(label: &str, r: &PlaybookRun) {
    println!(
        "\n=== {label}: exit {} in {:.1} s\n$ {}\nPLAY RECAP",
        r.exit_code,
        r.elapsed.as_secs_f64(),
        r.command
    );
    for l in &r.recap_lines {
        println!("{l}");
    }
    // What the playbook said about each drain and each failure.
    for l in r
        .stdout
        .lines()
        .filter(|l| l.contains("\"msg\": ") || l.starts_with("fatal:") || l.contains("FAILED!"))
    {
        println!("  {}", l.trim());
    }
}

fn assert_ok(label: &str, r: &PlaybookRun, hosts: usize) {
    assert_eq!(r.exit_code, 0, "{label} failed:\n{}", r.tail(80));
    assert_eq!(r.recap.len(), hosts, "{label}: recap {:?}", r.recap_lines);
    for (host, c) in &r.recap {
        assert!(
            c.failed == 0 && c.unreachable == 0,
            "{label}: {host} {c:?}\n{}",
            r.tail(80)
        );
    }
}

/// What every node's agent reports: (mode, holds the VIP, accepting, divert rules, divert sets,
/// drain journal kinds).
fn agent_state(fleet: &Fleet, name: &str) -> (String, bool, bool, usize, usize, Vec<String>) {
    let s = fleet.agent_status(fleet.node(name)).unwrap();
    let kinds = s["drain_journal"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap_or("?").to_string())
        .collect();
    (
        s["mode"].as_str().unwrap().to_string(),
        s["vips"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["local"] == true),
        !s["accept_journal"].as_array().unwrap().is_empty(),
        s["divert_rules"].as_array().unwrap().len(),
        s["divert_sets"].as_array().unwrap().len(),
        kinds,
    )
}

/// Every node's snapshot equal, or the differing lines of each node that differs.
fn assert_same(what: &str, before: &BTreeMap<String, String>, after: &BTreeMap<String, String>) {
    let diffs: Vec<String> = before
        .iter()
        .filter(|(node, b)| after.get(*node) != Some(b))
        .map(|(node, b)| {
            format!(
                "{node}:\n{}",
                snapshot_diff(b, after.get(node).map_or("", String::as_str))
            )
        })
        .collect();
    assert!(
        diffs.is_empty(),
        "{what} changed nodes:\n{}",
        diffs.join("\n")
    );
}

fn flow_table(reports: &[LoadReport]) -> String {
    let mut s = format!(
        "{:<6} {:>7} {:>7} {:>6} {:>6} {:>9} {:>6} {:>15} {:>15} {:>16}\n",
        "pair",
        "flows",
        "broken",
        "short",
        "echo",
        "keepalive",
        "slow",
        "hs-p99.9-steady",
        "hs-max-after",
        "connect-max-ms"
    );
    for (i, r) in reports.iter().enumerate() {
        s.push_str(&format!(
            "{:<6} {:>7} {:>7} {:>6} {:>6} {:>9} {:>6} {:>15.3} {:>15.3} {:>16.1}\n",
            format!("pair{}", i + 1),
            r.totals.started,
            r.broken(),
            r.classes.short.started,
            r.classes.echo.started,
            r.classes.keepalive.started,
            r.classes.slow.started,
            r.handshake_baseline_ms.p999,
            r.handshake_after_baseline_ms.max,
            r.setup_latency_ms.max,
        ));
    }
    s
}

#[test]
#[ignore = "needs root and network namespaces; `make test` runs it"]
fn ansible_installs_the_role_and_rolls_maintenance_over_ssh_on_two_pairs_without_breaking_a_flow() {
    if !can_run_lab(
        "ansible_e2e",
        &[
            "ansible-playbook",
            "ansible-galaxy",
            "ssh",
            "ssh-keygen",
            "socat",
            "start-stop-daemon",
            "systemd-analyze",
            "sha256sum",
        ],
    ) {
        return;
    }
    let t0 = Instant::now();
    let fleet = Fleet::up(2).unwrap();
    println!(
        "fleet up in {:.1} s: {} nodes, inventory {}",
        t0.elapsed().as_secs_f64(),
        fleet.nodes.len(),
        fleet.inventory_path().display()
    );
    let collection = fleet
        .install_collection(&repo().join("ansible/collection"))
        .unwrap();
    println!(
        "collection built as {} and installed in {}",
        collection.tarball.display(),
        collection.root.display()
    );
    let scratch = fleet.snapshot().unwrap();
    let loads = fleet.start_load(&load_spec()).unwrap();
    std::thread::sleep(BASELINE);

    // 1. Check mode on nodes that have nothing yet: predicts, changes nothing.
    let r = fleet
        .ansible_playbook(&playbook("install"), &["--check", "--diff"])
        .unwrap();
    show("role, check mode, fresh nodes", &r);
    assert_ok("check mode", &r, 4);
    assert!(
        r.recap.values().all(|c| c.changed > 0),
        "check mode predicts the install"
    );
    assert!(
        r.stdout.contains("+++ after"),
        "--diff shows the files: {}",
        r.tail(40)
    );
    assert_same("check mode", &scratch, &fleet.snapshot().unwrap());

    // 2. The install, then the same again: changed=0.
    let r = fleet.ansible_playbook(&playbook("install"), &[]).unwrap();
    show("role, install", &r);
    assert_ok("install", &r, 4);
    assert!(r.recap.values().all(|c| c.changed > 0));
    for n in &fleet.nodes {
        let (mode, holds, accepting, rules, sets, journal) = agent_state(&fleet, &n.name);
        assert_eq!(mode, "serving", "{}", n.name);
        assert!(rules == 0 && sets == 0 && journal.is_empty(), "{}", n.name);
        // The BACKUP accepts diverted traffic from the start; the MASTER does not need to.
        assert_eq!(
            accepting, !holds,
            "{}: holds {holds}, accepting {accepting}",
            n.name
        );
        assert!(
            n.socket().exists(),
            "{}: the daemon serves its control socket",
            n.name
        );
        let verify = std::process::Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(n.unit())
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&verify.stderr).to_string()
            + &String::from_utf8_lossy(&verify.stdout);
        assert_eq!(said.trim(), "", "{}: the rendered unit: {said}", n.name);
    }
    let unit = std::fs::read_to_string(fleet.nodes[0].unit()).unwrap();
    let shipped = std::fs::read_to_string(repo().join("keepalived/drain-agent.service")).unwrap();
    for line in shipped.lines().filter(|l| {
        let l = l.trim();
        !l.is_empty()
            && !l.starts_with('#')
            && !l.starts_with("ExecStart=")
            && !l.starts_with("StateDirectory")
            && !l.starts_with("RuntimeDirectory")
            && !l.starts_with("Documentation=")
    }) {
        assert!(
            unit.lines().any(|u| u.trim() == line.trim()),
            "the role's unit lacks `{line}` of keepalived/drain-agent.service"
        );
    }
    let installed = fleet.snapshot().unwrap();
    let owners: Vec<Option<Node>> = (0..2).map(|p| fleet.vip_owner(p).unwrap()).collect();
    assert_eq!(owners, [Some(Node::Lb1), Some(Node::Lb1)]);

    let r = fleet.ansible_playbook(&playbook("install"), &[]).unwrap();
    show("role, second run", &r);
    assert_ok("second run", &r, 4);
    for (host, c) in &r.recap {
        assert_eq!(
            c.changed,
            0,
            "{host}: the second run changed something\n{}",
            r.tail(60)
        );
    }
    assert_same("the second run", &installed, &fleet.snapshot().unwrap());

    // Handlers restart only what changed: a new agent setting restarts the daemon, and keepalived
    // is left alone.
    let daemon_pid =
        |n: &str| std::fs::read_to_string(fleet.node(n).root.join("run/drain-agent.pid")).unwrap();
    let pid_before = daemon_pid("p1-lb1");
    let r = fleet
        .ansible_playbook(
            &playbook("install"),
            &["-e", "drain_agent_idle_threshold=3s"],
        )
        .unwrap();
    show("role, one agent setting changed", &r);
    assert_ok("setting changed", &r, 4);
    for (host, c) in &r.recap {
        assert_eq!(
            c.changed,
            3,
            "{host}: the configuration and the daemon's restart (stop, start)\n{}",
            r.tail(60)
        );
    }
    assert!(r
        .stdout
        .contains("RUNNING HANDLER [drain_agent.drain_agent.drain_agent : Start the daemon (start-stop-daemon)]"));
    assert!(
        !r.stdout.contains("Reload keepalived"),
        "keepalived was reloaded:\n{}",
        r.tail(60)
    );
    assert_ne!(
        pid_before,
        daemon_pid("p1-lb1"),
        "the daemon was not restarted"
    );

    // Bad inputs and refused calls: one clear line each, nothing changed.
    let before_errors = fleet.snapshot().unwrap();
    let r = fleet
        .ansible_playbook(
            &playbook("install"),
            &[
                "--limit",
                "p1-lb1",
                "-e",
                r#"{"drain_agent_vips": [{"address": "198.18.0.300", "ports": [80]}]}"#,
            ],
        )
        .unwrap();
    show("role, a VIP that is not an address", &r);
    assert_ne!(r.exit_code, 0);
    assert!(
        r.stdout
            .contains("drain_agent_vips must be a non-empty list"),
        "{}",
        r.tail(30)
    );
    let r = fleet
        .ansible_playbook(
            &playbook("install"),
            &[
                "--limit",
                "p1-lb1",
                "-e",
                "drain_agent_failover_method=teleport",
            ],
        )
        .unwrap();
    show("role, an unknown failover method", &r);
    assert_ne!(r.exit_code, 0);
    assert!(
        r.stdout
            .contains("drain_agent_failover_method must be one of: link-down, track-file"),
        "{}",
        r.tail(30)
    );
    let backup = fleet.node("p1-lb2");
    let module_args = format!(
        "state=drained binary={} config={} socket={}",
        backup.binary().display(),
        backup.config().display(),
        backup.socket().display()
    );
    let module = format!("{COLLECTION}.drain_agent");
    let r = fleet
        .ansible_adhoc(&["p1-lb2", "-m", &module, "-a", &module_args])
        .unwrap();
    show("module, drain on the BACKUP", &r);
    assert_ne!(r.exit_code, 0);
    for words in [
        "does not hold the VIP",
        "exit 7",
        "nothing was changed",
        "\"rc\": 7",
        "\"nothing_changed\": true",
    ] {
        assert!(r.stdout.contains(words), "`{words}` missing:\n{}", r.stdout);
    }
    assert_same(
        "the refused calls",
        &before_errors,
        &fleet.snapshot().unwrap(),
    );

    // The rollout in check mode: reads every node, probes every drain, changes nothing.
    let r = fleet
        .ansible_playbook(&playbook("rolling_maintenance"), &["--check", "--diff"])
        .unwrap();
    show("rolling maintenance, check mode", &r);
    assert_ok("rolling check mode", &r, 4);
    assert!(
        r.stdout.contains("+mode: maintenance")
            && r.stdout.contains("+maintenance: rolling maintenance"),
        "the diff shows the predicted maintenance:\n{}",
        r.tail(60)
    );
    assert_same(
        "the rollout in check mode",
        &before_errors,
        &fleet.snapshot().unwrap(),
    );

    // 3. A rollout whose maintenance fails on the third node (p2-lb1).
    let failing = fleet.dir.join("failing-maintenance.yml");
    std::fs::write(
        &failing,
        format!(
            "---\n- name: The example maintenance\n  ansible.builtin.include_tasks: {}\n\
             - name: Fail on purpose on p2-lb1\n  ansible.builtin.fail:\n    msg: deliberate failure\n  \
             when: inventory_hostname == 'p2-lb1'\n",
            collection
                .root
                .join("playbooks/maintenance/haproxy.yml")
                .display()
        ),
    )
    .unwrap();
    let arg = format!("maintenance_tasks={}", failing.display());
    let r = fleet
        .ansible_playbook(&playbook("rolling_maintenance"), &["-e", &arg])
        .unwrap();
    show("rolling maintenance, failing on p2-lb1", &r);
    assert_ne!(r.exit_code, 0, "the rollout must fail:\n{}", r.tail(60));
    assert_eq!(r.recap["p2-lb1"].failed, 1, "{:?}", r.recap_lines);
    assert_eq!(r.recap["p2-lb1"].rescued, 1, "{:?}", r.recap_lines);
    assert!(
        !r.recap.contains_key("p2-lb2"),
        "the rollout went on past the failure: {:?}",
        r.recap_lines
    );
    assert!(r.stdout.contains("deliberate failure") && r.stdout.contains("resumes with this node"));
    // Both pairs serve; the failed node stays out of service on purpose, and nothing else of the
    // agent is left anywhere.
    assert_eq!(
        fleet.vip_owner(0).unwrap(),
        Some(Node::Lb1),
        "pair1: two swaps"
    );
    assert_eq!(
        fleet.vip_owner(1).unwrap(),
        Some(Node::Lb2),
        "pair2 served by p2-lb2"
    );
    for n in &fleet.nodes {
        let (mode, _, _, rules, sets, journal) = agent_state(&fleet, &n.name);
        assert!(rules == 0 && sets == 0, "{}: a divert was left", n.name);
        if n.name == "p2-lb1" {
            assert_eq!(
                (mode.as_str(), journal),
                ("maintenance", vec!["link-down".to_string()])
            );
            let s = fleet.agent_status(n).unwrap();
            assert!(
                s["maintenance"]["reason"]
                    .as_str()
                    .is_some_and(|r| r.starts_with("rolling maintenance"))
                    && s["maintenance"]["drained"] == true,
                "{}: the maintenance record says why and that it drained: {}",
                n.name,
                s["maintenance"]
            );
        } else {
            assert_eq!(mode, "serving", "{}", n.name);
            assert!(journal.is_empty(), "{}: {journal:?}", n.name);
        }
    }

    // 4. Again, with fail-back: resumes at p2-lb1, completes, every pair ends as it began.
    let r = fleet
        .ansible_playbook(&playbook("rolling_maintenance"), &["-e", "fail_back=true"])
        .unwrap();
    show("rolling maintenance, again with fail_back=true", &r);
    assert_ok("rolling re-run", &r, 4);
    // The BACKUPs of this rollout (p1-lb2, p2-lb2) were kept out of elections, not drained.
    for backup in ["p1-lb2", "p2-lb2"] {
        assert!(
            r.stdout.contains(&format!(
                "{backup} held no VIP: nothing to drain; kept out of elections"
            )),
            "{backup} was not put in stand-by:\n{}",
            r.tail(80)
        );
    }
    assert_eq!(fleet.vip_owner(0).unwrap(), Some(Node::Lb1));
    assert_eq!(fleet.vip_owner(1).unwrap(), Some(Node::Lb1));

    let reports = fleet.stop_load(loads).unwrap();
    println!("\nflows (both pairs, whole run):\n{}", flow_table(&reports));
    for (i, rep) in reports.iter().enumerate() {
        print!("pair{}:\n{}", i + 1, rep.table());
    }
    for (i, rep) in reports.iter().enumerate() {
        assert_eq!(
            rep.broken(),
            0,
            "pair{}: broken flows: {}",
            i + 1,
            serde_json::to_string_pretty(&rep.failures.iter().take(20).collect::<Vec<_>>())
                .unwrap()
        );
        let (steady, after) = (&rep.handshake_baseline_ms, &rep.handshake_after_baseline_ms);
        assert!(
            steady.count > 1000 && after.count > 10_000,
            "pair{}: {steady:?} {after:?}",
            i + 1
        );
        if let Err(stall) = rep.stall_check() {
            panic!("pair{}: {stall}", i + 1);
        }
    }
    // Back where the install left every node: same network state, same agent state.
    let net = |all: &BTreeMap<String, String>| -> BTreeMap<String, String> {
        all.iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    v[..v.find("## files").unwrap_or(v.len())].to_string(),
                )
            })
            .collect()
    };
    assert_same(
        "the rollout",
        &net(&installed),
        &net(&fleet.snapshot().unwrap()),
    );
    for n in &fleet.nodes {
        let (mode, holds, accepting, rules, sets, journal) = agent_state(&fleet, &n.name);
        assert_eq!(mode, "serving", "{}", n.name);
        assert!(rules == 0 && sets == 0 && journal.is_empty(), "{}", n.name);
        assert_eq!(accepting, !holds, "{}", n.name);
    }
    println!("\ntest wall time {:.1} s", t0.elapsed().as_secs_f64());
}
