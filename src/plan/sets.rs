//! The diverted-flow record: how each per-port set is laid out and grown so that every diverted
//! flow is recorded up to `firewall.max_diverted_flows`, and how its fill and the divert's packet
//! counters are read back. Pure: texts in, texts out.
//!
//! # Why the record is a `list:set` of hash sets that the agent grows
//!
//! The record is written from the packet path (`-j SET --add-set`), and **the kernel never
//! resizes a hash set on a packet-path add** (`ip_set_hash_gen.h`: "Resizing can be triggered by
//! userspace command only"). A `hash:ip,port,ip` set is an array of `hashsize` buckets of at most
//! `bucketsize` (12) entries; when the bucket an element hashes to is full, the add from the
//! packet path simply fails. Measured (docs/kernel-facts.md#k9): 20 000 SYNs from distinct ports into a set
//! created with the default `hashsize 1024` left 12 227 entries; during a drain at 1500–3000 new
//! connections/s a few SYNs per thousand were not recorded, fell through to "local", and after the
//! VIP had left the node the kernel dropped them in routing (`IP_INADDRERRORS`): a 1 s stall, or a
//! reset for a flow that had started locally just before the failover.
//!
//! Sizing one hash set for the whole capacity up front works, but its bucket array is allocated
//! and zeroed when the set is created: 8 bytes × `hashsize`, i.e. 8–16 MiB per port for a million
//! flows. Measured on this project's 2-core VM, zeroing fresh memory costs ~2.7 ms per MiB
//! (`perf`: `clear_page_erms` under `hash_ipportip_create`), so four such sets took ~180 ms to
//! create, where the whole install is meant to take under 20 ms.
//!
//! So each VIP port gets a `list:set` `P-<port>` whose members are hash sets `P-<port>-<k>`, and
//! the rules name only the list. For a list, the kernel's packet-path add tries the members in
//! order and stops at the first that accepts the element (`list_set_kadd`), and a match tests every
//! member. A member that rejects an element (its bucket is full, or it holds `maxelem` entries)
//! therefore passes it to the next member instead of losing it. The install creates only member 0
//! (small and fast); while the divert is in place the agent appends a larger member as soon as the
//! newest one is half full ([`DivertPlan::ipset_grow`]), so there is always a member with room
//! ahead of the traffic, until the members' `maxelem` add up to the configured capacity.
//!
//! A flow goes unrecorded only if *every* member rejects it: all but the newest are at their
//! `maxelem`, and the newest rejects only when the element's bucket already holds 12 entries. At
//! the newest member's load when the next one is added (0.5 entries per bucket) that is
//! P(Poisson(0.5) ≥ 12) ≈ 3·10⁻¹³ per flow ([`unrecorded_bound_per_flow`]). If the agent cannot
//! keep ahead (it died, or the capacity is reached), unrecorded SYNs are counted exactly
//! ([`DivertCounters::unrecorded_syns`]) and handled without a silent drop (see the crate's plan
//! module docs, "sealed").
//!
//! Memory: 8 bytes per bucket of each member (allocated when the member is created) plus the
//! buckets' entries (12-byte elements in arrays grown two at a time, with a 32-byte header per
//! used bucket), which the kernel reports as `Size in memory` (it leaves the bucket array out).

use super::DivertPlan;

/// Hash buckets of member 0 (8 bytes each: 512 KiB per port when the divert is installed).
/// Measured on the 2-core VM: four such sets are created in one `ipset restore` in ~3 ms, the same
/// as 16 384-bucket sets; from 1 MiB on the kernel takes fresh pages from vmalloc and the cost
/// grows with the size. Half of it, 32 768 flows, is the headroom before the first growth: at
/// one look every 200 ms (the record keeper's tend interval) that covers 160 000 new flows/s.
pub const FIRST_MEMBER_HASHSIZE: u32 = 65_536;
/// Each member has this many times the buckets of the one before.
pub const GROWTH_FACTOR: u32 = 8;
/// The most entries per bucket the kernel allows (`AHASH_MAX_SIZE`); stated on create.
pub const BUCKETSIZE: u32 = 12;
/// The newest member gets a successor once it holds this share of its `maxelem` (or will before
/// the agent looks again, at the rate it is filling).
pub const GROW_AT: f64 = 0.5;
/// `list:set` sizes below this are raised to it by the kernel (`IP_SET_LIST_MIN_SIZE`).
const LIST_MIN_SIZE: usize = 4;
/// The smallest hashsize the kernel accepts (`IPSET_MIMINAL_HASHSIZE`).
const MIN_HASHSIZE: u32 = 64;

