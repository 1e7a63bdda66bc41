//! The firewall adapter against the real iptables-nft, ipset and nft, each test in network
//! namespaces of its own (root only; skipped with a message otherwise, failed when CI=true).
//!
//! Checked here: the plan's texts are what iptables-save prints back, literally; install,
//! withdraw and remove leave `iptables-save`, `ipset list` and `nft list ruleset` exactly as they
//! were (with and without a mangle table beforehand); conflicts are refused with nothing changed;
//! and real TCP traffic through a client / draining node / peer topology is split the way the
//! plan's module docs promise.

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use drain_agent::config::Config;
use drain_agent::ops::divert::{self, DivertError};
use drain_agent::plan::{DivertPlan, Phase};
use drain_agent::sys::firewall::{Firewall, SystemFirewall};
use drain_test_support::netns::{require_root, ScratchNetns};

/// A scratch namespace for `purpose`; panics (with the cause) if it cannot be made.
fn netns(purpose: &str) -> ScratchNetns {
    ScratchNetns::new(purpose).unwrap_or_else(|e| panic!("{e}"))
}

/// `ARGV` inside `ns`; panics with the command, namespace and stderr unless it exits 0.
fn exec(ns: &ScratchNetns, argv: &[&str]) -> String {
    ns.run_ok(argv).unwrap_or_else(|e| panic!("{e}"))
}

/// `ip ARGS` inside `ns`; panics like [`exec`].
fn ip(ns: &ScratchNetns, args: &[&str]) -> String {
    exec(ns, &[&["ip"], args].concat())
}

/// Everything a reader of the firewall in `ns` could see: all iptables tables (without the
/// timestamp comments), all ipsets, the whole nftables ruleset.
fn firewall_state(ns: &ScratchNetns) -> String {
    let save: String = exec(ns, &["iptables-save"])
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect();
    format!(
        "{save}--- ipset\n{}--- nft\n{}",
        exec(ns, &["ipset", "list"]),
        exec(ns, &["nft", "list", "ruleset"])
    )
}

fn plan_for(peer: &str, ports: &str) -> DivertPlan {
    let text = format!(
        "vips:\n  - address: 198.18.0.100\n    ports: [{ports}]\n  - address: 198.18.0.101\n    ports: [443]\n\
         ingress_interface: eth0\npeer: {peer}\ntracked_interface: trk0\n"
    );
    DivertPlan::new(&Config::from_str(&text, "test").unwrap())
}

/// One namespace with an ingress veth (both ends inside it: the rules only name it).
fn lone_node() -> ScratchNetns {
    let ns = netns("fw");
    ip(
        &ns,
        &[
            "link", "add", "eth0", "type", "veth", "peer", "name", "eth1",
        ],
    );
    ns
}

fn round_trip(ns: &ScratchNetns) {
    let plan = plan_for("198.18.0.12", "80, 7");
    let before = firewall_state(ns);
    ns.enter(|| {
        let mut fw = SystemFirewall::new();
        let had_table = fw.mangle_table_present().unwrap();
        let receipt = divert::install(&mut fw, &plan).unwrap();
        assert_eq!(receipt.mangle_table_was_present, had_table);
        // Literal, ordered comparison: the plan's lines are iptables-save's canonical form and
        // its order of chains.
        let saved = fw.save_mangle().unwrap();
        assert_eq!(
            plan.owned_lines(&saved),
            plan.expected_rules(Phase::Installed)
        );
        let jumps = independent_view(&plan);
        assert!(
            jumps.iter().any(|j| j.contains("-i eth0")),
            "PREROUTING jumps into the divert for the ingress interface: {jumps:?}"
        );
        // The record grows: member 1 is appended to each port's list (forced here by
        // handing `ipset_grow` a member 0 that looks half full).
        let mut stats = plan.record_stats(&fw.ipset_list_terse().unwrap());
        assert_eq!(stats.members(), 3, "member 0 of each port: {stats:?}");
        for rec in &mut stats.ports {
            rec.members[0].entries = rec.members[0].maxelem;
        }
        fw.ipset_restore(&plan.ipset_grow(&stats, |_| 0).unwrap())
            .unwrap();
        assert_eq!(
            plan.record_stats(&fw.ipset_list_terse().unwrap()).members(),
            6
        );
        divert::seal(&mut fw, &plan).unwrap();
        let saved = fw.save_mangle().unwrap();
        assert_eq!(plan.owned_lines(&saved), plan.expected_rules(Phase::Sealed));
        divert::withdraw(&mut fw, &plan).unwrap();
        let saved = fw.save_mangle().unwrap();
        assert_eq!(
            plan.owned_lines(&saved),
            plan.expected_rules(Phase::Withdrawn)
        );
        divert::remove(&mut fw, &plan, !receipt.mangle_table_was_present).unwrap();
        assert_eq!(independent_view_after_removal(&plan), Vec::<String>::new());
    })
    .unwrap();
    assert_eq!(firewall_state(ns), before);
}

