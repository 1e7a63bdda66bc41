//! Soak: cycles of drain lb1 → undrain lb1 → drain lb2 → undrain lb2, through the daemons
//! (`drain-agent run` on both nodes, following keepalived's FIFO; the CLI forwards every command
//! to the control socket), under one continuous mixed load. Over the whole soak: zero broken
//! flows, every drain ended by its connections ending (never by its deadline), each daemon's
//! RSS, open descriptors and threads flat, the same daemon processes from start to end, and both
//! hosts exactly as they began with the VIP home on lb1.
//!
//! `SOAK_CYCLES` sets the number of cycles (default [`DEFAULT_CYCLES`], what the normal suite
//! runs; `make soak` runs 100). With `SOAK_OUT` set to a directory, the figures also go to
//! `SOAK_OUT/soak.json`.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use drain_lab::load::{monotonic_ns, FlowClass, LoadReport, LoadSpec, MAX_FLOWS};
use drain_lab::scenario::{default_load, established_on};
use drain_lab::topology::{can_run_lab, find_bin, wait_until, Lab, LabOptions, Node};
use serde::Serialize;

/// Cycles of the normal suite's short soak.
const DEFAULT_CYCLES: usize = 3;

/// Length of every long flow (keep-alive session, echo session, slow download). A drain lasts
/// until the flows its node serves have ended, so this is the floor of a drain's length; 1 s
/// keeps a cycle short while every class still has flows open at each divert (at 10 echo
/// sessions/s, ~10 are open at any instant).
const SESSION_MS: u64 = 1000;

/// Bound of one CLI command (a drain: its wait for the connections, bounded by the agent's
/// 30 s deadline, plus the failover's 10 s timeout and post-wait).
const COMMAND_BOUND: Duration = Duration::from_secs(60);

/// Bound of every wait for keepalived or a daemon to act on a state change (a VRRP switch takes
/// ~1 s with `advert_int 1`).
const STATE_BOUND: Duration = Duration::from_secs(15);

/// Upper bound of one cycle (measured: ~6.2 s), used only to size the load generator's run:
/// the soak stops the generator (SIGTERM) once the cycles are done, so this is never waited out.
const CYCLE_BOUND: Duration = Duration::from_secs(90);

/// What "flat" allows, per metric. Samples are taken after every cycle, with no CLI connected
/// and no operation running; the figures below were measured over 40 cycles (see the report).
#[derive(Clone, Copy, Debug, Serialize)]
struct Criterion {
    /// Every sample after cycle 1 is at most the one after cycle 1 plus this. Descriptors and
    /// threads reach their working set in the first cycle (measured: 15 fds and 5 threads on
    /// both nodes after every one of 40 cycles): 1 descriptor for a control connection the
    /// daemon may still be closing when the sample is read, 2 threads for tokio's blocking pool,
    /// whose threads exit after 10 s idle. So a descriptor or thread kept per cycle fails
    /// within 3 cycles, the normal suite's soak.
    step_slack: u64,
    /// No sample above this multiple of the idle daemon's (before the first cycle): the bound
    /// issue 15 sets for the daemon under its probes (RSS within 2× idle). The RSS needs it
    /// because it does not reach its working set in one cycle: glibc's heap grows in steps of
    /// 1–2 MiB over the first ~5 cycles as new threads get arenas (measured: 8.1 → 11.5 MiB on
    /// lb1 by cycle 5, then < 0.2 MiB more up to cycle 40).
    ceiling_x: u64,
    /// Once the first [`WARMUP_CYCLES`] are past: the median of the second half of the samples
    /// is at most the first half's plus this, and the median of the last quarter at most the
    /// third quarter's plus this (growth confined to the end of the soak). Medians, because
    /// a single sample can be 2 MiB high for a cycle (a large buffer still held, measured once
    /// in 40 cycles) without that being a leak; a leak moves every later sample.
    trend_slack: u64,
}

/// Cycles left out of the trend test: the heap's growth to its working set (measured: done by
/// cycle 5 of 40).
const WARMUP_CYCLES: usize = 10;

