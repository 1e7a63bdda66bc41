//! `drain-agent drain`: the whole cycle in the foreground.

use clap::Args;
use serde_json::json;

use super::common::{self, Output};
use super::{Failure, GlobalOpts};
use crate::config::PositiveDuration;
use crate::drain::{self as cycle, DrainError};

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

/// Runs `drain`.
pub fn run(g: &GlobalOpts, a: &DrainArgs) -> Result<(), Failure> {
    let mut cfg = common::load_config(g)?;
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
    let interrupts = common::install_signal_handlers();
    let mut host = common::system_host(&cfg, interrupts)?;
    let plan = common::plan(&cfg);
    let policy = common::policy(&cfg);
    let out = Output::new(g.json);
    let span = tracing::info_span!("drain", peer = %cfg.peer.get(), tracked = %cfg.tracked_interface.as_str());
    let _enter = span.enter();
    let result = cycle::drain(&mut host, &mut journal, &plan, &policy, &mut |e| {
        out.event(&e)
    });
    let record = match &result {
        Ok(r) => json!({"result": "drained", "report": r}),
        Err(e) => json!({"result": "failed", "exit_code": e.exit_code(), "error": e.to_string()}),
    };
    let _ = crate::journal::write_atomic(
        &state.last_run_path(),
        serde_json::to_string_pretty(&record)
            .unwrap_or_default()
            .as_bytes(),
    );
    match result {
        Ok(r) => {
            out.result(&record, &format!(
                "drained: {:?} after {:.1} s ({} left), peer owned the VIP {:.0} ms after the trigger; divert removed; {} stays down until `drain-agent undrain`",
                r.reason,
                r.drain_ms / 1000.0,
                r.abandoned,
                r.failover_ms,
                cfg.tracked_interface.as_str()
            ));
            Ok(())
        }
        Err(e @ DrainError::Host(_)) | Err(e) => {
            if g.json {
                out.result(&record, "");
            }
            Err(e.into())
        }
    }
}
