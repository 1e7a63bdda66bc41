//! The real [`Host`]: composes the firewall, links, sysctl, sock_diag and probe adapters. It is
//! the only place where the drain cycle touches the kernel.
//!
//! All netlink and packet sockets are created here, in the calling thread, so they belong to the
//! namespace the agent runs in.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::ops::handoff::{PeerReply, PeerRequest};
use crate::ops::{
    Clock, HostError, HostErrorKind, Interfaces, KeepalivedTrack, Netfilter, PeerAgent, PeerAnswer,
    PeerProbe, SocketCount, Sockets, Sysctl, Tools,
};
use crate::sys::firewall::{Firewall, SystemFirewall};
use crate::sys::links::{Links, LinksError, RtnlLinks};
use crate::sys::peerlink;
use crate::sys::probe::{self, MacAddr, ProbeError, ProbeResult};
use crate::sys::sockdiag::{
    DestroyWatcher, NetlinkSockDiag, SockDiagError, SocketCounter, SocketFilter,
};
use crate::sys::sysctl::{ProcSysctl, SysctlError, SysctlKey, Sysctls};

/// How long one request to the peer's agent may take (installing or removing its return path
/// takes tens of milliseconds).
const PEER_CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Beyond the peer's deadlines, what its failback may take (preflight, undrain, grace).
const FAILBACK_SLACK: Duration = Duration::from_secs(60);

/// The shortest gap between two socket counts woken by destroy events.
const MIN_RECOUNT_GAP: Duration = Duration::from_millis(10);

/// The host the agent runs on.
pub struct SystemHost {
    rt: tokio::runtime::Runtime,
    links: RtnlLinks,
    sysctl: ProcSysctl,
    fw: SystemFirewall,
    sockets: Option<NetlinkSockDiag>,
    /// Wakes the drain loop when a VIP socket is destroyed; `None` if the kernel refused the
    /// subscription (then plain polling).
    destroyed: Option<DestroyWatcher>,
    last_count_took: Duration,
    filter: SocketFilter,
    idle_after: Duration,
    ingress: String,
    peer: Ipv4Addr,
    peer_mac: Option<MacAddr>,
    probe_vip: Ipv4Addr,
    probe_port: u16,
    probe_timeout: Duration,
    started: Instant,
    interrupts: Arc<AtomicU32>,
    /// `handoff:` key file and the peer agent's port, if configured; the key, once loaded.
    handoff: Option<(std::path::PathBuf, u16)>,
    handoff_key: Option<peerlink::Key>,
    /// How long a failback may take on the peer: its whole drain, failover and undrain.
    failback_timeout: Duration,
}

