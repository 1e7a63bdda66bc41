//! From items to the model: blocks are matched into a tree, then each known block is read
//! keyword by keyword; everything else is skipped and listed in [`KeepalivedConf::ignored`].

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::error::{ConfError, Location};
use super::lexer::{Item, MAX_DEPTH};
use super::model::{
    FifoPath, GlobalDefs, Ignored, InitialState, Instance, KeepalivedConf, Member, Notifies,
    Notify, SyncGroup, TrackFileDef, Tracked, UnicastPeer, Vip, Vmac,
};
use crate::keepalived::quoted;

/// A keyword line with its words and, if a `{` followed it, its block.
#[derive(Debug)]
struct Stmt {
    at: Location,
    words: Vec<String>,
    block: Option<Vec<Stmt>>,
}

impl Stmt {
    fn keyword(&self) -> &str {
        &self.words[0]
    }
}

/// Matches the braces: a words item followed by `{` opens a block, `}` closes it.
fn tree(items: Vec<Item>) -> Result<Vec<Stmt>, ConfError> {
    let mut frames: Vec<(Stmt, Vec<Stmt>)> = Vec::new();
    let mut top = Vec::new();
    let mut items = items.into_iter().peekable();
    while let Some(item) = items.next() {
        match item {
            Item::Words(at, words) => {
                let stmt = Stmt {
                    at,
                    words,
                    block: None,
                };
                if let Some(Item::Open(open)) = items.peek() {
                    if frames.len() >= MAX_DEPTH {
                        return Err(ConfError::TooDeep {
                            at: open.clone(),
                            what: "block",
                            max: MAX_DEPTH,
                        });
                    }
                    items.next();
                    frames.push((stmt, Vec::new()));
                } else {
                    frames.last_mut().map_or(&mut top, |f| &mut f.1).push(stmt);
                }
            }
            Item::Open(at) => return Err(ConfError::StrayOpen { at }),
            Item::Close(at) => {
                let (mut stmt, children) = frames.pop().ok_or(ConfError::UnbalancedClose { at })?;
                stmt.block = Some(children);
                frames.last_mut().map_or(&mut top, |f| &mut f.1).push(stmt);
            }
        }
    }
    if let Some((stmt, _)) = frames.pop() {
        return Err(ConfError::Unclosed {
            keyword: quoted(stmt.keyword()),
            at: stmt.at,
        });
    }
    Ok(top)
}

/// Builds the model from the items of every file read.
pub(super) fn model(items: Vec<Item>, files: Vec<PathBuf>) -> Result<KeepalivedConf, ConfError> {
    let mut conf = KeepalivedConf {
        files,
        ..KeepalivedConf::default()
    };
    let mut global_seen = Seen::default();
    for stmt in tree(items)? {
        match stmt.keyword() {
            "global_defs" => {
                let block = block(&stmt, 0)?;
                conf.global.at.get_or_insert(stmt.at.clone());
                global(&mut conf.global, &mut global_seen, block, &mut conf.ignored)?;
            }
            "vrrp_instance" => {
                let instance = instance(&stmt, &mut conf.ignored)?;
                if let Some(first) = conf.instance(&instance.name) {
                    return Err(duplicate(&stmt, "vrrp_instance", &first.at));
                }
                conf.instances.push(instance);
            }
            "vrrp_sync_group" => {
                let group = sync_group(&stmt, &mut conf.ignored)?;
                if let Some(first) = conf.sync_group(&group.name) {
                    return Err(duplicate(&stmt, "vrrp_sync_group", &first.at));
                }
                conf.sync_groups.push(group);
            }
            "track_file" | "vrrp_track_file" => {
                let def = track_file_def(&stmt, &mut conf.ignored)?;
                if let Some(first) = conf.track_file(&def.name) {
                    return Err(duplicate(&stmt, "track_file", &first.at));
                }
                conf.track_files.push(def);
            }
            _ => ignore(&stmt, "", &mut conf.ignored),
        }
    }
    check_references(&conf)?;
    Ok(conf)
}

