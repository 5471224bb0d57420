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

use std::collections::BTreeMap;
use std::fmt::Write;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sha2::Digest;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::compensate;
use crate::config::{Instance, Inventory};
use crate::effects::Effects;
use crate::engine::{Answers, Host, ScriptContext};
use crate::journal::{self, Journal, Record, Summary};
use crate::lock::{Holder, LockError};
use crate::plan::Recorder;
use crate::providers;
use crate::run::Outcome;
use crate::state::{self, Identity, LockStatus, StateBackend, StoredRun};

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

/// One inventory's state, as every command here starts.
struct Opened {
    inventory: Inventory,
    identity: Identity,
    backend: Arc<dyn StateBackend>,
}

fn open(inventory_path: &Path) -> Result<Opened, String> {
    let inventory = Inventory::load(inventory_path).map_err(|e| e.to_string())?;
    let identity = Identity::of(&inventory);
    let backend = state::open(&inventory).map_err(|e| e.to_string())?;
    Ok(Opened {
        inventory,
        identity,
        backend,
    })
}

impl Opened {
    fn runs(&self) -> Result<Vec<StoredRun>, String> {
        state::runs(&*self.backend, &self.identity, &self.inventory).map_err(|e| e.to_string())
    }

    fn where_(&self) -> String {
        format!(
            "{} (state: {})",
            self.inventory.path.display(),
            self.backend.describe()
        )
    }
}

/// The run to recover: the one named, else the newest that left instances
/// out or weights changed.
fn pick(runs: &[StoredRun], id: Option<&str>, where_: &str) -> Result<Option<StoredRun>, String> {
    if let Some(id) = id {
        return state::find_run(runs, id)
            .cloned()
            .map(Some)
            .ok_or_else(|| format!("no run {id:?} of {where_} (see `rollscript runs`)"));
    }
    Ok(runs
        .iter()
        .rev()
        .find(|r| {
            let s = journal::summarise(&r.records());
            !s.out_of_service.is_empty() || s.weights_changed
        })
        .cloned())
}

pub async fn recover(inventory_path: &Path, opts: &RecoverOptions) -> Outcome {
    recover_with(inventory_path, opts, providers::build).await
}

