//! `drain-lab bench`: the drain at several rates of new connections, several runs each, each in a
//! fresh lab, with the numbers that tell whether it held: broken flows, SYNs the divert could not
//! record, connection setups during the switch against the same run's steady baseline, drain and
//! failover times. Writes `bench.json` (every run), `report.md` (the table, plus the outputs of the
//! cargo benchmarks found beside it) and two plots as SVG: the timeline of one drain and the
//! setups per rate.
//!
//! The load is [`scale_load`]'s shape at each rate (50 echo sessions/s of 11 s, keep-alive
//! sessions, slow downloads; the drain starts at 11 s, after a steady baseline). `auto` as a rate
//! first finds the highest steady rate without a failed flow (one steady run per candidate).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use plotters::prelude::*;
use serde::{Deserialize, Serialize};

use crate::load::{LatencySummary, LoadSpec};
use crate::scenario::{
    self, drain_agent, scale_load, AgentOptions, Event, ScenarioResult, SCALE_EVENT_AT,
};
use crate::topology::LabOptions;

/// `drain-lab bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Short-request rates (new connections/s) to drain at; `auto` is the highest steady rate
    /// without a failed flow, found first.
    #[arg(long, value_delimiter = ',', default_value = "500,1500,3000,auto")]
    pub rates: Vec<String>,
    /// Runs per rate, each in a fresh lab.
    #[arg(long, default_value_t = 10)]
    pub runs: u32,
    /// Candidate rates for `auto`, tried upwards until one fails. They start just above 3000/s:
    /// on the 2-core CI machine the bench's mix (50 echo sessions/s of 11 s, keep-alive, slow
    /// downloads) starts failing flows without any drain somewhere between 4000/s and 6000/s,
    /// varying from run to run.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "3250,3500,3750,4000,5000,6000,8000"
    )]
    pub auto_candidates: Vec<f64>,
    /// The rate whose first run is drawn as a timeline.
    #[arg(long, default_value_t = 3000.0)]
    pub plot_rate: f64,
    /// Where bench.json, report.md and the plots go.
    #[arg(long, default_value = "target/bench")]
    pub out: PathBuf,
}

/// One drain, summarised.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunSummary {
    /// New connections/s of the short class.
    pub rate: f64,
    /// Run number at this rate (1-based).
    pub run: u32,
    /// Flows started.
    pub flows: u64,
    /// Flows that did not end ok.
    pub broken: u64,
    /// drain-agent's exit code.
    pub exit_code: i32,
    /// Connections on lb1 when the drain started.
    pub open_at_divert: u64,
    /// New flows the divert sent to the peer.
    pub diverted_flows: u64,
    /// SYNs the divert could not record.
    pub unrecorded_syns: u64,
    /// connect() durations of the flows started before the drain.
    pub connect_baseline_ms: LatencySummary,
    /// connect() durations of the flows started from the drain on.
    pub connect_drain_ms: LatencySummary,
    /// Kernel-timed handshakes before the drain.
    pub handshake_baseline_ms: LatencySummary,
    /// Kernel-timed handshakes from the drain on.
    pub handshake_drain_ms: LatencySummary,
    /// From the drain's start until the peer owned the VIP and every rule was gone.
    pub drain_total_ms: Option<f64>,
    /// From the divert until lb1's connections were done.
    pub drain_wait_ms: Option<f64>,
    /// From the failover trigger until the peer owned the VIP.
    pub failover_ms: Option<f64>,
}

/// The whole bench.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchReport {
    /// The rate `auto` resolved to, if asked for.
    pub auto_rate: Option<f64>,
    /// The steady runs `auto` made: (rate, flows, broken, worst connect() ms).
    pub auto_probe: Vec<(f64, u64, u64, f64)>,
    /// Every drain run.
    pub runs: Vec<RunSummary>,
}

/// The load of one run at `rate`.
fn load_at(rate: f64) -> LoadSpec {
    let mut load = scale_load();
    load.short.rate_per_s = rate;
    load
}

