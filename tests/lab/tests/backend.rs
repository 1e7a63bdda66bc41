//! The backend on loopback, spoken to with raw sockets (not with the load generator, so that a
//! bug shared by both sides cannot hide).

mod common;

use std::time::Duration;

use common::TestBackend;
use drain_lab::backend::fill_pattern;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads one response: (status line, headers lowercased, body).
async fn read_response(stream: &mut TcpStream, pending: &mut Vec<u8>) -> (String, String, Vec<u8>) {
    let end = loop {
        if let Some(p) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        let n = stream.read_buf(pending).await.expect("read head");
        assert!(n > 0, "EOF inside a response head: {pending:?}");
    };
    let head = String::from_utf8(pending.drain(..end).collect()).expect("utf-8 head");
    let (status, headers) = head.split_once("\r\n").expect("status line");
    let headers = headers.to_ascii_lowercase();
    let len: usize = headers
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .expect("content-length")
        .trim()
        .parse()
        .expect("numeric content-length");
    while pending.len() < len {
        let n = stream.read_buf(pending).await.expect("read body");
        assert!(n > 0, "EOF inside a body");
    }
    let body = pending.drain(..len).collect();
    (status.to_string(), headers, body)
}

async fn read_to_eof(stream: &mut TcpStream) -> Vec<u8> {
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut rest))
        .await
        .expect("server closes the connection")
        .expect("clean EOF");
    rest
}

fn pattern(len: usize) -> Vec<u8> {
    let mut v = vec![0; len];
    fill_pattern(0, &mut v);
    v
}

#[tokio::test]
async fn keep_alive_pipelining_and_close() {
    let backend = TestBackend::start();
    let mut s = TcpStream::connect(backend.http).await.unwrap();
    s.write_all(
        b"GET /fast HTTP/1.1\r\nHost: lab\r\n\r\nGET /health HTTP/1.1\r\nHost: lab\r\n\r\nGET /nope HTTP/1.1\r\n\r\n",
    )
    .await
    .unwrap();
    let mut pending = Vec::new();
    let (status, headers, body) = read_response(&mut s, &mut pending).await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(headers.contains("connection: keep-alive"), "{headers}");
    assert_eq!(body, pattern(64));
    let (status, _, body) = read_response(&mut s, &mut pending).await;
    assert_eq!(
        (status.as_str(), body.as_slice()),
        ("HTTP/1.1 200 OK", &b"ok\n"[..])
    );
    let (status, _, _) = read_response(&mut s, &mut pending).await;
    assert_eq!(status, "HTTP/1.1 404 Not Found");
    // Still open: a last request asking to close gets its response, then EOF.
    s.write_all(b"GET /fast HTTP/1.1\r\nHost: lab\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let (status, headers, body) = read_response(&mut s, &mut pending).await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(headers.contains("connection: close"), "{headers}");
    assert_eq!(body, pattern(64));
    assert!(pending.is_empty());
    assert_eq!(read_to_eof(&mut s).await, b"");
}

#[tokio::test]
async fn malformed_request_gets_400_and_close() {
    let backend = TestBackend::start();
    for bad in [
        &b"GARBAGE\r\n\r\n"[..],
        b"GET /fast HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
        &[b'x'; 9000][..],
    ] {
        let mut s = TcpStream::connect(backend.http).await.unwrap();
        s.write_all(bad).await.unwrap();
        let mut pending = Vec::new();
        let (status, headers, _) = read_response(&mut s, &mut pending).await;
        assert_eq!(status, "HTTP/1.1 400 Bad Request");
        assert!(headers.contains("connection: close"), "{headers}");
        // The server closes; shut our side so its lingering read ends at once.
        s.shutdown().await.unwrap();
        assert_eq!(read_to_eof(&mut s).await, b"");
    }
}

#[tokio::test]
async fn slow_streams_the_whole_pattern() {
    let backend = TestBackend::start();
    let mut s = TcpStream::connect(backend.http).await.unwrap();
    s.write_all(b"GET /slow?ms=100&bytes=100003 HTTP/1.1\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut pending = Vec::new();
    let (status, headers, body) = read_response(&mut s, &mut pending).await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(headers.contains("content-length: 100003"), "{headers}");
    assert_eq!(body, pattern(100_003));
    assert_eq!(read_to_eof(&mut s).await, b"");
}

#[tokio::test]
async fn echo_returns_everything_then_closes_after_our_fin() {
    let backend = TestBackend::start();
    let mut s = TcpStream::connect(backend.echo).await.unwrap();
    let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let (mut rd, mut wr) = s.split();
    let writer = async {
        wr.write_all(&data).await.unwrap();
        wr.shutdown().await.unwrap();
    };
    let reader = async {
        let mut back = Vec::new();
        rd.read_to_end(&mut back).await.unwrap();
        back
    };
    let ((), back) = tokio::join!(writer, reader);
    assert_eq!(back.len(), data.len());
    assert!(back == data, "echo differs");
}

#[tokio::test]
async fn stops_accepting_after_shutdown() {
    let backend = TestBackend::start();
    let addr = backend.http;
    TcpStream::connect(addr).await.expect("serving before stop");
    backend.stop().await;
    let err = TcpStream::connect(addr).await.expect_err("listener closed");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
}
