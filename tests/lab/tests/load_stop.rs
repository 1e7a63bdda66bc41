//! A load run stopped early (`run_until`, what `drain-lab load --stop-on-sigterm` does on
//! SIGTERM): no flow starts after the stop, the flows in progress end normally, and the report
//! covers exactly what ran.

mod common;

use std::time::{Duration, Instant};

use common::{quiet_spec, TestBackend};
use drain_lab::load::{self, FlowClass};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_run_reports_what_ran_and_lets_flows_finish() {
    let backend = TestBackend::start();
    let mut spec = quiet_spec(backend.http.port(), backend.echo.port());
    spec.duration_ms = 60_000;
    spec.short.rate_per_s = 100.0;
    spec.echo.sessions_per_s = 10.0; // 300 ms sessions: some are mid-way at the stop

    let t0 = Instant::now();
    let report = load::run_until(&spec, tokio::time::sleep(Duration::from_millis(500)))
        .await
        .expect("valid spec");
    let took = t0.elapsed();
    eprint!("{}", report.table());

    assert!(
        took < Duration::from_secs(5),
        "the run went on for {took:?}"
    );
    assert!(
        (400..1500).contains(&report.spec.duration_ms),
        "the report's window is the stop time: {} ms",
        report.spec.duration_ms
    );
    let short = report.classes.get(FlowClass::Short).started;
    assert!(
        (45..=80).contains(&short),
        "{short} short flows in ~500 ms at 100/s"
    );
    assert_eq!(report.broken(), 0, "{:#?}", report.failures);
    assert!(!report.hit_run_bound);
    assert_eq!(
        report.classes.echo.ok, report.classes.echo.started,
        "echo sessions ran to their end"
    );
    assert!(report.classes.echo.started >= 4);
    backend.stop().await;
}
