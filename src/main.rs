//! The `drain-agent` binary: parse, run, map the outcome to a documented exit code.

use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::Parser;

fn main() -> ExitCode {
    let cli = match drain_agent::cli::Cli::try_parse() {
        Ok(cli) => cli,
        // --help and --version are not errors: clap prints them to stdout.
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("drain-agent: error: {}", usage_error_line(&e));
            return ExitCode::from(drain_agent::ops::exit::USAGE);
        }
    };
    match drain_agent::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("drain-agent: error: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

/// clap's usage errors span several lines (error, tips, usage, "For more information"); callers
/// such as keepalived scripts and Ansible read one line per error, like every other failure here.
/// Keeps the error sentence and clap's tips, drops the usage block.
fn usage_error_line(e: &clap::Error) -> String {
    if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
        // clap renders the whole help text here; its first line is the about text, not a cause.
        return "no subcommand given; see `drain-agent --help`".to_string();
    }
    let text = e.render().to_string();
    let mut parts: Vec<&str> = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with("Usage:") || line.starts_with("For more information") {
            break;
        }
        if !line.is_empty() {
            parts.push(line.strip_prefix("error: ").unwrap_or(line));
        }
    }
    format!("{}; see --help", parts.join("; "))
}
