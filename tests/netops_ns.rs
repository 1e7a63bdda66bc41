//! Privileged kernel tests of the netns, links, sysctl and probe adapters.
//!
//! Every test builds its own scratch namespaces (`da-<purpose>-<pid>-<n>`, deleted on drop even
//! when the test fails) and uses addresses in 198.18.0.0/15 only. Nothing here changes the root
//! namespace: interfaces are created inside the namespaces, sysctl writes go to per-interface
//! keys of interfaces that exist only in a scratch namespace (so a write that leaked into the
//! root namespace would fail with NotFound instead of changing anything), and namespace-wide
//! keys are set with `ip netns exec ... sysctl`.
//!
//! Without root the tests print why they skip; with CI=true they fail instead.

use std::future::Future;
use std::net::{Ipv4Addr, TcpListener};
use std::time::Duration;

use drain_agent::sys::links::{Links, LinksError, RtnlLinks, ROUTE_PROTO};
use drain_agent::sys::probe::{
    arp_resolve, arp_resolve_all, format_mac, syn_probe, MacAddr, ProbeError, ProbeResult,
};
use drain_agent::sys::sysctl::{ProcSysctl, SysctlError, SysctlKey, Sysctls};
use drain_test_support::netns::{require_root, ScratchNetns};

const A_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 5, 1);
const B_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 5, 2);
const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 5, 100);
const A_MAC: MacAddr = [0x02, 0xda, 0, 0, 5, 1];
const B_MAC: MacAddr = [0x02, 0xda, 0, 0, 5, 2];

/// Upper bound for waiting on asynchronous kernel state (linkwatch, RST processing):
/// attempts × pause, never asserted as a speed.
const SETTLE_ATTEMPTS: u32 = 100;
const SETTLE_PAUSE: Duration = Duration::from_millis(20);

/// Runs an async closure with an [`RtnlLinks`] whose netlink socket lives in `ns`.
fn with_links<T, F, Fut>(ns: &ScratchNetns, f: F) -> T
where
    T: Send + 'static,
    F: FnOnce(RtnlLinks) -> Fut + Send + 'static,
    Fut: Future<Output = T>,
{
    ns.enter(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        rt.block_on(async move { f(RtnlLinks::new().expect("rtnetlink socket")).await })
    })
    .expect("enter scratch namespace")
}

/// A scratch namespace holding a veth pair `t0`/`t1` (both ends inside it).
fn ns_with_veth(purpose: &str) -> ScratchNetns {
    let ns = ScratchNetns::new(purpose).expect("scratch netns");
    ns.run_ok(&[
        "ip", "link", "add", "t0", "type", "veth", "peer", "name", "t1",
    ])
    .expect("veth pair");
    ns
}

fn mac_str(mac: &MacAddr) -> String {
    format_mac(mac)
}

/// Two namespaces joined by a veth pair: A ("draining node", `va`, 198.18.5.1/24) and B ("peer",
/// `vb`, 198.18.5.2/24), with fixed MACs. B has arp_ignore 0, forwarding off, rp_filter 0 set
/// explicitly, so the results do not depend on what the root namespace would pass down.
struct Lab {
    a: ScratchNetns,
    b: ScratchNetns,
}

impl Lab {
    fn new(purpose: &str) -> Lab {
        let a = ScratchNetns::new(&format!("{purpose}-a")).expect("netns A");
        let b = ScratchNetns::new(&format!("{purpose}-b")).expect("netns B");
        a.run_ok(&[
            "ip",
            "link",
            "add",
            "va",
            "address",
            &mac_str(&A_MAC),
            "type",
            "veth",
            "peer",
            "name",
            "vb",
            "address",
            &mac_str(&B_MAC),
            "netns",
            b.name(),
        ])
        .expect("veth between A and B");
        a.run_ok(&["ip", "addr", "add", "198.18.5.1/24", "dev", "va"])
            .unwrap();
        b.run_ok(&["ip", "addr", "add", "198.18.5.2/24", "dev", "vb"])
            .unwrap();
        for key in [
            "net.ipv4.conf.all.arp_ignore=0",
            "net.ipv4.conf.all.rp_filter=0",
            "net.ipv4.ip_forward=0",
        ] {
            b.run_ok(&["sysctl", "-qw", key]).unwrap();
        }
        a.run_ok(&["ip", "link", "set", "va", "up"]).unwrap();
        b.run_ok(&["ip", "link", "set", "vb", "up"]).unwrap();
        Lab { a, b }
    }

