//! The text of each [`OpError`] built from its data, pinned byte for byte: users, the Ansible
//! module and the lab tests match these messages, so a change of wording must show up here.

use std::error::Error as _;
use std::net::Ipv4Addr;

use crate::ops::error::PeerProblem;
use crate::ops::{HostError, HostErrorKind, OpError};

const PEER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 12);

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