fn summarise(rate: f64, run: u32, r: &ScenarioResult) -> RunSummary {
    let agent = r.event.agent.as_ref();
    let report = agent.and_then(|a| a.result()).map(|v| v["report"].clone());
    let num = |key: &str| report.as_ref().and_then(|v| v[key].as_u64()).unwrap_or(0);
    RunSummary {
        rate,
        run,
        flows: r.flows,
        broken: r.broken,
        exit_code: agent.map_or(-1, |a| a.exit_code),
        open_at_divert: agent
            .and_then(|a| a.event("ready"))
            .and_then(|e| e["sockets"].as_u64())
            .unwrap_or(0),
        diverted_flows: num("diverted_flows"),
        unrecorded_syns: num("unrecorded_syns"),
        connect_baseline_ms: r.load.setup_latency_baseline_ms.clone(),
        connect_drain_ms: r.load.setup_latency_after_baseline_ms.clone(),
        handshake_baseline_ms: r.load.handshake_baseline_ms.clone(),
        handshake_drain_ms: r.load.handshake_after_baseline_ms.clone(),
        drain_total_ms: r.event.drain_ms,
        drain_wait_ms: report.as_ref().and_then(|v| v["drain_ms"].as_f64()),
        failover_ms: r.event.failover_ms,
    }
}

/// Runs the bench.
pub fn run(a: &BenchArgs) -> Result<BenchReport> {
    crate::cli::teardown_on_signal();
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let mut report = BenchReport {
        auto_rate: None,
        auto_probe: Vec::new(),
        runs: Vec::new(),
    };
    let mut rates = Vec::new();
    for r in &a.rates {
        if r == "auto" {
            let rate = find_steady_limit(a, &mut report)?;
            report.auto_rate = rate;
            rates.extend(rate);
        } else {
            rates.push(r.parse::<f64>().with_context(|| format!("rate {r:?}"))?);
        }
    }
    for &rate in &rates {
        for run in 1..=a.runs {
            eprintln!("== drain at {rate}/s, run {run} of {}", a.runs);
            let r = scenario::run_sampled(
                "drain-agent",
                &LabOptions::default(),
                &load_at(rate),
                SCALE_EVENT_AT,
                drain_agent(AgentOptions::default()),
            )
            .with_context(|| format!("drain at {rate}/s, run {run}"))?;
            let s = summarise(rate, run, &r);
            eprintln!(
                "   broken {} unrecorded {} handshake drain max {:.3} ms (baseline p99.9 {:.3}) connect() drain max {:.1} ms (baseline p99.9 {:.2})",
                s.broken,
                s.unrecorded_syns,
                s.handshake_drain_ms.max,
                s.handshake_baseline_ms.p999,
                s.connect_drain_ms.max,
                s.connect_baseline_ms.p999
            );
            if run == 1 && rate == a.plot_rate {
                std::fs::write(
                    a.out.join("timeline-run.json"),
                    serde_json::to_vec(&r).context("serialising the plotted run")?,
                )?;
                plot_timeline(&r, &a.out.join("drain-timeline.svg"))?;
            }
            report.runs.push(s);
            // Written after every run, so a long bench that is stopped keeps what it measured.
            std::fs::write(
                a.out.join("bench.json"),
                serde_json::to_vec_pretty(&report)?,
            )?;
        }
    }
    plot_rates(&report, &a.out.join("drain-rates.svg"))?;
    let md = markdown(&report, &a.out);
    std::fs::write(a.out.join("report.md"), &md)?;
    println!("{md}");
    Ok(report)
}

