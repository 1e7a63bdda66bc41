//! The daemon's own metrics: the drains it ran, counted and timed, and the phase of the one
//! running; and the exposition of everything.

use std::sync::{Arc, Mutex};

use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::config::DrainMode;
use crate::ops::status::{Mode, Status};
use crate::ops::{DrainReport, Event, OpError};

use super::node::NodeGauges;

/// Upper bounds (s) of the duration histograms' buckets.
const BUCKETS: [f64; 12] = [
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
];

/// The labels of `drain_agent_drains_total`: `mode` and `result`.
type DrainLabels = [(&'static str, &'static str); 2];

/// What decides the phase while the daemon runs a drain.
#[derive(Debug, Default)]
struct Live {
    /// The phase of the drain the daemon runs, if it runs one.
    phase: Option<&'static str>,
    mode: DrainMode,
    /// Bumped whenever the daemon's own drain stops deciding the phase, so a snapshot of the
    /// node read before that (while the drain held the lock: "draining") is not shown after it.
    generation: u64,
}

/// The daemon's metrics.
#[derive(Debug)]
pub struct Metrics {
    /// Also held while the counters change with the phase and while a render encodes, so a
    /// scrape never sees a drain over without its count, or counted and still running.
    live: Mutex<Live>,
    /// The counters and histograms of the drains the daemon ran (below), kept across scrapes.
    daemon: Registry,
    drains: Family<DrainLabels, Counter>,
    diverted_flows: Counter,
    probe_failures: Counter,
    drain_seconds: Histogram,
    failover_seconds: Histogram,
}

fn mode_name(m: DrainMode) -> &'static str {
    match m {
        DrainMode::Drain => "drain",
        DrainMode::Handoff => "handoff",
    }
}

impl Default for Metrics {
    fn default() -> Metrics {
        let drains = Family::<DrainLabels, Counter>::default();
        // Every (mode, result) exists from 0: the DrainFailed alert's `increase(…[1h])` sees the
        // first failure only if the series was scraped before it.
        for mode in [DrainMode::Drain, DrainMode::Handoff] {
            for result in ["drained", "failed"] {
                drop(drains.get_or_create(&[("mode", mode_name(mode)), ("result", result)]));
            }
        }
        let m = Metrics {
            live: Mutex::default(),
            daemon: Registry::default(),
            drains,
            diverted_flows: Counter::default(),
            probe_failures: Counter::default(),
            drain_seconds: Histogram::new(BUCKETS),
            failover_seconds: Histogram::new(BUCKETS),
        };
        // The registry appends `_total` to a counter's name (and a full stop to each help).
        let mut daemon = Registry::default();
        daemon.register(
            "drain_agent_drains",
            "drains the daemon ran, by mode and result",
            m.drains.clone(),
        );
        daemon.register(
            "drain_agent_diverted_flows",
            "new flows the daemon's drains diverted to the peer",
            m.diverted_flows.clone(),
        );
        daemon.register(
            "drain_agent_peer_probe_failures",
            "failed probes of the peer during the daemon's drains",
            m.probe_failures.clone(),
        );
        daemon.register(
            "drain_agent_drain_duration_seconds",
            "from the divert to the end of the wait for the node's connections",
            m.drain_seconds.clone(),
        );
        daemon.register(
            "drain_agent_failover_duration_seconds",
            "from the failover trigger until the peer owned the VIPs",
            m.failover_seconds.clone(),
        );
        Metrics { daemon, ..m }
    }
}

impl Metrics {
    fn lock(&self) -> std::sync::MutexGuard<'_, Live> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The daemon starts a drain in `mode`.
    pub fn drain_started(&self, mode: DrainMode) {
        let mut l = self.lock();
        l.phase = Some("preflight");
        l.mode = mode;
    }

    /// One event of the drain the daemon runs.
    pub fn observe(&self, e: &Event) {
        let mut l = self.lock();
        match e {
            Event::Diverted { .. } => l.phase = Some("draining"),
            Event::FailoverTriggered { .. } => l.phase = Some("failing-over"),
            Event::PeerOwnsVip { .. } => {
                l.phase = Some(match l.mode {
                    DrainMode::Handoff => "handing-off",
                    DrainMode::Drain => "failed-over",
                })
            }
            Event::PeerProbeFailed { .. } => {
                self.probe_failures.inc();
            }
            Event::DivertTotals { diverted_flows, .. } => {
                self.diverted_flows.inc_by(*diverted_flows);
            }
            _ => {}
        }
    }

    /// The daemon's request needed no drain after all (the node was out of service already).
    pub fn drain_skipped(&self) {
        let mut l = self.lock();
        l.phase = None;
        l.generation += 1;
    }

    /// Which snapshot of the node the phase may fall back to: one read at this generation (see
    /// [`Snapshot::get`](super::Snapshot::get)).
    pub fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// The drain the daemon ran is over.
    pub fn drain_finished(&self, r: Result<&DrainReport, &OpError>) {
        let mut l = self.lock();
        l.phase = None;
        l.generation += 1;
        let result = match r {
            Ok(rep) => {
                self.drain_seconds.observe(rep.drain_ms / 1000.0);
                self.failover_seconds.observe(rep.failover_ms / 1000.0);
                "drained"
            }
            Err(_) => "failed",
        };
        self.drains
            .get_or_create(&[("mode", mode_name(l.mode)), ("result", result)])
            .inc();
    }

    /// The text exposition (format 0.0.4, [`CONTENT_TYPE`]) of everything, with the node as
    /// `status` read it (`None`: it could not be read).
    pub fn render(&self, status: Option<Arc<Status>>) -> String {
        let l = self.lock();
        let phase = l.phase.or_else(|| {
            status.as_ref().map(|s| match s.mode {
                Mode::Maintenance => "maintenance",
                Mode::Draining => "draining",
                Mode::Busy => "busy",
                Mode::HandingOff => "handing-off",
                Mode::Returning => "returning",
                Mode::Diverting => "diverting",
                Mode::FailedOver => "failed-over",
                Mode::Serving => "serving",
            })
        });
        // The node's gauges are this scrape's snapshot, not state kept between scrapes: a
        // registry of one collector, encoded ahead of the daemon's own.
        let mut node = Registry::default();
        node.register_collector(Box::new(NodeGauges { phase, status }));
        let mut out = String::with_capacity(8 * 1024);
        // Writing into a String cannot fail.
        let _ = prometheus_text::encode(&mut out, &node);
        let _ = prometheus_text::encode(&mut out, &self.daemon);
        out
    }
}

/// The `Content-Type` of [`Metrics::render`]'s text: Prometheus' text format 0.0.4, which every
/// Prometheus scrape accepts. Not OpenMetrics, whose families drop the counters' `_total` in
/// HELP and TYPE and whose body must end in `# EOF`.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;
