//! The peer link: how the two nodes' agents talk during a hand-off. One request and one reply per
//! TCP connection, each one line of JSON:
//!
//! ```text
//! A → B  {"signed":"{\"from\":\"198.18.0.11\",\"ts_ms\":…,\"nonce\":\"…\",\"body\":{\"op\":\"begin\",…}}","mac":"<hex>"}
//! B → A  {"signed":"{\"nonce\":\"<the request's>\",\"body\":{\"reply\":\"ok\",…}}","mac":"<hex>"}
//! ```
//!
//! `mac` is HMAC-SHA256 under the key both nodes share (`handoff.key_file`) over the exact bytes
//! of `signed`, so nothing is canonicalised. The receiver of a request checks, in this order: the
//! connection comes from the configured peer's address, the MAC, that `from` is that address too,
//! that `ts_ms` is within [`MAX_SKEW`] of its own clock, and that the nonce was not seen before
//! (replay). The sender of a request checks that the reply carries its nonce under a valid MAC, so
//! a reply cannot be forged or replayed either. Bodies are the service layer's types; this module
//! only moves and authenticates them.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// The shortest key accepted, in bytes.
pub const MIN_KEY_BYTES: usize = 32;
/// The longest key file read: HMAC hashes longer keys down anyway, so more is a wrong path.
pub const MAX_KEY_BYTES: u64 = 4096;
/// How far a request's timestamp may be from the receiver's clock.
pub const MAX_SKEW: Duration = Duration::from_secs(30);
/// Longest line accepted either way.
pub const MAX_LINE: u64 = 64 * 1024;
/// How long a connect may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Why the link failed. Display is one line.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The key file is unusable.
    #[error("handoff.key_file {path}: {why}")]
    Key {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// Connecting, sending or receiving failed.
    #[error("peer link to {addr}: {source}")]
    Io {
        /// The peer's address and port.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The request went out whole but no reply came back (the connection closed, or the wait
    /// timed out): the other side may have acted on it. A caller that must not leave the peer
    /// half-changed undoes it (the hand-off's `Begin` is followed by `End`).
    #[error("peer link to {addr}: the request was sent but no reply came: {source}")]
    Unanswered {
        /// The peer's address and port.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The other side sent something that is not this protocol, or fails authentication.
    #[error("peer link: {0}")]
    Protocol(String),
}

/// The shared key.
#[derive(Clone)]
pub struct Key(Vec<u8>);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Key({} bytes)", self.0.len())
    }
}

