//! Running code inside a named network namespace, disposable namespaces for tests, and the skips
//! of privileged tests.
//!
//! Kernel fact this module is built on: the network namespace is a property of the *thread*
//! (task), not of the process. `setns(fd, CLONE_NEWNET)` is allowed in a multi-threaded process
//! and moves only the calling thread. Everything that binds to a namespace at creation time —
//! netlink sockets, AF_PACKET sockets, TCP listeners, the `/proc/sys/net` view, and threads
//! spawned from that thread (a tokio runtime's workers included) — then lives in the namespace
//! the creating thread was in. So "act in namespace X" means: start a fresh thread, `setns()` it
//! into `/run/netns/X`, and create sockets and runtimes there. The thread ends afterwards, so the
//! caller's thread never changes namespace.

use std::fs::File;
use std::io;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

use nix::sched::{setns, CloneFlags};
use thiserror::Error;

/// Where `ip netns add` bind-mounts named namespaces.
pub const NETNS_RUN_DIR: &str = "/run/netns";

/// Errors of namespace handling; each names the namespace it is about.
#[derive(Debug, Error)]
pub enum NetnsError {
    /// The namespace name cannot be a file name under /run/netns.
    #[error("invalid network namespace name {name:?}: {reason}")]
    InvalidName {
        /// The rejected name.
        name: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// /run/netns/NAME could not be opened (usually: no such namespace).
    #[error("cannot open network namespace {name:?} at {NETNS_RUN_DIR}/{name}: {source}")]
    Open {
        /// Namespace name.
        name: String,
        /// The open(2) error.
        source: io::Error,
    },
    /// setns(2) failed (needs CAP_SYS_ADMIN).
    #[error("cannot enter network namespace {name:?}: {source}")]
    Enter {
        /// Namespace name.
        name: String,
        /// The setns(2) error.
        source: nix::Error,
    },
    /// The worker thread could not be started.
    #[error("cannot spawn a thread for network namespace {name:?}: {source}")]
    Spawn {
        /// Namespace name.
        name: String,
        /// The spawn error.
        source: io::Error,
    },
    /// A command could not be started at all.
    #[error("cannot run {argv:?} in network namespace {name:?}: {source}")]
    Command {
        /// Namespace name.
        name: String,
        /// The command line.
        argv: Vec<String>,
        /// The spawn error.
        source: io::Error,
    },
    /// A command ran but exited unsuccessfully.
    #[error("{argv:?} in network namespace {name:?} failed ({status}): {stderr}")]
    CommandFailed {
        /// Namespace name.
        name: String,
        /// The command line.
        argv: Vec<String>,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// Its standard error, trimmed.
        stderr: String,
    },
}

/// Checks that `name` is a plain file name, so `/run/netns/NAME` cannot escape the directory.
fn validate_name(name: &str) -> Result<(), NetnsError> {
    let reason = if name.is_empty() {
        Some("empty")
    } else if name == "." || name == ".." {
        Some("'.' and '..' are not namespaces")
    } else if name.contains('/') {
        Some("contains '/'")
    } else if name.contains('\0') {
        Some("contains NUL")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(NetnsError::InvalidName {
            name: name.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

/// Runs `f` on a fresh thread that has entered the network namespace `/run/netns/NAME`, and
/// returns its result.
///
/// Netlink/AF_PACKET sockets, listeners and tokio runtimes created inside `f` belong to that
/// namespace, and keep belonging to it after `f` returns (a socket's namespace is fixed at
/// creation). The calling thread is never moved. If `f` panics, the panic is resumed on the
/// calling thread so test assertions inside `f` report normally.
///
/// The thread is scoped (joined before this returns), so `f` may borrow from the caller — a
/// listener to accept on, a plan to install — and need not be `'static`.
pub fn in_netns<T: Send>(name: &str, f: impl FnOnce() -> T + Send) -> Result<T, NetnsError> {
    validate_name(name)?;
    let path = format!("{NETNS_RUN_DIR}/{name}");
    // Opened here, not in the thread, so a missing namespace is reported before any thread starts.
    let file = File::open(&path).map_err(|source| NetnsError::Open {
        name: name.to_owned(),
        source,
    })?;
    std::thread::scope(|scope| {
        let handle = std::thread::Builder::new()
            // Thread names are truncated to 15 bytes by the kernel; this is for debuggers only.
            .name(format!("netns:{name}"))
            .spawn_scoped(scope, move || -> Result<T, NetnsError> {
                setns(&file, CloneFlags::CLONE_NEWNET).map_err(|source| NetnsError::Enter {
                    name: name.to_owned(),
                    source,
                })?;
                drop(file);
                Ok(f())
            })
            .map_err(|source| NetnsError::Spawn {
                name: name.to_owned(),
                source,
            })?;
        // Joined explicitly, so a panic in `f` is resumed here with its own message rather
        // than replaced by the scope's generic "a scoped thread panicked".
        match handle.join() {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// Returns true when the caller may run a privileged (root) test; otherwise prints why the test
/// is skipped and returns false. With `CI=true` in the environment a missing root is a failure
/// (panic), because CI must run every kernel test.
pub fn require_root(test: &str) -> bool {
    nix::unistd::geteuid().is_root()
        || skip(
            test,
            "needs root (network namespaces, setns, raw sockets)",
            is_ci(),
        )
}

/// Returns true when the program `bin` is installed (an executable file in a `PATH` directory);
/// otherwise prints why `test` is skipped and returns false. With `CI=true` a missing program is
/// a failure (panic): CI installs everything with `tests/deps.sh` and must run every test.
pub fn require_tool(test: &str, bin: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    find_executable(bin, &path).is_some()
        || skip(
            test,
            &format!("`{bin}` is not installed (run tests/deps.sh)"),
            is_ci(),
        )
}

/// Returns true when nothing stands in the way of `test` (`obstacle` is `None`); otherwise prints
/// why `test` is skipped and returns false. With `CI=true` an obstacle is a failure (panic).
/// For conditions other than root and programs, e.g. "this machine has a real installation the
/// test must not touch".
pub fn require_no_obstacle(test: &str, obstacle: Option<String>) -> bool {
    match obstacle {
        None => true,
        Some(reason) => skip(test, &reason, is_ci()),
    }
}

/// Whether the environment says this is CI (`CI=true` or `CI=1`), where no test may skip. The
/// one answer every skip helper of the suite (this crate's and the lab's) goes by.
pub fn is_ci() -> bool {
    ci_value_means_ci(std::env::var("CI").ok().as_deref())
}

/// Whether a value of `CI` means CI: the `true` CI services set, or `1`.
fn ci_value_means_ci(v: Option<&str>) -> bool {
    matches!(v, Some("true" | "1"))
}

/// Prints one line saying that `test` is skipped and why, and returns false; under CI panics
/// with the same reason instead, because a skip there would hide a whole tier of tests.
fn skip(test: &str, reason: &str, ci: bool) -> bool {
    if ci {
        panic!("{test}: {reason}, and CI=true forbids skipping");
    }
    eprintln!("skipping {test}: {reason}");
    false
}

/// The first file named `bin` in the directories of `path` (a `PATH`-style list) that has an
/// execute bit, like the shell's `command -v` but without starting a shell.
pub fn find_executable(bin: &str, path: &std::ffi::OsStr) -> Option<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    std::env::split_paths(path)
        .map(|dir| dir.join(bin))
        .find(|file| {
            std::fs::metadata(file)
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// Counter that makes scratch namespace names unique within this process; the pid makes them
/// unique across concurrently running test binaries.
static SCRATCH_COUNTER: AtomicU32 = AtomicU32::new(0);

/// A throw-away network namespace `/run/netns/da-<purpose>-<pid>-<n>` with `lo` up, for tests.
///
/// On drop it kills every process still inside it (found with `ip netns pids`) and deletes it,
/// also when the test failed. It never touches the root namespace.
#[derive(Debug)]
pub struct ScratchNetns {
    name: String,
}

impl ScratchNetns {
    /// Creates a fresh namespace named `da-<purpose>-<pid>-<n>` and brings its `lo` up
    /// (a new namespace's loopback is down, so even local routes would not deliver).
    pub fn new(purpose: &str) -> Result<Self, NetnsError> {
        let n = SCRATCH_COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("da-{purpose}-{}-{n}", std::process::id());
        validate_name(&name)?;
        run_checked(&name, &["ip", "netns", "add", &name])?;
        // From here on Drop cleans up, even if bringing lo up fails.
        let ns = ScratchNetns { name };
        ns.run_ok(&["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name (the file name under /run/netns).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The command `ip netns exec NAME ARGV...`, not yet started, for callers that need to set
    /// its environment or stdio, or to spawn it and keep it running. `ip netns exec` execs
    /// `argv`, so a spawned child's pid is the program's own.
    pub fn command(&self, argv: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).args(argv);
        cmd
    }

    /// Runs `argv` inside the namespace with `ip netns exec` and returns its output, whatever its
    /// exit status.
    pub fn run(&self, argv: &[&str]) -> Result<Output, NetnsError> {
        self.command(argv)
            .output()
            .map_err(|source| NetnsError::Command {
                name: self.name.clone(),
                argv: argv.iter().map(|s| s.to_string()).collect(),
                source,
            })
    }

    /// Like [`run`](Self::run) but fails unless the command exits 0; returns its stdout.
    pub fn run_ok(&self, argv: &[&str]) -> Result<String, NetnsError> {
        let out = self.run(argv)?;
        check_output(&self.name, argv, out)
    }

    /// Adds a veth pair `name`/`peer` inside this namespace, both ends down: a stand-in for an
    /// interface the agent only needs to find (ingress, tracked) when nothing is sent over it.
    pub fn add_veth(&self, name: &str, peer: &str) -> Result<String, NetnsError> {
        self.run_ok(&[
            "ip", "link", "add", name, "type", "veth", "peer", "name", peer,
        ])
    }

    /// Runs `f` on a thread inside this namespace (`f` may borrow); see [`in_netns`].
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, NetnsError> {
        in_netns(&self.name, f)
    }

    /// Kills the processes left in the namespace. A process that sits in the namespace keeps it
    /// alive after `ip netns del` (only the bind mount goes away), so it must go first.
    fn kill_leftovers(&self) {
        let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
        else {
            return;
        };
        let me = std::process::id();
        for pid in String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
            // `ip netns pids` matches whole processes; never kill ourselves even if some
            // thread-group leader of ours were inside.
            .filter(|&p| p as u32 != me)
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

impl Drop for ScratchNetns {
    fn drop(&mut self) {
        self.kill_leftovers();
        match Command::new("ip")
            .args(["netns", "del", &self.name])
            .output()
        {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "warning: ip netns del {} failed: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            Err(e) => eprintln!("warning: cannot run ip netns del {}: {e}", self.name),
        }
    }
}

/// Runs a command in the current namespace on behalf of namespace `name` (for error context).
fn run_checked(name: &str, argv: &[&str]) -> Result<String, NetnsError> {
    let out = Command::new(argv[0])
        .args(&argv[1..])
        .output()
        .map_err(|source| NetnsError::Command {
            name: name.to_owned(),
            argv: argv.iter().map(|s| s.to_string()).collect(),
            source,
        })?;
    check_output(name, argv, out)
}

fn check_output(name: &str, argv: &[&str], out: Output) -> Result<String, NetnsError> {
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(NetnsError::CommandFailed {
            name: name.to_owned(),
            argv: argv.iter().map(|s| s.to_string()).collect(),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn ci_is_true_or_1_and_nothing_else() {
        use super::ci_value_means_ci as ci;
        assert!(ci(Some("true")) && ci(Some("1")));
        for v in [None, Some(""), Some("0"), Some("false"), Some("yes")] {
            assert!(!ci(v), "{v:?}");
        }
    }

    use super::*;

    #[test]
    fn names_that_escape_run_netns_are_rejected() {
        for bad in ["", ".", "..", "a/b", "../etc", "x\0y"] {
            assert!(
                matches!(validate_name(bad), Err(NetnsError::InvalidName { .. })),
                "{bad:?} accepted"
            );
        }
        validate_name("da-test-1-0").unwrap();
    }

    #[test]
    fn a_skip_prints_and_returns_false_outside_ci() {
        assert!(!skip("some_test", "needs something", false));
    }

    #[test]
    #[should_panic(expected = "some_test: needs something, and CI=true forbids skipping")]
    fn a_skip_is_a_failure_under_ci() {
        skip("some_test", "needs something", true);
    }

    #[test]
    fn nothing_in_the_way_means_the_test_runs() {
        assert!(require_no_obstacle("some_test", None));
    }

    #[test]
    fn only_executable_files_in_path_count_as_installed() {
        use std::os::unix::fs::PermissionsExt;
        let first = tempfile::tempdir().unwrap();
        let second = tempfile::tempdir().unwrap();
        let write = |dir: &tempfile::TempDir, name: &str, mode: u32| {
            let file = dir.path().join(name);
            std::fs::write(&file, "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
            file
        };
        write(&first, "tool", 0o644);
        let runnable = write(&second, "tool", 0o755);
        std::fs::create_dir(first.path().join("subdir")).unwrap();
        let path = std::env::join_paths([first.path(), second.path()]).unwrap();
        // The non-executable file earlier in PATH is passed over, as the shell would.
        assert_eq!(find_executable("tool", &path), Some(runnable));
        assert_eq!(find_executable("subdir", &path), None);
        assert_eq!(find_executable("absent", &path), None);
    }

    #[test]
    fn missing_namespace_is_an_open_error_naming_it() {
        let name = format!("da-absent-{}-x", std::process::id());
        match in_netns(&name, || ()) {
            Err(NetnsError::Open { name: n, .. }) => assert_eq!(n, name),
            other => panic!("expected Open error, got {other:?}"),
        }
    }
}
