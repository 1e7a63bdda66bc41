//! The real firewall adapter: runs iptables-restore/-save, ipset and nft in the calling thread's
//! network namespace (a child process inherits it), and asks nftables over netlink which tables
//! exist.

use std::path::PathBuf;
use std::time::Duration;

use super::{DivertTest, Firewall, FirewallError, MANGLE_BUILTINS};
use crate::sys::process::{self, ProcessError};

/// Where the real adapter finds its tools.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binaries {
    /// `iptables-restore` (iptables-nft).
    pub iptables_restore: PathBuf,
    /// `iptables-save` (iptables-nft).
    pub iptables_save: PathBuf,
    /// `ipset`.
    pub ipset: PathBuf,
    /// `nft`.
    pub nft: PathBuf,
}

impl Default for Binaries {
    /// Names looked up in PATH.
    fn default() -> Self {
        Binaries {
            iptables_restore: "iptables-restore".into(),
            iptables_save: "iptables-save".into(),
            ipset: "ipset".into(),
            nft: "nft".into(),
        }
    }
}

/// The real adapter: runs the tools in the network namespace of the calling thread (a child
/// process inherits it).
#[derive(Debug, Clone)]
pub struct SystemFirewall {
    binaries: Binaries,
    timeout: Duration,
    set_busy_wait: Duration,
}

impl Default for SystemFirewall {
    fn default() -> Self {
        Self::new()
    }
}

