//! What the divert's rules and sets are made of: the chain prefix, the mark and its mask, the
//! record's capacity.

use std::fmt;

use serde::Deserialize;

use super::{reject, InvalidValue};

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
