//! keepalived's side of the integration: the arguments of a `notify` script, the lines of a
//! `vrrp_notify_fifo`, a reader that follows that FIFO across keepalived restarts, and the
//! `track_file` the agent writes as its second failover trigger.
//!
//! Everything here follows keepalived 2.2.7 (Debian 12's package), checked three ways: its
//! keepalived.conf(5) man page, its source (`keepalived/vrrp/vrrp_notify.c`, `keepalived/core/
//! notify.c`, `keepalived/trackers/track_file.c`), and the real binary in a network namespace
//! (`tests/keepalived_ns.rs`, which runs these types against it). The facts that matter:
//!
//! * **notify**: keepalived appends four arguments to the configured command: `TYPE NAME STATE
//!   PRIORITY`, TYPE `INSTANCE` or `GROUP`, STATE `MASTER`, `BACKUP`, `FAULT`, `STOP` or `DELETED`
//!   (the last only for instances, with `notify_deleted`), PRIORITY the instance's effective
//!   priority and always `0` for a group. Versions before 1.3 passed no priority, hence
//!   [`NotifyArgs::priority`] is optional.
//! * **FIFO**: one line per event, written with a single `write(2)` as
//!   `printf("%s \"%s\" %s %d\n", type, name, state, priority)` — so the name is quoted and may
//!   contain spaces. Besides the five states an instance can report the events
//!   `MASTER_RX_LOWER_PRI`, and (with `notify_priority_changes`) `MASTER_PRIORITY` /
//!   `BACKUP_PRIORITY`. A `notify_fifo` (the global one) also carries the checker's lines
//!   (`VS [10.0.0.1]:tcp:80 UP`, `RS ... DOWN`), which a VRRP follower ignores.
//! * **Who creates the FIFO**: keepalived. At start it `mkfifo()`s the path (an existing FIFO is
//!   reused), opens it `O_RDWR|O_NONBLOCK`, and on exit unlinks it *if it created it*, before
//!   closing it. Because keepalived holds the read side too, its writes never block and lines
//!   written while no reader is attached wait in the pipe (64 KiB; beyond that keepalived drops
//!   them silently). A reader sees end-of-file when keepalived stops, restarts or reloads
//!   (a reload unlinks the FIFO and creates a new one), and must reopen it by path. After a
//!   reload keepalived 2.2.7 writes no states to the new FIFO, even with
//!   `fifo_write_vrrp_states_on_reload` (keepalived issue #2359), so the state is unknown from
//!   end-of-file until the next transition.
//! * **`vrrp_notify_fifo_script`** makes keepalived start the reader itself (the FIFO path as
//!   its last argument) and send it SIGTERM on every reload and stop (keepalived.conf(5),
//!   doc/samples/sample_notify_fifo.sh). That suits a throw-away script, not the agent's daemon,
//!   whose SIGTERM rolls a drain back; the agent reads a plain `vrrp_notify_fifo`.
//! * **track_file**: keepalived watches the file's *directory* with inotify (`IN_CLOSE_WRITE |
//!   IN_DELETE | IN_MOVE`) and re-reads the file (first 127 bytes, `strtol(buf, NULL, 0)`) when it
//!   is closed after writing or renamed into place; a deleted file counts as 0. See
//!   [`track_effect`] for what the value does.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use thiserror::Error;
use tokio::net::unix::pipe;

/// Where the shipped keepalived configuration puts its `vrrp_notify_fifo`. Directly in /run
/// because keepalived creates the FIFO at its own start, possibly before the agent's runtime
/// directory exists (and systemd removes that directory whenever the agent stops).
pub const DEFAULT_FIFO_PATH: &str = "/run/keepalived-vrrp-notify.fifo";

/// Where the shipped configuration puts the `track_file` the agent writes: in the agent's state
/// directory, which persists, so a drained node stays in FAULT across a keepalived restart.
pub const DEFAULT_TRACK_FILE_PATH: &str = "/var/lib/drain-agent/keepalived.track";

/// How much of an argument or line an error message quotes, so the message stays one short line.
const QUOTE_MAX: usize = 80;

/// Quotes untrusted text for a one-line message: Debug escaping turns newlines and control
/// characters into escapes, and long text is cut.
fn quoted(text: &str) -> String {
    if text.chars().count() <= QUOTE_MAX {
        format!("{text:?}")
    } else {
        let cut: String = text.chars().take(QUOTE_MAX).collect();
        format!("{cut:?}...")
    }
}