/// Kernel memory per recorded flow, bucket arrays aside: measured by `tests/record_scale_ns.rs`
/// (200 000 flows: 9 350 680 bytes of `Size in memory`, 12-byte elements in buckets grown two at a
/// time with a 32-byte header each).
pub const ENTRY_BYTES: u64 = 47;

/// Kernel memory one port's record takes when it holds `capacity` flows: every member's bucket
/// array plus [`ENTRY_BYTES`] per flow.
pub fn full_record_bytes(capacity: u32) -> u64 {
    member_schedule(capacity)
        .iter()
        .map(MemberSpec::table_bytes)
        .sum::<u64>()
        + ENTRY_BYTES * u64::from(capacity)
}

/// One member hash set of a port's record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemberSpec {
    /// Position in the list (0 = created with the install).
    pub index: usize,
    /// Buckets (a power of two).
    pub hashsize: u32,
    /// Entries it accepts before it passes every new element on.
    pub maxelem: u32,
}

impl MemberSpec {
    /// Bytes of the bucket array, allocated when the member is created.
    pub fn table_bytes(&self) -> u64 {
        8 * u64::from(self.hashsize)
    }
}

/// The members a port's record can grow to, in order, for `capacity` recorded flows: member `k`
/// has `FIRST_MEMBER_HASHSIZE × GROWTH_FACTOR^k` buckets and as many entries (at most one entry
/// per bucket on average when full); the last one is cut so the `maxelem`s add up to `capacity`.
pub fn member_schedule(capacity: u32) -> Vec<MemberSpec> {
    let mut members = Vec::new();
    let mut left = capacity;
    let mut hashsize = FIRST_MEMBER_HASHSIZE;
    while left > 0 {
        let maxelem = left.min(hashsize);
        members.push(MemberSpec {
            index: members.len(),
            hashsize: maxelem.next_power_of_two().max(MIN_HASHSIZE),
            maxelem,
        });
        left -= maxelem;
        hashsize = hashsize.saturating_mul(GROWTH_FACTOR);
    }
    members
}

/// P(X ≥ k) for X ~ Poisson(λ): the chance that a bucket of a set with λ entries per bucket on
/// average already holds k or more.
pub fn poisson_tail(lambda: f64, k: u32) -> f64 {
    // Summed upwards from P(X = k); the terms shrink geometrically once i > λ, so the sum is
    // accurate even where the tail is far below the precision of 1 − P(X < k).
    let mut term = (-lambda).exp();
    for i in 1..=k {
        term *= lambda / f64::from(i);
    }
    let (mut sum, mut i) = (0.0, k);
    loop {
        sum += term;
        i += 1;
        term *= lambda / f64::from(i);
        if term <= sum * 1e-17 || i > k + 1000 {
            return sum;
        }
    }
}

/// Upper bound on the chance that one new flow goes unrecorded while the agent keeps ahead: the
/// newest member rejects it only if the element's bucket is full, and the newest member holds at
/// most `GROW_AT` entries per bucket before the next one exists.
pub fn unrecorded_bound_per_flow() -> f64 {
    poisson_tail(GROW_AT, BUCKETSIZE)
}

/// What `ipset list -t` shows of one of our sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberStats {
    /// Set name (`P-<port>-<k>`).
    pub name: String,
    /// Its index `k`.
    pub index: usize,
    /// Entries now.
    pub entries: u64,
    /// Its `maxelem`.
    pub maxelem: u64,
    /// Its buckets.
    pub hashsize: u64,
    /// The kernel's `Size in memory` (entries and bucket headers, not the bucket array).
    pub memsize: u64,
}

