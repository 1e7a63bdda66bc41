//! The rule text: the PREROUTING jumps, our chains' rules per phase, and the iptables-restore
//! transactions that install, seal, withdraw and remove them.

use super::{text, DivertPlan, Phase, Role, DIV, MISS, NEW, PRE};

impl DivertPlan {
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
    pub(super) fn pre_rules(&self) -> Vec<String> {
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
    pub(super) fn syn_rule(&self) -> String {
        format!(
            "-p tcp -m tcp --tcp-flags FIN,SYN,RST,ACK SYN -j {}",
            self.chain(NEW)
        )
    }

    /// The P-MISS rule counting `port`'s unrecorded SYNs (no target: it only counts).
    pub(super) fn miss_rule(port: u16) -> String {
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
    pub(super) fn div_rules(&self) -> Vec<String> {
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

    /// Our chains from the entry chain down to the chains it reaches.
    pub(super) fn removal_order(&self) -> [String; 4] {
        [
            self.chain(PRE),
            self.chain(NEW),
            self.chain(MISS),
            self.chain(DIV),
        ]
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
}
