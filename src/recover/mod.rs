//! After the orchestrator itself died: `recover` replays a run's journal and
//! compensates the instances it left out of service; `unlock` clears a lock
//! by hand; `runs` lists and shows journals. Each considers only the runs
//! and the lock of its own inventory ([`crate::state::Identity`]), from the
//! inventory's state backend — with PostgreSQL, from any machine.
//!
//! `recover` repairs exactly its own run:
//! - it refuses while that run is alive (its lock is held: a flock, or a
//!   lease still renewed), naming the holder; `--force` takes over a lock
//!   whose holder cannot be proven gone, after saying whose it is;
//! - it runs discovery when the inventory discovers (`lb.discover = true`),
//!   so discovered targets are not "missing from the inventory";
//! - it prints its plan first (which instances, which steps), asks on a
//!   terminal unless `--yes`;
//! - it compiles the dead run's script (path and sha256 from its run-start
//!   record) to use its `on_compensate` step, when the script is still there
//!   and unchanged (otherwise it says so and uses the default step);
//! - it appends to the dead run's journal (locally and to the shared copy),
//!   ending with a `run_end` of its own, so running it again does nothing.

mod hook;
mod opened;
mod plan;
mod runs;

pub use runs::{list_runs, show_run, unlock};

use std::io::IsTerminal;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::compensate::{self, Fate, Target};
use crate::config::{Instance, Inventory};
use crate::effects::Effects;
use crate::engine::{Answers, Host, ScriptContext};
use crate::journal::{self, Journal, Record, Summary};
use crate::lock::{Holder, LockError};
use crate::outcome::{Failure, Outcome};
use crate::providers;
use crate::state::{self, HeldLock, LockStatus, StoredRun};
use hook::{find_hook, script_dir, script_for_hook, vars_of};
use opened::{open, pick, release_stale_lock, Opened};

/// `rollscript recover [RUN] [--yes] [--force]`.
#[derive(Debug, Clone, Default)]
pub struct RecoverOptions {
    /// Run id (or a unique prefix); default: the newest that left instances out.
    pub run: Option<String>,
    /// Do not ask before acting.
    pub yes: bool,
    /// Take over a lock whose holder cannot be proven gone.
    pub force: bool,
}

pub async fn recover(inventory_path: &Path, opts: &RecoverOptions) -> Result<Outcome, Failure> {
    recover_with(inventory_path, opts, providers::build).await
}

/// `recover` with providers of the caller's choosing (tests use fakes), as
/// a pipeline: select the run, take over its lock, prepare (discovery, the
/// journal, the effects, the script's own step), show the plan and ask,
/// compensate, report.
pub async fn recover_with(
    inventory_path: &Path,
    opts: &RecoverOptions,
    make: impl Fn(&Arc<Inventory>) -> crate::primitives::Providers,
) -> Result<Outcome, Failure> {
    let Some(picked) = select(inventory_path, opts)? else {
        return Ok(Outcome::Success);
    };
    let _lock = take_over(&picked, opts).await?;
    let prepared = prepare(inventory_path, picked, &make).await?;
    print!(
        "{}",
        plan::plan(
            &prepared.effects,
            &prepared.targets,
            prepared.hook.is_some().then_some(prepared.script.as_path()),
            prepared.summary.weights_changed
        )
    );
    if !opts.yes && std::io::stdin().is_terminal() && !crate::ui::ask("recover now? [y/N] ") {
        println!("nothing done");
        return Ok(Outcome::Failed);
    }
    let done = execute(prepared).await;
    Ok(report(&done))
}

/// The run to recover, with what it says and the lock's state.
struct Picked {
    opened: Opened,
    run: StoredRun,
    summary: Summary,
    status: Option<LockStatus>,
}

/// Phase 1: the run to recover, or `None` (said on stdout) when nothing is
/// left out of service.
fn select(inventory_path: &Path, opts: &RecoverOptions) -> Result<Option<Picked>, Failure> {
    let o = open(inventory_path).map_err(Failure::invalid)?;
    let runs = o.runs().map_err(Failure::invalid)?;
    let status = o
        .backend
        .lock_status()
        .map_err(|e| Failure::invalid(e.to_string()))?;
    let Some(run) = pick(&runs, opts.run.as_deref(), &o.where_()).map_err(Failure::invalid)? else {
        release_stale_lock(&*o.backend, status.as_ref());
        println!(
            "nothing to recover: no run of {} left an instance out of service",
            o.where_()
        );
        return Ok(None);
    };
    let summary = journal::summarise(&run.records());
    if summary.out_of_service.is_empty() && !summary.weights_changed {
        release_stale_lock(&*o.backend, status.as_ref());
        println!(
            "nothing to recover: run {} left every instance in service",
            summary.run
        );
        return Ok(None);
    }
    Ok(Some(Picked {
        opened: o,
        run,
        summary,
        status,
    }))
}

