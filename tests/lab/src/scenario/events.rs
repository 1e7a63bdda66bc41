//! The scenarios' events other than the agent's: a plain keepalived failover, and the seeded
//! iptables rules a hand-made drain would use (and the peer-side accept rules they need).

use super::*;

pub(super) fn plain_failover(lab: &mut Lab, clock: &Clock) -> Result<EventOutcome> {
    let mut o = EventOutcome::default();
    let t0 = Instant::now();
    o.note(clock, "lb1: tracked interface down");
    lab.set_tracked(Node::Lb1, false)?;
    let took = lab.wait_vip_owner(Node::Lb2, Duration::from_secs(10))?;
    o.note(clock, "lb2 holds the VIP");
    o.failover_ms = Some(took.as_secs_f64() * 1000.0);
    o.drain_ms = Some(t0.elapsed().as_secs_f64() * 1000.0);
    Ok(o)
}

/// The operators' hand-written rules (docs/kernel-facts.md#k2), with the lab's VIP, ingress interface and peer.
pub fn seed_rules_list() -> Vec<String> {
    let vip = addr::VIP;
    let peer = addr::LB2;
    let i = INGRESS_IF;
    vec![
        format!("PREROUTING -i {i} -d {vip} -m conntrack --ctstate NEW -j CONNMARK --set-mark 1"),
        "PREROUTING -j CONNMARK --restore-mark".to_string(),
        format!("PREROUTING -i {i} -p tcp --tcp-flags FIN FIN -j MARK --set-mark 2"),
        format!("PREROUTING -i {i} -p tcp --tcp-flags RST RST -j MARK --set-mark 2"),
        format!("PREROUTING -i {i} -m mark ! --mark 0 -j TEE --gateway {peer}"),
        format!("PREROUTING -i {i} -m mark --mark 1 -j DROP"),
    ]
}

/// What the peer needs to accept TEE'd packets for the VIP while BACKUP (docs/kernel-facts.md#k5),
/// done by hand for the seed scenario the way its author would have had to.
fn peer_accept(lab: &Lab, node: Node, on: bool) -> Result<()> {
    let ns = lab.node_ns(node);
    let vip = format!("{}/32", addr::VIP);
    if on {
        lab.exec(
            &ns,
            &[
                "ip", "route", "add", "local", &vip, "dev", "lo", "table", "main",
            ],
        )?;
        lab.sysctl(&ns, &format!("net.ipv4.conf.{INGRESS_IF}.arp_ignore"), "1")?;
        lab.sysctl(
            &ns,
            &format!("net.ipv4.conf.{INGRESS_IF}.arp_announce"),
            "2",
        )?;
    } else {
        lab.exec(
            &ns,
            &[
                "ip", "route", "del", "local", &vip, "dev", "lo", "table", "main",
            ],
        )?;
        lab.sysctl(&ns, &format!("net.ipv4.conf.{INGRESS_IF}.arp_ignore"), "0")?;
        lab.sysctl(
            &ns,
            &format!("net.ipv4.conf.{INGRESS_IF}.arp_announce"),
            "0",
        )?;
    }
    Ok(())
}

/// Established connections on lb1 to the VIP's ports, counted the way the seed's author did
/// (a command-line tool); only the lab uses this, the agent uses sock_diag.
pub fn established_on(lab: &Lab, node: Node) -> Result<usize> {
    let filter = format!(
        "( sport = :{} or sport = :{} ) and src {}",
        addr::HTTP_PORT,
        addr::ECHO_PORT,
        addr::VIP
    );
    let out = lab.exec(
        &lab.node_ns(node),
        &["ss", "-Htn", "state", "established", &filter],
    )?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count())
}

pub(super) fn seed_rules(lab: &mut Lab, clock: &Clock) -> Result<EventOutcome> {
    let mut o = EventOutcome::default();
    let t0 = Instant::now();
    let ns1 = lab.node_ns(Node::Lb1);
    peer_accept(lab, Node::Lb2, true)?;
    // The seed sets every rp_filter to 0 (and never restores them; the lab does).
    let rp_keys: Vec<String> = ["all", "default", INGRESS_IF, "lo"]
        .iter()
        .map(|i| format!("net.ipv4.conf.{i}.rp_filter"))
        .collect();
    let mut saved = Vec::new();
    for k in &rp_keys {
        let v = String::from_utf8_lossy(&lab.exec(&ns1, &["sysctl", "-n", k])?.stdout)
            .trim()
            .to_string();
        saved.push((k.clone(), v));
        lab.sysctl(&ns1, k, "0")?;
    }
    o.note(clock, "lb1: seed rules installed");
    for rule in seed_rules_list() {
        let mut argv = vec!["iptables", "-t", "mangle", "-A"];
        argv.extend(rule.split(' '));
        lab.exec(&ns1, &argv)?;
    }
    // "keep an eye on netstat ... | grep ESTABLISHED | wc -l"; "once there are just a few (or zero)".
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let n = established_on(lab, Node::Lb1)?;
        if n == 0 || Instant::now() >= deadline {
            o.note(clock, format!("lb1: {n} established left"));
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    o.note(clock, "lb1: tracked interface down");
    let t_fail = Instant::now();
    lab.set_tracked(Node::Lb1, false)?;
    let took = lab.wait_vip_owner(Node::Lb2, Duration::from_secs(10))?;
    o.failover_ms = Some(took.as_secs_f64() * 1000.0);
    o.note(clock, "lb2 holds the VIP");
    let _ = t_fail;
    std::thread::sleep(Duration::from_secs(1));
    for rule in seed_rules_list() {
        let mut argv = vec!["iptables", "-t", "mangle", "-D"];
        argv.extend(rule.split(' '));
        lab.exec(&ns1, &argv)?;
    }
    for (k, v) in saved {
        lab.sysctl(&ns1, &k, &v)?;
    }
    peer_accept(lab, Node::Lb2, false)?;
    o.note(clock, "lb1: seed rules removed");
    o.drain_ms = Some(t0.elapsed().as_secs_f64() * 1000.0);
    Ok(o)
}
