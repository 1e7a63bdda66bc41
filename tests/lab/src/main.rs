//! `drain-lab`: a thin dispatcher over the test bench's subcommands.
//!
//! Exit status: 0 success; 1 `load` saw broken flows; 2 usage error or the command could not run.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use drain_lab::{backend, cli, load};

/// The drain-agent test bench.
#[derive(Debug, Parser)]
#[command(name = "drain-lab", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve HTTP (/fast, /slow, /health) and TCP echo until SIGTERM/SIGINT.
    Backend(backend::BackendArgs),
    /// Run a load spec against the VIP and report every broken flow (exit 1 if any).
    Load(load::LoadArgs),
    /// Bring a lab up and keep it until Ctrl-C.
    Up(cli::UpArgs),
    /// Remove namespaces, processes and state left by killed lab runs.
    Cleanup(cli::CleanupArgs),
    /// Run scenarios (each in a fresh lab) and print the comparison table.
    Scenario(cli::ScenarioArgs),
    /// The live demo: every scenario, then the comparison table.
    Demo(cli::ScenarioArgs),
    /// The drain at several rates, several runs each: a table, JSON and plots (`make bench`).
    Bench(drain_lab::bench::BenchArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The lab commands are synchronous orchestration; only backend and load need the runtime.
    let sync = match &cli.command {
        Command::Up(a) => Some(cli::up(a).map(|_| ExitCode::SUCCESS)),
        Command::Cleanup(a) => Some(cli::cleanup(a).map(|_| ExitCode::SUCCESS)),
        Command::Scenario(a) | Command::Demo(a) => {
            Some(cli::scenarios(a).map(|_| ExitCode::SUCCESS))
        }
        Command::Bench(a) => {
            eprintln!(
                "drain-lab bench: about {} min",
                drain_lab::bench::estimate(a).as_secs() / 60
            );
            Some(drain_lab::bench::run(a).map(|_| ExitCode::SUCCESS))
        }
        _ => None,
    };
    if let Some(r) = sync {
        return r.unwrap_or_else(|e| {
            eprintln!("drain-lab: {e:#}");
            ExitCode::from(2)
        });
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("drain-lab: cannot start the tokio runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result: anyhow::Result<ExitCode> = runtime.block_on(async {
        match cli.command {
            Command::Backend(args) => {
                // Thousands of concurrent connections need more than the default 1024 fds.
                if let Err(e) = load::raise_nofile_limit() {
                    eprintln!("drain-lab backend: cannot raise RLIMIT_NOFILE: {e}");
                }
                args.run().await?;
                Ok(ExitCode::SUCCESS)
            }
            Command::Up(_)
            | Command::Cleanup(_)
            | Command::Scenario(_)
            | Command::Demo(_)
            | Command::Bench(_) => {
                unreachable!("handled above")
            }
            Command::Load(args) => {
                let report = args.run().await?;
                Ok(if report.broken() == 0 {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(1)
                })
            }
        }
    });
    result.unwrap_or_else(|e| {
        // Every error variant already carries its cause in its message.
        eprintln!("drain-lab: {e}");
        ExitCode::from(2)
    })
}
