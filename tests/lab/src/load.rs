//! The flow-accounting load generator.
//!
//! Open loop: every class starts flows on a fixed schedule computed from the run's start, each
//! flow is an independent task, and nothing waits for an earlier flow, so a stalled load balancer
//! cannot lower the offered load (and hide its own stall). Every flow ends in exactly one
//! [`Outcome`]; the [`LoadReport`] accounts for all of them.

mod flow;
mod http;
mod report;
mod spec;

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::{sleep_until, timeout_at, Instant};

pub use flow::{classify_io_error, Outcome};
pub use report::{
    ClassReport, ClassReports, FailedFlow, LatencySummary, LoadReport, SlowSetup, TimelineBucket,
    Totals, MAX_FAILURES_LISTED, SLOWEST_SETUPS_LISTED, TIMELINE_BUCKET_MS,
};
pub use spec::{
    start_offset, EchoSpec, FlowClass, KeepaliveSpec, LoadSpec, ShortSpec, SlowSpec, SpecError,
    MAX_FLOWS,
};

use flow::{FlowCtx, FlowRecord};

/// Errors of the load generator (a run itself never fails: broken flows are its result).
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The spec cannot be run.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// The spec file could not be read.
    #[error("cannot read the spec {path}: {source}")]
    ReadSpec {
        /// The spec file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The spec file is not a valid spec.
    #[error("spec {path}: {source}")]
    ParseSpec {
        /// The spec file.
        path: PathBuf,
        /// What is wrong with it.
        source: SpecError,
    },
    /// The report could not be written.
    #[error("cannot write the report to {path}: {source}")]
    WriteReport {
        /// The output file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
}

/// Arguments of `drain-lab load`.
///
/// Exit status: 0 when every flow ended ok, 1 when any flow broke, 2 when the run could not be
/// made (bad spec, unwritable output).
#[derive(Debug, Clone, clap::Args)]
pub struct LoadArgs {
    /// JSON LoadSpec; every field is optional (without this flag: all defaults).
    #[arg(long)]
    pub spec: Option<PathBuf>,
    /// Write the JSON report here instead of stdout.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// SIGTERM ends the run early instead of killing it: no new flow starts, the flows in
    /// progress run to their end, and the report covers what ran (its `spec.duration_ms` is then
    /// how long flows were started). For runs whose length is not known up front.
    #[arg(long)]
    pub stop_on_sigterm: bool,
}

impl LoadArgs {
    /// Runs the spec, prints the table to stderr and the JSON report to stdout or `--out`.
    pub async fn run(self) -> Result<LoadReport, LoadError> {
        let spec = match &self.spec {
            None => LoadSpec::default(),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| LoadError::ReadSpec {
                    path: path.clone(),
                    source,
                })?;
                LoadSpec::from_json(&text).map_err(|source| LoadError::ParseSpec {
                    path: path.clone(),
                    source,
                })?
            }
        };
        let report = if self.stop_on_sigterm {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("a SIGTERM handler can be installed in the generator");
            run_until(&spec, async move {
                term.recv().await;
            })
            .await?
        } else {
            run(&spec).await?
        };
        eprint!("{}", report.table());
        let mut json = serde_json::to_string_pretty(&report)
            .expect("a LoadReport is plain data and always serialises");
        json.push('\n');
        match &self.out {
            None => print!("{json}"),
            Some(path) => std::fs::write(path, json).map_err(|source| LoadError::WriteReport {
                path: path.clone(),
                source,
            })?,
        }
        Ok(report)
    }
}

/// Runs a load spec to the end and accounts for every flow.
///
/// Flows start during `duration_ms`; the run then waits for them, but never longer than
/// [`LoadSpec::run_bound`] from its start: flows still going then count as timeouts. Must run on a
/// multi-threaded tokio runtime (flows are spawned tasks). Fails only for an invalid spec.
pub async fn run(spec: &LoadSpec) -> Result<LoadReport, LoadError> {
    run_until(spec, std::future::pending()).await
}

