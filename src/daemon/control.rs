//! The daemon's control socket: how `drain-agent drain|undrain|status` talk to `drain-agent run`.
//!
//! Protocol, one request per connection over a Unix stream socket, every message one line of
//! JSON:
//!
//! ```text
//! client → {"op":"drain","deadline":"30s"}            a [`Request`]: op status | drain | undrain,
//!                                                     with that operation's arguments
//! server ← {"event":{...}}                            zero or more progress events, as they happen
//! server ← {"result":{...},"exit_code":0}             exactly one final line, then the server closes
//! ```
//!
//! The exit code is the one the CLI exits with ([`crate::ops::exit`]), so a drain run through
//! the daemon reports exactly like one run directly.
//!
//! Access: the socket file is mode 0600 in a root-only directory, created under a temporary name
//! and renamed into place so it never exists with looser permissions; and every connection's peer
//! credentials (`SO_PEERCRED`, filled in by the kernel at `connect()`, unforgeable) must say uid
//! 0, or the connection gets a one-line refusal and nothing runs. A lock file next to the socket
//! makes a second daemon fail instead of stealing the socket; a socket file left by a daemon that
//! died is replaced.

use std::fs::{self, File, OpenOptions};
use std::future::Future;
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// How long the control socket backs off after a failed accept (EMFILE and friends) instead of
/// spinning.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
use thiserror::Error;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::ops::drain::DrainOptions;
use crate::ops::exit;
pub use crate::ops::maintenance::{MaintenanceOffRequest, MaintenanceRequest};
use crate::ops::undrain::UndrainOptions;

/// Where the daemon listens: in its systemd `RuntimeDirectory` (mode 0700).
pub const DEFAULT_SOCKET_PATH: &str = "/run/drain-agent/control.sock";

/// Longest request line accepted; a real request is a few hundred bytes.
const MAX_REQUEST_BYTES: u64 = 64 * 1024;
/// Longest reply line a client accepts.
const MAX_REPLY_BYTES: u64 = 1024 * 1024;
/// How long a connected client may take to send its request, so an idle connection cannot pin a
/// task forever.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Events a handler may have queued for its connection before further ones are dropped: the
/// handler never waits for a client (see [`EventSink`]).
const EVENT_QUEUE: usize = 256;
/// Bytes of reply lines waiting for a client that does not read (it was suspended, or is stuck)
/// before further events are dropped. The final line is always kept.
const MAX_PENDING_BYTES: usize = 256 * 1024;
/// Control connections served at once: each holds a descriptor and a task, so a runaway client
/// (a script in a loop) cannot exhaust the daemon's. Over the cap a connection gets a one-line
/// refusal and is closed.
pub const MAX_CONNECTIONS: usize = 64;
/// How long the final line may take to reach a client once the request is over: a client that
/// does not read must not keep its connection, or the daemon's shutdown, waiting.
const FINAL_WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Errors of the control socket; each names the socket path.
#[derive(Debug, Error)]
pub enum ControlError {
    /// The socket (or its directory or lock file) could not be created.
    #[error("cannot create control socket {path}: {source}")]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// Another daemon holds the socket.
    #[error("another drain-agent daemon is serving {path}")]
    AlreadyRunning {
        /// The socket path.
        path: PathBuf,
    },
    /// Something other than a socket is at the path; it is left alone.
    #[error("control socket path {path} exists and is not a socket; not replacing it")]
    NotASocket {
        /// The socket path.
        path: PathBuf,
    },
    /// The client could not connect.
    #[error(
        "cannot connect to the drain-agent daemon at {path}: {source}{}",
        hint(source)
    )]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The client's connect did not complete in time.
    #[error("cannot connect to the drain-agent daemon at {path}: no answer within {after:?}")]
    ConnectTimeout {
        /// The socket path.
        path: PathBuf,
        /// The timeout.
        after: Duration,
    },
    /// Sending or receiving failed.
    #[error("control socket {path}: {source}")]
    Io {
        /// The socket path.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The other side sent something that is not this protocol.
    #[error("control socket {path}: protocol error: {reason}")]
    Protocol {
        /// The socket path.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// The daemon closed the connection without a final result (it stopped or crashed).
    #[error("control socket {path}: the daemon closed the connection before the final result")]
    Closed {
        /// The socket path.
        path: PathBuf,
    },
}

fn hint(e: &io::Error) -> &'static str {
    match e.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
            " (is `drain-agent run` running?)"
        }
        io::ErrorKind::PermissionDenied => " (the daemon serves root only)",
        _ => "",
    }
}

