//! The divert plan: configuration in, exact iptables-restore / ipset-restore texts out. Pure: no
//! I/O here, so every text is golden-file tested without root (tests/golden/).
//!
//! # How new flows are diverted without breaking old ones
//!
//! While a node drains, flows that started before the drain must stay on it and flows that start
//! during the drain must go to the peer, every packet of them, until the end.
//!
//! **Flows are classified by what is true, not by conntrack.** Conntrack cannot be trusted for
//! this (FIELD-NOTES pitfalls 1-3): in a network namespace it is inactive until a rule needs it,
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
//! conntrack sees an asymmetric flow (pitfall 6).
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
//! The texts are written in exactly the form `iptables-save` (iptables-nft 1.8.9) prints them
//! (`--syn` is printed as `--tcp-flags FIN,SYN,RST,ACK SYN`, `-m tcp` is made explicit, `-d` comes
//! before `-i`), so the read-back compares lines literally ([`DivertPlan::check_read_back`]).

use std::net::Ipv4Addr;

use crate::config::Config;

pub mod sets;

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

/// The firewall side of a drain, computed from the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DivertPlan {
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

    fn chain(&self, suffix: &str) -> String {
        format!("{}-{suffix}", self.prefix)
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
        let mut rules = vec![self.syn_rule()];
        for &port in &self.ports {
            rules.push(format!(
                "-p tcp -m tcp --dport {port} -m set --match-set {} src,src,dst -j {div}",
                self.set_name(port)
            ));
        }
        rules
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

    /// Per port: record the SYN's flow, divert it if recorded.
    fn record_rules(&self) -> Vec<String> {
        let div = self.chain(DIV);
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
        let mut ours: Vec<(bool, &String)> = existing
            .iter()
            .filter_map(|n| self.is_our_set(n).map(|member| (member, n)))
            .collect();
        if ours.is_empty() {
            return None;
        }
        ours.sort_by_key(|(member, _)| *member);
        Some(text(ours.iter().map(|(_, s)| format!("destroy {s}"))))
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

/// One sysctl to set, by its path under /proc/sys (slash form, so interface names containing '.'
/// such as VLAN `eth0.100` stay unambiguous).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SysctlChange {
    /// E.g. `net/ipv4/conf/eth0/arp_ignore`.
    pub key: String,
    /// The value to write.
    pub value: String,
}

impl SysctlChange {
    /// The file to write: `/proc/sys/` + key.
    pub fn proc_path(&self) -> std::path::PathBuf {
        std::path::Path::new("/proc/sys").join(&self.key)
    }
}

/// What the peer must do before it receives diverted packets, as data; the links adapter applies
/// it and the caller records the old values to restore them (pitfall 7: every sysctl changed is
/// restored).
///
/// The peer is still BACKUP while the drain runs, so it does not hold the VIPs: it accepts packets
/// addressed to them only through a local route (`local VIP/32 dev lo`). And it must not answer
/// ARP for them (`arp_ignore=1`: answer only for addresses configured on the asking interface;
/// `arp_announce=2`: never use a VIP as ARP source), or clients may learn its MAC for the VIP and
/// send flows that must stay on the draining node to it (pitfall 5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerPlan {
    /// Addresses that need a local route (`ip route add local A/32 dev lo`).
    pub local_routes: Vec<Ipv4Addr>,
    /// Sysctls on the peer's ingress interface.
    pub sysctls: Vec<SysctlChange>,
}

