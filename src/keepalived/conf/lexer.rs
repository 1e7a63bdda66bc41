//! From files to items: keepalived's line rules (comments, quotes, `{` and `}` splitting a
//! line), its `include` (with `*` and `?` in the file name), and the refusal of the
//! constructs whose meaning the reader cannot know (`$` parameters, `@` conditions, `~SEQ`).
//!
//! The rules follow keepalived 2.2's `read_line()`, `decomment()` and `alloc_strvec_r()` in
//! lib/parser.c: a comment starts at `#` or `!` outside quotes (`\#` and `\!` are the
//! characters themselves); a word ends at white space or `"`; `"..."` is one word without its
//! quotes; a `{` or `}` outside quotes is an item of its own wherever it stands; an `include`
//! line is the whole line, its pattern the rest of the line.

use std::io;
use std::path::{Path, PathBuf};

use super::error::{ConfError, Location};
use crate::keepalived::quoted;

/// How deep includes and blocks may nest. keepalived's own deepest blocks are four levels
/// (`virtual_server` > `real_server` > `HTTP_GET` > `url`); the limit keeps a hostile or broken
/// file from exhausting the stack.
pub const MAX_DEPTH: usize = 16;

/// The longest line keepalived reads whole: it reads with `fgets()` into 1024 bytes, so a
/// longer line would be taken as two.
pub const MAX_LINE: usize = 1022;

/// One item of the configuration, in order across all included files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Item {
    /// The words of a line up to its end or its next brace, quotes removed.
    Words(Location, Vec<String>),
    /// `{`
    Open(Location),
    /// `}`
    Close(Location),
}

/// What an entry of a directory is, as far as an `include` cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A regular file without any execute bit: keepalived reads it.
    Config,
    /// Anything else (directory, executable, device, ...): keepalived skips it when a pattern
    /// matches it.
    Other,
}

/// Where the reader gets files from: the file system, or (in tests) a map.
pub trait Files {
    /// The bytes of a file.
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// What `path` is (following symlinks, as keepalived's `stat()` does).
    fn kind(&self, path: &Path) -> io::Result<Kind>;
    /// The names in a directory, in any order.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// What `path` names, for telling that two paths are one file (an include cycle).
    fn identity(&self, path: &Path) -> PathBuf;
}

/// The real file system.
#[derive(Clone, Copy, Debug, Default)]
pub struct RealFiles;

impl Files for RealFiles {
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        std::fs::read(path)
    }

    fn kind(&self, path: &Path) -> io::Result<Kind> {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(path)?;
        Ok(
            if meta.is_file() && meta.permissions().mode() & 0o111 == 0 {
                Kind::Config
            } else {
                Kind::Other
            },
        )
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            names.push(entry?.file_name().to_string_lossy().into_owned());
        }
        Ok(names)
    }

    fn identity(&self, path: &Path) -> PathBuf {
        std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
    }
}

/// Reads `path` (whose bytes are `text`) and everything it includes into items.
pub struct Loader<'a> {
    files: &'a dyn Files,
    /// The files being read, outermost first (for cycle detection).
    stack: Vec<PathBuf>,
    /// Every file read, in order.
    pub read: Vec<PathBuf>,
    /// The items so far.
    pub items: Vec<Item>,
}

impl<'a> Loader<'a> {
    /// A loader reading included files from `files`.
    pub fn new(files: &'a dyn Files) -> Self {
        Loader {
            files,
            stack: Vec::new(),
            read: Vec::new(),
            items: Vec::new(),
        }
    }

    /// Reads one file's bytes and, recursively, its includes.
    pub fn file(&mut self, path: &Path, bytes: &[u8]) -> Result<(), ConfError> {
        let text = std::str::from_utf8(bytes).map_err(|e| {
            let before = &bytes[..e.valid_up_to()];
            let line = before.iter().filter(|b| **b == b'\n').count() + 1;
            ConfError::NotUtf8 { at: at(path, line) }
        })?;
        self.stack.push(path.to_path_buf());
        self.read.push(path.to_path_buf());
        for (n, raw) in text.split('\n').enumerate() {
            self.line(&at(path, n + 1), raw)?;
        }
        self.stack.pop();
        Ok(())
    }

