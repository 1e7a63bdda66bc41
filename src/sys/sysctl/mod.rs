//! Reading and writing kernel parameters under `/proc/sys`, with validated keys.
//!
//! Kernel fact: the `net.*` part of `/proc/sys` is per network namespace, and the namespace is
//! chosen by the *calling thread* (`current->nsproxy->net_ns`) when the path is looked up — not
//! by the process, not by the mount. So a thread that `setns()`'d into a namespace (see
//! `in_netns` in the test-support crate) reads and writes that namespace's values through the ordinary
//! `/proc/sys` path. (`/proc/self/net/...` is different: it follows the thread-group leader;
//! `/proc/thread-self/net/...` follows the calling thread. There is no `/proc/thread-self/sys`.)
//! The privileged tests in `tests/netops_ns.rs` check all of this on the running kernel.
//!
//! docs/kernel-facts.md#k7: every sysctl the agent changes must be recorded and restored, which is
//! why [`Sysctls::swap`] hands back the previous value.

use std::fmt;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

#[cfg(any(test, feature = "test-util"))]
mod fake;
#[cfg(any(test, feature = "test-util"))]
pub use fake::{FakeSysctl, SysctlCall};

use thiserror::Error;

/// Where the kernel exposes its parameters.
pub const PROC_SYS: &str = "/proc/sys";