/// One request: the operation and its arguments, as one JSON object tagged by `op`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Request {
    /// Report the node's state.
    Status,
    /// Take the node out of service.
    Drain(DrainOptions),
    /// Undo a drain.
    Undrain(UndrainOptions),
    /// Drain and hold the node out of service, recording why.
    #[serde(rename = "maintenance-on")]
    MaintenanceOn(MaintenanceRequest),
    /// End maintenance: undrain and clear the record.
    #[serde(rename = "maintenance-off")]
    MaintenanceOff(MaintenanceOffRequest),
}

impl Request {
    /// The operation's name, for logs.
    pub fn op(&self) -> &'static str {
        match self {
            Request::Status => "status",
            Request::Drain(_) => "drain",
            Request::Undrain(_) => "undrain",
            Request::MaintenanceOn(_) => "maintenance-on",
            Request::MaintenanceOff(_) => "maintenance-off",
        }
    }
}

/// The final answer to a request.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    /// Result document (for errors: `{"error": "..."}`).
    pub result: Value,
    /// Exit code the CLI exits with.
    pub exit_code: u8,
}

impl Outcome {
    /// A successful result (exit code 0).
    pub fn ok(result: Value) -> Outcome {
        Outcome {
            result,
            exit_code: exit::OK,
        }
    }

    /// A failure: `{"error": message}` with the given exit code.
    pub fn error(exit_code: u8, message: impl Into<String>) -> Outcome {
        Outcome {
            result: serde_json::to_value(ErrorDoc {
                error: message.into(),
            })
            .unwrap_or_default(),
            exit_code,
        }
    }
}

/// The result document of a request that failed.
#[derive(Serialize)]
struct ErrorDoc {
    error: String,
}

/// Who is on the other end of a connection, from `SO_PEERCRED`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Peer {
    /// The client's process id, when the kernel knows it.
    pub pid: Option<i32>,
    /// Its effective user id at connect time.
    pub uid: u32,
    /// Its effective group id at connect time.
    pub gid: u32,
}

/// Where a [`Handler`] sends progress events; each goes to the client as one line, immediately.
///
/// Sending never blocks, whatever the client does: a drain must not stall because the terminal
/// that started it was suspended. The queue is bounded: when a client does not read, the events
/// it misses are dropped (and counted in the log), never the final line.
#[derive(Debug, Clone)]
pub struct EventSink {
    tx: mpsc::Sender<Value>,
    /// Events dropped because the queue was full.
    dropped: Arc<std::sync::atomic::AtomicU64>,
}

