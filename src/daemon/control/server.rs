//! The daemon's side: the listening socket, created safely, and the accept loop.

use std::fs::{self, File, OpenOptions};
use std::future::Future;
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinSet;

use super::connection::serve_connection;
use super::protocol::Reply;
use super::{ControlError, EventSink, Outcome, Peer, Request};
use crate::ops::exit;

/// How long the control socket backs off after a failed accept (EMFILE and friends) instead of
/// spinning.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Control connections served at once: each holds a descriptor and a task, so a runaway client
/// (a script in a loop) cannot exhaust the daemon's. Over the cap a connection gets a one-line
/// refusal and is closed.
pub const MAX_CONNECTIONS: usize = 64;

/// The daemon's operations, plugged into the server.
pub trait Handler: Send + Sync + 'static {
    /// Runs one request from an authorised peer. Called on a blocking thread (it may sleep, run
    /// commands, take minutes); several requests may run at once, so the handler serialises what
    /// must not overlap. Progress goes through `events`; the return value is the final line.
    fn handle(&self, request: Request, peer: Peer, events: &EventSink) -> Outcome;
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
