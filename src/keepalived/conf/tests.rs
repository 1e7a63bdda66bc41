//! Every construct the reader understands and every refusal, over an in-memory file tree.

use std::collections::BTreeMap;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::lexer::glob_match;
use super::*;

/// Files in memory: path -> (bytes, kind). Directories exist implicitly as parents.
#[derive(Default)]
struct MemFiles(BTreeMap<PathBuf, (Vec<u8>, Kind)>);

impl MemFiles {
    fn with(mut self, path: &str, text: &str) -> Self {
        self.0.insert(
            PathBuf::from(path),
            (text.as_bytes().to_vec(), Kind::Config),
        );
        self
    }

    fn executable(mut self, path: &str, text: &str) -> Self {
        self.0
            .insert(PathBuf::from(path), (text.as_bytes().to_vec(), Kind::Other));
        self
    }

    fn read(&self, top: &str) -> Result<KeepalivedConf, ConfError> {
        KeepalivedConf::read_from(self, Path::new(top))
    }
}

/// `path` with `.` and `..` resolved lexically (the map has no symlinks).
fn normal(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            c => out.push(c),
        }
    }
    out
}

impl Files for MemFiles {
    fn identity(&self, path: &Path) -> PathBuf {
        normal(path)
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        self.0
            .get(&normal(path))
            .map(|(b, _)| b.clone())
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
    }

    fn kind(&self, path: &Path) -> io::Result<Kind> {
        let path = &normal(path);
        if let Some((_, k)) = self.0.get(path) {
            return Ok(*k);
        }
        if self.0.keys().any(|p| p.starts_with(path)) {
            return Ok(Kind::Other);
        }
        Err(io::Error::from(io::ErrorKind::NotFound))
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let dir = &normal(dir);
        let mut names: Vec<String> = self
            .0
            .keys()
            .filter_map(|p| p.strip_prefix(dir).ok())
            .filter_map(|rest| rest.components().next())
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        names.dedup();
        if names.is_empty() {
            return Err(io::Error::from(io::ErrorKind::NotFound));
        }
        Ok(names)
    }
}

fn conf(text: &str) -> KeepalivedConf {
    MemFiles::default()
        .with("/k/keepalived.conf", text)
        .read("/k/keepalived.conf")
        .unwrap_or_else(|e| panic!("{e}"))
}

fn refused(text: &str) -> ConfError {
    match MemFiles::default()
        .with("/k/keepalived.conf", text)
        .read("/k/keepalived.conf")
    {
        Ok(c) => panic!("accepted: {c:?}"),
        Err(e) => e,
    }
}

