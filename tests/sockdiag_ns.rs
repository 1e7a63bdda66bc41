//! Kernel tests of the sock_diag counter, each in a fresh network namespace (needs root).
//!
//! Every namespace gets `lo` up and its test addresses as /32s on `lo`: 198.18.7.1 is the
//! "VIP", 198.18.7.2 another local service address, 198.18.7.10/11 clients. Both ends of every
//! connection live in the test process.

use drain_test_support::sockets;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddrV4, TcpListener, TcpStream};
use std::thread::sleep;
use std::time::{Duration, Instant};

use drain_agent::sys::sockdiag::{
    Counts, DestroyWatcher, NetlinkSockDiag, SocketCounter, SocketFilter, TcpState,
};
use drain_test_support::netns::{require_root, ScratchNetns};
use sockets::{add_lo_addr, connect_from, listen};

const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 7, 1);
const OTHER: Ipv4Addr = Ipv4Addr::new(198, 18, 7, 2);
const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 7, 10);
const CLIENT_B: Ipv4Addr = Ipv4Addr::new(198, 18, 7, 11);

fn ep(ip: Ipv4Addr, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(ip, port)
}

fn filter(addrs: &[Ipv4Addr], ports: &[u16]) -> SocketFilter {
    SocketFilter::new(addrs.to_vec(), ports.to_vec())
}

fn states(pairs: &[(TcpState, usize)]) -> BTreeMap<TcpState, usize> {
    pairs.iter().copied().collect()
}

/// `n` connections from `client` to `l`: (client end, server end).
fn open(l: &TcpListener, client: Ipv4Addr, n: usize) -> Vec<(TcpStream, TcpStream)> {
    let dst = match l.local_addr().unwrap() {
        std::net::SocketAddr::V4(a) => a,
        other => panic!("{other} is not an IPv4 listener"),
    };
    open_to(l, dst, client, n)
}

/// `n` connections from `client` to `dst`, accepted on `l`.
fn open_to(
    l: &TcpListener,
    dst: SocketAddrV4,
    client: Ipv4Addr,
    n: usize,
) -> Vec<(TcpStream, TcpStream)> {
    (0..n)
        .map(|_| {
            let c = connect_from(ep(client, 0), dst).expect("connect");
            let (s, _) = l.accept().expect("accept");
            (c, s)
        })
        .collect()
}

fn local_port(s: &TcpStream) -> u16 {
    s.local_addr().unwrap().port()
}

/// Counts until `done` holds, for at most ~5 s: state changes after a close or shutdown land
/// asynchronously (softirq, delayed ACKs). Returns the last counts either way; the caller
/// asserts on them.
fn count_until(
    d: &mut NetlinkSockDiag,
    f: &SocketFilter,
    idle_after: Option<Duration>,
    done: impl Fn(&Counts) -> bool,
) -> Counts {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let c = d.count(f, idle_after).expect("count");
        if done(&c) || Instant::now() > deadline {
            return c;
        }
        sleep(Duration::from_millis(20));
    }
}

