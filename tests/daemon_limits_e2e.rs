//! The daemon survives its own clients: 2000 idle connections to the metrics port plus ~300
//! scrapes/s leave its descriptors bounded (the listener's cap), its memory within 2x its idle
//! size, the control socket answering `status` as fast as before the flood (within a margin),
//! and keepalived's FIFO lines read and applied.

use std::io::{Read, Write};
use std::net::{SocketAddrV4, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use drain_lab::scenario::AgentConfig;
use drain_lab::topology::{can_run_lab, wait_until, Lab, LabOptions, Node};

const METRICS: &str = "127.0.0.1:9464";
/// The metrics listener's documented cap (`drain_agent::daemon::metrics::MAX_CONNECTIONS`).
const METRICS_CAP: usize = 32;
const IDLE_CONNECTIONS: usize = 2000;
/// Scrapes at ~300/s for 6 s.
const SCRAPES: u64 = 1800;
const SCRAPE_EVERY: Duration = Duration::from_micros(3333);
/// `status` calls timed before the flood, the baseline the ones during it are held to.
const STATUS_BASELINE: usize = 10;
/// How much slower than the slowest `status` before the flood one during it may be.
const STATUS_MARGIN_MS: f64 = 100.0;
/// Bound of every wait on a condition.
const WAIT: Duration = Duration::from_secs(30);

/// What /proc says about a process.
#[derive(Debug, Clone, Copy)]
struct Usage {
    fds: usize,
    threads: u64,
    rss_kb: u64,
    cpu_ticks: u64,
}

fn usage(pid: u32) -> Usage {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap()
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_name: Vec<&str> = stat.rsplit_once(") ").unwrap().1.split(' ').collect();
    // utime and stime, fields 14 and 15 (1-based; the slice starts at field 3).
    let cpu_ticks = after_name[11].parse::<u64>().unwrap() + after_name[12].parse::<u64>().unwrap();
    Usage {
        fds,
        threads: field("Threads:"),
        rss_kb: field("VmRSS:"),
        cpu_ticks,
    }
}

/// The pid of a node's daemon: the lab's process whose command line serves its control socket.
fn daemon_pid(lab: &Lab, node: Node) -> u32 {
    let sock = lab.control_socket(node);
    lab.pids()
        .into_iter()
        .find(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            args.contains(&sock.to_str().unwrap().as_bytes()) && args.contains(&&b"run"[..])
        })
        .expect("the lab runs a daemon on the node")
}

/// Runs `f` on a thread inside a node's network namespace (setns changes only that thread).
fn in_ns<T: Send + 'static>(
    lab: &Lab,
    node: Node,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let ns = std::fs::File::open(format!("/run/netns/{}", lab.node_ns(node))).unwrap();
    std::thread::spawn(move || {
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        f()
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Minimum, median and maximum of some timings (ms).
struct Spread {
    min: f64,
    median: f64,
    max: f64,
}

impl std::fmt::Display for Spread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "min {:.1} / median {:.1} / max {:.1} ms",
            self.min, self.median, self.max
        )
    }
}

fn spread(v: &mut [f64]) -> Spread {
    assert!(!v.is_empty(), "no timings");
    v.sort_by(f64::total_cmp);
    Spread {
        min: v[0],
        median: v[v.len() / 2],
        max: v[v.len() - 1],
    }
}

/// One scrape; true on a 200 answer.
fn scrape(addr: SocketAddrV4) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr.into(), Duration::from_secs(1)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /metrics HTTP/1.1\r\nHost: lab\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out.starts_with(b"HTTP/1.1 200")
}

fn status_answers(lab: &Lab) -> bool {
    lab.agent(Node::Lb1, &["--json", "status"]).is_ok_and(|o| {
        o.status.success()
            && serde_json::from_slice::<serde_json::Value>(&o.stdout)
                .is_ok_and(|d| d["summary"].is_string())
    })
}

/// Writes one line into a node's keepalived FIFO, as keepalived would.
fn fifo_line(lab: &Lab, node: Node, line: &str) {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(lab.notify_fifo(node))
        .unwrap();
    f.write_all(line.as_bytes()).unwrap();
}