const RSS: Criterion = Criterion {
    step_slack: u64::MAX,
    ceiling_x: 2,
    // Measured after the warm-up: +124 KiB (lb1) and +156 KiB (lb2) from cycle 10 to 40,
    // slowing down (heap fragmentation settling). 512 KiB over half the soak catches a leak of
    // ~11 KiB per cycle in a 100-cycle soak (~3 KiB per drain or undrain).
    trend_slack: 512,
};
const FDS: Criterion = Criterion {
    step_slack: 1,
    ceiling_x: 2,
    trend_slack: 0,
};
const UNCHECKED: Criterion = Criterion {
    step_slack: u64::MAX,
    ceiling_x: u64::MAX,
    trend_slack: u64::MAX,
};
const THREADS: Criterion = Criterion {
    step_slack: 2,
    ceiling_x: 2,
    trend_slack: 1,
};

/// One reading of a daemon's /proc entry.
#[derive(Clone, Copy, Debug, Default, Serialize)]
struct Sample {
    rss_kib: u64,
    /// The anonymous part of the RSS (heap, stacks): where a leak shows.
    rss_anon_kib: u64,
    /// The file-backed part (the binary's and libraries' pages, faulted in as code first runs).
    rss_file_kib: u64,
    fds: u64,
    threads: u64,
}

/// First (idle, before the first cycle), last and max of one metric of one daemon.
#[derive(Clone, Debug, Serialize)]
struct Span {
    first: u64,
    after_cycle_1: u64,
    last: u64,
    max: u64,
}

/// One cycle's figures.
#[derive(Clone, Debug, Default, Serialize)]
struct CycleFigures {
    /// Wall time of the whole cycle (two drains, two undrains and the waits between).
    ms: f64,
    /// The two drains' `total_ms`, lb1's then lb2's, as the agent reported them.
    drain_ms: [f64; 2],
    /// How long each drain waited for its connections to end (`elapsed_ms` of its `drained`
    /// event).
    wait_ms: [f64; 2],
}

/// Everything the soak measured (printed, and written to `SOAK_OUT/soak.json`).
#[derive(Debug, Serialize)]
struct SoakFigures {
    cycles: usize,
    session_ms: u64,
    elapsed_s: f64,
    flows: u64,
    broken: u64,
    broken_by_class: BTreeMap<String, u64>,
    worst_setup_ms: f64,
    setups_over_100ms: usize,
    cycle_ms_mean: f64,
    cycle_ms_max: f64,
    criteria: BTreeMap<String, Criterion>,
    /// Per node, per metric.
    daemons: BTreeMap<String, BTreeMap<String, Span>>,
    /// Per node: the sample before the first cycle, then one after every cycle.
    samples: BTreeMap<String, Vec<Sample>>,
    per_cycle: Vec<CycleFigures>,
}

fn cycles() -> usize {
    match std::env::var("SOAK_CYCLES") {
        Err(_) => DEFAULT_CYCLES,
        Ok(v) => match v.trim().parse::<usize>() {
            Ok(n) if n > 0 => n,
            _ => panic!("SOAK_CYCLES={v:?}: not a cycle count > 0"),
        },
    }
}

/// The default mixed load (500 short HTTP requests/s, keep-alive and echo sessions, slow
/// downloads) with every long flow [`SESSION_MS`] long, started for `duration_ms`.
/// The run is capped at the generator's [`MAX_FLOWS`]; a soak that outlasts it fails (the load
/// would have stopped before the cycles did).
fn soak_load(duration_ms: u64) -> LoadSpec {
    let mut load = default_load();
    let rate: f64 = FlowClass::ALL.iter().map(|c| load.rate(*c)).sum();
    load.duration_ms = duration_ms.min((MAX_FLOWS as f64 / rate * 1000.0 * 0.99) as u64);
    load.keepalive.session_ms = SESSION_MS;
    load.echo.session_ms = SESSION_MS;
    load.slow.ms = SESSION_MS;
    load
}