impl PeerPlan {
    /// Computes the peer-side changes; the peer's ingress interface has the same name as ours
    /// (both nodes share one configuration, apart from `peer`).
    pub fn new(config: &Config) -> PeerPlan {
        let ifname = config.ingress_interface.as_str();
        let sysctl = |name: &str, value: &str| SysctlChange {
            key: format!("net/ipv4/conf/{ifname}/{name}"),
            value: value.to_string(),
        };
        PeerPlan {
            local_routes: config.vips.iter().map(|v| v.address.get()).collect(),
            sysctls: vec![sysctl("arp_ignore", "1"), sysctl("arp_announce", "2")],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    /// The fixed configuration behind the golden files: two VIPs sharing port 80, a non-default
    /// prefix, mark and capacity.
    const GOLDEN_CONFIG: &str = "\
vips:
  - address: 198.18.0.100
    ports: [80, 7]
  - address: 198.18.0.101
    ports: [443, 80]
ingress_interface: eth0
peer: 198.18.0.12
tracked_interface: trk0
firewall:
  chain_prefix: LBDRAIN
  mark: 0x100
  mark_mask: 0xf00
  max_diverted_flows: 100000
";

    fn plan_from(text: &str) -> DivertPlan {
        DivertPlan::new(&Config::from_str(text, "test").unwrap())
    }

    fn golden_plan() -> DivertPlan {
        plan_from(GOLDEN_CONFIG)
    }

    /// Compares `actual` with tests/golden/`name`; with UPDATE_GOLDEN=1 rewrites the file instead.
    fn golden(name: &str, actual: &str) {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/golden")
            .join(name);
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, actual).unwrap();
            return;
        }
        let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e}; run with UPDATE_GOLDEN=1 to create it",
                path.display()
            )
        });
        assert_eq!(
            actual,
            expected,
            "{} differs; if the change is intended, rerun with UPDATE_GOLDEN=1 and review the diff",
            path.display()
        );
    }

    #[test]
    fn golden_install() {
        golden("install.txt", &golden_plan().install_rules());
    }

    #[test]
    fn golden_withdraw() {
        golden("withdraw.txt", &golden_plan().withdraw_rules());
    }

    #[test]
    fn golden_seal() {
        golden("seal.txt", &golden_plan().seal_rules());
    }

    #[test]
    fn golden_remove() {
        golden("remove.txt", &golden_plan().remove_rules());
    }

    #[test]
    fn golden_ipset() {
        let p = golden_plan();
        golden("ipset-create.txt", &p.ipset_create());
        // Port 80's member 0 half full, port 7's nearly empty, port 443 at its last member.
        let terse = "Name: LBDRAIN-80-0\nType: hash:ip,port,ip\nHeader: family inet hashsize 65536 maxelem 65536 bucketsize 12 initval 0x1\nSize in memory: 400000\nReferences: 1\nNumber of entries: 32768\n\n\
            Name: LBDRAIN-80\nType: list:set\nHeader: size 4\nNumber of entries: 1\n\n\
            Name: LBDRAIN-7-0\nType: hash:ip,port,ip\nHeader: family inet hashsize 65536 maxelem 65536 bucketsize 12\nNumber of entries: 3\n\n\
            Name: LBDRAIN-7\nType: list:set\nHeader: size 4\nNumber of entries: 1\n\n\
            Name: LBDRAIN-443-0\nType: hash:ip,port,ip\nHeader: family inet hashsize 65536 maxelem 65536 bucketsize 12\nNumber of entries: 65536\n\n\
            Name: LBDRAIN-443-1\nType: hash:ip,port,ip\nHeader: family inet hashsize 65536 maxelem 34464 bucketsize 12\nNumber of entries: 20000\n\n\
            Name: LBDRAIN-443\nType: list:set\nHeader: size 4\nNumber of entries: 2\n";
        let stats = p.record_stats(terse);
        assert_eq!(stats.entries(), 32768 + 3 + 65536 + 20000);
        assert_eq!(stats.ports[0].members[0].bytes(), 400000 + 8 * 65536);
        golden("ipset-grow.txt", &p.ipset_grow(&stats, |_| 0).unwrap());
        let mut all: Vec<String> = Vec::new();
        for port in p.ports() {
            for m in p.member_schedule() {
                all.push(p.member_name(*port, m.index));
            }
            all.push(p.set_name(*port));
        }
        golden(
            "ipset-destroy.txt",
            &p.ipset_destroy_observed(&all).unwrap(),
        );
    }

    #[test]
    fn golden_expected_rules() {
        let p = golden_plan();
        golden(
            "expected-installed.txt",
            &text(p.expected_rules(Phase::Installed)),
        );
        golden(
            "expected-sealed.txt",
            &text(p.expected_rules(Phase::Sealed)),
        );
        golden(
            "expected-withdrawn.txt",
            &text(p.expected_rules(Phase::Withdrawn)),
        );
    }

    #[test]
    fn golden_peer_plan() {
        let peer = PeerPlan::new(&Config::from_str(GOLDEN_CONFIG, "test").unwrap());
        let mut lines: Vec<String> = peer
            .local_routes
            .iter()
            .map(|a| format!("local-route {a}/32"))
            .collect();
        lines.extend(
            peer.sysctls
                .iter()
                .map(|s| format!("sysctl {} = {}", s.key, s.value)),
        );
        golden("peer.txt", &text(lines));
        assert_eq!(
            peer.sysctls[0].proc_path(),
            PathBuf::from("/proc/sys/net/ipv4/conf/eth0/arp_ignore")
        );
    }

    #[test]
    fn shared_ports_get_one_set_each() {
        assert_eq!(
            golden_plan().set_names(),
            ["LBDRAIN-80", "LBDRAIN-7", "LBDRAIN-443"]
        );
    }

    #[test]
    fn names_fit_the_kernel_limits_with_the_longest_prefix() {
        let longest = GOLDEN_CONFIG
            .replace("LBDRAIN", "ABCDEFGHIJKL")
            .replace("[443, 80]", "[65535]");
        let p = plan_from(&longest);
        for chain in p.chains() {
            assert!(chain.len() <= MAX_CHAIN_NAME_LEN, "{chain}");
        }
        let sets = p.set_names();
        assert!(sets.contains(&"ABCDEFGHIJKL-65535".to_string()));
        for set in sets {
            assert!(set.len() <= MAX_SET_NAME_LEN, "{set}");
        }
        let last = p.member_schedule().len() - 1;
        let member = p.member_name(65535, last);
        assert!(member.len() <= MAX_SET_NAME_LEN, "{member}");
    }

    /// What iptables-save printed in a scratch namespace after install_rules, with a user rule
    /// and a user chain around ours (captured from iptables-nft 1.8.9 and rearranged by hand into
    /// its order: builtins first, user chains sorted by name).
    fn saved_installed(p: &DivertPlan) -> String {
        let mut lines = vec![
            "# Generated by iptables-save v1.8.9 (nf_tables) on Sun Nov 22 01:04:22 2026".into(),
            "*mangle".into(),
            ":PREROUTING ACCEPT [0:0]".into(),
            ":INPUT ACCEPT [0:0]".into(),
            ":FORWARD ACCEPT [0:0]".into(),
            ":OUTPUT ACCEPT [0:0]".into(),
            ":POSTROUTING ACCEPT [0:0]".into(),
            ":AAA - [0:0]".to_string(),
        ];
        let expected = p.expected_rules(Phase::Installed);
        lines.extend(expected.iter().filter(|l| l.starts_with(':')).cloned());
        lines.extend(
            expected
                .iter()
                .filter(|l| l.starts_with("-A PREROUTING"))
                .cloned(),
        );
        lines.push(
            "-A PREROUTING -p udp -m udp --dport 53 -j MARK --set-xmark 0x5/0xffffffff".into(),
        );
        lines.push("-A AAA -j RETURN".into());
        lines.extend(
            expected
                .iter()
                .filter(|l| l.starts_with("-A ") && !l.starts_with("-A PREROUTING"))
                .cloned(),
        );
        lines.push("COMMIT".into());
        text(lines)
    }

    #[test]
    fn read_back_accepts_exactly_the_expected_lines() {
        let p = golden_plan();
        let saved = saved_installed(&p);
        assert_eq!(p.check_read_back(Phase::Installed, &saved), Ok(()));
        assert!(matches!(
            p.check_read_back(Phase::Withdrawn, &saved),
            Err(ReadBackError::Differs { .. })
        ));
    }

    #[test]
    fn the_observed_phase_is_the_one_whose_rules_are_there() {
        let p = golden_plan();
        let saved = saved_installed(&p);
        assert_eq!(p.observed_phase(&saved), Some(Phase::Installed));
        let sealed = saved.replace(
            "-A LBDRAIN-NEW -j LBDRAIN-MISS\n",
            "-A LBDRAIN-NEW -j LBDRAIN-MISS\n-A LBDRAIN-NEW -j DROP\n",
        );
        assert_eq!(p.observed_phase(&sealed), Some(Phase::Sealed));
        let broken = saved.replace("-A LBDRAIN-DIV -j DROP\n", "");
        assert_eq!(p.observed_phase(&broken), None);
        assert_eq!(p.observed_phase("*mangle\nCOMMIT\n"), None);
    }

    #[test]
    fn read_back_ignores_chain_order_but_not_rule_order() {
        let p = golden_plan();
        let saved = saved_installed(&p);
        // Chains listed in creation order instead of by name: still fine.
        let div_block: Vec<&str> = saved
            .lines()
            .filter(|l| l.starts_with("-A LBDRAIN-DIV"))
            .collect();
        let mut reordered: Vec<&str> = saved
            .lines()
            .filter(|l| !l.starts_with("-A LBDRAIN-DIV") && *l != "COMMIT")
            .collect();
        reordered.extend(&div_block);
        reordered.push("COMMIT");
        let reordered = text(reordered.into_iter().map(String::from));
        assert_eq!(p.check_read_back(Phase::Installed, &reordered), Ok(()));
        // TEE before MARK inside P-DIV: wrong.
        let swapped = saved
            .replace("-j MARK --set-xmark 0x100/0xf00", "@@")
            .replace(
                "-j TEE --gateway 198.18.0.12",
                "-j MARK --set-xmark 0x100/0xf00",
            )
            .replace("@@", "-j TEE --gateway 198.18.0.12");
        assert!(p.check_read_back(Phase::Installed, &swapped).is_err());
    }

    #[test]
    fn read_back_rejects_missing_extra_and_late_jumps() {
        let p = golden_plan();
        let saved = saved_installed(&p);
        let missing = saved.replace("-A LBDRAIN-DIV -j DROP\n", "");
        assert!(p.check_read_back(Phase::Installed, &missing).is_err());
        let extra = saved.replace("COMMIT", "-A LBDRAIN-PRE -j ACCEPT\nCOMMIT");
        assert!(p.check_read_back(Phase::Installed, &extra).is_err());
        let foreign_jump = saved.replace("COMMIT", "-A OUTPUT -j LBDRAIN-DIV\nCOMMIT");
        assert!(p.check_read_back(Phase::Installed, &foreign_jump).is_err());
        // A user rule first in PREROUTING could ACCEPT before our jumps are reached.
        let user = "-A PREROUTING -p udp -m udp --dport 53 -j MARK --set-xmark 0x5/0xffffffff\n";
        let late = saved.replace(user, "").replace(
            ":LBDRAIN-PRE - [0:0]\n",
            &format!(":LBDRAIN-PRE - [0:0]\n{user}"),
        );
        assert_eq!(
            p.check_read_back(Phase::Installed, &late),
            Err(ReadBackError::NotFirst {
                found: vec![
                    user.trim_end().to_string(),
                    p.expected_rules(Phase::Installed)[4].clone()
                ]
            })
        );
    }

    #[test]
    fn conflicts_are_found_by_exact_name() {
        let p = golden_plan();
        let saved = ":LBDRAIN-PREX - [0:0]\n:LBDRAIN-NEW - [0:0]\n";
        assert_eq!(p.existing_chains(saved), ["LBDRAIN-NEW"]);
        let sets: Vec<String> = [
            "LBDRAIN-8",
            "LBDRAIN-443",
            "LBDRAIN-x",
            "LBDRAIN-08",
            "LBDRAINX-1",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(p.existing_sets(&sets), ["LBDRAIN-8", "LBDRAIN-443"]);
    }

    #[test]
    fn observed_removal_takes_what_is_there_even_from_an_older_config() {
        let p = golden_plan();
        let saved = "*mangle\n:PREROUTING ACCEPT [0:0]\n:LBDRAIN-PRE - [0:0]\n\
            -A PREROUTING -d 198.18.0.99/32 -i eth1 -p tcp -m multiport --dports 22 -j LBDRAIN-PRE\n\
            -A PREROUTING -p udp -m udp --dport 53 -j ACCEPT\n\
            -A LBDRAIN-PRE -j ACCEPT\nCOMMIT\n";
        assert_eq!(
            p.remove_rules_observed(saved).unwrap(),
            "*mangle\n\
             -D PREROUTING -d 198.18.0.99/32 -i eth1 -p tcp -m multiport --dports 22 -j LBDRAIN-PRE\n\
             -F LBDRAIN-PRE\n-X LBDRAIN-PRE\nCOMMIT\n"
        );
        assert_eq!(
            p.remove_rules_observed("*mangle\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n"),
            None
        );
    }

    #[test]
    fn observed_removal_of_everything_equals_the_full_removal() {
        let p = golden_plan();
        assert_eq!(
            p.remove_rules_observed(&saved_installed(&p)).unwrap(),
            p.remove_rules()
        );
    }

    #[test]
    fn observed_set_destruction_takes_only_prefix_dash_port() {
        let p = golden_plan();
        let names: Vec<String> = [
            "LBDRAIN-80-0",
            "LBDRAIN-80",
            "LBDRAIN-8080",
            "LBDRAIN-x",
            "LBDRAIN-080",
            "LBDRAIN-80-01",
            "LBDRAIN-80-x",
            "LBDRAINX-1",
            "other",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        // Lists first: a member still in a list is in use and cannot be destroyed.
        assert_eq!(
            p.ipset_destroy_observed(&names).unwrap(),
            "destroy LBDRAIN-80\ndestroy LBDRAIN-8080\ndestroy LBDRAIN-80-0\n"
        );
        assert_eq!(p.ipset_destroy_observed(&names[7..]), None);
    }
}
