use super::client::MAX_REPLY_BYTES;
use super::connection::{forward, Forwarded};
use super::protocol::{read_line, Reply};
use super::*;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use crate::config::PositiveDuration;
use crate::ops::drain::DrainOptions;
use crate::ops::exit;
use crate::ops::undrain::UndrainOptions;
use serde_json::json;
use serde_json::Value;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

#[test]
fn requests_carry_their_arguments_inline() {
    let r = Request::Drain(DrainOptions {
        deadline: Some(PositiveDuration::try_from("30s".to_string()).unwrap()),
        ..DrainOptions::default()
    });
    let text = serde_json::to_string(&r).unwrap();
    assert_eq!(text, r#"{"op":"drain","deadline":"30s"}"#);
    let back: Request = serde_json::from_str(&text).unwrap();
    assert_eq!(back, r);
    let status: Request = serde_json::from_str(r#"{"op":"status"}"#).unwrap();
    assert_eq!(status, Request::Status);
    let undrain: Request =
        serde_json::from_str(r#"{"op":"undrain","keep_link_down":true}"#).unwrap();
    assert_eq!(
        undrain,
        Request::Undrain(UndrainOptions {
            keep_link_down: true
        })
    );
    assert_eq!(
        serde_json::from_str::<Request>(r#"{"op":"drain"}"#).unwrap(),
        Request::Drain(DrainOptions::default())
    );
}

#[test]
fn unknown_or_missing_ops_and_bad_arguments_are_rejected() {
    assert!(serde_json::from_str::<Request>(r#"{"op":"reboot"}"#).is_err());
    assert!(serde_json::from_str::<Request>(r#"{"deadline":"1s"}"#).is_err());
    assert!(serde_json::from_str::<Request>(r#"[1]"#).is_err());
    assert!(serde_json::from_str::<Request>(r#"{"op":"drain","deadline":"soon"}"#).is_err());
    assert!(serde_json::from_str::<Request>(r#"{"op":"undrain","keep_link_down":"yes"}"#).is_err());
}

#[test]
fn replies_round_trip() {
    for reply in [
        Reply::Event(json!({"phase": "divert", "sockets": 3})),
        Reply::Event(Value::Null),
        Reply::Final(Outcome::ok(json!({"state": "serving"}))),
        Reply::Final(Outcome::ok(Value::Null)),
        Reply::Final(Outcome::error(7, "not MASTER")),
    ] {
        let line = reply.to_line();
        assert!(line.ends_with('\n') && !line[..line.len() - 1].contains('\n'));
        assert_eq!(Reply::parse(&line).unwrap(), reply);
    }
}

#[test]
fn malformed_replies_are_protocol_errors() {
    for line in [
        "nonsense",
        "[]",
        "{}",
        r#"{"result":1}"#,
        r#"{"exit_code":0}"#,
        r#"{"result":1,"exit_code":256}"#,
        r#"{"result":1,"exit_code":-1}"#,
        r#"{"result":1,"exit_code":0,"x":1}"#,
        r#"{"event":1,"x":1}"#,
    ] {
        assert!(Reply::parse(line).is_err(), "{line}");
    }
}

/// A handler that sends `events` events of about 1 KB and tells `finished` when it returns.
struct Chatty {
    events: usize,
    finished: std::sync::mpsc::Sender<bool>,
}

impl Handler for Chatty {
    fn handle(&self, _: Request, _: Peer, sink: &EventSink) -> Outcome {
        let pad = "x".repeat(1000);
        let all_sent = (0..self.events).all(|i| sink.send(json!({"n": i, "pad": pad})));
        let _ = self.finished.send(all_sent);
        Outcome::ok(json!("done"))
    }
}

/// Runs `forward` for a [`Chatty`] handler over a real socket pair whose client end is
/// returned unread.
fn chatty_forward(
    events: usize,
    final_timeout: Duration,
) -> (
    tokio::task::JoinHandle<(Outcome, Forwarded)>,
    UnixStream,
    std::sync::mpsc::Receiver<bool>,
) {
    let (server, client) = UnixStream::pair().unwrap();
    let (finished, handler_done) = std::sync::mpsc::channel();
    let (sink, rx) = EventSink::new();
    let handler = Chatty { events, finished };
    let dropped = sink.dropped.clone();
    let job =
        tokio::task::spawn_blocking(move || handler.handle(Request::Status, test_peer(), &sink));
    let task = tokio::spawn(async move {
        let mut server = server;
        let (o, mut f) = forward(&mut server, rx, job, "status", final_timeout).await;
        f.dropped += dropped.load(std::sync::atomic::Ordering::Relaxed);
        (o, f)
    });
    (task, client, handler_done)
}

fn test_peer() -> Peer {
    Peer {
        pid: None,
        uid: 0,
        gid: 0,
    }
}

/// Bound of the waits below: only reached when something hangs.
const HANG: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_read_loses_events_but_not_the_final_line() {
    // 20 MB of events, far more than the socket buffer and the pending bound hold.
    let (task, client, handler_done) = chatty_forward(20_000, HANG);
    let all_sent = tokio::task::spawn_blocking(move || handler_done.recv_timeout(HANG))
        .await
        .unwrap()
        .expect("the handler finishes while its client does not read");
    assert!(all_sent, "a slow client is not a gone client");
    let mut reader = BufReader::new(client);
    let mut events = 0;
    let last = loop {
        let line = tokio::time::timeout(HANG, read_line(&mut reader, MAX_REPLY_BYTES))
            .await
            .unwrap()
            .unwrap()
            .expect("the final line comes before the end");
        match Reply::parse(&line).expect("every line is whole") {
            Reply::Event(_) => events += 1,
            Reply::Final(o) => break o,
        }
    };
    assert_eq!(last, Outcome::ok(json!("done")));
    let (_, forwarded) = task.await.unwrap();
    assert!(forwarded.final_sent);
    assert!(
        forwarded.dropped > 0 && events + forwarded.dropped == 20_000,
        "events {events}, dropped {}",
        forwarded.dropped
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_cannot_hold_its_connection() {
    let (task, client, _) = chatty_forward(20_000, Duration::from_millis(200));
    let (outcome, forwarded) = tokio::time::timeout(HANG, task)
        .await
        .expect("the connection ends although its client never reads")
        .unwrap();
    assert_eq!(outcome, Outcome::ok(json!("done")));
    assert!(!forwarded.final_sent);
    drop(client);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_does_not_wait_for_a_client_that_never_reads() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ctl.sock");
    let (finished, handler_done) = std::sync::mpsc::channel();
    let server = ControlServer::bind(
        &path,
        Arc::new(Chatty {
            events: 20_000,
            finished,
        }),
    )
    .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.serve(async move {
        let _ = stopped.await;
    }));
    // A client that sends its request and then never reads a byte (a suspended terminal).
    let mut client = UnixStream::connect(&path).await.unwrap();
    client.write_all(b"{\"op\":\"status\"}\n").await.unwrap();
    tokio::task::spawn_blocking(move || handler_done.recv_timeout(HANG))
        .await
        .unwrap()
        .expect("the handler is not held by the client");
    stop.send(()).unwrap();
    tokio::time::timeout(HANG, serving)
        .await
        .expect("shutdown does not wait for the client that never reads")
        .unwrap();
    assert!(!path.exists(), "the socket file went with the server");
    drop(client);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_cap_are_refused_busy_and_the_slots_come_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ctl.sock");
    let (finished, _handler_done) = std::sync::mpsc::channel();
    let server = ControlServer::bind(
        &path,
        Arc::new(Chatty {
            events: 0,
            finished,
        }),
    )
    .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.serve(async move {
        let _ = stopped.await;
    }));
    let call_status = || async {
        tokio::time::timeout(HANG, call(&path, &Request::Status, HANG, |_| {}))
            .await
            .unwrap()
            .unwrap()
    };
    // Idle connections (no request sent) take every slot.
    let mut idle = Vec::new();
    for _ in 0..MAX_CONNECTIONS {
        idle.push(UnixStream::connect(&path).await.unwrap());
    }
    let refused = call_status().await;
    assert_eq!(refused.exit_code, exit::BUSY, "{:?}", refused.result);
    drop(idle);
    let start = std::time::Instant::now();
    loop {
        if call_status().await == Outcome::ok(json!("done")) {
            break;
        }
        assert!(start.elapsed() < HANG, "the slots never came back");
    }
    stop.send(()).unwrap();
    tokio::time::timeout(HANG, serving).await.unwrap().unwrap();
}

#[tokio::test]
async fn read_line_bounds_and_terminates() {
    let data: &[u8] = b"abc\ndef";
    let mut r = BufReader::new(data);
    assert_eq!(read_line(&mut r, 10).await.unwrap().unwrap(), "abc\n");
    assert_eq!(
        read_line(&mut r, 10).await.unwrap_err().kind(),
        io::ErrorKind::UnexpectedEof
    );
    let long: &[u8] = b"0123456789abcdef\n";
    let mut r = BufReader::new(long);
    assert_eq!(
        read_line(&mut r, 8).await.unwrap_err().kind(),
        io::ErrorKind::InvalidData
    );
    let empty: &[u8] = b"";
    assert!(read_line(&mut BufReader::new(empty), 8)
        .await
        .unwrap()
        .is_none());
}
