//! `drain-agent run` with a corrupt journal, in a scratch network namespace: the daemon must
//! stay up and answer (a crash at start is a crash loop under `Restart=on-failure`, with no
//! control socket, FIFO or peer link), and refuse drains with an error that names the journal
//! and says how to repair it.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use drain_test_support::netns::{require_root, ScratchNetns};

const BIN: &str = env!("CARGO_BIN_EXE_drain-agent");

/// The daemon, stopped (SIGTERM, then SIGKILL) and reaped whatever the test's outcome.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let until = Instant::now() + Duration::from_secs(10);
        while Instant::now() < until {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn agent(ns: &ScratchNetns, cfg: &Path, sock: &Path, args: &[&str]) -> Output {
    let mut argv = vec![
        BIN,
        "-c",
        cfg.to_str().unwrap(),
        "--socket",
        sock.to_str().unwrap(),
    ];
    argv.extend_from_slice(args);
    ns.command(&argv).output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
#[ignore = "needs root and network namespaces; `make test` runs it"]
fn a_corrupt_journal_does_not_stop_the_daemon_and_drains_are_refused() {
    if !require_root("a_corrupt_journal_does_not_stop_the_daemon_and_drains_are_refused") {
        return;
    }
    let ns = ScratchNetns::new("jrnl").unwrap();
    for link in ["eth0", "trk0"] {
        ns.add_veth(link, &format!("{link}p")).unwrap();
        ns.run_ok(&["ip", "link", "set", link, "up"]).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    fs::create_dir(&state).unwrap();
    fs::set_permissions(&state, fs::Permissions::from_mode(0o700)).unwrap();
    // A journal cut short mid-entry (what a crash on a file system that lost data leaves).
    let journal = state.join("drain-journal.json");
    fs::write(
        &journal,
        b"[\n  {\n    \"at\": 1,\n    \"pid\": 1,\n    \"kind\": \"link-do",
    )
    .unwrap();
    let cfg = dir.path().join("agent.yaml");
    fs::write(
        &cfg,
        format!(
            "vips:\n  - address: 198.18.0.100\n    ports: [80]\ningress_interface: eth0\npeer: 198.18.0.12\ntracked_interface: trk0\nstate_dir: {}\n",
            state.display()
        ),
    )
    .unwrap();
    let sock = dir.path().join("control.sock");
    let log = fs::File::create(dir.path().join("daemon.log")).unwrap();
    let child = ns
        .command(&[
            BIN,
            "-c",
            cfg.to_str().unwrap(),
            "--socket",
            sock.to_str().unwrap(),
            "run",
            "--no-fifo",
        ])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut daemon = Daemon(child);
    let daemon_log = || fs::read_to_string(dir.path().join("daemon.log")).unwrap_or_default();

    // Serving once the socket exists; an exit before that is the bug.
    let until = Instant::now() + Duration::from_secs(10);
    while !sock.exists() {
        if let Some(status) = daemon.0.try_wait().unwrap() {
            panic!(
                "drain-agent run exited ({status}) with a corrupt journal instead of serving:\n{}",
                daemon_log()
            );
        }
        assert!(
            Instant::now() < until,
            "no control socket in 10 s:\n{}",
            daemon_log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        daemon_log().contains("start-up repair skipped")
            && daemon_log().contains("drain-journal.json"),
        "the daemon says why it did not repair:\n{}",
        daemon_log()
    );

    // `status` is answered (by the daemon: no --local): the node's state as the kernel has it,
    // with the journal's problem on top, and exit 0 (it reported what it was asked).
    let status = agent(&ns, &cfg, &sock, &["status"]);
    let out = text(&status);
    assert_eq!(status.status.code(), Some(0), "{out}");
    assert!(
        out.contains("drain-journal.json") && out.contains("corrupt") && out.contains("mode: "),
        "{out}"
    );

    // A drain is refused, naming the file and the repair, and changes nothing.
    let before = ns.run_ok(&["iptables-save"]).unwrap_or_default();
    let drain = agent(&ns, &cfg, &sock, &["drain"]);
    let out = text(&drain);
    assert_eq!(drain.status.code(), Some(4), "{out}");
    assert!(
        out.contains(&journal.display().to_string())
            && out.contains("drains are refused")
            && out.contains("drain-agent undrain"),
        "{out}"
    );
    assert_eq!(
        out.trim().lines().count(),
        1,
        "one line, not a report: {out}"
    );
    assert_eq!(ns.run_ok(&["iptables-save"]).unwrap_or_default(), before);
    assert_eq!(
        fs::read(&journal).unwrap(),
        b"[\n  {\n    \"at\": 1,\n    \"pid\": 1,\n    \"kind\": \"link-do",
        "the journal is left for the operator"
    );
    assert!(
        daemon.0.try_wait().unwrap().is_none(),
        "the daemon is still up:\n{}",
        daemon_log()
    );
}
