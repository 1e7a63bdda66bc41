//! The arguments keepalived passes a `notify` script: `TYPE NAME STATE [PRIORITY]`.

use serde::Serialize;
use thiserror::Error;

use super::quoted;

/// Whether keepalived reports a VRRP instance or a sync group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum VrrpKind {
    /// `INSTANCE`: a `vrrp_instance`.
    Instance,
    /// `GROUP`: a `vrrp_sync_group`.
    Group,
}

impl VrrpKind {
    /// The word keepalived uses.
    pub fn as_str(self) -> &'static str {
        match self {
            VrrpKind::Instance => "INSTANCE",
            VrrpKind::Group => "GROUP",
        }
    }

    pub(super) fn from_word(word: &str) -> Option<VrrpKind> {
        match word {
            "INSTANCE" => Some(VrrpKind::Instance),
            "GROUP" => Some(VrrpKind::Group),
            _ => None,
        }
    }
}

impl std::fmt::Display for VrrpKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A VRRP state as keepalived names it in notify arguments and FIFO lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum VrrpState {
    /// Owns the virtual addresses.
    Master,
    /// Standing by.
    Backup,
    /// A tracked interface, script or file failed; the instance gave up its addresses.
    Fault,
    /// keepalived is stopping.
    Stop,
    /// The instance was removed by a reload (only with `notify_deleted`; FAULT otherwise).
    Deleted,
}

impl VrrpState {
    /// The word keepalived uses.
    pub fn as_str(self) -> &'static str {
        match self {
            VrrpState::Master => "MASTER",
            VrrpState::Backup => "BACKUP",
            VrrpState::Fault => "FAULT",
            VrrpState::Stop => "STOP",
            VrrpState::Deleted => "DELETED",
        }
    }

    pub(super) fn from_word(word: &str) -> Option<VrrpState> {
        match word {
            "MASTER" => Some(VrrpState::Master),
            "BACKUP" => Some(VrrpState::Backup),
            "FAULT" => Some(VrrpState::Fault),
            "STOP" => Some(VrrpState::Stop),
            "DELETED" => Some(VrrpState::Deleted),
            _ => None,
        }
    }
}

impl std::fmt::Display for VrrpState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A state change keepalived announces, from `notify` arguments or a FIFO line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NotifyArgs {
    /// Instance or sync group.
    pub kind: VrrpKind,
    /// The `vrrp_instance` or `vrrp_sync_group` name.
    pub name: String,
    /// The state entered.
    pub state: VrrpState,
    /// Effective priority (0 for groups); absent when keepalived older than 1.3 called the script.
    pub priority: Option<u8>,
}

/// Why `notify` arguments were rejected. Display is one line naming the offending argument.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NotifyError {
    /// Not 3 or 4 arguments.
    #[error("notify: expected TYPE NAME STATE [PRIORITY] as keepalived passes them, got {got} argument(s)")]
    Count {
        /// How many arguments there were.
        got: usize,
    },
    /// The first argument is not INSTANCE or GROUP.
    #[error("notify: TYPE {value} is not INSTANCE or GROUP")]
    Type {
        /// The argument, quoted.
        value: String,
    },
    /// The name cannot be a keepalived instance or group name.
    #[error("notify: NAME {value} {reason}")]
    Name {
        /// The argument, quoted.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The third argument is not a state keepalived reports.
    #[error("notify: STATE {value} is not MASTER, BACKUP, FAULT, STOP or DELETED")]
    State {
        /// The argument, quoted.
        value: String,
    },
    /// The fourth argument is not a priority.
    #[error("notify: PRIORITY {value} is not a whole number from 0 to 255")]
    Priority {
        /// The argument, quoted.
        value: String,
    },
}

/// Checks a keepalived instance or group name; `None` if acceptable.
pub(super) fn name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("is empty")
    } else if name.chars().any(char::is_control) {
        // keepalived's config parser splits on whitespace and cannot produce these; accepting
        // them would let a caller forge extra log lines.
        Some("contains control characters")
    } else if name.contains('"') {
        // The FIFO format quotes the name without escaping, so keepalived cannot use one.
        Some("contains a double quote")
    } else {
        None
    }
}