/// The load generator, one process for the whole soak: its run is sized far beyond the soak
/// (`duration_ms` = cycles × [`CYCLE_BOUND`]) and ended by SIGTERM (`--stop-on-sigterm`: no new
/// flow starts, those in progress run to their end), so the load has no gap between cycles.
/// Killed on drop if the soak fails before stopping it.
struct Generator {
    child: Option<Child>,
    out: PathBuf,
    /// How long the flows in progress may take once stopped, before the run reports.
    drain_bound: Duration,
}

impl Generator {
    fn start(lab: &Lab, spec: &LoadSpec) -> Result<Generator> {
        let spec_path = lab.dir.join("load-soak.json");
        let out = lab.dir.join("report-soak.json");
        fs::write(&spec_path, serde_json::to_vec_pretty(spec)?)?;
        let log = fs::File::create(lab.dir.join("load.log"))?;
        let child = Command::new("ip")
            .args(["netns", "exec", &lab.client_ns()])
            .arg(find_bin("drain-lab")?)
            .args(["load", "--stop-on-sigterm", "--spec"])
            .arg(&spec_path)
            .arg("--out")
            .arg(&out)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting the load generator")?;
        Ok(Generator {
            child: Some(child),
            out,
            drain_bound: spec
                .run_bound()
                .saturating_sub(Duration::from_millis(spec.duration_ms))
                + Duration::from_secs(10),
        })
    }

    /// Stops the run and returns its report.
    fn stop(mut self) -> Result<LoadReport> {
        // Left in `self` until it has exited, so that Drop kills it on any early return.
        let child = self.child.as_mut().expect("a generator is stopped once");
        // `ip netns exec` execs the generator: the child's pid is the generator's.
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )?;
        let status = wait_bounded(child, self.drain_bound)
            .context("the load generator did not report after SIGTERM")?;
        self.child = None;
        // 1 is "some flow broke": a result, read from the report.
        ensure!(
            matches!(status.code(), Some(0) | Some(1)),
            "the load generator exited with {status}"
        );
        serde_json::from_slice(&fs::read(&self.out)?).context("parsing the load report")
    }
}

