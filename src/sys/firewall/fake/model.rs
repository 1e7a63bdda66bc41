//! What the fake firewall holds and how the planner's texts change it: the kernel model behind
//! [`FakeFirewall`] (chains and rules, sets and their fill, counters), and the operations
//! themselves, which the [`super::Firewall`] impl runs between its hooks.

use std::collections::BTreeMap;

use super::{FakeFirewall, FakeOp, FirewallCall};
use crate::sys::firewall::{FirewallError, MANGLE_BUILTINS};
use crate::sys::process::ProcessError;

/// The kernel state the fake models: what `iptables-save` and `ipset list` would show.
#[derive(Debug, Clone, Default)]
pub(super) struct FakeState {
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

/// The operations themselves, without hooks.
impl FakeFirewall {
    pub(super) fn restore_unhooked(&mut self, text: &str) -> Result<(), FirewallError> {
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

    pub(super) fn save_mangle_unhooked(&mut self) -> Result<String, FirewallError> {
        self.begin(FakeOp::SaveMangle, FirewallCall::SaveMangle)?;
        Ok(self.mangle_text())
    }

    pub(super) fn ipset_restore_unhooked(&mut self, text: &str) -> Result<(), FirewallError> {
        self.begin(
            FakeOp::IpsetRestore,
            FirewallCall::IpsetRestore(text.to_string()),
        )?;
        // Line by line, keeping what succeeded before an error, like the real `ipset restore`.
        for (i, line) in text.lines().enumerate() {
            let words: Vec<&str> = line.split_whitespace().collect();
            let fail = |what: String| {
                FirewallError::Process(ProcessError::Failed {
                    binary: "ipset".into(),
                    args: "restore".into(),
                    status: "exit code 1".into(),
                    stderr: format!("ipset v7.17: Error in line {}: {what}", i + 1),
                })
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
                ["flush", name] => match st.set_info.get_mut(*name) {
                    Some(FakeSet::List { members }) => members.clear(),
                    Some(FakeSet::Hash { entries, .. }) => *entries = 0,
                    None => return Err(fail("The set with the given name does not exist".into())),
                },
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

    pub(super) fn ipset_names_unhooked(&mut self) -> Result<Vec<String>, FirewallError> {
        self.begin(FakeOp::IpsetNames, FirewallCall::IpsetNames)?;
        Ok(self.state.sets.clone())
    }

    pub(super) fn ipset_list_terse_unhooked(&mut self) -> Result<String, FirewallError> {
        self.begin(FakeOp::IpsetListTerse, FirewallCall::IpsetListTerse)?;
        Ok(self.ipset_terse_text())
    }

    pub(super) fn save_mangle_counters_unhooked(&mut self) -> Result<String, FirewallError> {
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

    pub(super) fn mangle_table_present_unhooked(&mut self) -> Result<bool, FirewallError> {
        self.begin(FakeOp::MangleTablePresent, FirewallCall::MangleTablePresent)?;
        Ok(self.state.table_present)
    }

    pub(super) fn drop_mangle_table_if_empty_unhooked(&mut self) -> Result<bool, FirewallError> {
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
