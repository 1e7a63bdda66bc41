//! `check`: validates the environment for a configuration and changes nothing. One row per check;
//! the exit code is the first failing check's. A warning (the diverted-flow record may be too
//! small for the measured rate) is not a failure.

use std::time::Duration;

use serde::Serialize;

use super::{exit, DivertTest, Host, OpError, PeerAnswer};
use crate::config::Config;
use crate::plan::sets::full_record_bytes;
use crate::plan::DivertPlan;

/// The tools a divert cycle runs.
pub const TOOLS: [&str; 4] = ["iptables-restore", "iptables-save", "ipset", "nft"];

/// How long the new-connection rate is measured when none is given.
pub const RATE_SAMPLE: Duration = Duration::from_secs(1);

/// What `check` may be told.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CheckOptions {
    /// Skip the peer probe (e.g. when the peer is known to be down for maintenance).
    pub no_peer: bool,
    /// New connections per second to plan the record for, instead of measuring.
    pub rate: Option<f64>,
}

/// One check.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CheckRow {
    /// What was checked: config, privileges, binary, ingress interface, tracked interface,
    /// kernel, capacity, sock_diag, vip, peer, handoff, netlink.
    pub check: &'static str,
    /// Whether it passed (warnings pass).
    pub ok: bool,
    /// A warning: passed, but worth acting on.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub warning: bool,
    /// What was found.
    pub detail: String,
    /// The exit code a failure means.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<u8>,
}

/// The whole check (`drain-agent check --json`).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct CheckReport {
    /// Whether every check passed.
    pub ok: bool,
    /// The checks, in order.
    pub checks: Vec<CheckRow>,
}

impl CheckReport {
    fn push(&mut self, row: CheckRow) {
        self.checks.push(row);
        self.ok = self.checks.iter().all(|r| r.ok);
    }
    fn row(check: &'static str, ok: bool, warning: bool, detail: String) -> CheckRow {
        CheckRow {
            check,
            ok,
            warning,
            detail,
            exit_code: None,
        }
    }
    fn pass(&mut self, check: &'static str, detail: impl Into<String>) {
        self.push(Self::row(check, true, false, detail.into()));
    }
    fn warn(&mut self, check: &'static str, detail: impl Into<String>) {
        self.push(Self::row(check, true, true, detail.into()));
    }
    fn fail(&mut self, check: &'static str, code: u8, detail: impl Into<String>) {
        self.push(CheckRow {
            exit_code: Some(code),
            ..Self::row(check, false, false, detail.into())
        });
    }

    /// A report whose only row says the host could not be opened.
    pub fn host_unavailable(config: String, e: &OpError) -> CheckReport {
        let mut r = CheckReport {
            ok: true,
            checks: Vec::new(),
        };
        r.pass("config", config);
        r.fail("netlink", e.exit_code(), e.to_string());
        r
    }

    /// The first failure: its exit code and one line naming it.
    pub fn first_failure(&self) -> Option<(u8, String)> {
        self.checks.iter().find(|r| !r.ok).map(|r| {
            (
                r.exit_code.unwrap_or(exit::INTERNAL),
                format!("check {}: {}", r.check, r.detail),
            )
        })
    }

