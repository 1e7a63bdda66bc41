//! The agent's configuration: a YAML file, validated completely at load time.
//!
//! Every scalar with a constraint is a newtype deserialized through `TryFrom<String>`, so a value
//! that breaks the constraint cannot exist in a [`Config`], and serde_yaml reports the failure with
//! the key path (`vips[0].address`) and the line/column of the offending value. Every struct denies
//! unknown keys, because a misspelt optional key would otherwise silently fall back to its default.
//! Checks that involve more than one key run after parsing and name the key they blame.
//!
//! Scalars are taken as strings on purpose: serde_yaml hands any plain scalar to a `String`
//! (`80`, `0x1d000000`, `10s` alike), so one parser per type decides what is valid and writes the
//! message, instead of serde's generic "invalid type: integer, expected a string".

use std::fmt;

use std::path::Path;

use serde::Deserialize;

mod values;

pub use values::*;

/// Why a configuration could not be loaded. Display is always one line that starts with the file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read at all.
    #[error("{origin}: cannot read the file: {source}")]
    Read {
        /// Path of the file.
        origin: String,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// The YAML is malformed or a value (or key) is invalid; `message` starts with the key path
    /// serde_yaml tracked, when it has one.
    #[error("{origin}: {message}{}", fmt_location(*line, *column))]
    Parse {
        /// Path of the file (or a label for text that did not come from a file).
        origin: String,
        /// What is wrong, prefixed with the key path.
        message: String,
        /// 1-based line of the offending value, when known.
        line: Option<usize>,
        /// 1-based column of the offending value, when known.
        column: Option<usize>,
    },
    /// Each value is valid on its own, but the combination is not.
    #[error("{origin}: {key}: {cause}")]
    Invalid {
        /// Path of the file.
        origin: String,
        /// The key blamed, as a path (`peer_probe.port`).
        key: &'static str,
        /// What is wrong.
        cause: String,
    },
}

fn fmt_location(line: Option<usize>, column: Option<usize>) -> String {
    match (line, column) {
        (Some(line), Some(column)) => format!(" (line {line}, column {column})"),
        (Some(line), None) => format!(" (line {line})"),
        _ => String::new(),
    }
}

impl ConfigError {
    fn from_yaml(origin: &str, err: &serde_yaml::Error) -> Self {
        let mut message = err.to_string();
        let (mut line, mut column) = (None, None);
        if let Some(location) = err.location() {
            // serde_yaml appends " at line L column C" to value errors; we print the location in
            // our own format. libyaml syntax errors carry their location inside the sentence
            // ("... at line 3 column 1, while parsing ..."), which we leave as it is.
            let suffix = format!(" at line {} column {}", location.line(), location.column());
            if let Some(stripped) = message.strip_suffix(&suffix) {
                message = stripped.to_string();
                line = Some(location.line());
                column = Some(location.column());
            }
        }
        ConfigError::Parse {
            origin: origin.to_string(),
            message: one_line(&message),
            line,
            column,
        }
    }
}

/// Collapses a possibly multi-line message into one line, because log lines and the CLI's error
/// output must stay one line per error.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The validated configuration of one drain-agent node.
///
/// Values come from [`Config::load`] or [`Config::from_str`], which run every check; a value built
/// by hand can be checked with [`Config::validate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The virtual addresses keepalived moves between the nodes, with the TCP ports served on them.
    pub vips: VipList,
    /// Interface on which client traffic for the VIPs arrives.
    pub ingress_interface: IfName,
    /// The other load-balancer node's address on the ingress network; diverted packets go there.
    pub peer: UnicastV4,
    /// Interface keepalived's `track_interface` watches; downing it makes keepalived fail over.
    pub tracked_interface: IfName,
    /// How the failover is triggered and awaited.
    pub failover: Failover,
    /// Names and marks used in the firewall.
    pub firewall: FirewallSettings,
    /// How the drain of local connections is watched.
    pub drain: Drain,
    /// How the peer's health is probed while diverting to it.
    pub peer_probe: PeerProbe,
    /// Directory for the agent's journal and lock.
    pub state_dir: StateDir,
    /// Hand-off between the two agents (`None`: this node neither hands off nor serves the
    /// peer's hand-off).
    pub handoff: Option<Handoff>,
    /// Prometheus metrics served by the daemon (`None`: not served).
    pub metrics: Option<Metrics>,
}

