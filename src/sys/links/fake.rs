//! A recording fake of [`Links`], for tests without root.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Mutex;

use super::*;

/// One recorded call on [`FakeLinks`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkCall {
    /// `link_state(ifname)`
    LinkState(String),
    /// `set_link_up(ifname, up)`
    SetLinkUp(String, bool),
    /// `has_address(ifname, addr)`
    HasAddress(Option<String>, Ipv4Addr),
    /// `add_local_route(vip)`
    AddLocalRoute(Ipv4Addr),
    /// `del_local_route(vip)`
    DelLocalRoute(Ipv4Addr),
    /// `local_route_exists(vip)`
    LocalRouteExists(Ipv4Addr),
    /// `our_local_routes()`
    OurLocalRoutes,
}

/// Scripted state of one fake interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FakeLink {
    /// Interface index.
    pub index: u32,
    /// Admin state (`IFF_UP`).
    pub up: bool,
    /// Carrier; the fake reports `oper_up = up && carrier`, as the kernel does for veth.
    pub carrier: bool,
}

#[derive(Debug, Default)]
struct FakeLinksState {
    links: BTreeMap<String, FakeLink>,
    addresses: Vec<(String, Ipv4Addr, u8)>,
    our_routes: BTreeSet<Ipv4Addr>,
    foreign_routes: BTreeMap<Ipv4Addr, u8>,
    calls: Vec<LinkCall>,
    failures: Vec<(LinkCall, LinksError)>,
}

/// A recording fake of [`Links`]: it keeps scripted interfaces, addresses and routes, updates
/// them as the real kernel would (up/down, idempotent route add/delete, foreign routes left
/// alone), records every call, and can fail a specific call once with a scripted error.
#[derive(Debug, Default)]
pub struct FakeLinks {
    state: Mutex<FakeLinksState>,
}

impl FakeLinks {
    /// A fake with no interfaces, addresses or routes.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an interface (index = order of insertion + 1, like a fresh namespace's lo = 1).
    pub fn with_link(self, ifname: &str, up: bool, carrier: bool) -> Self {
        {
            let mut st = self.lock();
            let index = st.links.len() as u32 + 1;
            st.links
                .insert(ifname.to_owned(), FakeLink { index, up, carrier });
        }
        self
    }

    /// Configures `addr/prefix_len` on `ifname`.
    pub fn with_address(self, ifname: &str, addr: Ipv4Addr, prefix_len: u8) -> Self {
        self.lock()
            .addresses
            .push((ifname.to_owned(), addr, prefix_len));
        self
    }

    /// Pre-installs our local route for `vip` (a leftover from an earlier run).
    pub fn with_our_route(self, vip: Ipv4Addr) -> Self {
        self.lock().our_routes.insert(vip);
        self
    }

    /// Pre-installs someone else's route to `vip/32` in table main with this protocol.
    pub fn with_foreign_route(self, vip: Ipv4Addr, protocol: u8) -> Self {
        self.lock().foreign_routes.insert(vip, protocol);
        self
    }

    /// Makes the next call equal to `call` fail with `err` (once).
    pub fn fail_on(&self, call: LinkCall, err: LinksError) {
        self.lock().failures.push((call, err));
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<LinkCall> {
        self.lock().calls.clone()
    }

    /// Current scripted state of an interface.
    pub fn link(&self, ifname: &str) -> Option<FakeLink> {
        self.lock().links.get(ifname).copied()
    }

    /// Sets the carrier of an interface (the peer of a veth going away, a cable pulled).
    pub fn set_carrier(&self, ifname: &str, carrier: bool) {
        if let Some(l) = self.lock().links.get_mut(ifname) {
            l.carrier = carrier;
        }
    }

    /// Our local routes currently installed, sorted.
    pub fn routes(&self) -> Vec<Ipv4Addr> {
        self.lock().our_routes.iter().copied().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FakeLinksState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records `call` and returns the scripted failure for it, if any.
    fn enter(
        &self,
        call: LinkCall,
    ) -> Result<std::sync::MutexGuard<'_, FakeLinksState>, LinksError> {
        let mut st = self.lock();
        st.calls.push(call.clone());
        if let Some(pos) = st.failures.iter().position(|(c, _)| *c == call) {
            return Err(st.failures.remove(pos).1);
        }
        Ok(st)
    }
}

fn fake_link<'a>(st: &'a mut FakeLinksState, ifname: &str) -> Result<&'a mut FakeLink, LinksError> {
    st.links
        .get_mut(ifname)
        .ok_or_else(|| LinksError::NoSuchInterface {
            ifname: ifname.to_owned(),
        })
}

impl Links for FakeLinks {
    async fn link_state(&self, ifname: &str) -> Result<LinkInfo, LinksError> {
        let mut st = self.enter(LinkCall::LinkState(ifname.to_owned()))?;
        let l = fake_link(&mut st, ifname)?;
        Ok(LinkInfo {
            index: l.index,
            up: l.up,
            oper_up: l.up && l.carrier,
        })
    }

    async fn set_link_up(&self, ifname: &str, up: bool) -> Result<(), LinksError> {
        let mut st = self.enter(LinkCall::SetLinkUp(ifname.to_owned(), up))?;
        fake_link(&mut st, ifname)?.up = up;
        Ok(())
    }

    async fn has_address(
        &self,
        ifname: Option<&str>,
        addr: Ipv4Addr,
    ) -> Result<Option<AddressOwner>, LinksError> {
        let mut st = self.enter(LinkCall::HasAddress(ifname.map(str::to_owned), addr))?;
        if let Some(name) = ifname {
            fake_link(&mut st, name)?;
        }
        let found = st
            .addresses
            .iter()
            .find(|(n, a, _)| *a == addr && ifname.is_none_or(|want| want == n))
            .cloned();
        Ok(found.map(|(name, _, prefix_len)| AddressOwner {
            index: st.links.get(&name).map_or(0, |l| l.index),
            ifname: name,
            prefix_len,
        }))
    }

    async fn add_local_route(&self, vip: Ipv4Addr) -> Result<(), LinksError> {
        let mut st = self.enter(LinkCall::AddLocalRoute(vip))?;
        if let Some(&protocol) = st.foreign_routes.get(&vip) {
            return Err(LinksError::ForeignRoute {
                vip,
                protocol,
                kind: "unicast".into(),
            });
        }
        st.our_routes.insert(vip);
        Ok(())
    }

    async fn del_local_route(&self, vip: Ipv4Addr) -> Result<(), LinksError> {
        let mut st = self.enter(LinkCall::DelLocalRoute(vip))?;
        st.our_routes.remove(&vip);
        Ok(())
    }

    async fn local_route_exists(&self, vip: Ipv4Addr) -> Result<bool, LinksError> {
        let st = self.enter(LinkCall::LocalRouteExists(vip))?;
        Ok(st.our_routes.contains(&vip))
    }

    async fn our_local_routes(&self) -> Result<Vec<Ipv4Addr>, LinksError> {
        let st = self.enter(LinkCall::OurLocalRoutes)?;
        Ok(st.our_routes.iter().copied().collect())
    }
}