impl Drop for Generator {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Waits for a child at most `bound`; kills it past that.
fn wait_bounded(child: &mut Child, bound: Duration) -> Result<std::process::ExitStatus> {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if start.elapsed() > bound {
            let _ = child.kill();
            let _ = child.wait();
            bail!("still running after {bound:?}: killed");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `drain-agent -c <node config> --socket <node socket> ARGS` in the node's namespace, at most
/// [`COMMAND_BOUND`]; fails unless it exits 0.
fn agent(lab: &Lab, node: Node, args: &[&str]) -> Result<Output> {
    let mut child = Command::new("ip")
        .args(["netns", "exec", &lab.node_ns(node)])
        .arg(find_bin("drain-agent")?)
        .arg("-c")
        .arg(lab.dir.join(format!("agent-{node}.yaml")))
        .arg("--socket")
        .arg(lab.control_socket(node))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    // Both pipes read while it runs, so its progress can never fill one and block it.
    let readers = [
        child.stdout.take().map(box_read),
        child.stderr.take().map(box_read),
    ]
    .map(|p| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = p {
                let _ = p.read_to_end(&mut buf);
            }
            buf
        })
    });
    let status = wait_bounded(&mut child, COMMAND_BOUND)
        .with_context(|| format!("{node}: drain-agent {}", args.join(" ")));
    let [stdout, stderr] = readers.map(|r| r.join().unwrap_or_default());
    let out = Output {
        status: status?,
        stdout,
        stderr,
    };
    ensure!(
        out.status.success(),
        "{node}: drain-agent {} exited {}: {}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out)
}

fn box_read(r: impl Read + Send + 'static) -> Box<dyn Read + Send> {
    Box::new(r)
}

/// Drains `node` through its daemon and waits until the peer holds the VIP and its daemon has
/// released (it follows the FIFO's MASTER). Returns the drain's (total_ms, wait_ms).
fn drain(lab: &Lab, node: Node) -> Result<(f64, f64)> {
    let out = agent(lab, node, &["--json", "drain"])?;
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let result = lines
        .iter()
        .rev()
        .find(|v| v.get("result").is_some())
        .with_context(|| format!("{node}: the drain printed no result: {text}"))?;
    ensure!(result["result"] == "drained", "{node}: {result}");
    // Anything but "empty" means connections were still open when the failover cut them.
    ensure!(
        result["report"]["reason"] == "empty",
        "{node}: the drain did not end by its connections ending: {result}"
    );
    let wait_ms = lines
        .iter()
        .find(|v| v["event"] == "drained")
        .and_then(|v| v["elapsed_ms"].as_f64())
        .unwrap_or(f64::NAN);
    lab.wait_vip_owner(node.peer(), STATE_BOUND)?;
    wait_until(
        &format!("{}'s daemon to release (MASTER)", node.peer()),
        STATE_BOUND,
        || !lab.accepting(node.peer()).unwrap_or(true),
    )?;
    Ok((
        result["report"]["total_ms"].as_f64().unwrap_or(f64::NAN),
        wait_ms,
    ))
}

/// Takes `node` back into service through its daemon and waits until keepalived has made it
/// BACKUP and its daemon accepts (it follows the FIFO's BACKUP); the VIP must stay on the peer.
fn undrain(lab: &Lab, node: Node) -> Result<()> {
    agent(lab, node, &["undrain"])?;
    lab.wait_announced(node, "BACKUP", STATE_BOUND)?;
    wait_until(
        &format!("{node}'s daemon to accept (BACKUP)"),
        STATE_BOUND,
        || lab.accepting(node).unwrap_or(false),
    )?;
    let owner = lab.vip_owner()?;
    ensure!(
        owner == Some(node.peer()),
        "after undrain of {node} the VIP is on {owner:?}: {node} took it back"
    );
    Ok(())
}

/// The pid of a node's daemon: the process whose argv is `drain-agent ... --socket <its socket>
/// ... run` (`ip netns exec` execs it, so it is the lab's child).
fn daemon_pid(lab: &Lab, node: Node) -> Result<u32> {
    let sock = lab.control_socket(node);
    let sock = sock.to_string_lossy();
    let mut found = Vec::new();
    for e in fs::read_dir("/proc")?.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(cmdline) = fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let argv: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if argv.iter().any(|a| a == &*sock)
            && argv.iter().any(|a| a == "run")
            && argv.first().is_some_and(|a| a.ends_with("drain-agent"))
        {
            found.push(pid);
        }
    }
    match found[..] {
        [pid] => Ok(pid),
        _ => bail!("{node}: expected one daemon on {sock}, found pids {found:?}"),
    }
}

/// RSS, open descriptors and threads of a process, from /proc/<pid>.
fn sample(pid: u32) -> Result<Sample> {
    let dir = PathBuf::from(format!("/proc/{pid}"));
    let status =
        fs::read_to_string(dir.join("status")).with_context(|| format!("daemon {pid} is gone"))?;
    let field = |name: &str| -> Result<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("no {name} in /proc/{pid}/status"))
    };
    Ok(Sample {
        rss_kib: field("VmRSS:")?,
        rss_anon_kib: field("RssAnon:")?,
        rss_file_kib: field("RssFile:")?,
        threads: field("Threads:")?,
        fds: fs::read_dir(dir.join("fd"))?.count() as u64,
    })
}

/// Checks one metric's series (the idle sample, then one after every cycle) against `c`; the
/// error says which test failed and with what values.
fn flat(series: &[u64], c: &Criterion) -> Result<(), String> {
    let (idle, after) = (series[0], &series[1..]);
    let limit = after[0].saturating_add(c.step_slack);
    if let Some((k, v)) = after.iter().enumerate().find(|(_, v)| **v > limit) {
        return Err(format!(
            "after cycle {} {v} > {limit} (after cycle 1 + {})",
            k + 1,
            c.step_slack
        ));
    }
    let ceiling = idle.saturating_mul(c.ceiling_x);
    if let Some((k, v)) = after.iter().enumerate().find(|(_, v)| **v > ceiling) {
        return Err(format!(
            "after cycle {} {v} > {ceiling} ({}x the idle {idle})",
            k + 1,
            c.ceiling_x
        ));
    }
    let settled = after.get(WARMUP_CYCLES..).unwrap_or_default();
    if settled.len() >= 8 {
        let (h1, h2) = settled.split_at(settled.len() / 2);
        let (q3, q4) = h2.split_at(h2.len() / 2);
        for (what, a, b) in [("second half", h1, h2), ("last quarter", q3, q4)] {
            let (ma, mb) = (median(a), median(b));
            if mb > ma.saturating_add(c.trend_slack) {
                return Err(format!(
                    "{what}'s median {mb} > the one before it {ma} + {} (after cycle {WARMUP_CYCLES})",
                    c.trend_slack
                ));
            }
        }
    }
    Ok(())
}

