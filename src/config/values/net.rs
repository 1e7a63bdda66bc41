//! Addresses, ports and interfaces: the VIPs and where the agent listens.

use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use serde::Deserialize;

use super::{deserialize_checked_seq, reject, InvalidValue};

/// An IPv4 unicast address: not 0.0.0.0, multicast, broadcast or loopback.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UnicastV4(Ipv4Addr);

impl UnicastV4 {
    /// The address.
    pub fn get(self) -> Ipv4Addr {
        self.0
    }
}

impl TryFrom<String> for UnicastV4 {
    type Error = InvalidValue;
    fn try_from(text: String) -> Result<Self, InvalidValue> {
        let addr = match text.parse::<IpAddr>() {
            Ok(IpAddr::V4(a)) => a,
            // The divert rules, ipsets and local routes are all IPv4 (iptables, family inet).
            Ok(IpAddr::V6(_)) => {
                return reject(format!(
                    "{text:?} is an IPv6 address; IPv6 is not supported yet"
                ))
            }
            Err(_) => return reject(format!("{text:?} is not an IPv4 address")),
        };
        let kind = if addr.is_unspecified() {
            "the unspecified address"
        } else if addr.is_multicast() {
            "a multicast address"
        } else if addr.is_broadcast() {
            "the broadcast address"
        } else if addr.is_loopback() {
            "a loopback address"
        } else {
            return Ok(UnicastV4(addr));
        };
        reject(format!("{text:?} is {kind}, not a unicast address"))
    }
}
scalar_newtype!(UnicastV4, "an IPv4 address", |s| s.0);

/// A TCP port, 1..=65535.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Port(u16);

impl Port {
    /// The port number.
    pub fn get(self) -> u16 {
        self.0
    }
}

impl TryFrom<String> for Port {
    type Error = InvalidValue;
    fn try_from(text: String) -> Result<Self, InvalidValue> {
        match text.parse::<u64>() {
            Ok(n @ 1..=65535) => Ok(Port(n as u16)),
            Ok(n) => reject(format!("port {n} is out of range 1..=65535")),
            Err(_) => reject(format!("{text:?} is not a port number")),
        }
    }
}
scalar_newtype!(Port, "a TCP port number", |s| s.0);

/// The ports of one VIP: 1..=15 distinct ports, because the PREROUTING jump matches them with one
/// `-m multiport --dports`, which takes at most 15.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortList(Vec<Port>);

impl PortList {
    /// Most ports a multiport match accepts (XT_MULTI_PORTS).
    pub const MAX: usize = 15;

    /// The ports, in the order written.
    pub fn as_slice(&self) -> &[Port] {
        &self.0
    }
}

impl<'de> Deserialize<'de> for PortList {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        deserialize_checked_seq(d, "a list of TCP ports")
    }
}

impl TryFrom<Vec<Port>> for PortList {
    type Error = InvalidValue;
    fn try_from(ports: Vec<Port>) -> Result<Self, InvalidValue> {
        if ports.is_empty() {
            return reject("at least one port is required".into());
        }
        if ports.len() > Self::MAX {
            return reject(format!(
                "{} ports given; at most {} fit in one iptables multiport match",
                ports.len(),
                Self::MAX
            ));
        }
        let mut seen = HashSet::new();
        if let Some(dup) = ports.iter().find(|p| !seen.insert(**p)) {
            return reject(format!("port {dup} is listed twice"));
        }
        Ok(PortList(ports))
    }
}

/// One virtual address and the TCP ports served on it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vip {
    /// The VIP.
    pub address: UnicastV4,
    /// Ports whose traffic is diverted during a drain.
    pub ports: PortList,
}

/// 1..=16 VIPs with distinct addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VipList(Vec<Vip>);

impl VipList {
    /// Most VIPs one agent handles (one PREROUTING jump each).
    pub const MAX: usize = 16;

    /// The VIPs, in the order written.
    pub fn as_slice(&self) -> &[Vip] {
        &self.0
    }

    /// Iterates the VIPs.
    pub fn iter(&self) -> std::slice::Iter<'_, Vip> {
        self.0.iter()
    }

    /// Every port of every VIP, in order of appearance, duplicates included.
    pub fn ports(&self) -> impl Iterator<Item = Port> + '_ {
        self.0
            .iter()
            .flat_map(|v| v.ports.as_slice().iter().copied())
    }
}

impl<'de> Deserialize<'de> for VipList {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        deserialize_checked_seq(d, "a list of VIPs")
    }
}

impl TryFrom<Vec<Vip>> for VipList {
    type Error = InvalidValue;
    fn try_from(vips: Vec<Vip>) -> Result<Self, InvalidValue> {
        if vips.is_empty() {
            return reject("at least one VIP is required".into());
        }
        if vips.len() > Self::MAX {
            return reject(format!("{} VIPs given; at most {}", vips.len(), Self::MAX));
        }
        let mut seen = HashSet::new();
        if let Some(dup) = vips.iter().find(|v| !seen.insert(v.address)) {
            return reject(format!("address {} is listed twice", dup.address));
        }
        Ok(VipList(vips))
    }
}

/// A Linux interface name as the kernel accepts it (`dev_valid_name`): 1..=15 bytes, no '/',
/// ':', whitespace or NUL, not "." or "..". Also rejected because the name is written into
/// iptables-restore text: quotes (the restore parser interprets them) and a trailing '+'
/// (iptables reads `-i eth+` as a wildcard for every eth* interface).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IfName(String);

impl IfName {
    /// IFNAMSIZ - 1.
    pub const MAX_LEN: usize = 15;

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for IfName {
    type Error = InvalidValue;
    fn try_from(name: String) -> Result<Self, InvalidValue> {
        if name.is_empty() || name.len() > Self::MAX_LEN {
            return reject(format!(
                "{name:?} is not an interface name: it must be 1..={} bytes long",
                Self::MAX_LEN
            ));
        }
        if name == "." || name == ".." {
            return reject(format!("{name:?} is not an interface name"));
        }
        if let Some(c) = name
            .chars()
            .find(|c| matches!(c, '/' | ':' | '\0' | '"' | '\'') || c.is_whitespace())
        {
            return reject(format!(
                "{name:?} is not an interface name: it contains {c:?}"
            ));
        }
        if name.ends_with('+') {
            return reject(format!(
                "{name:?} ends with '+', which iptables reads as a wildcard"
            ));
        }
        Ok(IfName(name))
    }
}
scalar_newtype!(IfName, "an interface name", |s| s.0);

/// An IPv4 address and port to listen on, e.g. `127.0.0.1:9464`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenAddr(std::net::SocketAddrV4);

impl ListenAddr {
    /// The address.
    pub fn get(self) -> std::net::SocketAddrV4 {
        self.0
    }
}

impl TryFrom<String> for ListenAddr {
    type Error = InvalidValue;
    fn try_from(text: String) -> Result<Self, InvalidValue> {
        match text.parse::<std::net::SocketAddrV4>() {
            Ok(a) if a.port() != 0 => Ok(ListenAddr(a)),
            Ok(_) => reject(format!("{text:?} has port 0")),
            Err(_) => reject(format!(
                "{text:?} is not an IPv4 address and port (e.g. 127.0.0.1:9464)"
            )),
        }
    }
}
scalar_newtype!(ListenAddr, "an address and port", |s| s.0.to_string());
