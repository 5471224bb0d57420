//! `run` and `plan`: from validated options to an [`Outcome`], as a short
//! pipeline of named phases — load, prepare, preflight, begin (lock, survey,
//! journal), execute, settle (compensation, weights), report. Each phase
//! that can refuse returns a [`Failure`]; nothing here prints an error:
//! `main` does, once.
//!
//! Beside it: `session.rs` (the deploy lock, the parked survey and the
//! journal), `settle.rs` (compensation, weights, the run's end and summary),
//! `signals.rs` (Ctrl-C, SIGTERM, SIGHUP), `control.rs` (`rollscript
//! pause|resume|abort|promote`, read from the state backend), `offline.rs`
//! (`check`, `api`).

mod control;
mod offline;
mod session;
mod settle;
mod signals;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::{Inventory, LbBackend};
use crate::effects::Effects;
use crate::engine::{Answers, Compiled, Diagnostic, Host, ScriptContext};
use crate::plan::Recorder;
use crate::primitives::Providers;
use crate::providers;
use crate::state::{self, Identity, StateBackend};

pub use crate::outcome::{Failure, Outcome};
pub use offline::{api, api_definitions, check, ApiFormat};

/// How `--summary` prints the run's summary on stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SummaryFormat {
    /// None on stdout (the table on stderr, or the JSON record with JSON logs).
    #[default]
    Off,
    /// The summary object alone on stdout, whatever the log format.
    Json,
}

#[derive(Debug, Clone)]
pub struct RunOptions {
    pub script: PathBuf,
    pub inventory: PathBuf,
    pub vars: BTreeMap<String, String>,
    pub dry_run: bool,
    pub yes: bool,
    /// How long to wait for another run's deploy lock.
    pub lock_wait: Duration,
    /// Re-run only the instances that failed in this earlier run.
    pub only_failed: Option<String>,
    /// Ask before each mutating step.
    pub step: bool,
    /// Deploy instances found out of rotation before the run (they stay out).
    pub include_parked: bool,
    /// Run every `doctor` check before the first side effect.
    pub preflight: bool,
    pub summary: SummaryFormat,
}

