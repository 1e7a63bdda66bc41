//! The load generator against the real backend on loopback: nothing may break, and every count
//! must add up.

mod common;

use common::{quiet_spec, TestBackend};
use drain_lab::load::{self, FlowClass, Outcome};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steady_mixed_load_has_no_failures_and_counts_add_up() {
    let backend = TestBackend::start();
    let mut spec = quiet_spec(backend.http.port(), backend.echo.port());
    spec.duration_ms = 2000;
    spec.short.rate_per_s = 100.0;
    spec.keepalive.sessions_per_s = 5.0; // 300 ms sessions, a request every 50 ms
    spec.echo.sessions_per_s = 5.0; // 300 ms sessions, 64 B every 50 ms
    spec.slow.downloads_per_s = 5.0; // 10 kB over 200 ms
    spec.slow.bytes = 100_000;
    spec.flow_slack_ms = 5000;
    spec.short.timeout_ms = 5000;
    spec.connect_timeout_ms = 5000;

    let report = load::run(&spec).await.expect("valid spec");
    eprint!("{}", report.table());

    assert_eq!(report.broken(), 0, "failures: {:#?}", report.failures);
    assert!(report.failures.is_empty());
    assert!(!report.hit_run_bound);
    let mut started = 0;
    for class in FlowClass::ALL {
        let c = report.classes.get(class);
        assert_eq!(c.started, spec.scheduled_count(class), "{class:?}");
        assert_eq!(c.started, c.ok + c.failed(), "{class:?}");
        assert_eq!(c.ok, c.started, "{class:?}");
        assert_eq!(c.count(Outcome::Ok), c.ok);
        started += c.started;
    }
    assert_eq!(report.classes.short.started, 200);
    assert_eq!(report.classes.echo.started, 10);
    assert_eq!(report.totals.started, started);
    assert_eq!(report.totals.ok + report.totals.failed, started);
    // 300 ms sessions with a request every 50 ms: 6 requests each.
    assert_eq!(report.classes.keepalive.requests_ok, 10 * 6);
    assert_eq!(report.classes.short.requests_ok, 200);
    assert_eq!(report.classes.slow.requests_ok, 10);
    // Every established connection has a setup sample; every ok short flow a latency.
    assert_eq!(report.setup_latency_ms.count, started);
    assert_eq!(report.short_latency_ms.count, 200);
    assert_eq!(report.slowest_setups.len(), 20);
    let timeline_started: u64 = report.timeline.iter().map(|b| b.started).sum();
    let timeline_ended: u64 = report.timeline.iter().map(|b| b.ok + b.failed).sum();
    assert_eq!((timeline_started, timeline_ended), (started, started));

    backend.stop().await;
}