/// The message of a refusal, checked to be one line.
fn message(e: &ConfError) -> String {
    let m = e.to_string();
    assert!(!m.contains('\n'), "{m}");
    m
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

const FULL: &str = r#"
global_defs {
    router_id lb1            # a comment
    vrrp_notify_fifo /run/vrrp.fifo
    notify_fifo "/run/all.fifo" root root
    enable_script_security
}
track_file drain_agent {
    file "/var/lib/drain-agent/keepalived.track"
    weight 1
}
vrrp_track_file other {
    file /tmp/other.track
    weight -2 reverse
    init_file 0 overwrite
}
vrrp_instance VI_1 {
    state MASTER
    interface eth0
    virtual_router_id 51
    priority 150
    advert_int 0.5
    nopreempt
    virtual_ipaddress {
        198.18.0.100/24 dev eth0 label eth0:vip
        198.18.1.100 dev eth1 brd + scope global no_track
        2001:db8::1/64
    }
    virtual_ipaddress_excluded {
        198.18.2.1/32 use_vmac
    }
    track_interface {
        trk0
        eth1 weight -10 reverse
    }
    track_file {
        drain_agent
        other weight 3
    }
    unicast_src_ip 198.18.0.11
    unicast_peer {
        198.18.0.12
        198.18.0.13 min_ttl 1 max_ttl 64
    }
    use_vmac vrrp.51 02:00:5e:00:01:33
    notify "/usr/local/sbin/drain-agent notify"
    notify_master /bin/true root
    notify_backup "/bin/backup arg" root wheel
    notify_fault /bin/fault
    notify_stop /bin/stop
}
vrrp_sync_group G1 {
    group {
        VI_1
    }
    notify "/usr/local/sbin/drain-agent notify"
}
virtual_server 198.18.0.100 80 {
    real_server 10.0.0.1 80 {
        TCP_CHECK { connect_timeout 3 }
    }
}
"#;

#[test]
fn reads_every_modelled_construct() {
    let c = conf(FULL);
    assert_eq!(c.files, vec![PathBuf::from("/k/keepalived.conf")]);
    assert_eq!(c.global.router_id.as_deref(), Some("lb1"));
    let fifo = c.global.vrrp_notify_fifo.as_ref().unwrap();
    assert_eq!(fifo.path, PathBuf::from("/run/vrrp.fifo"));
    assert_eq!(fifo.at.line, 4);
    assert_eq!(
        c.global.notify_fifo.as_ref().unwrap().path,
        PathBuf::from("/run/all.fifo")
    );

    let tf = c.track_file("drain_agent").unwrap();
    assert_eq!(
        tf.file,
        PathBuf::from("/var/lib/drain-agent/keepalived.track")
    );
    assert_eq!((tf.weight, tf.reverse), (Some(1), false));
    let other = c.track_file("other").unwrap();
    assert_eq!((other.weight, other.reverse), (Some(-2), true));

    let i = c.instance("VI_1").unwrap();
    assert_eq!(i.at.line, 17);
    assert_eq!(i.state, Some(InitialState::Master));
    assert_eq!(i.interface.as_deref(), Some("eth0"));
    assert_eq!(i.virtual_router_id, 51);
    assert_eq!(i.priority, Some(150));
    assert_eq!(i.advert_int, Some(Duration::from_millis(500)));

    let v: Vec<_> = i
        .vips
        .iter()
        .map(|v| (v.address, v.prefix, v.dev.as_deref(), v.label.as_deref()))
        .collect();
    assert_eq!(
        v,
        vec![
            (ip("198.18.0.100"), 24, Some("eth0"), Some("eth0:vip")),
            (ip("198.18.1.100"), 32, Some("eth1"), None),
            (ip("2001:db8::1"), 64, None, None),
        ]
    );
    assert_eq!(i.vips[1].at.line, 26);
    assert_eq!(i.excluded_vips.len(), 1);
    assert!(i.excluded_vips[0].use_vmac);

    let t: Vec<_> = i
        .track_interfaces
        .iter()
        .map(|t| (t.name.as_str(), t.weight, t.reverse))
        .collect();
    assert_eq!(t, vec![("trk0", None, false), ("eth1", Some(-10), true)]);
    let t: Vec<_> = i
        .track_files
        .iter()
        .map(|t| (t.name.as_str(), t.weight))
        .collect();
    assert_eq!(t, vec![("drain_agent", None), ("other", Some(3))]);

    assert_eq!(i.unicast_src_ip, Some(ip("198.18.0.11")));
    let peers: Vec<_> = i.unicast_peers.iter().map(|p| p.address).collect();
    assert_eq!(peers, vec![ip("198.18.0.12"), ip("198.18.0.13")]);
    let vmac = i.use_vmac.as_ref().unwrap();
    assert_eq!(vmac.name.as_deref(), Some("vrrp.51"));
    assert_eq!(vmac.mac.as_deref(), Some("02:00:5e:00:01:33"));
    // With use_vmac, a VIP without dev lives on the macvlan.
    assert_eq!(i.vip_interface(&i.vips[2]), Some("vrrp.51"));
    assert_eq!(i.vip_interface(&i.vips[1]), Some("eth1"));

    let n = &i.notify;
    assert_eq!(
        n.notify.as_ref().unwrap().command,
        "/usr/local/sbin/drain-agent notify"
    );
    let m = n.master.as_ref().unwrap();
    assert_eq!(
        (m.command.as_str(), m.user.as_deref()),
        ("/bin/true", Some("root"))
    );
    let b = n.backup.as_ref().unwrap();
    assert_eq!(
        (b.command.as_str(), b.user.as_deref(), b.group.as_deref()),
        ("/bin/backup arg", Some("root"), Some("wheel"))
    );
    assert_eq!(n.fault.as_ref().unwrap().command, "/bin/fault");
    assert_eq!(n.stop.as_ref().unwrap().command, "/bin/stop");

    let g = c.sync_group("G1").unwrap();
    assert_eq!(g.instances.len(), 1);
    assert_eq!(g.instances[0].name, "VI_1");
    assert!(g.notify.notify.is_some());
    assert_eq!(c.group_of("VI_1").map(|g| g.name.as_str()), Some("G1"));

    // What the reader skipped, with its place; a skipped block's contents are not listed.
    let ignored: Vec<_> = c
        .ignored
        .iter()
        .map(|i| (i.at.line, i.keyword.as_str(), i.within.as_str()))
        .collect();
    assert_eq!(
        ignored,
        vec![
            (6, "enable_script_security", "global_defs"),
            (15, "init_file", "track_file \"other\""),
            (23, "nopreempt", "vrrp_instance \"VI_1\""),
            (58, "virtual_server", ""),
        ]
    );
}

#[test]
fn defaults_are_left_unset() {
    let c = conf("vrrp_instance V { virtual_router_id 7 }");
    let i = &c.instances[0];
    assert_eq!(i.virtual_router_id, 7);
    assert_eq!((i.state, i.priority, i.advert_int), (None, None, None));
    assert!(i.interface.is_none() && i.vips.is_empty() && i.use_vmac.is_none());
    assert_eq!(c.global, GlobalDefs::default());
}

#[test]
fn braces_split_lines_wherever_they_stand() {
    let c = conf(
        "vrrp_instance V{virtual_router_id 1\ninterface eth0}\nvrrp_instance W\n{\n virtual_router_id 2 }\n\
         vrrp_instance X {\n virtual_router_id 3\n track_interface { a\nb weight 2 }\n virtual_ipaddress {\n 10.0.0.1 }}",
    );
    assert_eq!(c.instances.len(), 3);
    assert_eq!(c.instances[0].interface.as_deref(), Some("eth0"));
    // The `{` may stand on the next line.
    assert_eq!(c.instances[1].virtual_router_id, 2);
    let names: Vec<_> = c.instances[2]
        .track_interfaces
        .iter()
        .map(|t| t.name.as_str())
        .collect();
    assert_eq!(names, vec!["a", "b"]);
    assert_eq!(c.instances[2].vips[0].address, ip("10.0.0.1"));
    assert!(c.ignored.is_empty());
}

#[test]
fn comments_quotes_and_escapes() {
    let c = conf(
        "! a comment\n  # another\nglobal_defs { router_id \"a # b ! c\" ! trailing\n}\n\
         vrrp_instance \"V 1\" {\nvirtual_router_id 1 # c\n notify_master /bin/a\\#b\n}",
    );
    assert_eq!(c.global.router_id.as_deref(), Some("a # b ! c"));
    let i = c.instance("V 1").unwrap();
    // Outside quotes, `\#` is the character itself.
    assert_eq!(i.notify.master.as_ref().unwrap().command, "/bin/a#b");
}

#[test]
fn a_brace_in_quotes_is_a_word() {
    let c = conf("global_defs {\n router_id \"{x}\"\n}");
    assert_eq!(c.global.router_id.as_deref(), Some("{x}"));
}

#[test]
fn includes_are_relative_to_the_including_file_and_globs_sorted() {
    let files = MemFiles::default()
        .with(
            "/k/keepalived.conf",
            "include conf.d/*.conf\ninclude /etc/other/global.conf\n",
        )
        .with(
            "/k/conf.d/20-b.conf",
            "vrrp_instance B { virtual_router_id 2 }",
        )
        .with(
            "/k/conf.d/10-a.conf",
            "vrrp_instance A {\n virtual_router_id 1\n include ../vips/a.inc\n}",
        )
        .with(
            "/k/conf.d/.hidden.conf",
            "vrrp_instance H { virtual_router_id 3 }",
        )
        .with("/k/conf.d/30-c.conf.bak", "garbage {")
        .executable(
            "/k/conf.d/40-x.conf",
            "vrrp_instance X { virtual_router_id 4 }",
        )
        .with("/k/vips/a.inc", "virtual_ipaddress {\n 10.0.0.1/24\n}")
        .with("/etc/other/global.conf", "global_defs { router_id r }");
    let c = files.read("/k/keepalived.conf").unwrap();
    let names: Vec<_> = c.instances.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, vec!["A", "B"]);
    // A path is shown as written, relative to the including file's directory.
    assert_eq!(
        c.instances[0].vips[0].at.path,
        PathBuf::from("/k/conf.d/../vips/a.inc")
    );
    assert_eq!(c.instances[0].vips[0].at.line, 2);
    assert_eq!(c.global.router_id.as_deref(), Some("r"));
    let files: Vec<_> = c.files.iter().map(|p| p.display().to_string()).collect();
    assert_eq!(
        files,
        vec![
            "/k/keepalived.conf",
            "/k/conf.d/10-a.conf",
            "/k/conf.d/../vips/a.inc",
            "/k/conf.d/20-b.conf",
            "/etc/other/global.conf"
        ]
    );
}