/// Every sync group member and every tracked file refers to something defined.
fn check_references(conf: &KeepalivedConf) -> Result<(), ConfError> {
    let mut member_of: BTreeMap<&str, &str> = BTreeMap::new();
    for group in &conf.sync_groups {
        for member in &group.instances {
            if conf.instance(&member.name).is_none() {
                return Err(ConfError::UnknownInstance {
                    at: member.at.clone(),
                    group: quoted(&group.name),
                    instance: quoted(&member.name),
                });
            }
            if let Some(first) = member_of.insert(&member.name, &group.name) {
                return Err(ConfError::InTwoGroups {
                    at: member.at.clone(),
                    instance: quoted(&member.name),
                    group: quoted(first),
                });
            }
        }
    }
    let tracked = conf
        .instances
        .iter()
        .flat_map(|i| &i.track_files)
        .chain(conf.sync_groups.iter().flat_map(|g| &g.track_files));
    for t in tracked {
        if conf.track_file(&t.name).is_none() {
            return Err(ConfError::UnknownTrackFile {
                at: t.at.clone(),
                name: quoted(&t.name),
            });
        }
    }
    Ok(())
}

/// The keywords a block has set once already, so a second one is refused instead of one of
/// them being silently kept.
#[derive(Default)]
struct Seen(BTreeMap<String, Location>);

impl Seen {
    fn once(&mut self, stmt: &Stmt, within: &str) -> Result<(), ConfError> {
        if let Some(first) = self.0.get(stmt.keyword()) {
            return Err(ConfError::Duplicate {
                at: stmt.at.clone(),
                what: format!("{} in {within}", stmt.keyword()),
                first: first.clone(),
            });
        }
        self.0.insert(stmt.keyword().to_string(), stmt.at.clone());
        Ok(())
    }
}

fn duplicate(stmt: &Stmt, what: &str, first: &Location) -> ConfError {
    ConfError::Duplicate {
        at: stmt.at.clone(),
        what: format!("{what} {}", quoted(&stmt.words[1])),
        first: first.clone(),
    }
}

fn ignore(stmt: &Stmt, within: &str, ignored: &mut Vec<Ignored>) {
    ignored.push(Ignored {
        at: stmt.at.clone(),
        keyword: stmt.keyword().to_string(),
        within: within.to_string(),
    });
}

/// The block of a keyword that must have one and `args` values before it.
fn block(stmt: &Stmt, args: usize) -> Result<&[Stmt], ConfError> {
    if stmt.words.len() != args + 1 {
        return Err(ConfError::Arity {
            at: stmt.at.clone(),
            keyword: stmt.keyword().to_string(),
            expected: if args == 0 {
                "takes no value before its block"
            } else {
                "takes one name before its block"
            },
        });
    }
    stmt.block
        .as_deref()
        .ok_or_else(|| ConfError::MissingBlock {
            at: stmt.at.clone(),
            keyword: stmt.keyword().to_string(),
        })
}

/// The lines of a value block (`virtual_ipaddress { ... }`), none of which may open a block.
fn value_lines(stmt: &Stmt) -> Result<&[Stmt], ConfError> {
    let lines = block(stmt, 0)?;
    if let Some(nested) = lines.iter().find(|l| l.block.is_some()) {
        return Err(ConfError::UnexpectedBlock {
            at: nested.at.clone(),
            keyword: nested.keyword().to_string(),
        });
    }
    Ok(lines)
}

/// The values of a keyword that takes no block.
fn values(stmt: &Stmt) -> Result<&[String], ConfError> {
    if stmt.block.is_some() {
        return Err(ConfError::UnexpectedBlock {
            at: stmt.at.clone(),
            keyword: stmt.keyword().to_string(),
        });
    }
    Ok(&stmt.words[1..])
}

/// The one value of a keyword.
fn one(stmt: &Stmt) -> Result<&str, ConfError> {
    match values(stmt)? {
        [v] => Ok(v),
        _ => Err(ConfError::Arity {
            at: stmt.at.clone(),
            keyword: stmt.keyword().to_string(),
            expected: "takes one value",
        }),
    }
}

fn bad(stmt: &Stmt, value: &str, expected: &'static str) -> ConfError {
    bad_in(stmt, stmt.keyword(), value, expected)
}

/// A bad value on a line of `keyword`'s value block.
fn bad_in(line: &Stmt, keyword: &str, value: &str, expected: &'static str) -> ConfError {
    ConfError::BadValue {
        at: line.at.clone(),
        keyword: keyword.to_string(),
        value: quoted(value),
        expected,
    }
}

