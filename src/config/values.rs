//! The configuration's validated value types: each parses (and rejects, with a message naming
//! the value) in its own deserializer, so an invalid value is unrepresentable after loading.

use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Error text of a rejected value; serde_yaml adds the key path and position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidValue(String);

impl fmt::Display for InvalidValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InvalidValue {}

fn reject<T>(message: String) -> Result<T, InvalidValue> {
    Err(InvalidValue(message))
}

/// Implements `Deserialize` (through the type's `TryFrom<String>`) and `Display` for a validated
/// scalar newtype.
///
/// Not `#[serde(try_from = "String")]`: with that attribute the check runs after serde_yaml's
/// scalar deserializer has returned, so serde_yaml blames the enclosing mapping (`vips[0]` at the
/// line of its first key). Validating inside the visitor makes the error carry the value's own key
/// path and position (`vips[0].address`, line 3, column 14).
macro_rules! scalar_newtype {
    ($ty:ident, $expecting:literal, |$s:ident| $display:expr) => {
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct Visitor;
                impl serde::de::Visitor<'_> for Visitor {
                    type Value = $ty;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str($expecting)
                    }
                    fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<$ty, E> {
                        $ty::try_from(text.to_string()).map_err(E::custom)
                    }
                }
                // serde_yaml hands any plain scalar (80, 0x10, 10s) to deserialize_str as text.
                d.deserialize_str(Visitor)
            }
        }
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let $s = self;
                write!(f, "{}", $display)
            }
        }
        impl serde::Serialize for $ty {
            /// As written in the configuration (what `Display` prints, which parses back).
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
    };
}

/// Deserializes a sequence of `T` and validates the whole list with `U: TryFrom<Vec<T>>` inside the
/// visitor, for the same reason as [`scalar_newtype!`]: so the error names the list's own key.
fn deserialize_checked_seq<'de, D, T, U>(d: D, expecting: &'static str) -> Result<U, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
    U: TryFrom<Vec<T>, Error = InvalidValue>,
{
    struct Visitor<T, U>(&'static str, std::marker::PhantomData<(T, U)>);
    impl<'de, T, U> serde::de::Visitor<'de> for Visitor<T, U>
    where
        T: Deserialize<'de>,
        U: TryFrom<Vec<T>, Error = InvalidValue>,
    {
        type Value = U;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<U, A::Error> {
            let mut items = Vec::new();
            while let Some(item) = seq.next_element()? {
                items.push(item);
            }
            U::try_from(items).map_err(serde::de::Error::custom)
        }
    }
    d.deserialize_seq(Visitor(expecting, std::marker::PhantomData))
}

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

/// Parses "250ms", "30s", "5m", "1h": an unsigned integer and one unit.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, InvalidValue> {
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(digits_end);
    let bad = || {
        InvalidValue(format!(
            "{text:?} is not a duration; write a whole number and a unit: 250ms, 30s, 5m, 1h"
        ))
    };
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let millis_per_unit: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return Err(bad()),
    };
    let millis = n
        .checked_mul(millis_per_unit)
        .ok_or_else(|| InvalidValue(format!("{text:?} is too long a duration")))?;
    Ok(Duration::from_millis(millis))
}

/// A duration the way the configuration spells it (`0s`, `90s`, `5m`, `250ms`), so `parse_duration`
/// reads back what this writes.
pub fn fmt_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        "0s".into()
    } else if ms % 3_600_000 == 0 {
        format!("{}h", ms / 3_600_000)
    } else if ms % 60_000 == 0 {
        format!("{}m", ms / 60_000)
    } else if ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// A duration that may be zero ("0s" means "not at all").
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct HumanDuration(Duration);

impl HumanDuration {
    /// The duration.
    pub fn get(self) -> Duration {
        self.0
    }
}

impl TryFrom<String> for HumanDuration {
    type Error = InvalidValue;
    fn try_from(text: String) -> Result<Self, InvalidValue> {
        parse_duration(&text).map(HumanDuration)
    }
}
scalar_newtype!(
    HumanDuration,
    "a duration such as 250ms, 30s, 5m, 1h",
    |s| fmt_duration(s.0)
);

