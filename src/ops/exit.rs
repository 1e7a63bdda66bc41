//! Exit codes — an API: keepalived, Ansible and operators' scripts read them. [`EXITS`] is the
//! one source: the man page is generated from it, and tests hold the README's table and the
//! Ansible module's tables to it.

/// Success.
pub const OK: u8 = 0;
/// Unexpected internal error.
pub const INTERNAL: u8 = 1;
/// Bad command-line usage.
pub const USAGE: u8 = 2;
/// The configuration file is invalid.
pub const CONFIG: u8 = 3;
/// The environment is not usable (missing binary, interface, privilege, kernel feature).
pub const ENVIRONMENT: u8 = 4;
/// The peer cannot take the traffic (nothing was changed).
pub const PEER_NOT_READY: u8 = 5;
/// Another drain-agent operation is running.
pub const BUSY: u8 = 6;
/// The node's state does not allow it (not MASTER, already drained, leftovers).
pub const STATE: u8 = 7;
/// The peer was lost during the drain (rolled back).
pub const PEER_LOST: u8 = 8;
/// Interrupted by a signal (rolled back).
pub const INTERRUPTED: u8 = 9;
/// Deadline reached with abort_on_deadline (rolled back).
pub const DEADLINE: u8 = 10;
/// Failover not confirmed in time.
pub const FAILOVER: u8 = 11;
/// Cleanup incomplete: changes remain (listed in the journal).
pub const CLEANUP: u8 = 12;
/// The VIP moved to the peer during the drain without the agent (keepalived stopped here):
/// the node's remaining connections were cut; the drain was finished, out of service.
pub const VIP_MOVED: u8 = 13;

/// What an exit leaves on the host, as the README's "host changed?" column says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostAfter {
    /// What was asked for was done.
    AsRequested,
    /// Nothing was changed: the agent refused before its first change.
    Unchanged,
    /// Changes were made and undone: the node serves as before.
    RolledBack,
    /// Rolled back, except after a hand-off's failover: then the node stays out of service.
    RolledBackOrOutOfService,
    /// The divert is gone but the tracked interface stays down.
    LinkDown,
    /// Some changes remain, listed in the journal.
    Partly,
    /// The drain was finished without the agent's failover: the node is out of service.
    OutOfService,
}

impl HostAfter {
    /// The README's wording.
    pub fn label(self) -> &'static str {
        match self {
            HostAfter::AsRequested => "as requested",
            HostAfter::Unchanged => "no",
            HostAfter::RolledBack => "rolled back",
            HostAfter::RolledBackOrOutOfService => "rolled back (hand-off: out of service)",
            HostAfter::LinkDown => "link down",
            HostAfter::Partly => "partly",
            HostAfter::OutOfService => "out of service",
        }
    }
}

/// One exit code and what it means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exit {
    /// The process's exit status.
    pub code: u8,
    /// A few words; the README's and the Ansible module's meanings start with them.
    pub summary: &'static str,
    /// What the host is left with.
    pub host: HostAfter,
    /// The man page's sentence.
    pub detail: &'static str,
}

/// Every exit code, in order.
pub const EXITS: &[Exit] = &[
    Exit {
        code: OK,
        summary: "success",
        host: HostAfter::AsRequested,
        detail: "Success.",
    },
    Exit {
        code: INTERNAL,
        summary: "internal error",
        host: HostAfter::RolledBack,
        detail: "Internal error; rolled back.",
    },
    Exit {
        code: USAGE,
        summary: "bad command-line usage",
        host: HostAfter::Unchanged,
        detail: "Bad command-line usage; nothing changed.",
    },
    Exit {
        code: CONFIG,
        summary: "invalid configuration",
        host: HostAfter::Unchanged,
        detail: "Invalid configuration; nothing changed.",
    },
    Exit {
        code: ENVIRONMENT,
        summary: "environment not usable",
        host: HostAfter::Unchanged,
        detail: "Environment not usable: a missing binary, interface, privilege or kernel \
                 feature; nothing changed.",
    },
    Exit {
        code: PEER_NOT_READY,
        summary: "the peer cannot take the traffic",
        host: HostAfter::Unchanged,
        detail: "The peer cannot take the traffic (down, not accepting the VIP, nothing \
                 listening); nothing changed.",
    },
    Exit {
        code: BUSY,
        summary: "another drain-agent operation holds the lock",
        host: HostAfter::Unchanged,
        detail: "Another drain-agent operation holds the lock; nothing changed.",
    },
    Exit {
        code: STATE,
        summary: "the node's state does not allow it",
        host: HostAfter::Unchanged,
        detail: "The state does not allow it: this node does not hold the VIP, is already \
                 drained, or an earlier run left changes (run undrain); nothing changed.",
    },
    Exit {
        code: PEER_LOST,
        summary: "the peer was lost during the drain",
        host: HostAfter::RolledBack,
        detail: "The peer was lost during the drain: new flows are served here again within a \
                 second and the divert is removed; rolled back.",
    },
    Exit {
        code: INTERRUPTED,
        summary: "interrupted",
        host: HostAfter::RolledBackOrOutOfService,
        detail: "Interrupted by SIGINT, SIGTERM or SIGHUP; rolled back. A second signal cuts the \
                 rollback grace short. After the failover of a hand-off: the hand-off ended \
                 early and the node's remaining connections were cut; it stays out of service.",
    },
    Exit {
        code: DEADLINE,
        summary: "deadline reached with --abort-on-deadline",
        host: HostAfter::RolledBack,
        detail: "Deadline reached with --abort-on-deadline; rolled back.",
    },
    Exit {
        code: FAILOVER,
        summary: "failover not confirmed in time",
        host: HostAfter::LinkDown,
        detail: "Failover not confirmed in time: divert removed, tracked interface left down; \
                 check keepalived.",
    },
    Exit {
        code: CLEANUP,
        summary: "cleanup incomplete",
        host: HostAfter::Partly,
        detail: "Cleanup incomplete: what is left is in the journal; undrain retries.",
    },
    Exit {
        code: VIP_MOVED,
        summary: "the VIP moved to the peer during the drain without the agent",
        host: HostAfter::OutOfService,
        detail: "The VIP moved to the peer during the drain without the agent (keepalived \
                 stopped here): the node's remaining connections were cut; the drain was \
                 finished, the node is out of service; check keepalived.",
    },
];

/// The exit with this code, if it is one.
pub fn of(code: u8) -> Option<&'static Exit> {
    EXITS.iter().find(|e| e.code == code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_once_in_order_and_each_constant_listed() {
        let codes: Vec<u8> = EXITS.iter().map(|e| e.code).collect();
        assert_eq!(codes, (0..=VIP_MOVED).collect::<Vec<_>>());
        assert_eq!(
            of(DEADLINE).unwrap().summary,
            "deadline reached with --abort-on-deadline"
        );
        assert_eq!(of(VIP_MOVED + 1), None);
    }
}
