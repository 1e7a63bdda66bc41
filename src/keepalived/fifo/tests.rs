use super::*;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
#[test]
fn fifo_state_lines() {
    assert_eq!(
        FifoLine::parse("INSTANCE \"VI_1\" MASTER 150\n").unwrap(),
        FifoLine::State(NotifyArgs {
            kind: VrrpKind::Instance,
            name: "VI_1".into(),
            state: VrrpState::Master,
            priority: Some(150)
        })
    );
    assert_eq!(
        FifoLine::parse("GROUP \"G 1\" BACKUP 0").unwrap(),
        FifoLine::State(NotifyArgs {
            kind: VrrpKind::Group,
            name: "G 1".into(),
            state: VrrpState::Backup,
            priority: Some(0)
        })
    );
    assert!(matches!(
        FifoLine::parse("INSTANCE \"VI_1\" STOP 100\r\n").unwrap(),
        FifoLine::State(NotifyArgs {
            state: VrrpState::Stop,
            ..
        })
    ));
}

#[test]
fn fifo_priority_events() {
    assert_eq!(
        FifoLine::parse("INSTANCE \"VI_1\" BACKUP_PRIORITY 50").unwrap(),
        FifoLine::Event {
            name: "VI_1".into(),
            event: InstanceEvent::BackupPriority,
            priority: 50
        }
    );
    assert!(matches!(
        FifoLine::parse("INSTANCE \"VI_1\" MASTER_RX_LOWER_PRI 150").unwrap(),
        FifoLine::Event {
            event: InstanceEvent::MasterRxLowerPri,
            ..
        }
    ));
    assert!(FifoLine::parse("GROUP \"G\" MASTER_PRIORITY 0").is_err());
}

#[test]
fn checker_and_unknown_lines_are_other_not_errors() {
    for line in [
        "VS [198.18.0.100]:tcp:80 UP",
        "RS [198.18.0.20]:tcp:8080 [198.18.0.100]:tcp:80 DOWN",
        "",
        "SOMETHING new",
    ] {
        assert!(
            matches!(FifoLine::parse(line), Ok(FifoLine::Other { .. })),
            "{line:?}"
        );
    }
}

#[test]
fn malformed_vrrp_lines_are_errors() {
    for line in [
        "INSTANCE",
        "INSTANCE VI_1 MASTER 100",
        "INSTANCE \"VI_1\" MASTER",
        "INSTANCE \"VI_1\" MASTER 300",
        "INSTANCE \"VI_1\" {UNKNOWN} 100",
        "INSTANCE \"\" MASTER 100",
        "GROUP \"G\"x MASTER 0",
    ] {
        let e = FifoLine::parse(line).unwrap_err();
        assert!(!e.to_string().contains('\n'), "{line:?}");
    }
}

async fn next_within(fifo: &mut NotifyFifo) -> FifoEvent {
    tokio::time::timeout(Duration::from_secs(10), fifo.next())
        .await
        .expect("no FIFO event within 10 s")
        .expect("FIFO error")
}

fn state_line(name: &str, state: VrrpState, priority: u8) -> FifoEvent {
    FifoEvent::Line(FifoLine::State(NotifyArgs {
        kind: VrrpKind::Instance,
        name: name.into(),
        state,
        priority: Some(priority),
    }))
}

/// A writer that behaves like keepalived: opens the FIFO read-write and non-blocking.
fn keepalived_like_writer(path: &Path) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .unwrap()
}

