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

/// Every [`SAMPLE_INTERVAL`] on the scenario clock: how many connections each LB node had
/// accepted so far (`PassiveOpens` of its namespace), so a plot can show who served new flows.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct NodeSamples {
    /// (t_ms, accepted so far) on lb1.
    pub lb1: Vec<(f64, u64)>,
    /// (t_ms, accepted so far) on lb2.
    pub lb2: Vec<(f64, u64)>,
}

/// How often [`NodeSamples`] are taken.
pub const SAMPLE_INTERVAL: Duration = Duration::from_millis(100);

/// Samples `PassiveOpens` of one namespace on a thread inside it until `stop`; times are
/// CLOCK_MONOTONIC ns, put on the scenario clock by the caller.
fn sample_node(
    ns: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<Vec<(u64, u64)>> {
    std::thread::spawn(move || {
        let mut out = Vec::new();
        let Ok(fd) = fs::File::open(format!("/run/netns/{ns}")) else {
            return out;
        };
        if nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET).is_err() {
            return out;
        }
        // /proc/net follows the process's namespace; thread-self follows this thread's.
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            if let Some(n) = fs::read_to_string("/proc/thread-self/net/snmp")
                .ok()
                .and_then(|t| passive_opens(&t))
            {
                out.push((monotonic_ns(), n));
            }
            std::thread::sleep(SAMPLE_INTERVAL);
        }
        out
    })
}

