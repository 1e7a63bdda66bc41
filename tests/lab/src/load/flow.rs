//! One flow from connect() to a single [`Outcome`].
//!
//! Every flow ends the same careful way ([`Conn::close_cleanly`]): after the data is verified we
//! send our FIN, require the peer's FIN with nothing after the expected bytes, wait until the
//! kernel has closed the socket, and only then look at `SO_ERROR`. That last step is what catches
//! an RST that arrives after the data was complete, e.g. a node answering a FIN it was wrongly sent
//! (docs/kernel-facts.md#k2): the application never reads again, so only the socket error shows it.

mod conn;

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{sleep_until, timeout_at, Instant};

use super::http;
use super::spec::{FlowClass, LoadSpec};
use crate::backend::FAST_BODY_LEN;
use conn::{handshake, Conn, READ_CHUNK};

/// How a flow ended. Every flow gets exactly one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Every byte was exchanged and verified, and the connection closed with FINs only.
    Ok,
    /// The connection attempt was refused (ECONNREFUSED: an RST answered our SYN).
    Refused,
    /// An RST ended the connection (ECONNRESET, EPIPE, ECONNABORTED, or one seen in `SO_ERROR`).
    Reset,
    /// Connect timeout, flow deadline, or the path is unreachable (EHOSTUNREACH, ENETUNREACH,
    /// ETIMEDOUT).
    Timeout,
    /// Wrong status, short or extra or corrupt bytes, EOF too early, unparseable HTTP.
    BadData,
    /// The generator itself failed (EMFILE, EADDRNOTAVAIL, ...): not the network's fault, but the
    /// flow did not run, so it is not ok either.
    Other,
}

impl Outcome {
    /// The name used in JSON and in the table.
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Refused => "refused",
            Outcome::Reset => "reset",
            Outcome::Timeout => "timeout",
            Outcome::BadData => "bad_data",
            Outcome::Other => "other",
        }
    }
}

/// Maps a socket error to the outcome it stands for.
pub fn classify_io_error(e: &io::Error) -> Outcome {
    if let Some(errno) = e.raw_os_error() {
        return match errno {
            libc::ECONNREFUSED => Outcome::Refused,
            // ENOTCONN after a connection was established means the kernel dropped it, which it
            // only does on an RST.
            libc::ECONNRESET | libc::EPIPE | libc::ECONNABORTED | libc::ENOTCONN => Outcome::Reset,
            libc::ETIMEDOUT
            | libc::EHOSTUNREACH
            | libc::ENETUNREACH
            | libc::EHOSTDOWN
            | libc::ENETDOWN => Outcome::Timeout,
            _ => Outcome::Other,
        };
    }
    match e.kind() {
        io::ErrorKind::ConnectionRefused => Outcome::Refused,
        io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe
        | io::ErrorKind::NotConnected => Outcome::Reset,
        io::ErrorKind::TimedOut
        | io::ErrorKind::HostUnreachable
        | io::ErrorKind::NetworkUnreachable => Outcome::Timeout,
        io::ErrorKind::UnexpectedEof => Outcome::BadData,
        _ => Outcome::Other,
    }
}

/// Why a flow did not end ok.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Failure {
    pub outcome: Outcome,
    pub detail: String,
}

impl Failure {
    fn new(outcome: Outcome, detail: impl Into<String>) -> Self {
        Self {
            outcome,
            detail: detail.into(),
        }
    }

    fn bad_data(detail: impl Into<String>) -> Self {
        Self::new(Outcome::BadData, detail)
    }

    fn io(what: &str, e: &io::Error) -> Self {
        Self::new(classify_io_error(e), format!("{what}: {e}"))
    }
}

/// Everything a flow records, whatever its outcome.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct FlowRecord {
    /// Index of the flow in the run's start order.
    pub id: usize,
    pub class: FlowClass,
    /// When the schedule said the flow should start (ms from the run's start).
    pub scheduled_ms: f64,
    /// When it really started (before connect()).
    pub start_ms: f64,
    /// When its outcome was known.
    pub end_ms: f64,
    /// connect() duration, if the connection was established.
    pub setup_ms: Option<f64>,
    /// The handshake as the kernel timed it (SYN sent to SYN-ACK received, from `TCP_INFO`), if
    /// the connection was established; a handshake that needed a retransmission counts with its
    /// whole `setup_ms` instead. Unlike `setup_ms` it leaves out how long the generator itself
    /// took to notice the connection.
    pub handshake_ms: Option<f64>,
    pub outcome: Outcome,
    /// Error text; empty when ok.
    pub detail: String,
    /// HTTP responses that passed every check.
    pub requests_ok: u64,
    /// Start to last response byte, for ok short flows.
    pub latency_ms: Option<f64>,
}