/// Whether keepalived reports a VRRP instance or a sync group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum VrrpKind {
    /// `INSTANCE`: a `vrrp_instance`.
    Instance,
    /// `GROUP`: a `vrrp_sync_group`.
    Group,
}

impl VrrpKind {
    /// The word keepalived uses.
    pub fn as_str(self) -> &'static str {
        match self {
            VrrpKind::Instance => "INSTANCE",
            VrrpKind::Group => "GROUP",
        }
    }

    fn from_word(word: &str) -> Option<VrrpKind> {
        match word {
            "INSTANCE" => Some(VrrpKind::Instance),
            "GROUP" => Some(VrrpKind::Group),
            _ => None,
        }
    }
}

impl std::fmt::Display for VrrpKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A VRRP state as keepalived names it in notify arguments and FIFO lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum VrrpState {
    /// Owns the virtual addresses.
    Master,
    /// Standing by.
    Backup,
    /// A tracked interface, script or file failed; the instance gave up its addresses.
    Fault,
    /// keepalived is stopping.
    Stop,
    /// The instance was removed by a reload (only with `notify_deleted`; FAULT otherwise).
    Deleted,
}

impl VrrpState {
    /// The word keepalived uses.
    pub fn as_str(self) -> &'static str {
        match self {
            VrrpState::Master => "MASTER",
            VrrpState::Backup => "BACKUP",
            VrrpState::Fault => "FAULT",
            VrrpState::Stop => "STOP",
            VrrpState::Deleted => "DELETED",
        }
    }

    fn from_word(word: &str) -> Option<VrrpState> {
        match word {
            "MASTER" => Some(VrrpState::Master),
            "BACKUP" => Some(VrrpState::Backup),
            "FAULT" => Some(VrrpState::Fault),
            "STOP" => Some(VrrpState::Stop),
            "DELETED" => Some(VrrpState::Deleted),
            _ => None,
        }
    }
}

impl std::fmt::Display for VrrpState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A state change keepalived announces, from `notify` arguments or a FIFO line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NotifyArgs {
    /// Instance or sync group.
    pub kind: VrrpKind,
    /// The `vrrp_instance` or `vrrp_sync_group` name.
    pub name: String,
    /// The state entered.
    pub state: VrrpState,
    /// Effective priority (0 for groups); absent when keepalived older than 1.3 called the script.
    pub priority: Option<u8>,
}

/// Why `notify` arguments were rejected. Display is one line naming the offending argument.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NotifyError {
    /// Not 3 or 4 arguments.
    #[error("notify: expected TYPE NAME STATE [PRIORITY] as keepalived passes them, got {got} argument(s)")]
    Count {
        /// How many arguments there were.
        got: usize,
    },
    /// The first argument is not INSTANCE or GROUP.
    #[error("notify: TYPE {value} is not INSTANCE or GROUP")]
    Type {
        /// The argument, quoted.
        value: String,
    },
    /// The name cannot be a keepalived instance or group name.
    #[error("notify: NAME {value} {reason}")]
    Name {
        /// The argument, quoted.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The third argument is not a state keepalived reports.
    #[error("notify: STATE {value} is not MASTER, BACKUP, FAULT, STOP or DELETED")]
    State {
        /// The argument, quoted.
        value: String,
    },
    /// The fourth argument is not a priority.
    #[error("notify: PRIORITY {value} is not a whole number from 0 to 255")]
    Priority {
        /// The argument, quoted.
        value: String,
    },
}

/// Checks a keepalived instance or group name; `None` if acceptable.
fn name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("is empty")
    } else if name.chars().any(char::is_control) {
        // keepalived's config parser splits on whitespace and cannot produce these; accepting
        // them would let a caller forge extra log lines.
        Some("contains control characters")
    } else if name.contains('"') {
        // The FIFO format quotes the name without escaping, so keepalived cannot use one.
        Some("contains a double quote")
    } else {
        None
    }
}

