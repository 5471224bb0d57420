//! The control channel of a live run: what `rollscript pause`, `resume`,
//! `abort` and `promote` ask of it, from this machine or another.
//!
//! A run's requests are an append-only list, kept where the run's state
//! lives: `.rollscript/control/<run>.jsonl` beside the inventory (local
//! backend), or rows of `rollscript_control` (PostgreSQL, so a laptop can
//! pause a deploy a CI runner started). The run polls the list every
//! 200 ms (see `run/control.rs`) and acts on each new request once, in
//! order; a list, not a flag, so a pause followed by a resume between two
//! polls is still both seen and journalled.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::StateError;

/// What an operator asks of a running run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Command {
    /// Hold at the next safe point (every instance in service).
    Pause,
    /// Go on after a pause; answers a pending `approval` yes.
    Resume,
    /// Stop like a failed gate; answers a pending `approval` no.
    Abort,
    /// End the current canary bake as passed.
    Promote,
}

impl Command {
    pub fn word(self) -> &'static str {
        match self {
            Self::Pause => "pause",
            Self::Resume => "resume",
            Self::Abort => "abort",
            Self::Promote => "promote",
        }
    }
}

/// One request, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub command: Command,
    /// `user@host` of whoever sent it.
    pub by: String,
    /// When it was sent (RFC 3339, the sender's clock).
    pub at: String,
}

impl Request {
    /// A request from this process's user and host (`ROLLSCRIPT_HOSTNAME`
    /// overrides the host, as in locks and journals).
    pub fn from_me(command: Command) -> Self {
        let me = crate::lock::Holder::me(None);
        Self {
            command,
            by: format!("{}@{}", me.user, me.host),
            at: crate::journal::now(),
        }
    }
}

/// Where a run's requests are kept.
pub trait ControlChannel: Send + Sync {
    /// Appends `req` to the requests of `run`.
    fn send(&self, run: &str, req: &Request) -> Result<(), StateError>;
    /// The requests of `run` from the `from`-th (0-based) on, in order.
    fn read(&self, run: &str, from: usize) -> Result<Vec<Request>, StateError>;
}

/// `.rollscript/control/<run>.jsonl`: one request per line, appended with
/// `O_APPEND` (a line is one write, so two senders do not interleave).
pub struct LocalControl {
    dir: PathBuf,
}

impl LocalControl {
    /// `state_dir`: the `.rollscript/` folder beside the inventory.
    pub fn new(state_dir: &Path) -> Self {
        Self {
            dir: state_dir.join("control"),
        }
    }

    fn path(&self, run: &str) -> Result<PathBuf, StateError> {
        // Run ids are ours (timestamps and hex), but the id may come from the
        // command line: never let it name a file outside the folder.
        if run.is_empty()
            || !run
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            || run.contains("..")
        {
            return Err(StateError::Io(format!("invalid run id {run:?}")));
        }
        Ok(self.dir.join(format!("{run}.jsonl")))
    }
}

impl ControlChannel for LocalControl {
    fn send(&self, run: &str, req: &Request) -> Result<(), StateError> {
        let path = self.path(run)?;
        let io =
            |e: std::io::Error| StateError::Io(format!("cannot write {}: {e}", path.display()));
        crate::lock::create_private_dir(self.dir.parent().unwrap_or(&self.dir)).map_err(io)?;
        crate::lock::create_private_dir(&self.dir).map_err(io)?;
        let mut line = serde_json::to_string(req).expect("a request serialises");
        line.push('\n');
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io)?;
        f.write_all(line.as_bytes()).map_err(io)?;
        f.sync_data().map_err(io)
    }

    fn read(&self, run: &str, from: usize) -> Result<Vec<Request>, StateError> {
        let path = self.path(run)?;
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(StateError::Io(format!(
                    "cannot read {}: {e}",
                    path.display()
                )))
            }
        };
        // Only whole lines: a line still being written is read next time.
        Ok(text
            .split_inclusive('\n')
            .filter(|l| l.ends_with('\n'))
            .skip(from)
            .map(|l| {
                serde_json::from_str(l.trim()).unwrap_or_else(|_| Request {
                    // A line no one can act on still counts, so indices stay put.
                    command: Command::Resume,
                    by: "an unreadable request".into(),
                    at: String::new(),
                })
            })
            .collect())
    }
}

/// The table the PostgreSQL backend keeps requests in (created with the others).
pub const PG_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS rollscript_control (
    seq       bigserial PRIMARY KEY,
    identity  text NOT NULL,
    run       text NOT NULL,
    request   text NOT NULL,
    written   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS rollscript_control_run ON rollscript_control (identity, run, seq);
";

/// How the PostgreSQL backend runs one statement: SQL, text parameters,
/// the first column of each row (see `postgres.rs`).
pub type PgQuery =
    Arc<dyn Fn(&'static str, Vec<String>, Duration) -> Result<Vec<String>, String> + Send + Sync>;

/// Rows of `rollscript_control` for one identity.
pub struct PgControl {
    pub query: PgQuery,
    pub identity: String,
    /// The URL, password masked, for messages.
    pub shown: String,
}

impl PgControl {
    fn err(&self, e: String) -> StateError {
        StateError::Io(format!("state database {}: {e}", self.shown))
    }
}

impl ControlChannel for PgControl {
    fn send(&self, run: &str, req: &Request) -> Result<(), StateError> {
        let text = serde_json::to_string(req).expect("a request serialises");
        (self.query)(
            "INSERT INTO rollscript_control (identity, run, request) VALUES ($1, $2, $3) RETURNING request",
            vec![self.identity.clone(), run.to_string(), text],
            Duration::from_secs(10),
        )
        .map(|_| ())
        .map_err(|e| self.err(e))
    }

    fn read(&self, run: &str, from: usize) -> Result<Vec<Request>, StateError> {
        let rows = (self.query)(
            "SELECT request FROM rollscript_control WHERE identity = $1 AND run = $2 ORDER BY seq OFFSET $3::text::bigint",
            vec![self.identity.clone(), run.to_string(), from.to_string()],
            Duration::from_secs(10),
        )
        .map_err(|e| self.err(e))?;
        Ok(rows
            .iter()
            .map(|r| {
                serde_json::from_str(r).unwrap_or_else(|_| Request {
                    command: Command::Resume,
                    by: "an unreadable request".into(),
                    at: String::new(),
                })
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_requests_are_read_in_order_from_an_index_and_run_ids_stay_in_the_folder() {
        let dir = tempfile::tempdir().unwrap();
        let c = LocalControl::new(&dir.path().join(".rollscript"));
        assert_eq!(c.read("20261202T1500-ab", 0).unwrap(), vec![]);
        let req = |command| Request {
            command,
            by: "ops@laptop".into(),
            at: "2026-12-02T15:00:00Z".into(),
        };
        c.send("20261202T1500-ab", &req(Command::Pause)).unwrap();
        c.send("20261202T1500-ab", &req(Command::Resume)).unwrap();
        let all = c.read("20261202T1500-ab", 0).unwrap();
        assert_eq!(all, vec![req(Command::Pause), req(Command::Resume)]);
        assert_eq!(
            c.read("20261202T1500-ab", 1).unwrap(),
            vec![req(Command::Resume)]
        );
        assert_eq!(c.read("other", 0).unwrap(), vec![]);
        let e = c
            .send("../../etc/passwd", &req(Command::Abort))
            .unwrap_err();
        assert_eq!(e.to_string(), "invalid run id \"../../etc/passwd\"");
    }
}
