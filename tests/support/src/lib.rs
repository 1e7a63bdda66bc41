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

/// Runs `argv` (a shell and its arguments, say) with `home` as `HOME` and no XDG overrides, so no
/// shell writes into the real home; it must succeed. Returns its stdout.
pub fn run_with_home(home: &std::path::Path, argv: &[&str]) -> String {
    let out = std::process::Command::new(argv[0])
        .args(&argv[1..])
        .env("HOME", home)
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("XDG_DATA_HOME")
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", argv[0]));
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    assert!(
        out.status.success(),
        "{argv:?}: {}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}
