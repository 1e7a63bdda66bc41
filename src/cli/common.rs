//! What the subcommands share: loading the config, the state dir, the real host, the divert
//! scripts and policy derived from the config, signal handling, and output (human or JSON).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};

use super::{Failure, GlobalOpts};
use crate::config::Config;
use crate::ops::{exit, Event, Policy};
use crate::plan::DivertPlan;
use crate::sys::host::SystemHost;
use crate::sys::journal::StateDir;

/// Loads and validates the configuration.
pub fn load_config(g: &GlobalOpts) -> Result<Config, Failure> {
    Ok(Config::load(&g.config)?)
}

/// Opens the state directory named in the config.
pub fn state_dir(cfg: &Config) -> Result<StateDir, Failure> {
    require_net_admin()?;
    Ok(StateDir::open(cfg.state_dir.as_path())?)
}

/// Every command that reads or changes the network needs CAP_NET_ADMIN (root has it). Checked up
/// front so the error names the cause instead of a netlink EPERM halfway through.
pub fn require_net_admin() -> Result<(), Failure> {
    const CAP_NET_ADMIN: u32 = 12;
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    if eff & (1 << CAP_NET_ADMIN) == 0 {
        return Err(Failure::new(exit::ENVIRONMENT, "insufficient privileges: drain-agent needs root or CAP_NET_ADMIN (and CAP_NET_RAW for the peer probe)"));
    }
    Ok(())
}

/// The real host for `cfg`.
pub fn system_host(cfg: &Config, interrupts: Arc<AtomicU32>) -> Result<SystemHost, Failure> {
    Ok(SystemHost::new(cfg, interrupts)?)
}

/// The divert plan for `cfg`.
pub fn plan(cfg: &Config) -> DivertPlan {
    DivertPlan::new(cfg)
}

/// Withdraws gracefully and removes a divert no running drain owns — one a killed drain left on
/// the host or in the journal — leaving the tracked interface as it is. The caller holds the
/// lock, which proves no drain runs. Returns whether there was one.
pub fn clear_orphaned_divert(
    cfg: &Config,
    state: &StateDir,
    host: &mut SystemHost,
) -> Result<bool, Failure> {
    use crate::ops::{self as cycle, Host, HostError};
    let mut journal = state.drain_journal()?;
    let plan = plan(cfg);
    let save = host.firewall().save_mangle().map_err(HostError::from)?;
    let orphaned = !plan.existing_chains(&save).is_empty()
        || journal
            .entries()
            .iter()
            .any(|e| !e.change.is_maintenance_state());
    if orphaned {
        cycle::undrain(host, &mut journal, &plan, &policy(cfg), true, &mut |_| {})?;
    }
    Ok(orphaned)
}

/// The drain policy from `cfg`.
pub fn policy(cfg: &Config) -> Policy {
    Policy {
        vips: cfg.vips.iter().map(|v| v.address.get()).collect(),
        peer: cfg.peer.get(),
        tracked_interface: cfg.tracked_interface.as_str().to_string(),
        deadline: cfg.drain.deadline.get(),
        abort_on_deadline: cfg.drain.abort_on_deadline,
        poll_interval: cfg.drain.poll_interval.get(),
        probe_interval: cfg.peer_probe.interval.get(),
        probe_failures: cfg.peer_probe.failures.get(),
        rollback_grace: cfg.drain.rollback_grace.get(),
        failover_timeout: cfg.failover.timeout.get(),
        post_wait: cfg.failover.post_wait.get(),
        track_file: cfg
            .failover
            .track_file
            .as_ref()
            .map(|p| p.as_path().to_path_buf()),
        trigger_track_file: cfg.failover.method == crate::config::FailoverMethod::TrackFile,
        return_weight: cfg.failover.return_weight.get(),
    }
}

static INTERRUPTS: OnceLock<Arc<AtomicU32>> = OnceLock::new();

extern "C" fn on_signal(_: libc::c_int) {
    // Only an atomic increment: async-signal-safe.
    if let Some(n) = INTERRUPTS.get() {
        n.fetch_add(1, Ordering::SeqCst);
    }
}

/// SIGINT/SIGTERM/SIGHUP no longer kill the process; they are counted, and the drain rolls back
/// (a second one cuts the rollback grace short).
pub fn install_signal_handlers() -> Arc<AtomicU32> {
    let n = INTERRUPTS
        .get_or_init(|| Arc::new(AtomicU32::new(0)))
        .clone();
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for sig in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        // SAFETY: the handler only touches an atomic.
        unsafe {
            let _ = sigaction(sig, &action);
        }
    }
    n
}

/// A counter that never moves, for commands that are not interruptible mid-way.
pub fn no_interrupts() -> Arc<AtomicU32> {
    Arc::new(AtomicU32::new(0))
}