    fn line(&mut self, at: &Location, raw: &str) -> Result<(), ConfError> {
        let raw = raw.trim_end_matches(['\r', '\n']);
        if raw.len() > MAX_LINE {
            return Err(ConfError::LineTooLong {
                at: at.clone(),
                max: MAX_LINE,
            });
        }
        let line = decomment(at, raw)?;
        special(at, &line)?;
        if let Some(text) = substitution(&line) {
            return Err(ConfError::Substitution {
                at: at.clone(),
                text: quoted(text),
            });
        }
        let mut rest = line.as_str();
        // What follows a brace is read as a line of its own, as keepalived does.
        loop {
            rest = rest.trim_start_matches(WHITE);
            if rest.is_empty() {
                return Ok(());
            }
            special(at, rest)?;
            if let Some(pattern) = include_pattern(rest) {
                return self.include(at, pattern);
            }
            if let Some(after) = rest.strip_prefix('{') {
                self.items.push(Item::Open(at.clone()));
                rest = after;
                continue;
            }
            if let Some(after) = rest.strip_prefix('}') {
                self.items.push(Item::Close(at.clone()));
                rest = after;
                continue;
            }
            let end = first_brace(rest).unwrap_or(rest.len());
            let words = words(&rest[..end]);
            if !words.is_empty() {
                self.items.push(Item::Words(at.clone(), words));
            }
            rest = &rest[end..];
        }
    }

    fn include(&mut self, at: &Location, pattern: &str) -> Result<(), ConfError> {
        if self.stack.len() >= MAX_DEPTH {
            return Err(ConfError::TooDeep {
                at: at.clone(),
                what: "include",
                max: MAX_DEPTH,
            });
        }
        let base = at.path.parent().unwrap_or(Path::new(""));
        // Lexically, without `.` components, so a cycle through `./x.conf` is seen as one.
        let full: PathBuf = base.join(pattern).components().collect();
        for path in expand(self.files, at, pattern, &full)? {
            let id = self.files.identity(&path);
            if let Some(first) = self.stack.iter().position(|p| self.files.identity(p) == id) {
                let mut chain: Vec<String> = self.stack[first..]
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect();
                chain.push(path.display().to_string());
                return Err(ConfError::IncludeCycle {
                    at: at.clone(),
                    path: quoted(&path.display().to_string()),
                    chain: chain.join(" -> "),
                });
            }
            let bytes = self.files.read(&path).map_err(|e| ConfError::IncludeRead {
                at: at.clone(),
                path: quoted(&path.display().to_string()),
                reason: e.to_string(),
            })?;
            self.file(&path, &bytes)?;
        }
        Ok(())
    }
}

/// keepalived's white space (`WHITE_SPACE_STR`).
const WHITE: [char; 6] = [' ', '\t', '\x0c', '\n', '\r', '\x0b'];

fn at(path: &Path, line: usize) -> Location {
    Location {
        path: path.to_path_buf(),
        line: u32::try_from(line).unwrap_or(u32::MAX),
    }
}

/// The line without its comment, its leading and trailing blanks, and with `\#` / `\!` turned
/// into the characters themselves (keepalived's `decomment()`).
fn decomment(at: &Location, raw: &str) -> Result<String, ConfError> {
    let mut out = String::with_capacity(raw.len());
    let mut quote = false;
    let mut chars = raw.trim_start_matches([' ', '\t']).chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                quote = !quote;
                out.push(c);
            }
            '\\' => match chars.next() {
                None => {
                    return Err(ConfError::Unsupported {
                        at: at.clone(),
                        what: "a line ending in '\\'".into(),
                        why: "keepalived continues only a $NAME= definition that way".into(),
                    })
                }
                Some('"') => {
                    // keepalived's comment stripper skips an escaped quote but its word
                    // splitter ends the quoted word there: the two disagree.
                    return Err(ConfError::Unsupported {
                        at: at.clone(),
                        what: "an escaped quote (\\\")".into(),
                        why: "keepalived's parser reads it two ways".into(),
                    });
                }
                Some(n @ ('#' | '!')) if !quote => out.push(n),
                Some(n) => {
                    out.push('\\');
                    out.push(n);
                }
            },
            '#' | '!' if !quote => break,
            _ => out.push(c),
        }
    }
    if quote {
        return Err(ConfError::UnterminatedQuote { at: at.clone() });
    }
    Ok(out.trim_end_matches([' ', '\t']).to_string())
}

/// The first `$NAME` or `${...}` in the line, which keepalived would replace.
fn substitution(line: &str) -> Option<&str> {
    let start = line.char_indices().find_map(|(i, c)| {
        if c != '$' {
            return None;
        }
        // `$` is one byte, so `i + 1` is a character boundary.
        let next = line[i + 1..].chars().next()?;
        (next.is_ascii_alphabetic() || next == '_' || next == '{').then_some(i)
    })?;
    let end = line[start + 1..]
        .find(|c: char| WHITE.contains(&c) || c == '"')
        .map_or(line.len(), |e| start + 1 + e);
    Some(&line[start..end])
}

