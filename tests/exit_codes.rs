//! The exit codes are written in one place, `drain_agent::ops::exit::EXITS`; the README's table
//! and the Ansible module's tables (`EXIT_MEANINGS`, `UNCHANGED_CODES`) must say the same: every
//! code, the same meaning (starting with the code's summary), and the same answer to "did the host
//! change?". The man page is generated from `EXITS`, so it cannot disagree.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;

use drain_agent::ops::exit::{HostAfter, EXITS};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn read(path: &str) -> String {
    fs::read_to_string(Path::new(ROOT).join(path)).unwrap()
}

/// The README's exit-code table: code → (meaning, host changed?), backticks removed.
fn readme_table() -> BTreeMap<u8, (String, String)> {
    let readme = read("README.md");
    let start = readme
        .find("| code | meaning | host changed? |")
        .expect("the README has the exit-code table");
    let mut rows = BTreeMap::new();
    for line in readme[start..].lines().skip(2) {
        if !line.starts_with('|') {
            break;
        }
        let cells: Vec<String> = line
            .trim_matches('|')
            .split(" | ")
            .map(|c| c.trim().replace('`', ""))
            .collect();
        assert_eq!(cells.len(), 3, "a row of three cells: {line}");
        let code: u8 = cells[0].parse().unwrap();
        let before = rows.insert(code, (cells[1].clone(), cells[2].clone()));
        assert!(before.is_none(), "code {code} twice in the README");
    }
    rows
}

/// The Python module's `NAME = {` … `}` dictionary of `code: "text"` lines.
fn python_dict(module: &str, name: &str) -> BTreeMap<u8, String> {
    let start = module
        .find(&format!("{name} = {{"))
        .unwrap_or_else(|| panic!("{name} in the module"));
    let mut out = BTreeMap::new();
    for line in module[start..].lines().skip(1) {
        let line = line.trim();
        if line == "}" {
            break;
        }
        let (code, text) = line.split_once(": ").expect("code: \"text\",");
        let text = text.trim_end_matches(',').trim_matches('"');
        out.insert(code.parse().unwrap(), text.to_string());
    }
    out
}

fn python_frozenset(module: &str, name: &str) -> BTreeSet<u8> {
    let start = module.find(&format!("{name} = frozenset([")).unwrap() + name.len() + 14;
    let end = start + module[start..].find("])").unwrap();
    module[start..end]
        .split(',')
        .map(|c| c.trim().parse().unwrap())
        .collect()
}

#[test]
fn the_readme_table_says_what_the_code_says() {
    let table = readme_table();
    let codes: Vec<u8> = EXITS.iter().map(|e| e.code).collect();
    assert_eq!(table.keys().copied().collect::<Vec<_>>(), codes);
    for e in EXITS {
        let (meaning, host) = &table[&e.code];
        assert!(
            meaning.starts_with(e.summary),
            "README, exit {}: {meaning:?} does not start with {:?}",
            e.code,
            e.summary
        );
        assert_eq!(
            host,
            e.host.label(),
            "README, exit {}: host changed?",
            e.code
        );
    }
}

#[test]
fn the_ansible_module_says_what_the_code_says() {
    let module = read("ansible/collection/plugins/modules/drain_agent.py");
    let meanings = python_dict(&module, "EXIT_MEANINGS");
    let failures: Vec<u8> = EXITS.iter().map(|e| e.code).filter(|&c| c != 0).collect();
    assert_eq!(meanings.keys().copied().collect::<Vec<_>>(), failures);
    for e in EXITS.iter().filter(|e| e.code != 0) {
        let m = &meanings[&e.code];
        assert!(
            m.starts_with(e.summary),
            "Ansible, exit {}: {m:?} does not start with {:?}",
            e.code,
            e.summary
        );
    }
    // The module reports `changed: false` exactly for the codes that leave the host as it was.
    let unchanged: BTreeSet<u8> = EXITS
        .iter()
        .filter(|e| e.host == HostAfter::Unchanged)
        .map(|e| e.code)
        .collect();
    assert_eq!(python_frozenset(&module, "UNCHANGED_CODES"), unchanged);
}
