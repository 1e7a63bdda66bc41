//! Links, addresses and the VIP's local route, over rtnetlink.
//!
//! The drain needs four kernel facts and changes: is the tracked interface up (and does the
//! kernel consider it running — keepalived's `track_interface` reads `IFF_UP` and
//! `IFF_RUNNING`), downing/upping it, is the VIP configured on this node (and on which link),
//! and — on the *peer* — a main-table `local VIP/32 dev lo` route (docs/kernel-facts.md#k5: the
//! peer must accept packets for the VIP while it is BACKUP; a local route does that without
//! putting the address on an interface, where keepalived owns it and adds its own local-table
//! route when it becomes MASTER).
//!
//! The route carries the private protocol number [`ROUTE_PROTO`], so reconcile can find leftovers
//! (`ip route show proto 211`) and so deleting can never remove a route someone else installed:
//! the kernel only deletes a route whose protocol matches the one in the request.
//!
//! All operations act in the network namespace the netlink socket was created in, i.e. the
//! namespace of the thread that called [`RtnlLinks::new`].

use std::collections::BTreeSet;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr};

#[cfg(any(test, feature = "test-util"))]
mod fake;
#[cfg(any(test, feature = "test-util"))]
pub use fake::{FakeLink, FakeLinks, LinkCall};

use futures::TryStreamExt;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::{LinkFlags, LinkMessage};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{LinkUnspec, RouteMessageBuilder};
use thiserror::Error;

/// Route protocol number marking the routes this agent installs (`ip route show proto 211`).
///
/// 211 is unassigned in iproute2's `/etc/iproute2/rt_protos` (the highest named number there is
/// 192, eigrp; keepalived's own routes use 18), so no known routing daemon claims it.
pub const ROUTE_PROTO: u8 = 211;

/// The main routing table's id.
pub const RT_TABLE_MAIN: u32 = RouteHeader::RT_TABLE_MAIN as u32;

const ENODEV: i32 = libc::ENODEV;
const EEXIST: i32 = libc::EEXIST;
const ESRCH: i32 = libc::ESRCH;

/// State of one interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkInfo {
    /// Interface index.
    pub index: u32,
    /// Administratively up (`IFF_UP`, what `ip link set up/down` changes).
    pub up: bool,
    /// Operationally up as the kernel reports it to userspace: `IFF_RUNNING`, set when the link is
    /// admin-up and its operstate is UP or UNKNOWN (dummy and lo report UNKNOWN). keepalived's
    /// `track_interface` treats an interface as up only with both `IFF_UP` and `IFF_RUNNING`.
    pub oper_up: bool,
}

/// Where an IPv4 address is configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressOwner {
    /// Index of the interface carrying the address.
    pub index: u32,
    /// Name of that interface.
    pub ifname: String,
    /// Prefix length of the address.
    pub prefix_len: u8,
}