/// Errors of sysctl access; each names the key.
#[derive(Debug, Error)]
pub enum SysctlError {
    /// The key is not a safe relative path below /proc/sys.
    #[error("invalid sysctl key {key:?}: {reason}")]
    InvalidKey {
        /// The key as given.
        key: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// The value cannot be written as one sysctl value.
    #[error("invalid value {value:?} for sysctl {key}: {reason}")]
    InvalidValue {
        /// The key.
        key: SysctlKey,
        /// The rejected value.
        value: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// The key does not exist in this namespace (for example the interface is absent here).
    #[error("sysctl {key} does not exist in this network namespace")]
    NotFound {
        /// The key.
        key: SysctlKey,
    },
    /// Reading failed.
    #[error("cannot read sysctl {key}: {source}")]
    Read {
        /// The key.
        key: SysctlKey,
        /// The I/O error.
        source: io::Error,
    },
    /// Writing failed (EINVAL here means the kernel rejected the value).
    #[error("cannot write {value:?} to sysctl {key}: {source}")]
    Write {
        /// The key.
        key: SysctlKey,
        /// The value that was refused.
        value: String,
        /// The I/O error.
        source: io::Error,
    },
}

impl SysctlError {
    /// Whether the kernel refused for lack of privilege (EPERM/EACCES), by errno.
    pub fn is_permission(&self) -> bool {
        match self {
            SysctlError::Read { source, .. } | SysctlError::Write { source, .. } => {
                source.kind() == io::ErrorKind::PermissionDenied
                    || matches!(source.raw_os_error(), Some(libc::EPERM | libc::EACCES))
            }
            _ => false,
        }
    }
}

/// A validated sysctl key in its `/proc/sys` path form, e.g. `net/ipv4/conf/eth0.100/arp_ignore`.
///
/// Parsing follows procps `sysctl`: if the first separator in the key is a `.`, the key is in
/// dotted form and `.` and `/` swap roles (`net.ipv4.conf.eth0/100.arp_ignore` names interface
/// `eth0.100`); otherwise it is already a path and dots are kept (interface names may contain
/// dots, the kernel allows them). Rejected: empty keys or components, absolute paths, `.`/`..`
/// components, NUL and whitespace — so a key can never leave /proc/sys.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SysctlKey(String);

impl SysctlKey {
    /// Parses and validates a key in dotted or slash form.
    pub fn parse(key: &str) -> Result<Self, SysctlError> {
        let invalid = |reason| SysctlError::InvalidKey {
            key: key.to_owned(),
            reason,
        };
        if key.is_empty() {
            return Err(invalid("empty"));
        }
        if key.starts_with('/') {
            return Err(invalid(
                "absolute paths are not keys; give the part below /proc/sys",
            ));
        }
        if key.chars().any(|c| c == '\0' || c.is_whitespace()) {
            return Err(invalid("contains NUL or whitespace"));
        }
        let dotted = key.find(['.', '/']).map(|i| key.as_bytes()[i]) == Some(b'.');
        let path: String = if dotted {
            key.chars()
                .map(|c| match c {
                    '.' => '/',
                    '/' => '.',
                    c => c,
                })
                .collect()
        } else {
            key.to_owned()
        };
        for part in path.split('/') {
            match part {
                "" => return Err(invalid("empty path component")),
                "." | ".." => return Err(invalid("'.' and '..' components are not allowed")),
                _ => {}
            }
        }
        Ok(SysctlKey(path))
    }

    /// Per-interface IPv4 key `net/ipv4/conf/<ifname>/<name>` (the interface name is one path
    /// component, dots included).
    pub fn ipv4_conf(ifname: &str, name: &str) -> Result<Self, SysctlError> {
        if ifname.contains('/') || name.contains('/') {
            return Err(SysctlError::InvalidKey {
                key: format!("net/ipv4/conf/{ifname}/{name}"),
                reason: "interface and parameter names cannot contain '/'",
            });
        }
        Self::parse(&format!("net/ipv4/conf/{ifname}/{name}"))
    }

    /// The key in path form, relative to /proc/sys.
    pub fn as_path_str(&self) -> &str {
        &self.0
    }

    /// The full path below `root` (normally [`PROC_SYS`]).
    pub fn path_under(&self, root: &Path) -> PathBuf {
        root.join(&self.0)
    }
}

impl fmt::Display for SysctlKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for SysctlKey {
    type Err = SysctlError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// Reads and writes sysctls. Implemented by [`ProcSysctl`] (the kernel) and `FakeSysctl` (tests only).
///
/// Synchronous on purpose: a /proc/sys access is a few microseconds of in-kernel work. It acts
/// on the network namespace of the calling thread (see the module docs).
pub trait Sysctls: Send + Sync {
    /// Current value, without the trailing newline (multi-value keys keep their inner tabs).
    fn read(&self, key: &SysctlKey) -> Result<String, SysctlError>;
    /// Sets a value.
    fn write(&self, key: &SysctlKey, value: &str) -> Result<(), SysctlError>;
    /// Sets a value and returns the previous one, for the restore list (docs/kernel-facts.md#k7).
    fn swap(&self, key: &SysctlKey, value: &str) -> Result<String, SysctlError> {
        let old = self.read(key)?;
        self.write(key, value)?;
        Ok(old)
    }
}

/// Checks that a value is one line (the kernel parses only up to the first newline and would
/// silently ignore the rest).
fn validate_value(key: &SysctlKey, value: &str) -> Result<(), SysctlError> {
    let invalid = |reason| SysctlError::InvalidValue {
        key: key.clone(),
        value: value.to_owned(),
        reason,
    };
    if value.is_empty() {
        return Err(invalid("empty"));
    }
    if value.contains(['\n', '\0']) {
        return Err(invalid("contains a newline or NUL"));
    }
    Ok(())
}

/// The real adapter: files under a /proc/sys root.
#[derive(Debug, Clone)]
pub struct ProcSysctl {
    root: PathBuf,
}

impl Default for ProcSysctl {
    fn default() -> Self {
        Self::new()
    }
}

impl ProcSysctl {
    /// Adapter over the kernel's /proc/sys.
    pub fn new() -> Self {
        ProcSysctl {
            root: PathBuf::from(PROC_SYS),
        }
    }

    /// Adapter over another directory laid out like /proc/sys (for tests without root).
    pub fn with_root(root: impl Into<PathBuf>) -> Self {
        ProcSysctl { root: root.into() }
    }
}

impl Sysctls for ProcSysctl {
    fn read(&self, key: &SysctlKey) -> Result<String, SysctlError> {
        match std::fs::read_to_string(key.path_under(&self.root)) {
            Ok(s) => Ok(s.strip_suffix('\n').unwrap_or(&s).to_owned()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(SysctlError::NotFound { key: key.clone() })
            }
            Err(source) => Err(SysctlError::Read {
                key: key.clone(),
                source,
            }),
        }
    }

    fn write(&self, key: &SysctlKey, value: &str) -> Result<(), SysctlError> {
        validate_value(key, value)?;
        // No O_CREAT and no truncation: a sysctl file always exists if the key does, and the
        // kernel takes the whole value from one write(2) at offset 0.
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(key.path_under(&self.root));
        let mut file = match file {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(SysctlError::NotFound { key: key.clone() })
            }
            Err(source) => {
                return Err(SysctlError::Write {
                    key: key.clone(),
                    value: value.to_owned(),
                    source,
                })
            }
        };
        file.write_all(format!("{value}\n").as_bytes())
            .map_err(|source| SysctlError::Write {
                key: key.clone(),
                value: value.to_owned(),
                source,
            })
    }
}

/// One recorded call on [`FakeSysctl`].
#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> String {
        SysctlKey::parse(s).unwrap().as_path_str().to_owned()
    }

