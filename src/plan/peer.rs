//! What the peer must do before it receives diverted packets, as data.

use std::net::Ipv4Addr;

use crate::config::Config;

/// One sysctl to set, by its path under /proc/sys (slash form, so interface names containing '.'
/// such as VLAN `eth0.100` stay unambiguous).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SysctlChange {
    /// E.g. `net/ipv4/conf/eth0/arp_ignore`.
    pub key: String,
    /// The value to write.
    pub value: String,
}

impl SysctlChange {
    /// The file to write: `/proc/sys/` + key.
    pub fn proc_path(&self) -> std::path::PathBuf {
        std::path::Path::new("/proc/sys").join(&self.key)
    }
}

/// What the peer must do before it receives diverted packets, as data; the links adapter applies
/// it and the caller records the old values to restore them (docs/kernel-facts.md#k7: every sysctl changed is
/// restored).
///
/// The peer is still BACKUP while the drain runs, so it does not hold the VIPs: it accepts packets
/// addressed to them only through a local route (`local VIP/32 dev lo`). And it must not answer
/// ARP for them (`arp_ignore=1`: answer only for addresses configured on the asking interface;
/// `arp_announce=2`: never use a VIP as ARP source), or clients may learn its MAC for the VIP and
/// send flows that must stay on the draining node to it (docs/kernel-facts.md#k5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerPlan {
    /// Addresses that need a local route (`ip route add local A/32 dev lo`).
    pub local_routes: Vec<Ipv4Addr>,
    /// Sysctls on the peer's ingress interface.
    pub sysctls: Vec<SysctlChange>,
}

impl PeerPlan {
    /// Computes the peer-side changes; the peer's ingress interface has the same name as ours
    /// (both nodes share one configuration, apart from `peer`).
    pub fn new(config: &Config) -> PeerPlan {
        let ifname = config.ingress_interface.as_str();
        let sysctl = |name: &str, value: &str| SysctlChange {
            key: format!("net/ipv4/conf/{ifname}/{name}"),
            value: value.to_string(),
        };
        PeerPlan {
            local_routes: config.vips.iter().map(|v| v.address.get()).collect(),
            sysctls: vec![sysctl("arp_ignore", "1"), sysctl("arp_announce", "2")],
        }
    }
}