/// Errors of the links adapter; each names the interface or address concerned.
#[derive(Debug, Error)]
pub enum LinksError {
    /// No rtnetlink socket could be opened.
    #[error("cannot open an rtnetlink socket: {source}")]
    Connect {
        /// The socket error.
        source: io::Error,
    },
    /// The interface does not exist (in this network namespace).
    #[error("no such interface {ifname:?}")]
    NoSuchInterface {
        /// The missing interface.
        ifname: String,
    },
    /// Reading an interface's state failed.
    #[error("cannot read the state of interface {ifname:?}: {source}")]
    LinkQuery {
        /// The interface.
        ifname: String,
        /// The netlink error.
        source: rtnetlink::Error,
    },
    /// The kernel answered a link query without a usable message.
    #[error("the kernel returned no link message for interface {ifname:?}")]
    NoLinkMessage {
        /// The interface.
        ifname: String,
    },
    /// Setting an interface up or down failed.
    #[error("cannot set interface {ifname:?} {}: {source}", if *up { "up" } else { "down" })]
    SetLink {
        /// The interface.
        ifname: String,
        /// The requested admin state.
        up: bool,
        /// The netlink error.
        source: rtnetlink::Error,
    },
    /// Listing IPv4 addresses failed.
    #[error("cannot list IPv4 addresses (looking for {addr}): {source}")]
    AddressQuery {
        /// The address looked for.
        addr: Ipv4Addr,
        /// The netlink error.
        source: rtnetlink::Error,
    },
    /// Adding the local route failed.
    #[error("cannot add route local {vip}/32 dev lo table main proto {ROUTE_PROTO}: {source}")]
    AddRoute {
        /// The VIP.
        vip: Ipv4Addr,
        /// The netlink error.
        source: rtnetlink::Error,
    },
    /// A route to VIP/32 with the same key exists in table main but is not ours; we do not take
    /// over or delete what someone else installed.
    #[error(
        "a {kind} route to {vip}/32 with protocol {protocol} already exists in table main; \
         not ours (protocol {ROUTE_PROTO}), leaving it alone"
    )]
    ForeignRoute {
        /// The VIP.
        vip: Ipv4Addr,
        /// The existing route's protocol number.
        protocol: u8,
        /// The existing route's type (unicast, local, ...).
        kind: String,
    },
    /// Deleting the local route failed.
    #[error("cannot delete route local {vip}/32 dev lo table main proto {ROUTE_PROTO}: {source}")]
    DelRoute {
        /// The VIP.
        vip: Ipv4Addr,
        /// The netlink error.
        source: rtnetlink::Error,
    },
    /// Listing IPv4 routes failed.
    #[error("cannot list IPv4 routes: {source}")]
    RouteQuery {
        /// The netlink error.
        source: rtnetlink::Error,
    },
}

impl LinksError {
    /// Whether the kernel refused for lack of privilege (EPERM/EACCES), by errno.
    pub fn is_permission(&self) -> bool {
        let netlink = |e: &rtnetlink::Error| match e {
            rtnetlink::Error::NetlinkError(m) => m
                .code
                .is_some_and(|c| matches!(-c.get(), libc::EPERM | libc::EACCES)),
            _ => false,
        };
        match self {
            LinksError::Connect { source } => {
                source.kind() == io::ErrorKind::PermissionDenied
                    || matches!(source.raw_os_error(), Some(libc::EPERM | libc::EACCES))
            }
            LinksError::LinkQuery { source, .. }
            | LinksError::SetLink { source, .. }
            | LinksError::AddressQuery { source, .. }
            | LinksError::AddRoute { source, .. }
            | LinksError::DelRoute { source, .. }
            | LinksError::RouteQuery { source } => netlink(source),
            LinksError::NoSuchInterface { .. }
            | LinksError::NoLinkMessage { .. }
            | LinksError::ForeignRoute { .. } => false,
        }
    }
}

/// Link, address and local-route operations the agent needs. Implemented by [`RtnlLinks`] (the
/// kernel) and `FakeLinks` (a recording fake for state-machine tests).
pub trait Links: Send + Sync {
    /// State of `ifname`; [`LinksError::NoSuchInterface`] if it does not exist.
    fn link_state(&self, ifname: &str)
        -> impl Future<Output = Result<LinkInfo, LinksError>> + Send;

    /// Sets `ifname` administratively up or down (`ip link set dev IFNAME up|down`).
    fn set_link_up(
        &self,
        ifname: &str,
        up: bool,
    ) -> impl Future<Output = Result<(), LinksError>> + Send;

    /// Where `addr` is configured as a local IPv4 address: on `ifname` only, or on any
    /// interface when `ifname` is `None`. `Ok(None)` when it is not configured there.
    fn has_address(
        &self,
        ifname: Option<&str>,
        addr: Ipv4Addr,
    ) -> impl Future<Output = Result<Option<AddressOwner>, LinksError>> + Send;

    /// Installs `local VIP/32 dev lo table main proto 211`. Idempotent: Ok if our route is
    /// already there; [`LinksError::ForeignRoute`] if another route holds that key.
    fn add_local_route(&self, vip: Ipv4Addr)
        -> impl Future<Output = Result<(), LinksError>> + Send;

    /// Removes our local route for `vip`. Ok if it is absent; never removes a route with
    /// another protocol number.
    fn del_local_route(&self, vip: Ipv4Addr)
        -> impl Future<Output = Result<(), LinksError>> + Send;

