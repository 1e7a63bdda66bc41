use super::*;

fn key() -> Key {
    Key::from_bytes(&[7u8; 32])
}

const A: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 11);

/// A well-formed nonce, distinct for each `i`.
fn n(i: u64) -> String {
    format!("{i:032x}")
}

/// A fixed "now" for the tests that drive the clock.
const T: u64 = 1_800_000_000_000;

#[test]
fn a_nonce_that_is_not_16_bytes_of_hex_is_refused_and_not_stored() {
    let mut r = Replay::since(T);
    let bad_nonces = [
        "a".repeat(60 * 1024),
        "ab".to_string(),
        "A".repeat(NONCE_HEX_LEN),
        n(1)[1..].to_string(),
        format!("{}g", &n(1)[1..]),
    ];
    for bad in bad_nonces {
        let line = request("begin", A, T, &bad, &key());
        let e = r.accept_at::<String>(T, &key(), A, &line).unwrap_err();
        assert!(e.to_string().contains("nonce"), "{e}");
        assert!(r.is_empty(), "a refused nonce is not remembered");
    }
    let line = request("begin", A, T, &n(1), &key());
    assert!(r.accept_at::<String>(T, &key(), A, &line).is_ok());
}

#[test]
fn the_memory_is_pruned_on_every_request_even_a_refused_one() {
    let mut r = Replay::since(T);
    for i in 0..10 {
        let line = request("begin", A, T, &n(i), &key());
        r.accept_at::<String>(T, &key(), A, &line).unwrap();
    }
    assert_eq!(r.len(), 10);
    let later = T + 3 * MAX_SKEW.as_millis() as u64;
    assert!(r
        .accept_at::<String>(later, &key(), A, "not even an envelope")
        .is_err());
    assert!(r.is_empty(), "expired nonces dropped by a refused request");
}

#[test]
fn the_memory_is_bounded_by_refusing_not_by_forgetting() {
    let mut r = Replay::since(T);
    for i in 0..MAX_SEEN as u64 {
        let line = request("begin", A, T, &n(i), &key());
        r.accept_at::<String>(T, &key(), A, &line).unwrap();
    }
    let line = request("begin", A, T, &n(MAX_SEEN as u64), &key());
    let e = r.accept_at::<String>(T, &key(), A, &line).unwrap_err();
    assert!(
        e.to_string().contains("refused until older ones expire"),
        "{e}"
    );
    assert_eq!(r.len(), MAX_SEEN);
    // The first is still remembered: its replay is refused, not accepted.
    let first = request("begin", A, T, &n(0), &key());
    let e = r.accept_at::<String>(T, &key(), A, &first).unwrap_err();
    assert!(e.to_string().contains("replayed"), "{e}");
}

#[test]
fn a_request_stamped_before_the_daemon_started_is_refused() {
    // Recorded 5 s before a restart, replayed 1 s after it: inside the skew window, and the
    // new memory has not seen the nonce.
    let recorded = request("end", A, T - 5_000, &n(7), &key());
    let mut before_restart = Replay::since(T - 60_000);
    assert!(before_restart
        .accept_at::<String>(T - 5_000, &key(), A, &recorded)
        .is_ok());
    let mut after_restart = Replay::since(T);
    let e = after_restart
        .accept_at::<String>(T + 1_000, &key(), A, &recorded)
        .unwrap_err();
    assert!(e.to_string().contains("before this agent started"), "{e}");
    // A fresh request after the start is accepted.
    let fresh = request("end", A, T + 1_000, &n(8), &key());
    assert!(after_restart
        .accept_at::<String>(T + 1_000, &key(), A, &fresh)
        .is_ok());
}

fn request(body: &str, from: Ipv4Addr, ts_ms: u64, nonce: &str, k: &Key) -> String {
    k.seal(&RequestPayload {
        from,
        ts_ms,
        nonce: nonce.to_string(),
        body: body.to_string(),
    })
}

