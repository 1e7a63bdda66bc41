//! Scenarios: the same mixed load through the lab while something happens to the MASTER, so ways of
//! taking a node out of service can be compared by what clients saw.
//!
//! Each scenario gets a fresh lab (so one scenario's leftovers can't help or hurt the next), starts
//! the load generator in the client namespace, performs its event at `event_at`, waits for the load
//! to finish and returns one [`ScenarioResult`]: the load report plus the event's own timeline.

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::load::{monotonic_ns, FlowClass, LoadReport, LoadSpec};
use crate::topology::{addr, find_bin, Lab, LabOptions, Node, INGRESS_IF};

mod agent;
mod events;
mod sampling;

pub use agent::{drain_agent, AgentConfig, AgentOptions, DuringDrain, When, EVENT_WAIT};
pub use events::{established_on, seed_rules_list};
pub use sampling::{NodeSamples, SAMPLE_INTERVAL};
// The scenarios run_inner starts by name.
use events::{plain_failover, seed_rules};
use sampling::{sample_node, StopOnDrop};

/// The event a scenario performs on lb1 (the MASTER) while the load runs.
pub enum Event {
    /// Nothing happens.
    None,
    /// The tracked interface goes down; VRRP moves the VIP; nothing else is done.
    PlainFailover,
    /// The CONNMARK/TEE ruleset operators used before this agent (docs/kernel-facts.md#k2), adapted to the lab's addresses,
    /// then the tracked interface down once lb1's established count falls (or a deadline).
    SeedRules,
    /// A custom event (e.g. running drain-agent); it gets the lab and the scenario clock.
    Custom(CustomEvent),
}

/// A custom event: gets the lab and the scenario clock, reports its outcome.
pub type CustomEvent = Box<dyn FnOnce(&mut Lab, &Clock) -> Result<EventOutcome>>;

/// What an event reports about itself.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct EventOutcome {
    /// Milliseconds from the event's start until the node was out of service (VIP on the peer and
    /// the node's own changes removed), if it got there.
    pub drain_ms: Option<f64>,
    /// Milliseconds from the failover trigger until the peer held the VIP.
    pub failover_ms: Option<f64>,
    /// Timestamped notes (`t_ms` on the scenario clock).
    pub timeline: Vec<(f64, String)>,
    /// For drain-agent runs: what the agent reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentRun>,
}

/// One `drain-agent drain` run inside the lab.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct AgentRun {
    /// Exit code.
    pub exit_code: i32,
    /// The JSON lines it printed (events, then the result), each with `t_ms` on the scenario clock.
    pub events: Vec<serde_json::Value>,
    /// Its stderr.
    pub stderr: String,
}

impl AgentRun {
    /// The first event of a kind (`event` field), if any.
    pub fn event(&self, kind: &str) -> Option<&serde_json::Value> {
        self.events.iter().find(|e| e["event"] == kind)
    }
    /// The final result document.
    pub fn result(&self) -> Option<&serde_json::Value> {
        self.events.iter().rev().find(|e| e.get("result").is_some())
    }
}

/// The scenario clock: CLOCK_MONOTONIC, the clock the load generator (`t0_mono_ns`) and the
/// agent's events (`mono_ns`) also stamp with, read as milliseconds from the moment the scenario
/// started the load generator. When the run ends, [`run_in`] moves every note and event onto
/// the load report's own origin (its `t0`, taken once the generator's runtime was up), so that
/// "after the withdrawal" compares one clock with itself: no offset between processes is guessed.
pub struct Clock {
    origin_ns: u64,
}

impl Clock {
    /// Starts the clock now.
    pub fn start() -> Clock {
        Clock {
            origin_ns: monotonic_ns(),
        }
    }

    /// Milliseconds since the clock started.
    pub fn ms(&self) -> f64 {
        self.at(monotonic_ns())
    }

    /// A CLOCK_MONOTONIC time (ns) as milliseconds on this clock.
    pub fn at(&self, mono_ns: u64) -> f64 {
        (mono_ns as f64 - self.origin_ns as f64) / 1e6
    }
}

