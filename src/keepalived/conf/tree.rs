//! The braces matched into a tree of statements, and the accessors every block reader uses to
//! take a statement's values or block with a clear error.

use super::error::{ConfError, Location};
use super::lexer::{Item, MAX_DEPTH};
use crate::keepalived::quoted;

/// A keyword line with its words and, if a `{` followed it, its block.
#[derive(Debug)]
pub(super) struct Stmt {
    pub(super) at: Location,
    pub(super) words: Vec<String>,
    pub(super) block: Option<Vec<Stmt>>,
}

impl Stmt {
    pub(super) fn keyword(&self) -> &str {
        &self.words[0]
    }
}

/// Matches the braces: a words item followed by `{` opens a block, `}` closes it.
pub(super) fn tree(items: Vec<Item>) -> Result<Vec<Stmt>, ConfError> {
    let mut frames: Vec<(Stmt, Vec<Stmt>)> = Vec::new();
    let mut top = Vec::new();
    let mut items = items.into_iter().peekable();
    while let Some(item) = items.next() {
        match item {
            Item::Words(at, words) => {
                let stmt = Stmt {
                    at,
                    words,
                    block: None,
                };
                if let Some(Item::Open(open)) = items.peek() {
                    if frames.len() >= MAX_DEPTH {
                        return Err(ConfError::TooDeep {
                            at: open.clone(),
                            what: "block",
                            max: MAX_DEPTH,
                        });
                    }
                    items.next();
                    frames.push((stmt, Vec::new()));
                } else {
                    frames.last_mut().map_or(&mut top, |f| &mut f.1).push(stmt);
                }
            }
            Item::Open(at) => return Err(ConfError::StrayOpen { at }),
            Item::Close(at) => {
                let (mut stmt, children) = frames.pop().ok_or(ConfError::UnbalancedClose { at })?;
                stmt.block = Some(children);
                frames.last_mut().map_or(&mut top, |f| &mut f.1).push(stmt);
            }
        }
    }
    if let Some((stmt, _)) = frames.pop() {
        return Err(ConfError::Unclosed {
            keyword: quoted(stmt.keyword()),
            at: stmt.at,
        });
    }
    Ok(top)
}
/// The block of a keyword that must have one and `args` values before it.
pub(super) fn block(stmt: &Stmt, args: usize) -> Result<&[Stmt], ConfError> {
    if stmt.words.len() != args + 1 {
        return Err(ConfError::Arity {
            at: stmt.at.clone(),
            keyword: stmt.keyword().to_string(),
            expected: if args == 0 {
                "takes no value before its block"
            } else {
                "takes one name before its block"
            },
        });
    }
    stmt.block
        .as_deref()
        .ok_or_else(|| ConfError::MissingBlock {
            at: stmt.at.clone(),
            keyword: stmt.keyword().to_string(),
        })
}

/// The lines of a value block (`virtual_ipaddress { ... }`), none of which may open a block.
pub(super) fn value_lines(stmt: &Stmt) -> Result<&[Stmt], ConfError> {
    let lines = block(stmt, 0)?;
    if let Some(nested) = lines.iter().find(|l| l.block.is_some()) {
        return Err(ConfError::UnexpectedBlock {
            at: nested.at.clone(),
            keyword: nested.keyword().to_string(),
        });
    }
    Ok(lines)
}

/// The values of a keyword that takes no block.
pub(super) fn values(stmt: &Stmt) -> Result<&[String], ConfError> {
    if stmt.block.is_some() {
        return Err(ConfError::UnexpectedBlock {
            at: stmt.at.clone(),
            keyword: stmt.keyword().to_string(),
        });
    }
    Ok(&stmt.words[1..])
}

/// The one value of a keyword.
pub(super) fn one(stmt: &Stmt) -> Result<&str, ConfError> {
    match values(stmt)? {
        [v] => Ok(v),
        _ => Err(ConfError::Arity {
            at: stmt.at.clone(),
            keyword: stmt.keyword().to_string(),
            expected: "takes one value",
        }),
    }
}

pub(super) fn bad(stmt: &Stmt, value: &str, expected: &'static str) -> ConfError {
    bad_in(stmt, stmt.keyword(), value, expected)
}

/// A bad value on a line of `keyword`'s value block.
pub(super) fn bad_in(line: &Stmt, keyword: &str, value: &str, expected: &'static str) -> ConfError {
    ConfError::BadValue {
        at: line.at.clone(),
        keyword: keyword.to_string(),
        value: quoted(value),
        expected,
    }
}