impl Key {
    /// Reads the key file: a regular file (not through a symlink) owned by root or this
    /// process's user, readable by its owner only (a key others can read or replace
    /// authenticates nothing), of at least [`MIN_KEY_BYTES`].
    ///
    /// The file is opened once and everything is checked on that descriptor (`fstat`, then
    /// `read`), so it cannot be swapped between the check and the read. `O_NONBLOCK` keeps a
    /// FIFO put in its place from blocking the open; it is then refused as not a regular file.
    pub fn load(path: &Path) -> Result<Key, LinkError> {
        use std::os::unix::fs::OpenOptionsExt;
        let err = |why: String| LinkError::Key {
            path: path.to_path_buf(),
            why,
        };
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(path)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ELOOP) => err(
                    "is a symbolic link; name the key file itself (a link can be repointed)".into(),
                ),
                _ => err(e.to_string()),
            })?;
        let meta = file.metadata().map_err(|e| err(e.to_string()))?;
        if !meta.file_type().is_file() {
            return Err(err("not a regular file".into()));
        }
        let me = nix::unistd::geteuid().as_raw();
        if meta.uid() != 0 && meta.uid() != me {
            return Err(err(format!(
                "owned by uid {}, who could change it; chown root",
                meta.uid()
            )));
        }
        if meta.mode() & 0o077 != 0 {
            return Err(err(format!(
                "mode {:04o} lets others read it; chmod 600",
                meta.mode() & 0o7777
            )));
        }
        let mut bytes = Vec::new();
        file.take(MAX_KEY_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| err(e.to_string()))?;
        if bytes.len() as u64 > MAX_KEY_BYTES {
            return Err(err(format!(
                "longer than {MAX_KEY_BYTES} bytes; not a key file"
            )));
        }
        if bytes.len() < MIN_KEY_BYTES {
            return Err(err(format!(
                "{} bytes; at least {MIN_KEY_BYTES} are needed (e.g. head -c 32 /dev/urandom)",
                bytes.len()
            )));
        }
        Ok(Key(bytes))
    }

    /// A key from bytes (tests).
    pub fn from_bytes(bytes: &[u8]) -> Key {
        Key(bytes.to_vec())
    }

    fn mac(&self, data: &[u8]) -> Hmac<Sha256> {
        let mut m = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
        m.update(data);
        m
    }

    /// `{"signed": json(payload), "mac": hex}`.
    fn seal(&self, payload: &impl Serialize) -> String {
        let signed = serde_json::to_string(payload).expect("a payload serialises");
        let mac = hex(&self.mac(signed.as_bytes()).finalize().into_bytes());
        let mut line = serde_json::to_string(&Envelope { signed, mac }).expect("serialises");
        line.push('\n');
        line
    }

    /// The payload of an envelope line whose MAC is valid.
    fn open<T: DeserializeOwned>(&self, line: &str) -> Result<T, LinkError> {
        let env: Envelope = serde_json::from_str(line.trim_end())
            .map_err(|e| LinkError::Protocol(format!("not an envelope ({e})")))?;
        let tag = unhex(&env.mac).ok_or_else(|| LinkError::Protocol("mac is not hex".into()))?;
        self.mac(env.signed.as_bytes())
            .verify_slice(&tag)
            .map_err(|_| {
                LinkError::Protocol(
                    "message authentication failed (is handoff.key_file the same on both nodes?)"
                        .into(),
                )
            })?;
        serde_json::from_str(&env.signed)
            .map_err(|e| LinkError::Protocol(format!("unexpected message ({e})")))
    }
}

#[derive(Serialize, Deserialize)]
struct Envelope {
    signed: String,
    mac: String,
}

#[derive(Serialize, Deserialize)]
struct RequestPayload<B> {
    from: Ipv4Addr,
    ts_ms: u64,
    nonce: String,
    body: B,
}

#[derive(Serialize, Deserialize)]
struct ReplyPayload<B> {
    nonce: String,
    body: B,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn nonce() -> Result<String, std::io::Error> {
    let mut b = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    Ok(hex(&b))
}

/// Reads one line of at most [`MAX_LINE`] bytes.
fn read_line(r: impl Read) -> std::io::Result<String> {
    let mut line = String::new();
    BufReader::new(r.take(MAX_LINE + 1)).read_line(&mut line)?;
    if line.len() as u64 > MAX_LINE || !line.ends_with('\n') {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "no complete line",
        ));
    }
    Ok(line)
}

/// Sends `body` from `from` to the agent at `to`, waits up to `timeout` for its reply.
pub fn call<Req: Serialize, Rep: DeserializeOwned>(
    key: &Key,
    from: Ipv4Addr,
    to: SocketAddr,
    body: &Req,
    timeout: Duration,
) -> Result<Rep, LinkError> {
    let stream = TcpStream::connect_timeout(&to, CONNECT_TIMEOUT)
        .map_err(|source| LinkError::Io { addr: to, source })?;
    call_on(stream, key, from, body, timeout)
}

/// [`call`] on a connection already made (from a chosen source address, say).
pub fn call_on<Req: Serialize, Rep: DeserializeOwned>(
    stream: TcpStream,
    key: &Key,
    from: Ipv4Addr,
    body: &Req,
    timeout: Duration,
) -> Result<Rep, LinkError> {
    let to = stream
        .peer_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    let io = |source| LinkError::Io { addr: to, source };
    let nonce = nonce().map_err(io)?;
    let line = key.seal(&RequestPayload {
        from,
        ts_ms: unix_ms(),
        nonce: nonce.clone(),
        body,
    });
    let mut stream = stream;
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    stream.write_all(line.as_bytes()).map_err(io)?;
    let reply = read_line(&stream).map_err(|source| LinkError::Unanswered { addr: to, source })?;
    let reply: ReplyPayload<Rep> = key.open(&reply)?;
    if reply.nonce != nonce {
        return Err(LinkError::Protocol(
            "the reply answers another request (replayed?)".into(),
        ));
    }
    Ok(reply.body)
}