impl EventOutcome {
    /// Appends a note stamped with the scenario clock.
    pub fn note(&mut self, clock: &Clock, what: impl Into<String>) {
        self.timeline.push((clock.ms(), what.into()));
    }
}

/// One scenario's result, printed as one JSON document.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ScenarioResult {
    /// Scenario name.
    pub scenario: String,
    /// Total flows started.
    pub flows: u64,
    /// Flows that did not end ok.
    pub broken: u64,
    /// Broken flows per class.
    pub broken_by_class: BTreeMap<String, u64>,
    /// Slowest connection setup (ms): a SYN retransmit shows as ~1000.
    pub worst_setup_ms: f64,
    /// p99 of short-request latency (ms).
    pub p99_short_ms: f64,
    /// p99.9 of the connection setups of the run's steady baseline (flows started before the
    /// spec's `baseline_until_ms`), if it has one.
    #[serde(default)]
    pub baseline_setup_p999_ms: Option<f64>,
    /// Which node held the VIP when the load ended.
    pub vip_owner_after: Option<Node>,
    /// The event's own report.
    pub event: EventOutcome,
    /// The full load report.
    pub load: LoadReport,
    /// What the nodes saw while the load ran, if the run was sampled ([`run_sampled`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub samples: Option<NodeSamples>,
}

impl ScenarioResult {
    /// Asserts the crash happened where a test says: the agent had printed `diverted` (the
    /// divert was in place, so the repair path had something to repair) before the timeline's
    /// note containing `kill_note`, on the one scenario clock, and it had not withdrawn its own
    /// divert before.
    pub fn assert_killed_after_the_divert(&self, kill_note: &str) {
        let agent = self.event.agent.as_ref().expect("agent ran");
        let diverted = agent
            .event("diverted")
            .and_then(|e| e["t_ms"].as_f64())
            .unwrap_or_else(|| panic!("killed before the divert: {:?}", self.event.timeline));
        let killed = self
            .event
            .timeline
            .iter()
            .find(|(_, n)| n.contains(kill_note))
            .unwrap_or_else(|| panic!("no {kill_note:?} in {:?}", self.event.timeline))
            .0;
        assert!(
            diverted < killed,
            "killed at {killed:.1} ms, before the divert at {diverted:.1} ms: {:?}",
            self.event.timeline
        );
        assert!(
            agent.event("withdrawn").is_none(),
            "the agent undid its own divert before the kill: {:?}",
            agent.events
        );
    }
}

/// The mixed load every scenario uses unless told otherwise: ≥ 500 short HTTP requests/s plus long
/// echo sessions with half-close, keep-alive sessions and slow downloads, for 8 s.
pub fn default_load() -> LoadSpec {
    serde_json::from_value(serde_json::json!({
        "target": addr::VIP.to_string(),
        "http_port": addr::HTTP_PORT,
        "echo_port": addr::ECHO_PORT,
        "duration_ms": 8000,
        "short": { "rate_per_s": 500.0 },
        "keepalive": { "sessions_per_s": 5.0, "interval_ms": 100, "session_ms": 3000 },
        "echo": { "sessions_per_s": 10.0, "session_ms": 3000, "chunk_bytes": 64, "interval_ms": 100 },
        "slow": { "downloads_per_s": 2.0, "ms": 3000, "bytes": 30000 },
    }))
    .expect("the default load spec is valid")
}

/// When the drain starts in a [`scale_load`] run: by then the echo sessions opened since the
/// start are all still open (50/s × 11 s = 550).
pub const SCALE_EVENT_AT: Duration = Duration::from_millis(11_000);

