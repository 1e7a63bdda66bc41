//! Prometheus metrics: the daemon serves the text exposition format (0.0.4) at
//! `http://<metrics.listen>/metrics`.
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

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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

#[derive(Debug, Default, Clone)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, v: f64) {
        for (i, le) in BUCKETS.iter().enumerate() {
            if v <= *le {
                self.counts[i] += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (i, le) in BUCKETS.iter().enumerate() {
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {}", self.counts[i]);
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum {}", self.sum);
        let _ = writeln!(out, "{name}_count {}", self.count);
    }
}

#[derive(Debug, Default)]
struct Inner {
    /// The phase of the drain the daemon runs, if it runs one.
    live: Option<&'static str>,
    live_mode: DrainMode,
    drains: BTreeMap<(&'static str, &'static str), u64>,
    diverted_flows: u64,
    probe_failures: u64,
    drain_seconds: Histogram,
    failover_seconds: Histogram,
    /// Bumped whenever the daemon's own drain stops deciding the phase, so a snapshot of the
    /// node read before that (while the drain held the lock: "draining") is not shown after it.
    generation: u64,
}

/// The daemon's metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

fn mode_name(m: DrainMode) -> &'static str {
    match m {
        DrainMode::Drain => "drain",
        DrainMode::Handoff => "handoff",
    }
}

impl Metrics {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The daemon starts a drain in `mode`.
    pub fn drain_started(&self, mode: DrainMode) {
        let mut i = self.lock();
        i.live = Some("preflight");
        i.live_mode = mode;
    }

    /// One event of the drain the daemon runs.
    pub fn observe(&self, e: &Event) {
        let mut i = self.lock();
        match e {
            Event::Diverted { .. } => i.live = Some("draining"),
            Event::FailoverTriggered { .. } => i.live = Some("failing-over"),
            Event::PeerOwnsVip { .. } => {
                i.live = Some(match i.live_mode {
                    DrainMode::Handoff => "handing-off",
                    DrainMode::Drain => "failed-over",
                })
            }
            Event::PeerProbeFailed { .. } => i.probe_failures += 1,
            Event::DivertTotals { diverted_flows, .. } => i.diverted_flows += diverted_flows,
            _ => {}
        }
    }

    /// The daemon's request needed no drain after all (the node was out of service already).
    pub fn drain_skipped(&self) {
        let mut i = self.lock();
        i.live = None;
        i.generation += 1;
    }

    /// Which snapshot of the node the phase may fall back to: one read at this generation (see
    /// [`Snapshot::get`]).
    pub fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// The drain the daemon ran is over.
    pub fn drain_finished(&self, r: &Result<DrainReport, OpError>) {
        let mut i = self.lock();
        let mode = mode_name(i.live_mode);
        i.live = None;
        i.generation += 1;
        let result = match r {
            Ok(rep) => {
                i.drain_seconds.observe(rep.drain_ms / 1000.0);
                i.failover_seconds.observe(rep.failover_ms / 1000.0);
                "drained"
            }
            Err(_) => "failed",
        };
        *i.drains.entry((mode, result)).or_default() += 1;
    }

