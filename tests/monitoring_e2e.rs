//! End-to-end: a real Prometheus scrapes the daemon's metrics while the daemon drains lb1 under
//! the lab's mixed load; the phases appear in Prometheus in the order the drain goes through
//! them, and `promtool check metrics` accepts the exposition.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use drain_lab::scenario::{self, default_load, drain_agent, AgentConfig, AgentOptions};
use drain_lab::topology::{can_run_lab, Lab, LabOptions, Node};

const METRICS: &str = "127.0.0.1:9464";
const PROMETHEUS: &str = "127.0.0.1:9490";
const EVENT_AT: Duration = Duration::from_millis(4000);

fn now_s() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn curl(lab: &Lab, url: &str) -> String {
    let out = lab
        .exec_status(
            &lab.node_ns(Node::Lb1),
            &["curl", "-sf", "--max-time", "5", url],
        )
        .unwrap();
    assert!(
        out.status.success(),
        "curl {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
#[ignore = "needs root and network namespaces; `make test` runs it"]
fn prometheus_sees_the_drains_phases_in_order() {
    if !can_run_lab(
        "prometheus_sees_the_drains_phases_in_order",
        &["prometheus", "promtool", "curl"],
    ) {
        return;
    }
    let mut lab = Lab::up(&LabOptions::default()).unwrap();
    let agent = AgentConfig {
        metrics_listen: Some(METRICS.into()),
        ..AgentConfig::default()
    };
    lab.write_agent_config(Node::Lb1, &agent).unwrap();
    lab.start_daemon(Node::Lb1).unwrap();
    let prom_dir = lab.dir.join("prometheus");
    std::fs::create_dir_all(&prom_dir).unwrap();
    let prom_cfg = prom_dir.join("prometheus.yml");
    std::fs::write(
        &prom_cfg,
        format!(
            "global:\n  scrape_interval: 250ms\n  scrape_timeout: 200ms\nscrape_configs:\n  - job_name: drain-agent\n    static_configs:\n      - targets: ['{METRICS}']\n"
        ),
    )
    .unwrap();
    let ns = lab.node_ns(Node::Lb1);
    lab.spawn(
        "prometheus",
        &ns,
        &[
            "prometheus",
            &format!("--config.file={}", prom_cfg.display()),
            &format!("--storage.tsdb.path={}", prom_dir.join("data").display()),
            &format!("--web.listen-address={PROMETHEUS}"),
            "--log.level=warn",
        ],
    )
    .unwrap();
    let start = Instant::now();
    loop {
        let ready = lab
            .exec_status(
                &ns,
                &["curl", "-sf", &format!("http://{PROMETHEUS}/-/ready")],
            )
            .unwrap();
        if ready.status.success() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "prometheus never became ready"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Prometheus' target discovery hands new targets to the scrapers every 5 s: wait for the
    // first sample, so the record starts before the drain.
    let t0 = now_s();
    loop {
        let q = curl(
            &lab,
            &format!("http://{PROMETHEUS}/api/v1/query?query=drain_agent_phase%7Bphase%3D%22serving%22%7D"),
        );
        if q.contains("\"value\":[") {
            break;
        }
        assert!(
            now_s() - t0 < 30.0,
            "prometheus never scraped the agent: {q}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let r = scenario::run_in(
        &mut lab,
        "drain-agent-metrics",
        &default_load(),
        EVENT_AT,
        drain_agent(AgentOptions {
            overrides: agent,
            ..AgentOptions::default()
        }),
    )
    .unwrap();
    assert_eq!(r.broken, 0);
    let a = r.event.agent.as_ref().unwrap();
    assert_eq!(a.exit_code, 0, "{}", a.stderr);
    // Until Prometheus has scraped the phase the drain ended in.
    let waited = now_s();
    loop {
        let q = curl(
            &lab,
            &format!("http://{PROMETHEUS}/api/v1/query?query=drain_agent_phase%7Bphase%3D%22failed-over%22%7D%3D%3D1"),
        );
        if q.contains("\"value\":[") {
            break;
        }
        assert!(
            now_s() - waited < 30.0,
            "prometheus never scraped the final phase: {q}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let t1 = now_s();

    // The exposition as a scraper gets it is valid.
    let body = curl(&lab, &format!("http://{METRICS}/metrics"));
    let check = std::process::Command::new("sh")
        .args(["-c", "promtool check metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(body.as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    assert!(
        check.status.success(),
        "promtool check metrics: {}{}\n{body}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(
        body.contains("drain_agent_drains_total{mode=\"drain\",result=\"drained\"} 1"),
        "{body}"
    );

    // The phase at every step, as Prometheus recorded it.
    let q = curl(
        &lab,
        &format!("http://{PROMETHEUS}/api/v1/query_range?query=drain_agent_phase&start={t0:.3}&end={t1:.3}&step=0.25"),
    );
    let doc: serde_json::Value = serde_json::from_str(&q).unwrap();
    let mut at: Vec<(f64, String)> = Vec::new();
    for series in doc["data"]["result"].as_array().unwrap() {
        let phase = series["metric"]["phase"].as_str().unwrap().to_string();
        for v in series["values"].as_array().unwrap() {
            if v[1] == "1" {
                at.push((v[0].as_f64().unwrap(), phase.clone()));
            }
        }
    }
    at.sort_by(|a, b| a.0.total_cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
    // Exactly one phase at every step: two at once would be a broken gauge.
    for w in at.windows(2) {
        assert!(
            w[0].0 != w[1].0,
            "two phases at {:.2} s: {} and {}",
            w[0].0 - t0,
            w[0].1,
            w[1].1
        );
    }
    let mut seen: Vec<String> = Vec::new();
    for (t, p) in &at {
        if seen.last() != Some(p) {
            println!("{:>7.2} s  {p}", t - t0);
            seen.push(p.clone());
        }
    }
    // The exact sequence: each phase once, in order, nothing repeated or skipped. The preflight
    // (checks before the divert) lasts tens of milliseconds: a scrape may or may not land in it.
    let order = ["serving", "draining", "failing-over", "failed-over"];
    let with_preflight = [
        "serving",
        "preflight",
        "draining",
        "failing-over",
        "failed-over",
    ];
    assert!(
        seen == order || seen == with_preflight,
        "phases as Prometheus recorded them: {seen:?}"
    );
}
