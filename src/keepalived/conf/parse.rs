//! From items to the model: with the blocks matched (tree.rs), each known block is read
//! keyword by keyword; everything else is skipped and listed in [`KeepalivedConf::ignored`].

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::error::{ConfError, Location};
use super::lexer::Item;
use super::model::{
    FifoPath, GlobalDefs, Ignored, InitialState, Instance, KeepalivedConf, Member, Notifies,
    Notify, SyncGroup, TrackFileDef,
};
use super::tree::{bad, block, one, tree, value_lines, values, Stmt};
use super::values::{
    interface_name, number, seconds, tracked_list, unicast_peer, vip, vmac, weight_values,
};
use crate::keepalived::quoted;

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
