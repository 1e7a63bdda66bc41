//! The divert plan: configuration in, exact iptables-restore / ipset-restore texts out. Pure: no
//! I/O here, so every text is golden-file tested without root (tests/golden/).
//!
//! # How new flows are diverted without breaking old ones
//!
//! While a node drains, flows that started before the drain must stay on it and flows that start
//! during the drain must go to the peer, every packet of them, until the end.
//!
//! **Flows are classified by what is true, not by conntrack.** Conntrack cannot be trusted for
//! this (docs/kernel-facts.md#k1 to #k3): in a network namespace it is inactive until a rule needs it,
//! so pre-existing flows are picked up mid-stream as NEW; the same happens after `conntrack -F` or
//! a table overflow; stale ESTABLISHED entries (5-day timeout) match a new connection that reuses
//! a client port; and a diverted flow never gets a confirmed entry on this node at all (its
//! packets are dropped in PREROUTING, before confirmation, and the TEE clone is untracked), so its
//! FIN and RST are INVALID. No rule here uses a conntrack match, so conntrack state (absent,
//! stale, flushed) cannot misroute anything.
//!
//! Instead: **a flow is diverted iff its SYN arrived after the divert was installed.** The rule
//! that sees the SYN records the flow's (client ip, client port, VIP) in an ipset, one set per
//! VIP port, in the same rule path that diverts the SYN, so the record exists before any later
//! packet of that flow can arrive. Every later packet (ACK, data, FIN, RST) of a recorded flow
//! is diverted. Every packet of an unrecorded flow, which includes every flow that existed before
//! the rules, even one whose handshake was under way, stays local.
//!
//! The record must hold every diverted flow: a SYN that is not recorded falls through to "local",
//! and once the VIP has left this node "local" means the kernel drops it. How the record is built
//! so that it does not lose flows (a hash set fed from the packet path never grows by itself) is
//! in [`sets`]. Should a SYN still go unrecorded (the configured capacity is reached, or the agent
//! stopped growing the record), it is counted exactly in `P-MISS` and:
//! - while the node still serves (**installed**), it is served locally: a slower drain, never a
//!   broken flow — the drain's socket count sees it;
//! - once the drain is over (**sealed**, just before the final count and the failover), it is
//!   dropped, counted: no new local flow can start that the failover would then cut, and the
//!   client's retransmitted SYN reaches the new owner (a 1 s stall, reported, never a reset).
//!
//! Diverting a packet = set the mark (so other rules can recognise it), `TEE --gateway PEER` (the
//! clone is sent to the peer's MAC, still addressed to the VIP; the peer accepts it through a local
//! route, see [`PeerPlan`]), then DROP the original so the local stack never answers it with a RST.
//! TEE rather than routing, because a routed packet makes this node send ICMP redirects and its
//! conntrack sees an asymmetric flow (docs/kernel-facts.md#k6).
//!
//! # Chains and sets (P = `firewall.chain_prefix`)
//!
//! In table mangle, entered from PREROUTING by one jump per VIP (`-d VIP -i INGRESS -p tcp
//! -m multiport --dports PORTS`), inserted first so no other mangle rule can end the traversal
//! before ours:
//! - `P-PRE`: a SYN goes to `P-NEW`; any packet of a recorded flow goes to `P-DIV`.
//! - `P-NEW`: record the SYN's flow, then send it to `P-DIV` if the record is there; a SYN left
//!   unrecorded goes through `P-MISS` (and, sealed, is dropped). After a withdraw (peer lost, or
//!   abort), `P-NEW` instead *deletes* the record of a SYN's flow: a client that reuses the port
//!   of a finished diverted flow must have its new flow served locally.
//! - `P-MISS`: one rule per port without a target: its packet counters are the exact count of
//!   unrecorded SYNs. Never rewritten while the divert exists, so the count survives the seal.
//! - `P-DIV`: count the SYNs (the new flows diverted), mark, TEE, DROP.
//! - sets `P-<port>`: a `list:set` of `hash:ip,port,ip` members `P-<port>-<k>`, matched
//!   `src,src,dst`, no timeout (records live until the agent destroys the sets); see [`sets`].
//!
//! # Hand-off: the same rules, mirrored on the peer
//!
//! In a hand-off the draining node (A) fails over at once, and the peer (B), which now receives
//! every packet for the VIP, sends the packets of A's connections back to A. B tells them apart
//! the same way: **B's flows are the ones whose SYN B received** (diverted by A, or direct after
//! the failover). [`DivertPlan::returning`] is B's plan, under the prefix `P` + `R`:
//! - `PR-PRE`: a SYN goes to `PR-NEW` and then stays local; a packet of a recorded flow stays
//!   local; a packet that comes from A's MAC stays local (A diverted it here: it is B's, and this
//!   rule makes a loop between the two nodes impossible); everything else goes to `PR-DIV`.
//! - `PR-NEW`: record the SYN's flow (`PR-MISS` counts a SYN that could not be recorded);
//! - `PR-DIV`: count, mark, `TEE --gateway A`, DROP: A's stack, which still accepts the VIP
//!   through a local route, serves it.
//!
//! On A, [`DivertPlan::guarded`] adds one rule in front of `P-PRE`: a packet from B's MAC (a
//! returned packet, or B's probe of A) is never diverted back.
//!
//! The texts are written in exactly the form `iptables-save` (iptables-nft 1.8.9) prints them
//! (`--syn` is printed as `--tcp-flags FIN,SYN,RST,ACK SYN`, `-m tcp` is made explicit, `-d` comes
//! before `-i`), so the read-back compares lines literally ([`DivertPlan::check_read_back`]).