/// The divert as the `iptables` crate sees it (`iptables -S`, a reader other than the agent's
/// own `iptables-save` parser), from inside the namespace: each of the plan's chains exists and
/// has rules, and `PREROUTING` jumps into them. Returns those jumps.
fn independent_view(plan: &DivertPlan) -> Vec<String> {
    let ipt = iptables::new(false).unwrap();
    for chain in plan.chains() {
        assert!(
            ipt.chain_exists("mangle", &chain).unwrap(),
            "{chain} missing"
        );
    }
    let jumps: Vec<String> = ipt
        .list("mangle", "PREROUTING")
        .unwrap()
        .into_iter()
        .filter(|r| {
            plan.chains()
                .iter()
                .any(|c| r.ends_with(&format!("-j {c}")))
        })
        .collect();
    assert!(!jumps.is_empty(), "no jump from PREROUTING into the divert");
    jumps
}

/// What of the plan's chains the `iptables` crate still finds once the divert is removed (a
/// mangle table removed with it reads as none).
fn independent_view_after_removal(plan: &DivertPlan) -> Vec<String> {
    let ipt = iptables::new(false).unwrap();
    let Ok(chains) = ipt.list_chains("mangle") else {
        return Vec::new();
    };
    chains
        .into_iter()
        .filter(|c| plan.chains().contains(c))
        .collect()
}

#[test]
#[ignore = "needs root and network namespaces; `make test` runs it"]
fn round_trip_in_a_namespace_that_never_had_a_mangle_table() {
    if !require_root("round_trip_in_a_namespace_that_never_had_a_mangle_table") {
        return;
    }
    let ns = lone_node();
    assert!(!ns
        .enter(|| SystemFirewall::new().mangle_table_present().unwrap())
        .unwrap());
    round_trip(&ns);
    assert!(!exec(&ns, &["nft", "list", "tables"]).contains("mangle"));
}

#[test]
#[ignore = "needs root and network namespaces; `make test` runs it"]
fn round_trip_next_to_a_user_rule_in_an_existing_mangle_table() {
    if !require_root("round_trip_next_to_a_user_rule_in_an_existing_mangle_table") {
        return;
    }
    let ns = lone_node();
    exec(
        &ns,
        &[
            "iptables",
            "-t",
            "mangle",
            "-A",
            "PREROUTING",
            "-p",
            "udp",
            "--dport",
            "53",
            "-j",
            "MARK",
            "--set-mark",
            "5",
        ],
    );
    exec(&ns, &["ipset", "create", "user-set", "hash:ip"]);
    assert!(ns
        .enter(|| SystemFirewall::new().mangle_table_present().unwrap())
        .unwrap());
    round_trip(&ns);
    assert!(exec(&ns, &["iptables-save", "-t", "mangle"])
        .contains("-A PREROUTING -p udp -m udp --dport 53 -j MARK --set-xmark 0x5/0xffffffff"));
}

/// Entries put in the record's first set before each removal: enough that a full listing of it
/// spans several netlink messages, as the record of a busy node does.
const LISTED_ENTRIES: usize = 5000;

/// `ipset restore` lines adding `n` recorded flows to `set` (client, port, VIP).
fn record_lines(set: &str, n: usize) -> String {
    (0..n)
        .map(|k| {
            format!(
                "add {set} 198.19.{}.{},tcp:{},198.18.0.100\n",
                k / 250,
                k % 250 + 1,
                1024 + k
            )
        })
        .collect()
}

/// Runs `ipset list` (members and all) in `ns` over and over until `stop`, at most 60 s;
/// returns how many listings ran.
fn list_sets_until(ns: &ScratchNetns, stop: &AtomicBool) -> usize {
    let end = Instant::now() + Duration::from_secs(60);
    let mut listings = 0;
    while !stop.load(Ordering::SeqCst) && Instant::now() < end {
        ns.run(&["ipset", "list"]).unwrap();
        listings += 1;
    }
    listings
}

