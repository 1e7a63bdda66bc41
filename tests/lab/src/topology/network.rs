//! The lab's network: its namespaces, the bridge and veth links between them, addresses,
//! sysctls, and the tracked interface the failover trigger flips.

use super::*;

impl Lab {
    pub(super) fn build(&mut self, opts: &LabOptions) -> Result<()> {
        fs::create_dir_all(STATE_ROOT)?;
        fs::set_permissions(STATE_ROOT, fs::Permissions::from_mode(0o755))?;
        fs::create_dir_all(&self.dir)?;
        fs::set_permissions(&self.dir, fs::Permissions::from_mode(0o755))?;
        for role in ROLES {
            run(&["ip", "netns", "add", &self.ns(role)])?;
            run(&["ip", "-n", &self.ns(role), "link", "set", "lo", "up"])?;
        }
        let sw = self.ns("sw");
        run(&["ip", "-n", &sw, "link", "add", "br0", "type", "bridge"])?;
        // Multicast snooping off: VRRP adverts (224.0.0.18) must reach the other node whatever the
        // bridge has learnt about group membership.
        run(&[
            "ip",
            "-n",
            &sw,
            "link",
            "set",
            "br0",
            "type",
            "bridge",
            "mcast_snooping",
            "0",
            "stp_state",
            "0",
            "forward_delay",
            "0",
        ])?;
        run(&["ip", "-n", &sw, "link", "set", "br0", "up"])?;
        let nodes = [
            ("cl", addr::CLIENT),
            ("lb1", addr::LB1),
            ("lb2", addr::LB2),
            ("be", addr::BACKEND),
        ];
        for (role, ip) in nodes {
            self.attach(role, ip)?;
        }
        for node in Node::ALL {
            let ns = self.node_ns(node);
            // The tracked interface: a veth pair inside the node (production uses a dummy).
            run(&[
                "ip", "-n", &ns, "link", "add", TRACKED_IF, "type", "veth", "peer", "name", "trk0p",
            ])?;
            run(&["ip", "-n", &ns, "link", "set", "trk0p", "up"])?;
            run(&["ip", "-n", &ns, "link", "set", TRACKED_IF, "up"])?;
            // HAProxy binds the VIP on both nodes, also while the VIP lives on the other one.
            // (HAProxy 2.6 here has no `freebind` bind keyword.)
            self.sysctl(&ns, "net.ipv4.ip_nonlocal_bind", "1")?;
        }
        self.start_backend()?;
        for node in Node::ALL {
            self.write_haproxy_config(node)?;
            self.start_haproxy(node)?;
        }
        if opts.agent_notify || opts.daemon {
            for node in Node::ALL {
                self.write_agent_config(node, &crate::scenario::AgentConfig::default())?;
            }
        }
        if opts.daemon {
            for node in Node::ALL {
                self.start_daemon(node)?;
            }
        }
        self.write_notify_script(opts.agent_notify)?;
        for node in Node::ALL {
            self.write_keepalived_config(node, opts)?;
            self.start_keepalived(node)?;
        }
        self.wait_ready(opts.ready_timeout)
    }

    /// Connects namespace `role` to the bridge with a veth pair and gives it `ip`.
    pub(super) fn attach(&self, role: &str, ip: Ipv4Addr) -> Result<()> {
        let sw = self.ns("sw");
        let ns = self.ns(role);
        run(&[
            "ip", "-n", &sw, "link", "add", role, "type", "veth", "peer", "name", INGRESS_IF,
            "netns", &ns,
        ])?;
        run(&["ip", "-n", &sw, "link", "set", role, "master", "br0"])?;
        run(&["ip", "-n", &sw, "link", "set", role, "up"])?;
        let cidr = format!("{ip}/{}", addr::PREFIX_LEN);
        run(&["ip", "-n", &ns, "addr", "add", &cidr, "dev", INGRESS_IF])?;
        run(&["ip", "-n", &ns, "link", "set", INGRESS_IF, "up"])?;
        Ok(())
    }

    /// Adds one more client namespace (role `extra<n>`) on the bridge, e.g. for a client that will
    /// vanish and leave a zombie connection behind. Returns its namespace name.
    pub fn add_client(&mut self, n: u8) -> Result<String> {
        let role = format!("x{n}");
        run(&["ip", "netns", "add", &self.ns(&role)])?;
        run(&["ip", "-n", &self.ns(&role), "link", "set", "lo", "up"])?;
        self.attach(&role, Ipv4Addr::new(198, 18, 0, 30 + n))?;
        Ok(self.ns(&role))
    }

    /// Writes a sysctl inside a lab namespace.
    pub fn sysctl(&self, ns: &str, key: &str, value: &str) -> Result<()> {
        run(&[
            "ip",
            "netns",
            "exec",
            ns,
            "sysctl",
            "-q",
            "-w",
            &format!("{key}={value}"),
        ])?;
        Ok(())
    }

    /// Sets the tracked interface of a node down or up (what an operator's `ip link set dummy0 down`
    /// does in production).
    pub fn set_tracked(&self, node: Node, up: bool) -> Result<()> {
        let state = if up { "up" } else { "down" };
        run(&[
            "ip",
            "-n",
            &self.node_ns(node),
            "link",
            "set",
            TRACKED_IF,
            state,
        ])?;
        Ok(())
    }
}
