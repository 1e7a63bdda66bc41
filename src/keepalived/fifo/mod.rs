//! The lines of a `vrrp_notify_fifo`, and a reader that follows the FIFO across keepalived's
//! restarts and reloads.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use thiserror::Error;
use tokio::net::unix::pipe;

use super::notify::{name_problem, parse_priority, NotifyArgs, VrrpKind, VrrpState};
use super::{quoted, QUOTE_MAX};

/// An instance event on the FIFO that is not a state change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum InstanceEvent {
    /// A master received an advert with a lower priority than its own.
    MasterRxLowerPri,
    /// A master's effective priority changed (`notify_priority_changes`).
    MasterPriority,
    /// A backup's effective priority changed (`notify_priority_changes`).
    BackupPriority,
}

impl InstanceEvent {
    fn from_word(word: &str) -> Option<InstanceEvent> {
        match word {
            "MASTER_RX_LOWER_PRI" => Some(InstanceEvent::MasterRxLowerPri),
            "MASTER_PRIORITY" => Some(InstanceEvent::MasterPriority),
            "BACKUP_PRIORITY" => Some(InstanceEvent::BackupPriority),
            _ => None,
        }
    }
}

/// One line read from keepalived's notify FIFO.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "line", rename_all = "kebab-case")]
pub enum FifoLine {
    /// An instance or sync group entered a state (the same notice a `notify` script gets; the
    /// priority is always present on the FIFO).
    State(NotifyArgs),
    /// An instance event that does not change its state.
    Event {
        /// Instance name.
        name: String,
        /// What happened.
        event: InstanceEvent,
        /// Effective priority at the time.
        priority: u8,
    },
    /// A line about something other than VRRP (the checker's `VS`/`RS` lines on a shared
    /// `notify_fifo`, or a type a later keepalived adds): not for the agent.
    Other {
        /// The line's first word.
        kind: String,
    },
}

/// A FIFO line that starts like a VRRP notice but does not follow the format.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("keepalived FIFO line {line}: {reason}")]
pub struct FifoLineError {
    /// The line, quoted.
    pub line: String,
    /// What is wrong with it.
    pub reason: String,
}

impl FifoLine {
    /// Parses one line (with or without its newline) of a `vrrp_notify_fifo` or `notify_fifo`.
    ///
    /// Lines whose first word is not `INSTANCE` or `GROUP` are [`FifoLine::Other`], not errors:
    /// the shared FIFO carries checker lines too. The name is taken between the first and the
    /// last quote before the two trailing words, so a name with spaces parses.
    pub fn parse(line: &str) -> Result<FifoLine, FifoLineError> {
        let line = line.strip_suffix('\n').unwrap_or(line);
        let line = line.strip_suffix('\r').unwrap_or(line);
        let err = |reason: &str| FifoLineError {
            line: quoted(line),
            reason: reason.to_string(),
        };
        let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
        let Some(kind) = VrrpKind::from_word(word) else {
            return Ok(FifoLine::Other {
                kind: word.to_string(),
            });
        };
        // From the right: PRIORITY, then STATE, and the quoted name is what remains.
        let mut parts = rest.rsplitn(3, ' ');
        let (Some(priority), Some(state), Some(name)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(err("expected TYPE \"NAME\" STATE PRIORITY"));
        };
        let name = name
            .strip_prefix('"')
            .and_then(|n| n.strip_suffix('"'))
            .ok_or_else(|| err("the name is not in double quotes"))?;
        if let Some(reason) = name_problem(name) {
            return Err(err(&format!("the name {reason}")));
        }
        let priority =
            parse_priority(priority).ok_or_else(|| err("the priority is not a number 0..=255"))?;
        if let Some(state) = VrrpState::from_word(state) {
            return Ok(FifoLine::State(NotifyArgs {
                kind,
                name: name.to_string(),
                state,
                priority: Some(priority),
            }));
        }
        match (kind, InstanceEvent::from_word(state)) {
            (VrrpKind::Instance, Some(event)) => Ok(FifoLine::Event {
                name: name.to_string(),
                event,
                priority,
            }),
            (VrrpKind::Group, Some(_)) => Err(err("priority events are only sent for instances")),
            (_, None) => Err(err(&format!("unknown state {}", quoted(state)))),
        }
    }
}

