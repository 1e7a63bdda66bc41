//! drain-agent library: kernel adapters and the drain logic the binary drives.

pub mod links;
pub mod netns;
pub mod probe;
pub mod sysctl;
