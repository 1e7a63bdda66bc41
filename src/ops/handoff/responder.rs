//! B, the peer of a node handing off: answers [`super::PeerRequest::Hello`] and
//! [`super::PeerRequest::Begin`], keeps the return path while it is needed, and removes it.

use std::net::Ipv4Addr;
use std::time::Duration;

use serde::Serialize;

use super::divert;
use super::protocol::{format_mac, parse_mac, PeerReply, VipPorts};
// The requests the answers below name in their docs.
#[cfg(doc)]
use super::protocol::PeerRequest;
use super::record::RecordKeeper;
use super::{Host, HostError, OpError, PeerAnswer, MIN_SLEEP};
use crate::config::Config;
use crate::journal::{Change, Journal, StateDir};
use crate::plan::{DivertPlan, Mac};

/// Answers [`PeerRequest::Hello`]: whether this node could serve `from`'s hand-off. `here` is
/// the address the question reached (this node's, as the asker sees it); the reply names it,
/// not `cfg.peer`, which on this node is the asker.
pub fn hello(cfg: &Config, here: std::net::IpAddr, vips: &[VipPorts]) -> PeerReply {
    match same_vips(cfg, vips) {
        Ok(()) => PeerReply::Ok {
            detail: format!("agent on {here} ready for a hand-off"),
        },
        Err(reason) => PeerReply::Refused { reason },
    }
}

fn same_vips(cfg: &Config, vips: &[VipPorts]) -> Result<(), String> {
    let ours = VipPorts::of(cfg);
    if ours == vips {
        Ok(())
    } else {
        Err(format!(
            "the two nodes serve different VIPs or ports (here {}, there {})",
            describe(&ours),
            describe(vips)
        ))
    }
}

