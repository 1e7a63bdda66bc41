//! The firewall adapter: a small trait over the four tools the divert needs, the real
//! implementation that runs them, a recording fake, and the install / verify / withdraw / remove
//! sequences written once against the trait.
//!
//! The texts themselves come from [`crate::plan`]; this module only moves them to the kernel and
//! reads the result back.
//!
//! Facts this module depends on, measured with iptables-nft 1.8.9 in scratch namespaces:
//! - `iptables-restore --noflush` applies a table fragment as one transaction: all or nothing.
//! - A `:CHAIN - [0:0]` line in `--noflush` mode *flushes* an existing chain of that name without
//!   complaint, so [`install`] refuses to start when one of our chains already exists.
//! - `ipset restore` is *not* transactional: the lines before a failing one stay applied. Hence
//!   the conflict check before creating, and one call per set so that a failure leaves a known
//!   list of sets to destroy.
//! - A namespace that never had a mangle table has no `table ip mangle` in nftables, yet
//!   `iptables-save -t mangle` still prints a `*mangle` section with the five built-in chains; a
//!   plain `iptables-save` prints nothing for it. So presence is asked of nftables (over netlink,
//!   [`crate::nftables`]), not of iptables.
//! - Installing creates the table; removing our chains leaves `table ip mangle` with an empty
//!   PREROUTING base chain behind, so `iptables-save` would differ from before. If the table was
//!   absent before, [`remove`] drops it again, but only while it holds nothing but empty
//!   built-in chains with policy accept.
//! - `nft delete chain` on a base chain succeeds even when the chain holds rules, so emptiness
//!   must be checked from a listing before `nft delete table`; a rule added between the listing
//!   and the delete would be lost (a race the agent accepts: it holds the node's drain lock, and
//!   nothing else is expected to start using the mangle table mid-drain).

use std::collections::{BTreeMap, VecDeque};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::plan::sets::DivertCounters;
use crate::plan::{DivertPlan, Phase, ReadBackError};

/// Errors of the firewall adapter. Display is one line.
#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    /// A tool is not installed (or not in PATH).
    #[error(
        "{binary}: not found; install the package that provides it (iptables, ipset, nftables)"
    )]
    MissingBinary {
        /// The binary as configured.
        binary: String,
    },
    /// A tool could not be started for another reason.
    #[error("{binary}: cannot run: {source}")]
    Spawn {
        /// The binary.
        binary: String,
        /// Why.
        source: std::io::Error,
    },
    /// A tool ran and failed.
    #[error("{binary} {args}: {status}: {stderr}")]
    Failed {
        /// The binary.
        binary: String,
        /// Its arguments, space-separated.
        args: String,
        /// "exit code N" or "killed by signal N".
        status: String,
        /// The first non-empty line of its standard error.
        stderr: String,
    },
    /// A tool did not finish in time and was killed.
    #[error("{binary} {args}: no result after {after:?}; killed")]
    Timeout {
        /// The binary.
        binary: String,
        /// Its arguments.
        args: String,
        /// The timeout.
        after: Duration,
    },
    /// Asking the kernel over netlink failed.
    #[error("{what}: {source}")]
    Netlink {
        /// What was asked.
        what: &'static str,
        /// Why it failed.
        source: std::io::Error,
    },
    /// A tool's output could not be understood.
    #[error("{binary}: unexpected output: {detail}")]
    BadOutput {
        /// The binary.
        binary: String,
        /// What was wrong.
        detail: String,
    },
    /// Sets named like ours (`P-<port>`) exist already; they are not ours to take over.
    #[error("ipset(s) {} already exist; refusing to install over sets this agent did not create (remove them, or change firewall.chain_prefix)", names.join(", "))]
    SetsExist {
        /// The conflicting names.
        names: Vec<String>,
    },
    /// Chains with our names exist already in table mangle.
    #[error("chain(s) {} already exist in table mangle; refusing to install over them (a left-over from a crash is removed by the agent's recovery)", chains.join(", "))]
    ChainsExist {
        /// The conflicting chains.
        chains: Vec<String>,
    },
    /// After a change, `iptables-save` does not show what it should.
    #[error("read-back after {phase:?}: {source}")]
    ReadBack {
        /// The phase that was checked.
        phase: Phase,
        /// What differs.
        source: ReadBackError,
    },
    /// Something of ours is still there after a removal.
    #[error("still present after removal: {}", leftovers.join(", "))]
    Leftovers {
        /// Rule lines and set names still present.
        leftovers: Vec<String>,
    },
    /// Install failed and undoing its partial work failed too.
    #[error("{cause}; undoing the partial install also failed: {}", join(cleanup))]
    InstallCleanup {
        /// Why install failed.
        cause: Box<FirewallError>,
        /// What went wrong while undoing it.
        cleanup: Vec<FirewallError>,
    },
}

