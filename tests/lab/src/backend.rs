//! The lab's backend server: a minimal HTTP/1.1 server and a TCP echo server.
//!
//! HAProxy on each load balancer forwards the VIP's port 80 to [`Backend`]'s HTTP listener and port 7
//! to its echo listener. Every body byte is predictable ([`pattern_byte`]), so the load generator
//! can tell a complete, correct response from a truncated or corrupted one.
//!
//! The HTTP side is hand-rolled on purpose: it needs exactly three routes, keep-alive and
//! `Connection: close`, and a parser small enough that every byte it accepts is accounted for.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinSet;
use tokio::time::Instant;

/// The 36 bytes that every HTTP body repeats: byte `i` of a body is `PATTERN[i % 36]`.
pub const PATTERN: &[u8; 36] = b"abcdefghijklmnopqrstuvwxyz0123456789";

/// Length of the `GET /fast` body.
pub const FAST_BODY_LEN: u64 = 64;

/// Listen backlog. The kernel caps it at `net.core.somaxconn` (4096 on current kernels); a burst
/// of new connections after a VRRP switch must queue, not be dropped (a dropped SYN costs the
/// client a 1 s retransmit, which the lab would misread as the drain's fault).
pub const LISTEN_BACKLOG: u32 = 4096;

/// Largest request head (request line + headers) accepted before answering 400.
const MAX_HEAD_BYTES: usize = 8192;

/// Largest `/slow` body and duration accepted, so a typo cannot make the backend stream for days.
const MAX_SLOW_BYTES: u64 = 1 << 30;
const MAX_SLOW_MS: u64 = 3_600_000;

/// Number of pieces a `/slow` body is streamed in.
const SLOW_CHUNKS: u64 = 10;

/// How long a connection the server closes keeps being read (and discarded) after our FIN: closing
/// a socket with unread input makes the kernel send RST instead of FIN, and the RST can destroy the
/// response still in flight to the client.
const LINGER_DRAIN: Duration = Duration::from_secs(2);

/// Byte `offset` of every HTTP body the backend sends.
pub fn pattern_byte(offset: u64) -> u8 {
    PATTERN[(offset % PATTERN.len() as u64) as usize]
}

/// Fills `buf` with the body bytes starting at body offset `offset`.
pub fn fill_pattern(offset: u64, buf: &mut [u8]) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b = pattern_byte(offset + i as u64);
    }
}

/// Index in `data` of the first byte that differs from the body pattern, `data` starting at body
/// offset `offset`; `None` when every byte is right.
pub fn pattern_mismatch(offset: u64, data: &[u8]) -> Option<usize> {
    data.iter()
        .enumerate()
        .position(|(i, &b)| b != pattern_byte(offset + i as u64))
}

