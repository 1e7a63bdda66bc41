//! The firewall adapter: a small trait over the four tools the divert needs, the real
//! implementation that runs them ([`SystemFirewall`]) and, for tests, a recording fake. It applies
//! texts the planner wrote ([`crate::plan`]) and reads the kernel back; the sequences that use it
//! (install, seal, withdraw, remove) are the service layer's (`ops::divert`).
//!
//! Facts this module depends on, measured with iptables-nft 1.8.9 in scratch namespaces:
//! - `iptables-restore --noflush` applies a table fragment as one transaction: all or nothing.
//! - A `:CHAIN - [0:0]` line in `--noflush` mode *flushes* an existing chain of that name without
//!   complaint, so `ops::divert::install` refuses to start when one of our chains already exists.
//! - `ipset restore` is *not* transactional: the lines before a failing one stay applied. Hence
//!   the conflict check before creating, and one call per set so that a failure leaves a known
//!   list of sets to destroy.
//! - A namespace that never had a mangle table has no `table ip mangle` in nftables, yet
//!   `iptables-save -t mangle` still prints a `*mangle` section with the five built-in chains; a
//!   plain `iptables-save` prints nothing for it. So presence is asked of nftables (over netlink,
//!   [`crate::sys::firewall::nftables`]), not of iptables.
//! - Installing creates the table; removing our chains leaves `table ip mangle` with an empty
//!   PREROUTING base chain behind, so `iptables-save` would differ from before. If the table was
//!   absent before, `ops::divert::remove` drops it again, but only while it holds nothing but empty
//!   built-in chains with policy accept.
//! - `nft delete chain` on a base chain succeeds even when the chain holds rules, so emptiness
//!   must be checked from a listing before `nft delete table`; a rule added between the listing
//!   and the delete would be lost (a race the agent accepts: it holds the node's drain lock, and
//!   nothing else is expected to start using the mangle table mid-drain).

use crate::sys::process::ProcessError;

pub mod nftables;
mod system;

#[cfg(any(test, feature = "test-util"))]
mod fake;

#[cfg(any(test, feature = "test-util"))]
pub use fake::{FakeFirewall, FakeOp, FirewallCall, Hook, HookAt};
pub use system::{
    find_in_path, mangle_listing_is_empty, test_transaction, Binaries, SystemFirewall,
};

/// The chains iptables-nft creates as base chains of the mangle table.
pub(crate) const MANGLE_BUILTINS: [&str; 5] =
    ["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"];

/// Errors of the firewall adapter. Display is one line.
#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    /// A tool could not be run, or failed.
    #[error(transparent)]
    Process(#[from] ProcessError),
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
}

impl FirewallError {
    /// Whether the cause is a missing tool.
    pub fn is_missing_binary(&self) -> bool {
        matches!(
            self,
            FirewallError::Process(ProcessError::MissingBinary { .. })
        )
    }

    /// Whether the kernel refused for lack of privileges (netlink EPERM/EACCES, or a tool that
    /// could not be started for lack of permission).
    pub fn is_permission(&self) -> bool {
        let io = match self {
            FirewallError::Netlink { source, .. } => source,
            FirewallError::Process(ProcessError::Spawn { source, .. }) => source,
            _ => return false,
        };
        io.kind() == std::io::ErrorKind::PermissionDenied
            || matches!(io.raw_os_error(), Some(libc::EPERM) | Some(libc::EACCES))
    }

    /// The line `ipset restore` reports as the one that failed (`… Error in line N: …`).
    pub fn failed_line(&self) -> Option<usize> {
        let FirewallError::Process(ProcessError::Failed { stderr, .. }) = self else {
            return None;
        };
        let rest = &stderr[stderr.find("Error in line ")? + "Error in line ".len()..];
        rest.split(':').next()?.trim().parse().ok()
    }
}

/// What a dry run of the divert's exact texts found (see [`test_transaction`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DivertTest {
    /// Both texts were accepted.
    Accepted,
    /// It could not be tested safely; why.
    NotTested(String),
    /// A tool rejected a text; its words.
    Rejected(String),
}

/// The operations the agent needs from iptables, ipset and nft.
pub trait Firewall {
    /// Fails with a missing-binary [`FirewallError::Process`] unless every tool a whole divert cycle uses is
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
