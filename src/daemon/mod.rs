//! `drain-agent run`, the daemon. It follows keepalived's `vrrp_notify_fifo` (one line per VRRP
//! state change, in order — unlike notify scripts, which keepalived runs without waiting) and
//! brings the node in line with each state exactly as `notify` does; it serves the root-only
//! control socket ([`control`]) so `drain`, `undrain` and `status` run here, with their events
//! streamed back; and on start it reconciles: a divert no running drain owns (the daemon, or a
//! `drain` it ran, was killed) is withdrawn gracefully and removed, and what stays (a node left
//! drained on purpose) is reported.
//!
//! Like the CLI, it is an interface: every operation is the service layer's ([`crate::ops`]).
//! A drain runs on a blocking thread; SIGTERM/SIGINT to the daemon, or the client going away
//! (Ctrl-C on `drain-agent drain`), count as an interrupt and roll the drain back.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;

pub mod client;
pub mod control;
pub mod metrics;
pub mod peerlink;

use crate::config::Config;
use crate::keepalived::{FifoEvent, FifoLine, NotifyFifo};
use crate::ops::{self, exit, Event, OpError};
use crate::wiring::open;
use control::{ControlServer, EventSink, Handler, Outcome, Peer, Request};

/// How long the follower waits before reopening a FIFO that failed.
const FIFO_RETRY: Duration = Duration::from_secs(1);

