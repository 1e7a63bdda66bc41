//! drain-agent: takes one node of a keepalived/VRRP + HAProxy pair out of service without breaking
//! a connection. See README.md for the design; [`drain`] is the cycle, [`plan`] the rules.

pub mod cli;
pub mod config;
pub mod daemon;
pub mod keepalived;
pub mod observability;
pub mod ops;
pub mod plan;
pub mod sys;