    /// Runs a probe (or anything) from A.
    fn on_a<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        self.a.enter(f).expect("enter A")
    }

    fn set_b_arp_ignore(&self, value: &str) {
        self.b
            .enter({
                let value = value.to_owned();
                move || {
                    ProcSysctl::new()
                        .write(&SysctlKey::ipv4_conf("vb", "arp_ignore").unwrap(), &value)
                        .unwrap()
                }
            })
            .unwrap();
    }
}

#[test]
#[ignore = "needs root and network namespaces; `make test` runs it"]
fn scratch_netns_enters_only_a_worker_thread_and_cleans_up() {
    if !require_root("scratch_netns_enters_only_a_worker_thread_and_cleans_up") {
        return;
    }
    let ns_of_thread = || std::fs::read_link("/proc/thread-self/ns/net").unwrap();
    let before = ns_of_thread();
    let ns = ScratchNetns::new("guard").unwrap();
    let name = ns.name().to_owned();
    assert!(
        name.starts_with(&format!("da-guard-{}-", std::process::id())),
        "{name}"
    );
    let inside = ns.enter(ns_of_thread).unwrap();
    assert_ne!(
        inside, before,
        "the worker thread is in the scratch namespace"
    );
    assert_eq!(ns_of_thread(), before, "the calling thread never moves");
    assert_eq!(
        std::fs::read_link(format!("/proc/{}/ns/net", std::process::id())).unwrap(),
        before
    );
    // lo is up in a fresh scratch namespace.
    let lo = ns.run_ok(&["ip", "-o", "link", "show", "lo"]).unwrap();
    assert!(lo.contains("LOWER_UP"), "{lo}");
    // A process left inside is killed when the guard drops, and the namespace is deleted.
    let mut sleeper = std::process::Command::new("ip")
        .args(["netns", "exec", &name, "sleep", "30"])
        .spawn()
        .unwrap();
    let mut listed = false;
    for _ in 0..SETTLE_ATTEMPTS {
        let pids = std::process::Command::new("ip")
            .args(["netns", "pids", &name])
            .output()
            .unwrap();
        if !pids.stdout.is_empty() {
            listed = true;
            break;
        }
        std::thread::sleep(SETTLE_PAUSE);
    }
    assert!(listed, "sleep never showed up in {name}");
    drop(ns);
    let status = sleeper.wait().unwrap();
    assert!(
        !status.success(),
        "sleep was killed, not finished: {status:?}"
    );
    assert!(!std::path::Path::new(&format!("/run/netns/{name}")).exists());
}

#[test]
#[ignore = "needs root and network namespaces; `make test` runs it"]
fn link_state_and_up_down_round_trip() {
    if !require_root("link_state_and_up_down_round_trip") {
        return;
    }
    let ns = ns_with_veth("links");
    let (initial, one_side_up, both_up, down_again) = with_links(&ns, |links| async move {
        let initial = links.link_state("t0").await.unwrap();
        links.set_link_up("t0", true).await.unwrap();
        // veth has no carrier while its peer is down, so t0 is admin-up but not running.
        let one_side_up = links.link_state("t0").await.unwrap();
        links.set_link_up("t1", true).await.unwrap();
        // The operstate is updated by the kernel's linkwatch work, after the netlink ack.
        let mut both_up = links.link_state("t0").await.unwrap();
        for _ in 0..SETTLE_ATTEMPTS {
            if both_up.oper_up {
                break;
            }
            tokio::time::sleep(SETTLE_PAUSE).await;
            both_up = links.link_state("t0").await.unwrap();
        }
        links.set_link_up("t0", false).await.unwrap();
        let down_again = links.link_state("t0").await.unwrap();
        (initial, one_side_up, both_up, down_again)
    });
    assert!(!initial.up && !initial.oper_up, "{initial:?}");
    assert!(one_side_up.up && !one_side_up.oper_up, "{one_side_up:?}");
    assert!(both_up.up && both_up.oper_up, "{both_up:?}");
    assert!(!down_again.up && !down_again.oper_up, "{down_again:?}");
    assert_eq!(initial.index, down_again.index);
    // Cross-check with iproute2: t0 is down, t1 still up.
    let t0 = ns.run_ok(&["ip", "-o", "link", "show", "t0"]).unwrap();
    assert!(!t0.contains("<BROADCAST,MULTICAST,UP"), "{t0}");
    let t1 = ns.run_ok(&["ip", "-o", "link", "show", "t1"]).unwrap();
    assert!(t1.contains(",UP"), "{t1}");
    assert!(t0.starts_with(&format!("{}: t0@t1", initial.index)), "{t0}");
}