impl MemberStats {
    /// Bytes the member holds: the kernel's own count plus the bucket array it leaves out.
    pub fn bytes(&self) -> u64 {
        self.memsize + 8 * self.hashsize
    }
}

/// The record of one VIP port as observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortRecord {
    /// The VIP port.
    pub port: u16,
    /// Whether the list `P-<port>` exists.
    pub list_present: bool,
    /// Its members that exist, by index.
    pub members: Vec<MemberStats>,
}

impl PortRecord {
    /// Flows recorded (a flow whose SYN was retransmitted into another member counts twice; that
    /// needs a rejection by the earlier member first, so it is rare).
    pub fn entries(&self) -> u64 {
        self.members.iter().map(|m| m.entries).sum()
    }
    /// Entries the existing members can take.
    pub fn room(&self) -> u64 {
        self.members.iter().map(|m| m.maxelem).sum()
    }
    /// Bytes held by the members.
    pub fn bytes(&self) -> u64 {
        self.members.iter().map(MemberStats::bytes).sum()
    }
}

/// The whole record as observed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordStats {
    /// One per VIP port, in plan order.
    pub ports: Vec<PortRecord>,
}

impl RecordStats {
    /// Flows recorded over all ports.
    pub fn entries(&self) -> u64 {
        self.ports.iter().map(PortRecord::entries).sum()
    }
    /// Bytes held over all ports.
    pub fn bytes(&self) -> u64 {
        self.ports.iter().map(PortRecord::bytes).sum()
    }
    /// Members over all ports.
    pub fn members(&self) -> usize {
        self.ports.iter().map(|p| p.members.len()).sum()
    }
}

/// The divert's packet counters (`iptables-save -c`), cumulative since the install. The chains
/// that hold them are never rewritten by a phase change (only `P-NEW` is), except `sealed_drops`,
/// which exists only from the seal on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DivertCounters {
    /// SYNs that reached the divert (any phase).
    pub syns: u64,
    /// SYNs no member would record, per VIP port (plan order).
    pub unrecorded_by_port: Vec<(u16, u64)>,
    /// SYNs diverted to the peer: the new flows diverted (a SYN the client retransmitted
    /// counts again).
    pub diverted_syns: u64,
    /// Packets diverted to the peer (TEE'd and dropped here).
    pub diverted_packets: u64,
    /// Unrecorded SYNs dropped after the seal (the client retransmits them to the new owner).
    pub sealed_drops: u64,
}

impl DivertCounters {
    /// SYNs no member would record, over all ports.
    pub fn unrecorded_syns(&self) -> u64 {
        self.unrecorded_by_port.iter().map(|(_, n)| n).sum()
    }
}

/// Splits `ipset list -t` output into (name, type, header, memsize, entries) blocks.
fn terse_blocks(terse: &str) -> Vec<(String, String, String, u64, u64)> {
    let mut out = Vec::new();
    let mut cur: Option<(String, String, String, u64, u64)> = None;
    for line in terse.lines() {
        let Some((key, value)) = line.split_once(": ") else {
            continue;
        };
        let value = value.trim();
        match key.trim() {
            "Name" => {
                out.extend(cur.take());
                cur = Some((value.to_string(), String::new(), String::new(), 0, 0));
            }
            "Type" => {
                if let Some(c) = cur.as_mut() {
                    c.1 = value.to_string();
                }
            }
            "Header" => {
                if let Some(c) = cur.as_mut() {
                    c.2 = value.to_string();
                }
            }
            "Size in memory" => {
                if let Some(c) = cur.as_mut() {
                    c.3 = value.parse().unwrap_or(0);
                }
            }
            "Number of entries" => {
                if let Some(c) = cur.as_mut() {
                    c.4 = value.parse().unwrap_or(0);
                }
            }
            _ => {}
        }
    }
    out.extend(cur);
    out
}

