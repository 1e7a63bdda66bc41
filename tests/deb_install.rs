//! The Debian package (`make deb`, which runs `packaging/deb/build.sh`) installs with `dpkg -i`,
//! works where an operator meets it, and `dpkg --purge` leaves no trace.
//!
//! Built from this test run's binary with the same script `make deb` runs. Once installed:
//! `drain-agent --version` is Cargo.toml's version; `man -w` finds every page; the installed unit
//! passes `systemd-analyze verify` (which also resolves its `man:` documentation) without a word;
//! the conffile is a valid configuration; bash (through bash-completion's loader), zsh (compinit)
//! and fish load the completions from where the package put them and complete a subcommand.
//! Then the package is purged, with state the agent would have written, and every path it
//! created must be gone — except keepalived's track file, which purge keeps on purpose.
//!
//! This installs a real package on the machine, so it refuses to run where drain-agent is
//! already present (packaged or by hand: a real load balancer): it skips, printing why, and
//! fails under CI=true. A guard purges what the test installed even when an assertion fails.
//! Root only; the runs of both tests are serialised by a lock file.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use clap::CommandFactory;
use drain_agent::cli::Cli;
use drain_test_support::{require_no_obstacle, require_root, require_tool, run_with_home};
use nix::fcntl::{Flock, FlockArg};

const BIN: &str = env!("CARGO_BIN_EXE_drain-agent");
const VERSION: &str = env!("CARGO_PKG_VERSION");
const STATE_DIR: &str = "/var/lib/drain-agent";
const TRACK_FILE: &str = "/var/lib/drain-agent/keepalived.track";
/// Where `systemctl enable drain-agent` puts its link; purge removes it.
const ENABLE_LINK: &str = "/etc/systemd/system/multi-user.target.wants/drain-agent.service";

/// Paths that mean this machine already has a drain-agent (installed by the package or by hand,
/// as the README describes), which installing and purging the package would overwrite or remove.
const TRACES: &[&str] = &[
    "/usr/sbin/drain-agent",
    "/usr/local/sbin/drain-agent",
    "/lib/systemd/system/drain-agent.service",
    "/etc/systemd/system/drain-agent.service",
    ENABLE_LINK,
    "/etc/drain-agent",
    STATE_DIR,
    "/usr/share/doc/drain-agent",
];

fn run(argv: &[&str]) -> Output {
    Command::new(argv[0])
        .args(&argv[1..])
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", argv[0]))
}

fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

