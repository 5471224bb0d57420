//! After the orchestrator itself died: `recover` replays a run's journal and
//! compensates the instances it left out of service; `unlock` clears a lock
//! by hand; `runs` lists and shows journals.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::io::IsTerminal;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::compensate;
use crate::config::Inventory;
use crate::effects::Effects;
use crate::journal::{self, Journal, Record};
use crate::lock::{self, DeployLock, LockError};
use crate::providers;
use crate::run::Outcome;

/// The run to recover: the one named, else the newest that left instances out.
fn pick(
    inventory: &Path,
    id: Option<&str>,
) -> Result<Option<(std::path::PathBuf, journal::Summary)>, String> {
    if let Some(id) = id {
        let path = journal::find(inventory, id).ok_or_else(|| {
            format!(
                "no run {id:?} under {} (see `rollscript runs`)",
                journal::runs_dir(inventory).display()
            )
        })?;
        let records =
            journal::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        return Ok(Some((path, journal::summarise(&records))));
    }
    for path in journal::list(inventory).into_iter().rev() {
        let Ok(records) = journal::read(&path) else {
            continue;
        };
        let s = journal::summarise(&records);
        if !s.out_of_service.is_empty() || s.weights_changed {
            return Ok(Some((path, s)));
        }
    }
    Ok(None)
}

pub async fn recover(inventory_path: &Path, id: Option<&str>) -> Outcome {
    recover_with(inventory_path, id, providers::build).await
}

/// `recover` with providers of the caller's choosing (tests use fakes).
pub async fn recover_with(
    inventory_path: &Path,
    id: Option<&str>,
    make: impl FnOnce(&Arc<Inventory>) -> crate::primitives::Providers,
) -> Outcome {
    let inventory = match Inventory::load(inventory_path) {
        Ok(inv) => Arc::new(inv),
        Err(e) => {
            eprintln!("error: {e}");
            return Outcome::Invalid;
        }
    };
    let picked = match pick(inventory_path, id) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return Outcome::Invalid;
        }
    };
    let Some((path, summary)) = picked else {
        release_stale_lock(inventory_path);
        println!(
            "nothing to recover: no run under {} left an instance out of service",
            journal::runs_dir(inventory_path).display()
        );
        return Outcome::Success;
    };
    if summary.outcome.is_none()
        && summary.host == lock::hostname()
        && lock::process_alive(summary.pid)
        && summary.pid != std::process::id()
    {
        eprintln!(
            "error: run {} is still running (pid {} on {}); stop it first (Ctrl-C compensates by itself)",
            summary.run, summary.pid, summary.host
        );
        return Outcome::Locked;
    }
    if summary.out_of_service.is_empty() && !summary.weights_changed {
        release_stale_lock(inventory_path);
        println!(
            "nothing to recover: run {} left every instance in service",
            summary.run
        );
        return Outcome::Success;
    }

    let inv_path = inventory_path.to_path_buf();
    let run = summary.run.clone();
    let _lock = match tokio::task::spawn_blocking(move || {
        DeployLock::acquire(&inv_path, Some(format!("recover {run}")), Duration::ZERO)
    })
    .await
    {
        Ok(Ok(l)) => l,
        Ok(Err(e @ LockError::Held(_))) => {
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
    let journal = match Journal::append(&path) {
        Ok(j) => Arc::new(j),
        Err(e) => {
            eprintln!("error: cannot append to {}: {e}", path.display());
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
    // The dead run took these out: the ledger must know, so a failed
    // put-back is reported as left out.
    for compensate::Target { name, .. } in &targets {
        effects
            .ledger
            .finish(name, "deregister", Duration::ZERO, None);
    }
    let handle = tokio::runtime::Handle::current();
    let e2 = effects.clone();
    let fates =
        tokio::task::spawn_blocking(move || compensate::compensate(&e2, &handle, &targets, None))
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
        path.display()
    );
    if left.is_empty() && !weights_left {
        Outcome::Success
    } else {
        Outcome::Failed
    }
}

fn release_stale_lock(inventory: &Path) {
    if let Some(h) = lock::holder(inventory) {
        if h.is_stale() && lock::force_unlock(inventory).is_ok() {
            println!("released a stale deploy lock: {}", h.describe());
        }
    }
}

/// `rollscript unlock`: asks before removing someone's lock.
pub fn unlock(inventory: &Path, yes: bool) -> Outcome {
    let Some(h) = lock::holder(inventory) else {
        if lock::lock_path(inventory).exists() {
            let _ = lock::force_unlock(inventory);
            println!("removed an unreadable lock file");
        } else {
            println!("no deploy lock is held for {}", inventory.display());
        }
        return Outcome::Success;
    };
    let alive = !h.is_stale();
    println!("deploy lock {}", h.describe());
    if alive {
        println!("warning: that process may still be running (or runs on another host)");
    }
    if !yes {
        if !std::io::stdin().is_terminal() {
            eprintln!("error: unlock needs confirmation: pass --yes");
            return Outcome::Invalid;
        }
        eprint!("remove it? [y/N] ");
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
        if !matches!(line.trim(), "y" | "yes" | "Y") {
            println!("left in place");
            return Outcome::Failed;
        }
    }
    match lock::force_unlock(inventory) {
        Ok(_) => {
            println!("unlocked");
            Outcome::Success
        }
        Err(e) => {
            eprintln!(
                "error: cannot remove {}: {e}",
                lock::lock_path(inventory).display()
            );
            Outcome::Failed
        }
    }
}

/// `rollscript runs`: one line per run, newest last.
pub fn list_runs(inventory: &Path) -> String {
    let mut out = String::new();
    let files = journal::list(inventory);
    if files.is_empty() {
        return format!(
            "no runs recorded under {}\n",
            journal::runs_dir(inventory).display()
        );
    }
    writeln!(
        out,
        "{:<26}  {:<20}  {:<12}  {:<28}  left out",
        "run", "started", "outcome", "script"
    )
    .unwrap();
    for path in files {
        let Ok(records) = journal::read(&path) else {
            continue;
        };
        let s = journal::summarise(&records);
        let outcome = s.outcome.clone().unwrap_or_else(|| {
            if lock::process_alive(s.pid) && s.host == lock::hostname() {
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
    out
}

/// `rollscript runs show ID`: the journal, readably.
pub fn show_run(inventory: &Path, id: &str) -> Result<String, String> {
    let path = journal::find(inventory, id).ok_or_else(|| {
        format!(
            "no run {id:?} under {}",
            journal::runs_dir(inventory).display()
        )
    })?;
    let records =
        journal::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut out = String::new();
    let mut intents: BTreeMap<u64, String> = BTreeMap::new();
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
                intents.insert(*seq, text.clone());
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