/// One steady run per candidate rate, upwards, until one has a failed flow.
fn find_steady_limit(a: &BenchArgs, report: &mut BenchReport) -> Result<Option<f64>> {
    let mut best = None;
    for &rate in &a.auto_candidates {
        eprintln!("== steady at {rate}/s (finding the highest zero-failure rate)");
        let r = scenario::run(
            "steady",
            &LabOptions::default(),
            &load_at(rate),
            SCALE_EVENT_AT,
            Event::None,
        )?;
        eprintln!(
            "   {} flows, {} broken, worst connect() {:.1} ms",
            r.flows, r.broken, r.worst_setup_ms
        );
        report
            .auto_probe
            .push((rate, r.flows, r.broken, r.worst_setup_ms));
        if r.broken > 0 {
            break;
        }
        best = Some(rate);
    }
    Ok(best)
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn max(v: impl Iterator<Item = f64>) -> f64 {
    v.fold(f64::NAN, f64::max)
}

/// The report: one row per rate, then the steady probe and the other benchmarks' outputs.
pub fn markdown(report: &BenchReport, dir: &Path) -> String {
    let mut rates: Vec<f64> = report.runs.iter().map(|r| r.rate).collect();
    rates.dedup();
    let mut s = String::from("# drain-agent benchmarks\n\n## The drain at each rate\n\n");
    s.push_str(
        "Each run: a fresh lab, the short-request rate below plus 50 echo sessions/s of 11 s, \
         keep-alive sessions and slow downloads; `drain` on the MASTER at 11 s. *Baseline* is the \
         same run's flows before the drain, *drain* the flows from it on. Handshakes are timed by \
         the kernel (TCP_INFO; a retransmitted SYN counts its whole connect()); connect() is what \
         the load generator measured, its own wake-up included.\n\n",
    );
    s.push_str("| rate/s | runs | flows | broken | unrecorded SYNs | open at divert | handshake p99.9 baseline (ms) | handshake max drain (ms) | connect() p99.9 baseline (ms) | connect() max drain (ms) | drain s (median / max) | failover ms (median / max) |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for rate in rates {
        let runs: Vec<&RunSummary> = report.runs.iter().filter(|r| r.rate == rate).collect();
        let sum = |f: fn(&RunSummary) -> u64| runs.iter().map(|r| f(r)).sum::<u64>();
        let col = |f: fn(&RunSummary) -> f64| runs.iter().map(|r| f(r)).collect::<Vec<_>>();
        let drain = col(|r| r.drain_total_ms.unwrap_or(f64::NAN) / 1000.0);
        let fo = col(|r| r.failover_ms.unwrap_or(f64::NAN));
        let _ = writeln!(
            s,
            "| {rate:.0} | {} | {} | {} | {} | {:.0}–{:.0} | {:.3} (max of runs) | {:.3} | {:.2} (max of runs) | {:.1} | {:.1} / {:.1} | {:.0} / {:.0} |",
            runs.len(),
            sum(|r| r.flows),
            sum(|r| r.broken),
            sum(|r| r.unrecorded_syns),
            runs.iter().map(|r| r.open_at_divert).min().unwrap_or(0) as f64,
            runs.iter().map(|r| r.open_at_divert).max().unwrap_or(0) as f64,
            max(col(|r| r.handshake_baseline_ms.p999).into_iter()),
            max(col(|r| r.handshake_drain_ms.max).into_iter()),
            max(col(|r| r.connect_baseline_ms.p999).into_iter()),
            max(col(|r| r.connect_drain_ms.max).into_iter()),
            median(drain.clone()),
            max(drain.into_iter()),
            median(fo.clone()),
            max(fo.into_iter()),
        );
    }
    if !report.auto_probe.is_empty() {
        s.push_str("\n## Highest steady rate without a failed flow\n\n| rate/s | flows | broken | worst connect() ms |\n|---|---|---|---|\n");
        for (rate, flows, broken, worst) in &report.auto_probe {
            let _ = writeln!(s, "| {rate:.0} | {flows} | {broken} | {worst:.1} |");
        }
        let _ = writeln!(
            s,
            "\n`auto` = {}",
            report
                .auto_rate
                .map_or("none (the lowest candidate failed)".into(), |r| format!(
                    "{r:.0}/s"
                ))
        );
    }
    s.push_str("\n## Plots\n\n- `drain-timeline.svg`: one drain (sockets left on lb1, new connections/s served by lb1 and lb2, setups per 100 ms, phases marked)\n- `drain-rates.svg`: handshake and connect() during the drain against the steady baseline, per run and rate\n");
    for (name, title) in [
        (
            "divert.txt",
            "Divert install and removal (`cargo bench --bench divert`)",
        ),
        (
            "sockdiag.txt",
            "Counting sockets (`cargo bench --bench sockdiag`)",
        ),
        (
            "drain_done.txt",
            "Last close to drained (`cargo bench --bench drain_done`)",
        ),
    ] {
        if let Ok(text) = std::fs::read_to_string(dir.join(name)) {
            let _ = write!(s, "\n## {title}\n\n```\n{}\n```\n", text.trim_end());
        }
    }
    s
}

/// A phase of the drain, from the agent's events: (t_ms, label).
fn phases(r: &ScenarioResult) -> Vec<(f64, &'static str)> {
    let Some(agent) = r.event.agent.as_ref() else {
        return Vec::new();
    };
    [
        ("diverted", "divert"),
        ("sealed", "sealed"),
        ("failover-triggered", "failover"),
        ("peer-owns-vip", "peer owns VIP"),
        ("cleaned-up", "cleaned up"),
    ]
    .iter()
    .filter_map(|(kind, label)| {
        agent
            .event(kind)
            .and_then(|e| e["t_ms"].as_f64())
            .map(|t| (t, *label))
    })
    .collect()
}

/// Accepted-so-far samples turned into connections/s per sample interval.
fn per_second(samples: &[(f64, u64)]) -> Vec<(f64, f64)> {
    samples
        .windows(2)
        .filter(|w| w[1].0 > w[0].0)
        .map(|w| {
            let dt = (w[1].0 - w[0].0) / 1000.0;
            (w[1].0 / 1000.0, w[1].1.saturating_sub(w[0].1) as f64 / dt)
        })
        .collect()
}

type Plot = Result<(), Box<dyn std::error::Error>>;

/// One number of a run.
type Metric = fn(&RunSummary) -> f64;

/// Draws the timeline of one drain: three panels over the same seconds.
pub fn plot_timeline(r: &ScenarioResult, path: &Path) -> Result<()> {
    draw_timeline(r, path).map_err(|e| anyhow::anyhow!("plotting {}: {e}", path.display()))
}

fn draw_timeline(r: &ScenarioResult, path: &Path) -> Plot {
    // The load's own length and the flows still ending after it.
    let end_s = (r.load.spec.duration_ms as f64 + 2000.0).min(r.load.elapsed_ms) / 1000.0;
    let root = SVGBackend::new(path, (1100, 900)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(
        &format!(
            "One drain at {:.0} new connections/s ({} flows, {} broken)",
            r.load.spec.short.rate_per_s, r.flows, r.broken
        ),
        ("sans-serif", 22),
    )?;
    let panels = root.split_evenly((3, 1));
    let marks = phases(r);
    let agent_events = r
        .event
        .agent
        .as_ref()
        .map(|a| a.events.clone())
        .unwrap_or_default();
    // Sockets left on lb1, from the agent's progress events.
    let sockets: Vec<(f64, f64)> = agent_events
        .iter()
        .filter(|e| e["event"] == "progress")
        .filter_map(|e| Some((e["t_ms"].as_f64()? / 1000.0, e["remaining"].as_f64()?)))
        .collect();
    let smax = sockets.iter().map(|p| p.1).fold(1.0, f64::max) * 1.1;
    let mut c = ChartBuilder::on(&panels[0])
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .caption("connections still served by lb1", ("sans-serif", 16))
        .build_cartesian_2d(0.0..end_s, 0.0..smax)?;
    c.configure_mesh().x_desc("s").draw()?;
    c.draw_series(LineSeries::new(sockets, &BLUE))?;
    draw_marks(&mut c, &marks, smax)?;
    // New connections/s each node accepted.
    let samples = r.samples.clone().unwrap_or_default();
    let (lb1, lb2) = (per_second(&samples.lb1), per_second(&samples.lb2));
    let rmax = lb1.iter().chain(&lb2).map(|p| p.1).fold(1.0, f64::max) * 1.1;
    let mut c = ChartBuilder::on(&panels[1])
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .caption("new connections/s accepted", ("sans-serif", 16))
        .build_cartesian_2d(0.0..end_s, 0.0..rmax)?;
    c.configure_mesh().x_desc("s").draw()?;
    c.draw_series(LineSeries::new(lb1, &BLUE))?
        .label("lb1")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 15, y)], BLUE));
    c.draw_series(LineSeries::new(lb2, &RED))?
        .label("lb2")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 15, y)], RED));
    draw_marks(&mut c, &marks, rmax)?;
    c.configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    // Setups per 100 ms, log scale.
    let tl = &r.load.timeline;
    let pts = |f: fn(&crate::load::TimelineBucket) -> f64| -> Vec<(f64, f64)> {
        tl.iter()
            .filter(|b| b.started > 0)
            .map(|b| (b.t_ms as f64 / 1000.0, f(b).max(0.001)))
            .collect()
    };
    let (connect, handshake) = (pts(|b| b.setup_max_ms), pts(|b| b.handshake_max_ms));
    let ymax = connect.iter().map(|p| p.1).fold(1.0, f64::max) * 2.0;
    let mut c = ChartBuilder::on(&panels[2])
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .caption(
            "slowest connection setup per 100 ms (ms, log)",
            ("sans-serif", 16),
        )
        .build_cartesian_2d(0.0..end_s, (0.001..ymax).log_scale())?;
    c.configure_mesh().x_desc("s").draw()?;
    c.draw_series(LineSeries::new(connect, &BLUE))?
        .label("connect() (generator-measured)")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 15, y)], BLUE));
    c.draw_series(LineSeries::new(handshake, &RED))?
        .label("handshake (kernel-timed)")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 15, y)], RED));
    for (i, (t, label)) in marks.iter().enumerate() {
        c.draw_series(LineSeries::new(
            vec![(t / 1000.0, 0.001), (t / 1000.0, ymax)],
            BLACK.mix(0.4),
        ))?;
        c.draw_series(std::iter::once(Text::new(
            label.to_string(),
            (t / 1000.0, ymax / 2f64.powi(i as i32 + 1)),
            ("sans-serif", 12),
        )))?;
    }
    c.configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

