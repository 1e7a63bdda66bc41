//! The ready-to-copy files in keepalived/: the agent's configuration for each node loads, the
//! keepalived configurations pass `keepalived -t` (inside a scratch network namespace that has
//! their interfaces) and agree with the agent's files and the paths the code uses, and the
//! systemd unit passes `systemd-analyze verify`.
//!
//! Also the reader of keepalived's configuration (`keepalived::conf`) on real files: the
//! shipped configurations and the topologies in tests/fixtures/keepalived/ (single instance,
//! active-active, a sync group over two interfaces with use_vmac, unicast, an include tree with
//! a glob), each read into the model it describes and each accepted by `keepalived -t`.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use drain_agent::config::Config;
use drain_agent::keepalived::conf::{InitialState, KeepalivedConf};
use drain_agent::keepalived::{DEFAULT_FIFO_PATH, DEFAULT_TRACK_FILE_PATH};
use drain_test_support::netns::{require_root, require_tool, ScratchNetns};

fn shipped(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("keepalived")
        .join(name)
}

fn read(name: &str) -> String {
    fs::read_to_string(shipped(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn load(name: &str) -> Config {
    Config::load(shipped(name)).unwrap_or_else(|e| panic!("{e}"))
}

/// Non-comment, non-blank lines, trimmed.
fn directives(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect()
}

/// The value of the first directive `key ...` in a keepalived file.
fn directive(text: &str, key: &str) -> String {
    directives(text)
        .into_iter()
        .find_map(|l| {
            l.strip_prefix(key)
                .filter(|rest| rest.starts_with(' '))
                .map(|rest| rest.trim().to_string())
        })
        .unwrap_or_else(|| panic!("no `{key}` directive"))
}

/// The entries of a `key { ... }` block.
fn block(text: &str, key: &str) -> Vec<String> {
    let lines = directives(text);
    let start = lines
        .iter()
        .position(|l| l == &format!("{key} {{"))
        .unwrap_or_else(|| panic!("no `{key} {{` block"));
    lines[start + 1..]
        .iter()
        .take_while(|l| *l != "}")
        .cloned()
        .collect()
}

#[test]
fn agent_configs_load_and_differ_only_in_peer() {
    let lb1 = load("drain-agent-lb1.yaml");
    let lb2 = load("drain-agent-lb2.yaml");
    assert_eq!(lb1.peer.to_string(), "198.18.0.12", "lb1's peer is lb2");
    assert_eq!(lb2.peer.to_string(), "198.18.0.11", "lb2's peer is lb1");
    let mut lb1_as_lb2 = lb1.clone();
    lb1_as_lb2.peer = lb2.peer;
    assert_eq!(lb1_as_lb2, lb2);
}

#[test]
fn keepalived_configs_differ_only_in_router_id_and_priority() {
    let a: BTreeSet<String> = directives(&read("keepalived-lb1.conf"))
        .into_iter()
        .collect();
    let b: BTreeSet<String> = directives(&read("keepalived-lb2.conf"))
        .into_iter()
        .collect();
    let only_a: Vec<_> = a.difference(&b).cloned().collect();
    let only_b: Vec<_> = b.difference(&a).cloned().collect();
    assert_eq!(only_a, vec!["priority 150", "router_id lb1"]);
    assert_eq!(only_b, vec!["priority 100", "router_id lb2"]);
}

#[test]
fn keepalived_configs_agree_with_the_agent() {
    for n in [1, 2] {
        let conf = read(&format!("keepalived-lb{n}.conf"));
        let agent = load(&format!("drain-agent-lb{n}.yaml"));
        let ctx = format!("keepalived-lb{n}.conf");

        assert_eq!(
            directive(&conf, "vrrp_notify_fifo"),
            DEFAULT_FIFO_PATH,
            "{ctx}"
        );
        assert!(directives(&conf).contains(&"fifo_write_vrrp_states_on_reload".to_string()));
        assert!(directives(&conf).contains(&"enable_script_security".to_string()));
        assert_eq!(directive(&conf, "script_user"), "root", "{ctx}");
        assert_eq!(
            directive(&conf, "notify"),
            "\"/usr/local/sbin/drain-agent notify\"",
            "{ctx}"
        );
        assert_eq!(
            directive(&conf, "file"),
            format!("\"{DEFAULT_TRACK_FILE_PATH}\""),
            "{ctx}"
        );
        // The track file lives in the agent's state directory (the unit's StateDirectory).
        assert_eq!(
            Path::new(DEFAULT_TRACK_FILE_PATH).parent().unwrap(),
            agent.state_dir.as_path(),
            "{ctx}"
        );
        assert_eq!(directive(&conf, "weight"), "1", "{ctx}");
        assert_eq!(block(&conf, "track_file"), vec!["drain_agent"], "{ctx}");

        // The VRRP side matches what the agent acts on.
        assert_eq!(directive(&conf, "state"), "BACKUP", "{ctx}");
        assert!(
            directives(&conf).contains(&"nopreempt".to_string()),
            "{ctx}"
        );
        assert_eq!(
            directive(&conf, "interface"),
            agent.ingress_interface.to_string(),
            "{ctx}"
        );
        assert_eq!(
            block(&conf, "track_interface"),
            vec![agent.tracked_interface.to_string()],
            "{ctx}"
        );
        let vips: Vec<String> = agent
            .vips
            .iter()
            .map(|v| format!("{}/24 dev {}", v.address, agent.ingress_interface))
            .collect();
        assert_eq!(block(&conf, "virtual_ipaddress"), vips, "{ctx}");
    }
}

/// Runs `keepalived -t -f FILE` in a namespace that has the interfaces the files name, so the
/// check covers them; returns (success, stderr).
fn keepalived_check(ns: &ScratchNetns, file: &Path) -> (bool, String) {
    let out = ns
        .run(&["keepalived", "-t", "-f", file.to_str().unwrap()])
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout),
    )
}

#[test]
#[ignore = "needs root and network namespaces; `make test` runs it"]
fn keepalived_accepts_both_configs() {
    if !require_root("keepalived_accepts_both_configs")
        || !require_tool("keepalived_accepts_both_configs", "keepalived")
    {
        return;
    }
    let ns = ScratchNetns::new("kacfg").unwrap();
    for (dev, peer) in [("eth0", "eth0p"), ("trk0", "trk0p")] {
        ns.run_ok(&[
            "ip", "link", "add", dev, "type", "veth", "peer", "name", peer,
        ])
        .unwrap();
    }
    for name in ["keepalived-lb1.conf", "keepalived-lb2.conf"] {
        let (ok, output) = keepalived_check(&ns, &shipped(name));
        assert!(ok, "{name}: keepalived -t failed:\n{output}");
        assert_eq!(output.trim(), "", "{name}: keepalived -t warned");
    }
    // The check does catch mistakes here (a misspelt keyword, a missing interface).
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.conf");
    fs::write(
        &bad,
        read("keepalived-lb1.conf").replace("nopreempt", "nopreemt"),
    )
    .unwrap();
    let (ok, output) = keepalived_check(&ns, &bad);
    assert!(!ok && output.contains("nopreemt"), "{output}");
    ns.run_ok(&["ip", "link", "del", "trk0"]).unwrap();
    let (ok, output) = keepalived_check(&ns, &shipped("keepalived-lb1.conf"));
    assert!(!ok && output.contains("trk0"), "{output}");
}

/// `systemd-analyze verify` of the unit with ExecStart pointed at the built binary (it checks
/// that the program exists); returns everything it printed.
fn verify_unit(text: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let unit = dir.path().join("drain-agent.service");
    fs::write(
        &unit,
        text.replace(
            "/usr/local/sbin/drain-agent",
            env!("CARGO_BIN_EXE_drain-agent"),
        ),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&unit)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout)
}