impl EventSink {
    /// A sink and the receiving end of its bounded queue.
    fn new() -> (EventSink, mpsc::Receiver<Value>) {
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

/// The daemon's operations, plugged into the server.
pub trait Handler: Send + Sync + 'static {
    /// Runs one request from an authorised peer. Called on a blocking thread (it may sleep, run
    /// commands, take minutes); several requests may run at once, so the handler serialises what
    /// must not overlap. Progress goes through `events`; the return value is the final line.
    fn handle(&self, request: Request, peer: Peer, events: &EventSink) -> Outcome;
}

/// One line from the daemon.
#[derive(Clone, Debug, PartialEq)]
enum Reply {
    Event(Value),
    Final(Outcome),
}

impl Reply {
    fn to_line(&self) -> String {
        #[derive(Serialize)]
        #[serde(untagged)]
        enum Line<'a> {
            Event { event: &'a Value },
            Final { result: &'a Value, exit_code: u8 },
        }
        let line = match self {
            Reply::Event(event) => Line::Event { event },
            Reply::Final(o) => Line::Final {
                result: &o.result,
                exit_code: o.exit_code,
            },
        };
        let mut line = serde_json::to_string(&line).expect("a reply serialises");
        line.push('\n');
        line
    }

    fn parse(line: &str) -> Result<Reply, String> {
        let Value::Object(mut map) =
            serde_json::from_str::<Value>(line).map_err(|e| format!("reply is not JSON ({e})"))?
        else {
            return Err("reply is not a JSON object".to_string());
        };
        if let Some(event) = map.remove("event") {
            return if map.is_empty() {
                Ok(Reply::Event(event))
            } else {
                Err("event line with extra keys".to_string())
            };
        }
        let (Some(result), Some(code)) = (map.remove("result"), map.remove("exit_code")) else {
            return Err("reply has neither \"event\" nor \"result\" and \"exit_code\"".to_string());
        };
        if !map.is_empty() {
            return Err("final line with extra keys".to_string());
        }
        let exit_code = code
            .as_u64()
            .and_then(|c| u8::try_from(c).ok())
            .ok_or_else(|| format!("exit_code {code} is not 0..=255"))?;
        Ok(Reply::Final(Outcome { result, exit_code }))
    }
}

/// Reads one line of at most `max` bytes; `Ok(None)` at end of stream before any byte.
async fn read_line<R: AsyncRead + Unpin>(
    reader: &mut BufReader<R>,
    max: u64,
) -> io::Result<Option<String>> {
    let mut buf = Vec::new();
    let n = reader.take(max + 1).read_until(b'\n', &mut buf).await?;
    if n == 0 {
        return Ok(None);
    }
    if buf.len() as u64 > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("line longer than {max} bytes"),
        ));
    }
    if buf.last() != Some(&b'\n') {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "line not terminated by a newline",
        ));
    }
    String::from_utf8(buf)
        .map(Some)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "line is not UTF-8"))
}

/// The daemon's listening control socket.
pub struct ControlServer {
    listener: UnixListener,
    path: PathBuf,
    /// (device, inode) of the socket file we created, so shutdown removes only our own.
    id: (u64, u64),
    handler: Arc<dyn Handler>,
    _lock: Flock<File>,
}

impl std::fmt::Debug for ControlServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlServer")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl ControlServer {
    /// Creates the socket at `path` (mode 0600; its directory is created with mode 0700 if
    /// missing) and prepares to serve `handler`. Must run inside a tokio runtime.
    ///
    /// Fails with [`ControlError::AlreadyRunning`] if another daemon serves the path, and with
    /// [`ControlError::NotASocket`] if a non-socket file is in the way. A socket file nobody
    /// listens on (left by a daemon that was killed) is replaced.
    pub fn bind(
        path: impl AsRef<Path>,
        handler: Arc<dyn Handler>,
    ) -> Result<ControlServer, ControlError> {
        let path = path.as_ref().to_path_buf();
        let err = |source| ControlError::Bind {
            path: path.clone(),
            source,
        };
        let (dir, name) = crate::sys::fs::dir_and_name(&path).map_err(err)?;
        if !dir.exists() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(err)?;
        }

        // The lock serialises daemons: whoever holds it owns the path, so a socket found there
        // while we hold it belongs to a dead daemon.
        let mut lock_name = name.to_os_string();
        lock_name.push(".lock");
        let lock_file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(dir.join(lock_name))
            .map_err(err)?;
        let lock = match Flock::lock(lock_file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                return Err(ControlError::AlreadyRunning { path })
            }
            Err((_, e)) => return Err(err(e.into())),
        };

        match fs::symlink_metadata(&path) {
            Ok(meta) if meta.file_type().is_socket() => {
                // A daemon of an older build might not take the lock: one that answers is live.
                if std::os::unix::net::UnixStream::connect(&path).is_ok() {
                    return Err(ControlError::AlreadyRunning { path });
                }
            }
            Ok(_) => return Err(ControlError::NotASocket { path }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(err(e)),
        }

        // Bind under a temporary name, restrict it, then rename over the final path: the socket
        // is never reachable at `path` with the umask's permissions, and a stale socket file is
        // replaced in the same atomic step.
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(".{}.tmp", std::process::id()));
        let tmp = dir.join(tmp_name);
        let _ = fs::remove_file(&tmp);
        let std_listener = std::os::unix::net::UnixListener::bind(&tmp).map_err(err)?;
        let placed = fs::set_permissions(&tmp, fs::Permissions::from_mode(0o600))
            .and_then(|()| fs::rename(&tmp, &path));
        if let Err(e) = placed {
            let _ = fs::remove_file(&tmp);
            return Err(err(e));
        }
        let meta = fs::symlink_metadata(&path).map_err(err)?;
        std_listener.set_nonblocking(true).map_err(err)?;
        let listener = UnixListener::from_std(std_listener).map_err(err)?;
        Ok(ControlServer {
            listener,
            path,
            id: (meta.dev(), meta.ino()),
            handler,
            _lock: lock,
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves connections until `shutdown` completes, then removes the socket file (if it is
    /// still ours) and waits for the requests in progress to finish. Each connection runs on its
    /// own task; a failing connection never stops the server.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) {
        let ControlServer {
            listener,
            path,
            id,
            handler,
            _lock,
        } = self;
        let mut tasks = JoinSet::new();
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => match slots.clone().try_acquire_owned() {
                        Ok(slot) => {
                            let handler = handler.clone();
                            tasks.spawn(async move {
                                serve_connection(stream, handler).await;
                                drop(slot);
                            });
                        }
                        Err(_) => refuse_busy(&stream),
                    },
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning; keep serving.
                        tracing::warn!(path = %path.display(), error = %e, "control socket accept failed");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                    }
                },
                Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                    if let Err(e) = done {
                        tracing::error!(error = %e, "control connection task failed");
                    }
                }
            }
        }
        drop(listener);
        if fs::symlink_metadata(&path).is_ok_and(|m| (m.dev(), m.ino()) == id) {
            let _ = fs::remove_file(&path);
        }
        while let Some(done) = tasks.join_next().await {
            if let Err(e) = done {
                tracing::error!(error = %e, "control connection task failed");
            }
        }
    }
}

