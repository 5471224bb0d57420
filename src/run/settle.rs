//! The end of a live run: the script's result, then compensation of every
//! instance the run left out (its own cancellation phase, so a first Ctrl-C
//! cannot stop it), LB weights back after a failure, the `run_end` record and
//! the summary — a table on stderr, a `summary` record with JSON logs, and
//! with `--summary json` the same object alone on stdout.

use std::time::Instant;

use tracing::{error, warn};

use super::session::{self, Session};
use super::{Executed, Outcome, Prepared, RunOptions, SummaryFormat};
use crate::compensate;
use crate::config::Instance;
use crate::journal::{self, Record};
use crate::summary;

/// Compensates and restores; returns the outcome before the final checks.
pub(crate) async fn settle(run: &Prepared, session: &Session, executed: Executed) -> Outcome {
    let effects = &run.effects;
    let Executed {
        result,
        signals,
        control,
        progress,
    } = executed;
    // What the operator says from here on is not for this run: it settles.
    if let Some(c) = control {
        c.abort();
    }
    let mut outcome = match &result {
        Ok(_) => Outcome::Success,
        Err(d) => {
            crate::ui::report_failure(&crate::outcome::Failure::rendered(
                Outcome::Failed,
                d.render(),
                vec![d.headline()],
            ));
            if d.interrupted {
                Outcome::Interrupted
            } else {
                Outcome::Failed
            }
        }
    };
    if let Some(why) = session::stopped(run, session) {
        outcome = session::stopped_outcome(&why);
    }
    // `rollscript abort` fails the run, whatever the script made of it (a
    // script may catch the error and end "successfully" after its rollback).
    if let Some(by) = effects.control().aborted_by() {
        if outcome != Outcome::Interrupted {
            error!("the run was aborted by {by}");
            outcome = Outcome::Failed;
        }
    }
    // Registered without a wait: back if the LB says so.
    effects.renew_cancel();
    effects.confirm_registered().await;
    let targets = effects.ledger.needs_compensation();
    if !targets.is_empty() {
        effects.renew_cancel();
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
        let (effects2, host, ctx) = (effects.clone(), run.host.clone(), run.ctx.clone());
        let handle = tokio::runtime::Handle::current();
        let _ = tokio::task::spawn_blocking(move || {
            let hook = host.compensation_hook(&ctx);
            let hook_ref = hook
                .as_ref()
                .map(|h| h as &(dyn Fn(&Instance) -> Result<(), String> + Sync));
            compensate::compensate(&effects2, &handle, &targets, hook_ref)
        })
        .await;
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
    outcome
}

/// Records the run's end, names what it left out and prints the summary;
/// releases the lock. An instance left out fails a run that succeeded.
pub(crate) fn report(
    opts: &RunOptions,
    run: &Prepared,
    session: Session,
    outcome: Outcome,
    started: Instant,
) -> Outcome {
    let effects = &run.effects;
    let left_out = effects.out_of_service();
    let outcome = if outcome == Outcome::Success && !left_out.is_empty() {
        Outcome::Failed
    } else {
        outcome
    };
    if let Some(j) = effects.journal() {
        j.best_effort(&Record::RunEnd {
            at: journal::now(),
            outcome: outcome.word().into(),
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
    let snapshot = effects.ledger.snapshot();
    let journal_path = effects.journal().map(|j| j.path.clone());
    let run_id = effects.journal().map(|j| j.run.clone()).unwrap_or_default();
    let elapsed = started.elapsed();
    let aborted_by = effects.control().aborted_by();
    let data = summary::Summary {
        run: &run_id,
        entries: &snapshot,
        elapsed,
        journal: journal_path.as_deref(),
        outcome,
        aborted_by: aborted_by.as_deref(),
    };
    crate::ui::summary(&data.render(), &data.json());
    if opts.summary == SummaryFormat::Json {
        println!("{}", data.json());
    }
    drop(session);
    outcome
}
