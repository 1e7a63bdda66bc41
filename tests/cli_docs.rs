//! What the binary tells an operator about itself, as the operator meets it: every command's
//! `--help` ends with its examples; `drain-agent man` writes pages that groff renders without a
//! warning and `man -l` shows with every command, option and example; the completion scripts load
//! in bash, zsh and fish and complete subcommands, options and values.
//!
//! No root needed. Skips (printing why; a failure under CI=true) when groff, man, zsh or fish is
//! missing.

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use clap::CommandFactory;
use drain_agent::cli::Cli;
use drain_test_support::{require_tool, run_with_home};

const BIN: &str = env!("CARGO_BIN_EXE_drain-agent");

fn agent(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The visible subcommands' names (clap's `help` is not one of ours).
fn subcommands() -> Vec<String> {
    Cli::command()
        .get_subcommands()
        .filter(|c| !c.is_hide_set())
        .map(|c| c.get_name().to_string())
        .collect()
}

/// The man pages `drain-agent man` writes, in its order, each with the subcommand path it
/// documents: the root page, then each subcommand's page followed by its own subcommands' pages
/// (`drain-agent-maintenance-on.8`, `["maintenance", "on"]`).
fn man_pages() -> Vec<(String, Vec<String>)> {
    fn add(cmd: &clap::Command, path: &[String], pages: &mut Vec<(String, Vec<String>)>) {
        for sub in cmd.get_subcommands().filter(|c| !c.is_hide_set()) {
            let mut path = path.to_vec();
            path.push(sub.get_name().to_string());
            pages.push((format!("drain-agent-{}.8", path.join("-")), path.clone()));
            add(sub, &path, pages);
        }
    }
    let mut pages = vec![("drain-agent.8".to_string(), vec![])];
    add(&Cli::command(), &[], &mut pages);
    pages
}

#[test]
fn every_help_ends_with_examples_of_that_command() {
    let mut commands = vec![None];
    commands.extend(subcommands().into_iter().map(Some));
    for sub in commands {
        for flag in ["--help", "-h"] {
            let mut args: Vec<&str> = sub.iter().map(String::as_str).collect();
            args.push(flag);
            let out = agent(&args);
            assert!(out.status.success() && out.stderr.is_empty(), "{args:?}");
            let help = text(&out.stdout);
            // Not a terminal: no colour codes.
            assert!(!help.contains('\x1b'), "{args:?}: {help}");
            let examples = &help[help
                .rfind("\nExamples:\n")
                .unwrap_or_else(|| panic!("{args:?}: no examples:\n{help}"))..];
            let invocation = format!("  drain-agent {}", sub.as_deref().unwrap_or(""));
            assert!(examples.contains(&invocation), "{args:?}: {examples}");
            // The block is the end of the help: only examples and comments follow the header.
            for line in examples.trim().lines().skip(1) {
                assert!(
                    line.starts_with("  # ") || line.starts_with("  drain-agent "),
                    "{args:?}: {line:?}"
                );
            }
        }
    }
}

