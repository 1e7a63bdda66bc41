//! Prometheus metrics: the daemon serves the text exposition format (0.0.4) at
//! `http://<metrics.listen>/metrics`, encoded by `prometheus-client`: the daemon's counters and
//! histograms live in its registry; the node's gauges are a collector over the scrape's snapshot.
//!
//! Gauges describe the node as `status` reads it (so they are right whatever ran the drain: the
//! daemon, or the CLI with `--local`); while the daemon itself runs a drain, the phase follows
//! that drain's events. Counters and histograms count the drains the daemon ran.
//!
//! Reading the node's state costs real work (iptables-save, ipset, a sock_diag dump,
//! rtnetlink), so it is not done per scrape: the state is read at most once per
//! [`REFRESH_EVERY`], by one refresh at a time, and every scrape in between is answered from that
//! snapshot. So a scrape costs the same whatever the scrape rate; and at most
//! [`MAX_CONNECTIONS`] connections are served at once (more are closed at accept), each given
//! [`REQUEST_TIMEOUT`] to send its request, so idle connections cannot exhaust the daemon's file
//! descriptors.
//!
//! | metric | type | |
//! |---|---|---|
//! | `drain_agent_phase{phase}` | gauge | 1 for the current phase, 0 for the others |
//! | `drain_agent_sockets{state}` | gauge | the node's connections on the VIP ports, per TCP state |
//! | `drain_agent_sockets_idle` | gauge | of those, idle longer than `drain.idle_threshold` |
//! | `drain_agent_vip_held{vip}` | gauge | 1 if this node holds the VIP |
//! | `drain_agent_tracked_interface_up` | gauge | |
//! | `drain_agent_divert_flows` / `_packets` | gauge | the divert in place: new flows (SYNs) and packets diverted so far |
//! | `drain_agent_divert_unrecorded_syns` | gauge | SYNs the divert's record could not hold (0: none, or no divert) |
//! | `drain_agent_maintenance` | gauge | 1 in maintenance |
//! | `drain_agent_maintenance_since_seconds` | gauge | in maintenance: the Unix time it began |
//! | `drain_agent_maintenance_info{reason,by}` | gauge | 1, in maintenance: why and who |
//! | `drain_agent_drains_total{mode,result}` | counter | drains the daemon ran, by mode and result |
//! | `drain_agent_diverted_flows_total` | counter | new flows those drains diverted |
//! | `drain_agent_peer_probe_failures_total` | counter | failed probes of the peer during drains |
//! | `drain_agent_drain_duration_seconds` | histogram | from the divert to the end of the wait |
//! | `drain_agent_failover_duration_seconds` | histogram | from the trigger until the peer owned the VIPs |
//! | `drain_agent_status_ok` | gauge | 0 if the node's state could not be read at this scrape |

use std::net::SocketAddr;
use std::sync::atomic::AtomicU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    prometheus_text, DescriptorEncoder, EncodeGaugeValue, EncodeMetric,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::config::{Config, DrainMode};
use crate::ops::status::{Mode, Status};
use crate::ops::{DrainReport, Event, OpError};

/// Every phase the `phase` gauge can show, in the order a drain goes through them.
pub const PHASES: [&str; 10] = [
    "serving",
    "preflight",
    "draining",
    "failing-over",
    "handing-off",
    "failed-over",
    "maintenance",
    "returning",
    "diverting",
    "busy",
];

/// Upper bounds (s) of the duration histograms' buckets.
const BUCKETS: [f64; 12] = [
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
];

/// How long a scraper may take to send its request: a scraper sends it at once, so an idle
/// connection is closed soon.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// How old the snapshot of the node's state may be before a scrape refreshes it.
pub const REFRESH_EVERY: Duration = Duration::from_millis(1000);
/// Metrics connections served at once; further ones are closed when accepted.
pub const MAX_CONNECTIONS: usize = 32;
/// How long `serve` backs off after a failed accept (EMFILE) instead of spinning.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Longest request accepted.
const MAX_REQUEST: usize = 8 * 1024;

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
    /// [`Snapshot::get`]).
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