/// If a daemon serves the control socket, sends it `req`, prints its events and result as a
/// local run would, and returns the command's outcome; `None` when there is no daemon (run here).
/// SIGINT/SIGTERM close the connection, which tells the daemon to roll a drain back.
pub fn forward(
    g: &GlobalOpts,
    req: &crate::control::Request,
) -> Result<Option<Result<(), Failure>>, Failure> {
    use crate::control::{call, ControlError};
    if g.local || !g.socket.exists() {
        return Ok(None);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::new(exit::INTERNAL, format!("tokio: {e}")))?;
    let out = Output::new(g.json);
    let res = rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        let term = async move {
            match term.as_mut() {
                Some(t) => {
                    t.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            r = call(&g.socket, req, std::time::Duration::from_secs(2), |v| out.forwarded(v)) => Some(r),
            _ = tokio::signal::ctrl_c() => None,
            _ = term => None,
        }
    });
    match res {
        None => Ok(Some(Err(Failure::new(
            exit::INTERRUPTED,
            "interrupted; the daemon rolls the drain back",
        )))),
        // A socket file nobody serves (a daemon that was killed): run here.
        Some(Err(ControlError::Connect { .. }))
        | Some(Err(ControlError::ConnectTimeout { .. })) => Ok(None),
        Some(Err(e)) => Err(Failure::new(exit::INTERNAL, format!("control socket: {e}"))),
        Some(Ok(o)) if o.exit_code == 0 => {
            out.result(&o.result, o.result["summary"].as_str().unwrap_or(""));
            Ok(Some(Ok(())))
        }
        Some(Ok(o)) => {
            if g.json {
                out.result(&o.result, "");
            }
            Ok(Some(Err(Failure::new(
                o.exit_code,
                o.result["error"]
                    .as_str()
                    .unwrap_or("the daemon reported an error"),
            ))))
        }
    }
}

/// Output of a command: live events and a final result, as text or JSON lines.
pub struct Output {
    json: bool,
}

impl Output {
    /// Text unless `json`.
    pub fn new(json: bool) -> Output {
        Output { json }
    }

    /// Prints one live event.
    pub fn event(&self, e: &Event) {
        if self.json {
            let mut v = serde_json::to_value(e).unwrap_or_default();
            v["ts_ms"] = serde_json::json!(unix_ms());
            println!("{v}");
            return;
        }
        let line = match e {
            Event::Ready { peer, sockets } => {
                format!("ready: peer answers for the VIP ({peer:?}); {sockets} connection(s) here")
            }
            Event::Diverted { install_ms } => format!(
                "diverting new flows to the peer (installed and verified in {install_ms:.1} ms)"
            ),
            Event::Progress {
                elapsed_ms,
                remaining,
                idle,
                diverted_flows,
                ..
            } => format!(
                "draining: {remaining} connection(s) left ({idle} idle) after {:.1} s; {diverted_flows} new flow(s) diverted",
                elapsed_ms / 1000.0
            ),
            Event::RecordGrown {
                set,
                recorded,
                room,
            } => format!(
                "diverted-flow record grown: {set} added ({recorded} recorded, room for {room})"
            ),
            Event::RecordTendFailed { error } => {
                format!("warning: cannot grow the diverted-flow record: {error}")
            }
            Event::Unrecorded {
                syns,
                recorded,
                capacity,
            } => format!(
                "WARNING: {syns} SYN(s) could not be recorded ({recorded} flows recorded, capacity {capacity} per port): served here until the seal, dropped after it"
            ),
            Event::Sealed { elapsed_ms } => format!(
                "drain over after {:.1} s: divert sealed, final count",
                elapsed_ms / 1000.0
            ),
            Event::DivertTotals {
                diverted_flows,
                diverted_packets,
                unrecorded_syns,
                ..
            } => format!(
                "diverted {diverted_flows} new flow(s) ({diverted_packets} packets); {unrecorded_syns} SYN(s) unrecorded"
            ),
            Event::PeerProbeFailed {
                consecutive,
                answer,
            } => format!("peer probe failed ({consecutive} in a row): {answer}"),
            Event::Drained {
                reason,
                elapsed_ms,
                remaining,
            } => format!(
                "drain done: {reason:?} after {:.1} s, {remaining} left",
                elapsed_ms / 1000.0
            ),
            Event::FailoverTriggered { trigger } => format!("failover: {trigger}"),
            Event::PeerOwnsVip { after_ms } => {
                format!("peer owns the VIP ({after_ms:.0} ms after the trigger)")
            }
            Event::Withdrawn { reason } => format!("divert withdrawn: {reason}"),
            Event::CleanedUp => "divert removed".to_string(),
        };
        println!("{line}");
    }

    /// Prints an event the daemon sent (JSON as received; text like a local event).
    pub fn forwarded(&self, v: &serde_json::Value) {
        match (self.json, serde_json::from_value::<Event>(v.clone())) {
            (false, Ok(e)) => self.event(&e),
            _ => println!("{v}"),
        }
    }

    /// Prints the final result: `doc` as JSON, or `text`.
    pub fn result(&self, doc: &serde_json::Value, text: &str) {
        if self.json {
            println!("{doc}");
        } else if !text.is_empty() {
            println!("{text}");
        }
    }
}

fn unix_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}
