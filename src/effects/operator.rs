//! Questions to the operator, through the [`crate::primitives::Operator`]
//! trait and journalled like any step: `confirm` in scripts, and `--step`
//! before every mutating step.

use tracing::info;

use super::{Effects, StepMode};
use crate::plan::Estimate;
use crate::primitives::{ActionError, ActionResult, ErrorKind};

impl Effects {
    /// Turns on `--step`: every mutating step asks first.
    pub fn enable_step_mode(&self) {
        *self.step_mode.lock().unwrap() = StepMode::Ask;
    }

    /// `--step`: asks before a mutating step (yes / no / all / abort). One
    /// prompt at a time, even from `parallel` branches.
    pub(super) fn step_gate(&self, text: &str) -> ActionResult<()> {
        let mut mode = self.step_mode.lock().unwrap();
        if *mode != StepMode::Ask {
            return Ok(());
        }
        // The end of the input answers yes, as an empty line does.
        let answer = self
            .providers
            .operator
            .ask(&format!("next step: {text}\n  run it? [y]es / [n]o, skip it / [a]ll, stop asking / a[b]ort: "))
            .unwrap_or_default();
        info!(step = "answer", "--step: {text}: answered {answer:?}");
        self.journal_answer("step", text, &answer);
        match answer.as_str() {
            "y" | "yes" | "" => Ok(()),
            "a" | "all" => {
                *mode = StepMode::All;
                Ok(())
            }
            "n" | "no" => Err(ActionError::new(
                ErrorKind::Cancelled,
                format!("skipped by the operator: {text}"),
            )),
            _ => {
                drop(mode);
                self.cancel_token().cancel();
                Err(ActionError::cancelled())
            }
        }
    }

    /// `confirm(question)`: yes with `--yes`; else the operator's answer on a
    /// terminal, refused (kind `cancelled`) without one rather than guessed.
    /// In a plan, a note. Journalled with its answer.
    pub fn confirm(&self, question: &str, yes: bool) -> ActionResult<bool> {
        if self.record(format!("confirm: {question}"), Estimate::default()) {
            return Ok(true);
        }
        if yes {
            info!(target: "script", "{question} [yes: --yes]");
            self.journal_answer("confirm", question, "yes (--yes)");
            return Ok(true);
        }
        let operator = &self.providers.operator;
        if !operator.interactive() {
            return Err(ActionError::new(
                ErrorKind::Cancelled,
                format!(
                    "confirm({question:?}) needs a terminal to ask on; pass --yes to answer yes"
                ),
            ));
        }
        let answer = operator
            .ask(&format!("{question} [y/N] "))
            .unwrap_or_default();
        let yes = matches!(answer.as_str(), "y" | "yes");
        self.journal_answer("confirm", question, if yes { "yes" } else { "no" });
        info!(
            step = "answer",
            "{question}: answered {}",
            if yes { "yes" } else { "no" }
        );
        Ok(yes)
    }
}
