//! Benchmark: the cost of one metrics scrape's render — the exposition text of a typical node
//! (draining under load: six TCP states, two VIPs, a divert, in maintenance) and of a daemon that
//! has run a few drains. The node's state is read once, as the scrape's cached snapshot is; only
//! the render is timed. Prints the median ns/render over several batches, and the body's size.
//!
//! Run: `cargo bench --bench metrics_render` (no root needed; `-- --print` prints the body).

use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use drain_agent::config::DrainMode;
use drain_agent::daemon::metrics::Metrics;
use drain_agent::ops::status::{DivertState, Mode, Status, Tracked, VipState};
use drain_agent::ops::{DrainReason, DrainReport, Event, OpError, SocketCount};

/// Renders per batch, and batches: the median batch is reported.
const RENDERS: u32 = 20_000;
const BATCHES: usize = 9;

fn typical_node() -> Status {
    let by_state: BTreeMap<String, usize> = [
        ("established", 850),
        ("syn-recv", 2),
        ("fin-wait-1", 12),
        ("fin-wait-2", 5),
        ("close-wait", 3),
        ("last-ack", 1),
    ]
    .into_iter()
    .map(|(s, n)| (s.to_string(), n))
    .collect();
    Status {
        mode: Mode::Maintenance,
        since: Some(1_700_000_000),
        maintenance: Some(drain_agent::journal::Maintenance {
            reason: "kernel upgrade \"6.12\"".into(),
            by: "ops@bastion".into(),
            since: 1_700_000_000,
            drained: true,
        }),
        trigger_undone: None,
        vrrp: None,
        sockets: Some(SocketCount {
            total: by_state.values().sum(),
            idle: 140,
            by_state,
        }),
        lock_holder_pid: None,
        tracked_interface: Tracked {
            name: "trk0".into(),
            up: false,
        },
        vips: vec![
            VipState {
                address: "198.18.0.100".parse().unwrap(),
                local: false,
            },
            VipState {
                address: "198.18.0.101".parse().unwrap(),
                local: false,
            },
        ],
        divert_rules: vec![],
        divert_sets: vec![],
        divert: Some(DivertState {
            phase: None,
            diverted_flows: 41_230,
            diverted_packets: 1_220_455,
            recorded_flows: 41_100,
            record_members: 2,
            record_bytes: 4_194_304,
            capacity_per_port: 65_536,
            unrecorded_syns: 0,
            sealed_drops: 0,
        }),
        drain_journal: vec![],
        accept_journal: vec![],
        returning: None,
        return_journal: vec![],
        last_drain: None,
        state_errors: vec![],
    }
}

fn daemon_that_ran_drains() -> Metrics {
    let m = Metrics::default();
    for (i, mode) in [DrainMode::Drain, DrainMode::Handoff, DrainMode::Drain]
        .into_iter()
        .enumerate()
    {
        m.drain_started(mode);
        m.observe(&Event::PeerProbeFailed {
            consecutive: 1,
            answer: "no answer".into(),
        });
        m.observe(&Event::DivertTotals {
            diverted_flows: 1_000,
            recorded_flows: 1_000,
            diverted_packets: 30_000,
            unrecorded_syns: 0,
            sealed_drops: 0,
            record_bytes: 65_536,
        });
        let report = DrainReport {
            mode,
            reason: DrainReason::Empty,
            drain_ms: 4_300.0 * (i + 1) as f64,
            failover_ms: 850.0,
            total_ms: 6_000.0,
            install_ms: 2.0,
            abandoned: 0,
            diverted_flows: 1_000,
            recorded_flows: 1_000,
            unrecorded_syns: 0,
            sealed_drops: 0,
        };
        m.drain_finished(Ok(&report));
    }
    m.drain_started(DrainMode::Drain);
    m.drain_finished(Err(&OpError::Interrupted));
    m
}

fn main() {
    let status = Arc::new(typical_node());
    let metrics = daemon_that_ran_drains();
    let render = || metrics.render(Some(status.clone()));
    let body = render();
    // `-- --print`: the exposition itself, to compare two versions' output.
    if std::env::args().any(|a| a == "--print") {
        print!("{body}");
        return;
    }
    println!(
        "metrics render: {} bytes, {} lines",
        body.len(),
        body.lines().count()
    );
    let mut per_render: Vec<f64> = (0..BATCHES)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..RENDERS {
                black_box(render());
            }
            start.elapsed().as_nanos() as f64 / f64::from(RENDERS)
        })
        .collect();
    per_render.sort_by(f64::total_cmp);
    println!(
        "metrics render: median {:.0} ns/render (min {:.0}, max {:.0}; {BATCHES} batches of {RENDERS})",
        per_render[BATCHES / 2],
        per_render[0],
        per_render[BATCHES - 1]
    );
}