#[test]
fn systemd_unit_is_valid_and_confined() {
    let unit = read("drain-agent.service");
    for line in [
        "ExecStart=/usr/local/sbin/drain-agent run --config /etc/drain-agent/drain-agent.yaml",
        "CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_RAW",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "StateDirectory=drain-agent",
        "RuntimeDirectory=drain-agent",
        "RuntimeDirectoryMode=0700",
        "KillMode=mixed",
    ] {
        assert!(
            directives(&unit).iter().any(|l| l == line),
            "missing {line}"
        );
    }
    // /proc/sys must stay writable: the agent sets and restores ARP sysctls.
    assert!(!directives(&unit)
        .iter()
        .any(|l| l.starts_with("ProtectKernelTunables=")));
    // keepalived must never depend on the agent's lifetime.
    assert!(!directives(&unit)
        .iter()
        .any(|l| l.starts_with("Requires=") || l.starts_with("BindsTo=")));
    // The control socket lives in the runtime directory.
    assert!(drain_agent::daemon::control::DEFAULT_SOCKET_PATH.starts_with("/run/drain-agent/"));

    if !require_tool("systemd_unit_is_valid_and_confined", "systemd-analyze") {
        return;
    }
    let output = verify_unit(&unit);
    assert_eq!(output.trim(), "", "systemd-analyze verify complained");
    // It does report problems in this environment.
    let output = verify_unit(&unit.replace("ProtectSystem=strict", "ProtectSystem=strictest"));
    assert!(
        output.contains("ProtectSystem") || output.contains("protect system"),
        "{output}"
    );
}

