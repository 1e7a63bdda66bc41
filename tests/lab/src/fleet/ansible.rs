//! Running Ansible in a fleet's controller namespace: `ansible-playbook` and ad-hoc `ansible`,
//! what they printed and their PLAY RECAP, and the collection they run, built and installed from
//! its artifact as a user installs it.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::Fleet;

/// Counts of one host's PLAY RECAP line.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recap {
    /// ok=
    pub ok: u32,
    /// changed=
    pub changed: u32,
    /// unreachable=
    pub unreachable: u32,
    /// failed=
    pub failed: u32,
    /// skipped=
    pub skipped: u32,
    /// rescued=
    pub rescued: u32,
    /// ignored=
    pub ignored: u32,
}

/// One `ansible-playbook` run.
#[derive(Clone, Debug)]
pub struct PlaybookRun {
    /// The command line, as a shell would read it.
    pub command: String,
    /// Exit code.
    pub exit_code: i32,
    /// Everything it printed on stdout.
    pub stdout: String,
    /// Its stderr.
    pub stderr: String,
    /// Wall time.
    pub elapsed: Duration,
    /// The PLAY RECAP lines, verbatim.
    pub recap_lines: Vec<String>,
    /// The same, parsed, by host.
    pub recap: BTreeMap<String, Recap>,
}

impl PlaybookRun {
    /// The output's tail, for an assertion message.
    pub fn tail(&self, lines: usize) -> String {
        let all: Vec<&str> = self.stdout.lines().collect();
        let from = all.len().saturating_sub(lines);
        format!("{}\n--- stderr:\n{}", all[from..].join("\n"), self.stderr)
    }
}

/// A collection built and installed by [`Fleet::install_collection`].
#[derive(Clone, Debug)]
pub struct InstalledCollection {
    /// The artifact `ansible-galaxy collection build` made.
    pub tarball: PathBuf,
    /// Where it was installed: `<collections>/ansible_collections/<namespace>/<name>`.
    pub root: PathBuf,
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str()
        .with_context(|| format!("{} is not UTF-8", p.display()))
}

/// Parses the PLAY RECAP section of ansible-playbook's default output.
pub fn parse_recap(stdout: &str) -> (Vec<String>, BTreeMap<String, Recap>) {
    let mut lines = Vec::new();
    let mut recap = BTreeMap::new();
    let mut in_recap = false;
    for line in stdout.lines() {
        if line.starts_with("PLAY RECAP") {
            in_recap = true;
            continue;
        }
        if !in_recap {
            continue;
        }
        let Some((host, counts)) = line.split_once(" : ") else {
            if line.trim().is_empty() {
                continue;
            }
            in_recap = false;
            continue;
        };
        let mut r = Recap::default();
        for kv in counts.split_whitespace() {
            let Some((k, v)) = kv.split_once('=') else {
                continue;
            };
            let v: u32 = v.parse().unwrap_or(0);
            match k {
                "ok" => r.ok = v,
                "changed" => r.changed = v,
                "unreachable" => r.unreachable = v,
                "failed" => r.failed = v,
                "skipped" => r.skipped = v,
                "rescued" => r.rescued = v,
                "ignored" => r.ignored = v,
                _ => {}
            }
        }
        lines.push(line.trim_end().to_string());
        recap.insert(host.trim().to_string(), r);
    }
    (lines, recap)
}

impl Fleet {
    /// Runs `ansible-playbook PLAYBOOK ARGS...` in the controller namespace (PLAYBOOK: a path, or
    /// an installed collection's playbook by FQCN) and returns what it printed, its exit code and
    /// its PLAY RECAP. Fails only if it could not be started.
    pub fn ansible_playbook(&self, playbook: &str, args: &[&str]) -> Result<PlaybookRun> {
        let mut argv = vec![playbook];
        argv.extend_from_slice(args);
        self.ansible_tool("ansible-playbook", &argv)
    }

    /// Runs the ad-hoc `ansible ARGS...` (e.g. one module on one host) in the controller namespace.
    pub fn ansible_adhoc(&self, args: &[&str]) -> Result<PlaybookRun> {
        self.ansible_tool("ansible", args)
    }

    /// Where the fleet's ansible.cfg looks for collections.
    pub fn collections_dir(&self) -> PathBuf {
        self.dir.join("collections")
    }

