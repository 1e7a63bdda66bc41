//! What the two agents say to each other over the peer link ([`PeerRequest`], [`PeerReply`]),
//! how a MAC is written in the journal, and [`ask_end`], the request both a hand-off's end and
//! the undo of its journal entry send.

use std::net::Ipv4Addr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::ops::Host;
use crate::plan::Mac;

/// A VIP and its ports, as the two agents compare their configurations.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VipPorts {
    /// The VIP.
    pub vip: Ipv4Addr,
    /// Its ports, in configuration order.
    pub ports: Vec<u16>,
}

impl VipPorts {
    /// The VIPs and ports of `cfg`.
    pub fn of(cfg: &Config) -> Vec<VipPorts> {
        cfg.vips
            .iter()
            .map(|v| VipPorts {
                vip: v.address.get(),
                ports: v.ports.as_slice().iter().map(|p| p.get()).collect(),
            })
            .collect()
    }
}

/// What one agent asks the other over the peer link.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum PeerRequest {
    /// Is the peer's agent there, and does it serve the same VIPs? Changes nothing (`check`).
    Hello {
        /// The asking node's VIPs.
        vips: Vec<VipPorts>,
    },
    /// Start returning the asking node's packets to it: it is about to divert and fail over.
    Begin {
        /// The asking node's VIPs (must equal the peer's).
        vips: Vec<VipPorts>,
        /// Unix time (s) after which the peer removes the return path on its own.
        until: u64,
    },
    /// The asking node's connections are gone (or its deadline passed): remove the return path.
    End,
    /// The asking node is back (BACKUP, accepting): take yourself out of service the way `mode`
    /// says, so the VIPs move back to it without breaking a connection, then come back as
    /// BACKUP (`undrain`). Answered when done.
    Failback {
        /// How the peer drains.
        mode: crate::config::DrainMode,
    },
}

/// The answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "kebab-case")]
pub enum PeerReply {
    /// Done; what was done, in one line.
    Ok {
        /// E.g. "return path installed".
        detail: String,
    },
    /// Not done, and nothing was changed; why.
    Refused {
        /// E.g. "this node serves other VIPs".
        reason: String,
    },
}

/// `aa:bb:cc:dd:ee:ff` as a MAC.
pub fn format_mac(m: &Mac) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A MAC from `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Option<Mac> {
    let mut m = [0u8; 6];
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return None;
    }
    for (i, p) in parts.iter().enumerate() {
        m[i] = u8::from_str_radix(p, 16).ok()?;
    }
    Some(m)
}

/// How long A keeps trying to tell the peer the hand-off is over (its agent may be restarting).
pub const END_RETRY_FOR: Duration = Duration::from_secs(10);
/// Pause between those attempts.
const END_RETRY_EVERY: Duration = Duration::from_millis(500);

/// A: tells the peer the hand-off is over, retrying for [`END_RETRY_FOR`]. `Err` with the last
/// error if it never answered (its agent removes the return path on its own once this node stops
/// accepting the VIP).
pub fn ask_end(h: &mut dyn Host) -> Result<String, String> {
    let until = h.now() + END_RETRY_FOR;
    loop {
        match h.peer_agent(&PeerRequest::End) {
            Ok(PeerReply::Ok { detail }) => return Ok(detail),
            Ok(PeerReply::Refused { reason }) => return Err(reason),
            Err(e) if h.now() >= until => return Err(e.to_string()),
            Err(_) => h.sleep(END_RETRY_EVERY),
        }
    }
}
