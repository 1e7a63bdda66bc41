//! [`LoadReport`]: what happened to every flow of a run, as JSON and as a short human table.
//! Built by a pure function from the flows' records, so its arithmetic is unit-tested.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::flow::{FlowRecord, Outcome};
use super::spec::{FlowClass, LoadSpec};

/// Failed flows listed individually (the rest are only counted).
pub const MAX_FAILURES_LISTED: usize = 500;

/// Connection setups listed as the slowest.
pub const SLOWEST_SETUPS_LISTED: usize = 20;

/// Width of a timeline bucket.
pub const TIMELINE_BUCKET_MS: u64 = 100;

/// The result of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoadReport {
    /// The spec that was run (so a report file is self-describing).
    pub spec: LoadSpec,
    /// Wall time of the whole run.
    pub elapsed_ms: f64,
    /// The run's start (every `*_ms` here is from it) on CLOCK_MONOTONIC, in nanoseconds; 0 in a
    /// report not produced by a run.
    #[serde(default)]
    pub t0_mono_ns: u64,
    /// True if the run's hard bound cut flows short (they count as timeouts).
    pub hit_run_bound: bool,
    /// Problems of the generator itself (e.g. the fd limit could not be raised).
    pub warnings: Vec<String>,
    /// Counts per flow class.
    pub classes: ClassReports,
    /// Counts over all classes.
    pub totals: Totals,
    /// connect() durations of every established connection, all classes.
    pub setup_latency_ms: LatencySummary,
    /// connect() durations of the connections started before the spec's `baseline_until_ms`
    /// (all zero without one).
    #[serde(default)]
    pub setup_latency_baseline_ms: LatencySummary,
    /// connect() durations of the connections started at or after `baseline_until_ms`.
    #[serde(default)]
    pub setup_latency_after_baseline_ms: LatencySummary,
    /// Handshakes as the kernel timed them (see `FlowRecord::handshake_ms`), all classes.
    #[serde(default)]
    pub handshake_ms: LatencySummary,
    /// The same, of the connections started before `baseline_until_ms`.
    #[serde(default)]
    pub handshake_baseline_ms: LatencySummary,
    /// The same, of the connections started at or after `baseline_until_ms`.
    #[serde(default)]
    pub handshake_after_baseline_ms: LatencySummary,
    /// Start (before connect) to last response byte of every ok short flow.
    pub short_latency_ms: LatencySummary,
    /// Flows started (by start time) and ended ok or failed (by end time) per 100 ms.
    pub timeline: Vec<TimelineBucket>,
    /// The first [`MAX_FAILURES_LISTED`] failed flows by start time.
    pub failures: Vec<FailedFlow>,
    /// The [`SLOWEST_SETUPS_LISTED`] slowest connection setups, slowest first.
    pub slowest_setups: Vec<SlowSetup>,
}

/// One [`ClassReport`] per flow class.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClassReports {
    /// Short HTTP requests.
    pub short: ClassReport,
    /// Keep-alive sessions.
    pub keepalive: ClassReport,
    /// Echo sessions.
    pub echo: ClassReport,
    /// Slow downloads.
    pub slow: ClassReport,
}

impl ClassReports {
    /// The report of one class.
    pub fn get(&self, class: FlowClass) -> &ClassReport {
        match class {
            FlowClass::Short => &self.short,
            FlowClass::Keepalive => &self.keepalive,
            FlowClass::Echo => &self.echo,
            FlowClass::Slow => &self.slow,
        }
    }

    fn get_mut(&mut self, class: FlowClass) -> &mut ClassReport {
        match class {
            FlowClass::Short => &mut self.short,
            FlowClass::Keepalive => &mut self.keepalive,
            FlowClass::Echo => &mut self.echo,
            FlowClass::Slow => &mut self.slow,
        }
    }
}

/// Outcome counts of one class. `started` always equals the sum of the outcome counts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClassReport {
    /// Flows started.
    pub started: u64,
    /// Flows that ended ok.
    pub ok: u64,
    /// Connection refused.
    pub refused: u64,
    /// Ended by an RST.
    pub reset: u64,
    /// Connect timeout, deadline, or unreachable.
    pub timeout: u64,
    /// Wrong, missing, extra or corrupt data.
    pub bad_data: u64,
    /// The generator's own failure (EMFILE, EADDRNOTAVAIL, ...).
    pub other: u64,
    /// HTTP responses that passed every check (keep-alive sessions count each request).
    pub requests_ok: u64,
    /// Start rate the spec asked for.
    pub offered_per_s: f64,
    /// Flows that really started within `duration_ms`, per second of it.
    pub achieved_per_s: f64,
    /// How late flows started against their schedule.
    pub start_lag_ms: LatencySummary,
}

