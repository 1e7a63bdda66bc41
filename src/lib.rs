pub mod config;
pub mod firewall;
pub mod plan;
