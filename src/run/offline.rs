//! Commands that compile scripts but run nothing: `check` (compile and lint)
//! and `api` (the reference, from the engine's own metadata). Their host is a
//! dry run over a one-instance placeholder inventory, so nothing can act.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::{diagnostics_failure, script_dir, Failure, Outcome};
use crate::config::Inventory;
use crate::effects::Effects;
use crate::engine::{self, Answers, Host, ScriptContext};
use crate::plan::Recorder;
use crate::providers;

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
pub fn check(scripts: &[PathBuf]) -> Result<Outcome, Failure> {
    let mut failed = 0;
    for s in scripts {
        let host = offline_host(&script_dir(s));
        match host.compile(s) {
            Ok(_) => println!("ok  {}", s.display()),
            Err(diags) => {
                failed += 1;
                crate::ui::report_failure(&diagnostics_failure(&diags));
            }
        }
    }
    if failed > 0 {
        Err(Failure::rendered(
            Outcome::Invalid,
            format!("{failed} of {} scripts have errors\n", scripts.len()),
            vec![format!("{failed} of {} scripts have errors", scripts.len())],
        ))
    } else {
        Ok(Outcome::Success)
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
pub fn api_definitions(dir: &Path) -> Result<Outcome, Failure> {
    let host = offline_host(Path::new("."));
    std::fs::create_dir_all(dir)
        .and_then(|_| host.engine().definitions().write_to_dir(dir))
        .map_err(|e| {
            Failure::invalid(format!(
                "cannot write definitions to {}: {e}",
                dir.display()
            ))
        })?;
    println!("wrote Rhai definition files to {}", dir.display());
    Ok(Outcome::Success)
}
