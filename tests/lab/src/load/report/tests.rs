//! Unit tests of the report: percentiles, counts and the timeline, the capped failure list, the
//! connect-stall check and the JSON round trip.

use super::*;

fn rec(id: usize, class: FlowClass, start: f64, end: f64, outcome: Outcome) -> FlowRecord {
    FlowRecord {
        id,
        class,
        scheduled_ms: start,
        start_ms: start,
        end_ms: end,
        setup_ms: (outcome != Outcome::Refused).then_some(id as f64),
        handshake_ms: (outcome != Outcome::Refused).then_some(id as f64 / 2.0),
        outcome,
        detail: if outcome == Outcome::Ok {
            String::new()
        } else {
            format!("flow {id}")
        },
        requests_ok: u64::from(outcome == Outcome::Ok),
        latency_ms: (class == FlowClass::Short).then_some(end - start),
    }
}

#[test]
fn percentiles_are_nearest_rank() {
    let s = LatencySummary::from_samples((1..=1000).rev().map(f64::from).collect());
    assert_eq!(s.count, 1000);
    assert_eq!((s.p50, s.p99, s.p999, s.max), (500.0, 990.0, 999.0, 1000.0));
    let one = LatencySummary::from_samples(vec![7.5]);
    assert_eq!((one.p50, one.p999, one.max), (7.5, 7.5, 7.5));
    assert_eq!(LatencySummary::from_samples(vec![]).count, 0);
}

#[test]
fn counts_timeline_and_failures() {
    let spec = LoadSpec {
        duration_ms: 300,
        ..LoadSpec::default()
    };
    let records = vec![
        rec(0, FlowClass::Short, 0.0, 5.0, Outcome::Ok),
        rec(1, FlowClass::Short, 150.0, 260.0, Outcome::Reset),
        rec(2, FlowClass::Echo, 120.0, 3100.0, Outcome::Ok),
        rec(3, FlowClass::Short, 310.0, 311.0, Outcome::Refused),
        rec(4, FlowClass::Slow, 50.0, 55.0, Outcome::BadData),
    ];
    let r = build(&spec, &records, 3200.0, false, vec![]);
    assert_eq!((r.totals.started, r.totals.ok, r.totals.failed), (5, 2, 3));
    assert_eq!(r.broken(), 3);
    let s = &r.classes.short;
    assert_eq!((s.started, s.ok, s.reset, s.refused), (3, 1, 1, 1));
    assert_eq!(s.started, s.ok + s.failed());
    // Flow 3 started after the 300 ms window: 2 of 3 on time.
    assert!((s.achieved_per_s - 2.0 * 1000.0 / 300.0).abs() < 1e-9);
    assert_eq!(s.offered_per_s, 500.0);
    assert_eq!(r.classes.slow.bad_data, 1);
    // Failures by start time.
    let starts: Vec<f64> = r.failures.iter().map(|f| f.start_ms).collect();
    assert_eq!(starts, vec![50.0, 150.0, 310.0]);
    assert_eq!(r.failures[1].detail, "flow 1");
    // Timeline: started by start time, ok/failed by end time.
    assert_eq!(r.timeline.len(), 32);
    assert_eq!(r.timeline[0].started, 2);
    assert_eq!((r.timeline[0].ok, r.timeline[0].failed), (1, 1));
    assert_eq!(r.timeline[1].started, 2);
    assert_eq!(r.timeline[2].failed, 1);
    assert_eq!(r.timeline[31].ok, 1);
    assert_eq!(r.timeline[31].t_ms, 3100);
    let sum: u64 = r.timeline.iter().map(|b| b.ok + b.failed).sum();
    assert_eq!(sum, 5);
    // Setups: refused flows have none; slowest first.
    assert_eq!(r.setup_latency_ms.count, 4);
    assert_eq!(r.slowest_setups[0].setup_ms, 4.0);
    // Short latency only from ok short flows.
    assert_eq!(r.short_latency_ms.count, 1);
    assert_eq!(r.short_latency_ms.max, 5.0);
    let table = r.table();
    assert!(table.contains("BROKEN 3"), "{table}");
    assert!(table.contains("reset"), "{table}");
}

#[test]
fn baseline_setups_and_per_bucket_worst_setup() {
    let spec = LoadSpec {
        baseline_until_ms: Some(100),
        ..LoadSpec::default()
    };
    // Setup ms = id: flows 0 and 4 start before 100 ms, 1 and 2 after; 3 has no setup.
    let records = vec![
        rec(0, FlowClass::Short, 0.0, 5.0, Outcome::Ok),
        rec(1, FlowClass::Short, 150.0, 260.0, Outcome::Ok),
        rec(2, FlowClass::Echo, 120.0, 3100.0, Outcome::Ok),
        rec(3, FlowClass::Short, 10.0, 11.0, Outcome::Refused),
        rec(4, FlowClass::Slow, 50.0, 55.0, Outcome::Ok),
    ];
    let r = build(&spec, &records, 3200.0, false, vec![]);
    assert_eq!(r.setup_latency_baseline_ms.count, 2);
    assert_eq!(r.setup_latency_baseline_ms.max, 4.0);
    assert_eq!(r.setup_latency_after_baseline_ms.count, 2);
    assert_eq!(r.setup_latency_after_baseline_ms.max, 2.0);
    assert_eq!(r.handshake_baseline_ms.max, 2.0);
    assert_eq!(r.handshake_after_baseline_ms.max, 1.0);
    assert_eq!(r.timeline[0].handshake_max_ms, 2.0);
    assert_eq!(r.setup_latency_ms.max, 4.0);
    assert_eq!(r.timeline[0].setup_max_ms, 4.0);
    assert_eq!(r.timeline[1].setup_max_ms, 2.0);
    let none = build(&LoadSpec::default(), &records, 3200.0, false, vec![]);
    assert_eq!(none.setup_latency_baseline_ms.count, 0);
}

