use super::*;
use std::net::Ipv4Addr;
use std::time::Duration;

const MINIMAL: &str = "\
vips:
  - address: 198.18.0.100
    ports: [80, 7]
ingress_interface: eth0
peer: 198.18.0.12
tracked_interface: trk0
";

fn s(text: &str) -> String {
    text.to_string()
}

#[test]
fn minimal_config_gets_documented_defaults() {
    let c = Config::from_str(MINIMAL, "t.yaml").unwrap();
    assert_eq!(c.vips.as_slice().len(), 1);
    assert_eq!(c.peer.get(), Ipv4Addr::new(198, 18, 0, 12));
    assert_eq!(c.failover.method, FailoverMethod::LinkDown);
    assert_eq!(c.failover.timeout.get(), Duration::from_secs(10));
    assert_eq!(c.failover.post_wait.get(), Duration::from_secs(1));
    assert_eq!(c.firewall.chain_prefix.as_str(), "DRAIN");
    assert_eq!(c.firewall.mark.get(), 0x1d00_0000);
    assert_eq!(c.firewall.mark_mask.get(), 0xff00_0000);
    assert_eq!(c.firewall.max_diverted_flows.get(), 1_048_576);
    assert_eq!(c.drain.deadline.get(), Duration::from_secs(300));
    assert_eq!(c.drain.idle_threshold.get(), Duration::from_secs(30));
    assert_eq!(c.drain.poll_interval.get(), Duration::from_millis(100));
    assert!(!c.drain.abort_on_deadline);
    assert_eq!(c.drain.rollback_grace.get(), Duration::from_secs(5));
    assert_eq!(c.peer_probe.interval.get(), Duration::from_millis(200));
    assert_eq!(c.peer_probe.timeout.get(), Duration::from_millis(200));
    assert_eq!(c.peer_probe.failures.get(), 2);
    assert_eq!(
        c.peer_probe.port.get(),
        80,
        "defaults to the first VIP's first port"
    );
    assert_eq!(c.state_dir.as_path(), Path::new("/var/lib/drain-agent"));
}

#[test]
fn example_file_parses() {
    let c = Config::from_str(Config::example(), "keepalived/drain-agent.yaml").unwrap();
    assert_eq!(c.ingress_interface.as_str(), "eth0");
}

#[test]
fn the_handoff_section_has_defaults_and_handoff_mode_needs_it() {
    let c = Config::from_str(
        &format!("{MINIMAL}handoff:\n  key_file: /etc/drain-agent/handoff.key\n"),
        "t",
    )
    .unwrap();
    let h = c.handoff.as_ref().unwrap();
    assert_eq!(h.port.get(), 7424);
    assert_eq!(h.deadline.get(), Duration::from_secs(3600));
    assert_eq!(c.drain.mode, DrainMode::Drain);
    let e = Config::from_str(&format!("{MINIMAL}drain:\n  mode: handoff\n"), "t")
        .unwrap_err()
        .to_string();
    assert!(e.contains("drain.mode") && e.contains("handoff:"), "{e}");
    let e = Config::from_str(&format!("{MINIMAL}handoff:\n  port: 7424\n"), "t")
        .unwrap_err()
        .to_string();
    assert!(e.contains("key_file"), "{e}");
}

#[test]
fn durations_parse_in_every_unit() {
    assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
    assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
    assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
    assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
    assert_eq!(parse_duration("0s").unwrap(), Duration::ZERO);
    for bad in [
        "",
        "s",
        "10",
        "1.5s",
        "-1s",
        "10 s",
        "10sec",
        "1d",
        "99999999999999999999ms",
    ] {
        assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
    }
    assert!(
        parse_duration("18446744073709551615h").is_err(),
        "overflow accepted"
    );
}

#[test]
fn durations_display_in_the_largest_exact_unit() {
    for text in ["250ms", "30s", "5m", "1h", "0s", "90s", "1500ms"] {
        assert_eq!(HumanDuration::try_from(s(text)).unwrap().to_string(), text);
    }
}

#[test]
fn positive_duration_and_poll_interval_bounds() {
    assert!(PositiveDuration::try_from(s("0ms")).is_err());
    assert!(PositiveDuration::try_from(s("1ms")).is_ok());
    assert!(PollInterval::try_from(s("9ms")).is_err());
    assert!(PollInterval::try_from(s("10ms")).is_ok());
    assert!(PollInterval::try_from(s("10s")).is_ok());
    assert!(PollInterval::try_from(s("10001ms")).is_err());
}

#[test]
fn unicast_v4_rejects_special_addresses() {
    assert!(UnicastV4::try_from(s("198.18.0.1")).is_ok());
    for bad in [
        "0.0.0.0",
        "224.0.0.18",
        "255.255.255.255",
        "127.0.0.1",
        "1.2.3",
        "::1",
    ] {
        assert!(UnicastV4::try_from(s(bad)).is_err(), "{bad} accepted");
    }
    let v6 = UnicastV4::try_from(s("2001:db8::1"))
        .unwrap_err()
        .to_string();
    assert!(v6.contains("IPv6") && v6.contains("not supported"), "{v6}");
}

#[test]
fn interface_names_follow_the_kernel_rules() {
    for ok in ["eth0", "eth0.100", "veth-lb1", "a", "123456789012345"] {
        assert!(IfName::try_from(s(ok)).is_ok(), "{ok} rejected");
    }
    for bad in [
        "",
        "1234567890123456",
        ".",
        "..",
        "a/b",
        "a:b",
        "a b",
        "a\tb",
        "a\0b",
        "eth+",
        "e\"t",
    ] {
        assert!(IfName::try_from(s(bad)).is_err(), "{bad:?} accepted");
    }
}

#[test]
fn chain_prefix_rules() {
    for ok in ["DRAIN", "d", "A_1", "ABCDEFGHIJKL"] {
        assert!(ChainPrefix::try_from(s(ok)).is_ok(), "{ok} rejected");
    }
    for bad in ["", "1A", "_A", "A-B", "ABCDEFGHIJKLM", "A B"] {
        assert!(ChainPrefix::try_from(s(bad)).is_err(), "{bad} accepted");
    }
}

#[test]
fn numbers_accept_hex_and_decimal() {
    assert_eq!(Mark::try_from(s("0x10")).unwrap().get(), 16);
    assert_eq!(Mark::try_from(s("16")).unwrap().get(), 16);
    assert!(Mark::try_from(s("0x100000000")).is_err());
    assert!(MarkMask::try_from(s("0")).is_err());
    assert!(SetCapacity::try_from(s("1023")).is_err());
    assert!(SetCapacity::try_from(s("16777217")).is_err());
    assert!(SetCapacity::try_from(s("16777216")).is_ok());
    assert!(FailureCount::try_from(s("0")).is_err());
    assert!(Port::try_from(s("65536")).is_err());
}
