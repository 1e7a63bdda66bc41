//! The service layer's operations against the fake world (`super::fake`).

mod drain;
mod error_text;
mod handoff;
mod lock;
mod maintenance;

use crate::ops::Event;

/// Where the first event `is` accepts is; panics naming `what` when none came, so an order
/// check cannot pass on a missing event (`Some(_) > None`).
fn event_index(events: &[Event], what: &str, is: impl Fn(&Event) -> bool) -> usize {
    events
        .iter()
        .position(is)
        .unwrap_or_else(|| panic!("no {what} event in {events:?}"))
}

#[test]
#[should_panic(expected = "no call \"link trk0 down\"")]
fn an_order_check_on_a_call_that_never_happened_fails() {
    let h = crate::ops::fake::FakeHost::new();
    let _ = h.call_index("link trk0 down");
}

#[test]
#[should_panic(expected = "no Sealed event")]
fn an_order_check_on_an_event_that_never_came_fails() {
    let _ = event_index(&[], "Sealed", |e| matches!(e, Event::Sealed { .. }));
}