/// How long one iptables/ipset/nft call may take before it is killed and reported: far above the
/// ~10 ms they take, low enough that a wedged xtables lock does not hang a drain.
pub const TOOL_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a destroy waits for a set that another process is listing (`ipset list`, `ipset
/// save`: the listing holds the set until it is read to the end, docs/kernel-facts.md#k11).
/// Measured: 10-90 ms for a set of 5 000 entries listed in a loop; a set still held after this
/// long is reported (and stays in the journal for `undrain`).
pub const SET_BUSY_WAIT: Duration = Duration::from_secs(3);
/// The first pause before a busy destroy is retried; each next one doubles, up to
/// [`SET_BUSY_MAX_PAUSE`].
const SET_BUSY_FIRST_PAUSE: Duration = Duration::from_millis(10);
const SET_BUSY_MAX_PAUSE: Duration = Duration::from_millis(200);

/// When `e` is `ipset restore` refusing to destroy a set that is in use, and the line it names
/// in `text` is a `destroy`: that line's number (1-based), to retry from.
fn busy_destroy(e: &FirewallError, text: &str) -> Option<usize> {
    let FirewallError::Process(ProcessError::Failed { stderr, .. }) = e else {
        return None;
    };
    if !stderr.contains("in use by a kernel component") {
        return None;
    }
    let line = e.failed_line()?;
    let failed = text.lines().nth(line.checked_sub(1)?)?;
    failed.trim_start().starts_with("destroy ").then_some(line)
}

impl SystemFirewall {
    /// Tools from PATH, `TOOL_TIMEOUT` (10 s) per call.
    pub fn new() -> Self {
        SystemFirewall {
            binaries: Binaries::default(),
            timeout: TOOL_TIMEOUT,
            set_busy_wait: SET_BUSY_WAIT,
        }
    }

    /// Uses other tool paths.
    pub fn with_binaries(mut self, binaries: Binaries) -> Self {
        self.binaries = binaries;
        self
    }

    /// Kills a tool that runs longer than `timeout`.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Waits at most `wait` for a set to destroy that another process is listing (default
    /// `SET_BUSY_WAIT`, 3 s; zero reports the first refusal).
    pub fn with_set_busy_wait(mut self, wait: Duration) -> Self {
        self.set_busy_wait = wait;
        self
    }

    /// Runs `binary args` (feeding `stdin`) with this adapter's timeout.
    fn run(
        &self,
        binary: &std::path::Path,
        args: &[&str],
        stdin: Option<&str>,
    ) -> Result<String, FirewallError> {
        Ok(process::run(binary, args, stdin, self.timeout)?)
    }

    fn nft_json(&self, args: &[&str]) -> Result<Vec<serde_json::Value>, FirewallError> {
        let out = self.run(&self.binaries.nft, args, None)?;
        let bad = |detail: String| FirewallError::BadOutput {
            binary: self.binaries.nft.display().to_string(),
            detail,
        };
        let value: serde_json::Value =
            serde_json::from_str(&out).map_err(|e| bad(format!("not JSON: {e}")))?;
        match value.get("nftables").and_then(|v| v.as_array()) {
            Some(items) => Ok(items.clone()),
            None => Err(bad("no \"nftables\" array".into())),
        }
    }
}

/// Whether an `nft -j list table ip mangle` listing holds nothing but empty built-in base chains
/// with policy accept. Any rule, set, map, user chain, or changed policy means someone uses the
/// table and it must stay.
pub fn mangle_listing_is_empty(items: &[serde_json::Value]) -> bool {
    items.iter().all(|item| {
        let Some(object) = item.as_object() else {
            return false;
        };
        object.iter().all(|(kind, body)| match kind.as_str() {
            "metainfo" | "table" => true,
            "chain" => {
                let name = body.get("name").and_then(|v| v.as_str()).unwrap_or("");
                MANGLE_BUILTINS.contains(&name)
                    && body.get("hook").is_some()
                    && body.get("policy").and_then(|v| v.as_str()) == Some("accept")
            }
            _ => false,
        })
    })
}

/// `bin` as given if it names a path, else the first executable `bin` in `PATH`.
pub fn find_in_path(bin: &std::path::Path) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &std::path::Path| {
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if bin.components().count() > 1 {
        return executable(bin).then(|| bin.to_path_buf());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(bin))
        .find(|p| executable(p))
}

impl Firewall for SystemFirewall {
    fn require_tools(&mut self) -> Result<(), FirewallError> {
        let b = &self.binaries;
        for bin in [&b.iptables_restore, &b.iptables_save, &b.ipset, &b.nft] {
            if find_in_path(bin).is_none() {
                return Err(ProcessError::MissingBinary {
                    binary: bin.display().to_string(),
                }
                .into());
            }
        }
        Ok(())
    }

    fn restore(&mut self, text: &str) -> Result<(), FirewallError> {
        self.run(&self.binaries.iptables_restore, &["--noflush"], Some(text))
            .map(drop)
    }

    fn save_mangle(&mut self) -> Result<String, FirewallError> {
        self.run(&self.binaries.iptables_save, &["-t", "mangle"], None)
    }

    fn save_mangle_counters(&mut self) -> Result<String, FirewallError> {
        self.run(&self.binaries.iptables_save, &["-c", "-t", "mangle"], None)
    }

    fn ipset_list_terse(&mut self) -> Result<String, FirewallError> {
        self.run(&self.binaries.ipset, &["list", "-t"], None)
    }

    fn ipset_restore(&mut self, text: &str) -> Result<(), FirewallError> {
        // A set another process is listing cannot be destroyed until its listing ends
        // (docs/kernel-facts.md#k11): the destroy is retried from the line that failed (the
        // lines before it are done; `ipset restore` stops at the first error) until the listing
        // lets go or `set_busy_wait` runs out.
        let started = std::time::Instant::now();
        let mut pause = SET_BUSY_FIRST_PAUSE;
        let mut rest = text.to_string();
        loop {
            let err = match self.run(&self.binaries.ipset, &["restore"], Some(&rest)) {
                Ok(_) => return Ok(()),
                Err(e) => e,
            };
            let Some(from) = busy_destroy(&err, &rest) else {
                return Err(err);
            };
            if started.elapsed() + pause > self.set_busy_wait {
                return Err(err);
            }
            tracing::debug!(line = %err, "ipset: a set to destroy is held by a listing; retrying");
            std::thread::sleep(pause);
            pause = (pause * 2).min(SET_BUSY_MAX_PAUSE);
            rest = rest
                .lines()
                .skip(from - 1)
                .map(|l| format!("{l}\n"))
                .collect();
        }
    }

    fn ipset_names(&mut self) -> Result<Vec<String>, FirewallError> {
        let out = self.run(&self.binaries.ipset, &["list", "-n"], None)?;
        Ok(out
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect())
    }

    fn mangle_table_present(&mut self) -> Result<bool, FirewallError> {
        let tables =
            crate::sys::firewall::nftables::tables(crate::sys::firewall::nftables::NFPROTO_IPV4)
                .map_err(|source| FirewallError::Netlink {
                    what: "listing the nftables tables of family ip",
                    source,
                })?;
        Ok(tables.iter().any(|t| t == "mangle"))
    }

    fn drop_mangle_table_if_empty(&mut self) -> Result<bool, FirewallError> {
        if !self.mangle_table_present()? {
            return Ok(false);
        }
        let items = self.nft_json(&["-j", "list", "table", "ip", "mangle"])?;
        if !mangle_listing_is_empty(&items) {
            return Ok(false);
        }
        self.run(
            &self.binaries.nft,
            &["delete", "table", "ip", "mangle"],
            None,
        )?;
        Ok(true)
    }
}

/// Has `ipset restore` and `iptables-restore --test --noflush` parse the divert's exact texts,
/// committing nothing to the node.
///
/// `iptables-restore --test` resolves the names in `-m set` / `-j SET` in the kernel, and our sets
/// only exist while a drain runs, so run in the node's namespace it always failed ("Set DRAIN-80
/// doesn't exist"). Instead a fresh thread unshares a private, empty network namespace (the
/// namespace is per thread, and the tools started from that thread inherit it), creates the sets
/// there (ipsets are per namespace) and tests the rules; the namespace disappears with the
/// thread. The kernel features (TEE, SET, set match, multiport) are the same in every namespace.
pub fn test_transaction(sets: &str, rules: &str) -> DivertTest {
    let (sets, rules) = (sets.to_string(), rules.to_string());
    let worker = std::thread::spawn(move || {
        use nix::sched::{unshare, CloneFlags};
        match unshare(CloneFlags::CLONE_NEWNET) {
            Ok(()) => {}
            // Only CAP_NET_ADMIN (enough for a drain), not CAP_SYS_ADMIN: cannot test safely.
            Err(nix::errno::Errno::EPERM) => {
                return DivertTest::NotTested(
                    "a private network namespace to test the divert in needs CAP_SYS_ADMIN".into(),
                )
            }
            Err(e) => {
                return DivertTest::Rejected(format!(
                    "cannot create a private network namespace to test the divert in: {e}"
                ))
            }
        }
        let timeout = TOOL_TIMEOUT;
        for (bin, args, text) in [
            ("ipset", &["restore"][..], &sets),
            ("iptables-restore", &["--test", "--noflush"][..], &rules),
        ] {
            if let Err(e) = process::run(std::path::Path::new(bin), args, Some(text), timeout) {
                return DivertTest::Rejected(format!("{bin} rejects the divert: {e}"));
            }
        }
        DivertTest::Accepted
    });
    worker
        .join()
        .unwrap_or_else(|_| DivertTest::Rejected("the kernel check panicked".to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nft_listing_emptiness() {
        let parse = |s: &str| -> Vec<serde_json::Value> {
            serde_json::from_str::<serde_json::Value>(s).unwrap()["nftables"]
                .as_array()
                .unwrap()
                .clone()
        };
        // Captured from `nft -j list table ip mangle` after our chains were removed.
        let empty = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}}, {"table": {"family": "ip", "name": "mangle", "handle": 1}}, {"chain": {"family": "ip", "table": "mangle", "name": "PREROUTING", "handle": 11, "type": "filter", "hook": "prerouting", "prio": -150, "policy": "accept"}}]}"#;
        assert!(mangle_listing_is_empty(&parse(empty)));
        let drop_policy = empty.replace(r#""policy": "accept""#, r#""policy": "drop""#);
        assert!(!mangle_listing_is_empty(&parse(&drop_policy)));
        let user_chain = r#"{"nftables": [{"table": {"family": "ip", "name": "mangle", "handle": 1}}, {"chain": {"family": "ip", "table": "mangle", "name": "FOO", "handle": 1}}]}"#;
        assert!(!mangle_listing_is_empty(&parse(user_chain)));
        let rule = r#"{"nftables": [{"rule": {"family": "ip", "table": "mangle", "chain": "PREROUTING", "handle": 2, "expr": []}}]}"#;
        assert!(!mangle_listing_is_empty(&parse(rule)));
    }

    /// An `ipset` stand-in that refuses `destroy {busy}` (naming its line) on its first
    /// `busy_times` inputs that hold it, appending every input it reads to `calls` (one `--`
    /// line after each).
    fn busy_ipset(dir: &std::path::Path, busy: &str, busy_times: usize) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let bin = dir.join("ipset");
        let script = format!(
            "#!/bin/sh\nin=$(cat)\nprintf '%s\\n--\\n' \"$in\" >> '{calls}'\n\
             n=$(grep -c -- '^--$' '{calls}')\n\
             line=$(printf '%s\\n' \"$in\" | grep -n -x 'destroy {busy}' | cut -d: -f1)\n\
             if [ -n \"$line\" ] && [ \"$n\" -le {busy_times} ]; then\n\
             echo \"ipset v7.17: Error in line $line: Set cannot be destroyed: it is in use by a kernel component\" >&2\n\
             exit 1\nfi\n",
            calls = dir.join("calls").display()
        );
        std::fs::write(&bin, script).unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        bin
    }

    fn with_ipset(bin: PathBuf) -> SystemFirewall {
        SystemFirewall::new().with_binaries(Binaries {
            ipset: bin,
            ..Binaries::default()
        })
    }

    #[test]
    fn a_destroy_refused_while_a_set_is_listed_is_retried_from_the_line_that_failed() {
        let dir = tempfile::tempdir().unwrap();
        let mut fw = with_ipset(busy_ipset(dir.path(), "B", 2));
        fw.ipset_restore("destroy A\ndestroy B\ndestroy C\n")
            .unwrap();
        let calls = std::fs::read_to_string(dir.path().join("calls")).unwrap();
        // A was destroyed by the first call; B was refused twice, then B and C went.
        assert_eq!(
            calls,
            "destroy A\ndestroy B\ndestroy C\n--\ndestroy B\ndestroy C\n--\ndestroy B\ndestroy C\n--\n"
        );
    }

    #[test]
    fn a_set_held_longer_than_the_wait_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let mut fw = with_ipset(busy_ipset(dir.path(), "A", 1_000_000))
            .with_set_busy_wait(Duration::from_millis(50));
        let err = fw.ipset_restore("destroy A\n").unwrap_err();
        assert!(
            err.to_string().contains("in use by a kernel component"),
            "{err}"
        );
        let calls = std::fs::read_to_string(dir.path().join("calls")).unwrap();
        let tries = calls.matches("--\n").count();
        // 10 + 20 ms of pauses fit in 50 ms, the next 40 ms does not: at most three tries. Fewer
        // when the stand-in itself is slow (a loaded machine): the wait counts its run time too.
        assert!((1..=3).contains(&tries), "{tries} tries: {calls}");
    }

    #[test]
    fn only_a_busy_destroy_is_retried() {
        let refused = |stderr: &str| {
            FirewallError::Process(ProcessError::Failed {
                binary: "ipset".into(),
                args: "restore".into(),
                status: "exit code 1".into(),
                stderr: stderr.into(),
            })
        };
        let text = "flush A\ndestroy A\n";
        let busy = |line| {
            refused(&format!("ipset v7.17: Error in line {line}: Set cannot be destroyed: it is in use by a kernel component"))
        };
        assert_eq!(busy_destroy(&busy(2), text), Some(2));
        // The same words for a line that is not a destroy are the caller's business.
        assert_eq!(busy_destroy(&busy(1), text), None);
        // A line the text does not have, and any other refusal, are reported at once.
        assert_eq!(busy_destroy(&busy(3), text), None);
        let missing =
            refused("ipset v7.17: Error in line 2: The set with the given name does not exist");
        assert_eq!(busy_destroy(&missing, text), None);
    }

    #[test]
    fn missing_binary_is_its_own_error() {
        let mut fw = SystemFirewall::new().with_binaries(Binaries {
            iptables_save: "/nonexistent/iptables-save".into(),
            ..Binaries::default()
        });
        let err = fw.save_mangle().unwrap_err();
        assert!(err.is_missing_binary(), "{err}");
        assert!(
            err.to_string()
                .starts_with("/nonexistent/iptables-save: not found"),
            "{err}"
        );
    }
}
