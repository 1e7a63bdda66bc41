//! The state directory: a lock that serialises every command that changes the host, and journals
//! that record each host change *before* it is made, with what undoes it, so that a run that
//! crashed (or was killed with SIGKILL, or lost power) can be undone by `undrain`/`release` or by
//! the next start.
//!
//! Journals are small JSON documents rewritten atomically (write to a temporary file, fsync,
//! rename, fsync the directory), so a crash leaves either the old or the new version, never half.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

/// Errors of the state directory.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// The directory could not be created or used.
    #[error("state directory {path}: {source}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// Another drain-agent process holds the lock.
    #[error("another drain-agent operation is running (pid {holder}, lock {path})")]
    Busy {
        /// The lock file.
        path: PathBuf,
        /// Pid written in the lock file by its holder ("?" if unreadable).
        holder: String,
    },
    /// The state directory could be changed by someone other than root (or this daemon's
    /// user): the journals in it decide what the agent undoes, as root.
    #[error("state directory {path} is not safe to use: {why}")]
    Unsafe {
        /// The directory.
        path: PathBuf,
        /// What is wrong (the owner).
        why: String,
    },
    /// A journal exists but does not hold what the agent writes: truncated or damaged. What it
    /// recorded is unknown, so nothing that depends on it (drain, undrain, start-up repair) may
    /// run until an operator has repaired it.
    #[error("journal {path} is corrupt ({why}); drains are refused until it is repaired: undo by hand what it still shows, move it aside, then run `drain-agent undrain` (it finds a divert by its chain names)")]
    Corrupt {
        /// The journal file.
        path: PathBuf,
        /// What was found instead of a journal.
        why: String,
    },
    /// A journal could not be read or written.
    #[error("journal {path}: {cause}")]
    File {
        /// The journal file.
        path: PathBuf,
        /// Cause.
        cause: String,
    },
}

/// One change the agent makes to the host, with enough data to undo it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Change {
    /// The divert: our ipsets, our mangle chains and the jumps into them (all named with the
    /// prefix), and the mangle table itself if it did not exist before (iptables-nft creates it).
    Divert {
        /// The chain-name prefix the agent owns.
        prefix: String,
        /// Drop the mangle table when removing the divert (if it is empty then).
        drop_mangle_table: bool,
    },
    /// The tracked interface was set down to make keepalived fail over. Not undone by the
    /// drain's cleanup (the node stays out of service) but by `undrain`.
    LinkDown {
        /// Interface name.
        ifname: String,
    },
    /// FAULT (-254) was written to keepalived's track file to make it fail over. Like
    /// `LinkDown`, kept after the drain and undone by `undrain`.
    TrackFault {
        /// The track file.
        path: std::path::PathBuf,
    },
    /// A `local ADDR/32 dev lo` route so this node accepts diverted traffic for a VIP.
    LocalRoute {
        /// The VIP.
        addr: Ipv4Addr,
    },
    /// A sysctl value we changed, with the value it had.
    Sysctl {
        /// Key relative to /proc/sys, e.g. `net/ipv4/conf/eth0/arp_ignore`.
        key: String,
        /// The value before our change.
        previous: String,
    },
    /// Draining node: the peer's agent was asked to return this node's packets (a hand-off).
    /// Undone by telling it the hand-off is over.
    Handoff {
        /// The peer's address.
        peer: Ipv4Addr,
        /// Its MAC, as this node's divert guard names it.
        #[serde(default)]
        peer_mac: String,
        /// Unix time (s) at which the hand-off ends even if connections remain.
        until: u64,
    },
    /// Peer side of a hand-off: this node returns the packets of `peer`'s connections to it
    /// (the return path is the `Divert` entry under the return prefix that follows).
    Returning {
        /// The node handing off.
        peer: Ipv4Addr,
        /// Its MAC, as the return path's loop guard names it.
        peer_mac: String,
        /// Unix time (s) after which the return path goes even if the peer never said so.
        until: u64,
    },
}

