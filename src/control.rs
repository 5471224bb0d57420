//! `rollscript pause|resume|abort|promote [RUN]`: a request to a live run,
//! left in its state backend (the local `.rollscript/`, or PostgreSQL, so
//! it works from any machine with the inventory and the URL). Without RUN
//! the request goes to the inventory's current run: the deploy lock's
//! holder. The run polls for it (see `run/control.rs`).

use std::path::Path;

use crate::config::Inventory;
use crate::journal;
use crate::outcome::{Failure, Outcome};
use crate::state::control::{Command, Request};
use crate::state::{self, Identity, LockStatus};

/// Sends `command` to run `run` (an id or a unique prefix), or to the
/// current run. Exit 2 when there is no such run or it is not running.
pub fn send(inventory: &Path, run: Option<&str>, command: Command) -> Result<Outcome, Failure> {
    let inv = Inventory::load(inventory)?;
    let identity = Identity::of(&inv);
    let backend = state::open(&inv).map_err(|e| Failure::invalid(e.to_string()))?;
    let word = command.word();
    let lock = backend
        .lock_status()
        .map_err(|e| Failure::invalid(e.to_string()))?;
    let target = match run {
        Some(id) => {
            let runs = state::runs(&*backend, &identity, &inv)
                .map_err(|e| Failure::invalid(e.to_string()))?;
            let found = state::find_run(&runs, id).ok_or_else(|| {
                Failure::invalid(format!(
                    "no run {id:?} of {} in {} (see `rollscript runs`): nothing to {word}",
                    inv.path.display(),
                    backend.describe()
                ))
            })?;
            let s = journal::summarise(&found.records());
            if !state::run_is_live(&s, lock.as_ref()) {
                return Err(Failure::invalid(format!(
                    "run {} is not running ({}): nothing to {word}",
                    s.run,
                    match &s.outcome {
                        Some(o) => format!("it ended: {o}"),
                        None => "it died; see `rollscript recover`".into(),
                    }
                )));
            }
            s.run
        }
        None => match lock {
            Some(LockStatus::Live(h)) => match h.holder.run.clone() {
                Some(run) => run,
                None => {
                    return Err(Failure::invalid(format!(
                    "no run of {} is active: the deploy lock is {} (not a run): nothing to {word}",
                    inv.path.display(),
                    h.holder.describe()
                )))
                }
            },
            Some(LockStatus::Stale(h, why)) => {
                return Err(Failure::invalid(format!(
                "no run of {} is active: the deploy lock {} is stale ({why}): nothing to {word}",
                inv.path.display(),
                h.describe()
            )))
            }
            None => {
                return Err(Failure::invalid(format!(
                    "no run of {} is active (the deploy lock is free in {}): nothing to {word}",
                    inv.path.display(),
                    backend.describe()
                )))
            }
        },
    };
    let req = Request::from_me(command);
    backend
        .control()
        .send(&target, &req)
        .map_err(|e| Failure::invalid(e.to_string()))?;
    println!(
        "{word} sent to run {target} as {}: {}",
        req.by,
        match command {
            Command::Pause => "it holds at the next safe point, with every instance in service",
            Command::Resume => "it goes on (and a pending approval is answered yes)",
            Command::Abort =>
                "it stops like a failed gate: rollback, compensation, weights back, exit 1",
            Command::Promote => "the current bake ends as passed",
        }
    );
    Ok(Outcome::Success)
}