/// Errors of the FIFO follower; each names the FIFO.
#[derive(Debug, Error)]
pub enum FifoError {
    /// The path exists but cannot be opened as a FIFO (not a FIFO, permission denied, ...).
    #[error("cannot open keepalived's notify FIFO {path}: {source}")]
    Open {
        /// The FIFO path.
        path: PathBuf,
        /// The error; `InvalidInput` means the path is not a FIFO.
        source: io::Error,
    },
    /// The FIFO could be written by someone other than root (or this daemon's user): its lines
    /// make this node accept or release the VIPs, so it is not read.
    #[error("keepalived's notify FIFO {path} is not safe to follow: {why}")]
    Unsafe {
        /// The FIFO path.
        path: PathBuf,
        /// Who could write it.
        why: String,
    },
    /// Reading the open FIFO failed.
    #[error("cannot read keepalived's notify FIFO {path}: {source}")]
    Read {
        /// The FIFO path.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
}

/// What [`NotifyFifo::next`] saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FifoEvent {
    /// The FIFO was (re)opened. keepalived may or may not be attached yet.
    Opened,
    /// A complete line, parsed.
    Line(FifoLine),
    /// A line that did not parse; it was skipped.
    Malformed(FifoLineError),
    /// keepalived closed its end (it stopped, restarted or reloaded), or the path now names a
    /// different FIFO. The VRRP state is unknown until the next line; the follower reopens the
    /// path on the next call.
    Closed,
}

/// Longest line kept; keepalived's lines are under 300 bytes (names are short), so more without a
/// newline is not keepalived and is dropped instead of growing the buffer without bound.
const MAX_LINE: usize = 16 * 1024;

/// Follows keepalived's notify FIFO forever, across keepalived restarts and reloads.
///
/// The FIFO is opened read-only and non-blocking. Linux reports neither readable nor hang-up on
/// such a FIFO until a writer has attached after the open, so waiting on a FIFO keepalived has not
/// opened yet costs nothing; end-of-file comes only after a writer detached, and then the path is
/// reopened (keepalived may have unlinked it and will create a new one when it starts again).
/// A missing path is polled for at the poll interval. While idle, the follower also checks at that
/// interval that the path still names the FIFO it holds, so a FIFO replaced behind its back (a
/// keepalived killed with SIGKILL leaves its FIFO; a later one reuses it, but an operator may have
/// removed it) is picked up.
#[derive(Debug)]
pub struct NotifyFifo {
    path: PathBuf,
    poll: Duration,
    open: Option<OpenFifo>,
    buf: Vec<u8>,
    /// Set when the last open ended in end-of-file without a single byte: wait a poll interval
    /// before reopening, so that no kernel behaviour can turn the follower into a busy loop.
    backoff: bool,
    /// Set after an over-long line was reported: what follows up to the next newline is the
    /// rest of that line, not a line of its own (else a writer could smuggle a notice in at the
    /// end of a long line).
    discarding: bool,
}

#[derive(Debug)]
struct OpenFifo {
    rx: pipe::Receiver,
    /// (device, inode) of the FIFO held, to notice when the path names another file.
    id: (u64, u64),
    got_data: bool,
}

/// How often a missing FIFO path is looked for again, by default.
pub const MISSING_FIFO_POLL: Duration = Duration::from_millis(250);
/// The shortest poll interval accepted (no busy spin).
const MIN_POLL: Duration = Duration::from_millis(1);

impl NotifyFifo {
    /// A follower of the FIFO at `path`, polling every [`MISSING_FIFO_POLL`] while the path is
    /// missing.
    pub fn new(path: impl Into<PathBuf>) -> NotifyFifo {
        NotifyFifo {
            path: path.into(),
            poll: MISSING_FIFO_POLL,
            open: None,
            buf: Vec::new(),
            backoff: false,
            discarding: false,
        }
    }

    /// Sets the interval for polling a missing path and for checking that the path still names
    /// the FIFO held.
    pub fn with_poll_interval(mut self, poll: Duration) -> NotifyFifo {
        self.poll = poll.max(MIN_POLL);
        self
    }

