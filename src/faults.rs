//! Test-only fault injection: a named point at each step of the operations that change the host,
//! where a test can have the agent die the hardest way there is (SIGKILL to itself: no
//! destructor, no rollback, no flush — what `kill -9`, the OOM killer or a power cut leave), to
//! prove the documented recovery (`undrain`, `release`, or the daemon's restart) puts the host
//! back exactly (tests/crash_e2e.rs).
//!
//! Compiled in only with the `fault-injection` cargo feature, which no shipped build enables
//! (`make build`, `make deb`); without it [`point`] is an empty inline function and the binary
//! holds no trace of it. With it, the environment variable `DRAIN_AGENT_CRASH_AT` (read once)
//! names the point to die at, `NAME` (the first time it is reached) or `NAME@N` (the N-th time).
//!
//! The points ([`POINTS`]), in the order an operation reaches them. A "journalled" point is
//! right after the journal recorded a change and before the kernel has it; the others right
//! after a kernel change and before the next step (or the journal) knows of it:
//!
//! | point | where |
//! |---|---|
//! | `drain.journalled` | drain: the divert is in the journal, nothing in the kernel |
//! | `divert.sets-created` | any install (drain's divert, hand-off return path): the sets exist, no rule yet |
//! | `drain.installed` | drain: the divert's rules are in place, not yet announced (`diverted`) |
//! | `drain.watching` | drain: the first round of the wait for the node's connections |
//! | `drain.sealed` | drain: the divert is sealed (no new local flow can start) |
//! | `drain.trigger-journalled` | drain, `maintenance on`: the failover trigger is journalled, not yet pulled |
//! | `drain.failover-triggered` | drain: the tracked interface is down (or the track file says FAULT) |
//! | `drain.peer-owns-vip` | drain: the peer owns every VIP; the divert is kept for `post_wait` |
//! | `divert.rules-removed` | any divert removal: its rules are gone, its sets not yet |
//! | `undo.partial` | any undo of several journalled changes: one undone and forgotten, more left |
//! | `drain.cleaned-up` | drain: everything transient undone, the outcome not yet recorded |
//! | `handoff.initiator.journalled` | hand-off, draining node: the hand-off journalled, the peer not asked yet |
//! | `handoff.initiator.begun` | hand-off, draining node: the peer installed its return path; no divert here yet |
//! | `handoff.initiator.accepting` | hand-off, draining node: divert in place and the VIPs accepted, not sealed |
//! | `handoff.initiator.watching` | hand-off, draining node: failed over, waiting for its own connections |
//! | `handoff.initiator.ended` | hand-off, draining node: the peer removed its return path, nothing cleaned here |
//! | `handoff.responder.journalled` | hand-off, peer's daemon: the return path journalled, not installed |
//! | `handoff.responder.installed` | hand-off, peer's daemon: the return path installed, not yet answered |
//! | `handoff.responder.supervising` | hand-off, peer's daemon: the first round of the supervision |
//! | `handoff.responder.removing` | hand-off, peer's daemon: the hand-off is over, the return path not yet removed |
//! | `accept.sysctl-journalled` | accept (also a hand-off's): a sysctl journalled, not written |
//! | `accept.sysctl-set` | accept: a sysctl written, the next change not made |
//! | `accept.route-journalled` | accept: the local route journalled, not added |
//! | `accept.route-added` | accept: the local route added |
//! | `undrain.withdrawn` | undrain: a divert left by a crash is withdrawn, not removed |
//! | `undrain.demoted` | undrain: `return_weight` written to the track file, the trigger not undone |
//! | `undrain.undone` | undrain: every journalled change undone, the link not checked yet |
//! | `maintenance.drained` | `maintenance on`: the node is drained, the maintenance not recorded |
//! | `maintenance.undrained` | `maintenance off`: the node is back, the record not cleared |

