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

mod client;
mod connection;
mod error;
mod events;
mod protocol;
mod server;

pub use client::call;
pub use error::ControlError;
pub use events::EventSink;
pub use protocol::{Outcome, Peer, Request};
pub use server::{ControlServer, Handler, MAX_CONNECTIONS};

pub use crate::ops::maintenance::{MaintenanceOffRequest, MaintenanceRequest};

/// Where the daemon listens: in its systemd `RuntimeDirectory` (mode 0700).
pub const DEFAULT_SOCKET_PATH: &str = "/run/drain-agent/control.sock";

#[cfg(test)]
mod tests;
