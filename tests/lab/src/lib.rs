//! drain-lab: the test bench every drain-agent change is judged in. A real keepalived + HAProxy
//! pair in network namespaces ([`topology`]), a backend ([`backend`]) and a flow-accounting load
//! generator ([`load`]), and the scenarios that compare ways of taking a node out of service
//! ([`scenario`]).

pub mod backend;
pub mod bench;
pub mod cli;
pub mod load;
pub mod scenario;
pub mod topology;
