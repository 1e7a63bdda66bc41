//! The progress events of a request on their way from the handler to its client.

use std::sync::Arc;

use serde_json::Value;
use tokio::sync::mpsc;

/// Events a handler may have queued for its connection before further ones are dropped: the
/// handler never waits for a client (see [`EventSink`]).
const EVENT_QUEUE: usize = 256;

/// Where a [`Handler`](super::Handler) sends progress events; each goes to the client as one
/// line, immediately.
///
/// Sending never blocks, whatever the client does: a drain must not stall because the terminal
/// that started it was suspended. The queue is bounded: when a client does not read, the events
/// it misses are dropped (and counted in the log), never the final line.
#[derive(Debug, Clone)]
pub struct EventSink {
    tx: mpsc::Sender<Value>,
    /// Events dropped because the queue was full.
    pub(super) dropped: Arc<std::sync::atomic::AtomicU64>,
}

impl EventSink {
    /// A sink and the receiving end of its bounded queue.
    pub(super) fn new() -> (EventSink, mpsc::Receiver<Value>) {
        let (tx, rx) = mpsc::channel(EVENT_QUEUE);
        let sink = EventSink {
            tx,
            dropped: Arc::default(),
        };
        (sink, rx)
    }

    /// Queues an event for the client; false once the client has gone (the request itself goes
    /// on: whether to stop is the handler's decision). A full queue drops the event and still
    /// answers true: a client that is slow has not gone.
    pub fn send(&self, event: Value) -> bool {
        match self.tx.try_send(event) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.dropped
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                true
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// False once the client has disconnected (detected when a write to it fails).
    pub fn client_connected(&self) -> bool {
        !self.tx.is_closed()
    }
}
