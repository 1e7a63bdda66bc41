//! The one way the agent runs a tool (iptables-restore, ipset, nft, …): arguments, standard input
//! fed on its own thread, standard output and error drained on theirs so a tool blocked on a full
//! pipe cannot stall us, a timeout after which it is killed, and errors that name the tool, its
//! arguments and the first line it printed to standard error.

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Why running a tool failed. Display is one line.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// The tool is not installed (or not in PATH).
    #[error(
        "{binary}: not found; install the package that provides it (iptables, ipset, nftables)"
    )]
    MissingBinary {
        /// The binary as configured.
        binary: String,
    },
    /// The tool could not be started for another reason.
    #[error("{binary}: cannot run: {source}")]
    Spawn {
        /// The binary.
        binary: String,
        /// Why.
        source: std::io::Error,
    },
    /// The tool ran and failed.
    #[error("{binary} {args}: {status}: {stderr}")]
    Failed {
        /// The binary.
        binary: String,
        /// Its arguments, space-separated.
        args: String,
        /// "exit code N" or "killed by signal N".
        status: String,
        /// The first non-empty line of its standard error.
        stderr: String,
    },
    /// The tool did not finish in time and was killed.
    #[error("{binary} {args}: no result after {after:?}; killed")]
    Timeout {
        /// The binary.
        binary: String,
        /// Its arguments.
        args: String,
        /// The timeout.
        after: Duration,
    },
    /// Its output is not text.
    #[error("{binary}: unexpected output: {detail}")]
    BadOutput {
        /// The binary.
        binary: String,
        /// What was wrong.
        detail: String,
    },
}

/// How often a running tool is checked for having exited.
const POLL: Duration = Duration::from_millis(2);

