//! Prometheus metrics: the daemon serves the text exposition format (0.0.4) at
//! `http://<metrics.listen>/metrics`.
//!
//! Gauges describe the node as `status` reads it at scrape time (so they are right whatever ran
//! the drain: the daemon, or the CLI with `--local`); while the daemon itself runs a drain, the
//! phase follows that drain's events. Counters and histograms count the drains the daemon ran.
//!
//! | metric | type | |
//! |---|---|---|
//! | `drain_agent_phase{phase}` | gauge | 1 for the current phase, 0 for the others |
//! | `drain_agent_sockets{state}` | gauge | the node's connections on the VIP ports, per TCP state |
//! | `drain_agent_sockets_idle` | gauge | of those, idle longer than `drain.idle_threshold` |
//! | `drain_agent_vip_held{vip}` | gauge | 1 if this node holds the VIP |
//! | `drain_agent_tracked_interface_up` | gauge | |
//! | `drain_agent_divert_flows` / `_packets` | gauge | the divert in place: new flows (SYNs) and packets diverted so far |
//! | `drain_agent_maintenance` | gauge | 1 in maintenance |
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
use std::time::Duration;

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

/// How long a scraper may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
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
        self.lock().live = None;
    }

    /// The drain the daemon ran is over.
    pub fn drain_finished(&self, r: &Result<DrainReport, OpError>) {
        let mut i = self.lock();
        let mode = mode_name(i.live_mode);
        i.live = None;
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

/// Serves `GET /metrics` on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, cfg: Config, metrics: Arc<Metrics>) {
    loop {
        let Ok((stream, from)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let (cfg, metrics) = (cfg.clone(), metrics.clone());
        tokio::spawn(async move {
            if let Err(e) = serve_one(stream, cfg, metrics).await {
                tracing::debug!(%from, "metrics: {e}");
            }
        });
    }
}

async fn serve_one(
    mut stream: TcpStream,
    cfg: Config,
    metrics: Arc<Metrics>,
) -> std::io::Result<()> {
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
    let (status_line, body, ctype) = if head.starts_with("GET ")
        && (path == "/metrics" || path.starts_with("/metrics?"))
    {
        let status = tokio::task::spawn_blocking(move || {
            let read = crate::wiring::open(&cfg, Arc::new(AtomicU32::new(0)))
                .and_then(|(state, mut host)| crate::ops::status::status(&cfg, &state, &mut *host));
            read.map_err(|e| tracing::warn!("metrics: cannot read the node's state: {e}"))
                .ok()
        })
        .await
        .ok()
        .flatten();
        (
            "200 OK",
            metrics.render(status.as_ref()),
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
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
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