#[test]
fn a_request_is_accepted_once_and_only_as_sent() {
    let mut r = Replay::default();
    let line = request("begin", A, unix_ms(), &n(1), &key());
    let (body, nonce): (String, String) = r.accept(&key(), A, &line).unwrap();
    assert_eq!((body.as_str(), nonce.as_str()), ("begin", n(1).as_str()));
    // The same line again is a replay.
    let again = r.accept::<String>(&key(), A, &line).unwrap_err();
    assert!(again.to_string().contains("replayed"), "{again}");
    // A changed byte breaks the MAC.
    let tampered = line.replace("begin", "bogin");
    let e = r.accept::<String>(&key(), A, &tampered).unwrap_err();
    assert!(e.to_string().contains("authentication failed"), "{e}");
    // Another key: refused.
    let other = request("begin", A, unix_ms(), &n(2), &Key::from_bytes(&[8u8; 32]));
    assert!(r.accept::<String>(&key(), A, &other).is_err());
    // Signed by the right key, but as from another node.
    let elsewhere = request(
        "begin",
        Ipv4Addr::new(198, 18, 0, 99),
        unix_ms(),
        &n(3),
        &key(),
    );
    assert!(r.accept::<String>(&key(), A, &elsewhere).is_err());
    // Too old.
    let old = request("begin", A, unix_ms() - 60_000, &n(4), &key());
    let e = r.accept::<String>(&key(), A, &old).unwrap_err();
    assert!(e.to_string().contains("clock"), "{e}");
}

#[test]
fn a_reply_must_carry_the_requests_nonce_under_the_key() {
    let line = reply_line(&key(), "n1".into(), &"ok");
    let p: ReplyPayload<String> = key().open(&line).unwrap();
    assert_eq!((p.nonce.as_str(), p.body.as_str()), ("n1", "ok"));
    assert!(Key::from_bytes(&[1u8; 32])
        .open::<ReplyPayload<String>>(&line)
        .is_err());
}

#[test]
fn a_request_taken_but_not_answered_is_told_apart_from_one_never_delivered() {
    // Nobody listens: the request never left, so nothing can have acted on it.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let to = closed.local_addr().unwrap();
    drop(closed);
    let e = call::<_, String>(&key(), A, to, &"begin", Duration::from_secs(2)).unwrap_err();
    assert!(matches!(e, LinkError::Io { .. }), "{e}");

    // The other side reads the whole request, then goes away without a word (its agent
    // killed after acting on it).
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let to = l.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let (s, _) = l.accept().unwrap();
        read_line(&s).unwrap()
    });
    let e = call::<_, String>(&key(), A, to, &"begin", Duration::from_secs(5)).unwrap_err();
    assert!(matches!(e, LinkError::Unanswered { .. }), "{e}");
    assert!(e.to_string().contains("no reply came"), "{e}");
    assert!(!server.join().unwrap().is_empty());
}

#[test]
fn the_key_file_must_be_private_and_long_enough() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k");
    std::fs::write(&path, [1u8; 32]).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = Key::load(&path).unwrap_err().to_string();
    assert!(e.contains("chmod 600"), "{e}");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert!(Key::load(&path).is_ok());
    std::fs::write(&path, [1u8; 8]).unwrap();
    let e = Key::load(&path).unwrap_err().to_string();
    assert!(e.contains("at least 32"), "{e}");
    let e = Key::load(&dir.path().join("missing"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("missing"), "{e}");
}

#[test]
fn a_symlinked_key_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("real.key");
    std::fs::write(&real, [1u8; 32]).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o600)).unwrap();
    let link = dir.path().join("link.key");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    assert!(Key::load(&real).is_ok());
    let e = Key::load(&link).unwrap_err().to_string();
    assert!(
        e.contains("link.key") && e.contains("symbolic link") && !e.contains('\n'),
        "{e}"
    );
}

#[test]
fn a_key_file_owned_by_another_user_is_refused() {
    if !nix::unistd::geteuid().is_root() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "needs root to chown a key file"
        );
        eprintln!("skipped: needs root to chown a key file");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k");
    std::fs::write(&path, [1u8; 32]).unwrap();
    nix::unistd::chown(&path, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
    let e = Key::load(&path).unwrap_err().to_string();
    assert!(e.contains("/k:") && e.contains("uid 65534"), "{e}");
}

#[test]
fn a_key_path_that_is_not_a_regular_file_is_refused_without_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("k.fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let e = Key::load(&fifo).unwrap_err().to_string();
    assert!(
        e.contains("k.fifo") && e.contains("not a regular file"),
        "{e}"
    );
    let e = Key::load(dir.path()).unwrap_err().to_string();
    assert!(e.contains("not a regular file"), "{e}");
}
