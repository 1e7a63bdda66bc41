//! End-to-end: `drain-agent drain` on a real terminal (a tmux pane) during a lab drain under the
//! mixed load. The pane is captured at three moments — the divert, the drain under way, done —
//! and each capture must show what an operator needs then. The captures are printed, and kept in
//! `target/terminal-captures/` for the docs.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use drain_lab::scenario::{self, default_load, AgentConfig, Event, EventOutcome};
use drain_lab::topology::{can_run_lab, find_bin, Lab, LabOptions, Node};

/// A tmux server of our own, killed on drop.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn cmd(&self, args: &[&str]) -> std::process::Output {
        Command::new("tmux")
            .args(["-L", &self.socket])
            .args(args)
            .output()
            .expect("tmux runs")
    }

    fn capture(&self) -> String {
        let out = self.cmd(&["capture-pane", "-p", "-t", "drain"]);
        String::from_utf8_lossy(&out.stdout).trim_end().to_string()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd(&["kill-server"]);
    }
}

/// Polls the pane until `pred` holds (or `within` passes); returns the capture that matched.
fn wait_for(t: &Tmux, within: Duration, pred: impl Fn(&str) -> bool) -> Option<String> {
    let start = Instant::now();
    while start.elapsed() < within {
        let c = t.capture();
        if pred(&c) {
            return Some(c);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

#[test]
#[ignore = "needs root and network namespaces; `make test` runs it"]
fn drain_on_a_terminal_shows_phase_progress_and_a_summary() {
    if !can_run_lab("drain_on_a_terminal", &["tmux"]) {
        return;
    }
    let mut lab = Lab::up(&LabOptions::default()).unwrap();
    let cfg = lab
        .write_agent_config(Node::Lb1, &AgentConfig::default())
        .unwrap();
    lab.write_agent_config(Node::Lb2, &AgentConfig::default())
        .unwrap();
    let acc = lab.agent(Node::Lb2, &["accept"]).unwrap();
    assert!(acc.status.success());
    // Sessions long enough that the drain has something to wait for.
    let mut load = default_load();
    load.duration_ms = 12_000;
    load.echo.session_ms = 6_000;
    let captures = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(String, String)>::new()));
    let kept = captures.clone();
    let event = Event::Custom(Box::new(move |lab: &mut Lab, _clock| {
        let t = Tmux {
            socket: format!("drain-agent-test-{}", std::process::id()),
        };
        let bin = find_bin("drain-agent")?;
        let command = format!(
            "ip netns exec {} {} -c {} --local drain; echo EXIT=$?; sleep 60",
            lab.node_ns(Node::Lb1),
            bin.display(),
            cfg.display()
        );
        let started = t.cmd(&[
            "new-session",
            "-d",
            "-s",
            "drain",
            "-x",
            "150",
            "-y",
            "24",
            &command,
        ]);
        anyhow::ensure!(
            started.status.success(),
            "tmux: {}",
            String::from_utf8_lossy(&started.stderr)
        );
        let take = |name: &str, within: Duration, pred: &dyn Fn(&str) -> bool| {
            let c = wait_for(&t, within, pred)
                .unwrap_or_else(|| format!("(never matched)\n{}", t.capture()));
            kept.lock().unwrap().push((name.to_string(), c));
        };
        take("1-divert", Duration::from_secs(10), &|c| {
            c.contains("diverting new flows")
        });
        take("2-draining", Duration::from_secs(10), &|c| {
            c.lines().last().is_some_and(|l| {
                // Under way: new flows have gone to the peer and their rate is known.
                l.contains("draining")
                    && l.contains("left")
                    && l.contains("deadline in")
                    && l.contains("/s)")
                    && !l.contains(" 0 new flow(s)")
            })
        });
        take("3-done", Duration::from_secs(40), &|c| c.contains("EXIT="));
        Ok(EventOutcome::default())
    }));
    let r = scenario::run_in(
        &mut lab,
        "drain-on-a-terminal",
        &load,
        Duration::from_secs(4),
        event,
    )
    .unwrap();
    let caps = captures.lock().unwrap().clone();
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("../terminal-captures");
    std::fs::create_dir_all(&dir).unwrap();
    for (name, c) in &caps {
        println!("---- {name} ----\n{c}\n");
        std::fs::write(dir.join(format!("{name}.txt")), c).unwrap();
    }
    assert_eq!(r.broken, 0);
    let [(_, divert), (_, draining), (_, done)] = &caps[..] else {
        panic!("three captures expected: {caps:?}")
    };
    assert!(
        divert.contains("ready: peer answers for the VIP"),
        "{divert}"
    );
    // While draining, the status line shows the phase, the states left, the diverted flows, the
    // time to the deadline and the peer's health.
    let line = draining.lines().last().unwrap();
    assert!(!line.contains(" 0 new flow(s)"), "{line}");
    for part in [
        "draining",
        "left",
        "established",
        "new flow(s) diverted (",
        "deadline in",
        "peer ok",
    ] {
        assert!(
            line.contains(part),
            "{part:?} missing from the status line: {line}"
        );
    }
    // Done: the milestones, the summary, no status line left behind, exit 0.
    assert!(done.contains("failover:"), "{done}");
    assert!(done.contains("peer owns the VIP"), "{done}");
    assert!(
        done.contains("drained:") && done.contains("EXIT=0"),
        "{done}"
    );
    assert!(
        !done.lines().any(|l| l.contains("deadline in")),
        "status line left: {done}"
    );
    let out = lab.agent(Node::Lb1, &["undrain"]).unwrap();
    assert!(out.status.success());
}
