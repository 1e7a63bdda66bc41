//! The lab's load generator on every pair of a fleet at once.

use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use anyhow::{bail, Context, Result};

use super::Fleet;
use crate::load::{LoadReport, LoadSpec};
use crate::topology::find_bin;

/// A running load generator on one pair.
pub struct LoadRun {
    pair: usize,
    child: Child,
    out: PathBuf,
}

impl Fleet {
    /// Starts the load generator on every pair (in each lab's client namespace), to run until
    /// [`Fleet::stop_load`].
    pub fn start_load(&self, spec: &LoadSpec) -> Result<Vec<LoadRun>> {
        let bin = find_bin("drain-lab")?;
        let mut runs = Vec::new();
        for (pair, lab) in self.labs.iter().enumerate() {
            let spec_path = self.dir.join(format!("load-pair{}.json", pair + 1));
            let out = self.dir.join(format!("report-pair{}.json", pair + 1));
            fs::write(&spec_path, serde_json::to_vec_pretty(spec)?)?;
            let log = fs::File::create(self.dir.join(format!("load-pair{}.log", pair + 1)))?;
            let child = Command::new("ip")
                .args(["netns", "exec", &lab.client_ns()])
                .arg(&bin)
                .args(["load", "--stop-on-sigterm", "--spec"])
                .arg(&spec_path)
                .arg("--out")
                .arg(&out)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .context("starting the load generator")?;
            runs.push(LoadRun { pair, child, out });
        }
        Ok(runs)
    }

    /// Stops the generators (SIGTERM: no new flow, the flows in progress finish) and returns each
    /// pair's report.
    pub fn stop_load(&self, runs: Vec<LoadRun>) -> Result<Vec<LoadReport>> {
        for r in &runs {
            // `ip netns exec` execs the generator: the child is the generator.
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(r.child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            )?;
        }
        let mut reports = Vec::new();
        for mut r in runs {
            let status = r.child.wait()?;
            if !matches!(status.code(), Some(0) | Some(1)) {
                let log = fs::read_to_string(self.dir.join(format!("load-pair{}.log", r.pair + 1)))
                    .unwrap_or_default();
                bail!(
                    "load generator of pair {} exited with {status}: {log}",
                    r.pair + 1
                );
            }
            reports
                .push(serde_json::from_slice(&fs::read(&r.out)?).context("parsing a load report")?);
        }
        Ok(reports)
    }
}