/// Phase 2: that run must be over — its lock free or provably stale, its
/// process gone — unless `--force`; then its lock is ours.
async fn take_over(p: &Picked, opts: &RecoverOptions) -> Result<Box<dyn HeldLock>, Failure> {
    let (summary, status) = (&p.summary, &p.status);
    if state::run_is_live(summary, status.as_ref()) && summary.pid != std::process::id() {
        let (holder, note) = match status {
            Some(LockStatus::Live(h)) if h.holder.run.as_deref() == Some(summary.run.as_str()) => {
                (h.holder.clone(), h.note.clone())
            }
            _ => (
                state::run_process(summary),
                "that process is still running".to_string(),
            ),
        };
        if !opts.force {
            return Err(Failure::locked(format!(
                "run {} is still running: {} ({note})",
                summary.run,
                holder.describe()
            ))
            .with_hint("  stop it first (Ctrl-C compensates by itself); if that machine or process is gone, wait for its lease to run out, or take over with `rollscript recover --force`"));
        }
        println!(
            "--force: recovering run {} although it cannot be proven gone: {} ({note})",
            summary.run,
            holder.describe()
        );
    }
    if let (true, Some(LockStatus::Live(h))) = (opts.force, status) {
        println!(
            "--force: taking over the deploy lock {} ({})",
            h.holder.describe(),
            h.note
        );
    }
    let me = Holder::me(Some(format!("recover {}", summary.run)));
    let (b, force) = (p.opened.backend.clone(), opts.force);
    match tokio::task::spawn_blocking(move || b.lock(&me, Duration::ZERO, force)).await {
        Ok(Ok(l)) => Ok(l),
        Ok(Err(e @ (LockError::Held(_) | LockError::Queued(_)))) => {
            Err(Failure::locked(e.to_string()))
        }
        Ok(Err(e)) => Err(Failure::invalid(e.to_string())),
        Err(e) => Err(Failure::invalid(e.to_string())),
    }
}

/// Everything compensation needs, ready to act.
struct Prepared {
    summary: Summary,
    effects: Arc<Effects>,
    journal: Arc<Journal>,
    targets: Vec<Target>,
    script: std::path::PathBuf,
    hook: Option<Arc<ScriptContext>>,
}

/// Phase 3: the fleet as the dead run knew it plus discovery, its journal
/// opened for appending, the effects, and the script's `on_compensate`.
async fn prepare(
    inventory_path: &Path,
    p: Picked,
    make: &impl Fn(&Arc<Inventory>) -> crate::primitives::Providers,
) -> Result<Prepared, Failure> {
    let Picked {
        opened,
        run,
        summary,
        ..
    } = p;
    let s = &summary;
    println!(
        "recovering run {} (started {} by pid {} on {}): out of service: {}{}",
        s.run,
        s.started,
        s.pid,
        s.host,
        if s.out_of_service.is_empty() {
            "none".to_string()
        } else {
            s.out_of_service.join(", ")
        },
        if s.weights_changed {
            "; LB weights changed"
        } else {
            ""
        }
    );
    let Opened {
        mut inventory,
        backend,
        ..
    } = opened;
    // Members the dead run discovered may have left the target group since
    // (a deregistered target goes once drained): its run-start record knows
    // them. Then discovery adds today's members.
    for known in &s.instances {
        if inventory.instance(&known.name).is_none() {
            inventory.add_instance(known.clone().into());
        }
    }
    let discovery = make(&Arc::new(inventory.clone())).discovery;
    let inventory = providers::discover(inventory, &*discovery)
        .await
        .map_err(|e| Failure::failed(format!("discovering instances: {e}")))?;
    let inventory = Arc::new(inventory);
    let journal = open_journal(inventory_path, &run, backend.mirror())
        .map(Arc::new)
        .map_err(|e| {
            Failure::invalid(format!(
                "cannot append to the journal of run {}: {}",
                run.id,
                journal::io_text(&e)
            ))
        })?;
    let effects = Arc::new(Effects::new(
        inventory.clone(),
        make(&inventory),
        None,
        CancellationToken::new(),
    ));
    effects.set_journal(journal.clone());
    let targets = s
        .out_of_service
        .iter()
        .map(|n| Target {
            name: n.clone(),
            touched: s.touched.contains(n),
            registered: s.registered.contains(n),
        })
        .collect();

    // The dead run's own compensation step, found by a dry run of its script.
    let script = script_for_hook(s);
    let hook = match &script {
        Ok(path) => {
            let (path, inv, vars, h) = (
                path.clone(),
                inventory.clone(),
                vars_of(&s.args),
                tokio::runtime::Handle::current(),
            );
            tokio::task::spawn_blocking(move || find_hook(&path, &inv, vars, h))
                .await
                .unwrap_or_else(|e| Err(format!("the script's dry run panicked: {e}")))
        }
        Err(why) => Err(why.clone()),
    };
    let hook = hook.unwrap_or_else(|why| {
        warn!("{why}: using the default compensation step");
        None
    });
    Ok(Prepared {
        effects,
        journal,
        targets,
        script: script.unwrap_or_default(),
        hook,
        summary,
    })
}