/// The gauges of one scrape: the phase, and the node as the snapshot read it.
#[derive(Debug)]
struct NodeGauges {
    phase: Option<&'static str>,
    status: Option<Arc<Status>>,
}

/// Encodes one unlabelled gauge.
fn gauge(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: impl EncodeGaugeValue,
) -> Result<(), std::fmt::Error> {
    ConstGauge::new(value).encode(enc.encode_descriptor(name, help, None, MetricType::Gauge)?)
}

/// Encodes one gauge family, a sample per `(label value, value)`.
fn gauges<'a, V: EncodeGaugeValue>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &'static str,
    samples: impl IntoIterator<Item = (&'a str, V)>,
) -> Result<(), std::fmt::Error> {
    let mut family = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (label_value, value) in samples {
        ConstGauge::new(value).encode(family.encode_family(&[(label, label_value)])?)?;
    }
    Ok(())
}

impl Collector for NodeGauges {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let enc = &mut enc;
        // Help texts end in a full stop, as the registry's do.
        gauges(
            enc,
            "drain_agent_phase",
            "1 for the phase the node is in, 0 for the others.",
            "phase",
            PHASES.map(|p| (p, i64::from(self.phase == Some(p)))),
        )?;
        gauge(
            enc,
            "drain_agent_status_ok",
            "0 if the node's state could not be read at this scrape.",
            i64::from(self.status.is_some()),
        )?;
        let Some(s) = &self.status else {
            return Ok(());
        };
        if let Some(c) = &s.sockets {
            gauges(
                enc,
                "drain_agent_sockets",
                "the node's connections on the VIP ports, by TCP state.",
                "state",
                c.by_state.iter().map(|(state, n)| (state.as_str(), *n)),
            )?;
            gauge(
                enc,
                "drain_agent_sockets_idle",
                "connections idle longer than drain.idle_threshold.",
                c.idle,
            )?;
        }
        let vips: Vec<(String, i64)> = s
            .vips
            .iter()
            .map(|v| (v.address.to_string(), i64::from(v.local)))
            .collect();
        gauges(
            enc,
            "drain_agent_vip_held",
            "1 if this node holds the VIP.",
            "vip",
            vips.iter().map(|(vip, held)| (vip.as_str(), *held)),
        )?;
        gauge(
            enc,
            "drain_agent_tracked_interface_up",
            "1 if the tracked interface is up.",
            i64::from(s.tracked_interface.up),
        )?;
        // Without a divert these read 0 rather than vanish: the alerts compare them.
        let d = s.divert.as_ref();
        gauge(
            enc,
            "drain_agent_divert_flows",
            "new flows (SYNs) the divert in place has sent to the peer.",
            d.map_or(0, |d| d.diverted_flows),
        )?;
        gauge(
            enc,
            "drain_agent_divert_packets",
            "packets the divert in place has sent to the peer.",
            d.map_or(0, |d| d.diverted_packets),
        )?;
        gauge(
            enc,
            "drain_agent_divert_unrecorded_syns",
            "SYNs of the divert in place its record could not hold (each fell through to this node).",
            d.map_or(0, |d| d.unrecorded_syns),
        )?;
        gauge(
            enc,
            "drain_agent_maintenance",
            "1 if the node is in maintenance.",
            i64::from(s.maintenance.is_some()),
        )?;
        if let Some(m) = &s.maintenance {
            gauge(
                enc,
                "drain_agent_maintenance_since_seconds",
                "Unix time the node went into maintenance.",
                m.since,
            )?;
            // An info metric: the encoder names it `drain_agent_maintenance_info`, value 1.
            Info::new([("reason", m.reason.as_str()), ("by", m.by.as_str())]).encode(
                enc.encode_descriptor(
                    "drain_agent_maintenance",
                    "why and by whom the node is in maintenance.",
                    None,
                    MetricType::Info,
                )?,
            )?;
        }
        Ok(())
    }
}

