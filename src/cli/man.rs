//! `drain-agent man --out-dir DIR`: writes the manual pages, drain-agent(8) and one
//! drain-agent-COMMAND(8) per subcommand, rendered by clap_mangen from the command-line definition
//! — the same options, help texts and examples as `--help`, so the pages cannot drift from the
//! binary. Section 8: the agent is an administration tool that runs as root. `make deb` runs
//! this; operators read `man drain-agent`.

use std::fs;
use std::path::PathBuf;

use clap::{Args, Command, CommandFactory};
use clap_mangen::roff::{bold, italic, roman, Roff};
use clap_mangen::Man;
use serde::Serialize;

use super::common::Output;
use super::{Cli, Failure, GlobalOpts, DEFAULT_CONFIG_PATH};
use crate::ops::exit;

/// `drain-agent man --help` ends with these (see `cli::examples`).
pub(super) const EXAMPLES: &str = "\
# What `make deb` runs (then gzips the pages)
drain-agent man --out-dir target/debian/stage/usr/share/man/man8
# A hand install: man drain-agent finds them there
drain-agent man --out-dir /usr/local/share/man/man8";

/// Arguments of `man`.
#[derive(Debug, Args)]
pub struct ManArgs {
    /// Directory to write the pages into (created if missing; existing pages are replaced).
    #[arg(long, value_name = "DIR")]
    pub out_dir: PathBuf,
}

/// `man --json`: the files written.
#[derive(Serialize)]
#[serde(tag = "result", rename = "written")]
struct WrittenDoc {
    files: Vec<String>,
}

/// Writes every page into `--out-dir` and lists the files.
pub fn run(g: &GlobalOpts, a: &ManArgs) -> Result<(), Failure> {
    let cannot = |path: &std::path::Path, e: std::io::Error| {
        Failure::new(exit::ENVIRONMENT, format!("{}: {e}", path.display()))
    };
    fs::create_dir_all(&a.out_dir).map_err(|e| cannot(&a.out_dir, e))?;
    let mut files = Vec::new();
    for page in pages() {
        let path = a.out_dir.join(&page.file);
        fs::write(&path, &page.roff).map_err(|e| cannot(&path, e))?;
        files.push(path.display().to_string());
    }
    let text = files.join("\n");
    Output::new(g.json).result(&WrittenDoc { files }, &text);
    Ok(())
}

/// One manual page.
#[derive(Debug)]
pub struct Page {
    /// File name, e.g. `drain-agent-drain.8`.
    pub file: String,
    /// The page's roff source.
    pub roff: String,
}

/// The manual section: system administration commands.
const SECTION: &str = "8";

/// The root page's DESCRIPTION (`--help` keeps to the one-line about).
const DESCRIPTION: &str = "\
drain-agent takes one node of a keepalived/VRRP load-balancer pair (HAProxy nodes) out of service \
without breaking a connection: new flows go to the peer at once, the flows this node already \
serves finish here, then keepalived hands the virtual addresses over, and every change is undone.

Run drain on the MASTER; undrain brings the node back. With the keepalived wiring (the notify \
hook and the daemon, run, following vrrp_notify_fifo) the peer prepares itself; accept and \
release do it by hand. Every command takes --json; the exit codes below are an API.";

