//! `drain-agent drain`: the whole cycle in the foreground.

use clap::Args;

use super::common::{self, Output};
use super::{Failure, GlobalOpts};
use crate::config::{DrainMode, PositiveDuration};
use crate::daemon::control::Request;
use crate::ops::drain::{self, DrainOptions, DrainOutcome};

/// `drain-agent drain --help` ends with these (see `cli::examples`).
pub(super) const EXAMPLES: &str = "\
# Drain with the configured deadline, showing progress; returns when the peer owns the VIP
drain-agent drain
# At most 90 s for this node's connections; roll back instead of failing over if any remain
drain-agent drain --deadline 90s --abort-on-deadline
# Clients silent for 10 s do not hold the drain
drain-agent drain --idle-threshold 10s
# JSON lines for automation: one per event, then the result; the exit code says what happened
drain-agent drain --json
# In this process, even if the daemon serves the control socket
drain-agent drain --local
# Hand off: fail over at once, the peer returns this node's connections until they end
drain-agent drain --handoff";

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
    /// Hand off instead of waiting: fail over at once, and the peer returns this node's
    /// connections to it until they end (needs `handoff:` in the config and `drain-agent run` on
    /// the peer). Overrides `drain.mode`.
    #[arg(long, conflicts_with = "no_handoff")]
    pub handoff: bool,
    /// Wait for this node's connections, then fail over, even if `drain.mode` is `handoff`.
    #[arg(long)]
    pub no_handoff: bool,
}

fn positive(s: &str) -> Result<PositiveDuration, String> {
    PositiveDuration::try_from(s.to_string()).map_err(|e| e.to_string())
}

impl DrainArgs {
    /// The overrides these arguments ask for.
    pub fn options(&self) -> DrainOptions {
        let a = self;
        DrainOptions {
            abort_on_deadline: a.abort_on_deadline,
            deadline: a.deadline,
            idle_threshold: a.idle_threshold,
            mode: if a.handoff {
                Some(DrainMode::Handoff)
            } else if a.no_handoff {
                Some(DrainMode::Drain)
            } else {
                None
            },
        }
    }
}

/// Runs `drain`: through the daemon when one serves the control socket, else here.
pub fn run(g: &GlobalOpts, a: &DrainArgs) -> Result<(), Failure> {
    let opts = a.options();
    if let Some(done) = common::forward(g, &Request::Drain(opts.clone()))? {
        return done;
    }
    let cfg = common::load_config(g)?;
    let (state, mut host) = crate::wiring::open(&cfg, common::install_signal_handlers())?;
    let out = Output::live(g.json);
    let report = drain::run(&cfg, &opts, &state, &mut *host, &mut |e| out.event(&e))?;
    let summary = report.summary();
    out.result(&DrainOutcome::Drained { report }, &summary);
    Ok(())
}
