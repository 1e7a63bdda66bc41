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

//!
//! The module holds one file per concern: [`notify`] (a notify script's arguments), [`fifo`] (the
//! FIFO's lines and the follower), [`track`] (the track file and what its value does).

pub mod conf;
pub mod fifo;
pub mod notify;
pub mod track;

pub use fifo::{FifoError, FifoEvent, FifoLine, FifoLineError, InstanceEvent, NotifyFifo};
pub use notify::{NotifyArgs, NotifyError, VrrpKind, VrrpState};
pub use track::{keepalived_track_value, track_effect, TrackEffect, TrackFile, TrackFileError};

/// Where the shipped keepalived configuration puts its `vrrp_notify_fifo`. Directly in /run
/// because keepalived creates the FIFO at its own start, possibly before the agent's runtime
/// directory exists (and systemd removes that directory whenever the agent stops).
pub const DEFAULT_FIFO_PATH: &str = "/run/keepalived-vrrp-notify.fifo";

/// Where the shipped configuration puts the `track_file` the agent writes: in the agent's state
/// directory, which persists, so a drained node stays in FAULT across a keepalived restart.
pub const DEFAULT_TRACK_FILE_PATH: &str = "/var/lib/drain-agent/keepalived.track";

/// How much of an argument or line an error message quotes, so the message stays one short line.
pub(crate) const QUOTE_MAX: usize = 80;

/// Quotes untrusted text for a one-line message: Debug escaping turns newlines and control
/// characters into escapes, and long text is cut.
pub(crate) fn quoted(text: &str) -> String {
    if text.chars().count() <= QUOTE_MAX {
        format!("{text:?}")
    } else {
        let cut: String = text.chars().take(QUOTE_MAX).collect();
        format!("{cut:?}...")
    }
}
