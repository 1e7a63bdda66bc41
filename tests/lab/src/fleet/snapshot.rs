//! What the role or a playbook could change on a fleet's nodes, as text to compare before and
//! after.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Result;

use super::Fleet;
use crate::topology::run;

impl Fleet {
    /// Everything the role or a playbook could change on every node: the lab's host snapshot
    /// (firewall, sets, rules, routes, links, sysctls), the files under the node's root (path,
    /// mode, content hash; Ansible's temporary files and sshd's aside), keepalived's configuration
    /// and track file, and the processes in the node's namespace (sshd sessions aside).
    pub fn snapshot(&self) -> Result<BTreeMap<String, String>> {
        let mut all = BTreeMap::new();
        for n in &self.nodes {
            let lab = self.lab(n);
            let mut s = lab.host_snapshot(n.node)?;
            s.push_str("## files\n");
            let mut files = Vec::new();
            list_files(&n.root, &mut files)?;
            for extra in [lab.keepalived_config_path(n.node), lab.track_file(n.node)] {
                if extra.exists() {
                    files.push(extra);
                }
            }
            files.sort();
            for f in files {
                // sshd's files, Ansible's temporary files and the daemon's log are not state.
                if f.starts_with(n.root.join("ssh"))
                    || f.starts_with(n.remote_tmp())
                    || f.starts_with(n.root.join("log"))
                {
                    continue;
                }
                let meta = fs::symlink_metadata(&f)?;
                let hash = if meta.is_file() {
                    let out = run(&["sha256sum", f.to_str().unwrap()])?;
                    String::from_utf8_lossy(&out.stdout)
                        .split_whitespace()
                        .next()
                        .unwrap_or("")
                        .to_string()
                } else {
                    String::new()
                };
                let _ = writeln!(
                    s,
                    "{} {:o} {}",
                    f.display(),
                    meta.permissions().mode() & 0o7777,
                    hash
                );
            }
            s.push_str("## processes\n");
            let mut procs = namespace_processes(&lab.node_ns(n.node));
            procs.retain(|p| !p.starts_with("sshd"));
            procs.sort();
            for p in procs {
                s.push_str(&p);
                s.push('\n');
            }
            all.insert(n.name.clone(), s);
        }
        Ok(all)
    }
}

/// Every file and directory under `dir`, recursively (symlinks not followed).
fn list_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(());
    };
    for e in entries.flatten() {
        let p = e.path();
        out.push(p.clone());
        if e.file_type()?.is_dir() {
            list_files(&p, out)?;
        }
    }
    Ok(())
}

/// The lines only one of two snapshots has, `-` before and `+` after, for assertion messages.
pub fn snapshot_diff(before: &str, after: &str) -> String {
    let (b, a): (Vec<&str>, Vec<&str>) = (before.lines().collect(), after.lines().collect());
    let mut out = String::new();
    for l in b.iter().filter(|l| !a.contains(l)) {
        let _ = writeln!(out, "- {l}");
    }
    for l in a.iter().filter(|l| !b.contains(l)) {
        let _ = writeln!(out, "+ {l}");
    }
    out
}

/// Command lines of the processes in a network namespace.
pub fn namespace_processes(ns: &str) -> Vec<String> {
    let pids = Command::new("ip")
        .args(["netns", "pids", ns])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
        .unwrap_or_default();
    pids.split_whitespace()
        .filter_map(|p| fs::read(format!("/proc/{p}/cmdline")).ok())
        .map(|c| {
            String::from_utf8_lossy(&c)
                .split('\0')
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .filter(|c| !c.is_empty())
        .collect()
}
