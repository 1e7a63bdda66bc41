//! The `ansible/` tree without a lab: the drain_agent module's unit tests (`python3 -m unittest`,
//! with the interpreter ansible-core runs on), its documentation as `ansible-doc` reads it,
//! `ansible-playbook --syntax-check` of every playbook against the example inventory, and
//! `ansible-lint` with the production profile. The end-to-end run is tests/ansible_e2e.rs.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use drain_test_support::netns::require_tool;

fn ansible_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("ansible")
}

fn run(argv: &[&str]) -> Output {
    Command::new(argv[0])
        .args(&argv[1..])
        .current_dir(ansible_dir())
        .env("ANSIBLE_NOCOLOR", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("ANSIBLE_CONFIG", ansible_dir().join("ansible.cfg"))
        // Nothing of the lint's or ansible's caches in the repository or root's home.
        .env(
            "ANSIBLE_HOME",
            std::env::temp_dir().join("drain-agent-ansible-static"),
        )
        .env(
            "ANSIBLE_LOCAL_TEMP",
            std::env::temp_dir().join("drain-agent-ansible-static/tmp"),
        )
        .env(
            "XDG_CACHE_HOME",
            std::env::temp_dir().join("drain-agent-ansible-static/cache"),
        )
        .output()
        .unwrap_or_else(|e| panic!("{argv:?}: {e}"))
}

fn assert_success(argv: &[&str]) -> String {
    let out = run(argv);
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{argv:?} failed ({}):\n{text}",
        out.status
    );
    text
}

/// The interpreter ansible-playbook runs on (its shebang): the module imports ansible.module_utils
/// from there.
fn ansible_python() -> String {
    let which = Command::new("sh")
        .args(["-c", "command -v ansible-playbook"])
        .output()
        .unwrap();
    let path = String::from_utf8_lossy(&which.stdout).trim().to_string();
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    text.lines()
        .next()
        .and_then(|l| l.strip_prefix("#!"))
        .map(|l| l.split_whitespace().next().unwrap_or("python3").to_string())
        .unwrap_or_else(|| "python3".into())
}

#[test]
fn the_module_logic_passes_its_unit_tests() {
    if !require_tool("ansible module unit tests", "ansible-playbook") {
        return;
    }
    let py = ansible_python();
    let text = assert_success(&[&py, "-m", "unittest", "discover", "-s", "tests", "-v"]);
    // unittest (3.11) also says OK after "Ran 0 tests": the count must be every test written.
    let ran: usize = text
        .lines()
        .find_map(|l| {
            l.strip_prefix("Ran ")?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no \"Ran N tests\" line:\n{text}"));
    let written = python_tests_written();
    assert!(written > 0, "no test_ methods found in ansible/tests");
    assert_eq!(ran, written, "tests ran vs test_ methods written:\n{text}");
    assert_eq!(
        text.lines().rev().find(|l| !l.trim().is_empty()),
        Some("OK"),
        "not a plain OK (a skip or failure):\n{text}"
    );
}

/// The `def test_…` methods in ansible/tests/test_*.py, counted from the source, so a discovery
/// that finds fewer of them (a renamed file, a class that is no longer a TestCase) fails.
fn python_tests_written() -> usize {
    let dir = ansible_dir().join("tests");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("test_") && name.ends_with(".py") {
            n += std::fs::read_to_string(&path)
                .unwrap()
                .lines()
                .filter(|l| l.trim_start().starts_with("def test_"))
                .count();
        }
    }
    n
}

#[test]
fn the_module_documents_itself() {
    if !require_tool("ansible-doc drain_agent", "ansible-doc") {
        return;
    }
    let text = assert_success(&["ansible-doc", "-M", "library", "--json", "drain_agent"]);
    let doc: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    let d = &doc["drain_agent"];
    let states = d["doc"]["options"]["state"]["choices"].as_array().unwrap();
    assert_eq!(states.len(), 4, "{states:?}");
    assert!(d["examples"].as_str().unwrap().contains("state: drained"));
    assert!(d["return"]["report"].is_object() && d["return"]["rc"].is_object());
}

#[test]
fn every_playbook_passes_the_syntax_check() {
    if !require_tool("ansible-playbook --syntax-check", "ansible-playbook") {
        return;
    }
    for pb in ["install.yml", "rolling-maintenance.yml"] {
        assert_success(&[
            "ansible-playbook",
            "-i",
            "inventory.example.yml",
            "--syntax-check",
            pb,
        ]);
    }
}

#[test]
fn ansible_lint_production_profile_passes() {
    if !require_tool("ansible-lint", "ansible-lint") {
        return;
    }
    let text = assert_success(&[
        "ansible-lint",
        "--profile",
        "production",
        "--offline",
        "--nocolor",
    ]);
    println!("{text}");
}
