//! The CLI's side: one request to the daemon, its events and its final line.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use super::protocol::{read_line, Reply};
use super::{ControlError, Outcome, Request};

/// Longest reply line a client accepts.
pub(super) const MAX_REPLY_BYTES: u64 = 1024 * 1024;

/// Sends `request` to the daemon at `path` and waits for its final line, passing every event to
/// `on_event` as it arrives. Only the connect is bounded by `connect_timeout`: a drain may run
/// for minutes; wrap the call in a timeout to bound it.
pub async fn call(
    path: impl AsRef<Path>,
    request: &Request,
    connect_timeout: Duration,
    mut on_event: impl FnMut(&Value),
) -> Result<Outcome, ControlError> {
    let path = path.as_ref().to_path_buf();
    let stream = match tokio::time::timeout(connect_timeout, UnixStream::connect(&path)).await {
        Ok(Ok(s)) => s,
        Ok(Err(source)) => return Err(ControlError::Connect { path, source }),
        Err(_) => {
            return Err(ControlError::ConnectTimeout {
                path,
                after: connect_timeout,
            })
        }
    };
    let io_err = |source| ControlError::Io {
        path: path.clone(),
        source,
    };
    let (read_half, mut write_half) = stream.into_split();
    let mut line = serde_json::to_string(request).map_err(|e| io_err(e.into()))?;
    line.push('\n');
    let sent = write_half.write_all(line.as_bytes()).await;
    let mut reader = BufReader::new(read_half);
    if let Err(e) = sent {
        // The daemon may have answered and closed before reading the request (a refusal:
        // too many connections, or not root): that answer says more than the broken pipe.
        return match read_line(&mut reader, MAX_REPLY_BYTES).await {
            Ok(Some(line)) => match Reply::parse(&line) {
                Ok(Reply::Final(outcome)) => Ok(outcome),
                _ => Err(io_err(e)),
            },
            _ => Err(io_err(e)),
        };
    }
    loop {
        let Some(line) = read_line(&mut reader, MAX_REPLY_BYTES)
            .await
            .map_err(io_err)?
        else {
            return Err(ControlError::Closed { path });
        };
        match Reply::parse(&line) {
            Ok(Reply::Event(event)) => on_event(&event),
            Ok(Reply::Final(outcome)) => return Ok(outcome),
            Err(reason) => return Err(ControlError::Protocol { path, reason }),
        }
    }
}
