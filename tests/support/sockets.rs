//! Test helpers for the sock_diag kernel test and benchmark: a throw-away network namespace
//! entered from a scoped thread, and TCP sockets bound to chosen addresses.
//!
//! Included with `#[path]` by `tests/sockdiag_ns.rs` and `tests/bench/sockdiag.rs`.
#![allow(dead_code)] // each includer uses a different subset

use std::fs::File;
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

use nix::sched::{setns, CloneFlags};
use nix::sys::socket::{self, AddressFamily, Backlog, SockFlag, SockType, SockaddrIn};

/// Whether the process may create namespaces. When not root, prints why the caller skips;
/// under `CI=true` a skip would hide a whole test tier, so it panics instead.
pub fn require_root(what: &str) -> bool {
    if nix::unistd::Uid::effective().is_root() {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{what}: needs root (network namespaces), and CI=true forbids skipping");
    }
    eprintln!("SKIP {what}: needs root to create network namespaces");
    false
}

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A named network namespace (`ip netns add`), deleted on drop even when the test panics.
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Creates `da-<purpose>-<pid>-<n>` with `lo` up.
    pub fn new(purpose: &str) -> Self {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("da-{purpose}-{}-{n}", std::process::id());
        run_ok(Command::new("ip").args(["netns", "add", &name]));
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip -n NAME ARGS...`, panicking with its stderr on failure.
    pub fn ip(&self, args: &[&str]) {
        run_ok(Command::new("ip").args(["-n", &self.name]).args(args));
    }

    /// Adds `addr/32` to `lo`.
    pub fn add_lo_addr(&self, addr: Ipv4Addr) {
        self.ip(&["addr", "add", &format!("{addr}/32"), "dev", "lo"]);
    }

    /// Runs a program inside the namespace (`ip netns exec`), panicking on failure.
    pub fn exec(&self, argv: &[&str]) -> Output {
        run_ok(
            Command::new("ip")
                .args(["netns", "exec", &self.name])
                .args(argv),
        )
    }

    /// Runs `f` on a thread that has entered the namespace, so the sockets it creates
    /// (netlink included) belong to it. The calling thread stays where it was.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::scope(|s| {
            let h = s.spawn(|| {
                let ns = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
                setns(ns, CloneFlags::CLONE_NEWNET).unwrap_or_else(|e| panic!("setns {path}: {e}"));
                f()
            });
            h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let out = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
        match out {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!(
                "cleanup: ip netns del {}: {}",
                self.name,
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => eprintln!("cleanup: ip netns del {}: {e}", self.name),
        }
    }
}

fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn tcp_socket() -> io::Result<OwnedFd> {
    Ok(socket::socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?)
}

/// A listener on `addr` with a deep accept queue (std's `TcpListener::bind` uses 128).
pub fn listen(addr: SocketAddrV4, backlog: i32) -> io::Result<TcpListener> {
    let fd = tcp_socket()?;
    socket::setsockopt(&fd, socket::sockopt::ReuseAddr, &true)?;
    socket::bind(fd.as_raw_fd(), &SockaddrIn::from(addr))?;
    socket::listen(&fd, Backlog::new(backlog)?)?;
    Ok(TcpListener::from(fd))
}

/// A client connected from `src` (port 0 = ephemeral) to `dst`.
pub fn connect_from(src: SocketAddrV4, dst: SocketAddrV4) -> io::Result<TcpStream> {
    let fd = tcp_socket()?;
    socket::bind(fd.as_raw_fd(), &SockaddrIn::from(src))?;
    socket::connect(fd.as_raw_fd(), &SockaddrIn::from(dst))?;
    Ok(TcpStream::from(fd))
}

/// Raises the soft RLIMIT_NOFILE to the hard limit and returns it. (Going past the hard limit
/// needs CAP_SYS_RESOURCE, which the test machines' root lacks: 20000 there.)
pub fn raise_nofile_to_hard() -> io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid rlimit structs for the duration of each call.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return Err(io::Error::last_os_error());
        }
        lim.rlim_cur = lim.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(lim.rlim_max)
}