/// The value after `key` in an ipset header line (`family inet hashsize 1024 maxelem 65536 …`).
fn header_value(header: &str, key: &str) -> u64 {
    let words: Vec<&str> = header.split_whitespace().collect();
    words
        .windows(2)
        .find(|w| w[0] == key)
        .and_then(|w| w[1].parse().ok())
        .unwrap_or(0)
}

/// Counter lines of `iptables-save -c`: `[packets:bytes] -A …` → (rule line, packets).
fn counted_rules(saved: &str) -> Vec<(&str, u64)> {
    saved
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix('[')?;
            let (counts, rule) = rest.split_once("] ")?;
            let packets = counts.split(':').next()?.parse().ok()?;
            Some((rule, packets))
        })
        .collect()
}

impl DivertPlan {
    /// The members `port`'s record can grow to (the same for every port).
    pub fn member_schedule(&self) -> Vec<MemberSpec> {
        member_schedule(self.max_flows)
    }

    /// The configured capacity per port.
    pub fn capacity(&self) -> u32 {
        self.max_flows
    }

    /// Name of member `index` of `port`'s record.
    pub fn member_name(&self, port: u16, index: usize) -> String {
        format!("{}-{index}", self.set_name(port))
    }

    fn create_member(&self, port: u16, m: &MemberSpec) -> [String; 2] {
        [
            format!(
                "create {} hash:ip,port,ip family inet hashsize {} maxelem {} bucketsize {BUCKETSIZE}",
                self.member_name(port, m.index),
                m.hashsize,
                m.maxelem
            ),
            format!(
                "add {} {}",
                self.set_name(port),
                self.member_name(port, m.index)
            ),
        ]
    }

    /// `ipset restore` text creating every port's record: member 0, the list, and the member in
    /// the list. Without `-exist` on purpose: a set of one of our names that already exists is
    /// an error naming it (and its line), never silently adopted.
    pub fn ipset_create(&self) -> String {
        let schedule = self.member_schedule();
        let size = schedule.len().max(LIST_MIN_SIZE);
        let mut lines = Vec::new();
        for &port in &self.ports {
            let [create, add] = self.create_member(port, &schedule[0]);
            lines.push(create);
            lines.push(format!(
                "create {} list:set size {size}",
                self.set_name(port)
            ));
            lines.push(add);
        }
        super::text(lines)
    }

