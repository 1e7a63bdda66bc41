//! `drain-agent check`: validates the configuration and the environment and changes nothing.

use clap::Args;

use super::common::{self, load_config, Output};
use super::{Failure, GlobalOpts};
use crate::ops::check::{check, CheckOptions, CheckReport};

/// `drain-agent check --help` ends with these (see `cli::examples`).
pub(super) const EXAMPLES: &str = "\
# Everything, including a live SYN probe of the peer through the path a diverted packet takes
drain-agent check
# The peer is down for maintenance: check this node only
drain-agent check --no-peer
# Size the diverted-flow record for a peak of 3000 new connections/s instead of measuring
drain-agent check --rate 3000
# One JSON document with every check, for automation
drain-agent check --json";

/// Arguments of `check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Skip the peer probe (e.g. when the peer is known to be down for maintenance).
    #[arg(long)]
    pub no_peer: bool,
    /// New connections per second to plan the diverted-flow record for (default: the rate this
    /// node accepts connections at, measured over one second).
    #[arg(long, value_parser = rate)]
    pub rate: Option<f64>,
}

fn rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if r.is_finite() && r >= 0.0 => Ok(r),
        _ => Err(format!(
            "{s:?} is not a rate (new connections per second, >= 0)"
        )),
    }
}

/// Runs `check`.
pub fn run(g: &GlobalOpts, a: &CheckArgs) -> Result<(), Failure> {
    let cfg = load_config(g)?;
    let name = format!("{} is valid", g.config.display());
    let opts = CheckOptions {
        no_peer: a.no_peer,
        rate: a.rate,
    };
    let report = match crate::wiring::host(&cfg, common::no_interrupts()) {
        Ok(mut host) => check(&cfg, &g.config.display().to_string(), &opts, &mut *host),
        Err(e) => CheckReport::host_unavailable(name, &e.into()),
    };
    Output::new(g.json).result(&report, &report.text());
    match report.first_failure() {
        None => Ok(()),
        Some((code, message)) => Err(Failure {
            reported: true,
            ..Failure::new(code, message)
        }),
    }
}
