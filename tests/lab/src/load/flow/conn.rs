//! The connection under a flow: whole writes, verified reads of an HTTP response, the careful
//! close, and the socket's kernel state (SO_ERROR, `TCP_INFO`).

use std::io;
use std::os::fd::AsRawFd;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{sleep, Instant};

use super::{classify_io_error, Failure, Outcome, Progress};
use crate::backend::{pattern_byte, pattern_mismatch};
use crate::load::http::{self, ResponseHead};

/// A connection plus the bytes read but not consumed yet.
pub(super) struct Conn {
    pub(super) stream: TcpStream,
    pending: Vec<u8>,
    pub(super) eof: bool,
    pub(super) write_shut: bool,
}

/// Bytes asked of each read.
pub(super) const READ_CHUNK: usize = 16 * 1024;

impl Conn {
    pub(super) fn new(stream: TcpStream) -> Self {
        Self {
            stream,
            pending: Vec::with_capacity(READ_CHUNK),
            eof: false,
            write_shut: false,
        }
    }

    /// A failure for an I/O error, preferring an RST the socket recorded: after an RST, a
    /// shutdown() reports a generic ENOTCONN while SO_ERROR holds the real cause.
    fn io_failure(&self, what: &str, e: &io::Error) -> Failure {
        match pending_rst(&self.stream) {
            Some(rst) => Failure::io(what, &rst),
            None => Failure::io(what, e),
        }
    }

    pub(super) async fn write_all(&mut self, data: &[u8], what: &str) -> Result<(), Failure> {
        match self.stream.write_all(data).await {
            Ok(()) => Ok(()),
            Err(e) => Err(self.io_failure(what, &e)),
        }
    }

    /// Reads more bytes into `pending`; returns how many (0 at EOF).
    async fn fill(&mut self, what: &str) -> Result<usize, Failure> {
        self.pending.reserve(READ_CHUNK);
        match self.stream.read_buf(&mut self.pending).await {
            Ok(0) => {
                self.eof = true;
                Ok(0)
            }
            Ok(n) => Ok(n),
            Err(e) => Err(self.io_failure(what, &e)),
        }
    }

    /// Reads one response and verifies it completely: status 200, `Content-Length` equal to
    /// `want_len`, every body byte the pattern. Bytes after the body stay in `pending`.
    pub(super) async fn read_response(
        &mut self,
        want_len: u64,
        progress: &Progress,
    ) -> Result<ResponseHead, Failure> {
        progress.at("waiting for the response head", 0, 0);
        let (head, head_len) = loop {
            match http::parse_response_head(&self.pending) {
                Ok(Some(parsed)) => break parsed,
                Ok(None) => {}
                Err(e) => return Err(Failure::bad_data(format!("HTTP parse error: {e}"))),
            }
            if self.fill("reading the response head").await? == 0 {
                return Err(Failure::bad_data(if self.pending.is_empty() {
                    "EOF before any response byte".to_string()
                } else {
                    format!(
                        "EOF inside the response head after {} bytes",
                        self.pending.len()
                    )
                }));
            }
        };
        self.pending.drain(..head_len);
        if head.status != 200 {
            return Err(Failure::bad_data(format!(
                "status {:?}, want 200",
                head.status_line
            )));
        }
        if head.content_length != want_len {
            return Err(Failure::bad_data(format!(
                "Content-Length {}, want {want_len}",
                head.content_length
            )));
        }
        let mut got = 0u64;
        loop {
            let take = (want_len - got).min(self.pending.len() as u64) as usize;
            if let Some(i) = pattern_mismatch(got, &self.pending[..take]) {
                let offset = got + i as u64;
                return Err(Failure::bad_data(format!(
                    "body byte {offset} is {:?}, want {:?}",
                    char::from(self.pending[i]),
                    char::from(pattern_byte(offset))
                )));
            }
            self.pending.drain(..take);
            got += take as u64;
            progress.at("reading the response body", got, want_len);
            if got == want_len {
                return Ok(head);
            }
            if self.fill("reading the response body").await? == 0 {
                return Err(Failure::bad_data(format!(
                    "EOF after {got} of {want_len} body bytes"
                )));
            }
        }
    }

