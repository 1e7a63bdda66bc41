//! Test support shared by drain-agent's kernel and end-to-end tests, its benchmarks, and the lab
//! crate: disposable network namespaces and running code inside one ([`netns`]), skips that print
//! why and that CI turns into failures ([`require_root`], [`require_tool`],
//! [`require_no_obstacle`]), program lookup ([`find_executable`]), sockets bound to chosen
//! addresses ([`sockets`]) and synthetic TCP segments on the wire ([`synthetic`]).
//!
//! None of this is compiled into the agent.

pub mod netns;
pub mod sockets;
pub mod synthetic;

pub use netns::{find_executable, require_no_obstacle, require_root, require_tool, ScratchNetns};
