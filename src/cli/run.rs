//! `drain-agent run`: the daemon. It follows keepalived's `vrrp_notify_fifo` (one line per VRRP
//! state change, in order — unlike notify scripts, which keepalived runs without waiting) and
//! brings the node in line with each state exactly as `notify` does; it serves the root-only
//! control socket so `drain`, `undrain` and `status` run here, with their events streamed back;
//! and on start it reconciles: a divert no running drain owns (the daemon, or a `drain` it ran,
//! was killed) is withdrawn gracefully and removed, and what stays (a node left drained on
//! purpose) is reported.
//!
//! A drain runs on a blocking thread; SIGTERM/SIGINT to the daemon, or the client going away
//! (Ctrl-C on `drain-agent drain`), count as an interrupt and roll the drain back.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use clap::Args;
use serde_json::json;

use super::common;
use super::{drain, notify, status, undrain, Failure, GlobalOpts};
use crate::config::Config;
use crate::control::{ControlServer, EventSink, Handler, Op, Outcome, Peer, Request};
use crate::keepalived::{FifoEvent, FifoLine, NotifyFifo, DEFAULT_FIFO_PATH};
use crate::ops::{exit, Event};

/// Arguments of `run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// keepalived's `vrrp_notify_fifo`.
    #[arg(long, default_value = DEFAULT_FIFO_PATH)]
    pub fifo: PathBuf,
    /// Do not follow the FIFO (keepalived's notify hook calls `drain-agent notify` instead).
    #[arg(long)]
    pub no_fifo: bool,
}

/// Runs the daemon until SIGTERM/SIGINT.
pub fn run(g: &GlobalOpts, a: &RunArgs) -> Result<(), Failure> {
    let cfg = common::load_config(g)?;
    common::require_net_admin()?;
    for line in reconcile(&cfg)? {
        tracing::warn!("{line}");
        eprintln!("drain-agent run: {line}");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Failure::new(exit::INTERNAL, format!("tokio: {e}")))?;
    let handler = Arc::new(Daemon {
        cfg: cfg.clone(),
        running: Mutex::new(None),
    });
    let socket = g.socket.clone();
    let fifo = (!a.no_fifo).then(|| a.fifo.clone());
    rt.block_on(async move {
        let server = ControlServer::bind(&socket, handler.clone()).map_err(|e| Failure::new(exit::ENVIRONMENT, e.to_string()))?;
        if let Some(path) = fifo {
            tokio::spawn(follow_fifo(cfg.clone(), path));
        }
        eprintln!("drain-agent run: serving {}", socket.display());
        let stop = handler.clone();
        server
            .serve(async move {
                let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = async { if let Some(t) = term.as_mut() { t.recv().await; } else { std::future::pending::<()>().await } } => {}
                }
                // A drain in progress rolls back before the server stops.
                stop.interrupt();
            })
            .await;
        Ok::<(), Failure>(())
    })
}

/// Repairs what an interrupted drain left: a divert no drain owns (we hold the lock, so none
/// runs) is withdrawn gracefully and removed; the tracked interface is left as it is. Returns
/// what it found and did, one line each.
pub fn reconcile(cfg: &Config) -> Result<Vec<String>, Failure> {
    let state = common::state_dir(cfg)?;
    let _lock = state.lock_wait(notify::LOCK_WAIT)?;
    let mut host = common::system_host(cfg, common::no_interrupts())?;
    let mut lines = Vec::new();
    if common::clear_orphaned_divert(cfg, &state, &mut host)? {
        lines.push(
            "repaired: a divert left by an interrupted drain was withdrawn and removed".to_string(),
        );
    }
    let journal = state.drain_journal()?;
    for e in journal.entries() {
        lines.push(format!(
            "kept: {:?} (the node stays drained until `drain-agent undrain`)",
            e.change
        ));
    }
    Ok(lines)
}

/// Follows the FIFO for the daemon's lifetime, applying each state line in order.
async fn follow_fifo(cfg: Config, path: PathBuf) {
    let mut fifo = NotifyFifo::new(path.clone());
    loop {
        match fifo.next().await {
            Ok(FifoEvent::Line(FifoLine::State(n))) => {
                let cfg = cfg.clone();
                // In order: the next line waits for this one.
                let r = tokio::task::spawn_blocking(move || notify::apply(&cfg, &n)).await;
                match r {
                    Ok(Ok((_, text))) => tracing::info!("{text}"),
                    Ok(Err(f)) => tracing::warn!(code = f.code, "fifo: {}", f.message),
                    Err(e) => tracing::warn!("fifo: {e}"),
                }
            }
            Ok(FifoEvent::Closed) => {
                tracing::info!(path = %path.display(), "keepalived closed the FIFO; VRRP state unknown until its next line")
            }
            Ok(FifoEvent::Malformed(e)) => tracing::warn!("fifo: {e}"),
            Ok(_) => {}
            Err(e) => {
                tracing::warn!("fifo {}: {e}", path.display());
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        }
    }
}

/// The control-socket handler.
struct Daemon {
    cfg: Config,
    /// The interrupt counter of the drain or undrain in progress.
    running: Mutex<Option<Arc<AtomicU32>>>,
}

impl Daemon {
    fn interrupt(&self) {
        if let Some(n) = self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            n.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn outcome(r: Result<(serde_json::Value, String), Failure>) -> Outcome {
        match r {
            Ok((mut doc, summary)) => {
                doc["summary"] = json!(summary);
                Outcome::ok(doc)
            }
            Err(f) => Outcome::error(f.code, f.message),
        }
    }
}

impl Handler for Daemon {
    fn handle(&self, request: Request, peer: Peer, events: &EventSink) -> Outcome {
        tracing::info!(op = ?request.op, uid = peer.uid, pid = ?peer.pid, "control request");
        let interrupts = Arc::new(AtomicU32::new(0));
        let long = matches!(request.op, Op::Drain | Op::Undrain);
        if long {
            *self.running.lock().unwrap_or_else(|e| e.into_inner()) = Some(interrupts.clone());
        }
        // The client going away (Ctrl-C on the CLI) counts as one interrupt.
        let gone = interrupts.clone();
        let mut told = false;
        let mut emit = |e: &Event| {
            let mut v = serde_json::to_value(e).unwrap_or_default();
            v["ts_ms"] = json!(std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis())
                .unwrap_or(0));
            if !events.send(v) && !told {
                told = true;
                gone.fetch_add(1, Ordering::SeqCst);
            }
        };
        let r = match request.op {
            Op::Status => status::document(&self.cfg),
            Op::Drain => match drain::args_from_request(&request) {
                Ok(a) => drain::execute(&self.cfg, &a, interrupts.clone(), &mut emit),
                Err(e) => Err(Failure::new(exit::USAGE, e)),
            },
            Op::Undrain => {
                let keep = request
                    .args
                    .get("keep_link_down")
                    .and_then(|v| v.as_bool())
                    .unwrap_or(false);
                undrain::execute(&self.cfg, keep, interrupts.clone(), &mut emit)
            }
        };
        if long {
            *self.running.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
        Daemon::outcome(r)
    }
}
