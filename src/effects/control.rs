//! What the operator says to a live run from outside it — `rollscript
//! pause`, `resume`, `abort`, `promote` (delivered by `run/control.rs` from
//! the state backend) — and where the run listens:
//!
//! - **Safe points** ([`Effects::safe_point`]): before a step that would
//!   start something new (take an instance out, run a command, change a
//!   weight or the live pool) while *no* instance is out of rotation. A
//!   pause holds there, so a paused fleet is always whole; a step inside an
//!   instance's cycle (or beside another branch of its batch that is out)
//!   goes on, and the run holds before the next instance or batch.
//! - **Abort** stops like a failed gate: every wait (`sleep`, a bake, a
//!   pause, an `approval`) ends at once with kind `aborted`, and nothing
//!   moves forward from then on (no instance the run has not updated is
//!   taken out or given a command, no traffic switched or shifted); the script's own
//!   rollback (canary abort, the rollout's full rollback) and compensation
//!   still run, and the run exits 1 naming who aborted.
//! - **Promote** ends the current bake ([`Effects::wait_promote`]) as passed.
//! - **Approval** ([`Effects::approval`]): a question the terminal answers
//!   y/n, or `resume` (yes) / `abort` (no) from anywhere.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tracing::{info, warn};

use super::Effects;
use crate::config::{format_duration, Instance};
use crate::journal::Record;
use crate::plan::Estimate;
use crate::state::control::{Command, Request};

/// A pause in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paused {
    /// `user@host`.
    pub by: String,
    /// When the run saw it, `HH:MM:SS` UTC.
    pub since: String,
}

#[derive(Debug, Default)]
struct State {
    paused: Option<Paused>,
    aborted: Option<String>,
    /// A promote not yet used by a bake: who sent it.
    promote: Option<String>,
    /// The question an `approval` waits on, and once answered: yes?, by whom.
    asking: Option<String>,
    answer: Option<(bool, String)>,
}

/// The run's side of the control channel: the requests seen so far, and a
/// signal every waiter watches.
pub struct RunControl {
    state: Mutex<State>,
    changed: watch::Sender<u64>,
    /// Set with an approval's answer, for the terminal prompt (on a
    /// thread of its own) to give up.
    answered: Arc<AtomicBool>,
}

impl Default for RunControl {
    fn default() -> Self {
        Self {
            state: Mutex::default(),
            changed: watch::channel(0).0,
            answered: Arc::default(),
        }
    }
}

impl RunControl {
    /// Applies one request; returns the line to log about it. The state
    /// changes (and waiters wake) before anything is printed: a prompt on
    /// the terminal holds the log until it is answered.
    pub fn apply(&self, req: &Request) -> String {
        let mut s = self.state.lock().unwrap();
        let by = req.by.clone();
        let line = match req.command {
            Command::Pause => match &s.paused {
                Some(p) => format!(
                    "pause by {by}: already paused by {} since {}",
                    p.by, p.since
                ),
                None => {
                    let since = clock_now();
                    s.paused = Some(Paused {
                        by: by.clone(),
                        since: since.clone(),
                    });
                    format!("paused by {by} at {since}: holding at the next safe point (every instance in service) until `rollscript resume`")
                }
            },
            Command::Resume => {
                let was = s.paused.take();
                let answered = s.asking.is_some() && s.answer.is_none();
                if answered {
                    s.answer = Some((true, by.clone()));
                    self.answered.store(true, Ordering::SeqCst);
                }
                match (was, answered) {
                    (_, true) => format!("approval answered yes by {by} (rollscript resume)"),
                    (Some(p), _) => {
                        format!("resumed by {by} (paused by {} since {})", p.by, p.since)
                    }
                    (None, _) => format!("resume by {by}: the run was not paused"),
                }
            }
            Command::Abort => {
                if s.asking.is_some() && s.answer.is_none() {
                    s.answer = Some((false, by.clone()));
                    self.answered.store(true, Ordering::SeqCst);
                }
                s.paused = None;
                match &s.aborted {
                    Some(first) => format!("abort by {by}: already aborted by {first}"),
                    None => {
                        s.aborted = Some(by.clone());
                        format!("aborted by {by}: stopping like a failed gate (rollback, compensation, weights back, exit 1)")
                    }
                }
            }
            Command::Promote => {
                s.promote = Some(by.clone());
                format!("promote by {by}: the current bake ends as passed")
            }
        };
        drop(s);
        self.changed.send_modify(|n| *n += 1);
        line
    }

    pub fn paused(&self) -> Option<Paused> {
        self.state.lock().unwrap().paused.clone()
    }

    /// Who aborted the run, if anyone did.
    pub fn aborted_by(&self) -> Option<String> {
        self.state.lock().unwrap().aborted.clone()
    }

    /// The progress line's words while paused or waiting for an approval.
    pub fn status(&self) -> Option<String> {
        let s = self.state.lock().unwrap();
        if let Some(by) = &s.aborted {
            return Some(format!("aborted by {by}"));
        }
        if let Some(p) = &s.paused {
            return Some(format!("paused by {} since {}", p.by, p.since));
        }
        s.asking
            .as_ref()
            .filter(|_| s.answer.is_none())
            .map(|q| format!("waiting for approval: {q}"))
    }

