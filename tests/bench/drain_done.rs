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
use drain_lab::topology::{addr, can_run_lab, find_bin, Lab, LabOptions, Node};

fn unix_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        * 1000.0
}

/// One drain with one connection closed 300 ms after the divert; returns ms from close to done.
fn once(lab: &Lab, x: &str) -> f64 {
    let conn = drain_lab::netns::in_netns(x, || {
        let mut s = TcpStream::connect((addr::VIP, addr::ECHO_PORT)).unwrap();
        s.write_all(b"x").unwrap();
        let mut b = [0u8; 1];
        s.read_exact(&mut b).unwrap();
        s
    })
    .unwrap();
    let bin = find_bin("drain-agent").unwrap();
    let cfg = lab.dir.join("agent-lb1.yaml");
    let mut child = Command::new("ip")
        .args(["netns", "exec", &lab.node_ns(Node::Lb1)])
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
    let out = lab.agent(Node::Lb1, &["undrain"]).unwrap();
    assert!(out.status.success());
    lab.wait_vip_owner(Node::Lb1, Duration::from_secs(10))
        .unwrap();
    done.expect("drained event") - closed_at.unwrap()
}

fn main() {
    if !can_run_lab("bench drain_done", &[]) {
        return;
    }
    let mut lab = Lab::up(&LabOptions::default()).unwrap();
    let x = lab.add_client(1).unwrap();
    let out = {
        lab.write_agent_config(Node::Lb2, &AgentConfig::default())
            .unwrap();
        lab.agent(Node::Lb2, &["accept"]).unwrap()
    };
    assert!(out.status.success());
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
        lab.write_agent_config(Node::Lb1, &cfg).unwrap();
        let mut v: Vec<f64> = (0..10).map(|_| once(&lab, &x)).collect();
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