impl std::fmt::Display for Change {
    /// What an operator reads about a recorded change.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Change::Divert {
                prefix,
                drop_mangle_table,
            } => write!(
                f,
                "divert (chains and sets {prefix}-*{})",
                if *drop_mangle_table {
                    ", and the mangle table it created"
                } else {
                    ""
                }
            ),
            Change::LinkDown { ifname } => write!(f, "tracked interface {ifname} down"),
            Change::TrackFault { path } => write!(f, "track file {} = FAULT", path.display()),
            Change::LocalRoute { addr } => write!(f, "local route {addr}/32 dev lo"),
            Change::Sysctl { key, previous } => write!(f, "sysctl {key} (was {previous})"),
            Change::Handoff { peer, .. } => {
                write!(f, "hand-off: {peer} returns this node's connections")
            }
            Change::Returning { peer, .. } => {
                write!(f, "hand-off from {peer}: its connections returned to it")
            }
        }
    }
}

impl Change {
    /// True for the changes a drain keeps after it finished (the node stays out of service until
    /// `undrain`).
    pub fn is_maintenance_state(&self) -> bool {
        matches!(self, Change::LinkDown { .. } | Change::TrackFault { .. })
    }
}

/// Who put the node in maintenance, when, and why (`maintenance.json`; see
/// `ops::maintenance`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Maintenance {
    /// Why, as the operator wrote it.
    pub reason: String,
    /// Who: the user (`SUDO_USER`, `USER`, or the uid) and where the request came from.
    pub by: String,
    /// Unix time (s) the node went into maintenance.
    pub since: u64,
    /// Whether going into maintenance drained the node: it held the VIPs then (a node that held
    /// none was only kept out of elections). Automation resuming a rollout reads it to know where
    /// the VIPs belong.
    #[serde(default)]
    pub drained: bool,
}

/// keepalived's VRRP state as the agent last saw it (notify or the FIFO; `vrrp.json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VrrpSeen {
    /// MASTER, BACKUP, FAULT, STOP, DELETED.
    pub state: String,
    /// The instance or group.
    pub instance: String,
    /// Unix time (s) it was seen.
    pub at: u64,
}

/// A journal entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Seconds since the epoch when it was recorded.
    pub at: u64,
    /// Pid of the process that recorded it.
    pub pid: u32,
    /// The change.
    #[serde(flatten)]
    pub change: Change,
}

/// A journal: the list of changes one role (drain, accept) made and has not undone yet.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    entries: Vec<Entry>,
}

