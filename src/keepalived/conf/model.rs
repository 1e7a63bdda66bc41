//! What the reader understands of a keepalived configuration: the VRRP side (instances, sync
//! groups, track files, the notify FIFOs), each item with the place it was written.
//!
//! Fields hold what the file says; `None` is "not written", and keepalived's default then
//! applies (documented per field), so a later check can tell a default from an explicit value.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::error::Location;

/// A keepalived configuration as read from its top file and every file it includes.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct KeepalivedConf {
    /// Every file read, in the order keepalived reads them (the top file first).
    pub files: Vec<PathBuf>,
    /// `global_defs`.
    pub global: GlobalDefs,
    /// The `vrrp_instance` blocks, in file order.
    pub instances: Vec<Instance>,
    /// The `vrrp_sync_group` blocks, in file order.
    pub sync_groups: Vec<SyncGroup>,
    /// The `track_file` (and deprecated `vrrp_track_file`) blocks, in file order.
    pub track_files: Vec<TrackFileDef>,
    /// Keywords the reader skipped (other blocks such as `virtual_server` or `vrrp_script`,
    /// and keywords inside known blocks that do not concern the agent), in file order.
    pub ignored: Vec<Ignored>,
}

impl KeepalivedConf {
    /// The instance called `name`.
    pub fn instance(&self, name: &str) -> Option<&Instance> {
        self.instances.iter().find(|i| i.name == name)
    }

    /// The sync group called `name`.
    pub fn sync_group(&self, name: &str) -> Option<&SyncGroup> {
        self.sync_groups.iter().find(|g| g.name == name)
    }

    /// The sync group `instance` belongs to, if any.
    pub fn group_of(&self, instance: &str) -> Option<&SyncGroup> {
        self.sync_groups
            .iter()
            .find(|g| g.instances.iter().any(|m| m.name == instance))
    }

    /// The track file called `name`.
    pub fn track_file(&self, name: &str) -> Option<&TrackFileDef> {
        self.track_files.iter().find(|t| t.name == name)
    }
}

/// The parts of `global_defs` the agent needs.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct GlobalDefs {
    /// Where the block starts, if there is one.
    pub at: Option<Location>,
    /// `router_id` (keepalived's default: the host name).
    pub router_id: Option<String>,
    /// `vrrp_notify_fifo PATH`: the VRRP process's state lines.
    pub vrrp_notify_fifo: Option<FifoPath>,
    /// `notify_fifo PATH`: the global FIFO (VRRP and checker lines).
    pub notify_fifo: Option<FifoPath>,
}

/// A notify FIFO's path, where it was written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FifoPath {
    /// The keyword's line.
    pub at: Location,
    /// The FIFO.
    pub path: PathBuf,
}

/// The state an instance starts in (`state`); keepalived's default is BACKUP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InitialState {
    /// `state MASTER`
    Master,
    /// `state BACKUP`
    Backup,
}

/// A `vrrp_instance`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instance {
    /// Its name.
    pub name: String,
    /// The `vrrp_instance` line.
    pub at: Location,
    /// `state` (default BACKUP).
    pub state: Option<InitialState>,
    /// `interface`: where adverts go and, by default, the VIPs (none with unicast and `dev` on
    /// every VIP).
    pub interface: Option<String>,
    /// `virtual_router_id` (mandatory).
    pub virtual_router_id: u8,
    /// `priority` (default 100).
    pub priority: Option<u8>,
    /// `advert_int` (default 1 s).
    pub advert_int: Option<Duration>,
    /// `virtual_ipaddress`.
    pub vips: Vec<Vip>,
    /// `virtual_ipaddress_excluded`: addresses keepalived moves but does not advertise.
    pub excluded_vips: Vec<Vip>,
    /// `track_interface`.
    pub track_interfaces: Vec<Tracked>,
    /// `track_file`: names of `track_file` blocks.
    pub track_files: Vec<Tracked>,
    /// `unicast_src_ip`.
    pub unicast_src_ip: Option<IpAddr>,
    /// `unicast_peer`: with any, adverts are unicast to these instead of multicast.
    pub unicast_peers: Vec<UnicastPeer>,
    /// `use_vmac`: the instance runs on a macvlan interface over `interface`.
    pub use_vmac: Option<Vmac>,
    /// The notify scripts.
    pub notify: Notifies,
}