impl ClassReport {
    /// Flows that did not end ok.
    pub fn failed(&self) -> u64 {
        self.refused + self.reset + self.timeout + self.bad_data + self.other
    }

    /// The count of one outcome.
    pub fn count(&self, outcome: Outcome) -> u64 {
        match outcome {
            Outcome::Ok => self.ok,
            Outcome::Refused => self.refused,
            Outcome::Reset => self.reset,
            Outcome::Timeout => self.timeout,
            Outcome::BadData => self.bad_data,
            Outcome::Other => self.other,
        }
    }

    fn add(&mut self, outcome: Outcome) {
        let slot = match outcome {
            Outcome::Ok => &mut self.ok,
            Outcome::Refused => &mut self.refused,
            Outcome::Reset => &mut self.reset,
            Outcome::Timeout => &mut self.timeout,
            Outcome::BadData => &mut self.bad_data,
            Outcome::Other => &mut self.other,
        };
        *slot += 1;
    }
}

/// Counts over all classes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Totals {
    /// Flows started.
    pub started: u64,
    /// Flows that ended ok.
    pub ok: u64,
    /// Flows that did not.
    pub failed: u64,
}

/// Exact order statistics of a set of samples (nearest-rank percentiles), in ms. All zero when
/// `count` is 0.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    /// Number of samples.
    pub count: u64,
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest sample.
    pub max: f64,
}

impl LatencySummary {
    /// Summarises `samples` (any order).
    pub fn from_samples(mut samples: Vec<f64>) -> Self {
        if samples.is_empty() {
            return Self::default();
        }
        samples.sort_by(f64::total_cmp);
        let n = samples.len();
        let rank = |q: f64| samples[((q * n as f64).ceil() as usize).clamp(1, n) - 1];
        Self {
            count: n as u64,
            p50: rank(0.5),
            p99: rank(0.99),
            p999: rank(0.999),
            max: samples[n - 1],
        }
    }
}

/// One 100 ms slice of the run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TimelineBucket {
    /// Bucket start, ms from the run's start.
    pub t_ms: u64,
    /// Flows that started in it.
    pub started: u64,
    /// Flows that ended ok in it.
    pub ok: u64,
    /// Flows that failed in it.
    pub failed: u64,
    /// Slowest connect() of the flows that started in it.
    #[serde(default)]
    pub setup_max_ms: f64,
    /// Slowest kernel-timed handshake of the flows that started in it.
    #[serde(default)]
    pub handshake_max_ms: f64,
}

/// A flow that did not end ok.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailedFlow {
    /// Its class.
    pub class: FlowClass,
    /// When it started (ms from the run's start).
    pub start_ms: f64,
    /// When its failure was known.
    pub end_ms: f64,
    /// How it failed.
    pub outcome: Outcome,
    /// The error, with what the flow was doing.
    pub detail: String,
}

/// One connection setup.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SlowSetup {
    /// Its class.
    pub class: FlowClass,
    /// When the flow started.
    pub start_ms: f64,
    /// How long connect() took.
    pub setup_ms: f64,
}

/// How much slower than the steady baseline's p99.9 a handshake after it may be.
pub const HANDSHAKE_MARGIN_MS: f64 = 10.0;
/// A connect() this slow is a stall: a dropped SYN costs ~1 s, while the generator's own wake-up
/// on the busy cores stays far below this. Not relative to the baseline: the baseline's window
/// ends on the load generator's clock, which starts after the scenario's, so its last flows may
/// already be the event's (a CI run's plain failover put ~1 s stalls in it and so raised a
/// relative bar above them).
pub const CONNECT_STALL_MS: f64 = 100.0;

impl LoadReport {
    /// Flows that did not end ok: the number a drain must keep at zero.
    pub fn broken(&self) -> u64 {
        self.totals.failed
    }