#[test]
#[ignore = "needs root and network namespaces; `make test` runs it"]
fn missing_interface_is_a_distinct_error_naming_it() {
    if !require_root("missing_interface_is_a_distinct_error_naming_it") {
        return;
    }
    let ns = ScratchNetns::new("nolink").unwrap();
    let (state, set, addr) = with_links(&ns, |links| async move {
        (
            links.link_state("nope0").await,
            links.set_link_up("nope0", false).await,
            links.has_address(Some("nope0"), VIP).await,
        )
    });
    for err in [state.err(), set.err(), addr.err()] {
        match err {
            Some(e @ LinksError::NoSuchInterface { .. }) => {
                assert!(e.to_string().contains("nope0"), "{e}")
            }
            other => panic!("expected NoSuchInterface, got {other:?}"),
        }
    }
}

#[test]
#[ignore = "needs root and network namespaces; `make test` runs it"]
fn has_address_reports_the_link_and_ignores_ptp_peers() {
    if !require_root("has_address_reports_the_link_and_ignores_ptp_peers") {
        return;
    }
    let ns = ns_with_veth("addr");
    ns.run_ok(&["ip", "addr", "add", "198.18.6.1/24", "dev", "t0"])
        .unwrap();
    ns.run_ok(&[
        "ip",
        "addr",
        "add",
        "198.18.6.5",
        "peer",
        "198.18.6.6",
        "dev",
        "t1",
    ])
    .unwrap();
    let r = with_links(&ns, |links| async move {
        let t0 = links.link_state("t0").await.unwrap();
        let t1 = links.link_state("t1").await.unwrap();
        let a = Ipv4Addr::new(198, 18, 6, 1);
        (
            t0,
            t1,
            links.has_address(None, a).await.unwrap(),
            links.has_address(Some("t0"), a).await.unwrap(),
            links.has_address(Some("t1"), a).await.unwrap(),
            links
                .has_address(None, Ipv4Addr::new(198, 18, 6, 9))
                .await
                .unwrap(),
            links
                .has_address(None, Ipv4Addr::new(198, 18, 6, 5))
                .await
                .unwrap(),
            links
                .has_address(None, Ipv4Addr::new(198, 18, 6, 6))
                .await
                .unwrap(),
        )
    });
    let (t0, t1, any, on_t0, on_t1, absent, ptp_local, ptp_peer) = r;
    let any = any.expect("198.18.6.1 is configured");
    assert_eq!(
        (any.ifname.as_str(), any.index, any.prefix_len),
        ("t0", t0.index, 24)
    );
    assert_eq!(on_t0, Some(any));
    assert_eq!(on_t1, None);
    assert_eq!(absent, None);
    let ptp_local = ptp_local.expect("198.18.6.5 is local on t1");
    assert_eq!(
        (ptp_local.ifname.as_str(), ptp_local.index),
        ("t1", t1.index)
    );
    assert_eq!(
        ptp_peer, None,
        "the peer address of a ptp link is not local"
    );
}