impl Journal {
    /// Opens (or starts) the journal at `path`.
    ///
    /// A missing file is an empty journal; an empty *file* is not: every write is a complete
    /// JSON array (at least `[]`) renamed into place, so zero bytes mean the file was truncated
    /// (a crash on a file system that lost the data, or a hand edit), and what it recorded is
    /// lost; taking it as empty would let the next drain forget changes still on the host.
    pub fn open(path: &Path) -> Result<Journal, JournalError> {
        let corrupt = |why: String| JournalError::Corrupt {
            path: path.to_path_buf(),
            why,
        };
        let entries = match fs::read(path) {
            Ok(bytes) if bytes.is_empty() => {
                return Err(corrupt(
                    "0 bytes, where the agent always writes at least []".into(),
                ))
            }
            Ok(bytes) => {
                serde_json::from_slice(&bytes).map_err(|e| corrupt(format!("unreadable: {e}")))?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => {
                return Err(JournalError::File {
                    path: path.to_path_buf(),
                    cause: e.to_string(),
                })
            }
        };
        Ok(Journal {
            path: path.to_path_buf(),
            entries,
        })
    }

    /// The recorded changes, oldest first.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// True if nothing is recorded.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Records a change durably; call it *before* making the change. Recording the same change
    /// twice is a no-op (undo is idempotent anyway).
    pub fn record(&mut self, change: Change) -> Result<(), JournalError> {
        if self.entries.iter().any(|e| e.change == change) {
            return Ok(());
        }
        self.entries.push(Entry {
            at: now_secs(),
            pid: std::process::id(),
            change,
        });
        self.persist()
    }

    /// Forgets a change once it has been undone.
    pub fn forget(&mut self, change: &Change) -> Result<(), JournalError> {
        let before = self.entries.len();
        self.entries.retain(|e| &e.change != change);
        if self.entries.len() != before {
            self.persist()?;
        }
        Ok(())
    }

    /// Forgets every entry (what they record was undone, or never made).
    pub fn forget_all(&mut self) -> Result<(), JournalError> {
        if !self.entries.is_empty() {
            self.entries.clear();
            self.persist()?;
        }
        Ok(())
    }

    fn persist(&self) -> Result<(), JournalError> {
        let text = serde_json::to_vec_pretty(&self.entries).expect("journal entries serialise");
        write_atomic(&self.path, &text).map_err(|e| JournalError::File {
            path: self.path.clone(),
            cause: e.to_string(),
        })
    }
}

/// Writes a state file atomically, readable by root only.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    crate::sys::fs::write_atomic(path, bytes, 0o600)
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// How old a temporary file in the state directory must be for the lock's taker to remove it as
/// left by a killed writer (a write takes milliseconds).
const STALE_TEMPORARY: std::time::Duration = std::time::Duration::from_secs(60);

/// How often `lock_wait` tries the lock again.
const LOCK_RETRY: std::time::Duration = std::time::Duration::from_millis(50);

/// The agent's state directory.
#[derive(Clone, Debug)]
pub struct StateDir {
    path: PathBuf,
}

/// Held while a command that changes the host runs; released on drop (and by the kernel if the
/// process dies, so a crashed run never blocks the next one).
pub struct Lock {
    _flock: Flock<File>,
}

impl StateDir {
    /// Creates the directory (mode 0700) if needed, and checks that only root (or this
    /// process's user) owns it; an existing directory others can read or enter is made 0700.
    ///
    /// The mode is given to `mkdir(2)` itself: `create_dir_all` creates with 0777 minus the
    /// umask (0755 under the usual 022), and the old after-the-fact check looked only at the
    /// write bits, so 0755 stayed.
    pub fn open(path: &Path) -> Result<StateDir, JournalError> {
        use std::os::unix::fs::{DirBuilderExt, MetadataExt};
        let err = |source| JournalError::Dir {
            path: path.to_path_buf(),
            source,
        };
        // create_dir_all on an existing file fails with EEXIST, printed as "File exists", which
        // reads as if the directory were there and fine: name the real problem.
        if path.exists() && !path.is_dir() {
            return Err(err(std::io::Error::from_raw_os_error(libc::ENOTDIR)));
        }
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs::create_dir_all(parent).map_err(err)?;
        }
        match fs::DirBuilder::new().mode(0o700).create(path) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(err(e)),
            _ => {}
        }
        let meta = fs::metadata(path).map_err(err)?;
        let me = nix::unistd::geteuid().as_raw();
        if meta.uid() != 0 && meta.uid() != me {
            return Err(JournalError::Unsafe {
                path: path.to_path_buf(),
                why: format!("owned by uid {}, not root; chown root it", meta.uid()),
            });
        }
        if meta.permissions().mode() & 0o077 != 0 {
            fs::set_permissions(path, fs::Permissions::from_mode(0o700)).map_err(err)?;
        }
        Ok(StateDir {
            path: path.to_path_buf(),
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Takes the exclusive lock without waiting.
    pub fn lock(&self) -> Result<Lock, JournalError> {
        let path = self.path.join("lock");
        let err = |source| JournalError::Dir {
            path: path.clone(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(err)?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(mut flock) => {
                flock.set_len(0).map_err(err)?;
                write!(flock, "{}", std::process::id()).map_err(err)?;
                // Every journal write happens under this lock, so a temporary file older than
                // a write can take was left by a writer that was killed: sweep it now.
                match crate::sys::fs::remove_stale_temporaries(&self.path, STALE_TEMPORARY) {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(
                        removed = n,
                        "state directory {}: removed {n} temporary file(s) a killed write left",
                        self.path.display()
                    ),
                    Err(e) => tracing::warn!(
                        "state directory {}: cannot sweep temporary files: {e}",
                        self.path.display()
                    ),
                }
                Ok(Lock { _flock: flock })
            }
            Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = if holder.trim().is_empty() {
                    "?".to_string()
                } else {
                    holder.trim().to_string()
                };
                Err(JournalError::Busy { path, holder })
            }
            Err((_, e)) => Err(JournalError::Dir {
                path,
                source: e.into(),
            }),
        }
    }

    /// Takes the exclusive lock, waiting up to `wait` for its holder to finish.
    pub fn lock_wait(&self, wait: std::time::Duration) -> Result<Lock, JournalError> {
        let until = std::time::Instant::now() + wait;
        loop {
            match self.lock() {
                Err(JournalError::Busy { .. }) if std::time::Instant::now() < until => {
                    std::thread::sleep(LOCK_RETRY)
                }
                other => return other,
            }
        }
    }

    /// Pid of the process holding the lock, if any (for `status`).
    pub fn lock_holder(&self) -> Option<String> {
        let path = self.path.join("lock");
        let file = OpenOptions::new().read(true).write(true).open(&path).ok()?;
        match Flock::lock(file, FlockArg::LockSharedNonblock) {
            Ok(_) => None,
            Err((mut f, _)) => {
                let mut s = String::new();
                let _ = f.read_to_string(&mut s);
                Some(s.trim().to_string())
            }
        }
    }

    /// The journal of the draining side (divert, failover).
    pub fn drain_journal(&self) -> Result<Journal, JournalError> {
        Journal::open(&self.path.join("drain-journal.json"))
    }

    /// The journal of the accepting side (local routes, ARP sysctls).
    pub fn accept_journal(&self) -> Result<Journal, JournalError> {
        Journal::open(&self.path.join("accept-journal.json"))
    }

    /// The journal of the peer's side of a hand-off (the return path).
    pub fn return_journal(&self) -> Result<Journal, JournalError> {
        Journal::open(&self.path.join("return-journal.json"))
    }

    /// The maintenance record (`maintenance.json`), if the node is in maintenance.
    pub fn maintenance(&self) -> Result<Option<Maintenance>, JournalError> {
        let path = self.path.join("maintenance.json");
        match fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text)
                .map(Some)
                .map_err(|e| JournalError::File {
                    path,
                    cause: format!("unreadable ({e})"),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(JournalError::File {
                path,
                cause: e.to_string(),
            }),
        }
    }

    /// Records (`Some`) or clears (`None`) the maintenance.
    pub fn set_maintenance(&self, m: Option<&Maintenance>) -> Result<(), JournalError> {
        let path = self.path.join("maintenance.json");
        let result = match m {
            Some(m) => write_atomic(
                &path,
                serde_json::to_string_pretty(m)
                    .expect("a record serialises")
                    .as_bytes(),
            ),
            None => match fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            },
        };
        result.map_err(|e| JournalError::File {
            path,
            cause: e.to_string(),
        })
    }

    /// Records the VRRP state keepalived just notified (best effort: the notification's own
    /// work matters more than its record).
    pub fn record_vrrp(&self, state: &str, instance: &str) {
        let seen = VrrpSeen {
            state: state.to_string(),
            instance: instance.to_string(),
            at: now_secs(),
        };
        if let Ok(text) = serde_json::to_string(&seen) {
            let _ = write_atomic(&self.path.join("vrrp.json"), text.as_bytes());
        }
    }

    /// The VRRP state last recorded, if any.
    pub fn last_vrrp(&self) -> Option<VrrpSeen> {
        let text = fs::read_to_string(self.path.join("vrrp.json")).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Path of the record of the last drain.
    pub fn last_run_path(&self) -> PathBuf {
        self.path.join("last-drain.json")
    }

    /// Records the outcome of the last drain (best effort: the drain's own result matters more
    /// than its record).
    pub fn record_last_drain(&self, outcome: &impl serde::Serialize) {
        if let Ok(text) = serde_json::to_string_pretty(outcome) {
            let _ = write_atomic(&self.last_run_path(), text.as_bytes());
        }
    }

    /// The record of the last drain, if there is one that parses.
    pub fn last_drain(&self) -> Option<serde_json::Value> {
        std::fs::read(self.last_run_path())
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
    }
}

#[cfg(test)]
mod tests;
