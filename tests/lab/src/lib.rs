//! drain-lab: the test bench every drain-agent change is judged in. A real keepalived + HAProxy
//! pair in network namespaces ([`topology`]), a backend and a flow-accounting load generator, and
//! the scenarios that compare ways of taking a node out of service ([`scenario`]).

pub mod netns;
pub mod topology;