/// The top files of tests/fixtures/keepalived/ (an include tree counts once, by its top).
const FIXTURES: [&str; 5] = [
    "single.conf",
    "active-active.conf",
    "sync-group.conf",
    "unicast.conf",
    "include/keepalived.conf",
];

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/keepalived")
        .join(name)
}

fn read_conf(path: &Path) -> KeepalivedConf {
    KeepalivedConf::read(path).unwrap_or_else(|e| panic!("{e}"))
}

/// Each instance's (name, state, priority, [(VIP, interface it lives on)]).
type Shape = (
    String,
    Option<InitialState>,
    Option<u8>,
    Vec<(String, String)>,
);

fn shape(conf: &KeepalivedConf) -> Vec<Shape> {
    conf.instances
        .iter()
        .map(|i| {
            let vips = i
                .vips
                .iter()
                .map(|v| {
                    let on = i.vip_interface(v).unwrap_or("?").to_string();
                    (format!("{}/{}", v.address, v.prefix), on)
                })
                .collect();
            (i.name.clone(), i.state, i.priority, vips)
        })
        .collect()
}

fn owned(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

#[test]
fn every_fixture_is_listed() {
    let mut on_disk: Vec<String> = fs::read_dir(fixture(""))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".conf"))
        .collect();
    on_disk.sort();
    let mut listed: Vec<&str> = FIXTURES
        .iter()
        .copied()
        .filter(|f| !f.contains('/'))
        .collect();
    listed.sort();
    assert_eq!(on_disk, listed);
}