    /// The text exposition of everything, with the node as `status` reads it now.
    pub fn render(&self, status: Option<&Status>) -> String {
        let i = self.lock();
        let mut out = String::new();
        let phase = i.live.or_else(|| {
            status.map(|s| match s.mode {
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
        gauge_head(
            &mut out,
            "drain_agent_phase",
            "1 for the phase the node is in, 0 for the others",
        );
        for p in PHASES {
            let _ = writeln!(
                out,
                "drain_agent_phase{{phase=\"{p}\"}} {}",
                u8::from(phase == Some(p))
            );
        }
        gauge_head(
            &mut out,
            "drain_agent_status_ok",
            "0 if the node's state could not be read at this scrape",
        );
        let _ = writeln!(out, "drain_agent_status_ok {}", u8::from(status.is_some()));
        if let Some(s) = status {
            if let Some(c) = &s.sockets {
                gauge_head(
                    &mut out,
                    "drain_agent_sockets",
                    "the node's connections on the VIP ports, by TCP state",
                );
                for (state, n) in &c.by_state {
                    let _ = writeln!(
                        out,
                        "drain_agent_sockets{{state=\"{}\"}} {n}",
                        escape(state)
                    );
                }
                gauge_head(
                    &mut out,
                    "drain_agent_sockets_idle",
                    "connections idle longer than drain.idle_threshold",
                );
                let _ = writeln!(out, "drain_agent_sockets_idle {}", c.idle);
            }
            gauge_head(
                &mut out,
                "drain_agent_vip_held",
                "1 if this node holds the VIP",
            );
            for v in &s.vips {
                let _ = writeln!(
                    out,
                    "drain_agent_vip_held{{vip=\"{}\"}} {}",
                    v.address,
                    u8::from(v.local)
                );
            }
            gauge_head(
                &mut out,
                "drain_agent_tracked_interface_up",
                "1 if the tracked interface is up",
            );
            let _ = writeln!(
                out,
                "drain_agent_tracked_interface_up {}",
                u8::from(s.tracked_interface.up)
            );
            let (flows, packets) = s
                .divert
                .as_ref()
                .map_or((0, 0), |d| (d.diverted_flows, d.diverted_packets));
            gauge_head(
                &mut out,
                "drain_agent_divert_flows",
                "new flows (SYNs) the divert in place has sent to the peer",
            );
            let _ = writeln!(out, "drain_agent_divert_flows {flows}");
            gauge_head(
                &mut out,
                "drain_agent_divert_packets",
                "packets the divert in place has sent to the peer",
            );
            let _ = writeln!(out, "drain_agent_divert_packets {packets}");
            gauge_head(
                &mut out,
                "drain_agent_divert_unrecorded_syns",
                "SYNs of the divert in place its record could not hold (each fell through to this node)",
            );
            let unrecorded = s.divert.as_ref().map_or(0, |d| d.unrecorded_syns);
            let _ = writeln!(out, "drain_agent_divert_unrecorded_syns {unrecorded}");
            gauge_head(
                &mut out,
                "drain_agent_maintenance",
                "1 if the node is in maintenance",
            );
            let _ = writeln!(
                out,
                "drain_agent_maintenance {}",
                u8::from(s.maintenance.is_some())
            );
            if let Some(m) = &s.maintenance {
                gauge_head(
                    &mut out,
                    "drain_agent_maintenance_since_seconds",
                    "Unix time the node went into maintenance",
                );
                let _ = writeln!(out, "drain_agent_maintenance_since_seconds {}", m.since);
                gauge_head(
                    &mut out,
                    "drain_agent_maintenance_info",
                    "why and by whom the node is in maintenance",
                );
                let _ = writeln!(
                    out,
                    "drain_agent_maintenance_info{{reason=\"{}\",by=\"{}\"}} 1",
                    escape(&m.reason),
                    escape(&m.by)
                );
            }
        }
        let _ = writeln!(out, "# HELP drain_agent_drains_total drains the daemon ran, by mode and result\n# TYPE drain_agent_drains_total counter");
        for mode in ["drain", "handoff"] {
            for result in ["drained", "failed"] {
                let n = i.drains.get(&(mode, result)).copied().unwrap_or(0);
                let _ = writeln!(
                    out,
                    "drain_agent_drains_total{{mode=\"{mode}\",result=\"{result}\"}} {n}"
                );
            }
        }
        let _ = writeln!(out, "# HELP drain_agent_diverted_flows_total new flows the daemon's drains diverted to the peer\n# TYPE drain_agent_diverted_flows_total counter\ndrain_agent_diverted_flows_total {}", i.diverted_flows);
        let _ = writeln!(out, "# HELP drain_agent_peer_probe_failures_total failed probes of the peer during the daemon's drains\n# TYPE drain_agent_peer_probe_failures_total counter\ndrain_agent_peer_probe_failures_total {}", i.probe_failures);
        i.drain_seconds.render(
            &mut out,
            "drain_agent_drain_duration_seconds",
            "from the divert to the end of the wait for the node's connections",
        );
        i.failover_seconds.render(
            &mut out,
            "drain_agent_failover_duration_seconds",
            "from the failover trigger until the peer owned the VIPs",
        );
        out
    }
}

fn gauge_head(out: &mut String, name: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
}

/// A label value as the text format wants it: backslash, double quote and newline escaped.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

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
            (
                "200 OK",
                metrics.render(status.as_deref()),
                "text/plain; version=0.0.4; charset=utf-8",
            )
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
        m.drain_finished(&Err(OpError::Interrupted));
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

    #[test]
    fn the_gauges_the_alerts_read_come_from_the_nodes_status() {
        use crate::ops::status::{DivertState, Tracked, VipState};
        let status = Status {
            mode: Mode::Maintenance,
            since: Some(1_700_000_000),
            maintenance: Some(crate::journal::Maintenance {
                reason: "kernel \"upgrade\"".into(),
                by: "ops".into(),
                since: 1_700_000_000,
                drained: true,
            }),
            trigger_undone: None,
            vrrp: None,
            sockets: None,
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
        };
        let text = Metrics::default().render(Some(&status));
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
        let text = Metrics::default().render(Some(&serving));
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
        m.drain_finished(&Err(OpError::Interrupted));
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
    fn histograms_are_cumulative_and_labels_escaped() {
        let mut h = Histogram::default();
        h.observe(0.3);
        h.observe(7.0);
        let mut out = String::new();
        h.render(&mut out, "x", "help");
        assert!(out.contains("x_bucket{le=\"0.25\"} 0\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"0.5\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"10\"} 2\n"), "{out}");
        assert!(
            out.contains("x_bucket{le=\"+Inf\"} 2\nx_sum 7.3\nx_count 2\n"),
            "{out}"
        );
        assert_eq!(escape("a \"b\"\\\nc"), "a \\\"b\\\"\\\\\\nc");
    }
}
