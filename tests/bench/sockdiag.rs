//! Benchmark: counting the VIP's connections with [`NetlinkSockDiag`] against `ss` and
//! `netstat` subprocesses, at 10k and 100k established connections.
//!
//! Run as root: `cargo bench --bench sockdiag`. Everything happens in a throw-away network
//! namespace (`da-sdbench-<pid>-0`, deleted at the end): the VIP 198.18.7.1 and four client
//! addresses on `lo`, listeners on VIP:80 and VIP:443, and N connections spread over them, both
//! ends held by this process (so the namespace has 2N established sockets, half of them
//! matching the filter, like a proxy's client and backend sides). Prints a table; asserts
//! nothing about speed.
//!
//! 200k descriptors do not fit one process here (root lacks CAP_SYS_RESOURCE, so
//! RLIMIT_NOFILE stays at its hard limit of 20000), so the connections are built and held by
//! helper processes: this binary re-executed with `DA_SDBENCH_HOLDER` set. They run one at a
//! time, each with its own short-lived listeners (SO_REUSEADDR lets the next one bind the VIP
//! ports again while earlier connections live on), and exit when their stdin closes.

use drain_test_support::sockets;

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use drain_agent::sys::sockdiag::{NetlinkSockDiag, SocketCounter, SocketFilter};
use drain_test_support::netns::{require_root, ScratchNetns, NETNS_RUN_DIR};
use nix::sched::{setns, CloneFlags};
use sockets::{add_lo_addr, connect_from, listen, raise_nofile_to_hard};

const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 7, 1);
const VIP_PORTS: [u16; 2] = [80, 443];
const CLIENTS: [Ipv4Addr; 4] = [
    Ipv4Addr::new(198, 18, 7, 10),
    Ipv4Addr::new(198, 18, 7, 11),
    Ipv4Addr::new(198, 18, 7, 12),
    Ipv4Addr::new(198, 18, 7, 13),
];
/// Client ports are bound explicitly from here up (one per connection and client address),
/// so ephemeral-port exhaustion never comes into it.
const FIRST_CLIENT_PORT: u16 = 10_000;
const SIZES: [usize; 2] = [10_000, 100_000];
const RUNS: usize = 7;
/// Bound on one holder building its connections.
const SETUP_LIMIT: Duration = Duration::from_secs(300);

/// Environment variable that turns this binary into a connection holder:
/// `NETNS FIRST COUNT`.
const HOLDER_ENV: &str = "DA_SDBENCH_HOLDER";

/// The client endpoint and VIP endpoint of connection number `i`. Each (client address,
/// client port) pair is used exactly once.
fn endpoints(i: usize) -> (SocketAddrV4, SocketAddrV4) {
    let client = CLIENTS[i % CLIENTS.len()];
    let vip_port = (i / CLIENTS.len()) % VIP_PORTS.len();
    let k = i / (CLIENTS.len() * VIP_PORTS.len());
    let port = FIRST_CLIENT_PORT + (vip_port * 25_000 + k) as u16;
    (
        SocketAddrV4::new(client, port),
        SocketAddrV4::new(VIP, VIP_PORTS[vip_port]),
    )
}