#[test]
fn fixtures_read_into_their_model() {
    use InitialState::{Backup, Master};

    let single = read_conf(&fixture("single.conf"));
    assert_eq!(
        shape(&single),
        vec![(
            "VI_1".into(),
            Some(Backup),
            Some(150),
            owned(&[("198.18.0.100/24", "eth0")])
        )]
    );
    let vi1 = &single.instances[0];
    assert_eq!(vi1.track_interfaces[0].name, "trk0");
    let track = single.track_file(&vi1.track_files[0].name).unwrap();
    assert_eq!(track.file, Path::new("/run/drain-agent-fixture.track"));
    assert_eq!(
        single.global.vrrp_notify_fifo.as_ref().unwrap().path,
        Path::new(DEFAULT_FIFO_PATH)
    );
    let ignored: Vec<&str> = single.ignored.iter().map(|i| i.keyword.as_str()).collect();
    assert_eq!(
        ignored,
        vec!["enable_script_security", "script_user", "nopreempt"]
    );

    let aa = read_conf(&fixture("active-active.conf"));
    assert_eq!(
        shape(&aa),
        vec![
            (
                "VI_1".into(),
                Some(Master),
                Some(150),
                owned(&[("198.18.0.100/24", "eth0")])
            ),
            (
                "VI_2".into(),
                Some(Backup),
                Some(100),
                owned(&[("198.18.0.101/24", "eth0")])
            ),
        ]
    );
    for (instance, file) in [("VI_1", "drain_vi_1"), ("VI_2", "drain_vi_2")] {
        let i = aa.instance(instance).unwrap();
        let names: Vec<&str> = i.track_files.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, vec![file], "{instance}");
    }
    assert!(aa.sync_groups.is_empty());

    let sg = read_conf(&fixture("sync-group.conf"));
    let group = sg.sync_group("G_LB").unwrap();
    let members: Vec<&str> = group.instances.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(members, vec!["VI_PUBLIC", "VI_PRIVATE"]);
    assert!(group.notify.notify.is_some());
    assert_eq!(
        shape(&sg),
        vec![
            (
                "VI_PUBLIC".into(),
                Some(Backup),
                Some(150),
                owned(&[
                    ("198.18.0.100/24", "vrrp.61"),
                    ("198.18.0.110/24", "vrrp.61")
                ])
            ),
            (
                "VI_PRIVATE".into(),
                Some(Backup),
                Some(150),
                owned(&[("10.20.0.100/24", "eth1")])
            ),
        ]
    );
    let public = sg.instance("VI_PUBLIC").unwrap();
    assert_eq!(public.interface.as_deref(), Some("eth0"));
    assert_eq!(public.vips[1].label.as_deref(), Some("vrrp.61:1"));
    let private = sg.instance("VI_PRIVATE").unwrap();
    assert_eq!(private.excluded_vips[0].address.to_string(), "fd00:20::100");
    assert_eq!(sg.group_of("VI_PRIVATE").unwrap().name, "G_LB");

    let uc = read_conf(&fixture("unicast.conf"));
    let i = &uc.instances[0];
    assert_eq!(i.unicast_src_ip.unwrap().to_string(), "198.18.0.11");
    let peers: Vec<String> = i
        .unicast_peers
        .iter()
        .map(|p| p.address.to_string())
        .collect();
    assert_eq!(peers, vec!["198.18.0.12"]);
    assert_eq!(i.advert_int, Some(std::time::Duration::from_secs(2)));
    assert!(i.notify.notify.is_none());
    assert_eq!(
        i.notify.master.as_ref().unwrap().command,
        "/bin/true master"
    );
    assert_eq!(i.notify.stop.as_ref().unwrap().command, "/bin/true stop");
    assert!(uc.global.vrrp_notify_fifo.is_none());
    assert!(uc.global.notify_fifo.is_some());
    // vrrp_script, track_script and virtual_server are skipped whole, each listed once.
    let skipped: Vec<(&str, &str)> = uc
        .ignored
        .iter()
        .map(|i| (i.keyword.as_str(), i.within.as_str()))
        .collect();
    assert_eq!(
        skipped,
        vec![
            ("enable_script_security", "global_defs"),
            ("script_user", "global_defs"),
            ("vrrp_script", ""),
            ("track_script", "vrrp_instance \"VI_1\""),
            ("virtual_server", ""),
        ]
    );

    let inc = read_conf(&fixture("include/keepalived.conf"));
    assert_eq!(
        shape(&inc),
        vec![
            (
                "VI_1".into(),
                Some(Backup),
                Some(150),
                owned(&[("198.18.0.100/24", "eth0")])
            ),
            (
                "VI_2".into(),
                Some(Backup),
                Some(100),
                owned(&[("10.20.0.101/24", "eth1")])
            ),
        ]
    );
    let files: Vec<String> = inc
        .files
        .iter()
        .map(|f| {
            f.strip_prefix(fixture("include"))
                .unwrap()
                .display()
                .to_string()
        })
        .collect();
    assert_eq!(
        files,
        vec![
            "keepalived.conf",
            "conf.d/10-vi1.conf",
            "conf.d/vips-vi1.inc",
            "conf.d/20-vi2.conf"
        ]
    );
    let vip = &inc.instances[0].vips[0];
    assert_eq!(
        format!("{}", vip.at),
        format!("{}:2", fixture("include/conf.d/vips-vi1.inc").display())
    );
}