/// What every flow of a run shares.
#[derive(Debug)]
pub(crate) struct FlowCtx {
    pub spec: LoadSpec,
    /// The run's start; every `*_ms` field is measured from it.
    pub t0: Instant,
    /// Mixed into each echo session's payload so that two runs (or two sessions) never send the
    /// same bytes.
    pub seed: u64,
}

impl FlowCtx {
    fn ms_since_t0(&self, at: Instant) -> f64 {
        at.saturating_duration_since(self.t0).as_secs_f64() * 1000.0
    }
}

/// Where a flow is, so that a deadline can say what it was waiting for. Shared between the
/// flow's future and the code that outlives it when the deadline drops it; a mutex (never
/// contended) rather than `Cell`s keeps the flow's future `Send`.
#[derive(Debug, Default)]
struct Progress {
    state: Mutex<ProgressState>,
}

#[derive(Debug, Default, Clone)]
struct ProgressState {
    phase: &'static str,
    done: u64,
    want: u64,
    requests_ok: u64,
    response_done: Option<Instant>,
}

impl Progress {
    fn update(&self, f: impl FnOnce(&mut ProgressState)) {
        f(&mut self.state.lock().unwrap_or_else(PoisonError::into_inner));
    }

    fn snapshot(&self) -> ProgressState {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn at(&self, phase: &'static str, done: u64, want: u64) {
        self.update(|s| {
            s.phase = phase;
            s.done = done;
            s.want = want;
        });
    }

    fn request_ok(&self) {
        self.update(|s| s.requests_ok += 1);
    }

    fn describe(&self) -> String {
        let s = self.snapshot();
        let phase = match s.phase {
            "" => "starting",
            p => p,
        };
        if s.want > 0 {
            format!("{phase} ({} of {} bytes)", s.done, s.want)
        } else {
            phase.to_string()
        }
    }
}

/// Runs one flow of `class` and reports it; never panics on network input, never outlives
/// connect timeout + the class's budget.
pub(crate) async fn run_flow(
    ctx: Arc<FlowCtx>,
    id: usize,
    class: FlowClass,
    scheduled: Duration,
) -> FlowRecord {
    let spec = &ctx.spec;
    let start = Instant::now();
    let mut record = FlowRecord {
        id,
        class,
        scheduled_ms: scheduled.as_secs_f64() * 1000.0,
        start_ms: ctx.ms_since_t0(start),
        end_ms: 0.0,
        setup_ms: None,
        handshake_ms: None,
        outcome: Outcome::Ok,
        detail: String::new(),
        requests_ok: 0,
        latency_ms: None,
    };
    let port = match class {
        FlowClass::Echo => spec.echo_port,
        _ => spec.http_port,
    };
    let addr = SocketAddr::from((spec.target, port));
    let connect_timeout = Duration::from_millis(spec.connect_timeout_ms);
    let result = match timeout_at(start + connect_timeout, TcpStream::connect(addr)).await {
        Err(_) => Err(Failure::new(
            Outcome::Timeout,
            format!(
                "connect to {addr}: no answer within {} ms",
                spec.connect_timeout_ms
            ),
        )),
        Ok(Err(e)) => Err(Failure::io(&format!("connect to {addr}"), &e)),
        Ok(Ok(stream)) => {
            let connected = Instant::now();
            let setup_ms = (connected - start).as_secs_f64() * 1000.0;
            record.setup_ms = Some(setup_ms);
            record.handshake_ms = Some(match handshake(&stream) {
                Some((rtt_ms, 0)) => rtt_ms.min(setup_ms),
                _ => setup_ms,
            });
            let progress = Progress::default();
            let budget = spec.flow_budget(class);
            let res = timeout_at(
                connected + budget,
                run_connected(&ctx, id, class, stream, connected, &progress),
            )
            .await;
            let state = progress.snapshot();
            record.requests_ok = state.requests_ok;
            match res {
                Ok(r) => r.map(|()| state.response_done),
                Err(_) => Err(Failure::new(
                    Outcome::Timeout,
                    format!(
                        "flow deadline {} ms after connect passed while {}",
                        budget.as_millis(),
                        progress.describe()
                    ),
                )),
            }
        }
    };
    let end = Instant::now();
    record.end_ms = ctx.ms_since_t0(end);
    match result {
        Ok(response_done) => {
            if class == FlowClass::Short {
                record.latency_ms = response_done
                    .map(|t| t.saturating_duration_since(start).as_secs_f64() * 1000.0);
            }
        }
        Err(f) => {
            record.outcome = f.outcome;
            record.detail = f.detail;
        }
    }
    record
}

/// The part of a flow after connect(), run under the flow's deadline.
async fn run_connected(
    ctx: &FlowCtx,
    id: usize,
    class: FlowClass,
    stream: TcpStream,
    connected: Instant,
    progress: &Progress,
) -> Result<(), Failure> {
    // Requests and chunks are written whole; Nagle would hold a chunk back waiting for the ACK of
    // the previous one (up to a delayed-ACK time) and blur the timings.
    stream
        .set_nodelay(true)
        .map_err(|e| Failure::io("setting TCP_NODELAY", &e))?;
    let mut conn = Conn::new(stream);
    let spec = &ctx.spec;
    match class {
        FlowClass::Short => {
            conn.request_once(http::SHORT_REQUEST, FAST_BODY_LEN, progress)
                .await
        }
        FlowClass::Slow => {
            let req = http::slow_request(spec.slow.ms, spec.slow.bytes);
            conn.request_once(&req, spec.slow.bytes, progress).await
        }
        FlowClass::Keepalive => keepalive_session(&mut conn, spec, connected, progress).await,
        FlowClass::Echo => {
            let session = echo_session_key(ctx.seed, id);
            echo_session(&mut conn, spec, session, connected, progress).await
        }
    }
}

/// A keep-alive session: a `GET /fast` every interval while the session lasts, each response
/// verified, then our close.
async fn keepalive_session(
    conn: &mut Conn,
    spec: &LoadSpec,
    connected: Instant,
    progress: &Progress,
) -> Result<(), Failure> {
    let ks = &spec.keepalive;
    let requests = ks.session_ms.div_ceil(ks.interval_ms).max(1);
    for k in 0..requests {
        sleep_until(connected + Duration::from_millis(k * ks.interval_ms)).await;
        progress.at("sending a keep-alive request", 0, 0);
        conn.write_all(http::KEEPALIVE_REQUEST, "sending a keep-alive request")
            .await?;
        let head = conn.read_response(FAST_BODY_LEN, progress).await?;
        progress.request_ok();
        if head.close && k + 1 < requests {
            return Err(Failure::bad_data(format!(
                "server announced Connection: close after request {} of {requests}",
                k + 1
            )));
        }
    }
    progress.at("idle until the session's end", 0, 0);
    sleep_until(connected + Duration::from_millis(ks.session_ms)).await;
    conn.close_cleanly("the last response", progress).await
}

/// The per-session key of an echo payload.
fn echo_session_key(seed: u64, id: usize) -> u64 {
    splitmix64(seed ^ splitmix64(id as u64))
}

/// Byte `offset` of the echo payload of session `key`: a pseudo-random stream per session, so a
/// byte from another session (cross-talk) or from another place in the stream is detected.
pub(crate) fn echo_byte(key: u64, offset: u64) -> u8 {
    splitmix64(key.wrapping_add(offset / 8)).to_le_bytes()[(offset % 8) as usize]
}

/// SplitMix64's output function: a fast, well-mixed 64-bit hash.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// An echo session: a chunk every interval while the session lasts, the echo read concurrently,
/// our FIN at the session's end, then every byte back in order before the server's FIN.
async fn echo_session(
    conn: &mut Conn,
    spec: &LoadSpec,
    key: u64,
    connected: Instant,
    progress: &Progress,
) -> Result<(), Failure> {
    let es = &spec.echo;
    let chunks = es.session_ms.div_ceil(es.interval_ms);
    let chunk = u64::from(es.chunk_bytes);
    let total = chunks * chunk;
    let sent = AtomicU64::new(0);
    let received = AtomicU64::new(0);
    let describe = |got| progress.at("echoing", got, total);
    let (mut rd, mut wr) = conn.stream.split();
    let writer = async {
        let mut buf = vec![0u8; chunk as usize];
        for k in 0..chunks {
            sleep_until(connected + Duration::from_millis(k * es.interval_ms)).await;
            let offset = k * chunk;
            for (i, b) in buf.iter_mut().enumerate() {
                *b = echo_byte(key, offset + i as u64);
            }
            wr.write_all(&buf)
                .await
                .map_err(|e| Failure::io(&format!("writing echo chunk {}", k + 1), &e))?;
            sent.store(offset + chunk, Relaxed);
        }
        sleep_until(connected + Duration::from_millis(es.session_ms)).await;
        wr.shutdown()
            .await
            .map_err(|e| Failure::io("sending our FIN (half-close)", &e))
    };
    let reader = async {
        let mut buf = vec![0u8; READ_CHUNK];
        loop {
            let n = rd
                .read(&mut buf)
                .await
                .map_err(|e| Failure::io("reading the echo", &e))?;
            let got = received.load(Relaxed);
            if n == 0 {
                if got < total {
                    return Err(Failure::bad_data(format!(
                        "EOF after {got} of {total} echoed bytes ({} sent)",
                        sent.load(Relaxed)
                    )));
                }
                return Ok(());
            }
            if got + n as u64 > total {
                return Err(Failure::bad_data(format!(
                    "{} bytes echoed, only {total} sent",
                    got + n as u64
                )));
            }
            if let Some(i) = (0..n).find(|&i| buf[i] != echo_byte(key, got + i as u64)) {
                return Err(Failure::bad_data(format!(
                    "echoed byte {} is {:#04x}, want {:#04x}",
                    got + i as u64,
                    buf[i],
                    echo_byte(key, got + i as u64)
                )));
            }
            received.store(got + n as u64, Relaxed);
            describe(got + n as u64);
        }
    };
    describe(0);
    tokio::try_join!(writer, reader)?;
    conn.write_shut = true;
    conn.eof = true;
    conn.close_cleanly("the echoed bytes", progress).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_classification() {
        let cases = [
            (libc::ECONNREFUSED, Outcome::Refused),
            (libc::ECONNRESET, Outcome::Reset),
            (libc::EPIPE, Outcome::Reset),
            (libc::ECONNABORTED, Outcome::Reset),
            (libc::ENOTCONN, Outcome::Reset),
            (libc::ETIMEDOUT, Outcome::Timeout),
            (libc::EHOSTUNREACH, Outcome::Timeout),
            (libc::ENETUNREACH, Outcome::Timeout),
            (libc::EMFILE, Outcome::Other),
            (libc::EADDRNOTAVAIL, Outcome::Other),
        ];
        for (errno, want) in cases {
            let e = io::Error::from_raw_os_error(errno);
            assert_eq!(classify_io_error(&e), want, "{e}");
        }
        let eof = io::Error::from(io::ErrorKind::UnexpectedEof);
        assert_eq!(classify_io_error(&eof), Outcome::BadData);
        let timed_out = io::Error::from(io::ErrorKind::TimedOut);
        assert_eq!(classify_io_error(&timed_out), Outcome::Timeout);
    }

    #[test]
    fn echo_payloads_differ_between_sessions_and_offsets() {
        let a = echo_session_key(1, 0);
        let b = echo_session_key(1, 1);
        let stream = |key| (0..256).map(|i| echo_byte(key, i)).collect::<Vec<u8>>();
        let (sa, sb) = (stream(a), stream(b));
        assert_ne!(sa, sb);
        // Deterministic: the reader recomputes exactly what the writer sent.
        assert_eq!(sa, stream(a));
        // Not periodic within a chunk: a chunk repeated twice would be caught.
        assert_ne!(sa[..64], sa[64..128]);
        // Another run (seed) gives another payload for the same session id.
        assert_ne!(stream(echo_session_key(2, 0)), sa);
    }

    #[test]
    fn progress_describes_the_phase() {
        let p = Progress::default();
        assert_eq!(p.describe(), "starting");
        p.at("reading the response body", 10, 64);
        assert_eq!(p.describe(), "reading the response body (10 of 64 bytes)");
    }
}