#[test]
#[ignore = "needs root and network namespaces; `make test` runs it"]
fn idle_connections_and_scrapes_leave_the_daemon_bounded_and_serving() {
    if !can_run_lab("daemon_limits_metrics_flood", &[]) {
        return;
    }
    let mut lab = Lab::up(&LabOptions {
        daemon: true,
        ..LabOptions::default()
    })
    .unwrap();
    lab.stop("agent-lb1").unwrap();
    lab.write_agent_config(
        Node::Lb1,
        &AgentConfig {
            metrics_listen: Some(METRICS.into()),
            ..AgentConfig::default()
        },
    )
    .unwrap();
    lab.start_daemon(Node::Lb1).unwrap();
    let addr: SocketAddrV4 = METRICS.parse().unwrap();
    let pid = daemon_pid(&lab, Node::Lb1);
    wait_until("the metrics to answer", WAIT, || {
        in_ns(&lab, Node::Lb1, move || scrape(addr)).join().unwrap()
    })
    .unwrap();
    let idle = usage(pid);
    // The steady baseline of `status` over the control socket (the CLI started in lb1's
    // namespace, connected, answered), before the flood.
    let mut status_idle_ms = Vec::new();
    for _ in 0..STATUS_BASELINE {
        let t = Instant::now();
        assert!(status_answers(&lab), "status answers before the flood");
        status_idle_ms.push(ms(t.elapsed()));
    }

    // The flood: idle connections held open, and scrapes at ~300/s, from lb1's namespace.
    let stop = Arc::new(AtomicBool::new(false));
    let held = in_ns(&lab, Node::Lb1, move || {
        (0..IDLE_CONNECTIONS)
            .filter_map(|_| TcpStream::connect_timeout(&addr.into(), Duration::from_secs(1)).ok())
            .collect::<Vec<_>>()
    })
    .join()
    .unwrap();
    let ok = Arc::new(AtomicU64::new(0));
    let (ok2, stop2) = (ok.clone(), stop.clone());
    let scraper = in_ns(&lab, Node::Lb1, move || {
        let start = Instant::now();
        for i in 0..SCRAPES {
            if stop2.load(Ordering::Relaxed) {
                break;
            }
            if scrape(addr) {
                ok2.fetch_add(1, Ordering::Relaxed);
            }
            let next = start + SCRAPE_EVERY * (i as u32 + 1);
            if let Some(d) = next.checked_duration_since(Instant::now()) {
                std::thread::sleep(d); // pacing the load, not ordering
            }
        }
        start.elapsed()
    });

    // While the flood runs: status answers, and a FIFO line is applied (BACKUP: lb1 accepts
    // the peer's traffic; then MASTER again: it releases).
    let mut peak = idle;
    let (mut status_checks, mut status_failed, mut fifo_applied) = (0, 0, None);
    let mut status_flood_ms = Vec::new();
    while !scraper.is_finished() && status_checks < 100 {
        let t = Instant::now();
        if !status_answers(&lab) {
            status_failed += 1;
        }
        status_flood_ms.push(ms(t.elapsed()));
        status_checks += 1;
        let u = usage(pid);
        peak.fds = peak.fds.max(u.fds);
        peak.rss_kb = peak.rss_kb.max(u.rss_kb);
        peak.threads = peak.threads.max(u.threads);
        if status_checks == 3 {
            // An instance of its own, so the line is told apart from keepalived's; lb1 holds
            // the VIP, so the daemon reads its state, finds the BACKUP stale, changes nothing
            // and logs it.
            fifo_line(&lab, Node::Lb1, "INSTANCE \"VI_FLOOD\" BACKUP 150\n");
            let log = lab.dir.join("agent-lb1.log");
            fifo_applied = Some(
                wait_until("the daemon to apply the FIFO line", WAIT, || {
                    std::fs::read_to_string(&log).is_ok_and(|l| l.contains("notify VI_FLOOD"))
                })
                .map_err(|e| e.to_string()),
            );
        }
        // Pacing the status checks (a few a second), so they add little to the scrapes' cost.
        std::thread::sleep(Duration::from_millis(300));
    }
    stop.store(true, Ordering::Relaxed);
    let took = scraper.join().unwrap();
    let after = usage(pid);
    drop(held);
    println!(
        "daemon under {} idle connections + {} scrapes in {took:?} ({} answered 200): \
         idle {idle:?}; peak fds {}, threads {}, RSS {} kB; CPU {} ticks ({} Hz) during the flood",
        IDLE_CONNECTIONS,
        SCRAPES,
        ok.load(Ordering::Relaxed),
        peak.fds,
        peak.threads,
        peak.rss_kb,
        after.cpu_ticks - idle.cpu_ticks,
        nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
            .ok()
            .flatten()
            .unwrap_or(100),
    );
    let (base, flood) = (spread(&mut status_idle_ms), spread(&mut status_flood_ms));
    println!(
        "status (CLI run to answer) before the flood: {base}; during it ({} checks): {flood}",
        status_flood_ms.len()
    );
    assert_eq!(
        status_failed, 0,
        "status over the control socket answered every time"
    );
    // Responsive: no status during the flood slower than the slowest before it by more than
    // the margin (a status waiting behind the scrapes' refresh would be).
    assert!(
        flood.max <= base.max + STATUS_MARGIN_MS,
        "status slowed by the flood: before {base}, during {flood}"
    );
    assert_eq!(
        fifo_applied,
        Some(Ok(())),
        "keepalived's FIFO lines were applied during the flood"
    );
    assert!(
        // The margin: the netlink sockets and command pipes of the status reads.
        peak.fds <= idle.fds + METRICS_CAP + 24,
        "descriptors bounded by the metrics cap: idle {}, peak {}",
        idle.fds,
        peak.fds
    );
    assert!(
        peak.rss_kb <= 2 * idle.rss_kb,
        "RSS within 2x idle: idle {} kB, peak {} kB",
        idle.rss_kb,
        peak.rss_kb
    );
    assert!(
        ok.load(Ordering::Relaxed) > 0,
        "scrapes were served during the flood"
    );
}