#[test]
#[ignore = "needs root and network namespaces; `make test` runs it"]
fn local_route_add_del_is_idempotent_and_leaves_foreign_routes_alone() {
    if !require_root("local_route_add_del_is_idempotent_and_leaves_foreign_routes_alone") {
        return;
    }
    let ns = ns_with_veth("route");
    let vip = Ipv4Addr::new(198, 18, 7, 100);
    let foreign = Ipv4Addr::new(198, 18, 7, 101);
    // iproute2 puts `local` routes into table local unless told otherwise: name main.
    ns.run_ok(&[
        "ip",
        "route",
        "add",
        "local",
        "198.18.7.101/32",
        "dev",
        "lo",
        "proto",
        "static",
        "table",
        "main",
    ])
    .unwrap();
    let added = with_links(&ns, move |links| async move {
        links.add_local_route(vip).await.unwrap();
        links.add_local_route(vip).await.unwrap();
        (
            links.local_route_exists(vip).await.unwrap(),
            links.our_local_routes().await.unwrap(),
        )
    });
    assert_eq!(added, (true, vec![vip]));
    let shown = ns
        .run_ok(&[
            "ip",
            "route",
            "show",
            "table",
            "main",
            "proto",
            &ROUTE_PROTO.to_string(),
        ])
        .unwrap();
    assert_eq!(shown.trim(), "local 198.18.7.100 dev lo scope host");
    let get = ns.run_ok(&["ip", "route", "get", "198.18.7.100"]).unwrap();
    assert!(get.starts_with("local 198.18.7.100 dev lo"), "{get}");

    let (foreign_add, foreign_del) = with_links(&ns, move |links| async move {
        (
            links.add_local_route(foreign).await,
            links.del_local_route(foreign).await,
        )
    });
    match foreign_add {
        Err(e @ LinksError::ForeignRoute { protocol: 4, .. }) => {
            assert!(e.to_string().contains("198.18.7.101"), "{e}")
        }
        other => panic!("expected ForeignRoute with protocol 4 (static), got {other:?}"),
    }
    foreign_del.expect("deleting an absent route of ours is Ok");
    let still = ns
        .run_ok(&["ip", "route", "show", "table", "main", "198.18.7.101"])
        .unwrap();
    assert!(
        still.contains("local 198.18.7.101 dev lo proto static"),
        "{still}"
    );

    // A route to the same /32 in table local (where `ip route add local` puts it by default)
    // is a different key: ours is added next to it, and deleting ours leaves it.
    let in_local_table = Ipv4Addr::new(198, 18, 7, 102);
    ns.run_ok(&[
        "ip",
        "route",
        "add",
        "local",
        "198.18.7.102/32",
        "dev",
        "lo",
    ])
    .unwrap();
    let coexist = with_links(&ns, move |links| async move {
        links.add_local_route(in_local_table).await.unwrap();
        let exists = links.local_route_exists(in_local_table).await.unwrap();
        links.del_local_route(in_local_table).await.unwrap();
        exists
    });
    assert!(coexist);
    let kept = ns
        .run_ok(&["ip", "route", "show", "table", "local", "198.18.7.102"])
        .unwrap();
    assert!(kept.contains("local 198.18.7.102 dev lo"), "{kept}");

    // keepalived putting the VIP on an interface (its MASTER state) coexists with our route:
    // the kernel's route for an address lives in table local, ours in table main.
    ns.run_ok(&["ip", "addr", "add", "198.18.7.100/32", "dev", "t0"])
        .unwrap();
    let removed = with_links(&ns, move |links| async move {
        links.add_local_route(vip).await.unwrap();
        links.del_local_route(vip).await.unwrap();
        links.del_local_route(vip).await.unwrap();
        (
            links.local_route_exists(vip).await.unwrap(),
            links.our_local_routes().await.unwrap(),
            links
                .has_address(None, vip)
                .await
                .unwrap()
                .map(|o| o.ifname),
        )
    });
    assert_eq!(removed, (false, vec![], Some("t0".to_owned())));
    let shown = ns
        .run_ok(&[
            "ip",
            "route",
            "show",
            "table",
            "all",
            "proto",
            &ROUTE_PROTO.to_string(),
        ])
        .unwrap();
    assert_eq!(shown.trim(), "");
}