fn describe(v: &[VipPorts]) -> String {
    v.iter()
        .map(|v| {
            let ports: Vec<String> = v.ports.iter().map(u16::to_string).collect();
            format!("{}:{}", v.vip, ports.join(","))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// How long B waits for its state lock before refusing (another operation, e.g. a notify, may
/// hold it briefly).
pub const LOCK_WAIT: Duration = Duration::from_secs(5);

/// The return path in place on this node, as its journal records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Returning {
    /// The node handing off.
    pub peer: Ipv4Addr,
    /// Its MAC.
    pub peer_mac: Mac,
    /// Unix time (s) after which the return path goes on its own.
    pub until: u64,
}

impl Returning {
    /// The return path this journal records, if any.
    pub fn recorded(j: &Journal) -> Option<Returning> {
        j.entries().iter().find_map(|e| match &e.change {
            Change::Returning {
                peer,
                peer_mac,
                until,
            } => Some(Returning {
                peer: *peer,
                peer_mac: parse_mac(peer_mac)?,
                until: *until,
            }),
            _ => None,
        })
    }

    /// The rules of this return path.
    pub fn plan(&self, cfg: &Config) -> DivertPlan {
        DivertPlan::new(cfg).returning(self.peer_mac)
    }
}

/// B: answers [`PeerRequest::Begin`] from the configured peer: installs the return path (journal
/// first) and returns what the supervisor ([`supervise`]) needs. Idempotent: a repeated `Begin`
/// finds the return path in place and leaves it as it is.
pub fn begin(
    cfg: &Config,
    state: &StateDir,
    h: &mut dyn Host,
    vips: &[VipPorts],
    until: u64,
) -> Result<Result<Returning, String>, OpError> {
    if let Err(reason) = same_vips(cfg, vips) {
        return Ok(Err(reason));
    }
    let _lock = state.lock_wait(LOCK_WAIT)?;
    let mut journal = state.return_journal()?;
    let peer = cfg.peer.get();
    if let Some(r) = in_place(cfg, &mut journal, h)? {
        return Ok(Ok(r));
    }
    if !state.drain_journal()?.is_empty() {
        return Ok(Err(
            "this node is itself drained or draining (its drain journal is not empty)".into(),
        ));
    }
    let Some(peer_mac) = h.peer_mac()? else {
        return Ok(Err(format!("{peer} does not answer ARP from here")));
    };
    let plan = DivertPlan::new(cfg).returning(peer_mac);
    let receipt = match divert::prepare(h.firewall(), &plan) {
        Ok(r) => r,
        Err(
            e @ (divert::DivertError::SetsExist { .. } | divert::DivertError::ChainsExist { .. }),
        ) => {
            return Ok(Err(format!(
                "leftovers of an earlier return path here: {e}"
            )))
        }
        Err(e) => return Err(HostError::from(e).into()),
    };
    let r = Returning {
        peer,
        peer_mac,
        until,
    };
    journal.record(Change::Returning {
        peer,
        peer_mac: format_mac(&peer_mac),
        until,
    })?;
    journal.record(Change::Divert {
        prefix: plan.prefix().to_string(),
        drop_mangle_table: !receipt.mangle_table_was_present,
    })?;
    crate::faults::point("handoff.responder.journalled");
    if let Err(e) = divert::apply_install(h.firewall(), &plan, &receipt) {
        // apply_install undid its own partial work.
        journal.forget_all()?;
        return Err(HostError::from(e).into());
    }
    crate::faults::point("handoff.responder.installed");
    Ok(Ok(r))
}

/// The return path the journal records, if the kernel has it as its plan says. One journalled
/// but not (wholly) installed — its agent was killed in between — is no return path: what there
/// is of it is removed and the journal cleared. The caller holds the lock.
fn in_place(
    cfg: &Config,
    journal: &mut Journal,
    h: &mut dyn Host,
) -> Result<Option<Returning>, OpError> {
    let Some(r) = Returning::recorded(journal) else {
        return Ok(None);
    };
    let plan = r.plan(cfg);
    if divert::verify(h.firewall(), &plan, crate::plan::Phase::Installed).is_ok() {
        return Ok(Some(r));
    }
    tracing::warn!(peer = %r.peer, "hand-off: the journal records a return path the kernel does not have whole; removing what there is of it");
    super::undo_all(h, journal, &plan)?;
    Ok(None)
}

/// B, on the daemon's start: the return path to resume supervising, if one is in place (see
/// `in_place`).
pub fn resumable(
    cfg: &Config,
    state: &StateDir,
    h: &mut dyn Host,
) -> Result<Option<Returning>, OpError> {
    let _lock = state.lock_wait(LOCK_WAIT)?;
    let mut journal = state.return_journal()?;
    in_place(cfg, &mut journal, h)
}

/// Why a return path ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReturnEnd {
    /// The peer said its hand-off is over.
    PeerEnded,
    /// The peer stopped answering for the VIP (gone, or it no longer accepts it).
    PeerGone,
    /// `until` passed.
    Deadline,
    /// The agent is stopping; the return path stays (journalled) for the next start.
    Stopped,
}

impl std::fmt::Display for ReturnEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ReturnEnd::PeerEnded => "the peer ended its hand-off",
            ReturnEnd::PeerGone => "the peer stopped answering for the VIP",
            ReturnEnd::Deadline => "the hand-off's deadline passed",
            ReturnEnd::Stopped => "the agent is stopping (the return path stays until it restarts)",
        })
    }
}

/// What a return path did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ReturnReport {
    /// Why it ended.
    pub end: ReturnEnd,
    /// Packets returned to the peer.
    pub returned_packets: u64,
    /// Flows recorded as this node's while it was in place.
    pub recorded_flows: u64,
    /// Whether it was removed (false for [`ReturnEnd::Stopped`], or if removal failed: then the
    /// journal keeps it).
    pub removed: bool,
}