/// What each exit code means (the README's table); `EXIT STATUS` of the root page.
const EXIT_STATUS: &[(u8, &str)] = &[
    (exit::OK, "Success."),
    (exit::INTERNAL, "Internal error; rolled back."),
    (exit::USAGE, "Bad command-line usage; nothing changed."),
    (exit::CONFIG, "Invalid configuration; nothing changed."),
    (
        exit::ENVIRONMENT,
        "Environment not usable: a missing binary, interface, privilege or kernel feature; \
         nothing changed.",
    ),
    (
        exit::PEER_NOT_READY,
        "The peer cannot take the traffic (down, not accepting the VIP, nothing listening); \
         nothing changed.",
    ),
    (
        exit::BUSY,
        "Another drain-agent operation holds the lock; nothing changed.",
    ),
    (
        exit::STATE,
        "The state does not allow it: this node does not hold the VIP, is already drained, or an \
         earlier run left changes (run undrain); nothing changed.",
    ),
    (
        exit::PEER_LOST,
        "The peer was lost during the drain: new flows are served here again within a second and \
         the divert is removed; rolled back.",
    ),
    (
        exit::INTERRUPTED,
        "Interrupted by SIGINT, SIGTERM or SIGHUP; rolled back. A second signal cuts the rollback \
         grace short.",
    ),
    (
        exit::DEADLINE,
        "Deadline reached with --abort-on-deadline; rolled back.",
    ),
    (
        exit::FAILOVER,
        "Failover not confirmed in time: divert removed, tracked interface left down; check \
         keepalived.",
    ),
    (
        exit::CLEANUP,
        "Cleanup incomplete: what is left is in the journal; undrain retries.",
    ),
    (
        exit::VIP_MOVED,
        "The VIP moved to the peer during the drain without the agent (keepalived stopped \
         here): the node's remaining connections were cut; the drain was finished, the node is \
         out of service; check keepalived.",
    ),
];

/// Every page: drain-agent(8), then one per subcommand, nested ones included (a parent's
/// SUBCOMMANDS section names `drain-agent-PARENT-CHILD(8)`); a hidden one would get none.
pub fn pages() -> Vec<Page> {
    // As clap_mangen::generate_to does: no page for clap's `help` subcommand, at any level.
    fn without_help(cmd: Command) -> Command {
        cmd.disable_help_subcommand(true)
            .mut_subcommands(without_help)
    }
    let mut root = without_help(Cli::command());
    root.build();
    let mut pages = vec![page(&root, Some(DESCRIPTION), root_sections(&root))];
    add_subcommand_pages(&root, &mut pages);
    pages
}

fn add_subcommand_pages(cmd: &Command, pages: &mut Vec<Page>) {
    for sub in cmd.get_subcommands().filter(|c| !c.is_hide_set()) {
        pages.push(page(sub, None, sub_sections()));
        add_subcommand_pages(sub, pages);
    }
}