/// [`run`], but no flow starts once `stop` completes: the flows in progress run to their end and
/// the report's `spec.duration_ms` says how long flows were started.
pub async fn run_until(
    spec: &LoadSpec,
    stop: impl std::future::Future<Output = ()>,
) -> Result<LoadReport, LoadError> {
    spec.validate()?;
    tokio::pin!(stop);
    let mut stopped_at = None;
    let mut warnings = Vec::new();
    if let Err(e) = raise_nofile_limit() {
        warnings.push(format!("cannot raise RLIMIT_NOFILE: {e}"));
    }
    // Read next to each other, the two name the same instant to well under a microsecond: every
    // `*_ms` of the report is from `t0`, and `t0_mono_ns` puts them on the host's shared clock.
    let t0_mono_ns = monotonic_ns();
    let ctx = Arc::new(FlowCtx {
        spec: spec.clone(),
        t0: Instant::now(),
        seed: run_seed(),
    });
    let t0 = ctx.t0;
    let mut hard_bound = t0 + spec.run_bound();
    let (tx, mut rx) = mpsc::unbounded_channel::<FlowRecord>();
    let mut tasks = JoinSet::new();
    let mut planned: Vec<(FlowClass, f64)> = Vec::new();

    // One merged schedule over all classes: the next start is always the earliest one due.
    let counts = FlowClass::ALL.map(|c| spec.scheduled_count(c));
    let mut next = [0u64; 4];
    loop {
        let due = (0..FlowClass::ALL.len())
            .filter(|&i| next[i] < counts[i])
            .map(|i| (start_offset(spec.rate(FlowClass::ALL[i]), next[i]), i))
            .min();
        let Some((at, i)) = due else { break };
        next[i] += 1;
        let class = FlowClass::ALL[i];
        tokio::select! {
            _ = sleep_until(t0 + at) => {}
            _ = &mut stop => {
                stopped_at = Some(t0.elapsed());
                break;
            }
        }
        while tasks.try_join_next().is_some() {}
        let id = planned.len();
        planned.push((class, at.as_secs_f64() * 1000.0));
        let (ctx, tx) = (Arc::clone(&ctx), tx.clone());
        tasks.spawn(async move {
            let record = flow::run_flow(ctx, id, class, at).await;
            // The receiver only goes away after the hard bound, when this task is aborted anyway.
            let _ = tx.send(record);
        });
    }
    drop(tx);
    if let Some(at) = stopped_at {
        // The flows in progress get what they would have had after a run of that length.
        hard_bound = hard_bound.min(
            t0 + at
                + spec
                    .run_bound()
                    .saturating_sub(Duration::from_millis(spec.duration_ms)),
        );
    }

    let mut records: Vec<Option<FlowRecord>> = vec![None; planned.len()];
    let mut hit_run_bound = false;
    loop {
        match timeout_at(hard_bound, rx.recv()).await {
            Ok(Some(record)) => {
                let id = record.id;
                records[id] = Some(record);
            }
            // Every task has ended and dropped its sender.
            Ok(None) => break,
            Err(_) => {
                hit_run_bound = true;
                break;
            }
        }
    }
    tasks.abort_all();
    let elapsed_ms = t0.elapsed().as_secs_f64() * 1000.0;
    let mut ran = spec.clone();
    if let Some(at) = stopped_at {
        ran.duration_ms = at.as_millis() as u64;
    }
    let spec = &ran;
    let records: Vec<FlowRecord> = records
        .into_iter()
        .zip(planned)
        .enumerate()
        .map(|(id, (record, (class, scheduled_ms)))| {
            record.unwrap_or_else(|| FlowRecord {
                id,
                class,
                scheduled_ms,
                start_ms: scheduled_ms,
                end_ms: elapsed_ms,
                setup_ms: None,
                handshake_ms: None,
                outcome: if hit_run_bound {
                    Outcome::Timeout
                } else {
                    Outcome::Other
                },
                detail: if hit_run_bound {
                    "still running at the run's hard bound".to_string()
                } else {
                    "flow task ended without a result (panicked)".to_string()
                },
                requests_ok: 0,
                latency_ms: None,
            })
        })
        .collect();
    let mut report = report::build(spec, &records, elapsed_ms, hit_run_bound, warnings);
    report.t0_mono_ns = t0_mono_ns;
    Ok(report)
}

/// CLOCK_MONOTONIC now, in nanoseconds: one clock for the whole host (network namespaces share
/// it), so the load generator's times, the agent's events (`mono_ns`) and a scenario's notes can
/// be compared without measuring offsets between processes.
pub fn monotonic_ns() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .expect("CLOCK_MONOTONIC is always readable");
    t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
}

/// Descriptor-table slots reserved up front by [`raise_nofile_limit`].
const FD_TABLE_SLOTS: u64 = 16_384;

/// Raises the soft RLIMIT_NOFILE to the hard limit (every flow holds a descriptor, and a few
/// thousand concurrent flows exceed the usual soft limit of 1024), then grows the process's
/// descriptor table to [`FD_TABLE_SLOTS`] once, before any flow runs. Returns the new limit.
///
/// Why the table: the kernel grows it by doubling when a new descriptor does not fit, and in a
/// multi-threaded process that waits for an RCU grace period (`expand_fdtable` calls
/// `synchronize_rcu`), which stalls the thread that opened the socket for ~10–20 ms on the busy
/// 2-core machine. Measured in the lab at 3000 connections/s with 50 echo sessions/s of 11 s: a
/// 10–20 ms "connection setup" in every run at ~4 s and ~9 s, exactly when the generator's open
/// descriptors passed 256 and 512, and never again once the table was grown up front.
pub fn raise_nofile_limit() -> io::Result<u64> {
    let limit = raise_soft_nofile()?;
    reserve_fd_table(limit.min(FD_TABLE_SLOTS))?;
    Ok(limit)
}

/// Makes descriptor `slots - 1` valid for a moment, so the table is grown to `slots` entries now
/// (it never shrinks).
fn reserve_fd_table(slots: u64) -> io::Result<()> {
    let Some(top) = slots.checked_sub(1) else {
        return Ok(());
    };
    let top = i32::try_from(top).unwrap_or(i32::MAX);
    let devnull = std::fs::File::open("/dev/null")?;
    // SAFETY: dup2 onto a descriptor number nothing in this process uses yet (the generator
    // and the backend call this first thing, before they open anything that high); the copy is
    // closed again at once.
    let fd = unsafe { libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&devnull), top) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is the descriptor dup2 just created.
    unsafe { libc::close(fd) };
    Ok(())
}

fn raise_soft_nofile() -> io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: `lim` is a valid rlimit read from the kernel, only the soft limit raised.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(lim.rlim_cur)
}

/// A per-run seed for the echo payloads.
fn run_seed() -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ (u64::from(std::process::id()) << 32)
}
