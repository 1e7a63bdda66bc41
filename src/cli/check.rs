//! `drain-agent check`: validates the configuration and the environment and changes nothing.
//! Every check prints one line; the exit code is the first failing check's.

use clap::Args;
use serde_json::json;

use super::common::{self, Output};
use super::{Failure, GlobalOpts};
use crate::ops::{exit, Host, PeerAnswer};

/// Arguments of `check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Skip the peer probe (e.g. when the peer is known to be down for maintenance).
    #[arg(long)]
    pub no_peer: bool,
    /// New connections per second to plan the diverted-flow record for (default: the rate this
    /// node accepts connections at, measured over one second).
    #[arg(long, value_parser = rate)]
    pub rate: Option<f64>,
}

fn rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if r.is_finite() && r >= 0.0 => Ok(r),
        _ => Err(format!(
            "{s:?} is not a rate (new connections per second, >= 0)"
        )),
    }
}

struct Checks {
    rows: Vec<serde_json::Value>,
    first_failure: Option<Failure>,
}

impl Checks {
    fn ok(&mut self, name: &str, detail: impl Into<String>) {
        self.rows
            .push(json!({"check": name, "ok": true, "detail": detail.into()}));
    }
    /// Not a failure (the exit code stays 0), but something the operator should act on.
    fn warn(&mut self, name: &str, detail: impl Into<String>) {
        self.rows
            .push(json!({"check": name, "ok": true, "warning": true, "detail": detail.into()}));
    }
    fn fail(&mut self, name: &str, code: u8, detail: impl Into<String>) {
        let detail = detail.into();
        self.rows
            .push(json!({"check": name, "ok": false, "detail": detail, "exit_code": code}));
        if self.first_failure.is_none() {
            self.first_failure = Some(Failure::new(code, format!("check {name}: {detail}")));
        }
    }
}

/// Runs `check`.
pub fn run(g: &GlobalOpts, a: &CheckArgs) -> Result<(), Failure> {
    let cfg = common::load_config(g)?;
    let mut c = Checks {
        rows: Vec::new(),
        first_failure: None,
    };
    c.ok("config", format!("{} is valid", g.config.display()));
    match common::require_net_admin() {
        Ok(()) => c.ok("privileges", "CAP_NET_ADMIN"),
        Err(f) => c.fail("privileges", f.code, f.message),
    }
    for bin in ["iptables-restore", "iptables-save", "ipset", "nft"] {
        match crate::sys::firewall::find_in_path(std::path::Path::new(bin)) {
            Some(p) => c.ok("binary", format!("{bin}: {}", p.display())),
            None => c.fail(
                "binary",
                exit::ENVIRONMENT,
                format!("`{bin}` not found in PATH"),
            ),
        }
    }
    if c.first_failure.is_none() {
        check_host(&cfg, a, &mut c);
    }
    let ok = c.first_failure.is_none();
    let out = Output::new(g.json);
    let text: Vec<String> = c
        .rows
        .iter()
        .map(|r| {
            format!(
                "{} {}: {}",
                match (r["ok"] == true, r["warning"] == true) {
                    (true, false) => "ok  ",
                    (true, true) => "WARN",
                    _ => "FAIL",
                },
                r["check"].as_str().unwrap_or(""),
                r["detail"].as_str().unwrap_or("")
            )
        })
        .collect();
    out.result(&json!({"ok": ok, "checks": c.rows}), &text.join("\n"));
    match c.first_failure {
        None => Ok(()),
        Some(f) => Err(f),
    }
}

fn check_host(cfg: &crate::config::Config, a: &CheckArgs, c: &mut Checks) {
    let mut host = match common::system_host(cfg, common::no_interrupts()) {
        Ok(h) => h,
        Err(f) => return c.fail("netlink", f.code, f.message),
    };
    for (what, ifname) in [
        ("ingress interface", cfg.ingress_interface.as_str()),
        ("tracked interface", cfg.tracked_interface.as_str()),
    ] {
        match host.link_up(ifname) {
            Ok(true) => c.ok(what, format!("{ifname} is up")),
            Ok(false) if what == "tracked interface" => c.ok(
                what,
                format!("{ifname} is DOWN (node drained; `undrain` brings it back)"),
            ),
            Ok(false) => c.fail(what, exit::ENVIRONMENT, format!("{ifname} is down")),
            Err(e) => c.fail(what, exit::ENVIRONMENT, e.to_string()),
        }
    }
    // Kernel features: parse the exact divert transaction without committing it.
    match iptables_test(&common::plan(cfg)) {
        Ok(detail) => c.ok("kernel", detail),
        Err(e) => c.fail("kernel", exit::ENVIRONMENT, e),
    }
    check_capacity(cfg, a, c);
    match host.count() {
        Ok(n) => c.ok(
            "sock_diag",
            format!(
                "{} connection(s) on the VIP ports ({} idle)",
                n.total, n.idle
            ),
        ),
        Err(e) => c.fail("sock_diag", exit::ENVIRONMENT, e.to_string()),
    }
    for v in cfg.vips.iter() {
        match host.vip_local(v.address.get()) {
            Ok(true) => c.ok(
                "vip",
                format!("{} is held here (MASTER): drain possible", v.address.get()),
            ),
            Ok(false) => c.ok(
                "vip",
                format!(
                    "{} is not held here (BACKUP/FAULT): nothing to drain",
                    v.address.get()
                ),
            ),
            Err(e) => c.fail("vip", exit::ENVIRONMENT, e.to_string()),
        }
    }
    if a.no_peer {
        return;
    }
    match host.probe_peer() {
        Ok(PeerAnswer::Accepted { rtt_ms }) => c.ok(
            "peer",
            format!(
                "{} accepts the VIP's traffic (SYN-ACK in {rtt_ms:.2} ms)",
                cfg.peer.get()
            ),
        ),
        Ok(PeerAnswer::Refused) => c.fail(
            "peer",
            exit::PEER_NOT_READY,
            format!(
                "{} refuses connections to the VIP (RST): HAProxy down there?",
                cfg.peer.get()
            ),
        ),
        Ok(PeerAnswer::NoAnswer) => c.fail(
            "peer",
            exit::PEER_NOT_READY,
            format!(
                "{} does not answer for the VIP: down, or `drain-agent accept` not run there",
                cfg.peer.get()
            ),
        ),
        Err(e) => c.fail("peer", exit::ENVIRONMENT, e.to_string()),
    }
}

