//! What the load generator offers: [`LoadSpec`], read from JSON, every field defaulted.
//!
//! The defaults reproduce the mixed workload behind the measured baselines (500 short
//! HTTP requests/s, each on a new connection, plus 10 echo sessions/s of 3 s, for 8 s) so results
//! stay comparable; the keep-alive and slow-download classes are off by default but carry sensible
//! shapes, so enabling one only needs its rate.

use std::net::Ipv4Addr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Most flows one run may schedule: beyond this the per-flow bookkeeping alone would exhaust
/// memory, and the rate was surely a typo.
pub const MAX_FLOWS: u64 = 10_000_000;

/// The kinds of flow the generator runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FlowClass {
    /// New connection, one `GET /fast` with `Connection: close`.
    Short,
    /// One connection, a `GET /fast` every interval for the session's length.
    Keepalive,
    /// One connection to the echo port, a chunk every interval, half-close, full echo check.
    Echo,
    /// New connection, one `GET /slow` streamed over a set time.
    Slow,
}

impl FlowClass {
    /// Every class, in report order.
    pub const ALL: [FlowClass; 4] = [
        FlowClass::Short,
        FlowClass::Keepalive,
        FlowClass::Echo,
        FlowClass::Slow,
    ];

    /// The name used in JSON and in the table.
    pub fn name(self) -> &'static str {
        match self {
            FlowClass::Short => "short",
            FlowClass::Keepalive => "keepalive",
            FlowClass::Echo => "echo",
            FlowClass::Slow => "slow",
        }
    }
}

/// A whole load run. Every field has a default, so `{}` is a valid spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoadSpec {
    /// Address every flow connects to (the VIP).
    pub target: Ipv4Addr,
    /// Port of the HTTP service on `target`.
    pub http_port: u16,
    /// Port of the echo service on `target`.
    pub echo_port: u16,
    /// How long new flows are started; the run then waits for the flows in progress to end.
    pub duration_ms: u64,
    /// Short HTTP requests, one per connection.
    pub short: ShortSpec,
    /// Keep-alive HTTP sessions.
    pub keepalive: KeepaliveSpec,
    /// Long TCP echo sessions.
    pub echo: EchoSpec,
    /// Slow streamed HTTP downloads.
    pub slow: SlowSpec,
    /// Longest a connect() may take. 5 s by default: a SYN retransmitted at 1 s and again at 3 s
    /// (a VRRP switch in progress) must show as a slow setup, not as a failure.
    pub connect_timeout_ms: u64,
    /// How much longer than its nominal length a flow may take before it counts as a timeout.
    pub flow_slack_ms: u64,
    /// Flows started before this (ms from the run's start) are the run's steady baseline: their
    /// setup latencies are summarised apart, so a test can hold what happens later to what the
    /// same lab did before, in the same run.
    pub baseline_until_ms: Option<u64>,
}

impl Default for LoadSpec {
    fn default() -> Self {
        Self {
            target: Ipv4Addr::new(198, 18, 0, 100),
            http_port: 80,
            echo_port: 7,
            duration_ms: 8000,
            short: ShortSpec::default(),
            keepalive: KeepaliveSpec::default(),
            echo: EchoSpec::default(),
            slow: SlowSpec::default(),
            connect_timeout_ms: 5000,
            flow_slack_ms: 5000,
            baseline_until_ms: None,
        }
    }
}

/// Short flows: connect, `GET /fast` with `Connection: close`, read to EOF.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShortSpec {
    /// New flows per second (0 disables the class).
    pub rate_per_s: f64,
    /// Time allowed from the established connection to the response's end.
    pub timeout_ms: u64,
}

impl Default for ShortSpec {
    fn default() -> Self {
        Self {
            rate_per_s: 500.0,
            timeout_ms: 5000,
        }
    }
}

/// Keep-alive sessions: one connection, a `GET /fast` every `interval_ms` for `session_ms`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KeepaliveSpec {
    /// New sessions per second (0 disables the class).
    pub sessions_per_s: f64,
    /// Time between two requests' send instants.
    pub interval_ms: u64,
    /// Session length: requests are sent while less than this has passed since connect.
    pub session_ms: u64,
}

impl Default for KeepaliveSpec {
    fn default() -> Self {
        Self {
            sessions_per_s: 0.0,
            interval_ms: 100,
            session_ms: 3000,
        }
    }
}

/// Echo sessions: a chunk every `interval_ms` for `session_ms`, then half-close and read the rest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EchoSpec {
    /// New sessions per second (0 disables the class).
    pub sessions_per_s: f64,
    /// Session length: chunks are sent while less than this has passed since connect; the
    /// half-close follows at this instant.
    pub session_ms: u64,
    /// Bytes per chunk.
    pub chunk_bytes: u32,
    /// Time between two chunks' send instants.
    pub interval_ms: u64,
}

impl Default for EchoSpec {
    fn default() -> Self {
        Self {
            sessions_per_s: 10.0,
            session_ms: 3000,
            chunk_bytes: 64,
            interval_ms: 100,
        }
    }
}

