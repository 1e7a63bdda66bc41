//! Keeps the diverted-flow record ahead of the traffic while the divert is in place: looks at
//! every set's fill every [`TEND_INTERVAL`], appends the next member to a port whose newest
//! member is half full or will be before the look after next at the rate it fills
//! ([`DivertPlan::ipset_grow`]), and reads the divert's counters every [`COUNT_INTERVAL`]. Why
//! the record must be grown by the agent at all is in [`crate::plan::sets`].
//!
//! Written against the [`Firewall`] trait and a caller-supplied clock, so the drain uses it with
//! its host and the kernel tests with a real firewall and real time.

use std::collections::BTreeMap;
use std::time::Duration;

use super::divert::{self, DivertError};
use crate::plan::sets::{DivertCounters, RecordStats};
use crate::plan::DivertPlan;
use crate::sys::firewall::Firewall;

/// How often the record is tended. The first member holds 65 536 flows and gets a successor at
/// half of that, so up to 160 000 new flows/s one interval cannot fill it before the next look;
/// later members are 8 times larger each, and grow earlier at the rate they fill.
pub const TEND_INTERVAL: Duration = Duration::from_millis(200);

/// How often the divert's counters are read.
pub const COUNT_INTERVAL: Duration = Duration::from_secs(1);

/// A member appended to a port's record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Growth {
    /// The member set created.
    pub set: String,
    /// Flows the port's record held when it grew.
    pub recorded: u64,
    /// Flows the port's record can hold now.
    pub room: u64,
}

/// What one tick found worth reporting.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct News {
    /// Members appended.
    pub grown: Vec<Growth>,
    /// Unrecorded SYNs so far, when the count went up since the last look.
    pub unrecorded: Option<u64>,
    /// Flows recorded as of the last look.
    pub recorded: u64,
    /// A failure, when it differs from the last one reported.
    pub error: Option<String>,
}

/// The tending state.
#[derive(Debug)]
pub struct RecordKeeper {
    next_tend: Duration,
    next_count: Duration,
    stats: RecordStats,
    stats_at: Duration,
    /// New flows per second per port, from the last two looks.
    rates: BTreeMap<u16, f64>,
    counters: DivertCounters,
    last_error: Option<String>,
}

impl RecordKeeper {
    /// Starts tending at `now` (the install): the first look is due at once.
    pub fn new(now: Duration) -> RecordKeeper {
        RecordKeeper {
            next_tend: now,
            next_count: now + COUNT_INTERVAL,
            stats: RecordStats::default(),
            stats_at: now,
            rates: BTreeMap::new(),
            counters: DivertCounters::default(),
            last_error: None,
        }
    }

    /// The record as of the last look.
    pub fn stats(&self) -> &RecordStats {
        &self.stats
    }

    /// The counters as of the last read.
    pub fn counters(&self) -> &DivertCounters {
        &self.counters
    }

    /// Does what is due at `now`. Failures are reported, never fatal: the divert itself is
    /// already in place, and a record that stops growing loses nothing silently.
    pub fn tick(&mut self, fw: &mut dyn Firewall, plan: &DivertPlan, now: Duration) -> News {
        let mut news = News::default();
        if now >= self.next_tend {
            self.next_tend = now + TEND_INTERVAL;
            self.tend(fw, plan, now, &mut news);
        }
        if now >= self.next_count {
            self.next_count = now + COUNT_INTERVAL;
            self.count(fw, plan, &mut news);
        }
        news.recorded = self.stats.entries();
        news
    }

    /// The last look before the divert goes: counters and fill, read now.
    pub fn final_look(
        &mut self,
        fw: &mut dyn Firewall,
        plan: &DivertPlan,
    ) -> (News, RecordStats, DivertCounters) {
        let mut news = News::default();
        self.count(fw, plan, &mut news);
        match fw.ipset_list_terse() {
            Ok(terse) => self.stats = plan.record_stats(&terse),
            Err(e) => self.failed(e, &mut news),
        }
        news.recorded = self.stats.entries();
        (news, self.stats.clone(), self.counters.clone())
    }

    fn tend(&mut self, fw: &mut dyn Firewall, plan: &DivertPlan, now: Duration, news: &mut News) {
        let stats = match fw.ipset_list_terse() {
            Ok(terse) => plan.record_stats(&terse),
            Err(e) => return self.failed(e, news),
        };
        let dt = (now - self.stats_at).as_secs_f64();
        if dt > 0.0 && !self.stats.ports.is_empty() {
            for (new, old) in stats.ports.iter().zip(&self.stats.ports) {
                let rate = new.entries().saturating_sub(old.entries()) as f64 / dt;
                self.rates.insert(new.port, rate);
            }
        }
        self.stats = stats;
        self.stats_at = now;
        // Grow early enough for the flows expected before the look after next.
        let horizon = 2.0 * TEND_INTERVAL.as_secs_f64();
        let lookahead =
            |port: u16| (self.rates.get(&port).copied().unwrap_or(0.0) * horizon).ceil() as u64;
        let Some(text) = plan.ipset_grow(&self.stats, lookahead) else {
            return;
        };
        if let Err(e) = fw.ipset_restore(&text) {
            return self.failed(e, news);
        }
        let schedule = plan.member_schedule();
        for set in text.lines().filter_map(DivertPlan::created_by) {
            let Some(rec) = self
                .stats
                .ports
                .iter()
                .find(|r| set.starts_with(&format!("{}-", plan.set_name(r.port))))
            else {
                continue;
            };
            let added = schedule
                .get(rec.members.len())
                .map_or(0, |m| u64::from(m.maxelem));
            news.grown.push(Growth {
                set: set.to_string(),
                recorded: rec.entries(),
                room: rec.room() + added,
            });
        }
    }