#[test]
fn a_pattern_may_match_nothing_and_include_variants_are_includes() {
    let c = MemFiles::default()
        .with(
            "/k/keepalived.conf",
            "include /nowhere/*.conf\nincluder    inc?.conf\n",
        )
        .with("/k/inc1.conf", "vrrp_instance A { virtual_router_id 1 }")
        .read("/k/keepalived.conf")
        .unwrap();
    assert_eq!(c.instances.len(), 1);
}

#[test]
fn glob_matches_one_component_like_glob3() {
    assert!(glob_match("*.conf", "a.conf"));
    assert!(glob_match("*", "x"));
    assert!(glob_match("a?c", "abc"));
    assert!(glob_match("*a*b*", "xxaxxbxx"));
    assert!(!glob_match("*.conf", "a.conf.bak"));
    assert!(!glob_match("a?c", "ac"));
    assert!(!glob_match("*.conf", ".a.conf"));
    assert!(glob_match(".*.conf", ".a.conf"));
}

/// Each refusal: the message, whole, naming file and line.
#[test]
fn refusals_name_the_file_and_line() {
    let cases: &[(&str, &str)] = &[
        ("$VIP=10.0.0.1", "/k/keepalived.conf:1: parameter definition \"VIP\" is not supported: write the values themselves"),
        ("global_defs {\n router_id $HOST\n}", "/k/keepalived.conf:2: parameter substitution \"$HOST\" is not supported: write the value itself"),
        ("global_defs {\n router_id ${_RANDOM}\n}", "/k/keepalived.conf:2: parameter substitution \"${_RANDOM}\" is not supported: write the value itself"),
        ("@lb1 global_defs { router_id a }", "/k/keepalived.conf:1: conditional line (@config_id) is not supported: its meaning depends on keepalived's --config-id"),
        ("global_defs {\n@^lb1 router_id a\n}", "/k/keepalived.conf:2: conditional line (@config_id) is not supported: its meaning depends on keepalived's --config-id"),
        ("~SEQ(N, 1, 3) vrrp_instance VI_$N { }", "/k/keepalived.conf:1: sequence (~SEQ / ~LST) is not supported: write the lines out"),
        ("global_defs {\n router_id a\n", "/k/keepalived.conf:1: block \"global_defs\" is never closed (missing '}')"),
        ("global_defs {\n}\n}", "/k/keepalived.conf:3: '}' closes no block"),
        ("{\n}", "/k/keepalived.conf:1: '{' with no keyword before it"),
        ("global_defs {\n router_id \"a\n}", "/k/keepalived.conf:2: unterminated quote"),
        ("global_defs {\n router_id a \\\n}", "/k/keepalived.conf:2: a line ending in '\\' is not supported: keepalived continues only a $NAME= definition that way"),
        ("global_defs {\n router_id \"a\\\"b\"\n}", "/k/keepalived.conf:2: an escaped quote (\\\") is not supported: keepalived's parser reads it two ways"),
        ("vrrp_instance V {\n virtual_router_id 1\n notify \"/bin/sh -c 'x'\"\n}", "/k/keepalived.conf:3: a ' or \\ in notify is not supported: keepalived re-reads script lines with its own quoting; write the command in double quotes without them"),
        ("vrrp_instance V {\n virtual_router_id 1\n virtual_ipaddress {\n  10.0.0.300/24\n }\n}", "/k/keepalived.conf:4: virtual address \"10.0.0.300/24\": not an IP address"),
        ("vrrp_instance V {\n virtual_router_id 1\n virtual_ipaddress {\n  10.0.0.1/33\n }\n}", "/k/keepalived.conf:4: virtual address \"10.0.0.1/33\": prefix length is not a number from 0 to 32"),
        ("vrrp_instance V {\n virtual_router_id 1\n virtual_ipaddress {\n  10.0.0.1 device eth0\n }\n}", "/k/keepalived.conf:4: virtual address \"10.0.0.1\": unknown option \"device\""),
        ("vrrp_instance V {\n virtual_router_id 1\n virtual_ipaddress {\n  10.0.0.1 dev\n }\n}", "/k/keepalived.conf:4: virtual address \"10.0.0.1\": dev needs a value"),
        ("vrrp_instance V {\n virtual_router_id 1\n}\nvrrp_sync_group G {\n group {\n  V\n  W\n }\n}", "/k/keepalived.conf:7: vrrp_sync_group \"G\": no vrrp_instance \"W\""),
        ("vrrp_instance V { virtual_router_id 1 }\nvrrp_sync_group G { group { V } }\nvrrp_sync_group H { group { V } }", "/k/keepalived.conf:3: vrrp_instance \"V\" is already in vrrp_sync_group \"G\""),
        ("vrrp_instance V { virtual_router_id 1 }\nvrrp_instance V { virtual_router_id 2 }", "/k/keepalived.conf:2: vrrp_instance \"V\" again (first at /k/keepalived.conf:1)"),
        ("vrrp_instance V {\n virtual_router_id 1\n priority 100\n priority 150\n}", "/k/keepalived.conf:4: priority in vrrp_instance \"V\" again (first at /k/keepalived.conf:3)"),
        ("vrrp_instance V {\n interface eth0\n}", "/k/keepalived.conf:1: vrrp_instance \"V\" has no virtual_router_id"),
        ("track_file t {\n weight 1\n}", "/k/keepalived.conf:1: track_file \"t\" has no file"),
        ("vrrp_instance V {\n virtual_router_id 1\n track_file {\n  nope\n }\n}", "/k/keepalived.conf:4: track_file \"nope\" is not defined (no track_file \"nope\" { file ... } block)"),
        ("vrrp_instance V {\n virtual_router_id 0\n}", "/k/keepalived.conf:2: virtual_router_id: \"0\" is not a number from 1 to 255"),
        ("vrrp_instance V {\n virtual_router_id 1\n state master\n}", "/k/keepalived.conf:3: state: \"master\" is not MASTER or BACKUP"),
        ("vrrp_instance V {\n virtual_router_id 1\n advert_int 0\n}", "/k/keepalived.conf:3: advert_int: \"0\" is not a positive number of seconds"),
        ("vrrp_instance V {\n virtual_router_id 1\n interface averyveryverylongname\n}", "/k/keepalived.conf:3: interface: \"averyveryverylongname\" is not an interface name (1-15 characters, no '/' or ':')"),
        ("vrrp_instance V {\n virtual_router_id 1\n track_interface {\n  eth0 weight 300\n }\n}", "/k/keepalived.conf:4: weight: \"300\" is not a number from -254 to 254"),
        ("vrrp_instance V {\n virtual_router_id 1\n track_interface {\n  eth0 wieght 3\n }\n}", "/k/keepalived.conf:4: track_interface: \"wieght\" is not `weight N [reverse]`"),
        ("vrrp_instance V {\n virtual_router_id 1\n unicast_peer {\n  peer1\n }\n}", "/k/keepalived.conf:4: unicast_peer: \"peer1\" is not an IP address"),
        ("vrrp_instance V {\n virtual_router_id 1 2\n}", "/k/keepalived.conf:2: virtual_router_id takes one value"),
        ("vrrp_instance {\n virtual_router_id 1\n}", "/k/keepalived.conf:1: vrrp_instance takes one name before its block"),
        ("vrrp_instance V\n", "/k/keepalived.conf:1: vrrp_instance needs a '{ ... }' block"),
        ("vrrp_instance V {\n virtual_router_id 1\n priority { 3 }\n}", "/k/keepalived.conf:3: priority takes no block"),
        ("vrrp_instance V {\n virtual_router_id 1\n virtual_ipaddress 10.0.0.1\n}", "/k/keepalived.conf:3: virtual_ipaddress takes no value before its block"),
    ];
    for (text, want) in cases {
        assert_eq!(&message(&refused(text)), want, "for {text:?}");
    }
}