#[test]
fn man_pages_render_without_warnings_and_show_every_command() {
    if !require_tool(
        "man_pages_render_without_warnings_and_show_every_command",
        "groff",
    ) || !require_tool(
        "man_pages_render_without_warnings_and_show_every_command",
        "man",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("man8");
    let out = agent(&["man", "--out-dir", out_dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let pages = man_pages();
    let expected: Vec<String> = pages.iter().map(|(file, _)| file.clone()).collect();
    let listed: Vec<String> = text(&out.stdout)
        .lines()
        .map(|l| {
            Path::new(l)
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert_eq!(listed, expected);

    for (page, subcommand) in &pages {
        let path = out_dir.join(page);
        // Top-level commands must have examples (cli::tests); nested ones may rely on their
        // parent's.
        let top_level = subcommand.len() <= 1;
        // Every groff warning enabled; the page must produce none.
        let groff = Command::new("groff")
            .args(["-man", "-Tutf8", "-ww", "-z"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            groff.status.success() && groff.stderr.is_empty(),
            "{page}: {}",
            text(&groff.stderr)
        );
        let man = Command::new("man")
            .arg("-l")
            .arg(&path)
            .env("MANWIDTH", "100")
            .env("MANPAGER", "cat")
            .output()
            .unwrap();
        assert!(man.status.success(), "{page}: {}", text(&man.stderr));
        let shown = text(&man.stdout);
        for heading in [
            "NAME",
            "SYNOPSIS",
            "DESCRIPTION",
            "OPTIONS",
            "EXAMPLES",
            "SEE ALSO",
        ] {
            if heading == "EXAMPLES" && !top_level {
                continue;
            }
            assert!(
                shown.contains(&format!("\n{heading}\n")),
                "{page}: {heading}\n{shown}"
            );
        }
        // Each example invocation of the command is shown on a line of its own.
        let help_args: Vec<&str> = subcommand
            .iter()
            .map(String::as_str)
            .chain(["--help"])
            .collect();
        let help = text(&agent(&help_args).stdout);
        let invocations: Vec<&str> = help
            .rfind("\nExamples:\n")
            .map_or("", |at| &help[at..])
            .lines()
            .map(str::trim)
            .filter(|l| l.starts_with("drain-agent "))
            .collect();
        assert!(!invocations.is_empty() || !top_level, "{page}");
        for inv in invocations {
            assert!(
                shown.lines().any(|l| l.trim() == inv),
                "{page}: example {inv:?} not on its own line:\n{shown}"
            );
        }
        if subcommand.is_empty() {
            let listed =
                &shown[shown.find("\nSUBCOMMANDS\n").unwrap()..shown.find("\nEXAMPLES\n").unwrap()];
            for s in subcommands() {
                assert!(
                    listed.contains(&format!("drain-agent-{s}(8)")),
                    "{s}: {listed}"
                );
            }
            for code in 0..=12 {
                let tag = code.to_string();
                assert!(
                    shown.lines().map(str::trim).any(|l| l == tag
                        || l.strip_prefix(&tag)
                            .is_some_and(|rest| rest.starts_with(' '))),
                    "exit code {code} not listed:\n{shown}"
                );
            }
        }
    }
    // A page for `drain`: its own options.
    let drain = fs::read_to_string(out_dir.join("drain-agent-drain.8")).unwrap();
    for opt in ["abort\\-on\\-deadline", "idle\\-threshold", "deadline"] {
        assert!(drain.contains(opt), "{opt}");
    }
}

fn script(dir: &Path, shell_name: &str, file: &str) -> String {
    let out = agent(&["completions", shell_name]);
    assert!(out.status.success() && out.stderr.is_empty());
    let path = dir.join(file);
    fs::write(&path, &out.stdout).unwrap();
    path.display().to_string()
}

/// What bash's completion function offers for the words of `line` (the last one being
/// completed), after sourcing `file`.
fn bash_complete(home: &Path, file: &str, line: &str) -> Vec<String> {
    let words: Vec<&str> = line.split(' ').collect();
    let snippet = format!(
        "source {file}
         COMP_WORDS=({words}); COMP_CWORD={cword}; COMP_LINE='{line}'; COMP_POINT=${{#COMP_LINE}}
         fn=$(complete -p drain-agent | sed -n 's/.* -F \\([^ ]*\\) .*/\\1/p')
         \"$fn\" drain-agent '{cur}' '{prev}'
         printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        words = words
            .iter()
            .map(|w| format!("'{w}'"))
            .collect::<Vec<_>>()
            .join(" "),
        cword = words.len() - 1,
        cur = words[words.len() - 1],
        prev = words[words.len() - 2],
    );
    run_with_home(home, &["bash", "--norc", "-c", &snippet])
        .lines()
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}

#[test]
fn bash_completion_completes_subcommands_options_and_values() {
    let dir = tempfile::tempdir().unwrap();
    let file = script(dir.path(), "bash", "drain-agent.bash");
    let h = dir.path();
    let mut all = bash_complete(h, &file, "drain-agent ");
    all.retain(|w| !w.starts_with('-'));
    let mut want = subcommands();
    want.push("help".into());
    all.sort();
    want.sort();
    assert_eq!(all, want);
    assert_eq!(bash_complete(h, &file, "drain-agent und"), ["undrain"]);
    assert_eq!(
        bash_complete(h, &file, "drain-agent drain --abort"),
        ["--abort-on-deadline"]
    );
    let mut shells = bash_complete(h, &file, "drain-agent completions ");
    shells.retain(|w| !w.starts_with('-'));
    for s in ["bash", "zsh", "fish"] {
        assert!(shells.iter().any(|w| w == s), "{shells:?}");
    }
    // The script registers itself for the command.
    let registered = run_with_home(
        h,
        &[
            "bash",
            "--norc",
            "-c",
            &format!("source {file}; complete -p drain-agent"),
        ],
    );
    assert!(
        registered.contains(" -F _") && registered.trim_end().ends_with(" drain-agent"),
        "{registered}"
    );
}

#[test]
fn zsh_and_fish_completions_load_and_complete() {
    let test = "zsh_and_fish_completions_load_and_complete";
    if !require_tool(test, "zsh") || !require_tool(test, "fish") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let h = dir.path();
    let zsh_dir = h.join("zfunc");
    fs::create_dir(&zsh_dir).unwrap();
    script(&zsh_dir, "zsh", "_drain-agent");
    run_with_home(
        h,
        &["zsh", "-n", zsh_dir.join("_drain-agent").to_str().unwrap()],
    );
    // compinit finds the function by its #compdef line in fpath and binds it to the command.
    let bound = run_with_home(
        h,
        &[
            "zsh",
            "-f",
            "-c",
            &format!(
                "fpath=({} $fpath); autoload -Uz compinit && compinit -u -D && print -r -- ${{_comps[drain-agent]}}",
                zsh_dir.display()
            ),
        ],
    );
    assert_eq!(bound.trim(), "_drain-agent");

    let fish = script(h, "fish", "drain-agent.fish");
    let complete = |line: &str| {
        run_with_home(
            h,
            &[
                "fish",
                "--no-config",
                "-c",
                &format!("source {fish}; complete -C '{line}'"),
            ],
        )
    };
    let subs = complete("drain-agent ");
    for s in subcommands() {
        assert!(
            subs.lines().any(|l| l.split('\t').next() == Some(&s)),
            "{s}: {subs}"
        );
    }
    assert!(complete("drain-agent drain --abort").contains("--abort-on-deadline"));
}
