//! How a live event reads on a terminal (the JSON form is the event's serialisation).

use crate::ops::Event;

/// The line an operator reads for `e`.
pub fn event_line(e: &Event) -> String {
    match e {
        Event::Ready { peer, sockets, .. } => {
            format!("ready: peer answers for the VIP ({peer}); {sockets} connection(s) here")
        }
        Event::Diverted { install_ms } => format!(
            "diverting new flows to the peer (installed and verified in {install_ms:.1} ms)"
        ),
        Event::Progress {
            elapsed_ms,
            remaining,
            idle,
            diverted_flows,
            ..
        } => format!(
            "draining: {remaining} connection(s) left ({idle} idle) after {:.1} s; {diverted_flows} new flow(s) diverted",
            elapsed_ms / 1000.0
        ),
        Event::RecordGrown {
            set,
            recorded,
            room,
        } => format!("diverted-flow record grown: {set} added ({recorded} recorded, room for {room})"),
        Event::RecordTendFailed { error } => {
            format!("warning: cannot grow the diverted-flow record: {error}")
        }
        Event::Unrecorded {
            syns,
            recorded,
            capacity,
        } => format!(
            "WARNING: {syns} SYN(s) could not be recorded ({recorded} flows recorded, capacity {capacity} per port): served here until the seal, dropped after it"
        ),
        Event::Sealed { elapsed_ms } => format!(
            "drain over after {:.1} s: divert sealed, final count",
            elapsed_ms / 1000.0
        ),
        Event::DivertTotals {
            diverted_flows,
            diverted_packets,
            unrecorded_syns,
            ..
        } => format!(
            "diverted {diverted_flows} new flow(s) ({diverted_packets} packets); {unrecorded_syns} SYN(s) unrecorded"
        ),
        Event::PeerProbeFailed {
            consecutive,
            answer,
        } => format!("peer probe failed ({consecutive} in a row): {answer}"),
        Event::Drained {
            reason,
            elapsed_ms,
            remaining,
        } => format!(
            "drain done: {reason} after {:.1} s, {remaining} left",
            elapsed_ms / 1000.0
        ),
        Event::FailoverTriggered { trigger } => format!("failover: {trigger}"),
        Event::PeerOwnsVip { after_ms } => {
            format!("peer owns the VIP ({after_ms:.0} ms after the trigger)")
        }
        Event::Withdrawn { reason } => format!("divert withdrawn: {reason}"),
        Event::CleanedUp => "divert removed".to_string(),
        Event::HandoffBegun { peer } => {
            format!("hand-off: {peer} returns this node's connections after the failover")
        }
        Event::HandoffEnded { detail } => format!("hand-off over: {detail}"),
        Event::FailedBack { detail } => format!("failed back: the peer reports: {detail}"),
        Event::HandoffEndFailed { error } => format!(
            "warning: the peer's agent was not told the hand-off is over ({error}); it removes its return path itself once this node stops accepting the VIP"
        ),
    }
}
