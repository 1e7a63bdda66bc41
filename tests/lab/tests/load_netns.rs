//! Detection cases that need a kernel we control: a private network namespace (root only).
//!
//! - An RST that answers our FIN after all data was exchanged (docs/kernel-facts.md#k2: a node
//!   answering a FIN it was wrongly sent). The application never reads again, so only the
//!   socket's SO_ERROR after the close handshake shows it; an iptables REJECT --reject-with
//!   tcp-reset on the server's FINs reproduces it exactly.
//! - Unreachable destinations (ENETUNREACH, EHOSTUNREACH) count as timeouts.
//!
//! Everything happens inside a namespace created (and always deleted) by the test; the root
//! namespace's links, routes and rules are never touched.

mod common;

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use common::{quiet_spec, with_flows};
use drain_lab::backend::Backend;
use drain_lab::load::{self, FlowClass, LoadReport, LoadSpec, Outcome};
use nix::sched::{setns, CloneFlags};

const HTTP_PORT: u16 = 8080;
const ECHO_PORT: u16 = 7007;
const FLOWS: u32 = 3;

/// Whether the test may run; prints why not. Under CI=true a missing privilege is a failure.
fn root_or_skip(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    assert!(
        !drain_test_support::netns::is_ci(),
        "{test}: needs root (network namespaces, iptables) and CI=true forbids skipping"
    );
    eprintln!("{test}: SKIPPED, needs root to create a network namespace");
    false
}

fn run(cmd: &[&str]) {
    let out = Command::new(cmd[0])
        .args(&cmd[1..])
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A network namespace of our own, deleted on drop (also when the test fails).
struct Netns {
    name: String,
}

impl Netns {
    fn new(purpose: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "da-{purpose}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        run(&["ip", "netns", "add", &name]);
        let ns = Self { name };
        run(&["ip", "-n", &ns.name, "link", "set", "lo", "up"]);
        ns
    }

    fn exec(&self, cmd: &[&str]) {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(cmd);
        run(&full);
    }

    /// Runs `spec` against a backend on 127.0.0.1, both inside the namespace. Sockets belong to
    /// the namespace of the thread that creates them, so a fresh thread enters it first and
    /// builds its own runtime there.
    fn run_load(&self, spec: LoadSpec) -> LoadReport {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let f = File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
            setns(f, CloneFlags::CLONE_NEWNET).expect("enter the test namespace");
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let backend = Backend::bind(
                    Some(SocketAddr::from((Ipv4Addr::LOCALHOST, HTTP_PORT))),
                    Some(SocketAddr::from((Ipv4Addr::LOCALHOST, ECHO_PORT))),
                )
                .expect("bind the backend in the namespace");
                let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
                let served = tokio::spawn(backend.serve_until(async move {
                    let _ = stopped.await;
                }));
                let report = load::run(&spec).await.expect("valid spec");
                let _ = stop.send(());
                served.await.expect("backend task");
                report
            })
        })
        .join()
        .expect("load thread")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn assert_all(report: &LoadReport, class: FlowClass, want: Outcome, detail: &str) {
    eprint!("{}", report.table());
    let c = report.classes.get(class);
    assert_eq!(c.started, u64::from(FLOWS));
    assert_eq!(c.count(want), c.started, "{:#?}", report.failures);
    for f in &report.failures {
        assert!(f.detail.contains(detail), "{:?} lacks {detail:?}", f.detail);
    }
}

#[test]
#[ignore = "needs root and network namespaces; `make test` runs it"]
fn rst_answering_our_fin_after_complete_data_is_reset() {
    if !root_or_skip("rst_answering_our_fin_after_complete_data_is_reset") {
        return;
    }
    let ns = Netns::new("rstfin");
    for port in [HTTP_PORT, ECHO_PORT] {
        let port = port.to_string();
        ns.exec(&[
            "iptables",
            "-A",
            "INPUT",
            "-p",
            "tcp",
            "--dport",
            &port,
            "--tcp-flags",
            "FIN",
            "FIN",
            "-j",
            "REJECT",
            "--reject-with",
            "tcp-reset",
        ]);
    }
    let base = quiet_spec(HTTP_PORT, ECHO_PORT);
    // Short and slow: the server closes first; our FIN (from LAST_ACK) is answered by an RST.
    // Every byte arrived and was verified: only SO_ERROR after the close tells.
    for class in [FlowClass::Short, FlowClass::Slow] {
        let report = ns.run_load(with_flows(base.clone(), class, FLOWS));
        assert_all(&report, class, Outcome::Reset, "after both FINs");
        assert_eq!(report.classes.get(class).requests_ok, u64::from(FLOWS));
    }
    // Keep-alive and echo: we close first, the RST comes while we wait for the server's FIN.
    for class in [FlowClass::Keepalive, FlowClass::Echo] {
        let report = ns.run_load(with_flows(base.clone(), class, FLOWS));
        assert_all(&report, class, Outcome::Reset, "reset");
    }
}

#[test]
#[ignore = "needs root and network namespaces; `make test` runs it"]
fn unreachable_destinations_are_timeouts() {
    if !root_or_skip("unreachable_destinations_are_timeouts") {
        return;
    }
    let ns = Netns::new("unreach");
    // 198.18.0.0/15 only. No route at all: ENETUNREACH. An unreachable route: EHOSTUNREACH.
    let mut spec = with_flows(quiet_spec(HTTP_PORT, ECHO_PORT), FlowClass::Short, FLOWS);
    spec.target = Ipv4Addr::new(198, 18, 7, 1);
    let report = ns.run_load(spec.clone());
    assert_all(&report, FlowClass::Short, Outcome::Timeout, "os error 101");
    ns.exec(&["ip", "route", "add", "unreachable", "198.18.7.0/24"]);
    let report = ns.run_load(spec);
    assert_all(&report, FlowClass::Short, Outcome::Timeout, "os error 113");
}