    /// Requires the peer's FIN with no byte before it.
    async fn expect_eof(&mut self, after: &str) -> Result<(), Failure> {
        loop {
            if !self.pending.is_empty() {
                return Err(Failure::bad_data(format!(
                    "{} unexpected bytes after {after}",
                    self.pending.len()
                )));
            }
            if self.eof {
                return Ok(());
            }
            self.fill("waiting for the peer's FIN").await?;
        }
    }

    /// Ends a flow whose data is complete: our FIN, the peer's FIN, the kernel's close, and no
    /// RST anywhere on the way. Waiting for the close costs one round trip and is the only way to
    /// see an RST that answers our FIN.
    pub(super) async fn close_cleanly(
        &mut self,
        after: &str,
        progress: &Progress,
    ) -> Result<(), Failure> {
        progress.at("closing", 0, 0);
        self.check_socket_error("before closing")?;
        if !self.write_shut {
            if let Err(e) = self.stream.shutdown().await {
                return Err(self.io_failure("sending our FIN", &e));
            }
            self.write_shut = true;
        }
        self.expect_eof(after).await?;
        progress.at("waiting for the peer to acknowledge our FIN", 0, 0);
        let mut pause = Duration::from_millis(1);
        loop {
            match tcp_state(&self.stream) {
                Ok(TCP_CLOSE) => break,
                Ok(_) => {}
                Err(e) => return Err(Failure::io("reading TCP_INFO", &e)),
            }
            sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(20));
        }
        self.check_socket_error("after both FINs")
    }

    /// Fails if an RST reached the socket since the last read or write.
    fn check_socket_error(&self, when: &str) -> Result<(), Failure> {
        match pending_rst(&self.stream) {
            None => Ok(()),
            Some(e) => Err(Failure::io(&format!("RST seen {when}"), &e)),
        }
    }

    /// One request on a `Connection: close` connection: send, verify the response, require the
    /// server's close and a clean shutdown.
    pub(super) async fn request_once(
        &mut self,
        request: &[u8],
        want_len: u64,
        progress: &Progress,
    ) -> Result<(), Failure> {
        progress.at("sending the request", 0, 0);
        self.write_all(request, "sending the request").await?;
        self.read_response(want_len, progress).await?;
        let now = Instant::now();
        progress.update(|s| {
            s.response_done = Some(now);
            s.requests_ok += 1;
        });
        progress.at("waiting for the server's FIN", 0, 0);
        self.expect_eof("the response body").await?;
        self.close_cleanly("the response body", progress).await
    }
}

/// Takes the socket's pending error (SO_ERROR) if it records an RST.
///
/// SO_ERROR also returns the "soft" error of an ICMP unreachable that hit an established
/// connection (sk_err_soft) which TCP then recovered from by retransmitting; that is not a broken
/// flow, so only RST errors count: ECONNRESET, or EPIPE for an RST received in CLOSE_WAIT.
fn pending_rst(stream: &TcpStream) -> Option<io::Error> {
    stream
        .take_error()
        .ok()
        .flatten()
        .filter(|e| matches!(classify_io_error(e), Outcome::Reset | Outcome::Refused))
}

/// `TCP_CLOSE` from the kernel's `enum tcp_state` (include/net/tcp_states.h).
const TCP_CLOSE: u8 = 7;

/// The kernel's TCP state of the socket. Only the first byte of `struct tcp_info` (tcpi_state)
/// is asked for: the kernel copies min(optlen, sizeof) bytes, so this works on any kernel.
fn tcp_state(stream: &TcpStream) -> io::Result<u8> {
    let mut state = 0u8;
    let mut len = 1 as libc::socklen_t;
    // SAFETY: the buffer is one valid, writable byte and `len` says so; the fd is open for the
    // lifetime of `stream`.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut state as *mut u8).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        Ok(state)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// (handshake RTT in ms, retransmissions) of a just-connected socket, from `TCP_INFO`: right
/// after the handshake the smoothed RTT is the SYN to SYN-ACK sample itself.
pub(super) fn handshake(stream: &TcpStream) -> Option<(f64, u32)> {
    use std::os::fd::AsRawFd;
    // SAFETY: tcp_info is plain data; zeroed is a valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: `info` and `len` describe a buffer of the size passed; the fd is the stream's.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            &mut info as *mut libc::tcp_info as *mut libc::c_void,
            &mut len,
        )
    };
    (rc == 0).then(|| (f64::from(info.tcpi_rtt) / 1000.0, info.tcpi_total_retrans))
}
