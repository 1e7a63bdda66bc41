//! The daemon's side of a hand-off: it listens on `handoff.port` for the peer's agent (the only
//! address it answers), authenticates each request ([`crate::sys::peerlink`]) and runs the
//! service layer's answer ([`crate::ops::handoff`]); while a return path is in place, one thread
//! supervises it until the peer ends the hand-off, the peer is gone, or its deadline passes.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::config::Config;
use crate::journal::StateDir;
use crate::ops::handoff::{self, PeerReply, PeerRequest, ReturnReport, Returning};
use crate::ops::{Host, OpError};
use crate::sys::peerlink::{self, Key, Replay, MAX_LINE};

/// How long a connected peer may take to send its request, and to take the reply.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections from the peer served at once. The peer's agent makes one at a time; the rest are
/// refused at accept so that any process on the peer cannot hold file descriptors for long.
pub const MAX_CONNECTIONS: usize = 8;
/// Refused connections are logged once per this interval: the first, then a count.
pub const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);
/// How long `End` waits for the supervisor to remove the return path.
pub const END_WAIT: Duration = Duration::from_secs(10);

/// Opens the state directory and a host for one piece of work, with the interrupt counter it
/// should watch: [`crate::wiring::open`] in the daemon, the fake world in unit tests.
pub type Opener =
    dyn Fn(&Config, Arc<AtomicU32>) -> Result<(StateDir, Box<dyn Host>), OpError> + Send + Sync;

/// The return path this daemon supervises, if any.
pub struct Returns {
    cfg: Config,
    /// Raised when the daemon stops: the supervisor returns and leaves the return path (it is
    /// journalled; the next start resumes it).
    stopping: Arc<AtomicU32>,
    running: Mutex<Option<Supervisor>>,
    open: Arc<Opener>,
    /// How long `End` waits for the supervisor ([`END_WAIT`] in the daemon).
    end_wait: Duration,
}

struct Supervisor {
    ended: Arc<AtomicBool>,
    done: mpsc::Receiver<Result<ReturnReport, String>>,
}

impl Returns {
    /// Nothing supervised yet.
    pub fn new(cfg: Config) -> Arc<Returns> {
        Returns::with(cfg, Arc::new(crate::wiring::open), END_WAIT)
    }

    /// Nothing supervised yet; hosts come from `open` and `End` waits `end_wait`.
    fn with(cfg: Config, open: Arc<Opener>, end_wait: Duration) -> Arc<Returns> {
        Arc::new(Returns {
            cfg,
            stopping: Arc::new(AtomicU32::new(0)),
            running: Mutex::new(None),
            open,
            end_wait,
        })
    }

    /// Supervises `r` on a thread of its own, unless a supervisor already runs.
    pub fn start(&self, r: Returning) {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        if running.as_ref().is_some_and(|s| s.done_pending()) {
            return;
        }
        let ended = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel();
        tracing::info!(peer = %r.peer, until = r.until, "hand-off: return path in place, supervising");
        let (cfg, stopping, flag) = (self.cfg.clone(), self.stopping.clone(), ended.clone());
        let open = self.open.clone();
        std::thread::spawn(move || {
            let result = (|| {
                let (state, mut host) = open(&cfg, stopping)?;
                handoff::supervise(&cfg, &state, &mut *host, &r, &|| {
                    flag.load(Ordering::SeqCst)
                })
            })()
            .map_err(|e| e.to_string());
            match &result {
                Ok(report) => tracing::info!("{}", report.summary(r.peer)),
                Err(e) => tracing::warn!("hand-off from {}: {e}", r.peer),
            }
            let _ = tx.send(result);
        });
        *running = Some(Supervisor { ended, done: rx });
    }

    /// Ends the supervised return path (or removes one no supervisor holds) and says how it went.
    fn end(&self) -> PeerReply {
        let sup = self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let result = match sup {
            Some(s) => {
                s.ended.store(true, Ordering::SeqCst);
                match s.done.recv_timeout(self.end_wait) {
                    Ok(r) => r.map(|r| r.summary(self.cfg.peer.get())),
                    Err(_) => Err("the return path's supervisor did not finish in time".into()),
                }
            }
            None => self.remove_unsupervised(),
        };
        match result {
            Ok(detail) => PeerReply::Ok { detail },
            Err(reason) => PeerReply::Refused { reason },
        }
    }

    fn remove_unsupervised(&self) -> Result<String, String> {
        let cfg = &self.cfg;
        let (state, mut host) =
            (self.open)(cfg, Arc::new(AtomicU32::new(0))).map_err(|e| e.to_string())?;
        let recorded = state.return_journal().map_err(|e| e.to_string())?;
        if recorded.is_empty() {
            return Ok("no return path here".into());
        }
        handoff::remove(cfg, &state, &mut *host).map_err(|e| e.to_string())?;
        Ok("return path removed".into())
    }

