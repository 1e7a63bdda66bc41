//! The text of each [`OpError`] built from its data, pinned byte for byte: users, the Ansible
//! module and the lab tests match these messages, so a change of wording must show up here.

use std::error::Error as _;
use std::net::Ipv4Addr;

use crate::journal::Change;
use crate::ops::error::{
    ConfigProblem, FailoverPending, Leftover, OutOfService, PeerProblem, UndoFailures,
};
use crate::ops::{HostError, HostErrorKind, OpError, PeerAnswer};

const PEER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 12);
const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 100);

fn unanswered() -> HostError {
    HostError::new(
        "peer agent",
        HostErrorKind::Unanswered,
        "no reply within 5s",
    )
}

#[test]
fn peer_not_ready_says_what_the_peer_answered() {
    let text = |why| OpError::PeerNotReady(why).to_string();
    assert_eq!(
        text(PeerProblem::Refuses { peer: PEER }),
        "peer not ready: 198.18.0.12 refuses connections to the VIP (RST): is HAProxy running there, and did you run `drain-agent accept` on it?; nothing changed"
    );
    assert_eq!(
        text(PeerProblem::Silent { peer: PEER }),
        "peer not ready: 198.18.0.12 does not answer for the VIP: is it up, and did you run `drain-agent accept` on it?; nothing changed"
    );
    assert_eq!(
        text(PeerProblem::NoArp { peer: PEER }),
        "peer not ready: 198.18.0.12 does not answer ARP; nothing changed"
    );
    assert_eq!(
        text(PeerProblem::HandoffRefused {
            peer: PEER,
            reason: "not BACKUP".into()
        }),
        "peer not ready: 198.18.0.12's agent refuses the hand-off: not BACKUP; nothing changed"
    );
    assert_eq!(
        text(PeerProblem::HandoffUnanswered {
            peer: PEER,
            error: unanswered(),
            ended: Ok("end done".into()),
        }),
        "peer not ready: 198.18.0.12's agent did not answer the hand-off (peer agent: no reply within 5s); nothing changed here; told it to end the hand-off (end done); nothing changed"
    );
    assert_eq!(
        text(PeerProblem::HandoffUnanswered {
            peer: PEER,
            error: unanswered(),
            ended: Err("connection refused".into()),
        }),
        "peer not ready: 198.18.0.12's agent did not answer the hand-off (peer agent: no reply within 5s); nothing changed here; could not tell it to end the hand-off (connection refused); its return path, if any, goes at its deadline; nothing changed"
    );
    assert_eq!(
        text(PeerProblem::AgentUnreachable {
            peer: PEER,
            error: HostError::other("peer agent", "connection refused"),
        }),
        "peer not ready: 198.18.0.12's agent does not answer (peer agent: connection refused): is `drain-agent run` running there with the same handoff.key_file?; nothing changed"
    );
    assert_eq!(
        text(PeerProblem::FailbackRefused {
            reason: "keepalived is not BACKUP".into()
        }),
        "peer not ready: the peer did not fail back: keepalived is not BACKUP; this node is back as BACKUP; nothing changed"
    );
    assert_eq!(
        text(PeerProblem::FailbackUnanswered {
            error: unanswered()
        }),
        "peer not ready: the peer's agent does not answer the failback (peer agent: no reply within 5s); this node is back as BACKUP; nothing changed"
    );
}

#[test]
fn a_peer_agents_error_is_the_source_of_peer_not_ready() {
    let e = OpError::PeerNotReady(PeerProblem::FailbackUnanswered {
        error: unanswered(),
    });
    let why = e.source().expect("PeerNotReady has its PeerProblem");
    let host = why.source().expect("the problem keeps the host's error");
    let host = host.downcast_ref::<HostError>().expect("a HostError");
    assert_eq!(host.kind, HostErrorKind::Unanswered);
    // A problem that is only an answer has no error behind it.
    assert!(PeerProblem::NoArp { peer: PEER }.source().is_none());
}

#[test]
fn already_drained_says_what_shows_the_node_out_of_service() {
    let link_down = || Change::LinkDown {
        ifname: "trk0".into(),
    };
    let text = |why| OpError::AlreadyDrained(why).to_string();
    assert_eq!(
        text(OutOfService::Journalled {
            change: link_down(),
            at: 1_700_000_000,
            in_effect: true,
        }),
        "already out of service: the journal records tracked interface trk0 down (at 2023-11-14 22:13:20 UTC) and it is in effect; run `drain-agent undrain` (or `maintenance off`) first"
    );
    assert_eq!(
        text(OutOfService::Journalled {
            change: link_down(),
            at: 1_700_000_000,
            in_effect: false,
        }),
        "already out of service: the journal records tracked interface trk0 down (at 2023-11-14 22:13:20 UTC) but it is not in effect now (rebooted?); run `drain-agent undrain` (or `maintenance off`) first"
    );
    assert_eq!(
        text(OutOfService::LinkDown {
            ifname: "trk0".into()
        }),
        "already out of service: tracked interface trk0 is down; run `drain-agent undrain` (or `maintenance off`) first"
    );
    assert_eq!(
        text(OutOfService::TrackFault),
        "already out of service: the track file says FAULT; run `drain-agent undrain` (or `maintenance off`) first"
    );
}

