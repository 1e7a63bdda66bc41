//! drain-agent: takes one node of a keepalived/VRRP + HAProxy pair out of service without breaking
//! a connection. See README.md for the design.
//!
//! The tree reads from the inside out:
//! - [`plan`]: pure functions from the configuration to the rules, sets and sysctls a drain needs;
//! - [`ops`]: the service layer, every operation (drain, undrain, status, check, notify, ...) over
//!   the [`ops::Host`] trait, with typed results and events;
//! - [`sys`]: thin adapters that touch the kernel (firewall, links, sock_diag, probe, sysctl);
//! - [`wiring`]: [`wiring::SystemHost`], the adapters composed into the one real `Host`;
//! - [`journal`]: the agent's own state directory (lock, change journals, last outcome);
//! - [`keepalived`] and [`config`]: the formats we read and write;
//! - [`daemon`] and [`cli`]: parse, call one operation, render;
//! - [`faults`]: the test builds' fault-injection points (empty in a shipped build).
#![warn(missing_docs)]

pub mod cli;
pub mod config;
pub mod daemon;
pub mod faults;
pub mod journal;
pub mod keepalived;
pub mod observability;
pub mod ops;
pub mod plan;
pub mod sys;
pub mod wiring;