/// A duration that must be longer than zero (timeouts, intervals, deadlines).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct PositiveDuration(Duration);

impl PositiveDuration {
    /// The duration.
    pub fn get(self) -> Duration {
        self.0
    }
}

impl TryFrom<String> for PositiveDuration {
    type Error = InvalidValue;
    fn try_from(text: String) -> Result<Self, InvalidValue> {
        let d = parse_duration(&text)?;
        if d.is_zero() {
            return reject(format!("{text:?} is zero; this duration must be positive"));
        }
        Ok(PositiveDuration(d))
    }
}
scalar_newtype!(
    PositiveDuration,
    "a duration such as 250ms, 30s, 5m, 1h",
    |s| fmt_duration(s.0)
);

/// The socket-count polling interval, 10ms..=10s: faster burns the 2 cores the load balancer
/// needs, slower delays the failover by up to one interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct PollInterval(Duration);

impl PollInterval {
    /// Faster than this, the counting itself would compete with HAProxy for the CPU.
    pub const MIN: Duration = Duration::from_millis(10);
    /// Slower than this, a drain would notice its end too late to be worth measuring.
    pub const MAX: Duration = Duration::from_secs(10);

    /// The interval.
    pub fn get(self) -> Duration {
        self.0
    }
}

impl TryFrom<String> for PollInterval {
    type Error = InvalidValue;
    fn try_from(text: String) -> Result<Self, InvalidValue> {
        let d = parse_duration(&text)?;
        if d < PollInterval::MIN || d > PollInterval::MAX {
            return reject(format!("{text:?} is outside 10ms..=10s"));
        }
        Ok(PollInterval(d))
    }
}
scalar_newtype!(PollInterval, "a duration such as 100ms", |s| fmt_duration(
    s.0
));

/// Prefix of the agent's chains and sets: `[A-Za-z0-9_]{1,12}` starting with a letter, so that
/// `P-PRE` (chains, ≤ 28 chars) and `P-65535` (ipsets, ≤ 31 chars) always fit and need no quoting.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ChainPrefix(String);

impl ChainPrefix {
    /// Longest prefix accepted.
    pub const MAX_LEN: usize = 12;

    /// The prefix.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ChainPrefix {
    type Error = InvalidValue;
    fn try_from(text: String) -> Result<Self, InvalidValue> {
        let ok = (1..=Self::MAX_LEN).contains(&text.len())
            && text.starts_with(|c: char| c.is_ascii_alphabetic())
            && text.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !ok {
            return reject(format!(
                "{text:?} is not a valid prefix: 1..={} of A-Z a-z 0-9 _, starting with a letter",
                Self::MAX_LEN
            ));
        }
        Ok(ChainPrefix(text))
    }
}
scalar_newtype!(ChainPrefix, "a chain name prefix", |s| s.0);

