//! The client side of the control socket, for the CLI: send a request to the daemon when one
//! serves the socket, pass its events on as they come, and return its final answer.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use super::control::{call, ControlError, Outcome, Request};

/// How long connecting to the daemon may take before the CLI runs the request itself.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// How a forwarded request ended.
#[derive(Debug)]
pub enum Forwarded {
    /// The daemon answered.
    Done(Outcome),
    /// SIGINT/SIGTERM arrived: the connection was closed, which tells the daemon to roll a drain
    /// back.
    Interrupted,
}

/// Sends `req` to the daemon at `socket` and passes each event to `on_event`. `Ok(None)` when no
/// daemon serves the socket (the caller runs the request itself): no socket file, or a file a
/// killed daemon left that nobody answers on.
pub fn forward(
    socket: &Path,
    req: &Request,
    on_event: impl FnMut(&Value),
) -> Result<Option<Forwarded>, ControlError> {
    if !socket.exists() {
        return Ok(None);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| ControlError::Io {
            path: socket.to_path_buf(),
            source,
        })?;
    let res = rt.block_on(async {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        let term = async move {
            match term.as_mut() {
                Some(t) => {
                    t.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            r = call(socket, req, CONNECT_TIMEOUT, on_event) => Some(r),
            _ = tokio::signal::ctrl_c() => None,
            _ = term => None,
        }
    });
    match res {
        None => Ok(Some(Forwarded::Interrupted)),
        Some(Err(ControlError::Connect { .. }))
        | Some(Err(ControlError::ConnectTimeout { .. })) => Ok(None),
        Some(Err(e)) => Err(e),
        Some(Ok(o)) => Ok(Some(Forwarded::Done(o))),
    }
}
