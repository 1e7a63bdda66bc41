//! `drain-agent undrain`: remove any divert left behind and bring the tracked interface back up.

use clap::Args;

use super::common::{self, Output};
use super::{Failure, GlobalOpts};
use crate::daemon::control::Request;
use crate::ops::undrain::{self, UndrainOptions};

/// `drain-agent undrain --help` ends with these (see `cli::examples`).
pub(super) const EXAMPLES: &str = "\
# After maintenance: remove what is left and rejoin VRRP (as BACKUP with nopreempt)
drain-agent undrain
# After a crash: remove the divert but keep the node out of VRRP
drain-agent undrain --keep-link-down";

/// Arguments of `undrain`.
#[derive(Debug, Args)]
pub struct UndrainArgs {
    /// Remove leftovers but leave the tracked interface as it is.
    #[arg(long)]
    pub keep_link_down: bool,
}

/// Runs `undrain`: through the daemon when one serves the control socket, else here.
pub fn run(g: &GlobalOpts, a: &UndrainArgs) -> Result<(), Failure> {
    let opts = UndrainOptions {
        keep_link_down: a.keep_link_down,
    };
    if let Some(done) = common::forward(g, &Request::Undrain(opts.clone()))? {
        return done;
    }
    let cfg = common::load_config(g)?;
    let (state, mut host) = crate::wiring::open(&cfg, common::install_signal_handlers())?;
    let out = Output::live(g.json);
    let done = undrain::run(&cfg, &opts, &state, &mut *host, &mut |e| out.event(&e))?;
    out.result(&done, &done.summary());
    Ok(())
}
