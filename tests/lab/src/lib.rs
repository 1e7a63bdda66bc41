//! drain-lab: the test bench every drain-agent change is judged in. A real keepalived + HAProxy
//! pair in network namespaces ([`topology`]), a backend ([`backend`]) and a flow-accounting load
//! generator ([`load`]), and the scenarios that compare ways of taking a node out of service
//! ([`scenario`]). A [`fleet`] of several pairs with an sshd in every node ([`ssh`]) is where the
//! Ansible role and playbooks run.

pub mod backend;
pub mod bench;
pub mod cli;
pub mod fleet;
pub mod load;
pub mod scenario;
pub mod ssh;
pub mod topology;