/// The high-rate mixed load: 3000 short HTTP requests/s, 50 echo sessions/s of 11 s (so ≥ 500
/// are open when the drain starts at [`SCALE_EVENT_AT`]), keep-alive sessions and slow
/// downloads, for 26 s; flows started before the drain are the run's steady baseline.
pub fn scale_load() -> LoadSpec {
    let mut load = default_load();
    load.duration_ms = 26_000;
    load.short.rate_per_s = 3000.0;
    load.echo.sessions_per_s = 50.0;
    load.echo.session_ms = 11_000;
    load.baseline_until_ms = Some(SCALE_EVENT_AT.as_millis() as u64);
    load
}

/// When the hand-off starts in a [`handoff_load`] run: by then ≥ 100 echo sessions are open.
pub const HANDOFF_EVENT_AT: Duration = Duration::from_millis(12_000);

/// The mixed load with long sessions for a hand-off: 500 short HTTP requests/s, 10 echo
/// sessions/s of 20 s (≥ 100 open at [`HANDOFF_EVENT_AT`], the last of them ending 20 s after
/// it), keep-alive sessions and slow downloads, for 36 s; flows started before the hand-off are
/// the run's steady baseline.
pub fn handoff_load() -> LoadSpec {
    let mut load = default_load();
    load.duration_ms = 36_000;
    load.echo.session_ms = 20_000;
    load.baseline_until_ms = Some(HANDOFF_EVENT_AT.as_millis() as u64);
    load
}

/// Runs a scenario in a fresh lab (torn down before returning, whatever happens).
pub fn run(
    name: &str,
    opts: &LabOptions,
    load: &LoadSpec,
    event_at: Duration,
    event: Event,
) -> Result<ScenarioResult> {
    let mut lab = Lab::up(opts)?;
    run_in(&mut lab, name, load, event_at, event)
}

/// Runs a scenario in an existing lab.
pub fn run_in(
    lab: &mut Lab,
    name: &str,
    load: &LoadSpec,
    event_at: Duration,
    event: Event,
) -> Result<ScenarioResult> {
    run_inner(lab, name, load, event_at, event, false)
}

/// Runs a scenario in a fresh lab, sampling what each LB node accepts ([`NodeSamples`]).
pub fn run_sampled(
    name: &str,
    opts: &LabOptions,
    load: &LoadSpec,
    event_at: Duration,
    event: Event,
) -> Result<ScenarioResult> {
    let mut lab = Lab::up(opts)?;
    run_inner(&mut lab, name, load, event_at, event, true)
}

fn run_inner(
    lab: &mut Lab,
    name: &str,
    load: &LoadSpec,
    event_at: Duration,
    event: Event,
    sample: bool,
) -> Result<ScenarioResult> {
    let spec_path = lab.dir.join(format!("load-{name}.json"));
    let out_path = lab.dir.join(format!("report-{name}.json"));
    // Unless told otherwise, the flows started before the event are the run's steady baseline,
    // the one [`LoadReport::stall_check`] compares the rest to.
    let mut load = load.clone();
    load.baseline_until_ms
        .get_or_insert(event_at.as_millis() as u64);
    fs::write(&spec_path, serde_json::to_vec_pretty(&load)?)?;
    let clock = Clock::start();
    let mut gen = start_load(lab, &spec_path, &out_path)?;
    let stop = StopOnDrop(std::sync::Arc::new(std::sync::atomic::AtomicBool::new(
        false,
    )));
    let samplers =
        sample.then(|| [Node::Lb1, Node::Lb2].map(|n| sample_node(lab.node_ns(n), stop.0.clone())));
    std::thread::sleep(event_at);
    let outcome = match event {
        Event::None => Ok(EventOutcome::default()),
        Event::PlainFailover => plain_failover(lab, &clock),
        Event::SeedRules => seed_rules(lab, &clock),
        Event::Custom(f) => f(lab, &clock),
    };
    let status = gen.wait()?;
    let mut outcome =
        outcome.with_context(|| format!("scenario {name}: event failed\n{}", lab.log_tail()))?;
    // The generator exits 1 when it saw broken flows: that is a result, not an error.
    if !matches!(status.code(), Some(0) | Some(1)) {
        bail!(
            "scenario {name}: load generator exited with {status}\n{}",
            lab.log_tail()
        );
    }
    drop(stop);
    let report: LoadReport =
        serde_json::from_slice(&fs::read(&out_path)?).context("parsing the load report")?;
    if report.t0_mono_ns == 0 {
        bail!("scenario {name}: the load report has no `t0_mono_ns`: an old drain-lab binary?");
    }
    // From here on every time is on the load report's clock.
    let load_clock = Clock {
        origin_ns: report.t0_mono_ns,
    };
    let shift_ms = clock.at(report.t0_mono_ns);
    for note in &mut outcome.timeline {
        note.0 -= shift_ms;
    }
    if let Some(agent) = outcome.agent.as_mut() {
        for e in &mut agent.events {
            if let Some(t) = e["t_ms"].as_f64() {
                e["t_ms"] = serde_json::json!(t - shift_ms);
            }
        }
    }
    let on_load_clock =
        |v: Vec<(u64, u64)>| v.into_iter().map(|(t, n)| (load_clock.at(t), n)).collect();
    let samples = samplers.map(|[lb1, lb2]| NodeSamples {
        lb1: on_load_clock(lb1.join().unwrap_or_default()),
        lb2: on_load_clock(lb2.join().unwrap_or_default()),
    });
    let mut r = summarise(name, report, outcome, lab.vip_owner()?);
    r.samples = samples;
    Ok(r)
}