/// Runs `binary args`, feeding `stdin`, and returns its standard output; kills it after `timeout`.
pub fn run(
    binary: &Path,
    args: &[&str],
    stdin: Option<&str>,
    timeout: Duration,
) -> Result<String, ProcessError> {
    let name = binary.display().to_string();
    let args_text = args.join(" ");
    let mut command = Command::new(binary);
    let agent = std::process::id();
    // SAFETY: the closure runs in the forked child before exec and calls only prctl and
    // getppid, both async-signal-safe; it touches no memory of the parent.
    unsafe {
        command.pre_exec(move || {
            // A SIGKILLed agent runs no cleanup: its tool (iptables-restore with the whole
            // transaction in the pipe) would otherwise finish the change after the agent died,
            // where neither the journal's owner nor `undrain` racing it can see it.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The agent died between fork and prctl: the signal will never come.
            if libc::getppid() as u32 != agent {
                return Err(std::io::Error::other(
                    "the agent exited while starting the tool",
                ));
            }
            Ok(())
        });
    }
    let mut child = command
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => ProcessError::MissingBinary {
                binary: name.clone(),
            },
            _ => ProcessError::Spawn {
                binary: name.clone(),
                source,
            },
        })?;
    let mut child_stdin = child.stdin.take();
    let mut child_stdout = child.stdout.take().expect("stdout is piped");
    let mut child_stderr = child.stderr.take().expect("stderr is piped");
    let deadline = Instant::now() + timeout;
    // Feed and drain the pipes on their own threads so a tool blocked on a full pipe cannot
    // stall us past the timeout; the threads end when the child exits or is killed.
    let (status, out, err) = std::thread::scope(|scope| {
        if let (Some(mut pipe), Some(input)) = (child_stdin.take(), stdin) {
            scope.spawn(move || {
                // A tool that exits early closes the pipe; its exit status tells why.
                let _ = pipe.write_all(input.as_bytes());
            });
        }
        let out = scope.spawn(move || {
            let mut buf = Vec::new();
            let _ = child_stdout.read_to_end(&mut buf);
            buf
        });
        let err = scope.spawn(move || {
            let mut buf = Vec::new();
            let _ = child_stderr.read_to_end(&mut buf);
            buf
        });
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Ok(status),
                Ok(None) if Instant::now() >= deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break Err(());
                }
                Ok(None) => std::thread::sleep(POLL),
                Err(_) => {
                    let _ = child.kill();
                    break child.wait().map_err(|_| ());
                }
            }
        };
        (
            status,
            out.join().unwrap_or_default(),
            err.join().unwrap_or_default(),
        )
    });
    let status = status.map_err(|()| ProcessError::Timeout {
        binary: name.clone(),
        args: args_text.clone(),
        after: timeout,
    })?;
    if !status.success() {
        use std::os::unix::process::ExitStatusExt;
        let status = match (status.code(), status.signal()) {
            (Some(code), _) => format!("exit code {code}"),
            (None, Some(signal)) => format!("killed by signal {signal}"),
            (None, None) => "failed".to_string(),
        };
        let stderr = String::from_utf8_lossy(&err);
        let first = stderr
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .unwrap_or("(no error output)");
        return Err(ProcessError::Failed {
            binary: name,
            args: args_text,
            status,
            stderr: first.to_string(),
        });
    }
    String::from_utf8(out).map_err(|_| ProcessError::BadOutput {
        binary: name,
        detail: "not UTF-8".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(10);

    #[test]
    fn failure_reports_binary_exit_code_and_first_stderr_line() {
        // `sh -c` stands in for a tool: the runner's process handling is what is tested.
        let err = run(
            Path::new("sh"),
            &["-c", "echo; echo 'first line' >&2; echo second >&2; exit 3"],
            None,
            T,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "sh -c echo; echo 'first line' >&2; echo second >&2; exit 3: exit code 3: first line"
        );
    }

    #[test]
    fn stdin_is_fed_and_stdout_returned() {
        let big = "x".repeat(1 << 20);
        let out = run(Path::new("cat"), &[], Some(&big), T).unwrap();
        assert_eq!(out.len(), big.len());
    }

    #[test]
    fn a_hanging_tool_is_killed_at_the_timeout() {
        let err = run(Path::new("sleep"), &["30"], None, Duration::from_millis(50)).unwrap_err();
        assert!(matches!(err, ProcessError::Timeout { .. }), "{err}");
    }

    /// Set in the copy of this test binary that [`a_tool_dies_with_the_agent`] starts.
    const CHILD_ENV: &str = "DRAIN_AGENT_TOOL_PARENT_PIDFILE";

    /// Not a test of its own: the body of the process [`a_tool_dies_with_the_agent`] kills.
    /// It runs a tool that records its pid and waits far longer than the test.
    #[test]
    fn tool_parent_for_the_pdeathsig_test() {
        let Some(pidfile) = std::env::var_os(CHILD_ENV) else {
            return;
        };
        let script = format!(
            "echo $$ > {}.tmp; mv {0}.tmp {0}; exec sleep 60",
            Path::new(&pidfile).display()
        );
        let _ = run(
            Path::new("sh"),
            &["-c", &script],
            None,
            Duration::from_secs(60),
        );
    }

    #[test]
    fn a_tool_dies_with_the_agent() {
        // A SIGKILLed agent runs no cleanup: a tool it started (iptables-restore with its whole
        // transaction already in the pipe) must not live on and change the host after the
        // agent died, outside anything `undrain` can see.
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("tool.pid");
        let mut parent = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "sys::process::tests::tool_parent_for_the_pdeathsig_test",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, &pidfile)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let tool: i32 = loop {
            if let Ok(text) = std::fs::read_to_string(&pidfile) {
                break text.trim().parse().unwrap();
            }
            assert!(Instant::now() < deadline, "the tool never started");
            std::thread::sleep(Duration::from_millis(10));
        };
        parent.kill().unwrap();
        parent.wait().unwrap();
        // Gone, or a zombie waiting for init to reap it: either way no longer running.
        let running = || {
            std::fs::read_to_string(format!("/proc/{tool}/stat"))
                .map(|s| {
                    !s.rsplit(')')
                        .next()
                        .unwrap_or("")
                        .trim_start()
                        .starts_with('Z')
                })
                .unwrap_or(false)
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while running() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let alive = running();
        if alive {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(tool),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        assert!(!alive, "tool {tool} outlived the process that started it");
    }

    #[test]
    fn a_missing_tool_is_its_own_error() {
        let err = run(Path::new("/nonexistent/tool"), &[], None, T).unwrap_err();
        assert!(
            matches!(&err, ProcessError::MissingBinary { binary } if binary == "/nonexistent/tool"),
            "{err}"
        );
    }
}