    #[test]
    fn slash_form_keeps_dots_in_interface_names() {
        assert_eq!(
            key("net/ipv4/conf/eth0.100/arp_ignore"),
            "net/ipv4/conf/eth0.100/arp_ignore"
        );
    }

    #[test]
    fn dotted_form_swaps_like_procps() {
        assert_eq!(key("net.ipv4.ip_forward"), "net/ipv4/ip_forward");
        assert_eq!(
            key("net.ipv4.conf.eth0/100.arp_ignore"),
            "net/ipv4/conf/eth0.100/arp_ignore"
        );
    }

    #[test]
    fn keys_that_could_leave_proc_sys_are_rejected() {
        for bad in [
            "",
            "/proc/sys/net/ipv4/ip_forward",
            "net/../../etc/passwd",
            "net/./ipv4",
            "net//ipv4",
            "net/ipv4/",
            "net.ipv4..ip_forward",
            "net/ipv4/conf/a b/x",
            "net/ipv4\0/x",
            "..",
        ] {
            assert!(
                matches!(SysctlKey::parse(bad), Err(SysctlError::InvalidKey { .. })),
                "{bad:?} accepted"
            );
        }
        assert!(SysctlKey::ipv4_conf("a/b", "arp_ignore").is_err());
        assert_eq!(
            SysctlKey::ipv4_conf("eth0.5", "arp_announce")
                .unwrap()
                .as_path_str(),
            "net/ipv4/conf/eth0.5/arp_announce"
        );
    }

    #[test]
    fn proc_adapter_reads_writes_and_names_missing_keys() {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("net/ipv4/conf/eth0.7");
        std::fs::create_dir_all(&conf).unwrap();
        std::fs::write(conf.join("arp_ignore"), "0\n").unwrap();
        let sys = ProcSysctl::with_root(dir.path());
        let k = SysctlKey::parse("net/ipv4/conf/eth0.7/arp_ignore").unwrap();
        assert_eq!(sys.read(&k).unwrap(), "0");
        assert_eq!(sys.swap(&k, "1").unwrap(), "0");
        assert_eq!(sys.read(&k).unwrap(), "1");
        let missing = SysctlKey::parse("net/ipv4/conf/nope/arp_ignore").unwrap();
        match sys.write(&missing, "1") {
            Err(e @ SysctlError::NotFound { .. }) => {
                assert!(e.to_string().contains("net/ipv4/conf/nope/arp_ignore"))
            }
            other => panic!("expected NotFound, got {other:?}"),
        }
        assert!(matches!(
            sys.read(&missing),
            Err(SysctlError::NotFound { .. })
        ));
        assert!(matches!(
            sys.write(&k, "1\n2"),
            Err(SysctlError::InvalidValue { .. })
        ));
    }

    #[test]
    fn fake_records_calls_and_answers_like_the_kernel() {
        let fake = FakeSysctl::new()
            .with("net/ipv4/conf/eth0/arp_ignore", "0")
            .refuse_writes(
                "net/ipv4/conf/all/rp_filter",
                io::ErrorKind::PermissionDenied,
            )
            .with("net/ipv4/conf/all/rp_filter", "2");
        let k = SysctlKey::parse("net.ipv4.conf.eth0.arp_ignore").unwrap();
        assert_eq!(fake.swap(&k, "1").unwrap(), "0");
        assert_eq!(
            fake.value("net/ipv4/conf/eth0/arp_ignore").as_deref(),
            Some("1")
        );
        let rp = SysctlKey::parse("net/ipv4/conf/all/rp_filter").unwrap();
        assert!(matches!(
            fake.write(&rp, "0"),
            Err(SysctlError::Write { .. })
        ));
        assert_eq!(
            fake.value("net/ipv4/conf/all/rp_filter").as_deref(),
            Some("2")
        );
        let absent = SysctlKey::parse("net/ipv4/conf/eth9/arp_ignore").unwrap();
        assert!(matches!(
            fake.read(&absent),
            Err(SysctlError::NotFound { .. })
        ));
        assert_eq!(
            fake.calls(),
            vec![
                SysctlCall::Read(k.clone()),
                SysctlCall::Write(k, "1".into()),
                SysctlCall::Write(rp, "0".into()),
                SysctlCall::Read(absent),
            ]
        );
    }
}
