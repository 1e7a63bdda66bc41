//! The repository stands on its own: nothing in it refers to a file outside it (the project's
//! working notes are not shipped), every reference to a fact of docs/kernel-facts.md (by its
//! anchor) names a fact that exists, and every test a fact cites as its evidence exists in the file it names.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const FACTS: &str = "docs/kernel-facts.md";

/// Text files of the repository, without build output and golden files.
fn files() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if name.starts_with('.') && name != ".ci" || name == "target" || name == "golden" {
                continue;
            }
            if path.is_dir() {
                walk(&path, out);
            } else if fs::read_to_string(&path).is_ok() {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(Path::new(ROOT), &mut out);
    assert!(out.len() > 50, "walked too few files: {}", out.len());
    out
}

fn relative(p: &Path) -> String {
    p.strip_prefix(ROOT).unwrap().display().to_string()
}

#[test]
fn nothing_refers_to_a_file_outside_the_repository() {
    // Split so that this file does not match itself.
    let outside = [
        ["FIELD", "-NOTES"].concat(),
        ["shared", "/seeds"].concat(),
        ["../", "shared"].concat(),
    ];
    let mut found = Vec::new();
    for f in files() {
        let text = fs::read_to_string(&f).unwrap();
        for (n, line) in text.lines().enumerate() {
            if outside.iter().any(|o| line.contains(o.as_str())) {
                found.push(format!("{}:{}: {line}", relative(&f), n + 1));
            }
        }
    }
    assert!(
        found.is_empty(),
        "references outside the repository:\n{}",
        found.join("\n")
    );
}

/// The facts' anchors (`{#k1}` …) in docs/kernel-facts.md.
fn anchors(facts: &str) -> BTreeSet<String> {
    facts
        .lines()
        .filter(|l| l.starts_with("## "))
        .filter_map(|l| l.split("{#").nth(1)?.strip_suffix('}').map(str::to_string))
        .collect()
}

#[test]
fn every_reference_to_a_kernel_fact_names_one_that_exists() {
    let facts = fs::read_to_string(Path::new(ROOT).join(FACTS)).unwrap();
    let known = anchors(&facts);
    assert!(known.len() >= 10, "{known:?}");
    let mut refs = 0;
    let mut broken = Vec::new();
    // Split so that this file does not match itself.
    let marker = ["kernel-facts.md", "#"].concat();
    for f in files() {
        let text = fs::read_to_string(&f).unwrap();
        for (n, line) in text.lines().enumerate() {
            for piece in line.split(marker.as_str()).skip(1) {
                let anchor: String = piece
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric())
                    .collect();
                refs += 1;
                if !known.contains(&anchor) {
                    broken.push(format!("{}:{}: #{anchor}", relative(&f), n + 1));
                }
            }
        }
    }
    assert!(refs >= 10, "only {refs} references found");
    assert!(broken.is_empty(), "unknown facts:\n{}", broken.join("\n"));
}

#[test]
fn every_test_a_fact_cites_exists_where_it_says() {
    let facts = fs::read_to_string(Path::new(ROOT).join(FACTS)).unwrap();
    let mut cited = 0;
    let mut missing = Vec::new();
    // "Shown by:" paragraphs name `tests/FILE.rs` `test_name` pairs.
    for para in facts.split("\n\n").filter(|p| p.starts_with("Shown by:")) {
        let ticks: Vec<&str> = para.split('`').skip(1).step_by(2).collect();
        let mut file: Option<&str> = None;
        for t in ticks {
            if t.ends_with(".rs") {
                file = Some(t);
                continue;
            }
            let Some(f) = file else { continue };
            if !t
                .chars()
                .all(|c| c.is_ascii_lowercase() || c == '_' || c == '*')
            {
                continue;
            }
            let text = fs::read_to_string(Path::new(ROOT).join(f))
                .unwrap_or_else(|e| panic!("{FACTS} cites {f}: {e}"));
            cited += 1;
            let found = match t.strip_suffix('*') {
                Some(prefix) => text.contains(&format!("fn {prefix}")),
                None => text.contains(&format!("fn {t}(")),
            };
            if !found {
                missing.push(format!("{f}: {t}"));
            }
        }
    }
    assert!(cited >= 10, "only {cited} tests cited");
    assert!(
        missing.is_empty(),
        "cited but not found:\n{}",
        missing.join("\n")
    );
}