#[test]
fn failure_list_is_capped() {
    let spec = LoadSpec::default();
    let records: Vec<FlowRecord> = (0..MAX_FAILURES_LISTED + 20)
        .map(|i| {
            rec(
                i,
                FlowClass::Short,
                i as f64,
                i as f64 + 1.0,
                Outcome::Timeout,
            )
        })
        .collect();
    let r = build(&spec, &records, 1.0, true, vec![]);
    assert_eq!(r.failures.len(), MAX_FAILURES_LISTED);
    assert_eq!(r.broken(), (MAX_FAILURES_LISTED + 20) as u64);
    assert_eq!(r.slowest_setups.len(), SLOWEST_SETUPS_LISTED);
}

/// A report whose baseline handshakes are 0.1..=1.0 ms (p99.9 = 1.0 ms over 1000 samples)
/// and whose flows after the baseline have the given handshake and connect() times.
fn stall_report(after: &[(f64, f64)]) -> LoadReport {
    let spec = LoadSpec {
        baseline_until_ms: Some(1000),
        ..LoadSpec::default()
    };
    let steady = (0..1000).map(|i| {
        let mut r = rec(i, FlowClass::Short, i as f64 * 0.5, i as f64, Outcome::Ok);
        r.handshake_ms = Some(f64::from(i as u32 % 10 + 1) / 10.0);
        r.setup_ms = Some(1.0);
        r
    });
    let later = after.iter().enumerate().map(|(k, &(hs, setup))| {
        let mut r = rec(
            1000 + k,
            FlowClass::Short,
            1000.0 + k as f64,
            1001.0 + k as f64,
            Outcome::Ok,
        );
        r.handshake_ms = Some(hs);
        r.setup_ms = Some(setup);
        r
    });
    let records: Vec<FlowRecord> = steady.chain(later).collect();
    build(&spec, &records, 3000.0, false, vec![])
}

#[test]
fn stall_check_passes_up_to_the_baseline_plus_the_margin() {
    let r = stall_report(&[(0.2, 1.0), (1.0 + HANDSHAKE_MARGIN_MS, 1.0)]);
    assert_eq!(r.handshake_baseline_ms.p999, 1.0);
    assert_eq!(r.stall_check(), Ok(()));
    // connect() just under the bar.
    let r = stall_report(&[(0.2, CONNECT_STALL_MS - 0.1)]);
    assert_eq!(r.stall_check(), Ok(()));
}

#[test]
fn stall_check_fails_just_over_the_baseline_plus_the_margin() {
    let r = stall_report(&[(0.2, 1.0), (1.0 + HANDSHAKE_MARGIN_MS + 0.01, 1.0)]);
    let err = r.stall_check().unwrap_err();
    assert!(err.contains("a handshake took 11.01 ms"), "{err}");
    assert!(err.contains("p99.9 is 1.000 ms"), "{err}");
}

#[test]
fn stall_check_fails_on_a_connect_at_the_bar() {
    // The handshake is fine (a connect() the generator noticed late), the connect() is not.
    let r = stall_report(&[(0.3, CONNECT_STALL_MS)]);
    let err = r.stall_check().unwrap_err();
    assert!(err.contains("a connect() took 100.0 ms"), "{err}");
    // A retransmitted SYN (~1 s) fails on both counts; the handshake is named first.
    let r = stall_report(&[(1003.0, 1003.0)]);
    assert!(r
        .stall_check()
        .unwrap_err()
        .contains("handshake took 1003.00 ms"));
}

#[test]
fn stall_check_only_judges_flows_after_the_baseline() {
    // A slow setup inside the baseline raises the baseline; it is not a stall.
    let mut r = stall_report(&[(0.5, 2.0)]);
    assert_eq!(r.stall_check(), Ok(()));
    r.setup_latency_baseline_ms.max = 500.0;
    assert_eq!(r.stall_check(), Ok(()));
}

#[test]
fn stall_check_without_a_baseline_fails_instead_of_passing_vacuously() {
    let records = vec![rec(0, FlowClass::Short, 0.0, 5.0, Outcome::Ok)];
    let none = build(&LoadSpec::default(), &records, 10.0, false, vec![]);
    let err = none.stall_check().unwrap_err();
    assert!(err.contains("no stall bar without a baseline"), "{err}");
    // A baseline but nothing after it: nothing was measured during the event.
    let err = stall_report(&[]).stall_check().unwrap_err();
    assert!(err.contains("0 after"), "{err}");
}

#[test]
fn report_json_round_trips() {
    let spec = LoadSpec::default();
    let records = vec![rec(0, FlowClass::Echo, 1.0, 2.0, Outcome::Timeout)];
    let r = build(&spec, &records, 2.0, false, vec!["w".into()]);
    let text = serde_json::to_string(&r).unwrap();
    assert!(text.contains(r#""outcome":"timeout""#), "{text}");
    assert!(text.contains(r#""class":"echo""#), "{text}");
    let back: LoadReport = serde_json::from_str(&text).unwrap();
    assert_eq!(back, r);
}