/// `recover` with providers of the caller's choosing (tests use fakes).
pub async fn recover_with(
    inventory_path: &Path,
    opts: &RecoverOptions,
    make: impl Fn(&Arc<Inventory>) -> crate::primitives::Providers,
) -> Outcome {
    let o = match open(inventory_path) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("error: {e}");
            return Outcome::Invalid;
        }
    };
    let (runs, status) = match (o.runs(), o.backend.lock_status()) {
        (Ok(r), Ok(s)) => (r, s),
        (Err(e), _) => {
            eprintln!("error: {e}");
            return Outcome::Invalid;
        }
        (_, Err(e)) => {
            eprintln!("error: {e}");
            return Outcome::Invalid;
        }
    };
    let picked = match pick(&runs, opts.run.as_deref(), &o.where_()) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return Outcome::Invalid;
        }
    };
    let Some(run) = picked else {
        release_stale_lock(&*o.backend, status.as_ref());
        println!(
            "nothing to recover: no run of {} left an instance out of service",
            o.where_()
        );
        return Outcome::Success;
    };
    let summary = journal::summarise(&run.records());
    if summary.out_of_service.is_empty() && !summary.weights_changed {
        release_stale_lock(&*o.backend, status.as_ref());
        println!(
            "nothing to recover: run {} left every instance in service",
            summary.run
        );
        return Outcome::Success;
    }

    // That run must be over: its lock free or provably stale, its process gone.
    if state::run_is_live(&summary, status.as_ref()) && summary.pid != std::process::id() {
        let (holder, note) = match &status {
            Some(LockStatus::Live(h)) if h.holder.run.as_deref() == Some(summary.run.as_str()) => {
                (h.holder.clone(), h.note.clone())
            }
            _ => (
                state::run_process(&summary),
                "that process is still running".to_string(),
            ),
        };
        if !opts.force {
            eprintln!(
                "error: run {} is still running: {} ({note})\n  stop it first (Ctrl-C compensates by itself); if that machine or process is gone, wait for its lease to run out, or take over with `rollscript recover --force`",
                summary.run,
                holder.describe()
            );
            return Outcome::Locked;
        }
        println!(
            "--force: recovering run {} although it cannot be proven gone: {} ({note})",
            summary.run,
            holder.describe()
        );
    }
    if let (true, Some(LockStatus::Live(h))) = (opts.force, &status) {
        println!(
            "--force: taking over the deploy lock {} ({})",
            h.holder.describe(),
            h.note
        );
    }
    let me = Holder::me(Some(format!("recover {}", summary.run)));
    let (b, force) = (o.backend.clone(), opts.force);
    let _lock = match tokio::task::spawn_blocking(move || b.lock(&me, Duration::ZERO, force)).await
    {
        Ok(Ok(l)) => l,
        Ok(Err(e @ (LockError::Held(_) | LockError::Queued(_)))) => {
            eprintln!("error: {e}");
            return Outcome::Locked;
        }
        Ok(Err(e)) => {
            eprintln!("error: {e}");
            return Outcome::Invalid;
        }
        Err(e) => {
            eprintln!("error: {e}");
            return Outcome::Invalid;
        }
    };

    println!(
        "recovering run {} (started {} by pid {} on {}): out of service: {}{}",
        summary.run,
        summary.started,
        summary.pid,
        summary.host,
        if summary.out_of_service.is_empty() {
            "none".to_string()
        } else {
            summary.out_of_service.join(", ")
        },
        if summary.weights_changed {
            "; LB weights changed"
        } else {
            ""
        }
    );
    let Opened {
        inventory, backend, ..
    } = o;
    // Members the dead run discovered may have left the target group since
    // (a deregistered target goes once drained): its run-start record knows
    // them. Then discovery adds today's members.
    let mut inventory = inventory;
    for known in &summary.instances {
        if inventory.instance(&known.name).is_none() {
            inventory.add_instance(known.clone().into());
        }
    }
    let discovery = make(&Arc::new(inventory.clone())).discovery;
    let inventory = match providers::discover(inventory, &*discovery).await {
        Ok(inv) => inv,
        Err(e) => {
            eprintln!("error: discovering instances: {e}");
            return Outcome::Failed;
        }
    };
    let inventory = Arc::new(inventory);
    let journal = match open_journal(inventory_path, &run, backend.mirror()) {
        Ok(j) => Arc::new(j),
        Err(e) => {
            eprintln!(
                "error: cannot append to the journal of run {}: {}",
                run.id,
                journal::io_text(&e)
            );
            return Outcome::Invalid;
        }
    };
    let effects = Arc::new(Effects::new(
        inventory.clone(),
        make(&inventory),
        None,
        CancellationToken::new(),
    ));
    effects.set_journal(journal.clone());
    let targets: Vec<compensate::Target> = summary
        .out_of_service
        .iter()
        .map(|n| compensate::Target {
            name: n.clone(),
            touched: summary.touched.contains(n),
            registered: summary.registered.contains(n),
        })
        .collect();

    // The dead run's own compensation step, found by a dry run of its script.
    let handle = tokio::runtime::Handle::current();
    let script = script_for_hook(&summary);
    let hook = match &script {
        Ok(path) => {
            let (path, inv, vars, h) = (
                path.clone(),
                inventory.clone(),
                vars_of(&summary.args),
                handle.clone(),
            );
            tokio::task::spawn_blocking(move || find_hook(&path, &inv, vars, h))
                .await
                .unwrap_or_else(|e| Err(format!("the script's dry run panicked: {e}")))
        }
        Err(why) => Err(why.clone()),
    };
    let hook = match hook {
        Ok(Some(h)) => Some(h),
        Ok(None) => None,
        Err(why) => {
            warn!("{why}: using the default compensation step");
            None
        }
    };

    print!(
        "{}",
        plan(
            &effects,
            &targets,
            hook.is_some().then(|| script.as_ref().unwrap().as_path()),
            summary.weights_changed
        )
    );
    if !opts.yes && std::io::stdin().is_terminal() && !confirm("recover now? [y/N] ") {
        println!("nothing done");
        return Outcome::Failed;
    }

    // The dead run took these out: the ledger must know, so a failed
    // put-back is reported as left out.
    for compensate::Target { name, .. } in &targets {
        effects
            .ledger
            .finish(name, "deregister", Duration::ZERO, None);
    }
    let e2 = effects.clone();
    let vars = vars_of(&summary.args);
    let dir = script.as_ref().map(|p| script_dir(p)).unwrap_or_default();
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
    let left: Vec<String> = fates
        .iter()
        .filter(|f| !f.restored)
        .map(|f| f.instance.clone())
        .collect();
    journal.best_effort(&Record::RunEnd {
        at: journal::now(),
        outcome: if left.is_empty() && !weights_left {
            "recovered"
        } else {
            "recovered_partly"
        }
        .into(),
        left_out: left.clone(),
        failed: Vec::new(),
    });
    for f in &fates {
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
        summary.run,
        journal.path.display()
    );
    if left.is_empty() && !weights_left {
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

/// What recover will do, numbered, before it does it.
fn plan(
    effects: &Effects,
    targets: &[compensate::Target],
    hook: Option<&Path>,
    weights: bool,
) -> String {
    let inv = &effects.inventory;
    let mut out = String::from("plan:\n");
    let mut n = 0;
    let mut step = |out: &mut String, text: String| {
        n += 1;
        writeln!(out, "  {n}. {text}").unwrap();
    };
    for compensate::Target { name, touched, .. } in targets {
        let touched = *touched;
        let Some(inst) = inv.instance(name) else {
            step(
                &mut out,
                format!("{name}: not in the inventory any more: left out, check it by hand"),
            );
            continue;
        };
        let back = format!(
            "then back into the load balancer ({}), if healthy",
            effects.lb_kind()
        );
        let text = match (hook, touched) {
            (Some(script), _) => format!(
                "{name}: the script's on_compensate step ({}), {back}",
                script.display()
            ),
            (None, true) => match &inv.app.rollback {
                Some(cmd) => format!(
                    "{name}: app.rollback (a command ran on it after it was taken out): {}; health check {}; {back}",
                    journal::redact(cmd),
                    inv.health_url(inst)
                ),
                None => format!(
                    "{name}: no app.rollback configured, kept as deployed; health check {}; {back}",
                    inv.health_url(inst)
                ),
            },
            (None, false) => format!("{name}: health check {}; {back}", inv.health_url(inst)),
        };
        step(&mut out, text);
    }
    if weights {
        step(
            &mut out,
            "LB weights: every instance back to its configured weight".into(),
        );
    }
    out
}

fn confirm(question: &str) -> bool {
    eprint!("{question}");
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
    matches!(line.trim(), "y" | "yes" | "Y")
}

/// The dead run's script, if it is still there and unchanged.
fn script_for_hook(s: &Summary) -> Result<PathBuf, String> {
    let path = s
        .script_path
        .as_deref()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(&s.script));
    let text = std::fs::read(&path)
        .map_err(|e| format!("the run's script {} cannot be read ({e})", path.display()))?;
    let sha = hex::encode(sha2::Sha256::digest(&text));
    if !s.script_sha256.is_empty() && sha != s.script_sha256 {
        return Err(format!(
            "the run's script {} changed since that run",
            path.display()
        ));
    }
    Ok(path)
}