fn start_load(lab: &Lab, spec: &PathBuf, out: &PathBuf) -> Result<Child> {
    let bin = find_bin("drain-lab")?;
    let log = fs::File::create(lab.dir.join("load.log"))?;
    Command::new("ip")
        .args(["netns", "exec", &lab.client_ns()])
        .arg(bin)
        .args(["load", "--spec"])
        .arg(spec)
        .arg("--out")
        .arg(out)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .context("starting the load generator")
}

fn summarise(
    name: &str,
    load: LoadReport,
    event: EventOutcome,
    owner: Option<Node>,
) -> ScenarioResult {
    ScenarioResult {
        scenario: name.to_string(),
        flows: load.totals.started,
        broken: load.broken(),
        broken_by_class: FlowClass::ALL
            .iter()
            .map(|c| (c.name().to_string(), load.classes.get(*c).failed()))
            .collect(),
        worst_setup_ms: load.setup_latency_ms.max,
        p99_short_ms: load.short_latency_ms.p99,
        baseline_setup_p999_ms: (load.setup_latency_baseline_ms.count > 0)
            .then_some(load.setup_latency_baseline_ms.p999),
        vip_owner_after: owner,
        event,
        load,
        samples: None,
    }
}

/// The comparison table of several scenario results.
pub fn comparison_table(results: &[ScenarioResult]) -> String {
    let mut classes: Vec<String> = results
        .iter()
        .flat_map(|r| r.broken_by_class.keys().cloned())
        .collect();
    classes.sort();
    classes.dedup();
    let mut s = format!("{:<16} {:>6} {:>7}", "scenario", "flows", "broken");
    for c in &classes {
        s.push_str(&format!(" {:>9}", c));
    }
    s.push_str(&format!(
        " {:>14} {:>12} {:>9}\n",
        "worst-setup-ms", "p99-short-ms", "drain-s"
    ));
    for r in results {
        s.push_str(&format!(
            "{:<16} {:>6} {:>7}",
            r.scenario, r.flows, r.broken
        ));
        for c in &classes {
            s.push_str(&format!(
                " {:>9}",
                r.broken_by_class.get(c).copied().unwrap_or(0)
            ));
        }
        let drain = r
            .event
            .drain_ms
            .map(|d| format!("{:.1}", d / 1000.0))
            .unwrap_or_else(|| "-".into());
        s.push_str(&format!(
            " {:>14.1} {:>12.1} {:>9}\n",
            r.worst_setup_ms, r.p99_short_ms, drain
        ));
    }
    s
}