/// Holder process: enters the namespace, builds connections `first..first + count` (1000
/// connects, then their accepts, at a time so the accept queues never overflow), reports
/// "ready" on stdout and holds them until stdin closes.
fn holder(spec: &str) {
    let parts: Vec<&str> = spec.split_whitespace().collect();
    let [ns, first, count] = parts[..] else {
        panic!("{HOLDER_ENV}={spec:?}: want NETNS FIRST COUNT");
    };
    let (first, count): (usize, usize) = (first.parse().unwrap(), count.parse().unwrap());
    // The whole (single-threaded) holder process moves, not just a worker thread as
    // `in_netns` would do: `ip netns pids` then lists it, so the namespace's guard can kill a
    // holder that outlived the benchmark.
    let path = format!("{NETNS_RUN_DIR}/{ns}");
    setns(File::open(&path).expect(&path), CloneFlags::CLONE_NEWNET).expect("setns");
    raise_nofile_to_hard().expect("raise RLIMIT_NOFILE");
    let started = Instant::now();
    let listeners: Vec<TcpListener> = VIP_PORTS
        .iter()
        .map(|&p| listen(SocketAddrV4::new(VIP, p), 4096).expect("listen"))
        .collect();
    let mut streams = Vec::with_capacity(2 * count);
    let mut i = first;
    while i < first + count {
        assert!(
            started.elapsed() < SETUP_LIMIT,
            "building connections took longer than {SETUP_LIMIT:?}"
        );
        let batch = (first + count - i).min(1000);
        let mut accepts = [0usize; VIP_PORTS.len()];
        for j in i..i + batch {
            let (src, dst) = endpoints(j);
            let c =
                connect_from(src, dst).unwrap_or_else(|e| panic!("connect {src} -> {dst}: {e}"));
            streams.push(c);
            accepts[VIP_PORTS.iter().position(|&p| p == dst.port()).unwrap()] += 1;
        }
        for (l, n) in listeners.iter().zip(accepts) {
            for _ in 0..n {
                streams.push(l.accept().expect("accept").0);
            }
        }
        i += batch;
    }
    drop(listeners);
    println!("ready {}", streams.len());
    std::io::stdout().flush().unwrap();
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
}

/// The holder processes of the main process.
struct Holders {
    children: Vec<(Child, BufReader<ChildStdout>)>,
    made: usize,
}

impl Holders {
    /// Spawns holders until `n` connections exist, `per_holder` at a time.
    fn grow_to(&mut self, ns: &ScratchNetns, n: usize, per_holder: usize) {
        let exe = std::env::current_exe().expect("current_exe");
        while self.made < n {
            let count = (n - self.made).min(per_holder);
            let mut child = Command::new(&exe)
                .env(HOLDER_ENV, format!("{} {} {count}", ns.name(), self.made))
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .expect("spawn holder");
            let mut out = BufReader::new(child.stdout.take().unwrap());
            let mut line = String::new();
            out.read_line(&mut line).expect("read holder");
            assert_eq!(line.trim(), format!("ready {}", 2 * count), "holder failed");
            self.children.push((child, out));
            self.made += count;
        }
    }
}

