//! Why a keepalived configuration was refused: one variant per reason, each with the file and
//! line it is about, displayed as one line `FILE:LINE: what`.

use std::fmt;
use std::path::PathBuf;

use thiserror::Error;

/// A place in a configuration file: the file as it was opened (the top file as given, an
/// included one as its pattern resolved) and the 1-based line.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Location {
    /// The file.
    pub path: PathBuf,
    /// The line, counting from 1.
    pub line: u32,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Debug escaping of a path would add quotes; a path cannot hold a newline here (it
        // comes from one line of a file or from the caller), so plain display keeps one line.
        write!(f, "{}:{}", self.path.display(), self.line)
    }
}

/// A keepalived configuration the reader refuses. Quoted values are cut and escaped, so every
/// message is one line.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ConfError {
    /// The top file could not be read (it has no line yet, so the line is 0).
    #[error("{at}: cannot read the file: {reason}")]
    Read {
        /// The file, line 0.
        at: Location,
        /// The operating system's reason.
        reason: String,
    },
    /// A file is not UTF-8 (the line is the one holding the first invalid byte).
    #[error("{at}: the file is not UTF-8 text")]
    NotUtf8 {
        /// Where the first invalid byte is.
        at: Location,
    },
    /// A line longer than keepalived's line buffer, which keepalived would read as two lines.
    #[error("{at}: line longer than keepalived's {max} bytes (keepalived would split it)")]
    LineTooLong {
        /// The line.
        at: Location,
        /// The longest line keepalived reads whole.
        max: usize,
    },
    /// A `"` with no closing `"` on the same line.
    #[error("{at}: unterminated quote")]
    UnterminatedQuote {
        /// The line.
        at: Location,
    },
    /// `$NAME` or `${NAME}`: keepalived's parameter substitution, whose value the reader cannot
    /// know (definitions, built-ins such as `${_RANDOM}`).
    #[error("{at}: parameter substitution {text} is not supported: write the value itself")]
    Substitution {
        /// The line.
        at: Location,
        /// The `$...` text, quoted.
        text: String,
    },
    /// `$NAME=...`: a keepalived parameter definition.
    #[error("{at}: parameter definition {name} is not supported: write the values themselves")]
    Definition {
        /// The line.
        at: Location,
        /// The name defined, quoted.
        name: String,
    },
    /// A line starting with `@`: kept or dropped by keepalived's `--config-id`, which the
    /// reader does not know.
    #[error("{at}: conditional line (@config_id) is not supported: its meaning depends on keepalived's --config-id")]
    Conditional {
        /// The line.
        at: Location,
    },
    /// A line starting with `~` (`~SEQ(...)`, `~LST(...)`): a generated sequence of lines.
    #[error("{at}: sequence (~SEQ / ~LST) is not supported: write the lines out")]
    Sequence {
        /// The line.
        at: Location,
    },
    /// Some other construct whose meaning keepalived's parser makes ambiguous.
    #[error("{at}: {what} is not supported: {why}")]
    Unsupported {
        /// The line.
        at: Location,
        /// What was found.
        what: String,
        /// Why it is refused, or what to write instead.
        why: String,
    },
    /// An `include` pattern the reader cannot expand the way glob(3) would.
    #[error("{at}: include {pattern}: {reason}")]
    IncludePattern {
        /// The include line.
        at: Location,
        /// The pattern, quoted.
        pattern: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An `include` of one file (no wildcard) that does not exist or cannot be read.
    #[error("{at}: include {path}: {reason}")]
    IncludeRead {
        /// The include line.
        at: Location,
        /// The file, quoted.
        path: String,
        /// The reason.
        reason: String,
    },
    /// A file that includes itself, directly or through others.
    #[error("{at}: include {path}: include cycle ({chain})")]
    IncludeCycle {
        /// The include line that closes the cycle.
        at: Location,
        /// The file included again, quoted.
        path: String,
        /// The files of the cycle, `a -> b -> a`.
        chain: String,
    },
    /// Includes or blocks nested deeper than the reader follows.
    #[error("{at}: {what} nested deeper than {max} levels")]
    TooDeep {
        /// Where the level past the limit starts.
        at: Location,
        /// `include` or `block`.
        what: &'static str,
        /// The limit.
        max: usize,
    },
    /// A `}` that closes no block.
    #[error("{at}: '}}' closes no block")]
    UnbalancedClose {
        /// The `}`.
        at: Location,
    },
    /// A `{` with no keyword before it.
    #[error("{at}: '{{' with no keyword before it")]
    StrayOpen {
        /// The `{`.
        at: Location,
    },
    /// A block that is still open at the end of the configuration.
    #[error("{at}: block {keyword} is never closed (missing '}}')")]
    Unclosed {
        /// Where the block's keyword is.
        at: Location,
        /// The keyword, quoted.
        keyword: String,
    },
    /// A keyword that needs a `{ ... }` block without one.
    #[error("{at}: {keyword} needs a '{{ ... }}' block")]
    MissingBlock {
        /// The keyword's line.
        at: Location,
        /// The keyword.
        keyword: String,
    },
    /// A keyword that takes values, given a block.
    #[error("{at}: {keyword} takes no block")]
    UnexpectedBlock {
        /// The keyword's line.
        at: Location,
        /// The keyword.
        keyword: String,
    },
    /// A keyword given the wrong number of values.
    #[error("{at}: {keyword} {expected}")]
    Arity {
        /// The keyword's line.
        at: Location,
        /// The keyword.
        keyword: String,
        /// What it takes, e.g. "takes one value".
        expected: &'static str,
    },
    /// A value that does not parse.
    #[error("{at}: {keyword}: {value} is not {expected}")]
    BadValue {
        /// The line.
        at: Location,
        /// The keyword the value belongs to.
        keyword: String,
        /// The value, quoted.
        value: String,
        /// What it should be.
        expected: &'static str,
    },
    /// A virtual address that is not an IP address with an optional prefix length.
    #[error("{at}: virtual address {text}: {reason}")]
    Vip {
        /// The address's line.
        at: Location,
        /// The address as written, quoted.
        text: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The same thing defined or set twice, where keepalived would keep one of them and the
    /// reader will not guess which.
    #[error("{at}: {what} again (first at {first})")]
    Duplicate {
        /// The second one.
        at: Location,
        /// What was repeated, e.g. `vrrp_instance "VI_1"`.
        what: String,
        /// The first one.
        first: Location,
    },
    /// A block without a keyword it must have (`virtual_router_id`, a track file's `file`).
    #[error("{at}: {within} has no {keyword}")]
    Missing {
        /// The block's line.
        at: Location,
        /// The block, e.g. `vrrp_instance "VI_1"`.
        within: String,
        /// The missing keyword.
        keyword: &'static str,
    },
    /// A sync group naming an instance that is not defined.
    #[error("{at}: vrrp_sync_group {group}: no vrrp_instance {instance}")]
    UnknownInstance {
        /// The group's member line.
        at: Location,
        /// The group, quoted.
        group: String,
        /// The missing instance, quoted.
        instance: String,
    },
    /// An instance in two sync groups (keepalived refuses the second).
    #[error("{at}: vrrp_instance {instance} is already in vrrp_sync_group {group}")]
    InTwoGroups {
        /// The second group's member line.
        at: Location,
        /// The instance, quoted.
        instance: String,
        /// The first group, quoted.
        group: String,
    },
    /// An instance tracking a `track_file` that is not defined.
    #[error("{at}: track_file {name} is not defined (no track_file {name} {{ file ... }} block)")]
    UnknownTrackFile {
        /// The reference's line.
        at: Location,
        /// The track file's name, quoted.
        name: String,
    },
}
