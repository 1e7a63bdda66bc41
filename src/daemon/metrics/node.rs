//! The node's gauges: one scrape's reading of the node, encoded as it is collected.

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeGaugeValue, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::metrics::MetricType;

use crate::ops::status::Status;

/// Every phase the `phase` gauge can show, in the order a drain goes through them.
pub const PHASES: [&str; 10] = [
    "serving",
    "preflight",
    "draining",
    "failing-over",
    "handing-off",
    "failed-over",
    "maintenance",
    "returning",
    "diverting",
    "busy",
];

/// The gauges of one scrape: the phase, and the node as the snapshot read it.
#[derive(Debug)]
pub(super) struct NodeGauges {
    pub(super) phase: Option<&'static str>,
    pub(super) status: Option<Arc<Status>>,
}

/// Encodes one unlabelled gauge.
fn gauge(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: impl EncodeGaugeValue,
) -> Result<(), std::fmt::Error> {
    ConstGauge::new(value).encode(enc.encode_descriptor(name, help, None, MetricType::Gauge)?)
}

/// Encodes one gauge family, a sample per `(label value, value)`.
fn gauges<'a, V: EncodeGaugeValue>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &'static str,
    samples: impl IntoIterator<Item = (&'a str, V)>,
) -> Result<(), std::fmt::Error> {
    let mut family = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (label_value, value) in samples {
        ConstGauge::new(value).encode(family.encode_family(&[(label, label_value)])?)?;
    }
    Ok(())
}

impl Collector for NodeGauges {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let enc = &mut enc;
        // Help texts end in a full stop, as the registry's do.
        gauges(
            enc,
            "drain_agent_phase",
            "1 for the phase the node is in, 0 for the others.",
            "phase",
            PHASES.map(|p| (p, i64::from(self.phase == Some(p)))),
        )?;
        gauge(
            enc,
            "drain_agent_status_ok",
            "0 if the node's state could not be read at this scrape.",
            i64::from(self.status.is_some()),
        )?;
        let Some(s) = &self.status else {
            return Ok(());
        };
        if let Some(c) = &s.sockets {
            gauges(
                enc,
                "drain_agent_sockets",
                "the node's connections on the VIP ports, by TCP state.",
                "state",
                c.by_state.iter().map(|(state, n)| (state.as_str(), *n)),
            )?;
            gauge(
                enc,
                "drain_agent_sockets_idle",
                "connections idle longer than drain.idle_threshold.",
                c.idle,
            )?;
        }
        let vips: Vec<(String, i64)> = s
            .vips
            .iter()
            .map(|v| (v.address.to_string(), i64::from(v.local)))
            .collect();
        gauges(
            enc,
            "drain_agent_vip_held",
            "1 if this node holds the VIP.",
            "vip",
            vips.iter().map(|(vip, held)| (vip.as_str(), *held)),
        )?;
        gauge(
            enc,
            "drain_agent_tracked_interface_up",
            "1 if the tracked interface is up.",
            i64::from(s.tracked_interface.up),
        )?;
        // Without a divert these read 0 rather than vanish: the alerts compare them.
        let d = s.divert.as_ref();
        gauge(
            enc,
            "drain_agent_divert_flows",
            "new flows (SYNs) the divert in place has sent to the peer.",
            d.map_or(0, |d| d.diverted_flows),
        )?;
        gauge(
            enc,
            "drain_agent_divert_packets",
            "packets the divert in place has sent to the peer.",
            d.map_or(0, |d| d.diverted_packets),
        )?;
        gauge(
            enc,
            "drain_agent_divert_unrecorded_syns",
            "SYNs of the divert in place its record could not hold (each fell through to this node).",
            d.map_or(0, |d| d.unrecorded_syns),
        )?;
        gauge(
            enc,
            "drain_agent_maintenance",
            "1 if the node is in maintenance.",
            i64::from(s.maintenance.is_some()),
        )?;
        if let Some(m) = &s.maintenance {
            gauge(
                enc,
                "drain_agent_maintenance_since_seconds",
                "Unix time the node went into maintenance.",
                m.since,
            )?;
            // An info metric: the encoder names it `drain_agent_maintenance_info`, value 1.
            Info::new([("reason", m.reason.as_str()), ("by", m.by.as_str())]).encode(
                enc.encode_descriptor(
                    "drain_agent_maintenance",
                    "why and by whom the node is in maintenance.",
                    None,
                    MetricType::Info,
                )?,
            )?;
        }
        Ok(())
    }
}

/// Every metric name the exposition can carry, as its samples are named (the alert rules'
/// test checks that they read only these).
pub const EXPOSED: [&str; 17] = [
    "drain_agent_phase",
    "drain_agent_status_ok",
    "drain_agent_sockets",
    "drain_agent_sockets_idle",
    "drain_agent_vip_held",
    "drain_agent_tracked_interface_up",
    "drain_agent_divert_flows",
    "drain_agent_divert_packets",
    "drain_agent_divert_unrecorded_syns",
    "drain_agent_maintenance",
    "drain_agent_maintenance_since_seconds",
    "drain_agent_maintenance_info",
    "drain_agent_drains_total",
    "drain_agent_diverted_flows_total",
    "drain_agent_peer_probe_failures_total",
    "drain_agent_drain_duration_seconds",
    "drain_agent_failover_duration_seconds",
];
