//! Command-line interface: clap derive, one file per subcommand. Parsing only validates; side
//! effects start in each subcommand's `run()`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::ops::exit;

mod accept;
mod check;
mod common;
mod drain;
mod maintenance;
mod notify;
mod progress;
mod render;
mod run;
mod status;
mod undrain;

/// Take one node of a keepalived/VRRP + HAProxy pair out of service without breaking a connection.
#[derive(Debug, Parser)]
#[command(name = "drain-agent", version, about, long_about = None)]
pub struct Cli {
    #[command(flatten)]
    global: GlobalOpts,
    #[command(subcommand)]
    command: Command,
}

/// Options every subcommand takes.
#[derive(Debug, Args)]
pub struct GlobalOpts {
    /// Configuration file.
    #[arg(
        short,
        long,
        global = true,
        env = "DRAIN_AGENT_CONFIG",
        default_value = "/etc/drain-agent/drain-agent.yaml"
    )]
    pub config: PathBuf,
    /// Machine-readable output: JSON lines while running, one JSON result at the end.
    #[arg(long, global = true)]
    pub json: bool,
    /// Log filter (tracing EnvFilter syntax; RUST_LOG overrides).
    #[arg(long, global = true, default_value = "warn")]
    pub log_level: String,
    /// The daemon's control socket: `drain`, `undrain` and `status` go through the daemon when
    /// one serves it, and run here otherwise.
    #[arg(long, global = true, env = "DRAIN_AGENT_SOCKET", default_value = crate::daemon::control::DEFAULT_SOCKET_PATH)]
    pub socket: PathBuf,
    /// Run here even if a daemon serves the control socket.
    #[arg(long, global = true)]
    pub local: bool,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = crate::observability::LogFormat::Text)]
    pub log_format: crate::observability::LogFormat,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate the configuration and the environment (binaries, interfaces, kernel features,
    /// peer). Changes nothing.
    Check(check::CheckArgs),
    /// Divert new flows to the peer, wait for this node's connections to drain, fail over, clean
    /// up. Runs in the foreground until done.
    Drain(drain::DrainArgs),
    /// Remove any divert left behind and bring the tracked interface back up.
    Undrain(undrain::UndrainArgs),
    /// Show what the node is doing and since when, what the agent has changed, and the last
    /// drain's result.
    Status(status::StatusArgs),
    /// Maintenance mode: `on --reason TEXT` drains and holds the node out of service, `off`
    /// brings it back, `status` shows who, when and why.
    Maintenance(maintenance::MaintenanceArgs),
    /// On the peer: accept diverted traffic for the VIPs while BACKUP (local route, ARP
    /// suppression). Idempotent; undone by `release`.
    Accept(accept::AcceptArgs),
    /// On the peer: undo `accept`.
    Release(accept::ReleaseArgs),
    /// keepalived's notify hook: TYPE NAME STATE [PRIORITY]. Accepts diverted traffic while
    /// BACKUP, releases it (and clears a stale divert) on MASTER/STOP/DELETED. Idempotent.
    Notify(notify::NotifyCliArgs),
    /// The daemon: follows keepalived's vrrp_notify_fifo, serves the control socket, and on start
    /// repairs what an interrupted drain left (a divert no drain owns).
    Run(run::RunArgs),
}

/// A failed command: one line and its exit code.
#[derive(Debug)]
pub struct Failure {
    /// Documented exit code.
    pub code: u8,
    /// One line naming the cause.
    pub message: String,
    /// The command already printed its own result document (`check`'s report), so `--json`
    /// adds no `failed` line.
    pub reported: bool,
}

/// The last line `--json` prints when a command fails: the exit code and the one-line error
/// (also printed to stderr), so automation reads every outcome from stdout.
#[derive(Debug, serde::Serialize)]
#[serde(tag = "result", rename = "failed")]
pub struct FailedDoc<'a> {
    /// The documented exit code.
    pub exit_code: u8,
    /// The one-line error.
    pub error: &'a str,
}

impl Failure {
    /// A failure with an explicit code.
    pub fn new(code: u8, message: impl Into<String>) -> Failure {
        Failure {
            code,
            message: message.into(),
            reported: false,
        }
    }
}

impl From<crate::ops::OpError> for Failure {
    fn from(e: crate::ops::OpError) -> Failure {
        Failure::new(e.exit_code(), e.to_string())
    }
}

impl From<crate::ops::HostError> for Failure {
    fn from(e: crate::ops::HostError) -> Failure {
        crate::ops::OpError::Host(e).into()
    }
}

impl From<crate::journal::JournalError> for Failure {
    fn from(e: crate::journal::JournalError) -> Failure {
        crate::ops::OpError::Journal(e).into()
    }
}

impl From<crate::config::ConfigError> for Failure {
    fn from(e: crate::config::ConfigError) -> Failure {
        Failure::new(exit::CONFIG, e.to_string())
    }
}

/// Runs the parsed command.
pub fn run(cli: Cli) -> Result<(), Failure> {
    crate::observability::init(&cli.global.log_level, cli.global.log_format);
    let g = &cli.global;
    let outcome = match &cli.command {
        Command::Check(a) => check::run(g, a),
        Command::Drain(a) => drain::run(g, a),
        Command::Undrain(a) => undrain::run(g, a),
        Command::Status(a) => status::run(g, a),
        Command::Maintenance(a) => maintenance::run(g, a),
        Command::Accept(a) => accept::run_accept(g, a),
        Command::Release(a) => accept::run_release(g, a),
        Command::Notify(a) => notify::run(g, a),
        Command::Run(a) => run::run(g, a),
    };
    if let Err(f) = &outcome {
        if g.json && !f.reported {
            common::Output::new(true).result(
                &FailedDoc {
                    exit_code: f.code,
                    error: &f.message,
                },
                "",
            );
        }
    }
    outcome
}
