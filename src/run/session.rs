//! A live run's hold on the fleet, taken once the script compiled and the
//! inventory passed preflight: the deploy lock (local or a PostgreSQL lease),
//! the survey of what is out of rotation before the run (left as found), and
//! the journal every effect is recorded in.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use sha2::Digest;
use tracing::{error, warn};

use super::{Failure, Outcome, Prepared, RunOptions};
use crate::config::{Inventory, LbBackend};
use crate::journal::{self, Journal, Record};
use crate::lock::{self, LockError};
use crate::state::{self, Identity, JournalMirror, StateBackend};

/// Held for the whole run; released when dropped.
pub(crate) struct Session {
    /// Held until the session drops (the run has reported).
    pub _lock: Option<Box<dyn state::HeldLock>>,
    /// Why the shared lock was lost mid-run, if it was.
    pub lost: Arc<Mutex<Option<String>>>,
}

pub(crate) async fn begin(opts: &RunOptions, run: &Prepared) -> Result<Session, Failure> {
    let backend = run
        .backend
        .clone()
        .expect("a live run opened its state backend");
    let effects = &run.effects;
    let run_id = journal::new_run_id(&opts.inventory);
    let me = lock::Holder::me(Some(run_id.clone()));
    let (b, wait) = (backend.clone(), opts.lock_wait);
    let mut lock = match tokio::task::spawn_blocking(move || b.lock(&me, wait, false)).await {
        Ok(Ok(l)) => l,
        Ok(Err(e @ (LockError::Held(_) | LockError::Queued(_)))) => {
            return Err(Failure::locked(e.to_string()))
        }
        Ok(Err(e)) => return Err(Failure::invalid(e.to_string())),
        Err(e) => return Err(Failure::invalid(format!("lock task failed: {e}"))),
    };
    // Under the lock, so another run's drains are not taken for an
    // operator's: what is out of rotation now stays as found.
    let parked = effects
        .survey(opts.include_parked, &run.ours)
        .await
        .map_err(|e| {
            Failure::invalid(format!(
                "reading the load balancer's state of the fleet: {e}"
            ))
        })?;
    for (name, word) in parked {
        if opts.include_parked {
            warn!(instance = %name, "{name}: out of rotation before the run ({word}): deployed but left out of rotation (--include-parked)");
        } else {
            warn!(instance = %name, "{name}: out of rotation before the run ({word}): left as found (deploy it with --include-parked)");
        }
    }
    let j = open_journal(
        opts,
        &run.inventory,
        &run.identity,
        &run_id,
        backend.mirror(),
    )
    .map_err(|e| {
        Failure::invalid(format!(
            "cannot write the run journal under {}: {}",
            journal::runs_dir(&opts.inventory).display(),
            journal::io_text(&e)
        ))
    })?;
    // A record that cannot be written stops the run at once, as a first
    // Ctrl-C does; compensation then runs.
    let token = effects.cancel_token();
    j.on_stop(Box::new(move |why| {
        error!("journal write failed: {why}: stopping at the next safe point, then compensating");
        token.cancel();
    }));
    effects.set_journal(Arc::new(j));
    // A lost lease stops the run at the next safe point; compensation then
    // runs on a token of its own, from the local journal.
    let lost: Arc<Mutex<Option<String>>> = Default::default();
    let token = effects.cancel_token();
    let why_lost = lost.clone();
    lock.on_lost(Box::new(move |why| {
        error!("{why}: stopping at the next safe point, then compensating from the local journal");
        *why_lost.lock().unwrap() = Some(why);
        token.cancel();
    }));
    Ok(Session {
        _lock: Some(lock),
        lost,
    })
}

pub(crate) fn open_journal(
    opts: &RunOptions,
    inv: &Inventory,
    identity: &Identity,
    run: &str,
    mirror: Option<Arc<dyn JournalMirror>>,
) -> std::io::Result<Journal> {
    let script_text = std::fs::read(&opts.script).unwrap_or_default();
    let me = lock::Holder::me(Some(run.to_string()));
    let start = Record::RunStart {
        run: run.to_string(),
        at: journal::now(),
        script: opts.script.display().to_string(),
        script_sha256: hex::encode(sha2::Sha256::digest(&script_text)),
        inventory: opts.inventory.display().to_string(),
        inventory_sha256: inv.hash.clone(),
        user: me.user,
        host: me.host,
        pid: me.pid,
        args: crate::redact::redact_args(std::env::args()),
        identity: Some(identity.fingerprint.clone()),
        inventory_path: Some(identity.path.display().to_string()),
        script_path: std::fs::canonicalize(&opts.script)
            .ok()
            .map(|p| p.display().to_string()),
        boot_id: me.boot_id,
        proc_start: me.proc_start,
        instances: if matches!(inv.lb.backend, LbBackend::Aws { discover: true, .. }) {
            inv.instances.iter().map(Into::into).collect()
        } else {
            Vec::new()
        },
    };
    Journal::create(&opts.inventory, run, &start, mirror)
}

/// The instances that failed (or were left out) in run `id` of this inventory.
pub(crate) fn failed_of(
    backend: Option<&dyn StateBackend>,
    identity: &Identity,
    inv: &Inventory,
    id: &str,
) -> Result<BTreeSet<String>, String> {
    let backend = backend.ok_or("--only-failed needs the state backend")?;
    let runs = state::runs(backend, identity, inv).map_err(|e| e.to_string())?;
    let run = state::find_run(&runs, id).ok_or_else(|| {
        format!(
            "--only-failed: no run {id:?} of this inventory in {} (see `rollscript runs`)",
            backend.describe()
        )
    })?;
    let s = journal::summarise(&run.records());
    let mut names: BTreeSet<String> = s.failed.into_iter().collect();
    names.extend(s.left_out);
    if names.is_empty() {
        return Err(format!(
            "--only-failed: no instance failed in run {}",
            s.run
        ));
    }
    Ok(names)
}

/// Why the run stopped itself (not the operator): a step refused for want
/// of its journal record, or a lost lease.
pub(crate) fn stopped(run: &Prepared, session: &Session) -> Option<String> {
    run.effects
        .journal()
        .and_then(|j| j.stopped())
        .or_else(|| session.lost.lock().unwrap().clone())
}

/// How a run that stopped itself ends.
pub(crate) fn stopped_outcome(why: &str) -> Outcome {
    error!("journal write failed: {why}: the run stopped before that step (nothing was done without its record)");
    Outcome::Failed
}
