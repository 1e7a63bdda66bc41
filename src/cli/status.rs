//! `drain-agent status`: what the agent has changed on this node.

use clap::Args;

use super::common::{self, Output};
use super::{Failure, GlobalOpts};
use crate::daemon::control::Request;

/// `drain-agent status --help` ends with these (see `cli::examples`).
pub(super) const EXAMPLES: &str = "\
drain-agent status
# The same as one JSON document (mode, VIPs held, divert, journals, last drain)
drain-agent status --json
# Read the host directly, not through the daemon
drain-agent status --local";

/// Arguments of `status`.
#[derive(Debug, Args)]
pub struct StatusArgs {}

/// Runs `status`: through the daemon when one serves the control socket, else here.
pub fn run(g: &GlobalOpts, _a: &StatusArgs) -> Result<(), Failure> {
    if let Some(done) = common::forward(g, &Request::Status)? {
        return done;
    }
    let cfg = common::load_config(g)?;
    let (state, mut host) = crate::wiring::open(&cfg, common::no_interrupts())?;
    let status = crate::ops::status::status(&cfg, &state, &mut *host)?;
    Output::new(g.json).result(&status, &status.text());
    Ok(())
}