/// Refuses a (logical) line that keepalived reads as a condition, definition or sequence.
fn special(at: &Location, line: &str) -> Result<(), ConfError> {
    if line.starts_with('@') {
        return Err(ConfError::Conditional { at: at.clone() });
    }
    if line.starts_with("~SEQ") || line.starts_with("~LST") {
        return Err(ConfError::Sequence { at: at.clone() });
    }
    if let Some(def) = line.strip_prefix('$') {
        let name_end = def
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(def.len());
        let name = &def[..name_end];
        let starts_well = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_');
        if starts_well
            && def[name_end..]
                .trim_start_matches([' ', '\t'])
                .starts_with('=')
        {
            return Err(ConfError::Definition {
                at: at.clone(),
                name: quoted(name),
            });
        }
    }
    Ok(())
}

/// The pattern of an `include` line (also `includer`, `includem`, `includew`, `includeb`,
/// `includea`, which differ only in which problems keepalived reports).
fn include_pattern(line: &str) -> Option<&str> {
    let rest = line.strip_prefix("include")?;
    let rest = match rest.chars().next()? {
        c if c == ' ' || c == '\t' => rest,
        'r' | 'm' | 'w' | 'b' | 'a' => rest[1..].strip_prefix([' ', '\t'])?,
        _ => return None,
    };
    let pattern = rest.trim_matches([' ', '\t']);
    (!pattern.is_empty()).then_some(pattern)
}

/// The byte index of the first `{` or `}` outside quotes.
fn first_brace(line: &str) -> Option<usize> {
    let mut quote = false;
    line.char_indices().find_map(|(i, c)| match c {
        '"' => {
            quote = !quote;
            None
        }
        '{' | '}' if !quote => Some(i),
        _ => None,
    })
}

/// Splits a brace-free piece of a line into words, a `"..."` being one word without quotes.
fn words(piece: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = piece;
    loop {
        rest = rest.trim_start_matches(WHITE);
        if rest.is_empty() {
            return out;
        }
        if let Some(inner) = rest.strip_prefix('"') {
            // decomment() has checked that every quote closes.
            let end = inner.find('"').unwrap_or(inner.len());
            out.push(inner[..end].to_string());
            rest = inner.get(end + 1..).unwrap_or("");
        } else {
            let end = rest
                .find(|c: char| WHITE.contains(&c) || c == '"')
                .unwrap_or(rest.len());
            out.push(rest[..end].to_string());
            rest = &rest[end..];
        }
    }
}

/// The files an include names, in the order keepalived reads them (glob(3) sorts them).
fn expand(
    files: &dyn Files,
    at: &Location,
    pattern: &str,
    full: &Path,
) -> Result<Vec<PathBuf>, ConfError> {
    let refuse = |reason: &str| ConfError::IncludePattern {
        at: at.clone(),
        pattern: quoted(pattern),
        reason: reason.to_string(),
    };
    if pattern.contains(['[', '{', '\\']) {
        return Err(refuse(
            "only '*' and '?' are supported in include patterns (no [...], {...} or \\)",
        ));
    }
    let name = full
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let dir = full.parent().unwrap_or(Path::new(""));
    if dir.to_string_lossy().contains(['*', '?']) {
        return Err(refuse(
            "a wildcard is supported in the file name only, not in a directory",
        ));
    }
    if !name.contains(['*', '?']) {
        let kind = files.kind(full).map_err(|e| ConfError::IncludeRead {
            at: at.clone(),
            path: quoted(&full.display().to_string()),
            reason: e.to_string(),
        })?;
        if kind != Kind::Config {
            return Err(ConfError::IncludeRead {
                at: at.clone(),
                path: quoted(&full.display().to_string()),
                reason: "not a regular non-executable file (keepalived skips it)".into(),
            });
        }
        return Ok(vec![full.to_path_buf()]);
    }
    let listed = if dir.as_os_str().is_empty() {
        files.list(Path::new("."))
    } else {
        files.list(dir)
    };
    // A pattern whose directory does not exist matches nothing, as with glob(3).
    let mut names: Vec<String> = listed
        .unwrap_or_default()
        .into_iter()
        .filter(|n| glob_match(&name, n))
        .collect();
    names.sort();
    Ok(names
        .into_iter()
        .map(|n| dir.join(n))
        // glob(3) matches directories and executables too; keepalived then skips them.
        .filter(|p| files.kind(p).is_ok_and(|k| k == Kind::Config))
        .collect())
}

/// glob(3) on one path component: `*` any run, `?` one character, and a leading `.` only
/// matched by a leading `.` in the pattern.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    if name.starts_with('.') && !pattern.starts_with('.') {
        return false;
    }
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    // Iterative match with backtracking to the last `*`: linear in practice, no recursion.
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ni));
            pi += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}