/// Why the daemon could not run. Display is one line.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The start-up repair failed.
    #[error("{0}")]
    Op(#[from] OpError),
    /// The control socket could not be served.
    #[error("{0}")]
    Control(#[from] control::ControlError),
    /// The async runtime could not start.
    #[error("tokio runtime: {0}")]
    Runtime(std::io::Error),
    /// The peer link (`handoff:`) or the metrics could not be served.
    #[error("{0}")]
    Listen(String),
}

impl DaemonError {
    /// The documented exit code.
    pub fn exit_code(&self) -> u8 {
        match self {
            DaemonError::Op(e) => e.exit_code(),
            DaemonError::Control(_) | DaemonError::Listen(_) => exit::ENVIRONMENT,
            DaemonError::Runtime(_) => exit::INTERNAL,
        }
    }
}

/// The daemon's start-up repair (see [`ops::reconcile`]), under the lock.
pub fn reconcile(cfg: &Config) -> Result<ops::reconcile::Reconciled, OpError> {
    let (state, mut host) = open(cfg, Arc::new(AtomicU32::new(0)))?;
    let _lock = state.lock_wait(ops::notify::LOCK_WAIT)?;
    let mut r = ops::reconcile::reconcile(cfg, &state, &mut *host)?;
    r.reasserted = ops::maintenance::reassert(cfg, &state, &mut *host)?;
    Ok(r)
}

/// keepalived's notify for `n`, opening the state directory and the host only if the state asks
/// for an action.
pub fn notify(
    cfg: &Config,
    n: &crate::keepalived::NotifyArgs,
) -> Result<ops::notify::Notified, OpError> {
    if let Ok(state) = crate::journal::StateDir::open(cfg.state_dir.as_path()) {
        state.record_vrrp(n.state.as_str(), &n.name);
    }
    ops::notify::notify(cfg, n, || open(cfg, Arc::new(AtomicU32::new(0))))
}

/// Runs the daemon until SIGTERM/SIGINT: repairs, then follows `fifo` (if any) and serves
/// `socket`.
pub fn run(cfg: &Config, socket: PathBuf, fifo: Option<PathBuf>) -> Result<(), DaemonError> {
    // A corrupt journal stops only what depends on it (the repair now, drains until an operator
    // repaired it: they refuse with the same error); exiting instead would, under
    // `Restart=on-failure`, loop without a control socket, FIFO or peer link, so `status` and
    // keepalived's notifications would go unanswered too.
    match reconcile(cfg) {
        Ok(r) => {
            for line in r.lines() {
                tracing::warn!("{line}");
                eprintln!("drain-agent run: {line}");
            }
        }
        Err(e) if is_corrupt_journal(&e) => degraded("start-up repair skipped", &e),
        Err(e) => return Err(e.into()),
    }
    let returns = peerlink::Returns::new(cfg.clone());
    let key = match &cfg.handoff {
        Some(h) => Some(
            crate::sys::peerlink::Key::load(h.key_file.as_path())
                .map_err(|e| DaemonError::Listen(e.to_string()))?,
        ),
        None => None,
    };
    match returns.resume() {
        Ok(Some(r)) => {
            let line = format!(
                "resumed: the return path of {}'s hand-off (until unix time {})",
                r.peer, r.until
            );
            tracing::warn!("{line}");
            eprintln!("drain-agent run: {line}");
        }
        Ok(None) => {}
        Err(e) if is_corrupt_journal(&e) => degraded("return path not resumed", &e),
        Err(e) => return Err(e.into()),
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(DaemonError::Runtime)?;
    let metrics = Arc::new(metrics::Metrics::default());
    let handler = Arc::new(Daemon {
        cfg: cfg.clone(),
        operations: Operations::default(),
        metrics: metrics.clone(),
    });
    let cfg = cfg.clone();
    rt.block_on(async move {
        let server = ControlServer::bind(&socket, handler.clone())?;
        if let (Some(key), Some(h)) = (key, &cfg.handoff) {
            let port = h.port.get();
            let listener = peerlink::bind(port).await.map_err(|e| {
                DaemonError::Listen(format!("cannot listen on handoff.port {port}: {e}"))
            })?;
            eprintln!(
                "drain-agent run: peer link on port {port} (answers {} only)",
                cfg.peer.get()
            );
            tokio::spawn(peerlink::serve(listener, key, returns.clone()));
        }
        if let Some(m) = &cfg.metrics {
            let addr = m.listen.get();
            let listener = metrics::bind(addr).await.map_err(|e| {
                DaemonError::Listen(format!("cannot listen on metrics.listen {addr}: {e}"))
            })?;
            eprintln!("drain-agent run: metrics at http://{addr}/metrics");
            tokio::spawn(metrics::serve(listener, cfg.clone(), metrics));
        }
        if let Some(path) = fifo {
            tokio::spawn(follow_fifo(cfg.clone(), path));
        }
        eprintln!("drain-agent run: serving {}", socket.display());
        notify_ready();
        let stop = handler.clone();
        server
            .serve(async move {
                let mut term =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = async {
                        match term.as_mut() {
                            Some(t) => { t.recv().await; }
                            None => std::future::pending::<()>().await,
                        }
                    } => {}
                }
                // Every operation in progress rolls back (the server waits for them before it
                // returns) and none starts any more; a return path stays (journalled) for the
                // next start.
                let n = stop.operations.stop();
                tracing::info!(
                    interrupted = n,
                    "stopping: operations in progress interrupted"
                );
                returns.stop();
            })
            .await;
        Ok(())
    })
}

/// Whether `e` is a journal that exists but cannot be trusted (see
/// [`crate::journal::JournalError::Corrupt`]).
fn is_corrupt_journal(e: &OpError) -> bool {
    matches!(
        e,
        OpError::Journal(crate::journal::JournalError::Corrupt { .. })
    )
}

/// Reports what the daemon does without because of a corrupt journal, to the log and stderr
/// (the journal of systemd), loudly: the node may still carry changes nobody will undo.
fn degraded(what: &str, e: &OpError) {
    tracing::error!("{what}: {e}");
    eprintln!("drain-agent run: {what}: {e}");
}

/// Tells systemd the daemon is ready (`Type=notify`): the start-up repair is done and the
/// sockets are served. Nothing to do when not started by systemd.
fn notify_ready() {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sent = std::os::unix::net::UnixDatagram::unbound().and_then(|s| {
        use std::os::linux::net::SocketAddrExt;
        use std::os::unix::ffi::OsStrExt;
        let bytes = path.as_bytes();
        match bytes.strip_prefix(b"@") {
            // An abstract socket, as some service managers give.
            Some(name) => {
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                s.send_to_addr(b"READY=1", &addr)
            }
            None => s.send_to(b"READY=1", std::path::Path::new(&path)),
        }
    });
    if let Err(e) = sent {
        tracing::warn!("sd_notify READY=1 to {}: {e}", path.to_string_lossy());
    }
}

/// Follows the FIFO for the daemon's lifetime, applying each state line in order.
async fn follow_fifo(cfg: Config, path: PathBuf) {
    let mut fifo = NotifyFifo::new(path.clone());
    // The same error every retry (a FIFO others may write stays refused) is logged once, and
    // again only when it changes or after the FIFO was followed.
    let mut last_error: Option<String> = None;
    loop {
        let event = fifo.next().await;
        if event.is_ok() {
            last_error = None;
        }
        match event {
            Ok(FifoEvent::Line(FifoLine::State(n))) => {
                let cfg = cfg.clone();
                // In order: the next line waits for this one.
                match tokio::task::spawn_blocking(move || notify(&cfg, &n)).await {
                    Ok(Ok(done)) => tracing::info!("{}", done.summary()),
                    Ok(Err(e)) => tracing::warn!(code = e.exit_code(), "fifo: {e}"),
                    Err(e) => tracing::warn!("fifo: {e}"),
                }
            }
            Ok(FifoEvent::Closed) => {
                tracing::info!(path = %path.display(), "keepalived closed the FIFO; VRRP state unknown until its next line")
            }
            Ok(FifoEvent::Malformed(e)) => tracing::warn!("fifo: {e}"),
            Ok(_) => {}
            Err(e) => {
                let text = e.to_string();
                if last_error.as_deref() != Some(text.as_str()) {
                    tracing::warn!("fifo: {text}");
                    last_error = Some(text);
                }
                tokio::time::sleep(FIFO_RETRY).await;
            }
        }
    }
}

/// The control-socket handler.
struct Daemon {
    cfg: Config,
    /// Every request in flight, so a stop reaches each of them.
    operations: Operations,
    metrics: Arc<metrics::Metrics>,
}

/// The interrupt counters of every request in flight, and whether the daemon is stopping.
///
/// One slot is not enough: a second request (an `undrain` refused as busy) would overwrite the
/// drain's counter and clear it when it ends, and SIGTERM would then reach nothing. So each
/// request holds its own entry for exactly as long as it runs ([`Registered`]), and a stop
/// interrupts all of them and refuses what comes after.
#[derive(Debug, Default)]
struct Operations {
    inner: Mutex<OperationsInner>,
}

#[derive(Debug, Default)]
struct OperationsInner {
    next: u64,
    running: HashMap<u64, Arc<AtomicU32>>,
    stopping: bool,
}

/// A request refused because the daemon is stopping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "the drain-agent daemon is stopping (SIGTERM/SIGINT): request refused, nothing was changed"
)]
struct Stopping;