/// Errors of the backend server.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// Creating or configuring a listening socket failed.
    #[error("cannot set up the {role} listener on {addr}: {source}")]
    Listen {
        /// Which listener ("http" or "echo").
        role: &'static str,
        /// The address it was to listen on.
        addr: SocketAddr,
        /// The underlying error.
        source: io::Error,
    },
    /// Installing the SIGTERM handler failed.
    #[error("cannot install the SIGTERM handler: {0}")]
    Signal(#[source] io::Error),
    /// The backend was asked to serve nothing.
    #[error("no listener configured: give --http and/or --echo")]
    NothingToServe,
    /// Writing the `--ready-file` failed.
    #[error("cannot write the ready file {path}: {source}")]
    ReadyFile {
        /// The file that could not be written.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
}

/// Arguments of `drain-lab backend`.
#[derive(Debug, Clone, clap::Args)]
pub struct BackendArgs {
    /// Address of the HTTP listener (routes /fast, /slow?ms=M&bytes=N, /health).
    #[arg(long)]
    pub http: Option<SocketAddr>,
    /// Address of the TCP echo listener.
    #[arg(long)]
    pub echo: Option<SocketAddr>,
    /// Write "http=ADDR echo=ADDR" to this file once both listeners are bound, so a lab script
    /// knows when to start sending traffic (and learns the ports when it asked for port 0).
    #[arg(long)]
    pub ready_file: Option<PathBuf>,
}

impl BackendArgs {
    /// Binds the listeners and serves until SIGTERM or SIGINT.
    pub async fn run(self) -> Result<(), BackendError> {
        if self.http.is_none() && self.echo.is_none() {
            return Err(BackendError::NothingToServe);
        }
        let backend = Backend::bind(self.http, self.echo)?;
        let ready = format!(
            "http={} echo={}",
            opt_addr(backend.http_addr()),
            opt_addr(backend.echo_addr())
        );
        eprintln!("drain-lab backend: serving {ready}");
        if let Some(path) = &self.ready_file {
            std::fs::write(path, format!("{ready}\n")).map_err(|source| {
                BackendError::ReadyFile {
                    path: path.clone(),
                    source,
                }
            })?;
        }
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(BackendError::Signal)?;
        backend
            .serve_until(async move {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            })
            .await;
        eprintln!("drain-lab backend: signal received, exiting");
        Ok(())
    }
}

fn opt_addr(addr: Option<SocketAddr>) -> String {
    addr.map_or_else(|| "-".to_string(), |a| a.to_string())
}

/// A bound (not yet serving) backend: an optional HTTP listener and an optional echo listener.
#[derive(Debug)]
pub struct Backend {
    http: Option<TcpListener>,
    echo: Option<TcpListener>,
}

impl Backend {
    /// Binds the listeners (port 0 picks an ephemeral port; see [`Backend::http_addr`]).
    /// Must be called inside a tokio runtime.
    pub fn bind(http: Option<SocketAddr>, echo: Option<SocketAddr>) -> Result<Self, BackendError> {
        Ok(Self {
            http: http.map(|a| listen("http", a)).transpose()?,
            echo: echo.map(|a| listen("echo", a)).transpose()?,
        })
    }

    /// The address the HTTP listener is bound to.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The address the echo listener is bound to.
    pub fn echo_addr(&self) -> Option<SocketAddr> {
        self.echo.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Serves both listeners until `shutdown` completes, then stops accepting and drops every open
    /// connection.
    pub async fn serve_until<F: Future<Output = ()>>(self, shutdown: F) {
        let mut conns = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            // Reap finished connection tasks so the set does not grow with every connection.
            while conns.try_join_next().is_some() {}
            tokio::select! {
                () = &mut shutdown => break,
                res = accept(self.http.as_ref()) => {
                    if let Some(stream) = res {
                        conns.spawn(serve_http(stream));
                    }
                }
                res = accept(self.echo.as_ref()) => {
                    if let Some(stream) = res {
                        conns.spawn(serve_echo(stream));
                    }
                }
            }
        }
        conns.abort_all();
        while conns.join_next().await.is_some() {}
    }
}

/// Creates a listener with SO_REUSEADDR (a restarted backend must rebind while old connections
/// sit in TIME_WAIT) and the big backlog.
fn listen(role: &'static str, addr: SocketAddr) -> Result<TcpListener, BackendError> {
    let err = |source| BackendError::Listen { role, addr, source };
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(err)?;
    socket.set_reuseaddr(true).map_err(err)?;
    socket.bind(addr).map_err(err)?;
    socket.listen(LISTEN_BACKLOG).map_err(err)
}

/// Accepts one connection; `None` on a transient error. Never returns for an absent listener.
async fn accept(listener: Option<&TcpListener>) -> Option<TcpStream> {
    let Some(listener) = listener else {
        return std::future::pending().await;
    };
    match listener.accept().await {
        Ok((stream, _)) => {
            // Responses and echoes are written in one piece; Nagle would only add delay.
            let _ = stream.set_nodelay(true);
            Some(stream)
        }
        Err(e) => {
            // EMFILE/ENFILE/ENOBUFS: back off instead of spinning; the connection stays queued
            // in the backlog and is accepted once descriptors are free again.
            eprintln!("drain-lab backend: accept failed: {e}");
            tokio::time::sleep(Duration::from_millis(10)).await;
            None
        }
    }
}

/// Echo: copies everything back until the client's FIN, then sends our FIN and closes.
async fn serve_echo(mut stream: TcpStream) {
    let (mut rd, mut wr) = stream.split();
    if tokio::io::copy(&mut rd, &mut wr).await.is_ok() {
        let _ = wr.shutdown().await;
    }
}

/// What a parsed request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Route {
    Fast,
    Slow { ms: u64, bytes: u64 },
    Health,
    NotFound,
}

