//! What Ansible reads about a fleet: its inventory (group `lb_pairs`, one child group per pair,
//! every path of the drain_agent role inside the node's root) and its ansible.cfg (real SSH to
//! every node, host keys checked, the installed collection).

use std::fmt::Write as _;
use std::path::PathBuf;

use super::Fleet;
use crate::topology::{addr, find_bin, Node, INGRESS_IF, TRACKED_IF};

impl Fleet {
    /// The inventory file.
    pub fn inventory_path(&self) -> PathBuf {
        self.dir.join("inventory.yml")
    }

    pub(super) fn ansible_cfg(&self) -> String {
        let d = self.dir.display();
        format!(
            "# ansible.cfg of drain-lab fleet {id}: real SSH to every node, host keys checked.
[defaults]
inventory = {d}/inventory.yml
forks = 4
timeout = 20
host_key_checking = True
retry_files_enabled = False
interpreter_python = /usr/bin/python3
local_tmp = {d}/ansible-home/tmp
collections_path = {d}/collections
nocolor = True
stdout_callback = default
callbacks_enabled =

[ssh_connection]
pipelining = True
ssh_args = -F none -o BatchMode=yes -o IdentitiesOnly=yes -o IdentityFile={d}/controller_key -o UserKnownHostsFile={d}/known_hosts -o StrictHostKeyChecking=yes -o ControlMaster=auto -o ControlPersist=120s
control_path_dir = {d}/cp
",
            id = self.id
        )
    }

    /// The Ansible inventory of the fleet: group `lb_pairs` with one child group per pair,
    /// every path of the drain_agent role inside the node's root.
    pub fn inventory(&self) -> String {
        let bin = find_bin("drain-agent")
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| "target/release/drain-agent".into());
        let mut s = format!(
            "# Ansible inventory of drain-lab fleet {id} (written by tests/lab/src/fleet.rs).
all:
  vars:
    ansible_user: root
    ansible_python_interpreter: /usr/bin/python3
  children:
    lb_pairs:
      vars:
        drain_agent_binary_src: {bin}
        drain_agent_vips:
          - address: {vip}
            ports: [{http}, {echo}]
            prefix_length: {plen}
        drain_agent_ingress_interface: {ingress}
        drain_agent_tracked_interface: {tracked}
        drain_agent_service_manager: start-stop-daemon
        drain_agent_vrrp_virtual_router_id: 51
        drain_agent_vrrp_nopreempt: true
        drain_agent_drain_deadline: 30s
        drain_agent_idle_threshold: 2s
        drain_agent_extra_config:
          drain:
            poll_interval: 100ms
            rollback_grace: 5s
          peer_probe:
            interval: 200ms
            timeout: 200ms
            failures: 2
        haproxy_restart_method: pidfile
      children:
",
            id = self.id,
            vip = addr::VIP,
            http = addr::HTTP_PORT,
            echo = addr::ECHO_PORT,
            plen = addr::PREFIX_LEN,
            ingress = INGRESS_IF,
            tracked = TRACKED_IF,
        );
        for (pair, lab) in self.labs.iter().enumerate() {
            let _ = writeln!(s, "        pair{}:", pair + 1);
            let _ = writeln!(
                s,
                "          vars:\n            drain_agent_pair: pair{}",
                pair + 1
            );
            let _ = writeln!(s, "          hosts:");
            for n in self.nodes.iter().filter(|n| n.pair == pair) {
                let r = n.root.display();
                let _ = write!(
                    s,
                    "            {name}:
              ansible_host: {mgmt}
              ansible_remote_tmp: {tmp}
              drain_agent_peer: {peer}
              drain_agent_vrrp_priority: {prio}
              drain_agent_vrrp_router_id: {node}
              drain_agent_binary_path: {r}/sbin/drain-agent
              drain_agent_config_path: {r}/etc/drain-agent.yaml
              drain_agent_state_dir: {r}/state
              drain_agent_track_file: {track}
              drain_agent_socket_path: {r}/run/control.sock
              drain_agent_unit_path: {r}/systemd/drain-agent.service
              drain_agent_log_path: {r}/log/drain-agent.log
              drain_agent_pid_file: {r}/run/drain-agent.pid
              drain_agent_keepalived_conf_path: {kconf}
              drain_agent_keepalived_pid_file: {kpid}
              drain_agent_keepalived_fifo: {r}/run/keepalived-vrrp-notify.fifo
              haproxy_config: {hconf}
              haproxy_pid_file: {hpid}
              haproxy_stats_socket: {hsock}
",
                    name = n.name,
                    mgmt = n.mgmt,
                    tmp = n.remote_tmp().display(),
                    peer = n.node.peer().addr(),
                    prio = if n.node == Node::Lb1 { 150 } else { 100 },
                    node = n.node,
                    track = lab.track_file(n.node).display(),
                    kconf = lab.keepalived_config_path(n.node).display(),
                    kpid = lab.keepalived_pid_file(n.node).display(),
                    hconf = lab.haproxy_config_path(n.node).display(),
                    hpid = n.haproxy_pid_file().display(),
                    hsock = lab.dir.join(format!("haproxy-{}.sock", n.node)).display(),
                );
            }
        }
        s
    }
}