/// Parses a priority as keepalived prints it (`%d` of an 8-bit value): plain decimal digits.
fn parse_priority(text: &str) -> Option<u8> {
    if text.is_empty() || text.len() > 3 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

impl NotifyArgs {
    /// Parses the arguments keepalived appended to the `notify` command (`TYPE NAME STATE
    /// PRIORITY`; PRIORITY may be absent). Every word is checked exactly; the error names the
    /// first bad argument.
    pub fn parse(args: &[String]) -> Result<NotifyArgs, NotifyError> {
        if !(3..=4).contains(&args.len()) {
            return Err(NotifyError::Count { got: args.len() });
        }
        let kind = VrrpKind::from_word(&args[0]).ok_or_else(|| NotifyError::Type {
            value: quoted(&args[0]),
        })?;
        if let Some(reason) = name_problem(&args[1]) {
            return Err(NotifyError::Name {
                value: quoted(&args[1]),
                reason,
            });
        }
        let state = VrrpState::from_word(&args[2]).ok_or_else(|| NotifyError::State {
            value: quoted(&args[2]),
        })?;
        let priority = match args.get(3) {
            None => None,
            Some(p) => {
                Some(parse_priority(p).ok_or_else(|| NotifyError::Priority { value: quoted(p) })?)
            }
        };
        Ok(NotifyArgs {
            kind,
            name: args[1].clone(),
            state,
            priority,
        })
    }
}

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
}

#[derive(Debug)]
struct OpenFifo {
    rx: pipe::Receiver,
    /// (device, inode) of the FIFO held, to notice when the path names another file.
    id: (u64, u64),
    got_data: bool,
}

impl NotifyFifo {
    /// A follower of the FIFO at `path`, polling every 250 ms while the path is missing.
    pub fn new(path: impl Into<PathBuf>) -> NotifyFifo {
        NotifyFifo {
            path: path.into(),
            poll: Duration::from_millis(250),
            open: None,
            buf: Vec::new(),
            backoff: false,
        }
    }

    /// Sets the interval for polling a missing path and for checking that the path still names
    /// the FIFO held.
    pub fn with_poll_interval(mut self, poll: Duration) -> NotifyFifo {
        self.poll = poll.max(Duration::from_millis(1));
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
                    Err(source) => {
                        self.backoff = true;
                        return Err(FifoError::Open {
                            path: self.path.clone(),
                            source,
                        });
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
        if let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
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
            let head = String::from_utf8_lossy(&self.buf[..QUOTE_MAX]).into_owned();
            self.buf.clear();
            return Some(FifoEvent::Malformed(FifoLineError {
                line: quoted(&head),
                reason: format!("no newline in {MAX_LINE} bytes; dropped"),
            }));
        }
        None
    }

    /// Opens the path; `Ok(None)` if it does not exist (yet).
    fn try_open(&self) -> io::Result<Option<OpenFifo>> {
        let rx = match pipe::OpenOptions::new().open_receiver(&self.path) {
            Ok(rx) => rx,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let st = nix::sys::stat::fstat(&rx).map_err(io::Error::from)?;
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
    }
}

/// What a tracked file's value does to a VRRP instance, as keepalived 2.2.7 computes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TrackEffect {
    /// The instance goes to FAULT: it sends a priority-0 advert and releases its addresses.
    Fault,
    /// This much is added to the instance's configured priority (the result is kept within
    /// 1..=254); 0 means no effect.
    Priority(i32),
}

/// Models keepalived 2.2.7's use of a `track_file` value for a VRRP instance
/// (`process_update_vrrp_track_file_status` in trackers/track_file.c; keepalived.conf(5),
/// "Track files"):
///
/// * `weight 0`: the value only means ok (`0`) or fault (anything else); `reverse` swaps them.
/// * otherwise `value × weight` (negated with `reverse`) is clamped to `-254..=253`; `-254`
///   (so anything at or below it) is FAULT, the rest is added to the priority.
///
/// So with any positive weight, [`TrackFile::FAULT`] (-254) faults the instance and
/// [`TrackFile::OK`] (0) leaves it alone, and the same two values work with `weight 0`.
pub fn track_effect(value: i32, weight: i32, reverse: bool) -> TrackEffect {
    if weight == 0 {
        // keepalived: `!!new_status == (weight_multiplier == 1) ? INT_MIN : 0`.
        return if (value != 0) != reverse {
            TrackEffect::Fault
        } else {
            TrackEffect::Priority(0)
        };
    }
    let sign = if reverse { -1 } else { 1 };
    let status = (i64::from(value) * i64::from(weight) * sign).clamp(-254, 253);
    if status == -254 {
        TrackEffect::Fault
    } else {
        TrackEffect::Priority(status as i32)
    }
}

/// How many bytes of a track file keepalived reads (`char buf[128]`, read `sizeof(buf) - 1`).
const TRACK_READ_MAX: usize = 127;