impl Drop for Holders {
    fn drop(&mut self) {
        for (child, _) in &mut self.children {
            drop(child.stdin.take());
        }
        for (child, _) in &mut self.children {
            let _ = child.wait();
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Median wall time in ms of `f` over [`RUNS`] runs (after one warm-up), and its last result.
fn time<T>(mut f: impl FnMut() -> T) -> (f64, T) {
    let mut last = f();
    let mut times = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let t = Instant::now();
        last = f();
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    (median(times), last)
}

/// Runs a shell pipeline inside the namespace and returns its output as a number.
fn shell_count(ns: &ScratchNetns, pipeline: &str) -> usize {
    ns.run_ok(&["sh", "-c", pipeline])
        .unwrap_or_else(|e| panic!("{e}"))
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("{pipeline}: {e}"))
}

struct Row {
    name: &'static str,
    ms: Vec<f64>,
    counted: Vec<usize>,
}

fn main() {
    if let Ok(spec) = std::env::var(HOLDER_ENV) {
        holder(&spec);
        return;
    }
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs this binary without it,
    // and must not start a 20-second run that builds 100k connections.
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("sockdiag bench: not run (use `cargo bench --bench sockdiag`)");
        return;
    }
    if !require_root("sockdiag bench") {
        return;
    }
    // Each holder keeps both ends of its connections, plus a few descriptors of its own.
    let per_holder = (raise_nofile_to_hard().expect("raise RLIMIT_NOFILE") as usize - 100) / 2;
    let ns = ScratchNetns::new("sdbench").unwrap_or_else(|e| panic!("{e}"));
    add_lo_addr(&ns, VIP);
    for c in CLIENTS {
        add_lo_addr(&ns, c);
    }
    let filter = SocketFilter::new(vec![VIP], VIP_PORTS.to_vec());
    let ss_filtered = format!(
        "ss -Htn state established '( sport = :{} or sport = :{} )' src {VIP} | wc -l",
        VIP_PORTS[0], VIP_PORTS[1]
    );

    let mut rows = [
        "drain-agent count, kernel filter, no tcp_info",
        "drain-agent count, kernel filter, tcp_info",
        "drain-agent count, user-space filter, no tcp_info",
        "drain-agent count, user-space filter, tcp_info",
        "drain-agent count, kernel filter, VIP:9999 (0 match)",
        "ss -Htn state established | wc -l",
        "ss -Htn state established '(sport..)' src VIP | wc -l",
        "netstat -an | grep ESTABLISHED | wc -l",
    ]
    .map(|name| Row {
        name,
        ms: Vec::new(),
        counted: Vec::new(),
    });

    let mut holders = Holders {
        children: Vec::new(),
        made: 0,
    };
    for &n in &SIZES {
        let t = Instant::now();
        holders.grow_to(&ns, n, per_holder);
        eprintln!(
            "{n} connections ready ({} holder processes) after {:.1} s",
            holders.children.len(),
            t.elapsed().as_secs_f64()
        );
        ns.enter(|| {
            let mut d = NetlinkSockDiag::new().expect("sock_diag socket");
            // The last case matches nothing: what the kernel's walk over the namespace's
            // sockets costs by itself, before any reply is built.
            let nothing = SocketFilter::new(vec![VIP], vec![9999]);
            for (i, (kernel_filter, idle, f)) in [
                (true, None, &filter),
                (true, Some(Duration::from_secs(60)), &filter),
                (false, None, &filter),
                (false, Some(Duration::from_secs(60)), &filter),
                (true, None, &nothing),
            ]
            .into_iter()
            .enumerate()
            {
                d.set_kernel_filter(kernel_filter);
                let (ms, c) = time(|| d.count(f, idle).expect("count"));
                rows[i].ms.push(ms);
                rows[i].counted.push(c.total);
            }
        })
        .unwrap();
        for (i, pipeline) in [
            "ss -Htn state established | wc -l",
            ss_filtered.as_str(),
            "netstat -an | grep ESTABLISHED | wc -l",
        ]
        .into_iter()
        .enumerate()
        {
            let (ms, counted) = time(|| shell_count(&ns, pipeline));
            rows[5 + i].ms.push(ms);
            rows[5 + i].counted.push(counted);
        }
    }

    println!();
    println!(
        "sockdiag count: N established connections to {VIP}:{{80,443}} plus their N client ends \
         in one netns; median of {RUNS} runs (after 1 warm-up); subprocess rows include \
         `ip netns exec` + sh + pipeline"
    );
    let sizes: Vec<String> = SIZES.iter().map(|n| format!("{}k", n / 1000)).collect();
    print!("{:<55}", "method");
    for s in &sizes {
        print!(" | {:>9} {:>8}", format!("{s} ms"), "counted");
    }
    for s in &sizes {
        print!(" | {:>10}", format!("x ss {s}"));
    }
    for s in &sizes {
        print!(" | {:>11}", format!("x netst {s}"));
    }
    println!();
    let ss = rows[5].ms.clone();
    let netstat = rows[7].ms.clone();
    for r in &rows {
        print!("{:<55}", r.name);
        for (ms, n) in r.ms.iter().zip(&r.counted) {
            print!(" | {ms:>9.2} {n:>8}");
        }
        for (ms, base) in r.ms.iter().zip(&ss) {
            print!(" | {:>10.1}", base / ms);
        }
        for (ms, base) in r.ms.iter().zip(&netstat) {
            print!(" | {:>11.1}", base / ms);
        }
        println!();
    }
    println!("(x ss / x netst: how many times faster than that subprocess pipeline; >1 = faster)");

    let t = Instant::now();
    drop(holders);
    drop(ns);
    eprintln!("cleanup took {:.1} s", t.elapsed().as_secs_f64());
}
