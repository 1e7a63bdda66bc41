//! `drain-agent run`: the daemon (see [`crate::daemon`]).

use std::path::PathBuf;

use clap::Args;

use super::{common, Failure, GlobalOpts};
use crate::keepalived::DEFAULT_FIFO_PATH;

/// `drain-agent run --help` ends with these (see `cli::examples`).
pub(super) const EXAMPLES: &str = "\
# As the systemd unit drain-agent.service runs it
drain-agent run --config /etc/drain-agent/drain-agent.yaml
# keepalived's vrrp_notify_fifo elsewhere
drain-agent run --fifo /run/keepalived/vrrp-notify.fifo
# Serve the control socket only (keepalived calls `drain-agent notify` instead)
drain-agent run --no-fifo";

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
    let fifo = (!a.no_fifo).then(|| a.fifo.clone());
    crate::daemon::run(&cfg, g.socket.clone(), fifo)
        .map_err(|e| Failure::new(e.exit_code(), e.to_string()))
}