impl SystemHost {
    /// Builds the adapters for `cfg`. Opens sockets but changes nothing.
    pub fn new(cfg: &Config, interrupts: Arc<AtomicU32>) -> Result<SystemHost, HostError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| HostError::caused("tokio runtime", HostErrorKind::Other, e))?;
        let links = {
            let _guard = rt.enter();
            RtnlLinks::new().map_err(links_err)?
        };
        let vips: Vec<Ipv4Addr> = cfg.vips.iter().map(|v| v.address.get()).collect();
        let ports: Vec<u16> = cfg.vips.ports().map(|p| p.get()).collect();
        Ok(SystemHost {
            rt,
            links,
            sysctl: ProcSysctl::new(),
            fw: SystemFirewall::new(),
            sockets: None,
            destroyed: None,
            last_count_took: Duration::ZERO,
            filter: SocketFilter::new(vips.clone(), ports),
            idle_after: cfg.drain.idle_threshold.get(),
            ingress: cfg.ingress_interface.as_str().to_string(),
            peer: cfg.peer.get(),
            peer_mac: None,
            probe_vip: vips[0],
            probe_port: cfg.peer_probe.port.get(),
            probe_timeout: cfg.peer_probe.timeout.get(),
            started: Instant::now(),
            interrupts,
            handoff: cfg
                .handoff
                .as_ref()
                .map(|h| (h.key_file.as_path().to_path_buf(), h.port.get())),
            handoff_key: None,
            failback_timeout: cfg.handoff.as_ref().map_or(cfg.drain.deadline.get(), |h| {
                h.deadline.get().max(cfg.drain.deadline.get())
            }) + cfg.failover.timeout.get()
                + cfg.failover.post_wait.get()
                + FAILBACK_SLACK,
        })
    }

    /// The address this node uses towards the peer (what the kernel would pick as source; a
    /// connected UDP socket sends nothing).
    fn our_ip(&self) -> Result<Ipv4Addr, HostError> {
        let s = UdpSocket::bind("0.0.0.0:0").map_err(|e| {
            HostError::caused("source address towards the peer", HostErrorKind::Other, e)
        })?;
        s.connect(SocketAddrV4::new(self.peer, 9)).map_err(|e| {
            HostError::caused(
                format!("route to peer {}", self.peer),
                HostErrorKind::Other,
                e,
            )
        })?;
        match s.local_addr() {
            Ok(std::net::SocketAddr::V4(a)) => Ok(*a.ip()),
            Ok(a) => Err(HostError::other(
                "source address towards the peer",
                format!("unexpected {a}"),
            )),
            Err(e) => Err(HostError::caused(
                "source address towards the peer",
                HostErrorKind::Other,
                e,
            )),
        }
    }

    /// The peer's MAC on the ingress network, resolved by ARP (cached until a probe fails).
    fn resolve_peer_mac(&mut self) -> Result<Option<MacAddr>, HostError> {
        if self.peer_mac.is_none() {
            let ours = self.our_ip()?;
            self.peer_mac = probe::arp_resolve(&self.ingress, ours, self.peer, self.probe_timeout)
                .map_err(probe_err)?;
        }
        Ok(self.peer_mac)
    }

    fn sockets(&mut self) -> Result<&mut NetlinkSockDiag, HostError> {
        if self.sockets.is_none() {
            self.sockets = Some(NetlinkSockDiag::new().map_err(sock_err)?);
        }
        Ok(self.sockets.as_mut().expect("just set"))
    }
}

fn links_err(e: LinksError) -> HostError {
    let kind = match &e {
        LinksError::NoSuchInterface { .. } => HostErrorKind::MissingInterface,
        other if other.is_permission() => HostErrorKind::Permission,
        _ => HostErrorKind::Other,
    };
    HostError::caused("rtnetlink", kind, e)
}

fn sock_err(e: SockDiagError) -> HostError {
    let kind = if e.is_permission() {
        HostErrorKind::Permission
    } else {
        HostErrorKind::Other
    };
    HostError::caused("sock_diag", kind, e)
}

fn probe_err(e: ProbeError) -> HostError {
    let kind = match &e {
        ProbeError::NoSuchInterface { .. } => HostErrorKind::MissingInterface,
        ProbeError::Permission { .. } => HostErrorKind::Permission,
        _ => HostErrorKind::Other,
    };
    HostError::caused("peer probe", kind, e)
}

fn sysctl_err(e: SysctlError) -> HostError {
    let kind = if e.is_permission() {
        HostErrorKind::Permission
    } else {
        HostErrorKind::Other
    };
    HostError::caused("sysctl", kind, e)
}

fn key(k: &str) -> Result<SysctlKey, HostError> {
    SysctlKey::parse(k).map_err(sysctl_err)
}

