//! The agent's own settings: failure counts, the state directory, keepalived's track value.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{reject, InvalidValue};

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
