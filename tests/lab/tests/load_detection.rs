//! Misbehaving servers on loopback: each kind of broken flow must be classified as exactly the
//! right outcome, every time. A lab that silently misses failures is worthless.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{quiet_spec, serve_with, with_flows, TestBackend};
use drain_lab::backend::fill_pattern;
use drain_lab::load::{self, FlowClass, LoadReport, LoadSpec, Outcome};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Flows per case: several, so a classification that depends on luck shows.
const FLOWS: u32 = 3;

/// Runs `spec` and asserts that every flow of `class` ended with `want`, that no other class ran,
/// and that each failure's detail mentions `detail`.
async fn expect_all(spec: &LoadSpec, class: FlowClass, want: Outcome, detail: &str) -> LoadReport {
    let report = load::run(spec).await.expect("valid spec");
    eprint!("{}", report.table());
    let c = report.classes.get(class);
    assert_eq!(c.started, u64::from(FLOWS), "{class:?} started");
    assert_eq!(
        c.count(want),
        c.started,
        "every {class:?} flow must be {want:?}; failures: {:#?}",
        report.failures
    );
    assert_eq!(report.totals.started, c.started, "only {class:?} ran");
    if want != Outcome::Ok {
        assert_eq!(report.broken(), c.started);
        assert_eq!(report.failures.len(), FLOWS as usize);
        for f in &report.failures {
            assert_eq!((f.class, f.outcome), (class, want));
            assert!(
                f.detail.contains(detail),
                "detail {:?} should mention {detail:?}",
                f.detail
            );
        }
    }
    report
}

fn http_spec(addr: SocketAddr, class: FlowClass) -> LoadSpec {
    with_flows(quiet_spec(addr.port(), 1), class, FLOWS)
}

fn echo_spec(addr: SocketAddr) -> LoadSpec {
    with_flows(quiet_spec(1, addr.port()), FlowClass::Echo, FLOWS)
}

/// Reads one request head (the generator never sends a body).
async fn read_request(s: &mut TcpStream) -> bool {
    let mut buf = Vec::new();
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(_) => {}
        }
    }
    true
}

/// A 200 response with a `len`-byte body, of which only the first `send` bytes are written,
/// optionally with one byte flipped.
fn response(len: usize, send: usize, flip: Option<usize>) -> Vec<u8> {
    let mut body = vec![0u8; send];
    fill_pattern(0, &mut body);
    if let Some(i) = flip {
        body[i] ^= 0x20;
    }
    let mut r = format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n")
        .into_bytes();
    r.extend_from_slice(&body);
    r
}

/// Closes like a well-behaved server (FIN, never RST): shut our side, then read until the
/// client's FIN so no unread byte turns the close into an RST.
async fn graceful_close(mut s: TcpStream) {
    let _ = s.shutdown().await;
    let mut sink = [0u8; 1024];
    while let Ok(n) = s.read(&mut sink).await {
        if n == 0 {
            break;
        }
    }
}