fn iptables(ns: &ScratchNetns, rule: &[&str]) {
    let mut argv = vec!["iptables", "-w"];
    argv.extend_from_slice(rule);
    ns.run_ok(&argv).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
#[ignore = "needs root and network namespaces; `make test` runs it"]
fn counts_only_the_filtered_served_sockets_through_their_lifecycle() {
    if !require_root("counts_only_the_filtered_served_sockets_through_their_lifecycle") {
        return;
    }
    let ns = ScratchNetns::new("sdlife").unwrap();
    for a in [VIP, OTHER, CLIENT] {
        add_lo_addr(&ns, a);
    }
    ns.enter(|| {
        let l80 = listen(ep(VIP, 80), 64).unwrap();
        let l81 = listen(ep(VIP, 81), 64).unwrap();
        let lo80 = listen(ep(OTHER, 80), 64).unwrap();
        let mut c80: Vec<Option<(TcpStream, TcpStream)>> =
            open(&l80, CLIENT, 5).into_iter().map(Some).collect();
        let mut c81 = open(&l81, CLIENT, 5);
        let _co = open(&lo80, CLIENT, 5);

        let vip80 = filter(&[VIP], &[80]);
        let cases = [
            (vip80.clone(), 5),
            (filter(&[VIP], &[80, 81]), 10),
            (filter(&[VIP, OTHER], &[80]), 10),
            (filter(&[], &[81]), 5),
            (filter(&[OTHER], &[]), 5),
            // Wildcard: the 15 server ends and the 15 client ends; never the listeners.
            (SocketFilter::default(), 30),
            (filter(&[CLIENT], &[80]), 0),
        ];
        for kernel_filter in [true, false] {
            let mut d = NetlinkSockDiag::new().unwrap();
            d.set_kernel_filter(kernel_filter);
            for idle_after in [None, Some(Duration::from_secs(3600))] {
                for (f, want) in &cases {
                    let c = d.count(f, idle_after).unwrap();
                    let ctx = format!("{f:?} kernel_filter={kernel_filter} idle={idle_after:?}");
                    assert_eq!(c.total, *want, "{ctx}");
                    assert_eq!(c.idle, 0, "{ctx}");
                    let by_state = if *want == 0 {
                        BTreeMap::new()
                    } else {
                        states(&[(TcpState::Established, *want)])
                    };
                    assert_eq!(c.by_state, by_state, "{ctx}");
                }
            }
        }

        let mut d = NetlinkSockDiag::new().unwrap();
        let samples = d.sample(&vip80).unwrap();
        let mut got: Vec<u16> = samples.iter().map(|s| s.remote.port()).collect();
        got.sort_unstable();
        let mut want: Vec<u16> = c80.iter().flatten().map(|(c, _)| local_port(c)).collect();
        want.sort_unstable();
        assert_eq!(got, want);
        for s in &samples {
            assert_eq!(s.local, ep(VIP, 80));
            assert_eq!(*s.remote.ip(), CLIENT);
            assert_eq!(s.state, TcpState::Established);
            assert!(
                s.idle_ms.is_some(),
                "established sockets have tcp_info: {s:?}"
            );
        }

        // Half-closed connections are still served. Client half-close: we are in CLOSE_WAIT.
        // Our half-close, acknowledged: FIN_WAIT2.
        let (client0, _) = c80[0].as_ref().unwrap();
        client0.shutdown(Shutdown::Write).unwrap();
        let (_, server1) = c80[1].as_ref().unwrap();
        server1.shutdown(Shutdown::Write).unwrap();
        let c = count_until(&mut d, &vip80, None, |c| {
            c.by_state.get(&TcpState::CloseWait) == Some(&1)
                && c.by_state.get(&TcpState::FinWait2) == Some(&1)
        });
        assert_eq!(c.total, 5);
        assert_eq!(
            c.by_state,
            states(&[
                (TcpState::Established, 3),
                (TcpState::FinWait2, 1),
                (TcpState::CloseWait, 1),
            ])
        );

        // Closed connections disappear: client first (we pass through LAST_ACK and are
        // gone), and server first (we end in TIME_WAIT, which is not counted).
        let (client2, server2) = c80[2].take().unwrap();
        drop(client2);
        drop(server2);
        let (client3, server3) = c80[3].take().unwrap();
        drop(server3);
        drop(client3);
        let c = count_until(&mut d, &vip80, None, |c| c.total == 3);
        assert_eq!(
            c.by_state,
            states(&[
                (TcpState::Established, 1),
                (TcpState::FinWait2, 1),
                (TcpState::CloseWait, 1),
            ])
        );
        assert_eq!(c.total, 3);
        assert_eq!(d.count(&filter(&[VIP], &[81]), None).unwrap().total, 5);

        c81.clear();
        let c = count_until(&mut d, &filter(&[VIP], &[81]), None, |c| c.total == 0);
        assert_eq!(c.total, 0);
        assert_eq!(c.by_state, BTreeMap::new());
    })
    .unwrap();
}

#[test]
#[ignore = "needs root and network namespaces; `make test` runs it"]
fn idle_means_no_data_and_no_acks_from_the_client() {
    if !require_root("idle_means_no_data_and_no_acks_from_the_client") {
        return;
    }
    let ns = ScratchNetns::new("sdidle").unwrap();
    for a in [VIP, CLIENT] {
        add_lo_addr(&ns, a);
    }
    let l = ns.enter(|| listen(ep(VIP, 80), 16).unwrap()).unwrap();
    let mut conns = ns.enter(|| open(&l, CLIENT, 4)).unwrap();
    let [silent, download, zombie, upload] = [0, 1, 2, 3].map(|i| local_port(&conns[i].0));
    // The zombie's client vanished: nothing it sends arrives any more (no ACKs).
    iptables(
        &ns,
        &[
            "-A",
            "OUTPUT",
            "-p",
            "tcp",
            "-s",
            &CLIENT.to_string(),
            "--sport",
            &zombie.to_string(),
            "-j",
            "DROP",
        ],
    );
    sleep(Duration::from_millis(1500));
    // Download: we send, the client ACKs. Zombie: we send, no ACK comes back. Upload: the
    // client sends. Silent: nothing either way.
    conns[1].1.write_all(b"d").unwrap();
    conns[2].1.write_all(b"z").unwrap();
    conns[3].0.write_all(b"u").unwrap();
    // Room for the client's delayed ACK (at most ~200 ms).
    sleep(Duration::from_millis(300));
    let mut buf = [0u8; 1];
    conns[1].0.read_exact(&mut buf).unwrap();
    conns[3].1.read_exact(&mut buf).unwrap();

    ns.enter(|| {
        let mut d = NetlinkSockDiag::new().unwrap();
        let vip80 = filter(&[VIP], &[80]);
        let c = d.count(&vip80, Some(Duration::from_secs(1))).unwrap();
        assert_eq!((c.total, c.idle, c.active()), (4, 2, 2), "{c:?}");
        // Without a threshold nothing is classified (and no tcp_info is asked for).
        let c = d.count(&vip80, None).unwrap();
        assert_eq!((c.total, c.idle), (4, 0));

        let samples = d.sample(&vip80).unwrap();
        let idle_of = |port: u16| {
            samples
                .iter()
                .find(|s| s.remote.port() == port)
                .and_then(|s| s.idle_ms)
                .unwrap_or_else(|| panic!("no idle time for client port {port}: {samples:?}"))
        };
        assert!(idle_of(silent) > 1000, "silent: {samples:?}");
        assert!(idle_of(zombie) > 1000, "zombie: {samples:?}");
        assert!(idle_of(download) < 1000, "download: {samples:?}");
        assert!(idle_of(upload) < 1000, "upload: {samples:?}");
    })
    .unwrap();
    conns.clear();
}

#[test]
#[ignore = "needs root and network namespaces; `make test` runs it"]
fn request_sockets_in_syn_recv_are_counted() {
    if !require_root("request_sockets_in_syn_recv_are_counted") {
        return;
    }
    let ns = ScratchNetns::new("sdsyn").unwrap();
    for a in [VIP, CLIENT_B] {
        add_lo_addr(&ns, a);
    }
    // The client's handshake ACK (ACK without SYN or RST) never reaches us, so our side stays
    // a request socket in SYN_RECV while the client believes it is connected.
    let drop_ack = [
        "OUTPUT",
        "-p",
        "tcp",
        "-s",
        "198.18.7.11",
        "-d",
        "198.18.7.1",
        "--dport",
        "80",
        "--tcp-flags",
        "SYN,ACK,RST",
        "ACK",
        "-j",
        "DROP",
    ];
    iptables(&ns, &[&["-A"], &drop_ack[..]].concat());
    let l = ns.enter(|| listen(ep(VIP, 80), 16).unwrap()).unwrap();
    let mut client = ns
        .enter(|| connect_from(ep(CLIENT_B, 0), ep(VIP, 80)).unwrap())
        .unwrap();

    ns.enter(|| {
        let mut d = NetlinkSockDiag::new().unwrap();
        let vip80 = filter(&[VIP], &[80]);
        for kernel_filter in [true, false] {
            d.set_kernel_filter(kernel_filter);
            let c = d.count(&vip80, Some(Duration::ZERO)).unwrap();
            assert_eq!(c.total, 1, "kernel_filter={kernel_filter}: {c:?}");
            assert_eq!(c.by_state, states(&[(TcpState::SynRecv, 1)]));
            assert_eq!(
                c.idle, 0,
                "request socks have no tcp_info, so are never idle"
            );
        }
        let s = d.sample(&vip80).unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!((s[0].state, s[0].idle_ms), (TcpState::SynRecv, None));
        assert_eq!(*s[0].remote.ip(), CLIENT_B);
    })
    .unwrap();

    // Let the ACK through; the client's next segment completes the handshake.
    iptables(&ns, &[&["-D"], &drop_ack[..]].concat());
    client.write_all(b"x").unwrap();
    ns.enter(|| {
        let mut d = NetlinkSockDiag::new().unwrap();
        let c = count_until(&mut d, &filter(&[VIP], &[80]), None, |c| {
            c.by_state.get(&TcpState::Established) == Some(&1)
        });
        assert_eq!(c.by_state, states(&[(TcpState::Established, 1)]));
    })
    .unwrap();
    let (_server, _) = l.accept().unwrap();
}

#[test]
#[ignore = "needs root and network namespaces; `make test` runs it"]
fn destroy_watcher_wakes_on_a_closed_connection_but_not_on_a_dropped_request() {
    if !require_root("destroy_watcher_wakes_on_a_closed_connection_but_not_on_a_dropped_request") {
        return;
    }
    let ns = ScratchNetns::new("sddestroy").unwrap();
    for a in [VIP, CLIENT, CLIENT_B] {
        add_lo_addr(&ns, a);
    }
    ns.enter(|| {
        let l80 = listen(ep(VIP, 80), 16).unwrap();
        let _l81 = listen(ep(VIP, 81), 16).unwrap();
        let mut w80 = DestroyWatcher::new(filter(&[VIP], &[80])).unwrap();
        let mut w81 = DestroyWatcher::new(filter(&[VIP], &[81])).unwrap();
        let mut conns = open(&l80, CLIENT, 2);
        assert!(!w80.wait(Duration::ZERO).unwrap(), "nothing destroyed yet");

        let (c, s) = conns.pop().unwrap();
        drop(c);
        drop(s);
        assert!(
            w80.wait(Duration::from_secs(5)).unwrap(),
            "closing an established VIP:80 connection must produce a destroy event"
        );
        // The VIP:81 watcher saw the same events (both ends), none of them a match.
        assert!(!w81.wait(Duration::from_millis(200)).unwrap());

        // Server side first, client still open: once our FIN is acknowledged the kernel
        // replaces our full socket by a FIN_WAIT2 timewait-sock, which frees it.
        let (c, s) = conns.pop().unwrap();
        drop(s);
        assert!(
            w80.wait(Duration::from_secs(5)).unwrap(),
            "a VIP:80 connection we closed first must produce a destroy event"
        );
        let mut d = NetlinkSockDiag::new().unwrap();
        let s = d.sample(&filter(&[VIP], &[80])).unwrap();
        assert_eq!(
            s.len(),
            1,
            "still counted as FIN_WAIT2 after the event: {s:?}"
        );
        assert_eq!((s[0].state, s[0].idle_ms), (TcpState::FinWait2, None));
        drop(c);
    })
    .unwrap();

    // A request socket that goes away (the client resets it) is not a full socket; measured
    // on 6.18: no destroy event.
    let drop_ack = [
        "OUTPUT",
        "-p",
        "tcp",
        "-s",
        "198.18.7.11",
        "--tcp-flags",
        "SYN,ACK,RST",
        "ACK",
        "-j",
        "DROP",
    ];
    iptables(&ns, &[&["-A"], &drop_ack[..]].concat());
    ns.enter(|| {
        let l = listen(ep(VIP, 82), 16).unwrap();
        let mut w = DestroyWatcher::new(filter(&[VIP], &[82])).unwrap();
        let mut d = NetlinkSockDiag::new().unwrap();
        let f82 = filter(&[VIP], &[82]);
        let client = connect_from(ep(CLIENT_B, 0), ep(VIP, 82)).unwrap();
        let c = count_until(&mut d, &f82, None, |c| c.total == 1);
        assert_eq!(c.by_state, states(&[(TcpState::SynRecv, 1)]));
        // SO_LINGER 0: close() sends a RST, which the rule lets through.
        nix::sys::socket::setsockopt(
            &client,
            nix::sys::socket::sockopt::Linger,
            &libc::linger {
                l_onoff: 1,
                l_linger: 0,
            },
        )
        .unwrap();
        drop(client);
        let c = count_until(&mut d, &f82, None, |c| c.total == 0);
        assert_eq!(c.total, 0, "the RST removed the request socket");
        assert!(
            !w.wait(Duration::from_millis(500)).unwrap(),
            "a request socket going away produced a destroy event: the kernel changed, update \
             the DestroyWatcher docs"
        );
        drop(l);
    })
    .unwrap();
}

#[test]
#[ignore = "needs root and network namespaces; `make test` runs it"]
fn dual_stack_listener_sockets_are_counted_when_v4_mapped_is_on() {
    if !require_root("dual_stack_listener_sockets_are_counted_when_v4_mapped_is_on") {
        return;
    }
    let ns = ScratchNetns::new("sdmapped").unwrap();
    for a in [VIP, CLIENT] {
        add_lo_addr(&ns, a);
    }
    ns.enter(|| {
        // [::]:80 with IPV6_V6ONLY off (the default) also accepts IPv4: its connections are
        // AF_INET6 sockets with ::ffff:198.18.7.1 as local address.
        let l = TcpListener::bind("[::]:80").unwrap();
        let _conns = open_to(&l, ep(VIP, 80), CLIENT, 3);
        let mut d = NetlinkSockDiag::new().unwrap();
        let vip80 = filter(&[VIP], &[80]);
        for kernel_filter in [true, false] {
            d.set_kernel_filter(kernel_filter);
            d.set_include_v4_mapped(false);
            assert_eq!(d.count(&vip80, None).unwrap().total, 0);
            d.set_include_v4_mapped(true);
            let c = d.count(&vip80, Some(Duration::from_secs(60))).unwrap();
            assert_eq!(c.by_state, states(&[(TcpState::Established, 3)]));
            assert_eq!(c.total, 3, "kernel_filter={kernel_filter}");
            assert_eq!(d.count(&filter(&[OTHER], &[80]), None).unwrap().total, 0);
        }
        let s = d.sample(&vip80).unwrap();
        assert_eq!(s.len(), 3);
        assert!(s
            .iter()
            .all(|s| s.local == ep(VIP, 80) && *s.remote.ip() == CLIENT));
    })
    .unwrap();
}