/// `metrics:` section: the daemon serves Prometheus' text format at `http://LISTEN/metrics`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metrics {
    /// Address and port to listen on, e.g. `127.0.0.1:9464` (keep it local, or behind a
    /// firewall: the metrics name the maintenance reason).
    pub listen: ListenAddr,
}

/// What `drain` does by default (`drain --handoff` / `--no-handoff` choose per run).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DrainMode {
    /// Wait for this node's connections (up to `drain.deadline`), then fail over.
    #[default]
    Drain,
    /// Fail over at once; the peer sends the packets of this node's connections back here until
    /// they end (up to `handoff.deadline`).
    Handoff,
}

/// `handoff:` section: the two agents talk to each other over TCP, each message authenticated
/// with HMAC-SHA256 under a key both nodes share.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Handoff {
    /// The shared key: a file of at least 32 bytes (e.g. `head -c 32 /dev/urandom`), the same on
    /// both nodes, readable by root only.
    pub key_file: StateDir,
    /// TCP port the daemon (`drain-agent run`) listens on for the peer's agent; it answers only
    /// the peer's address.
    #[serde(default = "defaults::handoff_port")]
    pub port: Port,
    /// How long a hand-off waits for this node's connections to end before it cuts them.
    #[serde(default = "defaults::handoff_deadline")]
    pub deadline: PositiveDuration,
}

/// `failover:` section.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Failover {
    /// What the agent does to make keepalived give up the VIPs.
    #[serde(default)]
    pub method: FailoverMethod,
    /// How long to wait for the peer to own the VIPs after the trigger.
    #[serde(default = "defaults::failover_timeout")]
    pub timeout: PositiveDuration,
    /// Keep diverting this long after the peer owns the VIPs: clients keep sending to this node
    /// until the peer's gratuitous ARP reaches them (docs/kernel-facts.md#k8).
    #[serde(default = "defaults::post_wait")]
    pub post_wait: HumanDuration,
    /// The file keepalived's `track_file` block watches. Required by `method: track-file`; with
    /// `link-down` it is optional and only used by `undrain` to write `return_weight`.
    #[serde(default)]
    pub track_file: Option<StateDir>,
    /// What `undrain` writes to the track file (value x the block's weight is added to the
    /// priority). 0 restores the node's full priority at once; in a *preempting* pair, give the
    /// node that returns a value that keeps it below its peer (e.g. -51 for priorities 150/100 and
    /// weight 1), so it comes back as BACKUP instead of grabbing the VIP and cutting every
    /// connection the peer serves; `notify` resets it to 0 once the node is MASTER again.
    #[serde(default)]
    pub return_weight: TrackValue,
}

/// The way the agent makes keepalived fail over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum FailoverMethod {
    /// Down the tracked interface; keepalived enters FAULT and sends a priority-0 advert.
    #[default]
    LinkDown,
    /// Write -254 to `failover.track_file` (keepalived's `track_file`): FAULT without touching
    /// any interface.
    TrackFile,
}

/// `firewall:` section.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FirewallSettings {
    /// Prefix of every chain and set the agent owns.
    #[serde(default = "defaults::chain_prefix")]
    pub chain_prefix: ChainPrefix,
    /// Packet mark set on diverted packets, so other rules can recognise the TEE clones.
    #[serde(default = "defaults::mark")]
    pub mark: Mark,
    /// The mark bits the agent owns; `mark` must lie inside it.
    #[serde(default = "defaults::mark_mask")]
    pub mark_mask: MarkMask,
    /// How many diverted flows each VIP port's record holds.
    #[serde(default = "defaults::max_diverted_flows")]
    pub max_diverted_flows: SetCapacity,
}

