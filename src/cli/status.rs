//! `drain-agent status`: what the agent has changed on this node, read live from the host and
//! from the journals.

use clap::Args;
use serde_json::json;

use super::common::{self, Output};
use super::{Failure, GlobalOpts};
use crate::ops::Host;

/// Arguments of `status`.
#[derive(Debug, Args)]
pub struct StatusArgs {}

/// Runs `status`: through the daemon when one serves the control socket, else here.
pub fn run(g: &GlobalOpts, _a: &StatusArgs) -> Result<(), Failure> {
    if let Some(done) =
        common::forward(g, &crate::control::Request::new(crate::control::Op::Status))?
    {
        return done;
    }
    let cfg = common::load_config(g)?;
    let (doc, text) = document(&cfg)?;
    Output::new(g.json).result(&doc, &text);
    Ok(())
}

/// The status document and its text form, for the CLI and the daemon.
pub fn document(cfg: &crate::config::Config) -> Result<(serde_json::Value, String), Failure> {
    let cfg = cfg.clone();
    let state = common::state_dir(&cfg)?;
    let mut host = common::system_host(&cfg, common::no_interrupts())?;
    let prefix = format!("{}-", cfg.firewall.chain_prefix.as_str());
    let save = host
        .firewall()
        .save_mangle()
        .map_err(crate::ops::HostError::from)?;
    let rules: Vec<&str> = save.lines().filter(|l| l.contains(&prefix)).collect();
    let sets: Vec<String> = host
        .firewall()
        .ipset_names()
        .map_err(crate::ops::HostError::from)?
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
        .collect();
    let plan = common::plan(&cfg);
    let divert = divert_state(&mut host, &plan);
    let tracked_up = host.link_up(cfg.tracked_interface.as_str())?;
    let mut vips = Vec::new();
    for v in cfg.vips.iter() {
        vips.push(json!({"address": v.address.get().to_string(), "local": host.vip_local(v.address.get())?}));
    }
    let drain_j = state.drain_journal()?;
    let accept_j = state.accept_journal()?;
    let holder = state.lock_holder();
    let last: serde_json::Value = std::fs::read(state.last_run_path())
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(serde_json::Value::Null);
    let mode = if holder.is_some() {
        "busy"
    } else if !rules.is_empty() || !sets.is_empty() {
        "divert-installed"
    } else if !tracked_up {
        "drained"
    } else {
        "in-service"
    };
    let doc = json!({
        "mode": mode,
        "lock_holder_pid": holder,
        "tracked_interface": {"name": cfg.tracked_interface.as_str(), "up": tracked_up},
        "vips": vips,
        "divert_rules": rules,
        "divert_sets": sets,
        "divert": divert,
        "drain_journal": drain_j.entries(),
        "accept_journal": accept_j.entries(),
        "last_drain": last,
    });
    let mut text = format!(
        "mode: {mode}\ntracked interface {}: {}\n",
        cfg.tracked_interface.as_str(),
        if tracked_up { "up" } else { "DOWN" }
    );
    for v in &vips {
        text.push_str(&format!(
            "VIP {}: {}\n",
            v["address"].as_str().unwrap_or(""),
            if v["local"].as_bool() == Some(true) {
                "held here"
            } else {
                "not here"
            }
        ));
    }
    if let Some(pid) = &holder {
        text.push_str(&format!("operation in progress: pid {pid}\n"));
    }
    text.push_str(&format!(
        "divert: {} rule line(s), {} set(s)\n",
        rules.len(),
        sets.len()
    ));
    if !divert.is_null() {
        text.push_str(&format!(
            "divert {}: {} new flow(s) diverted, {} recorded (capacity {} per port, {:.1} MiB), {} SYN(s) unrecorded\n",
            divert["phase"].as_str().unwrap_or("incomplete"),
            divert["diverted_flows"],
            divert["recorded_flows"],
            divert["capacity_per_port"],
            divert["record_bytes"].as_f64().unwrap_or(0.0) / f64::from(1 << 20),
            divert["unrecorded_syns"],
        ));
    }
    text.push_str(&format!(
        "recorded changes: {} (drain), {} (accept)\n",
        drain_j.entries().len(),
        accept_j.entries().len()
    ));
    if !last.is_null() {
        text.push_str(&format!(
            "last drain: {}",
            last["result"].as_str().unwrap_or("?")
        ));
        if let Some(e) = last["error"].as_str() {
            text.push_str(&format!(" ({e})"));
        }
    }
    let text = text.trim_end().to_string();
    Ok((doc, text))
}

/// The divert as the kernel has it now: its phase (installed, sealed, withdrawn; `null` if its
/// rules match none), the record's fill and the counters. `Null` when no divert is there.
fn divert_state(
    host: &mut crate::sys::host::SystemHost,
    plan: &crate::plan::DivertPlan,
) -> serde_json::Value {
    let fw = host.firewall();
    let Ok(saved) = fw.save_mangle() else {
        return serde_json::Value::Null;
    };
    if plan.existing_chains(&saved).is_empty() {
        return serde_json::Value::Null;
    }
    let stats = fw
        .ipset_list_terse()
        .map(|t| plan.record_stats(&t))
        .unwrap_or_default();
    let counters = crate::ops::divert::counters(fw, plan).unwrap_or_default();
    json!({
        "phase": plan.observed_phase(&saved),
        "diverted_flows": counters.diverted_syns,
        "diverted_packets": counters.diverted_packets,
        "recorded_flows": stats.entries(),
        "record_members": stats.members(),
        "record_bytes": stats.bytes(),
        "capacity_per_port": plan.capacity(),
        "unrecorded_syns": counters.unrecorded_syns(),
        "sealed_drops": counters.sealed_drops,
    })
}
