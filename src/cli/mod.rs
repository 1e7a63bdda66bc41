//! Command-line interface: clap derive, one file per subcommand. Parsing only validates; side
//! effects start in each subcommand's `run()`.

use std::path::PathBuf;

use clap::builder::{StyledStr, Styles};
use clap::{Args, Parser, Subcommand};

use crate::ops::exit;

mod accept;
mod check;
mod common;
mod completions;
mod drain;
mod maintenance;
mod man;
mod notify;
mod progress;
mod render;
mod run;
mod status;
#[cfg(test)]
mod tests;
mod undrain;

/// The configuration file used without `-c` or `DRAIN_AGENT_CONFIG`.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/drain-agent/drain-agent.yaml";

/// Take one node of a keepalived/VRRP + HAProxy pair out of service without breaking a connection.
#[derive(Debug, Parser)]
#[command(name = "drain-agent", version, about, long_about = None, after_help = examples(EXAMPLES))]
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
        default_value = DEFAULT_CONFIG_PATH
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

const EXAMPLES: &str = "\
# Validate the configuration and this node's environment; changes nothing
drain-agent check
# Take this node (the MASTER) out of service, then put it back
drain-agent drain
drain-agent undrain
# What the agent has changed on this node, as JSON
drain-agent status --json
# Another configuration file
drain-agent --config /etc/drain-agent/lb1.yaml check";

/// The `Examples:` block that ends a command's `--help` (and becomes the EXAMPLES section of its
/// manual page). `lines` holds `# comment` lines and invocations, one per line; every invocation
/// starts with `drain-agent` and parses (a unit test runs each through the parser).
fn examples(lines: &str) -> StyledStr {
    let header = Styles::styled().get_header().to_owned();
    let mut text = format!("{header}Examples:{header:#}");
    for line in lines.lines() {
        text.push_str("\n  ");
        text.push_str(line);
    }
    text.into()
}

// Every subcommand ends its help with examples (`after_help = examples(...)`), kept in its own
// file next to the arguments they use; `cli::tests` fails for a subcommand without them.
#[derive(Debug, Subcommand)]
enum Command {
    /// Validate the configuration and the environment (binaries, interfaces, kernel features,
    /// peer). Changes nothing.
    #[command(after_help = examples(check::EXAMPLES))]
    Check(check::CheckArgs),
    /// Divert new flows to the peer, wait for this node's connections to drain, fail over, clean
    /// up. Runs in the foreground until done.
    #[command(after_help = examples(drain::EXAMPLES))]
    Drain(drain::DrainArgs),
    /// Remove any divert left behind and bring the tracked interface back up.
    #[command(after_help = examples(undrain::EXAMPLES))]
    Undrain(undrain::UndrainArgs),
    /// Show what the node is doing and since when, what the agent has changed, and the last
    /// drain's result.
    #[command(after_help = examples(status::EXAMPLES))]
    Status(status::StatusArgs),
    /// Maintenance mode: `on --reason TEXT` drains and holds the node out of service, `off`
    /// brings it back, `status` shows who, when and why.
    #[command(after_help = examples(maintenance::EXAMPLES))]
    Maintenance(maintenance::MaintenanceArgs),
    /// On the peer: accept diverted traffic for the VIPs while BACKUP (local route, ARP
    /// suppression). Idempotent; undone by `release`.
    #[command(after_help = examples(accept::ACCEPT_EXAMPLES))]
    Accept(accept::AcceptArgs),
    /// On the peer: undo `accept`.
    #[command(after_help = examples(accept::RELEASE_EXAMPLES))]
    Release(accept::ReleaseArgs),
    /// keepalived's notify hook: TYPE NAME STATE [PRIORITY]. Accepts diverted traffic while
    /// BACKUP, releases it (and clears a stale divert) on MASTER/STOP/DELETED. Idempotent.
    #[command(after_help = examples(notify::EXAMPLES))]
    Notify(notify::NotifyCliArgs),
    /// The daemon: follows keepalived's vrrp_notify_fifo, serves the control socket, and on start
    /// repairs what an interrupted drain left (a divert no drain owns).
    #[command(after_help = examples(run::EXAMPLES))]
    Run(run::RunArgs),
    /// Print the shell completion script for bash, zsh, fish, elvish or PowerShell, generated
    /// from this binary's commands and options.
    #[command(after_help = examples(completions::EXAMPLES))]
    Completions(completions::CompletionsArgs),
    /// Write the manual pages (roff, section 8: this one and one per command) into a directory,
    /// for packaging or a hand install.
    #[command(after_help = examples(man::EXAMPLES))]
    Man(man::ManArgs),
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
        Command::Completions(a) => completions::run(g, a),
        Command::Man(a) => man::run(g, a),
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