    /// The stall bar a drain (or hand-off, or rollout) is held to, against the same run's steady
    /// baseline: no kernel-timed handshake after the baseline slower than its p99.9 plus
    /// [`HANDSHAKE_MARGIN_MS`], and no connect() of [`CONNECT_STALL_MS`] or more. The error says
    /// which and by how much.
    ///
    /// A run with no handshake on either side of the baseline's end has nothing to compare and
    /// fails: an empty baseline's p99.9 is 0, which would otherwise let an empty "after" pass.
    pub fn stall_check(&self) -> Result<(), String> {
        let (steady, after) = (
            &self.handshake_baseline_ms,
            &self.handshake_after_baseline_ms,
        );
        if steady.count == 0 || after.count == 0 {
            return Err(format!(
                "no stall bar without a baseline: {} handshakes before `baseline_until_ms` ({:?}), {} after",
                steady.count, self.spec.baseline_until_ms, after.count
            ));
        }
        if after.max > steady.p999 + HANDSHAKE_MARGIN_MS {
            return Err(format!(
                "a handshake took {:.2} ms; the steady baseline's p99.9 is {:.3} ms",
                after.max, steady.p999
            ));
        }
        let connect = &self.setup_latency_after_baseline_ms;
        if connect.max >= CONNECT_STALL_MS {
            return Err(format!(
                "a connect() took {:.1} ms: {:?}",
                connect.max,
                self.slowest_setups.iter().take(5).collect::<Vec<_>>()
            ));
        }
        Ok(())
    }

    /// A compact human-readable summary.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<10}{:>8}{:>8}{:>8}{:>8}{:>8}{:>9}{:>7}{:>11}{:>11}{:>12}",
            "class",
            "started",
            "ok",
            "refused",
            "reset",
            "timeout",
            "bad_data",
            "other",
            "offered/s",
            "achieved/s",
            "lag max ms"
        );
        for class in FlowClass::ALL {
            let c = self.classes.get(class);
            if c.started == 0 && c.offered_per_s == 0.0 {
                continue;
            }
            let _ = writeln!(
                out,
                "{:<10}{:>8}{:>8}{:>8}{:>8}{:>8}{:>9}{:>7}{:>11.1}{:>11.1}{:>12.1}",
                class.name(),
                c.started,
                c.ok,
                c.refused,
                c.reset,
                c.timeout,
                c.bad_data,
                c.other,
                c.offered_per_s,
                c.achieved_per_s,
                c.start_lag_ms.max
            );
        }
        let t = &self.totals;
        let _ = writeln!(
            out,
            "total: started {} ok {} BROKEN {} in {:.0} ms{}",
            t.started,
            t.ok,
            t.failed,
            self.elapsed_ms,
            if self.hit_run_bound {
                " (hit the run's hard bound)"
            } else {
                ""
            }
        );
        let mut summaries = vec![
            ("setup ms", &self.setup_latency_ms),
            ("short ms", &self.short_latency_ms),
        ];
        if self.setup_latency_baseline_ms.count > 0 {
            summaries.push(("baseline setup ms", &self.setup_latency_baseline_ms));
            summaries.push((
                "after baseline setup ms",
                &self.setup_latency_after_baseline_ms,
            ));
        }
        summaries.push(("handshake ms", &self.handshake_ms));
        for (name, l) in summaries {
            let _ = writeln!(
                out,
                "{name}: n={} p50 {:.3} p99 {:.3} p99.9 {:.3} max {:.3}",
                l.count, l.p50, l.p99, l.p999, l.max
            );
        }
        if self.classes.keepalive.started > 0 {
            let _ = writeln!(
                out,
                "keepalive requests ok: {}",
                self.classes.keepalive.requests_ok
            );
        }
        if !self.failures.is_empty() {
            let shown = self.failures.len().min(10);
            let _ = writeln!(out, "first {shown} of {} failures:", t.failed);
            for f in &self.failures[..shown] {
                let _ = writeln!(
                    out,
                    "  {:<9} start {:>9.1} ms  end {:>9.1} ms  {:<8} {}",
                    f.class.name(),
                    f.start_ms,
                    f.end_ms,
                    f.outcome.name(),
                    f.detail
                );
            }
        }
        for w in &self.warnings {
            let _ = writeln!(out, "warning: {w}");
        }
        out
    }
}

