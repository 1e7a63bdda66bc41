//! Unit tests of the backend: the request parser and its routing, and the body pattern.

use super::*;

fn req(head: &str) -> Result<Request, RequestError> {
    parse_request(head.as_bytes())
}

#[test]
fn pattern_repeats_every_36_bytes() {
    let mut buf = [0u8; 80];
    fill_pattern(0, &mut buf);
    assert_eq!(&buf[..36], PATTERN);
    assert_eq!(&buf[36..72], PATTERN);
    assert_eq!(buf[72], b'a');
    let mut tail = [0u8; 10];
    fill_pattern(70, &mut tail);
    assert_eq!(&tail, &buf[70..80]);
    assert_eq!(pattern_mismatch(70, &tail), None);
    tail[3] ^= 1;
    assert_eq!(pattern_mismatch(70, &tail), Some(3));
}

#[test]
fn http11_is_keep_alive_unless_close() {
    let r = req("GET /fast HTTP/1.1\r\nHost: lab\r\n\r\n").unwrap();
    assert_eq!(
        r,
        Request {
            route: Route::Fast,
            keep_alive: true
        }
    );
    let r = req("GET /fast HTTP/1.1\r\nHost: lab\r\nConnection: Close\r\n\r\n").unwrap();
    assert!(!r.keep_alive);
    let r = req("GET /fast HTTP/1.1\r\nconnection: TE, close\r\n\r\n").unwrap();
    assert!(!r.keep_alive);
}

#[test]
fn http10_is_close_unless_keep_alive() {
    assert!(!req("GET /health HTTP/1.0\r\n\r\n").unwrap().keep_alive);
    assert!(
        req("GET /health HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .unwrap()
            .keep_alive
    );
}

#[test]
fn routes() {
    assert_eq!(
        req("GET /health HTTP/1.1\r\n\r\n").unwrap().route,
        Route::Health
    );
    assert_eq!(
        req("GET /nope HTTP/1.1\r\n\r\n").unwrap().route,
        Route::NotFound
    );
    assert_eq!(
        req("POST /fast HTTP/1.1\r\n\r\n").unwrap().route,
        Route::NotFound
    );
    assert_eq!(
        req("GET /slow?ms=250&bytes=1000 HTTP/1.1\r\n\r\n")
            .unwrap()
            .route,
        Route::Slow {
            ms: 250,
            bytes: 1000
        }
    );
    assert_eq!(
        req("GET /slow?bytes=7 HTTP/1.1\r\n\r\n").unwrap().route,
        Route::Slow { ms: 1000, bytes: 7 }
    );
}

#[test]
fn malformed_requests_are_rejected() {
    assert!(matches!(
        req("GET /fast\r\n\r\n"),
        Err(RequestError::RequestLine(_))
    ));
    assert!(matches!(
        req("GET  /fast HTTP/1.1\r\n\r\n"),
        Err(RequestError::RequestLine(_))
    ));
    assert!(matches!(
        req("GET fast HTTP/1.1\r\n\r\n"),
        Err(RequestError::RequestLine(_))
    ));
    assert!(matches!(
        req("GET /fast HTTP/2.0\r\n\r\n"),
        Err(RequestError::Version(_))
    ));
    assert!(matches!(
        req("GET /fast HTTP/1.1\r\nno colon here\r\n\r\n"),
        Err(RequestError::Header(_))
    ));
    assert!(matches!(
        req("GET /fast HTTP/1.1\r\nContent-Length: 5\r\n\r\n"),
        Err(RequestError::Body(_))
    ));
    assert!(matches!(
        req("GET /fast HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
        Err(RequestError::Body(_))
    ));
    assert!(matches!(
        req("GET /slow?ms=abc HTTP/1.1\r\n\r\n"),
        Err(RequestError::Query(_))
    ));
    assert!(matches!(
        req("GET /slow?speed=1 HTTP/1.1\r\n\r\n"),
        Err(RequestError::Query(_))
    ));
    assert!(matches!(
        parse_request(b"GET /\xff HTTP/1.1\r\n\r\n"),
        Err(RequestError::NotUtf8)
    ));
    assert!(req("GET /fast HTTP/1.1\r\nContent-Length: 0\r\n\r\n").is_ok());
}

#[test]
fn head_end_finds_the_blank_line() {
    assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r\nGET"), Some(18));
    assert_eq!(head_end(b"GET / HTTP/1.1\r\n"), None);
}
