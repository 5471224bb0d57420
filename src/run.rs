//! One invocation of `run`, `plan`, `check` or `api`, from validated options
//! to an [`Outcome`]. `main` maps the outcome to the process exit code.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::Inventory;
use crate::effects::Effects;
use crate::engine::{self, Answers, Diagnostic, Host, ScriptContext};
use crate::plan::{render, Recorder};
use crate::providers;

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

/// `run` and `plan`.
pub async fn run(opts: RunOptions) -> Outcome {
    let inventory = match Inventory::load(&opts.inventory) {
        Ok(inv) => Arc::new(inv),
        Err(e) => {
            eprintln!("error: {e}");
            return Outcome::Invalid;
        }
    };
    let cancel = CancellationToken::new();
    let recorder = opts.dry_run.then(|| Arc::new(Recorder::new()));
    let effects = Arc::new(Effects::new(
        inventory.clone(),
        providers::build(&inventory),
        recorder.clone(),
        cancel.clone(),
    ));
    let ctx = Arc::new(ScriptContext::new(
        effects.clone(),
        opts.vars.clone(),
        if opts.yes { Answers::Yes } else { Answers::Ask },
        tokio::runtime::Handle::current(),
    ));
    let host = Arc::new(Host::new(&script_dir(&opts.script), ctx));
    let compiled = match host.compile(&opts.script) {
        Ok(c) => Arc::new(c),
        Err(diags) => {
            print_diagnostics(&diags);
            return Outcome::Invalid;
        }
    };

    let signals = tokio::spawn(watch_signals(cancel.clone()));
    if !opts.dry_run {
        info!(
            script = %opts.script.display(),
            inventory = %opts.inventory.display(),
            instances = inventory.instances.len(),
            lb = effects.lb_kind(),
            "run started"
        );
    }
    let result = {
        let host = host.clone();
        let compiled = compiled.clone();
        tokio::task::spawn_blocking(move || host.run(&compiled))
            .await
            .unwrap_or_else(|e| Err(Diagnostic::plain(format!("script thread panicked: {e}"))))
    };
    signals.abort();
    effects.close().await;

    if let Some(rec) = &recorder {
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
    }

    match result {
        Ok(_) => {
            if !opts.dry_run {
                info!("run finished: success");
            }
            Outcome::Success
        }
        Err(d) => {
            eprint!("{}", d.render());
            let left = effects.out_of_service();
            if !left.is_empty() && !opts.dry_run {
                warn!(
                    "left out of service by this run: {} — put them back with the LB or re-run",
                    left.join(", ")
                );
            }
            if d.interrupted {
                error!("run interrupted");
                Outcome::Interrupted
            } else {
                if opts.dry_run {
                    eprintln!("the plan stops here: the script fails at this step");
                }
                Outcome::Failed
            }
        }
    }
}

/// First Ctrl-C or SIGTERM: cancel (waits end, the script stops at the next
/// statement). Second: exit at once.
async fn watch_signals(cancel: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        return;
    };
    let mut first = true;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = term.recv() => {},
        }
        if first {
            warn!("interrupt received: stopping at the next safe point (again to stop now)");
            cancel.cancel();
            first = false;
        } else {
            error!("second interrupt: stopping now");
            std::process::exit(Outcome::Interrupted.exit_code() as i32);
        }
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