    /// Whether our local route for `vip` exists.
    fn local_route_exists(
        &self,
        vip: Ipv4Addr,
    ) -> impl Future<Output = Result<bool, LinksError>> + Send;

    /// Every destination of our local routes (`ip route show table main proto 211 type local`),
    /// sorted — what reconcile must clean up after a crash.
    fn our_local_routes(&self) -> impl Future<Output = Result<Vec<Ipv4Addr>, LinksError>> + Send;
}

/// The netlink error code of an rtnetlink error as a positive errno, if it carries one.
fn errno_of(err: &rtnetlink::Error) -> Option<i32> {
    match err {
        rtnetlink::Error::NetlinkError(msg) => msg.code.map(|c| c.get().abs()),
        _ => None,
    }
}

/// The [`LinkInfo`] a kernel link message describes.
fn link_info(msg: &LinkMessage) -> LinkInfo {
    LinkInfo {
        index: msg.header.index,
        up: msg.header.flags.contains(LinkFlags::Up),
        oper_up: msg.header.flags.contains(LinkFlags::Running),
    }
}

/// The interface name in a link message, if present.
fn link_name(msg: &LinkMessage) -> Option<&str> {
    msg.attributes.iter().find_map(|a| match a {
        rtnetlink::packet_route::link::LinkAttribute::IfName(n) => Some(n.as_str()),
        _ => None,
    })
}

/// The local IPv4 address an address message describes. For IPv4, `IFA_LOCAL` is the address
/// of the interface and `IFA_ADDRESS` is the *peer* on point-to-point links, so prefer LOCAL.
fn local_ipv4(msg: &AddressMessage) -> Option<Ipv4Addr> {
    let pick = |want_local: bool| {
        msg.attributes.iter().find_map(|a| match (a, want_local) {
            (AddressAttribute::Local(IpAddr::V4(ip)), true)
            | (AddressAttribute::Address(IpAddr::V4(ip)), false) => Some(*ip),
            _ => None,
        })
    };
    pick(true).or_else(|| pick(false))
}

/// Summary of an IPv4 route, as far as ownership decisions need it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RouteSummary {
    dst: Ipv4Addr,
    prefix_len: u8,
    table: u32,
    protocol: u8,
    kind: RouteType,
    tos: u8,
    priority: u32,
}

impl RouteSummary {
    /// Our route for this destination, exactly as [`local_route_message`] builds it.
    fn is_ours(&self) -> bool {
        self.table == RT_TABLE_MAIN && self.protocol == ROUTE_PROTO && self.kind == RouteType::Local
    }

    /// Same kernel key (table, prefix, tos, metric) as our route for `vip`: an add of ours with
    /// NLM_F_EXCL would fail with EEXIST because of this route.
    fn same_key_as_ours(&self, vip: Ipv4Addr) -> bool {
        self.table == RT_TABLE_MAIN
            && self.dst == vip
            && self.prefix_len == 32
            && self.tos == 0
            && self.priority == 0
    }
}

/// Reads an IPv4 route message; `None` for other families or default routes without DST.
fn route_summary(msg: &RouteMessage) -> Option<RouteSummary> {
    if msg.header.address_family != AddressFamily::Inet {
        return None;
    }
    let mut dst = None;
    // Tables above 255 only appear in RTA_TABLE; the header byte then says RT_TABLE_COMPAT.
    let mut table = u32::from(msg.header.table);
    let mut priority = 0;
    for attr in &msg.attributes {
        match attr {
            RouteAttribute::Destination(RouteAddress::Inet(ip)) => dst = Some(*ip),
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Priority(p) => priority = *p,
            _ => {}
        }
    }
    Some(RouteSummary {
        dst: dst?,
        prefix_len: msg.header.destination_prefix_length,
        table,
        protocol: u8::from(msg.header.protocol),
        kind: msg.header.kind,
        tos: msg.header.tos,
        priority,
    })
}