impl Clock for SystemHost {
    fn now(&self) -> Duration {
        self.started.elapsed()
    }
    fn sleep(&mut self, d: Duration) {
        std::thread::sleep(d);
    }
    fn wait_for_change(&mut self, max: Duration) {
        if self.destroyed.is_none() {
            self.destroyed = DestroyWatcher::new(self.filter.clone())
                .map_err(|e| tracing::info!("no destroy events, polling only: {e}"))
                .ok();
        }
        let Some(w) = self.destroyed.as_mut() else {
            return std::thread::sleep(max);
        };
        // Recount at most every max(10 ms, last count's duration): a burst of closes must not
        // turn into a burst of dumps competing with HAProxy for the CPU.
        let gap = self.last_count_took.max(MIN_RECOUNT_GAP).min(max);
        let start = Instant::now();
        match w.wait(max) {
            Ok(true) => {
                let waited = start.elapsed();
                if waited < gap {
                    std::thread::sleep(gap - waited);
                }
            }
            Ok(false) => {}
            Err(e) => {
                tracing::info!("destroy events failed, polling only: {e}");
                self.destroyed = None;
                std::thread::sleep(max.saturating_sub(start.elapsed()));
            }
        }
    }
    fn interrupts(&self) -> u32 {
        self.interrupts.load(Ordering::SeqCst)
    }
    fn unix_now(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }
}

impl Interfaces for SystemHost {
    fn link_up(&mut self, ifname: &str) -> Result<bool, HostError> {
        let links = &self.links;
        self.rt
            .block_on(links.link_state(ifname))
            .map(|l| l.up)
            .map_err(links_err)
    }
    fn set_link(&mut self, ifname: &str, up: bool) -> Result<(), HostError> {
        tracing::info!(ifname, up, "set link");
        let links = &self.links;
        self.rt
            .block_on(links.set_link_up(ifname, up))
            .map_err(links_err)
    }
    fn vip_local(&mut self, vip: Ipv4Addr) -> Result<bool, HostError> {
        let links = &self.links;
        self.rt
            .block_on(links.has_address(None, vip))
            .map(|o| o.is_some())
            .map_err(links_err)
    }
    fn local_route(&mut self, vip: Ipv4Addr, present: bool) -> Result<(), HostError> {
        let links = &self.links;
        if present {
            self.rt
                .block_on(links.add_local_route(vip))
                .map_err(links_err)
        } else {
            self.rt
                .block_on(links.del_local_route(vip))
                .map_err(links_err)
        }
    }
}

impl PeerProbe for SystemHost {
    fn peer_owns(&mut self, vip: Ipv4Addr) -> Result<bool, HostError> {
        let Some(peer_mac) = self.resolve_peer_mac()? else {
            return Ok(false);
        };
        let ours = self.our_ip()?;
        let macs = probe::arp_resolve_all(&self.ingress, ours, vip, self.probe_timeout)
            .map_err(probe_err)?;
        Ok(macs == [peer_mac])
    }
    fn probe_peer(&mut self) -> Result<PeerAnswer, HostError> {
        let Some(mac) = self.resolve_peer_mac()? else {
            return Ok(PeerAnswer::NoAnswer);
        };
        let ours = self.our_ip()?;
        let r = probe::syn_probe(
            &self.ingress,
            ours,
            mac,
            self.probe_vip,
            self.probe_port,
            self.probe_timeout,
        )
        .map_err(probe_err)?;
        Ok(match r {
            ProbeResult::Accepted { rtt } => PeerAnswer::Accepted {
                rtt_ms: rtt.as_secs_f64() * 1000.0,
            },
            ProbeResult::Refused => PeerAnswer::Refused,
            ProbeResult::NoAnswer => {
                // The peer may have been replaced (new MAC): resolve again next time.
                self.peer_mac = None;
                PeerAnswer::NoAnswer
            }
        })
    }
    fn peer_mac(&mut self) -> Result<Option<crate::plan::Mac>, HostError> {
        self.resolve_peer_mac()
    }
}