/// Stops the samplers however the scenario ends.
struct StopOnDrop(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// `PassiveOpens` from `/proc/net/snmp`'s two `Tcp:` lines.
fn passive_opens(snmp: &str) -> Option<u64> {
    let mut tcp = snmp.lines().filter(|l| l.starts_with("Tcp:"));
    let (names, values) = (tcp.next()?, tcp.next()?);
    let at = names.split_whitespace().position(|n| n == "PassiveOpens")?;
    values.split_whitespace().nth(at)?.parse().ok()
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

fn plain_failover(lab: &mut Lab, clock: &Clock) -> Result<EventOutcome> {
    let mut o = EventOutcome::default();
    let t0 = Instant::now();
    o.note(clock, "lb1: tracked interface down");
    lab.set_tracked(Node::Lb1, false)?;
    let took = lab.wait_vip_owner(Node::Lb2, Duration::from_secs(10))?;
    o.note(clock, "lb2 holds the VIP");
    o.failover_ms = Some(took.as_secs_f64() * 1000.0);
    o.drain_ms = Some(t0.elapsed().as_secs_f64() * 1000.0);
    Ok(o)
}

/// The operators' hand-written rules (docs/kernel-facts.md#k2), with the lab's VIP, ingress interface and peer.
pub fn seed_rules_list() -> Vec<String> {
    let vip = addr::VIP;
    let peer = addr::LB2;
    let i = INGRESS_IF;
    vec![
        format!("PREROUTING -i {i} -d {vip} -m conntrack --ctstate NEW -j CONNMARK --set-mark 1"),
        "PREROUTING -j CONNMARK --restore-mark".to_string(),
        format!("PREROUTING -i {i} -p tcp --tcp-flags FIN FIN -j MARK --set-mark 2"),
        format!("PREROUTING -i {i} -p tcp --tcp-flags RST RST -j MARK --set-mark 2"),
        format!("PREROUTING -i {i} -m mark ! --mark 0 -j TEE --gateway {peer}"),
        format!("PREROUTING -i {i} -m mark --mark 1 -j DROP"),
    ]
}

/// What the peer needs to accept TEE'd packets for the VIP while BACKUP (docs/kernel-facts.md#k5),
/// done by hand for the seed scenario the way its author would have had to.
fn peer_accept(lab: &Lab, node: Node, on: bool) -> Result<()> {
    let ns = lab.node_ns(node);
    let vip = format!("{}/32", addr::VIP);
    if on {
        lab.exec(
            &ns,
            &[
                "ip", "route", "add", "local", &vip, "dev", "lo", "table", "main",
            ],
        )?;
        lab.sysctl(&ns, &format!("net.ipv4.conf.{INGRESS_IF}.arp_ignore"), "1")?;
        lab.sysctl(
            &ns,
            &format!("net.ipv4.conf.{INGRESS_IF}.arp_announce"),
            "2",
        )?;
    } else {
        lab.exec(
            &ns,
            &[
                "ip", "route", "del", "local", &vip, "dev", "lo", "table", "main",
            ],
        )?;
        lab.sysctl(&ns, &format!("net.ipv4.conf.{INGRESS_IF}.arp_ignore"), "0")?;
        lab.sysctl(
            &ns,
            &format!("net.ipv4.conf.{INGRESS_IF}.arp_announce"),
            "0",
        )?;
    }
    Ok(())
}

/// Established connections on lb1 to the VIP's ports, counted the way the seed's author did
/// (a command-line tool); only the lab uses this, the agent uses sock_diag.
pub fn established_on(lab: &Lab, node: Node) -> Result<usize> {
    let filter = format!(
        "( sport = :{} or sport = :{} ) and src {}",
        addr::HTTP_PORT,
        addr::ECHO_PORT,
        addr::VIP
    );
    let out = lab.exec(
        &lab.node_ns(node),
        &["ss", "-Htn", "state", "established", &filter],
    )?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count())
}

fn seed_rules(lab: &mut Lab, clock: &Clock) -> Result<EventOutcome> {
    let mut o = EventOutcome::default();
    let t0 = Instant::now();
    let ns1 = lab.node_ns(Node::Lb1);
    peer_accept(lab, Node::Lb2, true)?;
    // The seed sets every rp_filter to 0 (and never restores them; the lab does).
    let rp_keys: Vec<String> = ["all", "default", INGRESS_IF, "lo"]
        .iter()
        .map(|i| format!("net.ipv4.conf.{i}.rp_filter"))
        .collect();
    let mut saved = Vec::new();
    for k in &rp_keys {
        let v = String::from_utf8_lossy(&lab.exec(&ns1, &["sysctl", "-n", k])?.stdout)
            .trim()
            .to_string();
        saved.push((k.clone(), v));
        lab.sysctl(&ns1, k, "0")?;
    }
    o.note(clock, "lb1: seed rules installed");
    for rule in seed_rules_list() {
        let mut argv = vec!["iptables", "-t", "mangle", "-A"];
        argv.extend(rule.split(' '));
        lab.exec(&ns1, &argv)?;
    }
    // "keep an eye on netstat ... | grep ESTABLISHED | wc -l"; "once there are just a few (or zero)".
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let n = established_on(lab, Node::Lb1)?;
        if n == 0 || Instant::now() >= deadline {
            o.note(clock, format!("lb1: {n} established left"));
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    o.note(clock, "lb1: tracked interface down");
    let t_fail = Instant::now();
    lab.set_tracked(Node::Lb1, false)?;
    let took = lab.wait_vip_owner(Node::Lb2, Duration::from_secs(10))?;
    o.failover_ms = Some(took.as_secs_f64() * 1000.0);
    o.note(clock, "lb2 holds the VIP");
    let _ = t_fail;
    std::thread::sleep(Duration::from_secs(1));
    for rule in seed_rules_list() {
        let mut argv = vec!["iptables", "-t", "mangle", "-D"];
        argv.extend(rule.split(' '));
        lab.exec(&ns1, &argv)?;
    }
    for (k, v) in saved {
        lab.sysctl(&ns1, &k, &v)?;
    }
    peer_accept(lab, Node::Lb2, false)?;
    o.note(clock, "lb1: seed rules removed");
    o.drain_ms = Some(t0.elapsed().as_secs_f64() * 1000.0);
    Ok(o)
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

/// Something done to the lab while the agent drains, at a time after the drain started.
#[derive(Clone, Debug)]
pub enum DuringDrain {
    /// The peer dies: its ingress link goes down (no answer at all).
    PeerLinkDown,
    /// SIGTERM to the drain-agent process.
    Terminate,
    /// A second `drain` on the same node (must be refused); its exit code is noted.
    SecondDrain,
    /// SIGKILL to drain-agent (a crash: no rollback runs).
    Kill,
    /// `drain-agent undrain` on lb1; its exit code is noted.
    Undrain,
    /// keepalived on a node stops gracefully (SIGTERM: notify STOP runs) and starts again.
    RestartKeepalived(Node),
    /// SIGKILL to the daemon on a node (a crash).
    KillDaemon(Node),
    /// Starts the daemon on a node again.
    StartDaemon(Node),
    /// A node goes away: its ingress link goes down.
    NodeLinkDown(Node),
    /// A node's ingress link comes back.
    NodeLinkUp(Node),
    /// Runs a command in a lab namespace (by role: `lb1`, `lb2`, `cl`) and notes its exit code.
    Exec(String, Vec<String>),
    /// Starts a background process (name, role, argv) as [`Lab::spawn`] does: the lab kills it
    /// at teardown, so it must also end by itself (bounded).
    Spawn(String, String, Vec<String>),
    /// SIGTERM to a process the lab started (`haproxy-lb2`, ...), waited for.
    StopProcess(String),
    /// SIGKILL to every process in a node's namespace whose command name is this: for
    /// `keepalived`, its main process and its VRRP child, so no shutdown code runs.
    KillAll(Node, String),
}

/// When a [`DuringDrain`] action happens.
#[derive(Clone, Debug)]
pub enum When {
    /// This long after the drain command was started (or at once, if that has passed).
    At(Duration),
    /// This long after the agent printed its first event of this kind (`ready`, `diverted`, ...):
    /// the action follows that step however slowly the machine runs. The scenario fails if the
    /// event does not come within [`EVENT_WAIT`].
    After(&'static str, Duration),
}

/// How long [`When::After`] waits for its event.
pub const EVENT_WAIT: Duration = Duration::from_secs(60);

/// How to run drain-agent in the `drain-agent` scenario.
#[derive(Clone, Debug, Default)]
pub struct AgentOptions {
    /// Extra arguments after `drain`.
    pub args: Vec<String>,
    /// Config overrides for lb1 (see [`Lab::write_agent_config`]).
    pub overrides: AgentConfig,
    /// Actions while the drain runs, in this order, each when its [`When`] says.
    pub during: Vec<(When, DuringDrain)>,
    /// Skip `accept` on the peer (to test that the agent refuses an unprepared peer).
    pub no_accept: bool,
}

/// The parts of the agent's config the lab varies.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// `drain.deadline`.
    pub deadline: String,
    /// `drain.idle_threshold`.
    pub idle_threshold: String,
    /// `drain.rollback_grace`.
    pub rollback_grace: String,
    /// `failover.post_wait`.
    pub post_wait: String,
    /// `drain.poll_interval`.
    pub poll_interval: String,
    /// `handoff.deadline` (used when the lab has [`LabOptions::handoff`]).
    pub handoff_deadline: String,
    /// `metrics.listen`, if the daemon should serve metrics.
    pub metrics_listen: Option<String>,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            deadline: "30s".into(),
            idle_threshold: "2s".into(),
            rollback_grace: "5s".into(),
            post_wait: "1s".into(),
            poll_interval: "100ms".into(),
            handoff_deadline: "5m".into(),
            metrics_listen: None,
        }
    }
}

impl Lab {
    /// Writes the drain-agent config of a node (its peer is the other node) and returns its path.
    pub fn write_agent_config(&self, node: Node, c: &AgentConfig) -> Result<PathBuf> {
        let path = self.dir.join(format!("agent-{node}.yaml"));
        let handoff = if self.opts.handoff {
            format!(
                "handoff:\n  key_file: {}\n  deadline: {}\n",
                self.handoff_key()?.display(),
                c.handoff_deadline
            )
        } else {
            String::new()
        };
        let metrics = c
            .metrics_listen
            .as_ref()
            .map_or(String::new(), |l| format!("metrics:\n  listen: {l}\n"));
        let text = format!(
            "# drain-agent config of lab node {node}
vips:
  - address: {vip}
    ports: [{http}, {echo}]
ingress_interface: {ingress}
peer: {peer}
tracked_interface: {tracked}
failover:
  method: {method}
  timeout: 10s
  post_wait: {post_wait}
  track_file: {track}
  return_weight: {ret}
drain:
  deadline: {deadline}
  idle_threshold: {idle}
  poll_interval: {poll}
  rollback_grace: {grace}
peer_probe:
  interval: 200ms
  timeout: 200ms
  failures: 2
state_dir: {dir}/agent-state-{node}
{handoff}{metrics}",
            vip = addr::VIP,
            http = addr::HTTP_PORT,
            echo = addr::ECHO_PORT,
            ingress = INGRESS_IF,
            peer = node.peer().addr(),
            tracked = crate::topology::TRACKED_IF,
            post_wait = c.post_wait,
            method = if self.opts.track_file_trigger {
                "track-file"
            } else {
                "link-down"
            },
            track = self.track_file(node).display(),
            // In a preempting pair lb1 (150) must come back below lb2 (100): 150 - 51 = 99.
            ret = if !self.opts.nopreempt && node == Node::Lb1 {
                -51
            } else {
                0
            },
            deadline = c.deadline,
            idle = c.idle_threshold,
            grace = c.rollback_grace,
            poll = c.poll_interval,
            dir = self.dir.display(),
        );
        fs::write(&path, text)?;
        Ok(path)
    }

    /// The key both agents' peer link uses (created on first use: 32 random bytes, mode 0600).
    pub fn handoff_key(&self) -> Result<PathBuf> {
        use std::io::Read;
        use std::os::unix::fs::OpenOptionsExt;
        let path = self.dir.join("handoff.key");
        if !path.exists() {
            let mut key = [0u8; 32];
            fs::File::open("/dev/urandom")?.read_exact(&mut key)?;
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)?;
            std::io::Write::write_all(&mut f, &key)?;
        }
        Ok(path)
    }

    /// Both LB nodes' host snapshots, (lb1, lb2): see [`Lab::host_snapshot`].
    pub fn pair_snapshots(&self) -> Result<(String, String)> {
        Ok((
            self.host_snapshot(Node::Lb1)?,
            self.host_snapshot(Node::Lb2)?,
        ))
    }

    /// Brings lb1 back in service after a drain (`undrain`) and compares both hosts with their
    /// `before` snapshots (VIP lines aside: the lab pair preempts, so lb1 returns as BACKUP,
    /// demoted by return_weight, and the VIP stays on lb2). The error names what differs.
    pub fn undrain_and_compare(&self, before: &(String, String)) -> Result<()> {
        let out = self.agent(Node::Lb1, &["undrain"])?;
        if !out.status.success() {
            bail!("undrain: {}", String::from_utf8_lossy(&out.stderr));
        }
        // Compared once keepalived on lb1 has left FAULT (it announces BACKUP) and every notify
        // call has finished, not after a guessed pause.
        self.wait_announced(Node::Lb1, "BACKUP", Duration::from_secs(15))?;
        let owner = self.vip_owner()?;
        if owner != Some(Node::Lb2) {
            bail!("after undrain the VIP is on {owner:?}, not lb2: lb1 preempted lb2");
        }
        let after = self.pair_snapshots()?;
        for (node, b, a) in [("lb1", &before.0, &after.0), ("lb2", &before.1, &after.1)] {
            if b != a {
                bail!(
                    "{node} not restored:\n{}",
                    crate::fleet::snapshot_diff(b, a)
                );
            }
        }
        Ok(())
    }

    /// Runs `drain-agent -c <node config> ARGS...` in a node's namespace and returns its output.
    pub fn agent(&self, node: Node, args: &[&str]) -> Result<std::process::Output> {
        let bin = find_bin("drain-agent")?;
        let cfg = self.dir.join(format!("agent-{node}.yaml"));
        let sock = self.control_socket(node);
        let mut argv = vec![
            bin.to_str().unwrap().to_string(),
            "-c".into(),
            cfg.to_str().unwrap().to_string(),
            "--socket".into(),
            sock.to_str().unwrap().to_string(),
        ];
        argv.extend(args.iter().map(|s| s.to_string()));
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        self.exec_status(&self.node_ns(node), &argv)
    }
}