/// Builds the report from every flow's record.
pub(crate) fn build(
    spec: &LoadSpec,
    records: &[FlowRecord],
    elapsed_ms: f64,
    hit_run_bound: bool,
    warnings: Vec<String>,
) -> LoadReport {
    let mut classes = ClassReports::default();
    let mut totals = Totals::default();
    let mut setups = Vec::new();
    // [setup, handshake] × [before the baseline's end, after it]
    let mut split: [[Vec<f64>; 2]; 2] = Default::default();
    let mut handshakes = Vec::new();
    let mut short_latency = Vec::new();
    let mut lags: [Vec<f64>; 4] = Default::default();
    let mut on_time = [0u64; 4];
    let mut timeline: Vec<TimelineBucket> = Vec::new();
    let mut failures = Vec::new();
    let mut slowest = Vec::new();
    let bucket = |timeline: &mut Vec<TimelineBucket>, ms: f64| -> usize {
        let i = (ms.max(0.0) as u64 / TIMELINE_BUCKET_MS) as usize;
        while timeline.len() <= i {
            let t_ms = timeline.len() as u64 * TIMELINE_BUCKET_MS;
            timeline.push(TimelineBucket {
                t_ms,
                ..TimelineBucket::default()
            });
        }
        i
    };
    for r in records {
        let ci = class_index(r.class);
        let c = classes.get_mut(r.class);
        c.started += 1;
        c.add(r.outcome);
        c.requests_ok += r.requests_ok;
        totals.started += 1;
        lags[ci].push((r.start_ms - r.scheduled_ms).max(0.0));
        if r.start_ms < spec.duration_ms as f64 {
            on_time[ci] += 1;
        }
        let i = bucket(&mut timeline, r.start_ms);
        timeline[i].started += 1;
        let i = bucket(&mut timeline, r.end_ms);
        if r.outcome == Outcome::Ok {
            totals.ok += 1;
            timeline[i].ok += 1;
        } else {
            totals.failed += 1;
            timeline[i].failed += 1;
            failures.push(FailedFlow {
                class: r.class,
                start_ms: r.start_ms,
                end_ms: r.end_ms,
                outcome: r.outcome,
                detail: r.detail.clone(),
            });
        }
        let phase = match spec.baseline_until_ms {
            Some(until) if r.start_ms < until as f64 => Some(0),
            Some(_) => Some(1),
            None => None,
        };
        if let Some(hs) = r.handshake_ms {
            handshakes.push(hs);
            if let Some(p) = phase {
                split[1][p].push(hs);
            }
            let i = bucket(&mut timeline, r.start_ms);
            timeline[i].handshake_max_ms = timeline[i].handshake_max_ms.max(hs);
        }
        if let Some(setup_ms) = r.setup_ms {
            setups.push(setup_ms);
            if let Some(p) = phase {
                split[0][p].push(setup_ms);
            }
            let i = bucket(&mut timeline, r.start_ms);
            timeline[i].setup_max_ms = timeline[i].setup_max_ms.max(setup_ms);
            slowest.push(SlowSetup {
                class: r.class,
                start_ms: r.start_ms,
                setup_ms,
            });
        }
        if let Some(l) = r.latency_ms.filter(|_| r.outcome == Outcome::Ok) {
            short_latency.push(l);
        }
    }
    for class in FlowClass::ALL {
        let ci = class_index(class);
        let c = classes.get_mut(class);
        c.offered_per_s = spec.rate(class);
        c.achieved_per_s = if spec.duration_ms > 0 {
            on_time[ci] as f64 * 1000.0 / spec.duration_ms as f64
        } else {
            0.0
        };
        c.start_lag_ms = LatencySummary::from_samples(std::mem::take(&mut lags[ci]));
    }
    failures.sort_by(|a, b| a.start_ms.total_cmp(&b.start_ms));
    failures.truncate(MAX_FAILURES_LISTED);
    slowest.sort_by(|a, b| b.setup_ms.total_cmp(&a.setup_ms));
    slowest.truncate(SLOWEST_SETUPS_LISTED);
    LoadReport {
        spec: spec.clone(),
        elapsed_ms,
        t0_mono_ns: 0,
        hit_run_bound,
        warnings,
        classes,
        totals,
        setup_latency_ms: LatencySummary::from_samples(setups),
        setup_latency_baseline_ms: LatencySummary::from_samples(std::mem::take(&mut split[0][0])),
        setup_latency_after_baseline_ms: LatencySummary::from_samples(std::mem::take(
            &mut split[0][1],
        )),
        handshake_ms: LatencySummary::from_samples(handshakes),
        handshake_baseline_ms: LatencySummary::from_samples(std::mem::take(&mut split[1][0])),
        handshake_after_baseline_ms: LatencySummary::from_samples(std::mem::take(&mut split[1][1])),
        short_latency_ms: LatencySummary::from_samples(short_latency),
        timeline,
        failures,
        slowest_setups: slowest,
    }
}

fn class_index(class: FlowClass) -> usize {
    match class {
        FlowClass::Short => 0,
        FlowClass::Keepalive => 1,
        FlowClass::Echo => 2,
        FlowClass::Slow => 3,
    }
}

#[cfg(test)]
mod tests {
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
}
