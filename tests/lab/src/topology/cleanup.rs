//! Taking a lab down: its processes, namespaces and state directory, also what a killed run left
//! behind (recognised by the pid in its names).

use super::*;

impl Lab {
    /// Stops every process and removes every namespace and the state directory. Idempotent.
    pub fn teardown(&mut self) {
        if self.torn_down {
            return;
        }
        self.torn_down = true;
        for (_, child) in self.children.iter_mut() {
            let _ = child.kill();
        }
        for (_, mut child) in self.children.drain(..) {
            let _ = child.wait();
        }
        if std::thread::panicking() {
            self.print_log_tails();
            self.print_drop_counters();
        }
        let mut names: Vec<String> = ROLES.iter().map(|r| self.ns(r)).collect();
        names.extend(
            list_namespaces()
                .into_iter()
                .filter(|n| n.starts_with(&format!("{PREFIX}{}-", self.id))),
        );
        names.sort();
        names.dedup();
        for ns in names {
            remove_namespace(&ns);
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// How much of each process's log a failed test prints.
const LOG_TAIL_LINES: usize = 40;

impl Lab {
    /// Prints the end of every process log in the lab's directory (daemons, keepalived, HAProxy)
    /// to stderr, which the test harness shows for a failed test: the directory is removed next,
    /// and with it the only record of why a daemon did what it did.
    fn print_log_tails(&self) {
        let Ok(dir) = fs::read_dir(&self.dir) else {
            return;
        };
        let mut logs: Vec<PathBuf> = dir
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "log"))
            .collect();
        logs.sort();
        for path in logs {
            let Ok(text) = fs::read_to_string(&path) else {
                continue;
            };
            let lines: Vec<&str> = text.lines().collect();
            let from = lines.len().saturating_sub(LOG_TAIL_LINES);
            eprintln!(
                "--- {} (last {} of {} lines) ---",
                path.display(),
                lines.len() - from,
                lines.len()
            );
            for line in &lines[from..] {
                eprintln!("{line}");
            }
        }
    }
}

/// The kernel counters a failed test prints for each namespace, when not zero: where a packet
/// was dropped (a full accept queue, a full backlog, no route, a full conntrack table, a
/// device queue) or retransmitted, so a broken flow's cause can be named from the CI log alone.
const DROP_COUNTERS: &[&str] = &[
    "Drop", "Overflow", "Retrans", "Timeout", "Error", "Discard", "Fail", "Prune", "Collapse",
    "Abort", "Cookies", "Reset", "RST",
];

impl Lab {
    /// Prints, for every namespace of the lab, the nonzero `nstat` counters whose names say a
    /// packet was dropped, refused or retransmitted, `conntrack -S`'s nonzero drop counters and
    /// every link's nonzero drop and error counts.
    fn print_drop_counters(&self) {
        for role in ROLES {
            let ns = self.ns(role);
            let mut found = Vec::new();
            if let Ok(out) = self.exec_status(&ns, &["nstat", "-asz"]) {
                for line in String::from_utf8_lossy(&out.stdout).lines() {
                    let mut f = line.split_whitespace();
                    let (Some(name), Some(value)) = (f.next(), f.next()) else {
                        continue;
                    };
                    if value != "0" && DROP_COUNTERS.iter().any(|c| name.contains(c)) {
                        found.push(format!("{name}={value}"));
                    }
                }
            }
            if let Ok(out) = self.exec_status(&ns, &["conntrack", "-S"]) {
                // One line per CPU: summed.
                let mut sums = std::collections::BTreeMap::<&str, u64>::new();
                let text = String::from_utf8_lossy(&out.stdout);
                for (name, value) in text.split_whitespace().filter_map(|w| w.split_once('=')) {
                    if ["drop", "early_drop", "insert_failed", "error"].contains(&name) {
                        *sums.entry(name).or_default() += value.parse::<u64>().unwrap_or(0);
                    }
                }
                found.extend(
                    sums.iter()
                        .filter(|(_, v)| **v > 0)
                        .map(|(k, v)| format!("conntrack.{k}={v}")),
                );
            }
            if let Ok(out) = self.exec_status(&ns, &["ip", "-s", "-o", "link"]) {
                found.extend(link_drops(&String::from_utf8_lossy(&out.stdout)));
            }
            eprintln!("--- kernel drop counters in {ns} ---");
            eprintln!(
                "{}",
                if found.is_empty() {
                    "none".to_string()
                } else {
                    found.join(" ")
                }
            );
        }
    }
}

/// `ip -s -o link`'s nonzero RX and TX errors and drops, as `IFNAME.rx_dropped=N`.
fn link_drops(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    for line in text.lines() {
        let mut f = line.split_whitespace();
        let Some(name) = f.nth(1) else { continue };
        let name = name.trim_end_matches(':').split('@').next().unwrap_or(name);
        // `RX:  bytes packets errors dropped ...\    N N N N ...` and the same for TX.
        let words: Vec<&str> = line.split_whitespace().collect();
        for dir in ["RX:", "TX:"] {
            let Some(at) = words.iter().position(|w| *w == dir) else {
                continue;
            };
            let heads: Vec<&str> = words[at + 1..]
                .iter()
                .take_while(|w| !w.starts_with('\\'))
                .copied()
                .collect();
            let values: Vec<&str> = words[at + 1 + heads.len()..]
                .iter()
                .skip_while(|w| w.starts_with('\\'))
                .take(heads.len())
                .copied()
                .collect();
            for (head, value) in heads.iter().zip(values) {
                if matches!(*head, "errors" | "dropped" | "missed") && value != "0" {
                    found.push(format!("{name}.{}_{head}={value}", dir[..2].to_lowercase()));
                }
            }
        }
    }
    found
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// Kills every process still running in a namespace, then deletes it.
pub fn remove_namespace(ns: &str) {
    if !Path::new("/run/netns").join(ns).exists() {
        return;
    }
    for _ in 0..20 {
        let pids = Command::new("ip")
            .args(["netns", "pids", ns])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
            .unwrap_or_default();
        let pids: Vec<i32> = pids
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
        if pids.is_empty() {
            break;
        }
        for pid in pids {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = Command::new("ip")
        .args(["netns", "del", ns])
        .stderr(Stdio::null())
        .status();
}

/// Names of all network namespaces under /run/netns.
pub fn list_namespaces() -> Vec<String> {
    fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Removes what killed lab runs left behind: namespaces (and their processes) and state
/// directories whose creating process no longer exists. With `all`, removes every lab, live or not.
/// Returns the names removed.
pub fn cleanup_leftovers(all: bool) -> Result<Vec<String>> {
    let mut removed = Vec::new();
    for ns in list_namespaces() {
        if let Some(pid) = owner_pid(&ns) {
            if all || !pid_alive(pid) {
                remove_namespace(&ns);
                removed.push(ns);
            }
        }
    }
    if let Ok(d) = fs::read_dir(STATE_ROOT) {
        for e in d.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if let Some(pid) = owner_pid(&name) {
                if all || !pid_alive(pid) {
                    let _ = fs::remove_dir_all(e.path());
                    removed.push(e.path().display().to_string());
                }
            }
        }
    }
    Ok(removed)
}

/// `dl-<pid>-<n>-...` → pid.
fn owner_pid(name: &str) -> Option<i32> {
    name.strip_prefix(PREFIX)?.split('-').next()?.parse().ok()
}

fn pid_alive(pid: i32) -> bool {
    pid == std::process::id() as i32 || Path::new(&format!("/proc/{pid}")).exists()
}

/// Removes every lab created by process `pid` (namespaces, their processes, state directories).
pub fn cleanup_pid(pid: i32) -> Result<Vec<String>> {
    let prefix = format!("{PREFIX}{pid}-");
    let mut removed = Vec::new();
    for ns in list_namespaces()
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
    {
        remove_namespace(&ns);
        removed.push(ns);
    }
    if let Ok(d) = fs::read_dir(STATE_ROOT) {
        for e in d.flatten() {
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_pid_parses_lab_names() {
        assert_eq!(owner_pid("dl-1234-0-lb1"), Some(1234));
        assert_eq!(owner_pid("dl-99-12"), Some(99));
        assert_eq!(owner_pid("other-1-lb1"), None);
        assert_eq!(owner_pid("dl-x-lb1"), None);
    }

    #[test]
    fn link_drops_names_only_the_nonzero_drop_and_error_counts() {
        let text = "2: eth0@if9: <BROADCAST,UP> mtu 1500 qdisc noqueue\\    link/ether 02:00:00:00:00:01 brd ff:ff:ff:ff:ff:ff\\    RX:  bytes packets errors dropped  missed   mcast           \\          3928      39      0       7       0       0 \\    TX:  bytes packets errors dropped carrier collsns           \\          3928      39      2       0       0       0 \n\
                    1: lo: <LOOPBACK,UP> mtu 65536\\    RX:  bytes packets errors dropped  missed   mcast           \\          1 1 0 0 0 0 \\    TX:  bytes packets errors dropped carrier collsns           \\          1 1 0 0 0 0 \n";
        assert_eq!(link_drops(text), ["eth0.rx_dropped=7", "eth0.tx_errors=2"]);
    }
}