fn median(v: &[u64]) -> u64 {
    let mut v = v.to_vec();
    v.sort_unstable();
    v[v.len() / 2]
}

#[test]
fn flat_catches_leaks_and_tolerates_warm_up_and_noise() {
    // A descriptor kept per cycle, over the normal suite's 3 cycles: caught.
    assert!(flat(&[15, 15, 16, 17], &FDS).is_err());
    assert!(flat(&[15, 15, 16, 15], &FDS).is_ok());
    // Threads from the blocking pool, up and down within the slack: flat.
    assert!(flat(&[4, 5, 7, 5, 6, 5], &THREADS).is_ok());
    // RSS: the heap's warm-up steps, and one high sample after it, are not a leak...
    let mut rss: Vec<u64> = vec![8076, 8424, 8508, 10544, 10560, 11520];
    rss.extend((0..95).map(|k| 11550 + k * 2));
    rss[30] += 2048;
    assert_eq!(flat(&rss, &RSS), Ok(()));
    // ... 12 KiB more per cycle is, over `make soak`'s 100 cycles ...
    let leak: Vec<u64> = rss
        .iter()
        .enumerate()
        .map(|(k, v)| v + 12 * k as u64)
        .collect();
    assert!(flat(&leak, &RSS).is_err());
    // ... and so is growth confined to the last 20 cycles.
    let mut late = rss.clone();
    let n = late.len();
    for (k, v) in late[n - 20..].iter_mut().enumerate() {
        *v += 100 * (k as u64 + 1);
    }
    assert!(flat(&late, &RSS).is_err());
    // Whatever the trend, twice the idle RSS is too much.
    assert!(flat(&[8000, 8500, 16500], &RSS).is_err());
}

/// What broke and in which step: the instant a failed flow's failure was known (a flow cut by a
/// failover may have started long before), on the load's clock, against the steps' start times.
fn attribute(report: &LoadReport, steps: &[(u64, String)]) -> String {
    let mut s = String::new();
    for f in report.failures.iter().take(20) {
        let at_ns = report.t0_mono_ns + (f.end_ms * 1e6) as u64;
        let step = steps
            .iter()
            .rev()
            .find(|(t, _)| *t <= at_ns)
            .map_or("before the first step", |(_, n)| n.as_str());
        s.push_str(&format!(
            "  {:?} started {:.0} ms, failed {:.0} ms (during {step}): {:?} {}\n",
            f.class, f.start_ms, f.end_ms, f.outcome, f.detail
        ));
    }
    s
}