    /// Builds the collection whose galaxy.yml is in `source` (`ansible-galaxy collection build`)
    /// into the fleet's directory and installs that artifact (`ansible-galaxy collection install
    /// <tarball> -p`, offline) into [`Fleet::collections_dir`], as a user installs a release: what
    /// the fleet's playbooks run is what the build ships, not the source tree.
    pub fn install_collection(&self, source: &Path) -> Result<InstalledCollection> {
        let out = self.dir.join("collection-build");
        fs::create_dir_all(&out)?;
        self.galaxy(&[
            "collection",
            "build",
            path_str(source)?,
            "--output-path",
            path_str(&out)?,
        ])?;
        let mut built: Vec<PathBuf> = fs::read_dir(&out)?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.to_string_lossy().ends_with(".tar.gz"))
            .collect();
        if built.len() != 1 {
            bail!(
                "ansible-galaxy collection build left {} artifacts in {}, not one",
                built.len(),
                out.display()
            );
        }
        let tarball = built.remove(0);
        let into = self.collections_dir();
        self.galaxy(&[
            "collection",
            "install",
            "--offline",
            path_str(&tarball)?,
            "-p",
            path_str(&into)?,
        ])?;
        let mut roots = Vec::new();
        for ns in fs::read_dir(into.join("ansible_collections"))?.flatten() {
            for name in fs::read_dir(ns.path())?.flatten() {
                roots.push(name.path());
            }
        }
        match roots.as_slice() {
            [root] => Ok(InstalledCollection {
                tarball,
                root: root.clone(),
            }),
            _ => bail!("expected one installed collection, found {roots:?}"),
        }
    }

    /// Runs `ansible-galaxy ARGS...` with the fleet's configuration; fails with its output.
    fn galaxy(&self, args: &[&str]) -> Result<()> {
        let out = Command::new("ansible-galaxy")
            .args(args)
            .env("ANSIBLE_CONFIG", self.dir.join("ansible.cfg"))
            .env("ANSIBLE_HOME", self.dir.join("ansible-home"))
            .env("ANSIBLE_NOCOLOR", "1")
            .stdin(Stdio::null())
            .output()
            .context("starting ansible-galaxy")?;
        if !out.status.success() {
            bail!(
                "ansible-galaxy {} failed ({}): {}{}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    fn ansible_tool(&self, tool: &str, args: &[&str]) -> Result<PlaybookRun> {
        let home = self.dir.join("ansible-home");
        fs::create_dir_all(home.join("tmp"))?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ctl_ns(), tool])
            .args(args)
            .env("ANSIBLE_CONFIG", self.dir.join("ansible.cfg"))
            .env("ANSIBLE_HOME", &home)
            .env("ANSIBLE_NOCOLOR", "1")
            .env("ANSIBLE_FORCE_COLOR", "0")
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::null());
        let command = format!(
            "ANSIBLE_CONFIG={cfg} ip netns exec {ns} {tool} {args}",
            cfg = self.dir.join("ansible.cfg").display(),
            ns = self.ctl_ns(),
            args = args.join(" ")
        );
        let t0 = Instant::now();
        let out = cmd.output().with_context(|| format!("starting {tool}"))?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let (recap_lines, recap) = parse_recap(&stdout);
        Ok(PlaybookRun {
            command,
            exit_code: out.status.code().unwrap_or(-1),
            stdout,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            elapsed: t0.elapsed(),
            recap_lines,
            recap,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_recap_is_parsed_per_host() {
        let out = "TASK [x] ***\nok: [a]\n\nPLAY RECAP *********\n\
                   p1-lb1                     : ok=12   changed=3    unreachable=0    failed=0    skipped=4    rescued=0    ignored=0   \n\
                   p2-lb1                     : ok=7    changed=0    unreachable=0    failed=1    skipped=1    rescued=1    ignored=0   \n\n";
        let (lines, recap) = parse_recap(out);
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("p1-lb1"));
        assert_eq!(
            recap["p1-lb1"],
            Recap {
                ok: 12,
                changed: 3,
                skipped: 4,
                ..Recap::default()
            }
        );
        assert_eq!(recap["p2-lb1"].failed, 1);
        assert_eq!(recap["p2-lb1"].rescued, 1);
    }
}
