//! The divert's sequences, written once against the [`Firewall`] adapter: install (all or
//! nothing), seal, withdraw, remove (keeping going past each error), and reading the counters. The
//! texts come from the planner ([`DivertPlan`]); what the kernel shows is read back and checked
//! against what the planner expects.

use crate::plan::sets::DivertCounters;
use crate::plan::{DivertPlan, Phase, ReadBackError};
use crate::sys::firewall::{Firewall, FirewallError};

/// Why a divert sequence failed. Display is one line.
#[derive(Debug, thiserror::Error)]
pub enum DivertError {
    /// The adapter failed.
    #[error(transparent)]
    Firewall(#[from] FirewallError),
    /// Sets named like ours (`P-<port>`) exist already; they are not ours to take over.
    #[error("ipset(s) {} already exist; refusing to install over sets this agent did not create (remove them, or change firewall.chain_prefix)", names.join(", "))]
    SetsExist {
        /// The conflicting names.
        names: Vec<String>,
    },
    /// Chains with our names exist already in table mangle.
    #[error("chain(s) {} already exist in table mangle; refusing to install over them (a left-over from a crash is removed by the agent's recovery)", chains.join(", "))]
    ChainsExist {
        /// The conflicting chains.
        chains: Vec<String>,
    },
    /// After a change, `iptables-save` does not show what it should.
    #[error("read-back after {phase}: {source}")]
    ReadBack {
        /// The phase that was checked.
        phase: Phase,
        /// What differs.
        source: ReadBackError,
    },
    /// Something of ours is still there after a removal.
    #[error("still present after removal: {}", leftovers.join(", "))]
    Leftovers {
        /// Rule lines and set names still present.
        leftovers: Vec<String>,
    },
    /// Install failed and undoing its partial work failed too.
    #[error("{cause}; undoing the partial install also failed: {}", join(cleanup))]
    InstallCleanup {
        /// Why install failed.
        cause: Box<DivertError>,
        /// What went wrong while undoing it.
        cleanup: Vec<DivertError>,
    },
}

fn join(errors: &[DivertError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Everything that went wrong during a removal, which keeps going past each error.
#[derive(Debug, thiserror::Error)]
#[error("firewall removal: {}", join(errors))]
pub struct TeardownError {
    /// The errors, in the order they happened.
    pub errors: Vec<DivertError>,
}

/// What [`prepare`] observed before anything was changed; the caller journals it, hands it to
/// [`apply_install`], and hands `mangle_table_was_present` back to [`remove`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstallReceipt {
    /// Whether `table ip mangle` existed before the install created it.
    pub mangle_table_was_present: bool,
}

/// Installs the divert all-or-nothing: [`prepare`], then [`apply_install`].
pub fn install(fw: &mut dyn Firewall, plan: &DivertPlan) -> Result<InstallReceipt, DivertError> {
    let receipt = prepare(fw, plan)?;
    apply_install(fw, plan, &receipt)?;
    Ok(receipt)
}

/// Everything the install must know before it changes anything: whether the mangle table exists
/// (so removal knows whether to drop it again), and that none of our sets or chains exists (a
/// set may belong to something else; a `:CHAIN` line in `--noflush` mode would silently flush an
/// existing chain). Changes nothing.
pub fn prepare(fw: &mut dyn Firewall, plan: &DivertPlan) -> Result<InstallReceipt, DivertError> {
    fw.require_tools()?;
    let mangle_table_was_present = fw.mangle_table_present()?;
    let conflicting = plan.existing_sets(&fw.ipset_names()?);
    if !conflicting.is_empty() {
        return Err(DivertError::SetsExist { names: conflicting });
    }
    let chains = plan.existing_chains(&fw.save_mangle()?);
    if !chains.is_empty() {
        return Err(DivertError::ChainsExist { chains });
    }
    Ok(InstallReceipt {
        mangle_table_was_present,
    })
}

/// Creates the sets (one `ipset restore`), applies the rules in one transaction and reads them
/// back. On any failure, undoes what it did and returns the cause.
pub fn apply_install(
    fw: &mut dyn Firewall,
    plan: &DivertPlan,
    receipt: &InstallReceipt,
) -> Result<(), DivertError> {
    let undo = |fw: &mut dyn Firewall, cause: DivertError| {
        let cleanup = match remove(fw, plan, !receipt.mangle_table_was_present) {
            Ok(()) => return cause,
            Err(teardown) => teardown.errors,
        };
        DivertError::InstallCleanup {
            cause: Box::new(cause),
            cleanup,
        }
    };
    // Sets first: a rule naming a missing set is rejected. All in one `ipset restore`, which is
    // not transactional: it stops at the first failing line and keeps the lines before it, and
    // names that line ("Error in line N"), so exactly the sets those lines created are ours to
    // destroy (a set of one of our names that appeared meanwhile, the usual cause, is not).
    let create = plan.ipset_create();
    if let Err(cause) = fw.ipset_restore(&create).map_err(DivertError::from) {
        let created: Vec<String> = match failed_line(&cause) {
            Some(n) => create
                .lines()
                .take(n.saturating_sub(1))
                .filter_map(DivertPlan::created_by)
                .map(String::from)
                .collect(),
            // Killed, or a message we do not know: every set of the plan that exists now was
            // made by this call, since [`prepare`] saw none of them (the drain lock keeps other
            // drain-agent runs out).
            None => match fw.ipset_names() {
                Ok(now) => plan.existing_sets(&now),
                Err(e) => {
                    return Err(DivertError::InstallCleanup {
                        cause: Box::new(cause),
                        cleanup: vec![e.into()],
                    })
                }
            },
        };
        let Some(destroy) = plan.ipset_teardown_observed(&created) else {
            return Err(cause);
        };
        return Err(match fw.ipset_restore(&destroy) {
            Ok(()) => cause,
            Err(e) => DivertError::InstallCleanup {
                cause: Box::new(cause),
                cleanup: vec![e.into()],
            },
        });
    }
    crate::faults::point("divert.sets-created");
    if let Err(cause) = fw.restore(&plan.install_rules()).map_err(DivertError::from) {
        return Err(undo(fw, cause));
    }
    if let Err(cause) = verify(fw, plan, Phase::Installed) {
        return Err(undo(fw, cause));
    }
    Ok(())
}

/// Seals the divert at the end of the drain (an unrecorded SYN is dropped from now on instead of
/// starting a local flow) and verifies.
pub fn seal(fw: &mut dyn Firewall, plan: &DivertPlan) -> Result<(), DivertError> {
    fw.restore(&plan.seal_rules())?;
    verify(fw, plan, Phase::Sealed)
}

/// Reads the divert's packet counters.
pub fn counters(fw: &mut dyn Firewall, plan: &DivertPlan) -> Result<DivertCounters, DivertError> {
    Ok(plan.counters(&fw.save_mangle_counters()?))
}

/// Reads `iptables-save -t mangle` back and checks it shows exactly what `phase` should.
pub fn verify(fw: &mut dyn Firewall, plan: &DivertPlan, phase: Phase) -> Result<(), DivertError> {
    let saved = fw.save_mangle()?;
    plan.check_read_back(phase, &saved)
        .map_err(|source| DivertError::ReadBack { phase, source })
}

/// Stops diverting new flows (flows already diverted keep going to the peer) and verifies.
pub fn withdraw(fw: &mut dyn Firewall, plan: &DivertPlan) -> Result<(), DivertError> {
    fw.restore(&plan.withdraw_rules())?;
    verify(fw, plan, Phase::Withdrawn)
}

/// Removes every rule, chain and set of ours that is present (from any earlier configuration
/// with the same prefix too), then, if `drop_mangle_table` (the table was absent before the
/// install), drops the mangle table if it is empty. Keeps going past each error, checks that
/// nothing of ours is left, and reports every error.
pub fn remove(
    fw: &mut dyn Firewall,
    plan: &DivertPlan,
    drop_mangle_table: bool,
) -> Result<(), TeardownError> {
    let mut errors = Vec::new();
    match fw.save_mangle() {
        Ok(saved) => {
            if let Some(text) = plan.remove_rules_observed(&saved) {
                if let Err(e) = fw.restore(&text) {
                    errors.push(e.into());
                }
            }
        }
        Err(e) => errors.push(e.into()),
    }
    // Only once the rules are gone may the sets be emptied before they are destroyed: rules left
    // by a failed removal still read the record, and an emptied record would send the node's own
    // flows to the peer.
    let rules_gone = errors.is_empty();
    crate::faults::point("divert.rules-removed");
    // Sets after rules: a set still referenced by a rule cannot be destroyed.
    match fw.ipset_names() {
        Ok(names) => {
            let text = if rules_gone {
                plan.ipset_teardown_observed(&names)
            } else {
                plan.ipset_destroy_observed(&names)
            };
            if let Some(text) = text {
                if let Err(e) = fw.ipset_restore(&text) {
                    errors.push(e.into());
                }
            }
        }
        Err(e) => errors.push(e.into()),
    }
    if drop_mangle_table {
        if let Err(e) = fw.drop_mangle_table_if_empty() {
            errors.push(e.into());
        }
    }
    let mut leftovers = Vec::new();
    match fw.save_mangle() {
        Ok(saved) => leftovers.extend(plan.owned_lines(&saved)),
        Err(e) => errors.push(e.into()),
    }
    match fw.ipset_names() {
        Ok(names) => {
            if let Some(text) = plan.ipset_destroy_observed(&names) {
                leftovers.extend(text.lines().map(|l| l.replace("destroy ", "ipset ")));
            }
        }
        Err(e) => errors.push(e.into()),
    }
    if !leftovers.is_empty() {
        errors.push(DivertError::Leftovers { leftovers });
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(TeardownError { errors })
    }
}

/// The line a failed `ipset restore` names, if the failure was one.
fn failed_line(e: &DivertError) -> Option<usize> {
    match e {
        DivertError::Firewall(f) => f.failed_line(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::sys::firewall::{FakeFirewall, FakeOp, FirewallCall, HookAt};
    use crate::sys::process::ProcessError;

    const CONFIG: &str = "\
vips:
  - address: 198.18.0.100
    ports: [80, 7]
ingress_interface: eth0
peer: 198.18.0.12
tracked_interface: trk0
";

    #[test]
    fn errors_made_of_several_name_each_one_on_one_line() {
        let sets = || DivertError::SetsExist {
            names: vec!["D-80".into(), "D-7".into()],
        };
        let left = || DivertError::Leftovers {
            leftovers: vec!["-A DRAIN-PRE x".into()],
        };
        let install = DivertError::InstallCleanup {
            cause: Box::new(sets()),
            cleanup: vec![left(), sets()],
        };
        let text = install.to_string();
        assert_eq!(
            text,
            format!(
                "{}; undoing the partial install also failed: {}; {}",
                sets(),
                left(),
                sets()
            )
        );
        assert!(!text.contains('\n'));
        let teardown = TeardownError {
            errors: vec![left(), sets()],
        };
        assert_eq!(
            teardown.to_string(),
            format!("firewall removal: {}; {}", left(), sets())
        );
    }

    fn plan() -> DivertPlan {
        DivertPlan::new(&Config::from_str(CONFIG, "test").unwrap())
    }

    fn boom(what: &str) -> FirewallError {
        FirewallError::Process(ProcessError::Failed {
            binary: what.into(),
            args: String::new(),
            status: "exit code 1".into(),
            stderr: "injected".into(),
        })
    }

    /// A namespace where the mangle table exists with a user rule of its own.
    fn with_user_rule() -> FakeFirewall {
        let mut fw = FakeFirewall::new();
        fw.restore("*mangle\n-A PREROUTING -p udp -m udp --dport 53 -j ACCEPT\nCOMMIT\n")
            .unwrap();
        fw.calls.clear();
        fw
    }

    #[test]
    fn install_withdraw_remove_round_trip_leaves_nothing() {
        for mut fw in [FakeFirewall::new(), with_user_rule()] {
            let before = (
                fw.mangle_text(),
                fw.sets().to_vec(),
                fw.mangle_table_exists(),
            );
            let p = plan();
            let receipt = install(&mut fw, &p).unwrap();
            assert_eq!(receipt.mangle_table_was_present, before.2);
            assert_eq!(
                fw.sets(),
                ["DRAIN-80-0", "DRAIN-80", "DRAIN-7-0", "DRAIN-7"]
            );
            verify(&mut fw, &p, Phase::Installed).unwrap();
            withdraw(&mut fw, &p).unwrap();
            assert!(verify(&mut fw, &p, Phase::Installed).is_err());
            remove(&mut fw, &p, !receipt.mangle_table_was_present).unwrap();
            let after = (
                fw.mangle_text(),
                fw.sets().to_vec(),
                fw.mangle_table_exists(),
            );
            assert_eq!(after, before);
        }
    }

    #[test]
    fn install_makes_its_changes_in_a_safe_order() {
        let mut fw = FakeFirewall::new();
        let p = plan();
        install(&mut fw, &p).unwrap();
        assert_eq!(
            fw.calls,
            [
                FirewallCall::MangleTablePresent,
                FirewallCall::IpsetNames,
                FirewallCall::SaveMangle,
                FirewallCall::IpsetRestore(p.ipset_create()),
                FirewallCall::Restore(p.install_rules()),
                FirewallCall::SaveMangle,
            ]
        );
    }

    #[test]
    fn a_preexisting_set_is_refused_before_anything_changes() {
        let mut fw = FakeFirewall::new();
        fw.ipset_restore("create DRAIN-7 hash:ip family inet\n")
            .unwrap();
        fw.calls.clear();
        let err = install(&mut fw, &plan()).unwrap_err();
        assert!(matches!(&err, DivertError::SetsExist { names } if names == &["DRAIN-7"]));
        assert!(err.to_string().contains("DRAIN-7"), "{err}");
        assert!(fw
            .calls
            .iter()
            .all(|c| !matches!(c, FirewallCall::Restore(_) | FirewallCall::IpsetRestore(_))));
        assert_eq!(fw.sets(), ["DRAIN-7"]);
    }

    #[test]
    fn a_leftover_set_of_another_port_is_refused_too() {
        let mut fw = FakeFirewall::new();
        fw.ipset_restore("create DRAIN-8080 hash:ip family inet\n")
            .unwrap();
        let err = install(&mut fw, &plan()).unwrap_err();
        assert!(matches!(&err, DivertError::SetsExist { names } if names == &["DRAIN-8080"]));
        assert_eq!(fw.sets(), ["DRAIN-8080"]);
    }

    #[test]
    fn a_preexisting_chain_is_refused_rather_than_flushed() {
        let mut fw = FakeFirewall::new();
        fw.restore("*mangle\n:DRAIN-NEW - [0:0]\n-A DRAIN-NEW -j ACCEPT\nCOMMIT\n")
            .unwrap();
        let before = fw.mangle_text();
        let err = install(&mut fw, &plan()).unwrap_err();
        assert!(matches!(err, DivertError::ChainsExist { .. }), "{err}");
        assert_eq!(fw.mangle_text(), before);
        assert!(fw.sets().is_empty());
    }

    #[test]
    fn failed_rules_transaction_destroys_the_sets_and_the_new_table() {
        let mut fw = FakeFirewall::new();
        fw.fail_next(FakeOp::Restore, boom("iptables-restore"));
        let err = install(&mut fw, &plan()).unwrap_err();
        assert!(
            matches!(
                err,
                DivertError::Firewall(FirewallError::Process(ProcessError::Failed { .. }))
            ),
            "{err}"
        );
        assert!(fw.sets().is_empty());
        assert!(!fw.mangle_table_exists());
    }

    #[test]
    fn partially_created_sets_are_undone_but_a_foreign_one_is_kept() {
        // A set with one of our names appears between the conflict check and its creation:
        // another tool creates it just before our `ipset restore` runs.
        let mut fw = FakeFirewall::new();
        fw.hook(HookAt::Before, |fw, op, text| {
            if op == FakeOp::IpsetRestore && text.contains("create DRAIN-7 ") {
                fw.ipset_restore("create DRAIN-7 hash:ip\n")?;
            }
            Ok(())
        });
        let err = install(&mut fw, &plan()).unwrap_err();
        assert!(err.to_string().contains("already exists"), "{err}");
        assert_eq!(fw.sets(), ["DRAIN-7"]);
        assert!(!fw.mangle_table_exists());
    }

    #[test]
    fn failed_read_back_undoes_the_install() {
        let p = plan();
        // The rules were applied, then found wrong: the undo also takes back the table the
        // install created, and only that one.
        for (mut fw, table_before) in [(FakeFirewall::new(), false), (with_user_rule(), true)] {
            let before = fw.mangle_text();
            // Another tool adds a rule to our entry chain right after our transaction.
            fw.hook(HookAt::After, |fw, op, text| {
                if op == FakeOp::Restore && text.contains("-I PREROUTING") {
                    fw.restore("*mangle\n-A DRAIN-PRE -j ACCEPT\nCOMMIT\n")?;
                }
                Ok(())
            });
            let err = install(&mut fw, &p).unwrap_err();
            assert!(matches!(err, DivertError::ReadBack { .. }), "{err}");
            assert!(fw.sets().is_empty());
            assert!(p.owned_lines(&fw.mangle_text()).is_empty());
            assert_eq!(fw.mangle_table_exists(), table_before);
            assert_eq!(fw.mangle_text(), before);
        }
    }

    #[test]
    fn remove_keeps_going_and_reports_every_error() {
        let mut fw = FakeFirewall::new();
        let p = plan();
        install(&mut fw, &p).unwrap();
        fw.fail_next(FakeOp::Restore, boom("iptables-restore"));
        let err = remove(&mut fw, &p, true).unwrap_err();
        // The rules stayed, so the sets are in use: three problems, all reported.
        assert_eq!(err.errors.len(), 3, "{err}");
        assert!(matches!(
            err.errors[0],
            DivertError::Firewall(FirewallError::Process(ProcessError::Failed { .. }))
        ));
        assert!(err.errors[1].to_string().contains("in use"), "{err}");
        assert!(matches!(err.errors[2], DivertError::Leftovers { .. }));
        assert!(!err.to_string().contains('\n'));
        // The rules that stayed still read the record: it was not emptied.
        let flushed = fw.calls.iter().any(
            |c| matches!(c, FirewallCall::IpsetRestore(t) if t.lines().any(|l| l.starts_with("flush "))),
        );
        assert!(!flushed, "{:?}", fw.calls);
        // A second attempt finishes the job, emptying the sets before destroying them.
        remove(&mut fw, &p, true).unwrap();
        assert!(!fw.mangle_table_exists());
        assert!(fw
            .calls
            .iter()
            .any(|c| matches!(c, FirewallCall::IpsetRestore(t) if t.starts_with("flush "))));
    }

    #[test]
    fn remove_is_idempotent_and_keeps_a_table_that_was_there() {
        let mut fw = with_user_rule();
        let p = plan();
        remove(&mut fw, &p, false).unwrap();
        let receipt = install(&mut fw, &p).unwrap();
        assert!(receipt.mangle_table_was_present);
        remove(&mut fw, &p, !receipt.mangle_table_was_present).unwrap();
        remove(&mut fw, &p, false).unwrap();
        assert!(fw.mangle_table_exists());
        assert!(fw
            .mangle_text()
            .contains("-A PREROUTING -p udp -m udp --dport 53 -j ACCEPT"));
    }

    #[test]
    fn counters_count_unrecorded_syns_exactly_and_survive_the_seal() {
        let mut fw = FakeFirewall::new();
        let p = DivertPlan::new(
            &Config::from_str(
                &format!("{CONFIG}firewall:\n  max_diverted_flows: 1024\n"),
                "test",
            )
            .unwrap(),
        );
        install(&mut fw, &p).unwrap();
        assert_eq!(fw.syns(80, 1000), 1000);
        assert_eq!(fw.syns(80, 100), 24);
        let c = counters(&mut fw, &p).unwrap();
        assert_eq!(c.syns, 1100);
        assert_eq!(c.unrecorded_by_port, [(80, 76), (7, 0)]);
        assert_eq!(c.diverted_syns, 1024);
        assert_eq!(c.diverted_packets, 1024);
        assert_eq!(c.sealed_drops, 0);
        seal(&mut fw, &p).unwrap();
        fw.syns(80, 10);
        let c = counters(&mut fw, &p).unwrap();
        assert_eq!(
            c.unrecorded_syns(),
            86,
            "P-MISS is not rewritten by the seal"
        );
        assert_eq!(c.sealed_drops, 10);
        withdraw(&mut fw, &p).unwrap();
        fw.syns(80, 10);
        assert_eq!(counters(&mut fw, &p).unwrap().unrecorded_syns(), 86);
    }

    #[test]
    fn a_set_creation_that_fails_without_a_line_undoes_what_exists() {
        let mut fw = FakeFirewall::new();
        fw.fail_next(
            FakeOp::IpsetRestore,
            FirewallError::Process(ProcessError::Timeout {
                binary: "ipset".into(),
                args: "restore".into(),
                after: std::time::Duration::from_secs(10),
            }),
        );
        let err = install(&mut fw, &plan()).unwrap_err();
        assert!(
            matches!(
                err,
                DivertError::Firewall(FirewallError::Process(ProcessError::Timeout { .. }))
            ),
            "{err}"
        );
        assert!(fw.sets().is_empty());
        assert!(!fw.mangle_table_exists());
    }
}