impl Operations {
    fn lock(&self) -> std::sync::MutexGuard<'_, OperationsInner> {
        // A panic elsewhere must not stop a SIGTERM from reaching the drains.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a new request with a fresh interrupt counter; refused once stopping, so no
    /// operation can start after the stop has interrupted the others.
    fn register(&self) -> Result<Registered<'_>, Stopping> {
        let mut inner = self.lock();
        if inner.stopping {
            return Err(Stopping);
        }
        let id = inner.next;
        inner.next += 1;
        let interrupts = Arc::new(AtomicU32::new(0));
        inner.running.insert(id, interrupts.clone());
        Ok(Registered {
            operations: self,
            id,
            interrupts,
        })
    }

    /// Enters the stopping state and interrupts every request in flight; returns how many.
    fn stop(&self) -> usize {
        let mut inner = self.lock();
        inner.stopping = true;
        for n in inner.running.values() {
            n.fetch_add(1, Ordering::SeqCst);
        }
        inner.running.len()
    }

    #[cfg(test)]
    fn in_flight(&self) -> usize {
        self.lock().running.len()
    }
}

/// One request's entry in [`Operations`]; dropping it removes that entry and no other.
#[derive(Debug)]
struct Registered<'a> {
    operations: &'a Operations,
    id: u64,
    interrupts: Arc<AtomicU32>,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.operations.lock().running.remove(&self.id);
    }
}

/// An operation's result document with the one-line summary the CLI prints for it.
#[derive(Serialize)]
struct Summarised<'a, T> {
    #[serde(flatten)]
    doc: &'a T,
    summary: String,
}

/// The final line of a request, with the one-line summary the CLI prints.
fn outcome<T: Serialize>(r: Result<T, OpError>, summary: impl FnOnce(&T) -> String) -> Outcome {
    match r {
        Ok(doc) => {
            let summary = summary(&doc);
            Outcome::ok(serde_json::to_value(Summarised { doc: &doc, summary }).unwrap_or_default())
        }
        Err(e) => Outcome::error(e.exit_code(), e.to_string()),
    }
}

