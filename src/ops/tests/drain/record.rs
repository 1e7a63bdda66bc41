//! The flow record: it grows ahead of a high SYN rate, a full one is reported, and the seal
//! comes after the drain.

use super::*;

/// The test plan with another per-port capacity.
fn plan_with_capacity(capacity: u32) -> DivertPlan {
    let cfg = crate::ops::fake::test_config(
        "80, 7",
        &format!("firewall:\n  max_diverted_flows: {capacity}\n"),
    );
    DivertPlan::new(&cfg)
}

fn grown(r: &Run) -> Vec<String> {
    r.events
        .iter()
        .filter_map(|e| match e {
            Event::RecordGrown { set, .. } => Some(set.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn the_record_grows_ahead_of_a_high_rate_and_records_every_flow() {
    // 20 000 new flows/s for a 4 s drain and the failover after it: 110 000+ flows.
    let mut h = FakeHost::new();
    h.syn_rate = 20_000.0;
    h.conns = vec![conn(Some(4000), false)];
    let r = run(h, policy());
    let rep = r.result.as_ref().unwrap();
    // Member 1 before member 0 is half full: at the rate it fills it would be before the
    // look after next.
    assert_eq!(grown(&r), ["DRAIN-80-1"], "{:?}", r.events);
    assert!(r.events.iter().any(|e| matches!(
        e,
        Event::RecordGrown { recorded, .. } if *recorded < 32_768 && *recorded > 20_000
    )));
    assert_eq!(rep.unrecorded_syns, 0, "{rep:?}");
    assert_eq!(rep.sealed_drops, 0);
    let syns = r.host.fw.syns_played(80);
    assert!(syns > 80_000, "{syns}");
    assert_eq!(rep.diverted_flows, syns, "every SYN recorded");
    assert!(!r
        .events
        .iter()
        .any(|e| matches!(e, Event::Unrecorded { .. })));
    assert!(r.events.iter().any(|e| matches!(
        e,
        Event::Progress { diverted_flows, .. } if *diverted_flows > 0
    )));
    assert_no_divert_left(&r, None);
}

#[test]
fn a_full_record_is_reported_served_locally_then_dropped_after_the_seal() {
    // Capacity 1024 per port at 2 000 flows/s: full after half a second.
    let mut h = FakeHost::new();
    h.syn_rate = 2_000.0;
    h.conns = vec![conn(Some(2000), false)];
    let r = run_plan(h, policy(), &plan_with_capacity(1024));
    let rep = r.result.as_ref().unwrap();
    let syns = r.host.fw.syns_played(80);
    assert_eq!(rep.diverted_flows, 1024);
    assert_eq!(rep.unrecorded_syns, syns - 1024, "counted exactly: {rep:?}");
    assert!(
        rep.sealed_drops > 0 && rep.sealed_drops < rep.unrecorded_syns,
        "{rep:?}"
    );
    assert!(grown(&r).is_empty(), "no room to grow at capacity 1024");
    // Reported while it happens, not only in the totals.
    let unrecorded = event_index(&r.events, "Unrecorded", |e| {
        matches!(e, Event::Unrecorded { .. })
    });
    let sealed = event_index(&r.events, "Sealed", |e| matches!(e, Event::Sealed { .. }));
    assert!(unrecorded < sealed);
    assert!(matches!(
        r.events.iter().rev().find(|e| matches!(e, Event::DivertTotals { .. })),
        Some(Event::DivertTotals { unrecorded_syns, .. }) if *unrecorded_syns == rep.unrecorded_syns
    ));
}

#[test]
fn the_seal_comes_after_the_drain_and_before_drained_and_the_trigger() {
    let mut h = FakeHost::new();
    h.conns = vec![conn(Some(300), false)];
    let r = run(h, policy());
    assert!(r.result.is_ok());
    let at = |what, f: fn(&Event) -> bool| event_index(&r.events, what, f);
    let sealed = at("Sealed", |e| matches!(e, Event::Sealed { .. }));
    assert!(at("Diverted", |e| matches!(e, Event::Diverted { .. })) < sealed);
    assert!(sealed < at("Drained", |e| matches!(e, Event::Drained { .. })));
    assert!(
        sealed
            < at("FailoverTriggered", |e| matches!(
                e,
                Event::FailoverTriggered { .. }
            ))
    );
}
