//! The control socket end to end: a real server on a Unix socket in a temporary directory, the
//! real client, and a fake handler that records what reached it. Needs root: the server serves
//! uid 0 only, and the refusal test runs its client as `nobody` in a forked child.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use drain_agent::config::PositiveDuration;
use drain_agent::daemon::control::{
    call, ControlError, ControlServer, EventSink, Handler, Outcome, Peer, Request,
};
use drain_agent::ops::drain::DrainOptions;
use drain_agent::ops::undrain::UndrainOptions;
use drain_test_support::netns::require_root;
use serde_json::{json, Value};
use tokio::sync::oneshot;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Upper bound for anything a test waits for; never reached when things work.
const PATIENCE: Duration = Duration::from_secs(20);
/// How long the `UntilClientGone` handler keeps sending: well inside `PATIENCE`, so a handler
/// that never learns its client left still reports (and fails the test) before the test gives up.
const HANDLER_PATIENCE: Duration = Duration::from_secs(10);

/// What the `UntilClientGone` handler observed. It goes to the test thread because a check on the
/// server's blocking thread cannot fail the test: its panic becomes an error reply to a client
/// that has already left.
#[derive(Debug)]
struct GoneReport {
    /// Events the sink accepted before refusing one.
    accepted: usize,
    /// The sink refused an event (the loop did not just run out of time).
    send_refused: bool,
    /// `client_connected()` after the refusal.
    connected_after: bool,
}

/// What the fake handler does for a drain.
#[derive(Clone)]
enum DrainScript {
    /// Send these events, then return exit code 7.
    Events(Vec<Value>),
    /// Send event 1, wait until the test says the client saw it, send event 2.
    Lockstep(Arc<Mutex<std::sync::mpsc::Receiver<()>>>),
    /// Send events until the client is gone (bounded by `HANDLER_PATIENCE`), then send what it
    /// saw to the test.
    UntilClientGone(tokio::sync::mpsc::UnboundedSender<GoneReport>),
    /// Take this long.
    Sleep(Duration),
}

/// Records every request that reached it.
struct FakeHandler {
    seen: Mutex<Vec<(Request, Peer)>>,
    drain: DrainScript,
}

impl FakeHandler {
    fn new(drain: DrainScript) -> Arc<FakeHandler> {
        Arc::new(FakeHandler {
            seen: Mutex::new(Vec::new()),
            drain,
        })
    }

    fn seen(&self) -> Vec<(Request, Peer)> {
        self.seen.lock().unwrap().clone()
    }
}

impl Handler for FakeHandler {
    fn handle(&self, request: Request, peer: Peer, events: &EventSink) -> Outcome {
        self.seen.lock().unwrap().push((request.clone(), peer));
        match &request {
            Request::Status => Outcome::ok(json!({"state": "serving", "vrrp": "MASTER"})),
            Request::Undrain(_) | Request::MaintenanceOff(_) => Outcome::error(7, "not drained"),
            Request::MaintenanceOn(m) => Outcome::ok(json!({"reason": m.reason})),
            Request::Drain(args) => match &self.drain {
                DrainScript::Events(list) => {
                    for e in list {
                        events.send(e.clone());
                    }
                    Outcome {
                        result: json!({"drained": true, "args": args}),
                        exit_code: 7,
                    }
                }
                DrainScript::Lockstep(seen_first) => {
                    events.send(json!({"n": 1}));
                    match seen_first.lock().unwrap().recv_timeout(PATIENCE) {
                        Ok(()) => {
                            events.send(json!({"n": 2}));
                            Outcome::ok(json!("streamed"))
                        }
                        Err(_) => Outcome::error(1, "event 1 never reached the client"),
                    }
                }
                DrainScript::UntilClientGone(report) => {
                    let mut accepted = 0;
                    let mut send_refused = false;
                    let start = std::time::Instant::now();
                    while start.elapsed() < HANDLER_PATIENCE {
                        if !events.send(json!({"tick": accepted})) {
                            send_refused = true;
                            break;
                        }
                        accepted += 1;
                        // Paces the events; not an ordering wait (the loop ends on the refusal).
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    let _ = report.send(GoneReport {
                        accepted,
                        send_refused,
                        connected_after: events.client_connected(),
                    });
                    Outcome::ok(json!({"accepted": accepted}))
                }
                DrainScript::Sleep(d) => {
                    std::thread::sleep(*d);
                    Outcome::ok(json!("slept"))
                }
            },
        }
    }
}

/// A running server on a socket in a fresh temporary directory.
struct TestServer {
    _dir: tempfile::TempDir,
    path: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestServer {
    fn start(handler: Arc<dyn Handler>) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sock");
        let server = ControlServer::bind(&path, handler).unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.serve(async {
            let _ = stopped.await;
        }));
        TestServer {
            _dir: dir,
            path,
            stop: Some(stop),
            task: Some(task),
        }
    }

