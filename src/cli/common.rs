//! What the subcommands share: loading the config, the process's signal handling, forwarding to
//! the daemon, and output (text or JSON).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};

use serde::Serialize;

use super::{Failure, GlobalOpts};
use crate::config::Config;
use crate::daemon::client::{forward as call_daemon, Forwarded};
use crate::daemon::control::Request;
use crate::ops::event::stamped;
use crate::ops::{exit, Event};

/// Loads and validates the configuration.
pub fn load_config(g: &GlobalOpts) -> Result<Config, Failure> {
    Ok(Config::load(&g.config)?)
}

static INTERRUPTS: OnceLock<Arc<AtomicU32>> = OnceLock::new();

extern "C" fn on_signal(_: libc::c_int) {
    // Only an atomic increment: async-signal-safe.
    if let Some(n) = INTERRUPTS.get() {
        n.fetch_add(1, Ordering::SeqCst);
    }
}

/// SIGINT/SIGTERM/SIGHUP no longer kill the process; they are counted, and the drain rolls back
/// (a second one cuts the rollback grace short).
pub fn install_signal_handlers() -> Arc<AtomicU32> {
    let n = INTERRUPTS
        .get_or_init(|| Arc::new(AtomicU32::new(0)))
        .clone();
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for sig in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        // SAFETY: the handler only touches an atomic.
        unsafe {
            let _ = sigaction(sig, &action);
        }
    }
    n
}

/// A counter that never moves, for commands that are not interruptible mid-way.
pub fn no_interrupts() -> Arc<AtomicU32> {
    Arc::new(AtomicU32::new(0))
}

/// If a daemon serves the control socket, sends it `req`, prints its events and result as a
/// local run would, and returns the command's outcome; `None` when there is no daemon (run here).
/// SIGINT/SIGTERM close the connection, which tells the daemon to roll a drain back.
pub fn forward(g: &GlobalOpts, req: &Request) -> Result<Option<Result<(), Failure>>, Failure> {
    if g.local {
        return Ok(None);
    }
    let out = match req {
        Request::Status => Output::new(g.json),
        _ => Output::live(g.json),
    };
    let forwarded = call_daemon(&g.socket, req, |v| out.forwarded(v))
        .map_err(|e| Failure::new(exit::INTERNAL, format!("control socket: {e}")))?;
    Ok(forwarded.map(|f| match f {
        Forwarded::Interrupted => Err(Failure::new(
            exit::INTERRUPTED,
            "interrupted; the daemon rolls the drain back",
        )),
        Forwarded::Done(o) if o.exit_code == 0 => {
            out.result_value(&o.result, o.result["summary"].as_str().unwrap_or(""));
            Ok(())
        }
        Forwarded::Done(o) => Err(Failure::new(
            o.exit_code,
            o.result["error"]
                .as_str()
                .unwrap_or("the daemon reported an error"),
        )),
    }))
}

/// Output of a command: live events and a final result, as text or JSON lines.
pub struct Output {
    json: bool,
    live: std::cell::RefCell<Option<super::progress::Live>>,
}

impl Drop for Output {
    /// A failure leaves no half-drawn status line behind its error message.
    fn drop(&mut self) {
        self.finish_live();
    }
}

impl Output {
    /// Text unless `json`.
    pub fn new(json: bool) -> Output {
        Output {
            json,
            live: std::cell::RefCell::new(None),
        }
    }

    /// For a command with live events: text lines, JSON lines, or — text on a terminal — the
    /// redrawn status line of [`super::progress::Live`].
    pub fn live(json: bool) -> Output {
        use std::io::IsTerminal;
        let out = Output::new(json);
        if !json && std::io::stderr().is_terminal() {
            *out.live.borrow_mut() = Some(super::progress::Live::new());
        }
        out
    }

    /// Prints one live event.
    pub fn event(&self, e: &Event) {
        if self.json {
            println!(
                "{}",
                serde_json::to_string(&stamped(e)).expect("an event serialises")
            );
        } else if let Some(live) = self.live.borrow_mut().as_mut() {
            live.event(e);
        } else {
            println!("{}", super::render::event_line(e));
        }
    }

    /// Ends the status line, if there is one.
    fn finish_live(&self) {
        if let Some(live) = self.live.borrow_mut().take() {
            live.finish();
        }
    }

    /// Prints an event the daemon sent (JSON as received; text like a local event).
    pub fn forwarded(&self, v: &serde_json::Value) {
        match (self.json, serde_json::from_value::<Event>(v.clone())) {
            (false, Ok(e)) => self.event(&e),
            _ => println!("{v}"),
        }
    }

    /// Prints the final result: `doc` as JSON, or `text`.
    pub fn result(&self, doc: &impl Serialize, text: &str) {
        self.finish_live();
        if self.json {
            println!(
                "{}",
                serde_json::to_string(doc).unwrap_or_else(|_| "null".into())
            );
        } else if !text.is_empty() {
            println!("{text}");
        }
    }

    /// Prints a final result received as JSON.
    pub fn result_value(&self, doc: &serde_json::Value, text: &str) {
        self.result(doc, text)
    }
}