    fn count(&mut self, fw: &mut dyn Firewall, plan: &DivertPlan, news: &mut News) {
        match divert::counters(fw, plan) {
            Ok(c) => {
                if c.unrecorded_syns() > self.counters.unrecorded_syns() {
                    news.unrecorded = Some(c.unrecorded_syns());
                }
                self.counters = c;
            }
            Err(e) => self.failed(e, news),
        }
    }

    fn failed(&mut self, e: impl Into<DivertError>, news: &mut News) {
        let e: DivertError = e.into();
        let error = e.to_string();
        if self.last_error.as_ref() != Some(&error) {
            news.error = Some(error.clone());
            self.last_error = Some(error);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::divert::{install, remove};
    use crate::sys::firewall::{FakeFirewall, FirewallError};

    fn plan() -> DivertPlan {
        DivertPlan::new(&crate::ops::fake::test_config("80, 7", ""))
    }

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn a_port_grows_once_its_newest_member_is_half_full() {
        let mut fw = FakeFirewall::new();
        let p = plan();
        install(&mut fw, &p).unwrap();
        let mut k = RecordKeeper::new(MS(0));
        assert_eq!(k.tick(&mut fw, &p, MS(0)), News::default());
        // Slowly (32 flows/s): 13 expected before the look after next, far from half.
        fw.syns(80, 32_000);
        let news = k.tick(&mut fw, &p, MS(1_000_000));
        assert!(news.grown.is_empty(), "{news:?}");
        assert_eq!(news.recorded, 32_000);
        fw.syns(80, 768);
        let news = k.tick(&mut fw, &p, MS(2_000_000));
        assert_eq!(
            news.grown,
            [Growth {
                set: "DRAIN-80-1".into(),
                recorded: 32_768,
                room: 65_536 + 524_288
            }]
        );
        // Member 0 takes flows until it is full, then member 1 does; nothing is lost.
        assert_eq!(fw.syns(80, 40_000), 40_000);
        assert_eq!(fw.set_entries("DRAIN-80-0"), 65_536);
        assert_eq!(fw.set_entries("DRAIN-80-1"), 32_768 + 40_000 - 65_536);
        let (news, stats, counters) = k.final_look(&mut fw, &p);
        assert_eq!(news.unrecorded, None);
        assert_eq!(stats.entries(), 72_768);
        assert_eq!(counters.unrecorded_syns(), 0);
        remove(&mut fw, &p, true).unwrap();
        assert!(fw.sets().is_empty(), "lists and members all destroyed");
    }

    #[test]
    fn a_port_filling_fast_grows_before_it_is_half_full() {
        let mut fw = FakeFirewall::new();
        let p = plan();
        install(&mut fw, &p).unwrap();
        let mut k = RecordKeeper::new(MS(0));
        k.tick(&mut fw, &p, MS(0));
        // 20 000 flows in 200 ms: 100 000/s, so 40 000 more are expected before the look after
        // next, which would take member 0 past half: it grows now, at 20 000.
        fw.syns(80, 20_000);
        let news = k.tick(&mut fw, &p, MS(200));
        assert_eq!(news.grown.len(), 1, "{news:?}");
        assert_eq!(news.grown[0].recorded, 20_000);
    }

    #[test]
    fn unrecorded_syns_are_news_once_and_failures_are_not_repeated() {
        let mut fw = FakeFirewall::new();
        let p = DivertPlan::new(&crate::ops::fake::test_config(
            "80",
            "firewall:\n  max_diverted_flows: 1024\n",
        ));
        install(&mut fw, &p).unwrap();
        let mut k = RecordKeeper::new(MS(0));
        fw.syns(80, 1100);
        assert_eq!(k.tick(&mut fw, &p, COUNT_INTERVAL).unrecorded, Some(76));
        assert_eq!(k.tick(&mut fw, &p, 2 * COUNT_INTERVAL).unrecorded, None);
        fw.fail_next(
            crate::sys::firewall::FakeOp::IpsetListTerse,
            FirewallError::BadOutput {
                binary: "ipset".into(),
                detail: "x".into(),
            },
        );
        fw.fail_next(
            crate::sys::firewall::FakeOp::IpsetListTerse,
            FirewallError::BadOutput {
                binary: "ipset".into(),
                detail: "x".into(),
            },
        );
        assert!(k.tick(&mut fw, &p, 3 * COUNT_INTERVAL).error.is_some());
        assert!(k.tick(&mut fw, &p, 4 * COUNT_INTERVAL).error.is_none());
    }
}
