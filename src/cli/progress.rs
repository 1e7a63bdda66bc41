//! Live progress of a drain on a terminal: one status line that redraws in place (indicatif)
//! — phase, connections left by state with the idle ones apart, new flows diverted and their
//! rate, time left to the deadline, the peer's health — above it the milestones as they happen,
//! and the summary at the end. Everything goes to stderr, so stdout keeps only the result.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::config::DrainMode;
use crate::ops::Event;

/// How often the spinner turns (the line also redraws on every event).
const TICK: Duration = Duration::from_millis(120);
/// How long a failed peer probe stays on the status line after the last failure.
const PROBE_MEMORY: Duration = Duration::from_secs(3);

/// The status line's state.
pub struct Live {
    bar: ProgressBar,
    phase: &'static str,
    mode: DrainMode,
    deadline: Option<Duration>,
    /// When the deadline's clock started (divert for a drain, failover for a hand-off).
    clock_from: Option<Instant>,
    remaining: usize,
    idle: usize,
    by_state: BTreeMap<String, usize>,
    diverted: u64,
    rate: Option<f64>,
    last_sample: Option<(Instant, u64)>,
    probe_failed: Option<(Instant, u32)>,
}

impl Live {
    /// A status line on stderr.
    pub fn new() -> Live {
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template("{spinner:.cyan} {msg}")
                .expect("a valid template")
                .tick_chars("⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏ "),
        );
        bar.enable_steady_tick(TICK);
        let live = Live {
            bar,
            phase: "preflight",
            mode: DrainMode::Drain,
            deadline: None,
            clock_from: None,
            remaining: 0,
            idle: 0,
            by_state: BTreeMap::new(),
            diverted: 0,
            rate: None,
            last_sample: None,
            probe_failed: None,
        };
        live.redraw();
        live
    }

    /// Takes one event: milestones are printed above the line, the line is redrawn.
    pub fn event(&mut self, e: &Event) {
        let milestone = match e {
            Event::Ready {
                sockets,
                mode,
                deadline_ms,
                ..
            } => {
                self.mode = *mode;
                self.deadline = Some(Duration::from_secs_f64(deadline_ms / 1000.0));
                self.remaining = *sockets;
                true
            }
            Event::Diverted { .. } => {
                self.phase = "draining";
                if self.mode == DrainMode::Drain {
                    self.clock_from = Some(Instant::now());
                }
                true
            }
            Event::Progress {
                remaining,
                idle,
                by_state,
                diverted_flows,
                ..
            } => {
                self.remaining = *remaining;
                self.idle = *idle;
                self.by_state = by_state.clone();
                self.sample(*diverted_flows);
                false
            }
            Event::PeerProbeFailed { consecutive, .. } => {
                self.probe_failed = Some((Instant::now(), *consecutive));
                true
            }
            Event::Sealed { .. } => {
                if self.mode == DrainMode::Drain {
                    self.phase = "sealed";
                }
                true
            }
            Event::FailoverTriggered { .. } => {
                self.phase = "failing over";
                true
            }
            Event::PeerOwnsVip { .. } => {
                if self.mode == DrainMode::Handoff {
                    self.phase = "handing off";
                    self.clock_from = Some(Instant::now());
                } else {
                    self.phase = "cleaning up";
                }
                true
            }
            Event::Drained { .. } => {
                self.phase = "cleaning up";
                true
            }
            Event::DivertTotals { diverted_flows, .. } => {
                self.diverted = *diverted_flows;
                true
            }
            _ => true,
        };
        if milestone {
            self.bar.println(super::render::event_line(e));
        }
        self.redraw();
    }

    fn sample(&mut self, diverted: u64) {
        let now = Instant::now();
        if let Some((t, n)) = self.last_sample {
            let dt = now.duration_since(t).as_secs_f64();
            if dt >= 0.5 {
                let r = diverted.saturating_sub(n) as f64 / dt;
                // Smooth over a few seconds: the counters are read once a second.
                self.rate = Some(self.rate.map_or(r, |old| 0.6 * old + 0.4 * r));
                self.last_sample = Some((now, diverted));
            }
        } else {
            self.last_sample = Some((now, diverted));
        }
        self.diverted = diverted;
    }

    fn redraw(&self) {
        let mut parts = vec![format!("{:<12}", self.phase)];
        let states: Vec<String> = self
            .by_state
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(s, n)| format!("{s} {n}"))
            .collect();
        parts.push(format!(
            "{} connection(s) left{}{}",
            self.remaining,
            if states.is_empty() {
                String::new()
            } else {
                format!(" ({})", states.join(", "))
            },
            if self.idle > 0 {
                format!(", {} idle", self.idle)
            } else {
                String::new()
            }
        ));
        parts.push(format!(
            "{} new flow(s) diverted{}",
            self.diverted,
            self.rate.map_or(String::new(), |r| format!(" ({r:.0}/s)"))
        ));
        if let (Some(d), Some(from)) = (self.deadline, self.clock_from) {
            let left = d.saturating_sub(from.elapsed()).as_secs();
            parts.push(format!("deadline in {}:{:02}", left / 60, left % 60));
        }
        parts.push(match self.probe_failed {
            Some((t, n)) if t.elapsed() < PROBE_MEMORY => format!("peer: {n} probe(s) failed"),
            _ => "peer ok".to_string(),
        });
        self.bar.set_message(parts.join(" · "));
    }

    /// Clears the line (the summary follows on stdout).
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