/// A parsed request head.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Request {
    route: Route,
    /// Whether the connection stays open after the response.
    keep_alive: bool,
}

/// Why a request head was rejected with 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum RequestError {
    #[error("request head is not UTF-8")]
    NotUtf8,
    #[error("malformed request line {0:?}")]
    RequestLine(String),
    #[error("unsupported protocol version {0:?}")]
    Version(String),
    #[error("malformed header line {0:?}")]
    Header(String),
    #[error("request bodies are not supported ({0})")]
    Body(String),
    #[error("bad query parameter {0:?}")]
    Query(String),
    #[error("request head longer than {MAX_HEAD_BYTES} bytes")]
    TooLong,
}

/// Position just past the CRLFCRLF that ends a request head, if the buffer holds one.
fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

/// Parses a request head (everything up to and including the blank line).
fn parse_request(head: &[u8]) -> Result<Request, RequestError> {
    let text = std::str::from_utf8(head).map_err(|_| RequestError::NotUtf8)?;
    let mut lines = text.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(RequestError::RequestLine(request_line.to_string()));
    };
    if method.is_empty() || !target.starts_with('/') {
        return Err(RequestError::RequestLine(request_line.to_string()));
    }
    // HTTP/1.1 is persistent unless told otherwise; HTTP/1.0 only when asked for.
    let mut keep_alive = match version {
        "HTTP/1.1" => true,
        "HTTP/1.0" => false,
        other => return Err(RequestError::Version(other.to_string())),
    };
    for line in lines.take_while(|l| !l.is_empty()) {
        let Some((name, value)) = line.split_once(':') else {
            return Err(RequestError::Header(line.to_string()));
        };
        if name.is_empty() || name.contains([' ', '\t']) {
            return Err(RequestError::Header(line.to_string()));
        }
        let value = value.trim();
        if name.eq_ignore_ascii_case("connection") {
            for token in value.split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") {
                    keep_alive = false;
                } else if token.eq_ignore_ascii_case("keep-alive") {
                    keep_alive = true;
                }
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding")
            || (name.eq_ignore_ascii_case("content-length") && value != "0")
        {
            // Without body support we could not find the next request's start: refuse.
            return Err(RequestError::Body(line.to_string()));
        }
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let route = match (method, path) {
        ("GET", "/fast") => Route::Fast,
        ("GET", "/health") => Route::Health,
        ("GET", "/slow") => parse_slow_query(query)?,
        _ => Route::NotFound,
    };
    Ok(Request { route, keep_alive })
}

/// Parses `ms=M&bytes=N` (either may be absent: 1000 ms, 65536 bytes).
fn parse_slow_query(query: &str) -> Result<Route, RequestError> {
    let (mut ms, mut bytes) = (1000, 65536);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let bad = || RequestError::Query(pair.to_string());
        let (key, value) = pair.split_once('=').ok_or_else(bad)?;
        let value: u64 = value.parse().map_err(|_| bad())?;
        match key {
            "ms" if value <= MAX_SLOW_MS => ms = value,
            "bytes" if value <= MAX_SLOW_BYTES => bytes = value,
            _ => return Err(bad()),
        }
    }
    Ok(Route::Slow { ms, bytes })
}

/// The response head for a 200 with `len` body bytes.
fn ok_head(len: u64, keep_alive: bool) -> String {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {len}\r\n{}\r\n",
        connection_header(keep_alive)
    )
}

