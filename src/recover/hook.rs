//! The dead run's own compensation step (`on_compensate`), found by a dry
//! run of its script when that script is still there and unchanged.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::Digest;
use tokio_util::sync::CancellationToken;

use crate::config::Inventory;
use crate::effects::Effects;
use crate::engine::{Answers, Host, ScriptContext};
use crate::journal::Summary;
use crate::plan::Recorder;
use crate::providers;

/// The dead run's script, if it is still there and unchanged.
pub(crate) fn script_for_hook(s: &Summary) -> Result<PathBuf, String> {
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

pub(crate) fn script_dir(script: &Path) -> PathBuf {
    match script.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// The `--var`s of a run's (redacted) command line.
pub(crate) fn vars_of(args: &[String]) -> BTreeMap<String, String> {
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
pub(crate) fn find_hook(
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