/// The value keepalived takes from a track file's content, or `None` if keepalived would log
/// "Invalid number" and keep its previous value.
///
/// keepalived reads up to 127 bytes and applies `strtol(buf, NULL, 0)`: leading whitespace, an
/// optional sign, then `0x` hex, `0` octal or decimal, stopping at the first other character.
/// No digits at all (or an empty file) reads as 0; a number beyond `long` or `int` is ignored.
pub fn keepalived_track_value(content: &[u8]) -> Option<i32> {
    let text = &content[..content.len().min(TRACK_READ_MAX)];
    let mut i = 0;
    // C isspace() in the "C" locale.
    while i < text.len() && matches!(text[i], b' ' | b'\t' | b'\n' | b'\x0b' | b'\x0c' | b'\r') {
        i += 1;
    }
    let mut negative = false;
    if i < text.len() && (text[i] == b'+' || text[i] == b'-') {
        negative = text[i] == b'-';
        i += 1;
    }
    let radix: u32 = if text.get(i) == Some(&b'0')
        && matches!(text.get(i + 1), Some(b'x' | b'X'))
        && text.get(i + 2).is_some_and(u8::is_ascii_hexdigit)
    {
        i += 2;
        16
    } else if text.get(i) == Some(&b'0') {
        8
    } else {
        10
    };
    // Accumulate the magnitude in i128 so an overflow of C's 64-bit long is detectable.
    let mut magnitude: i128 = 0;
    let mut overflow = false;
    while let Some(d) = text.get(i).and_then(|&b| (b as char).to_digit(radix)) {
        magnitude = magnitude * i128::from(radix) + i128::from(d);
        if magnitude > i128::from(i64::MAX) + 1 {
            overflow = true;
            magnitude = i128::from(i64::MAX) + 1;
        }
        i += 1;
    }
    let value = if negative { -magnitude } else { magnitude };
    // strtol sets ERANGE beyond long's range (keepalived then ignores the value); keepalived also
    // ignores values beyond int.
    if overflow || value > i128::from(i64::MAX) || value < i128::from(i64::MIN) {
        return None;
    }
    i32::try_from(value).ok()
}

/// Errors of the track file; each names the file.
#[derive(Debug, Error)]
pub enum TrackFileError {
    /// The path is a symbolic link. keepalived resolves the link once at start and watches the
    /// target's directory, so replacing the link by rename would go unnoticed.
    #[error("track file {path} is a symbolic link: configure keepalived and the agent with the real path")]
    Symlink {
        /// The track file.
        path: PathBuf,
    },
    /// The path has no parent directory or file name.
    #[error("track file {path}: not a file path")]
    BadPath {
        /// The track file.
        path: PathBuf,
    },
    /// Writing (temporary file, fsync, rename) failed.
    #[error("cannot write track file {path}: {source}")]
    Write {
        /// The track file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// Reading failed.
    #[error("cannot read track file {path}: {source}")]
    Read {
        /// The track file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The content is a number keepalived ignores (beyond the range of `int`).
    #[error(
        "track file {path} holds {content}, which keepalived ignores (not a number within int)"
    )]
    Unusable {
        /// The track file.
        path: PathBuf,
        /// The start of the content, quoted.
        content: String,
    },
    /// After writing, the file does not read back as the value written.
    #[error("track file {path}: wrote {wrote} but keepalived would read {read:?}")]
    ReadBack {
        /// The track file.
        path: PathBuf,
        /// The value written.
        wrote: i32,
        /// What reading it back gave (`None`: the file is gone).
        read: Option<i32>,
    },
}

/// The file a keepalived `track_file` block watches, written by the agent as a failover trigger
/// that leaves the interfaces alone.
///
/// Writes go to a temporary file in the same directory, are fsynced and renamed over the track
/// file: keepalived watches the directory for `IN_MOVED_TO`, so it reads the new value exactly
/// once and never a half-written one (a plain rewrite could be read between truncate and write,
/// as 0). The temporary file's own events carry another name, which keepalived ignores.
///
/// The directory must exist when keepalived starts, or keepalived drops the `track_file` ("Track
/// file directory ... does not exist - removing"); the file itself may be absent, which reads
/// as 0.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrackFile {
    path: PathBuf,
}

impl TrackFile {
    /// The value that means "no effect" whatever the weight.
    pub const OK: i32 = 0;
    /// The value that puts the instance in FAULT with any positive weight and with `weight 0`
    /// (see [`track_effect`]).
    pub const FAULT: i32 = -254;