    /// The set a line of [`DivertPlan::ipset_create`] creates, if it creates one.
    pub fn created_by(line: &str) -> Option<&str> {
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("create"), Some(name)) => Some(name),
            _ => None,
        }
    }

    /// Reads `ipset list -t` output into what each port's record holds now.
    pub fn record_stats(&self, terse: &str) -> RecordStats {
        let blocks = terse_blocks(terse);
        let ports = self
            .ports
            .iter()
            .map(|&port| {
                let list = self.set_name(port);
                let mut members: Vec<MemberStats> = blocks
                    .iter()
                    .filter_map(|(name, kind, header, memsize, entries)| {
                        let index = name
                            .strip_prefix(&list)?
                            .strip_prefix('-')
                            .and_then(parse_index)?;
                        kind.starts_with("hash:").then(|| MemberStats {
                            name: name.clone(),
                            index,
                            entries: *entries,
                            maxelem: header_value(header, "maxelem"),
                            hashsize: header_value(header, "hashsize"),
                            memsize: *memsize,
                        })
                    })
                    .collect();
                members.sort_by_key(|m| m.index);
                PortRecord {
                    port,
                    list_present: blocks.iter().any(|b| b.0 == list),
                    members,
                }
            })
            .collect();
        RecordStats { ports }
    }

    /// The `ipset restore` text that appends the next member to every port's record whose
    /// newest member is at least `GROW_AT` full, or will be once `lookahead(port)` more flows have
    /// arrived (what the agent expects before it looks again), while the capacity allows; `None`
    /// if no port needs one. A record that is not fully there (a port without its list or member
    /// 0: the divert is being removed) is left alone.
    pub fn ipset_grow(
        &self,
        stats: &RecordStats,
        lookahead: impl Fn(u16) -> u64,
    ) -> Option<String> {
        let schedule = self.member_schedule();
        let mut lines = Vec::new();
        for rec in &stats.ports {
            let Some(newest) = rec.members.last() else {
                continue;
            };
            let contiguous = rec.members.iter().enumerate().all(|(i, m)| m.index == i);
            if !rec.list_present || !contiguous {
                continue;
            }
            let Some(next) = schedule.get(rec.members.len()) else {
                continue;
            };
            let soon = newest.entries.saturating_add(lookahead(rec.port));
            if (soon as f64) >= GROW_AT * newest.maxelem as f64 {
                lines.extend(self.create_member(rec.port, next));
            }
        }
        (!lines.is_empty()).then(|| super::text(lines))
    }

    /// Reads the divert's packet counters from `iptables-save -c -t mangle` output; rules are
    /// found by their exact text, so a user's rule that merely looks alike is never counted.
    pub fn counters(&self, saved: &str) -> DivertCounters {
        let rules = counted_rules(saved);
        let find = |line: &str| -> u64 {
            rules
                .iter()
                .filter(|(r, _)| *r == line)
                .map(|(_, p)| *p)
                .sum()
        };
        let (pre, miss, div, new) = (
            self.entry_chain(),
            self.miss_chain(),
            self.div_chain(),
            self.new_chain(),
        );
        DivertCounters {
            syns: find(&format!("-A {pre} {}", self.syn_rule())),
            unrecorded_by_port: self
                .ports
                .iter()
                .map(|&port| (port, find(&format!("-A {miss} {}", Self::miss_rule(port)))))
                .collect(),
            diverted_syns: find(&format!("-A {div} {}", self.div_rules()[0])),
            diverted_packets: find(&format!("-A {div} {}", self.div_rules()[1])),
            sealed_drops: find(&format!("-A {new} -j DROP")),
        }
    }
}

