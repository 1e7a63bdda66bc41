//! Durations as the configuration spells them (`250ms`, `30s`, `5m`, `1h`).

use std::fmt;
use std::time::Duration;

use serde::Deserialize;

use super::{reject, InvalidValue};

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
