//! The keepalived module against the real keepalived (2.2.7 here), running the shipped
//! keepalived-lb1.conf alone in a scratch network namespace, with only its paths redirected into
//! a temporary directory: the FIFO follower sees every transition and survives a reload and a
//! restart, the track file and the tracked interface each put the instance in FAULT and back,
//! and every `notify` call's arguments parse.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use drain_agent::keepalived::{
    FifoEvent, FifoLine, NotifyArgs, NotifyFifo, TrackFile, VrrpKind, VrrpState, DEFAULT_FIFO_PATH,
    DEFAULT_TRACK_FILE_PATH,
};
use drain_test_support::netns::{require_root, require_tool, ScratchNetns};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Longest wait for one expected event. keepalived becomes MASTER about 3.6 s after it starts
/// (three missed adverts at `advert_int 1`, plus skew); everything else takes well under 1 s.
const PATIENCE: Duration = Duration::from_secs(20);

/// keepalived running in the namespace, killed if a test ends while it runs.
struct Keepalived<'a> {
    child: Option<Child>,
    ns: &'a ScratchNetns,
    conf: PathBuf,
    dir: PathBuf,
}

impl<'a> Keepalived<'a> {
    fn start(ns: &'a ScratchNetns, conf: &Path, dir: &Path) -> Keepalived<'a> {
        let mut k = Keepalived {
            child: None,
            ns,
            conf: conf.to_path_buf(),
            dir: dir.to_path_buf(),
        };
        k.spawn();
        k
    }

    fn spawn(&mut self) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("keepalived.log"))
            .unwrap();
        // `ip netns exec` execs keepalived, so the child's pid is keepalived's main process.
        let child = self
            .ns
            .command(&["keepalived"])
            .args(["-n", "-P", "-l", "-D", "-f"])
            .arg(&self.conf)
            // Private pid files: another keepalived on this host must not be disturbed.
            .arg("-p")
            .arg(self.dir.join("keepalived.pid"))
            .arg("-r")
            .arg(self.dir.join("vrrp.pid"))
            .arg("-c")
            .arg(self.dir.join("checkers.pid"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("cannot start keepalived");
        self.child = Some(child);
    }

    fn signal(&self, signal: Signal) {
        let pid = self.child.as_ref().expect("keepalived not running").id();
        kill(Pid::from_raw(pid as i32), signal).unwrap();
    }

    /// Sends SIGTERM and waits (bounded) until keepalived has exited.
    fn stop(&mut self) {
        self.signal(Signal::SIGTERM);
        let mut child = self.child.take().unwrap();
        let start = Instant::now();
        while child.try_wait().unwrap().is_none() {
            assert!(start.elapsed() < PATIENCE, "keepalived ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.join("keepalived.log")).unwrap_or_default()
    }
}

impl Drop for Keepalived<'_> {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Waits for the next VRRP state line, skipping Opened/Closed; panics with keepalived's log on
/// anything else or on timeout.
async fn next_state(fifo: &mut NotifyFifo, k: &Keepalived<'_>) -> NotifyArgs {
    loop {
        match next_event(fifo, k).await {
            FifoEvent::Line(FifoLine::State(n)) => return n,
            FifoEvent::Opened | FifoEvent::Closed => continue,
            other => panic!("unexpected FIFO event {other:?}\n{}", k.log()),
        }
    }
}

async fn next_event(fifo: &mut NotifyFifo, k: &Keepalived<'_>) -> FifoEvent {
    match tokio::time::timeout(PATIENCE, fifo.next()).await {
        Ok(Ok(event)) => event,
        Ok(Err(e)) => panic!("{e}\n{}", k.log()),
        Err(_) => panic!("no FIFO event within {PATIENCE:?}\n{}", k.log()),
    }
}

fn vi1(state: VrrpState) -> NotifyArgs {
    NotifyArgs {
        kind: VrrpKind::Instance,
        name: "VI_1".to_string(),
        state,
        priority: Some(150),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and network namespaces; `make test` runs it"]
async fn real_keepalived_fifo_notify_and_both_failover_triggers() {
    if !require_root("real_keepalived_fifo_notify_and_both_failover_triggers")
        || !require_tool(
            "real_keepalived_fifo_notify_and_both_failover_triggers",
            "keepalived",
        )
    {
        return;
    }

    // lb1 of the lab: eth0 with its address, trk0 up; veth ends stand in for the dummy.
    let ns = ScratchNetns::new("kart").unwrap();
    for (dev, peer) in [("eth0", "eth0p"), ("trk0", "trk0p")] {
        ns.run_ok(&[
            "ip", "link", "add", dev, "type", "veth", "peer", "name", peer,
        ])
        .unwrap();
        ns.run_ok(&["ip", "link", "set", dev, "up"]).unwrap();
        ns.run_ok(&["ip", "link", "set", peer, "up"]).unwrap();
    }
    ns.run_ok(&["ip", "addr", "add", "198.18.0.11/24", "dev", "eth0"])
        .unwrap();

    // The shipped configuration with its three paths moved into a private directory. The
    // directory is root's and 0700 under a sticky /tmp, which script security accepts.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let fifo_path = d.join("vrrp.fifo");
    let track = TrackFile::new(d.join("keepalived.track"));
    let notify_log = d.join("notify.log");
    let notify_script = d.join("notify.sh");
    fs::write(
        &notify_script,
        format!("#!/bin/sh\necho \"$*\" >> {}\n", notify_log.display()),
    )
    .unwrap();
    fs::set_permissions(
        &notify_script,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let shipped = fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("keepalived/keepalived-lb1.conf"),
    )
    .unwrap();
    let conf_text = shipped
        .replace(DEFAULT_FIFO_PATH, fifo_path.to_str().unwrap())
        .replace(DEFAULT_TRACK_FILE_PATH, track.path().to_str().unwrap())
        .replace(
            "\"/usr/local/sbin/drain-agent notify\"",
            &format!("\"{}\"", notify_script.display()),
        );
    assert_ne!(conf_text, shipped);
    let conf = d.join("keepalived.conf");
    fs::write(&conf, conf_text).unwrap();

    // The follower starts before keepalived: the FIFO does not exist yet.
    let mut fifo = NotifyFifo::new(&fifo_path).with_poll_interval(Duration::from_millis(50));
    let mut k = Keepalived::start(&ns, &conf, d);

    assert_eq!(next_event(&mut fifo, &k).await, FifoEvent::Opened);
    assert_eq!(next_state(&mut fifo, &k).await, vi1(VrrpState::Backup));
    assert_eq!(next_state(&mut fifo, &k).await, vi1(VrrpState::Master));

    // Second trigger: the track file. -254 is FAULT (priority unchanged in the notice), 0 clears.
    let t = Instant::now();
    track.write(TrackFile::FAULT).unwrap();
    assert_eq!(next_state(&mut fifo, &k).await, vi1(VrrpState::Fault));
    // Information only (never asserted): how fast each trigger reaches the FIFO reader.
    eprintln!("track file -254 -> FAULT line: {:?}", t.elapsed());
    track.write(TrackFile::OK).unwrap();
    assert_eq!(next_state(&mut fifo, &k).await, vi1(VrrpState::Backup));
    assert_eq!(next_state(&mut fifo, &k).await, vi1(VrrpState::Master));

    // A reload unlinks the FIFO, closes it and creates a new one. The follower moves over. It
    // learns no state there: keepalived 2.2.7 does not repeat the states after a reload, even
    // with fifo_write_vrrp_states_on_reload (keepalived issue #2359), so a reader must treat
    // the state as unknown after `Closed`.
    k.signal(Signal::SIGHUP);
    assert_eq!(next_event(&mut fifo, &k).await, FifoEvent::Closed);
    assert_eq!(next_event(&mut fifo, &k).await, FifoEvent::Opened);

    // First trigger, followed on the new FIFO: the tracked interface.
    let t = Instant::now();
    ns.run_ok(&["ip", "link", "set", "trk0", "down"]).unwrap();
    assert_eq!(next_state(&mut fifo, &k).await, vi1(VrrpState::Fault));
    eprintln!(
        "trk0 down (incl. running ip) -> FAULT line: {:?}",
        t.elapsed()
    );
    ns.run_ok(&["ip", "link", "set", "trk0", "up"]).unwrap();
    assert_eq!(next_state(&mut fifo, &k).await, vi1(VrrpState::Backup));
    assert_eq!(next_state(&mut fifo, &k).await, vi1(VrrpState::Master));

    // Stopping: STOP, then end-of-file, and keepalived removes the FIFO it created.
    k.stop();
    assert_eq!(next_state(&mut fifo, &k).await, vi1(VrrpState::Stop));
    assert_eq!(next_event(&mut fifo, &k).await, FifoEvent::Closed);
    assert!(!fifo_path.exists(), "keepalived left its FIFO behind");

    // Starting again: the follower finds the new FIFO by itself.
    k.spawn();
    assert_eq!(next_event(&mut fifo, &k).await, FifoEvent::Opened);
    assert_eq!(next_state(&mut fifo, &k).await, vi1(VrrpState::Backup));
    assert_eq!(next_state(&mut fifo, &k).await, vi1(VrrpState::Master));
    k.stop();

    // Every notify call had four arguments that parse, and together they saw the same transitions.
    // keepalived does not wait for notify scripts, so the last one may still be running.
    let expected_tail = "INSTANCE VI_1 STOP 150";
    let start = Instant::now();
    let log = loop {
        let log = fs::read_to_string(&notify_log).unwrap_or_default();
        if log.lines().filter(|l| *l == expected_tail).count() == 2 {
            break log;
        }
        assert!(start.elapsed() < PATIENCE, "notify log incomplete:\n{log}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let states: Vec<VrrpState> = log
        .lines()
        .map(|line| {
            let args: Vec<String> = line.split(' ').map(str::to_string).collect();
            assert_eq!(args.len(), 4, "{line}");
            let n = NotifyArgs::parse(&args).unwrap_or_else(|e| panic!("{line}: {e}"));
            assert_eq!(
                (n.kind, n.name.as_str(), n.priority),
                (VrrpKind::Instance, "VI_1", Some(150))
            );
            n.state
        })
        .collect();
    // keepalived starts each notify script without waiting for the previous one, so calls close
    // together (FAULT then BACKUP above) may log in either order: only the FIFO is ordered.
    let count = |state| states.iter().filter(|s| **s == state).count();
    assert_eq!(
        [
            count(VrrpState::Backup),
            count(VrrpState::Master),
            count(VrrpState::Fault),
            count(VrrpState::Stop)
        ],
        [4, 4, 2, 2],
        "{log}"
    );
    assert_eq!(states.len(), 12, "{log}");
}
