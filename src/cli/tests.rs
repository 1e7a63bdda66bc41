//! The help texts: every command's `--help` ends with examples that are real invocations.

use clap::{Command, CommandFactory};

use super::Cli;

/// The words of a shell command line (single and double quotes, no expansions), up to a
/// redirection or a pipe: what the program itself receives.
fn words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quote = None;
    for c in line.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => word.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                in_word = true;
            }
            (None, ' ') => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            (None, '>' | '|') if !in_word => break,
            (None, c) => {
                word.push(c);
                in_word = true;
            }
        }
    }
    assert!(quote.is_none(), "unbalanced quote in {line:?}");
    if in_word {
        words.push(word);
    }
    words
}

#[test]
fn words_split_like_a_shell() {
    assert_eq!(
        words(r#"drain-agent maintenance on --reason "kernel upgrade" > f"#),
        [
            "drain-agent",
            "maintenance",
            "on",
            "--reason",
            "kernel upgrade"
        ]
    );
    assert_eq!(words("drain-agent 'a b'c | jq"), ["drain-agent", "a bc"]);
    assert_eq!(words("drain-agent x>y"), ["drain-agent", "x>y"]);
}

/// The invocations of a command's `Examples:` block; panics on a block that is missing, lacks an
/// invocation, or has a line that is neither a `# comment` nor a `drain-agent` invocation.
fn examples_of(cmd: &Command) -> Vec<String> {
    let name = cmd.get_name();
    let help = cmd
        .get_after_help()
        .unwrap_or_else(|| panic!("`{name}` has no Examples: block (after_help)"))
        .to_string();
    let mut lines = help.lines();
    assert_eq!(lines.next(), Some("Examples:"), "`{name}`");
    let invocations: Vec<String> = lines
        .map(|l| {
            assert!(l.starts_with("  "), "`{name}`: {l:?} is not indented");
            l.trim().to_string()
        })
        .filter(|l| {
            assert!(
                l.starts_with("# ") || l.starts_with("drain-agent "),
                "`{name}`: {l:?} is neither a comment nor an invocation"
            );
            !l.starts_with('#')
        })
        .collect();
    assert!(!invocations.is_empty(), "`{name}`: no invocation");
    invocations
}

#[test]
fn every_command_ends_its_help_with_examples_that_parse_as_that_command() {
    let mut root = Cli::command();
    root.build();
    for example in examples_of(&root) {
        let parsed = Cli::command().try_get_matches_from(words(&example));
        assert!(parsed.is_ok(), "{example}: {}", parsed.unwrap_err());
    }
    let mut seen = 0;
    for sub in root.get_subcommands().filter(|s| s.get_name() != "help") {
        for example in examples_of(sub) {
            let matches = Cli::command()
                .try_get_matches_from(words(&example))
                .unwrap_or_else(|e| panic!("{example}: {e}"));
            assert_eq!(
                matches.subcommand_name(),
                Some(sub.get_name()),
                "{example} is not an example of `{}`",
                sub.get_name()
            );
        }
        seen += 1;
    }
    assert!(seen >= 10, "only {seen} subcommands seen");
}

#[test]
fn notify_examples_are_what_keepalived_passes() {
    let root = Cli::command();
    let notify = root.find_subcommand("notify").unwrap();
    for example in examples_of(notify) {
        let args: Vec<String> = words(&example).into_iter().skip(2).collect();
        crate::keepalived::NotifyArgs::parse(&args).unwrap_or_else(|e| panic!("{example}: {e}"));
    }
}

#[test]
fn the_examples_block_is_last_in_long_and_short_help() {
    let mut root = Cli::command();
    for args in [
        &["drain-agent", "drain", "--help"][..],
        &["drain-agent", "drain", "-h"],
    ] {
        let help = root
            .clone()
            .try_get_matches_from(args)
            .unwrap_err()
            .to_string();
        let tail = &help[help.rfind("Examples:").expect("examples in help")..];
        assert!(
            tail.trim_end().ends_with("drain-agent drain --handoff"),
            "{tail}"
        );
    }
    // Plain text when rendered without a terminal: the header's styling is stripped.
    let help = root.render_long_help().to_string();
    assert!(help.contains("\nExamples:\n  # Validate"), "{help}");
}