fn global(
    global: &mut GlobalDefs,
    seen: &mut Seen,
    block: &[Stmt],
    ignored: &mut Vec<Ignored>,
) -> Result<(), ConfError> {
    for stmt in block {
        match stmt.keyword() {
            "router_id" => {
                seen.once(stmt, "global_defs")?;
                global.router_id = Some(one(stmt)?.to_string());
            }
            "vrrp_notify_fifo" | "notify_fifo" => {
                seen.once(stmt, "global_defs")?;
                // PATH [USER [GROUP]]
                let path = match values(stmt)? {
                    [path, ..] if stmt.words.len() <= 4 => path,
                    _ => {
                        return Err(ConfError::Arity {
                            at: stmt.at.clone(),
                            keyword: stmt.keyword().to_string(),
                            expected: "takes a path, then optionally a user and a group",
                        })
                    }
                };
                let fifo = Some(FifoPath {
                    at: stmt.at.clone(),
                    path: PathBuf::from(path),
                });
                if stmt.keyword() == "notify_fifo" {
                    global.notify_fifo = fifo;
                } else {
                    global.vrrp_notify_fifo = fifo;
                }
            }
            _ => ignore(stmt, "global_defs", ignored),
        }
    }
    Ok(())
}

fn instance(stmt: &Stmt, ignored: &mut Vec<Ignored>) -> Result<Instance, ConfError> {
    let body = block(stmt, 1)?;
    let name = stmt.words[1].clone();
    let within = format!("vrrp_instance {}", quoted(&name));
    let mut seen = Seen::default();
    let mut vrid = None;
    let mut i = Instance {
        name,
        at: stmt.at.clone(),
        state: None,
        interface: None,
        virtual_router_id: 0,
        priority: None,
        advert_int: None,
        vips: Vec::new(),
        excluded_vips: Vec::new(),
        track_interfaces: Vec::new(),
        track_files: Vec::new(),
        unicast_src_ip: None,
        unicast_peers: Vec::new(),
        use_vmac: None,
        notify: Notifies::default(),
    };
    for s in body {
        let kw = s.keyword();
        if matches!(
            kw,
            "state"
                | "interface"
                | "virtual_router_id"
                | "priority"
                | "advert_int"
                | "unicast_src_ip"
                | "use_vmac"
        ) {
            seen.once(s, &within)?;
        }
        match kw {
            "state" => {
                i.state = Some(match one(s)? {
                    "MASTER" => InitialState::Master,
                    "BACKUP" => InitialState::Backup,
                    v => return Err(bad(s, v, "MASTER or BACKUP")),
                })
            }
            "interface" => i.interface = Some(interface_name(s, one(s)?)?),
            "virtual_router_id" => vrid = Some(number(s, 1, 255)?),
            "priority" => i.priority = Some(number(s, 1, 255)?),
            "advert_int" => {
                let v = one(s)?;
                i.advert_int =
                    Some(seconds(v).ok_or_else(|| bad(s, v, "a positive number of seconds"))?);
            }
            "virtual_ipaddress" | "virtual_ipaddress_excluded" => {
                let list = if kw == "virtual_ipaddress" {
                    &mut i.vips
                } else {
                    &mut i.excluded_vips
                };
                for line in value_lines(s)? {
                    list.push(vip(line)?);
                }
            }
            "track_interface" => i.track_interfaces.extend(tracked_list(s)?),
            "track_file" => i.track_files.extend(tracked_list(s)?),
            "unicast_src_ip" => {
                let v = one(s)?;
                i.unicast_src_ip = Some(v.parse().map_err(|_| bad(s, v, "an IP address"))?);
            }
            "unicast_peer" => {
                for line in value_lines(s)? {
                    i.unicast_peers.push(unicast_peer(line)?);
                }
            }
            "use_vmac" => i.use_vmac = Some(vmac(s)?),
            _ => {
                if !notify(s, &mut i.notify, &mut seen, &within)? {
                    ignore(s, &within, ignored);
                }
            }
        }
    }
    i.virtual_router_id = vrid.ok_or_else(|| ConfError::Missing {
        at: stmt.at.clone(),
        within,
        keyword: "virtual_router_id",
    })?;
    Ok(i)
}

