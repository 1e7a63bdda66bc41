//! The composition root: the one place that builds the real [`Host`] out of the kernel adapters in
//! [`crate::sys`] and keepalived's track file ([`crate::keepalived`]). The CLI and the daemon get a
//! `Box<dyn Host>` from here and hand it to an operation in [`crate::ops`]; they never name an
//! adapter.

use std::sync::atomic::AtomicU32;
use std::sync::Arc;

use crate::config::Config;
use crate::journal::StateDir;
use crate::ops::{Host, HostError, OpError};

mod system_host;
pub use system_host::SystemHost;

/// The real host for `cfg`. Opens sockets but changes nothing. `interrupts` counts SIGINT/SIGTERM
/// so that a drain can stop cleanly.
pub fn host(cfg: &Config, interrupts: Arc<AtomicU32>) -> Result<Box<dyn Host>, HostError> {
    Ok(Box::new(SystemHost::new(cfg, interrupts)?))
}

/// The state directory and the real host for `cfg`, after checking the privileges every
/// operation that changes the host needs (so the error names the cause instead of a netlink
/// EPERM halfway through).
pub fn open(
    cfg: &Config,
    interrupts: Arc<AtomicU32>,
) -> Result<(StateDir, Box<dyn Host>), OpError> {
    if !crate::sys::privileges::has_net_admin() {
        return Err(OpError::Privileges);
    }
    let state = StateDir::open(cfg.state_dir.as_path())?;
    Ok((state, host(cfg, interrupts)?))
}
