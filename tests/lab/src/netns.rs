//! Running code inside a lab namespace. A socket belongs to the network namespace of the thread
//! that created it, so the closure runs on a fresh thread that has entered the namespace first;
//! the caller's thread never changes namespace.

use std::fs::File;

use anyhow::{anyhow, Context, Result};
use nix::sched::{setns, CloneFlags};

/// Runs `f` on a new thread inside network namespace `name` (/run/netns/NAME) and returns its result.
pub fn in_netns<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T> {
    let path = format!("/run/netns/{name}");
    let fd = File::open(&path).with_context(|| format!("opening {path}"))?;
    std::thread::spawn(move || -> Result<T> {
        setns(&fd, CloneFlags::CLONE_NEWNET).context("setns")?;
        Ok(f())
    })
    .join()
    .map_err(|_| anyhow!("thread in namespace {name} panicked"))?
}
