//! `drain-agent undrain`: remove any divert left behind and bring the tracked interface back up.

use clap::Args;
use serde_json::json;

use super::common::{self, Output};
use super::{Failure, GlobalOpts};
use crate::drain::{self as cycle, Host};
use crate::journal::Change;

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
    let mut host = common::system_host(&cfg, common::no_interrupts())?;
    let _span = tracing::info_span!("undrain").entered();
    let recorded: Vec<String> = journal
        .entries()
        .iter()
        .map(|e| format!("{:?}", e.change))
        .collect();
    // Whatever the journal says, make sure no chain of ours survives (a journal can be lost with
    // the disk; the prefix is ours alone).
    let plan = common::plan(&cfg);
    if journal
        .entries()
        .iter()
        .all(|e| !matches!(e.change, Change::Divert { .. }))
    {
        journal.record(Change::Divert {
            prefix: plan.prefix().to_string(),
            drop_mangle_table: false,
        })?;
    }
    if a.keep_link_down {
        cycle::cleanup(&mut host, &mut journal, &plan)?;
    } else {
        cycle::undo_all(&mut host, &mut journal, &plan)?;
        // For non-preempting setups too: the operator asked for the node back in service.
        let ifname = cfg.tracked_interface.as_str();
        if !host.link_up(ifname)? {
            host.set_link(ifname, true)?;
        }
    }
    let out = Output::new(g.json);
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
