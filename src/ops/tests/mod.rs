//! The service layer's operations against the fake world (`super::fake`).

mod drain;
mod handoff;
mod maintenance;
