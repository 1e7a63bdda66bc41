//! `drain-agent undrain`: remove any divert left behind and bring the tracked interface back up.

use clap::Args;
use serde_json::json;

use super::common::{self, Output};
use super::{Failure, GlobalOpts};
use crate::drain as cycle;

/// Arguments of `undrain`.
#[derive(Debug, Args)]
pub struct UndrainArgs {
    /// Remove leftovers but leave the tracked interface as it is.
    #[arg(long)]
    pub keep_link_down: bool,
}

/// Runs `undrain`.
pub fn run(g: &GlobalOpts, a: &UndrainArgs) -> Result<(), Failure> {
    let cfg = common::load_config(g)?;
    let state = common::state_dir(&cfg)?;
    let _lock = state.lock()?;
    let mut journal = state.drain_journal()?;
    let mut host = common::system_host(&cfg, common::install_signal_handlers())?;
    let _span = tracing::info_span!("undrain").entered();
    let recorded: Vec<String> = journal
        .entries()
        .iter()
        .map(|e| format!("{:?}", e.change))
        .collect();
    let out = Output::new(g.json);
    cycle::undrain(
        &mut host,
        &mut journal,
        &common::plan(&cfg),
        &common::policy(&cfg),
        a.keep_link_down,
        &mut |e| out.event(&e),
    )?;
    out.result(
        &json!({"result": "undrained", "undone": recorded, "tracked_interface_up": !a.keep_link_down}),
        &format!(
            "undrained: {} recorded change(s) undone{}",
            recorded.len(),
            if a.keep_link_down { "" } else { "; tracked interface up" }
        ),
    );
    Ok(())
}
