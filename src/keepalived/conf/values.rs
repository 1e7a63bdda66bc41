//! The values inside the blocks: virtual addresses, tracked items and weights, unicast peers,
//! `use_vmac`, numbers, interface names and timers, each checked the way keepalived 2.2 reads
//! it (keepalived/vrrp/vrrp_ipaddress.c, vrrp_track.c, vrrp_parser.c).

use std::net::IpAddr;
use std::time::Duration;

use super::error::ConfError;
use super::model::{Tracked, UnicastPeer, Vip, Vmac};
use super::tree::{bad, bad_in, one, value_lines, values, Stmt};
use crate::keepalived::quoted;

/// The lines of `track_interface { ... }` or `track_file { ... }`.
pub(super) fn tracked_list(stmt: &Stmt) -> Result<Vec<Tracked>, ConfError> {
    value_lines(stmt)?
        .iter()
        .map(|line| {
            let (weight, reverse) = match &line.words[1..] {
                [] => (None, false),
                [w, rest @ ..] if w == "weight" => {
                    let (w, r) = weight_values(line, rest)?;
                    (Some(w), r)
                }
                [other, ..] => {
                    return Err(bad_in(line, stmt.keyword(), other, "`weight N [reverse]`"))
                }
            };
            Ok(Tracked {
                at: line.at.clone(),
                name: line.words[0].clone(),
                weight,
                reverse,
            })
        })
        .collect()
}

/// `N [reverse]` after a `weight`.
pub(super) fn weight_values(stmt: &Stmt, words: &[String]) -> Result<(i32, bool), ConfError> {
    let (n, reverse) = match words {
        [n] => (n, false),
        [n, r] if r == "reverse" => (n, true),
        _ => {
            return Err(ConfError::Arity {
                at: stmt.at.clone(),
                keyword: "weight".into(),
                expected: "takes a number, then optionally `reverse`",
            })
        }
    };
    let w = n
        .parse::<i32>()
        .ok()
        .filter(|w| (-254..=254).contains(w))
        .ok_or_else(|| ConfError::BadValue {
            at: stmt.at.clone(),
            keyword: "weight".into(),
            value: quoted(n),
            expected: "a number from -254 to 254",
        })?;
    Ok((w, reverse))
}

pub(super) fn number(stmt: &Stmt, min: u8, max: u8) -> Result<u8, ConfError> {
    let v = one(stmt)?;
    v.parse::<u8>()
        .ok()
        .filter(|n| (min..=max).contains(n))
        .ok_or_else(|| bad(stmt, v, "a number from 1 to 255"))
}

/// An interface name the kernel can have (under IFNAMSIZ, no `/` or white space).
pub(super) fn interface_name(stmt: &Stmt, name: &str) -> Result<String, ConfError> {
    let ok = !name.is_empty()
        && name.len() < 16
        && name != "."
        && name != ".."
        && !name.contains(|c: char| c == '/' || c == ':' || c.is_whitespace());
    if ok {
        Ok(name.to_string())
    } else {
        Err(bad(
            stmt,
            name,
            "an interface name (1-15 characters, no '/' or ':')",
        ))
    }
}

/// `1`, `0.5`, `2.25`: seconds with up to six decimals, as keepalived reads timers.
pub(super) fn seconds(v: &str) -> Option<Duration> {
    let (int, frac) = v.split_once('.').unwrap_or((v, ""));
    if int.is_empty() && frac.is_empty()
        || frac.len() > 6
        || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let secs: u64 = if int.is_empty() { 0 } else { int.parse().ok()? };
    let micros: u32 = format!("{frac:0<6}").parse().ok()?;
    let d = Duration::from_secs(secs) + Duration::from_micros(u64::from(micros));
    (!d.is_zero() && secs <= 3600).then_some(d)
}

/// One line of `virtual_ipaddress`: `ADDR[/PREFIX]` then options (vrrp_ipaddress.c's
/// `alloc_ipaddress()`).
pub(super) fn vip(line: &Stmt) -> Result<Vip, ConfError> {
    let text = &line.words[0];
    let refuse = |reason: String| ConfError::Vip {
        at: line.at.clone(),
        text: quoted(text),
        reason,
    };
    let (addr, prefix) = match text.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (text.as_str(), None),
    };
    let address: IpAddr = addr
        .parse()
        .map_err(|_| refuse("not an IP address".into()))?;
    let max = if address.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix {
        None => max,
        Some(p) => p
            .parse::<u8>()
            .ok()
            .filter(|p| *p <= max)
            .ok_or_else(|| refuse(format!("prefix length is not a number from 0 to {max}")))?,
    };
    let mut vip = Vip {
        at: line.at.clone(),
        address,
        prefix,
        dev: None,
        label: None,
        use_vmac: false,
    };
    let mut opts = line.words[1..].iter();
    while let Some(opt) = opts.next() {
        match opt.as_str() {
            "dev" | "label" | "scope" | "broadcast" | "brd" | "peer" | "preferred_lft" => {
                let value = opts
                    .next()
                    .ok_or_else(|| refuse(format!("{opt} needs a value")))?;
                let slot = match opt.as_str() {
                    "dev" => &mut vip.dev,
                    "label" => &mut vip.label,
                    _ => continue,
                };
                if slot.is_some() {
                    return Err(refuse(format!("{opt} given twice")));
                }
                *slot = Some(if opt == "dev" {
                    interface_name(line, value)?
                } else {
                    value.clone()
                });
            }
            "use_vmac" => vip.use_vmac = true,
            "home" | "-nodad" | "mngtmpaddr" | "noprefixroute" | "autojoin" | "no_track" => {}
            _ => return Err(refuse(format!("unknown option {}", quoted(opt)))),
        }
    }
    Ok(vip)
}

/// One line of `unicast_peer`: `ADDR [min_ttl N] [max_ttl N]`.
pub(super) fn unicast_peer(line: &Stmt) -> Result<UnicastPeer, ConfError> {
    let text = &line.words[0];
    let address = text
        .parse()
        .map_err(|_| bad_in(line, "unicast_peer", text, "an IP address"))?;
    for pair in line.words[1..].chunks(2) {
        match pair {
            [k, v] if (k == "min_ttl" || k == "max_ttl") && v.parse::<u8>().is_ok() => {}
            _ => {
                let what = pair.join(" ");
                return Err(bad_in(
                    line,
                    "unicast_peer",
                    &what,
                    "`min_ttl N` or `max_ttl N`",
                ));
            }
        }
    }
    Ok(UnicastPeer {
        at: line.at.clone(),
        address,
    })
}

/// `use_vmac [NAME] [MAC]`: a word with `:` is the MAC (an interface name cannot have one).
pub(super) fn vmac(stmt: &Stmt) -> Result<Vmac, ConfError> {
    let words = values(stmt)?;
    if words.len() > 2 {
        return Err(ConfError::Arity {
            at: stmt.at.clone(),
            keyword: "use_vmac".into(),
            expected: "takes at most an interface name and a MAC address",
        });
    }
    let mut vmac = Vmac {
        at: stmt.at.clone(),
        name: None,
        mac: None,
    };
    for w in words {
        let slot = if w.contains(':') {
            &mut vmac.mac
        } else {
            &mut vmac.name
        };
        if slot.is_some() {
            return Err(bad(stmt, w, "one interface name and one MAC address"));
        }
        *slot = Some(if w.contains(':') {
            w.clone()
        } else {
            interface_name(stmt, w)?
        });
    }
    Ok(vmac)
}