use std::net::Ipv4Addr;

use crate::config::Config;

mod observed;
mod peer;
mod rules;
pub mod sets;

pub use peer::{PeerPlan, SysctlChange};

/// Chain-name suffixes: entry, new-flow, unrecorded-SYN and divert chains.
const PRE: &str = "PRE";
const NEW: &str = "NEW";
const MISS: &str = "MISS";
const DIV: &str = "DIV";

/// Longest chain name iptables accepts (XT_EXTENSION_MAXNAMELEN - 1).
pub const MAX_CHAIN_NAME_LEN: usize = 28;
/// Longest ipset name (IPSET_MAXNAMELEN - 1).
pub const MAX_SET_NAME_LEN: usize = 31;

/// Which state of the divert the read-back checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// New flows are recorded and diverted; a SYN that cannot be recorded is served locally.
    Installed,
    /// As installed, but a SYN that cannot be recorded is dropped (the drain is over: no new flow
    /// may start locally any more).
    Sealed,
    /// New flows stay local; flows already recorded are still diverted.
    Withdrawn,
}

/// Which way a plan sends packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// This node drains: a flow whose SYN arrives after the install goes to the peer, every
    /// packet of it.
    Divert,
    /// This node took the VIP over in a hand-off: it keeps every flow whose SYN it receives and
    /// returns the packets of every other flow to the peer, which is handing off.
    Return,
}

/// An Ethernet address, as the `mac` match takes it.
pub type Mac = [u8; 6];

/// The firewall side of a drain, computed from the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DivertPlan {
    role: Role,
    /// Packets from this MAC (the peer's) are never sent to the peer (see the module docs).
    guard_mac: Option<Mac>,
    prefix: String,
    /// (VIP, its ports) in configuration order.
    vips: Vec<(Ipv4Addr, Vec<u16>)>,
    /// Union of all VIP ports, in order of first appearance: one set and one rule triple each.
    ports: Vec<u16>,
    ingress: String,
    peer: Ipv4Addr,
    mark: u32,
    mask: u32,
    max_flows: u32,
}

/// Why the read-back of `iptables-save` does not show what a phase should.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadBackError {
    /// Our lines differ from the expected ones.
    #[error("table mangle should show {expected:?} for our chains, but shows {found:?}")]
    Differs {
        /// What [`DivertPlan::expected_rules`] says.
        expected: Vec<String>,
        /// What the saved text holds for our chains and jumps.
        found: Vec<String>,
    },
    /// Another rule sits in PREROUTING before one of our jumps and could end the traversal.
    #[error("our jumps are not the first rules of mangle PREROUTING: it starts with {found:?}")]
    NotFirst {
        /// The first PREROUTING rules as saved.
        found: Vec<String>,
    },
}