    /// The FIFO's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits for the next event. Cancel-safe: all state lives in `self`, so it can be raced
    /// against a shutdown signal in `tokio::select!` without losing a line.
    ///
    /// Returns an error only for a path that exists but cannot be read as a FIFO; calling again
    /// retries after the poll interval.
    pub async fn next(&mut self) -> Result<FifoEvent, FifoError> {
        loop {
            if let Some(event) = self.take_line() {
                return Ok(event);
            }
            let Some(open) = &mut self.open else {
                if self.backoff {
                    tokio::time::sleep(self.poll).await;
                    self.backoff = false;
                }
                match self.try_open() {
                    Ok(Some(open)) => {
                        self.open = Some(open);
                        return Ok(FifoEvent::Opened);
                    }
                    Ok(None) => {
                        tokio::time::sleep(self.poll).await;
                        continue;
                    }
                    Err(e) => {
                        self.backoff = true;
                        return Err(e);
                    }
                }
            };
            match tokio::time::timeout(self.poll, open.rx.readable()).await {
                Err(_idle) => {
                    if self.replaced() {
                        self.close();
                        return Ok(FifoEvent::Closed);
                    }
                    continue;
                }
                Ok(Err(source)) => {
                    self.close();
                    return Err(FifoError::Read {
                        path: self.path.clone(),
                        source,
                    });
                }
                Ok(Ok(())) => {}
            }
            let mut chunk = [0u8; 4096];
            match open.rx.try_read(&mut chunk) {
                Ok(0) => {
                    // keepalived writes each line with one write(2) of less than PIPE_BUF bytes,
                    // which the kernel delivers whole, so a partial line at EOF is not from it.
                    self.backoff = !open.got_data;
                    self.close();
                    return Ok(FifoEvent::Closed);
                }
                Ok(n) => {
                    open.got_data = true;
                    self.buf.extend_from_slice(&chunk[..n]);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => {
                    self.close();
                    return Err(FifoError::Read {
                        path: self.path.clone(),
                        source,
                    });
                }
            }
        }
    }

    /// Pops one complete line from the buffer, or reports and drops an overlong one.
    fn take_line(&mut self) -> Option<FifoEvent> {
        if self.discarding {
            match self.buf.iter().position(|&b| b == b'\n') {
                Some(pos) => {
                    self.buf.drain(..=pos);
                    self.discarding = false;
                }
                None => {
                    self.buf.clear();
                    return None;
                }
            }
        }
        if let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
            if pos > MAX_LINE {
                // Complete but over-long (it arrived in one read): the same as one cut short.
                let event = self.overlong();
                self.buf.drain(..=pos);
                return Some(event);
            }
            let line: Vec<u8> = self.buf.drain(..=pos).collect();
            let event = match std::str::from_utf8(&line) {
                Ok(text) => match FifoLine::parse(text) {
                    Ok(parsed) => FifoEvent::Line(parsed),
                    Err(e) => FifoEvent::Malformed(e),
                },
                Err(_) => FifoEvent::Malformed(FifoLineError {
                    line: quoted(&String::from_utf8_lossy(&line)),
                    reason: "not UTF-8".to_string(),
                }),
            };
            return Some(event);
        }
        if self.buf.len() > MAX_LINE {
            let event = self.overlong();
            self.buf.clear();
            self.discarding = true;
            return Some(event);
        }
        None
    }

    fn overlong(&self) -> FifoEvent {
        let head = String::from_utf8_lossy(&self.buf[..QUOTE_MAX]).into_owned();
        FifoEvent::Malformed(FifoLineError {
            line: quoted(&head),
            reason: format!("no newline in {MAX_LINE} bytes; dropped up to the next newline"),
        })
    }

    /// Opens the path; `Ok(None)` if it does not exist (yet).
    ///
    /// What is checked is the file opened (`fstat` on its descriptor, so a path swapped after
    /// the check changes nothing): keepalived creates its FIFO as root with mode 0600 whatever
    /// the umask (measured with keepalived 2.2.7), so a FIFO owned by another user, or one group
    /// or others may write, was not made by keepalived, and any local user could make this node
    /// accept or release the VIPs through it. Such a FIFO is refused, not only warned about:
    /// the daemon's notify hook (`drain-agent notify`) is the fallback and needs no FIFO.
    fn try_open(&self) -> Result<Option<OpenFifo>, FifoError> {
        let open_err = |source| FifoError::Open {
            path: self.path.clone(),
            source,
        };
        let rx = match pipe::OpenOptions::new().open_receiver(&self.path) {
            Ok(rx) => rx,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(open_err(e)),
        };
        let st = nix::sys::stat::fstat(&rx).map_err(|e| open_err(io::Error::from(e)))?;
        if let Some(why) = unsafe_writer(st.st_uid, st.st_mode) {
            return Err(FifoError::Unsafe {
                path: self.path.clone(),
                why,
            });
        }
        Ok(Some(OpenFifo {
            rx,
            id: (st.st_dev, st.st_ino),
            got_data: false,
        }))
    }

    /// True if the path now names another file than the FIFO held. A missing path is not a
    /// replacement: the writer may still be attached to the unlinked FIFO and EOF will come.
    fn replaced(&self) -> bool {
        let Some(open) = &self.open else { return false };
        match fs::metadata(&self.path) {
            Ok(meta) => (meta.dev(), meta.ino()) != open.id,
            Err(_) => false,
        }
    }

    fn close(&mut self) {
        self.open = None;
        self.buf.clear();
        self.discarding = false;
    }
}

/// Who besides root and this process's user could write a FIFO with this owner and mode, if
/// anyone.
fn unsafe_writer(uid: u32, mode: u32) -> Option<String> {
    let me = nix::unistd::geteuid().as_raw();
    if uid != 0 && uid != me {
        return Some(format!(
            "owned by uid {uid}, not root (keepalived creates it as root)"
        ));
    }
    if mode & 0o022 != 0 {
        return Some(format!(
            "mode {:04o} lets {} write it (keepalived creates it 0600)",
            mode & 0o7777,
            if mode & 0o002 != 0 {
                "anyone"
            } else {
                "its group"
            }
        ));
    }
    None
}

#[cfg(test)]
mod tests;
