//! The configuration files a lab generates: HAProxy's, keepalived's and its notify script, and
//! the paths each node's files live at.

use super::*;

impl Lab {
    /// HAProxy's configuration file of a node.
    pub fn haproxy_config_path(&self, node: Node) -> PathBuf {
        self.dir.join(format!("haproxy-{node}.cfg"))
    }

    pub(super) fn write_haproxy_config(&self, node: Node) -> Result<()> {
        let text = haproxy_config(&self.dir, node);
        fs::write(self.haproxy_config_path(node), text)?;
        Ok(())
    }

    pub(super) fn notify_script(&self) -> PathBuf {
        self.dir.join("notify.sh")
    }

    /// Log of keepalived `notify` calls on a node: one line `unix-time TYPE NAME STATE PRIORITY`.
    pub fn notify_log(&self, node: Node) -> PathBuf {
        self.dir.join(format!("notify-{node}.log"))
    }

    pub(super) fn write_notify_script(&self, agent: bool) -> Result<()> {
        let path = self.notify_script();
        let mut text = format!(
            "#!/bin/sh\n# keepalived notify hook of the lab: records every state change so tests can observe it.\n\
             node=\"$1\"; shift\n\
             echo \"$(date +%s.%N) $*\" >> {dir}/notify-$node.log\n",
            dir = self.dir.display()
        );
        if agent {
            // Then what production runs: `drain-agent notify TYPE NAME STATE PRIORITY`.
            let bin = find_bin("drain-agent")?;
            text.push_str(&format!(
                "{bin} -c {dir}/agent-$node.yaml notify \"$@\" >> {dir}/agent-notify-$node.log 2>&1\n\
                 echo \"$(date +%s.%N) $* exit $?\" >> {dir}/agent-notify-$node.log\n",
                bin = bin.display(),
                dir = self.dir.display()
            ));
        }
        fs::write(&path, text)?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755))?;
        Ok(())
    }

    /// keepalived's configuration file of a node (what `start_keepalived` runs).
    pub fn keepalived_config_path(&self, node: Node) -> PathBuf {
        self.dir.join(format!("keepalived-{node}.conf"))
    }

    /// The daemon's control socket of a node.
    pub fn control_socket(&self, node: Node) -> PathBuf {
        self.dir.join(format!("ctl-{node}.sock"))
    }

    /// keepalived's `vrrp_notify_fifo` of a node.
    pub fn notify_fifo(&self, node: Node) -> PathBuf {
        self.dir.join(format!("fifo-{node}"))
    }

    /// The keepalived track file of a node (`track_file` block, weight 1); a missing file is 0.
    pub fn track_file(&self, node: Node) -> PathBuf {
        self.dir.join(format!("track-{node}"))
    }

    pub(super) fn write_keepalived_config(&self, node: Node, opts: &LabOptions) -> Result<()> {
        let mut text = keepalived_config(node, opts, &self.notify_script(), &self.track_file(node));
        if opts.daemon {
            // The ordered channel the daemon follows (keepalived creates the FIFO).
            text = text.replacen(
                "global_defs {\n",
                &format!(
                    "global_defs {{\n    vrrp_notify_fifo {}\n",
                    self.notify_fifo(node).display()
                ),
                1,
            );
        }
        fs::write(self.keepalived_config_path(node), text)?;
        Ok(())
    }

    /// keepalived's pid file of a node (its main process: SIGHUP reloads the configuration).
    pub fn keepalived_pid_file(&self, node: Node) -> PathBuf {
        self.dir.join(format!("keepalived-{node}.pid"))
    }
}

