//! `unlock` (a lock cleared by hand) and `runs` / `runs show` (the journals
//! of an inventory, readably).

use std::fmt::Write;
use std::io::IsTerminal;
use std::path::Path;

use super::opened::open;
use crate::journal::{self, Record};
use crate::outcome::{Failure, Outcome};
use crate::state::{self, LockStatus};

/// `rollscript unlock`: removes a lock whose holder is gone (asking first
/// unless `--yes`); one whose holder may be running only with `--force`.
pub fn unlock(inventory: &Path, yes: bool, force: bool) -> Result<Outcome, Failure> {
    let o = open(inventory).map_err(Failure::invalid)?;
    let status = match o
        .backend
        .lock_status()
        .map_err(|e| Failure::invalid(e.to_string()))?
    {
        Some(s) => s,
        None => {
            println!("no deploy lock is held for {}", o.where_());
            return Ok(Outcome::Success);
        }
    };
    match &status {
        LockStatus::Stale(h, why) => println!("deploy lock {} — {why}", h.describe()),
        LockStatus::Live(h) if !force => {
            return Err(Failure::locked(format!(
                "the deploy lock is {} ({}); it cannot be proven gone: stop that run, or pass --force to remove the lock anyway",
                h.holder.describe(),
                h.note
            )));
        }
        LockStatus::Live(h) => println!(
            "--force: removing the deploy lock {} ({})",
            h.holder.describe(),
            h.note
        ),
    }
    if !yes {
        if !std::io::stdin().is_terminal() {
            return Err(Failure::invalid("unlock needs confirmation: pass --yes"));
        }
        if !crate::ui::ask("remove it? [y/N] ") {
            println!("left in place");
            return Ok(Outcome::Failed);
        }
    }
    o.backend
        .break_lock()
        .map_err(|e| Failure::failed(e.to_string()))?;
    println!("unlocked");
    Ok(Outcome::Success)
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
            Record::Drained {
                ended_by, saved_ms, ..
            } => {
                let by = if ended_by == "host" {
                    "no connection left on the host"
                } else {
                    "the load balancer's own state"
                };
                match saved_ms {
                    Some(ms) => writeln!(
                        out,
                        "      drained: {by}, {:.1}s before the deregistration delay",
                        *ms as f64 / 1000.0
                    ),
                    None => writeln!(out, "      drained: {by}"),
                }
                .unwrap();
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
            Record::Answer {
                at,
                step,
                question,
                answer,
            } => {
                writeln!(out, "      {}  {step}: {question}: {answer}", time_of(at)).unwrap();
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