#[test]
fn blocks_nest_at_most_max_depth() {
    let ok = format!("{}{}", "a {\n".repeat(MAX_DEPTH), "}\n".repeat(MAX_DEPTH));
    conf(&ok);
    let deep = format!(
        "{}{}",
        "a {\n".repeat(MAX_DEPTH + 1),
        "}\n".repeat(MAX_DEPTH + 1)
    );
    let e = refused(&deep);
    assert_eq!(
        message(&e),
        format!("/k/keepalived.conf:17: block nested deeper than {MAX_DEPTH} levels")
    );
}

#[test]
fn a_long_line_and_bad_bytes_are_refused() {
    let long = format!("global_defs {{\n router_id {}\n}}", "x".repeat(1100));
    assert!(matches!(refused(&long), ConfError::LineTooLong { at, .. } if at.line == 2));
    let e = BTreeMap::from([(
        PathBuf::from("/k/a.conf"),
        (b"# ok\n\xff\n".to_vec(), Kind::Config),
    )]);
    let e = MemFiles(e).read("/k/a.conf").unwrap_err();
    assert_eq!(message(&e), "/k/a.conf:2: the file is not UTF-8 text");
}

#[test]
fn include_refusals() {
    let read = |files: MemFiles| message(&files.read("/k/keepalived.conf").unwrap_err());
    let top = |text: &str| MemFiles::default().with("/k/keepalived.conf", text);
    assert_eq!(
        read(top("\n include missing.conf")),
        "/k/keepalived.conf:2: include \"/k/missing.conf\": entity not found"
    );
    assert_eq!(
        read(top("include conf.d/[ab].conf")),
        "/k/keepalived.conf:1: include \"conf.d/[ab].conf\": only '*' and '?' are supported in include patterns (no [...], {...} or \\)"
    );
    assert_eq!(
        read(top("include */x.conf")),
        "/k/keepalived.conf:1: include \"*/x.conf\": a wildcard is supported in the file name only, not in a directory"
    );
    assert_eq!(
        read(top("include x.conf").executable("/k/x.conf", "")),
        "/k/keepalived.conf:1: include \"/k/x.conf\": not a regular non-executable file (keepalived skips it)"
    );
    assert_eq!(
        read(
            top("include a.conf")
                .with("/k/a.conf", "include ./sub/b.conf")
                .with("/k/sub/b.conf", "include ../a.conf")
        ),
        "/k/sub/b.conf:1: include \"/k/sub/../a.conf\": include cycle (/k/a.conf -> /k/sub/b.conf -> /k/sub/../a.conf)"
    );
    assert_eq!(
        read(top("include keepalived.conf")),
        "/k/keepalived.conf:1: include \"/k/keepalived.conf\": include cycle (/k/keepalived.conf -> /k/keepalived.conf)"
    );
    // A chain of distinct files deeper than the limit.
    let mut files = top("include f1.conf");
    for n in 1..=MAX_DEPTH {
        files = files.with(
            &format!("/k/f{n}.conf"),
            &format!("include f{}.conf", n + 1),
        );
    }
    assert_eq!(
        read(files),
        format!(
            "/k/f{}.conf:1: include nested deeper than {MAX_DEPTH} levels",
            MAX_DEPTH - 1
        )
    );
    let e = MemFiles::default().read("/k/none.conf").unwrap_err();
    assert_eq!(
        message(&e),
        "/k/none.conf:0: cannot read the file: entity not found"
    );
}

#[test]
fn text_beyond_ascii_is_read_by_characters() {
    // Found by tests/parsers_prop.rs: a multi-byte character before a `$`.
    let e = refused("global_defs {\n router_id \u{1f0aa}$x\n}");
    assert!(matches!(e, ConfError::Substitution { .. }), "{e}");
    let c = conf("global_defs {\n router_id \u{fc5}\u{13ee}$ \n}");
    assert_eq!(c.global.router_id.as_deref(), Some("\u{fc5}\u{13ee}$"));
}

#[test]
fn a_brace_after_a_keyword_opens_a_new_line_for_specials() {
    // keepalived reads what follows a brace as a line of its own: `@` there is a condition.
    let e = refused("global_defs { @lb1 router_id a }");
    assert!(matches!(e, ConfError::Conditional { .. }), "{e}");
}
