//! Helpers shared by the loopback tests of the backend and the load generator.

#![allow(dead_code)]

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};

use drain_lab::backend::Backend;
use drain_lab::load::{EchoSpec, FlowClass, KeepaliveSpec, LoadSpec, ShortSpec, SlowSpec};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A backend on 127.0.0.1 ephemeral ports; stops when dropped.
pub struct TestBackend {
    pub http: SocketAddr,
    pub echo: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    pub task: Option<JoinHandle<()>>,
}

impl TestBackend {
    pub fn start() -> Self {
        let any = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        let backend = Backend::bind(Some(any), Some(any)).expect("bind the test backend");
        let http = backend.http_addr().expect("http listener");
        let echo = backend.echo_addr().expect("echo listener");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(backend.serve_until(async move {
            let _ = stopped.await;
        }));
        Self {
            http,
            echo,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Stops the backend and waits until it no longer serves.
    pub async fn stop(mut self) {
        let _ = self.stop.take().map(|s| s.send(()));
        if let Some(task) = self.task.take() {
            task.await.expect("backend task");
        }
    }
}

impl Drop for TestBackend {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// Serves every connection to a fresh 127.0.0.1 port with `handler` (for misbehaving servers).
pub async fn serve_with<F, Fut>(handler: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .expect("bind a test server");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(handler(stream));
        }
    });
    addr
}

/// A spec on 127.0.0.1 with every class disabled and short deadlines, so a misbehaving server
/// is judged within a second or two.
pub fn quiet_spec(http_port: u16, echo_port: u16) -> LoadSpec {
    LoadSpec {
        target: Ipv4Addr::LOCALHOST,
        http_port,
        echo_port,
        duration_ms: 100,
        short: ShortSpec {
            rate_per_s: 0.0,
            timeout_ms: 1000,
        },
        keepalive: KeepaliveSpec {
            sessions_per_s: 0.0,
            interval_ms: 50,
            session_ms: 300,
        },
        echo: EchoSpec {
            sessions_per_s: 0.0,
            session_ms: 300,
            chunk_bytes: 64,
            interval_ms: 50,
        },
        slow: SlowSpec {
            downloads_per_s: 0.0,
            ms: 200,
            bytes: 10_000,
        },
        connect_timeout_ms: 1000,
        flow_slack_ms: 1000,
        baseline_until_ms: None,
    }
}

/// Sets the rate of `class` so that exactly `n` flows start within the spec's 100 ms.
pub fn with_flows(mut spec: LoadSpec, class: FlowClass, n: u32) -> LoadSpec {
    let rate = f64::from(n) * 1000.0 / spec.duration_ms as f64;
    match class {
        FlowClass::Short => spec.short.rate_per_s = rate,
        FlowClass::Keepalive => spec.keepalive.sessions_per_s = rate,
        FlowClass::Echo => spec.echo.sessions_per_s = rate,
        FlowClass::Slow => spec.slow.downloads_per_s = rate,
    }
    assert_eq!(spec.scheduled_count(class), u64::from(n));
    spec
}