#[test]
#[ignore = "needs root and network namespaces; `make test` runs it"]
fn sysctl_writes_land_in_the_namespace_of_the_thread_only() {
    if !require_root("sysctl_writes_land_in_the_namespace_of_the_thread_only") {
        return;
    }
    // The same interface name in two namespaces, absent from the root namespace.
    let ifname = "dasys0";
    let key = SysctlKey::ipv4_conf(ifname, "arp_ignore").unwrap();
    assert!(
        matches!(
            ProcSysctl::new().read(&key),
            Err(SysctlError::NotFound { .. })
        ),
        "{ifname} must not exist in the root namespace for this test"
    );
    let root_all = SysctlKey::parse("net/ipv4/conf/all/arp_ignore").unwrap();
    let root_all_before = ProcSysctl::new().read(&root_all).unwrap();

    let n1 = ScratchNetns::new("sysctl1").unwrap();
    let n2 = ScratchNetns::new("sysctl2").unwrap();
    for ns in [&n1, &n2] {
        ns.run_ok(&[
            "ip", "link", "add", ifname, "type", "veth", "peer", "name", "dasys1",
        ])
        .unwrap();
        ns.run_ok(&["sysctl", "-qw", "net.ipv4.conf.dasys0.arp_ignore=0"])
            .unwrap();
    }

    let k = key.clone();
    let (old, now) = n1
        .enter(move || {
            let sys = ProcSysctl::new();
            (sys.swap(&k, "1").unwrap(), sys.read(&k).unwrap())
        })
        .unwrap();
    assert_eq!((old.as_str(), now.as_str()), ("0", "1"));
    let k = key.clone();
    let other = n2
        .enter(move || ProcSysctl::new().read(&k).unwrap())
        .unwrap();
    assert_eq!(other, "0", "the write must not reach another namespace");
    // An independent reader (a new process in n1) sees the write.
    let seen = n1
        .run_ok(&["sysctl", "-n", "net.ipv4.conf.dasys0.arp_ignore"])
        .unwrap();
    assert_eq!(seen.trim(), "1");
    // And the root namespace neither has the key nor changed anything else.
    assert!(matches!(
        ProcSysctl::new().read(&key),
        Err(SysctlError::NotFound { .. })
    ));
    assert_eq!(ProcSysctl::new().read(&root_all).unwrap(), root_all_before);

    // /proc/sys follows the calling thread; /proc/thread-self/net does too, but /proc/self/net
    // follows the thread-group leader, which stays in the root namespace.
    let views = n1
        .enter(|| {
            let read = |p: &str| std::fs::read_to_string(p).unwrap();
            (
                read("/proc/thread-self/net/dev").contains("dasys0"),
                read("/proc/self/net/dev").contains("dasys0"),
                std::path::Path::new("/proc/sys/net/ipv4/conf/dasys0").exists(),
            )
        })
        .unwrap();
    assert_eq!(views, (true, false, true));
}

#[test]
#[ignore = "needs root and network namespaces; `make test` runs it"]
fn arp_resolve_finds_the_peer_mac() {
    if !require_root("arp_resolve_finds_the_peer_mac") {
        return;
    }
    let lab = Lab::new("arp");
    let (one, all) = lab.on_a(|| {
        (
            arp_resolve("va", A_IP, B_IP, Duration::from_secs(2)).unwrap(),
            arp_resolve_all("va", A_IP, B_IP, Duration::from_millis(500)).unwrap(),
        )
    });
    assert_eq!(one, Some(B_MAC));
    assert_eq!(all, vec![B_MAC]);
    // Nobody has 198.18.5.77.
    let none = lab.on_a(|| {
        arp_resolve(
            "va",
            A_IP,
            Ipv4Addr::new(198, 18, 5, 77),
            Duration::from_millis(300),
        )
        .unwrap()
    });
    assert_eq!(none, None);
}

#[test]
#[ignore = "needs root and network namespaces; `make test` runs it"]
fn arp_for_the_vip_needs_arp_ignore_on_a_backup_peer() {
    if !require_root("arp_for_the_vip_needs_arp_ignore_on_a_backup_peer") {
        return;
    }
    let lab = Lab::new("arpvip");
    let ask = |lab: &Lab| {
        lab.on_a(|| arp_resolve_all("va", A_IP, VIP, Duration::from_millis(500)).unwrap())
    };
    assert_eq!(ask(&lab), Vec::<MacAddr>::new(), "nobody has the VIP yet");

    with_links(&lab.b, |links| async move {
        links.add_local_route(VIP).await.unwrap()
    });
    // docs/kernel-facts.md#k5, measured: with arp_ignore=0 the local route alone makes the BACKUP
    // peer answer ARP for the VIP — it would pull clients (and their established flows) to it.
    assert_eq!(ask(&lab), vec![B_MAC]);

    lab.set_b_arp_ignore("1");
    assert_eq!(
        ask(&lab),
        Vec::<MacAddr>::new(),
        "arp_ignore=1 + local route: silent"
    );

    // Becoming MASTER puts the VIP on the interface: then it answers despite arp_ignore=1.
    lab.b
        .run_ok(&["ip", "addr", "add", "198.18.5.100/32", "dev", "vb"])
        .unwrap();
    assert_eq!(ask(&lab), vec![B_MAC]);
}