/// A full listing of a set (`ipset list`, `ipset save`) holds it until the listing is read to
/// the end, and a destroy meanwhile is refused "in use by a kernel component"
/// (docs/kernel-facts.md#k11). The divert's removal waits that out: with another process
/// listing the sets all the time, ten install/fill/remove rounds each leave nothing behind.
/// Without the wait a lab run's rollback ended in exit 12 with the sets left: the test was
/// polling `ipset list` on that node meanwhile.
#[test]
#[ignore = "needs root and network namespaces; `make test` runs it"]
fn the_divert_is_removed_while_another_process_lists_its_sets() {
    if !require_root("the_divert_is_removed_while_another_process_lists_its_sets") {
        return;
    }
    let ns = lone_node();
    let plan = plan_for("198.18.0.12", "80");
    let before = firewall_state(&ns);
    let stop = AtomicBool::new(false);
    let (listings, refused) = std::thread::scope(|s| {
        let lister = s.spawn(|| list_sets_until(&ns, &stop));
        let refused = ns
            .enter(|| {
                let mut fw = SystemFirewall::new();
                for round in 0..10 {
                    let receipt = divert::install(&mut fw, &plan).unwrap();
                    let stats = plan.record_stats(&fw.ipset_list_terse().unwrap());
                    let first = &stats.ports[0].members[0].name;
                    fw.ipset_restore(&record_lines(first, LISTED_ENTRIES))
                        .unwrap();
                    divert::remove(&mut fw, &plan, !receipt.mangle_table_was_present)
                        .unwrap_or_else(|e| panic!("round {round}: {e}"));
                }
                // The condition is real here: the same destroy without the wait is refused.
                let mut raw = SystemFirewall::new().with_set_busy_wait(Duration::ZERO);
                (0..50)
                    .filter(|_| {
                        let text = format!(
                            "create LISTED hash:ip,port,ip maxelem 65536\n{}",
                            record_lines("LISTED", LISTED_ENTRIES)
                        );
                        raw.ipset_restore(&text).unwrap();
                        match raw.ipset_restore("destroy LISTED\n") {
                            Ok(()) => false,
                            Err(e) => {
                                assert!(e.to_string().contains("in use"), "{e}");
                                fw.ipset_restore("flush LISTED\ndestroy LISTED\n").unwrap();
                                true
                            }
                        }
                    })
                    .count()
            })
            .unwrap();
        stop.store(true, Ordering::SeqCst);
        (lister.join().unwrap(), refused)
    });
    assert!(listings > 10, "the lister ran {listings} times");
    assert!(
        refused > 0,
        "no destroy of 50 was refused while the set was listed: the test shows nothing"
    );
    assert_eq!(firewall_state(&ns), before);
}

#[test]
#[ignore = "needs root and network namespaces; `make test` runs it"]
fn a_preexisting_set_name_is_refused_with_nothing_changed() {
    if !require_root("a_preexisting_set_name_is_refused_with_nothing_changed") {
        return;
    }
    let ns = lone_node();
    // The second of our sets, so a plain `ipset restore` would already have created the first.
    exec(&ns, &["ipset", "create", "DRAIN-7", "hash:ip"]);
    let before = firewall_state(&ns);
    let err = ns
        .enter(|| {
            divert::install(
                &mut SystemFirewall::new(),
                &plan_for("198.18.0.12", "80, 7"),
            )
        })
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(&err, DivertError::SetsExist { names } if names == &["DRAIN-7"]),
        "{err}"
    );
    assert_eq!(firewall_state(&ns), before);
}

#[test]
#[ignore = "needs root and network namespaces; `make test` runs it"]
fn a_preexisting_chain_is_refused_with_nothing_changed() {
    if !require_root("a_preexisting_chain_is_refused_with_nothing_changed") {
        return;
    }
    let ns = lone_node();
    exec(&ns, &["iptables", "-t", "mangle", "-N", "DRAIN-NEW"]);
    exec(
        &ns,
        &[
            "iptables",
            "-t",
            "mangle",
            "-A",
            "DRAIN-NEW",
            "-j",
            "ACCEPT",
        ],
    );
    let before = firewall_state(&ns);
    let err = ns
        .enter(|| {
            divert::install(
                &mut SystemFirewall::new(),
                &plan_for("198.18.0.12", "80, 7"),
            )
        })
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, DivertError::ChainsExist { .. }), "{err}");
    assert_eq!(firewall_state(&ns), before);
}