#[tokio::test]
async fn fifo_follower_waits_for_the_fifo_and_survives_writer_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vrrp.fifo");
    let mut fifo = NotifyFifo::new(&path).with_poll_interval(Duration::from_millis(20));

    // The FIFO does not exist yet: no event until it does.
    assert!(
        tokio::time::timeout(Duration::from_millis(100), fifo.next())
            .await
            .is_err()
    );
    nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    assert_eq!(next_within(&mut fifo).await, FifoEvent::Opened);

    // Opened, but no writer yet: nothing (in particular no EOF) arrives.
    assert!(
        tokio::time::timeout(Duration::from_millis(100), fifo.next())
            .await
            .is_err()
    );

    let mut w = keepalived_like_writer(&path);
    w.write_all(b"INSTANCE \"VI_1\" BACKUP 100\nVS [1.2.3.4]:tcp:80 UP\n")
        .unwrap();
    w.write_all(b"INSTANCE \"VI_1\" MAS").unwrap();
    assert_eq!(
        next_within(&mut fifo).await,
        state_line("VI_1", VrrpState::Backup, 100)
    );
    assert!(matches!(
        next_within(&mut fifo).await,
        FifoEvent::Line(FifoLine::Other { .. })
    ));
    w.write_all(b"TER 100\nINSTANCE junk\n").unwrap();
    assert_eq!(
        next_within(&mut fifo).await,
        state_line("VI_1", VrrpState::Master, 100)
    );
    assert!(matches!(
        next_within(&mut fifo).await,
        FifoEvent::Malformed(_)
    ));

    // keepalived stops: it unlinks the FIFO it created, then closes it.
    w.write_all(b"INSTANCE \"VI_1\" STOP 100\n").unwrap();
    fs::remove_file(&path).unwrap();
    drop(w);
    assert_eq!(
        next_within(&mut fifo).await,
        state_line("VI_1", VrrpState::Stop, 100)
    );
    assert_eq!(next_within(&mut fifo).await, FifoEvent::Closed);

    // keepalived starts again and writes before the follower reopened: nothing is lost.
    nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let mut w = keepalived_like_writer(&path);
    w.write_all(b"INSTANCE \"VI_1\" BACKUP 100\n").unwrap();
    assert_eq!(next_within(&mut fifo).await, FifoEvent::Opened);
    assert_eq!(
        next_within(&mut fifo).await,
        state_line("VI_1", VrrpState::Backup, 100)
    );
    drop(w);
    assert_eq!(next_within(&mut fifo).await, FifoEvent::Closed);
}

#[tokio::test]
async fn fifo_follower_switches_to_a_replaced_fifo() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vrrp.fifo");
    nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let mut fifo = NotifyFifo::new(&path).with_poll_interval(Duration::from_millis(20));
    assert_eq!(next_within(&mut fifo).await, FifoEvent::Opened);
    // The FIFO held (no writer ever attached) is replaced by another one.
    fs::remove_file(&path).unwrap();
    nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    assert_eq!(next_within(&mut fifo).await, FifoEvent::Closed);
    assert_eq!(next_within(&mut fifo).await, FifoEvent::Opened);
    let mut w = keepalived_like_writer(&path);
    w.write_all(b"INSTANCE \"VI_1\" FAULT 100\n").unwrap();
    assert_eq!(
        next_within(&mut fifo).await,
        state_line("VI_1", VrrpState::Fault, 100)
    );
}

#[tokio::test]
async fn a_regular_file_is_not_followed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("not-a-fifo");
    fs::write(&path, "INSTANCE \"VI_1\" MASTER 100\n").unwrap();
    let mut fifo = NotifyFifo::new(&path).with_poll_interval(Duration::from_millis(20));
    let e = fifo.next().await.unwrap_err();
    assert!(matches!(e, FifoError::Open { .. }), "{e}");
    assert!(e.to_string().contains("not-a-fifo"), "{e}");
}

#[tokio::test]
async fn overlong_lines_are_dropped_not_buffered() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vrrp.fifo");
    nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let mut fifo = NotifyFifo::new(&path).with_poll_interval(Duration::from_millis(20));
    assert_eq!(next_within(&mut fifo).await, FifoEvent::Opened);
    let mut w = keepalived_like_writer(&path);
    w.write_all(&vec![b'x'; MAX_LINE + 10]).unwrap();
    assert!(matches!(
        next_within(&mut fifo).await,
        FifoEvent::Malformed(_)
    ));
}

fn new_fifo(dir: &Path, mode: u32) -> PathBuf {
    let path = dir.join("vrrp.fifo");
    nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    // mkfifo's mode is cut by the umask: set the one wanted explicitly.
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
    path
}

#[tokio::test]
async fn the_rest_of_an_overlong_line_is_discarded_up_to_its_newline() {
    let dir = tempfile::tempdir().unwrap();
    let path = new_fifo(dir.path(), 0o600);
    let mut fifo = NotifyFifo::new(&path).with_poll_interval(Duration::from_millis(20));
    assert_eq!(next_within(&mut fifo).await, FifoEvent::Opened);
    let mut w = keepalived_like_writer(&path);
    // The reproduction: a 20 KB line that ends like a notice, then a real one.
    let mut long = vec![b'x'; 20 * 1024];
    long.extend_from_slice(b"INSTANCE \"VI_9\" FAULT 100\n");
    w.write_all(&long).unwrap();
    w.write_all(b"INSTANCE \"VI_1\" BACKUP 100\n").unwrap();
    let dropped = next_within(&mut fifo).await;
    assert!(
        matches!(&dropped, FifoEvent::Malformed(e) if e.reason.contains("dropped")),
        "{dropped:?}"
    );
    assert_eq!(
        next_within(&mut fifo).await,
        state_line("VI_1", VrrpState::Backup, 100),
        "the tail of the over-long line must not count as a line"
    );
    // The same with the tail arriving in a later write, and a line far over the limit.
    w.write_all(&vec![b'y'; 3 * MAX_LINE]).unwrap();
    let dropped = next_within(&mut fifo).await;
    assert!(matches!(dropped, FifoEvent::Malformed(_)), "{dropped:?}");
    w.write_all(b"yyy INSTANCE \"VI_9\" MASTER 100\nINSTANCE \"VI_1\" FAULT 100\n")
        .unwrap();
    assert_eq!(
        next_within(&mut fifo).await,
        state_line("VI_1", VrrpState::Fault, 100),
        "one over-long line is reported once, and its tail is not a line"
    );
}