    fn take_promote(&self) -> Option<String> {
        self.state.lock().unwrap().promote.take()
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Resolves when the run is aborted (who did it).
    async fn aborted(&self) -> String {
        let mut rx = self.subscribe();
        loop {
            if let Some(by) = self.aborted_by() {
                return by;
            }
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// Resolves when a promote arrives (taking it).
    async fn promoted(&self) -> String {
        let mut rx = self.subscribe();
        loop {
            if let Some(by) = self.take_promote() {
                return by;
            }
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

/// The plan's note at a safe point.
pub const PAUSE_NOTE: &str = "`rollscript pause` holds here (every instance in service)";

/// The error every control point raises once the run is aborted.
pub fn aborted_error(by: &str) -> crate::primitives::ActionError {
    crate::primitives::ActionError::new(
        crate::primitives::ErrorKind::Aborted,
        format!("aborted by {by}"),
    )
}

fn clock_now() -> String {
    let now = time::OffsetDateTime::now_utc();
    now.format(time::macros::format_description!(
        "[hour]:[minute]:[second]"
    ))
    .unwrap_or_default()
}

impl Effects {
    /// The run's control state (pause, abort, promote, approvals).
    pub fn control(&self) -> &RunControl {
        &self.control
    }

    /// A step that would start something new (`op` on `inst`): after an
    /// abort, refused when it would take out an instance the run has not
    /// updated; while paused with nothing out of rotation, held until
    /// `resume` (or `abort`, or Ctrl-C).
    pub(super) async fn safe_point(
        &self,
        op: &str,
        inst: Option<&Instance>,
    ) -> crate::primitives::ActionResult<()> {
        if self.is_dry_run() || self.is_compensating() {
            return Ok(());
        }
        let name = inst.map(|i| i.name.as_str()).unwrap_or("");
        if let Some(by) = self.control.aborted_by() {
            // The script's own rollback takes updated instances out again
            // and runs commands on instances that are out: let it. Nothing
            // moves forward: no instance not yet deployed is taken out or
            // given a command, no traffic is switched or shifted.
            let forward = match op {
                "deregister" => !self.ledger.is_updated(name),
                "ssh" | "local" => !self.ledger.is_out(name) && !self.ledger.is_updated(name),
                "switch_pool" | "shift_traffic" => true,
                _ => false,
            };
            if forward {
                let e = aborted_error(&by);
                return Err(if name.is_empty() { e } else { e.host(name) });
            }
            return Ok(());
        }
        if self.control.paused().is_none() || !self.ledger.out_names().is_empty() {
            return Ok(());
        }
        let token = self.cancel_token();
        let mut rx = self.control.subscribe();
        let what = if name.is_empty() {
            op.to_string()
        } else {
            format!("{op} {name}")
        };
        let mut announced = false;
        loop {
            if let Some(by) = self.control.aborted_by() {
                return Err(aborted_error(&by));
            }
            match self.control.paused() {
                None if announced => {
                    info!(step = "resume", "going on with {what}");
                    return Ok(());
                }
                None => return Ok(()),
                Some(p) if !announced => {
                    warn!(
                        step = "paused",
                        "paused by {} since {}: holding before {what}, every instance in service (`rollscript resume` goes on, `rollscript abort` stops)",
                        p.by, p.since
                    );
                    announced = true;
                }
                Some(_) => {}
            }
            tokio::select! {
                biased;
                _ = token.cancelled() => return Err(crate::primitives::ActionError::cancelled()),
                r = rx.changed() => if r.is_err() { return Ok(()) },
            }
        }
    }

    /// In a plan: notes where a pause would hold (nothing out of rotation).
    pub(super) fn plan_safe_point(&self) {
        if let Some(rec) = self.recorder() {
            if self.ledger.out_names().is_empty() {
                rec.safe_point(PAUSE_NOTE);
            }
        }
    }

    /// `wait_promote(duration)`: waits up to `d`; `true` as soon as
    /// `rollscript promote` ends the bake (the request is used up), `false`
    /// when the time is up. An abort ends it with an error.
    pub async fn wait_promote(&self, d: Duration) -> crate::primitives::ActionResult<bool> {
        if self.record(
            format!(
                "bake: wait {} (`rollscript promote` ends it as passed)",
                format_duration(d)
            ),
            Estimate::exact(d),
        ) {
            return Ok(false);
        }
        if let Some(by) = self.control.aborted_by() {
            return Err(aborted_error(&by));
        }
        if let Some(by) = self.control.take_promote() {
            self.promoted(&by);
            return Ok(true);
        }
        let r = self
            .cancellable(async {
                tokio::select! {
                    _ = tokio::time::sleep(d) => Ok(None),
                    by = self.control.promoted() => Ok(Some(by)),
                    by = self.control.aborted() => Err(aborted_error(&by)),
                }
            })
            .await?;
        match r {
            Some(by) => {
                self.promoted(&by);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    fn promoted(&self, by: &str) {
        info!(step = "promote", "bake ended as passed: promoted by {by}");
    }

    /// Sleeps `d` unless the run is aborted first.
    pub(super) async fn abortable_sleep(&self, d: Duration) -> crate::primitives::ActionResult<()> {
        if let Some(by) = self.control.aborted_by() {
            return Err(aborted_error(&by));
        }
        tokio::select! {
            _ = tokio::time::sleep(d) => Ok(()),
            by = self.control.aborted() => Err(aborted_error(&by)),
        }
    }

    /// `approval(question)`: the terminal's y/n, or `rollscript resume`
    /// (yes) / `rollscript abort` (no) from anywhere; journalled with its
    /// answer and who gave it. `--yes` does not answer it: an approval is
    /// the one question meant for a person. In a plan, a step.
    pub async fn approval(&self, question: &str) -> crate::primitives::ActionResult<bool> {
        if self.record(
            format!("approval: {question} (y/n on the terminal, or `rollscript resume` = yes / `rollscript abort` = no)"),
            Estimate::default(),
        ) {
            return Ok(true);
        }
        if let Some(by) = self.control.aborted_by() {
            return Err(aborted_error(&by));
        }
        {
            let mut s = self.control.state.lock().unwrap();
            s.asking = Some(question.to_string());
            s.answer = None;
            self.control.answered.store(false, Ordering::SeqCst);
        }
        self.control.changed.send_modify(|n| *n += 1);
        let operator = self.providers.operator.clone();
        let interactive = operator.interactive();
        warn!(
            step = "approval",
            "waiting for approval: {question} — {}`rollscript resume` (yes) or `rollscript abort` (no) from anywhere",
            if interactive { "answer y/n here, or " } else { "" }
        );
        let token = self.cancel_token();
        let answer: Option<(bool, String)> = if interactive {
            // The terminal and the control channel race: the prompt polls
            // stdin and gives up as soon as the channel answered.
            let me = crate::lock::Holder::me(None);
            let here = format!("{}@{} (terminal)", me.user, me.host);
            let q = format!("{question} [y/n] ");
            let (flag, t) = (self.control.answered.clone(), token.clone());
            let line = tokio::task::spawn_blocking(move || {
                operator.ask_until(&q, &move || flag.load(Ordering::SeqCst) || t.is_cancelled())
            })
            .await
            .ok()
            .flatten();
            match line.as_deref() {
                _ if self.control.answered.load(Ordering::SeqCst) => None,
                Some("y" | "yes") => Some((true, here)),
                Some(_) => Some((false, here)),
                None => None,
            }
        } else {
            None
        };
        let answer = match answer {
            Some(a) => a,
            None => {
                let mut rx = self.control.subscribe();
                loop {
                    if let Some(a) = self.control.state.lock().unwrap().answer.clone() {
                        break a;
                    }
                    tokio::select! {
                        biased;
                        _ = token.cancelled() => {
                            self.control.state.lock().unwrap().asking = None;
                            return Err(crate::primitives::ActionError::cancelled());
                        }
                        r = rx.changed() => if r.is_err() {
                            return Err(crate::primitives::ActionError::cancelled());
                        },
                    }
                }
            }
        };
        {
            let mut s = self.control.state.lock().unwrap();
            s.asking = None;
            s.answer = None;
        }
        let (yes, by) = answer;
        let word = if yes { "yes" } else { "no" };
        if let Some(j) = self.journal() {
            j.best_effort(&Record::Control {
                at: crate::journal::now(),
                command: "approval".into(),
                by: by.clone(),
                detail: format!("{question}: {word}"),
            });
        }
        info!(step = "answer", "{question}: answered {word} by {by}");
        Ok(yes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(command: Command) -> Request {
        Request {
            command,
            by: "ops@laptop".into(),
            at: String::new(),
        }
    }

    #[test]
    fn pause_then_resume_then_abort_read_as_the_operator_said() {
        let c = RunControl::default();
        assert_eq!(c.status(), None);
        assert!(c
            .apply(&req(Command::Pause))
            .starts_with("paused by ops@laptop at "));
        let p = c.paused().unwrap();
        assert_eq!(
            c.status(),
            Some(format!("paused by ops@laptop since {}", p.since))
        );
        assert!(c
            .apply(&req(Command::Resume))
            .starts_with("resumed by ops@laptop"));
        assert_eq!(c.paused(), None);
        assert!(c
            .apply(&req(Command::Abort))
            .starts_with("aborted by ops@laptop"));
        assert_eq!(c.aborted_by().as_deref(), Some("ops@laptop"));
        assert_eq!(c.status().as_deref(), Some("aborted by ops@laptop"));
        // A promote is kept for the next bake, used once.
        c.apply(&req(Command::Promote));
        assert_eq!(c.take_promote().as_deref(), Some("ops@laptop"));
        assert_eq!(c.take_promote(), None);
    }
}