/// HAProxy configuration of a lab node: HTTP on VIP:80 and TCP echo on VIP:7, both to the backend.
pub fn haproxy_config(dir: &Path, node: Node) -> String {
    format!(
        "# drain-lab HAProxy for {node}
global
    # The fd hard limit here is 20000; HAProxy needs ~2 fds per connection.
    maxconn 8000
    # One thread per core, as HAProxy runs in production. With one thread, the node that takes
    # the whole 3000/s load during a drain sometimes stopped accepting for 1.4-2 s when other
    # work on the 2 cores peaked at the failover: its 4096-deep accept queue filled and the
    # kernel dropped SYNs (skb:kfree_skb TCP_LISTEN_OVERFLOW on VIP:80: docs/kernel-facts.md#k12).
    nbthread 2
    stats socket {dir}/haproxy-{node}.sock mode 600 level admin
    # The lab kills and restarts HAProxy like a crash would; never let it linger.
    hard-stop-after 30s

defaults
    timeout connect 3s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 30s
    timeout client-fin 10s
    timeout server-fin 10s

frontend http
    mode http
    bind {vip}:{http}
    default_backend web

backend web
    mode http
    server be1 {be}:{be_http}

frontend echo
    mode tcp
    bind {vip}:{echo}
    default_backend echo

backend echo
    mode tcp
    server be1 {be}:{be_echo}
",
        dir = dir.display(),
        vip = addr::VIP,
        http = addr::HTTP_PORT,
        echo = addr::ECHO_PORT,
        be = addr::BACKEND,
        be_http = addr::BACKEND_HTTP,
        be_echo = addr::BACKEND_ECHO,
    )
}

/// keepalived configuration of a lab node: one VRRP instance, VIP on eth0, tracking trk0.
pub fn keepalived_config(
    node: Node,
    opts: &LabOptions,
    notify: &Path,
    track_file: &Path,
) -> String {
    let (state, prio) = match (node, opts.nopreempt) {
        (Node::Lb1, false) => ("MASTER", 150),
        (Node::Lb2, false) => ("BACKUP", 100),
        // keepalived honours nopreempt only with an initial state of BACKUP.
        (Node::Lb1, true) => ("BACKUP", 150),
        (Node::Lb2, true) => ("BACKUP", 100),
    };
    let nopreempt = if opts.nopreempt {
        "    nopreempt\n"
    } else {
        ""
    };
    let extra: String = opts
        .extra_vrrp
        .iter()
        .map(|l| format!("    {l}\n"))
        .collect();
    format!(
        "# drain-lab keepalived for {node}
global_defs {{
    router_id {node}
    enable_script_security
    script_user root
    vrrp_garp_master_delay 1
    vrrp_garp_master_repeat 3
}}

# The agent's second failover trigger (and the demotion a returning preempting node gets):
# value x weight is added to the priority, -254 is FAULT, a missing file is 0.
track_file drain_agent {{
    file \"{track}\"
    weight 1
}}

vrrp_instance VI_1 {{
    state {state}
    interface {ingress}
    virtual_router_id 51
    priority {prio}
    advert_int {advert}
{nopreempt}    track_interface {{
        {tracked}
    }}
    track_file {{
        drain_agent
    }}
    virtual_ipaddress {{
        {vip}/{plen} dev {ingress}
    }}
    notify \"{notify} {node}\"
{extra}}}
",
        ingress = INGRESS_IF,
        advert = opts.advert_int,
        tracked = TRACKED_IF,
        vip = addr::VIP,
        plen = addr::PREFIX_LEN,
        notify = notify.display(),
        track = track_file.display(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nopreempt_config_starts_both_nodes_as_backup() {
        let opts = LabOptions {
            nopreempt: true,
            ..LabOptions::default()
        };
        let a = keepalived_config(Node::Lb1, &opts, Path::new("/n"), Path::new("/t"));
        let b = keepalived_config(Node::Lb2, &opts, Path::new("/n"), Path::new("/t"));
        assert!(
            a.contains("state BACKUP") && a.contains("nopreempt") && a.contains("priority 150")
        );
        assert!(b.contains("state BACKUP") && b.contains("priority 100"));
        let p = keepalived_config(
            Node::Lb1,
            &LabOptions::default(),
            Path::new("/n"),
            Path::new("/t"),
        );
        assert!(p.contains("state MASTER") && !p.contains("nopreempt"));
    }
}