/// A nonce is 16 random bytes in lowercase hex, exactly; anything else is refused before it
/// is looked up or stored, so the replay memory holds at most this much per request.
pub const NONCE_HEX_LEN: usize = 32;
/// The most nonces remembered. Requests are a handful per hand-off; a window of
/// 2 × [`MAX_SKEW`] holding this many means a flood, and the next request is refused rather
/// than a nonce forgotten early (which would let its request be replayed).
pub const MAX_SEEN: usize = 4096;

/// The receiving side's memory of nonces, so a recorded request cannot be played again.
///
/// Across a restart the memory is gone, so a request stamped before this memory was made is
/// refused: it may be one recorded before the restart. That closes replay across restarts
/// without a file to fsync on every request (and to trust after a crash); the price is that for
/// as long as the peer's clock is behind this node's, requests sent just after a restart are
/// refused until its clock passes the start, and the sender's retries cover that.
#[derive(Debug)]
pub struct Replay {
    seen: HashMap<String, u64>,
    /// Unix ms when this memory started: the earliest stamp accepted.
    since_ms: u64,
}

impl Default for Replay {
    fn default() -> Replay {
        Replay::since(unix_ms())
    }
}

impl Replay {
    /// A memory that accepts requests stamped at `since_ms` or later.
    pub fn since(since_ms: u64) -> Replay {
        Replay {
            seen: HashMap::new(),
            since_ms,
        }
    }

    /// How many nonces are remembered.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// True if no nonce is remembered.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    /// Opens and checks one request line from `peer_addr` (the connection's source): MAC, sender,
    /// nonce format, clock skew, the daemon's start, and a nonce not seen before. Returns the
    /// body and the nonce to reply with.
    pub fn accept<Req: DeserializeOwned>(
        &mut self,
        key: &Key,
        expected: Ipv4Addr,
        line: &str,
    ) -> Result<(Req, String), LinkError> {
        self.accept_at(unix_ms(), key, expected, line)
    }

    fn accept_at<Req: DeserializeOwned>(
        &mut self,
        now: u64,
        key: &Key,
        expected: Ipv4Addr,
        line: &str,
    ) -> Result<(Req, String), LinkError> {
        let skew = MAX_SKEW.as_millis() as u64;
        // Pruned on every request, refused ones too, so the memory shrinks back after a burst
        // whatever comes next.
        self.seen.retain(|_, ts| *ts + 2 * skew >= now);
        let p: RequestPayload<Req> = key.open(line)?;
        if p.from != expected {
            return Err(LinkError::Protocol(format!(
                "request signed as from {}, expected {expected}",
                p.from
            )));
        }
        if p.nonce.len() != NONCE_HEX_LEN
            || !p
                .nonce
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(LinkError::Protocol(format!(
                "the nonce is {} bytes, not {NONCE_HEX_LEN} lowercase hex digits",
                p.nonce.len()
            )));
        }
        if p.ts_ms + skew < now || p.ts_ms > now + skew {
            return Err(LinkError::Protocol(format!(
                "request timestamp is {} ms away from this node's clock (more than {} s: replayed, or the clocks differ)",
                now.abs_diff(p.ts_ms),
                MAX_SKEW.as_secs()
            )));
        }
        if p.ts_ms < self.since_ms {
            return Err(LinkError::Protocol(format!(
                "request stamped {} ms before this agent started (replayed from before a restart, or the peer's clock is behind); retry",
                self.since_ms - p.ts_ms
            )));
        }
        if self.seen.contains_key(&p.nonce) {
            return Err(LinkError::Protocol(
                "request replayed (nonce seen before)".into(),
            ));
        }
        if self.seen.len() >= MAX_SEEN {
            return Err(LinkError::Protocol(format!(
                "{MAX_SEEN} requests within {} s; refused until older ones expire",
                2 * MAX_SKEW.as_secs()
            )));
        }
        self.seen.insert(p.nonce.clone(), p.ts_ms);
        Ok((p.body, p.nonce))
    }
}

/// The reply line to a request with `nonce`.
pub fn reply_line(key: &Key, nonce: String, body: &impl Serialize) -> String {
    key.seal(&ReplyPayload { nonce, body })
}

#[cfg(test)]
mod tests;