    /// The daemon stops: supervisors return, leaving their return paths for the next start.
    pub fn stop(&self) {
        self.stopping.fetch_add(1, Ordering::SeqCst);
    }

    /// Resumes supervising the return path the journal records (after a restart).
    pub fn resume(&self) -> Result<Option<Returning>, crate::ops::OpError> {
        let (state, mut host) = crate::wiring::open(&self.cfg, Arc::new(AtomicU32::new(0)))?;
        // A return path journalled but never installed (the daemon was killed in between) is
        // not resumed: supervising it would answer the next `Begin` with a path that is not there.
        let r = handoff::resumable(&self.cfg, &state, &mut *host)?;
        if let Some(r) = &r {
            self.start(r.clone());
        }
        Ok(r)
    }

    /// Answers `req`, which reached this node at `here`.
    fn answer(&self, req: PeerRequest, here: IpAddr) -> PeerReply {
        let cfg = &self.cfg;
        match req {
            PeerRequest::Hello { vips } => handoff::hello(cfg, here, &vips),
            PeerRequest::Begin { vips, until } => {
                let begun =
                    (self.open)(cfg, Arc::new(AtomicU32::new(0))).and_then(|(state, mut host)| {
                        handoff::begin(cfg, &state, &mut *host, &vips, until)
                    });
                match begun {
                    Ok(Ok(r)) => {
                        self.start(r);
                        PeerReply::Ok {
                            detail: "return path installed".into(),
                        }
                    }
                    Ok(Err(reason)) => PeerReply::Refused { reason },
                    Err(e) => PeerReply::Refused {
                        reason: e.to_string(),
                    },
                }
            }
            PeerRequest::End => self.end(),
            PeerRequest::Failback { mode } => {
                let done = (self.open)(cfg, self.stopping.clone()).and_then(|(state, mut host)| {
                    crate::ops::maintenance::fail_back_here(cfg, &state, &mut *host, mode)
                });
                match done {
                    Ok(detail) => PeerReply::Ok { detail },
                    Err(e) => PeerReply::Refused {
                        reason: e.to_string(),
                    },
                }
            }
        }
    }
}

impl Supervisor {
    /// Whether the supervisor thread is still at work (it sends its report when done).
    fn done_pending(&self) -> bool {
        matches!(self.done.try_recv(), Err(mpsc::TryRecvError::Empty))
    }
}

/// Logs refused connections without one line each: the first of an interval at once, the
/// others as one count when the interval is over (a flood must not flood the log).
#[derive(Debug, Default)]
struct Refusals {
    /// Refusals not logged yet.
    pending: u64,
    logged_at: Option<tokio::time::Instant>,
}

impl Refusals {
    fn refused(&mut self, from: SocketAddr, why: &str) {
        let now = tokio::time::Instant::now();
        match self.logged_at {
            Some(at) if now.duration_since(at) < REFUSAL_LOG_INTERVAL => self.pending += 1,
            _ => {
                self.flush();
                tracing::warn!(%from, "peer link: connection refused: {why}");
                self.logged_at = Some(now);
            }
        }
    }

    /// Logs the count of the refusals not logged, if any.
    fn flush(&mut self) {
        if self.pending > 0 {
            tracing::warn!(
                refused = self.pending,
                "peer link: {} more connection(s) refused in the last {} s",
                self.pending,
                REFUSAL_LOG_INTERVAL.as_secs()
            );
            self.pending = 0;
        }
    }
}

/// Serves the peer link on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, key: Key, returns: Arc<Returns>) {
    let peer = returns.cfg.peer.get();
    let replay = Arc::new(Mutex::new(Replay::default()));
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut refusals = Refusals::default();
    let mut tick = tokio::time::interval(REFUSAL_LOG_INTERVAL);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = tick.tick() => {
                refusals.flush();
                continue;
            }
        };
        let (stream, from) = match accepted {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!("peer link accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if from.ip() != IpAddr::V4(peer) {
            refusals.refused(from, "not the peer's address");
            continue;
        }
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            refusals.refused(
                from,
                &format!("{MAX_CONNECTIONS} connections from the peer already open"),
            );
            continue;
        };
        let (key, replay, returns) = (key.clone(), replay.clone(), returns.clone());
        tokio::spawn(async move {
            if let Err(e) = serve_one(stream, peer, &key, &replay, returns).await {
                tracing::warn!(%from, "peer link: {e}");
            }
            drop(slot);
        });
    }
}

