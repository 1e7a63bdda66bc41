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
mod tests;
