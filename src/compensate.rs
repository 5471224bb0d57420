//! Compensation: what happens to instances a failed, aborted or killed run
//! took out of service. The same code serves a failed run, the script's
//! `compensate(inst)` and `rollscript recover` after a crash.
//!
//! For each instance, from what the LB says *now* (a step whose outcome was
//! unknown may not have taken effect; a registered instance may be serving):
//! an instance still in service that no command touched is left alone; one
//! in rotation after a partial deploy is taken out first; then it is rolled
//! back (the script's `on_compensate` step, or `app.rollback` if a command
//! ran on it), health-checked, put back and confirmed in service by the LB.
//! A failed rollback does not cost capacity: a healthy instance goes back on
//! an unknown release, named loudly, unless `app.on_rollback_failure =
//! "leave_out"`. An instance the LB will not take back is taken out again.
//! Every instance left out is named with the reason. Independent instances
//! are compensated in parallel, up to `ssh.max_parallel` at once.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::runtime::Handle;
use tracing::{info, warn};

use crate::config::{Instance, RollbackFailure};
use crate::effects::{Effects, ExecOptions};
use crate::journal::{now, Record};
pub use crate::ledger::Target;
use crate::primitives::{Cmd, MemberState};

/// An instance's fate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fate {
    pub instance: String,
    pub restored: bool,
    pub detail: String,
}

/// A script's own rollback step for one instance (`on_compensate(|inst| …)`).
pub type Hook<'a> = &'a (dyn Fn(&Instance) -> Result<(), String> + Sync);

/// Compensates `targets`, in parallel up to `ssh.max_parallel`; fates come
/// back in the order of `targets`. Blocking: call from a blocking thread
/// (the script hook runs Rhai).
pub fn compensate(
    effects: &Arc<Effects>,
    handle: &Handle,
    targets: &[Target],
    hook: Option<Hook>,
) -> Vec<Fate> {
    // While this runs a first Ctrl-C only warns (it would leave instances out).
    effects.begin_compensation();
    let fates = compensate_all(effects, handle, targets, hook);
    effects.end_compensation();
    fates
}

fn compensate_all(
    effects: &Arc<Effects>,
    handle: &Handle,
    targets: &[Target],
    hook: Option<Hook>,
) -> Vec<Fate> {
    let lanes = effects
        .inventory
        .ssh
        .max_parallel
        .clamp(1, targets.len().max(1));
    if lanes == 1 {
        return targets
            .iter()
            .map(|t| compensate_one(effects, handle, t, hook))
            .collect();
    }
    let next = AtomicUsize::new(0);
    let fates: Vec<Mutex<Option<Fate>>> = targets.iter().map(|_| Mutex::new(None)).collect();
    std::thread::scope(|scope| {
        for _ in 0..lanes {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(t) = targets.get(i) else { break };
                let fate = compensate_one(effects, handle, t, hook);
                *fates[i].lock().unwrap() = Some(fate);
            });
        }
    });
    fates
        .into_iter()
        .filter_map(|f| f.into_inner().unwrap())
        .collect()
}

