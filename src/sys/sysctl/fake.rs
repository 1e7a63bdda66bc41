//! A recording fake of [`Sysctls`], for tests without root.

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::*;

/// One call the fake saw, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SysctlCall {
    /// `read(key)`
    Read(SysctlKey),
    /// `write(key, value)`
    Write(SysctlKey, String),
}

#[derive(Debug, Default)]
struct FakeSysctlState {
    values: BTreeMap<SysctlKey, String>,
    calls: Vec<SysctlCall>,
    refuse: BTreeMap<SysctlKey, io::ErrorKind>,
}

/// A recording fake: holds scripted values, records every call, and answers like the kernel
/// (absent key → [`SysctlError::NotFound`]; a scripted refusal → [`SysctlError::Write`]).
#[derive(Debug, Default)]
pub struct FakeSysctl {
    state: Mutex<FakeSysctlState>,
}

impl FakeSysctl {
    /// An empty fake: every key is absent.
    pub fn new() -> Self {
        Self::default()
    }

    /// Scripts an existing key with its current value.
    pub fn with(self, key: &str, value: &str) -> Self {
        let key = SysctlKey::parse(key).expect("fake sysctl key must be valid");
        self.lock().values.insert(key, value.to_owned());
        self
    }

    /// Makes writes to `key` fail with an I/O error of this kind (e.g. PermissionDenied).
    pub fn refuse_writes(self, key: &str, kind: io::ErrorKind) -> Self {
        let key = SysctlKey::parse(key).expect("fake sysctl key must be valid");
        self.lock().refuse.insert(key, kind);
        self
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<SysctlCall> {
        self.lock().calls.clone()
    }

    /// The current value of a key, without recording a call.
    pub fn value(&self, key: &str) -> Option<String> {
        let key = SysctlKey::parse(key).ok()?;
        self.lock().values.get(&key).cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FakeSysctlState> {
        // A panicking test thread must not hide the recorded calls from the others.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Sysctls for FakeSysctl {
    fn read(&self, key: &SysctlKey) -> Result<String, SysctlError> {
        let mut st = self.lock();
        st.calls.push(SysctlCall::Read(key.clone()));
        st.values
            .get(key)
            .cloned()
            .ok_or_else(|| SysctlError::NotFound { key: key.clone() })
    }

    fn write(&self, key: &SysctlKey, value: &str) -> Result<(), SysctlError> {
        let mut st = self.lock();
        st.calls
            .push(SysctlCall::Write(key.clone(), value.to_owned()));
        validate_value(key, value)?;
        if let Some(kind) = st.refuse.get(key) {
            return Err(SysctlError::Write {
                key: key.clone(),
                value: value.to_owned(),
                source: io::Error::from(*kind),
            });
        }
        match st.values.get_mut(key) {
            Some(v) => {
                *v = value.to_owned();
                Ok(())
            }
            None => Err(SysctlError::NotFound { key: key.clone() }),
        }
    }
}
