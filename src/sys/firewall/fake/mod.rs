//! A fake firewall for tests without root: records every call, can fail chosen calls, and models
//! the kernel state well enough for the texts the planner writes (the model: `model`). Tests act
//! between two calls through hooks ([`FakeFirewall::hook`]).

mod model;

use model::FakeState;

use std::collections::{BTreeMap, VecDeque};

use super::{Firewall, FirewallError};
use crate::sys::process::ProcessError;

/// A call made to [`FakeFirewall`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FirewallCall {
    /// [`Firewall::restore`] with its text.
    Restore(String),
    /// [`Firewall::save_mangle`].
    SaveMangle,
    /// [`Firewall::save_mangle_counters`].
    SaveMangleCounters,
    /// [`Firewall::ipset_restore`] with its text.
    IpsetRestore(String),
    /// [`Firewall::ipset_names`].
    IpsetNames,
    /// [`Firewall::ipset_list_terse`].
    IpsetListTerse,
    /// [`Firewall::mangle_table_present`].
    MangleTablePresent,
    /// [`Firewall::drop_mangle_table_if_empty`].
    DropMangleTableIfEmpty,
}

/// Which operation an injected failure hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum FakeOp {
    /// [`Firewall::restore`].
    Restore,
    /// [`Firewall::save_mangle`].
    SaveMangle,
    /// [`Firewall::save_mangle_counters`].
    SaveMangleCounters,
    /// [`Firewall::ipset_restore`].
    IpsetRestore,
    /// [`Firewall::ipset_names`].
    IpsetNames,
    /// [`Firewall::ipset_list_terse`].
    IpsetListTerse,
    /// [`Firewall::mangle_table_present`].
    MangleTablePresent,
    /// [`Firewall::drop_mangle_table_if_empty`].
    DropMangleTableIfEmpty,
}

/// A fake firewall for tests without root: records every call, can fail chosen calls, and
/// models the kernel state well enough for the texts [`crate::plan`] writes: restore transactions
/// (`:C`, `-A`, `-I`, `-D`, `-F`, `-X`, all-or-nothing; `:C` flushes an existing chain as the
/// real one does), ipset `create`/`add`/`destroy` of hash and list sets with their fill (line by
/// line, *not* transactional, naming the failing line, as the real one), references to missing
/// sets or chains, the mangle table's presence, and the rules' packet counters. [`FakeFirewall::syns`]
/// plays SYNs through the rules the way the kernel would for the shapes the plan writes.
#[derive(Debug, Default)]
pub struct FakeFirewall {
    /// Every call, in order.
    pub calls: Vec<FirewallCall>,
    failures: BTreeMap<FakeOp, VecDeque<Option<FirewallError>>>,
    state: FakeState,
    syns_played: BTreeMap<u16, u64>,
    hooks: Hooks,
}

/// When a [`Hook`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookAt {
    /// Before the operation, before an injected failure is looked at; an error fails the call.
    Before,
    /// After the operation succeeded; an error fails the call (what it did stays done).
    After,
}

/// A test's code around an operation of the fake: it gets the fake (calls it makes run without
/// hooks, and are recorded like any other), the operation, and the text it applies (`""` for
/// those that apply none). A test double that must act between two calls (another tool racing
/// the agent, a clock that moves with each transaction) is a hook, not a wrapper re-delegating
/// every [`Firewall`] method.
pub type Hook = Box<dyn FnMut(&mut FakeFirewall, FakeOp, &str) -> Result<(), FirewallError>>;

#[derive(Default)]
struct Hooks(Vec<(HookAt, Hook)>);

impl std::fmt::Debug for Hooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} hook(s)", self.0.len())
    }
}

impl FakeFirewall {
    /// An empty namespace: no mangle table, no sets.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes the next call of `op` fail with `error` (queued: several calls fail in order).
    pub fn fail_next(&mut self, op: FakeOp, error: FirewallError) -> &mut Self {
        self.failures.entry(op).or_default().push_back(Some(error));
        self
    }

    /// Lets `skip` calls of `op` succeed, then fails the next one with `error`.
    pub fn fail_later(&mut self, op: FakeOp, skip: usize, error: FirewallError) -> &mut Self {
        let queue = self.failures.entry(op).or_default();
        queue.extend(std::iter::repeat_with(|| None).take(skip));
        queue.push_back(Some(error));
        self
    }

