//! Prometheus metrics: the daemon serves the text exposition format (0.0.4) at
//! `http://<metrics.listen>/metrics`, encoded by `prometheus-client`: the daemon's counters and
//! histograms live in its registry; the node's gauges are a collector over the scrape's snapshot.
//!
//! Gauges describe the node as `status` reads it (so they are right whatever ran the drain: the
//! daemon, or the CLI with `--local`); while the daemon itself runs a drain, the phase follows
//! that drain's events. Counters and histograms count the drains the daemon ran.
//!
//! Reading the node's state costs real work (iptables-save, ipset, a sock_diag dump,
//! rtnetlink), so it is not done per scrape: the state is read at most once per
//! [`REFRESH_EVERY`], by one refresh at a time, and every scrape in between is answered from that
//! snapshot. So a scrape costs the same whatever the scrape rate; and at most
//! [`MAX_CONNECTIONS`] connections are served at once (more are closed at accept), each given
//! [`REQUEST_TIMEOUT`] to send its request, so idle connections cannot exhaust the daemon's file
//! descriptors.
//!
//! | metric | type | |
//! |---|---|---|
//! | `drain_agent_phase{phase}` | gauge | 1 for the current phase, 0 for the others |
//! | `drain_agent_sockets{state}` | gauge | the node's connections on the VIP ports, per TCP state |
//! | `drain_agent_sockets_idle` | gauge | of those, idle longer than `drain.idle_threshold` |
//! | `drain_agent_vip_held{vip}` | gauge | 1 if this node holds the VIP |
//! | `drain_agent_tracked_interface_up` | gauge | |
//! | `drain_agent_divert_flows` / `_packets` | gauge | the divert in place: new flows (SYNs) and packets diverted so far |
//! | `drain_agent_divert_unrecorded_syns` | gauge | SYNs the divert's record could not hold (0: none, or no divert) |
//! | `drain_agent_maintenance` | gauge | 1 in maintenance |
//! | `drain_agent_maintenance_since_seconds` | gauge | in maintenance: the Unix time it began |
//! | `drain_agent_maintenance_info{reason,by}` | gauge | 1, in maintenance: why and who |
//! | `drain_agent_drains_total{mode,result}` | counter | drains the daemon ran, by mode and result |
//! | `drain_agent_diverted_flows_total` | counter | new flows those drains diverted |
//! | `drain_agent_peer_probe_failures_total` | counter | failed probes of the peer during drains |
//! | `drain_agent_drain_duration_seconds` | histogram | from the divert to the end of the wait |
//! | `drain_agent_failover_duration_seconds` | histogram | from the trigger until the peer owned the VIPs |
//! | `drain_agent_status_ok` | gauge | 0 if the node's state could not be read at this scrape |

mod http;
mod node;
mod registry;
mod snapshot;

pub use http::{bind, serve, MAX_CONNECTIONS, REQUEST_TIMEOUT};
pub use node::{EXPOSED, PHASES};
pub use registry::{Metrics, CONTENT_TYPE};
pub use snapshot::{Snapshot, REFRESH_EVERY};

#[cfg(test)]
mod tests;