impl DivertPlan {
    /// Computes the plan for `config`.
    pub fn new(config: &Config) -> DivertPlan {
        let vips: Vec<(Ipv4Addr, Vec<u16>)> = config
            .vips
            .iter()
            .map(|v| {
                let ports = v.ports.as_slice().iter().map(|p| p.get()).collect();
                (v.address.get(), ports)
            })
            .collect();
        let mut ports = Vec::new();
        for port in vips.iter().flat_map(|(_, ps)| ps.iter().copied()) {
            if !ports.contains(&port) {
                ports.push(port);
            }
        }
        DivertPlan {
            role: Role::Divert,
            guard_mac: None,
            prefix: config.firewall.chain_prefix.as_str().to_string(),
            vips,
            ports,
            ingress: config.ingress_interface.as_str().to_string(),
            peer: config.peer.get(),
            mark: config.firewall.mark.get(),
            mask: config.firewall.mark_mask.get(),
            max_flows: config.firewall.max_diverted_flows.get(),
        }
    }

    /// This plan for a hand-off: packets that come from `peer_mac` (returned by the peer) are
    /// never diverted back to it.
    pub fn guarded(mut self, peer_mac: Mac) -> DivertPlan {
        self.guard_mac = Some(peer_mac);
        self
    }

    /// The peer's side of a hand-off ([`Role::Return`]): under the prefix `P` + `R`, this node
    /// records the flows whose SYN it receives and returns every other packet for the VIP ports
    /// to the node handing off (the config's `peer`, whose MAC is `peer_mac`).
    pub fn returning(mut self, peer_mac: Mac) -> DivertPlan {
        self.role = Role::Return;
        self.guard_mac = Some(peer_mac);
        self.prefix.push('R');
        self
    }

    /// Which way this plan sends packets.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The return plan's prefix for a configuration's `chain_prefix` (what [`Self::returning`]
    /// uses), for finding and removing a return path without knowing the peer's MAC.
    pub fn return_prefix(&self) -> String {
        format!("{}R", self.prefix)
    }

    fn chain(&self, suffix: &str) -> String {
        format!("{}-{suffix}", self.prefix)
    }

    /// The rule that keeps packets from the peer's MAC away from `P-DIV`.
    fn guard_rule(&self) -> Option<String> {
        self.guard_mac.map(|m| {
            let hex: Vec<String> = m.iter().map(|b| format!("{b:02x}")).collect();
            format!("-m mac --mac-source {} -j RETURN", hex.join(":"))
        })
    }

    /// The chain-name prefix every chain and set of ours starts with.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Our chains, in the order iptables-save lists them (sorted by name): DIV, MISS, NEW, PRE.
    pub fn chains(&self) -> [String; 4] {
        [
            self.chain(DIV),
            self.chain(MISS),
            self.chain(NEW),
            self.chain(PRE),
        ]
    }

    /// The entry chain PREROUTING jumps to.
    pub fn entry_chain(&self) -> String {
        self.chain(PRE)
    }

    /// The chain that records new flows (the only one a phase change rewrites).
    pub fn new_chain(&self) -> String {
        self.chain(NEW)
    }

    /// The chain that counts unrecorded SYNs.
    pub fn miss_chain(&self) -> String {
        self.chain(MISS)
    }

    /// The chain that diverts a packet.
    pub fn div_chain(&self) -> String {
        self.chain(DIV)
    }

    /// Name of the list set recording diverted flows to `port` (the name the rules use; its
    /// members are [`DivertPlan::member_name`]).
    pub fn set_name(&self, port: u16) -> String {
        format!("{}-{port}", self.prefix)
    }

    /// The VIP ports, one record each, in order of first appearance.
    pub fn ports(&self) -> &[u16] {
        &self.ports
    }

    /// Our list set names, one per distinct VIP port.
    pub fn set_names(&self) -> Vec<String> {
        self.ports.iter().map(|&p| self.set_name(p)).collect()
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Phase::Installed => "installed",
            Phase::Sealed => "sealed",
            Phase::Withdrawn => "withdrawn",
        })
    }
}

/// Joins lines with a newline after each, as restore tools expect.
fn text(lines: impl IntoIterator<Item = String>) -> String {
    lines.into_iter().map(|l| l + "\n").collect()
}

#[cfg(test)]
mod tests;
