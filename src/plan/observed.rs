//! What is derived from the observed state: teardown of whatever of ours `iptables-save` and
//! `ipset list -n` show (whatever configuration created it), and the read-back of a phase.

use super::{text, DivertPlan, Phase, ReadBackError};

impl DivertPlan {
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