fn join(errors: &[FirewallError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Everything that went wrong during a removal, which keeps going past each error.
#[derive(Debug, thiserror::Error)]
#[error("firewall removal: {}", join(errors))]
pub struct TeardownError {
    /// The errors, in the order they happened.
    pub errors: Vec<FirewallError>,
}

/// The operations the agent needs from iptables, ipset and nft.
pub trait Firewall {
    /// Fails with [`FirewallError::MissingBinary`] unless every tool a whole divert cycle uses is
    /// there, so a missing one stops a drain before anything is changed (`nft` is needed only to
    /// drop the mangle table at the very end, too late to find out then).
    fn require_tools(&mut self) -> Result<(), FirewallError> {
        Ok(())
    }
    /// Applies an `iptables-restore --noflush` text as one transaction.
    fn restore(&mut self, text: &str) -> Result<(), FirewallError>;
    /// Returns `iptables-save -t mangle`.
    fn save_mangle(&mut self) -> Result<String, FirewallError>;
    /// Returns `iptables-save -c -t mangle` (each rule with its `[packets:bytes]`).
    fn save_mangle_counters(&mut self) -> Result<String, FirewallError>;
    /// Applies an `ipset restore` text (not transactional).
    fn ipset_restore(&mut self, text: &str) -> Result<(), FirewallError>;
    /// Names of all ipsets (`ipset list -n`).
    fn ipset_names(&mut self) -> Result<Vec<String>, FirewallError>;
    /// Every set's header and fill, without members (`ipset list -t`).
    fn ipset_list_terse(&mut self) -> Result<String, FirewallError>;
    /// Whether nftables has a `table ip mangle`.
    fn mangle_table_present(&mut self) -> Result<bool, FirewallError>;
    /// Deletes `table ip mangle` if it holds nothing but empty built-in chains with policy
    /// accept; returns whether it did.
    fn drop_mangle_table_if_empty(&mut self) -> Result<bool, FirewallError>;
}

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
}

impl Default for SystemFirewall {
    fn default() -> Self {
        Self::new()
    }
}

/// The chains iptables-nft creates as base chains of the mangle table.
const MANGLE_BUILTINS: [&str; 5] = ["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"];

impl SystemFirewall {
    /// Tools from PATH, 10 s timeout per call.
    pub fn new() -> Self {
        SystemFirewall {
            binaries: Binaries::default(),
            timeout: Duration::from_secs(10),
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

    /// Runs `binary args`, feeding `stdin`, and returns its standard output.
    fn run(
        &self,
        binary: &PathBuf,
        args: &[&str],
        stdin: Option<&str>,
    ) -> Result<String, FirewallError> {
        let name = binary.display().to_string();
        let args_text = args.join(" ");
        let mut child = Command::new(binary)
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| match source.kind() {
                std::io::ErrorKind::NotFound => FirewallError::MissingBinary {
                    binary: name.clone(),
                },
                _ => FirewallError::Spawn {
                    binary: name.clone(),
                    source,
                },
            })?;
        let mut child_stdin = child.stdin.take();
        let mut child_stdout = child.stdout.take().expect("stdout is piped");
        let mut child_stderr = child.stderr.take().expect("stderr is piped");
        let deadline = Instant::now() + self.timeout;
        // Feed and drain the pipes on their own threads so a tool blocked on a full pipe cannot
        // stall us past the timeout; the threads end when the child exits or is killed.
        let (status, out, err) = std::thread::scope(|scope| {
            if let (Some(mut pipe), Some(input)) = (child_stdin.take(), stdin) {
                scope.spawn(move || {
                    // A tool that exits early closes the pipe; its exit status tells why.
                    let _ = pipe.write_all(input.as_bytes());
                });
            }
            let out = scope.spawn(move || {
                let mut buf = Vec::new();
                let _ = child_stdout.read_to_end(&mut buf);
                buf
            });
            let err = scope.spawn(move || {
                let mut buf = Vec::new();
                let _ = child_stderr.read_to_end(&mut buf);
                buf
            });
            let status = loop {
                match child.try_wait() {
                    Ok(Some(status)) => break Ok(status),
                    Ok(None) if Instant::now() >= deadline => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break Err(());
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(2)),
                    Err(_) => {
                        let _ = child.kill();
                        break child.wait().map_err(|_| ());
                    }
                }
            };
            (
                status,
                out.join().unwrap_or_default(),
                err.join().unwrap_or_default(),
            )
        });
        let status = status.map_err(|()| FirewallError::Timeout {
            binary: name.clone(),
            args: args_text.clone(),
            after: self.timeout,
        })?;
        if !status.success() {
            use std::os::unix::process::ExitStatusExt;
            let status = match (status.code(), status.signal()) {
                (Some(code), _) => format!("exit code {code}"),
                (None, Some(signal)) => format!("killed by signal {signal}"),
                (None, None) => "failed".to_string(),
            };
            let stderr = String::from_utf8_lossy(&err);
            let first = stderr
                .lines()
                .map(str::trim)
                .find(|l| !l.is_empty())
                .unwrap_or("(no error output)");
            return Err(FirewallError::Failed {
                binary: name,
                args: args_text,
                status,
                stderr: first.to_string(),
            });
        }
        String::from_utf8(out).map_err(|_| FirewallError::BadOutput {
            binary: name,
            detail: "not UTF-8".into(),
        })
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
                return Err(FirewallError::MissingBinary {
                    binary: bin.display().to_string(),
                });
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
        self.run(&self.binaries.ipset, &["restore"], Some(text))
            .map(drop)
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
        let tables = crate::nftables::tables(crate::nftables::NFPROTO_IPV4).map_err(|source| {
            FirewallError::Netlink {
                what: "listing the nftables tables of family ip",
                source,
            }
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

/// What [`prepare`] observed before anything was changed; the caller journals it, hands it to
/// [`apply_install`], and hands `mangle_table_was_present` back to [`remove`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstallReceipt {
    /// Whether `table ip mangle` existed before the install created it.
    pub mangle_table_was_present: bool,
}

/// Installs the divert all-or-nothing: [`prepare`], then [`apply_install`].
pub fn install(fw: &mut dyn Firewall, plan: &DivertPlan) -> Result<InstallReceipt, FirewallError> {
    let receipt = prepare(fw, plan)?;
    apply_install(fw, plan, &receipt)?;
    Ok(receipt)
}

/// Everything the install must know before it changes anything: whether the mangle table exists
/// (so removal knows whether to drop it again), and that none of our sets or chains exists (a
/// set may belong to something else; a `:CHAIN` line in `--noflush` mode would silently flush an
/// existing chain). Changes nothing.
pub fn prepare(fw: &mut dyn Firewall, plan: &DivertPlan) -> Result<InstallReceipt, FirewallError> {
    fw.require_tools()?;
    let mangle_table_was_present = fw.mangle_table_present()?;
    let conflicting = plan.existing_sets(&fw.ipset_names()?);
    if !conflicting.is_empty() {
        return Err(FirewallError::SetsExist { names: conflicting });
    }
    let chains = plan.existing_chains(&fw.save_mangle()?);
    if !chains.is_empty() {
        return Err(FirewallError::ChainsExist { chains });
    }
    Ok(InstallReceipt {
        mangle_table_was_present,
    })
}

/// Creates the sets (one `ipset restore`), applies the rules in one transaction and reads them
/// back. On any failure, undoes what it did and returns the cause.
pub fn apply_install(
    fw: &mut dyn Firewall,
    plan: &DivertPlan,
    receipt: &InstallReceipt,
) -> Result<(), FirewallError> {
    let undo = |fw: &mut dyn Firewall, cause: FirewallError| {
        let cleanup = match remove(fw, plan, !receipt.mangle_table_was_present) {
            Ok(()) => return cause,
            Err(teardown) => teardown.errors,
        };
        FirewallError::InstallCleanup {
            cause: Box::new(cause),
            cleanup,
        }
    };
    // Sets first: a rule naming a missing set is rejected. All in one `ipset restore`, which is
    // not transactional: it stops at the first failing line and keeps the lines before it, and
    // names that line ("Error in line N"), so exactly the sets those lines created are ours to
    // destroy (a set of one of our names that appeared meanwhile, the usual cause, is not).
    let create = plan.ipset_create();
    if let Err(cause) = fw.ipset_restore(&create) {
        let created: Vec<String> = match failed_line(&cause) {
            Some(n) => create
                .lines()
                .take(n.saturating_sub(1))
                .filter_map(DivertPlan::created_by)
                .map(String::from)
                .collect(),
            // Killed, or a message we do not know: every set of the plan that exists now was
            // made by this call, since [`prepare`] saw none of them (the drain lock keeps other
            // drain-agent runs out).
            None => match fw.ipset_names() {
                Ok(now) => plan.existing_sets(&now),
                Err(e) => {
                    return Err(FirewallError::InstallCleanup {
                        cause: Box::new(cause),
                        cleanup: vec![e],
                    })
                }
            },
        };
        let Some(destroy) = plan.ipset_destroy_observed(&created) else {
            return Err(cause);
        };
        return Err(match fw.ipset_restore(&destroy) {
            Ok(()) => cause,
            Err(e) => FirewallError::InstallCleanup {
                cause: Box::new(cause),
                cleanup: vec![e],
            },
        });
    }
    if let Err(cause) = fw.restore(&plan.install_rules()) {
        return Err(undo(fw, cause));
    }
    if let Err(cause) = verify(fw, plan, Phase::Installed) {
        return Err(undo(fw, cause));
    }
    Ok(())
}

/// The line `ipset restore` reports as the one that failed (`… Error in line N: …`).
fn failed_line(e: &FirewallError) -> Option<usize> {
    let FirewallError::Failed { stderr, .. } = e else {
        return None;
    };
    let rest = &stderr[stderr.find("Error in line ")? + "Error in line ".len()..];
    rest.split(':').next()?.trim().parse().ok()
}

/// Seals the divert at the end of the drain (an unrecorded SYN is dropped from now on instead of
/// starting a local flow) and verifies.
pub fn seal(fw: &mut dyn Firewall, plan: &DivertPlan) -> Result<(), FirewallError> {
    fw.restore(&plan.seal_rules())?;
    verify(fw, plan, Phase::Sealed)
}

/// Reads the divert's packet counters.
pub fn counters(fw: &mut dyn Firewall, plan: &DivertPlan) -> Result<DivertCounters, FirewallError> {
    Ok(plan.counters(&fw.save_mangle_counters()?))
}

/// Reads `iptables-save -t mangle` back and checks it shows exactly what `phase` should.
pub fn verify(fw: &mut dyn Firewall, plan: &DivertPlan, phase: Phase) -> Result<(), FirewallError> {
    let saved = fw.save_mangle()?;
    plan.check_read_back(phase, &saved)
        .map_err(|source| FirewallError::ReadBack { phase, source })
}

/// Stops diverting new flows (flows already diverted keep going to the peer) and verifies.
pub fn withdraw(fw: &mut dyn Firewall, plan: &DivertPlan) -> Result<(), FirewallError> {
    fw.restore(&plan.withdraw_rules())?;
    verify(fw, plan, Phase::Withdrawn)
}

/// Removes every rule, chain and set of ours that is present (from any earlier configuration
/// with the same prefix too), then, if `drop_mangle_table` (the table was absent before the
/// install), drops the mangle table if it is empty. Keeps going past each error, checks that
/// nothing of ours is left, and reports every error.
pub fn remove(
    fw: &mut dyn Firewall,
    plan: &DivertPlan,
    drop_mangle_table: bool,
) -> Result<(), TeardownError> {
    let mut errors = Vec::new();
    match fw.save_mangle() {
        Ok(saved) => {
            if let Some(text) = plan.remove_rules_observed(&saved) {
                if let Err(e) = fw.restore(&text) {
                    errors.push(e);
                }
            }
        }
        Err(e) => errors.push(e),
    }
    // Sets after rules: a set still referenced by a rule cannot be destroyed.
    match fw.ipset_names() {
        Ok(names) => {
            if let Some(text) = plan.ipset_destroy_observed(&names) {
                if let Err(e) = fw.ipset_restore(&text) {
                    errors.push(e);
                }
            }
        }
        Err(e) => errors.push(e),
    }
    if drop_mangle_table {
        if let Err(e) = fw.drop_mangle_table_if_empty() {
            errors.push(e);
        }
    }
    let mut leftovers = Vec::new();
    match fw.save_mangle() {
        Ok(saved) => leftovers.extend(plan.owned_lines(&saved)),
        Err(e) => errors.push(e),
    }
    match fw.ipset_names() {
        Ok(names) => {
            if let Some(text) = plan.ipset_destroy_observed(&names) {
                leftovers.extend(text.lines().map(|l| l.replace("destroy ", "ipset ")));
            }
        }
        Err(e) => errors.push(e),
    }
    if !leftovers.is_empty() {
        errors.push(FirewallError::Leftovers { leftovers });
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(TeardownError { errors })
    }
}

/// A call made to [`FakeFirewall`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FirewallCall {
    /// [`Firewall::restore`] with its text.
    Restore(String),
    /// [`Firewall::save_mangle`].
    SaveMangle,
    /// [`Firewall::save_mangle_counters`].
    SaveMangleCounters,
    /// [`Firewall::ipset_restore`] with its text.
    IpsetRestore(String),
    /// [`Firewall::ipset_names`].
    IpsetNames,
    /// [`Firewall::ipset_list_terse`].
    IpsetListTerse,
    /// [`Firewall::mangle_table_present`].
    MangleTablePresent,
    /// [`Firewall::drop_mangle_table_if_empty`].
    DropMangleTableIfEmpty,
}

/// Which operation an injected failure hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum FakeOp {
    /// [`Firewall::restore`].
    Restore,
    /// [`Firewall::save_mangle`].
    SaveMangle,
    /// [`Firewall::save_mangle_counters`].
    SaveMangleCounters,
    /// [`Firewall::ipset_restore`].
    IpsetRestore,
    /// [`Firewall::ipset_names`].
    IpsetNames,
    /// [`Firewall::ipset_list_terse`].
    IpsetListTerse,
    /// [`Firewall::mangle_table_present`].
    MangleTablePresent,
    /// [`Firewall::drop_mangle_table_if_empty`].
    DropMangleTableIfEmpty,
}

/// A fake firewall for tests without root: records every call, can fail chosen calls, and
/// models the kernel state well enough for the texts [`crate::plan`] writes: restore transactions
/// (`:C`, `-A`, `-I`, `-D`, `-F`, `-X`, all-or-nothing; `:C` flushes an existing chain as the
/// real one does), ipset `create`/`add`/`destroy` of hash and list sets with their fill (line by
/// line, *not* transactional, naming the failing line, as the real one), references to missing
/// sets or chains, the mangle table's presence, and the rules' packet counters. [`FakeFirewall::syns`]
/// plays SYNs through the rules the way the kernel would for the shapes the plan writes.
#[derive(Debug, Default)]
pub struct FakeFirewall {
    /// Every call, in order.
    pub calls: Vec<FirewallCall>,
    failures: BTreeMap<FakeOp, VecDeque<Option<FirewallError>>>,
    state: FakeState,
    syns_played: BTreeMap<u16, u64>,
}

#[derive(Debug, Clone, Default)]
struct FakeState {
    table_present: bool,
    /// Built-in chains' rules (only those that ever had a rule; the rest are implicitly empty).
    builtin: BTreeMap<String, Vec<String>>,
    /// User chains' rules, sorted by name as iptables-save lists them.
    user: BTreeMap<String, Vec<String>>,
    sets: Vec<String>,
    /// What each set is and holds.
    set_info: BTreeMap<String, FakeSet>,
    /// Packet counters by rule line (`-A CHAIN spec`).
    counters: BTreeMap<String, u64>,
}

/// A set in the fake.
#[derive(Debug, Clone)]
enum FakeSet {
    Hash {
        hashsize: u64,
        maxelem: u64,
        entries: u64,
    },
    List {
        members: Vec<String>,
    },
}

/// Targets that are extensions, not chains.
const TARGET_EXTENSIONS: [&str; 9] = [
    "ACCEPT", "DROP", "RETURN", "MARK", "TEE", "SET", "CONNMARK", "LOG", "REJECT",
];

impl FakeFirewall {
    /// An empty namespace: no mangle table, no sets.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes the next call of `op` fail with `error` (queued: several calls fail in order).
    pub fn fail_next(&mut self, op: FakeOp, error: FirewallError) -> &mut Self {
        self.failures.entry(op).or_default().push_back(Some(error));
        self
    }

    /// Lets `skip` calls of `op` succeed, then fails the next one with `error`.
    pub fn fail_later(&mut self, op: FakeOp, skip: usize, error: FirewallError) -> &mut Self {
        let queue = self.failures.entry(op).or_default();
        queue.extend(std::iter::repeat_with(|| None).take(skip));
        queue.push_back(Some(error));
        self
    }

    /// SYNs played to `port` so far ([`FakeFirewall::syns`]).
    pub fn syns_played(&self, port: u16) -> u64 {
        self.syns_played.get(&port).copied().unwrap_or(0)
    }

    /// Whether `table ip mangle` exists now.
    pub fn mangle_table_exists(&self) -> bool {
        self.state.table_present
    }

    /// Names of the sets that exist now.
    pub fn sets(&self) -> &[String] {
        &self.state.sets
    }

    fn begin(&mut self, op: FakeOp, call: FirewallCall) -> Result<(), FirewallError> {
        self.calls.push(call);
        match self.failures.get_mut(&op).and_then(VecDeque::pop_front) {
            Some(Some(e)) => Err(e),
            _ => Ok(()),
        }
    }

    fn failed(tool: &str, line: usize, what: String) -> FirewallError {
        FirewallError::Failed {
            binary: tool.into(),
            args: "(fake)".into(),
            status: "exit code 1".into(),
            stderr: format!("line {line}: {what}"),
        }
    }

    /// What `iptables-save -t mangle` would print now, without recording a call.
    pub fn mangle_text(&self) -> String {
        let s = &self.state;
        let mut out = vec!["*mangle".to_string()];
        // Like the real iptables-save -t mangle, built-ins are listed even without a table.
        out.extend(MANGLE_BUILTINS.iter().map(|b| format!(":{b} ACCEPT [0:0]")));
        out.extend(s.user.keys().map(|c| format!(":{c} - [0:0]")));
        for b in MANGLE_BUILTINS {
            for rule in s.builtin.get(b).into_iter().flatten() {
                out.push(format!("-A {b} {rule}"));
            }
        }
        for (c, rules) in &s.user {
            out.extend(rules.iter().map(|r| format!("-A {c} {r}")));
        }
        out.push("COMMIT".into());
        out.into_iter().map(|l| l + "\n").collect()
    }

    /// What `ipset list -t` would print now, without recording a call.
    pub fn ipset_terse_text(&self) -> String {
        let mut out = String::new();
        for name in &self.state.sets {
            match &self.state.set_info[name] {
                FakeSet::Hash {
                    hashsize,
                    maxelem,
                    entries,
                } => out.push_str(&format!(
                    "Name: {name}\nType: hash:ip,port,ip\nRevision: 6\nHeader: family inet hashsize {hashsize} maxelem {maxelem} bucketsize 12 initval 0x1\nSize in memory: {}\nReferences: 1\nNumber of entries: {entries}\n\n",
                    200 + 40 * entries
                )),
                FakeSet::List { members } => out.push_str(&format!(
                    "Name: {name}\nType: list:set\nRevision: 3\nHeader: size 8\nSize in memory: 128\nReferences: 1\nNumber of entries: {}\n\n",
                    members.len()
                )),
            }
        }
        out
    }

    /// Entries of a hash set (0 if it is not one).
    pub fn set_entries(&self, name: &str) -> u64 {
        match self.state.set_info.get(name) {
            Some(FakeSet::Hash { entries, .. }) => *entries,
            _ => 0,
        }
    }

    /// Plays `n` new flows' SYNs to `port` through the rules, the way the kernel would for the
    /// shapes the plan writes: the SYN rule sends them to the record chain, where `--add-set` into
    /// a list fills the first member with room, `--match-set` diverts what was recorded, `--del-set`
    /// records nothing, `-j <chain>` counts them in that chain's rule for the port, and `-j DROP`
    /// ends them. Counters move as the kernel's would. Returns how many were recorded.
    pub fn syns(&mut self, port: u16, n: u64) -> u64 {
        *self.syns_played.entry(port).or_default() += n;
        let st = &mut self.state;
        let syn_marker = "--tcp-flags FIN,SYN,RST,ACK SYN -j ";
        let Some((pre, syn_rule)) = st.user.iter().find_map(|(c, rules)| {
            rules
                .iter()
                .find(|r| r.contains(syn_marker))
                .map(|r| (c.clone(), r.clone()))
        }) else {
            return 0;
        };
        let new = syn_rule.rsplit(' ').next().unwrap_or_default().to_string();
        *st.counters
            .entry(format!("-A {pre} {syn_rule}"))
            .or_default() += n;
        let dport = format!("--dport {port} ");
        let mut left = n;
        let mut recorded = 0;
        for rule in st.user.get(&new).cloned().unwrap_or_default() {
            if left == 0 {
                break;
            }
            let words: Vec<&str> = rule.split_whitespace().collect();
            let arg = |flag: &str| words.windows(2).find(|w| w[0] == flag).map(|w| w[1]);
            let for_port = rule.contains(&dport) || !rule.contains("--dport");
            if !for_port {
                continue;
            }
            let line = format!("-A {new} {rule}");
            if let Some(list) = arg("--add-set") {
                let members = match st.set_info.get(list) {
                    Some(FakeSet::List { members }) => members.clone(),
                    _ => vec![list.to_string()],
                };
                for m in members {
                    if let Some(FakeSet::Hash {
                        maxelem, entries, ..
                    }) = st.set_info.get_mut(&m)
                    {
                        let take = (left - recorded).min(maxelem.saturating_sub(*entries));
                        *entries += take;
                        recorded += take;
                    }
                }
                *st.counters.entry(line).or_default() += left;
            } else if arg("--match-set").is_some() {
                *st.counters.entry(line).or_default() += recorded;
                if let Some(div) = arg("-j") {
                    for r in st.user.get(div).cloned().unwrap_or_default() {
                        *st.counters.entry(format!("-A {div} {r}")).or_default() += recorded;
                    }
                }
                left -= recorded;
            } else if arg("--del-set").is_some() {
                *st.counters.entry(line).or_default() += left;
            } else if rule == "-j DROP" {
                *st.counters.entry(line).or_default() += left;
                left = 0;
            } else if let Some(chain) = arg("-j") {
                *st.counters.entry(line).or_default() += left;
                let counting = format!("-p tcp -m tcp --dport {port}");
                if st.user.get(chain).is_some_and(|r| r.contains(&counting)) {
                    *st.counters
                        .entry(format!("-A {chain} {counting}"))
                        .or_default() += left;
                }
            }
        }
        recorded
    }
}

impl FakeState {
    fn chain_mut(&mut self, chain: &str) -> Option<&mut Vec<String>> {
        if MANGLE_BUILTINS.contains(&chain) {
            return Some(self.builtin.entry(chain.to_string()).or_default());
        }
        self.user.get_mut(chain)
    }

    /// Checks the sets and chains a rule names exist.
    fn check_refs(&self, rule: &str) -> Result<(), String> {
        let words: Vec<&str> = rule.split_whitespace().collect();
        for w in words.windows(2) {
            match w[0] {
                "--match-set" | "--add-set" | "--del-set"
                    if !self.sets.iter().any(|s| s == w[1]) =>
                {
                    return Err(format!("Set {} doesn't exist", w[1]));
                }
                "-j" | "-g"
                    if !TARGET_EXTENSIONS.contains(&w[1]) && !self.user.contains_key(w[1]) =>
                {
                    return Err(format!("Couldn't load target `{}'", w[1]));
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn references(&self, target: &str) -> bool {
        let all = self.builtin.values().chain(self.user.values()).flatten();
        all.map(|r| r.split_whitespace().collect::<Vec<_>>())
            .any(|w| {
                w.windows(2).any(|p| {
                    p[1] == target
                        && matches!(
                            p[0],
                            "-j" | "-g" | "--match-set" | "--add-set" | "--del-set"
                        )
                })
            })
    }

    fn apply_line(&mut self, line: &str) -> Result<(), String> {
        if let Some(rest) = line.strip_prefix(':') {
            let chain = rest.split_whitespace().next().unwrap_or_default();
            if !MANGLE_BUILTINS.contains(&chain) {
                // --noflush: declaring an existing chain flushes it (measured).
                self.user.insert(chain.to_string(), Vec::new());
            }
            return Ok(());
        }
        let mut words = line.splitn(3, ' ');
        let (cmd, chain) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
        let rest = words.next().unwrap_or("");
        match cmd {
            "-A" | "-I" => {
                let (pos, rule) = if cmd == "-I" {
                    match rest.split_once(' ') {
                        Some((n, rule)) if n.parse::<usize>().is_ok() => {
                            (n.parse::<usize>().unwrap_or(1), rule)
                        }
                        _ => (1, rest),
                    }
                } else {
                    (usize::MAX, rest)
                };
                self.check_refs(rule)?;
                let rules = self
                    .chain_mut(chain)
                    .ok_or_else(|| format!("Chain '{chain}' does not exist"))?;
                if pos == usize::MAX {
                    rules.push(rule.to_string());
                } else if pos == 0 || pos > rules.len() + 1 {
                    return Err("Index of insertion too big".into());
                } else {
                    rules.insert(pos - 1, rule.to_string());
                }
            }
            "-D" => {
                let rules = self
                    .chain_mut(chain)
                    .ok_or_else(|| format!("Chain '{chain}' does not exist"))?;
                let at = rules
                    .iter()
                    .position(|r| r == rest)
                    .ok_or("Bad rule (does a matching rule exist in that chain?)")?;
                rules.remove(at);
            }
            "-F" => {
                self.chain_mut(chain)
                    .ok_or_else(|| format!("Chain '{chain}' does not exist"))?
                    .clear();
                let head = format!("-A {chain} ");
                self.counters.retain(|line, _| !line.starts_with(&head));
            }
            "-X" => {
                match self.user.get(chain) {
                    None => return Err(format!("Chain '{chain}' does not exist")),
                    Some(rules) if !rules.is_empty() => {
                        return Err(format!("Directory not empty: {chain}"))
                    }
                    Some(_) => {}
                }
                if self.references(chain) {
                    return Err(format!("Device or resource busy: {chain}"));
                }
                self.user.remove(chain);
            }
            _ => return Err(format!("unknown command {line:?}")),
        }
        Ok(())
    }
}

impl Firewall for FakeFirewall {
    fn restore(&mut self, text: &str) -> Result<(), FirewallError> {
        self.begin(FakeOp::Restore, FirewallCall::Restore(text.to_string()))?;
        let mut next = self.state.clone();
        let mut in_mangle = false;
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            match line {
                "" => continue,
                _ if line.starts_with('#') => continue,
                "*mangle" => in_mangle = true,
                "COMMIT" => in_mangle = false,
                _ if !in_mangle => {
                    return Err(Self::failed(
                        "iptables-restore",
                        i + 1,
                        "outside *mangle".into(),
                    ))
                }
                _ => next
                    .apply_line(line)
                    .map_err(|e| Self::failed("iptables-restore", i + 1, e))?,
            }
        }
        next.table_present = true;
        self.state = next;
        Ok(())
    }

    fn save_mangle(&mut self) -> Result<String, FirewallError> {
        self.begin(FakeOp::SaveMangle, FirewallCall::SaveMangle)?;
        Ok(self.mangle_text())
    }

    fn ipset_restore(&mut self, text: &str) -> Result<(), FirewallError> {
        self.begin(
            FakeOp::IpsetRestore,
            FirewallCall::IpsetRestore(text.to_string()),
        )?;
        // Line by line, keeping what succeeded before an error, like the real `ipset restore`.
        for (i, line) in text.lines().enumerate() {
            let words: Vec<&str> = line.split_whitespace().collect();
            let fail = |what: String| FirewallError::Failed {
                binary: "ipset".into(),
                args: "restore".into(),
                status: "exit code 1".into(),
                stderr: format!("ipset v7.17: Error in line {}: {what}", i + 1),
            };
            let st = &mut self.state;
            match words.as_slice() {
                [] => {}
                ["create", name, kind, opts @ ..] => {
                    if st.sets.iter().any(|s| s == name) {
                        return Err(fail(
                            "Set cannot be created: set with the same name already exists".into(),
                        ));
                    }
                    let opt = |key: &str, default: u64| {
                        opts.windows(2)
                            .find(|w| w[0] == key)
                            .and_then(|w| w[1].parse().ok())
                            .unwrap_or(default)
                    };
                    let set = if *kind == "list:set" {
                        FakeSet::List {
                            members: Vec::new(),
                        }
                    } else {
                        FakeSet::Hash {
                            hashsize: opt("hashsize", 1024).next_power_of_two(),
                            maxelem: opt("maxelem", 65536),
                            entries: 0,
                        }
                    };
                    st.sets.push(name.to_string());
                    st.set_info.insert(name.to_string(), set);
                }
                ["add", list, member] => {
                    if !st.set_info.contains_key(*member) {
                        return Err(fail(
                            "Set to be added/deleted/tested as element does not exist.".into(),
                        ));
                    }
                    match st.set_info.get_mut(*list) {
                        Some(FakeSet::List { members }) => members.push(member.to_string()),
                        Some(_) => return Err(fail(format!("not a list:set: {list}"))),
                        None => {
                            return Err(fail("The set with the given name does not exist".into()))
                        }
                    }
                }
                ["destroy", name] => {
                    let at =
                        st.sets.iter().position(|s| s == name).ok_or_else(|| {
                            fail("The set with the given name does not exist".into())
                        })?;
                    let in_list = st.set_info.values().any(
                        |s| matches!(s, FakeSet::List { members } if members.iter().any(|m| m == name)),
                    );
                    if st.references(name) || in_list {
                        return Err(fail(format!(
                            "Set cannot be destroyed: it is in use by a kernel component: {name}"
                        )));
                    }
                    st.sets.remove(at);
                    st.set_info.remove(*name);
                }
                _ => return Err(fail(format!("unknown command {line:?}"))),
            }
        }
        Ok(())
    }

    fn ipset_names(&mut self) -> Result<Vec<String>, FirewallError> {
        self.begin(FakeOp::IpsetNames, FirewallCall::IpsetNames)?;
        Ok(self.state.sets.clone())
    }

    fn ipset_list_terse(&mut self) -> Result<String, FirewallError> {
        self.begin(FakeOp::IpsetListTerse, FirewallCall::IpsetListTerse)?;
        Ok(self.ipset_terse_text())
    }

    fn save_mangle_counters(&mut self) -> Result<String, FirewallError> {
        self.begin(FakeOp::SaveMangleCounters, FirewallCall::SaveMangleCounters)?;
        Ok(self
            .mangle_text()
            .lines()
            .map(|l| match self.state.counters.get(l) {
                Some(n) => format!("[{n}:0] {l}\n"),
                None if l.starts_with("-A ") => format!("[0:0] {l}\n"),
                None => format!("{l}\n"),
            })
            .collect())
    }

    fn mangle_table_present(&mut self) -> Result<bool, FirewallError> {
        self.begin(FakeOp::MangleTablePresent, FirewallCall::MangleTablePresent)?;
        Ok(self.state.table_present)
    }

    fn drop_mangle_table_if_empty(&mut self) -> Result<bool, FirewallError> {
        self.begin(
            FakeOp::DropMangleTableIfEmpty,
            FirewallCall::DropMangleTableIfEmpty,
        )?;
        let s = &mut self.state;
        if !s.table_present || !s.user.is_empty() || s.builtin.values().any(|r| !r.is_empty()) {
            return Ok(false);
        }
        s.table_present = false;
        s.builtin.clear();
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    const CONFIG: &str = "\
vips:
  - address: 198.18.0.100
    ports: [80, 7]
ingress_interface: eth0
peer: 198.18.0.12
tracked_interface: trk0
";

    fn plan() -> DivertPlan {
        DivertPlan::new(&Config::from_str(CONFIG, "test").unwrap())
    }

    fn boom(what: &str) -> FirewallError {
        FirewallError::Failed {
            binary: what.into(),
            args: String::new(),
            status: "exit code 1".into(),
            stderr: "injected".into(),
        }
    }

    /// A namespace where the mangle table exists with a user rule of its own.
    fn with_user_rule() -> FakeFirewall {
        let mut fw = FakeFirewall::new();
        fw.restore("*mangle\n-A PREROUTING -p udp -m udp --dport 53 -j ACCEPT\nCOMMIT\n")
            .unwrap();
        fw.calls.clear();
        fw
    }

    #[test]
    fn install_withdraw_remove_round_trip_leaves_nothing() {
        for mut fw in [FakeFirewall::new(), with_user_rule()] {
            let before = (
                fw.mangle_text(),
                fw.state.sets.clone(),
                fw.mangle_table_exists(),
            );
            let p = plan();
            let receipt = install(&mut fw, &p).unwrap();
            assert_eq!(receipt.mangle_table_was_present, before.2);
            assert_eq!(
                fw.sets(),
                ["DRAIN-80-0", "DRAIN-80", "DRAIN-7-0", "DRAIN-7"]
            );
            verify(&mut fw, &p, Phase::Installed).unwrap();
            withdraw(&mut fw, &p).unwrap();
            assert!(verify(&mut fw, &p, Phase::Installed).is_err());
            remove(&mut fw, &p, !receipt.mangle_table_was_present).unwrap();
            let after = (
                fw.mangle_text(),
                fw.state.sets.clone(),
                fw.mangle_table_exists(),
            );
            assert_eq!(after, before);
        }
    }

    #[test]
    fn install_makes_its_changes_in_a_safe_order() {
        let mut fw = FakeFirewall::new();
        let p = plan();
        install(&mut fw, &p).unwrap();
        assert_eq!(
            fw.calls,
            [
                FirewallCall::MangleTablePresent,
                FirewallCall::IpsetNames,
                FirewallCall::SaveMangle,
                FirewallCall::IpsetRestore(p.ipset_create()),
                FirewallCall::Restore(p.install_rules()),
                FirewallCall::SaveMangle,
            ]
        );
    }

    #[test]
    fn a_preexisting_set_is_refused_before_anything_changes() {
        let mut fw = FakeFirewall::new();
        fw.ipset_restore("create DRAIN-7 hash:ip family inet\n")
            .unwrap();
        fw.calls.clear();
        let err = install(&mut fw, &plan()).unwrap_err();
        assert!(matches!(&err, FirewallError::SetsExist { names } if names == &["DRAIN-7"]));
        assert!(err.to_string().contains("DRAIN-7"), "{err}");
        assert!(fw
            .calls
            .iter()
            .all(|c| !matches!(c, FirewallCall::Restore(_) | FirewallCall::IpsetRestore(_))));
        assert_eq!(fw.sets(), ["DRAIN-7"]);
    }

    #[test]
    fn a_leftover_set_of_another_port_is_refused_too() {
        let mut fw = FakeFirewall::new();
        fw.ipset_restore("create DRAIN-8080 hash:ip family inet\n")
            .unwrap();
        let err = install(&mut fw, &plan()).unwrap_err();
        assert!(matches!(&err, FirewallError::SetsExist { names } if names == &["DRAIN-8080"]));
        assert_eq!(fw.sets(), ["DRAIN-8080"]);
    }

    #[test]
    fn a_preexisting_chain_is_refused_rather_than_flushed() {
        let mut fw = FakeFirewall::new();
        fw.restore("*mangle\n:DRAIN-NEW - [0:0]\n-A DRAIN-NEW -j ACCEPT\nCOMMIT\n")
            .unwrap();
        let before = fw.mangle_text();
        let err = install(&mut fw, &plan()).unwrap_err();
        assert!(matches!(err, FirewallError::ChainsExist { .. }), "{err}");
        assert_eq!(fw.mangle_text(), before);
        assert!(fw.sets().is_empty());
    }

    #[test]
    fn failed_rules_transaction_destroys_the_sets_and_the_new_table() {
        let mut fw = FakeFirewall::new();
        fw.fail_next(FakeOp::Restore, boom("iptables-restore"));
        let err = install(&mut fw, &plan()).unwrap_err();
        assert!(matches!(err, FirewallError::Failed { .. }), "{err}");
        assert!(fw.sets().is_empty());
        assert!(!fw.mangle_table_exists());
    }

    #[test]
    fn partially_created_sets_are_undone_but_a_foreign_one_is_kept() {
        // A set with one of our names appears between the conflict check and its creation.
        let mut racing = RaceOnCreate {
            inner: FakeFirewall::new(),
            foreign: "DRAIN-7".into(),
        };
        let err = install(&mut racing, &plan()).unwrap_err();
        assert!(err.to_string().contains("already exists"), "{err}");
        assert_eq!(racing.inner.sets(), ["DRAIN-7"]);
        assert!(!racing.inner.mangle_table_exists());
    }

    /// Creates a foreign set with one of our names just before our `ipset restore` runs.
    struct RaceOnCreate {
        inner: FakeFirewall,
        foreign: String,
    }

    impl Firewall for RaceOnCreate {
        fn restore(&mut self, text: &str) -> Result<(), FirewallError> {
            self.inner.restore(text)
        }
        fn save_mangle(&mut self) -> Result<String, FirewallError> {
            self.inner.save_mangle()
        }
        fn ipset_restore(&mut self, text: &str) -> Result<(), FirewallError> {
            if text.contains(&format!("create {} ", self.foreign)) {
                self.inner
                    .ipset_restore(&format!("create {} hash:ip\n", self.foreign))?;
            }
            self.inner.ipset_restore(text)
        }
        fn ipset_names(&mut self) -> Result<Vec<String>, FirewallError> {
            self.inner.ipset_names()
        }
        fn ipset_list_terse(&mut self) -> Result<String, FirewallError> {
            self.inner.ipset_list_terse()
        }
        fn save_mangle_counters(&mut self) -> Result<String, FirewallError> {
            self.inner.save_mangle_counters()
        }
        fn mangle_table_present(&mut self) -> Result<bool, FirewallError> {
            self.inner.mangle_table_present()
        }
        fn drop_mangle_table_if_empty(&mut self) -> Result<bool, FirewallError> {
            self.inner.drop_mangle_table_if_empty()
        }
    }

    #[test]
    fn failed_read_back_undoes_the_install() {
        let p = plan();
        let mut tampering = TamperAfterInstall(FakeFirewall::new());
        let err = install(&mut tampering, &p).unwrap_err();
        assert!(matches!(err, FirewallError::ReadBack { .. }), "{err}");
        assert!(tampering.0.sets().is_empty());
        assert!(p.owned_lines(&tampering.0.mangle_text()).is_empty());
    }

    /// Another tool adds a rule to our entry chain right after our transaction.
    struct TamperAfterInstall(FakeFirewall);

    impl Firewall for TamperAfterInstall {
        fn restore(&mut self, text: &str) -> Result<(), FirewallError> {
            self.0.restore(text)?;
            if text.contains("-I PREROUTING") {
                self.0
                    .restore("*mangle\n-A DRAIN-PRE -j ACCEPT\nCOMMIT\n")?;
            }
            Ok(())
        }
        fn save_mangle(&mut self) -> Result<String, FirewallError> {
            self.0.save_mangle()
        }
        fn ipset_restore(&mut self, text: &str) -> Result<(), FirewallError> {
            self.0.ipset_restore(text)
        }
        fn ipset_names(&mut self) -> Result<Vec<String>, FirewallError> {
            self.0.ipset_names()
        }
        fn ipset_list_terse(&mut self) -> Result<String, FirewallError> {
            self.0.ipset_list_terse()
        }
        fn save_mangle_counters(&mut self) -> Result<String, FirewallError> {
            self.0.save_mangle_counters()
        }
        fn mangle_table_present(&mut self) -> Result<bool, FirewallError> {
            self.0.mangle_table_present()
        }
        fn drop_mangle_table_if_empty(&mut self) -> Result<bool, FirewallError> {
            self.0.drop_mangle_table_if_empty()
        }
    }

    #[test]
    fn remove_keeps_going_and_reports_every_error() {
        let mut fw = FakeFirewall::new();
        let p = plan();
        install(&mut fw, &p).unwrap();
        fw.fail_next(FakeOp::Restore, boom("iptables-restore"));
        let err = remove(&mut fw, &p, true).unwrap_err();
        // The rules stayed, so the sets are in use: three problems, all reported.
        assert_eq!(err.errors.len(), 3, "{err}");
        assert!(matches!(err.errors[0], FirewallError::Failed { .. }));
        assert!(err.errors[1].to_string().contains("in use"), "{err}");
        assert!(matches!(err.errors[2], FirewallError::Leftovers { .. }));
        assert!(!err.to_string().contains('\n'));
        // A second attempt finishes the job.
        remove(&mut fw, &p, true).unwrap();
        assert!(!fw.mangle_table_exists());
    }

    #[test]
    fn remove_is_idempotent_and_keeps_a_table_that_was_there() {
        let mut fw = with_user_rule();
        let p = plan();
        remove(&mut fw, &p, false).unwrap();
        let receipt = install(&mut fw, &p).unwrap();
        assert!(receipt.mangle_table_was_present);
        remove(&mut fw, &p, !receipt.mangle_table_was_present).unwrap();
        remove(&mut fw, &p, false).unwrap();
        assert!(fw.mangle_table_exists());
        assert!(fw
            .mangle_text()
            .contains("-A PREROUTING -p udp -m udp --dport 53 -j ACCEPT"));
    }

    #[test]
    fn counters_count_unrecorded_syns_exactly_and_survive_the_seal() {
        let mut fw = FakeFirewall::new();
        let p = DivertPlan::new(
            &Config::from_str(
                &format!("{CONFIG}firewall:\n  max_diverted_flows: 1024\n"),
                "test",
            )
            .unwrap(),
        );
        install(&mut fw, &p).unwrap();
        assert_eq!(fw.syns(80, 1000), 1000);
        assert_eq!(fw.syns(80, 100), 24);
        let c = counters(&mut fw, &p).unwrap();
        assert_eq!(c.syns, 1100);
        assert_eq!(c.unrecorded_by_port, [(80, 76), (7, 0)]);
        assert_eq!(c.diverted_syns, 1024);
        assert_eq!(c.diverted_packets, 1024);
        assert_eq!(c.sealed_drops, 0);
        seal(&mut fw, &p).unwrap();
        fw.syns(80, 10);
        let c = counters(&mut fw, &p).unwrap();
        assert_eq!(
            c.unrecorded_syns(),
            86,
            "P-MISS is not rewritten by the seal"
        );
        assert_eq!(c.sealed_drops, 10);
        withdraw(&mut fw, &p).unwrap();
        fw.syns(80, 10);
        assert_eq!(counters(&mut fw, &p).unwrap().unrecorded_syns(), 86);
    }

    #[test]
    fn a_set_creation_that_fails_without_a_line_undoes_what_exists() {
        let mut fw = FakeFirewall::new();
        fw.fail_next(
            FakeOp::IpsetRestore,
            FirewallError::Timeout {
                binary: "ipset".into(),
                args: "restore".into(),
                after: Duration::from_secs(10),
            },
        );
        let err = install(&mut fw, &plan()).unwrap_err();
        assert!(matches!(err, FirewallError::Timeout { .. }), "{err}");
        assert!(fw.sets().is_empty());
        assert!(!fw.mangle_table_exists());
    }

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

    #[test]
    fn missing_binary_is_its_own_error() {
        let mut fw = SystemFirewall::new().with_binaries(Binaries {
            iptables_save: "/nonexistent/iptables-save".into(),
            ..Binaries::default()
        });
        let err = fw.save_mangle().unwrap_err();
        assert!(
            matches!(&err, FirewallError::MissingBinary { binary } if binary == "/nonexistent/iptables-save"),
            "{err}"
        );
    }

    #[test]
    fn failure_reports_binary_exit_code_and_first_stderr_line() {
        // `sh -c` stands in for a tool: the adapter's process handling is what is tested.
        let fw = SystemFirewall::new();
        let err = fw
            .run(
                &PathBuf::from("sh"),
                &["-c", "echo; echo 'first line' >&2; echo second >&2; exit 3"],
                None,
            )
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "sh -c echo; echo 'first line' >&2; echo second >&2; exit 3: exit code 3: first line"
        );
    }

    #[test]
    fn stdin_is_fed_and_stdout_returned() {
        let fw = SystemFirewall::new();
        let big = "x".repeat(1 << 20);
        let out = fw.run(&PathBuf::from("cat"), &[], Some(&big)).unwrap();
        assert_eq!(out.len(), big.len());
    }

    #[test]
    fn a_hanging_tool_is_killed_at_the_timeout() {
        let fw = SystemFirewall::new().with_timeout(Duration::from_millis(50));
        let err = fw.run(&PathBuf::from("sleep"), &["30"], None).unwrap_err();
        assert!(matches!(err, FirewallError::Timeout { .. }), "{err}");
    }
}
