//! Benchmark: time from the last connection closing to `drain-agent drain` declaring the drain
//! done. Runs in the lab (real keepalived + HAProxy; root): one echo connection through HAProxy,
//! `drain` starts, the client closes the connection, and the agent's `drained` event is compared
//! with the moment of the close. Repeated; prints median / p90 / max for two poll intervals (the
//! agent also wakes on sock_diag destroy events, so the poll interval should barely matter).
//!
//! Run: `cargo bench --bench drain_done` (as root).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use drain_lab::scenario::AgentConfig;
use drain_lab::topology::{addr, can_run_lab, find_bin, wait_until, Lab, LabOptions, Node};

fn unix_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        * 1000.0
}

/// One drain of `node` (the current MASTER) with one connection closed 300 ms after the divert,
/// then `undrain`; returns ms from the close to the drain being declared done.
fn once(lab: &Lab, x: &str, node: Node) -> f64 {
    let conn = drain_test_support::netns::in_netns(x, || {
        let mut s = TcpStream::connect((addr::VIP, addr::ECHO_PORT)).unwrap();
        s.write_all(b"x").unwrap();
        let mut b = [0u8; 1];
        s.read_exact(&mut b).unwrap();
        s
    })
    .unwrap();
    let bin = find_bin("drain-agent").unwrap();
    let cfg = lab.dir.join(format!("agent-{node}.yaml"));
    let mut child = Command::new("ip")
        .args(["netns", "exec", &lab.node_ns(node)])
        .arg(&bin)
        .arg("-c")
        .arg(&cfg)
        .args(["--json", "drain"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut closed_at = None;
    let mut done = None;
    for line in lines.by_ref() {
        let v: serde_json::Value = serde_json::from_str(&line.unwrap()).unwrap();
        if v["event"] == "diverted" {
            std::thread::sleep(Duration::from_millis(300));
            closed_at = Some(unix_ms());
            drop(conn);
            break;
        }
    }
    for line in lines.by_ref() {
        let v: serde_json::Value = serde_json::from_str(&line.unwrap()).unwrap();
        if v["event"] == "drained" {
            done = v["ts_ms"].as_f64();
        }
    }
    assert!(child.wait().unwrap().success(), "drain failed");
    let out = lab.agent(node, &["undrain"]).unwrap();
    assert!(out.status.success());
    // The drained node comes back as BACKUP (notify makes it accept): the next drain's peer.
    wait_until(
        "the drained node to accept as BACKUP",
        Duration::from_secs(10),
        || lab.accepting(node).unwrap(),
    )
    .unwrap();
    done.expect("drained event") - closed_at.unwrap()
}

fn main() {
    if !can_run_lab("bench drain_done", &[]) {
        return;
    }
    // keepalived's notify runs the agent, as in production: the BACKUP accepts by itself.
    let mut lab = Lab::up(&LabOptions {
        agent_notify: true,
        ..LabOptions::default()
    })
    .unwrap();
    let x = lab.add_client(1).unwrap();
    println!("time from the last connection closing to the drain being declared done (ms)");
    println!(
        "{:<14} {:>5} {:>8} {:>8} {:>8}",
        "poll_interval", "runs", "median", "p90", "max"
    );
    for poll in ["100ms", "1s"] {
        let cfg = AgentConfig {
            poll_interval: poll.into(),
            post_wait: "0s".into(),
            ..AgentConfig::default()
        };
        for node in Node::ALL {
            lab.write_agent_config(node, &cfg).unwrap();
        }
        // Each drain moves the VIP; the next one drains the node that holds it then.
        let mut v: Vec<f64> = (0..10)
            .map(|_| {
                let owner = lab.vip_owner().unwrap().expect("one node holds the VIP");
                once(&lab, &x, owner)
            })
            .collect();
        v.sort_by(f64::total_cmp);
        println!(
            "{:<14} {:>5} {:>8.1} {:>8.1} {:>8.1}",
            poll,
            v.len(),
            v[v.len() / 2],
            v[v.len() * 9 / 10 - 1],
            v[v.len() - 1]
        );
    }
}
