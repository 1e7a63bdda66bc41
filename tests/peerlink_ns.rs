//! The daemon's peer-link server over real TCP, in a scratch network namespace: `drain-agent
//! run` with a `handoff:` section, this node at 198.18.0.11, its peer at 198.18.0.12 and a
//! stranger at 198.18.0.13 (all on the namespace's `lo`; a client binds the source it plays).
//! What it must do: answer only the peer's address, name itself in `hello`, close a connection
//! that sends no request, cap the connections one peer holds open, and log refusals without a
//! line each.

use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use drain_agent::daemon::peerlink::{MAX_CONNECTIONS, REFUSAL_LOG_INTERVAL, REQUEST_TIMEOUT};
use drain_agent::ops::handoff::{PeerReply, PeerRequest, VipPorts};
use drain_agent::sys::peerlink::{call_on, Key, LinkError};
use drain_test_support::netns::{require_root, ScratchNetns};
use drain_test_support::sockets::{add_lo_addr, connect_from};

const BIN: &str = env!("CARGO_BIN_EXE_drain-agent");
const HERE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 11);
const PEER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 12);
const STRANGER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 13);
const PORT: u16 = 7799;
const KEY: [u8; 32] = [0x5a; 32];

/// A namespace running `drain-agent run` with the peer link; the daemon is stopped and reaped
/// (SIGTERM, then SIGKILL) whatever the test's outcome, before the namespace goes.
struct Fixture {
    daemon: Child,
    _dir: tempfile::TempDir,
    log: PathBuf,
    cfg: drain_agent::config::Config,
    ns: ScratchNetns,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.daemon.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let until = Instant::now() + Duration::from_secs(10);
        while Instant::now() < until {
            if let Ok(Some(_)) = self.daemon.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
    }
}

