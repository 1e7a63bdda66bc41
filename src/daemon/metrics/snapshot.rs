//! The node's state as last read, shared by the scrapes so that reading it costs the same
//! whatever the scrape rate.

use std::sync::atomic::AtomicU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::ops::status::Status;

/// How old the snapshot of the node's state may be before a scrape refreshes it.
pub const REFRESH_EVERY: Duration = Duration::from_millis(1000);

/// One reading of the node: when, at which
/// [`Metrics::generation`](super::Metrics::generation), and what.
type Cached = (Instant, u64, Option<Arc<Status>>);

/// The node's state as last read for the metrics, shared by every scrape.
pub struct Snapshot<F> {
    read: Arc<F>,
    every: Duration,
    /// When it was read, the [`Metrics::generation`](super::Metrics::generation) it was read at,
    /// and what was read.
    cached: Mutex<Option<Cached>>,
    /// Held by the one refresh in progress.
    refreshing: tokio::sync::Mutex<()>,
    /// How many times the state was read (for tests and the log).
    reads: std::sync::atomic::AtomicU64,
}

impl<F> Snapshot<F>
where
    F: Fn() -> Option<Status> + Send + Sync + 'static,
{
    /// A snapshot that calls `read` (on the blocking pool) at most once per `every`.
    pub fn new(every: Duration, read: F) -> Snapshot<F> {
        Snapshot {
            read: Arc::new(read),
            every,
            cached: Mutex::new(None),
            refreshing: tokio::sync::Mutex::new(()),
            reads: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn cached(&self) -> Option<Cached> {
        self.cached
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The node's state, at most `every` old and read at `generation`: refreshed by the first
    /// caller that finds it stale; callers that come while that refresh runs get the previous
    /// snapshot at once if it was read at `generation` (a scrape never waits for the node, except
    /// the very first and the first after a drain of the daemon's ended: the snapshot from
    /// before that end would show the drain still running).
    pub async fn get(&self, generation: u64) -> Option<Arc<Status>> {
        let usable = |c: &Option<Cached>| c.as_ref().is_some_and(|(_, g, _)| *g == generation);
        let fresh = |c: &Option<Cached>| {
            usable(c)
                && c.as_ref()
                    .is_some_and(|(at, _, _)| at.elapsed() < self.every)
        };
        let cached = self.cached();
        if fresh(&cached) {
            return cached.and_then(|(_, _, s)| s);
        }
        let _refresh = match self.refreshing.try_lock() {
            Ok(guard) => guard,
            Err(_) if usable(&cached) => return cached.and_then(|(_, _, s)| s),
            Err(_) => self.refreshing.lock().await,
        };
        // Another caller may have refreshed while this one waited for the lock.
        let cached = self.cached();
        if fresh(&cached) {
            return cached.and_then(|(_, _, s)| s);
        }
        self.reads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let read = self.read.clone();
        let status = tokio::task::spawn_blocking(move || read())
            .await
            .ok()
            .flatten()
            .map(Arc::new);
        // Stamped with the generation it was asked for: a drain that ended during the read
        // bumped it, so the next scrape reads again.
        *self.cached.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((Instant::now(), generation, status.clone()));
        status
    }

    /// How many times the node's state was read.
    pub fn reads(&self) -> u64 {
        self.reads.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Reads the node's state as `status` does; `None` (logged) when it cannot be read.
pub(super) fn read_status(cfg: &Config) -> Option<Status> {
    let read = crate::wiring::open(cfg, Arc::new(AtomicU32::new(0)))
        .and_then(|(state, mut host)| crate::ops::status::status(cfg, &state, &mut *host));
    read.map_err(|e| tracing::warn!("metrics: cannot read the node's state: {e}"))
        .ok()
}
