//! `drain-agent maintenance on|off|status`: take the node out of service on purpose, for a reason,
//! until an operator brings it back (see [`crate::ops::maintenance`]).

use clap::{Args, Subcommand};

use super::common::{self, Output};
use super::drain::DrainArgs;
use super::{Failure, GlobalOpts};
use crate::daemon::control::{MaintenanceOffRequest, MaintenanceRequest, Request};
use crate::ops::maintenance;
use crate::ops::undrain::UndrainOptions;

pub(super) const EXAMPLES: &str = "\
# Drain and hold the node out of service; who, when and why are recorded and shown
drain-agent maintenance on --reason \"kernel upgrade, CHG-4711\"
# The same with a hand-off (long-lived connections end here on their own)
drain-agent maintenance on --reason \"disk swap\" --handoff
# Who put the node in maintenance, when, why, and what it is doing now
drain-agent maintenance status
# Bring the node back (refused while a drain runs)
drain-agent maintenance off
# ... and move the VIPs back here: the peer drains itself and returns as BACKUP
drain-agent maintenance off --failback";

/// Arguments of `maintenance`.
#[derive(Debug, Args)]
pub struct MaintenanceArgs {
    #[command(subcommand)]
    what: What,
}

#[derive(Debug, Subcommand)]
enum What {
    /// Drain the node (or hand it off) and hold it out of service, recording who, when and why.
    On(OnArgs),
    /// Bring the node back: undrain it and clear the record. Refused while a drain runs.
    Off(OffArgs),
    /// Whether the node is in maintenance, since when, by whom and why (as `status` shows it).
    Status,
}

#[derive(Debug, Args)]
struct OnArgs {
    /// Why the node goes out of service (shown by `status` and in the metrics).
    #[arg(long)]
    reason: String,
    #[command(flatten)]
    drain: DrainArgs,
}

#[derive(Debug, Args)]
struct OffArgs {
    /// Leave the tracked interface down (remove leftovers only).
    #[arg(long, conflicts_with = "failback")]
    keep_link_down: bool,
    /// Then move the VIPs back here without breaking a connection: the peer's agent drains its
    /// node (the way its drain.mode says) and brings it back as BACKUP. Needs the peer link
    /// (handoff: section, `drain-agent run` on the peer).
    #[arg(long)]
    failback: bool,
}

/// Who runs this: the user behind sudo, else the login user, else the uid.
fn who() -> String {
    std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        .unwrap_or_else(|_| format!("uid {}", nix::unistd::getuid()))
}

/// Runs `maintenance`.
pub fn run(g: &GlobalOpts, a: &MaintenanceArgs) -> Result<(), Failure> {
    match &a.what {
        What::On(on) => {
            let req = MaintenanceRequest {
                reason: on.reason.clone(),
                by: who(),
                drain: on.drain.options(),
            };
            if let Some(done) = common::forward(g, &Request::MaintenanceOn(req.clone()))? {
                return done;
            }
            let cfg = common::load_config(g)?;
            let (state, mut host) = crate::wiring::open(&cfg, common::install_signal_handlers())?;
            let out = Output::live(g.json);
            let req = MaintenanceRequest {
                by: format!("{} (local)", req.by),
                ..req
            };
            let done = maintenance::on(&cfg, &state, &mut *host, &req, &mut |e| out.event(&e))?;
            out.result(&done, &done.summary());
            Ok(())
        }
        What::Off(off) => {
            let req = MaintenanceOffRequest {
                undrain: UndrainOptions {
                    keep_link_down: off.keep_link_down,
                },
                failback: off.failback,
            };
            if let Some(done) = common::forward(g, &Request::MaintenanceOff(req.clone()))? {
                return done;
            }
            let cfg = common::load_config(g)?;
            let (state, mut host) = crate::wiring::open(&cfg, common::install_signal_handlers())?;
            let out = Output::live(g.json);
            let done = maintenance::off(&cfg, &state, &mut *host, &req, &mut |e| out.event(&e))?;
            out.result(&done, &done.summary());
            Ok(())
        }
        What::Status => super::status::run(g, &super::status::StatusArgs {}),
    }
}