/// `drain:` section.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Drain {
    /// Give up waiting for local connections to finish after this long.
    #[serde(default = "defaults::deadline")]
    pub deadline: PositiveDuration,
    /// Sockets whose client was silent this long do not hold the drain (zombie sockets,
    /// docs/kernel-facts.md#k4).
    #[serde(default = "defaults::idle_threshold")]
    pub idle_threshold: PositiveDuration,
    /// How often the local sockets are counted.
    #[serde(default = "defaults::poll_interval")]
    pub poll_interval: PollInterval,
    /// At the deadline: `false` = fail over anyway, `true` = roll back.
    #[serde(default)]
    pub abort_on_deadline: bool,
    /// `drain` (wait, then fail over) or `handoff` (fail over at once, the peer returns this
    /// node's packets until its connections end); `handoff` needs the `handoff:` section.
    #[serde(default)]
    pub mode: DrainMode,
    /// On abort, keep diverting already-diverted flows this long.
    #[serde(default = "defaults::rollback_grace")]
    pub rollback_grace: HumanDuration,
}

/// `peer_probe:` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerProbe {
    /// Time between probes.
    pub interval: PositiveDuration,
    /// How long one probe may take.
    pub timeout: PositiveDuration,
    /// Consecutive failed probes that mean "peer lost".
    pub failures: FailureCount,
    /// TCP port probed on the peer; one of the VIP ports (defaults to the first VIP's first port).
    pub port: Port,
}

/// Shapes of the file as written, before defaults that depend on other keys are filled in.
mod raw {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub(super) struct Config {
        pub vips: VipList,
        pub ingress_interface: IfName,
        pub peer: UnicastV4,
        pub tracked_interface: IfName,
        #[serde(default = "defaults::failover")]
        pub failover: Failover,
        #[serde(default = "defaults::firewall")]
        pub firewall: FirewallSettings,
        #[serde(default = "defaults::drain")]
        pub drain: Drain,
        #[serde(default)]
        pub peer_probe: PeerProbe,
        #[serde(default = "defaults::state_dir")]
        pub state_dir: StateDir,
        #[serde(default)]
        pub handoff: Option<Handoff>,
        #[serde(default)]
        pub metrics: Option<Metrics>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub(super) struct PeerProbe {
        #[serde(default = "defaults::probe_interval")]
        pub interval: PositiveDuration,
        #[serde(default = "defaults::probe_timeout")]
        pub timeout: PositiveDuration,
        #[serde(default = "defaults::probe_failures")]
        pub failures: FailureCount,
        #[serde(default)]
        pub port: Option<Port>,
    }

    impl Default for PeerProbe {
        fn default() -> Self {
            PeerProbe {
                interval: defaults::probe_interval(),
                timeout: defaults::probe_timeout(),
                failures: defaults::probe_failures(),
                port: None,
            }
        }
    }
}

/// Default values, as functions because serde's `default = "..."` wants paths.
mod defaults {
    use super::*;

    fn parsed<T: TryFrom<String>>(text: &str) -> T
    where
        T::Error: fmt::Debug,
    {
        T::try_from(text.to_string()).expect("built-in default is valid")
    }