fn parse_u32(text: &str) -> Option<u32> {
    match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

/// The packet mark put on diverted packets; not zero, because zero cannot be told apart from an
/// unmarked packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark(u32);

impl Mark {
    /// The mark value.
    pub fn get(self) -> u32 {
        self.0
    }
}

impl TryFrom<String> for Mark {
    type Error = InvalidValue;
    fn try_from(text: String) -> Result<Self, InvalidValue> {
        match parse_u32(&text) {
            Some(0) => {
                reject("0 is not a usable mark: it is the mark of every unmarked packet".into())
            }
            Some(v) => Ok(Mark(v)),
            None => reject(format!(
                "{text:?} is not a 32-bit number (decimal or 0x hex)"
            )),
        }
    }
}
scalar_newtype!(Mark, "a 32-bit mark", |s| format!("{:#010x}", s.0));

/// The mark bits the agent may change; not zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MarkMask(u32);

impl MarkMask {
    /// The mask.
    pub fn get(self) -> u32 {
        self.0
    }
}

impl TryFrom<String> for MarkMask {
    type Error = InvalidValue;
    fn try_from(text: String) -> Result<Self, InvalidValue> {
        match parse_u32(&text) {
            Some(0) => reject("0 is not a usable mask: the mark would own no bits".into()),
            Some(v) => Ok(MarkMask(v)),
            None => reject(format!(
                "{text:?} is not a 32-bit number (decimal or 0x hex)"
            )),
        }
    }
}
scalar_newtype!(MarkMask, "a 32-bit mask", |s| format!("{:#010x}", s.0));

/// How many diverted flows each VIP port's record holds, 1024..=16777216 (see
/// `plan::sets` for how the record grows to it and what it costs). Should it fill, a
/// new flow is not recorded: it is served locally until the drain is over, and dropped (counted,
/// reported; the client's retransmitted SYN reaches the new owner) after the seal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SetCapacity(u32);

impl SetCapacity {
    /// Smallest capacity accepted.
    pub const MIN: u32 = 1024;
    /// Largest capacity accepted.
    pub const MAX: u32 = 16_777_216;

    /// The capacity.
    pub fn get(self) -> u32 {
        self.0
    }
}

impl TryFrom<String> for SetCapacity {
    type Error = InvalidValue;
    fn try_from(text: String) -> Result<Self, InvalidValue> {
        match text.parse::<u64>() {
            Ok(n) if (u64::from(Self::MIN)..=u64::from(Self::MAX)).contains(&n) => {
                Ok(SetCapacity(n as u32))
            }
            Ok(n) => reject(format!("{n} is outside {}..={}", Self::MIN, Self::MAX)),
            Err(_) => reject(format!("{text:?} is not a whole number")),
        }
    }
}
scalar_newtype!(SetCapacity, "a whole number", |s| s.0);

/// A count of consecutive failures, 1..=100.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailureCount(u32);

impl FailureCount {
    /// The count.
    pub fn get(self) -> u32 {
        self.0
    }
}

impl TryFrom<String> for FailureCount {
    type Error = InvalidValue;
    fn try_from(text: String) -> Result<Self, InvalidValue> {
        match text.parse::<u32>() {
            Ok(n @ 1..=100) => Ok(FailureCount(n)),
            Ok(n) => reject(format!("{n} is outside 1..=100")),
            Err(_) => reject(format!("{text:?} is not a whole number")),
        }
    }
}
scalar_newtype!(FailureCount, "a whole number", |s| s.0);

/// An absolute directory path (the agent may run with any working directory).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateDir(PathBuf);

impl StateDir {
    /// The path.
    pub fn as_path(&self) -> &Path {
        &self.0
    }
}

impl TryFrom<String> for StateDir {
    type Error = InvalidValue;
    fn try_from(text: String) -> Result<Self, InvalidValue> {
        if text.contains('\0') {
            return reject(format!("{text:?} contains a NUL byte"));
        }
        if !text.starts_with('/') {
            return reject(format!("{text:?} is not an absolute path"));
        }
        Ok(StateDir(PathBuf::from(text)))
    }
}
scalar_newtype!(StateDir, "an absolute path", |s| s.0.display());

/// A value for keepalived's track file that does not mean FAULT: -253..=0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TrackValue(i32);

impl TrackValue {
    /// The value.
    pub fn get(self) -> i32 {
        self.0
    }
}

impl TryFrom<String> for TrackValue {
    type Error = InvalidValue;
    fn try_from(text: String) -> Result<Self, InvalidValue> {
        match text.trim().parse::<i32>() {
            Ok(v) if (-253..=0).contains(&v) => Ok(TrackValue(v)),
            Ok(v) => reject(format!("{v} is outside -253..=0 (-254 and below mean FAULT to keepalived; a positive value would raise the priority)")),
            Err(_) => reject(format!("{text:?} is not an integer")),
        }
    }
}
scalar_newtype!(TrackValue, "an integer in -253..=0", |s| s.0);

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
