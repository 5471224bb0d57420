//! How a command ends. [`Outcome`] maps to the one documented exit code; a
//! [`Failure`] is a command that could not do its job, with the words the
//! operator needs. Commands return `Result<Outcome, Failure>` and `main`
//! prints the failure in one place, as text or JSON — never a command itself.

use std::fmt;

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

    /// The word the journal's `run_end` and the JSON summary use.
    pub fn word(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Failed => "failed",
            Self::Interrupted => "interrupted",
            Self::Invalid => "invalid",
            Self::Locked => "locked",
        }
    }
}

/// A command that could not do its job: what to tell the operator, and
/// the exit code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub outcome: Outcome,
    /// One sentence per problem (several for a refused inventory).
    pub problems: Vec<String>,
    /// Already rendered for a terminal (script diagnostics with their
    /// source line and caret), printed as is in text mode.
    pub rendered: Option<String>,
    /// A closing line in text mode (`nothing was touched: …`).
    pub hint: Option<String>,
}

impl Failure {
    pub fn new(outcome: Outcome, problem: impl Into<String>) -> Self {
        Self {
            outcome,
            problems: vec![problem.into()],
            rendered: None,
            hint: None,
        }
    }

    /// Exit 2: usage, inventory or script error, nothing touched.
    pub fn invalid(problem: impl Into<String>) -> Self {
        Self::new(Outcome::Invalid, problem)
    }

    /// Exit 3: another run holds the deploy lock.
    pub fn locked(problem: impl Into<String>) -> Self {
        Self::new(Outcome::Locked, problem)
    }

    /// Exit 1: the deployment (or a repair) failed.
    pub fn failed(problem: impl Into<String>) -> Self {
        Self::new(Outcome::Failed, problem)
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// Several problems at once (every one the inventory has).
    pub fn many(outcome: Outcome, problems: Vec<String>) -> Self {
        Self {
            outcome,
            problems,
            rendered: None,
            hint: None,
        }
    }

    /// Text already rendered for a terminal, and its gist for JSON.
    pub fn rendered(outcome: Outcome, text: String, gist: Vec<String>) -> Self {
        Self {
            outcome,
            problems: gist,
            rendered: Some(text),
            hint: None,
        }
    }
}

impl fmt::Display for Failure {
    /// As a terminal shows it: `error: …` per problem, or the rendered text.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.rendered {
            Some(text) => f.write_str(text)?,
            None => {
                for p in &self.problems {
                    writeln!(f, "error: {p}")?;
                }
            }
        }
        if let Some(h) = &self.hint {
            writeln!(f, "{h}")?;
        }
        Ok(())
    }
}

impl From<crate::config::ConfigError> for Failure {
    fn from(e: crate::config::ConfigError) -> Self {
        Self::invalid(e.to_string())
    }
}