/// Parses a priority as keepalived prints it (`%d` of an 8-bit value): plain decimal digits.
pub(super) fn parse_priority(text: &str) -> Option<u8> {
    if text.is_empty() || text.len() > 3 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

impl NotifyArgs {
    /// Parses the arguments keepalived appended to the `notify` command (`TYPE NAME STATE
    /// PRIORITY`; PRIORITY may be absent). Every word is checked exactly; the error names the
    /// first bad argument.
    pub fn parse(args: &[String]) -> Result<NotifyArgs, NotifyError> {
        if !(3..=4).contains(&args.len()) {
            return Err(NotifyError::Count { got: args.len() });
        }
        let kind = VrrpKind::from_word(&args[0]).ok_or_else(|| NotifyError::Type {
            value: quoted(&args[0]),
        })?;
        if let Some(reason) = name_problem(&args[1]) {
            return Err(NotifyError::Name {
                value: quoted(&args[1]),
                reason,
            });
        }
        let state = VrrpState::from_word(&args[2]).ok_or_else(|| NotifyError::State {
            value: quoted(&args[2]),
        })?;
        let priority = match args.get(3) {
            None => None,
            Some(p) => {
                Some(parse_priority(p).ok_or_else(|| NotifyError::Priority { value: quoted(p) })?)
            }
        };
        Ok(NotifyArgs {
            kind,
            name: args[1].clone(),
            state,
            priority,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| w.to_string()).collect()
    }

    #[test]
    fn notify_arguments_as_keepalived_passes_them() {
        let n = NotifyArgs::parse(&args(&["INSTANCE", "VI_1", "MASTER", "150"])).unwrap();
        assert_eq!(
            n,
            NotifyArgs {
                kind: VrrpKind::Instance,
                name: "VI_1".into(),
                state: VrrpState::Master,
                priority: Some(150)
            }
        );
        let g = NotifyArgs::parse(&args(&["GROUP", "G1", "FAULT", "0"])).unwrap();
        assert_eq!(
            (g.kind, g.state, g.priority),
            (VrrpKind::Group, VrrpState::Fault, Some(0))
        );
        for (word, state) in [
            ("BACKUP", VrrpState::Backup),
            ("STOP", VrrpState::Stop),
            ("DELETED", VrrpState::Deleted),
        ] {
            let n = NotifyArgs::parse(&args(&["INSTANCE", "x", word, "255"])).unwrap();
            assert_eq!(n.state, state);
        }
    }

    #[test]
    fn notify_without_priority_is_accepted() {
        let n = NotifyArgs::parse(&args(&["INSTANCE", "VI_1", "BACKUP"])).unwrap();
        assert_eq!(n.priority, None);
    }

    #[test]
    fn notify_errors_name_the_bad_argument_on_one_line() {
        let cases: &[(&[&str], &str)] = &[
            (&[], "got 0 argument(s)"),
            (&["INSTANCE", "VI_1"], "got 2 argument(s)"),
            (&["INSTANCE", "VI_1", "MASTER", "1", "x"], "got 5"),
            (&["instance", "VI_1", "MASTER", "1"], "TYPE \"instance\""),
            (&["INSTANCE", "", "MASTER", "1"], "NAME \"\" is empty"),
            (&["INSTANCE", "a\nb", "MASTER", "1"], "control characters"),
            (&["INSTANCE", "a\"b", "MASTER", "1"], "double quote"),
            (&["INSTANCE", "VI_1", "master", "1"], "STATE \"master\""),
            (
                &["INSTANCE", "VI_1", "{UNKNOWN}", "1"],
                "STATE \"{UNKNOWN}\"",
            ),
            (&["INSTANCE", "VI_1", "MASTER", "256"], "PRIORITY \"256\""),
            (&["INSTANCE", "VI_1", "MASTER", "-1"], "PRIORITY \"-1\""),
            (&["INSTANCE", "VI_1", "MASTER", "+1"], "PRIORITY \"+1\""),
            (&["INSTANCE", "VI_1", "MASTER", ""], "PRIORITY \"\""),
            (&["INSTANCE", "VI_1", "MASTER", "0100"], "PRIORITY \"0100\""),
        ];
        for (words, expected) in cases {
            let e = NotifyArgs::parse(&args(words)).unwrap_err().to_string();
            assert!(e.contains(expected), "{words:?}: {e}");
            assert!(!e.contains('\n'), "{words:?}: multi-line error {e:?}");
        }
    }

    #[test]
    fn long_arguments_are_cut_in_errors() {
        let long = "x".repeat(10_000);
        let e = NotifyArgs::parse(&args(&[&long, "n", "MASTER"]))
            .unwrap_err()
            .to_string();
        assert!(e.len() < 200, "{e}");
    }
}