impl Fixture {
    fn up(purpose: &str) -> Fixture {
        let ns = ScratchNetns::new(purpose).unwrap();
        for addr in [HERE, PEER, STRANGER] {
            add_lo_addr(&ns, addr);
        }
        for link in ["eth0", "trk0"] {
            ns.add_veth(link, &format!("{link}p")).unwrap();
        }
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("handoff.key");
        fs::write(&key, KEY).unwrap();
        fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
        let yaml = format!(
            "vips:\n  - address: 198.18.0.100\n    ports: [80]\ningress_interface: eth0\npeer: {PEER}\ntracked_interface: trk0\nstate_dir: {}\nhandoff:\n  key_file: {}\n  port: {PORT}\n",
            dir.path().join("state").display(),
            key.display()
        );
        let cfg_path = dir.path().join("agent.yaml");
        fs::write(&cfg_path, &yaml).unwrap();
        let cfg = drain_agent::config::Config::from_str(&yaml, "test").unwrap();
        let log = dir.path().join("daemon.log");
        let daemon = ns
            .command(&[
                BIN,
                "-c",
                cfg_path.to_str().unwrap(),
                "--socket",
                dir.path().join("control.sock").to_str().unwrap(),
                "run",
                "--no-fifo",
            ])
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut f = Fixture {
            daemon,
            _dir: dir,
            log,
            cfg,
            ns,
        };
        // "serving" is printed once the control socket and the peer link are both bound.
        f.wait_for_log("the daemon to serve", |log| log.contains("serving"));
        f
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_for_log(&mut self, what: &str, cond: impl Fn(&str) -> bool) {
        let until = Instant::now() + Duration::from_secs(15);
        loop {
            let log = self.log();
            if cond(&log) {
                return;
            }
            if let Some(status) = self.daemon.try_wait().unwrap() {
                panic!("the daemon exited ({status}) waiting for {what}:\n{log}");
            }
            assert!(Instant::now() < until, "no {what} in 15 s:\n{log}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs `f` inside the namespace.
    fn inside<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        self.ns.enter(f).unwrap()
    }

    fn hello(&self) -> PeerRequest {
        PeerRequest::Hello {
            vips: VipPorts::of(&self.cfg),
        }
    }
}

fn connect(src: Ipv4Addr) -> TcpStream {
    connect_from(SocketAddrV4::new(src, 0), SocketAddrV4::new(HERE, PORT)).unwrap()
}

fn ask(src: Ipv4Addr, req: &PeerRequest) -> Result<PeerReply, LinkError> {
    call_on(
        connect(src),
        &Key::from_bytes(&KEY),
        PEER,
        req,
        Duration::from_secs(10),
    )
}

/// Reads until the server closes: `Ok(())` on end-of-file (or a reset), an error if it is
/// still open after `wait`, or if it sent something.
fn closed_within(s: &mut TcpStream, wait: Duration) -> Result<(), String> {
    s.set_read_timeout(Some(wait)).unwrap();
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(0) => Ok(()),
        Ok(n) => Err(format!("got {n} bytes: {:?}", &buf[..n])),
        Err(e) if e.kind() == ErrorKind::ConnectionReset => Ok(()),
        Err(e) => Err(format!("still open after {wait:?} ({e})")),
    }
}

/// True if the server has neither closed nor written to `s`.
fn still_open(s: &mut TcpStream) -> bool {
    s.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 1];
    let open = matches!(s.read(&mut buf), Err(e) if e.kind() == ErrorKind::WouldBlock);
    s.set_nonblocking(false).unwrap();
    open
}

#[test]
#[ignore = "needs root and network namespaces; `make test` runs it"]
fn the_peer_link_answers_the_peer_only_and_names_the_node_answering() {
    if !require_root("the_peer_link_answers_the_peer_only_and_names_the_node_answering") {
        return;
    }
    let f = Fixture::up("plpeer");
    let hello = f.hello();
    f.inside(|| {
        match ask(PEER, &hello).unwrap() {
            PeerReply::Ok { detail } => {
                assert!(
                    detail.contains(&HERE.to_string()) && !detail.contains(&PEER.to_string()),
                    "the reply names the node answering ({HERE}), not its peer: {detail}"
                );
            }
            other => panic!("{other:?}"),
        }
        // The same signed request from another address: read, then closed without a reply
        // (to the sender, a request that went out and was never answered).
        let e = ask(STRANGER, &hello).unwrap_err();
        assert!(matches!(e, LinkError::Unanswered { .. }), "{e}");
        let mut s = connect(STRANGER);
        closed_within(&mut s, Duration::from_secs(10)).unwrap();
    });
}

#[test]
#[ignore = "needs root and network namespaces; `make test` runs it"]
fn a_connection_that_sends_no_request_is_closed_after_the_request_timeout() {
    if !require_root("a_connection_that_sends_no_request_is_closed_after_the_request_timeout") {
        return;
    }
    let mut f = Fixture::up("pltmo");
    f.inside(|| {
        let mut idle = connect(PEER);
        let opened = Instant::now();
        // A half-sent line is no request either.
        idle.write_all(b"{\"signed\":").unwrap();
        closed_within(&mut idle, 3 * REQUEST_TIMEOUT).unwrap();
        assert!(
            opened.elapsed() >= REQUEST_TIMEOUT,
            "closed after {:?}, before the request timeout",
            opened.elapsed()
        );
    });
    f.wait_for_log("the timeout's warning", |log| {
        log.contains("no request in time")
    });
}

#[test]
#[ignore = "needs root and network namespaces; `make test` runs it"]
fn the_connections_one_peer_holds_open_are_capped() {
    if !require_root("the_connections_one_peer_holds_open_are_capped") {
        return;
    }
    let f = Fixture::up("plcap");
    let hello = f.hello();
    f.inside(|| {
        let mut held: Vec<TcpStream> = (0..MAX_CONNECTIONS).map(|_| connect(PEER)).collect();
        // One more is closed at once, while the ones held stay open.
        let mut extra = connect(PEER);
        closed_within(&mut extra, REQUEST_TIMEOUT / 2)
            .unwrap_or_else(|e| panic!("connection {} past the cap: {e}", MAX_CONNECTIONS + 1));
        assert!(held.iter_mut().all(still_open));
        // Once they are gone, the peer is served again.
        drop(held);
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            match ask(PEER, &hello) {
                Ok(PeerReply::Ok { .. }) => break,
                other => assert!(Instant::now() < until, "not served again: {other:?}"),
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    });
}

#[test]
#[ignore = "needs root and network namespaces; `make test` runs it"]
fn refused_connections_are_logged_once_then_counted() {
    if !require_root("refused_connections_are_logged_once_then_counted") {
        return;
    }
    let mut f = Fixture::up("pllog");
    const N: usize = 200;
    f.inside(|| {
        for _ in 0..N {
            let mut s = connect(STRANGER);
            closed_within(&mut s, Duration::from_secs(10)).unwrap();
        }
    });
    // Every refusal is accounted for, by its own line or in a count, once the interval (or
    // the intervals, if the burst straddled a boundary) is over.
    f.wait_for_log("the count of refused connections", |log| {
        refusals(log).0 == N
    });
    let (accounted, lines) = refusals(&f.log());
    assert_eq!(accounted, N);
    assert!(
        lines <= 4,
        "{lines} lines for {N} refusals within one {REFUSAL_LOG_INTERVAL:?} interval:\n{}",
        f.log()
    );
}

/// (refusals accounted for, lines used) in the daemon's log.
fn refusals(log: &str) -> (usize, usize) {
    let (mut accounted, mut lines) = (0, 0);
    for line in log.lines() {
        if line.contains("peer link: connection refused") {
            accounted += 1;
            lines += 1;
        } else if let Some(rest) = line.split("peer link: ").nth(1) {
            if let Some((n, _)) = rest.split_once(" more connection(s) refused") {
                accounted += n.trim().parse::<usize>().unwrap_or(0);
                lines += 1;
            }
        }
    }
    (accounted, lines)
}

#[test]
#[ignore = "needs root and network namespaces; `make test` runs it"]
fn end_without_a_return_path_says_so_and_changes_nothing() {
    if !require_root("end_without_a_return_path_says_so_and_changes_nothing") {
        return;
    }
    let f = Fixture::up("plend");
    let before = f.ns.run_ok(&["iptables-save"]).unwrap_or_default();
    f.inside(|| match ask(PEER, &PeerRequest::End).unwrap() {
        PeerReply::Ok { detail } => assert_eq!(detail, "no return path here"),
        other => panic!("{other:?}"),
    });
    assert_eq!(f.ns.run_ok(&["iptables-save"]).unwrap_or_default(), before);
}