fn script_dir(script: &Path) -> PathBuf {
    match script.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// The `--var`s of a run's (redacted) command line.
fn vars_of(args: &[String]) -> BTreeMap<String, String> {
    let mut vars = BTreeMap::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let kv = if a == "--var" {
            it.next().map(String::as_str)
        } else {
            a.strip_prefix("--var=")
        };
        if let Some((k, v)) = kv.and_then(|kv| kv.split_once('=')) {
            vars.insert(k.to_string(), v.to_string());
        }
    }
    vars
}

/// The script's `on_compensate` step, found by running it against a
/// recorder (nothing acts, its own log lines muted): the dry run's context,
/// holding the step, or `Ok(None)` when the script sets none. Blocking: the
/// script runs on this thread.
fn find_hook(
    script: &Path,
    inventory: &Arc<Inventory>,
    vars: BTreeMap<String, String>,
    handle: tokio::runtime::Handle,
) -> Result<Option<Arc<ScriptContext>>, String> {
    let effects = Arc::new(Effects::new(
        inventory.clone(),
        providers::build(inventory),
        Some(Arc::new(Recorder::new())),
        CancellationToken::new(),
    ));
    let ctx = Arc::new(ScriptContext::new(effects, vars, Answers::Yes, handle));
    let host = Host::new(&script_dir(script), ctx.clone());
    let compiled = host.compile(script).map_err(|d| {
        format!(
            "the run's script {} does not compile any more: {}",
            script.display(),
            d.first().map(|d| d.message.clone()).unwrap_or_default()
        )
    })?;
    crate::ui::mute_script_logs(true);
    // An error after the hook was set does not matter: only the hook does.
    let _ = host.run(&compiled);
    crate::ui::mute_script_logs(false);
    let found = ctx.hook.lock().unwrap().is_some();
    Ok(found.then_some(ctx))
}