fn draw_marks<DB: DrawingBackend>(
    c: &mut ChartContext<
        '_,
        DB,
        Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
    >,
    marks: &[(f64, &str)],
    ymax: f64,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    for (i, (t, label)) in marks.iter().enumerate() {
        c.draw_series(LineSeries::new(
            vec![(t / 1000.0, 0.0), (t / 1000.0, ymax)],
            BLACK.mix(0.4),
        ))?;
        // Staggered: the last phases come within a second of each other.
        c.draw_series(std::iter::once(Text::new(
            label.to_string(),
            (t / 1000.0, ymax * (0.93 - 0.09 * i as f64)),
            ("sans-serif", 12),
        )))?;
    }
    Ok(())
}

/// Draws, per run, the slowest handshake and connect() during the drain against the baseline.
pub fn plot_rates(report: &BenchReport, path: &Path) -> Result<()> {
    draw_rates(report, path).map_err(|e| anyhow::anyhow!("plotting {}: {e}", path.display()))
}

fn draw_rates(report: &BenchReport, path: &Path) -> Plot {
    let root = SVGBackend::new(path, (1100, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    let xmax = report.runs.iter().map(|r| r.rate).fold(1.0, f64::max) * 1.15;
    let ymax = report
        .runs
        .iter()
        .map(|r| r.connect_drain_ms.max)
        .fold(1.0, f64::max)
        * 2.0;
    let mut c = ChartBuilder::on(&root)
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .caption(
            "Connection setups during the drain vs the same run's steady baseline",
            ("sans-serif", 20),
        )
        .build_cartesian_2d(0.0..xmax, (0.001..ymax).log_scale())?;
    c.configure_mesh()
        .x_desc("new connections/s")
        .y_desc("ms (log)")
        .draw()?;
    let series: [(&str, RGBColor, Metric); 4] = [
        ("connect() max, drain", BLUE, |r| r.connect_drain_ms.max),
        ("connect() p99.9, baseline", CYAN, |r| {
            r.connect_baseline_ms.p999
        }),
        ("handshake max, drain", RED, |r| r.handshake_drain_ms.max),
        ("handshake p99.9, baseline", MAGENTA, |r| {
            r.handshake_baseline_ms.p999
        }),
    ];
    for (i, (label, color, f)) in series.into_iter().enumerate() {
        let dx = (i as f64 - 1.5) * xmax * 0.006;
        c.draw_series(
            report
                .runs
                .iter()
                .map(|r| Circle::new((r.rate + dx, f(r).max(0.001)), 3, color.filled())),
        )?
        .label(label)
        .legend(move |(x, y)| Circle::new((x + 7, y), 3, color.filled()));
    }
    c.configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

/// How long a full bench takes, roughly, for the message before it starts.
pub fn estimate(a: &BenchArgs) -> Duration {
    let per_run = Duration::from_secs(40);
    let drains = a.rates.len() as u32 * a.runs;
    let probes = if a.rates.iter().any(|r| r == "auto") {
        a.auto_candidates.len() as u32
    } else {
        0
    };
    per_run * (drains + probes)
}
