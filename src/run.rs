//! One invocation of `run`, `plan`, `check` or `api`, from validated options
//! to an [`Outcome`]. `main` maps the outcome to the process exit code.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use sha2::Digest;

use crate::compensate;
use crate::config::Inventory;
use crate::effects::Effects;
use crate::engine::{self, Answers, Diagnostic, Host, ScriptContext};
use crate::journal::{self, Journal, Record};
use crate::lock::{self, LockError};
use crate::plan::{render, Recorder};
use crate::providers;
use crate::state::{self, Identity, JournalMirror, StateBackend};
use crate::summary;

/// How a command ended; each maps to one documented exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// The deployment failed or was aborted (compensation done).
    Failed,
    /// Usage, inventory or script error: nothing was touched.
    Invalid,
    /// Another run holds the deploy lock.
    Locked,
    Interrupted,
}

impl Outcome {
    pub fn exit_code(self) -> u8 {
        match self {
            Self::Success => 0,
            Self::Failed => 1,
            Self::Invalid => 2,
            Self::Locked => 3,
            Self::Interrupted => 130,
        }
    }

    pub fn meaning(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Failed => "deployment failed or was aborted",
            Self::Invalid => "usage, inventory or script error; nothing was touched",
            Self::Locked => "another run holds the deploy lock",
            Self::Interrupted => "interrupted",
        }
    }
}

#[derive(Debug, Clone)]
pub struct RunOptions {
    pub script: PathBuf,
    pub inventory: PathBuf,
    pub vars: BTreeMap<String, String>,
    pub dry_run: bool,
    pub yes: bool,
    /// How long to wait for another run's deploy lock.
    pub lock_wait: std::time::Duration,
    /// Re-run only the instances that failed in this earlier run.
    pub only_failed: Option<String>,
    /// Ask before each mutating step.
    pub step: bool,
    /// Deploy instances found out of rotation before the run (they stay out).
    pub include_parked: bool,
}

