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
    /// Reads the key file: at least [`MIN_KEY_BYTES`], and readable by its owner only (a key
    /// others can read authenticates nothing).
    pub fn load(path: &Path) -> Result<Key, LinkError> {
        let err = |why: String| LinkError::Key {
            path: path.to_path_buf(),
            why,
        };
        let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
        if meta.mode() & 0o077 != 0 {
            return Err(err(format!(
                "mode {:04o} lets others read it; chmod 600",
                meta.mode() & 0o7777
            )));
        }
        let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
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
    let io = |source| LinkError::Io { addr: to, source };
    let nonce = nonce().map_err(io)?;
    let line = key.seal(&RequestPayload {
        from,
        ts_ms: unix_ms(),
        nonce: nonce.clone(),
        body,
    });
    let mut stream = TcpStream::connect_timeout(&to, CONNECT_TIMEOUT).map_err(io)?;
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    stream.write_all(line.as_bytes()).map_err(io)?;
    let reply = read_line(&stream).map_err(io)?;
    let reply: ReplyPayload<Rep> = key.open(&reply)?;
    if reply.nonce != nonce {
        return Err(LinkError::Protocol(
            "the reply answers another request (replayed?)".into(),
        ));
    }
    Ok(reply.body)
}

/// The receiving side's memory of nonces, so a recorded request cannot be played again.
#[derive(Debug, Default)]
pub struct Replay {
    seen: HashMap<String, u64>,
}

impl Replay {
    /// Opens and checks one request line from `peer_addr` (the connection's source): MAC, sender,
    /// clock skew, and a nonce not seen before. Returns the body and the line to reply with.
    pub fn accept<Req: DeserializeOwned>(
        &mut self,
        key: &Key,
        expected: Ipv4Addr,
        line: &str,
    ) -> Result<(Req, String), LinkError> {
        let p: RequestPayload<Req> = key.open(line)?;
        if p.from != expected {
            return Err(LinkError::Protocol(format!(
                "request signed as from {}, expected {expected}",
                p.from
            )));
        }
        let now = unix_ms();
        let skew = MAX_SKEW.as_millis() as u64;
        if p.ts_ms + skew < now || p.ts_ms > now + skew {
            return Err(LinkError::Protocol(format!(
                "request timestamp is {} ms away from this node's clock (more than {} s: replayed, or the clocks differ)",
                now.abs_diff(p.ts_ms),
                MAX_SKEW.as_secs()
            )));
        }
        self.seen.retain(|_, ts| *ts + 2 * skew >= now);
        if self.seen.insert(p.nonce.clone(), p.ts_ms).is_some() {
            return Err(LinkError::Protocol(
                "request replayed (nonce seen before)".into(),
            ));
        }
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
        let line = request("begin", A, unix_ms(), "n1", &key());
        let (body, nonce): (String, String) = r.accept(&key(), A, &line).unwrap();
        assert_eq!((body.as_str(), nonce.as_str()), ("begin", "n1"));
        // The same line again is a replay.
        let again = r.accept::<String>(&key(), A, &line).unwrap_err();
        assert!(again.to_string().contains("replayed"), "{again}");
        // A changed byte breaks the MAC.
        let tampered = line.replace("begin", "bogin");
        let e = r.accept::<String>(&key(), A, &tampered).unwrap_err();
        assert!(e.to_string().contains("authentication failed"), "{e}");
        // Another key: refused.
        let other = request("begin", A, unix_ms(), "n2", &Key::from_bytes(&[8u8; 32]));
        assert!(r.accept::<String>(&key(), A, &other).is_err());
        // Signed by the right key, but as from another node.
        let elsewhere = request(
            "begin",
            Ipv4Addr::new(198, 18, 0, 99),
            unix_ms(),
            "n3",
            &key(),
        );
        assert!(r.accept::<String>(&key(), A, &elsewhere).is_err());
        // Too old.
        let old = request("begin", A, unix_ms() - 60_000, "n4", &key());
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
}