    async fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(PATIENCE, task)
                .await
                .expect("server did not stop")
                .unwrap();
        }
    }
}

async fn status(path: &Path) -> Result<Outcome, ControlError> {
    call(path, &Request::Status, CONNECT_TIMEOUT, |_| {}).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and network namespaces; `make test` runs it"]
async fn status_round_trip() {
    if !require_root("status_round_trip") {
        return;
    }
    let handler = FakeHandler::new(DrainScript::Events(vec![]));
    let mut server = TestServer::start(handler.clone());

    let meta = fs::symlink_metadata(&server.path).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);

    let outcome = status(&server.path).await.unwrap();
    assert_eq!(
        outcome,
        Outcome::ok(json!({"state": "serving", "vrrp": "MASTER"}))
    );
    let seen = handler.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].0, Request::Status);
    assert_eq!(seen[0].1.uid, 0);
    assert_eq!(seen[0].1.pid, Some(std::process::id() as i32));

    // An error outcome travels the same way.
    let undrain = call(
        &server.path,
        &Request::Undrain(UndrainOptions::default()),
        CONNECT_TIMEOUT,
        |_| {},
    )
    .await
    .unwrap();
    assert_eq!(undrain, Outcome::error(7, "not drained"));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and network namespaces; `make test` runs it"]