fn sync_group(stmt: &Stmt, ignored: &mut Vec<Ignored>) -> Result<SyncGroup, ConfError> {
    let body = block(stmt, 1)?;
    let name = stmt.words[1].clone();
    let within = format!("vrrp_sync_group {}", quoted(&name));
    let mut seen = Seen::default();
    let mut g = SyncGroup {
        name,
        at: stmt.at.clone(),
        instances: Vec::new(),
        track_interfaces: Vec::new(),
        track_files: Vec::new(),
        notify: Notifies::default(),
    };
    for s in body {
        match s.keyword() {
            "group" => {
                seen.once(s, &within)?;
                for line in value_lines(s)? {
                    g.instances.extend(line.words.iter().map(|w| Member {
                        at: line.at.clone(),
                        name: w.clone(),
                    }));
                }
            }
            "track_interface" => g.track_interfaces.extend(tracked_list(s)?),
            "track_file" => g.track_files.extend(tracked_list(s)?),
            _ => {
                if !notify(s, &mut g.notify, &mut seen, &within)? {
                    ignore(s, &within, ignored);
                }
            }
        }
    }
    Ok(g)
}

fn track_file_def(stmt: &Stmt, ignored: &mut Vec<Ignored>) -> Result<TrackFileDef, ConfError> {
    let body = block(stmt, 1)?;
    let name = stmt.words[1].clone();
    let within = format!("track_file {}", quoted(&name));
    let mut seen = Seen::default();
    let (mut file, mut weight, mut reverse) = (None, None, false);
    for s in body {
        match s.keyword() {
            "file" => {
                seen.once(s, &within)?;
                file = Some(PathBuf::from(one(s)?));
            }
            "weight" => {
                seen.once(s, &within)?;
                let (w, r) = weight_values(s, values(s)?)?;
                weight = Some(w);
                reverse = r;
            }
            _ => ignore(s, &within, ignored),
        }
    }
    let file = file.ok_or_else(|| ConfError::Missing {
        at: stmt.at.clone(),
        within,
        keyword: "file",
    })?;
    Ok(TrackFileDef {
        name,
        at: stmt.at.clone(),
        file,
        weight,
        reverse,
    })
}

/// Reads a `notify*` keyword into `notifies`; false if `stmt` is not one.
fn notify(
    stmt: &Stmt,
    notifies: &mut Notifies,
    seen: &mut Seen,
    within: &str,
) -> Result<bool, ConfError> {
    let slot = match stmt.keyword() {
        "notify" => &mut notifies.notify,
        "notify_master" => &mut notifies.master,
        "notify_backup" => &mut notifies.backup,
        "notify_fault" => &mut notifies.fault,
        "notify_stop" => &mut notifies.stop,
        _ => return Ok(false),
    };
    seen.once(stmt, within)?;
    let words = values(stmt)?;
    if words.is_empty() || words.len() > 3 {
        return Err(ConfError::Arity {
            at: stmt.at.clone(),
            keyword: stmt.keyword().to_string(),
            expected:
                "takes a command (quoted if it has arguments), then optionally a user and a group",
        });
    }
    if words.iter().any(|w| w.contains(['\'', '\\'])) {
        // keepalived re-reads a script's line with single quotes and backslash escapes too.
        return Err(ConfError::Unsupported {
            at: stmt.at.clone(),
            what: format!("a ' or \\ in {}", stmt.keyword()),
            why: "keepalived re-reads script lines with its own quoting; write the command in double quotes without them".into(),
        });
    }
    *slot = Some(Notify {
        at: stmt.at.clone(),
        command: words[0].clone(),
        user: words.get(1).cloned(),
        group: words.get(2).cloned(),
    });
    Ok(true)
}

/// The lines of `track_interface { ... }` or `track_file { ... }`.
fn tracked_list(stmt: &Stmt) -> Result<Vec<Tracked>, ConfError> {
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
fn weight_values(stmt: &Stmt, words: &[String]) -> Result<(i32, bool), ConfError> {
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

fn number(stmt: &Stmt, min: u8, max: u8) -> Result<u8, ConfError> {
    let v = one(stmt)?;
    v.parse::<u8>()
        .ok()
        .filter(|n| (min..=max).contains(n))
        .ok_or_else(|| bad(stmt, v, "a number from 1 to 255"))
}

/// An interface name the kernel can have (under IFNAMSIZ, no `/` or white space).
fn interface_name(stmt: &Stmt, name: &str) -> Result<String, ConfError> {
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
fn seconds(v: &str) -> Option<Duration> {
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
fn vip(line: &Stmt) -> Result<Vip, ConfError> {
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
fn unicast_peer(line: &Stmt) -> Result<UnicastPeer, ConfError> {
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
fn vmac(stmt: &Stmt) -> Result<Vmac, ConfError> {
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