fn release_stale_lock(backend: &dyn StateBackend, status: Option<&LockStatus>) {
    if let Some(LockStatus::Stale(h, why)) = status {
        if backend.break_lock().is_ok() {
            println!("released a stale deploy lock: {} — {why}", h.describe());
        }
    }
}

/// `rollscript unlock`: removes a lock whose holder is gone (asking first
/// unless `--yes`); one whose holder may be running only with `--force`.
pub fn unlock(inventory: &Path, yes: bool, force: bool) -> Outcome {
    let o = match open(inventory) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("error: {e}");
            return Outcome::Invalid;
        }
    };
    let status = match o.backend.lock_status() {
        Ok(Some(s)) => s,
        Ok(None) => {
            println!("no deploy lock is held for {}", o.where_());
            return Outcome::Success;
        }
        Err(e) => {
            eprintln!("error: {e}");
            return Outcome::Invalid;
        }
    };
    match &status {
        LockStatus::Stale(h, why) => println!("deploy lock {} — {why}", h.describe()),
        LockStatus::Live(h) if !force => {
            eprintln!(
                "error: the deploy lock is {} ({}); it cannot be proven gone: stop that run, or pass --force to remove the lock anyway",
                h.holder.describe(),
                h.note
            );
            return Outcome::Locked;
        }
        LockStatus::Live(h) => println!(
            "--force: removing the deploy lock {} ({})",
            h.holder.describe(),
            h.note
        ),
    }
    if !yes {
        if !std::io::stdin().is_terminal() {
            eprintln!("error: unlock needs confirmation: pass --yes");
            return Outcome::Invalid;
        }
        if !confirm("remove it? [y/N] ") {
            println!("left in place");
            return Outcome::Failed;
        }
    }
    match o.backend.break_lock() {
        Ok(_) => {
            println!("unlocked");
            Outcome::Success
        }
        Err(e) => {
            eprintln!("error: {e}");
            Outcome::Failed
        }
    }
}

