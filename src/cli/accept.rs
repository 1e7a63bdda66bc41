//! `drain-agent accept` / `release`, run on the peer (see [`crate::ops::peer`]).

use clap::Args;
use serde::Serialize;

use super::common::{self, Output};
use super::{Failure, GlobalOpts};
use crate::ops::peer::{accept, release, Accepted};

/// `drain-agent accept --help` ends with these (see `cli::examples`).
pub(super) const ACCEPT_EXAMPLES: &str = "\
# On the peer, when keepalived's notify hook is not wired to the agent
drain-agent accept
drain-agent accept --json";

/// `drain-agent release --help` ends with these (see `cli::examples`).
pub(super) const RELEASE_EXAMPLES: &str = "\
# On the peer, once no drain needs it any more
drain-agent release";

/// Arguments of `accept`.
#[derive(Debug, Args)]
pub struct AcceptArgs {}

/// Arguments of `release`.
#[derive(Debug, Args)]
pub struct ReleaseArgs {}

/// `accept --json`.
#[derive(Serialize)]
#[serde(tag = "result", rename = "accepting")]
struct AcceptDoc {
    changes: Vec<Accepted>,
}

/// `release --json`.
#[derive(Serialize)]
#[serde(tag = "result", rename = "released")]
struct ReleaseDoc {
    undone: usize,
}

/// Runs `accept`.
pub fn run_accept(g: &GlobalOpts, _a: &AcceptArgs) -> Result<(), Failure> {
    let cfg = common::load_config(g)?;
    let (state, mut host) = crate::wiring::open(&cfg, common::no_interrupts())?;
    let _lock = state.lock()?;
    let _span = tracing::info_span!("accept").entered();
    let changes = accept(&cfg, &state, &mut *host)?;
    Output::new(g.json).result(
        &AcceptDoc { changes },
        &format!(
            "accepting diverted traffic for {} VIP(s)",
            cfg.vips.iter().count()
        ),
    );
    Ok(())
}

/// Runs `release`.
pub fn run_release(g: &GlobalOpts, _a: &ReleaseArgs) -> Result<(), Failure> {
    let cfg = common::load_config(g)?;
    let (state, mut host) = crate::wiring::open(&cfg, common::no_interrupts())?;
    let _lock = state.lock()?;
    let _span = tracing::info_span!("release").entered();
    let undone = release(&cfg, &state, &mut *host)?;
    Output::new(g.json).result(
        &ReleaseDoc { undone },
        &format!("released: {undone} change(s) undone"),
    );
    Ok(())
}