/// The `drain-agent` event: `accept` on lb2, `drain --json` on lb1 (with the given actions while it
/// runs), `release` on lb2.
pub fn drain_agent(opts: AgentOptions) -> Event {
    Event::Custom(Box::new(move |lab, clock| run_agent(lab, clock, opts)))
}

fn run_agent(lab: &mut Lab, clock: &Clock, opts: AgentOptions) -> Result<EventOutcome> {
    let mut o = EventOutcome::default();
    lab.write_agent_config(Node::Lb1, &opts.overrides)?;
    lab.write_agent_config(Node::Lb2, &AgentConfig::default())?;
    if !opts.no_accept {
        let acc = lab.agent(Node::Lb2, &["accept"])?;
        if !acc.status.success() {
            bail!(
                "drain-agent accept on lb2 failed: {}",
                String::from_utf8_lossy(&acc.stderr)
            );
        }
        o.note(clock, "lb2: drain-agent accept");
    }
    let bin = find_bin("drain-agent")?;
    let cfg = lab.dir.join("agent-lb1.yaml");
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &lab.node_ns(Node::Lb1)])
        .arg(&bin)
        .arg("-c")
        .arg(&cfg)
        .arg("--socket")
        .arg(lab.control_socket(Node::Lb1))
        .args(["--json", "drain"])
        .args(&opts.args);
    let t0 = Instant::now();
    o.note(clock, "lb1: drain-agent drain");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting drain-agent")?;
    // Read both pipes while the agent runs, or its live progress could fill a pipe and block it;
    // stdout line by line, so that an action can wait for the event it must follow.
    let (lines_tx, lines) = std::sync::mpsc::channel::<String>();
    let stdout_pipe = child.stdout.take();
    let stdout = std::thread::spawn(move || {
        use std::io::BufRead;
        if let Some(p) = stdout_pipe {
            for line in std::io::BufReader::new(p).lines().map_while(Result::ok) {
                if lines_tx.send(line).is_err() {
                    break;
                }
            }
        }
    });
    let stderr_pipe = child.stderr.take();
    let stderr = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(mut p) = stderr_pipe {
            let _ = std::io::Read::read_to_string(&mut p, &mut s);
        }
        s
    });
    let mut events: Vec<serde_json::Value> = Vec::new();
    let take_line = |line: String, events: &mut Vec<serde_json::Value>| {
        if let Ok(mut v) = serde_json::from_str::<serde_json::Value>(&line) {
            if let Some(ns) = v["mono_ns"].as_u64() {
                v["t_ms"] = serde_json::json!(clock.at(ns));
            }
            events.push(v);
        }
    };
    let mut exited = None;
    for (when, action) in opts.during.clone() {
        match when {
            When::At(at) => {
                let now = t0.elapsed();
                if at > now {
                    std::thread::sleep(at - now);
                }
            }
            When::After(kind, delay) => {
                let bound = Instant::now() + EVENT_WAIT;
                while !events.iter().any(|e| e["event"] == kind) {
                    match lines.recv_timeout(bound.saturating_duration_since(Instant::now())) {
                        Ok(line) => take_line(line, &mut events),
                        Err(e) => {
                            let _ = child.kill();
                            let _ = child.wait();
                            bail!(
                                "the agent never emitted `{kind}` ({}), so {action:?} cannot follow it; events: {:?}\nstderr: {}",
                                if e == std::sync::mpsc::RecvTimeoutError::Timeout { format!("not within {EVENT_WAIT:?}") } else { "it exited".to_string() },
                                events.iter().map(|e| e["event"].clone()).collect::<Vec<_>>(),
                                stderr.join().unwrap_or_default()
                            );
                        }
                    }
                }
                o.note(clock, format!("lb1: the agent emitted `{kind}`"));
                // Not ordering (the event did that): how far into the step the action lands.
                std::thread::sleep(delay);
            }
        }
        match action {
            DuringDrain::PeerLinkDown => {
                o.note(clock, "lb2: ingress link down (peer dies)");
                lab.exec(
                    &lab.node_ns(Node::Lb2),
                    &["ip", "link", "set", INGRESS_IF, "down"],
                )?;
            }
            DuringDrain::Terminate => {
                o.note(clock, "lb1: SIGTERM to drain-agent");
                // `ip netns exec` execs the agent, so the child pid is the agent's.
                nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(child.id() as i32),
                    nix::sys::signal::Signal::SIGTERM,
                )?;
            }
            DuringDrain::Kill => {
                o.note(clock, "lb1: SIGKILL to drain-agent");
                nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(child.id() as i32),
                    nix::sys::signal::Signal::SIGKILL,
                )?;
                // Dead before the next action: an `undrain` must not find the lock still held.
                exited = Some(child.wait()?);
                o.note(clock, "lb1: drain-agent gone");
            }
            DuringDrain::RestartKeepalived(node) => {
                lab.stop(&format!("keepalived-{node}"))?;
                o.note(clock, format!("{node}: keepalived stopped"));
                lab.start_keepalived(node)?;
                o.note(clock, format!("{node}: keepalived started"));
            }
            DuringDrain::KillDaemon(node) => {
                lab.kill(&format!("agent-{node}"))?;
                o.note(clock, format!("{node}: daemon killed (SIGKILL)"));
            }
            DuringDrain::NodeLinkDown(node) => {
                lab.exec(
                    &lab.node_ns(node),
                    &["ip", "link", "set", INGRESS_IF, "down"],
                )?;
                o.note(clock, format!("{node}: ingress link down (node gone)"));
            }
            DuringDrain::NodeLinkUp(node) => {
                lab.exec(&lab.node_ns(node), &["ip", "link", "set", INGRESS_IF, "up"])?;
                o.note(clock, format!("{node}: ingress link up"));
            }
            DuringDrain::Exec(role, argv) => {
                let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
                let out = lab.exec_status(&lab.ns(&role), &argv)?;
                o.note(
                    clock,
                    format!(
                        "{role}: {argv:?} exited {} ({})",
                        out.status.code().unwrap_or(-1),
                        String::from_utf8_lossy(&out.stderr).trim()
                    ),
                );
            }
            DuringDrain::Spawn(name, role, argv) => {
                let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
                let ns = lab.ns(&role);
                lab.spawn(&name, &ns, &argv)?;
                o.note(clock, format!("{role}: {name} started"));
            }
            DuringDrain::StopProcess(name) => {
                lab.stop(&name)?;
                o.note(clock, format!("{name} stopped (SIGTERM)"));
            }
            DuringDrain::KillAll(node, comm) => {
                let killed = lab.kill_all(node, &comm)?;
                o.note(
                    clock,
                    format!("{node}: {killed} {comm} process(es) killed (SIGKILL)"),
                );
            }
            DuringDrain::StartDaemon(node) => {
                lab.start_daemon(node)?;
                o.note(clock, format!("{node}: daemon started"));
            }
            DuringDrain::Undrain => {
                let out = lab.agent(Node::Lb1, &["undrain"])?;
                o.note(
                    clock,
                    format!(
                        "lb1: undrain exited {} ({})",
                        out.status.code().unwrap_or(-1),
                        String::from_utf8_lossy(&out.stderr).trim()
                    ),
                );
            }
            DuringDrain::SecondDrain => {
                let out = lab.agent(Node::Lb1, &["drain"])?;
                o.note(
                    clock,
                    format!(
                        "lb1: second drain exited {} ({})",
                        out.status.code().unwrap_or(-1),
                        String::from_utf8_lossy(&out.stderr).trim()
                    ),
                );
            }
        }
    }
    let status = match exited {
        Some(s) => s,
        None => child.wait()?,
    };
    let exit_code = status.code().unwrap_or(-1);
    o.note(clock, format!("lb1: drain-agent exited {exit_code}"));
    let _ = stdout.join();
    for line in lines.try_iter() {
        take_line(line, &mut events);
    }
    let stderr = stderr.join().unwrap_or_default();
    let run = AgentRun {
        exit_code,
        events,
        stderr,
    };
    if let Some(r) = run.result() {
        o.drain_ms = r["report"]["total_ms"].as_f64();
        o.failover_ms = r["report"]["failover_ms"].as_f64();
    }
    if !opts.no_accept {
        let rel = lab.agent(Node::Lb2, &["release"])?;
        if !rel.status.success() {
            bail!(
                "drain-agent release on lb2 failed: {}",
                String::from_utf8_lossy(&rel.stderr)
            );
        }
        o.note(clock, "lb2: drain-agent release");
    }
    o.agent = Some(run);
    Ok(o)
}
