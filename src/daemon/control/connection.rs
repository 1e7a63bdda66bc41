//! One client's connection, on its own task: who it is, its request, and the replies written
//! to it without ever waiting on it.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::mpsc;

use super::protocol::{read_line, Reply};
use super::{EventSink, Handler, Outcome, Peer, Request};
use crate::ops::exit;

/// Longest request line accepted; a real request is a few hundred bytes.
const MAX_REQUEST_BYTES: u64 = 64 * 1024;
/// How long a connected client may take to send its request, so an idle connection cannot pin a
/// task forever.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes of reply lines waiting for a client that does not read (it was suspended, or is stuck)
/// before further events are dropped. The final line is always kept.
const MAX_PENDING_BYTES: usize = 256 * 1024;
/// How long the final line may take to reach a client once the request is over: a client that
/// does not read must not keep its connection, or the daemon's shutdown, waiting.
const FINAL_WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Writes one reply line; false if the client is gone.
async fn send_line(stream: &mut (impl AsyncWriteExt + Unpin), reply: &Reply) -> bool {
    let line = reply.to_line();
    stream.write_all(line.as_bytes()).await.is_ok() && stream.flush().await.is_ok()
}

pub(super) async fn serve_connection(stream: UnixStream, handler: Arc<dyn Handler>) {
    let cred = match stream.peer_cred() {
        Ok(cred) => cred,
        Err(e) => {
            tracing::warn!(error = %e, "control connection without peer credentials; refused");
            return;
        }
    };
    let peer = Peer {
        pid: cred.pid(),
        uid: cred.uid(),
        gid: cred.gid(),
    };
    let (read_half, mut write_half) = stream.into_split();
    if peer.uid != 0 {
        tracing::warn!(
            uid = peer.uid,
            pid = peer.pid,
            "control connection from a non-root peer refused"
        );
        let refusal = Outcome::error(
            exit::ENVIRONMENT,
            format!(
                "permission denied: the drain-agent control socket serves root (uid 0) only; peer uid {} (pid {})",
                peer.uid,
                peer.pid.map_or("?".to_string(), |p| p.to_string())
            ),
        );
        send_line(&mut write_half, &Reply::Final(refusal)).await;
        return;
    }

    let mut reader = BufReader::new(read_half);
    let line = match tokio::time::timeout(
        REQUEST_TIMEOUT,
        read_line(&mut reader, MAX_REQUEST_BYTES),
    )
    .await
    {
        Ok(Ok(Some(line))) => line,
        Ok(Ok(None)) => return,
        Ok(Err(e)) => {
            let o = Outcome::error(exit::USAGE, format!("invalid request: {e}"));
            send_line(&mut write_half, &Reply::Final(o)).await;
            return;
        }
        Err(_) => {
            let o = Outcome::error(
                exit::USAGE,
                format!("no request within {REQUEST_TIMEOUT:?}"),
            );
            send_line(&mut write_half, &Reply::Final(o)).await;
            return;
        }
    };
    let request: Request = match serde_json::from_str(&line) {
        Ok(r) => r,
        Err(e) => {
            let o = Outcome::error(exit::USAGE, format!("invalid request: {e}"));
            send_line(&mut write_half, &Reply::Final(o)).await;
            return;
        }
    };
    let op = request.op();
    tracing::info!(op, pid = peer.pid, "control request");

    let (sink, rx) = EventSink::new();
    let dropped = sink.dropped.clone();
    let job = tokio::task::spawn_blocking(move || handler.handle(request, peer, &sink));
    let (outcome, mut forwarded) = forward(&mut write_half, rx, job, op, FINAL_WRITE_TIMEOUT).await;
    forwarded.dropped += dropped.load(std::sync::atomic::Ordering::Relaxed);
    if forwarded.dropped > 0 {
        tracing::warn!(
            op,
            dropped = forwarded.dropped,
            "control client did not read: events dropped"
        );
    }
    if !forwarded.final_sent {
        // Nobody reads the result now: the log is the only place it is seen.
        match outcome.result.get("error").and_then(Value::as_str) {
            Some(error) => tracing::warn!(
                op,
                exit_code = outcome.exit_code,
                error,
                "control request failed after its client disconnected or stopped reading"
            ),
            None => tracing::info!(
                op,
                exit_code = outcome.exit_code,
                "control request finished after its client disconnected or stopped reading"
            ),
        }
    }
}

/// How the replies of one request reached (or did not reach) the client.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Forwarded {
    /// Events dropped because the client did not read.
    pub(super) dropped: u64,
    /// The final line was written completely.
    pub(super) final_sent: bool,
}

/// Forwards the handler's events to the client while `job` runs, then its final line.
///
/// Writing never waits on the client while the request runs: lines go into a buffer of at most
/// [`MAX_PENDING_BYTES`] that is written as the client reads, and events that do not fit are
/// dropped. A write error means the client has gone: the event queue is closed so the handler's
/// next send reports it. The final line is always queued, and gets `final_timeout` to be
/// written, so a client that stopped reading holds neither this task nor the daemon's shutdown.
pub(super) async fn forward<W: AsyncWriteExt + Unpin>(
    out: &mut W,
    mut rx: mpsc::Receiver<Value>,
    mut job: tokio::task::JoinHandle<Outcome>,
    op: &str,
    final_timeout: Duration,
) -> (Outcome, Forwarded) {
    let mut pending: Vec<u8> = Vec::new();
    let mut report = Forwarded::default();
    let mut client_gone = false;
    let mut events_open = true;
    fn queue(pending: &mut Vec<u8>, report: &mut Forwarded, event: Value) {
        let line = Reply::Event(event).to_line();
        if pending.len() + line.len() <= MAX_PENDING_BYTES {
            pending.extend_from_slice(line.as_bytes());
        } else {
            report.dropped += 1;
        }
    }
    // The end is the handler's return, not the channel's closing: a handler may keep a clone of
    // the sink alive.
    let done = loop {
        tokio::select! {
            // Events first, so none queued before the handler returned is overtaken by the end.
            biased;
            event = rx.recv(), if events_open => match event {
                Some(event) if !client_gone => queue(&mut pending, &mut report, event),
                Some(_) => {}
                None => events_open = false,
            },
            // `write` is cancel-safe: when another branch wins, nothing was written.
            written = out.write(&pending), if !pending.is_empty() && !client_gone => match written {
                Ok(n) if n > 0 => { pending.drain(..n); }
                _ => {
                    client_gone = true;
                    pending.clear();
                    // Further sends fail fast (the sink reports the client gone) instead of
                    // queueing for nobody.
                    rx.close();
                }
            },
            done = &mut job => break done,
        }
    };
    let outcome = done.unwrap_or_else(|e| {
        tracing::error!(op, error = %e, "control request handler failed");
        Outcome::error(
            exit::INTERNAL,
            format!("internal error: the {op} handler failed"),
        )
    });
    if client_gone {
        return (outcome, report);
    }
    while let Ok(event) = rx.try_recv() {
        queue(&mut pending, &mut report, event);
    }
    pending.extend_from_slice(Reply::Final(outcome.clone()).to_line().as_bytes());
    let flushed = tokio::time::timeout(final_timeout, async {
        out.write_all(&pending).await?;
        out.flush().await
    })
    .await;
    report.final_sent = matches!(flushed, Ok(Ok(())));
    (outcome, report)
}
