//! Real sshd instances inside lab namespaces, so automation (Ansible) reaches the nodes the way it
//! reaches production hosts: over SSH, with host keys checked.
//!
//! The namespaces share one filesystem, so everything an sshd reads or writes lives in a directory
//! of its own: host key, pid file, authorized keys, configuration. PAM is off (it would log the
//! session into the host's utmp/lastlog and needs no namespace of its own here); only the
//! controller's key is accepted, for root, and nothing else (no passwords, no forwarding).

use std::fs;
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::topology::{run, wait_until, Lab};

/// Where Debian's sshd is; it must be started by its absolute path (it re-executes itself).
pub const SSHD: &str = "/usr/sbin/sshd";
/// sshd's privilege-separation directory, which it requires to exist (systemd's ssh.service
/// creates it on a normal host).
const PRIVSEP_DIR: &str = "/run/sshd";

/// An ed25519 key pair written by `ssh-keygen`: the private key's path and the public key line.
#[derive(Clone, Debug)]
pub struct KeyPair {
    /// The private key file (mode 0600).
    pub private: PathBuf,
    /// `ssh-ed25519 AAAA... comment`.
    pub public: String,
}

/// Generates an ed25519 key pair at `path` (and `path.pub`), no passphrase.
pub fn keygen(path: &Path, comment: &str) -> Result<KeyPair> {
    let p = path.to_str().context("key path is not UTF-8")?;
    run(&[
        "ssh-keygen",
        "-q",
        "-t",
        "ed25519",
        "-N",
        "",
        "-C",
        comment,
        "-f",
        p,
    ])?;
    let public = fs::read_to_string(format!("{p}.pub"))?.trim().to_string();
    Ok(KeyPair {
        private: path.to_path_buf(),
        public,
    })
}

/// One node's sshd: its directory, address and host key.
#[derive(Clone, Debug)]
pub struct Sshd {
    /// The directory holding its configuration, host key, pid file and authorized keys.
    pub dir: PathBuf,
    /// The address it listens on (port 22).
    pub addr: Ipv4Addr,
    /// Its host key, public part (for the controller's known_hosts).
    pub host_key: String,
}

impl Sshd {
    /// The known_hosts line that makes the controller trust this node's host key, and only it.
    pub fn known_hosts_line(&self) -> String {
        let mut parts = self.host_key.split_whitespace();
        let (kind, key) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        format!("{} {kind} {key}", self.addr)
    }
}

/// sshd's configuration for a lab node: root by `authorized_key` only, on `addr:22`.
pub fn sshd_config(dir: &Path, addr: Ipv4Addr) -> String {
    let d = dir.display();
    format!(
        "# sshd of a drain-lab node: everything in {d}
ListenAddress {addr}:22
HostKey {d}/ssh_host_ed25519_key
PidFile {d}/sshd.pid
AuthorizedKeysFile {d}/authorized_keys
UsePAM no
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
StrictModes yes
UseDNS no
PrintMotd no
PrintLastLog no
X11Forwarding no
AllowTcpForwarding no
AllowAgentForwarding no
PermitTunnel no
# Ansible multiplexes its tasks over one connection per host and runs several hosts at once.
MaxSessions 30
MaxStartups 40:30:80
Subsystem sftp /usr/lib/openssh/sftp-server
LogLevel INFO
"
    )
}

/// Starts sshd in namespace `ns` (process name `name`, a child of the lab, killed at teardown),
/// listening on `addr`, accepting `authorized` for root, with its files in `dir`. Returns once
/// it listens.
pub fn start(
    lab: &mut Lab,
    name: &str,
    ns: &str,
    dir: &Path,
    addr: Ipv4Addr,
    authorized: &KeyPair,
) -> Result<Sshd> {
    if !Path::new(SSHD).is_file() {
        bail!("{SSHD} not found: apt-get install openssh-server");
    }
    if !Path::new(PRIVSEP_DIR).is_dir() {
        fs::create_dir_all(PRIVSEP_DIR)?;
        fs::set_permissions(PRIVSEP_DIR, fs::Permissions::from_mode(0o755))?;
    }
    fs::create_dir_all(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755))?;
    let host = keygen(&dir.join("ssh_host_ed25519_key"), name)?;
    let keys = dir.join("authorized_keys");
    fs::write(&keys, format!("{}\n", authorized.public))?;
    fs::set_permissions(&keys, fs::Permissions::from_mode(0o600))?;
    let cfg = dir.join("sshd_config");
    fs::write(&cfg, sshd_config(dir, addr))?;
    // Refuse a configuration sshd would reject before starting it (-t: test mode).
    lab.exec(ns, &[SSHD, "-t", "-f", cfg.to_str().unwrap()])
        .with_context(|| format!("sshd -t for {name}"))?;
    lab.spawn(name, ns, &[SSHD, "-D", "-e", "-f", cfg.to_str().unwrap()])?;
    let target = std::net::SocketAddrV4::new(addr, 22);
    wait_until(
        &format!("sshd of {name} listening on {target}"),
        Duration::from_secs(10),
        || {
            drain_test_support::netns::in_netns(ns, || {
                std::net::TcpStream::connect_timeout(&target.into(), Duration::from_millis(200))
                    .is_ok()
            })
            .unwrap_or(false)
        },
    )?;
    Ok(Sshd {
        dir: dir.to_path_buf(),
        addr,
        host_key: host.public,
    })
}