impl ReturnReport {
    /// One line for the log.
    pub fn summary(&self, peer: Ipv4Addr) -> String {
        format!(
            "hand-off from {peer} over ({}): {} packet(s) returned, {} flow(s) recorded here; return path {}",
            self.end,
            self.returned_packets,
            self.recorded_flows,
            if self.removed { "removed" } else { "kept" }
        )
    }
}

/// B: keeps the return path `r` while it is needed: tends its record as a drain tends its own,
/// probes the peer every `peer_probe.interval`, and removes it when `ended()` says the peer asked
/// to (or at `until`, or after `peer_probe.failures` failed probes). Returns without removing when
/// `h.interrupts()` rises (the daemon stops).
pub fn supervise(
    cfg: &Config,
    state: &StateDir,
    h: &mut dyn Host,
    r: &Returning,
    ended: &dyn Fn() -> bool,
) -> Result<ReturnReport, OpError> {
    let plan = r.plan(cfg);
    let interval = cfg.peer_probe.interval.get();
    let failures = cfg.peer_probe.failures.get();
    let mut keeper = RecordKeeper::new(h.now());
    let mut next_probe = h.now();
    let mut fails = 0u32;
    let end = loop {
        crate::faults::point("handoff.responder.supervising");
        if ended() {
            break ReturnEnd::PeerEnded;
        }
        if h.interrupts() > 0 {
            break ReturnEnd::Stopped;
        }
        if h.unix_now() >= r.until {
            break ReturnEnd::Deadline;
        }
        let now = h.now();
        let news = keeper.tick(h.firewall(), &plan, now);
        if let Some(e) = news.error {
            tracing::warn!("return path record: {e}");
        }
        if h.now() >= next_probe {
            match h.probe_peer().unwrap_or(PeerAnswer::NoAnswer) {
                PeerAnswer::Accepted { .. } => fails = 0,
                other => {
                    fails += 1;
                    tracing::info!(consecutive = fails, "probe of {}: {other}", r.peer);
                    if fails >= failures {
                        break ReturnEnd::PeerGone;
                    }
                }
            }
            next_probe = h.now() + interval;
        }
        h.sleep(
            next_probe
                .saturating_sub(h.now())
                .min(super::record::TEND_INTERVAL)
                .max(MIN_SLEEP),
        );
    };
    let (_, stats, counters) = keeper.final_look(h.firewall(), &plan);
    let mut report = ReturnReport {
        end,
        returned_packets: counters.diverted_packets,
        recorded_flows: stats.entries(),
        removed: false,
    };
    if end != ReturnEnd::Stopped {
        crate::faults::point("handoff.responder.removing");
        remove(cfg, state, h)?;
        report.removed = true;
    }
    Ok(report)
}

/// B: removes the return path the journal records (and any left under the return prefix).
pub fn remove(cfg: &Config, state: &StateDir, h: &mut dyn Host) -> Result<(), OpError> {
    let _lock = state.lock_wait(LOCK_WAIT)?;
    let mut journal = state.return_journal()?;
    let mac = Returning::recorded(&journal).map_or([0; 6], |r| r.peer_mac);
    let plan = DivertPlan::new(cfg).returning(mac);
    if !journal
        .entries()
        .iter()
        .any(|e| matches!(e.change, Change::Divert { .. }))
    {
        journal.record(Change::Divert {
            prefix: plan.prefix().to_string(),
            drop_mangle_table: false,
        })?;
    }
    super::undo_all(h, &mut journal, &plan)
}

#[cfg(test)]
mod hello_tests {
    use super::*;

    #[test]
    fn hello_names_the_node_answering_not_its_peer() {
        let cfg = crate::ops::fake::test_config("80", "");
        let here: std::net::IpAddr = "198.18.0.11".parse().unwrap();
        match hello(&cfg, here, &VipPorts::of(&cfg)) {
            PeerReply::Ok { detail } => assert!(
                detail.contains("198.18.0.11") && !detail.contains(&cfg.peer.get().to_string()),
                "{detail}"
            ),
            other => panic!("{other:?}"),
        }
    }
}