#[test]
#[ignore = "needs root and network namespaces; `make test` runs it"]
fn syn_probe_tells_accepted_refused_and_no_answer() {
    if !require_root("syn_probe_tells_accepted_refused_and_no_answer") {
        return;
    }
    let lab = Lab::new("syn");
    lab.set_b_arp_ignore("1");
    with_links(&lab.b, |links| async move {
        links.add_local_route(VIP).await.unwrap()
    });
    // With only the main-table local route, binding the VIP works without ip_nonlocal_bind.
    let listener: TcpListener = lab
        .b
        .enter(|| TcpListener::bind((VIP, 80)).expect("bind VIP:80 in B"))
        .unwrap();
    listener.set_nonblocking(true).unwrap();

    let probe = |port: u16, timeout: Duration| {
        lab.on_a(move || syn_probe("va", A_IP, B_MAC, VIP, port, timeout).unwrap())
    };
    let accepted = probe(80, Duration::from_secs(2));
    let ProbeResult::Accepted { rtt } = accepted else {
        panic!("expected Accepted, got {accepted:?}");
    };
    eprintln!("syn_probe over veth: rtt = {rtt:?}");
    // Our RST removed the peer's request socket: no SYN-RECV left, nothing to accept.
    let mut syn_recv = String::from("unchecked");
    for _ in 0..SETTLE_ATTEMPTS {
        syn_recv = lab.b.run_ok(&["ss", "-Htn", "state", "syn-recv"]).unwrap();
        if syn_recv.trim().is_empty() {
            break;
        }
        std::thread::sleep(SETTLE_PAUSE);
    }
    assert_eq!(syn_recv.trim(), "", "request socket left in B");
    assert_eq!(
        listener.accept().map(|_| ()).unwrap_err().kind(),
        std::io::ErrorKind::WouldBlock
    );

    assert_eq!(probe(81, Duration::from_secs(2)), ProbeResult::Refused);

    with_links(&lab.b, |links| async move {
        links.del_local_route(VIP).await.unwrap()
    });
    // Without the route B's kernel neither delivers nor (forwarding off) answers anything.
    assert_eq!(probe(80, Duration::from_millis(500)), ProbeResult::NoAnswer);
    drop(listener);
}

#[test]
#[ignore = "needs root and network namespaces; `make test` runs it"]
fn probe_failures_are_errors_not_answers() {
    if !require_root("probe_failures_are_errors_not_answers") {
        return;
    }
    let lab = Lab::new("perr");
    let t = Duration::from_millis(200);
    let (missing_arp, missing_syn, lo) = lab.on_a(move || {
        (
            arp_resolve("nope0", A_IP, B_IP, t),
            syn_probe("nope0", A_IP, B_MAC, VIP, 80, t),
            arp_resolve("lo", A_IP, B_IP, t),
        )
    });
    assert!(
        matches!(&missing_arp, Err(ProbeError::NoSuchInterface { ifname }) if ifname == "nope0"),
        "{missing_arp:?}"
    );
    assert!(
        matches!(&missing_syn, Err(ProbeError::NoSuchInterface { .. })),
        "{missing_syn:?}"
    );
    assert!(matches!(&lo, Err(ProbeError::NotEthernet { .. })), "{lo:?}");
    lab.a.run_ok(&["ip", "link", "set", "va", "down"]).unwrap();
    let (down_arp, down_syn) = lab.on_a(move || {
        (
            arp_resolve("va", A_IP, B_IP, t),
            syn_probe("va", A_IP, B_MAC, VIP, 80, t),
        )
    });
    assert!(
        matches!(&down_arp, Err(ProbeError::InterfaceDown { .. })),
        "{down_arp:?}"
    );
    assert!(
        matches!(&down_syn, Err(ProbeError::InterfaceDown { .. })),
        "{down_syn:?}"
    );
}