fn connection_header(keep_alive: bool) -> &'static str {
    if keep_alive {
        "Connection: keep-alive\r\n"
    } else {
        "Connection: close\r\n"
    }
}

/// A complete small response.
fn small_response(status: &str, body: &str, keep_alive: bool) -> String {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n{}\r\n{body}",
        body.len(),
        connection_header(keep_alive)
    )
}

/// Serves one HTTP connection: requests one after the other (pipelined ones too) until the client
/// closes, asks for `Connection: close`, or sends something malformed.
async fn serve_http(mut stream: TcpStream) {
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    loop {
        if let Some(end) = head_end(&buf) {
            let parsed = parse_request(&buf[..end]);
            buf.drain(..end);
            let keep_alive = match parsed {
                Ok(req) => match respond(&mut stream, &req).await {
                    Ok(()) => req.keep_alive,
                    Err(_) => return,
                },
                Err(e) => {
                    let body = format!("{e}\n");
                    let resp = small_response("400 Bad Request", &body, false);
                    let _ = stream.write_all(resp.as_bytes()).await;
                    false
                }
            };
            if !keep_alive {
                lingering_close(stream).await;
                return;
            }
            continue;
        }
        if buf.len() > MAX_HEAD_BYTES {
            let body = format!("{}\n", RequestError::TooLong);
            let resp = small_response("400 Bad Request", &body, false);
            let _ = stream.write_all(resp.as_bytes()).await;
            lingering_close(stream).await;
            return;
        }
        match stream.read_buf(&mut buf).await {
            // EOF between requests is the normal end of a keep-alive connection. Answer with our
            // FIN (dropping the socket) so the client's half-close completes.
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// Writes the response to one request.
async fn respond(stream: &mut TcpStream, req: &Request) -> io::Result<()> {
    match req.route {
        Route::Fast => {
            let mut resp = ok_head(FAST_BODY_LEN, req.keep_alive).into_bytes();
            let start = resp.len();
            resp.resize(start + FAST_BODY_LEN as usize, 0);
            fill_pattern(0, &mut resp[start..]);
            stream.write_all(&resp).await
        }
        Route::Health => {
            let resp = small_response("200 OK", "ok\n", req.keep_alive);
            stream.write_all(resp.as_bytes()).await
        }
        Route::NotFound => {
            let resp = small_response("404 Not Found", "not found\n", req.keep_alive);
            stream.write_all(resp.as_bytes()).await
        }
        Route::Slow { ms, bytes } => {
            stream
                .write_all(ok_head(bytes, req.keep_alive).as_bytes())
                .await?;
            stream_slow_body(stream, ms, bytes).await
        }
    }
}

/// Streams `bytes` pattern bytes in [`SLOW_CHUNKS`] pieces, the first at once and the last `ms`
/// milliseconds later. Send instants come from the start instant, so a slow write does not
/// stretch the schedule.
async fn stream_slow_body(stream: &mut TcpStream, ms: u64, bytes: u64) -> io::Result<()> {
    let start = Instant::now();
    let mut piece = Vec::new();
    for k in 0..SLOW_CHUNKS {
        let from = bytes * k / SLOW_CHUNKS;
        let to = bytes * (k + 1) / SLOW_CHUNKS;
        tokio::time::sleep_until(start + Duration::from_millis(ms * k / (SLOW_CHUNKS - 1))).await;
        let mut offset = from;
        while offset < to {
            let n = (to - offset).min(64 * 1024);
            piece.resize(n as usize, 0);
            fill_pattern(offset, &mut piece);
            stream.write_all(&piece).await?;
            offset += n;
        }
    }
    Ok(())
}

/// Closes a connection we decided to end: FIN first, then read and discard whatever the client
/// still sends until its FIN (bounded), so the kernel never turns our close into an RST that could
/// destroy the last response in flight.
async fn lingering_close(mut stream: TcpStream) {
    if stream.shutdown().await.is_err() {
        return;
    }
    let mut sink = [0u8; 4096];
    let _ = tokio::time::timeout(LINGER_DRAIN, async {
        while let Ok(n) = stream.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests;