/// What compensation did.
struct Done {
    summary: Summary,
    journal: Arc<Journal>,
    fates: Vec<Fate>,
    weights_left: bool,
}

/// Phase 4: every instance the dead run left out back (through the
/// script's step when it has one), then the weights it shifted.
async fn execute(p: Prepared) -> Done {
    let Prepared {
        summary,
        effects,
        journal,
        targets,
        script,
        hook,
    } = p;
    // The dead run took these out: the ledger must know, so a failed
    // put-back is reported as left out.
    for Target { name, .. } in &targets {
        effects
            .ledger
            .finish(name, "deregister", Duration::ZERO, None);
    }
    let e2 = effects.clone();
    let vars = vars_of(&summary.args);
    let dir = script_dir(&script);
    let handle = tokio::runtime::Handle::current();
    let fates = tokio::task::spawn_blocking(move || {
        let Some(hook) = hook else {
            return compensate::compensate(&e2, &handle, &targets, None);
        };
        // A host acting live, holding the hook the dry run found: the hook's
        // steps run through this host's bindings, on these effects.
        let ctx = Arc::new(ScriptContext::new(
            e2.clone(),
            vars,
            Answers::Yes,
            handle.clone(),
        ));
        *ctx.hook.lock().unwrap() = hook.hook.lock().unwrap().clone();
        let host = Host::new(&dir, ctx.clone());
        let f = host.compensation_hook(&ctx);
        let f = f
            .as_ref()
            .map(|h| h as &(dyn Fn(&Instance) -> Result<(), String> + Sync));
        compensate::compensate(&e2, &handle, &targets, f)
    })
    .await
    .unwrap_or_default();
    // Weights the dead run shifted: the whole fleet back as configured.
    let mut weights_left = false;
    if summary.weights_changed && effects.supports_weights() {
        effects.mark_all_weighted();
        match effects.reset_weights().await {
            Ok(n) => println!("  LB weights: {n} instance(s) back as configured"),
            Err(e) => {
                weights_left = true;
                println!("  LB weights: LEFT CHANGED — {e}");
            }
        }
    }
    effects.close().await;
    Done {
        summary,
        journal,
        fates,
        weights_left,
    }
}

/// Phase 5: the run's end recorded (so recovering again does nothing) and
/// every instance's fate printed.
fn report(d: &Done) -> Outcome {
    let left: Vec<String> = d
        .fates
        .iter()
        .filter(|f| !f.restored)
        .map(|f| f.instance.clone())
        .collect();
    let whole = left.is_empty() && !d.weights_left;
    d.journal.best_effort(&Record::RunEnd {
        at: journal::now(),
        outcome: if whole {
            "recovered"
        } else {
            "recovered_partly"
        }
        .into(),
        left_out: left,
        failed: Vec::new(),
    });
    for f in &d.fates {
        println!(
            "  {}: {} — {}",
            f.instance,
            if f.restored {
                "back in service"
            } else {
                "LEFT OUT"
            },
            f.detail
        );
    }
    info!(
        "recovery of run {} recorded in {}",
        d.summary.run,
        d.journal.path.display()
    );
    if whole {
        Outcome::Success
    } else {
        Outcome::Failed
    }
}

/// This machine's journal of `run`: the local file, brought up to the
/// stored copy when that one has more (a run from another machine).
fn open_journal(
    inventory: &Path,
    run: &StoredRun,
    mirror: Option<Arc<dyn state::JournalMirror>>,
) -> std::io::Result<Journal> {
    match &run.local {
        Some(p) if journal::read_lines(p).map(|l| l.len()).unwrap_or(0) >= run.lines.len() => {
            Journal::append(p, mirror)
        }
        _ => Journal::adopt(inventory, &run.id, &run.lines, mirror),
    }
}