#[test]
#[ignore = "needs root and network namespaces; `make test` runs it"]
fn the_mangle_table_is_kept_when_something_else_landed_in_it() {
    if !require_root("the_mangle_table_is_kept_when_something_else_landed_in_it") {
        return;
    }
    let ns = lone_node();
    let plan = plan_for("198.18.0.12", "80");
    ns.enter(|| {
        let mut fw = SystemFirewall::new();
        let receipt = divert::install(&mut fw, &plan).unwrap();
        assert!(!receipt.mangle_table_was_present);
        // Someone else starts using the table during the drain.
        fw.restore("*mangle\n-A OUTPUT -p udp -j ACCEPT\nCOMMIT\n")
            .unwrap();
        divert::remove(&mut fw, &plan, true).unwrap();
        assert!(fw.mangle_table_present().unwrap());
        assert!(fw
            .save_mangle()
            .unwrap()
            .contains("-A OUTPUT -p udp -j ACCEPT"));
    })
    .unwrap();
}

#[test]
#[ignore = "needs root and network namespaces; `make test` runs it"]
fn iptables_restore_failure_names_the_binary_and_the_cause() {
    if !require_root("iptables_restore_failure_names_the_binary_and_the_cause") {
        return;
    }
    let ns = lone_node();
    let err = ns
        .enter(|| SystemFirewall::new().restore("*mangle\n-A NO-SUCH-CHAIN -j ACCEPT\nCOMMIT\n"))
        .unwrap()
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.starts_with("iptables-restore --noflush: exit code "),
        "{msg}"
    );
    assert!(!msg.contains('\n'), "{msg}");
}

// ---------------------------------------------------------------------------------------------
// Real traffic: client, lb (draining, owns the VIP) and peer on one bridge.

const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 100);
const PORT: u16 = 7;
const IO_TIMEOUT: Duration = Duration::from_secs(3);

struct Lab {
    client: ScratchNetns,
    lb: ScratchNetns,
    peer: ScratchNetns,
    _switch: ScratchNetns,
}

fn lab() -> Lab {
    let switch = netns("sw");
    ip(&switch, &["link", "add", "br0", "type", "bridge"]);
    ip(&switch, &["link", "set", "br0", "up"]);
    let node = |purpose: &str, addr: &str| {
        let ns = netns(purpose);
        let port = format!("s{purpose}");
        ip(
            &switch,
            &[
                "link",
                "add",
                &port,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                ns.name(),
            ],
        );
        ip(&switch, &["link", "set", &port, "master", "br0", "up"]);
        ip(&ns, &["addr", "add", addr, "dev", "eth0"]);
        ip(&ns, &["link", "set", "eth0", "up"]);
        ns
    };
    let client = node("cl", "198.18.0.1/24");
    let lb = node("lb", "198.18.0.11/24");
    let peer = node("pe", "198.18.0.12/24");
    // lb is MASTER: it holds the VIP. The peer is BACKUP: local route plus ARP silence, as
    // PeerPlan prescribes (namespace-local sysctls).
    ip(&lb, &["addr", "add", "198.18.0.100/32", "dev", "eth0"]);
    ip(
        &peer,
        &["route", "add", "local", "198.18.0.100/32", "dev", "lo"],
    );
    exec(&peer, &["sysctl", "-qw", "net.ipv4.conf.eth0.arp_ignore=1"]);
    exec(
        &peer,
        &["sysctl", "-qw", "net.ipv4.conf.eth0.arp_announce=2"],
    );
    Lab {
        client,
        lb,
        peer,
        _switch: switch,
    }
}