/// Whether the diverted-flow record can hold every flow a drain may divert: the new connections
/// per second (given, or measured from this namespace's `PassiveOpens` over one second) times the
/// longest a divert stays in place (deadline + failover timeout + post-wait), all on one port.
fn check_capacity(cfg: &crate::config::Config, a: &CheckArgs, c: &mut Checks) {
    use crate::plan::sets::full_record_bytes;
    let (rate, how) = match a.rate {
        Some(r) => (r, "given"),
        None => match measure_rate() {
            Ok(r) => (r, "measured over 1 s"),
            Err(e) => {
                return c.warn(
                    "capacity",
                    format!("cannot measure the connection rate ({e}); pass --rate"),
                )
            }
        },
    };
    let window =
        cfg.drain.deadline.get() + cfg.failover.timeout.get() + cfg.failover.post_wait.get();
    let expected = rate * window.as_secs_f64();
    let capacity = cfg.firewall.max_diverted_flows.get();
    let full_mib = full_record_bytes(capacity) as f64 / f64::from(1 << 20);
    let facts = format!(
        "{rate:.0} new connections/s ({how}) for up to {:.0} s (drain.deadline + failover.timeout + failover.post_wait) = {expected:.0} flows; room for {capacity} per port ({full_mib:.1} MiB of kernel memory per port when full)",
        window.as_secs_f64()
    );
    if expected >= f64::from(capacity) {
        c.warn("capacity", format!("{facts}: a long drain would fill the record; new flows would then stay here (the drain takes longer) and, after the seal, wait 1 s for a retransmit; raise firewall.max_diverted_flows or lower drain.deadline"));
    } else if expected >= 0.5 * f64::from(capacity) {
        c.warn(
            "capacity",
            format!("{facts}: over half the room; consider raising firewall.max_diverted_flows"),
        );
    } else {
        c.ok("capacity", facts);
    }
}

/// New connections per second this namespace accepts, over one second.
fn measure_rate() -> std::io::Result<f64> {
    let t0 = std::time::Instant::now();
    let before = crate::sys::sockdiag::passive_opens()?;
    std::thread::sleep(std::time::Duration::from_secs(1));
    let after = crate::sys::sockdiag::passive_opens()?;
    Ok(after.saturating_sub(before) as f64 / t0.elapsed().as_secs_f64())
}

/// Has iptables-restore parse the exact divert transaction (and ipset the exact sets) without
/// committing anything to the node.
///
/// `iptables-restore --test` resolves the names in `-m set` / `-j SET` in the kernel, and our sets
/// only exist while a drain runs, so run in the node's namespace it always failed ("Set DRAIN-80
/// doesn't exist"). Instead a fresh thread unshares a private, empty network namespace (the
/// namespace is per thread, and the tools started from that thread inherit it), creates the sets
/// there (ipsets are per namespace) and tests the rules; the namespace disappears with the
/// thread. The kernel features (TEE, SET, set match, multiport) are the same in every namespace.
fn iptables_test(plan: &crate::plan::DivertPlan) -> Result<&'static str, String> {
    let sets = plan.ipset_create();
    let rules = plan.install_rules();
    let worker = std::thread::spawn(move || {
        use nix::sched::{unshare, CloneFlags};
        match unshare(CloneFlags::CLONE_NEWNET) {
            Ok(()) => {}
            // Only CAP_NET_ADMIN (enough for a drain), not CAP_SYS_ADMIN: cannot test safely.
            Err(nix::errno::Errno::EPERM) => return Ok(
                "not tested: a private network namespace to test the divert in needs CAP_SYS_ADMIN",
            ),
            Err(e) => {
                return Err(format!(
                    "cannot create a private network namespace to test the divert in: {e}"
                ))
            }
        }
        run_with_stdin("ipset", &["restore"], &sets)?;
        run_with_stdin("iptables-restore", &["--test", "--noflush"], &rules)?;
        Ok("ipset hash:ip,port,ip, mangle table, TEE, SET, set match, multiport: accepted by ipset and iptables-restore --test")
    });
    worker
        .join()
        .unwrap_or_else(|_| Err("the kernel check panicked".to_string()))
}

/// Runs `bin args` with `text` on stdin; on failure, the first line of its stderr.
fn run_with_stdin(bin: &str, args: &[&str], text: &str) -> Result<(), String> {
    use std::io::Write;
    let mut child = std::process::Command::new(bin)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("{bin}: {e}"))?;
    child.stdin.take().map(|mut s| s.write_all(text.as_bytes()));
    let out = child
        .wait_with_output()
        .map_err(|e| format!("{bin}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{bin} {} rejects the divert: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .next()
                .unwrap_or("")
        ))
    }
}