/// A member index as written in a set name: canonical decimal, small.
fn parse_index(s: &str) -> Option<usize> {
    s.parse::<usize>()
        .ok()
        .filter(|i| i.to_string() == s && *i < 64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_adds_up_to_the_capacity_with_at_most_one_entry_per_bucket() {
        for capacity in [1024u32, 16_384, 16_385, 100_000, 1_048_576, 16_777_216] {
            let s = member_schedule(capacity);
            assert_eq!(
                s.iter().map(|m| u64::from(m.maxelem)).sum::<u64>(),
                u64::from(capacity),
                "{capacity}"
            );
            for (i, m) in s.iter().enumerate() {
                assert_eq!(m.index, i);
                assert!(m.hashsize.is_power_of_two());
                assert!(m.maxelem <= m.hashsize, "{capacity}: {m:?}");
            }
            // Each member is at least GROWTH_FACTOR times the previous one's buckets.
            for w in s.windows(2) {
                assert!(w[1].hashsize >= w[0].hashsize || w[1].maxelem < w[0].maxelem);
            }
        }
        assert_eq!(
            member_schedule(1_048_576)
                .iter()
                .map(|m| (m.hashsize, m.maxelem))
                .collect::<Vec<_>>(),
            [(65_536, 65_536), (524_288, 524_288), (524_288, 458_752)]
        );
        assert_eq!(
            member_schedule(1024)
                .iter()
                .map(|m| (m.hashsize, m.maxelem))
                .collect::<Vec<_>>(),
            [(1024, 1024)]
        );
    }

    fn plan() -> DivertPlan {
        DivertPlan::new(
            &crate::config::Config::from_str(
                "vips:\n  - address: 198.18.0.100\n    ports: [80, 7]\ningress_interface: eth0\npeer: 198.18.0.12\ntracked_interface: trk0\n",
                "test",
            )
            .unwrap(),
        )
    }

    #[test]
    fn counters_are_read_from_our_exact_rules_only() {
        // As `iptables-save -c -t mangle` (iptables-nft 1.8.9) prints it, with a user rule that
        // looks like ours in a chain that is not.
        let saved = "*mangle\n:PREROUTING ACCEPT [0:0]\n:DRAIN-MISS - [0:0]\n\
            [5:300] -A PREROUTING -p tcp -m tcp --dport 80\n\
            [1200:72000] -A DRAIN-PRE -p tcp -m tcp --tcp-flags FIN,SYN,RST,ACK SYN -j DRAIN-NEW\n\
            [7:420] -A DRAIN-MISS -p tcp -m tcp --dport 80\n\
            [0:0] -A DRAIN-MISS -p tcp -m tcp --dport 7\n\
            [3:180] -A DRAIN-NEW -j DROP\n\
            [800:48000] -A DRAIN-DIV -p tcp -m tcp --tcp-flags FIN,SYN,RST,ACK SYN\n\
            [4000:240000] -A DRAIN-DIV -j MARK --set-xmark 0x1d000000/0xff000000\n\
            [4000:240000] -A DRAIN-DIV -j TEE --gateway 198.18.0.12\nCOMMIT\n";
        let c = plan().counters(saved);
        assert_eq!(
            c,
            DivertCounters {
                syns: 1200,
                unrecorded_by_port: vec![(80, 7), (7, 0)],
                diverted_syns: 800,
                diverted_packets: 4000,
                sealed_drops: 3,
            }
        );
        assert_eq!(c.unrecorded_syns(), 7);
    }

    #[test]
    fn record_stats_skip_sets_that_only_look_like_ours() {
        let terse = "Name: DRAIN-80-0\nType: hash:ip,port,ip\nHeader: family inet hashsize 16384 maxelem 16384 bucketsize 12\nSize in memory: 1000\nReferences: 1\nNumber of entries: 5\n\n\
            Name: DRAIN-80-x\nType: hash:ip\nHeader: family inet hashsize 1024 maxelem 65536\nNumber of entries: 9\n\n\
            Name: DRAIN-80\nType: list:set\nHeader: size 4\nNumber of entries: 1\n";
        let s = plan().record_stats(terse);
        assert_eq!(s.ports[0].port, 80);
        assert!(s.ports[0].list_present);
        assert_eq!(s.ports[0].members.len(), 1);
        assert_eq!(s.ports[0].entries(), 5);
        assert_eq!(s.ports[0].members[0].bytes(), 1000 + 8 * 16384);
        assert!(!s.ports[1].list_present && s.ports[1].members.is_empty());
        // Nothing to grow, and a port without its list is left alone.
        assert_eq!(plan().ipset_grow(&s, |_| 0), None);
        // Unless the flows expected before the next look would take member 0 past half.
        assert!(plan().ipset_grow(&s, |_| 8186).is_none());
        assert_eq!(
            plan().ipset_grow(&s, |p| if p == 80 { 8187 } else { 0 }),
            Some("create DRAIN-80-1 hash:ip,port,ip family inet hashsize 524288 maxelem 524288 bucketsize 12\nadd DRAIN-80 DRAIN-80-1\n".into())
        );
    }

    #[test]
    fn poisson_tails_match_known_values() {
        // P(X ≥ 1) = 1 − e^{−λ}.
        assert!((poisson_tail(0.5, 1) - (1.0 - (-0.5f64).exp())).abs() < 1e-12);
        // P(X ≥ 13) at λ = 1: e^{−1} Σ_{i≥13} 1/i! ≈ 5.6e-11.
        let p = poisson_tail(1.0, 13);
        assert!((5.0e-11..6.5e-11).contains(&p), "{p}");
        assert_eq!(poisson_tail(0.0, 3), 0.0);
    }

    #[test]
    fn a_flow_is_lost_with_negligible_probability_while_the_agent_keeps_ahead() {
        let p = unrecorded_bound_per_flow();
        assert!(p < 1e-12, "{p}");
        // Even over the largest capacity the expected number of unrecorded flows stays tiny.
        assert!(p * f64::from(crate::config::SetCapacity::MAX) < 1e-5);
    }
}