#[test]
fn the_shipped_keepalived_configs_read_and_agree_with_the_agent() {
    for n in [1, 2] {
        let conf = read_conf(&shipped(&format!("keepalived-lb{n}.conf")));
        let agent = load(&format!("drain-agent-lb{n}.yaml"));
        assert_eq!(conf.global.router_id, Some(format!("lb{n}")));
        assert_eq!(
            conf.global.vrrp_notify_fifo.as_ref().unwrap().path,
            Path::new(DEFAULT_FIFO_PATH)
        );
        let [vi] = conf.instances.as_slice() else {
            panic!("one instance expected: {:?}", conf.instances)
        };
        assert_eq!(
            vi.interface.as_deref(),
            Some(agent.ingress_interface.to_string().as_str())
        );
        let tracked: Vec<String> = vi.track_interfaces.iter().map(|t| t.name.clone()).collect();
        assert_eq!(tracked, vec![agent.tracked_interface.to_string()]);
        let vips: Vec<String> = vi.vips.iter().map(|v| v.address.to_string()).collect();
        let agent_vips: Vec<String> = agent.vips.iter().map(|v| v.address.to_string()).collect();
        assert_eq!(vips, agent_vips);
        let track = conf.track_file(&vi.track_files[0].name).unwrap();
        assert_eq!(track.file, Path::new(DEFAULT_TRACK_FILE_PATH));
        assert_eq!(
            vi.notify.notify.as_ref().unwrap().command,
            "/usr/local/sbin/drain-agent notify"
        );
    }
}

#[test]
fn a_refusal_names_the_real_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let top = dir.path().join("keepalived.conf");
    fs::write(&top, "include conf.d/*.conf\n").unwrap();
    fs::create_dir(dir.path().join("conf.d")).unwrap();
    let bad = dir.path().join("conf.d/vi1.conf");
    fs::write(
        &bad,
        "vrrp_instance VI_1 {\n    virtual_router_id 1\n    virtual_ipaddress {\n        198.18.0.300/24\n    }\n}\n",
    )
    .unwrap();
    let e = KeepalivedConf::read(&top).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "{}:4: virtual address \"198.18.0.300/24\": not an IP address",
            bad.display()
        )
    );
    fs::write(&top, "include missing.conf\n").unwrap();
    let e = KeepalivedConf::read(&top).unwrap_err().to_string();
    assert!(
        e.starts_with(&format!("{}:1: include ", top.display())) && e.contains("No such file"),
        "{e}"
    );
}

#[test]
#[ignore = "needs root and keepalived; make test runs it"]
fn keepalived_accepts_every_fixture() {
    if !require_root("keepalived_accepts_every_fixture")
        || !require_tool("keepalived_accepts_every_fixture", "keepalived")
    {
        return;
    }
    let ns = ScratchNetns::new("kafix").unwrap();
    // Every interface the fixtures name; `keepalived -t` refuses a missing one.
    for (dev, peer) in [("eth0", "eth0p"), ("eth1", "eth1p"), ("trk0", "trk0p")] {
        ns.run_ok(&[
            "ip", "link", "add", dev, "type", "veth", "peer", "name", peer,
        ])
        .unwrap();
    }
    for name in FIXTURES {
        // The reader accepts it too.
        read_conf(&fixture(name));
        let (ok, output) = keepalived_check(&ns, &fixture(name));
        assert!(ok, "{name}: keepalived -t failed:\n{output}");
    }
    // Both resolve a nested relative include from the including file's directory (not the
    // working directory): a bad VIP there is refused by both, at the same line of that file.
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("include");
    fs::create_dir_all(tree.join("conf.d")).unwrap();
    for f in [
        "keepalived.conf",
        "conf.d/10-vi1.conf",
        "conf.d/20-vi2.conf",
    ] {
        fs::copy(fixture(&format!("include/{f}")), tree.join(f)).unwrap();
    }
    let inc = tree.join("conf.d/vips-vi1.inc");
    fs::write(
        &inc,
        fs::read_to_string(fixture("include/conf.d/vips-vi1.inc"))
            .unwrap()
            .replace("198.18.0.100/24", "198.18.0.300/24"),
    )
    .unwrap();
    let e = KeepalivedConf::read(&tree.join("keepalived.conf")).unwrap_err();
    assert!(
        e.to_string()
            .starts_with(&format!("{}:2: virtual address", inc.display())),
        "{e}"
    );
    let (ok, output) = keepalived_check(&ns, &tree.join("keepalived.conf"));
    assert!(
        !ok && output.contains("vips-vi1.inc: Line 2") && output.contains("198.18.0.300"),
        "{output}"
    );
}
