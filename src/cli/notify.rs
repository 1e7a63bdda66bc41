//! `drain-agent notify TYPE NAME STATE [PRIORITY]`: keepalived's `notify` hook (see
//! [`crate::ops::notify`] for what each state does).

use clap::Args;
use serde::Serialize;

use super::common::{self, Output};
use super::{Failure, GlobalOpts};
use crate::keepalived::NotifyArgs;
use crate::ops::exit;
use crate::ops::notify::Notified;

/// `drain-agent notify --help` ends with these (see `cli::examples`).
pub(super) const EXAMPLES: &str = "\
# keepalived.conf, in the vrrp_instance: notify \"/usr/sbin/drain-agent notify\"
# keepalived then runs, when this node becomes BACKUP:
drain-agent notify INSTANCE VI_1 BACKUP 100
# and when it becomes MASTER (a group's priority is always 0):
drain-agent notify GROUP VG_1 MASTER 0";

/// Arguments of `notify` (keepalived appends them to the configured command).
#[derive(Debug, Args)]
pub struct NotifyCliArgs {
    /// TYPE NAME STATE [PRIORITY], e.g. `INSTANCE VI_1 MASTER 150`.
    #[arg(num_args = 0.., allow_hyphen_values = true, trailing_var_arg = true)]
    pub args: Vec<String>,
}

/// `notify --json`.
#[derive(Serialize)]
#[serde(tag = "result", rename = "notified")]
struct NotifyDoc {
    #[serde(flatten)]
    done: Notified,
}

/// Runs `notify`.
pub fn run(g: &GlobalOpts, a: &NotifyCliArgs) -> Result<(), Failure> {
    let n = NotifyArgs::parse(&a.args).map_err(|e| Failure::new(exit::USAGE, e.to_string()))?;
    let cfg = common::load_config(g)?;
    let done = crate::daemon::notify(&cfg, &n)?;
    let text = done.summary();
    Output::new(g.json).result(&NotifyDoc { done }, &text);
    Ok(())
}