/// The folder imports resolve against.
pub(crate) fn script_dir(script: &Path) -> PathBuf {
    match script.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Compile errors as one [`Failure`]: the rendered diagnostics for a
/// terminal, their messages for JSON.
pub(crate) fn diagnostics_failure(diags: &[Diagnostic]) -> Failure {
    let mut text: String = diags.iter().map(|d| d.render()).collect();
    if diags.len() > 1 {
        text.push_str(&format!("{} errors\n", diags.len()));
    }
    Failure::rendered(
        Outcome::Invalid,
        text,
        diags.iter().map(|d| d.headline()).collect(),
    )
}

/// `run` and `plan`, with the providers the inventory names.
pub async fn run(opts: RunOptions) -> Result<Outcome, Failure> {
    run_with(opts, providers::build).await
}

/// `run` with providers of the caller's choosing (tests use fakes).
pub async fn run_with(
    opts: RunOptions,
    make: impl Fn(&Arc<Inventory>) -> Providers,
) -> Result<Outcome, Failure> {
    let started = Instant::now();
    let loaded = load(&opts, &make).await?;
    let run = prepare(&opts, loaded, &make)?;
    if opts.dry_run {
        return Ok(plan(&opts, &run).await);
    }
    if opts.preflight {
        crate::preflight::doctor(&run.inventory, &make).await?;
    }
    let problems = crate::preflight::problems(&run.effects).await;
    if !problems.is_empty() {
        return Err(Failure::many(Outcome::Invalid, problems).with_hint(
            "nothing was touched: fix the inventory (or the load balancer) and run again",
        ));
    }
    let session = session::begin(&opts, &run).await?;
    let executed = execute(&opts, &run).await;
    let outcome = settle::settle(&run, &session, executed).await;
    Ok(settle::report(&opts, &run, session, outcome, started))
}

/// What the load phase found: the inventory (discovered members added), its
/// identity and state backend, and the instances of `--only-failed`.
struct Loaded {
    inventory: Arc<Inventory>,
    identity: Identity,
    backend: Option<Arc<dyn StateBackend>>,
    only: Option<BTreeSet<String>>,
}

async fn load(
    opts: &RunOptions,
    make: &impl Fn(&Arc<Inventory>) -> Providers,
) -> Result<Loaded, Failure> {
    let inventory = Inventory::load(&opts.inventory)?;
    crate::redact::register_vars(&opts.vars);
    // The state backend before anything else: PostgreSQL unreachable is a
    // usage error, with nothing touched. The identity is the inventory's as
    // written (before discovery), the same on every machine.
    let identity = Identity::of(&inventory);
    let backend = if opts.dry_run && opts.only_failed.is_none() {
        None
    } else {
        Some(state::open(&inventory).map_err(|e| Failure::invalid(e.to_string()))?)
    };
    let discovers = matches!(inventory.lb.backend, LbBackend::Aws { discover: true, .. });
    // Discovery reads the target group: not in a plan, which touches nothing.
    let inventory = if opts.dry_run {
        if discovers {
            warn!("lb.discover = true: the plan shows only the instances listed in the inventory; a run adds the target group's members");
        }
        for e in inventory.missing_files() {
            warn!("{e} (a run would refuse to start)");
        }
        inventory
    } else {
        let discovery = make(&Arc::new(inventory.clone())).discovery;
        // A Ctrl-C while the target group is read ends the run, touching nothing.
        tokio::select! {
            found = providers::discover(inventory, &*discovery) => found
                .map_err(|e| Failure::failed(format!("discovering instances: {e}")))?,
            _ = tokio::signal::ctrl_c() => {
                return Err(Failure::new(Outcome::Interrupted, "interrupted while discovering instances; nothing was touched"));
            }
        }
    };
    let only = match &opts.only_failed {
        None => None,
        Some(run_id) => Some(
            session::failed_of(backend.as_deref(), &identity, &inventory, run_id)
                .map_err(Failure::invalid)?,
        ),
    };
    Ok(Loaded {
        inventory: Arc::new(inventory),
        identity,
        backend,
        only,
    })
}

/// A compiled script with its effects layer and context: everything a run
/// (or a plan) executes with.
pub(crate) struct Prepared {
    pub inventory: Arc<Inventory>,
    pub identity: Identity,
    pub backend: Option<Arc<dyn StateBackend>>,
    pub effects: Arc<Effects>,
    pub ctx: Arc<ScriptContext>,
    pub host: Arc<Host>,
    pub compiled: Arc<Compiled>,
    pub recorder: Option<Arc<Recorder>>,
    /// Instances an earlier run of ours left out (`--only-failed`): not parked.
    pub ours: BTreeSet<String>,
}

fn prepare(
    opts: &RunOptions,
    loaded: Loaded,
    make: &impl Fn(&Arc<Inventory>) -> Providers,
) -> Result<Prepared, Failure> {
    let Loaded {
        inventory,
        identity,
        backend,
        only,
    } = loaded;
    let recorder = opts.dry_run.then(|| Arc::new(Recorder::new()));
    let effects = Arc::new(Effects::new(
        inventory.clone(),
        make(&inventory),
        recorder.clone(),
        CancellationToken::new(),
    ));
    if opts.step {
        effects.enable_step_mode();
    }
    if opts.dry_run {
        if let Some(m) = crate::effects::measured_drains(&opts.inventory) {
            effects.set_measured_drain(m);
        }
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
    let compiled = Arc::new(
        host.compile(&opts.script)
            .map_err(|d| diagnostics_failure(&d))?,
    );
    Ok(Prepared {
        inventory,
        identity,
        backend,
        effects,
        ctx,
        host,
        compiled,
        recorder,
        ours,
    })
}

/// What the script's thread ended with, and what still runs beside it until
/// the run is settled: the signal watcher and the progress bars.
pub(crate) struct Executed {
    pub result: Result<rhai::Dynamic, Diagnostic>,
    pub signals: tokio::task::JoinHandle<()>,
    /// The control channel's poller (pause, resume, abort, promote).
    pub control: Option<tokio::task::JoinHandle<()>>,
    pub progress: Option<crate::ui::Progress>,
}

/// The script on a blocking thread (bindings block on the runtime), with the
/// signal watcher and, on a terminal, the progress bars.
async fn execute(opts: &RunOptions, run: &Prepared) -> Executed {
    let signals = tokio::spawn(signals::watch(run.effects.clone()));
    let control = match (&run.backend, run.effects.journal()) {
        (Some(b), Some(j)) => Some(tokio::spawn(control::watch(
            b.control(),
            j.run.clone(),
            run.effects.clone(),
        ))),
        _ => None,
    };
    info!(
        script = %opts.script.display(),
        inventory = %opts.inventory.display(),
        instances = run.inventory.instances.len(),
        lb = %run.effects.lb_label(),
        run = run.effects.journal().map(|j| j.run.as_str()).unwrap_or(""),
        "run started"
    );
    let progress = if crate::ui::has_progress() {
        let estimate = estimate(opts, &run.inventory).await;
        let (e, e2) = (run.effects.clone(), run.effects.clone());
        Some(crate::ui::Progress::start(
            Arc::new(move || e.ledger.snapshot()),
            Arc::new(move || e2.control().status()),
            run.ctx.instance_count(),
            estimate,
        ))
    } else {
        None
    };
    let (host, compiled) = (run.host.clone(), run.compiled.clone());
    let result = tokio::task::spawn_blocking(move || host.run(&compiled))
        .await
        .unwrap_or_else(|e| Err(Diagnostic::plain(format!("script thread panicked: {e}"))));
    Executed {
        result,
        signals,
        control,
        progress,
    }
}

/// A dry run: the plan on stdout; a script that fails in the plan is exit 1.
async fn plan(opts: &RunOptions, run: &Prepared) -> Outcome {
    let (host, compiled) = (run.host.clone(), run.compiled.clone());
    let result = tokio::task::spawn_blocking(move || host.run(&compiled))
        .await
        .unwrap_or_else(|e| Err(Diagnostic::plain(format!("script thread panicked: {e}"))));
    let n = run.inventory.instances.len();
    let header = format!(
        "Plan: {} against {} ({n} instance{}, load balancer: {})",
        opts.script.display(),
        opts.inventory.display(),
        if n == 1 { "" } else { "s" },
        run.effects.lb_label(),
    );
    let rec = run.recorder.as_ref().expect("a plan records");
    let assumed = assumptions(&run.inventory, run.effects.measured_drain());
    let mut stdout = std::io::BufWriter::new(std::io::stdout().lock());
    // A closed pipe (`plan | head`) is not the plan's failure.
    let _ = crate::plan::write(&mut stdout, &header, rec, &assumed)
        .and_then(|()| std::io::Write::flush(&mut stdout));
    drop(stdout);
    run.effects.close().await;
    match result {
        Ok(_) => Outcome::Success,
        Err(d) => {
            crate::ui::report_failure(&Failure::rendered(
                Outcome::Failed,
                format!(
                    "{}the plan stops here: the script fails at this step\n",
                    d.render()
                ),
                vec![d.headline()],
            ));
            Outcome::Failed
        }
    }
}

/// What the plan assumes of drains: the drains an earlier run of this
/// inventory measured, else (ELBv2, whose fixed delay a plan cannot read
/// offline) that there is no measurement.
fn drain_assumption(inv: &Inventory, measured: Option<&crate::effects::MeasuredDrain>) -> String {
    use crate::config::format_duration as f;
    let bound = f(inv.lb.drain_timeout);
    match measured {
        Some(m) => format!(
            "drains take {} (the median of the {} drain(s) run {} measured), up to lb.drain_timeout = {bound}",
            f(m.typical),
            m.drains,
            m.run
        ),
        None if matches!(inv.lb.backend, crate::config::LbBackend::Aws { .. }) => format!(
            "no drain measured yet (no earlier run of this inventory recorded one): drains are assumed to end soon after the last connection{}; one that follows ELBv2 alone lasts the target group's deregistration_delay; up to lb.drain_timeout = {bound}",
            match inv.lb.drain_detect {
                crate::config::DrainDetect::Auto => " (lb.drain_detect = \"auto\")",
                crate::config::DrainDetect::Lb => "",
            }
        ),
        None => format!(
            "drains end within seconds once connections close, up to lb.drain_timeout = {bound}"
        ),
    }
}

/// The plan's typical duration, for the progress ETA: the same script run
/// against the recorder first (milliseconds; nothing is touched).
async fn estimate(opts: &RunOptions, inventory: &Arc<Inventory>) -> Option<Duration> {
    let rec = Arc::new(Recorder::new());
    let effects = Arc::new(Effects::new(
        inventory.clone(),
        providers::build(inventory),
        Some(rec.clone()),
        CancellationToken::new(),
    ));
    if let Some(m) = crate::effects::measured_drains(&opts.inventory) {
        effects.set_measured_drain(m);
    }
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

fn assumptions(inv: &Inventory, measured: Option<&crate::effects::MeasuredDrain>) -> Vec<String> {
    use crate::config::format_duration as f;
    vec![
        format!(
            "remote commands take {} typically, up to ssh.command_timeout = {}",
            f(crate::effects::TYPICAL_COMMAND),
            f(inv.ssh.command_timeout)
        ),
        drain_assumption(inv, measured),
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