#[test]
fn leftovers_name_what_an_earlier_run_left() {
    let text = |what| OpError::Leftovers(what).to_string();
    assert_eq!(
        text(Leftover::Journalled(Change::LocalRoute { addr: VIP })),
        "leftovers of an earlier run: journal records local route 198.18.0.100/32 dev lo; run `drain-agent undrain` to remove them"
    );
    assert_eq!(
        text(Leftover::Sets(vec!["DRAIN-rec".into(), "DRAIN-new".into()])),
        "leftovers of an earlier run: ipset DRAIN-rec, DRAIN-new already exists; run `drain-agent undrain` to remove them"
    );
    assert_eq!(
        text(Leftover::Chains(vec!["DRAIN-ENTRY".into()])),
        "leftovers of an earlier run: iptables chain DRAIN-ENTRY already exists; run `drain-agent undrain` to remove them"
    );
}

#[test]
fn state_changed_names_the_vip_that_arrived() {
    assert_eq!(
        OpError::StateChanged { vip: VIP }.to_string(),
        "keepalived moved 198.18.0.100 here as maintenance began; run `maintenance on` again to drain it; nothing changed"
    );
}

#[test]
fn peer_lost_counts_the_failed_probes_and_says_what_the_last_saw() {
    assert_eq!(
        OpError::PeerLost {
            failed: 3,
            last: PeerAnswer::NoAnswer
        }
        .to_string(),
        "peer lost during the drain (3 probes failed, last: no answer); divert withdrawn, this node still serves"
    );
    assert_eq!(
        OpError::PeerLost {
            failed: 2,
            last: PeerAnswer::Refused
        }
        .to_string(),
        "peer lost during the drain (2 probes failed, last: refused (RST)); divert withdrawn, this node still serves"
    );
}

#[test]
fn failover_unconfirmed_says_what_was_still_missing() {
    let text = |pending| {
        OpError::FailoverUnconfirmed {
            timeout: std::time::Duration::from_secs(5),
            pending,
        }
        .to_string()
    };
    assert_eq!(
        text(FailoverPending::StillHere(VIP)),
        "failover not confirmed within 5s (198.18.0.100 still configured here); divert removed, tracked interface left down: check keepalived on both nodes"
    );
    assert_eq!(
        text(FailoverPending::NoArp(VIP)),
        "failover not confirmed within 5s (the peer does not answer ARP for 198.18.0.100); divert removed, tracked interface left down: check keepalived on both nodes"
    );
}

#[test]
fn vip_moved_counts_the_connections_cut() {
    assert_eq!(
        OpError::VipMoved { vip: VIP, cut: 2 }.to_string(),
        "VIP 198.18.0.100 moved to the peer during the drain without the agent (no longer configured here): 2 connection(s) of this node cut; failover finished, divert removed, this node stays out of service until `drain-agent undrain`: check keepalived here"
    );
}

#[test]
fn cleanup_incomplete_lists_every_failed_step_then_the_journals_error() {
    let failures = |journal| UndoFailures {
        steps: vec![
            HostError::other("remove divert", "iptables-restore: exit code 1"),
            HostError::other("link trk0 up", "no such device"),
        ],
        journal,
    };
    assert_eq!(
        OpError::CleanupIncomplete(failures(None)).to_string(),
        "cleanup incomplete (remove divert: iptables-restore: exit code 1; link trk0 up: no such device); the journal keeps what is left, run `drain-agent undrain`"
    );
    let journal = crate::journal::JournalError::File {
        path: "/run/drain-agent/journal.json".into(),
        cause: "no space left on device".into(),
    };
    assert_eq!(
        OpError::CleanupIncomplete(failures(Some(journal))).to_string(),
        "cleanup incomplete (remove divert: iptables-restore: exit code 1; link trk0 up: no such device; journal /run/drain-agent/journal.json: no space left on device); the journal keeps what is left, run `drain-agent undrain`"
    );
}

#[test]
fn the_first_failed_undo_step_is_the_source_of_cleanup_incomplete() {
    let e = OpError::CleanupIncomplete(UndoFailures {
        steps: vec![HostError::other("remove divert", "busy")],
        journal: None,
    });
    let failures = e.source().expect("CleanupIncomplete has its failures");
    let first = failures.source().expect("the first failed step");
    assert_eq!(
        first.downcast_ref::<HostError>().map(|h| h.op.as_str()),
        Some("remove divert")
    );
}

#[test]
fn config_says_what_the_configuration_or_the_request_lacks() {
    let text = |what| OpError::Config(what).to_string();
    assert_eq!(
        text(ConfigProblem::HandoffNeedsPeerLink),
        "a hand-off needs the handoff: section in the configuration (key_file, and `drain-agent run` on the peer)"
    );
    assert_eq!(
        text(ConfigProblem::FailbackNeedsPeerLink),
        "--failback asks the peer's agent to drain itself: it needs the peer link (the handoff: section, and `drain-agent run` on the peer)"
    );
    assert_eq!(
        text(ConfigProblem::MaintenanceNeedsReason),
        "maintenance on needs --reason: say why the node goes out of service"
    );
}