/// The folder imports resolve against.
fn script_dir(script: &Path) -> PathBuf {
    match script.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn print_diagnostics(diags: &[Diagnostic]) {
    for d in diags {
        eprint!("{}", d.render());
    }
    if diags.len() > 1 {
        eprintln!("{} errors", diags.len());
    }
}

/// `run` and `plan`, with the providers the inventory names.
pub async fn run(opts: RunOptions) -> Outcome {
    run_with(opts, providers::build).await
}

/// `run` with providers of the caller's choosing (tests use fakes).
pub async fn run_with(
    opts: RunOptions,
    make: impl FnOnce(&Arc<Inventory>) -> crate::primitives::Providers,
) -> Outcome {
    let started = std::time::Instant::now();
    let inventory = match Inventory::load(&opts.inventory) {
        Ok(inv) => inv,
        Err(e) => {
            eprintln!("error: {e}");
            return Outcome::Invalid;
        }
    };
    crate::redact::register_vars(&opts.vars);
    // The state backend before anything else: PostgreSQL unreachable is a
    // usage error, with nothing touched. The identity is the inventory's as
    // written (before discovery), the same on every machine.
    let identity = Identity::of(&inventory);
    let backend: Option<Arc<dyn StateBackend>> = if opts.dry_run && opts.only_failed.is_none() {
        None
    } else {
        match state::open(&inventory) {
            Ok(b) => Some(b),
            Err(e) => {
                eprintln!("error: {e}");
                return Outcome::Invalid;
            }
        }
    };
    // Discovery reads the target group: not in a plan, which touches nothing.
    let inventory = if opts.dry_run {
        if matches!(
            inventory.lb.backend,
            crate::config::LbBackend::Aws { discover: true, .. }
        ) {
            warn!("lb.discover = true: the plan shows only the instances listed in the inventory; a run adds the target group's members");
        }
        inventory
    } else {
        match providers::discover(inventory).await {
            Ok(inv) => inv,
            Err(e) => {
                eprintln!("error: discovering instances: {e}");
                return Outcome::Failed;
            }
        }
    };
    let inventory = Arc::new(inventory);
    if opts.dry_run {
        for e in inventory.missing_files() {
            warn!("{e} (a run would refuse to start)");
        }
    }
    let only = match &opts.only_failed {
        None => None,
        Some(run_id) => match failed_of(backend.as_deref(), &identity, &inventory, run_id) {
            Ok(names) => Some(names),
            Err(e) => {
                eprintln!("error: {e}");
                return Outcome::Invalid;
            }
        },
    };
    let cancel = CancellationToken::new();
    let recorder = opts.dry_run.then(|| Arc::new(Recorder::new()));
    let effects = Arc::new(Effects::new(
        inventory.clone(),
        make(&inventory),
        recorder.clone(),
        cancel.clone(),
    ));
    if opts.step {
        effects.enable_step_mode();
    }
    let mut ctx = ScriptContext::new(
        effects.clone(),
        opts.vars.clone(),
        if opts.yes { Answers::Yes } else { Answers::Ask },
        tokio::runtime::Handle::current(),
    );
    if let Some(names) = only {
        info!(
            "re-running only the instances that failed in run {}: {}",
            opts.only_failed.as_deref().unwrap_or_default(),
            names.iter().cloned().collect::<Vec<_>>().join(", ")
        );
        ctx = ctx.only(names);
    }
    let ours = ctx.only.clone().unwrap_or_default();
    let ctx = Arc::new(ctx);
    let host = Arc::new(Host::new(&script_dir(&opts.script), ctx.clone()));
    let compiled = match host.compile(&opts.script) {
        Ok(c) => Arc::new(c),
        Err(diags) => {
            print_diagnostics(&diags);
            return Outcome::Invalid;
        }
    };
    // The inventory against the machine and the LB, before any effect.
    if !opts.dry_run {
        if let Err(problems) = preflight(&effects).await {
            for p in &problems {
                eprintln!("error: {p}");
            }
            eprintln!(
                "nothing was touched: fix the inventory (or the load balancer) and run again"
            );
            return Outcome::Invalid;
        }
    }

    // Only now, with a script that compiles, take the lock and open a journal.
    let mut lock: Option<Box<dyn state::HeldLock>> = None;
    // Why the shared lock was lost mid-run, if it was.
    let lost: Arc<std::sync::Mutex<Option<String>>> = Default::default();
    if let (false, Some(backend)) = (opts.dry_run, &backend) {
        let run_id = journal::new_run_id(&opts.inventory);
        let me = lock::Holder::me(Some(run_id.clone()));
        let (b, wait) = (backend.clone(), opts.lock_wait);
        match tokio::task::spawn_blocking(move || b.lock(&me, wait, false)).await {
            Ok(Ok(l)) => lock = Some(l),
            Ok(Err(e @ (LockError::Held(_) | LockError::Queued(_)))) => {
                eprintln!("error: {e}");
                return Outcome::Locked;
            }
            Ok(Err(e)) => {
                eprintln!("error: {e}");
                return Outcome::Invalid;
            }
            Err(e) => {
                eprintln!("error: lock task failed: {e}");
                return Outcome::Invalid;
            }
        }
        // Under the lock, so another run's drains are not taken for an
        // operator's: what is out of rotation now stays as found.
        match effects.survey(opts.include_parked, &ours).await {
            Ok(parked) => {
                for (name, word) in parked {
                    if opts.include_parked {
                        warn!(instance = %name, "{name}: out of rotation before the run ({word}): deployed but left out of rotation (--include-parked)");
                    } else {
                        warn!(instance = %name, "{name}: out of rotation before the run ({word}): left as found (deploy it with --include-parked)");
                    }
                }
            }
            Err(e) => {
                eprintln!("error: reading the load balancer's state of the fleet: {e}");
                return Outcome::Invalid;
            }
        }
        match open_journal(&opts, &inventory, &identity, &run_id, backend.mirror()) {
            Ok(j) => {
                // A record that cannot be written stops the run at once,
                // as a first Ctrl-C does; compensation then runs.
                let token = effects.cancel_token();
                j.on_stop(Box::new(move |why| {
                    error!("journal write failed: {why}: stopping at the next safe point, then compensating");
                    token.cancel();
                }));
                effects.set_journal(Arc::new(j))
            }
            Err(e) => {
                eprintln!(
                    "error: cannot write the run journal under {}: {}",
                    journal::runs_dir(&opts.inventory).display(),
                    journal::io_text(&e)
                );
                return Outcome::Invalid;
            }
        }
        // A lost lease stops the run at the next safe point; compensation
        // then runs on a token of its own, from the local journal.
        let token = effects.cancel_token();
        let why_lost = lost.clone();
        if let Some(l) = lock.as_mut() {
            l.on_lost(Box::new(move |why| {
                error!("{why}: stopping at the next safe point, then compensating from the local journal");
                *why_lost.lock().unwrap() = Some(why);
                token.cancel();
            }));
        }
    }

    let signals = tokio::spawn(watch_signals(effects.clone()));
    if !opts.dry_run {
        info!(
            script = %opts.script.display(),
            inventory = %opts.inventory.display(),
            instances = inventory.instances.len(),
            lb = effects.lb_kind(),
            run = effects.journal().map(|j| j.run.as_str()).unwrap_or(""),
            "run started"
        );
    }
    let progress = if opts.dry_run || !crate::ui::has_progress() {
        None
    } else {
        let estimate = estimate(&opts, &inventory).await;
        let e = effects.clone();
        Some(crate::ui::Progress::start(
            Arc::new(move || e.ledger.snapshot()),
            ctx.instance_count(),
            estimate,
        ))
    };
    let result = {
        let host = host.clone();
        let compiled = compiled.clone();
        tokio::task::spawn_blocking(move || host.run(&compiled))
            .await
            .unwrap_or_else(|e| Err(Diagnostic::plain(format!("script thread panicked: {e}"))))
    };

    if let Some(rec) = &recorder {
        signals.abort();
        let header = format!(
            "Plan: {} against {} ({} instance{}, load balancer: {})",
            opts.script.display(),
            opts.inventory.display(),
            inventory.instances.len(),
            if inventory.instances.len() == 1 {
                ""
            } else {
                "s"
            },
            effects.lb_kind(),
        );
        print!("{}", render(&header, rec, &assumptions(&inventory)));
        effects.close().await;
        return match result {
            Ok(_) => Outcome::Success,
            Err(d) => {
                eprint!("{}", d.render());
                eprintln!("the plan stops here: the script fails at this step");
                Outcome::Failed
            }
        };
    }

    let outcome = match &result {
        Ok(_) => Outcome::Success,
        Err(d) => {
            crate::ui::eprint_above(&d.render());
            if d.interrupted {
                Outcome::Interrupted
            } else {
                Outcome::Failed
            }
        }
    };
    // A step refused for want of its journal record, or a lost lease: the
    // run stopped itself (not the operator), and says why.
    let stopped = effects
        .journal()
        .and_then(|j| j.stopped())
        .or_else(|| lost.lock().unwrap().clone());
    let outcome = match stopped {
        Some(why) => {
            error!("journal write failed: {why}: the run stopped before that step (nothing was done without its record)");
            Outcome::Failed
        }
        None => outcome,
    };

    // Registered without a wait: back if the LB says so.
    effects.renew_cancel();
    effects.confirm_registered().await;
    // Compensation: never leave an instance out silently. It gets its own
    // cancellation phase so it can still wait after a first Ctrl-C.
    let targets = effects.ledger.needs_compensation();
    if !targets.is_empty() {
        effects.renew_cancel();
        effects.set_compensating(true);
        warn!(
            "the run {} with {} instance(s) out of service: {} — compensating",
            if outcome == Outcome::Success {
                "ended"
            } else {
                "stopped"
            },
            targets.len(),
            targets
                .iter()
                .map(|t| t.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
        let effects2 = effects.clone();
        let host2 = host.clone();
        let ctx2 = ctx.clone();
        let handle = tokio::runtime::Handle::current();
        let _ = tokio::task::spawn_blocking(move || {
            let hook = host2.compensation_hook(&ctx2);
            let hook_ref = hook
                .as_ref()
                .map(|h| h as &(dyn Fn(&crate::config::Instance) -> Result<(), String> + Sync));
            compensate::compensate(&effects2, &handle, &targets, hook_ref)
        })
        .await;
        effects.set_compensating(false);
    }
    // Weights a failed run shifted go back as configured (a successful run
    // keeps what the script left).
    let shifted = effects.weights_changed();
    if outcome != Outcome::Success && !shifted.is_empty() {
        effects.renew_cancel();
        warn!(
            "the run stopped with the LB weights of {} instance(s) changed — putting them back as configured",
            shifted.len()
        );
        if let Err(e) = effects.reset_weights().await {
            error!("LB weights LEFT CHANGED for {}: {e}", shifted.join(", "));
        }
    }
    signals.abort();
    effects.close().await;
    if let Some(p) = progress {
        p.finish();
    }

    let left_out = effects.out_of_service();
    let outcome = if outcome == Outcome::Success && !left_out.is_empty() {
        Outcome::Failed
    } else {
        outcome
    };
    if let Some(j) = effects.journal() {
        j.best_effort(&Record::RunEnd {
            at: journal::now(),
            outcome: outcome_word(outcome).into(),
            left_out: left_out.clone(),
            failed: effects.ledger.failed(),
        });
    }
    if !left_out.is_empty() {
        error!(
            "LEFT OUT of service by this run: {} (see the summary for why)",
            left_out.join(", ")
        );
    }
    eprint!(
        "{}",
        summary::render(
            &effects.ledger.snapshot(),
            started.elapsed(),
            effects.journal().map(|j| j.path.as_path()),
            outcome.exit_code(),
            outcome.meaning()
        )
    );
    drop(lock);
    outcome
}

/// The plan's typical duration, for the progress ETA: the same script run
/// against the recorder first (milliseconds; nothing is touched).
async fn estimate(opts: &RunOptions, inventory: &Arc<Inventory>) -> Option<std::time::Duration> {
    let rec = Arc::new(Recorder::new());
    let effects = Arc::new(Effects::new(
        inventory.clone(),
        providers::build(inventory),
        Some(rec.clone()),
        CancellationToken::new(),
    ));
    let ctx = Arc::new(ScriptContext::new(
        effects,
        opts.vars.clone(),
        Answers::Yes,
        tokio::runtime::Handle::current(),
    ));
    let host = Host::new(&script_dir(&opts.script), ctx);
    let compiled = host.compile(&opts.script).ok()?;
    tokio::task::spawn_blocking(move || host.run(&compiled).ok().map(|_| rec.total().typical))
        .await
        .ok()
        .flatten()
}

fn outcome_word(o: Outcome) -> &'static str {
    match o {
        Outcome::Success => "success",
        Outcome::Failed => "failed",
        Outcome::Interrupted => "interrupted",
        Outcome::Invalid => "invalid",
        Outcome::Locked => "locked",
    }
}

fn open_journal(
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
        instances: if matches!(
            inv.lb.backend,
            crate::config::LbBackend::Aws { discover: true, .. }
        ) {
            inv.instances.iter().map(Into::into).collect()
        } else {
            Vec::new()
        },
    };
    Journal::create(&opts.inventory, run, &start, mirror)
}

/// The instances that failed in run `id` of this inventory.
fn failed_of(
    backend: Option<&dyn StateBackend>,
    identity: &Identity,
    inv: &Inventory,
    id: &str,
) -> Result<std::collections::BTreeSet<String>, String> {
    let backend = backend.ok_or("--only-failed needs the state backend")?;
    let runs = state::runs(backend, identity, inv).map_err(|e| e.to_string())?;
    let run = state::find_run(&runs, id).ok_or_else(|| {
        format!(
            "--only-failed: no run {id:?} of this inventory in {} (see `rollscript runs`)",
            backend.describe()
        )
    })?;
    let s = journal::summarise(&run.records());
    let mut names: std::collections::BTreeSet<String> = s.failed.into_iter().collect();
    names.extend(s.left_out);
    if names.is_empty() {
        return Err(format!(
            "--only-failed: no instance failed in run {}",
            s.run
        ));
    }
    Ok(names)
}

/// First Ctrl-C, SIGTERM or SIGHUP (the operator's ssh session dropped):
/// cancel (waits end, the script stops at the next statement, compensation
/// runs). A first signal *during* compensation only says what is going on:
/// stopping it would leave instances out. Another one stops at once — the
/// journal records which instances are out, for `rollscript recover`.
async fn watch_signals(effects: Arc<Effects>) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        return;
    };
    let mut cancelled = false;
    let mut warned_compensating = false;
    loop {
        tokio::select! {
            _ = int.recv() => {},
            _ = term.recv() => {},
            _ = hup.recv() => {},
        }
        if effects.is_compensating() && !warned_compensating {
            warned_compensating = true;
            warn!(
                "compensating {} instance(s) so that none is left out; press Ctrl-C again to stop at once",
                effects.out_of_service().len()
            );
            continue;
        }
        if !cancelled && !effects.is_compensating() {
            warn!("interrupt received: stopping at the next safe point, then compensating (again to stop now)");
            effects.cancel_token().cancel();
            cancelled = true;
            continue;
        }
        let left = effects.out_of_service();
        error!(
            "stopping now; out of service: {} — run `rollscript recover`",
            if left.is_empty() {
                "none".to_string()
            } else {
                left.join(", ")
            }
        );
        if let Some(j) = effects.journal() {
            j.best_effort(&Record::RunEnd {
                at: journal::now(),
                outcome: "killed".into(),
                left_out: left,
                failed: effects.ledger.failed(),
            });
        }
        let _ = lock::force_unlock_if_mine(&effects.inventory.path);
        std::process::exit(Outcome::Interrupted.exit_code() as i32);
    }
}