fn compensate_one(effects: &Arc<Effects>, handle: &Handle, t: &Target, hook: Option<Hook>) -> Fate {
    let name = t.name.as_str();
    let Some(inst) = effects.inventory.instance(name).cloned() else {
        return record(
            effects,
            name,
            false,
            false,
            "not in the inventory any more: check it by hand".into(),
        );
    };
    info!(instance = %name, step = "compensate", "compensating {name}: it was left out of service");

    // What the LB says now decides what is left to do.
    match handle.block_on(effects.state(&inst)) {
        Ok(MemberState::InService) if !t.touched || t.registered => {
            let why = if t.touched {
                "in service on the LB after its deploy and health check: nothing to undo"
            } else {
                "still in service on the LB (the step that took it out did not take effect): nothing to do"
            };
            return record(effects, name, true, false, why.into());
        }
        Ok(state) if !state.out_of_rotation() && t.touched => {
            // In rotation on a half-done deploy: out first, then roll back.
            let out = handle.block_on(async {
                effects.deregister(&inst).await?;
                effects.wait_drained(&inst).await
            });
            if let Err(e) = out {
                return record(
                    effects,
                    name,
                    false,
                    false,
                    format!(
                        "in rotation after a partial deploy and could not be taken out to roll back: {}",
                        first_line(&e.to_string())
                    ),
                );
            }
        }
        _ => {}
    }

    let strict = effects.inventory.app.on_rollback_failure == RollbackFailure::LeaveOut;
    let mut rolled_back = false;
    // Ok(how): ready to go back; Err(why): left out. `checked`: health passed.
    let mut checked = false;
    let mut unknown_release: Option<String> = None;
    let prepared: Result<String, String> = match hook {
        Some(hook) => match hook(&inst) {
            Ok(()) => {
                rolled_back = t.touched;
                checked = true;
                Ok("the script's on_compensate step passed".to_string())
            }
            Err(why) if strict => Err(why),
            Err(why) => {
                unknown_release = Some(why);
                Ok(String::new())
            }
        },
        None if t.touched => match &effects.inventory.app.rollback {
            Some(rollback) => {
                let ran = handle.block_on(effects.ssh(
                    &inst,
                    &Cmd::Shell(rollback.clone()),
                    ExecOptions::default(),
                ));
                match ran {
                    Ok(_) => {
                        rolled_back = true;
                        Ok("rolled back".to_string())
                    }
                    Err(e) => {
                        let why = format!("rollback failed: {}", first_line(&e.to_string()));
                        if strict {
                            Err(format!("{why} (app.on_rollback_failure = \"leave_out\")"))
                        } else {
                            unknown_release = Some(why);
                            Ok(String::new())
                        }
                    }
                }
            }
            None => Ok("no app.rollback configured, kept as deployed".to_string()),
        },
        None => Ok(String::new()),
    };
    let mut how = match prepared {
        Ok(how) => how,
        Err(why) => return record(effects, name, false, false, why),
    };
    if !checked {
        let probe = effects.probe_for(&inst);
        if let Err(e) = handle.block_on(effects.health(&inst.name, &probe)) {
            let why = format!("not healthy, left out: {}", first_line(&e.to_string()));
            let why = match &unknown_release {
                Some(failed) => format!("{failed}; {why}"),
                None => why,
            };
            return record(effects, name, false, rolled_back, why);
        }
        how = if how.is_empty() {
            "healthy".into()
        } else {
            format!("{how}, healthy")
        };
    }
    let prefix = unknown_release
        .as_ref()
        .map(|f| format!("{f}; "))
        .unwrap_or_default();
    if let Err(e) = handle.block_on(effects.register(&inst)) {
        // Refused (or the LB unreachable): it was not put back. If the
        // answer was lost it may be in rotation: out again, to be sure.
        let again = if e.unknown_outcome {
            format!("; {}", take_out_again(effects, handle, &inst))
        } else {
            String::new()
        };
        return record(
            effects,
            name,
            false,
            rolled_back,
            format!(
                "{prefix}{how}, but putting it back failed: {}{again}",
                first_line(&e.to_string())
            ),
        );
    }
    match handle.block_on(effects.wait_in_service(&inst)) {
        Ok(_) => match unknown_release {
            Some(failed) => {
                let detail =
                    format!("rollback failed; healthy on an unknown release: put back ({failed})");
                warn!(instance = %name, step = "compensated", "{name}: {detail}");
                record(effects, name, true, false, detail)
            }
            None => record(
                effects,
                name,
                true,
                rolled_back,
                format!("{how}; back in service"),
            ),
        },
        // In rotation but not serving (nginx would still send it traffic):
        // out again, and say so.
        Err(e) => record(
            effects,
            name,
            false,
            rolled_back,
            format!(
                "{prefix}{how}, but the LB did not put it back in service: {}; {}",
                first_line(&e.to_string()),
                take_out_again(effects, handle, &inst)
            ),
        ),
    }
}

/// Takes `inst` out of rotation again after a failed return; says how it went.
fn take_out_again(effects: &Arc<Effects>, handle: &Handle, inst: &Instance) -> String {
    let again = handle.block_on(async {
        effects.deregister(inst).await?;
        effects.wait_drained(inst).await
    });
    match again {
        Ok(_) => "taken out again".to_string(),
        Err(e) => format!(
            "taking it out again failed too: {}",
            first_line(&e.to_string())
        ),
    }
}

fn record(
    effects: &Effects,
    name: &str,
    restored: bool,
    rolled_back: bool,
    detail: String,
) -> Fate {
    if restored {
        info!(instance = %name, step = "compensated", "{name}: {detail}");
    } else {
        warn!(instance = %name, step = "left_out", "{name} LEFT OUT of service: {detail}");
    }
    effects
        .ledger
        .compensated(name, restored, rolled_back, &detail);
    effects.capacity_changed();
    if let Some(j) = effects.journal() {
        j.best_effort(&Record::Compensation {
            at: now(),
            instance: name.to_string(),
            restored,
            detail: detail.clone(),
            rolled_back,
        });
    }
    Fate {
        instance: name.to_string(),
        restored,
        detail,
    }
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or_default().to_string()
}