/// `rollscript runs`: one line per run of this inventory, newest last.
pub fn list_runs(inventory: &Path) -> Result<String, String> {
    let o = open(inventory)?;
    let runs = o.runs()?;
    let status = o.backend.lock_status().map_err(|e| e.to_string())?;
    let mut out = String::new();
    if runs.is_empty() {
        return Ok(format!("no runs recorded for {}\n", o.where_()));
    }
    writeln!(
        out,
        "{:<26}  {:<20}  {:<12}  {:<28}  left out",
        "run", "started", "outcome", "script"
    )
    .unwrap();
    for run in runs {
        let s = journal::summarise(&run.records());
        let outcome = s.outcome.clone().unwrap_or_else(|| {
            if state::run_is_live(&s, status.as_ref()) {
                "running".into()
            } else {
                "died".into()
            }
        });
        writeln!(
            out,
            "{:<26}  {:<20}  {:<12}  {:<28}  {}",
            s.run,
            s.started.get(..19).unwrap_or(&s.started),
            outcome,
            s.script,
            if s.out_of_service.is_empty() {
                "-".to_string()
            } else {
                s.out_of_service.join(",")
            }
        )
        .unwrap();
    }
    Ok(out)
}

/// `rollscript runs show ID`: the journal, readably.
pub fn show_run(inventory: &Path, id: &str) -> Result<String, String> {
    let o = open(inventory)?;
    let runs = o.runs()?;
    let run =
        state::find_run(&runs, id).ok_or_else(|| format!("no run {id:?} of {}", o.where_()))?;
    let records = run.records();
    let mut out = String::new();
    for r in &records {
        match r {
            Record::RunStart {
                run,
                at,
                script,
                inventory,
                user,
                host,
                pid,
                args,
                ..
            } => {
                writeln!(out, "run {run}\n  started {at} by {user}@{host} (pid {pid})\n  script {script}, inventory {inventory}\n  command: {}", args.join(" ")).unwrap();
            }
            Record::Intent { seq, at, text, .. } => {
                writeln!(out, "{:>4}. {}  {text}", seq, time_of(at)).unwrap();
            }
            Record::Result {
                seq,
                ok,
                duration_ms,
                error,
                ..
            } => {
                if *ok {
                    writeln!(out, "      ok in {:.1}s", *duration_ms as f64 / 1000.0).unwrap();
                } else {
                    writeln!(
                        out,
                        "      FAILED after {:.1}s (step {seq}): {}",
                        *duration_ms as f64 / 1000.0,
                        error.as_deref().unwrap_or("").lines().next().unwrap_or("")
                    )
                    .unwrap();
                }
            }
            Record::Compensation {
                at,
                instance,
                restored,
                detail,
                ..
            } => {
                writeln!(
                    out,
                    "      {}  compensation {instance}: {} — {detail}",
                    time_of(at),
                    if *restored { "restored" } else { "LEFT OUT" }
                )
                .unwrap();
            }
            Record::RunEnd {
                at,
                outcome,
                left_out,
                failed,
            } => {
                writeln!(out, "end {at}: {outcome}").unwrap();
                if !failed.is_empty() {
                    writeln!(out, "  failed: {}", failed.join(", ")).unwrap();
                }
                if !left_out.is_empty() {
                    writeln!(out, "  left out of service: {}", left_out.join(", ")).unwrap();
                }
            }
            Record::Control {
                at,
                command,
                by,
                detail,
            } => {
                let detail = if detail.is_empty() {
                    String::new()
                } else {
                    format!(": {detail}")
                };
                writeln!(out, "      {}  {command} by {by}{detail}", time_of(at)).unwrap();
            }
        }
    }
    let s = journal::summarise(&records);
    if s.outcome.is_none() {
        writeln!(
            out,
            "(no end record: the run is still going or died; out of service now: {})",
            if s.out_of_service.is_empty() {
                "none".into()
            } else {
                s.out_of_service.join(", ")
            }
        )
        .unwrap();
    }
    Ok(out)
}

fn time_of(at: &str) -> &str {
    at.get(11..19).unwrap_or(at)
}
