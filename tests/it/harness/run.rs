//! A rollscript process started by a test: its output goes to files (read
//! while it runs, for `wait_until` on a log line), it is stopped by PID
//! (SIGTERM, then SIGKILL) if the test drops it unfinished, and it can be
//! signalled like an operator would (Ctrl-C, kill -9).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::{repo, rollscript, Proc};

/// A process in progress.
pub struct Running {
    pub args: Vec<String>,
    proc: Proc,
    out: PathBuf,
    err: PathBuf,
    started: Instant,
    /// Holds the output files when nobody gave a folder for them.
    _own: Option<TempDir>,
}

/// A process that ended.
#[derive(Debug)]
pub struct Finished {
    pub args: Vec<String>,
    pub status: ExitStatus,
    /// None when killed by a signal.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub took: Duration,
}

impl Finished {
    /// Both streams, for assertion messages.
    pub fn both(&self) -> String {
        format!("--- stdout\n{}--- stderr\n{}", self.stdout, self.stderr)
    }

    /// The command, its exit and both streams, for assertion messages.
    pub fn dump(&self) -> String {
        format!(
            "rollscript {}\nexit {:?} after {:.1}s\n--- stdout\n{}\n--- stderr\n{}",
            self.args.join(" "),
            self.code,
            self.took.as_secs_f64(),
            self.stdout,
            self.stderr
        )
    }
}

impl Running {
    /// `rollscript ARGS…` from the repository root (scripts/ is relative to it).
    pub fn start(args: &[&str]) -> Running {
        let mut cmd = rollscript();
        cmd.current_dir(repo()).args(args);
        let dir = tempfile::Builder::new().prefix("rs-run").tempdir().unwrap();
        let mut r = Self::spawn(cmd, dir.path(), "rollscript");
        r._own = Some(dir);
        r
    }

    /// Starts `cmd` with its output in `dir/LABEL.stdout` and `.stderr`.
    pub fn spawn(mut cmd: Command, dir: &Path, label: &str) -> Running {
        let out = dir.join(format!("{label}.stdout"));
        let err = dir.join(format!("{label}.stderr"));
        cmd.stdout(fs::File::create(&out).unwrap())
            .stderr(fs::File::create(&err).unwrap());
        let args = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        Running {
            args,
            proc: Proc::spawn(label, &mut cmd),
            out,
            err,
            started: Instant::now(),
            _own: None,
        }
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// Sends `sig` (SIGINT as Ctrl-C would, SIGKILL as kill -9).
    pub fn signal(&self, sig: i32) {
        self.proc.signal(sig);
    }

    /// Whether it has exited.
    pub fn done(&mut self) -> bool {
        matches!(self.proc.child.try_wait(), Ok(Some(_)))
    }

    pub fn stderr_so_far(&self) -> String {
        fs::read_to_string(&self.err).unwrap_or_default()
    }

    /// Waits for the end, at most `timeout` from its start (then panics
    /// with its stderr; the process is stopped on drop).
    pub fn wait(mut self, timeout: Duration) -> Finished {
        let deadline = self.started + timeout;
        let status = loop {
            if let Some(st) = self.proc.child.try_wait().unwrap() {
                break st;
            }
            assert!(
                Instant::now() < deadline,
                "{} {} still running after {timeout:?}; stderr so far:\n{}",
                self.proc.name,
                self.args.join(" "),
                self.stderr_so_far()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        Finished {
            args: std::mem::take(&mut self.args),
            status,
            code: status.code(),
            stdout: fs::read_to_string(&self.out).unwrap_or_default(),
            stderr: fs::read_to_string(&self.err).unwrap_or_default(),
            took: self.started.elapsed(),
        }
    }
}

/// Runs rollscript with `args` to the end (at most 3 minutes).
pub fn run_rollscript(args: &[&str]) -> Finished {
    Running::start(args).wait(Duration::from_secs(180))
}
