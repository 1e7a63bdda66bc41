//! The drain policy: what the configuration says about how a drain runs, as one value.

use std::net::Ipv4Addr;
use std::time::Duration;

/// The drain policy (from the config's `drain`, `peer_probe` and `failover` sections).
#[derive(Clone, Debug)]
pub struct Policy {
    /// The VIPs this node serves.
    pub vips: Vec<Ipv4Addr>,
    /// The peer's own address (named in errors about it).
    pub peer: Ipv4Addr,
    /// Interface keepalived tracks.
    pub tracked_interface: String,
    /// Give up waiting for the drain after this.
    pub deadline: Duration,
    /// At the deadline: roll back instead of failing over.
    pub abort_on_deadline: bool,
    /// How often to count sockets.
    pub poll_interval: Duration,
    /// How often to probe the peer.
    pub probe_interval: Duration,
    /// Consecutive failed probes that mean the peer is lost.
    pub probe_failures: u32,
    /// On rollback, keep diverting already-diverted flows this long.
    pub rollback_grace: Duration,
    /// How long to wait for the peer to own the VIP after the trigger.
    pub failover_timeout: Duration,
    /// Keep diverting this long after the peer owns the VIP.
    pub post_wait: Duration,
    /// keepalived's track file, if configured (`failover.track_file`).
    pub track_file: Option<std::path::PathBuf>,
    /// Fail over by writing FAULT to the track file instead of downing the tracked interface.
    pub trigger_track_file: bool,
    /// What `undrain` writes to the track file (see `failover.return_weight`).
    pub return_weight: i32,
    /// Hand off instead of waiting ([`super::handoff`]): how long the hand-off may last.
    pub handoff: Option<Duration>,
}

impl Policy {
    /// The policy a configuration sets.
    pub fn from_config(cfg: &crate::config::Config) -> Policy {
        Policy {
            vips: cfg.vips.iter().map(|v| v.address.get()).collect(),
            peer: cfg.peer.get(),
            tracked_interface: cfg.tracked_interface.as_str().to_string(),
            deadline: cfg.drain.deadline.get(),
            abort_on_deadline: cfg.drain.abort_on_deadline,
            poll_interval: cfg.drain.poll_interval.get(),
            probe_interval: cfg.peer_probe.interval.get(),
            probe_failures: cfg.peer_probe.failures.get(),
            rollback_grace: cfg.drain.rollback_grace.get(),
            failover_timeout: cfg.failover.timeout.get(),
            post_wait: cfg.failover.post_wait.get(),
            track_file: cfg
                .failover
                .track_file
                .as_ref()
                .map(|p| p.as_path().to_path_buf()),
            trigger_track_file: cfg.failover.method == crate::config::FailoverMethod::TrackFile,
            return_weight: cfg.failover.return_weight.get(),
            handoff: match (&cfg.handoff, cfg.drain.mode) {
                (Some(h), crate::config::DrainMode::Handoff) => Some(h.deadline.get()),
                _ => None,
            },
        }
    }
}

/// The track-file value keepalived reads as FAULT (value x weight clamped to -254).
pub const TRACK_FAULT: i32 = -254;
