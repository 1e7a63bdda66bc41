//! `drain-agent undrain`: remove any divert left behind and bring the tracked interface back up.

use std::sync::atomic::AtomicU32;
use std::sync::Arc;

use clap::Args;
use serde_json::json;

use super::common::{self, Output};
use super::{Failure, GlobalOpts};
use crate::config::Config;
use crate::control::{Op, Request};
use crate::ops::{self as cycle, Event};

/// Arguments of `undrain`.
#[derive(Debug, Args)]
pub struct UndrainArgs {
    /// Remove leftovers but leave the tracked interface as it is.
    #[arg(long)]
    pub keep_link_down: bool,
}

/// Runs `undrain`: through the daemon when one serves the control socket, else here.
pub fn run(g: &GlobalOpts, a: &UndrainArgs) -> Result<(), Failure> {
    let req = Request::new(Op::Undrain).with_arg("keep_link_down", a.keep_link_down);
    if let Some(done) = common::forward(g, &req)? {
        return done;
    }
    let cfg = common::load_config(g)?;
    let out = Output::new(g.json);
    let (doc, summary) = execute(
        &cfg,
        a.keep_link_down,
        common::install_signal_handlers(),
        &mut |e| out.event(e),
    )?;
    out.result(&doc, &summary);
    Ok(())
}

/// The undrain itself, for the CLI and the daemon.
pub fn execute(
    cfg: &Config,
    keep_link_down: bool,
    interrupts: Arc<AtomicU32>,
    emit: &mut dyn FnMut(&Event),
) -> Result<(serde_json::Value, String), Failure> {
    let state = common::state_dir(cfg)?;
    let _lock = state.lock()?;
    let mut journal = state.drain_journal()?;
    let mut host = common::system_host(cfg, interrupts)?;
    let _span = tracing::info_span!("undrain").entered();
    let recorded: Vec<String> = journal
        .entries()
        .iter()
        .map(|e| format!("{:?}", e.change))
        .collect();
    cycle::undrain(
        &mut host,
        &mut journal,
        &common::plan(cfg),
        &common::policy(cfg),
        keep_link_down,
        &mut |e| emit(&e),
    )?;
    Ok((
        json!({"result": "undrained", "undone": recorded, "tracked_interface_up": !keep_link_down}),
        format!(
            "undrained: {} recorded change(s) undone{}",
            recorded.len(),
            if keep_link_down {
                ""
            } else {
                "; back in service"
            }
        ),
    ))
}