/// The route message for `local VIP/32 dev lo table main proto 211 scope host`, the same as
/// `ip route add local VIP/32 dev lo proto 211` produces.
/// A route type as `ip route` names it.
fn route_type_name(kind: RouteType) -> String {
    match kind {
        RouteType::Unicast => "unicast".into(),
        RouteType::Local => "local".into(),
        RouteType::Broadcast => "broadcast".into(),
        RouteType::Anycast => "anycast".into(),
        RouteType::Multicast => "multicast".into(),
        RouteType::BlackHole => "blackhole".into(),
        RouteType::Unreachable => "unreachable".into(),
        RouteType::Prohibit => "prohibit".into(),
        RouteType::Throw => "throw".into(),
        RouteType::Nat => "nat".into(),
        other => format!("type {}", u8::from(other)),
    }
}

fn local_route_message(vip: Ipv4Addr, lo_index: u32) -> RouteMessage {
    RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(vip, 32)
        .table_id(RT_TABLE_MAIN)
        .kind(RouteType::Local)
        .scope(RouteScope::Host)
        .protocol(RouteProtocol::Other(ROUTE_PROTO))
        .output_interface(lo_index)
        .build()
}

/// The message for deleting our route: protocol, type and table set, so the kernel refuses to
/// match a route installed by anyone else (`fib_table_delete` compares a non-zero protocol).
fn del_route_message(vip: Ipv4Addr) -> RouteMessage {
    RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(vip, 32)
        .table_id(RT_TABLE_MAIN)
        .kind(RouteType::Local)
        // RT_SCOPE_NOWHERE in a delete request means "any scope".
        .scope(RouteScope::NoWhere)
        .protocol(RouteProtocol::Other(ROUTE_PROTO))
        .build()
}

/// The real adapter: an rtnetlink connection in the namespace of the thread that created it.
#[derive(Debug, Clone)]
pub struct RtnlLinks {
    handle: rtnetlink::Handle,
}

impl RtnlLinks {
    /// Opens an rtnetlink socket and spawns its connection task on the current tokio runtime.
    /// The socket belongs to the calling thread's network namespace.
    pub fn new() -> Result<Self, LinksError> {
        // tokio::spawn would panic outside a runtime; report it as an error instead.
        let rt = tokio::runtime::Handle::try_current().map_err(|e| LinksError::Connect {
            source: io::Error::other(e),
        })?;
        let (connection, handle, _) =
            rtnetlink::new_connection().map_err(|source| LinksError::Connect { source })?;
        rt.spawn(connection);
        Ok(RtnlLinks { handle })
    }

    async fn get_link(&self, ifname: &str) -> Result<LinkMessage, LinksError> {
        let mut stream = self
            .handle
            .link()
            .get()
            .match_name(ifname.to_owned())
            .execute();
        match stream.try_next().await {
            Ok(Some(msg)) => Ok(msg),
            Ok(None) => Err(LinksError::NoLinkMessage {
                ifname: ifname.to_owned(),
            }),
            Err(e) if errno_of(&e) == Some(ENODEV) => Err(LinksError::NoSuchInterface {
                ifname: ifname.to_owned(),
            }),
            Err(source) => Err(LinksError::LinkQuery {
                ifname: ifname.to_owned(),
                source,
            }),
        }
    }

    async fn link_name_by_index(&self, index: u32) -> Result<String, LinksError> {
        let label = format!("#{index}");
        let mut stream = self.handle.link().get().match_index(index).execute();
        match stream.try_next().await {
            Ok(Some(msg)) => Ok(link_name(&msg).map(str::to_owned).unwrap_or(label)),
            Ok(None) => Err(LinksError::NoLinkMessage { ifname: label }),
            Err(e) if errno_of(&e) == Some(ENODEV) => {
                Err(LinksError::NoSuchInterface { ifname: label })
            }
            Err(source) => Err(LinksError::LinkQuery {
                ifname: label,
                source,
            }),
        }
    }

    async fn ipv4_routes(&self) -> Result<Vec<RouteSummary>, LinksError> {
        // Without NETLINK_GET_STRICT_CHK the kernel ignores the header's filters and dumps every
        // IPv4 route of every table; we filter here.
        let request = RouteMessageBuilder::<Ipv4Addr>::new().build();
        let messages: Vec<RouteMessage> = self
            .handle
            .route()
            .get(request)
            .execute()
            .try_collect()
            .await
            .map_err(|source| LinksError::RouteQuery { source })?;
        Ok(messages.iter().filter_map(route_summary).collect())
    }
}