/// Aborts the connection: SO_LINGER 0 makes close() send an RST.
fn reset(s: TcpStream) {
    s.set_zero_linger().expect("SO_LINGER 0");
    drop(s);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn good_backend_is_ok_for_every_class() {
    let backend = TestBackend::start();
    let (h, e) = (backend.http.port(), backend.echo.port());
    for class in FlowClass::ALL {
        let spec = with_flows(quiet_spec(h, e), class, FLOWS);
        expect_all(&spec, class, Outcome::Ok, "").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_listener_is_refused() {
    let port = {
        let l = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        l.local_addr().unwrap().port()
    };
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    expect_all(
        &http_spec(addr, FlowClass::Short),
        FlowClass::Short,
        Outcome::Refused,
        "connect",
    )
    .await;
    expect_all(
        &echo_spec(addr),
        FlowClass::Echo,
        Outcome::Refused,
        "connect",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rst_mid_echo_is_reset() {
    let addr = serve_with(|mut s| async move {
        // Echo the first two chunks, then abort.
        let mut buf = [0u8; 128];
        if s.read_exact(&mut buf).await.is_ok() && s.write_all(&buf).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(20)).await;
            reset(s);
        }
    })
    .await;
    expect_all(&echo_spec(addr), FlowClass::Echo, Outcome::Reset, "reset").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rst_answering_our_half_close_is_reset() {
    // Everything is echoed, but the server answers our FIN with an RST instead of its own FIN:
    // the data is complete, the flow is still broken.
    let addr = serve_with(|mut s| async move {
        let mut all = Vec::new();
        if s.read_to_end(&mut all).await.is_ok() && s.write_all(&all).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(20)).await;
            reset(s);
        }
    })
    .await;
    expect_all(&echo_spec(addr), FlowClass::Echo, Outcome::Reset, "reset").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rst_after_a_complete_response_is_reset() {
    let addr = serve_with(|mut s| async move {
        if read_request(&mut s).await && s.write_all(&response(64, 64, None)).await.is_ok() {
            reset(s);
        }
    })
    .await;
    expect_all(
        &http_spec(addr, FlowClass::Short),
        FlowClass::Short,
        Outcome::Reset,
        "reset",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_fin_answered_by_rst_is_reset() {
    let addr = serve_with(|mut s| async move {
        let mut keep = Vec::new();
        loop {
            let mut buf = [0u8; 4096];
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => keep.extend_from_slice(&buf[..n]),
            }
            while let Some(p) = keep.windows(4).position(|w| w == b"\r\n\r\n") {
                keep.drain(..p + 4);
                let mut r = response(64, 64, None);
                // Keep-alive: same response without "Connection: close".
                r = String::from_utf8(r)
                    .unwrap()
                    .replace("Connection: close\r\n", "")
                    .into_bytes();
                if s.write_all(&r).await.is_err() {
                    return;
                }
            }
        }
        reset(s);
    })
    .await;
    let report = expect_all(
        &http_spec(addr, FlowClass::Keepalive),
        FlowClass::Keepalive,
        Outcome::Reset,
        "reset",
    )
    .await;
    // All six requests of each session were answered correctly before the RST.
    assert_eq!(report.classes.keepalive.requests_ok, u64::from(FLOWS) * 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_body_is_bad_data() {
    let addr = serve_with(|mut s| async move {
        if read_request(&mut s).await && s.write_all(&response(64, 30, None)).await.is_ok() {
            graceful_close(s).await;
        }
    })
    .await;
    expect_all(
        &http_spec(addr, FlowClass::Short),
        FlowClass::Short,
        Outcome::BadData,
        "EOF after 30 of 64 body bytes",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_slow_download_is_bad_data() {
    let addr = serve_with(|mut s| async move {
        if read_request(&mut s).await && s.write_all(&response(10_000, 5_000, None)).await.is_ok() {
            graceful_close(s).await;
        }
    })
    .await;
    expect_all(
        &http_spec(addr, FlowClass::Slow),
        FlowClass::Slow,
        Outcome::BadData,
        "EOF after 5000 of 10000 body bytes",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_byte_is_bad_data() {
    let addr = serve_with(|mut s| async move {
        if read_request(&mut s).await && s.write_all(&response(64, 64, Some(17))).await.is_ok() {
            graceful_close(s).await;
        }
    })
    .await;
    expect_all(
        &http_spec(addr, FlowClass::Short),
        FlowClass::Short,
        Outcome::BadData,
        "body byte 17",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extra_bytes_after_the_body_are_bad_data() {
    let addr = serve_with(|mut s| async move {
        let mut r = response(64, 64, None);
        r.push(b'!');
        if read_request(&mut s).await && s.write_all(&r).await.is_ok() {
            graceful_close(s).await;
        }
    })
    .await;
    expect_all(
        &http_spec(addr, FlowClass::Short),
        FlowClass::Short,
        Outcome::BadData,
        "1 unexpected bytes",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_status_and_garbage_are_bad_data() {
    let status = serve_with(|mut s| async move {
        let r =
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
        if read_request(&mut s).await && s.write_all(r).await.is_ok() {
            graceful_close(s).await;
        }
    })
    .await;
    expect_all(
        &http_spec(status, FlowClass::Short),
        FlowClass::Short,
        Outcome::BadData,
        "503",
    )
    .await;
    let garbage = serve_with(|mut s| async move {
        if read_request(&mut s).await && s.write_all(b"SSH-2.0-nope\r\n\r\n").await.is_ok() {
            graceful_close(s).await;
        }
    })
    .await;
    expect_all(
        &http_spec(garbage, FlowClass::Short),
        FlowClass::Short,
        Outcome::BadData,
        "HTTP parse error",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_before_any_response_is_bad_data() {
    let addr = serve_with(|mut s| async move {
        if read_request(&mut s).await {
            graceful_close(s).await;
        }
    })
    .await;
    expect_all(
        &http_spec(addr, FlowClass::Short),
        FlowClass::Short,
        Outcome::BadData,
        "EOF before any response byte",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_session_closed_by_the_server_is_bad_data() {
    let addr = serve_with(|mut s| async move {
        // Answers the first request as keep-alive, then closes (FIN) anyway.
        if read_request(&mut s).await {
            let r = String::from_utf8(response(64, 64, None))
                .unwrap()
                .replace("Connection: close\r\n", "");
            if s.write_all(r.as_bytes()).await.is_ok() {
                graceful_close(s).await;
            }
        }
    })
    .await;
    let report = expect_all(
        &http_spec(addr, FlowClass::Keepalive),
        FlowClass::Keepalive,
        Outcome::BadData,
        "EOF before any response byte",
    )
    .await;
    assert_eq!(report.classes.keepalive.requests_ok, u64::from(FLOWS));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_closing_early_is_bad_data() {
    let addr = serve_with(|mut s| async move {
        let mut buf = [0u8; 64];
        if s.read_exact(&mut buf).await.is_ok() && s.write_all(&buf).await.is_ok() {
            graceful_close(s).await;
        }
    })
    .await;
    expect_all(
        &echo_spec(addr),
        FlowClass::Echo,
        Outcome::BadData,
        "EOF after 64 of 384",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_corrupted_lost_or_extra_bytes_are_bad_data() {
    // One byte altered.
    let flip = serve_with(|mut s| async move {
        let mut all = Vec::new();
        if s.read_to_end(&mut all).await.is_ok() {
            all[100] ^= 1;
            if s.write_all(&all).await.is_ok() {
                let _ = s.shutdown().await;
            }
        }
    })
    .await;
    expect_all(
        &echo_spec(flip),
        FlowClass::Echo,
        Outcome::BadData,
        "echoed byte 100",
    )
    .await;
    // One byte missing (everything after it shifts).
    let lose = serve_with(|mut s| async move {
        let mut all = Vec::new();
        if s.read_to_end(&mut all).await.is_ok() {
            all.remove(200);
            if s.write_all(&all).await.is_ok() {
                let _ = s.shutdown().await;
            }
        }
    })
    .await;
    expect_all(
        &echo_spec(lose),
        FlowClass::Echo,
        Outcome::BadData,
        "echoed byte 200",
    )
    .await;
    // One byte too many at the end.
    let extra = serve_with(|mut s| async move {
        let mut all = Vec::new();
        if s.read_to_end(&mut all).await.is_ok() {
            all.push(0);
            if s.write_all(&all).await.is_ok() {
                let _ = s.shutdown().await;
            }
        }
    })
    .await;
    expect_all(
        &echo_spec(extra),
        FlowClass::Echo,
        Outcome::BadData,
        "only 384 sent",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_cross_talk_is_bad_data() {
    // The first session to half-close is echoed correctly and its bytes are kept; every later
    // session gets those bytes back instead of its own: right length, right timing, wrong session.
    let first: Arc<Mutex<Option<Vec<u8>>>> = Arc::default();
    let addr = serve_with(move |mut s| {
        let first = Arc::clone(&first);
        async move {
            let mut own = Vec::new();
            if s.read_to_end(&mut own).await.is_err() {
                return;
            }
            let reply = first.lock().unwrap().get_or_insert(own).clone();
            if s.write_all(&reply).await.is_ok() {
                let _ = s.shutdown().await;
            }
        }
    })
    .await;
    let report = load::run(&echo_spec(addr)).await.expect("valid spec");
    eprint!("{}", report.table());
    let c = &report.classes.echo;
    assert_eq!(
        (c.started, c.ok, c.bad_data),
        (3, 1, 2),
        "{:#?}",
        report.failures
    );
    for f in &report.failures {
        assert!(f.detail.contains("echoed byte 0 "), "{}", f.detail);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_server_is_timeout() {
    let addr = serve_with(|mut s| async move {
        // Accepts, reads, never answers, never closes.
        let mut sink = [0u8; 1024];
        while let Ok(n) = s.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
        tokio::time::sleep(Duration::from_secs(3600)).await;
    })
    .await;
    let mut spec = http_spec(addr, FlowClass::Short);
    spec.short.timeout_ms = 300;
    expect_all(
        &spec,
        FlowClass::Short,
        Outcome::Timeout,
        "waiting for the response head",
    )
    .await;
    // An echo server that echoes but never sends its FIN: timeout too.
    let no_fin = serve_with(|mut s| async move {
        let mut all = Vec::new();
        if s.read_to_end(&mut all).await.is_ok() && s.write_all(&all).await.is_ok() {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
    })
    .await;
    let mut spec = echo_spec(no_fin);
    spec.flow_slack_ms = 300;
    expect_all(&spec, FlowClass::Echo, Outcome::Timeout, "flow deadline").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_syn_is_connect_timeout() {
    // A listener with backlog 0 that never accepts: once one connection waits in its accept
    // queue, the kernel drops every further SYN (LISTENOVERFLOWS), exactly like a path that eats
    // SYNs.
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind((Ipv4Addr::LOCALHOST, 0).into()).unwrap();
    let listener = socket.listen(0).unwrap();
    let addr = listener.local_addr().unwrap();
    let _filler = TcpStream::connect(addr)
        .await
        .expect("first connection is queued");
    let mut spec = http_spec(addr, FlowClass::Short);
    spec.connect_timeout_ms = 300;
    let report = expect_all(
        &spec,
        FlowClass::Short,
        Outcome::Timeout,
        "no answer within 300 ms",
    )
    .await;
    assert_eq!(report.setup_latency_ms.count, 0);
    drop(listener);
}
