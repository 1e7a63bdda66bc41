//! Sampling the load-balancer nodes while a scenario runs (established connections, passive
//! opens), every [`SAMPLE_INTERVAL`], on a thread stopped when the scenario ends.

use super::*;

/// Every [`SAMPLE_INTERVAL`] on the scenario clock: how many connections each LB node had
/// accepted so far (`PassiveOpens` of its namespace), so a plot can show who served new flows.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct NodeSamples {
    /// (t_ms, accepted so far) on lb1.
    pub lb1: Vec<(f64, u64)>,
    /// (t_ms, accepted so far) on lb2.
    pub lb2: Vec<(f64, u64)>,
}

/// How often [`NodeSamples`] are taken.
pub const SAMPLE_INTERVAL: Duration = Duration::from_millis(100);

/// Samples `PassiveOpens` of one namespace on a thread inside it until `stop`; times are
/// CLOCK_MONOTONIC ns, put on the scenario clock by the caller.
pub(super) fn sample_node(
    ns: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<Vec<(u64, u64)>> {
    std::thread::spawn(move || {
        let mut out = Vec::new();
        let Ok(fd) = fs::File::open(format!("/run/netns/{ns}")) else {
            return out;
        };
        if nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET).is_err() {
            return out;
        }
        // /proc/net follows the process's namespace; thread-self follows this thread's.
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            if let Some(n) = fs::read_to_string("/proc/thread-self/net/snmp")
                .ok()
                .and_then(|t| passive_opens(&t))
            {
                out.push((monotonic_ns(), n));
            }
            std::thread::sleep(SAMPLE_INTERVAL);
        }
        out
    })
}

/// Stops the samplers however the scenario ends.
pub(super) struct StopOnDrop(pub(super) std::sync::Arc<std::sync::atomic::AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// `PassiveOpens` from `/proc/net/snmp`'s two `Tcp:` lines.
fn passive_opens(snmp: &str) -> Option<u64> {
    let mut tcp = snmp.lines().filter(|l| l.starts_with("Tcp:"));
    let (names, values) = (tcp.next()?, tcp.next()?);
    let at = names.split_whitespace().position(|n| n == "PassiveOpens")?;
    values.split_whitespace().nth(at)?.parse().ok()
}
