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

mod peer;
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

    /// The PREROUTING jumps, in the form iptables-save prints after `-A PREROUTING `.
    fn jump_specs(&self) -> Vec<String> {
        let pre = self.chain(PRE);
        self.vips
            .iter()
            .map(|(vip, ports)| {
                let ports = ports.iter().map(u16::to_string).collect::<Vec<_>>();
                format!(
                    "-d {vip}/32 -i {} -p tcp -m multiport --dports {} -j {pre}",
                    self.ingress,
                    ports.join(",")
                )
            })
            .collect()
    }

    /// Rule lines of P-PRE (without the `-A CHAIN ` head).
    fn pre_rules(&self) -> Vec<String> {
        let div = self.chain(DIV);
        match self.role {
            Role::Divert => {
                let mut rules: Vec<String> = self.guard_rule().into_iter().collect();
                rules.push(self.syn_rule());
                for &port in &self.ports {
                    rules.push(format!(
                        "-p tcp -m tcp --dport {port} -m set --match-set {} src,src,dst -j {div}",
                        self.set_name(port)
                    ));
                }
                rules
            }
            Role::Return => {
                let mut rules = vec![
                    self.syn_rule(),
                    "-p tcp -m tcp --tcp-flags FIN,SYN,RST,ACK SYN -j RETURN".to_string(),
                ];
                for &port in &self.ports {
                    rules.push(format!(
                        "-p tcp -m tcp --dport {port} -m set --match-set {} src,src,dst -j RETURN",
                        self.set_name(port)
                    ));
                }
                rules.extend(self.guard_rule());
                rules.push(format!("-j {div}"));
                rules
            }
        }
    }

    /// The P-PRE rule that sends SYNs to P-NEW. `--tcp-flags FIN,SYN,RST,ACK SYN` is `--syn` as
    /// iptables-save prints it: a SYN without ACK, i.e. only the client's first handshake packet.
    fn syn_rule(&self) -> String {
        format!(
            "-p tcp -m tcp --tcp-flags FIN,SYN,RST,ACK SYN -j {}",
            self.chain(NEW)
        )
    }

    /// The P-MISS rule counting `port`'s unrecorded SYNs (no target: it only counts).
    fn miss_rule(port: u16) -> String {
        format!("-p tcp -m tcp --dport {port}")
    }

    fn miss_rules(&self) -> Vec<String> {
        self.ports.iter().map(|&p| Self::miss_rule(p)).collect()
    }

    /// Rule lines of P-NEW while installed: record, then divert if recorded. `--exist` so a
    /// retransmitted SYN re-adds silently; the match after the add is what fails when no member
    /// would take the record, and such a SYN is counted in P-MISS and served locally.
    fn new_rules_installed(&self) -> Vec<String> {
        let mut rules = self.record_rules();
        rules.push(format!("-j {}", self.chain(MISS)));
        rules
    }

    /// Rule lines of P-NEW once sealed: as installed, but an unrecorded SYN is dropped after it
    /// is counted.
    fn new_rules_sealed(&self) -> Vec<String> {
        let mut rules = self.new_rules_installed();
        rules.push("-j DROP".to_string());
        rules
    }

    /// Per port: record the SYN's flow, then divert it if recorded (returning: keep it).
    fn record_rules(&self) -> Vec<String> {
        let div = match self.role {
            Role::Divert => self.chain(DIV),
            Role::Return => "RETURN".to_string(),
        };
        let mut rules = Vec::new();
        for &port in &self.ports {
            let set = self.set_name(port);
            rules.push(format!(
                "-p tcp -m tcp --dport {port} -j SET --add-set {set} src,src,dst --exist"
            ));
            rules.push(format!(
                "-p tcp -m tcp --dport {port} -m set --match-set {set} src,src,dst -j {div}"
            ));
        }
        rules
    }

    /// Rule lines of P-NEW after a withdraw: forget the SYN's flow, so the P-PRE match that
    /// follows fails and the new flow is served locally even if its client port was used by a
    /// diverted flow before.
    fn new_rules_withdrawn(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|&port| {
                format!(
                    "-p tcp -m tcp --dport {port} -j SET --del-set {} src,src,dst",
                    self.set_name(port)
                )
            })
            .collect()
    }

    fn new_rules(&self, phase: Phase) -> Vec<String> {
        if self.role == Role::Return {
            // The return path has one phase: it is installed, then removed.
            return self.new_rules_installed();
        }
        match phase {
            Phase::Installed => self.new_rules_installed(),
            Phase::Sealed => self.new_rules_sealed(),
            Phase::Withdrawn => self.new_rules_withdrawn(),
        }
    }

    /// Rule lines of P-DIV: count SYNs (the new flows diverted: P-DIV is never rewritten, so
    /// the count survives the seal and the withdraw), mark, TEE, drop.
    fn div_rules(&self) -> Vec<String> {
        vec![
            "-p tcp -m tcp --tcp-flags FIN,SYN,RST,ACK SYN".to_string(),
            // MARK --set-xmark V/M computes (mark & !M) ^ V; with V inside M that sets our bits
            // and leaves the others alone.
            format!("-j MARK --set-xmark {:#x}/{:#x}", self.mark, self.mask),
            format!("-j TEE --gateway {}", self.peer),
            "-j DROP".to_string(),
        ]
    }

    fn appended(chain: &str, rules: &[String]) -> Vec<String> {
        rules.iter().map(|r| format!("-A {chain} {r}")).collect()
    }

    /// The `iptables-restore --noflush` transaction that installs the divert. The sets must exist
    /// first ([`DivertPlan::ipset_create`]): a rule naming a missing set is rejected.
    pub fn install_rules(&self) -> String {
        let (pre, new, miss, div) = (
            self.chain(PRE),
            self.chain(NEW),
            self.chain(MISS),
            self.chain(DIV),
        );
        let mut lines = vec!["*mangle".to_string()];
        lines.extend(
            [&pre, &new, &miss, &div]
                .iter()
                .map(|c| format!(":{c} - [0:0]")),
        );
        lines.extend(Self::appended(&pre, &self.pre_rules()));
        lines.extend(Self::appended(&new, &self.new_rules_installed()));
        lines.extend(Self::appended(&miss, &self.miss_rules()));
        lines.extend(Self::appended(&div, &self.div_rules()));
        // Insert at 1, 2, ... so the jumps come first in PREROUTING and in configuration order.
        for (i, spec) in self.jump_specs().iter().enumerate() {
            lines.push(format!("-I PREROUTING {} {spec}", i + 1));
        }
        lines.push("COMMIT".into());
        text(lines)
    }

    /// The transaction that rewrites P-NEW for `phase`, as one transaction (a SYN sees either
    /// the old rules or the new ones).
    fn new_chain_swap(&self, phase: Phase) -> String {
        let new = self.chain(NEW);
        let mut lines = vec!["*mangle".to_string(), format!("-F {new}")];
        lines.extend(Self::appended(&new, &self.new_rules(phase)));
        lines.push("COMMIT".into());
        text(lines)
    }

    /// The transaction that seals the divert at the end of the drain: from then on a SYN that
    /// cannot be recorded is dropped (counted) instead of starting a local flow the failover
    /// would cut.
    pub fn seal_rules(&self) -> String {
        self.new_chain_swap(Phase::Sealed)
    }

    /// The transaction that stops diverting new flows while flows already diverted keep going to
    /// the peer (peer lost, or drain aborted).
    pub fn withdraw_rules(&self) -> String {
        self.new_chain_swap(Phase::Withdrawn)
    }

    /// The transaction that removes every rule and chain [`DivertPlan::install_rules`] created.
    /// It fails as a whole if any of them is already gone; for teardown after a crash use
    /// [`DivertPlan::remove_rules_observed`].
    pub fn remove_rules(&self) -> String {
        let mut lines = vec!["*mangle".to_string()];
        lines.extend(
            self.jump_specs()
                .iter()
                .map(|spec| format!("-D PREROUTING {spec}")),
        );
        let order = self.removal_order();
        // Flush all before deleting any: a chain still referenced by a rule cannot be deleted.
        lines.extend(order.iter().map(|c| format!("-F {c}")));
        lines.extend(order.iter().map(|c| format!("-X {c}")));
        lines.push("COMMIT".into());
        text(lines)
    }

    /// The removal transaction for what `saved` (output of `iptables-save -t mangle`) actually
    /// shows of ours: every jump to one of our chains from a chain that is not ours (whatever VIPs
    /// an earlier configuration had), and every chain of ours that exists. `None` if nothing of
    /// ours is there.
    pub fn remove_rules_observed(&self, saved: &str) -> Option<String> {
        let ours = self.chains();
        let mut lines = vec!["*mangle".to_string()];
        for line in saved.lines() {
            if let Some(rest) = line.strip_prefix("-A ") {
                let chain = rest.split_whitespace().next().unwrap_or_default();
                if !ours.iter().any(|c| c == chain) && self.targets_ours(line) {
                    lines.push(format!("-D {rest}"));
                }
            }
        }
        let present = self.existing_chains(saved);
        // Flush before delete, entry chain first (same order as remove_rules).
        let order: Vec<&String> = self
            .removal_order()
            .iter()
            .filter_map(|c| present.iter().find(|p| *p == c))
            .collect();
        lines.extend(order.iter().map(|c| format!("-F {c}")));
        lines.extend(order.iter().map(|c| format!("-X {c}")));
        if lines.len() == 1 {
            return None;
        }
        lines.push("COMMIT".into());
        Some(text(lines))
    }

    /// Our chains from the entry chain down to the chains it reaches.
    fn removal_order(&self) -> [String; 4] {
        [
            self.chain(PRE),
            self.chain(NEW),
            self.chain(MISS),
            self.chain(DIV),
        ]
    }

    /// Whether a saved rule line jumps (`-j`) or goes (`-g`) to one of our chains.
    fn targets_ours(&self, line: &str) -> bool {
        let ours = self.chains();
        let words: Vec<&str> = line.split_whitespace().collect();
        words
            .windows(2)
            .any(|w| (w[0] == "-j" || w[0] == "-g") && ours.iter().any(|c| c == w[1]))
    }

    /// Our chains that `saved` declares. Installing over them would silently flush them (a
    /// `:CHAIN` line in `--noflush` mode empties an existing chain), so they are a conflict.
    pub fn existing_chains(&self, saved: &str) -> Vec<String> {
        self.chains()
            .into_iter()
            .filter(|c| {
                let decl = format!(":{c} ");
                saved.lines().any(|l| l.starts_with(&decl))
            })
            .collect()
    }

    /// The names in `existing` (output of `ipset list -n`) that follow our naming pattern,
    /// `P-<port>` or `P-<port>-<k>`, for any port: a conflict, because the sets may belong to
    /// something else, and a left-over from an earlier configuration must be cleared by a removal
    /// first (which owns every such name).
    pub fn existing_sets(&self, existing: &[String]) -> Vec<String> {
        existing
            .iter()
            .filter(|name| self.is_our_set(name).is_some())
            .cloned()
            .collect()
    }

    /// Whether `name` is `P-<port>` (`Some(false)`: a list) or `P-<port>-<k>` (`Some(true)`: a
    /// member), with a canonical decimal port and index.
    fn is_our_set(&self, name: &str) -> Option<bool> {
        let rest = name.strip_prefix(&self.prefix)?.strip_prefix('-')?;
        let (port, member) = match rest.split_once('-') {
            Some((port, k)) => (port, Some(k)),
            None => (rest, None),
        };
        port.parse::<u16>().ok().filter(|p| p.to_string() == port)?;
        match member {
            None => Some(false),
            Some(k) => k
                .parse::<u8>()
                .ok()
                .filter(|i| i.to_string() == k)
                .map(|_| true),
        }
    }

    /// `ipset restore` text destroying every set in `existing` that is ours, lists before their
    /// members (a member in a list is in use and cannot be destroyed), so sets left by an earlier
    /// configuration with other ports go too. `None` if none.
    pub fn ipset_destroy_observed(&self, existing: &[String]) -> Option<String> {
        let ours = self.our_sets_in_destroy_order(existing);
        (!ours.is_empty()).then(|| text(ours.iter().map(|s| format!("destroy {s}"))))
    }

    /// What removing the divert runs once no rule uses the sets: every set of ours in `existing`
    /// flushed, then destroyed as [`ipset_destroy_observed`](Self::ipset_destroy_observed) does.
    /// Emptied first because a process listing a set in full (`ipset list`, `ipset save`) holds
    /// it until it has read the listing, and a destroy meanwhile is refused; the listing of an
    /// empty set is over within one message, so after the flush only a listing already under
    /// way can hold it, briefly (docs/kernel-facts.md#k11). `None` if none.
    pub fn ipset_teardown_observed(&self, existing: &[String]) -> Option<String> {
        let ours = self.our_sets_in_destroy_order(existing);
        (!ours.is_empty()).then(|| {
            text(
                ours.iter()
                    .map(|s| format!("flush {s}"))
                    .chain(ours.iter().map(|s| format!("destroy {s}"))),
            )
        })
    }

    /// The sets of ours in `existing`, lists before their members.
    fn our_sets_in_destroy_order<'a>(&self, existing: &'a [String]) -> Vec<&'a String> {
        let mut ours: Vec<(bool, &String)> = existing
            .iter()
            .filter_map(|n| self.is_our_set(n).map(|member| (member, n)))
            .collect();
        ours.sort_by_key(|(member, _)| *member);
        ours.into_iter().map(|(_, s)| s).collect()
    }

    /// The lines `iptables-save -t mangle` shows for our chains and jumps in `phase`, in the order
    /// it prints them: chain declarations (sorted by name), the PREROUTING jumps, then each of our
    /// chains' rules (chains sorted by name).
    pub fn expected_rules(&self, phase: Phase) -> Vec<String> {
        let [div, miss, new, pre] = self.chains();
        let mut lines: Vec<String> = [&div, &miss, &new, &pre]
            .iter()
            .map(|c| format!(":{c} - [0:0]"))
            .collect();
        lines.extend(
            self.jump_specs()
                .iter()
                .map(|s| format!("-A PREROUTING {s}")),
        );
        lines.extend(Self::appended(&div, &self.div_rules()));
        lines.extend(Self::appended(&miss, &self.miss_rules()));
        lines.extend(Self::appended(&new, &self.new_rules(phase)));
        lines.extend(Self::appended(&pre, &self.pre_rules()));
        lines
    }

    /// The lines of `saved` that concern us: declarations and rules of our chains, and rules in
    /// other chains that jump to ours. Counters are not part of them (`iptables-save` without -c).
    pub fn owned_lines(&self, saved: &str) -> Vec<String> {
        let ours = self.chains();
        saved
            .lines()
            .filter(|line| {
                if let Some(rest) = line.strip_prefix(':') {
                    let name = rest.split_whitespace().next().unwrap_or_default();
                    return ours.iter().any(|c| c == name);
                }
                if let Some(rest) = line.strip_prefix("-A ") {
                    let chain = rest.split_whitespace().next().unwrap_or_default();
                    return ours.iter().any(|c| c == chain) || self.targets_ours(line);
                }
                false
            })
            .map(str::to_string)
            .collect()
    }

    /// Checks that `saved` (output of `iptables-save -t mangle`) shows exactly
    /// [`DivertPlan::expected_rules`] for our chains, and that our jumps are the first rules of
    /// PREROUTING.
    ///
    /// Lines are compared literally, but grouped by chain first (stable, so the order inside a
    /// chain still counts): the order in which iptables-save lists whole chains is its own
    /// business, the order of rules inside one is ours.
    pub fn check_read_back(&self, phase: Phase, saved: &str) -> Result<(), ReadBackError> {
        let expected = self.expected_rules(phase);
        let found = self.owned_lines(saved);
        if group_by_chain(&expected) != group_by_chain(&found) {
            return Err(ReadBackError::Differs { expected, found });
        }
        let jumps = self.vips.len();
        let first: Vec<String> = saved
            .lines()
            .filter(|l| l.starts_with("-A PREROUTING "))
            .take(jumps)
            .map(str::to_string)
            .collect();
        if first.len() != jumps || !first.iter().all(|l| self.targets_ours(l)) {
            return Err(ReadBackError::NotFirst { found: first });
        }
        Ok(())
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

impl DivertPlan {
    /// Which phase `saved` (output of `iptables-save -t mangle`) shows our rules in, if exactly
    /// one phase's rules are there; `None` if nothing of ours is there or something else is.
    pub fn observed_phase(&self, saved: &str) -> Option<Phase> {
        [Phase::Installed, Phase::Sealed, Phase::Withdrawn]
            .into_iter()
            .find(|&phase| self.check_read_back(phase, saved).is_ok())
    }
}

/// Stable-sorts saved lines by (kind, chain): declarations first, then rules chain by chain.
fn group_by_chain(lines: &[String]) -> Vec<&String> {
    let mut sorted: Vec<&String> = lines.iter().collect();
    sorted.sort_by_key(|l| {
        let is_rule = l.starts_with("-A ");
        let chain = l
            .trim_start_matches(':')
            .trim_start_matches("-A ")
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string();
        (is_rule, chain)
    });
    sorted
}

/// Joins lines with a newline after each, as restore tools expect.
fn text(lines: impl IntoIterator<Item = String>) -> String {
    lines.into_iter().map(|l| l + "\n").collect()
}

#[cfg(test)]
mod tests;