impl Handler for Daemon {
    fn handle(&self, request: Request, peer: Peer, events: &EventSink) -> Outcome {
        tracing::info!(op = request.op(), uid = peer.uid, pid = ?peer.pid, "control request");
        // Held until this function returns: the entry goes with the request, whatever it ends.
        let registered = match self.operations.register() {
            Ok(r) => r,
            Err(e) => return Outcome::error(exit::INTERRUPTED, e.to_string()),
        };
        let interrupts = registered.interrupts.clone();
        // The client going away (Ctrl-C on the CLI) counts as one interrupt.
        let gone = interrupts.clone();
        let mut told = false;
        let watcher = self.metrics.clone();
        let mut emit = |e: Event| {
            watcher.observe(&e);
            if !events
                .send(serde_json::to_value(crate::ops::event::stamped(&e)).unwrap_or_default())
                && !told
            {
                told = true;
                gone.fetch_add(1, Ordering::SeqCst);
            }
        };
        let cfg = &self.cfg;
        let result = match open(cfg, interrupts.clone()) {
            Err(e) => Outcome::error(e.exit_code(), e.to_string()),
            Ok((state, mut host)) => match request {
                Request::Status => {
                    outcome(ops::status::status(cfg, &state, &mut *host), |s| s.text())
                }
                Request::Drain(opts) => {
                    self.metrics.drain_started(opts.apply(cfg).drain.mode);
                    let r = ops::drain::run(cfg, &opts, &state, &mut *host, &mut emit);
                    self.metrics.drain_finished(r.as_ref());
                    outcome(
                        r.map(|report| ops::drain::DrainOutcome::Drained { report }),
                        |o| match o {
                            ops::drain::DrainOutcome::Drained { report } => report.summary(),
                            ops::drain::DrainOutcome::Failed { error, .. } => error.clone(),
                        },
                    )
                }
                Request::Undrain(opts) => outcome(
                    ops::undrain::run(cfg, &opts, &state, &mut *host, &mut emit),
                    |u| u.summary(),
                ),
                Request::MaintenanceOn(m) => {
                    let m = ops::maintenance::MaintenanceRequest {
                        by: format!("{} (uid {} over the control socket)", m.by, peer.uid),
                        ..m
                    };
                    self.metrics.drain_started(m.drain.apply(cfg).drain.mode);
                    let r = ops::maintenance::on(cfg, &state, &mut *host, &m, &mut emit);
                    match &r {
                        Ok(on) => match &on.drain {
                            Some(d) => self.metrics.drain_finished(Ok(d)),
                            None => self.metrics.drain_skipped(),
                        },
                        Err(e) => self.metrics.drain_finished(Err(e)),
                    }
                    outcome(r, |o| o.summary())
                }
                Request::MaintenanceOff(off) => outcome(
                    ops::maintenance::off(cfg, &state, &mut *host, &off, &mut emit),
                    |o| o.summary(),
                ),
            },
        };
        drop(registered);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_request_ending_leaves_the_first_interruptible() {
        let ops = Operations::default();
        let drain = ops.register().unwrap();
        {
            // The undrain refused as busy: registers and goes, as the lost-signal bug's did.
            let undrain = ops.register().unwrap();
            assert_eq!(ops.in_flight(), 2);
            drop(undrain);
        }
        assert_eq!(ops.in_flight(), 1, "only the undrain's own entry went");
        assert_eq!(ops.stop(), 1);
        assert_eq!(drain.interrupts.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn stop_interrupts_every_request_in_flight_once() {
        let ops = Operations::default();
        let a = ops.register().unwrap();
        let b = ops.register().unwrap();
        let c = ops.register().unwrap();
        drop(b);
        assert_eq!(ops.stop(), 2);
        assert_eq!(a.interrupts.load(Ordering::SeqCst), 1);
        assert_eq!(c.interrupts.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn no_request_starts_once_stopping() {
        let ops = Operations::default();
        let running = ops.register().unwrap();
        ops.stop();
        assert_eq!(ops.register().unwrap_err(), Stopping);
        // Entries still go away normally while stopping, so shutdown sees the drain end.
        drop(running);
        assert_eq!(ops.in_flight(), 0);
    }

    #[test]
    fn requests_racing_a_stop_are_either_interrupted_or_refused() {
        let ops = Arc::new(Operations::default());
        let mut seen = Vec::new();
        std::thread::scope(|s| {
            let workers: Vec<_> = (0..8)
                .map(|_| {
                    let ops = ops.clone();
                    s.spawn(move || {
                        (0..200)
                            .map(|_| match ops.register() {
                                // Read while still registered: a stop that ran before this
                                // point must have reached this counter.
                                Ok(r) => Some((r.interrupts.clone(), ops.lock().stopping)),
                                Err(Stopping) => None,
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            ops.stop();
            for w in workers {
                seen.extend(w.join().unwrap());
            }
        });
        for (counter, stopping_while_registered) in seen.into_iter().flatten() {
            if stopping_while_registered {
                assert_eq!(counter.load(Ordering::SeqCst), 1);
            }
        }
        assert_eq!(ops.register().unwrap_err(), Stopping);
        assert_eq!(ops.in_flight(), 0);
    }
}
