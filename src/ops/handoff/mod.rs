//! Hand-off: the draining node (A) fails over at once and its connections go on to their natural
//! end, because the peer (B), which now receives every packet for the VIPs, sends the packets of
//! flows it never saw a SYN of back to A (the rules: [`crate::plan`], "Hand-off").
//!
//! # How the two agents coordinate
//!
//! A asks, B acts, over the authenticated peer link (one request, one reply; HMAC-SHA256 under
//! the key both nodes share, see `sys::peerlink`):
//! 1. A → B [`PeerRequest::Begin`]: B checks it serves the same VIPs, installs its return path
//!    (recording every SYN it receives from now on) and answers; only then does A divert. So
//!    every flow B will ever serve has its SYN recorded on B.
//! 2. A diverts, makes the node accept the VIPs without owning them (the `accept` changes, in
//!    its drain journal), seals, and fails over at once.
//! 3. A watches its own connections, as a drain does, until none is left (idle ones apart), or
//!    `handoff.deadline`.
//! 4. A → B [`PeerRequest::End`]: B removes its return path; then A removes its divert, route and
//!    sysctls. The tracked interface stays down until `undrain`.
//!
//! # When something fails
//! - B's agent does not answer or refuses `Begin`: A changes nothing (exit 5). If `Begin` went
//!   out and no reply came (B's agent may have installed its return path and died before
//!   answering), A first sends `End`, retrying while B's agent restarts, so B is left as it was.
//! - A's agent dies during the hand-off: its rules and route stay (journalled), so A keeps
//!   serving its connections and B keeps returning them; `undrain` on A (or A's daemon on
//!   restart) finishes the hand-off: it waits for A's connections, ends B's return path, cleans.
//! - B's agent dies: B's return path stays in the kernel and keeps working; B's daemon resumes
//!   supervising it on restart (from its return journal). If A's `End` finds no one, A cleans up
//!   anyway, and B's agent removes the return path as soon as it sees A no longer accepts the VIP.
//! - A's node goes away (or stops accepting the VIP): B probes A exactly as A probes B during a
//!   drain (a SYN to the VIP sent to A's MAC); after `peer_probe.failures` failed probes B removes
//!   its return path, and A's flows, whose server is gone, get B's RST.
//! - B never hears `End` (A dead for good): the return path goes at `until`, which A set from its
//!   deadline.

mod initiator;
mod protocol;
mod responder;

pub use initiator::ask_begin;
pub(crate) use initiator::{finish_handoff, hand_off};
pub use protocol::{
    ask_end, format_mac, parse_mac, PeerReply, PeerRequest, VipPorts, END_RETRY_FOR,
};
pub use responder::{
    begin, hello, remove, resumable, supervise, ReturnEnd, ReturnReport, Returning, LOCK_WAIT,
};

// The parent's items the responder names as `super::…`, as it did when the hand-off was one file.
use super::{divert, record, undo_all, Host, HostError, OpError, PeerAnswer, MIN_SLEEP};
