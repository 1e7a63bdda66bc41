use super::http::serve_with;
use super::*;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

use crate::config::DrainMode;
use crate::ops::status::{Mode, Status};
use crate::ops::{DrainReport, Event, OpError};

#[test]
fn phases_follow_the_daemons_drain_and_counters_count_it() {
    let m = Metrics::default();
    let phase = |m: &Metrics| {
        let text = m.render(None);
        PHASES
            .iter()
            .find(|p| text.contains(&format!("drain_agent_phase{{phase=\"{p}\"}} 1")))
            .copied()
    };
    assert_eq!(phase(&m), None);
    m.drain_started(DrainMode::Handoff);
    assert_eq!(phase(&m), Some("preflight"));
    m.observe(&Event::Diverted { install_ms: 1.0 });
    assert_eq!(phase(&m), Some("draining"));
    m.observe(&Event::FailoverTriggered {
        trigger: "trk0 down".into(),
    });
    assert_eq!(phase(&m), Some("failing-over"));
    m.observe(&Event::PeerOwnsVip { after_ms: 600.0 });
    assert_eq!(phase(&m), Some("handing-off"));
    m.observe(&Event::PeerProbeFailed {
        consecutive: 1,
        answer: "no answer".into(),
    });
    m.drain_finished(Err(&OpError::Interrupted));
    assert_eq!(phase(&m), None);
    let text = m.render(None);
    assert!(
        text.contains("drain_agent_drains_total{mode=\"handoff\",result=\"failed\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("drain_agent_peer_probe_failures_total 1"),
        "{text}"
    );
    assert!(
        text.contains("drain_agent_drain_duration_seconds_count 0"),
        "{text}"
    );
    assert!(text.contains("drain_agent_status_ok 0"), "{text}");
}

/// A node in maintenance with a divert in place and connections left: every family shows.
fn maintenance_node(reason: &str) -> Status {
    use crate::ops::status::{DivertState, Tracked, VipState};
    Status {
        mode: Mode::Maintenance,
        since: Some(1_700_000_000),
        maintenance: Some(crate::journal::Maintenance {
            reason: reason.into(),
            by: "ops".into(),
            since: 1_700_000_000,
            drained: true,
        }),
        trigger_undone: None,
        vrrp: None,
        sockets: Some(crate::ops::SocketCount {
            total: 3,
            idle: 1,
            by_state: [
                ("established".to_string(), 2),
                ("fin-wait-1".to_string(), 1),
            ]
            .into(),
        }),
        lock_holder_pid: None,
        tracked_interface: Tracked {
            name: "trk0".into(),
            up: false,
        },
        vips: vec![VipState {
            address: "198.18.0.100".parse().unwrap(),
            local: false,
        }],
        divert_rules: vec![],
        divert_sets: vec![],
        divert: Some(DivertState {
            phase: None,
            diverted_flows: 10,
            diverted_packets: 40,
            recorded_flows: 7,
            record_members: 1,
            record_bytes: 4096,
            capacity_per_port: 100,
            unrecorded_syns: 3,
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

/// A drain of `mode` that took `drain_ms`, then `failover_ms` until the peer owned the VIPs.
fn drained(mode: DrainMode, drain_ms: f64, failover_ms: f64) -> Result<DrainReport, OpError> {
    Ok(DrainReport {
        mode,
        reason: crate::ops::DrainReason::Empty,
        drain_ms,
        failover_ms,
        total_ms: drain_ms + failover_ms,
        install_ms: 1.0,
        abandoned: 0,
        diverted_flows: 0,
        recorded_flows: 0,
        unrecorded_syns: 0,
        sealed_drops: 0,
    })
}

#[test]
fn the_gauges_the_alerts_read_come_from_the_nodes_status() {
    let status = maintenance_node("kernel \"upgrade\"");
    let text = Metrics::default().render(Some(Arc::new(status.clone())));
    for line in [
        "drain_agent_phase{phase=\"maintenance\"} 1",
        "drain_agent_divert_unrecorded_syns 3",
        "drain_agent_maintenance 1",
        "drain_agent_maintenance_since_seconds 1700000000",
        "drain_agent_maintenance_info{reason=\"kernel \\\"upgrade\\\"\",by=\"ops\"} 1",
    ] {
        assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
    }
    // Serving, no divert: the alerts' gauges say so rather than vanish.
    let serving = Status {
        mode: Mode::Serving,
        maintenance: None,
        divert: None,
        ..status
    };
    let text = Metrics::default().render(Some(Arc::new(serving)));
    assert!(
        text.contains("\ndrain_agent_divert_unrecorded_syns 0\n"),
        "{text}"
    );
    assert!(text.contains("\ndrain_agent_maintenance 0\n"), "{text}");
    assert!(
        !text.contains("drain_agent_maintenance_since_seconds"),
        "{text}"
    );
}

/// Bound of the waits below: only reached when something hangs.
const HANG: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_scrapes_read_the_node_once_per_interval() {
    let snap = Arc::new(Snapshot::new(Duration::from_secs(3600), || {
        // Slow like a real read, so the scrapes overlap it.
        std::thread::sleep(Duration::from_millis(100));
        None
    }));
    let scrapes: Vec<_> = (0..200)
        .map(|_| {
            let s = snap.clone();
            tokio::spawn(async move { s.get(0).await })
        })
        .collect();
    for s in scrapes {
        assert!(s.await.unwrap().is_none());
    }
    assert_eq!(snap.reads(), 1, "one read for 200 scrapes");
    let stale = Snapshot::new(Duration::ZERO, || None);
    for _ in 0..3 {
        stale.get(0).await;
    }
    assert_eq!(stale.reads(), 3, "a stale snapshot is read again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrapes_during_a_refresh_get_the_previous_snapshot_at_once() {
    let (release, gate) = std::sync::mpsc::channel::<()>();
    let gate = Mutex::new(gate);
    let calls = std::sync::atomic::AtomicU32::new(0);
    let snap = Arc::new(Snapshot::new(Duration::ZERO, move || {
        if calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 1 {
            // The second read hangs until the test lets it go.
            let _ = gate.lock().unwrap().recv_timeout(HANG);
        }
        None
    }));
    snap.get(0).await;
    let slow = {
        let s = snap.clone();
        tokio::spawn(async move { s.get(0).await })
    };
    let start = Instant::now();
    while snap.reads() < 2 {
        assert!(start.elapsed() < HANG, "the second refresh never started");
        tokio::task::yield_now().await;
    }
    tokio::time::timeout(HANG, snap.get(0))
        .await
        .expect("a scrape during a refresh does not wait for it");
    assert_eq!(snap.reads(), 2, "no second refresh at the same time");
    release.send(()).unwrap();
    slow.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_from_before_the_daemons_drain_ended_is_never_shown_after_it() {
    // The monitoring e2e saw "failed-over, draining, failed-over": the snapshot read while
    // the drain held the lock (mode draining) was served for up to a second after it ended.
    let m = Metrics::default();
    let (release, gate) = std::sync::mpsc::channel::<()>();
    let gate = Mutex::new(gate);
    let calls = std::sync::atomic::AtomicU32::new(0);
    let snap = Arc::new(Snapshot::new(Duration::from_secs(3600), move || {
        if calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 1 {
            // The read after the drain's end hangs until the test lets it go.
            let _ = gate.lock().unwrap().recv_timeout(HANG);
        }
        None
    }));
    m.drain_started(DrainMode::Drain);
    snap.get(m.generation()).await;
    snap.get(m.generation()).await;
    assert_eq!(snap.reads(), 1, "fresh within the interval: read once");
    m.drain_finished(Err(&OpError::Interrupted));
    let after = m.generation();
    let first = {
        let s = snap.clone();
        tokio::spawn(async move { s.get(after).await })
    };
    let start = Instant::now();
    while snap.reads() < 2 {
        assert!(
            start.elapsed() < HANG,
            "the drain's end did not force a read"
        );
        tokio::task::yield_now().await;
    }
    // A scrape while that read runs must wait for it, not take the old snapshot.
    let mut second = {
        let s = snap.clone();
        tokio::spawn(async move { s.get(after).await })
    };
    assert!(
        tokio::time::timeout(Duration::from_millis(50), &mut second)
            .await
            .is_err(),
        "served the snapshot from before the end"
    );
    release.send(()).unwrap();
    first.await.unwrap();
    second.await.unwrap();
    assert_eq!(snap.reads(), 2, "the waiter took the new reading");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_cap_are_closed_and_the_others_served() {
    use tokio::io::AsyncReadExt;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let snap = Arc::new(Snapshot::new(Duration::from_secs(3600), || None));
    let server = tokio::spawn(serve_with(listener, snap, Arc::new(Metrics::default()), 2));
    let scrape = || async move {
        let mut c = TcpStream::connect(addr).await.unwrap();
        let _ = c.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").await;
        let mut out = Vec::new();
        let _ = tokio::time::timeout(HANG, c.read_to_end(&mut out)).await;
        String::from_utf8_lossy(&out).into_owned()
    };
    assert!(scrape().await.starts_with("HTTP/1.1 200"));
    // Two idle connections take both slots (each is served once accepted: wait for that).
    let idle = [
        TcpStream::connect(addr).await.unwrap(),
        TcpStream::connect(addr).await.unwrap(),
    ];
    let refused = scrape().await;
    assert_eq!(refused, "", "the third connection is closed unanswered");
    drop(idle);
    let start = Instant::now();
    loop {
        if scrape().await.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(start.elapsed() < HANG, "the slots never came back");
    }
    server.abort();
}

#[test]
fn histograms_are_cumulative_and_label_values_escaped() {
    let m = Metrics::default();
    for (drain_ms, failover_ms) in [(300.0, 600.0), (7000.0, 800.0)] {
        m.drain_started(DrainMode::Drain);
        m.drain_finished(drained(DrainMode::Drain, drain_ms, failover_ms).as_ref());
    }
    let text = m.render(Some(Arc::new(maintenance_node("a \"b\"\\\nc"))));
    let x = "drain_agent_drain_duration_seconds";
    for line in [
        format!("{x}_bucket{{le=\"0.25\"}} 0"),
        format!("{x}_bucket{{le=\"0.5\"}} 1"),
        format!("{x}_bucket{{le=\"10\"}} 2"),
        format!("{x}_bucket{{le=\"3600\"}} 2"),
        format!("{x}_bucket{{le=\"+Inf\"}} 2"),
        format!("{x}_sum 7.3"),
        format!("{x}_count 2"),
        "drain_agent_failover_duration_seconds_bucket{le=\"1\"} 2".into(),
        "drain_agent_drains_total{mode=\"drain\",result=\"drained\"} 2".into(),
        "drain_agent_drains_total{mode=\"handoff\",result=\"failed\"} 0".into(),
        // Backslash, double quote and newline escaped, as the text format wants.
        "drain_agent_maintenance_info{reason=\"a \\\"b\\\"\\\\\\nc\",by=\"ops\"} 1".into(),
    ] {
        assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
    }
}

#[test]
fn the_exposition_carries_exactly_the_exposed_names_and_passes_promtool() {
    let m = Metrics::default();
    m.drain_started(DrainMode::Handoff);
    m.drain_finished(drained(DrainMode::Handoff, 1200.0, 700.0).as_ref());
    let text = m.render(Some(Arc::new(maintenance_node("kernel"))));
    let mut families: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    families.sort_unstable();
    let mut exposed = EXPOSED.to_vec();
    exposed.sort_unstable();
    assert_eq!(families, exposed, "{text}");
    assert!(!text.contains("# EOF"), "not OpenMetrics: {text}");
    let test = "the_exposition_carries_exactly_the_exposed_names_and_passes_promtool";
    if !drain_test_support::require_tool(test, "promtool") {
        return;
    }
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
