//! The service layer: every operation the agent performs — drain, undrain, accept and release on
//! the peer, keepalived's notify, the daemon's reconcile, status, check — written once, against
//! the [`Host`] trait, and returning typed results. The CLI and the daemon call these and only
//! render what they return; the kernel is reached only through [`Host`] (whose real
//! implementation, [`crate::wiring::SystemHost`], composes the adapters in [`crate::sys`]).
//! What to change is computed by the pure planner, [`crate::plan`]; every change to a host is
//! recorded in a [`crate::journal::Journal`] before it is made, so it can be undone after a crash.
//!
//! Each operation is unit-tested against a scripted fake world (`fake`), without root.

pub mod check;
mod cycle;
pub mod divert;
pub mod drain;
pub mod error;
pub mod event;
pub mod exit;
pub mod handoff;
pub mod host;
pub mod maintenance;
pub mod notify;
pub mod peer;
pub mod policy;
pub mod reconcile;
pub mod record;
pub mod status;
pub mod undo;
pub mod undrain;

pub use cycle::Cycle;
pub use drain::drain;
pub use error::{HostError, HostErrorKind, OpError};
pub(crate) use event::ms;
pub use event::{DrainReason, DrainReport, Event, PeerAnswer, SocketCount};
pub(crate) use host::MIN_SLEEP;
pub use host::{
    Clock, DivertTest, Host, Interfaces, KeepalivedTrack, Netfilter, PeerAgent, PeerProbe, Sockets,
    Sysctl, Tools,
};
pub use policy::{Policy, TRACK_FAULT};
pub use undo::{cleanup, undo, undo_all};
pub use undrain::undrain;

#[cfg(test)]
pub(crate) mod fake;

#[cfg(test)]
mod tests;