/// A server on VIP:7 that greets with its name, echoes lines, and on "bye" answers and closes
/// first (so the TIME_WAIT lands on the server and the client may reuse its port).
struct Server {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    fn start(ns: &ScratchNetns, name: &'static str) -> Server {
        let listener = ns
            .enter(|| TcpListener::bind(SocketAddrV4::new(VIP, PORT)).unwrap())
            .unwrap();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let give_up = Instant::now() + Duration::from_secs(60);
            while !flag.load(Ordering::Relaxed) && Instant::now() < give_up {
                match listener.accept() {
                    Ok((conn, _)) => {
                        std::thread::spawn(move || serve(conn, name));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Server {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(conn: TcpStream, name: &str) {
    conn.set_nonblocking(false).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut writer = conn.try_clone().unwrap();
    let _ = writeln!(writer, "{name}");
    let mut reader = BufReader::new(conn);
    for _ in 0..100 {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let _ = writer.write_all(line.as_bytes());
                if line.trim() == "bye" {
                    return; // dropping both halves closes: the server sends the first FIN
                }
            }
        }
    }
}

/// A client connection that checks every answer.
struct Conn {
    reader: BufReader<TcpStream>,
    greeting: String,
}

impl Conn {
    /// Connects from the client namespace, from `port` if given (0 = any).
    fn open(client: &ScratchNetns, port: u16) -> Conn {
        let stream = client.enter(|| connect_from(port)).unwrap();
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        let mut reader = BufReader::new(stream);
        let mut greeting = String::new();
        reader.read_line(&mut greeting).unwrap();
        Conn {
            reader,
            greeting: greeting.trim().to_string(),
        }
    }

    fn local_port(&self) -> u16 {
        self.reader.get_ref().local_addr().unwrap().port()
    }

    fn echo(&mut self, text: &str) {
        writeln!(self.reader.get_mut(), "{text}").unwrap();
        let mut line = String::new();
        self.reader.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), text, "echo from {}", self.greeting);
    }

    /// "bye", then the server's FIN must arrive as a clean end of stream (a RST would be an
    /// error here).
    fn close(mut self) {
        self.echo("bye");
        let mut rest = String::new();
        let n = self.reader.read_line(&mut rest).unwrap();
        assert_eq!(n, 0, "expected end of stream from {}", self.greeting);
        self.reader.get_ref().shutdown(Shutdown::Write).unwrap();
    }
}

fn connect_from(port: u16) -> TcpStream {
    use nix::sys::socket::{
        bind, connect, setsockopt, socket, sockopt, AddressFamily, SockFlag, SockType, SockaddrIn,
    };
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .unwrap();
    setsockopt(&fd, sockopt::ReuseAddr, &true).unwrap();
    let local = SockaddrIn::from(SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 1), port));
    bind(fd.as_raw_fd(), &local).unwrap();
    // A blocking connect: the SYN is retransmitted by the kernel, bounded by its own limits and
    // by the read timeout that follows.
    let remote = SockaddrIn::from(SocketAddrV4::new(VIP, PORT));
    connect(fd.as_raw_fd(), &remote).unwrap();
    // SAFETY: `fd` is a connected TCP socket we own; ownership moves into the TcpStream.
    unsafe { TcpStream::from_raw_fd(fd.into_raw_fd()) }
}

#[test]
#[ignore = "needs root and network namespaces; `make test` runs it"]
fn traffic_is_split_by_when_the_syn_arrived() {
    if !require_root("traffic_is_split_by_when_the_syn_arrived") {
        return;
    }
    let lab = lab();
    let _lb_server = Server::start(&lab.lb, "lb");
    let _peer_server = Server::start(&lab.peer, "peer");
    let plan = plan_for("198.18.0.12", "7");

    // A flow that exists before the divert.
    let mut old = Conn::open(&lab.client, 0);
    assert_eq!(old.greeting, "lb");
    old.echo("before");

    let receipt = lab
        .lb
        .enter(|| divert::install(&mut SystemFirewall::new(), &plan))
        .unwrap()
        .unwrap();

    // New flows go to the peer, every packet of them; the old flow stays, every packet of it.
    let mut diverted = Conn::open(&lab.client, 40001);
    assert_eq!(diverted.greeting, "peer");
    diverted.echo("diverted");
    old.echo("still local");
    let second = Conn::open(&lab.client, 0);
    assert_eq!(second.greeting, "peer");
    second.close();

    lab.lb
        .enter(|| divert::withdraw(&mut SystemFirewall::new(), &plan))
        .unwrap()
        .unwrap();

    // After the withdraw: new flows are local again, the diverted one keeps going to the peer.
    let mut fresh = Conn::open(&lab.client, 0);
    assert_eq!(fresh.greeting, "lb");
    diverted.echo("diverted after withdraw");
    fresh.echo("fresh");
    assert_eq!(diverted.local_port(), 40001);
    diverted.close();

    // The client reuses the port of the finished diverted flow: its new flow must be local,
    // although the record of the old one was still in the set.
    let mut reused = Conn::open(&lab.client, 40001);
    assert_eq!(reused.greeting, "lb");
    reused.echo("reused port");

    old.close();
    fresh.close();
    reused.close();

    lab.lb
        .enter(|| {
            divert::remove(
                &mut SystemFirewall::new(),
                &plan,
                !receipt.mangle_table_was_present,
            )
        })
        .unwrap()
        .unwrap();
    // Without the divert, everything is local.
    let after = Conn::open(&lab.client, 0);
    assert_eq!(after.greeting, "lb");
    after.close();
}