/// Everything a run can check before its first effect: the files it needs
/// exist, and the LB agrees with the inventory. Each problem names the
/// instance, key or file.
async fn preflight(effects: &Effects) -> Result<(), Vec<String>> {
    let inv = &effects.inventory;
    let mut problems: Vec<String> = inv.missing_files().iter().map(|e| e.to_string()).collect();
    // Discovered fleets are only known now.
    if let crate::config::CountOrPercent::Count(n) = inv.lb.min_in_service {
        if n as usize > inv.instances.len() {
            problems.push(format!(
                "{}: lb.min_in_service: {n} is more than the {} instances of the fleet: no instance could ever be taken out",
                inv.path.display(),
                inv.instances.len()
            ));
        }
    }
    match effects.verify_lb().await {
        Ok(found) => problems.extend(found),
        Err(e) => problems.push(format!(
            "cannot check the inventory against the load balancer: {}",
            e.to_string().lines().next().unwrap_or_default()
        )),
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

fn assumptions(inv: &Inventory) -> Vec<String> {
    use crate::config::format_duration as f;
    vec![
        format!(
            "remote commands take {} typically, up to ssh.command_timeout = {}",
            f(crate::effects::TYPICAL_COMMAND),
            f(inv.ssh.command_timeout)
        ),
        format!(
            "drains end within seconds once connections close, up to lb.drain_timeout = {}",
            f(inv.lb.drain_timeout)
        ),
        format!(
            "health passes after health.healthy_threshold = {} checks {} apart, up to {} tries of ≤ {} each",
            inv.health.healthy_threshold,
            f(inv.health.interval),
            inv.health.retries,
            f(inv.health.timeout)
        ),
        format!(
            "the LB reports a registered instance healthy in {}, up to lb.register_timeout = {}",
            f(crate::effects::TYPICAL_REGISTER),
            f(inv.lb.register_timeout)
        ),
    ]
}

/// A host for compiling and introspection only: its effects are a dry run
/// over a one-instance placeholder inventory, so nothing can act.
fn offline_host(dir: &Path) -> Host {
    let inv = Arc::new(Inventory::placeholder());
    let effects = Arc::new(Effects::new(
        inv.clone(),
        providers::build(&inv),
        Some(Arc::new(Recorder::new())),
        CancellationToken::new(),
    ));
    let ctx = Arc::new(ScriptContext::new(
        effects,
        BTreeMap::new(),
        Answers::Yes,
        tokio::runtime::Handle::current(),
    ));
    Host::new(dir, ctx)
}

/// `check`: compile and lint every script, report every error.
pub fn check(scripts: &[PathBuf]) -> Outcome {
    let mut failed = 0;
    for s in scripts {
        let host = offline_host(&script_dir(s));
        match host.compile(s) {
            Ok(_) => println!("ok  {}", s.display()),
            Err(diags) => {
                failed += 1;
                print_diagnostics(&diags);
            }
        }
    }
    if failed > 0 {
        eprintln!("{failed} of {} scripts have errors", scripts.len());
        Outcome::Invalid
    } else {
        Outcome::Success
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiFormat {
    Text,
    Json,
    Markdown,
}

/// `api`: the reference, from the engine's own metadata.
pub fn api(format: ApiFormat) -> String {
    let host = offline_host(Path::new("."));
    let fns = engine::api::functions(host.engine());
    match format {
        ApiFormat::Text => engine::api::render_text(&fns),
        ApiFormat::Json => serde_json::to_string_pretty(&fns).expect("serialises") + "\n",
        ApiFormat::Markdown => engine::api::render_markdown(&fns),
    }
}

/// `api --definitions DIR`: `.d.rhai` files for editor completion.
pub fn api_definitions(dir: &Path) -> Outcome {
    let host = offline_host(Path::new("."));
    if let Err(e) =
        std::fs::create_dir_all(dir).and_then(|_| host.engine().definitions().write_to_dir(dir))
    {
        eprintln!("error: cannot write definitions to {}: {e}", dir.display());
        return Outcome::Invalid;
    }
    println!("wrote Rhai definition files to {}", dir.display());
    Outcome::Success
}
