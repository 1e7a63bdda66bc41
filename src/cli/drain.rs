//! `drain-agent drain`: the whole cycle in the foreground.

use clap::Args;
use serde_json::json;

use super::common::{self, Output};
use super::{Failure, GlobalOpts};
use crate::config::PositiveDuration;
use std::sync::atomic::AtomicU32;
use std::sync::Arc;

use crate::config::Config;
use crate::control::{Op, Request};
use crate::ops::{self as cycle, Event};

/// Arguments of `drain`.
#[derive(Debug, Args)]
pub struct DrainArgs {
    /// At the deadline, roll back instead of failing over (overrides `drain.abort_on_deadline`).
    #[arg(long)]
    pub abort_on_deadline: bool,
    /// Override `drain.deadline` (e.g. 90s, 5m).
    #[arg(long, value_parser = positive)]
    pub deadline: Option<PositiveDuration>,
    /// Override `drain.idle_threshold`.
    #[arg(long, value_parser = positive)]
    pub idle_threshold: Option<PositiveDuration>,
}

fn positive(s: &str) -> Result<PositiveDuration, String> {
    PositiveDuration::try_from(s.to_string()).map_err(|e| e.to_string())
}

/// Runs `drain`: through the daemon when one serves the control socket, else here.
pub fn run(g: &GlobalOpts, a: &DrainArgs) -> Result<(), Failure> {
    let mut req = Request::new(Op::Drain).with_arg("abort_on_deadline", a.abort_on_deadline);
    if let Some(d) = a.deadline {
        req = req.with_arg("deadline", d.to_string());
    }
    if let Some(d) = a.idle_threshold {
        req = req.with_arg("idle_threshold", d.to_string());
    }
    if let Some(done) = common::forward(g, &req)? {
        return done;
    }
    let cfg = common::load_config(g)?;
    let out = Output::new(g.json);
    let (doc, summary) = execute(&cfg, a, common::install_signal_handlers(), &mut |e| {
        out.event(e)
    })?;
    out.result(&doc, &summary);
    Ok(())
}

/// The drain itself, for the CLI and the daemon: takes the lock, runs the cycle reporting each
/// event to `emit`, records the outcome in the state directory. Returns the result document and
/// a one-line summary, or the failure (after the same record).
pub fn execute(
    cfg: &Config,
    a: &DrainArgs,
    interrupts: Arc<AtomicU32>,
    emit: &mut dyn FnMut(&Event),
) -> Result<(serde_json::Value, String), Failure> {
    let mut cfg = cfg.clone();
    if let Some(d) = a.deadline {
        cfg.drain.deadline = d;
    }
    if let Some(d) = a.idle_threshold {
        cfg.drain.idle_threshold = d;
    }
    if a.abort_on_deadline {
        cfg.drain.abort_on_deadline = true;
    }
    let state = common::state_dir(&cfg)?;
    let _lock = state.lock()?;
    let mut journal = state.drain_journal()?;
    let mut host = common::system_host(&cfg, interrupts)?;
    let plan = common::plan(&cfg);
    let policy = common::policy(&cfg);
    let span = tracing::info_span!("drain", peer = %cfg.peer.get(), tracked = %cfg.tracked_interface.as_str());
    let _enter = span.enter();
    let result = cycle::drain(&mut host, &mut journal, &plan, &policy, &mut |e| emit(&e));
    let record = match &result {
        Ok(r) => json!({"result": "drained", "report": r}),
        Err(e) => json!({"result": "failed", "exit_code": e.exit_code(), "error": e.to_string()}),
    };
    let _ = crate::sys::journal::write_atomic(
        &state.last_run_path(),
        serde_json::to_string_pretty(&record)
            .unwrap_or_default()
            .as_bytes(),
    );
    match result {
        Ok(r) => {
            let summary = format!(
                "drained: {:?} after {:.1} s ({} left), {} new flow(s) diverted ({} SYN(s) unrecorded), peer owned the VIP {:.0} ms after the trigger; divert removed; the node stays out of service until `drain-agent undrain`",
                r.reason,
                r.drain_ms / 1000.0,
                r.abandoned,
                r.diverted_flows,
                r.unrecorded_syns,
                r.failover_ms,
            );
            Ok((record, summary))
        }
        Err(e) => Err(e.into()),
    }
}

/// Drain arguments from a control-socket request.
pub fn args_from_request(req: &Request) -> Result<DrainArgs, String> {
    let dur = |key: &str| -> Result<Option<PositiveDuration>, String> {
        match req.args.get(key) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(serde_json::Value::String(s)) => {
                positive(s).map(Some).map_err(|e| format!("{key}: {e}"))
            }
            Some(other) => Err(format!("{key}: expected a duration string, got {other}")),
        }
    };
    Ok(DrainArgs {
        abort_on_deadline: req
            .args
            .get("abort_on_deadline")
            .and_then(|v| v.as_bool())
            .unwrap_or(false),
        deadline: dur("deadline")?,
        idle_threshold: dur("idle_threshold")?,
    })
}