async fn serve_one(
    stream: TcpStream,
    peer: Ipv4Addr,
    key: &Key,
    replay: &Mutex<Replay>,
    returns: Arc<Returns>,
) -> Result<(), String> {
    let here = stream.local_addr().map_err(|e| e.to_string())?.ip();
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    tokio::time::timeout(
        REQUEST_TIMEOUT,
        BufReader::new(read.take(MAX_LINE + 1)).read_line(&mut line),
    )
    .await
    .map_err(|_| "no request in time".to_string())?
    .map_err(|e| e.to_string())?;
    let (req, nonce): (PeerRequest, String) = replay
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .accept(key, peer, &line)
        .map_err(|e| e.to_string())?;
    tracing::info!(?req, "peer link request");
    let reply = tokio::task::spawn_blocking(move || returns.answer(req, here))
        .await
        .map_err(|e| e.to_string())?;
    let out = peerlink::reply_line(key, nonce, &reply);
    tokio::time::timeout(REQUEST_TIMEOUT, write.write_all(out.as_bytes()))
        .await
        .map_err(|_| "the peer did not take the reply in time".to_string())?
        .map_err(|e| e.to_string())
}

/// Binds the peer link's port (all addresses; only the peer is answered).
pub async fn bind(port: u16) -> std::io::Result<TcpListener> {
    TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], port))).await
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::path::PathBuf;

    use super::*;
    use crate::ops::fake::{test_config, FakeHost};
    use crate::ops::handoff::VipPorts;

    thread_local! {
        /// A fake host the next open on this thread gets, with the state a test gave it.
        static LENT: RefCell<Option<FakeHost>> = const { RefCell::new(None) };
    }

    fn cfg() -> Config {
        test_config(
            "80, 7",
            "handoff:\n  key_file: /etc/drain-agent/handoff.key\n  deadline: 1h\n",
        )
    }

    /// Opens the state in `dir` and the host lent on this thread (a fresh fake if none).
    fn opener(dir: PathBuf) -> Arc<Opener> {
        Arc::new(move |_, _| {
            let host = LENT
                .with(|l| l.borrow_mut().take())
                .unwrap_or_else(FakeHost::new);
            Ok((StateDir::open(&dir)?, Box::new(host) as Box<dyn Host>))
        })
    }

    #[test]
    fn end_removes_a_return_path_no_supervisor_holds() {
        // The return path was installed, then the daemon restarted and its supervisor never came
        // back (or ended): the peer's End must still remove it.
        let (cfg, dir) = (cfg(), tempfile::tempdir().unwrap());
        let state = StateDir::open(dir.path()).unwrap();
        let mut h = FakeHost::new();
        let until = h.unix_now() + 100;
        handoff::begin(&cfg, &state, &mut h, &VipPorts::of(&cfg), until)
            .unwrap()
            .unwrap();
        assert!(!state.return_journal().unwrap().is_empty());
        let calls = h.calls.clone();
        LENT.with(|l| *l.borrow_mut() = Some(h));
        let returns = Returns::with(cfg, opener(dir.path().into()), END_WAIT);

        assert_eq!(
            returns.end(),
            PeerReply::Ok {
                detail: "return path removed".into()
            }
        );
        assert!(state.return_journal().unwrap().is_empty());
        assert!(
            calls.borrow().iter().any(|c| c == "restore remove"),
            "{:?}",
            calls.borrow()
        );
        // Asked again: nothing is left, and the reply says so.
        assert_eq!(
            returns.end(),
            PeerReply::Ok {
                detail: "no return path here".into()
            }
        );
    }

    #[test]
    fn end_refuses_when_the_supervisor_does_not_finish_in_time() {
        let (cfg, dir) = (cfg(), tempfile::tempdir().unwrap());
        // A supervisor stuck before its first step: its host comes only when released.
        let (release, gate) = mpsc::channel::<()>();
        let gate = Mutex::new(gate);
        let open = opener(dir.path().into());
        let stuck: Arc<Opener> = Arc::new(move |cfg, stop| {
            let _ = gate
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .recv_timeout(Duration::from_secs(30));
            open(cfg, stop)
        });
        let returns = Returns::with(cfg.clone(), stuck, Duration::from_millis(200));
        returns.start(Returning {
            peer: cfg.peer.get(),
            peer_mac: [2, 0, 0, 0, 0, 1],
            until: u64::MAX,
        });

        assert_eq!(
            returns.end(),
            PeerReply::Refused {
                reason: "the return path's supervisor did not finish in time".into()
            }
        );
        release.send(()).unwrap();
    }
}