/// One page: clap_mangen's NAME, SYNOPSIS, DESCRIPTION (`description`, else the help text),
/// OPTIONS (and SUBCOMMANDS), then EXAMPLES from the command's `after_help` and the `extra`
/// sections, before clap_mangen's VERSION.
fn page(cmd: &Command, description: Option<&'static str>, extra: Roff) -> Page {
    let name = cmd
        .get_display_name()
        .unwrap_or_else(|| cmd.get_name())
        .to_string();
    // clap_mangen would print after_help as one filled paragraph ("EXTRA"): render it here.
    let help_examples = cmd.get_after_help().map(|s| s.to_string());
    let mut bare = cmd.clone().after_help(None::<&'static str>);
    if let Some(text) = description {
        bare = bare.long_about(text);
    }
    let mut buf = Vec::new();
    Man::new(bare)
        .section(SECTION)
        .render(&mut buf)
        .expect("rendering into memory");
    let mut roff = String::from_utf8(buf).expect("clap_mangen writes UTF-8");
    // clap_mangen writes an empty date as nothing, which shifts the source and the manual into
    // the wrong fields of .TH; write the line with every field quoted.
    let title = format!(
        ".TH \"{}\" \"{SECTION}\" \"\" \"drain-agent {}\" \"System Administration\"",
        name.to_uppercase().replace('-', "\\-"),
        env!("CARGO_PKG_VERSION")
    );
    let th = roff.find(".TH ").expect("clap_mangen writes .TH");
    let th_end = th + roff[th..].find('\n').expect("a whole line");
    roff.replace_range(th..th_end, &title);

    let mut sections = Roff::new();
    if let Some(text) = help_examples {
        examples_section(&mut sections, &text);
    }
    sections.extend([extra]);
    let tail = sections.render();
    match roff.find("\n.SH VERSION\n") {
        Some(at) => roff.insert_str(at + 1, &tail),
        None => roff.push_str(&tail),
    }
    Page {
        file: format!("{name}.{SECTION}"),
        roff,
    }
}

/// `Examples:` from `--help` as an EXAMPLES section: each `# comment` a paragraph, each run of
/// invocations an indented, unfilled block (so commands keep their line breaks).
fn examples_section(roff: &mut Roff, help: &str) {
    roff.control("SH", ["EXAMPLES"]);
    let mut in_block = false;
    for line in help.lines().skip(1).map(str::trim) {
        match line.strip_prefix('#') {
            Some(comment) => {
                if in_block {
                    roff.control("fi", []).control("RE", []);
                    in_block = false;
                }
                roff.control("PP", []).text([roman(comment.trim())]);
            }
            None if line.is_empty() => {}
            None => {
                if !in_block {
                    roff.control("RS", ["4"]).control("nf", []);
                    in_block = true;
                }
                roff.text([roman(line)]);
            }
        }
    }
    if in_block {
        roff.control("fi", []).control("RE", []);
    }
}

/// EXIT STATUS, FILES and SEE ALSO of drain-agent(8).
fn root_sections(root: &Command) -> Roff {
    let mut r = Roff::new();
    r.control("SH", ["EXIT STATUS"]);
    for (code, meaning) in EXIT_STATUS {
        r.control("TP", [])
            .text([bold(code.to_string())])
            .text([roman(*meaning)]);
    }
    r.control("SH", ["FILES"]);
    let files = [
        (
            DEFAULT_CONFIG_PATH,
            "The configuration (--config, DRAIN_AGENT_CONFIG). Unknown keys are errors.",
        ),
        (
            crate::daemon::control::DEFAULT_SOCKET_PATH,
            "The daemon's control socket, root only (--socket, DRAIN_AGENT_SOCKET).",
        ),
        (
            "/var/lib/drain-agent",
            "The state directory (state_dir): the lock, the change journals undrain replays \
             after a crash, the last drain's outcome, and keepalived's track file.",
        ),
        (
            crate::keepalived::DEFAULT_FIFO_PATH,
            "keepalived's vrrp_notify_fifo, followed by run (--fifo).",
        ),
        (
            "/usr/share/doc/drain-agent/",
            "README.md (how it works); with the Debian package, examples/: keepalived and agent \
             configurations for both nodes of a pair.",
        ),
    ];
    for (path, what) in files {
        r.control("TP", []).text([italic(path)]).text([roman(what)]);
    }
    r.control("SH", ["SEE ALSO"]);
    let mut refs: Vec<String> = root
        .get_subcommands()
        .filter(|c| !c.is_hide_set())
        .map(|c| format!("drain-agent-{}({SECTION})", c.get_name()))
        .collect();
    refs.extend(["keepalived(8)", "keepalived.conf(5)", "systemd.service(5)"].map(String::from));
    r.text([roman(refs.join(", "))]);
    r
}

/// SEE ALSO of a subcommand's page: the root page has the exit codes and files.
fn sub_sections() -> Roff {
    let mut r = Roff::new();
    r.control("SH", ["SEE ALSO"]);
    r.text([roman(format!(
        "drain-agent({SECTION}): exit status, files, the other commands."
    ))]);
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_status_lists_every_code_once_in_order() {
        let codes: Vec<u8> = EXIT_STATUS.iter().map(|(c, _)| *c).collect();
        assert_eq!(codes, (exit::OK..=exit::VIP_MOVED).collect::<Vec<u8>>());
    }

    #[test]
    fn one_page_per_subcommand_and_none_for_help() {
        let files: Vec<String> = pages().into_iter().map(|p| p.file).collect();
        let mut expected = vec!["drain-agent.8".to_string()];
        for c in Cli::command().get_subcommands() {
            expected.push(format!("drain-agent-{}.8", c.get_name()));
            for n in c.get_subcommands() {
                expected.push(format!("drain-agent-{}-{}.8", c.get_name(), n.get_name()));
            }
        }
        assert_eq!(files, expected);
        assert!(files.contains(&"drain-agent-man.8".to_string()));
        assert!(!files.iter().any(|f| f.contains("-help.")));
    }

    #[test]
    fn nested_subcommands_get_the_pages_their_parent_names() {
        let mut seen = Vec::new();
        let cmd = Command::new("x").subcommand(
            Command::new("maint")
                .about("Maintenance")
                .subcommand(Command::new("on").about("On"))
                .subcommand(Command::new("off").about("Off")),
        );
        let mut cmd = cmd
            .disable_help_subcommand(true)
            .mut_subcommands(|c| c.disable_help_subcommand(true));
        cmd.build();
        add_subcommand_pages(&cmd, &mut seen);
        let files: Vec<&str> = seen.iter().map(|p| p.file.as_str()).collect();
        assert_eq!(files, ["x-maint.8", "x-maint-on.8", "x-maint-off.8"]);
        // The parent's page names exactly those, in section 8, and no help page.
        assert!(
            seen[0]
                .roff
                .contains(".SH SUBCOMMANDS\n.TP\nx\\-maint\\-on(8)\nOn\n.TP\nx\\-maint\\-off(8)\n"),
            "{}",
            seen[0].roff
        );
        assert!(!seen[0].roff.contains("help(8)"));
    }

    #[test]
    fn pages_carry_examples_and_the_root_page_exit_codes_and_files() {
        let pages = pages();
        let root = &pages[0].roff;
        // The apostrophe preamble, then the title line with all five fields.
        let th = format!(
            ".TH \"DRAIN\\-AGENT\" \"8\" \"\" \"drain-agent {}\" \"System Administration\"\n",
            env!("CARGO_PKG_VERSION")
        );
        assert!(
            root.starts_with(&format!(".ie \\n(.g .ds Aq \\(aq\n.el .ds Aq '\n{th}")),
            "{root}"
        );
        for section in [
            "EXAMPLES",
            "\"EXIT STATUS\"",
            "FILES",
            "\"SEE ALSO\"",
            "SUBCOMMANDS",
        ] {
            assert!(root.contains(&format!(".SH {section}\n")), "{section}");
        }
        // The extra sections sit before clap_mangen's VERSION, which stays last.
        assert!(root.find(".SH EXAMPLES").unwrap() < root.find(".SH VERSION").unwrap());
        assert!(root.contains("\\fB12\\fR"));
        assert!(
            root.contains(".SH SUBCOMMANDS\n.TP\ndrain\\-agent\\-check(8)\n"),
            "{root}"
        );
        // clap_mangen's preamble, and one more before the sections added here.
        assert_eq!(root.matches(".ds Aq \\(aq").count(), 2, "{root}");
        let drain = pages
            .iter()
            .find(|p| p.file == "drain-agent-drain.8")
            .unwrap();
        assert!(drain.roff.contains(".TH \"DRAIN\\-AGENT\\-DRAIN\" \"8\" "));
        assert!(drain.roff.contains("\\-\\-abort\\-on\\-deadline"));
        // An example invocation, verbatim in an unfilled block, and its comment as a paragraph.
        assert!(drain.roff.contains(
            ".RS 4\n.nf\ndrain\\-agent drain \\-\\-deadline 90s \\-\\-abort\\-on\\-deadline\n"
        ));
        assert!(drain.roff.contains(".PP\nClients silent for 10 s"));
        // Not clap_mangen's filled rendering of after_help.
        assert!(!drain.roff.contains(".SH EXTRA"));
    }
}