impl Instance {
    /// The interface `vip` lives on: its `dev`, else the instance's VMAC interface when
    /// `use_vmac` names one, else the instance's `interface`. `None` when keepalived picks the
    /// name (`use_vmac` without a name) or the instance has no interface.
    pub fn vip_interface<'a>(&'a self, vip: &'a Vip) -> Option<&'a str> {
        if let Some(dev) = &vip.dev {
            return Some(dev);
        }
        match &self.use_vmac {
            Some(vmac) => vmac.name.as_deref(),
            None => self.interface.as_deref(),
        }
    }
}

/// A virtual address: `ADDR[/PREFIX] [dev IF] [label L] [use_vmac] ...`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vip {
    /// Its line.
    pub at: Location,
    /// The address.
    pub address: IpAddr,
    /// The prefix length (32 or 128 when not written).
    pub prefix: u8,
    /// `dev IF` (default: the instance's interface, or its VMAC).
    pub dev: Option<String>,
    /// `label L`.
    pub label: Option<String>,
    /// `use_vmac` on the address itself.
    pub use_vmac: bool,
}

/// An entry of `track_interface` or `track_file`: `NAME [weight N [reverse]]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tracked {
    /// Its line.
    pub at: Location,
    /// The interface or track file.
    pub name: String,
    /// `weight N` (default: a tracked interface down is FAULT; a track file's own weight).
    pub weight: Option<i32>,
    /// `reverse` after the weight.
    pub reverse: bool,
}

/// A `unicast_peer` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnicastPeer {
    /// Its line.
    pub at: Location,
    /// The peer's address.
    pub address: IpAddr,
}

/// `use_vmac [NAME] [MAC]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vmac {
    /// Its line.
    pub at: Location,
    /// The macvlan interface's name (default: chosen by keepalived, `vrrp.VRID` unless
    /// `vmac_prefix` says otherwise).
    pub name: Option<String>,
    /// The MAC address, if given.
    pub mac: Option<String>,
}

/// A notify script: `notify "COMMAND ARGS" [USER [GROUP]]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notify {
    /// Its line.
    pub at: Location,
    /// The command as written (quotes removed); keepalived splits it into words.
    pub command: String,
    /// The user it runs as (default: `script_user`).
    pub user: Option<String>,
    /// The group it runs as.
    pub group: Option<String>,
}

/// The notify scripts of an instance or a group.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Notifies {
    /// `notify`: called with `TYPE NAME STATE PRIORITY` on every change.
    pub notify: Option<Notify>,
    /// `notify_master`
    pub master: Option<Notify>,
    /// `notify_backup`
    pub backup: Option<Notify>,
    /// `notify_fault`
    pub fault: Option<Notify>,
    /// `notify_stop`
    pub stop: Option<Notify>,
}

/// A member of a sync group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// Its line.
    pub at: Location,
    /// The instance's name.
    pub name: String,
}

/// A `vrrp_sync_group`: instances that change state together.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncGroup {
    /// Its name.
    pub name: String,
    /// The `vrrp_sync_group` line.
    pub at: Location,
    /// `group { ... }`: its instances (each defined).
    pub instances: Vec<Member>,
    /// `track_interface` of the group.
    pub track_interfaces: Vec<Tracked>,
    /// `track_file` of the group.
    pub track_files: Vec<Tracked>,
    /// The group's notify scripts.
    pub notify: Notifies,
}

/// A `track_file NAME { file PATH; weight N [reverse] }` block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrackFileDef {
    /// Its name.
    pub name: String,
    /// The block's line.
    pub at: Location,
    /// `file`: the file keepalived watches.
    pub file: PathBuf,
    /// `weight` (default 1).
    pub weight: Option<i32>,
    /// `reverse` after the weight.
    pub reverse: bool,
}

/// A keyword the reader skipped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ignored {
    /// Its line.
    pub at: Location,
    /// The keyword.
    pub keyword: String,
    /// The block it is in (`vrrp_instance VI_1`), or empty at the top level.
    pub within: String,
}