    /// The track file at `path` (use the same path as keepalived's `file` keyword, unresolved
    /// symlinks excluded).
    pub fn new(path: impl Into<PathBuf>) -> TrackFile {
        TrackFile { path: path.into() }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Atomically replaces the file's content with `value` (as `"<value>\n"`, the format of
    /// keepalived's own `init_file`), then reads it back the way keepalived will.
    pub fn write(&self, value: i32) -> Result<(), TrackFileError> {
        let path = &self.path;
        if fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(TrackFileError::Symlink { path: path.clone() });
        }
        let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
            return Err(TrackFileError::BadPath { path: path.clone() });
        };
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(".{}.tmp", std::process::id()));
        let tmp = dir.join(tmp_name);
        let werr = |source| TrackFileError::Write {
            path: path.clone(),
            source,
        };
        let result = (|| -> io::Result<()> {
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o644)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&tmp)?;
            f.write_all(format!("{value}\n").as_bytes())?;
            f.sync_all()?;
            fs::rename(&tmp, path)?;
            // The rename is durable only once the directory is synced.
            File::open(dir)?.sync_all()
        })();
        if let Err(e) = result {
            let _ = fs::remove_file(&tmp);
            return Err(werr(e));
        }
        match self.read() {
            Ok(Some(read)) if read == value => Ok(()),
            Ok(read) => Err(TrackFileError::ReadBack {
                path: path.clone(),
                wrote: value,
                read,
            }),
            Err(e) => Err(e),
        }
    }

    /// The value keepalived would read from the file now; `None` if the file does not exist
    /// (which keepalived treats as 0).
    pub fn read(&self) -> Result<Option<i32>, TrackFileError> {
        // Non-blocking like keepalived's own open, so a FIFO at this path cannot hang the agent.
        let file = match OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&self.path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(TrackFileError::Read {
                    path: self.path.clone(),
                    source,
                })
            }
        };
        let mut content = Vec::with_capacity(TRACK_READ_MAX);
        file.take(TRACK_READ_MAX as u64)
            .read_to_end(&mut content)
            .map_err(|source| TrackFileError::Read {
                path: self.path.clone(),
                source,
            })?;
        keepalived_track_value(&content)
            .map(Some)
            .ok_or_else(|| TrackFileError::Unusable {
                path: self.path.clone(),
                content: quoted(&String::from_utf8_lossy(&content)),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| w.to_string()).collect()
    }

    #[test]
    fn notify_arguments_as_keepalived_passes_them() {
        let n = NotifyArgs::parse(&args(&["INSTANCE", "VI_1", "MASTER", "150"])).unwrap();
        assert_eq!(
            n,
            NotifyArgs {
                kind: VrrpKind::Instance,
                name: "VI_1".into(),
                state: VrrpState::Master,
                priority: Some(150)
            }
        );
        let g = NotifyArgs::parse(&args(&["GROUP", "G1", "FAULT", "0"])).unwrap();
        assert_eq!(
            (g.kind, g.state, g.priority),
            (VrrpKind::Group, VrrpState::Fault, Some(0))
        );
        for (word, state) in [
            ("BACKUP", VrrpState::Backup),
            ("STOP", VrrpState::Stop),
            ("DELETED", VrrpState::Deleted),
        ] {
            let n = NotifyArgs::parse(&args(&["INSTANCE", "x", word, "255"])).unwrap();
            assert_eq!(n.state, state);
        }
    }

    #[test]
    fn notify_without_priority_is_accepted() {
        let n = NotifyArgs::parse(&args(&["INSTANCE", "VI_1", "BACKUP"])).unwrap();
        assert_eq!(n.priority, None);
    }

    #[test]
    fn notify_errors_name_the_bad_argument_on_one_line() {
        let cases: &[(&[&str], &str)] = &[
            (&[], "got 0 argument(s)"),
            (&["INSTANCE", "VI_1"], "got 2 argument(s)"),
            (&["INSTANCE", "VI_1", "MASTER", "1", "x"], "got 5"),
            (&["instance", "VI_1", "MASTER", "1"], "TYPE \"instance\""),
            (&["INSTANCE", "", "MASTER", "1"], "NAME \"\" is empty"),
            (&["INSTANCE", "a\nb", "MASTER", "1"], "control characters"),
            (&["INSTANCE", "a\"b", "MASTER", "1"], "double quote"),
            (&["INSTANCE", "VI_1", "master", "1"], "STATE \"master\""),
            (
                &["INSTANCE", "VI_1", "{UNKNOWN}", "1"],
                "STATE \"{UNKNOWN}\"",
            ),
            (&["INSTANCE", "VI_1", "MASTER", "256"], "PRIORITY \"256\""),
            (&["INSTANCE", "VI_1", "MASTER", "-1"], "PRIORITY \"-1\""),
            (&["INSTANCE", "VI_1", "MASTER", "+1"], "PRIORITY \"+1\""),
            (&["INSTANCE", "VI_1", "MASTER", ""], "PRIORITY \"\""),
            (&["INSTANCE", "VI_1", "MASTER", "0100"], "PRIORITY \"0100\""),
        ];
        for (words, expected) in cases {
            let e = NotifyArgs::parse(&args(words)).unwrap_err().to_string();
            assert!(e.contains(expected), "{words:?}: {e}");
            assert!(!e.contains('\n'), "{words:?}: multi-line error {e:?}");
        }
    }

    #[test]
    fn long_arguments_are_cut_in_errors() {
        let long = "x".repeat(10_000);
        let e = NotifyArgs::parse(&args(&[&long, "n", "MASTER"]))
            .unwrap_err()
            .to_string();
        assert!(e.len() < 200, "{e}");
    }

    #[test]
    fn fifo_state_lines() {
        assert_eq!(
            FifoLine::parse("INSTANCE \"VI_1\" MASTER 150\n").unwrap(),
            FifoLine::State(NotifyArgs {
                kind: VrrpKind::Instance,
                name: "VI_1".into(),
                state: VrrpState::Master,
                priority: Some(150)
            })
        );
        assert_eq!(
            FifoLine::parse("GROUP \"G 1\" BACKUP 0").unwrap(),
            FifoLine::State(NotifyArgs {
                kind: VrrpKind::Group,
                name: "G 1".into(),
                state: VrrpState::Backup,
                priority: Some(0)
            })
        );
        assert!(matches!(
            FifoLine::parse("INSTANCE \"VI_1\" STOP 100\r\n").unwrap(),
            FifoLine::State(NotifyArgs {
                state: VrrpState::Stop,
                ..
            })
        ));
    }

    #[test]
    fn fifo_priority_events() {
        assert_eq!(
            FifoLine::parse("INSTANCE \"VI_1\" BACKUP_PRIORITY 50").unwrap(),
            FifoLine::Event {
                name: "VI_1".into(),
                event: InstanceEvent::BackupPriority,
                priority: 50
            }
        );
        assert!(matches!(
            FifoLine::parse("INSTANCE \"VI_1\" MASTER_RX_LOWER_PRI 150").unwrap(),
            FifoLine::Event {
                event: InstanceEvent::MasterRxLowerPri,
                ..
            }
        ));
        assert!(FifoLine::parse("GROUP \"G\" MASTER_PRIORITY 0").is_err());
    }

    #[test]
    fn checker_and_unknown_lines_are_other_not_errors() {
        for line in [
            "VS [198.18.0.100]:tcp:80 UP",
            "RS [198.18.0.20]:tcp:8080 [198.18.0.100]:tcp:80 DOWN",
            "",
            "SOMETHING new",
        ] {
            assert!(
                matches!(FifoLine::parse(line), Ok(FifoLine::Other { .. })),
                "{line:?}"
            );
        }
    }

    #[test]
    fn malformed_vrrp_lines_are_errors() {
        for line in [
            "INSTANCE",
            "INSTANCE VI_1 MASTER 100",
            "INSTANCE \"VI_1\" MASTER",
            "INSTANCE \"VI_1\" MASTER 300",
            "INSTANCE \"VI_1\" {UNKNOWN} 100",
            "INSTANCE \"\" MASTER 100",
            "GROUP \"G\"x MASTER 0",
        ] {
            let e = FifoLine::parse(line).unwrap_err();
            assert!(!e.to_string().contains('\n'), "{line:?}");
        }
    }

    #[test]
    fn track_effect_matches_keepalived() {
        use TrackEffect::*;
        // weight 0: any non-zero value is a fault; reverse swaps.
        assert_eq!(track_effect(0, 0, false), Priority(0));
        assert_eq!(track_effect(1, 0, false), Fault);
        assert_eq!(track_effect(TrackFile::FAULT, 0, false), Fault);
        assert_eq!(track_effect(0, 0, true), Fault);
        assert_eq!(track_effect(7, 0, true), Priority(0));
        // weighted: value × weight, clamped to -254..=253; -254 is FAULT.
        assert_eq!(track_effect(TrackFile::FAULT, 1, false), Fault);
        assert_eq!(track_effect(TrackFile::FAULT, 254, false), Fault);
        assert_eq!(track_effect(-253, 1, false), Priority(-253));
        assert_eq!(track_effect(-50, 2, false), Priority(-100));
        assert_eq!(track_effect(-127, 2, false), Fault);
        assert_eq!(track_effect(50, 2, true), Priority(-100));
        assert_eq!(track_effect(1000, 1, false), Priority(253));
        assert_eq!(track_effect(i32::MIN, 254, false), Fault);
        assert_eq!(track_effect(TrackFile::OK, 1, false), Priority(0));
        // A negative weight turns the fault value into a priority boost: not a trigger.
        assert_eq!(track_effect(TrackFile::FAULT, -1, false), Priority(253));
    }

    #[test]
    fn track_values_are_read_like_strtol_base_0() {
        let cases: &[(&[u8], Option<i32>)] = &[
            (b"-254\n", Some(-254)),
            (b"0\n", Some(0)),
            (b"", Some(0)),
            (b"garbage", Some(0)),
            (b"  \t+12abc", Some(12)),
            (b"0x1F", Some(31)),
            (b"0X", Some(0)),
            (b"0xg", Some(0)),
            (b"010", Some(8)),
            (b"08", Some(0)),
            (b"-0x10", Some(-16)),
            (b"2147483647", Some(i32::MAX)),
            (b"-2147483648", Some(i32::MIN)),
            (b"2147483648", None),
            (b"99999999999999999999999", None),
            (b"-9223372036854775808", None),
        ];
        for (content, expected) in cases {
            assert_eq!(
                keepalived_track_value(content),
                *expected,
                "{:?}",
                String::from_utf8_lossy(content)
            );
        }
        // Only the first 127 bytes count.
        let mut long = vec![b' '; 127];
        long.extend_from_slice(b"5");
        assert_eq!(keepalived_track_value(&long), Some(0));
    }

    #[test]
    fn track_file_writes_atomically_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let t = TrackFile::new(dir.path().join("keepalived.track"));
        assert_eq!(t.read().unwrap(), None);
        t.write(TrackFile::FAULT).unwrap();
        assert_eq!(fs::read_to_string(t.path()).unwrap(), "-254\n");
        assert_eq!(t.read().unwrap(), Some(-254));
        t.write(TrackFile::OK).unwrap();
        assert_eq!(t.read().unwrap(), Some(0));
        // No temporary file is left behind.
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("keepalived.track")]);
    }

    #[test]
    fn track_file_refuses_symlinks_and_missing_directories() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        fs::write(&real, "0\n").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let e = TrackFile::new(&link).write(TrackFile::FAULT).unwrap_err();
        assert!(matches!(e, TrackFileError::Symlink { .. }), "{e}");
        assert_eq!(fs::read_to_string(&real).unwrap(), "0\n");

        let missing = TrackFile::new(dir.path().join("no-such-dir/track"));
        let e = missing.write(TrackFile::FAULT).unwrap_err();
        assert!(matches!(e, TrackFileError::Write { .. }), "{e}");
        assert!(e.to_string().contains("no-such-dir/track"), "{e}");
    }

    #[test]
    fn unusable_track_content_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let t = TrackFile::new(dir.path().join("t"));
        fs::write(t.path(), "99999999999\n").unwrap();
        assert!(matches!(
            t.read().unwrap_err(),
            TrackFileError::Unusable { .. }
        ));
    }

    async fn next_within(fifo: &mut NotifyFifo) -> FifoEvent {
        tokio::time::timeout(Duration::from_secs(10), fifo.next())
            .await
            .expect("no FIFO event within 10 s")
            .expect("FIFO error")
    }

    fn state_line(name: &str, state: VrrpState, priority: u8) -> FifoEvent {
        FifoEvent::Line(FifoLine::State(NotifyArgs {
            kind: VrrpKind::Instance,
            name: name.into(),
            state,
            priority: Some(priority),
        }))
    }

    /// A writer that behaves like keepalived: opens the FIFO read-write and non-blocking.
    fn keepalived_like_writer(path: &Path) -> File {
        OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
            .unwrap()
    }

    #[tokio::test]
    async fn fifo_follower_waits_for_the_fifo_and_survives_writer_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vrrp.fifo");
        let mut fifo = NotifyFifo::new(&path).with_poll_interval(Duration::from_millis(20));

        // The FIFO does not exist yet: no event until it does.
        assert!(
            tokio::time::timeout(Duration::from_millis(100), fifo.next())
                .await
                .is_err()
        );
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        assert_eq!(next_within(&mut fifo).await, FifoEvent::Opened);

        // Opened, but no writer yet: nothing (in particular no EOF) arrives.
        assert!(
            tokio::time::timeout(Duration::from_millis(100), fifo.next())
                .await
                .is_err()
        );

        let mut w = keepalived_like_writer(&path);
        w.write_all(b"INSTANCE \"VI_1\" BACKUP 100\nVS [1.2.3.4]:tcp:80 UP\n")
            .unwrap();
        w.write_all(b"INSTANCE \"VI_1\" MAS").unwrap();
        assert_eq!(
            next_within(&mut fifo).await,
            state_line("VI_1", VrrpState::Backup, 100)
        );
        assert!(matches!(
            next_within(&mut fifo).await,
            FifoEvent::Line(FifoLine::Other { .. })
        ));
        w.write_all(b"TER 100\nINSTANCE junk\n").unwrap();
        assert_eq!(
            next_within(&mut fifo).await,
            state_line("VI_1", VrrpState::Master, 100)
        );
        assert!(matches!(
            next_within(&mut fifo).await,
            FifoEvent::Malformed(_)
        ));

        // keepalived stops: it unlinks the FIFO it created, then closes it.
        w.write_all(b"INSTANCE \"VI_1\" STOP 100\n").unwrap();
        fs::remove_file(&path).unwrap();
        drop(w);
        assert_eq!(
            next_within(&mut fifo).await,
            state_line("VI_1", VrrpState::Stop, 100)
        );
        assert_eq!(next_within(&mut fifo).await, FifoEvent::Closed);

        // keepalived starts again and writes before the follower reopened: nothing is lost.
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let mut w = keepalived_like_writer(&path);
        w.write_all(b"INSTANCE \"VI_1\" BACKUP 100\n").unwrap();
        assert_eq!(next_within(&mut fifo).await, FifoEvent::Opened);
        assert_eq!(
            next_within(&mut fifo).await,
            state_line("VI_1", VrrpState::Backup, 100)
        );
        drop(w);
        assert_eq!(next_within(&mut fifo).await, FifoEvent::Closed);
    }

    #[tokio::test]
    async fn fifo_follower_switches_to_a_replaced_fifo() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vrrp.fifo");
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let mut fifo = NotifyFifo::new(&path).with_poll_interval(Duration::from_millis(20));
        assert_eq!(next_within(&mut fifo).await, FifoEvent::Opened);
        // The FIFO held (no writer ever attached) is replaced by another one.
        fs::remove_file(&path).unwrap();
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        assert_eq!(next_within(&mut fifo).await, FifoEvent::Closed);
        assert_eq!(next_within(&mut fifo).await, FifoEvent::Opened);
        let mut w = keepalived_like_writer(&path);
        w.write_all(b"INSTANCE \"VI_1\" FAULT 100\n").unwrap();
        assert_eq!(
            next_within(&mut fifo).await,
            state_line("VI_1", VrrpState::Fault, 100)
        );
    }

    #[tokio::test]
    async fn a_regular_file_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("not-a-fifo");
        fs::write(&path, "INSTANCE \"VI_1\" MASTER 100\n").unwrap();
        let mut fifo = NotifyFifo::new(&path).with_poll_interval(Duration::from_millis(20));
        let e = fifo.next().await.unwrap_err();
        assert!(matches!(e, FifoError::Open { .. }), "{e}");
        assert!(e.to_string().contains("not-a-fifo"), "{e}");
    }

    #[tokio::test]
    async fn overlong_lines_are_dropped_not_buffered() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vrrp.fifo");
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let mut fifo = NotifyFifo::new(&path).with_poll_interval(Duration::from_millis(20));
        assert_eq!(next_within(&mut fifo).await, FifoEvent::Opened);
        let mut w = keepalived_like_writer(&path);
        w.write_all(&vec![b'x'; MAX_LINE + 10]).unwrap();
        assert!(matches!(
            next_within(&mut fifo).await,
            FifoEvent::Malformed(_)
        ));
    }
}