#[test]
#[ignore = "needs root and network namespaces; `make test` runs it"]
fn soak_drain_undrain_both_nodes_through_the_daemons() {
    if !can_run_lab("soak", &[]) {
        return;
    }
    let cycles = cycles();
    // nopreempt, as keepalived/ ships it: a node undrained comes back as BACKUP and stays so, so
    // after drain lb2 → undrain lb2 the VIP is home on lb1 with both priorities as they began
    // (a preempting pair would need a return_weight that a second cycle could not undo).
    let lab = Lab::up(&LabOptions {
        daemon: true,
        nopreempt: true,
        ..LabOptions::default()
    })
    .unwrap();
    lab.wait_announced(Node::Lb1, "MASTER", STATE_BOUND)
        .unwrap();
    lab.wait_announced(Node::Lb2, "BACKUP", STATE_BOUND)
        .unwrap();
    wait_until("lb2's daemon to accept", STATE_BOUND, || {
        lab.accepting(Node::Lb2).unwrap_or(false)
    })
    .unwrap();
    let before = lab.pair_snapshots().unwrap();
    let pids = Node::ALL.map(|n| daemon_pid(&lab, n).unwrap());
    let mut samples: [Vec<Sample>; 2] = [vec![], vec![]];
    for (i, pid) in pids.iter().enumerate() {
        samples[i].push(sample(*pid).unwrap());
    }

    let spec = soak_load(cycles as u64 * CYCLE_BOUND.as_millis() as u64);
    let gen = Generator::start(&lab, &spec).unwrap();
    wait_until("the load to reach lb1", STATE_BOUND, || {
        established_on(&lab, Node::Lb1).unwrap_or(0) >= 5
    })
    .unwrap();
    let soak_start = Instant::now();
    let mut steps: Vec<(u64, String)> = Vec::new();
    let mut per_cycle = Vec::new();
    let run = (|| -> Result<()> {
        for c in 1..=cycles {
            let t = Instant::now();
            let mut fig = CycleFigures::default();
            for (i, node) in Node::ALL.into_iter().enumerate() {
                steps.push((monotonic_ns(), format!("cycle {c}: drain {node}")));
                (fig.drain_ms[i], fig.wait_ms[i]) =
                    drain(&lab, node).with_context(|| format!("cycle {c}"))?;
                steps.push((monotonic_ns(), format!("cycle {c}: undrain {node}")));
                undrain(&lab, node).with_context(|| format!("cycle {c}"))?;
            }
            steps.push((monotonic_ns(), format!("cycle {c}: sampling")));
            ensure!(
                lab.vip_owner()? == Some(Node::Lb1),
                "cycle {c}: the VIP is not home"
            );
            for (i, node) in Node::ALL.into_iter().enumerate() {
                // The same process: a daemon that crashed and was restarted would hide a leak.
                ensure!(
                    daemon_pid(&lab, node)? == pids[i],
                    "cycle {c}: {node}'s daemon is not the one that started"
                );
                samples[i].push(sample(pids[i])?);
            }
            fig.ms = t.elapsed().as_secs_f64() * 1000.0;
            per_cycle.push(fig);
            if c % 10 == 0 || c == cycles {
                eprintln!(
                    "soak: cycle {c}/{cycles} done, {:.0} s in",
                    soak_start.elapsed().as_secs_f64()
                );
            }
        }
        Ok(())
    })();
    let elapsed_s = soak_start.elapsed().as_secs_f64();
    let report = gen.stop();
    if let Err(e) = run {
        let load = report.as_ref().map_or_else(
            |e| format!("no load report: {e:#}"),
            |r| {
                format!(
                    "{} flows, {} broken\n{}",
                    r.totals.started,
                    r.broken(),
                    attribute(r, &steps)
                )
            },
        );
        panic!("soak failed: {e:#}\nload: {load}\n{}", lab.log_tail());
    }
    let report = report.unwrap();

    let mut daemons = BTreeMap::new();
    let mut problems = Vec::new();
    for (i, node) in Node::ALL.into_iter().enumerate() {
        let mut per_metric = BTreeMap::new();
        for (metric, get, criterion) in [
            (
                "rss_kib",
                (|s: &Sample| s.rss_kib) as fn(&Sample) -> u64,
                RSS,
            ),
            ("fds", |s: &Sample| s.fds, FDS),
            ("threads", |s: &Sample| s.threads, THREADS),
            // Reported, to tell a heap leak from code pages faulted in; the RSS is what is held.
            ("rss_anon_kib", |s: &Sample| s.rss_anon_kib, UNCHECKED),
            ("rss_file_kib", |s: &Sample| s.rss_file_kib, UNCHECKED),
        ] {
            let series: Vec<u64> = samples[i].iter().map(get).collect();
            if let Err(e) = flat(&series, &criterion) {
                problems.push(format!("{node} {metric} not flat: {e}: {series:?}"));
            }
            per_metric.insert(
                metric.to_string(),
                Span {
                    first: series[0],
                    after_cycle_1: series[1],
                    last: series[series.len() - 1],
                    max: *series.iter().max().unwrap(),
                },
            );
        }
        daemons.insert(node.to_string(), per_metric);
    }
    let cycle_ms: Vec<f64> = per_cycle.iter().map(|c: &CycleFigures| c.ms).collect();
    let figures = SoakFigures {
        cycles,
        session_ms: SESSION_MS,
        elapsed_s,
        flows: report.totals.started,
        broken: report.broken(),
        broken_by_class: FlowClass::ALL
            .iter()
            .map(|c| (c.name().to_string(), report.classes.get(*c).failed()))
            .collect(),
        worst_setup_ms: report.setup_latency_ms.max,
        setups_over_100ms: report
            .slowest_setups
            .iter()
            .filter(|s| s.setup_ms > 100.0)
            .count(),
        cycle_ms_mean: cycle_ms.iter().sum::<f64>() / cycle_ms.len() as f64,
        cycle_ms_max: cycle_ms.iter().cloned().fold(0.0, f64::max),
        criteria: [("rss_kib", RSS), ("fds", FDS), ("threads", THREADS)]
            .into_iter()
            .map(|(n, c)| (n.to_string(), c))
            .collect(),
        daemons,
        samples: Node::ALL
            .into_iter()
            .zip(samples)
            .map(|(n, s)| (n.to_string(), s))
            .collect(),
        per_cycle,
    };
    print_figures(&figures);
    if let Some(dir) = std::env::var_os("SOAK_OUT") {
        let dir = Path::new(&dir);
        fs::create_dir_all(dir).unwrap();
        fs::write(
            dir.join("soak.json"),
            serde_json::to_vec_pretty(&figures).unwrap(),
        )
        .unwrap();
    }

    // Every check, then one failure naming all that failed.
    if figures.broken > 0 {
        problems.push(format!(
            "{} of {} flows broke:\n{}",
            figures.broken,
            figures.flows,
            attribute(&report, &steps)
        ));
    }
    if report.hit_run_bound {
        problems.push("the load run hit its hard bound".into());
    }
    // Continuous: the run was ended by the SIGTERM after the last cycle (its `duration_ms` is
    // then how long flows were started), not by its own end before the cycles were done.
    if report.spec.duration_ms >= spec.duration_ms {
        problems.push(format!(
            "the load stopped by itself after {} ms, before the soak ended",
            spec.duration_ms
        ));
    }
    let owner = lab.vip_owner().unwrap();
    if owner != Some(Node::Lb1) {
        problems.push(format!("the VIP is on {owner:?}, not home on lb1"));
    }
    let after = lab.pair_snapshots().unwrap();
    for (node, b, a) in [
        (Node::Lb1, &before.0, &after.0),
        (Node::Lb2, &before.1, &after.1),
    ] {
        if b != a {
            problems.push(format!(
                "{node} not as it began:\n{}",
                drain_lab::fleet::snapshot_diff(b, a)
            ));
        }
    }
    for node in Node::ALL {
        let log = fs::read_to_string(lab.dir.join(format!("agent-{node}.log"))).unwrap();
        if log.contains("panicked") {
            problems.push(format!("{node}'s daemon panicked:\n{log}"));
        }
    }
    assert!(problems.is_empty(), "soak: {}", problems.join("\n"));
}

fn print_figures(f: &SoakFigures) {
    println!(
        "soak: {} cycles in {:.0} s (cycle mean {:.0} ms, max {:.0} ms; sessions {} ms)",
        f.cycles, f.elapsed_s, f.cycle_ms_mean, f.cycle_ms_max, f.session_ms
    );
    println!(
        "flows: {} total, {} broken {:?}; worst connection setup {:.1} ms ({} over 100 ms)",
        f.flows, f.broken, f.broken_by_class, f.worst_setup_ms, f.setups_over_100ms
    );
    println!("| daemon | metric | first (idle) | after cycle 1 | last | max |");
    println!("|---|---|---|---|---|---|");
    for (node, metrics) in &f.daemons {
        for (metric, s) in metrics {
            println!(
                "| {node} | {metric} | {} | {} | {} | {} |",
                s.first, s.after_cycle_1, s.last, s.max
            );
        }
    }
}
