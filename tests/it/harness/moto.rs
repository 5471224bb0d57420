//! moto, the AWS emulator, on 127.0.0.1 with the target-health behaviour a
//! real ALB has (see `moto_server.py` next to this file).
//!
//! The Python that runs it is `$ROLLSCRIPT_MOTO_PYTHON` when set (CI points it
//! at a venv), else `python3` if it can import moto. Without moto the tests
//! fail, saying how to install it: a silently skipped AWS suite would pass CI
//! while proving nothing.

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::sync::OnceLock;
use std::time::Duration;

use super::{repo, Proc};

/// A running moto server; killed when dropped.
pub struct Moto {
    pub port: u16,
    proc: Proc,
    stderr: PathBuf,
    _dir: tempfile::TempDir,
}

/// How long a target stays `initial` after a register in the emulator.
pub const INITIAL_SECONDS: f64 = 1.0;

impl Moto {
    pub fn start() -> Moto {
        let python = python();
        let dir = tempfile::tempdir().unwrap();
        let stderr = dir.path().join("moto.stderr");
        let mut cmd = Command::new(python);
        cmd.arg(repo().join("tests/it/harness/moto_server.py"))
            .args([
                "--port",
                "0",
                "--initial-seconds",
                &INITIAL_SECONDS.to_string(),
            ])
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap());
        let mut proc = Proc::spawn("moto", &mut cmd);
        let stdout = proc.child.stdout.take().unwrap();
        // The first line is the port. The reader keeps draining stdout after
        // it so the server can never block on a full pipe.
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout);
            let mut first = String::new();
            let _ = lines.read_line(&mut first);
            let _ = tx.send(first);
            let _ = std::io::copy(&mut lines, &mut std::io::sink());
        });
        let first = rx.recv_timeout(Duration::from_secs(60)).unwrap_or_default();
        let port = match first.trim().parse::<u16>() {
            Ok(port) => port,
            Err(_) => {
                drop(proc);
                let mut err = String::new();
                let _ = std::fs::File::open(&stderr).and_then(|mut f| f.read_to_string(&mut err));
                panic!(
                    "moto_server.py did not report its port (stdout: {first:?}); stderr:\n{err}"
                );
            }
        };
        Moto {
            port,
            proc,
            stderr,
            _dir: dir,
        }
    }

    /// `http://127.0.0.1:PORT`, for `lb.endpoint` and the SDK's endpoint override.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// What the server wrote to stderr (Python tracebacks of emulator bugs).
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

/// The Python interpreter that has moto, found once per test binary.
pub fn python() -> PathBuf {
    static FOUND: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    FOUND
        .get_or_init(find_python)
        .clone()
        .unwrap_or_else(|e| panic!("{e}"))
}

fn find_python() -> Result<PathBuf, String> {
    let (candidate, from_env) = match std::env::var_os("ROLLSCRIPT_MOTO_PYTHON") {
        Some(p) if !p.is_empty() => (PathBuf::from(p), true),
        _ => (PathBuf::from("python3"), false),
    };
    // sys.executable resolves shims (pyenv), so the PID the harness kills is
    // the server itself.
    let probe = Command::new(&candidate)
        .args([
            "-c",
            "import sys, moto, moto.moto_server.werkzeug_app; print(sys.executable)",
        ])
        .output();
    let how = "install it with `python3 -m pip install 'moto[server]'` (or in a venv: \
               `python3 -m venv VENV && VENV/bin/pip install 'moto[server]'` and set \
               ROLLSCRIPT_MOTO_PYTHON=VENV/bin/python); `.ci/run` does this";
    match probe {
        Ok(out) if out.status.success() => {
            let exe = String::from_utf8_lossy(&out.stdout).trim().to_string();
            Ok(if exe.is_empty() {
                candidate
            } else {
                PathBuf::from(exe)
            })
        }
        Ok(out) => Err(format!(
            "the AWS tests need moto's server, but `{} -c 'import moto'` failed{}:\n{}\n{how}",
            candidate.display(),
            if from_env {
                " (from ROLLSCRIPT_MOTO_PYTHON)"
            } else {
                ""
            },
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => Err(format!(
            "the AWS tests need moto's server, but {} cannot run{}: {e}\n{how}",
            candidate.display(),
            if from_env {
                " (from ROLLSCRIPT_MOTO_PYTHON)"
            } else {
                ""
            },
        )),
    }
}