    pub(super) fn failover_timeout() -> PositiveDuration {
        parsed("10s")
    }
    pub(super) fn post_wait() -> HumanDuration {
        parsed("1s")
    }
    pub(super) fn failover() -> Failover {
        Failover {
            method: FailoverMethod::LinkDown,
            timeout: failover_timeout(),
            post_wait: post_wait(),
            track_file: None,
            return_weight: super::TrackValue::default(),
        }
    }
    pub(super) fn chain_prefix() -> ChainPrefix {
        parsed("DRAIN")
    }
    pub(super) fn mark() -> Mark {
        parsed("0x1d000000")
    }
    pub(super) fn mark_mask() -> MarkMask {
        parsed("0xff000000")
    }
    pub(super) fn max_diverted_flows() -> SetCapacity {
        parsed("1048576")
    }
    pub(super) fn firewall() -> FirewallSettings {
        FirewallSettings {
            chain_prefix: chain_prefix(),
            mark: mark(),
            mark_mask: mark_mask(),
            max_diverted_flows: max_diverted_flows(),
        }
    }
    pub(super) fn deadline() -> PositiveDuration {
        parsed("5m")
    }
    pub(super) fn idle_threshold() -> PositiveDuration {
        parsed("30s")
    }
    pub(super) fn poll_interval() -> PollInterval {
        parsed("100ms")
    }
    pub(super) fn rollback_grace() -> HumanDuration {
        parsed("5s")
    }
    pub(super) fn drain() -> Drain {
        Drain {
            deadline: deadline(),
            idle_threshold: idle_threshold(),
            poll_interval: poll_interval(),
            abort_on_deadline: false,
            rollback_grace: rollback_grace(),
            mode: DrainMode::Drain,
        }
    }
    pub(super) fn handoff_port() -> Port {
        parsed("7424")
    }
    pub(super) fn handoff_deadline() -> PositiveDuration {
        parsed("1h")
    }
    pub(super) fn probe_interval() -> PositiveDuration {
        parsed("200ms")
    }
    pub(super) fn probe_timeout() -> PositiveDuration {
        parsed("200ms")
    }
    pub(super) fn probe_failures() -> FailureCount {
        parsed("2")
    }
    pub(super) fn state_dir() -> StateDir {
        parsed("/var/lib/drain-agent")
    }
}

impl Config {
    /// Reads and validates the file at `path`.
    pub fn load(path: impl AsRef<Path>) -> Result<Config, ConfigError> {
        let path = path.as_ref();
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            origin: origin.clone(),
            source,
        })?;
        Config::from_str(&text, &origin)
    }

    /// Parses and validates `text`; `origin` names it in errors (a path, or a label in tests).
    pub fn from_str(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let raw: raw::Config =
            serde_yaml::from_str(text).map_err(|e| ConfigError::from_yaml(origin, &e))?;
        let port = raw
            .peer_probe
            .port
            .unwrap_or_else(|| raw.vips.as_slice()[0].ports.as_slice()[0]);
        let config = Config {
            vips: raw.vips,
            ingress_interface: raw.ingress_interface,
            peer: raw.peer,
            tracked_interface: raw.tracked_interface,
            failover: raw.failover,
            firewall: raw.firewall,
            drain: raw.drain,
            peer_probe: PeerProbe {
                interval: raw.peer_probe.interval,
                timeout: raw.peer_probe.timeout,
                failures: raw.peer_probe.failures,
                port,
            },
            state_dir: raw.state_dir,
            handoff: raw.handoff,
            metrics: raw.metrics,
        };
        config.validate(origin)?;
        Ok(config)
    }

    /// The cross-field checks (each value on its own is valid by construction).
    pub fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        let invalid = |key: &'static str, cause: String| ConfigError::Invalid {
            origin: origin.to_string(),
            key,
            cause,
        };
        if let Some(index) = self.vips.iter().position(|v| v.address == self.peer) {
            return Err(invalid(
                "peer",
                format!(
                    "{} is also vips[{index}].address; the peer must be the other node's own address",
                    self.peer
                ),
            ));
        }
        if self.tracked_interface == self.ingress_interface {
            return Err(invalid(
                "tracked_interface",
                format!(
                    "\"{}\" is also the ingress_interface; downing it would cut the divert path to the peer",
                    self.tracked_interface
                ),
            ));
        }
        let (mark, mask) = (self.firewall.mark.get(), self.firewall.mark_mask.get());
        if mark & !mask != 0 {
            return Err(invalid(
                "firewall.mark",
                format!("{mark:#010x} has bits outside firewall.mark_mask {mask:#010x}"),
            ));
        }
        if self.failover.method == FailoverMethod::TrackFile && self.failover.track_file.is_none() {
            return Err(invalid(
                "failover.track_file",
                "is required by failover.method: track-file".to_string(),
            ));
        }
        if self.failover.return_weight.get() != 0 && self.failover.track_file.is_none() {
            return Err(invalid(
                "failover.return_weight",
                "needs failover.track_file to write it to".to_string(),
            ));
        }
        if self.drain.mode == DrainMode::Handoff && self.handoff.is_none() {
            return Err(invalid(
                "drain.mode",
                "handoff needs the handoff: section (key_file)".to_string(),
            ));
        }
        if !self.vips.ports().any(|p| p == self.peer_probe.port) {
            return Err(invalid(
                "peer_probe.port",
                format!(
                    "{} is not one of the VIP ports; the probe must exercise a service the peer takes over",
                    self.peer_probe.port
                ),
            ));
        }
        Ok(())
    }

    /// The documented example configuration shipped as `keepalived/drain-agent.yaml`.
    pub fn example() -> &'static str {
        include_str!("../../keepalived/drain-agent.yaml")
    }
}

#[cfg(test)]
mod tests;