/// Every metric name the exposition can carry, as its samples are named (the alert rules'
/// test checks that they read only these).
pub const EXPOSED: [&str; 17] = [
    "drain_agent_phase",
    "drain_agent_status_ok",
    "drain_agent_sockets",
    "drain_agent_sockets_idle",
    "drain_agent_vip_held",
    "drain_agent_tracked_interface_up",
    "drain_agent_divert_flows",
    "drain_agent_divert_packets",
    "drain_agent_divert_unrecorded_syns",
    "drain_agent_maintenance",
    "drain_agent_maintenance_since_seconds",
    "drain_agent_maintenance_info",
    "drain_agent_drains_total",
    "drain_agent_diverted_flows_total",
    "drain_agent_peer_probe_failures_total",
    "drain_agent_drain_duration_seconds",
    "drain_agent_failover_duration_seconds",
];

/// One reading of the node: when, at which [`Metrics::generation`], and what.
type Cached = (Instant, u64, Option<Arc<Status>>);

/// The node's state as last read for the metrics, shared by every scrape.
pub struct Snapshot<F> {
    read: Arc<F>,
    every: Duration,
    /// When it was read, the [`Metrics::generation`] it was read at, and what was read.
    cached: Mutex<Option<Cached>>,
    /// Held by the one refresh in progress.
    refreshing: tokio::sync::Mutex<()>,
    /// How many times the state was read (for tests and the log).
    reads: std::sync::atomic::AtomicU64,
}