#[tokio::test]
async fn a_fifo_others_could_write_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = new_fifo(dir.path(), 0o622);
    let mut fifo = NotifyFifo::new(&path).with_poll_interval(Duration::from_millis(20));
    let e = fifo.next().await.unwrap_err();
    assert!(matches!(e, FifoError::Unsafe { .. }), "{e}");
    let text = e.to_string();
    assert!(
        text.contains("vrrp.fifo") && text.contains("0622") && !text.contains('\n'),
        "{text}"
    );
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o620)).unwrap();
    let e = fifo.next().await.unwrap_err().to_string();
    assert!(e.contains("its group"), "{e}");
    // Private again: followed.
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(next_within(&mut fifo).await, FifoEvent::Opened);
}

#[tokio::test]
async fn a_fifo_owned_by_another_user_is_refused() {
    if !nix::unistd::geteuid().is_root() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "needs root to chown a FIFO"
        );
        eprintln!("skipped: needs root to chown a FIFO");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = new_fifo(dir.path(), 0o600);
    nix::unistd::chown(&path, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
    let mut fifo = NotifyFifo::new(&path).with_poll_interval(Duration::from_millis(20));
    let e = fifo.next().await.unwrap_err().to_string();
    assert!(
        e.contains("vrrp.fifo") && e.contains("owned by uid 65534"),
        "{e}"
    );
}

#[tokio::test]
async fn a_line_that_is_not_utf8_is_reported_and_the_next_one_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = new_fifo(dir.path(), 0o600);
    let mut fifo = NotifyFifo::new(&path).with_poll_interval(Duration::from_millis(20));
    assert_eq!(next_within(&mut fifo).await, FifoEvent::Opened);
    let mut w = keepalived_like_writer(&path);
    w.write_all(b"INSTANCE \"VI_\xff\" MASTER 100\nINSTANCE \"VI_1\" MASTER 100\n")
        .unwrap();
    let bad = next_within(&mut fifo).await;
    assert!(
        matches!(&bad, FifoEvent::Malformed(e) if e.reason == "not UTF-8" && e.line.contains("VI_")),
        "{bad:?}"
    );
    assert_eq!(
        next_within(&mut fifo).await,
        state_line("VI_1", VrrpState::Master, 100)
    );
}

#[tokio::test]
async fn an_empty_open_and_close_is_followed_by_a_back_off_before_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = new_fifo(dir.path(), 0o600);
    let poll = Duration::from_millis(300);
    let mut fifo = NotifyFifo::new(&path).with_poll_interval(poll);
    assert_eq!(next_within(&mut fifo).await, FifoEvent::Opened);
    // A writer that attaches and leaves without a byte: end-of-file with no data.
    drop(keepalived_like_writer(&path));
    assert_eq!(next_within(&mut fifo).await, FifoEvent::Closed);
    let closed = std::time::Instant::now();
    assert_eq!(next_within(&mut fifo).await, FifoEvent::Opened);
    assert!(
        closed.elapsed() >= poll,
        "reopened {:?} after an empty EOF, before the back-off of {poll:?}",
        closed.elapsed()
    );
    // After an open that delivered data, EOF reopens at once: nothing to back off from.
    let mut w = keepalived_like_writer(&path);
    w.write_all(b"INSTANCE \"VI_1\" BACKUP 100\n").unwrap();
    assert_eq!(
        next_within(&mut fifo).await,
        state_line("VI_1", VrrpState::Backup, 100)
    );
    drop(w);
    assert_eq!(next_within(&mut fifo).await, FifoEvent::Closed);
    assert!(!fifo.backoff);
}

#[tokio::test]
async fn an_unopenable_path_is_retried_only_after_the_poll_interval() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("not-a-fifo");
    fs::write(&path, "").unwrap();
    let poll = Duration::from_millis(300);
    let mut fifo = NotifyFifo::new(&path).with_poll_interval(poll);
    assert!(fifo.next().await.is_err());
    let first = std::time::Instant::now();
    assert!(fifo.next().await.is_err());
    assert!(
        first.elapsed() >= poll,
        "retried after {:?}",
        first.elapsed()
    );
}
