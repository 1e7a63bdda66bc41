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
    let stopped = std::sync::Mutex::new(None);
    let stop = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        *stopped.lock().unwrap() = Some(t0.elapsed());
    };
    let report = load::run_until(&spec, stop).await.expect("valid spec");
    let stopped = stopped.lock().unwrap().expect("the stop fired");
    eprint!("{}", report.table());

    // The run ended with its flows, long before the 60 s it was given.
    assert!(
        report.elapsed_ms < 60_000.0,
        "the run went on for {} ms",
        report.elapsed_ms
    );
    // The report's window is the stop time: the run's t0 came after this test's, so the window
    // is at most the stop as this test saw it, and it holds the starts scheduled in it, give or
    // take the one start that can fall on either side of the window's end (the run reads the
    // time when it notices the stop, and tokio's timers tick in milliseconds).
    assert!(
        Duration::from_millis(report.spec.duration_ms) <= stopped,
        "window {} ms, stopped after {stopped:?}",
        report.spec.duration_ms
    );
    let short = report.classes.get(FlowClass::Short).started;
    let scheduled = report.spec.scheduled_count(FlowClass::Short);
    assert!(
        short.abs_diff(scheduled) <= 1,
        "{short} short flows started, {scheduled} scheduled in the {} ms window",
        report.spec.duration_ms
    );
    assert!(scheduled > 0, "the window is not empty");
    assert_eq!(report.broken(), 0, "{:#?}", report.failures);
    assert!(!report.hit_run_bound);
    assert_eq!(
        report.classes.echo.ok, report.classes.echo.started,
        "echo sessions ran to their end"
    );
    assert!(report.classes.echo.started >= 4);
    backend.stop().await;
}
