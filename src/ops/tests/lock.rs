//! The state directory's lock, waited for the way `notify` and the peer side wait for it.

use std::sync::mpsc;
use std::time::Duration;

use crate::journal::{JournalError, StateDir};

/// Upper bound for the waits below; never reached when `lock_wait` works.
const PATIENCE: Duration = Duration::from_secs(20);

/// Runs `lock_wait(wait)` on another thread (flock locks conflict between open files, so this
/// process's own `lock()` is "another holder" to it); the result arrives on the channel.
fn lock_wait_in_thread(state: &StateDir, wait: Duration) -> mpsc::Receiver<Result<(), String>> {
    let (tx, rx) = mpsc::channel();
    let state = state.clone();
    std::thread::spawn(move || {
        let got = match state.lock_wait(wait) {
            Ok(_lock) => Ok(()),
            Err(JournalError::Busy { holder, .. }) => Err(holder),
            Err(e) => panic!("lock_wait: {e}"),
        };
        let _ = tx.send(got);
    });
    rx
}

#[test]
fn lock_wait_gives_up_after_its_wait_naming_the_holder() {
    let dir = tempfile::tempdir().unwrap();
    let state = StateDir::open(dir.path()).unwrap();
    let held = state.lock().unwrap();
    let got = lock_wait_in_thread(&state, Duration::from_millis(200))
        .recv_timeout(PATIENCE)
        .expect("lock_wait never gave up");
    assert_eq!(got, Err(std::process::id().to_string()));
    assert_eq!(state.lock_holder(), Some(std::process::id().to_string()));
    drop(held);
    assert_eq!(state.lock_holder(), None);
}

#[test]
fn lock_wait_takes_the_lock_once_its_holder_lets_go() {
    let dir = tempfile::tempdir().unwrap();
    let state = StateDir::open(dir.path()).unwrap();
    let held = state.lock().unwrap();
    let got = lock_wait_in_thread(&state, PATIENCE);
    // Still held: lock_wait must neither take it nor give up yet.
    assert_eq!(
        got.recv_timeout(Duration::from_millis(300)),
        Err(mpsc::RecvTimeoutError::Timeout)
    );
    drop(held);
    assert_eq!(
        got.recv_timeout(PATIENCE)
            .expect("lock_wait never returned"),
        Ok(())
    );
}
