//! Which nftables tables exist, asked of the kernel over netlink (`NFT_MSG_GETTABLE` dump) rather
//! than by running `nft`: the install asks it before every divert, and a process start-up costs
//! 2–5 ms on the 2-core test VM, a quarter of the 20 ms the whole install may take. The answer
//! is the same `nft list tables` prints; only the names of one family are read.

use std::io;

use netlink_sys::{protocols::NETLINK_NETFILTER, Socket};

/// `NFNL_SUBSYS_NFTABLES` (linux/netfilter/nfnetlink.h).
const NFNL_SUBSYS_NFTABLES: u16 = 10;
/// `NFT_MSG_GETTABLE` / `NFT_MSG_NEWTABLE` (linux/netfilter/nf_tables.h).
const NFT_MSG_GETTABLE: u16 = 1;
const NFT_MSG_NEWTABLE: u16 = 0;
/// `NFTA_TABLE_NAME`.
const NFTA_TABLE_NAME: u16 = 1;
/// `NFPROTO_IPV4`: the family iptables-nft's tables live in (`table ip mangle`).
pub const NFPROTO_IPV4: u8 = 2;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_DUMP: u16 = 0x300;
const HDR: usize = 16;

/// The request: a netlink header and an `nfgenmsg` for `family`.
fn request(family: u8, seq: u32) -> Vec<u8> {
    let mut m = Vec::with_capacity(HDR + 4);
    m.extend_from_slice(&((HDR + 4) as u32).to_ne_bytes());
    m.extend_from_slice(&((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETTABLE).to_ne_bytes());
    m.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(&[family, 0, 0, 0]);
    m
}

/// What one datagram of the reply held.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    More,
    Done,
}

/// Walks one datagram, appending table names; `Err` for a kernel error or bytes that do not
/// parse.
fn parse(dgram: &[u8], seq: u32, names: &mut Vec<String>) -> io::Result<Step> {
    let bad =
        |what: &str| io::Error::new(io::ErrorKind::InvalidData, format!("nftables dump: {what}"));
    let mut at = 0;
    while at + HDR <= dgram.len() {
        let word =
            |o: usize| u32::from_ne_bytes([dgram[o], dgram[o + 1], dgram[o + 2], dgram[o + 3]]);
        let len = word(at) as usize;
        if len < HDR || at + len > dgram.len() {
            return Err(bad("a message overruns its datagram"));
        }
        let kind = u16::from_ne_bytes([dgram[at + 4], dgram[at + 5]]);
        if word(at + 8) == seq {
            match kind {
                NLMSG_DONE => return Ok(Step::Done),
                NLMSG_ERROR => {
                    let code = i32::from_ne_bytes([
                        dgram[at + HDR],
                        dgram[at + HDR + 1],
                        dgram[at + HDR + 2],
                        dgram[at + HDR + 3],
                    ]);
                    if code != 0 {
                        return Err(io::Error::from_raw_os_error(-code));
                    }
                }
                k if k == (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWTABLE => {
                    // Attributes after the 4-byte nfgenmsg, each 4-byte aligned.
                    let mut a = at + HDR + 4;
                    while a + 4 <= at + len {
                        let alen = u16::from_ne_bytes([dgram[a], dgram[a + 1]]) as usize;
                        let atype = u16::from_ne_bytes([dgram[a + 2], dgram[a + 3]]) & 0x3fff;
                        if alen < 4 || a + alen > at + len {
                            return Err(bad("an attribute overruns its message"));
                        }
                        if atype == NFTA_TABLE_NAME {
                            let raw = &dgram[a + 4..a + alen];
                            let name = raw.split(|b| *b == 0).next().unwrap_or_default();
                            names.push(String::from_utf8_lossy(name).into_owned());
                        }
                        a += (alen + 3) & !3;
                    }
                }
                _ => {}
            }
        }
        at += (len + 3) & !3;
    }
    Ok(Step::More)
}

/// The names of the nftables tables of `family` in the calling thread's network namespace.
pub fn tables(family: u8) -> io::Result<Vec<String>> {
    let mut socket = Socket::new(NETLINK_NETFILTER)?;
    socket.bind_auto()?;
    socket.connect(&netlink_sys::SocketAddr::new(0, 0))?;
    let seq = 1;
    socket.send(&request(family, seq), 0)?;
    let mut names = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = loop {
            let mut slice = &mut buf[..];
            match socket.recv(&mut slice, 0) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => break other?,
            }
        };
        if parse(&buf[..n], seq, &mut names)? == Step::Done {
            return Ok(names);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(kind: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
        let len = HDR + payload.len();
        let mut m = Vec::new();
        m.extend_from_slice(&(len as u32).to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&2u16.to_ne_bytes());
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(payload);
        while m.len() % 4 != 0 {
            m.push(0);
        }
        m
    }

    fn table(name: &str, seq: u32) -> Vec<u8> {
        let mut p = vec![NFPROTO_IPV4, 0, 0, 0];
        let value = format!("{name}\0");
        p.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
        p.extend_from_slice(&NFTA_TABLE_NAME.to_ne_bytes());
        p.extend_from_slice(value.as_bytes());
        while p.len() % 4 != 0 {
            p.push(0);
        }
        // NFTA_TABLE_FLAGS, to be skipped.
        p.extend_from_slice(&8u16.to_ne_bytes());
        p.extend_from_slice(&2u16.to_ne_bytes());
        p.extend_from_slice(&0u32.to_ne_bytes());
        message((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWTABLE, seq, &p)
    }

    #[test]
    fn table_names_are_read_until_done() {
        let mut d = table("filter", 7);
        d.extend(table("mangle", 7));
        let mut names = Vec::new();
        assert_eq!(parse(&d, 7, &mut names).unwrap(), Step::More);
        assert_eq!(names, ["filter", "mangle"]);
        let done = message(NLMSG_DONE, 7, &0i32.to_ne_bytes());
        assert_eq!(parse(&done, 7, &mut names).unwrap(), Step::Done);
        // Another request's messages are not ours.
        let mut other = Vec::new();
        assert_eq!(parse(&table("x", 8), 7, &mut other).unwrap(), Step::More);
        assert!(other.is_empty());
    }

    #[test]
    fn a_kernel_error_and_garbage_are_errors() {
        let err = message(NLMSG_ERROR, 7, &(-libc::EPERM).to_ne_bytes());
        let e = parse(&err, 7, &mut Vec::new()).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EPERM));
        let mut cut = table("mangle", 7);
        cut.truncate(HDR + 6);
        cut[0..4].copy_from_slice(&100u32.to_ne_bytes());
        assert!(parse(&cut, 7, &mut Vec::new()).is_err());
    }

    #[test]
    fn the_request_is_a_dump_of_one_family() {
        let r = request(NFPROTO_IPV4, 3);
        assert_eq!(r.len(), 20);
        assert_eq!(u16::from_ne_bytes([r[4], r[5]]), 0x0a01);
        assert_eq!(u16::from_ne_bytes([r[6], r[7]]), 0x301);
        assert_eq!(r[16], 2);
    }
}
