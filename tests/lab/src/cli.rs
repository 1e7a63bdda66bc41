//! The lab's own subcommands: bring a lab up and hold it, remove leftovers, run scenarios, and
//! the demo that compares ways of taking a node out of service.

use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;

use crate::scenario::{self, default_load, drain_agent, AgentOptions, Event, ScenarioResult};
use crate::topology::{cleanup_leftovers, Lab, LabOptions};

/// `drain-lab up`: builds a lab and keeps it until SIGINT/SIGTERM, printing how to reach it.
#[derive(Debug, Args)]
pub struct UpArgs {
    /// keepalived `nopreempt` on both nodes.
    #[arg(long)]
    pub nopreempt: bool,
    /// Run drain-agent's daemon on both nodes (following keepalived's FIFO).
    #[arg(long)]
    pub daemon: bool,
    /// Wire keepalived's notify to `drain-agent notify`.
    #[arg(long)]
    pub agent_notify: bool,
}

/// `drain-lab cleanup`: removes namespaces, processes and state of killed lab runs.
#[derive(Debug, Args)]
pub struct CleanupArgs {
    /// Remove every lab, also ones whose creating process still runs.
    #[arg(long)]
    pub all: bool,
}

/// `drain-lab scenario NAME` / `drain-lab demo`.
#[derive(Debug, Args)]
pub struct ScenarioArgs {
    /// Scenarios to run: steady, plain-failover, seed-rules, drain-agent (default: all, in that order).
    pub names: Vec<String>,
    /// Write every result as JSON to this directory.
    #[arg(long)]
    pub out: Option<std::path::PathBuf>,
    /// The load: `default` (500 short/s, 10 echo sessions/s of 3 s, 8 s, event at 2.5 s) or
    /// `scale` (3000 short/s, 50 echo sessions/s of 11 s, 26 s, event at 11 s, with a steady
    /// baseline before it).
    #[arg(long, default_value = "default")]
    pub load: String,
    /// Short-request rate (per second), overriding the load's.
    #[arg(long)]
    pub short_rate: Option<f64>,
    /// Echo-session rate (per second), overriding the load's.
    #[arg(long)]
    pub echo_rate: Option<f64>,
    /// Milliseconds between two chunks of an echo session, overriding the load's.
    #[arg(long)]
    pub echo_interval_ms: Option<u64>,
    /// Fail over through keepalived's track file instead of the tracked interface.
    #[arg(long)]
    pub track_file: bool,
}

/// Blocks SIGINT/SIGTERM in this thread (and the threads it spawns later) and returns a thread
/// that waits for one and then removes every lab of this process before exiting. Labs are named
/// after the pid, so the handler needs no shared state.
pub fn teardown_on_signal() {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGHUP);
    if set.thread_block().is_err() {
        return;
    }
    std::thread::spawn(move || {
        if let Ok(sig) = set.wait() {
            eprintln!("drain-lab: {sig:?}: tearing the lab down");
            let me = std::process::id() as i32;
            let _ = crate::topology::cleanup_pid(me);
            std::process::exit(130);
        }
    });
}

/// Runs `up`.
pub fn up(a: &UpArgs) -> Result<()> {
    teardown_on_signal();
    let lab = Lab::up(&LabOptions {
        nopreempt: a.nopreempt,
        daemon: a.daemon,
        agent_notify: a.agent_notify,
        ..LabOptions::default()
    })?;
    for role in ["cl", "lb1", "lb2", "be", "sw"] {
        println!("{role}: ip netns exec {} ...", lab.ns(role));
    }
    println!("state, configs and logs: {}", lab.dir.display());
    println!(
        "lab is up (VIP {} on lb1); Ctrl-C tears it down",
        crate::topology::addr::VIP
    );
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// Runs `cleanup`.
pub fn cleanup(a: &CleanupArgs) -> Result<()> {
    let removed = cleanup_leftovers(a.all)?;
    for r in &removed {
        println!("removed {r}");
    }
    println!("{} leftover(s) removed", removed.len());
    Ok(())
}

/// Runs the named scenarios (each in a fresh lab) and prints each result and the comparison table.
pub fn scenarios(a: &ScenarioArgs) -> Result<Vec<ScenarioResult>> {
    teardown_on_signal();
    let names: Vec<String> = if a.names.is_empty() {
        ["steady", "plain-failover", "seed-rules", "drain-agent"]
            .map(String::from)
            .to_vec()
    } else {
        a.names.clone()
    };
    let (mut load, event_at) = match a.load.as_str() {
        "default" => (default_load(), Duration::from_millis(2500)),
        "scale" => (scenario::scale_load(), scenario::SCALE_EVENT_AT),
        other => anyhow::bail!("unknown load {other} (default, scale)"),
    };
    if let Some(r) = a.short_rate {
        load.short.rate_per_s = r;
    }
    if let Some(r) = a.echo_rate {
        load.echo.sessions_per_s = r;
    }
    if let Some(i) = a.echo_interval_ms {
        load.echo.interval_ms = i;
    }
    let mut results = Vec::new();
    for name in &names {
        let event = match name.as_str() {
            "steady" => Event::None,
            "plain-failover" => Event::PlainFailover,
            "seed-rules" => Event::SeedRules,
            "drain-agent" => drain_agent(AgentOptions::default()),
            other => anyhow::bail!(
                "unknown scenario {other} (steady, plain-failover, seed-rules, drain-agent)"
            ),
        };
        eprintln!(
            "== scenario {name}: lab up, {} s of mixed load, event at {:.1} s",
            load.duration_ms / 1000,
            event_at.as_secs_f64()
        );
        let r = scenario::run(
            name,
            &LabOptions {
                track_file_trigger: a.track_file,
                ..LabOptions::default()
            },
            &load,
            event_at,
            event,
        )
        .with_context(|| format!("scenario {name}"))?;
        eprintln!("{}", r.load.table());
        for (t, note) in &r.event.timeline {
            eprintln!("  {:>8.0} ms  {note}", t);
        }
        if let Some(dir) = &a.out {
            std::fs::create_dir_all(dir)?;
            std::fs::write(
                dir.join(format!("{name}.json")),
                serde_json::to_vec_pretty(&r)?,
            )?;
        }
        println!(
            "{}",
            serde_json::to_string(
                &serde_json::json!({"scenario": r.scenario, "flows": r.flows, "broken": r.broken, "broken_by_class": r.broken_by_class, "worst_setup_ms": r.worst_setup_ms, "p99_short_ms": r.p99_short_ms, "drain_ms": r.event.drain_ms, "failover_ms": r.event.failover_ms})
            )?
        );
        results.push(r);
    }
    println!("\n{}", scenario::comparison_table(&results));
    Ok(results)
}