/// Tells a connection over [`MAX_CONNECTIONS`] why it is closed, without waiting for it: a
/// client that does not read gets nothing.
fn refuse_busy(stream: &UnixStream) {
    let o = Outcome::error(
        exit::BUSY,
        format!("the drain-agent daemon is serving {MAX_CONNECTIONS} control connections already; try again"),
    );
    let _ = stream.try_write(Reply::Final(o).to_line().as_bytes());
    tracing::debug!("control connection refused: {MAX_CONNECTIONS} connections in progress");
}

/// Writes one reply line; false if the client is gone.
async fn send_line(stream: &mut (impl AsyncWriteExt + Unpin), reply: &Reply) -> bool {
    let line = reply.to_line();
    stream.write_all(line.as_bytes()).await.is_ok() && stream.flush().await.is_ok()
}

async fn serve_connection(stream: UnixStream, handler: Arc<dyn Handler>) {
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
struct Forwarded {
    /// Events dropped because the client did not read.
    dropped: u64,
    /// The final line was written completely.
    final_sent: bool,
}

/// Forwards the handler's events to the client while `job` runs, then its final line.
///
/// Writing never waits on the client while the request runs: lines go into a buffer of at most
/// [`MAX_PENDING_BYTES`] that is written as the client reads, and events that do not fit are
/// dropped. A write error means the client has gone: the event queue is closed so the handler's
/// next send reports it. The final line is always queued, and gets `final_timeout` to be
/// written, so a client that stopped reading holds neither this task nor the daemon's shutdown.
async fn forward<W: AsyncWriteExt + Unpin>(
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PositiveDuration;
    use serde_json::json;

    #[test]
    fn requests_carry_their_arguments_inline() {
        let r = Request::Drain(DrainOptions {
            deadline: Some(PositiveDuration::try_from("30s".to_string()).unwrap()),
            ..DrainOptions::default()
        });
        let text = serde_json::to_string(&r).unwrap();
        assert_eq!(text, r#"{"op":"drain","deadline":"30s"}"#);
        let back: Request = serde_json::from_str(&text).unwrap();
        assert_eq!(back, r);
        let status: Request = serde_json::from_str(r#"{"op":"status"}"#).unwrap();
        assert_eq!(status, Request::Status);
        let undrain: Request =
            serde_json::from_str(r#"{"op":"undrain","keep_link_down":true}"#).unwrap();
        assert_eq!(
            undrain,
            Request::Undrain(UndrainOptions {
                keep_link_down: true
            })
        );
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"op":"drain"}"#).unwrap(),
            Request::Drain(DrainOptions::default())
        );
    }

    #[test]
    fn unknown_or_missing_ops_and_bad_arguments_are_rejected() {
        assert!(serde_json::from_str::<Request>(r#"{"op":"reboot"}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"deadline":"1s"}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"[1]"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"op":"drain","deadline":"soon"}"#).is_err());
        assert!(
            serde_json::from_str::<Request>(r#"{"op":"undrain","keep_link_down":"yes"}"#).is_err()
        );
    }

    #[test]
    fn replies_round_trip() {
        for reply in [
            Reply::Event(json!({"phase": "divert", "sockets": 3})),
            Reply::Event(Value::Null),
            Reply::Final(Outcome::ok(json!({"state": "serving"}))),
            Reply::Final(Outcome::ok(Value::Null)),
            Reply::Final(Outcome::error(7, "not MASTER")),
        ] {
            let line = reply.to_line();
            assert!(line.ends_with('\n') && !line[..line.len() - 1].contains('\n'));
            assert_eq!(Reply::parse(&line).unwrap(), reply);
        }
    }

    #[test]
    fn malformed_replies_are_protocol_errors() {
        for line in [
            "nonsense",
            "[]",
            "{}",
            r#"{"result":1}"#,
            r#"{"exit_code":0}"#,
            r#"{"result":1,"exit_code":256}"#,
            r#"{"result":1,"exit_code":-1}"#,
            r#"{"result":1,"exit_code":0,"x":1}"#,
            r#"{"event":1,"x":1}"#,
        ] {
            assert!(Reply::parse(line).is_err(), "{line}");
        }
    }

    /// A handler that sends `events` events of about 1 KB and tells `finished` when it returns.
    struct Chatty {
        events: usize,
        finished: std::sync::mpsc::Sender<bool>,
    }

    impl Handler for Chatty {
        fn handle(&self, _: Request, _: Peer, sink: &EventSink) -> Outcome {
            let pad = "x".repeat(1000);
            let all_sent = (0..self.events).all(|i| sink.send(json!({"n": i, "pad": pad})));
            let _ = self.finished.send(all_sent);
            Outcome::ok(json!("done"))
        }
    }

    /// Runs `forward` for a [`Chatty`] handler over a real socket pair whose client end is
    /// returned unread.
    fn chatty_forward(
        events: usize,
        final_timeout: Duration,
    ) -> (
        tokio::task::JoinHandle<(Outcome, Forwarded)>,
        UnixStream,
        std::sync::mpsc::Receiver<bool>,
    ) {
        let (server, client) = UnixStream::pair().unwrap();
        let (finished, handler_done) = std::sync::mpsc::channel();
        let (sink, rx) = EventSink::new();
        let handler = Chatty { events, finished };
        let dropped = sink.dropped.clone();
        let job = tokio::task::spawn_blocking(move || {
            handler.handle(Request::Status, test_peer(), &sink)
        });
        let task = tokio::spawn(async move {
            let mut server = server;
            let (o, mut f) = forward(&mut server, rx, job, "status", final_timeout).await;
            f.dropped += dropped.load(std::sync::atomic::Ordering::Relaxed);
            (o, f)
        });
        (task, client, handler_done)
    }

    fn test_peer() -> Peer {
        Peer {
            pid: None,
            uid: 0,
            gid: 0,
        }
    }

    /// Bound of the waits below: only reached when something hangs.
    const HANG: Duration = Duration::from_secs(30);

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_client_that_does_not_read_loses_events_but_not_the_final_line() {
        // 20 MB of events, far more than the socket buffer and the pending bound hold.
        let (task, client, handler_done) = chatty_forward(20_000, HANG);
        let all_sent = tokio::task::spawn_blocking(move || handler_done.recv_timeout(HANG))
            .await
            .unwrap()
            .expect("the handler finishes while its client does not read");
        assert!(all_sent, "a slow client is not a gone client");
        let mut reader = BufReader::new(client);
        let mut events = 0;
        let last = loop {
            let line = tokio::time::timeout(HANG, read_line(&mut reader, MAX_REPLY_BYTES))
                .await
                .unwrap()
                .unwrap()
                .expect("the final line comes before the end");
            match Reply::parse(&line).expect("every line is whole") {
                Reply::Event(_) => events += 1,
                Reply::Final(o) => break o,
            }
        };
        assert_eq!(last, Outcome::ok(json!("done")));
        let (_, forwarded) = task.await.unwrap();
        assert!(forwarded.final_sent);
        assert!(
            forwarded.dropped > 0 && events + forwarded.dropped == 20_000,
            "events {events}, dropped {}",
            forwarded.dropped
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_client_that_never_reads_cannot_hold_its_connection() {
        let (task, client, _) = chatty_forward(20_000, Duration::from_millis(200));
        let (outcome, forwarded) = tokio::time::timeout(HANG, task)
            .await
            .expect("the connection ends although its client never reads")
            .unwrap();
        assert_eq!(outcome, Outcome::ok(json!("done")));
        assert!(!forwarded.final_sent);
        drop(client);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shutdown_does_not_wait_for_a_client_that_never_reads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ctl.sock");
        let (finished, handler_done) = std::sync::mpsc::channel();
        let server = ControlServer::bind(
            &path,
            Arc::new(Chatty {
                events: 20_000,
                finished,
            }),
        )
        .unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = tokio::spawn(server.serve(async move {
            let _ = stopped.await;
        }));
        // A client that sends its request and then never reads a byte (a suspended terminal).
        let mut client = UnixStream::connect(&path).await.unwrap();
        client.write_all(b"{\"op\":\"status\"}\n").await.unwrap();
        tokio::task::spawn_blocking(move || handler_done.recv_timeout(HANG))
            .await
            .unwrap()
            .expect("the handler is not held by the client");
        stop.send(()).unwrap();
        tokio::time::timeout(HANG, serving)
            .await
            .expect("shutdown does not wait for the client that never reads")
            .unwrap();
        assert!(!path.exists(), "the socket file went with the server");
        drop(client);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connections_over_the_cap_are_refused_busy_and_the_slots_come_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ctl.sock");
        let (finished, _handler_done) = std::sync::mpsc::channel();
        let server = ControlServer::bind(
            &path,
            Arc::new(Chatty {
                events: 0,
                finished,
            }),
        )
        .unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = tokio::spawn(server.serve(async move {
            let _ = stopped.await;
        }));
        let call_status = || async {
            tokio::time::timeout(HANG, call(&path, &Request::Status, HANG, |_| {}))
                .await
                .unwrap()
                .unwrap()
        };
        // Idle connections (no request sent) take every slot.
        let mut idle = Vec::new();
        for _ in 0..MAX_CONNECTIONS {
            idle.push(UnixStream::connect(&path).await.unwrap());
        }
        let refused = call_status().await;
        assert_eq!(refused.exit_code, exit::BUSY, "{:?}", refused.result);
        drop(idle);
        let start = std::time::Instant::now();
        loop {
            if call_status().await == Outcome::ok(json!("done")) {
                break;
            }
            assert!(start.elapsed() < HANG, "the slots never came back");
        }
        stop.send(()).unwrap();
        tokio::time::timeout(HANG, serving).await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn read_line_bounds_and_terminates() {
        let data: &[u8] = b"abc\ndef";
        let mut r = BufReader::new(data);
        assert_eq!(read_line(&mut r, 10).await.unwrap().unwrap(), "abc\n");
        assert_eq!(
            read_line(&mut r, 10).await.unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
        let long: &[u8] = b"0123456789abcdef\n";
        let mut r = BufReader::new(long);
        assert_eq!(
            read_line(&mut r, 8).await.unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
        let empty: &[u8] = b"";
        assert!(read_line(&mut BufReader::new(empty), 8)
            .await
            .unwrap()
            .is_none());
    }
}