/// Slow downloads: `GET /slow?ms=..&bytes=..` with `Connection: close`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SlowSpec {
    /// New downloads per second (0 disables the class).
    pub downloads_per_s: f64,
    /// Time the backend spreads the body over.
    pub ms: u64,
    /// Body length.
    pub bytes: u64,
}

impl Default for SlowSpec {
    fn default() -> Self {
        Self {
            downloads_per_s: 0.0,
            ms: 2000,
            bytes: 65536,
        }
    }
}

/// A spec that cannot be run.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// The JSON text is not a spec (serde's message carries line and column).
    #[error("spec is not valid JSON for a LoadSpec: {0}")]
    Json(#[from] serde_json::Error),
    /// A field has a value the generator cannot honour.
    #[error("spec field `{field}`: {reason}")]
    Invalid {
        /// Dotted path of the field, e.g. `echo.interval_ms`.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

fn invalid(field: &'static str, reason: impl Into<String>) -> SpecError {
    SpecError::Invalid {
        field,
        reason: reason.into(),
    }
}

impl LoadSpec {
    /// Parses and validates a JSON spec.
    pub fn from_json(text: &str) -> Result<Self, SpecError> {
        let spec: Self = serde_json::from_str(text)?;
        spec.validate()?;
        Ok(spec)
    }

    /// Checks that the generator can run this spec as written: rates finite and non-negative,
    /// no zero interval or empty chunk in an enabled class, a bounded number of flows.
    pub fn validate(&self) -> Result<(), SpecError> {
        let rates = [
            ("short.rate_per_s", self.short.rate_per_s),
            ("keepalive.sessions_per_s", self.keepalive.sessions_per_s),
            ("echo.sessions_per_s", self.echo.sessions_per_s),
            ("slow.downloads_per_s", self.slow.downloads_per_s),
        ];
        for (field, rate) in rates {
            if !rate.is_finite() || rate < 0.0 {
                return Err(invalid(field, format!("{rate} is not a rate >= 0")));
            }
        }
        if self.connect_timeout_ms == 0 {
            return Err(invalid("connect_timeout_ms", "must be > 0"));
        }
        if self.enabled(FlowClass::Short) && self.short.timeout_ms == 0 {
            return Err(invalid("short.timeout_ms", "must be > 0"));
        }
        if self.enabled(FlowClass::Keepalive) && self.keepalive.interval_ms == 0 {
            return Err(invalid("keepalive.interval_ms", "must be > 0"));
        }
        if self.enabled(FlowClass::Echo) {
            if self.echo.interval_ms == 0 {
                return Err(invalid("echo.interval_ms", "must be > 0"));
            }
            if self.echo.chunk_bytes == 0 {
                return Err(invalid("echo.chunk_bytes", "must be > 0"));
            }
            if self.echo.session_ms == 0 {
                return Err(invalid(
                    "echo.session_ms",
                    "must be > 0 (one chunk at least)",
                ));
            }
        }
        let total: f64 = FlowClass::ALL
            .iter()
            .map(|&c| self.rate(c) * self.duration_ms as f64 / 1000.0)
            .sum();
        if total > MAX_FLOWS as f64 {
            return Err(invalid(
                "duration_ms",
                format!("rates x duration give {total:.0} flows, more than {MAX_FLOWS}"),
            ));
        }
        Ok(())
    }

    /// New flows per second of a class.
    pub fn rate(&self, class: FlowClass) -> f64 {
        match class {
            FlowClass::Short => self.short.rate_per_s,
            FlowClass::Keepalive => self.keepalive.sessions_per_s,
            FlowClass::Echo => self.echo.sessions_per_s,
            FlowClass::Slow => self.slow.downloads_per_s,
        }
    }

    /// Whether a class starts any flow.
    pub fn enabled(&self, class: FlowClass) -> bool {
        self.scheduled_count(class) > 0
    }

    /// Time a flow of `class` may take once connected before it is a timeout: its nominal length
    /// plus the slack (for short flows, `short.timeout_ms`).
    pub fn flow_budget(&self, class: FlowClass) -> Duration {
        let ms = match class {
            FlowClass::Short => self.short.timeout_ms,
            FlowClass::Keepalive => self.keepalive.session_ms.saturating_add(self.flow_slack_ms),
            FlowClass::Echo => self.echo.session_ms.saturating_add(self.flow_slack_ms),
            FlowClass::Slow => self.slow.ms.saturating_add(self.flow_slack_ms),
        };
        Duration::from_millis(ms)
    }

    /// Latest end of the run, measured from its start: flows start during `duration_ms`, each may
    /// spend `connect_timeout_ms` connecting and then its budget. Whatever happens, the run
    /// reports by then; flows still going count as timeouts.
    pub fn run_bound(&self) -> Duration {
        let longest = FlowClass::ALL
            .iter()
            .filter(|&&c| self.enabled(c))
            .map(|&c| self.flow_budget(c))
            .max()
            .unwrap_or_default();
        Duration::from_millis(self.duration_ms.saturating_add(self.connect_timeout_ms)) + longest
    }

    /// Number of flows of `class` the run starts: one at every `k / rate` seconds that falls
    /// before `duration_ms`.
    pub fn scheduled_count(&self, class: FlowClass) -> u64 {
        let rate = self.rate(class);
        if !rate.is_finite() || rate <= 0.0 {
            return 0;
        }
        let duration = Duration::from_millis(self.duration_ms);
        let estimate = (rate * self.duration_ms as f64 / 1000.0)
            .ceil()
            .min(MAX_FLOWS as f64);
        let mut count = estimate as u64;
        // Float rounding can put the estimate one off either way; settle it on the exact rule.
        while count > 0 && start_offset(rate, count - 1) >= duration {
            count -= 1;
        }
        while count < MAX_FLOWS && start_offset(rate, count) < duration {
            count += 1;
        }
        count
    }
}

/// When flow `k` of a class with `rate` flows/s starts, from the run's start. Computed from the
/// start instant, not by sleeping between starts, so a stall never lowers the offered load.
pub fn start_offset(rate: f64, k: u64) -> Duration {
    Duration::from_secs_f64(k as f64 / rate)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_json_gives_defaults_and_round_trips() {
        let spec = LoadSpec::from_json("{}").unwrap();
        assert_eq!(spec, LoadSpec::default());
        assert_eq!(spec.target, Ipv4Addr::new(198, 18, 0, 100));
        assert_eq!((spec.http_port, spec.echo_port), (80, 7));
        assert_eq!(spec.echo.chunk_bytes, 64);
        assert_eq!(spec.connect_timeout_ms, 5000);
        let text = serde_json::to_string_pretty(&spec).unwrap();
        assert_eq!(LoadSpec::from_json(&text).unwrap(), spec);
    }

    #[test]
    fn partial_json_keeps_other_defaults() {
        let spec =
            LoadSpec::from_json(r#"{"target":"127.0.0.1","echo":{"sessions_per_s":2.5}}"#).unwrap();
        assert_eq!(spec.target, Ipv4Addr::LOCALHOST);
        assert_eq!(spec.echo.sessions_per_s, 2.5);
        assert_eq!(spec.echo.session_ms, 3000);
        assert_eq!(spec.short, ShortSpec::default());
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let err = LoadSpec::from_json(r#"{"short":{"rate":5}}"#).unwrap_err();
        assert!(err.to_string().contains("rate"), "{err}");
    }

    #[test]
    fn invalid_values_name_the_field() {
        let cases = [
            (r#"{"short":{"rate_per_s":-1}}"#, "short.rate_per_s"),
            (r#"{"echo":{"interval_ms":0}}"#, "echo.interval_ms"),
            (r#"{"echo":{"chunk_bytes":0}}"#, "echo.chunk_bytes"),
            (
                r#"{"keepalive":{"sessions_per_s":1,"interval_ms":0}}"#,
                "keepalive.interval_ms",
            ),
            (r#"{"connect_timeout_ms":0}"#, "connect_timeout_ms"),
            (
                r#"{"short":{"rate_per_s":1e9},"duration_ms":100000}"#,
                "duration_ms",
            ),
        ];
        for (json, field) in cases {
            match LoadSpec::from_json(json) {
                Err(SpecError::Invalid { field: f, .. }) => assert_eq!(f, field, "{json}"),
                other => panic!("{json}: expected invalid {field}, got {other:?}"),
            }
        }
        // A disabled class may carry a zero interval: it never runs.
        assert!(LoadSpec::from_json(r#"{"echo":{"sessions_per_s":0,"interval_ms":0}}"#).is_ok());
    }

    #[test]
    fn scheduled_count_follows_the_start_rule() {
        let mut spec = LoadSpec {
            duration_ms: 8000,
            ..LoadSpec::default()
        };
        assert_eq!(spec.scheduled_count(FlowClass::Short), 4000);
        assert_eq!(spec.scheduled_count(FlowClass::Echo), 80);
        assert_eq!(spec.scheduled_count(FlowClass::Slow), 0);
        spec.duration_ms = 1;
        spec.short.rate_per_s = 1.0;
        assert_eq!(spec.scheduled_count(FlowClass::Short), 1);
        spec.duration_ms = 1000;
        spec.short.rate_per_s = 3.0;
        // Starts at 0, 333.3 and 666.7 ms.
        assert_eq!(spec.scheduled_count(FlowClass::Short), 3);
        spec.short.rate_per_s = 0.1;
        assert_eq!(spec.scheduled_count(FlowClass::Short), 1);
    }

    #[test]
    fn run_bound_covers_the_longest_enabled_flow() {
        let spec = LoadSpec::default();
        // 8 s of starts + 5 s connect + echo 3 s + 5 s slack.
        assert_eq!(spec.run_bound(), Duration::from_millis(21_000));
        let spec = LoadSpec {
            echo: EchoSpec {
                sessions_per_s: 0.0,
                ..EchoSpec::default()
            },
            ..LoadSpec::default()
        };
        // Only short flows: 8 s + 5 s connect + 5 s timeout.
        assert_eq!(spec.run_bound(), Duration::from_millis(18_000));
    }
}
