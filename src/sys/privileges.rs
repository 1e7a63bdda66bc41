//! Whether this process may change the network: every command that reads or changes it needs
//! `CAP_NET_ADMIN` (root has it), checked up front so the error names the cause instead of a
//! netlink EPERM halfway through.

/// `CAP_NET_ADMIN` (linux/capability.h).
const CAP_NET_ADMIN: u32 = 12;

/// Whether the effective capabilities (`CapEff` of `/proc/self/status`) include
/// `CAP_NET_ADMIN`.
pub fn has_net_admin() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    cap_eff(&status).is_some_and(|eff| eff & (1 << CAP_NET_ADMIN) != 0)
}

/// The `CapEff` bits of a `/proc/<pid>/status` text.
fn cap_eff(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_eff_is_read_as_hex() {
        let root = "Name:\tx\nCapEff:\t000001ffffffffff\n";
        assert_eq!(cap_eff(root), Some(0x1ff_ffff_ffff));
        assert!(cap_eff(root).unwrap() & (1 << CAP_NET_ADMIN) != 0);
        assert_eq!(cap_eff("CapEff:\t0000000000000000\n"), Some(0));
        assert_eq!(cap_eff("Name:\tx\n"), None);
    }
}
