use super::*;

#[test]
fn record_persists_before_returning_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("j.json");
    let mut j = Journal::open(&p).unwrap();
    j.record(Change::Divert {
        prefix: "DRAIN".into(),
        drop_mangle_table: true,
    })
    .unwrap();
    j.record(Change::Sysctl {
        key: "net/ipv4/conf/eth0/arp_ignore".into(),
        previous: "0".into(),
    })
    .unwrap();
    j.record(Change::Divert {
        prefix: "DRAIN".into(),
        drop_mangle_table: true,
    })
    .unwrap();
    let j2 = Journal::open(&p).unwrap();
    assert_eq!(j2.entries().len(), 2);
    assert_eq!(
        j2.entries()[0].change,
        Change::Divert {
            prefix: "DRAIN".into(),
            drop_mangle_table: true
        }
    );
    let mut j2 = j2;
    j2.forget(&Change::Divert {
        prefix: "DRAIN".into(),
        drop_mangle_table: true,
    })
    .unwrap();
    assert_eq!(Journal::open(&p).unwrap().entries().len(), 1);
}

#[test]
fn a_corrupt_journal_is_an_error_not_an_empty_one() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("j.json");
    fs::write(&p, b"{not json").unwrap();
    let e = Journal::open(&p).unwrap_err().to_string();
    assert!(
        e.contains("j.json") && e.contains("corrupt") && e.contains("drain-agent undrain"),
        "{e}"
    );
}

#[test]
fn a_zero_byte_journal_is_corrupt_not_empty() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("drain-journal.json");
    fs::write(&p, b"").unwrap();
    let e = Journal::open(&p).unwrap_err();
    assert!(matches!(e, JournalError::Corrupt { .. }), "{e}");
    let e = e.to_string();
    assert!(
        e.contains("drain-journal.json") && e.contains("0 bytes"),
        "{e}"
    );
    assert!(!e.contains('\n'), "{e}");
    // What the agent writes for "nothing recorded" is not that.
    let other = dir.path().join("other.json");
    let mut j = Journal::open(&other).unwrap();
    j.record(Change::LinkDown {
        ifname: "trk0".into(),
    })
    .unwrap();
    j.forget_all().unwrap();
    assert!(!fs::read(&other).unwrap().is_empty());
    assert!(Journal::open(&other).unwrap().is_empty());
}

#[test]
fn the_state_directory_is_created_private_whatever_the_umask() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("var/lib/drain-agent");
    // The umask a host's service usually has; the directory must still not be 0755.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
    let opened = StateDir::open(&path);
    nix::sys::stat::umask(old);
    opened.unwrap();
    assert_eq!(
        fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o700
    );
    // An existing directory others may read is tightened.
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    StateDir::open(&path).unwrap();
    assert_eq!(
        fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o700
    );
}

#[test]
fn a_state_directory_owned_by_another_user_is_refused() {
    if !nix::unistd::geteuid().is_root() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "needs root to chown a directory"
        );
        eprintln!("skipped: needs root to chown a directory");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state");
    fs::create_dir(&path).unwrap();
    nix::unistd::chown(&path, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
    let e = StateDir::open(&path).unwrap_err();
    assert!(matches!(e, JournalError::Unsafe { .. }), "{e}");
    let e = e.to_string();
    assert!(
        e.contains(&path.display().to_string()) && e.contains("uid 65534"),
        "{e}"
    );
}

#[test]
fn second_lock_is_refused_with_the_holder_pid() {
    let dir = tempfile::tempdir().unwrap();
    let sd = StateDir::open(dir.path()).unwrap();
    let _l = sd.lock().unwrap();
    // flock locks belong to the open file description: a second open in the same process
    // conflicts just like another process would.
    match sd.lock() {
        Err(JournalError::Busy { holder, .. }) => {
            assert_eq!(holder, std::process::id().to_string())
        }
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("second lock granted"),
    }
    assert_eq!(sd.lock_holder(), Some(std::process::id().to_string()));
}

#[test]
fn a_state_dir_that_is_a_file_is_reported_as_not_a_directory() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("state");
    fs::write(&file, b"").unwrap();
    let e = StateDir::open(&file).unwrap_err().to_string();
    assert!(
        e.contains(&file.display().to_string()) && e.contains("Not a directory"),
        "{e}"
    );
}

#[test]
fn lock_is_released_on_drop() {
    let dir = tempfile::tempdir().unwrap();
    let sd = StateDir::open(dir.path()).unwrap();
    drop(sd.lock().unwrap());
    assert!(sd.lock().is_ok());
    assert_eq!(sd.lock_holder(), None);
}

#[test]
fn taking_the_lock_sweeps_the_temporary_file_a_killed_write_left() {
    let dir = tempfile::tempdir().unwrap();
    let sd = StateDir::open(dir.path()).unwrap();
    let left = dir.path().join(".drain-journal.json.0123456789abcdef.tmp");
    fs::write(&left, b"[{\"half\": ").unwrap();
    let f = fs::File::options().write(true).open(&left).unwrap();
    f.set_modified(std::time::SystemTime::now() - STALE_TEMPORARY * 2)
        .unwrap();
    let _lock = sd.lock().unwrap();
    assert!(!left.exists());
    assert!(sd.drain_journal().unwrap().is_empty());
}