impl Links for RtnlLinks {
    async fn link_state(&self, ifname: &str) -> Result<LinkInfo, LinksError> {
        Ok(link_info(&self.get_link(ifname).await?))
    }

    async fn set_link_up(&self, ifname: &str, up: bool) -> Result<(), LinksError> {
        let builder = LinkUnspec::new_with_name(ifname);
        let msg = if up { builder.up() } else { builder.down() }.build();
        match self.handle.link().set(msg).execute().await {
            Ok(()) => Ok(()),
            Err(e) if errno_of(&e) == Some(ENODEV) => Err(LinksError::NoSuchInterface {
                ifname: ifname.to_owned(),
            }),
            Err(source) => Err(LinksError::SetLink {
                ifname: ifname.to_owned(),
                up,
                source,
            }),
        }
    }

    async fn has_address(
        &self,
        ifname: Option<&str>,
        addr: Ipv4Addr,
    ) -> Result<Option<AddressOwner>, LinksError> {
        let only_index = match ifname {
            Some(name) => Some(self.get_link(name).await?.header.index),
            None => None,
        };
        let mut request = self.handle.address().get();
        // The dump honours the family in the request header; the rest we filter ourselves.
        request.message_mut().header.family = AddressFamily::Inet;
        let messages: Vec<AddressMessage> = request
            .execute()
            .try_collect()
            .await
            .map_err(|source| LinksError::AddressQuery { addr, source })?;
        let Some(found) = messages.iter().find(|m| {
            local_ipv4(m) == Some(addr) && only_index.is_none_or(|i| m.header.index == i)
        }) else {
            return Ok(None);
        };
        let ifname = match ifname {
            Some(name) => name.to_owned(),
            None => self.link_name_by_index(found.header.index).await?,
        };
        Ok(Some(AddressOwner {
            index: found.header.index,
            ifname,
            prefix_len: found.header.prefix_len,
        }))
    }

    async fn add_local_route(&self, vip: Ipv4Addr) -> Result<(), LinksError> {
        let lo = self.get_link("lo").await?.header.index;
        // RouteAddRequest sends NLM_F_CREATE|NLM_F_EXCL: an existing route with the same key
        // (table, dst/32, tos 0, metric 0) — of any type or protocol — yields EEXIST.
        match self
            .handle
            .route()
            .add(local_route_message(vip, lo))
            .execute()
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if errno_of(&e) == Some(EEXIST) => {
                let routes = self.ipv4_routes().await?;
                match routes.iter().find(|r| r.same_key_as_ours(vip)) {
                    Some(r) if r.is_ours() => Ok(()),
                    Some(r) => Err(LinksError::ForeignRoute {
                        vip,
                        protocol: r.protocol,
                        kind: route_type_name(r.kind),
                    }),
                    // Gone between the add and the dump: report the original refusal.
                    None => Err(LinksError::AddRoute { vip, source: e }),
                }
            }
            Err(source) => Err(LinksError::AddRoute { vip, source }),
        }
    }

    async fn del_local_route(&self, vip: Ipv4Addr) -> Result<(), LinksError> {
        match self
            .handle
            .route()
            .del(del_route_message(vip))
            .execute()
            .await
        {
            Ok(()) => Ok(()),
            // ESRCH: no route with that key *and our protocol* — nothing of ours to delete.
            Err(e) if errno_of(&e) == Some(ESRCH) => Ok(()),
            Err(source) => Err(LinksError::DelRoute { vip, source }),
        }
    }

    async fn local_route_exists(&self, vip: Ipv4Addr) -> Result<bool, LinksError> {
        Ok(self
            .ipv4_routes()
            .await?
            .iter()
            .any(|r| r.is_ours() && r.dst == vip && r.prefix_len == 32))
    }

    async fn our_local_routes(&self) -> Result<Vec<Ipv4Addr>, LinksError> {
        let set: BTreeSet<Ipv4Addr> = self
            .ipv4_routes()
            .await?
            .iter()
            .filter(|r| r.is_ours() && r.prefix_len == 32)
            .map(|r| r.dst)
            .collect();
        Ok(set.into_iter().collect())
    }
}

#[cfg(test)]
mod tests;