    /// The text form: one line per check.
    pub fn text(&self) -> String {
        self.checks
            .iter()
            .map(|r| {
                let tag = match (r.ok, r.warning) {
                    (true, false) => "ok  ",
                    (true, true) => "WARN",
                    _ => "FAIL",
                };
                format!("{tag} {}: {}", r.check, r.detail)
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Checks the environment for `cfg` (loaded from `config_name`) on `h`.
pub fn check(
    cfg: &Config,
    config_name: &str,
    opts: &CheckOptions,
    h: &mut dyn Host,
) -> CheckReport {
    let mut r = CheckReport {
        ok: true,
        checks: Vec::new(),
    };
    r.pass("config", format!("{config_name} is valid"));
    if h.has_net_admin() {
        r.pass("privileges", "CAP_NET_ADMIN");
    } else {
        r.fail(
            "privileges",
            exit::ENVIRONMENT,
            OpError::Privileges.to_string(),
        );
    }
    for bin in TOOLS {
        match h.find_tool(bin) {
            Some(p) => r.pass("binary", format!("{bin}: {}", p.display())),
            None => r.fail(
                "binary",
                exit::ENVIRONMENT,
                format!("`{bin}` not found in PATH"),
            ),
        }
    }
    if r.ok {
        check_host(cfg, opts, h, &mut r);
    }
    r
}

fn check_host(cfg: &Config, opts: &CheckOptions, h: &mut dyn Host, r: &mut CheckReport) {
    for (what, ifname) in [
        ("ingress interface", cfg.ingress_interface.as_str()),
        ("tracked interface", cfg.tracked_interface.as_str()),
    ] {
        match h.link_up(ifname) {
            Ok(true) => r.pass(what, format!("{ifname} is up")),
            Ok(false) if what == "tracked interface" => r.pass(
                what,
                format!("{ifname} is DOWN (node drained; `undrain` brings it back)"),
            ),
            Ok(false) => r.fail(what, exit::ENVIRONMENT, format!("{ifname} is down")),
            Err(e) => r.fail(what, exit::ENVIRONMENT, e.to_string()),
        }
    }
    let plan = DivertPlan::new(cfg);
    match h.test_divert(&plan.ipset_create(), &plan.install_rules()) {
        DivertTest::Accepted => r.pass("kernel", "ipset hash:ip,port,ip and list:set, mangle table, TEE, SET, set match, multiport: accepted by ipset and iptables-restore --test"),
        DivertTest::NotTested(why) => r.pass("kernel", format!("not tested: {why}")),
        DivertTest::Rejected(why) => r.fail("kernel", exit::ENVIRONMENT, why),
    }
    check_capacity(cfg, opts, h, r);
    match h.count() {
        Ok(n) => r.pass(
            "sock_diag",
            format!(
                "{} connection(s) on the VIP ports ({} idle)",
                n.total, n.idle
            ),
        ),
        Err(e) => r.fail("sock_diag", exit::ENVIRONMENT, e.to_string()),
    }
    for v in cfg.vips.iter() {
        let vip = v.address.get();
        match h.vip_local(vip) {
            Ok(true) => r.pass(
                "vip",
                format!("{vip} is held here (MASTER): drain possible"),
            ),
            Ok(false) => r.pass(
                "vip",
                format!("{vip} is not held here (BACKUP/FAULT): nothing to drain"),
            ),
            Err(e) => r.fail("vip", exit::ENVIRONMENT, e.to_string()),
        }
    }
    if opts.no_peer {
        return;
    }
    let peer = cfg.peer.get();
    match h.probe_peer() {
        Ok(PeerAnswer::Accepted { rtt_ms }) => r.pass(
            "peer",
            format!("{peer} accepts the VIP's traffic (SYN-ACK in {rtt_ms:.2} ms)"),
        ),
        Ok(PeerAnswer::Refused) => r.fail(
            "peer",
            exit::PEER_NOT_READY,
            format!("{peer} refuses connections to the VIP (RST): HAProxy down there?"),
        ),
        Ok(PeerAnswer::NoAnswer) => r.fail(
            "peer",
            exit::PEER_NOT_READY,
            format!(
                "{peer} does not answer for the VIP: down, or `drain-agent accept` not run there"
            ),
        ),
        Err(e) => r.fail("peer", exit::ENVIRONMENT, e.to_string()),
    }
    if cfg.handoff.is_some() {
        let hello = super::handoff::PeerRequest::Hello {
            vips: super::handoff::VipPorts::of(cfg),
        };
        match h.peer_agent(&hello) {
            Ok(super::handoff::PeerReply::Ok { detail }) => r.pass("handoff", detail),
            Ok(super::handoff::PeerReply::Refused { reason }) => {
                r.fail("handoff", exit::PEER_NOT_READY, format!("{peer}'s agent: {reason}"))
            }
            Err(e) => r.fail(
                "handoff",
                exit::PEER_NOT_READY,
                format!("{peer}'s agent does not answer on the peer link ({e}): `drain-agent run` must run there, with the same handoff.key_file"),
            ),
        }
    }
}

/// Whether the diverted-flow record can hold every flow a drain may divert: the new connections
/// per second (given, or measured from `PassiveOpens` over [`RATE_SAMPLE`]) times the longest a
/// divert stays in place (deadline + failover timeout + post-wait), all on one port.
fn check_capacity(cfg: &Config, opts: &CheckOptions, h: &mut dyn Host, r: &mut CheckReport) {
    let (rate, how) = match opts.rate {
        Some(rate) => (rate, "given"),
        None => {
            let t0 = h.now();
            let measured = h.passive_opens().and_then(|before| {
                h.sleep(RATE_SAMPLE);
                let after = h.passive_opens()?;
                Ok(after.saturating_sub(before) as f64 / (h.now() - t0).as_secs_f64())
            });
            match measured {
                Ok(rate) => (rate, "measured over 1 s"),
                Err(e) => {
                    return r.warn(
                        "capacity",
                        format!("cannot measure the connection rate ({e}); pass --rate"),
                    )
                }
            }
        }
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
        r.warn("capacity", format!("{facts}: a long drain would fill the record; new flows would then stay here (the drain takes longer) and, after the seal, wait 1 s for a retransmit; raise firewall.max_diverted_flows or lower drain.deadline"));
    } else if expected >= 0.5 * f64::from(capacity) {
        r.warn(
            "capacity",
            format!("{facts}: over half the room; consider raising firewall.max_diverted_flows"),
        );
    } else {
        r.pass("capacity", facts);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::fake::FakeHost;

    fn cfg() -> Config {
        crate::ops::fake::test_config("80", "firewall:\n  max_diverted_flows: 100000\n")
    }

    #[test]
    fn a_ready_node_passes_every_check() {
        let mut h = FakeHost::new();
        let r = check(&cfg(), "x.yaml", &CheckOptions::default(), &mut h);
        assert!(r.ok, "{}", r.text());
        assert_eq!(r.first_failure(), None);
        let names: Vec<&str> = r.checks.iter().map(|c| c.check).collect();
        assert_eq!(
            names,
            [
                "config",
                "privileges",
                "binary",
                "binary",
                "binary",
                "binary",
                "ingress interface",
                "tracked interface",
                "kernel",
                "capacity",
                "sock_diag",
                "vip",
                "peer"
            ]
        );
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(
            json["checks"][0],
            serde_json::json!({"check": "config", "ok": true, "detail": "x.yaml is valid"})
        );
    }

    #[test]
    fn a_missing_tool_fails_before_the_host_is_checked() {
        let mut h = FakeHost::new();
        h.missing_tools = vec!["nft".into()];
        let r = check(&cfg(), "x.yaml", &CheckOptions::default(), &mut h);
        assert_eq!(
            r.first_failure(),
            Some((
                exit::ENVIRONMENT,
                "check binary: `nft` not found in PATH".into()
            ))
        );
        assert!(!r.checks.iter().any(|c| c.check == "peer"));
        assert!(r.text().contains("FAIL binary: `nft` not found in PATH"));
    }

    #[test]
    fn a_peer_that_refuses_is_exit_5_and_no_peer_skips_it() {
        let mut h = FakeHost::new();
        h.peer_refuses = true;
        let r = check(&cfg(), "x.yaml", &CheckOptions::default(), &mut h);
        assert_eq!(r.first_failure().unwrap().0, exit::PEER_NOT_READY);
        let opts = CheckOptions {
            no_peer: true,
            ..CheckOptions::default()
        };
        assert!(check(&cfg(), "x.yaml", &opts, &mut h).ok);
    }

    #[test]
    fn the_capacity_warns_as_the_rate_nears_it() {
        let row = |rate: f64| {
            let opts = CheckOptions {
                rate: Some(rate),
                ..CheckOptions::default()
            };
            check(&cfg(), "x.yaml", &opts, &mut FakeHost::new())
                .checks
                .into_iter()
                .find(|c| c.check == "capacity")
                .unwrap()
        };
        // Deadline 5 min + timeout 10 s + post-wait 2 s = 312 s.
        assert!(!row(100.0).warning);
        assert!(row(200.0).warning && row(200.0).detail.contains("over half"));
        assert!(row(400.0).detail.contains("would fill the record"));
        // Measured: 1000 new connections/s.
        let mut h = FakeHost::new();
        h.syn_rate = 1000.0;
        let r = check(&cfg(), "x.yaml", &CheckOptions::default(), &mut h);
        let cap = r.checks.iter().find(|c| c.check == "capacity").unwrap();
        assert!(
            cap.detail
                .starts_with("1000 new connections/s (measured over 1 s)"),
            "{}",
            cap.detail
        );
        assert!(cap.warning);
    }
}