impl<F> Snapshot<F>
where
    F: Fn() -> Option<Status> + Send + Sync + 'static,
{
    /// A snapshot that calls `read` (on the blocking pool) at most once per `every`.
    pub fn new(every: Duration, read: F) -> Snapshot<F> {
        Snapshot {
            read: Arc::new(read),
            every,
            cached: Mutex::new(None),
            refreshing: tokio::sync::Mutex::new(()),
            reads: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn cached(&self) -> Option<Cached> {
        self.cached
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The node's state, at most `every` old and read at `generation`: refreshed by the first
    /// caller that finds it stale; callers that come while that refresh runs get the previous
    /// snapshot at once if it was read at `generation` (a scrape never waits for the node, except
    /// the very first and the first after a drain of the daemon's ended: the snapshot from
    /// before that end would show the drain still running).
    pub async fn get(&self, generation: u64) -> Option<Arc<Status>> {
        let usable = |c: &Option<Cached>| c.as_ref().is_some_and(|(_, g, _)| *g == generation);
        let fresh = |c: &Option<Cached>| {
            usable(c)
                && c.as_ref()
                    .is_some_and(|(at, _, _)| at.elapsed() < self.every)
        };
        let cached = self.cached();
        if fresh(&cached) {
            return cached.and_then(|(_, _, s)| s);
        }
        let _refresh = match self.refreshing.try_lock() {
            Ok(guard) => guard,
            Err(_) if usable(&cached) => return cached.and_then(|(_, _, s)| s),
            Err(_) => self.refreshing.lock().await,
        };
        // Another caller may have refreshed while this one waited for the lock.
        let cached = self.cached();
        if fresh(&cached) {
            return cached.and_then(|(_, _, s)| s);
        }
        self.reads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let read = self.read.clone();
        let status = tokio::task::spawn_blocking(move || read())
            .await
            .ok()
            .flatten()
            .map(Arc::new);
        // Stamped with the generation it was asked for: a drain that ended during the read
        // bumped it, so the next scrape reads again.
        *self.cached.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((Instant::now(), generation, status.clone()));
        status
    }

    /// How many times the node's state was read.
    pub fn reads(&self) -> u64 {
        self.reads.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Reads the node's state as `status` does; `None` (logged) when it cannot be read.
fn read_status(cfg: &Config) -> Option<Status> {
    let read = crate::wiring::open(cfg, Arc::new(AtomicU32::new(0)))
        .and_then(|(state, mut host)| crate::ops::status::status(cfg, &state, &mut *host));
    read.map_err(|e| tracing::warn!("metrics: cannot read the node's state: {e}"))
        .ok()
}

/// Serves `GET /metrics` on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, cfg: Config, metrics: Arc<Metrics>) {
    let snapshot = Arc::new(Snapshot::new(REFRESH_EVERY, move || read_status(&cfg)));
    serve_with(listener, snapshot, metrics, MAX_CONNECTIONS).await;
}

/// [`serve`] with the snapshot and the connection cap given.
async fn serve_with<F>(
    listener: TcpListener,
    snapshot: Arc<Snapshot<F>>,
    metrics: Arc<Metrics>,
    max_connections: usize,
) where
    F: Fn() -> Option<Status> + Send + Sync + 'static,
{
    let slots = Arc::new(tokio::sync::Semaphore::new(max_connections));
    loop {
        let (stream, from) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::debug!("metrics: accept failed: {e}");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        // Over the cap the connection is closed at once: its descriptor is given back now
        // instead of waiting in a queue, and the scrapes already served are not slowed.
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            drop(stream);
            continue;
        };
        let (snapshot, metrics) = (snapshot.clone(), metrics.clone());
        tokio::spawn(async move {
            if let Err(e) = serve_one(stream, &snapshot, metrics).await {
                tracing::debug!(%from, "metrics: {e}");
            }
            drop(slot);
        });
    }
}

async fn serve_one<F>(
    mut stream: TcpStream,
    snapshot: &Snapshot<F>,
    metrics: Arc<Metrics>,
) -> std::io::Result<()>
where
    F: Fn() -> Option<Status> + Send + Sync + 'static,
{
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    let head = tokio::time::timeout(REQUEST_TIMEOUT, async {
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < MAX_REQUEST {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&buf).into_owned())
    })
    .await
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no request"))??;
    let path = head.split_whitespace().nth(1).unwrap_or("");
    let (status_line, body, ctype) =
        if head.starts_with("GET ") && (path == "/metrics" || path.starts_with("/metrics?")) {
            let status = snapshot.get(metrics.generation()).await;
            ("200 OK", metrics.render(status), CONTENT_TYPE)
        } else if head.starts_with("GET ") && path == "/" {
            (
                "200 OK",
                "drain-agent: metrics at /metrics\n".to_string(),
                "text/plain; charset=utf-8",
            )
        } else {
            (
                "404 Not Found",
                "not found\n".to_string(),
                "text/plain; charset=utf-8",
            )
        };
    let response = format!(
        "HTTP/1.1 {status_line}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    // A scraper that does not read holds its slot no longer than one that does not send.
    tokio::time::timeout(REQUEST_TIMEOUT, async {
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await
    })
    .await
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "response not read"))?
}

/// Binds the metrics address.
pub async fn bind(addr: std::net::SocketAddrV4) -> std::io::Result<TcpListener> {
    TcpListener::bind(SocketAddr::V4(addr)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_follow_the_daemons_drain_and_counters_count_it() {
        let m = Metrics::default();
        let phase = |m: &Metrics| {
            let text = m.render(None);
            PHASES
                .iter()
                .find(|p| text.contains(&format!("drain_agent_phase{{phase=\"{p}\"}} 1")))
                .copied()
        };
        assert_eq!(phase(&m), None);
        m.drain_started(DrainMode::Handoff);
        assert_eq!(phase(&m), Some("preflight"));
        m.observe(&Event::Diverted { install_ms: 1.0 });
        assert_eq!(phase(&m), Some("draining"));
        m.observe(&Event::FailoverTriggered {
            trigger: "trk0 down".into(),
        });
        assert_eq!(phase(&m), Some("failing-over"));
        m.observe(&Event::PeerOwnsVip { after_ms: 600.0 });
        assert_eq!(phase(&m), Some("handing-off"));
        m.observe(&Event::PeerProbeFailed {
            consecutive: 1,
            answer: "no answer".into(),
        });
        m.drain_finished(Err(&OpError::Interrupted));
        assert_eq!(phase(&m), None);
        let text = m.render(None);
        assert!(
            text.contains("drain_agent_drains_total{mode=\"handoff\",result=\"failed\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("drain_agent_peer_probe_failures_total 1"),
            "{text}"
        );
        assert!(
            text.contains("drain_agent_drain_duration_seconds_count 0"),
            "{text}"
        );
        assert!(text.contains("drain_agent_status_ok 0"), "{text}");
    }

    /// A node in maintenance with a divert in place and connections left: every family shows.
    fn maintenance_node(reason: &str) -> Status {
        use crate::ops::status::{DivertState, Tracked, VipState};
        Status {
            mode: Mode::Maintenance,
            since: Some(1_700_000_000),
            maintenance: Some(crate::journal::Maintenance {
                reason: reason.into(),
                by: "ops".into(),
                since: 1_700_000_000,
                drained: true,
            }),
            trigger_undone: None,
            vrrp: None,
            sockets: Some(crate::ops::SocketCount {
                total: 3,
                idle: 1,
                by_state: [
                    ("established".to_string(), 2),
                    ("fin-wait-1".to_string(), 1),
                ]
                .into(),
            }),
            lock_holder_pid: None,
            tracked_interface: Tracked {
                name: "trk0".into(),
                up: false,
            },
            vips: vec![VipState {
                address: "198.18.0.100".parse().unwrap(),
                local: false,
            }],
            divert_rules: vec![],
            divert_sets: vec![],
            divert: Some(DivertState {
                phase: None,
                diverted_flows: 10,
                diverted_packets: 40,
                recorded_flows: 7,
                record_members: 1,
                record_bytes: 4096,
                capacity_per_port: 100,
                unrecorded_syns: 3,
                sealed_drops: 0,
            }),
            drain_journal: vec![],
            accept_journal: vec![],
            returning: None,
            return_journal: vec![],
            last_drain: None,
            state_errors: vec![],
        }
    }

    /// A drain of `mode` that took `drain_ms`, then `failover_ms` until the peer owned the VIPs.
    fn drained(mode: DrainMode, drain_ms: f64, failover_ms: f64) -> Result<DrainReport, OpError> {
        Ok(DrainReport {
            mode,
            reason: crate::ops::DrainReason::Empty,
            drain_ms,
            failover_ms,
            total_ms: drain_ms + failover_ms,
            install_ms: 1.0,
            abandoned: 0,
            diverted_flows: 0,
            recorded_flows: 0,
            unrecorded_syns: 0,
            sealed_drops: 0,
        })
    }

    #[test]
    fn the_gauges_the_alerts_read_come_from_the_nodes_status() {
        let status = maintenance_node("kernel \"upgrade\"");
        let text = Metrics::default().render(Some(Arc::new(status.clone())));
        for line in [
            "drain_agent_phase{phase=\"maintenance\"} 1",
            "drain_agent_divert_unrecorded_syns 3",
            "drain_agent_maintenance 1",
            "drain_agent_maintenance_since_seconds 1700000000",
            "drain_agent_maintenance_info{reason=\"kernel \\\"upgrade\\\"\",by=\"ops\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        // Serving, no divert: the alerts' gauges say so rather than vanish.
        let serving = Status {
            mode: Mode::Serving,
            maintenance: None,
            divert: None,
            ..status
        };
        let text = Metrics::default().render(Some(Arc::new(serving)));
        assert!(
            text.contains("\ndrain_agent_divert_unrecorded_syns 0\n"),
            "{text}"
        );
        assert!(text.contains("\ndrain_agent_maintenance 0\n"), "{text}");
        assert!(
            !text.contains("drain_agent_maintenance_since_seconds"),
            "{text}"
        );
    }

    /// Bound of the waits below: only reached when something hangs.
    const HANG: Duration = Duration::from_secs(30);

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_scrapes_read_the_node_once_per_interval() {
        let snap = Arc::new(Snapshot::new(Duration::from_secs(3600), || {
            // Slow like a real read, so the scrapes overlap it.
            std::thread::sleep(Duration::from_millis(100));
            None
        }));
        let scrapes: Vec<_> = (0..200)
            .map(|_| {
                let s = snap.clone();
                tokio::spawn(async move { s.get(0).await })
            })
            .collect();
        for s in scrapes {
            assert!(s.await.unwrap().is_none());
        }
        assert_eq!(snap.reads(), 1, "one read for 200 scrapes");
        let stale = Snapshot::new(Duration::ZERO, || None);
        for _ in 0..3 {
            stale.get(0).await;
        }
        assert_eq!(stale.reads(), 3, "a stale snapshot is read again");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn scrapes_during_a_refresh_get_the_previous_snapshot_at_once() {
        let (release, gate) = std::sync::mpsc::channel::<()>();
        let gate = Mutex::new(gate);
        let calls = std::sync::atomic::AtomicU32::new(0);
        let snap = Arc::new(Snapshot::new(Duration::ZERO, move || {
            if calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 1 {
                // The second read hangs until the test lets it go.
                let _ = gate.lock().unwrap().recv_timeout(HANG);
            }
            None
        }));
        snap.get(0).await;
        let slow = {
            let s = snap.clone();
            tokio::spawn(async move { s.get(0).await })
        };
        let start = Instant::now();
        while snap.reads() < 2 {
            assert!(start.elapsed() < HANG, "the second refresh never started");
            tokio::task::yield_now().await;
        }
        tokio::time::timeout(HANG, snap.get(0))
            .await
            .expect("a scrape during a refresh does not wait for it");
        assert_eq!(snap.reads(), 2, "no second refresh at the same time");
        release.send(()).unwrap();
        slow.await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_snapshot_from_before_the_daemons_drain_ended_is_never_shown_after_it() {
        // The monitoring e2e saw "failed-over, draining, failed-over": the snapshot read while
        // the drain held the lock (mode draining) was served for up to a second after it ended.
        let m = Metrics::default();
        let (release, gate) = std::sync::mpsc::channel::<()>();
        let gate = Mutex::new(gate);
        let calls = std::sync::atomic::AtomicU32::new(0);
        let snap = Arc::new(Snapshot::new(Duration::from_secs(3600), move || {
            if calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 1 {
                // The read after the drain's end hangs until the test lets it go.
                let _ = gate.lock().unwrap().recv_timeout(HANG);
            }
            None
        }));
        m.drain_started(DrainMode::Drain);
        snap.get(m.generation()).await;
        snap.get(m.generation()).await;
        assert_eq!(snap.reads(), 1, "fresh within the interval: read once");
        m.drain_finished(Err(&OpError::Interrupted));
        let after = m.generation();
        let first = {
            let s = snap.clone();
            tokio::spawn(async move { s.get(after).await })
        };
        let start = Instant::now();
        while snap.reads() < 2 {
            assert!(
                start.elapsed() < HANG,
                "the drain's end did not force a read"
            );
            tokio::task::yield_now().await;
        }
        // A scrape while that read runs must wait for it, not take the old snapshot.
        let mut second = {
            let s = snap.clone();
            tokio::spawn(async move { s.get(after).await })
        };
        assert!(
            tokio::time::timeout(Duration::from_millis(50), &mut second)
                .await
                .is_err(),
            "served the snapshot from before the end"
        );
        release.send(()).unwrap();
        first.await.unwrap();
        second.await.unwrap();
        assert_eq!(snap.reads(), 2, "the waiter took the new reading");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connections_over_the_cap_are_closed_and_the_others_served() {
        use tokio::io::AsyncReadExt;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let snap = Arc::new(Snapshot::new(Duration::from_secs(3600), || None));
        let server = tokio::spawn(serve_with(listener, snap, Arc::new(Metrics::default()), 2));
        let scrape = || async move {
            let mut c = TcpStream::connect(addr).await.unwrap();
            let _ = c.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").await;
            let mut out = Vec::new();
            let _ = tokio::time::timeout(HANG, c.read_to_end(&mut out)).await;
            String::from_utf8_lossy(&out).into_owned()
        };
        assert!(scrape().await.starts_with("HTTP/1.1 200"));
        // Two idle connections take both slots (each is served once accepted: wait for that).
        let idle = [
            TcpStream::connect(addr).await.unwrap(),
            TcpStream::connect(addr).await.unwrap(),
        ];
        let refused = scrape().await;
        assert_eq!(refused, "", "the third connection is closed unanswered");
        drop(idle);
        let start = Instant::now();
        loop {
            if scrape().await.starts_with("HTTP/1.1 200") {
                break;
            }
            assert!(start.elapsed() < HANG, "the slots never came back");
        }
        server.abort();
    }

    #[test]
    fn histograms_are_cumulative_and_label_values_escaped() {
        let m = Metrics::default();
        for (drain_ms, failover_ms) in [(300.0, 600.0), (7000.0, 800.0)] {
            m.drain_started(DrainMode::Drain);
            m.drain_finished(drained(DrainMode::Drain, drain_ms, failover_ms).as_ref());
        }
        let text = m.render(Some(Arc::new(maintenance_node("a \"b\"\\\nc"))));
        let x = "drain_agent_drain_duration_seconds";
        for line in [
            format!("{x}_bucket{{le=\"0.25\"}} 0"),
            format!("{x}_bucket{{le=\"0.5\"}} 1"),
            format!("{x}_bucket{{le=\"10\"}} 2"),
            format!("{x}_bucket{{le=\"3600\"}} 2"),
            format!("{x}_bucket{{le=\"+Inf\"}} 2"),
            format!("{x}_sum 7.3"),
            format!("{x}_count 2"),
            "drain_agent_failover_duration_seconds_bucket{le=\"1\"} 2".into(),
            "drain_agent_drains_total{mode=\"drain\",result=\"drained\"} 2".into(),
            "drain_agent_drains_total{mode=\"handoff\",result=\"failed\"} 0".into(),
            // Backslash, double quote and newline escaped, as the text format wants.
            "drain_agent_maintenance_info{reason=\"a \\\"b\\\"\\\\\\nc\",by=\"ops\"} 1".into(),
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
    }

    #[test]
    fn the_exposition_carries_exactly_the_exposed_names_and_passes_promtool() {
        let m = Metrics::default();
        m.drain_started(DrainMode::Handoff);
        m.drain_finished(drained(DrainMode::Handoff, 1200.0, 700.0).as_ref());
        let text = m.render(Some(Arc::new(maintenance_node("kernel"))));
        let mut families: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split(' ').next())
            .collect();
        families.sort_unstable();
        let mut exposed = EXPOSED.to_vec();
        exposed.sort_unstable();
        assert_eq!(families, exposed, "{text}");
        assert!(!text.contains("# EOF"), "not OpenMetrics: {text}");
        let test = "the_exposition_carries_exactly_the_exposed_names_and_passes_promtool";
        if !drain_test_support::require_tool(test, "promtool") {
            return;
        }
        let mut child = std::process::Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write as _;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "promtool check metrics: {}{}\n{text}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
