//! drain-agent: takes one node of a keepalived/VRRP + HAProxy pair out of service without breaking
//! a connection. See README.md for the design; [`drain`] is the cycle, [`plan`] the rules.

pub mod cli;
pub mod config;
pub mod control;
pub mod drain;
pub mod firewall;
pub mod host;
pub mod journal;
pub mod keepalived;
pub mod links;
pub mod nftables;
pub mod observability;
pub mod plan;
pub mod probe;
pub mod record;
pub mod sockdiag;
pub mod sysctl;
