//! The control socket's errors, on both sides of it.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use thiserror::Error;

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