/// Runs `argv`, which must succeed; returns its stdout.
fn run_ok(argv: &[&str]) -> String {
    let out = run(argv);
    assert!(
        out.status.success(),
        "{argv:?}: {}\nstdout: {}\nstderr: {}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// Runs `dpkg ARGS`, waiting (up to two minutes, as apt would) while another process holds
/// dpkg's lock: other work on the machine may be installing packages.
fn dpkg(args: &[&str]) -> Output {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let out = Command::new("dpkg")
            .args(args)
            .env("LC_ALL", "C")
            .output()
            .expect("dpkg");
        let locked =
            !out.status.success() && text(&out.stderr).to_lowercase().contains("another process");
        if !locked || Instant::now() > deadline {
            return out;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// `dpkg ARGS`, which must succeed.
fn dpkg_ok(args: &[&str]) {
    let out = dpkg(args);
    assert!(
        out.status.success(),
        "dpkg {args:?}: {}\nstdout: {}\nstderr: {}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// dpkg's status of the package (`ii`, `rc`, ...), or None when dpkg does not know it.
fn package_status() -> Option<String> {
    let out = run(&["dpkg-query", "-W", "-f=${db:Status-Abbrev}", "drain-agent"]);
    let status = text(&out.stdout).trim().to_string();
    // A package dpkg never saw makes dpkg-query fail; a purged one may linger as "un".
    (out.status.success() && !status.is_empty() && !status.starts_with("un")).then_some(status)
}

/// Why this machine must not be touched, if it must not.
fn obstacle() -> Option<String> {
    if let Some(status) = package_status() {
        return Some(format!(
            "dpkg knows a drain-agent package (status {status:?}); the test would replace and purge it"
        ));
    }
    TRACES
        .iter()
        .find(|p| Path::new(p).symlink_metadata().is_ok())
        .map(|p| {
            format!("{p} exists: this machine has a drain-agent, which the test's install and purge would overwrite or remove")
        })
}

/// Everything the test needs, or false (skipped, printed; a failure under CI=true).
fn prerequisites(test: &str) -> bool {
    require_root(test)
        && [
            "dpkg-deb",
            "dpkg-shlibdeps",
            "strip",
            "man",
            "systemd-analyze",
            "bash",
            "zsh",
            "fish",
        ]
        .iter()
        .all(|tool| require_tool(test, tool))
        && require_no_obstacle(
            test,
            (!Path::new("/usr/share/bash-completion/bash_completion").exists())
                .then(|| "bash-completion is not installed (run tests/deps.sh)".to_string()),
        )
}

/// Holds the lock that serialises the tests installing the package, across test processes.
fn serialise() -> Flock<fs::File> {
    let file = fs::File::create("/run/lock/drain-agent-deb-test.lock").expect("lock file");
    Flock::lock(file, FlockArg::LockExclusive).expect("flock")
}

/// Purges the package on drop, also when the test failed half-way, and removes what the test
/// itself left (the track file it wrote).
struct PurgeGuard;

impl Drop for PurgeGuard {
    fn drop(&mut self) {
        if package_status().is_some() {
            let _ = dpkg(&["--purge", "drain-agent"]);
        }
        let _ = fs::remove_file(TRACK_FILE);
        let _ = fs::remove_dir(STATE_DIR);
    }
}

/// Builds the package from this run's binary into `dir` with `make deb`'s script.
fn build_deb(dir: &Path) -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/deb/build.sh");
    let out = run_ok(&["bash", script.to_str().unwrap(), BIN, dir.to_str().unwrap()]);
    let deb = PathBuf::from(out.trim());
    let arch = run_ok(&["dpkg", "--print-architecture"]);
    assert_eq!(
        deb,
        dir.join(format!("drain-agent_{VERSION}_{}.deb", arch.trim()))
    );
    deb
}

/// The `(mode, owner, path)` of each entry of the package, paths as installed (`/usr/...`).
fn contents(deb: &Path) -> Vec<(String, String, String)> {
    run_ok(&["dpkg-deb", "-c", deb.to_str().unwrap()])
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let path = f[5].trim_start_matches('.').trim_end_matches('/');
            (f[0].to_string(), f[1].to_string(), path.to_string())
        })
        .filter(|(_, _, p)| !p.is_empty())
        .collect()
}

/// The man pages the binary's subcommands call for.
fn man_pages() -> Vec<String> {
    fn add(cmd: &clap::Command, prefix: &str, pages: &mut Vec<String>) {
        for sub in cmd.get_subcommands().filter(|c| !c.is_hide_set()) {
            let name = format!("{prefix}-{}", sub.get_name());
            pages.push(name.clone());
            add(sub, &name, pages);
        }
    }
    let mut pages = vec!["drain-agent".to_string()];
    add(&Cli::command(), "drain-agent", &mut pages);
    pages
}

fn dpkg_install(deb: &Path) {
    dpkg_ok(&["-i", deb.to_str().unwrap()]);
    assert_eq!(package_status().as_deref(), Some("ii"));
}

#[test]
#[ignore = "needs root and network namespaces; `make test` runs it"]
fn deb_installs_works_and_purges_without_a_trace() {
    const TEST: &str = "deb_installs_works_and_purges_without_a_trace";
    if !prerequisites(TEST) {
        return;
    }
    let _lock = serialise();
    if !require_no_obstacle(TEST, obstacle()) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let deb = build_deb(dir.path());

    // The control file.
    let field = |name: &str| run_ok(&["dpkg-deb", "-f", deb.to_str().unwrap(), name]);
    assert_eq!(field("Package").trim(), "drain-agent");
    assert_eq!(field("Version").trim(), VERSION);
    let depends = field("Depends");
    for dep in ["libc6", "iptables", "ipset", "nftables"] {
        assert!(depends.contains(dep), "Depends: {depends}");
    }
    assert!(field("Recommends").contains("keepalived"));

    // The contents: exactly these files, root's, with the modes Debian expects.
    let entries = contents(&deb);
    let files: BTreeSet<&str> = entries
        .iter()
        .filter(|(mode, _, _)| !mode.starts_with('d'))
        .map(|(_, _, p)| p.as_str())
        .collect();
    let mut expected: BTreeSet<String> = [
        "/etc/drain-agent/drain-agent.yaml",
        "/lib/systemd/system/drain-agent.service",
        "/usr/sbin/drain-agent",
        "/usr/share/bash-completion/completions/drain-agent",
        "/usr/share/zsh/vendor-completions/_drain-agent",
        "/usr/share/fish/vendor_completions.d/drain-agent.fish",
        "/usr/share/doc/drain-agent/README.md",
        "/usr/share/doc/drain-agent/README.Debian",
        "/usr/share/doc/drain-agent/copyright",
        "/usr/share/doc/drain-agent/changelog.gz",
        "/usr/share/lintian/overrides/drain-agent",
        "/usr/share/doc/drain-agent/examples/README.md",
        "/usr/share/doc/drain-agent/examples/drain-agent.yaml",
        "/usr/share/doc/drain-agent/examples/drain-agent-lb1.yaml",
        "/usr/share/doc/drain-agent/examples/drain-agent-lb2.yaml",
        "/usr/share/doc/drain-agent/examples/keepalived-lb1.conf",
        "/usr/share/doc/drain-agent/examples/keepalived-lb2.conf",
        "/usr/share/doc/drain-agent/examples/drain-agent.rules.yml",
    ]
    .map(String::from)
    .into();
    expected.extend(
        man_pages()
            .iter()
            .map(|p| format!("/usr/share/man/man8/{p}.8.gz")),
    );
    assert_eq!(
        files,
        expected.iter().map(String::as_str).collect::<BTreeSet<_>>()
    );
    assert!(entries
        .iter()
        .any(|(m, _, p)| m.starts_with('d') && p == STATE_DIR));
    for (mode, owner, path) in &entries {
        assert_eq!(owner, "root/root", "{path}");
        let want = match mode.chars().next() {
            // The state directory (journals, lock, track file) is root's alone, as the unit's
            // StateDirectoryMode and the agent itself make it.
            Some('d') if path == STATE_DIR => "drwx------",
            Some('d') => "drwxr-xr-x",
            _ if path == "/usr/sbin/drain-agent" => "-rwxr-xr-x",
            _ => "-rw-r--r--",
        };
        assert_eq!(mode, want, "{path}");
    }

    // What existed before (shared directories such as /usr/share/man/man8), to tell what the
    // purge must have removed.
    let existed: BTreeSet<&str> = entries
        .iter()
        .map(|(_, _, p)| p.as_str())
        .filter(|p| Path::new(p).symlink_metadata().is_ok())
        .collect();

    let _guard = PurgeGuard;
    dpkg_install(&deb);

    assert_eq!(
        run_ok(&["/usr/sbin/drain-agent", "--version"]),
        format!("drain-agent {VERSION}\n")
    );
    let bin = fs::metadata("/usr/sbin/drain-agent").unwrap();
    assert_eq!((bin.uid(), bin.permissions().mode() & 0o7777), (0, 0o755));
    let conffiles = run_ok(&["dpkg-query", "-W", "-f=${Conffiles}", "drain-agent"]);
    assert!(
        conffiles.contains("/etc/drain-agent/drain-agent.yaml "),
        "{conffiles}"
    );
    drain_agent::config::Config::load("/etc/drain-agent/drain-agent.yaml")
        .unwrap_or_else(|e| panic!("the installed configuration: {e}"));

    for page in man_pages() {
        assert_eq!(
            run_ok(&["man", "-w", &page]).trim(),
            format!("/usr/share/man/man8/{page}.8.gz")
        );
    }
    let rendered = Command::new("man")
        .arg("drain-agent")
        .env("MANWIDTH", "100")
        .env("MANPAGER", "cat")
        .output()
        .unwrap();
    let rendered = text(&rendered.stdout);
    for needle in [
        "EXIT STATUS",
        "EXAMPLES",
        "drain-agent-drain(8)",
        "drain-agent drain",
    ] {
        assert!(
            rendered.contains(needle),
            "{needle} not in man drain-agent:\n{rendered}"
        );
    }

    // The unit: the packaged binary, and `systemd-analyze verify` has nothing to say (it also
    // checks that ExecStart is executable and, with --man=yes, that man:drain-agent(8) exists).
    let unit = fs::read_to_string("/lib/systemd/system/drain-agent.service").unwrap();
    assert!(unit.contains(
        "\nExecStart=/usr/sbin/drain-agent run --config /etc/drain-agent/drain-agent.yaml\n"
    ));
    let verify = run(&[
        "systemd-analyze",
        "verify",
        "--man=yes",
        "/lib/systemd/system/drain-agent.service",
    ]);
    let said = text(&verify.stdout) + &text(&verify.stderr);
    assert!(
        verify.status.success() && said.trim().is_empty(),
        "systemd-analyze verify: {}\n{said}",
        verify.status
    );
    // The keepalived examples call the packaged binary.
    for n in [1, 2] {
        let conf = fs::read_to_string(format!(
            "/usr/share/doc/drain-agent/examples/keepalived-lb{n}.conf"
        ))
        .unwrap();
        assert!(conf.contains("notify \"/usr/sbin/drain-agent notify\""));
        assert!(!conf.contains("/usr/local/sbin"));
    }

    // Completions, loaded the way each shell finds them where the package put them.
    let home = tempfile::tempdir().unwrap();
    let bash = run_with_home(
        home.path(),
        &[
            "bash",
            "-c",
            "source /usr/share/bash-completion/bash_completion
             __load_completion drain-agent || exit 3
             fn=$(complete -p drain-agent | sed -n 's/.* -F \\([^ ]*\\) .*/\\1/p')
             COMP_WORDS=(drain-agent und); COMP_CWORD=1; COMP_LINE='drain-agent und'
             \"$fn\" drain-agent und drain-agent
             echo \"${COMPREPLY[*]}\"",
        ],
    );
    assert_eq!(bash.trim(), "undrain");
    let zsh = run_with_home(
        home.path(),
        &[
            "zsh",
            "-f",
            "-c",
            "autoload -Uz compinit && compinit -u -D && print -r -- ${_comps[drain-agent]}",
        ],
    );
    assert_eq!(zsh.trim(), "_drain-agent");
    let fish = run_with_home(
        home.path(),
        // Not --no-config: that also drops the vendor directories from fish_complete_path.
        &["fish", "-c", "complete -C 'drain-agent und'"],
    );
    assert!(fish.lines().any(|l| l.starts_with("undrain\t")), "{fish}");

    // State the agent writes at run time, and the link `systemctl enable` makes.
    for f in [
        "lock",
        "drain-journal.json",
        "accept-journal.json",
        "last-drain.json",
    ] {
        fs::write(Path::new(STATE_DIR).join(f), "{}").unwrap();
    }
    std::os::unix::fs::symlink("/lib/systemd/system/drain-agent.service", ENABLE_LINK).unwrap();

    dpkg_ok(&["--purge", "drain-agent"]);
    assert_eq!(package_status(), None);
    for (_, _, path) in &entries {
        if !existed.contains(path.as_str()) {
            assert!(
                Path::new(path).symlink_metadata().is_err(),
                "{path} is left after purge"
            );
        }
    }
    for path in [STATE_DIR, "/etc/drain-agent", ENABLE_LINK] {
        assert!(
            Path::new(path).symlink_metadata().is_err(),
            "{path} is left after purge"
        );
    }
}

/// keepalived reads a deleted track file as 0 (it would put a drained node back into VRRP), so
/// purge keeps it, says so, and removes the rest of the state directory.
#[test]
#[ignore = "needs root and network namespaces; `make test` runs it"]
fn purge_keeps_keepalived_track_file() {
    const TEST: &str = "purge_keeps_keepalived_track_file";
    if !prerequisites(TEST) {
        return;
    }
    let _lock = serialise();
    if !require_no_obstacle(TEST, obstacle()) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let deb = build_deb(dir.path());
    let _guard = PurgeGuard;
    dpkg_install(&deb);
    fs::write(TRACK_FILE, "-254\n").unwrap();
    fs::write(Path::new(STATE_DIR).join("lock"), "").unwrap();

    let out = dpkg(&["--purge", "drain-agent"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("kept /var/lib/drain-agent/keepalived.track"));
    assert_eq!(package_status(), None);
    assert_eq!(fs::read_to_string(TRACK_FILE).unwrap(), "-254\n");
    let left: Vec<_> = fs::read_dir(STATE_DIR)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, ["keepalived.track"]);
    assert!(Path::new("/usr/sbin/drain-agent")
        .symlink_metadata()
        .is_err());
}
