//! The kernel adapters: each a small trait (or a thin function) over one kernel interface, with the
//! real implementation and, for tests, a recording fake. They move what the planner and the
//! service layer decided to the kernel and read the kernel back; they decide nothing themselves.
//!
//! - [`firewall`]: iptables-restore/-save, ipset, nft (and nftables over netlink);
//! - [`links`]: links, addresses and routes over rtnetlink;
//! - [`sockdiag`]: counting the VIP's sockets over netlink sock_diag;
//! - [`probe`]: the SYN probe of the peer and ARP, over AF_PACKET;
//! - [`sysctl`]: reading and writing `/proc/sys`;
//! - [`peerlink`]: the authenticated request/reply between the two nodes' agents (hand-off);
//! - [`fs`]: writing a file atomically;
//! - [`process`]: the one way a tool is run (timeout, errors naming the tool);
//! - [`privileges`]: whether this process may change the network;
//!
//! [`crate::wiring`] composes them into the service layer's `Host`.

pub mod firewall;
pub mod fs;
pub mod links;
pub mod peerlink;
pub mod privileges;
pub mod probe;
pub mod process;
pub mod sockdiag;
pub mod sysctl;
