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
mod tests {
    use super::*;

    fn key() -> Key {
        Key::from_bytes(&[7u8; 32])
    }

    const A: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 11);

    /// A well-formed nonce, distinct for each `i`.
    fn n(i: u64) -> String {
        format!("{i:032x}")
    }

    /// A fixed "now" for the tests that drive the clock.
    const T: u64 = 1_800_000_000_000;

    #[test]
    fn a_nonce_that_is_not_16_bytes_of_hex_is_refused_and_not_stored() {
        let mut r = Replay::since(T);
        let bad_nonces = [
            "a".repeat(60 * 1024),
            "ab".to_string(),
            "A".repeat(NONCE_HEX_LEN),
            n(1)[1..].to_string(),
            format!("{}g", &n(1)[1..]),
        ];
        for bad in bad_nonces {
            let line = request("begin", A, T, &bad, &key());
            let e = r.accept_at::<String>(T, &key(), A, &line).unwrap_err();
            assert!(e.to_string().contains("nonce"), "{e}");
            assert!(r.is_empty(), "a refused nonce is not remembered");
        }
        let line = request("begin", A, T, &n(1), &key());
        assert!(r.accept_at::<String>(T, &key(), A, &line).is_ok());
    }

    #[test]
    fn the_memory_is_pruned_on_every_request_even_a_refused_one() {
        let mut r = Replay::since(T);
        for i in 0..10 {
            let line = request("begin", A, T, &n(i), &key());
            r.accept_at::<String>(T, &key(), A, &line).unwrap();
        }
        assert_eq!(r.len(), 10);
        let later = T + 3 * MAX_SKEW.as_millis() as u64;
        assert!(r
            .accept_at::<String>(later, &key(), A, "not even an envelope")
            .is_err());
        assert!(r.is_empty(), "expired nonces dropped by a refused request");
    }

    #[test]
    fn the_memory_is_bounded_by_refusing_not_by_forgetting() {
        let mut r = Replay::since(T);
        for i in 0..MAX_SEEN as u64 {
            let line = request("begin", A, T, &n(i), &key());
            r.accept_at::<String>(T, &key(), A, &line).unwrap();
        }
        let line = request("begin", A, T, &n(MAX_SEEN as u64), &key());
        let e = r.accept_at::<String>(T, &key(), A, &line).unwrap_err();
        assert!(
            e.to_string().contains("refused until older ones expire"),
            "{e}"
        );
        assert_eq!(r.len(), MAX_SEEN);
        // The first is still remembered: its replay is refused, not accepted.
        let first = request("begin", A, T, &n(0), &key());
        let e = r.accept_at::<String>(T, &key(), A, &first).unwrap_err();
        assert!(e.to_string().contains("replayed"), "{e}");
    }

    #[test]
    fn a_request_stamped_before_the_daemon_started_is_refused() {
        // Recorded 5 s before a restart, replayed 1 s after it: inside the skew window, and the
        // new memory has not seen the nonce.
        let recorded = request("end", A, T - 5_000, &n(7), &key());
        let mut before_restart = Replay::since(T - 60_000);
        assert!(before_restart
            .accept_at::<String>(T - 5_000, &key(), A, &recorded)
            .is_ok());
        let mut after_restart = Replay::since(T);
        let e = after_restart
            .accept_at::<String>(T + 1_000, &key(), A, &recorded)
            .unwrap_err();
        assert!(e.to_string().contains("before this agent started"), "{e}");
        // A fresh request after the start is accepted.
        let fresh = request("end", A, T + 1_000, &n(8), &key());
        assert!(after_restart
            .accept_at::<String>(T + 1_000, &key(), A, &fresh)
            .is_ok());
    }

    fn request(body: &str, from: Ipv4Addr, ts_ms: u64, nonce: &str, k: &Key) -> String {
        k.seal(&RequestPayload {
            from,
            ts_ms,
            nonce: nonce.to_string(),
            body: body.to_string(),
        })
    }

    #[test]
    fn a_request_is_accepted_once_and_only_as_sent() {
        let mut r = Replay::default();
        let line = request("begin", A, unix_ms(), &n(1), &key());
        let (body, nonce): (String, String) = r.accept(&key(), A, &line).unwrap();
        assert_eq!((body.as_str(), nonce.as_str()), ("begin", n(1).as_str()));
        // The same line again is a replay.
        let again = r.accept::<String>(&key(), A, &line).unwrap_err();
        assert!(again.to_string().contains("replayed"), "{again}");
        // A changed byte breaks the MAC.
        let tampered = line.replace("begin", "bogin");
        let e = r.accept::<String>(&key(), A, &tampered).unwrap_err();
        assert!(e.to_string().contains("authentication failed"), "{e}");
        // Another key: refused.
        let other = request("begin", A, unix_ms(), &n(2), &Key::from_bytes(&[8u8; 32]));
        assert!(r.accept::<String>(&key(), A, &other).is_err());
        // Signed by the right key, but as from another node.
        let elsewhere = request(
            "begin",
            Ipv4Addr::new(198, 18, 0, 99),
            unix_ms(),
            &n(3),
            &key(),
        );
        assert!(r.accept::<String>(&key(), A, &elsewhere).is_err());
        // Too old.
        let old = request("begin", A, unix_ms() - 60_000, &n(4), &key());
        let e = r.accept::<String>(&key(), A, &old).unwrap_err();
        assert!(e.to_string().contains("clock"), "{e}");
    }

    #[test]
    fn a_reply_must_carry_the_requests_nonce_under_the_key() {
        let line = reply_line(&key(), "n1".into(), &"ok");
        let p: ReplyPayload<String> = key().open(&line).unwrap();
        assert_eq!((p.nonce.as_str(), p.body.as_str()), ("n1", "ok"));
        assert!(Key::from_bytes(&[1u8; 32])
            .open::<ReplyPayload<String>>(&line)
            .is_err());
    }

    #[test]
    fn a_request_taken_but_not_answered_is_told_apart_from_one_never_delivered() {
        // Nobody listens: the request never left, so nothing can have acted on it.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let to = closed.local_addr().unwrap();
        drop(closed);
        let e = call::<_, String>(&key(), A, to, &"begin", Duration::from_secs(2)).unwrap_err();
        assert!(matches!(e, LinkError::Io { .. }), "{e}");

        // The other side reads the whole request, then goes away without a word (its agent
        // killed after acting on it).
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let to = l.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            read_line(&s).unwrap()
        });
        let e = call::<_, String>(&key(), A, to, &"begin", Duration::from_secs(5)).unwrap_err();
        assert!(matches!(e, LinkError::Unanswered { .. }), "{e}");
        assert!(e.to_string().contains("no reply came"), "{e}");
        assert!(!server.join().unwrap().is_empty());
    }

    #[test]
    fn the_key_file_must_be_private_and_long_enough() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        std::fs::write(&path, [1u8; 32]).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = Key::load(&path).unwrap_err().to_string();
        assert!(e.contains("chmod 600"), "{e}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(Key::load(&path).is_ok());
        std::fs::write(&path, [1u8; 8]).unwrap();
        let e = Key::load(&path).unwrap_err().to_string();
        assert!(e.contains("at least 32"), "{e}");
        let e = Key::load(&dir.path().join("missing"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing"), "{e}");
    }

    #[test]
    fn a_symlinked_key_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real.key");
        std::fs::write(&real, [1u8; 32]).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o600)).unwrap();
        let link = dir.path().join("link.key");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        assert!(Key::load(&real).is_ok());
        let e = Key::load(&link).unwrap_err().to_string();
        assert!(
            e.contains("link.key") && e.contains("symbolic link") && !e.contains('\n'),
            "{e}"
        );
    }

    #[test]
    fn a_key_file_owned_by_another_user_is_refused() {
        if !nix::unistd::geteuid().is_root() {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "needs root to chown a key file"
            );
            eprintln!("skipped: needs root to chown a key file");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        std::fs::write(&path, [1u8; 32]).unwrap();
        nix::unistd::chown(&path, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
        let e = Key::load(&path).unwrap_err().to_string();
        assert!(e.contains("/k:") && e.contains("uid 65534"), "{e}");
    }

    #[test]
    fn a_key_path_that_is_not_a_regular_file_is_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("k.fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let e = Key::load(&fifo).unwrap_err().to_string();
        assert!(
            e.contains("k.fifo") && e.contains("not a regular file"),
            "{e}"
        );
        let e = Key::load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
    }
}
