//! The HTTP side: `GET /metrics` on the metrics address, connections capped and timed out.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::config::Config;
use crate::ops::status::Status;

use super::snapshot::{read_status, Snapshot, REFRESH_EVERY};
use super::{Metrics, CONTENT_TYPE};

/// How long a scraper may take to send its request: a scraper sends it at once, so an idle
/// connection is closed soon.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Metrics connections served at once; further ones are closed when accepted.
pub const MAX_CONNECTIONS: usize = 32;
/// How long `serve` backs off after a failed accept (EMFILE) instead of spinning.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Longest request accepted.
const MAX_REQUEST: usize = 8 * 1024;

/// Serves `GET /metrics` on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, cfg: Config, metrics: Arc<Metrics>) {
    let snapshot = Arc::new(Snapshot::new(REFRESH_EVERY, move || read_status(&cfg)));
    serve_with(listener, snapshot, metrics, MAX_CONNECTIONS).await;
}

/// [`serve`] with the snapshot and the connection cap given.
pub(super) async fn serve_with<F>(
    listener: TcpListener,
    snapshot: Arc<Snapshot<F>>,
    metrics: Arc<Metrics>,
    max_connections: usize,
) where
    F: Fn() -> Option<Status> + Send + Sync + 'static,
{
    let slots = Arc::new(tokio::sync::Semaphore::new(max_connections));
    loop {
        let (stream, from) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::debug!("metrics: accept failed: {e}");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        // Over the cap the connection is closed at once: its descriptor is given back now
        // instead of waiting in a queue, and the scrapes already served are not slowed.
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            drop(stream);
            continue;
        };
        let (snapshot, metrics) = (snapshot.clone(), metrics.clone());
        tokio::spawn(async move {
            if let Err(e) = serve_one(stream, &snapshot, metrics).await {
                tracing::debug!(%from, "metrics: {e}");
            }
            drop(slot);
        });
    }
}

async fn serve_one<F>(
    mut stream: TcpStream,
    snapshot: &Snapshot<F>,
    metrics: Arc<Metrics>,
) -> std::io::Result<()>
where
    F: Fn() -> Option<Status> + Send + Sync + 'static,
{
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    let head = tokio::time::timeout(REQUEST_TIMEOUT, async {
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < MAX_REQUEST {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&buf).into_owned())
    })
    .await
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no request"))??;
    let path = head.split_whitespace().nth(1).unwrap_or("");
    let (status_line, body, ctype) =
        if head.starts_with("GET ") && (path == "/metrics" || path.starts_with("/metrics?")) {
            let status = snapshot.get(metrics.generation()).await;
            ("200 OK", metrics.render(status), CONTENT_TYPE)
        } else if head.starts_with("GET ") && path == "/" {
            (
                "200 OK",
                "drain-agent: metrics at /metrics\n".to_string(),
                "text/plain; charset=utf-8",
            )
        } else {
            (
                "404 Not Found",
                "not found\n".to_string(),
                "text/plain; charset=utf-8",
            )
        };
    let response = format!(
        "HTTP/1.1 {status_line}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    // A scraper that does not read holds its slot no longer than one that does not send.
    tokio::time::timeout(REQUEST_TIMEOUT, async {
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await
    })
    .await
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "response not read"))?
}

/// Binds the metrics address.
pub async fn bind(addr: std::net::SocketAddrV4) -> std::io::Result<TcpListener> {
    TcpListener::bind(SocketAddr::V4(addr)).await
}
