//! Compensation: what happens to instances a failed, aborted or killed run
//! took out of service. Each is rolled back (when a command ran on it since it
//! was taken out), health-checked, and put back only if healthy; every
//! instance left out is named with the reason. The same code serves a failed
//! run and `rollscript recover` after a crash.

use std::sync::Arc;

use tokio::runtime::Handle;
use tracing::{info, warn};

use crate::config::Instance;
use crate::effects::{Effects, ExecOptions};
use crate::journal::{now, Record};
use crate::primitives::Cmd;

/// An instance's fate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fate {
    pub instance: String,
    pub restored: bool,
    pub detail: String,
}

/// A script's own rollback step for one instance (`on_compensate(|inst| …)`).
pub type Hook<'a> = &'a (dyn Fn(&Instance) -> Result<(), String> + Sync);

/// Compensates `targets` (name, whether a command ran on it while out).
/// Blocking: call from a blocking thread (the script hook runs Rhai).
pub fn compensate(
    effects: &Arc<Effects>,
    handle: &Handle,
    targets: &[(String, bool)],
    hook: Option<Hook>,
) -> Vec<Fate> {
    let mut fates = Vec::new();
    for (name, touched) in targets {
        let Some(inst) = effects.inventory.instance(name).cloned() else {
            fates.push(record(
                effects,
                name,
                false,
                false,
                "not in the inventory any more: check it by hand".into(),
            ));
            continue;
        };
        info!(instance = %name, step = "compensate", "compensating {name}: it was left out of service");
        let mut rolled_back = false;
        let prepared: Result<String, String> = match hook {
            Some(hook) => hook(&inst).map(|_| {
                rolled_back = *touched;
                "the script's on_compensate step passed".to_string()
            }),
            None => default_step(effects, handle, &inst, *touched, &mut rolled_back),
        };
        let record = |effects: &Effects, name: &str, restored: bool, detail: String| {
            record(effects, name, restored, rolled_back, detail)
        };
        let fate = match prepared {
            Err(why) => record(effects, name, false, why),
            Ok(how) => {
                let back = handle.block_on(async {
                    effects.register(&inst).await?;
                    effects.wait_in_service(&inst).await
                });
                match back {
                    Ok(_) => record(effects, name, true, format!("{how}; back in service")),
                    Err(e) => record(
                        effects,
                        name,
                        false,
                        format!(
                            "{how}, but putting it back failed: {}",
                            first_line(&e.to_string())
                        ),
                    ),
                }
            }
        };
        fates.push(fate);
    }
    fates
}

/// The stdlib's compensation: `app.rollback` if a command ran on it, then health.
fn default_step(
    effects: &Arc<Effects>,
    handle: &Handle,
    inst: &Instance,
    touched: bool,
    rolled_back: &mut bool,
) -> Result<String, String> {
    let mut how = Vec::new();
    if touched {
        match &effects.inventory.app.rollback {
            Some(rollback) => {
                handle
                    .block_on(effects.ssh(
                        inst,
                        &Cmd::Shell(rollback.clone()),
                        ExecOptions::default(),
                    ))
                    .map_err(|e| format!("rollback failed: {}", first_line(&e.to_string())))?;
                *rolled_back = true;
                how.push("rolled back");
            }
            None => how.push("no app.rollback configured, kept as deployed"),
        }
    }
    let probe = effects.probe_for(inst);
    handle
        .block_on(effects.health(&inst.name, &probe))
        .map_err(|e| format!("not healthy, left out: {}", first_line(&e.to_string())))?;
    how.push("healthy");
    Ok(how.join(", "))
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