impl Sockets for SystemHost {
    fn count(&mut self) -> Result<SocketCount, HostError> {
        let filter = self.filter.clone();
        let idle = self.idle_after;
        let c = self
            .sockets()?
            .count(&filter, Some(idle))
            .map_err(sock_err)?;
        Ok(SocketCount {
            total: c.total,
            idle: c.idle,
            by_state: c
                .by_state
                .iter()
                .filter(|(s, _)| s.is_served())
                .map(|(s, n)| (s.name(), *n))
                .collect(),
        })
    }
    fn passive_opens(&mut self) -> Result<u64, HostError> {
        crate::sys::sockdiag::passive_opens()
            .map_err(|e| HostError::caused("/proc/net/snmp", HostErrorKind::Other, e))
    }
}

impl Sysctl for SystemHost {
    fn sysctl_read(&mut self, k: &str) -> Result<String, HostError> {
        self.sysctl.read(&key(k)?).map_err(sysctl_err)
    }
    fn sysctl_write(&mut self, k: &str, value: &str) -> Result<(), HostError> {
        tracing::info!(key = k, value, "sysctl");
        self.sysctl.write(&key(k)?, value).map_err(sysctl_err)
    }
}

impl KeepalivedTrack for SystemHost {
    fn write_track_file(&mut self, path: &std::path::Path, value: i32) -> Result<(), HostError> {
        tracing::info!(path = %path.display(), value, "track file");
        crate::keepalived::TrackFile::new(path)
            .write(value)
            .map_err(|e| {
                HostError::caused(
                    format!("track file {}", path.display()),
                    HostErrorKind::Other,
                    e,
                )
            })
    }
    fn read_track_file(&mut self, path: &std::path::Path) -> Result<Option<i32>, HostError> {
        crate::keepalived::TrackFile::new(path).read().map_err(|e| {
            HostError::caused(
                format!("track file {}", path.display()),
                HostErrorKind::Other,
                e,
            )
        })
    }
}

impl Tools for SystemHost {
    fn has_net_admin(&self) -> bool {
        crate::sys::privileges::has_net_admin()
    }
    fn find_tool(&self, bin: &str) -> Option<std::path::PathBuf> {
        crate::sys::firewall::find_in_path(std::path::Path::new(bin))
    }
}

impl Netfilter for SystemHost {
    fn firewall(&mut self) -> &mut dyn Firewall {
        &mut self.fw
    }
    fn test_divert(&mut self, sets: &str, rules: &str) -> crate::ops::DivertTest {
        crate::sys::firewall::test_transaction(sets, rules)
    }
}

impl PeerAgent for SystemHost {
    fn peer_agent(&mut self, req: &PeerRequest) -> Result<PeerReply, HostError> {
        let Some((path, port)) = self.handoff.clone() else {
            return Err(HostError::other(
                "peer link",
                "no handoff: section in the configuration",
            ));
        };
        let key = match &self.handoff_key {
            Some(k) => k.clone(),
            None => {
                let k = peerlink::Key::load(&path)
                    .map_err(|e| HostError::caused("peer link", HostErrorKind::Other, e))?;
                self.handoff_key = Some(k.clone());
                k
            }
        };
        let ours = self.our_ip()?;
        let to = std::net::SocketAddr::from((self.peer, port));
        let timeout = match req {
            PeerRequest::Failback { .. } => self.failback_timeout,
            _ => PEER_CALL_TIMEOUT,
        };
        peerlink::call(&key, ours, to, req, timeout).map_err(|e| {
            let kind = match e {
                peerlink::LinkError::Unanswered { .. } => HostErrorKind::Unanswered,
                _ => HostErrorKind::Other,
            };
            HostError::caused("peer link", kind, e)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_adapters_errors_are_kept_as_sources_and_classified() {
        let e = links_err(LinksError::NoSuchInterface {
            ifname: "trk9".into(),
        });
        assert_eq!(e.kind, HostErrorKind::MissingInterface);
        let source = std::error::Error::source(&e).expect("the links error");
        assert!(
            matches!(
                source.downcast_ref::<LinksError>(),
                Some(LinksError::NoSuchInterface { ifname }) if ifname == "trk9"
            ),
            "{source:?}"
        );
        assert_eq!(e.to_string(), format!("rtnetlink: {source}"));
    }
}