/// Every point's name, as the call sites spell them (a unit test checks both ways).
pub const POINTS: &[&str] = &[
    "drain.journalled",
    "divert.sets-created",
    "drain.installed",
    "drain.watching",
    "drain.sealed",
    "drain.trigger-journalled",
    "drain.failover-triggered",
    "drain.peer-owns-vip",
    "divert.rules-removed",
    "undo.partial",
    "drain.cleaned-up",
    "handoff.initiator.journalled",
    "handoff.initiator.begun",
    "handoff.initiator.accepting",
    "handoff.initiator.watching",
    "handoff.initiator.ended",
    "handoff.responder.journalled",
    "handoff.responder.installed",
    "handoff.responder.supervising",
    "handoff.responder.removing",
    "accept.sysctl-journalled",
    "accept.sysctl-set",
    "accept.route-journalled",
    "accept.route-added",
    "undrain.withdrawn",
    "undrain.demoted",
    "undrain.undone",
    "maintenance.drained",
    "maintenance.undrained",
];

/// The environment variable that names the point to die at (`NAME` or `NAME@N`).
pub const ENV: &str = "DRAIN_AGENT_CRASH_AT";

/// A fault-injection point: nothing at all in a build without the `fault-injection` feature.
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn point(_name: &'static str) {}

/// A fault-injection point: if [`ENV`] names this point (and this is the N-th time it is
/// reached, for `NAME@N`), says so on stderr and SIGKILLs this process.
#[cfg(feature = "fault-injection")]
pub fn point(name: &'static str) {
    armed::reached(name)
}

#[cfg(feature = "fault-injection")]
mod armed {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::OnceLock;

    /// The point to die at and at which arrival (1 = the first).
    struct Target {
        name: String,
        nth: u32,
        seen: AtomicU32,
    }

    fn target() -> Option<&'static Target> {
        static TARGET: OnceLock<Option<Target>> = OnceLock::new();
        TARGET
            .get_or_init(|| {
                let spec = std::env::var(super::ENV).ok()?;
                let (name, nth) = match spec.split_once('@') {
                    Some((n, k)) => (n.to_string(), k.parse().ok().filter(|k| *k >= 1)?),
                    None => (spec, 1),
                };
                Some(Target {
                    name,
                    nth,
                    seen: AtomicU32::new(0),
                })
            })
            .as_ref()
    }

    pub(super) fn reached(name: &'static str) {
        debug_assert!(super::POINTS.contains(&name), "undocumented point {name}");
        let Some(t) = target() else { return };
        if t.name != name || t.seen.fetch_add(1, Ordering::SeqCst) + 1 != t.nth {
            return;
        }
        // One write(2), so the line is whole even if the process had other threads writing.
        let line = format!("fault-injection: killed at {name}\n");
        // SAFETY: writes a buffer this function owns to fd 2.
        unsafe { libc::write(2, line.as_ptr().cast(), line.len()) };
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
        // SIGKILL cannot be caught or blocked: raise does not return.
        unreachable!("SIGKILL returned");
    }
}

#[cfg(test)]
mod tests {
    use super::POINTS;
    use std::path::Path;

    /// Every call of a point in src/ (its name, the file it is in).
    fn call_sites() -> Vec<(String, String)> {
        fn walk(dir: &Path, out: &mut Vec<(String, String)>) {
            for e in std::fs::read_dir(dir).unwrap().flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, out);
                } else if p.extension().is_some_and(|x| x == "rs") {
                    let text = std::fs::read_to_string(&p).unwrap();
                    for part in text.split("faults::point(\"").skip(1) {
                        let name = part.split('"').next().unwrap().to_string();
                        out.push((name, p.display().to_string()));
                    }
                }
            }
        }
        let mut out = Vec::new();
        walk(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), &mut out);
        out
    }

    #[test]
    fn every_documented_point_is_called_and_every_call_is_documented() {
        let sites = call_sites();
        for p in POINTS {
            assert!(
                sites.iter().any(|(n, _)| n == p),
                "point {p} is documented but never called"
            );
        }
        for (n, file) in &sites {
            assert!(
                POINTS.contains(&n.as_str()),
                "{file} calls undocumented point {n}"
            );
        }
        let doc = include_str!("faults.rs");
        for p in POINTS {
            assert!(
                doc.contains(&format!("| `{p}` |")),
                "point {p} missing from the module's table"
            );
        }
        let mut unique = POINTS.to_vec();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), POINTS.len(), "a point is listed twice");
    }
}
