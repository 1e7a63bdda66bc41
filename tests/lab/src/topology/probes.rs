//! Questions a test asks a running lab (who holds the VIP, is HAProxy listening, what keepalived
//! announced, a snapshot of a node's firewall and addresses) and the bounded waits on them.

use super::*;

impl Lab {
    /// Whether HAProxy on a node listens on both frontends (it binds them after start-up).
    pub fn haproxy_listening(&self, node: Node) -> Result<bool> {
        for port in [addr::HTTP_PORT, addr::ECHO_PORT] {
            let out = self.exec(
                &self.node_ns(node),
                &["ss", "-Hltn", &format!("sport = :{port}")],
            )?;
            if out.stdout.is_empty() {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// The states keepalived announced on a node so far, in order (the notify log's STATE).
    pub fn notify_states(&self, node: Node) -> Vec<String> {
        fs::read_to_string(self.notify_log(node))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_whitespace().nth(3).map(str::to_string))
            .collect()
    }

    /// Whether every notify call keepalived started on a node has finished: with
    /// [`LabOptions::agent_notify`], each `drain-agent notify` run logs its exit after it ends;
    /// without it the hook only appends its log line, which is done when it is there.
    pub fn notify_settled(&self, node: Node) -> bool {
        if !self.opts.agent_notify {
            return true;
        }
        let finished = fs::read_to_string(self.dir.join(format!("agent-notify-{node}.log")))
            .unwrap_or_default()
            .lines()
            .filter(|l| {
                l.rsplit_once(" exit ")
                    .is_some_and(|(_, code)| code.trim().parse::<i32>().is_ok())
            })
            .count();
        finished == self.notify_states(node).len()
    }

    /// Waits (at most `timeout`) until the latest state keepalived announced on `node` is
    /// `state` and every notify call of both nodes has finished: what "keepalived has acted on
    /// the change" means from outside.
    pub fn wait_announced(&self, node: Node, state: &str, timeout: Duration) -> Result<()> {
        wait_until(&format!("{node} to announce {state}"), timeout, || {
            self.notify_states(node).last().map(String::as_str) == Some(state)
                && Node::ALL.iter().all(|n| self.notify_settled(*n))
        })
        .with_context(|| format!("{node}'s states: {:?}", self.notify_states(node)))
    }

    /// Waits until lb1 holds the VIP, lb2 does not, and the VIP answers HTTP and echo from the client.
    pub(super) fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut last = String::from("nothing tried yet");
        while Instant::now() < deadline {
            match self.check_ready() {
                Ok(()) => return Ok(()),
                Err(e) => last = format!("{e:#}"),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("lab not ready after {timeout:?}: {last}")
    }

    pub(super) fn check_ready(&self) -> Result<()> {
        if !self.has_vip(Node::Lb1)? {
            bail!("lb1 does not hold the VIP yet");
        }
        if self.has_vip(Node::Lb2)? {
            bail!("lb2 holds the VIP too");
        }
        let cl = self.client_ns();
        netns::in_netns(&cl, || -> Result<()> {
            http_get(SocketAddrV4::new(addr::VIP, addr::HTTP_PORT), "/health")?;
            echo_once(SocketAddrV4::new(addr::VIP, addr::ECHO_PORT))?;
            Ok(())
        })??;
        Ok(())
    }

    /// Is the VIP configured on the node's ingress interface?
    pub fn has_vip(&self, node: Node) -> Result<bool> {
        let out = run(&[
            "ip",
            "-n",
            &self.node_ns(node),
            "-4",
            "-o",
            "addr",
            "show",
            "dev",
            INGRESS_IF,
        ])?;
        let needle = format!(" {}/", addr::VIP);
        Ok(String::from_utf8_lossy(&out.stdout).contains(&needle))
    }

    /// Which node holds the VIP (None during a switch or if both do).
    pub fn vip_owner(&self) -> Result<Option<Node>> {
        let a = self.has_vip(Node::Lb1)?;
        let b = self.has_vip(Node::Lb2)?;
        Ok(match (a, b) {
            (true, false) => Some(Node::Lb1),
            (false, true) => Some(Node::Lb2),
            _ => None,
        })
    }

    /// Waits until `node` alone holds the VIP; returns how long that took.
    pub fn wait_vip_owner(&self, node: Node, timeout: Duration) -> Result<Duration> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if self.vip_owner()? == Some(node) {
                return Ok(start.elapsed());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("{node} did not take the VIP within {timeout:?}")
    }

    /// Does the node carry drain-agent's acceptance route (`local VIP/32 dev lo`, protocol 211),
    /// i.e. does it accept diverted traffic?
    pub fn accepting(&self, node: Node) -> Result<bool> {
        let out = self.exec(
            &self.node_ns(node),
            &["ip", "route", "show", "table", "main", "proto", "211"],
        )?;
        Ok(!String::from_utf8_lossy(&out.stdout).trim().is_empty())
    }

    /// Everything a drain must leave as it found it on a node: firewall, sets, policy rules, all
    /// routing tables, addresses apart from the VIP, and the sysctls the agent may touch.
    pub fn host_snapshot(&self, node: Node) -> Result<String> {
        let ns = self.node_ns(node);
        let mut s = String::new();
        for argv in [
            &["iptables-save"][..],
            &["ipset", "list"],
            &["ip", "rule"],
            &["ip", "route", "show", "table", "all"],
            &["ip", "-o", "link", "show"],
        ] {
            let out = self.exec(&ns, argv)?;
            s.push_str(&format!("## {}\n", argv.join(" ")));
            let text = String::from_utf8_lossy(&out.stdout);
            // iptables-save stamps the time and packet counters; the VIP's own routes move with VRRP.
            let mut lines: Vec<String> = text
                .lines()
                .filter(|l| {
                    !(l.starts_with('#') || l.contains(&addr::VIP.to_string()) && argv[0] == "ip")
                })
                .map(strip_counters)
                .collect();
            if argv.starts_with(&["ip", "route"]) {
                // IPv6 link-local routes come back by themselves a moment (DAD) after a link
                // goes up again; the agent never touches IPv6.
                lines.retain(|l| !l.contains("fe80::"));
                // A link going down and up re-adds its IPv6 link-local routes at the end of the
                // listing: the same routes in another order.
                lines.sort();
            }
            for line in lines {
                s.push_str(&line);
                s.push('\n');
            }
        }
        s.push_str("## sysctls\n");
        for key in [
            "net.ipv4.conf.all.rp_filter",
            "net.ipv4.conf.eth0.rp_filter",
            "net.ipv4.conf.all.arp_ignore",
            "net.ipv4.conf.eth0.arp_ignore",
            "net.ipv4.conf.all.arp_announce",
            "net.ipv4.conf.eth0.arp_announce",
            "net.ipv4.conf.eth0.send_redirects",
            "net.ipv4.conf.all.send_redirects",
            "net.ipv4.ip_forward",
        ] {
            let out = self.exec(&ns, &["sysctl", "-n", key])?;
            s.push_str(&format!("{key} = {}", String::from_utf8_lossy(&out.stdout)));
        }
        Ok(s)
    }

    /// The last lines of every process log, to explain a failure.
    pub fn log_tail(&self) -> String {
        let mut s = String::new();
        if let Ok(entries) = fs::read_dir(&self.dir) {
            let mut names: Vec<_> = entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "log"))
                .collect();
            names.sort();
            for p in names {
                let text = fs::read_to_string(&p).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(8).collect();
                s.push_str(&format!("--- {}\n", p.display()));
                for l in tail.into_iter().rev() {
                    s.push_str(l);
                    s.push('\n');
                }
            }
        }
        s
    }
}

/// Polls `cond` every 50 ms until it holds, failing after `timeout` with `what` in the message.
pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) -> Result<()> {
    let start = Instant::now();
    while !cond() {
        if start.elapsed() > timeout {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// One HTTP GET with `Connection: close`; returns the body on a 200.
pub fn http_get(to: SocketAddrV4, path: &str) -> Result<String> {
    let mut s = TcpStream::connect_timeout(&to.into(), Duration::from_secs(1))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: lab\r\nConnection: close\r\n\r\n"
    )?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    if !resp.starts_with("HTTP/1.1 200") {
        bail!(
            "GET {path} from {to}: {}",
            resp.lines().next().unwrap_or("no response")
        );
    }
    Ok(resp.split("\r\n\r\n").nth(1).unwrap_or("").to_string())
}

fn echo_once(to: SocketAddrV4) -> Result<()> {
    let mut s = TcpStream::connect_timeout(&to.into(), Duration::from_secs(1))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(b"ping")?;
    s.shutdown(std::net::Shutdown::Write)?;
    let mut back = Vec::new();
    s.read_to_end(&mut back)?;
    if back != b"ping" {
        bail!("echo via {to} returned {back:?}");
    }
    Ok(())
}

/// Removes iptables-save's `[packets:bytes]` counters so snapshots compare rules, not traffic.
fn strip_counters(line: &str) -> String {
    if line.starts_with(':') {
        if let Some(i) = line.rfind(" [") {
            return line[..i].to_string();
        }
    }
    line.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_stripped_from_chain_lines_only() {
        assert_eq!(
            strip_counters(":PREROUTING ACCEPT [12:345]"),
            ":PREROUTING ACCEPT"
        );
        assert_eq!(strip_counters("-A X -j DROP"), "-A X -j DROP");
    }
}