    /// Runs `hook` at `at` of every call (in the order the hooks were added).
    pub fn hook(
        &mut self,
        at: HookAt,
        hook: impl FnMut(&mut FakeFirewall, FakeOp, &str) -> Result<(), FirewallError> + 'static,
    ) -> &mut Self {
        self.hooks.0.push((at, Box::new(hook)));
        self
    }

    /// Runs `f` on this fake with no hook running: what another tool does to the firewall, as
    /// opposed to the calls under test.
    pub fn without_hooks<T>(&mut self, f: impl FnOnce(&mut FakeFirewall) -> T) -> T {
        let hooks = std::mem::take(&mut self.hooks.0);
        let out = f(self);
        let added = std::mem::replace(&mut self.hooks.0, hooks);
        self.hooks.0.extend(added);
        out
    }

    fn run_hooks(&mut self, at: HookAt, op: FakeOp, text: &str) -> Result<(), FirewallError> {
        // Taken out while they run, so that the calls a hook makes do not run hooks again.
        let mut hooks = std::mem::take(&mut self.hooks.0);
        let ran = hooks
            .iter_mut()
            .filter(|(when, _)| *when == at)
            .try_for_each(|(_, hook)| hook(self, op, text));
        hooks.append(&mut self.hooks.0);
        self.hooks.0 = hooks;
        ran
    }

    fn hooked<T>(
        &mut self,
        op: FakeOp,
        text: &str,
        call: impl FnOnce(&mut Self) -> Result<T, FirewallError>,
    ) -> Result<T, FirewallError> {
        self.run_hooks(HookAt::Before, op, text)?;
        let out = call(self)?;
        self.run_hooks(HookAt::After, op, text)?;
        Ok(out)
    }

    fn begin(&mut self, op: FakeOp, call: FirewallCall) -> Result<(), FirewallError> {
        self.calls.push(call);
        match self.failures.get_mut(&op).and_then(VecDeque::pop_front) {
            Some(Some(e)) => Err(e),
            _ => Ok(()),
        }
    }

    fn failed(tool: &str, line: usize, what: String) -> FirewallError {
        FirewallError::Process(ProcessError::Failed {
            binary: tool.into(),
            args: "(fake)".into(),
            status: "exit code 1".into(),
            stderr: format!("line {line}: {what}"),
        })
    }
}

impl Firewall for FakeFirewall {
    fn restore(&mut self, text: &str) -> Result<(), FirewallError> {
        self.hooked(FakeOp::Restore, text, |fw| fw.restore_unhooked(text))
    }

    fn save_mangle(&mut self) -> Result<String, FirewallError> {
        self.hooked(FakeOp::SaveMangle, "", |fw| fw.save_mangle_unhooked())
    }

    fn ipset_restore(&mut self, text: &str) -> Result<(), FirewallError> {
        self.hooked(FakeOp::IpsetRestore, text, |fw| {
            fw.ipset_restore_unhooked(text)
        })
    }

    fn ipset_names(&mut self) -> Result<Vec<String>, FirewallError> {
        self.hooked(FakeOp::IpsetNames, "", |fw| fw.ipset_names_unhooked())
    }

    fn ipset_list_terse(&mut self) -> Result<String, FirewallError> {
        self.hooked(FakeOp::IpsetListTerse, "", |fw| {
            fw.ipset_list_terse_unhooked()
        })
    }

    fn save_mangle_counters(&mut self) -> Result<String, FirewallError> {
        self.hooked(FakeOp::SaveMangleCounters, "", |fw| {
            fw.save_mangle_counters_unhooked()
        })
    }

    fn mangle_table_present(&mut self) -> Result<bool, FirewallError> {
        self.hooked(FakeOp::MangleTablePresent, "", |fw| {
            fw.mangle_table_present_unhooked()
        })
    }

    fn drop_mangle_table_if_empty(&mut self) -> Result<bool, FirewallError> {
        self.hooked(FakeOp::DropMangleTableIfEmpty, "", |fw| {
            fw.drop_mangle_table_if_empty_unhooked()
        })
    }
}