async fn events_stream_in_order_before_the_result() {
    if !require_root("events_stream_in_order_before_the_result") {
        return;
    }
    let events: Vec<Value> = (0..50).map(|i| json!({"phase": "watch", "i": i})).collect();
    let handler = FakeHandler::new(DrainScript::Events(events.clone()));
    let mut server = TestServer::start(handler.clone());
    let mut got = Vec::new();
    let request = Request::Drain(DrainOptions {
        deadline: Some(PositiveDuration::try_from("30s".to_string()).unwrap()),
        ..DrainOptions::default()
    });
    let outcome = call(&server.path, &request, CONNECT_TIMEOUT, |e| {
        got.push(e.clone())
    })
    .await
    .unwrap();
    assert_eq!(got, events);
    assert_eq!(outcome.exit_code, 7);
    assert_eq!(
        outcome.result,
        json!({"drained": true, "args": {"deadline": "30s"}})
    );
    assert_eq!(handler.seen()[0].0, request);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and network namespaces; `make test` runs it"]
async fn events_reach_the_client_while_the_handler_still_runs() {
    if !require_root("events_reach_the_client_while_the_handler_still_runs") {
        return;
    }
    let (saw_first, seen_first) = std::sync::mpsc::channel();
    let handler = FakeHandler::new(DrainScript::Lockstep(Arc::new(Mutex::new(seen_first))));
    let mut server = TestServer::start(handler);
    let mut got = Vec::new();
    let outcome = call(
        &server.path,
        &Request::Drain(DrainOptions::default()),
        CONNECT_TIMEOUT,
        |e| {
            got.push(e.clone());
            // The handler waits for this before it returns: had the server held events back
            // until the end, event 1 would never arrive and the handler would report failure.
            let _ = saw_first.send(());
        },
    )
    .await
    .unwrap();
    assert_eq!(outcome, Outcome::ok(json!("streamed")));
    assert_eq!(got, vec![json!({"n": 1}), json!({"n": 2})]);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and network namespaces; `make test` runs it"]
async fn a_handler_learns_that_its_client_left_and_finishes() {
    if !require_root("a_handler_learns_that_its_client_left_and_finishes") {
        return;
    }
    let (report, mut reports) = tokio::sync::mpsc::unbounded_channel();
    let handler = FakeHandler::new(DrainScript::UntilClientGone(report));
    let mut server = TestServer::start(handler);
    // A client that sends a drain, reads one event and hangs up.
    let mut s = StdUnixStream::connect(&server.path).unwrap();
    s.write_all(b"{\"op\":\"drain\"}\n").unwrap();
    let mut first = String::new();
    BufReader::new(&s).read_line(&mut first).unwrap();
    assert!(first.starts_with("{\"event\":"), "{first}");
    drop(s);
    let seen = tokio::time::timeout(PATIENCE, reports.recv())
        .await
        .expect("the handler never finished")
        .expect("the handler dropped its report");
    assert!(
        seen.send_refused,
        "the event sink kept accepting for {HANDLER_PATIENCE:?} after the client left: {seen:?}"
    );
    assert!(
        !seen.connected_after,
        "the sink refused an event but still says the client is connected: {seen:?}"
    );
    // The client read one event before leaving, so the sink took at least that one.
    assert!(seen.accepted >= 1, "{seen:?}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and network namespaces; `make test` runs it"]
async fn malformed_requests_get_a_usage_error_and_reach_no_handler() {
    if !require_root("malformed_requests_get_a_usage_error_and_reach_no_handler") {
        return;
    }
    let handler = FakeHandler::new(DrainScript::Events(vec![]));
    let mut server = TestServer::start(handler.clone());
    for bad in ["garbage\n", "{\"op\":\"reboot\"}\n", "{\"op\":\"status\"}"] {
        let path = server.path.clone();
        let bad = bad.to_string();
        let reply = tokio::task::spawn_blocking(move || {
            let mut s = StdUnixStream::connect(&path).unwrap();
            s.set_read_timeout(Some(PATIENCE)).unwrap();
            s.write_all(bad.as_bytes()).unwrap();
            // No newline at all: half-close so the server sees the end of the request.
            s.shutdown(std::net::Shutdown::Write).unwrap();
            let mut line = String::new();
            BufReader::new(&s).read_line(&mut line).unwrap();
            line
        })
        .await
        .unwrap();
        let v: Value = serde_json::from_str(&reply).unwrap();
        assert_eq!(v["exit_code"], 2, "{reply}");
        assert!(
            v["result"]["error"]
                .as_str()
                .unwrap()
                .starts_with("invalid request"),
            "{reply}"
        );
    }
    assert!(handler.seen().is_empty());
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and network namespaces; `make test` runs it"]
async fn stale_socket_is_replaced_live_one_and_other_files_are_not() {
    if !require_root("stale_socket_is_replaced_live_one_and_other_files_are_not") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("control.sock");
    // A daemon that died leaves its socket file behind.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(fs::symlink_metadata(&path).unwrap().file_type().is_socket());
    assert!(StdUnixStream::connect(&path).is_err());

    let handler = FakeHandler::new(DrainScript::Events(vec![]));
    let server = ControlServer::bind(&path, handler.clone()).unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(server.serve(async {
        let _ = stopped.await;
    }));
    assert_eq!(status(&path).await.unwrap().exit_code, 0);

    // A second daemon on the same path is refused and leaves the first one working.
    let second = ControlServer::bind(&path, handler.clone()).unwrap_err();
    assert!(
        matches!(second, ControlError::AlreadyRunning { .. }),
        "{second}"
    );
    assert_eq!(status(&path).await.unwrap().exit_code, 0);

    stop.send(()).unwrap();
    tokio::time::timeout(PATIENCE, task).await.unwrap().unwrap();

    // Something that is not a socket is never removed.
    fs::write(&path, "precious").unwrap();
    let e = ControlServer::bind(&path, handler).unwrap_err();
    assert!(matches!(e, ControlError::NotASocket { .. }), "{e}");
    assert_eq!(fs::read_to_string(&path).unwrap(), "precious");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and network namespaces; `make test` runs it"]
async fn shutdown_finishes_requests_in_progress_and_removes_the_socket() {
    if !require_root("shutdown_finishes_requests_in_progress_and_removes_the_socket") {
        return;
    }
    let handler = FakeHandler::new(DrainScript::Sleep(Duration::from_millis(300)));
    let mut server = TestServer::start(handler.clone());
    let path = server.path.clone();
    let in_flight = tokio::spawn({
        let path = path.clone();
        async move {
            call(
                &path,
                &Request::Drain(DrainOptions::default()),
                CONNECT_TIMEOUT,
                |_| {},
            )
            .await
        }
    });
    // Shut down once the request is inside the handler.
    let start = std::time::Instant::now();
    while handler.seen().is_empty() {
        assert!(
            start.elapsed() < PATIENCE,
            "request never reached the handler"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.shutdown().await;
    assert!(!path.exists(), "socket file left behind");
    let outcome = in_flight.await.unwrap().unwrap();
    assert_eq!(outcome, Outcome::ok(json!("slept")));

    let e = status(&path).await.unwrap_err();
    assert!(matches!(e, ControlError::Connect { .. }), "{e}");
    assert!(
        e.to_string().contains("is `drain-agent run` running?"),
        "{e}"
    );
}

/// What a client running as `nobody` experienced.
#[derive(Debug)]
enum NobodyResult {
    /// connect(2) failed with this errno.
    ConnectFailed(i32),
    /// It connected; this is everything the server sent.
    Reply(String),
}

/// Forks a child that drops to `nobody`, connects to `path`, sends `request` and passes back
/// whatever the server answered. The child uses raw system calls only: after fork() in a
/// multi-threaded process nothing else is safe.
fn as_nobody(path: &Path, request: &str) -> NobodyResult {
    use nix::sys::wait::{waitpid, WaitStatus};
    use nix::unistd::{fork, ForkResult, User};
    use std::io::Read;
    use std::os::fd::{AsRawFd, OwnedFd};

    let (uid, gid) = match User::from_name("nobody") {
        Ok(Some(u)) => (u.uid.as_raw(), u.gid.as_raw()),
        _ => (65534, 65534),
    };
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_encoded_bytes();
    assert!(bytes.len() < addr.sun_path.len());
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    let request = request.as_bytes().to_vec();
    let (rx, tx): (OwnedFd, OwnedFd) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();

    match unsafe { fork() }.unwrap() {
        ForkResult::Child => unsafe {
            let out = tx.as_raw_fd();
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setgid(gid) != 0
                || libc::setuid(uid) != 0
            {
                libc::_exit(2);
            }
            let s = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
            if s < 0 {
                libc::_exit(3);
            }
            let tv = libc::timeval {
                tv_sec: 10,
                tv_usec: 0,
            };
            libc::setsockopt(
                s,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                &tv as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            );
            if libc::connect(
                s,
                &addr as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
            ) != 0
            {
                let errno = *libc::__errno_location();
                libc::_exit(100 + errno.clamp(0, 150));
            }
            libc::write(s, request.as_ptr() as *const libc::c_void, request.len());
            let mut buf = [0u8; 1024];
            loop {
                let n = libc::read(s, buf.as_mut_ptr() as *mut libc::c_void, buf.len());
                if n <= 0 {
                    break;
                }
                libc::write(out, buf.as_ptr() as *const libc::c_void, n as usize);
            }
            libc::_exit(0);
        },
        ForkResult::Parent { child } => {
            drop(tx);
            let mut reply = String::new();
            std::fs::File::from(rx).read_to_string(&mut reply).unwrap();
            match waitpid(child, None).unwrap() {
                WaitStatus::Exited(_, 0) => NobodyResult::Reply(reply),
                WaitStatus::Exited(_, code) if code >= 100 => {
                    NobodyResult::ConnectFailed(code - 100)
                }
                other => panic!("nobody client failed: {other:?}"),
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and network namespaces; `make test` runs it"]
async fn non_root_peers_are_refused() {
    if !require_root("non_root_peers_are_refused") {
        return;
    }
    let handler = FakeHandler::new(DrainScript::Events(vec![]));
    let mut server = TestServer::start(handler.clone());
    let dir = server.path.parent().unwrap().to_path_buf();
    // Let `nobody` reach the socket file at all (temporary directories are 0700).
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();

    // First line of defence: the socket file is 0600, so connect(2) is refused by the kernel.
    let path = server.path.clone();
    let r = tokio::task::spawn_blocking(move || as_nobody(&path, "{\"op\":\"drain\"}\n"))
        .await
        .unwrap();
    assert!(
        matches!(r, NobodyResult::ConnectFailed(libc::EACCES)),
        "{r:?}"
    );

    // Second line: even with the file opened up, the peer credentials decide.
    fs::set_permissions(&server.path, fs::Permissions::from_mode(0o666)).unwrap();
    let path = server.path.clone();
    let r = tokio::task::spawn_blocking(move || as_nobody(&path, "{\"op\":\"drain\"}\n"))
        .await
        .unwrap();
    let NobodyResult::Reply(reply) = r else {
        panic!("expected a refusal, got {r:?}");
    };
    assert_eq!(reply.lines().count(), 1, "{reply}");
    let v: Value = serde_json::from_str(reply.trim_end()).unwrap();
    assert_eq!(v["exit_code"], 4, "{reply}");
    let msg = v["result"]["error"].as_str().unwrap();
    assert!(
        msg.starts_with("permission denied") && msg.contains("root (uid 0) only"),
        "{msg}"
    );
    assert!(
        handler.seen().is_empty(),
        "a refused request reached the handler"
    );

    // Root still gets through.
    assert_eq!(status(&server.path).await.unwrap().exit_code, 0);
    server.shutdown().await;
}
