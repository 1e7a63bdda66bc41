//! Client side of the lab's HTTP: the requests the generator sends and a strict parser for the
//! response heads it gets back. Anything the backend would not send is an error, because a
//! response mangled on its way through a draining load balancer must not pass as a good one.

/// The short-flow request (exactly as the lab's brief fixes it).
pub(crate) const SHORT_REQUEST: &[u8] =
    b"GET /fast HTTP/1.1\r\nHost: lab\r\nConnection: close\r\n\r\n";

/// One request of a keep-alive session.
pub(crate) const KEEPALIVE_REQUEST: &[u8] = b"GET /fast HTTP/1.1\r\nHost: lab\r\n\r\n";

/// The slow-download request.
pub(crate) fn slow_request(ms: u64, bytes: u64) -> Vec<u8> {
    format!("GET /slow?ms={ms}&bytes={bytes} HTTP/1.1\r\nHost: lab\r\nConnection: close\r\n\r\n")
        .into_bytes()
}

/// Largest response head accepted.
pub(crate) const MAX_RESPONSE_HEAD: usize = 16 * 1024;

/// The parts of a response head the generator checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ResponseHead {
    /// The status code.
    pub status: u16,
    /// The status line as received, for failure details.
    pub status_line: String,
    /// The body length announced.
    pub content_length: u64,
    /// Whether the server announced it will close the connection after this response.
    pub close: bool,
}

/// Why a response head is unacceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum HeadError {
    #[error("response head longer than {MAX_RESPONSE_HEAD} bytes")]
    TooLong,
    #[error("response head is not UTF-8")]
    NotUtf8,
    #[error("malformed status line {0:?}")]
    StatusLine(String),
    #[error("malformed header line {0:?}")]
    Header(String),
    #[error("no Content-Length in response")]
    NoContentLength,
    #[error("bad or conflicting Content-Length {0:?}")]
    ContentLength(String),
    #[error("unexpected Transfer-Encoding {0:?} (the backend never chunks)")]
    TransferEncoding(String),
}

/// Parses the response head at the start of `buf`. `Ok(None)`: not complete yet;
/// `Ok(Some((head, n)))`: the head occupies the first `n` bytes.
pub(crate) fn parse_response_head(buf: &[u8]) -> Result<Option<(ResponseHead, usize)>, HeadError> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return if buf.len() > MAX_RESPONSE_HEAD {
            Err(HeadError::TooLong)
        } else {
            Ok(None)
        };
    };
    if end > MAX_RESPONSE_HEAD {
        return Err(HeadError::TooLong);
    }
    let text = std::str::from_utf8(&buf[..end]).map_err(|_| HeadError::NotUtf8)?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let bad_status = || HeadError::StatusLine(status_line.to_string());
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    let code = parts.next().unwrap_or_default();
    if !matches!(version, "HTTP/1.1" | "HTTP/1.0") || code.len() != 3 {
        return Err(bad_status());
    }
    let status: u16 = code.parse().map_err(|_| bad_status())?;
    let mut close = version == "HTTP/1.0";
    let mut content_length: Option<u64> = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return Err(HeadError::Header(line.to_string()));
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            let n: u64 = value
                .parse()
                .map_err(|_| HeadError::ContentLength(value.to_string()))?;
            if content_length.is_some_and(|old| old != n) {
                return Err(HeadError::ContentLength(value.to_string()));
            }
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(HeadError::TransferEncoding(value.to_string()));
        } else if name.eq_ignore_ascii_case("connection") {
            for token in value.split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") {
                    close = true;
                } else if token.eq_ignore_ascii_case("keep-alive") {
                    close = false;
                }
            }
        }
    }
    let head = ResponseHead {
        status,
        status_line: status_line.to_string(),
        content_length: content_length.ok_or(HeadError::NoContentLength)?,
        close,
    };
    Ok(Some((head, end + 4)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_complete_head_and_reports_its_length() {
        let buf = b"HTTP/1.1 200 OK\r\nContent-Length: 64\r\nConnection: close\r\n\r\nabc";
        let (head, n) = parse_response_head(buf).unwrap().unwrap();
        assert_eq!(n, buf.len() - 3);
        assert_eq!(head.status, 200);
        assert_eq!(head.content_length, 64);
        assert!(head.close);
        assert_eq!(head.status_line, "HTTP/1.1 200 OK");
    }

    #[test]
    fn incomplete_head_needs_more() {
        assert_eq!(
            parse_response_head(b"HTTP/1.1 200 OK\r\nContent-Le").unwrap(),
            None
        );
        assert_eq!(parse_response_head(b"").unwrap(), None);
    }

    #[test]
    fn keep_alive_by_default_for_http11() {
        let (head, _) =
            parse_response_head(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n")
                .unwrap()
                .unwrap();
        assert_eq!(head.status, 503);
        assert!(!head.close);
    }

    #[test]
    fn rejects_what_the_backend_never_sends() {
        type Check = fn(&HeadError) -> bool;
        let cases: [(&[u8], Check); 7] = [
            (b"HTTP/1.1 200 OK\r\n\r\n", |e| {
                *e == HeadError::NoContentLength
            }),
            (b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", |e| {
                matches!(e, HeadError::ContentLength(_))
            }),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                |e| matches!(e, HeadError::ContentLength(_)),
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                |e| matches!(e, HeadError::TransferEncoding(_)),
            ),
            (b"HTTP/2 200\r\nContent-Length: 1\r\n\r\n", |e| {
                matches!(e, HeadError::StatusLine(_))
            }),
            (b"SSH-2.0-OpenSSH\r\n\r\n", |e| {
                matches!(e, HeadError::StatusLine(_))
            }),
            (b"HTTP/1.1 200 OK\r\nbroken\r\n\r\n", |e| {
                matches!(e, HeadError::Header(_))
            }),
        ];
        for (buf, check) in cases {
            let err = parse_response_head(buf).unwrap_err();
            assert!(check(&err), "{:?}: {err:?}", String::from_utf8_lossy(buf));
        }
        let long = vec![b'x'; MAX_RESPONSE_HEAD + 1];
        assert_eq!(parse_response_head(&long), Err(HeadError::TooLong));
    }
}
