//! drain-lab: the test bench for drain-agent (backend server, load generator, scenarios).

pub mod backend;
pub mod load;
